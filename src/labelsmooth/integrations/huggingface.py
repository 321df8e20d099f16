"""Label-smoothed losses for Hugging Face ``transformers.Trainer``, and calibration metrics at each evaluation.

``Trainer(..., compute_loss_func=label_smoothed_loss(0.1, task="causal_lm"))`` replaces the Trainer's
``label_smoothing_factor``: the loss runs on labelsmooth's fused backends (no log-softmax over the
vocabulary is materialised, and by default the gradient is written into the logits' own storage), and
it is normalised by the ``num_items_in_batch`` the Trainer passes, so that gradient accumulation over
micro-batches gives the gradient of the full batch.

``Trainer(..., compute_metrics=calibration_metrics)`` reports the evaluation engine's metrics
(:func:`labelsmooth.evaluation.evaluate`: accuracy, NLL, Brier, ECE, class-wise ECE, MCE, AURC) at every
evaluation; :class:`CalibrationCallback` does the same and also logs the reliability diagram and the
risk-coverage curve as images to TensorBoard or Weights & Biases.

This module does not import ``transformers``: the Trainer only ever hands the loss a model output
(a mapping with ``"logits"``, or a tuple whose first element is the logits) and a labels tensor, hands
``compute_metrics`` an ``EvalPrediction`` (predictions and label ids), and calls a callback's ``on_*``
methods by name.
"""

from __future__ import annotations

import inspect
import numbers
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from labelsmooth import _validate as V
from labelsmooth.evaluation import EvaluationResult
from labelsmooth.evaluation.engine import check_int
from labelsmooth.functional import check_backend, cross_entropy
from labelsmooth.integrations.callbacks import images, scalars, score_outputs

#: The model heads the loss understands: next-token prediction (labels shifted by one inside the loss),
#: one label per sequence, one label per token.
TASKS = ("causal_lm", "sequence_classification", "token_classification")

# cross_entropy's keyword-only extras; the positional ones are set by the loss itself or by name below.
_EXTRAS = frozenset(
    name for name, p in inspect.signature(cross_entropy).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
) | {"weight"}
# The loss chooses the reduction itself (sum over tokens / num_items_in_batch, or the mean).
_OWNED = frozenset({"reduction", "size_average", "reduce"})

__all__ = ["TASKS", "CalibrationCallback", "LabelSmoothedLoss", "calibration_metrics", "label_smoothed_loss"]


class LabelSmoothedLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer``; build it with :func:`label_smoothed_loss`.

    Called as the Trainer calls it, ``loss_fn(outputs, labels, num_items_in_batch=None)``. The
    attributes ``label_smoothing``, ``task``, ``ignore_index`` and ``kwargs`` (the extra
    :func:`labelsmooth.cross_entropy` arguments) are read-only by convention.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        task: str = "causal_lm",
        *,
        ignore_index: int = -100,
        inplace: bool = True,
        **cross_entropy_kwargs: Any,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        owned = sorted(_OWNED.intersection(cross_entropy_kwargs))
        if owned:
            raise ValueError(
                f"{owned[0]} cannot be set: the loss sums over the labelled tokens and divides by "
                "the Trainer's num_items_in_batch (or takes the mean when it is not given)"
            )
        unknown = sorted(set(cross_entropy_kwargs) - _EXTRAS)
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; labelsmooth.cross_entropy accepts {sorted(_EXTRAS)}"
            )
        allow_negative = V.check_bool(cross_entropy_kwargs.get("allow_negative", False), "allow_negative")
        self.label_smoothing = V.check_label_smoothing(label_smoothing, allow_negative=allow_negative)
        self.task = task
        self.ignore_index = V.check_index(ignore_index, "ignore_index")
        self.kwargs: dict[str, Any] = {"inplace": V.check_bool(inplace, "inplace"), **cross_entropy_kwargs}
        check_backend(self.kwargs.get("backend", "auto"))

    def __repr__(self) -> str:
        extras = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return (
            f"LabelSmoothedLoss(label_smoothing={self.label_smoothing!r}, task={self.task!r}, "
            f"ignore_index={self.ignore_index!r}{extras})"
        )

    def __call__(self, outputs: Any, labels: Tensor | None, num_items_in_batch: Tensor | float | None = None) -> Tensor:
        """The loss of one (micro-)batch.

        Args:
            outputs: the model's output: a mapping with ``"logits"`` (a ``ModelOutput``), a tuple or list
                whose first element is the logits, or the logits tensor itself. Logits are (B, T, V) for
                ``causal_lm``, (B, C) for ``sequence_classification`` and (B, T, C) for
                ``token_classification``.
            labels: integer class indices of the logits' shape without its last dimension; positions equal
                to ``ignore_index`` (-100) are padding. For ``causal_lm`` they are the unshifted input ids:
                the logits at position t are scored against the label at t + 1.
            num_items_in_batch: the number of labelled items in the whole accumulated batch (over all
                micro-batches and devices), as the Trainer passes it. When given, the loss is the sum over
                this micro-batch's items divided by it; when None, the mean over its labelled items.

        Returns:
            The scalar loss, in the logits' dtype.
        """
        logits = _logits_of(outputs)
        if labels is None:
            raise ValueError(
                "labels is None: the batch has no 'labels' (the Trainer passes labels=None when "
                "the dataset yields none); a label-smoothed loss needs them"
            )
        V.check_tensor(labels, "labels")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must be integer class indices, got dtype {labels.dtype} (regression and "
                "multi-label classification are not label-smoothed cross-entropy problems)"
            )
        want_dim = 2 if self.task == "sequence_classification" else 3
        if logits.dim() != want_dim or tuple(labels.shape) != tuple(logits.shape[:-1]):
            shapes = "(B, C) and (B,)" if want_dim == 2 else "(B, T, C) and (B, T)"
            raise ValueError(
                f"task={self.task!r} needs logits and labels of shapes {shapes}; got logits "
                f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
            )
        # Under model parallelism the logits may sit on another device than the batch.
        labels = labels.to(logits.device)
        if self.task == "causal_lm":
            # Shift the labels, not the logits: logits[:, :-1] would force a copy of all B*T*V logits
            # (and an in-place gradient would land in that copy); the last position gets ignore_index.
            pad = torch.full_like(labels[..., :1], self.ignore_index)
            labels = torch.cat([labels[..., 1:], pad], dim=-1)
        rows = logits.reshape(-1, logits.shape[-1])
        targets = labels.reshape(-1)
        if num_items_in_batch is None:
            mean: Tensor = cross_entropy(
                rows,
                targets,
                ignore_index=self.ignore_index,
                reduction="mean",
                label_smoothing=self.label_smoothing,
                **self.kwargs,
            )
            return mean
        if isinstance(num_items_in_batch, Tensor):
            # A tensor on the device stays there: dividing by it needs no host synchronisation.
            count: Tensor | float = num_items_in_batch.to(rows.device)
        elif isinstance(num_items_in_batch, numbers.Real) and not isinstance(num_items_in_batch, bool):
            count = float(num_items_in_batch)
        else:
            raise TypeError(
                f"num_items_in_batch must be None, a number or a tensor, got {type(num_items_in_batch).__name__}"
            )
        total: Tensor = cross_entropy(
            rows,
            targets,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
            **self.kwargs,
        )
        return total / count


def _logits_of(outputs: Any) -> Tensor:
    """The logits in a model output, found as ``transformers``' own ``LabelSmoother`` finds them."""
    if isinstance(outputs, Tensor):
        logits = outputs
    elif isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(f"outputs has no 'logits' (keys: {sorted(outputs)})")
        logits = outputs["logits"]
    elif isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    else:
        raise TypeError(
            f"outputs must be a model output with 'logits', a tuple whose first element is the "
            f"logits, or a tensor; got {type(outputs).__name__}"
        )
    return V.check_tensor(logits, "logits")


def label_smoothed_loss(
    label_smoothing: float = 0.1,
    task: str = "causal_lm",
    *,
    ignore_index: int = -100,
    inplace: bool = True,
    **cross_entropy_kwargs: Any,
) -> LabelSmoothedLoss:
    """A label-smoothed ``compute_loss_func`` for ``transformers.Trainer``.

    Pass the result as ``Trainer(..., compute_loss_func=label_smoothed_loss(0.1))`` and leave the
    Trainer's ``label_smoothing_factor`` at 0. Each micro-batch's loss is
    ``sum_i l_i / num_items_in_batch``, where ``l_i`` is :func:`labelsmooth.cross_entropy`'s row loss
    ``(1-eps) * (-log p_y) + (eps/C) * sum_c (-log p_c)`` over the labelled items i, and
    ``num_items_in_batch`` is the Trainer's count of labelled items in the whole accumulated batch:
    the micro-batch losses then add up to the full batch's mean, so accumulating 4 micro-batches of
    2 sequences gives the same gradient as one batch of 8, however unevenly they are padded. Called
    without ``num_items_in_batch``, it is the mean over the micro-batch's labelled items.

    Tasks: ``"causal_lm"`` (logits (B, T, V); the label at t+1 is the target of position t, as in
    ``*ForCausalLM`` models), ``"sequence_classification"`` (logits (B, C), labels (B,)) and
    ``"token_classification"`` (logits (B, T, C), labels (B, T), no shift). Labels equal to
    ``ignore_index`` are padding.

    ``inplace=True`` (the default) lets a fused backend write the gradient into the logits' storage
    while computing the loss, saving a B x T x V buffer. That is safe in ``Trainer``: a training step
    discards the model output after the loss, and evaluation runs under ``torch.no_grad()``, where no
    gradient is computed and the logits handed to ``compute_metrics`` are left intact. Pass
    ``inplace=False`` if your own code reads ``outputs.logits`` after a loss that requires grad. If
    something in the model saved the logits for its own backward (a logit soft-cap computed after
    the head, for instance), autograd raises an error at backward instead of using overwritten values.

    Args:
        label_smoothing: eps in [0, 1] (any eps <= 1 with ``allow_negative=True``).
        task: ``"causal_lm"``, ``"sequence_classification"`` or ``"token_classification"``.
        ignore_index: the label value of padding.
        inplace: allow the fused backends to reuse the logits' storage for the gradient.
        **cross_entropy_kwargs: passed to :func:`labelsmooth.cross_entropy`: ``weight``, ``backend``,
            ``z_loss``, ``softcap``, ``smoothing_prior``, ``allow_negative``. With ``weight``, the sum
            of weighted row losses is divided by the item count, not by the sum of weights.

    Returns:
        A callable ``loss_fn(outputs, labels, num_items_in_batch=None) -> Tensor``.

    Raises:
        ValueError: an unknown ``task``, an eps out of range, or ``reduction`` (the loss sets it).
        TypeError: an argument :func:`labelsmooth.cross_entropy` does not take.

    Example:
        >>> import torch
        >>> from labelsmooth.integrations.huggingface import label_smoothed_loss
        >>> loss_fn = label_smoothed_loss(0.1, task="causal_lm")
        >>> logits = torch.randn(2, 5, 11)                          # (batch, time, vocabulary)
        >>> labels = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, -100, -100]])
        >>> n = 4 + 2                                               # labelled targets after the shift
        >>> mean = torch.nn.functional.cross_entropy(
        ...     logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), label_smoothing=0.1)
        >>> torch.allclose(loss_fn({"logits": logits}, labels, num_items_in_batch=n), mean)
        True
    """
    return LabelSmoothedLoss(label_smoothing, task, ignore_index=ignore_index, inplace=inplace, **cross_entropy_kwargs)


# ----------------------------------------------------------------------------- calibration at evaluation


def _predictions(eval_pred: Any) -> tuple[Any, Any]:
    """``(logits, label_ids)`` of an ``EvalPrediction`` or a ``(predictions, label_ids)`` pair."""
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        preds, labels = eval_pred.predictions, eval_pred.label_ids
    elif isinstance(eval_pred, (tuple, list)) and len(eval_pred) >= 2:
        preds, labels = eval_pred[0], eval_pred[1]
    else:
        raise TypeError(
            f"eval_pred must be an EvalPrediction or a (predictions, label_ids) pair, got {type(eval_pred).__name__}"
        )
    # A model with several outputs gives a tuple of arrays; the logits come first (as for the loss).
    if isinstance(preds, (tuple, list)):
        if not preds:
            raise ValueError("eval_pred.predictions is an empty tuple: no logits to score")
        preds = preds[0]
    if labels is None:
        raise ValueError("eval_pred.label_ids is None: the evaluation dataset has no 'labels' to score against")
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    return preds, labels


def _check_options(task: str, n_bins: int, n_bootstrap: int, kind: str, ignore_index: int, seed: int) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    check_int(n_bins, "n_bins", 1)
    check_int(n_bootstrap, "n_bootstrap", 0)
    check_int(seed, "seed", 0)
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind must be 'logits', 'probs' or 'auto', got {kind!r}")
    V.check_index(ignore_index, "ignore_index")


def calibration_metrics(
    eval_pred: Any,
    *,
    task: str = "sequence_classification",
    n_bins: int = 15,
    n_bootstrap: int = 0,
    kind: str = "auto",
    ignore_index: int = -100,
    seed: int = 0,
) -> dict[str, float]:
    """The evaluation engine's metrics of an ``EvalPrediction``: a ``compute_metrics`` for ``transformers.Trainer``.

    ``Trainer(..., compute_metrics=calibration_metrics)`` reports ``eval_accuracy``, ``eval_nll``,
    ``eval_brier``, ``eval_ece``, ``eval_ece_quantile``, ``eval_classwise_ece``, ``eval_mce`` and
    ``eval_aurc`` at every evaluation (the Trainer adds the ``eval_`` prefix): the numbers
    :func:`labelsmooth.evaluation.evaluate` gives on the same predictions. Use
    ``functools.partial(calibration_metrics, task="causal_lm")`` for other tasks or settings; wrap it to
    add metrics of your own (``{**calibration_metrics(p), "f1": ...}``).

    Each labelled position is one example: ``(N, K)`` logits with ``(N,)`` labels for
    ``"sequence_classification"``, ``(N, T, K)`` with ``(N, T)`` for ``"token_classification"``, and
    for ``"causal_lm"`` the logits at position t against the label at t + 1. Labels equal to
    ``ignore_index`` (and the Trainer's -100 padding between batches of different lengths) are
    dropped. The Trainer keeps every evaluation logit in memory: for a language model's vocabulary,
    evaluate on a modest set.

    Args:
        eval_pred: an ``EvalPrediction`` (or a ``(predictions, label_ids)`` pair); when ``predictions``
            is a tuple, its first element is the logits.
        task: ``"sequence_classification"``, ``"token_classification"`` or ``"causal_lm"``.
        n_bins: bins of the binned calibration errors.
        n_bootstrap: bootstrap resamples; with more than 0, ``<name>_low`` and ``<name>_high`` are added.
        kind: ``"logits"``, ``"probs"`` or ``"auto"`` (detected).
        ignore_index: the label value of padding.
        seed: seed of the bootstrap resamples.

    Returns:
        ``{name: value}`` for each of :data:`labelsmooth.evaluation.METRICS`.

    Raises:
        TypeError: ``eval_pred`` of another type.
        ValueError: an unknown ``task``, shapes that do not match, no labelled position, or what
            :func:`~labelsmooth.evaluation.evaluate` refuses.

    Example:
        >>> import numpy as np
        >>> from labelsmooth.integrations.huggingface import calibration_metrics
        >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]], dtype=np.float32)
        >>> m = calibration_metrics((logits, np.array([0, 1, 0, 1])))
        >>> m["accuracy"], sorted(m)[:3]
        (0.75, ['accuracy', 'aurc', 'brier'])
    """
    _check_options(task, n_bins, n_bootstrap, kind, ignore_index, seed)
    return scalars(_score(eval_pred, task, n_bins, n_bootstrap, kind, ignore_index, seed))


def _score(
    eval_pred: Any, task: str, n_bins: int, n_bootstrap: int, kind: str, ignore_index: int, seed: int
) -> EvaluationResult:
    preds, labels = _predictions(eval_pred)
    return score_outputs(
        preds,
        labels,
        n_bins=n_bins,
        n_bootstrap=n_bootstrap,
        kind=kind,
        ignore_index=ignore_index,
        shift=task == "causal_lm",
        seed=seed,
    )


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class CalibrationCallback:
    """Calibration metrics at every evaluation, and the reliability diagram as an image in the Trainer's logger.

    Give the Trainer both of its halves: :meth:`compute_metrics` (the metrics of
    :func:`calibration_metrics`, which the Trainer logs with everything else) and the callback itself,
    which at ``on_evaluate`` logs that evaluation's reliability diagram and risk-coverage curve as the
    images ``eval/reliability`` and ``eval/risk_coverage`` at the step of the evaluation::

        calib = CalibrationCallback(task="sequence_classification")
        trainer = Trainer(..., compute_metrics=calib.compute_metrics, callbacks=[calib])

    Where the images go: to ``tb_writer`` when given (any object with TensorBoard's ``add_image``);
    else, when ``args.report_to`` names ``"tensorboard"`` (or is ``"all"``), to a ``SummaryWriter``
    (``torch.utils.tensorboard``, else ``tensorboardX``) of its own in ``$TENSORBOARD_LOGGING_DIR`` or
    ``<output_dir>/runs/calibration``, beside the Trainer's own run; and to the active Weights & Biases
    run when ``report_to`` names ``"wandb"``. Other loggers get the metrics only; so do all when
    matplotlib is not installed. Only the main process logs images.

    It implements ``transformers.TrainerCallback``'s interface without subclassing it (every other
    ``on_*`` event is a no-op), so this module imports no ``transformers``; the Trainer takes it like
    any callback.

    Args:
        task: as in :func:`calibration_metrics`.
        n_bins: as in :func:`calibration_metrics`.
        n_bootstrap: as in :func:`calibration_metrics`.
        log_figure: log the images (False: the metrics only).
        kind: as in :func:`calibration_metrics`.
        ignore_index: as in :func:`calibration_metrics`.
        seed: as in :func:`calibration_metrics`.
        tb_writer: a TensorBoard ``SummaryWriter`` (or anything with its ``add_image``) for the images.

    Attributes:
        result: the :class:`~labelsmooth.evaluation.EvaluationResult` of the last evaluation, or None.

    Example:
        >>> import numpy as np
        >>> from labelsmooth.integrations.huggingface import CalibrationCallback
        >>> calib = CalibrationCallback(n_bins=10)
        >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]], dtype=np.float32)
        >>> calib.compute_metrics((logits, np.array([0, 1, 0, 1])))["accuracy"], calib.result.n
        (0.75, 4)
    """

    def __init__(
        self,
        task: str = "sequence_classification",
        n_bins: int = 15,
        n_bootstrap: int = 0,
        *,
        log_figure: bool = True,
        kind: str = "auto",
        ignore_index: int = -100,
        seed: int = 0,
        tb_writer: Any = None,
    ) -> None:
        _check_options(task, n_bins, n_bootstrap, kind, ignore_index, seed)
        if not isinstance(log_figure, bool):
            raise TypeError(f"log_figure must be True or False, got {log_figure!r}")
        if tb_writer is not None and not callable(getattr(tb_writer, "add_image", None)):
            raise TypeError(
                f"tb_writer must have an add_image method (a SummaryWriter), got {type(tb_writer).__name__}"
            )
        self.task, self.n_bins, self.n_bootstrap = task, n_bins, n_bootstrap
        self.kind, self.ignore_index, self.seed = kind, ignore_index, seed
        self.log_figure = log_figure
        self.tb_writer = tb_writer
        self.result: EvaluationResult | None = None
        self._pending = False
        self._own_writer = False

    def __getattr__(self, name: str) -> Any:
        """TrainerCallback events this callback does not use (and any a later release adds) are no-ops."""
        if name.startswith("on_"):
            return _noop
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """:func:`calibration_metrics` with this callback's settings; keeps the result for :meth:`on_evaluate`."""
        self.result = _score(
            eval_pred, self.task, self.n_bins, self.n_bootstrap, self.kind, self.ignore_index, self.seed
        )
        self._pending = True
        return scalars(self.result)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Log the images of the evaluation :meth:`compute_metrics` just scored."""
        if not self._pending or self.result is None:
            return
        self._pending = False
        if not self.log_figure or not getattr(state, "is_world_process_zero", True):
            return
        report_to = getattr(args, "report_to", None) or []
        report_to = [report_to] if isinstance(report_to, str) else list(report_to)
        writer = self.tb_writer
        if writer is None and ("tensorboard" in report_to or "all" in report_to):
            writer = self.tb_writer = _summary_writer(args)
            self._own_writer = writer is not None
        wandb = sys.modules.get("wandb") if ("wandb" in report_to or "all" in report_to) else None
        run = getattr(wandb, "run", None)
        if (writer is None and run is None) or _no_matplotlib():
            return
        step = int(getattr(state, "global_step", 0))
        pictures = images(self.result)
        if writer is not None:
            for key, img in pictures.items():
                writer.add_image(f"eval/{key}", img, step, dataformats="HWC")
            if callable(getattr(writer, "flush", None)):
                writer.flush()
        if run is not None and wandb is not None:
            wandb.log({f"eval/{key}": wandb.Image(img) for key, img in pictures.items()})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the SummaryWriter this callback opened itself (one passed in is left open)."""
        if self._own_writer and self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer, self._own_writer = None, False


def _no_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is None


def _summary_writer(args: Any) -> Any:
    import importlib

    for module in ("torch.utils.tensorboard", "tensorboardX"):
        try:
            writer = importlib.import_module(module).SummaryWriter
        except ImportError:
            continue
        log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(str(args.output_dir), "runs", "calibration")
        return writer(log_dir=os.path.expanduser(log_dir))
    return None
