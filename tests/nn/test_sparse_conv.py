"""SparseConv2d (unstructured and block): matches F.conv2d on dense_weight(), from_dense, state_dict,
the DST protocol (set_topology keeps survivors, src remap), sparsify of convs, and the sparse
ResNet-18 / MobileNetV2 against their dense twins."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecl
from sparsecl.nn import SparseConv2d
from sparsecl.nn.models import mobilenet_v2, resnet18

from .._ref import assert_close

STRUCTS = [("unstructured", 1), ("block", 16)]


@pytest.mark.parametrize("structure,B", STRUCTS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_forward_backward_matches_dense(seed, structure, B, fmt):
    conv = SparseConv2d(19, 21, 3, stride=2, padding=1, density=0.4, structure=structure, block_size=16,
                        dtype=torch.float64)
    x = torch.randn(2, 19, 9, 8, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    y = conv(x)
    w = conv.dense_weight()
    assert w.shape == (21, 19, 3, 3) and conv.mask().shape == w.shape
    assert bool((w[~conv.mask()] == 0).all())
    yr = F.conv2d(x, w, conv.bias, 2, 1)
    assert_close(y, yr, torch.float64)
    g = torch.randn_like(y)
    dx, dv = torch.autograd.grad(y, (x, conv.values), g)
    dxr, dvr = torch.autograd.grad(yr, (x, conv.values), g)
    assert_close(dx, dxr, torch.float64)
    assert_close(dv, dvr, torch.float64)


@pytest.mark.parametrize("structure,B", STRUCTS)
def test_from_dense_and_state_dict(seed, structure, B):
    dense = nn.Conv2d(20, 18, 3, padding=1, dilation=1)
    conv = SparseConv2d.from_dense(dense, density=0.3, structure=structure, block_size=16)
    w = conv.dense_weight()
    m = conv.mask()
    assert_close(w[m], dense.weight.detach()[m], torch.float32)
    other = SparseConv2d(20, 18, 3, padding=1, density=0.5, structure=structure, block_size=16)
    other.load_state_dict(conv.state_dict())
    x = torch.randn(2, 20, 6, 7)
    assert torch.equal(other(x), conv(x))
    with pytest.raises(ValueError, match="groups"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=4), density=0.5)


@pytest.mark.parametrize("structure,B", STRUCTS)
def test_set_topology(seed, structure, B):
    conv = SparseConv2d(20, 36, 3, density=0.5, structure=structure, block_size=16, dtype=torch.float64)
    old_mask, old_vals = conv.dst_mask(), conv.values.detach().clone().flatten()
    old_w = conv.dense_weight().detach()
    param = conv.values
    active = old_mask.flatten().nonzero().flatten()
    free = (~old_mask).flatten().nonzero().flatten()
    n = min(len(active), len(free), 2)
    new_mask = old_mask.clone().flatten()
    new_mask[active[:n]] = False
    new_mask[free[:n]] = True
    new_mask = new_mask.view_as(old_mask)
    src = conv.set_topology(new_mask)
    assert conv.values is param and torch.equal(conv.dst_mask(), new_mask)
    assert src.shape == (conv.values.shape[0],)
    new_vals = conv.values.detach().reshape(src.numel(), -1)
    old_rows = old_vals.view(src.numel(), -1)
    keep = src >= 0
    assert torch.equal(new_vals[keep], old_rows[src[keep]])
    assert bool((new_vals[~keep] == 0).all()) and int((~keep).sum()) == n
    w = conv.dense_weight().detach()
    both = conv.mask() & (old_w != 0)
    assert torch.equal(w[both], old_w[both])
    with pytest.raises(ValueError):
        conv.set_topology(torch.ones_like(new_mask))


def test_sparsify_converts_convs(seed):
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 32, 1),
                          nn.Flatten(), nn.Linear(32 * 36, 10))
    sparsecl.sparsify(model, density=0.3)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseConv2d)
    assert type(model[2]) is nn.Conv2d
    model(torch.randn(2, 3, 10, 10)).sum().backward()


def _dense_twin(sparse):
    """The dense model with the same effective weights (SparseConv2d -> nn.Conv2d, sparse linears -> nn.Linear)."""
    dense = copy.deepcopy(sparse)
    for name, m in list(dense.named_modules()):
        if isinstance(m, SparseConv2d):
            d = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                          bias=m.bias is not None, dtype=m.values.dtype)
            d.weight.data.copy_(m.dense_weight().detach())
        elif hasattr(m, "dense_weight") and hasattr(m, "in_features"):
            d = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=m.bias.dtype)
            d.weight.data.copy_(m.dense_weight().detach())
        else:
            continue
        if m.bias is not None:
            d.bias.data.copy_(m.bias.detach())
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, d)
    return dense


@pytest.mark.parametrize("build,kw", [(resnet18, dict(width=16)), (resnet18, dict(width=16, structure="block")),
                                      (mobilenet_v2, {})])
def test_models_match_dense(seed, build, kw):
    model = build(num_classes=5, density=0.2, **kw).double()
    assert any(isinstance(m, SparseConv2d) for m in model.modules())
    dense = _dense_twin(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    y, yr = model(x), dense(x)
    assert_close(y, yr, torch.float64)
    y.square().sum().backward()
    yr.square().sum().backward()
    n = 0
    for m, d in zip(model.modules(), dense.modules()):
        if isinstance(m, SparseConv2d):
            n += 1
            assert_close(_grad_as_dense(m), torch.where(m.mask(), d.weight.grad, 0), torch.float64)
    assert n > 0


def _grad_as_dense(m):
    """The gradient of m.values laid out as a dense [out, in, kh, kw] weight."""
    saved = m.values.data.clone()
    m.values.data.copy_(m.values.grad)
    g = m.dense_weight().detach()
    m.values.data.copy_(saved)
    return g
