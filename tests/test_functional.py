"""labelsmooth.cross_entropy against torch.nn.functional.cross_entropy, in float64."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from cases import grid, make_case
from labelsmooth import functional as LF

BACKENDS = ["reference", "chunked", "torch"]
GRID = list(grid())


def _ids(case):
    shape, probs, weighted, ignore_index, eps, reduction = case
    return (
        f"{'x'.join(map(str, shape))}-{'prob' if probs else 'idx'}-w{int(weighted)}-ii{ignore_index}-e{eps}-{reduction}"
    )


def _loss_and_grad(fn, x, t, w, ignore_index, eps, reduction, grad_seed=1):
    x = x.detach().clone().requires_grad_(True)
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    loss = fn(x, t, w, reduction=reduction, label_smoothing=eps, **kw)
    g = torch.Generator().manual_seed(grad_seed)
    go = torch.rand(loss.shape, generator=g, dtype=loss.dtype) + 0.5  # grad_output != 1
    (gx,) = torch.autograd.grad(loss, x, go)
    return loss.detach(), gx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRID, ids=[_ids(c) for c in GRID])
def test_parity_with_torch_float64(case, backend):
    shape, probs, weighted, ignore_index, eps, reduction = case
    x, t, w = make_case(shape, probs=probs, weighted=weighted, ignore_index=ignore_index)
    want, want_g = _loss_and_grad(F.cross_entropy, x, t, w, ignore_index, eps, reduction)

    def ours(*a, **k):
        return ls.cross_entropy(*a, backend=backend, **k)

    got, got_g = _loss_and_grad(ours, x, t, w, ignore_index, eps, reduction)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12, equal_nan=True)


# gradcheck runs backward many times through one graph; the fused backends scale their single gradient
# buffer in place (to keep peak memory at one N x C tensor), so only the reference supports that.
@pytest.mark.parametrize("backend", ["reference"])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_gradcheck(backend, probs, eps):
    x, t, w = make_case((3, 5, 2), probs=probs, weighted=True, ignore_index=None if probs else -100)
    x.requires_grad_(True)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda inp, reduction=reduction: ls.cross_entropy(
                inp, t, w, reduction=reduction, label_smoothing=eps, backend=backend
            ),
            (x,),
        )


@pytest.mark.parametrize("backend", ["chunked"])
def test_fused_second_backward_is_a_clear_error(backend):
    x = torch.randn(4, 5, requires_grad=True)
    loss = ls.cross_entropy(x, torch.tensor([0, 1, 2, 3]), backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backend='reference'"):
        loss.backward()


def test_legacy_positional_arguments_match_torch():
    x, t, w = make_case((9, 6), probs=False, weighted=True, ignore_index=2)
    # weight, size_average, ignore_index passed positionally, exactly as F.cross_entropy takes them
    torch.testing.assert_close(ls.cross_entropy(x, t, w, None, 2), F.cross_entropy(x, t, w, None, 2))
    with pytest.warns(UserWarning):
        got = ls.cross_entropy(x, t, size_average=False)
    torch.testing.assert_close(got, F.cross_entropy(x, t, reduction="sum"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_against_float64(dtype):
    x64, t, _w = make_case((16, 257), probs=False, weighted=False, ignore_index=-100)
    x = x64.to(dtype)
    got = ls.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    want = F.cross_entropy(x.double(), t, reduction="none", label_smoothing=0.1)
    assert got.dtype == dtype
    # The loss is computed in float32 from the rounded inputs and rounded once on output:
    # one ulp of the output dtype (2^-7 for bf16, 2^-10 for fp16, ~1e-6 for float32) relative.
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


# ---- valid edge cases give torch's answer -------------------------------------------------------

EDGE_REDUCTIONS = ["none", "mean", "sum"]


@pytest.mark.parametrize("reduction", EDGE_REDUCTIONS)
def test_empty_batch(reduction):
    x = torch.randn(0, 5, dtype=torch.float64)
    t = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(
        ls.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
        F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
        equal_nan=True,
    )


@pytest.mark.parametrize("reduction", EDGE_REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_rows_ignored(reduction, weighted):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), -100)
    w = torch.rand(5, dtype=torch.float64) if weighted else None
    got = ls.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.2)
    want = F.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.2)
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_huge_logits(dtype, eps):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(8, 50, generator=g, dtype=torch.float64) * 1e4).to(dtype)
    t = x.argmax(1)
    t[::2] = torch.randint(0, 50, (4,), generator=g)
    x.requires_grad_(True)
    got = ls.cross_entropy(x, t, reduction="none", label_smoothing=eps)
    want = F.cross_entropy(x.detach().double().requires_grad_(True), t, reduction="none", label_smoothing=eps)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-6, atol=1e-6)


# "torch" is torch's own float32 kernel, inexact here by design of the test.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("lead", [12.0, 17.0, 25.0])
def test_confident_row_float32_keeps_its_small_loss(backend, lead):
    # A row whose target leads by `lead` over 999 others has loss ~ S - 1 = 999 exp(-lead) (6e-3 .. 1e-8).
    # float32 S = 1 + (S - 1) keeps that only to half an ulp of 1 (6e-8): torch's float32 loss is 13% off
    # at lead 20 and exactly 0 at 25. Summing S - 1 without the max keeps it to float32 accuracy.
    # The shortcut lse - x_y is worse still: at |x| ~ 120 one float32 step (7.6e-6) exceeds the loss.
    x = torch.zeros(2, 1000, dtype=torch.float32)
    x[0, 0] = lead
    x[1] = x[0] + 120.0
    t = torch.tensor([0, 0])
    xr = x.clone().requires_grad_(True)
    got = ls.cross_entropy(xr, t, reduction="none", backend=backend)
    got.sum().backward()
    xd = x.double().requires_grad_(True)
    want = F.cross_entropy(xd, t, reduction="none")
    want.sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=2e-6, atol=0)
    if backend != "reference":
        # The fused kernels write p_y - 1 = (expm1(z_y) - (S - 1)) / S; the reference leaves the gradient
        # to autograd, which forms p_y - 1 by subtraction (as torch does), exact only to ~6e-8 absolute.
        torch.testing.assert_close(xr.grad[:, 0].double(), xd.grad[:, 0], rtol=2e-6, atol=0)
    shortcut = (torch.logsumexp(x[1:], 1) - x[1, 0]).double()
    assert abs(shortcut.item() - want[1].item()) > 10 * abs(got[1].item() - want[1].item())


def test_one_class():
    x = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(5, dtype=torch.long)
    for eps in (0.0, 0.5):
        got, want = ls.cross_entropy(x, t, label_smoothing=eps), F.cross_entropy(x, t, label_smoothing=eps)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_infinite_logits(eps):
    x = torch.randn(3, 4, dtype=torch.float64)
    x[0, 1] = math.inf
    x[1, 2] = -math.inf
    t = torch.tensor([1, 0, 3])
    torch.testing.assert_close(
        ls.cross_entropy(x, t, reduction="none", label_smoothing=eps),
        F.cross_entropy(x, t, reduction="none", label_smoothing=eps),
        equal_nan=True,
    )


def test_nan_row_stays_nan_and_other_rows_exact():
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1, 0] = math.nan
    t = torch.tensor([1, 0, 3])
    got = ls.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    want = F.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isnan(got[1])


def test_integer_target_dtypes_accepted():
    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.tensor([0, 5, 2, 1])
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(ls.cross_entropy(x, t.to(dtype)), F.cross_entropy(x, t))


def test_non_contiguous_input():
    base = torch.randn(6, 20, dtype=torch.float64)
    x = base[:, ::2]
    t = torch.randint(0, 10, (6,))
    torch.testing.assert_close(ls.cross_entropy(x, t, label_smoothing=0.2), F.cross_entropy(x, t, label_smoothing=0.2))
    xt = torch.randn(10, 6, dtype=torch.float64).t()
    torch.testing.assert_close(
        ls.cross_entropy(xt, t, label_smoothing=0.2), F.cross_entropy(xt, t, label_smoothing=0.2)
    )


# ---- errors ---------------------------------------------------------------------------------------

X = torch.randn(4, 5)
T = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    "eps,exc", [(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError), ("0.1", TypeError), (None, TypeError)]
)
def test_bad_label_smoothing(eps, exc):
    with pytest.raises(exc, match="label_smoothing"):
        ls.cross_entropy(X, T, label_smoothing=eps)


@pytest.mark.parametrize("bad", [5, 7, -1, -5])
def test_target_out_of_range(bad):
    t = T.clone()
    t[2] = bad
    with pytest.raises(IndexError, match=f"target contains class index {bad}"):
        ls.cross_entropy(X, t)


def test_target_equal_to_custom_ignore_index_is_fine_but_default_is_out_of_range():
    t = T.clone()
    t[0] = 7
    ls.cross_entropy(X, t, ignore_index=7)
    with pytest.raises(IndexError):
        ls.cross_entropy(X, t)


@pytest.mark.parametrize(
    "x,t",
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 2])),  # batch
        (torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.long)),  # spatial
        (torch.randn(5), torch.tensor([1])),  # unbatched needs ()
    ],
)
def test_shape_mismatch(x, t):
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        ls.cross_entropy(x, t)


def test_float_target_wrong_shape():
    with pytest.raises(ValueError, match="floating-point target"):
        ls.cross_entropy(X, torch.rand(4, 6))


def test_ignore_index_with_probability_target():
    with pytest.raises(ValueError, match="ignore_index"):
        ls.cross_entropy(X, torch.rand(4, 5), ignore_index=0)


@pytest.mark.parametrize("w", [torch.ones(4), torch.ones(6), torch.ones(5, 1)])
def test_weight_wrong_length(w):
    with pytest.raises(ValueError, match="weight must be a 1-D tensor"):
        ls.cross_entropy(X, T, w)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        ls.cross_entropy(X, T, reduction="avg")


def test_integer_input():
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        ls.cross_entropy(torch.ones(4, 5, dtype=torch.long), T)


def test_zero_classes():
    with pytest.raises(ValueError, match="at least one class"):
        ls.cross_entropy(torch.randn(4, 0), T)


def test_zero_dim_input():
    with pytest.raises(ValueError, match="at least one dimension"):
        ls.cross_entropy(torch.tensor(1.0), torch.tensor(0))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ls.cross_entropy(X, T, backend="cuda-magic")


@pytest.mark.parametrize(
    "kw,exc",
    [
        ({"z_loss": -1.0}, ValueError),
        ({"z_loss": "a"}, TypeError),
        ({"softcap": 0.0}, ValueError),
        ({"softcap": -2.0}, ValueError),
        ({"inplace": 1}, TypeError),
        ({"ignore_index": 1.5}, TypeError),
    ],
)
def test_bad_options(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        ls.cross_entropy(X, T, **kw)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        ls.cross_entropy([[1.0, 2.0]], T)


def test_backends_listed():
    assert "reference" in LF.BACKENDS and "auto" in LF.BACKENDS


def test_function_is_picklable_by_reference():
    assert pickle.loads(pickle.dumps(ls.cross_entropy)) is ls.cross_entropy
