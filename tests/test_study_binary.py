"""Claim 4's verdicts on K-sweep tasks: the tolerance follows the tasks' own test-set size."""

from __future__ import annotations

import pytest

from labelsmooth.study import claims as C


def _rec(ds: str, method: str, eps: float, seed: int, ece: float, k: int, n_test: int) -> dict:
    return dict(
        dataset=ds,
        method=method,
        label_smoothing=eps,
        noise_kind="none",
        noise_level=0.0,
        seed=seed,
        ece=ece,
        nll=0.3,
        test_accuracy=0.9,
        mean_confidence=0.9,
        num_classes=k,
        binary=k == 2,
        parent_dataset="mnist1d",
        splits={"n_test": n_test},
        train_fraction=1.0,
    )


@pytest.mark.parametrize("n_test", [50, 1000])
def test_binary_verdict_tolerance_is_two_over_the_tasks_n_test(n_test):
    recs = []
    for s in range(5):
        for ds, k, gain in (("mnist1d:k2s0", 2, 0.0), ("mnist1d:k10s0", 10, 0.02)):
            recs.append(_rec(ds, "ce", 0.0, s, 0.10, k, n_test))
            for eps in (0.1, 0.18):
                recs.append(_rec(ds, "ls", eps, s, 0.10 - gain - 0.001 * s, k, n_test))
    ece = [v for v in C.study_verdicts(recs) if v.claim == "binary" and v.metric == "ece"]
    assert ece and all(v.tolerance == pytest.approx(max(0.005, 2 / n_test)) for v in ece)
    # A 10-class benefit 0.02 larger than the binary one is clear with 1000 test examples, and below the
    # tolerance (2/50 = 0.04) with 50.
    same_eps = next(v for v in ece if v.setting.startswith("same eps"))
    assert same_eps.mean == pytest.approx(0.02)
    assert same_eps.outcome == ("supports" if n_test == 1000 else "same")
