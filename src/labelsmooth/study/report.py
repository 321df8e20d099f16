"""``report.html`` (self-contained: figures embedded as base64 PNG) and ``summary.md``.

Both carry the same summary tables and the same claim paragraphs (:mod:`labelsmooth.study.claims`);
the figures are also written as PNG files under ``figures/`` for the Markdown summary to link.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from labelsmooth.study import figures as F
from labelsmooth.study import stats as S
from labelsmooth.study.claims import CLAIMS, claim_paragraphs
from labelsmooth.study.findings import findings_markdown

__all__ = ["COLUMNS", "summary_rows", "write_report"]

#: Summary-table columns: (record field, header).
COLUMNS: list[tuple[str, str]] = [
    ("test_accuracy", "test acc"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("ece_quantile", "ECE (equal-mass)"),
    ("classwise_ece", "cw-ECE"),
    ("brier", "Brier"),
    ("mean_confidence", "confidence"),
    ("train_accuracy", "train acc (noisy labels)"),
    ("train_accuracy_clean", "train acc (clean labels)"),
    ("memorized_fraction", "memorised flips"),
    ("train_test_gap", "train-test gap"),
    ("es_test_accuracy", "test acc (early-stopped)"),
    ("es_ece", "ECE (early-stopped)"),
]


def summary_rows(records: Sequence[dict]) -> list[dict[str, str]]:
    """One row per dataset x noise rate x variant: ``mean ± 95% t-interval half-width`` per column.

    Args:
        records: run records.

    Returns:
        Rows as ``{"dataset", "noise", "method", "seeds", <header>: text, ...}``.
    """
    rows = []
    for ds in S.datasets(records):
        for r in S.noise_settings(records, ds):
            for v in S.variants(records, ds):
                cell = S.cell(records, ds, v, r)
                if not cell:
                    continue
                row = {"dataset": ds, "noise": S.noise_label(r), "method": S.label(v), "seeds": str(len(cell))}
                for key, header in COLUMNS:
                    row[header] = S.fmt(S.estimate(c.get(key) for c in cell))
                rows.append(row)
    return rows


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no finished runs_\n"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row[h] for h in headers) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p><em>no finished runs</em></p>"
    headers = list(rows[0])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row[h])}</td>" for h in headers) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td:nth-child(-n+4) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.claim { background: #f8f8fb; border-left: 4px solid #4a6fa5; padding: 0.6em 1em; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def write_report(records: Sequence[dict], out: str | os.PathLike,
                 load: Callable[[dict], tuple[np.ndarray, np.ndarray]], meta: dict,
                 load_projection: Callable[[dict], object] | None = None) -> tuple[Path, Path]:
    """Write ``report.html``, ``summary.md`` and ``figures/*.png`` into ``out``.

    Args:
        records: the finished run records of this grid.
        out: output folder.
        load: returns a record's saved test ``(probs, labels)`` (for the reliability diagrams).
        meta: header facts: ``command``, ``created``, ``versions``, ``config``, ``datasets``
            (name -> description), ``missing`` (runs planned but not finished), ``quick`` (a smoke
            test: no verdicts) and ``n_seeds``.
        load_projection: returns a record's penultimate-layer projection, or ``None``.

    Returns:
        ``(report.html path, summary.md path)``.
    """
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    paragraphs = claim_paragraphs(records, smoke=bool(meta.get("quick")))
    rows = summary_rows(records)

    load_projection = load_projection or (lambda r: None)
    figures: list[tuple[str, str, str]] = []  # (file stem, title, caption)
    pngs: dict[str, bytes] = {}

    def add(stem: str, title: str, caption: str, make: Callable[[], object]) -> None:
        try:
            fig = make()
            if fig is None:
                return
        except Exception as err:  # a figure that cannot be drawn must not lose the whole report
            figures.append((stem, title, f"(figure not drawn: {type(err).__name__}: {err})"))
            return
        pngs[stem] = _png(fig)
        (fig_dir / f"{stem}.png").write_bytes(pngs[stem])
        figures.append((stem, title, caption))

    if records:
        add("accuracy_vs_noise", "Test accuracy vs noise level (last step)",
            "Mean over seeds, 95% t-interval error bars; noise level = fraction of the breakdown rate "
            "(1 - 1/K symmetric, 1/2 pair-flip); ts has ce's accuracy by construction and is not drawn.",
            lambda: F.accuracy_vs_noise(records))
        add("accuracy_vs_noise_es", "Test accuracy vs noise level (early-stopped on validation)",
            "The same models at the step of best validation accuracy.",
            lambda: F.accuracy_vs_noise(records, "es_"))
        add("ece_vs_eps", "ECE vs label smoothing",
            "eps = 0 is ce; stars are ce + temperature scaling.",
            lambda: F.metric_vs_eps(records, "ece", "ECE (15 equal-width bins)"))
        add("ece_quantile_vs_eps", "ECE with equal-mass bins vs label smoothing",
            "15 bins holding equal numbers of test examples.",
            lambda: F.metric_vs_eps(records, "ece_quantile", "ECE (15 equal-mass bins)"))
        add("gap_vs_eps", "Train-test gap vs label smoothing",
            "Accuracy on the clean training labels minus test accuracy.",
            lambda: F.metric_vs_eps(records, "train_test_gap", "train acc - test acc", posthoc=False))
        if any(r.get("memorized_fraction") is not None for r in records):
            add("memorised_vs_eps", "Memorised flipped labels vs label smoothing",
                "Of the flipped training labels, the share the final model predicts as the flipped label "
                "(1.0 = every flip memorised).",
                lambda: F.metric_vs_eps(records, "memorized_fraction", "memorised fraction", posthoc=False))
        if S.baseline_variant(records) is not None:
            add("effect_sizes", "Binary vs multiclass: effect of smoothing",
                "Paired differences smoothing - ce; hatched bars are binary datasets.",
                lambda: F.effect_size_figure(records))
        for ds in S.datasets(records):
            r0 = S.noise_settings(records, ds)[0]
            add(f"reliability_{_safe(ds)}", f"Reliability diagrams: {ds}",
                "One panel per method; bars: accuracy per confidence bin; hatched: gap to the diagonal.",
                lambda ds=ds, r0=r0: F.reliability_grid(records, load, ds, r0))
            add(f"curves_{_safe(ds)}", f"Learning curves: {ds}",
                "Mean over seeds, against the Adam step (the budget is the same on every dataset); validation "
                "split only. A validation NLL that rises while accuracy stays flat is over-confidence growing.",
                lambda ds=ds: F.learning_curves(records, ds))
            if any(r.get("has_projection") for r in records if r["dataset"] == ds):
                add(f"projection_{_safe(ds)}", f"Penultimate layer: {ds}",
                    "Validation examples of classes 0, 1, 2 projected onto the plane of their templates "
                    "(Müller et al. 2019), seed 0, clean labels.",
                    lambda ds=ds: F.projection_figure(records, load_projection, ds))

    # ---- Markdown
    md = [f"# labelsmooth study\n", f"`{meta.get('command', '')}` — {meta.get('created', '')}\n"]
    md.append(_header_md(meta, records))
    md.append("## The claims\n")
    for key, claim in CLAIMS.items():
        md.append(f"### {claim}\n\n{paragraphs[key]}\n")
    md.append(f"### How much these numbers can say\n\n{paragraphs['statistics']}\n")
    md.append("## Summary (mean ± 95% t-interval over seeds)\n")
    md.append(_markdown_table(rows))
    md.append("\n## Figures\n")
    for stem, title, caption in figures:
        md.append(f"### {title}\n\n{caption}\n")
        if stem in pngs:
            md.append(f"![{title}](figures/{stem}.png)\n")
    md_path = out / "summary.md"
    _atomic_text(md_path, "\n".join(md))
    _atomic_text(out / "findings.md", findings_markdown(records, meta))

    # ---- HTML
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>labelsmooth study</title><style>{_CSS}</style>"
         "</head><body>", "<h1>labelsmooth study</h1>",
         f"<p><code>{html.escape(meta.get('command', ''))}</code> — {html.escape(meta.get('created', ''))}</p>",
         _header_html(meta, records), "<h2>The claims</h2>"]
    for key, claim in CLAIMS.items():
        paras = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs[key].split("\n\n"))
        h.append(f"<div class='claim' id='claim-{key}'><h3>{html.escape(claim)}</h3>{paras}</div>")
    h.append(f"<div class='claim' id='claim-statistics'><h3>How much these numbers can say</h3>"
             f"<p>{html.escape(paragraphs['statistics'])}</p></div>")
    h.append("<h2>Summary (mean ± 95% t-interval over seeds)</h2>")
    h.append(_html_table(rows))
    h.append("<h2>Figures</h2>")
    for stem, title, caption in figures:
        h.append(f"<h3>{html.escape(title)}</h3><p>{html.escape(caption)}</p>")
        if stem in pngs:
            b64 = base64.b64encode(pngs[stem]).decode("ascii")
            h.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">')
    h.append("</body></html>")
    html_path = out / "report.html"
    _atomic_text(html_path, "\n".join(h))
    return html_path, md_path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _header_lines(meta: dict, records: Sequence[dict]) -> list[str]:
    lines = []
    cfg = meta.get("config", {})
    if cfg:
        lines.append("Training: " + ", ".join(f"{k}={_show(v)}" for k, v in cfg.items()))
    for ds, desc in meta.get("datasets", {}).items():
        lines.append(f"{ds}: {desc}")
    if meta.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    lines.append(f"{len(records)} finished runs.")
    if meta.get("missing"):
        lines.append(f"{meta['missing']} planned runs are not finished yet: this report covers the finished ones "
                     "only (re-run the same command to complete them).")
    lines.append("How to read: ce = cross-entropy (eps = 0); ls eps=e = uniform label smoothing; focal = focal loss "
                 "(gamma 3); ts = the ce model with temperature scaling fitted on clean validation labels; "
                 "ts-noisyval = the same fitted on noisy validation labels; ls+ts = smoothing then temperature "
                 "scaling. Noise levels are fractions of the breakdown rate (1 - 1/K symmetric, 1/2 pair-flip); "
                 "noise flips training labels (and, for ts-noisyval only, validation labels); test labels are "
                 "clean. Differences are paired by seed (same split, noise, initialisation and batch order); "
                 "intervals are 95% Student-t over seeds; fewer than 3 seeds give no verdict. Two checkpoints "
                 "per training are scored on the test split: the last step and the step of best validation "
                 "accuracy (early-stopped); every choice is made on the validation split.")
    return lines


def _show(value) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_show(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _header_md(meta: dict, records: Sequence[dict]) -> str:
    return "\n".join(f"- {line}" for line in _header_lines(meta, records)) + "\n"


def _header_html(meta: dict, records: Sequence[dict]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _header_lines(meta, records)) + "</ul>"
