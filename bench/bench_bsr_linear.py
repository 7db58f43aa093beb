"""bsr_linear against dense F.linear and torch.sparse (CSR, BSR), forward and forward+backward.

Floor: the kernel does d * 2*T*in*out FLOPs; at full efficiency it runs at the dense GEMM rate
measured in the same run, so "eff" = achieved GFLOP/s over dense GFLOP/s (1.0 = density-ideal).
"""
import torch
import torch.nn.functional as F

from sparsecl.formats import BlockSparseLayout
from sparsecl.ops import bsr_linear

try:
    from .harness import measure
except ImportError:  # run by pytest from the bench/ folder
    from harness import measure

SHAPES = {"square-4096": (512, 4096, 4096), "vit-b-mlp": (4096, 768, 3072)}
DENSITIES = (0.5, 0.2, 0.1, 0.05)
BLOCK = 32  # torch.sparse comparison and --quick
BLOCKS = (16, 32, 64)  # sparsecl rows of the full table


def _case(shape_name, density, device="cpu", dtype=torch.float32, block=BLOCK, seed=0):
    T, in_f, out_f = SHAPES[shape_name]
    g = torch.Generator().manual_seed(seed)
    layout = BlockSparseLayout.random((out_f, in_f), density, block, generator=g, device=device)
    values = torch.randn(layout.nnzb, block, block, generator=g).to(device, dtype)
    x = torch.randn(T, in_f, generator=g).to(device, dtype)
    return x, values, layout


def _fwd_bwd(fn, *inputs):
    def run():
        for t in inputs:
            t.grad = None
        fn().sum().backward()
    return run


def rows(quick=False, device="cpu"):
    """Yield one result dict per (shape, density, method)."""
    shapes = ["square-4096"] if quick else list(SHAPES)
    densities = (0.1,) if quick else DENSITIES
    min_time = 0.3 if quick else 1.0
    for shape_name in shapes:
        T, in_f, out_f = SHAPES[shape_name]
        flops = 2.0 * T * in_f * out_f
        x, _, _ = _case(shape_name, 1.0, device)
        w = torch.randn(out_f, in_f, device=device)
        t_dense = measure(lambda: F.linear(x, w), device, min_time)
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        t_dense_fb = measure(_fwd_bwd(lambda: F.linear(xg, wg), xg, wg), device, min_time)
        base = dict(op="bsr_linear", shape=shape_name, T=T, in_f=in_f, out_f=out_f, block=BLOCK)
        yield dict(base, method="dense F.linear", density=1.0, pass_="fwd", ms=t_dense * 1e3, speedup=1.0,
                   gflops=flops / t_dense / 1e9, eff=1.0)
        yield dict(base, method="dense F.linear", density=1.0, pass_="fwd+bwd", ms=t_dense_fb * 1e3, speedup=1.0,
                   gflops=3 * flops / t_dense_fb / 1e9, eff=1.0)
        for d in densities:
            x, values, layout = _case(shape_name, d, device)
            dense_rate = flops / t_dense
            wd = layout.to_dense(values)
            w_csr, w_bsr = wd.to_sparse_csr(), wd.to_sparse_bsr((BLOCK, BLOCK))
            xt = x.T.contiguous()
            for method, fn in {"torch.sparse csr": lambda: torch.sparse.mm(w_csr, xt),
                               "torch.sparse bsr": lambda: torch.sparse.mm(w_bsr, xt)}.items():
                t = measure(fn, device, min_time)
                yield dict(base, method=method, density=d, pass_="fwd", ms=t * 1e3, speedup=t_dense / t,
                           gflops=d * flops / t / 1e9, eff=d * flops / t / dense_rate)
            for block in (BLOCK,) if quick else BLOCKS:
                x, values, layout = _case(shape_name, d, device, block=block)
                # FLOPs actually done: active blocks (edge blocks and the layout's rounding included)
                d_real = layout.nnzb * block * block / (in_f * out_f)
                method = "sparsecl bsr" if block == BLOCK else f"sparsecl bsr (B={block})"
                row = dict(base, method=method, density=d, block=block)
                t = measure(lambda: bsr_linear(x, values, layout), device, min_time)
                yield dict(row, pass_="fwd", ms=t * 1e3, speedup=t_dense / t, gflops=d_real * flops / t / 1e9,
                           eff=d_real * flops / t / dense_rate)
                xg, vg = x.clone().requires_grad_(True), values.clone().requires_grad_(True)
                t = measure(_fwd_bwd(lambda: bsr_linear(xg, vg, layout), xg, vg), device, min_time)
                yield dict(row, pass_="fwd+bwd", ms=t * 1e3, speedup=t_dense_fb / t,
                           gflops=3 * d_real * flops / t / 1e9, eff=3 * d_real * flops / t / (3 * flops / t_dense_fb))


CASES = [dict(id=f"{s}-d{d}", shape=s, density=d) for s in SHAPES for d in DENSITIES]


def test_bsr_linear_forward(benchmark, case):
    x, values, layout = _case(case["shape"], case["density"])
    benchmark(lambda: bsr_linear(x, values, layout))


def test_dense_linear_forward(benchmark):
    x, _, _ = _case("square-4096", 1.0)
    w = torch.randn(4096, 4096)
    benchmark(lambda: F.linear(x, w))
