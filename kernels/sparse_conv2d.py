"""Sparse conv2d in Triton as implicit GEMM (no im2col buffer): forward, dX, dValues at active entries.

The weight is viewed as [out_ch, in_ch*kh*kw]. Tensors are addressed through their four strides, so
NCHW and channels_last inputs are read in place; outputs take the input's memory format.

* Block-channel (BSR over the [out_ch, in_ch] grid, values [nnzb, B, B, kh, kw]):
  - forward / dX share one gather-GEMM kernel. A program owns BLOCK_P destination pixels and one
    destination channel block; for every active block feeding it and every tap it gathers a
    [BLOCK_P, B] tile of the source (zeros outside the image) and does one ``tl.dot`` with the
    block's [B, B] tap matrix. Forward walks a block row (row_ptr/col_idx); dX walks a block
    column through the transposed index (t_row_ptr/t_col_idx/t_perm) and maps each input pixel
    back to the output pixel of each tap (stride divisibility), so no second copy of values exists.
    The launcher repacks values tap-major ([nnzb, kh, kw, B, B], a copy of d*|W|) so tap tiles are
    contiguous.
  - dValues: one program per (active block, tap) accumulates dY[:, o-block]^T @ x_shifted[:, i-block]
    over pixel tiles. Entries of edge blocks outside the weight are written 0 and never read.
* Unstructured (CSR over [out_ch, in_ch*kh*kw], column (i*kh + r)*kw + s):
  - forward: a program owns one output channel and BLOCK_P pixels and gathers x at NZ nonzeros of
    that row at a time.
  - dX: a program owns one input channel and BLOCK_P input pixels; the transposed index lists the
    nonzeros of columns i*kh*kw .. (i+1)*kh*kw - 1 as kh*kw consecutive ranges, one per tap.
  - dValues: each program owns NZ nonzeros and reduces dY[:, row] * x_shifted[:, col] over pixels.

Accumulation is fp32 (fp64 for fp64). fp32 ``tl.dot`` uses IEEE products unless
``torch.backends.cuda.matmul.allow_tf32`` is set. Launchers take torch tensors; they run on CUDA
tensors, or on CPU tensors under TRITON_INTERPRET=1. Index *values* are trusted (the layouts
validate them); index dtypes and lengths, shapes and geometry are checked with ValueError.
"""
from typing import List, Optional

import torch
import triton
import triton.language as tl

from ._launch import launchable
from .bsr_linear import _gathered_block, _precision
from .csr_linear import check, check_float, check_like

BLOCK_META_CUDA = {"BLOCK_P": 64, "num_warps": 4, "num_stages": 3}
BLOCK_META_INTERPRET = {"BLOCK_P": 32}
CSR_META_CUDA = {"BLOCK_P": 128, "NZ": 16, "num_warps": 4}
CSR_META_INTERPRET = {"BLOCK_P": 32, "NZ": 16}


@triton.jit
def _pixel(offs_p, H, W):
    """(n, h, w) of flat NHW pixel indices offs_p over H x W planes; n widened to int64 for addressing."""
    return (offs_p // (W * H)).to(tl.int64), (offs_p // W) % H, offs_p % W


@triton.jit
def _block_gather_mm(a_ptr, w_ptr, bias_ptr, out_ptr, ptr_ptr, idx_ptr, perm_ptr,
                     HA, WA, CK, CN, HD, WD, n_pix,
                     sa_n, sa_c, sa_h, sa_w, so_n, so_c, so_h, so_w,
                     SH, SW, PH, PW, DH, DW,
                     KH: tl.constexpr, KW: tl.constexpr, B: tl.constexpr, DX: tl.constexpr,
                     HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr, FP64: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[n, nb*B + c, hd, wd] = sum over blocks j of block row/column nb, taps (r, s), k < B of
    a[n, idx[j]*B + k, <source pixel of (hd, wd) at tap (r, s)>] * Wj[r, s][k, c].

    Forward: a = x [N, C, H, W], out = y, source pixel (hd*SH - PH + r*DH, wd*SW - PW + s*DW).
    DX: a = dY [N, O, Ho, Wo], out = dX, source pixel ((hd + PH - r*DH) / SH, ...) when divisible.
    """
    nb = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_b = tl.arange(0, B)
    mask_p = offs_p < n_pix
    n, hd, wd = _pixel(offs_p, HD, WD)
    n0 = nb * B
    mask_n = (n0 + offs_b) < CN
    ACC = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, B), dtype=ACC)
    start = tl.load(ptr_ptr + nb)
    end = tl.load(ptr_ptr + nb + 1)
    k0_next, blk_next = _gathered_block(idx_ptr, perm_ptr, start, end, B, HAS_PERM)
    for j in range(start, end):  # entry j+1's index prefetched in iteration j, as in bsr_linear
        k0, blk = k0_next, blk_next
        k0_next, blk_next = _gathered_block(idx_ptr, perm_ptr, j + 1, end, B, HAS_PERM)
        mask_k = (k0 + offs_b) < CK
        a_chan = a_ptr + n[:, None] * sa_n + (k0 + offs_b).to(tl.int64)[None, :] * sa_c
        wb = w_ptr + blk.to(tl.int64) * (KH * KW * B * B)
        for t in tl.static_range(KH * KW):
            r = t // KW
            s = t % KW
            if DX:
                hh = hd + PH - r * DH
                ww = wd + PW - s * DW
                hs = hh // SH
                ws = ww // SW
                ok = (hh >= 0) & (ww >= 0) & (hh % SH == 0) & (ww % SW == 0) & (hs < HA) & (ws < WA)
            else:
                hs = hd * SH - PH + r * DH
                ws = wd * SW - PW + s * DW
                ok = (hs >= 0) & (hs < HA) & (ws >= 0) & (ws < WA)
            ok = ok & mask_p
            a = tl.load(a_chan + (hs * sa_h + ws * sa_w)[:, None], mask=ok[:, None] & mask_k[None, :], other=0.0)
            # packed tap tile: wb[t, o, i]; forward needs [k=i, c=o], dX [k=o, c=i]
            if DX:
                w_ptrs = wb + t * (B * B) + offs_b[:, None] * B + offs_b[None, :]
            else:
                w_ptrs = wb + t * (B * B) + offs_b[None, :] * B + offs_b[:, None]
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n0 + offs_b, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    out = (out_ptr + (n * so_n + hd * so_h + wd * so_w)[:, None] + (n0 + offs_b).to(tl.int64)[None, :] * so_c)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_n[None, :])


@triton.jit
def _block_dw(g_ptr, x_ptr, out_ptr, row_idx_ptr, col_idx_ptr,
              O, C, H, W, HO, WO, n_pix,
              sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w,
              SH, SW, PH, PW, DH, DW,
              KH: tl.constexpr, KW: tl.constexpr, B: tl.constexpr, FP64: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[k, o, i, r, s] = sum_{n, ho, wo} dY[n, row_idx[k]*B + o, ho, wo] * x[n, col_idx[k]*B + i, h, w]
    with (h, w) the input pixel of tap (r, s) = program_id(1); 0 outside the weight."""
    k = tl.program_id(0)
    t = tl.program_id(1)
    r = t // KW
    s = t % KW
    o0 = tl.load(row_idx_ptr + k) * B
    i0 = tl.load(col_idx_ptr + k) * B
    offs_b = tl.arange(0, B)
    mask_o = (o0 + offs_b) < O
    mask_i = (i0 + offs_b) < C
    g_chan = (o0 + offs_b).to(tl.int64)[None, :] * sg_c
    x_chan = (i0 + offs_b).to(tl.int64)[None, :] * sx_c
    ACC = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((B, B), dtype=ACC)
    for p0 in range(0, n_pix, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < n_pix
        n, ho, wo = _pixel(offs_p, HO, WO)
        h = ho * SH - PH + r * DH
        w = wo * SW - PW + s * DW
        ok = mask_p & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        g = tl.load(g_ptr + (n * sg_n + ho * sg_h + wo * sg_w)[:, None] + g_chan,
                    mask=mask_p[:, None] & mask_o[None, :], other=0.0)
        xx = tl.load(x_ptr + (n * sx_n + h * sx_h + w * sx_w)[:, None] + x_chan,
                     mask=ok[:, None] & mask_i[None, :], other=0.0)
        acc = tl.dot(tl.trans(g), xx, acc, input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + k.to(tl.int64) * (B * B * KH * KW) + (offs_b[:, None] * B + offs_b[None, :]) * (KH * KW) + t
    tl.store(out, acc.to(out_ptr.dtype.element_ty))


@triton.jit
def _csr_fwd(x_ptr, v_ptr, bias_ptr, out_ptr, ptr_ptr, idx_ptr,
             H, W, HO, WO, n_pix,
             sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w,
             SH, SW, PH, PW, DH, DW,
             KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, FP64: tl.constexpr,
             NZ: tl.constexpr, BLOCK_P: tl.constexpr):
    """y[n, o, ho, wo] = bias[o] + sum_{j in row o} v[j] * x[n, i_j, ho*SH - PH + r_j*DH, wo*SW - PW + s_j*DW]."""
    o = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < n_pix
    n, ho, wo = _pixel(offs_p, HO, WO)
    hb = ho * SH - PH
    wb = wo * SW - PW
    x_pix = x_ptr + n * sx_n
    acc = tl.zeros((BLOCK_P,), dtype=tl.float64 if FP64 else tl.float32)
    start = tl.load(ptr_ptr + o)
    end = tl.load(ptr_ptr + o + 1)
    for j0 in range(start, end, NZ):
        j = j0 + tl.arange(0, NZ)
        mj = j < end
        c = tl.load(idx_ptr + j, mask=mj, other=0)
        v = tl.load(v_ptr + j, mask=mj, other=0.0).to(acc.dtype)
        i = c // (KH * KW)
        r = (c // KW) % KH
        s = c % KW
        h = hb[:, None] + (r * DH)[None, :]
        w = wb[:, None] + (s * DW)[None, :]
        m = mask_p[:, None] & mj[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        xg = tl.load(x_pix[:, None] + i.to(tl.int64)[None, :] * sx_c + h * sx_h + w * sx_w, mask=m, other=0.0)
        acc += tl.sum(xg.to(acc.dtype) * v[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o).to(acc.dtype)
    tl.store(out_ptr + n * so_n + o * so_c + ho * so_h + wo * so_w, acc.to(out_ptr.dtype.element_ty), mask=mask_p)


@triton.jit
def _csr_dx(g_ptr, v_ptr, out_ptr, ptr_ptr, idx_ptr, perm_ptr,
            H, W, HO, WO, n_pix,
            sg_n, sg_c, sg_h, sg_w, so_n, so_c, so_h, so_w,
            SH, SW, PH, PW, DH, DW,
            KH: tl.constexpr, KW: tl.constexpr, FP64: tl.constexpr, NZ: tl.constexpr, BLOCK_P: tl.constexpr):
    """dx[n, i, h, w] = sum over taps (r, s) and nonzeros j of column (i*KH + r)*KW + s (transposed index) of
    v[perm[j]] * dY[n, t_col_idx[j], ho, wo] where h = ho*SH - PH + r*DH, w = wo*SW - PW + s*DW."""
    i = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < n_pix
    n, h, w = _pixel(offs_p, H, W)
    g_pix = g_ptr + n * sg_n
    acc = tl.zeros((BLOCK_P,), dtype=tl.float64 if FP64 else tl.float32)
    for t in tl.static_range(KH * KW):
        hh = h + PH - (t // KW) * DH
        ww = w + PW - (t % KW) * DW
        ho = hh // SH
        wo = ww // SW
        ok = mask_p & (hh >= 0) & (ww >= 0) & (hh % SH == 0) & (ww % SW == 0) & (ho < HO) & (wo < WO)
        g_tap = g_pix + ho * sg_h + wo * sg_w
        start = tl.load(ptr_ptr + i * (KH * KW) + t)
        end = tl.load(ptr_ptr + i * (KH * KW) + t + 1)
        for j0 in range(start, end, NZ):
            j = j0 + tl.arange(0, NZ)
            mj = j < end
            o = tl.load(idx_ptr + j, mask=mj, other=0)
            v = tl.load(v_ptr + tl.load(perm_ptr + j, mask=mj, other=0), mask=mj, other=0.0).to(acc.dtype)
            g = tl.load(g_tap[:, None] + o.to(tl.int64)[None, :] * sg_c, mask=ok[:, None] & mj[None, :], other=0.0)
            acc += tl.sum(g.to(acc.dtype) * v[None, :], axis=1)
    tl.store(out_ptr + n * so_n + i * so_c + h * so_h + w * so_w, acc.to(out_ptr.dtype.element_ty), mask=mask_p)


@triton.jit
def _csr_dw(g_ptr, x_ptr, out_ptr, row_idx_ptr, col_idx_ptr, nnz,
            H, W, HO, WO, n_pix,
            sg_n, sg_c, sg_h, sg_w, sx_n, sx_c, sx_h, sx_w,
            SH, SW, PH, PW, DH, DW,
            KH: tl.constexpr, KW: tl.constexpr, FP64: tl.constexpr, NZ: tl.constexpr, BLOCK_P: tl.constexpr):
    """dv[j] = sum_{n, ho, wo} dY[n, row_idx[j], ho, wo] * x[n, i_j, ho*SH - PH + r_j*DH, wo*SW - PW + s_j*DW]."""
    j = tl.program_id(0) * NZ + tl.arange(0, NZ)
    mj = j < nnz
    o = tl.load(row_idx_ptr + j, mask=mj, other=0).to(tl.int64)
    c = tl.load(col_idx_ptr + j, mask=mj, other=0)
    i = (c // (KH * KW)).to(tl.int64)
    r = (c // KW) % KH
    s = c % KW
    acc = tl.zeros((NZ,), dtype=tl.float64 if FP64 else tl.float32)
    for p0 in range(0, n_pix, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < n_pix
        n, ho, wo = _pixel(offs_p, HO, WO)
        h = (ho * SH - PH)[:, None] + (r * DH)[None, :]
        w = (wo * SW - PW)[:, None] + (s * DW)[None, :]
        m = mask_p[:, None] & mj[None, :]
        g = tl.load(g_ptr + (n * sg_n + ho * sg_h + wo * sg_w)[:, None] + o[None, :] * sg_c, mask=m, other=0.0)
        xx = tl.load(x_ptr + (n * sx_n)[:, None] + i[None, :] * sx_c + h * sx_h + w * sx_w,
                     mask=m & (h >= 0) & (h < H) & (w >= 0) & (w < W), other=0.0)
        acc += tl.sum(g.to(acc.dtype) * xx.to(acc.dtype), axis=0)
    tl.store(out_ptr + j, acc.to(out_ptr.dtype.element_ty), mask=mj)


# ---- launchers --------------------------------------------------------------------------------


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _geom(x_shape, kernel_size, stride, padding, dilation):
    """(Ho, Wo) of the convolution, after checking the geometry lists."""
    for name, v in (("x_shape", x_shape), ("kernel_size", kernel_size), ("stride", stride), ("padding", padding),
                    ("dilation", dilation)):
        check(len(v) == (4 if name == "x_shape" else 2), f"{name} must have {4 if name == 'x_shape' else 2} entries, "
              f"got {list(v)}")
    check(min(kernel_size) > 0, f"kernel size must be positive, got {list(kernel_size)}")
    check(min(stride) > 0 and min(dilation) > 0 and min(padding) >= 0,
          f"stride and dilation must be positive and padding non-negative, got {list(stride)}, {list(dilation)}, "
          f"{list(padding)}")
    ho = _conv_out(x_shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
    wo = _conv_out(x_shape[3], kernel_size[1], stride[1], padding[1], dilation[1])
    check(ho > 0 and wo > 0, f"input {list(x_shape)} is too small for kernel {list(kernel_size)} with padding "
          f"{list(padding)} and dilation {list(dilation)}")
    return ho, wo


def _check_4d(t, name):
    check(t.dim() == 4, f"{name} must be 4-D [N, C, H, W], got {tuple(t.shape)}")
    check_float(t, name)


def _check_index(t, name, like, n=None):
    check(t.dtype == torch.int32 and t.dim() == 1, f"{name} must be a 1-D int32 tensor, got {t.dtype} "
          f"{tuple(t.shape)}")
    check(t.device == like.device, f"{name} is on {t.device} but the data is on {like.device}")
    if n is not None:
        check(t.shape[0] == n, f"{name} must have {n} entries, got {t.shape[0]}")


def _check_grad_out(grad_out, x_shape, ho, wo):
    check(grad_out.shape[0] == x_shape[0] and tuple(grad_out.shape[2:]) == (ho, wo),
          f"grad_out {tuple(grad_out.shape)} does not match the convolution of x {list(x_shape)}")


def _empty_like_format(shape, like):
    fmt = torch._prims_common.suggest_memory_format(like)
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _block_values(values, like, name):
    check(values.dim() == 5 and values.shape[1] == values.shape[2] and values.shape[1] in (16, 32, 64),
          f"values must be [nnzb, B, B, kh, kw] with B in (16, 32, 64), got {tuple(values.shape)}")
    check_like(values, like, "values", name)


def _tap_major(values):
    """[nnzb, B, B, kh, kw] -> contiguous [nnzb, kh, kw, B(out), B(in)]."""
    return values.permute(0, 3, 4, 1, 2).contiguous()


def _meta(cuda_meta, interp_meta, device):
    return dict(cuda_meta if device.type == "cuda" else interp_meta)


def _ints(stride, padding, dilation):
    return dict(SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1])


def bsr_conv2d_forward(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                       out_channels: int, bias: Optional[torch.Tensor], stride: List[int], padding: List[int],
                       dilation: List[int]) -> torch.Tensor:
    """y [N, out_channels, Ho, Wo] (x's memory format) = conv2d(x [N, C, H, W], block-channel W) (+ bias)."""
    _check_4d(x, "x")
    _block_values(values, x, "x")
    B, kh, kw = values.shape[1], values.shape[3], values.shape[4]
    ho, wo = _geom(x.shape, (kh, kw), stride, padding, dilation)
    check(out_channels >= 0, "out_channels must be >= 0")
    _check_index(row_ptr, "row_ptr", x, triton.cdiv(out_channels, B) + 1)
    _check_index(col_idx, "col_idx", x, values.shape[0])
    if bias is not None:
        check(bias.shape == (out_channels,), f"bias must be [{out_channels}], got {tuple(bias.shape)}")
        check_like(bias, x, "bias", "x")
        bias = bias.contiguous()
    N, C, H, W = x.shape
    y = _empty_like_format((N, out_channels, ho, wo), x)
    n_pix = N * ho * wo
    if y.numel() == 0:
        return y
    meta = _meta(BLOCK_META_CUDA, BLOCK_META_INTERPRET, x.device)
    grid = (triton.cdiv(out_channels, B), triton.cdiv(n_pix, meta["BLOCK_P"]))
    launchable(_block_gather_mm, x.device)[grid](
        x, _tap_major(values), bias if bias is not None else values, y, row_ptr, col_idx, col_idx,
        H, W, C, out_channels, ho, wo, n_pix, *x.stride(), *y.stride(), **_ints(stride, padding, dilation),
        KH=kh, KW=kw, B=B, DX=False, HAS_PERM=False, HAS_BIAS=bias is not None, FP64=x.dtype == torch.float64,
        PRECISION=_precision(x.dtype, x.device), **meta)
    return y


def bsr_conv2d_dx(grad_out: torch.Tensor, values: torch.Tensor, t_row_ptr: torch.Tensor, t_col_idx: torch.Tensor,
                  t_perm: torch.Tensor, x_shape: List[int], stride: List[int], padding: List[int],
                  dilation: List[int]) -> torch.Tensor:
    """dX [x_shape] (grad_out's memory format) of the block-channel conv, over the transposed index."""
    _check_4d(grad_out, "grad_out")
    _block_values(values, grad_out, "grad_out")
    B, kh, kw = values.shape[1], values.shape[3], values.shape[4]
    ho, wo = _geom(x_shape, (kh, kw), stride, padding, dilation)
    _check_grad_out(grad_out, x_shape, ho, wo)
    N, C, H, W = x_shape
    _check_index(t_row_ptr, "t_row_ptr", grad_out, triton.cdiv(C, B) + 1)
    _check_index(t_col_idx, "t_col_idx", grad_out, values.shape[0])
    _check_index(t_perm, "t_perm", grad_out, values.shape[0])
    dx = _empty_like_format(tuple(x_shape), grad_out)
    n_pix = N * H * W
    if dx.numel() == 0:
        return dx
    meta = _meta(BLOCK_META_CUDA, BLOCK_META_INTERPRET, grad_out.device)
    grid = (triton.cdiv(C, B), triton.cdiv(n_pix, meta["BLOCK_P"]))
    launchable(_block_gather_mm, grad_out.device)[grid](
        grad_out, _tap_major(values), values, dx, t_row_ptr, t_col_idx, t_perm,
        ho, wo, grad_out.shape[1], C, H, W, n_pix, *grad_out.stride(), *dx.stride(),
        **_ints(stride, padding, dilation),
        KH=kh, KW=kw, B=B, DX=True, HAS_PERM=True, HAS_BIAS=False, FP64=grad_out.dtype == torch.float64,
        PRECISION=_precision(grad_out.dtype, grad_out.device), **meta)
    return dx


def _check_dw(grad_out, x, row_idx, col_idx, kernel_size, stride, padding, dilation):
    _check_4d(x, "x")
    _check_4d(grad_out, "grad_out")
    check_like(grad_out, x, "grad_out", "x")
    ho, wo = _geom(x.shape, kernel_size, stride, padding, dilation)
    _check_grad_out(grad_out, x.shape, ho, wo)
    _check_index(row_idx, "row_idx", x)
    _check_index(col_idx, "col_idx", x, row_idx.shape[0])
    return ho, wo


def bsr_conv2d_dw(grad_out: torch.Tensor, x: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
                  block_size: int, kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int]) -> torch.Tensor:
    """dValues [nnzb, B, B, kh, kw] at the active blocks (entries outside the weight 0)."""
    ho, wo = _check_dw(grad_out, x, row_idx, col_idx, kernel_size, stride, padding, dilation)
    check(block_size in (16, 32, 64), f"block_size must be 16, 32 or 64, got {block_size}")
    B, (kh, kw) = block_size, kernel_size
    nnzb = col_idx.shape[0]
    N, C, H, W = x.shape
    n_pix = N * ho * wo
    if nnzb == 0 or n_pix == 0:
        return torch.zeros((nnzb, B, B, kh, kw), dtype=x.dtype, device=x.device)
    dv = torch.empty((nnzb, B, B, kh, kw), dtype=x.dtype, device=x.device)
    meta = _meta(BLOCK_META_CUDA, BLOCK_META_INTERPRET, x.device)
    launchable(_block_dw, x.device)[(nnzb, kh * kw)](
        grad_out, x, dv, row_idx, col_idx, grad_out.shape[1], C, H, W, ho, wo, n_pix,
        *grad_out.stride(), *x.stride(), **_ints(stride, padding, dilation),
        KH=kh, KW=kw, B=B, FP64=x.dtype == torch.float64, PRECISION=_precision(x.dtype, x.device), **meta)
    return dv


def _csr_values(values, like, name, n):
    check(values.dim() == 1, f"values must be 1-D [nnz], got {tuple(values.shape)}")
    check_like(values, like, "values", name)
    check(values.shape[0] == n, f"values has {values.shape[0]} entries but the index has {n}")


def csr_conv2d_forward(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                       out_channels: int, kernel_size: List[int], bias: Optional[torch.Tensor], stride: List[int],
                       padding: List[int], dilation: List[int]) -> torch.Tensor:
    """y [N, out_channels, Ho, Wo] (x's memory format) = conv2d(x, W) (+ bias), W CSR over [out, C*kh*kw]."""
    _check_4d(x, "x")
    ho, wo = _geom(x.shape, kernel_size, stride, padding, dilation)
    check(out_channels >= 0, "out_channels must be >= 0")
    _check_index(row_ptr, "row_ptr", x, out_channels + 1)
    _check_index(col_idx, "col_idx", x)
    _csr_values(values, x, "x", col_idx.shape[0])
    if bias is not None:
        check(bias.shape == (out_channels,), f"bias must be [{out_channels}], got {tuple(bias.shape)}")
        check_like(bias, x, "bias", "x")
    N, C, H, W = x.shape
    kh, kw = kernel_size
    y = _empty_like_format((N, out_channels, ho, wo), x)
    n_pix = N * ho * wo
    if y.numel() == 0:
        return y
    meta = _meta(CSR_META_CUDA, CSR_META_INTERPRET, x.device)
    launchable(_csr_fwd, x.device)[(out_channels, triton.cdiv(n_pix, meta["BLOCK_P"]))](
        x, values.contiguous(), bias if bias is not None else values, y, row_ptr, col_idx, H, W, ho, wo, n_pix,
        *x.stride(), *y.stride(), **_ints(stride, padding, dilation),
        KH=kh, KW=kw, HAS_BIAS=bias is not None, FP64=x.dtype == torch.float64, **meta)
    return y


def csr_conv2d_dx(grad_out: torch.Tensor, values: torch.Tensor, t_row_ptr: torch.Tensor, t_col_idx: torch.Tensor,
                  t_perm: torch.Tensor, x_shape: List[int], kernel_size: List[int], stride: List[int],
                  padding: List[int], dilation: List[int]) -> torch.Tensor:
    """dX [x_shape] (grad_out's memory format) of the unstructured conv, over the transposed index."""
    _check_4d(grad_out, "grad_out")
    ho, wo = _geom(x_shape, kernel_size, stride, padding, dilation)
    _check_grad_out(grad_out, x_shape, ho, wo)
    N, C, H, W = x_shape
    kh, kw = kernel_size
    _check_index(t_row_ptr, "t_row_ptr", grad_out, C * kh * kw + 1)
    _check_index(t_col_idx, "t_col_idx", grad_out)
    _check_index(t_perm, "t_perm", grad_out, t_col_idx.shape[0])
    _csr_values(values, grad_out, "grad_out", t_col_idx.shape[0])
    dx = _empty_like_format(tuple(x_shape), grad_out)
    n_pix = N * H * W
    if dx.numel() == 0:
        return dx
    meta = _meta(CSR_META_CUDA, CSR_META_INTERPRET, grad_out.device)
    launchable(_csr_dx, grad_out.device)[(C, triton.cdiv(n_pix, meta["BLOCK_P"]))](
        grad_out, values.contiguous(), dx, t_row_ptr, t_col_idx, t_perm, H, W, ho, wo, n_pix,
        *grad_out.stride(), *dx.stride(), **_ints(stride, padding, dilation),
        KH=kh, KW=kw, FP64=grad_out.dtype == torch.float64, **meta)
    return dx


def csr_conv2d_dw(grad_out: torch.Tensor, x: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor,
                  kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int]) -> torch.Tensor:
    """dValues [nnz]: the weight gradient at each nonzero (row_idx[j], col_idx[j]) only."""
    ho, wo = _check_dw(grad_out, x, row_idx, col_idx, kernel_size, stride, padding, dilation)
    nnz = col_idx.shape[0]
    N, C, H, W = x.shape
    kh, kw = kernel_size
    n_pix = N * ho * wo
    if nnz == 0 or n_pix == 0:
        return torch.zeros((nnz,), dtype=x.dtype, device=x.device)
    dv = torch.empty((nnz,), dtype=x.dtype, device=x.device)
    meta = _meta(CSR_META_CUDA, CSR_META_INTERPRET, x.device)
    launchable(_csr_dw, x.device)[(triton.cdiv(nnz, meta["NZ"]),)](
        grad_out, x, dv, row_idx, col_idx, nnz, H, W, ho, wo, n_pix,
        *grad_out.stride(), *x.stride(), **_ints(stride, padding, dilation),
        KH=kh, KW=kw, FP64=x.dtype == torch.float64, **meta)
    return dv
