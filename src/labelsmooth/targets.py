"""Smoothed target distributions.

The uniform smoothed target of label smoothing (Szegedy et al., 2016) is

    q(c) = (1 - eps) * [c == y] + eps / K

for K classes, so the true class keeps 1 - eps + eps/K and every other class gets eps/K. The binary
form used with a sigmoid is y * (1 - eps) + eps / 2. Smoothing towards a prior u (e.g. the label
unigram, :func:`class_prior`) replaces eps/K by eps * u(c); negative eps (``allow_negative=True``)
moves the target away from u instead of towards it.

References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output Distributions", 2017.
    Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022.
"""

from __future__ import annotations

import torch

from labelsmooth import _validate as V


def smooth_labels(
    target: torch.Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    *,
    dtype: torch.dtype | None = None,
    prior: torch.Tensor | None = None,
    allow_negative: bool = False,
) -> torch.Tensor:
    """Return the label-smoothed target distribution of class indices.

    Args:
        target: integer tensor of class indices, any shape ``S``.
        num_classes: K, the number of classes (>= 1).
        label_smoothing: eps in [0, 1]; any eps <= 1 with ``allow_negative=True``.
        dtype: floating dtype of the result (default: torch's default float dtype).
        prior: optional (K,) probability vector u to smooth towards (default uniform, 1/K).
        allow_negative: accept eps < 0 (the result then has negative entries).

    Returns:
        Tensor of shape ``S + (K,)`` whose last dimension sums to 1:
        ``(1 - eps) * one_hot(target) + eps / K`` (``+ eps * u`` with a prior).

    Raises:
        TypeError: ``target`` is not an integer tensor.
        ValueError: ``num_classes < 1`` or ``label_smoothing`` outside [0, 1].
        IndexError: a target is negative or ``>= num_classes``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> ls.smooth_labels(torch.tensor([0, 2]), 3, 0.3)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.1000, 0.8000]])
        >>> ls.smooth_labels(torch.tensor([0]), 2, 0.5, prior=torch.tensor([0.2, 0.8]))
        tensor([[0.6000, 0.4000]])

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """
    V.check_tensor(target, "target")
    V.check_integer(target, "target")
    num_classes = V.check_num_classes(num_classes)
    eps = V.check_label_smoothing(label_smoothing, allow_negative=V.check_bool(allow_negative, "allow_negative"))
    V.check_class_indices(target, num_classes, ignore_index=None)
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise V.ArgumentTypeError(f"dtype must be a floating-point dtype (probabilities), got {dtype}")
    u = V.check_prior(prior, num_classes, target.device, name="prior")
    if u is None:
        out = torch.full((*target.shape, num_classes), eps / num_classes, dtype=dtype, device=target.device)
    else:
        out = (eps * u.to(dtype)).expand(*target.shape, num_classes).clone()
    index = target.long().unsqueeze(-1)
    out.scatter_add_(-1, index, torch.full(index.shape, 1.0 - eps, dtype=dtype, device=target.device))
    return out


def class_prior(
    labels: torch.Tensor, num_classes: int, *, ignore_index: int | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The label unigram: the fraction of ``labels`` in each class, a prior for smoothing.

    Args:
        labels: integer tensor of class indices, any shape (e.g. every training label, or every token).
        num_classes: K.
        ignore_index: a label value to leave out of the count (e.g. -100 padding).
        dtype: floating dtype of the result (default: torch's default float dtype).

    Returns:
        (K,) tensor that sums to 1 (classes never seen get 0).

    Raises:
        ValueError: no label is left to count.
        IndexError: a label outside [0, K) that is not ``ignore_index``.

    Example:
        >>> import torch, labelsmooth as ls
        >>> u = ls.class_prior(torch.tensor([0, 0, 1, 2]), 4)
        >>> u
        tensor([0.5000, 0.2500, 0.2500, 0.0000])
        >>> x, y = torch.randn(4, 4), torch.tensor([0, 0, 1, 2])
        >>> loss = ls.cross_entropy(x, y, label_smoothing=0.1, smoothing_prior=u)

    References:
        Pereyra et al., "Regularizing Neural Networks by Penalizing Confident Output Distributions", 2017.
    """
    V.check_tensor(labels, "labels")
    V.check_integer(labels, "labels")
    num_classes = V.check_num_classes(num_classes)
    if ignore_index is not None:
        ignore_index = V.check_index(ignore_index, "ignore_index")
    V.check_class_indices(labels, num_classes, ignore_index=ignore_index, name="labels")
    flat = labels.reshape(-1).long()
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.numel() == 0:
        raise V.ArgumentError("labels holds no label to count (empty, or every label is ignore_index)")
    dtype = dtype or torch.get_default_dtype()
    counts = torch.bincount(flat, minlength=num_classes).to(torch.float64)
    return (counts / counts.sum()).to(dtype)


def smooth_binary_labels(
    target: torch.Tensor, label_smoothing: float = 0.0, *, allow_negative: bool = False
) -> torch.Tensor:
    """Return binary targets smoothed towards 1/2: ``target * (1 - eps) + eps / 2``.

    Args:
        target: tensor of targets in [0, 1] (hard 0/1 labels or probabilities), any shape.
            Integer and bool tensors are converted to torch's default float dtype.
        label_smoothing: eps in [0, 1]; any eps <= 1 with ``allow_negative=True`` (the targets then
            move away from 1/2, outside [0, 1]).
        allow_negative: accept eps < 0.

    Returns:
        Floating tensor of the same shape.

    Example:
        >>> import torch, labelsmooth as ls
        >>> ls.smooth_binary_labels(torch.tensor([0.0, 1.0]), 0.2)
        tensor([0.1000, 0.9000])
    """
    V.check_tensor(target, "target")
    eps = V.check_label_smoothing(label_smoothing, allow_negative=V.check_bool(allow_negative, "allow_negative"))
    if not target.is_floating_point():
        target = target.to(torch.get_default_dtype())
    if eps == 0.0:
        return target
    return target * (1.0 - eps) + eps / 2.0
