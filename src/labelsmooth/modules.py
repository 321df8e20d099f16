"""``nn.Module`` wrappers that subclass the torch classes they replace: swap one import."""

from __future__ import annotations

from torch import Tensor, nn

from labelsmooth import _validate as V
from labelsmooth import functional as LF


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in ``nn.CrossEntropyLoss`` computed by :func:`labelsmooth.cross_entropy`.

    Takes ``nn.CrossEntropyLoss``'s constructor arguments, then the keyword-only extras of
    :func:`labelsmooth.cross_entropy` (``backend``, ``z_loss``, ``softcap``, ``inplace``,
    ``smoothing_prior``, ``allow_negative``). The prior is a buffer, so ``.to(device)`` moves it and
    ``state_dict`` holds it.

    Shape:
        input (C), (N, C) or (N, C, d1, ..., dk); target as in :func:`labelsmooth.cross_entropy`.

    Example:
        >>> import torch, labelsmooth as ls
        >>> loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(4, 10, requires_grad=True), torch.tensor([1, 0, 9, 3]))
        >>> loss.backward()
        >>> prior = ls.class_prior(torch.tensor([0, 0, 1, 2, 9]), 10)   # smooth towards the label unigram
        >>> loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1, smoothing_prior=prior)
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace: bool = False,
        smoothing_prior: Tensor | None = None,
        allow_negative: bool = False,
    ) -> None:
        self.allow_negative = V.check_bool(allow_negative, "allow_negative")
        label_smoothing = V.check_label_smoothing(label_smoothing, allow_negative=self.allow_negative)
        if smoothing_prior is not None:
            V.check_prior(smoothing_prior, None, None)  # the class count is only known at forward
        super().__init__(
            weight, size_average, V.check_index(ignore_index, "ignore_index"), reduce, reduction, label_smoothing
        )
        V.check_reduction(self.reduction)
        self.backend = LF.check_backend(backend)
        self.z_loss = V.check_nonnegative_float(z_loss, "z_loss")
        self.softcap = V.check_softcap(softcap)
        self.inplace = V.check_bool(inplace, "inplace")
        self.smoothing_prior: Tensor | None
        self.register_buffer("smoothing_prior", smoothing_prior)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace=self.inplace,
            smoothing_prior=self.smoothing_prior,
            allow_negative=self.allow_negative,
        )

    def extra_repr(self) -> str:
        parts = [
            f"label_smoothing={self.label_smoothing}",
            f"reduction={self.reduction!r}",
            f"backend={self.backend!r}",
        ]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.inplace:
            parts.append("inplace=True")
        if self.smoothing_prior is not None:
            parts.append(f"smoothing_prior=<{self.smoothing_prior.shape[0]} classes>")
        if self.allow_negative:
            parts.append("allow_negative=True")
        return ", ".join(parts)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Drop-in ``nn.BCEWithLogitsLoss`` with label smoothing: targets become ``y * (1 - eps) + eps / 2``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> loss_fn = ls.BCEWithLogitsLoss(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(8), torch.randint(0, 2, (8,)).float())
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        *,
        allow_negative: bool = False,
    ) -> None:
        allow_negative = V.check_bool(allow_negative, "allow_negative")
        self_eps = V.check_label_smoothing(label_smoothing, allow_negative=allow_negative)
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        V.check_reduction(self.reduction)
        self.label_smoothing = self_eps
        self.allow_negative = allow_negative

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.binary_cross_entropy_with_logits(
            input,
            target,
            self.weight,
            reduction=self.reduction,
            pos_weight=self.pos_weight,
            label_smoothing=self.label_smoothing,
            allow_negative=self.allow_negative,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
