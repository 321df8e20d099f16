#!/usr/bin/env bash
# The whole GPU check in one run: the kernels' static table (compiled for this GPU and for sm_90/sm_80:
# registers, occupancy, load widths), the Triton tests compiled for the device (not interpreted), then
# the benchmark tables with the issue's targets. Run from the repository root on a CUDA machine with
# torch and triton installed:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# OUT_DIR (default gpu-results) receives the logs and the Markdown tables to copy into
# benchmarks/RESULTS.md with the machine line the benchmarks print. Peers are added when they import:
# Liger-Kernel (pip install liger-kernel --no-deps) for the cross-entropy and fused linear tables, and
# Apple's Cut Cross-Entropy (pip install cut-cross-entropy --no-deps) for the fused linear one.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/machine.txt"
python -c "import importlib.util as u; print('liger-kernel', bool(u.find_spec('liger_kernel')), 'cut-cross-entropy', bool(u.find_spec('cut_cross_entropy')))" | tee -a "$out/machine.txt"
cc="$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(10 * m + n)")"
# 0. The static table beside the measured times: every kernel configuration compiled for this device's
# architecture and for sm_90/sm_80 (registers, spills, programs per SM, load widths in the row loops).
python -m labelsmooth.kernels.compile_check --arch "$(python -c "print(','.join(dict.fromkeys(['$cc', '90', '80'])))")" \
    --markdown "$out/static.md" 2>&1 | tail -3 | tee "$out/static.txt"
# 1. Correctness on the device, the zero-synchronisation test included.
# (test_triton_kernel and test_triton_autograd put their tensors on the GPU when not interpreted; the
# other test files use CPU tensors and run under the interpreter in CI.)
python -m pytest -q -p no:cacheprovider -x tests/test_triton_kernel.py tests/test_triton_autograd.py \
    2>&1 | tail -20 | tee "$out/tests.txt"
# 2. Cross-entropy end to end against Liger at 16384 x 128256 and 16384 x 50257 (aligned and unaligned
# rows), bf16 and fp32, for loss.backward() (g = 1) and (loss_sum / n).backward() (g = 1/n), with the
# kernels alone, peak memory and the targets (>= 1.3x Liger at bf16 128256; 50257 within 1.1x per logit).
python benchmarks/bench_triton.py --shapes 16384x128256,16384x50257 --markdown "$out/triton.md" 2>&1 \
    | tee "$out/triton.txt"
# 3. The shared table on CUDA (several shapes), with peak memory.
python benchmarks/bench_cross_entropy.py --device cuda --markdown "$out/cuda.md" 2>&1 | tee "$out/cuda.txt"
# 4. Fused linear + cross-entropy: its Triton tests on the device, then time and peak memory against
# torch, Liger and Cut Cross-Entropy (8192 x 4096 -> 128256 bf16), with the targets (time <= Liger's,
# peak <= 1.1x CCE's).
python -m pytest -q -p no:cacheprovider -x tests/test_linear.py -k "triton" 2>&1 | tail -5 | tee "$out/tests-linear.txt"
python benchmarks/bench_linear.py --device cuda --markdown "$out/linear.md" 2>&1 | tee "$out/linear.txt"
