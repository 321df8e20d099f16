"""The methods compared by the study: ONE registry, one entry per method.

A method says three things: which label-smoothing values of the ``--eps`` grid it runs, which loss
it trains with, and what it does to the trained model's logits afterwards (``posthoc``). Methods that
train the same loss with the same eps share one training: ``ts`` (temperature scaling) reuses the
model trained for ``ce``, and only adds its post-hoc step.

Adding a method (negative or online label smoothing, ...) is one new entry in :data:`METHODS`; the
CLI's ``--methods`` choices, the runner, the tables, the figures and the claim paragraphs pick it up.

A loss factory returns an ``nn.Module`` called as ``loss(logits, target)`` with the *noisy* training
labels (float 0/1 targets for the binary single-logit model, class indices otherwise). It may define
``epoch_end(model)``, which the training loop calls after every epoch (online label smoothing keeps
per-class soft labels that are updated there).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import Tensor, nn

import labelsmooth as ls
from labelsmooth.calibration import fit_temperature

__all__ = ["METHODS", "Method", "Posthoc", "label_smoothing_loss", "temperature_scaling"]

#: ``posthoc(val_logits, val_labels, test_logits) -> (test_logits, extra record fields)``.
Posthoc = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, dict]"]


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        name: short name used on the command line and in the tables (``ce``, ``ls``, ``ts``).
        label: human-readable name for the report.
        eps_values: picks this method's label-smoothing values from the ``--eps`` grid.
        loss: ``loss(eps, binary) -> nn.Module``, the training loss.
        loss_id: trainings with equal ``(loss_id, eps)`` are shared between methods.
        posthoc: optional post-hoc step on the trained model's logits (fitted on the validation split).
        baseline: True for the reference every other method is compared with (``ce``).
    """

    name: str
    label: str
    eps_values: Callable[[Sequence[float]], list[float]]
    loss: Callable[[float, bool], nn.Module]
    loss_id: str
    posthoc: Posthoc | None = None
    baseline: bool = False


def label_smoothing_loss(eps: float, binary: bool) -> nn.Module:
    """The library's own losses: ``CrossEntropyLoss`` (K classes) or ``BCEWithLogitsLoss`` (one logit).

    Args:
        eps: label smoothing in [0, 1).
        binary: True for the single-logit binary model (targets ``y(1 - eps) + eps/2``).

    Returns:
        The loss module.
    """
    return ls.BCEWithLogitsLoss(label_smoothing=eps) if binary else ls.CrossEntropyLoss(label_smoothing=eps)


def temperature_scaling(val_logits: Tensor, val_labels: Tensor, test_logits: Tensor) -> tuple[Tensor, dict]:
    """Post-hoc temperature scaling (Guo et al. 2017): fit T on validation logits, divide test logits.

    Args:
        val_logits: ``(N, K)`` or ``(N,)`` validation logits.
        val_labels: ``(N,)`` validation labels (clean: the held-out set is assumed trustworthy).
        test_logits: logits to rescale.

    Returns:
        ``(test_logits / T, {"temperature": T, "temperature_at_bound": bool})``.
    """
    with warnings.catch_warnings(record=True) as caught:
        # A separable validation set pushes T to a bound; that is recorded, not printed mid-progress-bar.
        warnings.simplefilter("always")
        t = fit_temperature(val_logits, val_labels)
    at_bound = any(issubclass(w.category, RuntimeWarning) for w in caught)
    return test_logits / t, {"temperature": t, "temperature_at_bound": at_bound}


def _zero(grid: Sequence[float]) -> list[float]:
    return [0.0]


def _nonzero(grid: Sequence[float]) -> list[float]:
    return [float(e) for e in grid if e != 0]


#: The registry: ``--methods`` accepts exactly these names, in this order in every table.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ce", "cross-entropy (eps = 0)", _zero, label_smoothing_loss, "ls", baseline=True),
        Method("ls", "uniform label smoothing", _nonzero, label_smoothing_loss, "ls"),
        Method("ts", "cross-entropy + temperature scaling", _zero, label_smoothing_loss, "ls",
               posthoc=temperature_scaling),
    )
}


def _check_registry() -> None:
    # Exactly one baseline: every comparison in the report is "method vs baseline".
    if sum(m.baseline for m in METHODS.values()) != 1:  # pragma: no cover - guards future edits
        raise RuntimeError("labelsmooth.study.methods.METHODS needs exactly one baseline method")


_check_registry()
