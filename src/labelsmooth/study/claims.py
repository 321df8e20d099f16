"""The claim paragraphs: what the numbers say about each of the four claims made for label smoothing.

Every sentence is generated from the run records, one short paragraph per dataset (and noise setting)
per claim, each with its numbers, its n and its interval. The rules:

* **The test split is used once.** Every choice (the eps set against ce, the smoothed model set
  against temperature scaling, the early-stopping step, the temperature) is made on the validation
  split; the test split only scores the chosen models.
* **A verdict needs >= 3 seeds** (:data:`MIN_SEEDS`). Below that, or in a ``--quick`` smoke test, the
  numbers are shown and the verdict is withheld, and the text says so.
* A difference is called better or worse only when its 95% paired t-interval over seeds excludes
  zero **and** it is at least the practical tolerance: :data:`TOLERANCE`, raised to 2 / n_test for
  metrics counted in test examples (one example of a 114-example test set is 0.0088).

Claims (keys of :data:`CLAIMS`): ``noise``, ``overfitting``, ``calibration``, ``binary``. The extra key
``statistics`` says how many comparisons the report makes and what difference it could detect.
"""

from __future__ import annotations

import statistics as _st
from collections.abc import Sequence
from dataclasses import dataclass, field

from labelsmooth.study import stats as S
from labelsmooth.study.methods import METHODS
from labelsmooth.study.stats import CLEAN, Estimate, Noise, Variant

__all__ = [
    "CLAIMS",
    "HEADLINE_EPS",
    "MIN_SEEDS",
    "TOLERANCE",
    "binary_comparison",
    "claim_paragraphs",
    "effect_sizes",
    "tolerance",
    "verdict",
]

#: Claim key -> the claim as usually stated.
CLAIMS: dict[str, str] = {
    "noise": "Label smoothing makes training robust to noisy labels",
    "overfitting": "Label smoothing reduces overfitting",
    "calibration": "Label smoothing improves calibration",
    "binary": "Label smoothing has less effect in binary classification",
}

#: Smallest difference called a change, per metric (absolute).
TOLERANCE: dict[str, float] = {
    "test_accuracy": 0.005,
    "ece": 0.005,
    "ece_quantile": 0.005,
    "nll": 0.01,
    "train_test_gap": 0.005,
    "memorized_fraction": 0.05,
    "nll_rise": 0.01,
}

#: Metrics counted in test examples: their tolerance is at least 2 / n_test.
_PER_EXAMPLE = {"test_accuracy", "ece", "ece_quantile", "train_test_gap"}

#: Fewer seeds than this: no verdict.
MIN_SEEDS = 3

#: The pre-specified smoothing value of the headline comparisons (the grid's value closest to it).
HEADLINE_EPS = 0.1

#: |mean confidence - accuracy| below this is called "close to calibrated on average".
_CONF_TOL = 0.02

_WORDS = ("better", "worse", "same")


def tolerance(metric: str, n_test: int | None = None) -> float:
    """The practical tolerance of ``metric``: :data:`TOLERANCE`, at least 2 / n_test for per-example metrics.

    Example:
        >>> tolerance("test_accuracy", 114) == 2 / 114, tolerance("test_accuracy", 10000)
        (True, 0.005)
    """
    base = TOLERANCE[metric]
    if n_test and metric.removeprefix("es_") in _PER_EXAMPLE:
        return max(base, 2.0 / n_test)
    return base


def verdict(
    diff: Estimate | None, metric: str, lower_is_better: bool, n_test: int | None = None, smoke: bool = False
) -> str:
    """Classify a paired difference (variant - reference).

    Args:
        diff: the paired difference over seeds, or ``None``.
        metric: key of :data:`TOLERANCE` (an ``es_`` prefix is ignored).
        lower_is_better: True for ECE, NLL, gap, memorisation; False for accuracy.
        n_test: test-set size (raises the tolerance to 2 / n_test for per-example metrics).
        smoke: a ``--quick`` smoke test: never a verdict.

    Returns:
        ``"better"``, ``"worse"``, ``"same"`` (no clear difference), ``"withheld"`` (fewer than
        :data:`MIN_SEEDS` seeds, or a smoke test) or ``"unknown"`` (nothing to compare).

    Example:
        >>> from labelsmooth.study.stats import Estimate
        >>> verdict(Estimate(0.1, 0.02, 3), "ece", lower_is_better=True)
        'worse'
        >>> verdict(Estimate(0.1, 0.2, 3), "ece", lower_is_better=True)
        'same'
        >>> verdict(Estimate(0.1, None, 1), "ece", lower_is_better=True)
        'withheld'
    """
    if diff is None:
        return "unknown"
    if smoke or diff.n < MIN_SEEDS or diff.half is None:
        return "withheld"
    if abs(diff.mean) < tolerance(metric.removeprefix("es_"), n_test) or not diff.excludes_zero:
        return "same"
    improved = diff.mean < 0 if lower_is_better else diff.mean > 0
    return "better" if improved else "worse"


# ----------------------------------------------------------------------------- formatting


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ci(d: Estimate | None, pct: bool = False) -> str:
    """``+0.012 (95% CI +0.004 to +0.020)``; percentages in percentage points when ``pct``."""
    if d is None:
        return "n/a (no paired seeds)"
    s, u = (100.0, " pp") if pct else (1.0, "")
    dd = 1 if pct else 3
    if d.half is None:
        return f"{d.mean * s:+.{dd}f}{u} (one seed, no interval)"
    return f"{d.mean * s:+.{dd}f}{u} (95% CI {d.low * s:+.{dd}f} to {d.high * s:+.{dd}f})"


def _headline(variants: Sequence[Variant]) -> Variant | None:
    # The smoothing value closest to 0.1 (the usual default); on ties the smaller one.
    if not variants:
        return None
    return min(variants, key=lambda v: (abs(v[1] - HEADLINE_EPS), v[1]))


def _confidence(conf: float | None, acc: float | None) -> str:
    if conf is None or acc is None:
        return "of unknown confidence"
    if conf - acc > _CONF_TOL:
        return f"over-confident (mean confidence {conf:.3f} > accuracy {acc:.3f})"
    if acc - conf > _CONF_TOL:
        return f"under-confident (mean confidence {conf:.3f} < accuracy {acc:.3f})"
    return f"close to calibrated on average (mean confidence {conf:.3f}, accuracy {acc:.3f})"


def _picked(picked: dict[Variant, int]) -> str:
    return ", ".join(f"{S.label(v)} {k}x" for v, k in sorted(picked.items(), key=lambda x: -x[1]))


# ----------------------------------------------------------------------------- the writer


@dataclass
class _Writer:
    """Holds the records, the smoke flag and the ledger of every verdict made (for the statistics note)."""

    records: list[S.Record]
    smoke: bool = False
    ledger: list[tuple[str, str, str]] = field(default_factory=list)  # (claim, metric, verdict)
    spreads: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # metric -> (sd, n)

    @property
    def base(self) -> Variant:
        """The baseline's variant; :func:`claim_paragraphs` writes no claim without one."""
        v = S.baseline_variant(self.records)
        assert v is not None
        return v

    def mean(self, ds: str, v: Variant, noise: Noise, name: str) -> float | None:
        e = S.metric(self.records, ds, v, noise, name)
        return None if e is None else e.mean

    def n_seeds(self, ds: str, v: Variant, noise: Noise) -> int:
        return len(S.cell(self.records, ds, v, noise))

    def n_test(self, ds: str) -> int | None:
        sizes = [r["splits"]["n_test"] for r in self.records if r["dataset"] == ds and r.get("splits")]
        return min(sizes) if sizes else None

    def judge(
        self,
        claim: str,
        diff: Estimate | None,
        metric: str,
        lower_is_better: bool,
        ds: str,
        values: Sequence[float] | None = None,
    ) -> str:
        v = verdict(diff, metric, lower_is_better, self.n_test(ds), self.smoke)
        if v in _WORDS:
            self.ledger.append((claim, metric, v))
            if values is not None and len(values) >= 2:
                self.spreads.setdefault(metric.removeprefix("es_"), []).append((_st.stdev(values), len(values)))
        return v

    def paired(
        self, claim: str, ds: str, v: Variant, ref: Variant, noise: Noise, name: str, lower_is_better: bool
    ) -> tuple[Estimate | None, str]:
        d = S.paired_difference(self.records, ds, v, ref, noise, name)
        vals = S.paired_values(self.records, ds, v, ref, noise, name)
        return d, self.judge(claim, d, name, lower_is_better, ds, vals)

    def selected(
        self,
        claim: str,
        ds: str,
        candidates: Sequence[Variant],
        ref: Variant,
        noise: Noise,
        select_on: str,
        higher_is_better: bool,
        name: str,
        lower_is_better: bool,
    ) -> tuple[Estimate | None, dict[Variant, int], str]:
        """The candidate chosen per seed on ``select_on`` (validation) against ``ref``: estimate, picks, verdict."""
        vals, picked = S.selected_values(self.records, ds, candidates, ref, noise, select_on, higher_is_better, name)
        d = S.estimate(vals)
        return d, picked, self.judge(claim, d, name, lower_is_better, ds, vals)

    def basis(self, ds: str, v: Variant, noise: Noise, chosen: str = "") -> str:
        n = self.n_seeds(ds, v, noise)
        nt = self.n_test(ds)
        test = f"{nt} test examples each" if nt else "test examples"
        why = (
            " Verdicts withheld: --quick is a smoke test."
            if self.smoke
            else f" Verdicts withheld: fewer than {MIN_SEEDS} seeds."
            if n < MIN_SEEDS
            else ""
        )
        return (
            f" [n = {n} seed(s) x {test}; intervals are 95% t-intervals over seeds of paired differences; "
            f"{chosen or 'nothing was chosen on the test split'}; the test split only scored the models.{why}]"
        )


def _say(v: str, better: str, worse: str, same: str = "no clear difference") -> str:
    return {"better": better, "worse": worse, "same": same, "withheld": "no verdict", "unknown": "not comparable"}[v]


# ----------------------------------------------------------------------------- claim 1: noisy labels


def _noise(w: _Writer) -> list[str]:
    base = w.base
    out = []
    for ds in S.datasets(w.records):
        smooth = S.smoothing_variants(w.records, ds)
        for noise in [n for n in S.noise_settings(w.records, ds) if n[1] > 0]:
            acc = w.mean(ds, base, noise, "test_accuracy")
            if acc is None:
                continue
            rate = w.mean(ds, base, noise, "noise_rate")
            acc_es = w.mean(ds, base, noise, "es_test_accuracy")
            acc0 = w.mean(ds, base, CLEAN, "test_accuracy")
            text = (
                f"{ds}, {noise[0]} noise at level {noise[1]:g} of the breakdown rate ({_pct(rate)} of training "
                f"labels flipped): ce's test accuracy was {acc:.3f} at the last step"
                + (f" ({acc0:.3f} with clean labels)" if acc0 is not None else "")
                + f" and {_f(acc_es)} with early stopping on validation accuracy."
            )
            es_vals = [r["es_test_accuracy"] - r["test_accuracy"] for r in S.cell(w.records, ds, base, noise)]
            d_es = S.estimate(es_vals)
            v_es = w.judge("noise", d_es, "test_accuracy", False, ds, es_vals)
            text += f" Early stopping changed ce's accuracy by {_ci(d_es)}: {_say(v_es, 'it helped', 'it hurt')}."
            if not smooth:
                out.append(text + " No smoothed model was trained." + w.basis(ds, base, noise))
                continue
            d, picked, v = w.selected("noise", ds, smooth, base, noise, "val_accuracy", True, "test_accuracy", False)
            text += (
                f" Smoothing with eps chosen per seed by validation accuracy ({_picked(picked)}) changed the "
                f"last-step test accuracy by {_ci(d)} against ce: "
                f"{_say(v, 'smoothing helped', 'smoothing hurt', 'no clear difference')}."
            )

            # Early-stopped smoothing vs early-stopped ce: does smoothing add anything to early stopping?
            d2, _, v2 = w.selected("noise", ds, smooth, base, noise, "es_val_accuracy", True, "es_test_accuracy", False)
            text += (
                f" With early stopping on both, the difference was {_ci(d2)} "
                f"({_say(v2, 'smoothing helped', 'smoothing hurt')})."
            )
            text += _schemes_vs_ce(w, ds, base, noise)
            mem0 = w.mean(ds, base, noise, "memorized_fraction")
            cor0 = w.mean(ds, base, noise, "flipped_corrected_fraction")
            if mem0 is not None:
                dm, _, vm = w.selected(
                    "noise", ds, smooth, base, noise, "val_accuracy", True, "memorized_fraction", True
                )
                third = "" if _k(w, ds) <= 2 else ", the rest as a third class"
                text += (
                    f" At the last step ce predicted {_pct(mem0)} of the flipped training labels as the flipped "
                    f"label (memorised) and {_pct(cor0)} as their true class{third}; the validation-chosen "
                    f"smoothing changed the memorised share by {_ci(dm, pct=True)}: "
                    f"{_say(vm, 'less memorisation', 'more memorisation')}."
                )
                if mem0 < 0.5:
                    text += " With under half of the flips memorised by ce, this budget left little to prevent."
            out.append(text + w.basis(ds, base, noise, "eps and the early-stopping step were chosen on validation"))
    return out or ["Not measured: no run with noisy training labels."]


def _schemes_vs_ce(w: _Writer, ds: str, base: Variant, noise: Noise) -> str:
    """One sentence per other smoothing scheme (negative, online smoothing) against ce at the last step,
    its eps chosen per seed on validation accuracy like uniform smoothing's."""
    text = ""
    for method in dict.fromkeys(v[0] for v in S.scheme_variants(w.records, ds)):
        cands = [v for v in S.scheme_variants(w.records, ds) if v[0] == method]
        if not any(S.cell(w.records, ds, v, noise) for v in cands):
            continue
        d, picked, v = w.selected("noise", ds, cands, base, noise, "val_accuracy", True, "test_accuracy", False)
        name = METHODS[method].label.split(" (")[0].capitalize()
        text += (
            f" {name} ({_picked(picked)}, chosen per seed on validation accuracy) changed the last-step "
            f"test accuracy by {_ci(d)} against ce: {_say(v, 'it helped', 'it hurt', 'no clear difference')}."
        )
    return text


def _k(w: _Writer, ds: str) -> int:
    return next((r["num_classes"] for r in w.records if r["dataset"] == ds), 0)


# ----------------------------------------------------------------------------- claim 2: overfitting


def _val_nll_rise(r: S.Record) -> float | None:
    c = r.get("curves") or {}
    vals = c.get("val_nll") or []
    return vals[-1] - min(vals) if vals else None


def _overfitting(w: _Writer) -> list[str]:
    base = w.base
    out = []
    for ds in S.datasets(w.records):
        head = _headline(S.smoothing_variants(w.records, ds))
        for noise in S.noise_settings(w.records, ds):
            if noise != CLEAN and noise[0] != S.noise_settings(w.records, ds)[-1][0]:
                continue  # one noisy kind is enough for this claim (the last in the grid)
            gap0 = w.mean(ds, base, noise, "train_test_gap")
            if gap0 is None:
                continue
            where = "clean labels" if noise == CLEAN else f"{S.noise_label(noise)} noise"
            text = (
                f"{ds}, {where}: ce's train-test gap (accuracy on the clean training labels minus test "
                f"accuracy) was {gap0:.3f} at the last step."
            )
            if head is None:
                out.append(text + " No smoothed model was trained." + w.basis(ds, base, noise))
                continue
            d, v = w.paired("overfitting", ds, head, base, noise, "train_test_gap", True)
            gap_h = w.mean(ds, head, noise, "train_test_gap")
            text += (
                f" With {S.label(head)} it was {_f(gap_h)}, a difference of {_ci(d)}: "
                f"{_say(v, 'smaller with smoothing', 'larger with smoothing')}."
            )
            if gap0 < 0:
                text += (
                    " A negative gap means the model fitted flipped labels: it is wrong on those training "
                    "examples' clean labels more often than on the test set."
                )
            rises: dict[Variant, dict[int, float | None]] = {}
            for var in (base, head):
                rises[var] = {r["seed"]: _val_nll_rise(r) for r in S.cell(w.records, ds, var, noise)}
            vals = []
            for s, rise_h in rises[head].items():
                rise_b = rises[base].get(s)
                if rise_h is not None and rise_b is not None:
                    vals.append(rise_h - rise_b)
            if vals:
                dr = S.estimate(vals)
                vr = w.judge("overfitting", dr, "nll_rise", True, ds, vals)
                e0, eh = S.estimate(rises[base].values()), S.estimate(rises[head].values())
                assert e0 is not None and eh is not None  # vals is not empty: both have a value
                r0, rh = e0.mean, eh.mean
                text += (
                    f" The validation NLL rose after its minimum by {r0:.3f} (ce) and {rh:.3f} "
                    f"({S.label(head)}); the paired difference was {_ci(dr)}: "
                    f"{_say(vr, 'a smaller rise with smoothing', 'a larger rise with smoothing')}."
                )
            out.append(text + w.basis(ds, base, noise, f"eps = {head[1]:g} was fixed in advance"))
    return out or ["Not measured: no runs with the baseline."]


# ----------------------------------------------------------------------------- claim 3: calibration


def _calibration(w: _Writer) -> list[str]:
    base = w.base
    out = []
    for ds in S.datasets(w.records):
        noise = S.noise_settings(w.records, ds)[0]
        ece0 = w.mean(ds, base, noise, "ece")
        if ece0 is None:
            continue
        smooth = S.smoothing_variants(w.records, ds)
        confidence = _confidence(w.mean(ds, base, noise, "mean_confidence"), w.mean(ds, base, noise, "test_accuracy"))
        text = (
            f"{ds}, {S.noise_label(noise)} labels: ce had test ECE {ece0:.3f} (equal-mass bins "
            f"{_f(w.mean(ds, base, noise, 'ece_quantile'))}) and NLL {_f(w.mean(ds, base, noise, 'nll'))}, "
            f"and was {confidence}."
        )
        head = _headline(smooth)
        if head is not None:
            d, v = w.paired("calibration", ds, head, base, noise, "ece", True)
            dq, vq = w.paired("calibration", ds, head, base, noise, "ece_quantile", True)
            dn, vn = w.paired("calibration", ds, head, base, noise, "nll", True)
            text += (
                f" {S.label(head)} (fixed in advance) changed ECE by {_ci(d)} "
                f"({_say(v, 'better calibrated', 'worse calibrated')}; equal-mass bins {_ci(dq)}, "
                f"{_say(vq, 'better', 'worse')}) and NLL by {_ci(dn)} ({_say(vn, 'better', 'worse')}); it was "
                f"{_confidence(w.mean(ds, head, noise, 'mean_confidence'), w.mean(ds, head, noise, 'test_accuracy'))}."
            )
            de, ve = w.paired("calibration", ds, head, base, noise, "es_ece", True)
            text += (
                f" Early-stopped (both models at their best validation accuracy): ECE "
                f"{_f(w.mean(ds, base, noise, 'es_ece'))} (ce) vs {_f(w.mean(ds, head, noise, 'es_ece'))}, "
                f"{_ci(de)} ({_say(ve, 'better', 'worse')})."
            )
            grid = "; ".join(f"{S.label(sv)} {_f(w.mean(ds, sv, noise, 'ece'))}" for sv in smooth)
            text += f" ECE over the eps grid: {grid}."
        for rv in S.reference_variants(w.records, ds):
            d, v = w.paired("calibration", ds, rv, base, noise, "ece", True)
            text += f" {S.label(rv)} changed ECE by {_ci(d)} against ce ({_say(v, 'better', 'worse')})."
        ts = ("ts", 0.0) if ("ts", 0.0) in S.posthoc_variants(w.records, ds) else None
        if ts is not None:
            temp = w.mean(ds, ts, noise, "temperature")
            dn, vn = w.paired("calibration", ds, ts, base, noise, "nll", True)
            text += (
                f" Temperature scaling of ce (T = {_f(temp, 2)}, fitted on validation) reached ECE "
                f"{_f(w.mean(ds, ts, noise, 'ece'))} and changed NLL by {_ci(dn)} against plain ce."
            )
            rises = S.paired_values(w.records, ds, ts, base, noise, "nll")
            hurt = [x for x in rises if x > TOLERANCE["nll"]]
            if dn is not None and (vn == "worse" or dn.mean > TOLERANCE["nll"] or hurt):
                # Flagged even without a clear mean: one seed where T ruins the NLL is a failure a user meets.
                text += (
                    f" FLAG: temperature scaling made the test NLL worse than plain ce in {len(hurt)} of "
                    f"{len(rises)} seeds (by up to {max(hurt, default=0.0):.3f}), although it minimises the "
                    "validation NLL: the temperature fitted on this validation split does not always transfer."
                )
                bound = S.temperature_at_bound(S.cell(w.records, ds, ts, noise))
                if bound:
                    text += (
                        f" In {bound} seed(s) T hit the end of its search range: the model separated the "
                        "validation set perfectly, so the NLL kept falling as T shrank."
                    )
            if smooth:
                d, picked, v = w.selected("calibration", ds, smooth, ts, noise, "val_ece", False, "ece", True)
                text += (
                    f" The smoothed model with the lowest validation ECE per seed ({_picked(picked)}) against "
                    f"temperature scaling: ECE {_ci(d)} ({_say(v, 'smoothing better', 'temperature scaling better')})."
                )
            lsts = [pv for pv in S.posthoc_variants(w.records, ds) if pv[0] == "ls+ts"]
            if lsts:
                d, picked, v = w.selected("calibration", ds, lsts, ts, noise, "val_ece", False, "ece", True)
                text += (
                    f" Smoothing followed by temperature scaling (eps chosen on validation ECE) against "
                    f"temperature scaling alone: ECE {_ci(d)} ({_say(v, 'better', 'worse')})."
                )
            noisy = [n for n in S.noise_settings(w.records, ds) if n[1] > 0]
            tsn = ("ts-noisyval", 0.0)
            if noisy and S.cell(w.records, ds, tsn, noisy[0]):
                nz = noisy[0]
                d, v = w.paired("calibration", ds, tsn, ts, nz, "ece", True)
                text += (
                    f" With {S.noise_label(nz)} noise, "
                    f"T fitted on clean validation labels gave ECE {_f(w.mean(ds, ts, nz, 'ece'))}, on noisy "
                    f"validation labels (what a practitioner would have) {_f(w.mean(ds, tsn, nz, 'ece'))}: "
                    f"{_ci(d)}."
                )
        out.append(
            text
            + w.basis(
                ds, base, noise, "the compared eps, the temperature and every 'best' model were chosen on validation"
            )
        )
    return out or ["Not measured: no runs with the baseline."]


# ----------------------------------------------------------------------------- claim 4: binary


def effect_sizes(records: Sequence[S.Record], variant: Variant, noise: Noise) -> dict[str, dict[str, Estimate | None]]:
    """Signed paired effects of ``variant`` vs the baseline per dataset: ΔECE, Δaccuracy, ΔNLL.

    Args:
        records: run records.
        variant: the smoothing variant.
        noise: the noise setting.

    Returns:
        ``{dataset: {"ece": Estimate, "test_accuracy": Estimate, "nll": Estimate}}``.
    """
    base = S.baseline_variant(records)
    if base is None:
        return {}
    return {
        ds: {m: S.paired_difference(records, ds, variant, base, noise, m) for m in ("ece", "test_accuracy", "nll")}
        for ds in S.datasets(records)
    }


@dataclass(frozen=True)
class BinaryComparison:
    """Claim 4 on one pair of tasks sharing their data: signed effects and the interval on their difference.

    ``reduction`` is ``s * (effect_multi - effect_binary)`` with ``s`` the sign of the multiclass
    effect: positive when the binary effect is smaller in the multiclass effect's direction.
    """

    metric: str
    binary: Estimate | None
    multi: Estimate | None
    reduction: Estimate | None
    verdict: str


def binary_comparison(
    records: Sequence[S.Record],
    binary_ds: str,
    multi_ds: str,
    variant: Variant,
    metric: str,
    noise: Noise = CLEAN,
    smoke: bool = False,
) -> BinaryComparison:
    """Compare the signed effect of ``variant`` (vs ce, paired by seed) on a binary task and a K-class task.

    The two tasks are trained on different models and splits, so their effects are independent: the
    interval on their difference is Welch's.

    Args:
        records: run records.
        binary_ds: the binary task (e.g. ``digits:3v8``).
        multi_ds: the K-class task on the same data (``digits``).
        variant: the smoothing variant.
        metric: ``"ece"``, ``"test_accuracy"`` or ``"nll"``.
        noise: the noise setting.
        smoke: a smoke test (no verdict).

    Returns:
        A :class:`BinaryComparison`; its verdict is ``"smaller"``, ``"larger"``, ``"opposite"``,
        ``"same"`` (no clear difference), ``"no multiclass effect"``, ``"withheld"`` or ``"unknown"``.
    """
    base = S.baseline_variant(records)
    vb = S.paired_values(records, binary_ds, variant, base, noise, metric) if base else []
    vm = S.paired_values(records, multi_ds, variant, base, noise, metric) if base else []
    eb, em = S.estimate(vb), S.estimate(vm)
    if eb is None or em is None:
        return BinaryComparison(metric, eb, em, None, "unknown")
    if smoke or min(len(vb), len(vm)) < MIN_SEEDS:
        return BinaryComparison(metric, eb, em, None, "withheld")
    s = 1.0 if em.mean >= 0 else -1.0
    red = S.welch_difference(
        S.estimate([s * x for x in vm]), _st.stdev(vm), S.estimate([s * x for x in vb]), _st.stdev(vb)
    )
    tol = TOLERANCE[metric]
    if not em.excludes_zero or abs(em.mean) < tol:
        v = "no multiclass effect"
    elif eb.excludes_zero and s * eb.mean < 0 and abs(eb.mean) >= tol:
        v = "opposite"
    elif red is not None and red.excludes_zero and abs(red.mean) >= tol:
        v = "smaller" if red.mean > 0 else "larger"
    else:
        v = "same"
    return BinaryComparison(metric, eb, em, red, v)


_BIN_WORDS = {
    "smaller": "smaller in the binary task",
    "larger": "LARGER in the binary task",
    "opposite": "in the OPPOSITE direction in the binary task",
    "same": "no clear difference between the tasks",
    "no multiclass effect": "no clear effect on the 10-class task, so nothing to be smaller than",
    "withheld": "no verdict",
    "unknown": "not comparable",
}


def _binary(w: _Writer) -> list[str]:
    base = w.base
    dsets = S.datasets(w.records)
    parents = {r["dataset"]: r.get("parent_dataset") for r in w.records}
    pairs = [(d, p) for d in dsets if (p := parents.get(d)) and p in dsets]
    out = []
    for bds, mds in pairs:
        shared = set(S.smoothing_variants(w.records, bds)) & set(S.smoothing_variants(w.records, mds))
        head = _headline(sorted(shared))
        if head is None:
            continue
        k = _k(w, mds)
        parts = []
        for metric, title in (("ece", "ECE"), ("test_accuracy", "test accuracy"), ("nll", "NLL")):
            c = binary_comparison(w.records, bds, mds, head, metric, CLEAN, w.smoke)
            if c.verdict in ("smaller", "larger", "opposite", "same"):
                w.ledger.append(("binary", metric, c.verdict))
            red = (
                ""
                if c.reduction is None
                else f"; |multiclass| minus binary effect in that direction {_ci(c.reduction)}"
            )
            parts.append(f"{title}: binary {_ci(c.binary)}, {k}-class {_ci(c.multi)}{red}: {_BIN_WORDS[c.verdict]}")
        eps = head[1]
        text = (
            f"{bds} vs {mds} (the same data as one binary and one {k}-class task), clean labels, {S.label(head)} "
            f"against ce, signed effects: " + "; ".join(parts) + ". "
            f"Part of any difference is arithmetic: eps = {eps:g} caps the smoothed target at 1 - eps/2 = "
            f"{1 - eps / 2:.3f} for one logit and at 1 - eps + eps/K = {1 - eps + eps / k:.3f} for K = {k}."
        )
        out.append(text + w.basis(bds, base, CLEAN, f"eps = {eps:g} was fixed in advance"))
    others = [d for d in dsets if d not in parents or not parents.get(d)]
    lone = [d for d in others if any(r["binary"] for r in w.records if r["dataset"] == d)]
    for ds in lone:
        head = _headline(S.smoothing_variants(w.records, ds))
        if head is None or base is None:
            continue
        d = S.paired_difference(w.records, ds, head, base, CLEAN, "ece")
        out.append(
            f"{ds} (binary, no K-class version of the same data): {S.label(head)} changed ECE by {_ci(d)}; "
            "set beside other datasets it compares tasks, not only the number of classes, so it is shown "
            "but not used for this claim." + w.basis(ds, base, CLEAN, f"eps = {head[1]:g} was fixed in advance")
        )
    if not pairs:
        out.insert(
            0,
            "Not measured within one dataset: add a binary task carved from a K-class dataset next to it, "
            "e.g. --datasets digits,digits:3v8.",
        )
    return out


# ----------------------------------------------------------------------------- statistics note


def _statistics(w: _Writer) -> str:
    seeds = sorted(
        {
            len(S.cell(w.records, ds, v, n))
            for ds in S.datasets(w.records)
            for v in S.variants(w.records, ds)
            for n in S.noise_settings(w.records, ds)
        }
        - {0}
    )
    n_seeds = seeds[-1] if seeds else 0
    m = len(w.ledger)
    clear = sum(1 for _, _, v in w.ledger if v in ("better", "worse", "smaller", "larger", "opposite"))
    text = (
        f"This report makes {m} comparisons with a verdict ({clear} of them clear). Each uses a 95% interval, "
        f"so if nothing differed about {0.05 * m:.1f} would still come out clear by chance; no correction for "
        "multiplicity is applied, so read single clear verdicts near the tolerance with care."
    )
    if w.smoke:
        text = (
            "This is a --quick smoke test: it checks that the study runs end to end, with a budget and a number "
            "of seeds that support no verdict. Every verdict is withheld; run the default grid for evidence."
        )
    elif n_seeds < MIN_SEEDS:
        text = (
            f"With {n_seeds} seed(s) there are no intervals over seeds worth the name, so every verdict is "
            f"withheld; run at least {MIN_SEEDS} seeds (the default is 10)."
        )
    det = []
    for metric, spreads in sorted(w.spreads.items()):
        sd = _st.median(s for s, _ in spreads)
        n = int(_st.median(k for _, k in spreads))
        dd = S.detectable_difference(sd, n)
        if dd is not None:
            det.append(f"{metric} {dd:.3f}")
    if det:
        text += (
            f" With {n_seeds} seeds and the median spread of the paired differences seen here, a true "
            f"difference is found with 80% power when it is at least about: " + "; ".join(det) + "."
        )
    steps = sorted({r["steps"] for r in w.records if r.get("steps")})
    moving = [r for r in w.records if (r.get("train_accuracy_gain_last_fifth") or 0) > 0.01 and r["method"] == "ce"]
    n_ce = sum(1 for r in w.records if r["method"] == "ce")
    if steps:
        text += (
            f" Budget: {', '.join(map(str, steps))} Adam steps per training, the same on every dataset; in "
            f"{len(moving)} of {n_ce} ce trainings the accuracy on the training labels still rose by more than "
            "1 point over the last fifth of the budget (not converged)."
        )
    text += (
        " Tolerances: a difference smaller than the practical tolerance is 'no clear difference' even when its "
        "interval excludes zero; for accuracy and ECE it is at least 2 / n_test."
    )
    return text


# ----------------------------------------------------------------------------- entry point


def claim_paragraphs(records: Sequence[S.Record], smoke: bool = False) -> dict[str, str]:
    """Short paragraphs per claim (separated by blank lines), generated from the run records.

    Args:
        records: run records (as in ``results.json``) of one grid.
        smoke: the records come from a ``--quick`` smoke test: numbers are shown, verdicts withheld.

    Returns:
        ``{claim key: paragraphs}`` in the order of :data:`CLAIMS`, then ``"statistics"``.

    Example:
        >>> rec = lambda m, eps, ece, seed: dict(dataset="toy", method=m, label_smoothing=eps, noise_level=0.0,
        ...     noise_kind="none", seed=seed, ece=ece, nll=0.2, mean_confidence=0.97, test_accuracy=0.97,
        ...     train_test_gap=0.03, num_classes=10, binary=False, splits={"n_test": 1000})
        >>> rs = [rec("ce", 0.0, 0.02, s) for s in range(3)] + [rec("ls", 0.1, 0.12 + s / 100, s) for s in range(3)]
        >>> "ls eps=0.1 (fixed in advance) changed ECE by +0.110" in claim_paragraphs(rs)["calibration"]
        True
    """
    records = list(records)
    if not records or S.baseline_variant(records) is None:
        why = "no finished runs." if not records else "the baseline ce is not in these runs (add it to --methods)."
        return {**{k: f"Not measured: {why}" for k in CLAIMS}, "statistics": ""}
    w = _Writer(records, smoke)
    out = {
        "noise": _noise(w),
        "overfitting": _overfitting(w),
        "calibration": _calibration(w),
        "binary": _binary(w),
    }
    result = {k: "\n\n".join(v) for k, v in out.items()}
    result["statistics"] = _statistics(w)
    return result
