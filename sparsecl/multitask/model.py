"""Controllable multi-task network: a shared slimmable ResNet-style encoder and one slimmable decoder per task.

A width configuration is ``Config(encoder, decoders)``: one width multiplier for the whole encoder and one per
task decoder, each from the model's width grid (default (0.25, 0.5, 0.75, 1.0)). ``model.using(config)``
applies it through ``sparsecl.nn.width`` (module-name patterns ``encoder.*`` and ``decoders.<task>.*``).
A layer at width w has ``channels(c, w) = max(1, floor(c * w + 0.5))`` output channels; its input channels are
whatever the previous layer produced. The stem's input (RGB) and each decoder's output (classes) are fixed.

Encoder (input H x W, base channels (c0, c1, c2)):
    stem 3x3 conv 3->c0, BN, ReLU                                  H
    block(c0->c0, stride 1), block(c0->c1, stride 2), block(c1->c2, stride 2)   H, H/2, H/4
    block = 3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut (1x1 conv + BN when the shape changes), ReLU
Dense decoder (d channels): 3x3 conv c2->d, BN, ReLU at H/4; upsample to H/2; 3x3 conv d->d, BN, ReLU;
    upsample to H; 1x1 conv d->out. Its BNs are switched per (encoder width, decoder width). Classification decoder: global average pool, linear c2->d, ReLU, linear d->out.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as snn

DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)


def channels(c, w):
    """Active channels of a layer with ``c`` channels at width multiplier ``w`` (sparsecl.nn's rounding rule)."""
    return snn.active_channels(w, c)


@dataclass(frozen=True)
class Config:
    """A width configuration: encoder width and ((task, decoder width), ...) in the model's task order."""
    encoder: float
    decoders: tuple

    @classmethod
    def make(cls, encoder, decoders):
        items = decoders.items() if isinstance(decoders, dict) else decoders
        return cls(float(encoder), tuple((str(t), float(w)) for t, w in items))

    @property
    def dec(self):
        return dict(self.decoders)

    def key(self):
        """Short string id, e.g. ``e0.5|seg1|depth0.25|edge0.5``."""
        return "|".join([f"e{self.encoder:g}"] + [f"{t}{w:g}" for t, w in self.decoders])

    def to_json(self):
        return {"encoder": self.encoder, "decoders": dict(self.decoders)}


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, widths):
        super().__init__()
        self.conv1 = snn.SlimmableConv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = snn.SwitchableBatchNorm2d(cout, widths)
        self.conv2 = snn.SlimmableConv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = snn.SwitchableBatchNorm2d(cout, widths)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(snn.SlimmableConv2d(cin, cout, 1, stride=stride, bias=False),
                                          snn.SwitchableBatchNorm2d(cout, widths))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Encoder(nn.Module):
    def __init__(self, chans, widths):
        super().__init__()
        c0, c1, c2 = chans
        self.stem = snn.SlimmableConv2d(3, c0, 3, padding=1, bias=False, slim_in=False)
        self.stem_bn = snn.SwitchableBatchNorm2d(c0, widths)
        self.layer1 = _Block(c0, c0, 1, widths)
        self.layer2 = _Block(c0, c1, 2, widths)
        self.layer3 = _Block(c1, c2, 2, widths)

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(F.relu(self.stem_bn(self.stem(x))))))


class DenseDecoder(nn.Module):
    """Decoder BatchNorms keep statistics and affine parameters per (encoder width, decoder width):
    ``bn1[k]`` is a SwitchableBatchNorm2d (one BN per decoder width) for encoder width ``widths[k]``, picked
    from the feature channel count. The decoder's activations depend on how many encoder channels it sums
    over, so statistics shared across encoder widths are wrong for all but one of them (at deployment a wider
    decoder then scored *worse* on the narrowest encoder)."""

    def __init__(self, cin, d, out, widths):
        super().__init__()
        self.enc_channels = tuple(channels(cin, w) for w in widths)
        self.conv1 = snn.SlimmableConv2d(cin, d, 3, padding=1, bias=False)
        self.bn1 = nn.ModuleList(snn.SwitchableBatchNorm2d(d, widths) for _ in widths)
        self.conv2 = snn.SlimmableConv2d(d, d, 3, padding=1, bias=False)
        self.bn2 = nn.ModuleList(snn.SwitchableBatchNorm2d(d, widths) for _ in widths)
        self.head = snn.SlimmableConv2d(d, out, 1, slim_out=False)

    def forward(self, f, hw):
        if f.shape[1] not in self.enc_channels:
            raise ValueError(f"decoder expects encoder features with one of {self.enc_channels} channels, "
                             f"got {f.shape[1]}")
        k = self.enc_channels.index(f.shape[1])
        y = F.relu(self.bn1[k](self.conv1(f)))
        y = F.interpolate(y, size=(math.ceil(hw[0] / 2), math.ceil(hw[1] / 2)), mode="bilinear", align_corners=False)
        y = F.relu(self.bn2[k](self.conv2(y)))
        y = F.interpolate(y, size=tuple(hw), mode="bilinear", align_corners=False)
        return self.head(y)


class ClsDecoder(nn.Module):
    def __init__(self, cin, d, out):
        super().__init__()
        self.fc1 = snn.SlimmableLinear(cin, d)
        self.head = snn.SlimmableLinear(d, out, slim_out=False)

    def forward(self, f, hw):
        return self.head(F.relu(self.fc1(f.mean(dim=(2, 3)))))


class MultiTaskNet(nn.Module):
    """Shared slimmable encoder + slimmable decoder per task. ``forward(x) -> (features, {task: output})``.

    ``tasks``: {name: TaskSpec} (``kind`` and output ``channels``). ``widths``: the width grid.
    """

    def __init__(self, tasks, enc_channels=(16, 32, 64), dec_channels=32, widths=DEFAULT_WIDTHS):
        super().__init__()
        widths = tuple(sorted(float(w) for w in widths))
        if not widths or widths[0] <= 0 or widths[-1] != 1.0:
            raise ValueError(f"width grid must be positive and end at 1.0, got {widths}")
        if len(enc_channels) != 3 or min(enc_channels) < 1 or dec_channels < 1:
            raise ValueError(f"enc_channels must be 3 positive ints and dec_channels positive, got "
                             f"{enc_channels}, {dec_channels}")
        if not tasks:
            raise ValueError("need at least one task")
        self.tasks = dict(tasks)
        self.widths = widths
        self.enc_channels, self.dec_channels = tuple(int(c) for c in enc_channels), int(dec_channels)
        self.encoder = Encoder(self.enc_channels, widths)
        c2 = self.enc_channels[2]
        self.decoders = nn.ModuleDict({
            name: (DenseDecoder(c2, self.dec_channels, spec.channels, widths) if spec.dense
                   else ClsDecoder(c2, self.dec_channels, spec.channels))
            for name, spec in self.tasks.items()})

    @property
    def task_names(self):
        return tuple(self.tasks)

    def forward(self, x, tasks=None):
        f = self.encoder(x)
        return f, self.decode(f, x.shape[-2:], tasks)

    def decode(self, f, hw, tasks=None):
        return {t: self.decoders[t](f, hw) for t in (tasks or self.tasks)}

    # ---- configurations
    def config(self, encoder, decoders=None):
        """Config with encoder width ``encoder`` and decoder widths ``decoders`` (dict, or one width for all)."""
        if decoders is None or isinstance(decoders, (int, float)):
            decoders = {t: encoder if decoders is None else decoders for t in self.tasks}
        if set(decoders) != set(self.tasks):
            raise ValueError(f"decoder widths must name exactly the tasks {list(self.tasks)}, got {list(decoders)}")
        cfg = Config.make(encoder, [(t, decoders[t]) for t in self.tasks])
        bad = [w for w in (cfg.encoder, *cfg.dec.values()) if w not in self.widths]
        if bad:
            raise ValueError(f"widths {bad} are not in the grid {self.widths}")
        return cfg

    def full_config(self):
        return self.config(1.0)

    def all_configs(self):
        import itertools

        return [self.config(e, dict(zip(self.tasks, ds)))
                for e in self.widths for ds in itertools.product(self.widths, repeat=len(self.tasks))]

    def width_map(self, cfg):
        """The sparsecl.nn.width mapping for ``cfg``: {module pattern: width}."""
        m = {"encoder.*": cfg.encoder}
        m.update({f"decoders.{t}.*": w for t, w in cfg.decoders})
        return m

    def using(self, cfg):
        """Context manager: run the model at configuration ``cfg`` (a Config, or one width for everything)."""
        if isinstance(cfg, (int, float)):
            cfg = self.config(float(cfg))
        return snn.width(self, self.width_map(cfg))

    @contextlib.contextmanager
    def encoder_width(self, w):
        with snn.width(self, {"encoder.*": float(w)}):
            yield

    @contextlib.contextmanager
    def decoder_width(self, task, w):
        with snn.width(self, {f"decoders.{task}.*": float(w)}):
            yield

    # ---- analytic description for MAC counting
    def layer_specs(self, hw):
        """Every conv/linear layer: dict(name, kind, k (kernel area), cin, cout, in_group, out_group, out_hw).

        ``in_group``/``out_group``: 'encoder', a task name, or None (fixed width). ``out_hw`` = output pixels.
        """
        H, W = hw

        def px(f):
            return math.ceil(H / f) * math.ceil(W / f)

        c0, c1, c2 = self.enc_channels
        specs = [dict(name="encoder.stem", k=9, cin=3, cout=c0, in_group=None, out_group="encoder", out_hw=px(1))]
        for name, cin, cout, f_in, f_out in (("layer1", c0, c0, 1, 1), ("layer2", c0, c1, 1, 2),
                                             ("layer3", c1, c2, 2, 4)):
            specs.append(dict(name=f"encoder.{name}.conv1", k=9, cin=cin, cout=cout, in_group="encoder",
                              out_group="encoder", out_hw=px(f_out)))
            specs.append(dict(name=f"encoder.{name}.conv2", k=9, cin=cout, cout=cout, in_group="encoder",
                              out_group="encoder", out_hw=px(f_out)))
            if getattr(self.encoder, name).shortcut is not None:
                specs.append(dict(name=f"encoder.{name}.shortcut.0", k=1, cin=cin, cout=cout, in_group="encoder",
                                  out_group="encoder", out_hw=px(f_out)))
        d = self.dec_channels
        for t, spec in self.tasks.items():
            if spec.dense:
                specs += [dict(name=f"decoders.{t}.conv1", k=9, cin=c2, cout=d, in_group="encoder", out_group=t,
                               out_hw=px(4)),
                          dict(name=f"decoders.{t}.conv2", k=9, cin=d, cout=d, in_group=t, out_group=t, out_hw=px(2)),
                          dict(name=f"decoders.{t}.head", k=1, cin=d, cout=spec.channels, in_group=t, out_group=None,
                               out_hw=px(1))]
            else:
                specs += [dict(name=f"decoders.{t}.fc1", k=1, cin=c2, cout=d, in_group="encoder", out_group=t,
                               out_hw=1),
                          dict(name=f"decoders.{t}.head", k=1, cin=d, cout=spec.channels, in_group=t, out_group=None,
                               out_hw=1)]
        return specs


def build_model(tasks, cfg=None):
    """MultiTaskNet from a config dict (keys ``enc_channels``, ``dec_channels``, ``widths``)."""
    cfg = cfg or {}
    return MultiTaskNet(tasks, enc_channels=tuple(cfg.get("enc_channels", (16, 32, 64))),
                        dec_channels=int(cfg.get("dec_channels", 32)), widths=tuple(cfg.get("widths", DEFAULT_WIDTHS)))
