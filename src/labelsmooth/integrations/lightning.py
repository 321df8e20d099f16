"""A PyTorch Lightning callback that logs the evaluation engine's metrics on the validation set.

``Trainer(callbacks=[CalibrationCallback()])`` logs, at the end of every validation epoch, what
:func:`labelsmooth.evaluation.evaluate` measures on the whole validation set: accuracy, NLL, Brier, ECE
(equal-width and equal-mass), class-wise ECE, MCE and AURC, as ``val/accuracy``, ``val/nll``, ... through
``LightningModule.log_dict`` (so every logger receives them, and ``ModelCheckpoint(monitor="val/ece")``
can use them). The reliability diagram and the risk-coverage curve are logged as images to the loggers
that take images: TensorBoard (``add_image``) and Weights & Biases (``log_image``); other loggers (CSV,
MLflow, ...) get the numbers only.

Importing this module imports ``lightning``; ``import labelsmooth`` does not.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from labelsmooth.evaluation import EvaluationResult
from labelsmooth.evaluation.engine import check_int
from labelsmooth.integrations.callbacks import flatten_outputs, images, scalars, score_outputs

__all__ = ["CalibrationCallback"]


class CalibrationCallback(Callback):
    """Logs calibration and selective-classification metrics of the validation set at every validation epoch.

    The callback needs each validation batch's logits. Return them from ``validation_step``, as a tensor
    or as a mapping with ``"logits"`` (and optionally ``"labels"``; any other keys, such as a loss, are
    ignored)::

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y))
            return logits                     # or {"logits": logits, "labels": y}

    Labels are ``outputs["labels"]`` when given, else taken from the batch: ``batch["labels"]`` for a
    mapping, the last element for a tuple or list (``(x, y)``). Logits are ``(B, K)`` with labels
    ``(B,)``, ``(B, T, K)`` with labels ``(B, T)`` (every labelled position is one example; positions
    labelled ``ignore_index`` are dropped), or binary scores of the labels' shape. Probabilities
    instead of logits are detected (``kind="auto"``).

    At the end of the epoch the batches are concatenated (gathered from every process under
    distributed training) and scored once by :func:`labelsmooth.evaluation.evaluate`; ``trainer
    .callback_metrics`` then holds ``prefix + name`` for each of
    :data:`labelsmooth.evaluation.METRICS`, with ``_low``/``_high`` interval ends when
    ``n_bootstrap`` is positive. The sanity-check epoch before training is not scored. The last result is kept as
    :attr:`result`. Only the first validation dataloader is supported.

    Images: with ``log_figure=True`` the reliability diagram and the risk-coverage curve go, as
    ``prefix + "reliability"`` and ``prefix + "risk_coverage"``, to every logger that takes images:
    one whose ``experiment`` has ``add_image`` (``TensorBoardLogger``) or that has ``log_image``
    (``WandbLogger``). Other loggers are skipped silently; so are the images when matplotlib is
    not installed (with one warning).

    Args:
        n_bins: bins of the binned calibration errors.
        n_bootstrap: bootstrap resamples for the intervals (0, the default: none, and the cheapest).
        prefix: prepended to every logged name.
        log_figure: log the reliability diagram and risk-coverage curve where the logger takes images.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (detected), as in :func:`~labelsmooth.evaluation.evaluate`.
        ignore_index: the label value of padding.
        seed: seed of the bootstrap resamples.

    Attributes:
        result: the :class:`~labelsmooth.evaluation.EvaluationResult` of the last validation epoch, or None.

    Example:
        >>> from labelsmooth.integrations.lightning import CalibrationCallback
        >>> cb = CalibrationCallback(n_bins=10, prefix="valid/")
        >>> cb.prefix, cb.result is None
        ('valid/', True)
    """

    def __init__(
        self,
        n_bins: int = 15,
        n_bootstrap: int = 0,
        *,
        prefix: str = "val/",
        log_figure: bool = True,
        kind: str = "auto",
        ignore_index: int = -100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_bins = check_int(n_bins, "n_bins", 1)
        self.n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 0)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        if not isinstance(log_figure, bool):
            raise TypeError(f"log_figure must be True or False, got {log_figure!r}")
        if kind not in ("auto", "logits", "probs"):
            raise ValueError(f"kind must be 'logits', 'probs' or 'auto', got {kind!r}")
        self.prefix = prefix
        self.log_figure = log_figure
        self.kind = kind
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.seed = check_int(seed, "seed", 0)
        self.result: EvaluationResult | None = None
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._warned = False

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._scores, self._labels = [], []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:
            raise ValueError(
                f"CalibrationCallback scores one validation dataloader; got a batch of dataloader {dataloader_idx}"
            )
        logits, labels = _logits_and_labels(outputs, batch)
        z, y = flatten_outputs(logits, labels, ignore_index=self.ignore_index)
        self._scores.append(z)
        self._labels.append(y)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores, labels = self._scores, self._labels
        self._scores, self._labels = [], []
        if trainer.sanity_checking or not scores:
            return
        z, y = torch.cat(scores), torch.cat(labels)
        if trainer.world_size > 1:
            z, y = _gather(pl_module, z), _gather(pl_module, y)
        self.result = score_outputs(
            z, y, n_bins=self.n_bins, n_bootstrap=self.n_bootstrap, kind=self.kind, seed=self.seed
        )
        # Every process holds the same gathered numbers, so no further reduction is needed.
        pl_module.log_dict(scalars(self.result, self.prefix), on_step=False, on_epoch=True, sync_dist=False)
        if self.log_figure and trainer.is_global_zero:
            self._log_images(trainer, self.result)

    def _log_images(self, trainer: Trainer, result: EvaluationResult) -> None:
        targets = [lg for lg in trainer.loggers if hasattr(lg, "log_image") or _add_image(lg) is not None]
        if not targets:
            return
        if importlib.util.find_spec("matplotlib") is None:
            if not self._warned:
                warnings.warn("CalibrationCallback: matplotlib is not installed; no figure is logged", stacklevel=2)
                self._warned = True
            return
        step = trainer.global_step
        for key, img in images(result).items():
            tag = self.prefix + key
            for lg in targets:
                add = _add_image(lg)
                if add is not None:
                    add(tag, img, step, dataformats="HWC")
                else:
                    lg.log_image(key=tag, images=[img], step=step)  # type: ignore[attr-defined]


def _add_image(logger: Any) -> Any:
    if hasattr(logger, "log_image"):
        return None
    return getattr(getattr(logger, "experiment", None), "add_image", None)


def _logits_and_labels(outputs: Any, batch: Any) -> tuple[Any, Any]:
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(
                f"validation_step returned a mapping without 'logits' (keys: {sorted(map(str, outputs))}); "
                "CalibrationCallback needs the logits"
            )
        logits, labels = outputs["logits"], outputs.get("labels")
    elif isinstance(outputs, Tensor) and outputs.dim() > 0:
        logits, labels = outputs, None
    else:
        got = "a 0-d tensor (a loss?)" if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(
            f"validation_step returned {got}; CalibrationCallback needs it to return the logits, "
            "or a mapping {'logits': ..., 'labels': ...}"
        )
    if labels is None:
        if isinstance(batch, Mapping) and "labels" in batch:
            labels = batch["labels"]
        elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
            labels = batch[-1]
        else:
            raise ValueError(
                "no labels: return {'logits': ..., 'labels': ...} from validation_step, or use batches "
                "that are (inputs, labels) tuples or mappings with 'labels'"
            )
    return logits, labels


def _gather(pl_module: LightningModule, x: Tensor) -> Tensor:
    """All processes' rows, in rank order (the row counts may differ: padded to the largest, then trimmed)."""
    device = pl_module.device
    n = torch.tensor([x.shape[0]], device=device)
    sizes = torch.as_tensor(pl_module.all_gather(n)).reshape(-1).tolist()
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    every = torch.as_tensor(pl_module.all_gather(padded.to(device))).cpu()
    return torch.cat([every[r, : int(k)] for r, k in enumerate(sizes)])
