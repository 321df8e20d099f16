"""Every backend on the options of the fused kernels: z_loss, softcap, inplace, low precision,
torch.compile; checked against float64 formulas built from torch's own functions."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from cases import grads, make_case
from labelsmooth import reference
from labelsmooth.kernels import chunked

HAS_TRITON = importlib.util.find_spec("triton") is not None
FUSED = ["chunked"] + (["triton"] if HAS_TRITON else [])
ALL = ["reference", *FUSED]


def formula(x, t, w, ignore_index, eps, z_loss, softcap, reduction):
    """z-loss and softcap on top of torch's own cross-entropy, in float64."""
    x = x.double()
    w = None if w is None else w.double()
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    rows = F.cross_entropy(x, t, w, reduction="none", label_smoothing=eps, **kw)
    lse = torch.logsumexp(x, dim=1)
    if t.is_floating_point():
        keep = torch.ones_like(rows, dtype=torch.bool)
        denom = torch.tensor(float(rows.numel()), dtype=torch.float64)
    else:
        keep = t != (-100 if ignore_index is None else ignore_index)
        safe = torch.where(keep, t, 0)
        denom = (keep.double() * (1.0 if w is None else w[safe])).sum()
    rows = rows + z_loss * torch.where(keep, lse * lse, 0.0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / denom


OPTION_CASES = [
    # (probs, weighted, ignore_index, eps, z_loss, softcap, reduction)
    (False, False, -100, 0.1, 1e-3, None, "mean"),
    (False, True, 2, 0.2, 0.0, 5.0, "none"),
    (False, True, -100, 0.0, 1e-2, 30.0, "sum"),
    (True, False, None, 0.1, 1e-3, None, "mean"),
    (True, True, None, 0.3, 1e-4, 2.0, "none"),
    (False, False, None, 1.0, 0.0, 10.0, "mean"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", OPTION_CASES)
def test_z_loss_and_softcap_against_float64_formula(backend, case):
    probs, weighted, ignore_index, eps, z_loss, softcap, reduction = case
    shape = (9, 37) if backend == "triton" else (33, 301)
    x, t, w = make_case(shape, probs=probs, weighted=weighted, ignore_index=ignore_index, scale=8.0)
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    want, want_g = grads(lambda v: formula(v, t, w, ignore_index, eps, z_loss, softcap, reduction), x)
    dtype = torch.float32 if backend == "triton" else torch.float64
    got, got_g = grads(
        lambda v: ls.cross_entropy(
            v.to(dtype),
            t,
            None if w is None else w.to(dtype),
            reduction=reduction,
            label_smoothing=eps,
            z_loss=z_loss,
            softcap=softcap,
            backend=backend,
            **kw,
        ),
        x,
    )
    # float64 backends agree to rounding; float32 (triton) to a few float32 ulps of the row sums
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(got_g.double(), want_g, rtol=tol, atol=tol)


@pytest.mark.parametrize("block_rows", [1, 4, 1000])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_kernel_block_sizes_match_reference(block_rows, probs, weighted):
    x, t, w = make_case((11, 97), probs=probs, weighted=weighted, ignore_index=None if probs else -100)
    for eps, z_loss, softcap in [(0.0, 0.0, None), (0.25, 1e-3, 4.0)]:
        grad = torch.empty_like(x)
        rows = chunked.fused_ce(x, t, w, -100, eps, z_loss, softcap, grad, block_rows=block_rows)
        xr = x.clone().requires_grad_(True)
        want = reference.ce_rows(xr, t, w, -100, eps, z_loss, softcap)
        (want_g,) = torch.autograd.grad(want.sum(), xr)
        torch.testing.assert_close(rows, want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, want_g, rtol=1e-12, atol=1e-12)
        no_grad_rows = chunked.fused_ce(x, t, w, -100, eps, z_loss, softcap, None, block_rows=block_rows)
        torch.testing.assert_close(no_grad_rows, rows, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("probs", [False, True])
def test_inplace_gives_the_same_loss_and_gradient(backend, dtype, probs):
    x, t, w = make_case((7, 53), probs=probs, weighted=True, ignore_index=None if probs else -100, dtype=dtype)
    t = t.to(dtype) if probs else t
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0, backend=backend, reduction="sum")
    a = x.clone().requires_grad_(True)
    ls.cross_entropy(a, t, w, **kw).backward()
    b = x.clone().requires_grad_(True)
    loss_b = ls.cross_entropy(b, t, w, inplace=True, **kw)
    loss_b.backward()
    torch.testing.assert_close(ls.cross_entropy(x, t, w, **kw), loss_b.detach(), rtol=0, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
def test_inplace_overwrites_the_logits_storage(backend):
    x = torch.randn(4, 9, requires_grad=True)
    before = x.detach().clone()
    ls.cross_entropy(x, torch.tensor([0, 3, 8, 1]), backend=backend, inplace=True).backward()
    assert not torch.equal(x.detach(), before)  # documented: the logits are consumed
    assert x.grad.data_ptr() == x.data_ptr() or torch.equal(x.grad, x.detach())


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_against_float64(backend, dtype):
    x64, t, _ = make_case((12, 257), probs=False, weighted=False, ignore_index=-100, scale=4.0)
    x = x64.to(dtype)
    got, got_g = grads(
        lambda v: ls.cross_entropy(v.to(dtype), t, reduction="none", label_smoothing=0.1, backend=backend), x.double()
    )
    want, want_g = grads(lambda v: F.cross_entropy(v, t, reduction="none", label_smoothing=0.1), x.double())
    # Inputs are the same rounded values; the fused backends accumulate in float32 and round the loss
    # and each gradient entry once to the output dtype: half an ulp relative (2^-8 bf16, 2^-11 fp16)
    # plus float32 accumulation noise.
    ulp = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=2 * ulp, atol=1e-6)
    torch.testing.assert_close(got_g.double(), want_g, rtol=2 * ulp, atol=2 * ulp * want_g.abs().max().item())


@pytest.mark.parametrize("backend", ALL)
def test_bf16_confident_row_keeps_its_target_gradient(backend):
    # p_target = 0.9999, eps = 0: the target gradient p - 1 = -1e-4 must be computed in float32 before
    # rounding; computed in bf16 from a rounded p it would be 0 or a whole bf16 step of 1 (0.0039).
    c = 8
    x = torch.zeros(1, c, dtype=torch.float64)
    x[0, 0] = math.log(0.9999 * (c - 1) / 0.0001)
    xb = x.to(torch.bfloat16).requires_grad_(True)
    ls.cross_entropy(xb, torch.tensor([0]), reduction="sum", backend=backend).backward()
    p = torch.softmax(xb.detach().double(), 1)
    want = p[0, 0].item() - 1.0
    assert -2e-4 < want < -5e-5
    assert abs(xb.grad[0, 0].double().item() - want) <= abs(want) * 2.0**-8


@pytest.mark.parametrize("backend", FUSED)
def test_nan_and_inf_rows_and_all_ignored(backend):
    x = torch.randn(4, 6, dtype=torch.float32)
    x[1, 2] = math.nan
    x[2, 3] = math.inf
    t = torch.tensor([0, 1, 2, 3])
    got = ls.cross_entropy(x, t, reduction="none", label_smoothing=0.1, backend=backend)
    want = F.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(got, want, equal_nan=True)
    # an ignored row's loss and gradient are 0 even when its logits are NaN
    xi = x.clone().requires_grad_(True)
    ls.cross_entropy(xi, torch.tensor([0, -100, -100, 3]), label_smoothing=0.1, backend=backend).backward()
    assert torch.all(xi.grad[1:3] == 0) and torch.isfinite(xi.grad).all()
    xa = torch.randn(3, 5, requires_grad=True)
    loss = ls.cross_entropy(xa, torch.full((3,), -100), label_smoothing=0.1, backend=backend)
    loss.backward()
    assert torch.isnan(loss) and torch.all(xa.grad == 0)


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_and_strided_inputs(backend):
    base = torch.randn(6, 40, dtype=torch.float64 if backend == "chunked" else torch.float32)
    t = torch.randint(0, 20, (6,))
    for x in (base[:, ::2], base[:, :20], base.t()[:20].t()):
        xr = x.clone().requires_grad_(True)
        xf = x.clone().requires_grad_(True)
        torch.testing.assert_close(
            ls.cross_entropy(xf, t, label_smoothing=0.2, backend=backend), F.cross_entropy(xr, t, label_smoothing=0.2)
        )


def test_weight_or_target_requiring_grad():
    x = torch.randn(4, 5)
    w = torch.rand(5, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="weight"):
        ls.cross_entropy(x, t, w, backend="chunked")
    ls.cross_entropy(x, t, w).backward()  # auto falls back to the reference, which differentiates weight
    assert w.grad is not None
    soft = torch.softmax(torch.randn(4, 5), 1).requires_grad_(True)
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy(x, soft, backend="chunked")


def test_triton_backend_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs a CUDA tensor"):
        ls.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), backend="triton")


def test_auto_on_cpu_is_torch_for_small_plain_problems_and_chunked_otherwise():
    from labelsmooth.functional import SMALL_CPU_PROBLEM, _resolve_backend

    small, big = torch.randn(2, 3), torch.empty(SMALL_CPU_PROBLEM // 1000 + 1, 1000)
    t = torch.tensor([0, 1])
    assert _resolve_backend("auto", small, t, None, plain=True) == "torch"
    assert _resolve_backend("auto", small, t, None, plain=False) == "chunked"  # z_loss / softcap
    assert _resolve_backend("auto", big, t, None, plain=True) == "chunked"
    with pytest.raises(ValueError, match="z_loss"):
        ls.cross_entropy(small, t, backend="torch", z_loss=1e-3)


@pytest.mark.parametrize("compile_backend", ["aot_eager"])
def test_torch_compile_on_cpu(compile_backend):
    x = torch.randn(8, 33, requires_grad=True)
    t = torch.randint(0, 33, (8,))

    def step(v):
        return ls.cross_entropy(v * 2.0, t, label_smoothing=0.1, z_loss=1e-4, backend="chunked")

    compiled = torch.compile(step, fullgraph=False, backend=compile_backend)
    loss = compiled(x)
    loss.backward()
    want_x = x.detach().clone().requires_grad_(True)
    want = formula(want_x * 2.0, t, None, None, 0.1, 1e-4, None, "mean")
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, want_x.grad, rtol=1e-5, atol=1e-6)


# ---- what a user swapping in labelsmooth runs into ---------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_uint8_targets_do_not_wrap_the_ignore_index(backend):
    # In uint8, -100 would equal 156: the row must count, as in torch.
    x = torch.randn(4, 200)
    t = torch.tensor([156, 3, 5, 170], dtype=torch.uint8)
    torch.testing.assert_close(
        ls.cross_entropy(x, t, reduction="none", backend=backend), F.cross_entropy(x, t.long(), reduction="none")
    )
    with pytest.raises(IndexError, match="156"):
        ls.cross_entropy(torch.randn(3, 10), torch.tensor([156, 3, 5], dtype=torch.uint8), backend=backend)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_is_a_clear_error_not_a_wrong_number(backend):
    inp = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    loss = ls.cross_entropy(inp @ w, torch.tensor([0, 1, 2, 3]), backend=backend)
    with pytest.raises(RuntimeError, match=r"backend=.reference."):
        torch.autograd.grad(loss, inp, create_graph=True)


def test_double_backward_through_the_reference_matches_torch():
    inp = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    grads_w = []
    for f in (F.cross_entropy, lambda a, b: ls.cross_entropy(a, b, backend="reference")):
        w = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (g,) = torch.autograd.grad(f(inp @ w, y), inp, create_graph=True)
        g.pow(2).sum().backward()
        grads_w.append(w.grad)
    torch.testing.assert_close(grads_w[0], grads_w[1])


@pytest.mark.parametrize("backend", ALL)
def test_cpu_autocast_follows_torch_float32_policy(backend):
    x = torch.randn(64, 10) * 4
    y = torch.randint(0, 10, (64,))
    w = torch.rand(10) + 0.5
    want = F.cross_entropy(x.double(), y, w.double(), label_smoothing=0.1)
    lin = torch.nn.Linear(10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ls.cross_entropy(x, y, w, label_smoothing=0.1, backend=backend)
        h = lin(x)
        assert h.dtype == torch.bfloat16
        out = ls.cross_entropy(h, y, backend=backend)
        ref = F.cross_entropy(h, y)
    assert abs(got.item() - want.item()) < 1e-5
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_torch_func_grad_and_vmap_use_the_reference():
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 5, 2, 1])
    got = torch.func.grad(lambda v: ls.cross_entropy(v, y, label_smoothing=0.1))(x)
    want = torch.func.grad(lambda v: F.cross_entropy(v, y, label_smoothing=0.1))(x)
    torch.testing.assert_close(got, want)
    per = torch.func.vmap(lambda xi, yi: ls.cross_entropy(xi, yi, label_smoothing=0.1))(x, y)
    torch.testing.assert_close(per, F.cross_entropy(x, y, reduction="none", label_smoothing=0.1))
    for backend in ALL:  # a fused backend named explicitly computes through the reference here too
        got = torch.func.grad(lambda v, b=backend: ls.cross_entropy(v, y, label_smoothing=0.1, backend=b))(x)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ALL)
def test_mean_with_all_zero_weights_is_nan_like_torch(backend):
    x = torch.randn(3, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    loss = ls.cross_entropy(x, y, weight=torch.zeros(5), backend=backend)
    loss.backward()
    xr = x.detach().clone().requires_grad_(True)
    F.cross_entropy(xr, y, weight=torch.zeros(5)).backward()
    assert torch.isnan(loss)
    assert torch.isnan(x.grad).all() and torch.isnan(xr.grad).all()


@pytest.mark.parametrize("backend", FUSED)
def test_inplace_refuses_a_parameter(backend):
    p = torch.nn.Parameter(torch.randn(4, 7))
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"inplace=True would overwrite input, an nn.Parameter"):
        ls.cross_entropy(p, torch.tensor([0, 1, 2, 3]), backend=backend, inplace=True)
    assert torch.equal(p.detach(), before)
    with pytest.raises(RuntimeError, match=r"nn\.Parameter"):  # torch's own class for this misuse
        ls.CrossEntropyLoss(backend=backend, inplace=True)(p, torch.tensor([0, 1, 2, 3]))
    # Logits computed from a parameter are not the parameter: in place is fine there.
    ls.cross_entropy(p * 2.0, torch.tensor([0, 1, 2, 3]), backend=backend, inplace=True).backward()
    torch.testing.assert_close(p.detach(), before)


@pytest.mark.parametrize("backend", FUSED)
def test_no_grad_computes_no_gradient_and_consumes_nothing(backend):
    x = torch.randn(4, 7, requires_grad=True)
    before = x.detach().clone()
    with torch.no_grad():
        loss = ls.cross_entropy(x, torch.tensor([0, 1, 2, 3]), backend=backend, inplace=True)
    assert torch.equal(x.detach(), before)
    torch.testing.assert_close(loss, F.cross_entropy(before, torch.tensor([0, 1, 2, 3])))


@pytest.mark.parametrize("backend", FUSED)
def test_inplace_on_expanded_logits_falls_back_to_a_buffer(backend):
    row = torch.randn(1, 6, requires_grad=True)
    x = row.expand(4, 6)
    y = torch.tensor([0, 1, 2, 3])
    ls.cross_entropy(x, y, backend=backend, inplace=True, label_smoothing=0.1).backward()
    r2 = row.detach().clone().requires_grad_(True)
    F.cross_entropy(r2.expand(4, 6), y, label_smoothing=0.1).backward()
    torch.testing.assert_close(row.grad, r2.grad)


def test_argument_types_read_like_torch():
    import numpy as np

    x = torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match=r"weight must be a torch\.Tensor"):
        ls.cross_entropy(x, y, weight=[1.0] * 10)
    torch.testing.assert_close(ls.cross_entropy(x, y, ignore_index=np.int64(-100)), F.cross_entropy(x, y))
    with pytest.raises(TypeError, match="inplace"):
        ls.CrossEntropyLoss(inplace="yes")
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        ls.smooth_labels(torch.tensor([0]), 3, 0.3, dtype=torch.long)


# ---- the chunked kernel's CPU worker threads, its off-CPU (masked) path and its block-size rule ------


def _chunked_vs_reference(x, t, w, eps, z_loss, softcap, **kw):
    grad = torch.empty_like(x)
    scale = torch.tensor(0.37, dtype=reference.compute_dtype(x.dtype))
    rows = chunked.fused_ce(x, t, w, -100, eps, z_loss, softcap, grad, grad_scale=scale, **kw)
    xr = x.detach().double().requires_grad_(True)
    want = reference.ce_rows(
        xr, t.double() if t.is_floating_point() else t, None if w is None else w.double(), -100, eps, z_loss, softcap
    )
    (want_g,) = torch.autograd.grad(want.sum() * 0.37, xr)
    return rows, grad, want.detach(), want_g


@pytest.mark.parametrize("workers,masked", [(3, False), (1, True), (2, True)])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_worker_threads_and_masked_path_match_reference(workers, masked, probs, dtype):
    # masked=True is the path accelerators take (no host reads: masks instead of index lists), run here on
    # CPU; workers > 1 spreads the blocks over threads. Both must give the reference's numbers, and the
    # threads must not change a single bit against one thread with the same blocks.
    x, t, w = make_case((29, 113), probs=probs, weighted=True, ignore_index=None if probs else -100, dtype=dtype)
    if not probs:
        x[0, 5] = math.nan  # row 0 is ignored (every third target is -100): its gradient is still exactly 0
    t = t.to(dtype) if probs else t
    w = w.to(reference.compute_dtype(dtype))
    # float64 agrees to rounding; float32 to a few ulps of the row sums (2e-5, as for triton above)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for eps, z_loss, softcap in [(0.0, 0.0, None), (0.2, 1e-3, 6.0), (0.1, 0.0, None)]:
        rows, grad, want, want_g = _chunked_vs_reference(
            x, t, w, eps, z_loss, softcap, block_rows=4, workers=workers, masked=masked
        )
        if not probs:
            assert torch.isnan(x[0]).any() and torch.all(grad[0] == 0) and rows[0] == 0
            keep = t != -100
            rows, grad, want, want_g = rows[keep], grad[keep], want[keep], want_g[keep]
        torch.testing.assert_close(rows.double(), want, rtol=tol, atol=tol)
        torch.testing.assert_close(grad.double(), want_g, rtol=tol, atol=tol)
        one_rows, one_grad, _, _ = _chunked_vs_reference(
            x, t, w, eps, z_loss, softcap, block_rows=4, workers=1, masked=masked
        )
        assert torch.equal(one_rows[keep] if not probs else one_rows, rows)
        assert torch.equal(one_grad[keep] if not probs else one_grad, grad)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("probs", [False, True])
def test_chunked_confident_rows_keep_s_minus_one_on_both_paths(masked, probs):
    # Rows whose top class leads by 17 over 999 others (S - 1 = 4e-5), one with a two-way tie at the top
    # (S - 1 = 1 + 4e-5), one led by a non-target class. The loss of a confident row is ~S - 1, which float32
    # S = 1 + (S - 1) keeps only to 6e-8 absolute; summed without one max element it is exact to float32.
    x = torch.zeros(4, 1000)
    x[0, 3] = 17.0
    x[1, 3] = x[1, 7] = 17.0
    x[2, 9] = 17.0
    x[3, 3] = 17.0
    x[3] += 100.0  # large logits: z = x - m must still be exact
    if probs:
        t = torch.zeros(4, 1000)
        t[:, 3] = 1.0
    else:
        t = torch.tensor([3, 3, 3, 3])
    rows, grad, want, want_g = _chunked_vs_reference(x, t, None, 0.0, 0.0, None, block_rows=3, masked=masked)
    torch.testing.assert_close(rows.double(), want, rtol=2e-6, atol=0)
    if not probs:
        # p_y - 1 of the confident rows (~ -4e-5) to float32 relative accuracy, from expm1 (a class index
        # target only: with probabilities the gradient is p * A - t by subtraction, exact to ~6e-8 absolute)
        torch.testing.assert_close(grad[:, 3].double(), want_g[:, 3], rtol=2e-6, atol=0)
    torch.testing.assert_close(grad.double(), want_g, rtol=2e-6, atol=1e-7)


def test_chunked_block_rows_follow_the_device(monkeypatch):
    # CPU: cache-sized blocks. Elsewhere: a few large blocks (256 MiB of float32 work, at most 1/64 of the
    # device's memory), so that 16384 x 128256 is tens of blocks, not thousands of launches per op.
    assert chunked.default_block_rows(32000) == chunked.BLOCK_BYTES // (4 * 32000)
    assert chunked.default_block_rows(10**7) == 1
    off_cpu = chunked.default_block_rows(128256, "meta")
    assert off_cpu == chunked.DEVICE_BLOCK_BYTES // (4 * 128256)
    assert 16 <= -(-16384 // off_cpu) <= 64

    class Props:
        total_memory = 4 << 30  # a small GPU: 1/64 of it (64 MiB) caps the block

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert chunked.default_block_rows(128256, "cuda") == (64 << 20) // (4 * 128256)
    Props.total_memory = 141 << 30  # an H200: the 256 MiB budget holds
    assert chunked.default_block_rows(128256, torch.device("cuda", 0)) == off_cpu


def test_chunked_workers_follow_the_work(monkeypatch):
    cpu, meta = torch.device("cpu"), torch.device("meta")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert chunked.default_workers(4096, 32000, 32, cpu) == 8
    assert chunked.default_workers(4096, 32000, 1024, cpu) == 4  # one per block
    assert chunked.default_workers(64, 300, 8, cpu) == 1  # too little work to wake a thread
    assert chunked.default_workers(4096, 32000, 32, meta) == 1  # accelerators: blocks run in order
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert chunked.default_workers(4096, 32000, 32, cpu) == 1


def test_chunked_workers_under_inference_mode_and_with_errors():
    x, t, _ = make_case((40, 31), probs=False, weighted=False, ignore_index=-100, dtype=torch.float32)
    want = chunked.fused_ce(x, t, None, -100, 0.1, 0.0, None, None, block_rows=3, workers=1)
    with torch.inference_mode():
        xi = x.clone()
        got = chunked.fused_ce(xi, t, None, -100, 0.1, 0.0, None, xi, block_rows=3, workers=2)
    assert torch.equal(got, want)
    threads = torch.get_num_threads()
    from labelsmooth.kernels import _workers

    seen = []

    def fn(i):
        if i == 5:
            raise ValueError("block 5")
        seen.append(i)

    with pytest.raises(ValueError, match="block 5"):
        _workers.run_blocks(fn, 1000, 2)
    assert len(seen) < 1000 and torch.get_num_threads() == threads
    # the workers survive an error and serve the next call
    out = torch.zeros(50)
    _workers.run_blocks(lambda i: out[i].fill_(i), 50, 2)
    assert torch.equal(out, torch.arange(50.0))


def test_chunked_loss_needs_no_gradient_graph_in_workers():
    # logits that require grad, read by worker threads (where grad mode is on by default)
    x = torch.randn(64, 20000, requires_grad=True)
    t = torch.randint(0, 20000, (64,))
    loss = ls.cross_entropy(x, t, label_smoothing=0.1, backend="chunked")
    loss.backward()
    xr = x.detach().clone().requires_grad_(True)
    F.cross_entropy(xr, t, label_smoothing=0.1).backward()
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), t, label_smoothing=0.1))
    torch.testing.assert_close(x.grad, xr.grad)


def test_chunked_masked_path_reads_no_values_on_the_host(monkeypatch):
    # What an accelerator needs to stay asynchronous: no .item(), no nonzero/index lists, no tensor in an
    # `if`. Checked on CPU by making every such read an error while the masked path runs.
    x, t, w = make_case((10, 57), probs=False, weighted=True, ignore_index=-100, dtype=torch.float32)
    soft = torch.softmax(torch.randn(10, 57), 1)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read on the masked path")

    for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    for target in (t, soft):
        grad = torch.empty_like(x)
        chunked.fused_ce(
            x, target, w, -100, 0.1, 1e-3, 5.0, grad, grad_scale=torch.tensor(0.5), block_rows=3, masked=True
        )
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="host read"):  # the check itself bites on the CPU path
        monkeypatch.setattr(torch.Tensor, "nonzero", forbidden)
        chunked.fused_ce(x, t, w, -100, 0.1, 0.0, None, torch.empty_like(x), block_rows=3, masked=False)


def test_chunked_workers_run_single_threaded_ops():
    # Each worker must run torch with one intra-op thread, also after its first op (torch initialises a
    # thread's count lazily from the process default), while the caller keeps its own count.
    from labelsmooth.kernels import _workers

    caller = torch.get_num_threads()
    counts = []

    def fn(i):
        torch.ones(70000).sum()  # an op big enough to consult the thread count
        counts.append(torch.get_num_threads())

    _workers.run_blocks(fn, 8, 2)
    assert counts == [1] * 8
    assert torch.get_num_threads() == caller
