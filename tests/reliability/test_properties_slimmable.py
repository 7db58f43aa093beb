"""Property tests: slimmable_linear, slimmable_linear_multi and slimmable_conv2d (C++ CPU) against float64
references over random full and sliced widths (0 and full included), masks, dtypes, non-contiguous
inputs and a pre-existing ``weight.grad`` (the in-place slice accumulation must leave the rest untouched)."""
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from sparsecl.ops import slimmable_conv2d, slimmable_linear, slimmable_linear_multi

from .._ref import assert_close, float64_leaves, ref_conv2d, ref_linear
from ._strategies import (densities, dtypes, gen, lead_dims, maybe_noncontiguous, rand_mask, randn, seeds,
                          small_dims, tokens)


@st.composite
def widths(draw, full):
    return draw(st.one_of(st.sampled_from([0, full]), st.integers(0, full)))


def _leaf(t, preset, g):
    t = t.detach().clone().requires_grad_(True)
    if preset:
        t.grad = randn(g, *t.shape, dtype=t.dtype)
    return t, (t.grad.clone() if preset else torch.zeros_like(t, dtype=torch.float64))


def _check_slice(y, y_ref, gy, dtype, o, i, mask, xs, ws, bs):
    """y against its float64 reference, then the gradients: x's in full, w's and b's only on the [o, i] / [o]
    slice (at mask positions), added to whatever .grad they held before (w0, b0). xs = (x, x64),
    ws = (w, w0, w64 slice), bs = (b, b0, b64 slice) or Nones."""
    assert_close(y.detach(), y_ref.detach(), dtype)
    if not y.numel():
        return
    y_ref.backward(gy.double())
    assert_close(xs[0].grad, xs[1].grad, dtype)
    w, w0, wd = ws
    exp_w = w0.double().clone()
    exp_w[:o, :i] += wd.grad if mask is None else wd.grad.masked_fill(~mask[:o, :i], 0)
    assert_close(w.grad, exp_w, dtype)
    b, b0, bd = bs
    if b is not None:
        exp_b = b0.double().clone()
        exp_b[:o] += bd.grad
        assert_close(b.grad, exp_b, dtype)


@given(data=st.data(), T=tokens, lead=lead_dims, O=st.integers(0, 40), I=st.integers(0, 40), masked=st.booleans(),
       density=densities, dtype=dtypes, bias=st.booleans(), nc=st.booleans(), preset=st.booleans(), seed=seeds)
def test_slimmable_linear(data, T, lead, O, I, masked, density, dtype, bias, nc, preset, seed):
    o, i = data.draw(widths(O)), data.draw(widths(I))
    g = gen(seed)
    mask = rand_mask(g, (O, I), density) if masked else None
    w, w0 = _leaf(maybe_noncontiguous(randn(g, O, I, dtype=dtype), nc), preset, g)
    b, b0 = _leaf(randn(g, O, dtype=dtype), preset, g) if bias else (None, None)
    x = maybe_noncontiguous(randn(g, *lead, T, i, dtype=dtype), nc).requires_grad_(True)
    y = slimmable_linear(x, w, b, o, mask)
    gy = randn(g, *y.shape, dtype=dtype)
    y.backward(gy)
    wm = w.detach() if mask is None else torch.where(mask, w.detach(), 0)
    xd, wd, bd = float64_leaves(x, wm[:o, :i], None if b is None else b[:o])
    _check_slice(y, ref_linear(xd, wd, bd), gy, dtype, o, i, mask, (x, xd), (w, w0, wd), (b, b0, bd))


@given(data=st.data(), T=tokens, O=st.integers(0, 40), I=st.integers(0, 40), masked=st.booleans(),
       dtype=dtypes, bias=st.booleans(), nc=st.booleans(), seed=seeds)
def test_slimmable_linear_multi(data, T, O, I, masked, dtype, bias, nc, seed):
    n = data.draw(st.integers(1, 4))
    pairs = [(data.draw(widths(I)), data.draw(widths(O))) for _ in range(n)]
    g = gen(seed)
    mask = rand_mask(g, (O, I), 0.5) if masked else None
    w, _ = _leaf(randn(g, O, I, dtype=dtype), False, g)
    b, _ = _leaf(randn(g, O, dtype=dtype), False, g) if bias else (None, None)
    x = maybe_noncontiguous(randn(g, T, I, dtype=dtype), nc).requires_grad_(True)
    ys = slimmable_linear_multi(x, w, b, pairs, mask)
    gys = [randn(g, *y.shape, dtype=dtype) for y in ys]
    torch.autograd.backward(ys, gys)
    wm = w.detach() if mask is None else torch.where(mask, w.detach(), 0)
    xd, wd, bd = float64_leaves(x, wm, b)
    refs = [ref_linear(xd[:, :i], wd[:o, :i], None if bd is None else bd[:o]) for i, o in pairs]
    for y, r in zip(ys, refs):
        assert_close(y.detach(), r.detach(), dtype)
    torch.autograd.backward(refs, [gy.double() for gy in gys])
    assert_close(x.grad, xd.grad, dtype)
    assert_close(w.grad, wd.grad if mask is None else wd.grad.masked_fill(~mask, 0), dtype)
    if bias:
        assert_close(b.grad, bd.grad, dtype)


@given(data=st.data(), N=st.integers(0, 2), O=st.integers(0, 12), I=st.integers(0, 12), H=st.integers(1, 7),
       W=st.integers(1, 7), k=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.tuples(st.integers(1, 3),
       st.integers(1, 3)), padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), masked=st.booleans(), dtype=dtypes,
       bias=st.booleans(), channels_last=st.booleans(), preset=st.booleans(), seed=seeds)
@example(data=None, N=2, O=3, I=2, H=3, W=3, k=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), masked=False,
         dtype=torch.float32, bias=False, channels_last=False, preset=False, seed=0)  # in width 0: im2col error
def test_slimmable_conv2d(data, N, O, I, H, W, k, stride, padding, dilation, masked, dtype, bias, channels_last,
                          preset, seed):
    for d in range(2):
        assume((( H, W)[d] + 2 * padding[d] - dilation[d] * (k[d] - 1) - 1) // stride[d] + 1 >= 1)
    o, i = (data.draw(widths(O)), data.draw(widths(I))) if data is not None else (O, 0)
    g = gen(seed)
    mask = rand_mask(g, (O, I, *k), 0.5) if masked else None
    w, w0 = _leaf(randn(g, O, I, *k, dtype=dtype), preset, g)
    b, b0 = _leaf(randn(g, O, dtype=dtype), preset, g) if bias else (None, None)
    x = randn(g, N, i, H, W, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = slimmable_conv2d(x, w, b, o, stride, padding, dilation, mask)
    gy = randn(g, *y.shape, dtype=dtype)
    y.backward(gy)
    wm = w.detach() if mask is None else torch.where(mask, w.detach(), 0)
    xd, wd, bd = float64_leaves(x, wm[:o, :i], None if b is None else b[:o])
    _check_slice(y, ref_conv2d(xd, wd, bd, stride, padding, dilation), gy, dtype, o, i, mask, (x, xd), (w, w0, wd),
                 (b, b0, bd))
