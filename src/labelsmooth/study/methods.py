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
    "HEADLINE_EPS",
    "METHODS",
    "NLS_WEIGHT_DECAYS",
    "OLS_ALPHA",
    "OLS_EPS",
    "TEMPERATURE_BOUNDS",
    "WARMUP_FRACTION",
    "FocalLoss",
    "ForwardCorrectionLoss",
    "LossContext",
    "Method",
    "OnlineSmoothingLoss",
    "Posthoc",
    "estimate_transition",
    "estimated_correction_loss",
    "focal_loss",
    "forward_correction_loss",
    "label_smoothing_loss",
    "matched_eps",
    "noise_transition",
    "online_smoothing_loss",
    "temperature_scaling",
    "top_target",
]

#: Temperature search range of the study's temperature scaling. Narrower than the library's default
#: (0.01, 100): a fit at either end is a validation set that says nothing about calibration (a separable
#: one drives T towards 0), and is marked and kept out of every verdict instead of being used.
TEMPERATURE_BOUNDS = (0.1, 10.0)

#: Negative label smoothing and the estimated forward correction first train this share of the budget
#: with plain cross-entropy (Wei et al. 2022 start negative smoothing from a cross-entropy warm-up;
#: the forward correction estimates its transition matrix from the warmed-up model).
WARMUP_FRACTION = 0.5

#: Weight decays that negative smoothing chooses from on validation (its loss has no lower bound:
#: without weight decay the logits can grow without limit).
NLS_WEIGHT_DECAYS = (0.0, 1e-3)


#: The pre-specified smoothing value of the headline comparisons (the grid's value closest to it).
HEADLINE_EPS = 0.1


def top_target(eps: float, num_classes: int) -> float:
    """The smoothed target's value on the true class: ``1 - eps/2`` for the one-logit binary model
    (targets ``y(1 - eps) + eps/2``), ``1 - eps + eps/K`` for K classes.

    Example:
        >>> top_target(0.1, 10), top_target(0.18, 2)
        (0.91, 0.91)
    """
    return 1 - eps / 2 if num_classes == 2 else 1 - eps + eps / num_classes


def matched_eps(eps: float, num_classes: int, reference_classes: int = 10) -> float:
    """The eps that gives a ``num_classes`` task the smoothed top target that ``eps`` gives a
    ``reference_classes`` task (:func:`top_target`), so that tasks are compared at equal target values.

    Example:
        >>> round(matched_eps(0.1, 2), 4), round(matched_eps(0.1, 3), 4), matched_eps(0.1, 10)
        (0.18, 0.135, 0.1)
    """
    gap = eps * (1 - 1 / reference_classes)  # 1 - top target of the reference task
    return round(2 * gap if num_classes == 2 else gap / (1 - 1 / num_classes), 6)


@dataclass(frozen=True)
class LossContext:
    """What a loss factory may know about the training it serves.

    Attributes:
        num_classes: K (2 for the single-logit binary model).
        noise_kind: ``"none"``, ``"symmetric"`` or ``"pairflip"``.
        noise_rate: the flip rate of the training labels (0 for clean labels).
    """

    num_classes: int = 2
    noise_kind: str = "none"
    noise_rate: float = 0.0


#: ``posthoc(val_logits, val_labels) -> (transform, extra record fields)``: fitted on the validation
#: split, ``transform(logits)`` is then applied to any logits of the same model (test, checkpoints).
Posthoc = Callable[[Tensor, Tensor], "tuple[Callable[[Tensor], Tensor], dict[str, float]]"]
#: ``loss(eps, binary, context) -> nn.Module``.
LossFactory = Callable[[float, bool, "LossContext | None"], nn.Module]

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
        loss: ``loss(eps, binary, context) -> nn.Module``, the training loss (``context``: a
            :class:`LossContext`).
        loss_id: trainings with equal ``(loss_id, eps)`` are shared between methods.
        posthoc: optional post-hoc step on the trained model's logits (fitted on the validation split).
        baseline: True for the reference every other method is compared with (``ce``).
        role: ``"baseline"``, ``"smoothing"``, ``"posthoc"`` or ``"reference"`` (see the module docstring).
        posthoc_labels: validation labels the post-hoc step is fitted on: ``"clean"``, or ``"noisy"``
            (corrupted like the training labels, as a practitioner's held-out labels would be).
        noisy_runs: False for methods only run on clean labels (the focal-loss calibration baseline).
        clean_runs: False for methods only run on noisy labels (negative smoothing, a noisy-label method).
        warmup: share of the budget first trained with plain cross-entropy (0: none). A loss with a
            ``prepare(train_logits, noisy_labels)`` method is handed the warmed-up model's training
            logits at the switch.
        weight_decays: weight decays chosen from per training on validation accuracy (empty: the
            study's single weight decay).
    """

    name: str
    label: str
    eps_values: Callable[[Sequence[float]], list[float]]
    loss: LossFactory
    loss_id: str
    posthoc: Posthoc | None = None
    baseline: bool = False
    role: str = "smoothing"
    posthoc_labels: str = "clean"
    noisy_runs: bool = True
    clean_runs: bool = True
    warmup: float = 0.0
    weight_decays: tuple[float, ...] = ()


def label_smoothing_loss(eps: float, binary: bool, context: LossContext | None = None) -> nn.Module:
    """The library's own losses: ``CrossEntropyLoss`` (K classes) or ``BCEWithLogitsLoss`` (one logit).

    Args:
        eps: label smoothing in (-1, 1); negative values are negative label smoothing (Wei et al. 2022).
        binary: True for the single-logit binary model (targets ``y(1 - eps) + eps/2``).
        context: unused (every factory takes it).

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


def online_smoothing_loss(eps: float, binary: bool, context: LossContext | None = None) -> nn.Module:
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


def focal_loss(eps: float, binary: bool, context: LossContext | None = None) -> nn.Module:
    """The focal-loss factory of the registry (``eps`` is always 0: focal loss is run without smoothing)."""
    return FocalLoss(FOCAL_GAMMA)


def noise_transition(kind: str, rate: float, num_classes: int) -> Tensor:
    """The transition matrix ``T[i, j] = P(noisy label j | true class i)`` of the study's noise.

    Symmetric noise moves a label to each of the K - 1 other classes with probability r / (K - 1);
    pair-flip noise moves it to class i + 1 (mod K) with probability r.

    Example:
        >>> noise_transition("pairflip", 0.2, 3).tolist()
        [[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]]
    """
    k = int(num_classes)
    if kind in ("none", "") or rate == 0:
        return torch.eye(k, dtype=torch.float64)
    if kind == "symmetric":
        t = torch.full((k, k), rate / (k - 1), dtype=torch.float64)
        t.fill_diagonal_(1 - rate)
        return t
    if kind == "pairflip":
        t = torch.eye(k, dtype=torch.float64) * (1 - rate)
        t[torch.arange(k), (torch.arange(k) + 1) % k] += rate
        return t
    raise ValueError(f"noise kind must be 'none', 'symmetric' or 'pairflip', got {kind!r}")


def estimate_transition(probs: Tensor, quantile: float = 0.97) -> Tensor:
    """Anchor-point estimate of the noise transition matrix from a model trained on the noisy labels.

    For each class i, the training example whose predicted ``p_i`` is at the ``quantile`` of all
    ``p_i`` (the 97th percentile rather than the maximum, which over-fitted outliers reach) is taken
    as an anchor of class i, and its predicted distribution over the noisy labels is row i of T.

    Args:
        probs: ``(N, K)`` predicted probabilities of the noisy labels on the training inputs.
        quantile: where the anchor is taken in each class's column.

    Returns:
        ``(K, K)`` float64 rows summing to 1.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
        >>> estimate_transition(p, quantile=1.0).tolist()
        [[0.9, 0.1], [0.2, 0.8]]

    References:
        Patrini, Rozza, Menon, Nock & Qu, "Making Deep Neural Networks Robust to Label Noise: a Loss
        Correction Approach", CVPR 2017, Section 4.
    """
    p = probs.detach().double()
    k = p.shape[1]
    rows = []
    for i in range(k):
        col = p[:, i]
        target = torch.quantile(col, quantile)
        rows.append(p[int(torch.argmin((col - target).abs()))])
    t = torch.stack(rows)
    return t / t.sum(dim=1, keepdim=True)


class ForwardCorrectionLoss(nn.Module):
    """Forward loss correction: the NLL of the noisy label under ``softmax(z) @ T``.

    The model's output estimates the clean class; multiplying by the transition matrix T gives the
    distribution of the *noisy* label it is trained on. With the true T this is a consistent
    estimator of the clean-label classifier (Patrini et al. 2017); Lukasik et al. (2020) set label
    smoothing against it. ``T=None`` waits for :meth:`prepare` (an estimate from a warmed-up model).
    A single-logit binary model's logit z is the two-class logits (0, z). Computed in log space:
    ``log sum_j exp(log_softmax(z)_j + log T[j, y])``.

    Args:
        T: ``(K, K)`` transition matrix, or None to estimate it in :meth:`prepare`.

    Example:
        >>> z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> loss = ForwardCorrectionLoss(torch.eye(3))(z, y)   # T = I is cross-entropy
        >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(z, y)))
        True

    References:
        Patrini, Rozza, Menon, Nock & Qu, CVPR 2017.
    """

    def __init__(self, T: Tensor | None) -> None:
        super().__init__()
        self.log_t: Tensor | None = None if T is None else T.double().clamp(min=1e-12).log()

    def prepare(self, train_logits: Tensor, noisy_labels: Tensor) -> None:
        """Estimate T from the warmed-up model's logits on the training inputs (:func:`estimate_transition`)."""
        z = _two_class(train_logits.detach())
        self.log_t = estimate_transition(torch.softmax(z.double(), dim=1)).clamp(min=1e-12).log()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.log_t is None:
            raise RuntimeError("ForwardCorrectionLoss needs T, or prepare() with a warmed-up model's logits")
        z = _two_class(logits)
        y = target.round().long() if logits.dim() == 1 else target
        log_t = self.log_t.to(device=z.device, dtype=z.dtype)
        log_noisy = torch.logsumexp(F.log_softmax(z, dim=1).unsqueeze(2) + log_t.unsqueeze(0), dim=1)  # (N, K)
        return -log_noisy.gather(1, y.unsqueeze(1)).mean()


def _two_class(logits: Tensor) -> Tensor:
    # A single logit z is the two-class logits (0, z): softmax gives (1 - sigmoid(z), sigmoid(z)).
    return torch.stack([torch.zeros_like(logits), logits], dim=1) if logits.dim() == 1 else logits


def forward_correction_loss(eps: float, binary: bool, context: LossContext | None = None) -> nn.Module:
    """Forward correction with the true transition matrix of the training labels' noise."""
    ctx = context or LossContext()
    return ForwardCorrectionLoss(noise_transition(ctx.noise_kind, ctx.noise_rate, ctx.num_classes))


def estimated_correction_loss(eps: float, binary: bool, context: LossContext | None = None) -> nn.Module:
    """Forward correction with T estimated from the warmed-up model (:func:`estimate_transition`)."""
    return ForwardCorrectionLoss(None)


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
        t = fit_temperature(val_logits, val_labels, bounds=TEMPERATURE_BOUNDS)
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
            f"negative label smoothing (Wei et al. 2022; the negative values of --eps) after a cross-entropy "
            f"warm-up of {WARMUP_FRACTION:.0%} of the budget, weight decay chosen on validation; noisy labels only",
            _negative,
            label_smoothing_loss,
            "nls",
            role="variant",
            clean_runs=False,
            warmup=WARMUP_FRACTION,
            weight_decays=NLS_WEIGHT_DECAYS,
        ),
        Method(
            "fc",
            "forward loss correction with the true noise transition matrix (Patrini et al. 2017); noisy labels only",
            _zero,
            forward_correction_loss,
            "fc",
            role="variant",
            clean_runs=False,
        ),
        Method(
            "fc-est",
            f"forward loss correction with T estimated from the model after a cross-entropy warm-up of "
            f"{WARMUP_FRACTION:.0%} of the budget (anchor points); noisy labels only",
            _zero,
            estimated_correction_loss,
            "fc-est",
            role="variant",
            clean_runs=False,
            warmup=WARMUP_FRACTION,
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
            "cross-entropy + temperature scaling (T fitted on the validation labels a user has: noisy when the "
            "training labels are)",
            _zero,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
            posthoc_labels="noisy",
        ),
        Method(
            "ts-oracle",
            "cross-entropy + temperature scaling fitted on CLEAN validation labels (an oracle a user does not have)",
            _zero,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
        ),
        Method(
            "ls+ts",
            "label smoothing, then temperature scaling (the validation labels a user has)",
            _positive,
            label_smoothing_loss,
            "ls",
            posthoc=temperature_scaling,
            role="posthoc",
            posthoc_labels="noisy",
        ),
    )
}


def _check_registry() -> None:
    # Exactly one baseline: every comparison in the report is "method vs baseline".
    if sum(m.baseline for m in METHODS.values()) != 1:  # pragma: no cover - guards future edits
        raise RuntimeError("labelsmooth.study.methods.METHODS needs exactly one baseline method")


_check_registry()
