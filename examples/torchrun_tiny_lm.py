"""A tiny language model trained with a vocabulary-parallel, label-smoothed loss on torch.distributed.

Run on CPU (gloo) with two processes:

    torchrun --nproc_per_node=2 examples/torchrun_tiny_lm.py
    torchrun --nproc_per_node=2 examples/torchrun_tiny_lm.py --smoke    # 3 steps, checked against one process

The ranks form tensor-parallel groups of ``--tp`` ranks (default: all of them), each holding a
contiguous slice of the output layer's rows (the vocabulary; uneven when ``--vocab`` does not divide),
and data-parallel groups across them. Every optimiser step accumulates ``--micro-batches`` micro-batches
of sequences padded to different lengths, and normalises with the recipe of ``docs/distributed.md``:
each micro-batch's summed loss is divided by the number of non-padding targets of the whole step over
all data-parallel ranks (``global_num_targets``), and gradients are summed, not averaged, over data-
parallel ranks. ``--check`` compares the first step's loss and every gradient with one process
computing torch's own cross-entropy on the full model and the full batch.

The data: the next token is a fixed permutation of the previous one with probability 0.9, else
uniformly random, so the loss can fall from about log V towards the entropy of that noise (about 0.8
nats for V = 101, plus what smoothing adds).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from labelsmooth.distributed import global_num_targets, vocab_parallel_cross_entropy, vocab_slice

IGNORE = -100


def make_batch(args, step: int, dp_rank: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, T) and next-token targets (B, T) padded with IGNORE, the same on every rank that asks
    for the same (step, data-parallel rank, micro-batch)."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + dp_rank * 31 + micro)
    b, t, v = args.batch, args.seq, args.vocab
    perm = torch.randperm(v, generator=torch.Generator().manual_seed(args.seed))  # the "grammar"
    seq = torch.empty(b, t + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, v, (b,), generator=gen)
    for i in range(1, t + 1):
        rule = perm[seq[:, i - 1]]
        noise = torch.randint(0, v, (b,), generator=gen)
        seq[:, i] = torch.where(torch.rand(b, generator=gen) < 0.9, rule, noise)
    tokens, target = seq[:, :-1].clone(), seq[:, 1:].clone()
    lengths = torch.randint(2, t + 1, (b,), generator=gen)  # uneven padding within and across batches
    pad = torch.arange(t) >= lengths.unsqueeze(1)
    tokens[pad] = 0
    target[pad] = IGNORE
    return tokens, target


class TinyLM(torch.nn.Module):
    """Embeddings of the last two tokens -> MLP -> hidden state; the output layer is held outside,
    split over the tensor-parallel ranks."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.mix = torch.nn.Linear(2 * hidden, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)
        prev = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
        return torch.tanh(self.mix(torch.cat([e, prev], dim=-1)))


def build(args, rank_slice: slice):
    """The replicated trunk and this rank's rows of the output layer, from one seed, so that the model
    is the same whatever the number of ranks."""
    torch.manual_seed(args.seed)
    trunk = TinyLM(args.vocab, args.hidden)
    head = torch.randn(args.vocab, args.hidden) / math.sqrt(args.hidden)
    return trunk, head[rank_slice].clone().requires_grad_(), head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=101)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--tp", type=int, default=0, help="tensor-parallel size (0: all ranks)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare step 0 with one process")
    parser.add_argument("--smoke", action="store_true", help="3 steps with --check: a quick check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.check = 3, True

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        train(args, torch.device("cuda") if cuda else torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def train(args, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    tp = args.tp or world
    if world % tp:
        raise ValueError(f"--tp must divide the number of processes ({world}), got {tp}")
    dp = world // tp
    # Ranks tp*d .. tp*d + tp - 1 share the rows of a batch and split the vocabulary; ranks with the same
    # tensor-parallel rank split the data. Every rank creates every group, in the same order.
    tp_groups = [dist.new_group(list(range(d * tp, (d + 1) * tp))) for d in range(dp)]
    dp_groups = [dist.new_group(list(range(t, world, tp))) for t in range(tp)]
    dp_rank, tp_rank = divmod(rank, tp)
    tp_group, dp_group = tp_groups[dp_rank], dp_groups[tp_rank]

    my_slice = vocab_slice(args.vocab, tp_rank, tp)
    trunk, head, full_head = build(args, my_slice)
    trunk.to(device)
    head = head.detach().to(device).requires_grad_()
    params = [*trunk.parameters(), head]
    opt = torch.optim.Adam(params, lr=args.lr)
    if rank == 0:
        print(f"{world} ranks: tensor-parallel {tp} x data-parallel {dp}; vocabulary {args.vocab} split "
              f"{[vocab_slice(args.vocab, r, tp).stop - vocab_slice(args.vocab, r, tp).start for r in range(tp)]}",
              flush=True)

    start = time.perf_counter()
    first = last = None
    for step in range(args.steps):
        batches = [tuple(t.to(device) for t in make_batch(args, step, dp_rank, m))
                   for m in range(args.micro_batches)]
        # The step's non-padding targets over every data-parallel rank: a device tensor, no host sync.
        n_targets = global_num_targets([y for _, y in batches], ignore_index=IGNORE, group=dp_group)
        opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for tokens, target in batches:
            local_logits = trunk(tokens) @ head.T
            loss = vocab_parallel_cross_entropy(local_logits, target, label_smoothing=args.label_smoothing,
                                                ignore_index=IGNORE, reduction="sum", group=tp_group)
            loss = loss / n_targets
            loss.backward()
            step_loss += loss.detach()
        # The trunk's gradient reaches each tensor-parallel rank through its own slice of the logits
        # only: the true gradient is their sum. Then sum (not average) over data-parallel ranks, since
        # every micro-batch loss was already divided by the global count.
        for p in trunk.parameters():
            dist.all_reduce(p.grad, group=tp_group)
        for p in params:
            dist.all_reduce(p.grad, group=dp_group)
        dist.all_reduce(step_loss, group=dp_group)
        if step == 0 and args.check:
            check(args, trunk, head, full_head, step_loss, tp_group, dp, device)
        opt.step()
        value = float(step_loss)  # logging only, outside the loss
        first = value if first is None else first
        last = value
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {value:.4f}", flush=True)
    if rank == 0:
        print(f"loss {first:.4f} -> {last:.4f} in {args.steps} steps, {time.perf_counter() - start:.1f} s "
              f"(log V = {math.log(args.vocab):.4f})", flush=True)


def check(args, trunk, head, full_head, step_loss, tp_group, dp, device) -> None:
    """Step 0 against one process: torch's cross-entropy on the full output layer and every data-
    parallel rank's micro-batches at once. Gathers full weights: for checking, never for training."""
    ref_trunk, _, _ = build(args, slice(0, 0))
    ref_trunk.to(device)
    ref_head = full_head.to(device).requires_grad_()
    tokens, target = zip(*(make_batch(args, 0, d, m) for d in range(dp) for m in range(args.micro_batches)))
    tokens, target = torch.cat(tokens).to(device), torch.cat(target).to(device)
    logits = ref_trunk(tokens) @ ref_head.T
    ref = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                          label_smoothing=args.label_smoothing)
    ref.backward()
    tp_rank = dist.get_rank(tp_group)
    my_slice = vocab_slice(args.vocab, tp_rank, dist.get_world_size(tp_group))
    # float32 sums over a few hundred rows in different orders: agreement to ~1e-6 relative.
    torch.testing.assert_close(step_loss, ref.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(trunk.named_parameters(), ref_trunk.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(head.grad, ref_head.grad[my_slice], rtol=1e-4, atol=1e-6)
    if dist.get_rank() == 0:
        print(f"check passed: loss {float(step_loss):.6f} vs single-process {float(ref.detach()):.6f}; "
              "every rank's gradients match", flush=True)


if __name__ == "__main__":
    main()
