"""``nn.Module`` wrappers that subclass the torch classes they replace: swap one import."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from labelsmooth import _options as O
from labelsmooth import _validate as V
from labelsmooth import functional as LF


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in ``nn.CrossEntropyLoss`` computed by :func:`labelsmooth.cross_entropy`.

    Takes ``nn.CrossEntropyLoss``'s constructor arguments, then the keyword-only extras of
    :func:`labelsmooth.cross_entropy` (``backend``, ``z_loss``, ``softcap``, ``inplace``,
    ``smoothing_prior``, ``allow_negative``, ``shift``, ``logit_scale``, ``return_aux``). The prior is a
    buffer, so ``.to(device)`` moves it and ``state_dict`` holds it. A tensor ``logit_scale`` is kept as
    given: an ``nn.Parameter`` (a learned inverse temperature) becomes a parameter of the module, any
    other tensor a buffer. ``token_weight`` changes with every batch, so it is an argument of
    :meth:`forward`. With ``return_aux`` the module returns ``(loss, aux)``.

    Shape:
        input (C), (N, C) or (N, C, d1, ..., dk); target as in :func:`labelsmooth.cross_entropy`.

    Example:
        >>> import torch, labelsmooth as ls
        >>> loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(4, 10, requires_grad=True), torch.tensor([1, 0, 9, 3]))
        >>> loss.backward()
        >>> prior = ls.class_prior(torch.tensor([0, 0, 1, 2, 9]), 10)   # smooth towards the label unigram
        >>> loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1, smoothing_prior=prior)
        >>> lm_loss = ls.CrossEntropyLoss(shift=True, logit_scale=torch.nn.Parameter(torch.tensor(1.0)))
        >>> loss = lm_loss(torch.randn(2, 6, 10).transpose(1, 2), torch.randint(0, 10, (2, 6)),
        ...                token_weight=torch.rand(2, 6))
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
        shift: bool = False,
        logit_scale: float | Tensor | None = None,
        return_aux: bool | Iterable[str] = False,
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
        self.shift = V.check_bool(shift, "shift")
        self.return_aux = O.check_return_aux(return_aux)
        scale = O.check_logit_scale(
            logit_scale, logit_scale.device if isinstance(logit_scale, Tensor) else torch.device("cpu")
        )
        self.logit_scale: float | Tensor | None
        if isinstance(scale, Tensor) and not isinstance(scale, nn.Parameter):
            self.register_buffer("logit_scale", scale)
        else:
            self.logit_scale = scale  # a Parameter registers itself

    def forward(self, input: Tensor, target: Tensor, *, token_weight: Tensor | None = None) -> Any:
        """The loss of ``input`` against ``target`` (and ``(loss, aux)`` with ``return_aux``);
        ``token_weight`` as in :func:`labelsmooth.cross_entropy`."""
        options: dict[str, Any] = dict(
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace=self.inplace,
            smoothing_prior=self.smoothing_prior,
            allow_negative=self.allow_negative,
            token_weight=token_weight,
            shift=self.shift,
            logit_scale=self.logit_scale,
            return_aux=False if self.return_aux is None else self.return_aux,
        )
        return LF.cross_entropy(input, target, self.weight, **options)

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
        if self.shift:
            parts.append("shift=True")
        if isinstance(self.logit_scale, Tensor):
            parts.append("logit_scale=<tensor>")
        elif self.logit_scale is not None:
            parts.append(f"logit_scale={self.logit_scale}")
        if self.return_aux is not None:
            parts.append(f"return_aux={self.return_aux}")
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
