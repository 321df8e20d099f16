"""labelsmooth.linear_cross_entropy against torch's reference path in float64.

The ground truth is ``torch.nn.functional.linear_cross_entropy`` with ``options=None`` (it forms the
full logits and calls ``F.cross_entropy``) differentiated by autograd in float64; for z_loss and
softcap, which torch lacks, the same torch ops plus the two terms written out here. Our chunked
backend runs in float64 too, so losses and gradients agree to float64 rounding (rtol 1e-10: sums of a
few hundred terms of size ~1). The Triton kernels run under TRITON_INTERPRET=1 in float32 against
the same float64 values (rtol 1e-5, atol 1e-6: a few float32 roundings). bf16 cases are compared with
torch doing the same bf16 roundings (rtol 2e-2: a couple of bf16 ulps, 2**-8 each).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import labelsmooth as ls
from labelsmooth.kernels.linear import default_chunk_rows

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)
H, C = 8, 23


def make(batch=(12,), seed=0, dtype=torch.float64, probs=False, ignored=True, bias=True, weighted=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, H, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(C, H, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = (torch.randn(C, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    if probs:
        y = torch.rand(*batch, C, generator=g, dtype=torch.float64).to(dtype)
        y = y / y.sum(-1, keepdim=True)
    else:
        y = torch.randint(0, C, batch, generator=g)
        if ignored and y.numel() > 2:
            y.view(-1)[1::4] = -100
    cw = (torch.rand(C, generator=g, dtype=torch.float64) + 0.2).to(dtype) if weighted else None
    return x, w, b, y, cw


def torch_loss(x, w, y, b=None, cw=None, reduction="mean", eps=0.0, z_loss=0.0, softcap=None):
    """The loss from torch's own ops on the full logits (input of any batch shape)."""
    probs = y.is_floating_point()
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, w.shape[0]) if probs else y.reshape(-1)
    if not z_loss and softcap is None:
        out = F.linear_cross_entropy(x2, w, y2, linear_bias=b, weight=cw, reduction=reduction, label_smoothing=eps)
        return out.reshape(x.shape[:-1]) if reduction == "none" else out
    logits = F.linear(x2, w, b)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    rows = F.cross_entropy(logits, y2, cw, reduction="none", label_smoothing=eps)
    keep = torch.ones(x2.shape[0], dtype=torch.bool, device=x.device) if probs else y2 != -100
    lse = torch.logsumexp(logits, dim=-1)
    rows = rows + torch.where(keep, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return rows.reshape(x.shape[:-1])
    if reduction == "sum":
        return rows.sum()
    if probs:
        return rows.sum() / x2.shape[0]
    den = keep.sum() if cw is None else torch.where(keep, cw[y2.clamp(min=0)], torch.zeros(())).sum()
    return rows.sum() / den


def losses_and_grads(fn, x, w, b, reduction, seed=1):
    """fn(x, w, b) -> loss; returns (loss, grads) for a non-trivial grad_output."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b) if t is not None]
    xs = leaves[0], leaves[1], leaves[2] if b is not None else None
    loss = fn(*xs)
    if reduction == "none":
        go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        (loss * go.to(device=loss.device, dtype=loss.dtype)).sum().backward()
    else:
        (loss * 2.5).backward()
    return loss.detach().double(), [t.grad.double() for t in leaves]


def check(x, w, b, y, cw=None, reduction="mean", eps=0.0, z_loss=0.0, softcap=None, tol=F64, **kw):
    got = losses_and_grads(
        lambda a, c, d: ls.linear_cross_entropy(
            a,
            c,
            y,
            linear_bias=d,
            weight=cw,
            reduction=reduction,
            label_smoothing=eps,
            z_loss=z_loss,
            softcap=softcap,
            **kw,
        ),
        x,
        w,
        b,
        reduction,
    )
    yw = y.double() if y.is_floating_point() else y
    cww = None if cw is None else cw.double()
    want = losses_and_grads(
        lambda a, c, d: torch_loss(a, c, yw, d, cww, reduction, eps, z_loss, softcap),
        x.double(),
        w.double(),
        None if b is None else b.double(),
        reduction,
    )
    torch.testing.assert_close(got[0], want[0], **tol, equal_nan=True)
    for g, h in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, h, **tol)


@pytest.mark.parametrize(
    "reduction,eps,weighted,probs,bias",
    [
        (r, e, wt, p, bi)
        for r, e, wt, p, bi in itertools.product(
            ["none", "mean", "sum"], [0.0, 0.1, 1.0], [False, True], [False, True], [False, True]
        )
    ],
)
def test_matches_torch_float64(reduction, eps, weighted, probs, bias):
    x, w, b, y, cw = make(probs=probs, bias=bias, weighted=weighted)
    check(x, w, b, y, cw, reduction, eps, chunk_size=5)  # 12 rows in chunks of 5, 5, 2


@pytest.mark.parametrize("z_loss,softcap", [(1e-2, None), (0.0, 2.0), (1e-3, 3.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("probs", [False, True])
def test_z_loss_and_softcap(z_loss, softcap, reduction, probs):
    x, w, b, y, cw = make(probs=probs, weighted=True)
    check(x * 3, w, b, y, cw, reduction, 0.1, z_loss, softcap, chunk_size=7)


@pytest.mark.parametrize("batch", [(), (12,), (3, 5)])
@pytest.mark.parametrize("probs", [False, True])
def test_input_shapes(batch, probs):
    x, w, b, y, _ = make(batch=batch, probs=probs)
    for reduction in ("none", "mean"):
        check(x, w, b, y, None, reduction, 0.1, chunk_size=4)
    out = ls.linear_cross_entropy(x, w, y, linear_bias=b, reduction="none")
    assert out.shape == batch


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 12, 13, 1000, None])
def test_chunk_sizes(chunk_size):
    # Sizes that divide N, do not, equal it, exceed it (N smaller than one chunk), and the default.
    x, w, b, y, cw = make(weighted=True)
    check(x, w, b, y, cw, "mean", 0.1, chunk_size=chunk_size)


def test_ignore_index_custom_and_none_default():
    x, w, b, y, _ = make(ignored=False)
    y[::3] = 4
    got = ls.linear_cross_entropy(x, w, y, linear_bias=b, ignore_index=4, label_smoothing=0.2)
    want = F.linear_cross_entropy(x, w, y, linear_bias=b, ignore_index=4, label_smoothing=0.2)
    torch.testing.assert_close(got, want, **F64)
    y2 = y.clone()
    y2[::3] = -100  # ignore_index=None means -100 for class indices
    got = ls.linear_cross_entropy(x, w, y2, linear_bias=b, label_smoothing=0.2)
    torch.testing.assert_close(got, F.linear_cross_entropy(x, w, y2, linear_bias=b, label_smoothing=0.2), **F64)


def test_all_rows_ignored():
    x, w, b, y, _ = make()
    y[:] = -100
    xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
    loss = ls.linear_cross_entropy(xs, ws, y, linear_bias=bs, label_smoothing=0.1, chunk_size=5)
    assert torch.isnan(loss)  # 0 / 0, as torch's
    assert torch.isnan(F.linear_cross_entropy(x, w, y, linear_bias=b, label_smoothing=0.1))
    loss.backward()
    for t in (xs, ws, bs):
        assert torch.equal(t.grad, torch.zeros_like(t))
    check(x, w, b, y, None, "sum", 0.1, chunk_size=5)
    check(x, w, b, y, None, "none", 0.1, chunk_size=5)


def test_empty_batch():
    x, w, b, y, _ = make(batch=(0,))
    check(x, w, b, y, None, "sum", 0.1)
    check(x, w, b, y, None, "none", 0.1)


def test_ignored_row_gets_zero_gradient_whatever_grad_output():
    x, w, b, y, _ = make()
    xs = x.clone().requires_grad_(True)
    rows = ls.linear_cross_entropy(xs, w, y, linear_bias=b, reduction="none", label_smoothing=0.1, chunk_size=5)
    go = torch.ones_like(rows)
    go[y == -100] = float("inf")
    rows.backward(go)
    assert torch.isfinite(xs.grad).all()
    assert torch.equal(xs.grad[y == -100], torch.zeros_like(xs.grad[y == -100]))


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_only_some_operands_require_grad(which):
    x, w, b, y, _ = make()
    leaves = {"input": x.clone(), "weight": w.clone(), "bias": b.clone()}
    leaves[which].requires_grad_(True)
    for reduction in ("mean", "none"):
        leaves[which].grad = None
        loss = ls.linear_cross_entropy(
            leaves["input"],
            leaves["weight"],
            y,
            linear_bias=leaves["bias"],
            label_smoothing=0.1,
            reduction=reduction,
            chunk_size=5,
        )
        loss.sum().backward()
        ref = {k: v.detach().clone().requires_grad_(k == which) for k, v in leaves.items()}
        torch_loss(ref["input"], ref["weight"], y, ref["bias"], reduction=reduction, eps=0.1).sum().backward()
        torch.testing.assert_close(leaves[which].grad, ref[which].grad, **F64)


def test_no_grad_and_no_leaf():
    x, w, b, y, _ = make()
    want = F.linear_cross_entropy(x, w, y, linear_bias=b, label_smoothing=0.1)
    with torch.no_grad():
        got = ls.linear_cross_entropy(x.requires_grad_(True), w, y, linear_bias=b, label_smoothing=0.1)
    torch.testing.assert_close(got, want, **F64)
    assert not got.requires_grad


def test_backward_twice():
    x, w, b, y, _ = make()
    xs = x.clone().requires_grad_(True)
    loss = ls.linear_cross_entropy(xs, w, y, linear_bias=b, label_smoothing=0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()
    # "none" recomputes in backward, so it can run twice.
    rows = ls.linear_cross_entropy(xs, w, y, linear_bias=b, label_smoothing=0.1, reduction="none")
    g1 = torch.autograd.grad(rows.sum(), xs, retain_graph=True)[0]
    g2 = torch.autograd.grad(rows.sum(), xs)[0]
    assert torch.equal(g1, g2)


def test_double_backward_is_an_error_and_reference_supports_it():
    x, w, b, y, _ = make()
    xs = x.clone().requires_grad_(True)
    loss = ls.linear_cross_entropy(xs, w, y, linear_bias=b, label_smoothing=0.1)
    with pytest.raises(RuntimeError, match="differentiated again"):
        torch.autograd.grad(loss, xs, create_graph=True)
    loss = ls.linear_cross_entropy(xs, w, y, linear_bias=b, label_smoothing=0.1, backend="reference")
    (g,) = torch.autograd.grad(loss, xs, create_graph=True)
    g.sum().backward()  # a second derivative exists


def test_class_weight_requiring_grad_goes_to_the_reference():
    x, w, b, y, cw = make(weighted=True)
    # torch cannot differentiate through its class weights: the loss is written out here instead.
    ours, theirs = cw.clone().requires_grad_(True), cw.clone().requires_grad_(True)
    ls.linear_cross_entropy(x, w, y, linear_bias=b, weight=ours, label_smoothing=0.1).backward()
    keep = y != -100
    logp = torch.log_softmax(F.linear(x, w, b), dim=-1)[keep]
    q = 0.9 * F.one_hot(y[keep], C).double() + 0.1 / C
    (-(q * theirs * logp).sum() / theirs[y[keep]].sum()).backward()
    torch.testing.assert_close(ours.grad, theirs.grad, **F64)
    with pytest.raises(ValueError, match="does not compute a gradient for weight"):
        ls.linear_cross_entropy(x, w, y, weight=ours, backend="chunked")


@pytest.mark.parametrize("backend", ["auto", "chunked"])
def test_torch_func_and_forward_mode_use_the_reference(backend):
    x, w, b, y, _ = make()

    def ours(v):
        return ls.linear_cross_entropy(x, v, y, linear_bias=b, label_smoothing=0.1, backend=backend)

    def theirs(v):
        return F.linear_cross_entropy(x, v, y, linear_bias=b, label_smoothing=0.1)

    torch.testing.assert_close(torch.func.grad(ours)(w), torch.func.grad(theirs)(w), **F64)
    tangent = torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=w.dtype)
    torch.testing.assert_close(torch.func.jvp(ours, (w,), (tangent,)), torch.func.jvp(theirs, (w,), (tangent,)), **F64)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_materialised_backends(backend):
    x, w, b, y, cw = make(weighted=True)
    check(x, w, b, y, cw, "mean", 0.1, backend=backend)


def test_never_forms_the_full_logits():
    # Every tensor any op produces has at most chunk x C elements (or N x H / C x H: inputs, gradients).
    x, w, b, y, _ = make(batch=(64,))
    x = x.requires_grad_(True)
    w = w.requires_grad_(True)
    largest = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[-1] == C:
                    largest.append(t.shape[0])
            return out

    for reduction in ("mean", "none"):
        largest.clear()
        with Record():
            loss = ls.linear_cross_entropy(
                x, w, y, linear_bias=b, label_smoothing=0.1, chunk_size=8, reduction=reduction
            )
            loss.sum().backward()
        assert largest and max(largest) <= 8


def test_bf16_weights_accumulate_in_float32():
    # bf16 operands without autocast: the logits are rounded to bf16 as torch's are; compared with torch
    # running the same bf16 graph, and dW must be at least as close to float64 as torch's bf16 one.
    x, w, b, y, _ = make(batch=(64,))
    xb, wb, bb = (t.bfloat16().requires_grad_(True) for t in (x, w, b))
    loss = ls.linear_cross_entropy(xb, wb, y, linear_bias=bb, label_smoothing=0.1, chunk_size=8)
    assert loss.dtype == torch.bfloat16
    loss.backward()
    assert wb.grad.dtype == torch.bfloat16 and bb.grad.dtype == torch.bfloat16
    ref = [t.detach().clone().requires_grad_(True) for t in (xb, wb, bb)]
    F.linear_cross_entropy(ref[0], ref[1], y, linear_bias=ref[2], label_smoothing=0.1).backward()
    exact = [t.detach().double().requires_grad_(True) for t in (xb, wb, bb)]
    F.linear_cross_entropy(exact[0], exact[1], y, linear_bias=exact[2], label_smoothing=0.1).backward()
    for ours, theirs, e in zip((xb, wb, bb), ref, exact, strict=True):
        torch.testing.assert_close(ours.grad.double(), theirs.grad.double(), rtol=2e-2, atol=2e-3)
        assert (ours.grad.double() - e.grad).abs().max() <= (theirs.grad.double() - e.grad).abs().max() + 1e-3


def test_autocast_bf16():
    x, w, b, y, _ = make(batch=(4, 8), dtype=torch.float32)
    ours = [t.clone().requires_grad_(True) for t in (x, w, b)]
    theirs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ls.linear_cross_entropy(ours[0], ours[1], y, linear_bias=ours[2], label_smoothing=0.1, chunk_size=5)
        logits = F.linear(theirs[0], theirs[1], theirs[2])
        want = F.cross_entropy(logits.reshape(-1, C), y.reshape(-1), label_smoothing=0.1)
    assert loss.dtype == torch.float32 == want.dtype
    loss.backward()
    want.backward()
    torch.testing.assert_close(loss, want, rtol=2e-2, atol=2e-3)
    for o, t in zip(ours, theirs, strict=True):
        assert o.grad.dtype == torch.float32
        torch.testing.assert_close(o.grad, t.grad, rtol=2e-2, atol=2e-3)


def test_module_matches_function():
    x, w, b, y, cw = make(batch=(3, 4), weighted=True)
    m = ls.LinearCrossEntropyLoss(cw, label_smoothing=0.1, chunk_size=5, z_loss=1e-3)
    got = m(x, w, y, b)
    want = ls.linear_cross_entropy(x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, z_loss=1e-3)
    torch.testing.assert_close(got, want, **F64)
    assert "weight" in dict(m.named_buffers())
    assert "chunk_size=5" in repr(m) and "z_loss" in repr(m)
    with pytest.raises(ValueError, match="chunk_size"):
        ls.LinearCrossEntropyLoss(chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        ls.LinearCrossEntropyLoss(backend="nope")


def test_bad_arguments():
    x, w, b, y, _ = make()
    with pytest.raises(ValueError, match="in_features"):
        ls.linear_cross_entropy(x[:, :5], w, y)
    with pytest.raises(ValueError, match="linear_weight must be 2-D"):
        ls.linear_cross_entropy(x, w.reshape(C, 2, 4), y)
    with pytest.raises(ValueError, match="linear_weight must be 2-D"):
        ls.linear_cross_entropy(x, w[0], y)
    with pytest.raises(ValueError, match="linear_bias"):
        ls.linear_cross_entropy(x, w, y, linear_bias=b[:-1])
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        ls.linear_cross_entropy(x, w, y[:-1])
    with pytest.raises(ValueError, match="probabilities"):
        ls.linear_cross_entropy(x, w, torch.rand(12, C - 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="ignore_index must be None"):
        ls.linear_cross_entropy(x, w, torch.rand(12, C, dtype=torch.float64), ignore_index=-100)
    with pytest.raises(TypeError, match="linear_weight has dtype"):
        ls.linear_cross_entropy(x, w.float(), y)
    with pytest.raises(ValueError, match="chunk_size"):
        ls.linear_cross_entropy(x, w, y, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        ls.linear_cross_entropy(x, w, y, chunk_size=2.5)
    with pytest.raises(ValueError, match="weight must be a 1-D"):
        ls.linear_cross_entropy(x, w, y, weight=torch.ones(C - 1, dtype=torch.float64))
    with pytest.raises(IndexError, match="class index 23"):
        ls.linear_cross_entropy(x, w, torch.full((12,), C))
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.linear_cross_entropy(x, w, y, label_smoothing=1.5)
    with pytest.raises(TypeError, match="floating"):
        ls.linear_cross_entropy(x.long(), w, y)


def test_default_chunk_rows_rule():
    assert default_chunk_rows(2048, 32000) == 256  # 32 MiB of float32 logits
    assert default_chunk_rows(4096, 128256) == 128  # at least 128 rows on CPU
    assert default_chunk_rows(100, 32000) == 100  # never more than N
    assert default_chunk_rows(8192, 128256, torch.bfloat16, "meta") == 1024
    assert default_chunk_rows(0, 10) == 1


# The Triton backend runs on CPU tensors under TRITON_INTERPRET=1 (as in CI), on the GPU otherwise.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")
if importlib.util.find_spec("triton") is None:
    TRITON_DEVICE = None
else:
    TRITON_DEVICE = "cpu" if INTERPRETED else ("cuda" if torch.cuda.is_available() else None)


@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs triton, under TRITON_INTERPRET=1 or with a GPU")
@pytest.mark.parametrize(
    "reduction,probs,weighted",
    [("mean", False, False), ("sum", False, True), ("none", False, False), ("mean", True, False), ("none", True, True)],
)
def test_triton_backend(reduction, probs, weighted):
    x, w, b, y, cw = (
        None if t is None else t.to(TRITON_DEVICE) for t in make(probs=probs, weighted=weighted, dtype=torch.float32)
    )
    check(x, w, b, y, cw, reduction, 0.1, 1e-3, chunk_size=5, backend="triton", tol=F32)


@pytest.mark.parametrize("name", ["labelsmooth.linear", "labelsmooth.kernels.linear"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def written_out_loss(x, w, y, b, cw, eps, u, reduction):
    """Class-index loss from its formula: q = (1-eps) onehot(y) + eps u, row = -sum_c w_c q_c log p_c."""
    keep = y != -100
    logp = torch.log_softmax(F.linear(x, w, b), dim=-1)
    q = (1 - eps) * F.one_hot(y.clamp(min=0), w.shape[0]).to(logp.dtype) + eps * u.to(logp.dtype)
    cwt = torch.ones(w.shape[0], dtype=logp.dtype, device=logp.device) if cw is None else cw
    rows = torch.where(keep, -(q * cwt * logp).sum(-1), torch.zeros((), dtype=logp.dtype))
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / torch.where(keep, cwt[y.clamp(min=0)], 0).sum()


@pytest.mark.parametrize("eps,prior", [(0.2, True), (-0.3, False), (-0.1, True)])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_prior_and_negative_smoothing(eps, prior, reduction, backend):
    if backend == "triton" and TRITON_DEVICE is None:
        pytest.skip("needs triton, under TRITON_INTERPRET=1 or with a GPU")
    dtype, tol = (torch.float64, F64) if backend == "chunked" else (torch.float32, F32)
    dev = "cpu" if backend == "chunked" else TRITON_DEVICE
    x, w, b, y, cw = (t.to(dev) for t in make(weighted=True, dtype=dtype))
    u = torch.rand(C, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dev)
    u = (u / u.sum()) if prior else torch.full((C,), 1.0 / C, dtype=torch.float64, device=dev)
    got = losses_and_grads(
        lambda a, c, d: ls.linear_cross_entropy(
            a,
            c,
            y,
            linear_bias=d,
            weight=cw,
            reduction=reduction,
            label_smoothing=eps,
            chunk_size=5,
            smoothing_prior=u.to(dtype) if prior else None,
            allow_negative=eps < 0,
            backend=backend,
        ),
        x,
        w,
        b,
        reduction,
    )
    want = losses_and_grads(
        lambda a, c, d: written_out_loss(a, c, y, d, cw.double(), eps, u, reduction),
        x.double(),
        w.double(),
        b.double(),
        reduction,
    )
    torch.testing.assert_close(got[0], want[0], **tol)
    for g, h in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, h, **tol)
    with pytest.raises(ValueError, match="allow_negative"):
        ls.linear_cross_entropy(x, w, y, label_smoothing=-0.1)


@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_weight_gradient_accumulated_in_the_weights_dtype(backend):
    # accumulation_dtype=bfloat16 (Liger's memory: no float32 copy of dW) sums each chunk's bf16 GEMM
    # into a bf16 dW: one bf16 rounding per chunk (2**-8 relative each) on top of the float32 default's
    # single final rounding. With 8 chunks of 8 rows, |error| <= 8 * 2**-8 * max|dW| bounds the
    # difference to the float32-accumulated gradient (typically about sqrt(8) times less).
    if backend == "triton" and TRITON_DEVICE is None:
        pytest.skip("needs triton, under TRITON_INTERPRET=1 or with a GPU")
    dev = "cpu" if backend == "chunked" else TRITON_DEVICE
    x, w, b, y, _ = (None if t is None else t.to(dev) for t in make(batch=(64,)))
    grads = {}
    for acc in (None, torch.bfloat16):
        xb, wb, bb = (t.bfloat16().requires_grad_(True) for t in (x, w, b))
        loss = ls.linear_cross_entropy(
            xb, wb, y, linear_bias=bb, label_smoothing=0.1, chunk_size=8, backend=backend, accumulation_dtype=acc
        )
        loss.backward()
        assert wb.grad.dtype == torch.bfloat16 and bb.grad.dtype == torch.bfloat16
        grads[acc] = (wb.grad.double(), bb.grad.double())
    for ours, default in zip(grads[torch.bfloat16], grads[None], strict=True):
        assert (ours - default).abs().max() <= 8 * 2.0**-8 * default.abs().max()


def test_accumulation_dtype_is_checked():
    x, w, _, y, _ = make()
    with pytest.raises(ValueError, match=r"accumulation_dtype must be None, torch.float32 or the matmul's dtype"):
        ls.linear_cross_entropy(x.float(), w.float(), y, accumulation_dtype=torch.float16)
    with pytest.raises(ValueError, match="accumulation_dtype"):
        ls.linear_cross_entropy(x, w, y, accumulation_dtype=torch.float32)  # float64 matmul: only float64
    with pytest.raises(TypeError, match=r"accumulation_dtype must be None or a torch\.dtype, got 'bf16'"):
        ls.linear_cross_entropy(x, w, y, accumulation_dtype="bf16")
    with pytest.raises(TypeError, match="accumulation_dtype"):
        ls.LinearCrossEntropyLoss(accumulation_dtype="float32")
    # float32 for bf16 weights is the default, said explicitly.
    xb, wb = x.bfloat16(), w.bfloat16()
    torch.testing.assert_close(
        ls.linear_cross_entropy(xb, wb, y, accumulation_dtype=torch.float32), ls.linear_cross_entropy(xb, wb, y)
    )


def test_float32_accumulation_falls_back_to_slices_off_cuda():
    # On CPU (no out_dtype GEMM) dW += G.T X is formed in bf16 slices and added in float32.
    from labelsmooth.kernels import linear as KL

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 16, generator=g).bfloat16()
    bm = torch.randn(16, 24, generator=g).bfloat16()
    acc = torch.empty(40, 24)
    KL._accumulate_mm(acc, a, bm, True, 7)
    KL._accumulate_mm(acc, a, bm, False, 7)
    want = 2 * (a.double() @ bm.double())
    # Each slice's product is rounded to bf16 once (2**-8 relative) before the float32 sum; atol for
    # entries near 0, where the relative bound says nothing.
    torch.testing.assert_close(acc.double(), want, rtol=2.0**-8, atol=1e-2)


@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs triton, under TRITON_INTERPRET=1 or with a GPU")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_path_is_one_launch_per_chunk(reduction):
    # The gradient is always wanted here: each chunk is one launch of the forward kernel with
    # WRITE_GRAD (statistics pass, then the gradient pass over the same rows), not a forward and a
    # backward launch with 16 bytes of statistics per row in between. "none" recomputes in backward,
    # where the launch also applies the per-row grad_output.
    from labelsmooth.kernels import triton_ce

    x, w, _, y, _ = (None if t is None else t.to(TRITON_DEVICE) for t in make(dtype=torch.float32))
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with triton_ce.record_launches() as launches:
        loss = ls.linear_cross_entropy(xs, ws, y, reduction=reduction, chunk_size=5, backend="triton")
        (loss.sum() if reduction == "none" else loss).backward()
    chunks = -(-x.shape[0] // 5)
    grad_launches = [la for la in launches if la.meta.get("WRITE_GRAD")]
    assert all(la.kernel is triton_ce._ce_fwd_kernel for la in launches)
    assert len(grad_launches) == chunks
    assert len(launches) == (2 * chunks if reduction == "none" else chunks)  # "none": losses first
    if reduction == "none":
        assert all(la.meta["HAS_GO"] for la in grad_launches)
