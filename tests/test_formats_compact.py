"""CompactCSR (values + row_ptr + 16/32-bit columns + owner tags, nothing derived) and the bit-packed masks:
exact round trips of positions, values and tags with fresh random patterns, the column dtype switch at
65,536 columns, merge / find / mask, and bad input."""
import pytest
import torch

from sparsecl.formats import CompactCSR, CSRLayout, column_dtype, pack_bits, unpack_bits

SHAPES = [(0, 5), (5, 0), (1, 1), (7, 13), (3, 65535), (2, 65536), (2, 65537), (1, 70000)]


def _random(shape, p, g, dtype=torch.float32):
    mask = torch.rand(shape, generator=g) < p
    values = torch.randn(int(mask.sum()), generator=g, dtype=torch.float64).to(dtype)
    tags = torch.randint(1, 256, (values.numel(),), generator=g, dtype=torch.uint8)
    return mask, values, tags


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_round_trips_positions_values_and_tags_exactly(shape, p, seed):
    g = torch.Generator().manual_seed(seed)
    if shape[0] * shape[1] > 100000 and p > 0.3:
        p = 0.3
    mask, values, tags = _random(shape, p, g, torch.float64)
    layout = CSRLayout.from_mask(mask)
    store = CompactCSR.from_layout(layout, values, tags)
    assert store.col_idx.dtype == (torch.int16 if shape[1] <= 65536 else torch.int32) == column_dtype(shape[1])
    assert store.row_ptr.dtype == torch.int32 and store.nnz == int(mask.sum())
    assert torch.equal(store.keys(), layout.keys()) and torch.equal(store.mask(), mask)
    assert torch.equal(store.cols(), layout.col_idx)
    dense = torch.zeros(shape, dtype=torch.float64)
    dense[mask] = values
    assert torch.equal(store.to_dense(), dense)
    owners = torch.zeros(shape, dtype=torch.uint8)
    owners[mask] = tags
    assert torch.equal(store.to_dense(fill_tag=True), owners)
    assert torch.equal(store.mask(tag_max=100), mask & (owners <= 100))
    full = store.layout()
    assert torch.equal(full.row_ptr, layout.row_ptr) and torch.equal(full.t_perm, layout.t_perm)
    again = CompactCSR.from_keys(store.keys(), values, shape, tags)
    for name, t in store.tensors().items():
        assert torch.equal(again.tensors()[name], t), name
    CompactCSR(store.values, store.row_ptr, store.col_idx, shape, store.tag)  # validates
    assert store.nbytes() == values.numel() * (8 + 1 + (2 if shape[1] <= 65536 else 4)) + 4 * (shape[0] + 1)


def test_the_last_columns_read_back_at_each_width(seed):
    for n in (65535, 65536, 65537):
        keys = torch.tensor([0, 32767, 32768, n - 2, n - 1, n + 32768, 2 * n - 1])
        store = CompactCSR.from_keys(keys, torch.arange(7.0), (2, n), 1)
        assert torch.equal(store.keys(), keys) and int(store.cols().max()) == n - 1


def test_merge_find_and_bad_input(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (9, 31)
    a_mask, _, _ = _random(shape, 0.3, g)
    b_mask = (torch.rand(shape, generator=g) < 0.3) & ~a_mask
    w = torch.randn(shape, generator=g)
    a = CompactCSR.from_keys(a_mask.flatten().nonzero().squeeze(1), w[a_mask], shape, 1)
    b = CompactCSR.from_keys(b_mask.flatten().nonzero().squeeze(1), w[b_mask], shape, 2)
    m = a.merge(b)
    assert torch.equal(m.mask(), a_mask | b_mask) and torch.equal(m.to_dense(), w * (a_mask | b_mask))
    assert torch.equal(m.mask(tag_max=1), a_mask)
    keys = b.keys()
    assert torch.equal(m.keys()[m.find(keys)], keys)
    with pytest.raises(ValueError, match="not entries"):
        a.find((~a_mask).flatten().nonzero().squeeze(1)[:1])
    if a.nnz:
        with pytest.raises(ValueError, match="share positions"):
            m.merge(a)
    with pytest.raises(ValueError, match="col_idx must be torch.int16"):
        CompactCSR(a.values, a.row_ptr, a.cols(), shape, a.tag)
    with pytest.raises(ValueError, match="tag must be uint8"):
        CompactCSR(a.values, a.row_ptr, a.col_idx, shape, a.tag.long())


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_pack_bits_round_trip(n, seed):
    bits = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), bits)
    with pytest.raises(ValueError, match="packed must be uint8"):
        unpack_bits(packed, n + 8)
