"""Unit tests of labelsmooth.study: readers, splits, the method registry, training records, statistics,
atomic results, and the claim paragraphs generated from synthetic records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from labelsmooth.study import claims as C  # noqa: E402
from labelsmooth.study import methods as Me  # noqa: E402
from labelsmooth.study import stats as S  # noqa: E402
from labelsmooth.study.data import (  # noqa: E402
    Dataset,
    DatasetError,
    discover,
    load_dataset,
    read_cifar10_binary,
    read_npz,
    split_dataset,
    validate_name,
)
from labelsmooth.study.runner import ResultsStore, StudyConfig, plan_jobs  # noqa: E402
from labelsmooth.study.train import Job, TrainConfig, run_job  # noqa: E402


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
    np.savez(img, x=np.full((12, 4, 4), 255, np.uint8), y=np.arange(12) % 3,
             x_test=np.zeros((6, 4, 4), np.uint8), y_test=np.arange(6) % 3)
    ds = read_npz(img)
    assert ds.x.shape == (12, 1, 4, 4) and ds.x.max() == 1.0 and ds.x_test.shape == (6, 1, 4, 4)
    assert ds.is_image and not ds.standardize and ds.num_classes == 3
    assert discover(tmp_path) == [f"npz:{img}", f"npz:{path}"]
    # relative npz: paths are looked up in --data-dir
    assert validate_name("npz:mine.npz", tmp_path) == f"npz:{path}"


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((4, 2))}, "lacks array"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "integer"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(4, int)}, "at least 2"),
    ({"x": np.zeros((4, 2)), "y": np.arange(5)}, "samples"),
    ({"x": np.array([{}, {}], dtype=object), "y": np.arange(2)}, "unpickling"),
])
def test_npz_reader_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=match):
        read_npz(path)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*digits"):
        validate_name("imagenet")


def test_mnist1d_is_generated_locally_and_leaves_global_rng_alone():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    ds = load_dataset("mnist1d")
    assert np.random.rand() == expected
    assert ds.x.shape == (4000, 40) and ds.x_test.shape == (1000, 40) and ds.num_classes == 10
    assert abs(float(ds.x.mean())) < 0.1  # the package standardises the signals


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


def test_registry_ce_and_ts_share_a_training_and_clean_runs_share_noise_kinds():
    cfg = StudyConfig(datasets=["digits"], methods=["ce", "ls", "ts"], eps=[0, 0.1, 0.2], noise=[0, 0.4], seeds=2)
    jobs = plan_jobs(cfg)
    assert len(jobs) == 2 * 2 * 3  # noise x seeds x {eps 0 (ce+ts), 0.1, 0.2}
    zero = [j for j in jobs if j.eps == 0]
    assert all(j.methods == ("ce", "ts") for j in zero)
    assert {j.noise_kind for j in jobs if j.noise_rate == 0} == {"none"}
    pair = StudyConfig(datasets=["digits"], methods=["ce"], eps=[0], noise=[0], seeds=1, noise_kind="pairflip")
    assert plan_jobs(pair)[0].key("ce") == plan_jobs(StudyConfig(["digits"], ["ce"], [0], [0], seeds=1))[0].key("ce")


def test_adding_a_method_is_one_registry_entry(monkeypatch):
    # A hypothetical method registered in the one table is planned, run and reported like the others.
    new = Me.Method("half", "smoothing at half the grid value", lambda grid: [e / 2 for e in grid if e],
                    Me.label_smoothing_loss, "ls")
    monkeypatch.setitem(Me.METHODS, "half", new)
    jobs = plan_jobs(StudyConfig(["digits"], ["ce", "half"], [0, 0.2], [0], seeds=1))
    assert sorted((j.methods, j.eps) for j in jobs) == [(("ce",), 0.0), (("half",), 0.1)]
    from labelsmooth.cli import build_parser

    assert "half" in build_parser().study_parser.format_help()


def test_run_job_records_fields_and_memorisation():
    ds = load_dataset("digits")
    cfg = TrainConfig(epochs=3, hidden=(32,), curve_points=2)
    job = Job("digits", "ls", 0.0, "symmetric", 0.4, 0, ("ce", "ts"), cfg)
    res = run_job(job, ds)
    ce, ts = res.records
    assert (ce["method"], ts["method"]) == ("ce", "ts")
    for key in ("dataset", "method", "label_smoothing", "noise_rate", "seed", "test_accuracy", "train_accuracy",
                "train_accuracy_clean", "memorized_fraction", "ece", "classwise_ece", "nll", "brier",
                "mean_confidence", "train_test_gap", "curves", "config"):
        assert key in ce, key
    assert ce["curves"]["epoch"] == [1, 3]
    assert len(ce["curves"]["test_nll"]) == 2
    assert abs(ce["realized_noise_rate"] - 0.4) < 0.01 and ce["n_flipped"] > 0
    assert 0 <= ce["memorized_fraction"] <= 1
    # The binary top label and the argmax are unchanged by temperature scaling: same accuracies.
    assert ts["test_accuracy"] == ce["test_accuracy"] and ts["temperature"] > 0
    assert ts["ece"] != ce["ece"]
    assert ce["train_test_gap"] == pytest.approx(ce["train_accuracy"] - ce["test_accuracy"])
    probs = res.arrays[ce["key"]]["probs"]
    assert probs.shape == (len(res.arrays[ce["key"]]["labels"]), 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    # Same seed, same everything: training is deterministic, so resuming reproduces a run exactly.
    again = run_job(Job("digits", "ls", 0.0, "symmetric", 0.4, 0, ("ce",), cfg), ds).records[0]
    assert again["test_accuracy"] == ce["test_accuracy"] and again["nll"] == ce["nll"]


def test_run_job_binary_uses_a_single_logit():
    ds = load_dataset("breast_cancer")
    res = run_job(Job("breast_cancer", "ls", 0.1, "none", 0.0, 1, ("ls",), TrainConfig(epochs=2, hidden=(8,))), ds)
    (rec,) = res.records
    assert rec["binary"] and rec["num_classes"] == 2 and rec["memorized_fraction"] is None
    assert res.arrays[rec["key"]]["probs"].ndim == 1


def test_memorisation_is_measured_against_the_noisy_labels():
    # A 2-class toy where the model can memorise everything: 100% of flips memorised.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    ds = Dataset("toy", x, y, 4)
    cfg = TrainConfig(epochs=40, hidden=(128,), batch_size=64, lr=1e-2, curve_points=2)
    rec = run_job(Job("toy", "ls", 0.0, "symmetric", 0.3, 0, ("ce",), cfg), ds).records[0]
    assert rec["train_accuracy"] > 0.97 and rec["memorized_fraction"] > 0.9
    assert rec["train_accuracy_clean"] < 0.8  # fitting the flipped labels means missing their clean ones


def test_results_store_round_trip_is_atomic_json(tmp_path):
    ds = load_dataset("digits")
    res = run_job(Job("digits", "ls", 0.0, "none", 0.0, 0, ("ce",), TrainConfig(epochs=1, hidden=(8,))), ds)
    store = ResultsStore(tmp_path)
    store.add(res)
    assert not list(tmp_path.glob("*.tmp*")) and not list((tmp_path / "probs").glob("*.tmp*"))
    data = json.loads((tmp_path / "results.json").read_text())
    (rec,) = data["runs"]
    again = ResultsStore(tmp_path)
    assert again.done(rec["key"])
    probs, labels = again.load_probs(rec)
    np.testing.assert_array_equal(labels, res.arrays[rec["key"]]["labels"])
    with np.load(tmp_path / rec["probs_file"], allow_pickle=False) as f:
        assert set(f.files) == {"probs", "labels"}


# ----------------------------------------------------------------------------- statistics


def test_t_interval():
    e = S.estimate([1.0, 2.0, 3.0])
    # mean 2, s = 1, t_{0.975, 2} = 4.3027: half-width 4.3027 / sqrt(3)
    assert e.mean == 2 and e.half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5) and e.n == 3
    assert S.estimate([0.5]).half is None and S.estimate([None]) is None
    assert S.fmt(e) == "2.000 ± 2.484" and S.fmt(S.estimate([0.5])) == "0.500"


def test_paired_difference_pairs_by_seed():
    recs = [rec("ce", 0.0, seed=s, ece=0.1 * s) for s in range(3)] + \
           [rec("ls", 0.1, seed=s, ece=0.1 * s + 0.05) for s in range(3)]
    d = S.paired_difference(recs, "digits", ("ls", 0.1), ("ce", 0.0), 0.0, "ece")
    # The seed effect is shared and cancels: a constant +0.05 with zero spread.
    assert d.mean == pytest.approx(0.05) and d.half == pytest.approx(0, abs=1e-12) and d.excludes_zero


# ----------------------------------------------------------------------------- claim paragraphs


def rec(method, eps, *, dataset="digits", noise=0.0, seed=0, binary=False, k=10, **metrics):
    r = dict(dataset=dataset, method=method, label_smoothing=eps, noise_rate=noise,
             noise_kind="symmetric" if noise else "none", seed=seed, num_classes=2 if binary else k, binary=binary,
             test_accuracy=0.97, train_accuracy=1.0, train_accuracy_clean=1.0, nll=0.1, ece=0.02,
             classwise_ece=0.01, brier=0.05, mean_confidence=0.97, train_test_gap=0.03, memorized_fraction=None,
             best_test_accuracy=0.97, best_test_accuracy_epoch=50, min_test_nll=0.1)
    r.update(metrics)
    return r


def jitter(seed):
    return (seed - 1) * 0.002  # a small seed-to-seed spread so that intervals exist


def test_claim_calibration_says_when_smoothing_hurts():
    # digits-like: ce calibrated (ECE 0.016), eps=0.1 under-confident (ECE 0.117).
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, ece=0.016 + jitter(s), mean_confidence=0.975, test_accuracy=0.975, nll=0.09))
        recs.append(rec("ls", 0.1, seed=s, ece=0.117 + jitter(s), mean_confidence=0.86, test_accuracy=0.977, nll=0.2))
        recs.append(rec("ts", 0.0, seed=s, ece=0.012 + jitter(s), temperature=1.2))
    text = C.claim_paragraphs(recs)["calibration"]
    assert "On digits" in text
    assert "ls eps=0.1 raised ECE from 0.016 to 0.117" in text
    assert "made the model under-confident (mean confidence 0.860 < accuracy 0.977)" in text
    assert "It raised the NLL" in text
    assert "Temperature scaling of the ce model (T = 1.20" in text and "worse calibrated than it" in text
    assert "worsened calibration on digits" in text
    assert "improved calibration on" not in text


def test_claim_calibration_says_when_smoothing_helps():
    # mnist1d-like: ce over-confident (ECE 0.29), eps=0.1 brings ECE to 0.04 and halves the NLL.
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, dataset="mnist1d", seed=s, ece=0.29 + jitter(s), mean_confidence=0.9,
                        test_accuracy=0.61, nll=1.8 + jitter(s)))
        recs.append(rec("ls", 0.1, dataset="mnist1d", seed=s, ece=0.04 + jitter(s), mean_confidence=0.62,
                        test_accuracy=0.61, nll=0.9 + 2 * jitter(s)))
    text = C.claim_paragraphs(recs)["calibration"]
    assert "was over-confident (mean confidence 0.900 > accuracy 0.610)" in text
    assert "ls eps=0.1 lowered ECE from 0.290 to 0.040" in text and "smoothing improved calibration" in text
    assert "It lowered the NLL (1.800 → 0.900" in text
    assert "improved calibration on mnist1d" in text and "worsened" not in text


def test_claim_calibration_no_clear_difference_within_seed_noise():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, ece=0.05 + 10 * jitter(s)))
        recs.append(rec("ls", 0.1, seed=s, ece=0.06 - 10 * jitter(s)))  # +0.01 on average, spread 0.04
    text = C.claim_paragraphs(recs)["calibration"]
    assert "left ECE without a clear change" in text and "made no clear difference on digits" in text


def test_claim_noise_says_memorisation_was_not_prevented():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, test_accuracy=0.97))
        recs.append(rec("ls", 0.1, seed=s, test_accuracy=0.97))
        recs.append(rec("ce", 0.0, noise=0.4, seed=s, test_accuracy=0.70 + jitter(s), memorized_fraction=1.0,
                        best_test_accuracy=0.85, best_test_accuracy_epoch=10))
        recs.append(rec("ls", 0.1, noise=0.4, seed=s, test_accuracy=0.71 + jitter(s), memorized_fraction=0.99))
    text = C.claim_paragraphs(recs)["noise"]
    assert "On digits with 40% symmetric noise" in text
    assert "ce test accuracy was 0.700 (vs 0.970 on clean labels)" in text
    assert "peaked at 0.850 (around epoch 10)" in text
    assert "ls eps=0.1 it was 0.710 (+0.010, 95% CI +0.010 to +0.010): smoothing helped" in text
    assert "The ce model memorised 100% of the flipped training labels" in text and "ls eps=0.1 99%" in text
    assert "Smoothing did not prevent memorisation" in text


def test_claim_noise_reports_reduced_memorisation_and_harm():
    recs = []
    for s in range(2):
        recs.append(rec("ce", 0.0, noise=0.2, seed=s, test_accuracy=0.8 + jitter(s), memorized_fraction=0.9))
        recs.append(rec("ls", 0.2, noise=0.2, seed=s, test_accuracy=0.7 + jitter(s), memorized_fraction=0.3))
    text = C.claim_paragraphs(recs)["noise"]
    assert "smoothing hurt" in text and "Smoothing reduced memorisation substantially (from 90% to 30%" in text
    assert "hurt on digits" in text


def test_claim_overfitting():
    recs = []
    for s in range(3):
        recs.append(rec("ce", 0.0, seed=s, train_test_gap=0.05 + jitter(s), nll=0.3, min_test_nll=0.1))
        recs.append(rec("ls", 0.1, seed=s, train_test_gap=0.02 + jitter(s), nll=0.2, min_test_nll=0.19))
    text = C.claim_paragraphs(recs)["overfitting"]
    assert "a train-test gap of 0.050" in text and "ls eps=0.1 narrowed the gap to 0.020" in text
    assert "rose by 0.200 with ce and by 0.010" in text and "was smaller with smoothing" in text
    assert "reduced overfitting on digits" in text


def test_claim_binary_compares_effect_sizes_and_says_when_not_smaller():
    recs = []
    for s in range(3):
        recs += [rec("ce", 0.0, dataset="digits", seed=s, ece=0.02 + jitter(s)),
                 rec("ls", 0.1, dataset="digits", seed=s, ece=0.12 + jitter(s)),
                 rec("ce", 0.0, dataset="bc", binary=True, seed=s, ece=0.03 + jitter(s)),
                 rec("ls", 0.1, dataset="bc", binary=True, seed=s, ece=0.05 + jitter(s))]
    text = C.claim_paragraphs(recs)["binary"]
    assert "ECE changed by bc +0.020" in text and "digits +0.100" in text
    assert "smaller for ECE than on every multiclass dataset" in text
    assert "1 - eps/2 = 0.950" in text and "1 - eps + eps/K = 0.910" in text
    flipped = [dict(r, ece=r["ece"] * (10 if r["binary"] and r["method"] == "ls" else 1)) for r in recs]
    assert "NOT smaller for ECE" in C.claim_paragraphs(flipped)["binary"]
    # All changes within seed noise: the magnitudes say nothing, and the text must not rank them.
    noisy = [dict(r, ece=r["ece"] + (0.05 * (r["seed"] - 1) if r["method"] == "ls" else 0.0) - (
        0.1 if r["method"] == "ls" and not r["binary"] else 0.0)) for r in recs]
    assert "not distinguishable for ECE: smoothing had no clear effect on it on any dataset" in \
        C.claim_paragraphs(noisy)["binary"]
    only_multi = [r for r in recs if not r["binary"]]
    assert C.claim_paragraphs(only_multi)["binary"].startswith("Not measured")


def test_claims_single_seed_and_missing_baseline():
    recs = [rec("ce", 0.0, ece=0.02), rec("ls", 0.1, ece=0.10)]
    text = C.claim_paragraphs(recs)["calibration"]
    assert "(+0.080, one seed)" in text and "raised ECE" in text
    assert C.claim_paragraphs([rec("ls", 0.1)])["calibration"].startswith("Not measured")
    assert all(v.startswith("Not measured") for v in C.claim_paragraphs([]).values())


def test_torch_global_seed_is_what_run_job_sets():
    # run_job seeds torch itself, so a caller's RNG use before it cannot change a result.
    ds = load_dataset("breast_cancer")
    cfg = TrainConfig(epochs=1, hidden=(4,))
    a = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    torch.rand(100)
    b = run_job(Job("breast_cancer", "ls", 0.0, "none", 0.0, 0, ("ce",), cfg), ds).records[0]["nll"]
    assert a == b
