import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labelsmooth as ls


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 50),
    eps=st.floats(0.0, 1.0),
    shape=st.lists(st.integers(0, 4), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_smooth_labels_properties(k, eps, shape, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, tuple(shape), generator=g)
    q = ls.smooth_labels(target, k, eps, dtype=torch.float64)
    assert q.shape == (*shape, k)
    if target.numel() == 0:
        return
    torch.testing.assert_close(q.sum(-1), torch.ones(tuple(shape), dtype=torch.float64))
    assert math.isclose(q.min().item(), eps / k if k > 1 else 1.0, abs_tol=1e-12)
    true = q.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(true, torch.full_like(true, 1 - eps + eps / k))


def test_smooth_labels_matches_one_hot_formula():
    t = torch.tensor([[0, 3], [2, 1]])
    want = 0.8 * torch.nn.functional.one_hot(t, 4).float() + 0.2 / 4
    torch.testing.assert_close(ls.smooth_labels(t, 4, 0.2), want)


def test_smooth_labels_feeds_cross_entropy_as_probabilities():
    x = torch.randn(6, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (6,))
    soft = ls.smooth_labels(t, 5, 0.3, dtype=torch.float64)
    torch.testing.assert_close(ls.cross_entropy(x, soft), ls.cross_entropy(x, t, label_smoothing=0.3))


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.tensor([0, 3]), 3, 0.1), IndexError, "class index 3"),
        ((torch.tensor([-1, 0]), 3, 0.1), IndexError, "class index -1"),
        ((torch.tensor([0]), 0, 0.1), ValueError, "num_classes"),
        ((torch.tensor([0]), 2.0, 0.1), TypeError, "num_classes"),
        ((torch.tensor([0]), 3, 1.1), ValueError, "label_smoothing"),
        ((torch.tensor([0]), 3, -0.1), ValueError, "label_smoothing"),
        ((torch.tensor([0]), 3, math.nan), ValueError, "label_smoothing"),
        ((torch.tensor([0.0]), 3, 0.1), TypeError, "target must be an integer tensor"),
    ],
)
def test_smooth_labels_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        ls.smooth_labels(*args)


def test_smooth_binary_labels():
    y = torch.tensor([0, 1, 1])
    torch.testing.assert_close(ls.smooth_binary_labels(y, 0.2), torch.tensor([0.1, 0.9, 0.9]))
    torch.testing.assert_close(ls.smooth_binary_labels(y.float(), 0.0), y.float())
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.smooth_binary_labels(y, 2.0)
