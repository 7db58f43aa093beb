"""Masked linear GPU kernels against float64 dense references.

* Triton launchers (kernels/masked_linear.py) on CPU tensors in the interpreter: forward with the mask
  fused into the weight-tile loads, dX, dW exactly 0 outside grad_mask; edge shapes, densities 0..1,
  strided inputs, bad input.
* The pure-torch kernels of the "aten" backend (the GPU default, cuBLAS on weight*mask) on CPU tensors.
* On CUDA (skipped without a GPU): the CUDA C++ ops (torch.ops.sparsecl.masked_linear*), the Triton
  launchers and the "aten" kernels for fp32/fp16/bf16 (and fp64).
"""
import pytest
import torch

from sparsecl.kernels.masked_linear import masked_linear_dw, masked_linear_dx, masked_linear_forward
from sparsecl.ops.masked_linear import _reference_dw, _reference_dx, _reference_forward

from .._ref import assert_close, dispatcher_ops, noncontiguous

CUDA = torch.cuda.is_available()
SHAPES = [(0, 16, 8), (1, 9, 5), (7, 33, 17), (20, 18, 40)]  # (tokens, in, out)
DENSITIES = [0.0, 0.1, 0.5, 1.0]


def random_case(T, in_f, out_f, density, device, dtype):
    w = torch.randn(out_f, in_f, device=device, dtype=dtype)
    mask = torch.rand(out_f, in_f, device=device) < density
    grad_mask = mask & (torch.rand(out_f, in_f, device=device) < 0.7)  # frozen weights: in mask, not trained
    x = torch.randn(T, in_f, device=device, dtype=dtype)
    bias = torch.randn(out_f, device=device, dtype=dtype)
    return x, w, mask, grad_mask, bias


def check_all(fwd, dx_fn, dw_fn, x, w, mask, grad_mask, bias, dtype):
    w_before = w.clone()
    wm = w.double() * mask
    y = fwd(x, w, mask, bias)
    assert y.shape == (x.shape[0], w.shape[0]) and y.dtype == dtype
    assert_close(y, x.double() @ wm.T + bias.double(), dtype)
    assert_close(fwd(x, w, mask, None), x.double() @ wm.T, dtype)
    assert torch.equal(w, w_before), "weight was modified"
    g = torch.randn(x.shape[0], w.shape[0], device=x.device, dtype=dtype)
    assert_close(dx_fn(g, w, mask), g.double() @ wm, dtype)
    dw = dw_fn(g, x, grad_mask)
    assert dw.shape == w.shape
    assert_close(dw, (g.double().T @ x.double()) * grad_mask, dtype)
    assert (dw[~grad_mask] == 0).all(), "dW must be exactly 0 outside grad_mask"


@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_triton_matches_dense(T, in_f, out_f, density, seed):
    check_all(masked_linear_forward, masked_linear_dx, masked_linear_dw,
              *random_case(T, in_f, out_f, density, "cpu", torch.float32), torch.float32)


def test_triton_strided_inputs_and_float64(seed):
    x, w, mask, grad_mask, bias = random_case(6, 21, 10, 0.5, "cpu", torch.float64)
    wt = w.t().contiguous().t()  # column-major weight
    mt = mask.t().contiguous().t()
    xn = noncontiguous(x)
    wm = w * mask
    assert_close(masked_linear_forward(xn, wt, mt, bias), x @ wm.T + bias)
    gt = torch.randn(10, 6, dtype=torch.float64).t()
    assert_close(masked_linear_dx(gt, wt, mt), gt @ wm)
    assert_close(masked_linear_dw(gt, xn, grad_mask.t().contiguous().t()), (gt.T @ x) * grad_mask)


def test_triton_bad_input_raises():
    x, w, mask, grad_mask, bias = random_case(3, 8, 6, 0.5, "cpu", torch.float32)
    with pytest.raises(ValueError, match="bool"):
        masked_linear_forward(x, w, mask.float(), bias)
    with pytest.raises(ValueError, match="shape"):
        masked_linear_forward(x, w, mask[:, :4], bias)
    with pytest.raises(ValueError, match="input features"):
        masked_linear_forward(x[:, :5], w, mask, bias)
    with pytest.raises(ValueError, match="dtype"):
        masked_linear_forward(x, w.double(), mask, bias)
    with pytest.raises(ValueError, match="bias"):
        masked_linear_forward(x, w, mask, bias[:2])
    with pytest.raises(ValueError, match="outputs"):
        masked_linear_dx(x, w, mask)
    with pytest.raises(ValueError, match="grad_mask"):
        masked_linear_dw(torch.randn(3, 6), x, grad_mask.t())


# CUDA: the C++ kernels and the Triton launchers ---------------------------------------------------
CUDA_SHAPES = [(1, 37, 23), (16, 200, 130), (129, 64, 64), (300, 129, 70)]


ATEN = (_reference_forward, _reference_dx, _reference_dw)
BACKENDS = {
    "cuda": dispatcher_ops("masked_linear", "masked_linear_dx", "masked_linear_dw"),
    "triton": (masked_linear_forward, masked_linear_dx, masked_linear_dw),
    "aten": ATEN,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_aten_kernels_match_dense(T, in_f, out_f, density, dtype, seed):
    check_all(*ATEN, *random_case(T, in_f, out_f, density, "cpu", dtype), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("T,in_f,out_f", CUDA_SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_cuda_backends_match_dense(backend, dtype, T, in_f, out_f, density, seed):
    import sparsecl  # noqa: F401  (loads the extension that registers the CUDA kernels)

    if dtype == torch.float32:  # the reference is IEEE fp32; TF32 would need looser tolerances
        torch.backends.cuda.matmul.allow_tf32 = False
    check_all(*BACKENDS[backend], *random_case(T, in_f, out_f, density, "cuda", dtype), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_cuda_strided_inputs(backend, seed):
    import sparsecl  # noqa: F401

    x, w, mask, grad_mask, bias = random_case(70, 96, 40, 0.5, "cuda", torch.float16)
    fwd, dx_fn, dw_fn = BACKENDS[backend]
    wt, mt, xn = w.t().contiguous().t(), mask.t().contiguous().t(), noncontiguous(x)
    wm = w.double() * mask
    assert_close(fwd(xn, wt, mt, bias), x.double() @ wm.T + bias.double(), torch.float16)
    gt = torch.randn(40, 70, device="cuda", dtype=torch.float16).t()
    assert_close(dx_fn(gt, wt, mt), gt.double() @ wm, torch.float16)
    assert_close(dw_fn(gt, xn, grad_mask), (gt.double().T @ x.double()) * grad_mask, torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bad_input_raises():
    import sparsecl  # noqa: F401

    x, w, mask, grad_mask, bias = random_case(3, 8, 6, 0.5, "cuda", torch.float32)
    with pytest.raises(RuntimeError, match="bool"):
        torch.ops.sparsecl.masked_linear(x, w, mask.float(), bias)
    with pytest.raises(RuntimeError, match="input features"):
        torch.ops.sparsecl.masked_linear(x[:, :5], w, mask, bias)
    with pytest.raises(RuntimeError, match="grad_mask"):
        torch.ops.sparsecl.masked_linear_dw(torch.randn(3, 6, device="cuda"), x, grad_mask.t())
