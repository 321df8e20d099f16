"""Every Triton kernel compiled for sm_90 and sm_80, as the wrappers launch it, on a machine without a
GPU (``labelsmooth.kernels.compile_check``): no compile error, no spill, registers within the launch
table's intended occupancy (16 warps resident per SM), and 16-byte global loads in the row loops.

CI compiles a representative subset (about 35 configurations x 2 architectures, ~40 s on one core):
fp32 and bf16 at C = 128256 and 50257 (aligned and unaligned rows) for the plain loss, the fused
linear loss's one-launch kernel, bf16 at 128256 with every feature (weights, prior, z-loss, softcap,
probability targets) and the vocabulary-parallel kernels, fp16 at 32000, and C = 10; and the kernel
options (a logit scale, the lse/argmax/entropy outputs, the d/ds sums) on fp32 rows of 50257, bf16 rows
of 128256 (also with every feature) and the one-launch gradient on bf16 rows of 50257. The whole matrix
(fp32/bf16/fp16 x C = 128256, 50257, 32000, 1000, 10 x features and options, negative eps, every
reduction):
``LABELSMOOTH_COMPILE_FULL=1 pytest tests/test_triton_compile.py`` (or
``python -m labelsmooth.kernels.compile_check --full``), a few minutes.

The compile runs in a child process: the kernels must be defined without ``TRITON_INTERPRET``
(interpreted ones cannot be compiled), which this test session sets for every other Triton test.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from labelsmooth.kernels import compile_check

FULL = os.environ.get("LABELSMOOTH_COMPILE_FULL", "") not in ("", "0")


def test_access_widths_of_loops():
    # A back-edge makes a loop: its 16-byte load and store count as in-loop, the scalar load after the
    # loop only in the total; predicated and cache-hinted forms are read too.
    ptx = "\n".join(
        [
            "ld.global.b32 %r1, [%rd1];",
            "$L__BB0_2:",
            "@%p1 ld.global.L1::evict_first.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd2 + 0 ];",
            "st.global.v4.b32 [ %rd3 + 0 ], { %r2, %r3, %r4, %r5 };",
            "@%p2 bra $L__BB0_2;",
            "ld.global.b16 %rs1, [%rd4];",
            "bra.uni $L__BB0_5;",
            "$L__BB0_5:",
        ]
    )
    loop_loads, loop_stores, all_loads = compile_check.global_access_widths(ptx)
    assert loop_loads == {16: 1}
    assert loop_stores == {16: 1}
    assert all_loads == {4: 1, 16: 1, 2: 1}


def test_occupancy_arithmetic():
    # 128 registers x 8 warps: two programs (16 warps) per SM; 129 rounds up to 136: one.
    assert compile_check.programs_per_sm(128, 8, 1024, 90) == 2
    assert compile_check.programs_per_sm(129, 8, 1024, 90) == 1
    assert compile_check.programs_per_sm(40, 1, 0, 80) == 32  # the 32-blocks-per-SM limit


def test_every_kernel_compiles_for_sm90_and_sm80_within_its_occupancy(tmp_path):
    reason = compile_check.cuda_backend_missing()
    if reason:
        pytest.skip(f"cannot compile for CUDA here: {reason}")
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "labelsmooth.kernels.compile_check", "--json", str(out)]
    if FULL:
        cmd.append("--full")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout)  # the table, shown with -s or on failure
    assert out.exists(), proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    failed = [f"{r['kernel']} {r['scenario']} [{r['flags']}] sm_{r['arch']}: {'; '.join(r['failures'])}"
              for r in results if r["failures"]]  # fmt: skip
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # What the subset must cover: the three kernels, both architectures, the three dtypes, aligned and
    # unaligned rows, the one-launch gradient, the vocabulary slice and every feature flag.
    assert {r["kernel"] for r in results} == {"fwd", "bwd", "slice"}
    assert {r["arch"] for r in results} == {90, 80}
    assert {r["dtype"] for r in results} == {"f32", "bf16", "f16"}
    assert {128256, 50257, 32000, 10} <= {r["num_classes"] for r in results}
    flags = set("+".join(r["flags"] for r in results).split("+"))
    assert {"eps", "z", "cap", "w", "prior", "prob", "chk", "grad", "go", "sc", "slice", "shift"} <= flags
    assert {"ls", "ds", "lse", "argmax", "ent"} <= flags  # the kernel options
    # The half-precision forward, the case: two programs per SM at 128256 and 50257.
    half_fwd = [r for r in results if r["kernel"] == "fwd" and r["dtype"] == "bf16" and r["num_classes"] > 50000]
    assert half_fwd and all(r["programs_per_sm"] >= 2 and r["spill_bytes"] == 0 for r in half_fwd)
