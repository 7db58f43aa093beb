"""Slimmable layers: one full-width weight, run at any width by slicing ``W[:o, :i]``.

* ``SlimmableLinear`` / ``SlimmableConv2d``: the out-width is the module's ``active_out`` (set by
  ``width(model, config)``); the in-width is always taken from the input. Optional bool mask
  (``weight_mask`` buffer, W's shape) makes them sparse too: sparsity and width compose.
* ``SwitchableBatchNorm2d``: one BatchNorm (statistics and affine) per width, picked by the
  input's channel count; ``recalibrate_bn`` re-estimates their statistics.
* ``width(model, config)``: context manager setting the out-widths, restored on exit (module state
  only, no global flags). ``count_macs`` counts multiply-accumulates of a forward pass.

Channels at width w of a layer with n channels: ``max(1, min(n, floor(w * n + 0.5)))``.
"""
import contextlib
import fnmatch
import math
from collections.abc import Mapping

import torch
from torch import nn

from ..ops import slimmable_conv2d, slimmable_linear

__all__ = ["SlimmableLinear", "SlimmableConv2d", "SwitchableBatchNorm2d", "width", "recalibrate_bn",
           "count_macs", "active_channels"]


def active_channels(w, n):
    """Channels kept at width multiplier ``w`` (0 < w <= 1) of ``n`` channels: rounded, at least 1."""
    if not (isinstance(w, (int, float)) and 0.0 < w <= 1.0):
        raise ValueError(f"width must be a number in (0, 1], got {w!r}")
    return max(1, min(n, math.floor(w * n + 0.5)))


def _check_mask(mask, shape):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(shape)}, got "
                         f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}")
    return mask


class _Slimmable(nn.Module):
    """Shared parts: active out-width, mask, weight accessors."""

    def _init_slim(self, n_in, n_out, slim_in, slim_out, mask):
        self.slim_in, self.slim_out = bool(slim_in), bool(slim_out)
        self.active_out = n_out
        self.last_in = n_in
        self.register_buffer("weight_mask", _check_mask(mask, self.weight.shape))

    def set_width(self, w):
        """Set the active out-width from multiplier ``w`` (ignored, i.e. full, when ``slim_out`` is False)."""
        n = self.weight.shape[0]
        self.active_out = active_channels(w, n) if self.slim_out else n

    def set_mask(self, mask):
        """Make the layer sparse with bool ``mask`` (W's shape), or dense again with None."""
        mask = _check_mask(mask, self.weight.shape)
        self.weight_mask = None if mask is None else mask.to(self.weight.device)

    def mask(self):
        """Bool mask of W's full shape (all True for a dense layer)."""
        if self.weight_mask is not None:
            return self.weight_mask
        return torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device)

    def dense_weight(self):
        """The full-width effective weight (``W * mask`` when sparse)."""
        return self.weight if self.weight_mask is None else self.weight * self.weight_mask

    def active_weight(self, in_width=None):
        """The active slice ``W[:active_out, :i]`` (a view; masked when sparse); i defaults to the last input's."""
        i = self.last_in if in_width is None else int(in_width)
        w = self.weight[:self.active_out, :i]
        return w if self.weight_mask is None else w * self.weight_mask[:self.active_out, :i]

    def _in_width(self, i):
        n = self.weight.shape[1]
        if i > n or (not self.slim_in and i != n):
            need = f"at most {n}" if self.slim_in else f"exactly {n} (slim_in=False)"
            raise ValueError(f"{type(self).__name__}: input has {i} features/channels, expected {need}")
        self.last_in = i
        return i

    def _active_nnz(self, i):
        o = self.active_out
        if self.weight_mask is None:
            return o * i * math.prod(self.weight.shape[2:])
        return int(self.weight_mask[:o, :i].sum())


class SlimmableLinear(_Slimmable):
    """``y = x[..., :i] @ W[:o, :i].T + b[:o]``: i from the input, o = ``active_out``.

    weight: [out_features, in_features] Parameter, bias: [out_features] Parameter or None.
    Gradients of the slice go straight into ``weight.grad[:o, :i]`` (see sparsecl.ops.slimmable).
    """

    def __init__(self, in_features, out_features, bias=True, *, slim_in=True, slim_out=True, mask=None,
                 device=None, dtype=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self._init_slim(self.in_features, self.out_features, slim_in, slim_out, mask)
        self.reset_parameters()

    reset_parameters = nn.Linear.reset_parameters

    def forward(self, x):
        self._in_width(x.shape[-1])
        return slimmable_linear(x, self.weight, self.bias, self.active_out, mask=self.weight_mask)

    def macs(self, input_shape):
        """Multiply-accumulates of one forward on an input of ``input_shape`` at the active width
        (counting only mask-active weights when sparse)."""
        i = int(input_shape[-1])
        return math.prod(input_shape[:-1]) * self._active_nnz(i)

    @classmethod
    def from_dense(cls, linear, *, slim_in=True, slim_out=True, mask=None):
        """A SlimmableLinear with ``linear``'s weight and bias (copied) as its full width."""
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, slim_in=slim_in,
                  slim_out=slim_out, mask=mask, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mod.weight.copy_(w)
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
        return mod

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"active_out={self.active_out}, slim_in={self.slim_in}, slim_out={self.slim_out}, "
                f"sparse={self.weight_mask is not None}")


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


class SlimmableConv2d(_Slimmable):
    """conv2d with ``W[:o, :i]`` and ``b[:o]`` (groups=1): i = input channels, o = ``active_out``.

    weight: [out_channels, in_channels, kh, kw] Parameter. NCHW or channels_last input.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, *,
                 slim_in=True, slim_out=True, mask=None, device=None, dtype=None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, device=device,
                                               dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self._init_slim(self.in_channels, self.out_channels, slim_in, slim_out, mask)
        self.reset_parameters()

    reset_parameters = nn.Conv2d.reset_parameters

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"SlimmableConv2d expects 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
        self._in_width(x.shape[1])
        return slimmable_conv2d(x, self.weight, self.bias, self.active_out, self.stride, self.padding, self.dilation,
                                mask=self.weight_mask)

    def output_size(self, h, w):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def macs(self, input_shape):
        """Multiply-accumulates of one forward on an [N, C, H, W] input at the active width."""
        n, c, h, w = (int(s) for s in input_shape)
        ho, wo = self.output_size(h, w)
        return n * ho * wo * self._active_nnz(c)

    @classmethod
    def from_dense(cls, conv, *, slim_in=True, slim_out=True, mask=None):
        """A SlimmableConv2d with ``conv``'s weight and bias (copied); groups must be 1, zero padding."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("from_dense needs groups=1, padding_mode='zeros' and numeric padding")
        w = conv.weight.detach()
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  bias=conv.bias is not None, slim_in=slim_in, slim_out=slim_out, mask=mask, device=w.device,
                  dtype=w.dtype)
        with torch.no_grad():
            mod.weight.copy_(w)
            if conv.bias is not None:
                mod.bias.copy_(conv.bias)
        return mod

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"active_out={self.active_out}, slim_in={self.slim_in}, slim_out={self.slim_out}, "
                f"sparse={self.weight_mask is not None}")


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per width (own running statistics and affine parameters), chosen by the
    input's channel count ``active_channels(w, num_features)``. ``bn[k]`` belongs to ``widths[k]``."""

    def __init__(self, num_features, widths=(0.25, 0.5, 0.75, 1.0), eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        self.num_features = int(num_features)
        self.widths = tuple(float(w) for w in widths)
        if not self.widths:
            raise ValueError("widths must not be empty")
        self.channels = tuple(active_channels(w, self.num_features) for w in self.widths)
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"widths {self.widths} give repeated channel counts {self.channels} for "
                             f"num_features={num_features}; pass distinct widths")
        self.bn = nn.ModuleList(nn.BatchNorm2d(c, eps, momentum, affine, track_running_stats, device=device,
                                               dtype=dtype) for c in self.channels)

    def index(self, channels):
        """Index of the BatchNorm for inputs with ``channels`` channels."""
        try:
            return self.channels.index(channels)
        except ValueError:
            raise ValueError(f"SwitchableBatchNorm2d has statistics for {self.channels} channels "
                             f"(widths {self.widths}), got an input with {channels}") from None

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"SwitchableBatchNorm2d expects 4-D input, got shape {tuple(x.shape)}")
        return self.bn[self.index(x.shape[1])](x)

    @classmethod
    def from_dense(cls, bn, widths=(0.25, 0.5, 0.75, 1.0)):
        """Every width starts from the first channels of ``bn``'s statistics and affine parameters."""
        ref = bn.weight if bn.weight is not None else bn.running_mean
        mod = cls(bn.num_features, widths, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
        with torch.no_grad():
            for c, sub in zip(mod.channels, mod.bn):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src, dst = getattr(bn, name), getattr(sub, name)
                    if src is not None and dst is not None:
                        dst.copy_(src[:c])
                if bn.num_batches_tracked is not None and sub.num_batches_tracked is not None:
                    sub.num_batches_tracked.copy_(bn.num_batches_tracked)
        return mod

    def extra_repr(self):
        return f"{self.num_features}, widths={self.widths}"


def _slimmable_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _Slimmable)]


def _resolve(config, modules):
    """{module name: width} for a float or a {name or fnmatch pattern: width} mapping."""
    if isinstance(config, bool) or not isinstance(config, (int, float, Mapping)):
        raise ValueError(f"width config must be a number or a mapping of module names to numbers, got {config!r}")
    if not isinstance(config, Mapping):
        return {name: float(config) for name, _ in modules}
    names = [name for name, _ in modules]
    for key in config:
        if not any(name == key or fnmatch.fnmatchcase(name, key) for name in names):
            raise ValueError(f"width config key {key!r} matches no slimmable module (have {names})")
    out = {}
    for name in names:
        if name in config:
            out[name] = config[name]
            continue
        for key, w in config.items():  # first matching pattern in the mapping's order
            if fnmatch.fnmatchcase(name, key):
                out[name] = w
                break
    return out


@contextlib.contextmanager
def width(model, config):
    """Within the block, run ``model``'s slimmable layers at the given widths, restoring them on exit.

    config: a width multiplier in (0, 1] for every slimmable module, or a mapping from module names
    (as in ``model.named_modules()``; exact names win over fnmatch patterns, patterns apply in the
    mapping's order) to multipliers; unmatched modules keep their width. Sets each module's
    ``active_out`` (``active_channels``; full when ``slim_out=False``); in-widths follow the inputs.
    """
    modules = _slimmable_modules(model)
    assign = _resolve(config, modules)
    for name, w in assign.items():
        active_channels(w, 1)  # validates before anything changes
    saved = [(m, m.active_out) for _, m in modules]
    try:
        lookup = dict(modules)
        for name, w in assign.items():
            lookup[name].set_width(w)
        yield model
    finally:
        for m, o in saved:
            m.active_out = o


def _batch_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_bn(model, batches, widths, forward=None):
    """Re-estimate the running statistics of every ``SwitchableBatchNorm2d`` used at each width.

    For each entry of ``widths`` (a float or a per-module mapping, as in ``width``), the BatchNorms
    that are hit at that width are reset and set to a cumulative average, then ``model`` runs over
    ``batches`` (tensors, or tuples whose first element is the input; ``forward(model, batch)``
    overrides how a batch is fed) in train mode. Other statistics and all parameters are unchanged;
    momentum and train/eval modes are restored. Returns ``model``.
    """
    if iter(batches) is batches:  # a one-shot iterator: keep it for every width
        batches = list(batches)
    subs = [bn for m in model.modules() if isinstance(m, SwitchableBatchNorm2d) for bn in m.bn]
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(bn, bn.momentum) for bn in subs]
    run = forward or (lambda mdl, b: mdl(_batch_input(b)))
    model.train()
    try:
        for cfg in widths:
            seen = set()

            def reset_on_first_use(bn, args):
                if id(bn) not in seen:
                    seen.add(id(bn))
                    bn.reset_running_stats()
                    bn.momentum = None

            hooks = [bn.register_forward_pre_hook(reset_on_first_use) for bn in subs]
            try:
                with width(model, cfg):
                    for b in batches:
                        run(model, b)
            finally:
                for h in hooks:
                    h.remove()
                for bn, mom in momenta:
                    bn.momentum = mom
    finally:
        for m, mode in modes:
            m.training = mode
    return model


_MAC_TYPES = (nn.Linear, nn.Conv2d, SlimmableLinear, SlimmableConv2d)


@torch.no_grad()
def count_macs(model, *inputs, **kwargs):
    """Multiply-accumulates of ``model(*inputs, **kwargs)`` over its (slimmable or plain) Linear and
    Conv2d layers, at their current widths (use inside ``width(model, config)``). Runs one forward in
    eval mode (no statistics are updated) and restores the modes."""
    total = [0]

    def hook(mod, args, out):
        x = args[0]
        if isinstance(mod, (SlimmableLinear, SlimmableConv2d)):
            total[0] += mod.macs(tuple(x.shape))
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features
        else:
            total[0] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    modes = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _MAC_TYPES)]
    model.eval()
    try:
        model(*inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return total[0]
