"""dense_grad_hook of the linear ops (csr_linear, bsr_linear, masked_linear): backward hands the hook the dense
weight gradient grad_out.T @ x over all positions, and the sparse gradients it returns (taken from that dense
gradient instead of the SDDMM / masked kernel) still match the float64 reference."""
import pytest
import torch

from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_linear, csr_linear, masked_linear

from .._ref import assert_close, ref_linear
from ..conftest import DEVICES

SHAPES = [(0, 20, 12), (1, 1, 1), (7, 33, 50), (40, 70, 17)]  # (tokens, in, out): not multiples of the blocks


def _case(kind, in_f, out_f, density, device, frozen=True):
    """(param, dense_of(param), op(x, param, bias, hook), expected param grad from the dense grad G); masked
    with ``frozen``: half the mask is outside grad_mask."""
    if kind == "csr":
        layout = CSRLayout.random((out_f, in_f), density, device=device)
        return (torch.randn(layout.nnz, device=device), layout.to_dense,
                lambda x, p, b, h: csr_linear(x, p, layout, b, dense_grad_hook=h), layout.values_from_dense)
    if kind == "bsr":
        layout = BlockSparseLayout.random((out_f, in_f), density, 16, device=device)
        return (torch.randn(layout.nnzb, 16, 16, device=device), layout.to_dense,
                lambda x, p, b, h: bsr_linear(x, p, layout, b, dense_grad_hook=h), layout.values_from_dense)
    mask = torch.rand(out_f, in_f, device=device) < density
    grad_mask = mask & (torch.rand(out_f, in_f, device=device) < (0.5 if frozen else 2))
    return (torch.randn(out_f, in_f, device=device), lambda p: p * mask,
            lambda x, p, b, h: masked_linear(x, p, mask, b, grad_mask, dense_grad_hook=h),
            lambda G: G * grad_mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["csr", "bsr", "masked"])
@pytest.mark.parametrize("T,in_f,out_f", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_hook_gets_dense_grad_and_grads_match(device, kind, T, in_f, out_f, density, seed):
    param, dense_of, op, param_grad_of = _case(kind, in_f, out_f, density, device)
    x, bias = torch.randn(3, T, in_f, device=device), torch.randn(out_f, device=device)
    g = torch.randn(3, T, out_f, device=device)
    G = g.double().reshape(-1, out_f).T @ x.double().reshape(-1, in_f)
    xd, pd, bd = (t.detach().double().requires_grad_(True) for t in (x, param, bias))
    yd = ref_linear(xd, dense_of(pd), bd)
    yd.backward(g.double())
    for hook in (None, []):
        xs, ps, bs = (t.clone().requires_grad_(True) for t in (x, param, bias))
        y = op(xs, ps, bs, None if hook is None else hook.append)
        assert_close(y, yd, torch.float32)
        y.backward(g)
        assert_close(xs.grad, xd.grad, torch.float32)
        assert_close(bs.grad, bd.grad, torch.float32)
        assert_close(ps.grad, param_grad_of(G), torch.float32)
        if hook is not None:
            assert len(hook) == 1
            assert_close(hook[0], G, torch.float32)


def test_hook_must_be_callable():
    layout = CSRLayout.random((4, 5), 0.5)
    with pytest.raises(TypeError, match="dense_grad_hook must be callable"):
        csr_linear(torch.randn(2, 5), torch.randn(layout.nnz), layout, dense_grad_hook=3)
    with pytest.raises(TypeError, match="dense_grad_hook must be callable"):
        masked_linear(torch.randn(2, 5), torch.randn(4, 5), torch.ones(4, 5, dtype=torch.bool), dense_grad_hook=[])


@pytest.mark.parametrize("kind", ["csr", "bsr", "masked"])
def test_gradcheck_with_hook(kind):
    param, _, op, _ = _case(kind, 19, 21, 0.4, "cpu", frozen=False)
    x = torch.randn(5, 19, dtype=torch.float64, requires_grad=True)
    p = param.double().requires_grad_(True)
    b = torch.randn(21, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, p, b: op(x, p, b, lambda dense: None), (x, p, b))
