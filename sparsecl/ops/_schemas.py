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
