"""bsr_linear against dense F.linear and torch.sparse (CSR, BSR), forward and forward+backward.

Floor: the kernel does d * 2*T*in*out FLOPs; at full efficiency it runs at the dense GEMM rate
measured in the same run, so "eff" = achieved GFLOP/s over dense GFLOP/s (1.0 = density-ideal).
On CUDA (``rows(device="cuda")``): bf16, block 64, LLaMA-7B MLP (T=4096, 4096->11008), the triton
and cuda backends against cuBLAS (F.linear) and torch.sparse's BSR kernel; each sparsecl forward
row says whether it meets the bar t <= 1.25*d*t_dense and beats torch.sparse BSR (same run).
Floors there: d * 369 GFLOP (dense: 2*4096*4096*11008); bytes x 33.5 MB + W d*90 MB + y 90 MB, so
at d=0.1 ~133 MB, i.e. ~45 us at 3 TB/s -- the same order as the compute at tensor-core rate.
All candidates of one (shape, density) are timed round-robin (measure_interleaved), so the speedups
compare like with like on a shared machine.
"""
import torch
import torch.nn.functional as F

import sparsecl
from sparsecl.formats import BlockSparseLayout
from sparsecl.ops import bsr_linear

try:
    from .harness import fwd_bwd, measure, measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import fwd_bwd, measure, measure_interleaved

SHAPES = {"square-4096": (512, 4096, 4096), "vit-b-mlp": (4096, 768, 3072)}
DENSITIES = (0.5, 0.2, 0.1, 0.05)
BLOCK = 32  # torch.sparse comparison and --quick
BLOCKS = (16, 32, 64)  # sparsecl rows of the full table
GPU_SHAPES = {"llama-7b-mlp": (4096, 4096, 11008)}
GPU_DENSITIES = (0.5, 0.2, 0.1)
GPU_BLOCK = 64


def _case(shape_name, density, device="cpu", dtype=torch.float32, block=BLOCK, seed=0):
    T, in_f, out_f = SHAPES[shape_name] if shape_name in SHAPES else GPU_SHAPES[shape_name]
    g = torch.Generator().manual_seed(seed)
    layout = BlockSparseLayout.random((out_f, in_f), density, block, generator=g, device=device)
    values = torch.randn(layout.nnzb, block, block, generator=g).to(device, dtype)
    x = torch.randn(T, in_f, generator=g).to(device, dtype)
    return x, values, layout


def rows(quick=False, device="cpu"):
    """Yield one result dict per (shape, density, method, pass)."""
    if torch.device(device).type == "cuda":
        yield from _gpu_rows(quick, device)
        return
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
                   ("fwd+bwd", "dense F.linear", None): fwd_bwd(lambda: F.linear(xg, wg), xg, wg)}
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
                fns[("fwd+bwd", method, block)] = fwd_bwd(lambda xbg=xbg, vbg=vbg, lb=lb: bsr_linear(xbg, vbg, lb),
                                                           xbg, vbg)
            t = measure_interleaved(fns, device, min_time)
            for (pass_, method, block), sec in t.items():
                dense = t[(pass_, "dense F.linear", None)]
                work = (3 if pass_ == "fwd+bwd" else 1) * flops
                dd = 1.0 if block is None else real.get(block, d)
                yield dict(base, method=method, density=1.0 if block is None else d, block=block or BLOCK,
                           pass_=pass_, ms=sec * 1e3, speedup=dense / sec, gflops=dd * work / sec / 1e9,
                           eff=dd * work / sec / (work / dense))


def _torch_bsr_mm(w_bsr):
    """torch's Triton BSR kernel when this torch has it, else torch.sparse.mm: W_bsr @ (.)"""
    try:
        from torch.sparse._triton_ops import bsr_dense_mm  # None when torch sees no usable triton
    except ImportError:
        bsr_dense_mm = None
    if bsr_dense_mm is None or not w_bsr.is_cuda:
        return "torch.sparse bsr (mm)", lambda dense: torch.sparse.mm(w_bsr, dense)
    return "torch.sparse bsr (triton)", lambda dense: bsr_dense_mm(w_bsr, dense)


def _gpu_rows(quick, device, dtype=torch.bfloat16):
    densities = (0.1,) if quick else GPU_DENSITIES
    min_time = 0.3 if quick else 1.0
    backends = ["triton", "cuda"] if sparsecl.build_info().get("cuda") else ["triton"]
    for shape_name, (T, in_f, out_f) in GPU_SHAPES.items():
        flops = 2.0 * T * in_f * out_f
        x, _, _ = _case(shape_name, 1.0, device, dtype, GPU_BLOCK)
        w = torch.randn(out_f, in_f, device=device, dtype=dtype)
        t_dense = measure(lambda: F.linear(x, w), device, min_time)
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        t_dense_fb = measure(fwd_bwd(lambda: F.linear(xg, wg), xg, wg), device, min_time)
        del w, wg
        base = dict(op="bsr_linear", shape=shape_name, T=T, in_f=in_f, out_f=out_f, block=GPU_BLOCK,
                    dtype=str(dtype).replace("torch.", ""))
        yield dict(base, method="dense F.linear (cuBLAS)", density=1.0, pass_="fwd", ms=t_dense * 1e3,
                   speedup=1.0, gflops=flops / t_dense / 1e9, eff=1.0)
        yield dict(base, method="dense F.linear (cuBLAS)", density=1.0, pass_="fwd+bwd", ms=t_dense_fb * 1e3,
                   speedup=1.0, gflops=3 * flops / t_dense_fb / 1e9, eff=1.0)
        for d in densities:
            x, values, layout = _case(shape_name, d, device, dtype, GPU_BLOCK)
            name, bsr_mm = _torch_bsr_mm(layout.to_dense(values).to_sparse_bsr((GPU_BLOCK, GPU_BLOCK)))
            xt = x.T.contiguous()
            t_torch = measure(lambda: bsr_mm(xt), device, min_time)
            fwd = {name: t_torch}
            ref = F.linear(x.float(), layout.to_dense(values).float())
            err = {}
            for b in backends:
                with sparsecl.use_backend(b, "bsr_linear"):
                    fwd[f"sparsecl {b}"] = measure(lambda: bsr_linear(x, values, layout), device, min_time)
                    err[f"sparsecl {b}"] = float((bsr_linear(x, values, layout).float() - ref).norm() / ref.norm())
            del ref
            for method, t in fwd.items():
                row = dict(base, method=method, density=d, pass_="fwd", ms=t * 1e3, speedup=t_dense / t,
                           gflops=d * flops / t / 1e9, eff=d * flops / t / (flops / t_dense))
                if method.startswith("sparsecl"):  # rel_err: ||y - y_fp32|| / ||y_fp32|| at this shape
                    row.update(meets_density_bar=t <= 1.25 * d * t_dense, beats_torch_bsr=t < t_torch,
                               rel_err=err[method])
                yield row
            xg, vg = x.clone().requires_grad_(True), values.clone().requires_grad_(True)
            for b in backends:
                with sparsecl.use_backend(b, "bsr_linear"):
                    t = measure(fwd_bwd(lambda: bsr_linear(xg, vg, layout), xg, vg), device, min_time)
                yield dict(base, method=f"sparsecl {b}", density=d, pass_="fwd+bwd", ms=t * 1e3,
                           speedup=t_dense_fb / t, gflops=3 * d * flops / t / 1e9,
                           eff=3 * d * flops / t / (3 * flops / t_dense_fb))


CASES = [dict(id=f"{s}-d{d}", shape=s, density=d) for s in SHAPES for d in DENSITIES]


def test_bsr_linear_forward(benchmark, case):
    x, values, layout = _case(case["shape"], case["density"])
    benchmark(lambda: bsr_linear(x, values, layout))


def test_dense_linear_forward(benchmark):
    x, _, _ = _case("square-4096", 1.0)
    w = torch.randn(4096, 4096)
    benchmark(lambda: F.linear(x, w))
