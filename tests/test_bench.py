"""The benchmark runner runs end to end on a tiny shape and reports what it says it does."""

import pytest

from labelsmooth import bench


def test_bench_quick_table(capsys, tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--shapes", "64x300", "--repeats", "2", "--no-compile", "--no-memory", "--markdown", str(out)]) == 0
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


@pytest.mark.parametrize("argv,match", [(["--shapes", "10by20"], "--shapes"), (["--repeats", "0"], "--repeats"),
                                        (["--dtypes", "int8"], "--dtypes")])
def test_bench_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
