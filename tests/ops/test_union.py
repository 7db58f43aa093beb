"""UnionLayout and union_linear / union_conv2d against float64 dense references: forward, dX, dTrainable (the
dense dW at the trainable entries only), dBias, no gradient for the frozen values, gradcheck, the incremental
index updates against a union built from scratch, the value scratch buffers and bad input.

The union ops compose the csr_linear / csr_conv2d dispatcher ops (opchecked in their own tests); they add no
dispatcher op of their own."""
import pytest
import torch

from sparsecl.formats import CSRLayout, UnionLayout, repack_values_
from sparsecl.ops import union_conv2d, union_linear

from .._ref import assert_close, noncontiguous, ref_conv2d

SPLITS = [(0.3, 0.2), (0.0, 0.5), (1.0, 0.0), (0.5, 1.0), (0.0, 0.0), (0.0, 1.0)]  # (p_frozen, p_trainable of rest)
LINEAR_SHAPES = [(5, 29, 37), (1, 1, 1), (0, 16, 5), (3, 64, 7), (4, 0, 3), (2, 3, 0)]  # (tokens, in, out)
CONV_GEOMS = [  # (N, in, out, H, W, k, stride, padding, dilation)
    (2, 5, 7, 9, 7, 3, 1, 1, 1), (2, 6, 5, 9, 11, 3, 2, 1, 1), (3, 4, 6, 7, 7, 1, 2, 0, 1), (2, 8, 8, 5, 5, 1, 1, 0, 1),
    (1, 3, 4, 15, 13, 7, 2, 3, 1), (2, 4, 3, 8, 9, (3, 1), (2, 1), (0, 2), (2, 1)), (0, 4, 4, 5, 5, 3, 1, 1, 1),
]


def _masks(shape, p_frozen, p_train):
    frozen = torch.rand(shape) < p_frozen
    return frozen, ~frozen & (torch.rand(shape) < p_train)


def _case(shape, p_frozen, p_train, dtype=torch.float64):
    frozen, trainable = _masks(shape, p_frozen, p_train)
    union = UnionLayout.from_masks(frozen, trainable)
    fv = torch.randn(union.n_frozen, dtype=dtype)
    tv = torch.randn(union.n_trainable, dtype=dtype)
    w = torch.zeros(shape, dtype=torch.float64)
    w[frozen], w[trainable] = fv.double(), tv.double()
    return union, fv, tv, w, frozen, trainable


def _assert_same_layout(a, b):
    for name in ("row_ptr", "col_idx", "row_idx", "t_row_ptr", "t_col_idx", "t_perm"):
        assert torch.equal(getattr(a.layout, name), getattr(b.layout, name)), name
    for name in ("trainable", "trainable_pos", "frozen_pos", "trainable_pos_t", "frozen_pos_t", "trainable_rows",
                 "trainable_cols"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# the format -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(9, 11), (1, 1), (0, 4), (4, 0), (17, 3)])
@pytest.mark.parametrize("p_frozen,p_train", SPLITS)
def test_union_layout_parts_and_values(shape, p_frozen, p_train, seed):
    union, fv, tv, w, frozen, trainable = _case(shape, p_frozen, p_train)
    assert union.nnz == int((frozen | trainable).sum()) and union.n_frozen == int(frozen.sum())
    assert torch.equal(union.mask(), frozen | trainable)
    assert torch.equal(union.frozen_layout().mask(), frozen)
    assert torch.equal(union.trainable_layout().mask(), trainable)
    assert torch.equal(union.to_dense(fv, tv), w)
    # the transposed order reads the same weight through t_perm
    vt = union.values(fv, tv, transposed=True)
    assert torch.equal(vt, union.values(fv, tv).index_select(0, union.layout.t_perm.long()))
    assert torch.equal(w[union.trainable_rows.long(), union.trainable_cols.long()], tv)
    _assert_same_layout(union, UnionLayout.from_parts(CSRLayout.from_mask(frozen), CSRLayout.from_mask(trainable)))


def _random_update(union, frozen, trainable, n_grow):
    keep = torch.rand(union.nnz) < 0.7
    free = (~(frozen | trainable)).flatten().nonzero().squeeze(1)
    grow = free[torch.randperm(free.numel())[:n_grow]]  # unsorted on purpose
    grow_trainable = torch.rand(grow.numel()) < 0.5
    return keep, grow, grow_trainable


@pytest.mark.parametrize("shape", [(23, 31), (1, 5), (8, 8)])
def test_update_matches_a_union_built_from_scratch(shape, seed):
    union, fv, tv, w, frozen, trainable = _case(shape, 0.3, 0.3)
    for _ in range(3):
        keep, grow, grow_trainable = _random_update(union, frozen, trainable, 5)
        new, frozen_src, trainable_src = union.update(keep, grow, grow_trainable)
        dropped = torch.zeros(shape, dtype=torch.bool)
        dropped.view(-1)[union.layout.keys()[~keep]] = True
        grown_f, grown_t = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
        grown_f.view(-1)[grow[~grow_trainable]] = True
        grown_t.view(-1)[grow[grow_trainable]] = True
        frozen, trainable = (frozen & ~dropped) | grown_f, (trainable & ~dropped) | grown_t
        _assert_same_layout(new, UnionLayout.from_masks(frozen, trainable))
        # the per-part src maps repack each part's values: kept entries keep theirs, grown ones are 0
        w_kept = w * ~dropped
        parts = []
        for part, src in ((union.frozen_layout(), frozen_src), (union.trainable_layout(), trainable_src)):
            values = torch.nn.Parameter(w.flatten()[part.keys()])
            repack_values_(values, src)
            parts.append(values.detach())
        assert torch.equal(new.to_dense(*parts), w_kept)
        w, union = w_kept, new


def test_with_trainable_repack_matches_from_parts(seed):
    union, fv, tv, w, frozen, trainable = _case((19, 27), 0.3, 0.2)
    inner = CSRLayout.from_mask(trainable)
    for _ in range(3):
        on, off = trainable.flatten().nonzero().squeeze(1), (~(frozen | trainable)).flatten().nonzero().squeeze(1)
        k = min(4, on.numel(), off.numel())
        new_mask = trainable.flatten().clone()
        new_mask[on[torch.randperm(on.numel())[:k]]] = False
        new_mask[off[torch.randperm(off.numel())[:k]]] = True
        trainable = new_mask.view(trainable.shape)
        inner, src = inner.with_topology(trainable)
        new = union.with_trainable_repack(src, inner)
        assert new is not union
        _assert_same_layout(new, UnionLayout.from_parts(CSRLayout.from_mask(frozen), inner))
        union = new


def test_union_layout_bad_input():
    a = torch.zeros(4, 5, dtype=torch.bool)
    a[0, 0] = True
    with pytest.raises(ValueError, match="disjoint"):
        UnionLayout.from_masks(a, a)
    with pytest.raises(ValueError, match="differ in shape"):
        UnionLayout.from_parts(CSRLayout.from_mask(a), CSRLayout.from_mask(a.T.contiguous()))
    with pytest.raises(TypeError, match="CSRLayout"):
        UnionLayout(a, torch.ones(1, dtype=torch.bool))
    lay = CSRLayout.from_mask(a)
    with pytest.raises(ValueError, match=r"trainable must be bool \[1\]"):
        UnionLayout(lay, torch.ones(2, dtype=torch.bool))
    u = UnionLayout(lay, torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"trainable_values must be \[1\]"):
        u.values(torch.zeros(0), torch.zeros(3))
    with pytest.raises(ValueError, match="one dtype"):
        u.values(torch.zeros(0, dtype=torch.float64), torch.zeros(1))
    with pytest.raises(ValueError, match="grow_trainable must be bool"):
        u.update(torch.ones(1, dtype=torch.bool), torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="already active"):
        u.update(torch.ones(1, dtype=torch.bool), torch.tensor([0]), torch.tensor([True]))


# union_linear ----------------------------------------------------------------------------------------------
def _check_linear(x, union, fv, tv, w, bias, dtype, hook=None):
    x, tv, bias = (t.detach().clone().requires_grad_(True) for t in (x, tv, bias))
    fv = fv.detach().clone()
    y = union_linear(x, fv, tv, union, bias, dense_grad_hook=hook)
    xr, br = (t.detach().double().requires_grad_(True) for t in (x, bias))
    wr = w.clone().requires_grad_(True)
    yr = xr @ wr.T + br
    assert y.shape == yr.shape
    assert_close(y, yr, dtype)
    g = torch.randn_like(yr)
    y.backward(g.to(dtype))
    yr.backward(g)
    assert_close(x.grad, xr.grad, dtype)
    assert_close(bias.grad, br.grad, dtype)
    assert_close(tv.grad, wr.grad[union.trainable_rows.long(), union.trainable_cols.long()], dtype)
    assert fv.grad is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,in_f,out_f", LINEAR_SHAPES)
@pytest.mark.parametrize("p_frozen,p_train", SPLITS)
def test_union_linear_matches_dense(dtype, T, in_f, out_f, p_frozen, p_train, seed):
    union, fv, tv, w, *_ = _case((out_f, in_f), p_frozen, p_train, dtype)
    bias = torch.randn(out_f, dtype=dtype)
    _check_linear(torch.randn(T, in_f, dtype=dtype), union, fv, tv, w, bias, dtype)
    _check_linear(torch.randn(2, T, in_f, dtype=dtype), union, fv, tv, w, bias, dtype)  # leading dims
    _check_linear(noncontiguous(torch.randn(T, in_f, dtype=dtype)), union, fv, tv, w, bias, dtype)


def test_union_linear_dense_grad_hook(seed):
    """A DST growth step: the hook gets the dense dW (grad_out.T @ x); dTrainable is gathered from it."""
    union, fv, tv, w, *_ = _case((9, 11), 0.4, 0.3)
    got = []
    _check_linear(torch.randn(6, 11, dtype=torch.float64), union, fv, tv, w, torch.randn(9, dtype=torch.float64),
                  torch.float64, hook=got.append)
    assert len(got) == 1 and got[0].shape == (9, 11)


@pytest.mark.parametrize("with_hook", [False, True])
def test_union_linear_gradcheck(with_hook, seed):
    union, fv, tv, *_ = _case((9, 11), 0.4, 0.3)
    x = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    hook = (lambda g: None) if with_hook else None
    assert torch.autograd.gradcheck(lambda x, t, b: union_linear(x, fv, t, union, b, dense_grad_hook=hook),
                                    (x, tv.requires_grad_(True), b))


def test_frozen_values_get_no_gradient_and_stay_bit_identical(seed):
    union, fv, tv, *_ = _case((17, 13), 0.5, 0.3, torch.float32)
    frozen = fv.clone()
    trainable = torch.nn.Parameter(tv.clone())
    opt = torch.optim.AdamW([trainable], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        union_linear(torch.randn(8, 13), fv, trainable, union).square().sum().backward()
        opt.step()
    assert torch.equal(fv.view(torch.int32), frozen.view(torch.int32))
    assert not torch.equal(trainable.detach(), tv) or union.n_trainable == 0


def test_scratch_follows_changed_frozen_values(seed):
    """The cached union-order copy of the frozen values is refreshed when they change in place or are replaced."""
    union, fv, tv, *_ = _case((7, 9), 0.5, 0.3)
    x = torch.randn(3, 9, dtype=torch.float64)
    union_linear(x, fv, tv, union)
    fv.mul_(2)  # in place: a new version
    torch.testing.assert_close(union_linear(x, fv, tv, union), x @ union.to_dense(fv, tv).T)
    other = torch.randn_like(fv)  # another tensor
    torch.testing.assert_close(union_linear(x, other, tv, union), x @ union.to_dense(other, tv).T)


def test_union_linear_bad_input():
    union, fv, tv, *_ = _case((4, 5), 0.5, 0.5)
    with pytest.raises(ValueError, match="input features"):
        union_linear(torch.randn(2, 6, dtype=torch.float64), fv, tv, union)
    with pytest.raises(ValueError, match="frozen_values must be"):
        union_linear(torch.randn(2, 5, dtype=torch.float64), torch.zeros(union.n_frozen + 1, dtype=torch.float64),
                     tv, union)
    with pytest.raises(TypeError, match="UnionLayout"):
        union_linear(torch.randn(2, 5, dtype=torch.float64), fv, tv, union.layout)
    with pytest.raises(ValueError, match="dtype"):
        union_linear(torch.randn(2, 5), fv, tv, union)
    with pytest.raises(TypeError, match="dense_grad_hook"):
        union_linear(torch.randn(2, 5, dtype=torch.float64), fv, tv, union, dense_grad_hook=3)


# union_conv2d ------------------------------------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geom", CONV_GEOMS)
@pytest.mark.parametrize("p_frozen,p_train", SPLITS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_union_conv2d_matches_dense(dtype, geom, p_frozen, p_train, fmt, seed):
    N, cin, cout, H, W, k, stride, padding, dilation = geom
    kh, kw = _pair(k)
    union, fv, tv, w2, *_ = _case((cout, cin * kh * kw), p_frozen, p_train, dtype)
    x = torch.randn(N, cin, H, W, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
    tv, bias = tv.requires_grad_(True), torch.randn(cout, dtype=dtype, requires_grad=True)
    y = union_conv2d(x, fv, tv, union, (kh, kw), bias, stride, padding, dilation)
    xr, br = (t.detach().double().requires_grad_(True) for t in (x, bias))
    wr = w2.view(cout, cin, kh, kw).clone().requires_grad_(True)
    yr = ref_conv2d(xr, wr, br, stride, padding, dilation)
    assert y.shape == yr.shape
    assert_close(y, yr, dtype)
    g = torch.randn_like(yr)
    y.backward(g.to(dtype))
    yr.backward(g)
    assert_close(x.grad, xr.grad, dtype)
    assert_close(bias.grad, br.grad, dtype)
    assert_close(tv.grad, wr.grad.reshape(cout, -1)[union.trainable_rows.long(), union.trainable_cols.long()], dtype)
    assert fv.grad is None


@pytest.mark.parametrize("geom", [(2, 3, 4, 6, 5, 3, 2, 1, 1), (2, 4, 3, 5, 5, 1, 1, 0, 1)])
def test_union_conv2d_gradcheck(geom, seed):
    N, cin, cout, H, W, k, stride, padding, dilation = geom
    union, fv, tv, *_ = _case((cout, cin * k * k), 0.3, 0.4)
    x = torch.randn(N, cin, H, W, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t, b: union_conv2d(x, fv, t, union, k, b, stride, padding, dilation),
                                    (x, tv.requires_grad_(True), b))


def test_union_conv2d_bad_input():
    union, fv, tv, *_ = _case((4, 3 * 9), 0.5, 0.5)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="columns"):
        union_conv2d(x, fv, tv, union, 1)
    with pytest.raises(ValueError, match="4-D"):
        union_conv2d(x[0], fv, tv, union, 3)
    with pytest.raises(ValueError, match="stride"):
        union_conv2d(x, fv, tv, union, 3, stride=0)
    with pytest.raises(TypeError, match="UnionLayout"):
        union_conv2d(x, fv, tv, union.layout, 3)
    with pytest.raises(ValueError, match="trainable_values must be"):
        union_conv2d(x, fv, tv[:-1], union, 3)


# frozen values held by the union (attach_frozen) ----------------------------------------------------------
@pytest.mark.parametrize("p_frozen,p_train", SPLITS)
def test_attached_frozen_values_compute_as_passed_ones(p_frozen, p_train, seed):
    union, fv, tv, w, frozen, trainable = _case((11, 13), p_frozen, p_train)
    held = UnionLayout.from_masks(frozen, trainable).attach_frozen(fv.clone())
    assert held.holds_frozen and torch.equal(held.frozen_values(), fv)
    x = torch.randn(4, 13, dtype=torch.float64)
    for u, f in ((union, fv), (held, None)):
        xg, t = x.clone().requires_grad_(True), tv.clone().requires_grad_(True)
        y = union_linear(xg, f, t, u)
        assert_close(y, x @ w.T)
        g = torch.randn_like(y)
        y.backward(g)
        assert_close(xg.grad, g @ w)
        assert_close(t.grad, (g.T @ x)[trainable])
    assert torch.equal(held.to_dense(None, tv), w)
    with pytest.raises(ValueError, match="holds no frozen values"):
        union_linear(x, None, tv, union)


def test_attached_frozen_values_follow_a_trainable_repack(seed):
    union, fv, tv, w, frozen, trainable = _case((19, 23), 0.3, 0.2)
    held = UnionLayout.from_masks(frozen, trainable).attach_frozen(fv)
    inner = CSRLayout.from_mask(trainable)
    on, off = trainable.flatten().nonzero().squeeze(1), (~(frozen | trainable)).flatten().nonzero().squeeze(1)
    new_mask = trainable.flatten().clone()
    new_mask[on[:3]] = False
    new_mask[off[:3]] = True
    inner, src = inner.with_topology(new_mask.view(trainable.shape))
    moved = held.with_trainable_repack(src, inner)
    assert torch.equal(moved.frozen_values(), fv) and torch.equal(moved.frozen_layout().mask(), frozen)
    assert moved.trainable_rows is inner.row_idx and moved.trainable_cols is inner.col_idx  # shared, not copied
    grow = off[3:4]
    with pytest.raises(ValueError, match="holds its frozen values"):
        held.update(torch.ones(held.nnz, dtype=torch.bool), grow, torch.zeros(1, dtype=torch.bool))
