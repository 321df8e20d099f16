"""CIFAR-10 through the whole study: the augmentation layer on its own, then an end-to-end run on a
small file set written in CIFAR-10's binary format (five training batches and a test batch)."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from labelsmooth.cli import main
from labelsmooth.study import models
from labelsmooth.study.data import load_dataset
from labelsmooth.study.models import CropFlip, build_model

# ----------------------------------------------------------------------------- CropFlip


def all_windows(img: np.ndarray, pad: int) -> list[np.ndarray]:
    """Every crop (and its mirror) CropFlip may return for one (C, H, W) image, cut with numpy slicing."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    out = []
    for top, left in product(range(2 * pad + 1), repeat=2):
        window = padded[:, top : top + h, left : left + w]
        out += [window, window[:, :, ::-1]]
    return out


def test_cropflip_output_is_a_padded_crop_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 6)  # not square: rows and columns must not be mixed up
    y = CropFlip(padding=2).train()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        assert any(np.array_equal(yi, w) for w in all_windows(xi, 2))


def test_cropflip_draws_every_offset_and_flips_about_half():
    # Images whose pixels encode their own (row, column): the output reveals the offset and the flip.
    n, h, w, pad = 4000, 6, 6, 2
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.stack([rows, cols]).float().add(1).expand(n, 2, h, w)  # +1: zero is padding
    torch.manual_seed(1)
    y = CropFlip(padding=pad).train()(x)
    # With a 2-pixel pad, rows and columns 2..3 of a 6x6 window always come from the image: the row
    # value there gives the vertical offset, and the order of two column values gives the flip.
    centre = y[:, 0, h // 2, w // 2]
    top = (centre - 1 - h // 2 + pad).long()
    assert sorted(set(top.tolist())) == list(range(2 * pad + 1))
    flipped = y[:, 1, 3, 3] < y[:, 1, 3, 2]
    left = torch.where(flipped, y[:, 1, 3, 3] - 1 - (w - 1 - 3) + pad, y[:, 1, 3, 3] - 1 - 3 + pad).long()
    assert sorted(set(left.tolist())) == list(range(2 * pad + 1))
    share = flipped.double().mean().item()
    # Binomial(4000, 0.5): sd 0.0079; 0.05 is more than six standard deviations.
    assert abs(share - 0.5) < 0.05


def test_cropflip_is_identity_in_eval_and_deterministic_under_the_seed():
    x = torch.rand(5, 3, 32, 32)
    aug = CropFlip()
    assert aug.eval()(x) is x
    aug.train()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    assert torch.equal(aug(x), a)
    assert not torch.equal(a, x)  # 5 images: the chance that all keep offset 4 and no flip is 1e-17
    assert torch.equal(CropFlip(padding=0, flip=0.0).train()(x), x)


def test_cropflip_and_build_model_argument_errors():
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        CropFlip(padding=-1)
    with pytest.raises(TypeError, match="padding must be an int, got float"):
        CropFlip(padding=2.5)
    with pytest.raises(ValueError, match=r"flip must be a probability in \[0, 1\], got 1\.5"):
        CropFlip(flip=1.5)
    with pytest.raises(ValueError, match=r"CropFlip expects \(N, C, H, W\) images, got shape \(3, 32, 32\)"):
        CropFlip().train()(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"augment=True needs \(C, H, W\) image inputs, got input_shape \(64,\)"):
        build_model((64,), 10, augment=True)
    plain = build_model((3, 32, 32), 10)
    assert not any(isinstance(m, CropFlip) for m in plain.modules())


# ----------------------------------------------------------------------------- end to end


def write_cifar_batches(folder, per_batch: int, n_test: int, seed: int = 0) -> np.ndarray:
    """CIFAR-10 binary batches whose classes differ in colour, so a CNN can learn them in a few steps.

    Returns the test-batch labels, in file order.
    """
    rng = np.random.default_rng(seed)
    # A colour per class (one RGB triple), plus pixel noise: learnable by global average pooling.
    palette = rng.integers(30, 226, size=(10, 3))
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = n_test if name == "test_batch.bin" else per_batch
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        pixels = palette[labels][:, :, None] + rng.integers(-30, 31, size=(n, 3, 1024))
        rec = np.concatenate([labels[:, None], pixels.reshape(n, 3072)], axis=1).astype(np.uint8)
        rec.tofile(folder / name)
        if name == "test_batch.bin":
            test_labels = labels
    return test_labels


def test_study_runs_end_to_end_on_cifar10_binary_files_with_augmentation(tmp_path, monkeypatch):
    data = tmp_path / "cifar-10-batches-bin"  # the folder name of the official archive
    data.mkdir()
    test_labels = write_cifar_batches(data, per_batch=40, n_test=30)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.augment and ds.x.shape == (200, 3, 32, 32) and ds.x_test.shape == (30, 3, 32, 32)

    # Count the augmented batches: the study must crop and flip in training and never in evaluation.
    seen = {"train": 0, "eval": 0, "eval_changed": 0}
    forward = models.CropFlip.forward

    def counting(self, x):
        y = forward(self, x)
        seen["train" if self.training else "eval"] += len(x)
        seen["eval_changed"] += not self.training and y is not x
        return y

    monkeypatch.setattr(models.CropFlip, "forward", counting)
    out = tmp_path / "run"
    argv = [
        "study",
        "--data-dir",
        str(tmp_path),
        "--datasets",
        "cifar10",
        "--methods",
        "ce,ls,ts",
        "--eps",
        "0,0.1",
        "--noise",
        "0",
        "--seeds",
        "1",
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "--lrs",  # one learning rate: no choice on validation, no extra trainings to count
        "0.01",
        "--train-fractions",  # the whole training split only: no size sweep
        "1",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0

    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["method"], r["label_smoothing"]) for r in runs} == {("ce", 0.0), ("ts", 0.0), ("ls", 0.1)}
    # 200 training images, 20% to validation; the official test batch is the test set, whole.
    assert {tuple(sorted(r["splits"].items())) for r in runs} == {(("n_test", 30), ("n_train", 160), ("n_val", 40))}
    assert {r["config"]["model"] for r in runs} == {"cnn"}
    assert all("horizontal flip" in r["dataset_description"] for r in runs)
    # Two trainings (ce/ts share one) x 4 epochs x 160 images went through the augmentation; the
    # evaluations (curves, validation, test) passed through it untouched.
    assert seen["train"] == 2 * 4 * 160 and seen["eval"] > 0 and seen["eval_changed"] == 0
    for r in runs:
        with np.load(out / r["probs_file"], allow_pickle=False) as f:
            np.testing.assert_array_equal(f["labels"], test_labels)  # test batch kept in file order
            assert f["probs"].shape == (30, 10)
        curve = r["curves"]["train_loss"]
        assert curve[-1] < 0.8 * curve[0], curve  # it learned the colours, with crops and flips on
    html = (out / "report.html").read_text()
    assert "Reliability diagrams: cifar10" in html and "figure not drawn" not in html


@pytest.mark.parametrize("damaged", ["data_batch_3.bin", "test_batch.bin"])
def test_a_truncated_cifar_batch_is_refused_before_anything_is_written(tmp_path, capsys, damaged):
    data = tmp_path / "cifar-10-batches-bin"
    data.mkdir()
    write_cifar_batches(data, per_batch=20, n_test=10)
    path = data / damaged
    path.write_bytes(path.read_bytes()[:5000])  # as `head -c 5000` leaves it: not a whole number of records
    out = tmp_path / "run"
    for extra in (["--datasets", "cifar10"], []):  # named, or found in --data-dir
        with pytest.raises(SystemExit) as exc:
            main(["study", "--quick", "--data-dir", str(tmp_path), "--out", str(out), *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        option = "--datasets" if extra else "--data-dir"
        message = f"argument {option}: {str(path)!r} is not a CIFAR-10 binary batch (truncated?): its size (5000 bytes)"
        assert message in err and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]  # the error is one line, after argparse's usage lines
        assert last.startswith("labelsmooth study: error: ") and message in last, err
        assert not out.exists()  # refused before the output folder (and its probs/) is created
