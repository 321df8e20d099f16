"""The Triton kernel against ``reference.ce_rows`` in float64, under the Triton interpreter on CPU.

``TRITON_INTERPRET=1`` is the default here; with ``TRITON_INTERPRET=0`` on a CUDA machine the same
tests run the compiled kernel on the GPU (the reference is always computed on CPU in float64).

Blocks are kept small (``block_size=128`` split into 2 tile rows of 64 lanes, or less) so that C = 257
spans several blocks with a one-element last block, which exercises the online max, the lane fold
and the masking the GPU relies on.

Tolerances, derived rather than tuned:

* loss: the kernel accumulates in fp32 from inputs that are exact in fp32 (bf16/fp16 values upcast
  exactly), so for every logits dtype the loss is good to a few fp32 roundings per reduction level:
  rtol 1e-5 (about 100 ulps), atol 1e-6 for losses near 0.
* gradient: computed in fp32 and rounded once to the logits' dtype at the store, so it is off the
  float64 value by at most one rounding, unit roundoff u = 2**-24 (fp32), 2**-11 (fp16), 2**-8
  (bf16), plus the fp32 computation error (atol 1e-6; gradient entries are O(1)). Exception: the
  Triton interpreter (triton 3.9) converts fp32 to bf16 by truncation, not round-to-nearest as the
  GPU does, so under it a bf16 gradient may be off by a whole bf16 step, 2**-7 relative.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import pytest
import torch

pytest.importorskip("triton")

from labelsmooth.kernels import triton_ce
from labelsmooth.reference import ce_rows

INTERPRETED = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is off and there is no CUDA device", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
BF16_STEP = 2.0**-7 if INTERPRETED else 2.0**-8  # truncation vs round-to-nearest, see above
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2.0**-11 + 1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=BF16_STEP + 1e-5, atol=1e-6),
}
SMALL = dict(block_size=128, iters=2)
C = 257


def reference(logits, target, weight=None, ignore_index=-100, eps=0.0, z=0.0, cap=None):
    """Row losses and d loss_row / d logits in float64, from the same (rounded) logits the kernel sees."""
    x = logits.detach().cpu().double().requires_grad_()
    t = target.cpu().double() if target.is_floating_point() else target.cpu()
    w = None if weight is None else weight.cpu().double()
    loss = ce_rows(x, t, w, ignore_index, eps, z, cap)
    # Rows are independent, so the gradient of the sum is each row's own gradient.
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def run(logits, target, weight=None, ignore_index=-100, eps=0.0, z=0.0, cap=None, **cfg):
    grad = torch.full_like(logits, float("nan"))  # every element must be written
    loss = triton_ce.fused_ce(logits, target, weight, ignore_index, eps, z, cap, grad, **cfg)
    return loss, grad


def check(logits, target, weight=None, ignore_index=-100, eps=0.0, z=0.0, cap=None, **cfg):
    loss, grad = run(logits, target, weight, ignore_index, eps, z, cap, **cfg)
    ref_loss, ref_grad = reference(logits, target, weight, ignore_index, eps, z, cap)
    assert loss.dtype == torch.float32 and loss.shape == (logits.shape[0],)
    assert grad.dtype == logits.dtype
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL, equal_nan=True)
    torch.testing.assert_close(f64(grad), ref_grad, **GRAD_TOL[logits.dtype], equal_nan=True)
    return f64(loss), f64(grad)


def f64(t):
    return t.detach().cpu().double()


def make_problem(kind, rows=6, num_classes=C, dtype=torch.float32, weighted=False, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, num_classes, generator=gen)).to(dtype)
    if kind == "index":
        target = torch.randint(0, num_classes, (rows,), generator=gen)
        target[0] = num_classes - 1  # the lone element of the last, partial block
        if rows > 2:
            target[2] = -100  # ignored
    else:
        target = torch.softmax(2.0 * torch.randn(rows, num_classes, generator=gen), dim=-1)
    weight = torch.rand(num_classes, generator=gen) + 0.25 if weighted else None
    return logits.to(DEVICE), target.to(DEVICE), None if weight is None else weight.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_matches_reference(kind, weighted, eps, dtype):
    logits, target, weight = make_problem(kind, dtype=dtype, weighted=weighted)
    check(logits, target, weight, eps=eps, **SMALL)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_z_loss_and_softcap(kind, weighted, eps):
    # scale 6 with softcap 5: |x / s| covers both branches of the kernel's tanh (below and above 0.4).
    logits, target, weight = make_problem(kind, weighted=weighted, scale=6.0, seed=1)
    check(logits, target, weight, eps=eps, z=1e-2, cap=5.0, **SMALL)


def test_softcap_bf16():
    logits, target, weight = make_problem("index", dtype=torch.bfloat16, weighted=True, scale=6.0, seed=2)
    check(logits, target, weight, eps=0.1, z=1e-3, cap=5.0, **SMALL)


@pytest.mark.parametrize("num_classes", [1, 2, 3])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_few_classes(kind, num_classes):
    logits, target, weight = make_problem(kind, rows=4, num_classes=num_classes, weighted=True)
    if kind == "index":
        target[2] = -100
    for eps in (0.0, 0.1):
        check(logits, target, None, eps=eps)  # default launch configuration
        check(logits, target, weight, eps=eps, z=1e-2, block_size=2, iters=1)  # several blocks


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_rows_of_whole_blocks(kind):
    # C a multiple of the block: only unmasked blocks, no masked last one.
    logits, target, weight = make_problem(kind, num_classes=256, weighted=True)
    check(logits, target, weight, eps=0.1, z=1e-2, **SMALL)
    check(logits, target, None, eps=0.1, block_size=64, iters=4)


def test_ignore_index_non_default():
    logits, target, weight = make_problem("index", weighted=True)
    # Class 3 is a real class, ignored only through ignore_index; -100 is now out of range, so row 2
    # gets an ordinary class instead.
    target[1] = 3
    target[4] = 3
    target[2] = 0
    loss, grad = check(logits, target, weight, ignore_index=3, eps=0.1, z=1e-2, **SMALL)
    assert loss[1] == 0 and loss[4] == 0
    assert (grad[1] == 0).all() and (grad[4] == 0).all()
    assert (loss[[0, 2, 3, 5]] > 0).all()


def test_all_rows_ignored():
    # NaN logits prove that ignored rows are never read: loss and gradient are exact zeros.
    logits = torch.full((5, C), float("nan"), device=DEVICE)
    target = torch.full((5,), -100, device=DEVICE)
    loss, grad = run(logits, target, torch.rand(C, device=DEVICE), -100, 0.1, 1e-2, 5.0, **SMALL)
    assert torch.equal(f64(loss), torch.zeros(5, dtype=torch.float64))
    assert torch.equal(f64(grad), torch.zeros(5, C, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_stride_larger_than_num_classes(dtype):
    logits, target, weight = make_problem("index", dtype=dtype, weighted=True)
    wide = torch.full((6, C + 37), 1e4, dtype=dtype, device=DEVICE)  # poison beyond column C
    wide[:, :C] = logits
    view = wide[:, :C]
    grad_wide = torch.full((6, C + 11), -7.0, dtype=dtype, device=DEVICE)
    grad_view = grad_wide[:, :C]
    loss = triton_ce.fused_ce(view, target, weight, -100, 0.1, 1e-2, None, grad_view, **SMALL)
    ref_loss, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2)
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad_view), ref_grad, **GRAD_TOL[dtype])
    assert (grad_wide[:, C:] == -7.0).all()  # nothing written past the row


def test_probability_target_strided():
    logits, target, weight = make_problem("prob", weighted=True)
    target_t = target.t().contiguous().t()  # same values, stride(1) != 1
    assert target_t.stride(1) != 1
    check(logits, target_t, weight, eps=0.1, **SMALL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_inplace_matches_separate_buffer(kind, dtype):
    logits, target, weight = make_problem(kind, dtype=dtype, weighted=True)
    loss, grad = run(logits, target, weight, -100, 0.1, 1e-2, 5.0, **SMALL)
    buf = logits.clone()
    loss_inplace = triton_ce.fused_ce(buf, target, weight, -100, 0.1, 1e-2, 5.0, buf, **SMALL)
    assert torch.equal(loss_inplace, loss)
    assert torch.equal(buf, grad)
    _ref_loss, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2, 5.0)
    torch.testing.assert_close(f64(buf), ref_grad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_forward_only(kind):
    logits, target, weight = make_problem(kind, weighted=True)
    before = logits.clone()
    loss = triton_ce.fused_ce(logits, target, weight, -100, 0.1, 1e-2, 5.0, None, **SMALL)
    loss_with_grad, _ = run(logits, target, weight, -100, 0.1, 1e-2, 5.0, **SMALL)
    assert torch.equal(loss, loss_with_grad)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_grad_scale(kind):
    # A 0-d tensor on the device multiplies the written gradient (the loss is unscaled); ignored
    # rows stay exactly 0. The product is rounded once, so the fp32 tolerance still holds.
    logits, target, weight = make_problem(kind, weighted=True)
    scale = torch.tensor(0.37, device=DEVICE)
    grad = torch.full_like(logits, float("nan"))
    loss = triton_ce.fused_ce(logits, target, weight, -100, 0.1, 1e-2, 5.0, grad, grad_scale=scale, **SMALL)
    ref_loss, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2, 5.0)
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad), 0.37 * ref_grad, **GRAD_TOL[torch.float32])
    if kind == "index":
        assert (f64(grad[2]) == 0).all()
    # Forward only: grad_scale has nothing to scale and is ignored.
    assert torch.equal(
        triton_ce.fused_ce(logits, target, weight, -100, 0.1, 1e-2, 5.0, None, grad_scale=scale, **SMALL), loss
    )


def test_large_logits_confident_rows_fp32():
    # |x| ~ 1e4, where one fp32 step is 1e-3: computing -log p as lse - x would leave nothing of
    # these losses. Rows 0 and 1 are confident (losses ~1.6e-3 and ~5e-7, and log(S) instead of
    # log1p(S - 1) would miss them by 4e-5 and 10% relative); row 2 is not; row 3 has a two-way tie.
    gen = torch.Generator().manual_seed(3)
    logits = 1e4 + 0.01 * torch.randn(4, C, generator=gen)
    logits[0, 5] = 1e4 + 12
    logits[1, 256] = 1e4 + 20
    logits[2, 7] = 1e4 + 1
    logits[3, 9] = logits[3, 200] = 1e4 + 15
    logits, target = logits.to(DEVICE), torch.tensor([5, 256, 7, 9], device=DEVICE)
    loss, grad = run(logits, target, **SMALL)
    ref_loss, ref_grad = reference(logits, target)
    assert ref_loss[1] < 1e-6
    torch.testing.assert_close(f64(loss), ref_loss, rtol=1e-5, atol=0)
    # Also p_y - 1 of the confident rows (-1.6e-3, -5e-7) to fp32 relative accuracy.
    torch.testing.assert_close(f64(grad), ref_grad, rtol=1e-5, atol=1e-12)
    for eps in (0.1, 1.0):
        check(logits, target, eps=eps, **SMALL)


def test_bf16_confident_row_target_gradient():
    # p_target = 0.9999 with eps = 0: the target's gradient p_y - 1 ~ -1e-4 must survive, right to
    # bf16 rounding, which needs it computed in fp32 (bf16 p_y would round to exactly 1).
    logits = torch.zeros(2, C)
    logits[0, 100] = math.log(0.9999 * (C - 1) / 1e-4)
    logits[1, 256] = math.log(0.9999 * (C - 1) / 1e-4)
    logits = logits.to(device=DEVICE, dtype=torch.bfloat16)
    target = torch.tensor([100, 256], device=DEVICE)
    _loss, grad = check(logits, target, **SMALL)
    _ref_loss, ref_grad = reference(logits, target)
    assert -2e-4 < ref_grad[0, 100] < -5e-5
    assert abs(grad[0, 100] - ref_grad[0, 100]) <= BF16_STEP * abs(ref_grad[0, 100])
    assert abs(grad[1, 256] - ref_grad[1, 256]) <= BF16_STEP * abs(ref_grad[1, 256])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, under the interpreter, on NaN/inf math
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_nan_and_inf_rows(kind):
    logits, target, weight = make_problem(kind, weighted=True)
    logits[1, 17] = float("nan")
    logits[3, 200] = float("inf")
    logits[4, 30:100] = float("-inf")  # finite max: an ordinary row with some zero probabilities
    logits[5] = float("-inf")  # no finite max: NaN, as in the reference
    for eps in (0.0, 0.1):
        loss, grad = check(logits, target, None, eps=eps, **SMALL)
        assert loss[[1, 3, 5]].isnan().all() and grad[[1, 3, 5]].isnan().all()
        assert loss[0].isfinite() and grad[[0, 4]].isfinite().all()
        # Row 4 has probability 0 on classes that smoothing (or a soft target) gives mass: inf loss.
        assert loss[4].isfinite() if kind == "index" and eps == 0 else loss[4] == float("inf")
    # Under a softcap +inf becomes the finite cap and -inf its negative; NaN stays NaN.
    loss, grad = check(logits, target, weight, eps=0.1, cap=5.0, **SMALL)
    assert loss[[0, 3, 4, 5]].isfinite().all() and loss[1].isnan()


def test_default_launch_configuration():
    # GPU defaults: 16-byte vectors, 32 fp32 values of the tile per thread (4 rows of 16-bit logits,
    # 8 of fp32; half as many with weights or probability targets), fewer rows for short rows, 8 warps.
    # Every one is meant to keep 16 warps resident per SM (two programs of 8): <= 128 registers.
    assert triton_ce._launch_config(128256, 2, False, None, None, None) == (4, 2048, 8)
    assert triton_ce._launch_config(128256, 4, False, None, None, None) == (8, 1024, 8)
    assert triton_ce._launch_config(128256, 2, True, None, None, None) == (2, 2048, 8)
    assert triton_ce._launch_config(128256, 4, True, None, None, None) == (4, 1024, 8)
    assert triton_ce._launch_config(32000, 2, False, None, None, None) == (4, 2048, 8)
    assert triton_ce._launch_config(1000, 2, False, None, None, None) == (1, 1024, 4)
    assert triton_ce._launch_config(3, 4, False, None, None, None) == (1, 4, 1)
    assert triton_ce.intended_occupancy(8) == (2, 128)
    assert triton_ce.intended_occupancy(4) == (4, 128)
    assert triton_ce.intended_occupancy(1) == (16, 128)
    with pytest.raises(ValueError):
        triton_ce._launch_config(257, 4, False, 96, None, None)


def test_row_layout():
    # 16-byte vectors where rows start at a vector boundary; SHIFT where they do not (C = 50257).
    assert triton_ce._row_layout(2, 8192, 128256) == dict(VEC=8, SHIFT=False)
    assert triton_ce._row_layout(2, 8192, 50257, 50257) == dict(VEC=8, SHIFT=True, G_ALIGNED=True)
    assert triton_ce._row_layout(4, 8192, 50257, 50260) == dict(VEC=4, SHIFT=True, G_ALIGNED=False)
    # A stride of 1000 is a multiple of 8 but Triton only knows multiples of 16: shifted (a0 = 0).
    assert triton_ce._row_layout(2, 1024, 1000) == dict(VEC=8, SHIFT=True)
    assert triton_ce._row_layout(4, 2, 3) == dict(VEC=1, SHIFT=False)  # a block of 2: scalar vectors
    # Shifted rows with extra operands get half the tile again.
    assert triton_ce._launch_config(50257, 2, True, None, None, None, heavy_shifted=True) == (1, 2048, 8)
    assert triton_ce._launch_config(50257, 4, False, None, None, None, heavy_shifted=True) == (4, 1024, 8)


def test_default_configuration_runs():
    logits, target, weight = make_problem("index", weighted=True)
    check(logits, target, weight, eps=0.1)


def test_float64_and_bad_shapes_raise():
    logits = torch.randn(3, 5, dtype=torch.float64, device=DEVICE)
    target = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        triton_ce.fused_ce(logits, target, None, -100, 0.0, 0.0, None, None)
    with pytest.raises(ValueError, match="contiguous"):
        triton_ce.fused_ce(torch.randn(5, 3, device=DEVICE).t(), target, None, -100, 0.0, 0.0, None, None)
    with pytest.raises(ValueError, match="shape"):
        triton_ce.fused_ce(logits.float(), target[:2], None, -100, 0.0, 0.0, None, None)


def test_no_rows():
    target = torch.zeros(0, dtype=torch.long, device=DEVICE)
    loss = triton_ce.fused_ce(
        torch.randn(0, 7, device=DEVICE), target, None, -100, 0.1, 0.0, None, torch.empty(0, 7, device=DEVICE)
    )
    assert loss.shape == (0,) and loss.dtype == torch.float32


def test_is_available():
    assert triton_ce.is_available()


def test_check_targets_flags_an_out_of_range_class_without_reading_it_on_the_host():
    # Off the CPU the forward kernel itself flags bad class indices (ignore_index excepted) in a device
    # scalar checked by torch._assert_async; on a CPU tensor that assertion fails at once.
    logits = torch.randn(4, 9, device=DEVICE)
    good = torch.tensor([0, 8, -100, 3], device=DEVICE)
    loss, _ = triton_ce.forward(logits, good, None, -100, 0.1, 0.0, None, check_targets=True)
    torch.testing.assert_close(f64(loss), reference(logits, good, eps=0.1)[0], **LOSS_TOL)
    if DEVICE != "cpu":
        pytest.skip("a device-side assertion poisons the CUDA context; checked on CPU tensors only")
    for bad in ([0, 9, -100, 3], [0, -1, 2, 3]):
        with pytest.raises(RuntimeError, match="outside"):
            triton_ce.forward(logits, torch.tensor(bad), None, -100, 0.1, 0.0, None, check_targets=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("num_classes", [61, 83])
def test_rows_not_on_vector_boundaries(num_classes, kind, dtype):
    # Rows of C = 61 or 83 start at every offset from a 16-byte boundary (row * C mod VEC takes all
    # values): each row is read as a masked head, whole blocks of its aligned body, a block masked by
    # whole vectors and its last partial vector. 32-column blocks of 2 rows make C = 83 two full
    # blocks, a vector-masked one and an edge. Uniform smoothing counts
    # each lane's elements across all of these, weights and prior read at the shifted columns.
    logits, target, weight = make_problem(kind, rows=9, num_classes=num_classes, dtype=dtype, weighted=True)
    cfg = dict(block_size=32, iters=2)
    check(logits, target, None, eps=0.1, **cfg)
    check(logits, target, weight, eps=0.1, z=1e-2, cap=5.0, **cfg)
    check(logits, target, None, eps=0.0, **cfg)
    check(logits, target, None, eps=0.1)  # the default launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_rows_at_another_offset_than_the_logits(dtype):
    # grad's row stride differs from the logits' modulo a vector (G_ALIGNED false): the body's loads
    # are aligned for the logits, its stores narrower; every element still written once, nothing past C.
    num_classes = 61
    logits, target, weight = make_problem("index", rows=7, num_classes=num_classes, dtype=dtype, weighted=True)
    grad_wide = torch.full((7, num_classes + 2), -7.0, dtype=dtype, device=DEVICE)
    grad_view = grad_wide[:, :num_classes]
    loss = triton_ce.fused_ce(logits, target, weight, -100, 0.1, 1e-2, None, grad_view, block_size=32, iters=2)
    ref_loss, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2)
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad_view), ref_grad, **GRAD_TOL[dtype])
    assert (grad_wide[:, num_classes:] == -7.0).all()


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_one_launch_gradient_with_grad_output(kind):
    # fused_ce writes the gradient in the forward launch, times a per-row grad_output and grad_scale
    # (the fused linear loss's "none" backward): the same numbers as forward + backward, and ignored
    # rows exactly 0 whatever their grad_output (inf here).
    logits, target, weight = make_problem(kind, num_classes=83, weighted=True)
    go = torch.tensor([0.5, -2.0, float("inf") if kind == "index" else 1.0, 3.0, 0.0, 1.5], device=DEVICE)
    scale = torch.tensor(0.25, device=DEVICE)
    grad = torch.full_like(logits, float("nan"))
    loss = triton_ce.fused_ce(
        logits, target, weight, -100, 0.1, 1e-2, 5.0, grad, grad_output=go, grad_scale=scale, block_size=32, iters=2
    )
    _, stats = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, 5.0, save_stats=True)
    split = triton_ce.backward(
        logits, target, weight, -100, 0.1, 5.0, stats, torch.empty_like(logits), grad_output=go, grad_scale=scale
    )
    ref_loss, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2, 5.0)
    want = ref_grad * (0.25 * f64(go)).unsqueeze(1)
    if kind == "index":
        want[2] = 0.0
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad), want, **GRAD_TOL[torch.float32])
    torch.testing.assert_close(grad, split, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Kernel options: a logit scale s read on the device, the per-row sums for d loss / d s (dscale) and
# the statistics pass's by-products (aux: lse, predicted, entropy).
#
# Tolerances, derived as above: the loss and lse are fp32 accumulations (LOSS_TOL); the gradient is
# s * ghat rounded once to the logits' dtype (GRAD_TOL). dscale_n = sum_c ghat_nc x_nc is an fp32 sum of
# C products, each good to a few fp32 roundings: its error is bounded by about C * 2**-24 of
# sum_c |ghat_nc x_nc|, which is what it is checked against (DSCALE_RTOL of that sum; C <= 1001 here
# gives 6e-5 as the worst case, a pairwise-like tile and lane fold much less). The entropy
# log S - U / S is two terms >= 0, each good to a few fp32 ulps relative: rtol 1e-5, as the loss.

DSCALE_RTOL = 1001 * 2.0**-24
ALL_AUX = frozenset({"lse", "predicted", "entropy"})


def options_reference(logits, target, weight=None, ignore_index=-100, eps=0.0, z=0.0, cap=None, prior=None,
                      s=1.0, go=None, grad_scale=1.0):  # fmt: skip
    """Float64 from the formulas, on the scaled logits x' = s x: row losses, the written gradient
    s * ghat (ghat = d sum_n g_n loss_n / d x'), the rows' sum_c ghat x, sum_c |ghat x| (for the
    tolerance) and autograd's d sum_n g_n loss_n / d s (the definition dscale must sum to)."""
    x = f64(logits)
    t = target.cpu().double() if target.is_floating_point() else target.cpu()
    w = None if weight is None else weight.cpu().double()
    u = None if prior is None else prior.cpu().double()
    g = torch.ones(x.shape[0], dtype=torch.float64) if go is None else f64(go).clone()
    if not target.is_floating_point():
        g[t == ignore_index] = 0.0  # the kernel's ignored rows are 0 whatever grad_output holds
    g = g * grad_scale
    xs = (x * s).requires_grad_()
    loss = ce_rows(xs, t, w, ignore_index, eps, z, cap, u)
    (ghat,) = torch.autograd.grad((loss * g).sum(), xs)
    sc = torch.tensor(float(s), dtype=torch.float64, requires_grad=True)
    (ds_total,) = torch.autograd.grad((ce_rows(x * sc, t, w, ignore_index, eps, z, cap, u) * g).sum(), sc)
    return loss.detach(), s * ghat, (ghat * x).sum(1), (ghat * x).abs().sum(1), ds_total


def aux_reference(logits, s=1.0, cap=None):
    """lse, argmax (first on ties) and entropy of the final logits, in float64."""
    x = f64(logits) * s
    if cap is not None:
        x = cap * torch.tanh(x / cap)
    return (
        torch.logsumexp(x, dim=1),
        torch.argmax(x, dim=1),
        torch.special.entr(torch.softmax(x, dim=1)).sum(1),
    )


def run_options(path, logits, target, weight, eps, z, cap, *, prior=None, s=None, go=None, grad_scale=None,
                dscale=True, grad=None, **cfg):  # fmt: skip
    """The gradient with dscale by one of the two paths: ``one-launch`` (fused_ce: forward writes it)
    or ``split`` (forward with saved statistics, then backward)."""
    rows = logits.shape[0]
    ds = torch.full((rows,), float("nan"), device=DEVICE) if dscale else None
    if grad is None:
        grad = torch.full_like(logits, float("nan"))
    scale = None if s is None else torch.tensor(s, device=DEVICE)
    gs = None if grad_scale is None else torch.tensor(grad_scale, device=DEVICE)
    if path == "one-launch":
        loss = triton_ce.fused_ce(logits, target, weight, -100, eps, z, cap, grad, grad_output=go, grad_scale=gs,
                                  prior=prior, logit_scale=scale, dscale=ds, **cfg)  # fmt: skip
    else:
        loss, stats = triton_ce.forward(logits, target, weight, -100, eps, z, cap, save_stats=True, prior=prior,
                                        logit_scale=scale, **cfg)  # fmt: skip
        triton_ce.backward(logits, target, weight, -100, eps, cap, stats, grad, grad_output=go, grad_scale=gs,
                           prior=prior, logit_scale=scale, dscale=ds, **cfg)  # fmt: skip
    return loss, grad, ds


def check_options(path, logits, target, weight=None, eps=0.0, z=0.0, cap=None, *, prior=None, s=1.0, go=None,
                  grad_scale=None, **cfg):  # fmt: skip
    ref_loss, ref_grad, ref_ds, ref_abs, ref_total = options_reference(
        logits, target, weight, -100, eps, z, cap, prior, s, go, 1.0 if grad_scale is None else grad_scale
    )
    # Without dscale the kernel folds s into the gradient's factors; with it, it multiplies ghat by s.
    loss, grad, _ = run_options(path, logits, target, weight, eps, z, cap, prior=prior, s=s, go=go,
                                grad_scale=grad_scale, dscale=False, **cfg)  # fmt: skip
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad), ref_grad, **GRAD_TOL[logits.dtype])
    loss, grad, ds = run_options(path, logits, target, weight, eps, z, cap, prior=prior, s=s, go=go,
                                 grad_scale=grad_scale, **cfg)  # fmt: skip
    torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(f64(grad), ref_grad, **GRAD_TOL[logits.dtype])
    err = (f64(ds) - ref_ds).abs()
    assert (err <= DSCALE_RTOL * ref_abs + 1e-7).all(), (f64(ds), ref_ds)
    # Summed over the rows, the per-row sums are autograd's d/ds of sum_n g_n loss_n.
    assert abs(f64(ds).sum() - ref_total) <= DSCALE_RTOL * ref_abs.sum() + 1e-7
    return f64(loss), f64(grad), f64(ds)


@pytest.mark.parametrize("path", ["one-launch", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_logit_scale_gradient_and_dscale(kind, dtype, path):
    # s = 0.75 (exact in every dtype) on logits, weights, a prior, z-loss and a softcap whose tanh both
    # branches see, per-row grad_output (inf on the ignored row 2 of index targets) and grad_scale.
    logits, target, weight = make_problem(kind, dtype=dtype, weighted=True, scale=6.0, seed=4)
    prior = torch.softmax(torch.randn(C, generator=torch.Generator().manual_seed(5)), 0).to(DEVICE)
    go = torch.tensor([0.5, -2.0, float("inf") if kind == "index" else 1.0, 3.0, 0.0, 1.5], device=DEVICE)
    _, _, ds = check_options(path, logits, target, weight, 0.1, 1e-2, 5.0, prior=prior, s=0.75, go=go,
                             grad_scale=0.25, **SMALL)  # fmt: skip
    if kind == "index":
        assert ds[2] == 0.0
    # Plain: nothing but the scale (here > 1, so that an unscaled kernel would be far off).
    check_options(path, logits, target, s=1.5, **SMALL)


@pytest.mark.parametrize("path", ["one-launch", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_classes", [1, 10, 37, 1001])
def test_logit_scale_odd_class_counts(num_classes, dtype, path):
    # Rows of 37 and 1001 start at every offset from a 16-byte boundary (their strides are no multiple
    # of 16): the target column may lie in the head that the edge block reads last. Small blocks (32
    # columns of 2 rows) and the default launch.
    logits, target, weight = make_problem("index", rows=7, num_classes=num_classes, dtype=dtype, weighted=True)
    go = torch.linspace(-1.0, 2.0, 7, device=DEVICE)
    cfg = dict(block_size=32, iters=2) if num_classes >= 32 else {}
    check_options(path, logits, target, weight, 0.1, 1e-2, None, s=0.75, go=go, **cfg)
    check_options(path, logits, target, None, 0.0, 0.0, 5.0, s=2.0)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_dscale_rows_with_a_stride_that_is_no_multiple_of_16(kind):
    # Views into wider buffers: rows of 61 logits 66 apart, a gradient 63 apart (another offset from a
    # vector boundary than the logits'), nothing written past column C.
    num_classes = 61
    logits, target, weight = make_problem(kind, rows=9, num_classes=num_classes, weighted=True, seed=6)
    wide = torch.full((9, num_classes + 5), 1e4, device=DEVICE)
    wide[:, :num_classes] = logits
    view = wide[:, :num_classes]
    grad_wide = torch.full((9, num_classes + 2), -7.0, device=DEVICE)
    for path in ("one-launch", "split"):
        grad_wide[:, :num_classes] = float("nan")
        loss, grad, ds = run_options(path, view, target, weight, 0.1, 1e-2, 5.0, s=0.5,
                                     grad=grad_wide[:, :num_classes], block_size=32, iters=2)  # fmt: skip
        ref_loss, ref_grad, ref_ds, ref_abs, _ = options_reference(logits, target, weight, -100, 0.1, 1e-2, 5.0, s=0.5)
        torch.testing.assert_close(f64(loss), ref_loss, **LOSS_TOL)
        torch.testing.assert_close(f64(grad), ref_grad, **GRAD_TOL[torch.float32])
        assert ((f64(ds) - ref_ds).abs() <= DSCALE_RTOL * ref_abs + 1e-7).all()
        assert (grad_wide[:, num_classes:] == -7.0).all()


def test_dscale_target_column_takes_its_final_value():
    # Confident rows with large logits: the target column's pass value p_y coef differs from its final
    # p_y coef - T by T, i.e. by about x_y ~ 40 in the row's sum, where the true sum is ~1e-3; the kernel
    # must add the final value (and write it) whether the target is in the body, the last partial
    # vector or the head (rows of 37 at every offset).
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(8, 37, generator=gen)
    target = torch.tensor([0, 1, 5, 17, 31, 35, 36, 2])
    logits[torch.arange(8), target] = 40.0
    logits, target = logits.to(DEVICE), target.to(DEVICE)
    for path in ("one-launch", "split"):
        _, _, ds = check_options(path, logits, target, s=0.5, block_size=16, iters=2)
        assert (ds.abs() < 1e-2).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dscale_inplace_matches_separate_buffer(dtype):
    logits, target, weight = make_problem("index", dtype=dtype, weighted=True, seed=8)
    loss, grad, ds = run_options("one-launch", logits, target, weight, 0.1, 1e-2, 5.0, s=0.75, **SMALL)
    buf = logits.clone()
    loss2, grad2, ds2 = run_options("one-launch", buf, target, weight, 0.1, 1e-2, 5.0, s=0.75, grad=buf, **SMALL)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2) and torch.equal(ds, ds2)
    buf = logits.clone()
    _, grad3, ds3 = run_options("split", buf, target, weight, 0.1, 1e-2, 5.0, s=0.75, grad=buf, **SMALL)
    _, grad4, ds4 = run_options("split", logits, target, weight, 0.1, 1e-2, 5.0, s=0.75, **SMALL)
    assert torch.equal(grad3, grad4) and torch.equal(ds3, ds4)


def test_logit_scale_float_and_tensor_agree_and_one_is_no_scale():
    logits, target, weight = make_problem("index", weighted=True)
    a = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, 5.0, logit_scale=0.75, **SMALL)[0]
    b = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, 5.0,
                          logit_scale=torch.tensor(0.75, dtype=torch.float64, device=DEVICE), **SMALL)[0]  # fmt: skip
    c = triton_ce.forward(logits * 0.75, target, weight, -100, 0.1, 1e-2, 5.0, **SMALL)[0]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)  # s x rounded once, on load or here
    one = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, 5.0, logit_scale=1.0, **SMALL)[0]
    assert torch.equal(one, triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, 5.0, **SMALL)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("num_classes", [1, 10, 37, 257, 1001])
def test_aux_matches_torch(num_classes, kind, dtype):
    # bf16 logits have many exact ties (8-bit mantissas): predicted must be the first of them, as
    # torch.argmax; s = 0.75 keeps them exact. Small blocks where C spans several, and the default.
    logits, target, weight = make_problem(kind, rows=7, num_classes=num_classes, dtype=dtype, weighted=True)
    cfg = dict(block_size=32, iters=2) if num_classes >= 32 else {}
    for s, cap in ((None, None), (0.75, 5.0)):
        scale = None if s is None else torch.tensor(s, device=DEVICE)
        loss, stats, aux = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, cap, save_stats=True,
                                             logit_scale=scale, aux=ALL_AUX, **cfg)  # fmt: skip
        assert set(aux) == ALL_AUX
        assert aux["lse"].dtype == torch.float32 and aux["entropy"].dtype == torch.float32
        assert aux["predicted"].dtype == torch.int64
        lse, pred, ent = aux_reference(logits, 1.0 if s is None else s, cap)
        if kind == "index":
            keep = target.cpu() != -100
            lse, ent = torch.where(keep, lse, 0.0), torch.where(keep, ent, 0.0)
            pred = torch.where(keep, pred, -100)
        torch.testing.assert_close(f64(aux["lse"]), lse, **LOSS_TOL)
        torch.testing.assert_close(f64(aux["entropy"]), ent, **LOSS_TOL)
        assert torch.equal(aux["predicted"].cpu(), pred)
        # The aux outputs change nothing else.
        loss0, stats0 = triton_ce.forward(logits, target, weight, -100, 0.1, 1e-2, cap, save_stats=True,
                                          logit_scale=scale, **cfg)  # fmt: skip
        kept = target != -100 if kind == "index" else slice(None)  # ignored rows' stats are never written
        assert torch.equal(loss, loss0) and torch.equal(stats[kept], stats0[kept])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, under the interpreter, on the -inf row
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_predicted_first_index_on_ties(dtype):
    # Rows of 61 at every offset from a vector boundary, 16-column blocks of 2 rows: ties between the
    # head (read last), the body, a later block, the same lane's two tile rows and the last partial
    # vector; an all -inf row (torch: 0) and a row whose max is repeated everywhere.
    num_classes = 61
    x = torch.randn(10, num_classes, generator=torch.Generator().manual_seed(9))
    ties = [(0, 60), (1, 2), (3, 35), (7, 23), (16, 32), (40, 56), (59, 60), (5, 6)]
    for r, (i, j) in enumerate(ties):
        x[r, i] = x[r, j] = 9.0
    x[8] = float("-inf")
    x[9] = 3.0
    logits = x.to(device=DEVICE, dtype=dtype)
    target = torch.zeros(10, dtype=torch.long, device=DEVICE)
    for cfg in (dict(block_size=16, iters=2), {}):
        _, _, aux = triton_ce.forward(logits, target, None, -100, 0.0, 0.0, None, aux={"predicted"}, **cfg)
        assert torch.equal(aux["predicted"].cpu(), torch.argmax(x.to(dtype).double(), dim=1))
        assert aux["predicted"][:8].tolist() == [i for i, _ in ties]


def test_entropy_of_confident_rows_to_fp32_relative_accuracy():
    # H ~ (S - 1)(1 - log(S - 1)), 1e-6 to 1e-3 here: log S - U / S keeps it to fp32 relative accuracy
    # at |x| ~ 1e4, where forming H from p log p at fp32 p or from lse would lose it.
    gen = torch.Generator().manual_seed(10)
    logits = 1e4 + 0.01 * torch.randn(4, C, generator=gen)
    logits[0, 5] = 1e4 + 12
    logits[1, 256] = 1e4 + 20
    logits[2, 0] = 1e4 + 16
    logits[3, 9] = logits[3, 200] = 1e4 + 15  # a tie: entropy ~ log 2
    logits = logits.to(DEVICE)
    target = torch.tensor([5, 256, 0, 9], device=DEVICE)
    _, _, aux = triton_ce.forward(logits, target, None, -100, 0.0, 0.0, None, aux={"entropy", "lse"}, **SMALL)
    lse, _, ent = aux_reference(logits)
    assert ent[1] < 2e-5  # (S - 1)(1 + 20), S - 1 = 256 exp(-20)
    torch.testing.assert_close(f64(aux["entropy"]), ent, rtol=1e-5, atol=0)
    torch.testing.assert_close(f64(aux["lse"]), lse, rtol=1e-7, atol=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, under the interpreter, on NaN math
def test_aux_of_ignored_rows_and_nan_rows():
    # Ignored rows are never read (NaN logits there): lse 0, entropy 0, predicted = ignore_index, for
    # the default and another ignore_index. A row holding NaN gets NaN lse and entropy and a column in
    # range; the other rows stay right.
    logits, target, _ = make_problem("index", weighted=False)
    logits[2] = float("nan")  # row 2 targets -100
    logits[4, 17] = float("nan")
    for ignore_index in (-100, 7):
        if ignore_index == 7:
            target[2] = 7
        _, _, aux = triton_ce.forward(logits, target, None, ignore_index, 0.0, 0.0, None, aux=ALL_AUX, **SMALL)
        assert aux["lse"][2] == 0 and aux["entropy"][2] == 0 and aux["predicted"][2] == ignore_index
        assert aux["lse"][4].isnan() and aux["entropy"][4].isnan() and 0 <= aux["predicted"][4] < C
        lse, pred, ent = aux_reference(logits)
        rows = [0, 1, 3, 5]
        torch.testing.assert_close(f64(aux["lse"])[rows], lse[rows], **LOSS_TOL)
        torch.testing.assert_close(f64(aux["entropy"])[rows], ent[rows], **LOSS_TOL)
        assert torch.equal(aux["predicted"].cpu()[rows], pred[rows])


def test_option_arguments():
    logits, target, _ = make_problem("index")
    # Without aux the returns keep their shapes (callers unpack two values, or take one tensor).
    out = triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, aux=frozenset())
    assert len(out) == 2
    assert isinstance(triton_ce.fused_ce(logits, target, None, -100, 0.1, 0.0, None, None), torch.Tensor)
    loss, aux = triton_ce.fused_ce(logits, target, None, -100, 0.1, 0.0, None, None, aux=["lse"])
    assert set(aux) == {"lse"} and torch.equal(loss, out[0])
    with pytest.raises(ValueError, match="accuracy"):
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, aux={"accuracy"})
    with pytest.raises(ValueError, match="dscale needs grad"):
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, dscale=torch.zeros(6, device=DEVICE))
    with pytest.raises(ValueError, match="dscale must be"):
        triton_ce.fused_ce(logits, target, None, -100, 0.1, 0.0, None, torch.empty_like(logits),
                           dscale=torch.zeros(6, dtype=torch.float64, device=DEVICE))  # fmt: skip
    with pytest.raises(ValueError, match="logit_scale"):
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, logit_scale=torch.ones(2, device=DEVICE))


def test_fused_ce_takes_per_row_grad_scale():
    # The chunked kernel's contract: grad_scale may be an (M,) tensor of row factors; with a grad_output
    # as well the two multiply.
    logits, target, weight = make_problem("index", weighted=True)
    rs = torch.linspace(0.5, 2.0, 6, device=DEVICE)
    go = torch.tensor([1.0, -1.0, 5.0, 2.0, 0.5, 3.0], device=DEVICE)
    grad = torch.empty_like(logits)
    triton_ce.fused_ce(logits, target, weight, -100, 0.1, 1e-2, None, grad, grad_scale=rs, grad_output=go, **SMALL)
    _, ref_grad = reference(logits, target, weight, -100, 0.1, 1e-2)
    want = ref_grad * (f64(rs) * f64(go)).unsqueeze(1)
    want[2] = 0.0
    torch.testing.assert_close(f64(grad), want, **GRAD_TOL[torch.float32])


def test_launch_config_halves_the_tile_for_lane_state():
    # The argmax/entropy states and the d/ds sums take registers that the tile gives up: halved once
    # (quartered for the one-launch forward with aux outputs); at least one tile row.
    assert triton_ce._launch_config(128256, 2, False, None, None, None, lane_state=1) == (2, 2048, 8)
    assert triton_ce._launch_config(128256, 2, False, None, None, None, lane_state=2) == (1, 2048, 8)
    assert triton_ce._launch_config(128256, 4, True, None, None, None, lane_state=1) == (2, 1024, 8)
    assert triton_ce._launch_config(128256, 2, True, None, None, None, lane_state=2) == (1, 2048, 8)
    # As the wrappers decide it (recorded on meta tensors, nothing runs): lse alone is free.
    logits = torch.empty(4, 128256, dtype=torch.bfloat16, device="meta")
    target = torch.empty(4, dtype=torch.long, device="meta")
    stats = torch.empty(4, 4, device="meta")
    ds = torch.empty(4, device="meta")
    with triton_ce.record_launches() as launches:
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, aux={"lse"}, logit_scale=2.0)
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, aux={"entropy"})
        triton_ce.fused_ce(logits, target, None, -100, 0.1, 0.0, None, logits, dscale=ds)
        triton_ce.fused_ce(logits, target, None, -100, 0.1, 0.0, None, logits, aux={"predicted"})
        triton_ce.backward(logits, target, None, -100, 0.1, None, stats, logits, dscale=ds)
    assert [launch.meta["ITERS"] for launch in launches] == [4, 2, 2, 1, 2]
    assert [launch.meta.get("maxnreg") for launch in launches] == [None, None, 128, 128, None]
    # Rows off a vector boundary (C = 50257): the aux states quarter the tile, a logit scale halves it.
    logits = torch.empty(4, 50257, dtype=torch.bfloat16, device="meta")
    with triton_ce.record_launches() as launches:
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, aux={"entropy"})
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None, logit_scale=2.0)
        triton_ce.forward(logits, target, None, -100, 0.1, 0.0, None)
    assert [launch.meta["ITERS"] for launch in launches] == [1, 2, 4]


def test_dscale_of_vocabulary_slices_sums_to_the_rows():
    # A vocabulary split over devices: each slice's backward, from the whole rows' statistics, writes its
    # columns of the gradient and its part of the d/ds sums (the target in one slice only, or in none
    # for another slice's target); the parts add up to the whole rows' sums.
    logits, target, _ = make_problem("index", weighted=False, seed=11)
    s = torch.tensor(0.75, device=DEVICE)
    go = torch.linspace(0.5, 2.0, 6, device=DEVICE)
    _, stats = triton_ce.forward(logits, target, None, -100, 0.1, 1e-2, 5.0, save_stats=True, logit_scale=s)
    whole_ds = torch.empty(6, device=DEVICE)
    whole = triton_ce.backward(logits, target, None, -100, 0.1, 5.0, stats, torch.empty_like(logits),
                               grad_output=go, logit_scale=s, dscale=whole_ds, **SMALL)  # fmt: skip
    parts, total = [], torch.zeros(6, device=DEVICE)
    for lo, hi in ((0, 100), (100, C)):
        local = torch.where(target == -100, target, target - lo)
        local = torch.where((local >= 0) & (local < hi - lo) | (target == -100), local, torch.full_like(local, -1))
        ds = torch.empty(6, device=DEVICE)
        parts.append(triton_ce.backward(
            logits[:, lo:hi].contiguous(), local, None, -100, 0.1, 5.0, stats, torch.empty_like(logits[:, lo:hi]),
            grad_output=go, logit_scale=s, dscale=ds, smoothing_classes=C, target_elsewhere=True, **SMALL,
        ))  # fmt: skip
        total += ds
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-6, atol=1e-7)
    _, _, ref_ds, ref_abs, _ = options_reference(logits, target, None, -100, 0.1, 1e-2, 5.0, s=0.75, go=go)
    assert ((f64(total) - ref_ds).abs() <= DSCALE_RTOL * ref_abs + 1e-7).all()
    assert ((f64(whole_ds) - ref_ds).abs() <= DSCALE_RTOL * ref_abs + 1e-7).all()
