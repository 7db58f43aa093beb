"""CSR linear GPU kernels against float64 dense references.

* Triton launchers (kernels/csr_linear.py) on CPU tensors in the interpreter: forward, dX through the
  transposed index, dValues (SDDMM) for edge shapes, densities 0..1, skewed rows, strided inputs.
* On CUDA (skipped without a GPU): the CUDA C++ ops (torch.ops.sparsecl.csr_linear*) and the Triton
  launchers for fp32/fp16/bf16 (and fp64 CUDA), both the skinny (T <= 32) and the wide path.
"""
import pytest
import torch

from sparsecl.kernels.csr_linear import csr_index, csr_linear_dw, csr_linear_dx, csr_linear_forward

from .._ref import assert_close, dispatcher_ops, noncontiguous

CUDA = torch.cuda.is_available()
SHAPES = [(0, 16, 8), (1, 9, 5), (7, 33, 17), (33, 20, 31)]  # (tokens, in, out)
DENSITIES = [0.0, 0.1, 0.5, 1.0]


def random_case(T, in_f, out_f, density, device, dtype, skew=False):
    mask = torch.rand(out_f, in_f, device=device) < density
    if skew and out_f > 2:  # one full row, one empty row: rows of very different lengths
        mask[1] = True
        mask[2] = False
    idx = csr_index(mask)
    w = torch.randn(out_f, in_f, device=device, dtype=dtype) * mask
    values = w[mask].contiguous()
    x = torch.randn(T, in_f, device=device, dtype=dtype)
    bias = torch.randn(out_f, device=device, dtype=dtype)
    return x, w, values, idx, bias


def check_all(fwd, dx_fn, dw_fn, x, w, values, idx, bias, dtype):
    row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = idx
    out_f, in_f = w.shape
    wd, xd = w.double(), x.double()
    bias_before = bias.clone()
    y = fwd(x, values, row_ptr, col_idx, out_f, bias)
    assert torch.equal(bias, bias_before), "bias was modified"
    assert y.shape == (x.shape[0], out_f) and y.dtype == dtype
    assert_close(y, xd @ wd.T + bias.double(), dtype)
    assert_close(fwd(x, values, row_ptr, col_idx, out_f, None), xd @ wd.T, dtype)
    g = torch.randn(x.shape[0], out_f, device=x.device, dtype=dtype)
    dx = dx_fn(g, values, t_row_ptr, t_col_idx, t_perm, in_f)
    assert dx.shape == x.shape
    assert_close(dx, g.double() @ wd, dtype)
    dv = dw_fn(g, x, row_idx, col_idx)
    assert dv.shape == values.shape
    assert_close(dv, (g.double().T @ xd)[row_idx.long(), col_idx.long()], dtype)


@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_triton_matches_dense(T, in_f, out_f, density, seed):
    case = random_case(T, in_f, out_f, density, "cpu", torch.float32)
    check_all(csr_linear_forward, csr_linear_dx, csr_linear_dw, *case, torch.float32)


def test_triton_skewed_rows_and_strided_inputs(seed):
    x, w, values, idx, bias = random_case(9, 70, 12, 0.05, "cpu", torch.float32, skew=True)
    xn = noncontiguous(x)
    row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = idx
    y = csr_linear_forward(xn, values, row_ptr, col_idx, 12, bias)
    assert_close(y, x.double() @ w.double().T + bias.double(), torch.float32)
    gt = torch.randn(12, 9).t()  # transposed view
    assert_close(csr_linear_dx(gt, values, t_row_ptr, t_col_idx, t_perm, 70), gt.double() @ w.double(), torch.float32)
    assert_close(csr_linear_dw(gt, xn, row_idx, col_idx),
                 (gt.double().T @ x.double())[row_idx.long(), col_idx.long()], torch.float32)


def test_triton_float64(seed):
    case = random_case(5, 13, 11, 0.5, "cpu", torch.float64)
    check_all(csr_linear_forward, csr_linear_dx, csr_linear_dw, *case, torch.float64)


def test_triton_bad_input_raises():
    x, w, values, idx, bias = random_case(3, 8, 6, 0.5, "cpu", torch.float32)
    row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = idx
    with pytest.raises(ValueError, match="int32"):
        csr_linear_forward(x, values, row_ptr.long(), col_idx, 6, bias)
    with pytest.raises(ValueError, match="row_ptr must have 8"):
        csr_linear_forward(x, values, row_ptr, col_idx, 7, None)
    with pytest.raises(ValueError, match="dtype"):
        csr_linear_forward(x, values.double(), row_ptr, col_idx, 6, None)
    with pytest.raises(ValueError, match="unsupported dtype"):
        csr_linear_forward(x.int(), values.int(), row_ptr, col_idx, 6, None)
    with pytest.raises(ValueError, match="bias"):
        csr_linear_forward(x, values, row_ptr, col_idx, 6, bias[:3])
    with pytest.raises(ValueError, match="t_perm"):
        csr_linear_dx(x[:, :6], values, t_row_ptr, t_col_idx, t_perm[:-1], 8)
    with pytest.raises(ValueError, match="equal T"):
        csr_linear_dw(x[:2, :6], x, row_idx, col_idx)


# CUDA: the C++ kernels and the Triton launchers ---------------------------------------------------
CUDA_SHAPES = [(1, 37, 23), (16, 200, 130), (29, 64, 64), (300, 129, 70), (130, 1000, 33)]


BACKENDS = {
    "cuda": dispatcher_ops("csr_linear", "csr_linear_dx", "csr_linear_dw"),
    "triton": (csr_linear_forward, csr_linear_dx, csr_linear_dw),
}


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("T,in_f,out_f", CUDA_SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_cuda_backends_match_dense(backend, dtype, T, in_f, out_f, density, seed):
    import sparsecl  # noqa: F401  (loads the extension that registers the CUDA kernels)

    case = random_case(T, in_f, out_f, density, "cuda", dtype, skew=True)
    check_all(*BACKENDS[backend], *case, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_cuda_strided_inputs(backend, seed):
    import sparsecl  # noqa: F401

    x, w, values, idx, bias = random_case(70, 96, 40, 0.2, "cuda", torch.float16)
    fwd, dx_fn, dw_fn = BACKENDS[backend]
    row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = idx
    xn = noncontiguous(x)
    assert_close(fwd(xn, values, row_ptr, col_idx, 40, bias), x.double() @ w.double().T + bias.double(), torch.float16)
    gt = torch.randn(40, 70, device="cuda", dtype=torch.float16).t()
    assert_close(dx_fn(gt, values, t_row_ptr, t_col_idx, t_perm, 96), gt.double() @ w.double(), torch.float16)
    assert_close(dw_fn(gt, xn, row_idx, col_idx), (gt.double().T @ x.double())[row_idx.long(), col_idx.long()],
                 torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bad_input_raises():
    import sparsecl  # noqa: F401

    x, w, values, idx, bias = random_case(3, 8, 6, 0.5, "cuda", torch.float32)
    row_ptr, col_idx = idx[0], idx[1]
    with pytest.raises(RuntimeError, match="int32"):
        torch.ops.sparsecl.csr_linear(x, values, row_ptr.long(), col_idx, 6, bias)
    with pytest.raises(RuntimeError, match="row_ptr must have"):
        torch.ops.sparsecl.csr_linear(x, values, row_ptr, col_idx, 7, None)
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.sparsecl.csr_linear(x, values.cpu(), row_ptr, col_idx, 6, None)
