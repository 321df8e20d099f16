"""``evaluate`` and ``compare``: metrics with bootstrap intervals, paired differences and their verdicts."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from labelsmooth.evaluation import bootstrap as B
from labelsmooth.evaluation import engine as E
from labelsmooth.evaluation.multiplicity import ALPHA, PAIRED_OUTCOMES, decide, holm, holm_levels

__all__ = [
    "METRICS",
    "Comparison",
    "Difference",
    "Estimate",
    "EvaluationResult",
    "aurc",
    "compare",
    "evaluate",
    "interval",
]

#: The metrics, in report order, and whether higher is better.
METRICS = ("accuracy", "nll", "brier", "ece", "ece_quantile", "classwise_ece", "mce", "aurc")
HIGHER_IS_BETTER = {"accuracy"}
#: Metrics that count errors per example: their tolerance in a comparison is 2 / n_test.
PER_EXAMPLE = {"accuracy", "aurc"}
#: Binned calibration errors: a sum of absolute bin gaps, which resampling noise inflates (every bin's
#: |gap| grows on average), so their replicates sit above the estimate; their intervals are centred on it.
BINNED = {"ece", "ece_quantile", "classwise_ece", "mce"}
#: Suffix of a comparison's metric measured after temperature scaling (``"nll_after_t"``).
AFTER_T = "_after_t"
_EULER = 0.5772156649015329


@dataclass(frozen=True)
class Estimate:
    """A metric on the test rows with its bootstrap interval (``low``/``high`` None without resamples): the
    percentile interval, for the binned calibration errors centred on the estimate (see :func:`interval`)."""

    value: float
    low: float | None = None
    high: float | None = None

    def text(self, digits: int = 4) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def interval(
    replicates: np.ndarray, value: float, level: float, centred: bool, lower: float | None = None
) -> tuple[float, float]:
    """Bootstrap interval at ``level`` of an estimate ``value`` from its ``replicates``.

    Not centred: the percentile interval (the replicates' quantiles at ``(1 - level) / 2`` and
    ``(1 + level) / 2``). Centred: the same quantiles shifted by ``value - median(replicates)``, so the
    interval keeps the replicates' spread but sits on the estimate; ``lower`` then clamps its low end (0 for
    a calibration error). This is for statistics whose replicates are biased away from the estimate by the
    resampling itself: a binned calibration error sums absolute bin gaps, and resampling noise adds to
    every gap's absolute value, so a resample's ECE exceeds the sample's on average and, where the gaps are
    small (class-wise ECE), the whole percentile interval can lie above the estimate. The centred interval
    says how far the estimate moves between samples of this size; like the estimate itself, it is not
    corrected for the binned estimator's own upward bias against the true calibration error.

    Args:
        replicates: ``(R,)`` the statistic on each resample.
        value: the statistic on the sample.
        level: the confidence level, in (0, 1).
        centred: shift the interval onto ``value``.
        lower: the statistic's smallest possible value (clamps a centred interval), or None.

    Returns:
        ``(low, high)``; a centred interval always contains ``value``.

    Example:
        >>> import numpy as np
        >>> reps = np.array([0.14, 0.15, 0.16, 0.17, 0.18])
        >>> [round(x, 3) for x in interval(reps, 0.11, 0.5, centred=False)]
        [0.15, 0.17]
        >>> [round(x, 3) for x in interval(reps, 0.11, 0.5, centred=True, lower=0.0)]
        [0.1, 0.12]
    """
    lo, med, hi = np.quantile(replicates, [(1 - level) / 2, 0.5, (1 + level) / 2])
    if not centred:
        return float(lo), float(hi)
    shift = value - med
    low = float(lo + shift)
    return (low if lower is None else max(lower, low)), float(hi + shift)


# ----------------------------------------------------------------------------- AURC


def _aurc_weighted(w: torch.Tensor, err: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """AURC of examples sorted by descending confidence, ``w`` their weights, ``group`` the id of their tie
    group: the definition whose derivative :func:`_aurc_parts` writes out (the tests compare the two).
    Within a tie group errors enter at the group's rate (the expectation over orders of the ties); harmonic
    numbers are ``digamma(x + 1) + Euler's constant`` so the weights may be real."""
    gw = torch.zeros(n_groups, dtype=w.dtype).index_add(0, group, w)
    ge = torch.zeros(n_groups, dtype=w.dtype).index_add(0, group, w * err)
    cw, ce = torch.cumsum(gw, 0), torch.cumsum(ge, 0)
    pw, pe = cw - gw, ce - ge
    rate = torch.where(gw > 0, ge / gw.clamp(min=1e-300), torch.zeros_like(gw))
    dh = torch.special.digamma(cw + 1) - torch.special.digamma(pw + 1)
    out: torch.Tensor = ((pe - pw * rate) * dh + ge).sum() / cw[-1]
    return out


def _aurc_parts(conf: np.ndarray, correct: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(aurc, influence, coverage, risk)``: the influence is dAURC/dw_i at unit weights (original row order);
    coverage and risk are at the end of each tie group, in order of descending confidence.

    The derivative of :func:`_aurc_weighted` is written out per tie group (with suffix sums over the later
    groups) rather than taken by autograd, which would keep a dozen N-long temporaries alive at once; the
    arithmetic is in place where it can be, so a few N-long arrays are alive at any time."""
    n = conf.shape[0]
    order = np.argsort(-conf, kind="stable")
    new = np.empty(n, dtype=bool)
    new[0] = True
    sc = conf[order]
    np.not_equal(sc[1:], sc[:-1], out=new[1:])
    del sc
    ends = np.flatnonzero(np.r_[new[1:], True])
    group = np.cumsum(new, dtype=np.int32 if n < 2**31 else np.int64)
    group -= 1
    del new
    err_sorted = ~correct[order]
    cw = np.add(ends, 1, dtype=np.float64)  # weight up to the end of each group (unit weights)
    ce = np.cumsum(err_sorted, dtype=np.float64)[ends]  # errors up to each group's end
    del ends
    coverage, risk = cw / n, ce / cw
    gw = np.diff(cw, prepend=0.0)
    ge = np.diff(ce, prepend=0.0)
    pw = cw - gw
    c = ce - ge  # pe
    del ce
    rate = ge / gw
    c -= pw * rate  # c = pe - pw * rate
    dh = torch.special.digamma(torch.from_numpy(cw + 1)).numpy()
    dh -= torch.special.digamma(torch.from_numpy(pw + 1)).numpy()
    total = float(np.dot(c, dh) + ge.sum()) / n
    # dS/dge_j = sum_{g>j} dh_g - pw_j / gw_j * dh_j + 1
    d_ge = np.cumsum(dh[::-1])[::-1] - dh
    d_ge -= pw / gw * dh
    d_ge += 1
    # dS/dgw_j = sum_{g>j} (-rate_g dh_g - c_g psi1(pw_g + 1)) + sum_{g>=j} c_g psi1(cw_g + 1) + pw_j ge_j / gw_j^2 dh_j
    ge *= pw
    ge /= gw**2
    ge *= dh  # ge now holds pw ge / gw^2 dh
    rate *= dh
    np.negative(rate, out=rate)
    rate -= c * torch.polygamma(1, torch.from_numpy(pw + 1)).numpy()  # rate now holds via_pw
    d_gw = np.cumsum(rate[::-1])[::-1] - rate
    del rate, dh, pw, gw
    c *= torch.polygamma(1, torch.from_numpy(cw + 1)).numpy()  # c now holds via_cw
    d_gw += np.cumsum(c[::-1])[::-1]
    d_gw += ge
    del c, ge, cw
    d_gw -= total
    sorted_influence = d_gw[group]
    sorted_influence += err_sorted * d_ge[group]
    sorted_influence /= n
    del group, err_sorted, d_gw, d_ge
    influence = np.empty(n)
    influence[order] = sorted_influence
    return total, influence, coverage, risk


def aurc(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage curve: the mean, over coverages k/N, of the error rate among the k most
    confident examples (ties in confidence enter together, at their group's error rate).

    Args:
        confidence: ``(N,)`` top-label probabilities.
        correct: ``(N,)`` bools, whether the top label is right.

    Returns:
        AURC in [0, 1] (lower is better).

    Example:
        >>> import numpy as np
        >>> round(aurc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True])), 4)
        0.2708

    References:
        Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017;
        Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019.
    """
    return _aurc_parts(np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool))[0]


# ----------------------------------------------------------------------------- metrics of Stats


def _slots(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    uniform = (torch.bucketize(torch.from_numpy(conf), edges, right=True) - 1).numpy()
    n = conf.shape[0]
    order = np.argsort(conf, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return uniform, ranks * n_bins // n


@dataclass
class _Scored:
    metrics: dict[str, Estimate]
    replicates: dict[str, np.ndarray]
    reliability: dict[str, list[float]]
    coverage: np.ndarray
    risk: np.ndarray
    stats: E.Stats


def _score(s: E.Stats, n_bins: int, n_bootstrap: int, level: float, seed: int) -> _Scored:
    n = s.conf.shape[0]
    ns = n_bins + 1
    d = s.correct.astype(np.float64) - s.conf
    uni, qua = _slots(s.conf, n_bins)
    sum_u = np.bincount(uni, weights=d, minlength=ns)
    cnt_u = np.bincount(uni, minlength=ns)
    sum_q = np.bincount(qua, weights=d, minlength=n_bins)
    a, influence, coverage, risk = _aurc_parts(s.conf, s.correct)
    gap = np.abs(sum_u) / np.maximum(cnt_u, 1)
    point = {
        "accuracy": float(s.correct.mean()),
        "nll": float(s.nll.mean()),
        "brier": float(s.brier.mean()),
        "ece": float(np.abs(sum_u).sum() / n),
        "ece_quantile": float(np.abs(sum_q).sum() / n),
        "classwise_ece": float(np.abs(s.cw_y - s.cw_p).sum() / n / s.num_classes),
        "mce": float(gap[cnt_u > 0].max()),
        "aurc": a,
    }
    reps: dict[str, np.ndarray] = {}
    if n_bootstrap:
        eye_u = torch.eye(ns, dtype=torch.float32)
        eye_q = torch.eye(n_bins, dtype=torch.float32)
        base_np = np.empty((n, 5), dtype=np.float32)  # filled column by column: no float64 (n, 5) stack
        base_np[:, 0] = 1.0
        cols: tuple[np.ndarray, ...] = (s.correct, s.nll, s.brier, influence)
        for j, col in enumerate(cols, start=1):
            base_np[:, j] = col
        base = torch.from_numpy(base_np)
        d32 = torch.from_numpy(d.astype(np.float32))
        uni_t, qua_t = torch.from_numpy(uni), torch.from_numpy(qua)

        def features(r0: int, r1: int) -> torch.Tensor:
            onehot_u = eye_u[uni_t[r0:r1]]
            dd = d32[r0:r1, None]
            return torch.cat([base[r0:r1], dd * onehot_u, onehot_u, dd * eye_q[qua_t[r0:r1]]], dim=1)

        S = B.weighted_sums(features, n, 5 + 2 * ns + n_bins, n_bootstrap, seed)
        w = S[:, 0]
        su, cu, sq = S[:, 5 : 5 + ns], S[:, 5 + ns : 5 + 2 * ns], S[:, 5 + 2 * ns :]
        with np.errstate(invalid="ignore", divide="ignore"):
            mce = np.where(cu > 0.5, np.abs(su) / cu, 0.0).max(axis=1)
        reps = {
            "accuracy": S[:, 1] / w,
            "nll": S[:, 2] / w,
            "brier": S[:, 3] / w,
            "ece": np.abs(su).sum(axis=1) / w,
            "ece_quantile": np.abs(sq).sum(axis=1) / w,
            "mce": mce,
            "aurc": a - influence.sum() + S[:, 4],
        }
        if s.cw_reps is not None:
            reps["classwise_ece"] = s.cw_reps
    metrics = {}
    for m in METRICS:
        if m in reps:
            lo, hi = interval(reps[m], point[m], level, m in BINNED, 0.0)
            metrics[m] = Estimate(point[m], lo, hi)
        else:
            metrics[m] = Estimate(point[m])
    closed = np.minimum(uni, n_bins - 1)
    cnt = np.bincount(closed, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = {
            "edges": np.linspace(0, 1, n_bins + 1).tolist(),
            "confidence": (np.bincount(closed, weights=s.conf, minlength=n_bins) / cnt).tolist(),
            "accuracy": (np.bincount(closed, weights=s.correct.astype(np.float64), minlength=n_bins) / cnt).tolist(),
            "count": cnt.tolist(),
        }
    return _Scored(metrics, reps, rel, coverage, risk, s)


# ----------------------------------------------------------------------------- results


@dataclass
class EvaluationResult:
    """One model's metrics on its test rows, with bootstrap intervals (see :func:`evaluate`).

    Attributes:
        name: the model's name in reports.
        n: number of test rows.
        num_classes: K (2 for binary scores).
        kind: ``"logits"`` or ``"probs"`` (as given or detected).
        metrics: metric name -> :class:`Estimate` (``value``, ``low``, ``high``), for :data:`METRICS`.
        temperature: T fitted on the validation rows, or None without them.
        scaled: the same metrics on the test rows after dividing the logits by T, or None.
        risk_coverage: ``(coverage, risk)`` arrays, at the end of each group of tied confidences.
        reliability: equal-width bins: ``edges``, mean ``confidence``, ``accuracy``, ``count``.
        confidence, correct, nll, brier: per-example arrays (N each), kept for pairing.
        labels: the test rows' labels (N), checked row for row by :func:`compare`.
        n_bootstrap, level, n_bins, seed: the settings; classwise_resamples: resamples behind the
            class-wise ECE's interval (fewer than ``n_bootstrap`` on very large inputs).
    """

    name: str
    n: int
    num_classes: int
    kind: str
    metrics: dict[str, Estimate]
    temperature: float | None
    scaled: dict[str, Estimate] | None
    risk_coverage: tuple[np.ndarray, np.ndarray]
    reliability: dict[str, list[float]]
    confidence: np.ndarray = field(repr=False)
    correct: np.ndarray = field(repr=False)
    nll: np.ndarray = field(repr=False)
    brier: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    n_bootstrap: int = 1000
    level: float = 0.95
    n_bins: int = 15
    seed: int = 0
    classwise_resamples: int = 0
    replicates: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    scaled_replicates: dict[str, np.ndarray] | None = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no per-example arrays; the risk-coverage curve thinned to at most 1001 points)."""
        cov, risk = self.risk_coverage
        keep = np.unique(np.linspace(0, cov.shape[0] - 1, min(cov.shape[0], 1001)).round().astype(np.int64))
        return {
            "name": self.name,
            "n": self.n,
            "num_classes": self.num_classes,
            "kind": self.kind,
            "metrics": {k: _est_dict(v) for k, v in self.metrics.items()},
            "temperature": self.temperature,
            "scaled": None if self.scaled is None else {k: _est_dict(v) for k, v in self.scaled.items()},
            "risk_coverage": {"coverage": cov[keep].tolist(), "risk": risk[keep].tolist()},
            "reliability": {k: [_num(x) for x in v] for k, v in self.reliability.items()},
            "settings": {
                "n_bootstrap": self.n_bootstrap,
                "level": self.level,
                "n_bins": self.n_bins,
                "seed": self.seed,
                "classwise_resamples": self.classwise_resamples,
            },
        }

    def _rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for m in METRICS:
            after = self.scaled[m].text() if self.scaled else ""
            rows.append((LABELS[m], self.metrics[m].text(), after))
        return rows

    def to_markdown(self) -> str:
        """The metrics as a Markdown table (with the temperature-scaled column when there is one)."""
        pct = f"{100 * self.level:g}%"
        head = f"## {self.name}\n\n{self.n} test rows, {self.num_classes} classes, scores given as {self.kind}. "
        head += f"Intervals: {pct} bootstrap (percentile; centred on the estimate for ECE, class-wise ECE and MCE), "
        head += f"{self.n_bootstrap} resamples"
        if self.classwise_resamples and self.classwise_resamples < self.n_bootstrap:
            head += f" ({self.classwise_resamples} for class-wise ECE)"
        head += ".\n"
        if self.temperature is not None:
            head += f"Temperature fitted on the validation rows: T = {self.temperature:.4g}.\n"
        cols = ["metric", "value [interval]"] + (["after temperature scaling"] if self.scaled else [])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for label, v, after in self._rows():
            lines.append("| " + " | ".join([label, v] + ([after] if self.scaled else [])) + " |")
        return head + "\n" + "\n".join(lines) + "\n"

    def figures(self) -> dict[str, bytes]:
        """PNG images: ``reliability`` (labelsmooth.plots) and ``risk_coverage``; needs matplotlib."""
        from labelsmooth import plots

        rel = plots.reliability_diagram(
            self.confidence, self.correct.astype(np.int64), self.n_bins, title=self.name, binary_mode="positive"
        )
        fig = plots._new_figure((5.0, 4.0))
        ax = fig.subplots()
        cov, risk = self.risk_coverage
        ax.plot(cov, risk, label=f"{self.name} (AURC = {self.metrics['aurc'].value:.4f})")
        ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage", ylabel="risk (error rate)", title="Risk-coverage")
        ax.legend(fontsize=plots.LEGEND_FONTSIZE)
        return {"reliability": _png(rel), "risk_coverage": _png(fig)}

    def to_html(self) -> str:
        """A self-contained HTML page: the table, the reliability diagram and the risk-coverage curve (inline PNG)."""
        return _page(self.name, _html_table(self) + _html_figures(self))


LABELS = {
    "accuracy": "accuracy",
    "nll": "NLL",
    "brier": "Brier",
    "ece": "ECE (equal-width)",
    "ece_quantile": "ECE (equal-mass)",
    "classwise_ece": "class-wise ECE",
    "mce": "MCE",
    "aurc": "AURC",
}
LABELS.update({m + AFTER_T: LABELS[m] + " after T" for m in METRICS})


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _est_dict(e: Estimate) -> dict[str, float | None]:
    return {
        "value": _num(e.value),
        "low": None if e.low is None else _num(e.low),
        "high": None if e.high is None else _num(e.high),
    }


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _page(title: str, body: str) -> str:
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 20px;color:#222}"
        "table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}img{max-width:100%}.better{background:#d7f0d2}"
        ".worse{background:#f6d0cc}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body>{body}</body></html>"
    )


def _html_table(r: EvaluationResult) -> str:
    head = (
        "<tr><th>metric</th><th>value [interval]</th>"
        + ("<th>after temperature scaling</th>" if r.scaled else "")
        + "</tr>"
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (row if r.scaled else row[:2])) + "</tr>"
        for row in r._rows()
    )
    md = r.to_markdown().split("\n\n", 1)[1].split("\n|", 1)[0]
    return f"<h2>{html.escape(r.name)}</h2><p>{html.escape(md)}</p><table>{head}{body}</table>"


def _html_figures(r: EvaluationResult) -> str:
    try:
        figs = r.figures()
    except ImportError:
        return "<p><em>Figures need matplotlib (pip install matplotlib).</em></p>"
    return "".join(
        f"<img alt='{k}' src='data:image/png;base64,{base64.b64encode(v).decode('ascii')}'>" for k, v in figs.items()
    )


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    scores: Any,
    labels: Any,
    *,
    split: Any = None,
    val_scores: Any = None,
    val_labels: Any = None,
    kind: str = "auto",
    n_bootstrap: int = 1000,
    level: float = 0.95,
    n_bins: int = 15,
    seed: int = 0,
    chunk_rows: int | None = None,
    name: str | None = None,
) -> EvaluationResult:
    """Score one model's predictions: metrics with bootstrap intervals, temperature scaling, selective classification.

    The scores are read ``chunk_rows`` rows at a time and each chunk is converted to float32 (float64 stays
    float64), so a float16 ``np.memmap`` of 10 million x 1000 is never copied whole; what is kept is a few
    numbers per example. Metrics (on the test rows): accuracy, NLL, Brier (multiclass: summed over classes,
    in [0, 2]; binary: ``(p - y)^2``), ECE with 15 equal-width bins (top label; the edges and bins of
    :func:`labelsmooth.calibration.expected_calibration_error`, hence torchmetrics'), ECE with equal-mass
    bins, class-wise ECE, MCE, and AURC (risk = error rate, confidence = top-label probability). Each has an
    interval from a Poisson bootstrap over the examples (:mod:`labelsmooth.evaluation.bootstrap`): the
    percentile interval, for the binned calibration errors centred on the estimate (:func:`interval`).

    ``kind="auto"`` reads the scores as probabilities when every row lies in [0, 1] and sums to 1 (within
    1e-3; 2**-8 for half precision), binary scores when every value lies in [0, 1]; otherwise as logits.

    Args:
        scores: ``(N, K)`` logits or probabilities, or ``(N,)`` binary scores (log-odds or P(y=1)); a numpy
            array (``np.memmap`` included) or a torch tensor, of any float dtype.
        labels: ``(N,)`` integer class indices.
        split: optional ``(N,)`` array: ``"val"``/``"test"``, or bool/0-1 (True/1 = test). Validation rows
            fit the temperature and nothing else; test rows are scored.
        val_scores: the scores of a separate validation set, instead of ``split`` (every row of ``scores`` is
            then a test row).
        val_labels: the labels of that validation set.
        kind: ``"logits"``, ``"probs"`` or ``"auto"``.
        n_bootstrap: resamples for the intervals (0: none).
        level: the intervals' confidence level.
        n_bins: bins of the binned calibration errors.
        seed: seed of the resampling weights (the same seed pairs two models' resamples).
        chunk_rows: rows per chunk (default: about 64 MiB of float32 work).
        name: the model's name in reports (default ``"model"``).

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        TypeError: arguments of the wrong type or dtype.
        ValueError: shape mismatch, labels out of range, rows of probabilities that do not sum to 1 or
            logits with ``kind="probs"``, NaN or infinite scores, split values other than val/test, no test rows.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 3 * torch.randn(2000, 5, generator=g)
        >>> labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
        >>> split = torch.arange(2000) % 4 == 0  # a quarter of the rows are test rows
        >>> res = evaluate(2 * logits, labels, split=split, n_bootstrap=200)
        >>> 1.8 < res.temperature < 2.3, res.n
        (True, 500)
        >>> e = res.metrics["ece"]
        >>> e.low <= e.value <= e.high and res.scaled["ece"].value < e.value
        True

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (ECE,
        temperature scaling); Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019
        (class-wise and equal-mass ECE); Geifman & El-Yaniv, NeurIPS 2017 (risk-coverage);
        Hanley & MacGibbon, "Creating non-parametric bootstrap samples using Poisson frequencies", 2006.
    """
    s = E.check_scores(scores, "scores")
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'logits', 'probs' or 'auto', got {kind!r}")
    n_bootstrap = E.check_int(n_bootstrap, "n_bootstrap", 0)
    n_bins = E.check_int(n_bins, "n_bins", 1)
    level = E.check_level(level)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    n_all = int(s.shape[0])
    k = 2 if s.ndim == 1 else int(s.shape[1])
    y = E.check_labels(labels, n_all, k)
    if chunk_rows is None:
        chunk_rows = E.default_chunk_rows(1 if s.ndim == 1 else k)
    chunk_rows = E.check_int(chunk_rows, "chunk_rows", 1)
    if split is not None and (val_scores is not None or val_labels is not None):
        raise ValueError("pass either split or val_scores/val_labels, not both")
    if (val_scores is None) != (val_labels is None):
        raise ValueError("val_scores and val_labels go together: pass both or neither")
    test_rows = val_rows = None
    vs, vy = None, None
    if split is not None:
        mask = E.check_split(split, n_all)
        test_rows, val_rows = np.flatnonzero(mask), np.flatnonzero(~mask)
        if test_rows.size == 0:
            raise ValueError(f"split marks no row as test (all {n_all} rows are validation rows); nothing to score")
        vs, vy = (s, y[val_rows]) if val_rows.size else (None, None)
        if val_rows.size == 0:
            val_rows = None
    elif val_scores is not None:
        vs = E.check_scores(val_scores, "val_scores")
        if vs.ndim != s.ndim or (s.ndim == 2 and vs.shape[1] != k):
            raise ValueError(
                f"val_scores must have shape (M, {k})" if s.ndim == 2 else "val_scores must be 1-D like scores"
            )
        vy = E.check_labels(val_labels, int(vs.shape[0]), k, "val_labels", "val_scores")
    if n_all == 0:
        raise ValueError("scores has no rows; nothing to score")
    y_test = y if test_rows is None else y[test_rows]
    n = int(y_test.shape[0])
    if kind == "auto":
        kind = E.detect_kind(s, test_rows, chunk_rows, "scores")
    elif kind == "logits" and E.detect_kind(s, test_rows, chunk_rows, "scores") == "probs" and s.ndim == 2:
        raise ValueError(
            "scores: kind='logits' but every row lies in [0, 1] and sums to 1: these are probabilities; "
            "pass kind='probs'"
        )
    cw = E.classwise_resamples(n_bootstrap, n, k)
    stats = E.stream(s, y_test, test_rows, kind=kind, n_bins=n_bins, chunk_rows=chunk_rows, cw_resamples=cw, seed=seed)
    main = _score(stats, n_bins, n_bootstrap, level, seed)
    temperature = scaled = None
    if vs is not None and vy is not None:
        temperature = E.fit_temperature(
            vs, vy, val_rows if vs is s else None, chunk_rows, "val_scores" if vs is not s else "scores", kind
        )
        st = E.stream(
            s,
            y_test,
            test_rows,
            kind=kind,
            n_bins=n_bins,
            chunk_rows=chunk_rows,
            temperature=temperature,
            cw_resamples=cw,
            seed=seed,
        )
        scaled = _score(st, n_bins, n_bootstrap, level, seed)
    return EvaluationResult(
        name=name or "model",
        n=n,
        num_classes=k,
        kind=kind,
        metrics=main.metrics,
        temperature=temperature,
        scaled=None if scaled is None else scaled.metrics,
        risk_coverage=(main.coverage, main.risk),
        reliability=main.reliability,
        confidence=stats.conf,
        correct=stats.correct,
        nll=stats.nll,
        brier=stats.brier,
        labels=y_test,
        n_bootstrap=n_bootstrap,
        level=level,
        n_bins=n_bins,
        seed=int(seed),
        classwise_resamples=cw,
        replicates=main.replicates,
        scaled_replicates=None if scaled is None else scaled.replicates,
    )


# ----------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Difference:
    """One paired difference, signed so that positive means model ``b`` is better than ``a``."""

    a: str
    b: str
    metric: str
    value: float
    low: float | None
    high: float | None
    level: float
    p: float | None
    p_holm: float | None
    tolerance: float
    outcome: str  # "supports" (b better), "contradicts" (b worse), "same"

    @property
    def words(self) -> str:
        """``"better"``, ``"worse"`` or ``"no clear difference"`` (b against a)."""
        return PAIRED_OUTCOMES[self.outcome]

    def text(self, digits: int = 4) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:+.{digits}f}"
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass
class Comparison:
    """Paired differences of every metric between models evaluated on the same examples (see :func:`compare`).

    Attributes:
        names: the models, the first being the reference every other is compared with.
        n: test rows.
        differences: one :class:`Difference` per (other model, metric), Holm-adjusted together.
        alpha: the family-wise error rate.
    """

    names: list[str]
    n: int
    differences: list[Difference]
    alpha: float = ALPHA

    def get(self, b: str, metric: str) -> Difference:
        """The difference of ``metric`` for model ``b`` against the first model."""
        for d in self.differences:
            if d.b == b and d.metric == metric:
                return d
        raise KeyError((b, metric))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the names, n, alpha and every difference."""
        return {
            "names": list(self.names),
            "n": self.n,
            "alpha": self.alpha,
            "differences": [
                {**{k: (_num(v) if isinstance(v, float) else v) for k, v in d.__dict__.items()}, "words": d.words}
                for d in self.differences
            ],
        }

    def to_markdown(self) -> str:
        """One table per compared model: difference [interval at Holm's level], adjusted p, verdict."""
        out = [
            f"## Paired comparison ({self.n} test rows)\n\nPositive: the second model is better (lower-is-better "
            f"metrics negated). Paired bootstrap intervals at Holm's level; p-values Holm-adjusted over all "
            f"{len(self.differences)} differences; verdicts at family-wise {self.alpha:g}.\n"
        ]
        for b in self.names[1:]:
            rows = [d for d in self.differences if d.b == b]
            lines = [
                f"\n### {b} vs {self.names[0]}\n",
                "| metric | difference [interval] | level | p (Holm) | verdict |",
                "|---|---|---|---|---|",
            ]
            for d in rows:
                p = "n/a" if d.p_holm is None else f"{d.p_holm:.3g}"
                lines.append(f"| {LABELS[d.metric]} | {d.text()} | {100 * d.level:.2f}% | {p} | {d.words} |")
            out.append("\n".join(lines) + "\n")
        return "".join(out)

    def to_html(self) -> str:
        """A self-contained HTML page with the tables of :meth:`to_markdown`."""
        parts = [f"<h2>Paired comparison ({self.n} test rows)</h2><p>Positive: the second model is better.</p>"]
        for b in self.names[1:]:
            rows = "".join(
                f"<tr class='{_CLASS.get(d.outcome, '')}'><td>{html.escape(LABELS[d.metric])}</td>"
                f"<td>{html.escape(d.text())}</td><td>{100 * d.level:.2f}%</td>"
                f"<td>{'n/a' if d.p_holm is None else f'{d.p_holm:.3g}'}</td><td>{html.escape(d.words)}</td></tr>"
                for d in self.differences
                if d.b == b
            )
            parts.append(
                f"<h3>{html.escape(b)} vs {html.escape(self.names[0])}</h3><table><tr><th>metric</th>"
                f"<th>difference [interval]</th><th>level</th><th>p (Holm)</th><th>verdict</th></tr>{rows}</table>"
            )
        return _page("Paired comparison", "".join(parts))


_CLASS = {"supports": "better", "contradicts": "worse"}


def _p_value(value: float, sd: float) -> float:
    """Two-sided p-value of a difference against 0 with its bootstrap standard error (a Wald test: unlike
    counting resamples on each side, it has no floor at 2 / (n_bootstrap + 1))."""
    from scipy import stats

    if not sd > 0:
        return 1.0 if value == 0 else 0.0
    return float(2 * stats.norm.sf(abs(value) / sd))


def compare(a: EvaluationResult, b: EvaluationResult, *more: EvaluationResult, alpha: float = ALPHA) -> Comparison:
    """Paired comparison of models scored on the same examples: every later model against ``a``.

    For each metric the difference is ``b - a`` signed so that positive means ``b`` is better (lower-is-better
    metrics negated). When every model has a temperature (validation rows), each metric after temperature
    scaling is compared too, as ``"<metric>_after_t"`` (its replicates are paired in the same way), in the
    same Holm family. Both results must come from :func:`evaluate` with the same ``seed`` and ``n_bootstrap``:
    their resamples then give every example the same weight, so the difference of their replicates is the
    paired bootstrap. The p-value is two-sided, from the difference over its bootstrap standard error
    (normal reference); p-values are Holm-adjusted over all differences of the comparison, each interval is
    at Holm's level for it (percentile; for the binned calibration errors centred on the difference, as
    their own intervals are: see :func:`interval`), and the verdict is the study's rule: "better"/"worse"
    when the adjusted p-value is below ``alpha`` and the difference reaches the tolerance (2 / n for
    accuracy and AURC, else 0), "no clear difference" otherwise.

    Args:
        a: the reference model.
        b: a model compared with ``a``.
        *more: further models compared with ``a``.
        alpha: family-wise error rate.

    Returns:
        A :class:`Comparison`.

    Raises:
        ValueError: different numbers of test rows, labels that differ (naming the first mismatching row),
            or different bootstrap settings.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 2 * torch.randn(3000, 4, generator=g)
        >>> labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
        >>> noisy = logits + 2 * torch.randn(3000, 4, generator=g)
        >>> a = evaluate(noisy, labels, name="noisy", n_bootstrap=200)
        >>> cmp = compare(a, evaluate(logits, labels, name="clean", n_bootstrap=200))
        >>> cmp.get("clean", "accuracy").words
        'better'
    """
    results = [a, b, *more]
    for r in results:
        if not isinstance(r, EvaluationResult):
            raise TypeError(f"compare takes EvaluationResult objects from evaluate(), got {type(r).__name__}")
    for r in results[1:]:
        if r.n != a.n:
            raise ValueError(f"{r.name!r} has {r.n} test rows and {a.name!r} has {a.n}: not the same examples")
        if not np.array_equal(r.labels, a.labels):
            i = int(np.flatnonzero(r.labels != a.labels)[0])
            raise ValueError(
                f"labels differ at test row {i} ({a.name!r}: {int(a.labels[i])}, {r.name!r}: {int(r.labels[i])}): "
                "not the same examples in the same order"
            )
        if (r.seed, r.n_bootstrap, r.n_bins, r.level) != (a.seed, a.n_bootstrap, a.n_bins, a.level):
            raise ValueError(
                f"{r.name!r} and {a.name!r} were evaluated with different seed/n_bootstrap/n_bins/level; "
                "evaluate both with the same settings to pair their resamples"
            )
    names = [r.name for r in results]
    if len(set(names)) < len(names):
        names = [f"{nm} ({i + 1})" for i, nm in enumerate(names)]
    scaled = all(r.scaled is not None and r.scaled_replicates is not None for r in results)
    raw = []
    for j, r in enumerate(results[1:], start=1):
        tables = [("", r.metrics, a.metrics, r.replicates, a.replicates)]
        if scaled:
            assert r.scaled is not None and a.scaled is not None
            assert r.scaled_replicates is not None and a.scaled_replicates is not None
            tables.append((AFTER_T, r.scaled, a.scaled, r.scaled_replicates, a.scaled_replicates))
        for suffix, est_b, est_a, rep_b, rep_a in tables:
            for m in METRICS:
                sign = 1.0 if m in HIGHER_IS_BETTER else -1.0
                value = sign * (est_b[m].value - est_a[m].value)
                reps = None
                if m in rep_b and m in rep_a:
                    reps = sign * (rep_b[m] - rep_a[m])
                raw.append((names[j], m + suffix, value, reps, (2.0 / a.n) if m in PER_EXAMPLE else 0.0))
    p: list[float | None] = []
    for _b, _m, value, reps, _tol in raw:
        p.append(None if reps is None else _p_value(value, float(reps.std(ddof=1)) if reps.size > 1 else 0.0))
    tested = [i for i, x in enumerate(p) if x is not None]
    p_tested = [x for x in p if x is not None]
    adj = holm(p_tested)
    levels = holm_levels(p_tested, alpha)
    diffs = []
    for i, (bname, m, value, reps, tol) in enumerate(raw):
        if reps is not None:
            t = tested.index(i)
            lo, hi = interval(reps, value, levels[t], m.removesuffix(AFTER_T) in BINNED)
            diffs.append(
                Difference(
                    names[0],
                    bname,
                    m,
                    value,
                    lo,
                    hi,
                    levels[t],
                    p[i],
                    adj[t],
                    tol,
                    decide(adj[t], value, tol, alpha),
                )
            )
        else:
            diffs.append(Difference(names[0], bname, m, value, None, None, 1 - alpha, None, None, tol, "same"))
    return Comparison(names, a.n, diffs, alpha)
