"""What the training-framework callbacks share: validation outputs in, the evaluation engine's numbers out.

:mod:`labelsmooth.integrations.lightning` and :mod:`labelsmooth.integrations.huggingface` both turn a
model's validation logits and labels into :func:`labelsmooth.evaluation.evaluate`'s metrics and figures
through the functions here, so the two frameworks log the same numbers as ``labelsmooth evaluate``.
This module imports neither framework.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelsmooth.evaluation import METRICS, EvaluationResult, evaluate

__all__ = ["METRICS", "flatten_outputs", "images", "scalars", "score_outputs"]


def _tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}")


def flatten_outputs(
    logits: Any, labels: Any, *, ignore_index: int = -100, shift: bool = False
) -> tuple[Tensor, Tensor]:
    """Rows of scores and their labels, with the positions labelled ``ignore_index`` dropped.

    Args:
        logits: ``(..., K)`` scores (logits or probabilities), or ``(...)`` binary scores of the labels' shape.
        labels: ``(...)`` integer class indices; positions equal to ``ignore_index`` are padding.
        ignore_index: the label value of padding.
        shift: score position t against the label at t + 1 along the second dimension (a causal language
            model's next-token prediction); the last position of each sequence is dropped.

    Returns:
        ``(scores, labels)``: ``(N, K)`` (or ``(N,)``) scores and ``(N,)`` labels, on the CPU.

    Raises:
        TypeError: inputs that are neither tensors nor numpy arrays.
        ValueError: shapes that do not match.

    Example:
        >>> import torch
        >>> s, y = flatten_outputs(torch.zeros(2, 3, 5), torch.tensor([[1, 2, -100], [4, -100, -100]]))
        >>> tuple(s.shape), y.tolist()
        ((3, 5), [1, 2, 4])
    """
    z, y = _tensor(logits, "logits"), _tensor(labels, "labels")
    if shift:
        if y.dim() < 2:
            raise ValueError(f"shift=True needs (batch, time) labels, got labels of shape {tuple(y.shape)}")
        z, y = z[:, :-1], y[:, 1:]
    if z.shape == y.shape:
        z, y = z.reshape(-1), y.reshape(-1)
    elif z.dim() == y.dim() + 1 and z.shape[:-1] == y.shape:
        z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    else:
        raise ValueError(
            f"logits of shape {tuple(z.shape)} do not match labels of shape {tuple(y.shape)}: expected logits "
            "(..., K) with labels (...), or binary scores of the labels' shape"
        )
    keep = y != ignore_index
    if not bool(keep.all()):
        z, y = z[keep], y[keep]
    return z, y


def score_outputs(
    logits: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    n_bootstrap: int = 0,
    kind: str = "auto",
    ignore_index: int = -100,
    shift: bool = False,
    seed: int = 0,
    name: str = "validation",
) -> EvaluationResult:
    """:func:`labelsmooth.evaluation.evaluate` on the rows :func:`flatten_outputs` keeps.

    Args:
        logits: as in :func:`flatten_outputs`.
        labels: as in :func:`flatten_outputs`.
        n_bins: bins of the binned calibration errors.
        n_bootstrap: bootstrap resamples for the intervals (0: none).
        kind: ``"logits"``, ``"probs"`` or ``"auto"``, as in :func:`labelsmooth.evaluation.evaluate`.
        ignore_index: as in :func:`flatten_outputs`.
        shift: as in :func:`flatten_outputs`.
        seed: seed of the bootstrap resamples.
        name: the model's name in the result.

    Returns:
        An :class:`~labelsmooth.evaluation.EvaluationResult`.

    Gradient recording is switched on for the call (the engine uses autograd), so it may be called inside
    ``torch.no_grad()`` or ``torch.inference_mode()``, as a framework's validation loop does.

    Raises:
        ValueError: no labelled row, or what :func:`~labelsmooth.evaluation.evaluate` refuses.

    Example:
        >>> import torch
        >>> res = score_outputs(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, -100]))
        >>> res.n, res.metrics["accuracy"].value
        (2, 1.0)
    """
    z, y = flatten_outputs(logits, labels, ignore_index=ignore_index, shift=shift)
    if y.numel() == 0:
        raise ValueError(f"no labelled row to score: every label is ignore_index ({ignore_index})")
    # Frameworks call this inside their validation loop, under torch.no_grad() or inference_mode, and the
    # engine takes AURC's per-example influence from autograd: switch both back on for the scoring.
    with torch.inference_mode(False), torch.enable_grad():
        z, y = z.clone(), y.clone()  # ordinary tensors, not inference-mode ones
        return evaluate(z, y, kind=kind, n_bootstrap=n_bootstrap, n_bins=n_bins, seed=seed, name=name)


def scalars(result: EvaluationResult, prefix: str = "") -> dict[str, float]:
    """The result's metrics as ``{prefix + name: value}``, with ``_low`` and ``_high`` for each interval.

    Example:
        >>> import torch
        >>> res = score_outputs(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> scalars(res, "val/")["val/accuracy"]
        0.5
    """
    out: dict[str, float] = {}
    for m in METRICS:
        est = result.metrics[m]
        out[prefix + m] = float(est.value)
        if est.low is not None and est.high is not None:
            out[f"{prefix}{m}_low"] = float(est.low)
            out[f"{prefix}{m}_high"] = float(est.high)
    return out


def images(result: EvaluationResult) -> dict[str, np.ndarray]:
    """The result's reliability diagram and risk-coverage curve as ``(H, W, 3)`` uint8 RGB arrays.

    These are :meth:`~labelsmooth.evaluation.EvaluationResult.figures`' PNGs, decoded; loggers take such
    arrays (TensorBoard's ``add_image(..., dataformats="HWC")``, ``wandb.Image``). Needs matplotlib.

    Example:
        >>> import torch
        >>> res = score_outputs(torch.randn(200, 3), torch.randint(0, 3, (200,)))
        >>> img = images(res)
        >>> sorted(img), img["reliability"].dtype.name, img["reliability"].shape[2]
        (['reliability', 'risk_coverage'], 'uint8', 3)
    """
    from matplotlib import image as mpimg

    out = {}
    for key, png in result.figures().items():
        rgba = mpimg.imread(io.BytesIO(png), format="png")
        out[key] = np.round(rgba[..., :3] * 255).astype(np.uint8)
    return out
