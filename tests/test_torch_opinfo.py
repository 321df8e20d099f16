"""PyTorch's own test inputs for cross_entropy and binary_cross_entropy_with_logits (the OpInfo
sample_inputs that torch's test suite runs), through labelsmooth: same values and same gradients as
torch, in float64, on every backend."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

common = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations",
    reason="torch's internal test helpers need the expecttest package",
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["auto", "reference", "chunked", "torch"] + (["triton"] if HAS_TRITON else [])
FUSED = ("chunked", "triton")


def samples(name: str, dtype: torch.dtype = torch.float64) -> list:
    (op,) = [o for o in common.op_db if o.name == name and not o.variant_test_name]
    return list(op.sample_inputs("cpu", dtype, requires_grad=True))


def value_and_grad(fn, sample):
    """The output and the gradients, for a grad_output that is not 1, with respect to the input and to
    every other tensor argument that requires grad (torch's samples include probability targets and
    weights that do)."""
    x = sample.input.detach().clone().requires_grad_(True)
    args = [
        a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.requires_grad else a
        for a in sample.args
    ]
    out = fn(x, *args, **sample.kwargs)
    go = torch.rand(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype) + 0.5
    wrt = [x] + [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return out.detach(), torch.autograd.grad(out, wrt, go)


def needs_grad_beyond_input(sample) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in sample.args) or any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in sample.kwargs.values()
    )


CE = samples("nn.functional.cross_entropy")
BCE = samples("nn.functional.binary_cross_entropy_with_logits")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(len(CE)))
def test_torch_cross_entropy_samples(backend, i):
    sample = CE[i]
    if backend == "triton":  # the Triton kernels take 16- and 32-bit logits
        sample = samples("nn.functional.cross_entropy", torch.float32)[i]
    if backend in FUSED and needs_grad_beyond_input(sample):
        # The fused kernels differentiate only the logits: a target or weight that requires grad is a
        # clear error there ("auto" sends such calls to the reference, checked below).
        with pytest.raises(ValueError, match="does not compute a gradient for"):
            value_and_grad(lambda *a, **k: ls.cross_entropy(*a, **k, backend=backend), sample)
        return
    want, g_want = value_and_grad(F.cross_entropy, sample)
    got, g = value_and_grad(lambda *a, **k: ls.cross_entropy(*a, **k, backend=backend), sample)
    tol = {} if sample.input.dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(g, g_want, **tol)


@pytest.mark.parametrize("i", range(len(BCE)))
def test_torch_binary_cross_entropy_with_logits_samples(i):
    sample = BCE[i]
    want, g_want = value_and_grad(F.binary_cross_entropy_with_logits, sample)
    got, g = value_and_grad(ls.binary_cross_entropy_with_logits, sample)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, g_want)


def test_there_are_samples():
    assert len(CE) >= 10 and len(BCE) >= 10
