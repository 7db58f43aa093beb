"""Up-front memory check of a continual configuration: refuse, with a message, what would not fit.

``estimate_bytes`` estimates the run's peak host memory before anything large is allocated:
  * activations: the model is built on the meta device (no memory) and its training forward is traced at
    batch 3 and 5; every op output counts (autograd keeps most of them for backward), plus two copies of
    the largest one for the gradients in flight during backward, per sample times the batch size;
  * trunk state: per weight position (dense-masked: weight, gradient, optimizer slots, mask, ownership; both
    modes: the DST engine's ever-active mask, its update's dense gradient and scores, and under ``reuse: all``
    the evaluation view's dense weights; ``reuse: mask`` evaluates through each task's mask, no dense view),
    per frozen position (at most ``min(1, tasks * density)`` of them; dense-masked: the guard's index;
    sparse: the frozen store's value, 16- or 32-bit column and owner byte), and in sparse mode per union entry
    (its index, transposed index and value buffer; ``density`` of the positions under ``reuse: mask``, up to
    ``min(1, tasks * density)`` under ``reuse: all``) and per trainable entry (value, gradient, optimizer
    slots, rows/columns, union position);
  * the rest of the model (heads, per-task norms) with gradients and optimizer slots.
The sum times ``SAFETY`` must fit in the available memory: /proc/meminfo MemAvailable, or less under a
cgroup (v2 or v1) memory limit. Otherwise ``check_memory`` raises ``InsufficientMemoryError``.
"""
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import UserError

SAFETY = 1.5
GiB = 2 ** 30

# bytes per trunk position / entry (fp32 values, int32 indices); see the module docstring. Dense-masked: weight
# 4 + grad 4 + weight*mask 4 + mask 1 + owner 1; both modes: DST ever-active mask 1 + dense grad 4 + prune/grow
# scores 8 + evaluation view 8 + masks built from layouts 2; sparse: the dense weight of a layer that
# sparsecl.dispatch runs densely 4.
_PER_POSITION = {"dense-masked": 14 + 23, "sparse": 23 + 4}
_EVAL_VIEW = 8  # in _PER_POSITION; reuse: mask builds no evaluation view
# per frozen position: dense-masked, FrozenGuard's int64 index 8; sparse, the frozen store's value 4 + owner 1
# + column 2 (up to 65,536 columns of the 2-D view) or 4
_PER_FROZEN = {"dense-masked": 8, "sparse": 5}
# sparse: a union entry holds index 4 + transposed index 8 + value 4, and in passing the transposed-order values
# of a dX 4 and the rows an index merge derives 4; a trainable entry its value 4, gradient 4, rows/cols 8 and
# union position 4, plus 4 per optimizer slot
_PER_UNION_ENTRY, _PER_TRAINABLE_ENTRY = 24, 20


class InsufficientMemoryError(UserError, ValueError):
    """A configuration needs more memory than is available (raised before training starts; the command line
    prints it as one line and exits with status 2)."""


def available_bytes():
    """MemAvailable from /proc/meminfo, lowered to the cgroup's free room when a memory limit is set; None
    when neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:  # "max" / a huge number: no limit
            room = max(0, int(limit) - usage)
            avail = room if avail is None else min(avail, room)
        break
    return avail


class _OutputBytes(TorchDispatchMode):
    """Sums the bytes of every new (non-view, not in-place) op output; remembers the largest batch-led one
    (first dim ``batch``)."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.total, self.largest = batch, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t._base is None and id(t) not in inputs:
                n = t.numel() * t.element_size()
                self.total += n
                if t.dim() and t.shape[0] == self.batch:
                    self.largest = max(self.largest, n)
        return out


def estimate_bytes(cfg, tasks):
    """Estimated peak bytes of a run (see the module docstring): {"activations", "trunk", "other", "total"}."""
    from .models import build_model

    m = cfg["model"]
    with torch.device("meta"):
        model = build_model(m["name"], tasks, mode="dense-masked", width=m.get("width"), depth=m.get("depth"))
    sample = tasks[0].prepare(tasks[0].x_train[:1])
    meters = []
    for n in (3, 5):  # per sample: outputs that do not scale with the batch (weight * mask) cancel
        meters.append(_OutputBytes(n))
        with meters[-1]:
            model(torch.empty(n, *sample.shape[1:], dtype=sample.dtype, device="meta"), 0).sum()
    per_sample = (meters[1].total - meters[0].total) / 2
    largest = meters[1].largest / 5
    activations = math.ceil((per_sample + 2 * largest) * int(cfg["batch_size"]))

    opt = cfg["optimizer"]
    name = str(opt.get("name", "sgd")).lower()
    slots = 2 if name in ("adam", "adamw") else (1 if float(opt.get("momentum", 0.0) or 0.0) else 0)
    trunk = {id(p) for l in model.sparse_layers for p in l.parameters()}
    other = sum(p.numel() * p.element_size() * (2 + slots) for p in model.parameters() if id(p) not in trunk)
    mode = cfg["mode"]
    d = cfg["density"]
    d = 1.0 / max(1, len(tasks)) if d == "adaptive" else float(d)
    frozen = min(1.0, len(tasks) * d)  # the most positions the tasks can own
    union = d if cfg.get("reuse", "mask") == "mask" else frozen
    trunk_bytes = 0
    no_view = _EVAL_VIEW if cfg.get("reuse", "mask") == "mask" else 0
    for l in model.sparse_layers:
        n, cols = l.dst_mask().numel(), l.dst_mask().shape[1]
        if mode == "dense-masked" or getattr(l, "groups", 1) > 1:  # depthwise convs stay dense-masked
            per_position = _PER_POSITION["dense-masked"] - no_view + 4 * slots
            trunk_bytes += n * per_position + math.ceil(n * frozen) * _PER_FROZEN["dense-masked"]
            continue
        per_frozen = _PER_FROZEN["sparse"] + (2 if cols <= 2 ** 16 else 4)
        trunk_bytes += n * (_PER_POSITION["sparse"] - no_view) + math.ceil(n * frozen) * per_frozen
        trunk_bytes += math.ceil(n * union) * _PER_UNION_ENTRY + math.ceil(n * d) * (_PER_TRAINABLE_ENTRY + 4 * slots)
    total = activations + trunk_bytes + other
    return {"activations": activations, "trunk": trunk_bytes, "other": other, "total": total}


def check_memory(cfg, tasks, available=None):
    """Raise InsufficientMemoryError when ``estimate_bytes(cfg, tasks)["total"] * SAFETY`` exceeds the available
    memory (``available_bytes()`` unless given). Returns the estimate."""
    est = estimate_bytes(cfg, tasks)
    avail = available_bytes() if available is None else available
    need = est["total"] * SAFETY
    if avail is not None and need > avail:
        m = cfg["model"]
        raise InsufficientMemoryError(
            f"this configuration needs about {need / GiB:.1f} GiB ({est['trunk'] / GiB:.1f} GiB trunk weights and "
            f"state, {est['activations'] / GiB:.1f} GiB activations at batch size {cfg['batch_size']}, "
            f"{est['other'] / GiB:.2f} GiB heads and norms, times a safety factor {SAFETY}) but only "
            f"{avail / GiB:.1f} GiB is available; lower model.width (now {m.get('width')}, model "
            f"{m['name']!r}) or batch_size, or use fewer tasks or a lower density")
    return est
