"""The ``labelsmooth`` command line: ``labelsmooth study`` (the main job), ``labelsmooth evaluate`` (the
same questions asked of a user's own predictions) and ``labelsmooth bench``.

``python -m labelsmooth`` is the same program. Bad arguments are argparse errors (exit code 2) whose
message names the option and the value; nothing here prints a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from labelsmooth.study.runner import StudyConfig

__all__ = ["build_parser", "main"]


#: The default grid (about 15 minutes on 2 cores); ``--full`` and ``--quick`` replace the entries they
#: name. The budget is a number of Adam steps, the same on every dataset (docs/study.md: "Budget").
#: Noise levels are fractions of the breakdown rate, so 0.5 is the same severity for 2 and for 10
#: classes. The K-sweep tasks (``mnist1d:kKsS``) carve 2-, 3-, 5- and 10-class tasks of equal size
#: from MNIST-1D for the binary claim.
class _Preset(TypedDict, total=False):
    datasets: list[str]
    methods: list[str]
    eps: list[float]
    noise: list[float]
    noise_kind: str
    seeds: int
    steps: int
    train_fractions: list[float]
    lrs: list[float]
    weight_decays: list[float]
    pairflip_noise: list[float]


_KSWEEP = ["mnist1d:k2s0", "mnist1d:k2s1", "mnist1d:k3s0", "mnist1d:k3s1", "mnist1d:k5s0", "mnist1d:k5s1"]

DEFAULTS: _Preset = {
    "datasets": ["digits", "mnist1d", "breast_cancer", *_KSWEEP, "mnist1d:k10s0"],
    "methods": ["ce", "ls", "nls", "fc", "fc-est", "focal", "ts", "ts-oracle", "ls+ts"],
    "eps": [-0.2, 0.0, 0.01, 0.05, 0.1, 0.2, 0.3],
    "noise": [0.0, 0.25, 0.5, 0.75],
    "noise_kind": "symmetric,pairflip",
    "pairflip_noise": [0.5],
    "seeds": 5,
    "steps": 1000,
    "train_fractions": [0.1, 0.3, 1.0],
    "lrs": [0.001, 0.003],
}
#: --full: the complete design (10 seeds, two negative eps, online smoothing, a K-sweep on digits too,
#: three class subsets per K, and the binary tasks carved from the 10-class datasets).
FULL: _Preset = {
    "datasets": [
        "digits",
        "mnist1d",
        "breast_cancer",
        *_KSWEEP,
        "mnist1d:k2s2",
        "mnist1d:k3s2",
        "mnist1d:k5s2",
        "mnist1d:k10s0",
        "digits:k2s0",
        "digits:k2s1",
        "digits:k3s0",
        "digits:k3s1",
        "digits:k5s0",
        "digits:k5s1",
        "digits:k10s0",
        "digits:3v8",
        "mnist1d:3v8",
    ],
    "methods": ["ce", "ls", "nls", "ols", "fc", "fc-est", "focal", "ts", "ts-oracle", "ls+ts"],
    "eps": [-0.5, -0.2, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3],
    "pairflip_noise": [0.25, 0.5, 0.75],
    "seeds": 10,
    "lrs": [0.001, 0.003, 0.01],
    "weight_decays": [0.0, 0.0001],
}
#: --quick is a smoke test (does it run end to end?), not a measurement: 2 seeds, a short budget, and
#: a report that says so and makes no verdicts.
QUICK: _Preset = {
    "datasets": ["digits", "breast_cancer", "mnist1d:k2s0", "mnist1d:k10s0"],
    "eps": [-0.2, 0.0, 0.1],
    "noise": [0.0, 0.5],
    "noise_kind": "symmetric",
    "seeds": 2,
    "steps": 100,
    "train_fractions": [0.3, 1.0],
    "lrs": [],
}


def _kind_list(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("symmetric", "pairflip")]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"expected symmetric and/or pairflip, comma-separated, got {text!r}")
    return list(dict.fromkeys(kinds))


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _float_list(low: float, high: float, what: str, high_inclusive: bool = False) -> Callable[[str], list[float]]:
    close = "]" if high_inclusive else ")"

    def parse(text: str) -> list[float]:
        values = []
        for item in text.split(","):
            item = item.strip()
            try:
                v = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not a number (expected a comma-separated list of {what} in [{low:g}, {high:g}{close})"
                ) from None
            if math.isnan(v) or not (low <= v <= high if high_inclusive else low <= v < high):
                raise argparse.ArgumentTypeError(f"{what} {item} is outside [{low:g}, {high:g}{close}")
            values.append(v)
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return sorted(dict.fromkeys(values))

    parse.__name__ = f"list of {what}"
    return parse


def _name_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(names))


class _Parser(argparse.ArgumentParser):
    # Keeps the study subcommand's parser, so that errors found after parsing are reported with its
    # usage line.
    study_parser: argparse.ArgumentParser
    evaluate_parser: argparse.ArgumentParser


def build_parser() -> _Parser:
    """The argument parser of the ``labelsmooth`` command (``study``, ``evaluate`` and ``bench`` subcommands).

    Returns:
        The ``argparse.ArgumentParser``.
    """
    from labelsmooth import __version__
    from labelsmooth.study.data import BUILTIN
    from labelsmooth.study.methods import METHODS

    parser = _Parser(
        prog="labelsmooth",
        description="Label smoothing for PyTorch: measure whether smoothing helps (study), score your own model's "
        "predictions the same way (evaluate) and time the losses (bench).",
    )
    parser.add_argument("--version", action="version", version=f"labelsmooth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{study,evaluate,bench}")
    sub.required = True

    # argparse %-formats help strings: a label's "50%" must reach it as "50%%".
    method_help = "; ".join(f"{m.name}: {m.label}" for m in METHODS.values()).replace("%", "%%")
    study = sub.add_parser(
        "study",
        help="train small models with and without label smoothing and report the four claims",
        description=(
            "Train small models with and without label smoothing on real datasets (shipped with installed "
            "packages or generated locally: nothing is downloaded) and measure the four claims made for "
            "smoothing: robustness to noisy labels, less overfitting, better calibration, less effect in binary "
            "classification. Every choice is made on a validation split; the test split only scores the chosen "
            "models. Writes results.json (during the run; re-running into the same --out resumes), report.html, "
            "summary.md and findings.md."
        ),
    )
    study.add_argument(
        "--datasets",
        type=_name_list,
        default=None,
        metavar="A,B",
        help=f"datasets: {', '.join(BUILTIN)} (cifar10 needs --data-dir), BASE:AvB (a binary task carved "
        "from digits or mnist1d, e.g. digits:3v8), BASE:kKsS (a K-class task of class subset S, the same "
        "size for every K, e.g. mnist1d:k3s0), or npz:PATH. "
        f"Default: {','.join(DEFAULTS['datasets'])}, plus what --data-dir holds",
    )
    study.add_argument(
        "--methods",
        type=_name_list,
        default=None,
        metavar="M,N",
        help=f"methods ({method_help}). Default: {','.join(DEFAULTS['methods'])}",
    )
    study.add_argument(
        "--eps",
        type=_float_list(-1.0, 1.0, "label smoothing"),
        default=None,
        metavar="E,F",
        help=f"label-smoothing grid in [-1, 1); ce uses 0, ls the positive values, nls (negative "
        f"smoothing) the negative ones; a method (requested or default) that gets no value is an error. "
        f"Default {','.join(map(str, DEFAULTS['eps']))} "
        f"(quick: {','.join(map(str, QUICK['eps']))})",
    )
    study.add_argument(
        "--noise",
        type=_float_list(0.0, 1.0, "noise level"),
        default=None,
        metavar="L,M",
        help=f"training-label noise levels as fractions of the breakdown rate (1 - 1/K for symmetric "
        f"noise, 1/2 for pair-flip), in [0, 1): 0.5 flips 45%% of 10-class labels and 25%% of "
        f"binary ones. Default {','.join(map(str, DEFAULTS['noise']))}",
    )
    study.add_argument(
        "--pairflip-noise",
        type=_float_list(0.0, 1.0, "noise level"),
        default=None,
        metavar="L,M",
        help="the levels of --noise at which pair-flip noise runs (symmetric noise runs at every level). Default "
        f"{','.join(map(str, DEFAULTS['pairflip_noise']))} (--full: every level)",
    )
    study.add_argument(
        "--noise-kind",
        type=_kind_list,
        default=None,
        metavar="K,L",
        help="symmetric: to a uniformly drawn other class; pairflip: c -> c+1 mod K (the same as "
        f"symmetric for 2 classes). Default {DEFAULTS['noise_kind']} (quick: {QUICK['noise_kind']})",
    )
    study.add_argument(
        "--seeds",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"number of seeds (split, noise, init, batch order). Default {DEFAULTS['seeds']} "
        f"(quick: {QUICK['seeds']})",
    )
    study.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"training budget in Adam steps, the same on every dataset. Default {DEFAULTS['steps']} "
        f"(quick: {QUICK['steps']})",
    )
    study.add_argument(
        "--epochs",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="a budget of N epochs on every dataset instead of --steps (e.g. for CIFAR-10)",
    )
    study.add_argument(
        "--batch-size", type=_int_at_least(1), default=128, metavar="N", help="minibatch size (default 128)"
    )
    study.add_argument(
        "--lr", type=float, default=3e-3, help="Adam learning rate when --lrs offers no choice (default 0.003)"
    )
    study.add_argument(
        "--hidden", type=str, default="128,128", metavar="W,W", help="MLP hidden widths (default 128,128)"
    )
    study.add_argument(
        "--max-train",
        type=_int_at_least(10),
        default=None,
        metavar="N",
        help="cap on training samples per dataset (stratified subsample), e.g. for CIFAR-10 on a CPU",
    )
    study.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default runs/<timestamp>); re-running into it skips finished runs",
    )
    study.add_argument(
        "--train-fractions",
        type=_float_list(0.0, 1.0, "training fraction", high_inclusive=True),  # 0 refused in _resolve
        default=None,
        metavar="F,G",
        help="shares of the training split for the overfitting claim's training-set-size sweep (ce and ls at "
        f"eps 0.1, clean labels). Default {','.join(map(str, DEFAULTS['train_fractions']))}",
    )
    study.add_argument(
        "--lrs",
        type=_float_list(0.0, 10.0, "learning rate"),
        default=None,
        metavar="A,B",
        help="Adam learning rates ce chooses from on validation, per dataset and noise setting, before every "
        "method trains with the chosen one (with --weight-decays). Default 0.001,0.003 (--full: 0.001,0.003,0.01; "
        "--quick: --lr alone, no choice)",
    )
    study.add_argument(
        "--weight-decays",
        type=_float_list(0.0, 1.0, "weight decay"),
        default=None,
        metavar="A,B",
        help="Adam weight decays ce chooses from on validation together with --lrs. Default 0 alone (--full: 0,0.0001)",
    )
    study.add_argument(
        "--full",
        action="store_true",
        help="the complete design: 10 seeds, nls eps -0.5 and -0.2, online smoothing, K-sweeps on digits and "
        "mnist1d with more class subsets, digits:3v8 and mnist1d:3v8 (about 45 minutes on 2 cores). "
        "Explicit options override it",
    )
    study.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test (< 1 minute on 2 cores): does the study run end to end? 2 seeds, "
        f"{QUICK['steps']} steps, eps {','.join(map(str, QUICK['eps']))}: too little to support any "
        "verdict, and the report says so. Explicit options override it",
    )
    study.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=os.cpu_count() or 1,
        metavar="N",
        help="parallel worker processes, 1 = train in this process (default: the number of CPUs, "
        f"{os.cpu_count() or 1} here)",
    )
    study.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train (default cpu)")
    study.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with the CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin, or a "
        "cifar-10-batches-bin folder) and/or .npz files (arrays x, y; optional x_test, y_test)",
    )
    study.add_argument("--no-report", action="store_true", help="train and write results.json only")

    parser.study_parser = study
    parser.evaluate_parser = _add_evaluate_parser(sub)
    bench = sub.add_parser(
        "bench", help="time the losses on this machine (arguments go to labelsmooth.bench)", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def _resolve(args: argparse.Namespace, parser: _Parser) -> StudyConfig:
    from labelsmooth.study.data import DatasetError, discover, nothing_found, validate_name
    from labelsmooth.study.methods import METHODS
    from labelsmooth.study.runner import StudyConfig
    from labelsmooth.study.train import TrainConfig

    study = parser.study_parser  # errors are reported with the subcommand's usage line
    if args.quick and args.full:
        study.error("argument --full: not allowed with argument --quick")
    preset: _Preset = {**DEFAULTS, **QUICK} if args.quick else {**DEFAULTS, **FULL} if args.full else DEFAULTS

    methods: list[str] = list(args.methods) if args.methods is not None else list(preset["methods"])
    for m in methods:
        if m not in METHODS:
            study.error(f"argument --methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    data_dir = args.data_dir
    if data_dir is not None and not data_dir.is_dir():
        study.error(f"argument --data-dir: {str(data_dir)!r} is not a folder")
    found = discover(data_dir) if data_dir is not None else []
    if data_dir is not None and args.datasets is None and not found:
        # A --data-dir given for nothing would otherwise run the built-in datasets without a word.
        study.error(f"argument --data-dir: {nothing_found(data_dir)}")
    names = args.datasets if args.datasets is not None else preset["datasets"] + found
    datasets = []
    for name in names:
        try:
            datasets.append(validate_name(name, data_dir))
        except DatasetError as err:
            # Files are checked here, before the output folder exists (a truncated .npz, a short batch).
            option = "--datasets" if args.datasets is not None or name not in found else "--data-dir"
            study.error(f"argument {option}: {err}")
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        if not hidden or min(hidden) < 1:
            raise ValueError
    except ValueError:
        study.error(f"argument --hidden: expected comma-separated positive widths, got {args.hidden!r}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        study.error(f"argument --lr: expected a positive number, got {args.lr!r}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            study.error("argument --device: cuda requested but torch.cuda.is_available() is False")
    out = args.out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # The output folder (and every folder above it) must be a folder or not exist yet.
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            study.error(
                f"argument --out: {str(p)!r} is a file, not a folder"
                + ("" if p == out else f" (it is above {str(out)!r})")
            )
    # An option given on the command line wins over the preset (--quick's, else the full grid's).
    eps: list[float] = args.eps if args.eps is not None else preset["eps"]
    noise: list[float] = args.noise if args.noise is not None else preset["noise"]
    kinds: list[str] | str = args.noise_kind if args.noise_kind is not None else preset["noise_kind"]
    seeds: int = args.seeds if args.seeds is not None else preset["seeds"]
    steps: int = args.steps if args.steps is not None else preset["steps"]
    fractions: list[float] = args.train_fractions if args.train_fractions is not None else preset["train_fractions"]
    lrs: list[float] = args.lrs if args.lrs is not None else preset.get("lrs", [])
    pairflip: list[float] | None = (
        args.pairflip_noise if args.pairflip_noise is not None else preset.get("pairflip_noise")
    )
    if args.noise is not None and args.pairflip_noise is None:
        pairflip = None  # --noise alone: every kind at every level given
    wds: list[float] = args.weight_decays if args.weight_decays is not None else preset.get("weight_decays", [])
    if any(lr <= 0 for lr in lrs):
        study.error(f"argument --lrs: each learning rate must be positive, got {args.lrs}")
    if any(f <= 0 for f in fractions):
        study.error(f"argument --train-fractions: each fraction must be in (0, 1], got {args.train_fractions}")
    _check_eps_for_methods(study, methods, eps, defaulted=args.methods is None)
    train = TrainConfig(
        steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=hidden,
        max_train=args.max_train,
        device=args.device,
    )
    # Last of the checks, so that a rejected command leaves no folder behind.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        study.error(f"argument --out: cannot create folder {str(out)!r}: {exc.strerror or exc}")
    if not os.access(out, os.W_OK | os.X_OK):
        study.error(f"argument --out: folder {str(out)!r} is not writable")
    command = _canonical_command(args, datasets, methods, out)
    return StudyConfig(
        datasets=datasets,
        methods=methods,
        eps=eps,
        noise=noise,
        noise_kind=",".join(kinds) if isinstance(kinds, list) else kinds,
        kind_levels={"pairflip": [*pairflip, 0.0]} if pairflip is not None else {},
        seeds=seeds,
        train=train,
        out=out,
        workers=args.workers,
        data_dir=data_dir,
        command=command,
        quick=bool(args.quick),
        train_fractions=sorted(set(fractions) | {1.0}),
        lrs=lrs,
        weight_decays=wds,
    )


def _eps_needed(name: str) -> str:
    """What a method needs from the --eps grid, in words (read off its choice from a probe grid)."""
    from labelsmooth.study.methods import METHODS

    picked = METHODS[name].eps_values([-0.5, 0.5])
    if picked and all(v > 0 for v in picked):
        return "a positive eps"
    if picked and all(v < 0 for v in picked):
        return "a negative eps"
    return "an eps value"


def _check_eps_for_methods(
    study: argparse.ArgumentParser, methods: list[str], eps: list[float], defaulted: bool
) -> None:
    """Every method asked for, on the command line or by default, must get a value from the grid.

    A method that got none would silently vanish from the study (``--eps -0.2`` leaves ls nothing), so
    this is an error that names the methods and says how to keep or drop them.
    """
    from labelsmooth.study.methods import METHODS

    idle = [m for m in methods if not METHODS[m].eps_values(eps)]
    if not idle:
        return
    by_need: dict[str, list[str]] = {}
    for m in idle:
        by_need.setdefault(_eps_needed(m), []).append(m)
    needs = "; ".join(f"{', '.join(ms)} {'needs' if len(ms) == 1 else 'need'} {need}" for need, ms in by_need.items())
    which = f"the default methods {', '.join(idle)}" if defaulted else f"--methods {', '.join(idle)}"
    kept = [m for m in methods if m not in idle]
    fix = "add such values to --eps" + (f", or leave them out: --methods {','.join(kept)}" if kept else "")
    study.error(
        f"argument --eps: --eps {','.join(f'{v:g}' for v in eps)} leaves {which} without a value ({needs}); {fix}"
    )


def _canonical_command(args: argparse.Namespace, datasets: list[str], methods: list[str], out: Path) -> str:
    # The command that resumes this study exactly (the default --out is a fresh timestamp each time).
    parts = ["labelsmooth", "study", "--datasets", ",".join(datasets), "--methods", ",".join(methods)]
    for opt, value in (("--eps", args.eps), ("--noise", args.noise)):
        if value is not None:
            parts += [opt, ",".join(f"{v:g}" for v in value)]
    for opt, value in (
        ("--seeds", args.seeds),
        ("--steps", args.steps),
        ("--epochs", args.epochs),
        ("--max-train", args.max_train),
        ("--data-dir", args.data_dir),
    ):
        if value is not None:
            parts += [opt, str(value)]
    for opt, values in (
        ("--pairflip-noise", args.pairflip_noise),
        ("--train-fractions", args.train_fractions),
        ("--lrs", args.lrs),
        ("--weight-decays", args.weight_decays),
    ):
        if values is not None:
            parts += [opt, ",".join(f"{v:g}" for v in values)]
    if args.quick:
        parts.append("--quick")
    if args.full:
        parts.append("--full")
    if args.noise_kind is not None:
        parts += ["--noise-kind", ",".join(args.noise_kind)]
    if args.batch_size != 128:
        parts += ["--batch-size", str(args.batch_size)]
    if args.lr != 3e-3:
        parts += ["--lr", repr(args.lr)]
    if args.hidden != "128,128":
        parts += ["--hidden", args.hidden]
    parts += ["--out", str(out)]
    return " ".join(shlex.quote(p) for p in parts)


def _study(args: argparse.Namespace, parser: _Parser) -> int:
    from rich.console import Console
    from rich.table import Table

    from labelsmooth.study.data import DatasetError
    from labelsmooth.study.report import summary_rows
    from labelsmooth.study.runner import StudyInterrupted, run_study

    cfg = _resolve(args, parser)
    usage = _Usage()
    # Not a terminal (a log file, CI): rich would wrap the table at 80 columns; give it room instead.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    budget = f"{cfg.train.epochs} epochs" if cfg.train.epochs else f"{cfg.train.steps} steps"
    console.print(
        f"labelsmooth study → {cfg.out}  (datasets {', '.join(cfg.datasets)}; "
        f"methods {', '.join(cfg.methods)}; eps {cfg.eps}; noise levels {cfg.noise} {cfg.noise_kind}; "
        f"{cfg.seeds} seed(s); {budget} per training; {cfg.workers} worker(s))"
    )
    if cfg.quick:
        console.print(
            "[yellow]--quick is a smoke test: its budget and seeds support no verdict; the report says so.[/yellow]"
        )
    try:
        outcome = run_study(cfg, console=console, report=not args.no_report)
    except StudyInterrupted as stop:
        console.print(f"[yellow]{stop}[/yellow]")
        return 130
    except DatasetError as err:  # unusable user data found while loading (names were checked earlier)
        parser.study_parser.error(f"argument --datasets: {err}")

    rows = summary_rows(outcome.records)
    if rows:
        table = Table(title="labelsmooth study: mean ± 95% CI over seeds", show_lines=False)
        cols = ["dataset", "noise", "method", "seeds", "test acc", "ECE", "NLL", "memorised flips", "train-test gap"]
        for c in cols:
            table.add_column(c, justify="left" if c in ("dataset", "method") else "right")
        for row in rows:
            table.add_row(*(row[c] for c in cols))
        console.print(table)
    console.print(
        f"{outcome.trained} run(s) trained, {outcome.skipped} skipped (already finished), "
        f"{len(outcome.failures)} failed, in {outcome.seconds:.1f} s."
    )
    resources = usage.finish(cfg.workers, outcome.trained)
    console.print(_resources_line(resources), markup=False, highlight=False)
    if outcome.trained:
        _record_resources(cfg.out, resources)
    console.print(f"results: {cfg.out / 'results.json'}")
    if outcome.report is not None:
        console.print(f"report:  {outcome.report}\nsummary: {outcome.summary}")
        findings = cfg.out / "findings.md"
        if findings.exists():
            console.print(f"findings: {findings}  (the headline tables, for a README)")
    for what, error in outcome.failures:
        console.print(f"[red]failed:[/red] {what}: {error}")
    return 1 if outcome.failures else 0


class _Usage:
    """Wall-clock and CPU time of this invocation, and the machine's load, for comparing run times.

    CPU time is user + system of this process and of its children that have ended (the worker
    processes are joined before the study returns). Documented times were measured on idle cores; a
    load average above the number of CPUs, or CPU time well below wall time x workers, says that
    something else shared the machine.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()
        self.load_start = self._load()
        self.started = _dt.datetime.now().isoformat(timespec="seconds")

    @staticmethod
    def _cpu() -> tuple[float, float]:
        t = os.times()
        return t.user + t.children_user, t.system + t.children_system

    @staticmethod
    def _load() -> list[float] | None:
        try:
            return [round(v, 2) for v in os.getloadavg()]
        except (AttributeError, OSError):  # not on Windows, nor where the kernel does not report it
            return None

    def finish(self, workers: int, trained: int) -> dict[str, Any]:
        user, system = (now - then for now, then in zip(self._cpu(), self.cpu, strict=True))
        return {
            "started": self.started,
            "wall_s": round(time.perf_counter() - self.wall, 1),
            "cpu_s": round(user + system, 1),
            "cpu_user_s": round(user, 1),
            "cpu_system_s": round(system, 1),
            "load_average_start": self.load_start,
            "load_average_end": self._load(),
            "cpus": os.cpu_count(),
            "workers": workers,
            "trained": trained,
        }


def _resources_line(r: dict[str, Any]) -> str:
    from labelsmooth.study.progress import format_duration

    def load(values: list[float] | None) -> str:
        return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)

    return (
        f"time: wall {format_duration(r['wall_s'])} ({r['wall_s']:.0f} s); CPU {r['cpu_s']:.0f} s "
        f"(user {r['cpu_user_s']:.0f} + system {r['cpu_system_s']:.0f}, this process and its workers) on "
        f"{r['cpus']} CPU(s) with {r['workers']} worker(s); load average (1/5/15 min) {load(r['load_average_start'])} "
        f"at the start, {load(r['load_average_end'])} at the end (the study's own workers add up to {r['workers']})"
    )


def _record_resources(out: Path, resources: dict[str, Any]) -> None:
    """Append this invocation's times to ``results.json``'s study meta (``"resources"``: one entry per
    invocation that trained, so a study resumed after an interruption lists each part)."""
    from labelsmooth.study.runner import ResultsStore

    store = ResultsStore(out)
    earlier = store.meta.get("resources")
    store.meta["resources"] = [*(earlier if isinstance(earlier, list) else []), resources]
    store.save()


# ----------------------------------------------------------------------------- labelsmooth evaluate


def _add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    evaluate = sub.add_parser(
        "evaluate",
        help="score your own model's predictions: metrics with intervals, and paired verdicts between models",
        description=(
            "Score one or more models' predictions on the same examples: accuracy, NLL, Brier, ECE (equal-width "
            "and equal-mass, top-label and class-wise), MCE and AURC, each with a bootstrap interval; temperature "
            "scaling fitted on the validation rows only and its effect on the test rows; with two or more PREDs, "
            "paired differences with paired-bootstrap intervals and a verdict (better / worse / no clear "
            "difference) for each later model against the first. Each PRED is a .npz, .pt, .csv or .parquet file "
            "(or a folder of .npy files) with logits or probabilities, labels and an optional split (val/test); "
            "see docs/evaluate.md for the keys and columns. Writes evaluation.html, evaluation.md and "
            "evaluation.json into --out."
        ),
    )
    evaluate.add_argument(
        "pred",
        nargs="+",
        type=Path,
        metavar="PRED",
        help="prediction file of one model; several files must list the same examples in the same order",
    )
    evaluate.add_argument(
        "--val",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="a separate validation file (same format) for temperature scaling; give one per PRED, in the "
        "PREDs' order, or none. Then every row of the PRED file is a test row",
    )
    evaluate.add_argument(
        "--kind",
        choices=["auto", "logits", "probs"],
        default="auto",
        help="what the scores are. auto (default): what the key or column names say (logits / logit_*, probs / "
        "prob_*); for scores / score_* probabilities when every row lies in [0, 1] and sums to 1, else logits",
    )
    evaluate.add_argument(
        "--bootstrap",
        type=_int_at_least(1),
        default=1000,
        metavar="N",
        help="bootstrap resamples for the intervals (default 1000)",
    )
    evaluate.add_argument(
        "--bins", type=_int_at_least(1), default=15, metavar="N", help="calibration bins for ECE and MCE (default 15)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the bootstrap resampling (default 0)"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder for evaluation.html, evaluation.md and evaluation.json (default runs/evaluate-<timestamp>)",
    )
    evaluate.add_argument(
        "--names",
        type=str,
        default=None,
        metavar="A,B",
        help="the models' names in the reports, one per PRED (default: the file names without extension)",
    )
    parser: argparse.ArgumentParser = evaluate
    return parser


class _InputError(Exception):
    """A prediction file or combination of files that cannot be evaluated: one line for stderr, exit 2."""


def _model_names(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    preds: list[Path] = args.pred
    if args.names is not None:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(preds) or not all(names):
            parser.error(
                f"argument --names: expected {len(preds)} comma-separated name(s), one per PRED, got {args.names!r}"
            )
    else:
        names = [p.stem if p.suffix else p.name for p in preds]
        if len(set(names)) < len(names):  # two ce.npz from different folders: keep the paths apart
            names = [str(p) for p in preds]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        parser.error(f"argument --names: the name {dup!r} is given twice; each model needs its own")
    return names


def _out_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    out: Path = args.out or Path("runs") / _dt.datetime.now().strftime("evaluate-%Y%m%d-%H%M%S")
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            parser.error(
                f"argument --out: {str(p)!r} is a file, not a folder"
                + ("" if p == out else f" (it is above {str(out)!r})")
            )
    return out


def _read_inputs(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Read every PRED and --val file (structure and labels; scores stay mapped where they can)."""
    from labelsmooth.evaluation.io import check_same_examples, read_predictions

    preds = [read_predictions(p) for p in args.pred]
    vals = [read_predictions(v) for v in (args.val or [])]
    for pred, val in zip(preds, vals, strict=False):
        if pred.split is not None:
            raise _InputError(
                f"{pred.path}: has a split array and --val {val.path} was also given; use one or the other"
            )
        if val.split is not None:
            raise _InputError(f"{val.path}: a --val file must hold validation rows only, but it has a split array")
        if val.num_classes != pred.num_classes:
            raise _InputError(
                f"{val.path}: its scores have {val.num_classes} classes but {pred.path}'s have {pred.num_classes}"
            )
        if val.kind is not None and pred.kind is not None and val.kind != pred.kind:
            raise _InputError(f"{val.path}: holds {val.kind} but {pred.path} holds {pred.kind}; give the same kind")
    check_same_examples(preds)
    return preds, vals


def _evaluate(args: argparse.Namespace, parser: _Parser) -> int:
    from labelsmooth.evaluation.io import PredictionFileError

    sub = parser.evaluate_parser
    if args.val is not None and len(args.val) != len(args.pred):
        sub.error(
            f"argument --val: give one --val file per PRED ({len(args.pred)}), in the PREDs' order; got {len(args.val)}"
        )
    names = _model_names(args, sub)
    out = _out_folder(args, sub)
    try:
        preds, vals = _read_inputs(args)
        for pred, name in zip(preds, names, strict=True):
            where = "memory-mapped" if pred.streamed else "in memory"
            shape = "x".join(map(str, pred.scores.shape))
            print(f"{name}: {pred.path}: {pred.source} {shape} {pred.scores.dtype} ({where}), {pred.n} rows")
        results = [
            _evaluate_one(args, pred, vals[i] if vals else None, name)
            for i, (pred, name) in enumerate(zip(preds, names, strict=True))
        ]
        comparison = _compare(results, preds) if len(results) > 1 else None
    except (PredictionFileError, _InputError) as err:
        print(f"labelsmooth evaluate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labelsmooth evaluate: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(_results_table(results))
    if comparison is not None:
        print()
        print(_comparison_text(comparison))
    try:
        files = _write_reports(out, results, comparison, args)
    except OSError as err:
        print(f"labelsmooth evaluate: error: argument --out: cannot write into {str(out)!r}: {err.strerror or err}",
              file=sys.stderr)  # fmt: skip
        return 2
    print()
    for f in files:
        print(f"wrote {f}")
    return 0


def _evaluate_one(args: argparse.Namespace, pred: Any, val: Any, name: str) -> Any:
    from labelsmooth.evaluation import evaluate

    kind = args.kind if args.kind != "auto" else (pred.kind or (val.kind if val is not None else None) or "auto")
    try:
        return evaluate(
            pred.scores,
            pred.labels,
            split=pred.split,
            val_scores=None if val is None else val.scores,
            val_labels=None if val is None else val.labels,
            kind=kind,
            n_bootstrap=args.bootstrap,
            n_bins=args.bins,
            seed=args.seed,
            name=name,
        )
    except (ValueError, TypeError) as err:
        # The engine names the argument (scores, labels, val_scores, ...) and what it detected; the file
        # is what the user knows.
        files = f"{pred.path}" + ("" if val is None else f" (with --val {val.path})")
        stated = f" (--kind {args.kind})" if args.kind != "auto" else f" ({pred.source})" if pred.kind else ""
        raise _InputError(f"{files}{stated}: {_one_line(err)}") from err


def _compare(results: list[Any], preds: list[Any]) -> Any:
    from labelsmooth.evaluation import compare

    try:
        return compare(*results)
    except (ValueError, TypeError) as err:
        raise _InputError(f"{', '.join(str(p.path) for p in preds)}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _results_table(results: list[Any]) -> str:
    """Every metric of every model, one column each: value [low, high] at the interval level, and the same
    metrics after temperature scaling where a validation split fitted a temperature."""
    from labelsmooth.evaluation import METRICS
    from labelsmooth.evaluation.result import LABELS

    header = ["metric", *(r.name for r in results)]
    rows = [[LABELS.get(m, m), *(r.metrics[m].text() for r in results)] for m in METRICS]
    if any(r.temperature is not None for r in results):
        rows.append(["temperature T", *("-" if r.temperature is None else f"{r.temperature:.4g}" for r in results)])
        rows += [
            [f"{LABELS.get(m, m)} after T", *("-" if r.scaled is None else r.scaled[m].text() for r in results)]
            for m in METRICS
        ]
    first = results[0]
    title = (
        f"{first.n} test rows, {first.num_classes} classes; {100 * first.level:g}% bootstrap intervals "
        f"({first.n_bootstrap} resamples; percentile, centred on the estimate for the binned calibration errors)"
    )
    return title + "\n" + _text_table(header, rows)


def _comparison_text(comparison: Any) -> str:
    """Each later model against the first: the paired difference (positive: that model is better), its
    interval at Holm's level, and the verdict words."""
    from labelsmooth.evaluation.result import LABELS

    parts = []
    for b in comparison.names[1:]:
        rows = [
            [
                LABELS.get(d.metric, d.metric),
                d.text(),
                f"{100 * d.level:.2f}%",
                "n/a" if d.p_holm is None else f"{d.p_holm:.3g}",
                d.words,
            ]
            for d in comparison.differences
            if d.b == b
        ]
        parts.append(
            f"{b} vs {comparison.names[0]} (paired over {comparison.n} test rows; positive: {b} is better; intervals "
            f"at Holm's level, p-values Holm-adjusted; verdicts at family-wise {comparison.alpha:g})\n"
            + _text_table(["metric", "difference [interval]", "level", "p (Holm)", "verdict"], rows, left=(0, 4))
        )
    return "\n\n".join(parts)


def _text_table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """A plain-text table: columns padded to their widest cell, those in ``left`` left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _html_body(page: str) -> str:
    return page.split("<body>", 1)[-1].rsplit("</body>", 1)[0]


def _write_reports(out: Path, results: list[Any], comparison: Any, args: argparse.Namespace) -> list[Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["labelsmooth", *args.argv])
    doc = {
        "command": command,
        "files": [str(p) for p in args.pred],
        "val_files": None if args.val is None else [str(p) for p in args.val],
        "models": [r.to_dict() for r in results],
        "comparison": None if comparison is None else comparison.to_dict(),
    }
    parts = ([comparison.to_markdown()] if comparison is not None else []) + [r.to_markdown() for r in results]
    md = f"# labelsmooth evaluate\n\n`{command}`\n\n" + "\n".join(parts)
    html = results[0].to_html()
    if comparison is not None:  # the comparison's page, then every model's table and figures
        page = comparison.to_html()
        cut = page.rindex("</body>")
        html = page[:cut] + "".join(_html_body(r.to_html()) for r in results) + page[cut:]
    files = {"evaluation.html": html, "evaluation.md": md + "\n", "evaluation.json": json.dumps(doc, indent=1) + "\n"}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files]


def _bench(argv: list[str]) -> int:
    from labelsmooth import bench  # imported lazily: the study does not need it

    return int(bench.main(argv) or 0)


def _attach_negative_lists(argv: list[str]) -> list[str]:
    # argparse reads "--eps -0.5,-0.2,0" as an option followed by another option ("-0.5,..."): a list
    # that starts with a negative number is glued to its option ("--eps=-0.5,-0.2,0").
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--eps", "--noise") and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labelsmooth`` command.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 if a run failed, 2 for bad arguments (argparse exits with it) or
        a prediction file ``evaluate`` cannot use (one line on stderr), 130 when interrupted (finished
        runs are saved; re-run to resume).

    Example:
        >>> main(["study", "--help"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" belongs to labelsmooth.bench, including --help.
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(_attach_negative_lists(argv))
    args.argv = argv  # for the reports: the command that produced them
    try:
        return _evaluate(args, parser) if args.command == "evaluate" else _study(args, parser)
    except ModuleNotFoundError as err:
        module = (err.name or "").split(".")[0]
        extra = _EXTRA_OF.get(module)
        if extra is None:
            raise
        print(
            f"labelsmooth {args.command} needs the optional dependency {module!r}: pip install 'labelsmooth[{extra}]'",
            file=sys.stderr,
        )
        return 1


#: Top-level modules of the optional extras, for a one-line message instead of a traceback.
_EXTRA_OF = {"rich": "study", "matplotlib": "study", "sklearn": "study", "scipy": "study", "mnist1d": "study"}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
