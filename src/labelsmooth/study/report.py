"""``report.html`` (self-contained: figures embedded as base64 PNG) and ``summary.md``.

Both carry the same summary tables and the same claim paragraphs (:mod:`labelsmooth.study.claims`);
the figures are also written as PNG files under ``figures/`` for the Markdown summary to link.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelsmooth.study import figures as F
from labelsmooth.study import stats as S
from labelsmooth.study import verdicts as V
from labelsmooth.study.claims import CLAIMS, MIN_SEEDS, claim_paragraphs, study_verdicts
from labelsmooth.study.findings import advice, findings_markdown, verdicts_payload

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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

#: The summary is printed as several narrower tables, so that each fits a 1400 px window: (title,
#: record fields). Columns of COLUMNS that no group names go into one more table, "More columns".
TABLE_GROUPS: list[tuple[str, list[str]]] = [
    ("Test set (clean labels)", ["test_accuracy", "nll", "brier", "mean_confidence"]),
    ("Calibration on the test set", ["ece", "ece_quantile", "classwise_ece"]),
    (
        "Training set (fit to the training labels, and to the flipped ones)",
        ["train_accuracy", "train_accuracy_clean", "memorized_fraction", "train_test_gap"],
    ),
    ("Early-stopped on validation (the checkpoint with the best validation accuracy)", ["es_test_accuracy", "es_ece"]),
]

#: Below this many seeds per compared cell a report is marked preliminary: no verdicts (the claims'
#: own threshold, :data:`labelsmooth.study.claims.MIN_SEEDS`).
MIN_SEEDS_FOR_VERDICTS = MIN_SEEDS


def summary_rows(records: Sequence[S.Record]) -> list[dict[str, str]]:
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
                method = S.label(v)
                every = S.cell(records, ds, v, r, include_failed=True)
                bound = S.temperature_at_bound(every)
                failed = sum(1 for c in every if c.get("failure"))
                if bound:
                    # The temperature fit failed there (separable validation set): those seeds are left out.
                    method += f" (T at bound in {bound}/{len(every)}, left out)"
                if failed:
                    # A diverged or collapsed training enters no mean (its NLL would be meaningless).
                    method += f" ({failed}/{len(every)} diverged or collapsed, left out)"
                row = {"dataset": ds, "noise": S.noise_label(r), "method": method, "seeds": str(len(cell))}
                for key, header in COLUMNS:
                    row[header] = S.fmt(S.estimate(c.get(key) for c in cell))
                rows.append(row)
    return rows


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


_ROW_KEYS = ("dataset", "noise", "method", "seeds")


def _table_groups(rows: list[dict[str, str]]) -> list[tuple[str, list[dict[str, str]]]]:
    """Split the summary rows column-wise into :data:`TABLE_GROUPS` (each keeps the row labels)."""
    header = dict(COLUMNS)
    present = [h for h in rows[0] if h not in _ROW_KEYS] if rows else []
    groups, used = [], set()
    for title, keys in TABLE_GROUPS:
        cols = [header[k] for k in keys if k in header and header[k] in present]
        used.update(cols)
        if cols:
            groups.append((title, cols))
    rest = [h for h in present if h not in used]
    if rest:
        groups.append(("More columns", rest))
    return [
        (title, [{**{k: r[k] for k in _ROW_KEYS if k in r}, **{c: r[c] for c in cols}} for r in rows])
        for title, cols in groups
    ]


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no finished runs_\n"
    out = []
    for title, part in _table_groups(rows):
        headers = list(part[0])
        lines = [f"**{title}**\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row[h] for h in headers) + " |" for row in part]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _html_cell(text: str) -> str:
    # The interval's half-width in a lighter, smaller font: the mean is what the eye compares.
    mean, sep, half = text.partition(" ± ")
    if not sep:
        return html.escape(text)
    return f"{html.escape(mean)}<span class='pm'> ± {html.escape(half)}</span>"


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p><em>no finished runs</em></p>"
    out = []
    for title, part in _table_groups(rows):
        headers = list(part[0])
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = []
        for i, row in enumerate(part):
            # A new dataset starts with a heavier rule, so the eye finds the groups.
            first = i == 0 or row.get("dataset") != part[i - 1].get("dataset")
            cls = " class='group'" if first and i else ""
            body.append(f"<tr{cls}>" + "".join(f"<td>{_html_cell(row[h])}</td>" for h in headers) + "</tr>")
        out.append(
            f"<h3>{html.escape(title)}</h3><div class='table-wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    return "".join(out)


_CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 24px;
       color: #222; line-height: 1.45; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; }
td:nth-child(-n+4), th:nth-child(-n+4) { text-align: left; }
tr.group td { border-top: 2px solid #888; }
.pm { color: #666; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0; }
p, li { max-width: 68em; }  /* long lines are hard to follow back to their start */
.claim { background: #f8f8fb; border-left: 4px solid #4a6fa5; padding: 0.6em 1em; margin: 1em 0; }
.banner { background: #fff4d6; border: 2px solid #d9a400; padding: 0.7em 1em; margin: 1em 0; font-size: 1.05em; }
code { background: #f3f3f3; padding: 0 0.2em; overflow-wrap: anywhere; }
code.opt { white-space: nowrap; overflow-wrap: normal; }
table.grid td { text-align: center; font-size: 0.95em; }
table.grid td:first-child { text-align: left; white-space: normal; max-width: 30em; }
table.grid a { color: inherit; text-decoration: none; }
.sup { background: #d7f0d2; } .con { background: #f6d0cc; }
.same { background: #eeeeee; } .none { background: #fafafa; }
span.sup, span.con { padding: 0 0.3em; }
h3.grid { margin-bottom: 0.2em; }
ul.defs { font-size: 0.85em; color: #444; margin-top: 0.3em; }
span.v:target + * , span.v:target { outline: 2px solid #4a6fa5; }
"""


def write_report(
    records: Sequence[S.Record],
    out: str | os.PathLike[str],
    load: F.ProbsLoader,
    meta: dict[str, Any],
    load_projection: F.ProjectionLoader | None = None,
) -> tuple[Path, Path]:
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
    smoke = bool(meta.get("quick"))
    paragraphs = claim_paragraphs(records, smoke=smoke)
    verdicts = study_verdicts(records, smoke=smoke)
    rows = summary_rows(records)

    load_projection = load_projection or (lambda r: None)
    figures: list[tuple[str, str, str]] = []  # (file stem, title, caption)
    pngs: dict[str, bytes] = {}

    def add(stem: str, title: str, caption: str, make: Callable[[], Figure | None]) -> None:
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
        add(
            "accuracy_vs_noise",
            "Test accuracy vs noise level (last step)",
            "Mean over seeds, 95% t-interval error bars; noise level = fraction of the breakdown rate "
            "(1 - 1/K symmetric, 1/2 pair-flip); ts has ce's accuracy by construction and is not drawn.",
            lambda: F.accuracy_vs_noise(records),
        )
        add(
            "accuracy_vs_noise_es",
            "Test accuracy vs noise level (early-stopped on validation)",
            "The same models at the step of best validation accuracy.",
            lambda: F.accuracy_vs_noise(records, "es_"),
        )
        add(
            "ece_vs_eps",
            "ECE vs label smoothing",
            "eps = 0 is ce; stars are ce + temperature scaling.",
            lambda: F.metric_vs_eps(records, "ece", "ECE (15 equal-width bins)"),
        )
        add(
            "ece_quantile_vs_eps",
            "ECE with equal-mass bins vs label smoothing",
            "15 bins holding equal numbers of test examples.",
            lambda: F.metric_vs_eps(records, "ece_quantile", "ECE (15 equal-mass bins)"),
        )
        if any(r.get("memorized_fraction") is not None for r in records):
            add(
                "memorised_vs_eps",
                "Memorised flipped labels vs label smoothing",
                "Of the training labels that noise flipped, the share the final model predicts as the flipped "
                "label (1.0 = every flipped label memorised).",
                lambda: F.metric_vs_eps(records, "memorized_fraction", "memorised fraction", posthoc=False),
            )
        add(
            "ksweep",
            "Binary vs multiclass: benefit of smoothing against the number of classes",
            "Tasks carved from one dataset with the same number of examples for every K; benefit = ce minus "
            "smoothing for ECE and NLL, smoothing minus ce for accuracy (positive = better), averaged over the "
            "class subsets of each K; solid: eps 0.1 everywhere, dashed: the eps giving every K the 10-class "
            "task's smoothed top target (0.91).",
            lambda: F.ksweep_figure(records),
        )
        add(
            "size_sweep",
            "Test accuracy against training-set size",
            "Stratified subsamples of each seed's training split; validation and test splits unchanged.",
            lambda: F.size_sweep_figure(records),
        )
        for ds in S.datasets(records):
            r0 = S.noise_settings(records, ds)[0]
            add(
                f"reliability_{_safe(ds)}",
                f"Reliability diagrams: {ds}",
                "One panel per method, test sets of all seeds pooled; blue bars: accuracy per confidence bin; "
                "pink hatched: the gap between a bin's accuracy and its mean confidence, which ECE averages. "
                "Each panel gives two ECEs: of the pooled test sets, and the mean of the per-seed ECEs, which "
                "is the ECE of the summary table. Pooling lets one seed's errors offset another's: with "
                "test sets of equal size the pooled ECE is never above the mean.",
                partial(F.reliability_grid, records, load, ds, r0),
            )
            add(
                f"curves_{_safe(ds)}",
                f"Learning curves: {ds}",
                "Mean over seeds, against the Adam step (the budget is the same on every dataset); validation "
                "split only. A validation NLL that rises while accuracy stays flat is over-confidence growing.",
                partial(F.learning_curves, records, ds),
            )
            if any(r.get("has_projection") for r in records if r["dataset"] == ds):
                add(
                    f"projection_{_safe(ds)}",
                    f"Penultimate layer: {ds}",
                    "Validation examples of classes 0, 1, 2 projected onto the plane of their templates "
                    "(Müller et al. 2019), seed 0, clean labels.",
                    partial(F.projection_figure, records, load_projection, ds),
                )

    # ---- Markdown
    banner = _preliminary(meta, records)
    md = [
        "# labelsmooth study\n",
        *([f"> **{banner[0]}** {banner[1]}\n"] if banner else []),
        f"`{meta.get('command', '')}` — {meta.get('created', '')}\n",
    ]
    md.append(_header_md(meta, records))
    if verdicts and not smoke:
        md.append("## What this means for your data\n")
        md += [f"- {a}" for a in advice(verdicts)]
        md.append("")
    md.append("## The claims\n")
    for key, claim in CLAIMS.items():
        text = paragraphs[key]
        text = "\n\n".join(map(str, text)) if isinstance(text, (list, tuple)) else text
        md.append(f"### {claim}\n\n{_ANCHOR.sub('', text)}\n")
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
    _atomic_text(out / "verdicts.json", json.dumps(verdicts_payload(records, meta), indent=1))

    # ---- HTML
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>labelsmooth study</title><style>{_CSS}</style>"
        "</head><body>",
        "<h1>labelsmooth study</h1>",
        *(
            [
                f"<div class='banner' id='preliminary'><strong>{html.escape(banner[0])}</strong> "
                f"{_nowrap_options(html.escape(banner[1]))}</div>"
            ]
            if banner
            else []
        ),
        f"<p><code>{html.escape(meta.get('command', ''))}</code> — {html.escape(meta.get('created', ''))}</p>",
        _verdict_grid(verdicts, smoke),
        _header_html(meta, records),
        "<h2>The claims</h2>",
    ]
    for key, claim in CLAIMS.items():
        h.append(
            f"<div class='claim' id='claim-{key}'><h3>{html.escape(claim)}</h3>"
            f"{_html_paragraphs(paragraphs[key])}</div>"
        )
    h.append(
        "<div class='claim' id='claim-statistics'><h3>How much these numbers can say</h3>"
        f"{_html_paragraphs(paragraphs['statistics'])}</div>"
    )
    h.append("<h2 id='summary'>Summary (mean ± 95% t-interval over seeds)</h2>")
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


def _preliminary(meta: dict[str, Any], records: Sequence[S.Record]) -> tuple[str, str] | None:
    """``(headline, explanation)`` for a report too small for verdicts, else ``None``.

    A report is preliminary when it was made with ``--quick`` (a smoke test with a short budget) or
    when some compared cell (dataset x method x noise rate) has fewer than
    :data:`MIN_SEEDS_FOR_VERDICTS` seeds. ``meta`` is read defensively: ``quick`` may sit at its top
    level or in ``config``, or only show in the command line; the seed count is taken from the
    records themselves, so a partly finished run is judged by what it holds.
    """
    cfg = meta.get("config") or {}
    command = str(meta.get("command") or "")
    quick = bool(meta.get("quick") or (isinstance(cfg, dict) and cfg.get("quick")) or "--quick" in command.split())
    seeds = [
        len(S.cell(records, ds, v, r, include_failed=True))
        for ds in S.datasets(records)
        for r in S.noise_settings(records, ds)
        for v in S.variants(records, ds)
    ]
    fewest = min((n for n in seeds if n), default=0)
    if not quick and fewest >= MIN_SEEDS_FOR_VERDICTS:
        return None
    why = []
    if quick:
        why.append("it was made with --quick (a smoke test: its short training budget cannot support conclusions)")
    if fewest < MIN_SEEDS_FOR_VERDICTS:
        why.append(
            f"some comparisons rest on {fewest} seed{'s' if fewest != 1 else ''} (at least "
            f"{MIN_SEEDS_FOR_VERDICTS} are needed for an interval worth reading)"
        )
    return (
        "Preliminary: no verdicts.",
        "This report shows that the pipeline runs; its numbers are not evidence for or against the "
        "claims, because " + ", and ".join(why) + ". Run the default grid (without --quick) for the study.",
    )


#: The verdict marks of the claim paragraphs (``<<anchor>>``, see :func:`claim_paragraphs`).
_ANCHOR = re.compile(r"<<([A-Za-z0-9-]+)>>")
_HTML_ANCHOR = re.compile(r"&lt;&lt;([A-Za-z0-9-]+)&gt;&gt;")  # the same mark once the text is escaped


def _html_paragraphs(text: str | Sequence[str]) -> str:
    # A claim's text may hold several paragraphs (one per dataset), separated by blank lines, or
    # come as a list of them; each becomes its own <p> so the reader sees one block per dataset. A
    # verdict's mark becomes the target the verdict grid links to.
    parts = list(text) if isinstance(text, (list, tuple)) else str(text).split("\n\n")
    return "".join(
        "<p>"
        + _HTML_ANCHOR.sub(lambda m: f"<span class='v' id='{m.group(1)}'></span>", html.escape(str(p).strip()))
        + "</p>"
        for p in parts
        if str(p).strip()
    )


#: Claim key -> the CSS class of an outcome in the verdict grid.
_OUTCOME_CLASS = {"supports": "sup", "contradicts": "con", "same": "same", "withheld": "none", "unknown": "none"}


def _verdict_grid(verdicts: Sequence[V.Verdict], smoke: bool) -> str:
    """The one-screen answer: per claim, a table of comparison x dataset, each cell the signed effect
    and its Holm-level interval, coloured by outcome and linked to its paragraph; then the advice."""
    if not verdicts:
        return ""
    h = [
        "<h2 id='answer'>The answer at a glance</h2>",
        "<p class='key'>Each cell: the effect signed so that <b>positive is what the claim predicts</b>, and its "
        "interval at the level Holm's correction used within the claim. <span class='sup'>green</span>: "
        "supports the claim; <span class='con'>red</span>: contradicts it; grey: no clear difference (or no "
        "verdict). Click a cell for its paragraph. Every verdict: n seeds paired by seed (split, noise, "
        "initialisation and batch order shared), every choice made on validation labels a user would have, the "
        "test split read once.</p>",
    ]
    for claim, title in CLAIMS.items():
        vs = [v for v in verdicts if v.claim == claim]
        if not vs:
            continue
        cols = list(dict.fromkeys(v.dataset for v in vs))
        rows: dict[tuple[str, str, str], dict[str, V.Verdict]] = {}
        for v in vs:
            rows.setdefault((v.question, v.metric, v.setting), {})[v.dataset] = v
        h.append(f"<h3 class='grid'>{html.escape(title)}</h3><table class='grid'><tr><th>comparison</th>")
        h.append("".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for (question, metric, setting), cells in rows.items():
            h.append(f"<tr><td>{html.escape(f'{question}, {metric}, {setting}')}</td>")
            for c in cols:
                cell = cells.get(c)
                if cell is None:
                    h.append("<td></td>")
                    continue
                cls = _OUTCOME_CLASS[cell.outcome]
                tip = html.escape(f"{cell.measures}. Falsified by: {cell.falsified_by}. n = {cell.n}.", quote=True)
                link = f"<a href='#{cell.anchor}'>{html.escape(cell.text())}</a>"
                h.append(f"<td class='{cls}' title='{tip}'>{link}</td>")
            h.append("</tr>")
        h.append("</table><ul class='defs'>")
        seen: dict[tuple[str, str], V.Verdict] = {}
        for v in vs:
            seen.setdefault((v.question, v.metric), v)
        for (question, metric), v in seen.items():
            h.append(
                f"<li><b>{html.escape(f'{question}, {metric}')}</b>: measures {html.escape(v.measures)}; "
                f"falsified by {html.escape(v.falsified_by)}.</li>"
            )
        h.append("</ul>")
    if not smoke:
        h.append("<h3>What this means for your data</h3><ul>")
        h += [f"<li>{html.escape(a)}</li>" for a in advice(verdicts)]
        h.append("</ul>")
    return "".join(h)


def _nowrap_options(escaped: str) -> str:
    # A browser may break a line after "--"; a command-line option must stay whole to be copied.
    return escaped.replace("--quick", "<code class='opt'>--quick</code>")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _header_lines(meta: dict[str, Any], records: Sequence[S.Record]) -> list[str]:
    lines = []
    cfg = meta.get("config", {})
    if cfg:
        lines.append("Training: " + ", ".join(f"{k}={_show(v)}" for k, v in cfg.items()))
    hp = meta.get("hyperparameters") or {}
    if hp:
        lines.append(
            "Learning rate and weight decay chosen on validation by ce (best mean early-stopped accuracy on the "
            "noisy validation labels), then used by every method: "
            + "; ".join(
                f"{k.replace('|', ' ')}: lr {v['lr']:g}, weight decay {v['weight_decay']:g}" for k, v in hp.items()
            )
        )
    for ds, desc in meta.get("datasets", {}).items():
        lines.append(f"{ds}: {desc}")
    if meta.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    lines.append(f"{len(records)} finished runs.")
    if meta.get("missing"):
        lines.append(
            f"{meta['missing']} planned runs are not finished yet: this report covers the finished ones "
            "only (re-run the same command to complete them)."
        )
    lines.append(
        "How to read: ce = cross-entropy (eps = 0); ls eps=e = uniform label smoothing; focal = focal loss "
        "(gamma 3); nls = negative smoothing after a cross-entropy warm-up; fc / fc-est = forward loss "
        "correction with the true / an estimated transition matrix; ts = the ce model with temperature "
        "scaling fitted on the validation labels a user has (noisy when the training labels are); ts-oracle = "
        "the same fitted on clean validation labels; ls+ts = smoothing then temperature scaling. Noise levels "
        "are fractions of the breakdown rate (1 - 1/K symmetric, 1/2 pair-flip); noise flips training labels "
        "and, in its own draw, validation labels; test labels are clean. Differences are paired by seed (same "
        "split, noise, initialisation and batch order); the summary table's intervals are 95% Student-t over "
        "seeds, a verdict's interval is at its Holm level; fewer than 3 seeds give no verdict. Three "
        "checkpoints per training are scored on the test split: the last step, the step of best accuracy on "
        "the noisy validation labels (early-stopped) and, as an oracle, on clean ones; every choice is made "
        "on validation. Diverged or collapsed trainings and temperatures at the end of their range enter no "
        "mean and are counted where they occur."
    )
    return lines


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_show(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _header_md(meta: dict[str, Any], records: Sequence[S.Record]) -> str:
    return "\n".join(f"- {line}" for line in _header_lines(meta, records)) + "\n"


def _header_html(meta: dict[str, Any], records: Sequence[S.Record]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _header_lines(meta, records)) + "</ul>"
