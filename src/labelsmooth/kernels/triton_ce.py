"""Fused label-smoothed cross-entropy as one Triton kernel: loss rows and, optionally, the gradient.

One program handles one row of the (M, C) logits and makes at most two passes over it.

Pass 1 (statistics) streams the row in blocks and keeps, per lane (a lane is one column position of
the block, so each thread owns a few lanes), an online softmax state::

    m    running max of the lane's logits
    s    sum exp(x - m)                                 (rescaled by exp(m_old - m_new) when m grows)
    r    the part of s coming from elements strictly below m (see "confident rows" below)
    v, g sum v_c and sum v_c (x_c - m) for the smoothing weights v (rescaled by v * (m_old - m_new))

with v_c = (eps / C) w_c for class-index targets and v_c = w_c ((1 - eps) t_c + eps / C) for
probability targets. A block is a [ITERS, LANES] tile whose reduction over ITERS stays inside each
thread: the loop has no block-wide reduction and no barrier, so every warp streams on its own and the
loads of some warps overlap the arithmetic of others. Only after the loop are the lanes folded into
row values (max M, S = sum exp(x - M), log S, V, G). All blocks but a row's last are full and run
without masks; only the last one pays for them.

Pass 2 (gradient, only when ``grad`` is given) re-reads the row and writes
``d loss / d x_j = p_j * (T + V + 2 z lse) - T [j == y] - v_j`` (T = (1 - eps) w_y, zero for
probability targets; times 1 - tanh^2 under the softcap, and times ``grad_scale`` when given) as
exp(x_j - M) * a - v_j, one multiply-add per element; the one-hot -T is left out of the per-element
work, and the target column is rewritten by one scalar store after a barrier. Pass 2 walks the
blocks in reverse order, so it first re-reads what pass 1 read last, while that is most likely
still in L2: on the H200 target shape (bf16 16384 x 128256) a row is 256 KB, and the kernel is only
at copy bandwidth if the second read comes from L2. Loads in pass 1 ask to be kept (evict_last),
loads and stores in pass 2 ask to go first (evict_first; Triton turns both into L1 and L2 hints),
so the streaming gradient writes do not push out rows still to be re-read. Within one row pass 2
reads x at an offset before it writes the gradient at that same offset, and the target logit is
read before pass 2 starts, so ``grad`` may be the logits themselves.

Checked offline with Triton's sm_90 compiler and ptxas (no GPU was available to time it): no layout
conversion (shared-memory round trip) inside either loop, <= 128 registers per thread without spills
in every configuration, eight 16-byte loads (four with weights or probability targets) issued back
to back per thread per iteration, and for bf16 index targets with smoothing and z-loss about 12
instructions per element in pass 1 and 7 in pass 2 (a copy at full HBM bandwidth leaves room for
about 25). A softcap costs a tanh per element in each pass (about 3x the instructions), so
softcapped rows are compute-bound. Full-width vector access needs 16-byte aligned rows: a row
stride (and C for the masked tail) divisible by 16 elements, which Triton detects by
specialisation; other strides are correct but use narrower loads.

Numerics (fp32 throughout, also for fp16/bf16 logits; the gradient is rounded once, at the store):

* Everything is relative to the max: -log p_c = (M - x_c) + log S, never lse - x_c, which cancels
  once |x| is large (one fp32 step at 1e4 is 1e-3).
* The smoothing sum sum_c v_c (x_c - M) is accumulated relative to the running max and shifted by
  v * (m_old - m_new) whenever the max grows: every term is <= 0, so the sum has no cancellation,
  unlike M * V - sum v x.
* Confident rows: S = 1 + (small), and log S computed as log(S) loses the small part to fp32
  rounding of S (relative error 6e-8 / (S - 1) on a loss of about S - 1). So pass 1 also tracks r,
  the sum over elements strictly below their lane's max; when the row max is unique, S - 1 = r
  exactly and log S = log1p(r), giving confident rows their loss to fp32 relative accuracy. The same
  S - 1 gives the target's p_y - 1 = (exp(x_y - M) - 1 - (S - 1)) / S without cancellation, so a
  confident row's tiny target gradient is right in fp32, not only to bf16 rounding.
* log1p and tanh are written here from exp2/log (libdevice is not available under the Triton
  interpreter, where the tests run): log1p by its atanh series for small arguments, tanh by a
  Taylor polynomial near 0 and (1 - e) / (1 + e), e = exp(-2|u|), elsewhere, each accurate to a few
  fp32 ulps. exp(x) is exp2(x log2 e), one ex2.approx.ftz instruction on the GPU; the argument is
  always a difference x - M formed first (exact for nearby values), so the scaling rounds relative
  to that small difference, never to |x| ~ 1e4.
* Rows with a NaN or +inf logit give NaN loss and gradient, as the reference does (softcap maps
  +inf to a finite value first, as the reference does too).

Ignored rows (index target == ignore_index) store loss 0 and a zero gradient without reading the
logits. Targets are clamped before any gather, so an out-of-range target never reads out of bounds;
``tl.device_assert`` reports it when Triton runs with debug checks (TRITON_DEBUG=1), without a
host-device sync. Offsets of rows are int64, so M * C beyond 2**31 elements is fine.

Float64 logits are not supported (TypeError): the fp32 accumulation here would lose their precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Default tile, chosen for a bandwidth-bound kernel on H100/H200-class GPUs (not yet measured on one):
# 16 warps per program, each thread owning one 16-byte vector per tile row (8 bf16/fp16 or 4 fp32
# logits) and ITERS tile rows, so each thread has ITERS independent 16-byte loads in flight. With 8
# tile rows a program has 64 KB in flight per iteration, above the ~30 KB per SM that HBM3e's
# bandwidth x latency asks for, leaving room for the warps busy with arithmetic. ptxas (sm_90) then
# uses <= 128 registers per thread without spilling, so one 512-thread program runs per SM and the
# rows being worked on (132 x 256 KB for bf16 x 128256) stay within the 50 MB L2 for pass 2's re-read.
_MAX_WARPS = 16
_DEFAULT_ITERS = 8
# Weights and probability targets add fp32 tiles of their own to each iteration; half as many tile
# rows keeps them within 128 registers without spills.
_DEFAULT_ITERS_EXTRA_OPERANDS = 4


@triton.jit
def _exp(x):
    """exp as exp2 of x log2(e): on NVIDIA GPUs tl.exp2 is a single ex2.approx.ftz, where tl.exp adds
    fix-ups for subnormal results (three more instructions per element), which would only change
    terms below 1e-38 of the row max's."""
    return tl.exp2(x * 1.4426950408889634)


@triton.jit
def _tanh(u):
    """tanh in fp32 to a few ulps, from exp only (so it also runs under the interpreter)."""
    a = tl.abs(u)
    # Away from 0, (1 - e) / (1 + e) with e = exp(-2|u|) <= exp(-0.8) = 0.45: 1 - e >= 0.55, so no
    # cancellation; e -> 0 for large |u| gives exactly 1, and NaN stays NaN.
    e = _exp(-2.0 * a)
    far = (1.0 - e) / (1.0 + e)
    far = tl.where(u < 0, -far, far)
    # Near 0, the Taylor series to u^13: at |u| = 0.4 the first omitted term is 4e-9 relative.
    u2 = u * u
    near = -1382.0 / 155925.0 + u2 * (21844.0 / 6081075.0)
    near = 62.0 / 2835.0 + u2 * near
    near = -17.0 / 315.0 + u2 * near
    near = 2.0 / 15.0 + u2 * near
    near = -1.0 / 3.0 + u2 * near
    near = u + u * (u2 * near)
    return tl.where(a < 0.4, near, far)


@triton.jit
def _log1p(x):
    """log(1 + x) in fp32 for x >= 0 (or NaN/+inf), accurate relative to the result for small x."""
    # log1p(x) = 2 atanh(s), s = x / (2 + x) <= 0.2 for x < 0.5: the odd series to s^11 leaves a
    # relative error below 1e-9. Above, 1 + x rounds by at most 6e-8 relative and log(1 + x) > 0.4,
    # so the plain log is as good as fp32 allows.
    s = x / (2.0 + x)
    s2 = s * s
    series = 1.0 / 9.0 + s2 * (1.0 / 11.0)
    series = 1.0 / 7.0 + s2 * series
    series = 1.0 / 5.0 + s2 * series
    series = 1.0 / 3.0 + s2 * series
    series = 2.0 * s + 2.0 * s * (s2 * series)
    return tl.where(x < 0.5, series, tl.log(1.0 + x))


@triton.jit
def _smoothing_weights(cols, mask, t_row, w_ptr, eps, smooth,
                       HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, MASKED: tl.constexpr):
    """v_c of the columns ``cols``, 0 off the row: w_c t'_c for probability targets, (eps/C) w_c for
    weighted index targets (uniform unweighted smoothing never builds a tile of v)."""
    if PROB_TARGET:
        if MASKED:
            t = tl.load(t_row + cols, mask=mask, other=0.0)
        else:
            t = tl.load(t_row + cols)
        v = (1.0 - eps) * t.to(tl.float32) + smooth
        if HAS_WEIGHT:
            if MASKED:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0)
            else:
                w = tl.load(w_ptr + cols)
            v = v * w.to(tl.float32)
    else:
        if MASKED:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        else:
            w = tl.load(w_ptr + cols)
        v = smooth * w.to(tl.float32)
    if MASKED:
        v = tl.where(mask, v, 0.0)
    return v


@triton.jit
def _stats_block(x_row, t_row, w_ptr, cols, C, eps, smooth, cap, inv_cap,
                 m_l, s_l, r_l, v_l, g_l, n_seen,
                 HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, HAS_V: tl.constexpr,
                 SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    """Pass 1 on one [ITERS, LANES] tile of columns: the lane states updated by its logits.

    Only the row's last block is MASKED; the full blocks before it skip every mask select.
    """
    NEG_INF: tl.constexpr = float("-inf")
    if MASKED:
        mask = cols < C
        x = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    else:
        mask = None
        x = tl.load(x_row + cols, eviction_policy="evict_last").to(tl.float32)
    if SOFTCAP:
        x = cap * _tanh(x * inv_cap)
    if MASKED:
        x = tl.where(mask, x, NEG_INF)  # padding never wins the max and adds exp(-inf) = 0
    m_new = tl.maximum(m_l, tl.max(x, axis=0))
    # A lane that has only seen -inf so far has m = -inf; shifting by 0 instead keeps
    # exp(-inf - m) at 0 rather than exp(NaN).
    m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
    d = x - m_ref[None, :]  # <= 0; -inf on padding
    e = _exp(d)
    s_old = s_l * _exp(m_l - m_ref)
    s_l = s_old + tl.sum(e, axis=0)
    # If the lane max grew, everything seen before is now strictly below it.
    below = tl.sum(tl.where(x < m_new[None, :], e, 0.0), axis=0)
    r_l = tl.where(m_new > m_l, s_old, r_l) + below
    if HAS_V:
        # sum v (x - m) over the lane, re-based from the old max to the new one; both parts <= 0.
        shift = tl.where(m_l == NEG_INF, 0.0, m_l - m_ref)
        if MASKED:
            d = tl.where(mask, d, 0.0)
        if PROB_TARGET or HAS_WEIGHT:
            v = _smoothing_weights(cols, mask, t_row, w_ptr, eps, smooth, HAS_WEIGHT, PROB_TARGET, MASKED)
            g_l = g_l + v_l * shift + tl.sum(v * d, axis=0)
            v_l = v_l + tl.sum(v, axis=0)
        else:
            # Uniform v = eps / C: g_l holds sum (x - m), the factor is applied at the end. Every
            # block before this one was full, so each lane has seen n_seen elements: a scalar,
            # where a per-lane count would cost a layout conversion (a shared-memory round trip)
            # per iteration on the GPU.
            g_l = g_l + n_seen * shift + tl.sum(d, axis=0)
    return m_new, s_l, r_l, v_l, g_l


@triton.jit
def _row_stats(x_row, t_row, w_ptr, C, eps, smooth, cap, inv_cap,
               HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, HAS_V: tl.constexpr,
               SOFTCAP: tl.constexpr, ITERS: tl.constexpr, LANES: tl.constexpr):
    """Pass 1: returns (M, M_ref, S, S - 1, log S, V, G) of one row; M_ref is M, or 0 if M = -inf."""
    NEG_INF: tl.constexpr = float("-inf")
    BLOCK: tl.constexpr = ITERS * LANES
    # tile[i, j] = i * LANES + j: consecutive lanes are consecutive columns (coalesced loads), and the
    # reduction over axis 0 (ITERS) combines values a thread already holds.
    tile = tl.arange(0, ITERS)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    m_l = tl.full([LANES], NEG_INF, tl.float32)
    s_l = tl.zeros([LANES], tl.float32)
    r_l = tl.zeros([LANES], tl.float32)
    v_l = tl.zeros([LANES], tl.float32)
    g_l = tl.zeros([LANES], tl.float32)
    n_seen = 0.0  # elements per lane so far (exact in fp32 below 2**24 columns)
    n_full = (C // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        m_l, s_l, r_l, v_l, g_l = _stats_block(
            x_row, t_row, w_ptr, start + tile, C, eps, smooth, cap, inv_cap, m_l, s_l, r_l, v_l, g_l,
            n_seen, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, False)
        n_seen += ITERS
    if n_full < C:
        m_l, s_l, r_l, v_l, g_l = _stats_block(
            x_row, t_row, w_ptr, n_full + tile, C, eps, smooth, cap, inv_cap, m_l, s_l, r_l, v_l, g_l,
            n_seen, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, True)

    # Fold the lanes into the row.
    M = tl.max(m_l, axis=0)
    M_ref = tl.where(M == NEG_INF, 0.0, M)
    sc_l = s_l * _exp(m_l - M_ref)
    S = tl.sum(sc_l, axis=0)
    R = tl.sum(tl.where(m_l < M, sc_l, r_l), axis=0)
    # S - R counts the elements equal to M (each contributes exactly exp(0) = 1); rounding keeps it
    # far from 1.5. With a unique max S - 1 = R exactly; with ties S >= 2 and S - 1 has no cancellation.
    s_minus_1 = tl.where(S - R < 1.5, R, S - 1.0)
    # An all -inf row has no max to be relative to: NaN, as in the reference.
    log_s = tl.where(M == NEG_INF, float("nan"), _log1p(s_minus_1))
    lane_shift = tl.where(m_l == NEG_INF, 0.0, m_l - M_ref)
    if PROB_TARGET or HAS_WEIGHT:
        V = tl.sum(v_l, axis=0)
        G = tl.sum(g_l + v_l * lane_shift, axis=0)
    else:
        # Lane j holds the columns j, j + LANES, ... below C: (C - j + LANES - 1) // LANES of them.
        lane = tl.arange(0, LANES)
        n_l = ((C - lane + LANES - 1) // LANES).to(tl.float32)
        V = tl.sum(v_l, axis=0) + eps  # sum_c eps / C, exactly (v_l is all zeros here)
        G = smooth * tl.sum(g_l + n_l * lane_shift, axis=0)
    # Without smoothing weights (HAS_V false) the caller ignores V and G.
    return M, M_ref, S, s_minus_1, log_s, V, G


@triton.jit
def _grad_block(x_row, g_row, t_row, w_ptr, cols, C, eps, smooth, cap, inv_cap, M_ref, a, scale,
                HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, HAS_V: tl.constexpr,
                SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    """Pass 2 on one block: grad = (p * coef - v) * scale = exp(x - M) * a - v * scale, with
    a = coef * scale / S."""
    if MASKED:
        mask = cols < C
        x = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        mask = None
        x = tl.load(x_row + cols, eviction_policy="evict_first").to(tl.float32)
    if SOFTCAP:
        th = _tanh(x * inv_cap)
        x = cap * th
    g = _exp(x - M_ref) * a
    if HAS_V:
        if PROB_TARGET or HAS_WEIGHT:
            v = _smoothing_weights(cols, mask, t_row, w_ptr, eps, smooth, HAS_WEIGHT, PROB_TARGET, MASKED)
            g -= v * scale
        else:
            g -= smooth * scale
    if SOFTCAP:
        g = g * (1.0 - th * th)
    g = g.to(g_row.dtype.element_ty)
    if MASKED:
        tl.store(g_row + cols, g, mask=mask, eviction_policy="evict_first")
    else:
        tl.store(g_row + cols, g, eviction_policy="evict_first")


@triton.jit
def _write_grad(x_row, g_row, t_row, w_ptr, C, eps, smooth, cap, inv_cap, M_ref, a, scale,
                HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, HAS_V: tl.constexpr,
                SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2, last block first: it is the most recently read, so the likeliest still in L2."""
    offs = tl.arange(0, BLOCK)
    n_full_blocks = C // BLOCK
    if n_full_blocks * BLOCK < C:
        _grad_block(x_row, g_row, t_row, w_ptr, n_full_blocks * BLOCK + offs, C, eps, smooth, cap,
                    inv_cap, M_ref, a, scale, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, True)
    for i in range(0, n_full_blocks):
        _grad_block(x_row, g_row, t_row, w_ptr, (n_full_blocks - 1 - i) * BLOCK + offs, C, eps, smooth,
                    cap, inv_cap, M_ref, a, scale, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, False)


@triton.jit
def _zero_grad(g_row, C, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for start in range(0, C, BLOCK):
        cols = start + offs
        tl.store(g_row + cols, tl.zeros([BLOCK], tl.float32).to(g_row.dtype.element_ty), mask=cols < C)


@triton.jit
def _fused_ce_kernel(x_ptr, x_stride, tgt_ptr, tgt_stride, w_ptr, g_ptr, g_stride, scale_ptr, loss_ptr,
                     C, ignore_index, eps, z_coef, cap,
                     HAS_WEIGHT: tl.constexpr, PROB_TARGET: tl.constexpr, HAS_V: tl.constexpr,
                     HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr, HAS_GRAD: tl.constexpr,
                     HAS_SCALE: tl.constexpr, ITERS: tl.constexpr, LANES: tl.constexpr):
    BLOCK: tl.constexpr = ITERS * LANES
    # int64 before any multiplication by a stride: row * stride exceeds 2**31 on large problems.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    g_row = g_ptr + row * g_stride if HAS_GRAD else g_ptr
    smooth = eps / C
    if SOFTCAP:
        inv_cap = 1.0 / cap
    else:
        inv_cap = 1.0
    # grad_scale is read on the device: computing it (1 / denominator for "mean") needed no sync.
    if HAS_SCALE:
        scale = tl.load(scale_ptr).to(tl.float32)
    else:
        scale = 1.0

    if PROB_TARGET:
        t_row = tgt_ptr + row * tgt_stride
        M, M_ref, S, s_minus_1, log_s, V, G = _row_stats(
            x_row, t_row, w_ptr, C, eps, smooth, cap, inv_cap,
            HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES)
        lse = M + log_s
        # sum_c v_c (M - x_c + log S) = V log S - G, both terms >= 0.
        loss = V * log_s - G
        if HAS_Z:
            loss += z_coef * lse * lse
        tl.store(loss_ptr + row, loss)
        if HAS_GRAD:
            coef = V
            if HAS_Z:
                coef += 2.0 * z_coef * lse
            _write_grad(x_row, g_row, t_row, w_ptr, C, eps, smooth, cap, inv_cap, M_ref,
                        coef * scale / S, scale, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, BLOCK)
    else:
        y = tl.load(tgt_ptr + row * tgt_stride)
        if y == ignore_index:
            tl.store(loss_ptr + row, 0.0)
            if HAS_GRAD:
                _zero_grad(g_row, C, BLOCK)
        else:
            tl.device_assert((y >= 0) & (y < C), "labelsmooth: target class index out of range")
            # Clamped so that a bad target reads in bounds even with device asserts off.
            yc = tl.minimum(tl.maximum(y, 0), C - 1).to(tl.int32)
            # Read before pass 2, which may overwrite the row (inplace).
            x_y = tl.load(x_row + yc).to(tl.float32)
            if SOFTCAP:
                th_y = _tanh(x_y * inv_cap)
                x_y = cap * th_y
            if HAS_WEIGHT:
                w_y = tl.load(w_ptr + yc).to(tl.float32)
            else:
                w_y = 1.0
            T = (1.0 - eps) * w_y
            M, M_ref, S, s_minus_1, log_s, V, G = _row_stats(
                x_row, tgt_ptr, w_ptr, C, eps, smooth, cap, inv_cap,
                HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES)
            lse = M + log_s
            # (M - x_y) >= 0 is exactly 0 when y is the argmax; no lse - x_y cancellation.
            loss = T * ((M - x_y) + log_s)
            if HAS_V:
                loss += V * log_s - G
            if HAS_Z:
                loss += z_coef * lse * lse
            tl.store(loss_ptr + row, loss)
            if HAS_GRAD:
                inv_s = 1.0 / S
                coef = T
                if HAS_V:
                    coef += V
                if HAS_Z:
                    coef += 2.0 * z_coef * lse
                # Every column first gets p * coef - v, right everywhere but at the target, which is
                # overwritten below: keeping the one-hot -T out of the per-element work saves a
                # compare and a select per element.
                _write_grad(x_row, g_row, tgt_ptr, w_ptr, C, eps, smooth, cap, inv_cap, M_ref,
                            coef * inv_s * scale, scale, HAS_WEIGHT, PROB_TARGET, HAS_V, SOFTCAP, BLOCK)
                # p_y - 1 = (e_y - S) / S = ((e_y - 1) - (S - 1)) / S: for a confident row e_y = 1
                # exactly and this is -(S - 1) / S to full fp32 relative accuracy, where p_y - 1
                # would keep only the rounding error of p_y.
                e_y = _exp(x_y - M_ref)
                g_y = e_y * inv_s * (coef - T) + T * (((e_y - 1.0) - s_minus_1) * inv_s)
                if HAS_V:
                    g_y -= smooth * w_y
                if SOFTCAP:
                    g_y = g_y * (1.0 - th_y * th_y)
                g_y = g_y * scale
                # Whichever thread stored column y in pass 2 must be done before this store.
                tl.debug_barrier()
                tl.store(g_row + yc, g_y.to(g_row.dtype.element_ty))


def is_available() -> bool:
    """True when this kernel can run here: on a CUDA device, or on CPU tensors under the Triton
    interpreter. The interpreter is chosen when the kernels are defined, i.e. by TRITON_INTERPRET=1
    being set before this module was first imported, so that is what is checked."""
    interpreted = type(_fused_ce_kernel).__name__ == "InterpretedFunction"
    return interpreted or torch.cuda.is_available()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch_config(num_classes: int, element_size: int, extra_operands: bool,
                   block_size: int | None, iters: int | None, num_warps: int | None) -> tuple[int, int, int]:
    """(ITERS, LANES, num_warps) for a row of ``num_classes`` logits of ``element_size`` bytes."""
    vec = max(1, 16 // element_size)  # logits per 16-byte vector load
    if block_size is None:
        lanes = min(_next_pow2(num_classes), _MAX_WARPS * 32 * vec)
        it = iters or (_DEFAULT_ITERS_EXTRA_OPERANDS if extra_operands else _DEFAULT_ITERS)
        it = max(1, min(_next_pow2(it), _next_pow2(num_classes) // lanes))
    else:
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        it = min(_next_pow2(iters or 1), block_size)
        lanes = block_size // it
    if num_warps is None:
        num_warps = max(1, min(_MAX_WARPS, lanes // (32 * vec)))
    return it, lanes, num_warps


def fused_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
             label_smoothing: float, z_loss: float, softcap: float | None, grad: torch.Tensor | None,
             *, grad_scale: torch.Tensor | None = None, block_size: int | None = None,
             iters: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Row losses of (M, C) logits; writes d loss_row / d logits into ``grad`` when it is given,
    times the one-element tensor ``grad_scale`` if that is given.

    See ``labelsmooth.kernels`` for the contract. Keyword-only knobs (tests, tuning): ``block_size``
    columns per iteration (a power of two), split into ``iters`` tile rows, and ``num_warps``.
    No host-device synchronisation happens here.
    """
    if logits.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"the Triton cross-entropy kernel supports float16, bfloat16 and float32 logits, "
                        f"got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (M, C), got shape {tuple(logits.shape)}")
    num_rows, num_classes = logits.shape
    if num_classes < 1:
        raise ValueError("logits must have at least one class")
    if num_classes > 1 and logits.stride(1) != 1:
        raise ValueError("logits rows must be contiguous (stride(1) == 1)")
    device = logits.device
    loss = torch.empty(num_rows, dtype=torch.float32, device=device)
    if num_rows == 0:
        return loss

    prob = target.is_floating_point()
    if prob:
        if target.shape != logits.shape:
            raise ValueError(f"probability target must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        if num_classes > 1 and target.stride(1) != 1:
            target = target.contiguous()  # the kernel reads target rows as contiguous vectors
    elif target.shape != (num_rows,):
        raise ValueError(f"class-index target must have shape ({num_rows},), got {tuple(target.shape)}")
    if weight is not None:
        if weight.shape != (num_classes,):
            raise ValueError(f"weight must have shape ({num_classes},), got {tuple(weight.shape)}")
        weight = weight.contiguous()
    if grad is not None:
        if grad.shape != logits.shape or grad.dtype != logits.dtype:
            raise ValueError("grad must have the logits' shape and dtype")
        if num_classes > 1 and grad.stride(1) != 1:
            raise ValueError("grad rows must be contiguous (stride(1) == 1)")
    if grad is None:
        grad_scale = None  # nothing to scale
    elif grad_scale is not None:
        if grad_scale.numel() != 1 or grad_scale.device != device:
            raise ValueError("grad_scale must be a one-element tensor on the logits' device")

    eps = float(label_smoothing)
    z = float(z_loss)
    has_v = prob or eps > 0.0
    it, lanes, warps = _launch_config(num_classes, logits.element_size(), prob or weight is not None,
                                      block_size, iters, num_warps)
    args = (logits, logits.stride(0), target, target.stride(0), weight,
            grad, grad.stride(0) if grad is not None else 0, grad_scale, loss,
            num_classes, int(ignore_index), eps, z, float(softcap) if softcap is not None else 1.0)
    meta = dict(HAS_WEIGHT=weight is not None, PROB_TARGET=prob, HAS_V=has_v, HAS_Z=z != 0.0,
                SOFTCAP=softcap is not None, HAS_GRAD=grad is not None, HAS_SCALE=grad_scale is not None,
                ITERS=it, LANES=lanes,
                num_warps=warps)
    if device.type == "cuda":
        with torch.cuda.device(device):  # launch on the tensors' device, not the current one
            _fused_ce_kernel[(num_rows,)](*args, **meta)
    else:
        _fused_ce_kernel[(num_rows,)](*args, **meta)
    return loss
