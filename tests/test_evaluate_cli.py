"""``labelsmooth evaluate``: the prediction-file readers (formats, memory mapping, one-line errors) and the
command end to end on small synthetic files."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.cli import main
from labelsmooth.evaluation.io import PredictionFileError, check_same_examples, read_predictions

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="Parquet needs pyarrow (pip install pyarrow)")


def make(n: int = 400, k: int = 4, strength: float = 1.0, seed: int = 0, labels_seed: int = 1):
    """Logits whose true class gets ``strength`` extra: a larger strength is a clearly better model."""
    y = np.random.default_rng(labels_seed).integers(0, k, n)
    logits = np.random.default_rng(seed).normal(size=(n, k))
    logits[np.arange(n), y] += strength
    return logits.astype(np.float32), y


def probs_of(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def write_csv(path: Path, scores: np.ndarray, y: np.ndarray, stem: str = "logit", split=None) -> Path:
    cols = [stem] if scores.ndim == 1 else [f"{stem}_{i}" for i in range(scores.shape[1])]
    lines = [",".join(["label", *(["split"] if split is not None else []), *cols])]
    for i in range(len(y)):
        vals = [repr(float(v)) for v in np.atleast_1d(scores[i])]
        lines.append(",".join([str(int(y[i])), *([str(split[i])] if split is not None else []), *vals]))
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- readers: formats


def test_npz_uncompressed_is_memory_mapped_in_its_stored_dtype(tmp_path):
    logits, y = make()
    split = np.where(np.arange(len(y)) < 100, "val", "test")
    np.savez(tmp_path / "m.npz", logits=logits.astype(np.float16), labels=y, split=split)
    p = read_predictions(tmp_path / "m.npz")
    assert isinstance(p.scores, np.memmap) and p.streamed and p.scores.dtype == np.float16
    np.testing.assert_array_equal(p.scores, logits.astype(np.float16))
    assert p.labels.dtype == np.int64 and p.labels.tolist() == y.tolist()
    assert p.kind == "logits" and p.num_classes == 4 and p.n == 400
    assert p.split.dtype == bool and p.split.sum() == 300 and not p.split[:100].any()


def test_npz_compressed_is_read_into_memory_and_key_names_state_the_kind(tmp_path):
    logits, y = make()
    np.savez_compressed(tmp_path / "c.npz", probs=probs_of(logits), y=y)
    p = read_predictions(tmp_path / "c.npz")
    assert not p.streamed and p.kind == "probs"
    np.testing.assert_allclose(p.scores, probs_of(logits))
    np.savez(tmp_path / "s.npz", scores=logits, labels=y)
    assert read_predictions(tmp_path / "s.npz").kind is None  # left to the evaluation's detection


def test_fortran_ordered_and_binary_column_arrays(tmp_path):
    logits, y = make()
    np.savez(tmp_path / "f.npz", logits=np.asfortranarray(logits), labels=y)
    np.testing.assert_array_equal(read_predictions(tmp_path / "f.npz").scores, logits)
    yb = y % 2
    np.savez(tmp_path / "b.npz", logits=logits[:, :1], labels=yb.astype(bool))  # (N, 1) -> (N,)
    p = read_predictions(tmp_path / "b.npz")
    assert p.scores.shape == (400,) and p.num_classes == 2 and p.streamed


def test_a_folder_of_npy_files_is_memory_mapped(tmp_path):
    logits, y = make()
    folder = tmp_path / "preds"
    folder.mkdir()
    big = np.lib.format.open_memmap(folder / "logits.npy", mode="w+", dtype=np.float16, shape=logits.shape)
    big[:] = logits
    big.flush()
    np.save(folder / "labels.npy", y)
    np.save(folder / "split.npy", np.arange(len(y)) % 5 != 0)
    p = read_predictions(folder)
    assert isinstance(p.scores, np.memmap) and p.scores.dtype == np.float16 and p.split.sum() == 320


def test_pt_dict_of_tensors(tmp_path):
    logits, y = make()
    torch.save({"logits": torch.from_numpy(logits).half(), "labels": torch.from_numpy(y)}, tmp_path / "m.pt")
    p = read_predictions(tmp_path / "m.pt")
    assert p.streamed and p.scores.dtype == np.float16 and p.kind == "logits"
    np.testing.assert_array_equal(p.scores, logits.astype(np.float16))
    split = ["val"] * 100 + ["test"] * 300
    torch.save({"probs": torch.from_numpy(probs_of(logits)).bfloat16(), "labels": torch.from_numpy(y),
                "split": split}, tmp_path / "b.pt")  # fmt: skip
    p = read_predictions(tmp_path / "b.pt")
    assert not p.streamed and p.scores.dtype == np.float32 and p.kind == "probs" and p.split.sum() == 300


def test_csv_per_class_and_binary_columns(tmp_path):
    logits, y = make(n=50)
    split = np.where(np.arange(50) < 10, "val", "test")
    p = read_predictions(write_csv(tmp_path / "m.csv", logits, y, split=split))
    assert p.kind == "logits" and p.scores.shape == (50, 4) and p.split.sum() == 40
    np.testing.assert_allclose(p.scores, logits, rtol=1e-7)
    prob1 = probs_of(logits)[:, 1]
    p = read_predictions(write_csv(tmp_path / "b.csv", prob1, (y == 1).astype(int), stem="prob"))
    assert p.kind == "probs" and p.scores.shape == (50,) and p.num_classes == 2


@needs_pyarrow
def test_parquet_per_class_columns_and_a_list_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    logits, y = make(n=60)
    cols = {f"prob_{i}": probs_of(logits)[:, i].astype(np.float16) for i in range(4)}
    pq.write_table(pa.table({"label": y, "split": ["val"] * 20 + ["test"] * 40, **cols}), tmp_path / "a.parquet")
    p = read_predictions(tmp_path / "a.parquet")
    assert p.kind == "probs" and p.scores.dtype == np.float16 and p.split.sum() == 40
    pq.write_table(pa.table({"label": y, "logits": [list(map(float, r)) for r in logits]}), tmp_path / "l.parquet")
    p = read_predictions(tmp_path / "l.parquet")
    assert p.kind == "logits" and p.scores.shape == (60, 4)
    np.testing.assert_allclose(p.scores, logits, rtol=1e-7)


def test_parquet_without_pyarrow_is_a_one_line_error_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    with pytest.raises(
        PredictionFileError, match=r"m\.parquet: reading Parquet files needs pyarrow: pip install pyarrow"
    ):
        read_predictions(tmp_path / "m.parquet")


# ----------------------------------------------------------------------------- readers: errors


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bad_files(tmp: Path) -> list[tuple[Path, str]]:
    logits, y = make(n=40)
    cases = []

    def npz(name, **arrays):
        np.savez(tmp / name, **arrays)
        return tmp / name

    cases.append(
        (
            npz("nokey.npz", logit=logits, labels=y),
            r"missing scores \('logits' or 'probs' or 'scores'\); found arrays \['labels', 'logit'\]",
        )
    )
    cases.append((npz("nolab.npz", logits=logits), r"missing labels \('labels' or 'y'\)"))
    cases.append(
        (
            npz("short.npz", logits=logits, labels=y[:-1]),
            r"shape mismatch: array 'logits' has 40 rows .* labels have 39",
        )
    )
    cases.append((npz("range.npz", logits=logits, labels=y + 4), r"label \d at row 0 is out of range \[0, 4\)"))
    cases.append((npz("neg.npz", logits=logits, labels=y - 4), r"label -\d at row 0 is out of range"))
    cases.append(
        (
            npz("frac.npz", logits=logits, labels=y + 0.5),
            r"labels must be integers \(class indices\); row 0 holds \d\.5",
        )
    )
    cases.append((npz("strlab.npz", logits=logits, labels=y.astype(str)), r"labels must be integers .* got dtype <U"))
    cases.append(
        (npz("intscore.npz", logits=(logits * 10).astype(int), labels=y), r"floating-point scores, got dtype int64")
    )
    cases.append((npz("3d.npz", logits=logits[:, :, None].repeat(2, 2), labels=y), r"got shape \(40, 4, 2\)"))
    cases.append(
        (
            npz("split.npz", logits=logits, labels=y, split=np.array(["train"] * 40)),
            r"split values must be 'val' or 'test'; row 0 holds 'train'",
        )
    )
    cases.append((npz("nosplit.npz", logits=logits, labels=y, split=np.zeros(40, bool)), r"split marks no row as test"))
    cases.append((npz("both.npz", logits=logits, probs=logits, labels=y), r"holds both 'logits' and 'probs'"))
    cases.append((npz("obj.npz", logits=logits, labels=np.array(list(y), dtype=object)), r"Python objects.*refused"))
    np.savez(tmp / "trunc.npz", logits=logits, labels=y)
    cases.append((_truncate(tmp / "trunc.npz"), r"not a readable \.npz archive \(truncated or damaged\?\)"))
    (tmp / "pickle.npz").write_bytes(b"\x80\x04\x95...")
    cases.append((tmp / "pickle.npz", r"not an \.npz archive"))
    torch.save({"logits": torch.from_numpy(logits), "labels": torch.from_numpy(y)}, tmp / "trunc.pt")
    cases.append((_truncate(tmp / "trunc.pt"), r"not a readable torch\.save file \(truncated or damaged\?\)"))
    torch.save([torch.from_numpy(logits)], tmp / "list.pt")
    cases.append((tmp / "list.pt", r"must hold a dict of tensors .* got list"))
    torch.save(
        {"logits": torch.from_numpy(logits), "labels": torch.from_numpy(y), "x": zipfile.ZipInfo()}, tmp / "obj.pt"
    )
    cases.append((tmp / "obj.pt", r"holds something other than tensors.*not unpickled"))
    write_csv(tmp / "trunc.csv", logits, y)
    text = (tmp / "trunc.csv").read_text()
    cut = text.index(",", len(text) // 2) + 1  # the copy stopped inside a row
    (tmp / "trunc.csv").write_text(text[:cut])
    cases.append((tmp / "trunc.csv", r"line \d+ has \d fields, the header has 5 \(truncated file\?\)"))
    write_csv(tmp / "cell.csv", logits, y)
    lines = (tmp / "cell.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",oops"
    (tmp / "cell.csv").write_text("\n".join(lines))
    cases.append((tmp / "cell.csv", r"line 4, column 'logit_3': 'oops' is not a number"))
    write_csv(tmp / "gap.csv", logits, y)
    text = (tmp / "gap.csv").read_text().replace("logit_2", "logit_7")
    (tmp / "gap.csv").write_text(text)
    cases.append((tmp / "gap.csv", r"score columns logit_0..logit_7 lack logit_2, logit_4"))
    (tmp / "nolabel.csv").write_text("logit_0,logit_1\n0.1,0.2\n")
    cases.append((tmp / "nolabel.csv", r"missing a 'label' column; found columns \['logit_0', 'logit_1'\]"))
    (tmp / "empty.csv").write_text("")
    cases.append((tmp / "empty.csv", r"empty file"))
    (tmp / "m.txt").write_text("hello")
    cases.append((tmp / "m.txt", r"unknown extension '\.txt'; expected one of \.npz, \.pt"))
    cases.append((tmp / "absent.npz", r"no such file"))
    (tmp / "empty_dir").mkdir()
    cases.append((tmp / "empty_dir", r"missing scores .* found \.npy files none"))
    if HAVE_PYARROW:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"label": y, "logit_0": logits[:, 0], "logit_1": logits[:, 1]}), tmp / "t.parquet")
        cases.append((_truncate(tmp / "t.parquet"), r"not a readable Parquet file \(truncated or damaged\?\)"))
        pq.write_table(pa.table({"label": [0, None, 1], "logit": [0.1, 0.2, 0.3]}), tmp / "null.parquet")
        cases.append((tmp / "null.parquet", r"column 'label' has a missing value at row 1"))
        pq.write_table(pa.table({"label": [0, 1], "logits": [[0.1, 0.2], [0.3]]}), tmp / "ragged.parquet")
        cases.append((tmp / "ragged.parquet", r"column 'logits' holds 2 scores in row 0 but 1 in row 1"))
    return cases


def test_every_bad_file_is_a_one_line_error_that_names_it(tmp_path):
    for path, pattern in _bad_files(tmp_path):
        with pytest.raises(PredictionFileError) as info:
            read_predictions(path)
            pytest.fail(f"{path.name} was read")
        message = str(info.value)
        assert "\n" not in message, message
        assert message.startswith(f"{path}: "), message
        assert re.search(pattern, message), (path.name, message)


def test_reordered_examples_are_found_by_a_label_mismatch_at_the_first_row(tmp_path):
    logits, y = make(n=50)
    np.savez(tmp_path / "a.npz", logits=logits, labels=y)
    order = np.arange(50)
    order[[7, 9]] = [9, 7]
    assert y[7] != y[9]
    np.savez(tmp_path / "b.npz", logits=logits[order], labels=y[order])
    write_csv(tmp_path / "c.csv", logits[order], y[order])
    np.savez(tmp_path / "d.npz", logits=logits[:49], labels=y[:49])
    a, b, c, d = (read_predictions(tmp_path / f) for f in ("a.npz", "b.npz", "c.csv", "d.npz"))
    check_same_examples([a, a])
    with pytest.raises(
        PredictionFileError,
        match=r"b\.npz: does not list the same examples as .*a\.npz in the same order: "
        r"the first label mismatch is at row 7 ",
    ):
        check_same_examples([a, b])
    with pytest.raises(PredictionFileError, match=r"row 7 \(line 9\)"):
        check_same_examples([a, c])
    with pytest.raises(PredictionFileError, match=r"d\.npz: .* it has 49 rows, .*a\.npz has 50"):
        check_same_examples([a, d])


# ----------------------------------------------------------------------------- the command: arguments and bad input


def test_help_lists_evaluate_and_the_other_commands_still_parse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "{study,evaluate,bench}" in capsys.readouterr().out
    for command in ("study", "evaluate"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--val FILE" in text and "--kind {auto,logits,probs}" in text and "--bootstrap N" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val", "v.npz"], r"argument --val: give one --val file per PRED \(2\), in the PREDs' order; got 1"),
        (["--names", "a"], r"argument --names: expected 2 comma-separated name\(s\), one per PRED, got 'a'"),
        (["--names", "a,a"], r"argument --names: the name 'a' is given twice"),
        (["--out", "file.txt"], r"argument --out: 'file.txt' is a file, not a folder"),
        (["--out", "file.txt/sub"], r"argument --out: 'file.txt' is a file, not a folder \(it is above"),
        (["--bootstrap", "0"], r"argument --bootstrap: expected an integer >= 1, got 0"),
        (["--kind", "scores"], r"argument --kind: invalid choice: 'scores'"),
    ],
)
def test_bad_arguments_are_argparse_errors(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("file.txt").write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "a.npz", "b.npz", *extra])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_bad_file_exits_2_with_one_line_on_stderr_and_writes_nothing(tmp_path, capsys):
    logits, y = make()
    np.savez(tmp_path / "ce.npz", logits=logits, labels=y)
    np.savez(tmp_path / "ls.npz", logits=logits, labels=y + 1)
    out = tmp_path / "report"
    code = main(["evaluate", str(tmp_path / "ce.npz"), str(tmp_path / "ls.npz"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"labelsmooth evaluate: error: {tmp_path / 'ls.npz'}: label 4 at row ")


def test_reordered_files_exit_2_naming_the_first_row(tmp_path, capsys):
    logits, y = make()
    order = np.argsort(y, kind="stable")
    np.savez(tmp_path / "ce.npz", logits=logits, labels=y)
    np.savez(tmp_path / "ls.npz", logits=logits[order], labels=y[order])
    first = int(np.flatnonzero(y[order] != y)[0])
    code = main(["evaluate", str(tmp_path / "ce.npz"), str(tmp_path / "ls.npz"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"the first label mismatch is at row {first} " in err


def test_a_split_and_a_val_file_together_are_refused(tmp_path, capsys):
    logits, y = make()
    np.savez(tmp_path / "ce.npz", logits=logits, labels=y, split=np.arange(400) % 2 == 0)
    np.savez(tmp_path / "val.npz", logits=logits, labels=y)
    code = main(["evaluate", str(tmp_path / "ce.npz"), "--val", str(tmp_path / "val.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "has a split array and --val" in err and err.count("\n") == 1


def test_the_command_runs_as_a_program_without_a_traceback(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"PK\x03\x04 truncated")
    out = subprocess.run(
        [sys.executable, "-m", "labelsmooth", "evaluate", str(tmp_path / "m.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith("labelsmooth evaluate: error: ") and out.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- the command end to end


def run_evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def two_models(tmp_path: Path, n: int = 1500, k: int = 5) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """ce: weak logits; ls: a clearly better model on the same examples (a third of the rows validation)."""
    za, y = make(n, k, strength=1.0, seed=0)
    zb, _ = make(n, k, strength=2.5, seed=2)
    split = np.where(np.arange(n) < n // 3, "val", "test")
    np.savez(tmp_path / "ce.npz", logits=za, labels=y, split=split)
    np.savez(tmp_path / "ls.npz", logits=zb, labels=y, split=split)
    return tmp_path / "ce.npz", tmp_path / "ls.npz", za, zb


def verdicts(report: dict, b: str) -> dict[str, str]:
    return {d["metric"]: d["words"] for d in report["comparison"]["differences"] if d["b"] == b}


def test_ce_then_ls_answers_whether_the_second_model_is_better(tmp_path, capsys):
    ce, ls, _, _ = two_models(tmp_path)
    out = tmp_path / "report"
    code, stdout, err = run_evaluate(capsys, str(ce), str(ls), "--bootstrap", "200", "--out", str(out))
    assert code == 0, err
    assert re.search(r"^accuracy +\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] +\d\.\d{4} \[", stdout, re.M)
    assert "ls vs ce" in stdout and re.search(
        r"^accuracy +\+0\.\d{4} \[\+0\.\d{4}, \+0\.\d{4}\] .* better$", stdout, re.M
    )
    assert re.search(r"^temperature T +\d", stdout, re.M)
    report = json.loads((out / "evaluation.json").read_text())
    assert [m["name"] for m in report["models"]] == ["ce", "ls"]
    assert report["models"][0]["temperature"] is not None and report["models"][0]["n"] == 1000
    words = verdicts(report, "ls")
    assert words["accuracy"] == words["nll"] == words["brier"] == words["aurc"] == "better"
    html = (out / "evaluation.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("</html>") == 1
    assert "ls vs ce" in html and html.count("data:image/png;base64,") >= 4  # both models' figures
    md = (out / "evaluation.md").read_text()
    assert "ls vs ce" in md and "## ce" in md and "## ls" in md and "`labelsmooth evaluate " in md

    code, stdout, _ = run_evaluate(capsys, str(ls), str(ce), "--bootstrap", "200", "--out", str(tmp_path / "r2"))
    assert code == 0 and re.search(r"^accuracy .* worse$", stdout, re.M)
    code, stdout, _ = run_evaluate(
        capsys, str(ce), str(ce), "--names", "a,b", "--bootstrap", "200", "--out", str(tmp_path / "r3")
    )
    assert code == 0 and re.search(r"^accuracy .* no clear difference$", stdout, re.M)
    assert not re.search(r"(better|worse)$", stdout, re.M)


def test_every_format_gives_the_same_numbers(tmp_path, capsys):
    n, k = 600, 3
    logits, y = make(n, k, strength=1.5)
    split = np.where(np.arange(n) < 200, "val", "test")
    np.savez(tmp_path / "m.npz", logits=logits, labels=y, split=split)
    torch.save({"logits": torch.from_numpy(logits), "labels": torch.from_numpy(y),
                "split": torch.from_numpy(split == "test")}, tmp_path / "m.pt")  # fmt: skip
    write_csv(tmp_path / "m.csv", logits, y, split=split)
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "logits.npy", logits)
    np.save(folder / "labels.npy", y)
    np.save(folder / "split.npy", (split == "test").astype(np.int8))
    files = [tmp_path / "m.npz", tmp_path / "m.pt", tmp_path / "m.csv", folder]
    if HAVE_PYARROW:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {f"logit_{i}": logits[:, i] for i in range(k)}
        pq.write_table(pa.table({"label": y, "split": list(split), **cols}), tmp_path / "m.parquet")
        files.append(tmp_path / "m.parquet")
    names = ",".join(f"f{i}" for i in range(len(files)))
    out = tmp_path / "out"
    code, _, err = run_evaluate(capsys, *map(str, files), "--names", names, "--bootstrap", "50", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "evaluation.json").read_text())
    first = report["models"][0]
    for model in report["models"][1:]:
        assert model["n"] == first["n"] == 400
        assert model["temperature"] == pytest.approx(first["temperature"], rel=1e-6)
        for m, est in first["metrics"].items():
            assert model["metrics"][m]["value"] == pytest.approx(est["value"], rel=1e-6, abs=1e-9), m
    assert set(verdicts(report, "f1").values()) == {"no clear difference"}


def test_binary_csv_probabilities_and_a_separate_validation_file(tmp_path, capsys):
    n = 900
    y = np.random.default_rng(3).integers(0, 2, n)
    logit = np.random.default_rng(4).normal(size=n) + 2.0 * (2 * y - 1)
    prob = 1 / (1 + np.exp(-logit))
    write_csv(tmp_path / "test.csv", prob[300:], y[300:], stem="prob")
    write_csv(tmp_path / "val.csv", prob[:300], y[:300], stem="prob")
    np.savez(tmp_path / "split.npz", probs=prob, labels=y, split=np.arange(n) >= 300)
    out = tmp_path / "out"
    code, _, err = run_evaluate(
        capsys,
        str(tmp_path / "test.csv"),
        str(tmp_path / "split.npz"),
        "--val",
        str(tmp_path / "val.csv"),
        "--val",
        str(tmp_path / "split.npz"),
        "--bootstrap",
        "50",
        "--out",
        str(out),
    )
    # the split file also has a --val file: refused; without it, the two routes agree
    assert code == 2 and "has a split array and --val" in err
    code, _, err = run_evaluate(
        capsys, str(tmp_path / "test.csv"), "--val", str(tmp_path / "val.csv"), "--bootstrap", "50", "--out", str(out)
    )
    assert code == 0, err
    by_val = json.loads((out / "evaluation.json").read_text())["models"][0]
    code, _, err = run_evaluate(capsys, str(tmp_path / "split.npz"), "--bootstrap", "50", "--out", str(out))
    by_split = json.loads((out / "evaluation.json").read_text())["models"][0]
    assert code == 0 and by_val["num_classes"] == 2 and by_val["kind"] == "probs"
    assert by_val["temperature"] == pytest.approx(by_split["temperature"], rel=1e-6)
    assert by_val["metrics"]["nll"]["value"] == pytest.approx(by_split["metrics"]["nll"]["value"], rel=1e-6)


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("logits_as_probs", [], r"\(array 'probs'\): .*kind='probs'.* look like logits"),
        ("logits", ["--kind", "probs"], r"\(--kind probs\): .*kind='probs'.* look like logits"),
        ("rows_not_one", [], r"\(array 'probs'\): .*sum"),
        ("nan", [], r"\(array 'logits'\): .*NaN or infinite value at row 17"),
    ],
)
def test_values_the_engine_refuses_are_one_line_errors_naming_the_file(tmp_path, capsys, case, extra, message):
    logits, y = make(200, 4)
    if case == "logits_as_probs":
        np.savez(tmp_path / "m.npz", probs=logits, labels=y)
    elif case == "rows_not_one":
        np.savez(tmp_path / "m.npz", probs=0.9 * probs_of(logits), labels=y)
    else:
        if case == "nan":
            logits[17, 2] = np.nan
        np.savez(tmp_path / "m.npz", logits=logits, labels=y)
    out = tmp_path / "out"
    code, _, err = run_evaluate(capsys, str(tmp_path / "m.npz"), *extra, "--bootstrap", "10", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert err.startswith(f"labelsmooth evaluate: error: {tmp_path / 'm.npz'} ")
    assert re.search(message, err), err


def test_reading_a_large_file_allocates_no_copy_of_the_scores(tmp_path):
    # numpy reports its allocations to tracemalloc; a memory map's pages are not allocations
    import tracemalloc

    n, k = 50_000, 200  # 20 MB of float16 scores; their float32 copy would be 40 MB
    y = np.random.default_rng(0).integers(0, k, n)
    np.savez(tmp_path / "big.npz", logits=np.ones((n, k), np.float16), labels=y)
    tracemalloc.start()
    try:
        p = read_predictions(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.streamed and p.scores.shape == (n, k)
    assert peak < 8 * n + 2_000_000  # the labels as int64 and a little more, not 20 MB


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    logits, y = make(200, 3)
    np.savez(tmp_path / "m.npz", logits=logits, labels=y)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_evaluate(capsys, str(tmp_path / "m.npz"), "--bootstrap", "10", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert "argument --out: cannot write into" in err and "Permission denied" in err


def test_the_example_session_in_docs_evaluate_md_is_what_the_command_prints(tmp_path, monkeypatch, capsys):
    # The page's script writes the files and its session block is the command's output, verbatim: when the
    # engine's numbers or the table's layout change, regenerate the block by running the two.
    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluate.md").read_text()
    section = text[text.index("### Example session") :]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    session = re.search(r"```\n\$ (labelsmooth evaluate .*?)\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "docs/evaluate.md", "exec"), {})
    argv = session.group(1).split()[1:]
    code, stdout, err = run_evaluate(capsys, *argv[1:])
    assert code == 0, err
    assert stdout == session.group(2), "docs/evaluate.md's example session is out of date"
