"""Label-smoothed cross-entropy, forward+backward: every labelsmooth backend against torch.

CPU (default): 4096 x 32000 and 2048 x 128256 float32.
GPU (--device cuda): 16384 x 128256 bfloat16 and float32, with achieved GB/s against the copy bandwidth.

    python benchmarks/bench_cross_entropy.py [--device cuda] [--markdown out.md] [labelsmooth bench options]

The runner is ``labelsmooth.bench`` (the same one ``labelsmooth bench`` uses); record the latest tables in
benchmarks/RESULTS.md with the machine line the runner prints.
"""

import sys

from labelsmooth.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
