"""The language-model options of cross_entropy: token_weight, shift, logit_scale and return_aux.

The reference is checked against torch where torch can express the option (a token weight is
reduction="none" rows times the weights; shift is torch on explicitly shifted copies; a logit scale is
torch on s * x; the aux items are torch.logsumexp / argmax / the softmax's entropy). Every backend is then
checked against the reference in float64 (Triton in float32 under the interpreter), forward and
gradients (input and a tensor logit_scale), grad_output != 1, every reduction.
"""

import importlib.util
import itertools

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import _options as O
from labelsmooth import functional as LF
from labelsmooth import reference
from labelsmooth.kernels import chunked

HAS_TRITON = importlib.util.find_spec("triton") is not None
FUSED = ["chunked"] + (["triton"] if HAS_TRITON else [])
REDUCTIONS = ["none", "sum", "mean"]


def lm_case(b=3, t=7, c=131, *, seed=0, ignore_index=None, weighted=False, dtype=torch.float64, scale=3.0):
    """(logits (B, T, C), labels (B, T), class weights, token weights (B, T)) in float64 before ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, t, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, (b, t), generator=g)
    if ignore_index is not None:
        y.view(-1)[:: max(1, y.numel() // 4)] = ignore_index
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    tw = (torch.rand(b, t, generator=g, dtype=torch.float64) + 0.25).to(dtype)
    return x, y, w, tw


def run(fn, x, scale=None, go_seed=1):
    """fn(x, s) -> loss or (loss, aux); returns (loss, aux, grad_x, grad_s) for a random grad_output."""
    x = x.detach().clone().requires_grad_(True)
    s = None if scale is None else scale.detach().clone().requires_grad_(True)
    out = fn(x, s)
    loss, aux = out if isinstance(out, tuple) else (out, None)
    go = torch.rand(loss.shape, generator=torch.Generator().manual_seed(go_seed), dtype=torch.float64) + 0.5
    inputs = [x] + ([s] if s is not None else [])
    grads = torch.autograd.grad(loss, inputs, go.to(loss.dtype))
    return loss.detach(), aux, grads[0], (grads[1] if s is not None else None)


def kwargs(ignore_index):
    return {} if ignore_index is None else {"ignore_index": ignore_index}


# ---- the reference against torch ------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 4])
def test_reference_token_weight_is_torch_rows_times_weights(reduction, weighted, ignore_index):
    x, y, w, tw = lm_case(ignore_index=ignore_index, weighted=weighted)
    x2, y2, tw2 = x.reshape(-1, x.shape[-1]), y.reshape(-1), tw.reshape(-1).requires_grad_(True)
    ii = -100 if ignore_index is None else ignore_index

    def torch_loss(v):
        rows = F.cross_entropy(v, y2, w, reduction="none", label_smoothing=0.1, ignore_index=ii) * tw2
        if reduction == "none":
            return rows
        if reduction == "sum":
            return rows.sum()
        keep = y2 != ii
        wy = torch.ones_like(tw2) if w is None else w[torch.where(keep, y2, 0)]
        return rows.sum() / (tw2 * wy * keep).sum()

    def ours(v):
        return reference.cross_entropy(v, y2, w, ii, 0.1, reduction=reduction, token_weight=tw2)

    xa = x2.clone().requires_grad_(True)
    want = torch_loss(xa)
    go = torch.rand(want.shape, dtype=torch.float64) + 0.5
    want_g = torch.autograd.grad(want, [xa, tw2], go)
    xb = x2.clone().requires_grad_(True)
    got = ours(xb)
    got_g = torch.autograd.grad(got, [xb, tw2], go)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_g, want_g, strict=True):  # input and token_weight gradients
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [None, 4])
def test_reference_shift_is_torch_on_shifted_copies(reduction, ignore_index):
    x, y, w, _ = lm_case(ignore_index=ignore_index, weighted=True)
    ii = -100 if ignore_index is None else ignore_index
    c = x.shape[-1]
    want, _, want_g, _ = run(
        lambda v, s: F.cross_entropy(
            v[:, :-1].reshape(-1, c), y[:, 1:].reshape(-1), w, reduction=reduction, label_smoothing=0.2, ignore_index=ii
        ),
        x,
    )

    def ours(v, s):
        out = reference.cross_entropy(
            v.reshape(-1, c), y.reshape(-1), w, ii, 0.2, reduction=reduction, seq_len=y.shape[1]
        )
        if reduction != "none":
            return out
        assert (out.reshape(y.shape)[:, -1] == 0).all()
        return out.reshape(y.shape)[:, :-1].reshape(-1)

    got, _, got_g, _ = run(ours, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12)
    assert got_g[:, -1].abs().max() == 0  # the last position has no label after it


def test_reference_shift_last_position_is_zero_and_not_counted():
    x, y, _, _ = lm_case()
    rows = reference.cross_entropy(x.reshape(-1, x.shape[-1]), y.reshape(-1), reduction="none", seq_len=y.shape[1])
    assert (rows.reshape(y.shape)[:, -1] == 0).all() and (rows.reshape(y.shape)[:, :-1] > 0).all()
    mean = reference.cross_entropy(x.reshape(-1, x.shape[-1]), y.reshape(-1), seq_len=y.shape[1])
    torch.testing.assert_close(mean, rows.sum() / (y.shape[0] * (y.shape[1] - 1)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_reference_logit_scale_is_torch_on_scaled_logits(reduction, softcap):
    x, y, w, _ = lm_case(weighted=True, ignore_index=2)
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    s0 = torch.tensor(0.37, dtype=torch.float64)

    def torch_loss(v, s):
        z = v * s
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return F.cross_entropy(z, y2, w, reduction=reduction, label_smoothing=0.1, ignore_index=2)

    want = run(torch_loss, x2, s0)
    got = run(
        lambda v, s: reference.cross_entropy(v, y2, w, 2, 0.1, 0.0, softcap, reduction=reduction, logit_scale=s),
        x2,
        s0,
    )
    for a, b in zip((got[0], got[2], got[3]), (want[0], want[2], want[3]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a float scale gives the same numbers as the tensor
    as_float = reference.cross_entropy(x2, y2, w, 2, 0.1, 0.0, softcap, reduction=reduction, logit_scale=0.37)
    torch.testing.assert_close(as_float, want[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_aux_items_are_torch_statistics(reduction, weighted):
    x, y, w, tw = lm_case(ignore_index=5, weighted=weighted, scale=6.0)
    x2, y2, r = x.reshape(-1, x.shape[-1]), y.reshape(-1), tw.reshape(-1)
    z = 1e-3
    _, aux = reference.cross_entropy(
        x2, y2, w, 5, 0.1, z, reduction=reduction, token_weight=r, logit_scale=1.3, aux=True
    )
    xs = x2 * 1.3
    keep = y2 != 5
    lse = torch.logsumexp(xs, dim=1)
    entropy = -(F.softmax(xs, dim=1) * F.log_softmax(xs, dim=1)).sum(dim=1)
    torch.testing.assert_close(aux["lse"], torch.where(keep, lse, 0.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aux["entropy"], torch.where(keep, entropy, 0.0), rtol=1e-10, atol=1e-12)
    assert torch.equal(aux["predicted"], torch.where(keep, xs.argmax(dim=1), 5))
    wy = torch.ones_like(r) if w is None else w[torch.where(keep, y2, 0)]
    denom = (keep * r * wy).sum()
    zrows = torch.where(keep, z * lse**2 * r, 0.0)
    correct = (xs.argmax(dim=1) == y2) & keep
    if reduction == "none":
        torch.testing.assert_close(aux["z_loss"], zrows, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(aux["accuracy"], correct.double())
    else:
        div = denom if reduction == "mean" else 1.0
        torch.testing.assert_close(aux["z_loss"], zrows.sum() / div, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(aux["accuracy"], (correct * r * wy).sum() / div, rtol=1e-12, atol=1e-12)


def test_reference_probability_targets_token_weight_mean_divides_by_weight_sum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 17, generator=g, dtype=torch.float64)
    t = torch.rand(9, 17, generator=g, dtype=torch.float64)
    t = t / t.sum(1, keepdim=True)
    r = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    got = reference.cross_entropy(x, t, None, -100, 0.1, token_weight=r)
    want = (F.cross_entropy(x, t, reduction="none", label_smoothing=0.1) * r).sum() / r.sum()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---- every backend against the reference ---------------------------------------------------------------

# (token_weight, shift, logit_scale, return_aux): each alone, and all together
OPTIONS = [
    (True, False, None, None),
    (False, True, None, None),
    (False, False, "tensor", None),
    (False, False, 0.6, None),
    (False, False, None, True),
    (True, True, "tensor", True),
]


def call(backend, x, y, w, tw, opts, reduction, ignore_index, dtype, s, **extra):
    token_weight, shift, scale, aux = opts
    return ls.cross_entropy(
        x.to(dtype).transpose(1, 2),  # an LM's (B, T, V) logits in torch's layout, by a view
        y,
        None if w is None else w.to(dtype),
        reduction=reduction,
        label_smoothing=0.1,
        z_loss=1e-3,
        backend=backend,
        token_weight=tw.to(dtype) if token_weight else None,
        shift=shift,
        logit_scale=s if scale == "tensor" else scale,
        return_aux=aux if aux else False,
        **kwargs(ignore_index),
        **extra,
    )


def check_against_reference(backend, opts, reduction, weighted, ignore_index, dtype, tol, shape=(3, 7, 131), **extra):
    x, y, w, tw = lm_case(*shape, ignore_index=ignore_index, weighted=weighted)
    s0 = torch.tensor(0.8, dtype=torch.float64) if opts[2] == "tensor" else None
    want = run(lambda v, s: call("reference", v, y, w, tw, opts, reduction, ignore_index, torch.float64, s), x, s0)
    got = run(
        lambda v, s: call(backend, v.to(dtype), y, w, tw, opts, reduction, ignore_index, dtype, s, **extra),
        x.to(dtype),
        None if s0 is None else s0.to(dtype),
    )
    assert got[0].shape == want[0].shape and got[0].dtype == dtype
    torch.testing.assert_close(got[0].double(), want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(got[2].double(), want[2], rtol=tol, atol=tol)
    if s0 is not None:
        torch.testing.assert_close(got[3].double(), want[3], rtol=tol, atol=tol * want[3].abs().item())
    if opts[3]:
        assert list(got[1]) == list(want[1]) == list(O.AUX_NAMES)
        for k in want[1]:
            assert got[1][k].shape == want[1][k].shape and not got[1][k].requires_grad, k
            if k == "predicted":
                assert torch.equal(got[1][k], want[1][k])
            else:
                torch.testing.assert_close(got[1][k].double(), want[1][k].double(), rtol=tol, atol=tol, msg=k)
    return got


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(map(str, o)))
@pytest.mark.parametrize(
    "reduction,weighted,ignore_index",
    [("none", False, None), ("sum", True, 4), ("mean", False, 4), ("mean", True, None), ("mean", True, 4)],
)
def test_chunked_matches_reference_float64(opts, reduction, weighted, ignore_index):
    check_against_reference("chunked", opts, reduction, weighted, ignore_index, torch.float64, 1e-10)


@pytest.mark.parametrize("block_rows", [1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_all_options_small_blocks_and_masked_path(block_rows, masked, monkeypatch):
    # Blocks that split sequences, and the accelerator's path (no host reads), on CPU.
    real = chunked.fused_ce
    monkeypatch.setattr(chunked, "fused_ce", lambda *a, **k: real(*a, block_rows=block_rows, masked=masked, **k))
    for reduction in REDUCTIONS:
        check_against_reference("chunked", OPTIONS[-1], reduction, True, 4, torch.float64, 1e-10, shape=(2, 5, 37))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(map(str, o)))
@pytest.mark.parametrize(
    "reduction,weighted,ignore_index", [("none", True, 4), ("mean", True, 4), ("sum", False, None)]
)
def test_triton_matches_reference(opts, reduction, weighted, ignore_index):
    # float32 kernels: row sums of ~40 terms, a few float32 ulps relative to the loss scale.
    check_against_reference("triton", opts, reduction, weighted, ignore_index, torch.float32, 2e-5, shape=(2, 5, 37))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_all_options_against_float64(backend, dtype):
    x64, y, w, tw = lm_case(2, 6, 211, ignore_index=4, weighted=True)
    x = x64.to(dtype)  # the same rounded logits for both sides
    opts = OPTIONS[-1]
    s0 = torch.tensor(0.8, dtype=torch.float64)
    for reduction in REDUCTIONS:
        want = run(
            lambda v, s, r=reduction: call("reference", v, y, w, tw, opts, r, 4, torch.float64, s), x.double(), s0
        )
        got = run(lambda v, s, r=reduction: call(backend, v, y, w, tw, opts, r, 4, dtype, s), x, s0.to(dtype))
        # Computed in float32 from the rounded inputs: float32 accumulation (~1e-6 relative) for float32;
        # for bf16 the loss and each gradient entry are rounded once to bf16 (half an ulp, 2^-8
        # relative), and token_weight/scale/class weights are bf16-rounded too (another 2^-8 each).
        tol = 2e-5 if dtype == torch.float32 else 4 * 2.0**-8
        torch.testing.assert_close(got[0].double(), want[0], rtol=tol, atol=tol * want[0].abs().max().item())
        torch.testing.assert_close(got[2].double(), want[2], rtol=tol, atol=tol * want[2].abs().max().item())
        torch.testing.assert_close(got[3].double(), want[3], rtol=tol, atol=tol * want[3].abs().item())
        for k in ("lse", "entropy"):
            torch.testing.assert_close(got[1][k].double(), want[1][k], rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_with_token_weight_scale_and_aux(backend, reduction):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 4, 23, generator=g, dtype=torch.float64) * 3  # (N, C, d1)
    t = torch.rand(6, 4, 23, generator=g, dtype=torch.float64)
    t = t / t.sum(1, keepdim=True)
    tw = torch.rand(6, 23, generator=g, dtype=torch.float64) + 0.2
    dtype = torch.float32 if backend == "triton" else torch.float64
    s0 = torch.tensor(1.4, dtype=torch.float64)

    def fn(name, dt):
        return lambda v, s: ls.cross_entropy(
            v.to(dt), t.to(dt), reduction=reduction, label_smoothing=0.2, backend=name,
            token_weight=tw.to(dt), logit_scale=s, return_aux=True,
        )  # fmt: skip

    want = run(fn("reference", torch.float64), x, s0)
    got = run(fn(backend, dtype), x.to(dtype), s0.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for a, b in zip((got[0], got[2], got[3]), (want[0], want[2], want[3]), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)
    for k in O.AUX_NAMES:
        torch.testing.assert_close(got[1][k].double(), want[1][k].double(), rtol=tol, atol=tol, msg=k)
    # mean divides by the token-weight sum (torch divides by N, the all-ones case)
    if reduction == "mean":
        rows = F.cross_entropy(x * 1.4, t, reduction="none", label_smoothing=0.2)
        torch.testing.assert_close(want[0], (rows * tw).sum() / tw.sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_only_the_logit_scale_wants_a_gradient(backend):
    x, y, _, _ = lm_case(2, 5, 37)
    dtype = torch.float32 if backend == "triton" else torch.float64
    s = torch.tensor(0.9, dtype=dtype, requires_grad=True)
    loss = ls.cross_entropy(x.to(dtype).transpose(1, 2), y, backend=backend, logit_scale=s, shift=True)
    (gs,) = torch.autograd.grad(loss, s)
    s64 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    want = F.cross_entropy((x[:, :-1] * s64).reshape(-1, 37), y[:, 1:].reshape(-1))
    (want_gs,) = torch.autograd.grad(want, s64)
    torch.testing.assert_close(gs.double(), want_gs, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_inplace_with_shift_and_scale_gives_the_same_gradient(backend):
    x, y, _, tw = lm_case(2, 6, 53, dtype=torch.float32)
    kw = dict(backend=backend, shift=True, token_weight=tw, reduction="sum", label_smoothing=0.1)
    a = x.clone().requires_grad_(True)
    sa = torch.tensor(1.2, requires_grad=True)
    ls.cross_entropy(a.transpose(1, 2), y, logit_scale=sa, **kw).backward()
    b = x.clone().requires_grad_(True)
    sb = torch.tensor(1.2, requires_grad=True)
    ls.cross_entropy((b * 1.0).transpose(1, 2), y, logit_scale=sb, inplace=True, **kw).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    torch.testing.assert_close(sa.grad, sb.grad, rtol=1e-6, atol=1e-6)


# The reference is plain autograd: NaN logits on an ignored row reach its gradient there as they do in
# torch's own loss (0 times NaN in log_softmax's backward), so it gets only the weights' part.
@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_nan_logits_at_sequence_ends_and_ignored_rows_do_not_leak(backend):
    x, y, _, tw = lm_case(3, 5, 37, dtype=torch.float32)
    y[1, 2] = -100
    if backend != "reference":
        x[:, -1] = float("nan")  # the last position of every sequence is never scored with shift
        x[1, 1] = float("inf")  # row (1, 1) is scored against y[1, 2], which is ignored
    tw[1, 2] = float("inf")  # ...and its weight, shifted onto row (1, 1), must not leak either
    # The Triton interpreter's argmax is numpy's, which raises on an all-NaN row (a sequence end here);
    # the compiled kernel has no such check, so under the interpreter the argmax items are left out.
    names = ("lse", "entropy", "z_loss") if backend == "triton" else O.AUX_NAMES
    for reduction in REDUCTIONS:
        v = x.clone().requires_grad_(True)
        s = torch.tensor(0.7, requires_grad=True)
        loss, aux = ls.cross_entropy(
            v.transpose(1, 2), y, backend=backend, shift=True, token_weight=tw, logit_scale=s,
            reduction=reduction, return_aux=names,
        )  # fmt: skip
        go = torch.full(loss.shape, float("inf")) if reduction == "none" else torch.ones(())
        if reduction == "none":
            go[:, :-1] = 1.0
            go[1, 1] = float("inf")
        loss.backward(go)
        assert torch.isfinite(loss).all(), reduction
        if reduction == "none":
            assert (loss[:, -1] == 0).all() and loss[1, 1] == 0
        assert torch.isfinite(v.grad).all() and (v.grad[:, -1] == 0).all() and (v.grad[1, 1] == 0).all()
        assert torch.isfinite(s.grad)
        assert (aux["lse"][:, -1] == 0).all() and aux["entropy"][1, 1] == 0
        assert all(torch.isfinite(v).all() for k, v in aux.items() if k != "predicted")
        if "predicted" in aux:
            assert (aux["predicted"][:, -1] == -100).all() and aux["predicted"][1, 1] == -100


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_reduction_none_with_shift_returns_the_target_shape(backend):
    x, y, _, _ = lm_case(2, 6, 11)
    rows = ls.cross_entropy(x.transpose(1, 2), y, reduction="none", shift=True, backend=backend)
    assert rows.shape == y.shape and (rows[:, -1] == 0).all()
    want = F.cross_entropy(x[:, :-1].transpose(1, 2), y[:, 1:], reduction="none")
    torch.testing.assert_close(rows[:, :-1], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("t", [1, 2])
def test_shift_short_and_empty_sequences(backend, t):
    x, y, _, _ = lm_case(3, t, 9)
    v = x.clone().requires_grad_(True)
    loss = ls.cross_entropy(v.transpose(1, 2), y, shift=True, backend=backend, reduction="sum")
    loss.backward()
    want = F.cross_entropy(x[:, :-1].transpose(1, 2), y[:, 1:], reduction="sum")
    torch.testing.assert_close(loss, want)
    assert (v.grad[:, -1] == 0).all()
    empty = torch.zeros(0, 9, t, dtype=torch.float64)
    out = ls.cross_entropy(empty, torch.zeros(0, t, dtype=torch.long), shift=True, backend=backend, reduction="none")
    assert out.shape == (0, t)


# ---- no copies, and nothing changes when the options are off --------------------------------------------


def test_shift_hands_the_kernel_views_of_the_inputs(monkeypatch):
    seen = []
    real = chunked.fused_ce

    def spy(logits, target, *a, **k):
        seen.append((logits.data_ptr(), logits.shape, target.data_ptr(), target.shape))
        return real(logits, target, *a, **k)

    monkeypatch.setattr(chunked, "fused_ce", spy)
    x, y, _, tw = lm_case(2, 6, 40, dtype=torch.float32)
    x.requires_grad_(True)
    ls.cross_entropy(x.transpose(1, 2), y, shift=True, token_weight=tw, backend="chunked").backward()
    (logits_ptr, logits_shape, target_ptr, target_shape) = seen[0]
    assert logits_ptr == x.data_ptr() and logits_shape == (11, 40)  # rows 0..N-2 of the input itself
    assert target_ptr == y.data_ptr() + y.element_size() and target_shape == (11,)  # labels[1:], a view


def test_options_off_leave_the_existing_path_unchanged(monkeypatch):
    calls = []
    real = chunked.fused_ce

    def spy(*a, **k):
        calls.append(sorted(k))
        return real(*a, **k)

    monkeypatch.setattr(chunked, "fused_ce", spy)
    x, y, w, _ = lm_case(2, 6, 40, ignore_index=3, weighted=True)
    for off in ({}, dict(token_weight=None, shift=False, logit_scale=None, return_aux=False), dict(logit_scale=1.0)):
        got = run(
            lambda v, s, off=off: ls.cross_entropy(v.transpose(1, 2), y, w, ignore_index=3, backend="chunked", **off), x
        )
        assert calls.pop() == ["grad_scale", "prior"]  # no new keyword reaches the kernel
        if not off:
            base = got
        torch.testing.assert_close(got[0], base[0], rtol=0, atol=0)
        torch.testing.assert_close(got[2], base[2], rtol=0, atol=0)
        assert got[1] is None


def test_auto_never_picks_torch_with_an_option_on():
    x, y, _, tw = lm_case(2, 4, 10)  # small: "auto" hands it to torch's kernel without options
    assert LF._resolve_backend("auto", x, y, None, plain=True) == "torch"
    for opt in (dict(token_weight=tw), dict(shift=True), dict(logit_scale=2.0), dict(return_aux=["lse"])):
        out = ls.cross_entropy(x.transpose(1, 2), y, **opt)
        loss = out[0] if isinstance(out, tuple) else out
        ref = ls.cross_entropy(x.transpose(1, 2), y, backend="reference", **opt)
        torch.testing.assert_close(loss, ref[0] if isinstance(ref, tuple) else ref)


def test_auto_differentiates_a_token_weight_that_requires_grad():
    x, y, _, tw = lm_case(2, 4, 10)
    tw.requires_grad_(True)
    loss = ls.cross_entropy(x.transpose(1, 2), y, token_weight=tw, reduction="sum")
    (g,) = torch.autograd.grad(loss, tw)
    torch.testing.assert_close(g, F.cross_entropy(x.transpose(1, 2), y, reduction="none"))


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt,name",
    [
        (dict(token_weight=torch.ones(2, 4)), "token_weight"),
        (dict(shift=True), "shift"),
        (dict(logit_scale=0.5), "logit_scale"),
        (dict(return_aux=True), "return_aux"),
    ],
)
def test_backend_torch_refuses_each_option_by_name(opt, name):
    x, y, _, _ = lm_case(2, 4, 10)
    with pytest.raises(ValueError, match=rf"backend='torch' supports none of .*token_weight.*; got {name}"):
        ls.cross_entropy(x.transpose(1, 2), y, backend="torch", **opt)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_backends_refuse_a_token_weight_that_requires_grad(backend):
    x, y, _, tw = lm_case(2, 4, 10, dtype=torch.float32)
    with pytest.raises(ValueError, match=rf"backend='{backend}' does not compute a gradient for token_weight"):
        ls.cross_entropy(x.transpose(1, 2), y, backend=backend, token_weight=tw.requires_grad_(True))


@pytest.mark.parametrize(
    "opt,error,match",
    [
        (dict(token_weight=torch.ones(3, 4)), ValueError, r"batch shape \(2, 4\) or shape \(8,\), got \(3, 4\)"),
        (dict(token_weight=torch.ones(2, 4, dtype=torch.long)), TypeError, "token_weight must be a floating-point"),
        (dict(token_weight=[1.0] * 8), TypeError, "token_weight must be None or a floating-point .*, got list"),
        (dict(token_weight=torch.ones(2, 4, device="meta")), ValueError, "token_weight is on meta but input is on cpu"),
        (dict(shift="yes"), TypeError, "shift must be a bool"),
        (dict(logit_scale=float("inf")), ValueError, "logit_scale must be a finite number, got inf"),
        (dict(logit_scale=True), TypeError, "logit_scale must be None, a float or a 0-d"),
        (dict(logit_scale=torch.ones(1)), TypeError, r"got a torch.float32 tensor of shape \(1,\)"),
        (dict(logit_scale=torch.tensor(2)), TypeError, "logit_scale must be a float or a 0-d floating-point tensor"),
        (dict(return_aux=["lse", "perplexity"]), ValueError, r"return_aux names must be from .*got 'perplexity'"),
        (dict(return_aux=3), TypeError, "return_aux must be a bool or an iterable of names"),
    ],
)  # fmt: skip
def test_option_argument_errors_name_the_argument_and_value(opt, error, match):
    x, y, _, _ = lm_case(2, 4, 10)
    with pytest.raises(error, match=match):
        ls.cross_entropy(x.transpose(1, 2), y, **opt)


def test_shift_needs_a_2d_index_target():
    x = torch.randn(6, 10)
    with pytest.raises(ValueError, match=r"shift=True needs a 2-D target of shape \(B, T\).*got shape \(6,\)"):
        ls.cross_entropy(x, torch.zeros(6, dtype=torch.long), shift=True)
    p = torch.rand(2, 10, 4)
    with pytest.raises(ValueError, match="shift=True needs class-index targets"):
        ls.cross_entropy(p, p.softmax(1), shift=True)


def test_label_smoothing_error_starts_with_torchs_wording():
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(x, y, label_smoothing=1.2)
    with pytest.raises(ValueError) as ours:
        ls.cross_entropy(x, y, label_smoothing=1.2)
    assert str(theirs.value) == "label_smoothing must be between 0.0 and 1.0. Got: 1.2"
    assert str(ours.value).startswith(str(theirs.value)) and "allow_negative" in str(ours.value)
    with pytest.raises(
        ValueError, match=r"^label_smoothing must be between 0\.0 and 1\.0\. Got: -0\.1 .*allow_negative=True"
    ):
        ls.cross_entropy(x, y, label_smoothing=-0.1)


# ---- the module and the shared helpers ------------------------------------------------------------------


def test_module_matches_the_function_and_learns_its_scale():
    x, y, w, tw = lm_case(2, 5, 17, weighted=True, ignore_index=3)
    scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    mod = ls.CrossEntropyLoss(w, ignore_index=3, label_smoothing=0.1, shift=True, logit_scale=scale, return_aux=["lse"])
    assert [n for n, _ in mod.named_parameters()] == ["logit_scale"]
    loss, aux = mod(x.transpose(1, 2), y, token_weight=tw)
    want, want_aux = ls.cross_entropy(
        x.transpose(1, 2), y, w, ignore_index=3, label_smoothing=0.1, shift=True, logit_scale=scale,
        token_weight=tw, return_aux=["lse"], backend="reference",
    )  # fmt: skip
    torch.testing.assert_close(loss, want)
    assert list(aux) == ["lse"]
    torch.testing.assert_close(aux["lse"], want_aux["lse"])
    loss.backward()
    assert scale.grad is not None and scale.grad != 0
    assert "shift=True" in repr(mod) and "return_aux=('lse',)" in repr(mod)
    buffered = ls.CrossEntropyLoss(logit_scale=torch.tensor(2.0))
    assert "logit_scale" in buffered.state_dict()


def test_return_aux_subset_and_empty():
    x, y, _, _ = lm_case(2, 4, 10)
    loss, aux = ls.cross_entropy(x.transpose(1, 2), y, return_aux=("entropy", "predicted"), backend="chunked")
    assert list(aux) == ["predicted", "entropy"] and aux["predicted"].dtype == torch.int64
    loss2, aux2 = ls.cross_entropy(x.transpose(1, 2), y, return_aux=(), backend="chunked")
    assert aux2 == {}
    torch.testing.assert_close(loss, loss2)
    _, aux3 = ls.cross_entropy(x.transpose(1, 2), y, return_aux="z_loss", backend="chunked")
    assert list(aux3) == ["z_loss"] and aux3["z_loss"] == 0  # z_loss=0: zeros, no lse computed


@pytest.mark.parametrize("n,t", [(12, 4), (7, 3), (1, 1)])
def test_row_weights_and_sequence_ends(n, t):
    r = O.row_weights(torch.arange(n, dtype=torch.float64) + 1, n, t, torch.float64, torch.device("cpu"))
    want = [0.0 if (i + 1) % t == 0 else float(i + 2) for i in range(n - 1)]
    assert r.tolist() == want
    g = torch.ones(n, 3)
    O.zero_sequence_ends(g, t)
    assert g[:, 0].tolist() == [0.0 if (i + 1) % t == 0 else 1.0 for i in range(n)]
    for offset, rows in itertools.product(range(t), [1, 2, 5]):
        block = torch.ones(rows)
        O.zero_sequence_ends(block, t, offset)
        assert block.tolist() == [0.0 if (offset + i + 1) % t == 0 else 1.0 for i in range(rows)]


def test_mean_denominator_generalises_torchs_rule():
    y = torch.tensor([0, 2, -100, 1])
    w = torch.tensor([0.5, 2.0, 4.0])
    r = torch.tensor([1.0, 0.5, float("nan"), 3.0])
    assert O.mean_denominator(y, None, -100, torch.float32) == 3
    assert O.mean_denominator(y, w, -100, torch.float32) == 0.5 + 4.0 + 2.0
    assert O.mean_denominator(y, w, -100, torch.float32, r) == 0.5 + 2.0 + 6.0  # NaN on an ignored row stays out
    p = torch.rand(4, 3)
    assert O.mean_denominator(p, None, -100, torch.float32) == 4
    assert O.mean_denominator(p, None, -100, torch.float32, torch.tensor([1.0, 2.0, 3.0, 4.0])) == 10


@pytest.mark.parametrize("num_classes", [7, 511, 512, 1000, 3001])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_aux_with_masked_vocabulary_ties_and_wide_rows(num_classes, masked):
    # The chunked kernel finds the argmax per segment of 256 columns and sums U = sum exp(z) z from the
    # exp pass's operands: a -inf logit (a masked vocabulary entry) must give exp(z) z = 0 there, and ties
    # across segments and in the tail must give torch's first index, whatever the row width.
    g = torch.Generator().manual_seed(num_classes)
    x = torch.round(torch.randn(40, num_classes, generator=g) * 4) / 4  # coarse values: many ties
    x[:, ::3] = float("-inf")
    x[0] = 2.0  # a row of ties only
    x[1, -1] = 50.0  # the max in the tail (or the last segment)
    x[2, 0] = x[2, -1] = 50.0  # tied first and last
    y = torch.randint(0, num_classes, (40,), generator=g)
    y[y % 3 == 0] += 1
    y.clamp_(max=num_classes - 1)
    y[y % 3 == 0] = -100
    grad = torch.empty_like(x)
    # eps = 0: with smoothing a -inf logit makes the loss itself infinite (as torch's).
    rows, aux = chunked.fused_ce(
        x, y, None, -100, 0.0, 0.0, None, grad, aux={"lse", "predicted", "entropy"}, masked=masked, block_rows=16
    )
    x64 = x.double()
    p = torch.softmax(x64, dim=1)
    entropy = -(torch.where(p > 0, p * torch.log_softmax(x64, dim=1), torch.zeros_like(p))).sum(1)
    torch.testing.assert_close(aux["lse"].double(), torch.logsumexp(x64, dim=1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(aux["entropy"].double(), entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(aux["predicted"], x.argmax(dim=1))
    assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
