"""The learning rate and weight decay that ce chooses on validation, then every method uses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from labelsmooth.study.runner import StudyConfig, choose_hyperparameters, plan_hp_jobs, plan_jobs
from labelsmooth.study.train import TrainConfig


def _cfg(**kw) -> StudyConfig:
    base = dict(
        datasets=["digits"], methods=["ce", "ls"], eps=[0.0, 0.1], noise=[0.0, 0.5], noise_kind="symmetric", seeds=3
    )
    return StudyConfig(**{**base, **kw})


def test_no_grid_no_hp_jobs_and_one_pair_is_no_grid():
    assert plan_hp_jobs(_cfg()) == []
    assert plan_hp_jobs(_cfg(lrs=[0.003])) == []


def test_hp_jobs_are_ce_at_every_pair_for_every_setting_and_seed():
    cfg = _cfg(lrs=[0.001, 0.003], weight_decays=[0.0, 1e-4])
    jobs = plan_hp_jobs(cfg)
    assert {j.methods for j in jobs} == {("ce",)}
    assert len(jobs) == 4 * 2 * 3  # pairs x noise settings x seeds
    assert {(j.config.lr, j.config.weight_decay) for j in jobs} == {(a, b) for a in (0.001, 0.003) for b in (0, 1e-4)}


def _records(cfg: StudyConfig, score) -> dict:
    # Fake finished ce runs whose early-stopped noisy-validation accuracy is score(lr, wd, seed, noise level).
    out = {}
    for j in plan_hp_jobs(cfg):
        out[j.key("ce")] = {
            "es_val_accuracy_noisy": score(j.config.lr, j.config.weight_decay, j.seed, j.noise_level),
            "es_test_accuracy": 1.0 - score(j.config.lr, j.config.weight_decay, j.seed, j.noise_level),
        }
    return out


def test_the_pair_with_the_best_mean_validation_accuracy_is_chosen_per_setting():
    cfg = _cfg(lrs=[0.001, 0.003])
    # lr 0.003 wins on clean labels, 0.001 under noise; the test field says the opposite and is never read.
    recs = _records(cfg, lambda lr, wd, s, lvl: (0.9 if (lr == 0.003) == (lvl == 0) else 0.8) + 0.01 * s)
    chosen, summary = choose_hyperparameters(cfg, recs)
    assert chosen[("digits", "none", 0.0)].lr == 0.003
    assert chosen[("digits", "symmetric", 0.5)].lr == 0.001
    assert summary["digits|symmetric:0.5"]["lr"] == 0.001
    jobs = plan_jobs(cfg, None, chosen)
    assert {j.config.lr for j in jobs if j.noise_level == 0} == {0.003}
    assert {j.config.lr for j in jobs if j.noise_level > 0} == {0.001}


def test_a_pair_with_a_failed_or_missing_seed_is_not_compared_on_fewer_seeds():
    cfg = _cfg(lrs=[0.001, 0.003], noise=[0.0])
    recs = _records(cfg, lambda lr, wd, s, lvl: 0.95 if lr == 0.001 else 0.9)
    assert choose_hyperparameters(cfg, recs)[0][("digits", "none", 0.0)].lr == 0.001
    for j in plan_hp_jobs(cfg):
        if j.config.lr == 0.001 and j.seed == 1:
            recs[j.key("ce")]["failure"] = "diverged: non-finite training loss"
    chosen, _ = choose_hyperparameters(cfg, recs)
    assert chosen[("digits", "none", 0.0)].lr == 0.003


def test_hp_jobs_carry_the_methods_that_share_ce_training():
    # ts and ts-oracle are post-hoc steps on ce's model: trained once, in the choosing phase.
    cfg = _cfg(methods=["ce", "ls", "ts", "ts-oracle", "ls+ts", "focal"], lrs=[0.001, 0.003])
    assert {j.methods for j in plan_hp_jobs(cfg)} == {("ce", "ts", "ts-oracle")}
    hp_keys = {k for j in plan_hp_jobs(cfg) for k in j.keys()}  # noqa: SIM118
    main = [j for j in plan_jobs(cfg) if "ce" in j.methods]
    assert all(set(j.keys()) <= hp_keys for j in main)


def test_the_default_config_is_shared_with_the_main_grid():
    # The grid pair equal to the study's own TrainConfig trains the very ce job the main grid plans,
    # so choosing costs only the other pairs.
    cfg = _cfg(lrs=[0.001, 0.003], train=TrainConfig(lr=0.003))
    hp_keys = {j.key("ce") for j in plan_hp_jobs(cfg)}
    main_keys = {j.key("ce") for j in plan_jobs(cfg) if "ce" in j.methods}
    assert main_keys <= hp_keys
    other = replace(cfg.train, lr=0.001)
    assert {j.config for j in plan_hp_jobs(cfg)} == {cfg.train, other}


def test_findings_read_only_the_grids_own_runs(tmp_path):
    # results.json also holds the choosing phase's ce runs at the pair not chosen: with the grid's keys
    # in its meta, the findings command leaves them out (otherwise a cell holds each seed twice).
    import json

    from labelsmooth.study import findings as FND

    def rec(key: str, method: str, eps: float, seed: int, ece: float) -> dict:
        return dict(
            key=key,
            dataset="toy",
            method=method,
            label_smoothing=eps,
            noise_kind="none",
            noise_level=0.0,
            seed=seed,
            ece=ece,
            nll=0.3,
            test_accuracy=0.9,
            mean_confidence=0.9,
            num_classes=10,
            binary=False,
            splits={"n_test": 1000},
            val_ece_noisy=ece,
            val_nll_noisy=0.3,
            train_fraction=1.0,
        )

    grid = [rec(f"ce{s}", "ce", 0.0, s, 0.02) for s in range(4)] + [rec(f"ls{s}", "ls", 0.1, s, 0.05) for s in range(4)]
    unchosen = [rec(f"ce-other{s}", "ce", 0.0, s, 0.30) for s in range(4)]
    meta = {"command": "labelsmooth study", "n_seeds": 4, "keys": [r["key"] for r in grid]}
    (tmp_path / "results.json").write_text(json.dumps({"study": {"meta": meta}, "runs": grid + unchosen}))
    assert FND.main([str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "verdicts.json").read_text())
    ece = next(v for v in FND.load_verdicts(payload) if v.claim == "calibration" and v.metric == "ece")
    assert payload["meta"]["runs"] == 8 and ece.mean == pytest.approx(-0.03) and len(ece.values) == 4
