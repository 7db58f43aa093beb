"""Reproduce the continual-DST paper's qualitative findings on Split-Digits (init x growth x density), under both
task-subnetwork protocols (``reuse: mask``, the paper's and the default; ``reuse: all``, every frozen weight read).

Findings checked (Yildirim et al., "Continual learning with dynamic sparse training"):
  F1 ERK beats uniform at low sparsity (density 0.2 and 0.1);
  F2 uniform is more robust at high sparsity (density 0.01, and 0.05);
  F3 the best growth strategy depends on both the initialisation and the density.

Usage: python -m bench.continual_findings [--reuse mask|all|both] [--seeds 8] [--width 256] [--epochs 10] [--quick]
Writes bench/results/continual/findings.{json,md,png} (--quick: a tiny grid into a temp dir unless --out is given).
Every number comes from the runs made here.
"""
import argparse
import itertools
import json
import os
import statistics
import tempfile
import time

import torch

from bench.harness import machine_info
from sparsecl.continual import ContinualTrainer
from sparsecl.continual.data import split_digits
from sparsecl.io import write_bytes_atomic, write_json_atomic

INITS = ("erk", "uniform")
GROWTHS = ("random", "unfired", "gradient", "momentum")
DENSITIES = (0.2, 0.1, 0.05, 0.01)
PROTOCOLS = ("mask", "all")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "continual")


def run_one(reuse, init, growth, density, seed, width, epochs, mode, out):
    """One Split-Digits run; ``out`` takes its checkpoint and log (scratch)."""
    cfg = {"model": {"name": "mlp", "width": width, "depth": 2}, "init": init, "growth": growth, "density": density,
           "reuse": reuse, "epochs": epochs, "batch_size": 64, "update_every": 10, "seed": seed, "mode": mode,
           "progress": False, "out": out,
           "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}}
    t0 = time.perf_counter()
    res = ContinualTrainer(cfg, split_digits(seed=seed)).run()
    return {"ACC": res["ACC"], "BWT": res["BWT"], "train_seconds": res["train_seconds"],
            "run_seconds": time.perf_counter() - t0,
            "subnetwork_density_last": res["tasks"][-1]["subnetwork_density"],
            "reused_fraction_last": res["tasks"][-1]["reused_fraction"]}


def _mean_se(diffs):
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), se


def _paired(rows, reuse, a, b, density):
    """Mean over growths and seeds of ACC(init a) - ACC(init b), paired by (growth, seed), with its std error."""
    acc = {(r["init"], r["growth"], r["seed"]): r["ACC"] for r in rows
           if r["reuse"] == reuse and r["density"] == density}
    return _mean_se([acc[(a, g, s)] - acc[(b, g, s)] for g in GROWTHS for s in {k[2] for k in acc}])


def _lead(rows, reuse, init, density, best, second):
    """Mean over seeds of ACC(growth best) - ACC(growth second) in one cell, paired by seed, with its std error."""
    acc = {(r["growth"], r["seed"]): r["ACC"] for r in rows
           if (r["reuse"], r["init"], r["density"]) == (reuse, init, density)}
    return _mean_se([acc[(best, s)] - acc[(second, s)] for s in {k[1] for k in acc}])


def verdicts(table, rows, reuse):
    """table[(reuse, init, growth, density)] = mean ACC -> list of (finding, holds, evidence) for one protocol.
    Verdicts compare means; the evidence gives each paired difference with its standard error over
    (growth, seed) pairs, so a reader sees which verdicts are within noise."""
    def mean_over_growth(init, d):
        return statistics.mean(table[(reuse, init, g, d)] for g in GROWTHS)

    def ev(first, second, ds):
        parts = []
        for d in ds:
            diff, se = _paired(rows, reuse, first, second, d)
            parts.append(f"d={d}: {first} {mean_over_growth(first, d):.4f} vs {second} "
                         f"{mean_over_growth(second, d):.4f} (diff {diff:+.4f} ± {se:.4f} s.e.)")
        return "; ".join(parts)

    out = []
    low = [d for d in DENSITIES if d >= 0.1]
    out.append(("F1 ERK beats uniform at low sparsity (d >= 0.1)",
                all(mean_over_growth("erk", d) > mean_over_growth("uniform", d) for d in low),
                ev("erk", "uniform", low)))
    high = [d for d in DENSITIES if d <= 0.05]
    out.append(("F2 uniform more robust at high sparsity (d <= 0.05)",
                all(mean_over_growth("uniform", d) >= mean_over_growth("erk", d) for d in high),
                ev("uniform", "erk", high)))
    parts, best = [], {}
    for i, d in itertools.product(INITS, DENSITIES):
        first, second = sorted(GROWTHS, key=lambda g: -table[(reuse, i, g, d)])[:2]
        best[(i, d)] = first
        lead, se = _lead(rows, reuse, i, d, first, second)
        parts.append(f"{i} d={d}: {first} (+{lead:.4f} ± {se:.4f} over {second})")
    out.append(("F3 best growth depends on init and density", len(set(best.values())) > 1, "; ".join(parts)))
    return out


def plot(table, protocols, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(protocols), 2, figsize=(10, 3.6 * len(protocols)), sharey=True, squeeze=False)
    for row, reuse in zip(axes, protocols):
        for ax, init in zip(row, INITS):
            for g in GROWTHS:
                ax.plot(DENSITIES, [table[(reuse, init, g, d)] for d in DENSITIES], marker="o", label=g)
            ax.set_xscale("log")
            ax.set_xticks(DENSITIES, [str(d) for d in DENSITIES])
            ax.set_xlabel("per-task density")
            ax.set_title(f"reuse: {reuse}, init={init}")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("ACC (Split-Digits, 5 tasks)")
    axes[0][1].legend(title="growth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(a, protocols):
    """Runs the grid; returns (rows, meta) for ``report``."""
    if a.threads:
        torch.set_num_threads(a.threads)
    info, loads, rows, t0 = machine_info(), [], [], time.time()
    with tempfile.TemporaryDirectory(prefix="sparsecl-findings-") as scratch:
        for reuse, init, growth, density in itertools.product(protocols, INITS, GROWTHS, DENSITIES):
            loads.append(round(os.getloadavg()[0], 2))
            for seed in range(a.seeds):
                r = run_one(reuse, init, growth, density, seed, a.width, a.epochs, a.mode, scratch)
                rows.append({"reuse": reuse, "init": init, "growth": growth, "density": density, "seed": seed, **r})
                print(f"{reuse:4s} {init:7s} {growth:8s} d={density:<5} seed={seed} ACC={r['ACC']:.4f} "
                      f"BWT={r['BWT']:+.4f} ({r['train_seconds']:.1f} s)", flush=True)
    wall = time.time() - t0
    setup = (f"Split-Digits (5 tasks x 2 classes), MLP 64-{a.width}-{a.width}, multi-head, {a.epochs} epochs/task, "
             f"batch 64, SGD lr 0.05 momentum 0.9, DST update every 10 steps, magnitude pruning, drop fraction 0.5 "
             f"cosine-decayed to 0.005 per task, mode={a.mode}, "
             f"protocols {', '.join('reuse: ' + r for r in protocols)}, "
             f"{a.seeds} seeds (0..{a.seeds - 1}; the seed also draws the train/test split) per cell, "
             f"{len(rows)} runs; {wall:.0f} s wall in total")
    machine = (f"{info['processor']} ({info['cpu_family_model']}), ISA {info['cpu_isa']}, {info['cpu_count']} cores "
               f"shared with other jobs, {a.threads} torch thread(s), torch {info['torch']}, started {info['date']}; "
               f"1-min load average over the run min {min(loads):.2f} / median {sorted(loads)[len(loads) // 2]:.2f} "
               f"/ max {max(loads):.2f}")
    meta = {"setup": setup, "machine_line": machine, "machine": {**info, "torch_threads": a.threads},
            "wall_seconds": wall, "load_samples": loads, "seeds": list(range(a.seeds))}
    return rows, meta


def report(rows, meta, out):
    """Writes findings.{json,md,png} into ``out`` from the runs ``rows``; returns the markdown."""
    protocols = tuple(r for r in PROTOCOLS if any(row["reuse"] == r for row in rows))
    keys = list(itertools.product(protocols, INITS, GROWTHS, DENSITIES))

    def accs(k):
        return [r["ACC"] for r in rows if (r["reuse"], r["init"], r["growth"], r["density"]) == k]

    table = {k: statistics.mean(accs(k)) for k in keys}
    sd = {k: statistics.pstdev(accs(k)) for k in keys}
    found = {reuse: verdicts(table, rows, reuse) for reuse in protocols}
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "findings.json"), {**meta, "runs": rows, "findings": {
        reuse: [{"finding": f, "holds": h, "evidence": e} for f, h, e in found[reuse]] for reuse in protocols}})
    cols = [(d, reuse) for d in DENSITIES for reuse in protocols]
    lines = ["# Continual DST findings on Split-Digits, per task-subnetwork protocol", "", meta["setup"], "",
             meta["machine_line"], "",
             "`reuse: mask` (default, the paper's protocol): each task trains one density-d mask over the whole "
             "trunk, reusing the frozen weights inside it. `reuse: all`: each task reads every frozen weight of "
             "earlier tasks and adds density-d new ones.", "",
             "Mean ACC (± population std over seeds); BWT is 0 in every run (frozen, multi-head).", "",
             "| init | growth | " + " | ".join(f"d={d} {reuse}" for d, reuse in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for i, g in itertools.product(INITS, GROWTHS):
        lines.append(f"| {i} | {g} | " + " | ".join(f"{table[(reuse, i, g, d)]:.4f} ± {sd[(reuse, i, g, d)]:.4f}"
                                                   for d, reuse in cols) + " |")
    lines += ["", "| finding | " + " | ".join(f"reuse: {r}" for r in protocols) + " |",
              "|---|" + "---|" * len(protocols)]
    for k, (f, _, _) in enumerate(found[protocols[0]]):
        lines.append(f"| {f} | " + " | ".join(f"**{'holds' if found[r][k][1] else 'does not hold'}**: "
                                              f"{found[r][k][2]}" for r in protocols) + " |")
    lines += ["", f"Verdicts compare means over {len(meta['seeds'])} seeds (x 4 growths for F1/F2); the ± after a "
              "difference is its standard error over the seed-paired runs: a difference within about 2 s.e. of 0 "
              "is within seed noise, whichever way the verdict reads. F3 reads the best growth per cell; its lead "
              "over the runner-up says whether that choice is more than noise."]
    md = "\n".join(lines) + "\n"
    write_bytes_atomic(os.path.join(out, "findings.md"), md.encode())
    plot(table, protocols, os.path.join(out, "findings.png"))
    return md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reuse", default="both", choices=["mask", "all", "both"])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--mode", default="sparse", choices=["sparse", "dense-masked"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help=f"results directory (default {OUT}; --quick: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, width 16")
    p.add_argument("--from-json", default=None,
                   help="rewrite the tables, verdicts and plot from the runs in this findings.json (no new runs)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.width = 1, 1, 16
    out = a.out or (tempfile.mkdtemp(prefix="sparsecl-findings-") if a.quick else OUT)
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        rows, meta = saved.pop("runs"), {k: v for k, v in saved.items() if k != "findings"}
    else:
        rows, meta = collect(a, PROTOCOLS if a.reuse == "both" else (a.reuse,))
    print(report(rows, meta, out))
    return out


if __name__ == "__main__":
    main()
