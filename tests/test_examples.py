"""Every script in examples/ runs at its smallest settings and reports what it says it does."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


#: Examples run by another test file (torchrun needs its own launcher): name -> where.
ELSEWHERE = {"torchrun_tiny_lm.py": "tests/test_distributed.py"}


def test_every_example_is_tested():
    tested = set(re.findall(r'run_example\("([^"]+)"', Path(__file__).read_text(encoding="utf-8")))
    for name, where in ELSEWHERE.items():
        assert name in (ROOT / where).read_text(encoding="utf-8")
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested | set(ELSEWHERE)


def test_train_digits_matches_torch_every_step():
    pytest.importorskip("sklearn")
    # "auto" would hand a problem this small to torch's own kernel: name the fused one.
    out = run_example("train_digits.py", "--smoke", "--backend", "chunked")
    diffs = [float(x) for x in re.findall(r"largest relative difference (\S+)", out)]
    assert len(diffs) == 2 and all(d <= 1e-5 for d in diffs), out
    accuracies = [float(x) for x in re.findall(r"test accuracy (\S+),", out)]
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies), out


def test_hf_trainer_trains():
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers and accelerate (the hf extra) are not installed")
    out = run_example("hf_trainer.py", "--smoke", "--backend", "chunked")
    m = re.search(r"train loss (\S+); test loss (\S+), answer token accuracy (\S+), exact match (\S+)", out)
    assert m, out
    train_loss, test_loss, token_acc, exact = (float(x.rstrip(",;")) for x in m.groups())
    # Untrained, the loss is about log(15) = 2.7 per token; three steps must not have diverged.
    assert 0.0 < test_loss < 4.0 and 0.0 < train_loss < 4.0
    assert 0.0 <= exact <= 1.0 and 0.0 <= token_acc <= 1.0


def test_linear_head_matches_the_plain_head_and_trains():
    out = run_example("linear_head.py", "--smoke")
    m = re.search(
        r"plain loss (\S+), fused loss (\S+), largest head-gradient difference (\S+) "
        r"\(largest entry (\S+)\)",
        out,
    )
    assert m, out
    plain, fused, diff, largest = (float(x.rstrip(",")) for x in m.groups())
    # float32 throughout: the two losses and gradients agree to a few float32 roundings.
    assert abs(plain - fused) <= 1e-5 * plain and diff <= 1e-5 * largest, out
    losses = [float(x) for x in re.findall(r"step +\d+: loss (\S+)", out)]
    assert len(losses) == 2 and losses[-1] < losses[0], out


def test_lightning_digits_trains_and_tests_the_chosen_epoch():
    if importlib.util.find_spec("lightning") is None or importlib.util.find_spec("sklearn") is None:
        pytest.skip("lightning and scikit-learn are not installed")
    out = run_example("lightning_digits.py", "--smoke")
    rows = re.findall(
        r"label_smoothing=(\S+) *: best validation epoch on test: accuracy (\S+), NLL (\S+), ECE (\S+)", out
    )
    assert [float(r[0]) for r in rows] == [0.0, 0.1], out
    for _, acc, nll, ece in rows:
        # Six steps from a random start: above chance (0.1) on ten balanced classes, not yet fitted.
        assert 0.15 < float(acc.rstrip(",")) <= 1.0 and 0.0 < float(nll.rstrip(",")) < 2.4, out
        assert 0.0 <= float(ece) <= 1.0, out


def write_tiny_cifar10(folder: Path, n_train: int = 200, n_test: int = 60) -> None:
    """Random images in CIFAR-10's binary format (1 label byte, 3072 pixel bytes a record), every class present."""
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1.bin", n_train), ("test_batch.bin", n_test)):
        rec = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(n) % 10
        rec.tofile(folder / name)


def test_cifar10_sweep_chooses_eps_and_writes_the_report(tmp_path):
    pytest.importorskip("sklearn")  # the study's stratified split
    data, out = tmp_path / "cifar-10-batches-bin", tmp_path / "out"
    data.mkdir()
    write_tiny_cifar10(data)
    # --data-dir names the folder above the batches, as a user's unpacked download does.
    printed = run_example("cifar10_sweep.py", "--data-dir", str(tmp_path), "--smoke", "--out", str(out))
    assert "160 training, 40 validation, 60 test images" in printed, printed
    report = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert report["eps"] == [0.0, 0.1] and report["seeds"] == [0, 1] and len(report["runs"]) == 4
    assert (out / "sweep.md").stat().st_size > 0 and (out / "sweep.html").stat().st_size > 0
    assert len(list((out / "runs").glob("*.npz"))) == 4
    m = re.search(r"^chosen eps: (\S+)$", printed, re.MULTILINE)
    assert m and float(m.group(1)) == report["chosen_eps"], printed
    if report["chosen_eps"] == 0.0:
        assert "chose eps = 0" in printed, printed
    else:
        # Two seeds: the differences are printed, the verdict is withheld.
        assert "No verdict: 2 seed(s)" in printed, printed
        assert re.search(r"accuracy: [+-]\d\.\d+ .* -> no verdict", printed), printed
