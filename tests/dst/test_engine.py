"""The DST engine: topology changes keep nnz, optimizer state follows, resume is bit-identical,
eligible positions are protected, groups apply per layer, schedules and criteria behave as documented."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from sparsecl.dst import DST, drop_fraction_at
from sparsecl.dst import criteria
from sparsecl.formats import BlockSparseLayout
from sparsecl.nn import BlockSparseLinear

from ._layers import MaskedLinear


def mlp(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "masked":
        return nn.Sequential(MaskedLinear(20, 48, 0.3, g), nn.ReLU(), MaskedLinear(48, 10, 0.3, g))
    return nn.Sequential(BlockSparseLinear(40, 96, density=0.4, block_size=16), nn.ReLU(),
                         BlockSparseLinear(96, 20, density=0.5, block_size=16))


def data(kind, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = (20, 10) if kind == "masked" else (40, 20)
    return [(torch.randn(16, d_in, generator=g), torch.randint(0, d_out, (16,), generator=g)) for _ in range(n)]


def make_opt(name, model):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train(model, opt, dst, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        dst.step()


def masks(model):
    return [m.dst_mask().clone() for m in model if hasattr(m, "dst_mask")]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["masked", "block"])
@pytest.mark.parametrize("growth", ["gradient", "random", "unfired", "momentum"])
@pytest.mark.parametrize("prune", ["magnitude", "set", "taylor"])
def test_training_changes_topology_and_keeps_nnz(kind, growth, prune):
    model = mlp(kind)
    opt = make_opt("sgd", model)
    before = masks(model)
    dst = DST(model, opt, prune=prune, growth=growth, update_every=2, end_step=16, drop_fraction=0.3)
    train(model, opt, dst, data(kind, 8))
    after = masks(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "topology never changed"
    for a, b in zip(before, after):
        assert a.dtype == b.dtype == torch.bool and int(a.sum()) == int(b.sum())
    assert len(dst.history) == 4 and all(sum(h["changed"].values()) > 0 for h in dst.history[:1])
    for m in model:  # inactive weights are zero in the effective weight; blocks match the layout
        if hasattr(m, "dst_mask"):
            assert torch.isfinite(m.dense_weight()).all()


def test_grown_weights_zero_and_survivors_bit_identical():
    model = mlp("masked")
    opt = make_opt("sgd", model)
    dst = DST(model, opt, growth="random", update_every=1, decay="constant", drop_fraction=0.5)
    layer = model[0]
    w0, m0 = layer.weight.detach().clone(), layer.mask.clone()
    dst._step = 0
    dst.step()
    m1 = layer.mask
    assert int(m1.sum()) == int(m0.sum()) and not torch.equal(m0, m1)
    grown, kept = m1 & ~m0, m1 & m0
    assert (layer.weight[grown] == 0).all()
    assert torch.equal(layer.weight[kept], w0[kept])
    assert (layer.weight[~m1] == 0).all()


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["masked", "block"])
def test_optimizer_state_follows_topology(opt_name, kind):
    model = mlp(kind)
    opt = make_opt(opt_name, model)
    dst = DST(model, opt, growth="random", update_every=3, decay="constant", drop_fraction=0.4)
    batches = data(kind, 3)
    train(model, opt, dst, batches[:2])
    layer = model[0]
    p = layer.sparse_parameter
    keys = [k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.shape == p.shape]
    assert keys
    old_state = {k: dst._param_as_dense(layer, opt.state[p][k]).clone() for k in keys}
    old_mask = layer.mask() if kind == "block" else layer.mask.clone()
    # the third step is an update: capture state right after optimizer.step, before dst.step
    x, y = batches[2]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    old_state = {k: dst._param_as_dense(layer, opt.state[p][k]).clone() for k in keys}
    dst.step()
    new_mask = layer.mask() if kind == "block" else layer.mask.clone()
    assert not torch.equal(old_mask, new_mask)
    for k in keys:
        assert opt.state[p][k].shape == p.shape
        new = dst._param_as_dense(layer, opt.state[p][k])
        kept, grown = old_mask & new_mask, new_mask & ~old_mask
        assert torch.equal(new[kept], old_state[k][kept]), f"{k}: surviving moments must be kept"
        assert (new[grown] == 0).all(), f"{k}: grown positions must start at zero"
    if kind == "masked":  # dense storage: dropped positions cleared too
        for k in keys:
            assert (opt.state[p][k][old_mask & ~new_mask] == 0).all()
    train(model, opt, dst, batches)  # keeps training with the remapped state


@pytest.mark.parametrize("kind", ["masked", "block"])
@pytest.mark.parametrize("growth", ["gradient", "random", "momentum"])
def test_resume_is_bit_identical(kind, growth):
    batches = data(kind, 12)
    cfg = dict(growth=growth, update_every=2, end_step=10)

    model = mlp(kind)
    opt = make_opt("adam", model)
    dst = DST(model, opt, **cfg)
    train(model, opt, dst, batches)
    ref_params, ref_masks = params(model), masks(model)

    model = mlp(kind)
    opt = make_opt("adam", model)
    dst = DST(model, opt, **cfg)
    train(model, opt, dst, batches[:5])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "dst": dst.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    model2 = mlp(kind, seed=123)  # fresh weights and topology: everything must come from the checkpoint
    model2.load_state_dict(ckpt["model"])
    opt2 = make_opt("adam", model2)
    opt2.load_state_dict(ckpt["opt"])
    dst2 = DST(model2, opt2, **cfg)
    dst2.load_state_dict(ckpt["dst"])
    train(model2, opt2, dst2, batches[5:])
    for a, b in zip(ref_params, params(model2)):
        assert torch.equal(a, b)
    for a, b in zip(ref_masks, masks(model2)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("as_callable", [False, True])
def test_ineligible_positions_never_touched(as_callable, seed):
    model = mlp("masked", seed % 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights change only through DST
    g = torch.Generator().manual_seed(seed)
    elig = {"0": torch.rand(48, 20, generator=g) < 0.5}
    w0, m0 = model[0].weight.detach().clone(), model[0].mask.clone()
    dst = DST(model, opt, growth="random", update_every=1, decay="constant", drop_fraction=0.5,
              eligible=(lambda name, mod: elig.get(name)) if as_callable else elig)
    train(model, opt, dst, data("masked", 4))
    e = elig["0"]
    assert torch.equal(model[0].mask[~e], m0[~e])
    assert torch.equal(model[0].weight[~e], w0[~e])
    assert not torch.equal(model[0].mask[e], m0[e])
    assert int(model[0].mask.sum()) == int(m0.sum())


def test_groups_by_pattern_and_density():
    model = mlp("masked")
    opt = make_opt("sgd", model)
    dst = DST(model, opt, density=0.2, init="uniform", growth="random", update_every=2, end_step=8,
              groups=[{"pattern": "2", "density": 0.5, "prune": "set", "growth": "unfired"}])
    cfgs = {name: cfg for name, _, cfg in dst.layers}
    assert cfgs["0"]["prune"] == "magnitude" and cfgs["2"]["prune"] == "set" and cfgs["2"]["growth"] == "unfired"
    assert int(model[0].mask.sum()) == round(0.2 * 48 * 20)
    assert int(model[2].mask.sum()) == round(0.5 * 48 * 10)
    train(model, opt, dst, data("masked", 8))
    assert int(model[0].mask.sum()) == round(0.2 * 48 * 20)
    assert int(model[2].mask.sum()) == round(0.5 * 48 * 10)


def test_density_retopology_block_layer():
    model = mlp("block")
    opt = make_opt("adam", model)
    DST(model, opt, density=0.25, init="uniform", update_every=5, end_step=10)
    for m in (model[0], model[2]):
        grid = m.dst_mask()
        assert int(grid.sum()) == round(0.25 * grid.numel())
        BlockSparseLayout(m.row_ptr, m.col_idx, m.layout.shape, 16)  # valid
        assert m.values.shape[0] == m.layout.nnzb


def test_schedules():
    assert drop_fraction_at(0, 0.5, "cosine", 0.005, 100) == pytest.approx(0.5)
    assert drop_fraction_at(100, 0.5, "cosine", 0.005, 100) == pytest.approx(0.005)
    assert drop_fraction_at(50, 0.5, "cosine", 0.005, 100) == pytest.approx((0.5 + 0.005) / 2)
    assert drop_fraction_at(25, 0.5, "linear", 0.1, 100) == pytest.approx(0.4)
    assert drop_fraction_at(70, 0.3, "constant", 0.0, 100) == 0.3
    model = mlp("masked")
    dst = DST(model, make_opt("sgd", model), update_every=10, end_step=30)
    assert [s for s in range(1, 60) if dst.is_update_step(s)] == [10, 20, 30]
    with pytest.raises(ValueError, match="end_step"):
        DST(model, make_opt("sgd", model))
    with pytest.raises(ValueError, match="prune"):
        DST(model, make_opt("sgd", model), prune="nope", decay="constant")


def test_set_score_prunes_signs_in_proportion():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, -0.1, -0.2, -0.3, -0.4, 0.0, 9.0])
    m = torch.ones_like(w, dtype=torch.bool)
    m[-1] = False
    s = criteria.set_score(w, m).masked_fill(~m, float("inf"))  # only active positions are drop candidates
    drop = torch.sort(s, stable=True).indices[:5].tolist()
    # 6 positive, 5 non-positive: 5 drops take the weakest 3 positive-ish and 2 negative-ish in proportion
    pos = [i for i in drop if w[i] > 0]
    neg = [i for i in drop if w[i] <= 0]
    assert 2 <= len(pos) <= 3 and 2 <= len(neg) <= 3
    assert pos == sorted(pos, key=lambda i: abs(w[i]))[: len(pos)] and 0 in pos and 10 in neg


def test_unfired_prefers_never_active():
    ever = torch.tensor([True, False, True, False])
    s = criteria.unfired_score(ever, 0)
    assert s[~ever].min() > s[ever].max()


def test_block_set_topology_incremental_repack(seed):
    g = torch.Generator().manual_seed(seed)
    layer = BlockSparseLinear(70, 100, density=0.4, block_size=16)
    with torch.no_grad():
        layer.values.normal_(generator=g)
    old_mask, old_dense = layer.dst_mask(), layer.dense_weight().detach().clone()
    old_values = layer.values.detach().clone()
    nb = old_mask.numel()
    new = torch.zeros(nb, dtype=torch.bool)
    new[torch.randperm(nb, generator=g)[: int(old_mask.sum())]] = True
    new = new.view(old_mask.shape)
    p_before = layer.values
    src = layer.set_topology(new)
    assert layer.values is p_before  # the optimizer keeps tracking the same Parameter
    assert torch.equal(layer.dst_mask(), new)
    ref = BlockSparseLayout.from_block_mask(new, (100, 70), 16)
    for name, t in ref.index_tensors().items():
        assert torch.equal(getattr(layer, name), t), name
    dense = layer.dense_weight().detach()
    kept = (old_mask & new).repeat_interleave(16, 0).repeat_interleave(16, 1)[:100, :70]
    assert torch.equal(dense[kept], old_dense[kept])
    assert (dense[~kept] == 0).all()
    valid = src >= 0  # one entry per block
    assert src.shape == (layer.values.shape[0],)
    assert torch.equal(layer.values.detach()[valid], old_values[src[valid]])
    assert (layer.values.detach()[~valid] == 0).all()
    with pytest.raises(ValueError, match="block grid"):
        layer.set_topology(torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("mode", ["csr", "masked"])
def test_sparse_linear_layers_work_unchanged(mode):
    from sparsecl.nn import SparseLinear

    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(20, 48, density=0.3, mode=mode), nn.ReLU(),
                          SparseLinear(48, 10, density=0.3, mode=mode))
    opt = make_opt("adam", model)
    before = masks(model)
    dst = DST(model, opt, growth="gradient", update_every=2, end_step=8, drop_fraction=0.3)
    train(model, opt, dst, data("masked", 8))
    after = masks(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(int(a.sum()) == int(b.sum()) for a, b in zip(before, after))


@pytest.mark.parametrize("growth", ["gradient", "momentum"])
def test_dense_grads_from_layer_backward_and_from_hooks(growth, seed):
    """Layers with a dense_grad_hook attribute hand the engine grad_out.T @ x from their backward; others get
    forward hooks. Both give the dense gradient of the step's batch (summed over forward calls), and the
    attribute is armed only for steps that need it."""
    from sparsecl.nn import SparseLinear

    torch.manual_seed(seed)
    model = nn.Sequential(SparseLinear(20, 48, density=0.3, mode="csr"), nn.ReLU(),
                          BlockSparseLinear(48, 40, density=0.5, block_size=16), nn.ReLU(),
                          MaskedLinear(40, 10, 0.3), nn.ReLU(), SparseLinear(10, 6, density=0.5, mode="masked"))
    opt = make_opt("sgd", model)
    dst = DST(model, opt, growth=growth, update_every=3, end_step=None, decay="constant", drop_fraction=0.3)
    seen = {}

    def record(i):
        def fwd(mod, inputs, out):
            out.register_hook(lambda go: seen.setdefault(i, []).append((inputs[0].detach(), go.detach())))
        return fwd
    for i in (0, 2, 4, 6):
        model[i].register_forward_hook(record(i))
    for step in range(1, 4):
        seen.clear()
        opt.zero_grad()
        x = torch.randn(2, 5, 20)
        (model(x[0]).square().sum() + model(x[1]).square().sum()).backward()  # two calls per step
        armed = growth == "momentum" or step == 3
        assert all((model[i].dense_grad_hook is not None) == armed for i in (0, 2, 6))
        if armed:
            for i, name in zip((0, 2, 4, 6), ("0", "2", "4", "6")):
                want = sum(go.double().reshape(-1, go.shape[-1]).T @ xi.double().reshape(-1, xi.shape[-1])
                           for xi, go in seen[i])
                torch.testing.assert_close(dst._dense_grads[name].double(), want, rtol=1e-4, atol=1e-4)
        opt.step()
        dst.step()
    dst.remove()
    assert all(model[i].dense_grad_hook is None for i in (0, 2, 6))
