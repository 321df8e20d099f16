"""Calibration metrics, a bootstrap for their uncertainty, and temperature scaling.

Every metric takes ``probs`` and ``labels`` as torch tensors or numpy arrays:

* multiclass: ``probs`` of shape ``(N, K)`` (rows are predicted distributions), ``labels`` of
  shape ``(N,)`` with integer class indices in ``[0, K)``;
* binary: ``probs`` of shape ``(N,)`` holding ``P(y = 1)``, ``labels`` of shape ``(N,)`` in
  ``{0, 1}``.

All arithmetic runs on the device of ``probs`` (numpy input runs on the CPU); scalar results are
converted to a Python ``float`` only at the very end. Labels living on another device are moved to
the device of ``probs``.

Equal-width ("uniform") binning uses the same edges and the same bin assignment as torchmetrics'
``multiclass_calibration_error``/``binary_calibration_error``, so the numbers agree with it; see
``docs/evidence.md`` for the conventions, including the one place where the reliability diagram
differs (a confidence of exactly 1.0).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BootstrapInterval",
    "ReliabilityCurve",
    "TemperatureScaler",
    "bootstrap_interval",
    "brier_score",
    "classwise_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_curve",
]

_NORMS = ("l1", "l2", "max")
_BINNINGS = ("uniform", "quantile")
_BINARY_MODES = ("top_label", "positive")


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics behind a reliability diagram.

    Attributes:
        confidence: ``(n_bins,)`` mean confidence of the samples in each bin (NaN for an empty bin).
        accuracy: ``(n_bins,)`` fraction of correct predictions in each bin (NaN for an empty bin).
        count: ``(n_bins,)`` int64 number of samples in each bin; sums to N.
        edges: ``(n_bins + 1,)`` bin edges; ``edges[0] == 0`` and ``edges[-1] == 1``.
    """

    confidence: Tensor
    accuracy: Tensor
    # Shadows tuple.count (a method), which mypy flags; the field name is public API and stays.
    count: Tensor  # type: ignore[assignment]
    edges: Tensor


class BootstrapInterval(NamedTuple):
    """A point estimate with a percentile-bootstrap interval; unpacks as ``(point, low, high)``."""

    point: float
    low: float
    high: float


# ----------------------------------------------------------------------------- validation


def _to_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _float_dtype(t: Tensor) -> torch.dtype:
    # Half precision has too few mantissa bits to average thousands of confidences.
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _check_scores_labels(scores: object, labels: object, name: str, what: str) -> tuple[Tensor, Tensor]:
    """Shape and dtype checks shared by probabilities and logits: ``name`` is the argument's name,
    ``what`` how a floating-point value of it is described in the error."""
    p = _to_tensor(scores, name)
    y = _to_tensor(labels, "labels")
    if not p.is_floating_point():
        raise TypeError(f"{name} must be a floating-point array{what}, got dtype {p.dtype}")
    if p.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-D (N,) for binary or 2-D (N, K) for multiclass, got shape {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(p.shape)}); at least one sample is needed")
    if p.dim() == 2 and p.shape[1] < 2:
        raise ValueError(
            f"{name} of shape (N, K) needs K >= 2 classes, got shape {tuple(p.shape)}; "
            "pass a 1-D array for a binary problem"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be an integer array of class indices, got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"{name} and labels must have the same length, got {name} with {p.shape[0]} rows "
            f"and labels with {y.shape[0]} entries"
        )
    return p, y


def _check_probs_labels(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    """Validate and return ``(probs, labels)`` as tensors on the device of ``probs``."""
    p, y = _check_scores_labels(probs, labels, "probs", " of probabilities")
    half = p.dtype in (torch.float16, torch.bfloat16)
    p = p.to(_float_dtype(p))
    y = y.to(device=p.device, dtype=torch.long)
    num_classes = 2 if p.dim() == 1 else p.shape[1]
    in_range = ((p >= 0) & (p <= 1)).all()
    if p.dim() == 2:
        # Rows of probabilities sum to 1 up to rounding: half-precision storage moves a row's sum by up to
        # ~2**-11, probabilities computed in half precision and cast up (or written with a few decimals)
        # by a few times that; un-normalised scores are off by far more.
        tol = 2.0**-8 if half else 1e-3
        sums = p.sum(dim=1)
        rows_ok = ((sums - 1).abs() <= tol).all()
    else:
        rows_ok = torch.ones((), dtype=torch.bool, device=p.device)
    if _bad_values(~(in_range & rows_ok), y, num_classes):  # also catches NaN
        if bool(in_range) and p.dim() == 2:
            bad = int(((sums - 1).abs() > tol).nonzero()[0, 0])
            raise ValueError(
                f"probs rows must sum to 1, got row {bad} summing to {sums[bad].item():.6g} "
                f"(values in [0, 1] that are not a distribution: scores, or probabilities of a subset "
                f"of classes); normalise them, or apply softmax if they are logits"
            )
        nan = torch.isnan(p)
        seen = p[~nan]
        span = f"values in [{seen.min().item():.4g}, {seen.max().item():.4g}]" if seen.numel() else "no numbers"
        raise ValueError(
            f"probs must be probabilities in [0, 1], got {span}{' and NaN' if nan.any() else ''}; "
            "if these are logits, apply softmax (or sigmoid for binary) first"
        )
    return p, y


def _bad_values(bad_scores: Tensor, y: Tensor, num_classes: int) -> bool:
    """Read the value checks in one host read (not one synchronisation per check); raise for labels
    out of range; return whether the scores' own check (``bad_scores``, a 0-d bool) failed, which the
    caller reports first."""
    flags = torch.stack([bad_scores, ((y < 0) | (y >= num_classes)).any()]).tolist()
    if flags[0]:
        return True
    if flags[1]:
        lo, hi = y.aminmax()
        raise ValueError(
            f"labels out of range: expected class indices in [0, {num_classes - 1}], "
            f"got values in [{lo.item()}, {hi.item()}]"
        )
    return False


# ----------------------------------------------------------------------------- binning core


def _top_label(p: Tensor, y: Tensor, binary_mode: str) -> tuple[Tensor, Tensor]:
    """Return ``(confidence, correct)`` as ``(N, 1)`` float tensors (one group of N samples)."""
    if p.dim() == 2:
        conf, pred = p.max(dim=1)
        correct = pred.eq(y)
    elif binary_mode == "top_label":
        pred = p >= 0.5
        conf = torch.where(pred, p, 1 - p)
        correct = pred.eq(y.bool())
    else:  # "positive": the reliability of P(y=1) itself, as torchmetrics' binary metric scores it
        conf = p
        correct = y.bool()
    return conf.unsqueeze(1), correct.to(conf.dtype).unsqueeze(1)


def _bin_index(conf: Tensor, n_bins: int, binning: str, closed_last: bool) -> tuple[Tensor, int, Tensor]:
    """Assign each entry of ``conf`` (shape ``(N, G)``, G independent groups) to a bin.

    Returns ``(index, n_slots, edges)``: ``index`` has ``conf``'s shape, ``n_slots`` is the number
    of accumulator slots per group, and ``edges`` has shape ``(n_bins + 1,)`` for uniform binning
    or ``(n_bins + 1, G)`` for quantile binning.
    """
    n = conf.shape[0]
    if binning == "uniform":
        edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
        # Bins are left-closed [e_b, e_{b+1}); torchmetrics gives a confidence of exactly 1.0 a
        # slot of its own past the last bin. Scalar metrics keep that slot so the numbers agree;
        # the reliability curve folds it into the last bin so every sample appears in a drawn bar.
        index = torch.bucketize(conf, edges, right=True) - 1
        if closed_last:
            return index.clamp_(max=n_bins - 1), n_bins, edges
        return index, n_bins + 1, edges
    # Equal mass: rank the samples (ties broken by position, so counts stay equal) and cut the
    # ranking into n_bins runs whose lengths differ by at most one.
    order = torch.argsort(conf, dim=0, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(0, order, torch.arange(n, device=conf.device).unsqueeze(1).expand_as(order).contiguous())
    index = ranks * n_bins // n
    sorted_conf = torch.gather(conf, 0, order)
    first = torch.tensor(
        [min(-(-b * n // n_bins), n - 1) for b in range(1, n_bins)], dtype=torch.long, device=conf.device
    )
    inner = sorted_conf.index_select(0, first)
    zeros = torch.zeros_like(conf[:1])
    edges = torch.cat([zeros, inner, torch.ones_like(zeros)], dim=0)
    return index, n_bins, edges


def _bin_stats(conf: Tensor, correct: Tensor, index: Tensor, n_slots: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group, per-slot sums ``(conf_sum, correct_sum, count)``, each ``(G, n_slots)``; count is int64."""
    g = conf.shape[1]
    flat = (index + torch.arange(g, device=conf.device) * n_slots).reshape(-1)
    size = g * n_slots

    def total(src: Tensor) -> Tensor:
        out = torch.zeros(size, dtype=conf.dtype, device=conf.device)
        return out.scatter_add_(0, flat, src.reshape(-1)).view(g, n_slots)

    # Counts are integers: a float32 running count stops being exact past 2**24 samples per bin.
    return total(conf), total(correct), torch.bincount(flat, minlength=size).view(g, n_slots)


def _calibration_error(conf: Tensor, correct: Tensor, n_bins: int, norm: str, binning: str) -> Tensor:
    """Calibration error of each of the G groups in ``conf``/``correct`` ``(N, G)``; returns ``(G,)``."""
    index, n_slots, _ = _bin_index(conf, n_bins, binning, closed_last=False)
    conf_sum, correct_sum, count = _bin_stats(conf, correct, index, n_slots)
    count = count.to(conf.dtype)
    # |mean accuracy - mean confidence| per bin, zero where the bin is empty (it has zero weight).
    gap = ((correct_sum - conf_sum) / count.clamp(min=1)).abs()
    weight = count / count.sum(dim=1, keepdim=True)
    if norm == "l1":
        return (weight * gap).sum(dim=1)
    if norm == "l2":
        return (weight * gap.square()).sum(dim=1).sqrt()
    return gap.amax(dim=1)


# ----------------------------------------------------------------------------- metrics


def expected_calibration_error(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    binary_mode: str = "top_label",
) -> float:
    r"""Top-label calibration error: ECE (``"l1"``), RMS calibration error (``"l2"``) or MCE (``"max"``).

    Each sample contributes its top-label confidence :math:`c_i = \max_k p_{ik}` and whether the
    top label is correct. Samples are grouped into bins :math:`B_b`; with
    :math:`w_b = |B_b| / N`, :math:`\mathrm{acc}_b` the fraction correct and :math:`\mathrm{conf}_b`
    the mean confidence of bin b:

    * ``"l1"``: :math:`\sum_b w_b |\mathrm{acc}_b - \mathrm{conf}_b|` (ECE),
    * ``"l2"``: :math:`\sqrt{\sum_b w_b (\mathrm{acc}_b - \mathrm{conf}_b)^2}` (RMS CE),
    * ``"max"``: :math:`\max_{b: |B_b| > 0} |\mathrm{acc}_b - \mathrm{conf}_b|` (MCE).

    ``binning="uniform"`` uses equal-width, left-closed bins :math:`[b/n, (b+1)/n)` with exactly the
    edges and assignment of torchmetrics' ``multiclass_calibration_error``: a confidence of exactly
    1.0 is scored in a slot of its own. ``binning="quantile"`` uses equal-mass bins: the samples are
    ranked by confidence (ties broken by position) and cut into ``n_bins`` runs whose sizes differ by
    at most one.

    Binary input (``probs`` of shape ``(N,)`` = P(y=1)): with ``binary_mode="top_label"`` (default)
    the prediction is ``p >= 0.5``, the confidence is ``max(p, 1 - p)`` (always >= 0.5), and the
    result equals the multiclass metric on ``[1 - p, p]`` (except that a tie at exactly 0.5 predicts
    class 1). ``binary_mode="positive"`` instead scores the calibration of ``p`` itself against the
    label (confidence ``p``, "correct" = ``y == 1``); that is what torchmetrics'
    ``binary_calibration_error`` computes. The two coincide when every ``p >= 0.5``.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1) for a binary problem.
        labels: ``(N,)`` integer labels in ``[0, K)`` (binary: ``{0, 1}``).
        n_bins: number of bins, >= 1.
        norm: ``"l1"``, ``"l2"`` or ``"max"``.
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
        binary_mode: ``"top_label"`` or ``"positive"``; ignored for multiclass ``probs``.

    Returns:
        The calibration error as a Python float in [0, 1].

    Raises:
        TypeError: non-array input, non-float ``probs``, non-integer ``labels`` or ``n_bins``.
        ValueError: empty input, wrong shapes, length mismatch, probabilities outside [0, 1] or rows of
            ``(N, K)`` probabilities that do not sum to 1 (within 1e-3; 2**-8 for half precision), labels
            out of range, ``n_bins < 1``, unknown ``norm``/``binning``/``binary_mode``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.3, 0.3, 0.4], [0.45, 0.35, 0.2], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
        >>> labels = torch.tensor([2, 1, 0, 2])
        >>> round(expected_calibration_error(probs, labels, n_bins=2), 4)
        0.1875

    References:
        Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
        Binning", AAAI 2015. Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
        Networks", ICML 2017. Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019
        (RMS CE and equal-mass bins).
    """
    n_bins = _check_int(n_bins, "n_bins", 1)
    _check_choice(norm, "norm", _NORMS)
    _check_choice(binning, "binning", _BINNINGS)
    _check_choice(binary_mode, "binary_mode", _BINARY_MODES)
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _top_label(p, y, binary_mode)
    return float(_calibration_error(conf, correct, n_bins, norm, binning)[0])


def classwise_calibration_error(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
) -> float:
    r"""Class-wise calibration error: the mean over classes of the calibration error of each class.

    For every class k, the probabilities :math:`p_{ik}` of *all* N samples are binned and compared
    with the indicator :math:`[y_i = k]`; the per-class errors (same ``norm`` and ``binning`` rules as
    :func:`expected_calibration_error`, bins taken per class) are averaged over the K classes:

    .. math:: \mathrm{CWCE} = \frac{1}{K} \sum_k \sum_b \frac{|B_{kb}|}{N}
              \Big| \frac{1}{|B_{kb}|}\sum_{i \in B_{kb}} [y_i = k] - p_{ik} \Big|

    With uniform bins and ``norm="l1"`` this is the static calibration error (SCE) of Nixon et al.;
    with ``binning="quantile"`` it is their adaptive calibration error (ACE). A binary ``(N,)`` input
    is treated as the two classes ``[1 - p, p]``.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1).
        labels: ``(N,)`` integer labels in ``[0, K)``.
        n_bins: number of bins per class, >= 1.
        norm: ``"l1"``, ``"l2"`` or ``"max"``.
        binning: ``"uniform"`` or ``"quantile"``.

    Returns:
        The class-wise calibration error as a Python float.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
        >>> round(classwise_calibration_error(probs, torch.tensor([0, 0]), n_bins=2), 4)
        0.45

    References:
        Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach, "Beyond temperature scaling:
        Obtaining well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS 2019.
        Nixon, Dusenberry, Zhang, Jerfel & Tran, "Measuring Calibration in Deep Learning", CVPR
        Workshops 2019.
    """
    n_bins = _check_int(n_bins, "n_bins", 1)
    _check_choice(norm, "norm", _NORMS)
    _check_choice(binning, "binning", _BINNINGS)
    p, y = _check_probs_labels(probs, labels)
    if p.dim() == 1:
        p = torch.stack([1 - p, p], dim=1)
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return float(_calibration_error(p, onehot, n_bins, norm, binning).mean())


def reliability_curve(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    binning: str = "uniform",
    binary_mode: str = "top_label",
) -> ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count of the top-label prediction.

    The bins are those of :func:`expected_calibration_error` with one difference for uniform
    binning: the last bin is closed, ``[1 - 1/n_bins, 1]``, so a confidence of exactly 1.0 is drawn
    in the last bar instead of a slot of its own. Hence
    ``sum(count / N * |accuracy - confidence|)`` over non-empty bins equals the ECE whenever no
    confidence is exactly 1.0. For quantile binning ``edges[b]`` (0 < b < n_bins) is the smallest
    confidence falling into bin b.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1).
        labels: ``(N,)`` integer labels.
        n_bins: number of bins, >= 1.
        binning: ``"uniform"`` or ``"quantile"``.
        binary_mode: ``"top_label"`` or ``"positive"`` (see :func:`expected_calibration_error`).

    Returns:
        A :class:`ReliabilityCurve` of tensors on the device of ``probs``: ``confidence``,
        ``accuracy`` (``(n_bins,)``, NaN for empty bins), ``count`` (``(n_bins,)`` int64, sums to N)
        and ``edges`` (``(n_bins + 1,)``).

    Example:
        >>> import torch
        >>> curve = reliability_curve(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]), n_bins=2)
        >>> curve.count.tolist(), curve.accuracy.tolist()
        ([0, 2], [nan, 0.5])

    References:
        DeGroot & Fienberg, "The Comparison and Evaluation of Forecasters", 1983 (reliability
        diagrams); Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    """
    n_bins = _check_int(n_bins, "n_bins", 1)
    _check_choice(binning, "binning", _BINNINGS)
    _check_choice(binary_mode, "binary_mode", _BINARY_MODES)
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _top_label(p, y, binary_mode)
    index, n_slots, edges = _bin_index(conf, n_bins, binning, closed_last=True)
    conf_sum, correct_sum, count = _bin_stats(conf, correct, index, n_slots)
    # 0/0 -> NaN on purpose: an empty bin has no accuracy, and plotting libraries skip NaN.
    return ReliabilityCurve(
        confidence=(conf_sum / count)[0],
        accuracy=(correct_sum / count)[0],
        count=count[0],
        edges=edges.reshape(n_bins + 1),
    )


def brier_score(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    r"""Brier score (mean squared error of the predicted distribution against the one-hot label).

    Multiclass: :math:`\frac{1}{N}\sum_i \sum_k (p_{ik} - [y_i = k])^2`, the original definition of
    Brier (1950), in [0, 2]. Binary ``(N,)`` input uses the common binary convention
    :math:`\frac{1}{N}\sum_i (p_i - y_i)^2` in [0, 1] (as scikit-learn's ``brier_score_loss``), which
    is half the multiclass score of ``[1 - p, p]``.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1).
        labels: ``(N,)`` integer labels.

    Returns:
        The Brier score as a Python float.

    Example:
        >>> import torch
        >>> round(brier_score(torch.tensor([[0.8, 0.2], [0.5, 0.5]]), torch.tensor([0, 1])), 4)
        0.29

    References:
        Brier, "Verification of Forecasts Expressed in Terms of Probability", Monthly Weather
        Review, 1950.
    """
    p, y = _check_probs_labels(probs, labels)
    if p.dim() == 1:
        return float((p - y.to(p.dtype)).square().mean())
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return float((p - onehot).square().sum(dim=1).mean())


def negative_log_likelihood(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray, eps: float = 1e-12) -> float:
    r"""Mean negative log-likelihood of the true label, :math:`-\frac{1}{N}\sum_i \log \max(p_{i,y_i}, \epsilon)`.

    The probability of the true class is clamped from below at ``eps`` so that a confident mistake
    with :math:`p_{i,y_i} = 0` costs :math:`-\log\epsilon` (27.6 for the default) instead of
    infinity. For binary ``(N,)`` input the true-label probability is ``p`` if ``y == 1`` else
    ``1 - p``. Prefer computing the NLL from logits (``F.cross_entropy``) when you have them: it is
    exact where probabilities have underflowed.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1).
        labels: ``(N,)`` integer labels.
        eps: lower clamp for the true-label probability, in [0, 1); 0 disables clamping.

    Returns:
        The mean NLL in nats as a Python float.

    Example:
        >>> import torch
        >>> round(negative_log_likelihood(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([0, 0])), 4)
        0.3993
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    p, y = _check_probs_labels(probs, labels)
    if p.dim() == 1:
        p_true = torch.where(y.bool(), p, 1 - p)
    else:
        p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float(-p_true.clamp(min=eps).log().mean())


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_interval(
    metric: Callable[[Tensor, Tensor], float | Tensor],
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Percentile-bootstrap confidence interval for any ``metric(probs, labels)``.

    Draws ``n`` resamples of the N samples with replacement (indices from a CPU ``torch.Generator``
    seeded with ``seed``, so the result is reproducible and independent of the device), evaluates
    ``metric`` on each and returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    (linear interpolation) together with the metric on the full data.

    Caveat: binned calibration errors are biased upwards on finite samples and a resample contains
    duplicates, so for a well-calibrated model the bootstrap distribution of ECE can sit above the
    point estimate; the interval describes sampling variability, not the bias.

    Args:
        metric: callable taking ``(probs, labels)`` tensors and returning a float or 0-d tensor,
            e.g. :func:`expected_calibration_error` or ``functools.partial`` of it.
        probs: ``(N, ...)`` predictions; resampled along the first dimension.
        labels: ``(N,)`` labels.
        n: number of bootstrap resamples, >= 1.
        seed: seed of the resampling generator.
        level: confidence level in (0, 1).

    Returns:
        ``BootstrapInterval(point, low, high)`` of Python floats.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> probs = torch.softmax(torch.randn(500, 3, generator=g), dim=1)
        >>> labels = torch.randint(0, 3, (500,), generator=g)
        >>> point, low, high = bootstrap_interval(brier_score, probs, labels, n=200)
        >>> low <= point <= high
        True

    References:
        Efron & Tibshirani, "An Introduction to the Bootstrap", 1993.
    """
    if not callable(metric):
        raise TypeError(f"metric must be callable as metric(probs, labels), got {type(metric).__name__}")
    n = _check_int(n, "n", 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    p = _to_tensor(probs, "probs")
    y = _to_tensor(labels, "labels").to(p.device)
    if p.dim() == 0 or p.shape[0] == 0:
        raise ValueError(f"probs is empty (shape {tuple(p.shape)}); at least one sample is needed")
    if y.dim() != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(
            f"probs and labels must have the same length, got probs of shape {tuple(p.shape)} "
            f"and labels of shape {tuple(y.shape)}"
        )
    size = p.shape[0]
    point = float(metric(p, y))
    gen = torch.Generator().manual_seed(int(seed))
    stats = np.empty(n)
    for i in range(n):
        idx = torch.randint(0, size, (size,), generator=gen).to(p.device)
        stats[i] = float(metric(p.index_select(0, idx), y.index_select(0, idx)))
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapInterval(point, float(low), float(high))


# ----------------------------------------------------------------------------- temperature scaling


def _check_logits_labels(logits: object, labels: object) -> tuple[Tensor, Tensor]:
    z, y = _check_scores_labels(logits, labels, "logits", "")
    y = y.to(device=z.device, dtype=torch.long)
    num_classes = 2 if z.dim() == 1 else z.shape[1]
    if _bad_values(~torch.isfinite(z).all(), y, num_classes):
        raise ValueError("logits must be finite, got NaN or infinite values")
    return z, y


def fit_temperature(
    logits: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    bounds: tuple[float, float] = (0.01, 100.0),
    tol: float = 1e-7,
) -> float:
    r"""Find the temperature T minimising the NLL of ``softmax(logits / T)`` (binary: ``sigmoid``).

    The NLL is convex in :math:`1/T`, hence unimodal in :math:`\log T`, so a golden-section search
    on :math:`\log T \in [\log T_{lo}, \log T_{hi}]` finds the global minimum without a learning
    rate or starting point, and is equally reliable for T = 0.05 or T = 50. The loss is evaluated in
    float64 on the device of ``logits``; each of the ~45 evaluations reads one scalar back to the
    host, which is the only synchronisation. If the minimum lies at a bound (e.g. perfectly separated
    data, where the NLL keeps falling as T -> 0), that bound is returned with a ``RuntimeWarning``.

    Binary logits of shape ``(N,)`` (log-odds of y = 1) are supported: the loss is then
    ``binary_cross_entropy_with_logits(logits / T, labels)``.

    Probabilities passed as logits are refused with a ValueError rather than fitted (they would give a
    meaningless T at the search bound): rows that all lie in [0, 1] and sum to 1, or binary values all
    in [0, 1] while both labels occur (log-odds that would predict class 1 for every example).
    Log-probabilities are fine: they differ from logits by a per-row constant.

    Args:
        logits: ``(N, K)`` logits, or ``(N,)`` binary log-odds.
        labels: ``(N,)`` integer labels in ``[0, K)`` (binary: ``{0, 1}``).
        bounds: ``(T_lo, T_hi)`` search interval, ``0 < T_lo < T_hi``.
        tol: width of the final bracket in :math:`\log T`.

    Returns:
        The fitted temperature as a Python float.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> true_logits = 2 * torch.randn(4000, 5, generator=g)
        >>> labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
        >>> T = fit_temperature(3 * true_logits, labels)  # a model three times over-confident
        >>> 2.7 < T < 3.3
        True

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    """
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds)
        or not 0 < bounds[0] < bounds[1]
        or not math.isfinite(bounds[1])
    ):
        raise ValueError(f"bounds must be a pair (T_lo, T_hi) with 0 < T_lo < T_hi < inf, got {bounds!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    z, y = _check_logits_labels(logits, labels)
    z = z.to(torch.float64)
    looks_like_probs = bool(((z >= 0) & (z <= 1)).all())
    if looks_like_probs and z.dim() == 2 and bool(((z.sum(dim=1) - 1).abs() <= 1e-3).all()):
        raise ValueError(
            "logits look like probabilities (every row lies in [0, 1] and sums to 1); fit_temperature "
            "needs logits: pass the model's logits, or torch.log(probs)"
        )
    if looks_like_probs and z.dim() == 1 and bool((y == 0).any()) and bool((y == 1).any()):
        # Log-odds that are all in [0, 1] predict class 1 for every example, although both classes occur.
        raise ValueError(
            "binary logits look like probabilities (every value lies in [0, 1], so every example would "
            "be predicted as class 1); fit_temperature needs log-odds: pass torch.logit(probs)"
        )
    if z.dim() == 1:
        target = y.to(torch.float64)

        def nll(log_t: float) -> float:
            return float(F.binary_cross_entropy_with_logits(z * math.exp(-log_t), target))
    else:

        def nll(log_t: float) -> float:
            return float(F.cross_entropy(z * math.exp(-log_t), y))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    a, b = lo, hi
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(d)
    log_t = (a + b) / 2
    best = nll(log_t)
    # The bracket never contains the endpoints themselves, so compare against them explicitly.
    for edge in (lo, hi):
        at_edge = nll(edge)
        if at_edge < best:
            log_t, best = edge, at_edge
    if log_t - lo < 10 * tol or hi - log_t < 10 * tol:
        warnings.warn(
            f"fit_temperature: the NLL minimum is at the search bound T = {math.exp(log_t):.4g} "
            f"(bounds={bounds}); the data may be separable or the bounds too narrow",
            RuntimeWarning,
            stacklevel=2,
        )
    return math.exp(log_t)


class TemperatureScaler(nn.Module):
    """Post-hoc temperature scaling: ``forward(logits) = logits / T`` with a fitted scalar T.

    T is stored as a buffer, so it follows ``.to(device)`` and is saved in ``state_dict``. It starts
    at 1 (the identity) until :meth:`fit` is called.

    Args:
        temperature: initial temperature, > 0.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> true_logits = torch.randn(2000, 4, generator=g)
        >>> labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
        >>> scaler = TemperatureScaler().fit(2 * true_logits, labels)
        >>> calibrated = scaler(2 * true_logits)
        >>> round(scaler.temperature.item()) == 2
        True

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    """

    temperature: Tensor

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def fit(self, logits: Tensor | np.ndarray, labels: Tensor | np.ndarray, **kwargs: object) -> TemperatureScaler:
        """Fit T on held-out ``logits`` ``(N, K)`` or ``(N,)`` and ``labels`` ``(N,)``; returns ``self``.

        Keyword arguments are passed to :func:`fit_temperature`.
        """
        # kwargs are fit_temperature's own keywords, checked there at run time; mypy sees only object.
        t = fit_temperature(logits, labels, **kwargs)  # type: ignore[arg-type]
        self.temperature.fill_(t)
        return self

    def forward(self, logits: Tensor) -> Tensor:
        """Return ``logits / T`` (same shape and dtype as ``logits``)."""
        return logits / self.temperature.to(dtype=logits.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4g}"
