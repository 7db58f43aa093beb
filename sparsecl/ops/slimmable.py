"""Slimmable (width-sliced) linear and conv2d: compute with ``W[:o, :i]`` (and ``bias[:o]``) as a
strided view of the full weight, with the in-width ``i`` taken from the input.

Weight gradients (the choice, and its limits)
---------------------------------------------
PyTorch's backward of ``W[:o, :i]`` allocates ``zeros(W.shape)`` and copies the slice in, per call.
Here, in eager ``.backward()`` on a leaf parameter, the slice gradient is accumulated in place into
``W.grad[:o, :i]`` by the backward kernel, and autograd receives ``None`` for W (its AccumulateGrad
node still runs, so hooks fire and DDP's reducer sees the parameter as ready and reads ``W.grad``).
When ``W.grad`` is None (first call after ``zero_grad(set_to_none=True)``) a persistent full-size
buffer is zeroed and attached as ``W.grad``; it is reused every step unless something else still
holds it, in which case a new one is allocated. So per call there is no full-size allocation, and
per step at most one ``zero_`` of W's size. Several widths in one step (sandwich rule) all
accumulate into the same ``W.grad``; ``zero_grad(set_to_none=True|False)`` both work.
Limits: ``torch.autograd.grad(..., W)`` / gradcheck, a non-leaf W, and code traced by
``torch.compile`` get an ordinary full-size gradient through autograd instead (correct, and
as costly as PyTorch's slice); ``W.register_hook`` sees no gradient; no double backward.

Mask: an optional bool ``mask`` (W's shape) makes the layer sparse: ``W * mask`` is used, multiplied
panel by panel inside the kernel (never materialised), and ``dW`` is nonzero only where ``mask`` is set.
"""
import math
import sys

import torch
from torch.autograd.graph import get_gradient_edge
from torch.utils.weak import WeakIdKeyDictionary

from ._registry import KernelSet, autocast_args, register_reference

OP = "slimmable_linear"


# Pure-torch reference kernels (used only when the compiled extension is missing) -------------
def _masked(w, mask):
    return w if mask is None else w * mask


def _reference_linear(x, weight, bias, mask, out_features):
    o, i = out_features, x.shape[1]
    y = x @ _masked(weight[:o, :i], None if mask is None else mask[:o, :i]).T
    return y + bias[:o] if bias is not None else y


def _reference_linear_dx(grad_out, weight, mask, in_features):
    o, i = grad_out.shape[1], in_features
    return grad_out @ _masked(weight[:o, :i], None if mask is None else mask[:o, :i])


def _reference_linear_dw_(grad_out, x, mask, grad_weight):
    o, i = grad_out.shape[1], x.shape[1]
    grad_weight[:o, :i] += _masked(grad_out.T @ x, None if mask is None else mask[:o, :i])


def _reference_multi(x, weight, bias, mask, in_widths, out_widths):
    return [_reference_linear(x[:, :i], weight, bias, mask, o) for i, o in zip(in_widths, out_widths)]


def _reference_multi_dx(grad_outs, weight, mask, in_widths, in_features):
    dx = grad_outs[0].new_zeros(grad_outs[0].shape[0], in_features)
    for g, i in zip(grad_outs, in_widths):
        dx[:, :i] += _reference_linear_dx(g, weight, mask, i)
    return dx


def _reference_multi_dw_(grad_outs, x, mask, in_widths, grad_weight):
    for g, i in zip(grad_outs, in_widths):
        _reference_linear_dw_(g, x[:, :i], mask, grad_weight)


def _reference_conv2d(x, weight, bias, mask, out_channels, stride, padding, dilation):
    o, i = out_channels, x.shape[1]
    w = _masked(weight[:o, :i], None if mask is None else mask[:o, :i])
    return torch.nn.functional.conv2d(x, w, None if bias is None else bias[:o], stride, padding, dilation)


def _reference_conv2d_dx(grad_out, weight, mask, x_shape, stride, padding, dilation):
    o, i = grad_out.shape[1], x_shape[1]
    w = _masked(weight[:o, :i], None if mask is None else mask[:o, :i])
    return torch.nn.grad.conv2d_input(list(x_shape), w, grad_out, stride, padding, dilation)


def _reference_conv2d_dw_(grad_out, x, mask, grad_weight, stride, padding, dilation):
    o, i = grad_out.shape[1], x.shape[1]
    shape = (o, i) + tuple(grad_weight.shape[2:])
    g = torch.nn.grad.conv2d_weight(x, shape, grad_out, stride, padding, dilation)
    grad_weight[:o, :i] += _masked(g, None if mask is None else mask[:o, :i])


for _name, _fn in [("slimmable_linear", _reference_linear), ("slimmable_linear_dx", _reference_linear_dx),
                   ("slimmable_linear_dw_", _reference_linear_dw_), ("slimmable_linear_multi", _reference_multi),
                   ("slimmable_linear_multi_dx", _reference_multi_dx),
                   ("slimmable_linear_multi_dw_", _reference_multi_dw_), ("slimmable_conv2d", _reference_conv2d),
                   ("slimmable_conv2d_dx", _reference_conv2d_dx), ("slimmable_conv2d_dw_", _reference_conv2d_dw_)]:
    register_reference(_name, _fn)


# (forward, dx, dw_, multi, multi_dx, multi_dw_): dispatcher ops, or Triton ops for CUDA tensors ----
_linear_kernels = KernelSet(OP, "slimmable", [
    ("slimmable_linear", "slimmable_linear_forward", ()),
    ("slimmable_linear_dx", "slimmable_linear_dx", ()),
    ("slimmable_linear_dw_", "slimmable_linear_dw_", ("grad_weight",)),
    ("slimmable_linear_multi", "slimmable_linear_multi", ()),
    ("slimmable_linear_multi_dx", "slimmable_linear_multi_dx", ()),
    ("slimmable_linear_multi_dw_", "slimmable_linear_multi_dw_", ("grad_weight",)),
])


# Gradient sink: accumulate slice gradients into the leaf's .grad ----------------------------
_GRAD_BUFFERS = WeakIdKeyDictionary()


def _exclusively_held(buf):
    # Python references: the dict, _leaf_grad's local, this parameter, getrefcount's argument;
    # storage references: buf and the temporary storage object (views of buf would add more)
    return sys.getrefcount(buf) <= 4 and torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2


def _leaf_grad(param):
    """``param.grad``; when None, attach a zeroed persistent full-size buffer (a new one if the old is held)."""
    if param.grad is not None:
        return param.grad
    buf = _GRAD_BUFFERS.get(param)
    if (buf is not None and buf.shape == param.shape and buf.dtype == param.dtype and buf.device == param.device
            and _exclusively_held(buf)):
        buf.zero_()
    else:
        buf = torch.zeros_like(param, memory_format=torch.contiguous_format)
        _GRAD_BUFFERS[param] = buf
    param.grad = buf
    return buf


def _sink_nodes(inplace, *params):
    """AccumulateGrad nodes of the leaf params that will take in-place gradients (None elsewhere)."""
    return tuple(get_gradient_edge(p).node if inplace and p is not None and p.requires_grad else None
                 for p in params)


def _grad_into(node, param, write):
    """Run ``write(g)`` on the tensor the gradient of ``param`` belongs in; return what autograd should get."""
    if node is not None:
        try:
            accumulate = torch._C._will_engine_execute_node(node)
        except RuntimeError:  # inside torch.autograd.grad: the gradient is captured, not accumulated
            accumulate = False
        if accumulate:
            write(_leaf_grad(param))
            return None
    g = torch.zeros_like(param, memory_format=torch.contiguous_format)
    write(g)
    return g


def _use_inplace(*params):
    return not torch.compiler.is_compiling() and all(p is None or p.is_leaf for p in params)


# Autograd -----------------------------------------------------------------------------------
class _SlimLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, mask, out_features, inplace):
        return _linear_kernels(x.device)[0](x, weight, bias, mask, out_features)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask, out_features, inplace = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.params = (weight, bias)
        ctx.nodes = _sink_nodes(inplace, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        _, dx_op, dw_op, *_ = _linear_kernels(x.device)
        grad_out = grad_out.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dx_op(grad_out, weight, mask, x.shape[1])
        if ctx.needs_input_grad[1]:
            dw = _grad_into(ctx.nodes[0], ctx.params[0], lambda g: dw_op(grad_out, x, mask, g))
        if ctx.needs_input_grad[2]:
            o = grad_out.shape[1]
            db = _grad_into(ctx.nodes[1], ctx.params[1], lambda g: g[:o].add_(grad_out.sum(0)))
        return dx, dw, db, None, None, None


class _SlimLinearMulti(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, mask, in_widths, out_widths, inplace):
        return tuple(_linear_kernels(x.device)[3](x, weight, bias, mask, in_widths, out_widths))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask, in_widths, out_widths, inplace = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.params = (weight, bias)
        ctx.nodes = _sink_nodes(inplace, weight, bias)
        ctx.in_widths = list(in_widths)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grad_outs):
        x, weight, mask = ctx.saved_tensors
        *_, dx_op, dw_op = _linear_kernels(x.device)
        used = [k for k, g in enumerate(grad_outs) if g is not None]
        grads = [grad_outs[k].contiguous() for k in used]
        in_widths = [ctx.in_widths[k] for k in used]
        dx = dw = db = None
        if not used:
            return (None,) * 7
        if ctx.needs_input_grad[0]:
            dx = dx_op(grads, weight, mask, in_widths, x.shape[1])
        if ctx.needs_input_grad[1]:
            dw = _grad_into(ctx.nodes[0], ctx.params[0], lambda g: dw_op(grads, x, mask, in_widths, g))
        if ctx.needs_input_grad[2]:
            def write_bias(g):
                for gk in grads:
                    g[:gk.shape[1]].add_(gk.sum(0))
            db = _grad_into(ctx.nodes[1], ctx.params[1], write_bias)
        return dx, dw, db, None, None, None, None


class _SlimConv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, mask, out_channels, geometry, inplace):
        return torch.ops.sparsecl.slimmable_conv2d(x, weight, bias, mask, out_channels, *geometry)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask, out_channels, geometry, inplace = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.params = (weight, bias)
        ctx.nodes = _sink_nodes(inplace, weight, bias)
        ctx.geometry = geometry

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        ops = torch.ops.sparsecl
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = ops.slimmable_conv2d_dx(grad_out, weight, mask, list(x.shape), *ctx.geometry)
        if ctx.needs_input_grad[1]:
            dw = _grad_into(ctx.nodes[0], ctx.params[0],
                            lambda g: ops.slimmable_conv2d_dw_(grad_out, x, mask, g, *ctx.geometry))
        if ctx.needs_input_grad[2]:
            o = grad_out.shape[1]
            db = _grad_into(ctx.nodes[1], ctx.params[1], lambda g: g[:o].add_(grad_out.sum((0, 2, 3))))
        return dx, dw, db, None, None, None, None


# Public functions ---------------------------------------------------------------------------
def _check_common(x, weight, bias, mask, dim):
    if weight.dim() != dim:
        raise ValueError(f"weight must be {dim}-D, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be the full-width bias [{weight.shape[0]}], got {tuple(bias.shape)}")
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ValueError(f"mask must be bool with the weight's shape {tuple(weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    if not torch.compiler.is_compiling():
        for name, t in (("weight", weight), ("bias", bias), ("mask", mask)):
            if t is not None and t.device != x.device:
                raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check_width(value, full, what):
    if not 0 <= value <= full:
        raise ValueError(f"{what} {value} outside [0, {full}]")


def slimmable_linear(x, weight, bias, out_features, mask=None):
    """``x @ (W[:o, :i] * mask[:o, :i]).T + bias[:o]`` with ``i = x.shape[-1]``, ``o = out_features``.

    x: [..., i] with i <= weight.shape[1]; weight: [O, I] (full width); bias: [O] or None;
    mask: bool [O, I] or None. Returns [..., o]. No weight copy; gradients as in the module docstring
    (a leaf weight's gradient is accumulated into ``weight.grad[:o, :i]`` in place).
    """
    _check_common(x, weight, bias, mask, 2)
    _check_width(x.shape[-1], weight.shape[1], "x's in width")
    _check_width(out_features, weight.shape[0], "out_features")
    x, weight, bias = autocast_args(x, weight, bias)
    lead = x.shape[:-1]
    y = _SlimLinear.apply(x.reshape(math.prod(lead), x.shape[-1]), weight, bias, mask, int(out_features),
                          _use_inplace(weight, bias))
    return y.reshape(*lead, out_features)


def slimmable_linear_multi(x, weight, bias, widths, mask=None):
    """Several widths of one layer on one input, in one kernel call: returns
    ``[slimmable_linear(x[..., :i], weight, bias, o, mask) for i, o in widths]``.

    widths: list of (in_width, out_width) with in_width <= min(x.shape[-1], weight.shape[1]).
    Blocks of W shared by several widths are multiplied once (cost of the union of the slices).
    """
    if not widths:
        raise ValueError("widths must list at least one (in_width, out_width) pair")
    _check_common(x, weight, bias, mask, 2)
    in_widths, out_widths = [int(i) for i, _ in widths], [int(o) for _, o in widths]
    for i, o in zip(in_widths, out_widths):
        _check_width(i, min(x.shape[-1], weight.shape[1]), "in width")
        _check_width(o, weight.shape[0], "out width")
    x, weight, bias = autocast_args(x, weight, bias)
    lead = x.shape[:-1]
    ys = _SlimLinearMulti.apply(x.reshape(math.prod(lead), x.shape[-1]), weight, bias, mask, in_widths, out_widths,
                                _use_inplace(weight, bias))
    return [y.reshape(*lead, o) for y, o in zip(ys, out_widths)]


def _pair(v, name):
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return list(t)


def slimmable_conv2d(x, weight, bias, out_channels, stride=1, padding=0, dilation=1, mask=None):
    """conv2d of x [N, i, H, W] with ``W[:o, :i] * mask[:o, :i]`` and ``bias[:o]``, groups=1.

    weight: [O, I, kh, kw] (full width), i = x.shape[1] <= I, o = out_channels. NCHW or channels_last;
    the output follows x's memory format. Implicit GEMM over im2col columns with the [o, i*kh*kw]
    view of the weight (no copy when the weight is contiguous). Gradients as for slimmable_linear.
    """
    _check_common(x, weight, bias, mask, 4)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    _check_width(x.shape[1], weight.shape[1], "x's channels")
    _check_width(out_channels, weight.shape[0], "out_channels")
    geometry = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"))
    x, weight, bias = autocast_args(x, weight, bias)
    return _SlimConv2d.apply(x, weight, bias, mask, int(out_channels), geometry, _use_inplace(weight, bias))
