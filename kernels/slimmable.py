"""Slimmable (width-sliced) linear in Triton: several widths (i_k, o_k) of one weight W [O, I] on one
input, in one launch per group of up to 4 widths; a single width is the group of one.

Why: sandwich-rule training runs the same layer at several widths every step. The widths overlap
(W[:o_k, :i_k] are nested blocks of W), so a tile of output columns walks the input columns once,
in order of increasing i_k, and stores its running sum into y_k as soon as it has covered i_k:
each overlapping block of W is read and multiplied once for all widths that contain it.
Backward: dX and dW tiles first add up the grad_outs of every width that fully covers the tile
(one dot for all of them) and handle widths that cut through the tile with their own masked dot.
W is read through its strides (no copy of the slice); an optional bool mask multiplies W's tiles
on load (forward, dX) or the dW tile before it is added into grad_weight (in place).
"""
from typing import List, Optional

import torch
import triton
import triton.language as tl

from ._launch import launchable

MAX_WIDTHS = 4  # widths per launch; longer lists run in several launches


@triton.jit
def _load_w(w_ptr, m_ptr, kk, rn, k_lim, n_lim, s_wk, s_wn, s_mk, s_mn, HAS_MASK: tl.constexpr):
    """Tile B[k, n] = (W * mask)[n, k] (forward, W rows are output columns) or [k, n] (dX), by strides."""
    ok = (kk[:, None] < k_lim) & (rn[None, :] < n_lim)
    b = tl.load(w_ptr + kk[:, None] * s_wk + rn[None, :] * s_wn, mask=ok, other=0.0)
    if HAS_MASK:
        keep = tl.load(m_ptr + kk[:, None] * s_mk + rn[None, :] * s_mn, mask=ok, other=0)
        b = tl.where(keep != 0, b, 0.0)
    return b


@triton.jit
def _segment(acc, x_ptr, w_ptr, m_ptr, rm, rn, T, n_lim, k_lo, k_hi, s_xm, s_xk, s_wk, s_wn, s_mk, s_mn,
             HAS_MASK: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """acc += x[rm, k_lo:k_hi] @ B[k_lo:k_hi, rn]."""
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + rm[:, None] * s_xm + kk[None, :] * s_xk, mask=(rm[:, None] < T) & (kk[None, :] < k_hi),
                    other=0.0)
        b = _load_w(w_ptr, m_ptr, kk, rn, k_hi, n_lim, s_wk, s_wn, s_mk, s_mn, HAS_MASK)
        acc += tl.dot(a, b, input_precision=PREC)
    return acc


@triton.jit
def _store_width(acc, y_ptr, b_ptr, rm, rn, T, o, HAS_BIAS: tl.constexpr):
    out = acc
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=rn < o, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * o + rn[None, :], out.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < T) & (rn[None, :] < o))


@triton.jit
def _step(acc, k_lo, kmax, i_k, o_k, y_ptr, n0, x_ptr, w_ptr, m_ptr, b_ptr, rm, rn, T, n_lim, s_xm, s_xk, s_wk,
          s_wn, s_mk, s_mn, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    hi = tl.minimum(i_k, kmax)
    acc = _segment(acc, x_ptr, w_ptr, m_ptr, rm, rn, T, n_lim, k_lo, hi, s_xm, s_xk, s_wk, s_wn, s_mk, s_mn,
                   HAS_MASK, BK, PREC)
    if o_k > n0:
        _store_width(acc, y_ptr, b_ptr, rm, rn, T, o_k, HAS_BIAS)
    return acc, tl.maximum(k_lo, hi)


@triton.jit
def _multi_forward_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y0, y1, y2, y3, i0, i1, i2, i3, o0, o1, o2, o3, T, s_xm, s_xk,
                          s_w0, s_w1, s_m0, s_m1, NW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                          ACC: tl.constexpr):
    # widths sorted by increasing i_k; unused slots have o_k = 0
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    n0 = tl.program_id(1) * BN
    rn = n0 + tl.arange(0, BN)
    n_lim = tl.maximum(tl.maximum(o0, o1), tl.maximum(o2, o3))
    kmax = tl.where(o0 > n0, i0, 0)  # deepest input column a width covering this tile needs
    kmax = tl.maximum(kmax, tl.where(o1 > n0, i1, 0))
    kmax = tl.maximum(kmax, tl.where(o2 > n0, i2, 0))
    kmax = tl.maximum(kmax, tl.where(o3 > n0, i3, 0))
    acc = tl.zeros((BM, BN), dtype=ACC)
    k_lo = 0
    acc, k_lo = _step(acc, k_lo, kmax, i0, o0, y0, n0, x_ptr, w_ptr, m_ptr, b_ptr, rm, rn, T, n_lim, s_xm, s_xk,
                      s_w1, s_w0, s_m1, s_m0, HAS_BIAS, HAS_MASK, BK, PREC)
    if NW > 1:
        acc, k_lo = _step(acc, k_lo, kmax, i1, o1, y1, n0, x_ptr, w_ptr, m_ptr, b_ptr, rm, rn, T, n_lim, s_xm, s_xk,
                          s_w1, s_w0, s_m1, s_m0, HAS_BIAS, HAS_MASK, BK, PREC)
    if NW > 2:
        acc, k_lo = _step(acc, k_lo, kmax, i2, o2, y2, n0, x_ptr, w_ptr, m_ptr, b_ptr, rm, rn, T, n_lim, s_xm, s_xk,
                          s_w1, s_w0, s_m1, s_m0, HAS_BIAS, HAS_MASK, BK, PREC)
    if NW > 3:
        acc, k_lo = _step(acc, k_lo, kmax, i3, o3, y3, n0, x_ptr, w_ptr, m_ptr, b_ptr, rm, rn, T, n_lim, s_xm, s_xk,
                          s_w1, s_w0, s_m1, s_m0, HAS_BIAS, HAS_MASK, BK, PREC)


@triton.jit
def _grad_tile(g_ptr, rows, cols, row_lim, col_lim, ld):
    """Tile g[rows, cols] of a contiguous [*, ld] grad_out, zero outside row_lim x col_lim."""
    ok = (rows[:, None] < row_lim) & (cols[None, :] < col_lim)
    return tl.load(g_ptr + rows[:, None] * ld + cols[None, :], mask=ok, other=0.0)


@triton.jit
def _multi_dx_kernel(g0, g1, g2, g3, w_ptr, m_ptr, dx_ptr, i0, i1, i2, i3, o0, o1, o2, o3, T, in_features, s_w0, s_w1,
                     s_m0, s_m1, NW: tl.constexpr, HAS_MASK: tl.constexpr, ACCUMULATE: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    # dx[:, n] = sum_k dy_k @ (W*M)[:o_k, n] over widths with n < i_k
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    n0 = tl.program_id(1) * BN
    rn = n0 + tl.arange(0, BN)
    full0, part0 = n0 + BN <= i0, (n0 < i0) & (n0 + BN > i0)
    full1, part1 = (n0 + BN <= i1) & (NW > 1), (n0 < i1) & (n0 + BN > i1) & (NW > 1)
    full2, part2 = (n0 + BN <= i2) & (NW > 2), (n0 < i2) & (n0 + BN > i2) & (NW > 2)
    full3, part3 = (n0 + BN <= i3) & (NW > 3), (n0 < i3) & (n0 + BN > i3) & (NW > 3)
    kmax = tl.where(n0 < i0, o0, 0)
    kmax = tl.maximum(kmax, tl.where((n0 < i1) & (NW > 1), o1, 0))
    kmax = tl.maximum(kmax, tl.where((n0 < i2) & (NW > 2), o2, 0))
    kmax = tl.maximum(kmax, tl.where((n0 < i3) & (NW > 3), o3, 0))
    acc = tl.zeros((BM, BN), dtype=ACC)
    for k0 in range(0, kmax, BK):
        kk = k0 + tl.arange(0, BK)
        b = _load_w(w_ptr, m_ptr, kk, rn, kmax, in_features, s_w0, s_w1, s_m0, s_m1, HAS_MASK)
        a = tl.zeros((BM, BK), dtype=b.dtype)
        if full0:
            a += _grad_tile(g0, rm, kk, T, o0, o0)
        if full1:
            a += _grad_tile(g1, rm, kk, T, o1, o1)
        if full2:
            a += _grad_tile(g2, rm, kk, T, o2, o2)
        if full3:
            a += _grad_tile(g3, rm, kk, T, o3, o3)
        acc += tl.dot(a, b, input_precision=PREC)
        if part0:
            acc += tl.dot(_grad_tile(g0, rm, kk, T, o0, o0), tl.where(rn[None, :] < i0, b, 0.0), input_precision=PREC)
        if part1:
            acc += tl.dot(_grad_tile(g1, rm, kk, T, o1, o1), tl.where(rn[None, :] < i1, b, 0.0), input_precision=PREC)
        if part2:
            acc += tl.dot(_grad_tile(g2, rm, kk, T, o2, o2), tl.where(rn[None, :] < i2, b, 0.0), input_precision=PREC)
        if part3:
            acc += tl.dot(_grad_tile(g3, rm, kk, T, o3, o3), tl.where(rn[None, :] < i3, b, 0.0), input_precision=PREC)
    ptrs = dx_ptr + rm[:, None] * in_features + rn[None, :]
    ok = (rm[:, None] < T) & (rn[None, :] < in_features)
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=ok, other=0.0)
    tl.store(ptrs, acc.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _multi_dw_kernel(g0, g1, g2, g3, x_ptr, m_ptr, gw_ptr, i0, i1, i2, i3, o0, o1, o2, o3, T, s_xm, s_xk, s_g0, s_g1,
                     s_m0, s_m1, NW: tl.constexpr, HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    # grad_weight[m, n] += (sum_k dy_k[:, m].T @ x[:, n] over widths with m < o_k, n < i_k) * mask[m, n]
    m0 = tl.program_id(0) * BM
    n0 = tl.program_id(1) * BN
    rm = m0 + tl.arange(0, BM)
    rn = n0 + tl.arange(0, BN)
    c0 = (m0 < o0) & (n0 < i0)
    c1 = (m0 < o1) & (n0 < i1) & (NW > 1)
    c2 = (m0 < o2) & (n0 < i2) & (NW > 2)
    c3 = (m0 < o3) & (n0 < i3) & (NW > 3)
    f0 = c0 & (m0 + BM <= o0) & (n0 + BN <= i0)
    f1 = c1 & (m0 + BM <= o1) & (n0 + BN <= i1)
    f2 = c2 & (m0 + BM <= o2) & (n0 + BN <= i2)
    f3 = c3 & (m0 + BM <= o3) & (n0 + BN <= i3)
    if c0 | c1 | c2 | c3:
        n_lim = tl.maximum(tl.maximum(i0, i1), tl.maximum(i2, i3))
        acc = tl.zeros((BM, BN), dtype=ACC)
        for t0 in range(0, T, BK):
            tt = t0 + tl.arange(0, BK)
            ok_x = (tt[:, None] < T) & (rn[None, :] < n_lim)
            xb = tl.load(x_ptr + tt[:, None] * s_xm + rn[None, :] * s_xk, mask=ok_x, other=0.0)
            a = tl.zeros((BM, BK), dtype=xb.dtype)  # a[m, t] = sum of dy_k[t, m] over fully covering widths
            if f0:
                a += tl.trans(_grad_tile(g0, tt, rm, T, o0, o0))
            if f1:
                a += tl.trans(_grad_tile(g1, tt, rm, T, o1, o1))
            if f2:
                a += tl.trans(_grad_tile(g2, tt, rm, T, o2, o2))
            if f3:
                a += tl.trans(_grad_tile(g3, tt, rm, T, o3, o3))
            acc += tl.dot(a, xb, input_precision=PREC)
            if c0 & ~f0:
                acc += tl.dot(tl.trans(_grad_tile(g0, tt, rm, T, o0, o0)), tl.where(rn[None, :] < i0, xb, 0.0),
                              input_precision=PREC)
            if c1 & ~f1:
                acc += tl.dot(tl.trans(_grad_tile(g1, tt, rm, T, o1, o1)), tl.where(rn[None, :] < i1, xb, 0.0),
                              input_precision=PREC)
            if c2 & ~f2:
                acc += tl.dot(tl.trans(_grad_tile(g2, tt, rm, T, o2, o2)), tl.where(rn[None, :] < i2, xb, 0.0),
                              input_precision=PREC)
            if c3 & ~f3:
                acc += tl.dot(tl.trans(_grad_tile(g3, tt, rm, T, o3, o3)), tl.where(rn[None, :] < i3, xb, 0.0),
                              input_precision=PREC)
        m_lim = tl.maximum(tl.maximum(o0, o1), tl.maximum(o2, o3))
        ok = (rm[:, None] < m_lim) & (rn[None, :] < n_lim)
        if HAS_MASK:
            keep = tl.load(m_ptr + rm[:, None] * s_m0 + rn[None, :] * s_m1, mask=ok, other=0)
            acc = tl.where(keep != 0, acc, 0.0)
        ptrs = gw_ptr + rm[:, None] * s_g0 + rn[None, :] * s_g1
        acc += tl.load(ptrs, mask=ok, other=0.0)
        tl.store(ptrs, acc.to(gw_ptr.dtype.element_ty), mask=ok)


# Launchers ----------------------------------------------------------------------------------
def _config(t):
    """Tile sizes: small under the interpreter (CPU tensors), GPU-sized on CUDA."""
    if t.is_cuda:
        return dict(BM=64, BN=64, BK=32, num_warps=4)
    return dict(BM=16, BN=16, BK=16)


def _precision(dtype):
    # fp32 stays exact (no TF32), like torch's default matmul precision
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _mask_args(mask, like):
    if mask is None:
        return like, 0, 0, False
    m = mask.view(torch.uint8)
    return m, m.stride(0), m.stride(1), True


def _groups(n):
    return [list(range(s, min(n, s + MAX_WIDTHS))) for s in range(0, n, MAX_WIDTHS)]


def _slots(values, fill):
    return list(values) + [fill] * (MAX_WIDTHS - len(values))


def slimmable_linear_multi(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           mask: Optional[torch.Tensor], in_widths: List[int],
                           out_widths: List[int]) -> List[torch.Tensor]:
    """[x[:, :i_k] @ (W*M)[:o_k, :i_k].T + bias[:o_k] for each width]; x [T, >= max i_k], W [O, I]."""
    T = x.shape[0]
    ys = [torch.empty(T, o, device=x.device, dtype=x.dtype) for o in out_widths]
    cfg = _config(x)
    m, s_m0, s_m1, has_mask = _mask_args(mask, weight)
    for group in _groups(len(ys)):
        group = sorted(group, key=lambda k: in_widths[k])
        n_max = max(out_widths[k] for k in group)
        if T == 0 or n_max == 0:
            continue
        grid = (triton.cdiv(T, cfg["BM"]), triton.cdiv(n_max, cfg["BN"]))
        launchable(_multi_forward_kernel, x.device)[grid](
            x, weight, bias if bias is not None else weight, m, *_slots([ys[k] for k in group], ys[group[0]]),
            *_slots([in_widths[k] for k in group], 0), *_slots([out_widths[k] for k in group], 0), T, x.stride(0),
            x.stride(1), weight.stride(0), weight.stride(1), s_m0, s_m1, NW=len(group), HAS_BIAS=bias is not None,
            HAS_MASK=has_mask, PREC=_precision(x.dtype), ACC=_acc(x.dtype), **cfg)
    return ys


def slimmable_linear_multi_dx(grad_outs: List[torch.Tensor], weight: torch.Tensor, mask: Optional[torch.Tensor],
                              in_widths: List[int], in_features: int) -> torch.Tensor:
    """dx [T, in_features] = sum_k grad_outs[k] @ (W*M)[:o_k, :i_k] (zero past every i_k)."""
    gs = [g.contiguous() for g in grad_outs]
    T = gs[0].shape[0]
    dx = torch.empty(T, in_features, device=gs[0].device, dtype=gs[0].dtype)
    if T == 0 or in_features == 0:
        return dx
    cfg = _config(dx)
    m, s_m0, s_m1, has_mask = _mask_args(mask, weight)
    grid = (triton.cdiv(T, cfg["BM"]), triton.cdiv(in_features, cfg["BN"]))
    for n, group in enumerate(_groups(len(gs))):
        launchable(_multi_dx_kernel, dx.device)[grid](
            *_slots([gs[k] for k in group], gs[group[0]]), weight, m, dx, *_slots([in_widths[k] for k in group], 0),
            *_slots([gs[k].shape[1] for k in group], 0), T, in_features, weight.stride(0), weight.stride(1), s_m0,
            s_m1, NW=len(group), HAS_MASK=has_mask, ACCUMULATE=n > 0, PREC=_precision(dx.dtype),
            ACC=_acc(dx.dtype), **cfg)
    return dx


def slimmable_linear_multi_dw_(grad_outs: List[torch.Tensor], x: torch.Tensor, mask: Optional[torch.Tensor],
                               in_widths: List[int], grad_weight: torch.Tensor) -> None:
    """grad_weight[:o_k, :i_k] += (grad_outs[k].T @ x[:, :i_k]) * M, for every width, in place."""
    gs = [g.contiguous() for g in grad_outs]
    T = x.shape[0]
    cfg = _config(x)
    m, s_m0, s_m1, has_mask = _mask_args(mask, grad_weight)
    for group in _groups(len(gs)):
        o_max = max(gs[k].shape[1] for k in group)
        i_max = max(in_widths[k] for k in group)
        if o_max == 0 or i_max == 0 or T == 0:
            continue
        grid = (triton.cdiv(o_max, cfg["BM"]), triton.cdiv(i_max, cfg["BN"]))
        launchable(_multi_dw_kernel, x.device)[grid](
            *_slots([gs[k] for k in group], gs[group[0]]), x, m, grad_weight,
            *_slots([in_widths[k] for k in group], 0), *_slots([gs[k].shape[1] for k in group], 0), T, x.stride(0),
            x.stride(1), grad_weight.stride(0), grad_weight.stride(1), s_m0, s_m1, NW=len(group), HAS_MASK=has_mask,
            PREC=_precision(x.dtype), ACC=_acc(x.dtype), **cfg)


def slimmable_linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             mask: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    """x [T, i] @ (W*M)[:o, :i].T + bias[:o]."""
    return slimmable_linear_multi(x, weight, bias, mask, [x.shape[1]], [out_features])[0]


def slimmable_linear_dx(grad_out: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                        in_features: int) -> torch.Tensor:
    """grad_out [T, o] @ (W*M)[:o, :in_features]."""
    return slimmable_linear_multi_dx([grad_out], weight, mask, [in_features], in_features)


def slimmable_linear_dw_(grad_out: torch.Tensor, x: torch.Tensor, mask: Optional[torch.Tensor],
                         grad_weight: torch.Tensor) -> None:
    """grad_weight[:o, :i] += (grad_out.T @ x) * M[:o, :i], in place."""
    slimmable_linear_multi_dw_([grad_out], x, mask, [x.shape[1]], grad_weight)
