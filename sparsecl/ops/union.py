"""Frozen + trainable union: one sparse kernel call per pass over a ``UnionLayout``.

``union_linear`` / ``union_conv2d`` compute with the weight W = frozen part + trainable part as ONE
``csr_linear`` / ``csr_conv2d`` kernel call per pass (forward, dX) over the union index. dValues is
computed only at the trainable entries (the SDDMM at ``union.trainable_rows/cols``); the frozen values
get no gradient (they are read, never differentiated), so they need no optimizer state and stay
bit-identical. The values are gathered into the union's order for each call: eagerly through the
union's scratch buffer, which holds the frozen values in union order (refreshed when ``frozen_values``
changes: another tensor, storage or version) and gets the trainable values written in right before each
kernel call, so a step copies the trainable entries only; linear dX reads them through ``t_perm`` (one
gather per call instead of a second, transposed-order buffer kept between steps). ``frozen_values=None``
means the frozen values the union itself holds (``UnionLayout.attach_frozen``: no other copy is kept).

For ``sparsecl.dispatch`` (per pass sparse or dense on the effective weight): ``union_linear_spec`` /
``union_conv2d_spec`` are the ``DispatchSpec`` of these calls (values = the trainable values; the frozen
values are the dense weight's other part, ``frozen_part(union, frozen_values)``).
"""
import torch

from ..formats import UnionLayout, entries_at
from ._registry import autocast_args, check_dense_grad_hook, hook_dense_grad
from .csr_linear import _kernels as _linear_kernels
from .dense_or_sparse import ActiveIndex, DispatchSpec, LinearGeometry, _conv_geometry, _conv_signature
from .sparse_conv2d import _check_common, _check_taps, _csr_kernels as _conv_kernels, _pair


def _union_values(union, frozen, trainable):
    """Union values [nnz] in CSR order from the two parts (see the module docstring); ``frozen`` None: the
    frozen values the union holds (``UnionLayout.attach_frozen``)."""
    trainable = trainable.detach()
    if torch.compiler.is_compiling():
        return union.values(None if frozen is None else frozen.detach(), trainable)
    key = trainable.dtype
    entry = union.scratch.get(key)
    if frozen is None:
        if entry is None:  # the attached values in another dtype (autocast)
            entry = (None, None, union.values(None, trainable))
            union.scratch[key] = entry
    elif entry is None or entry[0] is not frozen or entry[1] != (frozen.data_ptr(), frozen._version):
        entry = (frozen, (frozen.data_ptr(), frozen._version), union.values(frozen.detach(), trainable))
        union.scratch[key] = entry
    return entry[2].index_copy_(0, union.trainable_pos, trainable)


def _transposed_values(union, frozen, trainable):
    """Union values in the transposed index's order (linear dX): gathered through t_perm for this call."""
    return _union_values(union, frozen, trainable).index_select(0, union.layout.t_perm)


class _UnionLinear(torch.autograd.Function):
    # ctx-style forward: Function.apply then skips its per-call signature binding (a measurable share of a
    # ~1 ms layer)
    @staticmethod
    def forward(ctx, x, trainable, bias, frozen, union, out_features, dense_grad_hook):
        ctx.union, ctx.dense_grad_hook, ctx.has_bias = union, dense_grad_hook, bias is not None
        ctx.save_for_backward(x, trainable, frozen)
        lay = union.layout
        return _linear_kernels(x.device)[0](x, _union_values(union, frozen, trainable), lay.row_ptr,
                                            lay.col_idx, out_features, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, trainable, frozen = ctx.saved_tensors
        u = ctx.union
        fwd, _, dw = _linear_kernels(x.device)
        grad_out = grad_out.contiguous()
        dx = dt = db = None
        if ctx.needs_input_grad[0]:
            # dX = grad_out @ W: the forward SpMM over the transposed index (W.T in CSR)
            dx = fwd(grad_out, _transposed_values(u, frozen, trainable), u.layout.t_row_ptr, u.layout.t_col_idx,
                     x.shape[1], None)
        if ctx.dense_grad_hook is not None:  # a DST growth step: the dense dW over the layer, dTrainable from it
            dense = hook_dense_grad(ctx.dense_grad_hook, grad_out, x)
            if ctx.needs_input_grad[1]:
                dt = entries_at(dense, u.trainable_rows, u.trainable_cols).to(trainable.dtype)
        elif ctx.needs_input_grad[1]:
            dt = dw(grad_out, x, u.trainable_rows, u.trainable_cols)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum(0)
        return dx, dt, db, None, None, None, None


class _UnionConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, trainable, bias, frozen, union, out_channels, kernel_size, geom):
        ctx.union, ctx.kernel_size, ctx.geom, ctx.has_bias = union, kernel_size, geom, bias is not None
        ctx.save_for_backward(x, trainable, frozen)
        lay = union.layout
        return _conv_kernels(x.device)[0](x, _union_values(union, frozen, trainable), lay.row_ptr,
                                          lay.col_idx, out_channels, kernel_size, bias, *geom)

    @staticmethod
    def backward(ctx, grad_out):
        x, trainable, frozen = ctx.saved_tensors
        u = ctx.union
        _, dx_op, dw_op = _conv_kernels(x.device)
        dx = dt = db = None
        if ctx.needs_input_grad[0]:
            lay = u.layout
            dx = dx_op(grad_out, _union_values(u, frozen, trainable), lay.t_row_ptr, lay.t_col_idx,
                       lay.t_perm, list(x.shape), ctx.kernel_size, *ctx.geom)
        if ctx.needs_input_grad[1]:
            dt = dw_op(grad_out, x, u.trainable_rows, u.trainable_cols, ctx.kernel_size, *ctx.geom)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum((0, 2, 3))
        return dx, dt, db, None, None, None, None, None


def _check_union(union, frozen_values, trainable_values, x):
    if not isinstance(union, UnionLayout):
        raise TypeError(f"union must be a sparsecl.formats.UnionLayout, got {type(union).__name__}")
    union.check_values(frozen_values, trainable_values)
    if not torch.compiler.is_compiling():
        for name, t in (("frozen_values", frozen_values), ("trainable_values", trainable_values)):
            if t is None:  # the union's attached frozen values (on the union's device)
                continue
            if t.device != x.device or union.device != x.device:
                raise ValueError(f"x ({x.device}), {name} ({t.device}) and union ({union.device}) must be on one "
                                 "device")
        if trainable_values.dtype != x.dtype:
            raise ValueError(f"trainable_values dtype {trainable_values.dtype} != x dtype {x.dtype}")


def union_linear(x, frozen_values, trainable_values, union, bias=None, *, dense_grad_hook=None):
    """``x @ W.T + bias`` for W [out, in] = ``union.to_dense(frozen_values, trainable_values)``.

    x: [..., in]; frozen_values: [union.n_frozen], or None for the values the union holds
    (``UnionLayout.attach_frozen``); trainable_values: [union.n_trainable] (x's dtype and device; each part in
    its own row-major order, see ``UnionLayout``); bias: [out] or None. Returns
    [..., out]. Differentiable in x, trainable_values and bias; frozen_values is read only and never gets
    a gradient. One csr_linear kernel call per pass over the union. Mutates only ``union.scratch``.
    dense_grad_hook: None, or a callable that backward passes the dense dW [out, in] (a DST growth step);
    dTrainable is then gathered from it instead of computed by the SDDMM.
    """
    _check_union(union, frozen_values, trainable_values, x)
    out_f, in_f = union.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"x has {x.shape[-1]} input features but the union expects {in_f}")
    check_dense_grad_hook(dense_grad_hook)
    x, trainable_values, frozen_values, bias = autocast_args(x, trainable_values, frozen_values, bias)
    lead = x.shape[:-1]
    y = _UnionLinear.apply(x.reshape(lead.numel(), in_f), trainable_values, bias, frozen_values, union, out_f,
                           dense_grad_hook)
    return y.reshape(*lead, out_f)


def union_conv2d(x, frozen_values, trainable_values, union, kernel_size, bias=None, stride=1, padding=0, dilation=1):
    """conv2d of x [N, in_ch, H, W] with the weight ``union.to_dense(frozen_values, trainable_values)``.

    ``union``: UnionLayout of shape (out_ch, in_ch*kh*kw) over ``weight.reshape(out_ch, -1)``; values as for
    ``union_linear``. Returns [N, out_ch, Ho, Wo] in x's memory format. Differentiable in x, trainable_values
    and bias (frozen_values never gets a gradient). One csr_conv2d kernel call per pass over the union
    (forward, dX; dValues at the trainable entries only). Mutates only ``union.scratch``.
    """
    if not isinstance(union, UnionLayout):
        raise TypeError(f"union must be a sparsecl.formats.UnionLayout, got {type(union).__name__}")
    kh, kw = _check_taps(x, union.shape, kernel_size, "union")
    out_c = union.shape[0]
    _check_union(union, frozen_values, trainable_values, x)
    geom = _check_common(x, trainable_values, union.layout, x.shape[1] if x.dim() == 4 else -1, stride, padding,
                         dilation)
    x, trainable_values, frozen_values, bias = autocast_args(x, trainable_values, frozen_values, bias)
    return _UnionConv2d.apply(x, trainable_values, bias, frozen_values, union, out_c, [kh, kw], geom)


# sparsecl.dispatch specs --------------------------------------------------------------------------------------
def frozen_part(union, frozen_values):
    """(frozen_values, ActiveIndex): the frozen part of a union layer's dense weight (it gets no gradient);
    ``frozen_values`` None: the union's attached ones."""
    if frozen_values is None:
        frozen_values = union.frozen_values()
    return frozen_values, ActiveIndex(union.frozen_rows, union.frozen_cols, 1)


def union_linear_spec(union, frozen_values):
    """DispatchSpec of ``union_linear(x, frozen_values, values, union, bias)`` (values: the trainable values)."""
    out_f, in_f = union.shape
    lay = union.layout

    def forward(x, values, bias):
        return _linear_kernels(x.device)[0](x, _union_values(union, frozen_values, values), lay.row_ptr,
                                            lay.col_idx, out_f, bias)

    def dx(grad_out, values, x_shape):
        return _linear_kernels(grad_out.device)[0](grad_out.contiguous(),
                                                   _transposed_values(union, frozen_values, values),
                                                   lay.t_row_ptr, lay.t_col_idx, in_f, None)

    def dw(grad_out, x):
        return _linear_kernels(x.device)[2](grad_out.contiguous(), x, union.trainable_rows, union.trainable_cols)

    return DispatchSpec(f"union_linear|{out_f}x{in_f}", LinearGeometry(out_f, in_f),
                        ActiveIndex(union.trainable_rows, union.trainable_cols, 1), forward, dx, dw)


def union_conv2d_spec(x, union, frozen_values, kernel_size, stride=1, padding=0, dilation=1):
    """DispatchSpec of ``union_conv2d(x, frozen_values, values, union, kernel_size, bias, stride, padding,
    dilation)`` (values: the trainable values)."""
    kh, kw = _pair(kernel_size, "kernel_size")
    geom, geometry = _conv_geometry(x, union.layout, union.shape[1] // (kh * kw), (kh, kw), stride, padding,
                                    dilation, False)
    lay, ks = union.layout, [kh, kw]

    def forward(x, values, bias):
        return _conv_kernels(x.device)[0](x, _union_values(union, frozen_values, values), lay.row_ptr,
                                          lay.col_idx, geometry.out_channels, ks, bias, *geom)

    def dx(grad_out, values, x_shape):
        return _conv_kernels(grad_out.device)[1](grad_out, _union_values(union, frozen_values, values),
                                                 lay.t_row_ptr, lay.t_col_idx, lay.t_perm, list(x_shape), ks, *geom)

    def dw(grad_out, x):
        return _conv_kernels(x.device)[2](grad_out, x, union.trainable_rows, union.trainable_cols, ks, *geom)

    return DispatchSpec(_conv_signature("union_conv2d", geometry, 1), geometry,
                        ActiveIndex(union.trainable_rows, union.trainable_cols, 1), forward, dx, dw)
