"""What each language-model option costs: the same loss with and without it, forward+backward.

For ``cross_entropy`` (chunked backend) and ``linear_cross_entropy`` on CPU, every option alone and all
of them together, against the same call without options, in the same process on the same inputs:

* ``token_weight``: a per-token weight of the target's shape;
* ``shift``: (B, C, T) logits (an LM's (B, T, V) passed as ``transpose(1, 2)``) scored against the next
  token; the baseline is the same rows without shift;
* ``logit_scale`` as a float, and as a 0-d tensor that requires grad (its gradient is computed too);
* ``return_aux=True``: z_loss, lse, accuracy, predicted and entropy.

The targets are at most 5% over the baseline for each option and at most 10% for ``return_aux``.
Timing: alternating order over rounds (each round runs every contender once, in reversed order every
other round), medians with min and max beside them, memory primed before each call as in
``labelsmooth.bench``. The machine line comes first; record the table in benchmarks/RESULTS.md.

    python benchmarks/bench_options.py [--repeats 7] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import labelsmooth as ls
from labelsmooth import bench

EPS = 0.1
TARGET = {"return_aux": 1.10}
DEFAULT_TARGET = 1.05


def ce_contenders(
    b: int, t: int, v: int
) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Each takes (logits (B*T, V) leaf, targets (B*T,), token weights (B*T,)) and returns the loss."""

    def call(x: torch.Tensor, y: torch.Tensor, **kw: object) -> torch.Tensor:
        return ls.cross_entropy(x, y, label_smoothing=EPS, backend="chunked", **kw)

    def seq(x: torch.Tensor) -> torch.Tensor:  # (B*T, V) rows as the (B, V, T) view an LM passes
        return x.view(b, t, v).transpose(1, 2)

    scale = torch.tensor(0.7, requires_grad=True)
    return {
        "baseline": lambda x, y, w: call(x, y),
        "token_weight": lambda x, y, w: call(x, y, token_weight=w),
        "shift": lambda x, y, w: call(seq(x), y.view(b, t), shift=True),
        "logit_scale (float)": lambda x, y, w: call(x, y, logit_scale=0.7),
        "logit_scale (tensor, with its gradient)": lambda x, y, w: call(x, y, logit_scale=scale),
        "return_aux": lambda x, y, w: call(x, y, return_aux=True)[0],
        "all together": lambda x, y, w: call(
            seq(x), y.view(b, t), token_weight=w.view(b, t), shift=True, logit_scale=scale, return_aux=True
        )[0],
    }


def linear_contenders(b: int, t: int) -> dict[str, Callable[..., torch.Tensor]]:
    """Each takes (hidden (B*T, H) leaf, classifier (V, H) leaf, targets (B*T,), token weights)."""

    def call(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, **kw: object) -> torch.Tensor:
        return ls.linear_cross_entropy(h, w, y, label_smoothing=EPS, backend="chunked", **kw)

    scale = torch.tensor(0.7, requires_grad=True)
    return {
        "baseline": lambda h, w, y, tw: call(h, w, y),
        "token_weight": lambda h, w, y, tw: call(h, w, y, token_weight=tw),
        "shift": lambda h, w, y, tw: call(h.view(b, t, -1), w, y.view(b, t), shift=True),
        "logit_scale (float)": lambda h, w, y, tw: call(h, w, y, logit_scale=0.7),
        "logit_scale (tensor, with its gradient)": lambda h, w, y, tw: call(h, w, y, logit_scale=scale),
        "return_aux": lambda h, w, y, tw: call(h, w, y, return_aux=True)[0],
        "all together": lambda h, w, y, tw: call(
            h.view(b, t, -1),
            w,
            y.view(b, t),
            token_weight=tw.view(b, t),
            shift=True,
            logit_scale=scale,
            return_aux=True,
        )[0],
    }


def timed(run: Callable[[], torch.Tensor], prime_bytes: int) -> float:
    bench.prime_memory(prime_bytes)
    start = time.perf_counter()
    run().backward()
    return time.perf_counter() - start


def measure(
    runs: dict[str, Callable[[], torch.Tensor]], prime_bytes: int, repeats: int, label: str
) -> dict[str, list[float]]:
    names = list(runs)
    for name in names:  # warm-up outside the timed rounds
        timed(runs[name], prime_bytes)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(runs[name], prime_bytes))
        print(f"  {label}: round {r + 1}/{repeats}", file=sys.stderr)
    return times


def table(title: str, times: dict[str, list[float]]) -> list[str]:
    base = statistics.median(times["baseline"])
    out = [
        f"**{title}**",
        "",
        "| option | median ms | min | max | vs baseline | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base
        if name in ("baseline", "all together"):
            verdict = "–"
        else:
            limit = TARGET.get(name, DEFAULT_TARGET)
            verdict = f"≤ {limit:.2f}: {'met' if ratio <= limit else 'NOT met'}"
        out.append(
            f"| {name} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {max(ts) * 1e3:.1f} | {ratio:.3f} | {verdict} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--ce-shape", default="4x1024x32000", help="B x T x V for cross_entropy (default 4x1024x32000)")
    p.add_argument("--linear-shape", default="2x1024x1024x32000", help="B x T x H x V (default 2x1024x1024x32000)")
    p.add_argument("--only", choices=["ce", "linear"], default=None, help="run one of the two tables")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    b, t, v = (int(s) for s in args.ce_shape.split("x"))
    lb, lt, h, lv = (int(s) for s in args.linear_shape.split("x"))

    g = torch.Generator().manual_seed(0)
    lines = [
        f"Machine: {bench.machine_description('cpu')}; {args.repeats} rounds, eps={EPS}, float32.",
    ]
    if args.only != "linear":
        x = torch.randn(b * t, v, generator=g) * 2
        y = torch.randint(0, v, (b * t,), generator=g)
        y[::17] = -100  # some ignored tokens, as padding gives
        tw = torch.rand(b * t, generator=g)
        ce = {
            name: (lambda fn=fn: fn(x.detach().requires_grad_(True), y, tw))  # type: ignore[misc]
            for name, fn in ce_contenders(b, t, v).items()
        }
        ce_times = measure(ce, 4 * x.numel() * 4, args.repeats, f"cross_entropy {b}x{t}x{v}")
        lines += ["", *table(f"cross_entropy, backend='chunked', B x T x V = {b} x {t} x {v}", ce_times)]
    if args.only != "ce":
        hid = torch.randn(lb * lt, h, generator=g)
        cls = torch.randn(lv, h, generator=g) / h**0.5
        ly = torch.randint(0, lv, (lb * lt,), generator=g)
        ltw = torch.rand(lb * lt, generator=g)
        lin = {
            name: (lambda fn=fn: fn(hid.detach().requires_grad_(True), cls.detach().requires_grad_(True), ly, ltw))  # type: ignore[misc]
            for name, fn in linear_contenders(lb, lt).items()
        }
        lin_times = measure(lin, 256 << 20, args.repeats, f"linear_cross_entropy {lb}x{lt}x{h}->{lv}")
        title = f"linear_cross_entropy, backend='chunked', B x T x H -> V = {lb} x {lt} x {h} -> {lv}"
        lines += ["", *table(title, lin_times)]
    lines.append(f"\nLoad average {bench._load_average()} at the end.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
