"""Torch-compatible loss functions: argument checks, shape handling and backend dispatch.

Every backend computes the same thing on a 2-D problem: per-row losses of (M, C) logits. This module
turns torch's input shapes into that problem (class dimension last, batch and spatial dimensions
flattened), picks a backend from the tensor's device at call time, and applies the reduction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from labelsmooth import _options as O
from labelsmooth import _validate as V
from labelsmooth import reference
from labelsmooth.kernels._memory import empty_for_grad
from labelsmooth.targets import smooth_binary_labels

BACKENDS = ("auto", "reference", "chunked", "triton", "torch")

# Below this many logits a fused call's fixed cost (~1 ms of Python and small ops on CPU) exceeds
# torch's whole loss, so "auto" hands small CPU problems without z_loss/softcap to torch's own kernel
# (measured on 2 cores: 128 x 10, torch 0.45 ms vs chunked 1.3 ms; 64 x 32000, 9.3 ms vs 7.4 ms).
SMALL_CPU_PROBLEM = 1 << 20


def _reference(
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    inplace: bool,
    reduction: str,
    opts: O.Options = O.OFF,
    batch_shape: tuple[int, ...] = (),
) -> Tensor | tuple[Tensor, dict[str, Tensor] | None]:
    # The reference has no buffers of its own to save, so ``inplace`` has nothing to do here.
    if opts.active:
        res = reference.cross_entropy(
            x2,
            t2,
            weight,
            ignore_index,
            eps,
            z_loss,
            softcap,
            prior,
            reduction=reduction,
            token_weight=opts.token_weight,
            seq_len=opts.seq_len,
            logit_scale=opts.logit_scale,
            aux=opts.aux,
        )
        if not isinstance(res, tuple):
            return res, None
        loss, aux = res
        # Per-row items come back as (N,) rows: give them the batch shape, as the loss's "none" rows.
        return loss, {k: v.reshape(batch_shape) if v.dim() == 1 else v for k, v in aux.items()}
    rows = reference.ce_rows(x2, t2, weight, ignore_index, eps, z_loss, softcap, prior)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / _mean_denominator(t2, weight, ignore_index, rows.dtype)


def _torch(
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    inplace: bool,
    reduction: str,
    opts: O.Options = O.OFF,
    batch_shape: tuple[int, ...] = (),
) -> Tensor:
    # torch's own kernel: the fastest for small problems; it knows no z_loss, softcap, prior or eps < 0,
    # nor any of the language-model options.
    O.reject_options("torch", opts)
    if z_loss or softcap is not None or prior is not None or eps < 0:
        raise V.ArgumentError(
            "backend='torch' supports none of z_loss, softcap, smoothing_prior and negative "
            "label_smoothing; use 'auto' or 'chunked'"
        )
    w = None if weight is None else weight.to(x2.dtype)
    return F.cross_entropy(x2, t2, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)


def _mean_denominator(t2: Tensor, weight: Tensor | None, ignore_index: int, dtype: torch.dtype) -> Tensor:
    """What ``reduction="mean"`` divides by without row weights (see :func:`labelsmooth._options.mean_denominator`)."""
    return O.mean_denominator(t2, weight, ignore_index, dtype)


class _FusedCrossEntropy(torch.autograd.Function):
    """Autograd glue for the chunked kernel: the gradient is computed in forward, scaled in backward.

    For "mean" the kernel already divides the gradient by the denominator, so that backward of a loss
    whose grad_output is 1 (the usual ``loss.backward()``) has nothing left to do: on CPU that saves a
    whole read and write of the N x C gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x2: Tensor,
        t2: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        eps: float,
        z_loss: float,
        softcap: float | None,
        prior: Tensor | None,
        inplace: bool,
        kernel: Callable[..., Tensor],
        reduction: str,
        want_grad: bool,
        scale: Tensor | None = None,
        opts: O.Options = O.OFF,
        batch_shape: tuple[int, ...] = (),
    ) -> Tensor | tuple[Tensor, ...]:
        ctx.dscale = None
        if opts.active:
            return _chunked_options_forward(
                ctx, x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, kernel, reduction,
                want_grad, scale, opts, batch_shape,
            )  # fmt: skip
        grad = grad_scale = None
        cdt = reference.compute_dtype(x2.dtype)
        denom = _mean_denominator(t2, weight, ignore_index, cdt) if reduction == "mean" else None
        if want_grad and ctx.needs_input_grad[0]:
            grad = x2 if inplace else empty_for_grad(x2)
            if denom is not None:
                # With every row ignored this is 1/0, but the kernels set ignored rows to 0 outright,
                # so the gradient is 0 there (as torch's) and NaN only where torch's is (zero weights).
                grad_scale = 1.0 / denom
        rows = kernel(x2, t2, weight, ignore_index, eps, z_loss, softcap, grad, grad_scale=grad_scale, prior=prior)
        ctx.grad = grad
        ctx.reduction = reduction
        # Ignored rows get no gradient whatever flows back (an inf or NaN grad_output included).
        ctx.keep = None if t2.is_floating_point() or reduction != "none" else t2 != ignore_index
        if reduction == "none":
            return rows
        return rows.sum() if denom is None else rows.sum() / denom

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_aux_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        _no_double_backward()
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "the fused cross-entropy gradient was already consumed: backward through it "
                "twice (retain_graph=True) needs backend='reference'"
            )
        ctx.grad = None
        # Scaled in place: the buffer is used once, and a second N x C tensor would double peak memory.
        if ctx.reduction == "none":
            if ctx.keep is not None:
                grad_out = torch.where(ctx.keep, grad_out, torch.zeros_like(grad_out))
            grad.mul_(grad_out.unsqueeze(1))
        elif (
            grad_out.device.type != "cpu" or torch.compiler.is_compiling() or grad_out.item() != 1.0
        ):  # reading a CPU scalar costs no device synchronisation
            grad.mul_(grad_out)
        grad_scale = None
        if ctx.dscale is not None:
            dscale, ctx.dscale = ctx.dscale, None
            go = grad_out[: dscale.shape[0]] if ctx.reduction == "none" else grad_out
            grad_scale = O.logit_scale_grad(dscale, go, ctx.reduction).to(ctx.scale_dtype)
        grad_x = grad if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None, None, None, None, None, None, None, grad_scale, None, None


class _TritonCrossEntropy(torch.autograd.Function):
    """Autograd glue for the Triton kernels: a split forward and backward.

    Forward reads the logits once and keeps 16 bytes of statistics per row; backward reads the logits
    again and writes the gradient already multiplied by grad_output and, for "mean", by 1/denominator,
    both read on the device inside the kernel. Any grad_output therefore costs nothing beyond the kernel
    (``loss.backward()``, ``(loss_sum / n_tokens).backward()`` with a device tensor ``n_tokens``, a
    masked or weighted sum of ``reduction="none"`` rows) and nothing is synchronised with the host. The
    only N x C tensor kept from forward to backward is the logits themselves (saved for backward; the
    gradient-in-forward design keeps a gradient of the same size instead), and backward can run twice
    (``retain_graph``) unless ``inplace`` consumed the logits. docs/kernels.md compares the traffic
    with the fused design.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x2: Tensor,
        t2: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        eps: float,
        z_loss: float,
        softcap: float | None,
        prior: Tensor | None,
        inplace: bool,
        reduction: str,
        want_grad: bool,
        scale: Tensor | None = None,
        opts: O.Options = O.OFF,
        batch_shape: tuple[int, ...] = (),
    ) -> Tensor | tuple[Tensor, ...]:
        from labelsmooth.kernels import triton_ce

        ctx.lm = None
        if opts.active:
            return _triton_options_forward(
                ctx, x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, reduction, want_grad,
                scale, opts, batch_shape,
            )  # fmt: skip
        save = want_grad and ctx.needs_input_grad[0]
        rows, stats = triton_ce.forward(
            x2,
            t2,
            weight,
            ignore_index,
            eps,
            z_loss,
            softcap,
            save_stats=save,
            check_targets=x2.device.type != "cpu",
            prior=prior,
        )
        denom = _mean_denominator(t2, weight, ignore_index, rows.dtype) if reduction == "mean" else None
        if save:
            # Saved through autograd, so that changing the logits before backward is an error.
            ctx.save_for_backward(x2, t2, weight, stats, prior)
            # "mean" with every row ignored gives 1/0 here, but ignored rows get 0 outright, so the
            # gradient is 0 there (as torch's) and NaN only where torch's is (zero weights).
            ctx.scale = None if denom is None else denom.reciprocal()
            ctx.options = (ignore_index, eps, softcap, inplace)
            ctx.consumed = False
        if reduction == "none":
            return rows
        return rows.sum() if denom is None else rows.sum() / denom

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_aux_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        from labelsmooth.kernels import triton_ce

        _no_double_backward()
        if ctx.consumed:
            raise RuntimeError(
                "the fused cross-entropy gradient was written over the logits (inplace=True) "
                "by an earlier backward: backward through it twice (retain_graph=True) needs "
                "inplace=False"
            )
        if ctx.lm is not None:
            return _triton_options_backward(ctx, grad_out)
        x2, t2, weight, stats, prior = ctx.saved_tensors
        ignore_index, eps, softcap, inplace = ctx.options
        grad = x2 if inplace else torch.empty_like(x2)
        triton_ce.backward(
            x2,
            t2,
            weight,
            ignore_index,
            eps,
            softcap,
            stats,
            grad,
            grad_output=grad_out,
            grad_scale=ctx.scale,
            prior=prior,
        )
        if inplace:
            ctx.consumed = True
            # The kernel wrote through a pointer: tell autograd, so that any other operation that saved
            # these logits for its own backward raises instead of reading the gradient as logits.
            torch.autograd.graph.increment_version(x2)
        return grad, None, None, None, None, None, None, None, None, None, None, None, None, None


def _option_rows(
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    opts: O.Options,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The rows a kernel scores under ``opts`` (views; with shift one row fewer), their (M,) row
    weights r (or None), kept rows (or None) and the "mean" denominator (or None)."""
    xk, tk = O.shift_views(x2, t2, opts.seq_len)
    r = O.row_weights(opts.token_weight, x2.shape[0], opts.seq_len, dtype, x2.device)
    keep = O.keep_rows(tk, ignore_index, opts.seq_len)
    denom = O.mean_denominator(tk, weight, ignore_index, dtype, r) if reduction == "mean" else None
    return xk, tk, r, keep, denom


def _options_outputs(
    ctx: Any,
    rows_k: Tensor,
    pieces: dict[str, Tensor],
    tk: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    z_loss: float,
    reduction: str,
    r: Tensor | None,
    keep: Tensor | None,
    denom: Tensor | None,
    opts: O.Options,
    num_rows: int,
    batch_shape: tuple[int, ...],
) -> Tensor | tuple[Tensor, ...]:
    """The loss (and the aux values, non-differentiable outputs after it) from the kernel's rows."""
    rows = O.weight_rows(rows_k, r, keep)
    loss = O.pad_rows(rows, num_rows) if reduction == "none" else O.reduce_rows(rows, reduction, denom)
    if opts.aux is None:
        return loss
    aux = O.build_aux(
        opts.aux,
        pieces,
        target=tk,
        ignore_index=ignore_index,
        weight=weight,
        row_weight=r,
        keep=keep,
        reduction=reduction,
        denom=denom,
        z_loss=z_loss,
        num_rows=num_rows,
        batch_shape=batch_shape,
        dtype=rows.dtype,
    )
    values = tuple(aux[name] for name in opts.aux)
    ctx.mark_non_differentiable(*values)
    return (loss, *values)


def _chunked_options_forward(
    ctx: Any,
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    inplace: bool,
    kernel: Callable[..., Any],
    reduction: str,
    want_grad: bool,
    scale: Tensor | None,
    opts: O.Options,
    batch_shape: tuple[int, ...],
) -> Tensor | tuple[Tensor, ...]:
    """:class:`_FusedCrossEntropy`'s forward with any of the language-model options on."""
    cdt = reference.compute_dtype(x2.dtype)
    num_rows, seq_len = x2.shape[0], opts.seq_len
    xk, tk, r, keep, denom = _option_rows(x2, t2, weight, ignore_index, reduction, opts, cdt)
    need_x = want_grad and ctx.needs_input_grad[0]
    need_s = want_grad and scale is not None and ctx.needs_input_grad[12]
    grad = dscale = grad_scale = None
    if need_x or need_s:
        # Only the logit scale wants a gradient: the kernel still writes one (its pass computes d/ds).
        grad = x2 if inplace and need_x else empty_for_grad(x2)
        grad_scale = O.row_grad_scale(r, denom)
        if need_s:
            dscale = torch.empty(xk.shape[0], dtype=cdt, device=x2.device)
    kaux = O.kernel_aux(opts.aux, z_loss)
    extra: dict[str, Any] = {}
    if opts.logit_scale is not None:
        extra["logit_scale"] = scale.detach() if scale is not None else opts.logit_scale
    if dscale is not None:
        extra["dscale"] = dscale
    if kaux:
        extra["aux"] = kaux
    res = kernel(
        xk,
        tk,
        weight,
        ignore_index,
        eps,
        z_loss,
        softcap,
        None if grad is None else grad[: xk.shape[0]],
        grad_scale=grad_scale,
        prior=prior,
        **extra,
    )
    rows_k, pieces = res if kaux else (res, {})
    if grad is not None:
        # Sequence ends got r = 0, but 0 times a NaN/Inf logit's gradient is NaN: set them (B rows).
        O.zero_sequence_ends(grad, seq_len)
    if dscale is not None:
        O.zero_sequence_ends(dscale, seq_len)
        assert scale is not None  # dscale is only allocated for a tensor logit_scale
        ctx.scale_dtype = scale.dtype
    ctx.grad = grad
    ctx.dscale = dscale
    ctx.reduction = reduction
    ctx.keep = None if reduction != "none" or keep is None else O.pad_rows(keep, num_rows, False)
    return _options_outputs(
        ctx, rows_k, pieces, tk, weight, ignore_index, z_loss, reduction, r, keep, denom, opts, num_rows, batch_shape
    )


def _triton_options_forward(
    ctx: Any,
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    inplace: bool,
    reduction: str,
    want_grad: bool,
    scale: Tensor | None,
    opts: O.Options,
    batch_shape: tuple[int, ...],
) -> Tensor | tuple[Tensor, ...]:
    """:class:`_TritonCrossEntropy`'s forward with any of the language-model options on. The row
    weights (and 1/D for "mean") reach the gradient through backward's per-row grad_output."""
    from labelsmooth.kernels import triton_ce

    num_rows = x2.shape[0]
    xk, tk, r, keep, denom = _option_rows(x2, t2, weight, ignore_index, reduction, opts, torch.float32)
    need_x = want_grad and ctx.needs_input_grad[0]
    need_s = want_grad and scale is not None and ctx.needs_input_grad[11]
    save = need_x or need_s
    s32 = None
    if opts.logit_scale is not None:
        s32 = O.logit_scale_tensor(scale.detach() if scale is not None else opts.logit_scale, x2.device, torch.float32)
    kaux = O.kernel_aux(opts.aux, z_loss)
    extra: dict[str, Any] = {}
    if s32 is not None:
        extra["logit_scale"] = s32
    if kaux:
        extra["aux"] = kaux
    res = triton_ce.forward(
        xk,
        tk,
        weight,
        ignore_index,
        eps,
        z_loss,
        softcap,
        save_stats=save,
        check_targets=x2.device.type != "cpu",
        prior=prior,
        **extra,
    )
    if kaux:
        rows_k, stats, pieces = res
    else:
        (rows_k, stats), pieces = res, {}
    if save:
        ctx.save_for_backward(x2, t2, weight, stats, prior)
        ctx.options = (ignore_index, eps, softcap, inplace)
        ctx.consumed = False
        ctx.reduction = reduction
        ctx.lm = (
            r,
            None if denom is None else denom.reciprocal(),
            s32,
            need_x,
            None if scale is None else scale.dtype if need_s else None,
            opts.seq_len,
            xk.shape[0],
        )
    return _options_outputs(
        ctx, rows_k, pieces, tk, weight, ignore_index, z_loss, reduction, r, keep, denom, opts, num_rows, batch_shape
    )


def _triton_options_backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    """:class:`_TritonCrossEntropy`'s backward with any of the language-model options on."""
    from labelsmooth.kernels import triton_ce

    x2, t2, weight, stats, prior = ctx.saved_tensors
    ignore_index, eps, softcap, inplace = ctx.options
    r, recip, s32, need_x, scale_dtype, seq_len, kernel_rows = ctx.lm
    grad = x2 if inplace and need_x else torch.empty_like(x2)
    xk, tk = O.shift_views(x2, t2, seq_len)
    # Per-row grad_output: the caller's (a row of it for "none"), times the row weight r.
    go = grad_out.reshape(-1)[:kernel_rows] if ctx.reduction == "none" else grad_out
    if r is not None:
        go = r * go.to(r.dtype)
    dscale = None
    extra: dict[str, Any] = {}
    if s32 is not None:
        extra["logit_scale"] = s32
    if scale_dtype is not None:
        dscale = torch.empty(kernel_rows, dtype=torch.float32, device=x2.device)
        extra["dscale"] = dscale
    triton_ce.backward(
        xk,
        tk,
        weight,
        ignore_index,
        eps,
        softcap,
        stats,
        grad[:kernel_rows],
        grad_output=go,
        grad_scale=recip,
        prior=prior,
        **extra,
    )
    O.zero_sequence_ends(grad, seq_len)
    grad_s = None
    if dscale is not None:
        grad_s = O.zero_sequence_ends(dscale, seq_len).sum().to(scale_dtype)
    if inplace and need_x:
        ctx.consumed = True
        torch.autograd.graph.increment_version(x2)
    return grad if need_x else None, None, None, None, None, None, None, None, None, None, None, grad_s, None, None


def _no_double_backward() -> None:
    # Backward runs with grad enabled only for create_graph=True. The fused gradient is computed by a
    # kernel autograd cannot see: differentiating it again would silently drop the softmax Hessian.
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the fused cross-entropy backends give a gradient that cannot be differentiated "
            "again (create_graph=True, gradient penalties, double backward); use "
            "backend='reference'"
        )


def check_no_grad_beyond_logits(name: str, weight: Tensor | None, target: Tensor) -> None:
    """Raise if ``weight`` or ``target`` requires grad: the fused backends ``name`` differentiate only
    the logits (shared by every fused entry point, so the error reads the same from each)."""
    if weight is not None and weight.requires_grad:
        raise V.ArgumentError(
            f"backend={name!r} does not compute a gradient for weight, which requires grad; use backend='reference'"
        )
    if target.requires_grad:
        raise V.ArgumentError(
            f"backend={name!r} does not compute a gradient for target, which requires grad; "
            "use backend='reference' (or detach the target)"
        )


def _fused(apply: Callable[..., Tensor], name: str) -> Callable[..., Tensor]:
    """A backend running ``apply(x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace,
    reduction, want_grad)`` (one of the autograd Functions here) after the checks every fused backend
    shares."""

    def run(
        x2: Tensor,
        t2: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        eps: float,
        z_loss: float,
        softcap: float | None,
        prior: Tensor | None,
        inplace: bool,
        reduction: str,
        opts: O.Options = O.OFF,
        batch_shape: tuple[int, ...] = (),
    ) -> Any:
        check_no_grad_beyond_logits(name, weight, t2)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        if inplace and x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]:
            inplace = False  # rows share memory (an expanded tensor): the gradient needs its own buffer
        if not opts.active:
            # Under no_grad nothing will call backward: compute no gradient (and consume no logits).
            want_grad = torch.is_grad_enabled() and x2.requires_grad
            return apply(x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, reduction, want_grad)
        O.check_no_token_weight_grad(name, opts.token_weight)
        scale = opts.logit_scale if isinstance(opts.logit_scale, Tensor) else None
        want_grad = torch.is_grad_enabled() and (x2.requires_grad or (scale is not None and scale.requires_grad))
        out = apply(
            x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, reduction, want_grad, scale, opts,
            batch_shape,
        )  # fmt: skip
        if opts.aux is None:
            return out, None
        outputs: tuple[Tensor, ...] = out if isinstance(out, tuple) else (out,)
        return outputs[0], dict(zip(opts.aux, outputs[1:], strict=True))

    return run


def _apply_chunked(
    x2: Tensor,
    t2: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    prior: Tensor | None,
    inplace: bool,
    reduction: str,
    want_grad: bool,
    *options: object,
) -> Any:
    from labelsmooth.kernels.chunked import fused_ce

    # torch leaves Function.apply unannotated; forward above fixes what it returns (a tuple with aux).
    return _FusedCrossEntropy.apply(  # type: ignore[no-untyped-call]
        x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, fused_ce, reduction, want_grad, *options
    )


def _apply_triton(*args: object) -> Any:
    try:
        import labelsmooth.kernels.triton_ce  # noqa: F401
    except ImportError as exc:  # triton is an optional dependency
        raise ImportError("backend='triton' needs the optional dependency triton: pip install triton") from exc
    return _TritonCrossEntropy.apply(*args)  # type: ignore[no-untyped-call]  # apply is unannotated


# Each returns the loss, or (loss, aux dict or None) when given options that are on.
_BACKENDS: dict[str, Callable[..., Any]] = {
    "reference": _reference,
    "chunked": _fused(_apply_chunked, "chunked"),
    "triton": _fused(_apply_triton, "triton"),
    "torch": _torch,
}


def _triton_usable(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: object) -> str:
    """Return ``backend`` if it is a known name; shared by the function and the module."""
    if backend not in BACKENDS:
        raise V.ArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _resolve_backend(
    backend: str,
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    functorch: bool = False,
    plain: bool = False,
    token_weight: Tensor | None = None,
) -> str:
    """The backend to run for a validated ``backend`` name (see :func:`check_backend`)."""
    if functorch:
        # torch.func transforms and forward-mode dual tensors need ops autograd and functorch can see
        # through: the fused kernels' hand-written backward has no jvp or batching rule. Whatever backend
        # was named, the reference computes the same numbers there (torch's own kernel handles them too).
        return "torch" if backend == "torch" else "reference"
    if backend != "auto":
        if backend == "triton" and not _triton_usable(x.device):
            raise V.ArgumentError(
                f"backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1) and triton "
                f"installed; input is on {x.device}"
            )
        return backend
    if (
        target.requires_grad
        or (weight is not None and weight.requires_grad)
        or (token_weight is not None and token_weight.requires_grad)
    ):
        return "reference"  # the only backend that differentiates through target, weight and token_weight
    if x.device.type == "cpu":
        return "torch" if plain and x.numel() < SMALL_CPU_PROBLEM else "chunked"
    if x.dtype != torch.float64 and _triton_usable(x.device):
        return "triton"
    # An accelerator without Triton (or float64 logits): torch's own kernel for what it can do, the
    # chunked kernel (with device-sized blocks) only for z_loss and softcap.
    return "torch" if plain else "chunked"


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=True)
    return reduction


def _as_rows(
    input: Tensor, target: Tensor, ignore_index: int, check_values: bool = True
) -> tuple[Tensor, Tensor, tuple[int, ...], bool]:
    """Validate shapes and flatten to (M, C) logits and (M,) or (M, C) targets.

    Returns the flattened logits, the flattened target, the batch shape of a ``reduction="none"``
    result, and whether the target holds probabilities.
    """
    if input.dim() == 0:
        raise V.ArgumentError("input must have at least one dimension (the classes), got a 0-d tensor")
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    if num_classes == 0:
        raise V.ArgumentError(f"input must have at least one class, got shape {tuple(input.shape)}")
    batch_shape = tuple(s for i, s in enumerate(input.shape) if i != class_dim)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise V.ArgumentError(
                f"a floating-point target holds class probabilities and must have the input's "
                f"shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        if ignore_index >= 0:
            raise V.ArgumentError(
                f"ignore_index is not supported with class-probability targets, got ignore_index={ignore_index}"
            )
        probs = True
    else:
        V.check_integer(target, "target")
        if tuple(target.shape) != batch_shape:
            raise V.ArgumentError(
                f"target of class indices must have shape {batch_shape} for input of shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        # int64 before any comparison: in uint8 the default ignore_index -100 would equal class 156.
        target = target.long()
        if check_values:
            V.check_class_indices(target, num_classes, ignore_index)
        probs = False
    if input.dim() == 1:
        x2 = input.unsqueeze(0)
        t2 = target.unsqueeze(0)
    else:
        x2 = input.movedim(1, -1).reshape(-1, num_classes)
        t2 = target.movedim(1, -1).reshape(-1, num_classes) if probs else target.reshape(-1)
    return x2, t2, batch_shape, probs


@overload
def cross_entropy(
    input: Tensor,
    target: Tensor,
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
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[False] = False,
) -> Tensor: ...


@overload
def cross_entropy(
    input: Tensor,
    target: Tensor,
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
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[True] | Iterable[str],
) -> tuple[Tensor, dict[str, Tensor]]: ...


def cross_entropy(
    input: Tensor,
    target: Tensor,
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
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: bool | Iterable[str] = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Label-smoothed cross-entropy with exactly ``torch.nn.functional.cross_entropy``'s semantics.

    The positional arguments are ``F.cross_entropy``'s, so this is a drop-in replacement; the extras are
    keyword-only. For class-index targets y, C classes, class weights w and eps = label_smoothing the
    loss of a row is ``(1-eps) * w_y * (-log p_y) + (eps/C) * sum_c w_c * (-log p_c)``; rows whose target
    is ``ignore_index`` contribute 0 and ``"mean"`` divides by the sum of ``w_y`` over the other rows.
    For probability targets t the row loss is ``-sum_c w_c * t'_c * log p_c`` with
    ``t' = (1-eps) * t + eps/C`` and ``"mean"`` divides by the number of rows.

    Note: eps is spread as eps/C over *all* classes (the true class keeps 1-eps+eps/C). A fairseq-style
    eps' spread as eps'/(C-1) over the other classes is ``label_smoothing = eps' * C / (C-1)`` here.

    Two variants generalise it. **Prior smoothing** (``smoothing_prior=u``, a probability vector over
    the classes, e.g. the label unigram from :func:`labelsmooth.class_prior`) spreads eps as eps * u_c
    instead of eps/C: the smoothing term becomes ``eps * sum_c u_c * w_c * (-log p_c)`` and
    ``t' = (1-eps) * t + eps * u``. **Negative smoothing** (``label_smoothing < 0`` with
    ``allow_negative=True``) keeps the same formula, ``(1-eps) * NLL + eps * mean_c(-log p_c)`` for
    uniform u: it rewards pushing the other classes' probabilities down. That loss is unbounded below
    (the eps * (-log p_c) terms go to -inf as p_c -> 0), yet it trains: its gradient ``p - q`` stays
    bounded (L1 norm at most ``2 + 2|eps|`` per row), so each step moves the logits by a bounded amount and the loss
    falls only about linearly in the logit margin, as a margin-maximising loss does; use it with a fixed
    step budget or early stopping, as its authors did.

    Args:
        input: logits of shape (C), (N, C) or (N, C, d1, ..., dk).
        target: class indices of shape (), (N) or (N, d1, ..., dk) (any integer dtype), or class
            probabilities (floating) of the input's shape.
        weight: optional (C,) class weights.
        size_average: deprecated, as in torch.
        ignore_index: target value whose rows are ignored (class-index targets only).
        reduce: deprecated, as in torch.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        label_smoothing: eps in [0, 1]; any eps <= 1 with ``allow_negative=True``.
        backend: ``"chunked"`` (fused forward+backward over cache-sized blocks of rows, any device),
            ``"torch"`` (torch's own ``F.cross_entropy``, without z_loss/softcap),
            ``"triton"`` (fused GPU kernel, CUDA tensors), ``"reference"`` (plain torch, written from the
            formula; the only one that differentiates through ``weight`` or a probability ``target``), or
            ``"auto"``: triton on CUDA when it is installed (float16/bfloat16/float32), else torch's own
            kernel there, or chunked for z_loss/softcap; on CPU torch's own kernel below 2**20 logits
            (where a fused call's fixed cost dominates) and chunked above; reference when ``weight`` or
            ``target`` requires grad. Chosen at call time from the tensor's device and size. Inside
            torch.func transforms (vmap, grad, jvp) and for forward-mode dual tensors every backend
            but ``"torch"`` computes through the reference, whose ops those transforms can follow.
        z_loss: adds ``z_loss * logsumexp(x)**2`` to every non-ignored row (PaLM's auxiliary loss).
        softcap: if set, logits become ``softcap * tanh(x / softcap)`` before the softmax (Gemma 2).
        inplace: allow a fused backend to write the gradient into ``input``'s storage (chunked: during
            forward; triton: during backward), so that it needs no N x C buffer of its own. The caller must
            not use the logits after the loss; a leaf ``input`` ends with ``.grad`` sharing its storage.
            An ``nn.Parameter`` is refused (its data would become its gradient).
        smoothing_prior: optional (C,) probability vector u to smooth towards instead of the uniform 1/C
            (non-negative, sums to 1; on the input's device).
        allow_negative: accept ``label_smoothing < 0`` (negative label smoothing).
        token_weight: optional per-row weights r, a floating tensor of the target's batch shape (or 1-D
            over the flattened rows) on the input's device: each row's loss and gradient are multiplied
            by r_n (ignored rows stay 0) and ``"mean"`` divides by sum_n r_n w_{y_n} over the kept rows
            (probability targets: sum_n r_n). Differentiable only on ``backend="reference"``.
        shift: next-token loss for a (B, T) target and (B, C, T) input (an LM's (B, T, V) logits as
            ``logits.transpose(1, 2)``, no copy): position t is scored against ``target[:, t + 1]``, the
            last position is ignored (loss 0, gradient 0, not counted by ``"mean"``) and
            ``token_weight`` moves with the labels. No copy of the logits or labels is made.
        logit_scale: optional s, a float or a 0-d floating tensor (on the input's device; it may
            require grad, e.g. a learned inverse temperature): the logits become ``s * x`` before the
            softcap and the smoothing.
        return_aux: ``True`` or names from ``("z_loss", "lse", "accuracy", "predicted", "entropy")``:
            return ``(loss, aux)``, ``aux`` a dict of detached tensors with exactly those keys, each
            computed in the pass that reads the logits: ``lse``, ``entropy`` (float32, float64 for float64
            input) and ``predicted`` (int64, first argmax) per row of the batch shape (0, 0 and
            ``ignore_index`` on ignored rows); ``z_loss`` (the z-loss term) and ``accuracy``
            reduced like the loss. docs/lm-options.md has the details.

    Returns:
        The loss: a scalar, or of the target's batch shape for ``reduction="none"``; in input's dtype.
        With ``return_aux``, the pair ``(loss, aux)``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> x = torch.tensor([[2.0, 0.5, -1.0]]); y = torch.tensor([0])
        >>> torch.allclose(ls.cross_entropy(x, y, label_smoothing=0.1),
        ...                torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
        >>> logits = torch.randn(2, 6, 50); labels = torch.randint(0, 50, (2, 6))   # an LM's (B, T, V)
        >>> loss, aux = ls.cross_entropy(logits.transpose(1, 2), labels, shift=True, return_aux=["lse"])
        >>> aux["lse"].shape
        torch.Size([2, 6])

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
        Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output Distributions", 2017.
        Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022.
    """
    V.check_tensor(input, "input")
    V.check_tensor(target, "target")
    V.check_floating(input, "input")
    allow_negative = V.check_bool(allow_negative, "allow_negative")
    eps = V.check_label_smoothing(label_smoothing, allow_negative=allow_negative)
    reduction = V.check_reduction(_legacy_reduction(size_average, reduce, reduction))
    z_loss = V.check_nonnegative_float(z_loss, "z_loss")
    softcap = V.check_softcap(softcap)
    ignore_index = V.check_index(ignore_index, "ignore_index")
    inplace = V.check_bool(inplace, "inplace")
    if inplace and isinstance(input, torch.nn.Parameter) and input.requires_grad and torch.is_grad_enabled():
        # The parameter's data would become its own gradient, and an optimiser step would then use both.
        raise V.ArgumentError(
            "inplace=True would overwrite input, an nn.Parameter, with its gradient; pass inplace=False"
        )
    check_backend(backend)
    if input.dim() > 0:
        V.check_weight(weight, input.shape[0 if input.dim() == 1 else 1])
        prior = V.check_prior(smoothing_prior, input.shape[0 if input.dim() == 1 else 1], input.device)
    else:
        prior = None
    if weight is not None and weight.device != input.device:
        raise V.ArgumentError(f"weight is on {weight.device} but input is on {input.device}")
    opts = O.parse_options(
        token_weight=token_weight,
        shift=shift,
        logit_scale=logit_scale,
        return_aux=return_aux,
        target=target,
        batch_shape=tuple(s for i, s in enumerate(input.shape) if i != (0 if input.dim() == 1 else 1)),
        probs=target.is_floating_point(),
        device=input.device,
    )
    scale = opts.logit_scale if isinstance(opts.logit_scale, Tensor) else None
    functorch = _under_functorch(input, target, weight, prior, opts.token_weight, scale)
    out_dtype = input.dtype
    half_in_autocast = autocast_enabled(input.device.type) and input.dtype in (torch.float16, torch.bfloat16)
    plain = z_loss == 0 and softcap is None and prior is None and eps >= 0 and not opts.active
    name = _resolve_backend(backend, input, target, weight, functorch, plain=plain, token_weight=opts.token_weight)
    if half_in_autocast:
        # torch's autocast policy runs cross-entropy in float32: the loss is float32, the gradient
        # reaches the logits in their own dtype. The Triton kernels already compute in float32 from
        # half-precision logits, so they read them as they are (no float32 N x C copy, kept for
        # backward, and half the bytes read and written); the other backends get a float32 copy.
        out_dtype = torch.float32
        if name != "triton":
            input = input.float()
    # Off the CPU the Triton forward checks class indices itself, in the same kernel.
    kernel_checks = name == "triton" and input.device.type != "cpu"
    x2, t2, batch_shape, _probs = _as_rows(
        input, target, ignore_index, check_values=not functorch and not kernel_checks
    )

    if not opts.active:
        # Inside autocast, matmuls and reductions of the kernels would silently run in half precision.
        with autocast_disabled(input.device.type):
            out: Tensor = _BACKENDS[name](x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, reduction)
        if reduction == "none":
            out = out.reshape(batch_shape)
        return out.to(out_dtype)
    with autocast_disabled(input.device.type):
        res: tuple[Tensor, dict[str, Tensor] | None] = _BACKENDS[name](
            x2, t2, weight, ignore_index, eps, z_loss, softcap, prior, inplace, reduction, opts, batch_shape
        )
    out, aux = res
    if reduction == "none":
        out = out.reshape(batch_shape)
    out = out.to(out_dtype)
    return out if opts.aux is None else (out, aux if aux is not None else {})


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False for device types autocast does not know, such
    as ``meta``, where torch.is_autocast_enabled raises)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast(device_type, enabled=False)``, or nothing where autocast does not exist."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _under_functorch(*tensors: Tensor | None) -> bool:
    """True inside torch.func transforms (vmap, grad, jvp, ...) or for forward-mode dual tensors
    (``torch.autograd.forward_ad``): only the reference, plain torch ops, can run there."""
    from torch.autograd import forward_ad

    present = [t for t in tensors if t is not None]
    # unpack_dual is unannotated in torch.
    if any(forward_ad.unpack_dual(t).tangent is not None for t in present):  # type: ignore[no-untyped-call]
        return True
    try:
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    except AttributeError:  # pragma: no cover - private API moved
        return False
    return any(wrapped(t) for t in present)


def _check_binary_labels(target: Tensor) -> None:
    """Integer targets are class labels: only 0 and 1 mean anything (on CPU checked at once, elsewhere
    by a device-side assertion, without synchronisation)."""
    valid = (target == 0) | (target == 1)
    if target.device.type == "cpu":
        if not bool(valid.all()):
            bad = target[~valid][0].item()
            raise V.ArgumentError(f"an integer target must hold 0/1 labels, got {bad}")
    else:
        torch._assert_async(valid.all(), "an integer target must hold 0/1 labels")


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    *,
    allow_negative: bool = False,
) -> Tensor:
    """Binary cross-entropy with logits on label-smoothed targets ``y * (1 - eps) + eps / 2``.

    Same arguments and numbers as ``torch.nn.functional.binary_cross_entropy_with_logits`` (weight and
    pos_weight broadcast as there), plus ``label_smoothing``.

    Args:
        input: logits, any shape.
        target: targets in [0, 1] of the input's shape (integer or bool 0/1 labels are accepted).
        weight: optional weight broadcastable to the input.
        size_average: deprecated, as in torch.
        reduce: deprecated, as in torch.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        pos_weight: optional weight of positive examples, broadcast along the last dimension.
        label_smoothing: eps in [0, 1]; any eps <= 1 with ``allow_negative=True`` (negative smoothing:
            targets move away from 1/2, to ``1 - eps/2 > 1`` and ``eps/2 < 0``, and the loss is unbounded
            below, as in :func:`cross_entropy`).
        allow_negative: accept ``label_smoothing < 0``.

    Returns:
        The loss: a scalar, or of the input's shape for ``reduction="none"``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> x = torch.tensor([3.0, -2.0]); y = torch.tensor([1.0, 0.0])
        >>> ls.binary_cross_entropy_with_logits(x, y, label_smoothing=0.2)
        tensor(0.3378)

    References:
        Müller, Kornblith and Hinton, "When Does Label Smoothing Help?", NeurIPS 2019.
    """
    V.check_tensor(input, "input")
    V.check_tensor(target, "target")
    V.check_floating(input, "input")
    allow_negative = V.check_bool(allow_negative, "allow_negative")
    eps = V.check_label_smoothing(label_smoothing, allow_negative=allow_negative)
    reduction = V.check_reduction(_legacy_reduction(size_average, reduce, reduction))
    if target.shape != input.shape:
        raise V.ArgumentError(f"target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            V.check_tensor(value, name)
            try:
                torch.broadcast_shapes(value.shape, input.shape)  # type: ignore[no-untyped-call]  # unannotated in torch
            except RuntimeError:
                raise V.ArgumentError(
                    f"{name} of shape {tuple(value.shape)} does not broadcast to the input's shape {tuple(input.shape)}"
                ) from None
    if not target.is_floating_point() and target.dtype != torch.bool and not _under_functorch(input, target):
        _check_binary_labels(target)
    target = smooth_binary_labels(target.to(input.dtype), eps, allow_negative=allow_negative)
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction, pos_weight=pos_weight)
