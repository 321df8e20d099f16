"""Smoothing variants on every backend: prior (unigram) smoothing, negative smoothing, and online label
smoothing; checked against float64 torch with the explicit soft target, or against the formulas."""

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from cases import grads, make_case

HAS_TRITON = importlib.util.find_spec("triton") is not None
FUSED = ["chunked"] + (["triton"] if HAS_TRITON else [])
ALL = ["reference", *FUSED]


def random_prior(c, seed=3, zero=None):
    u = torch.rand(c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.05
    if zero is not None:
        u[zero] = 0.0  # a class the prior never smooths towards
    return u / u.sum()


def explicit_soft_target(x, t, u, eps, ignore_index):
    """torch's CE against q = (1 - eps) * target + eps * u, written out per row (float64)."""
    c = x.shape[1]
    if t.is_floating_point():
        return (1.0 - eps) * t + eps * u
    keep = t != ignore_index
    safe = torch.where(keep, t, 0)
    q = (1.0 - eps) * F.one_hot(safe, c).double() + eps * u
    return q * keep.unsqueeze(1).double()


def prior_formula(x, t, w, u, eps, ignore_index, reduction):
    q = explicit_soft_target(x, t, u, eps, ignore_index)
    rows = F.cross_entropy(x.double(), q, None if w is None else w.double(), reduction="none")
    if reduction == "none":
        return rows
    if reduction == "sum" or t.is_floating_point():
        return rows.sum() if reduction == "sum" else rows.mean()
    keep = t != ignore_index
    safe = torch.where(keep, t, 0)
    denom = (keep.double() * (1.0 if w is None else w.double()[safe])).sum()
    return rows.sum() / denom


PRIOR_CASES = [
    # (shape, probs, weighted, ignore_index, eps, reduction)
    ((6, 5), False, False, -100, 0.1, "mean"),
    ((6, 5), False, True, 2, 0.3, "none"),
    ((4, 131), False, True, -100, 0.5, "sum"),
    ((5, 7), True, False, None, 0.2, "mean"),
    ((5, 7), True, True, None, 0.7, "none"),
    ((7, 1031), False, False, -100, 1.0, "mean"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", PRIOR_CASES)
def test_prior_smoothing_equals_torch_with_the_explicit_soft_target(backend, case):
    shape, probs, weighted, ignore_index, eps, reduction = case
    x, t, w = make_case(shape, probs=probs, weighted=weighted, ignore_index=ignore_index, seed=11)
    u = random_prior(shape[1], zero=1)
    ii = -100 if ignore_index is None else ignore_index
    for dtype in (torch.float64, torch.float32):
        if dtype == torch.float64 and backend == "triton":
            continue  # the Triton kernels take 16- and 32-bit logits
        xd, td = x.to(dtype), (t.to(dtype) if probs else t)
        wd = None if w is None else w.to(dtype)
        got, g = grads(
            lambda z, td=td, wd=wd, dtype=dtype: ls.cross_entropy(
                z,
                td,
                wd,
                ignore_index=ii,
                reduction=reduction,
                label_smoothing=eps,
                smoothing_prior=u.to(dtype),
                backend=backend,
            ),
            xd,
        )
        want, g_want = grads(lambda z: prior_formula(z, t, w, u, eps, ii, reduction), x)
        tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(got.double(), want, **tol)
        torch.testing.assert_close(g.double(), g_want, **tol)


@pytest.mark.parametrize("backend", ALL)
def test_uniform_prior_is_plain_smoothing(backend):
    x, t, w = make_case((8, 13), probs=False, weighted=True, ignore_index=-100, seed=2, dtype=torch.float32)
    u = torch.full((13,), 1.0 / 13)
    a, ga = grads(lambda z: ls.cross_entropy(z, t, w, label_smoothing=0.2, smoothing_prior=u, backend=backend), x)
    b, gb = grads(lambda z: ls.cross_entropy(z, t, w, label_smoothing=0.2, backend=backend), x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_prior_on_k_dim_input_and_module():
    x, t, _ = make_case((2, 5, 3), probs=False, weighted=False, ignore_index=-100, seed=4)
    u = random_prior(5)
    rows = ls.cross_entropy(x, t, reduction="none", label_smoothing=0.4, smoothing_prior=u)
    x2 = x.movedim(1, -1).reshape(-1, 5)
    want = prior_formula(x2, t.reshape(-1), None, u, 0.4, -100, "none").reshape(2, 3)
    torch.testing.assert_close(rows, want)
    module = ls.CrossEntropyLoss(label_smoothing=0.4, smoothing_prior=u)
    torch.testing.assert_close(module(x, t), ls.cross_entropy(x, t, label_smoothing=0.4, smoothing_prior=u))
    assert "smoothing_prior" in dict(module.named_buffers())
    assert torch.equal(module.state_dict()["smoothing_prior"], u)


# ----------------------------------------------------------------------------- negative smoothing


def negative_formula(x, t, eps, reduction, ignore_index=-100):
    """(1 - eps) * NLL + eps * mean_k(-log p_k), straight from Wei et al.'s definition."""
    logp = torch.log_softmax(x.double(), dim=1)
    keep = t != ignore_index
    safe = torch.where(keep, t, 0)
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    rows = (1.0 - eps) * nll + eps * (-logp).mean(dim=1)
    rows = torch.where(keep, rows, 0.0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / keep.sum()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("eps", [-0.2, -0.5, -1.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_negative_smoothing_equals_the_formula(backend, eps, reduction):
    x, t, _ = make_case((9, 37), probs=False, weighted=False, ignore_index=-100, seed=8)
    for dtype in (torch.float32,) + (() if backend == "triton" else (torch.float64,)):
        got, g = grads(
            lambda z: ls.cross_entropy(
                z, t, reduction=reduction, label_smoothing=eps, allow_negative=True, backend=backend
            ),
            x.to(dtype),
        )
        want, g_want = grads(lambda z: negative_formula(z, t, eps, reduction), x)
        tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(got.double(), want, **tol)
        torch.testing.assert_close(g.double(), g_want, **tol)


@pytest.mark.parametrize("backend", ALL)
def test_negative_smoothing_with_weights_prior_and_probability_targets(backend):
    # The general form: explicit soft target q = (1 - eps) t + eps u with negative entries.
    x, t, w = make_case((6, 11), probs=True, weighted=True, ignore_index=None, seed=9, dtype=torch.float32)
    u = random_prior(11)
    got, g = grads(
        lambda z: ls.cross_entropy(
            z, t, w, label_smoothing=-0.3, allow_negative=True, smoothing_prior=u.float(), backend=backend
        ),
        x,
    )
    want, g_want = grads(lambda z: prior_formula(z, t.double(), w.double(), u, -0.3, -100, "mean"), x.double())
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g.double(), g_want, rtol=2e-5, atol=2e-6)


def test_negative_binary_smoothing_equals_the_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 2, (12,), generator=g).double()
    eps = -0.4
    t = y * (1 - eps) + eps / 2
    want = -(t * torch.log(torch.sigmoid(x)) + (1 - t) * torch.log(1 - torch.sigmoid(x))).mean()
    got = ls.binary_cross_entropy_with_logits(x, y, label_smoothing=eps, allow_negative=True)
    torch.testing.assert_close(got, want)
    module = ls.BCEWithLogitsLoss(label_smoothing=eps, allow_negative=True)
    torch.testing.assert_close(module(x, y), want)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ls.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), label_smoothing=-0.1),
        lambda: ls.CrossEntropyLoss(label_smoothing=-0.1),
        lambda: ls.binary_cross_entropy_with_logits(torch.randn(2), torch.ones(2), label_smoothing=-0.1),
        lambda: ls.BCEWithLogitsLoss(label_smoothing=-0.1),
        lambda: ls.smooth_labels(torch.tensor([0]), 3, -0.1),
        lambda: ls.smooth_binary_labels(torch.ones(2), -0.1),
    ],
)
def test_negative_eps_without_the_flag_is_still_rejected(call):
    with pytest.raises(ValueError, match=r"label_smoothing.*-0\.1.*allow_negative=True"):
        call()


def test_negative_eps_bounds_and_types():
    x, t = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"label_smoothing must be a finite number <= 1, got 1\.5"):
        ls.cross_entropy(x, t, label_smoothing=1.5, allow_negative=True)
    with pytest.raises(ValueError, match="got -inf"):
        ls.cross_entropy(x, t, label_smoothing=float("-inf"), allow_negative=True)
    with pytest.raises(TypeError, match="allow_negative must be a bool"):
        ls.cross_entropy(x, t, label_smoothing=-0.1, allow_negative="yes")
    with pytest.raises(ValueError, match="backend='torch' supports none of"):
        ls.cross_entropy(x, t, label_smoothing=-0.1, allow_negative=True, backend="torch")


def test_smooth_labels_with_prior_and_negative_eps():
    u = torch.tensor([0.5, 0.25, 0.25])
    q = ls.smooth_labels(torch.tensor([1, 2]), 3, 0.4, prior=u)
    want = 0.6 * F.one_hot(torch.tensor([1, 2]), 3).float() + 0.4 * u
    torch.testing.assert_close(q, want)
    q = ls.smooth_labels(torch.tensor([0]), 4, -0.2, allow_negative=True)
    torch.testing.assert_close(q, torch.tensor([[1.15, -0.05, -0.05, -0.05]]))
    torch.testing.assert_close(q.sum(-1), torch.ones(1))


# ----------------------------------------------------------------------------- priors: checks, class_prior


@pytest.mark.parametrize(
    "prior, error, match",
    [
        (torch.tensor([0.5, 0.5]), ValueError, r"smoothing_prior must have shape \(3,\)"),
        (torch.tensor([0.5, 0.6, -0.1]), ValueError, "non-negative"),
        (torch.tensor([0.5, 0.2, 0.2]), ValueError, "sum to 1, got 0.9"),
        (torch.tensor([1, 0, 0]), TypeError, "floating-point"),
        ([0.2, 0.3, 0.5], TypeError, "torch.Tensor"),
        (torch.tensor([0.2, float("nan"), 0.8]), ValueError, "finite"),
    ],
)
def test_bad_priors_get_clear_errors(prior, error, match):
    with pytest.raises(error, match=match):
        ls.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), label_smoothing=0.1, smoothing_prior=prior)


def test_prior_on_another_device_is_a_clear_error():
    with pytest.raises(ValueError, match="smoothing_prior is on meta but input is on cpu"):
        ls.cross_entropy(
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            label_smoothing=0.1,
            smoothing_prior=torch.full((3,), 1 / 3, device="meta"),
        )


def test_torch_backend_refuses_a_prior():
    with pytest.raises(ValueError, match="smoothing_prior"):
        ls.cross_entropy(
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            label_smoothing=0.1,
            smoothing_prior=torch.full((3,), 1 / 3),
            backend="torch",
        )


def test_class_prior_counts_labels():
    labels = torch.tensor([[0, 2, 2], [2, -100, 1]])
    u = ls.class_prior(labels, 4, ignore_index=-100)
    counts = torch.bincount(torch.tensor([0, 2, 2, 2, 1]), minlength=4).double()
    torch.testing.assert_close(u.double(), counts / counts.sum())
    assert u.dtype == torch.get_default_dtype()
    with pytest.raises(IndexError, match="labels contains class index -100"):
        ls.class_prior(labels, 4)
    with pytest.raises(IndexError, match="class index 4"):
        ls.class_prior(torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="no label to count"):
        ls.class_prior(torch.tensor([-100]), 4, ignore_index=-100)
    with pytest.raises(TypeError, match="labels"):
        ls.class_prior(torch.tensor([0.0]), 4)


# ----------------------------------------------------------------------------- online label smoothing


def ols_formula(x, t, soft, alpha, ignore_index=-100):
    """alpha * CE(x, y) + (1 - alpha) * CE(x, S[y]), mean over the rows that are not ignored (float64)."""
    keep = t != ignore_index
    safe = torch.where(keep, t, 0)
    hard = F.cross_entropy(x.double(), safe, reduction="none")
    sl = F.cross_entropy(x.double(), soft.double()[safe], reduction="none")
    rows = torch.where(keep, alpha * hard + (1 - alpha) * sl, 0.0)
    return rows.sum() / keep.sum()


def test_ols_starts_from_uniform_smoothing():
    ols = ls.OnlineLabelSmoothing(5, alpha=0.3, label_smoothing=0.2)
    torch.testing.assert_close(ols.soft_labels, ls.smooth_labels(torch.arange(5), 5, 0.2))
    torch.testing.assert_close(ols.soft_labels.sum(1), torch.ones(5))


@pytest.mark.parametrize("backend", ALL)
def test_ols_loss_and_gradient_equal_the_formula(backend):
    x, t, _ = make_case((10, 6), probs=False, weighted=False, ignore_index=-100, seed=5, dtype=torch.float32)
    ols = ls.OnlineLabelSmoothing(6, alpha=0.4, label_smoothing=0.1, backend=backend)
    soft = ols.soft_labels.clone()
    got, g = grads(lambda z: ols(z, t), x)
    want, g_want = grads(lambda z: ols_formula(z, t, soft, 0.4), x.double())
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g.double(), g_want, rtol=2e-5, atol=2e-6)


def test_ols_update_rule_on_a_crafted_batch():
    ols = ls.OnlineLabelSmoothing(3, alpha=0.5, label_smoothing=0.1)
    x = torch.tensor(
        [
            [3.0, 0.0, 0.0],  # class 0, correct
            [2.0, 1.0, 0.0],  # class 0, correct
            [0.0, 2.0, 0.0],  # class 2, wrong (predicted 1): not counted
            [0.0, 0.5, 0.0],  # class 1, correct
            [5.0, 0.0, 0.0],
        ]
    )  # ignored
    t = torch.tensor([0, 0, 2, 1, -100])
    before = ols.soft_labels.clone()
    ols(x, t)
    p = torch.softmax(x, dim=1)
    ols.next_epoch()
    torch.testing.assert_close(ols.soft_labels[0], (p[0] + p[1]) / 2)
    torch.testing.assert_close(ols.soft_labels[1], p[3])
    torch.testing.assert_close(ols.soft_labels[2], before[2])  # no correct sample: row kept
    torch.testing.assert_close(ols.soft_labels.sum(1), torch.ones(3))
    # The accumulators restart: another epoch without correct samples changes nothing.
    assert ols.correct_count.sum() == 0 and ols.correct_prob_sum.abs().sum() == 0
    after = ols.soft_labels.clone()
    ols.next_epoch()
    torch.testing.assert_close(ols.soft_labels, after)


def test_ols_accumulates_only_in_training_mode():
    ols = ls.OnlineLabelSmoothing(3).eval()
    ols(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]))
    assert ols.correct_count.sum() == 0
    ols.train()
    ols(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]))
    assert ols.correct_count.tolist() == [1.0, 0.0, 0.0]


def test_ols_state_dict_round_trips_mid_epoch():
    a = ls.OnlineLabelSmoothing(4, alpha=0.6, label_smoothing=0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        a(torch.randn(16, 4, generator=g) * 3, torch.randint(0, 4, (16,), generator=g))
        a.next_epoch()
    a(torch.randn(16, 4, generator=g) * 3, torch.randint(0, 4, (16,), generator=g))  # mid-epoch
    b = ls.OnlineLabelSmoothing(4, alpha=0.6, label_smoothing=0.2)
    b.load_state_dict(a.state_dict())
    for name in ("soft_labels", "correct_prob_sum", "correct_count"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    a.next_epoch()
    b.next_epoch()
    assert torch.equal(a.soft_labels, b.soft_labels)


def test_ols_reductions_k_dim_and_errors():
    ols = ls.OnlineLabelSmoothing(4, reduction="none")
    x, t, _ = make_case((2, 4, 3), probs=False, weighted=False, ignore_index=-100, seed=6)
    rows = ols(x, t)
    assert rows.shape == (2, 3)
    x2, t2 = x.movedim(1, -1).reshape(-1, 4), t.reshape(-1)
    total = ols_formula(x2, t2, ols.soft_labels, 0.5) * (t2 != -100).sum()
    torch.testing.assert_close(rows.sum().double(), total)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4\)"):
        ols(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(IndexError, match="class index 7"):
        ols(torch.randn(2, 4), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="alpha must be in"):
        ls.OnlineLabelSmoothing(4, alpha=1.5)


def _ols_rank(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(8, 4, generator=g) * 3, torch.randint(0, 4, (8,), generator=g)) for _ in range(world)]
        ols = ls.OnlineLabelSmoothing(4)
        ols(*batches[rank])  # each rank sees its own shard of the epoch
        ols.next_epoch()
        np.save(f"{out_dir}/rank{rank}.npy", ols.soft_labels.numpy(), allow_pickle=False)
    finally:
        dist.destroy_process_group()
    # Passed: leave without interpreter shutdown, whose C++ thread-pool destructors can abort a process
    # after its work is done (see tests/test_distributed.py).
    os._exit(0)


def test_ols_next_epoch_all_reduces_under_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ols_rank, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g) * 3, torch.randint(0, 4, (8,), generator=g)) for _ in range(world)]
    single = ls.OnlineLabelSmoothing(4)
    for b in batches:  # one process seeing the whole epoch
        single(*b)
    single.next_epoch()
    for rank in range(world):
        got = torch.from_numpy(np.load(tmp_path / f"rank{rank}.npy", allow_pickle=False))
        torch.testing.assert_close(got, single.soft_labels)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("probs", [False, True])
def test_chunked_kernel_with_prior_in_small_blocks_and_the_accelerator_path(masked, probs):
    from labelsmooth import reference
    from labelsmooth.kernels import chunked

    x, t, w = make_case(
        (13, 9), probs=probs, weighted=True, ignore_index=None if probs else -100, seed=12, dtype=torch.float32
    )
    u = random_prior(9).float()
    grad = torch.empty_like(x)
    rows = chunked.fused_ce(x, t, w, -100, -0.3, 0.0, None, grad, prior=u, block_rows=4, workers=2, masked=masked)
    xr = x.double().requires_grad_(True)
    want = reference.ce_rows(xr, t.double() if probs else t, w.double(), -100, -0.3, 0.0, None, u.double())
    (g_want,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(rows.double(), want.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(grad.double(), g_want, rtol=2e-5, atol=2e-6)
