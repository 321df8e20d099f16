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
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

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
    """Row losses (M,) of vocabulary-parallel logits (M, C_r); backward writes this rank's slice."""

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
    ) -> tuple[Tensor, Tensor]:
        rows, cols = x2.shape
        cdt = compute_dtype(x2.dtype)
        num_classes = sum(sizes)
        keep = t2 != ignore_index
        local = t2 - start
        owned = keep & (local >= 0) & (local < cols)
        safe = torch.where(owned, local, torch.zeros_like(local))

        stats = torch.empty(3, rows, dtype=cdt, device=x2.device)
        masked = x2.device.type != "cpu"
        step = default_block_rows(cols, x2.device)
        if use_triton:
            from labelsmooth.kernels import triton_ce

            # The Triton kernels' pass over the slice: max, S - 1, sum (x - m) and x_y - m in one read.
            st = triton_ce.slice_stats(x2, torch.where(owned, local, torch.full_like(local, -1)))
            stats[0] = st[0]
            stats[1] = st[1]
            stats[2] = st[3].mul(-(1.0 - eps))
            if eps > 0:
                stats[2].sub_(st[2], alpha=eps / num_classes)
        # One scratch block reused by every chunk: a fresh block each time costs page faults on CPU.
        scratch = None if use_triton else torch.empty(min(step, rows), cols, dtype=cdt, device=x2.device)
        for a in range(0, 0 if use_triton else rows, step):
            b = min(rows, a + step)
            x = x2[a:b].to(cdt)
            m = torch.amax(x, dim=1, out=stats[0, a:b])
            # A slice whose logits are all -inf (padding of the vocabulary) has S_r = 0; shifting it by
            # 0 instead of m keeps its z at -inf rather than NaN.
            shift = torch.where(m == float("-inf"), 0.0, m)
            assert scratch is not None  # this loop runs only without Triton, which allocates it
            z = torch.sub(x, shift.unsqueeze(1), out=scratch[: b - a])
            z_y = z.gather(1, safe[a:b].unsqueeze(1)).squeeze(1)
            part = torch.where(owned[a:b], z_y, 0.0).mul_(-(1.0 - eps))
            if eps > 0:
                part.sub_(z.sum(dim=1), alpha=eps / num_classes)
            stats[2, a:b] = part
            e = z.exp_()
            rest = e.sum(dim=1, keepdim=True).sub_(1.0)
            # A confident row's S_r - 1 is about its loss, mostly rounded away in 1 + (S_r - 1): those
            # rows get it summed again without one max element (whose exp is exactly 1).
            _refine_confident_rows(e, rest, masked)
            stats[1, a:b] = rest.squeeze(1)

        world = len(sizes)
        every = torch.empty(world, 3, rows, dtype=cdt, device=x2.device)
        _all_gather(every, stats, group)

        # From here on every rank computes the same numbers from the same gathered statistics.
        m_r, rest_r, part_r = every.unbind(1)  # each (P, M)
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
        loss = torch.where(keep, loss, torch.zeros_like(loss))

        ctx.save_for_backward(x2, big_m, s_m1, lse, keep, owned, safe)
        ctx.eps, ctx.z_loss, ctx.num_classes, ctx.use_triton = eps, z_loss, num_classes, use_triton
        ctx.mark_non_differentiable(keep)
        return loss, keep

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_keep: Tensor | None) -> tuple[Tensor | None, ...]:
        x2, big_m, s_m1, lse, keep, owned, safe = ctx.saved_tensors
        eps, z_loss, num_classes = ctx.eps, ctx.z_loss, ctx.num_classes
        if ctx.use_triton:
            return (
                _triton_backward(x2, big_m, s_m1, lse, keep, owned, safe, grad_loss, eps, z_loss, num_classes),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            )
        cdt = big_m.dtype
        rows, cols = x2.shape
        g = torch.where(keep, grad_loss.to(cdt), torch.zeros_like(big_m))
        s = s_m1 + 1.0
        scale = g * (1.0 + 2.0 * z_loss * lse) / s if z_loss else g / s
        off = g * (eps / num_classes)
        grad = empty_for_grad(x2)  # advised for huge pages: first-touch faults of a large buffer are slow
        in_place = x2.dtype == cdt  # float32/float64 logits: compute straight into the gradient
        masked = x2.device.type != "cpu"
        step = default_block_rows(cols, x2.device)
        scratch = None if in_place else torch.empty(min(step, rows), cols, dtype=cdt, device=x2.device)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            out = grad[a:b]
            if in_place:
                z = torch.sub(x2[a:b], big_m[a:b].unsqueeze(1), out=out)
            else:
                assert scratch is not None  # allocated above whenever the gradient is not in place
                z = torch.sub(x2[a:b].to(cdt), big_m[a:b].unsqueeze(1), out=scratch[: b - a])
            idx = safe[a:b].unsqueeze(1)
            z_y = z.gather(1, idx).squeeze(1)
            gr = z.exp_().mul_(scale[a:b].unsqueeze(1)).sub_(off[a:b].unsqueeze(1))
            # Target column: p_y - 1 = (expm1(z_y) - (S - 1)) / S keeps a confident row's small gradient,
            # which p_y - 1 computed directly would round to 0 in float32.
            s_b = s[a:b]
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
            if not in_place:
                out.copy_(gr)
        return grad, None, None, None, None, None, None, None, None


#: Local class index the Triton backward reads as "ignored row" (local indices are -1 or in [0, C)).
_IGNORED = -2


def _triton_backward(
    x2: Tensor,
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
) -> Tensor:
    """This slice's gradient by the Triton backward kernel, from the whole row's statistics: one read of
    the slice and one write, grad_output read on the device."""
    from labelsmooth.kernels import triton_ce

    # The kernel's row statistics (M, S, S - 1, d loss / d log S). Without weights the target and the
    # smoothing terms' coefficients sum to (1 - eps) + eps = 1 for every row that is not ignored.
    coef = 1.0 + 2.0 * z_loss * lse if z_loss else torch.ones_like(lse)
    ref = torch.where(big_m == float("-inf"), torch.zeros_like(big_m), big_m)
    stats = torch.stack([ref, s_m1 + 1.0, s_m1, coef], dim=1).float().contiguous()
    local = torch.where(keep, torch.where(owned, safe, torch.full_like(safe, -1)), torch.full_like(safe, _IGNORED))
    grad = torch.empty_like(x2)
    triton_ce.backward(
        x2,
        local,
        None,
        _IGNORED,
        eps,
        None,
        stats,
        grad,
        grad_output=grad_loss.float(),
        smoothing_classes=num_classes,
        target_elsewhere=True,
    )
    return grad


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
) -> Tensor:
    """Label-smoothed cross-entropy of logits split over the vocabulary across the ranks of ``group``.

    Rank r of ``group`` holds the logits of a contiguous slice of the K classes, the slices in rank order
    (they may be of different sizes, see :func:`vocab_slice`). Every rank holds the same rows and the
    same ``target`` (global class indices). The loss, identical on every rank, and each rank's
    gradient equal those of ``labelsmooth.cross_entropy`` (and ``torch.nn.functional.cross_entropy``)
    on the gathered logits, with the smoothing spread as eps/K over all K classes. Forward makes one
    all-gather of 3 numbers per row per rank (never logits); backward communicates nothing. The first
    call for a group and slice size makes one more small collective to learn the slice sizes.

    Args:
        local_logits: this rank's logits, shape (*, C_r), classes last.
        target: class indices of shape (*) (any integer dtype), in [0, K) or ``ignore_index``.
        label_smoothing: eps in [0, 1], spread over the global K classes.
        ignore_index: target value whose rows give loss 0 and gradient 0 and are left out of "mean".
        reduction: ``"none"``, ``"mean"`` (over the rows not ignored) or ``"sum"``.
        z_loss: adds ``z_loss * logsumexp(x)**2`` (over all K classes) to every row not ignored.
        group: the tensor-parallel process group (None: the default group).
        backend: the local work's kernels: ``"triton"`` (the Triton kernels' statistics pass and their
            backward with the whole row's statistics; CUDA, or CPU tensors under TRITON_INTERPRET=1),
            ``"chunked"`` (torch ops over cache-sized blocks of rows, any device), or ``"auto"``: triton
            for float16/bfloat16/float32 logits on CUDA when Triton is installed, else chunked.

    Returns:
        The loss: a scalar, or of the target's shape for ``reduction="none"``; in the logits' dtype.

    Example:
        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]); y = torch.tensor([0, -100])
        >>> torch.allclose(vocab_parallel_cross_entropy(x, y, label_smoothing=0.1),
        ...                torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
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
    t2 = target.reshape(-1)
    with torch.autocast(local_logits.device.type, enabled=False):
        if use_triton and x2.stride(-1) != 1:
            x2 = x2.contiguous()
        # torch leaves Function.apply unannotated; forward above fixes what it returns.
        rows: Tensor
        keep: Tensor
        rows, keep = _VocabParallelCrossEntropy.apply(  # type: ignore[no-untyped-call]
            x2, t2, start, sizes, eps, z_loss, ignore_index, group, use_triton
        )
        if reduction == "none":
            out = rows.reshape(target.shape)
        elif reduction == "sum":
            out = rows.sum()
        else:
            # A device tensor, not a Python number: the count needs no host synchronisation.
            out = rows.sum() / keep.sum().to(rows.dtype)
    return out.to(local_logits.dtype)


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
