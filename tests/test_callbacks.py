"""The Lightning and Hugging Face callbacks log the evaluation engine's own numbers on the validation set.

Each framework test trains a tiny model for a few steps on the CPU, then scores the same validation
outputs with :func:`labelsmooth.evaluation.evaluate` and checks that what was logged is exactly that.
Nothing is downloaded: the Hugging Face model is built from a config.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.evaluation import METRICS, evaluate
from labelsmooth.integrations import callbacks as C

SRC = Path(__file__).resolve().parents[1] / "src"
# Logged values pass through float32 tensors in Lightning (callback_metrics): ~1e-7 relative.
F32 = {"rel": 1e-6, "abs": 1e-7}


@pytest.fixture
def one_thread():
    # Models this small only lose time to intra-op threads, several times over on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_importing_the_callbacks_modules_imports_no_framework():
    code = (
        "import sys, labelsmooth, labelsmooth.integrations.callbacks, labelsmooth.integrations.huggingface as h\n"
        "assert not {'transformers', 'lightning', 'pytorch_lightning'} & set(sys.modules), sorted(sys.modules)\n"
        "h.CalibrationCallback()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr


def test_docstring_examples_run():
    import labelsmooth.integrations.huggingface as hf

    modules = [C, hf]
    if _has("lightning"):
        import labelsmooth.integrations.lightning as lt

        modules.append(lt)
    for module in modules:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def _has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------- the shared core


def test_flatten_drops_padding_and_shifts():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    labels = torch.tensor([[0, 1, 2], [3, -100, -100]])
    z, y = C.flatten_outputs(logits, labels)
    assert y.tolist() == [0, 1, 2, 3] and torch.equal(z, logits.reshape(-1, 4)[[0, 1, 2, 3]])
    z, y = C.flatten_outputs(logits, labels, shift=True)  # position t against label t+1
    assert y.tolist() == [1, 2] and torch.equal(z, logits[0, :2])
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3, 4\) do not match labels of shape \(2, 2\)"):
        C.flatten_outputs(logits, labels[:, :2])
    with pytest.raises(ValueError, match="no labelled row"):
        C.score_outputs(logits, torch.full((2, 3), -100))


def test_scalars_are_the_engines_metrics_with_interval_ends():
    g = torch.Generator().manual_seed(0)
    logits, labels = 2 * torch.randn(300, 4, generator=g), torch.randint(0, 4, (300,), generator=g)
    res = evaluate(logits, labels, n_bootstrap=50)
    got = C.scalars(res, "v/")
    assert set(got) == {f"v/{m}{s}" for m in METRICS for s in ("", "_low", "_high")}
    for m in METRICS:
        assert got[f"v/{m}"] == res.metrics[m].value and got[f"v/{m}_low"] == res.metrics[m].low
    assert set(C.scalars(evaluate(logits, labels, n_bootstrap=0))) == set(METRICS)


# ---------------------------------------------------------------- Lightning


def _digits_like(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].argmax(1) + (torch.rand(n, generator=g) < 0.2).long()) % 3
    return torch.utils.data.TensorDataset(x, y)


def _lightning_module(returns: str):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            if returns == "dict":
                return {"logits": logits, "labels": y, "loss": torch.nn.functional.cross_entropy(logits, y)}
            if returns == "loss":
                return torch.nn.functional.cross_entropy(logits, y)
            return logits

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    return Tiny()


class _Experiment:
    def __init__(self):
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def add_image(self, tag, img, step, dataformats="CHW"):
        assert dataformats == "HWC"
        self.images.append((tag, img.shape, step))


def _image_logger():
    """A logger whose experiment takes images as TensorBoard's SummaryWriter does (add_image)."""
    from lightning.pytorch.loggers import Logger

    class ImageLogger(Logger):
        def __init__(self):
            super().__init__()
            self._experiment = _Experiment()
            self.metrics: list[dict[str, float]] = []

        @property
        def name(self):
            return "images"

        @property
        def version(self):
            return 0

        @property
        def experiment(self):
            return self._experiment

        def log_metrics(self, metrics, step=None):
            self.metrics.append(dict(metrics))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return ImageLogger()


def _fit(module, callback, logger=False, epochs=2):
    import lightning.pytorch as pl

    loaders = [torch.utils.data.DataLoader(_digits_like(n, s), batch_size=32) for n, s in ((128, 0), (80, 1))]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_train_batches=3,
    )
    with _quiet():
        trainer.fit(module, loaders[0], loaders[1])
    return trainer, loaders[1]


class _quiet:
    def __enter__(self):
        import logging
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._log = logging.getLogger("lightning.pytorch")
        self._level = self._log.level
        self._log.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._log.setLevel(self._level)
        return self._w.__exit__(*exc)


@pytest.mark.parametrize("returns", ["logits", "dict"])
def test_lightning_logs_the_engines_numbers_on_the_validation_set(returns, one_thread):
    pytest.importorskip("lightning")
    from labelsmooth.integrations.lightning import CalibrationCallback

    module = _lightning_module(returns)
    logger = _image_logger()
    cb = CalibrationCallback(n_bins=10, n_bootstrap=30, prefix="val/")
    trainer, val = _fit(module, cb, logger)
    x, y = val.dataset.tensors
    with torch.no_grad():
        logits = module.net(x)
    want = evaluate(logits, y, n_bins=10, n_bootstrap=30)
    logged = trainer.callback_metrics
    for m in METRICS:
        assert float(logged[f"val/{m}"]) == pytest.approx(want.metrics[m].value, **F32), m
        assert float(logged[f"val/{m}_low"]) == pytest.approx(want.metrics[m].low, **F32), m
    assert cb.result is not None and cb.result.n == 80
    # One scored epoch per training epoch (the sanity check is not scored), each with both figures.
    per_epoch = [d for d in logger.metrics if "val/ece" in d]
    assert len(per_epoch) == 2
    tags = [t for t, _, _ in logger.experiment.images]
    assert tags == ["val/reliability", "val/risk_coverage"] * 2
    assert all(len(shape) == 3 and shape[2] == 3 for _, shape, _ in logger.experiment.images)
    assert [s for _, _, s in logger.experiment.images][::2] == [3, 6]  # global steps after each epoch


def test_lightning_names_a_validation_step_that_returns_no_logits(one_thread):
    pytest.importorskip("lightning")
    from labelsmooth.integrations.lightning import CalibrationCallback

    with pytest.raises(ValueError, match=r"validation_step returned a 0-d tensor \(a loss\?\)"):
        _fit(_lightning_module("loss"), CalibrationCallback(), epochs=1)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1, got 0"):
        CalibrationCallback(n_bins=0)


# ---------------------------------------------------------------- Hugging Face


def test_calibration_metrics_equals_the_engine_on_an_eval_prediction():
    pytest.importorskip("transformers")
    from transformers.trainer_utils import EvalPrediction

    from labelsmooth.integrations.huggingface import calibration_metrics

    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((400, 5))).astype(np.float32)
    labels = rng.integers(0, 5, 400)
    got = calibration_metrics(EvalPrediction(predictions=(logits, logits[:, :1]), label_ids=labels), n_bootstrap=40)
    want = evaluate(logits, labels, n_bootstrap=40)
    assert got == C.scalars(want) and got["ece"] == want.metrics["ece"].value

    # A causal LM: position t is scored against label t+1; -100 (the Trainer's padding too) is dropped.
    seq = (2 * rng.standard_normal((6, 7, 11))).astype(np.float32)
    ids = rng.integers(0, 11, (6, 7))
    ids[:, :2] = -100
    ids[0, 5:] = -100
    got = calibration_metrics(EvalPrediction(predictions=seq, label_ids=ids), task="causal_lm")
    rows, targets = seq[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1)
    want = evaluate(rows[targets != -100], targets[targets != -100], n_bootstrap=0)
    assert want.n == 6 * 5 - 2 and got == C.scalars(want)
    with pytest.raises(ValueError, match="task must be one of"):
        calibration_metrics((seq, ids), task="lm")


class _Writer:
    def __init__(self):
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def add_image(self, tag, img, step, dataformats="CHW"):
        assert dataformats == "HWC" and img.dtype == np.uint8
        self.images.append((tag, img.shape, step))


def test_trainer_logs_the_engines_numbers_and_the_figures_at_each_evaluation(tmp_path, one_thread):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Trainer, TrainingArguments

    from labelsmooth.integrations.huggingface import CalibrationCallback

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x, labels=None):
            logits = self.head(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    torch.manual_seed(0)
    train, val = (_digits_like(n, s) for n, s in ((64, 0), (90, 1)))
    as_dicts = [[{"x": x, "labels": y} for x, y in zip(*d.tensors, strict=True)] for d in (train, val)]
    writer = _Writer()
    calib = CalibrationCallback(n_bins=10, tb_writer=writer)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,  # 90 rows: batches of 32, 32 and 26
        learning_rate=0.5,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    model = Classifier()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=as_dicts[0],
        eval_dataset=as_dicts[1],
        compute_metrics=calib.compute_metrics,
        callbacks=[calib],
    )
    trainer.train()
    final = trainer.evaluate()
    x, y = val.tensors
    with torch.no_grad():
        logits = model(x.to(model.head.weight.device), y)["logits"].cpu()
    want = evaluate(logits, y, n_bins=10, n_bootstrap=0)
    for m in METRICS:
        assert final[f"eval_{m}"] == pytest.approx(want.metrics[m].value, rel=1e-6, abs=1e-7), m
    logged = [h for h in trainer.state.log_history if "eval_ece" in h]
    assert len(logged) == 3 and all(set(C.scalars(want, "eval_")) <= set(h) for h in logged)
    # Two evaluations during training (steps 1 and 2) and the final one, each with both images.
    assert [(t, s) for t, _, s in writer.images] == [
        (f"eval/{k}", s) for s in (1, 2, 2) for k in ("reliability", "risk_coverage")
    ]
