"""layer_densities against the RigL definitions worked out by hand."""
import math

import pytest

from sparsecl.dst import layer_densities

SHAPES = [(64, 3, 3, 3), (128, 64, 3, 3), (256, 128, 1, 1), (10, 256)]


def total_nnz(shapes, ds):
    return sum(d * math.prod(s) for s, d in zip(shapes, ds))


def test_erk_matches_formula_without_saturation():
    d = 0.05
    raw = [sum(s) / math.prod(s) for s in SHAPES]
    eps = d * sum(math.prod(s) for s in SHAPES) / sum(r * math.prod(s) for r, s in zip(raw, SHAPES))
    expect = [eps * r for r in raw]
    assert max(expect) < 1  # the case is chosen so no layer saturates
    assert layer_densities(SHAPES, d, "erk") == pytest.approx(expect, rel=1e-12)


def test_er_uses_in_and_out_only():
    d = 0.05
    raw = [(s[0] + s[1]) / (s[0] * s[1]) for s in SHAPES]
    eps = d * sum(math.prod(s) for s in SHAPES) / sum(r * math.prod(s) for r, s in zip(raw, SHAPES))
    assert layer_densities(SHAPES, d, "er") == pytest.approx([eps * r for r in raw], rel=1e-12)


def test_saturated_layer_becomes_dense_and_rest_rescaled():
    shapes = [(4, 4), (1000, 1000)]
    # by hand: small layer eps*raw = 249 > 1 -> dense; then eps = (0.5e6 - 8) / 2000 for the big one
    ds = layer_densities(shapes, 0.5, "erk")
    assert ds[0] == 1.0
    assert ds[1] == pytest.approx((0.5 * 1e6 - 0.5 * 16) / 1e6, rel=1e-12)
    assert total_nnz(shapes, ds) == pytest.approx(0.5 * (16 + 1e6), rel=1e-12)


@pytest.mark.parametrize("init", ["erk", "er"])
@pytest.mark.parametrize("d", [0.0, 0.01, 0.1, 0.3, 0.9, 1.0])
def test_total_is_exact_and_densities_valid(init, d):
    ds = layer_densities(SHAPES, d, init)
    assert all(0.0 <= x <= 1.0 + 1e-12 for x in ds)
    assert total_nnz(SHAPES, ds) == pytest.approx(d * sum(math.prod(s) for s in SHAPES), rel=1e-9, abs=1e-9)


def test_uniform_dense_layers_and_exclude():
    assert layer_densities(SHAPES, 0.2, "uniform") == [0.2] * 4
    assert layer_densities(SHAPES, 0.2, "uniform", dense_layers=(0,)) == [1.0, 0.2, 0.2, 0.2]
    # dense layers count toward the total
    ds = layer_densities(SHAPES, 0.1, "erk", dense_layers=(3,))
    assert ds[3] == 1.0
    assert total_nnz(SHAPES, ds) == pytest.approx(0.1 * sum(math.prod(s) for s in SHAPES), rel=1e-9)
    # excluded layers are dense and out of the budget: the target holds over the others
    ds = layer_densities(SHAPES, 0.1, "erk", exclude=(0,))
    assert ds[0] == 1.0
    assert total_nnz(SHAPES[1:], ds[1:]) == pytest.approx(0.1 * sum(math.prod(s) for s in SHAPES[1:]), rel=1e-9)
    assert ds[1:] == pytest.approx(layer_densities(SHAPES[1:], 0.1, "erk"), rel=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        layer_densities(SHAPES, 0.1, "xyz")
    with pytest.raises(ValueError, match="density"):
        layer_densities(SHAPES, 1.5)
    with pytest.raises(ValueError, match="out of range"):
        layer_densities(SHAPES, 0.1, dense_layers=(9,))
    with pytest.raises(ValueError, match="exceed"):
        layer_densities([(1000, 1000), (10, 10)], 0.00001, "erk", dense_layers=(0,))
