"""Command line: ``sparsecl info``, ``sparsecl bench`` (more subcommands register in COMMANDS)."""
import argparse
import importlib
import json
import os
import pkgutil
import sys


def cmd_info(args):
    from . import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            if isinstance(v, dict):  # e.g. the dispatch cache: one entry per line
                print(f"{k.ljust(width)}  {len(v)} entries")
                for key, entry in v.items():
                    print(f"  {key}: {entry}")
            else:
                print(f"{k.ljust(width)}  {v}")
    return 0


def _bench_modules(selected):
    from . import bench

    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    unknown = set(selected or []) - set(names)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; available: {names}")
    return [importlib.import_module(f"sparsecl.bench.bench_{n}") for n in (selected or names)]


def cmd_bench(args):
    import torch

    from .bench.harness import format_table, machine_info
    from .io import write_json_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    rows = []
    for mod in _bench_modules(args.ops):
        for row in mod.rows(quick=args.quick, device=device):
            rows.append(row)
            if args.verbose:
                print(row, flush=True)
    kernel_rows = [r for r in rows if r["op"] != "dst_update"]
    if kernel_rows:
        print(format_table(kernel_rows, ["op", "shape", "method", "density", "pass_", "ms", "speedup", "gflops",
                                         "eff"]))
        print("speedup: dense time / method time in this run; eff: achieved GFLOP/s at the active density over "
              "the dense GFLOP/s of this run (1.0 = density-proportional ideal)")
    dst_rows = [r for r in rows if r["op"] == "dst_update"]
    if dst_rows:
        print(format_table(dst_rows, ["op", "case", "growth", "step_ms", "update_step_ms", "update_cost_ms",
                                      "update_in_steps", "bar_ok"]))
        print("update_in_steps: (training step with a DST update - plain training step) / plain step, timed "
              "alternately in one run (bar: <= 2)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        result = {"machine": machine_info(), "quick": args.quick, "device": device, "rows": rows}
        path = os.path.join(args.out, f"bench-{device}{'-quick' if args.quick else ''}.json")
        write_json_atomic(path, result)
        print(f"wrote {path}")
    return 0


def cmd_continual(args):
    from .continual.run import main as run_continual

    return run_continual(args)


def build_parser():
    p = argparse.ArgumentParser(prog="sparsecl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what was compiled and which versions run")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="kernel microbenchmark table (speedups measured in one run)")
    bench.add_argument("ops", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="one shape, d=0.1: a minute on a 2-core CPU")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--threads", type=int, default=0)
    bench.add_argument("--out", default=None, help="directory for the JSON result")
    bench.add_argument("-v", "--verbose", action="store_true")
    bench.set_defaults(func=cmd_bench)
    continual = sub.add_parser("continual", help="task-incremental continual learning with DST (metrics.json)")
    from .continual.run import add_arguments

    add_arguments(continual)
    continual.set_defaults(func=cmd_continual)
    from .multitask.cli import add_parser as add_multitask

    add_multitask(sub)
    return p


def parse_args(argv=None):
    """``build_parser().parse_args``, except that ``continual`` takes key=value overrides anywhere on the line
    (argparse gives a nargs="*" positional one contiguous run: ``a=1 --epochs 2 b=2`` would reject b=2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "continual" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = (args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
