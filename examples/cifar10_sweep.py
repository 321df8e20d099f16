"""CIFAR-10: choose the label-smoothing eps of a small CNN with ``labelsmooth.sweep``.

``sweep`` runs your own training function once per (eps, seed), chooses eps on the validation set
only, and then compares the chosen eps with eps = 0 on the test set, paired over seeds. The training
function here is an ordinary PyTorch loop; the one line that matters is its loss::

    loss = labelsmooth.cross_entropy(model(x), y, label_smoothing=eps)

The data are the CIFAR-10 *binary* batches (``data_batch_1.bin`` ... ``data_batch_5.bin``,
``test_batch.bin``; see docs/cifar10.md for where to get them), read by the study's reader (no pickle,
nothing downloaded). A stratified 20% of the training batches is the validation set, the same for
every run; ``test_batch.bin`` is the test set. The model is a small CNN of torchvision-style
conv-BN-ReLU blocks, written in plain torch.

Run (needs scikit-learn for the stratified split: ``pip install 'labelsmooth[study]'``):
    python examples/cifar10_sweep.py --data-dir ~/data --out runs/cifar-sweep
        # eps 0, 0.05, 0.1, 0.2 x 3 seeds: 12 trainings of 5 epochs on 10000 images (390 steps each);
        # extrapolated from docs/cifar10.md's step and evaluation times, not measured: about 2 minutes
        # a training, 25 minutes in all, on one CPU core
    python examples/cifar10_sweep.py --data-dir ~/data --smoke --out runs/cifar-smoke
        # 2 seeds x eps 0 and 0.1, a few steps on a few hundred images: checks that everything runs

The report (``sweep.md``, ``sweep.html``, ``sweep.json``) and the saved runs go to ``--out``; running
the same command again trains only the runs that are missing.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import labelsmooth as ls
from labelsmooth.evaluation import sweep
from labelsmooth.study.data import DatasetError, Splits, load_dataset, split_dataset


@dataclass(frozen=True)
class Settings:
    """How much to train: the full run or the smoke test."""

    max_train: int | None  # stratified cap on the training images (None: all 40000)
    max_eval: int | None  # first N validation and test images (None: all)
    epochs: int
    max_steps: int | None  # stop an epoch loop after this many steps in all (None: no cap)
    batch_size: int
    width: int  # channels of the first block


FULL = Settings(max_train=10000, max_eval=None, epochs=5, max_steps=None, batch_size=128, width=32)
SMOKE = Settings(max_train=300, max_eval=200, epochs=1, max_steps=4, batch_size=64, width=8)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """A 3x3 convolution, batch normalisation and ReLU: torchvision's usual block (no bias before BN)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def small_cnn(width: int = 32, num_classes: int = 10) -> nn.Sequential:
    """Three conv-BN-ReLU stages (width, 2 width, 4 width channels) with max-pooling, then a linear head."""
    return nn.Sequential(
        conv_bn_relu(3, width),
        nn.MaxPool2d(2),  # 16x16
        conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2),  # 8x8
        conv_bn_relu(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


@functools.lru_cache(maxsize=2)
def load_splits(data_dir: str, settings: Settings) -> Splits:
    """The CIFAR-10 batches split once (seed 0): every run sees the same validation and test images."""
    ds = load_dataset("cifar10", data_dir)
    sp = split_dataset(ds, seed=0, val_fraction=0.2, max_train=settings.max_train)
    if settings.max_eval is not None:
        n = settings.max_eval
        sp.x_val, sp.y_val, sp.x_test, sp.y_test = sp.x_val[:n], sp.y_val[:n], sp.x_test[:n], sp.y_test[:n]
    return sp


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: str, batch_size: int = 500) -> np.ndarray:
    """Logits of ``x`` in evaluation mode (batch norm's running statistics), in the order of ``x``."""
    model.eval()
    parts = [
        model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts).numpy()


def train_fn(
    eps: float, seed: int, train_labels: np.ndarray, *, data_dir: str, settings: Settings, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Train the CNN with label smoothing ``eps`` on the (possibly noisy) ``train_labels``; return its logits.

    Top level of the module, so that ``sweep``'s worker processes can import it; the sweep passes it as a
    ``functools.partial`` that fixes the data folder and the settings.
    """
    sp = load_splits(data_dir, settings)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_cnn(settings.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_all, y_all = torch.from_numpy(sp.x_train), torch.from_numpy(train_labels)
    steps = 0
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=gen)
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            if torch.rand((), generator=gen) < 0.5:  # horizontal flip of the batch: a mirrored image is the same class
                x = x.flip(-1)
            loss = ls.cross_entropy(model(x), y, label_smoothing=eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
    return {"val": predict(model, sp.x_val, device), "test": predict(model, sp.x_test, device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder of the CIFAR-10 binary batches (or the one above it)")
    p.add_argument("--out", default="runs/cifar10-sweep", help="folder of the saved runs and the report")
    p.add_argument("--smoke", action="store_true", help="a few steps on a few hundred images, 2 seeds, eps 0 and 0.1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=1, help="training processes (default 1; use 1 on a GPU)")
    args = p.parse_args(argv)

    settings = SMOKE if args.smoke else FULL
    eps, seeds = ((0.0, 0.1), 2) if args.smoke else ((0.0, 0.05, 0.1, 0.2), 3)
    try:
        sp = load_splits(args.data_dir, settings)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"CIFAR-10: {len(sp.y_train)} training, {len(sp.y_val)} validation, {len(sp.y_test)} test images; "
        f"eps {list(eps)}, {seeds} seeds, {settings.epochs} epoch(s)"
    )
    fn = functools.partial(train_fn, data_dir=args.data_dir, settings=settings, device=args.device)
    res = sweep(
        fn,
        train_labels=sp.y_train,
        val_labels=sp.y_val,
        test_labels=sp.y_test,
        eps=eps,
        seeds=seeds,
        num_classes=10,
        out=args.out,
        workers=args.workers,
        name="small CNN",
    )
    means = ", ".join(f"eps {e:g}: {v:.4f}" for e, v in res.validation.items())
    print(f"validation {res.select_on} (mean over seeds): {means}")
    print(f"chosen eps: {res.chosen_eps:g}")
    if res.note:
        print(res.note)
    for v in res.verdicts:
        print(f"  {v.metric:>13}: {v.text()} (chosen eps minus eps 0, positive is better) -> {v.words}")
    print(f"report: {res.out / 'sweep.md'}, sweep.html, sweep.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
