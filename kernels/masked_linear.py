"""Masked linear in Triton: y = x @ (W*M).T (+ bias), dX = dY @ (W*M), dW = (dY.T @ x) * G.

One tiled GEMM kernel ``C[m, n] = sum_k A[m, k] * B[k, n]`` with arbitrary strides serves all three:
* forward: A = x, B[k, n] = W[n, k] with the bool mask applied as each weight tile is loaded
  (``where(mask, w, 0)`` in registers), so ``weight*mask`` is never written to memory; bias in the epilogue;
* dX: A = grad_out, B[k, n] = W[k, n], masked the same way;
* dW: A[m, k] = grad_out[k, m], B = x, and the epilogue writes exact zeros outside ``grad_mask``.
Bool masks are read as uint8 (same storage). Accumulation is fp32 (fp64 for fp64, without tl.dot); fp32 uses IEEE
products unless ``torch.backends.cuda.matmul.allow_tf32`` is set (like cuBLAS).
Launchers run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
SPARSECL_TRITON_AUTOTUNE=0 (read per call) replaces autotuning by the first config.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launchable
from .csr_linear import check, check_float, check_like

# The first config is the fixed one under SPARSECL_TRITON_AUTOTUNE=0.
CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [(64, 64, 32, 4, 3), (128, 128, 32, 4, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
                             (64, 128, 64, 4, 4), (16, 128, 64, 4, 4), (32, 128, 64, 4, 4)]
]
_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP": 4}
_FP64_META = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 8, "GROUP": 8}


@triton.jit
def _masked_mm(a_ptr, b_ptr, bm_ptr, cm_ptr, bias_ptr, c_ptr, M, N, K, m_bucket,
               s_am, s_ak, s_bk, s_bn, s_mk, s_mn, s_cmm, s_cmn, s_cm, s_cn,
               B_MASK: tl.constexpr, C_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, FP64: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP: tl.constexpr):
    """c = a @ where(bmask, b, 0) (+ bias[n]), then c = where(cmask, c, 0)."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP * n_n
    first_m = (pid // per_group) * GROUP
    size = tl.minimum(n_m - first_m, GROUP)
    pm = first_m + (pid % per_group) % size
    pn = (pid % per_group) // size
    offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mm = offs_m < M
    mn = offs_n < N
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * s_am + offs_k[None, :] * s_ak
    b_ptrs = b_ptr + offs_k[:, None] * s_bk + offs_n.to(tl.int64)[None, :] * s_bn
    m_ptrs = bm_ptr + offs_k[:, None] * s_mk + offs_n.to(tl.int64)[None, :] * s_mn
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mk = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=mm[:, None] & mk[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mk[:, None] & mn[None, :], other=0.0)
        if B_MASK:
            keep = tl.load(m_ptrs, mask=mk[:, None] & mn[None, :], other=0)
            b = tl.where(keep != 0, b, tl.zeros_like(b))
            m_ptrs += BLOCK_K * s_mk
        if FP64:  # Triton's fp64 MMA lowering asserts on these operands (seen with triton 3.8, sm_90)
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mn, other=0.0).to(acc.dtype)[None, :]
    if C_MASK:
        keep = tl.load(cm_ptr + offs_m.to(tl.int64)[:, None] * s_cmm + offs_n[None, :] * s_cmn,
                       mask=mm[:, None] & mn[None, :], other=0)
        acc = tl.where(keep != 0, acc, tl.zeros_like(acc))
    c = c_ptr + offs_m.to(tl.int64)[:, None] * s_cm + offs_n[None, :] * s_cn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=mm[:, None] & mn[None, :])


_TUNE_KEY = ["m_bucket", "N", "K", "B_MASK", "C_MASK"]
_masked_mm_tuned = triton.autotune(CONFIGS, key=_TUNE_KEY)(_masked_mm)
_masked_mm_fixed = triton.autotune(CONFIGS[:1], key=_TUNE_KEY)(_masked_mm)


def _precision(dtype, device):
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32 and not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"  # ignored for 16-bit inputs


def _mm(a, b, c, b_mask=None, c_mask=None, bias=None):
    """c [M, N] = a [M, K] @ where(b_mask, b, 0) [K, N] (+ bias), zeroed outside c_mask. All strided views."""
    M, K = a.shape
    N = b.shape[1]
    if a.is_cuda and a.dtype == torch.float64:  # a correctness path: small tiles, no tensor cores
        kernel, meta = launchable(_masked_mm, a.device), dict(_FP64_META, num_warps=4)
    elif a.is_cuda:
        tune = os.environ.get("SPARSECL_TRITON_AUTOTUNE", "1") != "0"
        kernel, meta = launchable(_masked_mm_tuned if tune else _masked_mm_fixed, a.device), {}
    else:
        kernel, meta = launchable(_masked_mm, a.device), _INTERPRET_META
    bm = b_mask.view(torch.uint8) if b_mask is not None else b
    cm = c_mask.view(torch.uint8) if c_mask is not None else c
    kernel[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)](
        a, b, bm, cm, bias if bias is not None else c, c, M, N, K, triton.next_power_of_2(M),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), bm.stride(0), bm.stride(1), cm.stride(0), cm.stride(1),
        c.stride(0), c.stride(1),
        B_MASK=b_mask is not None, C_MASK=c_mask is not None, HAS_BIAS=bias is not None,
        FP64=a.dtype == torch.float64, PRECISION=_precision(a.dtype, a.device), **meta)
    return c


def _check_weight_mask(weight, mask, like, name, mask_name="mask"):
    check(weight.dim() == 2, f"weight must be 2-D [out, in], got {tuple(weight.shape)}")
    check_like(weight, like, "weight", name)
    check(mask.dtype == torch.bool and mask.shape == weight.shape,
          f"{mask_name} must be a bool tensor of weight's shape {tuple(weight.shape)}, got {mask.dtype} "
          f"{tuple(mask.shape)}")
    check(mask.device == like.device, f"{mask_name} is on {mask.device} but {name} is on {like.device}")


def masked_linear_forward(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                          bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [T, out] = x [T, in] @ (weight * mask).T (+ bias); weight [out, in] float, mask bool [out, in]."""
    check(x.dim() == 2, f"x must be 2-D [tokens, in_features], got {tuple(x.shape)}")
    check_float(x, "x")
    _check_weight_mask(weight, mask, x, "x")
    out_f, in_f = weight.shape
    check(x.shape[1] == in_f, f"x has {x.shape[1]} input features but weight expects {in_f}")
    if bias is not None:
        check(bias.shape == (out_f,), f"bias must be [{out_f}], got {tuple(bias.shape)}")
        check_like(bias, x, "bias", "x")
        bias = bias.contiguous()
    y = torch.empty((x.shape[0], out_f), dtype=x.dtype, device=x.device)
    if y.numel():
        _mm(x, weight.t(), y, b_mask=mask.t(), bias=bias)
    return y


def masked_linear_dx(grad_out: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """dX [T, in] = grad_out [T, out] @ (weight * mask)."""
    check(grad_out.dim() == 2, f"grad_out must be 2-D [tokens, out_features], got {tuple(grad_out.shape)}")
    check_float(grad_out, "grad_out")
    _check_weight_mask(weight, mask, grad_out, "grad_out")
    check(grad_out.shape[1] == weight.shape[0],
          f"grad_out has {grad_out.shape[1]} features but weight has {weight.shape[0]} outputs")
    dx = torch.empty((grad_out.shape[0], weight.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
    if dx.numel():
        _mm(grad_out, weight, dx, b_mask=mask)
    return dx


def masked_linear_dw(grad_out: torch.Tensor, x: torch.Tensor, grad_mask: torch.Tensor) -> torch.Tensor:
    """dW [out, in] = (grad_out [T, out]).T @ x [T, in], exactly 0 where grad_mask (bool [out, in]) is False."""
    check(grad_out.dim() == 2 and x.dim() == 2 and grad_out.shape[0] == x.shape[0],
          f"grad_out [T, out] and x [T, in] must be 2-D with equal T, got {tuple(grad_out.shape)} and "
          f"{tuple(x.shape)}")
    check_float(x, "x")
    check_like(grad_out, x, "grad_out", "x")
    shape = (grad_out.shape[1], x.shape[1])
    check(grad_mask.dtype == torch.bool and tuple(grad_mask.shape) == shape,
          f"grad_mask must be a bool tensor of shape {shape}, got {grad_mask.dtype} {tuple(grad_mask.shape)}")
    check(grad_mask.device == x.device, f"grad_mask is on {grad_mask.device} but x is on {x.device}")
    dw = torch.empty(shape, dtype=x.dtype, device=x.device)
    if dw.numel():
        _mm(grad_out.t(), x, dw, c_mask=grad_mask)
    return dw
