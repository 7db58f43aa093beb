"""CI-KD vs no-CI-KD vs uniform allocation on the embedded scene dataset (or any configured dataset).

    python -m sparsecl.multitask.experiment [--out bench/results/multitask] [--config FILE] [--jobs 2] [key=value ...]

Trains two models from the same seed, data and initialisation: ``ci_kd`` (kd_weight from the config) and
``no_kd`` (kd_weight = 0). Every score is relative to the no-CI-KD model's full-width test metrics, so both
models are on one scale; the hypervolume reference point is shared too (per task, the lowest relative
performance of any configuration of either model). Baselines:
  * ``no_kd``: the slimmable model trained without CI-KD, with the same preference-driven search;
  * ``uniform``: the CI-KD model with uniform decoder widths (preference ignored).
Writes metrics.json, configurations.csv (both models' configurations) and controllability.png.
"""
import argparse
import io
import os
import sys


def _fit_bytes(c):
    """Worker for ``--jobs``: train one model from config ``c``; returns (torch.save'd state_dict, history)."""
    import torch

    from .cli import _threads, fit, load_splits

    _threads(c)
    model, hist = fit(c, load_splits(c)[0], progress=False)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), hist


def _fit_all(configs, train, jobs, progress):
    """{name: (model, history)} for {name: config}; with ``jobs`` > 1 the models train in parallel processes
    (each seeded exactly as in-process training, so the result does not depend on ``jobs``)."""
    from .cli import fit

    if jobs <= 1:
        return {n: fit(c, train, progress=progress) for n, c in configs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from .model import build_model

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {n: pool.submit(_fit_bytes, c) for n, c in configs.items()}
        out = {}
        for n, fut in futures.items():
            state, hist = fut.result()
            model = build_model(train.tasks, configs[n])
            model.load_state_dict(torch.load(io.BytesIO(state), map_location="cpu"))
            out[n] = (model.eval(), hist)
    return out


def _load_models(models_dir, configs, train):
    """{name: (model, history)} from ``--models-dir``; the saved config must equal the requested one."""
    import torch

    from .model import build_model

    if not models_dir:
        raise SystemExit("--reuse-models needs --models-dir")
    out = {}
    for n, c in configs.items():
        ck = torch.load(os.path.join(models_dir, f"{n}.pt"), map_location="cpu", weights_only=False)
        if ck["config"] != c:
            diff = sorted(k for k in set(c) | set(ck["config"]) if c.get(k) != ck["config"].get(k))
            raise SystemExit(f"saved model {n} was trained with a different config (keys {diff})")
        model = build_model(train.tasks, c)
        model.load_state_dict(ck["state_dict"])
        out[n] = (model.eval(), ck["history"])
    return out


def main(argv=None):
    from ..io import write_bytes_atomic, write_json_atomic
    from .cli import _threads, load_config, load_splits
    from .evaluate import config_rows, configs_for_report, evaluate_table, model_input_hw, plot, reference, rows_csv
    from .evaluate import summarize_model
    from .search import MacTable

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/multitask")
    p.add_argument("--config", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="train the two models in this many processes")
    p.add_argument("--models-dir", default=None, help="also save each trained model's state_dict here")
    p.add_argument("--reuse-models", action="store_true",
                   help="load the models saved in --models-dir (same config) instead of training them again")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    _threads(cfg)
    train, val, test = load_splits(cfg)
    runs = {}
    configs = {name: {**cfg, "kd_weight": kd} for name, kd in (("ci_kd", float(cfg["kd_weight"])), ("no_kd", 0.0))}
    if args.reuse_models:
        fitted = _load_models(args.models_dir, configs, train)
    else:
        fitted = _fit_all(configs, train, args.jobs, not args.no_progress)
    for name, (model, hist) in fitted.items():
        c = configs[name]
        if args.models_dir and not args.reuse_models:
            import torch

            os.makedirs(args.models_dir, exist_ok=True)
            torch.save({"config": c, "state_dict": model.state_dict(), "history": hist},
                       os.path.join(args.models_dir, f"{name}.pt"))
        tv = evaluate_table(model, val, int(c["eval_batch"]))
        tt = evaluate_table(model, test, int(c["eval_batch"]))
        runs[name] = (model, c, hist, tv, tt)
        print(f"{name}: trained in {hist['train_s']:.0f} s", flush=True)
    common = reference(runs["no_kd"][4])
    hw = model_input_hw(cfg)
    hv_ref = []
    for t in runs["ci_kd"][0].tasks:
        lo = min(r[f"{t}_rel"] for model, c, _, _, tt in runs.values()
                 for r in config_rows(model, tt, MacTable(model, hw), common, configs_for_report(model)))
        hv_ref.append(lo - 1e-6)
    summaries, ctrls = {}, {}
    for name, (model, c, hist, tv, tt) in runs.items():
        s, ctrl, uni = summarize_model(model, tv, tt, c, hv_ref=hv_ref, ref=common)
        s["train_s"], s["loss_history"] = hist["train_s"], {k: hist[k] for k in ("step", "super", "sub", "kd")}
        summaries[name] = s
        ctrls[f"{name} search"] = ctrl
        if name == "ci_kd":
            ctrls["ci_kd uniform"] = uni
    kd, nokd = summaries["ci_kd"], summaries["no_kd"]
    comparison = {
        "avg_subnet_rel": {"ci_kd": kd["avg_subnet_rel"], "no_kd": nokd["avg_subnet_rel"],
                           "ci_kd_minus_no_kd": kd["avg_subnet_rel"] - nokd["avg_subnet_rel"]},
        "search_mean_rel": {"ci_kd": kd["controllability"]["mean_rel"], "no_kd": nokd["controllability"]["mean_rel"],
                            "uniform": kd["controllability_uniform"]["mean_rel"]},
    }
    for key in ("rank_correlation", "rank_correlation_across_tasks", "dymu", "hypervolume"):
        comparison[key] = {"ci_kd": kd["controllability"][key], "no_kd": nokd["controllability"][key],
                           "uniform": kd["controllability_uniform"][key]}
    comparison["within_budget"] = {n: s["budget_check"]["fraction_within_budget"] for n, s in summaries.items()}
    from .. import nn as snn

    metrics = {"config": cfg, "slimmable_layers_from": snn.SlimmableConv2d.__module__, "comparison": comparison,
               "models": summaries}
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "metrics.json"), metrics)
    rows = [{"model": n, **r} for n, s in summaries.items() for r in s["configurations"]]
    write_bytes_atomic(os.path.join(args.out, "configurations.csv"), rows_csv(rows))
    plot(os.path.join(args.out, "controllability.png"),
         {n: s["configurations"] for n, s in summaries.items()}, ctrls, list(runs["ci_kd"][0].tasks))
    for k, v in comparison.items():
        print(f"{k}: " + ", ".join(f"{n}={x:.4f}" if isinstance(x, float) else f"{n}={x}" for n, x in v.items()))
    print(f"wrote {args.out}/metrics.json, configurations.csv, controllability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
