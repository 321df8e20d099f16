"""Synthetic label noise for robustness experiments.

Every function is seeded and reproducible: randomness comes from a CPU ``torch.Generator`` seeded
with the keyword-only ``seed``, so the same seed gives the same noisy labels on every device and
platform. Inputs are never modified; a NEW array of the same kind (torch tensor on the same
device, or numpy array), dtype and shape is returned.

Noise models (``K`` classes, ``N`` labels):

* :func:`symmetric`: exactly ``round(rate * N)`` labels, chosen uniformly without replacement,
  each moved to a class drawn uniformly from the K - 1 *other* classes.
* :func:`pairflip`: exactly ``round(rate * N)`` labels moved ``c -> (c + 1) mod K``.
* :func:`from_mapping`: class-dependent flips ``c -> mapping[c]``, exactly ``round(rate * n_c)``
  in each source class c (e.g. :data:`CIFAR10_ASYMMETRIC`).
* :func:`from_transition_matrix`: each label drawn independently from row ``T[y]``.

:func:`transition_matrix` measures the realised noise. ``round`` is Python's built-in (ties go to
the even integer).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from labelsmooth import _validate as V

__all__ = [
    "CIFAR10_ASYMMETRIC",
    "from_mapping",
    "from_transition_matrix",
    "pairflip",
    "symmetric",
    "transition_matrix",
]

LabelArray = TypeVar("LabelArray", Tensor, np.ndarray)

#: Class-dependent ("asymmetric") CIFAR-10 noise of Patrini et al. (2017): truck -> automobile,
#: bird -> airplane, deer -> horse, cat <-> dog. Class indices follow the standard CIFAR-10 order
#: airplane 0, automobile 1, bird 2, cat 3, deer 4, dog 5, frog 6, horse 7, ship 8, truck 9.
#: Read-only; use with :func:`from_mapping`.
CIFAR10_ASYMMETRIC: Mapping[int, int] = MappingProxyType({9: 1, 2: 0, 4: 7, 3: 5, 5: 3})


# ----------------------------------------------------------------------------- helpers


def _as_long(labels: object, name: str = "labels") -> Tensor:
    """Return a fresh CPU int64 copy of ``labels`` (1-D, integer)."""
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
        out = labels.detach().to(device="cpu", dtype=torch.long, copy=True)
    elif isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"{name} must be an integer numpy array, got dtype {labels.dtype}")
        out = torch.from_numpy(labels.astype(np.int64, copy=True))
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray of integers, got {type(labels).__name__}")
    if out.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(out.shape)}")
    return out


def _restore(result: Tensor, like: LabelArray) -> LabelArray:
    """Give ``result`` (CPU int64) the kind, dtype and device of the original ``like``."""
    if isinstance(like, np.ndarray):
        return result.numpy().astype(like.dtype, copy=False)
    return result.to(device=like.device, dtype=like.dtype)


def _check_rate(rate: object) -> float:
    return V.check_unit_interval(rate, "rate")


def _check_num_classes(num_classes: object) -> int:
    return V.check_num_classes(num_classes, 2, " (a label needs another class to flip to)")


def _check_range(y: Tensor, num_classes: int, name: str = "labels") -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} out of range: expected values in [0, {num_classes - 1}], "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


def _generator(seed: object) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _pick(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` distinct positions out of ``n``, uniformly without replacement."""
    return torch.randperm(n, generator=gen)[:k]


# ----------------------------------------------------------------------------- noise models


def symmetric(labels: LabelArray, rate: float, num_classes: int, *, seed: int) -> LabelArray:
    """Symmetric noise: flip exactly ``round(rate * N)`` labels, each to a uniformly chosen other class.

    The flipped positions are a uniform random subset of size ``round(rate * N)``; each chosen
    label ``c`` becomes ``(c + s) mod K`` with ``s`` uniform on ``{1, ..., K - 1}``, i.e. uniform over
    the K - 1 classes other than ``c``. Every flip changes the label, so the realised noise rate is
    exactly ``round(rate * N) / N``. (Some papers instead redraw the chosen labels uniformly over
    all K classes, which keeps about 1/K of them unchanged; here ``rate`` is the true flip rate.)

    Args:
        labels: ``(N,)`` integer labels in ``[0, num_classes)``, torch tensor or numpy array.
        rate: fraction of labels to flip, in [0, 1].
        num_classes: number of classes K, >= 2.
        seed: seed of the random generator (keyword-only, required).

    Returns:
        A new array of the same kind, dtype, device and shape as ``labels``.

    Example:
        >>> import numpy as np
        >>> clean = np.arange(10) % 3
        >>> noisy = symmetric(clean, 0.3, 3, seed=0)
        >>> int((noisy != clean).sum())
        3

    References:
        Van Rooyen, Menon & Williamson, "Learning with Symmetric Label Noise: The Importance of
        Being Unhinged", NeurIPS 2015; Patrini et al., "Making Deep Neural Networks Robust to Label
        Noise: a Loss Correction Approach", CVPR 2017.
    """
    rate = _check_rate(rate)
    num_classes = _check_num_classes(num_classes)
    y = _as_long(labels)
    _check_range(y, num_classes)
    gen = _generator(seed)
    idx = _pick(y.numel(), round(rate * y.numel()), gen)
    shift = torch.randint(1, num_classes, (idx.numel(),), generator=gen)
    y[idx] = (y[idx] + shift) % num_classes
    return _restore(y, labels)


def pairflip(labels: LabelArray, rate: float, num_classes: int, *, seed: int) -> LabelArray:
    """Pair-flip noise: flip exactly ``round(rate * N)`` labels ``c -> (c + 1) mod K``.

    The flipped positions are a uniform random subset of size ``round(rate * N)``, drawn without
    regard to class, so each class loses about ``rate`` of its labels to the next class.

    Args:
        labels: ``(N,)`` integer labels in ``[0, num_classes)``, torch tensor or numpy array.
        rate: fraction of labels to flip, in [0, 1].
        num_classes: number of classes K, >= 2.
        seed: seed of the random generator (keyword-only, required).

    Returns:
        A new array of the same kind, dtype, device and shape as ``labels``.

    Example:
        >>> import torch
        >>> clean = torch.tensor([0, 1, 2, 3])
        >>> noisy = pairflip(clean, 1.0, 4, seed=0)
        >>> noisy.tolist()
        [1, 2, 3, 0]

    References:
        Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, "Co-teaching: Robust Training of Deep Neural
        Networks with Extremely Noisy Labels", NeurIPS 2018 (pair flipping); Patrini et al., CVPR
        2017 (class-dependent flips to a similar class).
    """
    rate = _check_rate(rate)
    num_classes = _check_num_classes(num_classes)
    y = _as_long(labels)
    _check_range(y, num_classes)
    gen = _generator(seed)
    idx = _pick(y.numel(), round(rate * y.numel()), gen)
    y[idx] = (y[idx] + 1) % num_classes
    return _restore(y, labels)


def from_mapping(labels: LabelArray, rate: float, mapping: Mapping[int, int], *, seed: int) -> LabelArray:
    """Class-dependent noise: flip ``round(rate * n_c)`` labels of each mapped class ``c`` to ``mapping[c]``.

    Precisely: for every key ``c`` of ``mapping`` (in increasing order, for reproducibility), let
    ``n_c`` be the number of labels equal to ``c`` in the *clean* input; exactly ``round(rate * n_c)``
    of them, chosen uniformly without replacement, become ``mapping[c]``. Classes that are not keys
    are never changed. Because selection looks only at clean labels, a swap such as cat <-> dog
    never flips a label twice. The realised ``c -> mapping[c]`` rate is therefore ``rate`` in every
    mapped class, up to rounding.

    Args:
        labels: ``(N,)`` non-negative integer labels, torch tensor or numpy array.
        rate: fraction of each mapped class to flip, in [0, 1].
        mapping: ``{source_class: target_class}`` with non-negative integer keys and values and
            ``target != source``, e.g. :data:`CIFAR10_ASYMMETRIC`.
        seed: seed of the random generator (keyword-only, required).

    Returns:
        A new array of the same kind, dtype, device and shape as ``labels``.

    Example:
        >>> import numpy as np
        >>> clean = np.repeat(np.arange(10), 10)          # ten of each CIFAR-10 class
        >>> noisy = from_mapping(clean, 0.4, CIFAR10_ASYMMETRIC, seed=0)
        >>> int(((clean == 9) & (noisy == 1)).sum()), int((noisy != clean).sum())
        (4, 20)

    References:
        Patrini, Rozza, Krishna Menon, Nock & Qu, "Making Deep Neural Networks Robust to Label
        Noise: a Loss Correction Approach", CVPR 2017.
    """
    rate = _check_rate(rate)
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict-like {{source: target}}, got {type(mapping).__name__}")
    for src, dst in mapping.items():
        for v in (src, dst):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"mapping must map non-negative integer classes, got entry {src!r}: {dst!r}")
        if src == dst:
            raise ValueError(f"mapping must send each class to a different class, got entry {src!r}: {dst!r}")
    y = _as_long(labels)
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels out of range: expected non-negative class indices, got minimum {int(y.min())}")
    gen = _generator(seed)
    out = y.clone()
    for src in sorted(int(k) for k in mapping):
        members = torch.nonzero(y == src).squeeze(1)
        chosen = members[_pick(members.numel(), round(rate * members.numel()), gen)]
        out[chosen] = int(mapping[src])
    return _restore(out, labels)


def _check_transition(matrix: object, name: str = "T") -> Tensor:
    if isinstance(matrix, Tensor):
        t = matrix.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(matrix, np.ndarray):
        t = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(matrix).__name__}")
    if t.dim() != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 1:
        raise ValueError(f"{name} must be a square (K, K) matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    if (t < 0).any():
        raise ValueError(f"{name} must be non-negative, got minimum entry {t.min().item():.4g}")
    row_err = (t.sum(dim=1) - 1).abs()
    if (row_err > 1e-6).any():
        bad = int(row_err.argmax())
        raise ValueError(
            f"{name} must be row-stochastic (each row sums to 1 within 1e-6), "
            f"got row {bad} summing to {t[bad].sum().item():.8g}"
        )
    return t


def from_transition_matrix(labels: LabelArray, T: Tensor | np.ndarray, *, seed: int) -> LabelArray:
    """Noise from a transition matrix: each noisy label is drawn independently from ``T[clean]``.

    ``T[i, j] = P(noisy = j | clean = i)``. Unlike the exact-count functions above, the number of
    flips is random (binomial), with expectation ``sum_i n_i (1 - T[i, i])``.

    Args:
        labels: ``(N,)`` integer labels in ``[0, K)``, torch tensor or numpy array.
        T: ``(K, K)`` row-stochastic matrix (non-negative, rows sum to 1 within 1e-6), torch tensor
            or numpy array, with ``K >= max(labels) + 1``.
        seed: seed of the random generator (keyword-only, required).

    Returns:
        A new array of the same kind, dtype, device and shape as ``labels``.

    Raises:
        ValueError: ``T`` not square, negative, not row-stochastic, or smaller than the label range.

    Example:
        >>> import numpy as np
        >>> T = np.array([[0.0, 1.0], [0.0, 1.0]])     # everything becomes class 1
        >>> from_transition_matrix(np.array([0, 1, 0]), T, seed=0).tolist()
        [1, 1, 1]

    References:
        Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss Correction
        Approach", CVPR 2017.
    """
    t = _check_transition(T)
    y = _as_long(labels)
    if y.numel() and int(y.max()) >= t.shape[0]:
        raise ValueError(
            f"T of shape {tuple(t.shape)} is too small for labels with maximum {int(y.max())}; "
            f"need K >= {int(y.max()) + 1}"
        )
    _check_range(y, t.shape[0])
    gen = _generator(seed)
    out = y.clone()
    # One draw per class row instead of a (N, K) gather, which would not fit for large K.
    for c in range(t.shape[0]):
        members = torch.nonzero(y == c).squeeze(1)
        if members.numel():
            out[members] = torch.multinomial(t[c], members.numel(), replacement=True, generator=gen)
    return _restore(out, labels)


def transition_matrix(
    clean: Tensor | np.ndarray, noisy: Tensor | np.ndarray, num_classes: int | None = None
) -> Tensor | np.ndarray:
    """Realised transition matrix ``M[i, j] = #{clean = i, noisy = j} / #{clean = i}``.

    Rows of classes that do not occur in ``clean`` are all zeros (not the identity), so "no data"
    stays distinguishable from "no noise".

    Args:
        clean: ``(N,)`` integer clean labels.
        noisy: ``(N,)`` integer noisy labels.
        num_classes: number of classes K; default ``max(clean.max(), noisy.max()) + 1``.

    Returns:
        ``(K, K)`` float64 matrix, a numpy array if ``clean`` is one, otherwise a CPU torch tensor.

    Example:
        >>> import numpy as np
        >>> transition_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3).tolist()
        [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    c = _as_long(clean, "clean")
    n = _as_long(noisy, "noisy")
    if c.numel() != n.numel():
        raise ValueError(f"clean and noisy must have the same length, got {c.numel()} and {n.numel()}")
    if num_classes is None:
        if c.numel() == 0:
            raise ValueError("num_classes is required when clean and noisy are empty")
        num_classes = int(max(int(c.max()), int(n.max()))) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    _check_range(c, num_classes, "clean")
    _check_range(n, num_classes, "noisy")
    counts = torch.bincount(c * num_classes + n, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).to(torch.float64)
    matrix = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    return matrix.numpy() if isinstance(clean, np.ndarray) else matrix
