"""bsr_linear on GPU backends against a float64 dense reference.

* Triton launchers (sparsecl.kernels.bsr_linear) run in the interpreter on CPU tensors when
  TRITON_INTERPRET=1 (conftest's default): small shapes,
  fp32 compared exactly enough (IEEE products), fp64 and fp16 too. The interpreter of triton 3.8
  computes bf16 ``tl.dot`` wrongly, so bf16 is checked on CUDA only.
* On CUDA: the triton and cuda backends through the public op (forward + backward), fp32/fp16/bf16,
  autocast and torch.compile(fullgraph=True). Triton on CUDA is tested only with TRITON_INTERPRET=0
  (bench/gpu.sh sets it), because the interpreter would stand in for the compiled kernels.
"""
import os
import subprocess
import sys

import pytest
import torch

import sparsecl
from sparsecl.formats import BlockSparseLayout
from sparsecl.kernels_loader import triton_available
from sparsecl.ops import bsr_linear

from .._ref import assert_close, noncontiguous
from ._gpu import BACKENDS, interpreter, needs_cuda, skip_unusable
from .test_bsr_linear import make_layout

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not usable here")


def _kernels():
    from sparsecl.kernels import bsr_linear as k

    return k


def _case(T, in_f, out_f, density, B, dtype, device="cpu", poison_padding=True):
    layout = make_layout((out_f, in_f), density, B, device)
    values = torch.randn(layout.nnzb, B, B, dtype=dtype, device=device)
    if poison_padding:  # entries of edge blocks outside the matrix must never be read
        inside = layout.values_from_dense(torch.ones(out_f, in_f, dtype=dtype, device=device)).bool()
        values = values.masked_fill(~inside, float("nan"))
    x = torch.randn(T, in_f, dtype=dtype, device=device)
    return x, values, layout


def _reference(x, values, layout, bias, g):
    """(y, dx, dvalues) in float64; dvalues restricted to active blocks, zero in padding."""
    w = layout.to_dense(values.double())
    y = x.double() @ w.T + (bias.double() if bias is not None else 0)
    dv = layout.values_from_dense(g.double().T @ x.double())
    return y, g.double() @ w, dv


def _run_launchers(x, values, layout, bias, g):
    k = _kernels()
    out_f, in_f = layout.shape
    y = k.bsr_linear_forward(x, values, layout.row_ptr, layout.col_idx, out_f, bias)
    dx = k.bsr_linear_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, in_f)
    dv = k.bsr_linear_dw(g, x, layout.row_idx, layout.col_idx, layout.block_size)
    return y, dx, dv


INTERP_CASES = [  # (B, T, in, out, density)
    (16, 0, 64, 48, 1.0), (16, 1, 32, 48, "one"), (16, 7, 40, 36, 0.5), (16, 33, 48, 48, 0.5),
    (32, 5, 17, 70, 1.0), (32, 3, 96, 64, 0.0), (32, 4, 64, 40, "one"), (32, 6, 200, 130, 0.1),
    (64, 9, 100, 70, 0.5), (64, 1, 64, 64, 1.0),
]


@interpreter
@pytest.mark.parametrize("swap", [False, True], ids=["tile_TxB", "tile_BxT"])
@pytest.mark.parametrize("B,T,in_f,out_f,density", INTERP_CASES)
def test_launchers_interpreter_fp32(B, T, in_f, out_f, density, swap, seed, monkeypatch):
    """Both tile orientations of the gather kernel (SWAP is an autotune choice on CUDA)."""
    monkeypatch.setitem(_kernels().GATHER_INTERPRET_META, "SWAP", swap)
    x, values, layout = _case(T, in_f, out_f, density, B, torch.float32)
    bias = torch.randn(out_f) if T % 2 else None
    g = torch.randn(T, out_f)
    got = _run_launchers(x, values, layout, bias, g)
    for a, e in zip(got, _reference(x, values, layout, bias, g)):
        assert_close(a, e, torch.float32)


@interpreter
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_launchers_interpreter_other_dtypes(dtype, seed):
    x, values, layout = _case(19, 40, 50, 0.5, 16, dtype)
    bias = torch.randn(50, dtype=dtype)
    g = torch.randn(19, 50, dtype=dtype)
    got = _run_launchers(x, values, layout, bias, g)
    for a, e in zip(got, _reference(x, values, layout, bias, g)):
        assert a.dtype == dtype
        assert_close(a, e, dtype)


@interpreter
def test_launchers_interpreter_strided_inputs(seed):
    """x and grad_out as non-contiguous views (every other column) and a transposed view."""
    x, values, layout = _case(6, 40, 36, 0.5, 16, torch.float32)
    g = torch.randn(6, 36)
    y, dx, dv = _run_launchers(noncontiguous(x), values, layout, None, noncontiguous(g))
    ye, dxe, dve = _reference(x, values, layout, None, g)
    assert_close(y, ye, torch.float32)
    assert_close(dx, dxe, torch.float32)
    assert_close(dv, dve, torch.float32)
    xt = x.T.contiguous().T
    assert not xt.is_contiguous()
    assert_close(_kernels().bsr_linear_forward(xt, values, layout.row_ptr, layout.col_idx, 36, None), ye,
                 torch.float32)


@interpreter
def test_launchers_reject_bad_input():
    k = _kernels()
    layout = BlockSparseLayout.random((32, 32), 1.0, 16)
    values = torch.randn(layout.nnzb, 16, 16)
    x = torch.randn(3, 32)
    with pytest.raises(ValueError, match="dtype"):
        k.bsr_linear_forward(x.double(), values, layout.row_ptr, layout.col_idx, 32, None)
    with pytest.raises(ValueError, match="row_ptr must have"):
        k.bsr_linear_forward(x, values, layout.row_ptr, layout.col_idx, 64, None)
    with pytest.raises(ValueError, match="int32"):
        k.bsr_linear_forward(x, values, layout.row_ptr.long(), layout.col_idx, 32, None)
    with pytest.raises(ValueError, match="bias"):
        k.bsr_linear_forward(x, values, layout.row_ptr, layout.col_idx, 32, torch.randn(31))
    with pytest.raises(ValueError, match="t_perm"):
        k.bsr_linear_dx(x, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm[:-1], 32)
    with pytest.raises(ValueError, match="equal T"):
        k.bsr_linear_dw(x, x[:2], layout.row_idx, layout.col_idx, 16)
    with pytest.raises(ValueError, match="unsupported dtype"):
        k.bsr_linear_dw(x.int(), x.int(), layout.row_idx, layout.col_idx, 16)


def test_triton_kernels_compile_for_sm90_with_wgmma():
    """No GPU needed: the kernels compile for Hopper, every variant keeps a load in flight across its in-loop
    wait, and bf16 dots lower to wgmma fed by >= 3 buffers (tests/gpu_static gates every autotune config)."""
    pytest.importorskip("triton.backends.nvidia")
    script = os.path.join(os.path.dirname(__file__), "_triton_sm90_check.py")
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 9, run.stdout
    for line in lines:
        facts = dict(f.split("=") for f in line.split()[-3:])
        assert int(facts["buffers"]) >= 2 and int(facts["loop_wait"]) >= 1, line
        if "bf16" in line:
            assert int(facts["wgmma"]) > 0 and int(facts["buffers"]) >= 3, line


# ---- CUDA ------------------------------------------------------------------------------------
GPU_SHAPES = [pytest.param(1, 64, 64, id="T1"), pytest.param(257, 200, 300, id="T257"),
              pytest.param(64, 17, 130, id="T64odd")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B", [16, 32, 64])
@pytest.mark.parametrize("T,in_f,out_f", GPU_SHAPES)
@pytest.mark.parametrize("density", [0.0, "one", 0.5, 1.0])
@pytest.mark.cuda
@needs_cuda
def test_gpu_backend_matches_dense(backend, dtype, B, T, in_f, out_f, density, seed):
    skip_unusable(backend)
    x, values, layout = _case(T, in_f, out_f, density, B, dtype, "cuda", poison_padding=False)
    bias = torch.randn(out_f, dtype=dtype, device="cuda")
    x.requires_grad_(True)
    values.requires_grad_(True)
    bias.requires_grad_(True)
    g = torch.randn(T, out_f, dtype=dtype, device="cuda")
    with sparsecl.use_backend(backend, "bsr_linear"):
        y = bsr_linear(x, values, layout, bias)
        y.backward(g)
    ye, dxe, dve = _reference(x.detach(), values.detach(), layout, bias.detach(), g)
    assert y.dtype == dtype
    assert_close(y, ye, dtype)
    assert_close(x.grad, dxe, dtype)
    assert_close(values.grad, dve, dtype)
    assert_close(bias.grad, g.double().sum(0), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.cuda
@needs_cuda
def test_gpu_launchers_padding_never_read(dtype, seed):
    """NaN in the padding of edge blocks must not leak; strided x; padding gradient written 0."""
    skip_unusable("triton")
    x, values, layout = _case(45, 70, 90, 0.5, 32, dtype, "cuda")
    g = torch.randn(45, 90, dtype=dtype, device="cuda")
    got = _run_launchers(noncontiguous(x), values, layout, None, g)
    for a, e in zip(got, _reference(x, values, layout, None, g)):
        assert_close(a, e, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.cuda
@needs_cuda
def test_gpu_backend_padding_never_read(backend, dtype, seed):
    """Through the op: NaN padding in edge blocks leaks into neither y nor dX."""
    skip_unusable(backend)
    x, values, layout = _case(45, 70, 90, 0.5, 32, dtype, "cuda")
    x.requires_grad_(True)
    g = torch.randn(45, 90, dtype=dtype, device="cuda")
    with sparsecl.use_backend(backend, "bsr_linear"):
        y = bsr_linear(x, values, layout)
        y.backward(g)
    ye, dxe, _ = _reference(x.detach(), values, layout, None, g)
    assert_close(y, ye, dtype)
    assert_close(x.grad, dxe, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.cuda
@needs_cuda
def test_gpu_autocast(backend, seed):
    skip_unusable(backend)
    layer = sparsecl.nn.BlockSparseLinear(96, 80, density=0.5, block_size=32, device="cuda")
    x = torch.randn(4, 7, 96, device="cuda", requires_grad=True)
    with sparsecl.use_backend(backend, "bsr_linear"), torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = x.detach().bfloat16().double() @ layer.dense_weight().detach().bfloat16().double().T
    ref = ref + layer.bias.detach().bfloat16().double()
    assert_close(y, ref, torch.bfloat16)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and layer.values.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.cuda
@needs_cuda
def test_gpu_compile_fullgraph(backend, seed):
    skip_unusable(backend)
    layer = sparsecl.nn.BlockSparseLinear(128, 96, density=0.5, block_size=32, device="cuda")
    x = torch.randn(3, 5, 128, device="cuda", requires_grad=True)
    with sparsecl.use_backend(backend, "bsr_linear"):
        # eager first: it also registers the lazily created Triton ops outside of tracing
        ye = layer(x)
        ye.sum().backward()
        gx, gv = x.grad.clone(), layer.values.grad.clone()
        x.grad = layer.values.grad = None
        y = torch.compile(layer, fullgraph=True)(x)
        y.sum().backward()
    assert_close(y, ye)
    assert_close(x.grad, gx)
    assert_close(layer.values.grad, gv)
