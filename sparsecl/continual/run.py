"""``sparsecl continual``: config handling, the run(s), metrics.json, the heatmap and the printed summary."""
import copy
import hashlib
import json
import os
import pickle
import sys

import torch
import yaml

from .._config import OneOf, Range, check_types, check_values
from ..errors import ConfigError, DataNotFoundError, UserError, one_line
from ..io import write_json_atomic
from ..dst.criteria import GROWTH, PRUNE
from .checkpoint import CheckpointError, load_checkpoint
from .data import DATASETS
from .models import MODELS
from .schedules import NAMES as LR_SCHEDULES
from .trainer import DEFAULTS, ContinualTrainer, merge_config

# flag -> dotted config key (every flag here is documented in the README and tested)
FLAGS = {
    "out": "out", "dataset": "data.name", "data_root": "data.root", "tasks": "data.n_tasks", "model": "model.name",
    "width": "model.width", "depth": "model.depth", "density": "density", "init": "init", "growth": "growth",
    "update_every": "update_every", "drop_fraction": "drop_fraction", "epochs": "epochs",
    "batch_size": "batch_size", "optimizer": "optimizer.name", "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay", "momentum": "optimizer.momentum", "seed": "seed",
    "threads": "threads", "checkpoint_every": "checkpoint_every", "device": "device", "lr_schedule": "lr_schedule.name",
    "reuse": "reuse",
}

# keys whose values may have another type than their default (model.width: null = the model's own default)
CONFIG_TYPES = {"density": ((int, float, str), "a number or 'adaptive'"),
                "data.image_size": ((int, type(None)), "an integer or null"),
                "model.width": ((int, float, type(None)), "a number or null")
                if DEFAULTS["model"]["width"] is None else ((int, float), "a number")}

_POSITIVE_INT, _COUNT = Range(1, integral=True), Range(0, integral=True)
_FRACTION = Range(0.0, 1.0)
# allowed values of every continual config key (types are checked first, against DEFAULTS and CONFIG_TYPES)
CONFIG_VALUES = {
    "data.name": OneOf(*DATASETS), "data.n_tasks": _POSITIVE_INT, "data.seed": _COUNT,
    "data.image_size": Range(8, 512, integral=True),
    "model.name": OneOf(*MODELS), "model.width": Range(0, lo_open=True),
    "model.depth": _POSITIVE_INT, "mode": OneOf("sparse", "dense-masked"), "reuse": OneOf("mask", "all"),
    "density": (_FRACTION, OneOf("adaptive")), "init": OneOf("erk", "er", "uniform", "adaptive"),
    "growth": OneOf(*GROWTH, "adaptive"), "prune": OneOf(*PRUNE),
    "drop_fraction": _FRACTION, "drop_fraction_end": _FRACTION, "update_every": _POSITIVE_INT,
    "epochs": _POSITIVE_INT, "batch_size": _POSITIVE_INT, "optimizer.name": OneOf("sgd", "adam", "adamw"),
    "optimizer.lr": Range(0.0, lo_open=True), "optimizer.momentum": Range(0.0, 1.0, hi_open=True),
    "optimizer.weight_decay": Range(0.0), "lr_schedule.name": OneOf(*LR_SCHEDULES),
    "lr_schedule.milestones": _FRACTION, "lr_schedule.gamma": Range(0.0, 1.0, lo_open=True), "seed": _COUNT,
    "checkpoint_every": _COUNT, "threads": _COUNT, "stop_after_steps": _COUNT,
}
_KEY_FLAGS = {key: "--" + flag.replace("_", "-") for flag, key in FLAGS.items()}


def _how_to_set(key):
    flag = f"{_KEY_FLAGS[key]} VALUE or " if key in _KEY_FLAGS else ""
    return f"; set it with {flag}{key}=VALUE"


def check_config(cfg):
    """Raise ConfigError unless every value of a full continual config has its type and allowed range."""
    try:
        check_types(cfg, DEFAULTS, CONFIG_TYPES)
        check_values(cfg, CONFIG_VALUES, _how_to_set)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    m = cfg["model"]
    if m["width"] is not None and m["name"] != "mobilenetv2" and m["width"] != int(m["width"]):
        raise ConfigError(f"config key 'model.width' of model {m['name']!r} is a channel/unit count and must be a "
                          f"whole number, got {m['width']!r} (only mobilenetv2 takes a width multiplier)"
                          f"{_how_to_set('model.width')}")
    if not cfg["out"]:
        raise ConfigError(f"config key 'out' must name an output directory{_how_to_set('out')}")
    try:
        device = torch.device(cfg["device"])
    except RuntimeError as exc:
        raise ConfigError(f"config key 'device' is not a torch device ({one_line(exc)})"
                          f"{_how_to_set('device')}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg['device']!r} asked for, but no CUDA device is available here; use --device cpu")


def set_dotted(cfg, key, value):
    parts = key.split(".")
    d = cfg
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            raise ConfigError(f"unknown config key {key!r}; known: {sorted(_keys(DEFAULTS))}")
        d = d[p]
    if parts[-1] not in d:
        raise ConfigError(f"unknown config key {key!r}; known: {sorted(_keys(DEFAULTS))}")
    d[parts[-1]] = value


def _keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _keys(v, prefix + k + ".")
        else:
            yield prefix + k


def _read_yaml(path):
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {one_line(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping")
    unknown = set(_keys(loaded)) - set(_keys(DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(_keys(DEFAULTS))}")
    return loaded


def build_config(args):
    """DEFAULTS <- each --config file <- flags <- key=value overrides, checked (ConfigError) before anything runs."""
    cfg = copy.deepcopy(DEFAULTS)
    for path in args.config or []:
        cfg = merge_config(cfg, _read_yaml(path))
    for flag, key in FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            set_dotted(cfg, key, v)
    if args.dense_masked:
        cfg["mode"] = "dense-masked"
    if args.compare_dense_masked:
        cfg["compare_dense_masked"] = True
    if args.resume:
        cfg["resume"] = True
    if args.no_progress:
        cfg["progress"] = False
    for item in args.overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must be key=value (e.g. model.width=512)")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({one_line(exc)})") from None
        set_dotted(cfg, k.strip(), value)
    check_config(cfg)
    _check_data(cfg)
    return cfg


def _check_data(cfg):
    """The dataset the config names: its files' directory is given and the model takes its inputs (the
    trainer may be handed its tasks instead, so this is the command line's check)."""
    m, d = cfg["model"], cfg["data"]
    if d["name"] == "digits" and m["name"] != "mlp":
        raise ConfigError(f"model {m['name']!r} needs images, and Split-Digits is 64 features per sample: use "
                          f"--model mlp, or --dataset cifar100 / miniimagenet with --data-root DIR")
    if d["name"] != "digits" and not d["root"]:
        raise ConfigError(f"dataset {d['name']!r} reads its files from a directory: pass --data-root DIR "
                          f"(or data.root=DIR)")


def add_arguments(p):
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.width=512")
    p.add_argument("--config", "-c", action="append", help="YAML config file (repeatable; later ones win)")
    p.add_argument("--out", help="output directory (metrics.json, log.csv, acc_matrix.png, checkpoint.pt)")
    p.add_argument("--dataset", choices=["digits", "cifar100", "miniimagenet"])
    p.add_argument("--data-root", dest="data_root", help="directory holding the image dataset files")
    p.add_argument("--tasks", type=int, help="number of tasks")
    p.add_argument("--model", choices=["mlp", "cnn", "resnet18", "mobilenetv2"])
    p.add_argument("--width", type=float_or_int, help="MLP/CNN width (MobileNetV2: width multiplier)")
    p.add_argument("--depth", type=int, help="MLP hidden layers")
    p.add_argument("--density", type=density_arg, help="per-task density of new weights, or 'adaptive'")
    p.add_argument("--init", choices=["erk", "er", "uniform", "adaptive"])
    p.add_argument("--growth", choices=["random", "unfired", "gradient", "momentum", "adaptive"])
    p.add_argument("--reuse", choices=["mask", "all"],
                   help="mask (default, the paper's protocol): each task trains one density-d subnetwork over the "
                        "whole trunk, reusing the frozen weights inside it; all: each task reads every frozen "
                        "weight of earlier tasks and adds density-d new ones (cost grows per task)")
    p.add_argument("--update-every", dest="update_every", type=int, help="steps between DST updates")
    p.add_argument("--drop-fraction", dest="drop_fraction", type=float, help="initial drop fraction (cosine decay)")
    p.add_argument("--epochs", type=int, help="epochs per task")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", dest="lr_schedule", choices=list(LR_SCHEDULES),
                   help="learning-rate schedule, restarted per task (multistep: x lr_schedule.gamma at "
                        "lr_schedule.milestones, fractions of the task's epochs)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (0: torch default)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="steps between mid-task checkpoints")
    p.add_argument("--device")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--dense-masked", action="store_true", help="baseline: dense weight * mask with F.linear")
    p.add_argument("--compare-dense-masked", action="store_true",
                   help="also run the same configuration with --dense-masked and report measured ratios")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--debug", action="store_true", help="on a configuration, file or resource error, show the "
                                                        "traceback instead of the one-line message")


def float_or_int(s):
    v = float(s)
    return int(v) if v.is_integer() else v


def density_arg(s):
    return s if s == "adaptive" else float(s)


def _init_distributed():
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def masks_digest(trainer):
    h = hashlib.sha256()
    for m, o in zip(trainer.masks(), trainer.own.owner):
        h.update(m.cpu().numpy().tobytes())
        h.update(o.cpu().numpy().tobytes())
    for masks in trainer.task_mask_keys():  # reuse: mask: each task's own final mask
        for keys in masks:
            h.update(keys.cpu().numpy().tobytes())
    return h.hexdigest()


def ratios(sparse, dense):
    """Measured sparse/dense-masked ratios from two finished runs of the same configuration."""
    def tp(r, key="train_seconds"):
        return sum(t["samples"] for t in r["tasks"]) / sum(t[key] for t in r["tasks"])

    def wo(st):
        return st["weights"] + st["optimizer"]

    def total(st):
        return st["total"]

    pairs = list(zip(sparse["state_bytes_per_task"], dense["state_bytes_per_task"]))
    mem = [wo(s) / wo(d) for s, d in pairs]
    return {
        "train_speedup": tp(sparse) / tp(dense),
        # the same ratio in thread CPU time: less disturbed than wall time when other jobs share the cores
        "train_speedup_cpu_time": tp(sparse, "train_cpu_seconds") / tp(dense, "train_cpu_seconds"),
        "train_speedup_per_task": [a / b for a, b in zip(sparse["throughput_samples_per_s"],
                                                           dense["throughput_samples_per_s"])],
        "train_speedup_cpu_time_per_task": [d["train_cpu_seconds"] / s["train_cpu_seconds"] if s["train_cpu_seconds"]
                                            else None for s, d in zip(sparse["tasks"], dense["tasks"])],
        "weight_optimizer_memory_ratio_per_task": mem,
        "weight_optimizer_memory_ratio_max": max(mem),
        "total_state_memory_ratio_per_task": [total(s) / total(d) for s, d in pairs],
        "total_state_memory_ratio_max": max(total(s) / total(d) for s, d in pairs),
        "weight_optimizer_bytes": {"sparse": [wo(s) for s in sparse["state_bytes_per_task"]],
                                   "dense_masked": [wo(d) for d in dense["state_bytes_per_task"]]},
        "total_state_bytes": {"sparse": [total(s) for s in sparse["state_bytes_per_task"]],
                              "dense_masked": [total(d) for d in dense["state_bytes_per_task"]]},
        "note": "throughput = training samples / training seconds (forward, backward, optimizer, DST updates), "
                "both runs in this process (train_speedup: wall clock; train_speedup_cpu_time: this thread's CPU "
                "time, both runs single-threaded); memory = weight (trainable + frozen values) + optimizer-state bytes "
                "of the trunk layers at the end of each task; total = everything the trunk layers and the trainer "
                "keep for them between steps at that point (state_bytes_per_task: weights, optimizer state, "
                "gradients, ownership, CSR indices, the per-task masks, derived caches: union index, positions and "
                "value buffer, dispatch dense weights; the frozen-entry guard index; the DST engine's tensors), "
                "each storage counted once; heads and per-task norms are left out of both",
    }


def heatmap(acc, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(acc)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * T, 0.8 + 0.7 * T))
    im = ax.imshow([[a if a is not None else float("nan") for a in r] for r in acc], vmin=0, vmax=1, cmap="viridis")
    for i in range(T):
        for j in range(T):
            if acc[i][j] is not None:
                ax.text(j, i, f"{acc[i][j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if acc[i][j] < 0.6 else "black")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_matrix(acc):
    T = len(acc)
    lines = ["after\\task " + " ".join(f"{j + 1:>6}" for j in range(T))]
    for i, row in enumerate(acc):
        lines.append(f"{i + 1:>10} " + " ".join(f"{a:6.3f}" for a in row))
    return "\n".join(lines)


def main(args):
    """Run ``sparsecl continual``; a UserError (bad config, missing data, corrupted checkpoint, a model that
    does not fit in memory) prints one line on stderr and returns 2 (``--debug``: raised with its traceback)."""
    try:
        return _run(args)
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"sparsecl continual: error: {one_line(exc)}", file=sys.stderr)
        return 2


def _run(args):
    cfg = build_config(args)
    rank = _init_distributed()
    import torch.distributed as dist

    try:
        result = _main(cfg, rank)
        if dist.is_initialized():  # no rank tears gloo down while another still talks to it
            dist.barrier()
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _trainer(cfg):
    """ContinualTrainer(cfg); what goes wrong while it reads the data and builds the model (dataset files
    missing or malformed, a model that does not fit the data, the memory check's refusal) is a UserError."""
    try:
        return ContinualTrainer(cfg)
    except UserError:  # already says what to do (e.g. continual.memory.InsufficientMemoryError)
        raise
    except FileNotFoundError as exc:
        raise DataNotFoundError(one_line(exc)) from exc
    except (pickle.UnpicklingError, EOFError, OSError) as exc:  # a truncated download, an unreadable file
        d = cfg["data"]
        raise UserError(f"cannot read the {d['name']} files under {d['root']!r} ({type(exc).__name__}: "
                        f"{one_line(exc)}); replace them with a complete copy") from exc
    except ValueError as exc:
        raise UserError(one_line(exc)) from exc


# what a checkpoint's model and data must share with the run that resumes from it
_RESUME_KEYS = ("data.name", "data.n_tasks", "data.seed", "model.name", "model.width", "model.depth", "mode",
                "reuse")


def _dotted(cfg, key):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _check_resumable(trainer):
    """With --resume and a checkpoint in --out: it must verify and come from a run of the same model and data."""
    if not (trainer.cfg["resume"] and os.path.exists(trainer.ckpt_path)):
        return
    saved = json.loads(load_checkpoint(trainer.ckpt_path)["config"])
    differ = [f"{k}={_dotted(saved, k)!r} there, {_dotted(trainer.cfg, k)!r} here" for k in _RESUME_KEYS
              if _dotted(saved, k) != _dotted(trainer.cfg, k)]
    if differ:
        raise UserError(f"{trainer.ckpt_path} was written by a run of another model or data ({'; '.join(differ)}): "
                        f"resume with its settings, or use another --out")


def _train(trainer):
    try:
        _check_resumable(trainer)
        return trainer.run()
    except CheckpointError as exc:
        raise UserError(f"{one_line(exc)}. To start this run from scratch, delete {trainer.ckpt_path}, drop --resume "
                        f"or use another --out") from exc


def _main(cfg, rank):
    out = cfg["out"]
    result = {}
    load0 = os.getloadavg()[0]
    if cfg["compare_dense_masked"] and cfg["mode"] == "sparse":
        dcfg = merge_config(cfg, {"mode": "dense-masked", "out": os.path.join(out, "dense-masked"),
                                  "compare_dense_masked": False})
        dense = _train(_trainer(dcfg))
        sparse_trainer = _trainer(cfg)
        res = _train(sparse_trainer)
        res["dense_masked"] = {k: dense[k] for k in ("ACC", "BWT", "acc_matrix", "train_seconds",
                                                      "throughput_samples_per_s", "state_bytes_per_task")}
        res["dense_masked"]["tasks"] = [{k: t[k] for k in ("task", "train_seconds", "train_cpu_seconds", "samples",
                                                           "steps")} for t in dense["tasks"]]
        res["vs_dense_masked"] = ratios(res, dense)
    else:
        sparse_trainer = _trainer(cfg)
        res = _train(sparse_trainer)
    res["mask_sha256"] = masks_digest(sparse_trainer)
    res["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # 1-min load at start and end
    if rank != 0:
        write_json_atomic(os.path.join(out, f"rank{rank}.json"), {"mask_sha256": res["mask_sha256"]})
        return 0
    write_json_atomic(os.path.join(out, "metrics.json"), res)
    result = res
    heatmap(res["acc_matrix"], os.path.join(out, "acc_matrix.png"),
            f"{cfg['data']['name']} {cfg['model']['name']} d={cfg['density']} {cfg['mode']}: "
            f"ACC {res['ACC']:.3f} BWT {res['BWT']:+.4f}")
    print("accuracy matrix acc[i][j] (test accuracy on task j after training task i):")
    print(format_matrix(result["acc_matrix"]))
    print(f"ACC {res['ACC']:.4f}  BWT {res['BWT']:+.4f}  FWT {res['FWT']:+.4f}  forgetting {res['forgetting']:.4f}")
    print(f"train time {res['train_seconds']:.1f} s ({cfg['mode']}), peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB")
    if "vs_dense_masked" in res:
        v = res["vs_dense_masked"]
        print(f"measured training speedup over --dense-masked (same config, this run): {v['train_speedup']:.2f}x "
              f"(per task: {' '.join(f'{s:.2f}' for s in v['train_speedup_per_task'])}; "
              f"in thread CPU time {v['train_speedup_cpu_time']:.2f}x; load average {res['load_average']}); "
              f"weight+optimizer memory vs dense-masked: max {v['weight_optimizer_memory_ratio_max']:.3f}x "
              f"(per task: {' '.join(f'{s:.3f}' for s in v['weight_optimizer_memory_ratio_per_task'])}); "
              f"total state: max {v['total_state_memory_ratio_max']:.3f}x "
              f"(per task: {' '.join(f'{s:.3f}' for s in v['total_state_memory_ratio_per_task'])})")
    print(f"wrote {os.path.join(out, 'metrics.json')}, acc_matrix.png, log.csv, checkpoint.pt")
    return 0
