"""bsr_conv2d / csr_conv2d on GPU backends against a float64 F.conv2d on the effective dense weight.

* Triton launchers (sparsecl.kernels.sparse_conv2d) in the interpreter on CPU tensors
  (TRITON_INTERPRET=1, conftest's default): small shapes, fp32 (IEEE products) and fp64; forward,
  dX and dValues; stride, padding, dilation, odd sizes, channels not multiples of the block,
  densities 0 and 1, NCHW / channels_last / strided inputs, NaN in the padding of edge blocks.
* The kernels compile for sm_90 ahead of time (no GPU needed), in a subprocess.
* On CUDA: the triton and cuda backends through the public ops (forward + backward), fp32/fp16/bf16,
  opcheck of the CUDA C++ ops, and torch.compile(fullgraph=True). Triton on CUDA only with
  TRITON_INTERPRET=0 (bench/gpu.sh sets it).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import sparsecl
from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.kernels_loader import triton_available
from sparsecl.ops import bsr_conv2d, csr_conv2d

from .._ref import assert_close, noncontiguous
from ._gpu import BACKENDS, interpreter, needs_cuda, skip_unusable
from .test_sparse_conv2d import _bsr_dense, _pair

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not usable here")
FORMATS = [pytest.param(torch.contiguous_format, id="nchw"), pytest.param(torch.channels_last, id="nhwc")]


def _k():
    from sparsecl.kernels import sparse_conv2d as k

    return k


def _case(geom, density, structure, dtype, fmt, B=16, device="cpu", poison_padding=True):
    """(x, values, layout, dense weight [out, in, kh, kw]); NaN in edge-block padding when poison_padding."""
    N, cin, cout, H, W, k, *_ = geom
    kh, kw = _pair(k)
    x = torch.randn(N, cin, H, W, dtype=dtype, device=device).contiguous(memory_format=fmt)
    if structure == "block":
        layout = BlockSparseLayout.random((cout, cin), density, B, device=device)
        values = torch.randn(layout.nnzb, B, B, kh, kw, dtype=dtype, device=device)
        if poison_padding:
            inside = layout.values_from_dense(torch.ones(cout, cin, dtype=dtype, device=device)).bool()
            values = values.masked_fill(~inside[..., None, None], float("nan"))
        w = _bsr_dense(values, layout)
    else:
        layout = CSRLayout.random((cout, cin * kh * kw), density, device=device)
        values = torch.randn(layout.nnz, dtype=dtype, device=device)
        w = layout.to_dense(values).reshape(cout, cin, kh, kw)
    return x, values, layout, w


def _reference(x, w, layout, structure, bias, g, geom):
    """(y, dx, dvalues) in float64; dvalues at the active entries (edge-block padding 0)."""
    stride, padding, dilation = (_pair(v) for v in geom[6:])
    xd, wd = x.double(), torch.nan_to_num(w.double())
    y = F.conv2d(xd, wd, bias.double() if bias is not None else None, stride, padding, dilation)
    dx = torch.nn.grad.conv2d_input(list(x.shape), wd, g.double(), stride, padding, dilation)
    dw = torch.nn.grad.conv2d_weight(xd, list(w.shape), g.double(), stride, padding, dilation)
    if structure == "block":
        B = layout.block_size
        full = dw.new_zeros(layout.n_block_rows * B, layout.n_block_cols * B, *w.shape[2:])
        full[: w.shape[0], : w.shape[1]] = dw
        blocks = full.view(layout.n_block_rows, B, layout.n_block_cols, B, *w.shape[2:])
        dv = blocks[layout.row_idx.long(), :, layout.col_idx.long()]
    else:
        dv = layout.values_from_dense(dw.reshape(w.shape[0], -1))
    return y, dx, dv


def _run_launchers(x, values, layout, structure, bias, g, geom):
    k = _k()
    cout, kern = geom[2], list(_pair(geom[5]))
    args = [list(_pair(v)) for v in geom[6:]]
    if structure == "block":
        y = k.bsr_conv2d_forward(x, values, layout.row_ptr, layout.col_idx, cout, bias, *args)
        dx = k.bsr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), *args)
        dv = k.bsr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, layout.block_size, kern, *args)
    else:
        y = k.csr_conv2d_forward(x, values, layout.row_ptr, layout.col_idx, cout, kern, bias, *args)
        dx = k.csr_conv2d_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), kern,
                             *args)
        dv = k.csr_conv2d_dw(g, x, layout.row_idx, layout.col_idx, kern, *args)
    return y, dx, dv


def _out_grad(x, geom, dtype, fmt):
    N, _, cout, H, W, k, s, p, d = geom
    ho, wo = ((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, ss, pp, dd in
              zip((H, W), _pair(k), _pair(s), _pair(p), _pair(d)))
    return torch.randn(N, cout, ho, wo, dtype=dtype, device=x.device).contiguous(memory_format=fmt)


def _check(got, expected, x, dtype, fmt):
    y, dx, dv = got
    for a, e in zip(got, expected):
        assert a.shape == e.shape and a.dtype == dtype
        assert_close(a, e, dtype)
    if fmt == torch.channels_last and min(y.shape[:2]) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert dx.is_contiguous(memory_format=torch.channels_last)


INTERP_CASES = [  # (N, in, out, H, W, k, stride, padding, dilation), density, memory format
    pytest.param((2, 5, 7, 9, 7, 3, 1, 1, 1), 0.5, torch.contiguous_format, id="odd-pad1-nchw"),
    pytest.param((2, 5, 7, 9, 7, 3, 1, 1, 1), 1.0, torch.channels_last, id="odd-pad1-nhwc-d1"),
    pytest.param((1, 12, 20, 7, 6, 3, 2, 1, 1), 0.5, torch.channels_last, id="stride2-nhwc"),
    pytest.param((1, 20, 33, 7, 6, 3, 2, 1, 1), 0.0, torch.contiguous_format, id="stride2-d0"),
    pytest.param((2, 17, 16, 8, 5, (3, 1), (2, 1), (0, 2), (2, 1)), 0.6, torch.contiguous_format, id="rect-dil"),
    pytest.param((2, 17, 16, 8, 5, (3, 1), (2, 1), (0, 2), (2, 1)), 1.0, torch.channels_last, id="rect-dil-nhwc"),
    pytest.param((2, 16, 18, 5, 5, 1, 1, 0, 1), 1.0, torch.channels_last, id="1x1-nhwc"),
    pytest.param((0, 4, 4, 5, 5, 3, 1, 1, 1), 1.0, torch.contiguous_format, id="N0"),
]


@interpreter
@pytest.mark.parametrize("structure", ["block", "unstructured"])
@pytest.mark.parametrize("geom,density,fmt", INTERP_CASES)
def test_launchers_interpreter_fp32(structure, geom, density, fmt, seed):
    x, values, layout, w = _case(geom, density, structure, torch.float32, fmt)
    bias = torch.randn(geom[2]) if density != 0.5 else None
    g = _out_grad(x, geom, torch.float32, fmt)
    got = _run_launchers(x, values, layout, structure, bias, g, geom)
    _check(got, _reference(x, w, layout, structure, bias, g, geom), x, torch.float32, fmt)


@interpreter
@pytest.mark.parametrize("structure,B,geom", [("block", 32, (1, 40, 70, 5, 4, 3, 2, 1, 1)),
                                              ("block", 64, (1, 40, 70, 5, 4, 3, 2, 1, 1)),
                                              ("unstructured", 1, (1, 9, 10, 5, 4, 3, 2, 1, 1))])
def test_launchers_interpreter_fp64(structure, B, geom, seed):
    x, values, layout, w = _case(geom, 0.3, structure, torch.float64, torch.contiguous_format, B=B)
    g = _out_grad(x, geom, torch.float64, torch.contiguous_format)
    bias = torch.randn(geom[2], dtype=torch.float64)
    got = _run_launchers(x, values, layout, structure, bias, g, geom)
    _check(got, _reference(x, w, layout, structure, bias, g, geom), x, torch.float64, torch.contiguous_format)


@interpreter
@pytest.mark.parametrize("structure", ["block", "unstructured"])
def test_launchers_interpreter_strided_inputs(structure, seed):
    """x and grad_out as non-contiguous views (every other column of a wider buffer)."""
    geom = (1, 6, 9, 5, 7, 3, 1, 1, 1)
    x, values, layout, w = _case(geom, 0.5, structure, torch.float32, torch.contiguous_format)
    g = _out_grad(x, geom, torch.float32, torch.contiguous_format)
    got = _run_launchers(noncontiguous(x), values, layout, structure, None, noncontiguous(g), geom)
    for a, e in zip(got, _reference(x, w, layout, structure, None, g, geom)):
        assert_close(a, e, torch.float32)


@interpreter
def test_launchers_reject_bad_input():
    k = _k()
    x, values, layout, _ = _case((1, 5, 7, 6, 6, 3, 1, 1, 1), 1.0, "block", torch.float32, torch.contiguous_format)
    geom = [1, 1], [1, 1], [1, 1]
    with pytest.raises(ValueError, match="dtype"):
        k.bsr_conv2d_forward(x.double(), values, layout.row_ptr, layout.col_idx, 7, None, *geom)
    with pytest.raises(ValueError, match="row_ptr must have"):
        k.bsr_conv2d_forward(x, values, layout.row_ptr, layout.col_idx, 40, None, *geom)
    with pytest.raises(ValueError, match="int32"):
        k.bsr_conv2d_forward(x, values, layout.row_ptr.long(), layout.col_idx, 7, None, *geom)
    with pytest.raises(ValueError, match="too small"):
        k.bsr_conv2d_forward(x, values, layout.row_ptr, layout.col_idx, 7, None, [1, 1], [0, 0], [4, 4])
    with pytest.raises(ValueError, match="stride"):
        k.bsr_conv2d_forward(x, values, layout.row_ptr, layout.col_idx, 7, None, [0, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="4-D"):
        k.bsr_conv2d_forward(x[0], values, layout.row_ptr, layout.col_idx, 7, None, *geom)
    with pytest.raises(ValueError, match="grad_out"):
        k.bsr_conv2d_dx(torch.randn(1, 7, 5, 6), values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm,
                        list(x.shape), *geom)
    with pytest.raises(ValueError, match="block_size"):
        k.bsr_conv2d_dw(torch.randn(1, 7, 6, 6), x, layout.row_idx, layout.col_idx, 8, [3, 3], *geom)
    xc, vc, lc, _ = _case((1, 5, 7, 6, 6, 3, 1, 1, 1), 0.5, "unstructured", torch.float32, torch.contiguous_format)
    with pytest.raises(ValueError, match="values has"):
        k.csr_conv2d_forward(xc, vc[1:], lc.row_ptr, lc.col_idx, 7, [3, 3], None, *geom)
    with pytest.raises(ValueError, match="t_row_ptr must have"):
        k.csr_conv2d_dx(torch.randn(1, 7, 6, 6), vc, lc.t_row_ptr[:-1], lc.t_col_idx, lc.t_perm, [1, 5, 6, 6],
                        [3, 3], *geom)
    with pytest.raises(ValueError, match="bias"):
        k.csr_conv2d_forward(xc, vc, lc.row_ptr, lc.col_idx, 7, [3, 3], torch.randn(6), *geom)


@interpreter
def test_registered_triton_ops_match_dispatcher_ops(seed):
    """The KernelSet's triton_ops (schemas inferred from the launchers' annotations) take the dispatcher ops'
    arguments in the same order and agree with the C++ CPU ops (run eagerly in the interpreter)."""
    from sparsecl.ops import sparse_conv2d as sc

    geom = [2, 1], [1, 1], [1, 2]
    ops = torch.ops.sparsecl
    for ks, structure in ((sc._bsr_kernels, "block"), (sc._csr_kernels, "unstructured")):
        if ks._triton is None:
            ks._register_triton()
        x, values, layout, _ = _case((2, 20, 24, 7, 6, 3), 0.5, structure, torch.float32, torch.channels_last,
                                     poison_padding=False)
        bias = torch.randn(24)
        if structure == "block":
            args = [(x, values, layout.row_ptr, layout.col_idx, 24, bias, *geom)]
            extra_dx, extra_dw = [], [16, [3, 3]]
        else:
            args = [(x, values, layout.row_ptr, layout.col_idx, 24, [3, 3], bias, *geom)]
            extra_dx, extra_dw = [[3, 3]], [[3, 3]]
        g = torch.randn_like(ks._triton[0](*args[0]))
        args.append((g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, list(x.shape), *extra_dx, *geom))
        args.append((g, x, layout.row_idx, layout.col_idx, *extra_dw, *geom))
        for (name, _, _), triton_op, a in zip(ks.specs, ks._triton, args):
            assert_close(triton_op(*a), getattr(ops, name)(*a), torch.float32)


SM90_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {here!r})
    from _triton_sm90_check import compile_sm90
    from sparsecl.kernels import sparse_conv2d as K

    # integer arguments as a real launch passes them (compile_sm90 specialises 1 to a constexpr, as Triton's
    # launcher does): ResNet 256@14, batch 32, 3x3, padding 1, NCHW; stride 1 (x 14x14) and stride 2 (x 28x28)
    def nchw(p, c, h, w):
        return {{p + "_n": c * h * w, p + "_c": h * w, p + "_h": w, p + "_w": 1}}

    def geom(stride, h_in):
        g = dict(SH=stride, SW=stride, PH=1, PW=1, DH=1, DW=1, n_pix=32 * 14 * 14)
        return g, h_in

    types_idx = dict(ptr_ptr="*i32", idx_ptr="*i32", perm_ptr="*i32")
    m = K.BLOCK_META_CUDA
    for stride in (1, 2):
        g, h = geom(stride, 14 * stride)
        spatial = dict(H=h, W=h, HO=14, WO=14, O=256, C=256)
        # fp64: tl.dot needs out_dtype=fp64 (triton 3.6 asserts otherwise); stride 2 only in the bench dtypes
        for dt in ("bf16", "fp32", "fp64") if stride == 1 else ("bf16",):
            prec = "tf32" if dt == "bf16" else "ieee"
            for dx in (False, True):  # forward reads x [.., h, h] into y 14x14; dX reads dY 14x14 into dx
                ha, hd = (14, h) if dx else (h, 14)
                ints = dict(g, HA=ha, WA=ha, HD=hd, WD=hd, CK=256, CN=256, **nchw("sa", 256, ha, ha),
                            **nchw("so", 256, hd, hd))
                k = compile_sm90(K._block_gather_mm, dict(KH=3, KW=3, B=32, DX=dx, HAS_PERM=dx, HAS_BIAS=not dx,
                                 FP64=dt == "fp64", PRECISION=prec, BLOCK_P=m["BLOCK_P"]), "*" + dt, m["num_warps"],
                                 m["num_stages"], types=types_idx, ints=ints)
                print(f"gather {{dt}} stride={{stride}} dx={{dx}} mma={{'mma' in k.asm['ttgir']}}")
            ints = dict(g, **spatial, **nchw("sg", 256, 14, 14), **nchw("sx", 256, h, h))
            k = compile_sm90(K._block_dw, dict(KH=3, KW=3, B=32, FP64=dt == "fp64", PRECISION=prec,
                             BLOCK_P=m["BLOCK_P"]), "*" + dt, m["num_warps"], m["num_stages"], ints=ints)
            print(f"block_dw {{dt}} stride={{stride}} mma={{'mma' in k.asm['ttgir']}}")
        c = K.CSR_META_CUDA
        for dt in ("fp16", "fp64") if stride == 1 else ("fp16",):
            fp64 = dt == "fp64"
            meta = dict(KH=3, KW=3, FP64=fp64, NZ=c["NZ"], BLOCK_P=c["BLOCK_P"])
            fwd = dict(g, **spatial, **nchw("sx", 256, h, h), **nchw("so", 256, 14, 14))
            compile_sm90(K._csr_fwd, dict(meta, HAS_BIAS=True), "*" + dt, c["num_warps"], 1,
                         types=dict(ptr_ptr="*i32", idx_ptr="*i32"), ints=fwd)
            compile_sm90(K._csr_dx, meta, "*" + dt, c["num_warps"], 1, types=types_idx,
                         ints=dict(g, **spatial, **nchw("sg", 256, 14, 14), **nchw("so", 256, h, h)))
            compile_sm90(K._csr_dw, meta, "*" + dt, c["num_warps"], 1,
                         ints=dict(g, **spatial, **nchw("sg", 256, 14, 14), **nchw("sx", 256, h, h)))
            print(f"csr {{dt}} stride={{stride}} compiled")
''')


def test_triton_kernels_compile_for_sm90():
    """No GPU needed: every kernel compiles for Hopper; the block kernels' bf16 dots lower to MMA."""
    pytest.importorskip("triton.backends.nvidia")
    script = SM90_SCRIPT.format(here=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 15, run.stdout
    for line in lines:
        if "bf16" in line:  # fp32 runs IEEE products (FMA) unless TF32 is allowed
            assert "mma=True" in line, line


# ---- CUDA ------------------------------------------------------------------------------------
GPU_GEOMS = [
    pytest.param((4, 40, 72, 13, 11, 3, 1, 1, 1), id="odd"),
    pytest.param((3, 64, 64, 14, 14, 3, 2, 1, 1), id="stride2"),
    pytest.param((2, 33, 50, 9, 10, (3, 1), (2, 1), (0, 2), (2, 1)), id="rect-dil"),
]


def _gpu_check(backend, structure, geom, density, dtype, fmt, B=32):
    x, values, layout, w = _case(geom, density, structure, dtype, fmt, B=B, device="cuda", poison_padding=False)
    bias = torch.randn(geom[2], dtype=dtype, device="cuda")
    stride, padding, dilation = geom[6:]
    for t in (x, values, bias):
        t.requires_grad_(True)
    g = _out_grad(x, geom, dtype, fmt)
    op = "bsr_conv2d" if structure == "block" else "csr_conv2d"
    with sparsecl.use_backend(backend, op):
        if structure == "block":
            y = bsr_conv2d(x, values, layout, bias, stride, padding, dilation)
        else:
            y = csr_conv2d(x, values, layout, geom[5], bias, stride, padding, dilation)
        y.backward(g)
    ye, dxe, dve = _reference(x.detach(), w.detach(), layout, structure, bias.detach(), g, geom)
    assert y.dtype == dtype
    if fmt == torch.channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, ye, dtype)
    assert_close(x.grad, dxe, dtype)
    assert_close(values.grad, dve, dtype)
    assert_close(bias.grad, g.double().sum((0, 2, 3)), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("structure", ["block", "unstructured"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geom", GPU_GEOMS)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.cuda
@needs_cuda
def test_gpu_backend_matches_dense(backend, structure, dtype, geom, density, fmt, seed):
    skip_unusable(backend)
    _gpu_check(backend, structure, geom, density, dtype, fmt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [16, 64])
@pytest.mark.cuda
@needs_cuda
def test_gpu_block_sizes(backend, B, seed):
    skip_unusable(backend)
    _gpu_check(backend, "block", (2, 70, 45, 7, 9, 3, 1, 1, 1), 0.5, torch.float16, torch.channels_last, B=B)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("structure", ["block", "unstructured"])
@pytest.mark.cuda
@needs_cuda
def test_gpu_padding_never_read_and_strided(backend, structure, seed):
    """NaN in edge-block padding leaks into neither y nor dX; a strided x is read in place."""
    skip_unusable(backend)
    geom = (2, 40, 45, 9, 7, 3, 1, 1, 1)
    x, values, layout, w = _case(geom, 0.5, structure, torch.float32, torch.contiguous_format, B=32, device="cuda")
    xs = noncontiguous(x).requires_grad_(True)
    g = _out_grad(x, geom, torch.float32, torch.contiguous_format)
    op = "bsr_conv2d" if structure == "block" else "csr_conv2d"
    with sparsecl.use_backend(backend, op):
        y = bsr_conv2d(xs, values, layout, padding=1) if structure == "block" else \
            csr_conv2d(xs, values, layout, 3, padding=1)
        y.backward(g)
    ye, dxe, _ = _reference(x, w, layout, structure, None, g, geom)
    assert_close(y, ye, torch.float32)
    assert_close(xs.grad, dxe, torch.float32)


@pytest.mark.cuda
@needs_cuda
def test_gpu_cuda_opcheck(seed):
    skip_unusable("cuda")
    geom = [2, 1], [1, 1], [1, 2]
    ops = torch.ops.sparsecl
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, values, layout, _ = _case((2, 20, 24, 7, 6, 3), 0.6, "block", torch.float32, fmt, B=16, device="cuda",
                                     poison_padding=False)
        y = ops.bsr_conv2d(x, values, layout.row_ptr, layout.col_idx, 24, None, *geom)
        g = torch.randn_like(y)
        torch.library.opcheck(ops.bsr_conv2d, (x, values, layout.row_ptr, layout.col_idx, 24,
                                               torch.randn(24, device="cuda"), *geom))
        torch.library.opcheck(ops.bsr_conv2d_dx, (g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm,
                                                  list(x.shape), *geom))
        torch.library.opcheck(ops.bsr_conv2d_dw, (g, x, layout.row_idx, layout.col_idx, 16, [3, 3], *geom))
        x, values, layout, _ = _case((2, 5, 7, 6, 5, 3), 0.3, "unstructured", torch.float32, fmt, device="cuda")
        y = ops.csr_conv2d(x, values, layout.row_ptr, layout.col_idx, 7, [3, 3], None, *geom)
        g = torch.randn_like(y)
        torch.library.opcheck(ops.csr_conv2d, (x, values, layout.row_ptr, layout.col_idx, 7, [3, 3],
                                               torch.randn(7, device="cuda"), *geom))
        torch.library.opcheck(ops.csr_conv2d_dx, (g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm,
                                                  list(x.shape), [3, 3], *geom))
        torch.library.opcheck(ops.csr_conv2d_dw, (g, x, layout.row_idx, layout.col_idx, [3, 3], *geom))


@pytest.mark.cuda
@needs_cuda
def test_gpu_cuda_deterministic(seed):
    """The CUDA C++ kernels use no atomics: two runs give bit-identical results."""
    skip_unusable("cuda")
    geom = (4, 64, 64, 14, 14, 3, 1, 1, 1)
    for structure in ("block", "unstructured"):
        x, values, layout, _ = _case(geom, 0.3, structure, torch.float16, torch.channels_last, B=32, device="cuda",
                                     poison_padding=False)
        x.requires_grad_(True)
        values.requires_grad_(True)
        runs = []
        with sparsecl.use_backend("cuda"):
            for _ in range(2):
                x.grad = values.grad = None
                y = bsr_conv2d(x, values, layout, padding=1) if structure == "block" else \
                    csr_conv2d(x, values, layout, 3, padding=1)
                y.float().square().sum().backward()
                runs.append((y.detach().clone(), x.grad.clone(), values.grad.clone()))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.cuda
@needs_cuda
def test_gpu_compile_fullgraph(backend, seed):
    skip_unusable(backend)
    geom = (2, 24, 40, 9, 9, 3, 1, 1, 1)
    x, values, layout, _ = _case(geom, 0.5, "block", torch.float32, torch.channels_last, B=16, device="cuda",
                                 poison_padding=False)
    x.requires_grad_(True)
    values.requires_grad_(True)
    fn = lambda a, v: bsr_conv2d(a, v, layout, padding=1)  # noqa: E731
    with sparsecl.use_backend(backend, "bsr_conv2d"):
        ye = fn(x, values)  # eager first: registers the lazily created Triton ops outside of tracing
        ye.sum().backward()
        gx, gv = x.grad.clone(), values.grad.clone()
        x.grad = values.grad = None
        y = torch.compile(fn, fullgraph=True)(x, values)
        y.sum().backward()
    assert_close(y, ye)
    assert_close(x.grad, gx)
    assert_close(values.grad, gv)
