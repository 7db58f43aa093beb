"""BlockSparseLinear: parameter memory, from_dense, state_dict round trip, masks, compile."""
import pytest
import torch
from torch import nn

from sparsecl.formats import BlockSparseLayout, block_reduce
from sparsecl.nn import BlockSparseLinear

from .._ref import assert_close


def test_parameter_memory_scales_with_density():
    layer = BlockSparseLinear(1024, 1024, bias=False, density=0.1, block_size=32)
    dense_params = 1024 * 1024
    assert layer.values.numel() == layer.layout.nnzb * 32 * 32
    assert abs(layer.values.numel() / dense_params - 0.1) < 0.01


@pytest.mark.parametrize("shape", [(96, 64), (70, 45)])
def test_from_dense_keeps_weights_and_largest_blocks(shape, seed):
    lin = nn.Linear(shape[1], shape[0]).double()
    layer = BlockSparseLinear.from_dense(lin, density=1.0, block_size=16)
    x = torch.randn(4, shape[1], dtype=torch.float64)
    assert_close(layer(x), lin(x))
    half = BlockSparseLinear.from_dense(lin, density=0.5, block_size=16)
    # the kept weights are the original ones, and the kept blocks have the largest norms
    m = half.mask()
    assert torch.equal(half.dense_weight()[m], lin.weight.detach()[m])
    assert (half.dense_weight()[~m] == 0).all()
    norms = block_reduce(lin.weight.detach() ** 2, 16, "sum")
    kept = norms[half.layout.block_mask()]
    dropped = norms[~half.layout.block_mask()]
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


def test_from_dense_block_mask():
    lin = nn.Linear(64, 64)
    bm = torch.tensor([[True, False], [False, True]])
    layer = BlockSparseLinear.from_dense(lin, block_mask=bm, block_size=32)
    assert torch.equal(layer.layout.block_mask(), bm)
    with pytest.raises(ValueError, match="exactly one"):
        BlockSparseLinear.from_dense(lin)


def test_state_dict_round_trip_changes_topology(seed):
    a = BlockSparseLinear(100, 70, density=0.3, block_size=16)
    b = BlockSparseLinear(100, 70, density=0.7, block_size=16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 100)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.mask(), b.mask())
    assert set(a.state_dict()) == {"values", "bias", "row_ptr", "col_idx"}


def test_corrupt_state_dict_is_rejected():
    a = BlockSparseLinear(64, 64, density=0.5, block_size=32)
    sd = a.state_dict()
    sd["col_idx"] = sd["col_idx"].clone()
    if sd["col_idx"].numel():
        sd["col_idx"][0] = 99
        with pytest.raises(RuntimeError, match="invalid saved layout"):
            BlockSparseLinear(64, 64, density=0.5, block_size=32).load_state_dict(sd)


def test_edge_padding_stays_zero(seed):
    layer = BlockSparseLinear(45, 70, density=1.0, block_size=32)
    pad = layer._block_entry_mask() == 0
    assert (layer.values.detach()[pad] == 0).all()
    x = torch.randn(5, 45, requires_grad=True)
    layer(x).sum().backward()
    assert (layer.values.grad[pad] == 0).all()


def test_compile_fullgraph_matches_eager(seed):
    layer = BlockSparseLinear(64, 48, density=0.5, block_size=16)
    x = torch.randn(2, 64)
    out = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert_close(out, layer(x))


def test_layout_must_match_features():
    layout = BlockSparseLayout.random((64, 32), 0.5, 32)
    with pytest.raises(ValueError, match="layout shape"):
        BlockSparseLinear(64, 64, layout=layout)
