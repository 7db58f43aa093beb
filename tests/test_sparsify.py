"""sparsify() and sparsecl.dst.layer_densities (RigL definitions)."""
import math

import pytest
import torch
from torch import nn

import sparsecl
from sparsecl.dst import layer_densities
from sparsecl.nn import BlockSparseLinear, SparseLinear


def total_density(shapes, dens):
    sizes = [math.prod(s) for s in shapes]
    return sum(d * n for d, n in zip(dens, sizes)) / sum(sizes)


SHAPES = [(64, 3, 3, 3), (128, 64, 3, 3), (256, 128), (10, 256)]


@pytest.mark.parametrize("init", ["erk", "er", "uniform"])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.9, 1.0])
def test_layer_densities_budget(init, density):
    dens = layer_densities(SHAPES, density, init)
    assert all(0.0 <= d <= 1.0 for d in dens)
    assert total_density(SHAPES, dens) == pytest.approx(density)


def test_erk_and_er_follow_rigl_scaling():
    shapes = [(300, 200), (100, 50, 3, 3), (400, 400)]
    erk = layer_densities(shapes, 0.05, "erk")
    scale = [sum(s) / math.prod(s) for s in shapes]
    assert erk[0] / erk[2] == pytest.approx(scale[0] / scale[2])
    assert erk[1] / erk[2] == pytest.approx(scale[1] / scale[2])
    er = layer_densities(shapes, 0.05, "er")
    er_scale = [(s[0] + s[1]) / (s[0] * s[1]) for s in shapes]
    assert er[1] / er[2] == pytest.approx(er_scale[1] / er_scale[2])


def test_small_layers_become_dense_and_rest_rescaled():
    shapes = [(4, 3), (1000, 1000)]
    dens = layer_densities(shapes, 0.1, "erk")
    assert dens[0] == 1.0
    assert total_density(shapes, dens) == pytest.approx(0.1)


def test_dense_layers_and_bad_args():
    dens = layer_densities(SHAPES, 0.1, "erk", dense_layers=[0], exclude=[3])
    assert dens[0] == 1.0 and dens[3] == 1.0
    # RigL: a dense layer pays its zeros out of the budget; an excluded layer is outside it
    assert total_density(SHAPES[:3], dens[:3]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="init"):
        layer_densities(SHAPES, 0.1, "bad")
    with pytest.raises(ValueError, match="density"):
        layer_densities(SHAPES, 1.1)
    with pytest.raises(ValueError, match="out of range"):
        layer_densities(SHAPES, 0.1, dense_layers=[7])


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(20, 64)
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48))
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))))


@pytest.mark.parametrize("init", ["erk", "er", "uniform"])
def test_sparsify_replaces_and_keeps_largest_weights(init, seed):
    model = MLP()
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = sparsecl.sparsify(model, density=0.3, init=init, exclude=["stem", "head"], mode="csr")
    assert out is model
    assert type(model.stem) is nn.Linear and type(model.head) is nn.Linear
    layers = {"body.0": model.body[0], "body.2": model.body[2]}
    nnz = 0
    for name, layer in layers.items():
        assert isinstance(layer, SparseLinear)
        w, m = dense[name], layer.mask()
        assert torch.equal(layer.dense_weight(), w * m)  # kept weights unchanged
        if m.any() and (~m).any():
            assert w[m].abs().min() >= w[~m].abs().max()  # the largest magnitudes are kept
        nnz += int(m.sum())
    assert nnz == pytest.approx(0.3 * (64 * 64 + 48 * 64), abs=2)
    assert model(torch.randn(3, 20)).shape == (3, 5)


def test_sparsify_block_and_auto_mode(seed):
    model = sparsecl.sparsify(MLP(), density=0.5, structure="block", block_size=16, init="uniform")
    assert all(isinstance(m, BlockSparseLinear) for m in (model.stem, model.body[0], model.body[2], model.head))
    model = sparsecl.sparsify(MLP(), density=0.9, init="uniform")
    assert model.body[0].mode == "masked"
    model = sparsecl.sparsify(MLP(), density=0.05, init="uniform")
    assert model.body[0].mode == "csr"


def test_sparsify_bad_args():
    with pytest.raises(ValueError, match="structure"):
        sparsecl.sparsify(MLP(), structure="diagonal")
    with pytest.raises(ValueError, match="block_size"):
        sparsecl.sparsify(MLP(), structure="block", block_size=8)
    with pytest.raises(ValueError, match="init"):
        sparsecl.sparsify(MLP(), init="bad")
