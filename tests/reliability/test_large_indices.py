"""Large indices: element offsets beyond 2**31 either work (int64 offsets in every CPU kernel) or are
rejected with a clear error. Cheap cases: weights whose logical [out, in] (or [out, in*kh*kw]) index space
exceeds 2**31 while nnz stays small, so flat positions, block offsets and im2col columns pass 2**31 with
kilobytes of data; stride-0 expanded views of 2**31+ elements; int32 index entries at 2**31. The one real
>2**31-element buffer (a 4 GiB float16 weight for prune_regrow) is opt-in (SPARSECL_LARGE_MEMORY_TESTS=1 or
the long profile) and runs only when 12 GiB are free.
A process memory cap (current + 6 GiB) turns any accidental huge allocation into a RuntimeError."""
import os
import resource

import pytest
import torch

import sparsecl
from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_conv2d, bsr_linear, csr_conv2d, csr_linear, masked_linear, prune_regrow, slimmable_linear

from .._ref import address_sanitized, assert_close
from ._strategies import LONG

BIG = 2**31
HAS_EXT = sparsecl.build_info()["sparsecl_extension"]
# the pure-torch fallbacks build the dense weight (tens of GiB here): these cases are for the compiled kernels
pytestmark = pytest.mark.skipif(not HAS_EXT, reason="needs the compiled extension")


def _meminfo(key):
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


@pytest.fixture(autouse=True)
def memory_cap():
    if address_sanitized():
        yield
        return
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + 6 * 2**30, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _grad(y, leaves, seed=0):
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return gy, torch.autograd.grad(y, leaves, gy)


def test_csr_linear_flat_positions_beyond_int32():
    out_f = in_f = 70_001  # 4.9e9 logical positions
    keys = torch.tensor([5, 70_000, BIG - 1, BIG, BIG + 12_345, out_f * in_f - 1], dtype=torch.int64)
    layout = CSRLayout._from_sorted_keys(keys, (out_f, in_f))
    assert torch.equal(layout.keys(), keys)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, in_f, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.nnz, generator=g, dtype=torch.float64, requires_grad=True)
    y = csr_linear(x, v, layout)
    rows, cols = layout.row_idx.long(), layout.col_idx.long()
    ref = torch.zeros(2, out_f, dtype=torch.float64).index_add_(1, rows, x.detach()[:, cols] * v.detach())
    assert_close(y.detach(), ref)
    gy, (dx, dv) = _grad(y, [x, v])
    assert_close(dx, torch.zeros(2, in_f, dtype=torch.float64).index_add_(1, cols, gy[:, rows] * v.detach()))
    assert_close(dv, (gy[:, rows] * x.detach()[:, cols]).sum(0))


def test_csr_update_with_grow_positions_beyond_int32():
    shape = (70_001, 70_001)
    layout = CSRLayout._from_sorted_keys(torch.tensor([3, BIG + 7, BIG + 70_001 * 3]), shape)
    grow = torch.tensor([BIG - 2, BIG + 8, 70_001 * 70_001 - 1])
    keep = torch.tensor([True, False, True])
    new, src = layout.update(keep, grow)
    ref, ref_src = layout._update_torch(keep, grow)
    for name, t in new.index_tensors().items():
        assert torch.equal(t, getattr(ref, name)), name
    assert torch.equal(src, ref_src)
    assert new.keys().tolist() == [3, BIG - 2, BIG + 8, BIG + 70_001 * 3, 70_001 * 70_001 - 1]
    with pytest.raises(ValueError, match="outside"):
        layout.update(keep, torch.tensor([70_001 * 70_001]))


def test_bsr_linear_block_offsets_beyond_int32():
    B, out_f, in_f = 64, 2**16 + 3, 2**16 + 5  # 4.3e9 logical elements, edge blocks clipped
    nb = (-(-out_f // B), -(-in_f // B))
    grid = torch.zeros(nb, dtype=torch.bool)
    grid[0, 1] = grid[700, 3] = grid[nb[0] - 1, nb[1] - 1] = grid[nb[0] - 1, 0] = True
    layout = BlockSparseLayout.from_block_mask(grid, (out_f, in_f), B)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, in_f, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.nnzb, B, B, generator=g, dtype=torch.float64, requires_grad=True)
    y = bsr_linear(x, v, layout)
    gy, (dx, dv) = _grad(y, [x, v])
    ref_y, ref_dx, ref_dv = torch.zeros(3, out_f, dtype=torch.float64), torch.zeros_like(x), torch.zeros_like(v)
    for k, (rb, cb) in enumerate(zip(layout.row_idx.tolist(), layout.col_idx.tolist())):
        o0, i0 = rb * B, cb * B
        o1, i1 = min(o0 + B, out_f), min(i0 + B, in_f)
        w = v.detach()[k, : o1 - o0, : i1 - i0]
        ref_y[:, o0:o1] += x.detach()[:, i0:i1] @ w.T
        ref_dx[:, i0:i1] += gy[:, o0:o1] @ w
        ref_dv[k, : o1 - o0, : i1 - i0] = gy[:, o0:o1].T @ x.detach()[:, i0:i1]
    assert_close(y.detach(), ref_y)
    assert_close(dx, ref_dx)
    assert_close(dv, ref_dv)


def _center_tap_ref(x, w_of, out_c):
    """y[o] = sum_c w(o, c) * x[c] for 1x1 inputs where only the centre tap sees data (padding = k // 2)."""
    return torch.stack([w_of(o) @ x for o in range(out_c)])


def test_csr_conv2d_columns_beyond_int32():
    O, C, k = 50_000, 1_000, 7  # [O, C*49] = 2.45e9 logical positions
    cols = C * k * k
    centre = 3 * k + 3
    keys = torch.tensor([10 * cols + 5 * 49 + centre, 10 * cols + 6 * 49 + 1, (O - 1) * cols + (C - 1) * 49 + centre,
                         BIG + 17, (O - 1) * cols + 2 * 49 + centre])
    layout = CSRLayout._from_sorted_keys(keys.sort().values, (O, cols))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.nnz, generator=g, dtype=torch.float64, requires_grad=True)
    y = csr_conv2d(x, v, layout, k, padding=3)
    rows, cs = layout.row_idx.long(), layout.col_idx.long()
    hit = (cs % 49) == centre
    ref = torch.zeros(O, dtype=torch.float64).index_add_(0, rows[hit], v.detach()[hit] * x.detach().flatten()[cs[hit] // 49])
    assert_close(y.detach().flatten(), ref)
    gy, (dx, dv) = _grad(y, [x, v])
    gyf = gy.flatten()
    assert_close(dx.flatten(), torch.zeros(C, dtype=torch.float64).index_add_(0, cs[hit] // 49,
                                                                              v.detach()[hit] * gyf[rows[hit]]))
    assert_close(dv, torch.where(hit, gyf[rows] * x.detach().flatten()[cs // 49], 0))


def test_bsr_conv2d_channels_beyond_int32_positions():
    B, O, C = 64, 2**16 + 64, 2**16  # [O, C, 3, 3]: 3.9e10 logical elements
    nb = (-(-O // B), C // B)
    grid = torch.zeros(nb, dtype=torch.bool)
    grid[nb[0] - 1, nb[1] - 1] = grid[3, 0] = True
    layout = BlockSparseLayout.from_block_mask(grid, (O, C), B)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(layout.nnzb, B, B, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = bsr_conv2d(x, v, layout, padding=1)
    ref = torch.zeros(O, dtype=torch.float64)
    for k, (rb, cb) in enumerate(zip(layout.row_idx.tolist(), layout.col_idx.tolist())):
        ref[rb * B:(rb + 1) * B] += v.detach()[k, :, :, 1, 1] @ x.detach().flatten()[cb * B:(cb + 1) * B]
    assert_close(y.detach().flatten(), ref)
    gy, (dx, dv) = _grad(y, [x, v])
    ref_dx = torch.zeros(C, dtype=torch.float64)
    for k, (rb, cb) in enumerate(zip(layout.row_idx.tolist(), layout.col_idx.tolist())):
        ref_dx[cb * B:(cb + 1) * B] += v.detach()[k, :, :, 1, 1].T @ gy.flatten()[rb * B:(rb + 1) * B]
        assert_close(dv[k, :, :, 1, 1], torch.outer(gy.flatten()[rb * B:(rb + 1) * B], x.detach().flatten()[cb * B:(cb + 1) * B]))
        assert not dv[k, :, :, 0].any() and not dv[k, :, :, :, 2].any()
    assert_close(dx.flatten(), ref_dx)


@pytest.mark.parametrize("op", ["slimmable", "masked"])
def test_expanded_weight_of_more_than_2pow31_elements(op):
    """A stride-0 weight view of 46341^2 > 2**31 elements: computed exactly (no int32 offset), or, where the
    kernel needs a contiguous copy (8 GiB) beyond the memory cap, a RuntimeError from the allocator."""
    n = 46_341
    w = torch.full((1, 1), 0.5).expand(n, n)
    x = torch.ones(2, n)
    try:
        if op == "slimmable":
            y = slimmable_linear(x[:, :1000], w, None, 3)
            expect = torch.full((2, 3), 500.0)
        else:
            y = masked_linear(x, w, torch.ones(1, 1, dtype=torch.bool).expand(n, n))
            expect = torch.full((2, n), 0.5 * n)
    except RuntimeError as exc:
        assert "allocate" in str(exc), str(exc)
        return
    assert_close(y, expect)


def test_index_entries_at_2pow31_are_rejected():
    with pytest.raises(ValueError, match=r"2\*\*31"):
        CSRLayout([0, BIG], [0], (1, 4))
    with pytest.raises(ValueError, match=r"2\*\*31"):
        BlockSparseLayout([0, 1], [BIG], (16, 16), 16)
    x, v = torch.randn(1, 4), torch.randn(1)  # the raw op: a row_ptr whose end cannot be nnz
    rp = torch.tensor([0, 2**31 - 1], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="row_ptr"):
        torch.ops.sparsecl.csr_linear(x, v, rp, torch.zeros(1, dtype=torch.int32), 1, None)


def test_prune_regrow_counts_beyond_int32_are_clipped():
    w, m = torch.randn(4, 5), torch.rand(4, 5) < 0.5
    nnz = int(m.sum())
    changed = prune_regrow([w], [m], [torch.randn(4, 5)], [torch.randn(4, 5)], [2**40])
    assert int(m.sum()) == nnz and changed[0] <= 2 * nnz


@pytest.mark.skipif(not (LONG or os.environ.get("SPARSECL_LARGE_MEMORY_TESTS")),
                    reason="4 GiB, ~20 s: runs with SPARSECL_LARGE_MEMORY_TESTS=1 or the long hypothesis profile")
@pytest.mark.skipif(_meminfo("MemAvailable") < 12 * 2**30, reason="needs 12 GiB free for a 4 GiB weight")
def test_prune_regrow_block_weight_of_more_than_2pow31_elements():
    """A real float16 weight of 32769 x 65536 > 2**31 elements at block granularity (B = 2**15, grid 2 x 2):
    the blocks zeroed by the op are whole and everything else is untouched, across the 2**31 boundary."""
    w = torch.ones(32_769, 65_536, dtype=torch.float16)
    m = torch.tensor([[True, False], [True, False]])
    prune = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # drop block (1, 0): rows 32768.., cols 0..32767
    grow = torch.tensor([[0.0, 1.0], [0.0, 0.0]])   # grow block (0, 1)
    assert prune_regrow([w], [m], [prune], [grow], [1]) == [2]
    assert torch.equal(m, torch.tensor([[True, True], [False, False]]))
    assert not w[32_768:, :32_768].any() and not w[:32_768, 32_768:].any()
    assert bool(w[:32_768, :32_768].eq(1).all()) and bool(w[32_768:, 32_768:].eq(1).all())
