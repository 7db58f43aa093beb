"""Slimmable linear: width 0.5 of a 4096->4096 layer against a contiguous 2048->2048 layer (the bar:
fwd+bwd <= 1.1x), against PyTorch's own slice ``F.linear(x, W[:o, :i])`` (whose backward allocates a
full-size zero gradient per call), and the multi-width call {1, .75, .5, .25} against four calls.

Gradient modes: "accumulate" keeps .grad between iterations (gradient accumulation / zero_grad
outside the loop); "set_to_none" drops .grad before every iteration. "alloc_full" counts allocations
of at least the full weight's size during one fwd+bwd (torch profiler).
"""
import torch
import torch.nn.functional as F

from sparsecl.ops import slimmable_linear, slimmable_linear_multi

try:
    from .harness import allocations, measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import allocations, measure_interleaved

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def _case(T=512, full=4096, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, full, generator=g).to(device)
    w = torch.randn(full, full, generator=g).div_(full ** 0.5).to(device).requires_grad_(True)
    b = torch.zeros(full, device=device, requires_grad=True)
    return x, w, b


def _step(loss_fn, params, mode):
    def run():
        if mode == "set_to_none":
            for p in params:
                p.grad = None
        loss_fn().sum().backward()
    return run


def _loss_multi(ys):
    return sum(y.sum() for y in ys)


def rows(quick=False, device="cpu"):
    """Yield one result dict per (case, method, gradient mode); speedup = reference time / method time."""
    T, full = (512, 4096)
    min_time = 0.5 if quick else 2.0
    x, w, b = _case(T, full, device=device)
    half = full // 2
    xh = x[:, :half].contiguous()
    wd = w.detach()[:half, :half].clone().requires_grad_(True)
    bd = b.detach()[:half].clone().requires_grad_(True)
    full_bytes = w.numel() * w.element_size()
    methods = {
        "contiguous 2048x2048 F.linear": (lambda: F.linear(xh, wd, bd), (wd, bd)),
        "sparsecl slimmable_linear": (lambda: slimmable_linear(xh, w, b, half), (w, b)),
        "torch F.linear(W[:o,:i])": (lambda: F.linear(xh, w[:half, :half], b[:half]), (w, b)),
    }
    modes = ("accumulate",) if quick else ("accumulate", "set_to_none")
    base = dict(op="slimmable_linear", shape=f"T={T} {full}->{full} w=0.5", pass_="fwd+bwd")
    for mode in modes:
        steps, big = {}, {}
        for name, (fn, params) in methods.items():
            for p in params:
                p.grad = None
            steps[name] = _step(fn, params, mode)
            steps[name]()
            big[name] = sum(s >= full_bytes for s in allocations(steps[name])) if device == "cpu" else None
        times = measure_interleaved(steps, device, min_time)  # round-robin: same background load for all
        ref = times[next(iter(times))]
        for name, t in times.items():
            yield dict(base, method=f"{name} [{mode}]", grad=mode, ms=t * 1e3, speedup=ref / t, ratio=t / ref,
                       alloc_full=big[name])
    widths = [(int(full * s), int(full * s)) for s in WIDTHS]
    for p in (w, b):
        p.grad = None
    multi = _step(lambda: _loss_multi(slimmable_linear_multi(x, w, b, widths)), (w, b), "accumulate")
    separate = _step(lambda: _loss_multi([slimmable_linear(x[:, :i], w, b, o) for i, o in widths]), (w, b),
                     "accumulate")
    fwd_multi = lambda: slimmable_linear_multi(x, w.detach(), b.detach(), widths)  # noqa: E731
    fwd_sep = lambda: [slimmable_linear(x[:, :i], w.detach(), b.detach(), o) for i, o in widths]  # noqa: E731
    base = dict(op="slimmable_linear_multi", shape=f"T={T} {full} widths 1,.75,.5,.25")
    for pass_, sep, mul in (("fwd", fwd_sep, fwd_multi), ("fwd+bwd", separate, multi)):
        times = measure_interleaved({"separate": sep, "multi": mul}, device, min_time)
        t_sep, t_mul = times["separate"], times["multi"]
        yield dict(base, pass_=pass_, method="4 separate slimmable_linear calls", grad="accumulate",
                   ms=t_sep * 1e3, speedup=1.0, ratio=1.0)
        yield dict(base, pass_=pass_, method="sparsecl slimmable_linear_multi", grad="accumulate", ms=t_mul * 1e3,
                   speedup=t_sep / t_mul, ratio=t_mul / t_sep)


CASES = [dict(id=f"w{s}", scale=s) for s in WIDTHS]


def test_slimmable_linear_fwd_bwd(benchmark, case):
    x, w, b = _case()
    o = int(4096 * case["scale"])
    xs = x[:, :o].contiguous()
    benchmark(_step(lambda: slimmable_linear(xs, w, b, o), (w, b), "accumulate"))


def test_slimmable_linear_multi_fwd_bwd(benchmark):
    x, w, b = _case()
    widths = [(int(4096 * s), int(4096 * s)) for s in WIDTHS]
    benchmark(_step(lambda: _loss_multi(slimmable_linear_multi(x, w, b, widths)), (w, b), "accumulate"))
