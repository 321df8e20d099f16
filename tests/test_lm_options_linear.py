"""labelsmooth.linear_cross_entropy's language-model options, against the reference in float64.

The ground truth is ``labelsmooth.reference.ce_rows`` on the materialised logits ``F.linear(x, W, b)``
(itself checked against torch in tests/test_reference.py), differentiated by autograd. The chunked
backend runs in float64, so it agrees to float64 rounding (rtol 1e-10: sums of a few dozen terms of
size ~1). The Triton kernels run under TRITON_INTERPRET=1 in float32 against the float64 values on the
same inputs (rtol 1e-5, atol 1e-6: a few float32 roundings of numbers of size ~1).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.reference import ce_rows

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)
H, C = 8, 23

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [
    "chunked",
    pytest.param(
        "triton", marks=pytest.mark.skipif(not (HAS_TRITON and INTERPRETED), reason="needs triton interpreted")
    ),
]


def make(batch=(13,), seed=0, weighted=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, H, generator=g, dtype=torch.float64) * 2
    w = torch.randn(C, H, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, C, batch, generator=g)
    y.view(-1)[1::4] = -100
    cw = torch.rand(C, generator=g, dtype=torch.float64) + 0.2 if weighted else None
    return x, w, b, y, cw


def tolerance(backend):
    return F64 if backend == "chunked" else F32


def dtype_for(backend):
    return torch.float64 if backend == "chunked" else torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "eps,z_loss,softcap,weighted,bias",
    [
        (0.0, 0.0, None, False, True),
        (0.1, 0.0, None, True, True),
        (0.1, 1e-2, None, True, False),
        (0.2, 1e-3, 3.0, True, True),
        (0.0, 0.0, 2.0, False, False),
    ],
)
def test_none_rows_weighted_by_the_caller_give_the_reference_gradients(backend, eps, z_loss, softcap, weighted, bias):
    # (loss_rows * v).sum().backward(): a per-row grad_output, including rows of v that are 0,
    # negative and large; the ignored rows' v is NaN-free but nonzero, and their gradient must stay 0.
    x, w, b, y, cw = make(weighted=weighted, bias=bias)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    v[0] = 0.0
    dt = dtype_for(backend)

    leaves = [t.to(dt).clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    rows = ls.linear_cross_entropy(
        leaves[0],
        leaves[1],
        y,
        linear_bias=leaves[2] if bias else None,
        weight=None if cw is None else cw.to(dt),
        reduction="none",
        label_smoothing=eps,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=5,  # 13 rows: chunks of 5, 5, 3
        backend=backend,
    )
    (rows * v.to(dt)).sum().backward()

    # The reference sees the values the kernel sees (float32-rounded operands for Triton).
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    logits = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None)
    ref_rows = ce_rows(logits, y, cw, -100, eps, z_loss, softcap)
    (ref_rows * v).sum().backward()

    tol = tolerance(backend)
    assert rows.shape == y.shape
    torch.testing.assert_close(rows.double(), ref_rows.detach(), **tol)
    torch.testing.assert_close(leaves[0].grad.double(), ref_leaves[0].grad, **tol, msg=lambda m: f"input: {m}")
    # The weight and bias gradients sum a term per row (|v_n| |x_n| at most, rounded in float32 to
    # ~1e-7 relative): their absolute error scales with sum_n |v_n| max|x|, not with the (partly
    # cancelled) result.
    scale = float(v.abs().sum() * max(1.0, float(x.abs().max())))
    sums = dict(rtol=tol["rtol"], atol=max(tol["atol"], (0.0 if backend == "chunked" else 1e-7) * scale))
    for got, want, name in zip(leaves[1:], ref_leaves[1:], ("linear_weight", "linear_bias"), strict=False):
        torch.testing.assert_close(got.grad.double(), want.grad, **sums, msg=lambda m, n=name: f"{n}: {m}")
    # Ignored rows: exactly 0 loss and input gradient.
    ignored = y == -100
    assert (rows[ignored] == 0).all() and (leaves[0].grad[ignored] == 0).all()
