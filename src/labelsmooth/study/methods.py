"""The methods compared by the study: ONE registry, one entry per method.

A method says three things: which label-smoothing values of the ``--eps`` grid it runs, which loss
it trains with, and what it does to the trained model's logits afterwards (``posthoc``). Methods that
train the same loss with the same eps share one training: ``ts`` (temperature scaling) reuses the
model trained for ``ce``, and only adds its post-hoc step.

Adding a method (negative or online label smoothing, ...) is one new entry in :data:`METHODS`; the
CLI's ``--methods`` choices, the runner, the tables, the figures and the claim paragraphs pick it up.

Roles: ``baseline`` (ce, what every other method is compared with), ``smoothing`` (the uniform
label smoothing the four claims are about), ``variant`` (other smoothing schemes from the literature:
negative and online label smoothing, each compared with ce beside uniform smoothing), ``posthoc`` (a
step on a trained model's logits), and ``reference`` (another training loss set beside smoothing as a
calibration baseline: focal loss).

A loss factory returns an ``nn.Module`` called as ``loss(logits, target)`` with the *noisy* training
labels (float 0/1 targets for the binary single-logit model, class indices otherwise). It may define
``epoch_end(model)``, which the training loop calls after every epoch (online label smoothing keeps
per-class soft labels that are updated there).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelsmooth as ls
from labelsmooth.calibration import fit_temperature

__all__ = [
    "FOCAL_GAMMA",
    "METHODS",
    "OLS_ALPHA",
    "OLS_EPS",
    "FocalLoss",
    "Method",
    "OnlineSmoothingLoss",
    "Posthoc",
    "focal_loss",
    "label_smoothing_loss",
    "online_smoothing_loss",
    "temperature_scaling",
]

#: ``posthoc(val_logits, val_labels) -> (transform, extra record fields)``: fitted on the validation
#: split, ``transform(logits)`` is then applied to any logits of the same model (test, checkpoints).
Posthoc = Callable[[Tensor, Tensor], "tuple[Callable[[Tensor], Tensor], dict[str, float]]"]

#: Focal loss exponent: Mukhoti et al. (2020) report gamma = 3 as their best fixed value.
FOCAL_GAMMA = 3.0

#: Online label smoothing: the weight of the hard label (Zhang et al. 2021 use 0.5) and the uniform
#: smoothing its soft labels start from.
OLS_ALPHA = 0.5
OLS_EPS = 0.1


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
        role: ``"baseline"``, ``"smoothing"``, ``"posthoc"`` or ``"reference"`` (see the module docstring).
        posthoc_labels: validation labels the post-hoc step is fitted on: ``"clean"``, or ``"noisy"``
            (corrupted like the training labels, as a practitioner's held-out labels would be).
        noisy_runs: False for methods only run on clean labels (the focal-loss calibration baseline).
        clean_runs: False for methods only run on noisy labels (negative smoothing, a noisy-label method).
    """

    name: str
    label: str
    eps_values: Callable[[Sequence[float]], list[float]]
    loss: Callable[[float, bool], nn.Module]
    loss_id: str
    posthoc: Posthoc | None = None
    baseline: bool = False
    role: str = "smoothing"
    posthoc_labels: str = "clean"
    noisy_runs: bool = True
    clean_runs: bool = True


def label_smoothing_loss(eps: float, binary: bool) -> nn.Module:
    """The library's own losses: ``CrossEntropyLoss`` (K classes) or ``BCEWithLogitsLoss`` (one logit).

    Args:
        eps: label smoothing in (-1, 1); negative values are negative label smoothing (Wei et al. 2022).
        binary: True for the single-logit binary model (targets ``y(1 - eps) + eps/2``).

    Returns:
        The loss module.
    """
    neg = eps < 0
    if binary:
        return ls.BCEWithLogitsLoss(label_smoothing=eps, allow_negative=neg)
    return ls.CrossEntropyLoss(label_smoothing=eps, allow_negative=neg)


class OnlineSmoothingLoss(nn.Module):
    """:class:`labelsmooth.OnlineLabelSmoothing` for the study's models: its class count is read from
    the first batch, and a single-logit binary model's logit z is the two-class logits (0, z), whose
    softmax is (1 - sigmoid(z), sigmoid(z)). ``epoch_end`` moves the soft labels to the next epoch.

    Example:
        >>> import torch
        >>> loss_fn = OnlineSmoothingLoss(alpha=0.5, eps=0.1)
        >>> loss = loss_fn(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))   # binary: float targets
        >>> loss_fn.ols.soft_labels.shape
        torch.Size([2, 2])
    """

    def __init__(self, alpha: float = OLS_ALPHA, eps: float = OLS_EPS) -> None:
        super().__init__()
        self.alpha, self.eps = float(alpha), float(eps)
        self.ols: ls.OnlineLabelSmoothing | None = None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() == 1:
            logits = torch.stack([torch.zeros_like(logits), logits], dim=1)
            target = target.round().long()
        if self.ols is None:
            self.ols = ls.OnlineLabelSmoothing(logits.shape[1], alpha=self.alpha, label_smoothing=self.eps).to(
                logits.device
            )
        self.ols.train(self.training)
        loss: Tensor = self.ols(logits, target)
        return loss

    def epoch_end(self, model: nn.Module) -> None:
        if self.ols is not None:
            self.ols.next_epoch()


def online_smoothing_loss(eps: float, binary: bool) -> nn.Module:
    """The online-label-smoothing factory of the registry (``eps``: the initial uniform smoothing)."""
    return OnlineSmoothingLoss(OLS_ALPHA, eps)


class FocalLoss(nn.Module):
    """Focal loss, mean over the batch: ``-(1 - p_y)^gamma log p_y`` (Lin et al. 2017).

    Mukhoti et al. (2020) show that it trains better-calibrated networks than cross-entropy, which
    makes it the natural training-time calibration baseline beside label smoothing. ``(N, K)``
    logits take class indices; ``(N,)`` binary logits take float 0/1 targets (``p_y`` from the
    sigmoid). ``log p_y`` comes from ``log_softmax`` / ``logsigmoid``, never from a clamped
    probability.

    Args:
        gamma: the focusing exponent, >= 0 (0 is cross-entropy).

    Example:
        >>> import torch
        >>> z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> bool(torch.isclose(FocalLoss(0.0)(z, y), torch.nn.functional.cross_entropy(z, y)))
        True

    References:
        Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017.
        Mukhoti, Kulharia, Sanyal, Golodetz, Torr & Dokania, "Calibrating Deep Neural Networks
        using Focal Loss", NeurIPS 2020.
    """

    def __init__(self, gamma: float = FOCAL_GAMMA) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() == 1:
            # log p_y of the label that was given: logsigmoid(z) for y = 1, logsigmoid(-z) for y = 0.
            log_p = F.logsigmoid(torch.where(target > 0.5, logits, -logits))
        else:
            log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        return (-(1 - log_p.exp()).pow(self.gamma) * log_p).mean()


def focal_loss(eps: float, binary: bool) -> nn.Module:
    """The focal-loss factory of the registry (``eps`` is always 0: focal loss is run without smoothing)."""
    return FocalLoss(FOCAL_GAMMA)


def temperature_scaling(val_logits: Tensor, val_labels: Tensor) -> tuple[Callable[[Tensor], Tensor], dict[str, float]]:
    """Post-hoc temperature scaling (Guo et al. 2017): fit T on validation logits.

    Args:
        val_logits: ``(N, K)`` or ``(N,)`` validation logits.
        val_labels: ``(N,)`` validation labels (clean or noisy, as the method says).

    Returns:
        ``(logits -> logits / T, {"temperature": T, "temperature_at_bound": bool})``.
    """
    with warnings.catch_warnings(record=True) as caught:
        # A separable validation set pushes T to a bound; that is recorded, not printed mid-progress-bar.
        warnings.simplefilter("always")
        t = fit_temperature(val_logits, val_labels)
    at_bound = any(issubclass(w.category, RuntimeWarning) for w in caught)
    return (lambda logits: logits / t), {"temperature": t, "temperature_at_bound": at_bound}


def _zero(grid: Sequence[float]) -> list[float]:
    return [0.0]


def _positive(grid: Sequence[float]) -> list[float]:
    return [float(e) for e in grid if e > 0]


def _negative(grid: Sequence[float]) -> list[float]:
    return [float(e) for e in grid if e < 0]


def _ols_eps(grid: Sequence[float]) -> list[float]:
    return [OLS_EPS]


#: The registry: ``--methods`` accepts exactly these names, in this order in every table.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ce", "cross-entropy (eps = 0)", _zero, label_smoothing_loss, "ls", baseline=True, role="baseline"),
        Method("ls", "uniform label smoothing (the positive values of --eps)", _positive, label_smoothing_loss, "ls"),
        Method(
            "nls",
            "negative label smoothing (Wei et al. 2022; the negative values of --eps); noisy labels only",
            _negative,
            label_smoothing_loss,
            "ls",
            role="variant",
            clean_runs=False,
        ),
        Method(
            "ols",
            f"online label smoothing (Zhang et al. 2021; alpha {OLS_ALPHA:g}, soft labels start at eps {OLS_EPS:g})",
            _ols_eps,
            online_smoothing_loss,
            "ols",
            role="variant",
        ),
        Method(
            "focal",
            f"focal loss (gamma {FOCAL_GAMMA:g}), a calibration baseline; clean labels only",
            _zero,
            focal_loss,
            "focal",
            role="reference",
            noisy_runs=False,
        ),
        Method(
            "ts",
            "cross-entropy + temperature scaling (T fitted on clean validation labels)",
            _zero,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
        ),
        Method(
            "ts-noisyval",
            "cross-entropy + temperature scaling fitted on NOISY validation labels",
            _zero,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
            posthoc_labels="noisy",
        ),
        Method(
            "ls+ts",
            "label smoothing, then temperature scaling (clean validation labels)",
            _positive,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
        ),
    )
}


def _check_registry() -> None:
    # Exactly one baseline: every comparison in the report is "method vs baseline".
    if sum(m.baseline for m in METHODS.values()) != 1:  # pragma: no cover - guards future edits
        raise RuntimeError("labelsmooth.study.methods.METHODS needs exactly one baseline method")


_check_registry()
