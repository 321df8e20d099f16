"""Verdicts: one comparison, what it measures, what would have falsified it, and what the data said.

A :class:`Verdict` holds the per-seed values of one comparison, **signed so that a positive value is
what the claim predicts** (smoothing better than cross-entropy for claims 1-3; the binary task's
benefit smaller than the 10-class task's for claim 4), the practical tolerance, and the words that say
what it measures and what result would have falsified the claim. :func:`adjust` then applies the
multiplicity rule to a family of verdicts (one family per claim):

* the p-value of each verdict is the two-sided one-sample t-test of its values against 0 (paired
  differences over seeds), or Welch's test for two independent groups;
* **Holm's step-down correction** within the family decides; Benjamini-Hochberg's adjusted p-value
  is shown beside it (it controls the false discovery rate, a weaker promise);
* the interval shown is a t-interval at the level Holm used for that verdict, ``1 - 0.05 / (m - r + 1)``
  for the verdict of rank r among m (so the first-ranked one gets a Bonferroni interval);
* the outcome is ``supports`` when Holm rejects and the mean is at least the tolerance, ``contradicts``
  when Holm rejects and the mean is at most minus the tolerance, ``no clear difference`` otherwise,
  and ``withheld`` below :data:`MIN_SEEDS` values per group or in a smoke test.

The report, ``findings.md`` and the README all print these objects, so a sign or a word cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from labelsmooth.evaluation.multiplicity import ALPHA, COMPARATOR_OUTCOMES, OUTCOMES, benjamini_hochberg, decide, holm

__all__ = [
    "ALPHA",
    "COMPARATOR_OUTCOMES",
    "MIN_SEEDS",
    "OUTCOMES",
    "Verdict",
    "adjust",
    "benjamini_hochberg",
    "holm",
    "power",
]

#: Fewer values than this (per group): no verdict.
MIN_SEEDS = 3


@dataclass(frozen=True)
class Verdict:
    """One comparison of the study, signed so that positive values are what the claim predicts.

    Attributes:
        claim: the claim's key (``noise``, ``overfitting``, ``calibration``, ``binary``) or another family.
        dataset: the dataset (or pair of tasks) it was measured on.
        setting: the condition, e.g. ``"symmetric 0.5, early-stopped"`` or ``"clean"``.
        metric: the metric (``test_accuracy``, ``ece``, ``nll``, ...).
        question: the comparison in a few words, e.g. ``"ls (eps chosen on validation) vs ce"``.
        measures: what the signed value measures, in one sentence.
        falsified_by: what result would have contradicted the claim.
        values: per-seed signed values (one group), or the first group of a two-group comparison.
        values_b: the second group of a two-group (Welch) comparison: the value is mean(values) - mean(values_b).
        tolerance: the smallest mean called a change.
        smoke: a ``--quick`` smoke test (no verdict).
        note: anything a reader must know (runs excluded, temperatures at their bound).
        anchor: the id of the paragraph that discusses it (for links from the verdict grid).
        p: two-sided p-value (set by :func:`adjust`'s input; ``None`` without a test).
        p_holm, p_bh: Holm- and Benjamini-Hochberg-adjusted p-values within the family.
        level: the confidence level of :attr:`low`/:attr:`high` (Holm's level for this verdict).
        outcome: a key of :data:`OUTCOMES`.
    """

    claim: str
    dataset: str
    setting: str
    metric: str
    question: str
    measures: str
    falsified_by: str
    values: tuple[float, ...]
    tolerance: float
    values_b: tuple[float, ...] | None = None
    smoke: bool = False
    note: str = ""
    anchor: str = ""
    p: float | None = None
    p_holm: float | None = None
    p_bh: float | None = None
    level: float = 1 - ALPHA
    low: float | None = None
    high: float | None = None
    outcome: str = "unknown"
    sd: float | None = field(default=None, compare=False)

    @property
    def n(self) -> int:
        """Number of values (both groups for a Welch comparison)."""
        return len(self.values) + (len(self.values_b) if self.values_b is not None else 0)

    @property
    def mean(self) -> float | None:
        """The signed effect (positive: what the claim predicts); ``None`` without values."""
        if not self.values or (self.values_b is not None and not self.values_b):
            return None
        m = float(np.mean(self.values))
        return m - float(np.mean(self.values_b)) if self.values_b is not None else m

    @property
    def testable(self) -> bool:
        """Enough values for an interval and a verdict (and not a smoke test)."""
        groups = [self.values] if self.values_b is None else [self.values, self.values_b]
        return not self.smoke and all(len(g) >= MIN_SEEDS for g in groups)

    def text(self, digits: int = 3) -> str:
        """``+0.012 [+0.004, +0.020]`` (the interval at :attr:`level`), or the mean alone, or ``n/a``."""
        m = self.mean
        if m is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{m:+.{digits}f}"
        return f"{m:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    @property
    def words(self) -> str:
        """The outcome in words (:data:`OUTCOMES`; a comparator, which tests no claim, helped or hurt)."""
        if self.claim == "comparators" and self.outcome in COMPARATOR_OUTCOMES:
            return COMPARATOR_OUTCOMES[self.outcome]
        return OUTCOMES[self.outcome]


def _t_stats(v: Verdict) -> tuple[float, float, float] | None:
    """(mean, standard error, degrees of freedom) of a verdict's test, or None when it has none."""
    a = np.asarray(v.values, dtype=float)
    if v.values_b is None:
        if a.size < 2:
            return None
        return float(a.mean()), float(a.std(ddof=1)) / math.sqrt(a.size), float(a.size - 1)
    b = np.asarray(v.values_b, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se > 0 else float(a.size + b.size - 2)
    return float(a.mean() - b.mean()), se, float(df)


def _p_value(mean: float, se: float, df: float) -> float:
    from scipy import stats

    if se == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * stats.t.sf(abs(mean / se), df))


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float | None:
    """Power of the two-sided one-sample t-test at level ``alpha`` to detect a true mean ``effect``
    from ``n`` values of spread ``sd`` (non-central t); ``None`` below 2 values or with ``sd = 0``.

    Example:
        >>> round(power(1.0, 1.0, 10), 2)
        0.8
    """
    if n < 2 or not sd > 0:
        return None
    from scipy import stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = effect / (sd / math.sqrt(n))
    if ncp > 40:  # far beyond the critical value (and where scipy's non-central t loses precision)
        return 1.0
    p = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    return p if math.isfinite(p) else None


def adjust(family: Sequence[Verdict], alpha: float = ALPHA) -> list[Verdict]:
    """Test every verdict of one family and apply Holm's correction (BH shown beside it).

    Args:
        family: the verdicts of one claim.
        alpha: the family-wise error rate.

    Returns:
        The verdicts, in the same order, with ``p``, ``p_holm``, ``p_bh``, the interval at Holm's
        level for each, and the outcome.

    Example:
        >>> v = Verdict("c", "d", "s", "ece", "q", "m", "f", (0.10, 0.11, 0.12, 0.10), 0.01)
        >>> out = adjust([v, replace(v, values=(0.01, -0.02, 0.0, 0.01))])
        >>> [o.outcome for o in out]
        ['supports', 'same']
    """
    from scipy import stats

    tested: list[tuple[int, Verdict, tuple[float, float, float]]] = []
    for i, v in enumerate(family):
        t = _t_stats(v)
        if v.testable and t is not None:
            tested.append((i, v, t))
    p = [_p_value(*t) for _, _, t in tested]
    p_holm, p_bh = holm(p), benjamini_hochberg(p)
    order = sorted(range(len(p)), key=lambda j: p[j])
    rank = {j: r for r, j in enumerate(order)}
    out = list(family)
    for i, v in enumerate(family):
        if v.mean is None:
            out[i] = replace(v, outcome="unknown")
        elif not v.testable:
            out[i] = replace(v, outcome="withheld")
    m = len(p)
    for j, (i, v, (mean, se, df)) in enumerate(tested):
        level = 1 - alpha / (m - rank[j])
        half = float(stats.t.ppf(1 - (1 - level) / 2, df)) * se
        outcome = decide(p_holm[j], mean, v.tolerance, alpha)
        sd = se * math.sqrt(len(v.values)) if v.values_b is None else None
        out[i] = replace(
            v,
            p=p[j],
            p_holm=p_holm[j],
            p_bh=p_bh[j],
            level=level,
            low=mean - half,
            high=mean + half,
            outcome=outcome,
            sd=sd,
        )
    return out
