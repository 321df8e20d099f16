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

The language-model options (:func:`cross_entropy`): a ``logit_scale`` s multiplies the logits first
(x -> s * x, then the softcap); ``token_weight`` r multiplies each row's loss (ignored rows stay 0) and
``"mean"`` divides by sum_n keep_n r_n w_{y_n} (probabilities: sum_n r_n); ``shift`` scores position t
of each sequence against the label at t + 1, written here with explicitly shifted copies of the labels
and weights (the last position ignored), the plain form the kernels' views are checked against.

References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016 (label smoothing).
    Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
    Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024 (logit soft-capping).
    Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output Distributions", 2017
    (smoothing towards the label unigram).
    Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022 (negative eps).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

AUX_NAMES = ("z_loss", "lse", "accuracy", "predicted", "entropy")


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
    logit_scale: float | torch.Tensor | None = None,
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
        logit_scale: optional s (a float or a 0-d tensor, differentiable): logits become s * logits
            before the softcap.

    Returns:
        (M,) tensor of row losses in float32 (float64 for float64 logits); ignored rows are 0.
    """
    cdt = compute_dtype(logits.dtype)
    x = final_logits(logits, logit_scale, softcap)
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


def final_logits(
    logits: torch.Tensor, logit_scale: float | torch.Tensor | None = None, softcap: float | None = None
) -> torch.Tensor:
    """The logits the softmax sees, in the compute dtype: ``s * x``, then ``softcap * tanh(. / softcap)``."""
    x = logits.to(compute_dtype(logits.dtype))
    if logit_scale is not None:
        x = x * (logit_scale.to(x.dtype) if isinstance(logit_scale, torch.Tensor) else float(logit_scale))
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    return x


def row_aux(
    logits: torch.Tensor, logit_scale: float | torch.Tensor | None = None, softcap: float | None = None
) -> dict[str, torch.Tensor]:
    """Per-row statistics of the final logits x (after scale and softcap), from their definitions.

    Returns (M,) tensors: ``lse`` = log sum_c exp(x_c) = m + log S, ``entropy`` =
    -sum_c p_c log p_c = log S - sum_c e_c z_c / S (z = x - m, e = exp(z), S = sum e: relative to the
    row max, nothing overflows), both in the compute dtype, and ``predicted`` = the first argmax of x
    (int64). Detached.
    """
    with torch.no_grad():
        x = final_logits(logits, logit_scale, softcap)
        m = x.amax(dim=-1, keepdim=True)
        z = x - m
        e = torch.exp(z)
        s = e.sum(dim=-1)
        log_s = torch.log(s)
        # e * z is 0 where e underflows to 0 (z -> -inf), the limit of p log p.
        ez = torch.where(e > 0, e * z, torch.zeros_like(e))
        return {
            "lse": m.squeeze(-1) + log_s,
            "entropy": log_s - ez.sum(dim=-1) / s,
            "predicted": x.argmax(dim=-1),
        }


def shifted(target: torch.Tensor, seq_len: int, fill: float | int) -> torch.Tensor:
    """The (N,) labels (or row weights) of B sequences of ``seq_len`` rows moved one position left
    within each sequence, the last position of each set to ``fill``: an explicit copy, as a training
    script would write ``labels[:, 1:]``. Differentiable."""
    seqs = target.reshape(-1, seq_len)
    tail = torch.full((seqs.shape[0], 1), fill, dtype=target.dtype, device=target.device)
    return torch.cat([seqs[:, 1:], tail], dim=1).reshape(-1)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    prior: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    token_weight: torch.Tensor | None = None,
    seq_len: int | None = None,
    logit_scale: float | torch.Tensor | None = None,
    aux: Iterable[str] | bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reduced loss of 2-D rows with every option, from the formulas (the ground truth).

    Args:
        logits: (N, C) floating tensor.
        target: (N,) class indices or (N, C) probabilities.
        weight, ignore_index, label_smoothing, z_loss, softcap, prior: as in :func:`ce_rows`.
        reduction: ``"none"`` ((N,) rows), ``"sum"`` or ``"mean"``.
        token_weight: optional (N,) row weights r (differentiable); the row loss becomes r_n * loss_n.
        seq_len: T for ``shift``: the rows are B sequences of T consecutive rows, and row (b, t) is
            scored against the label of row (b, t + 1) (the last row of each sequence is ignored);
            token_weight moves with the labels.
        logit_scale: optional s (float or differentiable 0-d tensor): logits become s * x first.
        aux: names from ``AUX_NAMES`` (True: all); if given (even empty), returns ``(loss, aux_dict)``.

    Returns:
        The loss (a scalar, or (N,) rows for "none"), in the compute dtype; with ``aux`` also the dict:
        ``lse``, ``entropy`` (N,) (0 on ignored rows), ``predicted`` (N,) int64 (``ignore_index`` on
        ignored rows), and ``z_loss`` (the z-loss term, z * lse_n^2 * r_n over kept rows) and
        ``accuracy`` ([predicted == label] per row for "none", else sum_n keep_n r_n w_{y_n} [correct],
        over D for "mean"), reduced like the loss.
    """
    cdt = compute_dtype(logits.dtype)
    probs = target.is_floating_point()
    r = None if token_weight is None else token_weight.to(cdt)
    if seq_len is not None:
        target = shifted(target, seq_len, ignore_index)
        r = shifted(torch.ones(target.shape[0], dtype=cdt, device=logits.device) if r is None else r, seq_len, 0.0)
    rows = ce_rows(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, prior, logit_scale)
    zero = torch.zeros((), dtype=cdt, device=logits.device)
    keep = torch.ones_like(rows, dtype=torch.bool) if probs else target != ignore_index
    if probs:
        per_row_d = torch.ones_like(rows) if r is None else r
        wy = None
    else:
        safe = torch.where(keep, target, torch.zeros_like(target)).long()
        wy = None if weight is None else weight.to(cdt)[safe]
        per_row_d = torch.where(keep, (1.0 if wy is None else wy) * (1.0 if r is None else r), zero)
    if r is not None:
        # r is masked before the product: an inf/NaN weight on an ignored row must not reach the gradient.
        r = torch.where(keep, r, zero)
        rows = rows * r
    denom = per_row_d.sum()

    def reduce(values: torch.Tensor) -> torch.Tensor:
        if reduction == "none":
            return values
        return values.sum() / denom if reduction == "mean" else values.sum()

    loss = reduce(rows)
    if aux is None or aux is False:
        return loss
    wanted = set(AUX_NAMES if aux is True else aux)
    names = [n for n in AUX_NAMES if n in wanted]
    stats = row_aux(logits, logit_scale, softcap)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        denom = denom.detach()
        rd = None if r is None else r.detach()
        for name in names:
            if name in ("lse", "entropy"):
                out[name] = torch.where(keep, stats[name], zero)
            elif name == "predicted":
                out[name] = torch.where(keep, stats[name], torch.full_like(stats[name], ignore_index))
            elif name == "z_loss":
                values = z_loss * stats["lse"] ** 2 * (1.0 if rd is None else rd)
                out[name] = reduce(torch.where(keep, values, zero))
            elif name == "accuracy":
                truth = target.argmax(dim=-1) if probs else target.long()
                correct = (stats["predicted"] == truth).to(cdt)
                if reduction == "none":
                    out[name] = torch.where(keep, correct, zero)
                else:
                    factor = torch.where(keep, (1.0 if wy is None else wy.detach()) * (1.0 if rd is None else rd), zero)
                    out[name] = reduce(correct * factor)
    return loss, out


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
