"""Label-smoothed cross-entropy as two Triton kernels: a forward that reads the logits once, and a
backward that reads them again and writes the gradient already multiplied by grad_output.

One program handles one row of the (M, C) logits in each kernel.

The forward kernel (pass 1, statistics) streams the row in blocks and keeps, per lane (a lane is one
column position of the block, so each thread owns a few lanes), an online softmax state::

    m    running max of the lane's logits
    s    sum exp(x - m)                                 (rescaled by exp(m_old - m_new) when m grows)
    r    the part of s coming from elements strictly below m (see "confident rows" below)
    v, g sum v_c and sum v_c (x_c - m) for the smoothing weights v (rescaled by v * (m_old - m_new))

with v_c = (eps / C) w_c for class-index targets and v_c = w_c ((1 - eps) t_c + eps / C) for
probability targets. A block is a [ITERS, LANES] tile whose reduction over ITERS stays inside each
thread: the loop has no block-wide reduction and no barrier, so every warp streams on its own and the
loads of some warps overlap the arithmetic of others. Only after the loop are the lanes folded into
row values (max M, S = sum exp(x - M), log S, V, G). The blocks of a row's aligned body (below) are
full and run without masks; only the last two pay for them. It stores the row's loss and, when a gradient will be
wanted, 16 bytes of statistics: M, S, S - 1 and coef = T + V + 2 z lse (d loss / d log S).

The backward kernel (pass 2, gradient) re-reads the row and writes
``d loss / d x_j = (p_j * (T + V + 2 z lse) - T [j == y] - v_j) * g`` (T = (1 - eps) w_y, zero for
probability targets; times 1 - tanh^2 under the softcap), where g is the row's grad_output times
``grad_scale`` (1/denominator for "mean"), both read on the device: as exp(x_j - M) * a - v_j * g, one
multiply-add per element. The one-hot -T is left out of the per-element work, and the target column is
rewritten by one scalar store after a barrier. Loads and stores ask to go first from the caches
(evict_first): within a kernel no logit is read twice, and by the time backward re-reads a row the
whole N x C array has passed through the cache since forward read it. Within one row the kernel
reads x at an offset before it writes the gradient at that same offset, and the target logit is read
before the row is written, so
``grad`` may be the logits themselves (``inplace``). Why two kernels rather than one that writes the
gradient during forward: docs/kernels.md, "The Triton backend's design". Callers that always want the
gradient (the fused linear loss, per chunk) get both passes in one launch instead: the forward kernel
with WRITE_GRAD re-reads each row right after its statistics pass, while the row is likely still in L2,
and writes its gradient (:func:`fused_ce`).

Rows are read as an aligned body: column a0 of each row is the first at a 16-byte boundary (0 when
the row stride is a multiple of a vector, as for C = 128256; any of 0..7 for bf16 rows of C = 50257),
and the loops run from there in whole blocks without masks, then one block masked by whole vectors,
then one edge block for the head (columns before a0) and the last partial vector, element by element.
So the loops issue 16-byte loads and stores whatever C and the row stride are; only fewer than two
vectors per row go element by element. Triton learns the alignment from ``tl.multiple_of`` on the row
offset (true by construction of a0) and from the pointer's own specialisation.

Compiled offline with Triton's sm_90 and sm_80 compilers and ptxas, for every configuration the
wrappers launch (``labelsmooth.kernels.compile_check``, run by tests/test_triton_compile.py; no GPU
was available to time the kernels): no spill, at most 128 registers per thread, so two programs of 8
warps are resident per SM (the launch table's intent, see _WARPS), no layout conversion
(shared-memory round trip) inside either loop, and 16-byte global loads in every row loop. A softcap
costs a tanh per element in each pass (about 3x the instructions), so softcapped rows are
compute-bound. Weights, a prior and probability targets are read at the shifted columns too: with
16-byte vectors where the row stride is a multiple of 16 elements, narrower ones otherwise.

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
with ``check_targets`` the forward kernel flags it in a device scalar that ``torch._assert_async``
checks (one small op instead of the five a separate range check takes), and ``tl.device_assert``
reports it when Triton runs with debug checks (TRITON_DEBUG=1); neither synchronises the host.
Offsets of rows are int64, so M * C beyond 2**31 elements is fine.

Float64 logits are not supported (TypeError): the fp32 accumulation here would lose their precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, overload

import torch
import triton
import triton.language as tl

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The launch table. Each thread owns one 16-byte vector per tile row (8 bf16/fp16 or 4 fp32 logits)
# and ITERS tile rows, so it has ITERS independent 16-byte loads in flight per iteration; a program
# has _WARPS warps. ITERS is set by the fp32 values a thread holds per tile (_TILE_VALUES: 8 rows of
# fp32, 4 of bf16/fp16), because registers, not bytes, are what the tile costs: every logit is
# converted to fp32 as it is loaded. Every configuration is meant to keep _RESIDENT_WARPS warps
# resident per SM, e.g. two programs of 8 warps, so that one program's row tail (the lane fold, its
# barriers, the stores) overlaps another's streaming: at most 65536 / (16 * 32) = 128 registers per
# thread on sm_80 and sm_90, without spills (tests/test_triton_compile.py compiles every
# configuration for both and fails above that; docs/kernels.md has the table). Bytes in flight per
# SM stay those of the configurations measured on an H200 with the earlier fused kernel (one
# program of 8 warps x 8 rows of bf16, 16 warps x 8 rows of fp32: 32 and 64 KB), now split over
# two programs; above the ~30 KB per SM that HBM3e's bandwidth x latency asks for. The earlier
# table (8 bf16 rows per thread) compiled to 141-201 registers: one program per SM.
_WARPS = 8
_RESIDENT_WARPS = 16
_REGISTERS_PER_SM = 65536  # sm_80, sm_86, sm_89, sm_90, sm_100
_TILE_VALUES = 32
# Weights and probability targets add fp32 tiles of their own to each iteration: half as many rows.
_TILE_VALUES_EXTRA_OPERANDS = 16


# Type checking: triton ships no annotations, so @triton.jit is an untyped decorator, and the jit
# functions' parameters are device pointers, scalars and tl.constexpr meta-parameters whose bodies are
# Triton DSL rather than Python a checker can follow. Those functions carry a targeted ignore each;
# the Python wrappers below them are fully annotated.
@triton.jit
def _exp(x):  # type: ignore[no-untyped-def]
    """exp as exp2 of x log2(e): on NVIDIA GPUs tl.exp2 is a single ex2.approx.ftz, where tl.exp adds
    fix-ups for subnormal results (three more instructions per element), which would only change
    terms below 1e-38 of the row max's."""
    return tl.exp2(x * 1.4426950408889634)


@triton.jit
def _tanh(u):  # type: ignore[no-untyped-def]
    """tanh in fp32 to a few ulps, from exp only (so it also runs under the interpreter)."""
    a = tl.abs(u)
    # Away from 0, (1 - e) / (1 + e) with e = exp(-2|u|) <= exp(-0.8) = 0.45: 1 - e >= 0.55, so no
    # cancellation; e -> 0 for large |u| gives exactly 1, and NaN stays NaN.
    e = _exp(-2.0 * a)
    # Approximate division (div.full.f32, 2 ulp): the IEEE one calls a slow-path subroutine, whose
    # call frame ptxas reports as spills in every loop that tanh is inlined into.
    far = tl.fdiv(1.0 - e, 1.0 + e, ieee_rounding=False)
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
def _log1p(x):  # type: ignore[no-untyped-def]
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


@triton.jit  # type: ignore[untyped-decorator]
def _smoothing_weights(  # type: ignore[no-untyped-def]
    cols,
    mask,
    t_row,
    w_ptr,
    sw_ptr,
    eps,
    smooth,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    MASKED: tl.constexpr,
):
    """v_c of the columns ``cols``, 0 off the row: w_c t'_c for probability targets, (eps/C) w_c for
    weighted index targets (uniform unweighted smoothing never builds a tile of v). With HAS_SW the
    smoothing part reads sw_c = C u_c w_c (a prior u) instead: (1 - eps) w_c t_c + (eps/C) sw_c."""
    if PROB_TARGET:
        if MASKED:
            t = tl.load(t_row + cols, mask=mask, other=0.0)
        else:
            t = tl.load(t_row + cols)
        if HAS_SW:
            v = (1.0 - eps) * t.to(tl.float32)
        else:
            v = (1.0 - eps) * t.to(tl.float32) + smooth
        if HAS_WEIGHT:
            if MASKED:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0)
            else:
                w = tl.load(w_ptr + cols)
            v = v * w.to(tl.float32)
        if HAS_SW:
            if MASKED:
                sw = tl.load(sw_ptr + cols, mask=mask, other=0.0)
            else:
                sw = tl.load(sw_ptr + cols)
            v = v + smooth * sw.to(tl.float32)
    else:
        if HAS_SW:
            if MASKED:
                w = tl.load(sw_ptr + cols, mask=mask, other=0.0)
            else:
                w = tl.load(sw_ptr + cols)
        else:
            if MASKED:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0)
            else:
                w = tl.load(w_ptr + cols)
        v = smooth * w.to(tl.float32)
    if MASKED:
        v = tl.where(mask, v, 0.0)
    return v


@triton.jit  # type: ignore[untyped-decorator]
def _stats_block(  # type: ignore[no-untyped-def]
    x_b,
    t_b,
    w_b,
    sw_b,
    cols,
    mask,
    eps,
    smooth,
    cap,
    inv_cap,
    ls,
    m_l,
    s_l,
    r_l,
    v_l,
    g_l,
    p_l,
    u_l,
    n_seen,
    col0,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    MASKED: tl.constexpr,
    KEEP: tl.constexpr,
    HAS_LS: tl.constexpr,
    ARGMAX: tl.constexpr,
    ENTROPY: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    AFFINE: tl.constexpr,
):
    """Pass 1 on one [ITERS, LANES] tile of columns ``cols`` (relative to the row's aligned start):
    the lane states updated by its logits. ``n_seen``: elements each lane has seen so far (a scalar
    while every block was full, a per-lane vector after a masked one).

    The full blocks of the row's aligned body skip every mask select (MASKED false, ``mask`` None).
    With HAS_LS the logits are multiplied by ``ls`` as they are loaded (before the softcap). ARGMAX
    keeps p_l, the lowest column holding the lane's max (AFFINE: the tile's columns are
    col0 + tile, so a column is found from its tile row alone); ENTROPY keeps
    u_l = sum exp(x - m) (x - m).
    """
    NEG_INF: tl.constexpr = float("-inf")
    # KEEP: the same program re-reads the row right after this pass (WRITE_GRAD), so its lines should
    # stay in L2 rather than go first.
    if MASKED:
        if KEEP:
            x = tl.load(x_b + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        else:
            x = tl.load(x_b + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        if KEEP:
            x = tl.load(x_b + cols, eviction_policy="evict_last").to(tl.float32)
        else:
            x = tl.load(x_b + cols, eviction_policy="evict_first").to(tl.float32)
    if HAS_LS:
        x = x * ls
    if SOFTCAP:
        x = cap * _tanh(x * inv_cap)
    if MASKED:
        x = tl.where(mask, x, NEG_INF)  # padding never wins the max and adds exp(-inf) = 0
    if ARGMAX:
        # The tile's max with the first tile row holding it (the lowest column of the lane).
        b_max, b_row = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    else:
        b_max = tl.max(x, axis=0)
    m_new = tl.maximum(m_l, b_max)
    # A lane that has only seen -inf so far has m = -inf; shifting by 0 instead keeps
    # exp(-inf - m) at 0 rather than exp(NaN).
    m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
    d = x - m_ref[None, :]  # <= 0; -inf on padding
    e = _exp(d)
    s_old = s_l * _exp(m_l - m_ref)
    if ENTROPY:
        # u re-based to the new max like s: sum e' (d' + m_old - m_new), every term <= 0, so confident
        # rows keep their tiny entropy. max(d, -3e38) keeps 0 * -inf (e = 0 at d = -inf) out.
        u_l = u_l * _exp(m_l - m_ref) + tl.where(m_l == NEG_INF, 0.0, m_l - m_ref) * s_old
        u_l = u_l + tl.sum(e * tl.maximum(d, -3.0e38), axis=0)
    if ARGMAX:
        # The column of the tile's max, kept against the lane's: columns are not visited in order
        # (the head comes last), so ties take the lower column explicitly. A padding position can win
        # only a lane whose values are all -inf, which matters only for an all -inf row (_row_stats).
        if AFFINE:
            cand = col0 + b_row * LANES + tl.arange(0, LANES)
        else:
            cand = tl.sum(tl.where(tl.arange(0, ITERS)[:, None] == b_row[None, :], cols, 0), axis=0)
        p_l = tl.where(b_max > m_l, cand, tl.where(b_max == m_l, tl.minimum(p_l, cand), p_l))
    s_l = s_old + tl.sum(e, axis=0)
    # If the lane max grew, everything seen before is now strictly below it.
    below = tl.sum(tl.where(x < m_new[None, :], e, 0.0), axis=0)
    r_l = tl.where(m_new > m_l, s_old, r_l) + below
    if HAS_V:
        # sum v (x - m) over the lane, re-based from the old max to the new one; both parts <= 0.
        shift = tl.where(m_l == NEG_INF, 0.0, m_l - m_ref)
        if MASKED:
            d = tl.where(mask, d, 0.0)
        if PROB_TARGET or HAS_WEIGHT or HAS_SW:
            v = _smoothing_weights(cols, mask, t_b, w_b, sw_b, eps, smooth, HAS_WEIGHT, HAS_SW, PROB_TARGET, MASKED)
            g_l = g_l + v_l * shift + tl.sum(v * d, axis=0)
            v_l = v_l + tl.sum(v, axis=0)
        else:
            # Uniform v = eps / C: g_l holds sum (x - m), the factor is applied at the end. In the
            # full blocks every lane has seen the same count, a scalar: a per-lane count there would
            # cost a layout conversion (a shared-memory round trip) per iteration on the GPU.
            g_l = g_l + n_seen * shift + tl.sum(d, axis=0)
    return m_new, s_l, r_l, v_l, g_l, p_l, u_l


@triton.jit  # type: ignore[untyped-decorator]
def _row_base(ptr, row, stride, a0, VEC: tl.constexpr, ALIGNED: tl.constexpr):  # type: ignore[no-untyped-def]
    """ptr + row * stride + a0, the address of column a0 of the row. With ALIGNED the offset is
    declared a multiple of VEC elements (a 16-byte vector), so that Triton issues 16-byte accesses
    from there; the caller guarantees it (a0 is chosen for it, see _row_head)."""
    off = row * stride + a0
    if ALIGNED:
        off = tl.multiple_of(off, VEC)
    return ptr + off


@triton.jit  # type: ignore[untyped-decorator]
def _row_head(row, stride, C, VEC: tl.constexpr, SHIFT: tl.constexpr):  # type: ignore[no-untyped-def]
    """a0, the first column of the row at a 16-byte boundary (0 when every row starts at one, i.e.
    the row stride is a multiple of VEC: SHIFT false). Columns 0..a0-1 form the row's masked head."""
    if SHIFT:
        a0 = ((VEC - (row * stride) % VEC) % VEC).to(tl.int32)
        a0 = tl.minimum(a0, C)
    else:
        a0 = 0
    return a0


@triton.jit  # type: ignore[untyped-decorator]
def _offset(ptr, a0, PRESENT: tl.constexpr):  # type: ignore[no-untyped-def]
    """ptr + a0 for an operand that is there (a None pointer stays None)."""
    out = ptr
    if PRESENT:
        out = ptr + a0
    return out


@triton.jit  # type: ignore[untyped-decorator]
def _row_stats(  # type: ignore[no-untyped-def]
    x_b,
    t_b,
    w_b,
    sw_b,
    n_body,
    a0,
    eps,
    smooth,
    cap,
    inv_cap,
    ls,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
    KEEP: tl.constexpr,
    HAS_LS: tl.constexpr,
    ARGMAX: tl.constexpr,
    ENTROPY: tl.constexpr,
):
    """Pass 1: returns (M, M_ref, S, S - 1, log S, V, G, P, U) of one row; M_ref is M, or 0 if M = -inf.
    With ARGMAX, P is the first column (relative to x_b) holding M; with ENTROPY,
    U = sum_c exp(x_c - M) (x_c - M) <= 0, so that the entropy is log S - U / S. Otherwise P and U
    are placeholders the caller ignores.

    The row is read as its aligned body, ``n_body`` columns from x_b (column a0 of the row, at a
    16-byte boundary): whole blocks without masks, then one block masked at vector granularity
    (16-byte loads still), then an edge block for the head (columns 0..a0-1, before x_b) and the last
    partial vector, element by element. Any C, any row stride: the loop always issues 16-byte loads.
    """
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
    # Carried through the loops unchanged (and so compiled away) unless ARGMAX / ENTROPY.
    p_l = tl.full([LANES], 1 << 30, tl.int32)
    u_l = tl.zeros([LANES], tl.float32)
    n_seen = 0.0  # elements per lane so far (exact in fp32 below 2**24 columns)
    n_full = (n_body // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        m_l, s_l, r_l, v_l, g_l, p_l, u_l = _stats_block(
            x_b, t_b, w_b, sw_b, start + tile, None, eps, smooth, cap, inv_cap, ls,
            m_l, s_l, r_l, v_l, g_l, p_l, u_l, n_seen, start,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, False, KEEP, HAS_LS, ARGMAX, ENTROPY,
            ITERS, LANES, True,
        )  # fmt: skip
        n_seen += ITERS
    n_l = tl.zeros([LANES], tl.float32) + n_seen
    n_vec = (n_body // VEC) * VEC
    if n_full < n_vec:
        cols = n_full + tile
        mask = cols < n_vec  # constant over each VEC-column vector: still 16-byte loads
        m_l, s_l, r_l, v_l, g_l, p_l, u_l = _stats_block(
            x_b, t_b, w_b, sw_b, cols, mask, eps, smooth, cap, inv_cap, ls,
            m_l, s_l, r_l, v_l, g_l, p_l, u_l, n_l, n_full,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, True, KEEP, HAS_LS, ARGMAX, ENTROPY,
            ITERS, LANES, True,
        )  # fmt: skip
        n_l += tl.sum(mask.to(tl.float32), axis=0)
    edge = n_vec < n_body
    if SHIFT:
        edge = edge | (a0 > 0)
    if edge:
        # Tile positions 0..VEC-1 take the head (relative columns -VEC..-1, those >= -a0 valid),
        # VEC..2 VEC-1 the row's last partial vector; every other position is masked off.
        head = tile < VEC
        cols = tl.where(head, tile - VEC, n_vec + tile - VEC)
        mask = tl.where(head, tile >= VEC - a0, (tile < 2 * VEC) & (cols < n_body))
        m_l, s_l, r_l, v_l, g_l, p_l, u_l = _stats_block(
            x_b, t_b, w_b, sw_b, cols, mask, eps, smooth, cap, inv_cap, ls,
            m_l, s_l, r_l, v_l, g_l, p_l, u_l, n_l, 0,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, True, KEEP, HAS_LS, ARGMAX, ENTROPY,
            ITERS, LANES, False,
        )  # fmt: skip
        n_l += tl.sum(mask.to(tl.float32), axis=0)

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
    P = 0
    if ARGMAX:
        P = tl.min(tl.where(m_l == M, p_l, 1 << 30), axis=0)
        # An all -inf row: column 0, as torch.argmax (a padding position may have won a lane).
        P = tl.where(M == NEG_INF, -a0, P)
    U = 0.0
    if ENTROPY:
        U = tl.sum(u_l * _exp(m_l - M_ref) + lane_shift * sc_l, axis=0)
    if PROB_TARGET or HAS_WEIGHT or HAS_SW:
        V = tl.sum(v_l, axis=0)
        G = tl.sum(g_l + v_l * lane_shift, axis=0)
    else:
        V = tl.sum(v_l, axis=0) + eps  # sum_c eps / C, exactly (v_l is all zeros here)
        G = smooth * tl.sum(g_l + n_l * lane_shift, axis=0)
    # Without smoothing weights (HAS_V false) the caller ignores V and G.
    return M, M_ref, S, s_minus_1, log_s, V, G, P, U


@triton.jit  # type: ignore[untyped-decorator]
def _grad_block(  # type: ignore[no-untyped-def]
    x_b,
    g_b,
    t_b,
    w_b,
    sw_b,
    cols,
    mask,
    eps,
    smooth,
    cap,
    inv_cap,
    M_ref,
    a,
    scale,
    ls,
    y_rel,
    g_y,
    acc,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_LS: tl.constexpr,
    DSCALE: tl.constexpr,
    TARGET_SEL: tl.constexpr,
):
    """Pass 2 on one block: grad = (p * coef - v) * scale = exp(x - M) * a - v * scale, with
    a = coef * scale / S, x the logits times ``ls`` with HAS_LS.

    Without DSCALE the caller has folded ``ls`` (d x' / d x) into ``a`` and ``scale``. With DSCALE
    it has not: the block forms ghat (the gradient w.r.t. the scaled logits), adds ghat * x (raw x)
    into the per-lane ``acc`` (cols is then an [ITERS, LANES] tile) and stores ghat * ls. With
    TARGET_SEL the column ``y_rel`` takes ``g_y`` (the target's final ghat) there too, so that the
    sum holds the value the row ends with."""
    if MASKED:
        x = tl.load(x_b + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        x = tl.load(x_b + cols, eviction_policy="evict_first").to(tl.float32)
    xs = x
    if HAS_LS:
        xs = x * ls
    if SOFTCAP:
        th = _tanh(xs * inv_cap)
        xs = cap * th
    g = _exp(xs - M_ref) * a
    if HAS_V:
        if PROB_TARGET or HAS_WEIGHT or HAS_SW:
            v = _smoothing_weights(cols, mask, t_b, w_b, sw_b, eps, smooth, HAS_WEIGHT, HAS_SW, PROB_TARGET, MASKED)
            g -= v * scale
        else:
            g -= smooth * scale
    if SOFTCAP:
        g = g * (1.0 - th * th)
    if DSCALE:
        if TARGET_SEL:
            g = tl.where(cols == y_rel, g_y, g)
        gx = g * x
        if MASKED:
            gx = tl.where(mask, gx, 0.0)  # masked columns read 0 but g there may be inf
        acc += tl.sum(gx, axis=0)
        if HAS_LS:
            g = g * ls
    g = g.to(g_b.dtype.element_ty)
    if MASKED:
        tl.store(g_b + cols, g, mask=mask, eviction_policy="evict_first")
    else:
        tl.store(g_b + cols, g, eviction_policy="evict_first")
    return acc


@triton.jit  # type: ignore[untyped-decorator]
def _write_grad(  # type: ignore[no-untyped-def]
    x_b,
    g_b,
    t_b,
    w_b,
    sw_b,
    n_body,
    a0,
    eps,
    smooth,
    cap,
    inv_cap,
    M_ref,
    a,
    scale,
    ls,
    y_rel,
    g_y,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_LS: tl.constexpr,
    DSCALE: tl.constexpr,
    TARGET_SEL: tl.constexpr,
):
    """Pass 2 over the row, in _row_stats' order: the aligned body's full blocks without masks, a
    block masked at vector granularity, then the head and the last partial vector. Returns, with
    DSCALE, sum_c ghat_c x_c over the row (see _grad_block); else a placeholder.

    With DSCALE the blocks are [ITERS, LANES] tiles, as in pass 1, so that the sum is folded per lane
    inside each thread (VEC accumulators per thread rather than BLOCK / threads of a flat block) and
    across the block only once, after the loop."""
    BLOCK: tl.constexpr = ITERS * LANES
    if DSCALE:
        offs = tl.arange(0, ITERS)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    else:
        offs = tl.arange(0, BLOCK)
    acc = tl.zeros([LANES], tl.float32)  # compiled away without DSCALE
    n_full = (n_body // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        acc = _grad_block(
            x_b, g_b, t_b, w_b, sw_b, start + offs, None, eps, smooth, cap, inv_cap, M_ref, a, scale,
            ls, y_rel, g_y, acc,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, False, HAS_LS, DSCALE, TARGET_SEL,
        )  # fmt: skip
    n_vec = (n_body // VEC) * VEC
    if n_full < n_vec:
        cols = n_full + offs
        acc = _grad_block(
            x_b, g_b, t_b, w_b, sw_b, cols, cols < n_vec, eps, smooth, cap, inv_cap, M_ref, a, scale,
            ls, y_rel, g_y, acc,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, True, HAS_LS, DSCALE, TARGET_SEL,
        )  # fmt: skip
    edge = n_vec < n_body
    if SHIFT:
        edge = edge | (a0 > 0)
    if edge:
        head = offs < VEC
        cols = tl.where(head, offs - VEC, n_vec + offs - VEC)
        mask = tl.where(head, offs >= VEC - a0, (offs < 2 * VEC) & (cols < n_body))
        acc = _grad_block(
            x_b, g_b, t_b, w_b, sw_b, cols, mask, eps, smooth, cap, inv_cap, M_ref, a, scale,
            ls, y_rel, g_y, acc,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, True, HAS_LS, DSCALE, TARGET_SEL,
        )  # fmt: skip
    return tl.sum(acc, axis=0)


@triton.jit  # type: ignore[untyped-decorator]
def _grad_factor(scale, ls, HAS_LS: tl.constexpr, DSCALE: tl.constexpr):  # type: ignore[no-untyped-def]
    """The factor the gradient pass applies to ghat inside the loop: with a logit scale and no
    DSCALE, d x'/d x = ls is folded into it (no per-element multiply); with DSCALE the block applies
    it after forming ghat."""
    out = scale
    if HAS_LS:  # noqa: SIM102 (two constexpr flags; kept as the two cases they are)
        if not DSCALE:
            out = scale * ls
    return out


@triton.jit  # type: ignore[untyped-decorator]
def _zero_grad(g_b, n_body, a0, BLOCK: tl.constexpr, SHIFT: tl.constexpr):  # type: ignore[no-untyped-def]
    """Zeros over the row (an ignored one): the aligned body in whole blocks, then the rest masked."""
    offs = tl.arange(0, BLOCK)
    zeros = tl.zeros([BLOCK], tl.float32).to(g_b.dtype.element_ty)
    n_full = (n_body // BLOCK) * BLOCK
    for start in range(0, n_full, BLOCK):
        tl.store(g_b + start + offs, zeros)
    if n_full < n_body:
        tl.store(g_b + n_full + offs, zeros, mask=n_full + offs < n_body)
    if SHIFT:
        tl.store(g_b + offs - a0, zeros, mask=offs < a0)


@triton.jit
def _save_stats(stats_ptr, row, M_ref, S, s_minus_1, coef):  # type: ignore[no-untyped-def]
    st = stats_ptr + row * 4
    tl.store(st, M_ref)
    tl.store(st + 1, S)
    tl.store(st + 2, s_minus_1)
    tl.store(st + 3, coef)


@triton.jit  # type: ignore[untyped-decorator]
def _grad_scale(go_ptr, go_stride, scale_ptr, row, HAS_GO: tl.constexpr, HAS_SCALE: tl.constexpr):  # type: ignore[no-untyped-def]
    """The row's grad_output (stride 0 for a scalar or an expanded one) times grad_scale, read on the
    device."""
    scale = 1.0
    if HAS_GO:
        scale = tl.load(go_ptr + row * go_stride).to(tl.float32)
    if HAS_SCALE:
        scale = scale * tl.load(scale_ptr).to(tl.float32)
    return scale


@triton.jit  # type: ignore[untyped-decorator]
def _logit_scale(ls_ptr, HAS_LS: tl.constexpr):  # type: ignore[no-untyped-def]
    """The logit scale s, read on the device (1 without one)."""
    ls = 1.0
    if HAS_LS:
        ls = tl.load(ls_ptr).to(tl.float32)
    return ls


@triton.jit  # type: ignore[untyped-decorator]
def _store_aux(  # type: ignore[no-untyped-def]
    lse_ptr, pred_ptr, ent_ptr, row, M, log_s, S, P, U, a0, C,
    AUX_LSE: tl.constexpr, AUX_PRED: tl.constexpr, AUX_ENT: tl.constexpr,
):  # fmt: skip
    """The row's requested by-products of the statistics pass: lse = M + log S, the argmax column
    (P is relative to the aligned start a0; clamped into [0, C) for rows holding NaN) and the entropy
    log S - U / S (both terms >= 0: no cancellation for confident rows)."""
    if AUX_LSE:
        tl.store(lse_ptr + row, M + log_s)
    if AUX_PRED:
        tl.store(pred_ptr + row, tl.minimum(tl.maximum(P + a0, 0), C - 1).to(tl.int64))
    if AUX_ENT:
        # Approximate division (2 ulp): the IEEE one calls a slow-path subroutine (see _tanh).
        tl.store(ent_ptr + row, log_s - tl.fdiv(U, S, ieee_rounding=False))


@triton.jit  # type: ignore[untyped-decorator]
def _store_aux_ignored(  # type: ignore[no-untyped-def]
    lse_ptr, pred_ptr, ent_ptr, row, y, AUX_LSE: tl.constexpr, AUX_PRED: tl.constexpr, AUX_ENT: tl.constexpr
):  # fmt: skip
    """An ignored row's by-products: lse 0, entropy 0, predicted = the ignore_index it holds."""
    if AUX_LSE:
        tl.store(lse_ptr + row, 0.0)
    if AUX_PRED:
        tl.store(pred_ptr + row, y.to(tl.int64))
    if AUX_ENT:
        tl.store(ent_ptr + row, 0.0)


@triton.jit  # type: ignore[untyped-decorator]
def _target_grad(  # type: ignore[no-untyped-def]
    x_y, th_y, w_y, T, sw_ptr, yc, smooth, M_ref, inv_s, s_minus_1, coef,
    HAS_SW: tl.constexpr, HAS_V: tl.constexpr, SOFTCAP: tl.constexpr,
):  # fmt: skip
    """d loss / d x'_y of a class-index row (x_y after scale and softcap, th_y its tanh), before the
    row's gradient factor."""
    # p_y - 1 = (e_y - S) / S = ((e_y - 1) - (S - 1)) / S: for a confident row e_y = 1 exactly and this
    # is -(S - 1) / S to full fp32 relative accuracy, where p_y - 1 would keep only the rounding error
    # of p_y.
    e_y = _exp(x_y - M_ref)
    g_y = e_y * inv_s * (coef - T) + T * (((e_y - 1.0) - s_minus_1) * inv_s)
    if HAS_V:
        if HAS_SW:
            g_y -= smooth * tl.load(sw_ptr + yc).to(tl.float32)
        else:
            g_y -= smooth * w_y
    if SOFTCAP:
        g_y = g_y * (1.0 - th_y * th_y)
    return g_y


@triton.jit  # type: ignore[untyped-decorator]
def _index_row_grad(  # type: ignore[no-untyped-def]
    x_b,
    g_b,
    g_row,
    w_ptr,
    sw_ptr,
    y,
    yc,
    x_y,
    n_body,
    a0,
    C,
    eps,
    smooth,
    cap,
    inv_cap,
    M_ref,
    S,
    s_minus_1,
    coef,
    scale,
    ls,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TARGET_ELSEWHERE: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_LS: tl.constexpr,
    DSCALE: tl.constexpr,
):
    """The gradient of a class-index row, written over the whole row. ``x_y``: the target's raw logit
    (fp32), read by the caller before anything of the row was written (the row may be the logits).
    Returns, with DSCALE, sum_c ghat_c x_c over the row (the target column at its final value)."""
    w_b = _offset(w_ptr, a0, HAS_WEIGHT)
    sw_b = _offset(sw_ptr, a0, HAS_SW)
    if HAS_LS:
        x_y = x_y * ls
    th_y = 0.0
    if SOFTCAP:
        th_y = _tanh(x_y * inv_cap)
        x_y = cap * th_y
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + yc).to(tl.float32)
    else:
        w_y = 1.0
    T = (1.0 - eps) * w_y
    inv_s = 1.0 / S
    if DSCALE:
        # The target's final ghat goes into the pass, which writes it at column y too and adds it
        # (not p_y coef - v_y, the value the other columns' formula gives there) into the sum.
        g_y = (
            _target_grad(x_y, th_y, w_y, T, sw_ptr, yc, smooth, M_ref, inv_s, s_minus_1, coef, HAS_SW, HAS_V, SOFTCAP)
            * scale
        )
        if TARGET_ELSEWHERE:
            y_rel = tl.where((y >= 0) & (y < C), yc - a0, -(1 << 30))
        else:
            y_rel = yc - a0
        part = _write_grad(
            x_b, g_b, x_b, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, M_ref,
            coef * inv_s * scale, scale, ls, y_rel, g_y,
            HAS_WEIGHT, HAS_SW, False, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, HAS_LS, True, True,
        )  # fmt: skip
        if HAS_LS:
            g_y = g_y * ls
    else:
        gs = _grad_factor(scale, ls, HAS_LS, False)
        # Every column first gets p * coef - v, right everywhere but at the target, which is
        # overwritten below: keeping the one-hot -T out of the per-element work saves a compare and a
        # select per element.
        _write_grad(
            x_b, g_b, x_b, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, M_ref,
            coef * inv_s * gs, gs, ls, 0, 0.0,
            HAS_WEIGHT, HAS_SW, False, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, HAS_LS, False, False,
        )  # fmt: skip
        g_y = (
            _target_grad(x_y, th_y, w_y, T, sw_ptr, yc, smooth, M_ref, inv_s, s_minus_1, coef, HAS_SW, HAS_V, SOFTCAP)
            * gs
        )
        part = 0.0
    # Whichever thread stored column y in the pass above must be done before this store.
    tl.debug_barrier()
    if TARGET_ELSEWHERE:
        if (y >= 0) & (y < C):
            tl.store(g_row + yc, g_y.to(g_row.dtype.element_ty))
    else:
        tl.store(g_row + yc, g_y.to(g_row.dtype.element_ty))
    return part


@triton.jit  # type: ignore[untyped-decorator]
def _ce_fwd_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    x_stride,
    tgt_ptr,
    tgt_stride,
    w_ptr,
    sw_ptr,
    loss_ptr,
    stats_ptr,
    bad_ptr,
    g_ptr,
    g_stride,
    go_ptr,
    go_stride,
    scale_ptr,
    ls_ptr,
    dscale_ptr,
    lse_ptr,
    pred_ptr,
    ent_ptr,
    C,
    ignore_index,
    eps,
    z_coef,
    cap,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    HAS_Z: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SAVE_STATS: tl.constexpr,
    CHECK_TARGETS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    HAS_GO: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
    G_ALIGNED: tl.constexpr,
    HAS_LS: tl.constexpr,
    DSCALE: tl.constexpr,
    AUX_LSE: tl.constexpr,
    AUX_PRED: tl.constexpr,
    AUX_ENT: tl.constexpr,
):
    """Forward: one read of the row; stores its loss and, with SAVE_STATS, the four numbers the
    gradient needs (M_ref, S, S - 1, coef = d loss / d log S), 16 bytes per row. With WRITE_GRAD it
    goes on to write the row's gradient (times grad_output and grad_scale) at once, re-reading the
    row it has just read: the one-launch path for callers that always want the gradient (the fused
    linear loss's chunks).

    HAS_LS: the logits are multiplied by the device scalar at ls_ptr as they are loaded, in both
    passes. DSCALE (with WRITE_GRAD): dscale[row] = sum_c ghat_c x_c. AUX_*: per-row lse, argmax and
    entropy from the statistics pass."""
    BLOCK: tl.constexpr = ITERS * LANES
    # int64 before any multiplication by a stride: row * stride exceeds 2**31 on large problems.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    a0 = _row_head(row, x_stride, C, VEC, SHIFT)
    n_body = C - a0
    x_b = _row_base(x_ptr, row, x_stride, a0, VEC, True)
    w_b = _offset(w_ptr, a0, HAS_WEIGHT)
    sw_b = _offset(sw_ptr, a0, HAS_SW)
    smooth = eps / C
    if SOFTCAP:
        inv_cap = 1.0 / cap
    else:
        inv_cap = 1.0
    ls = _logit_scale(ls_ptr, HAS_LS)

    if PROB_TARGET:
        t_b = tgt_ptr + row * tgt_stride + a0
        M, M_ref, S, s_minus_1, log_s, V, G, P, U = _row_stats(
            x_b, t_b, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, ls,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, WRITE_GRAD,
            HAS_LS, AUX_PRED, AUX_ENT,
        )  # fmt: skip
        lse = M + log_s
        _store_aux(lse_ptr, pred_ptr, ent_ptr, row, M, log_s, S, P, U, a0, C, AUX_LSE, AUX_PRED, AUX_ENT)
        # sum_c v_c (M - x_c + log S) = V log S - G, both terms >= 0.
        loss = V * log_s - G
        coef = V
        if HAS_Z:
            loss += z_coef * lse * lse
            coef += 2.0 * z_coef * lse
        tl.store(loss_ptr + row, loss)
        if SAVE_STATS:
            _save_stats(stats_ptr, row, M_ref, S, s_minus_1, coef)
        if WRITE_GRAD:
            # Formed after the statistics pass, so that they take no registers during it.
            g_b = _row_base(g_ptr, row, g_stride, a0, VEC, G_ALIGNED)
            scale = _grad_factor(_grad_scale(go_ptr, go_stride, scale_ptr, row, HAS_GO, HAS_SCALE), ls, HAS_LS, DSCALE)
            part = _write_grad(
                x_b, g_b, t_b, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, M_ref,
                coef * scale / S, scale, ls, 0, 0.0,
                HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, HAS_LS, DSCALE, False,
            )  # fmt: skip
            if DSCALE:
                tl.store(dscale_ptr + row, part)
    else:
        y = tl.load(tgt_ptr + row * tgt_stride)
        if y == ignore_index:
            # Without a gradient nothing else to store: backward sees the ignored target and writes zeros.
            tl.store(loss_ptr + row, 0.0)
            _store_aux_ignored(lse_ptr, pred_ptr, ent_ptr, row, y, AUX_LSE, AUX_PRED, AUX_ENT)
            if WRITE_GRAD:
                _zero_grad(_row_base(g_ptr, row, g_stride, a0, VEC, G_ALIGNED), n_body, a0, BLOCK, SHIFT)
                if DSCALE:
                    tl.store(dscale_ptr + row, 0.0)
        else:
            tl.device_assert((y >= 0) & (y < C), "labelsmooth: target class index out of range")
            # Kept nested: CHECK_TARGETS is a constexpr that Triton resolves at compile time, while the
            # range test is a runtime tensor; `and` between the two is not what the Triton DSL expects.
            if CHECK_TARGETS:  # noqa: SIM102
                # Every offending row writes the same 1: racing stores need no atomics.
                if (y < 0) | (y >= C):
                    tl.store(bad_ptr, 1)
            # Clamped so that a bad target reads in bounds even with device asserts off.
            yc = tl.minimum(tl.maximum(y, 0), C - 1).to(tl.int32)
            x_y_raw = tl.load(x_row + yc).to(tl.float32)
            x_y = x_y_raw
            if HAS_LS:
                x_y = x_y * ls
            if SOFTCAP:
                x_y = cap * _tanh(x_y * inv_cap)
            if HAS_WEIGHT:
                w_y = tl.load(w_ptr + yc).to(tl.float32)
            else:
                w_y = 1.0
            T = (1.0 - eps) * w_y
            M, M_ref, S, s_minus_1, log_s, V, G, P, U = _row_stats(
                x_b, tgt_ptr, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, ls,
                HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, WRITE_GRAD,
                HAS_LS, AUX_PRED, AUX_ENT,
            )  # fmt: skip
            lse = M + log_s
            _store_aux(lse_ptr, pred_ptr, ent_ptr, row, M, log_s, S, P, U, a0, C, AUX_LSE, AUX_PRED, AUX_ENT)
            # (M - x_y) >= 0 is exactly 0 when y is the argmax; no lse - x_y cancellation.
            loss = T * ((M - x_y) + log_s)
            coef = T
            if HAS_V:
                loss += V * log_s - G
                coef += V
            if HAS_Z:
                loss += z_coef * lse * lse
                coef += 2.0 * z_coef * lse
            tl.store(loss_ptr + row, loss)
            if SAVE_STATS:
                _save_stats(stats_ptr, row, M_ref, S, s_minus_1, coef)
            if WRITE_GRAD:
                # x_y was read before the stats pass, whose lane fold ends with barriers: no warp of
                # this program writes the row (which may be the logits) before every warp has read it.
                g_row = g_ptr + row * g_stride
                g_b = _row_base(g_ptr, row, g_stride, a0, VEC, G_ALIGNED)
                scale = _grad_scale(go_ptr, go_stride, scale_ptr, row, HAS_GO, HAS_SCALE)
                part = _index_row_grad(
                    x_b, g_b, g_row, w_ptr, sw_ptr, y, yc, x_y_raw, n_body, a0, C, eps, smooth, cap,
                    inv_cap, M_ref, S, s_minus_1, coef, scale, ls,
                    HAS_WEIGHT, HAS_SW, HAS_V, SOFTCAP, False, ITERS, LANES, VEC, SHIFT, HAS_LS, DSCALE,
                )  # fmt: skip
                if DSCALE:
                    tl.store(dscale_ptr + row, part)


@triton.jit  # type: ignore[untyped-decorator]
def _ce_bwd_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    x_stride,
    tgt_ptr,
    tgt_stride,
    w_ptr,
    sw_ptr,
    g_ptr,
    g_stride,
    stats_ptr,
    go_ptr,
    go_stride,
    scale_ptr,
    ls_ptr,
    dscale_ptr,
    C,
    K,
    ignore_index,
    eps,
    cap,
    HAS_WEIGHT: tl.constexpr,
    HAS_SW: tl.constexpr,
    PROB_TARGET: tl.constexpr,
    HAS_V: tl.constexpr,
    SOFTCAP: tl.constexpr,
    HAS_GO: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    TARGET_ELSEWHERE: tl.constexpr,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
    G_ALIGNED: tl.constexpr,
    HAS_LS: tl.constexpr,
    DSCALE: tl.constexpr,
):
    """Backward: one read and one write of the row, the gradient already multiplied by the row's
    grad_output and by ``grad_scale`` (both read here, on the device: no host synchronisation).

    K is the class count eps is spread over (C, except for a vocabulary slice, where it is the global
    count). With TARGET_ELSEWHERE a class index outside [0, C) means that the target lies in another
    slice: the row is written without a target column. HAS_LS and DSCALE as in the forward kernel
    (``stats`` are then those of the scaled logits)."""
    BLOCK: tl.constexpr = ITERS * LANES
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    g_row = g_ptr + row * g_stride
    a0 = _row_head(row, x_stride, C, VEC, SHIFT)
    n_body = C - a0
    x_b = _row_base(x_ptr, row, x_stride, a0, VEC, True)
    w_b = _offset(w_ptr, a0, HAS_WEIGHT)
    sw_b = _offset(sw_ptr, a0, HAS_SW)
    g_b = _row_base(g_ptr, row, g_stride, a0, VEC, G_ALIGNED)
    smooth = eps / K
    if SOFTCAP:
        inv_cap = 1.0 / cap
    else:
        inv_cap = 1.0
    scale = _grad_scale(go_ptr, go_stride, scale_ptr, row, HAS_GO, HAS_SCALE)
    ls = _logit_scale(ls_ptr, HAS_LS)
    st = stats_ptr + row * 4

    if PROB_TARGET:
        t_b = tgt_ptr + row * tgt_stride + a0
        M_ref = tl.load(st)
        S = tl.load(st + 1)
        coef = tl.load(st + 3)
        gs = _grad_factor(scale, ls, HAS_LS, DSCALE)
        part = _write_grad(
            x_b, g_b, t_b, w_b, sw_b, n_body, a0, eps, smooth, cap, inv_cap, M_ref,
            coef * gs / S, gs, ls, 0, 0.0,
            HAS_WEIGHT, HAS_SW, PROB_TARGET, HAS_V, SOFTCAP, ITERS, LANES, VEC, SHIFT, HAS_LS, DSCALE, False,
        )  # fmt: skip
        if DSCALE:
            tl.store(dscale_ptr + row, part)
    else:
        y = tl.load(tgt_ptr + row * tgt_stride)
        if y == ignore_index:
            # Exactly 0, whatever the logits or the grad_output (NaN or inf included) hold.
            _zero_grad(g_b, n_body, a0, BLOCK, SHIFT)
            if DSCALE:
                tl.store(dscale_ptr + row, 0.0)
        else:
            yc = tl.minimum(tl.maximum(y, 0), C - 1).to(tl.int32)
            M_ref = tl.load(st)
            S = tl.load(st + 1)
            s_minus_1 = tl.load(st + 2)
            coef = tl.load(st + 3)
            # Read before the row is written, which may be over the logits themselves (inplace):
            # every thread loads x_y, and the barrier keeps any warp from storing over column y
            # before all of them have (bar.sync orders the CTA's global accesses too).
            x_y = tl.load(x_row + yc).to(tl.float32)
            tl.debug_barrier()
            part = _index_row_grad(
                x_b, g_b, g_row, w_ptr, sw_ptr, y, yc, x_y, n_body, a0, C, eps, smooth, cap,
                inv_cap, M_ref, S, s_minus_1, coef, scale, ls,
                HAS_WEIGHT, HAS_SW, HAS_V, SOFTCAP, TARGET_ELSEWHERE, ITERS, LANES, VEC, SHIFT, HAS_LS, DSCALE,
            )  # fmt: skip
            if DSCALE:
                tl.store(dscale_ptr + row, part)


@triton.jit  # type: ignore[untyped-decorator]
def _slice_stats_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    x_stride,
    tgt_ptr,
    out_ptr,
    rows,
    C,
    ITERS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    SHIFT: tl.constexpr,
):
    """One slice of a vocabulary split over devices: per row its max m, S - 1 relative to m (summed
    without one max element, as in forward), sum_c (x_c - m) and x_y - m for a target inside the slice
    (0 otherwise); stored as out[0..3, row]."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    a0 = _row_head(row, x_stride, C, VEC, SHIFT)
    x_b = _row_base(x_ptr, row, x_stride, a0, VEC, True)
    # eps = C makes _row_stats' uniform smoothing sum (eps / C) sum_c (x_c - m) the plain sum.
    M, M_ref, _S, s_minus_1, _log_s, _V, G, _P, _U = _row_stats(
        x_b, tgt_ptr, x_ptr, x_ptr, C - a0, a0, C * 1.0, 1.0, 1.0, 1.0, 1.0,
        False, False, False, True, False, ITERS, LANES, VEC, SHIFT, False, False, False, False,
    )  # fmt: skip
    y = tl.load(tgt_ptr + row)
    inside = (y >= 0) & (y < C)
    yc = tl.minimum(tl.maximum(y, 0), C - 1).to(tl.int32)
    z_y = tl.where(inside, tl.load(x_row + yc).to(tl.float32) - M_ref, 0.0)
    tl.store(out_ptr + row, M)
    tl.store(out_ptr + rows + row, s_minus_1)
    tl.store(out_ptr + 2 * rows + row, G)
    tl.store(out_ptr + 3 * rows + row, z_y)


def slice_stats(
    logits: torch.Tensor,
    local_target: torch.Tensor,
    *,
    block_size: int | None = None,
    iters: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """(4, M) float32 statistics of one vocabulary slice in one read of its (M, C) logits: row max m,
    S - 1 = sum_c exp(x_c - m) - 1 (summed without one max element), sum_c (x_c - m), and x_y - m where
    the class index ``local_target`` lies in [0, C) (else 0). No host-device synchronisation."""
    target, _ = _check_operands(logits, local_target, None)
    num_rows, num_classes = logits.shape
    out = torch.empty((4, num_rows), dtype=torch.float32, device=logits.device)
    if num_rows == 0:
        return out
    it, lanes, warps = _launch_config(num_classes, logits.element_size(), False, block_size, iters, num_warps)
    _launch(
        _slice_stats_kernel,
        logits.device,
        num_rows,
        (logits, logits.stride(0), target, out, num_rows, num_classes),
        dict(
            ITERS=it,
            LANES=lanes,
            num_warps=warps,
            **_row_layout(logits.element_size(), it * lanes, logits.stride(0)),
        ),
    )
    return out


def is_available() -> bool:
    """True when this kernel can run here: on a CUDA device, or on CPU tensors under the Triton
    interpreter. The interpreter is chosen when the kernels are defined, i.e. by TRITON_INTERPRET=1
    being set before this module was first imported, so that is what is checked."""
    interpreted = type(_ce_fwd_kernel).__name__ == "InterpretedFunction"
    return interpreted or torch.cuda.is_available()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def intended_occupancy(num_warps: int) -> tuple[int, int]:
    """(programs per SM, registers per thread at most) that a program of ``num_warps`` warps is meant
    to reach: _RESIDENT_WARPS warps resident per SM, in as many programs as that takes."""
    programs = max(1, _RESIDENT_WARPS // num_warps)
    registers = _REGISTERS_PER_SM // (programs * num_warps * 32)
    return programs, min(255, registers // 8 * 8)  # allocated per thread in multiples of 8


def _register_budget(num_warps: int, heavy_shifted: bool) -> dict[str, int]:
    """The launch option that hands ptxas the register budget of the intended occupancy (maxnreg), for
    the heavy shifted configurations only. There, left to itself, ptxas traded a few spilled bytes for
    an occupancy above the one intended (80 registers and 8 bytes of spills where 109 fit without
    any); elsewhere the budget made it spill where it otherwise did not (it schedules up to the cap),
    so it is not given. The compile check (tests/test_triton_compile.py) holds both to no spills."""
    return {"maxnreg": intended_occupancy(num_warps)[1]} if heavy_shifted else {}


def _launch_config(
    num_classes: int,
    element_size: int,
    extra_operands: bool,
    block_size: int | None,
    iters: int | None,
    num_warps: int | None,
    heavy_shifted: bool = False,
    lane_state: int = 0,
) -> tuple[int, int, int]:
    """(ITERS, LANES, num_warps) for a row of ``num_classes`` logits of ``element_size`` bytes.

    ``heavy_shifted``: rows not at a 16-byte boundary (see _row_layout) with extra operands, which
    those rows read element by element (their per-element addresses take registers): the tile is
    halved once more to stay within 128. ``lane_state``: how many times more to halve it for the
    per-lane state the kernel options keep across the loops (the argmax column and the entropy sum in
    pass 1, the d/ds sums in pass 2: once; the one-launch forward with either aux output: twice)."""
    vec = max(1, 16 // element_size)  # logits per 16-byte vector load
    if block_size is None:
        lanes = min(_next_pow2(num_classes), _WARPS * 32 * vec)
        values = _TILE_VALUES_EXTRA_OPERANDS if extra_operands else _TILE_VALUES
        if heavy_shifted:
            values //= 2
        values = max(1, values >> lane_state)
        it = iters or max(1, values // vec)
        it = max(1, min(_next_pow2(it), _next_pow2(num_classes) // lanes))
    else:
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        it = min(_next_pow2(iters or 1), block_size)
        lanes = block_size // it
    if num_warps is None:
        num_warps = max(1, min(_WARPS, lanes // (32 * vec)))
    return it, lanes, num_warps


def _row_layout(element_size: int, block: int, x_stride: int, g_stride: int | None = None) -> dict[str, object]:
    """The meta-parameters of a row's aligned body: VEC logits per 16-byte vector (at most half a
    block, so that the edge block holds a head and a tail of a row), SHIFT when rows do not all start
    at a vector boundary (the row stride is no multiple of VEC), and G_ALIGNED when the gradient's rows
    sit at the same offset from a boundary as the logits' (strides equal modulo VEC), so that the
    body's stores are 16-byte too."""
    vec = max(1, min(16 // element_size, block // 2))
    # Triton's specialisation knows a stride divisible by 16 elements; any other stride takes the
    # shifted path (a0 computed per row, 0 where the stride is a multiple of VEC), which is how the
    # compiler learns that the body is aligned.
    layout: dict[str, object] = dict(VEC=vec, SHIFT=x_stride % 16 != 0 and vec > 1)
    if g_stride is not None:
        layout["G_ALIGNED"] = (g_stride - x_stride) % vec == 0
    return layout


def _check_operands(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate the 2-D problem; returns (target, weight) made ready for the kernels."""
    if logits.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton cross-entropy kernel supports float16, bfloat16 and float32 logits, got {logits.dtype}"
        )
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (M, C), got shape {tuple(logits.shape)}")
    num_rows, num_classes = logits.shape
    if num_classes < 1:
        raise ValueError("logits must have at least one class")
    if num_classes > 1 and logits.stride(1) != 1:
        raise ValueError("logits rows must be contiguous (stride(1) == 1)")
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"probability target must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        if num_classes > 1 and target.stride(1) != 1:
            target = target.contiguous()  # the kernels read target rows as contiguous vectors
    elif target.shape != (num_rows,):
        raise ValueError(f"class-index target must have shape ({num_rows},), got {tuple(target.shape)}")
    if weight is not None:
        if weight.shape != (num_classes,):
            raise ValueError(f"weight must have shape ({num_classes},), got {tuple(weight.shape)}")
        weight = weight.contiguous()
    return target, weight


def _smoothing_weights_vector(
    prior: torch.Tensor | None, weight: torch.Tensor | None, num_classes: int
) -> torch.Tensor | None:
    """sw = C u w, the smoothing term's per-class weights for a prior u (None without one: the kernels
    then use the class weights, or the uniform shortcut)."""
    if prior is None:
        return None
    if prior.shape != (num_classes,):
        raise ValueError(f"prior must have shape ({num_classes},), got {tuple(prior.shape)}")
    sw = prior.to(torch.float32) * num_classes
    if weight is not None:
        sw = sw * weight.to(device=sw.device, dtype=torch.float32)
    return sw.contiguous()


# kernel: a triton JITFunction (Any: triton is untyped), launched with one program per row.
def _launch(
    kernel: Any, device: torch.device, num_rows: int, args: tuple[object, ...], meta: Mapping[str, object]
) -> None:
    if _recorders:
        # Inside record_launches(): what the wrappers decided is kept, nothing runs.
        _recorders[-1].append(Launch(kernel, num_rows, args, dict(meta)))
        return
    if device.type == "cuda":
        with torch.cuda.device(device):  # launch on the tensors' device, not the current one
            kernel[(num_rows,)](*args, **meta)
    else:
        kernel[(num_rows,)](*args, **meta)


class Launch(NamedTuple):
    """One kernel launch as a wrapper decided it: the kernel, its grid (one program per row), its
    arguments and its meta-parameters (constexprs and launch options such as num_warps)."""

    kernel: Any
    num_rows: int
    args: tuple[object, ...]
    meta: dict[str, object]


_recorders: list[list[Launch]] = []


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Within the block the wrappers (and every caller of them: ``labelsmooth.cross_entropy``, the
    linear and vocabulary-parallel losses) make every launch decision as usual but launch nothing;
    the decisions are appended to the list this yields. Used to compile the kernels for a GPU
    target on a machine without one (tests/test_triton_compile.py), with the wrappers' own choices
    rather than a second copy of the launch table. The outputs of the skipped kernels are left
    uninitialised."""
    launches: list[Launch] = []
    _recorders.append(launches)
    try:
        yield launches
    finally:
        _recorders.remove(launches)


def _check_grad_operands(
    logits: torch.Tensor,
    grad: torch.Tensor,
    grad_output: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
) -> tuple[torch.Tensor | None, int]:
    """Validate the gradient buffer and its factors; returns (grad_output as the kernels read it, its
    stride)."""
    device = logits.device
    if grad.shape != logits.shape or grad.dtype != logits.dtype:
        raise ValueError("grad must have the logits' shape and dtype")
    if logits.shape[1] > 1 and grad.stride(1) != 1:
        raise ValueError("grad rows must be contiguous (stride(1) == 1)")
    for name, t in (("grad_output", grad_output), ("grad_scale", grad_scale)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on the logits' device {device}, got {t.device}")
    if grad_scale is not None and grad_scale.numel() != 1:
        raise ValueError(f"grad_scale must be a one-element tensor, got shape {tuple(grad_scale.shape)}")
    go_stride = 0
    if grad_output is not None:
        if grad_output.numel() == 1:
            grad_output = grad_output.reshape(())
        elif grad_output.shape != (logits.shape[0],):
            raise ValueError(
                f"grad_output must have one element or shape ({logits.shape[0]},), got {tuple(grad_output.shape)}"
            )
        else:
            go_stride = grad_output.stride(0)
    return grad_output, go_stride


#: The per-row by-products the forward statistics pass can return (``aux=``).
AUX_ITEMS = frozenset({"lse", "predicted", "entropy"})


def _check_aux(aux: Iterable[str]) -> frozenset[str]:
    items = frozenset(aux)
    unknown = items - AUX_ITEMS
    if unknown:
        raise ValueError(f"aux: unknown item(s) {sorted(unknown)}; the kernel computes {sorted(AUX_ITEMS)}")
    return items


def _logit_scale_tensor(logit_scale: torch.Tensor | float | None, device: torch.device) -> torch.Tensor | None:
    """The logit scale as the kernels read it: a 0-d float32 tensor on the logits' device (a float is
    put there with one fill, no host read; a tensor is viewed, and converted only if not float32)."""
    if logit_scale is None:
        return None
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1 or not logit_scale.is_floating_point():
            raise ValueError(
                f"logit_scale must be a one-element floating tensor, got {logit_scale.dtype} "
                f"of shape {tuple(logit_scale.shape)}"
            )
        if logit_scale.device != device:
            raise ValueError(f"logit_scale must be on the logits' device {device}, got {logit_scale.device}")
        return logit_scale.detach().reshape(()).to(torch.float32)
    return torch.full((), float(logit_scale), dtype=torch.float32, device=device)


def _check_dscale(dscale: torch.Tensor | None, logits: torch.Tensor) -> None:
    if dscale is None:
        return
    num_rows = logits.shape[0]
    if dscale.shape != (num_rows,) or dscale.dtype != torch.float32 or (num_rows > 1 and dscale.stride(0) != 1):
        raise ValueError(
            f"dscale must be a contiguous ({num_rows},) float32 tensor, got {dscale.dtype} of shape "
            f"{tuple(dscale.shape)}"
        )
    if dscale.device != logits.device:
        raise ValueError(f"dscale must be on the logits' device {logits.device}, got {dscale.device}")


@overload
def forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    *,
    save_stats: bool = ...,
    check_targets: bool = ...,
    prior: torch.Tensor | None = ...,
    grad: torch.Tensor | None = ...,
    grad_output: torch.Tensor | None = ...,
    grad_scale: torch.Tensor | None = ...,
    logit_scale: torch.Tensor | float | None = ...,
    dscale: torch.Tensor | None = ...,
    block_size: int | None = ...,
    iters: int | None = ...,
    num_warps: int | None = ...,
) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@overload
def forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    *,
    save_stats: bool = ...,
    check_targets: bool = ...,
    prior: torch.Tensor | None = ...,
    grad: torch.Tensor | None = ...,
    grad_output: torch.Tensor | None = ...,
    grad_scale: torch.Tensor | None = ...,
    logit_scale: torch.Tensor | float | None = ...,
    dscale: torch.Tensor | None = ...,
    aux: Iterable[str],
    block_size: int | None = ...,
    iters: int | None = ...,
    num_warps: int | None = ...,
) -> tuple[torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]: ...


def forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    *,
    save_stats: bool = False,
    check_targets: bool = False,
    prior: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
    grad_output: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float | None = None,
    dscale: torch.Tensor | None = None,
    aux: Iterable[str] = frozenset(),
    block_size: int | None = None,
    iters: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Row losses of (M, C) logits in one read of them; with ``save_stats`` also the (M, 4) float32
    row statistics that :func:`backward` needs. Returns ``(loss_rows, stats or None)``, or
    ``(loss_rows, stats or None, aux_rows)`` when ``aux`` names anything.

    ``check_targets`` queues a device-side assertion that every class index other than
    ``ignore_index`` lies in [0, C) (on a CPU tensor it fails at once, with a RuntimeError).
    ``prior``: the (C,) smoothing distribution u (None: uniform).

    ``logit_scale``: None, or s as a one-element tensor on the logits' device (a float is accepted
    and put there): the kernels read s * x wherever they read a logit x (before the softcap), with s
    read on the device. The saved statistics are those of the scaled logits, so :func:`backward`
    must get the same ``logit_scale``.

    ``aux``: any of ``"lse"`` (log-sum-exp of the final, scaled and capped, logits; float32),
    ``"predicted"`` (the first column holding the final logits' max, int64: the argmax of the raw
    logits for s > 0 unless scaling or capping rounds two of them to the same float32 value; on a row
    holding NaN an unspecified column in [0, C)) and ``"entropy"`` (of softmax of the final logits,
    float32), computed in the statistics pass, returned as a dict of (M,) tensors. Ignored rows get
    lse 0, entropy 0 and predicted = ignore_index.

    With ``grad`` (an (M, C) tensor of the logits' dtype, possibly the logits themselves) the same
    launch goes on to write the gradient into it, times ``grad_output`` and ``grad_scale`` as in
    :func:`backward`, re-reading each row right after its statistics pass: for callers that always
    want the gradient (no statistics round trip, one launch). ``dscale`` (only with ``grad``) as in
    :func:`backward`.

    Keyword-only knobs (tests, tuning): ``block_size`` columns per iteration (a power of two), split
    into ``iters`` tile rows, and ``num_warps``. No host-device synchronisation happens here.
    """
    target, weight = _check_operands(logits, target, weight)
    num_rows, num_classes = logits.shape
    device = logits.device
    items = _check_aux(aux)
    go_stride = 0
    if grad is not None:
        grad_output, go_stride = _check_grad_operands(logits, grad, grad_output, grad_scale)
    elif dscale is not None:
        raise ValueError("dscale needs grad: its sums are formed in the pass that writes the gradient")
    _check_dscale(dscale, logits)
    ls = _logit_scale_tensor(logit_scale, device)
    loss = torch.empty(num_rows, dtype=torch.float32, device=device)
    stats = torch.empty((num_rows, 4), dtype=torch.float32, device=device) if save_stats else None
    extras = {
        name: torch.empty(num_rows, dtype=torch.int64 if name == "predicted" else torch.float32, device=device)
        for name in sorted(items)
    }
    if num_rows == 0:
        return (loss, stats, extras) if items else (loss, stats)
    prob = target.is_floating_point()
    eps = float(label_smoothing)
    z = float(z_loss)
    sw = _smoothing_weights_vector(prior, weight, num_classes)
    extra = prob or weight is not None or sw is not None
    shifted = logits.stride(0) % 16 != 0
    heavy = (extra or softcap is not None) and shifted
    # The argmax and entropy states of pass 1 and the d/ds sums of pass 2 take registers the tile
    # gives up: halved, and halved again where one launch holds pass 1's states and then runs pass 2
    # or where rows start off a vector boundary. A logit scale alone halves it on such rows only. The
    # one-launch forward with any of them also hands ptxas the budget, as for the heavy shifted rows.
    # From compile_check's numbers (ptxas spilled a few bytes otherwise).
    aux_state = "predicted" in items or "entropy" in items
    lane_state = int(aux_state or dscale is not None or (ls is not None and shifted))
    lane_state += int(aux_state and (grad is not None or shifted))
    it, lanes, warps = _launch_config(
        num_classes,
        logits.element_size(),
        extra,
        block_size,
        iters,
        num_warps,
        heavy_shifted=heavy,
        lane_state=lane_state,
    )
    check = check_targets and not prob
    bad = torch.zeros((), dtype=torch.int32, device=device) if check else None
    write = grad is not None
    args = (
        logits,
        logits.stride(0),
        target,
        target.stride(0),
        weight,
        sw,
        loss,
        stats,
        bad,
        grad,
        grad.stride(0) if grad is not None else 0,
        grad_output if write else None,
        go_stride,
        grad_scale if write else None,
        ls,
        dscale,
        extras.get("lse"),
        extras.get("predicted"),
        extras.get("entropy"),
        num_classes,
        int(ignore_index),
        eps,
        z,
        float(softcap) if softcap is not None else 1.0,
    )
    meta = dict(
        HAS_WEIGHT=weight is not None,
        HAS_SW=sw is not None,
        PROB_TARGET=prob,
        HAS_V=prob or eps != 0.0,
        HAS_Z=z != 0.0,
        SOFTCAP=softcap is not None,
        SAVE_STATS=save_stats,
        CHECK_TARGETS=check,
        WRITE_GRAD=write,
        HAS_GO=write and grad_output is not None,
        HAS_SCALE=write and grad_scale is not None,
        ITERS=it,
        LANES=lanes,
        num_warps=warps,
        **_register_budget(warps, heavy or (lane_state > 0 and grad is not None)),
        **_row_layout(
            logits.element_size(),
            it * lanes,
            logits.stride(0),
            grad.stride(0) if grad is not None else logits.stride(0),
        ),
        HAS_LS=ls is not None,
        DSCALE=dscale is not None,
        AUX_LSE="lse" in items,
        AUX_PRED="predicted" in items,
        AUX_ENT="entropy" in items,
    )
    _launch(_ce_fwd_kernel, device, num_rows, args, meta)
    if check:
        assert bad is not None  # allocated above whenever check is set
        torch._assert_async(
            bad == 0,
            f"target contains a class index outside [0, {num_classes - 1}] (and not ignore_index={ignore_index})",
        )
    return (loss, stats, extras) if items else (loss, stats)


def backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    stats: torch.Tensor,
    grad: torch.Tensor,
    *,
    grad_output: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float | None = None,
    dscale: torch.Tensor | None = None,
    smoothing_classes: int | None = None,
    target_elsewhere: bool = False,
    block_size: int | None = None,
    iters: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Write d loss_rows[n] / d logits[n, :] times ``grad_output[n]`` times ``grad_scale`` into ``grad``
    (which may be ``logits`` itself) in one read of the logits and one write, and return ``grad``.

    ``stats`` comes from :func:`forward` with ``save_stats=True`` on the same, unmodified operands.
    ``grad_output`` is None (1), a one-element tensor, or an (M,) vector of any stride (an expanded
    scalar included); ``grad_scale`` None or a one-element tensor. Both are read on the device, so the
    gradient is scaled with no extra pass over it and no host-device synchronisation. Ignored rows get
    exactly 0 whatever their logits and grad_output hold.

    ``logit_scale`` s (as in :func:`forward`, which must have had the same one): the gradient written
    is s * ghat, ghat = d loss / d (s x) times grad_output[n] and grad_scale. ``dscale``: None, or a
    contiguous (M,) float32 tensor that receives sum_c ghat_nc x_nc per row (d loss_n / d s with the
    same factors), 0 on ignored rows, summed in the pass that writes the gradient. In float32, so
    to about 1e-7 of sum_c |ghat_nc x_nc| (a sum that cancels, e.g. large logits of nearly equal
    values, keeps that absolute error).

    For one slice of a vocabulary split over devices (``labelsmooth.distributed``): ``stats`` holds the
    whole row's statistics, ``smoothing_classes`` the global class count K (eps/K per class), and with
    ``target_elsewhere`` a class index outside [0, C) marks a target held by another slice (the
    slice's ``dscale`` is then its part of the row's sum).
    """
    target, weight = _check_operands(logits, target, weight)
    num_rows, num_classes = logits.shape
    device = logits.device
    grad_output, go_stride = _check_grad_operands(logits, grad, grad_output, grad_scale)
    if stats.shape != (num_rows, 4) or stats.dtype != torch.float32 or not stats.is_contiguous():
        raise ValueError(f"stats must be the contiguous ({num_rows}, 4) float32 tensor that forward returned")
    _check_dscale(dscale, logits)
    ls = _logit_scale_tensor(logit_scale, device)
    if num_rows == 0:
        return grad
    prob = target.is_floating_point()
    eps = float(label_smoothing)
    sw = _smoothing_weights_vector(prior, weight, num_classes)
    extra = prob or weight is not None or sw is not None
    heavy = (extra or softcap is not None) and logits.stride(0) % 16 != 0
    it, lanes, warps = _launch_config(
        num_classes,
        logits.element_size(),
        extra,
        block_size,
        iters,
        num_warps,
        heavy_shifted=heavy,
        lane_state=int(dscale is not None),
    )
    k = num_classes if smoothing_classes is None else int(smoothing_classes)
    args = (
        logits,
        logits.stride(0),
        target,
        target.stride(0),
        weight,
        sw,
        grad,
        grad.stride(0),
        stats,
        grad_output,
        go_stride,
        grad_scale,
        ls,
        dscale,
        num_classes,
        k,
        int(ignore_index),
        eps,
        float(softcap) if softcap is not None else 1.0,
    )
    meta = dict(
        HAS_WEIGHT=weight is not None,
        HAS_SW=sw is not None,
        PROB_TARGET=prob,
        HAS_V=prob or eps != 0.0,
        SOFTCAP=softcap is not None,
        HAS_GO=grad_output is not None,
        HAS_SCALE=grad_scale is not None,
        TARGET_ELSEWHERE=bool(target_elsewhere),
        ITERS=it,
        LANES=lanes,
        num_warps=warps,
        **_register_budget(warps, heavy),
        **_row_layout(logits.element_size(), it * lanes, logits.stride(0), grad.stride(0)),
        HAS_LS=ls is not None,
        DSCALE=dscale is not None,
    )
    _launch(_ce_bwd_kernel, device, num_rows, args, meta)
    return grad


@overload
def fused_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: torch.Tensor | None,
    *,
    grad_scale: torch.Tensor | None = ...,
    grad_output: torch.Tensor | None = ...,
    prior: torch.Tensor | None = ...,
    logit_scale: torch.Tensor | float | None = ...,
    dscale: torch.Tensor | None = ...,
    block_size: int | None = ...,
    iters: int | None = ...,
    num_warps: int | None = ...,
) -> torch.Tensor: ...


@overload
def fused_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: torch.Tensor | None,
    *,
    grad_scale: torch.Tensor | None = ...,
    grad_output: torch.Tensor | None = ...,
    prior: torch.Tensor | None = ...,
    logit_scale: torch.Tensor | float | None = ...,
    dscale: torch.Tensor | None = ...,
    aux: Iterable[str],
    block_size: int | None = ...,
    iters: int | None = ...,
    num_warps: int | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def fused_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: torch.Tensor | None,
    *,
    grad_scale: torch.Tensor | None = None,
    grad_output: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float | None = None,
    dscale: torch.Tensor | None = None,
    aux: Iterable[str] = frozenset(),
    block_size: int | None = None,
    iters: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The kernels' common contract (``labelsmooth.kernels``): row losses, and the gradient times
    ``grad_scale`` (and ``grad_output``: None, one element or (M,)) written into ``grad`` when it is
    given, in one launch (:func:`forward` with ``grad``): a statistics pass over each row and a
    gradient pass over the same row right after it.

    ``grad_scale`` may also be an (M,) tensor of per-row factors (the chunked kernel's contract); it
    is then folded into ``grad_output`` (one (M,) multiply when both are given). ``logit_scale``
    (a float or a one-element tensor), ``dscale`` and ``aux`` as in :func:`forward`; with ``aux`` the
    return is ``(loss_rows, aux_rows)``.

    No host-device synchronisation happens here.
    """
    if grad_scale is not None and grad_scale.dim() == 1 and grad_scale.shape[0] == logits.shape[0] != 1:
        if grad is not None:
            grad_output = grad_scale if grad_output is None else grad_output * grad_scale
        grad_scale = None
    out = forward(
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        prior=prior,
        grad=grad,
        grad_output=grad_output,
        grad_scale=grad_scale,
        logit_scale=logit_scale,
        dscale=dscale,
        aux=aux,
        block_size=block_size,
        iters=iters,
        num_warps=num_warps,
    )
    if len(out) == 3:
        return out[0], out[2]
    return out[0]
