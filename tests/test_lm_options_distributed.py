"""vocab_parallel_cross_entropy's language-model options against the single-device loss, in float64.

Each multi-process test spawns its ranks once (gloo on 127.0.0.1) and runs its matrix inside them. The
ground truth is ``labelsmooth.reference.ce_rows`` (checked against torch in tests/test_reference.py) on
the gathered logits ``s * x``, with the row weights, the shifted targets and the aux items written out
from their definitions in plain torch (logsumexp, argmax, softmax entropy), differentiated by autograd.
float64 against float64: only rounding differs (sums over at most 11 classes), hence rtol 1e-11.
"""

import importlib.util
import os
import socket
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import labelsmooth.distributed as D
from labelsmooth.reference import ce_rows

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

F64 = dict(rtol=1e-11, atol=1e-12)
AUX = ("z_loss", "lse", "accuracy", "predicted", "entropy")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, body, args):
    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=45)
    )
    try:
        body(rank, world, *args)
    finally:
        dist.destroy_process_group()
    # Passed: leave at once (interpreter shutdown can abort a rank in gloo's thread-pool destructors).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(world, body, *args):
    mp.spawn(_entry, args=(world, _free_port(), body, args), nprocs=world, join=True)


def _my_slice(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def reference(full, target, eps, reduction, z_loss, token_weight=None, shift=False, scale=None, ignore=-100):
    """(loss, aux) of the single-device loss on the gathered (B, T, K) logits, from the definitions."""
    x = full if scale is None else full * scale
    y, tw = target, token_weight
    if shift:
        x, y = x[:, :-1], y[:, 1:]
        tw = None if tw is None else tw[:, 1:]
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    keep = y2 != ignore
    r = keep.double() if tw is None else torch.where(keep, tw.reshape(-1), 0.0)
    rows = ce_rows(x2, y2, None, ignore, eps, z_loss) * r
    lse = torch.where(keep, torch.logsumexp(x2, dim=-1), 0.0)
    logp = torch.log_softmax(x2, dim=-1)
    p = logp.exp()
    entropy = torch.where(keep, torch.where(p > 0, -p * logp, 0.0).sum(-1), 0.0)  # 0 log 0 = 0
    predicted = torch.where(keep, x2.argmax(-1), ignore)
    hit = ((predicted == y2) & keep).double()
    zl = z_loss * lse * lse * r
    den = r.sum()

    def per_row(v, fill=0.0):
        if shift:
            v = torch.cat([v.reshape(y.shape), torch.full((y.shape[0], 1), fill, dtype=v.dtype)], dim=1)
        return v.reshape(target.shape)

    if reduction == "none":
        loss, acc, zl_out = per_row(rows), per_row(hit), per_row(zl)
    elif reduction == "sum":
        loss, acc, zl_out = rows.sum(), (hit * r).sum(), zl.sum()
    else:
        loss, acc, zl_out = rows.sum() / den, (hit * r).sum() / den, zl.sum() / den
    aux = dict(
        z_loss=zl_out.detach(),
        lse=per_row(lse).detach(),
        accuracy=acc.detach(),
        predicted=per_row(predicted, ignore),
        entropy=per_row(entropy).detach(),
    )
    return loss, aux


def _compare(
    full,
    target,
    sizes,
    rank,
    *,
    eps=0.1,
    reduction="mean",
    z_loss=0.0,
    tw=None,
    shift=False,
    scale=None,
    aux=True,
    backend="auto",
    tol=F64,
    what="",
):
    """Loss, aux, and the gradients of the local slice, the logit scale and the token weights."""
    sl = _my_slice(sizes, rank)
    local = full[..., sl].clone().requires_grad_()
    s_ours = scale.clone().requires_grad_() if isinstance(scale, torch.Tensor) else scale
    tw_ours = None if tw is None else tw.clone().requires_grad_()
    result = D.vocab_parallel_cross_entropy(
        local,
        target,
        label_smoothing=eps,
        reduction=reduction,
        z_loss=z_loss,
        backend=backend,
        token_weight=tw_ours,
        shift=shift,
        logit_scale=s_ours,
        return_aux=aux,
    )
    out, got = result if aux is not False else (result, {})
    ref_in = full.double().clone().requires_grad_()
    s_ref = scale.double().clone().requires_grad_() if isinstance(scale, torch.Tensor) else scale
    tw_ref = None if tw is None else tw.double().clone().requires_grad_()
    ref, want = reference(ref_in, target, eps, reduction, z_loss, tw_ref, shift, s_ref)
    # grad_output != 1, the same on every rank (as it is when derived from the rank-identical loss).
    g = torch.rand(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    g = g.to(out.dtype).double()  # the same grad_output on both sides, whatever out's precision
    ours = [local] + [t for t in (s_ours, tw_ours) if isinstance(t, torch.Tensor)]
    theirs = [ref_in] + [t for t in (s_ref, tw_ref) if isinstance(t, torch.Tensor)]
    grads = torch.autograd.grad(out, ours, g.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, theirs, g)
    what = f"{what} eps={eps} reduction={reduction} z_loss={z_loss} shift={shift} rank={rank}"
    assert out.shape == ref.shape, what
    torch.testing.assert_close(out.double(), ref.detach(), **tol, msg=lambda m: f"{what} loss: {m}")
    torch.testing.assert_close(grads[0].double(), ref_grads[0][..., sl], **tol, msg=lambda m: f"{what} grad: {m}")
    for a, b, name in zip(grads[1:], ref_grads[1:], ("logit_scale/token_weight", "token_weight"), strict=False):
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda m, n=name: f"{what} d {n}: {m}")
    names = AUX if aux is True else () if aux is False else tuple(aux)
    assert set(got) == set(names), what
    for name in names:
        assert not got[name].requires_grad, name
        if name == "predicted":
            assert got[name].dtype == torch.int64 and torch.equal(got[name], want[name]), f"{what} predicted"
        else:
            assert got[name].shape == want[name].shape, f"{what} {name}"
            torch.testing.assert_close(got[name].double(), want[name], **tol, msg=lambda m, n=name: f"{what} {n}: {m}")
    return out, got


def _data(sizes, seed=1234, batch=(3, 7)):
    world, num_classes = len(sizes), sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    full = torch.randn(*batch, num_classes, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, num_classes, batch, generator=gen)
    target[0, :3] = -100
    target[2, 6] = -100
    for r in range(world):
        target[1, r + 1] = _my_slice(sizes, r).start  # targets in every slice
    # Ties of the row max: across the first and last rank (row (1, 5)), inside one slice (row (2, 0)):
    # predicted must be the lowest global index, as torch.argmax on the gathered logits.
    full[1, 5, 0] = full[1, 5, -1] = full[1, 5].max() + 1.0
    full[2, 0, 1] = full[2, 0, 2] = full[2, 0].max() + 1.0
    target[1, 6] = 0  # row (1, 5) is scored (shift) against label 0, predicted correctly
    tw = torch.rand(batch, generator=gen, dtype=torch.float64) * 2
    tw[0, 0] = float("nan")  # an ignored row's weight must not leak
    return full, target, tw


def _body_options(rank, world, sizes):
    full, target, tw = _data(sizes)
    s = torch.tensor(0.7, dtype=torch.float64)
    # Each option alone, every reduction.
    for reduction in ("none", "sum", "mean"):
        _compare(full, target, sizes, rank, reduction=reduction, what="aux only")
        _compare(full, target, sizes, rank, reduction=reduction, tw=tw, aux=False, what="token_weight")
        _compare(full, target, sizes, rank, reduction=reduction, shift=True, aux=False, what="shift")
        _compare(full, target, sizes, rank, reduction=reduction, scale=s, aux=False, what="scale tensor")
        _compare(full, target, sizes, rank, reduction=reduction, scale=-1.3, aux=False, what="scale float")
    # All together, with and without smoothing and z-loss, each aux item alone.
    for eps in (0.0, 0.1):
        for z_loss in (0.0, 1e-2):
            for reduction in ("none", "sum", "mean"):
                _compare(
                    full,
                    target,
                    sizes,
                    rank,
                    eps=eps,
                    reduction=reduction,
                    z_loss=z_loss,
                    tw=tw,
                    shift=True,
                    scale=s,
                    what="all",
                )
    for name in AUX:
        _compare(full, target, sizes, rank, z_loss=1e-2, tw=tw, shift=True, aux=(name,), what=f"aux {name}")
    # float32 logits (computed in float32) against float64 on the same values: sums over at most 11
    # classes of terms ~1-10 keep ~1e-6 relative error; 2e-5 leaves margin (as tests/test_distributed.py).
    # bfloat16 logits are computed in float32 and the loss rounded to bf16 (half an ulp: 2e-3 relative),
    # the gradient too; aux items stay float32.
    full32, tw32, s32 = full.float(), tw.float(), s.float()
    for reduction in ("none", "mean"):
        kw = dict(reduction=reduction, z_loss=1e-2, tw=tw32, shift=True, scale=s32, what="float32")
        _compare(full32, target, sizes, rank, tol=dict(rtol=2e-5, atol=1e-5), **kw)
    _compare(
        full.bfloat16(), target, sizes, rank, reduction="sum", tw=tw32, shift=True, scale=0.8, aux=("lse", "entropy"),
        tol=dict(rtol=4e-3, atol=1e-4), what="bfloat16",
    )  # fmt: skip
    # A row whose every class is ignored by shift only (T = 1): loss 0, mean 0/0.
    one = target[:, :1]
    out = D.vocab_parallel_cross_entropy(full[:, :1, _my_slice(sizes, rank)], one, shift=True, reduction="sum")
    assert out == 0

    # The all-gather carries 3 numbers per row, plus one for predicted (accuracy) and one for entropy.
    local = full[..., _my_slice(sizes, rank)]
    real = D._all_gather
    for aux, k in ((False, 3), (("lse", "z_loss"), 3), (("accuracy",), 4), (("entropy",), 4), (True, 5)):
        moved = []
        D._all_gather = lambda out, inp, group, moved=moved: (moved.append(inp.numel()), real(out, inp, group))
        try:
            D.vocab_parallel_cross_entropy(local, target, return_aux=aux)
        finally:
            D._all_gather = real
        assert moved == [k * target.numel()], (aux, moved)


def _body_special(rank, world, sizes):
    """NaN logits on ignored and sequence-end rows, an all -inf slice, confident rows."""
    full, target, tw = _data(sizes, seed=9)
    full[..., _my_slice(sizes, world - 1)] = float("-inf")  # vocabulary padding on the last rank
    target[(target >= sum(sizes[:-1]))] = 1
    # eps = 0: smoothing puts mass on the -inf logits (an infinite loss). A float scale: the reference's
    # d/ds is NaN there (autograd's 0 * -inf), ours the limit, 0 per padded class (checked finite below).
    _compare(full, target, sizes, rank, eps=0.0, tw=tw, shift=True, scale=1.5, what="-inf slice")
    local = full[..., _my_slice(sizes, rank)].clone().requires_grad_()
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    D.vocab_parallel_cross_entropy(local, target, shift=True, logit_scale=s).backward()
    assert torch.isfinite(s.grad) and torch.isfinite(local.grad).all()
    # A float32 scale on float64 logits gets a float32 gradient (its own dtype).
    s32 = torch.tensor(1.5, requires_grad=True)
    D.vocab_parallel_cross_entropy(local.detach(), target, logit_scale=s32).backward()
    assert s32.grad.dtype == torch.float32 and torch.isfinite(s32.grad)
    full = full.nan_to_num(neginf=-5.0)
    full[0, 0] = float("nan")  # ignored row (target -100 there)
    full[1, 6] = float("nan")  # a sequence's last row: never scored under shift
    local = full[..., _my_slice(sizes, rank)].clone().requires_grad_()
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    out, aux = D.vocab_parallel_cross_entropy(
        local, target, shift=True, token_weight=tw, logit_scale=s, reduction="none", return_aux=True
    )
    (out * 2.0).sum().backward()
    assert out[0, 0] == 0 and out[1, 6] == 0 and (local.grad[0, 0] == 0).all() and (local.grad[1, 6] == 0).all()
    assert torch.isfinite(out).all() and torch.isfinite(local.grad).all() and torch.isfinite(s.grad)
    for name in ("lse", "entropy", "z_loss", "accuracy"):
        assert aux[name][1, 6] == 0 and torch.isfinite(aux[name]).all(), name
    assert aux["predicted"][1, 6] == -100

    # float32 confident rows: entropy ~ K e^-30 * 30 stays accurate (log S + (-U)/S: nothing cancels).
    conf = torch.randn(world, sum(sizes), generator=torch.Generator().manual_seed(5))
    y = torch.tensor([_my_slice(sizes, r).start for r in range(world)])
    conf[torch.arange(world), y] = 30.0
    conf = conf + 100.0
    _, aux = D.vocab_parallel_cross_entropy(conf[:, _my_slice(sizes, rank)], y, return_aux=("entropy", "lse"))
    ref = conf.double()
    logp = torch.log_softmax(ref, -1)
    torch.testing.assert_close(aux["entropy"].double(), -(logp.exp() * logp).sum(-1), rtol=1e-4, atol=0)
    torch.testing.assert_close(aux["lse"].double(), torch.logsumexp(ref, -1), rtol=1e-7, atol=0)


@pytest.mark.parametrize("sizes", [(4, 7), (3, 5, 2)], ids=["2ranks", "3ranks"])
def test_options_match_the_single_device_loss(sizes):
    _spawn(len(sizes), _body_options, sizes)


def test_special_rows():
    _spawn(3, _body_special, (3, 5, 2))


def _body_triton(rank, world, sizes):
    # float32 under the Triton interpreter against the float64 reference on the same values: a few
    # float32 roundings of numbers of size ~1 (rtol 2e-5, atol 1e-6, as tests/test_distributed.py).
    full, target, tw = _data(sizes)
    tol = dict(rtol=2e-5, atol=1e-6)
    full32, tw32 = full.float(), tw.float()
    for reduction in ("none", "mean"):
        _compare(
            full32,
            target,
            sizes,
            rank,
            reduction=reduction,
            tw=tw32,
            shift=True,
            aux=("lse", "z_loss"),
            z_loss=1e-3,
            backend="triton",
            tol=tol,
            what="triton",
        )
        _compare(
            full32,
            target,
            sizes,
            rank,
            reduction=reduction,
            tw=tw32,
            shift=True,
            scale=torch.tensor(0.8),
            backend="triton",
            tol=tol,
            what="triton all",
        )


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1",
)
def test_triton_local_work_with_options():
    _spawn(2, _body_triton, (4, 7))


def test_argument_errors():
    x, y = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="shift"):
        D.vocab_parallel_cross_entropy(x[0], y[0], shift=True)
    with pytest.raises(ValueError, match="token_weight"):
        D.vocab_parallel_cross_entropy(x, y, token_weight=torch.ones(5))
    with pytest.raises(TypeError, match="token_weight"):
        D.vocab_parallel_cross_entropy(x, y, token_weight=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="logit_scale"):
        D.vocab_parallel_cross_entropy(x, y, logit_scale=torch.ones(1))
    with pytest.raises(ValueError, match="logit_scale"):
        D.vocab_parallel_cross_entropy(x, y, logit_scale=float("inf"))
    with pytest.raises(TypeError, match="logit_scale"):
        D.vocab_parallel_cross_entropy(x, y, logit_scale="2")
    with pytest.raises(ValueError, match="return_aux"):
        D.vocab_parallel_cross_entropy(x, y, return_aux=("lse", "perplexity"))
    with pytest.raises(TypeError, match="return_aux"):
        D.vocab_parallel_cross_entropy(x, y, return_aux=3)
