"""Defines every sparsecl op schema (listed in schemas.def) and holds every op's fake (meta) implementation.

Kernels are registered elsewhere: C++ CPU/CUDA by ``sparsecl._C`` (TORCH_LIBRARY_IMPL), pure-torch
reference code by the op modules when the extension is missing, Triton as separate
``*_triton`` ops for CUDA tensors. Fakes only check what they can without data
(``torch._check``) and return correctly shaped empties, so torch.compile(fullgraph=True) traces.
"""
import os
import re

import torch

lib = torch.library.Library("sparsecl", "DEF")  # noqa: TOR901  (kept alive for the process)


def _read_schemas():
    with open(os.path.join(os.path.dirname(__file__), "schemas.def")) as f:
        return re.findall(r'^SPARSECL_SCHEMA\("(.*)"\)\s*$', f.read(), flags=re.M)


SCHEMAS = _read_schemas()
for _schema in SCHEMAS:
    lib.define(_schema)


# bsr_linear: y = x @ W.T (+ bias), W [out, in] in BSR blocks values[nnzb, B, B] -----------------


def _check_values(values, like):
    torch._check(values.dim() == 3 and values.shape[1] == values.shape[2],
                 lambda: f"values must be [nnzb, B, B], got {tuple(values.shape)}")
    torch._check(values.dtype == like.dtype, lambda: f"values dtype {values.dtype} != {like.dtype}")


@torch.library.register_fake("sparsecl::bsr_linear")
def _(x, values, row_ptr, col_idx, out_features, bias):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_values(values, x)
    torch._check(row_ptr.dtype == torch.int32 and col_idx.dtype == torch.int32, lambda: "indices must be int32")
    if bias is not None:
        torch._check(bias.shape == (out_features,), lambda: f"bias must be [{out_features}]")
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("sparsecl::bsr_linear_dx")
def _(grad_out, values, t_row_ptr, t_col_idx, t_perm, in_features):
    torch._check(grad_out.dim() == 2, lambda: "grad_out must be 2-D")
    _check_values(values, grad_out)
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("sparsecl::bsr_linear_dw")
def _(grad_out, x, row_idx, col_idx, block_size):
    torch._check(grad_out.dim() == 2 and x.dim() == 2, lambda: "grad_out and x must be 2-D")
    torch._check(grad_out.shape[0] == x.shape[0], lambda: "grad_out and x must have equal token counts")
    return x.new_empty((col_idx.shape[0], block_size, block_size))


# csr_linear: y = x @ W.T (+ bias), W [out, in] element-granular CSR, values[nnz] ------------------


def _check_csr_values(values, like, index):
    torch._check(values.dim() == 1, lambda: f"values must be 1-D [nnz], got {tuple(values.shape)}")
    torch._check(values.dtype == like.dtype, lambda: f"values dtype {values.dtype} != {like.dtype}")
    torch._check(values.shape[0] == index.shape[0], lambda: "values and the column index must have nnz entries")


@torch.library.register_fake("sparsecl::csr_linear")
def _(x, values, row_ptr, col_idx, out_features, bias):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_csr_values(values, x, col_idx)
    torch._check(row_ptr.dtype == torch.int32 and col_idx.dtype == torch.int32, lambda: "indices must be int32")
    torch._check(row_ptr.shape[0] == out_features + 1, lambda: f"row_ptr must have {out_features + 1} entries")
    if bias is not None:
        torch._check(bias.shape == (out_features,), lambda: f"bias must be [{out_features}]")
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("sparsecl::csr_linear_dx")
def _(grad_out, values, t_row_ptr, t_col_idx, t_perm, in_features):
    torch._check(grad_out.dim() == 2, lambda: "grad_out must be 2-D")
    _check_csr_values(values, grad_out, t_col_idx)
    torch._check(t_row_ptr.shape[0] == in_features + 1, lambda: f"t_row_ptr must have {in_features + 1} entries")
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("sparsecl::csr_linear_dw")
def _(grad_out, x, row_idx, col_idx):
    torch._check(grad_out.dim() == 2 and x.dim() == 2, lambda: "grad_out and x must be 2-D")
    torch._check(grad_out.shape[0] == x.shape[0], lambda: "grad_out and x must have equal token counts")
    torch._check(row_idx.shape == col_idx.shape, lambda: "row_idx and col_idx must have equal lengths")
    return x.new_empty((col_idx.shape[0],))


# masked_linear: y = x @ (weight * mask).T (+ bias), weight [out, in] dense, mask bool [out, in] ---------


def _check_masked(weight, mask, like):
    torch._check(weight.dim() == 2, lambda: f"weight must be 2-D [out, in], got {weight.dim()}-D")
    torch._check(weight.dtype == like.dtype, lambda: f"weight dtype {weight.dtype} != {like.dtype}")
    torch._check(mask.dtype == torch.bool, lambda: f"mask must be bool, got {mask.dtype}")
    torch._check(mask.shape == weight.shape, lambda: "mask must have the weight's shape")


@torch.library.register_fake("sparsecl::masked_linear")
def _(x, weight, mask, bias):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_masked(weight, mask, x)
    torch._check(x.shape[1] == weight.shape[1], lambda: "x and weight disagree on in_features")
    if bias is not None:
        torch._check(bias.shape == (weight.shape[0],), lambda: f"bias must be [{weight.shape[0]}]")
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("sparsecl::masked_linear_dx")
def _(grad_out, weight, mask):
    torch._check(grad_out.dim() == 2, lambda: "grad_out must be 2-D")
    _check_masked(weight, mask, grad_out)
    torch._check(grad_out.shape[1] == weight.shape[0], lambda: "grad_out and weight disagree on out_features")
    return grad_out.new_empty((grad_out.shape[0], weight.shape[1]))


@torch.library.register_fake("sparsecl::masked_linear_dw")
def _(grad_out, x, grad_mask):
    torch._check(grad_out.dim() == 2 and x.dim() == 2, lambda: "grad_out and x must be 2-D")
    torch._check(grad_out.shape[0] == x.shape[0], lambda: "grad_out and x must have equal token counts")
    torch._check(grad_mask.dtype == torch.bool, lambda: f"grad_mask must be bool, got {grad_mask.dtype}")
    torch._check(grad_mask.shape == (grad_out.shape[1], x.shape[1]), lambda: "grad_mask must be [out, in]")
    return x.new_empty((grad_out.shape[1], x.shape[1]))


# slimmable_*: width-sliced linear / conv2d on W[:o, :i] (i from the input) -----------------------


def _check_slim(x, weight, mask, dim):
    torch._check(weight.dim() == dim, lambda: f"weight must be {dim}-D, got {weight.dim()}-D")
    torch._check(weight.dtype == x.dtype, lambda: f"weight dtype {weight.dtype} != input dtype {x.dtype}")
    if mask is not None:
        torch._check(mask.dtype == torch.bool, lambda: f"mask must be bool, got {mask.dtype}")
        torch._check(mask.shape == weight.shape, lambda: "mask must have the weight's shape")


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@torch.library.register_fake("sparsecl::slimmable_linear")
def _(x, weight, bias, mask, out_features):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_slim(x, weight, mask, 2)
    torch._check(x.shape[1] <= weight.shape[1], lambda: "x's in width exceeds the weight's")
    torch._check(0 <= out_features <= weight.shape[0], lambda: "out_features outside [0, weight.shape[0]]")
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("sparsecl::slimmable_linear_dx")
def _(grad_out, weight, mask, in_features):
    torch._check(grad_out.dim() == 2, lambda: "grad_out must be 2-D")
    _check_slim(grad_out, weight, mask, 2)
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("sparsecl::slimmable_linear_dw_")
def _(grad_out, x, mask, grad_weight):
    torch._check(grad_out.dim() == 2 and x.dim() == 2, lambda: "grad_out and x must be 2-D")
    _check_slim(x, grad_weight, mask, 2)


@torch.library.register_fake("sparsecl::slimmable_linear_multi")
def _(x, weight, bias, mask, in_widths, out_widths):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    _check_slim(x, weight, mask, 2)
    torch._check(len(in_widths) == len(out_widths) and len(in_widths) > 0, lambda: "one in and out width each")
    return [x.new_empty((x.shape[0], o)) for o in out_widths]


@torch.library.register_fake("sparsecl::slimmable_linear_multi_dx")
def _(grad_outs, weight, mask, in_widths, in_features):
    torch._check(len(grad_outs) == len(in_widths) and len(grad_outs) > 0, lambda: "one grad_out per width")
    _check_slim(grad_outs[0], weight, mask, 2)
    return grad_outs[0].new_empty((grad_outs[0].shape[0], in_features))


@torch.library.register_fake("sparsecl::slimmable_linear_multi_dw_")
def _(grad_outs, x, mask, in_widths, grad_weight):
    torch._check(len(grad_outs) == len(in_widths), lambda: "one grad_out per width")
    _check_slim(x, grad_weight, mask, 2)


@torch.library.register_fake("sparsecl::slimmable_conv2d")
def _(x, weight, bias, mask, out_channels, stride, padding, dilation):
    torch._check(x.dim() == 4, lambda: f"x must be 4-D, got {x.dim()}-D")
    _check_slim(x, weight, mask, 4)
    ho = _conv_out(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _conv_out(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    y = x.new_empty((x.shape[0], out_channels, ho, wo))
    return y.contiguous(memory_format=torch._prims_common.suggest_memory_format(x))


@torch.library.register_fake("sparsecl::slimmable_conv2d_dx")
def _(grad_out, weight, mask, x_shape, stride, padding, dilation):
    _check_slim(grad_out, weight, mask, 4)
    dx = grad_out.new_empty(tuple(x_shape))
    return dx.contiguous(memory_format=torch._prims_common.suggest_memory_format(grad_out))


@torch.library.register_fake("sparsecl::slimmable_conv2d_dw_")
def _(grad_out, x, mask, grad_weight, stride, padding, dilation):
    _check_slim(x, grad_weight, mask, 4)


# csr_update / csr_transpose: incremental CSRLayout topology change and the transposed index ------------


@torch.library.register_fake("sparsecl::csr_update")
def _(row_ptr, col_idx, in_features, keep, grow):
    torch._check(keep.dtype == torch.bool and keep.shape == col_idx.shape, lambda: "keep must be bool [nnz]")
    torch._check(grow.dtype == torch.int64 and grow.dim() == 1, lambda: "grow must be int64 1-D")
    n_new = torch.library.get_ctx().new_dynamic_size()
    idx = [col_idx.new_empty((n,)) for n in (row_ptr.shape[0], n_new, n_new, in_features + 1, n_new, n_new)]
    return (*idx, grow.new_empty((n_new,)))


@torch.library.register_fake("sparsecl::csr_transpose")
def _(row_ptr, col_idx, n_cols):
    torch._check(row_ptr.dtype == torch.int32 and col_idx.dtype == torch.int32, lambda: "indices must be int32")
    nnz = col_idx.shape[0]
    return col_idx.new_empty((nnz,)), row_ptr.new_empty((n_cols + 1,)), col_idx.new_empty((nnz,)), \
        col_idx.new_empty((nnz,))


@torch.library.register_fake("sparsecl::csr_mask_delta")
def _(row_ptr, col_idx, new_mask):
    torch._check(new_mask.dtype == torch.bool and new_mask.dim() == 2, lambda: "new_mask must be a 2-D bool tensor")
    torch._check(row_ptr.shape[0] == new_mask.shape[0] + 1, lambda: "row_ptr must have out + 1 entries")
    n_grow = torch.library.get_ctx().new_dynamic_size()
    return new_mask.new_empty(col_idx.shape), col_idx.new_empty((n_grow,), dtype=torch.int64)


# random_scores_: fills a float32 tensor in place ---------------------------------------------------


@torch.library.register_fake("sparsecl::random_scores_")
def _(out, seed):
    torch._check(out.dtype == torch.float32, lambda: f"out must be float32, got {out.dtype}")
    torch._check(out.is_contiguous(), lambda: "out must be contiguous")


# prune_regrow: in place on weights (float) and masks (bool), returns int64 [L] changed positions --------


@torch.library.register_fake("sparsecl::prune_regrow")
def _(weights, masks, prune_scores, grow_scores, counts, eligible):
    n = len(weights)
    torch._check(len(masks) == n and len(prune_scores) == n and len(grow_scores) == n,
                 lambda: "weights, masks, prune_scores and grow_scores must have one entry per layer")
    torch._check(len(eligible) in (0, n), lambda: "eligible must be empty or have one entry per layer")
    torch._check(counts.dtype == torch.int64 and counts.dim() == 1 and counts.shape[0] == n,
                 lambda: f"counts must be int64 [{n}]")
    for m, p, g in zip(masks, prune_scores, grow_scores):
        torch._check(m.dtype == torch.bool, lambda: f"masks must be bool, got {m.dtype}")
        torch._check(p.shape == m.shape and g.shape == m.shape, lambda: "scores must have the mask's shape")
    return counts.new_empty((n,))


# bsr_conv2d / csr_conv2d: conv2d with W viewed as [out, in*kh*kw]; outputs in the input's memory format ---


def _conv_like(t, shape):
    return t.new_empty(shape).contiguous(memory_format=torch._prims_common.suggest_memory_format(t))


def _check_conv_x(x, values, name="x"):
    torch._check(x.dim() == 4, lambda: f"{name} must be 4-D [N, C, H, W], got {x.dim()}-D")
    torch._check(values.dtype == x.dtype, lambda: f"values dtype {values.dtype} != {x.dtype}")


@torch.library.register_fake("sparsecl::bsr_conv2d")
def _(x, values, row_ptr, col_idx, out_channels, bias, stride, padding, dilation):
    _check_conv_x(x, values)
    torch._check(values.dim() == 5, lambda: f"values must be [nnzb, B, B, kh, kw], got {tuple(values.shape)}")
    if bias is not None:
        torch._check(bias.shape == (out_channels,), lambda: f"bias must be [{out_channels}]")
    ho = _conv_out(x.shape[2], values.shape[3], stride[0], padding[0], dilation[0])
    wo = _conv_out(x.shape[3], values.shape[4], stride[1], padding[1], dilation[1])
    return _conv_like(x, (x.shape[0], out_channels, ho, wo))


@torch.library.register_fake("sparsecl::bsr_conv2d_dx")
def _(grad_out, values, t_row_ptr, t_col_idx, t_perm, x_shape, stride, padding, dilation):
    _check_conv_x(grad_out, values, "grad_out")
    return _conv_like(grad_out, tuple(x_shape))


@torch.library.register_fake("sparsecl::bsr_conv2d_dw")
def _(grad_out, x, row_idx, col_idx, block_size, kernel_size, stride, padding, dilation):
    torch._check(grad_out.dim() == 4 and x.dim() == 4, lambda: "grad_out and x must be 4-D")
    return x.new_empty((col_idx.shape[0], block_size, block_size, kernel_size[0], kernel_size[1]))


@torch.library.register_fake("sparsecl::csr_conv2d")
def _(x, values, row_ptr, col_idx, out_channels, kernel_size, bias, stride, padding, dilation):
    _check_conv_x(x, values)
    _check_csr_values(values, x, col_idx)
    torch._check(row_ptr.shape[0] == out_channels + 1, lambda: f"row_ptr must have {out_channels + 1} entries")
    if bias is not None:
        torch._check(bias.shape == (out_channels,), lambda: f"bias must be [{out_channels}]")
    ho = _conv_out(x.shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
    wo = _conv_out(x.shape[3], kernel_size[1], stride[1], padding[1], dilation[1])
    return _conv_like(x, (x.shape[0], out_channels, ho, wo))


@torch.library.register_fake("sparsecl::csr_conv2d_dx")
def _(grad_out, values, t_row_ptr, t_col_idx, t_perm, x_shape, kernel_size, stride, padding, dilation):
    _check_conv_x(grad_out, values, "grad_out")
    return _conv_like(grad_out, tuple(x_shape))


@torch.library.register_fake("sparsecl::csr_conv2d_dw")
def _(grad_out, x, row_idx, col_idx, kernel_size, stride, padding, dilation):
    torch._check(grad_out.dim() == 4 and x.dim() == 4, lambda: "grad_out and x must be 4-D")
    return x.new_empty((col_idx.shape[0],))
