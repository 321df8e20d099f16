"""Swap a small language model's head + loss for labelsmooth.LinearCrossEntropyLoss.

A two-layer GRU reads sequences from a random Markov chain over a 2,000-token vocabulary and predicts the
next token. The usual way forms the (batch x time x vocabulary) logits with ``model.head`` and calls
cross-entropy on them; the fused loss takes the hidden states and the head's weight and bias instead
and never forms those logits. Both give the same loss and the same gradients; the model keeps its
``head`` (used as usual for generation), only the training loss changes. Runs on CPU in seconds.

Run: python examples/linear_head.py [--smoke]
"""

import argparse

import torch
from torch import nn

import labelsmooth as ls

VOCAB, HIDDEN, BATCH, TIME = 2000, 64, 16, 32


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.rnn = nn.GRU(HIDDEN, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T, HIDDEN) hidden states, the input of the head."""
        return self.rnn(self.embed(tokens))[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))  # (B, T, VOCAB) logits


def markov_batches(steps: int, seed: int = 0):
    """Sequences from a sparse random Markov chain: each token has 4 likely successors."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, VOCAB, (VOCAB, 4), generator=g)
    for _ in range(steps):
        seq = torch.empty(BATCH, TIME + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, VOCAB, (BATCH,), generator=g)
        for t in range(TIME):
            pick = torch.randint(0, 4, (BATCH,), generator=g)
            seq[:, t + 1] = successors[seq[:, t], pick]
        yield seq[:, :-1], seq[:, 1:]


def main() -> None:
    p = argparse.ArgumentParser(description="fused linear + cross-entropy in a small model's head")
    p.add_argument("--smoke", action="store_true", help="20 training steps instead of 150")
    steps = 20 if p.parse_args().smoke else 150
    torch.manual_seed(0)
    model = TinyLM()
    fused = ls.LinearCrossEntropyLoss(label_smoothing=0.1)
    plain = nn.CrossEntropyLoss(label_smoothing=0.1)

    # The two losses agree, gradients included.
    tokens, targets = next(markov_batches(1, seed=1))
    loss_plain = plain(model(tokens).reshape(-1, VOCAB), targets.reshape(-1))
    grad_plain = torch.autograd.grad(loss_plain, model.head.weight)[0]
    loss_fused = fused(model.hidden(tokens), model.head.weight, targets, model.head.bias)
    grad_fused = torch.autograd.grad(loss_fused, model.head.weight)[0]
    print(f"plain loss {loss_plain.item():.6f}, fused loss {loss_fused.item():.6f}, "
          f"largest head-gradient difference {(grad_plain - grad_fused).abs().max().item():.1e} "
          f"(largest entry {grad_plain.abs().max().item():.1e})")

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step, (tokens, targets) in enumerate(markov_batches(steps)):
        opt.zero_grad()
        # The head's weight and bias go to the loss; the (B, T, VOCAB) logits are never formed.
        loss = fused(model.hidden(tokens), model.head.weight, targets, model.head.bias)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:3d}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
