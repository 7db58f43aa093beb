"""bsr_linear against a float64 dense reference: C++ CPU (and CUDA when present), reference fallback,
gradcheck, opcheck, torch.compile and bad input. Triton launchers: tests/ops/test_bsr_linear_triton.py."""
import pytest
import torch

import sparsecl
from sparsecl.formats import BlockSparseLayout
from sparsecl.ops import bsr_linear
from sparsecl.ops.bsr_linear import _reference_dw, _reference_dx, _reference_forward

from .._ref import CPU_ISAS, assert_close, noncontiguous, ref_linear
from ..conftest import DEVICES

SHAPES = [  # (tokens, in, out)
    (0, 64, 64), (1, 32, 32), (7, 96, 64), (33, 100, 70), (5, 17, 130),
]
DENSITIES = [0.0, "one", 0.1, 0.5, 1.0]

# token counts around the panel heights (14 on AVX-512, 6 on AVX2) and the SDDMM pass length (64)
ISA_SHAPES = [  # (tokens, in, out)
    (0, 40, 48), (1, 64, 32), (13, 100, 70), (29, 96, 130), (150, 72, 64), (70, 33, 17),
]


def make_layout(shape, density, B, device):
    out_f, in_f = shape
    if density == "one":
        nb = (-(-out_f // B), -(-in_f // B))
        m = torch.zeros(nb, dtype=torch.bool)
        m[torch.randint(nb[0], ()), torch.randint(nb[1], ())] = True
        return BlockSparseLayout.from_block_mask(m.to(device), shape, B)
    return BlockSparseLayout.random(shape, density, B, device=device)


def random_case(T, in_f, out_f, density, B, device, dtype, lead=()):
    layout = make_layout((out_f, in_f), density, B, device)
    values = torch.randn(layout.nnzb, B, B, device=device, dtype=dtype)
    x = torch.randn(*lead, T, in_f, device=device, dtype=dtype)
    bias = torch.randn(out_f, device=device, dtype=dtype)
    return x, values, layout, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [16, 32, 64])
@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_forward_backward_matches_dense(device, B, T, in_f, out_f, density, seed):
    x, values, layout, bias = random_case(T, in_f, out_f, density, B, device, torch.float32)
    x.requires_grad_(True)
    values.requires_grad_(True)
    bias.requires_grad_(True)
    y = bsr_linear(x, values, layout, bias)
    xd, vd, bd = (t.detach().double().requires_grad_(True) for t in (x, values, bias))
    yd = ref_linear(xd, layout.to_dense(vd), bd)
    assert_close(y, yd, torch.float32)
    g = torch.randn_like(yd)
    y.backward(g.float())
    yd.backward(g)
    assert_close(x.grad, xd.grad, torch.float32)
    assert_close(bias.grad, bd.grad, torch.float32)
    # dValues: reference is the dense gradient restricted to active blocks; padding entries are zero
    assert_close(values.grad, vd.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_and_noncontiguous(device, seed):
    x, values, layout, bias = random_case(6, 96, 80, 0.5, 32, device, torch.float32, lead=(2, 3))
    xn = noncontiguous(x)
    assert_close(bsr_linear(xn, values, layout, bias), ref_linear(x, layout.to_dense(values), bias), torch.float32)
    assert bsr_linear(x, values, layout, None).shape == (2, 3, 6, 80)


@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_gradcheck_float64(density, seed):
    x, values, layout, bias = random_case(5, 40, 36, density, 16, "cpu", torch.float64)
    args = tuple(t.requires_grad_(True) for t in (x, values, bias))
    assert torch.autograd.gradcheck(lambda a, v, b: bsr_linear(a, v, layout, b), args)


def test_reference_kernels_match_cpp(seed):
    """The pure-torch fallback (used without the extension) computes the same as the C++ kernels."""
    x, values, layout, bias = random_case(9, 70, 50, 0.5, 16, "cpu", torch.float64)
    ops = torch.ops.sparsecl
    assert_close(_reference_forward(x, values, layout.row_ptr, layout.col_idx, 50, bias),
                 ops.bsr_linear(x, values, layout.row_ptr, layout.col_idx, 50, bias))
    g = torch.randn(9, 50, dtype=torch.float64)
    t = (layout.t_row_ptr, layout.t_col_idx, layout.t_perm)
    assert_close(_reference_dx(g, values, *t, 70), ops.bsr_linear_dx(g, values, *t, 70))
    assert_close(_reference_dw(g, x, layout.row_idx, layout.col_idx, 16),
                 ops.bsr_linear_dw(g, x, layout.row_idx, layout.col_idx, 16))


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("B", [16, 32, 64])
@pytest.mark.parametrize("T,in_f,out_f", ISA_SHAPES)
@pytest.mark.parametrize("density", [0.0, "one", 0.5, 1.0])
def test_every_cpu_isa_matches_float64(isa, B, T, in_f, out_f, density, monkeypatch, seed):
    """Forward, dX and dValues of each forced CPU path against the float64 dense reference."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    x, values, layout, bias = random_case(T, in_f, out_f, density, B, "cpu", torch.float32)
    ops = torch.ops.sparsecl
    w = layout.to_dense(values.double())
    y = ops.bsr_linear(x, values, layout.row_ptr, layout.col_idx, out_f, bias)
    assert_close(y, x.double() @ w.T + bias.double(), torch.float32)
    g = torch.randn(T, out_f)
    dx = ops.bsr_linear_dx(g, values, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, in_f)
    assert_close(dx, g.double() @ w, torch.float32)
    dv = ops.bsr_linear_dw(g, x, layout.row_idx, layout.col_idx, B)
    assert_close(dv, layout.values_from_dense(g.double().T @ x.double()), torch.float32)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("B", [16, 32, 64])
def test_padding_entries_never_read(isa, B, monkeypatch, seed):
    """NaN in the out-of-range part of clipped edge blocks must not reach any output; their gradient is 0."""
    monkeypatch.setenv("SPARSECL_CPU_ISA", isa)
    out_f, in_f, T = B + 5, 2 * B + 3, 17
    layout = BlockSparseLayout.random((out_f, in_f), 1.0, B)
    values = torch.randn(layout.nnzb, B, B)
    valid = layout.values_from_dense(torch.ones(out_f, in_f)).bool()
    poisoned = values.masked_fill(~valid, float("nan"))
    x, g = torch.randn(T, in_f), torch.randn(T, out_f)
    w = layout.to_dense(values.double())
    ops = torch.ops.sparsecl
    assert_close(ops.bsr_linear(x, poisoned, layout.row_ptr, layout.col_idx, out_f, None), x.double() @ w.T,
                 torch.float32)
    assert_close(ops.bsr_linear_dx(g, poisoned, layout.t_row_ptr, layout.t_col_idx, layout.t_perm, in_f),
                 g.double() @ w, torch.float32)
    dv = ops.bsr_linear_dw(g, x, layout.row_idx, layout.col_idx, B)
    assert (dv[~valid] == 0).all()
    assert_close(dv, layout.values_from_dense(g.double().T @ x.double()), torch.float32)


def test_bad_cpu_isa_request(monkeypatch):
    monkeypatch.setenv("SPARSECL_CPU_ISA", "sse9")
    layout = BlockSparseLayout.random((32, 32), 1.0, 16)
    with pytest.raises(RuntimeError, match="SPARSECL_CPU_ISA must be generic, avx2 or avx512"):
        torch.ops.sparsecl.bsr_linear(torch.randn(2, 32), torch.randn(layout.nnzb, 16, 16), layout.row_ptr,
                                      layout.col_idx, 32, None)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, seed):
    x, values, layout, bias = random_case(7, 48, 40, 0.5, 16, device, torch.float32)
    ops = torch.ops.sparsecl
    g = torch.randn(7, 40, device=device)
    torch.library.opcheck(ops.bsr_linear.default, (x, values, layout.row_ptr, layout.col_idx, 40, bias))
    torch.library.opcheck(ops.bsr_linear.default, (x, values, layout.row_ptr, layout.col_idx, 40, None))
    torch.library.opcheck(ops.bsr_linear_dx.default, (g, values, layout.t_row_ptr, layout.t_col_idx,
                                                      layout.t_perm, 48))
    torch.library.opcheck(ops.bsr_linear_dw.default, (g, x, layout.row_idx, layout.col_idx, 16))


def test_compile_fullgraph(seed):
    layer = sparsecl.nn.BlockSparseLinear(64, 48, density=0.5, block_size=16)
    x = torch.randn(3, 5, 64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()
    assert_close(y, layer(x))
    assert_close(gx, x.grad)


class TestBadInput:
    def setup_method(self):
        self.layout = BlockSparseLayout.random((64, 64), 0.5, 32)
        self.values = torch.randn(self.layout.nnzb, 32, 32)

    def test_wrong_features(self):
        with pytest.raises(ValueError, match="input features"):
            bsr_linear(torch.randn(3, 65), self.values, self.layout)

    def test_wrong_values_shape(self):
        with pytest.raises(ValueError, match="values must be"):
            bsr_linear(torch.randn(3, 64), self.values[:-1] if self.layout.nnzb else torch.randn(1, 32, 32),
                       self.layout)

    def test_dtype_mismatch(self):
        with pytest.raises(RuntimeError, match="dtype"):
            bsr_linear(torch.randn(3, 64, dtype=torch.float64), self.values, self.layout)

    def test_unsupported_dtype_on_cpu(self):
        with pytest.raises(RuntimeError, match="unsupported dtype"):
            bsr_linear(torch.randn(3, 64).half(), self.values.half(), self.layout)

    def test_not_a_layout(self):
        with pytest.raises(TypeError, match="BlockSparseLayout"):
            bsr_linear(torch.randn(3, 64), self.values, None)

    def test_bias_shape(self):
        with pytest.raises(RuntimeError, match="bias"):
            bsr_linear(torch.randn(3, 64), self.values, self.layout, torch.randn(63))

    def test_raw_op_rejects_out_of_range_index(self):
        col = self.layout.col_idx.clone()
        if col.numel():
            col[0] = 7
            with pytest.raises(RuntimeError, match="outside"):
                torch.ops.sparsecl.bsr_linear(torch.randn(3, 64), self.values, self.layout.row_ptr, col, 64, None)

    def test_raw_op_rejects_int64_index(self):
        with pytest.raises(RuntimeError, match="int32"):
            torch.ops.sparsecl.bsr_linear(torch.randn(3, 64), self.values, self.layout.row_ptr.long(),
                                          self.layout.col_idx, 64, None)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_input_features_gives_bias(device, seed):
    layout = BlockSparseLayout.random((40, 0), 1.0, 16, device=device)
    values = torch.randn(layout.nnzb, 16, 16, device=device)
    bias = torch.randn(40, device=device)
    y = bsr_linear(torch.randn(2, 3, 0, device=device), values, layout, bias)
    assert y.shape == (2, 3, 40)
    assert_close(y, bias.expand(2, 3, 40))
