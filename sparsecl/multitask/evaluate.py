"""Evaluation of a trained controllable multi-task model: per-configuration task scores, MACs, latency,
controllability metrics under (budget, preference) queries, and the files a run writes.

The encoder and decoders are evaluated separately (``evaluate_table``): for every encoder width e the encoder
runs once over the data, then every decoder at every width d reads those features. That gives the task metric
for every (e, task, d), which is all a configuration's score depends on, so all |G|^(T+1) configurations are
scored from |G| encoder passes and |G|^2·T decoder passes.

Query protocol (``controllability``): budgets at fixed fractions b of the MAC range,
``B = min_macs + b·(max_macs - min_macs)``, and at each budget ``prefs_per_budget`` preference vectors drawn
from a flat Dirichlet. For each query the search picks a configuration; its relative task performance is read
from the table (metrics vs the same model's full-width network on the evaluation split). Reported:
  * ``rank_correlation``: for each budget and task, Spearman between p_t and the achieved relative
    performance of t over that budget's queries; mean over budgets and tasks (does raising a task's
    preference raise its performance, at a fixed budget);
  * ``rank_correlation_across_tasks``: per query, Spearman between p and the relative performances across tasks;
    mean over queries;
  * ``dymu``: mean over queries of DYMU with losses = task loss at the chosen configuration / full-width loss;
  * ``hypervolume``: per budget, the hypervolume of that budget's relative-performance vectors above the
    reference point (given, shared between compared models); mean over budgets.
"""
import csv
import io
import itertools
import time

import numpy as np
import torch

from ..io import write_bytes_atomic
from .metrics import METRIC_NAME, TaskMeter, dymu, hypervolume, relative, spearman
from .search import MacTable, WidthSearch, measure_latency


@torch.no_grad()
def evaluate_table(model, data, batch=100):
    """{task: {(e, d): {"metric": float, "loss": float}}} for every encoder width e and decoder width d."""
    model.eval()
    n, hw = len(data), data.resolution
    out = {t: {} for t in model.tasks}
    for e in model.widths:
        with model.encoder_width(e):
            feats = [model.encoder(data.images[i:i + batch]) for i in range(0, n, batch)]
        for t, spec in model.tasks.items():
            for d in model.widths:
                meter = TaskMeter(spec.kind, spec.channels)
                with model.decoder_width(t, d):
                    for j, i in enumerate(range(0, n, batch)):
                        meter.update(model.decoders[t](feats[j], hw), data.targets[t][i:i + batch])
                out[t][(e, d)] = {"metric": meter.value(), "loss": meter.loss()}
    return out


def reference(table):
    """Full-width metric and loss per task: {task: {"metric", "loss"}}."""
    return {t: v[(1.0, 1.0)] for t, v in table.items()}


def relative_table(model, table, ref):
    """{task: {(e, d): relative performance vs ``ref`` metrics}}."""
    return {t: {k: relative(v["metric"], ref[t]["metric"], _hib(model, t)) for k, v in table[t].items()}
            for t in model.tasks}


def _hib(model, t):
    from .metrics import HIGHER_IS_BETTER

    return HIGHER_IS_BETTER[model.tasks[t].kind]


def configs_for_report(model, limit=4096, seed=0):
    """All configurations, or (when there are more than ``limit``) the uniform ones plus a random sample."""
    G, T = model.widths, list(model.tasks)
    if len(G) ** (len(T) + 1) <= limit:
        return model.all_configs()
    rng = np.random.default_rng(seed)
    cfgs = {model.config(w).key(): model.config(w) for w in G}
    while len(cfgs) < limit:
        c = model.config(float(rng.choice(G)), {t: float(rng.choice(G)) for t in T})
        cfgs[c.key()] = c
    return list(cfgs.values())


def config_rows(model, table, macs, ref, configs):
    """One row per configuration: key, widths, MACs, per-task metric and relative performance, mean relative."""
    rows = []
    for c in configs:
        row = {"config": c.key(), "encoder": c.encoder, "macs": macs.macs(c)}
        rels = []
        for t, d in c.decoders:
            m = table[t][(c.encoder, d)]["metric"]
            r = relative(m, ref[t]["metric"], _hib(model, t))
            row[f"dec_{t}"] = d
            row[f"{t}_{METRIC_NAME[model.tasks[t].kind]}"] = m
            row[f"{t}_rel"] = r
            rels.append(r)
        row["mean_rel"] = float(np.mean(rels))
        rows.append(row)
    return rows


def budgets(macs, levels):
    return [macs.min_macs + b * (macs.max_macs - macs.min_macs) for b in levels]


def controllability(model, search, table, ref, levels, prefs_per_budget, hv_ref, uniform=False, seed=0):
    """Query the search at fixed budgets with Dirichlet preferences; controllability metrics (module docstring)."""
    rng = np.random.default_rng(seed)
    T = list(model.tasks)
    rel = relative_table(model, table, ref)
    per_budget, queries = [], []
    rc, rc_across, dy, hvs = [], [], [], []
    for b, B in zip(levels, budgets(search.table, levels)):
        P = rng.dirichlet(np.ones(len(T)), size=prefs_per_budget)
        R = []
        for p in P:
            cfg, m = search(B, p, uniform=uniform)
            r = [rel[t][(cfg.encoder, d)] for t, d in cfg.decoders]
            L = [table[t][(cfg.encoder, d)]["loss"] / ref[t]["loss"] for t, d in cfg.decoders]
            R.append(r)
            dy.append(dymu(p, L))
            if len(T) > 1:
                rc_across.append(spearman(p, r))
            queries.append({"budget": B, "prefs": p.tolist(), "config": cfg.key(), "macs": m, "rel": r})
        R = np.asarray(R)
        task_rc = [spearman(P[:, i], R[:, i]) for i in range(len(T))]
        rc += task_rc
        hv = hypervolume(R, hv_ref)
        hvs.append(hv)
        per_budget.append({"level": b, "budget": B, "rank_correlation_per_task": dict(zip(T, task_rc)),
                           "hypervolume": hv, "mean_rel": float(R.mean())})
    return {"rank_correlation": float(np.mean(rc)),
            "rank_correlation_across_tasks": float(np.mean(rc_across)) if rc_across else None,
            "dymu": float(np.mean(dy)), "hypervolume": float(np.mean(hvs)), "hv_ref": list(map(float, hv_ref)),
            "mean_rel": float(np.mean([q["rel"] for q in queries])),
            "per_budget": per_budget, "queries": queries}


def budget_check(search, n, seed=0):
    """``n`` random queries (budget uniform over [min, 1.1·max] MACs, Dirichlet preferences): how many stay
    within budget, and the search time per query."""
    rng = np.random.default_rng(seed)
    lo, hi = search.table.min_macs, 1.1 * search.table.max_macs
    ok, ts = 0, []
    for _ in range(n):
        B = float(rng.uniform(lo, hi))
        p = rng.dirichlet(np.ones(len(search.tasks)))
        t0 = time.perf_counter()
        cfg, m = search(B, p)
        ts.append(time.perf_counter() - t0)
        ok += int(search.table.macs(cfg) <= B and m <= B)
    return {"queries": n, "within_budget": ok, "fraction_within_budget": ok / n,
            "search_ms_median": 1e3 * float(np.median(ts)), "search_ms_max": 1e3 * float(np.max(ts))}


def summarize_model(model, table_val, table_test, cfg, hv_ref=None, ref=None):
    """Everything about one trained model: config scores, MACs, latency, controllability (pref and uniform).

    Relative performance is against ``ref`` ({task: {"metric", "loss"}}), by default this model's own
    full-width test metrics; pass another model's to compare models on one scale. The search's objective
    always uses this model's own validation table.
    """
    hw = tuple(model_input_hw(cfg))
    macs = MacTable(model, hw)
    ref_val = reference(table_val)
    ref = ref or reference(table_test)
    search = WidthSearch(model, hw, perf=relative_table(model, table_val, ref_val))
    configs = configs_for_report(model)
    rows = config_rows(model, table_test, macs, ref, configs)
    if hv_ref is None:
        hv_ref = [min(r[f"{t}_rel"] for r in rows) - 1e-6 for t in model.tasks]
    levels = list(cfg["budget_levels"])
    ctrl = controllability(model, search, table_test, ref, levels, int(cfg["prefs_per_budget"]), hv_ref,
                           seed=int(cfg["seed"]))
    uni = controllability(model, search, table_test, ref, levels, int(cfg["prefs_per_budget"]), hv_ref,
                          uniform=True, seed=int(cfg["seed"]))
    sub = [r for r in rows if r["config"] != model.full_config().key()]
    out = {
        "tasks": {t: {"kind": s.kind, "metric": METRIC_NAME[s.kind]} for t, s in model.tasks.items()},
        "full_width_test": {t: reference(table_test)[t] for t in model.tasks},
        "relative_to": ref,
        "macs": {"min": macs.min_macs, "max": macs.max_macs,
                 "encoder": {str(e): v for e, v in macs.enc.items()}},
        "avg_subnet_rel": float(np.mean([r["mean_rel"] for r in sub])) if sub else None,
        "controllability": _strip(ctrl), "controllability_uniform": _strip(uni),
        "budget_check": budget_check(search, int(cfg["n_queries"]), seed=int(cfg["seed"])),
        "latency_ms_batch1": measure_latency(model, [model.config(w) for w in model.widths], hw,
                                             reps=int(cfg["latency_reps"])),
        "configurations": rows,
    }
    return out, ctrl, uni


def _strip(ctrl):
    return {k: v for k, v in ctrl.items() if k != "queries"}


def model_input_hw(cfg):
    s = cfg.get("size") or 32
    return (s, s) if isinstance(s, int) else tuple(s)


def rows_csv(rows):
    buf = io.StringIO()
    keys = list(dict.fromkeys(itertools.chain.from_iterable(r.keys() for r in rows)))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def pareto(points):
    """Indices of the (MACs ascending, score descending) Pareto front of [(macs, score), ...]."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot(path, models, ctrl_by_model, task_names):
    """PNG: left, MACs vs mean relative score of every configuration with each model's Pareto front;
    right, preference vs achieved relative performance per task for the preference-driven search queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in models.items():
        pts = [(r["macs"] / 1e6, r["mean_rel"]) for r in rows]
        ax1.scatter(*zip(*pts), s=6, alpha=0.35, label=f"{name} configs")
        f = pareto(pts)
        ax1.plot([pts[i][0] for i in f], [pts[i][1] for i in f], lw=1.5, label=f"{name} Pareto front")
    ax1.set_xlabel("MMACs per image")
    ax1.set_ylabel("mean relative task performance")
    ax1.legend(fontsize=7)
    ax1.set_title("cost / performance")
    for name, ctrl in ctrl_by_model.items():
        marker = "o" if "uniform" not in name else "x"
        for i, t in enumerate(task_names):
            ps = [q["prefs"][i] for q in ctrl["queries"]]
            rs = [q["rel"][i] for q in ctrl["queries"]]
            ax2.scatter(ps, rs, s=7, alpha=0.4, marker=marker, label=f"{name}: {t}")
    ax2.set_xlabel("task preference p_t")
    ax2.set_ylabel("relative task performance")
    ax2.set_title("controllability")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
