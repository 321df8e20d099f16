#!/usr/bin/env bash
# The whole GPU check in one run: the Triton tests compiled for the device (not interpreted), then the
# benchmark tables. Run from the repository root on a CUDA machine with torch and triton installed:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# OUT_DIR (default gpu-results) receives the test log and the Markdown tables to copy into
# benchmarks/RESULTS.md with the machine line the benchmarks print. Liger-Kernel is added as a
# contender when `import liger_kernel` works (pip install liger-kernel --no-deps).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/machine.txt"
# 1. Correctness on the device, the zero-synchronisation test included.
# (test_triton_kernel and test_triton_autograd put their tensors on the GPU when not interpreted; the
# other test files use CPU tensors and run under the interpreter in CI.)
python -m pytest -q -p no:cacheprovider -x tests/test_triton_kernel.py tests/test_triton_autograd.py \
    2>&1 | tail -20 | tee "$out/tests.txt"
# 2. Kernels alone vs the whole loss.backward() step, against torch and Liger (16384 x 128256, bf16 and fp32).
python benchmarks/bench_triton.py --markdown "$out/triton.md" 2>&1 | tee "$out/triton.txt"
# 3. The shared table on CUDA (several shapes), with peak memory.
python benchmarks/bench_cross_entropy.py --device cuda --markdown "$out/cuda.md" 2>&1 | tee "$out/cuda.txt"
# 4. Fused linear + cross-entropy: its Triton tests on the device, then the table against torch and Liger
# (8192 x 4096 -> 128256 bf16).
python -m pytest -q -p no:cacheprovider -x tests/test_linear.py -k "triton" 2>&1 | tail -5 | tee "$out/tests-linear.txt"
python benchmarks/bench_linear.py --device cuda --markdown "$out/linear.md" 2>&1 | tee "$out/linear.txt"
