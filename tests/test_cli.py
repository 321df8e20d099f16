"""End-to-end tests of ``labelsmooth study``: outputs, resume, crash safety, user data, argument errors."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from labelsmooth.cli import main
from labelsmooth.study.claims import CLAIMS

# One learning rate (no choice on validation) and the whole training split (no size sweep): the tests
# below count runs of the grid they name.
TINY = ["--steps", "4", "--hidden", "16", "--workers", "1", "--lrs", "0.003", "--train-fractions", "1"]
FIELDS = (
    "dataset",
    "method",
    "label_smoothing",
    "noise_level",
    "noise_rate",
    "seed",
    "test_accuracy",
    "train_accuracy",
    "ece",
    "nll",
    "config",
    "classwise_ece",
    "brier",
    "mean_confidence",
    "train_test_gap",
    "memorized_fraction",
    "train_accuracy_clean",
    "curves",
    "probs_file",
    "ece_quantile",
    "val_accuracy",
    "val_ece",
    "es_test_accuracy",
    "es_ece",
    "es_step",
    "flipped_corrected_fraction",
    "steps",
)


def runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def test_study_end_to_end_then_resume_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "study",
        "--datasets",
        "digits,breast_cancer",
        "--eps",
        "0,0.1",
        "--noise",
        "0,0.4",
        "--seeds",
        "2",
        "--methods",
        "ce,ls,ts",
        "--noise-kind",
        "symmetric",
        "--out",
        str(out),
        *TINY,
    ]
    # First invocation: trains in two spawned worker processes (the parent writes the results), no report.
    assert main([*argv, "--workers", "2", "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "2 worker(s)" in text and "24 run(s) trained" in text
    # The time the run took, in the terms a reader compares with the documented times.
    assert re.search(
        r"^time: wall \d+:\d\d \(\d+ s\); CPU \d+ s \(user \d+ \+ system \d+, this process and its", text, re.M
    )
    assert "load average (1/5/15 min)" in text
    assert "labelsmooth study: mean ± 95% CI over seeds" in text  # the final rich table
    assert not (out / "report.html").exists()
    records = runs(out)
    # 2 datasets x 2 noise x 2 seeds x (ce, ts, ls eps=0.1)
    assert len(records) == 24
    for r in records:
        for f in FIELDS:
            assert f in r, f
        assert r["steps"] == 4 and r["config"]["steps"] == 4 and r["config"]["hidden"] == [16]
        with np.load(out / r["probs_file"], allow_pickle=False) as f:
            assert f["probs"].shape[0] == f["labels"].shape[0]
    assert {r["method"] for r in records} == {"ce", "ls", "ts"}
    assert {r["binary"] for r in records if r["dataset"] == "breast_cancer"} == {True}
    assert all(r["memorized_fraction"] is not None for r in records if r["noise_level"] > 0)
    # Level 0.4 of the breakdown rate: 36% of 10-class labels, 20% of binary ones.
    assert {round(r["noise_rate"], 3) for r in records if r["noise_level"] > 0 and not r["binary"]} == {0.36}
    assert {round(r["noise_rate"], 3) for r in records if r["noise_level"] > 0 and r["binary"]} == {0.2}

    # Second invocation: every run is found, nothing is trained, results are unchanged; the report is written.
    mtime = (out / "results.json").stat().st_mtime_ns
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Nothing to train: all 24 runs are already in" in text
    assert "0 run(s) trained, 24 skipped" in text
    assert "writing report ..." in text  # off a terminal the spinner's message is a plain line
    assert (out / "results.json").stat().st_mtime_ns == mtime
    assert len(runs(out)) == 24

    html = (out / "report.html").read_text()
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    for claim in CLAIMS.values():
        assert claim in html
    assert "digits, clean labels" in html and "breast_cancer" in html and "ECE" in html
    # Two seeds: the numbers are shown, no verdict is made, and the text says why.
    assert "Verdicts withheld: fewer than 3 seeds" in html and "no verdict" in html
    meta = json.loads((out / "results.json").read_text())["study"]["meta"]
    assert meta["quick"] is False and meta["n_seeds"] == 2
    # Only the invocation that trained recorded its times; the one that only wrote the report did not.
    [first] = meta["resources"]
    assert first["trained"] == 24 and first["workers"] == 2 and first["cpus"] == os.cpu_count()
    # The workers' CPU time is counted: 24 trainings cannot take less than a few hundredths of a second each.
    assert first["wall_s"] > 0 and first["cpu_s"] >= first["cpu_user_s"] > 0.5
    assert first["cpu_s"] == pytest.approx(first["cpu_user_s"] + first["cpu_system_s"], abs=0.11)
    assert first["load_average_start"] is None or len(first["load_average_start"]) == 3
    findings = (out / "findings.md").read_text()
    # Two seeds: the verdict tables list every comparison, each withheld.
    assert "| dataset | setting | metric | comparison |" in findings and "| no verdict |" in findings
    assert "| supports the claim |" not in findings and "| contradicts the claim |" not in findings
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["meta"]["n_seeds"] == 2 and {v["outcome"] for v in verdicts["verdicts"]} <= {"withheld", "unknown"}
    md = (out / "summary.md").read_text()
    assert "| dataset | noise | method | seeds |" in md and "Label smoothing improves calibration" in md
    assert "digits, clean labels" in md
    assert (out / "figures" / "ece_vs_eps.png").exists()

    # Widening the grid trains only the new runs.
    assert main([*argv, "--methods", "ce,ls", "--eps", "0,0.1,0.2", "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "Resuming: skipping 16 finished run(s)" in text and "8 run(s) trained" in text
    assert len(runs(out)) == 32
    # A new grid rewrites the study's settings and keeps the earlier invocations' times.
    meta = json.loads((out / "results.json").read_text())["study"]["meta"]
    assert [r["trained"] for r in meta["resources"]] == [24, 8]
    assert meta["config"]["eps"] == [0.0, 0.1, 0.2]


def test_ctrl_c_keeps_finished_runs_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from labelsmooth.study import runner

    calls = {"n": 0}
    real = runner.run_job

    def interrupt_second(job, ds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(job, ds)

    monkeypatch.setattr(runner, "run_job", interrupt_second)
    out = tmp_path / "run"
    argv = [
        "study",
        "--datasets",
        "breast_cancer",
        "--eps",
        "0,0.1",
        "--noise",
        "0",
        "--seeds",
        "1",
        "--methods",
        "ce,ls,ts",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(argv) == 130
    text = capsys.readouterr().out
    assert "Interrupted" in text and "Resume with the same command" in text and str(out) in text
    assert len(runs(out)) in (1, 2)  # the first job (ce+ts or ls) is saved
    monkeypatch.setattr(runner, "run_job", real)
    assert main(argv) == 0
    assert "Resuming: skipping" in capsys.readouterr().out
    assert len(runs(out)) == 3


def test_sigkill_mid_run_leaves_valid_results_and_rerun_completes(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "labelsmooth",
        "study",
        "--datasets",
        "digits",
        "--methods",
        "ce",
        "--eps",
        "0",
        "--noise",
        "0",
        "--seeds",
        "40",
        "--steps",
        "60",
        "--hidden",
        "16",
        "--workers",
        "1",
        "--lrs",
        "0.003",
        "--train-fractions",
        "1",
        "--no-report",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            path = out / "results.json"
            if path.exists() and len(json.loads(path.read_text())["runs"]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"study exited early: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        else:
            pytest.fail("no run finished within 60 s")
    finally:
        proc.send_signal(signal.SIGKILL)  # our own child, by its pid
        proc.wait()
    done = runs(out)  # parses: the atomic replace never leaves a torn file
    assert 2 <= len(done) < 40  # results.json is rewritten every few seconds: the first write comes mid-grid
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"skipping {len(done)} finished run(s)" in res.stdout.replace("\n", " ")
    assert len(runs(out)) == 40


def test_user_data_cifar_binary_and_npz_through_data_dir(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1.bin", 60), ("test_batch.bin", 20)):
        rec = np.concatenate(
            [(np.arange(n) % 10).astype(np.uint8)[:, None], rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1
        )
        rec.tofile(data / name)
    np.savez(data / "mine.npz", x=rng.normal(size=(60, 6)), y=np.arange(60) % 3)
    out = tmp_path / "run"
    argv = [
        "study",
        "--data-dir",
        str(data),
        "--datasets",
        "cifar10,npz:mine.npz",
        "--eps",
        "0,0.1",
        "--noise",
        "0",
        "--seeds",
        "1",
        "--methods",
        "ce,ls",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(argv) == 0
    records = runs(out)
    assert {r["dataset"] for r in records} == {"cifar10", f"npz:{data / 'mine.npz'}"}
    assert {r["config"]["model"] for r in records if r["dataset"] == "cifar10"} == {"cnn"}
    assert {r["splits"]["n_test"] for r in records if r["dataset"] == "cifar10"} == {20}  # the official test split
    assert (out / "report.html").exists()


@pytest.mark.parametrize(
    "args,option,value",
    [
        (["--datasets", "imagenet"], "--datasets", "imagenet"),
        (["--methods", "ce,xyz"], "--methods", "xyz"),
        (["--eps", "1.0"], "--eps", "1.0"),
        (["--eps", "-1.5"], "--eps", "-1.5"),
        (["--eps", "0,abc"], "--eps", "abc"),
        (["--noise", "1"], "--noise", "1"),
        (["--noise", "nan"], "--noise", "nan"),
        (["--seeds", "0"], "--seeds", "0"),
        (["--epochs", "ten"], "--epochs", "ten"),
        (["--workers", "0"], "--workers", "0"),
        (["--noise-kind", "random"], "--noise-kind", "random"),
        (["--datasets", "cifar10"], "--datasets", "cifar10"),
        (["--datasets", "npz:/no/such/file.npz"], "--datasets", "/no/such/file.npz"),
        (["--data-dir", "/no/such/dir"], "--data-dir", "/no/such/dir"),
        (["--hidden", "16,x"], "--hidden", "16,x"),
        # A method that gets no value from the grid, asked for or by default, is an error, not a silent drop.
        (["--eps", "-0.2"], "--eps", "-0.2 leaves the default methods ls, ls+ts without a value"),
        (["--eps", "0.1"], "--eps", "the default methods nls without a value (nls needs a negative eps)"),
        (["--methods", "ls", "--eps", "0"], "--eps", "--eps 0 leaves --methods ls without a value"),
        (["--methods", "ce,nls", "--eps", "0,0.1"], "--eps", "leave them out: --methods ce"),
    ],
)
def test_bad_arguments_are_clear_errors(capsys, args, option, value, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["study", "--out", str(tmp_path / "never"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and value in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args", [["--eps", "1.0"], ["--eps", "-0.2"]])
def test_the_errors_docs_study_md_quotes_are_the_real_ones(capsys, tmp_path, args):
    docs = Path(__file__).resolve().parents[1] / "docs" / "study.md"
    quoted = " ".join(docs.read_text(encoding="utf-8").split())  # the docs wrap long quotes over lines
    with pytest.raises(SystemExit):
        main(["study", "--out", str(tmp_path / "never"), *args])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("labelsmooth study: error: argument --eps: ") and f"`{error}`" in quoted, error


def test_a_truncated_or_unsafe_npz_is_refused_before_anything_is_written(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wine.npz", x=rng.normal(size=(200, 13)), y=np.arange(200) % 3)
    whole = (tmp_path / "wine.npz").read_bytes()
    (data / "corrupt.npz").write_bytes(whole[:500])  # head -c 500 wine.npz > corrupt.npz
    np.savez(tmp_path / "objects.npz", x=np.zeros((4, 2)), y=np.array([1, "a", None, 2.0], dtype=object))
    np.savez(tmp_path / "no_y.npz", x=np.zeros((4, 2)))
    out = tmp_path / "run"
    truncated = f"npz file {str(data / 'corrupt.npz')!r} is not a readable .npz archive (truncated or damaged?)"
    cases = [
        (["--datasets", f"npz:{data / 'corrupt.npz'}"], f"argument --datasets: {truncated}"),
        (["--data-dir", str(data), "--datasets", "digits,npz:corrupt.npz"], f"argument --datasets: {truncated}"),
        (["--data-dir", str(data)], f"argument --data-dir: {truncated}"),  # found there, not named
        (["--datasets", f"npz:{tmp_path / 'objects.npz'}"], "array(s) ['y'] hold Python objects"),
        (["--datasets", f"npz:{tmp_path / 'no_y.npz'}"], "lacks array(s) ['y']"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["study", "--quick", "--out", str(out), *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]  # the error is one line, after argparse's usage lines
        assert last.startswith("labelsmooth study: error: ") and message in last, err
        assert not out.exists()  # refused before the output folder (and its probs/) is created


def test_a_damaged_npz_member_is_a_clear_error_when_read(tmp_path):
    from labelsmooth.study.data import DatasetError, read_npz

    path = tmp_path / "mine.npz"
    np.savez(path, x=np.arange(400.0).reshape(100, 4), y=np.arange(100) % 2)
    raw = bytearray(path.read_bytes())
    raw[300] ^= 0xFF  # inside x's data: the zip directory and the headers are intact, the CRC is not
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"mine.npz' is not a readable .npz archive \(truncated or damaged\?\)"):
        read_npz(path)


def test_a_data_dir_with_nothing_usable_says_what_it_found(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no data here")
    python_version = tmp_path / "py"
    (python_version / "cifar-10-batches-py").mkdir(parents=True)
    (python_version / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not read")
    half = tmp_path / "half"
    half.mkdir()
    (half / "data_batch_1.bin").write_bytes(b"")
    cases = [
        (empty, [], f"argument --data-dir: no dataset found in {str(empty)!r}"),
        (python_version, [], "CIFAR-10's Python version (pickled batches, which are never unpickled here)"),
        (half, [], f"{str(half)!r} lacks test_batch.bin"),
        (python_version, ["--datasets", "cifar10"], "argument --datasets: dataset 'cifar10' needs --data-dir"),
    ]
    for folder, extra, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["study", "--quick", "--out", str(tmp_path / "never"), "--data-dir", str(folder), *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "never").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no folder can be created")
def test_an_out_folder_that_cannot_be_created_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", "--quick", "--out", "/proc/labelsmooth-out"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: cannot create folder '/proc/labelsmooth-out'" in err and "Traceback" not in err


def test_python_dash_m_and_help():
    res = subprocess.run(
        [sys.executable, "-m", "labelsmooth", "study", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    for opt in (
        "--datasets",
        "--methods",
        "--eps",
        "--noise",
        "--noise-kind",
        "--seeds",
        "--steps",
        "--epochs",
        "--out",
        "--quick",
        "--full",
        "--train-fractions",
        "--workers",
        "--device",
        "--data-dir",
    ):
        assert opt in res.stdout
    assert "ts:" in res.stdout and "ls:" in res.stdout  # the method registry is listed
    assert "fc-est:" in res.stdout and "ts-oracle:" in res.stdout and "ts-noisyval" not in res.stdout


def test_full_and_quick_are_mutually_exclusive(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["study", "--full", "--quick", "--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.strip().splitlines()[-1] == "labelsmooth study: error: argument --full: not allowed with argument --quick"
    )
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("value", ["0", "0.3,0", "1.5", "-0.1", "x"])
def test_train_fractions_outside_zero_one_are_refused(capsys, tmp_path, value):
    with pytest.raises(SystemExit) as exc:
        main(["study", "--train-fractions", value, "--out", str(tmp_path / "never")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --train-fractions" in err and "Traceback" not in err, err
    assert not (tmp_path / "never").exists()


def _resolved(tmp_path, *args):
    from labelsmooth.cli import _resolve, build_parser

    parser = build_parser()
    return _resolve(parser.parse_args(["study", "--out", str(tmp_path / "out"), *args]), parser)


def test_presets_are_what_the_study_runs(tmp_path):
    from labelsmooth.cli import DEFAULTS, FULL, QUICK

    def check(cfg, preset):
        assert cfg.datasets == preset["datasets"] and cfg.methods == preset["methods"]
        assert cfg.eps == preset["eps"] and cfg.noise == preset["noise"] and cfg.seeds == preset["seeds"]
        assert cfg.noise_kind == preset["noise_kind"] and cfg.train.steps == preset["steps"]
        assert cfg.train_fractions == sorted(set(preset["train_fractions"]) | {1.0})
        assert cfg.lrs == preset.get("lrs", []) and cfg.weight_decays == preset.get("weight_decays", [])
        assert cfg.train.hidden == (128, 128) and cfg.train.lr == 3e-3

    default = _resolved(tmp_path)
    check(default, DEFAULTS)
    assert not default.quick
    check(_resolved(tmp_path, "--full"), {**DEFAULTS, **FULL})
    quick = _resolved(tmp_path, "--quick")
    check(quick, {**DEFAULTS, **QUICK})
    assert quick.quick
    # An explicit option overrides the preset; the whole training split is always in the sweep.
    cfg = _resolved(tmp_path, "--full", "--seeds", "3", "--train-fractions", "0.5")
    assert cfg.seeds == 3 and cfg.datasets == FULL["datasets"] and cfg.train_fractions == [0.5, 1.0]
    # The K-sweep tasks of the default grid are the same size for every K, and K = 10 is among them.
    ks = {int(d.split(":k")[1].split("s")[0]) for d in DEFAULTS["datasets"] if ":k" in d}
    assert ks == {2, 3, 5, 10}


def test_results_json_rewrites_are_spaced_by_how_long_a_rewrite_takes(tmp_path, monkeypatch):
    # On a grid of thousands of runs results.json is tens of MB and its rewrite takes seconds: rewriting
    # it every few seconds kept a core busy. A rewrite may take at most _WRITE_SHARE of the time between
    # rewrites, so a (pretend) 1000 s rewrite is not repeated after each finished job.
    from labelsmooth.study import runner

    real = runner.ResultsStore._write
    monkeypatch.setattr(runner, "_WRITE_EVERY_S", 0.0)
    counts = []
    for write_s in (0.0, 1000.0):
        writes = []

        def timed(self, write_s=write_s, writes=writes):
            real(self)
            writes.append(1)
            self.last_write_s = write_s

        monkeypatch.setattr(runner.ResultsStore, "_write", timed)
        out = tmp_path / f"run{write_s}"
        argv = ["study", "--datasets", "breast_cancer", "--eps", "0,0.1,0.2,0.3", "--noise", "0", "--seeds", "1"]
        assert main([*argv, "--methods", "ce,ls", "--out", str(out), "--no-report", *TINY]) == 0
        assert len(runs(out)) == 4
        counts.append(len(writes))
    # Fast rewrites follow every finished job (3 ls jobs at least); slow ones skip those.
    assert counts[0] >= counts[1] + 3, counts
