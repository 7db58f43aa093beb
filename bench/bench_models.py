"""Whole-model training step: CIFAR ResNet-18 and MobileNetV2 built from torch.nn, converted with
``sparsecl.sparsify(model, density=0.1, init=...)``, against the dense model (issue 15's bars: ResNet-18 >= 1.5x with
ERK and >= 2.5x with uniform, MobileNetV2 with ERK >= 1.3x).

One step = zero_grad, forward, cross-entropy, backward, SGD (momentum 0.9) step; batch 64, 32x32 inputs, fp32. The
sparse model runs with dispatch "auto" (each layer direction sparse or dense on its effective weight, calibrated once
per machine, see ``sparsecl.dispatch``) and, as a third candidate, forced "sparse" (the kernels alone); the three are
timed round-robin in one loop (bench.harness.measure_interleaved), so ratios see the same load. Speedup = dense step
time / sparse step time in that run. With SparseProp installed (``pip install sparseprop``, the CPU sparse-training
peer), a fourth candidate is its own whole-model conversion of the same sparse weights
(``sparseprop.utils.swap_modules_with_sparse``: every conv/linear below density 0.2 that its timing finds faster
becomes a SparseProp module); ``vs_sparseprop`` = SparseProp step / our step. ResNet-18 only: SparseProp 0.1.14's
backend segfaulted on a MobileNetV2 pointwise conv here (2026-12-07, Zen 4), which would kill the run.

``--layers`` adds where the time goes: each sparse layer timed alone (forward + backward at its real input; its
dispatched path, its sparse kernels, and F.conv2d / F.linear on the effective weight, alternating), and the rest of
the step (BN, ReLU, pooling, loss, optimizer: step time minus the summed layer times).

    python bench/bench_models.py [--quick] [--layers] [--out DIR]   # table + JSON (machine, choices, layers)
    pytest bench/bench_models.py --benchmark-only                  # pytest-benchmark timings
``rows(quick, device)`` feeds the ``sparsecl bench`` table.
"""
import argparse
import copy
import os

import torch
import torch.nn.functional as F

import sparsecl
from sparsecl.nn.models import MobileNetV2, ResNet18

try:
    from .harness import format_table, machine_info, measure_interleaved
except ImportError:  # run from the bench/ folder (pytest, or python bench/bench_models.py)
    from harness import format_table, machine_info, measure_interleaved

MODELS = {"resnet18": lambda: ResNet18(num_classes=100), "mobilenet_v2": lambda: MobileNetV2(num_classes=100)}
CASES = [("resnet18", "erk", 1.5), ("resnet18", "uniform", 2.5), ("mobilenet_v2", "erk", 1.3)]  # (model, init, bar)
DENSITY = 0.1
BATCH = 64


def _trainer(model, x, y, dispatch=None):
    """A callable running one SGD training step of ``model`` on (x, y) (under ``dispatch`` if given)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        if dispatch is None:
            F.cross_entropy(model(x), y).backward()
        else:
            with sparsecl.use_dispatch(dispatch):
                F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def build(name, init, batch=BATCH, seed=0):
    """(dense model, sparse model with the same surviving weights, x, y)."""
    torch.manual_seed(seed)
    dense = MODELS[name]()
    sparse = sparsecl.sparsify(copy.deepcopy(dense), density=DENSITY, init=init)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    return dense, sparse, x, y


def sparseprop_model(dense, sparse, batch):
    """SparseProp's conversion of ``dense`` carrying ``sparse``'s effective weights (zeros outside its masks), or None
    when sparseprop is not installed."""
    try:
        from sparseprop.utils import swap_modules_with_sparse
    except ImportError:
        return None
    peer = copy.deepcopy(dense)
    with torch.no_grad():
        for name, module in sparse.named_modules():
            if isinstance(module, sparsecl.dispatch.DispatchMixin):
                w = peer.get_submodule(name).weight
                w.copy_(module.dense_weight().detach().reshape(w.shape))
    return swap_modules_with_sparse(peer, (batch, 3, 32, 32), inplace=True)


def _layer_inputs(model, x, y):
    """{name: (module, input)} of every dispatching layer, captured during one training step."""
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen.setdefault(name, (module, inputs[0].detach()))
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
             if isinstance(m, sparsecl.dispatch.DispatchMixin)]
    try:
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return seen


def _dense_call(module):
    w = module.dense_weight().detach().reshape(
        (module.out_channels, module.in_channels, *module.kernel_size) if hasattr(module, "kernel_size")
        else (module.out_features, module.in_features)).clone().requires_grad_()
    if hasattr(module, "kernel_size"):
        return w, lambda x: F.conv2d(x, w, None, module.stride, module.padding, module.dilation)
    return w, lambda x: F.linear(x, w)


def layer_rows(sparse, x, y, min_time):
    """Per dispatching layer: forward+backward ms of its dispatched path, its sparse kernels alone, and the dense
    op on its effective weight (alternating), with the dispatch choice and density; eff = share of the
    density-proportional ideal (density * dense time / dispatched time; 1.0 = ideal)."""
    out = []
    report = sparsecl.dispatch_report(sparse)
    for name, (module, xin) in _layer_inputs(sparse, x, y).items():
        xg = xin.clone().requires_grad_()
        w, dense_call = _dense_call(module)

        def run(fn, mode=None):
            def once():
                xg.grad = None
                if mode is None:
                    fn(xg).sum().backward()
                else:
                    with sparsecl.use_dispatch(mode):
                        fn(xg).sum().backward()
            return once

        t = measure_interleaved({"dispatched": run(module, "auto"), "sparse": run(module, "sparse"),
                                 "dense": run(dense_call)}, min_time=min_time, min_runs=3)
        module.zero_grad(set_to_none=True)
        rec = report.get(name) or {}
        out.append(dict(layer=name, shape=f"{tuple(xin.shape)}", density=rec.get("density"),
                        choice="/".join(v[0] for v in (rec.get("choice") or {}).values()),
                        dispatched_ms=t["dispatched"] * 1e3, sparse_ms=t["sparse"] * 1e3, dense_ms=t["dense"] * 1e3,
                        vs_dense=t["dense"] / t["dispatched"], sparse_vs_dense=t["dense"] / t["sparse"],
                        eff=(rec.get("density") or 1.0) * t["dense"] / t["dispatched"]))
    return out


def run_case(name, init, batch=BATCH, min_time=3.0, layers=False, sparse_only=True, sparseprop=True):
    """One model/init: the step timings (dense, sparse auto, sparse forced, SparseProp when installed and
    ``sparseprop``) and the per-layer dispatch choices."""
    dense, sparse, x, y = build(name, init, batch)
    steps = {"dense": _trainer(dense, x, y), "sparse": _trainer(sparse, x, y, "auto")}
    steps["sparse"]()  # calibrates the layers this machine has not seen yet (cached for later runs)
    if sparse_only:
        steps["sparse kernels only"] = _trainer(sparse, x, y, "sparse")
    peer = sparseprop_model(dense, sparse, batch) if sparseprop and name == "resnet18" else None
    if peer is not None:
        steps["sparseprop"] = _trainer(peer, x, y)
    t = measure_interleaved(steps, min_time=min_time, min_runs=5)
    steps["sparse"]()  # the report records the last call: the dispatched step
    choices = {n: r and {**r["choice"], "density": r["density"], "source": r["source"]}
               for n, r in sparsecl.dispatch_report(sparse).items()}
    result = dict(model=name, init=init, density=DENSITY, batch=batch, dense_ms=t["dense"] * 1e3,
                  sparse_ms=t["sparse"] * 1e3, speedup=t["dense"] / t["sparse"], choices=choices)
    if sparse_only:
        result["sparse_only_ms"] = t["sparse kernels only"] * 1e3
        result["sparse_only_speedup"] = t["dense"] / t["sparse kernels only"]
    if peer is not None:
        result["sparseprop_ms"] = t["sparseprop"] * 1e3
        result["vs_sparseprop"] = t["sparseprop"] / t["sparse"]
    print(f"\n{name} {init} d={DENSITY} batch {batch}: dense {result['dense_ms']:.1f} ms, sparse+dispatch "
          f"{result['sparse_ms']:.1f} ms ({result['speedup']:.2f}x)"
          + (f", sparse kernels only {result['sparse_only_ms']:.1f} ms ({result['sparse_only_speedup']:.2f}x)"
             if sparse_only else "")
          + (f", SparseProp {result['sparseprop_ms']:.1f} ms (ours {result['vs_sparseprop']:.2f}x faster)"
             if peer is not None else ""), flush=True)
    if layers:
        result["layers"] = layer_rows(sparse, x, y, min_time=0.3)
        result["layers_dispatched_ms"] = sum(r["dispatched_ms"] for r in result["layers"])
        result["layers_dense_ms"] = sum(r["dense_ms"] for r in result["layers"])
        result["rest_of_step_ms"] = result["sparse_ms"] - result["layers_dispatched_ms"]
    return result


def rows(quick=False, device="cpu"):
    """Rows of the ``sparsecl bench`` table: one per (model, init), the training-step speedup over dense."""
    if torch.device(device).type != "cpu":
        return
    for name, init, bar in (CASES[:1] if quick else CASES):
        r = run_case(name, init, batch=16 if quick else BATCH, min_time=1.0 if quick else 3.0, sparse_only=False,
                     sparseprop=False)
        yield dict(op="model_step", shape=f"{name} batch {r['batch']} 32x32", method=f"sparsify {init} + dispatch",
                   density=DENSITY, pass_="train step", dense_ms=r["dense_ms"], ms=r["sparse_ms"],
                   speedup=r["speedup"], bar=bar, bar_ok=r["speedup"] >= bar)


def test_model_step(benchmark):
    """pytest-benchmark: the sparse ResNet-18 (ERK, dispatch auto) training step."""
    _, sparse, x, y = build("resnet18", "erk")
    step = _trainer(sparse, x, y, "auto")
    step()
    benchmark.pedantic(step, rounds=3, iterations=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-18 ERK only, batch 16")
    ap.add_argument("--layers", action="store_true", help="also time every sparse layer alone")
    ap.add_argument("--cases", nargs="*", default=None, help="model:init pairs, e.g. resnet18:erk")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--no-sparseprop", action="store_true", help="leave SparseProp's whole-model step out")
    ap.add_argument("--out", default=None, help="directory for models.json")
    args = ap.parse_args()
    cases = [(m, i, b) for m, i, b in CASES if args.cases is None or f"{m}:{i}" in args.cases]
    results = []
    for name, init, bar in (cases[:1] if args.quick else cases):
        r = run_case(name, init, batch=16 if args.quick else BATCH, min_time=args.min_time, layers=args.layers,
                     sparseprop=not args.no_sparseprop)
        r["bar"], r["bar_ok"] = bar, r["speedup"] >= bar
        results.append(r)
        print(f"bar {bar}x: {'met' if r['bar_ok'] else 'NOT met'}")
        print(format_table([dict(layer=n, **(c or {})) for n, c in r["choices"].items()],
                           ["layer", "density", "forward", "dx", "dw", "source"]))
        if args.layers:
            print(format_table(r["layers"], ["layer", "shape", "density", "choice", "dispatched_ms", "sparse_ms",
                                             "dense_ms", "vs_dense", "sparse_vs_dense", "eff"]))
            print(f"summed layers: dispatched {r['layers_dispatched_ms']:.1f} ms, dense {r['layers_dense_ms']:.1f} ms;"
                  f" rest of the sparse step (BN, ReLU, pooling, loss, SGD): {r['rest_of_step_ms']:.1f} ms")
    if args.out:
        from sparsecl.io import write_json_atomic

        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "models.json")
        write_json_atomic(path, {"machine": machine_info(), "dispatch_cache": sparsecl.dispatch.cache_path(),
                                 "results": results})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
