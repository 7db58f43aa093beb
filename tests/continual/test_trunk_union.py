"""SparseTrunkLinear: frozen + trainable parts computed as one CSR call over their union."""
import pytest
import torch

from sparsecl.continual.models import SparseTrunkLinear, _Union, _UnionLinear


def _layer(out_f, in_f, p_frozen, p_train, dtype=torch.float64):
    l = SparseTrunkLinear(in_f, out_f)
    frozen = torch.rand(out_f, in_f) < p_frozen
    l.load_split(torch.randn(out_f, in_f, dtype=dtype), frozen, frozen)
    l.allocate((~frozen) & (torch.rand(out_f, in_f) < p_train), torch.randn(out_f, in_f, dtype=dtype))
    return l, frozen


def _check_against_dense(l, x):
    """Forward, dX and d(trainable values) equal the dense computation with the same effective weight."""
    x = x.detach().requires_grad_(True)
    W = l.dense_weight().detach()
    y = l(x)
    torch.testing.assert_close(y, x @ W.T)
    g = torch.randn_like(y)
    l.inner.values.grad = None
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ W)
    dW = g.reshape(-1, g.shape[-1]).T @ x.detach().reshape(-1, x.shape[-1])
    torch.testing.assert_close(l.inner.values.grad, dW[l.inner.mask()])


@pytest.mark.parametrize("shape", [(29, 37), (1, 1), (16, 5), (7, 64)])
@pytest.mark.parametrize("p_frozen,p_train", [(0.3, 0.2), (0.0, 0.5), (1.0, 0.0), (0.5, 1.0), (0.0, 0.0)])
def test_union_matches_dense(seed, shape, p_frozen, p_train):
    l, _ = _layer(*shape, p_frozen, p_train)
    _check_against_dense(l, torch.randn(5, shape[1], dtype=torch.float64))
    _check_against_dense(l, torch.randn(3, 2, shape[1], dtype=torch.float64))  # leading dims
    _check_against_dense(l, torch.randn(shape[1], 6, dtype=torch.float64).T)  # non-contiguous
    _check_against_dense(l, torch.randn(0, shape[1], dtype=torch.float64))  # no tokens


@pytest.mark.parametrize("with_hook", [False, True])
def test_union_gradcheck(with_hook, seed):
    """Also on DST growth steps, where dTrainable is gathered from the dense dW the hook gets (= grad_out.T @ x)."""
    l, _ = _layer(9, 11, 0.4, 0.3)
    x = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    vals = l.inner.values.detach().clone().requires_grad_(True)
    got = []
    hook = got.append if with_hook else None
    assert torch.autograd.gradcheck(lambda x, v: _UnionLinear.apply(x, v, l._union_state(), l.out_features, hook),
                                    (x, vals))
    if with_hook:
        g = torch.randn(4, 9, dtype=torch.float64)
        got.clear()
        _UnionLinear.apply(x, vals, l._union_state(), l.out_features, hook).backward(g)
        assert len(got) == 1 and torch.allclose(got[0], g.T @ x.detach())


def test_dst_repack_updates_the_union_incrementally(seed):
    l, frozen = _layer(23, 31, 0.35, 0.15)
    x = torch.randn(6, 31, dtype=torch.float64)
    _check_against_dense(l, x)
    for _ in range(3):
        m = l.inner.mask()
        on, off = m.flatten().nonzero().squeeze(1), (~(frozen | m)).flatten().nonzero().squeeze(1)
        k = min(4, on.numel(), off.numel())
        new = m.flatten().clone()
        new[on[torch.randperm(on.numel())[:k]]] = False
        new[off[torch.randperm(off.numel())[:k]]] = True
        before = l._union
        src = l.inner.set_topology(new.view(m.shape))
        assert int((src < 0).sum()) == k
        with torch.no_grad():
            l.inner.values.add_(torch.randn_like(l.inner.values))
        _check_against_dense(l, x)
        u, fresh = l._union, _Union(l.frozen_layout, l.frozen_values, l.inner.layout)
        assert u is not before  # a new object: autograd graphs built before the repack keep theirs
        for name in ("index", "index_t"):
            assert torch.equal(getattr(u, name), getattr(fresh, name))
        for name in ("row_ptr", "col_idx", "t_row_ptr", "t_col_idx", "t_perm"):
            assert torch.equal(getattr(u.layout, name), getattr(fresh.layout, name))
        frozen_pos = ~fresh.is_train
        assert torch.equal(u.base[frozen_pos].view(torch.int64), fresh.base[frozen_pos].view(torch.int64))


def test_frozen_values_are_never_written(seed):
    l, frozen = _layer(17, 13, 0.5, 0.3, dtype=torch.float32)
    before = l.frozen_values.clone()
    opt = torch.optim.AdamW(l.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        l(torch.randn(8, 13)).square().sum().backward()
        opt.step()
    assert torch.equal(l.frozen_values.view(torch.int32), before.view(torch.int32))
    assert torch.equal(l.dense_weight().detach()[frozen].view(torch.int32), before.view(torch.int32))
