"""The study's figures, drawn from run records (matplotlib's object-oriented API on Agg, no pyplot).

Reliability diagrams come from :func:`labelsmooth.plots.reliability_diagram`; every other figure
plots means over seeds with 95% t-interval error bars from :mod:`labelsmooth.study.stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from labelsmooth.plots import ACCURACY_COLOR, LEGEND_FONTSIZE, _draw_reliability, _new_figure
from labelsmooth.study import stats as S
from labelsmooth.study.claims import HEADLINE_EPS, effect_sizes

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend
    from matplotlib.typing import LineStyleType

__all__ = [
    "accuracy_vs_noise",
    "effect_size_figure",
    "ksweep_figure",
    "learning_curves",
    "metric_vs_eps",
    "projection_figure",
    "reliability_grid",
    "size_sweep_figure",
]

#: ``load(record) -> (probs, labels)`` for a record's saved test predictions.
ProbsLoader = Callable[[S.Record], "tuple[np.ndarray, np.ndarray]"]
#: ``load(record) -> (coords, labels) or None`` for a record's saved penultimate-layer projection.
ProjectionLoader = Callable[[S.Record], "tuple[np.ndarray, np.ndarray] | None"]


def _err(e: S.Estimate | None) -> float:
    return 0.0 if e is None or e.half is None else e.half


#: Widest figure row, in inches: at the report's 90 dpi about 1300 px, so a 1400 px window shows
#: every figure at full size. Panels that do not fit wrap onto further rows.
MAX_ROW_INCHES = 14.5


def _grid(n: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    # The axes come back as a (n,) object array of matplotlib Axes, row by row; unused cells are removed.
    cols = max(1, min(n, int(MAX_ROW_INCHES // width)))
    rows = -(-n // cols)
    fig = _new_figure((width * cols, height * rows))
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[n:]:
        fig.delaxes(ax)
    return fig, grid[:n]


def _figure_legend(
    fig: Figure,
    axes: Sequence[Axes] | np.ndarray,
    extra: Sequence[tuple[Artist, str]] = (),
    markerscale: float = 1.0,
) -> Legend | None:
    """One legend for the whole figure, in a row of its own below the panels.

    It gathers the labelled artists of every panel (each label once, first seen first) and ``extra``
    entries, at :data:`labelsmooth.plots.LEGEND_FONTSIZE`, outside every axes so it covers no data.
    It takes as many columns as fit the figure's width, and the figure grows by the legend's height
    so the panels keep their size. ``None`` when nothing is labelled (no empty legend, no warning).
    """
    entries: dict[str, Artist] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    for handle, text in extra:
        entries.setdefault(text, handle)
    if not entries:
        return None
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    ncols = len(entries)
    while True:
        legend: Legend = fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncols=ncols,
            fontsize=LEGEND_FONTSIZE,
            markerscale=markerscale,
            frameon=False,
        )
        # Legend.set_ncols does not lay out the entries again: a narrower legend is a new one.
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.95 * fig.bbox.width:
            break
        legend.remove()
        rows = -(-len(entries) // ncols)
        ncols = min(ncols - 1, -(-len(entries) // (rows + 1)))  # one row more, balanced
    fig.set_figheight(fig.get_figheight() + legend.get_window_extent(renderer).height / fig.dpi + 0.1)
    return legend


#: Reliability panels are 3.6 inches wide, so :func:`_grid` puts four in a row (~1300 px at the report's
#: 90 dpi): a 1400 px window shows them at full size instead of shrinking a long row until its text is
#: unreadable.
RELIABILITY_WIDTH = 3.6
RELIABILITY_COLUMNS = int(MAX_ROW_INCHES // RELIABILITY_WIDTH)


def reliability_grid(records: Sequence[S.Record], load: ProbsLoader, dataset: str, noise_rate: S.Noise) -> Figure:
    """Reliability diagrams of every variant on one dataset at one noise rate, seeds pooled.

    Each panel pools the test sets of all seeds into one diagram. Its title gives two ECEs with the
    same 15 equal-width bins: the ECE of the pooled predictions (what the panel draws) and the mean
    of the per-seed ECEs (what the summary table reports). Pooling lets one seed's over-confident
    bins offset another's under-confident ones: the bins are the same fixed intervals for every
    seed, so by the triangle inequality the pooled ECE is at most the per-seed ECEs averaged with
    weights proportional to test-set size (the plain mean when the sizes are equal).

    Args:
        records: run records.
        load: returns a record's saved test ``(probs, labels)``.
        dataset: dataset name.
        noise_rate: noise setting ``(kind, level)`` of the runs shown.

    Returns:
        A matplotlib ``Figure`` with one diagram (and its count histogram) per variant, at most
        :data:`RELIABILITY_COLUMNS` per row.
    """
    from matplotlib.lines import Line2D

    from labelsmooth.calibration import expected_calibration_error
    from labelsmooth.study.metrics import N_BINS

    vs = [v for v in S.variants(records, dataset) if S.cell(records, dataset, v, noise_rate)]
    fig, axes = _grid(len(vs), RELIABILITY_WIDTH, 5.4)
    n_seeds = 0
    for ax, v in zip(axes, vs, strict=True):
        pairs = [load(r) for r in S.cell(records, dataset, v, noise_rate)]
        n_seeds = max(n_seeds, len(pairs))
        probs = np.concatenate([p for p, _ in pairs])
        labels = np.concatenate([y for _, y in pairs])
        _, _, hist, means = _draw_reliability(probs, labels, N_BINS, None, ax, "uniform", "top_label")
        pooled = expected_calibration_error(probs, labels, n_bins=N_BINS)
        per_seed = S.estimate(expected_calibration_error(p, y, n_bins=N_BINS) for p, y in pairs)
        if len(pairs) > 1:
            assert per_seed is not None  # estimated from len(pairs) > 1 values
            ece_text = f"ECE of pooled seeds {pooled:.3f}\nmean of per-seed ECEs {per_seed.mean:.3f}"
        else:
            ece_text = f"ECE {pooled:.3f} (one seed)"
        # The histogram's two marked values go in the title (not in a legend over its bars); what
        # the marks are is said once, in the figure's legend.
        means_text = f"accuracy {means.accuracy:.3f}, confidence {means.confidence:.3f}"
        ax.set_title(f"{S.label(v)}\n{ece_text}\n{means_text}", fontsize=11, linespacing=1.3)
        for line in hist.get_lines():
            line.set_label(f"_{line.get_label()}")  # per-panel values: not legend entries
    marks = [
        (Line2D([], [], color=ACCURACY_COLOR, linestyle="-"), "overall accuracy (histogram)"),
        (Line2D([], [], color="tab:red", linestyle="--"), "mean confidence (histogram)"),
    ]
    _figure_legend(fig, axes[:1], marks)
    pooled_text = f"test sets of {n_seeds} seeds pooled" if n_seeds > 1 else "one seed"
    fig.suptitle(f"{dataset}: reliability, {S.noise_label(noise_rate)} labels ({pooled_text})", fontsize=13)
    return fig


#: Line styles of the noise kinds in :func:`accuracy_vs_noise`, in order of first appearance.
_KIND_STYLES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")


def accuracy_vs_noise(records: Sequence[S.Record], checkpoint: str = "") -> Figure | None:
    """Test accuracy against the noise level (fraction of the breakdown rate), one line per variant and
    noise kind, one panel per dataset. ``checkpoint="es_"`` draws the early-stopped models.

    A colour is a variant and a line style a noise kind, the same in every panel; the legend below the
    panels names each once.
    """
    dsets = [d for d in S.datasets(records) if len(S.noise_settings(records, d)) > 1]
    if not dsets:
        return None  # no noisy runs: nothing to draw
    from matplotlib.lines import Line2D

    fig, axes = _grid(len(dsets))
    # One colour per variant and one line style per noise kind, the same in every panel, so the legend
    # names each once (variants + kinds entries, not variants x kinds).
    colours: dict[S.Variant, str] = {}
    styles: dict[str, LineStyleType] = {}
    shown: set[S.Variant | str] = set()  # the variants and kinds that drew a line
    for ax, ds in zip(axes, dsets, strict=True):
        settings = S.noise_settings(records, ds)
        kinds = sorted({k for k, lvl in settings if lvl > 0})
        # Post-hoc variants (temperature scaling) keep their model's predictions: same accuracy, not drawn.
        base = S.baseline_variant(records)
        drawn = [*([base] if base else []), *S.smoothing_variants(records, ds), *S.scheme_variants(records, ds)]
        for v in drawn:
            color = colours.setdefault(v, f"C{len(colours) % 10}")
            for kind in kinds:
                pts = [n for n in settings if n[1] == 0 or n[0] == kind]
                es = [
                    (n[1], e)
                    for n in pts
                    if (e := S.metric(records, ds, v, n, checkpoint + "test_accuracy")) is not None
                ]
                if not es:
                    continue
                shown.update((v, kind))
                ax.errorbar(
                    [x for x, _ in es],
                    [e.mean for _, e in es],
                    yerr=[_err(e) for _, e in es],
                    marker="o",
                    capsize=3,
                    color=color,
                    linestyle=styles.setdefault(kind, _KIND_STYLES[len(styles) % len(_KIND_STYLES)]),
                )
        ax.set(title=ds, xlabel="noise level (fraction of the breakdown rate)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
    entries = [(Line2D([], [], color=c, marker="o"), S.label(v)) for v, c in colours.items() if v in shown]
    entries += [
        (Line2D([], [], color="black", linestyle=ls), f"{kind} noise") for kind, ls in styles.items() if kind in shown
    ]
    _figure_legend(fig, [], entries)
    return fig


def metric_vs_eps(records: Sequence[S.Record], name: str, ylabel: str, posthoc: bool = True) -> Figure:
    """A metric against label smoothing eps, one line per noise setting, one panel per dataset.

    eps = 0 is the baseline (ce). With ``posthoc``, ce + temperature scaling (``ts``) is drawn as a
    star at eps = 0 in the colour of its noise setting; leave it off for metrics a post-hoc step
    cannot change (accuracy-based ones).
    """
    from matplotlib.lines import Line2D

    dsets = S.datasets(records)
    fig, axes = _grid(len(dsets))
    base = S.baseline_variant(records)
    stars: list[tuple[Artist, str]] = []
    for ax, ds in zip(axes, dsets, strict=True):
        line_vs = ([base] if base else []) + S.smoothing_variants(records, ds)
        for n in S.noise_settings(records, ds):
            es = [(v[1], e) for v in line_vs if (e := S.metric(records, ds, v, n, name)) is not None]
            if not es:
                continue
            line = ax.errorbar(
                [x for x, _ in es],
                [e.mean for _, e in es],
                yerr=[_err(e) for _, e in es],
                marker="o",
                capsize=3,
                label=S.noise_label(n),
            )
            for pv in [p for p in S.posthoc_variants(records, ds) if p == ("ts", 0.0)] if posthoc else []:
                e = S.metric(records, ds, pv, n, name)
                if e is not None:
                    ax.errorbar(
                        [0],
                        [e.mean],
                        yerr=[_err(e)],
                        marker="*",
                        markersize=12,
                        capsize=3,
                        color=line.lines[0].get_color(),
                        linestyle="none",
                    )
                    # One legend entry for every star: its colour is its noise setting's.
                    label = f"{S.label(pv)} at eps = 0 (star, in its noise setting's colour)"
                    stars[:] = [(Line2D([], [], color="gray", marker="*", markersize=12, linestyle="none"), label)]
        ax.set(title=ds, xlabel="label smoothing eps (0 = ce)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes, stars)
    return fig


def effect_size_figure(records: Sequence[S.Record]) -> Figure:
    """Binary vs multiclass: paired effect of each eps vs ce on ECE, test accuracy and relative NLL.

    One panel per effect, groups of bars per eps, one bar per dataset (binary datasets hatched), at
    the lowest noise rate; error bars are 95% t-intervals of the paired differences.
    """
    fig, axes = _grid(3, 4.6, 3.6)
    noise = S.CLEAN
    dsets = S.datasets(records)
    eps_vs = sorted({v for ds in dsets for v in S.smoothing_variants(records, ds)}, key=lambda v: v[1])
    binary = {ds: any(r["binary"] for r in records if r["dataset"] == ds) for ds in dsets}
    width = 0.8 / max(len(dsets), 1)
    panels = [("ece", "Δ ECE (eps - ce)"), ("test_accuracy", "Δ test accuracy"), ("nll", "Δ NLL (eps - ce)")]
    effects = {v: effect_sizes(records, v, noise) for v in eps_vs}
    for ax, (key, title) in zip(axes, panels, strict=True):
        for j, ds in enumerate(dsets):
            xs, ys, err = [], [], []
            for i, v in enumerate(eps_vs):
                e = effects[v].get(ds, {}).get(key)
                if e is None:
                    continue
                xs.append(i + (j - (len(dsets) - 1) / 2) * width)
                ys.append(e.mean)
                err.append(_err(e))
            ax.bar(
                xs,
                ys,
                width=width,
                yerr=err,
                capsize=2,
                hatch="//" if binary[ds] else None,
                edgecolor="black",
                linewidth=0.5,
                label=f"{ds} ({'binary' if binary[ds] else 'multiclass'})",
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(eps_vs)), [f"eps={v[1]:g}" for v in eps_vs])
        ax.set(title=title)
        ax.grid(alpha=0.3, axis="y")
    _figure_legend(fig, axes)
    fig.suptitle("Effect of smoothing vs ce, paired by seed (clean labels); hatched = binary")
    return fig


def ksweep_figure(records: Sequence[S.Record]) -> Figure | None:
    """Claim 4 against the number of classes: smoothing's benefit over ce (signed, positive = better)
    on the K-sweep tasks (``BASE:kKsS``), per K averaged over the class subsets, at the headline eps
    and at the eps of the same smoothed top target. One panel per metric and base dataset; error bars
    are 95% t-intervals over seeds. ``None`` without K-sweep tasks."""
    from labelsmooth.study.claims import BIN_METRICS, k_effect, ksweep_groups
    from labelsmooth.study.methods import matched_eps

    groups = ksweep_groups(records)
    if not groups:
        return None
    panels = [(base, m) for base in groups for m in BIN_METRICS]
    fig, axes = _grid(len(panels), 4.6, 3.4)
    for ax, (base, (metric, title, sign)) in zip(axes, panels, strict=True):
        ks = sorted(groups[base])
        for label, eps_of, style in (
            (f"same eps ({HEADLINE_EPS:g})", lambda k: HEADLINE_EPS, "-o"),
            ("same top target", lambda k: matched_eps(HEADLINE_EPS, k), "--s"),
        ):
            est = [S.estimate(k_effect(records, groups[base][k], eps_of, metric, sign, k).values()) for k in ks]
            xs = [k for k, e in zip(ks, est, strict=True) if e is not None]
            ys = [e.mean for e in est if e is not None]
            err = [_err(e) for e in est if e is not None]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(ks)
        ax.set(title=f"{base}: {title}", xlabel="classes K", ylabel="benefit over ce (+ = better)")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle("Smoothing's benefit vs the number of classes (tasks of equal size, clean labels)")
    return fig


def size_sweep_figure(records: Sequence[S.Record]) -> Figure | None:
    """The overfitting claim's training-set-size sweep: test accuracy of ce and of smoothing (eps 0.1)
    against the share of the training split, one panel per dataset (clean labels, last step, mean over
    seeds with 95% t-intervals). ``None`` without a fraction below 1."""
    fracs = sorted({float(r.get("train_fraction", 1.0)) for r in records})
    base = S.baseline_variant(records)
    if len(fracs) < 2 or base is None:
        return None
    dsets = [
        ds for ds in S.datasets(records) if any(r.get("train_fraction", 1.0) < 1 for r in records if r["dataset"] == ds)
    ]
    fig, axes = _grid(len(dsets), 4.2, 3.4)
    for ax, ds in zip(axes, dsets, strict=True):
        head = min(S.smoothing_variants(records, ds), key=lambda v: (abs(v[1] - HEADLINE_EPS), v[1]), default=None)
        for v in (base, head):
            if v is None:
                continue
            est = [S.estimate(r.get("test_accuracy") for r in S.cell(records, ds, v, S.CLEAN, f)) for f in fracs]
            xs = [f for f, e in zip(fracs, est, strict=True) if e is not None]
            ax.errorbar(
                xs, [e.mean for e in est if e], yerr=[_err(e) for e in est if e], fmt="-o", capsize=3, label=S.label(v)
            )
        ax.set_xscale("log")
        ax.minorticks_off()  # only the measured fractions are labelled
        ax.set_xticks(fracs, [f"{f:.0%}" for f in fracs])
        ax.set(title=ds, xlabel="share of the training split", ylabel="test accuracy (last step)")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle("Test accuracy vs training-set size (clean labels)")
    return fig


def learning_curves(records: Sequence[S.Record], dataset: str) -> Figure:
    """Training loss, validation accuracy and validation NLL against the training step, for ce and the
    eps closest to 0.1, on clean labels and the last noise setting (mean over seeds). The test split is
    not on these curves: it only scores the final and the early-stopped models."""
    fig, axes = _grid(3, 4.4, 3.4)
    base = S.baseline_variant(records)
    smooth = S.smoothing_variants(records, dataset)
    head = min(smooth, key=lambda v: (abs(v[1] - HEADLINE_EPS), v[1])) if smooth else None
    settings = S.noise_settings(records, dataset)
    for n in list(dict.fromkeys([settings[0], settings[-1]])):
        for v in [x for x in (base, head) if x is not None]:
            cs = [c["curves"] for c in S.cell(records, dataset, v, n) if c.get("curves")]
            if not cs:
                continue
            steps = cs[0]["step"]
            for ax, key in zip(axes, ("train_loss", "val_accuracy", "val_nll"), strict=True):
                ys = np.mean([c[key] for c in cs if len(c[key]) == len(steps)], axis=0)
                ax.plot(steps, ys, linestyle="-" if v == base else "--", label=f"{S.label(v)}, {S.noise_label(n)}")
    for ax, title in zip(
        axes, ("training loss (the loss trained on)", "validation accuracy", "validation NLL"), strict=True
    ):
        ax.set(title=f"{dataset}: {title}", xlabel="step")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def projection_figure(records: Sequence[S.Record], load: ProjectionLoader, dataset: str) -> Figure | None:
    """Müller et al.'s (2019) picture: validation examples of three classes, penultimate activations
    projected onto the plane of their three templates, ce beside the eps closest to 0.1 (seed 0, clean).

    Returns:
        A ``Figure``, or ``None`` when no record of the dataset carries a projection.
    """
    rs = [r for r in records if r["dataset"] == dataset and r.get("has_projection") and r["seed"] == 0]
    base = S.baseline_variant(records)
    smooth = sorted({(r["method"], r["label_smoothing"]) for r in rs} & set(S.smoothing_variants(records, dataset)))
    head = min(smooth, key=lambda v: (abs(v[1] - HEADLINE_EPS), v[1])) if smooth else None
    shown = [v for v in (base, head) if v is not None]
    picked = [next((r for r in rs if (r["method"], r["label_smoothing"]) == v), None) for v in shown]
    pairs = [(v, r) for v, r in zip(shown, picked, strict=True) if r is not None]
    if not pairs:
        return None
    fig, axes = _grid(len(pairs), 4.2, 4.0)
    for ax, (v, r) in zip(axes, pairs, strict=True):
        got = load(r)
        if got is None:
            continue
        xy, lab = got
        for c in np.unique(lab):
            m = lab == c
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label=f"class {c}")
        ax.set(title=f"{dataset}: {S.label(v)}", xlabel="template plane, axis 1", ylabel="axis 2")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes, markerscale=2.5)  # the points are small; their swatches need not be
    return fig
