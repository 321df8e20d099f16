"""Fused label-smoothed cross-entropy, forward and backward in one call, over blocks of rows.

Torch's eager loss materialises log_softmax (M x C), reads it back for the smoothing sum, and in
backward builds softmax and the smoothed target as further M x C tensors. Here each block of rows
small enough to stay in cache is read once from memory: its max, the sums the loss needs and
exp(x - max) are computed in the block, and exp(x - max) becomes the gradient in place
(p * A - q, with A the row's total target weight). The only M x C buffer is the gradient itself, and
with ``inplace`` even that is the logits' own storage.

Per row, with z = x - m (m the row max), S = sum exp(z), log p_c = z_c - log S:

* loss (index target y)  = (1-eps) w_y (log S - z_y) + (eps/C) (W log S - sum_c w_c z_c) + zl * lse^2
* loss (probabilities t) = sum_c w_c t'_c (log S - z_c) + zl * lse^2,  t' = (1-eps) t + eps/C
* gradient = p * (A + 2 zl lse) - w * q,  A = sum_c w_c q_c; the target column is rewritten from
  p_y - 1 = (expm1(z_y) - (S - 1)) / S, and S - 1 of a confident row is summed without a max element
  (the target element for class indices: when the target is a max, z_y = 0 and the rest is S - 1
  exactly), so that a confident row keeps its small loss and target gradient to float32 accuracy.

Every sum is taken of z <= 0 after the max is subtracted, so nothing cancels (``m W - sum w x`` would,
once the logits are large and close together). The contract is in ``labelsmooth.kernels``; the formulas
are those of ``labelsmooth.reference.ce_rows``.

Work split. A block does only the passes over its R x C elements and leaves per-row numbers (z_y,
sum z, S, ...) in (M,) tensors; the loss and the target column of the gradient are computed once for
all rows afterwards, so a block costs about a dozen torch calls. On CPU the blocks are spread over
worker threads that each run single-threaded ops and take the next block when done
(``labelsmooth.kernels._workers``): no parallel region per op, hence no barrier that a busy core stalls.
Block sizes (:func:`default_block_rows`): on CPU a few MiB, so that a block's passes hit the cache; on
an accelerator, where a block is a handful of kernel launches and caches hold little of it anyway,
blocks are large (256 MiB of float32 work, at most 1/64 of the device's memory) so that launches are
few: 16384 x 128256 runs as 32 blocks instead of 2048.
"""

from __future__ import annotations

import threading
from collections.abc import Set as AbstractSet

import torch
from torch import Tensor

from labelsmooth.kernels._workers import run_blocks
from labelsmooth.reference import compute_dtype

# CPU: bytes of float32 work per block. Large enough that a block's dozen torch calls (~5 us each) are
# small against its arithmetic, small enough that its repeated passes stay in the last-level cache.
BLOCK_BYTES = 4 << 20
# Accelerators: bytes of float32 work per block, and the largest share of device memory it may take.
DEVICE_BLOCK_BYTES = 256 << 20
DEVICE_MEMORY_SHARE = 64
# CPU: elements of work a worker thread must get before a second one is worth waking (~1 ms).
MIN_ELEMENTS_PER_WORKER = 1 << 20
_LOG2E = 1.4426950408889634


def default_block_rows(num_classes: int, device: torch.device | str | None = None) -> int:
    """Rows per block for ``num_classes`` classes on ``device`` (CPU when None).

    CPU: ``BLOCK_BYTES`` of float32 work (cache-sized). Any other device: ``DEVICE_BLOCK_BYTES``, capped
    at 1/``DEVICE_MEMORY_SHARE`` of the device's memory where torch reports it: a few large blocks, each
    a few kernel launches over many elements.

    >>> default_block_rows(32000)
    32
    >>> default_block_rows(128256, "meta")
    523
    """
    dev = torch.device("cpu" if device is None else device)
    budget = BLOCK_BYTES
    if dev.type != "cpu":
        budget = DEVICE_BLOCK_BYTES
        if dev.type == "cuda" and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(dev).total_memory
            budget = min(budget, total // DEVICE_MEMORY_SHARE)
    return max(1, budget // (4 * max(1, num_classes)))


def default_workers(num_rows: int, num_classes: int, block_rows: int, device: torch.device) -> int:
    """Worker threads for a problem: 1 (the caller alone) off CPU, while compiling, or for small work;
    else as many as torch's intra-op thread count allows, one per block and per ~1 ms of work."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return 1
    blocks = -(-num_rows // block_rows)
    by_work = num_rows * num_classes // MIN_ELEMENTS_PER_WORKER
    return max(1, min(torch.get_num_threads(), blocks, by_work))


# Rows whose S - 1 is below this are confident enough for float32's S - 1 to lose accuracy
# (relative error up to 6e-8 / (S - 1)); they get S - 1 summed again without the max element.
_CONFIDENT = 2.0**-4


# Columns per segment of the argmax: max-with-indices is a scalar loop on CPU (~20x an amax), so it runs
# on one segment per row only, the first whose (vectorised) amax is the row's max.
_ARGMAX_SEGMENT = 256


def _max_and_first_argmax(src: Tensor, out: Tensor) -> Tensor:
    """The row max of ``src`` (R, C) as an (R, 1) column; writes the first index of it into ``out`` (R, 1).

    Same values as ``torch.max(src, dim=1, keepdim=True)`` (the first maximal index on ties; an all -inf
    row gives 0), at about the cost of an amax: the segment maxima are one vectorised pass, and the
    index is searched for in one segment of each row.
    """
    rows, num_classes = src.shape
    nseg = num_classes // _ARGMAX_SEGMENT
    if nseg < 2:
        m, top = torch.max(src, dim=1, keepdim=True)
        out.copy_(top)
        return m
    body_cols = nseg * _ARGMAX_SEGMENT
    body = src[:, :body_cols].view(rows, nseg, _ARGMAX_SEGMENT) if src.stride(1) == 1 else None
    if body is None:  # pragma: no cover - the kernel reads rows with unit stride
        body = src[:, :body_cols].reshape(rows, nseg, _ARGMAX_SEGMENT)
    seg_max = body.amax(dim=2)  # (R, nseg)
    m = seg_max.amax(dim=1, keepdim=True)
    tail_top = None
    if body_cols < num_classes:
        tail_max, tail_top = torch.max(src[:, body_cols:], dim=1, keepdim=True)
        m = torch.maximum(m, tail_max)
    # The first segment holding the max (argmax of a small uint8 array returns the first maximal index).
    hit = (seg_max == m).to(torch.uint8)
    seg = hit.argmax(dim=1, keepdim=True)  # (R, 1)
    seg_vals = torch.gather(body, 1, seg.unsqueeze(2).expand(rows, 1, _ARGMAX_SEGMENT)).squeeze(1)
    _, within = torch.max(seg_vals, dim=1, keepdim=True)
    first = seg * _ARGMAX_SEGMENT + within
    if tail_top is not None:
        first = torch.where(hit.amax(dim=1, keepdim=True) > 0, first, tail_top + body_cols)
    out.copy_(first)
    return m


def _refine_confident_rows(expz: Tensor, s_rest: Tensor, masked: bool) -> None:
    """Replace ``s_rest`` ((R, 1), S - 1) of confident rows by the sum of all but one max element.

    ``expz`` holds exp(x - max) (the max elements are exactly 1). Probability targets only: with a class
    index the target column serves (see ``fused_ce``). ``masked``: without reading values on the host
    (accelerators), at the cost of an argmax and a sum over every row of the block.
    """
    if masked:
        top = expz.argmax(dim=1, keepdim=True)
        expz.scatter_(1, top, 0.0)
        rest = expz.sum(dim=1, keepdim=True)
        expz.scatter_(1, top, 1.0)
        torch.where(s_rest < _CONFIDENT, rest, s_rest, out=s_rest)
        return
    rows = (s_rest.squeeze(1) < _CONFIDENT).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    sub = expz.index_select(0, rows)
    sub.scatter_(1, sub.argmax(dim=1, keepdim=True), 0.0)
    s_rest.index_copy_(0, rows, sub.sum(dim=1, keepdim=True))


@torch.no_grad()
def fused_ce(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: Tensor | None,
    *,
    grad_scale: Tensor | None = None,
    prior: Tensor | None = None,
    logit_scale: float | Tensor | None = None,
    dscale: Tensor | None = None,
    aux: AbstractSet[str] = frozenset(),
    block_rows: int | None = None,
    workers: int | None = None,
    masked: bool | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Row losses of (M, C) logits; writes d loss_row / d logits into ``grad`` when it is given.

    See ``labelsmooth.kernels`` for the contract. The language-model options, each free when off:

    * ``grad_scale`` may also be an (M,) tensor: a per-row factor on the written gradient (row weights
      r_n, times 1/D for "mean").
    * ``logit_scale`` s (a float or a 0-d tensor on the logits' device): the logits become s * x as they
      are loaded (no scaled copy of the logits); the written gradient is d loss / d x = s * ghat, with
      ghat the gradient with respect to the scaled logits.
    * ``dscale``: an (M,) buffer of the compute dtype (needs ``grad``); row n receives
      sum_c ghat_nc * x_nc (times the row's grad_scale, without s), so that d loss / d s is a sum of it;
      ignored rows 0. Computed while the block is in cache.
    * ``aux``: a subset of {"lse", "predicted", "entropy"}; then the return is
      ``(loss_rows, {name: (M,) tensor})``: the log-sum-exp and entropy of the final logits (compute
      dtype) and their first argmax (int64), computed inside the block pass. Their values on ignored
      rows are unspecified (the caller masks them).

    Overrides (tests, benchmarks): ``block_rows`` the block height, ``workers`` the number of CPU worker
    threads, ``masked`` whether to avoid reading tensor values on the host (default: off CPU), which
    accelerators need to stay asynchronous.
    """
    num_rows, num_classes = logits.shape
    cdt = compute_dtype(logits.dtype)
    device = logits.device
    loss = torch.empty(num_rows, dtype=cdt, device=device)
    unknown = set(aux) - {"lse", "predicted", "entropy"}
    if unknown:
        raise ValueError(f"aux must be a subset of {{'lse', 'predicted', 'entropy'}}, got {sorted(unknown)}")
    if dscale is not None and grad is None:
        raise ValueError("dscale needs grad: d loss / d logit_scale is computed in the gradient pass")
    if num_rows == 0:
        if aux:
            return loss, {n: torch.empty(0, dtype=torch.int64 if n == "predicted" else cdt, device=device) for n in aux}
        return loss
    masked = device.type != "cpu" if masked is None else masked
    eps = float(label_smoothing)
    smooth = eps / num_classes
    probs = target.is_floating_point()
    w = None if weight is None else weight.to(device=device, dtype=cdt)
    # The smoothing term's per-class weights sw, so that it reads (eps / C) * sum_c sw_c (-log p_c):
    # the class weights, times C * u_c for a prior u (uniform: C * u_c = 1).
    sw = w
    if prior is not None:
        sw = prior.to(device=device, dtype=cdt) * num_classes
        if w is not None:
            sw = sw * w
    total_sw = float(num_classes) if sw is None else sw.sum()
    rows = block_rows or default_block_rows(num_classes, device)
    blocks = -(-num_rows // rows)
    if workers is None:
        workers = default_workers(num_rows, num_classes, rows, device)
    # The logit scale s: a Python float where it can be (plain loops), else a 0-d tensor (accelerators).
    scale: Tensor | float | None = None
    if isinstance(logit_scale, Tensor):
        scale = logit_scale.to(device=device, dtype=cdt) if masked else float(logit_scale.item())
    elif logit_scale is not None:
        scale = float(logit_scale)
    gs: Tensor | float | None = None  # a scalar factor, folded into the row coefficients
    row_gs: Tensor | None = None  # an (M, 1) per-row factor (token weights, shift's mask)
    if grad_scale is not None:
        if grad_scale.dim() == 0:
            # A Python scalar keeps the passes plain loops; on the host reading it costs nothing.
            gs = grad_scale.to(cdt) if masked else grad_scale.to(cdt).item()
        else:
            row_gs = grad_scale.to(cdt).reshape(num_rows, 1)
    # The written gradient carries s. Folded into the scalar factor, it costs nothing. With dscale on
    # the host and s != 0 it stays folded: sum ghat x is then sum (s ghat) x / s, read off the written
    # gradient. Otherwise (accelerators, where s is not read, or s = 0) the block needs ghat without s
    # first (its dot product with x) and multiplies by s after.
    fold_dscale = dscale is not None and isinstance(scale, float) and scale != 0.0
    late_scale = scale if dscale is not None and not fold_dscale else None
    if scale is not None and late_scale is None:
        gs = scale if gs is None else gs * scale
    # A float32 block of our own is needed unless the gradient buffer can serve as the work space;
    # dscale reads the unscaled logits after the gradient is computed, so with the gradient written
    # over the logits (inplace) it needs its own block.
    shares_logits = grad is not None and grad.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()
    own_work = grad is None or grad.dtype != cdt or (dscale is not None and shares_logits)
    scratch = threading.local()

    def work(name: str, height: int) -> Tensor:
        """This worker thread's block-sized scratch buffer ``name`` (allocated once), ``height`` rows of it."""
        buf: Tensor | None = getattr(scratch, name, None)
        if buf is None:
            buf = torch.empty((min(rows, num_rows), num_classes), dtype=cdt, device=device)
            setattr(scratch, name, buf)
        return buf[:height]

    def col() -> Tensor:  # one per-row statistic, kept as a column so that blocks can broadcast it
        return torch.empty((num_rows, 1), dtype=cdt, device=device)

    # A per-row factor is folded into the row coefficients (an (M, 1) column costs a pass nothing more
    # than a scalar does) where the smoothing term is a scalar per row; with class weights, a prior or
    # probability targets it is one multiply at the end of each block.
    fold_rows = row_gs is not None and grad is not None and sw is None and not probs
    sum_exp, s_rest = col(), col()
    sum_wz = col() if eps != 0 else None
    # Without softcap, d loss / d s needs no pass of its own: sum_c ghat_c x_c follows from the row's
    # statistics (max m, S, U = sum exp(z) z, z_y, sum sw z); see the end of this function.
    closed_dscale = fold_dscale and softcap is None
    row_max = col() if z_loss or "lse" in aux or closed_dscale else None
    predicted = torch.empty((num_rows, 1), dtype=torch.int64, device=device) if "predicted" in aux else None
    # U = sum_c exp(z_c) z_c: entropy = log S - U / S
    sum_ez = col() if "entropy" in aux or closed_dscale else None
    # On the host in float32, U is summed from the exp2 pass's own operands (see the block); elsewhere
    # from a clamped copy of z (no host reads).
    fast_entropy = sum_ez is not None and not masked and cdt == torch.float32
    # A positive host scale without softcap is applied inside the exp's argument (z = s (x - max x)):
    # the block works on x - max x, the per-row sums taken from it are multiplied by s, and no scaled
    # copy of the block is written (one pass fewer than s * x on load).
    fold_scale = isinstance(scale, float) and scale > 0 and softcap is None and (sum_ez is None or fast_entropy)
    dot = col() if dscale is not None and not closed_dscale else None
    x_y = col() if dot is not None and not target.is_floating_point() else None
    if probs:
        t_sum, t_dot_z = col(), col()
    else:
        tgt = target.view(num_rows, 1)
        keep = tgt != ignore_index
        safe = torch.where(keep, tgt, torch.zeros_like(tgt)).long()
        w_y = None if w is None else w[safe]
        z_y, rest = col(), col()
        dsoft_y = col() if softcap is not None and grad is not None else None
        hard = 1.0 - eps if w_y is None else (1.0 - eps) * w_y
        coeff0 = hard + smooth * total_sw  # A, the row's total target weight
        if grad is not None:
            scaled = coeff0 if gs is None else coeff0 * gs
            if fold_rows:
                assert row_gs is not None  # fold_rows needs it
                scaled = scaled * row_gs
            if not isinstance(scaled, Tensor):
                coeff_gs = torch.full((num_rows, 1), scaled, dtype=cdt, device=device)
            elif scaled.dim() == 0:
                coeff_gs = scaled.expand(num_rows, 1)
            else:
                coeff_gs = scaled
    smooth_g: Tensor | float = 0.0
    if grad is not None and eps != 0 and fold_rows:
        # An (M, 1) column: subtracting it costs what subtracting a scalar does.
        assert row_gs is not None  # fold_rows needs it
        smooth_g = row_gs * (smooth if gs is None else smooth * gs)
    elif grad is not None and eps != 0:
        # (eps/C) sw, times grad_scale: what every column loses. Scalar operands keep the pass a plain
        # vectorised loop (a broadcast tensor operand is several times slower on CPU).
        if sw is None and gs is None:
            smooth_g = smooth
        else:
            smooth_g = smooth * (sw if sw is not None else 1.0) * (gs if gs is not None else 1.0)

    def block(i: int) -> None:
        start = i * rows
        end = min(num_rows, start + rows)
        xb = logits[start:end]
        if own_work:
            buf = work("buf", end - start)
        else:
            assert grad is not None  # own_work is False only when grad is a compute-dtype buffer
            buf = grad[start:end]
        tanh_b = None
        if softcap is not None:
            if scale is None:
                tanh_b = torch.tanh(xb.to(cdt) / softcap)
            else:
                tanh_b = torch.tanh(xb.to(cdt) * (scale / softcap))
            torch.mul(tanh_b, softcap, out=buf)
            src = buf
        elif scale is not None and not fold_scale:
            # s * x on load, into the work buffer (in float32/64: never rounded to a half dtype).
            if xb.dtype != cdt:
                buf.copy_(xb)
                buf.mul_(scale)
            else:
                torch.mul(xb, scale, out=buf)
            src = buf
        elif xb.dtype != cdt:
            buf.copy_(xb)
            src = buf
        else:
            src = xb  # float32/64 logits are read in place; buf may even be xb itself (inplace)
        if predicted is not None:
            m = _max_and_first_argmax(src, predicted[start:end])
        else:
            m = src.amax(dim=1, keepdim=True)
        ze = None
        if fast_entropy:
            # z goes to a scratch block, and exp(z) into buf from there: for U = sum exp(z) z both are
            # then in cache, one product and one sum away.
            ze = work("zb", end - start)
            torch.sub(src, m, out=ze)
            zs = ze
        else:
            torch.sub(src, m, out=buf)  # z = x - m <= 0, in place when src is buf
            zs = buf
        if fold_scale:
            assert isinstance(scale, float)  # fold_scale needs a host scale
            m = m * scale  # the max of the scaled logits; zs holds z / s
        if row_max is not None:
            row_max[start:end] = m

        if probs:
            tb = target[start:end].to(cdt)
            tw = tb if w is None else tb * w
            torch.sum(tw, dim=1, keepdim=True, out=t_sum[start:end])
            t_dot_z[start:end] = torch.linalg.vecdot(tw, zs).unsqueeze(1)
        else:
            sb = safe[start:end]
            torch.gather(zs, 1, sb, out=z_y[start:end])
            if dsoft_y is not None:
                assert tanh_b is not None  # both exist exactly when softcap is given
                th = tanh_b.gather(1, sb)
                dsoft_y[start:end] = 1.0 - th * th
        if sum_wz is not None:
            if sw is None:
                torch.sum(zs, dim=1, keepdim=True, out=sum_wz[start:end])
            else:
                torch.matmul(zs, sw.unsqueeze(1), out=sum_wz[start:end])
        if fold_scale:
            assert isinstance(scale, float)  # fold_scale needs a host scale
            for stat in (t_dot_z if probs else z_y, sum_wz):
                if stat is not None:
                    stat[start:end].mul_(scale)

        zb = None
        if sum_ez is not None and not fast_entropy:
            # z kept beside exp(z) for U; clamped so that a -inf logit gives exp(z) * z = 0 * finite = 0.
            zb = work("zb", end - start)
            torch.clamp(buf, min=torch.finfo(cdt).min, out=zb)
        if x_y is not None:
            # The unscaled target logit, read before any write (inplace may write over the logits).
            x_y[start:end] = xb.gather(1, safe[start:end]).to(cdt)

        if fast_entropy:
            # (A -inf logit gives 0 * -inf = NaN in the product: those rows, and only they, are summed
            # again without their NaN terms.)
            assert ze is not None and sum_ez is not None  # both exist with fast_entropy
            ze.mul_(_LOG2E * scale if fold_scale else _LOG2E)  # type: ignore[operator]  # a float then
            torch.exp2(ze, out=buf)
            ze.mul_(buf)
            u_b = sum_ez[start:end]
            torch.sum(ze, dim=1, keepdim=True, out=u_b)
            nan_rows = torch.isnan(u_b).squeeze(1).nonzero().squeeze(1)
            if nan_rows.numel():
                u_b.index_copy_(0, nan_rows, torch.nansum(ze.index_select(0, nan_rows), dim=1, keepdim=True))
            u_b.mul_(1.0 / _LOG2E)
        elif cdt == torch.float32:
            # exp2 is about twice as fast as exp on CPU; z is exact (x - m, Sterbenz), and scaling it by
            # log2(e) perturbs exp(z) by ~1e-7 * |z| relative, far below float32 accumulation noise.
            buf.mul_(_LOG2E * scale if fold_scale else _LOG2E).exp2_()  # type: ignore[operator]  # a float then
        else:
            if fold_scale:
                assert isinstance(scale, float)  # fold_scale needs a host scale
                buf.mul_(scale)
            buf.exp_()
        if sum_ez is not None and zb is not None:
            assert zb is not None  # allocated above with sum_ez
            sum_ez[start:end] = torch.linalg.vecdot(buf, zb).unsqueeze(1)
        s_b = sum_exp[start:end]
        if probs:
            # S - 1 rather than S: the max element contributes exactly 1, and a confident row's loss is
            # about S - 1, which float32 S = 1 + (S - 1) keeps only to half an ulp of 1 (6e-8).
            sr = s_rest[start:end]
            torch.sum(buf, dim=1, keepdim=True, out=sr)
            sr.sub_(1.0)
            _refine_confident_rows(buf, sr, masked)
            torch.add(sr, 1.0, out=s_b)
        else:
            # S is summed without the target element: the rest, sum_{c != y} exp(z_c), is S - 1 exactly
            # when y is a max element (z_y = 0), which is the confident row whose S - 1 matters. The target
            # column is rewritten at the end, so its value here is free.
            e_y = buf.gather(1, sb)
            buf.scatter_(1, sb, 0.0)
            r_b = rest[start:end]
            torch.sum(buf, dim=1, keepdim=True, out=r_b)
            torch.add(r_b, e_y, out=s_b)

        if grad is None:
            return
        if probs:
            coeff = (1.0 - eps) * t_sum[start:end] + smooth * total_sw
            if gs is not None:
                coeff = coeff * gs
        else:
            coeff = coeff_gs[start:end]
        if z_loss:
            sr = s_rest[start:end] if probs else torch.where(z_y[start:end] == 0, r_b, s_b - 1.0)
            log_s = torch.log1p(sr)
            zl = (2.0 * z_loss) * (m + log_s)
            if fold_rows:
                assert row_gs is not None  # fold_rows needs it
                zl = zl * row_gs[start:end]
            coeff = coeff + (zl if gs is None else zl * gs)
        buf.mul_(coeff / s_b)
        if eps != 0:
            buf.sub_(smooth_g[start:end] if fold_rows else smooth_g)  # type: ignore[index]  # a column then
        if probs:
            buf.sub_(tw if gs is None else tw * gs, alpha=1.0 - eps)
        if tanh_b is not None:
            buf.mul_(1.0 - tanh_b * tanh_b)
        if dot is not None:
            # ghat . x while both are in cache (a product into scratch, then a sum: no temporary); the
            # target column is rewritten (and added) at the end.
            if not probs:
                buf.scatter_(1, sb, 0.0)
            prod = work("prod", end - start)
            torch.mul(buf, xb if xb.dtype == cdt else xb.to(cdt), out=prod)
            d_b = dot[start:end]
            torch.sum(prod, dim=1, keepdim=True, out=d_b)
            if row_gs is not None and not fold_rows:
                d_b.mul_(row_gs[start:end])
        if (row_gs is not None and not fold_rows) or late_scale is not None:
            if row_gs is None or fold_rows:
                assert late_scale is not None
                buf.mul_(late_scale)
            else:
                rb = row_gs[start:end]
                buf.mul_(rb if late_scale is None else rb * late_scale)
        if masked and not probs:
            # Ignored rows get exactly 0 (set, not multiplied: their logits may be NaN/Inf). On the host
            # this happens once at the end, for the ignored rows only.
            buf.masked_fill_(~keep[start:end], 0.0)
        if own_work:
            grad[start:end].copy_(buf)

    if workers > 1:
        run_blocks(block, blocks, workers)
    else:
        for i in range(blocks):
            block(i)

    if not probs:
        torch.where(z_y == 0, rest, sum_exp - 1.0, out=s_rest)
    log_s = torch.log1p(s_rest)
    aux_out: dict[str, Tensor] = {}
    if row_max is not None and "lse" in aux:
        aux_out["lse"] = (row_max + log_s).squeeze(1)
    if predicted is not None:
        aux_out["predicted"] = predicted.squeeze(1)
    if sum_ez is not None and "entropy" in aux:
        aux_out["entropy"] = (log_s - sum_ez / sum_exp).squeeze(1)
    if probs:
        row_loss = (1.0 - eps) * (t_sum * log_s - t_dot_z)
    else:
        row_loss = hard * (log_s - z_y)
    if eps != 0:
        assert sum_wz is not None  # allocated above whenever eps != 0
        row_loss = row_loss + smooth * (total_sw * log_s - sum_wz)
    if z_loss:
        assert row_max is not None  # allocated above whenever z_loss is set
        lse = row_max + log_s
        row_loss = row_loss + z_loss * lse * lse
    if not probs:
        # An ignored row may hold NaN/Inf logits; its loss is still exactly 0, as torch's is.
        row_loss = torch.where(keep, row_loss, torch.zeros_like(row_loss))
    loss.copy_(row_loss.squeeze(1))

    if grad is not None and not probs:
        # The target column is rewritten from p_y - 1 = (expm1(z_y) - (S - 1)) / S, which has no
        # cancellation, in float32/64 before any rounding: a confident row (p_y = 0.9999 or closer to 1)
        # keeps its tiny target gradient, in bf16 too.
        coeff = coeff0
        if z_loss:
            coeff = coeff + 2.0 * z_loss * lse
        grad_y = (hard * (torch.expm1(z_y) - s_rest) + (coeff - hard) * torch.exp(z_y)) / sum_exp
        if eps != 0:
            grad_y = grad_y - smooth * (1.0 if sw is None else sw[safe])
        if gs is not None:
            grad_y = grad_y * gs
        if dsoft_y is not None:
            grad_y = grad_y * dsoft_y
        if row_gs is not None:
            grad_y = grad_y * row_gs
        if dot is not None:
            assert x_y is not None  # allocated with dot for class-index targets
            dot.add_(grad_y * x_y)
        if late_scale is not None:
            grad_y = grad_y * late_scale
        grad_y = torch.where(keep, grad_y, torch.zeros_like(grad_y))
        # index_put_, not scatter_: on CPU a bf16 scatter_ works on a float32 copy of the whole buffer
        rows_idx = torch.arange(num_rows, device=device)
        grad.index_put_((rows_idx, safe.squeeze(1)), grad_y.squeeze(1).to(grad.dtype))
        if not masked:
            grad.index_fill_(0, (~keep).squeeze(1).nonzero().squeeze(1), 0.0)
    if dscale is not None and closed_dscale:
        # With x' = s x the scaled logits, z = x' - m and ghat_c = A p_c - smooth sw_c - (target terms),
        # sum_c ghat_c x'_c = A U / S - smooth sum_c sw_c z_c - (hard z_y or (1-eps) t.z) + m (2 zl lse):
        # the m terms of A, smooth W and hard cancel exactly (sum_c ghat_c = 2 zl lse), so nothing large
        # is subtracted. d/ds wants sum_c ghat_c x_c = that / s, times the row's factors (gs carries s).
        assert row_max is not None and sum_ez is not None and isinstance(scale, float)
        lse_c = row_max + log_s
        a: Tensor | float
        if probs:
            a = (1.0 - eps) * t_sum + smooth * total_sw
            lin = (1.0 - eps) * t_dot_z
        else:
            a = coeff0
            lin = hard * z_y
        val = a * (sum_ez / sum_exp) - lin if not z_loss else (a + 2.0 * z_loss * lse_c) * (sum_ez / sum_exp) - lin
        if eps != 0:
            assert sum_wz is not None  # allocated whenever eps != 0
            val = val - smooth * sum_wz
        if z_loss:
            val = val + row_max * (2.0 * z_loss * lse_c)
        factor = (1.0 if gs is None else gs) / (scale * scale)
        val = val * factor
        if row_gs is not None:
            val = val * row_gs
        if not probs:
            val = torch.where(keep, val, torch.zeros_like(val))
        dscale.copy_(val.squeeze(1))
    elif dscale is not None:
        assert dot is not None  # allocated whenever dscale is given
        if fold_dscale:
            assert isinstance(scale, float)  # fold_dscale needs a host scale
            dot.div_(scale)  # the sums were of the written gradient, s ghat
        if not probs:
            torch.where(keep, dot, torch.zeros_like(dot), out=dot)
        dscale.copy_(dot.squeeze(1))
    if aux:
        return loss, aux_out
    return loss
