"""BlockSparseLayout: construction, transposed index, dense round trips and validation errors."""
import pytest
import torch

from sparsecl.formats import BlockSparseLayout, block_reduce


@pytest.mark.parametrize("shape,B", [((64, 64), 32), ((70, 45), 16), ((1, 1), 16), ((130, 200), 64), ((0, 32), 32)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_round_trip_and_transposed_index(shape, B, density, seed):
    layout = BlockSparseLayout.random(shape, density, B)
    values = torch.randn(layout.nnzb, B, B, dtype=torch.float64)
    dense = layout.to_dense(values)
    assert dense.shape == shape
    # the mask covers exactly the active blocks, clipped at the edges
    assert torch.equal(layout.mask(), layout.to_dense(torch.ones_like(values)) != 0)
    # values_from_dense inverts to_dense on the in-range entries
    back = layout.values_from_dense(dense)
    assert torch.equal(layout.to_dense(back), dense)
    # transposed index: walking block columns visits every block once, rows ascending within a column
    seen = []
    for cb in range(layout.n_block_cols):
        lo, hi = int(layout.t_row_ptr[cb]), int(layout.t_row_ptr[cb + 1])
        rows = layout.t_col_idx[lo:hi].tolist()
        assert rows == sorted(rows)
        for j in range(lo, hi):
            k = int(layout.t_perm[j])
            assert int(layout.col_idx[k]) == cb and int(layout.row_idx[k]) == rows[j - lo]
            seen.append(k)
    assert sorted(seen) == list(range(layout.nnzb))


def test_from_dense_finds_nonzero_blocks():
    w = torch.zeros(64, 96)
    w[40, 70] = 1.0
    w[0, 0] = -2.0
    layout = BlockSparseLayout.from_dense(w, 32)
    assert layout.nnzb == 2
    assert torch.equal(layout.to_dense(layout.values_from_dense(w)), w)


def test_block_reduce_clips_edges():
    t = torch.ones(5, 7)
    assert block_reduce(t, 16, "sum").tolist() == [[35.0]]
    assert block_reduce(t, 16, "any").tolist() == [[True]]


class TestValidation:
    def make(self, row_ptr, col_idx, shape=(64, 96), B=32):
        return BlockSparseLayout(torch.tensor(row_ptr), torch.tensor(col_idx), shape, B)

    def test_valid(self):
        layout = self.make([0, 2, 3], [0, 2, 1])
        assert layout.nnzb == 3 and layout.row_ptr.dtype == torch.int32

    @pytest.mark.parametrize("row_ptr,col_idx,match", [
        ([0, 2], [0, 1], "row_ptr must have 3 entries"),
        ([1, 2, 3], [0, 1, 2], "row_ptr\\[0\\] must be 0"),
        ([0, 2, 1], [0, 1], "non-decreasing"),
        ([0, 1, 3], [0, 1], "does not match"),
        ([0, 1, 2], [0, 3], "out of range"),
        ([0, 2, 2], [1, 0], "unsorted"),
        ([0, 2, 2], [1, 1], "duplicate"),
        ([0, 1, 2], [0, -1], "outside"),
    ])
    def test_invalid_index(self, row_ptr, col_idx, match):
        with pytest.raises(ValueError, match=match):
            self.make(row_ptr, col_idx)

    def test_float_index_rejected(self):
        with pytest.raises(ValueError, match="integer"):
            BlockSparseLayout(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0]), (64, 64), 32)

    def test_bad_block_size(self):
        with pytest.raises(ValueError, match="block_size"):
            self.make([0, 0, 0], [], B=8)

    def test_block_mask_shape_mismatch(self):
        with pytest.raises(ValueError, match="block_mask shape"):
            BlockSparseLayout.from_block_mask(torch.ones(3, 3, dtype=torch.bool), (64, 64), 32)

    def test_values_shape_checked(self):
        layout = self.make([0, 2, 3], [0, 2, 1])
        with pytest.raises(ValueError, match="values must be"):
            layout.to_dense(torch.zeros(2, 32, 32))
