"""The Triton backend's split forward/backward through autograd, against float64 torch.

Forward keeps per-row statistics; backward writes the gradient multiplied by grad_output inside the
kernel. These tests check every way a grad_output reaches it (1, a device scalar, a per-row vector, a
masked or weighted sum, an expanded scalar), backward twice, and that backward does no work over the
N x C gradient beyond the kernel's own write. They run under TRITON_INTERPRET=1 on CPU tensors, or
on a GPU with TRITON_INTERPRET=0.

Tolerances: the kernels compute in fp32 from fp32 logits, so losses and gradients are within a few
fp32 roundings of the float64 values (rtol 1e-5, atol 1e-6 for entries near 0).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import labelsmooth as ls
from labelsmooth import functional

INTERPRETED = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is off and there is no CUDA device", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
TOL = dict(rtol=1e-5, atol=1e-6)
EPS = 0.1


def problem(n=6, c=37, seed=0, ignored=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    y[list(ignored)] = -100
    return x.to(DEVICE), y.to(DEVICE)


def grads(loss_fn, x, y, backend):
    """(loss, d loss / d x) with labelsmooth's ``backend`` and with torch in float64."""
    a = x.clone().requires_grad_(True)
    loss = loss_fn(lambda **kw: ls.cross_entropy(a, y, label_smoothing=EPS, backend=backend, **kw))
    loss.backward()
    b = x.detach().cpu().double().requires_grad_(True)
    yb = y.cpu()
    want = loss_fn(lambda **kw: F.cross_entropy(b, yb, label_smoothing=EPS, **kw))
    want.backward()
    return (loss.detach().cpu().double(), a.grad.cpu().double()), (want.detach(), b.grad)


def _on(r, values):
    return torch.as_tensor(values, dtype=r.dtype, device=r.device)


# How users reduce the loss before backward; ``ce(**kw)`` is the loss, labelsmooth's or torch's.
GRAD_OUTPUTS = {
    "loss.backward()": lambda ce: ce(),
    "mean times 3": lambda ce: ce() * 3.0,
    # Hugging Face's gradient accumulation: a summed loss over a token count held on the device.
    "sum over a device count": lambda ce: (lambda r: r / _on(r, 4.0))(ce(reduction="sum")),
    "sum": lambda ce: ce(reduction="sum"),
    "none, summed": lambda ce: ce(reduction="none").sum(),
    "none, weighted": lambda ce: (lambda r: (r * _on(r, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])).sum())(ce(reduction="none")),
    "none, masked mean": lambda ce: (lambda r: r[_on(r, [1, 0, 1, 1, 0, 1]).bool()].mean())(ce(reduction="none")),
}


@pytest.mark.parametrize("case", list(GRAD_OUTPUTS))
def test_every_grad_output_matches_float64_torch(case):
    x, y = problem()
    (loss, grad), (want, want_grad) = grads(GRAD_OUTPUTS[case], x, y, "triton")
    torch.testing.assert_close(loss, want, **TOL)
    torch.testing.assert_close(grad, want_grad, **TOL)


def test_per_row_grad_output_vector_of_any_stride():
    x, y = problem()
    go = torch.randn(12, device=DEVICE)[::2]  # stride 2
    go[1] = float("nan")  # an ignored row: its gradient stays exactly 0
    a = x.clone().requires_grad_(True)
    ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton", reduction="none").backward(go)
    b = x.cpu().double().requires_grad_(True)
    F.cross_entropy(b, y.cpu(), label_smoothing=EPS, reduction="none").backward(
        torch.where(y.cpu() == -100, 0.0, go.cpu().double())
    )
    assert torch.equal(a.grad[1].cpu(), torch.zeros(x.shape[1]))
    torch.testing.assert_close(a.grad.cpu().double(), b.grad, **TOL)


@pytest.mark.parametrize("probs", [False, True])
def test_backward_twice_with_retain_graph(probs):
    x, y = problem()
    if probs:
        y = torch.softmax(torch.randn(x.shape, device=DEVICE), dim=1)
    a = x.clone().requires_grad_(True)
    loss = ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton", z_loss=1e-3, softcap=8.0)
    loss.backward(retain_graph=True)
    first = a.grad.clone()
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * first, rtol=1e-6, atol=0)


def test_backward_twice_after_inplace_is_a_clear_error():
    x, y = problem()
    a = x.clone().requires_grad_(True)
    loss = ls.cross_entropy(a * 1.0, y, label_smoothing=EPS, backend="triton", inplace=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace=False"):
        loss.backward()


def test_inplace_over_logits_another_op_saved_is_an_error_not_a_wrong_gradient():
    # tanh saves its output for its backward; writing the gradient over that output must not go unseen.
    x, y = problem()
    h = x.clone().requires_grad_(True)
    logits = torch.tanh(h) * 1.0
    capped = torch.tanh(logits)
    loss = ls.cross_entropy(capped, y, label_smoothing=EPS, backend="triton", inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_logits_changed_between_forward_and_backward_is_an_error():
    x, y = problem()
    a = x.clone().requires_grad_(True)
    logits = a * 1.0
    loss = ls.cross_entropy(logits, y, label_smoothing=EPS, backend="triton")
    with torch.no_grad():
        logits.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_forward_keeps_statistics_not_a_gradient():
    x, y = problem(n=5, c=41)
    a = x.clone().requires_grad_(True)
    loss = ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton")
    shapes = sorted(tuple(t.shape) for t in loss.grad_fn.saved_tensors if t is not None)
    # logits, target, and 16 bytes of statistics per row: no N x C buffer beyond the logits themselves.
    assert shapes == [(5,), (5, 4), (5, 41)]


class _LargeOps(TorchDispatchMode):
    """Records the aten ops that read or write a tensor as large as the logits, outside kernel launches
    (the Triton interpreter moves the kernel's arguments with aten ops of its own)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops, self.launches, self.paused = numel, [], 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in list(args) + list((kwargs or {}).values()) + [out] if isinstance(t, torch.Tensor)]
        if not self.paused and any(t.numel() >= self.numel for t in tensors):
            self.ops.append(func.__name__)
        return out


@pytest.mark.parametrize("case", ["loss.backward()", "sum over a device count", "none, masked mean"])
def test_backward_makes_no_pass_over_the_gradient_beyond_the_kernel(case, monkeypatch):
    from labelsmooth.kernels import triton_ce

    x, y = problem(n=6, c=64, ignored=(2,))
    a = x.clone().requires_grad_(True)
    loss = GRAD_OUTPUTS[case](lambda **kw: ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton", **kw))
    mode = _LargeOps(x.numel())
    launch = triton_ce._launch

    def counted(*args):
        mode.launches += 1
        mode.paused = True
        try:
            launch(*args)
        finally:
            mode.paused = False

    monkeypatch.setattr(triton_ce, "_launch", counted)
    with mode:
        loss.backward()
    # One kernel launch; allocating the gradient is the only torch op on an N x C tensor besides views
    # (autograd's backward of the reshape to rows, and a detach to store .grad), which move no data.
    # No mul, copy or where over it.
    assert mode.launches == 1
    views = {"view.default", "permute.default", "_unsafe_view.default", "detach.default", "alias.default"}
    assert set(mode.ops) - views == {"empty_like.default"}, mode.ops


def test_no_host_device_synchronisation_on_cuda():
    if not torch.cuda.is_available() or INTERPRETED:
        pytest.skip("needs a CUDA device and TRITON_INTERPRET=0")
    x, y = problem(n=64, c=1000)
    a = x.clone().requires_grad_(True)
    n = torch.tensor(50.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kw in (dict(), dict(reduction="sum"), dict(reduction="none")):
            loss = ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton", **kw)
            (loss.sum() / n).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_auto_on_an_accelerator_without_triton(monkeypatch):
    monkeypatch.setattr(functional, "_triton_usable", lambda device: False)
    x = torch.empty(4, 10, device="meta")
    y = torch.empty(4, dtype=torch.long, device="meta")
    assert functional._resolve_backend("auto", x, y, None, plain=True) == "torch"
    assert functional._resolve_backend("auto", x, y, None, plain=False) == "chunked"
    monkeypatch.setattr(functional, "_triton_usable", lambda device: True)
    assert functional._resolve_backend("auto", x, y, None, plain=True) == "triton"
    assert functional._resolve_backend("auto", x.double(), y, None, plain=True) == "torch"


class _NewLargeTensors(TorchDispatchMode):
    """Records (op, dtype) of every op outside kernel launches whose output is as large as the logits."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.made, self.paused = numel, [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.made.append((func.__name__, out.dtype))
        return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_autocast_reads_half_precision_logits_without_a_float32_copy(reduction, monkeypatch):
    # Under autocast (how most GPU training runs) torch computes cross-entropy in float32: a float32
    # loss, the gradient back in the logits' dtype. The Triton kernels compute in float32 from bf16
    # logits anyway, so no float32 N x C copy is made (nor kept for backward): the one N x C tensor
    # allocated is the bf16 gradient.
    from labelsmooth.kernels import triton_ce

    x, y = problem(n=6, c=64, ignored=(2,))
    xb = x.to(torch.bfloat16)
    a = xb.clone().requires_grad_(True)
    mode = _NewLargeTensors(x.numel())
    launch = triton_ce._launch

    def paused(*args):
        mode.paused = True
        try:
            launch(*args)
        finally:
            mode.paused = False

    monkeypatch.setattr(triton_ce, "_launch", paused)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), mode:
        loss = ls.cross_entropy(a, y, label_smoothing=EPS, backend="triton", reduction=reduction)
    with mode:
        loss.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
    views = {"view.default", "permute.default", "_unsafe_view.default", "detach.default", "alias.default"}
    made = [m for m in mode.made if m[0] not in views]
    assert made == [("empty_like.default", torch.bfloat16)], mode.made
    # Same numbers as float64 torch on the same bf16 logits: the loss to fp32 accuracy, the gradient
    # to one bf16 rounding (2**-8, or 2**-7 under the interpreter's truncating conversion) plus fp32 error.
    b = xb.detach().cpu().double().requires_grad_(True)
    want = F.cross_entropy(b, y.cpu(), label_smoothing=EPS, reduction=reduction)
    want.backward()
    torch.testing.assert_close(loss.detach().cpu().double(), want.detach(), **TOL)
    step = 2.0**-7 if INTERPRETED else 2.0**-8
    torch.testing.assert_close(a.grad.cpu().double(), b.grad, rtol=step + 1e-5, atol=1e-6)


def test_autocast_on_other_backends_still_computes_in_float32():
    # The reference (and chunked) backends get the float32 copy torch's autocast policy implies.
    x, y = problem(n=6, c=64)
    a = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = ls.cross_entropy(a, y, label_smoothing=EPS, backend="reference")
    loss.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
