"""Block-sparse linear in Triton: y = x @ W.T (+ bias), dX = dY @ W, dValues = SDDMM at active blocks.

W [out, in] is stored as BSR blocks ``values[nnzb, B, B]`` (values[k] = W[rb*B:, cb*B:]).

* One gather-GEMM kernel serves the forward and dX. A program owns a tile of BLOCK_T tokens and
  one output block (B features) and loops over that block's nonzero blocks with ``tl.dot``:
  forward walks a block row (row_ptr/col_idx) and uses each W block transposed; dX walks a block
  column through the transposed index (t_row_ptr/t_col_idx/t_perm) and uses W blocks as stored,
  so no second copy of the values exists.
* dValues: one program per active block accumulates dY[:, o-block]^T @ x[:, i-block] over token tiles.

Accumulation is fp32 (fp64 for fp64 inputs). Features need not be multiples of B: loads are masked,
so the padding entries of edge blocks are never read, and their gradient is written as 0.
fp32 uses IEEE products unless ``torch.backends.cuda.matmul.allow_tf32`` is set (like cuBLAS).
Launchers take torch tensors; they run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
SPARSECL_TRITON_AUTOTUNE=0 (read per call) replaces autotuning by the first config of each list:
the CUDA test suite uses it so that it compiles one variant per kernel instead of one per config.
``t_bucket`` (next power of two of the token count) is a kernel argument only so autotuning is keyed on it.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launchable

# Autotune configs (CUDA only; the interpreter runs the plain kernels with *_INTERPRET_META).
# SWAP computes the transposed tile (W block @ a^T: M = B features, N = BLOCK_T tokens), which suits
# Hopper's wgmma (N up to 256) better than M = BLOCK_T, N = B; the autotuner decides.
GATHER_CONFIGS = [
    triton.Config({"BLOCK_T": bt, "GROUP": 8, "SWAP": sw}, num_warps=w, num_stages=s)
    for bt, w, s, sw in [(128, 4, 3, False), (64, 4, 4, False), (128, 8, 4, False), (256, 8, 3, False),
                         (128, 4, 4, True), (256, 4, 3, True), (256, 8, 3, True), (128, 8, 4, True)]
]
SDDMM_CONFIGS = [
    triton.Config({"BLOCK_T": bt}, num_warps=w, num_stages=s)
    for bt, w, s in [(32, 4, 4), (64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (128, 8, 4)]
]
GATHER_INTERPRET_META = {"BLOCK_T": 16, "GROUP": 8, "SWAP": False}
SDDMM_INTERPRET_META = {"BLOCK_T": 16}


@triton.jit
def _gathered_block(idx_ptr, perm_ptr, j, end, B: tl.constexpr, HAS_PERM: tl.constexpr):
    """Entry j of a block row: (first feature of the block column it reads, index of its values block;
    through perm_ptr for the transposed index). j >= end (past the row) reads nothing and gives (0, 0)."""
    k0 = tl.load(idx_ptr + j, mask=j < end, other=0) * B
    if HAS_PERM:
        blk = tl.load(perm_ptr + j, mask=j < end, other=0)
    else:
        blk = j
    return k0, blk


@triton.jit
def _gather_mm(a_ptr, w_ptr, bias_ptr, out_ptr, ptr_ptr, idx_ptr, perm_ptr,
               n_tokens, k_feat, n_feat, n_blocks, t_bucket,
               stride_at, stride_ak, stride_ot,
               B: tl.constexpr, W_T: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
               EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, FP64: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_T: tl.constexpr, GROUP: tl.constexpr, SWAP: tl.constexpr):
    """out[t, nb*B + n] = sum_j a[t, idx[j]*B + k] * Wj[k, n] over j in ptr[nb]:ptr[nb+1]."""
    # grouped order: GROUP output blocks x all token tiles, so a tile of `a` is reused from L2
    pid = tl.program_id(0)
    n_t = tl.cdiv(n_tokens, BLOCK_T)
    per_group = GROUP * n_t
    first = (pid // per_group) * GROUP
    size = tl.minimum(n_blocks - first, GROUP)
    nb = first + (pid % per_group) % size
    tt = (pid % per_group) // size

    offs_t = tt * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_b = tl.arange(0, B)
    mask_t = offs_t < n_tokens
    n0 = nb * B
    mask_n = (n0 + offs_b) < n_feat
    a_rows = a_ptr + offs_t.to(tl.int64)[:, None] * stride_at
    ACC = tl.float64 if FP64 else tl.float32
    if SWAP:
        acc = tl.zeros((B, BLOCK_T), dtype=ACC)
    else:
        acc = tl.zeros((BLOCK_T, B), dtype=ACC)
    start = tl.load(ptr_ptr + nb)
    end = tl.load(ptr_ptr + nb + 1)
    # index prefetch: entry j+1's index is loaded in iteration j (registers, loop-carried), so the tile
    # loads do not wait on an index load, and Triton pipelines them num_stages deep (with the index
    # loaded in the same iteration it kept a 1x1 shared index tile and two tile buffers for 3-4 stages)
    k0_next, blk_next = _gathered_block(idx_ptr, perm_ptr, start, end, B, HAS_PERM)
    for j in range(start, end):
        k0, blk = k0_next, blk_next
        k0_next, blk_next = _gathered_block(idx_ptr, perm_ptr, j + 1, end, B, HAS_PERM)
        mask_k = (k0 + offs_b) < k_feat
        if EVEN_K:
            a = tl.load(a_rows + (k0 + offs_b)[None, :] * stride_ak, mask=mask_t[:, None], other=0.0)
        else:
            a = tl.load(a_rows + (k0 + offs_b)[None, :] * stride_ak, mask=mask_t[:, None] & mask_k[None, :],
                        other=0.0)
        wb = w_ptr + blk.to(tl.int64) * (B * B)
        if W_T:  # forward: w[k=i, n=o] = W[o, i]
            w_ptrs = wb + offs_b[None, :] * B + offs_b[:, None]
        else:  # dX: w[k=o, n=i] = W[o, i]
            w_ptrs = wb + offs_b[:, None] * B + offs_b[None, :]
        if EVEN_K and EVEN_N:
            w = tl.load(w_ptrs)
        else:  # edge block: its padding entries are never read
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if SWAP:
            acc = tl.dot(tl.trans(w), tl.trans(a), acc, input_precision=PRECISION, out_dtype=ACC)
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=ACC)
    if SWAP:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n0 + offs_b, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    out = out_ptr + offs_t.to(tl.int64)[:, None] * stride_ot + (n0 + offs_b)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


@triton.jit
def _sddmm(g_ptr, x_ptr, out_ptr, row_idx_ptr, col_idx_ptr, n_tokens, out_f, in_f, t_bucket,
           stride_gt, stride_go, stride_xt, stride_xi,
           B: tl.constexpr, FP64: tl.constexpr, PRECISION: tl.constexpr, BLOCK_T: tl.constexpr):
    """out[k, o, i] = sum_t g[t, row_idx[k]*B + o] * x[t, col_idx[k]*B + i] (0 outside the matrix)."""
    k = tl.program_id(0)
    o0 = tl.load(row_idx_ptr + k) * B
    i0 = tl.load(col_idx_ptr + k) * B
    offs_b = tl.arange(0, B)
    offs_t = tl.arange(0, BLOCK_T)
    mask_o = (o0 + offs_b) < out_f
    mask_i = (i0 + offs_b) < in_f
    ACC = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((B, B), dtype=ACC)
    for t0 in range(0, n_tokens, BLOCK_T):
        t = (t0 + offs_t).to(tl.int64)
        mt = t < n_tokens
        g = tl.load(g_ptr + t[:, None] * stride_gt + (o0 + offs_b)[None, :] * stride_go,
                    mask=mt[:, None] & mask_o[None, :], other=0.0)
        xx = tl.load(x_ptr + t[:, None] * stride_xt + (i0 + offs_b)[None, :] * stride_xi,
                     mask=mt[:, None] & mask_i[None, :], other=0.0)
        acc = tl.dot(tl.trans(g), xx, acc, input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + k.to(tl.int64) * (B * B) + offs_b[:, None] * B + offs_b[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty))


_GATHER_KEY = ["B", "t_bucket", "k_feat", "n_feat", "W_T"]
_SDDMM_KEY = ["B", "t_bucket", "out_f", "in_f"]
_gather_mm_tuned = triton.autotune(GATHER_CONFIGS, key=_GATHER_KEY)(_gather_mm)
_sddmm_tuned = triton.autotune(SDDMM_CONFIGS, key=_SDDMM_KEY)(_sddmm)
_gather_mm_fixed = triton.autotune(GATHER_CONFIGS[:1], key=_GATHER_KEY)(_gather_mm)
_sddmm_fixed = triton.autotune(SDDMM_CONFIGS[:1], key=_SDDMM_KEY)(_sddmm)

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _precision(dtype, device):
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32 and not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"  # ignored for 16-bit inputs


def _check(cond, msg):
    if not cond:
        raise ValueError(msg)


def _check_float(t, name):
    _check(t.dtype in _FLOATS, f"{name} has unsupported dtype {t.dtype} (float32, float64, float16, bfloat16)")


def _check_values(values, like, name):
    _check(values.dim() == 3 and values.shape[1] == values.shape[2] and values.shape[1] in (16, 32, 64),
           f"values must be [nnzb, B, B] with B in (16, 32, 64), got {tuple(values.shape)}")
    _check(values.dtype == like.dtype, f"values dtype {values.dtype} != {name} dtype {like.dtype}")
    _check(values.device == like.device, f"values is on {values.device} but {name} is on {like.device}")


def _check_index(t, name, n=None):
    _check(t.dtype == torch.int32 and t.dim() == 1, f"{name} must be a 1-D int32 tensor, got {t.dtype} "
           f"{tuple(t.shape)}")
    if n is not None:
        _check(t.shape[0] == n, f"{name} must have {n} entries, got {t.shape[0]}")


def _pick(tuned, fixed, plain, interpret_meta, device):
    """(kernel, meta): autotuned (or one fixed config) on CUDA, small tiles in the interpreter."""
    if device.type == "cuda":
        return launchable(tuned if os.environ.get("SPARSECL_TRITON_AUTOTUNE", "1") != "0" else fixed, device), {}
    return launchable(plain, device), dict(interpret_meta)


def _gather(a, values, bias, out, ptr, idx, perm, k_feat, n_feat, w_t):
    T = a.shape[0]
    B = values.shape[1]
    n_blocks = ptr.shape[0] - 1
    kernel, meta = _pick(_gather_mm_tuned, _gather_mm_fixed, _gather_mm, GATHER_INTERPRET_META, a.device)
    kernel[lambda m: (triton.cdiv(T, m["BLOCK_T"]) * n_blocks,)](
        a, values, bias if bias is not None else values, out, ptr, idx, perm if perm is not None else idx,
        T, k_feat, n_feat, n_blocks, triton.next_power_of_2(T),
        a.stride(0), a.stride(1), out.stride(0),
        B=B, W_T=w_t, HAS_PERM=perm is not None, HAS_BIAS=bias is not None,
        EVEN_K=k_feat % B == 0, EVEN_N=n_feat % B == 0, FP64=a.dtype == torch.float64,
        PRECISION=_precision(a.dtype, a.device), **meta)


def bsr_linear_forward(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                       out_features: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [T, out_features] = x [T, in] @ W.T (+ bias); W given by (values, row_ptr, col_idx). x may be strided."""
    _check(x.dim() == 2, f"x must be 2-D [tokens, in_features], got {tuple(x.shape)}")
    _check_float(x, "x")
    _check_values(values, x, "x")
    B = values.shape[1]
    _check_index(row_ptr, "row_ptr", triton.cdiv(out_features, B) + 1)
    _check_index(col_idx, "col_idx", values.shape[0])
    if bias is not None:
        _check(bias.shape == (out_features,) and bias.dtype == x.dtype and bias.device == x.device,
               f"bias must be [{out_features}] of x's dtype and device, got {tuple(bias.shape)} {bias.dtype}")
        bias = bias.contiguous()
    y = torch.empty((x.shape[0], out_features), dtype=x.dtype, device=x.device)
    if y.numel():
        _gather(x, values.contiguous(), bias, y, row_ptr, col_idx, None, x.shape[1], out_features, True)
    return y


def bsr_linear_dx(grad_out: torch.Tensor, values: torch.Tensor, t_row_ptr: torch.Tensor, t_col_idx: torch.Tensor,
                  t_perm: torch.Tensor, in_features: int) -> torch.Tensor:
    """dX [T, in_features] = grad_out [T, out] @ W, over the transposed index (t_perm points into values)."""
    _check(grad_out.dim() == 2, f"grad_out must be 2-D [tokens, out_features], got {tuple(grad_out.shape)}")
    _check_float(grad_out, "grad_out")
    _check_values(values, grad_out, "grad_out")
    B = values.shape[1]
    _check_index(t_row_ptr, "t_row_ptr", triton.cdiv(in_features, B) + 1)
    _check_index(t_col_idx, "t_col_idx", values.shape[0])
    _check_index(t_perm, "t_perm", values.shape[0])
    dx = torch.empty((grad_out.shape[0], in_features), dtype=grad_out.dtype, device=grad_out.device)
    if dx.numel():
        _gather(grad_out, values.contiguous(), None, dx, t_row_ptr, t_col_idx, t_perm, grad_out.shape[1],
                in_features, False)
    return dx


def bsr_linear_dw(grad_out: torch.Tensor, x: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
                  block_size: int) -> torch.Tensor:
    """dValues [nnzb, B, B]: grad_out[:, block row]^T @ x[:, block col] at each active block (padding 0)."""
    _check(grad_out.dim() == 2 and x.dim() == 2 and grad_out.shape[0] == x.shape[0],
           f"grad_out [T, out] and x [T, in] must be 2-D with equal T, got {tuple(grad_out.shape)} and "
           f"{tuple(x.shape)}")
    _check_float(x, "x")
    _check(grad_out.dtype == x.dtype and grad_out.device == x.device, "grad_out must match x's dtype and device")
    _check(block_size in (16, 32, 64), f"block_size must be 16, 32 or 64, got {block_size}")
    _check_index(row_idx, "row_idx")
    _check_index(col_idx, "col_idx", row_idx.shape[0])
    B = block_size
    nnzb = col_idx.shape[0]
    dv = torch.empty((nnzb, B, B), dtype=x.dtype, device=x.device)
    if nnzb == 0:
        return dv
    T = x.shape[0]
    kernel, meta = _pick(_sddmm_tuned, _sddmm_fixed, _sddmm, SDDMM_INTERPRET_META, x.device)
    kernel[(nnzb,)](
        grad_out, x, dv, row_idx, col_idx, T, grad_out.shape[1], x.shape[1], triton.next_power_of_2(T),
        grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1),
        B=B, FP64=x.dtype == torch.float64, PRECISION=_precision(x.dtype, x.device),
        **meta)
    return dv
