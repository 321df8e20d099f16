"""Aggregation of run records: cells, variants, means with t-intervals, paired differences.

A *variant* is a ``(method, label_smoothing)`` pair, e.g. ``("ls", 0.1)``; a *noise setting* is a
``(kind, level)`` pair, e.g. ``("symmetric", 0.5)`` or ``("none", 0.0)``; a *cell* is every seed of one
variant on one dataset at one noise setting. Intervals are two-sided 95% Student-t intervals over
seeds, ``mean ± t_{0.975, n-1} · s / sqrt(n)``; with a single seed there is no interval (``None``).
Differences between a variant and the baseline are *paired* by seed (same split, noise, init and
batch order), which removes the seed-to-seed spread that both share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelsmooth.study.methods import METHODS

__all__ = [
    "CLEAN",
    "Estimate",
    "Noise",
    "Variant",
    "baseline_variant",
    "cell",
    "datasets",
    "detectable_difference",
    "estimate",
    "excluded",
    "failed_count",
    "fmt",
    "label",
    "metric",
    "noise_label",
    "noise_settings",
    "paired_difference",
    "paired_values",
    "posthoc_variants",
    "reference_variants",
    "scheme_variants",
    "selected_difference",
    "selected_values",
    "smoothing_variants",
    "t_quantile",
    "temperature_at_bound",
    "variants",
    "welch_difference",
]

Variant = tuple[str, float]
Noise = tuple[str, float]
#: One run's record as stored in results.json: JSON, so its values are dynamic (numbers, strings, lists,
#: nested objects, null), read by key.
Record = dict[str, Any]

#: The clean setting.
CLEAN: Noise = ("none", 0.0)


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


def t_quantile(df: float, level: float = 0.95) -> float:
    """The ``(1 + level) / 2`` quantile of Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(2), 3)
        4.303
    """
    from scipy import stats

    return float(stats.t.ppf((1 + level) / 2, df))


def detectable_difference(sd: float, n: int, power: float = 0.8) -> float | None:
    """Smallest true paired difference a two-sided 95% t-test on ``n`` seeds finds with ``power``.

    The usual approximation ``(t_{0.975, n-1} + t_{power, n-1}) * sd / sqrt(n)`` for the spread ``sd``
    of the per-seed differences; ``None`` below 2 seeds.

    Example:
        >>> round(detectable_difference(1.0, 10), 2)
        0.99
    """
    if n < 2:
        return None
    from scipy import stats

    return float((stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


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


def datasets(records: Sequence[Record]) -> list[str]:
    """Dataset names in order of first appearance."""
    return list(dict.fromkeys(r["dataset"] for r in records))


def _noise(r: Record) -> Noise:
    return (r["noise_kind"], float(r["noise_level"]))


def noise_settings(records: Sequence[Record], dataset: str | None = None) -> list[Noise]:
    """Distinct ``(kind, level)`` noise settings (of one dataset, if given): clean first, then by level, kind."""
    found = {_noise(r) for r in records if dataset is None or r["dataset"] == dataset}
    return sorted(found, key=lambda n: (n[1], n[0]))


def noise_label(noise: Noise) -> str:
    """``"clean"`` or ``"symmetric 0.5"`` (the level is a fraction of the breakdown rate)."""
    return "clean" if noise[1] == 0 else f"{noise[0]} {noise[1]:g}"


def _order(v: Variant) -> tuple[int, float]:
    names = list(METHODS)
    return (names.index(v[0]) if v[0] in names else len(names), v[1])


def variants(records: Sequence[Record], dataset: str | None = None) -> list[Variant]:
    """Distinct ``(method, eps)`` pairs, in registry order then by eps."""
    found = {(r["method"], r["label_smoothing"]) for r in records if dataset is None or r["dataset"] == dataset}
    return sorted(found, key=_order)


def baseline_variant(records: Sequence[Record]) -> Variant | None:
    """The baseline's variant (``("ce", 0.0)``) if the records contain it."""
    for v in variants(records):
        if v[0] in METHODS and METHODS[v[0]].baseline:
            return v
    return None


def _role(records: Sequence[Record], dataset: str | None, role: str) -> list[Variant]:
    return [v for v in variants(records, dataset) if v[0] in METHODS and METHODS[v[0]].role == role]


def smoothing_variants(records: Sequence[Record], dataset: str | None = None) -> list[Variant]:
    """The label-smoothing variants (role ``smoothing``): what the four claims are about."""
    return _role(records, dataset, "smoothing")


def scheme_variants(records: Sequence[Record], dataset: str | None = None) -> list[Variant]:
    """Other smoothing schemes (role ``variant``: negative and online label smoothing)."""
    return _role(records, dataset, "variant")


def reference_variants(records: Sequence[Record], dataset: str | None = None) -> list[Variant]:
    """Other trained calibration baselines (role ``reference``: focal loss)."""
    return _role(records, dataset, "reference")


def posthoc_variants(records: Sequence[Record], dataset: str | None = None) -> list[Variant]:
    """Variants that add a post-hoc step to a trained model (temperature scaling)."""
    return _role(records, dataset, "posthoc")


def label(v: Variant) -> str:
    """Display name: ``"ce"``, ``"ts"``, ``"ls eps=0.1"``."""
    return v[0] if v[1] == 0 else f"{v[0]} eps={v[1]:g}"


def excluded(r: Record) -> str | None:
    """Why a record enters no mean: its training diverged or collapsed, or its temperature fit ended at
    the end of its range (a separable validation set); ``None`` for a usable record."""
    if r.get("failure"):
        return str(r["failure"])
    if r.get("temperature_at_bound"):
        return "temperature at the end of its range"
    return None


def cell(
    records: Sequence[Record],
    dataset: str,
    variant: Variant,
    noise: Noise,
    train_fraction: float = 1.0,
    include_failed: bool = False,
) -> list[Record]:
    """All seeds of one variant on one dataset at one noise setting (and training fraction), sorted by seed.

    Records that :func:`excluded` names (diverged or collapsed trainings, temperatures at their bound)
    are left out unless ``include_failed``.
    """
    out = [
        r
        for r in records
        if r["dataset"] == dataset
        and r["method"] == variant[0]
        and r["label_smoothing"] == variant[1]
        and _noise(r) == tuple(noise)
        and float(r.get("train_fraction", 1.0)) == train_fraction
        and (include_failed or excluded(r) is None)
    ]
    return sorted(out, key=lambda r: r["seed"])


def failed_count(records: Sequence[Record], dataset: str, noise: Noise) -> int:
    """How many trainings of one dataset and noise setting diverged or collapsed (``failure`` set).

    A temperature fit at its bound is left out too (:func:`excluded`) but is no failed training: the
    text that uses the temperature says so itself (:func:`temperature_at_bound`).
    """
    return sum(1 for r in records if r["dataset"] == dataset and _noise(r) == tuple(noise) and r.get("failure"))


def temperature_at_bound(cell_records: Sequence[Record]) -> int:
    """How many runs of a cell (see :func:`cell`) ended with the fitted temperature at the end of its
    search range: a separable validation set, where the fit says nothing about calibration."""
    return sum(bool(r.get("temperature_at_bound")) for r in cell_records)


def metric(records: Sequence[Record], dataset: str, variant: Variant, noise: Noise, name: str) -> Estimate | None:
    """:func:`estimate` of one metric over the seeds of a cell."""
    return estimate(r.get(name) for r in cell(records, dataset, variant, noise))


def welch_difference(a: Estimate | None, sd_a: float, b: Estimate | None, sd_b: float) -> Estimate | None:
    """``a - b`` for two independent means with a Welch 95% interval (``None`` below 2 values each).

    Args:
        a, b: the two means (their ``n`` is used).
        sd_a, sd_b: the standard deviations of the values behind them.

    Example:
        >>> d = welch_difference(Estimate(1.0, 0.1, 10), 0.1, Estimate(0.5, 0.1, 10), 0.1)
        >>> round(d.mean, 3), round(d.half, 3)
        (0.5, 0.094)
    """
    if a is None or b is None or a.n < 2 or b.n < 2:
        return None
    va, vb = sd_a**2 / a.n, sd_b**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(a.mean - b.mean, 0.0, a.n + b.n)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return Estimate(a.mean - b.mean, t_quantile(df) * se, a.n + b.n)


def selected_values(
    records: Sequence[Record],
    dataset: str,
    candidates: Sequence[Variant],
    reference: Variant,
    noise: Noise,
    select_on: str,
    higher_is_better: bool,
    name: str,
) -> tuple[list[float], dict[Variant, int]]:
    """Per seed, pick the candidate with the best *validation* metric and pair its metric with the reference.

    The selection reads only ``select_on`` (a ``val_*`` field): the test split plays no part in it.

    Args:
        records: run records.
        dataset: dataset name.
        candidates: the variants to choose from (e.g. every eps).
        reference: the variant compared against.
        noise: the noise setting.
        select_on: validation field that decides, e.g. ``"val_accuracy"`` or ``"val_ece"``.
        higher_is_better: direction of ``select_on``.
        name: the (test) metric compared.

    Returns:
        ``(per-seed differences selected - reference, {variant: times selected})``.
    """
    ref = {r["seed"]: r.get(name) for r in cell(records, dataset, reference, noise)}
    by_seed: dict[int, list[tuple[Variant, Record]]] = {}
    for v in candidates:
        for r in cell(records, dataset, v, noise):
            if r.get(select_on) is not None:
                by_seed.setdefault(r["seed"], []).append((v, r))
    sign = -1.0 if higher_is_better else 1.0
    diffs: list[float] = []
    picked: dict[Variant, int] = {}
    for seed, options in sorted(by_seed.items()):
        # min() keeps the first of equal candidates (the smallest eps): no test value is consulted.
        v, r = min(options, key=lambda o: sign * o[1][select_on])
        if r.get(name) is None or ref.get(seed) is None:
            continue
        picked[v] = picked.get(v, 0) + 1
        diffs.append(r[name] - ref[seed])
    return diffs, picked


def selected_difference(
    records: Sequence[Record],
    dataset: str,
    candidates: Sequence[Variant],
    reference: Variant,
    noise: Noise,
    select_on: str,
    higher_is_better: bool,
    name: str,
) -> tuple[Estimate | None, dict[Variant, int]]:
    """:func:`selected_values` summarised: ``(Estimate over seeds, {variant: times selected})``."""
    diffs, picked = selected_values(records, dataset, candidates, reference, noise, select_on, higher_is_better, name)
    return estimate(diffs), picked


def paired_values(
    records: Sequence[Record], dataset: str, variant: Variant, reference: Variant, noise: Noise, name: str
) -> list[float]:
    """The per-seed differences ``variant - reference`` behind :func:`paired_difference`."""
    ref = {r["seed"]: r.get(name) for r in cell(records, dataset, reference, noise)}
    return [
        r[name] - ref[r["seed"]]
        for r in cell(records, dataset, variant, noise)
        if r.get(name) is not None and ref.get(r["seed"]) is not None
    ]


def paired_difference(
    records: Sequence[Record],
    dataset: str,
    variant: Variant,
    reference: Variant,
    noise: Noise,
    name: str,
    relative: bool = False,
) -> Estimate | None:
    """Mean over shared seeds of ``variant - reference`` for one metric, with its t-interval.

    Args:
        records: run records.
        dataset: dataset name.
        variant: the variant measured.
        reference: the variant compared against (usually the baseline).
        noise: noise setting of both cells.
        name: metric field of the records.
        relative: divide each difference by the reference value (a relative change).

    Returns:
        The :class:`Estimate` of the difference, or ``None`` if no seed has both.
    """
    ref = {r["seed"]: r.get(name) for r in cell(records, dataset, reference, noise)}
    diffs = []
    for r in cell(records, dataset, variant, noise):
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
