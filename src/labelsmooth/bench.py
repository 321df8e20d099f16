"""Benchmark runner: label-smoothed cross-entropy forward+backward, labelsmooth against torch.

Every contender runs in the same process on the same inputs, in alternating order (round-robin over
contenders, repeated), so that a machine that slows down or speeds up affects all of them alike.
Reported per contender: median, min and max wall time of forward+backward, the ratio of medians to
torch eager, and peak memory:

* CPU: the peak resident set of a fresh process running one forward+backward, minus its resident set
  once the inputs exist (``ru_maxrss``), i.e. the extra memory the loss needs, in units of the logits'
  size. A fresh process per contender keeps one contender's allocator cache out of another's figure.
* CUDA: ``torch.cuda.max_memory_allocated`` over the same baseline, and the achieved bandwidth against
  the bytes a fused loss must move (read the logits, write the gradient), next to the copy bandwidth
  measured in the same run.

With ``--contention`` (CPU) every shape is timed a second time beside a busy-loop process pinned to
one core, as a data loader or another job would be: those rows are named "... [1 core busy]" and their
ratio is to torch eager under the same load. The header records the load average before and after.

``labelsmooth bench`` prints the CPU table for the machine it runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.kernels._memory import empty_advised

LABEL_SMOOTHING = 0.1


@dataclasses.dataclass
class Contender:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inplace: bool = False


def contenders(device: str, include_compile: bool = True) -> list[Contender]:
    """The loss implementations compared on ``device``."""
    eps = LABEL_SMOOTHING
    out = [Contender("torch eager", lambda x, t: F.cross_entropy(x, t, label_smoothing=eps))]
    if include_compile:
        compiled = torch.compile(lambda x, t: F.cross_entropy(x, t, label_smoothing=eps))
        out.append(Contender("torch.compile", compiled))
    out.append(Contender("ls reference", lambda x, t: ls.cross_entropy(x, t, label_smoothing=eps, backend="reference")))
    if device == "cuda":
        try:  # the peer to beat on GPU, when its (pure-Python) package is installed
            from liger_kernel.transformers import LigerCrossEntropyLoss
        except ImportError:
            pass
        else:
            out.append(Contender("liger", LigerCrossEntropyLoss(label_smoothing=eps)))
    fused = ["chunked"] + (["triton"] if device == "cuda" else [])
    for backend in fused:
        out.append(Contender(f"ls {backend}", partial(ls.cross_entropy, label_smoothing=eps, backend=backend)))
        out.append(
            Contender(
                f"ls {backend} inplace",
                partial(ls.cross_entropy, label_smoothing=eps, backend=backend, inplace=True),
                inplace=True,
            )
        )
    return out


def make_inputs(
    rows: int, classes: int, dtype: torch.dtype, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(rows, classes, generator=g) * 2.0).to(device=device, dtype=dtype)
    t = torch.randint(0, classes, (rows,), generator=g).to(device)
    return x, t


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# CPU: bytes (in units of the logits' size) touched and freed before every timed call; see prime_memory.
PRIME_FACTOR = 4


def prime_memory(nbytes: int) -> None:
    """Write and free ``nbytes`` of memory, so that the next allocations reuse pages just in use.

    In a training loop every step frees its buffers shortly before the next step allocates them again.
    Between the contenders of a benchmark seconds pass instead, and on virtual machines with free page
    reporting (virtio-balloon) memory left free for ~2 s goes back to the host: faulting it in again cost
    ~0.7 s per 512 MB (against ~0.06 s for recently used memory) on the machine of RESULTS.md, landing on
    whichever contender allocated first. Touching 4 x the logits before each call (untimed) gives every
    contender recently used memory, as in training.
    """
    buf = empty_advised((nbytes,), torch.uint8)
    buf.fill_(1)
    del buf


def time_once(c: Contender, x: torch.Tensor, t: torch.Tensor, device: str) -> float:
    """Seconds for one forward+backward on a fresh leaf copy of ``x`` (the copy is not timed).

    On CPU, memory is primed first (:func:`prime_memory`, not timed).
    """
    leaf = x.clone().requires_grad_(True)
    if device == "cpu":
        prime_memory(PRIME_FACTOR * x.numel() * x.element_size())
    _sync(device)
    start = time.perf_counter()
    c.fn(leaf, t).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
    _sync(device)
    elapsed = time.perf_counter() - start
    del leaf
    return elapsed


def copy_bandwidth(x: torch.Tensor, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy of ``x`` (bytes read + bytes written)."""
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(x.device.type)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        y.copy_(x)
        _sync(x.device.type)
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * x.element_size() / statistics.median(times) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one,
    # so the temporaries made while building the inputs do not count as the loss's memory.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _memory_child(name: str, rows: int, classes: int, dtype: str) -> None:
    """Run in a fresh process: print the extra peak RSS of one forward+backward as JSON."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x, t = make_inputs(rows, classes, getattr(torch, dtype), "cpu")
    by_name = {c.name: c for c in contenders("cpu", include_compile=name == "torch.compile")}
    c = by_name[name]
    # One small warm-up first: lazy initialisation (autograd engine, compilation) is not the loss's memory.
    small, st = make_inputs(8, classes, getattr(torch, dtype), "cpu")
    c.fn(small.requires_grad_(True), st).backward()  # type: ignore[no-untyped-call]
    del small, st
    leaf = x.requires_grad_(True)
    del x
    _reset_peak_rss()
    base = _rss_bytes()
    c.fn(leaf, t).backward()  # type: ignore[no-untyped-call]
    extra = _peak_rss_bytes() - base
    print(json.dumps({"extra_bytes": extra}))


def peak_memory_cpu(name: str, rows: int, classes: int, dtype: torch.dtype) -> float | None:
    """Extra peak RSS of ``name`` in a fresh process, in bytes; None if the child failed."""
    code = (
        "import sys; from labelsmooth.bench import _memory_child; "
        f"_memory_child({name!r}, {rows}, {classes}, {str(dtype).split('.')[-1]!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"])
    except (ValueError, KeyError, IndexError):
        return None


def peak_memory_cuda(c: Contender, x: torch.Tensor, t: torch.Tensor) -> float:
    leaf = x.clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    c.fn(leaf, t).backward()  # type: ignore[no-untyped-call]
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


@dataclasses.dataclass
class Row:
    shape: str
    dtype: str
    name: str
    median: float
    minimum: float
    maximum: float
    ratio: float
    extra_memory: float | None  # in units of the logits' size
    gbps: float | None = None


BUSY_SUFFIX = " [1 core busy]"
_BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """Keep one core (the last this process may use) busy with a pinned busy-loop process meanwhile.

    The benchmark itself stays free to run on every core, as a training process beside a data loader
    does. Yields the busy core's number; the process is killed on exit.
    """
    cpu = max(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(cpu)])
    try:
        time.sleep(0.3)  # past interpreter start-up: the loop is spinning when timing starts
        if proc.poll() is not None:
            raise RuntimeError(f"the busy-loop process exited early with status {proc.returncode}")
        yield cpu
    finally:
        proc.kill()
        proc.wait()


def run_shape(
    rows: int,
    classes: int,
    dtype: torch.dtype,
    device: str,
    repeats: int,
    include_compile: bool,
    measure_memory: bool,
    log: Callable[[str], object] = print,
    busy: bool = False,
) -> tuple[list[Row], float | None]:
    """Time every contender on one shape; ``busy``: with one core kept busy (see :func:`busy_core`)."""
    if busy:
        with busy_core():
            got, copy = run_shape(rows, classes, dtype, device, repeats, include_compile, False, log)
        return [dataclasses.replace(r, name=r.name + BUSY_SUFFIX) for r in got], copy
    x, t = make_inputs(rows, classes, dtype, device)
    cs = contenders(device, include_compile)
    for c in cs:  # warm-up (and compilation) outside the timed rounds
        time_once(c, x[: min(rows, 64)], t[: min(rows, 64)], device)
        time_once(c, x, t, device)
    times: dict[str, list[float]] = {c.name: [] for c in cs}
    for r in range(repeats):
        order = cs if r % 2 == 0 else cs[::-1]  # alternate, so no contender always runs first
        for c in order:
            times[c.name].append(time_once(c, x, t, device))
        log(f"  {rows}x{classes} {str(dtype).split('.')[-1]}: round {r + 1}/{repeats}")
    logits_bytes = x.numel() * x.element_size()
    copy_gbps = copy_bandwidth(x) if device == "cuda" else None
    base = statistics.median(times["torch eager"])
    out = []
    for c in cs:
        med = statistics.median(times[c.name])
        mem = None
        if measure_memory:
            raw = peak_memory_cpu(c.name, rows, classes, dtype) if device == "cpu" else peak_memory_cuda(c, x, t)
            mem = None if raw is None else raw / logits_bytes
        gbps = None
        if device == "cuda":
            # A fused loss must read the logits and write the gradient: 2 x logits bytes.
            gbps = 2 * logits_bytes / med / 1e9
        out.append(
            Row(
                f"{rows}x{classes}",
                str(dtype).split(".")[-1],
                c.name,
                med,
                min(times[c.name]),
                max(times[c.name]),
                med / base,
                mem,
                gbps,
            )
        )
    return out, copy_gbps


def machine_description(device: str) -> str:
    parts = [
        platform.platform(),
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
    ]
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
        if model:
            parts.insert(0, model)
    except OSError:
        pass
    parts.insert(0, f"{os.cpu_count()} CPUs")
    if device == "cuda":
        parts.insert(0, torch.cuda.get_device_name())
        try:
            import triton

            parts.append(f"triton {triton.__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def format_table(rows: list[Row], copy_gbps: dict[str, float | None]) -> str:
    gpu = any(r.gbps is not None for r in rows)
    head = (
        "| shape | dtype | implementation | median ms | min ms | max ms | time vs torch eager "
        "| extra peak memory (x logits) |"
    )
    sep = "|---|---|---|---:|---:|---:|---:|---:|"
    if gpu:
        head += " GB/s | % of copy |"
        sep += "---:|---:|"
    lines = [head, sep]
    for r in rows:
        mem = "n/a" if r.extra_memory is None else f"{r.extra_memory:.2f}"
        line = (
            f"| {r.shape} | {r.dtype} | {r.name} | {r.median * 1e3:.1f} | {r.minimum * 1e3:.1f} | "
            f"{r.maximum * 1e3:.1f} | {r.ratio:.2f}x | {mem} |"
        )
        if gpu:
            assert r.gbps is not None  # every row of a GPU run has a bandwidth
            cg = copy_gbps.get(f"{r.shape} {r.dtype}")
            line += f" {r.gbps:.0f} | {100 * r.gbps / cg:.0f}% |" if cg else f" {r.gbps:.0f} | n/a |"
        lines.append(line)
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, classes = (int(v) for v in text.lower().split("x"))
    except ValueError:
        # The int() failure adds nothing to the message, which already shows the offending text.
        raise argparse.ArgumentTypeError(
            f"argument --shapes: expected ROWSxCLASSES items such as 4096x32000, got {text!r}"
        ) from None
    if rows < 1 or classes < 1:
        raise argparse.ArgumentTypeError(f"argument --shapes: sizes must be positive, got {text!r}")
    return rows, classes


CPU_SHAPES = "4096x32000,2048x128256"
GPU_SHAPES = "16384x128256"


def main(argv: list[str] | None = None) -> int:
    """``labelsmooth bench``: time forward+backward of every backend against torch, print a table."""
    p = argparse.ArgumentParser(
        prog="labelsmooth bench",
        description="Time forward+backward of every backend against torch on this machine; print a table.",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated ROWSxCLASSES (default: {CPU_SHAPES} on cpu, {GPU_SHAPES} on cuda)",
    )
    p.add_argument(
        "--dtypes", default=None, help="comma-separated dtypes (default: float32 on cpu, bfloat16,float32 on cuda)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per contender (default 5)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles per shape)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--quick", action="store_true", help="one small shape, 3 rounds, no compile")
    p.add_argument(
        "--contention",
        action="store_true",
        help="cpu: time every shape again with a busy-loop process pinned to one core",
    )
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"argument --repeats: must be >= 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda requested but no CUDA device is available")
    if args.contention and (args.device != "cpu" or not hasattr(os, "sched_setaffinity")):
        p.error("argument --contention: needs --device cpu on a system with os.sched_setaffinity (Linux)")
    if args.quick:
        args.shapes, args.repeats, args.no_compile = args.shapes or "1024x32000", 3, True
    shape_text = args.shapes or (CPU_SHAPES if args.device == "cpu" else GPU_SHAPES)
    try:
        shapes = [parse_shape(s) for s in shape_text.split(",") if s]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    dtype_text = args.dtypes or ("float32" if args.device == "cpu" else "bfloat16,float32")
    dtypes = []
    for name in dtype_text.split(","):
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            p.error(f"argument --dtypes: unknown floating dtype {name!r}")
        dtypes.append(dt)

    all_rows: list[Row] = []
    copies: dict[str, float | None] = {}
    load_before = _load_average()
    print(f"label-smoothed cross-entropy (eps={LABEL_SMOOTHING}), forward+backward on {args.device}", file=sys.stderr)
    for rows, classes in shapes:
        for dt in dtypes:
            got, copy = run_shape(
                rows,
                classes,
                dt,
                args.device,
                args.repeats,
                not args.no_compile,
                not args.no_memory,
                log=lambda m: print(m, file=sys.stderr),
            )
            all_rows += got
            copies[f"{rows}x{classes} {str(dt).split('.')[-1]}"] = copy
            if args.contention:
                got, _ = run_shape(
                    rows,
                    classes,
                    dt,
                    args.device,
                    args.repeats,
                    not args.no_compile,
                    False,
                    log=lambda m: print(m + BUSY_SUFFIX, file=sys.stderr),
                    busy=True,
                )
                all_rows += got
    table = format_table(all_rows, copies)
    header = (
        f"Machine: {machine_description(args.device)}\n"
        f"Date: {time.strftime('%Y-%m-%d')}; eps={LABEL_SMOOTHING}; {args.repeats} alternating rounds; "
        f"medians. Load average (1 min) before {load_before}, after {_load_average()}.\n"
    )
    copy_lines = "".join(f"\nCopy bandwidth {k}: {v:.0f} GB/s" for k, v in copies.items() if v)
    print(header + "\n" + table + copy_lines)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(header + "\n" + table + copy_lines + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
