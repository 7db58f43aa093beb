"""SparseLinear: both storage modes against the dense layer, memory (parameters + Adam state + index
buffers), from_dense, state_dict round-trip, grad_mask, the DST layer protocol and torch.compile."""
import pytest
import torch
from torch import nn

from sparsecl.nn import SparseLinear
from sparsecl.nn.sparse_linear import CSR_MAX_DENSITY

from .._ref import assert_close

MODES = ["csr", "masked"]


def module_bytes(module, optimizer):
    tensors = list(module.parameters()) + list(module.buffers())
    for state in optimizer.state.values():
        tensors += [t for t in state.values() if torch.is_tensor(t) and t.dim() > 0]
    return sum(t.numel() * t.element_size() for t in tensors)


def trained_bytes(module):
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    module(torch.randn(4, module.in_features)).sum().backward()
    opt.step()
    return module_bytes(module, opt)


def test_memory_at_density_0_1():
    dense = nn.Linear(512, 384)
    sparse = SparseLinear(512, 384, density=0.1)
    assert sparse.mode == "csr"
    ratio = trained_bytes(sparse) / trained_bytes(dense)
    assert ratio <= 0.25, f"SparseLinear at d=0.1 holds {ratio:.3f}x the dense bytes"


def test_auto_mode_follows_threshold():
    assert SparseLinear(32, 32, density=CSR_MAX_DENSITY / 2).mode == "csr"
    assert SparseLinear(32, 32, density=min(1.0, CSR_MAX_DENSITY + 0.2)).mode == "masked"
    with pytest.raises(ValueError, match="mode"):
        SparseLinear(4, 4, mode="coo")
    with pytest.raises(ValueError, match="density"):
        SparseLinear(4, 4, density=-0.1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1), (33, 17), (64, 96)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_matches_dense_layer(mode, shape, density, seed):
    in_f, out_f = shape
    layer = SparseLinear(in_f, out_f, density=density, mode=mode).double()
    w = layer.dense_weight().detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    x = torch.randn(2, 5, in_f, dtype=torch.float64)
    y = layer(x)
    yd = x @ w.T + b
    assert_close(y, yd)
    g = torch.randn_like(yd)
    y.backward(g)
    yd.backward(g)
    m = layer.mask()
    grad = layer.sparse_parameter.grad
    assert_close(grad, w.grad[m] if mode == "csr" else w.grad * m)
    assert_close(layer.bias.grad, b.grad)
    assert m.sum() == layer.nnz and layer.mask().dtype == torch.bool


@pytest.mark.parametrize("mode", MODES)
def test_from_dense_keeps_largest(mode, seed):
    lin = nn.Linear(40, 30)
    layer = SparseLinear.from_dense(lin, density=0.25, mode=mode)
    m = layer.mask()
    assert int(m.sum()) == round(0.25 * 1200)
    assert lin.weight[m].abs().min() >= lin.weight[~m].abs().max()
    assert torch.equal(layer.dense_weight(), lin.weight.detach() * m)
    assert torch.equal(layer.bias, lin.bias)
    x = torch.randn(3, 40)
    assert_close(layer(x), x @ (lin.weight * m).T + lin.bias)
    given = torch.rand(30, 40) < 0.5
    assert torch.equal(SparseLinear.from_dense(lin, mask=given, mode=mode).mask(), given)
    with pytest.raises(ValueError, match="exactly one"):
        SparseLinear.from_dense(lin)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(mode, seed):
    a = SparseLinear(50, 20, density=0.3, mode=mode)
    b = SparseLinear(50, 20, density=0.3, mode=mode)  # another random topology
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mask(), b.mask())
    assert torch.equal(a.dense_weight(), b.dense_weight())
    x = torch.randn(4, 50)
    assert torch.equal(a(x), b(x))


def test_state_dict_rejects_corrupt_layout():
    a = SparseLinear(10, 8, density=0.5, mode="csr")
    sd = a.state_dict()
    sd["col_idx"] = sd["col_idx"].flip(0).contiguous()
    with pytest.raises(RuntimeError, match="invalid saved layout"):
        SparseLinear(10, 8, density=0.5, mode="csr").load_state_dict(sd)


def test_grad_mask_freezes_positions(seed):
    layer = SparseLinear(24, 16, density=0.5, mode="masked")
    frozen = layer.mask() & (torch.rand(16, 24) < 0.5)
    layer.grad_mask = layer.mask() & ~frozen
    layer(torch.randn(5, 24)).sum().backward()
    assert bool((layer.weight.grad[frozen] == 0).all())
    assert bool((layer.weight.grad[~layer.mask()] == 0).all())
    assert layer.weight.grad[layer.grad_mask].abs().sum() > 0
    b = SparseLinear(24, 16, density=0.5, mode="masked")
    b.load_state_dict(layer.state_dict())
    assert torch.equal(b.grad_mask, layer.grad_mask)
    layer.grad_mask = None
    assert torch.equal(layer.grad_mask, layer.mask())
    with pytest.raises(ValueError, match="grad_mask must be bool"):
        layer.grad_mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="masked"):
        SparseLinear(8, 8, density=0.1, mode="csr").grad_mask = torch.ones(8, 8, dtype=torch.bool)


def new_topology(layer, n):
    flat = layer.dst_mask().flatten().clone()
    on, off = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    drop, grow = on[torch.randperm(on.numel())[:n]], off[torch.randperm(off.numel())[:n]]
    flat[drop] = False
    flat[grow] = True
    return flat.view(layer.out_features, layer.in_features)


@pytest.mark.parametrize("mode", MODES)
def test_set_topology_protocol(mode, seed):
    layer = SparseLinear(40, 30, density=0.3, mode=mode)
    assert layer.dst_block_size == 1
    param = layer.sparse_parameter
    old_w, old_m = layer.dense_weight().detach().clone(), layer.mask()
    old_flat = param.detach().clone().flatten()
    new_mask = new_topology(layer, 25)
    src = layer.set_topology(new_mask)
    assert layer.sparse_parameter is param  # optimizer references stay valid
    assert torch.equal(layer.dst_mask(), new_mask)
    assert src.shape == (param.numel(),) and src.dtype == torch.int64
    kept = src >= 0
    # survivors bit-identical, new positions 0
    assert torch.equal(param.detach().flatten()[kept], old_flat[src[kept]])
    w = layer.dense_weight().detach()
    assert torch.equal(w[new_mask & old_m], old_w[new_mask & old_m])
    assert bool((w[new_mask & ~old_m] == 0).all())
    if mode == "masked":
        changed = (new_mask != old_m).flatten()
        assert torch.equal(~kept, changed)
    else:
        assert int((~kept).sum()) == 25
    x = torch.randn(3, 40)
    assert_close(layer(x), x @ w.T + layer.bias.detach())
    with pytest.raises(ValueError, match="active entries"):
        layer.set_topology(torch.zeros(30, 40, dtype=torch.bool))


def test_compile_fullgraph_masked(seed):
    layer = SparseLinear(32, 24, density=0.6, mode="masked")
    x = torch.randn(4, 32, requires_grad=True)
    y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    y.sum().backward()
    assert_close(y, layer(x))
