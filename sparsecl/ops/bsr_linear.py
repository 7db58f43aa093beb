"""Block-sparse linear: ``y = x @ W.T + bias`` with W [out, in] stored as BSR blocks.

Backward: dX = dY @ W runs over the layout's transposed index (no second copy of values);
dValues is an SDDMM computed only at the active blocks; dBias = dY summed over tokens.
"""
import torch

from ..formats import BlockSparseLayout
from ._registry import KernelSet, indexed_linear, indexed_linear_function, register_reference

OP = "bsr_linear"


# Pure-torch reference kernels (used only when the compiled extension is missing) -------------
def _dense_from_blocks(values, row_idx, col_idx, out_f, in_f):
    B = values.shape[1]
    nbr, nbc = -(-out_f // B), -(-in_f // B)
    # accumulate: repeated (row, col) blocks add up, as in the compiled kernels (and csr_linear's reference)
    full = values.new_zeros(nbr, nbc, B, B).index_put_((row_idx.long(), col_idx.long()), values, accumulate=True)
    return full.permute(0, 2, 1, 3).reshape(nbr * B, nbc * B)[:out_f, :in_f]


def _rows_of(row_ptr, nnz):
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)[:nnz]


def _reference_forward(x, values, row_ptr, col_idx, out_features, bias):
    w = _dense_from_blocks(values, _rows_of(row_ptr, col_idx.numel()), col_idx, out_features, x.shape[1])
    y = x @ w.T
    return y + bias if bias is not None else y


def _reference_dx(grad_out, values, t_row_ptr, t_col_idx, t_perm, in_features):
    cols = _rows_of(t_row_ptr, t_perm.numel())
    w = _dense_from_blocks(values[t_perm.long()], t_col_idx, cols, grad_out.shape[1], in_features)
    return grad_out @ w


def _reference_dw(grad_out, x, row_idx, col_idx, block_size):
    B = block_size
    nbr, nbc = -(-grad_out.shape[1] // B), -(-x.shape[1] // B)
    g = grad_out.new_zeros(grad_out.shape[0], nbr * B)
    g[:, : grad_out.shape[1]] = grad_out
    xp = x.new_zeros(x.shape[0], nbc * B)
    xp[:, : x.shape[1]] = x
    gb = g.view(-1, nbr, B)[:, row_idx.long()]  # [T, nnzb, B]
    xb = xp.view(-1, nbc, B)[:, col_idx.long()]
    return torch.einsum("tko,tki->koi", gb, xb)


register_reference("bsr_linear", _reference_forward)
register_reference("bsr_linear_dx", _reference_dx)
register_reference("bsr_linear_dw", _reference_dw)


# (forward, dx, dw): dispatcher ops, or Triton ops for CUDA tensors when selected ------------
_kernels = KernelSet(OP, "bsr_linear", [
    ("bsr_linear", "bsr_linear_forward", ()),
    ("bsr_linear_dx", "bsr_linear_dx", ()),
    ("bsr_linear_dw", "bsr_linear_dw", ()),
])


_BsrLinear = indexed_linear_function(_kernels, "_BsrLinear", pass_block_size=True)


def bsr_linear(x, values, layout, bias=None, *, dense_grad_hook=None):
    """``x @ W.T + bias`` for W [out, in] = ``layout.to_dense(values)``.

    x: [..., in_features]; values: [layout.nnzb, B, B] of x's dtype and device; bias: [out] or None.
    Returns [..., out_features]. Differentiable in x, values and bias. Nothing is mutated.
    dense_grad_hook: None, or a callable that backward passes the dense weight gradient [out, in] (for DST
    growth); dValues is then gathered from it instead of computed by the SDDMM.
    """
    return indexed_linear(_BsrLinear, BlockSparseLayout, x, values, layout, bias, dense_grad_hook)
