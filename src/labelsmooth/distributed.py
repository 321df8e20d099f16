"""Vocabulary-parallel label-smoothed cross-entropy and global loss normalisation on torch.distributed.

When a model's output layer is split over the ranks of a tensor-parallel group, rank r holds the
logits of a contiguous slice [o_r, o_r + C_r) of the K classes, in rank order. The loss of a row with
target y is that of the gathered logits x::

    loss = (1 - eps) * (log S - z_y) + (eps / K) * (K log S - sum_c z_c) + z_loss * (M + log S)**2

with M the row max over all K classes, z = x - M and S = sum_c exp(z_c). Each rank reduces its slice
to three numbers per row, relative to its own max m_r::

    m_r,  R_r = sum_{c in slice} exp(x_c - m_r) - 1 (summed without one max element),
    a_r = -(1 - eps) * [y in slice] * (x_y - m_r) - (eps / K) * sum_{c in slice} (x_c - m_r)

and one all-gather of these (3 numbers per row per rank; logits never leave their rank) lets every
rank compute, with d_r = m_r - M <= 0 and r* the first rank holding M::

    S - 1 = R_{r*} + sum_{r != r*} (R_r + 1) exp(d_r)
    loss  = log1p(S - 1) + sum_r a_r - (1 - eps) * d_{owner(y)} - (eps / K) * sum_r C_r d_r + z-loss

Every term is >= 0, so nothing cancels, and log S is taken as log1p(S - 1) so a confident row keeps its
small loss in float32. K is the global class count, learned once per group and local size with a
collective. Backward needs no communication: the gradient of a rank's slice is
``g * (p * (1 + 2 z_loss lse) - q)`` with p = exp(x - M) / S and q the smoothed target, written from
the row statistics kept from forward.

The language-model options (``token_weight``, ``shift``, ``logit_scale``, ``return_aux``) ride on the
same pass and the same all-gather: the global argmax and entropy need one more number per row per rank
each (the local argmax, and U_r = sum_{c in slice} exp(x_c - m_r)(x_c - m_r), combined as
sum_r exp(d_r)(U_r + d_r S_r)); a logit scale is applied as each block is loaded.

``docs/distributed.md`` has the derivation, the communication volume and the gradient-accumulation
recipe built on :func:`global_num_targets`.

References:
    Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
    Parallelism", 2019 (vocabulary-parallel output layer).
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor

from labelsmooth import _options as O
from labelsmooth import _validate as V
from labelsmooth.kernels._memory import empty_for_grad
from labelsmooth.kernels.chunked import _refine_confident_rows, default_block_rows
from labelsmooth.reference import compute_dtype

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["global_num_targets", "vocab_parallel_cross_entropy", "vocab_partition", "vocab_slice"]

# process group -> {local slice size: every rank's slice size, in rank order}. Learning the sizes is a
# collective plus a host read, so it happens once per group and local size, not per call. Weak keys:
# the cache must not keep a destroyed group (and its communication threads) alive until interpreter
# shutdown, where tearing it down late can abort the process.
_PARTITIONS: weakref.WeakKeyDictionary[ProcessGroup, dict[int, tuple[int, ...]]] = weakref.WeakKeyDictionary()


def _dist() -> ModuleType:
    # torch.distributed is imported only when used: importing labelsmooth must work on builds without it.
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    if not dist.is_initialized():
        raise RuntimeError("no default process group: call torch.distributed.init_process_group first")
    return dist


def _resolve_group(dist: ModuleType, group: ProcessGroup | None) -> ProcessGroup:
    group = dist.group.WORLD if group is None else group
    if dist.get_rank(group) < 0:
        raise ValueError("this process is not a member of group")
    return group


def _all_gather(output: Tensor, input: Tensor, group: ProcessGroup) -> None:
    """Gather contiguous ``input`` from every rank of ``group`` into contiguous ``output`` (rank r's
    copy at ``output[r]``); flat buffers, the one layout every backend (gloo included) accepts."""
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output.view(-1), input.view(-1), group=group)


def vocab_slice(num_classes: int, rank: int, world_size: int) -> slice:
    """The contiguous slice of ``num_classes`` classes that ``rank`` of ``world_size`` holds when they
    are split as evenly as possible (the first ``num_classes % world_size`` ranks hold one more).

    Any other contiguous split in rank order works with :func:`vocab_parallel_cross_entropy` too.

    Args:
        num_classes: K, the total number of classes.
        rank: the rank in the tensor-parallel group, in [0, world_size).
        world_size: the group's size, at most K.

    Returns:
        A ``slice`` of class indices.

    Example:
        >>> [vocab_slice(10, r, 3) for r in range(3)]
        [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    world_size = V.check_num_classes(world_size, 1)
    num_classes = V.check_num_classes(num_classes, world_size, " (one class per rank at least)")
    rank = V.check_index(rank, "rank")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def vocab_partition(
    local_size: int, group: ProcessGroup | None = None, device: torch.device | str | None = None
) -> tuple[int, ...]:
    """Every rank's vocabulary slice size, in rank order, learned with one all-gather.

    The result is cached per group and ``local_size``: the first call is a collective (every rank of
    ``group`` must make it) and reads the sizes on the host; later calls communicate nothing. A group's
    split must therefore not change once used.

    Args:
        local_size: the number of classes this rank holds.
        group: the tensor-parallel process group (None: the default group).
        device: where the collective's buffer lives (a CUDA device for NCCL); CPU when None.

    Returns:
        A tuple of slice sizes; their sum is the global number of classes K.

    Example:
        >>> import torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> vocab_partition(7)
        (7,)
        >>> dist.destroy_process_group()
    """
    dist = _dist()
    local_size = V.check_index(local_size, "local_size")
    group = _resolve_group(dist, group)
    known = _PARTITIONS.setdefault(group, {})
    sizes = known.get(local_size)
    if sizes is None:
        world = dist.get_world_size(group)
        mine = torch.tensor([local_size], dtype=torch.int64, device=device)
        every = torch.empty(world, dtype=torch.int64, device=mine.device)
        _all_gather(every, mine, group)
        sizes = tuple(int(s) for s in every.tolist())
        # Checked after the collective, so that every rank sees the same sizes and raises the same error.
        if min(sizes) < 1:
            raise ValueError(f"every rank must hold at least one class, got slice sizes {sizes}")
        known[local_size] = sizes
    return sizes


_BOUNDS: dict[tuple[tuple[int, ...], torch.device], tuple[Tensor, Tensor]] = {}


def _partition_tensors(sizes: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(slice sizes, slice ends) as int64 tensors on ``device``, made once: building them from a Python
    list on every call would be a host-to-device copy, which waits for the device."""
    key = (sizes, device)
    found = _BOUNDS.get(key)
    if found is None:
        size_t = torch.tensor(sizes, dtype=torch.int64, device=device)
        found = _BOUNDS[key] = (size_t, size_t.cumsum(0))
    return found


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Row losses (M,) of vocabulary-parallel logits; backward writes this rank's slice.

    ``x2`` (N, C_r) holds this rank's logits of N >= M rows, of which the first M are scored against
    ``t2`` (M,) (``shift`` passes all N rows and M = N - 1 targets; the rows beyond M get gradient 0).
    ``row_mask`` (M,) bool or None: rows where it is False are treated exactly as ignored ones.
    ``scale``: None, a float or a 0-d tensor s; the logits are s * x (multiplied on load). ``aux``: which
    of "predicted", "entropy" to compute (their per-rank pieces ride on the one all-gather).
    Returns ``(loss, keep, lse, predicted, entropy)``, the last two empty when not asked for.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x2: Tensor,
        t2: Tensor,
        start: int,
        sizes: tuple[int, ...],
        eps: float,
        z_loss: float,
        ignore_index: int,
        group: ProcessGroup,
        use_triton: bool,
        row_mask: Tensor | None = None,
        scale: Tensor | float | None = None,
        aux: frozenset[str] = frozenset(),
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        rows = t2.shape[0]
        cols = x2.shape[1]
        cdt = compute_dtype(x2.dtype)
        num_classes = sum(sizes)
        keep = t2 != ignore_index
        if row_mask is not None:
            keep = keep & row_mask
        local = t2 - start
        owned = keep & (local >= 0) & (local < cols)
        safe = torch.where(owned, local, torch.zeros_like(local))
        want_pred, want_ent = "predicted" in aux, "entropy" in aux
        s = scale.to(cdt) if isinstance(scale, Tensor) else scale

        # Per row: m_r, S_r - 1, the loss part a_r; then (if asked) the local argmax and
        # U_r = sum_c exp(z_c) z_c (z = x - m_r), so that the one all-gather carries them too.
        k = 3 + want_pred + want_ent
        i_pred, i_ent = 3, 3 + want_pred
        stats = torch.empty(k, rows, dtype=cdt, device=x2.device)
        masked = x2.device.type != "cpu"
        step = default_block_rows(cols, x2.device)
        # Triton's statistics pass knows neither a logit scale nor the argmax and entropy pieces; with
        # any of them the pass is the torch block loop below (still one read of the slice).
        triton_stats = use_triton and s is None and not want_pred and not want_ent
        if triton_stats:
            from labelsmooth.kernels import triton_ce

            # The Triton kernels' pass over the slice: max, S - 1, sum (x - m) and x_y - m in one read.
            st = triton_ce.slice_stats(x2[:rows], torch.where(owned, local, torch.full_like(local, -1)))
            stats[0] = st[0]
            stats[1] = st[1]
            stats[2] = st[3].mul(-(1.0 - eps))
            if eps > 0:
                stats[2].sub_(st[2], alpha=eps / num_classes)
        # One scratch block reused by every chunk: a fresh block each time costs page faults on CPU.
        scratch = None if triton_stats else torch.empty(min(step, rows), cols, dtype=cdt, device=x2.device)
        scratch_e = torch.empty_like(scratch) if want_ent and scratch is not None else None
        for a in range(0, 0 if triton_stats else rows, step):
            b = min(rows, a + step)
            assert scratch is not None  # this loop runs only without Triton's pass, which allocates it
            x = x2[a:b].to(cdt)
            if s is not None:
                x = torch.mul(x, s, out=scratch[: b - a])  # the scaled block, never a scaled N x C copy
            m = torch.amax(x, dim=1, out=stats[0, a:b])
            if want_pred:
                stats[i_pred, a:b] = x.argmax(dim=1)  # first index on ties, as torch.argmax
            # A slice whose logits are all -inf (padding of the vocabulary) has S_r = 0; shifting it by
            # 0 instead of m keeps its z at -inf rather than NaN.
            shift = torch.where(m == float("-inf"), 0.0, m)
            z = torch.sub(x, shift.unsqueeze(1), out=scratch[: b - a])
            z_y = z.gather(1, safe[a:b].unsqueeze(1)).squeeze(1)
            part = torch.where(owned[a:b], z_y, 0.0).mul_(-(1.0 - eps))
            if eps > 0:
                part.sub_(z.sum(dim=1), alpha=eps / num_classes)
            stats[2, a:b] = part
            if scratch_e is not None:
                # -inf logits: exp(z) z would be 0 * -inf; the lowest finite z gives the same exp (0).
                z.clamp_(min=torch.finfo(cdt).min)
                e = torch.exp(z, out=scratch_e[: b - a])
                stats[i_ent, a:b] = torch.linalg.vecdot(e, z)
            else:
                e = z.exp_()
            rest = e.sum(dim=1, keepdim=True).sub_(1.0)
            # A confident row's S_r - 1 is about its loss, mostly rounded away in 1 + (S_r - 1): those
            # rows get it summed again without one max element (whose exp is exactly 1).
            _refine_confident_rows(e, rest, masked)
            stats[1, a:b] = rest.squeeze(1)

        world = len(sizes)
        every = torch.empty(world, k, rows, dtype=cdt, device=x2.device)
        _all_gather(every, stats, group)

        # From here on every rank computes the same numbers from the same gathered statistics.
        m_r, rest_r, part_r = every[:, 0], every[:, 1], every[:, 2]  # each (P, M)
        big_m = m_r.amax(dim=0)
        d = m_r - big_m  # <= 0; -inf for an all -inf slice
        first = m_r.argmax(dim=0, keepdim=True)  # the first rank holding the max
        ranks = torch.arange(world, device=x2.device).unsqueeze(1)
        contrib = torch.where(ranks == first, rest_r, (rest_r + 1.0) * torch.exp(d))
        s_m1 = contrib.sum(dim=0)
        log_s = torch.log1p(s_m1)

        size_t, bounds = _partition_tensors(sizes, x2.device)
        owner = torch.bucketize(torch.where(keep, t2, torch.zeros_like(t2)), bounds, right=True)
        owner = owner.clamp_(max=world - 1)  # out-of-range targets were rejected or are asserted on
        d_y = d.gather(0, owner.unsqueeze(0)).squeeze(0)
        loss = log_s + part_r.sum(dim=0) - (1.0 - eps) * d_y
        if eps > 0:
            loss = loss - (eps / num_classes) * (size_t.to(cdt).unsqueeze(1) * d).sum(dim=0)
        lse = big_m + log_s
        if z_loss:
            loss = loss + z_loss * lse * lse
        zero = torch.zeros_like(loss)
        loss = torch.where(keep, loss, zero)

        none = torch.empty(0, device=x2.device)
        predicted = entropy = none
        if want_pred:
            # The global argmax: the first rank holding the row max (ranks hold their classes in order),
            # at its own first maximal index; ties therefore go to the lowest global index.
            where = every[:, i_pred].gather(0, first).squeeze(0).long()
            predicted = (bounds - size_t).gather(0, first.squeeze(0)) + where
            predicted = torch.where(keep, predicted, torch.full_like(predicted, ignore_index))
        if want_ent:
            # sum_c exp(x_c - M)(x_c - M) = sum_r exp(d_r) (U_r + d_r S_r); H = log S - that / S, both
            # terms >= 0 (nothing cancels). An all -inf slice (d_r = -inf) contributes nothing.
            u_r = every[:, i_ent]
            piece = torch.exp(d) * (u_r + d * (rest_r + 1.0))
            u = torch.where(d == float("-inf"), 0.0, piece).sum(dim=0)
            entropy = torch.where(keep, log_s - u / (s_m1 + 1.0), zero)

        ctx.rows = rows
        ctx.save_for_backward(x2, big_m, s_m1, lse, keep, owned, safe, *([s] if isinstance(s, Tensor) else []))
        ctx.eps, ctx.z_loss, ctx.num_classes, ctx.use_triton = eps, z_loss, num_classes, use_triton
        ctx.scale = s if not isinstance(s, Tensor) else None
        ctx.scale_is_tensor = isinstance(s, Tensor)
        ctx.scale_dtype = scale.dtype if isinstance(scale, Tensor) else None
        ctx.group = group
        lse = torch.where(keep, lse, zero)
        ctx.mark_non_differentiable(keep, lse, predicted, entropy)
        return loss, keep, lse, predicted, entropy

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor | None) -> tuple[Tensor | None, ...]:
        x2, big_m, s_m1, lse, keep, owned, safe, *maybe_s = ctx.saved_tensors
        s = maybe_s[0] if ctx.scale_is_tensor else ctx.scale
        want_ds = ctx.scale_is_tensor and ctx.needs_input_grad[10]
        nones = (None,) * 9
        eps, z_loss, num_classes = ctx.eps, ctx.z_loss, ctx.num_classes
        rows = ctx.rows
        if ctx.use_triton:
            ds_rows = torch.zeros(rows, dtype=torch.float32, device=x2.device) if want_ds else None
            ls = s.detach().float() if isinstance(s, Tensor) else s
            if ls is not None and not isinstance(ls, Tensor):
                ls = torch.full((), ls, dtype=torch.float32, device=x2.device)  # filled on the device
            grad = _triton_backward(
                x2, rows, big_m, s_m1, lse, keep, owned, safe, grad_loss, eps, z_loss, num_classes,
                logit_scale=ls, dscale=ds_rows,
            )  # fmt: skip
            return (grad, *nones, _scale_grad(ds_rows, ctx.group, ctx.scale_dtype), None)
        cdt = big_m.dtype
        cols = x2.shape[1]
        g = torch.where(keep, grad_loss.to(cdt), torch.zeros_like(big_m))
        sp1 = s_m1 + 1.0
        scale = g * (1.0 + 2.0 * z_loss * lse) / sp1 if z_loss else g / sp1
        off = g * (eps / num_classes)
        grad = empty_for_grad(x2)  # advised for huge pages: first-touch faults of a large buffer are slow
        if rows < x2.shape[0]:
            grad[rows:].zero_()  # rows no target scores (shift's last row) are never read
        in_place = x2.dtype == cdt  # float32/float64 logits: compute straight into the gradient
        masked = x2.device.type != "cpu"
        step = default_block_rows(cols, x2.device)
        scratch = None if in_place else torch.empty(min(step, rows), cols, dtype=cdt, device=x2.device)
        ds_rows = torch.empty(rows, dtype=cdt, device=x2.device) if want_ds else None
        for a in range(0, rows, step):
            b = min(rows, a + step)
            out = grad[a:b]
            if not in_place:
                assert scratch is not None  # allocated above whenever the gradient is not in place
                out = scratch[: b - a]
                torch.sub(
                    x2[a:b].to(cdt) if s is None else torch.mul(x2[a:b].to(cdt), s), big_m[a:b].unsqueeze(1), out=out
                )
            elif s is None:
                torch.sub(x2[a:b], big_m[a:b].unsqueeze(1), out=out)
            else:
                torch.mul(x2[a:b], s, out=out).sub_(big_m[a:b].unsqueeze(1))
            z = out
            idx = safe[a:b].unsqueeze(1)
            z_y = z.gather(1, idx).squeeze(1)
            gr = z.exp_().mul_(scale[a:b].unsqueeze(1)).sub_(off[a:b].unsqueeze(1))
            # Target column: p_y - 1 = (expm1(z_y) - (S - 1)) / S keeps a confident row's small gradient,
            # which p_y - 1 computed directly would round to 0 in float32.
            s_b = sp1[a:b]
            g_y = (torch.expm1(z_y) - s_m1[a:b]) / s_b + (eps - eps / num_classes)
            if z_loss:
                g_y = g_y + (2.0 * z_loss) * lse[a:b] * torch.exp(z_y) / s_b
            g_y = torch.where(owned[a:b], g[a:b] * g_y, gr.gather(1, idx).squeeze(1))
            gr.scatter_(1, idx, g_y.unsqueeze(1))
            # Ignored rows get exactly 0, even when their logits are NaN or infinite (0 * NaN is NaN).
            if masked:
                gr.masked_fill_(~keep[a:b].unsqueeze(1), 0.0)
            else:
                drop = (~keep[a:b]).nonzero().squeeze(1)  # on CPU reading it costs no synchronisation
                if drop.numel():
                    gr.index_fill_(0, drop, 0.0)
            if ds_rows is not None:
                # d loss / d s = sum_c ghat_c x_c; where ghat is 0 (ignored rows, p = 0 at -inf logits)
                # the term is 0 whatever x holds.
                xb = x2[a:b].to(cdt)
                ds_rows[a:b] = torch.linalg.vecdot(gr, torch.where(gr == 0, 0.0, xb))
            if s is not None:
                gr.mul_(s)  # the gradient w.r.t. x carries s
            if not in_place:
                grad[a:b].copy_(gr)
        return (grad, *nones, _scale_grad(ds_rows, ctx.group, ctx.scale_dtype), None)


def _scale_grad(ds_rows: Tensor | None, group: ProcessGroup, dtype: torch.dtype) -> Tensor | None:
    """d loss / d s from this rank's per-row sums over its slice: the logit scale acts on every slice,
    so its gradient is the sum over the group's ranks, the same on each (one all-reduce of one number)."""
    if ds_rows is None:
        return None
    ds = ds_rows.sum()
    _dist().all_reduce(ds, group=group)
    return ds.to(dtype)  # the logit scale's own dtype, whatever the logits' compute dtype


#: Local class index the Triton backward reads as "ignored row" (local indices are -1 or in [0, C)).
_IGNORED = -2


def _triton_backward(
    x2: Tensor,
    rows: int,
    big_m: Tensor,
    s_m1: Tensor,
    lse: Tensor,
    keep: Tensor,
    owned: Tensor,
    safe: Tensor,
    grad_loss: Tensor,
    eps: float,
    z_loss: float,
    num_classes: int,
    *,
    logit_scale: Tensor | None = None,
    dscale: Tensor | None = None,
) -> Tensor:
    """This slice's gradient by the Triton backward kernel, from the whole row's statistics: one read of
    the slice and one write, grad_output read on the device. ``logit_scale`` (0-d float32) s: the
    statistics are the scaled logits' and the gradient carries s; ``dscale`` (rows,) float32 receives
    this slice's part of sum_c ghat_c x_c per row."""
    from labelsmooth.kernels import triton_ce

    # The kernel's row statistics (M, S, S - 1, d loss / d log S). Without weights the target and the
    # smoothing terms' coefficients sum to (1 - eps) + eps = 1 for every row that is not ignored.
    coef = 1.0 + 2.0 * z_loss * lse if z_loss else torch.ones_like(lse)
    ref = torch.where(big_m == float("-inf"), torch.zeros_like(big_m), big_m)
    stats = torch.stack([ref, s_m1 + 1.0, s_m1, coef], dim=1).float().contiguous()
    local = torch.where(keep, torch.where(owned, safe, torch.full_like(safe, -1)), torch.full_like(safe, _IGNORED))
    grad = torch.empty_like(x2)
    if rows < x2.shape[0]:
        grad[rows:].zero_()  # rows no target scores (shift's last row) are never read
    triton_ce.backward(
        x2[:rows],
        local,
        None,
        _IGNORED,
        eps,
        None,
        stats,
        grad[:rows],
        grad_output=grad_loss.float(),
        logit_scale=logit_scale,
        dscale=dscale,
        smoothing_classes=num_classes,
        target_elsewhere=True,
    )
    return grad


@overload
def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    z_loss: float = 0.0,
    group: ProcessGroup | None = None,
    backend: str = "auto",
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[False] = False,
) -> Tensor: ...


@overload
def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    z_loss: float = 0.0,
    group: ProcessGroup | None = None,
    backend: str = "auto",
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: Literal[True] | Iterable[str],
) -> tuple[Tensor, dict[str, Tensor]]: ...


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    z_loss: float = 0.0,
    group: ProcessGroup | None = None,
    backend: str = "auto",
    token_weight: Tensor | None = None,
    shift: bool = False,
    logit_scale: float | Tensor | None = None,
    return_aux: bool | Iterable[str] = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Label-smoothed cross-entropy of logits split over the vocabulary across the ranks of ``group``.

    Rank r of ``group`` holds the logits of a contiguous slice of the K classes, the slices in rank order
    (they may be of different sizes, see :func:`vocab_slice`). Every rank holds the same rows and the
    same ``target`` (global class indices). The loss, identical on every rank, and each rank's
    gradient equal those of ``labelsmooth.cross_entropy`` (and ``torch.nn.functional.cross_entropy``)
    on the gathered logits, with the smoothing spread as eps/K over all K classes. Forward makes one
    all-gather of 3 numbers per row per rank (5 with ``predicted`` and ``entropy``; never logits);
    backward communicates nothing (one all-reduce of one number when a ``logit_scale`` tensor needs its
    gradient). The first call for a group and slice size makes one more small collective to learn the
    slice sizes.

    Args:
        local_logits: this rank's logits, shape (*, C_r), classes last; (B, T, C_r) with ``shift``.
        target: class indices of shape (*) (any integer dtype), in [0, K) or ``ignore_index``.
        label_smoothing: eps in [0, 1], spread over the global K classes.
        ignore_index: target value whose rows give loss 0 and gradient 0 and are left out of "mean".
        reduction: ``"none"``, ``"mean"`` (over the rows not ignored) or ``"sum"``.
        z_loss: adds ``z_loss * logsumexp(x)**2`` (over all K classes) to every row not ignored.
        group: the tensor-parallel process group (None: the default group).
        backend: the local work's kernels: ``"triton"`` (the Triton kernels' statistics pass and their
            backward with the whole row's statistics; CUDA, or CPU tensors under TRITON_INTERPRET=1),
            ``"chunked"`` (torch ops over cache-sized blocks of rows, any device), or ``"auto"``: triton
            for float16/bfloat16/float32 logits on CUDA when Triton is installed, else chunked. With
            ``logit_scale``, ``predicted`` or ``entropy`` the forward's statistics pass is chunked's on
            every backend (Triton's slice statistics kernel computes none of them).
        token_weight: a floating per-row weight r_n of the target's shape (or 1-D, one per row): row
            losses and gradients are multiplied by it, and ``"mean"`` divides by the sum of r_n over the
            rows not ignored. Differentiable.
        shift: next-token prediction on (B, T, C_r) logits and (B, T) targets: row (b, t) is scored
            against ``target[b, t + 1]`` (views, no copies), and the last position of each sequence
            is ignored (loss 0, gradient 0, not counted by ``"mean"``).
        logit_scale: a float or 0-dim tensor s: the logits are ``s * x`` (multiplied on load). A tensor
            that requires grad gets d loss / d s, summed over the group's ranks.
        return_aux: True or names from ``("z_loss", "lse", "accuracy", "predicted", "entropy")``:
            return ``(loss, aux)`` with ``aux`` a dict of detached tensors: ``lse`` the global
            log-sum-exp per row; ``predicted`` the global argmax (the lowest index on ties);
            ``entropy`` of the softmax over all K classes; ``accuracy`` and ``z_loss`` reduced like
            the loss. Ignored rows: lse 0, entropy 0, predicted ``ignore_index``.

    Returns:
        The loss: a scalar, or of the target's shape for ``reduction="none"``; in the logits' dtype.
        With ``return_aux``, ``(loss, aux)``.

    Example:
        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]); y = torch.tensor([0, -100])
        >>> torch.allclose(vocab_parallel_cross_entropy(x, y, label_smoothing=0.1),
        ...                torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
        >>> loss, aux = vocab_parallel_cross_entropy(x, y, return_aux=("predicted", "accuracy"))
        >>> aux["predicted"], aux["accuracy"]
        (tensor([   0, -100]), tensor(1.))
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
        Parallelism", 2019.
    """
    V.check_tensor(local_logits, "local_logits")
    V.check_tensor(target, "target")
    V.check_floating(local_logits, "local_logits")
    V.check_integer(target, "target")
    eps = V.check_label_smoothing(label_smoothing)
    ignore_index = V.check_index(ignore_index, "ignore_index")
    reduction = V.check_reduction(reduction)
    z_loss = V.check_nonnegative_float(z_loss, "z_loss")
    if local_logits.dim() < 1:
        raise ValueError("local_logits must have a class dimension (the last), got a 0-d tensor")
    if tuple(target.shape) != tuple(local_logits.shape[:-1]):
        raise ValueError(
            f"target must have local_logits' shape without the class dimension, "
            f"{tuple(local_logits.shape[:-1])}, got {tuple(target.shape)}"
        )
    if target.device != local_logits.device:
        raise ValueError(f"target is on {target.device} but local_logits is on {local_logits.device}")
    opts = O.parse_options(
        token_weight=token_weight,
        shift=shift,
        logit_scale=logit_scale,
        return_aux=return_aux,
        target=target,
        batch_shape=tuple(target.shape),
        probs=False,
        device=local_logits.device,
    )
    if backend not in ("auto", "chunked", "triton"):
        raise V.ArgumentError(f"backend must be one of ('auto', 'chunked', 'triton'), got {backend!r}")
    from labelsmooth.functional import _triton_usable

    fits = local_logits.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if backend == "triton" and not (fits and _triton_usable(local_logits.device)):
        raise V.ArgumentError(
            f"backend='triton' needs float16/bfloat16/float32 logits on CUDA (or "
            f"TRITON_INTERPRET=1) and triton installed; got {local_logits.dtype} on "
            f"{local_logits.device}"
        )
    use_triton = backend == "triton" or (
        backend == "auto" and fits and local_logits.device.type == "cuda" and _triton_usable(local_logits.device)
    )
    dist = _dist()
    group = _resolve_group(dist, group)
    cols = local_logits.shape[-1]
    sizes = vocab_partition(cols, group, device=local_logits.device)
    start = sum(sizes[: dist.get_rank(group)])
    target = target.long()
    if not torch.compiler.is_compiling():
        V.check_class_indices(target, sum(sizes), ignore_index)

    x2 = local_logits.reshape(-1, cols)
    num_rows, seq = x2.shape[0], opts.seq_len
    cdt = compute_dtype(x2.dtype)
    # Shift: the kernel rows are the first N - 1 rows against target.reshape(-1)[1:] (views); the
    # sequence ends are masked like ignored rows, and the last row is never read.
    _, t2 = O.shift_views(x2, target.reshape(-1), seq)
    keep = O.keep_rows(t2, ignore_index, seq) if seq is not None else None
    r = O.row_weights(opts.token_weight, num_rows, seq, cdt, x2.device)
    wanted = O.kernel_aux(opts.aux, z_loss)
    with torch.autocast(local_logits.device.type, enabled=False):
        if use_triton and x2.stride(-1) != 1:
            x2 = x2.contiguous()
        # torch leaves Function.apply unannotated; forward above fixes what it returns.
        rows: Tensor
        kept: Tensor
        rows, kept, lse, predicted, entropy = _VocabParallelCrossEntropy.apply(  # type: ignore[no-untyped-call]
            x2, t2, start, sizes, eps, z_loss, ignore_index, group, use_triton, keep, opts.logit_scale, wanted
        )
        # r_n * loss_n, exactly 0 on ignored rows and sequence ends whatever their weight holds.
        rows = O.weight_rows(rows, r, kept if r is not None else None)
        # A device tensor, not a Python number: the denominator needs no host synchronisation.
        denom = O.mean_denominator(t2, None, ignore_index, cdt, r) if reduction == "mean" else None
        if reduction == "none":
            out = O.pad_rows(rows, num_rows).reshape(target.shape)
        else:
            out = O.reduce_rows(rows, reduction, denom)
        out = out.to(local_logits.dtype)
        if opts.aux is None:
            return out
        aux = O.build_aux(
            opts.aux,
            {"lse": lse, "predicted": predicted, "entropy": entropy},
            target=t2,
            ignore_index=ignore_index,
            weight=None,
            row_weight=r,
            keep=kept,
            reduction=reduction,
            denom=denom,
            z_loss=z_loss,
            num_rows=num_rows,
            batch_shape=tuple(target.shape),
            dtype=cdt,
        )
    return out, aux


def global_num_targets(
    target: Tensor | Sequence[Tensor], ignore_index: int = -100, group: ProcessGroup | None = None
) -> Tensor:
    """The number of targets that are not ``ignore_index``, summed over the ranks of ``group``.

    Pass the targets of every micro-batch of one optimiser step on this rank and the data-parallel
    group; dividing each micro-batch's summed loss by the result (and summing gradients over the data-
    parallel ranks) gives exactly the full batch's mean loss and gradient, however unevenly padding
    falls (see ``docs/distributed.md``). The count stays on the device: no host synchronisation.

    Args:
        target: an integer tensor of class indices, or a sequence of them (any shapes).
        ignore_index: the target value that is not counted.
        group: the data-parallel process group (None: the default group). Ranks that hold the same
            rows (a tensor-parallel group) must not both be in it, or their rows count twice.

    Returns:
        A 0-d int64 tensor on the targets' device, equal on every rank of ``group``.

    Example:
        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> global_num_targets([torch.tensor([3, -100, 1]), torch.tensor([[-100, 2]])])
        tensor(3)
        >>> dist.destroy_process_group()
    """
    targets = [target] if isinstance(target, Tensor) else list(target) if isinstance(target, Sequence) else None
    if targets is None:
        raise TypeError(f"target must be a torch.Tensor or a sequence of them, got {type(target).__name__}")
    if not targets:
        raise ValueError("target must hold at least one tensor, got an empty sequence")
    for i, t in enumerate(targets):
        name = "target" if isinstance(target, Tensor) else f"target[{i}]"
        V.check_tensor(t, name)
        V.check_integer(t, name)
        if t.device != targets[0].device:
            raise ValueError(f"{name} is on {t.device} but target[0] is on {targets[0].device}")
    ignore_index = V.check_index(ignore_index, "ignore_index")
    dist = _dist()
    group = _resolve_group(dist, group)
    count = torch.zeros((), dtype=torch.int64, device=targets[0].device)
    for t in targets:
        count += (t != ignore_index).sum()
    dist.all_reduce(count, group=group)
    return count
