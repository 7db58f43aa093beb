"""Task-incremental continual learning with dynamic sparse training (DST) on a shared sparse trunk.

Two protocols (config key ``reuse``), per task t (owner id t+1; owner 0 = free):

``reuse: mask`` (default; the reference paper's per-task subnetwork):
  1. allocate: each trunk layer's task mask is ``round(d_l * numel)`` positions drawn at random over ALL its
     positions (``d_l`` from ``sparsecl.dst.layer_densities``). Earlier tasks' weights inside it are reused
     with their frozen values (read, never trained); free positions in it are new trainable weights (fresh
     init). Compute per task stays at density d.
  2. train with the DST engine over the whole task mask (every position eligible): magnitude pruning may drop
     reused frozen connections, growth may pick free positions or re-add frozen ones, which come back with
     their frozen value and are never trained (no gradient, no optimizer state). nnz stays exact.
  3. freeze: ``owner[mask & owner == 0] = t + 1``; the final task mask is kept (``task_masks``: per layer a
     bitmask over the positions owned by tasks 0..t in row-major order, which mask t is a subset of once task
     t is frozen) and task j is evaluated through mask j alone.

``reuse: all`` (forward transfer from everything learnt so far; cost grows with t):
  1. allocate: ``round(d_l * numel)`` new positions drawn from the free ones (clipped to what is free); all
     frozen positions of earlier tasks stay in the layer's mask and are reused.
  2. train with DST restricted by ``eligible = (owner == 0)``: frozen positions are never dropped or grown.
  3. freeze as above; task j is evaluated through ``owner in 1..j+1``.
The drop fraction restarts its cosine decay each task. Ownership (``Ownership``) is the owning task's id: one
byte per frozen entry in a sparse trunk layer's frozen store, one uint8 per position in a dense layer.

Frozen weights are bit-identical through later tasks under any optimizer. Sparse trunk layers hold them
outside every parameter (no gradient, no optimizer state); in dense-masked layers their gradient is zeroed
and the optimizer step is wrapped (``FrozenGuard``) so weight decay / momentum / Adam moments cannot move
them (the frozen values are gathered before ``optimizer.step()`` and scattered back after it).

Evaluation of task j uses the weights task j was trained with (its own mask, or under ``reuse: all`` the
view ``owner in 1..j+1``) plus head j and task j's normalisation, so later tasks cannot change task j's
predictions.
"""
import copy
import glob
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import metrics as M
from ..io import write_bytes_atomic
from ..checkpoint import load_checkpoint, save_checkpoint
from ..dispatch import dispatch_report
from .memory import check_memory
from .ownership import FrozenGuard, Ownership
from .models import DEFAULT_WIDTH, build_model, init_values
from .trunk import subnetwork_dst
from .schedules import LRSchedule

DEFAULTS = {
    "data": {"name": "digits", "root": None, "n_tasks": 5, "seed": 0,
             "image_size": None},       # image side in pixels (image datasets; None: the files' own size)
    "model": {"name": "mlp", "width": None, "depth": 2},  # width None: the model's default (DEFAULT_WIDTH)
    "mode": "sparse",                # sparse | dense-masked
    "reuse": "mask",                 # mask (per-task density-d subnetwork) | all (reuse every frozen weight)
    "density": 0.1,                  # per-task density of new weights, or "adaptive"
    "init": "erk",                   # erk | er | uniform | adaptive
    "growth": "gradient",            # random | unfired | gradient | momentum | adaptive
    "prune": "magnitude",
    "drop_fraction": 0.5,
    "drop_fraction_end": 0.005,      # cosine decay from drop_fraction, restarted per task
    "update_every": 20,
    "epochs": 10,
    "batch_size": 64,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    # constant | multistep (lr * gamma at each milestone fraction of the task's epochs) | cosine; per task
    "lr_schedule": {"name": "constant", "milestones": [0.5, 0.75], "gamma": 0.1},
    "seed": 0,
    "out": "runs/continual",
    "checkpoint_every": 0,           # steps between mid-task checkpoints (0: only at task ends)
    "resume": False,
    "compare_dense_masked": False,   # also run mode=dense-masked and report measured speed/memory ratios
    "threads": 0,
    "progress": True,
    "device": "cpu",
    "stop_after_steps": 0,           # testing aid: exit (as if killed) after this many global steps
    "memory_check": True,            # refuse (InsufficientMemoryError) a run estimated not to fit in memory
}

ADAPTIVE_RULES = {
    # init: the paper's rule, ERK at low sparsity (density >= 0.1), uniform at high sparsity (our Split-Digits grid,
    # bench/results/continual/findings.md, does not reproduce the uniform half: ERK leads at 0.05 and 0.01 there)
    "init": lambda d: "erk" if d >= 0.1 else "uniform",
    # growth: gradient at low sparsity; momentum below 0.1, the best or tied-best growth at d=0.05 and 0.01
    # for both inits in bench/results/continual/findings.md (random/unfired fall 3-8 points behind there)
    "growth": lambda d: "gradient" if d >= 0.1 else "momentum",
}


def merge_config(base, override):
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = v
    return out


def make_optimizer(params, cfg):
    name = cfg["name"].lower()
    lr, wd = float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be sgd, adam or adamw, got {cfg['name']!r}")


def _resolve(cfg, density):
    init = ADAPTIVE_RULES["init"](density) if cfg["init"] == "adaptive" else cfg["init"]
    growth = ADAPTIVE_RULES["growth"](density) if cfg["growth"] == "adaptive" else cfg["growth"]
    return init, growth


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


class ContinualTrainer:
    """Runs the whole task sequence; ``run()`` returns the metrics dict (also written to ``out/metrics.json``)."""

    def __init__(self, cfg, tasks=None):
        self.cfg = merge_config(DEFAULTS, cfg)
        from .run import check_config  # the command line's checks (run.py imports this module)

        check_config(self.cfg)  # ConfigError (a ValueError) for a value of the wrong type or out of range
        c = self.cfg
        self.dist, self.rank, self.world = _dist()
        self.device = torch.device(c["device"])
        self.tasks = tasks if tasks is not None else _load(c)
        m = c["model"]
        if m.get("width") is None and m.get("name") in DEFAULT_WIDTH:
            m["width"] = DEFAULT_WIDTH[m["name"]]
        if c["memory_check"] and self.device.type == "cpu":
            check_memory(c, self.tasks)
        torch.manual_seed(c["seed"])
        self.model = build_model(m["name"], self.tasks, mode=c["mode"], width=m.get("width"),
                                 depth=m.get("depth")).to(self.device)
        self.layers = list(self.model.sparse_layers)
        self.own = Ownership(self.model.sparse_layers)
        self.T = len(self.tasks)
        self.acc = [[None] * self.T for _ in range(self.T)]
        self.baseline = None
        self.log = []  # per-task records
        self.task_masks = []  # reuse: mask: per finished task, per layer its mask (Ownership.encode's bits)
        self._final_mask = None  # reuse: mask: the task's final mask, kept from train_task to its freeze
        self.out = c["out"]
        self.ckpt_path = os.path.join(self.out, "checkpoint.pt")

    # -- allocation -----------------------------------------------------------------------------
    def task_density(self, t):
        d = self.cfg["density"]
        if d == "adaptive":
            total, free = self.own.count_free()
            return free / total / (self.T - t)
        d = float(d)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"density must be in [0, 1] or 'adaptive', got {d}")
        return d

    def allocate(self, t, density, init):
        from ..dst import layer_densities

        shapes = [tuple(l.dst_mask().shape) for l in self.layers]
        dens = layer_densities(shapes, density, init=init)
        g = torch.Generator().manual_seed(self.cfg["seed"] * 1000 + t)
        if self.cfg["reuse"] == "mask":
            return self._allocate_subnetwork(dens, g)
        for i, (l, d) in enumerate(zip(self.layers, dens)):
            free = self.own.free(i).flatten()
            n_free = int(free.sum())
            n = min(int(round(d * free.numel())), n_free)
            pick = free.nonzero().squeeze(1)[torch.randperm(n_free, generator=g)[:n]]
            new = torch.zeros_like(free)
            new[pick] = True
            values = torch.zeros(free.numel())
            values[pick] = init_values(l, (n,), g)
            shape = l.dst_mask().shape
            l.allocate(new.view(shape), values.view(shape).to(l.dense_weight().dtype))
        self.layers = list(self.model.sparse_layers)

    def _allocate_subnetwork(self, dens, g):
        """reuse: mask: per layer a mask of round(d_l * numel) positions drawn over all positions; its free
        positions get fresh values, its earlier tasks' positions are reused frozen."""
        for i, (l, d) in enumerate(zip(self.layers, dens)):
            owned = ~self.own.free(i).flatten()
            pick = torch.randperm(owned.numel(), generator=g)[:int(round(d * owned.numel()))]
            task = torch.zeros_like(owned)
            task[pick] = True
            new = task & ~owned
            values = torch.zeros(owned.numel())
            values[new] = init_values(l, (int(new.sum()),), g)
            shape = l.dst_mask().shape
            l.allocate(new.view(shape), values.view(shape).to(l.dense_weight().dtype), reused=(task & owned).view(shape),
                       owned=self.own.dense_index(i))
        self.layers = list(self.model.sparse_layers)

    def _select_task_mask(self, k):
        """reuse: mask, between tasks: every trunk layer computes over task k's final mask alone."""
        for i, (l, bits) in enumerate(zip(self.layers, self.task_masks[k])):
            shape = l.dst_mask().shape
            mask = self.own.decode(i, k, bits).view(shape)
            l.allocate(torch.zeros_like(mask), torch.zeros(shape, dtype=l.dense_weight().dtype), reused=mask,
                       owned=self.own.dense_index(i))
        self.layers = list(self.model.sparse_layers)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, j, upto, batch=512):
        """Test accuracy of task j through the trunk view of tasks 0..upto (None: the live weights). Under
        reuse: mask, the view is task min(j, upto)'s own final mask (one kernel call per layer over it), and
        it is left selected."""
        task = self.tasks[j]
        was = self.model.training
        self.model.eval()
        weights = None
        if upto is not None and self.cfg["reuse"] == "mask":
            self._select_task_mask(min(j, upto))
        elif upto is not None:
            weights = [l.dense_weight() * self.own.view(i, upto) for i, l in enumerate(self.layers)]
        correct = 0
        for s in range(0, len(task.y_test), batch):
            x = task.prepare(task.x_test[s:s + batch].to(self.device))
            correct += int((self.model(x, j, weights).argmax(1) == task.y_test[s:s + batch].to(self.device)).sum())
        self.model.train(was)
        return correct / max(1, len(task.y_test))

    # -- one task ----------------------------------------------------------------------------------
    def _steps_per_epoch(self, t):
        n = len(self.tasks[t].y_train)
        return max(1, math.ceil(n / self.cfg["batch_size"]))

    def _batch(self, t, step):
        task, bs = self.tasks[t], self.cfg["batch_size"]
        spe = self._steps_per_epoch(t)
        epoch, k = divmod(step, spe)
        if getattr(self, "_perm_key", None) != (t, epoch):  # one seeded shuffle per (task, epoch)
            g = torch.Generator().manual_seed((self.cfg["seed"] * 1_000_003 + t * 10_007 + epoch) % 2**63)
            self._perm_key, self._perm = (t, epoch), torch.randperm(len(task.y_train), generator=g)
        idx = self._perm[k * bs:(k + 1) * bs]
        idx = idx[self.rank::self.world]
        return task.prepare(task.x_train[idx].to(self.device)), task.y_train[idx].to(self.device)

    def _make_dst(self, optimizer, growth, total_steps):
        from ..dst import DST

        c = self.cfg
        if c["reuse"] == "mask":  # DST over each layer's whole task mask; every position may be dropped or grown
            return DST(torch.nn.ModuleList(subnetwork_dst(l) for l in self.layers), optimizer, density=None,
                       prune=c["prune"], growth=growth, update_every=c["update_every"], end_step=total_steps,
                       drop_fraction=c["drop_fraction"], decay="cosine", final_drop_fraction=c["drop_fraction_end"],
                       seed=c["seed"] * 1000 + 17)
        index = {id(l.dst_module()): i for i, l in enumerate(self.layers)}

        def eligible(name, module):  # never drop or grow a position an earlier task owns
            return self.own.free(index[id(module)])

        return DST(self.model, optimizer, density=None, prune=c["prune"], growth=growth,
                   update_every=c["update_every"], end_step=total_steps, drop_fraction=c["drop_fraction"],
                   decay="cosine", final_drop_fraction=c["drop_fraction_end"], eligible=eligible,
                   seed=c["seed"] * 1000 + 17)

    def _task_setup(self, t):
        c = self.cfg
        density = self.task_density(t)
        init, growth = _resolve(c, density)
        self.model.train()
        params = [l.sparse_parameter for l in self.layers]
        for m in self.model.task_modules(t):
            params += list(m.parameters())
        opt = make_optimizer(params, c["optimizer"])
        total = self._steps_per_epoch(t) * c["epochs"]
        dst = self._make_dst(opt, growth, total)
        return density, init, growth, opt, dst, total

    def _sync_grads(self, params):
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    self.dist.all_reduce(p.grad)
                    p.grad.div_(self.world)

    def train_task(self, t, start_step=0, state=None):
        c = self.cfg
        density, init, growth, opt, dst, total = self._task_setup(t)
        schedule = LRSchedule(c["lr_schedule"], c["optimizer"]["lr"], self._steps_per_epoch(t), c["epochs"])
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            dst.load_state_dict(state["dst"])
        guard = FrozenGuard(self.layers, self.own)
        params = [p for g in opt.param_groups for p in g["params"]]
        rec = state["record"] if state is not None else {"task": t, "density": density, "init": init,
                                                         "growth": growth, "train_seconds": 0.0,
                                                         "train_cpu_seconds": 0.0, "samples": 0,
                                                         "steps": 0}
        rec.setdefault("train_cpu_seconds", 0.0)  # absent in checkpoints written before it was recorded
        bar = _progress(c, total, start_step, f"task {t + 1}/{self.T}", self.rank)
        for step in range(start_step, total):
            t0, c0 = time.perf_counter(), time.thread_time()
            schedule.apply(opt, step)
            x, y = self._batch(t, step)
            loss = F.cross_entropy(self.model(x, t), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # drop the step's graph now: under reuse: mask a DST update may change the trainable count, and a
            # live graph would keep the values' gradient accumulator (with the old shape) for the next step
            loss = loss.detach()
            self._sync_grads(params)
            guard.zero_grads()
            guard.step(opt)
            if dst.step() is not None:
                guard.refresh()
            rec["train_seconds"] += time.perf_counter() - t0
            rec["train_cpu_seconds"] += time.thread_time() - c0
            rec["samples"] += len(y) * self.world
            rec["steps"] += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # redrawn at the bar's own interval
            if c["checkpoint_every"] and (step + 1) % c["checkpoint_every"] == 0 and step + 1 < total:
                self.save(t, step + 1, {"optimizer": opt.state_dict(), "dst": dst.state_dict(), "record": rec})
            if c["stop_after_steps"] and self.global_step >= c["stop_after_steps"]:
                raise SystemExit(f"stop_after_steps={c['stop_after_steps']} reached (testing aid)")
        if bar is not None:
            bar.close()
        rec["state_bytes"] = M.trunk_state_bytes(self.layers, opt, self.own, self.task_masks, guard, dst)
        rec["owner_bytes"] = rec["state_bytes"]["owner"]
        rec["throughput"] = rec["samples"] / rec["train_seconds"] if rec["train_seconds"] else None
        rec["dst_updates"] = len(dst.history)  # the engine state (history included) survives resume
        masks = [l.dst_mask() for l in self.layers]
        size = sum(m.numel() for m in masks)
        inside = sum(int(m.sum()) for m in masks)
        reused = sum(int((m & ~self.own.free(i)).sum()) for i, m in enumerate(masks))
        rec["subnetwork_density"] = inside / size if size else 0.0
        rec["reused_fraction"] = reused / inside if inside else 0.0
        if c["reuse"] == "mask":  # encoded once the task is frozen (run)
            self._final_mask = masks
        rec["positions_changed"] = sum(sum(h["changed"].values()) for h in dst.history)
        rec["dispatch"] = _dispatch_choices(self.model)  # before freeze: it replaces the trunk's inner layers
        dst.remove()
        return rec

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, task, step, task_state):
        if self.rank != 0:
            return
        stored = [l.dst_mask() | ~self.own.free(i) for i, l in enumerate(self.layers)]
        trunk = [{"values": l.stored_weight().detach()[m], "mask": m} for l, m in zip(self.layers, stored)]
        current = [_mask_keys(l.dst_mask()) for l in self.layers] if task_state is not None else None
        rest = {k: v for k, v in self.model.state_dict().items() if not k.startswith("sparse_layers.")}
        save_checkpoint(self.ckpt_path, {
            "config": json.dumps(self.cfg, default=str), "task": task, "step": step, "global_step": self.global_step,
            "trunk": trunk, "model": rest, "owner": self.own.owner,
            "acc": json.dumps(self.acc), "baseline": json.dumps(self.baseline), "log": json.dumps(self.log),
            "task_masks": self.task_mask_keys(), "task_mask": current,
            "task_state": task_state, "rng": torch.get_rng_state()})

    def load(self):
        s = load_checkpoint(self.ckpt_path)
        current = s.get("task_mask") if self.cfg["reuse"] == "mask" else None
        for i, (l, tr, owner) in enumerate(zip(self.layers, s["trunk"], s["owner"])):
            w = torch.zeros(tr["mask"].shape, dtype=tr["values"].dtype)
            w[tr["mask"]] = tr["values"]
            owner = self.own.load(i, owner)
            reused = None
            if current is not None:  # mid-task: the task mask's earlier-task positions are read, not trained
                reused = torch.zeros(owner.numel(), dtype=torch.bool)
                reused[current[i].long()] = True
                reused = reused.view(owner.shape) & (owner != 0)
            l.load_split(w, tr["mask"], owner, reused)
        # int32/int64 flat positions (what save writes), or already Ownership.encode's packed uint8 bits
        self.task_masks = [[m if m.dtype == torch.uint8 else self.own.encode(i, k, m) for i, m in enumerate(masks)]
                           for k, masks in enumerate(s.get("task_masks", []))]
        self.layers = list(self.model.sparse_layers)
        missing, unexpected = self.model.load_state_dict(s["model"], strict=False)
        if unexpected or any(not k.startswith("sparse_layers.") for k in missing):
            raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
        self.acc, self.baseline, self.log = json.loads(s["acc"]), json.loads(s["baseline"]), json.loads(s["log"])
        torch.set_rng_state(s["rng"])
        self.global_step = s["global_step"]
        return s["task"], s["step"], s["task_state"]

    # -- the run ---------------------------------------------------------------------------------
    def run(self):
        c = self.cfg
        if c["threads"]:
            torch.set_num_threads(int(c["threads"]))
        os.makedirs(self.out, exist_ok=True)
        if self.rank == 0:  # temp files of writes a kill interrupted (sparsecl.io.write_bytes_atomic)
            for stale in glob.glob(os.path.join(glob.escape(self.out), ".tmp-*")):
                os.unlink(stale)
        self.global_step = 0
        t0, step0, state = 0, 0, None
        if c["resume"] and os.path.exists(self.ckpt_path):
            t0, step0, state = self.load()
            if state is None:  # checkpoint written at a task end: continue with the next task
                t0, step0 = t0 + 1, 0
        for t in range(t0, self.T):
            if step0 == 0:
                density = self.task_density(t)
                self.allocate(t, density, _resolve(c, density)[0])
                if self.baseline is None:
                    # FWT baseline: every task through the randomly initialised first subnetwork + its random head
                    self.baseline = [self.evaluate(j, None) for j in range(self.T)]
            rec = self.train_task(t, step0, state)
            step0, state = 0, None
            self.own.freeze(self.layers, t)
            if c["reuse"] == "mask":
                self.task_masks.append([self.own.encode(i, t, m) for i, m in enumerate(self._final_mask)])
                self._final_mask = None
            rec["capacity"] = self.own.capacity(self.layers)
            rec["peak_rss_bytes"] = M.peak_rss_bytes()
            rec["peak_device_bytes"] = M.peak_device_bytes(self.device)
            for j in range(self.T):
                self.acc[t][j] = self.evaluate(j, min(j, t))
            rec["acc_row"] = self.acc[t]
            self.log.append(rec)
            if self.rank == 0:  # before the checkpoint: a resume from it finds the row already written
                _write_csv(os.path.join(self.out, "log.csv"), self.log)
            self.save(t, 0, None)
        return self.finish()

    def task_mask_keys(self):
        """Per finished task, per layer its mask's sorted flat positions (int32 where they fit)."""
        return [[_mask_keys(self.own.decode(i, k, bits)) for i, bits in enumerate(masks)]
                for k, masks in enumerate(self.task_masks)]

    def masks(self):
        """Per trunk layer, the positions holding a weight (every task's and the current trainable ones),
        whichever task mask is selected."""
        return [l.dst_mask() | ~self.own.free(i) for i, l in enumerate(self.layers)]

    def finish(self):
        res = {"config": self.cfg, "acc_matrix": self.acc, "baseline_acc": self.baseline,
               **M.summary(self.acc, self.baseline),
               "per_task_seconds": [r["train_seconds"] for r in self.log],
               "throughput_samples_per_s": [r["throughput"] for r in self.log],
               "train_seconds": sum(r["train_seconds"] for r in self.log),
               "peak_rss_bytes": max(r["peak_rss_bytes"] for r in self.log),
               "peak_device_bytes": self.log[-1]["peak_device_bytes"],
               "capacity_per_layer": [r["capacity"] for r in self.log],
               "state_bytes_per_task": [r["state_bytes"] for r in self.log],
               "owner_index_bytes": self.own.nbytes(),
               "mask_bytes": sum(k.numel() * k.element_size() for masks in self.task_masks for k in masks),
               "tasks": self.log, "world_size": self.world}
        return res


def _mask_keys(mask):
    """A bool mask as its sorted flat positions, int32 where they fit (the checkpoints' form of a task mask)."""
    keys = mask.flatten().nonzero().squeeze(1)
    return keys.to(torch.int32 if mask.numel() <= 2**31 - 1 else torch.int64).cpu()


def _load(c):
    from .data import load_tasks

    d = c["data"]
    return load_tasks(d["name"], n_tasks=d.get("n_tasks"), root=d.get("root"), seed=d.get("seed", 0),
                      size=d.get("image_size"))


def _dispatch_choices(model):
    """{layer name: {"forward", "dx", "dw": "sparse" | "dense", "density", "source"}} of the layers that ran
    through sparsecl.dispatch in this task (its calibration timings stay out: they differ between runs)."""
    return {name: {**r["choice"], "density": r["density"], "source": r["source"]}
            for name, r in dispatch_report(model).items() if r is not None}


def _progress(c, total, start, desc, rank):
    if not c["progress"] or rank != 0:
        return None
    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True)
    # a log file or a CI console: a plain-text state every 30 s, and the final one kept
    return tqdm(total=total, initial=start, desc=desc, file=sys.stderr, mininterval=30, ascii=True, ncols=100)


def _write_csv(path, log):
    """Rewrite log.csv from all task records (atomically: a kill never leaves a torn or missing row)."""
    cols = ["task", "density", "init", "growth", "steps", "samples", "train_seconds", "throughput", "peak_rss_bytes"]
    lines = [",".join(cols + ["acc_row", "capacity"])]
    for rec in log:
        lines.append(",".join(str(rec[k]) for k in cols) + ',"'
                     + " ".join(f"{a:.4f}" for a in rec["acc_row"] if a is not None)
                     + '","' + " ".join(f"{x:.4f}" for x in rec["capacity"]) + '"')
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
