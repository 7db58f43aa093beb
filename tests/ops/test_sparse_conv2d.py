"""bsr_conv2d / csr_conv2d against a float64 F.conv2d on the effective dense weight: forward, dX,
dValues, dBias; stride, padding, dilation, odd sizes, channels_last, densities 0 and 1, gradcheck,
opcheck, the reference fallback and bad input."""
import pytest
import torch
import torch.nn.functional as F

import sparsecl
from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_conv2d, csr_conv2d
from sparsecl.ops import sparse_conv2d as sc

from .._ref import CPU_ISAS, assert_close

GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (2, 5, 7, 9, 7, 3, 1, 1, 1), (1, 20, 33, 11, 6, 3, 2, 1, 1), (3, 17, 16, 8, 9, (3, 1), (2, 1), (0, 2), (2, 1)),
    (2, 16, 16, 5, 5, 1, 1, 0, 1), (0, 4, 4, 5, 5, 3, 1, 1, 1),
    (1, 6, 5, 9, 7, 1, 2, 0, 1), (2, 3, 8, 11, 11, 7, 2, 3, 1), (0, 3, 4, 9, 9, 7, 2, 3, 1),  # 1x1 s2, stems
]
DENSITIES = [0.0, 0.3, 1.0]

# Unstructured convs run the padded-width kernels (tiles of 1, 2, 4 or 7 vectors, several images per
# call), strided ones on the input's stride phases (dX one pass per phase of dx, 1x1 without padding on
# the subsampled input); these shapes give each tile width, several tiles per plane, batch tails, 1x1,
# dilation, asymmetric padding/kernels/strides, odd sizes, 7x7 stride-2 stems and strides wider than the
# kernel (dx phases no tap reaches).
PW_GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (9, 6, 5, 3, 2, 3, 1, 1, 1), (7, 5, 9, 5, 5, 3, 1, 1, 1), (3, 7, 6, 19, 23, 3, 1, 2, 2),
    (5, 4, 3, 9, 8, (3, 5), 1, (0, 3), (2, 1)), (10, 3, 4, 6, 6, 1, 1, 0, 1), (2, 6, 5, 7, 7, 3, 1, 3, 1),
    (2, 5, 6, 7, 7, 3, 1, 1, 1), (3, 4, 5, 2, 2, 1, 1, 0, 1),  # 4-vector tiles (ResNet 512@7), 1-vector tiles
    (3, 6, 5, 9, 8, 3, (1, 2), 1, 1), (2, 6, 5, 9, 8, 3, 2, 1, 2),
    (3, 5, 6, 9, 11, 3, 2, 1, 1), (4, 5, 6, 4, 4, 3, 2, 1, 1), (3, 6, 7, 7, 9, 1, 2, 0, 1), (2, 4, 3, 6, 7, 1, 2, 1, 1),
    (2, 3, 8, 15, 13, 7, 2, 3, 1), (2, 5, 4, 10, 9, 3, (2, 3), (0, 2), (1, 2)), (2, 5, 6, 9, 9, 3, 3, 2, 2),
    (2, 4, 5, 3, 3, 3, 4, 1, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def bsr_case(geom, density, B, dtype, fmt):
    N, cin, cout, H, W, k, *_ = geom
    kh, kw = _pair(k)
    layout = BlockSparseLayout.random((cout, cin), density, B)
    values = torch.randn(layout.nnzb, B, B, kh, kw, dtype=dtype)
    w = _bsr_dense(values, layout)
    x = torch.randn(N, cin, H, W, dtype=dtype).contiguous(memory_format=fmt)
    return x, values, layout, w


def _bsr_dense(values, layout):
    """Effective dense [out, in, kh, kw] weight of block values (built tap by tap through to_dense)."""
    taps = [layout.to_dense(values[..., r, s].contiguous()) for r in range(values.shape[3])
            for s in range(values.shape[4])]
    return torch.stack(taps, -1).reshape(*layout.shape, values.shape[3], values.shape[4])


def csr_case(geom, density, dtype, fmt):
    N, cin, cout, H, W, k, *_ = geom
    kh, kw = _pair(k)
    layout = CSRLayout.random((cout, cin * kh * kw), density)
    values = torch.randn(layout.nnz, dtype=dtype)
    w = layout.to_dense(values).reshape(cout, cin, kh, kw)
    x = torch.randn(N, cin, H, W, dtype=dtype).contiguous(memory_format=fmt)
    return x, values, layout, w


def check_against_dense(fn, x, values, w, geom, fmt):
    stride, padding, dilation = geom[6:]
    bias = torch.randn(w.shape[0], dtype=x.dtype)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, bias))
    yr = F.conv2d(xr, wr, br, stride, padding, dilation)
    x, values, bias = (t.detach().requires_grad_() for t in (x, values, bias))
    y = fn(x, values, bias, stride, padding, dilation)
    assert y.shape == yr.shape
    if fmt == torch.channels_last and y.shape[0] > 1 and y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, yr, x.dtype)
    g = torch.randn_like(yr)
    y.backward(g.to(y.dtype))
    yr.backward(g)
    assert_close(x.grad, xr.grad, x.dtype)
    assert_close(bias.grad, br.grad, x.dtype)
    return values.grad, wr.grad


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bsr_conv2d(seed, geom, density, fmt, dtype):
    B = 16
    x, values, layout, w = bsr_case(geom, density, B, dtype, fmt)
    fn = lambda x, v, b, s, p, d: bsr_conv2d(x, v, layout, b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, fmt)
    # dValues = the dense weight gradient at the active blocks (clipped edge entries are 0)
    kh, kw = w.shape[2:]
    full = dw.new_zeros(layout.n_block_rows * B, layout.n_block_cols * B, kh, kw)
    full[: w.shape[0], : w.shape[1]] = dw
    blocks = full.view(layout.n_block_rows, B, layout.n_block_cols, B, kh, kw)
    ref = blocks[layout.row_idx.long(), :, layout.col_idx.long()]
    assert_close(dv, ref, dtype)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_conv2d(seed, geom, density, fmt, dtype):
    x, values, layout, w = csr_case(geom, density, dtype, fmt)
    k = geom[5]
    fn = lambda x, v, b, s, p, d: csr_conv2d(x, v, layout, k, b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, fmt)
    assert_close(dv, layout.values_from_dense(dw.reshape(w.shape[0], -1)), dtype)


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noncontiguous_input(seed, k, stride, padding, dtype):
    geom = (2, 5, 7, 9, 7, k, stride, padding, 1)
    xs = torch.randn(2, 10, 9, 7, dtype=dtype)[:, ::2]
    _, values, layout, w = csr_case(geom, 0.5, dtype, torch.contiguous_format)
    ref = F.conv2d(xs.double(), w.double(), stride=stride, padding=padding)
    assert_close(csr_conv2d(xs, values, layout, k, stride=stride, padding=padding), ref, dtype)
    _, vb, lb, wb = bsr_case(geom, 0.5, 16, dtype, torch.contiguous_format)
    ref = F.conv2d(xs.double(), wb.double(), stride=stride, padding=padding)
    assert_close(bsr_conv2d(xs, vb, lb, stride=stride, padding=padding), ref, dtype)


@pytest.mark.parametrize("block", [True, False])
@pytest.mark.parametrize("geom", [(2, 5, 6, 5, 4, 3, 2, 1, 1), (2, 5, 6, 5, 4, 1, 2, 0, 1), (1, 2, 6, 7, 6, 5, 2, 2, 1)])
def test_gradcheck(seed, block, geom):
    k, stride, padding = geom[5:8]
    if block:
        x, values, layout, _ = bsr_case(geom, 0.6, 16, torch.float64, torch.contiguous_format)
        fn = lambda x, v, b: bsr_conv2d(x, v, layout, b, stride, padding)  # noqa: E731
    else:
        x, values, layout, _ = csr_case(geom, 0.4, torch.float64, torch.contiguous_format)
        fn = lambda x, v, b: csr_conv2d(x, v, layout, k, b, stride, padding)  # noqa: E731
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), values.requires_grad_(), bias))


@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck(seed, stride):
    geom = [stride, stride], [1, 1], [1, 1]
    x, values, layout, _ = bsr_case((2, 5, 7, 6, 5, 3, 1, 1, 1), 0.6, 16, torch.float32, torch.contiguous_format)
    ops = torch.ops.sparsecl
    y = ops.bsr_conv2d(x, values, layout.row_ptr, layout.col_idx, 7, None, *geom)
    torch.library.opcheck(ops.bsr_conv2d, (x, values, layout.row_ptr, layout.col_idx, 7, torch.randn(7), *geom))
    torch.library.opcheck(ops.bsr_conv2d_dx, (torch.randn_like(y), values, layout.t_row_ptr, layout.t_col_idx,
                                              layout.t_perm, list(x.shape), *geom))
    torch.library.opcheck(ops.bsr_conv2d_dw, (torch.randn_like(y), x, layout.row_idx, layout.col_idx, 16, [3, 3],
                                              *geom))
    x, values, layout, _ = csr_case((2, 5, 7, 6, 5, 3, 1, 1, 1), 0.3, torch.float32, torch.channels_last)
    y = ops.csr_conv2d(x, values, layout.row_ptr, layout.col_idx, 7, [3, 3], None, *geom)
    torch.library.opcheck(ops.csr_conv2d, (x, values, layout.row_ptr, layout.col_idx, 7, [3, 3], None, *geom))
    torch.library.opcheck(ops.csr_conv2d_dx, (torch.randn_like(y), values, layout.t_row_ptr, layout.t_col_idx,
                                              layout.t_perm, list(x.shape), [3, 3], *geom))
    torch.library.opcheck(ops.csr_conv2d_dw, (torch.randn_like(y), x, layout.row_idx, layout.col_idx, [3, 3], *geom))


def test_reference_fallback_matches(seed):
    geom = (2, 18, 20, 7, 6, 3, 2, 1, 2)
    x, values, layout, w = bsr_case(geom, 0.5, 16, torch.float64, torch.contiguous_format)
    args = ([2, 2], [1, 1], [2, 2])
    y = sc._ref_bsr(x, values, layout.row_ptr, layout.col_idx, 20, None, *args)
    assert_close(y, F.conv2d(x, w, None, *args), torch.float64)
    g = torch.randn_like(y)
    assert_close(sc._ref_bsr_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), *args),
                 torch.ops.sparsecl.bsr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm,
                                                  list(x.shape), *args), torch.float64)
    assert_close(sc._ref_bsr_dw(g, x, layout.row_idx, layout.col_idx, 16, [3, 3], *args),
                 torch.ops.sparsecl.bsr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, 16, [3, 3], *args),
                 torch.float64)
    x, values, layout, w = csr_case(geom, 0.3, torch.float64, torch.contiguous_format)
    y = sc._ref_csr(x, values, layout.row_ptr, layout.col_idx, 20, [3, 3], None, *args)
    assert_close(y, F.conv2d(x, w, None, *args), torch.float64)
    assert_close(sc._ref_csr_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), [3, 3],
                                *args),
                 torch.ops.sparsecl.csr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm,
                                                  list(x.shape), [3, 3], *args), torch.float64)
    assert_close(sc._ref_csr_dw(g, x, layout.row_idx, layout.col_idx, [3, 3], *args),
                 torch.ops.sparsecl.csr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, [3, 3], *args), torch.float64)


def test_bad_input(seed):
    x, values, layout, _ = bsr_case(GEOMS[0], 0.5, 16, torch.float32, torch.contiguous_format)
    with pytest.raises(ValueError, match="channels"):
        bsr_conv2d(x[:, :3], values, layout)
    with pytest.raises(ValueError, match="4-D"):
        bsr_conv2d(x[0], values, layout)
    with pytest.raises(ValueError, match="values"):
        bsr_conv2d(x, values[:, :8], layout)
    with pytest.raises(ValueError, match="stride"):
        bsr_conv2d(x, values, layout, stride=0)
    with pytest.raises(TypeError, match="BlockSparseLayout"):
        bsr_conv2d(x, values, CSRLayout.random((7, 45), 0.5))
    with pytest.raises(RuntimeError, match="too small"):
        bsr_conv2d(x, values, layout, padding=0, dilation=5)
    with pytest.raises(RuntimeError, match="dtype"):
        bsr_conv2d(x.double(), values, layout)
    xc, vc, lc, _ = csr_case(GEOMS[0], 0.5, torch.float32, torch.contiguous_format)
    with pytest.raises(ValueError, match="columns"):
        csr_conv2d(xc, vc, lc, 5)
    with pytest.raises(ValueError, match="values"):
        csr_conv2d(xc, vc[1:], lc, 3)
    with pytest.raises(RuntimeError, match="col_idx"):
        torch.ops.sparsecl.csr_conv2d(xc, vc, lc.row_ptr, lc.col_idx + 1000, 7, [3, 3], None, [1, 1], [1, 1], [1, 1])


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("geom", PW_GEOMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_conv2d_every_isa_and_path(seed, isa, geom, dtype, monkeypatch):
    """Forward, dX, dValues, dBias of each forced CPU path, fast (stride 1) and general, vs float64."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    x, values, layout, w = csr_case(geom, 0.4, dtype, torch.contiguous_format)
    k = geom[5]
    fn = lambda x, v, b, s, p, d: csr_conv2d(x, v, layout, k, b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, torch.contiguous_format)
    assert_close(dv, layout.values_from_dense(dw.reshape(w.shape[0], -1)), dtype)


# On AVX-512 small planes take 8-lane tiles when they compute at least 20% fewer outputs than 16-lane ones
# (fp32 4x4: len 24 / dX 20 -> 3-vector tiles of 8 images; fp64 len 12 and 4). These shapes sit at and
# around that threshold (8x8 len 80 and len 35, 15, 16 keep 16 lanes) with batch tails, batches 0 and 1.
SMALL_PLANE_GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (17, 6, 5, 4, 4, 3, 1, 1, 1), (1, 7, 6, 4, 4, 3, 1, 1, 1), (0, 4, 5, 4, 4, 3, 1, 1, 1),
    (9, 4, 6, 8, 8, 3, 2, 1, 1), (3, 5, 4, 8, 8, 3, 1, 1, 1), (5, 4, 3, 5, 5, 3, 1, 1, 1),
    (6, 3, 4, 3, 3, 3, 1, 1, 1), (4, 3, 5, 4, 4, 1, 1, 0, 1), (5, 4, 3, 5, 4, 3, 1, 0, 1),
]


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("geom", SMALL_PLANE_GEOMS)
@pytest.mark.parametrize("layout_kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_conv2d_small_planes(seed, isa, geom, layout_kind, dtype, monkeypatch):
    """Forward, dX, dValues, dBias on small planes under each forced ISA vs float64, x contiguous,
    channels-last or a channel slice of a wider tensor."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    fmt = torch.channels_last if layout_kind == "channels_last" else torch.contiguous_format
    x, values, layout, w = csr_case(geom, 0.4, dtype, fmt)
    if layout_kind == "sliced":
        x = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=dtype)[:, ::2]
        assert x.numel() == 0 or not x.is_contiguous()
    k = geom[5]
    fn = lambda x, v, b, s, p, d: csr_conv2d(x, v, layout, k, b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, fmt)
    assert_close(dv, layout.values_from_dense(dw.reshape(w.shape[0], -1)), dtype)


# fp32 convs with output planes of at most 64 pixels run batch-in-lanes on AVX2/AVX-512 (images in the
# vector lanes, 8 or 16 per block, register tiles of up to 6 x 8 output pixels; stride-2 read directly, dX
# per stride phase of dx). Batches 0, 1 and past a multiple of the lanes (17, 33), 4x4 / 7x7 / 8x8 outputs,
# padding 0 and 1, strides 1, 2, (3, 1), (1, 2), dilation, a 3x5 kernel, and 5x13 (65 pixels: the
# padded-width kernels, next to the threshold). dValues runs batch-in-lanes up to 1024 output pixels (16x16,
# 32x32; 33x32 does not). The generic ISA runs the padded-width kernels.
BIL_GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (17, 6, 5, 4, 4, 3, 1, 1, 1), (33, 5, 7, 8, 8, 3, 1, 1, 1), (1, 7, 6, 7, 7, 3, 1, 1, 1),
    (0, 4, 5, 8, 8, 3, 2, 1, 1), (17, 6, 8, 8, 8, 3, 2, 1, 1), (33, 4, 6, 16, 16, 3, 2, 1, 1),
    (17, 5, 4, 6, 6, 3, 1, 0, 1), (33, 4, 5, 9, 9, 3, 2, 0, 1), (17, 5, 6, 15, 15, 3, 2, 1, 1),
    (9, 4, 5, 9, 8, (3, 5), (2, 1), (0, 2), (1, 2)), (20, 3, 4, 7, 7, 3, (1, 2), 1, 2),
    (17, 4, 5, 10, 8, 3, (3, 1), 1, 1), (17, 5, 4, 5, 13, 3, 1, 1, 1),
    (17, 4, 5, 16, 16, 3, 1, 1, 1), (3, 3, 4, 32, 32, 3, 1, 1, 1), (2, 3, 4, 33, 32, 3, 1, 1, 1),
]


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("geom", BIL_GEOMS)
@pytest.mark.parametrize("layout_kind", ["contiguous", "channels_last", "sliced"])
def test_csr_conv2d_batch_in_lanes(seed, isa, geom, layout_kind, monkeypatch):
    """fp32 forward, dX, dValues, dBias on small output planes under each forced ISA vs float64, x
    contiguous, channels-last or a channel slice of a wider tensor."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    fmt = torch.channels_last if layout_kind == "channels_last" else torch.contiguous_format
    x, values, layout, w = csr_case(geom, 0.4, torch.float32, fmt)
    if layout_kind == "sliced":
        x = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:])[:, ::2]
        assert x.numel() == 0 or not x.is_contiguous()
    fn = lambda x, v, b, s, p, d: csr_conv2d(x, v, layout, geom[5], b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, fmt)
    assert_close(dv, layout.values_from_dense(dw.reshape(w.shape[0], -1)), torch.float32)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("geom", [(33, 6, 5, 4, 4, 3, 1, 1, 1), (17, 6, 8, 8, 8, 3, 2, 1, 1)])
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_csr_conv2d_batch_in_lanes_densities(seed, isa, geom, density, monkeypatch):
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    x, values, layout, w = csr_case(geom, density, torch.float32, torch.contiguous_format)
    fn = lambda x, v, b, s, p, d: csr_conv2d(x, v, layout, geom[5], b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, torch.contiguous_format)
    assert_close(dv, layout.values_from_dense(dw.reshape(w.shape[0], -1)), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_csr_conv2d_dw_any_entry_order(seed, stride, dtype):
    """csr_conv2d_dw takes (row, col) pairs in any order: dValues follow the order given."""
    x, values, layout, _ = csr_case((3, 5, 6, 7, 6, 3, stride, 1, 1), 0.5, dtype, torch.contiguous_format)
    g = torch.randn(3, 6, *F.conv2d(x, x.new_zeros(6, 5, 3, 3), stride=stride, padding=1).shape[2:], dtype=dtype)
    geom = [stride, stride], [1, 1], [1, 1]
    ops = torch.ops.sparsecl
    ref = ops.csr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, [3, 3], *geom)
    perm = torch.randperm(layout.nnz)
    dv = ops.csr_conv2d_dw(g, x, layout.row_idx[perm], layout.col_idx[perm], [3, 3], *geom)
    assert_close(dv, ref[perm], dtype)


@pytest.mark.parametrize("structure", ["csr", "bsr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(6, 7), (5, 5)])
def test_dvalues_with_inf_in_x_match_dense(seed, structure, dtype, stride, hw):
    """An inf in x's first column is read by the padded-width kernels' garbage columns (times a zero
    grad_out): dValues must still be finite wherever the dense convolution's weight gradient is. fp32 csr:
    batch-in-lanes tiles cover a 6x7 / 3x4 output exactly (no check of x), not 5x5 / 3x3 (checked)."""
    geom = (2, 5, 6, *hw, 3, stride, 1, 1)
    if structure == "csr":
        x, values, layout, w = csr_case(geom, 1.0, dtype, torch.contiguous_format)
    else:
        x, values, layout, w = bsr_case(geom, 1.0, 16, dtype, torch.contiguous_format)
    x[:, 1, 3, 0] = float("inf")
    xr, wr = x.double(), w.double().requires_grad_()
    g = torch.randn(F.conv2d(xr, wr, stride=stride, padding=1).shape, dtype=torch.float64)
    F.conv2d(xr, wr, stride=stride, padding=1).backward(g)
    ops, geo = torch.ops.sparsecl, ([stride, stride], [1, 1], [1, 1])
    if structure == "csr":
        dv = ops.csr_conv2d_dw(g.to(dtype), x, layout.row_idx, layout.col_idx, [3, 3], *geo)
        ref = wr.grad.reshape(6, -1)[layout.row_idx.long(), layout.col_idx.long()]
    else:
        dv = ops.bsr_conv2d_dw(g.to(dtype), x, layout.row_idx, layout.col_idx, 16, [3, 3], *geo)
        ref = wr.grad[:, :, :, :].new_zeros(16, 16, 3, 3)
        ref[:6, :5] = wr.grad
        ref = ref.unsqueeze(0)
    assert ref.isfinite().any() and not ref.isfinite().all()
    torch.testing.assert_close(dv.double(), ref, equal_nan=True, rtol=1e-4, atol=1e-4)


# Block-channel fp32 convs on AVX2/AVX-512 run the padded-width micro-kernel tiles (14 or 6 positions x
# B channels; strided ones on the input's stride phases, dX per phase of dx); float64 and the generic
# ISA run the gather-GEMM path.
BLOCK_PW_GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (3, 40, 33, 9, 7, 3, 1, 1, 1), (2, 17, 70, 5, 11, (3, 5), 1, (0, 3), (2, 1)), (5, 33, 16, 4, 4, 1, 1, 0, 1),
    (2, 20, 20, 6, 6, 3, 1, 3, 2), (2, 33, 20, 7, 6, 3, 2, 1, 1),
    (3, 20, 40, 9, 11, 3, 2, 1, 1), (2, 17, 33, 7, 9, 1, 2, 0, 1), (2, 3, 16, 15, 13, 7, 2, 3, 1),
    (2, 20, 20, 8, 7, 3, (2, 3), (0, 2), (1, 2)), (1, 16, 16, 5, 5, 1, 2, 1, 1),
]


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("geom", BLOCK_PW_GEOMS)
@pytest.mark.parametrize("B", [16, 32])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_bsr_conv2d_every_isa_and_path(seed, isa, geom, B, fmt, monkeypatch):
    """Forward, dX, dValues, dBias of each forced CPU path (fp32), fast and general, vs float64."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    x, values, layout, w = bsr_case(geom, 0.5, B, torch.float32, fmt)
    fn = lambda x, v, b, s, p, d: bsr_conv2d(x, v, layout, b, s, p, d)  # noqa: E731
    dv, dw = check_against_dense(fn, x, values, w, geom, fmt)
    kh, kw = w.shape[2:]
    full = dw.new_zeros(layout.n_block_rows * B, layout.n_block_cols * B, kh, kw)
    full[: w.shape[0], : w.shape[1]] = dw
    ref = full.view(layout.n_block_rows, B, layout.n_block_cols, B, kh, kw)[layout.row_idx.long(), :,
                                                                             layout.col_idx.long()]
    assert_close(dv, ref, torch.float32)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("structure", ["csr", "bsr"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_strided_pointwise_ops(seed, isa, structure, fmt, monkeypatch):
    """The C++ ops on a 1x1 stride-2 conv without padding (the stride-1 kernels on the subsampled input;
    the public functions route these through the linear kernels): forward, dX, dValues vs float64."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    geom = (3, 20, 18, 9, 8, 1, 2, 0, 1)
    ops, args = torch.ops.sparsecl, ([2, 2], [0, 0], [1, 1])
    if structure == "csr":
        x, values, layout, w = csr_case(geom, 0.4, torch.float32, fmt)
        y = ops.csr_conv2d(x, values, layout.row_ptr, layout.col_idx, 18, [1, 1], None, *args)
    else:
        x, values, layout, w = bsr_case(geom, 0.5, 16, torch.float32, fmt)
        y = ops.bsr_conv2d(x, values, layout.row_ptr, layout.col_idx, 18, None, *args)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    yr = F.conv2d(xr, wr, stride=2)
    assert_close(y, yr, torch.float32)
    g = torch.randn_like(yr)
    yr.backward(g)
    g = g.float().contiguous(memory_format=fmt)
    if structure == "csr":
        dx = ops.csr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), [1, 1],
                               *args)
        dv = ops.csr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, [1, 1], *args)
        assert_close(dv, layout.values_from_dense(wr.grad.reshape(18, -1)), torch.float32)
    else:
        dx = ops.bsr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), *args)
        dv = ops.bsr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, 16, [1, 1], *args)
        full = wr.grad.new_zeros(layout.n_block_rows * 16, layout.n_block_cols * 16, 1, 1)
        full[:18, :20] = wr.grad
        ref = full.view(layout.n_block_rows, 16, layout.n_block_cols, 16, 1, 1)[layout.row_idx.long(), :,
                                                                                 layout.col_idx.long()]
        assert_close(dv, ref, torch.float32)
    assert_close(dx, xr.grad, torch.float32)
    if fmt == torch.channels_last:
        assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
