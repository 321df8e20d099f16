"""Tests of labelsmooth.study.verdicts (multiplicity, intervals, outcomes, power), written from the
definitions, and of the verdicts the claims make from run records (claims.study_verdicts, findings)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from labelsmooth.study import claims as C  # noqa: E402
from labelsmooth.study import findings as Fi  # noqa: E402
from labelsmooth.study import methods as Me  # noqa: E402
from labelsmooth.study import verdicts as V  # noqa: E402

# ----------------------------------------------------------------------------- multiplicity


def holm_rejects(p, alpha):
    """Holm's step-down procedure as defined: walk the p-values upwards, reject while p_(k) <= alpha / (m - k + 1)."""
    m = len(p)
    out = set()
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i]), start=1):
        if p[i] > alpha / (m - k + 1):
            break
        out.add(i)
    return out


def bh_rejects(p, alpha):
    """Benjamini-Hochberg's step-up procedure: reject the k smallest, k the largest with p_(k) <= k alpha / m."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    k = max((r for r, i in enumerate(order, start=1) if p[i] <= r * alpha / m), default=0)
    return set(order[:k])


def test_holm_adjusted_p_rejects_exactly_what_the_step_down_procedure_rejects():
    # The adjusted p-value of a hypothesis is the smallest family-wise level at which Holm rejects it.
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        p = list(rng.uniform(0, 0.15, m) ** rng.uniform(0.5, 2))
        adj = V.holm(p)
        assert all(a >= q for a, q in zip(adj, p, strict=True)) and max(adj) <= 1
        for alpha in rng.uniform(0.001, 0.2, 15):
            assert {i for i in range(m) if adj[i] <= alpha} == holm_rejects(p, alpha)


def test_benjamini_hochberg_matches_the_step_up_procedure_and_scipy():
    rng = np.random.default_rng(1)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        p = list(rng.uniform(0, 0.15, m) ** rng.uniform(0.5, 2))
        adj = V.benjamini_hochberg(p)
        np.testing.assert_allclose(adj, stats.false_discovery_control(p), rtol=1e-12)
        for alpha in rng.uniform(0.001, 0.2, 15):
            assert {i for i in range(m) if adj[i] <= alpha} == bh_rejects(p, alpha)
    assert V.holm([]) == [] and V.benjamini_hochberg([]) == []


# ----------------------------------------------------------------------------- adjust()


def verdict(values, tol=0.01, values_b=None, smoke=False, claim="noise"):
    return V.Verdict(
        claim,
        "d",
        "s",
        "test_accuracy",
        "q",
        "what it measures",
        "what would falsify it",
        tuple(values),
        tol,
        values_b=None if values_b is None else tuple(values_b),
        smoke=smoke,
    )


def with_p(p, n=4, sign=1.0, spread=0.01):
    """n values whose two-sided one-sample t-test against 0 has p-value p (mean sign * t * se)."""
    d = np.array([-1.0, 1.0] * (n // 2) + [0.0] * (n % 2)) * spread
    se = d.std(ddof=1) / math.sqrt(n)
    return tuple(sign * stats.t.isf(p / 2, n - 1) * se + d)


def test_with_p_helper_gives_the_p_value_asked_for():
    assert stats.ttest_1samp(with_p(0.03), 0).pvalue == pytest.approx(0.03, rel=1e-9)
    assert stats.ttest_1samp(with_p(0.2, n=5, sign=-1), 0).pvalue == pytest.approx(0.2, rel=1e-9)


def test_adjust_p_is_the_one_sample_t_test_and_a_single_verdict_has_a_95_interval():
    vals = (0.031, 0.012, 0.025, 0.040, 0.018)
    (out,) = V.adjust([verdict(vals)])
    t = stats.ttest_1samp(vals, 0)
    ci = t.confidence_interval(0.95)
    assert out.p == pytest.approx(t.pvalue, rel=1e-9) and out.p_holm == out.p == out.p_bh
    assert out.level == pytest.approx(0.95) and out.mean == pytest.approx(np.mean(vals))
    assert out.low == pytest.approx(ci.low, rel=1e-9) and out.high == pytest.approx(ci.high, rel=1e-9)
    assert out.outcome == "supports" and out.sd == pytest.approx(np.std(vals, ddof=1))


def test_holm_decides_not_the_raw_p_value():
    # Each alone would be clear (p < 0.05, mean far above the tolerance); as a family of 3 none is.
    family = [verdict(with_p(p), tol=0.001) for p in (0.03, 0.04, 0.045)]
    assert [v.outcome for v in V.adjust(family[:1])] == ["supports"]
    assert [v.outcome for v in V.adjust(family)] == ["same", "same", "same"]
    # Step-down: 3 x 0.001 and 2 x 0.02 are below 0.05, 1 x 0.2 is not.
    out = V.adjust([verdict(with_p(p), tol=0.001) for p in (0.02, 0.2, 0.001)])
    assert [v.outcome for v in out] == ["supports", "same", "supports"]
    assert [v.p_holm for v in out] == pytest.approx([0.04, 0.2, 0.003], rel=1e-9)
    # A step-down stops at the first failure: 3 x 0.001 passes, 2 x 0.03 does not, so 0.04 is not rejected either.
    out = V.adjust([verdict(with_p(p), tol=0.001) for p in (0.001, 0.03, 0.04)])
    assert [v.outcome for v in out] == ["supports", "same", "same"]


def test_outcome_needs_the_tolerance_and_follows_the_sign():
    tiny = verdict(with_p(1e-6, n=6, spread=1e-4, sign=1.0), tol=0.01)  # sure, but far below the tolerance
    assert abs(tiny.mean) < 0.01 and V.adjust([tiny])[0].outcome == "same"
    neg = verdict(with_p(1e-4, n=6, sign=-1.0), tol=0.01)
    assert neg.mean < -0.01 and V.adjust([neg])[0].outcome == "contradicts"
    zero = verdict((0.0, 0.0, 0.0))  # no spread, no effect: p = 1
    assert V.adjust([zero])[0].p == 1.0 and V.adjust([zero])[0].outcome == "same"


def test_withheld_below_three_values_and_in_smoke_tests_and_they_do_not_count_in_the_family():
    good = verdict(with_p(0.01, n=6), tol=0.001)
    two = verdict((0.5, 0.6), tol=0.001)
    smoke = replace(good, smoke=True)
    empty = verdict(())
    out = V.adjust([good, two, smoke, empty])
    assert [v.outcome for v in out] == ["supports", "withheld", "withheld", "unknown"]
    assert out[1].p is None and out[1].low is None and out[2].p is None
    # Only the testable verdict is in the family: m = 1, so Holm leaves its p alone and its level is 95%.
    assert out[0].p_holm == pytest.approx(0.01, rel=1e-9) and out[0].level == pytest.approx(0.95)
    assert out[1].words == "no verdict" and out[3].words == "not measured"
    # Welch: each group needs 3 values.
    assert V.adjust([verdict((1, 2, 3, 4), values_b=(0.0, 0.1))])[0].outcome == "withheld"


def test_interval_level_for_rank_r_of_m_is_one_minus_alpha_over_m_minus_r_plus_one():
    ps = (0.004, 0.0005, 0.03, 0.2)  # ranks 2, 1, 3, 4
    family = [verdict(with_p(p, n=5), tol=0.001) for p in ps]
    out = V.adjust(family)
    m = len(ps)
    for v, r in zip(out, (2, 1, 3, 4), strict=True):
        level = 1 - 0.05 / (m - r + 1)
        assert v.level == pytest.approx(level)
        ci = stats.ttest_1samp(v.values, 0).confidence_interval(level)
        assert v.low == pytest.approx(ci.low, rel=1e-9) and v.high == pytest.approx(ci.high, rel=1e-9)
    assert out[1].level == pytest.approx(1 - 0.05 / 4)  # the first-ranked: a Bonferroni interval


def test_welch_two_group_verdict_matches_scipy():
    a = (0.10, 0.13, 0.08, 0.12, 0.11)
    b = (0.02, 0.05, 0.01, 0.03)
    (out,) = V.adjust([verdict(a, values_b=b)])
    t = stats.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(0.95)
    assert out.mean == pytest.approx(np.mean(a) - np.mean(b)) and out.n == 9
    assert out.p == pytest.approx(t.pvalue, rel=1e-9) and out.outcome == "supports"
    assert out.low == pytest.approx(ci.low, rel=1e-9) and out.high == pytest.approx(ci.high, rel=1e-9)
    assert out.sd is None  # no single spread for two groups (no power figure from it)
    (rev,) = V.adjust([verdict(b, values_b=a)])
    assert rev.outcome == "contradicts" and rev.p == pytest.approx(out.p)


def test_power_matches_a_monte_carlo_t_test():
    rng = np.random.default_rng(0)
    reps = 20000
    for effect, sd, n, alpha in ((1.0, 1.0, 6, 0.05), (0.5, 1.0, 10, 0.01), (0.02, 0.03, 5, 0.05)):
        x = rng.normal(effect, sd, size=(reps, n))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        mc = float(np.mean(np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1)))
        # Monte-Carlo standard error <= 0.0036: 0.015 is four of them.
        assert V.power(effect, sd, n, alpha) == pytest.approx(mc, abs=0.015)
    assert V.power(0.0, 1.0, 8) == pytest.approx(0.05, abs=1e-9)  # no effect: rejections at the level
    assert V.power(1.0, 1.0, 1) is None and V.power(1.0, 0.0, 5) is None
    assert V.power(1.0, 1.0, 20) > V.power(1.0, 1.0, 10) > V.power(1.0, 1.0, 5)
    assert V.power(100.0, 1.0, 30) == 1.0


def test_verdict_words_and_text():
    v = V.adjust([verdict(with_p(0.001, n=4), tol=0.001, claim="comparators")])[0]
    assert v.outcome == "supports" and v.words == "first better"
    assert replace(v, claim="noise").words == "supports the claim"
    assert v.text().startswith(f"{v.mean:+.3f} [") and verdict((0.1,)).text() == "+0.100"
    assert verdict(()).text() == "n/a"


# ----------------------------------------------------------------------------- verdicts from run records


def run(method, eps, *, dataset="digits", noise=0.0, kind="symmetric", seed=0, k=10, n_test=2000, **fields):
    """A synthetic run record with every field the claims read."""
    r = dict(
        dataset=dataset,
        method=method,
        label_smoothing=eps,
        noise_level=noise,
        noise_kind=kind if noise else "none",
        noise_rate=noise * (1 - 1 / k),
        train_fraction=1.0,
        seed=seed,
        num_classes=k,
        binary=k == 2,
        parent_dataset=dataset.partition(":")[0] if ":" in dataset else None,
        splits={"n_train": 5000, "n_val": 1000, "n_test": n_test},
        steps=1000,
        failure=None,
        converged=True,
        test_accuracy=0.90,
        nll=0.30,
        ece=0.03,
        ece_quantile=0.03,
        mean_confidence=0.9,
        memorized_fraction=None,
        val_accuracy=0.90,
        val_accuracy_noisy=0.90,
        val_ece_noisy=0.03,
        val_nll_noisy=0.30,
        es_test_accuracy=0.90,
        es_nll=0.30,
        es_val_accuracy_noisy=0.90,
        oracle_es_test_accuracy=0.90,
    )
    r.update(fields)
    return r


def jit(s):
    return 0.003 * ((s * 7) % 5 - 2)  # a seed-to-seed spread (mean 0 over 5 seeds), so intervals exist


def pick(verdicts, claim, question, metric=None, setting=None):
    out = [
        v
        for v in verdicts
        if v.claim == claim
        and v.question == question
        and (metric is None or v.metric == metric)
        and (setting is None or v.setting == setting)
    ]
    assert out, (claim, question, metric, setting)
    return out


def calibration_grid(seeds=5):
    recs = []
    for s in range(seeds):
        recs.append(run("ce", 0.0, seed=s, ece=0.05 + jit(s), nll=0.30 + jit(s)))
        recs.append(run("ls", 0.1, seed=s, ece=0.02 + 2 * jit(s), nll=0.25, val_ece_noisy=0.02, val_nll_noisy=0.2))
        recs.append(run("ts", 0.0, seed=s, ece=0.015 + jit(s), temperature=1.3))
    return recs


def test_a_failed_run_never_enters_a_verdict():
    recs = calibration_grid()
    (base,) = pick(C.study_verdicts(recs), "calibration", "ls vs ce", "ece")
    want = [-(0.02 + 2 * jit(s) - (0.05 + jit(s))) for s in range(5)]  # ce's ECE minus smoothing's
    assert base.values == pytest.approx(want) and base.outcome == "supports"
    # Seed 3 of smoothing diverged (absurd ECE), seed 0 of ce collapsed: both seeds leave the comparison.
    bad = [
        dict(r, failure="diverged: non-finite training loss", ece=9.0)
        if (r["method"], r["seed"]) == ("ls", 3)
        else dict(r, failure="collapsed: ...", ece=7.0)
        if (r["method"], r["seed"]) == ("ce", 0)
        else r
        for r in recs
    ]
    vs = C.study_verdicts(bad)
    (v,) = pick(vs, "calibration", "ls vs ce", "ece")
    assert v.values == pytest.approx([want[s] for s in (1, 2, 4)])
    assert all(abs(x) < 1 for u in vs for x in u.values + (u.values_b or ()))
    text = C.claim_paragraphs(bad)["calibration"]
    assert "2 run(s) of this setting diverged or collapsed and were left out" in text


def test_a_temperature_at_its_bound_is_left_out_of_every_comparison_with_it():
    recs = calibration_grid()
    bound = [
        dict(r, temperature=0.1, temperature_at_bound=True, ece=0.9) if (r["method"], r["seed"]) == ("ts", 2) else r
        for r in recs
    ]
    (v,) = pick(C.study_verdicts(bound), "calibration", "ls vs ce+ts")
    want = [(0.015 + jit(s)) - (0.02 + 2 * jit(s)) for s in range(5) if s != 2]
    assert v.values == pytest.approx(want)
    text = C.claim_paragraphs(bound)["calibration"]
    assert "in 1 of 5 seeds T ended at the end of its range" in text
    assert "diverged or collapsed" not in text  # a fit at its bound is no failed training


def noise_grid(seeds=5, poison=None):
    """ce and two eps under noise: eps 0.1 best on the noisy validation labels, eps 0.3 best on the clean
    validation labels and on test (an oracle's choice), with the early-stopped checkpoint the other way."""
    rng = np.random.default_rng(poison) if poison is not None else None
    recs = []
    for s in range(seeds):

        def test(x):
            return float(rng.random()) if rng is not None else x

        common = dict(noise=0.5, seed=s)
        recs.append(run("ce", 0.0, seed=s))
        recs.append(
            run("ce", 0.0, **common, test_accuracy=test(0.70 + jit(s)), es_test_accuracy=test(0.80), val_accuracy=0.7)
        )
        recs.append(
            run(
                "ls",
                0.1,
                **common,
                test_accuracy=test(0.75 + jit(s)),
                es_test_accuracy=test(0.79 + jit(s)),
                val_accuracy_noisy=0.60,
                es_val_accuracy_noisy=0.58,
                val_accuracy=0.70,
            )
        )
        recs.append(
            run(
                "ls",
                0.3,
                **common,
                test_accuracy=test(0.85),
                es_test_accuracy=test(0.86 + jit(s)),
                val_accuracy_noisy=0.55,
                es_val_accuracy_noisy=0.59,
                val_accuracy=0.80,
            )
        )
    return recs


def expected_noise_values(recs, prefix):
    by = {(r["method"], r["label_smoothing"], r["seed"]): r for r in recs if r["noise_level"] > 0}
    out = []
    for s in sorted({r["seed"] for r in recs}):
        best = max((0.1, 0.3), key=lambda e: by[("ls", e, s)][f"{prefix}val_accuracy_noisy"])
        out.append(by[("ls", best, s)][f"{prefix}test_accuracy"] - by[("ce", 0.0, s)][f"{prefix}test_accuracy"])
    return out


def test_noise_verdicts_choose_eps_on_the_noisy_validation_labels_and_never_read_the_test_split():
    recs = noise_grid()
    vs = C.study_verdicts(recs)
    last = pick(vs, "noise", "ls (eps on validation) vs ce", setting="symmetric 0.5, last step")[0]
    es = pick(vs, "noise", "ls (eps on validation) vs ce", setting="symmetric 0.5, early-stopped")[0]
    # Last step: eps 0.1 wins on noisy validation (0.60 > 0.55); early-stopped: eps 0.3 (0.59 > 0.58).
    assert last.values == pytest.approx([0.05] * 5) and last.outcome == "supports"
    assert es.values == pytest.approx([0.06 + jit(s) for s in range(5)])
    assert last.values == pytest.approx(expected_noise_values(recs, ""))
    # Poisoned test metrics (random numbers): every verdict still pairs the candidate chosen on validation.
    for seed in range(3):
        bad = noise_grid(poison=seed)
        vb = C.study_verdicts(bad)
        for prefix, where in (("", "last step"), ("es_", "early-stopped")):
            (v,) = pick(vb, "noise", "ls (eps on validation) vs ce", setting=f"symmetric 0.5, {where}")
            assert v.values == pytest.approx(expected_noise_values(bad, prefix))


def test_the_continued_training_verdict_is_measured_on_clean_labels_only():
    def grid(noisy_shift):
        recs = []
        for s in range(5):
            # Clean: ce loses 0.05 accuracy and gains 0.10 NLL by training on; smoothing 0.01 and 0.02.
            recs.append(run("ce", 0.0, seed=s, test_accuracy=0.90 + jit(s), es_test_accuracy=0.95, nll=0.4, es_nll=0.3))
            recs.append(
                run(
                    "ls", 0.1, seed=s, test_accuracy=0.94 - jit(s), es_test_accuracy=0.95, nll=0.32 + jit(s), es_nll=0.3
                )
            )
            for m, e in (("ce", 0.0), ("ls", 0.1)):
                recs.append(
                    run(
                        m,
                        e,
                        noise=0.5,
                        seed=s,
                        test_accuracy=0.6 + noisy_shift * (e + jit(s)),
                        es_test_accuracy=0.8 - noisy_shift * e,
                        nll=1.0 + noisy_shift * e,
                        es_nll=0.5,
                    )
                )
        return recs

    a, b = C.study_verdicts(grid(1.0)), C.study_verdicts(grid(-3.0))
    acc = pick(a, "overfitting", "continued-training cost, ls vs ce", "test_accuracy")[0]
    nll = pick(a, "overfitting", "continued-training cost, ls vs ce", "nll")[0]
    # (last - es) of smoothing minus that of ce; for NLL the sign flips so that positive = smoothing lost less.
    assert acc.values == pytest.approx([(-0.01 - jit(s)) - (-0.05 + jit(s)) for s in range(5)])
    assert acc.values != pytest.approx([0.04] * 5)  # the helper's spread reached the values
    assert nll.values == pytest.approx([-((0.02 + jit(s)) - 0.1) for s in range(5)])
    assert acc.setting == nll.setting == "clean" and acc.outcome == nll.outcome == "supports"
    # The noisy runs move the noise claim's numbers, not this one.
    for q in ("continued-training cost, ls vs ce",):
        assert [v.values for v in pick(a, "overfitting", q)] == [v.values for v in pick(b, "overfitting", q)]
    noise_a = pick(a, "noise", "ls (eps on validation) vs ce")
    noise_b = pick(b, "noise", "ls (eps on validation) vs ce")
    assert [v.values for v in noise_a] != [v.values for v in noise_b]
    assert all(v.values != acc.values for v in noise_a)


def ksweep_grid(multi, binary, binary_matched, seeds=5):
    """K-sweep records (mnist1d:k2s0, k2s1, k10s0): smoothing lowers ECE by ``multi`` on the 10-class task,
    by ``binary`` at the same eps (0.1) and by ``binary_matched`` at the matched eps (0.18) on the binary ones."""
    recs = []
    for s in range(seeds):
        recs.append(run("ce", 0.0, dataset="mnist1d:k10s0", seed=s, n_test=180))
        recs.append(run("ls", 0.1, dataset="mnist1d:k10s0", seed=s, n_test=180, ece=0.03 - multi - jit(s)))
        for sub in (0, 1):
            ds = f"mnist1d:k2s{sub}"
            recs.append(run("ce", 0.0, dataset=ds, seed=s, k=2, n_test=180))
            recs.append(run("ls", 0.1, dataset=ds, seed=s, k=2, n_test=180, ece=0.03 - binary + sub * jit(s)))
            recs.append(run("ls", 0.18, dataset=ds, seed=s, k=2, n_test=180, ece=0.03 - binary_matched))
    return recs


def test_binary_verdict_is_the_10_class_benefit_minus_the_binary_benefit():
    recs = ksweep_grid(multi=0.05, binary=0.01, binary_matched=0.09)
    vs = C.study_verdicts(recs)
    same = pick(vs, "binary", "10-class benefit minus binary benefit", "ece", "same eps (0.1)")[0]
    matched = [v for v in vs if v.claim == "binary" and v.metric == "ece" and v.setting.startswith("same top target")]
    assert same.dataset == "mnist1d K=2 vs K=10" and len(matched) == 1
    # Benefit = ce's ECE minus smoothing's (positive = better), per seed, averaged over the class subsets.
    assert same.values == pytest.approx([0.05 + jit(s) for s in range(5)])
    assert same.values_b == pytest.approx([0.01 - jit(s) / 2 for s in range(5)])
    assert same.mean == pytest.approx(0.04) and same.outcome == "supports"
    # At the matched top target (eps 0.18 on K = 2: 1 - 0.18/2 = 1 - 0.1 + 0.1/10) the binary benefit is larger.
    assert matched[0].values_b == pytest.approx([0.09] * 5) and matched[0].outcome == "contradicts"
    bc = C.binary_comparison(recs, ["mnist1d:k2s0", "mnist1d:k2s1"], ["mnist1d:k10s0"], 0.1, 0.1, "ece")
    assert bc.values_multi == same.values and bc.values_binary == same.values_b
    assert bc.multi.mean == pytest.approx(0.05) and bc.binary.mean == pytest.approx(0.01)
    # Accuracy and NLL are unchanged by smoothing here: no clear difference.
    assert {v.outcome for v in vs if v.claim == "binary" and v.metric != "ece"} == {"same"}
    # Without a 10-class task there is nothing to compare.
    assert not [v for v in C.study_verdicts([r for r in recs if "k10" not in r["dataset"]]) if v.claim == "binary"]


def test_verdicts_json_round_trip_and_the_summary_is_a_function_of_the_verdicts():
    recs = calibration_grid() + noise_grid() + ksweep_grid(0.05, 0.01, 0.09)
    meta = {"command": "labelsmooth study", "created": "today", "n_seeds": 5, "quick": False}
    verdicts = C.study_verdicts(recs)
    payload = json.loads(json.dumps(Fi.verdicts_payload(recs, meta)))
    again = Fi.load_verdicts(payload)
    assert again == verdicts and [v.sd for v in again] == [v.sd for v in verdicts]
    assert payload["meta"]["runs"] == len(recs)
    summary = Fi.summary_markdown(again, payload["meta"])
    assert summary == Fi.summary_markdown(verdicts, payload["meta"])
    assert Fi.findings_markdown(recs, meta).startswith(summary)
    # The advice reads the verdicts by their questions: each claim measured here gets its line.
    advice = Fi.advice(verdicts)
    assert [a.split(":")[0] for a in advice] == [
        "Calibration",
        "Noisy labels",
        "Binary tasks",
        "These are small models on small data",
    ]
    noisy = pick(verdicts, "noise", "ls (eps on validation) vs ce")
    assert f"helped in {sum(v.outcome == 'supports' for v in noisy)} and hurt in 0 of {len(noisy)}" in advice[1]
    # Counts per claim come from the outcomes.
    cal = [v for v in verdicts if v.claim == "calibration"]
    sup = sum(v.outcome == "supports" for v in cal)
    verb = "supports" if sup == 1 else "support"
    assert f"{len(cal)} verdicts: {sup} {verb} the claim" in summary
    # Changing a verdict's outcome changes the summary; the records play no further part.
    flipped = [replace(v, outcome="contradicts") if v.claim == "calibration" else v for v in again]
    assert Fi.summary_markdown(flipped, payload["meta"]) != summary
    assert f"{len(cal)} verdicts: 0 support the claim, {len(cal)} contradict it" in Fi.summary_markdown(
        flipped, payload["meta"]
    )
    # fill() puts the summary between its markers and the whole findings between theirs.
    doc = f"a\n{Fi.SUMMARY_START}\nold\n{Fi.SUMMARY_END}\nb\n{Fi.START}\nold\n{Fi.END}\nc\n"
    filled = Fi.fill(doc, payload)
    assert Fi.block(filled, Fi.SUMMARY_START, Fi.SUMMARY_END) == summary.strip("\n")
    assert Fi.block(filled).startswith(summary.strip("\n")) and "old" not in filled
    with pytest.raises(ValueError, match="study-summary:start"):
        Fi.fill("no markers", payload)


def test_a_smoke_test_summary_says_so_and_withholds_every_verdict():
    recs = calibration_grid()
    meta = {"command": "labelsmooth study --quick", "created": "today", "n_seeds": 5, "quick": True}
    payload = Fi.verdicts_payload(recs, meta)
    vs = Fi.load_verdicts(payload)
    assert vs and {v.outcome for v in vs} == {"withheld"}
    summary = Fi.summary_markdown(vs, payload["meta"])
    assert "Smoke test (--quick)" in summary and "every verdict withheld" in summary
    assert "What this means for your data" not in summary


def test_calibration_verdicts_choose_eps_on_validation_not_on_test():
    # eps 0.3 has the better test ECE and NLL but the worse validation ones: it is never the one compared.
    def grid(poison):
        rng = np.random.default_rng(poison)
        out = []
        for r in calibration_grid():
            out.append(r)
            if r["method"] == "ls":
                out.append(dict(r, label_smoothing=0.3, ece=0.001, nll=0.01, val_ece_noisy=0.5, val_nll_noisy=0.9))
        if poison is not None:
            out = [dict(r, ece=float(rng.random()), nll=float(rng.random())) for r in out]
        return out

    for recs in (grid(None), grid(0), grid(1)):
        by = {(r["method"], r["label_smoothing"], r["seed"]): r for r in recs}
        vs = C.study_verdicts(recs)
        for metric in ("ece", "nll"):
            (v,) = pick(vs, "calibration", "ls vs ce", metric)
            want = [by[("ce", 0.0, s)][metric] - by[("ls", 0.1, s)][metric] for s in range(5)]
            assert v.values == pytest.approx(want)


def test_report_verdict_grid_links_every_cell_to_its_paragraph(tmp_path):
    pytest.importorskip("matplotlib")
    import re

    from labelsmooth.study.report import write_report

    recs = calibration_grid() + noise_grid()
    verdicts = C.study_verdicts(recs)
    anchors = [v.anchor for v in verdicts]
    assert len(anchors) == len(set(anchors))  # one target per verdict
    rng = np.random.default_rng(0)
    probs, labels = rng.dirichlet(np.ones(10), 40), rng.integers(0, 10, 40)
    html_path, md_path = write_report(recs, tmp_path, lambda r: (probs, labels), {"command": "c", "created": "t"})
    html = html_path.read_text(encoding="utf-8")
    links = re.findall(r"<td class='(\w+)'[^>]*><a href='#(v-[^']+)'>", html)
    targets = set(re.findall(r"<span class='v' id='(v-[^']+)'></span>", html))
    outcome = {v.anchor: v.outcome for v in verdicts}
    css = {"supports": "sup", "contradicts": "con", "same": "same", "withheld": "none", "unknown": "none"}
    shown = [v for v in verdicts if v.claim in C.CLAIMS]  # the grid shows the claims; comparators stay in the text
    assert sorted(a for _, a in links) == sorted(v.anchor for v in shown)
    assert all(a in targets for _, a in links)
    assert all(cls == css[outcome[a]] for cls, a in links)
    md = md_path.read_text(encoding="utf-8")
    assert "<<" not in md and "What this means for your data" in md
    saved = Fi.load_verdicts(json.loads((tmp_path / "verdicts.json").read_text(encoding="utf-8")))
    assert saved == verdicts


def test_binary_headline_is_a_grid_value_not_a_carved_tasks_matched_eps():
    # Grid eps 0.05 (no 0.1): the binary task also runs the matched eps 0.09, which lies closer to 0.1 but was
    # never run on the 10-class task. The comparison is at the grid's headline, 0.05, and has values.
    recs = []
    for s in range(5):
        recs.append(run("ce", 0.0, dataset="mnist1d:k10s0", seed=s))
        recs.append(run("ls", 0.05, dataset="mnist1d:k10s0", seed=s, ece=0.01 + jit(s)))
        recs.append(run("ce", 0.0, dataset="mnist1d:k2s0", seed=s, k=2))
        recs.append(run("ls", 0.05, dataset="mnist1d:k2s0", seed=s, k=2, ece=0.028))
        recs.append(run("ls", Me.matched_eps(0.05, 2), dataset="mnist1d:k2s0", seed=s, k=2, ece=0.025))
    vs = [v for v in C.study_verdicts(recs) if v.claim == "binary" and v.metric == "ece"]
    assert [v.setting.split(" (")[0] for v in vs] == ["same eps", "same top target"]
    assert vs[0].setting == "same eps (0.05)" and f"eps {Me.matched_eps(0.05, 2):g} binary" in vs[1].setting
    assert vs[0].values == pytest.approx([0.02 - jit(s) for s in range(5)]) and vs[0].values_b == pytest.approx(
        [0.002] * 5
    )
    assert vs[1].values_b == pytest.approx([0.005] * 5)
