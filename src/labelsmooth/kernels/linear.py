"""Fused linear layer + label-smoothed cross-entropy, over chunks of rows: the N x C logits never exist.

For hidden states X (N, H), a classifier weight W (C, H) and bias b (C,), each chunk of R rows runs::

    L   = X[chunk] @ W.T + b             (R, C), in one reused buffer
    row losses, and G = d loss / d L     written over L by a cross-entropy kernel, times grad_scale
    dX[chunk]  = G @ W                   (R, H)
    dW        += G.T @ X[chunk]          (C, H), by default in float32 for half-precision weights
    db        += sum_rows G              (C,), the same dtype (``accum_dtype``, :func:`accumulation_dtype`)

so the largest temporary is the R x C chunk of logits. The kernel is either of the cross-entropy
kernels (``labelsmooth.kernels.chunked.fused_ce`` on CPU, ``labelsmooth.kernels.triton_ce`` on CUDA),
called through their common contract (``labelsmooth.kernels``) with ``grad`` = the chunk's logits:
on CUDA one launch per chunk, each row's statistics pass followed by its gradient pass.

"mean" and "sum": the gradients are computed during forward and kept until backward, which multiplies
them by the scalar grad_output (nothing at all on CPU when it is 1). For "mean" the denominator over
*all* rows is computed first, from the targets alone and on the device (no host synchronisation), and
its reciprocal goes to the kernel as ``grad_scale``, so that no gradient needs a second pass.

"none": grad_output is a vector, one value per row, unknown during forward, and dW = G.T diag(g) X
cannot be rescaled once summed over rows. So forward computes only the losses (one matmul per chunk)
and backward recomputes each chunk's logits and gradient (a second forward matmul), scaling the rows
by grad_output before the two gradient matmuls: four matmuls in all instead of three, and nothing
of size N x C or C x H is kept between forward and backward (torch's chunked path makes the same
choice for "none").

The language-model options (``labelsmooth._options``) ride on the same loop: with ``shift`` the first
N - 1 rows of X are scored against the shifted target view (nothing copied) and each chunk's
sequence-end gradient rows are zeroed after the kernel; row weights r_n (``token_weight``, shift's
sequence ends) are the kernels' per-row ``grad_scale`` (times 1/D for "mean"); a logit scale s goes to
the kernel, which multiplies each logit as it loads it and writes s times the gradient, with per-row
d/ds sums (``dscale``) when s is a tensor that wants a gradient; the aux pieces (lse, predicted,
entropy) come out of the kernel's pass over each chunk. None of them adds a buffer of chunk size.

Chunk height (:func:`default_chunk_rows`): on CPU about 32 MiB of float32 logits and at least 128
rows (smaller chunks make the matmuls slower: the three matmuls of a 2048 x 1024 -> 32000
forward+backward took ~2.2-2.5 s in chunks of 256 or 512 rows and ~3.2-3.5 s in chunks of 64 on two
cores at load ~1; 512-row chunks would add 32 MB for no measurable gain); on an accelerator
``DEVICE_CHUNK_BYTES`` of logits in the matmul's dtype, at most 1/``DEVICE_MEMORY_SHARE`` of the
device's memory, in multiples of 128 rows (whole tensor-core tiles).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import torch
from torch import Tensor

from labelsmooth._options import zero_sequence_ends
from labelsmooth.reference import compute_dtype

# CPU: bytes of float32 logits per chunk, and the fewest rows a chunk may have (matmul efficiency).
CHUNK_BYTES = 32 << 20
MIN_CHUNK_ROWS = 128
# Accelerators: bytes of logits per chunk, the largest share of device memory one chunk may take, and
# the row granularity of a chunk.
DEVICE_CHUNK_BYTES = 256 << 20
DEVICE_MEMORY_SHARE = 64
DEVICE_ROW_MULTIPLE = 128


def default_chunk_rows(
    num_rows: int, num_classes: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> int:
    """Rows per chunk for ``num_rows`` rows of ``num_classes`` logits of ``dtype`` on ``device``.

    CPU: ``CHUNK_BYTES`` of float32 logits, rounded down to a multiple of 64 rows, at least
    ``MIN_CHUNK_ROWS``. Other devices: ``DEVICE_CHUNK_BYTES`` of logits in ``dtype``, capped at
    1/``DEVICE_MEMORY_SHARE`` of the device's memory where torch reports it, rounded down to a multiple
    of ``DEVICE_ROW_MULTIPLE`` rows (at least 1). Never more than ``num_rows`` (nor less than 1).

    >>> default_chunk_rows(2048, 32000)
    256
    >>> default_chunk_rows(2048, 128256)
    128
    >>> default_chunk_rows(8192, 128256, torch.bfloat16, "meta")
    1024
    """
    dev = torch.device("cpu" if device is None else device)
    classes = max(1, num_classes)
    if dev.type == "cpu":
        rows = CHUNK_BYTES // (4 * classes)
        rows = max(MIN_CHUNK_ROWS, rows // 64 * 64)
    else:
        budget = DEVICE_CHUNK_BYTES
        if dev.type == "cuda" and torch.cuda.is_available():
            budget = min(budget, torch.cuda.get_device_properties(dev).total_memory // DEVICE_MEMORY_SHARE)
        rows = budget // ((torch.finfo(dtype).bits // 8) * classes)
        if rows >= DEVICE_ROW_MULTIPLE:
            rows = rows // DEVICE_ROW_MULTIPLE * DEVICE_ROW_MULTIPLE
    return max(1, min(rows, num_rows))


def _kernel(name: str) -> Callable[..., Any]:
    if name == "triton":
        from labelsmooth.kernels import triton_ce

        return triton_ce.fused_ce
    from labelsmooth.kernels import chunked

    return chunked.fused_ce


# Whether torch.addmm(..., out_dtype=float32) (one GEMM from half-precision operands into a float32
# result, CUDA only) has failed here once; then the sliced fallback is used from the start.
_dtype_gemm_failed = False


def _accumulate_mm(acc: Tensor, a: Tensor, b: Tensor, first: bool, slice_rows: int) -> None:
    """``acc (+)= a @ b`` with ``acc`` possibly of a wider dtype than ``a`` and ``b``.

    Same dtype: one (add)mm into ``acc`` (read and write of ``acc``: 2 x its element size per element).
    Wider ``acc`` (float32 for bf16/fp16 operands) on CUDA: one GEMM with a float32 result
    (``out_dtype``), reading and writing the float32 accumulator: 8 bytes per element. Elsewhere (or
    if that GEMM is refused) the product is formed in the operands' dtype (the matmul accumulates in
    float32 over the chunk's rows and rounds once) and added in float32, ``slice_rows`` rows of ``acc``
    at a time so that the temporary stays the size of a chunk of logits: 12 bytes per element
    (write and read the 2-byte product, read and write the 4-byte accumulator).
    """
    global _dtype_gemm_failed
    if acc.dtype == a.dtype:
        if first:
            torch.mm(a, b, out=acc)
        else:
            acc.addmm_(a, b)
        return
    if acc.device.type == "cuda" and not _dtype_gemm_failed:
        try:
            if first:
                torch.mm(a, b, out_dtype=acc.dtype, out=acc)
            else:
                torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError, NotImplementedError):  # an older torch or cuBLAS without it
            _dtype_gemm_failed = True
    for start in range(0, acc.shape[0], slice_rows):
        part = torch.mm(a[start : start + slice_rows], b)
        if first:
            acc[start : start + slice_rows].copy_(part)
        else:
            acc[start : start + slice_rows].add_(part)


def accumulation_dtype(mm_dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """The dtype the weight and bias gradients are accumulated in over the chunks: ``requested``, or
    by default float32 for half-precision matmuls (the weight's dtype otherwise)."""
    if requested is not None:
        return requested
    return compute_dtype(mm_dtype) if mm_dtype in (torch.float16, torch.bfloat16) else mm_dtype


def chunk_loop(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    kernel: str,
    chunk_rows: int,
    *,
    grad_scale: Tensor | None = None,
    grad_output: Tensor | None = None,
    want: tuple[bool, bool, bool] = (False, False, False),
    need_loss: bool = True,
    prior: Tensor | None = None,
    accum_dtype: torch.dtype | None = None,
    num_rows: int | None = None,
    logit_scale: float | Tensor | None = None,
    dscale: Tensor | None = None,
    aux: AbstractSet[str] = frozenset(),
    aux_out: dict[str, Tensor] | None = None,
    seq_len: int | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Row losses and the gradients of ``sum_n g_n loss_n`` for ``x`` (M, H), ``w`` (C, H), ``b`` (C,).

    ``x``, ``w`` and ``b`` are already in the matmul dtype. ``want`` = (input, weight, bias) says which
    gradients to form; with none wanted the kernel writes no gradient. ``grad_scale`` (0-d tensor)
    multiplies every row's gradient, ``grad_output`` ((M,) tensor) each row's, in the kernel where it
    can (Triton) or with one pass over the chunk (chunked). ``prior``: the smoothing prior of the
    kernels' contract (None: uniform). Returns ``(loss_rows, dx, dw, db)``:
    loss_rows (M,) in the compute dtype (None without ``need_loss``); dx (M, H) in ``x``'s dtype; dw
    (C, H) and db (C,) in ``accum_dtype`` (:func:`accumulation_dtype`: by default float32 for
    half-precision ``w``, else ``w``'s dtype).

    The language-model options (``labelsmooth._options``; each costs nothing when off):
    ``num_rows`` M <= len(x): only the first M rows are scored against ``target`` (M,) (shift passes
    every hidden state and the shifted target view), and dx's remaining rows are 0. ``grad_scale`` may
    be an (M,) tensor (row weights, times 1/D for "mean"). ``logit_scale`` goes to the kernel, which
    multiplies each chunk's logits on load. ``dscale`` (M,): the kernel's per-row sums for d loss / d s.
    ``aux``: the kernel's per-row pieces, written into ``aux_out`` ({name: (M,) tensor}, allocated here).
    ``seq_len``: with shift, the sequence-end rows of each chunk's gradient (and of ``dscale``) are set
    to exactly 0 after the kernel (their row weight is 0; this keeps NaN/Inf logits there out).
    """
    num_rows = x.shape[0] if num_rows is None else num_rows
    num_classes = w.shape[0]
    cdt = compute_dtype(x.dtype)
    dev = x.device
    fused = _kernel(kernel)
    want_x, want_w, want_b = want
    # dscale alone (only a logit-scale tensor wants a gradient) still needs the kernel's gradient pass.
    any_grad = want_x or want_w or want_b or dscale is not None
    acc_dt = accumulation_dtype(w.dtype, accum_dtype)
    loss = torch.empty(num_rows, dtype=cdt, device=dev) if need_loss else None
    dx = torch.empty_like(x) if want_x else None
    if dx is not None and num_rows < x.shape[0]:
        dx[num_rows:].zero_()  # rows no target scores (shift's last hidden state)
    if aux and aux_out is not None:
        for name in aux:
            aux_out[name] = torch.empty(num_rows, dtype=torch.int64 if name == "predicted" else cdt, device=dev)
    per_row_scale = grad_scale is not None and grad_scale.dim() == 1
    opts: dict[str, Any] = {}
    if logit_scale is not None:
        opts["logit_scale"] = logit_scale
    if aux:
        opts["aux"] = aux
    dw = torch.empty((num_classes, w.shape[1]), dtype=acc_dt, device=dev) if want_w else None
    db = torch.zeros(num_classes, dtype=acc_dt, device=dev) if want_b else None
    if num_rows == 0:
        if dw is not None:
            dw.zero_()
        return loss, dx, dw, db
    rows = max(1, min(chunk_rows, num_rows))
    buf = torch.empty((rows, num_classes), dtype=x.dtype, device=dev)
    wt = w.t()
    # dW is formed in slices of about a chunk's worth of elements when it needs a float32 temporary.
    slice_rows = max(1, rows * num_classes // max(1, w.shape[1]))
    for start in range(0, num_rows, rows):
        end = min(num_rows, start + rows)
        xc = x[start:end]
        logits = buf[: end - start]
        if b is None:
            torch.mm(xc, wt, out=logits)
        else:
            torch.addmm(b, xc, wt, out=logits)
        tc = target[start:end]
        go = grad_output[start:end] if grad_output is not None and any_grad else None
        # Triton: one launch per chunk, each row's statistics pass then its gradient pass (times
        # grad_output and grad_scale, read on the device) while the row is still in L2, written over
        # the logits. The chunked kernel takes no grad_output: one more pass over the chunk.
        extra = {"grad_output": go} if kernel == "triton" else {}
        if dscale is not None and any_grad:
            extra["dscale"] = dscale[start:end]
        result = fused(
            logits,
            tc,
            weight,
            ignore_index,
            eps,
            z_loss,
            softcap,
            logits if any_grad else None,
            grad_scale=grad_scale[start:end] if per_row_scale else grad_scale,  # type: ignore[index]
            prior=prior,
            **extra,
            **opts,
        )
        if aux:
            rows_loss, pieces = result
            if aux_out is not None:
                for name in aux:
                    aux_out[name][start:end] = pieces[name]
        else:
            rows_loss = result
        if seq_len is not None and any_grad:
            zero_sequence_ends(logits, seq_len, start)
            if dscale is not None:
                zero_sequence_ends(dscale[start:end], seq_len, start)
        if go is not None and kernel != "triton":
            if not tc.is_floating_point():
                # Ignored rows keep their exact zero whatever grad_output holds there (inf, NaN).
                go = torch.where(tc != ignore_index, go, torch.zeros_like(go))
            logits.mul_(go.to(logits.dtype).unsqueeze(1))
        if loss is not None:
            loss[start:end] = rows_loss
        if not any_grad:
            continue
        if dx is not None:
            torch.mm(logits, w, out=dx[start:end])
        if dw is not None:
            _accumulate_mm(dw, logits.t(), xc, start == 0, slice_rows)
        if db is not None:
            db.add_(logits.sum(dim=0, dtype=db.dtype))
    return loss, dx, dw, db


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Autograd glue for :func:`chunk_loop`; see the module docstring for the design.

    ``forward(x, w, b, target, weight, ignore_index, eps, z_loss, softcap, reduction, kernel,
    chunk_rows, mm_dtype, denom, grad_enabled, prior, accum_dtype, scale, row_weight, keep, seq_len,
    aux, aux_out)``: ``x`` (N, H), ``w`` (C, H), ``b`` (C,) or
    None in their own dtypes (cast to ``mm_dtype`` for the matmuls, as autocast would; the gradients
    come back in the originals' dtypes); ``denom`` the 0-d "mean" denominator or None;
    ``grad_enabled`` the caller's grad mode; ``prior`` the smoothing prior or None; ``accum_dtype``
    the weight and bias gradients' accumulation dtype (None: :func:`accumulation_dtype`'s default).

    The language-model options (all None/empty when off): ``target`` may have M < N rows (shift: the
    first M rows of ``x`` are scored); ``scale`` the logit scale (float or 0-d tensor, differentiable);
    ``row_weight`` (M,) r_n, already 0 where ``keep`` (M,) bool is False; ``seq_len`` T with shift;
    ``aux`` the kernel's per-row pieces, written into the dict ``aux_out``.
    Returns the reduced loss sum_n r_n loss_n (/ denom), or for "none" the (M,) unweighted row losses
    (the caller weights them, so that autograd carries r_n to backward's grad_output), in the compute
    dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        eps: float,
        z_loss: float,
        softcap: float | None,
        reduction: str,
        kernel: str,
        chunk_rows: int,
        mm_dtype: torch.dtype,
        denom: Tensor | None,
        grad_enabled: bool,
        prior: Tensor | None,
        accum_dtype: torch.dtype | None = None,
        scale: float | Tensor | None = None,
        row_weight: Tensor | None = None,
        keep: Tensor | None = None,
        seq_len: int | None = None,
        aux: AbstractSet[str] = frozenset(),
        aux_out: dict[str, Tensor] | None = None,
    ) -> Tensor:
        # Forward runs under no_grad: whether gradients are wanted was read by the caller.
        want = tuple(bool(n) for n in ctx.needs_input_grad[:3]) if grad_enabled else (False,) * 3
        want = (want[0], want[1], want[2] and b is not None)
        want_ds = grad_enabled and isinstance(scale, Tensor) and bool(ctx.needs_input_grad[17])
        ctx.dtypes = (x.dtype, w.dtype, None if b is None else b.dtype)
        ctx.options = (ignore_index, eps, z_loss, softcap, kernel, chunk_rows, mm_dtype, accum_dtype)
        ctx.reduction = reduction
        ctx.grads = None
        ctx.ds = None
        ctx.want_ds = want_ds
        ctx.seq_len = seq_len
        ctx.scale_dtype = scale.dtype if isinstance(scale, Tensor) else None
        ctx.float_scale = None if isinstance(scale, Tensor) else scale
        num_rows = target.shape[0]
        cdt = compute_dtype(mm_dtype)
        kscale = _kernel_scale(scale, kernel, x.device, cdt)
        lm: dict[str, Any] = dict(num_rows=num_rows, logit_scale=kscale, seq_len=seq_len)
        xm, wm = x.to(mm_dtype), w.to(mm_dtype)
        bm = None if b is None else b.to(mm_dtype)
        if reduction == "none":
            rows, _, _, _ = chunk_loop(
                xm,
                wm,
                bm,
                target,
                weight,
                ignore_index,
                eps,
                z_loss,
                softcap,
                kernel,
                chunk_rows,
                prior=prior,
                aux=aux,
                aux_out=aux_out,
                **lm,
            )
            if any(want) or want_ds:
                # Recomputed in backward: keep the operands (as given: the casts are redone there).
                ctx.save_for_backward(
                    x, w, b, target, weight, prior, keep, *([scale] if isinstance(scale, Tensor) else [])
                )
                ctx.want = want
            assert rows is not None  # need_loss
            return rows
        grad_scale = None if denom is None else denom.reciprocal()
        if row_weight is not None:
            grad_scale = row_weight if grad_scale is None else row_weight * grad_scale
        dscale = torch.zeros(num_rows, dtype=cdt, device=x.device) if want_ds else None
        rows, dx, dw, db = chunk_loop(
            xm,
            wm,
            bm,
            target,
            weight,
            ignore_index,
            eps,
            z_loss,
            softcap,
            kernel,
            chunk_rows,
            grad_scale=grad_scale,
            want=want,
            prior=prior,
            accum_dtype=accum_dtype,
            dscale=dscale,
            aux=aux,
            aux_out=aux_out,
            **lm,
        )
        if any(want):
            # Cast to the parameters' dtypes now, so that only their size is held until backward.
            ctx.grads = [None if g is None else g.to(dt) for g, dt in zip((dx, dw, db), ctx.dtypes, strict=True)]
        if dscale is not None:
            ctx.ds = dscale.sum()
        assert rows is not None  # need_loss
        if row_weight is not None:
            rows = rows * row_weight
        if keep is not None:
            # Ignored rows and sequence ends: exactly 0, whatever the kernel's row (or its weight) holds.
            rows = torch.where(keep, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
        total = rows.sum()
        return total if denom is None else total / denom

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "linear_cross_entropy's fused gradient cannot be differentiated again "
                "(create_graph=True); use backend='reference'"
            )
        nones = (None,) * 14
        after = (None,) * 5  # row_weight, keep, seq_len, aux, aux_out
        if ctx.reduction == "none":
            x, w, b, target, weight, prior, keep, *maybe_s = ctx.saved_tensors
            ignore_index, eps, z_loss, softcap, kernel, chunk_rows, mm_dtype, accum_dtype = ctx.options
            cdt = compute_dtype(mm_dtype)
            go = grad_out.to(cdt)
            lm: dict[str, Any] = {}
            if ctx.want_ds or ctx.seq_len is not None or keep is not None:
                # The options' path: the per-row grad_output goes in as the kernels' (M,) grad_scale, so
                # that dscale carries it too; unkept rows get 0 (their grad_output may be anything).
                if keep is not None:
                    go = torch.where(keep, go, torch.zeros((), dtype=cdt, device=go.device))
                lm = dict(grad_scale=go, num_rows=target.shape[0], seq_len=ctx.seq_len)
            else:
                lm = dict(grad_output=go)
            scale = maybe_s[0] if maybe_s else ctx.float_scale
            dscale = torch.zeros(target.shape[0], dtype=cdt, device=go.device) if ctx.want_ds else None
            _, dx, dw, db = chunk_loop(
                x.to(mm_dtype),
                w.to(mm_dtype),
                None if b is None else b.to(mm_dtype),
                target,
                weight,
                ignore_index,
                eps,
                z_loss,
                softcap,
                kernel,
                chunk_rows,
                want=ctx.want,
                need_loss=False,
                prior=prior,
                accum_dtype=accum_dtype,
                logit_scale=_kernel_scale(scale, kernel, x.device, cdt),
                dscale=dscale,
                **lm,
            )
            grads = [None if g is None else g.to(dt) for g, dt in zip((dx, dw, db), ctx.dtypes, strict=True)]
            ds = None if dscale is None else dscale.sum().to(ctx.scale_dtype)
            return (*grads, *nones, ds, *after)
        grads = ctx.grads
        if (grads is None and not ctx.want_ds) or (ctx.want_ds and ctx.ds is None):
            raise RuntimeError(
                "linear_cross_entropy's gradients were already handed to an earlier backward: "
                "backward through it twice (retain_graph=True) needs backend='reference' or "
                "reduction='none'"
            )
        grads = grads if grads is not None else [None, None, None]
        # Released before returning, so that autograd can take the buffers as .grad without a copy.
        ctx.grads = None
        ds = ctx.ds
        ctx.ds = None
        if grad_out.device.type != "cpu" or torch.compiler.is_compiling() or grad_out.item() != 1.0:
            for g in grads:  # reading a CPU scalar costs no device synchronisation
                if g is not None:
                    g.mul_(grad_out.to(g.dtype))
        if ds is not None:
            ds = (ds * grad_out.to(ds.dtype)).to(ctx.scale_dtype)
        return (*grads, *nones, ds, *after)


def _kernel_scale(
    scale: float | Tensor | None, kernel: str, device: torch.device, cdt: torch.dtype
) -> float | Tensor | None:
    """The logit scale as the kernel takes it: Triton a 0-d float32 tensor (a float is filled on the
    device: no host-to-device copy), chunked a float or a 0-d tensor of the compute dtype; detached
    (the kernels' dscale carries its gradient)."""
    if scale is None:
        return None
    if kernel == "triton":
        if isinstance(scale, Tensor):
            return scale.detach().to(torch.float32)
        return torch.full((), scale, dtype=torch.float32, device=device)
    return scale.detach().to(cdt) if isinstance(scale, Tensor) else scale
