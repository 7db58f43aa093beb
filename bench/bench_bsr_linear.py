"""bsr_linear against dense F.linear and torch.sparse (CSR, BSR), forward and forward+backward.

Floor: the kernel does d * 2*T*in*out FLOPs; at full efficiency it runs at the dense GEMM rate
measured in the same run, so "eff" = achieved GFLOP/s over dense GFLOP/s (1.0 = density-ideal).
All candidates of one (shape, density) are timed round-robin (measure_interleaved), so the speedups
compare like with like on a shared machine.
"""
import torch
import torch.nn.functional as F

from sparsecl.formats import BlockSparseLayout
from sparsecl.ops import bsr_linear

try:
    from .harness import measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import measure_interleaved

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
    """Yield one result dict per (shape, density, method, pass)."""
    shapes = ["square-4096"] if quick else list(SHAPES)
    densities = (0.1,) if quick else DENSITIES
    min_time = 0.3 if quick else 1.0
    for shape_name in shapes:
        T, in_f, out_f = SHAPES[shape_name]
        flops = 2.0 * T * in_f * out_f
        base = dict(op="bsr_linear", shape=shape_name, T=T, in_f=in_f, out_f=out_f, block=BLOCK)
        for d in densities:
            x, _, _ = _case(shape_name, 1.0, device)
            w = torch.randn(out_f, in_f, device=device)
            xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            fns = {("fwd", "dense F.linear", None): lambda: F.linear(x, w),
                   ("fwd+bwd", "dense F.linear", None): _fwd_bwd(lambda: F.linear(xg, wg), xg, wg)}
            xs, values, layout = _case(shape_name, d, device)
            wd = layout.to_dense(values)
            w_csr, w_bsr, xt = wd.to_sparse_csr(), wd.to_sparse_bsr((BLOCK, BLOCK)), xs.T.contiguous()
            fns[("fwd", "torch.sparse csr", BLOCK)] = lambda: torch.sparse.mm(w_csr, xt)
            fns[("fwd", "torch.sparse bsr", BLOCK)] = lambda: torch.sparse.mm(w_bsr, xt)
            real = {}  # FLOPs actually done: active blocks (edge blocks and the layout's rounding included)
            for block in (BLOCK,) if quick else BLOCKS:
                xb, vb, lb = _case(shape_name, d, device, block=block)
                real[block] = lb.nnzb * block * block / (in_f * out_f)
                method = "sparsecl bsr" if block == BLOCK else f"sparsecl bsr (B={block})"
                xbg, vbg = xb.clone().requires_grad_(True), vb.clone().requires_grad_(True)
                fns[("fwd", method, block)] = lambda xb=xb, vb=vb, lb=lb: bsr_linear(xb, vb, lb)
                fns[("fwd+bwd", method, block)] = _fwd_bwd(lambda xbg=xbg, vbg=vbg, lb=lb: bsr_linear(xbg, vbg, lb),
                                                           xbg, vbg)
            t = measure_interleaved(fns, device, min_time)
            for (pass_, method, block), sec in t.items():
                dense = t[(pass_, "dense F.linear", None)]
                work = (3 if pass_ == "fwd+bwd" else 1) * flops
                dd = 1.0 if block is None else real.get(block, d)
                yield dict(base, method=method, density=1.0 if block is None else d, block=block or BLOCK,
                           pass_=pass_, ms=sec * 1e3, speedup=dense / sec, gflops=dd * work / sec / 1e9,
                           eff=dd * work / sec / (work / dense))


CASES = [dict(id=f"{s}-d{d}", shape=s, density=d) for s in SHAPES for d in DENSITIES]


def test_bsr_linear_forward(benchmark, case):
    x, values, layout = _case(case["shape"], case["density"])
    benchmark(lambda: bsr_linear(x, values, layout))


def test_dense_linear_forward(benchmark):
    x, _, _ = _case("square-4096", 1.0)
    w = torch.randn(4096, 4096)
    benchmark(lambda: F.linear(x, w))
