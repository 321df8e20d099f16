"""``sweep``: the study's protocol on a user's own training code.

The user's ``train_fn(eps, seed, train_labels)`` trains one model and returns its validation and test
outputs. :func:`sweep` runs it for every (eps, seed) pair, locally in a process pool or on a Dask cluster,
saves each finished run so that an interrupted sweep resumes, chooses eps on the validation outputs only,
reads the test outputs of the chosen eps and of eps = 0, and compares them paired over seeds with the
verdict rule that ``labelsmooth study`` applies (a t-test over seeds, Holm's correction, a practical
tolerance, no verdict below three seeds).

Saved runs (``out/runs/``): per run a JSON file of metadata (eps, seed, noise, a fingerprint of the
labels and settings, seconds, validation metrics) and an ``.npz`` of the outputs (``val``, ``test``), each
written through a temporary file and ``os.replace``; the ``.npz`` first, so a JSON file always names a
whole ``.npz``. Nothing is pickled to disk, and the ``.npz`` is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import math
import multiprocessing
import numbers
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelsmooth._files import atomic_write as _atomic_write
from labelsmooth.evaluation.multiplicity import ALPHA, OUTCOMES, PAIRED_OUTCOMES
from labelsmooth.evaluation.result import (
    HIGHER_IS_BETTER,
    LABELS,
    METRICS,
    PER_EXAMPLE,
    EvaluationResult,
    _html_figures,
    _page,
    evaluate,
)

__all__ = ["SweepResult", "SweepVerdict", "sweep"]

#: Fewer seeds than this: no verdict (the study's rule).
MIN_SEEDS = 3
#: Validation metrics eps may be chosen on, and whether higher is better.
SELECT_ON = {"nll": False, "accuracy": True}
#: Format of the saved run files.
_FORMAT = 1


# ----------------------------------------------------------------------------- checks


def _check_train_fn(train_fn: object) -> None:
    """A process pool (and a Dask worker) finds ``train_fn`` by its module and name: refuse what it cannot."""
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a function train_fn(eps, seed, train_labels), got {train_fn!r}")
    fn = train_fn
    while hasattr(fn, "func") and hasattr(fn, "args"):  # functools.partial: the wrapped function must import
        fn = fn.func
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname:
        raise TypeError(
            "train_fn must be a function defined at the top level of a module (the worker processes import it "
            f"by name), got a lambda: {train_fn!r}; define it with def in a module"
        )
    if "<locals>" in qualname:
        raise TypeError(
            "train_fn must be a function defined at the top level of a module (the worker processes import it "
            f"by name), got the nested function {qualname!r}; move it to the module's top level"
        )


def _labels(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor of class indices, got {type(x).__name__}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class indices, got shape {tuple(arr.shape)}")
    if int(arr.min()) < 0:
        raise ValueError(f"{name} out of range: class indices must be >= 0, got {int(arr.min())}")
    return arr.astype(np.int64)


def _check_eps(eps: object) -> tuple[float, ...]:
    if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence):
        raise TypeError(f"eps must be a sequence of numbers in [0, 1) including 0.0, got {eps!r}")
    out = []
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not 0 <= float(e) < 1:
            raise ValueError(f"eps must hold numbers in [0, 1), got {e!r} in {list(eps)!r}")
        out.append(float(e))
    if 0.0 not in out:
        raise ValueError(f"eps must include 0.0 (the unsmoothed model every eps is compared with), got {list(eps)!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"eps must not repeat a value, got {list(eps)!r}")
    return tuple(sorted(out))


def _check_seeds(seeds: object) -> tuple[int, ...]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (a number of seeds) or a list of seeds, got {seeds!r}")
        return tuple(range(int(seeds)))
    if isinstance(seeds, Sequence) and not isinstance(seeds, (str, bytes)):
        if not seeds:
            raise ValueError("seeds must name at least one seed, got an empty list")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
                raise ValueError(f"seeds must hold integers >= 0, got {s!r} in {list(seeds)!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must not repeat a value, got {list(seeds)!r}")
        return tuple(int(s) for s in seeds)
    raise TypeError(f"seeds must be an integer >= 1 or a list of integer seeds, got {seeds!r}")


def _noise_fn(noise_kind: object) -> Callable[[np.ndarray, float, int, int], np.ndarray]:
    from labelsmooth import noise as N

    if isinstance(noise_kind, Mapping):
        mapping = dict(noise_kind)
        return lambda y, rate, k, seed: N.from_mapping(y, rate, mapping, seed=seed)
    if noise_kind == "symmetric":
        return lambda y, rate, k, seed: N.symmetric(y, rate, k, seed=seed)
    if noise_kind == "pairflip":
        return lambda y, rate, k, seed: N.pairflip(y, rate, k, seed=seed)
    raise ValueError(f"noise_kind must be 'symmetric', 'pairflip' or a class mapping {{c: c'}}, got {noise_kind!r}")


# ----------------------------------------------------------------------------- one training (in a worker)


def _takes_val_labels(train_fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(train_fn).parameters
    except (TypeError, ValueError):
        return False
    return "val_labels" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _as_scores(x: object, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    return x


def _split_outputs(out: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(out, Mapping):
        missing = [k for k in ("val", "test") if k not in out]
        if missing:
            raise ValueError(f"{where} returned a dict without {missing}: return {{'val': ..., 'test': ...}}")
        val, test = out["val"], out["test"]
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        val, test = out
    else:
        raise TypeError(
            f"{where} must return {{'val': val_outputs, 'test': test_outputs}} or a (val, test) tuple, "
            f"got {type(out).__name__}"
        )
    return _as_scores(val, f"{where}'s val outputs"), _as_scores(test, f"{where}'s test outputs")


def _run_one(
    train_fn: Callable[..., Any], eps: float, seed: int, train_labels: np.ndarray, val_labels: np.ndarray | None
) -> dict[str, Any]:
    start = time.monotonic()
    kw = {} if val_labels is None else {"val_labels": val_labels}
    val, test = _split_outputs(train_fn(eps, seed, train_labels, **kw), f"train_fn(eps={eps:g}, seed={seed})")
    return {"val": val, "test": test, "seconds": time.monotonic() - start}


def _init_worker(threads: int) -> None:
    # Ctrl-C is handled by the parent (it keeps what finished); workers ignore SIGINT and are terminated.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- saved runs


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def _clean(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _clean(x.item())
    return x


def _run_name(eps: float, seed: int) -> str:
    return f"eps{eps:.6g}_seed{seed}"


class _Store:
    """``out/runs/<eps>_<seed>.json`` and ``.npz`` (or, without ``out``, the runs of this call in memory)."""

    def __init__(self, out: Path | None) -> None:
        self.dir = None if out is None else out / "runs"
        self.memory: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob("*.tmp-*"):  # a process killed mid-write leaves these
                stale.unlink(missing_ok=True)

    def meta(self, name: str, fingerprint: str) -> dict[str, Any] | None:
        if self.dir is None:
            return self.memory[name][0] if name in self.memory else None
        path = self.dir / f"{name}.json"
        if not path.is_file() or not (self.dir / f"{name}.npz").is_file():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # not one of ours (the atomic writes leave no torn file): train again
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} holds a run of a different sweep (other labels, noise or train_fn); "
                "use another out folder or delete that one"
            )
        return dict(meta)

    def add(self, name: str, meta: dict[str, Any], val: np.ndarray, test: np.ndarray) -> None:
        if self.dir is None:
            self.memory[name] = (meta, val, test)
            return
        _atomic_write(self.dir / f"{name}.npz", lambda f: np.savez(f, val=val, test=test))
        _write_text(self.dir / f"{name}.json", json.dumps(_clean(meta), indent=1, allow_nan=False))

    def outputs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self.dir is None:
            return self.memory[name][1], self.memory[name][2]
        with np.load(self.dir / f"{name}.npz", allow_pickle=False) as f:
            return f["val"], f["test"]


# ----------------------------------------------------------------------------- executors

#: (eps, seed) -> its outputs, or the exception it raised.
_Done = Callable[[tuple[float, int], "dict[str, Any] | None", "BaseException | None"], None]
#: One training: (eps, seed, training labels, validation labels passed to train_fn or None).
_Task = tuple[float, int, np.ndarray, "np.ndarray | None"]


def _run_inline(fn: Callable[..., Any], tasks: list[_Task], done: _Done) -> None:
    for eps, seed, labels, val_labels in tasks:
        try:
            res = _run_one(fn, eps, seed, labels, val_labels)
        except Exception as err:  # one failed run must not lose the others
            done((eps, seed), None, err)
            continue
        done((eps, seed), res, None)


def _run_pool(fn: Callable[..., Any], tasks: list[_Task], workers: int, done: _Done) -> None:
    # spawn, not fork: forking a process that has started OpenMP threads (torch) can deadlock the child,
    # and CUDA cannot be used in a forked child at all.
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
    futures: dict[Future[dict[str, Any]], tuple[float, int]] = {}
    try:
        futures = {pool.submit(_run_one, fn, e, s, y, yv): (e, s) for e, s, y, yv in tasks}
        remaining: set[Future[dict[str, Any]]] = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in finished:
                err = fut.exception()
                done(futures[fut], None if err else fut.result(), err)
    except BaseException:
        for fut in futures:
            fut.cancel()
        for proc in list(getattr(pool, "_processes", {}).values()):  # only the processes this pool started
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _client(scheduler: object) -> Iterator[Any]:
    try:
        distributed: Any = importlib.import_module("distributed")  # untyped: its names are Any here
    except ImportError as err:
        raise ImportError(
            "scheduler needs dask.distributed: pip install 'labelsmooth[dask]' (dask and distributed)"
        ) from err
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str):
        raise TypeError(
            "scheduler must be a Dask scheduler address such as 'tcp://host:8786' or a distributed.Client, "
            f"got {type(scheduler).__name__}"
        )
    client = distributed.Client(scheduler)
    try:
        yield client
    finally:
        client.close()


def _run_dask(fn: Callable[..., Any], tasks: list[_Task], scheduler: object, done: _Done) -> None:
    distributed: Any = importlib.import_module("distributed")
    with _client(scheduler) as client:
        # pure=False: every call is a fresh task (a seed's result is never taken from another client's cache).
        futures = {client.submit(_run_one, fn, e, s, y, yv, pure=False): (e, s) for e, s, y, yv in tasks}
        try:
            for fut in distributed.as_completed(list(futures)):
                if fut.status == "error":
                    done(futures[fut], None, fut.exception())
                else:
                    done(futures[fut], fut.result(), None)
                fut.release()
        except BaseException:
            client.cancel(list(futures))
            raise


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepVerdict:
    """The paired comparison over seeds of one test metric: the chosen eps against eps = 0.

    Attributes:
        metric: a name of :data:`~labelsmooth.evaluation.METRICS`.
        values: per-seed differences, signed so that positive means the chosen eps is better.
        tolerance: the smallest mean difference called a change (2 / n_test for accuracy and AURC, else 0).
        low, high: the t-interval of the mean at ``level`` (Holm's level for this metric); None without a test.
        level: the interval's confidence level.
        p, p_holm: the two-sided one-sample t-test's p-value over seeds, and Holm's adjustment over the
            metrics; None without a test.
        outcome: ``"supports"`` (better), ``"contradicts"`` (worse), ``"same"`` or ``"withheld"``
            (fewer than three seeds).
        scaled: True for the comparison after temperature scaling (each model's temperature fitted on its
            own validation outputs).
    """

    metric: str
    values: tuple[float, ...]
    tolerance: float
    low: float | None
    high: float | None
    level: float
    p: float | None
    p_holm: float | None
    outcome: str
    scaled: bool = False

    @property
    def mean(self) -> float:
        """Mean over seeds of the signed difference."""
        return float(np.mean(self.values))

    @property
    def words(self) -> str:
        """``"better"``, ``"worse"``, ``"no clear difference"`` or ``"no verdict"`` (the chosen eps against 0)."""
        return PAIRED_OUTCOMES.get(self.outcome, OUTCOMES.get(self.outcome, self.outcome))

    def text(self, digits: int = 4) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass
class SweepResult:
    """What :func:`sweep` found (see there).

    Attributes:
        name: the model's name in reports.
        eps, seeds: the grid.
        noise, noise_kind: the label-noise rate of the training and validation labels (None: none) and its kind.
        select_on: the validation metric that chose eps (``"nll"`` or ``"accuracy"``).
        runs: one dict per (eps, seed): ``eps``, ``seed``, ``seconds``, ``trained`` (False when resumed from
            ``out``) and ``val`` (every metric of the run's validation outputs against its validation labels).
        validation: eps -> mean over seeds of the ``select_on`` validation metric.
        chosen_eps: the eps with the best mean validation metric.
        evaluations: ``(eps, seed)`` -> :class:`~labelsmooth.evaluation.EvaluationResult` on the clean test
            labels, for eps = 0 and the chosen eps only (temperature fitted on the run's validation outputs).
        verdicts: one :class:`SweepVerdict` per metric (empty when eps = 0 was chosen).
        verdicts_scaled: the same after temperature scaling of both models (a family of its own).
        note: why there is no verdict, when there is none.
        out: the folder of the saved runs and reports, or None.
    """

    name: str
    eps: tuple[float, ...]
    seeds: tuple[int, ...]
    noise: float | None
    noise_kind: str
    select_on: str
    runs: list[dict[str, Any]]
    validation: dict[float, float]
    chosen_eps: float
    evaluations: dict[tuple[float, int], EvaluationResult] = field(repr=False)
    verdicts: list[SweepVerdict]
    verdicts_scaled: list[SweepVerdict] = field(default_factory=list)
    note: str = ""
    alpha: float = ALPHA
    out: Path | None = None

    def verdict(self, metric: str, scaled: bool = False) -> SweepVerdict:
        """The verdict of ``metric`` (after temperature scaling with ``scaled``; KeyError when there is none)."""
        for v in self.verdicts_scaled if scaled else self.verdicts:
            if v.metric == metric:
                return v
        raise KeyError(metric)

    def test_mean(self, eps: float, metric: str, scaled: bool = False) -> float:
        """Mean over seeds of a test metric (after temperature scaling with ``scaled``), for eps = 0 or the
        chosen eps (the only ones whose test outputs were read)."""
        vals = [_value(self.evaluations[(eps, s)], metric, scaled) for s in self.seeds]
        return float(np.mean(vals))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: settings, every run's validation metrics, the choice, test metrics per seed, verdicts."""
        test = {
            f"{e:g}": {
                str(s): {m: r.metrics[m].value for m in METRICS} for (e2, s), r in self.evaluations.items() if e2 == e
            }
            for e in dict.fromkeys(e for e, _ in self.evaluations)
        }
        return _clean(
            {
                "name": self.name,
                "eps": list(self.eps),
                "seeds": list(self.seeds),
                "noise": self.noise,
                "noise_kind": self.noise_kind,
                "select_on": self.select_on,
                "selection": "one eps for every seed: the best mean validation metric over seeds; "
                "ties go to the smaller eps",
                "validation": {f"{e:g}": v for e, v in self.validation.items()},
                "chosen_eps": self.chosen_eps,
                "runs": self.runs,
                "test": test,
                "alpha": self.alpha,
                "note": self.note,
                "verdicts": [{**v.__dict__, "mean": v.mean, "words": v.words} for v in self.verdicts],
                "verdicts_scaled": [{**v.__dict__, "mean": v.mean, "words": v.words} for v in self.verdicts_scaled],
            }
        )  # type: ignore[return-value]

    # -- rendering

    def _intro(self) -> str:
        noise = (
            "no label noise"
            if not self.noise
            else f"{self.noise_kind} label noise at rate {self.noise:g} injected into the training and validation "
            "labels (each seed its own draw; test labels clean)"
        )
        direction = "highest" if SELECT_ON[self.select_on] else "lowest"
        return (
            f"{len(self.eps)} values of eps x {len(self.seeds)} seeds = {len(self.runs)} trainings; {noise}. "
            f"eps chosen on validation only: the eps with the {direction} mean validation {LABELS[self.select_on]} "
            f"over seeds (ties: the smaller eps); the test outputs were read for eps = 0 and the chosen eps only."
        )

    def _val_rows(self) -> list[list[str]]:
        rows = []
        for e in self.eps:
            per = [r for r in self.runs if r["eps"] == e]
            acc = np.mean([r["val"]["accuracy"] for r in per])
            nll = np.mean([r["val"]["nll"] for r in per])
            mark = " (chosen)" if e == self.chosen_eps else ""
            rows.append([f"{e:g}{mark}", f"{nll:.4f}", f"{acc:.4f}", str(len(per))])
        return rows

    def _test_rows(self, scaled: bool) -> list[list[str]]:
        rows = []
        for v in self.verdicts_scaled if scaled else self.verdicts:
            p = "n/a" if v.p_holm is None else f"{v.p_holm:.3g}"
            level = "n/a" if v.low is None else f"{100 * v.level:.2f}%"
            rows.append(
                [
                    LABELS[v.metric],
                    f"{self.test_mean(0.0, v.metric, scaled):.4f}",
                    f"{self.test_mean(self.chosen_eps, v.metric, scaled):.4f}",
                    v.text(),
                    level,
                    p,
                    v.words,
                ]
            )
        return rows

    _VAL_HEAD = ("eps", "val NLL (mean)", "val accuracy (mean)", "seeds")

    def _test_head(self) -> tuple[str, ...]:
        return (
            "metric",
            "eps = 0 (mean)",
            f"eps = {self.chosen_eps:g} (mean)",
            "difference [interval]",
            "level",
            "p (Holm)",
            "verdict",
        )

    def _sections(self) -> list[tuple[str, str, list[SweepVerdict], bool]]:
        """(title, intro, verdicts, scaled) of the test comparisons that have verdicts."""
        e = f"{self.chosen_eps:g}"
        ts = (
            "Both models' logits divided by the temperature fitted on their own validation outputs (and the "
            "validation labels they were chosen with): does smoothing still help once each model is recalibrated? "
            "A family of its own. "
        )
        out = [
            (f"Test: eps = {e} against eps = 0", self._test_intro(), self.verdicts, False),
            (
                f"Test after temperature scaling: eps = {e} against eps = 0",
                ts + self._test_intro(),
                self.verdicts_scaled,
                True,
            ),
        ]
        return [x for x in out if x[2]]

    def _test_intro(self) -> str:
        return (
            f"Differences paired by seed, signed so that positive means eps = {self.chosen_eps:g} is better "
            "(lower-is-better metrics negated). Two-sided t-test over seeds, p-values Holm-adjusted over the "
            f"{len(METRICS)} metrics, intervals at Holm's level, verdicts at family-wise {self.alpha:g} with a "
            "tolerance of 2 / n_test for accuracy and AURC."
        )

    def to_markdown(self) -> str:
        """The report as Markdown: settings, validation table, the choice, the paired test comparison."""

        def table(head: Sequence[str], rows: list[list[str]]) -> str:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"

        out = [f"# Label-smoothing sweep: {self.name}\n\n{self._intro()}\n"]
        out.append("\n## Validation (choosing eps)\n\n" + table(self._VAL_HEAD, self._val_rows()))
        out.append(f"\nChosen eps: **{self.chosen_eps:g}**.\n")
        if self.note:
            out.append(f"\n## Test: eps = {self.chosen_eps:g} against eps = 0\n\n{self.note}\n")
        for i, (title, intro, _, scaled) in enumerate(self._sections()):
            out.append("" if self.note and i == 0 else f"\n## {title}\n")
            out.append("\n" + intro + "\n\n" + table(self._test_head(), self._test_rows(scaled)))
        return "".join(out)

    def to_html(self) -> str:
        """A self-contained HTML page: the tables of :meth:`to_markdown`, and the reliability diagram and
        risk-coverage curve of the first seed's eps = 0 and chosen-eps models (needs matplotlib)."""
        import html

        def table(head: Sequence[str], rows: list[list[str]], classes: Sequence[str] = ()) -> str:
            th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            body = "".join(
                f"<tr class='{classes[i] if classes else ''}'>"
                + "".join(f"<td>{html.escape(c)}</td>" for c in r)
                + "</tr>"
                for i, r in enumerate(rows)
            )
            return f"<table><tr>{th}</tr>{body}</table>"

        parts = [f"<h1>Label-smoothing sweep: {html.escape(self.name)}</h1><p>{html.escape(self._intro())}</p>"]
        parts.append("<h2>Validation (choosing eps)</h2>" + table(self._VAL_HEAD, self._val_rows()))
        parts.append(f"<p>Chosen eps: <b>{self.chosen_eps:g}</b>.</p>")
        if self.note:
            parts.append(f"<h2>Test: eps = {self.chosen_eps:g} against eps = 0</h2><p>{html.escape(self.note)}</p>")
        for i, (title, intro, verdicts, scaled) in enumerate(self._sections()):
            cls = [{"supports": "better", "contradicts": "worse"}.get(v.outcome, "") for v in verdicts]
            head = "" if self.note and i == 0 else f"<h2>{html.escape(title)}</h2>"
            parts.append(f"{head}<p>{html.escape(intro)}</p>" + table(self._test_head(), self._test_rows(scaled), cls))
        seed = self.seeds[0]
        for e in dict.fromkeys((0.0, self.chosen_eps)):
            r = self.evaluations[(e, seed)]
            parts.append(f"<h3>{html.escape(r.name)}</h3>" + _html_figures(r))
        return _page(f"Label-smoothing sweep: {self.name}", "".join(parts))


def _value(r: EvaluationResult, metric: str, scaled: bool) -> float:
    if scaled:
        if r.scaled is None:  # evaluate() always gets validation outputs here
            raise AssertionError("no temperature-scaled metrics")
        return r.scaled[metric].value
    return r.metrics[metric].value


def _verdicts(
    evals: dict[tuple[float, int], EvaluationResult], chosen: float, seeds: Sequence[int], alpha: float, scaled: bool
) -> list[SweepVerdict]:
    """The study's rule over seeds (:func:`labelsmooth.evaluation.verdicts.adjust`), worded as a paired comparison."""
    from labelsmooth.evaluation.verdicts import Verdict, adjust

    n_test = evals[(0.0, seeds[0])].n
    family = []
    for m in METRICS:
        sign = 1.0 if m in HIGHER_IS_BETTER else -1.0
        values = tuple(
            sign * (_value(evals[(chosen, s)], m, scaled) - _value(evals[(0.0, s)], m, scaled)) for s in seeds
        )
        tol = 2.0 / n_test if m in PER_EXAMPLE else 0.0
        family.append(Verdict("sweep", "", "", m, f"eps={chosen:g} vs eps=0", "", "", values, tol))
    out = []
    for v in adjust(family, alpha):
        has_test = v.p is not None
        out.append(
            SweepVerdict(
                v.metric,
                v.values,
                v.tolerance,
                v.low if has_test else None,
                v.high if has_test else None,
                v.level,
                v.p,
                v.p_holm,
                v.outcome if v.outcome != "unknown" else "withheld",
                scaled,
            )
        )
    return out


# ----------------------------------------------------------------------------- sweep


def sweep(
    train_fn: Callable[[float, int, np.ndarray], Any],
    *,
    train_labels: Any,
    val_labels: Any,
    test_labels: Any,
    eps: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
    seeds: int | Sequence[int] = 5,
    noise: float | None = None,
    noise_kind: str | Mapping[int, int] = "symmetric",
    num_classes: int | None = None,
    select_on: str = "nll",
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    kind: str = "auto",
    alpha: float = ALPHA,
    name: str = "model",
) -> SweepResult:
    """Train a model for every (eps, seed), choose eps on validation, and compare it with eps = 0 over seeds.

    The study's protocol (``labelsmooth study``) on your own training code:

    1. **Noise.** With ``noise``, each seed draws its own noisy training labels (``labelsmooth.noise``,
       seed ``2 * seed``) and its own noisy validation labels (seed ``2 * seed + 1``): eps is then chosen
       with the labels a user would have. The test labels stay clean. Every eps of a seed trains on the
       same noisy labels.
    2. **Training.** ``train_fn(eps, seed, train_labels)`` runs once per (eps, seed): in a process pool of
       ``workers`` processes (spawn context; ``workers=1``: in this process), or on a Dask cluster when
       ``scheduler`` is given. It receives the (noisy) training labels as an int64 numpy array and no other
       labels: it loads its own inputs, trains with label smoothing ``eps`` (``eps = 0``: plain
       cross-entropy), seeds its own randomness from ``seed``, and returns its outputs on the validation
       and test examples, in the order of ``val_labels`` and ``test_labels``: ``{"val": ..., "test": ...}``
       or ``(val, test)``, each ``(N, K)`` logits or probabilities (``(N,)`` for a binary problem), numpy
       or torch. If ``train_fn`` has a ``val_labels`` parameter (or ``**kwargs``), it also receives the
       seed's (noisy) validation labels as ``val_labels=``, for early stopping on validation; it never
       receives test labels.
    3. **Saving.** With ``out``, each finished run is saved at once to ``out/runs/`` (JSON metadata and an
       ``.npz`` of the outputs, written atomically; no pickle). Calling ``sweep`` again with the same
       arguments trains only the runs that are missing (after an interruption or a failed run). A run
       saved with other labels, noise or ``train_fn`` is refused, naming its file.
    4. **Choice.** One eps for every seed: the eps with the best mean over seeds of the validation
       ``select_on`` (``"nll"``, lowest, or ``"accuracy"``, highest; ties go to the smaller eps). Only
       validation outputs and (noisy) validation labels are read.
    5. **Test.** The test outputs are read for eps = 0 and the chosen eps only, scored by
       :func:`~labelsmooth.evaluation.evaluate` on the clean test labels (temperature fitted on the run's
       validation outputs), and compared paired by seed: per metric the per-seed differences (positive:
       the chosen eps better), a two-sided t-test over seeds, Holm's correction over the metrics, and the
       words better / worse / no clear difference; a difference must also reach 2 / n_test for accuracy
       and AURC. The same comparison after temperature scaling of both models (each temperature fitted on
       the model's own validation outputs) is a second family. With fewer than 3 seeds no verdict is
       given, and the report says so; when eps = 0 is chosen there is nothing to compare, and the report
       says that.

    With ``out`` the report is written to ``out/sweep.md``, ``out/sweep.html`` and ``out/sweep.json``.

    ``train_fn`` must be importable by the worker processes: a function defined with ``def`` at the top
    level of a module (or a ``functools.partial`` of one). A lambda or a nested function is refused with a
    TypeError. A function defined in a script run as ``python script.py`` works when the sweep is started
    under ``if __name__ == "__main__":``; in a notebook, put it in a module or use ``workers=1``
    (it is still refused there when it is a lambda, so that the same code runs in a pool).

    Args:
        train_fn: ``train_fn(eps, seed, train_labels) -> {"val": outputs, "test": outputs}``.
        train_labels: ``(N_train,)`` integer class indices (clean; noise is added here when asked).
        val_labels: ``(N_val,)`` labels of the validation outputs (clean; noise is added when asked).
        test_labels: ``(N_test,)`` labels of the test outputs, never noised.
        eps: the smoothing values; must include 0.0.
        seeds: a number of seeds (``range(seeds)``) or a list of seeds.
        noise: rate of label noise in [0, 1] (None or 0: none).
        noise_kind: ``"symmetric"``, ``"pairflip"`` or a class mapping ``{c: c'}`` (``noise.from_mapping``).
        num_classes: K (default: the largest label + 1).
        select_on: ``"nll"`` or ``"accuracy"``.
        out: folder of the saved runs and the reports (None: nothing saved, no resume).
        scheduler: a Dask scheduler address (``"tcp://host:8786"``) or a ``distributed.Client``; needs
            ``pip install 'labelsmooth[dask]'``.
        workers: processes of the local pool (default: the CPU count, at most the number of runs; 1: no
            pool). Ignored with ``scheduler``.
        kind: ``"logits"``, ``"probs"`` or ``"auto"``, as in :func:`~labelsmooth.evaluation.evaluate`.
        alpha: family-wise error rate of the verdicts.
        name: the model's name in reports.

    Returns:
        A :class:`SweepResult`.

    Raises:
        TypeError: a lambda or nested ``train_fn``, labels that are not integer arrays, outputs of the wrong type.
        ValueError: eps not in [0, 1) or without 0.0, seeds < 1, labels out of range, outputs whose number
            of rows differs from the labels', a saved run of a different sweep.
        RuntimeError: some runs failed (the others are saved; call again to train the missing ones).

    Example:
        >>> import numpy as np, torch
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(400, 5)).astype(np.float32)
        >>> y = (X @ rng.normal(size=(5, 3))).argmax(1)
        >>> def train_fn(eps, seed, train_labels):  # in real use: at the top level of a module
        ...     torch.manual_seed(seed)
        ...     model = torch.nn.Linear(5, 3)
        ...     opt = torch.optim.Adam(model.parameters(), lr=0.1)
        ...     x, t = torch.from_numpy(X[:200]), torch.from_numpy(train_labels)
        ...     for _ in range(30):
        ...         opt.zero_grad()
        ...         torch.nn.functional.cross_entropy(model(x), t, label_smoothing=eps).backward()
        ...         opt.step()
        ...     with torch.no_grad():
        ...         return {"val": model(torch.from_numpy(X[200:300])), "test": model(torch.from_numpy(X[300:]))}
        >>> res = sweep(train_fn, train_labels=y[:200], val_labels=y[200:300], test_labels=y[300:],
        ...             eps=(0.0, 0.1), seeds=3, noise=0.2, workers=1)
        >>> res.chosen_eps in (0.0, 0.1), len(res.runs), sorted(res.validation)
        (True, 6, [0.0, 0.1])
    """
    _check_train_fn(train_fn)
    ytr = _labels(train_labels, "train_labels")
    yva = _labels(val_labels, "val_labels")
    yte = _labels(test_labels, "test_labels")
    eps_t = _check_eps(eps)
    seeds_t = _check_seeds(seeds)
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be 'nll' or 'accuracy', got {select_on!r}")
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'logits', 'probs' or 'auto', got {kind!r}")
    largest = int(max(ytr.max(), yva.max(), yte.max()))
    if num_classes is None:
        k = max(2, largest + 1)
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        k = int(num_classes)
        if largest >= k:
            raise ValueError(f"labels out of range: num_classes={k} but a label is {largest}")
    rate = None
    if noise is not None:
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= float(noise) <= 1:
            raise ValueError(f"noise must be a rate in [0, 1] or None, got {noise!r}")
        rate = float(noise) or None
    add_noise = _noise_fn(noise_kind) if rate else None
    kind_name = noise_kind if isinstance(noise_kind, str) else "mapping"
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
    out_dir = None if out is None else Path(out)
    store = _Store(out_dir)

    labels_by_seed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for s in seeds_t:
        if add_noise is not None and rate is not None:
            labels_by_seed[s] = (add_noise(ytr, rate, k, 2 * s), add_noise(yva, rate, k, 2 * s + 1))
        else:
            labels_by_seed[s] = (ytr, yva)

    fn_name = f"{getattr(train_fn, '__module__', '')}.{getattr(train_fn, '__qualname__', type(train_fn).__name__)}"
    digest = hashlib.sha1()
    for arr in (ytr, yva, yte):
        digest.update(arr.tobytes())
    digest.update(json.dumps([rate, kind_name, str(noise_kind), k, fn_name]).encode())
    base = digest.hexdigest()

    def fingerprint(e: float, s: int) -> str:
        return hashlib.sha1(f"{base}|{e!r}|{s}".encode()).hexdigest()[:20]

    wants_val = _takes_val_labels(train_fn)
    metas: dict[tuple[float, int], dict[str, Any]] = {}
    tasks: list[_Task] = []
    for e in eps_t:
        for s in seeds_t:
            meta = store.meta(_run_name(e, s), fingerprint(e, s))
            if meta is None:
                tasks.append((e, s, labels_by_seed[s][0], labels_by_seed[s][1] if wants_val else None))
            else:
                meta["trained"] = False
                metas[(e, s)] = meta

    failures: list[str] = []

    def done(key: tuple[float, int], res: dict[str, Any] | None, err: BaseException | None) -> None:
        e, s = key
        where = f"train_fn(eps={e:g}, seed={s})"
        if err is not None or res is None:
            failures.append(f"{where}: {type(err).__name__}: {err}")
            return
        val, test = res["val"], res["test"]
        for arr, labels, what in ((val, yva, "val"), (test, yte, "test")):
            if arr.ndim not in (1, 2) or arr.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{where} returned {what} outputs of shape {tuple(arr.shape)}; {what}_labels has "
                    f"{labels.shape[0]} rows: return one row of outputs per {what} example, in the labels' order"
                )
        v = evaluate(val, labels_by_seed[s][1], n_bootstrap=0, kind=kind, name=f"eps {e:g} seed {s} (val)")
        meta = {
            "format": _FORMAT,
            "eps": e,
            "seed": s,
            "noise": rate,
            "noise_kind": kind_name,
            "fingerprint": fingerprint(e, s),
            "seconds": res["seconds"],
            "val": {m: v.metrics[m].value for m in METRICS},
        }
        store.add(_run_name(e, s), meta, val, test)
        metas[key] = {**meta, "trained": True}

    if tasks:
        if scheduler is not None:
            _run_dask(train_fn, tasks, scheduler, done)
        else:
            n_workers = min(len(tasks), workers or os.cpu_count() or 1)
            if n_workers == 1:
                _run_inline(train_fn, tasks, done)
            else:
                _run_pool(train_fn, tasks, n_workers, done)
    if failures:
        if out_dir is not None:
            kept = f"the {len(metas)} finished runs are saved in {out_dir / 'runs'}; call sweep again to train the rest"
        else:
            kept = "pass out= to keep finished runs across calls"
        raise RuntimeError(
            f"{len(failures)} of {len(eps_t) * len(seeds_t)} runs failed (" + "; ".join(failures) + f"); {kept}"
        )

    # Choice: validation only.
    higher = SELECT_ON[select_on]
    validation = {e: float(np.mean([metas[(e, s)]["val"][select_on] for s in seeds_t])) for e in eps_t}
    sign = -1.0 if higher else 1.0
    chosen = min(eps_t, key=lambda e: (sign * validation[e], e))  # eps_t is sorted: ties go to the smaller

    # Test: read once, for eps = 0 and the chosen eps.
    evals: dict[tuple[float, int], EvaluationResult] = {}
    for e in dict.fromkeys((0.0, chosen)):
        for s in seeds_t:
            val, test = store.outputs(_run_name(e, s))
            evals[(e, s)] = evaluate(
                test,
                yte,
                val_scores=val,
                val_labels=labels_by_seed[s][1],
                n_bootstrap=0,
                kind=kind,
                name=f"{name}, eps = {e:g}, seed {s}",
            )
    note = ""
    verdicts: list[SweepVerdict] = []
    verdicts_scaled: list[SweepVerdict] = []
    if chosen == 0.0:
        note = "Validation chose eps = 0 (no smoothing): there is no smoothed model to compare."
    else:
        verdicts = _verdicts(evals, chosen, seeds_t, alpha, scaled=False)
        verdicts_scaled = _verdicts(evals, chosen, seeds_t, alpha, scaled=True)
        if len(seeds_t) < MIN_SEEDS:
            note = (
                f"No verdict: {len(seeds_t)} seed(s); a verdict needs at least {MIN_SEEDS} paired seeds. "
                "The differences below are descriptive."
            )
    runs = [
        {
            "eps": e,
            "seed": s,
            "seconds": metas[(e, s)]["seconds"],
            "trained": metas[(e, s)]["trained"],
            "val": metas[(e, s)]["val"],
        }
        for e in eps_t
        for s in seeds_t
    ]
    result = SweepResult(
        name=name,
        eps=eps_t,
        seeds=seeds_t,
        noise=rate,
        noise_kind=kind_name,
        select_on=select_on,
        runs=runs,
        validation=validation,
        chosen_eps=chosen,
        evaluations=evals,
        verdicts=verdicts,
        verdicts_scaled=verdicts_scaled,
        note=note,
        alpha=alpha,
        out=out_dir,
    )
    if out_dir is not None:
        _write_text(out_dir / "sweep.md", result.to_markdown())
        _write_text(out_dir / "sweep.json", json.dumps(result.to_dict(), indent=1, allow_nan=False))
        _write_text(out_dir / "sweep.html", result.to_html())
    return result
