"""Tests of labelsmooth.evaluation: metrics against labelsmooth.calibration and torchmetrics, AURC from its
definition, the bootstrap (weights, coverage, determinism, pairing), temperature on validation rows only,
streaming of float16 memmaps, and every refusal."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

from labelsmooth import calibration as cal
from labelsmooth.evaluation import aurc, compare, evaluate
from labelsmooth.evaluation import bootstrap as B
from labelsmooth.evaluation import engine as E

# Sums of float64 values in a different order: a few ulps of 1.0 per thousand terms.
TOL = 1e-9


def _model(n=3000, k=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


def _calibration_metrics(probs, labels, n_bins=15):
    return {
        "accuracy": float((probs.argmax(1) == labels).double().mean()) if probs.dim() == 2 else None,
        "nll": cal.negative_log_likelihood(probs, labels),
        "brier": cal.brier_score(probs, labels),
        "ece": cal.expected_calibration_error(probs, labels, n_bins=n_bins),
        "ece_quantile": cal.expected_calibration_error(probs, labels, n_bins=n_bins, binning="quantile"),
        "classwise_ece": cal.classwise_calibration_error(probs, labels, n_bins=n_bins),
        "mce": cal.expected_calibration_error(probs, labels, n_bins=n_bins, norm="max"),
    }


@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_metrics_equal_calibration_functions(kind):
    logits, labels = _model()
    probs = torch.softmax(logits, 1)
    res = evaluate(probs if kind == "probs" else logits, labels, n_bootstrap=0, chunk_rows=700)
    assert res.kind == kind
    for name, want in _calibration_metrics(probs, labels).items():
        assert res.metrics[name].value == pytest.approx(want, abs=TOL), name


def test_binary_metrics_equal_calibration_functions():
    g = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(2000, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(z), generator=g).long()
    p = torch.sigmoid(z)
    for scores in (z, p):
        res = evaluate(scores, y, n_bootstrap=0, chunk_rows=300)
        assert res.num_classes == 2
        for name, want in _calibration_metrics(p, y).items():
            if want is not None:
                assert res.metrics[name].value == pytest.approx(want, abs=1e-8), name
        assert res.metrics["accuracy"].value == pytest.approx(float(((p >= 0.5).long() == y).double().mean()))


def test_metrics_equal_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = _model(seed=2)
    probs = torch.softmax(logits, 1).float()
    res = evaluate(probs, labels, n_bootstrap=0)
    for norm, name in (("l1", "ece"), ("max", "mce")):
        want = float(tm.multiclass_calibration_error(probs, labels, num_classes=6, n_bins=15, norm=norm))
        assert res.metrics[name].value == pytest.approx(want, abs=1e-5)  # torchmetrics sums in float32
    g = torch.Generator().manual_seed(3)
    p = 0.5 + 0.5 * torch.rand(1500, generator=g)  # all >= 0.5: top-label and torchmetrics' binary ECE coincide
    y = torch.bernoulli(p, generator=g).long()
    res = evaluate(p, y, n_bootstrap=0)
    want = float(tm.binary_calibration_error(p, y, n_bins=15, norm="l1"))
    assert res.metrics["ece"].value == pytest.approx(want, abs=1e-5)


def test_aurc_equals_the_sorted_definition():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1, 500)
    correct = rng.uniform(size=500) < conf
    order = np.argsort(-conf)
    err = (~correct[order]).astype(float)
    direct = np.mean(np.cumsum(err) / np.arange(1, 501))
    assert aurc(conf, correct) == pytest.approx(direct, rel=1e-12)
    # Ties enter together at their group's error rate: two tied examples, one wrong, give 1/2 at both coverages.
    assert aurc(np.array([0.9, 0.9]), np.array([True, False])) == pytest.approx(0.5)
    logits, labels = _model(seed=4)
    res = evaluate(logits, labels, n_bootstrap=0)
    p = torch.softmax(logits, 1)
    assert res.metrics["aurc"].value == pytest.approx(aurc(p.max(1).values.numpy(), (p.argmax(1) == labels).numpy()))
    cov, risk = res.risk_coverage
    assert cov[-1] == 1 and risk[-1] == pytest.approx(1 - res.metrics["accuracy"].value)


def test_replicates_are_the_metrics_of_the_weighted_sample():
    # Resample r gives row i the integer weight w[r, i]: its metrics are those of the sample with row i
    # repeated w times (binned metrics exactly; equal-mass bins are fixed at the full sample's, AURC linearised).
    logits, labels = _model(n=1500, k=4, seed=5)
    probs = torch.softmax(logits, 1)
    res = evaluate(probs, labels, n_bootstrap=5, seed=7)
    assert res.classwise_resamples == 5
    for r in range(5):
        w = B.weights(7, r, r + 1, 0, 1500, 1500)[0].numpy().astype(np.int64)
        rows = np.repeat(np.arange(1500), w)
        want = _calibration_metrics(probs[rows], labels[rows])
        for name in ("accuracy", "nll", "brier", "ece", "classwise_ece", "mce"):
            assert res.replicates[name][r] == pytest.approx(want[name], abs=1e-6), name  # float32 products
        exact = aurc(probs[rows].max(1).values.numpy(), (probs[rows].argmax(1) == labels[rows]).numpy())
        assert res.replicates["aurc"][r] == pytest.approx(exact, abs=2e-3)


def test_weights_do_not_depend_on_how_they_are_cut():
    whole = B.weights(3, 0, 70, 0, 70000, 70000)
    part = B.weights(3, 60, 70, 65000, 70000, 70000)
    assert torch.equal(whole[60:, 65000:], part)
    assert whole.mean().item() == pytest.approx(1, abs=0.01) and whole.var().item() == pytest.approx(0.992, abs=0.02)


def test_bootstrap_interval_covers_the_true_accuracy_in_most_draws():
    rng = np.random.default_rng(0)
    hits, draws = 0, 200
    for _ in range(draws):
        correct = rng.uniform(size=400) < 0.8
        p = np.where(correct, 0.9, 0.1)  # binary P(y=1), label 1 when correct
        res = evaluate(p, np.ones(400, dtype=np.int64), n_bootstrap=200, seed=int(rng.integers(1 << 30)), kind="probs")
        acc = res.metrics["accuracy"]
        hits += acc.low <= 0.8 <= acc.high
    assert 0.88 <= hits / draws <= 0.99  # nominal 0.95


def test_bootstrap_is_deterministic_by_seed():
    logits, labels = _model(n=1000, seed=6)
    a = evaluate(logits, labels, n_bootstrap=100, seed=1)
    b = evaluate(logits, labels, n_bootstrap=100, seed=1, chunk_rows=77)
    c = evaluate(logits, labels, n_bootstrap=100, seed=2)
    for m in a.metrics:
        assert a.metrics[m].low == pytest.approx(b.metrics[m].low, abs=1e-12)
    assert a.metrics["nll"].low != c.metrics["nll"].low


def test_compare_identical_models_and_a_clearly_better_one():
    logits, labels = _model(n=4000, seed=8)
    a = evaluate(logits, labels, n_bootstrap=300, name="a")
    same = compare(a, evaluate(logits.clone(), labels, n_bootstrap=300, name="a2"))
    for d in same.differences:
        assert d.words == "no clear difference" and d.value == 0
        assert d.low == pytest.approx(0, abs=1e-9) and d.high == pytest.approx(0, abs=1e-9)
    g = torch.Generator().manual_seed(9)
    worse = evaluate(
        logits + 3 * torch.randn(logits.shape, generator=g, dtype=torch.float64), labels, n_bootstrap=300, name="noisy"
    )
    cmp = compare(worse, a)
    for m in ("accuracy", "nll", "brier", "aurc"):
        assert cmp.get("a", m).words == "better", m
        assert cmp.get("a", m).low > 0
    assert compare(a, worse).get("noisy", "accuracy").words == "worse"
    json.dumps(cmp.to_dict())
    assert "| accuracy |" in cmp.to_markdown() and "<table>" in cmp.to_html()


def test_compare_tests_each_metric_on_its_own_difference():
    # Three times the logits: the same predictions (accuracy identical row for row), another NLL.
    logits, labels = _model(n=3000, seed=14, scale=1.0)
    a = evaluate(logits, labels, n_bootstrap=200, name="a")
    sharp = compare(a, evaluate(3 * logits, labels, n_bootstrap=200, name="sharp"))
    acc = sharp.get("sharp", "accuracy")
    assert acc.value == 0 and acc.p == 1 and acc.words == "no clear difference"
    nll = sharp.get("sharp", "nll")
    assert nll.p < 1e-6 and nll.words == "worse" and nll.high < 0  # calibrated logits made over-confident


def test_compare_names_the_first_mismatching_row():
    logits, labels = _model(n=300, seed=10)
    a = evaluate(logits, labels, n_bootstrap=10)
    other = labels.clone()
    other[37] = (other[37] + 1) % 6
    other[200] = (other[200] + 1) % 6
    b = evaluate(logits, other, n_bootstrap=10)
    with pytest.raises(ValueError, match="labels differ at test row 37"):
        compare(a, b)
    with pytest.raises(ValueError, match="different seed"):
        compare(a, evaluate(logits, labels, n_bootstrap=10, seed=3))


def test_temperature_is_fitted_on_validation_rows_only():
    logits, labels = _model(n=4000, seed=11)
    split = np.where(np.arange(4000) % 2 == 0, "val", "test")
    res = evaluate(2 * logits, labels, split=split, n_bootstrap=0)
    assert res.n == 2000 and res.temperature == pytest.approx(cal.fit_temperature(2 * logits[::2], labels[::2]))
    changed = 2 * logits.clone()
    changed[1::2] = 50 * torch.randn(2000, 6, dtype=torch.float64)  # test rows only
    res2 = evaluate(changed, labels, split=split == "test", n_bootstrap=0)
    assert res2.temperature == res.temperature
    assert res.scaled["nll"].value < res.metrics["nll"].value
    sep = evaluate(2 * logits[1::2], labels[1::2], val_scores=2 * logits[::2], val_labels=labels[::2], n_bootstrap=0)
    assert sep.temperature == res.temperature and sep.scaled["ece"].value == pytest.approx(res.scaled["ece"].value)


def test_float16_memmap_streams_in_chunks(tmp_path, monkeypatch):
    n, k = 40000, 200
    path = tmp_path / "scores.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
    rng = np.random.default_rng(0)
    for a in range(0, n, 10000):
        mm[a : a + 10000] = rng.standard_normal((10000, k), dtype=np.float32)
    mm.flush()
    labels = rng.integers(0, k, n)
    scores = np.load(path, mmap_mode="r")
    seen = []
    real = E._chunk

    def spy(s, rows):
        out = real(s, rows)
        seen.append((out.shape[0], out.dtype))
        return out

    monkeypatch.setattr(E, "_chunk", spy)
    tracemalloc.start()
    res = evaluate(scores, labels, n_bootstrap=20, chunk_rows=4096)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert max(r for r, _ in seen) <= 4096 and {d for _, d in seen} == {torch.float32}
    full32 = n * k * 4
    assert peak < full32 / 2, (peak, full32)  # numpy allocations: never a float32 copy of the whole array
    want = cal.expected_calibration_error(
        torch.softmax(torch.from_numpy(np.asarray(scores, dtype=np.float32)), 1), torch.from_numpy(labels)
    )
    assert res.metrics["ece"].value == pytest.approx(want, abs=1e-5)


def test_kind_auto_and_reports():
    logits, labels = _model(n=500, seed=12)
    p = torch.softmax(logits, 1)
    assert evaluate(p, labels, n_bootstrap=0).kind == "probs"
    assert evaluate(logits, labels, n_bootstrap=0).kind == "logits"
    res = evaluate(logits, labels, split=np.arange(500) % 3 > 0, n_bootstrap=50, name="m")
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d["metrics"]) == {"accuracy", "nll", "brier", "ece", "ece_quantile", "classwise_ece", "mce", "aurc"}
    assert "| ECE (equal-width) |" in res.to_markdown() and "T = " in res.to_markdown()
    pytest.importorskip("matplotlib")
    page = res.to_html()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_refusals():
    logits, labels = _model(n=50, seed=13)
    p = torch.softmax(logits, 1)
    with pytest.raises(ValueError, match=r"labels must have shape \(50,\)"):
        evaluate(logits, labels[:40])
    with pytest.raises(ValueError, match="K >= 2"):
        evaluate(logits[:, :1], labels)
    bad = labels.clone()
    bad[7] = 6
    with pytest.raises(ValueError, match=r"labels out of range.*row 7"):
        evaluate(logits, bad)
    q = p.clone()
    q[3] *= 0.5
    with pytest.raises(ValueError, match="row 3 sums to"):
        evaluate(q, labels, kind="probs")
    with pytest.raises(ValueError, match="kind='probs' but row 0 has values outside"):
        evaluate(logits, labels, kind="probs")
    with pytest.raises(ValueError, match="kind='logits' but every row"):
        evaluate(p, labels, kind="logits")
    z = logits.clone()
    z[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite value at row 5"):
        evaluate(z, labels)
    z[5, 2] = float("inf")
    with pytest.raises(ValueError, match="row 5"):
        evaluate(z, labels)
    with pytest.raises(ValueError, match="split values must be"):
        evaluate(logits, labels, split=["val"] * 49 + ["train"])
    with pytest.raises(ValueError, match="split values must be"):
        evaluate(logits, labels, split=np.full(50, 2))
    with pytest.raises(ValueError, match="no row as test"):
        evaluate(logits, labels, split=np.zeros(50, dtype=bool))
    with pytest.raises(TypeError, match="integer class indices"):
        evaluate(logits, labels.double())
    with pytest.raises(TypeError, match="numpy array"):
        evaluate(logits.tolist(), labels)
    with pytest.raises(ValueError, match="kind must be"):
        evaluate(logits, labels, kind="probabilities")
    with pytest.raises(ValueError, match="either split or val_scores"):
        evaluate(logits, labels, split=np.ones(50, dtype=bool), val_scores=logits, val_labels=labels)


@pytest.mark.parametrize(
    "name",
    ["labelsmooth.evaluation.result", "labelsmooth.evaluation.multiplicity", "labelsmooth.evaluation.bootstrap"],
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_intervals_do_not_depend_on_the_chunk_size():
    # The resampling weights are a function of (seed, resample, row) alone, so cutting the rows into chunks of
    # 7 or 1000 gives every resample the same sums: the same intervals up to summation order (float64 sums,
    # except class-wise ECE's column sums of probabilities, taken in the chunk's float32: ~1e-7 per term).
    logits, labels = _model(n=1200, k=5, seed=15)
    split = np.arange(1200) % 3 > 0
    a = evaluate(logits.float(), labels, split=split, n_bootstrap=130, seed=4, chunk_rows=1000)
    b = evaluate(logits.float(), labels, split=split, n_bootstrap=130, seed=4, chunk_rows=7)
    assert a.classwise_resamples == 130
    for m in a.metrics:
        tol = {"rel": 1e-5} if m == "classwise_ece" else {"abs": 1e-9}
        for got, want in ((b.metrics[m], a.metrics[m]), (b.scaled[m], a.scaled[m])):
            assert got.value == pytest.approx(want.value, **tol), m
            assert got.low == pytest.approx(want.low, **tol) and got.high == pytest.approx(want.high, **tol), m
    c = evaluate(logits.float(), labels, split=split, n_bootstrap=130, seed=5, chunk_rows=7)
    assert c.metrics["classwise_ece"].high != pytest.approx(a.metrics["classwise_ece"].high, rel=1e-5)


def _documented_example():
    # The data of docs/evaluate.md's example session, as its script writes it.
    rng = np.random.default_rng(0)
    n, k = 6000, 10
    labels = rng.integers(0, k, n)
    split = np.where(np.arange(n) < 2000, "val", "test")
    ce = rng.normal(size=(n, k)) * 2.0
    ce[np.arange(n), labels] += 3.0
    ls = rng.normal(size=(n, k)) * 0.8
    ls[np.arange(n), labels] += 2.2
    return ce.astype(np.float16), ls.astype(np.float16), labels, split


def test_every_interval_contains_its_estimate_on_the_documented_example():
    # Class-wise ECE's replicates lie above the estimate there (resampling noise adds to every small bin gap):
    # the binned calibration errors' intervals are centred on the estimate, the others are percentile ones.
    ce, ls, labels, split = _documented_example()
    a = evaluate(ce, labels, split=split, name="ce")
    b = evaluate(ls, labels, split=split, name="ls")
    assert np.median(a.scaled_replicates["classwise_ece"]) > a.scaled["classwise_ece"].high  # centring shifted it
    for res in (a, b):
        for table in (res.metrics, res.scaled):
            for m, est in table.items():
                assert est.low <= est.value <= est.high, (res.name, m, est)
                assert est.low >= 0 or m not in ("ece", "ece_quantile", "classwise_ece", "mce")
        for m in ("accuracy", "nll", "brier", "aurc"):  # percentile intervals: the replicates' quantiles
            assert (res.metrics[m].low, res.metrics[m].high) == tuple(np.quantile(res.replicates[m], [0.025, 0.975]))
    for d in compare(a, b).differences:
        assert d.low <= d.value <= d.high, d


_MEMORY_CHILD = """
import os, sys, numpy as np
from labelsmooth.evaluation import evaluate

path, n, k, chunk_rows, n_bootstrap = sys.argv[1], *map(int, sys.argv[2:])
scores = np.load(path, mmap_mode="r")
labels = np.random.default_rng(1).integers(0, k, n)
float(scores[:, 0].astype(np.float32).sum())  # every page of the file in memory before the baseline
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set size to the current one

def kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

base = kib("VmRSS")
evaluate(scores, labels, n_bootstrap=n_bootstrap, chunk_rows=chunk_rows)
print((kib("VmHWM") - base) * 1024)
"""


def test_peak_memory_is_a_few_numbers_per_row_plus_the_chunk(tmp_path):
    # 300k x 50 float16, memory-mapped, 200 resamples, chunks of 50k rows: the evaluation's peak resident
    # memory above its start must stay within a fixed allowance (allocator, thread pools, the resampling
    # blocks), the chunk's float32 work (a dozen copies of a chunk at most) and 400 bytes per row (the
    # per-example values and their sort orders). Holding the class-wise resampling weights of a whole chunk
    # (resamples x chunk rows in float32 and float64, as the engine once did) needs twice this.
    import subprocess
    import sys

    if not (os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set size")
    n, k, chunk_rows, n_bootstrap = 300_000, 50, 50_000, 200
    path = tmp_path / "scores.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
    rng = np.random.default_rng(0)
    for a in range(0, n, 50_000):
        mm[a : a + 50_000] = rng.standard_normal((50_000, k), dtype=np.float32)
    mm.flush()
    del mm
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path), str(n), str(k), str(chunk_rows), str(n_bootstrap)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = int(out.stdout.split()[-1])
    budget = (64 << 20) + 12 * chunk_rows * k * 4 + 400 * n
    assert peak < budget, (peak, budget, peak / n)


def test_aurc_influence_is_the_derivative_of_the_weighted_aurc():
    # The resamples' AURC is linear in the weights around 1 with the influence written out per tie group:
    # it must equal autograd's derivative of the weighted definition, ties included (conf rounded to 0.01).
    from labelsmooth.evaluation.result import _aurc_parts, _aurc_weighted

    rng = np.random.default_rng(3)
    conf = np.round(rng.uniform(0.2, 1, 800), 2)
    correct = rng.uniform(size=800) < conf
    value, influence, _, _ = _aurc_parts(conf, correct)
    order = np.argsort(-conf, kind="stable")
    sc = conf[order]
    group = torch.from_numpy(np.cumsum(np.r_[True, sc[1:] != sc[:-1]]) - 1)
    err = torch.from_numpy((~correct[order]).astype(np.float64))
    w = torch.ones(800, dtype=torch.float64, requires_grad=True)
    a = _aurc_weighted(w, err, group, int(group[-1]) + 1)
    (grad,) = torch.autograd.grad(a, w)
    assert value == pytest.approx(float(a.detach()), rel=1e-12)
    assert value == pytest.approx(aurc(conf, correct), rel=1e-12)
    np.testing.assert_allclose(influence[order], grad.numpy(), rtol=1e-9, atol=1e-15)


def test_compare_also_compares_the_metrics_after_temperature_scaling():
    # b is a's logits times 3: the same predictions, over-confident as given, and (after each model's own
    # temperature, fitted on the same validation rows) nearly the same model. Without validation rows there
    # is nothing after temperature scaling to compare.
    logits, labels = _model(n=4000, seed=16, scale=1.0)
    split = np.arange(4000) % 2 == 0
    a = evaluate(logits, labels, split=split, n_bootstrap=200, name="a")
    b = evaluate(3 * logits, labels, split=split, n_bootstrap=200, name="b")
    cmp = compare(a, b)
    assert len(cmp.differences) == 16
    nll, after = cmp.get("b", "nll"), cmp.get("b", "nll_after_t")
    assert nll.words == "worse" and after.words == "no clear difference"
    assert after.value == pytest.approx(a.scaled["nll"].value - b.scaled["nll"].value)
    assert after.value == pytest.approx(0, abs=1e-4) and after.low - 1e-9 <= after.value <= after.high + 1e-9
    want = -(b.scaled_replicates["nll"] - a.scaled_replicates["nll"])
    assert after.p == pytest.approx(2 * __import__("scipy").stats.norm.sf(abs(after.value) / want.std(ddof=1)))
    assert "| NLL after T |" in cmp.to_markdown()
    plain = compare(evaluate(logits, labels, n_bootstrap=50), evaluate(3 * logits, labels, n_bootstrap=50))
    assert len(plain.differences) == 8
