// Sparse conv2d on CPU as implicit GEMM: the weight is viewed as [out_ch, in_ch*kh*kw] and no im2col
// buffer is built; input rows are gathered per tile.
//
// bsr_conv2d: block-channel sparsity. Blocks are B output x B input channels with all kh*kw taps kept
// together, values [nnzb, B, B, kh, kw], indexed by a BlockSparseLayout over the [out_ch, in_ch] grid.
// Computed channels-last: for a tile of output pixels and one output-channel block, every tap of every
// active block is a dense [P x B] @ [B x B] product on gathered input rows (out-of-image taps read a
// zero row). dX is the same gather-GEMM on grad_out through the transposed index; dValues is computed
// only at active blocks (per block x tap job).
//
// csr_conv2d: element sparsity over [out_ch, in_ch*kh*kw] (column c = (i*kh + r)*kw + s, PyTorch's
// weight order), values [nnz]. Computed NCHW: each nonzero adds v * (a shifted input plane) to its
// output plane, vectorised along output columns; dX uses the transposed index; dValues is one
// dot product per nonzero.
//
// Outputs are returned in the memory format of x (forward) / grad_out (dX).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"

namespace sparsecl {
namespace {

struct Geom {
  int64_t N, C, H, W, O, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

// 0 when the dilated kernel does not fit the padded input (C++ division truncates toward zero, so the plain
// formula would give 1 for a span in (-s, 0) and accept an invalid convolution)
int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

void check_conv_args(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding and dilation must have 2 entries each");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation must be positive, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "padding must be non-negative, got ", padding);
}

Geom make_geom(at::IntArrayRef x_shape, int64_t O, int64_t kh, int64_t kw, at::IntArrayRef stride,
               at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_conv_args(stride, padding, dilation);
  TORCH_CHECK(kh > 0 && kw > 0, "kernel size must be positive, got ", kh, "x", kw);
  Geom g{x_shape[0], x_shape[1], x_shape[2], x_shape[3], O, 0, 0, kh, kw, stride[0], stride[1], padding[0],
         padding[1], dilation[0], dilation[1]};
  g.Ho = out_size(g.H, kh, g.sh, g.ph, g.dh);
  g.Wo = out_size(g.W, kw, g.sw, g.pw, g.dw);
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "input ", x_shape, " is too small for kernel ", kh, "x", kw, " with padding ",
              padding, " and dilation ", dilation);
  return g;
}

// Output positions o in [lo, hi) whose input coordinate o*s - p + t lies in [0, n).
inline void valid_range(int64_t n_out, int64_t n_in, int64_t s, int64_t p, int64_t t, int64_t& lo, int64_t& hi) {
  const int64_t off = t - p;  // in = o*s + off
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = n_in - 1 - off < 0 ? 0 : std::min(n_out, (n_in - 1 - off) / s + 1);
  if (hi < lo) hi = lo;
}

void check_float_like(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " dtype ", t.scalar_type(), " != ", like.scalar_type());
  check_same_device(t, name, like);
}

void check_bias(const c10::optional<at::Tensor>& bias, int64_t O, const at::Tensor& x) {
  if (!bias) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == O, "bias must be [", O, "], got ", bias->sizes());
  check_float_like(*bias, "bias", x);
}

at::Tensor in_format(const at::Tensor& t, const at::Tensor& like) {
  return t.contiguous(like.suggest_memory_format());
}

// ---- block-channel kernels (channels-last) -------------------------------------------------------

constexpr int64_t kPix = 32;  // output pixels per tile

// acc[p][0:B] += sum_k rows[p][k] * w[k][0:B] for p < np (np <= kPix), k < kb. Four pixels share
// each weight row load (register blocking); out-of-image rows point at zeros.
template <typename T, int B>
__attribute__((always_inline)) inline void gather_gemm(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                       T* acc) {
  int64_t p = 0;
  for (; p + 4 <= np; p += 4) {
    T a0[B], a1[B], a2[B], a3[B];
    for (int o = 0; o < B; ++o) {
      a0[o] = acc[(p + 0) * B + o]; a1[o] = acc[(p + 1) * B + o];
      a2[o] = acc[(p + 2) * B + o]; a3[o] = acc[(p + 3) * B + o];
    }
    const T *r0 = rows[p], *r1 = rows[p + 1], *r2 = rows[p + 2], *r3 = rows[p + 3];
    for (int64_t k = 0; k < kb; ++k) {
      const T* wk = w + k * B;
      const T x0 = r0[k], x1 = r1[k], x2 = r2[k], x3 = r3[k];
      for (int o = 0; o < B; ++o) {
        const T wv = wk[o];
        a0[o] += x0 * wv; a1[o] += x1 * wv; a2[o] += x2 * wv; a3[o] += x3 * wv;
      }
    }
    for (int o = 0; o < B; ++o) {
      acc[(p + 0) * B + o] = a0[o]; acc[(p + 1) * B + o] = a1[o];
      acc[(p + 2) * B + o] = a2[o]; acc[(p + 3) * B + o] = a3[o];
    }
  }
  for (; p < np; ++p) {
    const T* r = rows[p];
    T* a = acc + p * B;
    for (int64_t k = 0; k < kb; ++k) {
      const T xv = r[k];
      const T* wk = w + k * B;
      for (int o = 0; o < B; ++o) a[o] += xv * wk[o];
    }
  }
}

template <typename T, int B>
void gather_gemm_generic(const T* const* rows, int64_t np, const T* w, int64_t kb, T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}
template <typename T, int B>
__attribute__((target("avx2,fma"))) void gather_gemm_avx2(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                           T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}
template <typename T, int B>
__attribute__((target("avx512f"))) void gather_gemm_avx512(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                            T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}

template <typename T>
using GemmFn = void (*)(const T* const*, int64_t, const T*, int64_t, T*);

template <typename T, int B>
GemmFn<T> pick_gemm() {
  switch (cpu::runtime_isa_enum()) {
    case cpu::Isa::kAvx512: return &gather_gemm_avx512<T, B>;
    case cpu::Isa::kAvx2: return &gather_gemm_avx2<T, B>;
    default: return &gather_gemm_generic<T, B>;
  }
}

template <typename T>
GemmFn<T> gemm_for(int64_t B) {
  switch (B) {
    case 16: return pick_gemm<T, 16>();
    case 32: return pick_gemm<T, 32>();
    case 64: return pick_gemm<T, 64>();
  }
  TORCH_CHECK(false, "block size must be 16, 32 or 64, got ", B);
}

// One gather-GEMM pass shared by forward and dX. `dst` is [N*Hd*Wd, Cd] channels-last; `panels` hold
// per block [taps][B (source ch)][B (dest ch)] packed weights, zero-padded at clipped edges. For
// destination channel block db the active blocks are j in ptr[db]..ptr[db+1] (panel perm[j], source
// channel block sb[j]). `src_row(n, y, x, r, s)` is the source row for destination pixel (n, y, x)
// and tap (r, s), or nullptr outside the image.
template <typename T, typename RowFn>
void gather_pass(int64_t N, int64_t Hd, int64_t Wd, int64_t Cd, int64_t Cs, int64_t kh, int64_t kw, int64_t B,
                 const T* panels, const int32_t* ptr, const int32_t* sb, const int32_t* perm, const T* bias, T* dst,
                 RowFn src_row) {
  const int64_t taps = kh * kw, n_db = (Cd + B - 1) / B;
  const int64_t M = N * Hd * Wd, n_tiles = (M + kPix - 1) / kPix;
  const GemmFn<T> gemm = gemm_for<T>(B);
  const std::vector<T> zeros(B, T(0));
  at::parallel_for(0, n_db * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(kPix * B);
    std::vector<const T*> rows(kPix);
    int64_t pn[kPix], py[kPix], px[kPix];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t db = job % n_db, m0 = (job / n_db) * kPix, np = std::min(kPix, M - m0);
      const int64_t d0 = db * B, dbw = std::min(B, Cd - d0);
      for (int64_t p = 0; p < np; ++p) {
        const int64_t m = m0 + p;
        pn[p] = m / (Hd * Wd);
        py[p] = (m / Wd) % Hd;
        px[p] = m % Wd;
        for (int64_t o = 0; o < B; ++o) acc[p * B + o] = (bias && o < dbw) ? bias[d0 + o] : T(0);
      }
      for (int32_t j = ptr[db]; j < ptr[db + 1]; ++j) {
        const int64_t sbw = std::min(B, Cs - int64_t(sb[j]) * B), s0 = int64_t(sb[j]) * B;
        const T* panel = panels + int64_t(perm ? perm[j] : j) * taps * B * B;
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t r = t / kw, s = t % kw;
          for (int64_t p = 0; p < np; ++p) {
            const T* row = src_row(pn[p], py[p], px[p], r, s);
            rows[p] = row ? row + s0 : zeros.data();
          }
          gemm(rows.data(), np, panel + t * B * B, sbw, acc.data());
        }
      }
      for (int64_t p = 0; p < np; ++p) std::copy(acc.data() + p * B, acc.data() + p * B + dbw, dst + (m0 + p) * Cd + d0);
    }
  });
}

// Pack values [nnzb, B(o), B(i), kh, kw] into panels [nnzb, taps, B, B]: (i, o) order when
// `o_fast`, else (o, i). Clipped edge entries are zero.
template <typename T>
void pack_panels(const T* v, int64_t nnzb, int64_t B, int64_t taps, bool o_fast, T* out) {
  at::parallel_for(0, nnzb, 16, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i)
          for (int64_t t = 0; t < taps; ++t) {
            const T val = v[((k * B + o) * B + i) * taps + t];
            out[((k * taps + t) * B + (o_fast ? i : o)) * B + (o_fast ? o : i)] = val;
          }
  });
}

// dValues at active blocks: dv[k, o, i, r, s] = sum over output pixels of dy[p, o0+o] * x[src(p, r, s), i0+i].
template <typename T>
void block_dw(const T* dy, const T* x, const Geom& g, int64_t B, const int32_t* row_idx, const int32_t* col_idx,
              int64_t nnzb, T* dv) {
  const int64_t taps = g.kh * g.kw;
  at::parallel_for(0, nnzb * taps, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(B * B);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t k = job / taps, t = job % taps, r = t / g.kw, s = t % g.kw;
      const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, g.O - o0);
      const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, g.C - i0);
      std::fill(acc.begin(), acc.end(), T(0));
      int64_t hlo, hhi, wlo, whi;
      valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
      valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const int64_t h = ho * g.sh - g.ph + r * g.dh;
          for (int64_t wo = wlo; wo < whi; ++wo) {
            const int64_t w = wo * g.sw - g.pw + s * g.dw;
            const T* gr = dy + ((n * g.Ho + ho) * g.Wo + wo) * g.O + o0;
            const T* xr = x + ((n * g.H + h) * g.W + w) * g.C + i0;
            for (int64_t o = 0; o < ob; ++o) {
              const T gv = gr[o];
              T* a = acc.data() + o * B;
              for (int64_t i = 0; i < ib; ++i) a[i] += gv * xr[i];
            }
          }
        }
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i) dv[((k * B + o) * B + i) * taps + t] = acc[o * B + i];
    }
  });
}

// ---- unstructured (CSR) kernels (NCHW) -----------------------------------------------------------

inline void decode(int64_t c, const Geom& g, int64_t& i, int64_t& r, int64_t& s) {
  const int64_t taps = g.kh * g.kw;
  i = c / taps;
  r = (c % taps) / g.kw;
  s = c % g.kw;
}

// y[n, o] plane = bias + sum over nonzeros (o, c) of v * shifted x[n, i] plane.
template <typename T>
void csr_forward(const T* x, const Geom& g, const T* values, const int32_t* row_ptr, const int32_t* col_idx,
                 const T* bias, T* y) {
  const int64_t plane = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.O, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / g.O, o = job % g.O;
      T* acc = y + job * plane;
      std::fill(acc, acc + plane, bias ? bias[o] : T(0));
      for (int32_t k = row_ptr[o]; k < row_ptr[o + 1]; ++k) {
        int64_t i, r, s, hlo, hhi, wlo, whi;
        decode(col_idx[k], g, i, r, s);
        const T v = values[k];
        valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
        valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
        const T* xp = x + (n * g.C + i) * g.H * g.W;
        const int64_t woff = s * g.dw - g.pw;
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const T* xr = xp + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
          T* a = acc + ho * g.Wo;
          if (g.sw == 1) {
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo] += v * xr[wo];
          } else {
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo] += v * xr[wo * g.sw];
          }
        }
      }
    }
  });
}

// dx[n, i] plane = sum over taps (r, s) and nonzeros (o, (i, r, s)) of v * dy[n, o] scattered back.
template <typename T>
void csr_dx(const T* dy, const Geom& g, const T* values, const int32_t* t_row_ptr, const int32_t* t_col_idx,
            const int32_t* t_perm, T* dx) {
  const int64_t plane = g.H * g.W, taps = g.kh * g.kw;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / g.C, i = job % g.C;
      T* acc = dx + job * plane;
      std::fill(acc, acc + plane, T(0));
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t c = i * taps + t, r = t / g.kw, s = t % g.kw;
        int64_t hlo, hhi, wlo, whi;
        valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
        valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
        const int64_t woff = s * g.dw - g.pw;
        for (int32_t j = t_row_ptr[c]; j < t_row_ptr[c + 1]; ++j) {
          const int64_t o = t_col_idx[j];
          const T v = values[t_perm[j]];
          const T* gp = dy + (n * g.O + o) * g.Ho * g.Wo;
          for (int64_t ho = hlo; ho < hhi; ++ho) {
            T* a = acc + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
            const T* gr = gp + ho * g.Wo;
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo * g.sw] += v * gr[wo];
          }
        }
      }
    }
  });
}

// dv[k] = sum over n and output pixels of dy[n, o_k] * x[n, i_k] shifted by tap (r_k, s_k).
template <typename T>
void csr_dw(const T* dy, const T* x, const Geom& g, const int32_t* row_idx, const int32_t* col_idx, int64_t nnz,
            T* dv) {
  at::parallel_for(0, nnz, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      int64_t i, r, s, hlo, hhi, wlo, whi;
      const int64_t o = row_idx[k];
      decode(col_idx[k], g, i, r, s);
      valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
      valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
      const int64_t woff = s * g.dw - g.pw;
      T sum = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* gp = dy + (n * g.O + o) * g.Ho * g.Wo;
        const T* xp = x + (n * g.C + i) * g.H * g.W;
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const T* gr = gp + ho * g.Wo;
          const T* xr = xp + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
          for (int64_t wo = wlo; wo < whi; ++wo) sum += gr[wo] * xr[wo * g.sw];
        }
      }
      dv[k] = sum;
    }
  });
}

// ---- op entry points -----------------------------------------------------------------------------

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, " must be 4-D [N, C, H, W], got ", x.sizes());
  check_float(x, name, false);
}

void check_block_values(const at::Tensor& values, const at::Tensor& like) {
  TORCH_CHECK(values.dim() == 5 && values.size(1) == values.size(2),
              "values must be [nnzb, B, B, kh, kw], got ", values.sizes());
  check_float_like(values, "values", like);
}

at::Tensor bsr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_x(x, "x");
  check_block_values(values, x);
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  TORCH_CHECK(col_idx.size(0) == values.size(0), "col_idx has ", col_idx.size(0), " entries but values has ",
              values.size(0), " blocks");
  TORCH_CHECK(out_channels >= 0, "out_channels must be >= 0");
  const int64_t B = values.size(1);
  const Geom g = make_geom(x.sizes(), out_channels, values.size(3), values.size(4), stride, padding, dilation);
  check_ptr_array(row_ptr, (g.O + B - 1) / B, values.size(0), "row_ptr");
  check_ids_below(col_idx, (g.C + B - 1) / B, "col_idx");
  check_bias(bias, g.O, x);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return in_format(y, x);
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_conv2d_cpu", [&] {
    pack_panels<scalar_t>(values.contiguous().data_ptr<scalar_t>(), values.size(0), B, taps, true,
                          panels.data_ptr<scalar_t>());
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    gather_pass<scalar_t>(g.N, g.Ho, g.Wo, g.O, g.C, g.kh, g.kw, B, panels.data_ptr<scalar_t>(),
                          row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nullptr,
                          bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                          [&](int64_t n, int64_t ho, int64_t wo, int64_t r, int64_t s) -> const scalar_t* {
                            const int64_t h = ho * g.sh - g.ph + r * g.dh, w = wo * g.sw - g.pw + s * g.dw;
                            if (h < 0 || h >= g.H || w < 0 || w >= g.W) return nullptr;
                            return xp + ((n * g.H + h) * g.W + w) * g.C;
                          });
  });
  return in_format(y, x);
}

at::Tensor bsr_conv2d_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_x(dy, "grad_out");
  check_block_values(values, dy);
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  TORCH_CHECK(t_col_idx.size(0) == values.size(0) && t_perm.size(0) == values.size(0),
              "t_col_idx and t_perm must have nnzb entries");
  TORCH_CHECK(x_shape.size() == 4 && x_shape[0] == dy.size(0), "x_shape must be [N, C, H, W] with grad_out's N");
  const int64_t B = values.size(1);
  const Geom g = make_geom(x_shape, dy.size(1), values.size(3), values.size(4), stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_out ", dy.sizes(),
              " does not match the convolution of x_shape ", x_shape);
  check_ptr_array(t_row_ptr, (g.C + B - 1) / B, values.size(0), "t_row_ptr");
  check_ids_below(t_col_idx, (g.O + B - 1) / B, "t_col_idx");
  check_ids_below(t_perm, values.size(0), "t_perm");
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto dx = at::empty(x_shape, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (dx.numel() == 0) return in_format(dx, dy);
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "bsr_conv2d_dx_cpu", [&] {
    pack_panels<scalar_t>(values.contiguous().data_ptr<scalar_t>(), values.size(0), B, taps, false,
                          panels.data_ptr<scalar_t>());
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    gather_pass<scalar_t>(g.N, g.H, g.W, g.C, g.O, g.kh, g.kw, B, panels.data_ptr<scalar_t>(),
                          t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(),
                          nullptr, dx.data_ptr<scalar_t>(),
                          [&](int64_t n, int64_t h, int64_t w, int64_t r, int64_t s) -> const scalar_t* {
                            const int64_t hh = h + g.ph - r * g.dh, ww = w + g.pw - s * g.dw;
                            if (hh < 0 || ww < 0 || hh % g.sh || ww % g.sw) return nullptr;
                            const int64_t ho = hh / g.sh, wo = ww / g.sw;
                            if (ho >= g.Ho || wo >= g.Wo) return nullptr;
                            return gp + ((n * g.Ho + ho) * g.Wo + wo) * g.O;
                          });
  });
  return in_format(dx, dy);
}

void check_dw_inputs(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx, const at::Tensor& col_idx) {
  check_x(x, "x");
  check_x(dy, "grad_out");
  check_float_like(dy, "grad_out", x);
  TORCH_CHECK(dy.size(0) == x.size(0), "grad_out and x must have the same batch size");
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  TORCH_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
}

at::Tensor bsr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, int64_t block_size, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_dw_inputs(dy, x, row_idx, col_idx);
  TORCH_CHECK(block_size > 0, "block_size must be positive");
  TORCH_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const int64_t B = block_size;
  const Geom g = make_geom(x.sizes(), dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_out ", dy.sizes(), " does not match the convolution of x ",
              x.sizes());
  check_ids_below(row_idx, (g.O + B - 1) / B, "row_idx");
  check_ids_below(col_idx, (g.C + B - 1) / B, "col_idx");
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto dv = at::empty({col_idx.size(0), B, B, g.kh, g.kw}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_conv2d_dw_cpu", [&] {
    block_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, B, row_idx.data_ptr<int32_t>(),
                       col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<scalar_t>());
  });
  return dv;
}

void check_csr_values(const at::Tensor& values, const at::Tensor& like, const at::Tensor& idx) {
  TORCH_CHECK(values.dim() == 1, "values must be 1-D [nnz], got ", values.sizes());
  check_float_like(values, "values", like);
  TORCH_CHECK(values.size(0) == idx.size(0), "values has ", values.size(0), " entries but the index has ", idx.size(0));
}

at::Tensor csr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, at::IntArrayRef kernel_size,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  check_x(x, "x");
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  check_csr_values(values, x, col_idx);
  TORCH_CHECK(out_channels >= 0, "out_channels must be >= 0");
  TORCH_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const Geom g = make_geom(x.sizes(), out_channels, kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_ptr_array(row_ptr, g.O, values.size(0), "row_ptr");
  check_ids_below(col_idx, g.C * g.kh * g.kw, "col_idx");
  check_bias(bias, g.O, x);
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_cpu", [&] {
    csr_forward<scalar_t>(xc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(),
                          col_idx.data_ptr<int32_t>(), bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
  });
  return in_format(y, x);
}

at::Tensor csr_conv2d_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  check_x(dy, "grad_out");
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  check_csr_values(values, dy, t_col_idx);
  TORCH_CHECK(t_perm.size(0) == values.size(0), "t_perm must have nnz entries");
  TORCH_CHECK(x_shape.size() == 4 && x_shape[0] == dy.size(0), "x_shape must be [N, C, H, W] with grad_out's N");
  TORCH_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const Geom g = make_geom(x_shape, dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_out ", dy.sizes(),
              " does not match the convolution of x_shape ", x_shape);
  check_ptr_array(t_row_ptr, g.C * g.kh * g.kw, values.size(0), "t_row_ptr");
  check_ids_below(t_col_idx, g.O, "t_col_idx");
  check_ids_below(t_perm, values.size(0), "t_perm");
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty(x_shape, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_conv2d_dx_cpu", [&] {
    csr_dx<scalar_t>(gc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), t_row_ptr.data_ptr<int32_t>(),
                     t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), dx.data_ptr<scalar_t>());
  });
  return in_format(dx, dy);
}

at::Tensor csr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_dw_inputs(dy, x, row_idx, col_idx);
  TORCH_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const Geom g = make_geom(x.sizes(), dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  TORCH_CHECK(dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_out ", dy.sizes(), " does not match the convolution of x ",
              x.sizes());
  check_ids_below(row_idx, g.O, "row_idx");
  check_ids_below(col_idx, g.C * g.kh * g.kw, "col_idx");
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  auto dv = at::empty({col_idx.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_dw_cpu", [&] {
    csr_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, row_idx.data_ptr<int32_t>(),
                     col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<scalar_t>());
  });
  return dv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("bsr_conv2d", &bsr_conv2d_cpu);
  m.impl("bsr_conv2d_dx", &bsr_conv2d_dx_cpu);
  m.impl("bsr_conv2d_dw", &bsr_conv2d_dw_cpu);
  m.impl("csr_conv2d", &csr_conv2d_cpu);
  m.impl("csr_conv2d_dx", &csr_conv2d_dx_cpu);
  m.impl("csr_conv2d_dw", &csr_conv2d_dw_cpu);
}

}  // namespace sparsecl
