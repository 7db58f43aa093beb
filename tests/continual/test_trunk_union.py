"""Trunk layers (SparseTrunkLinear / SparseTrunkConv2d): frozen + trainable parts computed as ONE kernel call per
pass over their UnionLayout, updated incrementally after DST repacks, frozen values never written."""
import pytest
import torch
import torch.nn.functional as F

import sparsecl.ops.union as union_ops
from sparsecl.continual.trunk import SparseTrunkConv2d, SparseTrunkLinear
from sparsecl.formats import UnionLayout


def _split(layer, p_frozen, p_train, dtype=torch.float64):
    shape = layer._shape2d
    frozen = torch.rand(shape) < p_frozen
    layer.load_split(torch.randn(shape, dtype=dtype), frozen, frozen)
    layer.allocate((~frozen) & (torch.rand(shape) < p_train), torch.randn(shape, dtype=dtype))
    return layer, frozen


def _check_against_dense(l, x, dense_fn):
    """Forward, dX and d(trainable values) equal the dense computation with the same effective weight."""
    x = x.detach().requires_grad_(True)
    W = l.dense_weight().detach().requires_grad_(True)
    y = l(x)
    yr = dense_fn(x.detach().requires_grad_(True), W)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    l.inner.values.grad = None
    y.backward(g)
    xr = x.detach().requires_grad_(True)
    dx, dw = torch.autograd.grad(dense_fn(xr, W), (xr, W), g)
    torch.testing.assert_close(x.grad, dx)
    torch.testing.assert_close(l.inner.values.grad, dw[l.inner.dst_mask()])


def _linear(x, w):
    return x @ w.T


def _conv(l):
    return lambda x, w: F.conv2d(x, w.view(l.out_channels, l.in_channels, *l.kernel_size), None, l.stride, l.padding)


@pytest.mark.parametrize("shape", [(29, 37), (1, 1), (16, 5), (7, 64)])
@pytest.mark.parametrize("p_frozen,p_train", [(0.3, 0.2), (0.0, 0.5), (1.0, 0.0), (0.5, 1.0), (0.0, 0.0)])
def test_linear_union_matches_dense(seed, shape, p_frozen, p_train):
    l, _ = _split(SparseTrunkLinear(shape[1], shape[0]), p_frozen, p_train)
    _check_against_dense(l, torch.randn(5, shape[1], dtype=torch.float64), _linear)
    _check_against_dense(l, torch.randn(3, 2, shape[1], dtype=torch.float64), _linear)  # leading dims
    _check_against_dense(l, torch.randn(shape[1], 6, dtype=torch.float64).T, _linear)  # non-contiguous
    _check_against_dense(l, torch.randn(0, shape[1], dtype=torch.float64), _linear)  # no tokens


@pytest.mark.parametrize("geom", [(3, 5, 3, 1, 1), (4, 6, 3, 2, 1), (5, 4, 1, 2, 0), (3, 3, 1, 1, 0)])
@pytest.mark.parametrize("p_frozen,p_train", [(0.3, 0.2), (0.0, 0.5), (1.0, 0.0), (0.0, 0.0)])
def test_conv_union_matches_dense(seed, geom, p_frozen, p_train):
    cin, cout, k, s, p = geom
    l, _ = _split(SparseTrunkConv2d(cin, cout, k, stride=s, padding=p), p_frozen, p_train)
    _check_against_dense(l, torch.randn(2, cin, 7, 9, dtype=torch.float64), _conv(l))
    _check_against_dense(l, torch.randn(2, cin, 7, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
                         _conv(l))


def test_conv_trunk_is_one_kernel_call_per_pass(monkeypatch, seed):
    """Forward, dX and dValues each run once over the union (not once per part)."""
    l, _ = _split(SparseTrunkConv2d(4, 6, 3, padding=1), 0.4, 0.3, torch.float32)
    calls = []
    real = union_ops._conv_kernels

    def counting(device):
        return tuple((lambda *a, _k=k, _op=op: (calls.append(_k), _op(*a))[1])
                     for k, op in zip(("fwd", "dx", "dw"), real(device)))

    monkeypatch.setattr(union_ops, "_conv_kernels", counting)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    l(x).sum().backward()
    assert sorted(calls) == ["dw", "dx", "fwd"]


@pytest.mark.parametrize("make", [lambda: SparseTrunkLinear(31, 23), lambda: SparseTrunkConv2d(3, 7, 3, padding=1)])
def test_dst_repack_updates_the_union_incrementally(make, seed):
    l, frozen = _split(make(), 0.35, 0.15)
    x = (torch.randn(6, 31, dtype=torch.float64) if isinstance(l, SparseTrunkLinear)
         else torch.randn(2, 3, 5, 5, dtype=torch.float64))
    fn = _linear if isinstance(l, SparseTrunkLinear) else _conv(l)
    _check_against_dense(l, x, fn)
    for _ in range(3):
        m = l.inner.dst_mask()
        on, off = m.flatten().nonzero().squeeze(1), (~(frozen | m)).flatten().nonzero().squeeze(1)
        k = min(4, on.numel(), off.numel())
        new = m.flatten().clone()
        new[on[torch.randperm(on.numel())[:k]]] = False
        new[off[torch.randperm(off.numel())[:k]]] = True
        before = l.union()
        src = l.inner.set_topology(new.view(m.shape))
        assert int((src < 0).sum()) == k
        with torch.no_grad():
            l.inner.values.add_(torch.randn_like(l.inner.values))
        _check_against_dense(l, x, fn)
        u, fresh = l.union(), UnionLayout.from_parts(l.frozen_layout, l.inner.layout)
        assert u is not before  # a new object: autograd graphs built before the repack keep theirs
        for name in ("trainable", "trainable_pos", "trainable_pos_t", "frozen_pos", "frozen_pos_t"):
            assert torch.equal(getattr(u, name), getattr(fresh, name))
        for name in ("row_ptr", "col_idx", "t_row_ptr", "t_col_idx", "t_perm"):
            assert torch.equal(getattr(u.layout, name), getattr(fresh.layout, name))


@pytest.mark.parametrize("make,x", [(lambda: SparseTrunkLinear(13, 17), lambda: torch.randn(8, 13)),
                                    (lambda: SparseTrunkConv2d(3, 5, 3, padding=1), lambda: torch.randn(2, 3, 6, 6))])
def test_frozen_values_are_never_written(make, x, seed):
    l, frozen = _split(make(), 0.5, 0.3, dtype=torch.float32)
    before = l.frozen_values.clone()
    opt = torch.optim.AdamW(l.parameters(), lr=0.1, weight_decay=0.1)
    assert all(p is not l.frozen_values for p in l.parameters())
    for _ in range(3):
        opt.zero_grad()
        l(x()).square().sum().backward()
        opt.step()
    assert torch.equal(l.frozen_values.view(torch.int32), before.view(torch.int32))
    assert torch.equal(l.dense_weight().detach()[frozen].view(torch.int32), before.view(torch.int32))


_DISPATCH = ["dense", {"forward": "dense", "dx": "sparse", "dw": "dense"}, {"forward": "sparse", "dx": "dense",
                                                                           "dw": "sparse"}]


@pytest.mark.parametrize("mode", _DISPATCH)
@pytest.mark.parametrize("make", [lambda: SparseTrunkLinear(31, 23), lambda: SparseTrunkConv2d(3, 7, 3, stride=2,
                                                                                               padding=1)])
def test_dense_dispatch_matches_the_union_kernels(make, mode, seed):
    """sparsecl.dispatch may run a pass densely on the effective weight: same results, gradients only at the
    trainable entries, the DST repack and the frozen values unaffected, and switching paths mid-training loses
    nothing."""
    l, frozen = _split(make(), 0.35, 0.2)
    linear = isinstance(l, SparseTrunkLinear)
    x = torch.randn(6, 31, dtype=torch.float64) if linear else torch.randn(2, 3, 7, 6, dtype=torch.float64)
    fn = _linear if linear else _conv(l)
    before = l.frozen_values.clone()
    opt = torch.optim.SGD(l.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for step in range(4):
        chosen = mode if step % 2 else "sparse"
        l.inner.dispatch = chosen
        _check_against_dense(l, x, fn)
        choice = l.inner.dispatch_choice
        assert choice == ({d: chosen for d in choice} if isinstance(chosen, str) else chosen)
        opt.step()  # a step with the gradient of the last check: the next pass must see the moved values
        if step == 1:
            m = l.inner.dst_mask()
            on, off = m.flatten().nonzero().squeeze(1), (~(frozen | m)).flatten().nonzero().squeeze(1)
            new = m.flatten().clone()
            new[on[:2]], new[off[:2]] = False, True
            l.inner.set_topology(new.view(m.shape))
    assert torch.equal(l.frozen_values, before)
