"""Run a study grid: plan the trainings, skip finished ones, train (in parallel processes if asked),
write every finished run to ``results.json`` atomically, then write the report.

Crash safety: a run's test probabilities (``probs/<id>.npz``) are written as soon as it finishes, and
``results.json`` at most every :data:`_WRITE_EVERY_S` seconds and at the end (also after Ctrl-C),
each through a temporary file and ``os.replace``, which is atomic on POSIX and Windows. A killed
process therefore leaves either the previous or the new ``results.json``, never a torn one, and
re-running the same command into the same folder skips every finished run (same key: dataset,
method, eps, noise, seed and training fingerprint).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from labelsmooth._files import atomic_write as _atomic_write
from labelsmooth.study import progress
from labelsmooth.study import stats as S
from labelsmooth.study.data import Dataset, is_ksweep, load_dataset
from labelsmooth.study.methods import HEADLINE_EPS, METHODS, matched_eps
from labelsmooth.study.train import Job, JobResult, TrainConfig, run_job

if TYPE_CHECKING:
    from rich.console import Console

#: Called once per finished training: the job, its result (None if it failed) and the error (None if not).
Finished = Callable[[Job, JobResult | None, BaseException | None], None]

__all__ = ["ResultsStore", "StudyConfig", "StudyInterrupted", "StudyOutcome", "plan_jobs", "run_study"]

RESULTS = "results.json"

#: Seconds between rewrites of results.json while a grid trains (at least; see _WRITE_SHARE).
_WRITE_EVERY_S = 3.0
#: A rewrite may take at most this share of the time between rewrites: on a grid of thousands of
#: runs results.json grows to tens of MB, whose rewrite takes seconds, and every 3 s it kept a core half
#: busy while the workers trained.
_WRITE_SHARE = 0.05


class StudyInterrupted(Exception):
    """Raised after Ctrl-C once the finished runs are safely on disk; the message says how to resume."""


@dataclass
class StudyConfig:
    """Everything one ``labelsmooth study`` invocation runs.

    Attributes:
        datasets: dataset names (see :func:`labelsmooth.study.data.load_dataset`).
        methods: method names (keys of :data:`labelsmooth.study.methods.METHODS`).
        eps: the label-smoothing grid (each method picks its values from it).
        noise: training-label noise levels, as fractions of the breakdown rate
            (:func:`labelsmooth.study.train.noise_rate`).
        noise_kind: ``"symmetric"`` or ``"pairflip"``, or several separated by commas.
        seeds: number of seeds (0 .. seeds-1).
        train: the :class:`TrainConfig` (its step budget is the same on every dataset).
        epochs: per-dataset epochs overriding the step budget (datasets not listed use ``train``).
        out: output folder.
        workers: parallel worker processes (1 = train in this process).
        data_dir: folder for CIFAR-10 batches and ``.npz`` files.
        command: the command line, for the report header.
        quick: the ``--quick`` smoke test (the report then makes no verdicts).
        train_fractions: shares of the training split for the training-set-size sweep (values below 1
            add ce and ls at the headline eps, clean labels, on every dataset that is not carved).
        matched: on carved tasks (``BASE:AvB``, ``BASE:kKsS``) also train ls at the eps whose smoothed
            top target equals the headline eps's on the 10-class parent.
        kind_levels: noise kind -> the levels of ``noise`` it runs at (a kind not named runs at all of
            them), e.g. ``{"pairflip": [0.5]}`` for a dose-response on symmetric noise alone.
        lrs, weight_decays: with more than one pair between them, ce is first trained at every
            ``(lr, weight decay)`` pair, and each dataset and noise setting then trains every method with
            the pair whose ce reached the best mean early-stopped accuracy on the noisy validation
            labels (:func:`choose_hyperparameters`).
    """

    datasets: list[str]
    methods: list[str]
    eps: list[float]
    noise: list[float]
    noise_kind: str = "symmetric"
    seeds: int = 3
    train: TrainConfig = field(default_factory=TrainConfig)
    epochs: dict[str, int] = field(default_factory=dict)
    out: Path = Path("runs/latest")
    workers: int = 1
    data_dir: Path | None = None
    command: str = ""
    quick: bool = False
    train_fractions: list[float] = field(default_factory=lambda: [1.0])
    matched: bool = True
    lrs: list[float] = field(default_factory=list)
    weight_decays: list[float] = field(default_factory=list)
    kind_levels: dict[str, list[float]] = field(default_factory=dict)

    def hp_grid(self) -> list[tuple[float, float]]:
        """The ``(lr, weight decay)`` pairs ce chooses from on validation (empty: no choice, ``train``'s)."""
        lrs = self.lrs or [self.train.lr]
        wds = self.weight_decays or [self.train.weight_decay]
        grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
        return grid if len(grid) > 1 else []

    @property
    def noise_kinds(self) -> list[str]:
        """The noise kinds, in order."""
        return [k for k in self.noise_kind.split(",") if k]


@dataclass
class StudyOutcome:
    """What :func:`run_study` did: the grid's finished records, counts, failures, report paths."""

    records: list[S.Record]
    planned: int
    trained: int
    skipped: int
    failures: list[tuple[str, str]]
    report: Path | None
    summary: Path | None
    seconds: float


def _carved(dataset: str) -> bool:
    return ":" in dataset and not dataset.startswith("npz:")


def noise_settings(cfg: StudyConfig, dataset: str) -> list[tuple[str, float]]:
    """The ``(kind, level)`` noise settings a dataset is trained with.

    Level 0 is one clean setting (kind ``"none"``) shared by every kind. A task carved from a K-class
    dataset (``digits:3v8``, ``mnist1d:k3s0``) serves the binary-vs-multiclass comparison, which is
    made on clean labels, so it is run clean only. For two classes pair-flip noise *is* symmetric noise,
    so a binary dataset gets only the symmetric kind.
    """
    out: list[tuple[str, float]] = []
    for level in cfg.noise:
        if level == 0:
            out.append(("none", 0.0))
            continue
        if _carved(dataset):
            continue
        for kind in cfg.noise_kinds:
            if kind in cfg.kind_levels and level not in cfg.kind_levels[kind]:
                continue
            out.append((kind, float(level)))
    return list(dict.fromkeys(out))


def _carved_eps(cfg: StudyConfig, num_classes: int | None) -> list[float]:
    # A carved task runs ls at the headline eps and, if asked, at the eps matching its parent's top target.
    head = min((e for e in cfg.eps if e > 0), key=lambda e: (abs(e - HEADLINE_EPS), e), default=None)
    if head is None:
        return []
    out = [head]
    if cfg.matched and num_classes is not None and num_classes != 10:
        out.append(matched_eps(head, num_classes))
    return list(dict.fromkeys(out))


def plan_jobs(
    cfg: StudyConfig, binary: dict[str, bool] | None = None, hp: dict[tuple[str, str, float], TrainConfig] | None = None
) -> list[Job]:
    """The trainings of a grid: one per dataset x noise setting x seed x distinct (loss, eps), plus the
    training-set-size sweep.

    Methods that share ``(loss_id, eps)`` share one job (``ce``, ``ts``, ``ts-oracle``). Methods with
    ``noisy_runs=False`` (focal loss) are trained on clean labels only, those with ``clean_runs=False``
    (negative smoothing, forward correction) on noisy labels only. Carved tasks run ce and ls only (ls
    at the headline eps and at the matched eps: :func:`labelsmooth.study.methods.matched_eps`).

    Args:
        cfg: the study configuration.
        binary: dataset name -> whether it has two classes (pair-flip noise is then skipped as a
            duplicate of symmetric noise); unknown datasets count as multiclass.
        hp: ``(dataset, noise kind, noise level) -> TrainConfig`` chosen on validation
            (:func:`choose_hyperparameters`); settings not in it train with ``cfg.train``.

    Returns:
        The jobs, in dataset, noise, seed, registry order; then the size sweep.
    """
    binary = binary or {}
    jobs = []
    for ds in cfg.datasets:
        train = replace(cfg.train, epochs=cfg.epochs[ds]) if ds in cfg.epochs else cfg.train
        carved = _carved(ds)
        k = _num_classes(ds, binary)
        clean_train = (hp or {}).get((ds, "none", 0.0), train)
        for kind, level in noise_settings(cfg, ds):
            if kind == "pairflip" and binary.get(ds, False) and "symmetric" in cfg.noise_kinds:
                continue
            setting_train = (hp or {}).get((ds, kind, level), train)
            for seed in range(cfg.seeds):
                shared: dict[tuple[str, float], list[str]] = {}
                for name in cfg.methods:
                    method = METHODS[name]
                    if (level > 0 and not method.noisy_runs) or (level == 0 and not method.clean_runs):
                        continue
                    if carved and name not in ("ce", "ls"):
                        continue
                    values = _carved_eps(cfg, k) if carved and name == "ls" else method.eps_values(cfg.eps)
                    for eps in values:
                        shared.setdefault((method.loss_id, float(eps)), []).append(name)
                for (loss_id, eps), names in shared.items():
                    jobs.append(Job(ds, loss_id, eps, kind, level, seed, tuple(names), setting_train))
        if carved or "ce" not in cfg.methods:
            continue
        head = _carved_eps(cfg, None)
        for frac in cfg.train_fractions:
            if frac >= 1:
                continue
            for seed in range(cfg.seeds):
                jobs.append(Job(ds, "ls", 0.0, "none", 0.0, seed, ("ce",), clean_train, float(frac)))
                if head and "ls" in cfg.methods:
                    jobs.append(Job(ds, "ls", head[0], "none", 0.0, seed, ("ls",), clean_train, float(frac)))
    return jobs


def plan_hp_jobs(cfg: StudyConfig, binary: dict[str, bool] | None = None) -> list[Job]:
    """The ce trainings that choose the learning rate and weight decay: one per dataset x noise setting x
    seed x ``(lr, weight decay)`` pair of :meth:`StudyConfig.hp_grid` (none without a grid), with the
    methods that share ce's training (``ts``, ``ts-oracle``)."""
    grid = cfg.hp_grid()
    if not grid or "ce" not in cfg.methods:
        return []
    # The methods that share ce's training (its post-hoc temperature scalings) come along: the chosen
    # pair's job is then the main grid's, and nothing is trained twice.
    base = METHODS["ce"]
    shared = [m for m in cfg.methods if METHODS[m].loss_id == base.loss_id and METHODS[m].eps_values([0.0]) == [0.0]]
    probe = replace(cfg, methods=shared, train_fractions=[1.0])
    jobs = []
    for lr, wd in grid:
        jobs += plan_jobs(replace(probe, train=replace(cfg.train, lr=lr, weight_decay=wd)), binary)
    return jobs


def choose_hyperparameters(
    cfg: StudyConfig, records: dict[str, S.Record], binary: dict[str, bool] | None = None
) -> tuple[dict[tuple[str, str, float], TrainConfig], dict[str, dict[str, float]]]:
    """Per dataset and noise setting, the ``(lr, weight decay)`` pair whose ce training reached the highest
    mean (over seeds) early-stopped accuracy on the noisy validation labels; the first pair of the grid
    on ties. Only validation fields are read.

    Returns:
        ``({(dataset, kind, level): TrainConfig}, {"dataset|kind:level": {"lr", "weight_decay",
        "val_accuracy_noisy"}})`` (the second for the report).
    """
    chosen: dict[tuple[str, str, float], TrainConfig] = {}
    summary: dict[str, dict[str, float]] = {}
    for job_set in _by_setting(plan_hp_jobs(cfg, binary)).values():
        best: tuple[float, TrainConfig] | None = None
        for config, jobs in job_set.items():
            vals: list[float] = []
            for j in jobs:
                r = records.get(j.key("ce"))
                if r is not None and not r.get("failure") and r.get("es_val_accuracy_noisy") is not None:
                    vals.append(float(r["es_val_accuracy_noisy"]))
            if len(vals) < len(jobs):
                continue  # a pair with a missing or failed seed is not compared on fewer seeds
            mean = float(np.mean(vals))
            if best is None or mean > best[0]:
                best = (mean, config)
        if best is None:
            continue
        j = next(iter(job_set.values()))[0]
        chosen[(j.dataset, j.noise_kind, j.noise_level)] = best[1]
        summary[f"{j.dataset}|{j.noise_kind}:{j.noise_level:g}"] = {
            "lr": best[1].lr,
            "weight_decay": best[1].weight_decay,
            "val_accuracy_noisy": best[0],
        }
    return chosen, summary


def _by_setting(jobs: list[Job]) -> dict[tuple[str, str, float], dict[TrainConfig, list[Job]]]:
    out: dict[tuple[str, str, float], dict[TrainConfig, list[Job]]] = {}
    for j in jobs:
        out.setdefault((j.dataset, j.noise_kind, j.noise_level), {}).setdefault(j.config, []).append(j)
    return out


def _pending(jobs: list[Job], store: ResultsStore) -> list[Job]:
    """The jobs (narrowed to their unfinished methods) that still have something to train."""
    out = []
    for job in jobs:
        missing = tuple(m for m in job.methods if not store.done(job.key(m)))
        if missing:
            out.append(replace(job, methods=missing))
    return out


def _num_classes(dataset: str, binary: dict[str, bool]) -> int | None:
    # Known without loading: a K-sweep task names its K, a binary one (BASE:AvB) has 2, the built-ins 10.
    if is_ksweep(dataset):
        return int(dataset.partition(":")[2][1:].partition("s")[0])
    if binary.get(dataset, False) or _carved(dataset):  # BASE:AvB is two classes, whatever the map says
        return 2
    return 10 if dataset.partition(":")[0] in ("digits", "mnist1d") else None


def _clean_json(x: object) -> object:
    # json cannot carry NaN/inf portably (and allow_nan=False refuses them): write null instead.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean_json(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _clean_json(x.item())
    return x


class ResultsStore:
    """``results.json`` (``{"runs": [records], "study": {...}}``) and the ``probs/*.npz`` files of a folder.

    Args:
        out: the output folder (created if missing).
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "probs").mkdir(exist_ok=True)
        self.path = self.out / RESULTS
        self.records: dict[str, S.Record] = {}
        self.meta: dict[str, Any] = {}
        #: Seconds the last rewrite of results.json took (spaces the rewrites of a long grid).
        self.last_write_s = 0.0
        # Temporary files of a process killed mid-write are never valid results: remove them.
        for stale in [*self.out.glob(f"{RESULTS}.tmp-*"), *(self.out / "probs").glob("*.tmp-*")]:
            stale.unlink(missing_ok=True)
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                runs = data["runs"]
            except (ValueError, KeyError, TypeError) as err:
                # Cannot happen through this module's atomic writes; a hand-edited file is kept aside.
                backup = self.path.with_name(f"{RESULTS}.unreadable-{int(time.time())}")
                os.replace(self.path, backup)
                print(
                    f"warning: {self.path} was not a readable results file ({err}); moved to {backup}", file=sys.stderr
                )
                runs = []
            self.records = {r["key"]: r for r in runs if isinstance(r, dict) and "key" in r}
            if isinstance(data, dict) and isinstance(data.get("study"), dict):
                self.meta = data["study"].get("meta", {}) or {}

    def done(self, key: str) -> bool:
        """True if the run ``key`` is recorded and its saved test probabilities are present."""
        r = self.records.get(key)
        return r is not None and (self.out / r.get("probs_file", "")).is_file()

    def add(self, result: JobResult, write: bool = True) -> None:
        """Save one finished training: its probability files first, then (if ``write``) ``results.json``."""
        for record in result.records:
            key = record["key"]
            name = f"probs/{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
            arrays = result.arrays[key]
            # mypy cannot know that the keys are array names, none of savez_compressed's own parameters.
            _atomic_write(self.out / name, partial(np.savez_compressed, **arrays))  # type: ignore[arg-type]
            record["probs_file"] = name
            self.records[key] = record
        if write:
            self._write()

    def save(self) -> None:
        """Rewrite ``results.json`` (atomically), e.g. after changing :attr:`meta`."""
        self._write()

    def _write(self) -> None:
        payload = {
            "study": {
                "format": 2,
                "updated": _dt.datetime.now().isoformat(timespec="seconds"),
                "meta": _clean_json(self.meta),
            },
            "runs": [_clean_json(r) for r in self.records.values()],
        }
        start = time.monotonic()
        text = json.dumps(payload, indent=1, allow_nan=False).encode("utf-8")
        _atomic_write(self.path, lambda f: f.write(text))
        self.last_write_s = time.monotonic() - start

    def load_projection(self, record: S.Record) -> tuple[np.ndarray, np.ndarray] | None:
        """The saved penultimate-layer projection ``(coords, labels)`` of a record, if it has one."""
        with np.load(self.out / record["probs_file"], allow_pickle=False) as f:
            return (f["proj"], f["proj_labels"]) if "proj" in f.files else None

    def load_probs(self, record: S.Record) -> tuple[np.ndarray, np.ndarray]:
        """The saved test ``(probs, labels)`` of a record (read with ``allow_pickle=False``)."""
        with np.load(self.out / record["probs_file"], allow_pickle=False) as f:
            return f["probs"], f["labels"]


# ----------------------------------------------------------------------------- workers

_WORKER_DATA: dict[str, Dataset] = {}


def _init_worker(datasets: dict[str, Dataset], threads: int) -> None:
    # Ctrl-C is handled by the parent alone (it saves and reports); workers ignore SIGINT so they
    # do not print a traceback each, and are terminated by the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread per worker: the models are small and the workers already use every core.
    torch.set_num_threads(threads)
    _WORKER_DATA.update(datasets)


def _work(job: Job) -> JobResult:
    return run_job(job, _WORKER_DATA[job.dataset])


def _binary_names(cfg: StudyConfig) -> dict[str, bool]:
    # Which datasets are binary, without loading them: built-in and carved names are known; a user's
    # .npz counts as multiclass here (its pair-flip runs are kept; for two classes they repeat symmetric).
    known = {"digits": False, "mnist1d": False, "breast_cancer": True, "cifar10": False}

    def two(d: str) -> bool:
        if is_ksweep(d):
            return d.partition(":")[2].startswith("k2s")
        return known.get(d, _carved(d))

    return {d: two(d) for d in cfg.datasets}


def _describe(job: Job) -> str:
    noise = "clean" if job.noise_level == 0 else f"{job.noise_kind} level {job.noise_level:g}"
    frac = "" if job.train_fraction == 1 else f" {job.train_fraction:.0%} of the training split"
    return f"{job.dataset} {','.join(job.methods)} eps={job.eps:g} {noise}{frac} seed={job.seed}"


def _cost(job: Job, sizes: dict[str, int]) -> float:
    if job.config.epochs is None:
        return job.config.steps * (10.0 if sizes.get(job.dataset, 0) > 20000 else 1.0)
    return sizes.get(job.dataset, 1) * job.config.epochs


def run_study(cfg: StudyConfig, console: Console | None = None, report: bool = True) -> StudyOutcome:
    """Run (or resume) a study grid and write its report.

    Args:
        cfg: the :class:`StudyConfig`.
        console: a ``rich.console.Console`` for the progress bar and messages (default: a new one).
        report: write ``report.html`` and ``summary.md`` at the end.

    Returns:
        A :class:`StudyOutcome`.

    Raises:
        StudyInterrupted: on Ctrl-C, after the finished runs are saved; the message says how to resume.
    """
    from rich.console import Console

    console = console or Console()
    start = time.perf_counter()
    store = ResultsStore(cfg.out)
    binary = _binary_names(cfg)
    failures: list[tuple[str, str]] = []
    hp_jobs = plan_hp_jobs(cfg, binary)
    hp: dict[tuple[str, str, float], TrainConfig] = {}
    hp_summary: dict[str, dict[str, float]] = {}
    trained = 0
    if hp_jobs:
        todo = _pending(hp_jobs, store)
        console.print(
            f"Choosing the learning rate and weight decay on validation: {len(hp_jobs)} ce trainings "
            f"({len(hp_jobs) - len(todo)} already done)."
        )
        try:
            trained += _train(cfg, store, todo, failures, console) if todo else 0
        except KeyboardInterrupt:
            raise StudyInterrupted(
                f"Interrupted while choosing hyper-parameters; finished runs are saved in {store.path}. Resume with "
                f"the same command: {cfg.command}"
            ) from None
        hp, hp_summary = choose_hyperparameters(cfg, store.records, binary)
    jobs = plan_jobs(cfg, binary, hp)
    # Job is not a mapping: Job.keys() lists the result keys of its methods, and a Job is not iterable.
    planned_keys = [k for job in jobs for k in job.keys()]  # noqa: SIM118
    pending = _pending(jobs, store)
    n_todo = sum(len(j.methods) for j in pending)
    skipped = len(planned_keys) - n_todo
    if skipped and n_todo:
        console.print(f"Resuming: skipping {skipped} finished run(s) already in {store.path}; {n_todo} to train.")
    elif not n_todo:
        console.print(f"Nothing to train: all {len(planned_keys)} runs are already in {store.path}.")

    html_path = md_path = None
    try:
        trained += _train(cfg, store, pending, failures, console) if pending else 0
        records = [store.records[k] for k in planned_keys if store.done(k)]
        meta = _meta(cfg, records, planned_keys)
        if hp_summary:
            meta["hyperparameters"] = hp_summary
        # The runs of this grid: results.json may also hold other grids' runs and the choosing phase's
        # ce runs at the pairs not chosen, which must not enter this grid's cells.
        meta["keys"] = planned_keys

        def same(m: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in m.items() if k not in ("created", "resources")}

        clean_meta = _clean_json(meta)
        assert isinstance(clean_meta, dict)  # _clean_json keeps a dict a dict
        if records and same(clean_meta) != same(store.meta):
            # The last grid's settings (quick, n_seeds, ...), for findings and banners; "resources" (each
            # invocation's wall and CPU time, appended by the CLI) is kept.
            kept = {"resources": store.meta["resources"]} if "resources" in store.meta else {}
            store.meta = {**meta, **kept}
            store.save()
        if report and records:
            from labelsmooth.study.report import write_report

            with progress.status(console, "writing report ..."):
                html_path, md_path = write_report(records, cfg.out, store.load_probs, meta, store.load_projection)
    except KeyboardInterrupt:
        done = sum(store.done(k) for k in planned_keys)
        raise StudyInterrupted(
            f"Interrupted. {done} of {len(planned_keys)} runs are saved in {store.path}. Resume with the same "
            f"command (finished runs are skipped, the report is written at the end): {cfg.command}"
        ) from None
    return StudyOutcome(
        records, len(planned_keys), trained, skipped, failures, html_path, md_path, time.perf_counter() - start
    )


def _train(
    cfg: StudyConfig, store: ResultsStore, pending: list[Job], failures: list[tuple[str, str]], console: Console
) -> int:
    """Train the pending jobs, showing progress (:mod:`labelsmooth.study.progress`); save each as it
    finishes; return the records written."""
    datasets = {}
    for name in dict.fromkeys(j.dataset for j in pending):
        with progress.status(console, f"loading {name} ..."):
            datasets[name] = load_dataset(name, cfg.data_dir)
    sizes = {name: ds.size for name, ds in datasets.items()}
    # Longest jobs first: with several workers this shortens the time to finish the grid.
    pending = sorted(pending, key=lambda j: -_cost(j, sizes))
    workers = max(1, min(cfg.workers, len(pending)))
    trained = 0
    # results.json is rewritten whole, so on a long grid it is rewritten at most every few seconds
    # (and always at the end, also after Ctrl-C): a killed process loses only those seconds.
    last_write = [time.monotonic()]
    with progress.track(console, sum(len(j.methods) for j in pending)) as shown:

        def finished(job: Job, result: JobResult | None, error: BaseException | None) -> None:
            nonlocal trained
            if error is not None:
                failures.append((_describe(job), f"{type(error).__name__}: {error}"))
                shown.print(f"[red]failed[/red] {_describe(job)}: {type(error).__name__}: {error}")
            else:
                assert result is not None  # a job without an error has a result
                for r in result.records:
                    r["dataset_description"] = datasets[job.dataset].description
                now = time.monotonic()
                due = now - last_write[0] >= max(_WRITE_EVERY_S, store.last_write_s / _WRITE_SHARE)
                store.add(result, write=due)
                if due:
                    last_write[0] = time.monotonic()
                trained += len(result.records)
            shown.advance(len(job.methods), last=_describe(job))

        try:
            if workers == 1:
                _run_inline(pending, datasets, finished)
            else:
                _run_pool(pending, datasets, workers, finished)
        finally:
            store.save()
    return trained


def _run_inline(pending: list[Job], datasets: dict[str, Dataset], finished: Finished) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is as fast and leaves the other cores free
    try:
        for job in pending:
            try:
                result = run_job(job, datasets[job.dataset])
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one failed run must not lose the others
                finished(job, None, err)
                continue
            finished(job, result, None)
    finally:
        torch.set_num_threads(threads)


def _run_pool(pending: list[Job], datasets: dict[str, Dataset], workers: int, finished: Finished) -> None:
    # spawn, not fork: forking a process that has started OpenMP threads (torch) can deadlock the
    # child, and CUDA cannot be used in a forked child at all.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(datasets, 1))
    futures: dict[Future[JobResult], Job] = {}
    try:
        futures = {pool.submit(_work, job): job for job in pending}
        remaining: Iterable[Future[JobResult]] = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                err = fut.exception()
                finished(futures[fut], None if err else fut.result(), err)
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        # End only the worker processes this pool started (by their process objects).
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("labelsmooth", "torch", "numpy", "scikit-learn", "mnist1d"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def _meta(cfg: StudyConfig, records: list[S.Record], planned_keys: list[str]) -> dict[str, Any]:
    t = cfg.train
    budget = (
        {"steps": t.steps}
        if not cfg.epochs and t.epochs is None
        else {"epochs": {d: cfg.epochs.get(d, t.epochs) for d in cfg.datasets}}
    )
    return {
        "command": cfg.command,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        # Read by the report's banner: a smoke test or fewer than 3 seeds makes no verdicts.
        "quick": bool(cfg.quick),
        "n_seeds": int(cfg.seeds),
        "config": {
            **budget,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "hidden": list(t.hidden),
            "optimizer": "adam",
            "checkpoints": "last step, and best validation accuracy (early stopping)",
            "seeds": cfg.seeds,
            "noise_kind": cfg.noise_kind,
            "noise_levels (fraction of breakdown rate)": cfg.noise,
            "train_fractions": cfg.train_fractions,
            "lr grid": cfg.lrs or [t.lr],
            "weight decay grid": cfg.weight_decays or [t.weight_decay],
            "eps": cfg.eps,
            "methods": cfg.methods,
        },
        "datasets": {r["dataset"]: r.get("dataset_description", "") for r in records},
        "missing": len(planned_keys) - len(records),
    }
