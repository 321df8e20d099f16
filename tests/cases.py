"""Shared case generators: shapes, targets and options every backend is checked on."""

from __future__ import annotations

import itertools

import torch

# Shape families: (input_shape, class_dim). Class counts cover 1, 2, 3, a non-power-of-2 and a larger one.
SHAPES = [
    (7,),  # unbatched (C)
    (1, 1),  # one class
    (5, 2),
    (6, 3),
    (4, 131),  # non-power-of-2
    (3, 1031),  # larger
    (2, 5, 3),  # (N, C, d1)
    (2, 4, 3, 2),  # (N, C, d1, d2)
]
EPS = [0.0, 0.05, 0.5, 1.0]
REDUCTIONS = ["none", "mean", "sum"]


def make_case(
    shape,
    *,
    probs: bool,
    weighted: bool,
    ignore_index: int | None,
    seed: int = 0,
    dtype=torch.float64,
    scale: float = 3.0,
):
    """Return (input, target, weight) for one configuration."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    class_dim = 0 if len(shape) == 1 else 1
    c = shape[class_dim]
    batch = tuple(s for i, s in enumerate(shape) if i != class_dim)
    if probs:
        t = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
        t = t / t.sum(dim=class_dim, keepdim=True)
    else:
        t = torch.randint(0, c, batch, generator=g)
        if ignore_index is not None and t.numel() > 1:
            t.view(-1)[:: max(1, t.numel() // 3)] = ignore_index
    w = torch.rand(c, generator=g, dtype=torch.float64).to(dtype) + 0.1 if weighted else None
    return x, t, w


def grid():
    """Yield (shape, probs, weighted, ignore_index, eps, reduction) over the full grid."""
    for shape, probs, weighted, eps, reduction in itertools.product(
        SHAPES, [False, True], [False, True], EPS, REDUCTIONS
    ):
        ignores = [None] if probs else [None, -100, 1]
        for ignore_index in ignores:
            if ignore_index == 1 and (len(shape) == 1 or shape[1] < 2):
                continue
            yield shape, probs, weighted, ignore_index, eps, reduction


def grads(fn, x, go_seed=5):
    """Output and gradient of ``fn`` at ``x`` for a random grad_output (not 1)."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    go = torch.rand(out.shape, generator=torch.Generator().manual_seed(go_seed), dtype=torch.float64) + 0.5
    (g,) = torch.autograd.grad(out, x, go.to(out.dtype))
    return out.detach(), g
