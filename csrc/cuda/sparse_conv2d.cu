// Sparse conv2d on CUDA as implicit GEMM (no im2col buffer): forward, dX, dValues at active entries.
// fp32/fp64/fp16/bf16 inputs, accumulation in fp32 (fp64 for fp64), FMA on CUDA cores (no tensor
// cores yet). No atomics: every output element is reduced by one thread in a fixed order, so the
// results are deterministic.
//
// bsr_conv2d (block-channel, values [nnzb, B, B, kh, kw], BlockSparseLayout over [out_ch, in_ch]):
//  * forward and dX are one gather-GEMM kernel. A CTA owns P destination pixels and one destination
//    channel block of B; for every active block feeding it and every tap it stages the gathered
//    source tile [P pixels x B channels] (zeros outside the image / past the channels) and the
//    block's [B x B] tap matrix in shared memory and accumulates with a 4 x B/16 register tile per
//    thread. The source is read channels-last (channels contiguous, coalesced); values are repacked
//    tap-major [nnzb, kh, kw, B, B] (a copy of d*|W|). Forward walks a block row; dX walks a block
//    column through the transposed index (t_perm into values) and maps each input pixel to the
//    output pixel of each tap (stride divisibility), so no second copy of values exists.
//  * dValues: one CTA per (active block, tap) reduces dY[:, o-block]^T x_shifted[:, i-block] over
//    the output pixels, 32 pixels per shared-memory stage. Edge-block entries outside W are 0.
// csr_conv2d (element sparsity over [out_ch, in_ch*kh*kw], NCHW):
//  * forward: one thread per output pixel of one output channel walks that row's nonzeros (all
//    threads of a CTA read the same nonzero: a broadcast load) and gathers x at each tap.
//  * dX: one thread per input pixel of one input channel; per tap the transposed index lists that
//    column's nonzeros (columns (i*kh + r)*kw + s are consecutive), read the same way.
//  * dValues: one warp per nonzero, lanes over output pixels, then a warp reduction.
// Outputs have the memory format of x (forward) / grad_out (dX). Index *values* are trusted (the
// layouts validate them; checking here would synchronise the device); lengths and shapes are checked.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "checks.h"
#include "sparse_conv_checks.h"

namespace sparsecl {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

using Geom = ConvShape;

// ---- block-channel gather GEMM (forward and dX) ---------------------------------------------------

constexpr int kThreads = 256;  // 16 channel groups x 16 pixel groups

struct GatherArgs {
  const void* src;  // channels-last [N, Hs, Ws, Cs]
  const void* w;    // tap-major [nnzb, taps, B(out), B(in)]
  const void* bias;
  void* dst;        // [N, Cd, Hd, Wd] with strides sd_*
  const int32_t *ptr, *idx, *perm;
  int64_t Hs, Ws, Cs, Hd, Wd, Cd, n_pix;
  int64_t sd_n, sd_c, sd_h, sd_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Source pixel of destination pixel (hd, wd) at tap (r, s), or false when it is outside the source.
template <bool DX>
__device__ __forceinline__ bool source_pixel(const GatherArgs& a, int64_t hd, int64_t wd, int64_t r, int64_t s,
                                             int64_t& hs, int64_t& ws) {
  if (DX) {
    const int64_t hh = hd + a.ph - r * a.dh, ww = wd + a.pw - s * a.dw;
    if (hh < 0 || ww < 0 || hh % a.sh || ww % a.sw) return false;
    hs = hh / a.sh;
    ws = ww / a.sw;
  } else {
    hs = hd * a.sh - a.ph + r * a.dh;
    ws = wd * a.sw - a.pw + s * a.dw;
    if (hs < 0 || ws < 0) return false;
  }
  return hs < a.Hs && ws < a.Ws;
}

// P destination pixels x B destination channels per CTA; thread (py, cx) owns pixels py + 16q and
// channels cx + 16c. DX: k = output channels, W tile used as stored; forward: W tile transposed.
template <typename T, int B, int P, bool DX>
__global__ void __launch_bounds__(kThreads) block_gather_mm(GatherArgs a) {
  using A = typename Acc<T>::type;
  constexpr int PPT = P / 16, CPT = B / 16;
  __shared__ A sa[B][P + 1];  // [k][pixel]; +1: the k-fastest fill would hit one bank 32 times
  __shared__ A sw[B][B];  // [k][dest channel]
  __shared__ int64_t pix_n[P], pix_h[P], pix_w[P];
  const T* src = static_cast<const T*>(a.src);
  const T* wv = static_cast<const T*>(a.w);
  const int tid = threadIdx.x, cx = tid % 16, py = tid / 16;
  const int64_t nb = blockIdx.y, p0 = int64_t(blockIdx.x) * P, n0 = nb * B;
  const int64_t taps = a.kh * a.kw;
  for (int p = tid; p < P; p += kThreads) {
    const int64_t q = p0 + p;
    pix_w[p] = q % a.Wd;
    pix_h[p] = (q / a.Wd) % a.Hd;
    pix_n[p] = q < a.n_pix ? q / (a.Wd * a.Hd) : -1;
  }
  A acc[PPT][CPT];
#pragma unroll
  for (int q = 0; q < PPT; ++q)
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[q][c] = A(0);
  __syncthreads();
  const int32_t start = a.ptr[nb], end = a.ptr[nb + 1];
  for (int32_t j = start; j < end; ++j) {
    const int64_t k0 = int64_t(a.idx[j]) * B;
    const int64_t blk = DX ? a.perm[j] : j;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t r = t / a.kw, s = t % a.kw;
      for (int e = tid; e < P * B; e += kThreads) {  // k fastest: coalesced channels-last reads
        const int p = e / B, k = e % B;
        A v = A(0);
        int64_t hs, ws;
        if (pix_n[p] >= 0 && k0 + k < a.Cs && source_pixel<DX>(a, pix_h[p], pix_w[p], r, s, hs, ws))
          v = A(src[((pix_n[p] * a.Hs + hs) * a.Ws + ws) * a.Cs + k0 + k]);
        sa[k][p] = v;
      }
      const T* wt = wv + (blk * taps + t) * B * B;
      for (int e = tid; e < B * B; e += kThreads) {  // stored [o][i], i fastest
        const int o = e / B, i = e % B;
        // forward: k = i (source channel), dest = o; dX: k = o, dest = i
        const int k = DX ? o : i, d = DX ? i : o;
        const bool ok = k0 + k < a.Cs && n0 + d < a.Cd;  // edge-block padding is never read
        sw[k][d] = ok ? A(wt[e]) : A(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < B; ++k) {
        A av[PPT], wr[CPT];
#pragma unroll
        for (int q = 0; q < PPT; ++q) av[q] = sa[k][py + 16 * q];
#pragma unroll
        for (int c = 0; c < CPT; ++c) wr[c] = sw[k][cx + 16 * c];
#pragma unroll
        for (int q = 0; q < PPT; ++q)
#pragma unroll
          for (int c = 0; c < CPT; ++c) acc[q][c] += av[q] * wr[c];
      }
      __syncthreads();
    }
  }
  T* dst = static_cast<T*>(a.dst);
  const T* bias = static_cast<const T*>(a.bias);
#pragma unroll
  for (int q = 0; q < PPT; ++q) {
    const int p = py + 16 * q;
    if (pix_n[p] < 0) continue;
    const int64_t base = pix_n[p] * a.sd_n + pix_h[p] * a.sd_h + pix_w[p] * a.sd_w;
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
      const int64_t ch = n0 + cx + 16 * c;
      if (ch < a.Cd) dst[base + ch * a.sd_c] = T(acc[q][c] + (bias ? A(bias[ch]) : A(0)));
    }
  }
}

// ---- block-channel dValues -------------------------------------------------------------------------

constexpr int kDwPix = 32;

// dv[k, o, i, r, s] for k = blockIdx.x, tap t = blockIdx.y; thread (oy, ix) owns o = oy + 16a, i = ix + 16b.
template <typename T, int B>
__global__ void __launch_bounds__(kThreads) block_dw(const T* __restrict__ dy, const T* __restrict__ x, Geom g,
                                                     const int32_t* __restrict__ row_idx,
                                                     const int32_t* __restrict__ col_idx, T* __restrict__ dv) {
  using A = typename Acc<T>::type;
  constexpr int R = B / 16;
  __shared__ A sg[kDwPix][B];
  __shared__ A sx[kDwPix][B];
  const int tid = threadIdx.x, ix = tid % 16, oy = tid / 16;
  const int64_t kb = blockIdx.x, t = blockIdx.y, r = t / g.kw, s = t % g.kw;
  const int64_t o0 = int64_t(row_idx[kb]) * B, i0 = int64_t(col_idx[kb]) * B;
  const int64_t n_pix = g.N * g.Ho * g.Wo;
  A acc[R][R];
#pragma unroll
  for (int u = 0; u < R; ++u)
#pragma unroll
    for (int v = 0; v < R; ++v) acc[u][v] = A(0);
  for (int64_t p0 = 0; p0 < n_pix; p0 += kDwPix) {
    for (int e = tid; e < kDwPix * B; e += kThreads) {
      const int p = e / B, c = e % B;
      const int64_t q = p0 + p;
      A gv = A(0), xv = A(0);
      if (q < n_pix) {
        const int64_t wo = q % g.Wo, ho = (q / g.Wo) % g.Ho, n = q / (g.Wo * g.Ho);
        if (o0 + c < g.O) gv = A(dy[q * g.O + o0 + c]);  // channels-last [N*Ho*Wo, O]
        const int64_t h = ho * g.sh - g.ph + r * g.dh, w = wo * g.sw - g.pw + s * g.dw;
        if (i0 + c < g.C && h >= 0 && h < g.H && w >= 0 && w < g.W) xv = A(x[((n * g.H + h) * g.W + w) * g.C + i0 + c]);
      }
      sg[p][c] = gv;
      sx[p][c] = xv;
    }
    __syncthreads();
#pragma unroll 4
    for (int p = 0; p < kDwPix; ++p) {
      A gr[R], xr[R];
#pragma unroll
      for (int u = 0; u < R; ++u) gr[u] = sg[p][oy + 16 * u];
#pragma unroll
      for (int v = 0; v < R; ++v) xr[v] = sx[p][ix + 16 * v];
#pragma unroll
      for (int u = 0; u < R; ++u)
#pragma unroll
        for (int v = 0; v < R; ++v) acc[u][v] += gr[u] * xr[v];
    }
    __syncthreads();
  }
  const int64_t taps = g.kh * g.kw;
#pragma unroll
  for (int u = 0; u < R; ++u)
#pragma unroll
    for (int v = 0; v < R; ++v) {
      const int64_t o = oy + 16 * u, i = ix + 16 * v;
      dv[((kb * B + o) * B + i) * taps + t] = T(acc[u][v]);
    }
}

// ---- unstructured (NCHW) ---------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) csr_fwd(const T* __restrict__ x, Geom g, const T* __restrict__ values,
                                                    const int32_t* __restrict__ row_ptr,
                                                    const int32_t* __restrict__ col_idx, const T* __restrict__ bias,
                                                    T* __restrict__ y) {
  using A = typename Acc<T>::type;
  const int64_t o = blockIdx.y;
  const int64_t q = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t plane = g.Ho * g.Wo;
  const bool live = q < g.N * plane;
  const int64_t n = live ? q / plane : 0, rem = q % plane, ho = rem / g.Wo, wo = rem % g.Wo;
  const int64_t hb = ho * g.sh - g.ph, wb = wo * g.sw - g.pw;
  const T* xn = x + n * g.C * g.H * g.W;
  const int64_t taps = g.kh * g.kw;
  A acc = A(0);
  const int32_t end = row_ptr[o + 1];
  for (int32_t j = row_ptr[o]; j < end; ++j) {  // same j in every thread: broadcast loads
    const int64_t c = col_idx[j];
    const int64_t i = c / taps, r = (c / g.kw) % g.kh, s = c % g.kw;
    const int64_t h = hb + r * g.dh, w = wb + s * g.dw;
    if (live && h >= 0 && h < g.H && w >= 0 && w < g.W) acc += A(values[j]) * A(xn[(i * g.H + h) * g.W + w]);
  }
  if (live) y[(n * g.O + o) * plane + rem] = T(acc + (bias ? A(bias[o]) : A(0)));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) csr_dx(const T* __restrict__ dy, Geom g, const T* __restrict__ values,
                                                   const int32_t* __restrict__ t_row_ptr,
                                                   const int32_t* __restrict__ t_col_idx,
                                                   const int32_t* __restrict__ t_perm, T* __restrict__ dx) {
  using A = typename Acc<T>::type;
  const int64_t i = blockIdx.y;
  const int64_t q = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t plane = g.H * g.W, oplane = g.Ho * g.Wo;
  const bool live = q < g.N * plane;
  const int64_t n = live ? q / plane : 0, rem = q % plane, h = rem / g.W, w = rem % g.W;
  const T* gn = dy + n * g.O * oplane;
  const int64_t taps = g.kh * g.kw;
  A acc = A(0);
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t hh = h + g.ph - (t / g.kw) * g.dh, ww = w + g.pw - (t % g.kw) * g.dw;
    const bool ok = live && hh >= 0 && ww >= 0 && hh % g.sh == 0 && ww % g.sw == 0 && hh / g.sh < g.Ho &&
                    ww / g.sw < g.Wo;
    const int64_t off = ok ? (hh / g.sh) * g.Wo + ww / g.sw : 0;
    const int32_t end = t_row_ptr[i * taps + t + 1];
    for (int32_t j = t_row_ptr[i * taps + t]; j < end; ++j) {
      const int64_t o = t_col_idx[j];
      if (ok) acc += A(values[t_perm[j]]) * A(gn[o * oplane + off]);
    }
  }
  if (live) dx[(n * g.C + i) * plane + rem] = T(acc);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) csr_dw(const T* __restrict__ dy, const T* __restrict__ x, Geom g,
                                                   const int32_t* __restrict__ row_idx,
                                                   const int32_t* __restrict__ col_idx, int64_t nnz,
                                                   T* __restrict__ dv) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t j = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (j >= nnz) return;
  const int64_t o = row_idx[j], c = col_idx[j], taps = g.kh * g.kw;
  const int64_t i = c / taps, r = (c / g.kw) % g.kh, s = c % g.kw;
  const int64_t oplane = g.Ho * g.Wo, n_pix = g.N * oplane;
  A acc = A(0);
  for (int64_t q = lane; q < n_pix; q += 32) {
    const int64_t n = q / oplane, rem = q % oplane, ho = rem / g.Wo, wo = rem % g.Wo;
    const int64_t h = ho * g.sh - g.ph + r * g.dh, w = wo * g.sw - g.pw + s * g.dw;
    if (h >= 0 && h < g.H && w >= 0 && w < g.W)
      acc += A(dy[(n * g.O + o) * oplane + rem]) * A(x[((n * g.C + i) * g.H + h) * g.W + w]);
  }
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) dv[j] = T(acc);
}

// ---- op entry points -------------------------------------------------------------------------------

at::Tensor empty_like_format(at::IntArrayRef shape, const at::Tensor& like) {
  return at::empty(shape, like.options().memory_format(like.suggest_memory_format()));
}

void launch_gather(const at::Tensor& src_cl, const at::Tensor& values, const at::Tensor* bias, at::Tensor& dst,
                   const at::Tensor& ptr, const at::Tensor& idx, const at::Tensor* perm, const Geom& g, bool dx) {
  const int64_t B = values.size(1);
  auto packed = values.permute({0, 3, 4, 1, 2}).contiguous();
  GatherArgs a{};
  a.src = src_cl.data_ptr();
  a.w = packed.data_ptr();
  a.bias = bias ? bias->data_ptr() : nullptr;
  a.dst = dst.data_ptr();
  a.ptr = ptr.data_ptr<int32_t>();
  a.idx = idx.data_ptr<int32_t>();
  a.perm = perm ? perm->data_ptr<int32_t>() : nullptr;
  a.Hs = src_cl.size(2), a.Ws = src_cl.size(3), a.Cs = src_cl.size(1);
  a.Hd = dst.size(2), a.Wd = dst.size(3), a.Cd = dst.size(1);
  a.n_pix = dst.size(0) * a.Hd * a.Wd;
  a.sd_n = dst.stride(0), a.sd_c = dst.stride(1), a.sd_h = dst.stride(2), a.sd_w = dst.stride(3);
  a.kh = g.kh, a.kw = g.kw, a.sh = g.sh, a.sw = g.sw, a.ph = g.ph, a.pw = g.pw, a.dh = g.dh, a.dw = g.dw;
  const int64_t n_cb = (a.Cd + B - 1) / B;
  SPARSECL_CHECK(n_cb <= 65535, "too many channel blocks (", n_cb, ") for one launch");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src_cl.scalar_type(), "bsr_conv2d_cuda", [&] {
    // fp64 tiles have fewer pixels so the shared tiles stay within 48 KiB
    constexpr int P = std::is_same<scalar_t, double>::value ? 16 : 64;
    const dim3 grid(unsigned((a.n_pix + P - 1) / P), unsigned(n_cb));
    auto go = [&](auto kernel) { kernel<<<grid, kThreads, 0, stream>>>(a); };
    if (B == 16) {
      dx ? go(block_gather_mm<scalar_t, 16, P, true>) : go(block_gather_mm<scalar_t, 16, P, false>);
    } else if (B == 32) {
      dx ? go(block_gather_mm<scalar_t, 32, P, true>) : go(block_gather_mm<scalar_t, 32, P, false>);
    } else {
      dx ? go(block_gather_mm<scalar_t, 64, P, true>) : go(block_gather_mm<scalar_t, 64, P, false>);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bsr_conv2d_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, int64_t out_channels, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d(x, values, row_ptr, col_idx, out_channels, bias, stride, padding, dilation);
  c10::cuda::CUDAGuard guard(x.device());
  auto y = empty_like_format({g.N, g.O, g.Ho, g.Wo}, x);
  if (y.numel() == 0) return y;
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto bc = bias ? bias->contiguous() : at::Tensor();
  launch_gather(xc, values, bias ? &bc : nullptr, y, row_ptr, col_idx, nullptr, g, false);
  return y;
}

at::Tensor bsr_conv2d_dx_cuda(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                              const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, stride, padding, dilation);
  c10::cuda::CUDAGuard guard(dy.device());
  auto dx = empty_like_format(x_shape, dy);
  if (dx.numel() == 0) return dx;
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  launch_gather(gc, values, nullptr, dx, t_row_ptr, t_col_idx, &t_perm, g, true);
  return dx;
}

at::Tensor bsr_conv2d_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                              const at::Tensor& col_idx, int64_t block_size, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d_dw(dy, x, row_idx, col_idx, block_size, kernel_size, stride, padding, dilation);
  const int64_t B = block_size;
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t nnzb = col_idx.size(0);
  if (nnzb == 0 || g.N * g.Ho * g.Wo == 0) return at::zeros({nnzb, B, B, g.kh, g.kw}, x.options());
  SPARSECL_CHECK(g.kh * g.kw <= 65535, "kernel has too many taps for one launch");
  auto dv = at::empty({nnzb, B, B, g.kh, g.kw}, x.options());
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(unsigned(nnzb), unsigned(g.kh * g.kw));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bsr_conv2d_dw_cuda", [&] {
    const scalar_t *gp = gc.data_ptr<scalar_t>(), *xp = xc.data_ptr<scalar_t>();
    const int32_t *ri = row_idx.data_ptr<int32_t>(), *ci = col_idx.data_ptr<int32_t>();
    scalar_t* out = dv.data_ptr<scalar_t>();
    if (B == 16) {
      block_dw<scalar_t, 16><<<grid, kThreads, 0, stream>>>(gp, xp, g, ri, ci, out);
    } else if (B == 32) {
      block_dw<scalar_t, 32><<<grid, kThreads, 0, stream>>>(gp, xp, g, ri, ci, out);
    } else {
      block_dw<scalar_t, 64><<<grid, kThreads, 0, stream>>>(gp, xp, g, ri, ci, out);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dv;
}

dim3 pixel_grid(int64_t n_pix, int64_t channels) {
  SPARSECL_CHECK(channels <= 65535, "too many channels (", channels, ") for one launch");
  return dim3(unsigned((n_pix + kThreads - 1) / kThreads), unsigned(channels));
}

at::Tensor csr_conv2d_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, int64_t out_channels, at::IntArrayRef kernel_size,
                           const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d(x, values, row_ptr, col_idx, out_channels, kernel_size, bias, stride, padding,
                                  dilation);
  c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y.contiguous(x.suggest_memory_format());
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "csr_conv2d_cuda", [&] {
    csr_fwd<scalar_t><<<pixel_grid(g.N * g.Ho * g.Wo, g.O), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
        bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y.contiguous(x.suggest_memory_format());
}

at::Tensor csr_conv2d_dx_cuda(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                              const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, kernel_size, stride, padding,
                                     dilation);
  c10::cuda::CUDAGuard guard(dy.device());
  auto dx = at::empty(x_shape, dy.options());
  if (dx.numel() == 0) return dx.contiguous(dy.suggest_memory_format());
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "csr_conv2d_dx_cuda", [&] {
    csr_dx<scalar_t><<<pixel_grid(g.N * g.H * g.W, g.C), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), t_row_ptr.data_ptr<int32_t>(),
        t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), dx.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx.contiguous(dy.suggest_memory_format());
}

at::Tensor csr_conv2d_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                              const at::Tensor& col_idx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dw(dy, x, row_idx, col_idx, kernel_size, stride, padding, dilation);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t nnz = col_idx.size(0);
  if (nnz == 0 || g.N * g.Ho * g.Wo == 0) return at::zeros({nnz}, x.options());
  auto dv = at::empty({nnz}, x.options());
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "csr_conv2d_dw_cuda", [&] {
    csr_dw<scalar_t><<<unsigned((nnz + 7) / 8), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, row_idx.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
        nnz, dv.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) {
  m.impl("bsr_conv2d", &bsr_conv2d_cuda);
  m.impl("bsr_conv2d_dx", &bsr_conv2d_dx_cuda);
  m.impl("bsr_conv2d_dw", &bsr_conv2d_dw_cuda);
  m.impl("csr_conv2d", &csr_conv2d_cuda);
  m.impl("csr_conv2d_dx", &csr_conv2d_dx_cuda);
  m.impl("csr_conv2d_dw", &csr_conv2d_dw_cuda);
}

}  // namespace sparsecl
