"""The sparse trunk layers' compact frozen store at the 16/32-bit column switch: a trunk linear layer with
in_features 65,535 / 65,536 / 65,537 and weights near the last columns computes forward, dX and d(trainable
values) as a float64 dense reference does, in both protocols, and its positions, values and owners survive a
checkpoint round trip (the trainer's own checkpoint form)."""
import pytest
import torch

from sparsecl.checkpoint import load_checkpoint, save_checkpoint
from sparsecl.continual.trunk import SparseTrunkLinear

OUT = 3


def _masks(n_cols, g):
    """Disjoint frozen and trainable masks [OUT, n_cols] with entries at and near the last columns, at the
    16-bit sign boundary (32767/32768) and a few at random."""
    frozen = torch.zeros(OUT, n_cols, dtype=torch.bool)
    trainable = torch.zeros_like(frozen)
    for r, c in [(0, n_cols - 1), (0, 0), (0, 32767), (0, 32768), (2, n_cols - 2), (2, n_cols - 1), (1, 65534)]:
        frozen[r, min(c, n_cols - 1)] = True
    for r, c in [(1, n_cols - 1), (1, n_cols - 3), (2, n_cols - 3), (0, 32769), (2, 1)]:
        trainable[r, c] = True
    extra = torch.randint(0, n_cols, (2, 40), generator=g)
    frozen[0, extra[0]] = True
    trainable[1, extra[1]] = True
    return frozen, trainable & ~frozen


def _layer(n_cols, seed):
    g = torch.Generator().manual_seed(seed)
    frozen, trainable = _masks(n_cols, g)
    owner = torch.zeros(OUT, n_cols, dtype=torch.uint8)
    owner[frozen] = torch.randint(1, 4, (int(frozen.sum()),), generator=g, dtype=torch.uint8)  # tasks 0..2
    w = torch.randn(OUT, n_cols, dtype=torch.float64, generator=g)
    layer = SparseTrunkLinear(n_cols, OUT)
    layer.load_split(w * (frozen | trainable), frozen | trainable, owner)
    return layer, w, frozen, trainable, owner, g


def _check_dense(layer, x, w_eff, trainable):
    """Forward, dX and d(trainable values) against float64 dense math with the effective weight."""
    x = x.clone().requires_grad_(True)
    y = layer(x)
    torch.testing.assert_close(y, x.detach() @ w_eff.T, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ w_eff, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.inner.values.grad, (g.T @ x.detach())[trainable], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_cols", [65535, 65536, 65537])
def test_trunk_linear_at_the_16_bit_column_switch(n_cols, seed):
    layer, w, frozen, trainable, owner, g = _layer(n_cols, seed)
    assert layer.frozen_col_idx.dtype == (torch.int16 if n_cols <= 65536 else torch.int32)
    assert torch.equal(layer.frozen_store.mask(), frozen)
    assert torch.equal(layer.frozen_store.to_dense(fill_tag=True), owner)  # the owner byte per entry
    assert torch.equal(layer.frozen_store.to_dense(), w * frozen)  # values exactly
    x = torch.randn(5, n_cols, dtype=torch.float64, generator=g)
    _check_dense(layer, x, w * (frozen | trainable), trainable)  # reuse: all, every frozen weight read
    # reuse: mask, a selection of the frozen weights (the last columns' among them) read from the union
    reused = frozen.clone()
    reused[0, 0] = reused[0, 32767] = False
    layer.allocate(trainable, w * trainable, reused=reused, owned=owner)
    layer.inner.values.grad = None
    _check_dense(layer, x, w * (reused | trainable), trainable)
    assert torch.equal(layer.dst_mask(), reused | trainable)


@pytest.mark.parametrize("n_cols", [65535, 65536, 65537])
def test_positions_values_and_owners_survive_a_checkpoint(tmp_path, n_cols, seed):
    layer, w, frozen, trainable, owner, g = _layer(n_cols, seed)
    layer.freeze(4)  # the trainable part joins the store as task 3's
    owner = owner.clone()
    owner[trainable] = 4
    stored = frozen | trainable
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"values": layer.stored_weight()[stored], "mask": stored,
                           "owner": layer.frozen_store.to_dense(fill_tag=True)})
    s = load_checkpoint(path)
    back = torch.zeros(OUT, n_cols, dtype=s["values"].dtype)
    back[s["mask"]] = s["values"]
    again = SparseTrunkLinear(n_cols, OUT)
    again.load_split(back, s["mask"], s["owner"])
    for name in ("frozen_values", "frozen_row_ptr", "frozen_col_idx", "frozen_owner"):
        assert torch.equal(getattr(again, name), getattr(layer, name)), name
    assert torch.equal(again.frozen_store.mask(), stored)
    assert torch.equal(again.frozen_store.to_dense(fill_tag=True), owner)
    assert torch.equal(again.frozen_store.to_dense(), w * stored)
    x = torch.randn(4, n_cols, dtype=torch.float64, generator=g)
    torch.testing.assert_close(again(x), x @ (w * stored).T, rtol=1e-12, atol=1e-12)
