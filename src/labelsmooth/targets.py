"""Smoothed target distributions.

The uniform smoothed target of label smoothing (Szegedy et al., 2016) is

    q(c) = (1 - eps) * [c == y] + eps / K

for K classes, so the true class keeps 1 - eps + eps/K and every other class gets eps/K. The binary
form used with a sigmoid is y * (1 - eps) + eps / 2.

References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
"""

from __future__ import annotations

import torch

from labelsmooth import _validate as V


def smooth_labels(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0,
                  *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return the label-smoothed target distribution of class indices.

    Args:
        target: integer tensor of class indices, any shape ``S``.
        num_classes: K, the number of classes (>= 1).
        label_smoothing: eps in [0, 1].
        dtype: floating dtype of the result (default: torch's default float dtype).

    Returns:
        Tensor of shape ``S + (K,)`` whose last dimension sums to 1:
        ``(1 - eps) * one_hot(target) + eps / K``.

    Raises:
        TypeError: ``target`` is not an integer tensor.
        ValueError: ``num_classes < 1`` or ``label_smoothing`` outside [0, 1].
        IndexError: a target is negative or ``>= num_classes``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> ls.smooth_labels(torch.tensor([0, 2]), 3, 0.3)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.1000, 0.8000]])

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """
    V.check_tensor(target, "target")
    V.check_integer(target, "target")
    num_classes = V.check_num_classes(num_classes)
    eps = V.check_label_smoothing(label_smoothing)
    V.check_class_indices(target, num_classes, ignore_index=None)
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype (probabilities), got {dtype}")
    out = torch.full((*target.shape, num_classes), eps / num_classes, dtype=dtype, device=target.device)
    out.scatter_(-1, target.long().unsqueeze(-1), 1.0 - eps + eps / num_classes)
    return out


def smooth_binary_labels(target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Return binary targets smoothed towards 1/2: ``target * (1 - eps) + eps / 2``.

    Args:
        target: tensor of targets in [0, 1] (hard 0/1 labels or probabilities), any shape.
            Integer and bool tensors are converted to torch's default float dtype.
        label_smoothing: eps in [0, 1].

    Returns:
        Floating tensor of the same shape.

    Example:
        >>> import torch, labelsmooth as ls
        >>> ls.smooth_binary_labels(torch.tensor([0.0, 1.0]), 0.2)
        tensor([0.1000, 0.9000])
    """
    V.check_tensor(target, "target")
    eps = V.check_label_smoothing(label_smoothing)
    if not target.is_floating_point():
        target = target.to(torch.get_default_dtype())
    if eps == 0.0:
        return target
    return target * (1.0 - eps) + eps / 2.0
