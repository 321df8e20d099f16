"""PyTorch Lightning: label smoothing in a LightningModule, with calibration logged on validation.

The change to an existing LightningModule is the loss it builds::

    self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)    # before
    self.loss_fn = labelsmooth.CrossEntropyLoss(label_smoothing=0.1)  # after

Everything Lightning does around it (the optimiser step, the loops, logging, checkpoints) is unchanged.
Calibration on the validation set is one callback, ``labelsmooth.integrations.lightning.CalibrationCallback``:
``validation_step`` returns the logits, and the callback logs ``val/accuracy``, ``val/nll``, ``val/ece``,
... (labelsmooth's evaluation engine) at every epoch, with the reliability diagram as an image where the
logger takes images (TensorBoard, W&B).

This script trains an MLP on scikit-learn's 8x8 digits (60% train, 20% validation, 20% test) with
and without smoothing, keeps the epoch with the best validation accuracy (a ModelCheckpoint watching
the callback's ``val/accuracy``), and scores that checkpoint on the test split once with
``labelsmooth.evaluate``.

Run (needs ``pip install lightning scikit-learn``):
    python examples/lightning_digits.py              # eps 0.1 against 0, 20 epochs (about 10 s on 2 cores)
    python examples/lightning_digits.py --smoke      # 2 epochs of 3 batches: checks that everything runs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

import labelsmooth as ls
from labelsmooth.evaluation import EvaluationResult

try:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from labelsmooth.integrations.lightning import CalibrationCallback
except ImportError as exc:
    sys.exit(f"this example needs lightning and scikit-learn: pip install lightning scikit-learn ({exc})")


def splits(seed: int) -> dict[str, TensorDataset]:
    """Stratified 60/20/20 split of the digits into train, validation and test datasets."""
    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    x_tr, x_val, y_tr, y_val = train_test_split(x_rest, y_rest, test_size=0.25, random_state=seed, stratify=y_rest)

    def ds(a: object, b: object) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))

    return {"train": ds(x_tr, y_tr), "val": ds(x_val, y_val), "test": ds(x_test, y_test)}


class DigitsClassifier(L.LightningModule):
    """An MLP whose training loss is ``labelsmooth.CrossEntropyLoss``; ``validation_step`` returns the
    logits for the CalibrationCallback."""

    def __init__(self, label_smoothing: float, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        self.loss_fn = ls.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return self(x)  # the CalibrationCallback takes the labels from the batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def run(eps: float, epochs: int, limit_batches: int | float, workdir: str, seed: int = 0) -> EvaluationResult:
    """Train with ``eps``, keep the best validation epoch, score it on the test split once."""
    L.seed_everything(seed, workers=True, verbose=False)
    data = splits(seed)
    loaders = {k: DataLoader(v, batch_size=64, shuffle=(k == "train")) for k, v in data.items()}
    calibration = CalibrationCallback(prefix="val/")  # val/accuracy, val/nll, val/ece, ... every epoch
    best = ModelCheckpoint(dirpath=os.path.join(workdir, f"eps{eps}"), monitor="val/accuracy", mode="max")
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[calibration, best],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=limit_batches,
        deterministic=True,
    )
    trainer.fit(DigitsClassifier(eps), loaders["train"], loaders["val"])
    # The test split is used once, on the epoch chosen on validation, by the same evaluation engine.
    model = DigitsClassifier.load_from_checkpoint(best.best_model_path).eval()
    x, y = data["test"].tensors
    with torch.no_grad():
        logits = model(x)
    return ls.evaluate(logits, y, n_bootstrap=0, name=f"eps={eps}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, default=0.1, help="label smoothing (default 0.1)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches: a quick check that it runs")
    args = parser.parse_args(argv)
    epochs, limit = (2, 3) if args.smoke else (args.epochs, 1.0)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # a model this small gains nothing from intra-op threads
    # Lightning's informational lines (GPU available, checkpoint paths) would bury the results.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning 2.6 calling a torch API torch 2.13 deprecates
    with tempfile.TemporaryDirectory() as workdir:
        for eps in (0.0, args.eps):
            m = run(eps, epochs, limit, workdir).metrics
            print(f"label_smoothing={eps:<4}: best validation epoch on test: accuracy {m['accuracy'].value:.3f}, "
                  f"NLL {m['nll'].value:.3f}, ECE {m['ece'].value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
