"""The claims made for label smoothing, the verdicts that test them, and the paragraphs that explain them.

Each claim is tested by verdicts (:class:`labelsmooth.study.verdicts.Verdict`) chosen so that they
measure *that* claim and no other claim's number in disguise; each says what it measures and what
would have falsified it. The rules:

* **The test split is used once.** Every choice (eps, the early-stopping step, the temperature, the
  weight decay of negative smoothing) is made on the validation split, with the validation labels a
  user has: noisy when the training labels are. Clean validation labels appear only in labelled
  oracle variants (``ts-oracle``, ``oracle_es_*``).
* **Values are signed so that positive is what the claim predicts**, the same way for every metric.
* **Multiplicity**: within each claim, Holm's correction decides (Benjamini-Hochberg shown beside);
  a verdict needs the Holm-adjusted p below 0.05 *and* a mean of at least the practical tolerance
  (:func:`tolerance`, at least 2 / n_test for metrics counted in test examples).
* **No verdict below 3 seeds**, nor in a ``--quick`` smoke test.
* **Failed runs are kept out**: a run that diverged or collapsed
  (:func:`labelsmooth.study.train.failure_reason`), and a temperature fit at the end of its range, enter
  no mean and no verdict; the text counts them.

The claims (keys of :data:`CLAIMS`) and their verdicts:

* ``noise``: clean test accuracy under noisy training labels, smoothing (eps chosen on validation) minus
  cross-entropy, at the last step and early-stopped, at every noise kind and level (dose-response).
* ``overfitting``: what continued training past the early-stopped step costs (test accuracy and NLL,
  clean labels), the share of flipped training labels memorised (noisy labels), and whether the
  benefit grows as the training set shrinks (10% and 30% of the training split against 100%).
* ``calibration``: ECE and NLL against ce, and ECE against ce + temperature scaling and of smoothing +
  temperature scaling against temperature scaling alone; eps chosen on validation from a grid that
  starts at 0.01.
* ``binary``: "less effective in binary classification" is defined once: **the binary task's benefit
  (signed, positive = better) is smaller than the 10-class task's**. Measured on tasks carved from
  the same data with the same number of examples (K = 2, 3, 5, 10, several class subsets), at the
  same eps and at the same smoothed top target (:func:`labelsmooth.study.methods.matched_eps`).

A further family, ``comparators``, sets negative smoothing and forward loss correction against ce
under noise; it is reported beside claim 1 but corrected as its own family.
"""

from __future__ import annotations

import statistics as _st
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labelsmooth.study import stats as S
from labelsmooth.study import verdicts as V
from labelsmooth.study.data import is_ksweep
from labelsmooth.study.methods import HEADLINE_EPS, METHODS, matched_eps, top_target
from labelsmooth.study.stats import CLEAN, Estimate, Noise, Variant

__all__ = [
    "BIN_METRICS",
    "CLAIMS",
    "FAMILIES",
    "HEADLINE_EPS",
    "MIN_SEEDS",
    "TOLERANCE",
    "binary_comparison",
    "claim_paragraphs",
    "effect_sizes",
    "k_effect",
    "ksweep_groups",
    "study_verdicts",
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

#: Families of verdicts, each corrected for multiplicity on its own: the claims, then the comparators.
FAMILIES: dict[str, str] = {
    **CLAIMS,
    "comparators": "Other noisy-label methods against cross-entropy (negative smoothing, forward correction)",
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

MIN_SEEDS = V.MIN_SEEDS

#: |mean confidence - accuracy| below this is called "close to calibrated on average".
_CONF_TOL = 0.02


def tolerance(metric: str, n_test: int | None = None) -> float:
    """The practical tolerance of ``metric``: :data:`TOLERANCE`, at least 2 / n_test for per-example metrics.

    Example:
        >>> tolerance("test_accuracy", 114) == 2 / 114, tolerance("test_accuracy", 10000)
        (True, 0.005)
    """
    base = TOLERANCE[metric.removeprefix("oracle_").removeprefix("es_")]
    if n_test and metric.removeprefix("oracle_").removeprefix("es_") in _PER_EXAMPLE:
        return max(base, 2.0 / n_test)
    return base


def verdict(
    diff: Estimate | None, metric: str, lower_is_better: bool, n_test: int | None = None, smoke: bool = False
) -> str:
    """Classify one unadjusted paired difference (variant - reference); used for descriptive sentences.

    The report's verdicts are :class:`~labelsmooth.study.verdicts.Verdict` objects, corrected for
    multiplicity; this is the single-comparison rule (95% interval excludes 0 and the mean reaches the
    tolerance).

    Returns:
        ``"better"``, ``"worse"``, ``"same"``, ``"withheld"`` or ``"unknown"``.

    Example:
        >>> from labelsmooth.study.stats import Estimate
        >>> verdict(Estimate(0.1, 0.02, 3), "ece", lower_is_better=True)
        'worse'
        >>> verdict(Estimate(0.1, None, 1), "ece", lower_is_better=True)
        'withheld'
    """
    if diff is None:
        return "unknown"
    if smoke or diff.n < MIN_SEEDS or diff.half is None:
        return "withheld"
    if abs(diff.mean) < tolerance(metric, n_test) or not diff.excludes_zero:
        return "same"
    improved = diff.mean < 0 if lower_is_better else diff.mean > 0
    return "better" if improved else "worse"


# ----------------------------------------------------------------------------- formatting


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


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
    return ", ".join(f"{S.label(v)} {k}x" for v, k in sorted(picked.items(), key=lambda x: -x[1])) or "none"


def _anchor(*parts: str) -> str:
    return "v-" + "-".join("".join(c if c.isalnum() else "-" for c in p) for p in parts)


#: The verdict's place in the text is marked with this token and its id; the writers below replace it
#: with the adjusted numbers once the whole family is known.
_MARK = "\x00"


# ----------------------------------------------------------------------------- the collector


@dataclass
class _Collect:
    """The records, the smoke flag, and every verdict made, by family, in order."""

    records: list[S.Record]
    smoke: bool = False
    made: list[V.Verdict] = field(default_factory=list)

    @property
    def base(self) -> Variant:
        v = S.baseline_variant(self.records)
        assert v is not None  # claim_paragraphs writes no claim without the baseline
        return v

    def mean(self, ds: str, v: Variant, noise: Noise, name: str, frac: float = 1.0) -> float | None:
        e = S.estimate(r.get(name) for r in S.cell(self.records, ds, v, noise, frac))
        return None if e is None else e.mean

    def n_test(self, ds: str) -> int | None:
        sizes = [r["splits"]["n_test"] for r in self.records if r["dataset"] == ds and r.get("splits")]
        return min(sizes) if sizes else None

    def add(
        self,
        claim: str,
        ds: str,
        setting: str,
        metric: str,
        question: str,
        measures: str,
        falsified_by: str,
        values: Sequence[float],
        values_b: Sequence[float] | None = None,
        note: str = "",
        tol_metric: str | None = None,
        tol_dataset: str | None = None,
    ) -> str:
        """Record a verdict; return the marker its sentence carries until the numbers are adjusted."""
        v = V.Verdict(
            claim=claim,
            dataset=ds,
            setting=setting,
            metric=metric,
            question=question,
            measures=measures,
            falsified_by=falsified_by,
            values=tuple(float(x) for x in values),
            values_b=None if values_b is None else tuple(float(x) for x in values_b),
            tolerance=tolerance(tol_metric or metric, self.n_test(tol_dataset or ds)),
            smoke=self.smoke,
            note=note,
            anchor=_anchor(claim, ds, setting, metric, question),
        )
        self.made.append(v)
        return f"{_MARK}{len(self.made) - 1}{_MARK}"

    def selected(
        self,
        ds: str,
        candidates: Sequence[Variant],
        ref: Variant,
        noise: Noise,
        select_on: str,
        higher_is_better: bool,
        name: str,
        sign: float,
    ) -> tuple[list[float], dict[Variant, int]]:
        vals, picked = S.selected_values(self.records, ds, candidates, ref, noise, select_on, higher_is_better, name)
        return [sign * x for x in vals], picked

    def basis(self, ds: str, v: Variant, noise: Noise, chosen: str) -> str:
        n = len(S.cell(self.records, ds, v, noise))
        nt = self.n_test(ds)
        why = (
            " Verdicts withheld: --quick is a smoke test."
            if self.smoke
            else f" Verdicts withheld: fewer than {MIN_SEEDS} seeds."
            if n < MIN_SEEDS
            else ""
        )
        failed = S.failed_count(self.records, ds, noise)
        fail = f" {failed} run(s) of this setting diverged or collapsed and were left out." if failed else ""
        return f" [n = {n} seed(s) x {nt or '?'} test examples; {chosen}.{why}{fail}]"


def _sentence(mark: str, what: str) -> str:
    return f" {what}: {mark}."


# ----------------------------------------------------------------------------- claim 1: noisy labels

_NOISE_MEASURES = (
    "clean test accuracy after training on the noisy labels: smoothing, with eps chosen per seed on the noisy "
    "validation labels, minus cross-entropy"
)
_NOISE_FALSIFIED = "a clear drop in test accuracy against cross-entropy (no clear difference leaves it unsupported)"


def _noise(c: _Collect) -> list[str]:
    base = c.base
    out = []
    for ds in S.datasets(c.records):
        smooth = S.smoothing_variants(c.records, ds)
        for noise in [n for n in S.noise_settings(c.records, ds) if n[1] > 0]:
            acc = c.mean(ds, base, noise, "test_accuracy")
            if acc is None:
                continue
            rate = c.mean(ds, base, noise, "noise_rate")
            acc0 = c.mean(ds, base, CLEAN, "test_accuracy")
            label = S.noise_label(noise)
            text = (
                f"{ds}, {noise[0]} noise at level {noise[1]:g} of the breakdown rate ({_pct(rate)} of training "
                f"labels flipped): ce's test accuracy was {acc:.3f} at the last step"
                + (f" ({acc0:.3f} with clean labels)" if acc0 is not None else "")
                + f", {_f(c.mean(ds, base, noise, 'es_test_accuracy'))} early-stopped on the noisy validation "
                f"labels and {_f(c.mean(ds, base, noise, 'oracle_es_test_accuracy'))} early-stopped on clean "
                "ones (an oracle)."
            )
            if smooth:
                for prefix, where in (("", "last step"), ("es_", "early-stopped")):
                    vals, picked = c.selected(
                        ds, smooth, base, noise, f"{prefix}val_accuracy_noisy", True, f"{prefix}test_accuracy", 1.0
                    )
                    mark = c.add(
                        "noise",
                        ds,
                        f"{label}, {where}",
                        "test_accuracy",
                        "ls (eps on validation) vs ce",
                        _NOISE_MEASURES + f" ({where})",
                        _NOISE_FALSIFIED,
                        vals,
                    )
                    text += _sentence(mark, f"Smoothing ({_picked(picked)}) against ce, {where}, test accuracy")
            text += _comparators(c, ds, base, noise)
            firsts = sum(bool(r.get("es_at_first_point")) for r in S.cell(c.records, ds, base, noise))
            if firsts:
                text += (
                    f" ce's early-stopped step was the first evaluation point in {firsts} seed(s): the best step may "
                    "lie before it."
                )
            out.append(
                text + c.basis(ds, base, noise, "eps and the early-stopping step chosen on the noisy validation labels")
            )
    return out or ["Not measured: no run with noisy training labels."]


def _comparators(c: _Collect, ds: str, base: Variant, noise: Noise) -> str:
    """Negative smoothing and forward correction against ce (and smoothing against forward correction)."""
    text = ""
    label = S.noise_label(noise)
    for method in dict.fromkeys(v[0] for v in S.scheme_variants(c.records, ds)):
        cands = [v for v in S.scheme_variants(c.records, ds) if v[0] == method]
        if not any(S.cell(c.records, ds, v, noise) for v in cands):
            continue
        name = METHODS[method].label.split(" (")[0]
        for prefix, where in (("", "last step"), ("es_", "early-stopped")):
            vals, picked = c.selected(
                ds, cands, base, noise, f"{prefix}val_accuracy_noisy", True, f"{prefix}test_accuracy", 1.0
            )
            mark = c.add(
                "comparators",
                ds,
                f"{label}, {where}",
                "test_accuracy",
                f"{method} vs ce",
                f"clean test accuracy, {name} minus cross-entropy ({where})",
                "(a comparator: a clear drop means the method hurt)",
                vals,
            )
            what = f"{name.capitalize()}" + (f" ({_picked(picked)})" if len(cands) > 1 else "")
            text += _sentence(mark, f"{what} against ce, {where}")
    fc = ("fc", 0.0)
    smooth = S.smoothing_variants(c.records, ds)
    if smooth and S.cell(c.records, ds, fc, noise):
        vals, picked = c.selected(ds, smooth, fc, noise, "es_val_accuracy_noisy", True, "es_test_accuracy", 1.0)
        mark = c.add(
            "comparators",
            ds,
            f"{label}, early-stopped",
            "test_accuracy",
            "ls vs fc",
            "clean test accuracy, smoothing (eps on validation) minus forward correction with the true T",
            "(a comparator: a clear drop means loss correction did better than smoothing)",
            vals,
        )
        text += _sentence(mark, "Smoothing against forward correction (true T), early-stopped")
    return text


# ----------------------------------------------------------------------------- claim 2: overfitting


def _cost(r: S.Record, name: str) -> float | None:
    last, es = r.get(name), r.get(f"es_{name}")
    return None if last is None or es is None else last - es


def _overfitting(c: _Collect) -> list[str]:
    base = c.base
    out = []
    for ds in S.datasets(c.records):
        head = _headline(S.smoothing_variants(c.records, ds))
        if head is None or (":" in ds and not ds.startswith("npz:")):
            continue
        paras = []
        # (a) continued training, clean labels
        cb = {r["seed"]: r for r in S.cell(c.records, ds, base, CLEAN)}
        ch = {r["seed"]: r for r in S.cell(c.records, ds, head, CLEAN)}
        if cb and ch:
            text = f"{ds}, clean labels, {S.label(head)} (fixed in advance) against ce:"
            for name, title, sign in (("test_accuracy", "test accuracy", 1.0), ("nll", "test NLL", -1.0)):
                vals = []
                for s, rb in cb.items():
                    rh = ch.get(s)
                    a, b = (None, None) if rh is None else (_cost(rh, name), _cost(rb, name))
                    if a is not None and b is not None:
                        vals.append(sign * (a - b))
                cost_b = S.estimate(_cost(r, name) for r in cb.values())
                cost_h = S.estimate(_cost(r, name) for r in ch.values())
                mark = c.add(
                    "overfitting",
                    ds,
                    "clean",
                    name,
                    "continued-training cost, ls vs ce",
                    f"what training on from the early-stopped step to the last costs in {title} "
                    f"(last minus early-stopped), ce's cost minus smoothing's, signed so that positive means "
                    "smoothing lost less",
                    f"smoothing losing clearly more {title} than ce by training on",
                    vals,
                )
                text += (
                    f" continuing from the early-stopped step to the last changed {title} by "
                    f"{_f(cost_b.mean if cost_b else None)} (ce) and {_f(cost_h.mean if cost_h else None)} "
                    f"({S.label(head)}); {mark};"
                )
            paras.append(text.rstrip(";") + "." + c.basis(ds, base, CLEAN, f"eps = {head[1]:g} fixed in advance"))
        # (b) memorisation of flipped labels, noisy labels
        smooth = S.smoothing_variants(c.records, ds)
        mem = []
        for noise in [n for n in S.noise_settings(c.records, ds) if n[1] > 0]:
            m0 = c.mean(ds, base, noise, "memorized_fraction")
            if m0 is None:
                continue
            vals, _ = c.selected(ds, smooth, base, noise, "val_accuracy_noisy", True, "memorized_fraction", -1.0)
            mark = c.add(
                "overfitting",
                ds,
                S.noise_label(noise),
                "memorized_fraction",
                "memorised flips, ls vs ce",
                "the share of flipped training labels the last-step model predicts as the flipped label, ce minus "
                "smoothing (eps chosen on the noisy validation labels): positive means smoothing memorised less",
                "smoothing memorising clearly more of the flipped labels than ce",
                vals,
            )
            mem.append(f"{S.noise_label(noise)}: ce memorised {_pct(m0)}, {mark}")
        if mem:
            paras.append(
                f"{ds}, memorisation of the flipped training labels at the last step (ce minus smoothing, in share "
                "of the flipped labels): "
                + "; ".join(mem)
                + "."
                + c.basis(ds, base, S.noise_settings(c.records, ds)[-1], "eps chosen on the noisy validation labels")
            )
        # (c) training-set size
        fracs = sorted({float(r.get("train_fraction", 1.0)) for r in c.records if r["dataset"] == ds} - {1.0})
        if fracs:
            full = _per_seed_delta(c, ds, head, 1.0)
            parts = []
            for f in fracs:
                part = _per_seed_delta(c, ds, head, f)
                vals = [part[s] - full[s] for s in part if s in full]
                e = S.estimate(part.values())
                mark = c.add(
                    "overfitting",
                    ds,
                    f"{f:.0%} of the training data",
                    "test_accuracy",
                    "benefit with less data",
                    f"smoothing's test-accuracy gain over ce with {f:.0%} of the training split minus its gain "
                    "with all of it (clean labels, last step): positive means a larger benefit with less data",
                    "a clearly smaller benefit with less data",
                    vals,
                )
                parts.append(f"with {f:.0%} of the training split the gain was {_f(e.mean if e else None)}, {mark}")
            fe = S.estimate(full.values())
            paras.append(
                f"{ds}, training-set size (clean labels, last step): {S.label(head)} changed test accuracy by "
                f"{_f(fe.mean if fe else None)} against ce with the whole training split; "
                + "; ".join(parts)
                + "."
                + c.basis(ds, base, CLEAN, f"eps = {head[1]:g} fixed in advance; subsamples stratified per seed")
            )
        out += paras
    return out or ["Not measured: no runs with the baseline and a smoothed model."]


def _per_seed_delta(c: _Collect, ds: str, head: Variant, frac: float) -> dict[int, float]:
    base = {r["seed"]: r.get("test_accuracy") for r in S.cell(c.records, ds, c.base, CLEAN, frac)}
    out = {}
    for r in S.cell(c.records, ds, head, CLEAN, frac):
        b = base.get(r["seed"])
        if b is not None and r.get("test_accuracy") is not None:
            out[r["seed"]] = r["test_accuracy"] - b
    return out


# ----------------------------------------------------------------------------- claim 3: calibration


def _calibration(c: _Collect) -> list[str]:
    base = c.base
    out = []
    for ds in S.datasets(c.records):
        if ":" in ds and not ds.startswith("npz:"):
            continue  # carved tasks serve claim 4
        noise = S.noise_settings(c.records, ds)[0]
        ece0 = c.mean(ds, base, noise, "ece")
        smooth = S.smoothing_variants(c.records, ds)
        if ece0 is None or not smooth:
            continue
        conf = _confidence(c.mean(ds, base, noise, "mean_confidence"), c.mean(ds, base, noise, "test_accuracy"))
        text = (
            f"{ds}, {S.noise_label(noise)} labels: ce had test ECE {ece0:.3f} (equal-mass bins "
            f"{_f(c.mean(ds, base, noise, 'ece_quantile'))}) and NLL {_f(c.mean(ds, base, noise, 'nll'))}, and was "
            f"{conf}."
        )
        grid = "; ".join(f"{S.label(v)} {_f(c.mean(ds, v, noise, 'ece'))}" for v in smooth)
        text += f" ECE over the eps grid: {grid}."
        for name, title, sel in (("ece", "ECE", "val_ece_noisy"), ("nll", "NLL", "val_nll_noisy")):
            vals, picked = c.selected(ds, smooth, base, noise, sel, False, name, -1.0)
            mark = c.add(
                "calibration",
                ds,
                S.noise_label(noise),
                name,
                "ls vs ce",
                f"test {title} of cross-entropy minus that of smoothing with eps chosen per seed on validation "
                f"{title}: positive means smoothing was better calibrated",
                f"smoothing with a clearly higher test {title} than ce",
                vals,
            )
            text += _sentence(mark, f"Smoothing (eps on validation {title}: {_picked(picked)}) against ce, {title}")
        ts = ("ts", 0.0)
        if S.cell(c.records, ds, ts, noise):
            allc = S.cell(c.records, ds, ts, noise, include_failed=True)
            bound = S.temperature_at_bound(allc)
            temp = c.mean(ds, ts, noise, "temperature")
            text += (
                f" Temperature scaling of ce (T = {_f(temp, 2)}, fitted on validation in [0.1, 10]) reached ECE "
                f"{_f(c.mean(ds, ts, noise, 'ece'))}"
                + (
                    f"; in {bound} of {len(allc)} seeds T ended at the end of its range (a separable validation "
                    "set says nothing about the temperature) and those seeds are left out of every comparison with it"
                    if bound
                    else ""
                )
                + "."
            )
            vals, picked = c.selected(ds, smooth, ts, noise, "val_ece_noisy", False, "ece", -1.0)
            mark = c.add(
                "calibration",
                ds,
                S.noise_label(noise),
                "ece",
                "ls vs ce+ts",
                "test ECE of ce + temperature scaling minus that of smoothing (eps on validation ECE): positive means "
                "smoothing beat the post-hoc baseline",
                "temperature scaling of ce calibrating clearly better than smoothing",
                vals,
            )
            text += _sentence(mark, "Smoothing against ce + temperature scaling, ECE")
            lsts = [v for v in S.posthoc_variants(c.records, ds) if v[0] == "ls+ts"]
            if lsts:
                vals, picked = c.selected(ds, lsts, ts, noise, "val_ece_noisy", False, "ece", -1.0)
                mark = c.add(
                    "calibration",
                    ds,
                    S.noise_label(noise),
                    "ece",
                    "ls+ts vs ce+ts",
                    "test ECE of ce + temperature scaling minus that of smoothing + temperature scaling (eps on "
                    "validation ECE): positive means smoothing adds to temperature scaling",
                    "smoothing + temperature scaling clearly worse calibrated than temperature scaling alone",
                    vals,
                )
                text += _sentence(mark, f"Smoothing + temperature scaling ({_picked(picked)}) against ce + ts, ECE")
        for rv in S.reference_variants(c.records, ds):
            d = S.paired_difference(c.records, ds, rv, base, noise, "ece")
            text += f" {S.label(rv)} changed ECE by {_ci(d)} against ce (descriptive, no verdict)."
        out.append(
            text + c.basis(ds, base, noise, "eps and the temperature chosen on validation; test ECE with 15 bins")
        )
    return out or ["Not measured: no runs with the baseline and a smoothed model."]


def _ci(d: Estimate | None) -> str:
    if d is None:
        return "n/a"
    if d.half is None:
        return f"{d.mean:+.3f}"
    return f"{d.mean:+.3f} (95% CI {d.low:+.3f} to {d.high:+.3f})"


# ----------------------------------------------------------------------------- claim 4: binary

#: Claim 4's metrics: (field, title, sign that makes a benefit positive).
BIN_METRICS = (("ece", "ECE", -1.0), ("test_accuracy", "test accuracy", 1.0), ("nll", "NLL", -1.0))


def effect_sizes(records: Sequence[S.Record], variant: Variant, noise: Noise) -> dict[str, dict[str, Estimate | None]]:
    """Signed paired effects of ``variant`` vs the baseline per dataset: ΔECE, Δaccuracy, ΔNLL (variant - ce).

    Returns:
        ``{dataset: {"ece": Estimate, "test_accuracy": Estimate, "nll": Estimate}}``.
    """
    base = S.baseline_variant(records)
    if base is None:
        return {}
    return {
        ds: {m: S.paired_difference(records, ds, variant, base, noise, m) for m, _, _ in BIN_METRICS}
        for ds in S.datasets(records)
    }


def _benefit(records: Sequence[S.Record], ds: str, eps: float, metric: str, sign: float) -> dict[int, float]:
    """Per seed, smoothing's benefit over ce on one task (signed: positive = better)."""
    base = S.baseline_variant(records)
    if base is None:
        return {}
    ref = {r["seed"]: r.get(metric) for r in S.cell(records, ds, base, CLEAN)}
    out = {}
    for r in S.cell(records, ds, ("ls", eps), CLEAN):
        b = ref.get(r["seed"])
        if b is not None and r.get(metric) is not None:
            out[r["seed"]] = sign * (r[metric] - b)
    return out


def ksweep_groups(records: Sequence[S.Record]) -> dict[str, dict[int, list[str]]]:
    """K-sweep tasks by base dataset and K: ``{"mnist1d": {2: ["mnist1d:k2s0", ...], ...}}``."""
    out: dict[str, dict[int, list[str]]] = {}
    for ds in S.datasets(records):
        if is_ksweep(ds):
            base, _, rest = ds.partition(":")
            k = int(rest[1:].partition("s")[0])
            out.setdefault(base, {}).setdefault(k, []).append(ds)
    return out


def k_effect(
    records: Sequence[S.Record], tasks: Sequence[str], eps_of: Callable[[int], float], metric: str, sign: float, k: int
) -> dict[int, float]:
    """Per seed, the benefit averaged over the class subsets of one K (tasks with a value at that seed)."""
    per: dict[int, list[float]] = {}
    for ds in tasks:
        for s, v in _benefit(records, ds, eps_of(k), metric, sign).items():
            per.setdefault(s, []).append(v)
    return {s: sum(v) / len(v) for s, v in per.items()}


@dataclass(frozen=True)
class BinaryComparison:
    """Claim 4 on one pair (binary task, 10-class task): per-seed benefits (positive = better)."""

    metric: str
    binary: Estimate | None
    multi: Estimate | None
    values_multi: tuple[float, ...]
    values_binary: tuple[float, ...]


def binary_comparison(
    records: Sequence[S.Record],
    binary_tasks: Sequence[str],
    multi_tasks: Sequence[str],
    eps_binary: float,
    eps_multi: float,
    metric: str,
) -> BinaryComparison:
    """The benefit of smoothing (signed, positive = better) on binary and on 10-class tasks, per seed.

    Args:
        records: run records.
        binary_tasks: the two-class tasks (averaged per seed).
        multi_tasks: the 10-class tasks (averaged per seed).
        eps_binary, eps_multi: the smoothing compared with ce on each side.
        metric: ``"ece"``, ``"test_accuracy"`` or ``"nll"``.

    Returns:
        A :class:`BinaryComparison`.
    """
    sign = next(s for m, _, s in BIN_METRICS if m == metric)
    vb = k_effect(records, binary_tasks, lambda k: eps_binary, metric, sign, 2)
    vm = k_effect(records, multi_tasks, lambda k: eps_multi, metric, sign, 10)
    return BinaryComparison(
        metric, S.estimate(vb.values()), S.estimate(vm.values()), tuple(vm.values()), tuple(vb.values())
    )


_LESS = (
    "less effective in binary classification: the binary task's benefit (signed, positive = better) is smaller "
    "than the 10-class task's; the value is the 10-class benefit minus the binary benefit"
)


def _binary(c: _Collect) -> list[str]:
    out = []
    # The headline is a value of the eps grid: a carved task of fewer than 10 classes also runs its matched
    # eps (no grid value), which could otherwise lie closer to 0.1 than any grid value does.
    grid_ds = [
        ds
        for ds in S.datasets(c.records)
        if ":" not in ds or ds.startswith("npz:") or (is_ksweep(ds) and ds.partition(":")[2].startswith("k10s"))
    ]
    eps_grid = sorted({v[1] for ds in grid_ds for v in S.smoothing_variants(c.records, ds)}) or sorted(
        {v[1] for v in S.smoothing_variants(c.records)}
    )
    head = _headline([("ls", e) for e in eps_grid])
    if head is None:
        return ["Not measured: no smoothed model."]
    eps = head[1]
    for base_ds, by_k in ksweep_groups(c.records).items():
        if 2 not in by_k or 10 not in by_k:
            continue
        n_test = c.n_test(by_k[2][0])
        rows = []
        for k in sorted(by_k):
            cells = []
            for metric, title, sign in BIN_METRICS:
                same = S.estimate(k_effect(c.records, by_k[k], lambda _k: eps, metric, sign, k).values())
                matched = S.estimate(
                    k_effect(c.records, by_k[k], lambda kk: matched_eps(eps, kk), metric, sign, k).values()
                )
                cells.append(
                    f"{title} {_f(same.mean if same else None)} at eps {eps:g}, "
                    f"{_f(matched.mean if matched else None)} at eps {matched_eps(eps, k):g}"
                )
            rows.append(f"K = {k} ({len(by_k[k])} class subset(s)): " + "; ".join(cells))
        text = (
            f"{base_ds}, tasks carved with the same number of examples for every K (n_test {n_test}), clean labels; "
            f"benefit of smoothing over ce, signed so that positive is better. " + ". ".join(rows) + "."
        )
        for label, eps_b in (
            (f"same eps ({eps:g})", eps),
            (f"same top target ({top_target(eps, 10):.3f}: eps {matched_eps(eps, 2):g} binary)", matched_eps(eps, 2)),
        ):
            for metric, title, _sign in BIN_METRICS:
                bc = binary_comparison(c.records, by_k[2], by_k[10], eps_b, eps, metric)
                mark = c.add(
                    "binary",
                    f"{base_ds} K=2 vs K=10",
                    label,
                    metric,
                    "10-class benefit minus binary benefit",
                    f"{title}: " + _LESS,
                    f"the binary task's benefit clearly larger than the 10-class task's ({title})",
                    bc.values_multi,
                    bc.values_binary,
                    tol_dataset=by_k[2][0],
                )
                text += _sentence(mark, f"At the {label}, {title}: 10-class minus binary benefit")
        out.append(
            text
            + c.basis(
                by_k[2][0],
                c.base,
                CLEAN,
                "eps fixed in advance; the binary tasks use one logit (BCE), the others softmax",
            )
        )
    parents = {r["dataset"]: r.get("parent_dataset") for r in c.records}
    dsets = S.datasets(c.records)
    for bds in dsets:
        mds = parents.get(bds)
        if is_ksweep(bds) or not mds or mds not in dsets:
            continue
        text = f"{bds} vs {mds} (a binary task carved from the 10-class data, not size-matched):"
        for label, eps_b in ((f"same eps ({eps:g})", eps), ("same top target", matched_eps(eps, 2))):
            for metric, title, _sign in BIN_METRICS:
                bc = binary_comparison(c.records, [bds], [mds], eps_b, eps, metric)
                if not bc.values_binary:
                    continue
                mark = c.add(
                    "binary",
                    f"{bds} vs {mds}",
                    label,
                    metric,
                    "10-class benefit minus binary benefit",
                    f"{title}: " + _LESS,
                    f"the binary task's benefit clearly larger than the 10-class task's ({title})",
                    bc.values_multi,
                    bc.values_binary,
                    tol_dataset=bds,
                )
                text += _sentence(mark, f"at the {label}, {title}")
        out.append(text + c.basis(bds, c.base, CLEAN, "eps fixed in advance"))
    if not out:
        out.append(
            "Not measured: add K-sweep tasks carved from one dataset (e.g. --datasets "
            "mnist1d:k2s0,mnist1d:k2s1,mnist1d:k10s0) or a binary task beside its parent (digits,digits:3v8)."
        )
    return out


# ----------------------------------------------------------------------------- statistics note


def _statistics(c: _Collect, made: Sequence[V.Verdict]) -> str:
    if c.smoke:
        return (
            "This is a --quick smoke test: it checks that the study runs end to end, with a budget and a number "
            "of seeds that support no verdict. Every verdict is withheld; run the default grid for evidence."
        )
    tested = [v for v in made if v.outcome in ("supports", "contradicts", "same")]
    if not tested:
        return (
            f"With fewer than {MIN_SEEDS} seeds there are no intervals worth the name, so every verdict is withheld; "
            f"run at least {MIN_SEEDS} seeds."
        )
    parts = []
    for fam in FAMILIES:
        fv = [v for v in tested if v.claim == fam]
        if not fv:
            continue
        clear = sum(v.outcome != "same" for v in fv)
        raw = sum(1 for v in fv if v.p is not None and v.p < V.ALPHA and abs(v.mean or 0) >= v.tolerance)
        bh = sum(1 for v in fv if v.p_bh is not None and v.p_bh < V.ALPHA and abs(v.mean or 0) >= v.tolerance)
        parts.append(f"{fam}: {len(fv)} verdicts, {clear} clear after Holm ({raw} unadjusted, {bh} with BH)")
    text = (
        "Multiplicity: within each family Holm's correction decides at a family-wise error of 5% (a verdict's "
        "interval is at the level Holm used for it); Benjamini-Hochberg counts are shown beside. "
        + "; ".join(parts)
        + "."
    )
    # Power per dataset and metric at the tolerance, at the strictest level of its family (alpha / m).
    power: dict[tuple[str, str], list[float]] = {}
    for v in tested:
        if v.sd is None or v.values_b is not None:
            continue
        m = sum(1 for u in tested if u.claim == v.claim)
        pw = V.power(v.tolerance, v.sd, len(v.values), V.ALPHA / m)
        if pw is not None:
            power.setdefault((v.dataset, v.metric), []).append(pw)
    if power:
        text += (
            " Power to detect a true difference equal to the tolerance (median over the dataset's verdicts of that "
            "metric, at the strictest Holm level of its family): "
            + "; ".join(f"{ds} {metric} {_st.median(p):.0%}" for (ds, metric), p in sorted(power.items()))
            + "."
        )
    # Convergence and failures, per method.
    conv = []
    for method in dict.fromkeys(r["method"] for r in c.records):
        rs = [r for r in c.records if r["method"] == method and METHODS.get(method) and not METHODS[method].posthoc]
        if not rs:
            continue
        moving = sum(1 for r in rs if r.get("converged") is False)
        failed = sum(1 for r in rs if r.get("failure"))
        conv.append(
            f"{method} {moving}/{len(rs)} still rising" + (f", {failed} diverged or collapsed" if failed else "")
        )
    steps = sorted({r["steps"] for r in c.records if r.get("steps")})
    if steps:
        text += (
            f" Budget: {', '.join(map(str, steps))} Adam steps per training; runs whose training-label accuracy still "
            f"rose by more than 1 point over the last fifth (not converged): " + "; ".join(conv) + "."
        )
    firsts = sum(1 for r in c.records if r.get("es_at_first_point") and r["method"] == "ce")
    n_ce = sum(1 for r in c.records if r["method"] == "ce")
    text += f" ce's early-stopped step was the first evaluation point in {firsts} of {n_ce} trainings."
    return text


# ----------------------------------------------------------------------------- entry points


def _collect(records: Sequence[S.Record], smoke: bool) -> tuple[_Collect, dict[str, list[str]]]:
    c = _Collect(list(records), smoke)
    texts = {"noise": _noise(c), "overfitting": _overfitting(c), "calibration": _calibration(c), "binary": _binary(c)}
    return c, texts


def _adjusted(made: Sequence[V.Verdict]) -> list[V.Verdict]:
    out = list(made)
    for fam in FAMILIES:
        idx = [i for i, v in enumerate(made) if v.claim == fam]
        for i, v in zip(idx, V.adjust([made[i] for i in idx]), strict=True):
            out[i] = v
    return out


def study_verdicts(records: Sequence[S.Record], smoke: bool = False) -> list[V.Verdict]:
    """Every verdict of the study, corrected for multiplicity within its family.

    Args:
        records: run records (as in ``results.json``) of one grid.
        smoke: a ``--quick`` smoke test: values shown, verdicts withheld.

    Returns:
        The :class:`~labelsmooth.study.verdicts.Verdict` list, in report order.
    """
    records = list(records)
    if not records or S.baseline_variant(records) is None:
        return []
    c, _ = _collect(records, smoke)
    return _adjusted(c.made)


def _fill(text: str, made: Sequence[V.Verdict]) -> str:
    parts = text.split(_MARK)
    for i in range(1, len(parts), 2):
        v = made[int(parts[i])]
        level = f"{100 * v.level:.1f}".rstrip("0").rstrip(".")
        interval = v.text() if v.low is None else f"{v.text()} ({level}% Holm-level interval)"
        parts[i] = f"<<{v.anchor}>>{interval}, {v.words}"
    return "".join(parts)


def claim_paragraphs(records: Sequence[S.Record], smoke: bool = False) -> dict[str, str]:
    """Short paragraphs per claim (separated by blank lines), generated from the run records.

    A verdict's place in a sentence reads ``<<anchor>>+0.012 [+0.004, +0.020] (99.2% Holm-level interval),
    supports the claim``; the report turns ``<<anchor>>`` into a link target and the Markdown drops it.

    Args:
        records: run records (as in ``results.json``) of one grid.
        smoke: the records come from a ``--quick`` smoke test: numbers are shown, verdicts withheld.

    Returns:
        ``{claim key: paragraphs}`` in the order of :data:`CLAIMS`, then ``"statistics"``.
    """
    records = list(records)
    if not records or S.baseline_variant(records) is None:
        why = "no finished runs." if not records else "the baseline ce is not in these runs (add it to --methods)."
        return {**{k: f"Not measured: {why}" for k in CLAIMS}, "statistics": ""}
    c, texts = _collect(records, smoke)
    made = _adjusted(c.made)
    result = {k: "\n\n".join(_fill(t, made) for t in v) for k, v in texts.items()}
    result["statistics"] = _statistics(c, made)
    return result
