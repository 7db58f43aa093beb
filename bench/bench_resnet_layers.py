"""Every distinct conv of CIFAR ResNet-18 and the non-depthwise convs of MobileNetV2-CIFAR (32x32 input,
batch 64, fp32, CPU): ``csr_conv2d`` against F.conv2d (oneDNN) on the effective dense weight, forward and
forward+backward, at uniform and ERK density (``sparsecl.dst.layer_densities`` over the model's sparse
layers, stem excluded as in ``sparsecl.nn.models``), with SparseProp side by side when it is installed
(``pip install sparseprop``, the faster of its two vectorisations; its columns are empty otherwise). Candidates of one case are timed round-robin
in one loop (harness.measure_interleaved), so ratios see the same load.

Columns: speedup = t_dense / t_sparse; ideal_share = density x speedup (1.0 = the density-ideal
t_dense x density); floor_ms = FLOPs at the layer's density / ``--peak`` (default 175 GFLOP/s, the
2-core Zen 4 fp32 FMA peak), forward 1x and forward+backward 3x the forward FLOPs; vs_sparseprop =
t_sparseprop / t_sparse (fwd+bwd).

    python bench/bench_resnet_layers.py [--model resnet18|mobilenetv2|all] [--batch 64] [--quick]
                                        [--threads 2] [--no-sparseprop] [--out FILE.json]

SparseProp 0.1.14's backend segfaulted (2026-12-07, Zen 4) on one of the MobileNetV2 pointwise convs, which
kills the run: measure MobileNetV2 with --no-sparseprop.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from sparsecl.dst import layer_densities
from sparsecl.formats import CSRLayout
from sparsecl.nn.models import MobileNetV2, ResNet18
from sparsecl.ops import csr_conv2d

try:
    from .harness import format_table, fwd_bwd, machine_info, measure_interleaved
except ImportError:  # run as a script or by pytest from the bench/ folder
    from harness import format_table, fwd_bwd, machine_info, measure_interleaved

MODELS = {"resnet18": (ResNet18, "conv1"), "mobilenetv2": (MobileNetV2, "features.0")}
PEAK = 175e9  # fp32 FLOP/s: 2 cores x 2 FMA pipes x 16 lanes x 2 FLOP x ~1.37 GHz sustained (AVX-512)


def conv_cases(model_name, batch=64, size=32):
    """Distinct sparse convs of the model: dicts of cin, cout, k, stride, padding, H (input), count, and
    the ERK density at d=0.1 of the first such layer. Depthwise convs (dense in sparsecl) are left out."""
    cls, stem = MODELS[model_name]
    model = cls()
    sparse = [(n, m) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
    erk = layer_densities([m.weight.shape for _, m in sparse], 0.1, "erk",
                          exclude=[i for i, (n, _) in enumerate(sparse) if n == stem])
    sizes = {}

    def record(name):
        def hook(mod, inp, out):
            sizes.setdefault(name, inp[0].shape[-1])
        return hook
    hooks = [m.register_forward_hook(record(n)) for n, m in sparse if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    cases = {}
    for (name, m), d_erk in zip(sparse, erk):
        if not isinstance(m, nn.Conv2d) or name == stem:
            continue
        key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], sizes[name])
        if key in cases:
            cases[key]["count"] += 1
        else:
            cases[key] = dict(zip(("cin", "cout", "k", "stride", "padding", "H"), key), count=1, erk=d_erk,
                              first=name)
    return list(cases.values())


def _sparseprop_convs(w, stride, padding):
    """SparseProp's sparse conv modules for the dense weight w, vectorised over the batch and over the output
    width ({name: module}; SparseProp's own model conversion times both and keeps the faster); empty when
    sparseprop is not installed."""
    try:
        from sparseprop.modules import SparseConv2d
    except ImportError:
        return {}
    return {f"sparseprop_{v}": SparseConv2d(w.clone(), bias=None, padding=padding, stride=stride,
                                            vectorizing_over_on=v == "on") for v in ("batch", "on")}


def rows(model_name="resnet18", batch=64, quick=False, peak=PEAK, sparseprop=True):
    min_time = 0.2 if quick else 0.6
    cases = conv_cases(model_name)
    if quick:
        cases = cases[:3]
    for c in cases:
        cin, cout, k, s, p, H = c["cin"], c["cout"], c["k"], c["stride"], c["padding"], c["H"]
        for init, d in (("uniform", 0.1), ("erk", c["erk"])):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, cin, H, H, generator=g)
            layout = CSRLayout.random((cout, cin * k * k), d, generator=g)
            values = torch.randn(layout.nnz, generator=g)
            w = layout.to_dense(values).view(cout, cin, k, k)
            da = layout.nnz / (cout * cin * k * k)
            xg, vg, wg = (t.clone().requires_grad_() for t in (x, values, w))
            fns = {"dense": lambda: F.conv2d(x, w, stride=s, padding=p),
                   "sparse": lambda: csr_conv2d(x, values, layout, k, stride=s, padding=p),
                   "dense_fb": fwd_bwd(lambda: F.conv2d(xg, wg, stride=s, padding=p), xg, wg),
                   "sparse_fb": fwd_bwd(lambda: csr_conv2d(xg, vg, layout, k, stride=s, padding=p), xg, vg)}
            xs = x.clone().requires_grad_()
            for name, sp in (_sparseprop_convs(w, s, p) if sparseprop else {}).items():
                torch.testing.assert_close(sp(x), F.conv2d(x, w, stride=s, padding=p), rtol=1e-3, atol=1e-3)
                fns[name] = fwd_bwd(lambda sp=sp: sp(xs), xs, *sp.parameters())
            t = measure_interleaved(fns, "cpu", min_time)
            sp_names = [n for n in t if n.startswith("sparseprop_")]
            if sp_names:
                t["sparseprop_fb"] = min(t[n] for n in sp_names)
            Ho = (H + 2 * p - k) // s + 1
            flops = 2 * batch * Ho * Ho * cout * cin * k * k * da
            base = dict(model=model_name, layer=f"{cin}->{cout} {k}x{k} s{s} @{H}", first=c["first"], count=c["count"],
                        init=init, density=round(da, 4), batch=batch)
            for pass_, dk, sk, mult in (("fwd", "dense", "sparse", 1), ("fwd+bwd", "dense_fb", "sparse_fb", 3)):
                row = dict(base, pass_=pass_, dense_ms=t[dk] * 1e3, ms=t[sk] * 1e3, speedup=t[dk] / t[sk],
                           ideal_share=da * t[dk] / t[sk], floor_ms=mult * flops / peak * 1e3,
                           x_floor=t[sk] / (mult * flops / peak))
                if pass_ == "fwd+bwd" and "sparseprop_fb" in t:
                    row.update(sparseprop_ms=t["sparseprop_fb"] * 1e3, vs_sparseprop=t["sparseprop_fb"] / t[sk])
                yield row


COLUMNS = ["layer", "count", "init", "density", "pass_", "dense_ms", "ms", "speedup", "ideal_share", "floor_ms",
           "x_floor", "sparseprop_ms", "vs_sparseprop"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", choices=["all", *MODELS])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", type=float, default=PEAK, help="fp32 FLOP/s of the machine, for floor_ms")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-sparseprop", action="store_true",
                    help="leave SparseProp out (its backend segfaulted on a MobileNetV2 pointwise conv here)")
    ap.add_argument("--out", help="write the rows and machine info as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = []
    for m in (list(MODELS) if a.model == "all" else [a.model]):
        print(f"\n{m}, batch {a.batch}, {a.threads} threads", flush=True)
        for i, row in enumerate(rows(m, a.batch, a.quick, a.peak, not a.no_sparseprop)):
            lines = format_table([row], COLUMNS).split("\n")
            print("\n".join(lines if i == 0 else lines[2:]), flush=True)
            out.append(row)
            if a.out:  # rewritten after every row: an interrupted run keeps what it measured
                with open(a.out, "w") as f:
                    json.dump({"machine": machine_info(), "peak_flops": a.peak, "rows": out}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
