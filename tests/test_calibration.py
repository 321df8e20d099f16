"""Tests for labelsmooth.calibration: metrics against torchmetrics/scikit-learn/hand values, the
bootstrap, temperature scaling and the argument errors."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.calibration import (
    BootstrapInterval,
    ReliabilityCurve,
    TemperatureScaler,
    bootstrap_interval,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)

try:  # the reference implementation for the binning conventions; only the comparison tests need it
    import torchmetrics.functional.classification as tm_cls
except ImportError:  # pragma: no cover
    tm_cls = None
needs_torchmetrics = pytest.mark.skipif(tm_cls is None, reason="torchmetrics not installed")

NORMS = ("l1", "l2", "max")


def random_probs(n: int, k: int, scale: float, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return probs, labels


# Hand example used throughout: 3 classes, 4 samples.
#   conf .40 correct | conf .45 wrong | conf .90 correct | conf .70 wrong
# 2 uniform bins: [0, .5) holds the first two (acc .5, conf .425, gap .075),
#                 [.5, 1) holds the last two  (acc .5, conf .800, gap .300).
HAND_PROBS = torch.tensor([[0.3, 0.3, 0.4], [0.45, 0.35, 0.2], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
HAND_LABELS = torch.tensor([2, 1, 0, 2])


# ----------------------------------------------------------------------------- ECE vs torchmetrics


@pytest.mark.parametrize(
    "n,k,n_bins,scale,seed",
    [
        (100, 3, 5, 1.0, 0),
        (1000, 10, 15, 3.0, 1),
        (5000, 4, 20, 0.5, 2),
        (37, 2, 1, 2.0, 3),
        (2000, 100, 10, 30.0, 4),
        (500, 5, 7, 30.0, 5),
    ],
)
@pytest.mark.parametrize("norm", NORMS)
@needs_torchmetrics
def test_ece_matches_torchmetrics_multiclass(n, k, n_bins, scale, seed, norm):
    # scale 30 saturates many float32 confidences to exactly 1.0, exercising that edge.
    probs, labels = random_probs(n, k, scale, seed)
    ours = expected_calibration_error(probs, labels, n_bins=n_bins, norm=norm)
    theirs = tm_cls.multiclass_calibration_error(probs, labels, num_classes=k, n_bins=n_bins, norm=norm)
    assert isinstance(ours, float)
    assert ours == pytest.approx(theirs.item(), abs=1e-6)


@pytest.mark.parametrize("norm", NORMS)
@needs_torchmetrics
def test_ece_float64_and_numpy_inputs_agree_with_torchmetrics(norm):
    probs, labels = random_probs(3000, 6, 2.0, 7, dtype=torch.float64)
    theirs = tm_cls.multiclass_calibration_error(probs, labels, num_classes=6, n_bins=12, norm=norm).item()
    assert expected_calibration_error(probs, labels, 12, norm) == pytest.approx(theirs, abs=1e-6)
    assert expected_calibration_error(probs.numpy(), labels.numpy(), 12, norm) == pytest.approx(theirs, abs=1e-6)


@needs_torchmetrics
def test_confidence_exactly_one_has_its_own_slot_like_torchmetrics():
    # conf 1.0 (wrong) and conf 0.6 (right). torchmetrics scores 1.0 in a separate slot:
    # 0.5 * |0 - 1| + 0.5 * |1 - 0.6| = 0.7 (merging the two would give |0.5 - 0.8| = 0.3).
    probs = torch.tensor([[1.0, 0.0], [0.6, 0.4]])
    labels = torch.tensor([1, 0])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.7)
    assert tm_cls.multiclass_calibration_error(probs, labels, 2, n_bins=2).item() == pytest.approx(0.7)
    curve = reliability_curve(probs, labels, n_bins=2)  # the diagram closes the last bin instead
    assert curve.count.tolist() == [0, 2]
    assert curve.confidence[1].item() == pytest.approx(0.8)
    assert curve.accuracy[1].item() == pytest.approx(0.5)


def test_bin_edges_are_left_closed():
    # 0.5 belongs to the upper of two bins, 0.0 to the lowest.
    curve = reliability_curve(torch.tensor([0.5, 0.0]), torch.tensor([1, 1]), n_bins=2, binary_mode="positive")
    assert curve.count.tolist() == [1, 1]
    assert curve.confidence.tolist() == [0.0, 0.5]


# ----------------------------------------------------------------------------- binary handling


def binary_data(n=4000, seed=0, low=0.0):
    g = torch.Generator().manual_seed(seed)
    p = low + (1 - low) * torch.rand(n, generator=g)
    y = (torch.rand(n, generator=g) < p**1.5).long()  # deliberately mis-calibrated
    return p, y


@pytest.mark.parametrize("norm", NORMS)
@needs_torchmetrics
def test_binary_positive_mode_matches_torchmetrics(norm):
    p, y = binary_data()
    theirs = tm_cls.binary_calibration_error(p, y, n_bins=10, norm=norm).item()
    assert expected_calibration_error(p, y, 10, norm, binary_mode="positive") == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("norm", NORMS)
@needs_torchmetrics
def test_binary_top_label_equals_torchmetrics_when_all_p_at_least_half(norm):
    p, y = binary_data(low=0.5)
    theirs = tm_cls.binary_calibration_error(p, y, n_bins=10, norm=norm).item()
    assert expected_calibration_error(p, y, 10, norm) == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_binary_top_label_equals_two_class_multiclass(norm):
    p, y = binary_data(seed=3)
    p = p[p != 0.5]
    y = y[: p.numel()]
    two = torch.stack([1 - p, p], dim=1)
    assert expected_calibration_error(p, y, 10, norm) == pytest.approx(
        expected_calibration_error(two, y, 10, norm), abs=1e-6
    )


@needs_torchmetrics
def test_binary_top_label_and_positive_differ_by_hand():
    # p = .2 and .8, both labelled 1, 2 bins.
    # top-label: both have confidence .8 (bin [.5, 1)), one right one wrong -> |0.5 - 0.8| = 0.3.
    # positive: .2 alone in [0, .5) with gap .8, .8 alone in [.5, 1) with gap .2 -> 0.5.
    p, y = torch.tensor([0.2, 0.8]), torch.tensor([1, 1])
    assert expected_calibration_error(p, y, 2) == pytest.approx(0.3)
    assert expected_calibration_error(p, y, 2, binary_mode="positive") == pytest.approx(0.5)
    assert tm_cls.binary_calibration_error(p, y, n_bins=2).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- hand values, binning


def test_hand_computed_uniform():
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, 2, "l1") == pytest.approx(0.5 * 0.075 + 0.5 * 0.3)
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, 2, "l2") == pytest.approx(
        math.sqrt(0.5 * 0.075**2 + 0.5 * 0.3**2)
    )
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, 2, "max") == pytest.approx(0.3)
    # A single bin: |accuracy - mean confidence| = |0.5 - 0.6125|.
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, 1) == pytest.approx(0.1125)


def test_hand_computed_quantile_vs_uniform():
    # confidences .55 (right), .60 (wrong), .70 (right), .90 (right)
    probs = torch.tensor([[0.55, 0.45], [0.4, 0.6], [0.7, 0.3], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 0, 1])
    # uniform, 2 bins: all in [.5, 1): |0.75 - 0.6875|
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.0625)
    # equal mass: {.55, .60} gap |0.5 - 0.575|, {.70, .90} gap |1 - 0.8|
    assert expected_calibration_error(probs, labels, 2, binning="quantile") == pytest.approx(0.5 * 0.075 + 0.5 * 0.2)
    assert expected_calibration_error(probs, labels, 2, "max", "quantile") == pytest.approx(0.2)
    curve = reliability_curve(probs, labels, 2, binning="quantile")
    assert curve.edges.tolist() == pytest.approx([0.0, 0.7, 1.0])


@pytest.mark.parametrize("n,n_bins", [(1000, 10), (1500, 15), (90, 45)])
def test_quantile_bins_hold_equal_counts(n, n_bins):
    probs, labels = random_probs(n, 5, 2.0, n)
    curve = reliability_curve(probs, labels, n_bins, binning="quantile")
    assert curve.count.tolist() == [n // n_bins] * n_bins
    assert torch.all(curve.edges[1:] >= curve.edges[:-1])


def test_quantile_counts_differ_by_at_most_one_and_handle_ties():
    probs = torch.full((103, 2), 0.5)  # every confidence tied
    curve = reliability_curve(probs, torch.zeros(103, dtype=torch.long), 10, binning="quantile")
    assert curve.count.sum().item() == 103
    assert curve.count.max().item() - curve.count.min().item() <= 1


def test_perfectly_calibrated_sampler_ece_shrinks_with_n():
    g = torch.Generator().manual_seed(0)
    eces = []
    for n in (1_000, 20_000, 200_000):
        conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
        correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
        probs = torch.stack([conf, 1 - conf], dim=1)
        labels = (~correct).long()  # class 0 is predicted; it is right with probability conf
        eces.append(expected_calibration_error(probs, labels))
    assert eces[0] > eces[1] > eces[2]
    assert eces[2] < 0.01


# ----------------------------------------------------------------------------- other metrics


def test_reliability_curve_structure():
    probs, labels = random_probs(777, 4, 1.5, 11)
    curve = reliability_curve(probs, labels, n_bins=8)
    assert isinstance(curve, ReliabilityCurve)
    assert curve.count.dtype == torch.int64 and curve.count.sum().item() == 777
    assert curve.edges.tolist() == pytest.approx(torch.linspace(0, 1, 9).tolist())
    empty = curve.count == 0
    assert torch.isnan(curve.accuracy[empty]).all() and torch.isnan(curve.confidence[empty]).all()
    full = ~empty
    # no confidence is exactly 1.0 here, so the curve reproduces the ECE exactly
    assert (probs.max(1).values < 1).all()
    from_curve = (curve.count[full] / 777 * (curve.accuracy[full] - curve.confidence[full]).abs()).sum()
    assert from_curve.item() == pytest.approx(expected_calibration_error(probs, labels, 8), abs=1e-6)


def test_brier_against_numpy_and_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    probs, labels = random_probs(500, 6, 1.0, 3, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    expected = ((p - np.eye(6)[y]) ** 2).sum(axis=1).mean()
    assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert brier_score(p, y) == pytest.approx(
        sk.brier_score_loss(y, p, labels=list(range(6)), scale_by_half=False), rel=1e-12
    )
    # binary convention: mean (p - y)^2, half of the two-class multiclass score
    pb, yb = binary_data(300)
    pb = pb.double()
    assert brier_score(pb, yb) == pytest.approx(sk.brier_score_loss(yb.numpy(), pb.numpy()), rel=1e-12)
    assert brier_score(pb, yb) == pytest.approx(brier_score(torch.stack([1 - pb, pb], 1), yb) / 2, rel=1e-12)
    # by hand: (0.2^2 + 0.2^2) + (0.5^2 + 0.5^2) over 2 samples
    assert brier_score(torch.tensor([[0.8, 0.2], [0.5, 0.5]]), torch.tensor([0, 1])) == pytest.approx(0.29)


def test_nll_against_numpy_torch_and_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    probs, labels = random_probs(500, 6, 1.0, 4, dtype=torch.float64)
    p, y = probs.numpy(), labels.numpy()
    expected = -np.log(p[np.arange(500), y]).mean()
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert negative_log_likelihood(p, y) == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-12)
    assert negative_log_likelihood(p, y) == pytest.approx(sk.log_loss(y, p, labels=list(range(6))), rel=1e-9)
    pb, yb = binary_data(300)
    pb = pb.double().clamp(1e-6, 1 - 1e-6)
    assert negative_log_likelihood(pb, yb) == pytest.approx(F.binary_cross_entropy(pb, yb.double()).item(), rel=1e-9)


def test_nll_clamp():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    assert negative_log_likelihood(probs, labels, eps=1e-12) == pytest.approx((-math.log(1e-12) + math.log(2)) / 2)
    assert math.isinf(negative_log_likelihood(probs, labels, eps=0.0))


def classwise_reference(probs, labels, n_bins):
    k = probs.shape[1]
    per_class = [
        tm_cls.binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=n_bins).item()
        for c in range(k)
    ]
    return sum(per_class) / k


@pytest.mark.parametrize("n,k,n_bins,scale", [(400, 3, 10, 1.0), (2000, 10, 15, 3.0)])
@needs_torchmetrics
def test_classwise_matches_mean_of_per_class_torchmetrics(n, k, n_bins, scale):
    probs, labels = random_probs(n, k, scale, k)
    assert classwise_calibration_error(probs, labels, n_bins) == pytest.approx(
        classwise_reference(probs, labels, n_bins), abs=1e-6
    )
    per_class_quantile = [
        expected_calibration_error(probs[:, c], (labels == c).long(), n_bins, "l2", "quantile", "positive")
        for c in range(k)
    ]
    assert classwise_calibration_error(probs, labels, n_bins, "l2", "quantile") == pytest.approx(
        float(np.mean(per_class_quantile)), abs=1e-6
    )


def test_classwise_hand_and_binary():
    # class 0: p .8/.3 both positive -> gaps .2 and .7; class 1: p .2/.7 both negative -> .2, .7
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    assert classwise_calibration_error(probs, torch.tensor([0, 0]), n_bins=2) == pytest.approx(0.45)
    assert classwise_calibration_error(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]), 2) == pytest.approx(0.45)


# ----------------------------------------------------------------------------- bootstrap


def miscalibrated(n, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, 5, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return torch.softmax(2 * logits, 1), labels  # twice over-confident


def test_bootstrap_contains_point_and_is_reproducible():
    probs, labels = miscalibrated(1000, 0)
    ece10 = functools.partial(expected_calibration_error, n_bins=10)
    for metric in (ece10, brier_score, negative_log_likelihood):
        result = bootstrap_interval(metric, probs, labels, n=60, seed=1)
        assert isinstance(result, BootstrapInterval)
        point, low, high = result
        assert low <= point <= high
        assert point == pytest.approx(metric(probs, labels))
    a = bootstrap_interval(ece10, probs, labels, n=30, seed=1)
    assert bootstrap_interval(ece10, probs, labels, n=30, seed=1) == a
    assert bootstrap_interval(ece10, probs.numpy(), labels.numpy(), n=30, seed=1) == pytest.approx(a)
    assert bootstrap_interval(ece10, probs, labels, n=30, seed=2) != a


def test_bootstrap_narrows_with_n_and_level():
    small = bootstrap_interval(brier_score, *miscalibrated(250, 1), n=200)
    large = bootstrap_interval(brier_score, *miscalibrated(4000, 1), n=200)
    assert large.high - large.low < 0.5 * (small.high - small.low)
    narrow = bootstrap_interval(brier_score, *miscalibrated(250, 1), n=200, level=0.5)
    assert narrow.high - narrow.low < small.high - small.low


# ----------------------------------------------------------------------------- temperature scaling


def sampled(n=5000, k=10, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


def nll_at(logits, labels, t):
    return F.cross_entropy(logits.double() / t, labels).item()


@pytest.mark.parametrize("factor", [3.0, 20.0, 0.1, 1.0])
def test_fit_temperature_recovers_the_distortion(factor):
    logits, labels = sampled()
    t = fit_temperature(factor * logits, labels)
    assert t == pytest.approx(factor, rel=0.08)
    # it is the minimum of the NLL, not just near the true value
    best = nll_at(factor * logits, labels, t)
    assert nll_at(factor * logits, labels, t * 1.05) >= best
    assert nll_at(factor * logits, labels, t / 1.05) >= best


def test_fit_temperature_binary_and_numpy():
    g = torch.Generator().manual_seed(5)
    z = 2 * torch.randn(5000, generator=g)
    y = (torch.rand(5000, generator=g) < torch.sigmoid(z)).long()
    t = fit_temperature((4 * z).numpy(), y.numpy())
    assert t == pytest.approx(4.0, rel=0.1)
    bce = lambda s: F.binary_cross_entropy_with_logits(4 * z.double() / s, y.double()).item()  # noqa: E731
    assert bce(t * 1.05) >= bce(t) and bce(t / 1.05) >= bce(t)


def test_fit_temperature_warns_at_bound_for_separable_data():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    with pytest.warns(RuntimeWarning, match="bound"):
        t = fit_temperature(logits, torch.tensor([0, 1]))
    assert t == pytest.approx(0.01)


def test_temperature_scaler_applies_fitted_temperature():
    logits, labels = sampled(seed=1)
    over = 3 * logits
    scaler = TemperatureScaler()
    assert torch.equal(scaler(over), over)  # identity before fitting
    assert scaler.fit(over, labels) is scaler
    t = scaler.temperature.item()
    assert t == pytest.approx(3.0, rel=0.08)
    assert torch.allclose(scaler(over), over / t)
    assert "temperature" in scaler.state_dict()
    before = expected_calibration_error(torch.softmax(over, 1), labels)
    after = expected_calibration_error(torch.softmax(scaler(over), 1), labels)
    assert after < before / 3
    assert scaler(over.double()).dtype == torch.float64


# ----------------------------------------------------------------------------- errors


METRICS = [
    expected_calibration_error,
    classwise_calibration_error,
    reliability_curve,
    brier_score,
    negative_log_likelihood,
]


@pytest.mark.parametrize("metric", METRICS)
def test_common_input_errors(metric):
    probs, labels = HAND_PROBS, HAND_LABELS
    with pytest.raises(ValueError, match=r"probs and labels.*4 rows.*3 entries"):
        metric(probs, labels[:3])
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 2\].*\[-1, 2\]"):
        metric(probs, torch.tensor([2, 1, 0, -1]))
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 3\]"):
        metric(probs, torch.tensor([2, 1, 0, 3]))
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 1\]"):
        metric(torch.tensor([0.2, 0.9]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"probs must be 1-D.*shape \(2, 2, 3\)"):
        metric(torch.rand(2, 2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"probs must be 1-D.*shape \(\)"):
        metric(torch.tensor(0.5), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"probs is empty"):
        metric(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\].*logits"):
        metric(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"probs must be probabilities.*NaN"):
        metric(torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"K >= 2"):
        metric(torch.ones(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"labels must be an integer.*float32"):
        metric(probs, labels.float())
    with pytest.raises(TypeError, match=r"probs must be a floating-point.*int64"):
        metric(torch.ones(4, 3, dtype=torch.long), labels)
    with pytest.raises(TypeError, match=r"probs must be a torch.Tensor or a numpy.ndarray, got list"):
        metric([[0.5, 0.5]], labels)
    with pytest.raises(ValueError, match=r"labels must be 1-D"):
        metric(probs, labels.reshape(2, 2))


@pytest.mark.parametrize("metric", [expected_calibration_error, classwise_calibration_error, reliability_curve])
def test_binning_argument_errors(metric):
    with pytest.raises(ValueError, match=r"n_bins must be an integer >= 1, got 0"):
        metric(HAND_PROBS, HAND_LABELS, n_bins=0)
    with pytest.raises(ValueError, match=r"n_bins.*got -3"):
        metric(HAND_PROBS, HAND_LABELS, n_bins=-3)
    with pytest.raises(TypeError, match=r"n_bins.*got 2.5"):
        metric(HAND_PROBS, HAND_LABELS, n_bins=2.5)
    with pytest.raises(ValueError, match=r"binning must be one of.*'equal'"):
        metric(HAND_PROBS, HAND_LABELS, binning="equal")


def test_norm_and_mode_errors():
    for metric in (expected_calibration_error, classwise_calibration_error):
        with pytest.raises(ValueError, match=r"norm must be one of.*'l3'"):
            metric(HAND_PROBS, HAND_LABELS, norm="l3")
    with pytest.raises(ValueError, match=r"binary_mode must be one of.*'negative'"):
        expected_calibration_error(torch.tensor([0.4]), torch.tensor([1]), binary_mode="negative")
    with pytest.raises(ValueError, match=r"eps must be.*-1"):
        negative_log_likelihood(HAND_PROBS, HAND_LABELS, eps=-1)


def test_bootstrap_argument_errors():
    with pytest.raises(ValueError, match=r"level must be.*1.5"):
        bootstrap_interval(brier_score, HAND_PROBS, HAND_LABELS, level=1.5)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        bootstrap_interval(brier_score, HAND_PROBS, HAND_LABELS, n=0)
    with pytest.raises(TypeError, match=r"metric must be callable"):
        bootstrap_interval("ece", HAND_PROBS, HAND_LABELS)
    with pytest.raises(ValueError, match=r"probs and labels must have the same length"):
        bootstrap_interval(brier_score, HAND_PROBS, HAND_LABELS[:2])
    with pytest.raises(ValueError, match=r"probs is empty"):
        bootstrap_interval(brier_score, torch.empty(0, 3), torch.empty(0, dtype=torch.long))


def test_temperature_argument_errors():
    logits, labels = sampled(100)
    with pytest.raises(ValueError, match=r"logits and labels must have the same length"):
        fit_temperature(logits, labels[:50])
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 9\]"):
        fit_temperature(logits, labels + 5)
    with pytest.raises(ValueError, match=r"logits must be 1-D.*shape \(2, 2, 2\)"):
        fit_temperature(torch.zeros(2, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"logits is empty"):
        fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must be finite"):
        fit_temperature(torch.tensor([[float("inf"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"bounds must be.*\(1.0, 0.5\)"):
        fit_temperature(logits, labels, bounds=(1.0, 0.5))
    with pytest.raises(TypeError, match=r"logits must be a floating-point"):
        fit_temperature(torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"temperature must be a positive number, got 0"):
        TemperatureScaler(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_the_cpu_numbers():
    probs, labels = random_probs(3000, 10, 3.0, 9)
    cuda = probs.cuda(), labels.cuda()
    for fn in (expected_calibration_error, classwise_calibration_error, brier_score, negative_log_likelihood):
        assert fn(*cuda) == pytest.approx(fn(probs, labels), abs=1e-6)
    assert expected_calibration_error(cuda[0], labels, binning="quantile") == pytest.approx(
        expected_calibration_error(probs, labels, binning="quantile"), abs=1e-6
    )
    curve = reliability_curve(*cuda)
    assert curve.count.device.type == "cuda" and curve.count.sum().item() == 3000
    logits, y = sampled()
    assert fit_temperature(3 * logits.cuda(), y.cuda()) == pytest.approx(fit_temperature(3 * logits, y), rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bootstrap_interval(brier_score, *cuda, n=20)


def test_rows_that_do_not_sum_to_one_are_refused_by_every_probability_metric():
    from labelsmooth import calibration as C

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 4, generator=g), dim=1)
    labels = torch.randint(0, 4, (50,), generator=g)
    scores = probs.clone()
    scores[7] *= 0.5  # in [0, 1], but not a distribution
    for fn in (C.expected_calibration_error, C.classwise_calibration_error, C.brier_score, C.negative_log_likelihood):
        fn(probs, labels)  # normalised rows pass
        with pytest.raises(ValueError, match=r"probs rows must sum to 1, got row 7 summing to 0\.5"):
            fn(scores, labels)
    # Half-precision probabilities sum to 1 only to their rounding, and pass.
    C.expected_calibration_error(probs.half(), labels)


def test_fit_temperature_refuses_probabilities_given_as_logits():
    from labelsmooth import calibration as C

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(400, 5, generator=g)
    labels = torch.distributions.Categorical(logits=logits / 3).sample()
    C.fit_temperature(logits, labels)
    with pytest.raises(ValueError, match="logits look like probabilities"):
        C.fit_temperature(torch.softmax(logits, dim=1), labels)
    # log-probabilities are logits up to a per-row constant: accepted, same temperature.
    assert C.fit_temperature(torch.log_softmax(logits, dim=1), labels) == pytest.approx(
        C.fit_temperature(logits, labels), rel=1e-4
    )
    # Binary: P(y=1) passed as log-odds would predict class 1 everywhere, although both classes occur.
    z = 4 * torch.randn(400, generator=g)
    y = (torch.rand(400, generator=g) < torch.sigmoid(z)).long()
    C.fit_temperature(z, y)
    with pytest.raises(ValueError, match=r"pass torch\.logit"):
        C.fit_temperature(torch.sigmoid(z), y)
