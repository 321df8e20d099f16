"""Allocation of the one large buffer a fused loss needs (its gradient).

A fresh N x C buffer on CPU is backed page by page as it is first written: for 4096 x 32000 float32
logits that is 131,072 page faults, which take longer than all of the loss's arithmetic (~0.3 s vs
~0.07 s to write the same memory once it is mapped, measured on a 2-core EPYC). Where the kernel
honours transparent huge pages on request (``madvise`` mode, the common default), advising the buffer
before it is touched makes those faults 512 times fewer. This is only advice: where it is not
available the buffer is an ordinary tensor. (PyTorch can do the same for every allocation with the
environment variable THP_MEM_ALLOC_ENABLE=1.)
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

_HUGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h
_MIN_BYTES = 8 * _HUGE
# None: not looked up yet; False: looked up and unavailable.
_libc: ctypes.CDLL | bool | None = None


def _madvise() -> Callable[..., Any] | None:
    global _libc
    if _libc is None:
        try:
            # The running interpreter's own symbols include libc's madvise. (ctypes.util.find_library
            # would work too, but it runs ldconfig or a compiler in a subprocess: ~1 s on the first loss.)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc.madvise if isinstance(_libc, ctypes.CDLL) else None


def empty_for_grad(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor shaped like ``like``, advised for huge pages on Linux CPU."""
    return empty_advised(like.shape, like.dtype, like.device)


def empty_advised(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(shape)``, advised for huge pages where it is a large buffer in Linux CPU memory."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or not sys.platform.startswith("linux") or nbytes < _MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is None:
        return out
    start = out.data_ptr()
    lo = (start + _HUGE - 1) // _HUGE * _HUGE  # only whole, aligned 2 MiB extents can be huge pages
    hi = (start + nbytes) // _HUGE * _HUGE
    if hi > lo:
        madvise(lo, hi - lo, _MADV_HUGEPAGE)  # advice only: a failure leaves ordinary pages
    return out
