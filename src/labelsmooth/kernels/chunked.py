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
  p_y - 1 = (expm1(z_y) - (S - 1)) / S, and S - 1 of a confident row is summed without its max element,
  so that a confident row keeps its small loss and target gradient to float32 accuracy.

Every sum is taken of z <= 0 after the max is subtracted, so nothing cancels (``m W - sum w x`` would,
once the logits are large and close together). The contract is in ``labelsmooth.kernels``; the formulas
are those of ``labelsmooth.reference.ce_rows``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labelsmooth.reference import compute_dtype

# Bytes of float32 work per block: large enough that per-op overhead is amortised over many
# elements, small enough that the block's repeated passes hit the last-level cache.
BLOCK_BYTES = 4 << 20
_LOG2E = 1.4426950408889634


def default_block_rows(num_classes: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(1, num_classes)))


# Rows whose S - 1 is below this are confident enough for float32's S - 1 to lose accuracy
# (relative error up to 6e-8 / (S - 1)); they get S - 1 summed again without the max element.
_CONFIDENT = 2.0 ** -4


def _refine_confident_rows(expz: Tensor, s_rest: Tensor) -> None:
    """Replace ``s_rest`` (S - 1) of confident rows by the exact sum of all but one max element.

    ``expz`` holds exp(x - max) (the max elements are exactly 1). CPU only: selecting rows reads values.
    """
    rows = (s_rest < _CONFIDENT).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    sub = expz.index_select(0, rows)
    sub.scatter_(1, sub.argmax(dim=1, keepdim=True), 0.0)
    s_rest.index_copy_(0, rows, sub.sum(dim=1))


@torch.no_grad()
def fused_ce(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
             label_smoothing: float, z_loss: float, softcap: float | None, grad: Tensor | None,
             *, grad_scale: Tensor | None = None, block_rows: int | None = None) -> Tensor:
    """Row losses of (M, C) logits; writes d loss_row / d logits into ``grad`` when it is given.

    See ``labelsmooth.kernels`` for the contract. ``block_rows`` overrides the block height (tests).
    """
    num_rows, num_classes = logits.shape
    cdt = compute_dtype(logits.dtype)
    device = logits.device
    loss = torch.empty(num_rows, dtype=cdt, device=device)
    if num_rows == 0:
        return loss
    eps = float(label_smoothing)
    smooth = eps / num_classes
    probs = target.is_floating_point()
    w = None if weight is None else weight.to(device=device, dtype=cdt)
    total_w = float(num_classes) if w is None else w.sum()
    rows = block_rows or default_block_rows(num_classes)
    gs = None if grad_scale is None else grad_scale.to(cdt)
    # A float32 block of our own is needed unless the gradient buffer can serve as the work space.
    own_work = grad is None or grad.dtype != cdt
    scratch = torch.empty((min(rows, num_rows), num_classes), dtype=cdt, device=device) if own_work else None

    for start in range(0, num_rows, rows):
        end = min(num_rows, start + rows)
        xb = logits[start:end]
        buf = scratch[: end - start] if own_work else grad[start:end]
        tanh_b = None
        if softcap is not None:
            tanh_b = torch.tanh(xb.to(cdt) / softcap)
            torch.mul(tanh_b, softcap, out=buf)
            src = buf
        elif xb.dtype != cdt:
            buf.copy_(xb)
            src = buf
        else:
            src = xb  # float32/64 logits are read in place; buf may even be xb itself (inplace)
        m = src.amax(dim=1, keepdim=True)
        torch.sub(src, m, out=buf)  # z = x - m <= 0, in place when src is buf
        m = m.squeeze(1)

        if probs:
            tb = target[start:end].to(cdt)
            tw = tb if w is None else tb * w
            t_sum = tw.sum(dim=1)
            t_dot_z = torch.linalg.vecdot(tw, buf)
        else:
            tgt = target[start:end]
            keep = tgt != ignore_index
            safe = torch.where(keep, tgt, torch.zeros_like(tgt)).long()
            z_y = buf.gather(1, safe.unsqueeze(1)).squeeze(1)
            w_y = torch.ones_like(z_y) if w is None else w[safe]
        if eps > 0:
            sum_wz = buf.sum(dim=1) if w is None else buf @ w

        if cdt == torch.float32:
            # exp2 is about twice as fast as exp on CPU; z is exact (x - m, Sterbenz), and scaling it by
            # log2(e) perturbs exp(z) by ~1e-7 * |z| relative, far below float32 accumulation noise.
            buf.mul_(_LOG2E).exp2_()
        else:
            buf.exp_()
        # S - 1 rather than S: the max element contributes exactly 1, and a confident row's loss is about
        # S - 1, which float32 S = 1 + (S - 1) keeps only to half an ulp of 1 (6e-8).
        s_rest = buf.sum(dim=1) - 1.0
        if device.type == "cpu":
            _refine_confident_rows(buf, s_rest)
        sum_exp = s_rest + 1.0
        log_s = torch.log1p(s_rest)

        if probs:
            row_loss = (1.0 - eps) * (t_sum * log_s - t_dot_z)
            coeff = (1.0 - eps) * t_sum
        else:
            row_loss = (1.0 - eps) * w_y * (log_s - z_y)
            coeff = (1.0 - eps) * w_y
        if eps > 0:
            row_loss = row_loss + smooth * (total_w * log_s - sum_wz)
            coeff = coeff + smooth * total_w
        if z_loss:
            lse = m + log_s
            row_loss = row_loss + z_loss * lse * lse
            coeff = coeff + 2.0 * z_loss * lse
        if not probs:
            keep_f = keep.to(cdt)
            row_loss = row_loss * keep_f
            coeff = coeff * keep_f
            # An ignored row may hold NaN/Inf logits; its loss is still exactly 0, as torch's is.
            row_loss = torch.where(keep, row_loss, torch.zeros_like(row_loss))
        loss[start:end] = row_loss

        if grad is None:
            continue
        # gradient = (p * coeff - w * q) * grad_scale, with w * q = (eps/C) w + (1-eps) w_y [c == y]
        # (index targets) or (1-eps) w t + (eps/C) w (probabilities). Scalar operands keep each pass
        # a plain vectorised loop (a broadcast tensor operand is several times slower on CPU).
        scale = coeff / sum_exp if gs is None else coeff * gs / sum_exp
        buf.mul_(scale.unsqueeze(1))
        if eps > 0:
            if w is None and gs is None:
                buf.sub_(smooth)
            else:
                buf.sub_(smooth * (w if w is not None else 1.0) * (gs if gs is not None else 1.0))
        if probs:
            buf.sub_(tw if gs is None else tw * gs, alpha=1.0 - eps)
        else:
            # The target column is rewritten from p_y - 1 = (expm1(z_y) - (S - 1)) / S, which has no
            # cancellation, in float32/64 before any rounding: a confident row (p_y = 0.9999 or closer
            # to 1) keeps its tiny target gradient, in bf16 too.
            hard = (1.0 - eps) * w_y
            grad_y = (hard * (torch.expm1(z_y) - s_rest) + (coeff - hard) * torch.exp(z_y)) / sum_exp
            grad_y = grad_y - smooth * w_y
            if gs is not None:
                grad_y = grad_y * gs
            buf.scatter_(1, safe.unsqueeze(1), grad_y.unsqueeze(1))
            # Ignored rows get exactly 0 (set, not multiplied: their logits may be NaN/Inf). On CPU only
            # those rows are touched; elsewhere a mask avoids a host-device synchronisation.
            if device.type == "cpu":
                buf.index_fill_(0, (~keep).nonzero().squeeze(1), 0.0)
            else:
                buf.masked_fill_(~keep.unsqueeze(1), 0.0)
        if tanh_b is not None:
            buf.mul_(1.0 - tanh_b * tanh_b)
        if own_work:
            grad[start:end].copy_(buf)
    return loss
