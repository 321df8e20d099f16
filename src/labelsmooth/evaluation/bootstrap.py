"""Resampling weights and the per-resample metrics, computed from per-example values only.

The bootstrap is a Poisson bootstrap: resample r gives example i the weight ``w[r, i]``, an independent
draw with mean 1 and variance 1 (the count of example i in a resample of N draws with replacement is
Binomial(N, 1/N), which tends to Poisson(1); Hanley & MacGibbon 2006; Chamandy et al. 2012). Independent
weights can be drawn for any block of rows on its own, so they are generated in fixed blocks of rows from
``(seed, first resample, first row)``: the same seed gives every model the same weights on the same rows,
which is what makes a comparison paired, and the result does not depend on the chunk size. The weights
are Poisson(1) tabulated to 1/256 (one random byte each): values 0..5 with probabilities
94/256, 94/256, 48/256, 15/256, 4/256, 1/256: mean exactly 1, variance 0.992 (Poisson: 1).

Every metric of a resample is a ratio of weighted sums of per-example values (for the binned metrics,
sums within each bin, the bins fixed at the full sample's), so all of them come from one matrix product
of the weights with an (N, F) table of per-example features, built and multiplied block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["RESAMPLE_BLOCK", "ROW_BLOCK", "weighted_sums", "weights"]

#: Builds the float32 feature rows ``[row0, row1)``.
FeatureFn = Callable[[int, int], Tensor]

#: Rows and resamples per block of generated weights (fixed: the weights must not depend on chunking).
ROW_BLOCK = 1 << 16
RESAMPLE_BLOCK = 64

_TABLE = np.repeat(np.arange(6, dtype=np.uint8), [94, 94, 48, 15, 4, 1])
assert _TABLE.size == 256 and _TABLE.mean() == 1.0


@lru_cache(maxsize=8)  # a chunk of rows smaller than ROW_BLOCK reuses its block instead of drawing it again
def _block(seed: int, r_block: int, row_block: int, n_rows: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, r_block, row_block])
    raw = np.frombuffer(rng.bytes(RESAMPLE_BLOCK * n_rows), dtype=np.uint8)
    out = _TABLE[raw].reshape(RESAMPLE_BLOCK, n_rows)
    out.flags.writeable = False  # shared by the cache
    return out


def weights(seed: int, r0: int, r1: int, row0: int, row1: int, n: int) -> Tensor:
    """Float32 weights ``(r1 - r0, row1 - row0)`` of resamples ``[r0, r1)`` on rows ``[row0, row1)`` of ``n``.

    Example:
        >>> w = weights(0, 0, 3, 10, 20, 100)
        >>> tuple(w.shape), bool((weights(0, 1, 2, 15, 20, 100) == w[1:2, 5:]).all())
        ((3, 10), True)
    """
    out = np.empty((r1 - r0, row1 - row0), dtype=np.float32)
    for rb in range(r0 // RESAMPLE_BLOCK, (r1 - 1) // RESAMPLE_BLOCK + 1):
        ra, rz = max(r0, rb * RESAMPLE_BLOCK), min(r1, (rb + 1) * RESAMPLE_BLOCK)
        for cb in range(row0 // ROW_BLOCK, (row1 - 1) // ROW_BLOCK + 1):
            ca, cz = cb * ROW_BLOCK, min(n, (cb + 1) * ROW_BLOCK)
            blk = _block(seed, rb, cb, cz - ca)
            a, z = max(row0, ca), min(row1, cz)
            out[ra - r0 : rz - r0, a - row0 : z - row0] = blk[
                ra - rb * RESAMPLE_BLOCK : rz - rb * RESAMPLE_BLOCK, a - ca : z - ca
            ]
    return torch.from_numpy(out)


def weighted_sums(features: FeatureFn, n: int, n_features: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_features)`` float64 sums ``sum_i w[r, i] * X[i, f]``, ``X`` built per row block
    by ``features(row0, row1)`` (a float32 ``(row1 - row0, n_features)`` tensor)."""
    out = np.zeros((n_resamples, n_features), dtype=np.float64)
    for cb in range(0, (n - 1) // ROW_BLOCK + 1):
        a, z = cb * ROW_BLOCK, min(n, (cb + 1) * ROW_BLOCK)
        x = features(a, z)
        for r0 in range(0, n_resamples, RESAMPLE_BLOCK):
            r1 = min(n_resamples, r0 + RESAMPLE_BLOCK)
            out[r0:r1] += (weights(seed, r0, r1, a, z, n) @ x).double().numpy()
    return out
