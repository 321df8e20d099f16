"""The study's report as a reader sees it: what the HTML says (banner, tables, captions), what the
reliability panels compute, and the rendered page in headless Chromium at 1400 px.

The browser test skips when no Chromium is installed, unless ``REPORT_CHECK_REQUIRE=1`` (what
``make report-check`` sets). ``REPORT_CHECK_OUT=DIR`` keeps the screenshots and the layout numbers
there; ``REPORT_CHECK_HTML=FILE`` checks that report instead of the small one built here.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from labelsmooth.cli import main
from labelsmooth.plots import LEGEND_FONTSIZE
from labelsmooth.study import figures as F
from labelsmooth.study import report as R
from labelsmooth.study import stats as S
from labelsmooth.study.report import COLUMNS, write_report
from labelsmooth.study.runner import ResultsStore
from test_plots import MIN_LEGEND_PX, REPORT_DPI, all_legends, assert_legends_readable_and_off_the_data

WIDTH = 1400  # the browser window the report must fit


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small real study: 3 seeds, a 10-class and a binary dataset, clean and noisy labels."""
    out = tmp_path_factory.mktemp("report") / "run"
    argv = [
        "study",
        "--datasets",
        "digits,breast_cancer",
        "--methods",
        "ce,ls,ts",
        "--eps",
        "0,0.1",
        "--noise",
        "0,0.4",
        "--seeds",
        "3",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    store = ResultsStore(out)
    return out, list(store.records.values()), store.load_probs


def rerender(study, tmp_path, records=None, **meta):
    """Write the report of ``study`` again into ``tmp_path`` with other records or header facts."""
    _, recs, load = study
    meta = {"command": "labelsmooth study", "created": "now", **meta}
    html_path, md_path = write_report(recs if records is None else records, tmp_path, load, meta)
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- what the HTML says


def test_full_report_has_no_banner_and_split_tables_hold_every_column(study):
    out, _records, _ = study
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "id='preliminary'" not in page and "Preliminary" not in (out / "summary.md").read_text()
    tables = re.findall(r"<table>.*?</table>", page, flags=re.S)
    headers = [[html_lib.unescape(h) for h in re.findall(r"<th>(.*?)</th>", t)] for t in tables]
    assert len(tables) >= 2
    # Each table repeats the row labels; every metric column appears in exactly one table.
    for hs in headers:
        assert hs[:4] == ["dataset", "noise", "method", "seeds"]
        assert len(hs) <= 10
    metric_headers = [h for hs in headers for h in hs[4:]]
    assert sorted(metric_headers) == sorted(h for _, h in COLUMNS)
    # Every table wraps in a container that scrolls instead of widening the page.
    assert page.count("<div class='table-wrap'><table>") == len(tables)


def test_captions_name_flipped_labels_and_the_two_eces(study):
    out, _, _ = study
    page = html_lib.unescape((out / "report.html").read_text(encoding="utf-8"))
    caption = re.search(r"<h3>Memorised flipped labels vs label smoothing</h3><p>(.*?)</p>", page).group(1)
    assert "noisy training labels" not in caption
    assert caption.startswith(
        "Of the training labels that noise flipped, the share the final model predicts as the flipped label"
    )
    assert "mean of the per-seed ECEs, which is the ECE of the summary table" in page


@pytest.mark.parametrize(
    "meta,seeds,quick",
    [
        ({"command": "labelsmooth study --quick --out runs/x"}, 3, True),
        ({"quick": True}, 3, True),
        ({"config": {"quick": True, "seeds": 3}}, 3, True),
        ({"config": {"quick": False, "seeds": 1}}, 1, False),
        ({"command": "labelsmooth study --quick", "config": {"seeds": 1}}, 1, True),
        ({"config": "not a dict"}, 3, False),  # read defensively: an odd meta is no reason to fail
    ],
)
def test_banner_when_quick_or_fewer_than_three_seeds(study, meta, seeds, quick):
    records = [r for r in study[1] if r["seed"] < seeds]
    banner = R._preliminary(meta, records)
    if not quick and seeds >= 3:
        assert banner is None
        return
    headline, text = banner
    assert headline == "Preliminary: no verdicts."
    assert ("made with --quick" in text) == quick
    assert ("rest on 1 seed " in text) == (seeds == 1)


def test_banner_is_the_first_thing_in_both_outputs(study, tmp_path):
    records = [r for r in study[1] if r["seed"] == 0]
    page, md = rerender(study, tmp_path, records, command="labelsmooth study --quick")
    banner = re.search(r"<div class='banner' id='preliminary'>(.*?)</div>", page, flags=re.S)
    assert banner is not None
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", banner.group(1)))
    assert text.startswith("Preliminary: no verdicts.") and "rest on 1 seed " in text
    assert "<code class='opt'>--quick</code>" in banner.group(1)  # the option is never split across lines
    assert page.index("id='preliminary'") < page.index("<h2>")
    assert "\n> **Preliminary: no verdicts.**" in md.split("## The claims")[0]


def test_banner_counts_the_seeds_of_the_thinnest_cell(study, tmp_path):
    # A partly finished grid: one cell with two seeds makes the whole report preliminary.
    records = [r for r in study[1] if not (r["dataset"] == "digits" and r["method"] == "ls" and r["seed"] == 2)]
    _, text = R._preliminary({"config": {"seeds": 3}}, records)
    assert "rest on 2 seeds" in text


# ----------------------------------------------------------------------------- the reliability panels


def ece_numpy(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins, written out here (independent of labelsmooth.calibration)."""
    if probs.ndim == 1:  # P(y=1) of a binary model: top label and its confidence
        pred = (probs >= 0.5).astype(int)
        conf = np.where(pred == 1, probs, 1 - probs)
    else:
        pred, conf = probs.argmax(1), probs.max(1)
    correct = (pred == labels).astype(float)
    # Bin b holds confidences in (b/n, (b+1)/n], as torchmetrics bins them.
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return total / len(labels)


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_reliability_titles_give_pooled_and_mean_of_seed_eces(study, dataset):
    _, records, load = study
    clean = S.noise_settings(records, dataset)[0]
    fig = F.reliability_grid(records, load, dataset, clean)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    variants = S.variants(records, dataset)
    assert len(titles) == len(variants)
    for title, v in zip(titles, variants, strict=True):
        cell = S.cell(records, dataset, v, clean)
        pairs = [load(r) for r in cell]
        pooled = ece_numpy(np.concatenate([p for p, _ in pairs]), np.concatenate([y for _, y in pairs]))
        table = np.mean([r["ece"] for r in cell])  # the summary table's number
        per_seed = np.mean([ece_numpy(p, y) for p, y in pairs])
        assert abs(per_seed - table) < 1e-9
        assert title.splitlines()[0] == S.label(v)
        assert f"ECE of pooled seeds {pooled:.3f}" in title
        assert f"mean of per-seed ECEs {table:.3f}" in title
        assert pooled <= table + 1e-12  # equal-size test sets: pooling can only offset errors


def test_reliability_grid_wraps_rows_and_keeps_every_panel_inside_the_figure(study):
    _, records, load = study
    many = [
        dict(r, label_smoothing=e, key=f"{r['key']}|{e}")
        for r in records
        if r["dataset"] == "digits" and r["method"] == "ls"
        for e in (0.2, 0.3, 0.4, 0.5)
    ]
    fig = F.reliability_grid(records + many, load, "digits", S.noise_settings(records, "digits")[0])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    tops = sorted({round(ax.get_position().y1, 3) for ax in fig.axes if ax.get_title()})
    assert len(tops) == 2  # 7 variants: a row of 4 and a row of 3
    assert fig.get_size_inches()[0] <= 3.6 * F.RELIABILITY_COLUMNS + 1e-9
    for ax in fig.axes:
        tight = ax.get_tightbbox(renderer)
        # Tick labels, axis labels and titles all inside the canvas (1 px of rounding).
        assert tight.x0 >= box.x0 - 1 and tight.y0 >= box.y0 - 1, ax.get_xlabel()
        assert tight.x1 <= box.x1 + 1 and tight.y1 <= box.y1 + 1, ax.get_xlabel()
    hist = [ax for ax in fig.axes if ax.get_xlabel() == "confidence"]
    assert len(hist) == 7 and all(ax.get_ylabel() == "count" for ax in hist)
    assert all(any(t.get_text() for t in ax.get_xticklabels()) for ax in hist)


# ----------------------------------------------------------------------------- legends


def report_dpi() -> float:
    """The dpi the report embeds figures at, read off the PNG of a one-inch figure."""
    fig = F._new_figure((1.0, 1.0))
    head = R._png(fig)[:24]
    return float(struct.unpack(">II", head[16:24])[0])


def test_the_legend_checks_use_the_reports_dpi():
    assert report_dpi() == pytest.approx(REPORT_DPI, abs=1)


def test_every_report_figure_has_readable_legends_that_cover_no_data(study, tmp_path, monkeypatch):
    drawn = []
    png = R._png

    def keep(fig):
        drawn.append(fig)
        return png(fig)

    monkeypatch.setattr(R, "_png", keep)
    rerender(study, tmp_path)
    assert len(drawn) == len(list((tmp_path / "figures").glob("*.png"))) >= 8
    for fig in drawn:
        # Text >= 10 px as a 1400 px window shows the PNG; outside every panel (so over no bar of a
        # histogram or a bar chart, no line, no point) and off every x tick label and axis label. A
        # figure with nothing labelled (here: projections, not loaded) has no legend.
        assert_legends_readable_and_off_the_data(fig, require=False)
        assert len(all_legends(fig)) <= 1  # one legend per figure, not one per panel
    assert sum(bool(all_legends(fig)) for fig in drawn) >= 8
    accuracy = next(f for f in drawn if any(ax.get_ylabel() == "test accuracy" for ax in f.axes))
    # A colour per variant and a line style per noise kind, each named once (not every pair).
    texts = [t.get_text() for t in accuracy.legends[0].get_texts()]
    records = study[1]
    kinds = {k for ds in S.datasets(records) for k, level in S.noise_settings(records, ds) if level > 0}
    assert len(kinds) == 2  # ce and ls on two noise kinds: 4 lines per panel, named by 2 + 2 entries
    assert texts == ["ce", "ls eps=0.1", *(f"{k} noise" for k in sorted(kinds))]


def test_a_long_legend_wraps_into_rows_inside_the_figure(study):
    records = study[1]
    # 12 variants (ce and 11 eps) on two noise kinds: 24 lines per panel, named by 12 + 2 entries.
    many = [
        dict(r, label_smoothing=e, key=f"{r['key']}|{e}")
        for r in records
        if r["method"] == "ls"
        for e in (0.05, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    ]
    fig = F.accuracy_vs_noise(records + many)
    assert fig.get_size_inches()[1] > 3.4  # grown by the legend's rows: the panels keep their size
    assert_legends_readable_and_off_the_data(fig)
    (legend,) = all_legends(fig)
    assert len(legend.get_texts()) == 14
    assert 1 < legend._ncols < 14  # several rows, each as wide as fits


def test_reliability_grid_draws_accuracy_bars_above_the_gap_bands(study):
    _, records, load = study
    noisy = S.noise_settings(records, "digits")[-1]
    fig = F.reliability_grid(records, load, "digits", noisy)
    tops = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy"]
    assert len(tops) == len(S.variants(records, "digits"))
    for ax in tops:
        accuracy, gap = ax.containers[:2]
        assert accuracy.get_label() == "accuracy" and gap.get_label() == "gap"
        assert min(p.get_zorder() for p in accuracy) > max(p.get_zorder() for p in gap)
        assert all(p.get_visible() and p.get_facecolor()[3] == 1.0 for p in accuracy)
        assert ax.get_legend() is None  # the figure's one legend says what the bars are
    # The histograms' marks are named in the figure's legend, their values in each panel's title.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "gap" in legend and "mean confidence (histogram)" in legend
    assert all(re.search(r"accuracy \d\.\d{3}, confidence \d\.\d{3}$", ax.get_title()) for ax in tops)
    fig.canvas.draw()
    boxes = [ax.title.get_window_extent(fig.canvas.get_renderer()) for ax in tops]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])  # titles side by side


# ----------------------------------------------------------------------------- in a browser

_PROBE = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement;
  var out = {innerWidth: window.innerWidth, clientWidth: d.clientWidth, scrollWidth: d.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    tables: Array.from(document.querySelectorAll('table')).map(function (t) {
      var w = t.parentElement; return {table: t.offsetWidth, box: w.clientWidth, scroll: w.scrollWidth}; }),
    images: Array.from(document.images).map(function (i) {
      return {alt: i.alt, natural: i.naturalWidth, shown: i.clientWidth}; })};
  var pre = document.createElement('pre'); pre.id = 'layout-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def run_chromium(exe: str, args: list[str], height: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state from earlier runs
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{height}",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_fits_a_1400px_browser_window(request, tmp_path):
    exe = chromium()
    if exe is None:
        if os.environ.get("REPORT_CHECK_REQUIRE") == "1":
            pytest.fail("no Chromium found (install Debian's chromium package, or set CHROMIUM=/path/to/chrome)")
        pytest.skip("headless Chromium not installed (make report-check needs it)")
    given = os.environ.get("REPORT_CHECK_HTML")
    # The small study is trained only when it is needed (not for a skip, nor for a given report).
    source = Path(given or request.getfixturevalue("study")[0] / "report.html").resolve()
    if not source.is_file():
        pytest.fail(f"REPORT_CHECK_HTML={str(source)!r} is not a file")
    keep = Path(os.environ["REPORT_CHECK_OUT"]) if os.environ.get("REPORT_CHECK_OUT") else tmp_path
    keep.mkdir(parents=True, exist_ok=True)
    # The probe page sits beside the report, so relative image paths (if any) still resolve.
    probe = source.with_name(f".layout-probe-{os.getpid()}.html")
    probe.write_text(source.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        dom = run_chromium(exe, ["--dump-dom", probe.as_uri()], 2000)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom.stdout, flags=re.S)
    assert found, f"the page's layout probe did not run: {dom.stderr[-2000:]}"
    layout = json.loads(html_lib.unescape(found.group(1)))
    (keep / "layout.json").write_text(json.dumps(layout, indent=1))

    shots = []
    for height in (2000, 12000):  # the first screen, and the whole report in one image
        shot = keep / f"report-{WIDTH}x{height}.png"
        run_chromium(exe, [f"--screenshot={shot}", source.as_uri()], height)
        assert png_size(shot) == (WIDTH, height)
        shots.append(shot)

    assert layout["innerWidth"] == WIDTH  # the window really was 1400 px wide
    # Nothing wider than the window: no horizontal scrolling of the page.
    assert layout["scrollWidth"] <= layout["clientWidth"] == WIDTH, layout
    assert layout["bodyScrollWidth"] <= WIDTH, layout
    # Every table is shown whole, without its scroll container having to scroll.
    assert layout["tables"], "no summary table rendered"
    for t in layout["tables"]:
        assert t["scroll"] <= t["box"], t
    # Figures at (nearly) their own size: a shrunk PNG is a figure with unreadable text.
    dpi = report_dpi()
    for img in layout["images"]:
        assert img["natural"] > 0, img
        assert img["shown"] >= 0.8 * img["natural"], img
        # Legend text (LEGEND_FONTSIZE points in the PNG) as the browser shows it, in CSS px.
        assert img["shown"] / img["natural"] * LEGEND_FONTSIZE * dpi / 72 >= MIN_LEGEND_PX, img


@pytest.mark.parametrize("text", ["first dataset.\n\nsecond dataset.", ["first dataset.", "second dataset."]])
def test_claim_text_with_several_paragraphs_renders_one_block_each(text):
    assert R._html_paragraphs(text) == "<p>first dataset.</p><p>second dataset.</p>"
    assert R._html_paragraphs("a < b") == "<p>a &lt; b</p>"


def test_a_column_in_no_group_gets_its_own_table(monkeypatch):
    monkeypatch.setattr(R, "COLUMNS", [*R.COLUMNS, ("val_accuracy", "val acc")])
    rows = [
        {
            "dataset": "d",
            "noise": "0",
            "method": "ce",
            "seeds": "3",
            **{h: f"{i}" for i, (_, h) in enumerate(R.COLUMNS)},
        }
    ]
    groups = R._table_groups(rows)
    assert [t for t, _ in groups][-1] == "More columns"
    assert list(groups[-1][1][0]) == ["dataset", "noise", "method", "seeds", "val acc"]
    assert sum(len(part[0]) - 4 for _, part in groups) == len(R.COLUMNS)
