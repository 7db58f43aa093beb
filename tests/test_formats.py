"""CSRLayout: construction, validation (ValueError), transposed index, conversions and the incremental
topology update against a rebuild from the mask."""
import pytest
import torch

import sparsecl
from sparsecl import CSRLayout
from sparsecl.formats import _transpose_index_torch


def assert_same_layout(a, b):
    assert a.shape == b.shape
    for name, t in a.index_tensors().items():
        u = getattr(b, name)
        assert t.dtype == torch.int32 and u.dtype == torch.int32, name
        assert torch.equal(t, u), name


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (5, 0), (0, 7), (13, 29), (64, 33)])
@pytest.mark.parametrize("density", [0.0, 0.2, 1.0])
def test_from_mask_index_is_consistent(shape, density, seed):
    mask = torch.rand(shape) < density
    layout = CSRLayout.from_mask(mask)
    assert layout.nnz == int(mask.sum())
    assert torch.equal(layout.mask(), mask)
    rows, cols = mask.nonzero(as_tuple=True)
    assert torch.equal(layout.row_idx.long(), rows) and torch.equal(layout.col_idx.long(), cols)
    # transposed index: column-major order of the same entries, t_perm points into values order
    t_rows, t_cols = mask.T.nonzero(as_tuple=True)
    assert torch.equal(layout.t_col_idx.long(), t_cols)
    assert torch.equal(layout.col_idx[layout.t_perm.long()].long(), t_rows)
    assert torch.equal(layout.t_row_ptr[1:].long(), mask.sum(0).cumsum(0))
    w = torch.randn(shape, dtype=torch.float64) * mask
    v = layout.values_from_dense(w)
    assert torch.equal(layout.to_dense(v), w)
    assert_same_layout(CSRLayout.from_dense(w + 0.0), CSRLayout.from_mask(w != 0))
    assert layout.density == pytest.approx(mask.sum().item() / max(1, mask.numel()))


def test_random_density_and_generator():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = CSRLayout.random((40, 50), 0.25, generator=g1), CSRLayout.random((40, 50), 0.25, generator=g2)
    assert a.nnz == 500
    assert_same_layout(a, b)
    with pytest.raises(ValueError, match="density"):
        CSRLayout.random((4, 4), 1.5)


def test_constructor_round_trip_and_to(seed):
    layout = CSRLayout.random((20, 30), 0.3)
    again = CSRLayout(layout.row_ptr.long(), layout.col_idx.tolist(), (20, 30))
    assert_same_layout(layout, again)
    assert_same_layout(layout, layout.to("cpu"))


class TestValidation:
    def test_row_ptr_length(self):
        with pytest.raises(ValueError, match="row_ptr must have 4"):
            CSRLayout([0, 1, 2], [0, 1], (3, 4))

    def test_row_ptr_start_and_monotone(self):
        with pytest.raises(ValueError, match=r"row_ptr\[0\]"):
            CSRLayout([1, 1, 2], [0], (2, 4))
        with pytest.raises(ValueError, match="non-decreasing"):
            CSRLayout([0, 2, 1], [0], (2, 4))

    def test_row_ptr_end(self):
        with pytest.raises(ValueError, match="does not match"):
            CSRLayout([0, 1, 3], [0, 1], (2, 4))

    def test_col_out_of_range(self):
        with pytest.raises(ValueError, match="out of range"):
            CSRLayout([0, 1, 2], [0, 4], (2, 4))

    def test_negative_index(self):
        with pytest.raises(ValueError, match="outside"):
            CSRLayout([0, 1, 2], [0, -1], (2, 4))

    def test_duplicate_and_unsorted(self):
        with pytest.raises(ValueError, match="duplicate"):
            CSRLayout([0, 2], [1, 1], (1, 4))
        with pytest.raises(ValueError, match="unsorted"):
            CSRLayout([0, 2], [2, 1], (1, 4))

    def test_float_index(self):
        with pytest.raises(ValueError, match="integer"):
            CSRLayout(torch.tensor([0.0, 1.0]), [0], (1, 4))

    def test_negative_shape(self):
        with pytest.raises(ValueError, match="non-negative"):
            CSRLayout([0], [], (-1, 4))

    def test_bad_mask_and_values(self):
        with pytest.raises(ValueError, match="bool"):
            CSRLayout.from_mask(torch.ones(3, 3))
        layout = CSRLayout.random((3, 3), 0.5)
        with pytest.raises(ValueError, match="values must be"):
            layout.to_dense(torch.zeros(layout.nnz + 1))
        with pytest.raises(ValueError, match="weight shape"):
            layout.values_from_dense(torch.zeros(3, 4))


def swap_mask(mask, n):
    flat = mask.flatten().clone()
    on, off = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    n = min(n, on.numel(), off.numel())
    flat[on[torch.randperm(on.numel())[:n]]] = False
    flat[off[torch.randperm(off.numel())[:n]]] = True
    return flat.view(mask.shape)


@pytest.mark.parametrize("shape,density,n", [((13, 29), 0.3, 10), ((40, 7), 0.5, 0), ((1, 50), 0.1, 5),
                                              ((30, 30), 0.0, 0), ((30, 30), 1.0, 0), ((64, 80), 0.05, 200)])
def test_with_topology_matches_rebuild(shape, density, n, seed):
    layout = CSRLayout.random(shape, density)
    new_mask = swap_mask(layout.mask(), n)
    new, src = layout.with_topology(new_mask)
    assert_same_layout(new, CSRLayout.from_mask(new_mask))
    assert src.dtype == torch.int64 and src.shape == (new.nnz,)
    # src maps every surviving entry to its old position, -1 for grown ones
    old_keys, new_keys = layout.keys(), new.keys()
    kept = src >= 0
    assert torch.equal(old_keys[src[kept]], new_keys[kept])
    assert not bool(layout.mask().flatten()[new_keys[~kept]].any())
    values = torch.randn(layout.nnz)
    repacked = torch.where(kept, values[src.clamp_min(0)], torch.zeros(()))
    expect = layout.to_dense(values) * new_mask
    assert torch.equal(new.to_dense(repacked), expect)


@pytest.mark.parametrize("cpp", [True, False])
def test_update_rejects_bad_input(cpp, seed, monkeypatch):
    if not cpp:  # the torch fallback validates too
        monkeypatch.setattr(sparsecl._extension, "AVAILABLE", False)
    layout = CSRLayout.random((10, 10), 0.3)
    keep = torch.ones(layout.nnz, dtype=torch.bool)
    with pytest.raises(ValueError, match="already active"):
        layout.update(keep, layout.keys()[:1])
    with pytest.raises(ValueError, match="outside"):
        layout.update(keep, torch.tensor([100]))
    with pytest.raises(ValueError, match="keep must be"):
        layout.update(keep[1:], torch.tensor([], dtype=torch.long))
    free = (~layout.mask()).flatten().nonzero().squeeze(1)
    with pytest.raises(ValueError, match="duplicate"):
        layout.update(keep, free[:1].repeat(2))
    with pytest.raises(ValueError, match="new_mask"):
        layout.with_topology(torch.ones(10, 11, dtype=torch.bool))


@pytest.mark.parametrize("shape,density,n", [((13, 29), 0.3, 10), ((1, 50), 0.1, 5), ((64, 80), 0.05, 200),
                                              ((30, 30), 0.0, 0), ((7, 1), 0.5, 2)])
def test_cpp_update_matches_torch_update(shape, density, n, seed):
    layout = CSRLayout.random(shape, density)
    new_mask = swap_mask(layout.mask(), n)
    flat = new_mask.flatten()
    keep = flat[layout.keys()]
    fresh = flat.clone()
    fresh[layout.keys()] = False
    grow = fresh.nonzero().squeeze(1)
    a, src_a = layout.update(keep, grow)
    b, src_b = layout._update_torch(keep, grow)
    assert_same_layout(a, b)
    assert torch.equal(src_a, src_b)


def test_csr_update_opcheck(seed):
    layout = CSRLayout.random((9, 11), 0.3)
    keep = torch.rand(layout.nnz) < 0.7
    free = (~layout.mask()).flatten().nonzero().squeeze(1)
    grow = free[torch.randperm(free.numel())[:4]].sort().values
    args = (layout.row_ptr, layout.col_idx, 11, keep, grow)
    torch.library.opcheck(torch.ops.sparsecl.csr_update.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with pytest.raises(RuntimeError, match="sorted"):
        torch.ops.sparsecl.csr_update(*args[:4], grow.flip(0).contiguous())
    with pytest.raises(RuntimeError, match="col_idx"):
        torch.ops.sparsecl.csr_update(*args[:2], 5, *args[3:])


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (5, 0), (0, 7), (13, 29), (300, 7), (2, 1000)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_csr_transpose_matches_torch(shape, density, threads, seed):
    """The C++ counting-sort transpose equals the torch argsort construction, for any thread count (the
    row ranges split per thread must not change the order); rows need not be sorted within a row."""
    layout = CSRLayout.random(shape, density)
    ci = layout.col_idx.clone()
    for r in range(shape[0]):  # shuffle each row's columns
        a, b = int(layout.row_ptr[r]), int(layout.row_ptr[r + 1])
        ci[a:b] = ci[a:b][torch.randperm(b - a)]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.ops.sparsecl.csr_transpose(layout.row_ptr, ci, shape[1])
    finally:
        torch.set_num_threads(old)
    ref = _transpose_index_torch(layout.row_ptr, ci, shape[1])
    for o, r, name in zip(out, ref, ("row_idx", "t_row_ptr", "t_col_idx", "t_perm")):
        assert o.dtype == torch.int32 and torch.equal(o, r), name


def test_csr_transpose_opcheck_and_bad_input(seed):
    layout = CSRLayout.random((9, 11), 0.3)
    args = (layout.row_ptr, layout.col_idx, 11)
    torch.library.opcheck(torch.ops.sparsecl.csr_transpose.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    op = torch.ops.sparsecl.csr_transpose
    with pytest.raises(RuntimeError, match="col_idx"):
        op(layout.row_ptr, layout.col_idx, 3)
    with pytest.raises(RuntimeError, match="int32"):
        op(layout.row_ptr.long(), layout.col_idx, 11)
    with pytest.raises(RuntimeError, match="row_ptr"):
        op(layout.row_ptr[:-1], layout.col_idx, 11)
    with pytest.raises(RuntimeError, match="n_cols"):
        op(layout.row_ptr, layout.col_idx, -1)


@pytest.mark.parametrize("shape,density,n", [((13, 29), 0.3, 10), ((1, 50), 0.1, 5), ((64, 80), 0.05, 200),
                                              ((30, 30), 0.0, 0), ((30, 30), 1.0, 0), ((7, 1), 0.5, 2),
                                              ((0, 5), 0.5, 0), ((5, 0), 0.5, 0), ((3, 1000), 0.2, 50)])
def test_csr_mask_delta_matches_torch(shape, density, n, seed):
    """The one-pass C++ (keep, grow) equals the torch construction, also for a non-contiguous mask."""
    layout = CSRLayout.random(shape, density)
    new_mask = swap_mask(layout.mask(), n)
    flat = new_mask.flatten()
    keys = layout.keys()
    fresh = flat.clone()
    fresh[keys] = False
    for m in (new_mask, new_mask.t().contiguous().t()):
        keep, grow = torch.ops.sparsecl.csr_mask_delta(layout.row_ptr, layout.col_idx, m)
        assert torch.equal(keep, flat[keys])
        assert torch.equal(grow, fresh.nonzero().squeeze(1))


def test_csr_mask_delta_opcheck_and_bad_input(seed):
    layout = CSRLayout.random((9, 11), 0.3)
    new_mask = swap_mask(layout.mask(), 3)
    args = (layout.row_ptr, layout.col_idx, new_mask)
    torch.library.opcheck(torch.ops.sparsecl.csr_mask_delta.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    op = torch.ops.sparsecl.csr_mask_delta
    with pytest.raises(RuntimeError, match="bool"):
        op(layout.row_ptr, layout.col_idx, new_mask.float())
    with pytest.raises(RuntimeError, match="rows"):
        op(layout.row_ptr, layout.col_idx, new_mask[1:])
    with pytest.raises(RuntimeError, match="col_idx"):
        op(layout.row_ptr, layout.col_idx, new_mask[:, :3])


@pytest.mark.parametrize("shape", [(0,), (7,), (5, 3, 3), (0, 4, 4)])
@pytest.mark.parametrize("n_new", ["same", 2, 0])
def test_repack_values_moves_rows_and_zeroes_new_ones(shape, n_new, seed):
    """Row j of the result is old row src[j] (bit-identical) or zeros for src[j] < 0; the same row count keeps
    the storage; src comes back as int64."""
    g = torch.Generator().manual_seed(seed)
    values = torch.nn.Parameter(torch.randn(shape, generator=g))
    n = shape[0] if n_new == "same" else n_new
    src = torch.randint(-1, max(shape[0], 1), (n,), generator=g) if shape[0] else torch.full((n,), -1)
    old, ptr = values.detach().clone(), values.data_ptr()
    out = sparsecl.formats.repack_values_(values, src.int())
    assert out.dtype == torch.int64 and torch.equal(out, src)
    assert values.shape == (n, *shape[1:])
    if n == shape[0] and n:
        assert values.data_ptr() == ptr
    for j in range(n):
        expect = old[src[j]] if src[j] >= 0 else torch.zeros(shape[1:])
        assert torch.equal(values.detach()[j], expect)


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (7, 13), (33, 5)])
def test_derived_index_is_computed_on_first_use_and_can_be_dropped(shape, seed):
    mask = torch.rand(shape) < 0.4
    layout = CSRLayout.from_mask(mask)
    eager = _transpose_index_torch(layout.row_ptr, layout.col_idx, shape[1])
    assert all(v is None for v in layout._derived.values())  # nothing derived before it is asked for
    assert torch.equal(layout.keys(), mask.flatten().nonzero().squeeze(1))  # keys do not keep row_idx
    assert layout._derived["row_idx"] is None
    for name, want in zip(("row_idx", "t_row_ptr", "t_col_idx", "t_perm"), eager):
        assert torch.equal(getattr(layout, name), want), name
    kept = layout.t_perm
    assert layout.t_perm is kept  # kept once computed
    layout.drop_derived("t_perm", "row_idx")
    assert layout._derived["t_perm"] is None and torch.equal(layout.t_perm, eager[3])
    with pytest.raises(ValueError, match="derived index"):
        layout.drop_derived("col_idx")
