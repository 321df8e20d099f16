"""Where code written for torch would notice a difference: forward-mode AD, and the exception types
torch raises for bad arguments (RuntimeError) next to ours (ValueError / TypeError)."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

import labelsmooth as ls
from labelsmooth import functional as LF

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture
def fused_auto(monkeypatch):
    # Make "auto" pick the fused chunked backend even for a small CPU problem, as it does above 2**20.
    monkeypatch.setattr(LF, "SMALL_CPU_PROBLEM", 0)


@pytest.mark.parametrize("probs", [False, True])
def test_forward_ad_dual_tensors_match_torch(fused_auto, probs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = (
        torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), 1)
        if probs
        else torch.tensor([0, 1, 4, 2, 3, 1])
    )
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    with forward_ad.dual_level():
        ours = forward_ad.unpack_dual(ls.cross_entropy(forward_ad.make_dual(x, v), t, w, label_smoothing=0.2))
        theirs = forward_ad.unpack_dual(F.cross_entropy(forward_ad.make_dual(x, v), t, w, label_smoothing=0.2))
    torch.testing.assert_close(ours.primal, theirs.primal)
    torch.testing.assert_close(ours.tangent, theirs.tangent)


def test_torch_func_jvp_matches_torch(fused_auto):
    g = torch.Generator().manual_seed(1)
    x, v = (
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([[0, 3, -100], [1, 2, 2]])
    out, tangent = torch.func.jvp(lambda z: ls.cross_entropy(z, t, label_smoothing=0.1), (x,), (v,))
    want, want_t = torch.func.jvp(lambda z: F.cross_entropy(z, t, label_smoothing=0.1), (x,), (v,))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(tangent, want_t)


def test_binary_forward_ad_matches_torch():
    x, v, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.ones(5)
    with forward_ad.dual_level():
        ours = forward_ad.unpack_dual(
            ls.binary_cross_entropy_with_logits(forward_ad.make_dual(x, v), y, label_smoothing=0.1)
        ).tangent
        yt = y.double() * 0.9 + 0.05
        theirs = forward_ad.unpack_dual(F.binary_cross_entropy_with_logits(forward_ad.make_dual(x, v), yt)).tangent
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("backend", ["reference", "chunked", "torch"] + (["triton"] if HAS_TRITON else []))
def test_forward_ad_on_every_backend_matches_torch(backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, -100])
    with forward_ad.dual_level():
        ours = forward_ad.unpack_dual(
            ls.cross_entropy(forward_ad.make_dual(x, v), y, label_smoothing=0.1, backend=backend)
        )
        theirs = forward_ad.unpack_dual(F.cross_entropy(forward_ad.make_dual(x, v), y, label_smoothing=0.1))
    torch.testing.assert_close(ours.primal, theirs.primal)
    torch.testing.assert_close(ours.tangent, theirs.tangent)
    _, tangent = torch.func.jvp(lambda z: ls.cross_entropy(z, y, label_smoothing=0.1, backend=backend), (x,), (v,))
    torch.testing.assert_close(tangent, theirs.tangent)


BAD_CALLS = {
    # torch raises RuntimeError for each of these; so must we (and ValueError / TypeError as before)
    "label_smoothing 1.2": lambda ce: ce(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=1.2),
    "weight of the wrong length": lambda ce: ce(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.ones(3)),
    "ignore_index with probabilities": lambda ce: ce(torch.randn(3, 4), torch.rand(3, 4), ignore_index=1),
    "wrong spatial target size": lambda ce: ce(torch.randn(2, 4, 5), torch.zeros(2, 6, dtype=torch.long)),
    "wrong target dtype": lambda ce: ce(torch.randn(3, 4), torch.tensor([0.5, 1.0, 2.0])),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_errors_torch_raises_as_runtime_error_are_runtime_errors_here_too(name):
    call = BAD_CALLS[name]
    with pytest.raises(RuntimeError) as theirs:
        call(F.cross_entropy)
    with pytest.raises(RuntimeError) as ours:
        call(ls.cross_entropy)
    assert isinstance(ours.value, (ValueError, TypeError)), type(ours.value)
    assert isinstance(ours.value, (ls.ArgumentError, ls.ArgumentTypeError))
    assert str(ours.value) and str(theirs.value)


def test_argument_errors_are_value_and_runtime_errors():
    assert issubclass(ls.ArgumentError, ValueError) and issubclass(ls.ArgumentError, RuntimeError)
    assert issubclass(ls.ArgumentTypeError, TypeError) and issubclass(ls.ArgumentTypeError, RuntimeError)
    with pytest.raises(ValueError, match=r"^label_smoothing must be between 0\.0 and 1\.0\. Got: 1\.2 \(.*allow_neg"):
        ls.CrossEntropyLoss(label_smoothing=1.2)


def test_label_smoothing_may_be_a_one_element_tensor_as_in_torch():
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    eps = torch.tensor(0.1, dtype=torch.float64)
    want = F.cross_entropy(x, y, label_smoothing=eps)  # torch reads the tensor's number
    torch.testing.assert_close(ls.cross_entropy(x, y, label_smoothing=eps), want)
    torch.testing.assert_close(ls.CrossEntropyLoss(label_smoothing=torch.tensor([0.1]))(x, y), want)
    with pytest.raises(TypeError, match=r"one-element real tensor, got a torch.float32 tensor of shape \(2,\)"):
        ls.cross_entropy(x, y, label_smoothing=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"^label_smoothing must be between 0\.0 and 1\.0\. Got: 1\.5"):
        ls.cross_entropy(x, y, label_smoothing=torch.tensor(1.5))
