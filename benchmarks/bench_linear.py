"""Fused linear + cross-entropy, forward+backward: labelsmooth against torch (and Liger on CUDA).

Contenders, all computing d loss / d input and d loss / d linear_weight:

* torch reference, eps=0.1: ``F.linear_cross_entropy(..., label_smoothing=0.1)``; torch 2.13's chunked
  path refuses label smoothing, so this forms the full N x V logits (the baseline of the ratios);
* torch chunked, eps=0: ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``, the best
  torch can do, without smoothing;
* ls, eps=0.1 and eps=0: ``labelsmooth.linear_cross_entropy`` (default chunk size);
* on CUDA: ls with ``accumulation_dtype`` = the weight's dtype (no float32 copy of dW, Liger's
  memory); Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` at eps=0.1 and eps=0 when installed
  (``pip install liger-kernel --no-deps``); Apple's Cut Cross-Entropy
  (``cut_cross_entropy.linear_cross_entropy``, eps=0: it has no label smoothing) when it installs
  (``pip install cut-cross-entropy --no-deps``).

On CUDA the table ends with the issue's targets: labelsmooth's time against Liger's and its peak
memory against Cut Cross-Entropy's (both at eps=0, and eps=0.1 against Liger).

Timing: every contender in the same process on the same inputs, alternating order over rounds,
medians (min and max beside them); on CPU memory is primed before each timed call as in
``labelsmooth.bench``. Memory: CPU, the peak resident set of a fresh process for one forward+backward
minus its resident set once the inputs exist (gradients included: every contender returns the same
ones); CUDA, ``torch.cuda.max_memory_allocated`` over the same baseline.

    python benchmarks/bench_linear.py                          # CPU: 2048 x 1024 -> 32000 float32
    python benchmarks/bench_linear.py --device cuda            # 8192 x 4096 -> 128256 bfloat16
    python benchmarks/bench_linear.py --shape 512x256x32000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import bench

EPS = 0.1


def contenders(device: str) -> dict:
    out = {
        "torch reference, eps=0.1": lambda x, w, y: F.linear_cross_entropy(x, w, y, label_smoothing=EPS),
        "torch chunked, eps=0": lambda x, w, y: F.linear_cross_entropy(
            x, w, y, options=torch.nn.LinearCrossEntropyOptions()),
        "ls, eps=0.1": lambda x, w, y: ls.linear_cross_entropy(x, w, y, label_smoothing=EPS),
        "ls, eps=0": lambda x, w, y: ls.linear_cross_entropy(x, w, y),
    }
    if device == "cuda":
        out["ls, eps=0, dW accumulated in the weight's dtype"] = lambda x, w, y: ls.linear_cross_entropy(
            x, w, y, accumulation_dtype=w.dtype)
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            pass
        else:
            liger = LigerFusedLinearCrossEntropyLoss(label_smoothing=EPS)
            liger0 = LigerFusedLinearCrossEntropyLoss()
            out["liger, eps=0.1"] = lambda x, w, y: liger(w, x, y)  # Liger takes the weight first
            out["liger, eps=0"] = lambda x, w, y: liger0(w, x, y)
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except ImportError:
            pass
        else:
            out["cut-cross-entropy, eps=0"] = lambda x, w, y: cce(x, w, y)
    return out


def targets(times: dict[str, list[float]], mem: dict[str, float | None]) -> list[str]:
    """The issue's GPU targets, where both sides were measured: time <= Liger's, peak <= 1.1x CCE's."""
    out = []

    def med(name: str) -> float | None:
        return statistics.median(times[name]) if name in times else None

    for ours, theirs in (("ls, eps=0", "liger, eps=0"), ("ls, eps=0.1", "liger, eps=0.1")):
        a, b = med(ours), med(theirs)
        if a and b:
            out.append(f"* time, {ours} / {theirs}: {a / b:.2f} (target <= 1.00: {'met' if a <= b else 'NOT met'})")
    for ours in ("ls, eps=0", "ls, eps=0, dW accumulated in the weight's dtype"):
        a, b = mem.get(ours), mem.get("cut-cross-entropy, eps=0")
        if a and b:
            ok = "met" if a <= 1.1 * b else "NOT met"
            out.append(f"* peak memory, {ours} / cut-cross-entropy: {a / b:.2f} (target <= 1.10: {ok})")
    return out


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    w = (torch.randn(v, h, generator=g) / h ** 0.5).to(device=device, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    return x, w, y


def step(fn, x, w, y) -> None:
    fn(x, w, y).backward()
    x.grad = None
    w.grad = None


def time_once(fn, x, w, y, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward+backward.

    The CPU time of the whole process (every thread) is reported beside the wall time because on a
    shared machine the wall time mostly measures the other processes: CPU time counts only the work
    (and spinning) this process does.
    """
    if device == "cpu":
        bench.prime_memory(4 * x.shape[0] * w.shape[0] * 4)
    else:
        torch.cuda.synchronize()
    cpu = time.process_time()
    start = time.perf_counter()
    fn(x, w, y).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    x.grad = None
    w.grad = None
    return elapsed, cpu


def memory_child(name: str, n: int, h: int, v: int, dtype: str) -> None:
    """In a fresh process: print the extra peak RSS of one forward+backward of ``name`` as JSON."""
    fn = contenders("cpu")[name]
    small = make_inputs(8, h, v, getattr(torch, dtype), "cpu", seed=1)
    step(fn, *small)  # lazy initialisation is not the loss's memory
    del small
    x, w, y = make_inputs(n, h, v, getattr(torch, dtype), "cpu")
    bench._reset_peak_rss()
    base = bench._rss_bytes()
    fn(x, w, y).backward()
    print(json.dumps({"extra_bytes": bench._peak_rss_bytes() - base}))


def peak_memory(name: str, n: int, h: int, v: int, dtype: torch.dtype, device: str, inputs) -> float | None:
    if device == "cuda":
        x, w, y = inputs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        contenders(device)[name](x, w, y).backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        x.grad = None
        w.grad = None
        return float(extra)
    code = (f"import sys; sys.path.insert(0, {repr(sys.path[0])}); import bench_linear; "
            f"bench_linear.memory_child({name!r}, {n}, {h}, {v}, {str(dtype).split('.')[-1]!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", default=None, help="NxHxV (default 2048x1024x32000 on cpu, 8192x4096x128256 on cuda)")
    p.add_argument("--dtype", default=None, help="float32 on cpu, bfloat16 on cuda by default")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings: run only the contenders whose names contain one "
                        "(the first contender kept is the baseline of the ratios)")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    shape = args.shape or ("2048x1024x32000" if args.device == "cpu" else "8192x4096x128256")
    n, h, v = (int(s) for s in shape.lower().split("x"))
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    load_before = bench._load_average()
    inputs = make_inputs(n, h, v, dtype, args.device)
    cs = contenders(args.device)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        cs = {name: fn for name, fn in cs.items() if any(k in name for k in keys)}
        if not cs:
            p.error(f"--only {args.only!r} matches no contender")
    for name, fn in cs.items():  # warm-up outside the timed rounds
        time_once(fn, *inputs, args.device)
    print("  warm-up done", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in cs}
    cpu_times: dict[str, list[float]] = {name: [] for name in cs}
    names = list(cs)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time_once(cs[name], *inputs, args.device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        print(f"  round {r + 1}/{args.repeats}", file=sys.stderr)
    mem = {name: None if args.no_memory else peak_memory(name, n, h, v, dtype, args.device, inputs)
           for name in names}
    base_t = statistics.median(times[names[0]])
    base_m = mem[names[0]]
    lines = [f"Machine: {bench.machine_description(args.device)}",
             f"Date: {time.strftime('%Y-%m-%d')}; N x H -> V = {n} x {h} -> {v} {str(dtype).split('.')[-1]}, "
             f"forward+backward (input and weight gradients); {args.repeats} alternating rounds; medians. "
             f"Load average (1 min) before {load_before}, after {bench._load_average()}.",
             "",
             "| implementation | median ms | min ms | max ms | time vs torch reference | CPU s (median) | "
             "CPU time vs torch reference | extra peak MB | memory vs torch reference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_c = statistics.median(cpu_times[names[0]])
    for name in names:
        med = statistics.median(times[name])
        m = mem[name]
        mtxt = "n/a" if m is None else f"{m / 2**20:.0f}"
        mratio = "n/a" if m is None or not base_m else f"{m / base_m:.2f}x"
        lines.append(f"| {name} | {med * 1e3:.0f} | {min(times[name]) * 1e3:.0f} | {max(times[name]) * 1e3:.0f} | "
                     f"{med / base_t:.2f}x | {statistics.median(cpu_times[name]):.2f} | "
                     f"{statistics.median(cpu_times[name]) / base_c:.2f}x | {mtxt} | {mratio} |")
    if args.device == "cuda":
        lines += ["", "Targets (issue 18):"] + (targets(times, mem) or ["* no peer measured (not installed)"])
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
