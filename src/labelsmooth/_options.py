"""The language-model options shared by every cross-entropy entry point: ``token_weight``, ``shift``,
``logit_scale`` and ``return_aux``.

``labelsmooth.cross_entropy``, ``labelsmooth.linear_cross_entropy`` and
``labelsmooth.distributed.vocab_parallel_cross_entropy`` take the same four keyword-only options with
the same meaning; the checks, the row bookkeeping of ``shift``, the ``mean`` denominator and the
auxiliary outputs live here once, so that an error or a number reads the same from every door.

Rows n = 0..N-1 are the flattened batch (the target's batch shape flattened). Each row gets a weight
r_n (an internal (M,) vector, never a copy of the labels or logits):

* ``token_weight`` w_tok: r_n = w_tok[n]; its final row loss is r_n * loss_n and its gradient r_n times
  the row gradient. Ignored rows stay exactly 0 whatever r_n holds.
* ``shift=True`` (target (B, T), class indices): row (b, t) is scored against target[b, t + 1]. The
  kernel sees the first N - 1 rows (a view) against ``target.reshape(-1)[1:]`` (a view); a row i with
  (i + 1) % T == 0 ends its sequence, its view-target is the next sequence's first label, so it gets
  r_i = 0 and its loss and gradient rows are set to exactly 0 afterwards (B rows: NaN/Inf logits there
  cannot leak). ``token_weight`` shifts with the target: row i gets token_weight[i + 1].
* ``"mean"`` divides by D = sum_n keep_n r_n w_{y_n} (class indices) or D = sum_n r_n (probabilities);
  without row weights D is torch's (the count or the weight sum of the kept rows; N for probabilities).

``logit_scale`` s makes the logits s * x before softcap and smoothing. ``return_aux`` asks for
auxiliary per-row outputs computed in the pass that already reads the logits (see :func:`build_aux`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from labelsmooth import _validate as V

AUX_NAMES = ("z_loss", "lse", "accuracy", "predicted", "entropy")
"""Every auxiliary output ``return_aux`` can ask for, in the order the returned dict lists them."""

KERNEL_AUX = frozenset({"lse", "predicted", "entropy"})
"""The per-row pieces a kernel computes while it reads the logits (``aux=`` of the kernels)."""

OPTION_NAMES = ("token_weight", "shift", "logit_scale", "return_aux")


# ---- argument checks --------------------------------------------------------------------------------


def check_token_weight(token_weight: object, batch_shape: tuple[int, ...], device: torch.device) -> Tensor | None:
    """Return ``token_weight`` as a flat (N,) floating tensor (a view where its layout allows), or None.

    Accepted: a floating tensor of the target's batch shape ``batch_shape`` or 1-D of length
    N = prod(batch_shape), on ``device``. Its values are not read (no host-device synchronisation).

    >>> check_token_weight(torch.ones(2, 3), (2, 3), torch.device("cpu")).shape
    torch.Size([6])
    """
    if token_weight is None:
        return None
    if not isinstance(token_weight, Tensor):
        raise V.ArgumentTypeError(
            f"token_weight must be None or a floating-point torch.Tensor, got {type(token_weight).__name__}"
        )
    if not token_weight.is_floating_point():
        raise V.ArgumentTypeError(f"token_weight must be a floating-point tensor, got dtype {token_weight.dtype}")
    n = math.prod(batch_shape)
    if tuple(token_weight.shape) != tuple(batch_shape) and tuple(token_weight.shape) != (n,):
        raise V.ArgumentError(
            f"token_weight must have the target's batch shape {tuple(batch_shape)} or shape ({n},), "
            f"got {tuple(token_weight.shape)}"
        )
    if token_weight.device != device:
        raise V.ArgumentError(f"token_weight is on {token_weight.device} but input is on {device}")
    return token_weight.reshape(n)


def check_shift(shift: object, target: Tensor, probs: bool) -> int | None:
    """Return the sequence length T for ``shift=True`` (None for False), or raise.

    ``shift`` needs class-index targets of shape (B, T); the sequence dimension is the target's last.

    >>> check_shift(True, torch.zeros(2, 5, dtype=torch.long), probs=False)
    5
    """
    shift = V.check_bool(shift, "shift")
    if not shift:
        return None
    if probs:
        raise V.ArgumentError(
            "shift=True needs class-index targets of shape (B, T); got a floating-point target "
            f"(class probabilities) of shape {tuple(target.shape)}"
        )
    if target.dim() != 2:
        raise V.ArgumentError(
            f"shift=True needs a 2-D target of shape (B, T) (the sequence dimension last), got shape "
            f"{tuple(target.shape)}"
        )
    return int(target.shape[1])


def check_logit_scale(logit_scale: object, device: torch.device) -> float | Tensor | None:
    """Return ``logit_scale`` as a finite float, a 0-d floating tensor on ``device``, or None.

    A float 1.0 is returned as None (multiplying by it changes nothing, so it costs nothing). A tensor
    is never read on the host; it may require grad.

    >>> check_logit_scale(2, torch.device("cpu"))
    2.0
    >>> check_logit_scale(1.0, torch.device("cpu")) is None
    True
    """
    if logit_scale is None:
        return None
    if isinstance(logit_scale, Tensor):
        if logit_scale.dim() != 0 or not logit_scale.is_floating_point():
            raise V.ArgumentTypeError(
                "logit_scale must be a float or a 0-d floating-point tensor, got a "
                f"{logit_scale.dtype} tensor of shape {tuple(logit_scale.shape)}"
            )
        if logit_scale.device != device:
            raise V.ArgumentError(f"logit_scale is on {logit_scale.device} but input is on {device}")
        return logit_scale
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise V.ArgumentTypeError(
            f"logit_scale must be None, a float or a 0-d floating-point tensor, got {logit_scale!r} "
            f"of type {type(logit_scale).__name__}"
        )
    value = float(logit_scale)
    if not math.isfinite(value):
        raise V.ArgumentError(f"logit_scale must be a finite number, got {value!r}")
    return None if value == 1.0 else value


def check_return_aux(return_aux: object) -> tuple[str, ...] | None:
    """Return the requested auxiliary outputs in ``AUX_NAMES`` order, or None for ``return_aux=False``.

    ``True`` asks for every item; an iterable of names (a single name as a string too) for those; an
    empty iterable returns an empty dict beside the loss.

    >>> check_return_aux(True)
    ('z_loss', 'lse', 'accuracy', 'predicted', 'entropy')
    >>> check_return_aux(["entropy", "lse"])
    ('lse', 'entropy')
    >>> check_return_aux(False) is None
    True
    """
    if return_aux is None or return_aux is False:
        return None
    if return_aux is True:
        return AUX_NAMES
    if isinstance(return_aux, str):
        return_aux = (return_aux,)
    if not isinstance(return_aux, Iterable):
        raise V.ArgumentTypeError(
            f"return_aux must be a bool or an iterable of names from {AUX_NAMES}, got {return_aux!r}"
        )
    names = list(return_aux)
    for name in names:
        if name not in AUX_NAMES:
            raise V.ArgumentError(f"return_aux names must be from {AUX_NAMES}, got {name!r}")
    return tuple(n for n in AUX_NAMES if n in names)


@dataclass(frozen=True)
class Options:
    """The checked options of one call.

    Attributes:
        token_weight: flat (N,) row weights before any shift, or None.
        seq_len: T when ``shift=True``, else None.
        logit_scale: a float (never 1.0), a 0-d tensor, or None.
        aux: the requested auxiliary names (``AUX_NAMES`` order), or None when no aux dict is returned.
    """

    token_weight: Tensor | None = None
    seq_len: int | None = None
    logit_scale: float | Tensor | None = None
    aux: tuple[str, ...] | None = None

    @property
    def active(self) -> tuple[str, ...]:
        """The names of the options that are on (for error messages and backend choice)."""
        on = (
            self.token_weight is not None,
            self.seq_len is not None,
            self.logit_scale is not None,
            self.aux is not None,
        )
        return tuple(name for name, flag in zip(OPTION_NAMES, on, strict=True) if flag)

    @property
    def scale_requires_grad(self) -> bool:
        """Whether a tensor ``logit_scale`` wants a gradient (the kernels then fill ``dscale``)."""
        s = self.logit_scale
        return isinstance(s, Tensor) and s.requires_grad and torch.is_grad_enabled()


OFF = Options()
"""Every option off: the existing code paths, untouched."""


def parse_options(
    *,
    token_weight: object,
    shift: object,
    logit_scale: object,
    return_aux: object,
    target: Tensor,
    batch_shape: tuple[int, ...],
    probs: bool,
    device: torch.device,
) -> Options:
    """Check the four options of a call against its target and return them as :class:`Options`.

    ``batch_shape`` is the target's batch shape (index targets: ``target.shape``), ``probs`` whether
    the target holds class probabilities.
    """
    return Options(
        token_weight=check_token_weight(token_weight, batch_shape, device),
        seq_len=check_shift(shift, target, probs),
        logit_scale=check_logit_scale(logit_scale, device),
        aux=check_return_aux(return_aux),
    )


def reject_options(backend: str, options: Options) -> None:
    """Raise naming ``backend`` and the options that are on, for a backend that supports none of them."""
    if options.active:
        raise V.ArgumentError(
            f"backend={backend!r} supports none of {', '.join(OPTION_NAMES)}; got {', '.join(options.active)} "
            "(use 'auto', 'chunked', 'triton' or 'reference')"
        )


def check_no_token_weight_grad(backend: str, token_weight: Tensor | None) -> None:
    """Raise if ``token_weight`` requires grad: only the reference differentiates it."""
    if token_weight is not None and token_weight.requires_grad:
        raise V.ArgumentError(
            f"backend={backend!r} does not compute a gradient for token_weight, which requires grad; "
            "use backend='reference' (or detach token_weight)"
        )


def kernel_aux(names: tuple[str, ...] | None, z_loss: float) -> frozenset[str]:
    """The per-row pieces (``KERNEL_AUX``) a kernel must compute for the requested ``names``:
    ``accuracy`` needs ``predicted``; the ``z_loss`` item needs ``lse`` (unless the coefficient is 0)."""
    if not names:
        return frozenset()
    want = {n for n in names if n in KERNEL_AUX}
    if "accuracy" in names:
        want.add("predicted")
    if "z_loss" in names and z_loss:
        want.add("lse")
    return frozenset(want)


def logit_scale_tensor(logit_scale: float | Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``logit_scale`` as a 0-d tensor of ``dtype`` on ``device``: a float is filled on the device (no
    host-to-device copy to wait for); a tensor is converted (keeping its autograd history)."""
    if isinstance(logit_scale, Tensor):
        return logit_scale.to(dtype)
    return torch.full((), logit_scale, dtype=dtype, device=device)


# ---- shift: views, row weights, sequence ends ----------------------------------------------------------


def kernel_rows(num_rows: int, seq_len: int | None) -> int:
    """M, the number of rows the kernel sees: N - 1 with shift (never below 0), else N."""
    return max(num_rows - 1, 0) if seq_len is not None else num_rows


def shift_views(rows: Tensor, target: Tensor, seq_len: int | None) -> tuple[Tensor, Tensor]:
    """The rows and targets the kernel scores: with shift, ``rows[:-1]`` against ``target[1:]`` (views
    of the flattened (N, ...) rows and (N,) targets: nothing is copied); without, both unchanged.

    Works for any row tensor: logits (N, C), hidden states (N, H), a rank's logit slice (N, C_r).
    """
    if seq_len is None:
        return rows, target
    return rows[:-1], target[1:]


def sequence_end_rows(seq_len: int, num_rows: int, offset: int = 0) -> slice:
    """The rows of a block that end a sequence, as a slice: the rows i of a block holding global rows
    ``offset .. offset + num_rows - 1`` with (offset + i + 1) % seq_len == 0.

    Indexing with it is a strided view: zeroing it touches those rows only.

    >>> sequence_end_rows(4, 10)
    slice(3, 10, 4)
    >>> sequence_end_rows(4, 10, offset=6)
    slice(1, 10, 4)
    """
    first = (seq_len - 1 - offset) % seq_len
    return slice(first, num_rows, seq_len)


def zero_sequence_ends(t: Tensor, seq_len: int | None, offset: int = 0) -> Tensor:
    """Set the sequence-end rows of ``t`` (rows along dim 0, row i being global row ``offset + i``) to
    exactly 0, in place, and return ``t``. Used on gradients (the full (N, C) one, whose last row the
    kernel never wrote, or a chunk of it), loss rows and ``dscale`` rows. A no-op without shift."""
    if seq_len is not None and t.shape[0] > 0:
        t[sequence_end_rows(seq_len, t.shape[0], offset)] = 0
    return t


def row_weights(
    token_weight: Tensor | None, num_rows: int, seq_len: int | None, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """The (M,) row weights r of the rows the kernel sees, in ``dtype``, or None when every r_n is 1.

    ``token_weight`` is the flat (N,) vector (:func:`check_token_weight`). With shift, row i gets
    ``token_weight[i + 1]`` (1 without token_weight) and the sequence-end rows 0. Differentiable with
    respect to ``token_weight`` (the reference's gradient flows through it).

    >>> row_weights(None, 6, 3, torch.float32, torch.device("cpu"))
    tensor([1., 1., 0., 1., 1.])
    """
    if seq_len is None:
        return None if token_weight is None else token_weight.to(dtype)
    m = kernel_rows(num_rows, seq_len)
    if token_weight is None:
        r = torch.ones(m, dtype=dtype, device=device)
    else:
        r = token_weight[1:].to(dtype)
    ends = torch.zeros(m, dtype=torch.bool, device=device)
    if m > 0:
        ends[sequence_end_rows(seq_len, m)] = True
    # where, not a product: a token weight of inf or NaN at a sequence end must not survive.
    return torch.where(ends, torch.zeros((), dtype=dtype, device=device), r)


def keep_rows(target: Tensor, ignore_index: int, seq_len: int | None) -> Tensor | None:
    """(M,) bool: the kernel rows that are scored (not ignore_index, not a sequence end), or None for
    probability targets without shift (every row kept)."""
    if target.is_floating_point():
        return None
    keep = target != ignore_index  # a new tensor: marking the sequence ends below writes only to it
    return zero_sequence_ends(keep, seq_len)


def weight_rows(rows: Tensor, row_weight: Tensor | None, keep: Tensor | None) -> Tensor:
    """The final row losses r_n * loss_n of the (M,) kernel ``rows``, exactly 0 where ``keep`` is False
    (ignored rows and sequence ends, whatever their loss or weight holds). Differentiable."""
    if row_weight is not None:
        rows = rows * row_weight.to(rows.dtype)
    if keep is not None:
        rows = torch.where(keep, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    return rows


def row_grad_scale(row_weight: Tensor | None, denom: Tensor | None) -> Tensor | None:
    """What the kernels multiply each written gradient row by (``grad_scale``): r_n / D for ``mean``,
    r_n otherwise; a 0-d 1/D without row weights; None when there is nothing to scale."""
    if row_weight is None:
        return None if denom is None else denom.reciprocal()
    return row_weight if denom is None else row_weight / denom


def pad_rows(rows: Tensor, num_rows: int, fill: float | int = 0) -> Tensor:
    """(M,) kernel rows as (N,) rows of the batch: with shift (M = N - 1) the last row, position T - 1 of
    the last sequence, is appended as ``fill``; otherwise ``rows`` itself. Differentiable."""
    missing = num_rows - rows.shape[0]
    if missing == 0:
        return rows
    tail = torch.full((missing, *rows.shape[1:]), fill, dtype=rows.dtype, device=rows.device)
    return torch.cat([rows, tail])


# ---- reductions ----------------------------------------------------------------------------------------


def mean_denominator(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    dtype: torch.dtype,
    row_weight: Tensor | None = None,
) -> Tensor:
    """What ``reduction="mean"`` divides by, a 0-d tensor of ``dtype`` (nothing read on the host).

    Class-index targets: D = sum_n keep_n r_n w_{y_n} (keep_n: y_n != ignore_index; w = 1 without class
    weights). Probability targets: D = sum_n r_n. Without ``row_weight`` (r = 1) that is torch's rule:
    the count or the target-class weight sum of the kept rows, N for probabilities. ``target`` and
    ``row_weight`` are the rows the kernel sees (with shift: the shifted view and the r that zeroes the
    sequence ends). Differentiable with respect to ``row_weight`` and ``weight``.

    >>> mean_denominator(torch.tensor([0, -100, 1]), None, -100, torch.float32)
    tensor(2.)
    >>> mean_denominator(torch.tensor([0, -100, 1]), None, -100, torch.float32, torch.tensor([0.5, 9.0, 2.0]))
    tensor(2.5000)
    """
    zero = torch.zeros((), dtype=dtype, device=target.device)
    if target.is_floating_point():
        if row_weight is None:
            # Filled on the device: torch.tensor(n, device=...) would be a synchronising host-to-device copy.
            return torch.full((), float(target.shape[0]), dtype=dtype, device=target.device)
        return row_weight.to(dtype).sum()
    keep = target != ignore_index
    if weight is None and row_weight is None:
        return keep.sum(dtype=dtype)
    per_row: Tensor | None = None
    if weight is not None:
        safe = torch.where(keep, target, torch.zeros_like(target)).long()
        per_row = weight.to(dtype)[safe]
    if row_weight is not None:
        r = row_weight.to(dtype)
        per_row = r if per_row is None else per_row * r
    assert per_row is not None  # one of weight and row_weight is given here
    return torch.where(keep, per_row, zero).sum()


def reduce_rows(rows: Tensor, reduction: str, denom: Tensor | None) -> Tensor:
    """Reduce final (weighted) row values: "none" as they are, "sum", or "mean" (divided by ``denom``)."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "mean":
        assert denom is not None  # "mean" always comes with its denominator
        return total / denom
    return total


def logit_scale_grad(dscale: Tensor, grad_output: Tensor, reduction: str) -> Tensor:
    """d loss / d logit_scale from the kernel's (M,) ``dscale`` rows (which already carry r_n and, for
    "mean", 1/D) and the loss's ``grad_output`` (M,)-shaped for "none", a scalar otherwise)."""
    if reduction == "none":
        return (dscale * grad_output.to(dscale.dtype)).sum()
    return dscale.sum() * grad_output.to(dscale.dtype)


# ---- auxiliary outputs ---------------------------------------------------------------------------------


def build_aux(
    names: tuple[str, ...],
    pieces: dict[str, Tensor],
    *,
    target: Tensor,
    ignore_index: int,
    weight: Tensor | None,
    row_weight: Tensor | None,
    keep: Tensor | None,
    reduction: str,
    denom: Tensor | None,
    z_loss: float,
    num_rows: int,
    batch_shape: tuple[int, ...],
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """The ``aux`` dict of the ``names`` requested, from the kernel's per-row ``pieces``.

    Args:
        names: the requested items (:func:`check_return_aux`).
        pieces: (M,) tensors from the kernel's read of the logits: ``lse``, ``entropy`` (compute dtype)
            and ``predicted`` (int64), as :func:`kernel_aux` asked; values on unkept rows are ignored.
        target: the (M,) class indices or (M, C) probabilities the kernel scored.
        ignore_index: the ignored class index.
        weight: (C,) class weights or None.
        row_weight: (M,) row weights r (:func:`row_weights`) or None.
        keep: (M,) kept rows (:func:`keep_rows`) or None (all kept).
        reduction: the loss's reduction; ``z_loss`` and ``accuracy`` are reduced like the loss.
        denom: the loss's ``mean`` denominator D (for ``reduction="mean"``).
        z_loss: the z-loss coefficient.
        num_rows: N (with shift M = N - 1 and the last row is padded in).
        batch_shape: the shape per-row items are returned in.
        dtype: the compute dtype (float32, or float64 for float64 logits) of the float items.

    Returns:
        ``{name: tensor}`` with exactly ``names``, all detached:

        * ``lse`` (batch shape): log-sum-exp of the final logits, 0 on unkept rows.
        * ``entropy`` (batch shape): entropy of the softmax of the final logits, 0 on unkept rows.
        * ``predicted`` (batch shape, int64): the first argmax of the final logits, ``ignore_index``
          on unkept rows.
        * ``z_loss``: ``z_loss * lse_n**2 * r_n`` on kept rows, reduced like the loss.
        * ``accuracy``: "none" 1.0/0.0 per row ([predicted == y]; for probabilities y = argmax of the
          target row), 0 on unkept rows; "sum" sum_n keep_n r_n w_{y_n} [correct] (probabilities:
          sum_n r_n [correct]); "mean" that divided by D.
    """
    out: dict[str, Tensor] = {}
    device = target.device
    zero = torch.zeros((), dtype=dtype, device=device)

    def kept(values: Tensor, fill: Tensor) -> Tensor:
        return values if keep is None else torch.where(keep, values, fill)

    def per_row(values: Tensor, fill: float | int) -> Tensor:
        return pad_rows(values, num_rows, fill).reshape(batch_shape)

    def reduce(values: Tensor) -> Tensor:
        if reduction == "none":
            return per_row(values, 0)
        return reduce_rows(values, reduction, denom)

    r = None if row_weight is None else row_weight.detach().to(dtype)
    for name in names:
        if name == "lse":
            out[name] = per_row(kept(pieces["lse"].to(dtype), zero), 0)
        elif name == "entropy":
            out[name] = per_row(kept(pieces["entropy"].to(dtype), zero), 0)
        elif name == "predicted":
            fill = torch.full((), ignore_index, dtype=torch.int64, device=device)
            out[name] = per_row(kept(pieces["predicted"].long(), fill), ignore_index)
        elif name == "z_loss":
            if z_loss:
                lse = pieces["lse"].to(dtype)
                values = z_loss * lse * lse
                if r is not None:
                    values = values * r
                values = kept(values, zero)
            else:
                values = torch.zeros(target.shape[0], dtype=dtype, device=device)
            out[name] = reduce(values)
        elif name == "accuracy":
            if target.is_floating_point():
                truth = target.argmax(dim=-1)
            else:
                truth = target.long()
            correct = (pieces["predicted"].long() == truth).to(dtype)
            if reduction == "none":
                out[name] = per_row(kept(correct, zero), 0)
                continue
            if weight is not None and not target.is_floating_point():
                safe = torch.where(target != ignore_index, target, torch.zeros_like(target)).long()
                correct = correct * weight.detach().to(dtype)[safe]
            if r is not None:
                correct = correct * r
            out[name] = reduce_rows(kept(correct, zero), reduction, None if denom is None else denom.detach())
    return {k: v.detach() for k, v in out.items()}
