"""labelsmooth.linear_cross_entropy's language-model options, against the reference in float64.

The ground truth is ``labelsmooth.reference.ce_rows`` on the materialised logits ``F.linear(x, W, b)``
(itself checked against torch in tests/test_reference.py), differentiated by autograd. The chunked
backend runs in float64, so it agrees to float64 rounding (rtol 1e-10: sums of a few dozen terms of
size ~1). The Triton kernels run under TRITON_INTERPRET=1 in float32 against the float64 values on the
same inputs (rtol 1e-5, atol 1e-6: a few float32 roundings of numbers of size ~1).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.reference import ce_rows

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)
H, C = 8, 23

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [
    "chunked",
    pytest.param(
        "triton", marks=pytest.mark.skipif(not (HAS_TRITON and INTERPRETED), reason="needs triton interpreted")
    ),
]


def make(batch=(13,), seed=0, weighted=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, H, generator=g, dtype=torch.float64) * 2
    w = torch.randn(C, H, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, C, batch, generator=g)
    y.view(-1)[1::4] = -100
    cw = torch.rand(C, generator=g, dtype=torch.float64) + 0.2 if weighted else None
    return x, w, b, y, cw


def tolerance(backend):
    return F32 if backend == "triton" else F64


def dtype_for(backend):
    return torch.float32 if backend == "triton" else torch.float64  # Triton has no float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "eps,z_loss,softcap,weighted,bias",
    [
        (0.0, 0.0, None, False, True),
        (0.1, 0.0, None, True, True),
        (0.1, 1e-2, None, True, False),
        (0.2, 1e-3, 3.0, True, True),
        (0.0, 0.0, 2.0, False, False),
    ],
)
def test_none_rows_weighted_by_the_caller_give_the_reference_gradients(backend, eps, z_loss, softcap, weighted, bias):
    # (loss_rows * v).sum().backward(): a per-row grad_output, including rows of v that are 0,
    # negative and large; the ignored rows' v is NaN-free but nonzero, and their gradient must stay 0.
    x, w, b, y, cw = make(weighted=weighted, bias=bias)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    v[0] = 0.0
    dt = dtype_for(backend)

    leaves = [t.to(dt).clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    rows = ls.linear_cross_entropy(
        leaves[0],
        leaves[1],
        y,
        linear_bias=leaves[2] if bias else None,
        weight=None if cw is None else cw.to(dt),
        reduction="none",
        label_smoothing=eps,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=5,  # 13 rows: chunks of 5, 5, 3
        backend=backend,
    )
    (rows * v.to(dt)).sum().backward()

    # The reference sees the values the kernel sees (float32-rounded operands for Triton).
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    logits = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None)
    ref_rows = ce_rows(logits, y, cw, -100, eps, z_loss, softcap)
    (ref_rows * v).sum().backward()

    tol = tolerance(backend)
    assert rows.shape == y.shape
    torch.testing.assert_close(rows.double(), ref_rows.detach(), **tol)
    torch.testing.assert_close(leaves[0].grad.double(), ref_leaves[0].grad, **tol, msg=lambda m: f"input: {m}")
    # The weight and bias gradients sum a term per row (|v_n| |x_n| at most, rounded in float32 to
    # ~1e-7 relative): their absolute error scales with sum_n |v_n| max|x|, not with the (partly
    # cancelled) result.
    scale = float(v.abs().sum() * max(1.0, float(x.abs().max())))
    sums = dict(rtol=tol["rtol"], atol=max(tol["atol"], (0.0 if backend == "chunked" else 1e-7) * scale))
    for got, want, name in zip(leaves[1:], ref_leaves[1:], ("linear_weight", "linear_bias"), strict=False):
        torch.testing.assert_close(got.grad.double(), want.grad, **sums, msg=lambda m, n=name: f"{n}: {m}")
    # Ignored rows: exactly 0 loss and input gradient.
    ignored = y == -100
    assert (rows[ignored] == 0).all() and (leaves[0].grad[ignored] == 0).all()


# ---- the language-model options ------------------------------------------------------------------------

AUX = ("z_loss", "lse", "accuracy", "predicted", "entropy")


def make_seq(batch=(3, 5), seed=0, weighted=True, bias=True, probs=False):
    g = torch.Generator().manual_seed(seed)
    x, w, b, y, cw = make(batch=batch, seed=seed, weighted=weighted, bias=bias)
    if probs:
        y = torch.rand(*batch, C, generator=g, dtype=torch.float64)
        y = y / y.sum(-1, keepdim=True)
    else:
        y.view(-1)[2] = -100  # (0, 2): under shift, row (0, 1) is ignored
        y[1, 0] = 4  # the next sequence's first label: scored by no row under shift
    tw = torch.rand(batch, generator=g, dtype=torch.float64) * 2
    if not probs:
        tw[y == -100] = float("nan")  # an ignored row's weight must not leak
    return x, w, b, y, cw, tw


def reference(
    x, w, b, y, cw, *, reduction, label_smoothing=0.0, z_loss=0.0, softcap=None, tw=None, shift=False, scale=None
):
    """(loss, aux) of the materialised logits, from the definitions (labelsmooth.reference.ce_rows)."""
    probs = y.is_floating_point()
    batch = y.shape[:-1] if probs else y.shape
    logits = F.linear(x.reshape(-1, H), w, b)
    if scale is not None:
        logits = logits * scale
    n = logits.shape[0]
    yk = y.reshape(-1, C) if probs else y.reshape(-1)
    twk = None if tw is None else tw.reshape(-1)
    keep = torch.ones(n, dtype=torch.bool) if probs else yk != -100
    if shift:
        logits, yk = logits[:-1], yk[1:]
        twk = None if twk is None else twk[1:]
        keep = (yk != -100) & (torch.arange(1, n) % y.shape[1] != 0)
        yk = torch.where(keep, yk, -100)
    r = keep.double() if twk is None else torch.where(keep, twk, 0.0)
    rows = ce_rows(logits, yk, cw, -100, label_smoothing, z_loss, softcap) * r
    final = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    lse = torch.where(keep, torch.logsumexp(final, -1), 0.0)
    logp = torch.log_softmax(final, -1)
    entropy = torch.where(keep, -(logp.exp() * logp).sum(-1), 0.0)
    predicted = torch.where(keep, final.argmax(-1), -100)
    truth = yk.argmax(-1) if probs else yk
    hit = ((predicted == truth) & keep).double()
    cls = torch.ones(()) if cw is None or probs else cw[yk.clamp(min=0)]
    den = (r * cls).sum()
    zl = torch.where(keep, z_loss * lse * lse, 0.0) * r

    def per_row(v, fill=0):
        if shift:
            v = torch.cat([v, torch.full((1,), fill, dtype=v.dtype)])
        return v.reshape(batch)

    if reduction == "none":
        loss, acc, zl_out = per_row(rows), per_row(hit), per_row(zl)
    elif reduction == "sum":
        loss, acc, zl_out = rows.sum(), (hit * r * cls).sum(), zl.sum()
    else:
        loss, acc, zl_out = rows.sum() / den, (hit * r * cls).sum() / den, zl.sum() / den
    aux = dict(
        z_loss=zl_out, lse=per_row(lse), accuracy=acc, predicted=per_row(predicted, -100), entropy=per_row(entropy)
    )
    return loss, {k: v.detach() for k, v in aux.items()}


def run_both(
    backend,
    x,
    w,
    b,
    y,
    cw,
    *,
    reduction,
    tw=None,
    shift=False,
    scale=None,
    aux=True,
    chunk_size=4,
    label_smoothing=0.1,
    dtype=None,
    **kw,
):
    """Ours and the reference's loss, gradients (input, weight, bias, tensor scale) and aux."""
    dt = dtype or dtype_for(backend)
    ours = [t.to(dt).clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    s_ours = scale.to(dt).clone().requires_grad_() if isinstance(scale, torch.Tensor) else scale
    result = ls.linear_cross_entropy(
        ours[0],
        ours[1],
        y.to(dt) if y.is_floating_point() else y,
        linear_bias=ours[2] if b is not None else None,
        weight=None if cw is None else cw.to(dt),
        reduction=reduction,
        token_weight=None if tw is None else tw.to(dt),
        shift=shift,
        logit_scale=s_ours,
        return_aux=aux,
        chunk_size=chunk_size,
        backend=backend,
        label_smoothing=label_smoothing,
        **kw,
    )
    out, got = result if aux is not False else (result, {})
    theirs = [t.detach().double().requires_grad_() for t in ours]
    s_ref = s_ours.detach().double().requires_grad_() if isinstance(scale, torch.Tensor) else scale
    ref, want = reference(
        theirs[0],
        theirs[1],
        theirs[2] if b is not None else None,
        y.to(dt).double() if y.is_floating_point() else y,
        None if cw is None else cw.to(dt).double(),
        reduction=reduction,
        tw=None if tw is None else tw.to(dt).double(),
        shift=shift,
        scale=s_ref,
        label_smoothing=label_smoothing,
        **kw,
    )
    g = torch.rand(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    leaves = ours + ([s_ours] if isinstance(scale, torch.Tensor) else [])
    ref_leaves = theirs + ([s_ref] if isinstance(scale, torch.Tensor) else [])
    grads = torch.autograd.grad(out, leaves, g.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    return (out, grads, got), (ref, ref_grads, want)


def compare(got, want, backend, aux_names, what="", tol=None, sum_tol=None):
    (out, grads, aux), (ref, ref_grads, ref_aux) = got, want
    tol = tol or tolerance(backend)
    assert out.shape == ref.shape, what
    torch.testing.assert_close(out.double(), ref.detach(), **tol, msg=lambda m: f"{what} loss: {m}")
    names = ("input", "linear_weight", "linear_bias", "logit_scale")
    for a, b_, name in zip(grads, ref_grads, names, strict=False):
        # Sums over rows (weight, bias, scale) round in float32 at ~1e-7 of the summed terms' size.
        t = (
            tol
            if backend == "chunked" or name == "input"
            else dict(rtol=1e-5, atol=2e-5 * max(1.0, float(b_.abs().max())))
        )
        torch.testing.assert_close(a.double(), b_, **t, msg=lambda m, n=name: f"{what} d {n}: {m}")
    assert set(aux) == set(aux_names), what
    for name in aux_names:
        assert not aux[name].requires_grad
        if name == "predicted":
            assert aux[name].dtype == torch.int64 and torch.equal(aux[name], ref_aux[name]), f"{what} predicted"
        else:
            torch.testing.assert_close(
                aux[name].double(), ref_aux[name], **tol, msg=lambda m, n=name: f"{what} {n}: {m}"
            )


REDUCTIONS = ("none", "sum", "mean")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", ["token_weight", "shift", "scale_tensor", "scale_float", "aux"])
def test_each_option_alone(backend, reduction, option):
    x, w, b, y, cw, tw = make_seq()
    kw = dict(
        token_weight=dict(tw=tw),
        shift=dict(shift=True),
        scale_tensor=dict(scale=torch.tensor(0.7, dtype=torch.float64)),
        scale_float=dict(scale=-1.3),
        aux=dict(aux=True, z_loss=1e-2),
    )[option]
    aux = kw.pop("aux", False)
    got, want = run_both(backend, x, w, b, y, cw, reduction=reduction, aux=aux, **kw)
    compare(got, want, backend, AUX if aux else (), option)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,bias", [(True, True), (False, False)])
def test_all_options_together(backend, reduction, weighted, bias):
    x, w, b, y, cw, tw = make_seq(weighted=weighted, bias=bias)
    s = torch.tensor(0.8, dtype=torch.float64)
    got, want = run_both(
        backend, x, w, b, y, cw, reduction=reduction, tw=tw, shift=True, scale=s, z_loss=1e-2, softcap=3.0
    )
    compare(got, want, backend, AUX, "all")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_with_token_weight_scale_and_aux(reduction):
    x, w, b, y, cw, tw = make_seq(probs=True)
    got, want = run_both(
        "chunked", x, w, b, y, cw, reduction=reduction, tw=tw, scale=torch.tensor(1.2, dtype=torch.float64)
    )
    compare(got, want, "chunked", AUX, "probs")


@pytest.mark.parametrize("name", AUX)
def test_each_aux_item_alone(name):
    x, w, b, y, cw, tw = make_seq()
    got, want = run_both("chunked", x, w, b, y, cw, reduction="mean", tw=tw, shift=True, aux=(name,), z_loss=1e-2)
    compare(got, want, "chunked", (name,), name)


def test_reference_backend_with_options():
    # The materialised path (cross_entropy's reference with the same options) agrees with the fused one.
    x, w, b, y, cw, tw = make_seq()
    s = torch.tensor(0.8, dtype=torch.float64)
    for reduction in REDUCTIONS:
        got, want = run_both(
            "reference", x, w, b, y, cw, reduction=reduction, tw=tw, shift=True, scale=s, z_loss=1e-2, softcap=3.0
        )
        compare(got, want, "chunked", AUX, f"reference {reduction}")


def test_sequence_ends_and_ignored_rows_cannot_leak():
    # Hidden states so large that their logits overflow to inf, on rows that score nothing: the last
    # position of each sequence under shift, and an ignored row. Nothing of them reaches the loss or
    # the weight gradient; their input-gradient rows are exactly 0.
    x, w, b, y, cw, tw = make_seq()
    big = x.clone()
    big[:, -1] = 1e308
    big[0, 1] = 1e308  # scored against y[0, 2] = -100
    kw = dict(weight=cw, token_weight=tw, shift=True, logit_scale=torch.tensor(0.9, dtype=torch.float64), chunk_size=4)
    res = []
    for inp in (x, big):
        leaves = [inp.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
        s = kw["logit_scale"].clone().requires_grad_()
        loss, aux = ls.linear_cross_entropy(
            leaves[0], leaves[1], y, linear_bias=leaves[2], **{**kw, "logit_scale": s}, return_aux=True
        )
        loss.backward()
        res.append((loss, [t.grad for t in leaves] + [s.grad], aux))
    (l0, g0, _), (l1, g1, a1) = res
    assert torch.isfinite(l1) and all(torch.isfinite(g).all() for g in g1)
    torch.testing.assert_close(l1, l0, **F64)
    for a, b_ in zip(g0[1:], g1[1:], strict=True):
        torch.testing.assert_close(b_, a, **F64)
    assert (g1[0][:, -1] == 0).all() and (g1[0][0, 1] == 0).all()
    torch.testing.assert_close(g1[0][0, 2:], g0[0][0, 2:], **F64)
    for name in ("lse", "entropy"):
        assert (a1[name][:, -1] == 0).all() and a1[name][0, 1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_holds_more_than_one_chunk_of_logits_with_every_option(backend):
    from torch.utils._python_dispatch import TorchDispatchMode

    dt = dtype_for(backend)
    x, w, b, y, cw, tw = (t.to(dt) if t.is_floating_point() else t for t in make_seq(batch=(4, 16)))
    largest = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == C:
                    largest.append(t.numel() // C)
            return out

    for reduction in REDUCTIONS:
        leaves = [x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
        s = torch.tensor(0.8, dtype=dt, requires_grad=True)
        largest.clear()
        with Record():
            loss, _ = ls.linear_cross_entropy(
                leaves[0], leaves[1], y, linear_bias=leaves[2], weight=cw, reduction=reduction,
                token_weight=tw, shift=True, logit_scale=s, return_aux=True, z_loss=1e-3, softcap=5.0,
                label_smoothing=0.1, chunk_size=8, backend=backend,
            )  # fmt: skip
            loss.sum().backward()
        # (C,) vectors (class weights, the bias and its gradient) count as one row.
        assert largest and max(largest) <= 8, (reduction, max(largest))


def test_option_errors():
    x, w, _, y, _, tw = make_seq()
    with pytest.raises(ValueError, match="backend='torch' supports none of"):
        ls.linear_cross_entropy(x, w, y, shift=True, backend="torch")
    with pytest.raises(ValueError, match="shift"):
        ls.linear_cross_entropy(x[0], w, y[0], shift=True)
    with pytest.raises(ValueError, match="token_weight"):
        ls.linear_cross_entropy(x, w, y, token_weight=torch.ones(4))
    with pytest.raises(ValueError, match="token_weight"):
        ls.linear_cross_entropy(x, w, y, token_weight=tw.requires_grad_(), backend="chunked")
    with pytest.raises(ValueError, match="return_aux"):
        ls.linear_cross_entropy(x, w, y, return_aux=("lse", "perplexity"))
    # token_weight requiring grad goes to the reference under "auto", which differentiates it.
    tw = tw.detach().nan_to_num().requires_grad_()
    loss = ls.linear_cross_entropy(x, w, y, token_weight=tw)
    (d,) = torch.autograd.grad(loss, tw)
    assert torch.isfinite(d).all() and (d != 0).any()


def test_module_holds_the_options_and_learns_a_scale_parameter():
    x, w, b, y, cw, tw = make_seq()
    tw = tw.nan_to_num()
    s = torch.nn.Parameter(torch.tensor(0.9, dtype=torch.float64))
    loss_fn = ls.LinearCrossEntropyLoss(
        cw, label_smoothing=0.1, shift=True, logit_scale=s, return_aux=("accuracy",), chunk_size=4
    )
    assert list(loss_fn.parameters()) == [s] and "shift=True" in repr(loss_fn)
    loss, aux = loss_fn(x, w, y, b, token_weight=tw)
    loss.backward()
    want, want_aux = ls.linear_cross_entropy(
        x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, shift=True, token_weight=tw,
        logit_scale=s.detach().clone().requires_grad_(), return_aux=("accuracy",), chunk_size=4,
    )  # fmt: skip
    torch.testing.assert_close(loss, want, **F64)
    assert set(aux) == {"accuracy"} and torch.equal(aux["accuracy"], want_aux["accuracy"])
    assert s.grad is not None and s.grad != 0
    plain = ls.LinearCrossEntropyLoss(logit_scale=2.0)
    torch.testing.assert_close(plain(x, w, y.clamp(min=0)), ls.linear_cross_entropy(x * 2, w, y.clamp(min=0)), **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_with_every_option(dtype):
    # The reference runs in float64 on the same (rounded) operands. float32: a few roundings at 6e-8
    # relative of sums of a few dozen terms of size <= ~10: rtol 1e-5, atol 1e-5 (observed <= 2e-6).
    # bfloat16: the chunk's logits are rounded to bf16 (2**-9 relative of |logits| <= ~5: ~0.01) before
    # the float32 loss, and a row's loss and gradient move by about that much: atol 2e-2, rtol 2e-2
    # (test_linear.py's bf16 tolerance), 5e-2 on the weight, bias and scale gradients, sums over 14
    # rows of such errors of both signs (observed <= 0.0095 and <= 0.0084).
    x, w, b, y, cw, tw = make_seq()
    s = torch.tensor(0.8, dtype=torch.float64)
    if dtype == torch.float32:
        tol, sums = dict(rtol=1e-5, atol=1e-5), dict(rtol=1e-5, atol=1e-5)
    else:
        tol, sums = dict(rtol=2e-2, atol=2e-2), dict(rtol=2e-2, atol=5e-2)
    for reduction in REDUCTIONS:
        got, want = run_both(
            "chunked", x, w, b, y, cw, reduction=reduction, tw=tw, shift=True, scale=s, z_loss=1e-2, softcap=3.0,
            dtype=dtype, aux=("lse", "entropy", "z_loss"),
        )  # fmt: skip
        compare(got, want, "chunked", ("lse", "entropy", "z_loss"), f"{dtype} {reduction}", tol=tol, sum_tol=sums)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_only_the_logit_scale_requires_grad(backend, reduction):
    # No operand wants a gradient: the kernel still runs its gradient pass for the d/ds row sums, and
    # no matmul of the backward is done.
    x, w, b, y, cw, tw = make_seq()
    dt = dtype_for(backend)
    s = torch.tensor(0.7, dtype=dt, requires_grad=True)
    out = ls.linear_cross_entropy(
        x.to(dt), w.to(dt), y, linear_bias=b.to(dt), weight=cw.to(dt), token_weight=tw.to(dt), shift=True,
        logit_scale=s, reduction=reduction, label_smoothing=0.1, chunk_size=4, backend=backend,
    )  # fmt: skip
    g = torch.rand(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    (ds,) = torch.autograd.grad(out, s, g.to(dt))
    s_ref = s.detach().double().requires_grad_()
    ref, _ = reference(
        x.to(dt).double(), w.to(dt).double(), b.to(dt).double(), y, cw.to(dt).double(), reduction=reduction,
        label_smoothing=0.1, tw=tw.to(dt).double(), shift=True, scale=s_ref,
    )  # fmt: skip
    (want,) = torch.autograd.grad(ref, s_ref, g)
    tol = tolerance(backend) if backend == "chunked" else dict(rtol=1e-5, atol=2e-5 * max(1.0, float(want.abs())))
    torch.testing.assert_close(ds.double(), want, **tol)
