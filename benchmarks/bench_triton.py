"""The Triton backend on a GPU: its kernels alone against a whole training step, and against peers.

For each shape and dtype, in one process and in alternating order (medians of ``--repeats`` rounds):

* ``kernels alone``: the forward kernel (statistics) and the backward kernel (gradient) on
  preallocated buffers, timed with CUDA events; and the one-launch kernel the fused linear loss uses
  per chunk (statistics pass, then the gradient pass over the same row, which may hit L2); their GB/s against the bytes they must move (read the
  logits twice, write the gradient once) and against the issue's yardstick of one read plus one write.
* ``end to end``: ``ls.cross_entropy(...).backward()`` (reduction "mean") and
  ``(ls.cross_entropy(..., reduction="sum") / n).backward()`` with ``n`` a device tensor (how Hugging
  Face normalises under gradient accumulation), each on a fresh leaf copy of the logits; the ratio to
  the kernels alone is the overhead of everything around them.
* peers, end to end: torch eager, torch.compile, and Liger-Kernel's LigerCrossEntropyLoss when it is
  installed.
* host time per call: many calls on a small problem without synchronising in between, so that the
  host, not the device, sets the pace: the Python and launch overhead of one forward+backward.
* on CUDA, each end-to-end step's peak memory beyond its inputs (``torch.cuda.max_memory_allocated``),
  and the issue's targets where both sides ran: labelsmooth >= 1.3x faster than Liger at bf16
  16384 x 128256 for both grad_outputs, and an unaligned vocabulary (50257) within 1.1x of the aligned
  one (128256) per logit.

    python benchmarks/bench_triton.py [--shapes 16384x128256] [--dtypes bfloat16,float32] [--markdown out.md]

Record the table in benchmarks/RESULTS.md only from a run on a GPU, with the machine line it prints.
With ``--device cpu`` and TRITON_INTERPRET=1 it runs (slowly, with wall-clock timing) as a smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.bench import copy_bandwidth, machine_description, make_inputs, parse_shape

EPS = 0.1


class Timer:
    """Elapsed seconds of ``fn()``: CUDA events on a GPU, the wall clock (after a sync) elsewhere."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def kernel_steps(x: torch.Tensor, t: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The Triton kernels alone, on buffers allocated once (as ``loss.backward()`` would use them)."""
    from labelsmooth.kernels import triton_ce

    grad = torch.empty_like(x)
    n = t.numel()
    scale = torch.full((), 1.0 / n, device=x.device)
    _, stats = triton_ce.forward(x, t, None, -100, EPS, 0.0, None, save_stats=True)

    def fwd():
        triton_ce.forward(x, t, None, -100, EPS, 0.0, None, save_stats=True)

    def bwd():
        triton_ce.backward(x, t, None, -100, EPS, None, stats, grad, grad_scale=scale)

    def both():
        fwd()
        bwd()

    def one_launch():  # the fused linear loss's per-chunk launch: statistics then gradient, per row
        triton_ce.fused_ce(x, t, None, -100, EPS, 0.0, None, grad, grad_scale=scale)

    return {"forward kernel": fwd, "backward kernel": bwd, "kernels alone": both,
            "one-launch kernel (statistics + gradient)": one_launch}


def end_to_end(device: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """Whole steps on a leaf: name -> fn(leaf, target) that runs forward and backward."""
    n_dev = {}

    def count(t):
        if t.device not in n_dev:
            n_dev[t.device] = (t != -100).sum().float()
        return n_dev[t.device]

    steps = {
        "ls triton, loss.backward()": lambda x, t: ls.cross_entropy(
            x, t, label_smoothing=EPS, backend="triton").backward(),
        "ls triton, (loss_sum / n).backward()": lambda x, t: (ls.cross_entropy(
            x, t, label_smoothing=EPS, backend="triton", reduction="sum") / count(t)).backward(),
        "ls triton inplace, loss.backward()": lambda x, t: ls.cross_entropy(
            x, t, label_smoothing=EPS, backend="triton", inplace=True).backward(),
        "torch eager, loss.backward()": lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS).backward(),
    }
    if device == "cuda":
        compiled = torch.compile(lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS))
        steps["torch.compile, loss.backward()"] = lambda x, t: compiled(x, t).backward()
        try:  # the peer to beat, when its (pure-Python) package is installed
            from liger_kernel.transformers import LigerCrossEntropyLoss
        except ImportError:
            pass
        else:
            liger_mean = LigerCrossEntropyLoss(label_smoothing=EPS)
            liger_sum = LigerCrossEntropyLoss(label_smoothing=EPS, reduction="sum")
            steps["liger, loss.backward()"] = lambda x, t: liger_mean(x, t).backward()
            steps["liger, (loss_sum / n).backward()"] = lambda x, t: (liger_sum(x, t) / count(t)).backward()
    return steps


def measure(rows: int, classes: int, dtype: torch.dtype, device: str, repeats: int) -> tuple[list[tuple], float | None]:
    x, t = make_inputs(rows, classes, dtype, device)
    timer = Timer(device)
    kernels = kernel_steps(x, t)
    steps = end_to_end(device)
    leaf_box: list[torch.Tensor] = []

    def whole(fn):
        def run():
            fn(leaf_box[0], t)
        return run

    runs: dict[str, Callable[[], object]] = dict(kernels)
    runs.update({name: whole(fn) for name, fn in steps.items()})
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats + 1):  # round 0 warms up (compilation, autotuning, allocator)
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in steps:
                leaf_box[:] = [x.clone().requires_grad_(True)]  # not timed
            elapsed = timer(runs[name])
            leaf_box.clear()
            if r:
                times[name].append(elapsed)
    peak: dict[str, float] = {}
    if device == "cuda":
        for name in steps:
            leaf = x.clone().requires_grad_(True)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            steps[name](leaf, t)
            torch.cuda.synchronize()
            peak[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del leaf
    copy = copy_bandwidth(x) if device == "cuda" else None
    logits_bytes = x.numel() * x.element_size()
    kernel_med = statistics.median(times["kernels alone"])
    out = []
    for name in names:
        med = statistics.median(times[name])
        moved = {"forward kernel": 1, "backward kernel": 2}.get(name, 3)  # one-launch: 2 reads (1 maybe L2), 1 write
        gbps = moved * logits_bytes / med / 1e9
        out.append((f"{rows}x{classes}", str(dtype).split(".")[-1], name, med, min(times[name]),
                    max(times[name]), med / kernel_med, gbps,
                    2 * logits_bytes / med / 1e9, peak.get(name)))
    return out, copy


def host_time_per_call(device: str, calls: int = 200) -> dict[str, float]:
    """Microseconds per forward+backward when the host sets the pace (a small problem, no syncs)."""
    x, t = make_inputs(64, 1024, torch.float32, device)
    leaves = [x.clone().requires_grad_(True) for _ in range(calls)]
    kernels = kernel_steps(x, t)["kernels alone"]
    out = {}
    for name, fn in (("kernels alone", lambda leaf: kernels()),
                     ("ls triton, loss.backward()", lambda leaf: ls.cross_entropy(
                         leaf, t, label_smoothing=EPS, backend="triton").backward())):
        for leaf in leaves[:10]:
            fn(leaf)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for leaf in leaves:
            fn(leaf)
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / calls * 1e6
    return out


def format_table(rows: list[tuple], copies: dict[str, float | None]) -> str:
    lines = ["| shape | dtype | what | median ms | min ms | max ms | vs kernels alone | GB/s moved | "
             "GB/s as 1 read + 1 write | % of copy (1 read + 1 write) | extra peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, dt, name, med, lo, hi, ratio, gbps, yard, peak in rows:
        copy = copies.get(f"{shape} {dt}")
        pct = f"{100 * yard / copy:.0f}%" if copy else "n/a"
        mib = "" if peak is None else f"{peak:.0f}"
        lines.append(f"| {shape} | {dt} | {name} | {med * 1e3:.2f} | {lo * 1e3:.2f} | {hi * 1e3:.2f} | "
                     f"{ratio:.2f}x | {gbps:.0f} | {yard:.0f} | {pct} | {mib} |")
    return "\n".join(lines)


def targets(rows: list[tuple]) -> list[str]:
    """The issue's targets, for the shapes and peers that ran."""
    med = {(shape, dt, name): m for shape, dt, name, m, *_ in rows}
    out = []
    for dt in sorted({r[1] for r in rows}):
        for g in ("loss.backward()", "(loss_sum / n).backward()"):
            ours, liger = med.get(("16384x128256", dt, f"ls triton, {g}")), med.get(("16384x128256", dt, f"liger, {g}"))
            if ours and liger:
                verdict = "" if dt != "bfloat16" else f" (target >= 1.3: {'met' if liger / ours >= 1.3 else 'NOT met'})"
                out.append(f"* {dt} 16384x128256, {g}: Liger / labelsmooth = {liger / ours:.2f}{verdict}")
        a, u = med.get(("16384x128256", dt, "ls triton, loss.backward()")), med.get(("16384x50257", dt, "ls triton, loss.backward()"))
        if a and u:
            ratio = (u / 50257) / (a / 128256)
            out.append(f"* {dt}, time per logit 50257 / 128256 (unaligned / aligned rows): {ratio:.2f} "
                       f"(target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--shapes", default="16384x128256,16384x50257,4096x256000,65536x32000,16384x4096")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    dtypes = []
    for name in args.dtypes.split(","):
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            p.error(f"--dtypes: unknown floating dtype {name!r}")
        dtypes.append(dt)
    rows: list[tuple] = []
    copies: dict[str, float | None] = {}
    for r, c in shapes:
        for dt in dtypes:
            print(f"  {r}x{c} {dt}", file=sys.stderr)
            got, copy = measure(r, c, dt, args.device, args.repeats)
            rows += got
            copies[f"{r}x{c} {str(dt).split('.')[-1]}"] = copy
    host = host_time_per_call(args.device)
    text = (f"Machine: {machine_description(args.device)}\n"
            f"Date: {time.strftime('%Y-%m-%d')}; eps={EPS}; {args.repeats} alternating rounds; medians.\n\n"
            + format_table(rows, copies)
            + "".join(f"\nCopy bandwidth {k}: {v:.0f} GB/s" for k, v in copies.items() if v)
            + "\n\nTargets (issue 18):\n" + ("\n".join(targets(rows)) or "* not measured here (needs the shapes and Liger)")
            + "\n\nHost time per call (64x1024 float32, no syncs between calls): "
            + ", ".join(f"{k} {v:.0f} us" for k, v in host.items()) + "\n")
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
