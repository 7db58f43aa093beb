"""masked_linear against dense F.linear (the bar: forward within 1.15x at d=0.5) and against
materialising ``weight * mask`` then calling F.linear, forward and forward+backward, timed
round-robin in one run (measure_interleaved)."""
import torch
import torch.nn.functional as F

from sparsecl.ops import masked_linear

try:
    from .harness import fwd_bwd, measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import fwd_bwd, measure_interleaved

SHAPES = {"square-4096": (512, 4096, 4096), "vit-b-mlp": (4096, 768, 3072)}
DENSITIES = (0.5, 0.8)


def _case(shape_name, density, device="cpu", dtype=torch.float32, seed=0):
    T, in_f, out_f = SHAPES[shape_name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, in_f, generator=g).to(device, dtype)
    w = torch.randn(out_f, in_f, generator=g).to(device, dtype)
    mask = (torch.rand(out_f, in_f, generator=g) < density).to(device)
    return x, w, mask


def rows(quick=False, device="cpu"):
    """Yield one result dict per (shape, density, method, pass)."""
    shapes = ["square-4096"] if quick else list(SHAPES)
    densities = (0.5,) if quick else DENSITIES
    min_time = 0.3 if quick else 1.0
    for shape_name in shapes:
        T, in_f, out_f = SHAPES[shape_name]
        flops = 2.0 * T * in_f * out_f
        base = dict(op="masked_linear", shape=shape_name, T=T, in_f=in_f, out_f=out_f)
        for d in densities:
            x, w, mask = _case(shape_name, d, device)
            xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
            fns = {("fwd", "dense F.linear"): lambda: F.linear(x, w),
                   ("fwd", "sparsecl masked"): lambda: masked_linear(x, w, mask),
                   ("fwd", "F.linear(x, w*mask)"): lambda: F.linear(x, w * mask),
                   ("fwd+bwd", "dense F.linear"): fwd_bwd(lambda: F.linear(xg, wg), xg, wg),
                   ("fwd+bwd", "sparsecl masked"): fwd_bwd(lambda: masked_linear(xg, wg, mask), xg, wg),
                   ("fwd+bwd", "F.linear(x, w*mask)"): fwd_bwd(lambda: F.linear(xg, wg * mask), xg, wg)}
            t = measure_interleaved(fns, device, min_time)
            for (pass_, method), sec in t.items():
                dense = t[(pass_, "dense F.linear")]
                mult = 1.0 if pass_ == "fwd" else 3.0
                yield dict(base, method=method, density=1.0 if method.startswith("dense") else d, pass_=pass_,
                           ms=sec * 1e3, speedup=dense / sec, gflops=mult * flops / sec / 1e9, eff=dense / sec)


CASES = [dict(id=f"{s}-d{d}", shape=s, density=d) for s in SHAPES for d in DENSITIES]


def test_masked_linear_forward(benchmark, case):
    x, w, mask = _case(case["shape"], case["density"])
    benchmark(lambda: masked_linear(x, w, mask))
