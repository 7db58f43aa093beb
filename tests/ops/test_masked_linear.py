"""masked_linear against a float64 dense reference: forward, dX, dW restricted to grad_mask, the dense
gradient call, gradcheck, opcheck, torch.compile and bad input."""
import pytest
import torch

from sparsecl.ops import masked_linear, masked_linear_dense_grad
from sparsecl.ops.masked_linear import _reference_dw, _reference_dx, _reference_forward

from .._ref import assert_close, noncontiguous
from ..conftest import DEVICES

SHAPES = [(0, 16, 8), (1, 1, 1), (7, 33, 17), (40, 64, 300), (3, 0, 5), (3, 5, 0)]


def random_case(T, in_f, out_f, density, device, dtype):
    x = torch.randn(T, in_f, device=device, dtype=dtype)
    w = torch.randn(out_f, in_f, device=device, dtype=dtype)
    mask = torch.rand(out_f, in_f, device=device) < density
    bias = torch.randn(out_f, device=device, dtype=dtype)
    return x, w, mask, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_forward_backward_matches_dense(device, dtype, T, in_f, out_f, density, seed):
    x, w, mask, bias = random_case(T, in_f, out_f, density, device, dtype)
    grad_mask = mask & (torch.rand_like(w) < 0.5)  # frozen positions: in mask, not in grad_mask
    # weights outside the mask must not leak into the output
    w = w.masked_fill(~mask, 1e3)
    args = [t.clone().requires_grad_(True) for t in (x, w, bias)]
    y = masked_linear(args[0], args[1], mask, args[2], grad_mask=grad_mask)
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, bias))
    yd = xd @ (wd * mask).T + bd
    assert_close(y, yd, dtype)
    g = torch.randn_like(yd)
    y.backward(g.to(dtype))
    yd.backward(g)
    assert_close(args[0].grad, xd.grad, dtype)
    assert_close(args[2].grad, bd.grad, dtype)
    expect = (g.T @ xd.detach()) * grad_mask
    assert_close(args[1].grad, expect, dtype)
    assert bool((args[1].grad[~grad_mask] == 0).all()), "dW must be exactly 0 outside grad_mask"


@pytest.mark.parametrize("device", DEVICES)
def test_default_grad_mask_is_mask(device, seed):
    x, w, mask, _ = random_case(5, 20, 12, 0.4, device, torch.float64)
    w.requires_grad_(True)
    g = torch.randn(5, 12, device=device, dtype=torch.float64)
    masked_linear(x, w, mask).backward(g)
    assert_close(w.grad, (g.T @ x) * mask)


def test_dw_zero_outside_grad_mask_even_for_inf():
    x = torch.tensor([[float("inf"), 1.0]])
    g = torch.ones(1, 2)
    gm = torch.tensor([[False, True], [False, False]])
    dw = torch.ops.sparsecl.masked_linear_dw(g, x, gm)
    assert dw[0, 1] == 1.0 and bool((dw[~gm] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_dense_grad(device, seed):
    x = torch.randn(2, 3, 10, device=device, dtype=torch.float64)
    g = torch.randn(2, 3, 7, device=device, dtype=torch.float64)
    assert_close(masked_linear_dense_grad(x, g), g.reshape(-1, 7).T @ x.reshape(-1, 10))
    with pytest.raises(ValueError, match="leading dims"):
        masked_linear_dense_grad(x, g[:1])


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_and_noncontiguous(device, seed):
    x, w, mask, bias = random_case(6, 40, 24, 0.5, device, torch.float32)
    x3 = x.view(2, 3, 40)
    wn = noncontiguous(w)
    mn = noncontiguous(mask)
    y = masked_linear(noncontiguous(x3), wn, mn, bias)
    assert y.shape == (2, 3, 24)
    assert_close(y.reshape(6, 24), x.double() @ (w.double() * mask).T + bias.double(), torch.float32)


def test_large_panels(seed):
    """More output rows than one masking panel (16 MiB / row bytes, min 256 rows)."""
    x, w, mask, bias = random_case(3, 8, 700, 0.5, "cpu", torch.float64)
    assert_close(masked_linear(x, w, mask, bias), x @ (w * mask).T + bias)
    g = torch.randn(3, 700, dtype=torch.float64)
    assert_close(torch.ops.sparsecl.masked_linear_dx(g, w, mask), g @ (w * mask))


@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_gradcheck_float64(density, seed):
    x, w, mask, bias = random_case(5, 9, 7, density, "cpu", torch.float64)
    gm = mask & (torch.rand(7, 9) < 0.5)
    args = tuple(t.requires_grad_(True) for t in (x, w, bias))
    assert torch.autograd.gradcheck(lambda a, v, b: masked_linear(a, v, mask, b), args)
    # with a grad_mask the weight gradient is the masked one (frozen positions get none)
    y = masked_linear(x, w, mask, bias, grad_mask=gm)
    gw, = torch.autograd.grad(y.sum(), w)
    assert_close(gw, (torch.ones(5, 7, dtype=torch.float64).T @ x.detach()) * gm)


def test_reference_kernels_match_cpp(seed):
    x, w, mask, bias = random_case(9, 30, 20, 0.5, "cpu", torch.float64)
    ops = torch.ops.sparsecl
    g = torch.randn(9, 20, dtype=torch.float64)
    assert_close(_reference_forward(x, w, mask, bias), ops.masked_linear(x, w, mask, bias))
    assert_close(_reference_dx(g, w, mask), ops.masked_linear_dx(g, w, mask))
    assert_close(_reference_dw(g, x, mask), ops.masked_linear_dw(g, x, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, seed):
    x, w, mask, bias = random_case(7, 24, 20, 0.5, device, torch.float32)
    ops = torch.ops.sparsecl
    g = torch.randn(7, 20, device=device)
    torch.library.opcheck(ops.masked_linear.default, (x, w, mask, bias))
    torch.library.opcheck(ops.masked_linear.default, (x, w, mask, None))
    torch.library.opcheck(ops.masked_linear_dx.default, (g, w, mask))
    torch.library.opcheck(ops.masked_linear_dw.default, (g, x, mask))


def test_compile_fullgraph(seed):
    x, w, mask, bias = random_case(5, 24, 20, 0.5, "cpu", torch.float32)
    w.requires_grad_(True)
    f = torch.compile(lambda a, b: masked_linear(a, b, mask, bias), fullgraph=True, backend="aot_eager")
    y = f(x, w)
    y.sum().backward()
    assert_close(y, x.double() @ (w.detach().double() * mask).T + bias.double(), torch.float32)
    assert_close(w.grad, torch.ones(5, 20).T @ x * mask, torch.float32)


class TestBadInput:
    def test_mask_not_bool(self):
        with pytest.raises(ValueError, match="mask must be a bool"):
            masked_linear(torch.randn(2, 4), torch.randn(3, 4), torch.ones(3, 4))

    def test_mask_shape(self):
        with pytest.raises(ValueError, match="mask shape"):
            masked_linear(torch.randn(2, 4), torch.randn(3, 4), torch.ones(4, 3, dtype=torch.bool))

    def test_grad_mask_shape(self):
        with pytest.raises(ValueError, match="grad_mask shape"):
            masked_linear(torch.randn(2, 4), torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool),
                          grad_mask=torch.ones(3, 5, dtype=torch.bool))

    def test_features(self):
        with pytest.raises(ValueError, match="input features"):
            masked_linear(torch.randn(2, 5), torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool))

    def test_dtype_mismatch(self):
        with pytest.raises(RuntimeError, match="dtype"):
            masked_linear(torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool))

    def test_unsupported_dtype_on_cpu(self):
        with pytest.raises(RuntimeError, match="unsupported dtype"):
            masked_linear(torch.randn(2, 4).half(), torch.randn(3, 4).half(), torch.ones(3, 4, dtype=torch.bool))

    def test_raw_op_checks(self):
        with pytest.raises(RuntimeError, match="mask must be bool"):
            torch.ops.sparsecl.masked_linear(torch.randn(2, 4), torch.randn(3, 4), torch.ones(3, 4), None)
        with pytest.raises(RuntimeError, match="bias"):
            torch.ops.sparsecl.masked_linear(torch.randn(2, 4), torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool),
                                             torch.randn(4))
        with pytest.raises(RuntimeError, match="grad_mask must be"):
            torch.ops.sparsecl.masked_linear_dw(torch.randn(2, 3), torch.randn(2, 4), torch.ones(4, 3, dtype=torch.bool))
