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
#include <climits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "sparse_conv_checks.h"
#include "cpu/isa.h"
#include "cpu/microkernels.h"

namespace sparsecl {
namespace {

using Geom = ConvShape;

// Output positions o in [lo, hi) whose input coordinate o*s - p + t lies in [0, n).
inline void valid_range(int64_t n_out, int64_t n_in, int64_t s, int64_t p, int64_t t, int64_t& lo, int64_t& hi) {
  const int64_t off = t - p;  // in = o*s + off
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = n_in - 1 - off < 0 ? 0 : std::min(n_out, (n_in - 1 - off) / s + 1);
  if (hi < lo) hi = lo;
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
  SPARSECL_CHECK(false, "block size must be 16, 32 or 64, got ", B);
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

// ---- unstructured fast path (stride 1): implicit GEMM in padded-width space -------------------------
// The source is padded once into planes of width Wp (zeros around the image). With the output
// flattened over the same width, q = ho*Wp + wo, every tap of every channel is one shift:
// out[q] += v * src[plane(c) + q + r*dh*Wp + s*dw]. A tile of consecutive q for NB images stays in
// registers across all nonzeros of an output row; the columns wo >= Wo of a row are computed into
// garbage and dropped on store. Reads past a plane's end land in the next plane or the buffer's
// zero slack and only feed dropped columns. dX is the same kernel on grad_out padded by the full
// kernel extent, with the transposed index and flipped taps; dValues is a dot product per nonzero
// (SDDMM) of the grad_out tile (zeros in its garbage columns) with the shifted source tile.

template <typename T, int VB>
struct Vt {
  typedef T V __attribute__((vector_size(VB)));
  static constexpr int L = VB / sizeof(T);
};

// out[b*NT*L + j] = (prev ? prev[b*NT*L + j] : init) + sum_k val[k] * xb[b][off[k] + j], j < NT*L, b < NB.
template <typename T, int VB, int NT, int NB>
__attribute__((always_inline)) inline void pw_row_body(const T* const* xb, const int32_t* off, const T* val,
                                                       int64_t nnz, T init, const T* prev, T* out) {
  using V = typename Vt<T, VB>::V;
  constexpr int L = Vt<T, VB>::L;
  V acc[NB][NT];
  const T* base[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    base[b] = xb[b];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      if (prev) __builtin_memcpy(&acc[b][t], prev + (b * NT + t) * L, VB);
      else acc[b][t] = V{} + init;
    }
  }
  for (int64_t k = 0; k < nnz; ++k) {
    const V v = V{} + val[k];
    const int64_t o = off[k];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        V x;
        __builtin_memcpy(&x, base[b] + o + t * L, VB);
        acc[b][t] += v * x;
      }
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) __builtin_memcpy(out + (b * NT + t) * L, &acc[b][t], VB);
}

// dv[k] += sum_b sum_{j < NT*L} gb[b][j] * xb[b][off[k] + j].
template <typename T, int VB, int NT, int NB>
__attribute__((always_inline)) inline void pw_dot_body(const T* const* xb, const T* const* gb, const int32_t* off,
                                                       int64_t nnz, T* dv) {
  using V = typename Vt<T, VB>::V;
  constexpr int L = Vt<T, VB>::L;
  V g[NB][NT];
  const T* base[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    base[b] = xb[b];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) __builtin_memcpy(&g[b][t], gb[b] + t * L, VB);
  }
  for (int64_t k = 0; k < nnz; ++k) {
    V s[2] = {V{}, V{}};
    const int64_t o = off[k];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        V x;
        __builtin_memcpy(&x, base[b] + o + t * L, VB);
        s[(b * NT + t) & 1] += g[b][t] * x;
      }
    }
    s[0] += s[1];
    T sum = 0;
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) sum += s[0][i];
    dv[k] += sum;
  }
}

template <typename T>
struct PwKernels {
  int lanes = 1, nt = 1, nb = 1, nb_dot = 1;  // vector lanes, vectors per tile, images per row / dot call
  void (*row)(const T* const*, const int32_t*, const T*, int64_t, T, const T*, T*) = nullptr;
  void (*dot)(const T* const*, const T* const*, const int32_t*, int64_t, T*) = nullptr;
};

// Images per call: the NB*NT accumulators (row) or grad_out registers (dot, which also needs two
// partial sums and a load) fit the ISA's register file (R = 28 of 32 zmm, 12 of 16 ymm/xmm). Rows
// stop at 16 accumulators (enough to hide the FMA latency): fewer images keep the source chunk small.
constexpr int pw_nb(int nt, int regs) { return std::min(8, std::max(1, std::min(regs, 16) / nt)); }
constexpr int pw_nb_dot(int nt, int regs) { return std::min(8, std::max(1, (regs - 4) / nt)); }

#define SPARSECL_PW_ISA(NAME, TARGET, VB, REGS)                                                              \
  template <typename T, int NT>                                                                              \
  __attribute__((target(TARGET))) void pw_row_##NAME(const T* const* xb, const int32_t* off, const T* val,   \
                                                     int64_t nnz, T init, const T* prev, T* out) {           \
    pw_row_body<T, VB, NT, pw_nb(NT, REGS)>(xb, off, val, nnz, init, prev, out);                             \
  }                                                                                                          \
  template <typename T, int NT>                                                                              \
  __attribute__((target(TARGET))) void pw_dot_##NAME(const T* const* xb, const T* const* gb,                 \
                                                     const int32_t* off, int64_t nnz, T* dv) {               \
    pw_dot_body<T, VB, NT, pw_nb_dot(NT, REGS)>(xb, gb, off, nnz, dv);                                       \
  }                                                                                                          \
  template <typename T, int NT>                                                                              \
  PwKernels<T> pw_kernels_##NAME() {                                                                         \
    PwKernels<T> k;                                                                                          \
    k.lanes = VB / sizeof(T);                                                                                \
    k.nt = NT;                                                                                               \
    k.nb = pw_nb(NT, REGS);                                                                                  \
    k.nb_dot = pw_nb_dot(NT, REGS);                                                                          \
    k.row = &pw_row_##NAME<T, NT>;                                                                           \
    k.dot = &pw_dot_##NAME<T, NT>;                                                                           \
    return k;                                                                                                \
  }
SPARSECL_PW_ISA(avx512, "avx512f,avx512vl,avx512bw,avx512dq,fma", 64, 28)
SPARSECL_PW_ISA(avx2, "avx2,fma", 32, 12)
SPARSECL_PW_ISA(generic, "sse2", 16, 12)
#undef SPARSECL_PW_ISA

// Kernels of the active ISA with the widest tile (7, 4, 2 or 1 vectors) that computes at most 25% more
// outputs than a plane of `len` needs (whole tiles). Wide tiles share each nonzero's broadcast over more
// FMAs; 512@7 (len 63) on AVX2 would compute 112 outputs in two 7-vector tiles, 64 in two 4-vector ones.
template <typename T, template <typename, int> class Pick>
PwKernels<T> pw_by_len(int64_t len, int lanes) {
  const int64_t v = std::max<int64_t>(1, (len + lanes - 1) / lanes);
  auto fits = [&](int64_t nt) { return 4 * ((v + nt - 1) / nt * nt) <= 5 * v; };
  if (fits(7)) return Pick<T, 7>::get();
  if (fits(4)) return Pick<T, 4>::get();
  if (fits(2)) return Pick<T, 2>::get();
  return Pick<T, 1>::get();
}
template <typename T, int NT> struct PwPick512 { static PwKernels<T> get() { return pw_kernels_avx512<T, NT>(); } };
template <typename T, int NT> struct PwPick2 { static PwKernels<T> get() { return pw_kernels_avx2<T, NT>(); } };
template <typename T, int NT> struct PwPickG { static PwKernels<T> get() { return pw_kernels_generic<T, NT>(); } };

template <typename T>
PwKernels<T> pick_pw(int64_t len) {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512: return pw_by_len<T, PwPick512>(len, 64 / sizeof(T));
    case cpu::Isa::kAvx2: return pw_by_len<T, PwPick2>(len, 32 / sizeof(T));
    default: return pw_by_len<T, PwPickG>(len, 16 / sizeof(T));
  }
}

constexpr int64_t kPwSlack = 1024;  // zero elements after the last padded plane (> the widest tile)

// Where pad_planes puts the stride phases of its planes. Plane p (image p / C, channel p % C) is
// split into its sh x sw stride phases: padded pixel (hp, wp) goes to phase (hp % sh, wp % sw),
// position (hp / sh, wp / sw) of a phase plane of `ps` elements in rows of Wq pixels; phase (a, b)
// of plane p starts at dst + (p / C) * img() + ((a * sw + b) * C + p % C) * ps. sh = sw = 1 is
// plain padding (plane p at dst + p * ps).
struct PhaseSplit {
  int64_t sh = 1, sw = 1, C = 1;
  int64_t img(int64_t ps) const { return sh * sw * C * ps; }
};

// dst = src planes [P, H, W] (pixels of `e` contiguous elements) placed at (top, left) in zero planes
// with rows of Wq pixels, split into stride phases by `split`; then `slack` zeros.
template <typename T>
void pad_planes(const T* src, int64_t P, int64_t H, int64_t W, int64_t top, int64_t left, int64_t Wq, int64_t ps,
                T* dst, int64_t slack = kPwSlack, PhaseSplit split = {}, int64_t e = 1) {
  const int64_t sh = split.sh, sw = split.sw, C = split.C;
  at::parallel_for(0, P, 16, [&](int64_t b, int64_t end) {
    for (int64_t p = b; p < end; ++p) {
      T* d0 = dst + (p / C) * split.img(ps) + (p % C) * ps;
      for (int64_t ph = 0; ph < sh * sw; ++ph) std::fill(d0 + ph * C * ps, d0 + ph * C * ps + ps, T(0));
      for (int64_t h = 0; h < H; ++h) {
        const T* s = src + (p * H + h) * W * e;
        const int64_t hp = h + top;
        T* d = d0 + (hp % sh) * sw * C * ps + (hp / sh) * Wq * e;
        if (sw == 1) {
          std::copy(s, s + W * e, d + left * e);
          continue;
        }
        for (int64_t b = 0; b < sw; ++b) {  // the columns of phase b: w = w0, w0 + sw, ...
          const int64_t w0 = ((b - left) % sw + sw) % sw, n = w0 < W ? (W - w0 + sw - 1) / sw : 0;
          const T* sb = s + w0 * e;
          T* db = d + b * C * ps + ((w0 + left) / sw) * e;
          if (e > 1) {
            for (int64_t v = 0; v < n; ++v) std::copy(sb + v * sw * e, sb + (v * sw + 1) * e, db + v * e);
          } else if (sw == 2) {
            for (int64_t v = 0; v < n; ++v) db[v] = sb[2 * v];
          } else {
            for (int64_t v = 0; v < n; ++v) db[v] = sb[v * sw];
          }
        }
      }
    }
  });
  const int64_t total = C ? (P / C) * split.img(ps) : 0;
  std::fill(dst + total, dst + total + slack, T(0));
}

// Entries of rows 0..rows-1 (row o: ptr[o*ps]..ptr[(o+1)*ps]) regrouped, stably, by chunks of `cc`
// source planes (plane = off / plane_sz): row o's entries of chunk j are bptr[o*n_cc + j]..+1, at
// boff/bval (bval only when val), and their original index in bidx. A job then sweeps one chunk of
// source planes over all its rows while the chunk stays in L1.
template <typename T>
struct PwBuckets {
  int64_t n_cc = 1;
  std::vector<int32_t> ptr, off, idx;
  std::vector<T> val;
};

template <typename T>
PwBuckets<T> pw_bucket(int64_t rows, const int32_t* ptr, int64_t ps, const int32_t* off, const T* val,
                       int64_t plane_sz, int64_t n_src, int64_t cc) {
  PwBuckets<T> b;
  cc = std::max<int64_t>(cc, 1);  // 0 for a source without planes (no input channels)
  b.n_cc = std::max<int64_t>(1, (n_src + cc - 1) / cc);
  const int64_t n_cc = b.n_cc, nnz = ptr[rows * ps] - ptr[0];
  b.ptr.assign(rows * n_cc + 1, 0);
  b.off.resize(nnz);
  b.idx.resize(nnz);
  if (val) b.val.resize(nnz);
  const int64_t span = plane_sz * cc;
  const double inv = 1.0 / double(span);
  auto chunk = [&](int64_t k) {  // off[k] / span without an integer division per entry
    int64_t c = int64_t(double(off[k]) * inv);
    c -= c * span > off[k];
    return c + ((c + 1) * span <= off[k]);
  };
  // serial: a few cheap passes over the entries cost less than the barriers of a parallel region
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t k = ptr[o * ps]; k < ptr[(o + 1) * ps]; ++k) ++b.ptr[o * n_cc + chunk(k) + 1];
  for (int64_t i = 0; i < rows * n_cc; ++i) b.ptr[i + 1] += b.ptr[i];
  std::vector<int32_t> next(b.ptr.begin(), b.ptr.end() - 1);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t k = ptr[o * ps]; k < ptr[(o + 1) * ps]; ++k) {
      const int32_t d = next[o * n_cc + chunk(k)]++;
      b.off[d] = off[k];
      b.idx[d] = int32_t(k - ptr[0]);
      if (val) b.val[d] = val[k];
    }
  return b;
}

constexpr int64_t kPwL1 = 32 << 10;  // bytes of source planes a chunk may span per job


// Where a padded-width pass stores output pixel (ho, wo), ho < Ho, wo < Wo: at pixel first + ho*row + wo*col
// of its plane of `plane` pixels (a whole output, or one stride phase of it).
template <typename T>
struct PwOut {
  T* y;
  int64_t Ho, Wo, plane, row, col, first;
  static PwOut whole(T* y, int64_t Ho, int64_t Wo) { return PwOut{y, Ho, Wo, Ho * Wo, Wo, 1, 0}; }
  int64_t pixel(int64_t ho, int64_t wo) const { return first + ho * row + wo * col; }
};

// out(n, o) (Ho x Wo) = init[o] + sum over row o's entries k of val[k] * src[n] shifted by off[k],
// src padded planes of `plane_sz` elements in rows of width Wp, n_src planes per image (`img`
// elements); row o's entries are ptr[o*ps]..ptr[(o+1)*ps].
template <typename T>
void pw_spmm(const T* src, int64_t img, int64_t plane_sz, int64_t n_src, int64_t N, int64_t rows, const int32_t* ptr,
             int64_t ps, const int32_t* off, const T* val, const T* init, int64_t Wp, const PwOut<T>& out) {
  const int64_t Ho = out.Ho, Wo = out.Wo;
  if (N == 0 || rows == 0) return;
  const int64_t len = Ho * Wp;
  const PwKernels<T> kk = pick_pw<T>(len);
  const int64_t tile = int64_t(kk.nt) * kk.lanes, n_tiles = (len + tile - 1) / tile, n_groups = (N + kk.nb - 1) / kk.nb;
  const int64_t span = std::min(plane_sz, tile + 2 * Wp + 2) * int64_t(sizeof(T)) * kk.nb;  // per source plane
  const PwBuckets<T> bk = pw_bucket<T>(rows, ptr, ps, off, val, plane_sz, n_src, std::clamp<int64_t>(kPwL1 / span, 1, std::max<int64_t>(n_src, 1)));
  int64_t n_rc = std::clamp<int64_t>((8 * at::get_num_threads() + n_groups * n_tiles - 1) / (n_groups * n_tiles), 1, rows);
  n_rc = std::max(n_rc, (rows + 63) / 64);  // at most 64 rows of partial tiles per job
  const int64_t rc = (rows + n_rc - 1) / n_rc, n_cc = bk.n_cc;
  at::parallel_for(0, n_groups * n_tiles * n_rc, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(rc * kk.nb * tile);
    const T* xb[8];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t g = job / (n_tiles * n_rc), i = (job / n_rc) % n_tiles, r0 = (job % n_rc) * rc;
      const int64_t r1 = std::min(rows, r0 + rc), n0 = g * kk.nb, nb = std::min<int64_t>(kk.nb, N - n0), q0 = i * tile;
      const int64_t qe = std::min(q0 + tile, len);
      for (int b = 0; b < kk.nb; ++b) xb[b] = src + std::min(n0 + b, N - 1) * img + q0;  // tail images: recomputed, dropped
      for (int64_t j = 0; j < n_cc; ++j)
        for (int64_t o = r0; o < r1; ++o) {
          const int64_t k0 = bk.ptr[o * n_cc + j], k1 = bk.ptr[o * n_cc + j + 1];
          T* ob = buf.data() + (o - r0) * kk.nb * tile;
          if (j == 0) kk.row(xb, bk.off.data() + k0, bk.val.data() + k0, k1 - k0, init ? init[o] : T(0), nullptr, ob);
          else if (k1 > k0) kk.row(xb, bk.off.data() + k0, bk.val.data() + k0, k1 - k0, T(0), ob, ob);
        }
      for (int64_t o = r0; o < r1; ++o)
        for (int64_t b = 0; b < nb; ++b) {
          T* yp = out.y + ((n0 + b) * rows + o) * out.plane + out.first;
          const T* bp = buf.data() + ((o - r0) * kk.nb + b) * tile - q0;
          for (int64_t q = q0; q < qe; q = (q / Wp + 1) * Wp) {
            const int64_t ho = q / Wp, wo = q % Wp, seg = std::min(qe, ho * Wp + Wo);
            if (out.col == 1) {
              if (q < seg) std::copy(bp + q, bp + seg, yp + ho * out.row + wo);
            } else {
              for (int64_t j = q; j < seg; ++j) yp[ho * out.row + (j - ho * Wp) * out.col] = bp[j];
            }
          }
        }
    }
  });
}

// dv[k] = sum_n sum_q gw[n, o_k, q] * src[n] shifted by off[k]; gw planes of `lp` elements (a multiple
// of the tile, zeros past the valid columns), src as in pw_spmm. Row o's entries are ptr[o]..ptr[o+1].
template <typename T>
void pw_sddmm(const T* src, int64_t img, int64_t plane_sz, int64_t n_src, const T* gw, int64_t lp, int64_t N,
              int64_t rows, const int32_t* ptr, const int32_t* off, const PwKernels<T>& kk, T* dv) {
  const int64_t tile = int64_t(kk.nt) * kk.lanes, n_tiles = lp / tile;
  const std::vector<T> zeros(tile, T(0));
  const int64_t span = plane_sz * int64_t(sizeof(T)) * kk.nb_dot;
  const PwBuckets<T> bk = pw_bucket<T>(rows, ptr, 1, off, nullptr, plane_sz, n_src, std::clamp<int64_t>(kPwL1 / span, 1, std::max<int64_t>(n_src, 1)));
  const int64_t n_cc = bk.n_cc;
  std::vector<T> dvb(ptr[rows], T(0));
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    const T *xb[8], *gb[8];
    for (int64_t n0 = 0; n0 < N; n0 += kk.nb_dot)  // images, then source chunks outer: the chunk stays in L1
      for (int64_t j = 0; j < n_cc; ++j)
        for (int64_t o = begin; o < end; ++o) {
          const int64_t k0 = bk.ptr[o * n_cc + j], k1 = bk.ptr[o * n_cc + j + 1];
          if (k1 == k0) continue;
          for (int64_t i = 0; i < n_tiles; ++i) {
            for (int b = 0; b < kk.nb_dot; ++b) {
              const bool ok = n0 + b < N;  // tail images: zero grad_out, so they add nothing
              xb[b] = src + (ok ? n0 + b : n0) * img + i * tile;
              gb[b] = ok ? gw + ((n0 + b) * rows + o) * lp + i * tile : zeros.data();
            }
            kk.dot(xb, gb, bk.off.data() + k0, k1 - k0, dvb.data() + k0);
          }
        }
  });
  for (int64_t d = 0; d < ptr[rows]; ++d) dv[bk.idx[d]] = dvb[d];
}

// Scratch for padded planes: the thread's reusable workspace for fp32 (megabytes: a fresh
// allocation would pay its page faults on every call), a fresh tensor otherwise.
template <typename T>
T* pw_scratch(int slot, int64_t n, at::Tensor& hold, const at::TensorOptions& opt) {
  if constexpr (std::is_same_v<T, float>) {
    return cpu::workspace(slot, n);
  } else {
    hold = at::empty({n}, opt);
    return hold.data_ptr<T>();
  }
}

// The padded-width path needs int32 offsets within one image's padded planes.
bool pw_fits(int64_t planes, int64_t plane) { return planes * plane + kPwSlack < INT32_MAX; }

// The padded-width dValues kernels multiply x by grad_out's zero garbage columns: 0 * inf would turn
// entries NaN that the dense convolution keeps finite, so non-finite x takes the general path.
bool pw_dw_safe(const at::Tensor& x) { return x.numel() == 0 || at::isfinite(x).all().item<bool>(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a + b - 1) / b : 0; }

// The source of a forward or dValues pass in padded-width space: x padded by (ph, pw) and split into its
// sh x sw stride phases (`split`), each Hq x Wq. Output (ho, wo) flattened as q = ho*Wq + wo reads tap
// (r, s) at phase ((r*dh) % sh, (s*dw) % sw), position q + ((r*dh) / sh) * Wq + (s*dw) / sw: every
// stride is a set of shifts, as stride 1 is. `channels` planes per image are split together (C for
// NCHW planes; 1 for channels-last images whose pixels are C elements).
struct PwSrc {
  int64_t Hq, Wq, ps;  // phase plane rows, row width (pixels), elements per phase plane (Hq*Wq)
  PhaseSplit split;
  PwSrc(const Geom& g, int64_t channels)
      : Hq(ceil_div(g.H + 2 * g.ph, g.sh)), Wq(ceil_div(g.W + 2 * g.pw, g.sw)), ps(Hq * Wq),
        split{g.sh, g.sw, channels} {}
  int64_t img() const { return split.img(ps); }
  int64_t n_src() const { return split.sh * split.sw * split.C; }
  // position of tap (r, s) of plane 0 relative to q (add plane * ps for another plane)
  int64_t tap_shift(const Geom& g, int64_t r, int64_t s) const {
    const int64_t rr = r * g.dh, ss = s * g.dw;
    return ((rr % g.sh) * g.sw + ss % g.sw) * split.C * ps + (rr / g.sh) * Wq + ss / g.sw;
  }
};

// Offset of entry k of the forward index in one image's padded (phase) planes.
void pw_forward_offsets(const int32_t* col_idx, const int32_t* order, int64_t nnz, const Geom& g, const PwSrc& src,
                        int32_t* off) {
  std::vector<int32_t> col_off(g.C * g.kh * g.kw);  // per column of [out, in*kh*kw]: no divisions per entry
  for (int64_t c = 0; c < int64_t(col_off.size()); ++c) {
    int64_t i, r, s;
    decode(c, g, i, r, s);
    col_off[c] = int32_t(i * src.ps + src.tap_shift(g, r, s));
  }
  for (int64_t k = 0; k < nnz; ++k) off[k] = col_off[col_idx[order ? order[k] : k]];
}

// grad_out padded for dX in padded-width space. dX phase (a, b) (rows a + sh*u, columns b + sw*v of dx)
// gets tap r iff (a + ph - r*dh) is a multiple of sh, from grad_out row u + (a + ph - r*dh) / sh (and
// likewise in width): a stride-1 correlation with that subset of taps. grad_out sits at (top, left) in
// planes Hg x Wg large enough that every such read of a valid dx pixel stays inside its plane.
struct PwDxSrc {
  int64_t top, left, Hg, Wg;
  explicit PwDxSrc(const Geom& g)
      : top(ceil_div((g.kh - 1) * g.dh - g.ph, g.sh)), left(ceil_div((g.kw - 1) * g.dw - g.pw, g.sw)),
        Hg(top + std::max(g.Ho, ceil_div(g.H, g.sh) + (g.sh - 1 + g.ph) / g.sh)),
        Wg(left + std::max(g.Wo, ceil_div(g.W, g.sw) + (g.sw - 1 + g.pw) / g.sw)) {}
  // position of tap (r, s) for dx phase (a, b) relative to q = u*Wg + v, or -1 when the tap does not reach it
  int64_t tap_shift(const Geom& g, int64_t a, int64_t b, int64_t r, int64_t s) const {
    const int64_t eh = a + g.ph - r * g.dh, ew = b + g.pw - s * g.dw;
    if (eh % g.sh || ew % g.sw) return -1;
    return (eh / g.sh + top) * Wg + ew / g.sw + left;
  }
  // dx phase (a, b): its rows and columns, and where pw_spmm stores it in dx [N, C, H, W] (NCHW)
  template <typename T>
  PwOut<T> out(const Geom& g, int64_t a, int64_t b, T* dx) const {
    return PwOut<T>{dx, ceil_div(g.H - a, g.sh), ceil_div(g.W - b, g.sw), g.H * g.W, g.sh * g.W, g.sw, a * g.W + b};
  }
};

// ---- block-channel fast path (fp32 on AVX2/AVX-512, stride 1): padded-width micro-kernel tiles ----
// With the source padded NCHW, MR consecutive padded-width positions q of one channel are exactly
// the shared micro-kernel's A panel (a[kk*lda + r], lda = plane), so each (active block, tap) is one
// panel of a destination tile [MR positions x B channels]: the tile sums all of them in registers
// before one store, and positions in the garbage columns (x >= Wd) are dropped on store.
using cpu::MicroKernels;
using cpu::TileArgs;

// dst[n, d, pixel(y, x)] (out: [N, Cd, plane], channels-last when dst_cl, else NCHW; y < Hd, x < Wd) = bias +
// sum over active blocks j of destination block db (ptr[db]..ptr[db+1], source block sb[j], panel perm[j])
// and taps t with shift[t] >= 0 of panel_t(j) applied to src shifted by shift[t]. src: N images of `img`
// floats, Cs planes of `plane` floats each in rows of width Wq (zero padded, slack after the last).
// panels as pack_panels.
void pw_block_pass(const MicroKernels& mk, const float* src, int64_t img, int64_t plane, int64_t N, int64_t Wq,
                   int64_t Cd, int64_t Cs, int64_t B, const int64_t* shift, int64_t taps, const float* panels,
                   const int32_t* ptr, const int32_t* sb, const int32_t* perm, const float* bias, bool dst_cl,
                   const PwOut<float>& out) {
  const int64_t Hd = out.Ho, Wd = out.Wo;
  float* dst = out.y;
  const int64_t MR = mk.panel_rows, len = Hd * Wq, n_tiles = (len + MR - 1) / MR, n_db = (Cd + B - 1) / B;
  const int64_t strip = int64_t(mk.max_vectors) * mk.width, nnzb = ptr[n_db];
  auto cost_before = [&](int64_t i) {  // items in (image, block row, tile) order; cost = blocks + 1
    const int64_t n = i / (n_db * n_tiles), db = (i / n_tiles) % n_db, tile = i % n_tiles;
    if (n >= N) return N * (nnzb + n_db) * n_tiles;
    return n * (nnzb + n_db) * n_tiles + (int64_t(ptr[db]) + db) * n_tiles + tile * (ptr[db + 1] - ptr[db] + 1);
  };
  cpu::balanced_parallel_for(N * n_db * n_tiles, cost_before, [&](int64_t begin, int64_t end) {
    std::vector<const float*> a, b, base;
    std::vector<int> depth;
    std::vector<float> buf(MR * B);
    std::vector<int64_t> pix(MR);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (n_db * n_tiles), db = (item / n_tiles) % n_db, q0 = (item % n_tiles) * MR;
      const int64_t mr = std::min(MR, len - q0), d0 = db * B, dbw = std::min(B, Cd - d0);
      const int64_t most = (ptr[db + 1] - ptr[db]) * taps;
      a.resize(most);
      b.resize(most);
      base.resize(most);
      depth.resize(most);
      int64_t np = 0;
      for (int32_t j = ptr[db]; j < ptr[db + 1]; ++j) {
        const int64_t s0 = int64_t(sb[j]) * B, panel = perm ? perm[j] : j;
        for (int64_t t = 0; t < taps; ++t) {
          if (shift[t] < 0) continue;
          a[np] = src + n * img + s0 * plane + q0 + shift[t];
          base[np] = panels + (panel * taps + t) * B * B;
          depth[np++] = int(std::min(B, Cs - s0));
        }
      }
      for (int64_t s = 0; s < dbw; s += strip) {
        const int nc = int(std::min(strip, dbw - s));
        for (int64_t p = 0; p < np; ++p) b[p] = base[p] + s;
        const TileArgs t{a.data(), b.data(), depth.data(), int(np), plane, B, bias ? bias + d0 + s : nullptr,
                         false, buf.data() + s, B, int(mr), nc};
        mk.tile(t, (nc + mk.width - 1) / mk.width);
      }
      for (int64_t r = 0; r < mr; ++r) {
        const int64_t q = q0 + r, y = q / Wq, x = q % Wq;
        pix[r] = x < Wd ? out.pixel(y, x) : -1;
      }
      if (dst_cl) {
        for (int64_t r = 0; r < mr; ++r)
          if (pix[r] >= 0) std::copy(buf.data() + r * B, buf.data() + r * B + dbw, dst + (n * out.plane + pix[r]) * Cd + d0);
      } else {
        for (int64_t o = 0; o < dbw; ++o) {
          float* dp = dst + (n * Cd + d0 + o) * out.plane;
          for (int64_t r = 0; r < mr; ++r)
            if (pix[r] >= 0) dp[pix[r]] = buf[r * B + o];
        }
      }
    }
  });
}

// Positions of one SDDMM pass: the pass's grad_out and x rows stay in L1 across taps and row groups.
constexpr int64_t kPwDwRows = 64;

// dValues at active blocks: dv[k, o, i, t] = sum_n sum_q gw[n, q, o0+o] * xcl[n, q + shift[t], i0+i],
// gw: grad_out channels-last in padded-width rows ([N, len, O], zeros at x >= Wo), xcl: x padded
// channels-last ([N, plane, C], slack after). Outer-product tiles (grad_out rows broadcast, x rows as
// vectors) accumulated per block over all images, positions and taps in a [taps, B, B] buffer.
void pw_block_dw(const MicroKernels& mk, const float* gw, int64_t len, const float* xcl, int64_t plane, const Geom& g,
                 int64_t B, const int64_t* shift, const int32_t* row_idx, const int32_t* col_idx, int64_t nnzb,
                 float* dv) {
  const int64_t taps = g.kh * g.kw, R = mk.outer_rows, strip = int64_t(mk.max_vectors) * mk.width;
  cpu::balanced_parallel_for(nnzb, [](int64_t i) { return i; }, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(taps * B * B);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, g.O - o0);
      const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, g.C - i0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t q0 = 0; q0 < len; q0 += kPwDwRows) {
          const int depth = int(std::min(kPwDwRows, len - q0));
          for (int64_t t = 0; t < taps; ++t)
            for (int64_t og = 0; og < ob; og += R)
              for (int64_t s = 0; s < ib; s += strip) {
                const int nc = int(std::min(strip, ib - s));
                const float* a = gw + (n * len + q0) * g.O + o0 + og;
                const float* b = xcl + (n * plane + q0 + shift[t]) * g.C + i0 + s;
                const TileArgs tl{&a, &b, &depth, 1, g.O, g.C, nullptr, true, acc.data() + (t * B + og) * B + s, B,
                                  int(std::min(R, ob - og)), nc};
                mk.outer_tile(tl, (nc + mk.width - 1) / mk.width);
              }
        }
      float* out = dv + k * B * B * taps;
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i)
          for (int64_t t = 0; t < taps; ++t) out[(o * B + i) * taps + t] = acc[(t * B + o) * B + i];
    }
  });
}

// ---- op entry points -----------------------------------------------------------------------------

// A 1x1 convolution without padding at stride > 1 reads every sh-th row and sw-th column of x only: it is
// the stride-1 convolution of that subsample (dX: the stride-1 dX scattered into zeros).
bool strided_pointwise(const Geom& g) {
  return g.kh == 1 && g.kw == 1 && g.ph == 0 && g.pw == 0 && (g.sh > 1 || g.sw > 1);
}
at::Tensor subsample(const at::Tensor& x, const Geom& g) {
  return x.slice(2, 0, c10::nullopt, g.sh).slice(3, 0, c10::nullopt, g.sw);
}
at::Tensor subsampled_input(const at::Tensor& x, const Geom& g) {  // in x's memory format
  return subsample(x, g).contiguous(x.suggest_memory_format());
}
const std::vector<int64_t> kOnes{1, 1}, kZeros{0, 0};

at::Tensor bsr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d(x, values, row_ptr, col_idx, out_channels, bias, stride, padding, dilation);
  if (strided_pointwise(g))
    return bsr_conv2d_cpu(subsampled_input(x, g), values, row_ptr, col_idx, out_channels, bias, kOnes, kZeros, kOnes);
  const int64_t B = values.size(1);
  auto bc = bias ? bias->contiguous() : at::Tensor();
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  const PwSrc src(g, g.C);
  if (mk && pw_fits(src.n_src(), src.ps)) {
    const bool cl = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0) return y;
    auto xn = x.contiguous();
    float* xp = cpu::workspace(0, g.N * src.img() + kPwSlack);
    pad_planes<float>(xn.data_ptr<float>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack, src.split);
    pack_panels<float>(values.contiguous().data_ptr<float>(), values.size(0), B, taps, true, panels.data_ptr<float>());
    std::vector<int64_t> shift(taps);
    for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, t / g.kw, t % g.kw);
    pw_block_pass(*mk, xp, src.img(), src.ps, g.N, src.Wq, g.O, g.C, B, shift.data(), taps, panels.data_ptr<float>(),
                  row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nullptr,
                  bias ? bc.data_ptr<float>() : nullptr, cl, PwOut<float>::whole(y.data_ptr<float>(), g.Ho, g.Wo));
    return y;
  }
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return in_format(y, x);
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
  const Geom g = check_bsr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, stride, padding, dilation);
  if (strided_pointwise(g)) {
    auto sub = bsr_conv2d_dx_cpu(dy, values, t_row_ptr, t_col_idx, t_perm, {g.N, g.C, g.Ho, g.Wo}, kOnes, kZeros,
                                 kOnes);
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format())).zero_();
    subsample(dx, g).copy_(sub);
    return dx;
  }
  const int64_t B = values.size(1);
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  const MicroKernels* mk = dy.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  const PwDxSrc src(g);
  const int64_t plane = src.Hg * src.Wg;
  if (mk && pw_fits(g.O, plane)) {  // grad_out padded as in csr_conv2d_dx_cpu, one pass per stride phase
    const bool cl = dy.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format()));
    if (dx.numel() == 0) return dx;
    auto gn = dy.contiguous();
    float* gp = cpu::workspace(0, g.N * g.O * plane + kPwSlack);
    pad_planes<float>(gn.data_ptr<float>(), g.N * g.O, g.Ho, g.Wo, src.top, src.left, src.Wg, plane, gp);
    pack_panels<float>(values.contiguous().data_ptr<float>(), values.size(0), B, taps, false, panels.data_ptr<float>());
    std::vector<int64_t> shift(taps);
    for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
      for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {
        for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, a, b, t / g.kw, t % g.kw);
        pw_block_pass(*mk, gp, g.O * plane, plane, g.N, src.Wg, g.C, g.O, B, shift.data(), taps,
                      panels.data_ptr<float>(), t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(),
                      t_perm.data_ptr<int32_t>(), nullptr, cl, src.out(g, a, b, dx.data_ptr<float>()));
      }
    return dx;
  }
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto dx = at::empty(x_shape, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (dx.numel() == 0) return in_format(dx, dy);
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

at::Tensor bsr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, int64_t block_size, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d_dw(dy, x, row_idx, col_idx, block_size, kernel_size, stride, padding, dilation);
  if (strided_pointwise(g))
    return bsr_conv2d_dw_cpu(dy, subsample(x, g), row_idx, col_idx, block_size, kernel_size, kOnes, kZeros, kOnes);
  const int64_t B = block_size;
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto dv = at::empty({col_idx.size(0), B, B, g.kh, g.kw}, x.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  if (mk && pw_dw_safe(x)) {  // x channels-last, split into stride phases of whole pixels
    const PwSrc src(g, 1);
    const int64_t len = g.Ho * src.Wq, taps = g.kh * g.kw;
    // x read up to (kw-1)*dw positions past its last padded plane by the garbage columns
    const int64_t slack = ((g.kw - 1) * g.dw + 1) * g.C + kPwSlack;
    float* xp = cpu::workspace(0, g.N * src.img() * g.C + slack);
    pad_planes<float>(xc.data_ptr<float>(), g.N, g.H, g.W, g.ph, g.pw, src.Wq, src.ps * g.C, xp, slack, src.split,
                      g.C);
    float* gp = cpu::workspace(1, g.N * len * g.O + kPwSlack);
    pad_planes<float>(gc.data_ptr<float>(), g.N, g.Ho, g.Wo * g.O, 0, 0, src.Wq * g.O, len * g.O, gp);
    std::vector<int64_t> shift(taps);
    for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, t / g.kw, t % g.kw);
    pw_block_dw(*mk, gp, len, xp, src.img(), g, B, shift.data(), row_idx.data_ptr<int32_t>(),
                col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<float>());
    return dv;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_conv2d_dw_cpu", [&] {
    block_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, B, row_idx.data_ptr<int32_t>(),
                       col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<scalar_t>());
  });
  return dv;
}

at::Tensor csr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, at::IntArrayRef kernel_size,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d(x, values, row_ptr, col_idx, out_channels, kernel_size, bias, stride, padding,
                                  dilation);
  if (strided_pointwise(g))
    return csr_conv2d_cpu(subsampled_input(x, g), values, row_ptr, col_idx, out_channels, kernel_size, bias, kOnes, kZeros,
                          kOnes);
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options());
  const PwSrc src(g, g.C);
  const bool fast = pw_fits(src.n_src(), src.ps);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_cpu", [&] {
    const scalar_t* bp = bias ? bc.data_ptr<scalar_t>() : nullptr;
    if (!fast) {
      csr_forward<scalar_t>(xc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(),
                            col_idx.data_ptr<int32_t>(), bp, y.data_ptr<scalar_t>());
      return;
    }
    at::Tensor hold;
    scalar_t* xp = pw_scratch<scalar_t>(0, g.N * src.img() + kPwSlack, hold, x.options());
    pad_planes<scalar_t>(xc.data_ptr<scalar_t>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack,
                         src.split);
    std::vector<int32_t> off(values.size(0));
    pw_forward_offsets(col_idx.data_ptr<int32_t>(), nullptr, values.size(0), g, src, off.data());
    pw_spmm<scalar_t>(xp, src.img(), src.ps, src.n_src(), g.N, g.O, row_ptr.data_ptr<int32_t>(), 1, off.data(),
                      vc.data_ptr<scalar_t>(), bp, src.Wq,
                      PwOut<scalar_t>::whole(y.data_ptr<scalar_t>(), g.Ho, g.Wo));
  });
  return in_format(y, x);
}

at::Tensor csr_conv2d_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, kernel_size, stride, padding,
                                     dilation);
  if (strided_pointwise(g)) {
    auto sub = csr_conv2d_dx_cpu(dy, values, t_row_ptr, t_col_idx, t_perm, {g.N, g.C, g.Ho, g.Wo}, kernel_size,
                                 kOnes, kZeros, kOnes);
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format())).zero_();
    subsample(dx, g).copy_(sub);
    return dx;
  }
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty(x_shape, dy.options());
  const PwDxSrc src(g);
  const int64_t taps = g.kh * g.kw, plane = src.Hg * src.Wg;
  const bool fast = pw_fits(g.O, plane);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_conv2d_dx_cpu", [&] {
    const int32_t *tp = t_row_ptr.data_ptr<int32_t>(), *tc = t_col_idx.data_ptr<int32_t>(),
                  *tperm = t_perm.data_ptr<int32_t>();
    if (!fast) {
      csr_dx<scalar_t>(gc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), tp, tc, tperm, dx.data_ptr<scalar_t>());
      return;
    }
    at::Tensor hold;
    scalar_t* gp = pw_scratch<scalar_t>(0, g.N * g.O * plane + kPwSlack, hold, dy.options());
    pad_planes<scalar_t>(gc.data_ptr<scalar_t>(), g.N * g.O, g.Ho, g.Wo, src.top, src.left, src.Wg, plane, gp);
    std::vector<int32_t> ptr(g.C + 1), off(values.size(0));
    std::vector<scalar_t> val(values.size(0));
    std::vector<int64_t> shift(taps);
    const scalar_t* v = vc.data_ptr<scalar_t>();
    for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
      for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {  // one stride phase of dx: the taps that reach it
        for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, a, b, t / g.kw, t % g.kw);
        int32_t n = 0;
        for (int64_t i = 0; i < g.C; ++i) {
          ptr[i] = n;
          for (int64_t t = 0; t < taps; ++t) {
            if (shift[t] < 0) continue;
            for (int32_t j = tp[i * taps + t]; j < tp[i * taps + t + 1]; ++j, ++n) {
              off[n] = int32_t(tc[j] * plane + shift[t]);
              val[n] = v[tperm[j]];
            }
          }
        }
        ptr[g.C] = n;
        pw_spmm<scalar_t>(gp, g.O * plane, plane, g.O, g.N, g.C, ptr.data(), 1, off.data(), val.data(), nullptr,
                          src.Wg, src.out(g, a, b, dx.data_ptr<scalar_t>()));
      }
  });
  return in_format(dx, dy);
}

at::Tensor csr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dw(dy, x, row_idx, col_idx, kernel_size, stride, padding, dilation);
  if (strided_pointwise(g))
    return csr_conv2d_dw_cpu(dy, subsample(x, g), row_idx, col_idx, kernel_size, kOnes, kZeros, kOnes);
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  auto dv = at::empty({col_idx.size(0)}, x.options());
  const int64_t nnz = col_idx.size(0);
  const PwSrc src(g, g.C);
  const bool fast = pw_fits(src.n_src(), src.ps) && pw_dw_safe(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_dw_cpu", [&] {
    const int32_t *ri = row_idx.data_ptr<int32_t>(), *ci = col_idx.data_ptr<int32_t>();
    if (!fast) {
      csr_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, ri, ci, nnz, dv.data_ptr<scalar_t>());
      return;
    }
    // entries grouped by row (a stable counting sort: the identity for a layout's CSR order)
    std::vector<int32_t> ptr(g.O + 1, 0), order(nnz);
    for (int64_t k = 0; k < nnz; ++k) ++ptr[ri[k] + 1];
    for (int64_t o = 0; o < g.O; ++o) ptr[o + 1] += ptr[o];
    {
      std::vector<int32_t> next(ptr.begin(), ptr.end() - 1);
      for (int64_t k = 0; k < nnz; ++k) order[next[ri[k]]++] = int32_t(k);
    }
    std::vector<int32_t> off(nnz);
    pw_forward_offsets(ci, order.data(), nnz, g, src, off.data());
    const PwKernels<scalar_t> kk = pick_pw<scalar_t>(g.Ho * src.Wq);
    const int64_t tile = int64_t(kk.nt) * kk.lanes, lp = (g.Ho * src.Wq + tile - 1) / tile * tile;
    at::Tensor hold_x, hold_g;
    scalar_t* xp = pw_scratch<scalar_t>(0, g.N * src.img() + kPwSlack, hold_x, x.options());
    scalar_t* gp = pw_scratch<scalar_t>(1, g.N * g.O * lp + kPwSlack, hold_g, x.options());
    pad_planes<scalar_t>(xc.data_ptr<scalar_t>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack,
                         src.split);
    pad_planes<scalar_t>(gc.data_ptr<scalar_t>(), g.N * g.O, g.Ho, g.Wo, 0, 0, src.Wq, lp, gp);
    std::vector<scalar_t> dvo(nnz);
    pw_sddmm<scalar_t>(xp, src.img(), src.ps, src.n_src(), gp, lp, g.N, g.O, ptr.data(), off.data(), kk, dvo.data());
    scalar_t* d = dv.data_ptr<scalar_t>();
    for (int64_t j = 0; j < nnz; ++j) d[order[j]] = dvo[j];
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
