"""Per-run metrics, all computed with :mod:`labelsmooth.calibration` (no metric written twice).

Only what calibration does not provide lives here: turning logits into probabilities the way the
study's models define them, accuracy and mean top-label confidence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelsmooth import calibration as cal

__all__ = ["N_BINS", "accuracy", "evaluate", "mean_confidence", "nll", "predictions", "probabilities"]

#: Number of equal-width bins for ECE and class-wise ECE (Guo et al. 2017 use 15).
N_BINS = 15


def probabilities(logits: Tensor) -> Tensor:
    """Predicted probabilities in float64: ``sigmoid`` of ``(N,)`` binary logits (P(y=1)), else softmax.

    float64 keeps confident predictions below exactly 1.0 far longer than float32 (where a softmax
    saturates once the logit gap passes ~17), which matters for ECE's binning and the NLL clamp.

    Args:
        logits: ``(N,)`` binary logits or ``(N, K)`` logits.

    Returns:
        ``(N,)`` or ``(N, K)`` float64 probabilities.
    """
    z = logits.detach().double()
    return torch.sigmoid(z) if z.dim() == 1 else torch.softmax(z, dim=1)


def predictions(logits: Tensor) -> Tensor:
    """Predicted classes: ``logit >= 0`` for binary (so p >= 0.5, as calibration's top label), else argmax."""
    return (logits >= 0).long() if logits.dim() == 1 else logits.argmax(dim=1)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of ``labels`` equal to the prediction from ``logits``."""
    return float((predictions(logits) == labels.to(logits.device)).double().mean())


def mean_confidence(probs: Tensor) -> float:
    """Mean top-label confidence: ``max_k p_k`` per row, or ``max(p, 1 - p)`` for binary ``(N,)`` probs."""
    conf = torch.maximum(probs, 1 - probs) if probs.dim() == 1 else probs.amax(dim=1)
    return float(conf.mean())


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of ``labels``, computed in float64 from the logits.

    From logits, not probabilities: a confident mistake whose probability underflowed (or was clamped)
    keeps its full cost, so the NLL is exact rather than an understatement.

    Example:
        >>> import torch
        >>> round(nll(torch.tensor([[0.0, 0.0]]), torch.tensor([1])), 4)  # log 2
        0.6931
    """
    z = logits.detach().double()
    y = labels.to(z.device)
    if z.dim() == 1:
        return float(F.binary_cross_entropy_with_logits(z, y.double()))
    return float(F.cross_entropy(z, y.long()))


def evaluate(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Test-set metrics of one model.

    Args:
        logits: ``(N,)`` binary or ``(N, K)`` logits.
        labels: ``(N,)`` clean labels.

    Returns:
        ``{"accuracy", "nll", "ece", "ece_quantile", "classwise_ece", "brier", "mean_confidence"}``: ECE
        and class-wise ECE with :data:`N_BINS` equal-width bins (top-label for binary), ``ece_quantile``
        with :data:`N_BINS` equal-mass bins, NLL from the logits, Brier in the multiclass
        convention for K > 2 and the binary one for the single-logit model (see docs/evidence.md).
    """
    probs = probabilities(logits)
    labels = labels.to(probs.device)
    return {
        "accuracy": accuracy(logits, labels),
        "nll": nll(logits, labels),
        "ece": cal.expected_calibration_error(probs, labels, n_bins=N_BINS),
        "ece_quantile": cal.expected_calibration_error(probs, labels, n_bins=N_BINS, binning="quantile"),
        "classwise_ece": cal.classwise_calibration_error(probs, labels, n_bins=N_BINS),
        "brier": cal.brier_score(probs, labels),
        "mean_confidence": mean_confidence(probs),
    }
