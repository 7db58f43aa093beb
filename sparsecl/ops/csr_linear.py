"""Unstructured sparse linear: ``y = x @ W.T + bias`` with W [out, in] stored as element-granular CSR.

Backward: dX = dY @ W over the layout's transposed index (values reached through t_perm, no second
copy); dValues is an SDDMM at the nonzeros only; dBias = dY summed over tokens.
"""
import torch

from ..formats import CSRLayout
from ._registry import KernelSet, indexed_linear, indexed_linear_function, register_reference

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


_CsrLinear = indexed_linear_function(_kernels, "_CsrLinear", pass_block_size=False)


def csr_linear(x, values, layout, bias=None, *, dense_grad_hook=None):
    """``x @ W.T + bias`` for W [out, in] = ``layout.to_dense(values)``.

    x: [..., in_features]; values: [layout.nnz] of x's dtype and device; bias: [out] or None.
    Returns [..., out_features]. Differentiable in x, values and bias. Nothing is mutated.
    dense_grad_hook: None, or a callable that backward passes the dense weight gradient [out, in] (for DST
    growth); dValues is then gathered from it instead of computed by the SDDMM.
    """
    return indexed_linear(_CsrLinear, CSRLayout, x, values, layout, bias, dense_grad_hook)
