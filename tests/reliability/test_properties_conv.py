"""Property tests: bsr_conv2d and csr_conv2d (C++ CPU) against float64 dense conv2d over random channel
counts (non-multiples of B), kernel sizes, stride/padding/dilation, densities (0 and 1), dtypes and
NCHW/channels_last inputs. Forward and gradients of x, values and bias."""
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_conv2d, csr_conv2d

from .._ref import assert_close, assert_grads_close, float64_leaves, ref_conv2d
from ._strategies import block_sizes, densities, dtypes, gen, randn, seeds

geometry = dict(N=st.integers(0, 2), H=st.integers(1, 6), W=st.integers(1, 6),
                k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
                stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
                padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
                dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)))


def _valid(H, W, k, stride, padding, dilation):
    return all(((H, W)[d] + 2 * padding[d] - dilation[d] * (k[d] - 1) - 1) // stride[d] + 1 >= 1 for d in range(2))


def _check(conv, dense_of, x, values, bias, geom, dtype, g):
    x.requires_grad_(True)
    values.requires_grad_(True)
    leaves = [x, values] + ([bias.requires_grad_(True)] if bias is not None else [])
    y = conv(x, values, bias)
    assert y.dtype == dtype
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last), "output must follow x's memory format"
    xd, vd, bd = float64_leaves(x, values, bias)
    y_ref = ref_conv2d(xd, dense_of(vd), bd, *geom)
    assert_close(y.detach(), y_ref.detach(), dtype)
    if y.numel():
        gy = randn(g, *y.shape, dtype=dtype)
        grads = torch.autograd.grad(y, leaves, gy, allow_unused=True)
        used = [t for t in (xd, vd, bd) if t is not None]
        assert_grads_close(grads, torch.autograd.grad(y_ref, used, gy.double(), allow_unused=True), dtype)


@given(O=st.integers(0, 40), C=st.integers(0, 40), B=block_sizes, density=densities, dtype=dtypes,
       bias=st.booleans(), channels_last=st.booleans(), seed=seeds, **geometry)
def test_bsr_conv2d(O, C, B, density, dtype, bias, channels_last, seed, N, H, W, k, stride, padding, dilation):
    assume(_valid(H, W, k, stride, padding, dilation))
    g = gen(seed)
    layout = BlockSparseLayout.random((O, C), density, B, generator=g)
    values = randn(g, layout.nnzb, B, B, *k, dtype=dtype)
    x = randn(g, N, C, H, W, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    b = randn(g, O, dtype=dtype) if bias else None

    def dense_of(v):
        return torch.stack([torch.stack([layout.to_dense(v[..., r, s]) for s in range(k[1])], -1)
                            for r in range(k[0])], -2)

    _check(lambda x, v, b: bsr_conv2d(x, v, layout, b, stride, padding, dilation), dense_of, x, values, b,
           (stride, padding, dilation), dtype, g)


@given(O=st.integers(0, 12), C=st.integers(0, 12), density=densities, dtype=dtypes, bias=st.booleans(),
       channels_last=st.booleans(), seed=seeds, **geometry)
def test_csr_conv2d(O, C, density, dtype, bias, channels_last, seed, N, H, W, k, stride, padding, dilation):
    assume(_valid(H, W, k, stride, padding, dilation))
    g = gen(seed)
    layout = CSRLayout.random((O, C * k[0] * k[1]), density, generator=g)
    values = randn(g, layout.nnz, dtype=dtype)
    x = randn(g, N, C, H, W, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    b = randn(g, O, dtype=dtype) if bias else None
    _check(lambda x, v, b: csr_conv2d(x, v, layout, k, b, stride, padding, dilation),
           lambda v: layout.to_dense(v).view(O, C, *k), x, values, b, (stride, padding, dilation), dtype, g)
