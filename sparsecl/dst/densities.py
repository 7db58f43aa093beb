"""Per-layer densities for a global density target, as RigL (Evci et al., 2020) defines them."""
import math


def layer_densities(shapes, density, init="erk", dense_layers=(), exclude=()):
    """Densities (list[float], one per shape) whose total nnz is ``density`` x the parameters counted.

    shapes: weight shapes in PyTorch order ([out, in] or [out, in, kh, kw]).
    init: "uniform" (``density`` everywhere), "er" (scale ∝ (n_in + n_out) / (n_in * n_out), kernel dims
    ignored) or "erk" (scale ∝ sum of all dims / product of all dims). For ER/ERK, layers whose density
    would exceed 1 are made dense and the others rescaled, repeatedly, so the total holds exactly.
    dense_layers: indices kept dense; they count toward the total (their nnz comes out of the budget).
    exclude: indices left out entirely: reported as 1.0 (dense) but counted neither in the total nor in
    the budget, i.e. the target applies to the other layers only.
    """
    if init not in ("uniform", "er", "erk"):
        raise ValueError(f"init must be 'uniform', 'er' or 'erk', got {init!r}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    n = len(shapes)
    for i in (*dense_layers, *exclude):
        if not 0 <= i < n:
            raise ValueError(f"layer index {i} out of range for {n} shapes")
    for s in shapes:
        if len(s) < 2:
            raise ValueError(f"shapes must have at least 2 dims ([out, in, ...]), got {s}")
    out = [1.0] * n
    managed = [i for i in range(n) if i not in set(exclude)]
    dense = set(dense_layers) - set(exclude)
    if init == "uniform":
        for i in managed:
            out[i] = 1.0 if i in dense else float(density)
        return out
    numel = {i: math.prod(shapes[i]) for i in managed}

    def raw(i):
        s = shapes[i]
        if init == "er":
            n_out, n_in = s[0], s[1]
            return (n_in + n_out) / (n_in * n_out) if n_in * n_out else 0.0
        return sum(s) / math.prod(s) if math.prod(s) else 0.0

    while True:
        # budget: density x total; dense layers pay their zeros out of it
        rhs, divisor = 0.0, 0.0
        for i in managed:
            if i in dense:
                rhs -= numel[i] * (1.0 - density)
            else:
                rhs += numel[i] * density
                divisor += raw(i) * numel[i]
        if rhs < -1e-9 * max(1, sum(numel.values())):
            raise ValueError(f"dense layers alone exceed the density budget {density}")
        eps = rhs / divisor if divisor else 0.0
        sparse = [i for i in managed if i not in dense]
        if not sparse:
            break
        max_raw = max(raw(i) for i in sparse)
        if max_raw * eps > 1.0:
            dense |= {i for i in sparse if raw(i) == max_raw}
            continue
        for i in sparse:
            out[i] = eps * raw(i)
        break
    for i in dense:
        out[i] = 1.0
    return out
