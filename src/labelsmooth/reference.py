"""Plain-torch implementations written from the formulas: the ground truth every kernel is tested
against and every benchmark compares with.

Nothing here calls ``F.cross_entropy``/``F.nll_loss``/``F.log_softmax``. Every quantity is kept relative
to the row maximum m, as torch's own kernels do::

    -log p_c = (m - x_c) + log sum_j exp(x_j - m),  log sum_j exp(x_j - m) = log1p(sum_{j != argmax} exp(x_j - m))

The shortcut ``lse - x_c`` with ``lse = m + log sum`` cancels catastrophically in float32 once logits
are large (at |x| ~ 120 one float32 step is 7.6e-6, more than a confident row's whole loss).

Row loss, for logits x (after the optional softcap s*tanh(x/s)), class weights w, eps = label
smoothing, C classes, S = sum_j exp(x_j - m), lse = m + log S:

* class-index target y (rows with y == ignore_index give 0)::

      (1 - eps) * w_y * (m - x_y + log S) + (eps / C) * sum_c w_c * (m - x_c + log S) + z * lse**2

* probability target t, smoothed to t' = (1 - eps) * t + eps / C::

      sum_c w_c * t'_c * (m - x_c + log S) + z * lse**2

With a smoothing prior u (a probability vector over the C classes) eps / C becomes eps * u_c in both:
the smoothing term is eps * sum_c u_c w_c (m - x_c + log S) and t' = (1 - eps) * t + eps * u. Negative
eps (negative label smoothing) uses the same formulas.

References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016 (label smoothing).
    Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
    Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024 (logit soft-capping).
    Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output Distributions", 2017
    (smoothing towards the label unigram).
    Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022 (negative eps).
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses accumulate in: float64 stays float64, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ce_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row label-smoothed cross-entropy of 2-D logits, differentiable by autograd.

    Args:
        logits: (M, C) floating tensor.
        target: (M,) integer class indices, or (M, C) floating class probabilities.
        weight: optional (C,) class weights.
        ignore_index: class index whose rows contribute 0 (index targets only).
        label_smoothing: eps (<= 1; negative for negative label smoothing).
        z_loss: coefficient of the z-loss term ``lse**2`` added to every non-ignored row.
        softcap: if set, logits become ``softcap * tanh(logits / softcap)`` first.
        prior: optional (C,) smoothing distribution u; None is uniform (1/C).

    Returns:
        (M,) tensor of row losses in float32 (float64 for float64 logits); ignored rows are 0.
    """
    cdt = compute_dtype(logits.dtype)
    x = logits.to(cdt)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    num_classes = x.shape[-1]
    # The row max is a constant shift: detaching it keeps the gradient exactly softmax - q.
    m = x.detach().amax(dim=-1, keepdim=True)
    z = x - m
    # log S = log1p(S - 1) with S - 1 summed without one max element (whose exp is exactly 1): float32
    # S itself keeps a confident row's S - 1 (about its loss) only to half an ulp of 1.
    # The max element's exp is 1 in value; it stays in the graph as (e_max - e_max.detach()), zero in
    # value, so that autograd still sees S's dependence on it.
    e = torch.exp(z)
    top = x.detach().argmax(dim=-1, keepdim=True)
    e_top = e.gather(-1, top)
    rest = e.scatter(-1, top, 0.0).sum(dim=-1, keepdim=True) + (e_top - e_top.detach())
    log_s = torch.log1p(rest)
    nlp = log_s - z  # -log p, computed relative to the max
    w = None if weight is None else weight.to(device=x.device, dtype=cdt)
    eps = float(label_smoothing)
    # The smoothing distribution times eps: eps / C per class, or eps * u_c.
    eu = eps / num_classes if prior is None else eps * prior.to(device=x.device, dtype=cdt)
    if target.is_floating_point():
        t = target.to(cdt)
        if eps != 0:
            t = t * (1.0 - eps) + eu
        tw = t if w is None else t * w
        loss = (nlp * tw).sum(dim=-1)
        keep = None
    else:
        tgt = target.long()
        keep = tgt != ignore_index
        safe = torch.where(keep, tgt, torch.zeros_like(tgt))
        nll = nlp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        if w is not None:
            nll = nll * w[safe]
        loss = (1.0 - eps) * nll
        if eps != 0:
            loss = loss + (nlp * eu if w is None else nlp * (w * eu)).sum(dim=-1)
    if z_loss:
        lse = (m + log_s).squeeze(-1)
        loss = loss + z_loss * lse * lse
    if keep is not None:
        loss = torch.where(keep, loss, torch.zeros_like(loss))
    return loss


def bce_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Label-smoothed binary cross-entropy with logits, from the formula.

    ``t = y * (1 - eps) + eps / 2``;
    ``loss = -w * (pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))``, with
    ``log sigmoid(x) = -softplus(-x)`` and ``log(1 - sigmoid(x)) = -softplus(x)`` for stability.
    """
    cdt = compute_dtype(input.dtype)
    x = input.to(cdt)
    t = target.to(cdt)
    eps = float(label_smoothing)
    t = t * (1.0 - eps) + eps / 2.0
    pos = t * torch.nn.functional.softplus(-x)
    if pos_weight is not None:
        pos = pos * pos_weight.to(cdt)
    loss = pos + (1.0 - t) * torch.nn.functional.softplus(x)
    if weight is not None:
        loss = loss * weight.to(cdt)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(input.dtype)
