"""sparsify(model, ...): swap a model's dense layers for sparse ones in place, keeping their weights."""
import fnmatch

import torch
from torch import nn

from .dst.densities import layer_densities
from .formats import BLOCK_SIZES
from .nn.block_sparse import BlockSparseLinear
from .nn.sparse_linear import SparseLinear
from .nn.sparse_conv import SparseConv2d


def _convert_linear(module, density, structure, block_size, mode):
    if structure == "block":
        return BlockSparseLinear.from_dense(module, density=density, block_size=block_size)
    return SparseLinear.from_dense(module, density=density, mode=mode)


# Module types sparsify converts: type -> converter(module, density, structure, block_size, mode).
# Sparse conv registers nn.Conv2d here when it exists.
CONVERTERS = {nn.Linear: _convert_linear}


def _convert_conv2d(module, density, structure, block_size, mode):
    return SparseConv2d.from_dense(module, density=density, structure=structure, block_size=block_size)


CONVERTERS[nn.Conv2d] = _convert_conv2d


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def sparsify(model, density=0.1, init="erk", structure="unstructured", block_size=32, exclude=(), mode="auto",
             dense_layers=()):
    """Replace every convertible layer of ``model`` (nn.Linear; see ``CONVERTERS``) by its sparse
    counterpart, keeping the largest-magnitude weights, and return the model (modified in place).

    density: global fraction of active weights over the converted layers; per-layer densities from
    ``sparsecl.dst.layer_densities(shapes, density, init)`` ("erk" | "er" | "uniform").
    structure: "unstructured" (SparseLinear, ``mode`` "auto" | "csr" | "masked") or "block"
    (BlockSparseLinear with ``block_size``).
    exclude: fnmatch patterns of module names left untouched (e.g. the first layer and heads);
    dense_layers: patterns of layers kept dense (not converted) whose weights count toward the budget.
    """
    if structure not in ("unstructured", "block"):
        raise ValueError(f"structure must be 'unstructured' or 'block', got {structure!r}")
    if structure == "block" and block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    if isinstance(dense_layers, str):
        dense_layers = (dense_layers,)
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) in CONVERTERS and name and not _matches(name, exclude)
               and getattr(m, "groups", 1) == 1]  # depthwise / grouped convs stay dense
    if isinstance(model, tuple(CONVERTERS)) and not _matches("", exclude):
        raise ValueError("model is itself a single layer: convert it with its sparse class's from_dense")
    if not targets:
        return model
    dense_idx = [i for i, (name, _) in enumerate(targets) if _matches(name, dense_layers)]
    densities = layer_densities([tuple(m.weight.shape) for _, m in targets], density, init, dense_layers=dense_idx)
    for i, ((name, module), d) in enumerate(zip(targets, densities)):
        if i in dense_idx:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.no_grad():
            new = CONVERTERS[type(module)](module, d, structure, block_size, mode)
        new.train(module.training)
        setattr(parent, child, new)
    return model
