"""Per-layer densities for a global density budget, following RigL (Evci et al., 2020).

  uniform  every sparse layer gets ``density``
  er       Erdős–Rényi: density ∝ (n_in + n_out) / (n_in * n_out)
  erk      ER-Kernel: density ∝ sum(shape) / prod(shape) (conv kernels included)
With er/erk, layers whose scaled density would exceed 1 are made dense and the others are rescaled,
repeatedly, so that the total number of nonzeros is density × total parameters (of non-excluded layers).
"""
import math


def _scale(shape, init):
    if init == "er":
        n_out, n_in = shape[0], shape[1]
        return (n_in + n_out) / (n_in * n_out)
    return sum(shape) / math.prod(shape)


def layer_densities(shapes, density, init="erk", dense_layers=(), exclude=()):
    """Densities (one per shape, in order) whose nnz sum to ``density`` × the total of sparse layers.

    shapes: weight shapes ([out, in] or [out, in, kh, kw]); density in [0, 1]; init "erk"|"er"|"uniform".
    dense_layers / exclude: indices of layers kept dense (density 1.0) outside the budget.
    """
    if init not in ("erk", "er", "uniform"):
        raise ValueError(f"init must be 'erk', 'er' or 'uniform', got {init!r}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    for shape in shapes:
        if len(shape) < 2 or any(s <= 0 for s in shape):
            raise ValueError(f"every shape needs >= 2 positive dims, got {shape}")
    fixed = {int(i) for i in (*dense_layers, *exclude)}
    for i in fixed:
        if not 0 <= i < len(shapes):
            raise ValueError(f"layer index {i} out of range for {len(shapes)} layers")
    sizes = [math.prod(s) for s in shapes]
    sparse = [i for i in range(len(shapes)) if i not in fixed]
    out = [1.0] * len(shapes)
    if init == "uniform":
        for i in sparse:
            out[i] = float(density)
        return out
    budget = density * sum(sizes[i] for i in sparse)
    dense = set()
    while True:
        free = [i for i in sparse if i not in dense]
        remaining = budget - sum(sizes[i] for i in dense)
        denom = sum(_scale(shapes[i], init) * sizes[i] for i in free)
        eps = remaining / denom if denom > 0 else 0.0
        over = [i for i in free if eps * _scale(shapes[i], init) > 1.0]
        if not over:
            break
        dense.update(over)
    for i in sparse:
        out[i] = 1.0 if i in dense else max(0.0, eps * _scale(shapes[i], init))
    return out
