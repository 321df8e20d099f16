import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import reference

SHAPES = [(7,), (5, 3), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_against_torch_and_formula(shape, eps, reduction, weighted):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    y = torch.randint(0, 2, shape, generator=g).double()
    w = torch.rand(shape[-1], generator=g, dtype=torch.float64) if weighted else None
    pw = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5 if weighted else None
    got = ls.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw, label_smoothing=eps)
    smoothed = y * (1 - eps) + eps / 2
    want = F.binary_cross_entropy_with_logits(x, smoothed, w, reduction=reduction, pos_weight=pw)
    formula = reference.bce_with_logits(x, y, w, pw, eps, reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, formula, rtol=1e-12, atol=1e-12)
    go = torch.rand(got.shape, generator=g, dtype=torch.float64) + 0.5
    (g1,) = torch.autograd.grad(got, x, go)
    (g2,) = torch.autograd.grad(formula, x, go)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_binary_integer_targets_and_module():
    x = torch.randn(10)
    y = torch.randint(0, 2, (10,))
    mod = ls.BCEWithLogitsLoss(label_smoothing=0.1, pos_weight=torch.tensor(2.0))
    assert isinstance(mod, torch.nn.BCEWithLogitsLoss)
    torch.testing.assert_close(
        mod(x, y), ls.binary_cross_entropy_with_logits(x, y.float(), pos_weight=torch.tensor(2.0), label_smoothing=0.1)
    )


def test_binary_integer_targets_must_be_0_or_1():
    # torch refuses integer targets outside a float dtype; we accept 0/1 labels, and only those.
    x = torch.randn(5)
    for bad in (torch.tensor([0, 1, 2, 1, 0]), torch.tensor([0, -1, 1, 1, 0], dtype=torch.int8)):
        with pytest.raises(ValueError, match=r"an integer target must hold 0/1 labels, got (2|-1)"):
            ls.binary_cross_entropy_with_logits(x, bad)
        with pytest.raises(RuntimeError, match="0/1 labels"):
            ls.BCEWithLogitsLoss(label_smoothing=0.1)(x, bad)
    ok = torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)
    torch.testing.assert_close(
        ls.binary_cross_entropy_with_logits(x, ok, label_smoothing=0.2),
        ls.binary_cross_entropy_with_logits(x, ok.float(), label_smoothing=0.2),
    )


def test_binary_errors():
    with pytest.raises(ValueError, match="target must have the input's shape"):
        ls.binary_cross_entropy_with_logits(torch.randn(4), torch.ones(5))
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.binary_cross_entropy_with_logits(torch.randn(4), torch.ones(4), label_smoothing=-0.5)
    with pytest.raises(TypeError, match="input must be a floating-point"):
        ls.binary_cross_entropy_with_logits(torch.ones(4, dtype=torch.long), torch.ones(4))
    with pytest.raises(ValueError, match="pos_weight"):
        ls.binary_cross_entropy_with_logits(torch.randn(4, 3), torch.ones(4, 3), pos_weight=torch.ones(2))
    with pytest.raises(ValueError, match="reduction"):
        ls.BCEWithLogitsLoss(reduction="bad")
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.BCEWithLogitsLoss(label_smoothing=3)
