"""Train a causal language model with Hugging Face's Trainer and labelsmooth's label-smoothed loss.

The change to a Trainer script is one argument, in place of ``label_smoothing_factor=0.1``::

    from labelsmooth.integrations.huggingface import CalibrationCallback, label_smoothed_loss
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      compute_loss_func=label_smoothed_loss(0.1, task="causal_lm"))

The model is a tiny Llama built from a config (randomly initialised: nothing is downloaded) and the
data a made-up language of additions, ``<bos>27+85=112<eos>``, one character a token, so the script
runs offline on a CPU. Only the answer (``112<eos>``) is labelled; the prompt and the padding are -100.
The micro-batches of an accumulated batch then hold different numbers of labelled tokens, which is
where normalising by the Trainer's ``num_items_in_batch`` (the whole accumulated batch's count)
matters: each labelled token weighs the same, whichever micro-batch it is in.

Evaluation reports labelsmooth's calibration metrics of the answer tokens (accuracy, NLL, Brier, ECE,
class-wise ECE, MCE, AURC: the evaluation engine's numbers) through
``labelsmooth.integrations.huggingface.CalibrationCallback``, whose ``compute_metrics`` the Trainer calls at
each evaluation and which, as a callback, logs the reliability diagram to TensorBoard or W&B when the
Trainer reports to them (``report_to``; this script reports nowhere).

Needs ``pip install 'labelsmooth[hf]'`` (transformers and accelerate).

Run:
    python examples/hf_trainer.py              # 300 steps (about 30 s on 2 busy cores)
    python examples/hf_trainer.py --smoke      # 3 steps: checks that everything runs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally: never reach for the Hub
try:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_utils import EvalPrediction
except ImportError:
    sys.exit("this example needs transformers and accelerate: pip install 'labelsmooth[hf]'")

from labelsmooth.integrations.huggingface import CalibrationCallback, label_smoothed_loss

CHARS = "0123456789+="
PAD, BOS, EOS = len(CHARS), len(CHARS) + 1, len(CHARS) + 2
VOCAB = len(CHARS) + 3


def make_examples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` additions of 1- or 2-digit numbers, tokenised by hand, labels on the answer only."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        digits = torch.randint(1, 3, (2,), generator=g)
        a, b = (int(torch.randint(0, 10 ** int(d), (1,), generator=g)) for d in digits)
        prompt = [BOS] + [CHARS.index(c) for c in f"{a}+{b}="]
        answer = [CHARS.index(c) for c in str(a + b)] + [EOS]
        ids = torch.tensor(prompt + answer)
        labels = torch.tensor([-100] * len(prompt) + answer)
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch; padding is masked out and labelled -100."""
    length = max(len(x["input_ids"]) for x in batch)
    out = {"input_ids": torch.full((len(batch), length), PAD),
           "attention_mask": torch.zeros(len(batch), length, dtype=torch.long),
           "labels": torch.full((len(batch), length), -100)}
    for row, x in enumerate(batch):
        n = len(x["input_ids"])
        out["input_ids"][row, :n] = x["input_ids"]
        out["attention_mask"][row, :n] = 1
        out["labels"][row, :n] = x["labels"]
    return out


def exact_match(pred: EvalPrediction) -> float:
    """The fraction of additions whose whole answer is predicted right (argmax at every answer position)."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    predicted = torch.as_tensor(logits).argmax(-1)[:, :-1]  # the prediction at t is for the label at t+1
    target = torch.as_tensor(pred.label_ids)[:, 1:]
    right = (predicted == target) | (target == -100)
    return right.all(dim=1).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, default=0.1, help="label smoothing (default 0.1)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    parser.add_argument("--backend", default="auto", choices=("auto", "chunked", "reference"),
                        help="labelsmooth's backend (default auto)")
    parser.add_argument("--smoke", action="store_true", help="3 steps on little data: checks that everything runs")
    args = parser.parse_args(argv)
    steps = 3 if args.smoke else args.steps
    if "OMP_NUM_THREADS" not in os.environ:
        # A model this small gains nothing from intra-op threads, and on a busy machine loses several
        # times its run time to them (measured: 40 steps 36 s with 2 threads, 11 s with 1).
        torch.set_num_threads(1)

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=BOS,
        eos_token_id=EOS))
    train = make_examples(256 if args.smoke else 4096, seed=1)
    test = make_examples(64 if args.smoke else 512, seed=2)
    # Calibration of the answer tokens (labelled positions only) at every evaluation; the metrics come back
    # as eval_accuracy, eval_nll, eval_ece, ... With report_to="tensorboard" the callback would also log
    # the reliability diagram. The Trainer keeps all evaluation logits: fine for this 15-token vocabulary.
    calibration = CalibrationCallback(task="causal_lm")

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        return {**calibration.compute_metrics(pred), "exact_match": exact_match(pred)}

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
            max_steps=steps, per_device_train_batch_size=32, gradient_accumulation_steps=2,
            per_device_eval_batch_size=128, learning_rate=3e-3, warmup_steps=min(20, steps // 10),
            logging_steps=max(1, steps // 5), seed=0)
        trainer = Trainer(
            model=model, args=training_args, train_dataset=train, eval_dataset=test, data_collator=collate,
            # The one line that matters: the Trainer's label_smoothing_factor stays 0.
            compute_loss_func=label_smoothed_loss(args.eps, task="causal_lm", backend=args.backend),
            compute_metrics=compute_metrics, callbacks=[calibration])
        result = trainer.train()
        metrics = trainer.evaluate()
    print(f"label_smoothing={args.eps}, {steps} steps of 2 x 32 sequences: train loss {result.training_loss:.3f}; "
          f"test loss {metrics['eval_loss']:.3f}, answer token accuracy {metrics['eval_accuracy']:.3f}, "
          f"exact match {metrics['eval_exact_match']:.3f}, answer token NLL {metrics['eval_nll']:.3f}, "
          f"ECE {metrics['eval_ece']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
