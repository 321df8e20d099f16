"""Linear layer + label-smoothed cross-entropy in one call, without the N x C logits.

:func:`linear_cross_entropy` has ``torch.nn.functional.linear_cross_entropy``'s arguments and numbers
(torch 2.13), plus labelsmooth's extras, and computes the loss over chunks of rows
(``labelsmooth.kernels.linear``): a language model's head and loss in the memory of one chunk of logits.
:class:`LinearCrossEntropyLoss` is the module form; it holds only the options, the classifier weight
is passed in (typically the output embedding, ``model.lm_head.weight``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, Literal, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelsmooth import _options as O
from labelsmooth import _validate as V
from labelsmooth import functional as LF
from labelsmooth.kernels.linear import LinearCrossEntropyFunction, default_chunk_rows
from labelsmooth.reference import compute_dtype

_HALF = (torch.float16, torch.bfloat16)


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise V.ArgumentTypeError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    if chunk_size < 1:
        raise V.ArgumentError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return int(chunk_size)


def _check_accumulation_dtype(value: object, mm_dtype: torch.dtype) -> torch.dtype | None:
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise V.ArgumentTypeError(f"accumulation_dtype must be None or a torch.dtype, got {value!r}")
    if value != mm_dtype and not (value == torch.float32 and mm_dtype in _HALF):
        raise V.ArgumentError(
            f"accumulation_dtype must be None, torch.float32 or the matmul's dtype {mm_dtype}, got {value}"
        )
    return value


def _check_ignore_index(ignore_index: object) -> int | None:
    return None if ignore_index is None else V.check_index(ignore_index, "ignore_index")


def _check_operands(
    input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None, weight: Tensor | None
) -> None:
    """Shapes, dtypes and devices of the tensors (not their values)."""
    V.check_tensor(input, "input")
    V.check_tensor(linear_weight, "linear_weight")
    V.check_tensor(target, "target")
    V.check_floating(input, "input")
    V.check_floating(linear_weight, "linear_weight")
    if input.dim() < 1:
        raise V.ArgumentError("input must have at least one dimension (the features), got a 0-d tensor")
    if linear_weight.dim() != 2:
        raise V.ArgumentError(
            f"linear_weight must be 2-D (num_classes, in_features), got shape {tuple(linear_weight.shape)}"
        )
    num_classes, in_features = linear_weight.shape
    if num_classes == 0:
        raise V.ArgumentError(
            f"linear_weight must have at least one class (row), got shape {tuple(linear_weight.shape)}"
        )
    if input.shape[-1] != in_features:
        raise V.ArgumentError(
            f"input's last dimension ({input.shape[-1]}, shape {tuple(input.shape)}) must equal "
            f"linear_weight's in_features ({in_features}, shape {tuple(linear_weight.shape)})"
        )
    if linear_bias is not None:
        V.check_tensor(linear_bias, "linear_bias")
        V.check_floating(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (num_classes,):
            raise V.ArgumentError(f"linear_bias must have shape ({num_classes},), got {tuple(linear_bias.shape)}")
    V.check_weight(weight, num_classes)
    for name, t in (
        ("linear_weight", linear_weight),
        ("target", target),
        ("linear_bias", linear_bias),
        ("weight", weight),
    ):
        if t is not None and t.device != input.device:
            raise V.ArgumentError(f"{name} is on {t.device} but input is on {input.device}")
    if not LF.autocast_enabled(input.device.type):
        for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
            if t is not None and t.dtype != input.dtype:
                raise V.ArgumentTypeError(
                    f"{name} has dtype {t.dtype} but input has {input.dtype}; outside autocast "
                    "they must match (as for torch.nn.functional.linear)"
                )


def _resolve(
    backend: str,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mm_dtype: torch.dtype,
    functorch: bool,
    token_weight: Tensor | None = None,
) -> str:
    if functorch:
        # torch.func transforms and forward-mode dual tensors need plain torch ops, whatever was named
        # (as for labelsmooth.cross_entropy).
        return "reference"
    if backend == "triton":
        if not LF._triton_usable(input.device):
            raise V.ArgumentError(
                f"backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1) and triton "
                f"installed; input is on {input.device}"
            )
        if mm_dtype == torch.float64:
            raise V.ArgumentTypeError("backend='triton' does not support float64; use backend='chunked'")
    if backend != "auto":
        return backend
    if (
        target.requires_grad
        or (weight is not None and weight.requires_grad)
        or (token_weight is not None and token_weight.requires_grad)
    ):
        return "reference"  # the only backend that differentiates through target, weight and token_weight
    if input.device.type == "cpu" or mm_dtype == torch.float64 or not LF._triton_usable(input.device):
        return "chunked"  # with device-sized blocks off the CPU
    return "triton"


def _materialised_with_options(
    x2: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    allow_negative: bool,
    opts: O.Options,
    token_weight: Tensor | None,
    shift: bool,
    logit_scale: float | Tensor | None,
    return_aux: object,
    out_dtype: torch.dtype,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """backend="reference" with the language-model options: the full logits, then
    :func:`labelsmooth.cross_entropy`'s reference with the same options (autograd does the rest)."""
    logits = F.linear(x2, linear_weight, linear_bias)
    batch_shape = tuple(target.shape) if not target.is_floating_point() else tuple(target.shape[:-1])
    if opts.seq_len is not None:
        # cross_entropy's layout: (B, C, T) logits, a view of the (B, T, C) ones.
        logits = logits.reshape(*batch_shape, -1).transpose(1, 2)
        t = target
    else:
        t = target.reshape(-1, logits.shape[-1]) if target.is_floating_point() else target.reshape(-1)
        token_weight = None if token_weight is None else token_weight.reshape(-1)
    # The options' own checks ran on the caller's shapes; cross_entropy repeats them on these views.
    result = cast(Any, LF.cross_entropy)(
        logits,
        t,
        weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=eps,
        backend="reference",
        z_loss=z_loss,
        softcap=softcap,
        smoothing_prior=prior,
        allow_negative=allow_negative,
        token_weight=token_weight,
        shift=shift,
        logit_scale=logit_scale,
        return_aux=return_aux,
    )
    out: Tensor
    aux: dict[str, Tensor] | None
    out, aux = result if opts.aux is not None else (result, None)
    if reduction == "none":
        out = out.reshape(batch_shape)
    out = out.to(out_dtype)
    if aux is None:
        return out
    return out, {k: v if v.dim() == 0 else v.reshape(batch_shape) for k, v in aux.items()}


@overload
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    smoothing_prior: Tensor | None = None,
    allow_negative: bool = False,
    accumulation_dtype: torch.dtype | None = None,
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[False] = False,
) -> Tensor: ...


@overload
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    smoothing_prior: Tensor | None = None,
    allow_negative: bool = False,
    accumulation_dtype: torch.dtype | None = None,
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[True] | Iterable[str],
) -> tuple[Tensor, dict[str, Tensor]]: ...


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    smoothing_prior: Tensor | None = None,
    allow_negative: bool = False,
    accumulation_dtype: torch.dtype | None = None,
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: bool | Iterable[str] = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """``cross_entropy(linear(input, linear_weight, linear_bias), target)`` without the full logits.

    Same arguments and numbers as ``torch.nn.functional.linear_cross_entropy`` (torch 2.13, without its
    ``options``), plus labelsmooth's extras. The rows are processed in chunks: each chunk's logits are
    formed by one matmul, turned into row losses and their gradient (written over the same buffer) by a
    fused cross-entropy kernel, and folded at once into the gradients of ``input``, ``linear_weight``
    and ``linear_bias`` (by default accumulated in float32 for bfloat16/float16 weights; see
    ``accumulation_dtype``). The largest temporary is
    one chunk of logits. The loss per row is :func:`labelsmooth.cross_entropy`'s: for class index y,
    ``(1-eps) * w_y * (-log p_y) + (eps/C) * sum_c w_c * (-log p_c)``; ``"mean"`` divides by the sum of
    ``w_y`` over rows whose target is not ``ignore_index`` (by the row count for probability targets).

    Gradients: "mean" and "sum" compute them during forward and keep the three gradients (the size of
    input, linear_weight and linear_bias) until backward, which multiplies them by grad_output;
    backward through the same graph twice is an error. "none" keeps nothing beyond the operands and
    recomputes each chunk's logits in backward (one more matmul), because a per-row grad_output cannot
    be applied to a weight gradient already summed over rows. docs/linear.md has the details.

    Args:
        input: (H), (N, H) or (B, T, H) features (any number of leading batch dimensions; torch accepts
            only (H) and (N, H)).
        linear_weight: (C, H) classifier weight.
        target: class indices of the batch shape (``()``, ``(N)``, ``(B, T)``), or floating class
            probabilities of shape ``(*batch, C)``.
        linear_bias: optional (C,) bias.
        weight: optional (C,) class weights.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: rows whose class-index target equals it are ignored; None means -100 for class
            indices, and it must be None for probability targets (as in torch).
        label_smoothing: eps in [0, 1].
        z_loss: adds ``z_loss * logsumexp(logits)**2`` to every non-ignored row.
        softcap: if set, logits become ``softcap * tanh(logits / softcap)`` first.
        chunk_size: rows per chunk; None picks
            :func:`labelsmooth.kernels.linear.default_chunk_rows` (CPU: ~32 MiB of float32 logits and at
            least 128 rows; accelerators: 256 MiB of logits, at most 1/64 of device memory, in
            multiples of 128 rows).
        smoothing_prior: optional (C,) probability vector to smooth towards instead of the uniform
            1/C (prior smoothing, as in :func:`labelsmooth.cross_entropy`).
        allow_negative: accept ``label_smoothing < 0`` (negative smoothing, as in
            :func:`labelsmooth.cross_entropy`).
        accumulation_dtype: the dtype in which the weight and bias gradients are summed over the
            chunks (fused backends): None (default) or ``torch.float32`` sums half-precision ones in
            float32 (on CUDA one GEMM per chunk into the float32 sum: 8 bytes of traffic per weight
            element per chunk, plus a float32 copy of the weight gradient until it is cast at the
            end), or the matmul's own dtype (the weight's, or autocast's), as Liger-Kernel does: 4
            bytes per element per chunk and no float32 copy, at the price of one rounding to bf16/fp16
            per chunk. docs/linear.md has the numbers.
        backend: ``"auto"`` (chunked kernel on CPU, Triton on CUDA when installed, reference when
            ``weight`` or ``target`` requires grad), ``"chunked"``, ``"triton"`` (fused, per chunk),
            or ``"reference"`` / ``"torch"``: the materialised ``F.linear`` followed by
            :func:`labelsmooth.cross_entropy` with that backend (full logits; any order of
            differentiation with ``"reference"``). Inside ``torch.func`` transforms and for
            forward-mode dual tensors every backend computes through the reference.
        token_weight: per-row weights r_n of the batch shape (or 1-D, one per row): row losses and
            their gradients are multiplied by r_n, and ``"mean"`` divides by sum_n r_n w_{y_n} over the
            rows not ignored. The fused backends do not differentiate it (use ``"reference"``).
        shift: next-token prediction: input (B, T, H) and target (B, T); row (b, t) is scored against
            ``target[b, t + 1]`` and each sequence's last row is ignored (loss 0, gradient 0, not in
            ``"mean"``). Views only: the hidden states and labels are not copied.
        logit_scale: a float or a 0-dim tensor s: the logits are ``s * (input @ W.T + b)`` (before
            softcap and smoothing), multiplied inside each chunk; a tensor that requires grad gets
            its gradient.
        return_aux: True, or names from ``("z_loss", "lse", "accuracy", "predicted", "entropy")``:
            returns ``(loss, aux)`` with ``aux`` a dict of detached tensors computed in the same
            pass over each chunk (see ``docs/lm-options.md``).

    Returns:
        The loss: a scalar, or of the batch shape for ``reduction="none"``; in the matmul's dtype
        (float32 under autocast, where torch computes cross-entropy in float32). With ``return_aux``,
        ``(loss, aux)``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> h = torch.randn(6, 8, requires_grad=True); w = torch.randn(11, 8, requires_grad=True)
        >>> y = torch.tensor([1, 0, 10, 3, -100, 7])
        >>> loss = ls.linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=4)
        >>> want = torch.nn.functional.cross_entropy(h @ w.T, y, label_smoothing=0.1)
        >>> torch.allclose(loss, want)
        True
        >>> loss.backward(); w.grad.shape
        torch.Size([11, 8])

        Next-token prediction on (B, T, H) hidden states, with the aux outputs:

        >>> hidden = torch.randn(2, 5, 8); tokens = torch.randint(0, 11, (2, 5))
        >>> loss, aux = ls.linear_cross_entropy(hidden, w, tokens, shift=True,
        ...                                     return_aux=("accuracy", "predicted"))
        >>> aux["predicted"][:, -1]  # the last position predicts nothing
        tensor([-100, -100])
        >>> want = torch.nn.functional.cross_entropy((hidden[:, :-1] @ w.T).transpose(1, 2), tokens[:, 1:])
        >>> torch.allclose(loss, want)
        True

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """
    _check_operands(input, linear_weight, target, linear_bias, weight)
    allow_negative = V.check_bool(allow_negative, "allow_negative")
    eps = V.check_label_smoothing(label_smoothing, allow_negative=allow_negative)
    reduction = V.check_reduction(reduction)
    z_loss = V.check_nonnegative_float(z_loss, "z_loss")
    softcap = V.check_softcap(softcap)
    ignore_index = _check_ignore_index(ignore_index)
    chunk_size = _check_chunk_size(chunk_size)
    LF.check_backend(backend)

    num_classes, in_features = linear_weight.shape
    prior = V.check_prior(smoothing_prior, num_classes, input.device)
    batch_shape = tuple(input.shape[:-1])
    probs = target.is_floating_point()
    if probs:
        if tuple(target.shape) != (*batch_shape, num_classes):
            raise V.ArgumentError(
                f"a floating-point target holds class probabilities and must have shape "
                f"{(*batch_shape, num_classes)}, got {tuple(target.shape)}"
            )
        if ignore_index is not None:
            raise V.ArgumentError(f"ignore_index must be None with class-probability targets, got {ignore_index}")
        ignore_index = -100
    else:
        V.check_integer(target, "target")
        if tuple(target.shape) != batch_shape:
            raise V.ArgumentError(
                f"target of class indices must have shape {batch_shape} for input of shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        ignore_index = -100 if ignore_index is None else ignore_index
    opts = O.parse_options(
        token_weight=token_weight,
        shift=shift,
        logit_scale=logit_scale,
        return_aux=return_aux,
        target=target,
        batch_shape=batch_shape,
        probs=probs,
        device=input.device,
    )

    device_type = input.device.type
    autocast = LF.autocast_enabled(device_type) and input.dtype != torch.float64
    mm_dtype = torch.get_autocast_dtype(device_type) if autocast else input.dtype
    out_dtype = torch.float32 if autocast and mm_dtype in _HALF else mm_dtype
    scale_t = opts.logit_scale if isinstance(opts.logit_scale, Tensor) else None
    functorch = LF._under_functorch(
        input, linear_weight, target, linear_bias, weight, prior, opts.token_weight, scale_t
    )
    name = _resolve(backend, input, target, weight, mm_dtype, functorch, opts.token_weight)
    if name == "torch":
        O.reject_options(name, opts)
    accumulation_dtype = _check_accumulation_dtype(accumulation_dtype, mm_dtype)

    x2 = input.reshape(-1, in_features)
    t2 = target.reshape(-1, num_classes) if probs else target.reshape(-1).long()
    if name == "reference" and opts.active:
        return _materialised_with_options(
            x2, linear_weight, linear_bias, target, weight, ignore_index, reduction, eps, z_loss, softcap, prior,
            allow_negative, opts, token_weight, shift, logit_scale, return_aux, out_dtype,
        )  # fmt: skip
    if name in ("reference", "torch"):
        # The materialised path: the full logits, then the plain cross-entropy (autograd does the rest).
        logits = F.linear(x2, linear_weight, linear_bias)
        out: Tensor = LF.cross_entropy(
            logits,
            t2,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=eps,
            backend=name,
            z_loss=z_loss,
            softcap=softcap,
            smoothing_prior=prior,
            allow_negative=allow_negative,
        )
        return (out.reshape(batch_shape) if reduction == "none" else out).to(out_dtype)

    LF.check_no_grad_beyond_logits(name, weight, target)
    O.check_no_token_weight_grad(name, opts.token_weight)
    if not probs:
        V.check_class_indices(t2, num_classes, ignore_index)
    cdt = compute_dtype(mm_dtype)
    w_cls = None if weight is None else weight.to(cdt).contiguous()
    if probs and t2.stride(-1) != 1:
        t2 = t2.contiguous()
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows, seq = x2.shape[0], opts.seq_len
    # Shift: the first N - 1 hidden states are scored against target.reshape(-1)[1:] (views, no copy);
    # sequence ends get row weight 0 and their gradient rows are zeroed in each chunk.
    _, t2 = O.shift_views(x2, t2, seq)
    keep = r = None
    if opts.active:
        keep = O.keep_rows(t2, ignore_index, seq)
        r = O.row_weights(opts.token_weight, num_rows, seq, cdt, input.device)
        if r is not None and keep is not None:
            # Set, not multiplied: an ignored row's token weight may be anything (NaN included).
            r = torch.where(keep, r, torch.zeros((), dtype=cdt, device=r.device))
    denom = O.mean_denominator(t2, w_cls, ignore_index, cdt, r) if reduction == "mean" else None
    aux_pieces: dict[str, Tensor] = {}
    kaux = O.kernel_aux(opts.aux, z_loss)
    rows = chunk_size or default_chunk_rows(x2.shape[0], num_classes, mm_dtype, input.device)
    # Autocast off inside: the kernels' float32 arithmetic must not be recast, and the matmuls run in
    # mm_dtype explicitly.
    with LF.autocast_disabled(device_type):
        # torch leaves Function.apply unannotated; forward fixes what it returns.
        out = LinearCrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
            x2,
            linear_weight,
            linear_bias,
            t2,
            w_cls,
            ignore_index,
            eps,
            z_loss,
            softcap,
            reduction,
            name,
            rows,
            mm_dtype,
            denom,
            torch.is_grad_enabled(),
            prior,
            accumulation_dtype,
            opts.logit_scale,
            r,
            keep,
            seq,
            kaux,
            aux_pieces,
        )
        if reduction == "none":
            if opts.active:
                out = O.pad_rows(O.weight_rows(out, r, keep), num_rows)
            out = out.reshape(batch_shape)
    out = out.to(out_dtype)
    if opts.aux is None:
        return out
    aux = O.build_aux(
        opts.aux,
        aux_pieces,
        target=t2,
        ignore_index=ignore_index,
        weight=w_cls,
        row_weight=r,
        keep=keep,
        reduction=reduction,
        denom=denom,
        z_loss=z_loss,
        num_rows=num_rows,
        batch_shape=batch_shape,
        dtype=cdt,
    )
    return out, aux


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`labelsmooth.linear_cross_entropy`: holds only the options.

    Unlike ``torch.nn.LinearCrossEntropyLoss``, which owns its own ``nn.Linear``, the classifier weight
    (and bias) are passed to :meth:`forward`, so the module can sit after an existing head (or a tied
    output embedding) without new parameters. Class weights are a buffer (they follow ``.to()``).

    The language-model options of :func:`labelsmooth.linear_cross_entropy`: ``shift``,
    ``logit_scale`` (a float, or a 0-dim tensor; an ``nn.Parameter`` becomes a parameter of this
    module and is learned) and ``return_aux`` are held by the module; ``token_weight`` changes with
    every batch and is an argument of :meth:`forward`.

    Shape:
        input (H), (N, H) or (B, T, H); linear_weight (C, H); target of the batch shape, or floating
        probabilities of shape (*batch, C); the output is a scalar, or of the batch shape for "none"
        (with ``return_aux``, ``(loss, aux)``).

    Example:
        >>> import torch, labelsmooth as ls
        >>> head = torch.nn.Linear(16, 100)
        >>> loss_fn = ls.LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> hidden = torch.randn(2, 5, 16, requires_grad=True)
        >>> loss = loss_fn(hidden, head.weight, torch.randint(0, 100, (2, 5)), head.bias)
        >>> loss.backward(); head.weight.grad.shape
        torch.Size([100, 16])
    """

    weight: Tensor | None
    smoothing_prior: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        backend: str = "auto",
        smoothing_prior: Tensor | None = None,
        allow_negative: bool = False,
        accumulation_dtype: torch.dtype | None = None,
        shift: bool = False,
        logit_scale: float | Tensor | None = None,
        return_aux: bool | Iterable[str] = False,
    ) -> None:
        super().__init__()
        self.shift = V.check_bool(shift, "shift")
        checked = O.check_logit_scale(
            logit_scale, logit_scale.device if isinstance(logit_scale, Tensor) else torch.device("cpu")
        )
        # A tensor is kept as given (an nn.Parameter registers itself and is learned); 1.0 is no scale.
        self.logit_scale = logit_scale if isinstance(logit_scale, Tensor) else checked
        aux = O.check_return_aux(return_aux)
        self.return_aux: tuple[str, ...] | bool = False if aux is None else aux
        if accumulation_dtype is not None and not isinstance(accumulation_dtype, torch.dtype):
            raise V.ArgumentTypeError(f"accumulation_dtype must be None or a torch.dtype, got {accumulation_dtype!r}")
        self.accumulation_dtype = accumulation_dtype
        self.allow_negative = V.check_bool(allow_negative, "allow_negative")
        if smoothing_prior is not None:
            smoothing_prior = V.check_prior(smoothing_prior, None, None)
        self.register_buffer("smoothing_prior", smoothing_prior)
        if weight is not None:
            V.check_tensor(weight, "weight")
            V.check_floating(weight, "weight")
            if weight.dim() != 1:
                raise V.ArgumentError(f"weight must be a 1-D tensor of class weights, got shape {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.reduction = V.check_reduction(reduction)
        self.ignore_index = _check_ignore_index(ignore_index)
        self.label_smoothing = V.check_label_smoothing(label_smoothing, allow_negative=self.allow_negative)
        self.z_loss = V.check_nonnegative_float(z_loss, "z_loss")
        self.softcap = V.check_softcap(softcap)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.backend = LF.check_backend(backend)

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
        *,
        token_weight: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        # cast: the overloads cannot tell from the stored return_aux which result comes back.
        result: Tensor | tuple[Tensor, dict[str, Tensor]] = cast(Any, linear_cross_entropy)(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            backend=self.backend,
            smoothing_prior=self.smoothing_prior,
            allow_negative=self.allow_negative,
            accumulation_dtype=self.accumulation_dtype,
            token_weight=token_weight,
            shift=self.shift,
            logit_scale=self.logit_scale,
            return_aux=self.return_aux,
        )
        return result

    def extra_repr(self) -> str:
        parts = [
            f"label_smoothing={self.label_smoothing}",
            f"reduction={self.reduction!r}",
            f"backend={self.backend!r}",
        ]
        for name in ("ignore_index", "softcap", "chunk_size"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.shift:
            parts.append("shift=True")
        if isinstance(self.logit_scale, float):
            parts.append(f"logit_scale={self.logit_scale}")
        if self.return_aux:
            parts.append(f"return_aux={self.return_aux!r}")
        return ", ".join(parts)
