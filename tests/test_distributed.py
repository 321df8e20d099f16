"""labelsmooth.distributed against single-process torch in float64, on spawned gloo process groups.

Each multi-process test spawns its ranks once and runs its whole matrix of cases inside them (spawning
costs a torch import per rank, far more than the cases). Ranks meet on 127.0.0.1 at a free port, and
every rank destroys its process group in a ``finally``; if one rank fails, ``torch.multiprocessing``
terminates the others, and the gloo timeout bounds any wait.
"""

import doctest
import importlib.util
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import labelsmooth.distributed as D

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

ROOT = Path(__file__).resolve().parents[1]
EPS = (0.0, 0.1, 0.7)
REDUCTIONS = ("none", "sum", "mean")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, body, args):
    torch.set_num_threads(1)  # 2-3 ranks share the machine's cores
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=45)
    )
    try:
        body(rank, world, *args)
    finally:
        dist.destroy_process_group()
    # Passed: leave at once. Interpreter shutdown would run the C++ destructors of gloo's and torch's
    # thread pools, which can abort a rank ("terminate called without an active exception") after its
    # work is done and checked; os._exit skips them (the exit code still says success).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(world, body, *args):
    mp.spawn(_entry, args=(world, _free_port(), body, args), nprocs=world, join=True)


def _reference(full, target, eps, reduction, z_loss):
    """Single-process loss on the gathered logits: torch's own cross-entropy plus the z-loss term."""
    if not z_loss:
        return F.cross_entropy(full.movedim(-1, 1), target, label_smoothing=eps, reduction=reduction)
    keep = target != -100
    rows = F.cross_entropy(full.movedim(-1, 1), target, label_smoothing=eps, reduction="none")
    rows = rows + z_loss * torch.where(keep, torch.logsumexp(full, dim=-1) ** 2, 0.0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / keep.sum()


def _my_slice(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _compare(full, target, sizes, rank, eps, reduction, z_loss, rtol, atol, group=None, backend="auto"):
    """The vocab-parallel loss and this rank's gradient against the float64 reference."""
    sl = _my_slice(sizes, rank)
    local = full[..., sl].clone().requires_grad_()
    out = D.vocab_parallel_cross_entropy(
        local, target, label_smoothing=eps, reduction=reduction, z_loss=z_loss, group=group, backend=backend
    )
    ref_in = full.double().clone().requires_grad_()
    ref = _reference(ref_in, target, eps, reduction, z_loss)
    # grad_output != 1, the same on every rank (as it is when derived from the rank-identical loss).
    gen = torch.Generator().manual_seed(7)
    g = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5
    g = g.to(out.dtype).double()  # the same grad_output on both sides, whatever out's precision
    (grad,) = torch.autograd.grad(out, local, g.to(out.dtype))
    (ref_grad,) = torch.autograd.grad(ref, ref_in, g)
    what = f"eps={eps} reduction={reduction} z_loss={z_loss} rank={rank}"
    assert out.dtype == full.dtype and out.shape == ref.shape, what
    torch.testing.assert_close(out.double(), ref.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(
        grad.double(), ref_grad[..., sl], rtol=rtol, atol=atol, msg=lambda m: f"{what} gradient: {m}"
    )
    return out


def _body_matches_torch(rank, world, sizes):
    num_classes = sum(sizes)
    gen = torch.Generator().manual_seed(1234)
    full = torch.randn(3, 7, num_classes, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, num_classes, (3, 7), generator=gen)
    target[0, :3] = -100
    target[2, 6] = -100
    # Targets in every slice, and a row whose max is tied between rank 0 and the last rank.
    for r in range(world):
        target[1, r] = _my_slice(sizes, r).start
    full[1, 5, 0] = full[1, 5, -1] = full[1, 5].max() + 1.0

    # float64 against float64: only rounding differs (a few ulps of sums over K terms).
    for eps in EPS:
        for reduction in REDUCTIONS:
            out = _compare(full, target, sizes, rank, eps, reduction, 0.0, rtol=1e-11, atol=1e-12)
            if reduction != "none":  # every rank holds the same loss, bit for bit
                every = [torch.empty((), dtype=out.dtype) for _ in range(world)]
                dist.all_gather(every, out.detach())
                assert all(torch.equal(e, every[0]) for e in every)
        _compare(full, target, sizes, rank, eps, "mean", 0.01, rtol=1e-11, atol=1e-12)

    # float32 logits against the float64 reference on the same values: the accumulation in float32
    # over at most 11 classes keeps about 1e-6 relative error; 2e-5 leaves margin.
    full32 = full.float()
    for eps in EPS:
        _compare(full32, target, sizes, rank, eps, "none", 1e-3, rtol=2e-5, atol=1e-6)
    # bfloat16 logits are computed in float32 and the results rounded to bfloat16 (8 significant bits:
    # half an ulp is 2**-9 = 2e-3 relative); gradients far below the largest get an absolute margin.
    _compare(full.bfloat16(), target, sizes, rank, 0.1, "sum", 0.0, rtol=4e-3, atol=1e-4)


def _body_confident_rows(rank, world, sizes):
    """float32 rows so confident that 1 - p_y is far below float32's resolution near 1."""
    num_classes = sum(sizes)
    gen = torch.Generator().manual_seed(5)
    full = torch.randn(world, num_classes, generator=gen)
    target = torch.tensor([_my_slice(sizes, r).start for r in range(world)])
    full[torch.arange(world), target] = 25.0  # 1 - p_y ~ K e^-25 ~ 1e-10
    full = full + 100.0  # large logits: lse - x_y would cancel the whole loss
    for eps in (0.0, 0.1):
        sl = _my_slice(sizes, rank)
        local = full[:, sl].clone().requires_grad_()
        out = D.vocab_parallel_cross_entropy(local, target, label_smoothing=eps, reduction="none")
        (grad,) = torch.autograd.grad(out.sum(), local)
        ref_in = full.double().clone().requires_grad_()
        ref = F.cross_entropy(ref_in, target, label_smoothing=eps, reduction="none")
        (ref_grad,) = torch.autograd.grad(ref.sum(), ref_in)
        if eps == 0:
            assert (ref > 0).all() and (ref < 1e-8).all()
        # Relative accuracy of tiny values is the point: a float32 p_y - 1 or lse - x_y would be 0.
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), ref_grad[:, sl], rtol=1e-5, atol=1e-30)


def _body_special_rows(rank, world, sizes):
    """Ignored rows with NaN logits, an all -inf slice (vocabulary padding), and the data moved."""
    num_classes = sum(sizes)
    gen = torch.Generator().manual_seed(9)
    full = torch.randn(6, num_classes, generator=gen, dtype=torch.float64)
    full[:, _my_slice(sizes, world - 1)] = float("-inf")
    target = torch.randint(0, num_classes - sizes[-1], (6,), generator=gen)
    target[2] = -100
    _compare(full, target, sizes, rank, 0.0, "mean", 0.0, rtol=1e-11, atol=1e-12)

    full[2] = float("nan")
    local = full[:, _my_slice(sizes, rank)].clone().requires_grad_()
    moved = []
    real = D._all_gather
    D._all_gather = lambda out, inp, group: (moved.append(inp.numel()), real(out, inp, group))
    try:
        out = D.vocab_parallel_cross_entropy(local, target, reduction="none")
        (grad,) = torch.autograd.grad(out.sum(), local)
    finally:
        D._all_gather = real
    assert out[2] == 0 and (grad[2] == 0).all() and torch.isfinite(out).all()
    # One collective per call (the slice sizes are cached), moving 3 numbers per row, never logits.
    assert moved == [3 * 6]

    # All rows ignored: mean is 0/0 as in torch, the gradient 0.
    none = torch.full_like(target, -100)
    out = D.vocab_parallel_cross_entropy(local.detach().nan_to_num().requires_grad_(), none)
    assert torch.isnan(out)


def _body_accumulation_recipe(rank, world):
    """2 data-parallel ranks x 2 micro-batches with uneven padding: the summed micro-batch losses over
    the global count of targets equal the full batch's mean, loss and gradient."""
    hidden, vocab, eps = 5, 13, 0.1
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    shapes = [[(2, 6), (3, 4)], [(1, 8), (4, 3)]]  # [rank][micro-batch]: (sequences, length)
    batches = []
    for per_rank in shapes:
        mine = []
        for b, t in per_rank:
            h = torch.randn(b, t, hidden, generator=gen, dtype=torch.float64)
            y = torch.randint(0, vocab, (b, t), generator=gen)
            lengths = torch.randint(1, t + 1, (b,), generator=gen)
            y[torch.arange(t) >= lengths.unsqueeze(1)] = -100  # right padding, uneven
            mine.append((h, y))
        batches.append(mine)

    # Each rank is its own (one-rank) tensor-parallel group; the default group is data-parallel.
    tp = [dist.new_group([r]) for r in range(world)][rank]
    w = w0.clone().requires_grad_()
    n = D.global_num_targets([y for _, y in batches[rank]])
    total = torch.zeros((), dtype=torch.float64)
    naive = torch.zeros((), dtype=torch.float64)
    for h, y in batches[rank]:
        loss = D.vocab_parallel_cross_entropy(h @ w.T, y, label_smoothing=eps, reduction="sum", group=tp) / n
        loss.backward()
        total += loss.detach()
        naive += F.cross_entropy((h @ w0.T).movedim(-1, 1), y, label_smoothing=eps) / (2 * world)
    dist.all_reduce(w.grad)  # gradients are summed over data-parallel ranks, not averaged
    dist.all_reduce(total)
    dist.all_reduce(naive)

    every_h = torch.cat([h.reshape(-1, hidden) for mine in batches for h, _ in mine])
    every_y = torch.cat([y.reshape(-1) for mine in batches for _, y in mine])
    assert int(n) == int((every_y != -100).sum())
    ref_w = w0.clone().requires_grad_()
    ref = F.cross_entropy(every_h @ ref_w.T, every_y, label_smoothing=eps)
    ref.backward()
    torch.testing.assert_close(total, ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-11, atol=1e-13)
    # The data are uneven enough that the mean of per-micro-batch means is measurably wrong.
    assert abs(float(naive - ref)) > 1e-3


@pytest.mark.parametrize("sizes", [(4, 7), (3, 5, 2)], ids=["2ranks", "3ranks"])
def test_matches_single_process_torch(sizes):
    _spawn(len(sizes), _body_matches_torch, sizes)


def test_confident_and_special_rows():
    sizes = (3, 5, 2)
    _spawn(len(sizes), _body_confident_and_special, sizes)


def _body_confident_and_special(rank, world, sizes):
    _body_confident_rows(rank, world, sizes)
    _body_special_rows(rank, world, sizes)


def _body_triton(rank, world, sizes):
    """The Triton kernels' local work (statistics pass, backward from the whole row's statistics, the
    target in another slice) under the interpreter, float32 and bfloat16 against float64 torch."""
    num_classes = sum(sizes)
    gen = torch.Generator().manual_seed(21)
    full = torch.randn(2, 5, num_classes, generator=gen) * 3
    target = torch.randint(0, num_classes, (2, 5), generator=gen)
    target[0, 0] = -100
    for r in range(world):
        target[1, r] = _my_slice(sizes, r).start
    full[1, 4, 0] = full[1, 4, -1] = full[1, 4].max() + 1.0  # a max tied across ranks
    full[0, 1, target[0, 1]] = 40.0  # a confident row
    for eps in EPS:
        for reduction in ("none", "mean"):
            _compare(full, target, sizes, rank, eps, reduction, 0.0, rtol=2e-5, atol=1e-6, backend="triton")
    _compare(full, target, sizes, rank, 0.1, "sum", 1e-3, rtol=2e-5, atol=1e-6, backend="triton")
    # bfloat16: one ulp (2**-8 relative) rather than half, because the interpreter's float32 -> bfloat16
    # store may round either way (test_triton_kernel's bf16 checks allow the same).
    _compare(full.bfloat16(), target, sizes, rank, 0.1, "sum", 0.0, rtol=8e-3, atol=1e-4, backend="triton")


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1",
)
def test_triton_local_work_matches_single_process_torch():
    sizes = (4, 7)
    _spawn(len(sizes), _body_triton, sizes)


def test_gradient_accumulation_recipe():
    _spawn(2, _body_accumulation_recipe)


def test_example_torchrun_tiny_lm():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "examples" / "torchrun_tiny_lm.py"),
        "--smoke",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check passed" in done.stdout, done.stdout


def test_vocab_slice_covers_classes_once():
    for classes in (5, 7, 12):
        for world in (1, 2, 3, 5):
            parts = [D.vocab_slice(classes, r, world) for r in range(world)]
            covered = [c for p in parts for c in range(p.start, p.stop)]
            assert covered == list(range(classes))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_argument_errors():
    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="local_logits"):
        D.vocab_parallel_cross_entropy(x.long(), y)
    with pytest.raises(TypeError, match="target"):
        D.vocab_parallel_cross_entropy(x, y.float())
    with pytest.raises(ValueError, match="label_smoothing"):
        D.vocab_parallel_cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        D.vocab_parallel_cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="z_loss"):
        D.vocab_parallel_cross_entropy(x, y, z_loss=-1.0)
    with pytest.raises(ValueError, match=r"target must have .*\(2,\), got \(3,\)"):
        D.vocab_parallel_cross_entropy(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"target\[1\]"):
        D.global_num_targets([y, y.float()])
    with pytest.raises(ValueError, match="empty"):
        D.global_num_targets([])
    with pytest.raises(ValueError, match="rank must be in"):
        D.vocab_slice(10, 3, 3)
    with pytest.raises(ValueError, match="num_classes"):
        D.vocab_slice(2, 0, 3)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            D.vocab_parallel_cross_entropy(x, y)


def test_class_index_out_of_range_names_it():
    # A one-process group (no port needed): the range check sees the global K, not the local slice.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(IndexError, match=r"class index 3, outside \[0, 2\]"):
            D.vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    finally:
        dist.destroy_process_group()


def test_slice_size_cache_does_not_keep_a_destroyed_group_alive():
    # A group kept alive past destroy_process_group is torn down at interpreter shutdown, where gloo's
    # threads could abort the process after its work had finished (seen in 3 of 20 torchrun runs).
    import gc
    import weakref

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        group = dist.group.WORLD
        D.vocab_parallel_cross_entropy(torch.randn(2, 3), torch.tensor([0, 2]), label_smoothing=0.1)
        assert group in D._PARTITIONS
        ref = weakref.ref(group)
        del group
    finally:
        dist.destroy_process_group()
    gc.collect()
    assert ref() is None


def test_docstring_examples():
    result = doctest.testmod(D, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    try:
        assert result.attempted > 0 and result.failed == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_import_works_without_torch_distributed():
    # Builds without distributed support: importing works, calling says why it cannot run.
    code = (
        "import torch, torch.distributed as d; d.is_available = lambda: False; "
        "import labelsmooth, labelsmooth.distributed as D\n"
        "try:\n    D.global_num_targets(torch.tensor([1]))\n"
        "except RuntimeError as e:\n    assert 'not available' in str(e), e\n"
        "else:\n    raise SystemExit('no error')"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    )
