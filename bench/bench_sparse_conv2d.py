"""bsr_conv2d (block-channel) and csr_conv2d (unstructured) against F.conv2d (oneDNN) on the effective
dense weight: ResNet-18 3x3 layers, fp32, batch 32, forward and forward+backward, timed round-robin
in one run so ratios see the same load. "speedup" = t_dense / t (same run).

Measured 2026-11-25 13:27-13:31 UTC on this 2-core CPU under load 18-20 (other helpers' builds), batch 32,
d=0.1, block 32, speedup vs F.conv2d in the same run; "1 thread" = --threads 1 (both sides), which
the load distorts less (2-thread runs pay for descheduled threads at every barrier):
                    block fwd   block fwd+bwd   unstructured fwd   unstructured fwd+bwd
  256@14  2 threads   3.92x        2.61x            2.19x               1.74x
          1 thread    5.52x        5.71x            2.21x               2.74x
  512@7   2 threads   2.53x        2.52x            2.07x               1.65x
          1 thread    4.93x        5.26x            2.09x               2.34x
torch.sparse (im2col + CSR/BSR mm) forward: 0.16x-1.19x. Block at 64@56 has 2x2 blocks of 32: at
d=0.1 the random layout has none, so that row times an empty conv. Results in
bench/results/cpu-2026-11-25/sparse_conv2d-loaded{,-1thread}/. Not re-measured on a quiet machine.

On CUDA (``rows(device="cuda")``, run by bench/gpu.sh): the same layers in bf16 and fp16, channels_last,
d in {0.1, 0.2, 0.5}, both backends (Triton, CUDA C++) of both structures against cuDNN F.conv2d on the
effective dense weight. "floor_ms" = max(FLOPs at density d / matmul peak, bytes / copy bandwidth), with
the peak and bandwidth measured in the same run (a bf16 8192^3 matmul and a 1 GiB device copy); the bar
(issue 4) is t <= max(1.25 * d * t_dense, floor), reported as "meets_bar".
"""
import torch
import torch.nn.functional as F

from sparsecl.formats import BlockSparseLayout, CSRLayout
from sparsecl.ops import bsr_conv2d, csr_conv2d

try:
    from .harness import fwd_bwd, measure, measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import fwd_bwd, measure, measure_interleaved

LAYERS = {"64@56": (64, 56), "128@28": (128, 28), "256@14": (256, 14), "512@7": (512, 7)}  # C -> C, 3x3, pad 1
BATCH = 32
BLOCK = 32
DENSITIES = (0.1,)


def _case(layer, density, structure, device="cpu", batch=BATCH, seed=0):
    C, S = LAYERS[layer]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, S, S, generator=g).to(device)
    if structure == "block":
        layout = BlockSparseLayout.random((C, C), density, BLOCK, generator=g, device=device)
        values = torch.randn(layout.nnzb, BLOCK, BLOCK, 3, 3, generator=g).to(device)
        fn = lambda xx, vv: bsr_conv2d(xx, vv, layout, padding=1)  # noqa: E731
        taps = [layout.to_dense(values[..., r, s].contiguous()) for r in range(3) for s in range(3)]
        w = torch.stack(taps, -1).view(C, C, 3, 3)
    else:
        layout = CSRLayout.random((C, C * 9), density, generator=g, device=device)
        values = torch.randn(layout.nnz, generator=g).to(device)
        fn = lambda xx, vv: csr_conv2d(xx, vv, layout, 3, padding=1)  # noqa: E731
        w = layout.to_dense(values).view(C, C, 3, 3)
    return x, values, w, fn


def _torch_sparse_fwd(x, w):
    """The same conv through torch.sparse: im2col (F.unfold) and a sparse weight [out, in*9] @ columns
    (CSR for unstructured, BSR with B x B blocks for block-channel weights: a channel block is 9 of them)."""
    n, S = x.shape[0], x.shape[-1]
    w2 = w.reshape(w.shape[0], -1)
    w_sp = w2.to_sparse_bsr((BLOCK, BLOCK)) if w.shape[1] % BLOCK == 0 and _is_block(w2) else w2.to_sparse_csr()

    def run():
        cols = F.unfold(x, 3, padding=1).transpose(0, 1).reshape(w2.shape[1], -1)
        return torch.sparse.mm(w_sp, cols).view(-1, n, S, S).transpose(0, 1)
    return run


def _is_block(w2):
    o, c9 = w2.shape
    blocks = w2.reshape(o // BLOCK, BLOCK, c9 // BLOCK, BLOCK).abs().sum((1, 3))
    return bool(((blocks > 0).sum() * BLOCK * BLOCK == (w2 != 0).sum()).item())


def rows(quick=False, device="cpu"):
    """Yield one result dict per (layer, density, structure, pass, method): sparsecl and, forward
    only, torch.sparse (im2col + sparse mm), each against F.conv2d on the effective dense weight."""
    if torch.device(device).type == "cuda":
        yield from gpu_rows(quick)
        return
    layers = ["256@14", "512@7"] if quick else list(LAYERS)
    batch = 8 if quick else BATCH
    min_time = 0.3 if quick else 1.0
    for layer in layers:
        for d in DENSITIES:
            for structure in ("block", "unstructured"):
                x, values, w, fn = _case(layer, d, structure, device, batch)
                da = float((w != 0).float().mean())  # the layout's actual density
                fwd = {"dense": lambda: F.conv2d(x, w, padding=1), "sparse": lambda: fn(x, values)}
                if device == "cpu":
                    fwd["torch.sparse"] = _torch_sparse_fwd(x, w)
                t = measure_interleaved(fwd, device, min_time)
                xg, vg, wg = (a.clone().requires_grad_() for a in (x, values, w))
                tb = measure_interleaved({"dense": fwd_bwd(lambda: F.conv2d(xg, wg, padding=1), xg, wg),
                                          "sparse": fwd_bwd(lambda: fn(xg, vg), xg, vg)}, device, min_time)
                base = dict(op="sparse_conv2d", shape=f"{layer} batch {batch}", layer=layer, batch=batch,
                            method=f"sparsecl {structure} vs F.conv2d", density=d, structure=structure,
                            block=BLOCK if structure == "block" else 1, actual_density=da)
                yield dict(base, pass_="fwd", dense_ms=t["dense"] * 1e3, ms=t["sparse"] * 1e3,
                           speedup=t["dense"] / t["sparse"], eff=da * t["dense"] / t["sparse"])
                if "torch.sparse" in t:
                    yield dict(base, method=f"torch.sparse {structure} (im2col) vs F.conv2d", pass_="fwd",
                               dense_ms=t["dense"] * 1e3, ms=t["torch.sparse"] * 1e3,
                               speedup=t["dense"] / t["torch.sparse"], eff=da * t["dense"] / t["torch.sparse"])
                yield dict(base, pass_="fwd+bwd", dense_ms=tb["dense"] * 1e3, ms=tb["sparse"] * 1e3,
                           speedup=tb["dense"] / tb["sparse"], eff=da * tb["dense"] / tb["sparse"])


GPU_DENSITIES = (0.1, 0.2, 0.5)
GPU_DTYPES = (torch.bfloat16, torch.float16)


def _gpu_roofline():
    """(matmul FLOP/s, copy bytes/s) measured now on the current CUDA device."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t_mm = measure(lambda: a @ a, "cuda", min_time=0.3)
    src = torch.empty(1 << 29, device="cuda", dtype=torch.int16)
    dst = torch.empty_like(src)
    t_cp = measure(lambda: dst.copy_(src), "cuda", min_time=0.3)
    return 2 * 8192 ** 3 / t_mm, 2 * src.numel() * 2 / t_cp


def gpu_rows(quick=False):
    """CUDA rows: every (layer, density, dtype, structure, backend, pass) against cuDNN in the same run."""
    import sparsecl

    peak, bw = _gpu_roofline()
    layers = ["256@14", "512@7"] if quick else list(LAYERS)
    densities = (0.1,) if quick else GPU_DENSITIES
    dtypes = GPU_DTYPES[:1] if quick else GPU_DTYPES
    for layer in layers:
        C, S = LAYERS[layer]
        for dtype in dtypes:
            for d in densities:
                for structure in ("block", "unstructured"):
                    x, values, w, fn = _case(layer, d, structure, "cuda", BATCH)
                    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
                    values, w = values.to(dtype), w.to(dtype).contiguous(memory_format=torch.channels_last)
                    xg, vg, wg = (a.clone().requires_grad_() for a in (x, values, w))
                    dense = {"fwd": lambda: F.conv2d(x, w, padding=1),
                             "fwd+bwd": fwd_bwd(lambda: F.conv2d(xg, wg, padding=1), xg, wg)}
                    t_dense = {k: measure(f, "cuda") for k, f in dense.items()}
                    y_ref = F.conv2d(x.double(), w.double(), padding=1)
                    act = BATCH * C * S * S * x.element_size()  # |x| = |y| bytes
                    v_bytes = values.numel() * values.element_size()
                    flops = 2 * BATCH * S * S * C * C * 9 * d
                    floor = {"fwd": max(flops / peak, (2 * act + v_bytes) / bw),
                             "fwd+bwd": max(3 * flops / peak, (7 * act + 3 * v_bytes) / bw)}
                    for backend in ("triton", "cuda"):
                        with sparsecl.use_backend(backend):
                            y = fn(x, values)
                            rel_err = ((y.double() - y_ref).norm() / y_ref.norm().clamp_min(1e-30)).item()
                            sparse = {"fwd": lambda: fn(x, values), "fwd+bwd": fwd_bwd(lambda: fn(xg, vg), xg, vg)}
                            for pass_, f in sparse.items():
                                t = measure(f, "cuda")
                                bar = max(1.25 * d * t_dense[pass_], floor[pass_])
                                yield dict(op="sparse_conv2d", shape=f"{layer} batch {BATCH}", layer=layer,
                                           batch=BATCH, dtype=str(dtype).replace("torch.", ""),
                                           method=f"sparsecl {structure} {backend} vs cuDNN", density=d,
                                           structure=structure, backend=backend,
                                           block=BLOCK if structure == "block" else 1, pass_=pass_,
                                           dense_ms=t_dense[pass_] * 1e3, ms=t * 1e3,
                                           speedup=t_dense[pass_] / t, floor_ms=floor[pass_] * 1e3,
                                           x_floor=t / floor[pass_], meets_bar=t <= bar, rel_err=rel_err)


CASES = [dict(id=f"{layer}-d{d}-{s}", layer=layer, density=d, structure=s)
         for layer in LAYERS for d in DENSITIES for s in ("block", "unstructured")]


def test_sparse_conv2d_forward(benchmark, case):
    x, values, _, fn = _case(case["layer"], case["density"], case["structure"])
    benchmark(lambda: fn(x, values))


if __name__ == "__main__":
    import sys

    from harness import format_table

    print(format_table(list(rows(quick="--quick" in sys.argv)),
                       ["layer", "method", "density", "pass_", "dense_ms", "ms", "speedup", "eff"]))
