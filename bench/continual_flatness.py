"""Per-task speedup flatness of `sparsecl continual` on a 10-task Split-CIFAR-100 run (issue 16's bar: the last
task's sparse/dense-masked training ratio >= 0.85x the first task's).

The CIFAR-100 files are generated in the real python-pickle format (``cifar-100-python/{train,test,meta}``) with
random pixels, since this machine has no internet: accuracy is meaningless here, the speed ratio is what is
measured. The job is the CLI itself (``sparsecl continual ... --compare-dense-masked``) in a subprocess with its own
dispatch cache (``SPARSECL_CACHE_DIR``). By default a short warm-up run of the same model (sparse mode, per task a
few batches with the same dispatch keys as the measured run's, ``warm_per_class``) fills that cache first, so the
measured run finds every per-layer choice cached and no task's training time holds the one-off calibration
(``--cold-cache``: measure a new user's first run, where task 1 pays it); the 1-min load average is sampled while
the job runs.

Usage: python -m bench.continual_flatness [--per-class-train 500] [--per-class-test 100] [--threads 1] [--cold-cache]
       [--quick] [--report-only]
Writes bench/results/continual/flatness-cifar100-10/{metrics.json, summary.md, ratio.png} (--quick: a temp dir).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench.harness import machine_info
from sparsecl.checkpoint import load_checkpoint
from sparsecl.io import write_bytes_atomic, write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "continual", "flatness-cifar100-10")
BAR = 0.85  # last task's ratio / first task's ratio


def write_cifar100(root, per_class_train, per_class_test, seed=0):
    from tests.continual.test_presets import write_cifar100 as write  # the real format, as the CI tests write it

    write(root, per_class_train=per_class_train, per_class_test=per_class_test, seed=seed)


class LoadSampler(threading.Thread):
    """Samples /proc/loadavg's 1-min load every ``every`` seconds until ``stop()``."""

    def __init__(self, every=15.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._done = every, [], threading.Event()

    def run(self):
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._done.wait(self.every):
                return

    def stop(self):
        self._done.set()
        self.join()


def command(a, data, out, compare=True):
    return [sys.executable, "-m", "sparsecl.cli", "continual", "--dataset", "cifar100", "--data-root", data,
            "--tasks", str(a.tasks), "--model", "resnet18", "--width", str(a.width), "--epochs", str(a.epochs),
            "--batch-size", "64", "--density", "0.1", "--reuse", "mask", "--threads", str(a.threads),
            "--no-progress", "--out", out] + (["--compare-dense-masked"] if compare else [])


def _pow2_tail(n, batch=64):
    """The dispatch key's batch of a task's last, partial batch (0: none)."""
    r = n % batch
    return 0 if r == 0 else 1 << (r - 1).bit_length()


def warm_per_class(per_class, classes_per_task, batch=64):
    """Fewest train images per class (at least one full batch per task) whose last batch has the same dispatch
    key as the measured run's, so the warm-up calibrates every training geometry the measured run meets."""
    want = _pow2_tail(per_class * classes_per_task, batch)
    return next(p for p in range(-(-batch // classes_per_task), per_class + batch + 1)
                if _pow2_tail(p * classes_per_task, batch) == want)


def code_state():
    """The commit and the library files with uncommitted changes when the job started (other work shares the tree)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--short", "--", "sparsecl", "csrc").splitlines()}


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"sparsecl continual exited with status {proc.returncode}")


def flatness(metrics):
    """Per-task ratios (wall clock, CPU time), last/first for both and whether the bar holds for each; beside it,
    mean of the last three tasks' ratios over the first three's (less sensitive to one noisy task)."""
    v = metrics["vs_dense_masked"]
    out = {}
    for name, key in (("wall", "train_speedup_per_task"), ("cpu", "train_speedup_cpu_time_per_task")):
        r = v[key]
        out[name] = {"per_task": r, "last_over_first": r[-1] / r[0], "holds": r[-1] >= BAR * r[0],
                     "last3_over_first3": sum(r[-3:]) / sum(r[:3])}
    return out


def breakdown(metrics):
    """Per task and mode: seconds, CPU seconds, steps, and which dispatch sources its sparse layers used."""
    rows = []
    dense_tasks = metrics.get("dense_masked_tasks")
    for t, rec in enumerate(metrics["tasks"]):
        sources = {}
        for layer in rec.get("dispatch", {}).values():
            sources[layer["source"]] = sources.get(layer["source"], 0) + 1
        row = {"task": t, "sparse_seconds": rec["train_seconds"], "sparse_cpu_seconds": rec["train_cpu_seconds"],
               "steps": rec["steps"], "dst_updates": rec["dst_updates"], "dispatch_sources": sources,
               "subnetwork_density": rec["subnetwork_density"], "reused_fraction": rec["reused_fraction"]}
        if dense_tasks:
            row["dense_seconds"] = dense_tasks[t]["train_seconds"]
            row["dense_cpu_seconds"] = dense_tasks[t]["train_cpu_seconds"]
        rows.append(row)
    return rows


def plot(flat, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, style in (("wall", "o-"), ("cpu", "s--")):
        r = flat[name]["per_task"]
        tasks = list(range(1, len(r) + 1))
        ax.plot(tasks, r, style, label=f"{name} (last/first {flat[name]['last_over_first']:.2f})")
        ax.axhline(BAR * r[0], color=ax.lines[-1].get_color(), alpha=0.4, lw=1)
    ax.set_xlabel("task")
    ax.set_ylabel("training speedup over --dense-masked")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=f"thin lines: {BAR} x task 1", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_md(metrics):
    f, cfg = metrics["flatness"], metrics["config"]
    info, code, loads, rows = f["machine"], f.get("code"), f["load_samples"], f["breakdown"]
    threads, tasks = cfg["threads"], cfg["data"]["n_tasks"]
    gen = (f"{f['per_class_train']} train + {f['per_class_test']} test images per class (real CIFAR-100: 500 + 100)"
           + ("" if (f["per_class_train"], f["per_class_test"]) == (500, 100) else ", fewer to fit the time budget"))
    lines = [f"# Per-task speedup flatness: {tasks}-task Split-CIFAR-100, ResNet-18", "",
             f"Files: generated in the real python-pickle format (`cifar-100-python/{{train,test,meta}}`), {gen}, "
             "random pixels: **accuracy is meaningless, the speed ratio is what is measured**.", "",
             f"Command: `{' '.join(f['command'])}`, with its own `SPARSECL_CACHE_DIR`, "
             + (f"filled by a warm-up run of the same model first ({f['warm_up_seconds']:.0f} s; so no task's training "
                "time holds the one-off dispatch calibration)" if f.get("warm_cache")
                else "empty (cold: task 1 pays the dispatch calibration)") + ".", "",
             f"Machine: {info['processor']} ({info['cpu_family_model']}), ISA {info['cpu_isa']}, {info['cpu_count']} "
             f"cores shared with other jobs, torch {info['torch']}, {threads} torch thread(s); {info['date']}; "
             f"wall time {f['wall_seconds']:.0f} s for both runs; 1-min load average during the run min "
             f"{min(loads):.2f} / median {sorted(loads)[len(loads) // 2]:.2f} / max {max(loads):.2f} "
             f"({len(loads)} samples).", ""]
    if code:
        lines += [f"Code: commit {code['commit'][:10]}" + (
            f", with uncommitted changes in {len(code['uncommitted'])} library files (work in progress of others "
            "sharing the tree)" if code["uncommitted"] else "") + "."
            + (f" {code['note']}" if code.get("note") else ""), ""]
    lines += ["| task | wall ratio | CPU-time ratio | sparse s | dense-masked s | sparse CPU s | dense-masked CPU s | "
              "DST updates | dispatch sources | subnetwork density | reused |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, w, c in zip(rows, f["wall"]["per_task"], f["cpu"]["per_task"]):
        src = ", ".join(f"{k} {n}" for k, n in sorted(row["dispatch_sources"].items()))
        lines.append(f"| {row['task'] + 1} | {w:.2f} | {c:.2f} | {row['sparse_seconds']:.1f} | "
                     f"{row.get('dense_seconds', float('nan')):.1f} | {row['sparse_cpu_seconds']:.1f} | "
                     f"{row.get('dense_cpu_seconds', float('nan')):.1f} | {row['dst_updates']} | {src} | "
                     f"{row['subnetwork_density']:.4f} | {row['reused_fraction']:.3f} |")
    lines += ["", f"Bar: last task's ratio >= {BAR} x the first task's.", "",
              "| clock | last / first | bar holds | mean of last 3 / mean of first 3 |", "|---|---|---|---|"]
    lines += [f"| {name} | {f[name]['last_over_first']:.3f} | {'yes' if f[name]['holds'] else 'no'} | "
              f"{f[name]['last3_over_first3']:.3f} |" for name in ("wall", "cpu")]
    if f.get("note"):
        lines += ["", f"Note (added after the run): {f['note']}"]
    v = metrics["vs_dense_masked"]
    lines += ["", f"Whole run: {v['train_speedup']:.2f}x wall, {v['train_speedup_cpu_time']:.2f}x CPU time; "
              f"load average at start/end of the job {metrics['load_average']}.",
              "Training time is forward, backward, optimizer and DST updates (evaluation is not counted); "
              "a layer's dispatch calibration runs inside the first step that meets its geometry, so it is "
              "counted in the task where that happens (`calibrated` above; `cache`: a choice found in the cache). "
              "CPU time is the training thread's (`time.thread_time`), complete with 1 torch thread."]
    return "\n".join(lines) + "\n"


def render(metrics, out):
    """Writes summary.md and ratio.png from a metrics.json holding the ``flatness`` record; returns the markdown."""
    f, cfg = metrics["flatness"], metrics["config"]
    md = summary_md(metrics)
    write_bytes_atomic(os.path.join(out, "summary.md"), md.encode())
    plot(f, os.path.join(out, "ratio.png"),
         f"Split-CIFAR-100 x{cfg['data']['n_tasks']}, ResNet-18 w{cfg['model']['width']}, d={cfg['density']}, "
         f"reuse: {cfg['reuse']}, {cfg['threads']} thread(s), {f['per_class_train']} img/class, "
         f"{f['machine']['processor']}")
    return md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class-train", type=int, default=500)
    p.add_argument("--per-class-test", type=int, default=100)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cold-cache", action="store_true",
                   help="no warm-up: task 1 of the measured run pays the dispatch calibration")
    p.add_argument("--out", default=None, help=f"results directory (default {OUT}; --quick: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 train + 1 test images per class, width 8")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite summary.md and ratio.png from OUT/metrics.json (no new run)")
    p.add_argument("--note", default=None, help="with --report-only: a reader's note on the run, kept in metrics.json")
    a = p.parse_args(argv)
    if a.quick:
        a.per_class_train, a.per_class_test, a.width = 2, 1, 8
    out = a.out or (tempfile.mkdtemp(prefix="sparsecl-flatness-") if a.quick else OUT)
    if a.report_only:
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        metrics["flatness"].update(flatness(metrics))
        if a.note is not None:
            metrics["flatness"]["note"] = a.note
        write_json_atomic(os.path.join(out, "metrics.json"), metrics)
        print(render(metrics, out))
        return out
    with tempfile.TemporaryDirectory(prefix="sparsecl-flatness-") as tmp:
        data, job = os.path.join(tmp, "data"), os.path.join(tmp, "job")
        write_cifar100(data, a.per_class_train, a.per_class_test)
        cmd = command(a, data, job)
        # the job dispatches as it does for a user ("auto"), also when pytest runs this driver
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        env["SPARSECL_CACHE_DIR"] = os.path.join(tmp, "cache")
        warm_seconds = None
        if not a.cold_cache:
            t0 = time.time()
            warm = os.path.join(tmp, "warm-data")
            write_cifar100(warm, warm_per_class(a.per_class_train, 100 // a.tasks), 1, seed=1)
            run(command(a, warm, os.path.join(tmp, "warm"), compare=False), env)
            warm_seconds = time.time() - t0
        info, code, loads, t0 = machine_info(), code_state(), LoadSampler(), time.time()
        loads.start()
        run(cmd, env)
        loads.stop()
        wall = time.time() - t0
        with open(os.path.join(job, "metrics.json")) as f:
            metrics = json.load(f)
        # the dense-masked run writes no metrics.json; its final checkpoint holds its per-task records
        metrics["dense_masked_tasks"] = json.loads(load_checkpoint(os.path.join(job, "dense-masked",
                                                                                "checkpoint.pt"))["log"])
        os.makedirs(out, exist_ok=True)
        shutil.copy(os.path.join(job, "log.csv"), os.path.join(out, "log.csv"))
    flat = flatness(metrics)
    rows = breakdown(metrics)
    metrics["flatness"] = {"bar": f"last task's ratio >= {BAR} x the first task's", **flat, "breakdown": rows,
                           "machine": info, "code": code, "wall_seconds": wall, "load_samples": loads.samples,
                           "command": cmd[2:], "warm_cache": not a.cold_cache, "warm_up_seconds": warm_seconds,
                           "per_class_train": a.per_class_train,
                           "per_class_test": a.per_class_test, "pixels": "random (generated files)"}
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    print(render(metrics, out))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
