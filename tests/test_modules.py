import io
import pickle

import pytest
import torch

import labelsmooth as ls
from cases import make_case


def test_module_subclasses_torch_and_agrees_with_function():
    x, t, w = make_case((6, 5, 3), probs=False, weighted=True, ignore_index=-100)
    for reduction in ("none", "mean", "sum"):
        mod = ls.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.2)
        assert isinstance(mod, torch.nn.CrossEntropyLoss)
        torch.testing.assert_close(mod(x, t), ls.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.2))
        torch.testing.assert_close(
            mod(x, t), torch.nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.2)(x, t)
        )


def test_module_pickles_and_state_dict_roundtrips():
    mod = ls.CrossEntropyLoss(torch.rand(5), ignore_index=2, label_smoothing=0.1, z_loss=1e-4)
    clone = pickle.loads(pickle.dumps(mod))
    assert (clone.label_smoothing, clone.ignore_index, clone.z_loss) == (0.1, 2, 1e-4)
    torch.testing.assert_close(clone.weight, mod.weight)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    fresh = ls.CrossEntropyLoss(torch.zeros(5), ignore_index=2, label_smoothing=0.1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh.weight, mod.weight)
    assert "label_smoothing=0.1" in repr(mod)


def test_module_errors_read_like_the_function():
    with pytest.raises(ValueError, match=r"label_smoothing must be between 0\.0 and 1\.0"):
        ls.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        ls.CrossEntropyLoss(backend="nope")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ls.CrossEntropyLoss(reduction="avg")


def test_small_model_learns():
    torch.manual_seed(0)
    n, d, k = 512, 10, 4
    centers = torch.randn(k, d) * 3
    y = torch.randint(0, k, (n,))
    x = centers[y] + torch.randn(n, d)
    model = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Linear(32, k))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95
    assert loss.item() < first
    # with eps = 0.1 the loss cannot fall below the entropy of the smoothed target
    q = ls.smooth_labels(y[:1], k, 0.1, dtype=torch.float64)
    entropy = -(q * q.log()).sum().item()
    assert loss.item() >= entropy - 1e-4
