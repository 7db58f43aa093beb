"""Unstructured sparse linear: ``y = x @ W.T + bias`` with W [out, in] stored as element-granular CSR.

Backward: dX = dY @ W over the layout's transposed index (values reached through t_perm, no second
copy); dValues is an SDDMM at the nonzeros only; dBias = dY summed over tokens.
"""
import torch

from ..formats import CSRLayout
from ._registry import KernelSet, autocast_args, register_reference

OP = "csr_linear"


# Pure-torch reference kernels (used only when the compiled extension is missing) -------------
def _rows_of(row_ptr, nnz):
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)[:nnz]


def _dense(values, rows, cols, shape):
    return values.new_zeros(shape).index_put((rows.long(), cols.long()), values, accumulate=True)


def _reference_forward(x, values, row_ptr, col_idx, out_features, bias):
    w = _dense(values, _rows_of(row_ptr, col_idx.numel()), col_idx, (out_features, x.shape[1]))
    y = x @ w.T
    return y + bias if bias is not None else y


def _reference_dx(grad_out, values, t_row_ptr, t_col_idx, t_perm, in_features):
    cols = _rows_of(t_row_ptr, t_perm.numel())
    w = _dense(values[t_perm.long()], t_col_idx, cols, (grad_out.shape[1], in_features))
    return grad_out @ w


def _reference_dw(grad_out, x, row_idx, col_idx):
    return (grad_out[:, row_idx.long()] * x[:, col_idx.long()]).sum(0)


register_reference("csr_linear", _reference_forward)
register_reference("csr_linear_dx", _reference_dx)
register_reference("csr_linear_dw", _reference_dw)


# (forward, dx, dw): dispatcher ops, or Triton ops for CUDA tensors when selected ------------
_kernels = KernelSet(OP, "csr_linear", [
    ("csr_linear", "csr_linear_forward", ()),
    ("csr_linear_dx", "csr_linear_dx", ()),
    ("csr_linear_dw", "csr_linear_dw", ()),
])


class _CsrLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, values, bias, layout_tensors, out_features):
        row_ptr, col_idx = layout_tensors[0], layout_tensors[1]
        return _kernels(x.device)[0](x, values, row_ptr, col_idx, out_features, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, values, bias, layout_tensors, _ = inputs
        ctx.save_for_backward(x, values, *layout_tensors)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, values, row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm = ctx.saved_tensors
        _, dx_op, dw_op = _kernels(x.device)
        grad_out = grad_out.contiguous()
        dx = dv = db = None
        if ctx.needs_input_grad[0]:
            dx = dx_op(grad_out, values, t_row_ptr, t_col_idx, t_perm, x.shape[1])
        if ctx.needs_input_grad[1]:
            dv = dw_op(grad_out, x, row_idx, col_idx)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum(0)
        return dx, dv, db, None, None


def csr_linear(x, values, layout, bias=None):
    """``x @ W.T + bias`` for W [out, in] = ``layout.to_dense(values)``.

    x: [..., in_features]; values: [layout.nnz] of x's dtype and device; bias: [out] or None.
    Returns [..., out_features]. Differentiable in x, values and bias. Nothing is mutated.
    """
    if not isinstance(layout, CSRLayout):
        raise TypeError(f"layout must be a CSRLayout, got {type(layout).__name__}")
    out_f, in_f = layout.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"x has {x.shape[-1]} input features but the layout expects {in_f}")
    if not torch.compiler.is_compiling():
        layout.check_values(values)
        if values.device != x.device or layout.device != x.device:
            raise ValueError(f"x ({x.device}), values ({values.device}) and layout ({layout.device}) "
                             "must be on one device")
    x, values, bias = autocast_args(x, values, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), in_f)  # explicit rows: in_features may be 0
    idx = (layout.row_ptr, layout.col_idx, layout.row_idx, layout.t_row_ptr, layout.t_col_idx, layout.t_perm)
    y = _CsrLinear.apply(x2, values, bias, idx, out_f)
    return y.reshape(*lead, out_f)
