"""csr_linear against dense F.linear and torch.sparse CSR, forward and forward+backward, plus the cost of
a DST topology update (CSRLayout.with_topology swapping 3% of the nonzeros) next to one training step.

All candidates of one (shape, density) are timed round-robin in one run (measure_interleaved), so the
speedups compare like with like on a shared machine. "gflops" counts only the FLOPs at the nonzeros
(2*T*nnz per matmul; fwd+bwd = 3 matmuls); "eff" = that over the dense GFLOP/s of the same run
(1.0 = density-ideal speedup).
"""
import torch
import torch.nn.functional as F

from sparsecl.formats import CSRLayout
from sparsecl.ops import csr_linear

try:
    from .harness import fwd_bwd, measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import fwd_bwd, measure_interleaved

SHAPES = {"square-4096": (512, 4096, 4096), "vit-b-mlp": (4096, 768, 3072)}
DENSITIES = (0.5, 0.2, 0.1, 0.05)
QUICK_DENSITIES = (0.1, 0.05)  # the densities with bars (issue 3)
SWAP = 0.03


def _case(shape_name, density, device="cpu", dtype=torch.float32, seed=0):
    T, in_f, out_f = SHAPES[shape_name]
    g = torch.Generator().manual_seed(seed)
    layout = CSRLayout.random((out_f, in_f), density, generator=g, device=device)
    values = torch.randn(layout.nnz, generator=g).to(device, dtype)
    x = torch.randn(T, in_f, generator=g).to(device, dtype)
    return x, values, layout


def swapped_mask(layout, fraction, seed=0):
    """The layout's mask with ``fraction`` of its nonzeros moved to random inactive positions."""
    g = torch.Generator().manual_seed(seed)
    flat = layout.mask().flatten().cpu()
    on, off = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    n = min(round(fraction * on.numel()), off.numel())
    flat[on[torch.randperm(on.numel(), generator=g)[:n]]] = False
    flat[off[torch.randperm(off.numel(), generator=g)[:n]]] = True
    return flat.view(layout.shape).to(layout.device)


def rows(quick=False, device="cpu"):
    """Yield one result dict per (shape, density, method, pass)."""
    shapes = ["square-4096"] if quick else list(SHAPES)
    densities = QUICK_DENSITIES if quick else DENSITIES
    min_time = 0.3 if quick else 1.0
    for shape_name in shapes:
        T, in_f, out_f = SHAPES[shape_name]
        flops = 2.0 * T * in_f * out_f
        base = dict(op="csr_linear", shape=shape_name, T=T, in_f=in_f, out_f=out_f)
        for d in densities:
            x, values, layout = _case(shape_name, d, device)
            w = torch.randn(out_f, in_f, device=device)
            w_csr, xt = layout.to_dense(values).to_sparse_csr(), x.T.contiguous()
            xg, wg, vg = x.clone().requires_grad_(True), w.clone().requires_grad_(True), values.clone().requires_grad_(True)
            new_mask = swapped_mask(layout, SWAP)
            fwd = {"dense F.linear": lambda: F.linear(x, w),
                   "sparsecl csr": lambda: csr_linear(x, values, layout),
                   "torch.sparse csr": lambda: torch.sparse.mm(w_csr, xt)}
            fb = {"dense F.linear": fwd_bwd(lambda: F.linear(xg, wg), xg, wg),
                  "sparsecl csr": fwd_bwd(lambda: csr_linear(xg, vg, layout), xg, vg)}
            t = measure_interleaved({**{("fwd", k): f for k, f in fwd.items()},
                                     **{("fwd+bwd", k): f for k, f in fb.items()},
                                     ("update", "with_topology"): lambda: layout.with_topology(new_mask)},
                                    device, min_time)
            for (pass_, method), sec in t.items():
                if pass_ == "update":
                    step = t[("fwd+bwd", "sparsecl csr")]
                    yield dict(base, method=f"CSRLayout.with_topology ({SWAP:.0%} swap)", density=d, pass_=pass_,
                               ms=sec * 1e3, speedup=None, gflops=None, eff=None, vs_step=sec / step)
                    continue
                dense = t[(pass_, "dense F.linear")]
                mult = 1.0 if pass_ == "fwd" else 3.0
                dd = 1.0 if method.startswith("dense") else d
                yield dict(base, method=method, density=dd, pass_=pass_, ms=sec * 1e3, speedup=dense / sec,
                           gflops=mult * dd * flops / sec / 1e9, eff=dd * dense / sec)


CASES = [dict(id=f"{s}-d{d}", shape=s, density=d) for s in SHAPES for d in DENSITIES]


def test_csr_linear_forward(benchmark, case):
    x, values, layout = _case(case["shape"], case["density"])
    benchmark(lambda: csr_linear(x, values, layout))
