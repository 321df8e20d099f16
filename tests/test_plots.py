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


@pytest.mark.parametrize("confidence,accuracy", [(0.55, 1.0), (0.95, 0.5)])
def test_gap_band_shows_the_legend_colour_for_under_and_over_confidence(confidence, accuracy):
    from matplotlib.colors import to_rgb

    # n samples all at one confidence; a share `accuracy` of them correct: one bin, a known gap.
    n = 200
    probs = torch.tensor([[confidence, 1 - confidence]] * n, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    labels[: round(n * (1 - accuracy))] = 1
    fig = reliability_diagram(probs, labels, n_bins=10)
    top = fig.axes[0]
    handle = next(
        h
        for h, t in zip(top.get_legend().legend_handles, top.get_legend().get_texts(), strict=True)
        if t.get_text() == "gap"
    )
    legend_rgb = np.array(handle.get_facecolor()[:3])
    assert handle.get_facecolor()[3] == 1.0  # opaque: nothing beneath can tint it
    # Middle of the band between accuracy and confidence, in the middle of the bin's width.
    bin_centre = (np.floor(confidence * 10) + 0.5) / 10
    seen = _most_common_colour(fig, top, bin_centre, (confidence + accuracy) / 2)
    np.testing.assert_allclose(seen, legend_rgb, atol=2 / 255)
    np.testing.assert_allclose(legend_rgb, to_rgb("#f4b4b4"), atol=1e-9)


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
