"""Unit tests of labelsmooth.study: readers, splits, the method registry, training records, statistics,
atomic results, and the claim paragraphs generated from synthetic records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import labelsmooth as ls

pytest.importorskip("sklearn")

from labelsmooth.study import claims as C
from labelsmooth.study import methods as Me
from labelsmooth.study import metrics as M
from labelsmooth.study import stats as S
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
    zero = [j for j in jobs if j.dataset == "digits" and j.loss_id == "ls" and j.eps == 0 and j.noise_level == 0]
    assert zero[0].methods == ("ce", "ts", "ts-noisyval")


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


def test_run_job_records_both_checkpoints_and_memorisation():
    ds = load_dataset("digits")
    cfg = TrainConfig(steps=12, hidden=(32,), curve_points=3)
    job = Job("digits", "ls", 0.0, "symmetric", 0.5, 0, ("ce", "ts", "ts-noisyval"), cfg)
    res = run_job(job, ds)
    ce, ts, tsn = res.records
    assert (ce["method"], ts["method"], tsn["method"]) == ("ce", "ts", "ts-noisyval")
    for key in (
        "test_accuracy",
        "nll",
        "ece",
        "ece_quantile",
        "val_accuracy",
        "val_nll",
        "val_ece",
        "memorized_fraction",
        "flipped_corrected_fraction",
        "train_test_gap",
    ):
        assert key in ce and "es_" + key in ce, key
    assert ce["curves"]["step"] == [4, 8, 12] and "test_accuracy" not in ce["curves"]
    assert ce["es_step"] in (4, 8, 12)
    assert ce["curves"]["val_accuracy"][[4, 8, 12].index(ce["es_step"])] == max(ce["curves"]["val_accuracy"])
    # Level 0.5 of the breakdown rate 0.9: 45% of the training labels flipped.
    assert ce["noise_rate"] == pytest.approx(0.45) and abs(ce["realized_noise_rate"] - 0.45) < 0.01
    assert 0 <= ce["memorized_fraction"] + ce["flipped_corrected_fraction"] <= 1
    # The gap uses the clean training labels.
    assert ce["train_test_gap"] == pytest.approx(ce["train_accuracy_clean"] - ce["test_accuracy"])
    # Temperature scaling keeps the argmax; clean and noisy validation labels give different temperatures.
    assert ts["test_accuracy"] == ce["test_accuracy"] and ts["temperature"] > 0
    assert tsn["temperature"] != ts["temperature"]
    probs = res.arrays[ce["key"]]["probs"]
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    again = run_job(Job("digits", "ls", 0.0, "symmetric", 0.5, 0, ("ce",), cfg), ds).records[0]
    assert again["test_accuracy"] == ce["test_accuracy"] and again["nll"] == ce["nll"]
    clean = run_job(Job("digits", "ls", 0.1, "none", 0.0, 0, ("ls",), cfg), ds)
    assert "proj" in clean.arrays[clean.records[0]["key"]]  # seed 0, clean, K >= 3: Müller et al.'s picture


def test_selections_never_read_the_test_split():
    # The same data twice, the second with poisoned test labels: every choice made during and after
    # training (early-stopping step, temperatures, validation curves) must be identical.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    xt = rng.normal(size=(80, 8)).astype(np.float32)
    yt = (xt[:, 0] > 0).astype(np.int64) + (xt[:, 1] > 0)
    good = Dataset("toy", x, y, 3, x_test=xt, y_test=yt)
    bad = Dataset("toy", x, y, 3, x_test=xt, y_test=(yt + 1) % 3)
    cfg = TrainConfig(steps=30, hidden=(16,), batch_size=32, curve_points=6)
    job = Job("toy", "ls", 0.0, "symmetric", 0.5, 3, ("ce", "ts"), cfg)
    a, b = run_job(job, good).records, run_job(job, bad).records
    for ra, rb in zip(a, b, strict=True):
        for key in (
            "es_step",
            "curves",
            "val_accuracy",
            "val_nll",
            "val_ece",
            "es_val_accuracy",
            "temperature",
            "es_temperature",
            "train_accuracy",
            "memorized_fraction",
        ):
            if key in ra:
                assert ra[key] == rb[key], key
        assert ra["test_accuracy"] != rb["test_accuracy"]  # the poison did reach the test metrics
    # The claims' choices of eps read only validation fields: poisoning every test metric changes no choice.
    recs = []
    for s in range(4):
        recs.append(rec("ce", 0.0, noise=0.5, seed=s, val_accuracy=0.80, test_accuracy=0.80))
        recs.append(rec("ls", 0.1, noise=0.5, seed=s, val_accuracy=0.85, test_accuracy=0.81 + jitter(s)))
        recs.append(rec("ls", 0.3, noise=0.5, seed=s, val_accuracy=0.84, test_accuracy=0.95))
    d, picked = S.selected_difference(
        recs,
        "digits",
        [("ls", 0.1), ("ls", 0.3)],
        ("ce", 0.0),
        ("symmetric", 0.5),
        "val_accuracy",
        True,
        "test_accuracy",
    )
    assert picked == {("ls", 0.1): 4} and d.mean == pytest.approx(0.01 + np.mean([jitter(s) for s in range(4)]))
    poisoned = [dict(r, test_accuracy=float(rng.random())) for r in recs]
    assert (
        S.selected_difference(
            poisoned,
            "digits",
            [("ls", 0.1), ("ls", 0.3)],
            ("ce", 0.0),
            ("symmetric", 0.5),
            "val_accuracy",
            True,
            "test_accuracy",
        )[1]
        == picked
    )


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
        es_test_accuracy=0.97,
        es_val_accuracy=0.97,
        es_ece=0.02,
        curves={"val_nll": [0.2, 0.1, 0.1]},
    )
    r.update(metrics)
    return r


def jitter(seed):
    return (seed - 1) * 0.002  # a small seed-to-seed spread so that intervals exist


def test_claim_calibration_says_when_smoothing_hurts_and_compares_on_validation_choices():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, ece=0.016 + jitter(s), mean_confidence=0.975, test_accuracy=0.975, nll=0.09))
        recs.append(
            rec(
                "ls",
                0.1,
                seed=s,
                ece=0.117 + jitter(s),
                mean_confidence=0.86,
                test_accuracy=0.977,
                nll=0.2 + jitter(s),
                val_ece=0.11,
            )
        )
        recs.append(rec("ts", 0.0, seed=s, ece=0.012 + jitter(s), temperature=1.2, nll=0.085 + jitter(s)))
    text = C.claim_paragraphs(recs)["calibration"]
    assert text.startswith("digits, clean labels: ce had test ECE 0.016")
    assert "ls eps=0.1 (fixed in advance) changed ECE by +0.101 (95% CI +0.101 to +0.101) (worse calibrated" in text
    assert "under-confident (mean confidence 0.860 < accuracy 0.977)" in text
    assert "NLL by +0.110" in text
    assert "T = 1.20" in text and "temperature scaling better" in text
    assert "FLAG" not in text
    assert "Early-stopped (both models at their best validation accuracy): ECE 0.020 (ce) vs 0.020, +0.000" in text
    assert "n = 3 seed(s) x 360 test examples each" in text


def test_temperature_scaling_that_worsens_nll_is_flagged():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, nll=0.125 + jitter(s)))
        recs.append(rec("ts", 0.0, seed=s, nll=0.80 + 3 * jitter(s), temperature=0.12))
    text = C.claim_paragraphs(recs)["calibration"]
    assert "FLAG: temperature scaling made the test NLL worse than plain ce in 3 of 3 seeds (by up to 0.679)" in text
    assert "changed NLL by +0.675" in text
    # One seed of five where T ruins the NLL: no clear mean change, still flagged.
    recs = []
    for s in range(5):
        recs.append(rec("ce", 0.0, seed=s, nll=0.125))
        recs.append(rec("ts", 0.0, seed=s, nll=0.12 + (3.0 if s == 2 else 0.0), temperature=0.7))
    text = C.claim_paragraphs(recs)["calibration"]
    assert "FLAG: temperature scaling made the test NLL worse than plain ce in 1 of 5 seeds (by up to 2.995)" in text
    better = [dict(r, nll=0.10) if r["method"] == "ts" else r for r in recs]
    assert "FLAG" not in C.claim_paragraphs(better)["calibration"]


def test_summary_table_marks_a_temperature_at_its_bound():
    from labelsmooth.study.report import summary_rows

    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s))
        recs.append(rec("ts", 0.0, seed=s, temperature=0.01 if s else 0.9, temperature_at_bound=bool(s)))
    methods = [row["method"] for row in summary_rows(recs)]
    assert "ts (T at bound in 2/3)" in methods and "ce" in methods


def test_claim_noise_selects_on_validation_and_reports_early_stopping():
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
                memorized_fraction=1.0,
                flipped_corrected_fraction=0.0,
                val_accuracy=0.7,
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
                flipped_corrected_fraction=0.01,
                val_accuracy=0.72,
            )
        )
        recs.append(rec("ls", 0.6, noise=0.5, seed=s, test_accuracy=0.90, val_accuracy=0.71))  # best on test only
    text = C.claim_paragraphs(recs)["noise"]
    assert text.startswith("digits, symmetric noise at level 0.5 of the breakdown rate (45% of training labels")
    assert (
        "ce's test accuracy was 0.700 at the last step (0.970 with clean labels) and 0.850 with early stopping" in text
    )
    assert "Early stopping changed ce's accuracy by +0.150" in text and "it helped" in text
    assert "(ls eps=0.1 3x) changed the last-step test accuracy by +0.010" in text and "smoothing helped" in text
    assert (
        "predicted 100% of the flipped training labels as the flipped label (memorised) and 0% as their true "
        "class, the rest as a third class" in text
    )
    assert "-1.0 pp" in text and "no clear difference" in text  # memorisation: 1 point < the 5-point tolerance


def test_claim_overfitting_uses_validation_curves_and_consistent_words():
    recs = []
    for s in range(3):
        recs.append(
            rec("ce", 0.0, seed=s, train_test_gap=0.05 + jitter(s), curves={"val_nll": [0.3, 0.1, 0.3 + jitter(s)]})
        )
        recs.append(
            rec("ls", 0.1, seed=s, train_test_gap=0.02 + jitter(s), curves={"val_nll": [0.3, 0.19, 0.2 + jitter(s)]})
        )
    text = C.claim_paragraphs(recs)["overfitting"]
    assert "ce's train-test gap (accuracy on the clean training labels minus test accuracy) was 0.050" in text
    assert "With ls eps=0.1 it was 0.020, a difference of -0.030" in text and "smaller with smoothing" in text
    assert "rose after its minimum by 0.200 (ce) and 0.010 (ls eps=0.1)" in text
    assert "a smaller rise with smoothing" in text


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
        assert "worse calibrated" not in out["calibration"] and "no verdict" in out["calibration"]
        assert "every verdict is withheld" in out["statistics"]
    assert "worse calibrated" in C.claim_paragraphs(grid(3))["calibration"]
    smoke = C.claim_paragraphs(grid(5), smoke=True)
    assert "worse calibrated" not in smoke["calibration"] and "--quick is a smoke test" in smoke["calibration"]
    assert "smoke test" in smoke["statistics"]


def test_tolerance_is_at_least_two_test_examples():
    d = S.Estimate(0.01, 0.002, 10)
    assert C.verdict(d, "test_accuracy", False, n_test=114) == "same"  # 0.01 < 2/114
    assert C.verdict(d, "test_accuracy", False, n_test=10000) == "better"
    assert C.verdict(d, "es_ece", True, n_test=114) == "same"


def test_claim_binary_signed_comparison_on_crafted_numbers():
    from scipy import stats

    def grid(multi, binary, spread=0.004):
        recs = []
        for s in range(5):
            j = (s - 2) * spread
            recs += [
                rec("ce", 0.0, dataset="digits", seed=s, ece=0.02),
                rec("ls", 0.1, dataset="digits", seed=s, ece=0.02 + multi + j),
                rec("ce", 0.0, dataset="digits:3v8", binary=True, parent="digits", seed=s, ece=0.03),
                rec("ls", 0.1, dataset="digits:3v8", binary=True, parent="digits", seed=s, ece=0.03 + binary - j * 0.5),
            ]
        return recs

    recs = grid(0.10, 0.02)
    c = C.binary_comparison(recs, "digits:3v8", "digits", ("ls", 0.1), "ece")
    assert c.verdict == "smaller" and c.multi.mean == pytest.approx(0.10) and c.binary.mean == pytest.approx(0.02)
    vm = np.array([0.10 + (s - 2) * 0.004 for s in range(5)])
    vb = np.array([0.02 - (s - 2) * 0.002 for s in range(5)])
    ci = stats.ttest_ind(vm, vb, equal_var=False).confidence_interval(0.95)
    assert c.reduction.low == pytest.approx(ci.low, rel=1e-6) and c.reduction.high == pytest.approx(ci.high, rel=1e-6)
    # Signs are kept: a binary effect against the multiclass direction is "opposite", not "smaller".
    assert C.binary_comparison(grid(-0.11, 0.10), "digits:3v8", "digits", ("ls", 0.1), "ece").verdict == "opposite"
    assert C.binary_comparison(grid(0.02, 0.10), "digits:3v8", "digits", ("ls", 0.1), "ece").verdict == "larger"
    assert (
        C.binary_comparison(grid(0.0, 0.10), "digits:3v8", "digits", ("ls", 0.1), "ece").verdict
        == "no multiclass effect"
    )
    assert (
        C.binary_comparison(grid(0.10, 0.02)[:8], "digits:3v8", "digits", ("ls", 0.1), "ece").verdict == "withheld"
    )  # 2 seeds
    text = C.claim_paragraphs(recs)["binary"]
    assert text.startswith("digits:3v8 vs digits (the same data as one binary and one 10-class task)")
    assert "ECE: binary +0.020" in text and "10-class +0.100" in text and "smaller in the binary task" in text
    assert "1 - eps/2 = 0.950" in text and "1 - eps + eps/K = 0.910" in text
    assert C.claim_paragraphs([r for r in recs if not r["binary"]])["binary"].startswith("Not measured within one")


def test_claims_without_baseline_or_runs():
    assert C.claim_paragraphs([rec("ls", 0.1)])["calibration"].startswith("Not measured")
    assert all(v.startswith("Not measured") for k, v in C.claim_paragraphs([]).items() if k != "statistics")


def test_statistics_paragraph_counts_comparisons_and_power():
    recs = [
        r
        for s in range(10)
        for r in (
            rec("ce", 0.0, seed=s, ece=0.02 + jitter(s), steps=1000),
            rec("ls", 0.1, seed=s, ece=0.05 + 2 * jitter(s), steps=1000),
        )
    ]
    text = C.claim_paragraphs(recs)["statistics"]
    assert "comparisons with a verdict" in text and "80% power" in text and "1000 Adam steps" in text


def test_torch_global_seed_is_what_run_job_sets():
    # run_job seeds torch itself, so a caller's RNG use before it cannot change a result.
    ds = load_dataset("breast_cancer")
    cfg = TrainConfig(steps=2, hidden=(4,))
    a = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    torch.rand(100)
    b = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    assert a == b


@pytest.mark.parametrize("name", ["claims", "stats", "train", "methods", "metrics", "data", "findings"])
def test_study_docstring_examples(name):
    import doctest
    import importlib

    module = importlib.import_module(f"labelsmooth.study.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_findings_block_goes_between_the_markers(tmp_path, capsys):
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
    readme.write_text(f"# x\n{Fi.START}\nold numbers\n{Fi.END}\ntail\n")
    assert Fi.main([str(tmp_path), "--into", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and text.endswith(f"{Fi.END}\ntail\n")
    assert "| digits | 360 | 0.020 | 0.120 | +0.100 [+0.100, +0.100] | worse |" in text
    assert (tmp_path / "findings.md").read_text() in text
    readme.write_text("no markers")
    assert Fi.main([str(tmp_path), "--into", str(readme)]) == 2
    assert "study-findings:start" in capsys.readouterr().err


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
        "6",
        "--hidden",
        "8",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = list(ResultsStore(out).records.values())
    assert {(r["method"], r["label_smoothing"]) for r in records} >= {("nls", -0.2), ("ols", Me.OLS_EPS)}
    text = C.claim_paragraphs(records)["noise"]
    assert "Negative label smoothing (nls eps=-0.2 3x, chosen per seed on validation accuracy)" in text
    assert "Online label smoothing (ols eps=0.1 3x" in text
    findings = (out / "findings.md").read_text()
    assert "Δ acc nls" in findings and "Δ acc ols" in findings


def test_figure_rows_wrap_to_fit_a_1400px_window():
    pytest.importorskip("matplotlib")
    from labelsmooth.study import figures as Fg

    for n in (1, 3, 5, 7):
        fig, axes = Fg._grid(n)
        width, height = fig.get_size_inches()
        assert len(axes) == n == len(fig.axes)  # no empty cells left on the figure
        assert width <= Fg.MAX_ROW_INCHES and height == pytest.approx(3.4 * -(-n // 3))
