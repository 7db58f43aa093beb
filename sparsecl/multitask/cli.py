"""``sparsecl multitask train|search|eval``: YAML config plus ``key=value`` overrides.

  sparsecl multitask train  [--config run.yaml] [--out DIR] [key=value ...]
      train the SuperNet, write DIR/model.pt, then evaluate (as ``eval``)
  sparsecl multitask eval   --run DIR [key=value ...]
      score every configuration on the test split, query the search; writes DIR/metrics.json,
      DIR/configurations.csv and DIR/controllability.png
  sparsecl multitask search --run DIR (--budget MACS | --budget-frac F) --prefs P1,P2,... [--uniform]
      print the width configuration for a budget (MACs per image) and task preferences, as JSON

Config keys and defaults: ``sparsecl.multitask.train.DEFAULTS``. Values are parsed as YAML
(``steps=50``, ``widths=[0.5,1.0]``, ``kd_weight=0``, ``root=/data/NYUD_MT``).
"""
import json
import os
import time

DEFAULT_OUT = "runs/multitask"


def parse_overrides(pairs):
    import yaml

    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"override {p!r} is not key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def load_config(path=None, overrides=()):
    """DEFAULTS <- YAML file <- key=value overrides; unknown keys are an error."""
    import yaml

    from .train import DEFAULTS

    cfg = dict(DEFAULTS)
    layers = []
    if path:
        with open(path) as f:
            layers.append(yaml.safe_load(f) or {})
    layers.append(parse_overrides(overrides))
    for layer in layers:
        if not isinstance(layer, dict):
            raise SystemExit(f"config must be a mapping, got {type(layer).__name__}")
        unknown = set(layer) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"unknown config key(s) {sorted(unknown)}; valid keys: {sorted(DEFAULTS)}")
        cfg.update(layer)
    from .._config import check_types

    try:
        check_types(cfg, DEFAULTS, {"task_weights": ((dict, type(None)), "a mapping of task weights or null")})
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return cfg


def load_splits(cfg):
    from .data import load_dataset

    kw = dict(root=cfg["root"], size=cfg["size"], seed=int(cfg["seed"]))
    if cfg["dataset"] == "scenes":
        return (load_dataset("scenes", "train", n=int(cfg["n_train"]), **kw),
                load_dataset("scenes", "val", n=int(cfg["n_val"]), **kw),
                load_dataset("scenes", "test", n=int(cfg["n_test"]), **kw))
    train = load_dataset(cfg["dataset"], "train", **kw)
    val = load_dataset(cfg["dataset"], "val", **kw)
    return train, val, val  # real datasets ship train/val only: the search table and the report share val


def fit(cfg, train_data, progress=True):
    """Build (seeded) and train a model; returns (model, history)."""
    import torch

    from .model import build_model
    from .train import train

    torch.manual_seed(int(cfg["seed"]))
    model = build_model(train_data.tasks, cfg)
    return model, train(model, train_data, cfg, progress=progress)


RUN_FORMAT = "sparsecl-multitask-run"


def save_run(out, model, cfg, history, table_val):
    """DIR/model.pt: atomic, checksummed, ``torch.load(weights_only=True)``-loadable (sparsecl.checkpoint)."""
    from ..checkpoint import save_checkpoint

    save_checkpoint(os.path.join(out, "model.pt"),
                    {"config": cfg, "tasks": {t: (s.kind, s.channels) for t, s in model.tasks.items()},
                     "state_dict": model.state_dict(), "history": history, "val_table": table_val}, kind=RUN_FORMAT)


def load_run(run):
    from ..checkpoint import load_checkpoint
    from .data import TaskSpec
    from .model import build_model

    path = os.path.join(run, "model.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: run `sparsecl multitask train --out {run}` first")
    ck = load_checkpoint(path, kind=RUN_FORMAT)
    tasks = {t: TaskSpec(t, k, c) for t, (k, c) in ck["tasks"].items()}
    model = build_model(tasks, ck["config"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck


def write_report(out, model, cfg, table_val, table_test, extra=None):
    """metrics.json, configurations.csv and controllability.png for one model."""
    from ..io import write_json_atomic, write_bytes_atomic
    from .evaluate import plot, rows_csv, summarize_model

    summary, ctrl, uni = summarize_model(model, table_val, table_test, cfg)
    metrics = {"config": cfg, **(extra or {}), **summary}
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    write_bytes_atomic(os.path.join(out, "configurations.csv"), rows_csv(summary["configurations"]))
    plot(os.path.join(out, "controllability.png"), {"model": summary["configurations"]},
         {"preference search": ctrl, "uniform allocation": uni}, list(model.tasks))
    return metrics


def _threads(cfg):
    import torch

    if int(cfg.get("threads") or 0) > 0:
        torch.set_num_threads(int(cfg["threads"]))


def cmd_train(args):
    from .evaluate import evaluate_table

    cfg = load_config(args.config, args.overrides)
    _threads(cfg)
    out = args.out
    train_data, val, test = load_splits(cfg)
    model, history = fit(cfg, train_data, progress=not args.no_progress)
    t0 = time.perf_counter()
    table_val = evaluate_table(model, val, int(cfg["eval_batch"]))
    table_test = table_val if test is val else evaluate_table(model, test, int(cfg["eval_batch"]))
    save_run(out, model, cfg, history, table_val)
    m = write_report(out, model, cfg, table_val, table_test,
                     {"train_s": history["train_s"], "eval_s": time.perf_counter() - t0})
    _print_summary(m, out)
    return 0


def cmd_eval(args):
    from .evaluate import evaluate_table

    model, ck = load_run(args.run)
    cfg = {**ck["config"], **parse_overrides(args.overrides)}
    _threads(cfg)
    _, val, test = load_splits(cfg)
    table_val = evaluate_table(model, val, int(cfg["eval_batch"]))
    table_test = table_val if test is val else evaluate_table(model, test, int(cfg["eval_batch"]))
    m = write_report(args.run, model, cfg, table_val, table_test)
    _print_summary(m, args.run)
    return 0


def cmd_search(args):
    from .evaluate import model_input_hw, reference, relative_table
    from .search import WidthSearch

    model, ck = load_run(args.run)
    hw = model_input_hw(ck["config"])
    search = WidthSearch(model, hw, perf=relative_table(model, ck["val_table"], reference(ck["val_table"])))
    if (args.budget is None) == (args.budget_frac is None):
        raise SystemExit("give exactly one of --budget (MACs per image) and --budget-frac (0..1 of the MAC range)")
    t = search.table
    budget = args.budget if args.budget is not None else t.min_macs + args.budget_frac * (t.max_macs - t.min_macs)
    prefs = [float(x) for x in args.prefs.split(",")]
    t0 = time.perf_counter()
    try:
        cfg, macs = search(budget, prefs, uniform=args.uniform)
    except ValueError as e:
        raise SystemExit(str(e))
    ms = 1e3 * (time.perf_counter() - t0)
    print(json.dumps({"budget": budget, "prefs": dict(zip(model.tasks, prefs)), "config": cfg.to_json(),
                      "macs": macs, "search_ms": ms}, indent=2))
    return 0


def _print_summary(m, out):
    c, u = m["controllability"], m["controllability_uniform"]
    print(f"full width (test): {json.dumps(m['full_width_test'])}")
    print(f"avg SubNet relative score {m['avg_subnet_rel']:.4f}; within budget "
          f"{m['budget_check']['within_budget']}/{m['budget_check']['queries']} "
          f"(search {m['budget_check']['search_ms_median']:.3f} ms median)")
    print(f"rank corr {c['rank_correlation']:.3f} (uniform {u['rank_correlation']:.3f}); DYMU {c['dymu']:.4f} "
          f"(uniform {u['dymu']:.4f}); HV {c['hypervolume']:.4g} (uniform {u['hypervolume']:.4g})")
    print(f"wrote {os.path.join(out, 'metrics.json')}, configurations.csv, controllability.png")


def add_parser(sub):
    """Register ``multitask`` with its ``train``, ``eval`` and ``search`` subcommands on ``sub``."""
    mt = sub.add_parser("multitask", help="controllable multi-task learning (train, eval, search)",
                        description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    s = mt.add_subparsers(dest="mt_command", required=True)
    tr = s.add_parser("train", help="train the slimmable multi-task SuperNet and evaluate it")
    tr.add_argument("--config", default=None, help="YAML file with config keys (see train.DEFAULTS)")
    tr.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    tr.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    tr.add_argument("overrides", nargs="*", metavar="key=value")
    tr.set_defaults(func=cmd_train)
    ev = s.add_parser("eval", help="score all configurations and the search of a trained run")
    ev.add_argument("--run", default=DEFAULT_OUT)
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.set_defaults(func=cmd_eval)
    se = s.add_parser("search", help="width configuration for a MAC budget and task preferences")
    se.add_argument("--run", default=DEFAULT_OUT)
    se.add_argument("--budget", type=float, default=None, help="MACs per image")
    se.add_argument("--budget-frac", type=float, default=None, help="fraction of the [min, max] MAC range")
    se.add_argument("--prefs", required=True, help="comma-separated preferences, one per task in model order")
    se.add_argument("--uniform", action="store_true", help="uniform decoder widths (baseline)")
    se.set_defaults(func=cmd_search)
    return mt
