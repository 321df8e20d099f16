"""Aggregation of run records: cells, variants, means with t-intervals, paired differences.

A *variant* is a ``(method, label_smoothing)`` pair, e.g. ``("ls", 0.1)``; a *cell* is every seed of
one variant on one dataset at one noise rate. Intervals are two-sided 95% Student-t intervals over
seeds, ``mean ± t_{0.975, n-1} · s / sqrt(n)``; with a single seed there is no interval (``None``).
Differences between a variant and the baseline are *paired* by seed (same split, noise, init and
batch order), which removes the seed-to-seed spread that both share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from labelsmooth.study.methods import METHODS

__all__ = [
    "Estimate",
    "Variant",
    "baseline_variant",
    "cell",
    "datasets",
    "estimate",
    "fmt",
    "label",
    "metric",
    "noise_rates",
    "paired_difference",
    "posthoc_variants",
    "smoothing_variants",
    "t_quantile",
    "variants",
]

Variant = tuple[str, float]


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% t-interval half-width (``None`` for a single seed)."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float:
        """Lower end of the interval (the mean when there is no interval)."""
        return self.mean - (self.half or 0.0)

    @property
    def high(self) -> float:
        """Upper end of the interval (the mean when there is no interval)."""
        return self.mean + (self.half or 0.0)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval exists and does not contain 0."""
        return self.half is not None and (self.low > 0 or self.high < 0)


def t_quantile(df: int, level: float = 0.95) -> float:
    """The ``(1 + level) / 2`` quantile of Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(2), 3)
        4.303
    """
    from scipy import stats

    return float(stats.t.ppf((1 + level) / 2, df))


def estimate(values: Iterable[float | None]) -> Estimate | None:
    """Mean and 95% t-interval of the non-missing ``values``; ``None`` if there are none.

    Example:
        >>> e = estimate([0.9, 0.92, 0.94])
        >>> round(e.mean, 3), round(e.half, 3), e.n
        (0.92, 0.05, 3)
    """
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return None
    if v.size == 1:
        return Estimate(float(v[0]), None, 1)
    half = t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Estimate(float(v.mean()), half, int(v.size))


def fmt(e: Estimate | None, digits: int = 3, pct: bool = False) -> str:
    """``"0.969 ± 0.006"`` (or ``"0.969"`` for one seed, ``"–"`` when missing)."""
    if e is None:
        return "–"
    scale, suffix = (100.0, "%") if pct else (1.0, "")
    d = max(digits - 2, 0) if pct else digits
    text = f"{e.mean * scale:.{d}f}{suffix}"
    return text if e.half is None else f"{text} ± {e.half * scale:.{d}f}{suffix}"


def datasets(records: Sequence[dict]) -> list[str]:
    """Dataset names in order of first appearance."""
    return list(dict.fromkeys(r["dataset"] for r in records))


def noise_rates(records: Sequence[dict], dataset: str | None = None) -> list[float]:
    """Sorted distinct noise rates (of one dataset, if given)."""
    return sorted({r["noise_rate"] for r in records if dataset is None or r["dataset"] == dataset})


def _order(v: Variant) -> tuple[int, float]:
    names = list(METHODS)
    return (names.index(v[0]) if v[0] in names else len(names), v[1])


def variants(records: Sequence[dict], dataset: str | None = None) -> list[Variant]:
    """Distinct ``(method, eps)`` pairs, in registry order then by eps."""
    found = {(r["method"], r["label_smoothing"]) for r in records if dataset is None or r["dataset"] == dataset}
    return sorted(found, key=_order)


def baseline_variant(records: Sequence[dict]) -> Variant | None:
    """The baseline's variant (``("ce", 0.0)``) if the records contain it."""
    for v in variants(records):
        if v[0] in METHODS and METHODS[v[0]].baseline:
            return v
    return None


def smoothing_variants(records: Sequence[dict], dataset: str | None = None) -> list[Variant]:
    """Variants that *train* differently from the baseline (no post-hoc step, not the baseline)."""
    return [v for v in variants(records, dataset)
            if v[0] in METHODS and not METHODS[v[0]].baseline and METHODS[v[0]].posthoc is None]


def posthoc_variants(records: Sequence[dict], dataset: str | None = None) -> list[Variant]:
    """Variants that add a post-hoc step to a trained model (temperature scaling)."""
    return [v for v in variants(records, dataset) if v[0] in METHODS and METHODS[v[0]].posthoc is not None]


def label(v: Variant) -> str:
    """Display name: ``"ce"``, ``"ts"``, ``"ls eps=0.1"``."""
    return v[0] if v[1] == 0 else f"{v[0]} eps={v[1]:g}"


def cell(records: Sequence[dict], dataset: str, variant: Variant, noise_rate: float) -> list[dict]:
    """All seeds of one variant on one dataset at one noise rate, sorted by seed."""
    out = [r for r in records if r["dataset"] == dataset and r["method"] == variant[0]
           and r["label_smoothing"] == variant[1] and r["noise_rate"] == noise_rate]
    return sorted(out, key=lambda r: r["seed"])


def metric(records: Sequence[dict], dataset: str, variant: Variant, noise_rate: float, name: str) -> Estimate | None:
    """:func:`estimate` of one metric over the seeds of a cell."""
    return estimate(r.get(name) for r in cell(records, dataset, variant, noise_rate))


def paired_difference(records: Sequence[dict], dataset: str, variant: Variant, reference: Variant,
                      noise_rate: float, name: str, relative: bool = False) -> Estimate | None:
    """Mean over shared seeds of ``variant - reference`` for one metric, with its t-interval.

    Args:
        records: run records.
        dataset: dataset name.
        variant: the variant measured.
        reference: the variant compared against (usually the baseline).
        noise_rate: noise rate of both cells.
        name: metric field of the records.
        relative: divide each difference by the reference value (a relative change).

    Returns:
        The :class:`Estimate` of the difference, or ``None`` if no seed has both.
    """
    ref = {r["seed"]: r.get(name) for r in cell(records, dataset, reference, noise_rate)}
    diffs = []
    for r in cell(records, dataset, variant, noise_rate):
        a, b = r.get(name), ref.get(r["seed"])
        if a is None or b is None:
            continue
        if relative:
            if b == 0:
                continue
            diffs.append((a - b) / abs(b))
        else:
            diffs.append(a - b)
    return estimate(diffs)
