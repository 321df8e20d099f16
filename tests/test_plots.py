"""Tests for labelsmooth.plots: figures render headless to PNG and show the calibration numbers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from labelsmooth.calibration import expected_calibration_error, reliability_curve
from labelsmooth.plots import reliability_diagram, reliability_overlay

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def model_outputs(n=2000, k=10, sharpen=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, k, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return torch.softmax(sharpen * logits, 1), labels


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_reliability_diagram_renders_png_with_ece_in_title(tmp_path):
    probs, labels = model_outputs(sharpen=3.0)
    fig = reliability_diagram(probs, labels, n_bins=10, title="over-confident")
    ece = expected_calibration_error(probs, labels, n_bins=10)
    title = fig.axes[0].get_title()
    assert "over-confident" in title and f"ECE = {ece:.4f}" in title
    assert len(fig.axes) == 2  # reliability panel + confidence histogram
    path = tmp_path / "diagram.png"
    fig.savefig(path)
    assert_png(path)


def test_reliability_diagram_draws_the_curve_numbers():
    probs, labels = model_outputs(sharpen=2.0, seed=1)
    fig = reliability_diagram(probs, labels, n_bins=8)
    curve = reliability_curve(probs, labels, n_bins=8)
    full = (curve.count > 0).numpy()
    top, bottom = fig.axes
    accuracy_bars = top.containers[0]
    heights = np.array([bar.get_height() for bar in accuracy_bars])
    np.testing.assert_allclose(heights, curve.accuracy.numpy()[full], rtol=1e-6)
    counts = np.array([bar.get_height() for bar in bottom.containers[0]])
    np.testing.assert_array_equal(counts, curve.count.numpy())
    assert "Reliability diagram" in top.get_title()


def test_reliability_diagram_into_given_axes_numpy_binary_and_quantile(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    probs, labels = model_outputs(seed=2)
    out = reliability_diagram(probs.numpy(), labels.numpy(), n_bins=5, ax=left, binning="quantile")
    assert out is fig
    g = torch.Generator().manual_seed(3)
    p = torch.rand(500, generator=g, dtype=torch.float64)
    y = (torch.rand(500, generator=g, dtype=torch.float64) < p).long()
    reliability_diagram(p, y, ax=right, binary_mode="positive", title="binary")
    assert len(fig.axes) == 4  # each given axes gained a histogram panel
    ece = expected_calibration_error(p, y, binary_mode="positive")
    assert f"ECE = {ece:.4f}" in right.get_title()
    path = tmp_path / "axes.png"
    fig.savefig(path)
    assert_png(path)


def test_reliability_overlay_legend_has_each_ece(tmp_path):
    sharpening = {"calibrated": 1.0, "over": 3.0, "under": 0.3}
    models = {name: model_outputs(sharpen=s, seed=4) for name, s in sharpening.items()}
    fig = reliability_overlay(models, n_bins=12)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name, (probs, labels) in models.items():
        ece = expected_calibration_error(probs, labels, n_bins=12)
        assert f"{name} (ECE = {ece:.4f})" in legend
    path = tmp_path / "overlay.png"
    fig.savefig(path)
    assert_png(path)


def test_plots_leave_pyplot_state_alone():
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    reliability_diagram(*model_outputs(300))
    reliability_overlay({"m": model_outputs(300)})
    assert plt.get_fignums() == before
    assert matplotlib.get_backend() == backend


def test_overlay_argument_errors():
    with pytest.raises(ValueError, match=r"models is empty"):
        reliability_overlay({})
    with pytest.raises(ValueError, match=r"models\['a'\] must be a \(probs, labels\) pair"):
        reliability_overlay({"a": model_outputs(10)[0]})
    with pytest.raises(TypeError, match=r"models must be a mapping"):
        reliability_overlay([model_outputs(10)])
    with pytest.raises(ValueError, match=r"n_bins"):
        reliability_overlay({"a": model_outputs(10)}, n_bins=0)


def test_diagram_input_errors_come_from_calibration():
    probs, labels = model_outputs(10)
    with pytest.raises(ValueError, match=r"probs and labels must have the same length"):
        reliability_diagram(probs, labels[:5])
    with pytest.raises(ValueError, match=r"binning must be one of"):
        reliability_diagram(probs, labels, binning="log")


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    probs, labels = model_outputs(10)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        reliability_diagram(probs, labels)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        reliability_overlay({"a": (probs, labels)})


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def _most_common_colour(fig, ax, x, y, half=4) -> np.ndarray:
    # The colour drawn around data point (x, y), ignoring the thin hatch lines: the mode of a patch.
    img = _pixels(fig)
    px, py = ax.transData.transform((x, y))
    row, col = round(float(img.shape[0] - py)), round(float(px))
    patch = img[row - half : row + half + 1, col - half : col + half + 1].reshape(-1, 3)
    colours, counts = np.unique(patch, axis=0, return_counts=True)
    return colours[counts.argmax()].astype(float) / 255


def one_bin_diagram(confidence, accuracy, n=200):
    """n samples all at one confidence, a share ``accuracy`` of them correct: one bin, a known gap."""
    probs = torch.tensor([[confidence, 1 - confidence]] * n, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    labels[: round(n * (1 - accuracy))] = 1
    return reliability_diagram(probs, labels, n_bins=10)


def legend_entry(legend, text):
    return next(h for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True) if t.get_text() == text)


@pytest.mark.parametrize("confidence,accuracy", [(0.55, 1.0), (0.95, 0.5)])
def test_gap_band_and_accuracy_bar_both_show_for_under_and_over_confidence(confidence, accuracy):
    from matplotlib.colors import to_rgb

    fig = one_bin_diagram(confidence, accuracy)
    top, bottom = fig.axes
    legend = bottom.get_legend()  # the diagram's one legend, under the histogram
    gap_rgb = np.array(legend_entry(legend, "gap").get_facecolor()[:3])
    bar_rgb = np.array(legend_entry(legend, "accuracy").get_facecolor()[:3])
    assert legend_entry(legend, "gap").get_facecolor()[3] == 1.0  # opaque: nothing beneath can tint it
    np.testing.assert_allclose(gap_rgb, to_rgb("#f4b4b4"), atol=1e-9)
    np.testing.assert_allclose(bar_rgb, to_rgb("tab:blue"), atol=1e-9)
    # The band between accuracy and confidence, near the bin's left edge (beside the narrower bar):
    # the legend's colour, whether the band lies above the bar (over-confident) or within its height.
    left = np.floor(confidence * 10) / 10
    middle = (confidence + accuracy) / 2
    np.testing.assert_allclose(_most_common_colour(fig, top, left + 0.01, middle, half=2), gap_rgb, atol=2 / 255)
    # The accuracy bar is whole: its colour just below its top and in the middle of the gap's height
    # when the gap lies within the bar.
    centre = left + 0.05
    np.testing.assert_allclose(_most_common_colour(fig, top, centre, accuracy - 0.03), bar_rgb, atol=2 / 255)
    if accuracy > confidence:
        np.testing.assert_allclose(_most_common_colour(fig, top, centre, middle), bar_rgb, atol=2 / 255)


def test_accuracy_bars_are_drawn_above_the_gap_bands():
    fig = reliability_diagram(*model_outputs(sharpen=0.4, seed=6), n_bins=15)  # under-confident
    top = fig.axes[0]
    accuracy, gap = top.containers[:2]
    assert accuracy.get_label() == "accuracy" and gap.get_label() == "gap"
    under = 0
    for bar, band in zip(accuracy, gap, strict=True):
        assert bar.get_visible() and bar.get_alpha() in (None, 1.0) and bar.get_facecolor()[3] == 1.0
        assert bar.get_zorder() > band.get_zorder()
        # The band spans the bin; the bar is narrower and inside it, so the band shows beside the bar.
        assert band.get_x() < bar.get_x() and bar.get_x() + bar.get_width() < band.get_x() + band.get_width()
        under += band.get_y() < bar.get_height() - 1e-9
    assert under >= 3  # the case that used to hide the bar's top under the band is exercised
    # Nothing else in the panel that is opaque and filled sits above the bars.
    for patch in top.patches:
        if patch not in accuracy.patches and patch.get_fill() and patch.get_zorder() >= accuracy[0].get_zorder():
            assert patch.get_facecolor()[3] == 0, patch


# The report embeds figures at 90 dpi (report._png) and shows them unscaled in a 1400 px window, whose
# content box (1400 px less 2 x 24 px padding, a 1 px image border and room for a scrollbar) is ~1330
# CSS px; a wider figure is scaled down to that. A legend must be at least this tall there.
REPORT_DPI = 90
SHOWN_WIDTH_PX = 1330
MIN_LEGEND_PX = 10


def legend_text_px(fig, legend, dpi=REPORT_DPI) -> float:
    """The smallest legend text of ``legend``, in CSS px, as the report shows ``fig``."""
    scale = min(1.0, SHOWN_WIDTH_PX / (fig.get_figwidth() * dpi))
    return min(t.get_fontsize() for t in legend.get_texts()) * dpi / 72 * scale


def all_legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def assert_legends_readable_and_off_the_data(fig, require=True):
    """Every legend: text >= MIN_LEGEND_PX as the report shows it; inside the canvas; over no axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = all_legends(fig)
    assert legends or not require
    for legend in legends:
        assert legend_text_px(fig, legend) >= MIN_LEGEND_PX
        box = legend.get_window_extent(renderer)
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, box
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, box
        for ax in fig.axes:
            # Outside every panel: it covers no bar, line or point, whatever the data.
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend, ax)
            for label in [ax.xaxis.label, *ax.get_xticklabels()]:
                if label.get_text() and label.get_visible():
                    assert not box.overlaps(label.get_window_extent(renderer)), label.get_text()


@pytest.mark.parametrize("sharpen", [0.3, 1.0, 3.0])
def test_diagram_legend_is_readable_and_covers_no_bar(sharpen):
    fig = reliability_diagram(*model_outputs(sharpen=sharpen, seed=7))
    assert_legends_readable_and_off_the_data(fig)
    (legend,) = all_legends(fig)
    texts = [t.get_text() for t in legend.get_texts()]
    assert sorted(texts[:3]) == ["accuracy", "gap", "perfect calibration"]
    assert texts[3].startswith("accuracy ") and texts[4].startswith("mean confidence ")


def test_diagram_legends_in_given_axes_stay_off_the_data():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax in fig.subplots(1, 3):
        reliability_diagram(*model_outputs(500, sharpen=0.3, seed=8), ax=ax)
    assert len(all_legends(fig)) == 3
    assert_legends_readable_and_off_the_data(fig)


def test_overlay_legend_is_readable_and_off_the_curves():
    fig = reliability_overlay({"under": model_outputs(sharpen=0.3, seed=9), "over": model_outputs(sharpen=3.0)})
    assert_legends_readable_and_off_the_data(fig)


def test_legend_size_arithmetic():
    from matplotlib.figure import Figure

    # 9 pt at 90 dpi is 11.25 px; a 20-inch figure (1800 px) is shown at 1330/1800 of that.
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot([0, 1], label="x")
    legend = ax.legend(fontsize=9)
    assert legend_text_px(fig, legend) == pytest.approx(11.25)
    fig.set_figwidth(20)
    assert legend_text_px(fig, legend) == pytest.approx(11.25 * 1330 / 1800)
    # The previous small sizes failed: "xx-small" (5.79 pt) was 7.2 px, "x-small" (6.94 pt) 8.7 px.
    assert legend_text_px(fig, ax.legend(fontsize="xx-small")) < MIN_LEGEND_PX


def test_histogram_panel_of_given_axes_stays_inside_a_constrained_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        reliability_diagram(*model_outputs(500, seed=5), ax=ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 6
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1
    hist = [ax for ax in fig.axes if ax.get_xlabel() == "confidence"]
    assert len(hist) == 3
    for ax, top in zip(hist, axes, strict=True):
        # Below its diagram, same x range, tick labels drawn.
        assert ax.get_position().y1 <= top.get_position().y0 + 1e-9
        assert ax.get_xlim() == top.get_xlim()
        assert any(t.get_text() for t in ax.get_xticklabels())
