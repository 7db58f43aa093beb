"""csr_linear against a float64 dense reference: C++ CPU (and CUDA when present), reference fallback,
gradcheck, opcheck, torch.compile and bad input. Triton launchers are tested with the GPU kernels."""
import pytest
import torch

import sparsecl
from sparsecl.formats import CSRLayout
from sparsecl.ops import csr_linear
from sparsecl.ops.csr_linear import _reference_dw, _reference_dx, _reference_forward

from .._ref import CPU_ISAS, RUNTIME_ISA, assert_close, noncontiguous, ref_linear
from ..conftest import DEVICES

SHAPES = [  # (tokens, in, out): 0, 1, odd, not multiples of the 32-token panel or the 16-row group
    (0, 64, 64), (1, 1, 1), (1, 32, 32), (7, 96, 64), (65, 100, 70), (130, 17, 33), (5, 0, 9), (4, 9, 0),
]
DENSITIES = [0.0, "one", 0.1, 0.5, 1.0]

# tokens around the 32-token panel; with 1 or 2 threads both schedules run (one panel per job from
# 2 panels per thread up, else shared panels split by rows); rows not multiples of the 16-row group
ISA_SHAPES = [(0, 40, 48), (1, 64, 32), (20, 33, 17), (33, 100, 70), (65, 96, 130), (100, 72, 64), (130, 17, 33)]


def make_layout(shape, density, device):
    if density == "one":
        m = torch.zeros(shape, dtype=torch.bool)
        if m.numel():
            m.view(-1)[torch.randint(m.numel(), ())] = True
        return CSRLayout.from_mask(m.to(device))
    return CSRLayout.random(shape, density, device=device)


def random_case(T, in_f, out_f, density, device, dtype, lead=()):
    layout = make_layout((out_f, in_f), density, device)
    values = torch.randn(layout.nnz, device=device, dtype=dtype)
    x = torch.randn(*lead, T, in_f, device=device, dtype=dtype)
    bias = torch.randn(out_f, device=device, dtype=dtype)
    return x, values, layout, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_forward_backward_matches_dense(device, dtype, T, in_f, out_f, density, seed):
    x, values, layout, bias = random_case(T, in_f, out_f, density, device, dtype)
    x.requires_grad_(True)
    values.requires_grad_(True)
    bias.requires_grad_(True)
    y = csr_linear(x, values, layout, bias)
    xd, vd, bd = (t.detach().double().requires_grad_(True) for t in (x, values, bias))
    yd = ref_linear(xd, layout.to_dense(vd), bd)
    assert_close(y, yd, dtype)
    g = torch.randn_like(yd)
    y.backward(g.to(dtype))
    yd.backward(g)
    assert_close(x.grad, xd.grad, dtype)
    assert_close(bias.grad, bd.grad, dtype)
    assert_close(values.grad, vd.grad, dtype)  # SDDMM = dense dW at the nonzeros


@pytest.mark.parametrize("device", DEVICES)
def test_skewed_rows(device, seed):
    """Very unequal rows (one full row, many empty) exercise the nnz-balanced row split."""
    m = torch.zeros(300, 70, dtype=torch.bool)
    m[3] = True
    m[200, ::7] = True
    layout = CSRLayout.from_mask(m.to(device))
    values = torch.randn(layout.nnz, device=device)
    x = torch.randn(150, 70, device=device)
    assert_close(csr_linear(x, values, layout), ref_linear(x, layout.to_dense(values), None), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_and_noncontiguous(device, seed):
    x, values, layout, bias = random_case(6, 96, 80, 0.3, device, torch.float32, lead=(2, 3))
    assert_close(csr_linear(noncontiguous(x), values, layout, bias), ref_linear(x, layout.to_dense(values), bias),
                 torch.float32)
    vn = noncontiguous(values.unsqueeze(0)).squeeze(0)
    assert_close(csr_linear(x, vn, layout, None), ref_linear(x, layout.to_dense(values), None), torch.float32)
    assert csr_linear(x, values, layout, None).shape == (2, 3, 6, 80)


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_gradcheck_float64(density, seed):
    x, values, layout, bias = random_case(5, 13, 11, density, "cpu", torch.float64)
    args = tuple(t.requires_grad_(True) for t in (x, values, bias))
    assert torch.autograd.gradcheck(lambda a, v, b: csr_linear(a, v, layout, b), args)


def test_reference_kernels_match_cpp(seed):
    """The pure-torch fallback (used without the extension) computes the same as the C++ kernels."""
    x, values, layout, bias = random_case(9, 70, 50, 0.3, "cpu", torch.float64)
    ops = torch.ops.sparsecl
    assert_close(_reference_forward(x, values, layout.row_ptr, layout.col_idx, 50, bias),
                 ops.csr_linear(x, values, layout.row_ptr, layout.col_idx, 50, bias))
    g = torch.randn(9, 50, dtype=torch.float64)
    t = (layout.t_row_ptr, layout.t_col_idx, layout.t_perm)
    assert_close(_reference_dx(g, values, *t, 70), ops.csr_linear_dx(g, values, *t, 70))
    assert_close(_reference_dw(g, x, layout.row_idx, layout.col_idx),
                 ops.csr_linear_dw(g, x, layout.row_idx, layout.col_idx))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, seed):
    x, values, layout, bias = random_case(7, 48, 40, 0.3, device, torch.float32)
    ops = torch.ops.sparsecl
    g = torch.randn(7, 40, device=device)
    torch.library.opcheck(ops.csr_linear.default, (x, values, layout.row_ptr, layout.col_idx, 40, bias))
    torch.library.opcheck(ops.csr_linear.default, (x, values, layout.row_ptr, layout.col_idx, 40, None))
    torch.library.opcheck(ops.csr_linear_dx.default, (g, values, layout.t_row_ptr, layout.t_col_idx,
                                                      layout.t_perm, 48))
    torch.library.opcheck(ops.csr_linear_dw.default, (g, x, layout.row_idx, layout.col_idx))


def test_compile_fullgraph(seed):
    layer = sparsecl.nn.SparseLinear(64, 48, density=0.3, mode="csr")
    x = torch.randn(3, 5, 64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()
    assert_close(y, layer(x))
    assert_close(gx, x.grad)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,in_f,out_f", ISA_SHAPES)
@pytest.mark.parametrize("density", [0.0, "one", 0.3, 1.0])
def test_every_cpu_isa_matches_float64(isa, threads, T, in_f, out_f, density, monkeypatch, seed):
    """Forward, dX and dValues of each forced CPU path and thread count against the float64 reference."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, values, layout, bias = random_case(T, in_f, out_f, density, "cpu", torch.float32)
        ops = torch.ops.sparsecl
        w = layout.to_dense(values.double())
        y = ops.csr_linear(x, values, layout.row_ptr, layout.col_idx, out_f, bias)
        assert_close(y, x.double() @ w.T + bias.double(), torch.float32)
        g = torch.randn(T, out_f)
        for gi, xi in ((g, x), (noncontiguous(g), noncontiguous(x))):  # SIMD and strided transposes
            dx = ops.csr_linear_dx(gi, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, in_f)
            assert_close(dx, g.double() @ w, torch.float32)
            dv = ops.csr_linear_dw(gi, xi, layout.row_idx, layout.col_idx)
            assert_close(dv, layout.values_from_dense(g.double().T @ x.double()), torch.float32)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("op", ["forward", "dx", "dw"])
@pytest.mark.parametrize("request_isa,match", [("sse9", "SPARSECL_CPU_ISA must be generic, avx2 or avx512"),
                                               ("avx512", "this CPU supports at most")])
def test_cpu_isa_override_reaches_every_kernel(op, request_isa, match, monkeypatch):
    """SPARSECL_CPU_ISA is read by the CSR kernels' dispatch: a bad request raises from each of them."""
    if request_isa == "avx512" and RUNTIME_ISA == "avx512":
        pytest.skip("this CPU runs AVX-512, so asking for it is valid")
    layout = CSRLayout.random((40, 48), 0.5)
    values, x, g = torch.randn(layout.nnz), torch.randn(3, 48), torch.randn(3, 40)
    ops = torch.ops.sparsecl
    calls = {"forward": lambda: ops.csr_linear(x, values, layout.row_ptr, layout.col_idx, 40, None),
             "dx": lambda: ops.csr_linear_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, 48),
             "dw": lambda: ops.csr_linear_dw(g, x, layout.row_idx, layout.col_idx)}
    calls[op]()
    monkeypatch.setenv("SPARSECL_CPU_ISA", request_isa)
    with pytest.raises(RuntimeError, match=match):
        calls[op]()


class TestBadInput:
    def setup_method(self):
        self.layout = CSRLayout.random((64, 48), 0.3)
        self.values = torch.randn(self.layout.nnz)

    def test_wrong_features(self):
        with pytest.raises(ValueError, match="input features"):
            csr_linear(torch.randn(3, 49), self.values, self.layout)

    def test_wrong_values_shape(self):
        with pytest.raises(ValueError, match="values must be"):
            csr_linear(torch.randn(3, 48), self.values[:-1], self.layout)

    def test_dtype_mismatch(self):
        with pytest.raises(RuntimeError, match="dtype"):
            csr_linear(torch.randn(3, 48, dtype=torch.float64), self.values, self.layout)

    def test_unsupported_dtype_on_cpu(self):
        with pytest.raises(RuntimeError, match="unsupported dtype"):
            csr_linear(torch.randn(3, 48).half(), self.values.half(), self.layout)

    def test_not_a_layout(self):
        with pytest.raises(TypeError, match="CSRLayout"):
            csr_linear(torch.randn(3, 48), self.values, sparsecl.BlockSparseLayout.random((64, 48), 0.5, 16))

    def test_bias_shape(self):
        with pytest.raises(RuntimeError, match="bias"):
            csr_linear(torch.randn(3, 48), self.values, self.layout, torch.randn(63))

    def test_raw_op_rejects_out_of_range_index(self):
        col = self.layout.col_idx.clone()
        col[0] = 48
        with pytest.raises(RuntimeError, match="outside"):
            torch.ops.sparsecl.csr_linear(torch.randn(3, 48), self.values, self.layout.row_ptr, col, 64, None)

    def test_raw_op_rejects_bad_row_ptr(self):
        rp = self.layout.row_ptr.clone()
        rp[-1] += 1
        with pytest.raises(RuntimeError, match="row_ptr"):
            torch.ops.sparsecl.csr_linear(torch.randn(3, 48), self.values, rp, self.layout.col_idx, 64, None)
        with pytest.raises(RuntimeError, match="row_ptr must have"):
            torch.ops.sparsecl.csr_linear(torch.randn(3, 48), self.values, self.layout.row_ptr, self.layout.col_idx,
                                          63, None)

    def test_raw_op_rejects_int64_index(self):
        with pytest.raises(RuntimeError, match="int32"):
            torch.ops.sparsecl.csr_linear(torch.randn(3, 48), self.values, self.layout.row_ptr.long(),
                                          self.layout.col_idx, 64, None)

    def test_dw_rejects_unsorted_rows(self):
        ri = self.layout.row_idx.flip(0).contiguous()
        with pytest.raises(RuntimeError, match="non-decreasing"):
            torch.ops.sparsecl.csr_linear_dw(torch.randn(3, 64), torch.randn(3, 48), ri, self.layout.col_idx)

    def test_dx_rejects_bad_perm(self):
        perm = self.layout.t_perm.clone()
        perm[0] = self.layout.nnz
        with pytest.raises(RuntimeError, match="t_perm"):
            torch.ops.sparsecl.csr_linear_dx(torch.randn(3, 64), self.values, self.layout.t_row_ptr,
                                             self.layout.t_col_idx, perm, 48)
