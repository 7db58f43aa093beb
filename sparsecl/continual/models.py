"""Multi-head models for task-incremental learning, built from the trunk layers of ``trunk.py``.

Every model has a shared trunk of sparse layers (``model.sparse_layers``) and, per task, its own head
and its own normalisation parameters, so training task t never touches anything task j < t uses apart
from the trunk weights, which the trainer freezes by ownership.

Per-task normalisation (evaluation never depends on batch composition):
  * MLP: no normalisation layer; each task has its own bias vector after every hidden sparse layer
    (the shared sparse layers carry no bias, since a shared bias would drift across tasks).
  * CNNs: one BatchNorm2d per task and per BN site (``TaskBatchNorm2d``); in eval mode it uses that
    task's running statistics, so a test prediction depends only on the input and the task id.

Widths: each model has its own default (``DEFAULT_WIDTH``): MLP 1024 hidden units, small CNN 32 and
ResNet-18 64 first-stage channels, MobileNetV2 channel multiplier 1.0.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .trunk import make_conv, make_linear


class TaskBatchNorm2d(nn.Module):
    """One BatchNorm2d per task; ``task`` selects which (set by the owning model)."""

    def __init__(self, channels, n_tasks):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(n_tasks))
        self.task = 0

    def forward(self, x):
        return self.bns[self.task](x)


class ContinualModel(nn.Module):
    """Base: ``sparse_layers`` (ModuleList, the shared trunk), ``heads`` (one per task) and per-task norm.

    ``forward(x, task, weights=None)``: with ``weights`` (one dense tensor per trunk layer) the trunk is
    computed functionally from those weights (the trainer's per-task evaluation view).
    """

    def task_modules(self, task):
        """Modules whose parameters belong to ``task`` alone (head, per-task norm/bias)."""
        raise NotImplementedError

    def _trunk(self, i, x, weights):
        layer = self.sparse_layers[i]
        return layer(x) if weights is None else layer.functional(x, weights[i])

    def set_task(self, task):
        for m in self.modules():
            if isinstance(m, TaskBatchNorm2d):
                m.task = task


class MLP(ContinualModel):
    """``in -> [width]*depth -> head_t``, ReLU, a per-task bias after each sparse layer."""

    def __init__(self, in_features, n_classes, n_tasks, width=1024, depth=2, mode="sparse"):
        super().__init__()
        dims = [in_features] + [width] * depth
        self.sparse_layers = nn.ModuleList(make_linear(a, b, mode) for a, b in zip(dims[:-1], dims[1:]))
        self.biases = nn.ModuleList(nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(depth))
                                    for _ in range(n_tasks))
        self.heads = nn.ModuleList(nn.Linear(width, c) for c in n_classes)

    def task_modules(self, task):
        return [self.biases[task], self.heads[task]]

    def forward(self, x, task, weights=None):
        x = x.flatten(1)
        for i in range(len(self.sparse_layers)):
            x = F.relu(self._trunk(i, x, weights) + self.biases[task][i])
        return self.heads[task](x)


class SmallCNN(ContinualModel):
    """Three 3x3 conv blocks (channels c, 2c, 4c; BN per task; ReLU; 2x2 max-pool) and a per-task linear head."""

    def __init__(self, in_channels, n_classes, n_tasks, width=32, mode="sparse"):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        self.sparse_layers = nn.ModuleList(make_conv(a, b, 3, padding=1, mode=mode) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(TaskBatchNorm2d(c, n_tasks) for c in chans[1:])
        self.heads = nn.ModuleList(nn.Linear(chans[-1], c) for c in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def forward(self, x, task, weights=None):
        self.set_task(task)
        for i in range(len(self.sparse_layers)):
            x = F.max_pool2d(F.relu(self.norms[i](self._trunk(i, x, weights))), 2)
        return self.heads[task](x.mean((2, 3)))


class ResNet18(ContinualModel):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); ``width`` = first stage channels."""

    def __init__(self, in_channels, n_classes, n_tasks, width=64, mode="sparse"):
        super().__init__()
        convs, norms = [], []

        def conv(a, b, k, s):
            convs.append(make_conv(a, b, k, stride=s, padding=k // 2, mode=mode))
            norms.append(TaskBatchNorm2d(b, n_tasks))
            return len(convs) - 1

        self.stem = conv(in_channels, width, 3, 1)
        self.blocks = []
        c = width
        for stage, mult in enumerate((1, 2, 4, 8)):
            out = width * mult
            for b in range(2):
                s = 2 if stage > 0 and b == 0 else 1
                c1, c2 = conv(c, out, 3, s), conv(out, out, 3, 1)
                sc = conv(c, out, 1, s) if (s != 1 or c != out) else None
                self.blocks.append((c1, c2, sc))
                c = out
        self.sparse_layers = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList(nn.Linear(c, n) for n in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def _cbn(self, i, x, weights):
        return self.norms[i](self._trunk(i, x, weights))

    def forward(self, x, task, weights=None):
        self.set_task(task)
        x = F.relu(self._cbn(self.stem, x, weights))
        for c1, c2, sc in self.blocks:
            h = F.relu(self._cbn(c1, x, weights))
            h = self._cbn(c2, h, weights)
            x = F.relu(h + (x if sc is None else self._cbn(sc, x, weights)))
        return self.heads[task](x.mean((2, 3)))


class MobileNetV2(ContinualModel):
    """MobileNetV2 (CIFAR variant: stride-1 stem, strides at stages 3, 4, 6); ``width`` multiplies channels."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, in_channels, n_classes, n_tasks, width=1.0, mode="sparse"):
        super().__init__()
        convs, norms = [], []

        def conv(a, b, k, s=1, groups=1):
            convs.append(make_conv(a, b, k, stride=s, padding=k // 2, groups=groups, mode=mode))
            norms.append(TaskBatchNorm2d(b, n_tasks))
            return len(convs) - 1

        ch = lambda c: max(8, int(round(c * width / 8)) * 8)  # noqa: E731
        c = ch(32)
        self.stem = conv(in_channels, c, 3)
        self.blocks = []
        for t, out, n, s in self.CFG:
            out = ch(out)
            for i in range(n):
                hidden = c * t
                ex = conv(c, hidden, 1) if t != 1 else None
                dw = conv(hidden, hidden, 3, s if i == 0 else 1, groups=hidden)
                pw = conv(hidden, out, 1)
                self.blocks.append((ex, dw, pw, (s if i == 0 else 1) == 1 and c == out))
                c = out
        self.last = conv(c, ch(1280) if width > 1.0 else 1280, 1)
        self.sparse_layers = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList(nn.Linear(convs[self.last].out_channels, n) for n in n_classes)

    def task_modules(self, task):
        return [n.bns[task] for n in self.norms] + [self.heads[task]]

    def _cbn(self, i, x, weights):
        return self.norms[i](self._trunk(i, x, weights))

    def forward(self, x, task, weights=None):
        self.set_task(task)
        x = F.relu6(self._cbn(self.stem, x, weights))
        for ex, dw, pw, residual in self.blocks:
            h = x if ex is None else F.relu6(self._cbn(ex, x, weights))
            h = self._cbn(pw, F.relu6(self._cbn(dw, h, weights)), weights)
            x = x + h if residual else h
        x = F.relu6(self._cbn(self.last, x, weights))
        return self.heads[task](x.mean((2, 3)))


MODELS = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18, "mobilenetv2": MobileNetV2}
# MLP hidden units; small CNN / ResNet-18 first-stage channels; MobileNetV2 channel multiplier
DEFAULT_WIDTH = {"mlp": 1024, "cnn": 32, "resnet18": 64, "mobilenetv2": 1.0}


def build_model(name, tasks, mode="sparse", width=None, depth=None):
    """Model ``name`` for a task list (input shape and classes per task taken from the data); ``width`` None
    takes the model's own default (``DEFAULT_WIDTH``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    x = tasks[0].x_train
    n_classes = [t.n_classes for t in tasks]
    kw = {"mode": mode, "width": DEFAULT_WIDTH[name] if width is None else width}
    if name == "mlp":
        if depth is not None:
            kw["depth"] = depth
        return MLP(math.prod(x.shape[1:]), n_classes, len(tasks), **kw)
    if x.dim() != 4:
        raise ValueError(f"model {name!r} needs image inputs [N, C, H, W], got {tuple(x.shape)}")
    return MODELS[name](x.shape[1], n_classes, len(tasks), **kw)


def init_values(layer, shape, generator):
    """Fresh values for newly allocated positions: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear/Conv2d."""
    fan_in = layer.dst_mask().shape[1]
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound
