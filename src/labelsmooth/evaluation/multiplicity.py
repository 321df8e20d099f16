"""Multiplicity corrections and the verdict words shared by ``labelsmooth study`` and ``evaluate``.

One rule decides every verdict, whatever produced its p-value (a t-test over seeds in the study, a
paired bootstrap over examples in :func:`labelsmooth.evaluation.compare`): Holm's step-down correction
within a family of comparisons, and a practical tolerance the effect must reach. Benjamini-Hochberg's
adjusted p-value is reported beside Holm's (it controls the false discovery rate, a weaker promise).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ALPHA",
    "COMPARATOR_OUTCOMES",
    "OUTCOMES",
    "PAIRED_OUTCOMES",
    "benjamini_hochberg",
    "decide",
    "holm",
]

#: Family-wise error rate of each family of verdicts.
ALPHA = 0.05

#: Outcome -> how a claim's verdict is worded.
OUTCOMES = {
    "supports": "supports the claim",
    "contradicts": "contradicts the claim",
    "same": "no clear difference",
    "withheld": "no verdict",
    "unknown": "not measured",
}

#: The words of a comparison that tests no claim ("A vs B": the first-named method against the second).
COMPARATOR_OUTCOMES = {"supports": "first better", "contradicts": "first worse"}

#: The words of a paired comparison of two models (model b against model a).
PAIRED_OUTCOMES = {"supports": "better", "contradicts": "worse", "same": OUTCOMES["same"]}


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control).

    Example:
        >>> [round(x, 3) for x in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def benjamini_hochberg(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate).

    Example:
        >>> [round(x, 3) for x in benjamini_hochberg([0.01, 0.04, 0.03])]
        [0.03, 0.04, 0.04]
    """
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i], reverse=True)
    out = [0.0] * m
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p[i] * m / rank)
        out[i] = min(1.0, running)
    return out


def holm_levels(p: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """The confidence level Holm uses for each hypothesis: ``1 - alpha / (m - r)`` for rank r (0-based)
    among m, so the smallest p-value gets a Bonferroni interval.

    Example:
        >>> [round(x, 4) for x in holm_levels([0.01, 0.04, 0.03])]
        [0.9833, 0.95, 0.975]
    """
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = 1 - alpha / (m - rank)
    return out


def decide(p_adjusted: float, effect: float, tolerance: float, alpha: float = ALPHA) -> str:
    """The outcome of one signed comparison (positive: the predicted direction).

    ``"supports"`` when the adjusted p-value is below ``alpha`` and the effect reaches ``tolerance``,
    ``"contradicts"`` when it is below ``alpha`` and the effect is at most ``-tolerance``, else ``"same"``.

    Example:
        >>> decide(0.001, 0.02, 0.01), decide(0.001, -0.02, 0.01), decide(0.2, 0.5, 0.01), decide(0.001, 0.005, 0.01)
        ('supports', 'contradicts', 'same', 'same')
    """
    if p_adjusted < alpha and abs(effect) >= tolerance and effect != 0:
        return "supports" if effect > 0 else "contradicts"
    return "same"
