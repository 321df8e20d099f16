"""Unit tests of labelsmooth.study: readers, splits, the method registry, training records, statistics,
atomic results, and the claim paragraphs generated from synthetic records."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import labelsmooth as ls

pytest.importorskip("sklearn")

from labelsmooth.study import claims as C
from labelsmooth.study import methods as Me
from labelsmooth.study import metrics as M
from labelsmooth.study import stats as S
from labelsmooth.study import verdicts as V
from labelsmooth.study.data import (
    Dataset,
    DatasetError,
    discover,
    load_dataset,
    read_cifar10_binary,
    read_npz,
    split_dataset,
    validate_name,
)
from labelsmooth.study.runner import ResultsStore, StudyConfig, plan_jobs
from labelsmooth.study.train import Job, TrainConfig, penultimate_projection, run_job

# ----------------------------------------------------------------------------- readers


def write_cifar(path, labels, seed=0):
    """Write records in the official CIFAR-10 binary layout; return the uint8 pixel planes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    rec = np.concatenate([np.asarray(labels, np.uint8)[:, None], pixels], axis=1)
    rec.tofile(path)
    return pixels


def test_cifar_binary_reader_exact_values_and_shapes(tmp_path):
    labels = [3, 0, 9, 5, 1]
    pixels = write_cifar(tmp_path / "data_batch_1.bin", labels)
    x, y = read_cifar10_binary(tmp_path / "data_batch_1.bin")
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.float32
    assert y.tolist() == labels and y.dtype == np.int64
    # Record layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major (CHW).
    planes = pixels.reshape(5, 3, 32, 32)
    np.testing.assert_array_equal(x, planes.astype(np.float32) / np.float32(255))
    assert x[2, 1, 0, 5] == np.float32(pixels[2, 1024 + 5]) / np.float32(255)
    assert x[4, 2, 31, 31] == np.float32(pixels[4, 3071]) / np.float32(255)


def test_cifar_binary_reader_rejects_truncated_file_and_bad_labels(tmp_path):
    bad = tmp_path / "test_batch.bin"
    bad.write_bytes(b"\x01" * 3000)
    with pytest.raises(DatasetError, match="3073"):
        read_cifar10_binary(bad)
    write_cifar(bad, [12])
    with pytest.raises(DatasetError, match="label byte 12"):
        read_cifar10_binary(bad)


def test_cifar_dataset_from_data_dir(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    write_cifar(folder / "data_batch_1.bin", [i % 10 for i in range(30)], seed=1)
    write_cifar(folder / "data_batch_2.bin", [i % 10 for i in range(20)], seed=2)
    write_cifar(folder / "test_batch.bin", [i % 10 for i in range(10)], seed=3)
    assert discover(tmp_path) == ["cifar10"]
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x.shape == (50, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32)
    assert ds.is_image and ds.num_classes == 10
    with pytest.raises(DatasetError, match="--data-dir"):
        validate_name("cifar10", None)


def test_npz_reader(tmp_path):
    path = tmp_path / "mine.npz"
    x = np.random.default_rng(0).normal(size=(40, 5))
    y = np.array([7, 3] * 20)
    np.savez(path, x=x, y=y)
    ds = read_npz(path)
    assert ds.num_classes == 2 and ds.binary and ds.standardize
    assert ds.y[:4].tolist() == [1, 0, 1, 0]  # labels re-indexed in sorted order: 3 -> 0, 7 -> 1
    np.testing.assert_allclose(ds.x, x.astype(np.float32))
    # uint8 images with a predefined test split: scaled to [0, 1], channel axis added, CNN input.
    img = tmp_path / "img.npz"
    np.savez(
        img,
        x=np.full((12, 4, 4), 255, np.uint8),
        y=np.arange(12) % 3,
        x_test=np.zeros((6, 4, 4), np.uint8),
        y_test=np.arange(6) % 3,
    )
    ds = read_npz(img)
    assert ds.x.shape == (12, 1, 4, 4) and ds.x.max() == 1.0 and ds.x_test.shape == (6, 1, 4, 4)
    assert ds.is_image and not ds.standardize and ds.num_classes == 3
    assert discover(tmp_path) == [f"npz:{img}", f"npz:{path}"]
    # relative npz: paths are looked up in --data-dir
    assert validate_name("npz:mine.npz", tmp_path) == f"npz:{path}"


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x": np.zeros((4, 2))}, "lacks array"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "integer"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, int)}, "at least 2"),
        ({"x": np.zeros((4, 2)), "y": np.arange(5)}, "samples"),
        ({"x": np.array([{}, {}], dtype=object), "y": np.arange(2)}, "unpickling"),
    ],
)
def test_npz_reader_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=match):
        read_npz(path)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'.*digits"):
        validate_name("imagenet")


def test_mnist1d_is_generated_locally_pooled_and_leaves_global_rng_alone():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    ds = load_dataset("mnist1d")
    assert np.random.rand() == expected
    # The package's 4000 + 1000 partition is pooled: every seed draws its own test split.
    assert ds.x.shape == (5000, 40) and ds.x_test is None and ds.num_classes == 10
    assert abs(float(ds.x.mean())) < 0.1  # the package standardises the signals
    a, b = split_dataset(ds, seed=0), split_dataset(ds, seed=1)
    assert len(a.y_test) == 1000 and not np.array_equal(a.x_test, b.x_test)


def test_carved_binary_task_shares_the_parents_data():
    ds = load_dataset("digits:3v8")
    full = load_dataset("digits")
    keep = (full.y == 3) | (full.y == 8)
    np.testing.assert_array_equal(ds.x, full.x[keep])
    np.testing.assert_array_equal(ds.y, (full.y[keep] == 8).astype(np.int64))
    assert ds.binary and ds.parent == "digits"
    for bad in ("digits:3v3", "breast_cancer:0v1", "digits:3x8", "digits:3v12"):
        with pytest.raises(DatasetError, match=r"digits:3v8|classes 0-9"):
            validate_name(bad)


def test_split_is_stratified_disjoint_and_standardised_on_train_only():
    ds = load_dataset("breast_cancer")
    sp = split_dataset(ds, seed=0)
    n = len(sp.y_train) + len(sp.y_val) + len(sp.y_test)
    assert n == len(ds.y) and sp.info == {"n_train": len(sp.y_train), "n_val": len(sp.y_val), "n_test": len(sp.y_test)}
    np.testing.assert_allclose(sp.x_train.mean(axis=0), 0, atol=1e-4)
    for y in (sp.y_val, sp.y_test):
        assert abs(y.mean() - ds.y.mean()) < 0.03  # class balance preserved
    assert not np.allclose(split_dataset(ds, seed=1).y_test, sp.y_test)  # the seed changes the split


# ----------------------------------------------------------------------------- methods, planning, training


def test_plan_shares_trainings_and_restricts_focal_carved_and_binary_pairflip():
    cfg = StudyConfig(datasets=["digits"], methods=["ce", "ls", "ts"], eps=[0, 0.1, 0.2], noise=[0, 0.4], seeds=2)
    jobs = plan_jobs(cfg)
    assert len(jobs) == 2 * 2 * 3  # noise x seeds x {eps 0 (ce+ts), 0.1, 0.2}
    assert all(j.methods == ("ce", "ts") for j in jobs if j.eps == 0)
    assert {j.noise_kind for j in jobs if j.noise_level == 0} == {"none"}
    pair = StudyConfig(datasets=["digits"], methods=["ce"], eps=[0], noise=[0], seeds=1, noise_kind="pairflip")
    assert plan_jobs(pair)[0].key("ce") == plan_jobs(StudyConfig(["digits"], ["ce"], [0], [0], seeds=1))[0].key("ce")
    full = StudyConfig(
        datasets=["digits", "breast_cancer", "digits:3v8"],
        methods=list(Me.METHODS),
        eps=[0, 0.1],
        noise=[0, 0.5],
        noise_kind="symmetric,pairflip",
        seeds=1,
    )
    jobs = plan_jobs(full, {"digits": False, "breast_cancer": True, "digits:3v8": True})
    settings = lambda ds: {(j.noise_kind, j.noise_level) for j in jobs if j.dataset == ds}  # noqa: E731
    assert settings("digits") == {("none", 0.0), ("symmetric", 0.5), ("pairflip", 0.5)}
    assert settings("breast_cancer") == {("none", 0.0), ("symmetric", 0.5)}  # pair-flip = symmetric for K = 2
    assert settings("digits:3v8") == {("none", 0.0)}  # claim 4 is measured on clean labels
    assert {j.noise_level for j in jobs if "focal" in j.methods} == {0.0}
    # Forward correction (true or estimated T) is a noisy-label method: noisy runs only, its own training.
    for name in ("fc", "fc-est"):
        assert {j.noise_level for j in jobs if name in j.methods and j.dataset == "digits"} == {0.5}
        assert all(j.methods == (name,) for j in jobs if name in j.methods)
    zero = [j for j in jobs if j.dataset == "digits" and j.loss_id == "ls" and j.eps == 0 and j.noise_level == 0]
    assert zero[0].methods == ("ce", "ts", "ts-oracle")
    # A carved task trains ce and ls only.
    assert {m for j in jobs if j.dataset == "digits:3v8" for m in j.methods} == {"ce", "ls"}


def test_adding_a_method_is_one_registry_entry(monkeypatch):
    # A hypothetical method registered in the one table is planned, run and reported like the others.
    new = Me.Method(
        "half",
        "smoothing at half the grid value",
        lambda grid: [e / 2 for e in grid if e],
        Me.label_smoothing_loss,
        "ls",
    )
    monkeypatch.setitem(Me.METHODS, "half", new)
    jobs = plan_jobs(StudyConfig(["digits"], ["ce", "half"], [0, 0.2], [0], seeds=1))
    assert sorted((j.methods, j.eps) for j in jobs) == [(("ce",), 0.0), (("half",), 0.1)]
    from labelsmooth.cli import build_parser

    assert "half" in build_parser().study_parser.format_help()


def test_focal_loss_matches_the_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 4, (7,), generator=g)
    p = torch.softmax(z, 1)[torch.arange(7), y]
    expected = (-((1 - p) ** 3) * torch.log(p)).mean()
    assert torch.allclose(Me.FocalLoss(3.0)(z, y), expected, rtol=1e-12)
    zb = torch.randn(9, generator=g, dtype=torch.float64) * 4
    yb = torch.randint(0, 2, (9,), generator=g).double()
    pt = torch.where(yb > 0.5, torch.sigmoid(zb), 1 - torch.sigmoid(zb))
    assert torch.allclose(Me.FocalLoss(2.0)(zb, yb), (-((1 - pt) ** 2) * torch.log(pt)).mean(), rtol=1e-10)
    with pytest.raises(ValueError, match="gamma"):
        Me.FocalLoss(-1.0)


def test_nll_comes_from_logits_not_clamped_probabilities():
    z = torch.tensor([[100.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([1, 1])
    # Row 0 is a confident mistake: -log p = 100 exactly (a 1e-12 clamp would say 27.6).
    expected = (100.0 + np.log1p(np.exp(-100.0)) + np.log1p(np.exp(-2.0))) / 2
    assert M.nll(z, y) == pytest.approx(expected, rel=1e-12)
    assert M.nll(torch.tensor([-60.0]), torch.tensor([1])) == pytest.approx(60.0, rel=1e-12)


def test_penultimate_projection_is_the_orthogonal_projection_on_the_template_plane():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5))
    x = torch.randn(40, 4)
    y = torch.arange(40) % 5
    coords, labels = penultimate_projection(model, x, y)
    keep = np.isin(y.numpy(), [0, 1, 2])
    assert coords.shape == (int(keep.sum()), 2) and set(labels.tolist()) == {0, 1, 2}
    # Independent check: distances between projected points equal those under P = A (A^T A)^-1 A^T.
    with torch.no_grad():
        h = model[:-1](x[torch.from_numpy(keep)]).double().numpy()
        w = model[-1].weight.double().numpy()
    a = np.stack([w[1] - w[0], w[2] - w[0]], axis=1)
    proj = h @ (a @ np.linalg.inv(a.T @ a) @ a.T)
    dist = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(coords), dist(proj), atol=1e-9)


def test_selections_never_read_the_test_split():
    # The same data twice, the second with poisoned test labels: every choice made during and after
    # training (early-stopping steps, temperatures, weight decay, validation curves) must be identical.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    xt = rng.normal(size=(80, 8)).astype(np.float32)
    yt = (xt[:, 0] > 0).astype(np.int64) + (xt[:, 1] > 0)
    good = Dataset("toy", x, y, 3, x_test=xt, y_test=yt)
    bad = Dataset("toy", x, y, 3, x_test=xt, y_test=(yt + 1) % 3)
    cfg = TrainConfig(steps=30, hidden=(16,), batch_size=32, curve_points=6)
    for job in (
        Job("toy", "ls", 0.0, "symmetric", 0.5, 3, ("ce", "ts", "ts-oracle"), cfg),
        Job("toy", "nls", -0.2, "symmetric", 0.5, 3, ("nls",), cfg),
    ):
        a, b = run_job(job, good).records, run_job(job, bad).records
        for ra, rb in zip(a, b, strict=True):
            for key in (
                "es_step",
                "oracle_es_step",
                "curves",
                "val_accuracy",
                "val_accuracy_noisy",
                "val_nll",
                "val_ece_noisy",
                "es_val_accuracy_noisy",
                "oracle_es_val_accuracy",
                "temperature",
                "es_temperature",
                "oracle_es_temperature",
                "weight_decay",
                "train_accuracy",
                "memorized_fraction",
            ):
                if key in ra:
                    assert ra[key] == rb[key], key
            assert ra["test_accuracy"] != rb["test_accuracy"]  # the poison did reach the test metrics
    # The claims' choices read only validation fields: see tests/test_verdicts.py for every verdict.
    recs = []
    for s in range(4):
        recs.append(rec("ce", 0.0, noise=0.5, seed=s, val_accuracy_noisy=0.80, test_accuracy=0.80))
        recs.append(rec("ls", 0.1, noise=0.5, seed=s, val_accuracy_noisy=0.85, test_accuracy=0.81 + jitter(s)))
        recs.append(rec("ls", 0.3, noise=0.5, seed=s, val_accuracy_noisy=0.84, test_accuracy=0.95))
    args = ("digits", [("ls", 0.1), ("ls", 0.3)], ("ce", 0.0), ("symmetric", 0.5), "val_accuracy_noisy", True)
    d, picked = S.selected_difference(recs, *args, "test_accuracy")
    assert picked == {("ls", 0.1): 4} and d.mean == pytest.approx(0.01 + np.mean([jitter(s) for s in range(4)]))
    poisoned = [dict(r, test_accuracy=float(rng.random())) for r in recs]
    assert S.selected_difference(poisoned, *args, "test_accuracy")[1] == picked


def test_run_job_binary_uses_a_single_logit():
    ds = load_dataset("breast_cancer")
    res = run_job(Job("breast_cancer", "focal", 0.0, "none", 0.0, 1, ("focal",), TrainConfig(steps=3, hidden=(8,))), ds)
    (rec_,) = res.records
    assert rec_["binary"] and rec_["num_classes"] == 2 and rec_["memorized_fraction"] is None
    assert res.arrays[rec_["key"]]["probs"].ndim == 1


def test_memorisation_is_measured_against_the_noisy_labels():
    # A 4-class toy where the model can memorise everything: 100% of flips memorised, none corrected.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    ds = Dataset("toy", x, y, 4)
    cfg = TrainConfig(steps=60, hidden=(128,), batch_size=64, lr=1e-2, curve_points=2)
    r = run_job(Job("toy", "ls", 0.0, "symmetric", 0.4, 0, ("ce",), cfg), ds).records[0]
    assert r["train_accuracy"] > 0.97 and r["memorized_fraction"] > 0.9 and r["flipped_corrected_fraction"] < 0.1
    assert r["train_accuracy_clean"] < 0.8  # fitting the flipped labels means missing their clean ones


def test_results_store_round_trip_is_atomic_json(tmp_path):
    ds = load_dataset("digits")
    res = run_job(Job("digits", "ls", 0.0, "none", 0.0, 0, ("ce",), TrainConfig(steps=2, hidden=(8,))), ds)
    store = ResultsStore(tmp_path)
    store.add(res)
    assert not list(tmp_path.glob("*.tmp*")) and not list((tmp_path / "probs").glob("*.tmp*"))
    data = json.loads((tmp_path / "results.json").read_text())
    (r,) = data["runs"]
    again = ResultsStore(tmp_path)
    assert again.done(r["key"])
    _probs, labels = again.load_probs(r)
    np.testing.assert_array_equal(labels, res.arrays[r["key"]]["labels"])
    assert again.load_projection(r) is not None
    with np.load(tmp_path / r["probs_file"], allow_pickle=False) as f:
        assert set(f.files) == {"probs", "labels", "proj", "proj_labels"}


# ----------------------------------------------------------------------------- statistics


def test_t_interval():
    e = S.estimate([1.0, 2.0, 3.0])
    # mean 2, s = 1, t_{0.975, 2} = 4.3027: half-width 4.3027 / sqrt(3)
    assert e.mean == 2 and e.half == pytest.approx(4.302653 / 3**0.5, rel=1e-5) and e.n == 3
    assert S.estimate([0.5]).half is None and S.estimate([None]) is None
    assert S.fmt(e) == "2.000 ± 2.484" and S.fmt(S.estimate([0.5])) == "0.500"


def test_paired_difference_pairs_by_seed():
    recs = [rec("ce", 0.0, seed=s, ece=0.1 * s) for s in range(3)] + [
        rec("ls", 0.1, seed=s, ece=0.1 * s + 0.05) for s in range(3)
    ]
    d = S.paired_difference(recs, "digits", ("ls", 0.1), ("ce", 0.0), S.CLEAN, "ece")
    # The seed effect is shared and cancels: a constant +0.05 with zero spread.
    assert d.mean == pytest.approx(0.05) and d.half == pytest.approx(0, abs=1e-12) and d.excludes_zero


def test_welch_difference_and_detectable_difference_match_scipy():
    from scipy import stats

    a = np.array([0.10, 0.13, 0.08, 0.12, 0.11])
    b = np.array([0.02, 0.05, 0.01, 0.03])
    d = S.welch_difference(S.estimate(a), a.std(ddof=1), S.estimate(b), b.std(ddof=1))
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.low == pytest.approx(ci.low, rel=1e-9) and d.high == pytest.approx(ci.high, rel=1e-9)
    # Power 0.8 at the detectable difference (noncentral t, the exact calculation it approximates).
    n, sd = 10, 0.02
    delta = S.detectable_difference(sd, n)
    nc = delta / (sd / np.sqrt(n))
    tc = stats.t.ppf(0.975, n - 1)
    power = 1 - stats.nct.cdf(tc, n - 1, nc) + stats.nct.cdf(-tc, n - 1, nc)
    assert 0.78 < power < 0.83


# ----------------------------------------------------------------------------- claim paragraphs


def rec(
    method,
    eps,
    *,
    dataset="digits",
    noise=0.0,
    kind="symmetric",
    seed=0,
    binary=False,
    k=10,
    n_test=360,
    parent=None,
    **metrics,
):
    r = dict(
        dataset=dataset,
        method=method,
        label_smoothing=eps,
        noise_level=noise,
        noise_kind=kind if noise else "none",
        noise_rate=noise * 0.9,
        seed=seed,
        num_classes=2 if binary else k,
        binary=binary,
        parent_dataset=parent,
        splits={"n_test": n_test},
        test_accuracy=0.97,
        train_accuracy=1.0,
        train_accuracy_clean=1.0,
        nll=0.1,
        ece=0.02,
        ece_quantile=0.02,
        classwise_ece=0.01,
        brier=0.05,
        mean_confidence=0.97,
        train_test_gap=0.03,
        memorized_fraction=None,
        flipped_corrected_fraction=None,
        val_accuracy=0.97,
        val_ece=0.02,
        val_nll=0.1,
        val_accuracy_noisy=0.97,
        val_ece_noisy=0.02,
        val_nll_noisy=0.1,
        es_test_accuracy=0.97,
        es_val_accuracy=0.97,
        es_val_accuracy_noisy=0.97,
        es_ece=0.02,
        es_nll=0.1,
        oracle_es_test_accuracy=0.97,
        train_fraction=1.0,
        failure=None,
        curves={"val_nll": [0.2, 0.1, 0.1]},
    )
    r.update(metrics)
    return r


def jitter(seed):
    return (seed - 1) * 0.002  # a small seed-to-seed spread so that intervals exist


def test_summary_table_marks_a_temperature_at_its_bound():
    from labelsmooth.study.report import summary_rows

    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s))
        recs.append(rec("ts", 0.0, seed=s, temperature=0.1 if s else 0.9, temperature_at_bound=bool(s)))
    rows = {row["method"]: row for row in summary_rows(recs)}
    assert "ts (T at bound in 2/3, left out)" in rows and "ce" in rows
    assert rows["ts (T at bound in 2/3, left out)"]["seeds"] == "1"


def test_verdicts_are_withheld_below_three_seeds_and_in_smoke_tests():
    def grid(n):
        return [
            r
            for s in range(n)
            for r in (rec("ce", 0.0, seed=s, ece=0.02 + jitter(s)), rec("ls", 0.1, seed=s, ece=0.20 + jitter(s)))
        ]

    for n in (1, 2):
        out = C.claim_paragraphs(grid(n))
        assert "Verdicts withheld: fewer than 3 seeds" in out["calibration"]
        assert "contradicts the claim" not in out["calibration"] and "no verdict" in out["calibration"]
        assert "every verdict is withheld" in out["statistics"]
        assert {v.outcome for v in C.study_verdicts(grid(n))} == {"withheld"}
    assert "contradicts the claim" in C.claim_paragraphs(grid(3))["calibration"]
    assert "contradicts" in {v.outcome for v in C.study_verdicts(grid(3))}
    smoke = C.claim_paragraphs(grid(5), smoke=True)
    assert "contradicts the claim" not in smoke["calibration"] and "--quick is a smoke test" in smoke["calibration"]
    assert "smoke test" in smoke["statistics"]
    assert {v.outcome for v in C.study_verdicts(grid(5), smoke=True)} == {"withheld"}


def test_tolerance_is_at_least_two_test_examples():
    d = S.Estimate(0.01, 0.002, 10)
    assert C.verdict(d, "test_accuracy", False, n_test=114) == "same"  # 0.01 < 2/114
    assert C.verdict(d, "test_accuracy", False, n_test=10000) == "better"
    assert C.verdict(d, "es_ece", True, n_test=114) == "same"


def test_claims_without_baseline_or_runs():
    assert C.claim_paragraphs([rec("ls", 0.1)])["calibration"].startswith("Not measured")
    assert all(v.startswith("Not measured") for k, v in C.claim_paragraphs([]).items() if k != "statistics")


def test_torch_global_seed_is_what_run_job_sets():
    # run_job seeds torch itself, so a caller's RNG use before it cannot change a result.
    ds = load_dataset("breast_cancer")
    cfg = TrainConfig(steps=2, hidden=(4,))
    a = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    torch.rand(100)
    b = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    assert a == b


@pytest.mark.parametrize(
    "name",
    [
        "study.claims",
        "study.stats",
        "study.train",
        "study.methods",
        "study.metrics",
        "study.data",
        "study.findings",
        "evaluation.verdicts",
    ],
)
def test_study_docstring_examples(name):
    # The verdict object lives with the evaluation engine (labelsmooth.study.verdicts re-exports it).
    import doctest
    import importlib

    module = importlib.import_module(f"labelsmooth.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- negative and online smoothing


def test_negative_smoothing_runs_on_noisy_labels_only_and_online_smoothing_everywhere():
    cfg = StudyConfig(
        ["digits"], ["ce", "ls", "nls", "ols"], [-0.5, -0.2, 0, 0.1], [0, 0.5], seeds=1, noise_kind="symmetric"
    )
    jobs = plan_jobs(cfg)
    by = {(j.methods, j.eps, j.noise_level) for j in jobs}
    assert (("nls",), -0.5, 0.5) in by and (("nls",), -0.2, 0.5) in by
    assert not any(j.methods == ("nls",) and j.noise_level == 0 for j in jobs)
    assert {(j.eps, j.noise_level) for j in jobs if j.methods == ("ols",)} == {(Me.OLS_EPS, 0.0), (Me.OLS_EPS, 0.5)}
    assert not any(j.eps < 0 for j in jobs if "ls" in j.methods)  # uniform smoothing takes eps > 0 only


def test_study_losses_for_negative_and_online_smoothing():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    nls = Me.label_smoothing_loss(-0.3, binary=False)
    want = 1.3 * torch.nn.functional.cross_entropy(z, y) - 0.3 * (-torch.log_softmax(z, 1)).mean(1).mean()
    torch.testing.assert_close(nls(z, y), want)
    # Online smoothing on a single-logit binary model is the two-class softmax of (0, z).
    ols = Me.online_smoothing_loss(0.1, binary=True)
    zb, yb = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([1.0, 0.0, 0.0])
    two = torch.stack([torch.zeros(3), zb], 1)
    soft = ls.smooth_labels(torch.arange(2), 2, 0.1)
    want = 0.5 * torch.nn.functional.cross_entropy(two, yb.long()) + 0.5 * torch.nn.functional.cross_entropy(
        two, soft[yb.long()]
    )
    torch.testing.assert_close(ols(zb, yb), want)
    before = ols.ols.soft_labels.clone()
    ols.epoch_end(None)  # samples 0 and 1 were right: rows 0 and 1 become their softmax
    assert not torch.equal(ols.ols.soft_labels, before)
    torch.testing.assert_close(ols.ols.soft_labels[1], torch.softmax(two[0], 0))


def test_a_tiny_study_with_negative_and_online_smoothing_reports_them(tmp_path):
    from labelsmooth.cli import main

    out = tmp_path / "run"
    argv = [
        "study",
        "--datasets",
        "breast_cancer",
        "--methods",
        "ce,ls,nls,ols",
        "--eps",
        "-0.2,0,0.1",
        "--noise",
        "0,0.5",
        "--seeds",
        "3",
        "--steps",
        "40",
        "--hidden",
        "8",
        "--train-fractions",
        "1",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = list(ResultsStore(out).records.values())
    assert {(r["method"], r["label_smoothing"]) for r in records} >= {("nls", -0.2), ("ols", Me.OLS_EPS)}
    nls = [r for r in records if r["method"] == "nls"]
    assert {r["warmup_steps"] for r in nls} == {20} and all(r["weight_decay"] in Me.NLS_WEIGHT_DECAYS for r in nls)
    text = C.claim_paragraphs(records)["noise"]
    assert "Negative label smoothing against ce, last step" in text
    assert "Online label smoothing against ce, early-stopped" in text
    vs = [v for v in C.study_verdicts(records) if v.claim == "comparators"]
    assert {v.question for v in vs} == {"nls vs ce", "ols vs ce"}
    findings = (out / "findings.md").read_text()
    assert "| nls vs ce |" in findings and "| ols vs ce |" in findings


def test_figure_rows_wrap_to_fit_a_1400px_window():
    pytest.importorskip("matplotlib")
    from labelsmooth.study import figures as Fg

    for n in (1, 3, 5, 7):
        fig, axes = Fg._grid(n)
        width, height = fig.get_size_inches()
        assert len(axes) == n == len(fig.axes)  # no empty cells left on the figure
        assert width <= Fg.MAX_ROW_INCHES and height == pytest.approx(3.4 * -(-n // 3))


def test_carved_tasks_train_ls_at_the_headline_and_the_matched_eps():
    tasks = ["mnist1d:k2s0", "mnist1d:k3s1", "mnist1d:k5s0", "mnist1d:k10s0", "digits:3v8"]
    cfg = StudyConfig(datasets=tasks, methods=list(Me.METHODS), eps=[-0.2, 0, 0.02, 0.1, 0.3], noise=[0, 0.5], seeds=2)
    jobs = plan_jobs(cfg, {"mnist1d:k2s0": True, "digits:3v8": True})
    t10 = 1 - 0.1 + 0.1 / 10  # the 10-class smoothed top target at eps 0.1
    # Solved from the target definitions: 1 - e/2 (one logit), 1 - e + e/K (K classes).
    want = {2: 2 * (1 - t10), 3: (1 - t10) / (1 - 1 / 3), 5: (1 - t10) / (1 - 1 / 5), 10: None}
    for ds in tasks:
        mine = [j for j in jobs if j.dataset == ds]
        assert {m for j in mine for m in j.methods} == {"ce", "ls"} and {j.noise_level for j in mine} == {0.0}
        assert {j.eps for j in mine if j.methods == ("ce",)} == {0.0}
        k = 2 if ds == "digits:3v8" else int(ds.split(":k")[1].split("s")[0])
        eps = sorted(j.eps for j in mine if j.methods == ("ls",) and j.seed == 0)
        extra = want[k]
        assert eps == pytest.approx(sorted([0.1] + ([] if extra is None else [extra]))), ds
        assert all(j.train_fraction == 1 for j in mine)
    # A carved BASE:AvB task is binary whether or not the caller's map says so.
    alone = plan_jobs(StudyConfig(["digits:3v8"], ["ce", "ls"], [0, 0.1], [0], seeds=1))
    assert sorted(j.eps for j in alone if j.methods == ("ls",)) == pytest.approx([0.1, want[2]])
    # Without the matched eps: the headline alone.
    plain = plan_jobs(replace(cfg, matched=False), {"mnist1d:k2s0": True})
    assert {j.eps for j in plain if j.dataset == "mnist1d:k2s0" and j.methods == ("ls",)} == {0.1}


def test_training_fraction_sweep_adds_clean_ce_and_headline_ls_on_uncarved_datasets_only():
    cfg = StudyConfig(
        datasets=["digits", "breast_cancer", "mnist1d:k2s0"],
        methods=["ce", "ls", "ts"],
        eps=[0, 0.05, 0.1, 0.3],
        noise=[0, 0.5],
        seeds=2,
        train_fractions=[0.1, 0.3, 1.0],
    )
    jobs = plan_jobs(cfg, {"breast_cancer": True, "mnist1d:k2s0": True})
    small = [j for j in jobs if j.train_fraction < 1]
    assert {j.dataset for j in small} == {"digits", "breast_cancer"}
    assert {(j.methods, j.eps) for j in small} == {(("ce",), 0.0), (("ls",), 0.1)}
    assert {(j.noise_kind, j.noise_level) for j in small} == {("none", 0.0)}
    for ds in ("digits", "breast_cancer"):
        for frac in (0.1, 0.3):
            cell = [j for j in small if j.dataset == ds and j.train_fraction == frac]
            assert sorted((j.methods, j.seed) for j in cell) == [
                (("ce",), 0),
                (("ce",), 1),
                (("ls",), 0),
                (("ls",), 1),
            ]
    keys = [j.key(m) for j in jobs for m in j.methods]
    assert len(keys) == len(set(keys))  # the fraction is part of a record's key
    full = [j for j in jobs if j.train_fraction == 1]
    assert len(jobs) == len(full) + len(small) and full == plan_jobs(
        replace(cfg, train_fractions=[1.0]),
        {
            "breast_cancer": True,
            "mnist1d:k2s0": True,
        },
    )


def test_run_job_records_three_checkpoints_and_memorisation():
    ds = load_dataset("digits")
    cfg = TrainConfig(steps=12, hidden=(32,), curve_points=3)
    job = Job("digits", "ls", 0.0, "symmetric", 0.5, 0, ("ce", "ts", "ts-oracle"), cfg)
    res = run_job(job, ds)
    ce, ts, tso = res.records
    assert (ce["method"], ts["method"], tso["method"]) == ("ce", "ts", "ts-oracle")
    for key in (
        "test_accuracy",
        "nll",
        "ece",
        "ece_quantile",
        "val_accuracy",
        "val_accuracy_noisy",
        "val_nll",
        "val_nll_noisy",
        "val_ece",
        "val_ece_noisy",
        "memorized_fraction",
        "flipped_corrected_fraction",
        "train_test_gap",
    ):
        for prefix in ("", "es_", "oracle_es_"):
            assert prefix + key in ce, prefix + key
    assert ce["curves"]["step"] == [4, 8, 12] and "test_accuracy" not in ce["curves"]
    # Early stopping on the noisy validation labels a user has; the oracle on the clean ones (first maximum).
    noisy, clean = ce["curves"]["val_accuracy_noisy"], ce["curves"]["val_accuracy"]
    assert ce["es_step"] == [4, 8, 12][noisy.index(max(noisy))]
    assert ce["oracle_es_step"] == [4, 8, 12][clean.index(max(clean))]
    assert ce["es_val_accuracy_noisy"] == pytest.approx(max(noisy))
    assert ce["oracle_es_val_accuracy"] == pytest.approx(max(clean))
    # Level 0.5 of the breakdown rate 0.9: 45% of the training labels flipped.
    assert ce["noise_rate"] == pytest.approx(0.45) and abs(ce["realized_noise_rate"] - 0.45) < 0.01
    assert 0 <= ce["memorized_fraction"] + ce["flipped_corrected_fraction"] <= 1
    # The gap uses the clean training labels.
    assert ce["train_test_gap"] == pytest.approx(ce["train_accuracy_clean"] - ce["test_accuracy"])
    # Temperature scaling keeps the argmax; ts fits on the noisy validation labels, ts-oracle on the clean ones.
    assert ts["test_accuracy"] == ce["test_accuracy"] and ts["temperature"] > 0
    assert tso["temperature"] != ts["temperature"]
    lo, hi = Me.TEMPERATURE_BOUNDS
    assert all(lo <= r[p + "temperature"] <= hi for r in (ts, tso) for p in ("", "es_", "oracle_es_"))
    assert ce["failure"] is None and ce["weight_decays_tried"] == [0.0] and ce["warmup_steps"] == 0
    probs = res.arrays[ce["key"]]["probs"]
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    again = run_job(Job("digits", "ls", 0.0, "symmetric", 0.5, 0, ("ce",), cfg), ds).records[0]
    assert again["test_accuracy"] == ce["test_accuracy"] and again["nll"] == ce["nll"]
    clean = run_job(Job("digits", "ls", 0.1, "none", 0.0, 0, ("ls",), cfg), ds)
    assert "proj" in clean.arrays[clean.records[0]["key"]]  # seed 0, clean, K >= 3: Müller et al.'s picture
    # Clean labels: the noisy and the clean validation labels are the same, so the two early stops coincide.
    c = clean.records[0]
    assert c["val_accuracy_noisy"] == c["val_accuracy"] and c["es_step"] == c["oracle_es_step"]
    for key in ("test_accuracy", "nll", "ece"):
        assert c["es_" + key] == c["oracle_es_" + key]


def test_run_job_on_a_training_fraction_subsamples_the_training_split_only():
    ds = load_dataset("digits")
    cfg = TrainConfig(steps=20, hidden=(16,), curve_points=2)
    whole = split_dataset(ds, 1, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    job = Job("digits", "ls", 0.0, "none", 0.0, 1, ("ce",), cfg, train_fraction=0.3)
    res = run_job(job, ds)
    (r,) = res.records
    n = whole.info["n_train"]
    assert r["splits"] == {"n_train": round(0.3 * n), "n_val": whole.info["n_val"], "n_test": whole.info["n_test"]}
    assert r["train_fraction"] == 0.3 and "frac=0.3" in r["key"] and r["key"] != job.key("ce").replace("|frac=0.3", "")
    np.testing.assert_array_equal(res.arrays[r["key"]]["labels"], whole.y_test)  # the same test split
    # The subsample is stratified: each class keeps its share of the training split (to within one example).
    sub = split_dataset(
        ds, 1, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, max_train=r["splits"]["n_train"]
    )
    np.testing.assert_array_equal(sub.y_val, whole.y_val)
    np.testing.assert_array_equal(sub.y_test, whole.y_test)
    share = np.bincount(whole.y_train, minlength=10) / n
    assert np.abs(np.bincount(sub.y_train, minlength=10) - share * len(sub.y_train)).max() <= 1.0
    assert "proj" not in res.arrays[r["key"]]  # the penultimate picture is drawn from full-data runs only


def test_negative_smoothing_chooses_its_weight_decay_and_warms_up_with_cross_entropy():
    ds = load_dataset("digits")
    cfg = TrainConfig(steps=24, hidden=(16,), curve_points=4)
    (r,) = run_job(Job("digits", "nls", -0.2, "symmetric", 0.5, 0, ("nls",), cfg), ds).records
    assert r["weight_decays_tried"] == list(Me.NLS_WEIGHT_DECAYS) and r["weight_decay"] in Me.NLS_WEIGHT_DECAYS
    assert r["warmup_steps"] == round(Me.WARMUP_FRACTION * 24) > 0
    (e,) = run_job(Job("digits", "fc-est", 0.0, "symmetric", 0.5, 0, ("fc-est",), cfg), ds).records
    assert e["warmup_steps"] == round(Me.WARMUP_FRACTION * 24) > 0 and e["weight_decays_tried"] == [0.0]
    assert e["failure"] is None and 0 <= e["test_accuracy"] <= 1
    (f,) = run_job(Job("digits", "fc", 0.0, "pairflip", 0.5, 0, ("fc",), cfg), ds).records
    assert f["warmup_steps"] == 0 and f["noise_rate"] == pytest.approx(0.25) and math.isfinite(f["nll"])


def test_estimated_forward_correction_survives_a_budget_too_short_to_warm_up():
    # round(0.5 * 1) == 0 warm-up steps: the estimate must still be made before the corrected loss is used.
    ds = load_dataset("breast_cancer")
    cfg = TrainConfig(steps=1, hidden=(4,), curve_points=1)
    (r,) = run_job(Job("breast_cancer", "fc-est", 0.0, "symmetric", 0.5, 0, ("fc-est",), cfg), ds).records
    assert r["steps"] == 1 and math.isfinite(r["nll"])


def test_failure_reason_flags_divergence_and_collapse():
    from labelsmooth.study.train import COLLAPSE_MARGIN, DIVERGED_LOGIT, failure_reason

    ok = {"train_loss": [2.0, 0.5], "train_accuracy_clean": [0.3, 0.9]}
    z = {"train": torch.zeros(4, 10), "val": torch.randn(5, 10), "test": torch.zeros(3, 10)}
    assert failure_reason(ok, z, 10) is None
    assert failure_reason(dict(ok, train_loss=[2.0, float("nan")]), z, 10).startswith("diverged: non-finite")
    assert failure_reason(dict(ok, train_loss=[2.0, float("-inf")]), z, 10).startswith("diverged")
    inf = dict(z, test=torch.tensor([[float("inf")] + [0.0] * 9]))
    assert failure_reason(ok, inf, 10) == "diverged: non-finite test logits"
    huge = dict(z, val=torch.full((2, 10), -1.5 * DIVERGED_LOGIT))
    assert failure_reason(ok, huge, 10).startswith("diverged: a validation logit")
    assert failure_reason(ok, dict(z, val=torch.full((2, 10), 0.9 * DIVERGED_LOGIT)), 10) is None
    for k in (2, 10):
        floor = 1 / k + COLLAPSE_MARGIN * (1 - 1 / k)  # chance plus a tenth of the way to 1
        zk = {"val": torch.zeros(3, k) if k > 2 else torch.zeros(3)}
        assert failure_reason({"train_accuracy_clean": [0.9, floor - 0.01]}, zk, k).startswith("collapsed")
        assert failure_reason({"train_accuracy_clean": [0.1, floor + 0.01]}, zk, k) is None


def test_forward_correction_with_the_identity_is_cross_entropy_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(9, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 5, (9,), generator=g)
    loss = Me.ForwardCorrectionLoss(torch.eye(5, dtype=torch.float64))(z, y)
    (grad,) = torch.autograd.grad(loss, z)
    z2 = z.detach().clone().requires_grad_()
    want = torch.nn.functional.cross_entropy(z2, y)
    (want_grad,) = torch.autograd.grad(want, z2)
    # T's zeros are clamped to 1e-12 before the log: the noisy-label probability of a row gains at most
    # 1e-12 x (1 - p_y), so its loss moves by at most 1e-12 / p_y (and its gradient by as much); float64 adds ~1e-15.
    tol = 1e-12 / float(torch.softmax(z.detach(), 1)[torch.arange(9), y].min())
    torch.testing.assert_close(loss, want, rtol=0, atol=tol)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=tol)


def test_forward_correction_is_the_nll_of_softmax_times_t():
    g = torch.Generator().manual_seed(1)
    k = 4
    t = torch.rand(k, k, generator=g, dtype=torch.float64) + 0.05
    t = t / t.sum(1, keepdim=True)
    z = (torch.randn(11, k, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, k, (11,), generator=g)
    loss = Me.ForwardCorrectionLoss(t)(z, y)
    z2 = z.detach().clone().requires_grad_()
    direct = -torch.log((torch.softmax(z2, 1) @ t)[torch.arange(11), y]).mean()
    torch.testing.assert_close(loss, direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(direct, z2)[0], rtol=1e-10, atol=0)
    # One logit: the two-class logits (0, z), targets given as floats 0/1 as BCE takes them.
    t2 = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    zb = torch.randn(7, generator=g, dtype=torch.float64) * 2
    yb = torch.randint(0, 2, (7,), generator=g)
    p1 = torch.sigmoid(zb)
    direct = -torch.log((torch.stack([1 - p1, p1], 1) @ t2)[torch.arange(7), yb]).mean()
    torch.testing.assert_close(Me.ForwardCorrectionLoss(t2)(zb, yb.double()), direct, rtol=1e-12, atol=0)
    # The registry's factory uses the noise's own T; the estimating one waits for prepare().
    ctx = Me.LossContext(num_classes=k, noise_kind="pairflip", noise_rate=0.3)
    fc = Me.forward_correction_loss(0.0, False, ctx)
    direct = -torch.log((torch.softmax(z2, 1) @ Me.noise_transition("pairflip", 0.3, k))[torch.arange(11), y]).mean()
    p_noisy = (torch.softmax(z2, 1) @ Me.noise_transition("pairflip", 0.3, k))[torch.arange(11), y]
    tol = 1e-12 / float(p_noisy.detach().min())  # the 1e-12 clamp of T's zeros, as above
    torch.testing.assert_close(fc(z.detach(), y), direct.detach(), rtol=0, atol=tol)
    est = Me.estimated_correction_loss(0.0, False, ctx)
    with pytest.raises(RuntimeError, match="prepare"):
        est(z.detach(), y)
    est.prepare(z.detach(), y)
    want = Me.estimate_transition(torch.softmax(z.detach(), 1))
    torch.testing.assert_close(est.log_t.exp(), want.clamp(min=1e-12), rtol=1e-12, atol=0)


def test_estimate_transition_recovers_a_known_matrix_from_anchor_points():
    rng = np.random.default_rng(0)
    k = 5
    t = rng.uniform(0.0, 0.1, (k, k))
    np.fill_diagonal(t, 0)
    np.fill_diagonal(t, 1 - t.sum(1))  # diagonally dominant rows summing to 1
    # p(noisy | x) = sum_i p(clean i | x) T[i]: 60 anchors per class (one-hot clean posterior), 600 mixtures.
    w = np.concatenate([np.repeat(np.eye(k), 60, axis=0), rng.dirichlet(np.ones(k), 600)])
    probs = torch.from_numpy(w @ t)
    est = Me.estimate_transition(probs)
    torch.testing.assert_close(est, torch.from_numpy(t), rtol=1e-12, atol=1e-12)
    assert est.dtype == torch.float64


@pytest.mark.parametrize("kind,k", [("symmetric", 2), ("symmetric", 10), ("pairflip", 3), ("pairflip", 10)])
def test_noise_transition_matches_the_realised_noise_of_labelsmooth_noise(kind, k):
    from labelsmooth import noise

    rate = 0.3
    t = Me.noise_transition(kind, rate, k)
    torch.testing.assert_close(t.sum(1), torch.ones(k, dtype=torch.float64))
    y = np.random.default_rng(k).integers(0, k, 100_000)
    flip = noise.symmetric if kind == "symmetric" else noise.pairflip
    realised = torch.as_tensor(noise.transition_matrix(y, flip(y, rate, k, seed=0), k))
    # About 10^4 labels per class: the binomial standard error of an entry is below 0.005.
    torch.testing.assert_close(realised, t, rtol=0, atol=0.02)
    assert torch.equal(Me.noise_transition("none", 0.0, k), torch.eye(k, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise kind"):
        Me.noise_transition("random", 0.2, k)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_matched_eps_gives_the_reference_top_target(k):
    for eps in (0.01, 0.05, 0.1, 0.2):
        m = Me.matched_eps(eps, k)
        assert Me.top_target(m, k) == pytest.approx(Me.top_target(eps, 10), abs=1e-6)
        # The definitions: the one-logit target y(1 - e) + e/2 puts 1 - e/2 on the true class; K classes 1 - e + e/K.
        assert Me.top_target(m, k) == pytest.approx(1 - m / 2 if k == 2 else 1 - m + m / k)
    assert Me.matched_eps(0.1, 10) == 0.1
    assert Me.matched_eps(0.1, 2, reference_classes=2) == pytest.approx(0.1)


def test_ksweep_tasks_have_k_balanced_classes_of_one_size():
    from labelsmooth.study.data import KSWEEP_SIZE, is_ksweep, ksweep_classes

    parent = load_dataset("digits")
    rows = {parent.x[i].tobytes(): int(parent.y[i]) for i in range(len(parent.y))}
    for name in ("digits:k2s0", "digits:k3s1", "digits:k5s0", "digits:k10s0"):
        k = int(name.split(":k")[1].split("s")[0])
        ds = load_dataset(name)
        assert is_ksweep(name) and ds.num_classes == k and ds.binary == (k == 2) and ds.parent == "digits"
        assert len(ds.y) == KSWEEP_SIZE["digits"] and ds.x.shape[1:] == parent.x.shape[1:]
        counts = np.bincount(ds.y, minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1  # classes 0..K-1, balanced
        classes = ksweep_classes(name)
        assert len(classes) == len(set(classes)) == k and classes == sorted(classes)
        # Every example is one of the parent's, relabelled by the position of its class among the K.
        orig = np.array([rows[ds.x[i].tobytes()] for i in range(len(ds.y))])
        np.testing.assert_array_equal(np.asarray(classes)[ds.y], orig)
        again = load_dataset(name)
        np.testing.assert_array_equal(again.x, ds.x)
        np.testing.assert_array_equal(again.y, ds.y)
    assert ksweep_classes("digits:k10s0") == list(range(10))
    assert len({tuple(ksweep_classes(f"digits:k3s{s}")) for s in range(4)}) > 1  # subsets differ
    assert not is_ksweep("digits:3v8") and not is_ksweep("digits")
    for bad in ("digits:k1s0", "digits:k11s0", "breast_cancer:k2s0", "digits:kxs0", "digits:k2sx"):
        with pytest.raises(DatasetError, match=r"K-sweep task is BASE:kKsS"):
            validate_name(bad)


def test_claim_calibration_paragraph_prints_the_verdicts():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, ece=0.016 + jitter(s), mean_confidence=0.975, test_accuracy=0.975, nll=0.09))
        recs.append(
            rec(
                "ls",
                0.1,
                seed=s,
                ece=0.117 + jitter(s),
                test_accuracy=0.977,
                nll=0.2 + jitter(s),
                val_ece_noisy=0.11,
                val_nll_noisy=0.2,
            )
        )
        recs.append(rec("ls", 0.3, seed=s, ece=0.3, nll=0.5, val_ece_noisy=0.25, val_nll_noisy=0.5))
        recs.append(rec("ts", 0.0, seed=s, ece=0.012 + jitter(s), temperature=1.2, nll=0.085 + jitter(s)))
    text = C.claim_paragraphs(recs)["calibration"]
    assert text.startswith("digits, clean labels: ce had test ECE 0.016")
    assert "close to calibrated on average (mean confidence 0.975, accuracy 0.975)" in text
    assert "ECE over the eps grid: ls eps=0.1 0.117; ls eps=0.3 0.300." in text
    assert "T = 1.20" in text and "n = 3 seed(s) x 360 test examples" in text
    vs = {(v.question, v.metric): v for v in C.study_verdicts(recs) if v.claim == "calibration"}
    # eps 0.1 is chosen on validation every time; values are ce's minus smoothing's (positive = better calibrated).
    assert vs[("ls vs ce", "ece")].values == pytest.approx([0.016 - 0.117] * 3)
    assert vs[("ls vs ce", "nll")].values == pytest.approx([0.09 - 0.2 - jitter(s) for s in range(3)])
    assert vs[("ls vs ce+ts", "ece")].values == pytest.approx([0.012 - 0.117] * 3)
    for v in vs.values():
        assert v.outcome == "contradicts" and f"<<{v.anchor}>>{v.text()}" in text
    assert "Holm-level interval), contradicts the claim" in text


def test_claim_noise_selects_on_noisy_validation_labels_and_reports_early_stopping():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, test_accuracy=0.97))
        recs.append(
            rec(
                "ce",
                0.0,
                noise=0.5,
                seed=s,
                test_accuracy=0.70 + jitter(s),
                es_test_accuracy=0.85 + jitter(s),
                oracle_es_test_accuracy=0.86,
                memorized_fraction=1.0,
            )
        )
        recs.append(
            rec(
                "ls",
                0.1,
                noise=0.5,
                seed=s,
                test_accuracy=0.71 + jitter(s),
                es_test_accuracy=0.85 + jitter(s),
                memorized_fraction=0.99,
                val_accuracy_noisy=0.72,
                es_val_accuracy_noisy=0.75,
            )
        )
        # Best on the clean validation labels and on test, worse on the noisy validation labels: never chosen.
        recs.append(
            rec(
                "ls",
                0.6,
                noise=0.5,
                seed=s,
                test_accuracy=0.90,
                es_test_accuracy=0.9,
                val_accuracy=0.99,
                val_accuracy_noisy=0.6,
                es_val_accuracy_noisy=0.6,
            )
        )
    text = C.claim_paragraphs(recs)["noise"]
    assert text.startswith("digits, symmetric noise at level 0.5 of the breakdown rate (45% of training labels")
    assert (
        "ce's test accuracy was 0.700 at the last step (0.970 with clean labels), 0.850 early-stopped on the noisy "
        "validation labels and 0.860 early-stopped on clean ones (an oracle)." in text
    )
    assert "Smoothing (ls eps=0.1 3x) against ce, last step, test accuracy" in text
    assert "ls eps=0.6" not in text.split("[n = ")[0]
    vs = [v for v in C.study_verdicts(recs) if v.claim == "noise"]
    assert [v.setting for v in vs] == ["symmetric 0.5, last step", "symmetric 0.5, early-stopped"]
    assert vs[0].values == pytest.approx([0.01] * 3) and vs[1].values == pytest.approx([0.0] * 3)
    assert [v.outcome for v in vs] == ["supports", "same"]
    assert "eps and the early-stopping step chosen on the noisy validation labels" in text


def test_claim_overfitting_measures_continued_training_and_memorisation():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, test_accuracy=0.90 + jitter(s), es_test_accuracy=0.95, nll=0.4, es_nll=0.3))
        recs.append(rec("ls", 0.1, seed=s, test_accuracy=0.94, es_test_accuracy=0.95, nll=0.31, es_nll=0.3))
        recs.append(rec("ce", 0.0, noise=0.5, seed=s, memorized_fraction=0.60 + jitter(s)))
        recs.append(rec("ls", 0.1, noise=0.5, seed=s, memorized_fraction=0.40))
    text = C.claim_paragraphs(recs)["overfitting"]
    assert text.startswith("digits, clean labels, ls eps=0.1 (fixed in advance) against ce:")
    # ce: last minus early-stopped = 0.900 - 0.950 (mean); smoothing -0.010.
    assert "changed test accuracy by -0.050 (ce) and -0.010 (ls eps=0.1)" in text
    assert "changed test NLL by 0.100 (ce) and 0.010 (ls eps=0.1)" in text
    assert "symmetric 0.5: ce memorised 60%" in text
    vs = {(v.question, v.metric): v for v in C.study_verdicts(recs) if v.claim == "overfitting"}
    mem = vs[("memorised flips, ls vs ce", "memorized_fraction")]
    assert mem.values == pytest.approx([0.20 + jitter(s) for s in range(3)]) and mem.outcome == "supports"
    assert vs[("continued-training cost, ls vs ce", "nll")].values == pytest.approx([0.09] * 3)


def test_claim_overfitting_training_set_size_sweep():
    recs = []
    for s in range(4):
        for frac, gain in ((1.0, 0.01), (0.3, 0.03 + jitter(s)), (0.1, 0.06)):
            recs.append(rec("ce", 0.0, seed=s, train_fraction=frac, test_accuracy=0.8))
            recs.append(rec("ls", 0.1, seed=s, train_fraction=frac, test_accuracy=0.8 + gain))
    vs = [v for v in C.study_verdicts(recs) if v.question == "benefit with less data"]
    assert [v.setting for v in vs] == ["10% of the training data", "30% of the training data"]
    assert vs[0].values == pytest.approx([0.05] * 4) and vs[0].outcome == "supports"
    assert vs[1].values == pytest.approx([0.02 + jitter(s) for s in range(4)])
    # The fractions' records enter no other verdict: the calibration ones read the full-data records only.
    (cal,) = [v for v in C.study_verdicts(recs) if v.claim == "calibration" and v.metric == "ece"]
    assert len(cal.values) == 4
    text = C.claim_paragraphs(recs)["overfitting"]
    assert "with 10% of the training split the gain was 0.060" in text


def test_claim_binary_on_a_task_carved_beside_its_parent():
    def grid(multi, binary):
        recs = []
        for s in range(5):
            j = (s - 2) * 0.004
            recs += [
                rec("ce", 0.0, dataset="digits", seed=s, ece=0.05),
                rec("ls", 0.1, dataset="digits", seed=s, ece=0.05 - multi + j),
                rec("ce", 0.0, dataset="digits:3v8", binary=True, parent="digits", seed=s, ece=0.05),
                rec("ls", 0.1, dataset="digits:3v8", binary=True, parent="digits", seed=s, ece=0.05 - binary - j / 2),
            ]
        return recs

    recs = grid(0.04, 0.01)
    c = C.binary_comparison(recs, ["digits:3v8"], ["digits"], 0.1, 0.1, "ece")
    # Benefit = ce's ECE minus smoothing's: positive = smoothing better.
    assert c.multi.mean == pytest.approx(0.04) and c.binary.mean == pytest.approx(0.01)
    assert c.values_multi == pytest.approx([0.04 - (s - 2) * 0.004 for s in range(5)])
    (v,) = [v for v in C.study_verdicts(recs) if v.claim == "binary" and v.metric == "ece"]
    assert v.dataset == "digits:3v8 vs digits" and v.setting == "same eps (0.1)" and v.outcome == "supports"
    (o,) = [v for v in C.study_verdicts(grid(0.01, 0.04)) if v.claim == "binary" and v.metric == "ece"]
    assert o.outcome == "contradicts"  # the binary benefit clearly larger
    text = C.claim_paragraphs(recs)["binary"]
    assert text.startswith("digits:3v8 vs digits (a binary task carved from the 10-class data, not size-matched):")
    assert C.claim_paragraphs([r for r in recs if not r["binary"]])["binary"].startswith("Not measured: add K-sweep")


def test_statistics_paragraph_counts_verdicts_and_power():
    recs = [
        r
        for s in range(10)
        for r in (
            rec("ce", 0.0, seed=s, ece=0.02 + jitter(s), steps=1000),
            rec("ls", 0.1, seed=s, ece=0.05 + 2 * jitter(s), steps=1000),
        )
    ]
    text = C.claim_paragraphs(recs)["statistics"]
    assert "Multiplicity: within each family Holm's correction decides" in text
    # ECE: smoothing clearly worse; NLL: identical, no clear difference.
    assert "calibration: 2 verdicts, 1 clear after Holm (1 unadjusted, 1 with BH)" in text
    (v,) = [v for v in C.study_verdicts(recs) if v.claim == "calibration" and v.metric == "ece"]
    sd = float(np.std(v.values, ddof=1))
    power = V.power(C.tolerance("ece", 360), sd, 10, 0.05 / 2)  # the strictest Holm level of a family of 2
    assert "Power to detect a true difference equal to the tolerance" in text and f"digits ece {power:.0%}" in text
    assert "1000 Adam steps" in text


def test_findings_blocks_go_between_the_markers(tmp_path, capsys):
    from labelsmooth.study import findings as Fi

    recs = [
        r
        for s in range(3)
        for r in (rec("ce", 0.0, seed=s, ece=0.02 + jitter(s)), rec("ls", 0.1, seed=s, ece=0.12 + jitter(s)))
    ]
    (tmp_path / "results.json").write_text(
        json.dumps({"study": {"meta": {"command": "cmd", "n_seeds": 3}}, "runs": recs})
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n{Fi.SUMMARY_START}\nold summary\n{Fi.SUMMARY_END}\nmid\n{Fi.START}\nold numbers\n{Fi.END}\ntail\n"
    )
    assert Fi.main([str(tmp_path), "--into", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "old summary" not in text and text.endswith(f"{Fi.END}\ntail\n")
    (v,) = [v for v in C.study_verdicts(recs) if v.metric == "ece"]
    assert f"| digits | clean | ece | ls vs ce | {v.text()} |" in text and v.outcome == "contradicts"
    findings = (tmp_path / "findings.md").read_text()
    assert findings.strip("\n") in text
    payload = json.loads((tmp_path / "verdicts.json").read_text())
    assert Fi.load_verdicts(payload) == C.study_verdicts(recs)
    assert Fi.block(text, Fi.SUMMARY_START, Fi.SUMMARY_END) == Fi.summary_markdown(
        Fi.load_verdicts(payload), payload["meta"]
    ).strip("\n")
    readme.write_text("no markers")
    assert Fi.main([str(tmp_path), "--into", str(readme)]) == 2
    assert "study-findings:start" in capsys.readouterr().err
