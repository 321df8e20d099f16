"""The benchmark runner runs end to end on a tiny shape and reports what it says it does."""

import sys
from pathlib import Path

import pytest

from labelsmooth import bench


def test_bench_quick_table(capsys, tmp_path):
    out = tmp_path / "table.md"
    assert (
        bench.main(["--shapes", "64x300", "--repeats", "2", "--no-compile", "--no-memory", "--markdown", str(out)]) == 0
    )
    text = capsys.readouterr().out
    for name in ("torch eager", "ls reference", "ls chunked", "ls chunked inplace"):
        assert f"| 64x300 | float32 | {name} |" in text
    assert "Machine:" in text and out.read_text().startswith("Machine:")


def test_peak_memory_child_measures_extra_memory():
    # torch eager materialises log_softmax and its gradient buffers: several logits' worth;
    # the fused in-place backend needs almost nothing beyond the logits.
    rows, classes = 512, 4096
    logits = rows * classes * 4
    eager = bench.peak_memory_cpu("torch eager", rows, classes, bench.torch.float32)
    inplace = bench.peak_memory_cpu("ls chunked inplace", rows, classes, bench.torch.float32)
    assert eager is not None and inplace is not None
    assert eager > 1.5 * logits
    assert inplace < 0.5 * logits


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--shapes", "10by20"], "argument --shapes:"),
        (["--repeats", "0"], "argument --repeats:"),
        (["--dtypes", "int8"], "argument --dtypes:"),
    ],
)
def test_bench_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and sched_setaffinity")


@linux_only
def test_contention_rows_and_the_busy_process_is_gone(capsys):
    assert bench.main(["--shapes", "32x200", "--repeats", "1", "--no-compile", "--no-memory", "--contention"]) == 0
    text = capsys.readouterr().out
    for name in ("torch eager", "ls chunked"):
        assert f"| 32x200 | float32 | {name} |" in text
        assert f"| 32x200 | float32 | {name}{bench.BUSY_SUFFIX} |" in text
    assert "Load average" in text


@linux_only
def test_busy_core_spins_on_one_core_and_is_killed():
    import os
    import time

    # Children left by earlier tests (if any) are not ours to count: only the one busy_core starts.
    before = _children()
    with bench.busy_core() as cpu:
        assert cpu in os.sched_getaffinity(0)
        children = _children() - before
        assert len(children) == 1
        (pid,) = children
        start = _cpu_seconds(pid)
        time.sleep(0.3)
        assert _cpu_seconds(pid) - start > 0.05  # it spins (most of a core, less on a loaded machine)
        assert os.sched_getaffinity(pid) == {cpu}
    time.sleep(0.05)
    assert pid not in _children()


def _children() -> set[int]:
    import os

    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                out.add(int(entry))
    return out


def _cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_chunked_bf16_needs_only_its_gradient_and_block_scratch():
    # bf16 logits: the gradient (1.00x) plus one float32 block per worker thread (2 x 4 MiB = 0.06x here).
    # A whole-buffer float32 temporary, as a bf16 scatter_ on CPU makes, would show as 3.0x.
    rows, classes = 2048, 16384
    extra = bench.peak_memory_cpu("ls chunked", rows, classes, bench.torch.bfloat16)
    assert extra is not None
    assert extra < 1.2 * rows * classes * 2


def test_cpu_timing_primes_memory_outside_the_timed_call(monkeypatch):
    # Before each timed call the runner writes and frees 4 x the logits' bytes (see prime_memory); the
    # contender must not be running meanwhile.
    calls = []
    running = []
    monkeypatch.setattr(bench, "prime_memory", lambda n: calls.append((n, bool(running))))
    x, t = bench.make_inputs(16, 50, bench.torch.float32, "cpu")
    c = bench.Contender("probe", lambda a, b: (running.append(1), a.sum())[1])
    bench.time_once(c, x, t, "cpu")
    assert calls == [(bench.PRIME_FACTOR * x.numel() * 4, False)]
    before = bench._rss_bytes()
    bench.prime_memory(64 << 20)  # the real one gives its memory back
    assert bench._rss_bytes() - before < (16 << 20)


def test_the_options_benchmark_runs_and_prints_both_tables(tmp_path):
    # benchmarks/bench_options.py calls the public options by name: a renamed option breaks it here, not in
    # the next benchmark session. Tiny shapes, one round: this checks that it runs, not what it measures.
    import runpy

    out = tmp_path / "options.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_options.py"
    module = runpy.run_path(str(script))
    assert (
        module["main"](
            ["--repeats", "1", "--ce-shape", "2x8x50", "--linear-shape", "2x8x16x50", "--markdown", str(out)]
        )
        == 0
    )
    text = out.read_text()
    for row in (
        "token_weight",
        "shift",
        "logit_scale (float)",
        "logit_scale (tensor, with its gradient)",
        "return_aux",
    ):
        assert text.count(f"| {row} |") == 2, row
