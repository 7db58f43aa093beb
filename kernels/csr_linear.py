"""Unstructured (element-granular CSR) linear in Triton: y = x @ W.T (+ bias), dX = dY @ W, dValues.

W [out, in] is stored as CSR: ``values[nnz]``, int32 ``row_ptr[out+1]`` / ``col_idx[nnz]``; the backward
dX walks the transposed index (``t_row_ptr[in+1]``, ``t_col_idx``, ``t_perm`` into values), so no
second copy of the values exists.

* SpMM (forward and dX): merge-based balancing. Each program owns a fixed slice of NNZ_PER_PROG
  nonzeros (not a fixed set of rows) and a tile of BLOCK_T tokens, so one very long row is split
  across programs and many short/empty rows share one; skewed rows cannot stall the grid. A program
  finds its first row by binary search in row_ptr, walks the rows its slice intersects, gathers
  ``x[t, col]`` for NZ nonzeros at a time, and adds each row's partial sum into an fp32 (fp64 for
  fp64) output that was prefilled with the bias (atomic add: a row cut by a slice boundary gets
  several contributions).
* SDDMM (dValues): each program owns NZ nonzeros and reduces dY[:, row] * x[:, col] over token tiles.

On CUDA the launchers gather from transposed copies (x^T [in, T]) so a nonzero's token vector is one
contiguous load; the kernels take strides, so any layout works. Accumulation is fp32 (fp64 for fp64).
Launchers run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launchable

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@triton.jit
def _spmm_merge(x_ptr, v_ptr, out_ptr, ptr_ptr, idx_ptr, perm_ptr, n_tokens, n_rows, nnz,
                stride_xt, stride_xk, stride_ot, stride_on,
                HAS_PERM: tl.constexpr, FP64: tl.constexpr,
                NNZ_PER_PROG: tl.constexpr, NZ: tl.constexpr, BLOCK_T: tl.constexpr):
    """out[t, r] += sum_{j in row r, j in this slice} x[t, idx[j]] * v[perm[j] or j]."""
    start = tl.program_id(0) * NNZ_PER_PROG
    end = tl.minimum(start + NNZ_PER_PROG, nnz)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_tokens
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * stride_xt
    out_rows = out_ptr + offs_t.to(tl.int64) * stride_ot
    # first row: the last r < n_rows with row_ptr[r] <= start (row_ptr[n_rows] = nnz > start)
    lo = tl.program_id(0) * 0
    hi = lo + n_rows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tl.load(ptr_ptr + mid) <= start:
            lo = mid
        else:
            hi = mid
    r = lo
    pos = start
    while pos < end:
        seg_end = tl.minimum(tl.load(ptr_ptr + r + 1), end)
        if seg_end > pos:
            if FP64:
                acc = tl.zeros((BLOCK_T,), dtype=tl.float64)
            else:
                acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
            for j0 in range(pos, seg_end, NZ):
                j = j0 + tl.arange(0, NZ)
                mj = j < seg_end
                col = tl.load(idx_ptr + j, mask=mj, other=0)
                if HAS_PERM:
                    vj = tl.load(perm_ptr + j, mask=mj, other=0)
                else:
                    vj = j
                v = tl.load(v_ptr + vj, mask=mj, other=0.0).to(acc.dtype)
                xg = tl.load(x_rows + col.to(tl.int64)[None, :] * stride_xk, mask=mask_t[:, None] & mj[None, :],
                             other=0.0)
                acc += tl.sum(xg.to(acc.dtype) * v[None, :], axis=1)
            tl.atomic_add(out_rows + r * stride_on, acc, mask=mask_t)
        pos = seg_end
        r += 1


@triton.jit
def _sddmm(g_ptr, x_ptr, out_ptr, row_ptr, col_ptr, n_tokens, nnz,
           stride_gt, stride_gn, stride_xt, stride_xk,
           FP64: tl.constexpr, NZ: tl.constexpr, BLOCK_T: tl.constexpr):
    """out[j] = sum_t g[t, row[j]] * x[t, col[j]] for NZ nonzeros j per program."""
    j = tl.program_id(0) * NZ + tl.arange(0, NZ)
    mj = j < nnz
    r = tl.load(row_ptr + j, mask=mj, other=0).to(tl.int64)
    c = tl.load(col_ptr + j, mask=mj, other=0).to(tl.int64)
    if FP64:
        acc = tl.zeros((NZ,), dtype=tl.float64)
    else:
        acc = tl.zeros((NZ,), dtype=tl.float32)
    offs = tl.arange(0, BLOCK_T)
    for t0 in range(0, n_tokens, BLOCK_T):
        t = (t0 + offs).to(tl.int64)
        m = (t < n_tokens)[:, None] & mj[None, :]
        g = tl.load(g_ptr + t[:, None] * stride_gt + r[None, :] * stride_gn, mask=m, other=0.0)
        xx = tl.load(x_ptr + t[:, None] * stride_xt + c[None, :] * stride_xk, mask=m, other=0.0)
        acc += tl.sum(g.to(acc.dtype) * xx.to(acc.dtype), axis=0)
    tl.store(out_ptr + j, acc.to(out_ptr.dtype.element_ty), mask=mj)


def check(cond, msg):
    if not cond:
        raise ValueError(msg)


def check_float(t, name):
    check(t.dtype in _FLOATS, f"{name} has unsupported dtype {t.dtype} (float32, float64, float16, bfloat16)")


def check_like(t, like, name, like_name):
    check(t.dtype == like.dtype, f"{name} dtype {t.dtype} != {like_name} dtype {like.dtype}")
    check(t.device == like.device, f"{name} is on {t.device} but {like_name} is on {like.device}")


def _check_index(t, name, n=None, like=None):
    check(t.dtype == torch.int32 and t.dim() == 1, f"{name} must be a 1-D int32 tensor, got {t.dtype} "
          f"{tuple(t.shape)}")
    if n is not None:
        check(t.shape[0] == n, f"{name} must have {n} entries, got {t.shape[0]}")
    if like is not None:
        check(t.device == like.device, f"{name} is on {t.device} but the data is on {like.device}")


def _check_values(values, like, name):
    check(values.dim() == 1, f"values must be 1-D [nnz], got {tuple(values.shape)}")
    check_like(values, like, "values", name)


def _token_major(a):
    """``a`` [T, K] as a view whose storage is [K, T] on CUDA (gathers of a column are contiguous)."""
    if a.is_cuda and a.stride(0) != 1:
        return a.t().contiguous().t()
    return a


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spmm_meta(T, device):
    if device.type != "cuda":
        return dict(NNZ_PER_PROG=32, NZ=8, BLOCK_T=8), {}
    bt = min(128, max(16, triton.next_power_of_2(T)))
    return dict(NNZ_PER_PROG=256 if T <= 64 else 1024, NZ=32 if bt >= 64 else 64, BLOCK_T=bt), \
        dict(num_warps=4)


def _spmm(a, values, out_features, ptr, idx, perm, bias):
    """[T, out_features] = sum over the CSR (ptr, idx, perm) of a[:, idx] * values, plus bias."""
    T = a.shape[0]
    acc_dtype = _acc_dtype(a.dtype)
    out = torch.empty((T, out_features), dtype=acc_dtype, device=a.device)  # never a view of bias: it is added into
    if bias is not None:
        out.copy_(bias)
    else:
        out.zero_()
    nnz = idx.shape[0]
    if T and nnz:
        a = _token_major(a)
        meta, opts = _spmm_meta(T, a.device)
        grid = (triton.cdiv(nnz, meta["NNZ_PER_PROG"]), triton.cdiv(T, meta["BLOCK_T"]))
        launchable(_spmm_merge, a.device)[grid](
            a, values, out, ptr, idx, perm if perm is not None else idx, T, out_features, nnz,
            a.stride(0), a.stride(1), out.stride(0), out.stride(1),
            HAS_PERM=perm is not None, FP64=a.dtype == torch.float64, **meta, **opts)
    return out if out.dtype == a.dtype else out.to(a.dtype)


def csr_index(mask: torch.Tensor):
    """Every CSR index of bool ``mask`` [out, in], built with torch ops (for tests and benchmarks that call the
    launchers without sparsecl.formats): int32 (row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm), columns
    sorted within rows; values in row-major order are ``w[mask]``."""
    out_f, in_f = mask.shape
    rows, cols = mask.nonzero(as_tuple=True)
    row_ptr = torch.zeros(out_f + 1, dtype=torch.int64, device=mask.device)
    row_ptr[1:] = torch.bincount(rows, minlength=out_f).cumsum(0)
    t_perm = torch.argsort(cols * out_f + rows)
    t_row_ptr = torch.zeros(in_f + 1, dtype=torch.int64, device=mask.device)
    t_row_ptr[1:] = torch.bincount(cols, minlength=in_f).cumsum(0)
    return tuple(t.to(torch.int32).contiguous() for t in (row_ptr, cols, rows, t_row_ptr, rows[t_perm], t_perm))


def csr_linear_forward(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                       out_features: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [T, out_features] = x [T, in] @ W.T (+ bias); W given by CSR (values, row_ptr, col_idx). x may be strided."""
    check(x.dim() == 2, f"x must be 2-D [tokens, in_features], got {tuple(x.shape)}")
    check_float(x, "x")
    _check_values(values, x, "x")
    _check_index(row_ptr, "row_ptr", out_features + 1, x)
    _check_index(col_idx, "col_idx", values.shape[0], x)
    if bias is not None:
        check(bias.shape == (out_features,), f"bias must be [{out_features}], got {tuple(bias.shape)}")
        check_like(bias, x, "bias", "x")
    return _spmm(x, values.contiguous(), out_features, row_ptr, col_idx, None, bias)


def csr_linear_dx(grad_out: torch.Tensor, values: torch.Tensor, t_row_ptr: torch.Tensor, t_col_idx: torch.Tensor,
                  t_perm: torch.Tensor, in_features: int) -> torch.Tensor:
    """dX [T, in_features] = grad_out [T, out] @ W, over the transposed index (t_perm points into values)."""
    check(grad_out.dim() == 2, f"grad_out must be 2-D [tokens, out_features], got {tuple(grad_out.shape)}")
    check_float(grad_out, "grad_out")
    _check_values(values, grad_out, "grad_out")
    _check_index(t_row_ptr, "t_row_ptr", in_features + 1, grad_out)
    _check_index(t_col_idx, "t_col_idx", values.shape[0], grad_out)
    _check_index(t_perm, "t_perm", values.shape[0], grad_out)
    return _spmm(grad_out, values.contiguous(), in_features, t_row_ptr, t_col_idx, t_perm, None)


def csr_linear_dw(grad_out: torch.Tensor, x: torch.Tensor, row_idx: torch.Tensor,
                  col_idx: torch.Tensor) -> torch.Tensor:
    """dValues [nnz]: dv[j] = sum_t grad_out[t, row_idx[j]] * x[t, col_idx[j]] (SDDMM at the nonzeros only)."""
    check(grad_out.dim() == 2 and x.dim() == 2 and grad_out.shape[0] == x.shape[0],
          f"grad_out [T, out] and x [T, in] must be 2-D with equal T, got {tuple(grad_out.shape)} and "
          f"{tuple(x.shape)}")
    check_float(x, "x")
    check_like(grad_out, x, "grad_out", "x")
    _check_index(row_idx, "row_idx", None, x)
    _check_index(col_idx, "col_idx", row_idx.shape[0], x)
    nnz = col_idx.shape[0]
    T = x.shape[0]
    if nnz == 0 or T == 0:
        return torch.zeros((nnz,), dtype=x.dtype, device=x.device)
    dv = torch.empty((nnz,), dtype=x.dtype, device=x.device)
    g, xx = _token_major(grad_out), _token_major(x)
    if x.is_cuda:
        meta = dict(NZ=32, BLOCK_T=min(128, max(16, triton.next_power_of_2(T))), num_warps=4)
    else:
        meta = dict(NZ=8, BLOCK_T=8)
    launchable(_sddmm, x.device)[(triton.cdiv(nnz, meta["NZ"]),)](
        g, xx, dv, row_idx, col_idx, T, nnz, g.stride(0), g.stride(1), xx.stride(0), xx.stride(1),
        FP64=x.dtype == torch.float64, **meta)
    return dv
