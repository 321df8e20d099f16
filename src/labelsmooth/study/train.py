"""One training of the study and the records it produces.

A :class:`Job` is one model trained on one dataset with one loss, one label-smoothing value, one noise
setting and one seed. Every method that shares that training (``ce`` and ``ts``) turns it into one
record. The seed fixes the split, the label noise, the initialisation and the minibatch order, so the
models compared at one seed differ only in their loss: comparisons are paired.

Early stopping is deliberately not used: the final epoch's model is evaluated, because the study
measures overfitting instead of hiding it. The per-epoch curves show what early stopping would have
picked.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from labelsmooth import noise
from labelsmooth.study import metrics as M
from labelsmooth.study.data import Dataset, split_dataset
from labelsmooth.study.methods import METHODS
from labelsmooth.study.models import build_model

__all__ = ["NOISE_KINDS", "Job", "JobResult", "TrainConfig", "run_job"]

#: ``--noise-kind`` choices and the labelsmooth.noise function each uses.
NOISE_KINDS = {"symmetric": noise.symmetric, "pairflip": noise.pairflip}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters shared by every job of a study.

    Attributes:
        epochs: full passes over the training set (no early stopping).
        batch_size: minibatch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (0: smoothing is the only regulariser being measured).
        hidden: MLP hidden widths.
        val_fraction: validation share (temperature scaling is fitted there).
        test_fraction: test share when the dataset has no test split of its own.
        max_train: optional cap on training samples (stratified subsample).
        curve_points: at most this many epochs are evaluated for the learning curves.
        device: ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: tuple[int, ...] = (256, 256)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_train: int | None = None
    curve_points: int = 20
    device: str = "cpu"

    def fingerprint(self) -> str:
        """Short hash of everything that changes the results (not the device, not the curve density).

        Two invocations with the same fingerprint produce the same runs, so a finished run is
        skipped on resume only when its fingerprint matches.
        """
        relevant = {k: v for k, v in asdict(self).items() if k not in ("device", "curve_points")}
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Job:
    """One training: dataset x loss x eps x noise x seed, evaluated by one or more methods.

    Attributes:
        dataset: dataset name (see :func:`labelsmooth.study.data.load_dataset`).
        loss_id: the shared loss of ``methods`` (see :class:`~labelsmooth.study.methods.Method`).
        eps: label smoothing.
        noise_kind: ``"symmetric"``, ``"pairflip"``, or ``"none"`` when ``noise_rate == 0``.
        noise_rate: fraction of training labels flipped.
        seed: seed of split, noise, initialisation and batch order.
        methods: names of the methods evaluated on this training, e.g. ``("ce", "ts")``.
        config: the :class:`TrainConfig`.
    """

    dataset: str
    loss_id: str
    eps: float
    noise_kind: str
    noise_rate: float
    seed: int
    methods: tuple[str, ...]
    config: TrainConfig = field(default_factory=TrainConfig)

    def key(self, method: str) -> str:
        """Unique id of the record ``method`` makes from this job (used to skip finished runs)."""
        return (f"{self.dataset}|{method}|eps={self.eps:g}|noise={self.noise_kind}:{self.noise_rate:g}"
                f"|seed={self.seed}|cfg={self.config.fingerprint()}")

    def keys(self) -> list[str]:
        """Keys of all records of this job, in ``methods`` order."""
        return [self.key(m) for m in self.methods]


@dataclass
class JobResult:
    """What a worker sends back: the records and, per record key, the test probabilities and labels."""

    records: list[dict]
    arrays: dict[str, dict[str, np.ndarray]]


def _curve_epochs(epochs: int, points: int) -> set[int]:
    # Evenly spaced 1-based epochs, always including the first and the last.
    return {int(round(e)) for e in np.linspace(1, epochs, min(points, epochs))}


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, binary: bool, batch: int = 4096) -> torch.Tensor:
    out = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return out.squeeze(-1) if binary else out


def run_job(job: Job, ds: Dataset) -> JobResult:
    """Train one model and evaluate it with every method of the job.

    Args:
        job: the :class:`Job`.
        ds: the loaded dataset named by ``job.dataset``.

    Returns:
        A :class:`JobResult` with one record per method (see ``docs/study.md`` for the fields).
    """
    start = time.perf_counter()
    cfg = job.config
    device = torch.device(cfg.device)
    splits = split_dataset(ds, job.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                           max_train=cfg.max_train)
    clean = splits.y_train
    if job.noise_rate > 0:
        noisy = NOISE_KINDS[job.noise_kind](clean, job.noise_rate, ds.num_classes, seed=job.seed)
    else:
        noisy = clean.copy()
    flipped = noisy != clean

    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    gen = torch.Generator().manual_seed(job.seed)  # batch order: same for every eps at one seed
    binary = ds.binary
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    x_train, x_val, x_test = to(splits.x_train), to(splits.x_val), to(splits.x_test)
    y_noisy, y_clean = to(noisy), to(clean)
    y_val, y_test = to(splits.y_val), to(splits.y_test)
    target = y_noisy.float() if binary else y_noisy  # BCE wants float 0/1 targets

    model = build_model(splits.x_train.shape[1:], ds.num_classes, cfg.hidden, augment=ds.augment).to(device)
    loss_fn = METHODS[job.methods[0]].loss(job.eps, binary).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    curve_at = _curve_epochs(cfg.epochs, cfg.curve_points)
    curves: dict[str, list[float]] = {k: [] for k in ("epoch", "train_loss", "train_accuracy", "test_accuracy",
                                                      "test_nll")}
    n = len(clean)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            out = model(x_train[idx])
            loss = loss_fn(out.squeeze(-1) if binary else out, target[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)  # summed on device: no host sync per step
        if hasattr(loss_fn, "epoch_end"):
            loss_fn.epoch_end(model)
        if epoch in curve_at:
            model.eval()
            test_logits = _logits(model, x_test, binary)
            curves["epoch"].append(epoch)
            curves["train_loss"].append(float(total) / n)
            curves["train_accuracy"].append(M.accuracy(_logits(model, x_train, binary), y_noisy))
            curves["test_accuracy"].append(M.accuracy(test_logits, y_test))
            curves["test_nll"].append(M.nll(test_logits, y_test))

    model.eval()
    train_logits = _logits(model, x_train, binary)
    val_logits = _logits(model, x_val, binary)
    test_logits = _logits(model, x_test, binary)
    pred = M.predictions(train_logits).cpu().numpy()
    n_flipped = int(flipped.sum())
    train_acc = M.accuracy(train_logits, y_noisy)
    shared = {
        "dataset": job.dataset,
        "label_smoothing": job.eps,
        "noise_kind": job.noise_kind,
        "noise_rate": job.noise_rate,
        "seed": job.seed,
        "num_classes": ds.num_classes,
        "binary": binary,
        "train_accuracy": train_acc,
        "train_accuracy_clean": M.accuracy(train_logits, y_clean),
        "n_flipped": n_flipped,
        "realized_noise_rate": n_flipped / n,
        # Of the training labels that noise flipped, the share the model predicts as the *wrong*
        # (noisy) label: 1.0 means every flip was memorised, ~1/(K-1) a model that ignores them.
        "memorized_fraction": float((pred[flipped] == noisy[flipped]).mean()) if n_flipped else None,
        "flipped_corrected_fraction": float((pred[flipped] == clean[flipped]).mean()) if n_flipped else None,
        "val_accuracy": M.accuracy(val_logits, y_val),
        "best_test_accuracy": max(curves["test_accuracy"]),
        "best_test_accuracy_epoch": curves["epoch"][int(np.argmax(curves["test_accuracy"]))],
        "min_test_nll": min(curves["test_nll"]),
        "min_test_nll_epoch": curves["epoch"][int(np.argmin(curves["test_nll"]))],
        "curves": curves,
        "splits": splits.info,
        "train_seconds": time.perf_counter() - start,
        "config": {**asdict(cfg), "dataset": job.dataset, "loss": job.loss_id, "label_smoothing": job.eps,
                   "noise_kind": job.noise_kind, "noise_rate": job.noise_rate, "seed": job.seed,
                   "model": "cnn" if ds.is_image else "mlp", "optimizer": "adam", "fingerprint": cfg.fingerprint()},
    }

    records, arrays = [], {}
    for name in job.methods:
        method = METHODS[name]
        logits, extra = test_logits, {}
        if method.posthoc is not None:
            logits, extra = method.posthoc(val_logits, y_val, test_logits)
        test = M.evaluate(logits, y_test)
        key = job.key(name)
        record = {
            "key": key,
            "method": name,
            **shared,
            "test_accuracy": test["accuracy"],
            "nll": test["nll"],
            "ece": test["ece"],
            "classwise_ece": test["classwise_ece"],
            "brier": test["brier"],
            "mean_confidence": test["mean_confidence"],
            # Generalisation gap: accuracy on the labels the model was fitted to minus test accuracy.
            "train_test_gap": train_acc - test["accuracy"],
            **extra,
        }
        records.append(record)
        arrays[key] = {"probs": M.probabilities(logits).cpu().numpy(), "labels": splits.y_test}
    return JobResult(records, arrays)
