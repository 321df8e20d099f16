"""Reliability diagrams.

matplotlib is an optional dependency (``pip install matplotlib``); it is imported only when a plot
is requested. Figures are built with the object-oriented API on an Agg canvas, never through
``pyplot``, so these functions work without a display and leave the user's pyplot state and backend
untouched. Every number drawn comes from :func:`labelsmooth.calibration.reliability_curve` and
:func:`labelsmooth.calibration.expected_calibration_error`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, overload

import numpy as np
from torch import Tensor

from labelsmooth.calibration import expected_calibration_error, reliability_curve

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.legend import Legend

__all__ = ["reliability_diagram", "reliability_overlay"]

ArrayLike = Tensor | np.ndarray

#: Fill of the accuracy bars, and of the pink band between a bin's accuracy and its confidence.
ACCURACY_COLOR = "tab:blue"
GAP_COLOR = "#f4b4b4"

#: Legend text size in points. The study's report embeds figures at 90 dpi and shows them unscaled in
#: a 1400 px window (no figure row is wider than ~1300 px), so 9 pt is 9 * 90 / 72 = 11.25 CSS px.
LEGEND_FONTSIZE = 9.0

#: Share of a bin's width the accuracy bar takes (centred). The gap band spans the whole bin behind
#: it, so where a bin is under-confident (the gap lies inside the bar's height) the band still shows
#: beside the bar instead of being painted over it.
ACCURACY_BAR_SHARE = 0.6


def _matplotlib() -> tuple[ModuleType, ModuleType]:
    try:
        import matplotlib.figure
        from matplotlib.backends import backend_agg
    except ImportError as err:
        raise ImportError(
            "labelsmooth.plots needs matplotlib, which is an optional dependency; "
            "install it with `pip install matplotlib`"
        ) from err
    import matplotlib

    return matplotlib, backend_agg


def _new_figure(figsize: tuple[float, float]) -> Figure:
    matplotlib, backend_agg = _matplotlib()
    fig: Figure = matplotlib.figure.Figure(figsize=figsize, layout="constrained")
    backend_agg.FigureCanvasAgg(fig)  # a private Agg canvas: savefig works, no GUI, no pyplot
    return fig


def _curve_numpy(
    probs: ArrayLike, labels: ArrayLike, n_bins: int, binning: str, binary_mode: str
) -> dict[str, np.ndarray]:
    curve = reliability_curve(probs, labels, n_bins=n_bins, binning=binning, binary_mode=binary_mode)
    return {k: v.detach().cpu().numpy() for k, v in curve._asdict().items()}


# Without ``ax`` the result is a new Figure; with one it is ``ax.figure``, which matplotlib types as
# Figure | SubFigure (an axes inside a subfigure).
@overload
def reliability_diagram(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = ...,
    title: str | None = ...,
    ax: None = ...,
    *,
    binning: str = ...,
    binary_mode: str = ...,
) -> Figure: ...
@overload
def reliability_diagram(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = ...,
    title: str | None = ...,
    ax: Axes | None = ...,
    *,
    binning: str = ...,
    binary_mode: str = ...,
) -> Figure | SubFigure: ...
def reliability_diagram(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    title: str | None = None,
    ax: Axes | None = None,
    *,
    binning: str = "uniform",
    binary_mode: str = "top_label",
) -> Figure | SubFigure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with a histogram below.

    The top panel draws one bar per non-empty bin at the bin's accuracy, the diagonal of perfect
    calibration, and a hatched pink band between each bin's accuracy and its mean confidence (the
    gap that ECE averages). The band spans the whole bin behind its accuracy bar, which is narrower
    and on top: an over-confident bin's band rises above the bar, an under-confident bin's band shows
    beside it, and no bar is hidden. The bottom panel shows how many samples fall in each bin, with
    the overall accuracy and mean confidence marked. One legend, under the histogram's axis label,
    names everything (outside the axes: it never covers a bar). The title ends in the ECE (same
    ``n_bins``, ``binning`` and ``binary_mode``), formatted ``"ECE = 0.0123"``.

    Args:
        probs: ``(N, K)`` class probabilities, or ``(N,)`` P(y=1).
        labels: ``(N,)`` integer labels.
        n_bins: number of bins, >= 1.
        title: text placed before the ECE in the title; default ``"Reliability diagram"``.
        ax: optional axes to draw into; its place is split to make room for the histogram panel
            below it (``ax`` keeps the upper three quarters) and its figure is returned. By default
            a new figure is created.
        binning: ``"uniform"`` or ``"quantile"`` (see :func:`~labelsmooth.calibration.reliability_curve`).
        binary_mode: ``"top_label"`` or ``"positive"`` for ``(N,)`` input.

    Returns:
        The matplotlib ``Figure``; ``fig.savefig("reliability.png")`` writes it.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> probs = torch.softmax(3 * torch.randn(1000, 10, generator=g), dim=1)
        >>> labels = torch.randint(0, 10, (1000,), generator=g)
        >>> fig = reliability_diagram(probs, labels, title="random model")
        >>> "ECE = " in fig.axes[0].get_title()
        True

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017;
        Naeini, Cooper & Hauskrecht, AAAI 2015.
    """
    fig, top, bottom, _ = _draw_reliability(probs, labels, n_bins, title, ax, binning, binary_mode)
    handles, texts = top.get_legend_handles_labels()
    more_handles, more_texts = bottom.get_legend_handles_labels()
    _legend_below(bottom, [*handles, *more_handles], [*texts, *more_texts])
    return fig


class _Means(NamedTuple):
    accuracy: float
    confidence: float


def _draw_reliability(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int,
    title: str | None,
    ax: Axes | None,
    binning: str,
    binary_mode: str,
) -> tuple[Figure | SubFigure, Axes, Axes, _Means]:
    """The diagram of :func:`reliability_diagram` without a legend: ``(figure, top, histogram, means)``.

    The artists carry their legend labels, so a caller can gather them into one legend of its own
    (the study's grid of diagrams draws one for the whole figure).
    """
    c = _curve_numpy(probs, labels, n_bins, binning, binary_mode)
    ece = expected_calibration_error(probs, labels, n_bins=n_bins, binning=binning, binary_mode=binary_mode)
    fig: Figure | SubFigure
    if ax is None:
        fig = _new_figure((5.0, 6.0))
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        _matplotlib()
        fig, top, bottom = ax.figure, ax, _histogram_axes(ax)
        top.tick_params(labelbottom=False)

    edges, widths = c["edges"][:-1], np.diff(c["edges"])
    full = c["count"] > 0
    # The accuracy bar is drawn on top (zorder 3) of its bin's gap band (zorder 2) and is narrower
    # than the bin, so neither hides the other: an over-confident bin's band rises above the bar, an
    # under-confident bin's band shows at both sides of the bar's upper part.
    top.bar(
        edges[full] + widths[full] / 2,
        c["accuracy"][full],
        width=ACCURACY_BAR_SHARE * widths[full],
        align="center",
        color=ACCURACY_COLOR,
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
        zorder=3,
    )
    gap_low = np.minimum(c["accuracy"], c["confidence"])[full]
    gap_height = np.abs(c["accuracy"] - c["confidence"])[full]
    # Opaque, so that the legend's swatch is the colour seen (nothing beneath can tint it).
    top.bar(
        edges[full],
        gap_height,
        bottom=gap_low,
        width=widths[full],
        align="edge",
        color=GAP_COLOR,
        hatch="//",
        edgecolor="tab:red",
        linewidth=0.5,
        label="gap",
        zorder=2,
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration", zorder=4)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"{title or 'Reliability diagram'} (ECE = {ece:.4f})")

    bottom.bar(edges, c["count"], width=widths, align="edge", color="tab:gray", edgecolor="black", linewidth=0.5)
    total = c["count"].sum()
    mean_conf = float(np.nansum(c["confidence"] * c["count"]) / total)
    mean_acc = float(np.nansum(c["accuracy"] * c["count"]) / total)
    bottom.axvline(mean_acc, color=ACCURACY_COLOR, linestyle="-", label=f"accuracy {mean_acc:.3f}")
    bottom.axvline(mean_conf, color="tab:red", linestyle="--", label=f"mean confidence {mean_conf:.3f}")
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="count")
    return fig, top, bottom, _Means(mean_acc, mean_conf)


def _points(size: float | str) -> float:
    """A matplotlib font size (``10`` or ``"small"``) in points."""
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=size).get_size_in_points())


def _legend_below(ax: Axes, handles: Sequence[Artist], labels: Sequence[str], ncols: int = 0) -> Legend:
    """A legend under ``ax``'s x label, outside the axes, so it can never cover the data.

    The layout engine (``layout="constrained"``) counts it as part of ``ax`` and makes room for it.
    ``ncols=0`` picks two columns for an axes at least 4 inches wide, else one.

    Returns:
        The ``Legend``, also ``ax.get_legend()``.
    """
    from matplotlib import rcParams
    from matplotlib.transforms import ScaledTranslation

    if ncols <= 0:
        width = ax.get_window_extent().width / ax.figure.dpi  # inches
        ncols = 2 if width >= 4.0 and len(handles) > 1 else 1
    # Below the ticks, their labels and the axis label (sizes from the style in force), in points.
    drop = (
        rcParams["xtick.major.size"]
        + rcParams["xtick.major.pad"]
        + 1.2 * _points(rcParams["xtick.labelsize"])
        + rcParams["axes.labelpad"]
        + 1.2 * _points(rcParams["axes.labelsize"])
        + 4
    )
    anchor = ax.transAxes + ScaledTranslation(0, -drop / 72, ax.figure.dpi_scale_trans)
    legend: Legend = ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=anchor,
        ncols=ncols,
        fontsize=LEGEND_FONTSIZE,
        frameon=False,
    )
    return legend


def _histogram_axes(ax: Axes) -> Axes:
    """A count-histogram panel below ``ax``, taking the lower quarter of ``ax``'s place.

    An axes from a grid (``fig.subplots``, ``add_subplot``) has its cell split in two with a sub-grid,
    which the figure's layout engine (``layout="constrained"``) sees: both panels, their ticks and
    labels stay inside the figure. An axes placed by hand (``fig.add_axes``) is split with
    ``axes_grid1``'s divider instead.
    """
    spec = ax.get_subplotspec()
    if spec is None:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        below: Axes = make_axes_locatable(ax).append_axes("bottom", size="33%", pad=0.15, sharex=ax)
        return below
    cells = spec.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    ax.set_subplotspec(cells[0])
    return ax.figure.add_subplot(cells[1], sharex=ax)


def reliability_overlay(
    models: Mapping[str, tuple[ArrayLike, ArrayLike]],
    n_bins: int = 15,
    *,
    binning: str = "uniform",
    binary_mode: str = "top_label",
    title: str | None = None,
) -> Figure:
    """Reliability curves of several models on one axis, with each model's ECE in the legend.

    Each curve joins the (mean confidence, accuracy) points of the non-empty bins; marker area
    grows with the bin's share of samples.

    Args:
        models: ``{name: (probs, labels)}``, one entry per model, in legend order.
        n_bins: number of bins, >= 1.
        binning: ``"uniform"`` or ``"quantile"``.
        binary_mode: ``"top_label"`` or ``"positive"`` for ``(N,)`` input.
        title: optional axes title.

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 3 * torch.randn(1000, 10, generator=g)
        >>> labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
        >>> fig = reliability_overlay({"calibrated": (torch.softmax(logits, 1), labels),
        ...                            "over-confident": (torch.softmax(3 * logits, 1), labels)})
        >>> len(fig.axes[0].get_legend().get_texts())
        3

    References:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a mapping {{name: (probs, labels)}}, got {type(models).__name__}")
    if not models:
        raise ValueError("models is empty; pass at least one {name: (probs, labels)} entry")
    fig = _new_figure((5.5, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    for name, pair in models.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"models[{name!r}] must be a (probs, labels) pair, got {type(pair).__name__}")
        probs, labels = pair
        c = _curve_numpy(probs, labels, n_bins, binning, binary_mode)
        ece = expected_calibration_error(probs, labels, n_bins=n_bins, binning=binning, binary_mode=binary_mode)
        full = c["count"] > 0
        share = c["count"][full] / c["count"].sum()
        (line,) = ax.plot(c["confidence"][full], c["accuracy"][full], marker="", label=f"{name} (ECE = {ece:.4f})")
        ax.scatter(c["confidence"][full], c["accuracy"][full], s=10 + 200 * share, color=line.get_color(), zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    _legend_below(ax, *ax.get_legend_handles_labels(), ncols=1)
    return fig
