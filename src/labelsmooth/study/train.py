"""One training of the study and the records it produces.

A :class:`Job` is one model trained on one dataset with one loss, one label-smoothing value, one noise
setting and one seed. Every method that shares that training (``ce``, ``ts``, ``ts-oracle``) turns
it into one record. The seed fixes the split, the label noise, the initialisation and the minibatch
order, so the models compared at one seed differ only in their loss: comparisons are paired.

The training budget is a number of optimiser steps, the same on every dataset (``TrainConfig.steps``),
not a wall-clock budget. Three checkpoints are evaluated on the test split, and nothing else reads it:

* ``last``: the model after the whole budget (fields without prefix);
* ``es``: the model at the evaluation point with the highest accuracy on the validation labels a user
  has, noisy when the training labels are (early stopping; fields prefixed ``es_``);
* ``oracle_es``: the same on *clean* validation labels, an oracle no user has (``oracle_es_``).

What continued training past the early-stopped step costs is the overfitting claim's measure.

Curves are recorded on the training and validation splits only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch

from labelsmooth import noise
from labelsmooth.study import metrics as M
from labelsmooth.study import stats as S
from labelsmooth.study.data import Dataset, split_dataset
from labelsmooth.study.methods import METHODS, LossContext, label_smoothing_loss
from labelsmooth.study.models import build_model

__all__ = [
    "COLLAPSE_MARGIN",
    "CONVERGENCE_GAIN",
    "DIVERGED_LOGIT",
    "NOISE_KINDS",
    "PROJECTION_CLASSES",
    "Job",
    "JobResult",
    "TrainConfig",
    "breakdown_rate",
    "failure_reason",
    "noise_rate",
    "penultimate_projection",
    "run_job",
]

#: ``--noise-kind`` choices and the labelsmooth.noise function each uses.
NOISE_KINDS = {"symmetric": noise.symmetric, "pairflip": noise.pairflip}

#: Classes whose penultimate-layer picture (Müller et al. 2019) is recorded.
PROJECTION_CLASSES = (0, 1, 2)

#: A training whose accuracy on its training labels still rose by more than this over the last fifth
#: of the budget is counted as not converged.
CONVERGENCE_GAIN = 0.01

#: Validation labels get their own noise draw (same kind and rate as the training labels).
_VAL_NOISE_SEED = 100_003


def breakdown_rate(kind: str, num_classes: int) -> float:
    """The flip rate at which the noisy label stops being the true class more often than any other.

    Symmetric noise moves a label to each of the K - 1 other classes with probability r / (K - 1), so
    the true class stays the most frequent label while 1 - r > r / (K - 1), i.e. r < 1 - 1/K. Pair-flip
    noise moves it to one class with probability r: r < 1/2 for every K.

    Example:
        >>> breakdown_rate("symmetric", 10), breakdown_rate("symmetric", 2), breakdown_rate("pairflip", 10)
        (0.9, 0.5, 0.5)
    """
    if kind == "symmetric":
        return 1 - 1 / num_classes
    if kind == "pairflip":
        return 0.5
    raise ValueError(f"noise kind must be one of {sorted(NOISE_KINDS)}, got {kind!r}")


def noise_rate(kind: str, level: float, num_classes: int) -> float:
    """The flip rate of a noise *level*: ``level`` times :func:`breakdown_rate`.

    A level means the same severity for every number of classes (0.5 = half-way to the point where
    the labels carry no majority signal): 45% symmetric flips for K = 10, 25% for K = 2.

    Example:
        >>> round(noise_rate("symmetric", 0.5, 10), 3), noise_rate("symmetric", 0.5, 2)
        (0.45, 0.25)
    """
    return 0.0 if level == 0 else level * breakdown_rate(kind, num_classes)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters shared by every job of a study.

    Attributes:
        steps: optimiser steps, the same on every dataset (the training budget).
        epochs: if set, full passes over the training set instead of ``steps``.
        batch_size: minibatch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (0: smoothing is the only regulariser being measured).
        hidden: MLP hidden widths.
        val_fraction: validation share (temperature scaling is fitted there).
        test_fraction: test share when the dataset has no test split of its own.
        max_train: optional cap on training samples (stratified subsample).
        curve_points: evaluation points (evenly spaced in steps) for the curves and early stopping.
        device: ``"cpu"`` or ``"cuda"``.
    """

    steps: int = 1000
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    hidden: tuple[int, ...] = (128, 128)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_train: int | None = None
    curve_points: int = 50
    device: str = "cpu"

    def total_steps(self, n_train: int) -> int:
        """The budget in optimiser steps for ``n_train`` training samples."""
        if self.epochs is None:
            return self.steps
        return self.epochs * math.ceil(n_train / self.batch_size)

    def fingerprint(self) -> str:
        """Short hash of everything that changes the results (not the device).

        Two invocations with the same fingerprint produce the same runs, so a finished run is
        skipped on resume only when its fingerprint matches.
        """
        relevant = {k: v for k, v in asdict(self).items() if k != "device"}
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Job:
    """One training: dataset x loss x eps x noise x seed, evaluated by one or more methods.

    Attributes:
        dataset: dataset name (see :func:`labelsmooth.study.data.load_dataset`).
        loss_id: the shared loss of ``methods`` (see :class:`~labelsmooth.study.methods.Method`).
        eps: label smoothing.
        noise_kind: ``"symmetric"``, ``"pairflip"``, or ``"none"`` when ``noise_level == 0``.
        noise_level: fraction of the breakdown rate (:func:`noise_rate` turns it into a flip rate).
        seed: seed of split, noise, initialisation and batch order.
        methods: names of the methods evaluated on this training, e.g. ``("ce", "ts")``.
        config: the :class:`TrainConfig`.
        train_fraction: share of the seed's training split trained on (a stratified subsample), for the
            training-set-size sweep of the overfitting claim.
    """

    dataset: str
    loss_id: str
    eps: float
    noise_kind: str
    noise_level: float
    seed: int
    methods: tuple[str, ...]
    config: TrainConfig = field(default_factory=TrainConfig)
    train_fraction: float = 1.0

    def key(self, method: str) -> str:
        """Unique id of the record ``method`` makes from this job (used to skip finished runs)."""
        frac = "" if self.train_fraction == 1 else f"|frac={self.train_fraction:g}"
        return (
            f"{self.dataset}|{method}|eps={self.eps:g}|noise={self.noise_kind}:{self.noise_level:g}{frac}"
            f"|seed={self.seed}|cfg={self.config.fingerprint()}"
        )

    def keys(self) -> list[str]:
        """Keys of all records of this job, in ``methods`` order."""
        return [self.key(m) for m in self.methods]


@dataclass
class JobResult:
    """What a worker sends back: the records and, per record key, the test probabilities and labels."""

    records: list[S.Record]
    arrays: dict[str, dict[str, np.ndarray]]


def _curve_steps(total: int, points: int) -> set[int]:
    # Evenly spaced steps, always including the first evaluation point and the last step.
    return {round(float(e)) for e in np.linspace(total / min(points, total), total, min(points, total))}


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, binary: bool, batch: int = 4096) -> torch.Tensor:
    out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return out.squeeze(-1) if binary else out


@torch.no_grad()
def penultimate_projection(
    model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, classes: tuple[int, int, int] = PROJECTION_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Müller et al.'s (2019) picture: penultimate activations projected onto the plane of three templates.

    The templates are the rows of the last linear layer for ``classes``; the plane through them is
    spanned by ``w1 - w0`` and ``w2 - w0``, orthonormalised (QR). Each example of the three classes is
    projected onto that basis. Label smoothing is expected to draw tight, equally spaced clusters;
    cross-entropy broader ones.

    Args:
        model: a ``Sequential`` whose last module is the ``Linear`` head.
        x: inputs; only the examples of ``classes`` are used.
        y: their labels.
        classes: the three classes.

    Returns:
        ``(coords (M, 2) float64, labels (M,))``.

    References:
        Müller, Kornblith & Hinton, "When does label smoothing help?", NeurIPS 2019, Section 2.
    """
    keep = torch.isin(y, torch.tensor(classes, device=y.device))
    h = model[:-1](x[keep]).double()
    w = cast(torch.nn.Linear, model[-1]).weight.double()[list(classes)]  # build_model ends in the head
    basis, _ = torch.linalg.qr(torch.stack([w[1] - w[0], w[2] - w[0]], dim=1))  # (H, 2) orthonormal
    return (h @ basis).cpu().numpy(), y[keep].cpu().numpy()


def _checkpoint_fields(
    prefix: str,
    logits: dict[str, torch.Tensor],
    y: dict[str, torch.Tensor],
    flipped: np.ndarray,
    noisy: np.ndarray,
    clean: np.ndarray,
) -> dict[str, float | None]:
    """Test, validation and training fields of one checkpoint (prefix ``""``, ``"es_"`` or ``"oracle_es_"``)."""
    test = M.evaluate(logits["test"], y["test"])
    pred = M.predictions(logits["train"]).cpu().numpy()
    n_flipped = int(flipped.sum())
    clean_acc = M.accuracy(logits["train"], y["clean"])
    out = {
        "test_accuracy": test["accuracy"],
        "nll": test["nll"],
        "ece": test["ece"],
        "ece_quantile": test["ece_quantile"],
        "classwise_ece": test["classwise_ece"],
        "brier": test["brier"],
        "mean_confidence": test["mean_confidence"],
        # Validation on clean labels (an oracle under noise) and on the noisy validation labels a
        # practitioner has (equal on clean runs): selections read the second by default.
        "val_accuracy": M.accuracy(logits["val"], y["val"]),
        "val_nll": M.nll(logits["val"], y["val"]),
        "val_ece": M.evaluate(logits["val"], y["val"])["ece"],
        "val_accuracy_noisy": M.accuracy(logits["val"], y["val_noisy"]),
        "val_nll_noisy": M.nll(logits["val"], y["val_noisy"]),
        "val_ece_noisy": M.evaluate(logits["val"], y["val_noisy"])["ece"],
        "train_accuracy": M.accuracy(logits["train"], y["noisy"]),
        "train_accuracy_clean": clean_acc,
        # Of the training labels that noise flipped: the share predicted as the flipped (given) label,
        # and the share predicted as the true class; for K > 2 the rest went to a third class. A model
        # that ignores the flips entirely has memorised 0% and corrected 100%.
        "memorized_fraction": float((pred[flipped] == noisy[flipped]).mean()) if n_flipped else None,
        "flipped_corrected_fraction": float((pred[flipped] == clean[flipped]).mean()) if n_flipped else None,
        # Generalisation gap on the *clean* training labels (a descriptive field; no verdict reads it:
        # with the training set fitted it is minus the test accuracy).
        "train_test_gap": clean_acc - test["accuracy"],
    }
    return {prefix + k: v for k, v in out.items()}


#: A run whose logits on the validation split exceed this in absolute value is called diverged: the
#: loss drove them without bound (negative smoothing without a floor), and its NLL is meaningless.
DIVERGED_LOGIT = 1e3

#: A run whose last-step accuracy on the clean training labels is below chance + this share of the
#: way to 1 learned nothing (collapsed): 0.19 for 10 classes, 0.55 for 2.
COLLAPSE_MARGIN = 0.1


def failure_reason(
    curves: dict[str, list[float]], final_logits: dict[str, torch.Tensor], num_classes: int
) -> str | None:
    """Why a training cannot enter an average (diverged or collapsed), or None for a usable run.

    Diverged: a non-finite training loss or logit, or a validation logit beyond :data:`DIVERGED_LOGIT`.
    Collapsed: last-step accuracy on the *clean* training labels below chance + :data:`COLLAPSE_MARGIN`
    x (1 - chance), chance = 1/K. (Memorising flipped labels never looks like this: a model that fits
    every noisy label still fits the unflipped majority.)

    Example:
        >>> import torch
        >>> c = {"train_loss": [1.0, 0.5], "train_accuracy_clean": [0.5, 0.12]}
        >>> failure_reason(c, {"val": torch.zeros(3, 10)}, 10)
        'collapsed: accuracy on the clean training labels 0.120 at the last step (chance 0.100)'
    """
    losses = curves.get("train_loss") or []
    if any(not math.isfinite(v) for v in losses):
        return "diverged: non-finite training loss"
    for name, z in final_logits.items():
        if not bool(torch.isfinite(z).all()):
            return f"diverged: non-finite {name} logits"
    top = float(final_logits["val"].abs().max()) if final_logits["val"].numel() else 0.0
    if top > DIVERGED_LOGIT:
        return f"diverged: a validation logit of magnitude {top:.3g} (> {DIVERGED_LOGIT:g})"
    acc = curves.get("train_accuracy_clean") or []
    chance = 1.0 / num_classes
    if acc and acc[-1] < chance + COLLAPSE_MARGIN * (1 - chance):
        return f"collapsed: accuracy on the clean training labels {acc[-1]:.3f} at the last step (chance {chance:.3f})"
    return None


def _warmup_steps(share: float, total: int) -> int:
    # At least one step when a method warms up: a loss that learns from the warm-up (the estimated
    # forward correction) is prepared at its end, and round(0.5 * 1) == 0 would never prepare it.
    return min(total, max(1, round(share * total))) if share > 0 else 0


@dataclass
class _Trained:
    """One trained model: its checkpoints' logits, curves and bookkeeping."""

    checkpoints: dict[str, dict[str, torch.Tensor]]  # prefix -> split -> logits
    curves: dict[str, list[float]]
    es_step: int
    oracle_es_step: int
    total: int
    per_epoch: int
    weight_decay: float
    model: torch.nn.Module


def _train_one(
    job: Job,
    ds: Dataset,
    x: dict[str, torch.Tensor],
    y: dict[str, torch.Tensor],
    weight_decay: float,
    context: LossContext,
) -> _Trained:
    """Train one model of a job with one weight decay; keep the last and two early-stopped checkpoints."""
    cfg = job.config
    device = x["train"].device
    binary = ds.binary
    method = METHODS[job.methods[0]]
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    gen = torch.Generator().manual_seed(job.seed)  # batch order: same for every eps at one seed
    target = y["noisy"].float() if binary else y["noisy"]  # BCE wants float 0/1 targets

    model = build_model(tuple(x["train"].shape[1:]), ds.num_classes, cfg.hidden, augment=ds.augment).to(device)
    loss_fn = method.loss(job.eps, binary, context).to(device)
    # foreach: one fused update over all parameters instead of a Python loop per tensor (about 10% of a
    # small model's training time on a CPU); the same Adam.
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=weight_decay, foreach=True)

    n = len(y["noisy"])
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.total_steps(n)
    warm_steps = _warmup_steps(method.warmup, total)
    warm_fn = label_smoothing_loss(0.0, binary).to(device) if warm_steps else None
    eval_at = _curve_steps(total, cfg.curve_points)
    keys = (
        "step",
        "epoch",
        "train_loss",
        "train_accuracy",
        "train_accuracy_clean",
        "val_accuracy",
        "val_accuracy_noisy",
        "val_nll",
    )
    curves: dict[str, list[float]] = {k: [] for k in keys}
    # Early stopping on the validation labels a user has (noisy when the training labels are) and, as
    # a labelled oracle, on clean validation labels; on the first maximum of each.
    best: dict[str, tuple[float, int, dict[str, Any] | None]] = {"es_": (-1.0, 0, None), "oracle_es_": (-1.0, 0, None)}
    step, running, since = 0, torch.zeros((), device=device), 0
    while step < total:
        model.train()
        # Tensor.split is unannotated in torch.
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):  # type: ignore[no-untyped-call]
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            out = model(x["train"][idx])
            fn = warm_fn if (warm_fn is not None and step < warm_steps) else loss_fn
            loss = fn(out.squeeze(-1) if binary else out, target[idx])
            loss.backward()
            opt.step()
            running += loss.detach()  # summed on device: no host sync per step
            since += 1
            step += 1
            if warm_fn is not None and step == warm_steps:
                prepare = getattr(loss_fn, "prepare", None)  # only some losses learn from the warm-up
                if prepare is not None:
                    model.eval()
                    prepare(_logits(model, x["train"], binary), y["noisy"])
                    model.train()
            if step in eval_at:
                model.eval()
                train_logits = _logits(model, x["train"], binary)
                val_logits = _logits(model, x["val"], binary)
                accs = {"es_": M.accuracy(val_logits, y["val_noisy"]), "oracle_es_": M.accuracy(val_logits, y["val"])}
                for k, v in (
                    ("step", step),
                    ("epoch", round(step / per_epoch, 3)),
                    ("train_loss", float(running) / since),
                    ("train_accuracy", M.accuracy(train_logits, y["noisy"])),
                    ("train_accuracy_clean", M.accuracy(train_logits, y["clean"])),
                    ("val_accuracy", accs["oracle_es_"]),
                    ("val_accuracy_noisy", accs["es_"]),
                    ("val_nll", M.nll(val_logits, y["val"])),
                ):
                    curves[k].append(v)
                running, since = torch.zeros((), device=device), 0
                for prefix, acc in accs.items():
                    if acc > best[prefix][0]:
                        best[prefix] = (acc, step, copy.deepcopy(model.state_dict()))
                model.train()
            if step >= total:
                break
        epoch_end = getattr(loss_fn, "epoch_end", None)  # only some losses keep per-epoch state
        if epoch_end is not None:
            epoch_end(model)

    model.eval()
    checkpoints = {"": {k: _logits(model, x[k], binary) for k in ("train", "val", "test")}}
    last_state = copy.deepcopy(model.state_dict())
    for prefix, (_, _, state) in best.items():
        assert state is not None  # the last step is always evaluated, and any accuracy beats -1
        model.load_state_dict(state)
        checkpoints[prefix] = {k: _logits(model, x[k], binary) for k in ("train", "val", "test")}
    model.load_state_dict(last_state)
    return _Trained(checkpoints, curves, best["es_"][1], best["oracle_es_"][1], total, per_epoch, weight_decay, model)


def run_job(job: Job, ds: Dataset) -> JobResult:
    """Train one model (one per weight decay of the method's grid, keeping the best on validation) and
    evaluate it with every method of the job.

    Args:
        job: the :class:`Job`.
        ds: the loaded dataset named by ``job.dataset``.

    Returns:
        A :class:`JobResult` with one record per method (see ``docs/study.md`` for the fields).
    """
    start = time.perf_counter()
    cfg = job.config
    device = torch.device(cfg.device)
    splits = split_dataset(
        ds, job.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, max_train=cfg.max_train
    )
    if job.train_fraction < 1:
        # A stratified subsample of this seed's training split (validation and test unchanged).
        keep = max(2 * ds.num_classes, round(job.train_fraction * splits.info["n_train"]))
        splits = split_dataset(
            ds, job.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, max_train=keep
        )
    clean = splits.y_train
    rate = noise_rate(job.noise_kind, job.noise_level, ds.num_classes) if job.noise_level > 0 else 0.0
    if rate > 0:
        make_noise = NOISE_KINDS[job.noise_kind]
        noisy = make_noise(clean, rate, ds.num_classes, seed=job.seed)
        val_noisy = make_noise(splits.y_val, rate, ds.num_classes, seed=job.seed + _VAL_NOISE_SEED)
    else:
        noisy, val_noisy = clean.copy(), splits.y_val.copy()
    flipped = noisy != clean
    binary = ds.binary

    def to(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    x = {"train": to(splits.x_train), "val": to(splits.x_val), "test": to(splits.x_test)}
    y = {
        "noisy": to(noisy),
        "clean": to(clean),
        "val": to(splits.y_val),
        "val_noisy": to(val_noisy),
        "test": to(splits.y_test),
    }
    method = METHODS[job.methods[0]]
    context = LossContext(ds.num_classes, job.noise_kind, rate)
    candidates = [_train_one(job, ds, x, y, wd, context) for wd in (method.weight_decays or (cfg.weight_decay,))]
    # Weight decay chosen on the early-stopped checkpoint's accuracy on the validation labels a user has.
    trained = max(candidates, key=lambda t: M.accuracy(t.checkpoints["es_"]["val"], y["val_noisy"]))
    final = trained.checkpoints[""]
    failure = failure_reason(trained.curves, final, ds.num_classes)
    model = trained.model
    projection = None
    if (
        job.noise_level == 0
        and job.seed == 0
        and job.train_fraction == 1
        and not binary
        and ds.num_classes >= 3
        and isinstance(model, torch.nn.Sequential)
    ):
        projection = penultimate_projection(model, x["val"], y["val"])

    n = len(clean)
    n_flipped = int(flipped.sum())
    curves, total, per_epoch = trained.curves, trained.total, trained.per_epoch
    accs = curves["train_accuracy"]
    fifth = max(0, round(0.8 * len(accs)) - 1)
    gain = accs[-1] - accs[fifth]
    shared = {
        "dataset": job.dataset,
        "parent_dataset": ds.parent,
        "label_smoothing": job.eps,
        "noise_kind": job.noise_kind,
        "noise_level": job.noise_level,
        "noise_rate": rate,
        "train_fraction": job.train_fraction,
        "seed": job.seed,
        "num_classes": ds.num_classes,
        "binary": binary,
        "n_flipped": n_flipped,
        "realized_noise_rate": n_flipped / n,
        "steps": total,
        "epochs": round(total / per_epoch, 3),
        "es_step": trained.es_step,
        "es_epoch": round(trained.es_step / per_epoch, 3),
        "oracle_es_step": trained.oracle_es_step,
        # The chosen step at the first evaluation point: the grid may have cut the optimum off.
        "es_at_first_point": trained.es_step == curves["step"][0],
        "weight_decay": trained.weight_decay,
        "weight_decays_tried": [t.weight_decay for t in candidates],
        "warmup_steps": _warmup_steps(method.warmup, total),
        # Convergence check of the budget: how much the accuracy on the labels trained on still rose
        # over the last fifth of the steps (the loss itself keeps falling towards its floor).
        "train_loss_final": curves["train_loss"][-1],
        "train_accuracy_gain_last_fifth": gain,
        "converged": bool(gain <= CONVERGENCE_GAIN),
        "failure": failure,
        "curves": curves,
        "splits": splits.info,
        "train_seconds": time.perf_counter() - start,
        "config": {
            **asdict(cfg),
            "dataset": job.dataset,
            "loss": job.loss_id,
            "label_smoothing": job.eps,
            "noise_kind": job.noise_kind,
            "noise_level": job.noise_level,
            "noise_rate": rate,
            "train_fraction": job.train_fraction,
            "seed": job.seed,
            "model": "cnn" if ds.is_image else "mlp",
            "optimizer": "adam",
            "early_stopping": "best validation accuracy on the validation labels a user has (noisy under noise)",
            "fingerprint": cfg.fingerprint(),
        },
    }

    labels = {"test": y["test"], "val": y["val"], "val_noisy": y["val_noisy"], "clean": y["clean"], "noisy": y["noisy"]}
    records: list[S.Record] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in job.methods:
        meth = METHODS[name]
        record: S.Record = {"key": job.key(name), "method": name, **shared}
        for prefix, logits in trained.checkpoints.items():
            if meth.posthoc is not None:
                fit_labels = y["val_noisy"] if meth.posthoc_labels == "noisy" else y["val"]
                transform, extra = meth.posthoc(logits["val"], fit_labels)
                logits = {**logits, "val": transform(logits["val"]), "test": transform(logits["test"])}
                record.update({prefix + k: v for k, v in extra.items()})
            record.update(_checkpoint_fields(prefix, logits, labels, flipped, noisy, clean))
            if prefix == "":
                arrays[record["key"]] = {
                    "probs": M.probabilities(logits["test"]).cpu().numpy(),
                    "labels": splits.y_test,
                }
        if projection is not None and meth.posthoc is None:
            arrays[record["key"]].update(proj=projection[0], proj_labels=projection[1])
            record["has_projection"] = True
        records.append(record)
    return JobResult(records, arrays)
