"""Property tests: bsr_linear, csr_linear, masked_linear (+ dense grad) on the C++ CPU kernels against
float64 references, over random shapes (0/1/odd, non-multiples of B), leading dims, layouts, densities
(0 and 1 included), dtypes and non-contiguous inputs. Forward and every gradient are checked."""
import math

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_linear, csr_linear, masked_linear, masked_linear_dense_grad

from .._ref import assert_close, assert_grads_close, float64_leaves, ref_linear
from ._strategies import (any_float_dtypes, block_sizes, densities, dims, dtypes, gen, lead_dims,
                          maybe_noncontiguous, rand_mask, randn, seeds, tokens)


def _run(fn, x, params, bias, gy_seed):
    """Forward + backward of ``fn(x, *params, bias)``; returns (y, grads of x, params..., bias)."""
    leaves = [t.requires_grad_(True) for t in (x, *params) if t is not None]
    if bias is not None:
        bias.requires_grad_(True)
        leaves.append(bias)
    y = fn(x, *params, bias)
    gy = randn(gen(gy_seed), *y.shape, dtype=y.dtype)
    grads = torch.autograd.grad(y, leaves, gy, allow_unused=True) if y.numel() else [torch.zeros_like(t) for t in leaves]
    return y, grads, gy


def _check(fn, ref_fn, x, params, bias, seed, dtype):
    y, grads, gy = _run(fn, x, params, bias, seed + 1)
    ref_leaves = float64_leaves(x, *params, bias)
    y_ref = ref_fn(*ref_leaves)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert_close(y.detach(), y_ref.detach(), dtype)
    used = [t for t in ref_leaves if t is not None]
    ref_grads = (torch.autograd.grad(y_ref, used, gy.double(), allow_unused=True) if y_ref.numel()
                 else [torch.zeros_like(t) for t in used])
    assert_grads_close(grads, ref_grads, dtype)


@given(T=tokens, lead=lead_dims, in_f=dims, out_f=dims, B=block_sizes, density=densities, dtype=dtypes,
       bias=st.booleans(), nc=st.booleans(), seed=seeds)
@example(T=1, lead=(), in_f=65, out_f=1, B=64, density=1.0, dtype=torch.float32, bias=True, nc=True, seed=0)
@example(T=0, lead=(2,), in_f=0, out_f=17, B=16, density=0.0, dtype=torch.float64, bias=True, nc=False, seed=1)
def test_bsr_linear(T, lead, in_f, out_f, B, density, dtype, bias, nc, seed):
    g = gen(seed)
    layout = BlockSparseLayout.random((out_f, in_f), density, B, generator=g)
    values = randn(g, layout.nnzb, B, B, dtype=dtype)
    x = maybe_noncontiguous(randn(g, *lead, T, in_f, dtype=dtype), nc)
    b = randn(g, out_f, dtype=dtype) if bias else None
    _check(lambda x, v, b: bsr_linear(x, v, layout, b),
           lambda x, v, b: ref_linear(x, layout.to_dense(v), b), x, [values], b, seed, dtype)


@given(T=tokens, lead=lead_dims, in_f=dims, out_f=dims, density=densities, dtype=dtypes, bias=st.booleans(),
       nc=st.booleans(), seed=seeds)
@example(T=3, lead=(), in_f=1, out_f=0, density=1.0, dtype=torch.float32, bias=True, nc=True, seed=0)
def test_csr_linear(T, lead, in_f, out_f, density, dtype, bias, nc, seed):
    g = gen(seed)
    layout = CSRLayout.random((out_f, in_f), density, generator=g)
    values = maybe_noncontiguous(randn(g, layout.nnz, dtype=dtype), nc)
    x = maybe_noncontiguous(randn(g, *lead, T, in_f, dtype=dtype), nc)
    b = randn(g, out_f, dtype=dtype) if bias else None
    _check(lambda x, v, b: csr_linear(x, v, layout, b),
           lambda x, v, b: ref_linear(x, layout.to_dense(v), b), x, [values], b, seed, dtype)


@given(T=tokens, lead=lead_dims, in_f=dims, out_f=dims, density=densities, grad_density=st.none() | densities,
       dtype=dtypes, bias=st.booleans(), nc=st.booleans(), poison=st.booleans(), seed=seeds)
def test_masked_linear(T, lead, in_f, out_f, density, grad_density, dtype, bias, nc, poison, seed):
    """Also: masked-out weights may hold inf/NaN and still contribute exactly 0; dW is 0 outside grad_mask."""
    g = gen(seed)
    mask = rand_mask(g, (out_f, in_f), density)
    grad_mask = None if grad_density is None else rand_mask(g, (out_f, in_f), grad_density)
    weight = randn(g, out_f, in_f, dtype=dtype)
    if poison:
        weight = weight.masked_fill(~mask & (torch.arange(weight.numel()).view(weight.shape) % 2 == 0), float("nan"))
        weight = weight.masked_fill(~mask & (torch.arange(weight.numel()).view(weight.shape) % 2 == 1), float("inf"))
    weight = maybe_noncontiguous(weight, nc)
    x = maybe_noncontiguous(randn(g, *lead, T, in_f, dtype=dtype), nc)
    b = randn(g, out_f, dtype=dtype) if bias else None
    gm = mask if grad_mask is None else grad_mask
    y, (dx, dw, *db), gy = _run(lambda x, w, b: masked_linear(x, w, mask, b, grad_mask), x, [weight], b, seed + 1)
    xd, wd, bd = float64_leaves(x, torch.where(mask, weight, 0), b)
    y_ref = ref_linear(xd, wd, bd)
    assert_close(y.detach(), y_ref.detach(), dtype)
    rows = math.prod(lead) * T
    gyd = gy.double().reshape(rows, out_f)
    xr = x.detach().double().reshape(rows, in_f)
    assert_close(dx, (gyd @ wd.detach()).reshape(x.shape), dtype)
    assert_close(dw, (gyd.T @ xr).masked_fill(~gm, 0), dtype)
    assert not dw.masked_select(~gm).any(), "dW must be exactly 0 outside grad_mask"
    if bias:
        assert_close(db[0], gyd.sum(0), dtype)


@given(T=tokens, lead=lead_dims, in_f=dims, out_f=dims, dtype=dtypes, nc=st.booleans(), seed=seeds)
def test_masked_linear_dense_grad(T, lead, in_f, out_f, dtype, nc, seed):
    g = gen(seed)
    x = maybe_noncontiguous(randn(g, *lead, T, in_f, dtype=dtype), nc)
    gy = maybe_noncontiguous(randn(g, *lead, T, out_f, dtype=dtype), nc)
    dw = masked_linear_dense_grad(x, gy)
    assert dw.shape == (out_f, in_f)
    rows = math.prod(lead) * T
    assert_close(dw, gy.double().reshape(rows, out_f).T @ x.double().reshape(rows, in_f), dtype)


@given(op=st.sampled_from(["bsr", "csr", "masked"]), dtype=any_float_dtypes, T=tokens, in_f=dims, out_f=dims,
       seed=seeds)
def test_linear_dtypes_work_or_raise_clearly(op, dtype, T, in_f, out_f, seed):
    """Every float dtype either matches the float64 reference (at its tolerance) or raises naming the dtype."""
    g = gen(seed)
    x = randn(g, T, in_f, dtype=dtype)
    if op == "bsr":
        layout = BlockSparseLayout.random((out_f, in_f), 0.5, 16, generator=g)
        v = randn(g, layout.nnzb, 16, 16, dtype=dtype)
        call, w = (lambda: bsr_linear(x, v, layout)), layout.to_dense(v)
    elif op == "csr":
        layout = CSRLayout.random((out_f, in_f), 0.5, generator=g)
        v = randn(g, layout.nnz, dtype=dtype)
        call, w = (lambda: csr_linear(x, v, layout)), layout.to_dense(v)
    else:
        m = rand_mask(g, (out_f, in_f), 0.5)
        wt = randn(g, out_f, in_f, dtype=dtype)
        call, w = (lambda: masked_linear(x, wt, m)), torch.where(m, wt, 0)
    try:
        y = call()
    except (RuntimeError, ValueError) as exc:
        assert dtype in (torch.float16, torch.bfloat16), f"{dtype} must be supported on CPU: {exc}"
        assert "dtype" in str(exc) or str(dtype).split(".")[-1] in str(exc).lower() or "Half" in str(exc) \
            or "BFloat16" in str(exc), f"unclear error for {dtype}: {exc}"
        return
    assert y.dtype == dtype
    if dtype in (torch.float16, torch.bfloat16):  # accumulation order differs: tolerance grows with in_f
        torch.testing.assert_close(y.double(), ref_linear(x, w), rtol=5e-2, atol=5e-2 * max(1, in_f) ** 0.5)
    else:
        assert_close(y, ref_linear(x, w), dtype)
