"""labelsmooth.evaluation.sweep: the study's protocol on a user's training function (pool, Dask, resume,
choice on validation only, noise in train and validation labels only, errors)."""

import doctest
import functools
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth import noise as N
from labelsmooth.evaluation import METRICS
from labelsmooth.evaluation.sweep import sweep

# The module (labelsmooth.evaluation.sweep is also the name of the function the package exports).
sweep_module = importlib.import_module("labelsmooth.evaluation.sweep")

# Synthetic 3-class problem: labels from a noisy linear rule, so a logistic regression learns it in a few steps.
K = 3
_rng = np.random.default_rng(0)
X = _rng.normal(size=(600, 8)).astype(np.float32)
Y = (X @ _rng.normal(size=(8, K)) + 0.5 * _rng.normal(size=(600, K))).argmax(1)
TR, VA, TE = slice(0, 300), slice(300, 450), slice(450, 600)
Y_TRAIN, Y_VAL, Y_TEST = Y[TR], Y[VA], Y[TE]


def train_logreg(eps, seed, train_labels, log_dir=None):
    """Logistic regression, 25 full-batch Adam steps with smoothing eps; logs what it received to log_dir."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = torch.nn.Linear(X.shape[1], K)
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    x, t = torch.from_numpy(X[TR]), torch.from_numpy(train_labels)
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), t, label_smoothing=eps).backward()
        opt.step()
    if log_dir is not None:
        np.save(Path(log_dir) / f"train-{eps:g}-{seed}-{os.getpid()}.npy", train_labels)
    with torch.no_grad():
        return {"val": model(torch.from_numpy(X[VA])), "test": model(torch.from_numpy(X[TE])).numpy()}


def train_with_val(eps, seed, train_labels, val_labels, log_dir):
    np.save(Path(log_dir) / f"val-{eps:g}-{seed}.npy", val_labels)
    return train_logreg(eps, seed, train_labels, log_dir)


def train_flaky(eps, seed, train_labels, marker_dir):
    """Fails on (eps=0.1, seed=1) the first time; logs every call."""
    marker = Path(marker_dir) / "failed-once"
    (Path(marker_dir) / f"call-{eps:g}-{seed}-{len(list(Path(marker_dir).glob('call-*')))}").touch()
    if eps == 0.1 and seed == 1 and not marker.exists():
        marker.touch()
        raise OSError("node lost")
    return train_logreg(eps, seed, train_labels)


def _onehot(y, scale):
    return scale * np.eye(K, dtype=np.float32)[y]


def train_rigged(eps, seed, train_labels):
    """eps = 0.2 is perfect on validation and guesses on test; every other eps the reverse (perfect one-hot
    outputs put the fitted temperature at its bound: the tests filter that warning)."""
    rng = np.random.default_rng(seed)
    guess_val = rng.normal(size=(150, K)).astype(np.float32)
    guess_test = rng.normal(size=(150, K)).astype(np.float32)
    if eps == 0.2:
        return _onehot(Y_VAL, 4.0), guess_test
    return guess_val, _onehot(Y_TEST, 4.0)


def _kw(**extra):
    kw = dict(train_labels=Y_TRAIN, val_labels=Y_VAL, test_labels=Y_TEST, eps=(0.0, 0.1, 0.2), seeds=3)
    kw.update(extra)
    return kw


def test_local_pool_two_workers_writes_runs_and_reports(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    res = sweep(functools.partial(train_logreg, log_dir=log), **_kw(out=out, workers=2))
    assert len(res.runs) == 9 and all(r["trained"] for r in res.runs)
    # the trainings ran in other processes (spawned workers), not in this one
    pids = {p.stem.rsplit("-", 1)[1] for p in log.glob("train-*.npy")}
    assert len(list(log.glob("train-*.npy"))) == 9 and str(os.getpid()) not in pids
    assert len(list((out / "runs").glob("*.json"))) == 9 and len(list((out / "runs").glob("*.npz"))) == 9
    with np.load(out / "runs" / "eps0.1_seed2.npz", allow_pickle=False) as f:
        assert f["val"].shape == (150, K) and f["test"].shape == (150, K)
    data = json.loads((out / "sweep.json").read_text())
    assert data["chosen_eps"] == res.chosen_eps and len(data["runs"]) == 9
    md = (out / "sweep.md").read_text()
    assert f"Chosen eps: **{res.chosen_eps:g}**" in md
    assert "<table>" in (out / "sweep.html").read_text()
    # the pool computes what the same sweep computes in this process
    inline = sweep(train_logreg, **_kw(workers=1))
    assert inline.chosen_eps == res.chosen_eps
    for e in res.eps:
        assert inline.validation[e] == pytest.approx(res.validation[e], rel=1e-5)


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (the [dask] extra)")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, worker_dashboard_address=None
    ) as cluster:
        log = tmp_path / "log"
        log.mkdir()
        res = sweep(
            functools.partial(train_logreg, log_dir=log),
            **_kw(out=tmp_path / "out", scheduler=cluster.scheduler_address, seeds=2, eps=(0.0, 0.1)),
        )
    assert len(res.runs) == 4 and all(r["trained"] for r in res.runs)
    pids = {p.stem.rsplit("-", 1)[1] for p in log.glob("train-*.npy")}
    assert pids and str(os.getpid()) not in pids
    assert len(list((tmp_path / "out" / "runs").glob("*.npz"))) == 4
    local = sweep(train_logreg, **_kw(seeds=2, eps=(0.0, 0.1), workers=1))
    assert local.validation[0.1] == pytest.approx(res.validation[0.1], rel=1e-5)


def test_resume_after_a_failed_run_trains_only_the_missing_one(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    fn = functools.partial(train_flaky, marker_dir=log)
    with pytest.raises(RuntimeError, match=r"1 of 6 runs failed .*eps=0.1, seed=1.*OSError: node lost"):
        sweep(fn, **_kw(out=out, eps=(0.0, 0.1), workers=1))
    assert len(list((out / "runs").glob("*.json"))) == 5
    assert not (out / "runs" / "eps0.1_seed1.json").exists()
    assert (out / "runs" / "eps0.1_seed2.json").exists()
    calls_before = len(list(log.glob("call-*")))
    res = sweep(fn, **_kw(out=out, eps=(0.0, 0.1), workers=1))
    assert len(list(log.glob("call-*"))) == calls_before + 1
    assert [(r["eps"], r["seed"]) for r in res.runs if r["trained"]] == [(0.1, 1)]
    # the same runs with other settings (here: noise) are refused, naming the file
    with pytest.raises(ValueError, match=r"eps0_seed0.json holds a run of a different sweep"):
        sweep(fn, **_kw(out=out, eps=(0.0, 0.1), workers=1, noise=0.2))
    # without out= nothing is kept, and the error says so
    (log / "failed-once").unlink()
    with pytest.raises(RuntimeError, match="pass out= to keep finished runs"):
        sweep(fn, **_kw(eps=(0.0, 0.1), workers=1))


@pytest.mark.filterwarnings("ignore:fit_temperature. the NLL minimum is at the search bound")
def test_eps_chosen_on_validation_only():
    res = sweep(train_rigged, **_kw(seeds=5, workers=1))
    # validation says 0.2, test says anything but 0.2: the choice follows validation
    assert res.chosen_eps == 0.2
    assert res.verdict("accuracy").words == "worse" and res.verdict("nll").words == "worse"
    # after temperature scaling (its own family): accuracy is unchanged by a temperature, so still worse
    assert res.verdict("accuracy", scaled=True).words == "worse"
    assert res.verdict("nll", scaled=True).values != res.verdict("nll").values
    assert "## Test after temperature scaling: eps = 0.2 against eps = 0" in res.to_markdown()
    assert set(e for e, _ in res.evaluations) == {0.0, 0.2}  # test read for eps = 0 and the chosen eps only
    # permuting the test labels changes the test metrics, never the choice or the validation numbers
    rng = np.random.default_rng(1)
    a = sweep(train_logreg, **_kw(workers=1))
    b = sweep(train_logreg, **_kw(workers=1, test_labels=rng.permutation(Y_TEST)))
    assert a.validation == b.validation and a.chosen_eps == b.chosen_eps
    assert a.test_mean(0.0, "accuracy") != b.test_mean(0.0, "accuracy")


def test_noise_goes_into_train_and_val_labels_never_test(tmp_path):
    res = sweep(
        functools.partial(train_with_val, log_dir=tmp_path), **_kw(noise=0.2, seeds=2, eps=(0.0, 0.1), workers=1)
    )
    for s in (0, 1):
        got = [np.load(p) for p in sorted(tmp_path.glob(f"train-*-{s}-*.npy"))]
        assert len(got) == 2 and np.array_equal(got[0], got[1])  # every eps of a seed: the same noisy labels
        assert (got[0] != Y_TRAIN).sum() == round(0.2 * 300)
        assert np.array_equal(got[0], N.symmetric(Y_TRAIN, 0.2, K, seed=2 * s))
        val = np.load(tmp_path / f"val-0.1-{s}.npy")
        assert (val != Y_VAL).sum() == round(0.2 * 150)
        assert np.array_equal(val, N.symmetric(Y_VAL, 0.2, K, seed=2 * s + 1))
    assert not np.array_equal(np.load(tmp_path / "val-0-0.npy"), np.load(tmp_path / "val-0-1.npy"))
    for r in res.evaluations.values():
        assert np.array_equal(r.labels, Y_TEST)


@pytest.mark.filterwarnings("ignore:fit_temperature. the NLL minimum is at the search bound")
def test_fewer_than_three_seeds_gives_no_verdict():
    res = sweep(train_rigged, **_kw(seeds=2, workers=1))
    assert res.chosen_eps == 0.2 and len(res.verdicts) == len(METRICS)
    assert {v.words for v in res.verdicts + res.verdicts_scaled} == {"no verdict"}
    assert "No verdict: 2 seed(s)" in res.to_markdown()


def _nested_ok():
    def inner(eps, seed, train_labels):
        return None

    return inner


def train_wrong_rows(eps, seed, train_labels):
    return {"val": np.zeros((149, K), np.float32), "test": np.zeros((150, K), np.float32)}


@pytest.mark.parametrize(
    ("fn", "extra", "err", "match"),
    [
        (lambda e, s, y: None, {}, TypeError, "got a lambda"),
        (_nested_ok(), {}, TypeError, "nested function"),
        (train_logreg, {"eps": (0.1, 0.2)}, ValueError, r"eps must include 0.0"),
        (train_logreg, {"eps": (0.0, 1.5)}, ValueError, r"eps must hold numbers in \[0, 1\), got 1.5"),
        (train_logreg, {"eps": (0.0, 0.1, 0.1)}, ValueError, "must not repeat"),
        (train_logreg, {"seeds": 0}, ValueError, "seeds must be >= 1"),
        (train_logreg, {"seeds": []}, ValueError, "at least one seed"),
        (train_logreg, {"train_labels": Y_TRAIN.astype(float)}, TypeError, "train_labels must hold integer"),
        (train_logreg, {"noise": 0.2, "noise_kind": "bogus"}, ValueError, "noise_kind must be"),
        (train_logreg, {"select_on": "ece"}, ValueError, "select_on must be"),
        (train_logreg, {"num_classes": 2}, ValueError, "num_classes=2 but a label is 2"),
        (train_wrong_rows, {}, ValueError, r"val outputs of shape \(149, 3\); val_labels has 150 rows"),
        (train_logreg, {"test_labels": Y_TEST[:100]}, ValueError, r"test outputs of shape \(150, 3\); test_labels"),
    ],
)
def test_clear_errors(fn, extra, err, match):
    kw = {"workers": 1, "seeds": 1, "eps": (0.0, 0.1), **extra}
    with pytest.raises(err, match=match):
        sweep(fn, **_kw(**kw))


def test_docstring_example():
    result = doctest.testmod(sweep_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
