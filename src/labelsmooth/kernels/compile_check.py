"""The Triton kernels compiled for real GPU targets on any machine, as the wrappers launch them.

Tests under ``TRITON_INTERPRET=1`` check what the kernels compute, not how they compile: the
interpreter accepts code a real compile rejects, and says nothing of registers, spills, vector widths
or occupancy. Triton compiles a ``@triton.jit`` function for a CUDA target without a GPU, down to
PTX and a cubin with the ptxas it bundles; this module does that for every launch the wrappers decide
and checks the result.

How a configuration is obtained: the public functions (``labelsmooth.cross_entropy`` and its
backward, ``labelsmooth.linear_cross_entropy``, the vocabulary-parallel loss's Triton calls) run on
``meta`` tensors (shapes without storage, on a device that is not the CPU, so the CUDA-side choices
are taken: device-side target checks, device-sized chunks) inside
:func:`labelsmooth.kernels.triton_ce.record_launches`, which keeps each launch's kernel, arguments and
meta-parameters instead of running it. The launch table is therefore the wrappers' own. Each launch
is specialised as Triton specialises a call (integer arguments equal to 1 become constants; pointers
and integers divisible by 16 are marked so; cross-checked against Triton's own launcher where its
internal binder is reachable), then compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``.

What is measured, per configuration and architecture:

* registers per thread and spill bytes, from ptxas's own report of that compile;
* the occupancy they allow (programs and warps resident per SM), against the one the launch table
  means the configuration to reach (:func:`labelsmooth.kernels.triton_ce.intended_occupancy`);
* the byte widths of the global loads and stores inside loops (the PTX's back-edges) and in all.

A configuration fails on a compile error, any spill, more registers than its intended occupancy
allows, or a loop over the row whose global loads include no 16-byte one where the launch asks for
16-byte vectors (VEC x element size = 16, which the aligned body gives for any C).

Run (TRITON_INTERPRET must be unset: interpreted kernels cannot be compiled)::

    python -m labelsmooth.kernels.compile_check [--full] [--arch 90,80] [--markdown FILE] [--json FILE]

The default set is the representative subset CI runs; ``--full`` is every dtype x C x feature
combination. Nothing here needs a GPU; it needs Triton's CUDA backend and its bundled ptxas.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

ARCHS = (90, 80)
#: Logit counts per row checked: Llama 3's vocabulary, GPT-2's (not a multiple of 16), Llama 2's,
#: ImageNet's classes and a short row.
CLASS_COUNTS = (128256, 50257, 32000, 1000, 10)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_CODES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}
_KERNEL_NAMES = {"_ce_fwd_kernel": "fwd", "_ce_bwd_kernel": "bwd", "_slice_stats_kernel": "slice"}
_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
# Flags shown in the table, in this order, under these names.
_FLAGS = {
    "HAS_V": "eps",
    "HAS_Z": "z",
    "SOFTCAP": "cap",
    "HAS_WEIGHT": "w",
    "HAS_SW": "prior",
    "PROB_TARGET": "prob",
    "SAVE_STATS": "save",
    "CHECK_TARGETS": "chk",
    "WRITE_GRAD": "grad",
    "HAS_GO": "go",
    "HAS_SCALE": "sc",
    "TARGET_ELSEWHERE": "slice",
    "SHIFT": "shift",
    "HAS_LS": "ls",
    "DSCALE": "ds",
    "AUX_LSE": "lse",
    "AUX_PRED": "argmax",
    "AUX_ENT": "ent",
}


def cuda_backend_missing() -> str | None:
    """Why the kernels cannot be compiled for CUDA here (one line), or None if they can."""
    try:
        import triton
        from triton.backends import backends
    except ImportError:
        return "triton is not installed"
    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no CUDA backend"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(ARCHS[0]).path
    except Exception as exc:  # whatever Triton raises when it finds no ptxas
        return f"triton's CUDA backend finds no ptxas ({type(exc).__name__}: {exc})"
    if not os.path.exists(path):
        return f"triton's ptxas is missing ({path})"
    return None


# ---------------------------------------------------------------------------------------------------
# Scenarios: the public API driven as training code drives it, on meta tensors.


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[], None]


def _ce(name: str, dtype: torch.dtype, num_classes: int, *, prob: bool = False, reduction: str = "mean",
        grad: bool = True, weight: bool = False, prior: bool = False, **kw: Any) -> Scenario:  # fmt: skip
    def run() -> None:
        import labelsmooth as ls

        rows = 4
        x = torch.empty(rows, num_classes, dtype=dtype, device="meta").requires_grad_(grad)
        if prob:
            t = torch.empty(rows, num_classes, device="meta")
        else:
            t = torch.empty(rows, dtype=torch.long, device="meta")
        if weight:
            kw["weight"] = torch.empty(num_classes, device="meta")
        if prior:
            kw["smoothing_prior"] = torch.empty(num_classes, device="meta")
        with torch.set_grad_enabled(grad):
            loss = ls.cross_entropy(x, t, backend="triton", reduction=reduction, allow_negative=True, **kw)
        if grad:
            if reduction == "none":
                loss = (loss * torch.empty(rows, device="meta")).sum()
            torch.autograd.backward(loss)  # annotated, unlike Tensor.backward

    return Scenario(f"ce/{name}", run)


def _linear(name: str, dtype: torch.dtype, num_classes: int, reduction: str = "mean", **kw: Any) -> Scenario:
    def run() -> None:
        import labelsmooth as ls

        h = torch.empty(4, 64, dtype=dtype, device="meta").requires_grad_()
        w = torch.empty(num_classes, 64, dtype=dtype, device="meta").requires_grad_()
        t = torch.empty(4, dtype=torch.long, device="meta")
        loss = ls.linear_cross_entropy(h, w, t, backend="triton", reduction=reduction, **kw)
        if reduction == "none":
            loss = (loss * torch.empty(4, device="meta")).sum()
        torch.autograd.backward(loss)  # annotated, unlike Tensor.backward

    return Scenario(f"linear/{name}", run)


def _vocab_slice(name: str, dtype: torch.dtype, num_classes: int) -> Scenario:
    def run() -> None:
        # The two Triton calls of labelsmooth.distributed's vocabulary-parallel loss, made as it makes
        # them (its forward's statistics pass; its backward through _triton_backward).
        from labelsmooth import distributed
        from labelsmooth.kernels import triton_ce

        rows = 4
        x = torch.empty(rows, num_classes, dtype=dtype, device="meta")
        local = torch.empty(rows, dtype=torch.long, device="meta")
        triton_ce.slice_stats(x, local)
        vec = torch.empty(rows, device="meta")
        keep = torch.empty(rows, dtype=torch.bool, device="meta")
        kw: dict[str, Any] = dict(
            x2=x, big_m=vec, s_m1=vec, lse=vec, keep=keep, owned=keep, safe=local, grad_loss=vec,
            eps=0.1, z_loss=1e-4, num_classes=4 * num_classes,
        )  # fmt: skip
        if "rows" in inspect.signature(distributed._triton_backward).parameters:
            kw["rows"] = rows  # the rows that score a target (all of them here)
        distributed._triton_backward(**kw)

    return Scenario(f"vocab/{name}", run)


def _options(name: str, dtype: torch.dtype, num_classes: int, *, aux: bool = True, dscale: bool = True,
             one_launch: bool = False, prob: bool = False, weight: bool = False, eps: float = 0.1,
             z_loss: float = 0.0, softcap: float | None = None) -> Scenario:  # fmt: skip
    """The kernel options behind the LM-trainer features (a logit scale s read on the device, the
    per-row d loss / d s sums, the statistics pass's aux outputs), driven through the kernel wrappers
    as the losses call them: forward with saved statistics then backward, or (``one_launch``) the
    forward that writes the gradient, as the fused linear loss does per chunk."""

    def run() -> None:
        from labelsmooth.kernels import triton_ce

        rows = 4
        x = torch.empty(rows, num_classes, dtype=dtype, device="meta")
        if prob:
            t = torch.empty(rows, num_classes, device="meta")
        else:
            t = torch.empty(rows, dtype=torch.long, device="meta")
        w = torch.empty(num_classes, device="meta") if weight else None
        s = torch.empty((), device="meta")
        items = triton_ce.AUX_ITEMS if aux else frozenset()
        ds = torch.empty(rows, device="meta") if dscale else None
        go = torch.empty(rows, device="meta")
        if one_launch:
            triton_ce.fused_ce(x, t, w, -100, eps, z_loss, softcap, x, grad_output=go, grad_scale=s,
                               logit_scale=s, dscale=ds, aux=items)  # fmt: skip
            return
        _, stats, *_ = triton_ce.forward(x, t, w, -100, eps, z_loss, softcap, save_stats=True,
                                         check_targets=not prob, logit_scale=s, aux=items)  # fmt: skip
        assert stats is not None
        triton_ce.backward(x, t, w, -100, eps, softcap, stats, torch.empty_like(x), grad_output=go,
                           grad_scale=s, logit_scale=s, dscale=ds)  # fmt: skip

    return Scenario(f"opts/{name}", run)


def scenarios(full: bool = False) -> list[Scenario]:
    """The configurations to compile: a representative subset (what CI runs), or with ``full`` every
    dtype x class count x feature combination."""
    out: list[Scenario] = []
    every: dict[str, Any] = dict(label_smoothing=0.1, weight=True, prior=True, z_loss=1e-4, softcap=30.0)
    for dtype in DTYPES:
        for num_classes in CLASS_COUNTS:
            tag = f"{_SHORT[dtype]}/C{num_classes}"
            common = full or (num_classes in (128256, 50257) and dtype != torch.float16)
            if common or (dtype == torch.float16 and num_classes == 32000) or (num_classes == 10 and not full):
                out.append(_ce(f"{tag}/ls", dtype, num_classes, label_smoothing=0.1))
            if not full and not (num_classes == 128256 and dtype == torch.bfloat16):
                if common:
                    out.append(_linear(f"{tag}/ls", dtype, num_classes, label_smoothing=0.1))
                continue
            out += [
                _ce(f"{tag}/plain", dtype, num_classes),
                _ce(f"{tag}/ls+all", dtype, num_classes, **every),
                _ce(f"{tag}/prob+all", dtype, num_classes, prob=True, **every),
                _linear(f"{tag}/ls", dtype, num_classes, label_smoothing=0.1),
                _vocab_slice(f"{tag}", dtype, num_classes),
            ]
            if full:
                out += [
                    _ce(f"{tag}/ls+z", dtype, num_classes, label_smoothing=0.1, z_loss=1e-4),
                    _ce(f"{tag}/ls+cap", dtype, num_classes, label_smoothing=0.1, softcap=30.0),
                    _ce(f"{tag}/ls+w", dtype, num_classes, label_smoothing=0.1, weight=True),
                    _ce(f"{tag}/ls+prior", dtype, num_classes, label_smoothing=0.1, prior=True),
                    _ce(f"{tag}/neg-eps", dtype, num_classes, label_smoothing=-0.1),
                    _ce(f"{tag}/prob", dtype, num_classes, prob=True, label_smoothing=0.1),
                    _ce(f"{tag}/ls-none", dtype, num_classes, label_smoothing=0.1, reduction="none"),
                    _ce(f"{tag}/ls-sum", dtype, num_classes, label_smoothing=0.1, reduction="sum"),
                    _ce(f"{tag}/no-grad", dtype, num_classes, label_smoothing=0.1, grad=False),
                    _linear(f"{tag}/ls+z-none", dtype, num_classes, "none", label_smoothing=0.1, z_loss=1e-4),
                    _options(f"{tag}/scale", dtype, num_classes, aux=False, dscale=False),
                    _options(f"{tag}/aux", dtype, num_classes, dscale=False),
                    _options(f"{tag}/aux+ds", dtype, num_classes),
                    _options(f"{tag}/aux+ds+all", dtype, num_classes, weight=True, z_loss=1e-4, softcap=30.0),
                    _options(f"{tag}/prob+aux+ds", dtype, num_classes, prob=True, weight=True, softcap=30.0),
                    _options(f"{tag}/one-launch", dtype, num_classes, one_launch=True),
                    _options(f"{tag}/one-launch-scale", dtype, num_classes, one_launch=True, aux=False, dscale=False),
                    _options(f"{tag}/one-launch-ds", dtype, num_classes, one_launch=True, aux=False),
                ]
    # The kernel options, CI's share: the unaligned fp32 rows and the aligned bf16 ones, forward with
    # every aux output and backward with the d/ds sums; the one-launch gradient with them; every
    # feature at once on the bf16 rows.
    if not full:
        out += [
            _options("f32/C50257/aux+ds", torch.float32, 50257),
            _options("bf16/C128256/aux+ds", torch.bfloat16, 128256),
            _options(
                "bf16/C128256/prob+aux+ds+all",
                torch.bfloat16,
                128256,
                prob=True,
                weight=True,
                z_loss=1e-4,
                softcap=30.0,
            ),
            _options("bf16/C50257/one-launch", torch.bfloat16, 50257, one_launch=True),
        ]
    return out


@contextlib.contextmanager
def _api_accepts_meta() -> Iterator[None]:
    # labelsmooth's backend gate lets non-CUDA tensors through to backend="triton" only under
    # TRITON_INTERPRET=1; set for the recording only (the kernels were defined without it).
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


# ---------------------------------------------------------------------------------------------------
# Specialisation and compilation.


@dataclass
class Config:
    """One distinct specialisation of one kernel, with the first scenario that launched it."""

    scenario: str
    fn: Any  # the triton JITFunction
    kernel: str
    dtype: str
    num_classes: int
    meta: dict[str, Any]
    signature: dict[str, str]
    constants: dict[str, Any]
    attrs: dict[tuple[int, ...], list[list[Any]]]
    options: dict[str, Any]
    mismatch: str | None = None  # how Triton's own launcher would specialise it differently

    @property
    def flags(self) -> str:
        return "+".join(short for key, short in _FLAGS.items() if self.meta.get(key)) or "-"


Attrs = dict[tuple[int, ...], list[list[Any]]]


def _specialise(
    kernel: Any, args: Sequence[object], meta: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any], Attrs, dict[str, Any]]:
    """(signature, constants, attributes, options) of a call ``kernel[grid](*args, **meta)``, as
    Triton's launcher specialises it: None and integers equal to 1 become constants, pointers and
    integers divisible by 16 carry tt.divisibility = 16, floats are fp32."""
    params = list(kernel.params)
    positional = [p for p in params if not p.is_constexpr]
    if len(positional) != len(args):
        raise ValueError(f"{kernel.__name__}: {len(args)} arguments for {len(positional)} parameters")
    values = dict(zip((p.name for p in positional), args, strict=True))
    signature: dict[str, str] = {}
    constants: dict[str, Any] = {}
    attrs: Attrs = {}
    for index, p in enumerate(params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constants[p.name] = meta[p.name]
            continue
        value = values[p.name]
        divisible = False
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[p.name] = "constexpr"
            constants[p.name] = value
            continue
        if isinstance(value, torch.Tensor):
            signature[p.name] = "*" + _DTYPE_CODES[value.dtype]
            divisible = value.data_ptr() % 16 == 0
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            divisible = value % 16 == 0
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {p.name} of unexpected type {type(value).__name__}")
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    options = {k: v for k, v in meta.items() if k not in constants}
    return signature, constants, attrs, options


def _differs_from_triton(kernel: Any, args: Sequence[object], meta: dict[str, Any], signature: dict[str, str],
                         attrs: Attrs) -> str | None:  # fmt: skip
    """Where Triton's own launcher would specialise the call differently from :func:`_specialise`
    (a type, or 16-divisibility), in a line; None if it agrees or its binder is not reachable (it is
    Triton-internal: this only guards against Triton changing its rules under us)."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(
            kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32))
        )
        _, specialization, _ = binder(*args, **meta)
    except Exception:  # an internal API moved: nothing to compare with
        return None
    for index, (param, (kind, spec)) in enumerate(zip(kernel.params, specialization, strict=True)):
        divisible = isinstance(spec, str) and "D" in spec
        if kind != signature[param.name] or divisible != ((index,) in attrs):
            return f"{param.name}: Triton specialises it as {kind!r}{' (16-divisible)' if divisible else ''}"
    return None


def record(chosen: Sequence[Scenario]) -> list[Config]:
    """Run the scenarios with launches recorded; one Config per distinct specialisation."""
    from labelsmooth.kernels import triton_ce

    if type(triton_ce._ce_fwd_kernel).__name__ != "JITFunction":
        raise RuntimeError("the kernels were defined under TRITON_INTERPRET=1 and cannot be compiled; unset it")
    configs: dict[str, Config] = {}
    for sc in chosen:
        with _api_accepts_meta(), triton_ce.record_launches() as launches:
            sc.run()
        for launch in launches:
            signature, constants, attrs, options = _specialise(launch.kernel, launch.args, launch.meta)
            key = repr((launch.kernel.__name__, signature, constants, sorted(attrs), sorted(options.items())))
            if key in configs:
                continue
            x = launch.args[0]
            assert isinstance(x, torch.Tensor)  # every kernel's first argument is the logits
            configs[key] = Config(
                scenario=sc.name,
                fn=launch.kernel,
                kernel=_KERNEL_NAMES.get(launch.kernel.__name__, launch.kernel.__name__),
                dtype=_SHORT[x.dtype],
                num_classes=int(x.shape[1]),
                meta=dict(launch.meta),
                signature=signature,
                constants=constants,
                attrs=attrs,
                options=options,
                mismatch=_differs_from_triton(launch.kernel, launch.args, launch.meta, signature, attrs),
            )
    return list(configs.values())


@dataclass
class Result:
    """One configuration compiled for one architecture, and what the check makes of it."""

    scenario: str
    kernel: str
    flags: str
    dtype: str
    num_classes: int
    iters: int
    lanes: int
    num_warps: int
    vec_bytes: int
    vectors_per_thread: bool
    arch: int
    seconds: float
    error: str | None = None
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0
    programs_per_sm: int = 0
    intended_programs: int = 0
    max_registers: int = 0
    loop_loads: dict[int, int] = field(default_factory=dict)
    loop_stores: dict[int, int] = field(default_factory=dict)
    all_loads: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_ACCESS = re.compile(r"^\s*(?:@!?%p\d+\s+)?(ld|st)\.global((?:\.[\w:]+)*)\s")


def _access_width(modifiers: str) -> int:
    parts = modifiers.split(".")
    lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
    bits = next((int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)), 0)
    return lanes * bits // 8


def global_access_widths(ptx: str) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(loads inside loops, stores inside loops, all loads): counts of global accesses by byte width.

    A loop is the span from a label to a later branch back to it (a back-edge); each instruction is
    counted once however many loops hold it."""
    lines = ptx.splitlines()
    labels: dict[str, int] = {}
    in_loop = [False] * len(lines)
    for i, line in enumerate(lines):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        b = _BRANCH.search(line)
        if b and b.group(1) in labels:
            for j in range(labels[b.group(1)], i + 1):
                in_loop[j] = True
    loop_loads: dict[int, int] = {}
    loop_stores: dict[int, int] = {}
    all_loads: dict[int, int] = {}
    for i, line in enumerate(lines):
        m = _ACCESS.match(line)
        if not m:
            continue
        width = _access_width(m.group(2))
        if m.group(1) == "ld":
            all_loads[width] = all_loads.get(width, 0) + 1
        if in_loop[i]:
            bucket = loop_loads if m.group(1) == "ld" else loop_stores
            bucket[width] = bucket.get(width, 0) + 1
    return loop_loads, loop_stores, all_loads


def programs_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int) -> int:
    """Programs (CTAs) resident per SM that registers, warps, blocks and shared memory allow on sm_80 /
    sm_90: 64K registers allocated per warp in units of 256, 64 warps, 32 blocks, and 164 / 228 KB of
    shared memory (1 KB of it reserved per block)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = 65536 // (per_warp * num_warps)
    shared_per_sm = (228 if arch >= 90 else 164) * 1024
    by_shared = shared_per_sm // (shared_bytes + 1024)
    return max(0, min(by_registers, 64 // num_warps, 32, by_shared))


_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_config(config: Config, arch: int) -> Result:
    """Compile one configuration for sm_<arch> and check it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from labelsmooth.kernels import triton_ce

    meta = config.meta
    elem = {"f32": 4, "bf16": 2, "f16": 2}[config.dtype]
    res = Result(
        scenario=config.scenario,
        kernel=config.kernel,
        flags=config.flags,
        dtype=config.dtype,
        num_classes=config.num_classes,
        iters=int(meta["ITERS"]),
        lanes=int(meta["LANES"]),
        num_warps=int(meta["num_warps"]),
        vec_bytes=int(meta.get("VEC", 1)) * elem,
        # Each thread owns whole 16-byte vectors of a tile row only when the row has enough lanes.
        vectors_per_thread=int(meta.get("VEC", 1)) * elem == 16
        and int(meta["LANES"]) >= 32 * int(meta["num_warps"]) * int(meta.get("VEC", 1)),
        arch=arch,
        seconds=0.0,
    )
    res.intended_programs, res.max_registers = triton_ce.intended_occupancy(res.num_warps)
    if config.mismatch:
        res.failures.append(f"specialised unlike a launch: {config.mismatch}")
    fn = config.fn
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # where Triton prints ptxas's report
            compiled = triton.compile(
                ASTSource(fn, dict(config.signature), dict(config.constants), dict(config.attrs)),
                target=GPUTarget("cuda", arch, 32),
                options=dict(config.options),
            )
    except Exception as exc:  # any compile failure is a finding, reported in a line
        res.seconds = time.perf_counter() - t0
        res.error = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        res.failures.append(f"compile error: {res.error}")
        return res
    res.seconds = time.perf_counter() - t0
    report = log.getvalue()
    usage = _PTXAS_USAGE.search(report)
    spill = _PTXAS_SPILL.search(report)
    if usage is None or spill is None:
        res.failures.append("no ptxas report (is the Triton cache dir fresh?)")
        return res
    res.registers = int(usage.group(1))
    res.spill_bytes = int(spill.group(1)) + int(spill.group(2))
    res.shared_bytes = int(compiled.metadata.shared)
    res.programs_per_sm = programs_per_sm(res.registers, res.num_warps, res.shared_bytes, arch)
    res.loop_loads, res.loop_stores, res.all_loads = global_access_widths(compiled.asm["ptx"])
    if res.spill_bytes:
        res.failures.append(f"spills {res.spill_bytes} bytes")
    if res.registers > res.max_registers:
        res.failures.append(
            f"{res.registers} registers > {res.max_registers}: {res.programs_per_sm} programs per SM, "
            f"{res.intended_programs} intended"
        )
    if res.vectors_per_thread and res.loop_loads and 16 not in res.loop_loads:
        res.failures.append(f"no 16-byte load in the row loops ({_widths(res.loop_loads)})")
    return res


def _widths(counts: dict[int, int]) -> str:
    return " ".join(f"{w}Bx{n}" for w, n in sorted(counts.items(), reverse=True)) or "-"


@contextlib.contextmanager
def _fresh_cache() -> Iterator[None]:
    # A cached kernel is not recompiled and ptxas's report (registers, spills) would be missing.
    import triton

    with tempfile.TemporaryDirectory(prefix="labelsmooth-compile-") as tmp:
        before = (triton.knobs.cache.dir, triton.knobs.nvidia.dump_ptxas_log)
        triton.knobs.cache.dir = tmp
        triton.knobs.nvidia.dump_ptxas_log = True
        try:
            yield
        finally:
            triton.knobs.cache.dir, triton.knobs.nvidia.dump_ptxas_log = before


def run(full: bool = False, archs: Sequence[int] = ARCHS, match: str = "") -> list[Result]:
    """Record, compile and check every configuration of the chosen scenarios for each architecture."""
    configs = record([s for s in scenarios(full) if match in s.name])
    results = []
    with _fresh_cache():
        for config in configs:
            for arch in archs:
                results.append(compile_config(config, arch))
    return results


def markdown(results: Sequence[Result]) -> str:
    """The results as a Markdown table (compiled, not measured)."""
    head = (
        "| kernel | first scenario | flags | dtype | C | ITERS x LANES | warps | sm | registers | spills "
        "| programs/SM (intended) | warps/SM | loop loads | loop stores | check |\n"
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---|---|\n"
    )
    rows = []
    for r in results:
        if r.error:
            rows.append(f"| {r.kernel} | {r.scenario} | {r.flags} | {r.dtype} | {r.num_classes} | | | {r.arch} "
                        f"| | | | | | | compile error: {r.error} |")  # fmt: skip
            continue
        rows.append(
            f"| {r.kernel} | {r.scenario} | {r.flags} | {r.dtype} | {r.num_classes} | {r.iters} x {r.lanes} "
            f"| {r.num_warps} | {r.arch} | {r.registers} | {r.spill_bytes} "
            f"| {r.programs_per_sm} ({r.intended_programs}) | {r.programs_per_sm * r.num_warps} "
            f"| {_widths(r.loop_loads)} | {_widths(r.loop_stores)} | {'; '.join(r.failures) or 'ok'} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--full", action="store_true", help="every dtype x C x feature combination")
    ap.add_argument("--arch", default=",".join(map(str, ARCHS)), help="compute capabilities, e.g. 90,80")
    ap.add_argument("--match", default="", help="only scenarios whose name contains this")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    a = ap.parse_args(argv)
    reason = cuda_backend_missing()
    if reason:
        print(f"skipped: {reason}")
        return 0
    torch.set_num_threads(1)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said explicitly
    t0 = time.perf_counter()
    results = run(a.full, [int(s) for s in a.arch.split(",")], a.match)
    table = markdown(results)
    print(table, end="")
    failed = [r for r in results if r.failures]
    print(
        f"# {len(results)} compiles ({len(results) // max(1, len(a.arch.split(',')))} configurations), "
        f"{len(failed)} failed; {time.perf_counter() - t0:.1f} s"
    )
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
