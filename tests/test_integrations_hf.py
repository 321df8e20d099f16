"""labelsmooth.integrations.huggingface: the Trainer's compute_loss_func.

The loss is checked against torch's own float64 cross-entropy on explicitly shifted labels, gradient
accumulation against the full batch (by hand and through a real ``transformers.Trainer``), and the
Trainer's own ``label_smoothing_factor`` where that one normalises correctly. The tests that need
``transformers`` build tiny randomly initialised models from configs: nothing is downloaded.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labelsmooth.integrations import huggingface as hf
from labelsmooth.integrations.huggingface import label_smoothed_loss

SRC = Path(__file__).resolve().parents[1] / "src"
EPS = 0.1
# Lengths of 8 sequences of 9 tokens: micro-batches of 2 hold 11, 13, 12 and 8 labelled tokens.
LENGTHS = [9, 2, 3, 9, 4, 8, 2, 6]
T, V = 9, 32
# float32 losses summed over ~100 items in different orders: ~1e-7 relative rounding per operation.
F32 = {"rtol": 1e-5, "atol": 1e-6}


def padded_batch(lengths=LENGTHS, seq=T, vocab=V, seed=0):
    """Token ids and labels of sequences padded to ``seq`` (padding labelled -100)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), seq), generator=g)
    keep = torch.arange(seq) < torch.tensor(lengths)[:, None]
    ids = torch.where(keep, ids, torch.zeros_like(ids))
    labels = torch.where(keep, ids, torch.full_like(ids, -100))
    return ids, labels, keep.long()


def causal_reference(logits, labels, eps=EPS, reduction="mean"):
    """torch's float64 cross-entropy of position t against label t+1, written out independently."""
    x = logits[:, :-1].double().reshape(-1, logits.shape[-1])
    return F.cross_entropy(x, labels[:, 1:].reshape(-1), label_smoothing=eps, reduction=reduction)


def _triton_runs() -> bool:
    # Under TRITON_INTERPRET=1 (set in conftest) the Triton kernels run on CPU tensors.
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1"


BACKENDS = ["auto", "chunked", "reference"] + (["triton"] if _triton_runs() else [])


# ---------------------------------------------------------------- the loss function on its own


def test_import_labelsmooth_never_imports_transformers():
    code = (
        "import sys, labelsmooth, labelsmooth.integrations.huggingface as h\n"
        "h.label_smoothed_loss(0.1)\n"
        "assert 'transformers' not in sys.modules and 'accelerate' not in sys.modules, sorted(sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr


def test_docstring_examples_run():
    result = doctest.testmod(hf, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_lm_matches_torch_on_shifted_labels(backend):
    logits = torch.randn(len(LENGTHS), T, V, generator=torch.Generator().manual_seed(1))
    _, labels, _ = padded_batch()
    loss_fn = label_smoothed_loss(EPS, "causal_lm", backend=backend)
    n = int((labels[:, 1:] != -100).sum())
    assert n < labels[:, 1:].numel()  # padding is present, so ignoring it is tested
    # Without a count: the mean over labelled targets; with one: the sum divided by it.
    torch.testing.assert_close(
        loss_fn({"logits": logits.clone()}, labels).double(), causal_reference(logits, labels), **F32
    )
    got = loss_fn({"logits": logits.clone()}, labels, num_items_in_batch=torch.tensor(3 * n))
    torch.testing.assert_close(got.double(), causal_reference(logits, labels, reduction="sum") / (3 * n), **F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_tasks_match_torch(backend):
    g = torch.Generator().manual_seed(2)
    seq_logits = torch.randn(6, 5, generator=g)
    seq_labels = torch.tensor([0, 4, -100, 2, 2, 1])
    got = label_smoothed_loss(0.2, "sequence_classification", backend=backend)(
        (seq_logits.clone(),), seq_labels, num_items_in_batch=7
    )
    want = F.cross_entropy(seq_logits.double(), seq_labels, label_smoothing=0.2, reduction="sum") / 7
    torch.testing.assert_close(got.double(), want, **F32)

    tok_logits = torch.randn(3, 4, 6, generator=g)
    tok_labels = torch.randint(0, 6, (3, 4), generator=g)
    tok_labels[0, 2:] = -100
    got = label_smoothed_loss(0.2, "token_classification", backend=backend)(tok_logits.clone(), tok_labels)
    want = F.cross_entropy(tok_logits.double().reshape(-1, 6), tok_labels.reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(got.double(), want, **F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation_by_hand_equals_full_batch(backend):
    """4 micro-batches of 2, each normalised by the whole batch's count, give the full batch's gradient.

    The logits come from a linear head so that the gradient reaches a parameter through the loss's
    backward, as in a model (and through the in-place gradient buffer on the fused backends).
    """
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(len(LENGTHS), T, 8, generator=g)
    _, labels, _ = padded_batch()
    head = torch.nn.Linear(8, V)
    loss_fn = label_smoothed_loss(EPS, backend=backend)
    n = (labels[:, 1:] != -100).sum()  # what the Trainer counts for a causal LM

    head.zero_grad()
    full = loss_fn({"logits": head(hidden)}, labels, num_items_in_batch=n)
    full.backward()
    full_grad = head.weight.grad.clone()
    head.zero_grad()
    accumulated = torch.zeros(())
    for rows in torch.arange(len(LENGTHS)).split(2):
        loss = loss_fn({"logits": head(hidden[rows])}, labels[rows], num_items_in_batch=n)
        loss.backward()
        accumulated += loss.detach()

    # The independent float64 gradient of the full batch's mean.
    w = head.weight.detach().double().requires_grad_()
    causal_reference(hidden.double() @ w.T + head.bias.detach().double(), labels).backward()
    torch.testing.assert_close(full.double(), causal_reference(head(hidden).detach(), labels), **F32)
    torch.testing.assert_close(accumulated, full, **F32)
    torch.testing.assert_close(head.weight.grad.double(), w.grad, **F32)
    torch.testing.assert_close(full_grad.double(), w.grad, **F32)

    # The test can fail: averaging per-micro-batch means (what a loss ignoring the count gives)
    # moves the gradient far outside the tolerance with this padding.
    head.zero_grad()
    for rows in torch.arange(len(LENGTHS)).split(2):
        (loss_fn({"logits": head(hidden[rows])}, labels[rows]) / 4).backward()
    assert (head.weight.grad.double() - w.grad).abs().max() > 100 * F32["atol"]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("chunked", "triton")])
def test_inplace_leaves_logits_intact_without_grad_and_writes_them_with_grad(backend):
    # 2**20 logits would be needed for "auto" to pick the fused kernel on CPU; name it instead.
    logits = torch.randn(4, 6, 11, generator=torch.Generator().manual_seed(4))
    _, labels, _ = padded_batch([6, 3, 5, 1], seq=6, vocab=11)
    loss_fn = label_smoothed_loss(EPS, backend=backend)  # inplace=True is the default
    before = logits.clone()
    with torch.no_grad():  # how the Trainer evaluates: the logits then go to compute_metrics
        loss_fn({"logits": logits}, labels)
    assert torch.equal(logits, before)
    x = logits.clone().requires_grad_()
    y = x * 1.0  # a non-leaf output, as a model's logits are
    loss_fn({"logits": y}, labels).backward()
    assert not torch.equal(y.detach(), before)  # the gradient took the logits' storage
    torch.testing.assert_close(x.grad.double(), _reference_grad(before, labels), **F32)
    kept = label_smoothed_loss(EPS, backend=backend, inplace=False)
    z = logits.clone().requires_grad_() * 1.0
    kept({"logits": z}, labels).backward()
    assert torch.equal(z.detach(), before)


def _reference_grad(logits, labels):
    x = logits.double().requires_grad_()
    causal_reference(x, labels).backward()
    return x.grad


def test_extra_arguments_reach_cross_entropy():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([1, 2, 3, -100, 6])
    weight = torch.rand(7, generator=torch.Generator().manual_seed(6)) + 0.5
    got = label_smoothed_loss(EPS, "sequence_classification", weight=weight)(logits, labels, num_items_in_batch=4)
    want = F.cross_entropy(logits.double(), labels, weight.double(), label_smoothing=EPS, reduction="sum") / 4
    torch.testing.assert_close(got.double(), want, **F32)
    z = label_smoothed_loss(EPS, "sequence_classification", z_loss=1e-2)(logits, labels)
    lse = torch.logsumexp(logits.double(), 1)[labels != -100]
    torch.testing.assert_close(
        z.double(), F.cross_entropy(logits.double(), labels, label_smoothing=EPS) + 1e-2 * (lse**2).mean(), **F32
    )


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: label_smoothed_loss(0.1, task="masked_lm"), ValueError, "task must be one of"),
        (lambda: label_smoothed_loss(1.5), ValueError, "label_smoothing"),
        (lambda: label_smoothed_loss(-0.1), ValueError, "allow_negative"),
        (lambda: label_smoothed_loss(0.1, reduction="sum"), ValueError, "reduction cannot be set"),
        (lambda: label_smoothed_loss(0.1, label_smoothing_factor=0.1), TypeError, "'label_smoothing_factor'"),
        (lambda: label_smoothed_loss(0.1, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: label_smoothed_loss(0.1, ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: label_smoothed_loss(0.1, inplace="yes"), TypeError, "inplace"),
    ],
)
def test_bad_construction_is_named(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.mark.parametrize(
    "task, outputs, labels, kw, exc, words",
    [
        ("causal_lm", {"logits": torch.zeros(2, 3, 4)}, None, {}, ValueError, "labels is None"),
        ("causal_lm", {"logits": torch.zeros(2, 3, 4)}, torch.zeros(2, 3), {}, TypeError, "integer class indices"),
        (
            "causal_lm",
            {"logits": torch.zeros(2, 3, 4)},
            torch.zeros(2, 4, dtype=torch.long),
            {},
            ValueError,
            r"labels \(2, 4\)",
        ),
        (
            "sequence_classification",
            {"logits": torch.zeros(2, 3, 4)},
            torch.zeros(2, dtype=torch.long),
            {},
            ValueError,
            r"\(B, C\) and \(B,\)",
        ),
        ("causal_lm", {"loss": torch.zeros(())}, torch.zeros(2, 3, dtype=torch.long), {}, ValueError, "no 'logits'"),
        ("causal_lm", "logits", torch.zeros(2, 3, dtype=torch.long), {}, TypeError, "got str"),
        (
            "causal_lm",
            {"logits": torch.zeros(2, 3, 4)},
            torch.zeros(2, 3, dtype=torch.long),
            {"num_items_in_batch": "6"},
            TypeError,
            "num_items_in_batch",
        ),
    ],
)
def test_bad_call_is_named(task, outputs, labels, kw, exc, words):
    with pytest.raises(exc, match=words):
        label_smoothed_loss(0.1, task)(outputs, labels, **kw)


# ---------------------------------------------------------------- inside transformers.Trainer


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def trainer_for(model, tmp_path, loss_fn=None, batch=8, accumulate=1, factor=0.0):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class KeepGradients(TrainerCallback):
        """Copies the accumulated gradients just before the optimiser would use them."""

        def __init__(self):
            self.grads: dict[str, torch.Tensor] = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}

    ids, labels, mask = padded_batch()
    data = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels, strict=True)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.0,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        label_smoothing_factor=factor,
    )
    keep = KeepGradients()
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, compute_loss_func=loss_fn, callbacks=[keep]
    )
    return trainer, keep, data


@pytest.fixture(scope="module")
def transformers_offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model or file fetched by mistake fails loudly
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    # Models this small only lose time to intra-op threads, several times over on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trainer_loss_equals_its_own_label_smoother(transformers_offline, tmp_path):
    model = tiny_llama()
    ours, _, data = trainer_for(model, tmp_path, label_smoothed_loss(EPS, backend="chunked"))
    theirs, _, _ = trainer_for(model, tmp_path, factor=EPS)
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    n = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for count in (None, n, 2 * n):
            want = causal_reference(logits, batch["labels"], reduction="sum") / (count if count is not None else n)
            torch.testing.assert_close(
                ours.compute_loss(model, dict(batch), num_items_in_batch=count).double(), want, **F32
            )
            if count is None or smoother_takes_count():
                got = theirs.compute_loss(model, dict(batch), num_items_in_batch=count)
                torch.testing.assert_close(got.double(), want, **F32)


def smoother_takes_count():
    """Whether this transformers' LabelSmoother normalises by num_items_in_batch (older ones
    average each micro-batch on its own, which is not the full batch's loss)."""
    import inspect

    from transformers.trainer_pt_utils import LabelSmoother

    return "num_items_in_batch" in inspect.signature(LabelSmoother.__call__).parameters


def test_trainer_sequence_classification_equals_its_own_label_smoother(transformers_offline, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=V,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            num_labels=5,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    model.eval()
    ids, _, mask = padded_batch()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 4, 1, 3, 3, 2, 0, 1])}
    ours, _, _ = trainer_for(model, tmp_path, label_smoothed_loss(EPS, "sequence_classification"))
    theirs, _, _ = trainer_for(model, tmp_path, factor=EPS)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        want = F.cross_entropy(logits.double(), batch["labels"], label_smoothing=EPS)
        for trainer in (ours, theirs):
            torch.testing.assert_close(trainer.compute_loss(model, dict(batch)).double(), want, **F32)
            if trainer is ours or smoother_takes_count():
                got = trainer.compute_loss(model, dict(batch), num_items_in_batch=8)
                torch.testing.assert_close(got.double(), want, **F32)


def test_trainer_accumulation_4x2_equals_1x8(transformers_offline, tmp_path):
    # The fused kernel, in place on the model's logits ("auto" would pick torch's kernel at this size).
    loss_fn = label_smoothed_loss(EPS, backend="chunked")
    runs = {}
    for batch, accumulate in ((8, 1), (2, 4)):
        trainer, keep, _ = trainer_for(tiny_llama(), tmp_path, loss_fn, batch=batch, accumulate=accumulate)
        trainer.train()
        runs[batch] = keep.grads
    # The independent full-batch gradient: torch's float64 loss on the same (identically seeded) model.
    model = tiny_llama().double()
    ids, labels, mask = padded_batch()
    causal_reference(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(runs[2][name], runs[8][name], **F32)
        torch.testing.assert_close(
            runs[8][name].double(), p.grad, rtol=1e-4, atol=1e-6, msg=name
        )  # float32 model vs float64: ~1e-6 relative per layer


def test_trainer_evaluation_keeps_logits_for_metrics(transformers_offline, tmp_path):
    model = tiny_llama()
    trainer, _, data = trainer_for(model, tmp_path, label_smoothed_loss(EPS, backend="chunked"))
    out = trainer.predict(data)
    ids, labels, mask = padded_batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(torch.as_tensor(out.predictions), logits, **F32)
    torch.testing.assert_close(torch.tensor(out.metrics["test_loss"]).double(), causal_reference(logits, labels), **F32)
