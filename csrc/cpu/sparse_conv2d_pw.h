// Shared by the CPU sparse conv2d kernels (sparse_conv2d_csr.cpp, sparse_conv2d_bsr.cpp): convolution
// helpers and the padded-width engine. The source is padded once (and, for stride > 1, split into its
// stride phases) so that every tap of every channel is one shift of a flattened output position; the
// unstructured kernels (pw_spmm, pw_sddmm) and the block kernels run on those shifts.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "sparse_conv_checks.h"
#include "cpu/isa.h"
#include "cpu/microkernels.h"

namespace sparsecl {
namespace conv_cpu {


using Geom = ConvShape;

// Output positions o in [lo, hi) whose input coordinate o*s - p + t lies in [0, n).
inline void valid_range(int64_t n_out, int64_t n_in, int64_t s, int64_t p, int64_t t, int64_t& lo, int64_t& hi) {
  const int64_t off = t - p;  // in = o*s + off
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = n_in - 1 - off < 0 ? 0 : std::min(n_out, (n_in - 1 - off) / s + 1);
  if (hi < lo) hi = lo;
}

inline at::Tensor in_format(const at::Tensor& t, const at::Tensor& like) {
  return t.contiguous(like.suggest_memory_format());
}

inline void decode(int64_t c, const Geom& g, int64_t& i, int64_t& r, int64_t& s) {
  const int64_t taps = g.kh * g.kw;
  i = c / taps;
  r = (c % taps) / g.kw;
  s = c % g.kw;
}

// A 1x1 convolution without padding at stride > 1 reads every sh-th row and sw-th column of x only: it is
// the stride-1 convolution of that subsample (dX: the stride-1 dX scattered into zeros).
inline bool strided_pointwise(const Geom& g) {
  return g.kh == 1 && g.kw == 1 && g.ph == 0 && g.pw == 0 && (g.sh > 1 || g.sw > 1);
}
inline at::Tensor subsample(const at::Tensor& x, const Geom& g) {
  return x.slice(2, 0, c10::nullopt, g.sh).slice(3, 0, c10::nullopt, g.sw);
}
inline at::Tensor subsampled_input(const at::Tensor& x, const Geom& g) {  // in x's memory format
  return subsample(x, g).contiguous(x.suggest_memory_format());
}
const std::vector<int64_t> kOnes{1, 1}, kZeros{0, 0};

// ---- padded-width implicit GEMM (unstructured) --------------------------------------------------
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

// dv[k*L + l] += sum_b sum_{t < NT} gb[b][t*L + l] * xb[b][off[k] + t*L + l]: per-lane partial sums, reduced
// once by the caller (a horizontal sum per call and nonzero cost as much as the products).
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
    V acc;
    __builtin_memcpy(&acc, dv + k * L, VB);
    acc += s[0] + s[1];
    __builtin_memcpy(dv + k * L, &acc, VB);
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
// stop at ROW_REGS accumulators: 16 zmm hide the FMA latency, and fewer images keep the source chunk small;
// half-width vectors on AVX-512 take 24 (8 images of a 3-vector tile).
constexpr int pw_nb(int nt, int regs) { return std::min(8, std::max(1, regs / nt)); }
constexpr int pw_nb_dot(int nt, int regs) { return std::min(8, std::max(1, (regs - 4) / nt)); }

#define SPARSECL_PW_ISA(NAME, TARGET, VB, REGS, ROW_REGS)                                                    \
  template <typename T, int NT>                                                                              \
  __attribute__((target(TARGET))) void pw_row_##NAME(const T* const* xb, const int32_t* off, const T* val,   \
                                                     int64_t nnz, T init, const T* prev, T* out) {           \
    pw_row_body<T, VB, NT, pw_nb(NT, ROW_REGS)>(xb, off, val, nnz, init, prev, out);                         \
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
    k.nb = pw_nb(NT, ROW_REGS);                                                                              \
    k.nb_dot = pw_nb_dot(NT, REGS);                                                                          \
    k.row = &pw_row_##NAME<T, NT>;                                                                           \
    k.dot = &pw_dot_##NAME<T, NT>;                                                                           \
    return k;                                                                                                \
  }
SPARSECL_PW_ISA(avx512, "avx512f,avx512vl,avx512bw,avx512dq,fma", 64, 28, 16)
SPARSECL_PW_ISA(avx512y, "avx512f,avx512vl,avx512bw,avx512dq,fma", 32, 28, 24)  // 8 lanes with 32 registers
SPARSECL_PW_ISA(avx2, "avx2,fma", 32, 12, 12)
SPARSECL_PW_ISA(generic, "sse2", 16, 12, 12)
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
template <typename T, int NT> struct PwPick512y { static PwKernels<T> get() { return pw_kernels_avx512y<T, NT>(); } };
template <typename T, int NT> struct PwPick2 { static PwKernels<T> get() { return pw_kernels_avx2<T, NT>(); } };
template <typename T, int NT> struct PwPickG { static PwKernels<T> get() { return pw_kernels_generic<T, NT>(); } };

inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a + b - 1) / b : 0; }

template <typename T>
PwKernels<T> pick_pw(int64_t len) {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512: {
      // Small planes waste much of a 16-lane tile (4x4 output: len 20-24 in 32 lanes). There the 8-lane
      // kernel (32 ymm registers, 8 images of up to 3 vectors) with the tile that computes fewest outputs
      // takes over when it computes at least 20% fewer: on Zen 4 a ymm FMA costs half a zmm one. At smaller
      // savings (8x8: 80 vs 96) the zmm kernel measured as fast or faster.
      const PwKernels<T> wide = pw_by_len<T, PwPick512>(len, 64 / sizeof(T));
      auto computed = [&](const PwKernels<T>& k) { return ceil_div(len, int64_t(k.nt) * k.lanes) * k.nt * k.lanes; };
      PwKernels<T> half = PwPick512y<T, 4>::get();
      for (const PwKernels<T>& k : {PwPick512y<T, 3>::get(), PwPick512y<T, 2>::get(), PwPick512y<T, 1>::get()})
        if (computed(k) < computed(half)) half = k;
      return 5 * computed(half) <= 4 * computed(wide) ? half : wide;
    }
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
  const int64_t L = kk.lanes;
  std::vector<T> dvb(ptr[rows] * L, T(0));
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
            kk.dot(xb, gb, bk.off.data() + k0, k1 - k0, dvb.data() + k0 * L);
          }
        }
  });
  for (int64_t d = 0; d < ptr[rows]; ++d) {
    T sum = 0;
    for (int64_t l = 0; l < L; ++l) sum += dvb[d * L + l];
    dv[bk.idx[d]] = sum;
  }
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
inline bool pw_fits(int64_t planes, int64_t plane) { return planes * plane + kPwSlack < INT32_MAX; }

// The padded-width dValues kernels multiply x by grad_out's zero garbage columns: 0 * inf would turn
// entries NaN that the dense convolution keeps finite, so non-finite x takes the general path.
inline bool pw_dw_safe(const at::Tensor& x) { return x.numel() == 0 || at::isfinite(x).all().item<bool>(); }

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
inline void pw_forward_offsets(const int32_t* col_idx, const int32_t* order, int64_t nnz, const Geom& g, const PwSrc& src,
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

}  // namespace conv_cpu
}  // namespace sparsecl
