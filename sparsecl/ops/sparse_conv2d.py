"""Sparse conv2d as implicit GEMM, with the weight viewed as [out_ch, in_ch*kh*kw].

Two layouts, two public functions:
- ``bsr_conv2d``: block-channel sparsity. A ``BlockSparseLayout`` over the [out_ch, in_ch] channel
  grid; each active block holds B output x B input channels with all kh*kw taps kept together:
  values [nnzb, B, B, kh, kw] (the dense weight restricted to the block, PyTorch tap order).
- ``csr_conv2d``: element sparsity. A ``CSRLayout`` over [out_ch, in_ch*kh*kw] (column
  (i*kh + r)*kw + s, i.e. ``weight.reshape(out, -1)``), values [nnz].
Backward: dX through the layout's transposed index, dValues only at active entries, dBias = sum of
grad_out. On CPU, 1x1 convolutions without padding (pointwise, strided shortcuts) run as ``csr_linear`` /
``bsr_linear`` over the (subsampled) pixels, the same channel GEMM with faster kernels. groups=1 only (depthwise convs stay dense ``nn.Conv2d``). NCHW and channels_last inputs; the
output has the input's memory format. CPU kernels in C++; without the extension a reference that
builds the dense weight and calls F.conv2d. CUDA tensors: CUDA C++ or Triton kernels, chosen per op
("bsr_conv2d" / "csr_conv2d") with ``sparsecl.set_backend``.
"""
import torch
import torch.nn.functional as F

from ..formats import BlockSparseLayout, CSRLayout
from ._registry import KernelSet, autocast_args, register_reference
from .bsr_linear import bsr_linear
from .csr_linear import csr_linear


def _pair(v, name):
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(e, int) for e in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


# Pure-torch reference kernels (used only when the compiled extension is missing) -------------
def _block_dense(values, row_idx, col_idx, out_c, in_c):
    B, kh, kw = values.shape[1], values.shape[3], values.shape[4]
    nbr, nbc = -(-out_c // B), -(-in_c // B)
    # accumulate: repeated (row, col) blocks add up, as in the compiled kernels
    full = values.new_zeros(nbr, nbc, B, B, kh, kw).index_put_((row_idx.long(), col_idx.long()), values,
                                                               accumulate=True)
    return full.permute(0, 2, 1, 3, 4, 5).reshape(nbr * B, nbc * B, kh, kw)[:out_c, :in_c]


def _rows_of(ptr, nnz):
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)[:nnz]


def _ref_bsr(x, values, row_ptr, col_idx, out_channels, bias, stride, padding, dilation):
    w = _block_dense(values, _rows_of(row_ptr, col_idx.numel()), col_idx, out_channels, x.shape[1])
    return F.conv2d(x, w, bias, stride, padding, dilation)


def _ref_bsr_dx(grad_out, values, t_row_ptr, t_col_idx, t_perm, x_shape, stride, padding, dilation):
    cols = _rows_of(t_row_ptr, t_perm.numel())
    w = _block_dense(values[t_perm.long()], t_col_idx, cols, grad_out.shape[1], x_shape[1])
    return torch.nn.grad.conv2d_input(list(x_shape), w, grad_out, stride, padding, dilation)


def _ref_bsr_dw(grad_out, x, row_idx, col_idx, block_size, kernel_size, stride, padding, dilation):
    B = block_size
    gw = torch.nn.grad.conv2d_weight(x, [grad_out.shape[1], x.shape[1], *kernel_size], grad_out, stride, padding,
                                     dilation)
    nbr, nbc = -(-gw.shape[0] // B), -(-gw.shape[1] // B)
    full = gw.new_zeros(nbr * B, nbc * B, *kernel_size)
    full[: gw.shape[0], : gw.shape[1]] = gw
    return full.view(nbr, B, nbc, B, *kernel_size)[row_idx.long(), :, col_idx.long()]


def _ref_csr(x, values, row_ptr, col_idx, out_channels, kernel_size, bias, stride, padding, dilation):
    w = values.new_zeros(out_channels, x.shape[1] * kernel_size[0] * kernel_size[1])
    w.index_put_((_rows_of(row_ptr, col_idx.numel()), col_idx.long()), values, accumulate=True)
    return F.conv2d(x, w.view(out_channels, x.shape[1], *kernel_size), bias, stride, padding, dilation)


def _ref_csr_dx(grad_out, values, t_row_ptr, t_col_idx, t_perm, x_shape, kernel_size, stride, padding, dilation):
    w = values.new_zeros(grad_out.shape[1], x_shape[1] * kernel_size[0] * kernel_size[1])
    w.index_put_((t_col_idx.long(), _rows_of(t_row_ptr, t_perm.numel())), values[t_perm.long()], accumulate=True)
    w = w.view(grad_out.shape[1], x_shape[1], *kernel_size)
    return torch.nn.grad.conv2d_input(list(x_shape), w, grad_out, stride, padding, dilation)


def _ref_csr_dw(grad_out, x, row_idx, col_idx, kernel_size, stride, padding, dilation):
    gw = torch.nn.grad.conv2d_weight(x, [grad_out.shape[1], x.shape[1], *kernel_size], grad_out, stride, padding,
                                     dilation)
    return gw.reshape(gw.shape[0], -1)[row_idx.long(), col_idx.long()]


for _name, _fn in [("bsr_conv2d", _ref_bsr), ("bsr_conv2d_dx", _ref_bsr_dx), ("bsr_conv2d_dw", _ref_bsr_dw),
                   ("csr_conv2d", _ref_csr), ("csr_conv2d_dx", _ref_csr_dx), ("csr_conv2d_dw", _ref_csr_dw)]:
    register_reference(_name, _fn)

# (forward, dx, dw) per structure: dispatcher ops, or Triton ops for CUDA tensors when selected
_bsr_kernels = KernelSet("bsr_conv2d", "sparse_conv2d", [
    ("bsr_conv2d", "bsr_conv2d_forward", ()), ("bsr_conv2d_dx", "bsr_conv2d_dx", ()),
    ("bsr_conv2d_dw", "bsr_conv2d_dw", ())])
_csr_kernels = KernelSet("csr_conv2d", "sparse_conv2d", [
    ("csr_conv2d", "csr_conv2d_forward", ()), ("csr_conv2d_dx", "csr_conv2d_dx", ()),
    ("csr_conv2d_dw", "csr_conv2d_dw", ())])


class _BsrConv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, values, bias, idx, out_channels, geom):
        return _bsr_kernels(x.device)[0](x, values, idx[0], idx[1], out_channels, bias, *geom)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, values, bias, idx, _, geom = inputs
        ctx.save_for_backward(x, values, *idx)
        ctx.geom, ctx.has_bias = geom, bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, values, row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = ctx.saved_tensors
        _, dx_op, dw_op = _bsr_kernels(x.device)
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            dx = dx_op(grad_out, values, t_row_ptr, t_col_idx, t_perm, list(x.shape), *ctx.geom)
        if ctx.needs_input_grad[1]:
            dv = dw_op(grad_out, x, row_idx, col_idx, values.shape[1], list(values.shape[3:]), *ctx.geom)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum((0, 2, 3))
        return dx, dv, db, None, None, None


class _CsrConv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, values, bias, idx, out_channels, kernel_size, geom):
        return _csr_kernels(x.device)[0](x, values, idx[0], idx[1], out_channels, kernel_size, bias, *geom)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, values, bias, idx, _, kernel_size, geom = inputs
        ctx.save_for_backward(x, values, *idx)
        ctx.geom, ctx.kernel_size, ctx.has_bias = geom, kernel_size, bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, values, row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = ctx.saved_tensors
        _, dx_op, dw_op = _csr_kernels(x.device)
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            dx = dx_op(grad_out, values, t_row_ptr, t_col_idx, t_perm, list(x.shape), ctx.kernel_size, *ctx.geom)
        if ctx.needs_input_grad[1]:
            dv = dw_op(grad_out, x, row_idx, col_idx, ctx.kernel_size, *ctx.geom)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum((0, 2, 3))
        return dx, dv, db, None, None, None, None


def _pointwise(linear, x, values, layout, bias, geom):
    """A 1x1 convolution without padding on CPU: the sparse linear kernels over the pixels of x taken every
    stride-th row and column (channels-last [N, Ho, Wo, C] rows; their gradient scatters dX back), which
    run the channel GEMM faster than the conv kernels. Returns [N, out, Ho, Wo] in x's memory format."""
    (sh, sw), _, _ = geom
    y = linear(x[:, :, ::sh, ::sw].permute(0, 2, 3, 1), values, layout, bias).permute(0, 3, 1, 2)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return y.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _is_pointwise(x, kernel_size, geom):
    return tuple(kernel_size) == (1, 1) and geom[1] == [0, 0] and x.device.type == "cpu" and x.dim() == 4


def _check_common(x, values, layout, in_cols, stride, padding, dilation):
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != in_cols:
        raise ValueError(f"x has {x.shape[1]} channels but the layout expects {in_cols}")
    geom = (list(_pair(stride, "stride")), list(_pair(padding, "padding")), list(_pair(dilation, "dilation")))
    if min(geom[0]) < 1 or min(geom[2]) < 1 or min(geom[1]) < 0:
        raise ValueError(f"stride/dilation must be >= 1 and padding >= 0, got {geom}")
    if not torch.compiler.is_compiling() and (values.device != x.device or layout.device != x.device):
        raise ValueError(f"x ({x.device}), values ({values.device}) and layout ({layout.device}) must be on one device")
    return geom


def _check_taps(x, shape, kernel_size, what):
    """(kh, kw) of ``kernel_size``, checked positive and against the [out, in*kh*kw] ``shape`` of ``what``."""
    kh, kw = _pair(kernel_size, "kernel_size")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    cols = shape[1]
    if x.dim() == 4 and cols != x.shape[1] * kh * kw:
        raise ValueError(f"{what} has {cols} columns but x has {x.shape[1]} channels x {kh}x{kw} taps")
    return kh, kw


def _idx(layout):
    return (layout.row_ptr, layout.col_idx, layout.row_idx, layout.t_row_ptr, layout.t_col_idx, layout.t_perm)


def bsr_conv2d(x, values, layout, bias=None, stride=1, padding=0, dilation=1):
    """conv2d of x [N, in_ch, H, W] with the block-channel sparse weight ``values`` [nnzb, B, B, kh, kw].

    ``layout``: BlockSparseLayout of shape (out_ch, in_ch). bias: [out_ch] or None. Returns
    [N, out_ch, Ho, Wo] in x's memory format. Differentiable in x, values, bias. Nothing is mutated.
    """
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout must be a BlockSparseLayout, got {type(layout).__name__}")
    out_c, in_c = layout.shape
    geom = _check_common(x, values, layout, in_c, stride, padding, dilation)
    B = layout.block_size
    if values.dim() != 5 or tuple(values.shape[:3]) != (layout.nnzb, B, B):
        raise ValueError(f"values must be [{layout.nnzb}, {B}, {B}, kh, kw], got {tuple(values.shape)}")
    x, values, bias = autocast_args(x, values, bias)
    if _is_pointwise(x, values.shape[3:], geom):
        return _pointwise(bsr_linear, x, values.view(values.shape[:3]), layout, bias, geom)
    return _BsrConv2d.apply(x, values, bias, _idx(layout), out_c, geom)


def csr_conv2d(x, values, layout, kernel_size, bias=None, stride=1, padding=0, dilation=1):
    """conv2d of x [N, in_ch, H, W] with the unstructured sparse weight ``values`` [nnz].

    ``layout``: CSRLayout of shape (out_ch, in_ch*kh*kw) over ``weight.reshape(out_ch, -1)``.
    Returns [N, out_ch, Ho, Wo] in x's memory format. Differentiable in x, values, bias.
    """
    if not isinstance(layout, CSRLayout):
        raise TypeError(f"layout must be a CSRLayout, got {type(layout).__name__}")
    kh, kw = _check_taps(x, layout.shape, kernel_size, "layout")
    out_c = layout.shape[0]
    geom = _check_common(x, values, layout, x.shape[1] if x.dim() == 4 else -1, stride, padding, dilation)
    layout.check_values(values)
    x, values, bias = autocast_args(x, values, bias)
    if _is_pointwise(x, (kh, kw), geom):
        return _pointwise(csr_linear, x, values, layout, bias, geom)
    return _CsrConv2d.apply(x, values, bias, _idx(layout), out_c, [kh, kw], geom)
