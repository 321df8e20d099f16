"""Tests for labelsmooth.noise: exact counts, allowed targets, uniformity, seeding, kinds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelsmooth import noise
from labelsmooth.noise import (
    CIFAR10_ASYMMETRIC,
    from_mapping,
    from_transition_matrix,
    pairflip,
    symmetric,
    transition_matrix,
)

K = 10


def clean_labels(n=20_000, k=K, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- symmetric


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8, 1.0])
def test_symmetric_flips_exact_count_never_to_same_class(rate):
    clean = clean_labels(5000)
    noisy = symmetric(clean, rate, K, seed=1)
    flipped = noisy != clean
    assert int(flipped.sum()) == round(rate * 5000)
    assert noisy.min() >= 0 and noisy.max() < K


def test_symmetric_is_roughly_uniform_over_other_classes():
    clean = clean_labels(100_000)
    noisy = symmetric(clean, 0.5, K, seed=2)
    counts = transition_matrix(clean, noisy, K) * torch.bincount(clean, minlength=K).double().unsqueeze(1)
    for c in range(K):
        observed = torch.cat([counts[c, :c], counts[c, c + 1 :]])
        expected = observed.sum() / (K - 1)
        chi2 = (((observed - expected) ** 2) / expected).sum().item()
        assert chi2 < 40  # 8 degrees of freedom; p < 1e-5 above this bound
    # the flipped positions are spread over the classes too: each class loses about half
    m = transition_matrix(clean, noisy, K)
    assert torch.allclose(torch.diagonal(m), torch.full((K,), 0.5, dtype=torch.float64), atol=0.03)


def test_symmetric_binary_always_swaps():
    clean = torch.tensor([0, 1] * 50)
    noisy = symmetric(clean, 0.3, 2, seed=0)
    changed = noisy != clean
    assert int(changed.sum()) == 30
    assert torch.equal(noisy[changed], 1 - clean[changed])


# ----------------------------------------------------------------------------- pairflip


@pytest.mark.parametrize("rate", [0.1, 0.45])
def test_pairflip_exact_count_to_next_class(rate):
    clean = clean_labels(4000)
    noisy = pairflip(clean, rate, K, seed=3)
    changed = noisy != clean
    assert int(changed.sum()) == round(rate * 4000)
    assert torch.equal(noisy[changed], (clean[changed] + 1) % K)


def test_pairflip_realised_matrix_matches_rate():
    clean = clean_labels(50_000)
    m = transition_matrix(clean, pairflip(clean, 0.3, K, seed=4), K)
    expected = 0.7 * torch.eye(K, dtype=torch.float64) + 0.3 * torch.roll(torch.eye(K, dtype=torch.float64), 1, 1)
    assert torch.allclose(m, expected, atol=0.02)


# ----------------------------------------------------------------------------- mapping


def test_cifar10_asymmetric_constant():
    assert dict(CIFAR10_ASYMMETRIC) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    with pytest.raises(TypeError):
        CIFAR10_ASYMMETRIC[0] = 1  # read-only


@pytest.mark.parametrize("rate", [0.2, 0.4, 1.0])
def test_from_mapping_exact_per_class_counts_and_targets(rate):
    clean = clean_labels(10_003)
    noisy = from_mapping(clean, rate, CIFAR10_ASYMMETRIC, seed=5)
    changed = noisy != clean
    for c in range(K):
        members = clean == c
        n_flipped = int((changed & members).sum())
        if c in CIFAR10_ASYMMETRIC:
            assert n_flipped == round(rate * int(members.sum()))
            assert (noisy[changed & members] == CIFAR10_ASYMMETRIC[c]).all()
        else:
            assert n_flipped == 0
    m = transition_matrix(clean, noisy, K)
    for src, dst in CIFAR10_ASYMMETRIC.items():
        assert m[src, dst].item() == pytest.approx(rate, abs=1e-3)


def test_from_mapping_swap_uses_clean_labels():
    # cat <-> dog at rate 1 swaps every cat and dog exactly once
    clean = np.array([3, 5, 3, 5, 0])
    assert from_mapping(clean, 1.0, {3: 5, 5: 3}, seed=0).tolist() == [5, 3, 5, 3, 0]


# ----------------------------------------------------------------------------- transition matrix


def test_from_transition_matrix_samples_rows():
    clean = clean_labels(60_000, 3)
    t = np.array([[0.8, 0.2, 0.0], [0.0, 0.6, 0.4], [0.1, 0.0, 0.9]])
    noisy = from_transition_matrix(clean, t, seed=6)
    m = transition_matrix(clean, noisy, 3)
    assert torch.allclose(m, torch.from_numpy(t), atol=0.015)
    assert (m[torch.from_numpy(t) == 0] == 0).all()  # zero-probability transitions never happen
    identity = from_transition_matrix(clean, torch.eye(3), seed=0)
    assert torch.equal(identity, clean)


def test_from_transition_matrix_accepts_larger_matrix_and_tolerance():
    t = torch.full((5, 5), 0.2)
    t[0, 0] += 5e-7  # within the 1e-6 row-sum tolerance
    out = from_transition_matrix(torch.tensor([0, 1, 2]), t, seed=0)
    assert out.max() < 5


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.array([[0.5, 0.5], [0.3, 0.6]]), r"row-stochastic.*row 1 summing to 0.9"),
        (np.array([[1.5, -0.5], [0.0, 1.0]]), r"non-negative.*-0.5"),
        (np.full((2, 3), 1 / 3), r"square.*\(2, 3\)"),
        (np.ones(3) / 3, r"square.*\(3,\)"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), r"finite"),
        (np.eye(2), r"too small.*maximum 2.*K >= 3"),
    ],
)
def test_from_transition_matrix_rejects_bad_matrix(bad, match):
    with pytest.raises(ValueError, match=r"^T .*" + match):
        from_transition_matrix(np.array([0, 1, 2]), bad, seed=0)


def test_transition_matrix_rows_without_samples_are_zero():
    m = transition_matrix(np.array([0, 0, 2]), np.array([1, 0, 2]), 4)
    assert isinstance(m, np.ndarray) and m.dtype == np.float64
    np.testing.assert_array_equal(m, [[0.5, 0.5, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    inferred = transition_matrix(torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert isinstance(inferred, torch.Tensor) and inferred.shape == (3, 3)


def test_realised_symmetric_rate():
    clean = clean_labels(30_000)
    m = transition_matrix(clean, symmetric(clean, 0.35, K, seed=7), K)
    counts = torch.bincount(clean, minlength=K).double()
    overall_flip = ((1 - torch.diagonal(m)) * counts).sum() / counts.sum()
    assert overall_flip.item() == pytest.approx(0.35, abs=1e-12)
    off = m[~torch.eye(K, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.35 / (K - 1)), atol=0.01)


# ----------------------------------------------------------------------------- common behaviour

FUNCS = {
    "symmetric": lambda y, seed: symmetric(y, 0.4, K, seed=seed),
    "pairflip": lambda y, seed: pairflip(y, 0.4, K, seed=seed),
    "mapping": lambda y, seed: from_mapping(y, 0.4, CIFAR10_ASYMMETRIC, seed=seed),
    "matrix": lambda y, seed: from_transition_matrix(y, np.full((K, K), 1 / K), seed=seed),
}


@pytest.mark.parametrize("name", list(FUNCS))
def test_seeded_reproducible_and_not_mutating(name):
    fn = FUNCS[name]
    clean = clean_labels(2000)
    backup = clean.clone()
    a, b, c = fn(clean, 0), fn(clean, 0), fn(clean, 1)
    assert torch.equal(clean, backup)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.data_ptr() != clean.data_ptr()
    # numpy in -> numpy out, same dtype, same numbers as the torch path
    for dtype in (np.int64, np.int32, np.uint8):
        arr = clean.numpy().astype(dtype)
        arr_backup = arr.copy()
        out = fn(arr, 0)
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out is not arr
        np.testing.assert_array_equal(arr, arr_backup)
        np.testing.assert_array_equal(out, a.numpy())
    small = fn(clean.to(torch.int16), 0)
    assert isinstance(small, torch.Tensor) and small.dtype == torch.int16
    assert torch.equal(small.long(), a)


@pytest.mark.parametrize("name", list(FUNCS))
def test_common_label_errors(name):
    fn = FUNCS[name]
    with pytest.raises(TypeError, match=r"labels must be an integer.*float32"):
        fn(torch.zeros(3), 0)
    with pytest.raises(TypeError, match=r"labels must be an integer numpy array.*float64"):
        fn(np.zeros(3), 0)
    with pytest.raises(TypeError, match=r"labels must be a torch.Tensor or a numpy.ndarray.*list"):
        fn([0, 1], 0)
    with pytest.raises(ValueError, match=r"labels must be 1-D.*\(2, 2\)"):
        fn(torch.zeros(2, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"labels out of range.*-1"):
        fn(torch.tensor([0, -1]), 0)
    with pytest.raises(TypeError, match=r"seed must be an integer"):
        fn(torch.tensor([0, 1]), 1.5)


@pytest.mark.parametrize("fn", [symmetric, pairflip])
def test_rate_and_num_classes_errors(fn):
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 1.5"):
        fn(y, 1.5, 3, seed=0)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got -0.1"):
        fn(y, -0.1, 3, seed=0)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got nan"):
        fn(y, float("nan"), 3, seed=0)
    with pytest.raises(TypeError, match=r"rate must be a real number.*'0.1'"):
        fn(y, "0.1", 3, seed=0)
    with pytest.raises(ValueError, match=r"num_classes must be >= 2.*got 1"):
        fn(torch.tensor([0, 0]), 0.1, 1, seed=0)
    with pytest.raises(ValueError, match=r"labels out of range.*\[0, 2\].*\[0, 3\]"):
        fn(torch.tensor([0, 3]), 0.1, 3, seed=0)
    with pytest.raises(TypeError, match=r"seed"):
        fn(y, 0.1, 3)  # seed is keyword-only and required


def test_mapping_errors():
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 2"):
        from_mapping(y, 2, {0: 1}, seed=0)
    with pytest.raises(ValueError, match=r"mapping must send each class to a different class.*1: 1"):
        from_mapping(y, 0.5, {1: 1}, seed=0)
    with pytest.raises(ValueError, match=r"mapping must map non-negative integer classes.*-1"):
        from_mapping(y, 0.5, {0: -1}, seed=0)
    with pytest.raises(TypeError, match=r"mapping must be a dict-like.*list"):
        from_mapping(y, 0.5, [(0, 1)], seed=0)


def test_transition_matrix_errors():
    with pytest.raises(ValueError, match=r"clean and noisy must have the same length, got 2 and 3"):
        transition_matrix(np.array([0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"noisy out of range.*\[0, 1\].*\[0, 5\]"):
        transition_matrix(np.array([0, 1]), np.array([0, 5]), 2)
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer, got 0"):
        transition_matrix(np.array([0, 1]), np.array([0, 1]), 0)


def test_public_names():
    assert set(noise.__all__) == {
        "CIFAR10_ASYMMETRIC",
        "from_mapping",
        "from_transition_matrix",
        "pairflip",
        "symmetric",
        "transition_matrix",
    }
