"""The streaming pass: per-example statistics of one model's scores, chunk by chunk.

Scores are read ``chunk_rows`` rows at a time and each chunk is converted to float32 (float64 input stays
float64) before any arithmetic, so a float16 ``np.memmap`` is never copied whole. What is kept is O(N):
per example the top-label confidence, whether the top label is right, its NLL and Brier terms; and for the
class-wise calibration error, per class and bin, sums that need no N x K storage (the probabilities below
the first bin edge are summed per class, the few above it are binned one by one).

Logits: every probability is computed relative to the row's maximum (``p_k = exp(z_k - m) / s`` with
``s = 1 + sum_{k != argmax} exp(z_k - m)``), so the NLL ``(m - z_y) + log s`` and a confident row's
``1 - confidence`` keep their digits in float32.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelsmooth import calibration as cal
from labelsmooth.evaluation import bootstrap as B

__all__ = ["Stats", "stream"]

#: The lower clamp of a true-label probability given as a probability (calibration's default).
NLL_EPS = 1e-12
#: Tolerance of a row sum of probabilities (calibration's: 1e-3; 2**-8 for half precision).
SUM_TOL = 1e-3
HALF_SUM_TOL = 2.0**-8
#: Default chunk: about 64 MiB of float32 work.
CHUNK_BYTES = 64 << 20
#: Rows per block of class-wise resampling weights (with 64 resamples: 8 MiB of float64 weights at once).
CW_ROWS = 1 << 14
#: Multiply-adds allowed for the class-wise ECE's resamples (each costs N x K of them).
CLASSWISE_BUDGET = 2e10


def _as_array(x: Any, name: str) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array (np.memmap included) or a torch tensor, got {type(x).__name__}")


def check_labels(labels: Any, n: int, num_classes: int, name: str = "labels", scores: str = "scores") -> np.ndarray:
    y = _as_array(labels, name)
    y = y.cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match {scores}, got shape {tuple(y.shape)}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(
            f"{name} out of range: expected class indices in [0, {num_classes - 1}], got {int(y[bad])} at row {bad}"
        )
    return y.astype(np.int64, copy=False)


def check_scores(scores: Any, name: str = "scores") -> Any:
    s = _as_array(scores, name)
    dtype_ok = s.is_floating_point() if isinstance(s, Tensor) else np.issubdtype(s.dtype, np.floating)
    if not dtype_ok:
        raise TypeError(f"{name} must be floating-point logits or probabilities, got dtype {s.dtype}")
    if s.ndim not in (1, 2):
        raise ValueError(f"{name} must be (N, K) or (N,) for a binary problem, got shape {tuple(s.shape)}")
    if s.ndim == 2 and s.shape[1] < 2:
        raise ValueError(f"{name} of shape (N, K) needs K >= 2 classes, got shape {tuple(s.shape)}")
    return s


def check_split(split: Any, n: int) -> np.ndarray:
    """``split`` -> a boolean test mask."""
    s = split.cpu().numpy() if isinstance(split, Tensor) else np.asarray(split)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"split must have shape ({n},) to match scores, got shape {tuple(s.shape)}")
    if s.dtype == bool:
        return s
    if np.issubdtype(s.dtype, np.integer):
        bad = ~np.isin(s, (0, 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"split values must be 'val'/'test', bool or 0/1 (1 = test), got {s[i]!r} at row {i}")
        out: np.ndarray = s == 1
        return out
    if s.dtype.kind in "UO":
        text = s.astype(str)
        bad = ~np.isin(text, ("val", "test"))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"split values must be 'val'/'test', bool or 0/1 (1 = test), got {s[i]!r} at row {i}")
        test: np.ndarray = text == "test"
        return test
    raise TypeError(f"split must hold 'val'/'test' strings, bools or 0/1 integers, got dtype {s.dtype}")


def default_chunk_rows(num_cols: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(1, num_cols)))


def _chunk(scores: Any, rows: Any) -> Tensor:
    """Rows of ``scores`` (a slice or an index array) as float32 (float64 stays float64) on the CPU."""
    part = scores[rows]
    if isinstance(part, Tensor):
        t = part.cpu()
        return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    arr = np.asarray(part)
    target = np.float64 if arr.dtype == np.float64 else np.float32
    # A read-only chunk (np.memmap opened "r") is copied: torch warns on tensors over read-only memory.
    return torch.from_numpy(arr.astype(target, copy=not arr.flags.writeable))


def _finite(z: Tensor, kind: str) -> bool:
    """Whether every value of the chunk is finite. For logits, from each row's max and min (NaN propagates
    through both): two reductions without an (n, K) boolean temporary."""
    if kind != "logits" or z.dim() == 1:
        return bool(torch.isfinite(z).all())
    lo, hi = torch.aminmax(z, dim=1)
    return bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())


def _is_half(scores: Any) -> bool:
    return str(scores.dtype).endswith(("float16", "bfloat16"))


@dataclass
class Stats:
    """Per-example statistics of the scored rows, and the class-wise sums."""

    conf: np.ndarray  # (N,) float64 top-label probability
    correct: np.ndarray  # (N,) bool
    nll: np.ndarray  # (N,) float64
    brier: np.ndarray  # (N,) float64 (binary: (p - y)^2, the binary convention)
    num_classes: int
    # class-wise: per (class, slot) sums over all rows; slot n_bins holds probabilities of exactly 1.0
    cw_p: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    cw_y: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    cw_reps: np.ndarray | None = field(repr=False, default=None)  # (R_cw,) class-wise ECE per resample
    cw_resamples: int = 0


def _probs_check(p: Tensor, row0: int, half: bool, name: str, kind: str) -> str | None:
    """Why the chunk is not probabilities (None: it is). Raises for kind="probs"."""
    bad_range = ~((p >= 0) & (p <= 1))
    if p.dim() == 2:
        rows_bad = bad_range.any(1)
        sums = p.sum(1, dtype=torch.float64)
        tol = HALF_SUM_TOL if half else SUM_TOL
        sum_bad = (sums - 1).abs() > tol
    else:
        rows_bad, sum_bad = bad_range, torch.zeros_like(bad_range)
    if bool(rows_bad.any()):
        i = int(rows_bad.nonzero()[0, 0])
        if kind == "probs":
            row = p[i]
            raise ValueError(
                f"{name}: kind='probs' but row {row0 + i} has values outside [0, 1] "
                f"(in [{float(row.min()):.4g}, {float(row.max()):.4g}]): these look like logits; pass kind='logits'"
            )
        return "range"
    if bool(sum_bad.any()):
        i = int(sum_bad.nonzero()[0, 0])
        if kind == "probs":
            raise ValueError(
                f"{name}: kind='probs' but row {row0 + i} sums to {float(sums[i]):.6g}, not 1; "
                "normalise the rows, or pass kind='logits' if these are scores"
            )
        return "sum"
    return None


def chunk_stats(z: Tensor, y: Tensor, kind: str, binary: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(conf, correct, nll, brier, e, scale)`` of one chunk: float64 per-example values, and the ``(n, K)``
    probabilities as ``e * scale[:, None]`` (``e`` in the chunk's dtype, ``scale`` float64 per row; for logits
    ``e = exp(z - max)`` and ``scale = 1 / sum(e)``, so no normalised copy of the chunk is written). Binary
    scores give the two columns ``[1 - p, p]``."""
    n = z.shape[0]
    ar = torch.arange(n)
    ones = torch.ones(n, dtype=torch.float64)
    if binary:
        if kind == "logits":
            zd = z.double()
            p1 = torch.sigmoid(zd)
            conf = torch.sigmoid(zd.abs())
            correct = (zd >= 0) == y.bool()
            nll = torch.nn.functional.binary_cross_entropy_with_logits(zd, y.double(), reduction="none")
        else:
            p1 = z.double()
            conf = torch.maximum(p1, 1 - p1)
            correct = (p1 >= 0.5) == y.bool()
            nll = -torch.where(y.bool(), p1, 1 - p1).clamp(min=NLL_EPS).log()
        brier = (p1 - y.double()).square()
        pz = p1.to(z.dtype)
        return conf, correct, nll, brier, torch.stack([1 - pz, pz], dim=1), ones
    if kind == "logits":
        m, arg = z.max(dim=1)
        e = torch.sub(z, m.unsqueeze(1)).exp_()
        e[ar, arg] = 0
        # A row sum of K terms in the chunk's dtype (pairwise-summed by torch): relative error ~1e-7 in float32.
        rest = e.sum(dim=1).double()
        e[ar, arg] = 1
        scale = 1 / (1 + rest)
        conf = scale
        nll = (m - z[ar, y]).double() + torch.log1p(rest)
        p_y = torch.where(arg == y, conf, e[ar, y].double() * scale)
    else:
        e, scale = z, ones
        c, arg = e.max(dim=1)
        conf = c.double()
        p_y = e[ar, y].double()
        nll = -p_y.clamp(min=NLL_EPS).log()
    correct = arg == y
    sq = torch.linalg.vector_norm(e, dim=1).double().square() * scale.square()
    brier = (sq - 2 * p_y + 1).clamp(min=0)
    return conf, correct, nll, brier, e, scale


def _classwise_add(
    e: Tensor,
    scale: Tensor,
    y: Tensor,
    edges: Tensor,
    n_slots: int,
    acc_p: Tensor,
    acc_y: Tensor,
    resampled: tuple[int, int, int] | None,
    rep: dict[str, Tensor],
) -> None:
    """Add one chunk's class-wise sums: ``acc_p[k, b]`` (probabilities), ``acc_y[k, b]`` (labels); the
    probabilities are ``e * scale[:, None]`` (see :func:`chunk_stats`). With ``resampled = (seed, row0, n)``
    (the chunk's first row among ``n``) the same sums are added for every resample to ``rep``."""
    n, k = e.shape
    first = float(edges[1]) * (1 - 1e-6)
    rows, cols = (e >= (first / scale).to(e.dtype).unsqueeze(1)).nonzero(as_tuple=True)
    vals = e[rows, cols].double() * scale[rows]
    bins = torch.bucketize(vals, edges, right=True) - 1
    keep = bins > 0
    rows, cols, vals, bins = rows[keep], cols[keep], vals[keep], bins[keep]
    cells = cols * n_slots + bins
    scale_e = scale.to(e.dtype)
    colsum = (scale_e @ e).double()
    acc_p.view(-1).index_add_(0, cells, vals)
    acc_p[:, 0] += colsum - torch.zeros(k, dtype=torch.float64).index_add_(0, cols, vals)
    p_y = e[torch.arange(n), y].double() * scale
    ycells = y * n_slots + (torch.bucketize(p_y, edges, right=True) - 1)
    acc_y.view(-1).index_add_(0, ycells, torch.ones(n, dtype=torch.float64))
    if resampled is not None:
        _classwise_resampled(e, scale, rows, cells, vals, ycells, resampled, rep)


def _binned_matrix(rows: Tensor, cells: Tensor, vals: Tensor, n_cells: int, n_rows: int) -> Tensor:
    """The binned probabilities of a block of rows as a sparse ``(n_cells, n_rows)`` CSR matrix (one entry per
    (row, cell): a row's class falls in one bin), so a block of resamples' cell sums is one sparse product."""
    order = torch.argsort(cells, stable=True)
    crow = torch.zeros(n_cells + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(cells, minlength=n_cells), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, rows[order], vals[order], (n_cells, n_rows), check_invariants=False)


def _classwise_resampled(
    e: Tensor,
    scale: Tensor,
    rows: Tensor,
    cells: Tensor,
    vals: Tensor,
    ycells: Tensor,
    resampled: tuple[int, int, int],
    rep: dict[str, Tensor],
) -> None:
    """Every resample's class-wise sums over one chunk, added to ``rep``: ``"dense"`` (R, K) the weighted
    column sums of the probabilities, ``"p"`` (R, K x slots) the weighted probabilities of the binned cells
    above the first bin (slot 0 is filled in at the end as dense minus the rest), ``"y"`` the weighted label
    counts per cell, ``"w"`` the total weights.

    The weights are generated and used in blocks of :data:`~labelsmooth.evaluation.bootstrap.RESAMPLE_BLOCK`
    resamples x :data:`CW_ROWS` rows, resample block by resample block (each generated block of weights is
    then reused by the consecutive row blocks): the memory is O(block + R x K x slots + the chunk's binned
    entries), whatever the chunk's size or the number of resamples."""
    seed, row0, n_total = resampled
    n, _k = e.shape
    n_res = rep["w"].shape[0]
    n_cells = rep["p"].shape[1]
    blocks = []
    for a in range(0, n, CW_ROWS):
        b = min(n, a + CW_ROWS)
        # rows is sorted (nonzero lists row-major): the binned entries of rows [a, b)
        i0, i1 = (int(i) for i in torch.searchsorted(rows, torch.tensor([a, b])))
        blocks.append((a, b, _binned_matrix(rows[i0:i1] - a, cells[i0:i1], vals[i0:i1], n_cells, b - a)))
    for r0 in range(0, n_res, B.RESAMPLE_BLOCK):
        r1 = min(n_res, r0 + B.RESAMPLE_BLOCK)
        for a, b, binned in blocks:
            w = B.weights(seed, r0, r1, row0 + a, row0 + b, n_total).double()
            rep["dense"][r0:r1] += ((w * scale[a:b]).to(e.dtype) @ e[a:b]).double()
            rep["p"][r0:r1] += (binned @ w.t()).t()
            rep["y"][r0:r1].index_add_(1, ycells[a:b], w)
            rep["w"][r0:r1] += w.sum(dim=1)


def stream(
    scores: Any,
    labels: np.ndarray,
    rows: np.ndarray | None,
    *,
    kind: str,
    n_bins: int,
    chunk_rows: int,
    temperature: float | None = None,
    cw_resamples: int = 0,
    seed: int = 0,
    name: str = "scores",
) -> Stats:
    """Per-example statistics of ``scores[rows]`` (all rows when ``rows`` is None), divided by ``temperature``
    when given (logits only). ``kind`` is "logits" or "probs" (already resolved). Labels are the rows' labels."""
    binary = scores.ndim == 1
    k = 2 if binary else int(scores.shape[1])
    n = int(labels.shape[0])
    half = _is_half(scores)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    n_slots = n_bins + 1
    conf = np.empty(n)
    correct = np.empty(n, dtype=bool)
    nll = np.empty(n)
    brier = np.empty(n)
    acc_p = torch.zeros(k, n_slots, dtype=torch.float64)
    acc_y = torch.zeros(k, n_slots, dtype=torch.float64)
    rep = {
        "dense": torch.zeros(cw_resamples, k, dtype=torch.float64),
        "p": torch.zeros(cw_resamples, k * n_slots, dtype=torch.float64),
        "y": torch.zeros(cw_resamples, k * n_slots, dtype=torch.float64),
        "w": torch.zeros(cw_resamples, dtype=torch.float64),
    }
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        sel = slice(a, b) if rows is None else rows[a:b]
        z = _chunk(scores, sel)
        src_row = a if rows is None else int(rows[a])
        if not _finite(z, kind):
            bad = (~torch.isfinite(z)).reshape(b - a, -1).any(dim=1).nonzero()[0, 0]
            where = a + int(bad) if rows is None else int(rows[a + int(bad)])
            raise ValueError(f"{name}: NaN or infinite value at row {where}")
        if kind == "probs":
            _probs_check(z, src_row, half, name, "probs")
        chunk_kind = kind
        if temperature is not None:
            z, chunk_kind = as_logits(z, kind), "logits"
            z = z / temperature
        y = torch.from_numpy(labels[a:b])
        c, ok, nl, br, e, scale = chunk_stats(z, y, chunk_kind, binary)
        conf[a:b], correct[a:b], nll[a:b], brier[a:b] = c.numpy(), ok.numpy(), nl.numpy(), br.numpy()
        _classwise_add(e, scale, y, edges, n_slots, acc_p, acc_y, (seed, a, n) if cw_resamples else None, rep)
    reps = None
    if cw_resamples:
        p = rep["p"].view(cw_resamples, k, n_slots)
        p[:, :, 0] = rep["dense"] - p[:, :, 1:].sum(dim=2)
        gap = (rep["y"].view(cw_resamples, k, n_slots) - p).abs().sum(dim=2)
        reps = (gap.mean(dim=1) / rep["w"].clamp(min=1e-300)).numpy()
    return Stats(conf, correct, nll, brier, k, acc_p.numpy(), acc_y.numpy(), reps, cw_resamples)


def as_logits(z: Tensor, kind: str) -> Tensor:
    """Logits of a chunk: probabilities become log-probabilities (binary: log-odds), which differ from
    logits by a per-row constant; zero probabilities are clamped to the dtype's smallest normal number."""
    if kind == "logits":
        return z
    p = z.clamp(min=torch.finfo(z.dtype).tiny)
    if z.dim() == 1:
        q = (1 - z).clamp(min=torch.finfo(z.dtype).tiny)
        return p.log() - q.log()
    return p.log()


def detect_kind(scores: Any, rows: np.ndarray | None, chunk_rows: int, name: str) -> str:
    """``"probs"`` when every scored row lies in [0, 1] and sums to 1 (binary: in [0, 1]), else ``"logits"``."""
    half = _is_half(scores)
    n = scores.shape[0] if rows is None else rows.shape[0]
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        z = _chunk(scores, slice(a, b) if rows is None else rows[a:b])
        if not bool(torch.isfinite(z).all()):
            return "logits"  # the scoring pass names the row
        if _probs_check(z, a, half, name, "auto") is not None:
            return "logits"
    return "probs"


def fit_temperature(
    scores: Any, labels: np.ndarray, rows: np.ndarray | None, chunk_rows: int, name: str, kind: str
) -> float:
    """Temperature fitted on the validation rows ``scores[rows]`` by :func:`labelsmooth.calibration.fit_temperature`.

    The validation rows are gathered as float32 when they fit in :data:`CHUNK_BYTES` x 16; a larger
    validation set is subsampled to that many rows, chosen with a fixed seed (documented)."""
    n = scores.shape[0] if rows is None else rows.shape[0]
    cols = 1 if scores.ndim == 1 else int(scores.shape[1])
    cap = max(1, (CHUNK_BYTES * 16) // (4 * cols))
    idx = np.arange(n) if rows is None else rows
    lab = labels
    if n > cap:
        keep = np.sort(np.random.default_rng(0).choice(n, cap, replace=False))
        idx, lab = idx[keep], labels[keep]
    parts = [_chunk(scores, idx[a : a + chunk_rows]) for a in range(0, idx.shape[0], chunk_rows)]
    z = as_logits(torch.cat(parts), kind)
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).reshape(z.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}: NaN or infinite value at validation row {int(idx[bad])}")
    return cal.fit_temperature(z, torch.from_numpy(lab))


def classwise_resamples(n_bootstrap: int, n: int, k: int) -> int:
    """Resamples used for the class-wise ECE's interval: all of them while N x K x R stays within
    :data:`CLASSWISE_BUDGET` multiply-adds, else fewer (at least 20, at most ``n_bootstrap``)."""
    if n_bootstrap == 0:
        return 0
    fit = int(CLASSWISE_BUDGET // max(1, n * k))
    return min(n_bootstrap, max(20, fit))


def check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return float(level)
