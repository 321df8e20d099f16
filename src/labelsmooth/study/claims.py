"""The claim paragraphs: what the numbers say about each of the four claims made for label smoothing.

Every sentence is generated from the run records, so a paragraph says "raised ECE" when smoothing
raised it, and "did not prevent memorisation" when it did not. A difference is called an
improvement or a deterioration only when

* its 95% paired t-interval over seeds excludes zero (with a single seed there is no interval: the
  text says so and only the size of the difference counts), and
* it is at least a practical tolerance (:data:`TOLERANCE`), so that a tiny but consistent change
  is reported as "no clear difference".

Claims (keys of :data:`CLAIMS`):

1. ``noise``: robustness to noisy training labels (test accuracy and memorisation of flipped labels
   at the highest noise rate);
2. ``overfitting``: less overfitting (train-test accuracy gap, rise of the test NLL after its best
   epoch);
3. ``calibration``: better calibration (ECE, NLL, and the comparison with temperature scaling);
4. ``binary``: less effect in binary than in multiclass classification (effect sizes side by side).
"""

from __future__ import annotations

from typing import Sequence

from labelsmooth.study import stats as S
from labelsmooth.study.stats import Estimate, Variant

__all__ = ["CLAIMS", "TOLERANCE", "claim_paragraphs", "verdict"]

#: Claim key -> the claim as usually stated.
CLAIMS: dict[str, str] = {
    "noise": "Label smoothing makes training robust to noisy labels",
    "overfitting": "Label smoothing reduces overfitting",
    "calibration": "Label smoothing improves calibration",
    "binary": "Label smoothing has less effect in binary classification",
}

#: Smallest difference called a change, per metric (absolute; ``nll_rel`` is a relative change).
TOLERANCE: dict[str, float] = {
    "test_accuracy": 0.005,
    "ece": 0.005,
    "nll": 0.01,
    "nll_rel": 0.02,
    "train_test_gap": 0.005,
    "memorized_fraction": 0.05,
}

#: Reference smoothing value for headline sentences (the grid's value closest to it is used).
HEADLINE_EPS = 0.1

#: |mean confidence - accuracy| below this is called "close to calibrated on average".
_CONF_TOL = 0.02


def verdict(diff: Estimate | None, metric: str, lower_is_better: bool) -> str:
    """Classify a paired difference (variant - baseline) as ``"better"``, ``"worse"`` or ``"same"``.

    Args:
        diff: the paired difference, or ``None`` (returns ``"unknown"``).
        metric: key of :data:`TOLERANCE`.
        lower_is_better: True for ECE, NLL, gap, memorisation; False for accuracy.

    Returns:
        ``"better"``, ``"worse"``, ``"same"`` or ``"unknown"``.

    Example:
        >>> from labelsmooth.study.stats import Estimate
        >>> verdict(Estimate(0.1, 0.02, 3), "ece", lower_is_better=True)
        'worse'
        >>> verdict(Estimate(0.1, 0.2, 3), "ece", lower_is_better=True)
        'same'
    """
    if diff is None:
        return "unknown"
    if abs(diff.mean) < TOLERANCE[metric]:
        return "same"
    if diff.half is not None and not diff.excludes_zero:
        return "same"
    improved = diff.mean < 0 if lower_is_better else diff.mean > 0
    return "better" if improved else "worse"


# ----------------------------------------------------------------------------- helpers


def _f(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _diff(d: Estimate | None, d_: int = 3, pct: bool = False) -> str:
    if d is None:
        return "no paired seeds"
    scale, unit = (100, " %") if pct else (1, "")
    dd = 1 if pct else d_
    if d.half is None:
        return f"{d.mean * scale:+.{dd}f}{unit}, one seed"
    return f"{d.mean * scale:+.{dd}f}{unit}, 95% CI {d.low * scale:+.{dd}f} to {d.high * scale:+.{dd}f}"


def _mean(records, ds, v, noise, name) -> float | None:
    e = S.metric(records, ds, v, noise, name)
    return None if e is None else e.mean


def _headline(variants: Sequence[Variant]) -> Variant | None:
    # The smoothing value closest to 0.1 (the usual default); on ties the smaller one.
    if not variants:
        return None
    return min(variants, key=lambda v: (abs(abs(v[1]) - HEADLINE_EPS), abs(v[1])))


def _confidence(conf: float | None, acc: float | None) -> tuple[str, str]:
    """(kind, detail): kind is over-/under-confident or close to calibrated; detail gives the numbers."""
    if conf is None or acc is None:
        return "of unknown confidence", ""
    if conf - acc > _CONF_TOL:
        return "over-confident", f"mean confidence {conf:.3f} > accuracy {acc:.3f}"
    if acc - conf > _CONF_TOL:
        return "under-confident", f"mean confidence {conf:.3f} < accuracy {acc:.3f}"
    return "close to calibrated on average", f"mean confidence {conf:.3f}, accuracy {acc:.3f}"


def _state(kind_detail: tuple[str, str]) -> str:
    kind, detail = kind_detail
    return f"{kind} ({detail})" if detail else kind


def _names(vs: Sequence[Variant]) -> str:
    return ", ".join(S.label(v) for v in vs)


def _sum_up(groups: dict[str, list[str]], what: str, good: str, bad: str) -> str:
    parts = []
    if groups["better"]:
        parts.append(f"{good} on {', '.join(groups['better'])}")
    if groups["worse"]:
        parts.append(f"{bad} on {', '.join(groups['worse'])}")
    if groups["same"]:
        parts.append(f"made no clear difference on {', '.join(groups['same'])}")
    if groups["unknown"]:
        parts.append(f"could not be compared on {', '.join(groups['unknown'])}")
    if not parts:
        return ""
    return f"In sum ({what}), smoothing " + "; ".join(parts) + "."


def _setup(records: Sequence[dict]):
    base = S.baseline_variant(records)
    return base, [d for d in S.datasets(records)]


def _missing_baseline(claim: str) -> str:
    return (f"Not measured: the claim compares smoothing with the unsmoothed baseline (method 'ce'), "
            f"which is not in these runs. Add ce to --methods.")


# ----------------------------------------------------------------------------- claim 3: calibration


def _calibration(records: Sequence[dict]) -> str:
    base, dsets = _setup(records)
    if base is None:
        return _missing_baseline("calibration")
    out: list[str] = []
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": [], "unknown": []}
    for ds in dsets:
        smooth = S.smoothing_variants(records, ds)
        rates = S.noise_rates(records, ds)
        noise = rates[0]
        where = "with clean labels" if noise == 0 else f"at the lowest noise rate in the grid ({noise:g})"
        ece0 = _mean(records, ds, base, noise, "ece")
        if ece0 is None:
            continue
        conf0 = _mean(records, ds, base, noise, "mean_confidence")
        acc0 = _mean(records, ds, base, noise, "test_accuracy")
        nll0 = _mean(records, ds, base, noise, "nll")
        text = (f"On {ds} {where}, the unsmoothed model (ce) had ECE {ece0:.3f} and NLL {nll0:.3f}, and was "
                f"{_state(_confidence(conf0, acc0))}.")
        head = _headline(smooth)
        if head is None:
            out.append(text + " No smoothed model was trained, so there is nothing to compare.")
            continue
        d = S.paired_difference(records, ds, head, base, noise, "ece")
        v = verdict(d, "ece", lower_is_better=True)
        groups[v].append(ds)
        ece_h = _mean(records, ds, head, noise, "ece")
        nll_h = _mean(records, ds, head, noise, "nll")
        kind_h, detail_h = _confidence(_mean(records, ds, head, noise, "mean_confidence"),
                                       _mean(records, ds, head, noise, "test_accuracy"))
        if v == "better":
            text += (f" {S.label(head)} lowered ECE from {ece0:.3f} to {ece_h:.3f} ({_diff(d)}): smoothing improved "
                     f"calibration, and the model became {_state((kind_h, detail_h))}.")
        elif v == "worse":
            kind0 = _confidence(conf0, acc0)[0]
            made = ("made the model more under-confident" if kind_h == kind0 == "under-confident" else
                    "made the model under-confident" if kind_h == "under-confident" else
                    "left the model over-confident" if kind_h == "over-confident" else "did not help")
            text += (f" {S.label(head)} raised ECE from {ece0:.3f} to {ece_h:.3f} ({_diff(d)}): smoothing {made}"
                     + (f" ({detail_h})." if detail_h else "."))
        elif v == "same":
            text += (f" {S.label(head)} left ECE without a clear change ({ece0:.3f} → {ece_h:.3f}, {_diff(d)}).")
        else:
            text += f" {S.label(head)} could not be paired with ce by seed."
        dn = S.paired_difference(records, ds, head, base, noise, "nll")
        vn = verdict(dn, "nll", lower_is_better=True)
        nll_word = {"better": "lowered", "worse": "raised", "same": "did not clearly change"}.get(vn, "changed")
        text += f" It {nll_word} the NLL ({nll0:.3f} → {nll_h:.3f}, {_diff(dn)})."
        if len(smooth) > 1:
            per = {w: [] for w in ("better", "worse", "same", "unknown")}
            for sv in smooth:
                per[verdict(S.paired_difference(records, ds, sv, base, noise, "ece"), "ece", True)].append(sv)
            grid = "; ".join(f"{S.label(sv)} {_f(_mean(records, ds, sv, noise, 'ece'))}" for sv in smooth)
            bits = []
            if per["better"]:
                bits.append(f"lower than ce for {_names(per['better'])}")
            if per["worse"]:
                bits.append(f"higher for {_names(per['worse'])}")
            if per["same"]:
                bits.append(f"not clearly different for {_names(per['same'])}")
            text += f" Over the grid, ECE was {grid} ({'; '.join(bits)})."
        for pv in S.posthoc_variants(records, ds):
            ece_p = _mean(records, ds, pv, noise, "ece")
            if ece_p is None:
                continue
            temp = _mean(records, ds, pv, noise, "temperature")
            best = min(smooth, key=lambda sv: _mean(records, ds, sv, noise, "ece") or float("inf"))
            ece_b = _mean(records, ds, best, noise, "ece")
            dp = S.paired_difference(records, ds, best, pv, noise, "ece")
            vp = verdict(dp, "ece", lower_is_better=True)
            cmp = {"better": "better calibrated than", "worse": "worse calibrated than",
                   "same": "not clearly better calibrated than"}.get(vp, "not comparable with")
            t_txt = "" if temp is None else f" (T = {temp:.2f}, fitted on the validation split)"
            text += (f" Temperature scaling of the ce model{t_txt} reached ECE {ece_p:.3f} without retraining; the "
                     f"best smoothed model ({S.label(best)}, ECE {_f(ece_b)}) was {cmp} it ({_diff(dp)}).")
        out.append(text)
    if not out:
        return "Not measured: no runs with the baseline."
    summary = _sum_up(groups, f"ECE at the eps closest to {HEADLINE_EPS:g}", "improved calibration",
                      "worsened calibration")
    return " ".join(out + [summary]).strip()


# ----------------------------------------------------------------------------- claim 1: noisy labels


def _noise(records: Sequence[dict]) -> str:
    base, dsets = _setup(records)
    if base is None:
        return _missing_baseline("noise")
    out: list[str] = []
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": [], "unknown": []}
    for ds in dsets:
        rates = S.noise_rates(records, ds)
        if not rates or rates[-1] == 0:
            out.append(f"On {ds} no noise rate above 0 was run, so robustness to noise was not measured.")
            continue
        r, r0 = rates[-1], rates[0]
        kinds = {x["noise_kind"] for x in S.cell(records, ds, base, r)}
        kind = "/".join(sorted(kinds)) or "label"
        acc0 = _mean(records, ds, base, r0, "test_accuracy")
        acc = _mean(records, ds, base, r, "test_accuracy")
        if acc is None:
            continue
        clean_txt = f"{acc0:.3f} on clean labels" if r0 == 0 and acc0 is not None else f"{_f(acc0)} at noise {r0:g}"
        text = (f"On {ds} with {r:.0%} {kind} noise on the training labels, ce test accuracy was {acc:.3f} "
                f"(vs {clean_txt}).")
        best_ce = _mean(records, ds, base, r, "best_test_accuracy")
        best_ep = _mean(records, ds, base, r, "best_test_accuracy_epoch")
        if best_ce is not None and best_ce - acc > 0.01:
            text += (f" During training it peaked at {best_ce:.3f} (around epoch {best_ep:.0f}) and fell as the noise "
                     f"was fitted; early stopping, which the study does not use, would have kept that.")
        smooth = S.smoothing_variants(records, ds)
        if not smooth:
            out.append(text + " No smoothed model was trained.")
            continue
        accs = {sv: _mean(records, ds, sv, r, "test_accuracy") for sv in smooth}
        best = max(smooth, key=lambda sv: accs[sv] if accs[sv] is not None else -1.0)
        d = S.paired_difference(records, ds, best, base, r, "test_accuracy")
        v = verdict(d, "test_accuracy", lower_is_better=False)
        groups[v].append(ds)
        grid = "; ".join(f"{S.label(sv)} {_f(accs[sv])}" for sv in smooth)
        word = {"better": "helped", "worse": "hurt", "same": "made no clear difference"}.get(v, "could not be compared")
        if len(smooth) > 1:
            lead = "The best" if v == "better" else "Even the best"
            text += f" With smoothing: {grid}. {lead}, {S.label(best)}, changed it by {_diff(d)}: smoothing {word}."
        else:
            text += f" With {S.label(best)} it was {_f(accs[best])} ({_diff(d)}): smoothing {word}."
        mem0 = _mean(records, ds, base, r, "memorized_fraction")
        mems = {sv: _mean(records, ds, sv, r, "memorized_fraction") for sv in smooth}
        if mem0 is not None:
            text += (f" The ce model memorised {_pct(mem0)} of the flipped training labels (predicted the wrong label "
                     f"it was given; 0% would mean every flipped example is still predicted as its true class), "
                     f"with smoothing " + "; ".join(f"{S.label(sv)} {_pct(m)}" for sv, m in mems.items()) + ".")
            text += " " + _memorisation_verdict(mem0, [m for m in mems.values() if m is not None])
        out.append(text)
    summary = _sum_up(groups, "test accuracy at the highest noise rate, best eps", "helped", "hurt")
    return " ".join(out + [summary]).strip()


def _memorisation_verdict(mem0: float, smoothed: list[float]) -> str:
    if not smoothed:
        return ""
    least, most = min(smoothed), max(smoothed)
    tol = TOLERANCE["memorized_fraction"]
    if mem0 < 0.5 and least >= mem0 - tol:
        more = " (smoothing memorised more)" if most > mem0 + tol else ""
        return ("By the last epoch neither model had memorised most flipped labels, so with this training budget "
                f"there was little memorisation for smoothing to prevent{more}.")
    if least >= mem0 - tol:
        return "Smoothing did not prevent memorisation of the flipped labels."
    if least > 0.5:
        return f"Smoothing reduced memorisation (to {_pct(least)} at best) but did not prevent it."
    return f"Smoothing reduced memorisation substantially (from {_pct(mem0)} to {_pct(least)} at best)."


# ----------------------------------------------------------------------------- claim 2: overfitting


def _overfitting(records: Sequence[dict]) -> str:
    base, dsets = _setup(records)
    if base is None:
        return _missing_baseline("overfitting")
    out: list[str] = []
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": [], "unknown": []}
    for ds in dsets:
        rates = S.noise_rates(records, ds)
        r0 = rates[0]
        gap0 = _mean(records, ds, base, r0, "train_test_gap")
        if gap0 is None:
            continue
        tr = _mean(records, ds, base, r0, "train_accuracy")
        te = _mean(records, ds, base, r0, "test_accuracy")
        where = "with clean labels" if r0 == 0 else f"at noise {r0:g}"
        text = (f"On {ds} {where}, ce reached train accuracy {tr:.3f} and test accuracy {te:.3f}, a train-test gap "
                f"of {gap0:.3f}.")
        head = _headline(S.smoothing_variants(records, ds))
        if head is None:
            out.append(text + " No smoothed model was trained.")
            continue
        d = S.paired_difference(records, ds, head, base, r0, "train_test_gap")
        v = verdict(d, "train_test_gap", lower_is_better=True)
        groups[v].append(ds)
        gap_h = _mean(records, ds, head, r0, "train_test_gap")
        tr_h, te_h = _mean(records, ds, head, r0, "train_accuracy"), _mean(records, ds, head, r0, "test_accuracy")
        verb = {"better": "narrowed the gap to", "worse": "widened the gap to",
                "same": "left the gap without a clear change at"}.get(v, "gave a gap of")
        text += (f" {S.label(head)} {verb} {_f(gap_h)} ({_diff(d)}; train {_f(tr_h)}, test {_f(te_h)}).")
        rise0 = _nll_rise(records, ds, base, r0)
        rise_h = _nll_rise(records, ds, head, r0)
        if rise0 is not None and rise_h is not None:
            if max(rise0, rise_h) < TOLERANCE["nll"]:
                text += " Neither model's test NLL rose after its best epoch."
            else:
                less = rise_h < rise0 - TOLERANCE["nll"]
                text += (f" After its best epoch the test NLL rose by {rise0:.3f} with ce and by {rise_h:.3f} with "
                         f"{S.label(head)}: this probabilistic sign of overfitting was "
                         f"{'smaller' if less else 'not smaller'} with smoothing.")
        if rates[-1] > r0:
            r = rates[-1]
            g = _mean(records, ds, base, r, "train_test_gap")
            gh = _mean(records, ds, head, r, "train_test_gap")
            dn = S.paired_difference(records, ds, head, base, r, "train_test_gap")
            vn = verdict(dn, "train_test_gap", lower_is_better=True)
            word = {"better": "smaller", "worse": "larger", "same": "not clearly different"}.get(vn, "not comparable")
            text += (f" At {r:.0%} noise the gap (accuracy on the noisy training labels minus clean test accuracy) was "
                     f"{_f(g)} with ce and {_f(gh)} with {S.label(head)}: {word} ({_diff(dn)}).")
            if g is not None and g < 0:
                text += " A negative gap means the model had not fitted the noisy labels."
        out.append(text)
    summary = _sum_up(groups, f"train-test gap, eps closest to {HEADLINE_EPS:g}", "reduced overfitting",
                      "increased overfitting")
    return " ".join(out + [summary]).strip()


def _nll_rise(records, ds, v, noise) -> float | None:
    rises = [r["nll"] - r["min_test_nll"] for r in S.cell(records, ds, v, noise)
             if r.get("nll") is not None and r.get("min_test_nll") is not None]
    return sum(rises) / len(rises) if rises else None


# ----------------------------------------------------------------------------- claim 4: binary


def effect_sizes(records: Sequence[dict], variant: Variant, noise_rate: float) -> dict[str, dict[str, Estimate | None]]:
    """Paired effects of ``variant`` vs the baseline per dataset: ΔECE, Δaccuracy, relative ΔNLL.

    Args:
        records: run records.
        variant: the smoothing variant.
        noise_rate: the noise rate of the comparison.

    Returns:
        ``{dataset: {"ece": Estimate, "test_accuracy": Estimate, "nll_rel": Estimate}}``.
    """
    base = S.baseline_variant(records)
    out = {}
    for ds in S.datasets(records):
        if base is None:
            continue
        out[ds] = {
            "ece": S.paired_difference(records, ds, variant, base, noise_rate, "ece"),
            "test_accuracy": S.paired_difference(records, ds, variant, base, noise_rate, "test_accuracy"),
            "nll_rel": S.paired_difference(records, ds, variant, base, noise_rate, "nll", relative=True),
        }
    return out


def _binary(records: Sequence[dict]) -> str:
    base, dsets = _setup(records)
    if base is None:
        return _missing_baseline("binary")
    is_bin = {ds: S.cell(records, ds, base, S.noise_rates(records, ds)[0])[0]["binary"]
              for ds in dsets if S.cell(records, ds, base, S.noise_rates(records, ds)[0])}
    binary = [d for d, b in is_bin.items() if b]
    multi = [d for d, b in is_bin.items() if not b]
    if not binary or not multi:
        return ("Not measured: the comparison needs at least one binary and one multiclass dataset in --datasets "
                f"(binary: {', '.join(binary) or 'none'}; multiclass: {', '.join(multi) or 'none'}).")
    noise = min(S.noise_rates(records))
    shared = set(S.smoothing_variants(records, binary[0]))
    for ds in binary[1:] + multi:
        shared &= set(S.smoothing_variants(records, ds))
    head = _headline(sorted(shared, key=lambda v: v[1]))
    if head is None:
        return "Not measured: no smoothing value was run on both the binary and the multiclass datasets."
    eff = effect_sizes(records, head, noise)
    where = "clean labels" if noise == 0 else f"noise {noise:g}"
    text = (f"With {S.label(head)} and {where}, compared with ce on the same seeds: ")
    names = {"ece": ("ECE", False), "test_accuracy": ("test accuracy", False), "nll_rel": ("NLL", True)}
    parts, conclusions = [], []
    for key, (title, rel) in names.items():
        def show(ds):
            e = eff[ds][key]
            return f"{ds} {_diff(e, pct=rel)}"
        parts.append(f"{title} changed by " + "; ".join(show(d) + " (binary)" for d in binary) + " vs "
                     + "; ".join(show(d) for d in multi) + (" (relative change)" if rel else ""))
        b = [abs(eff[d][key].mean) for d in binary if eff[d][key] is not None]
        m = [abs(eff[d][key].mean) for d in multi if eff[d][key] is not None]
        if not b or not m:
            continue
        mb, mm = sum(b) / len(b), sum(m) / len(m)
        tol = TOLERANCE[key]
        # Magnitudes of changes that are all within seed noise say nothing about which is larger.
        clear = {d: verdict(eff[d][key], key, lower_is_better=True) in ("better", "worse") for d in binary + multi}
        clear_multi = {d: abs(eff[d][key].mean) for d in multi if clear[d]}
        if not any(clear.values()):
            conclusions.append(f"not distinguishable for {title}: smoothing had no clear effect on it on any dataset")
        elif not any(clear[d] for d in binary):
            named = ", ".join(f"{d} |Δ| {v:.3f}" for d, v in clear_multi.items())
            if mb < min(clear_multi.values()) - tol / 2:
                conclusions.append(f"smaller for {title}: no clear change in the binary task (|Δ| {mb:.3f}) while "
                                   f"the multiclass change was clear ({named})")
            else:
                conclusions.append(f"inconclusive for {title}: the binary change (|Δ| {mb:.3f}) was not "
                                   f"distinguishable from zero, yet not smaller than the clear multiclass change "
                                   f"({named})")
        elif mb < min(m) - tol / 2:
            conclusions.append(f"smaller for {title} than on every multiclass dataset (|Δ| {mb:.3f} vs {min(m):.3f}"
                               f"–{max(m):.3f})")
        elif mb < mm - tol / 2:
            conclusions.append(f"smaller for {title} than the multiclass average (|Δ| {mb:.3f} vs {mm:.3f}) but not "
                               "than every multiclass dataset")
        else:
            conclusions.append(f"NOT smaller for {title} (|Δ| {mb:.3f} binary vs {mm:.3f} multiclass)")
    k = max(S.cell(records, multi[0], base, noise)[0]["num_classes"], 3)
    eps = head[1]
    text += "; ".join(parts) + ". "
    text += "The effect in the binary task was " + "; ".join(conclusions) + ". " if conclusions else ""
    text += (f"Part of this is arithmetic: with eps={eps:g} the smoothed target caps a binary model's confidence at "
             f"1 - eps/2 = {1 - eps / 2:.3f} but a {k}-class model's at 1 - eps + eps/K = {1 - eps + eps / k:.3f}. "
             "The datasets also differ in size and difficulty, so this compares tasks, not only the number of classes.")
    return text


# ----------------------------------------------------------------------------- entry point


def claim_paragraphs(records: Sequence[dict]) -> dict[str, str]:
    """One paragraph per claim, generated from the run records.

    Args:
        records: run records (as in ``results.json``); they should come from one grid (one training
            configuration).

    Returns:
        ``{claim key: paragraph}`` in the order of :data:`CLAIMS`.

    Example:
        >>> rec = lambda m, eps, ece, seed: dict(dataset="toy", method=m, label_smoothing=eps, noise_rate=0.0,
        ...     noise_kind="none", seed=seed, ece=ece, nll=0.2, mean_confidence=0.97, test_accuracy=0.97,
        ...     train_accuracy=1.0, train_test_gap=0.03, num_classes=10, binary=False)
        >>> rs = [rec("ce", 0.0, 0.02, s) for s in range(3)] + [rec("ls", 0.1, 0.12 + s / 100, s) for s in range(3)]
        >>> "raised ECE from 0.020 to 0.130" in claim_paragraphs(rs)["calibration"]
        True
    """
    records = list(records)
    if not records:
        return {k: "Not measured: no finished runs." for k in CLAIMS}
    return {
        "noise": _noise(records),
        "overfitting": _overfitting(records),
        "calibration": _calibration(records),
        "binary": _binary(records),
    }
