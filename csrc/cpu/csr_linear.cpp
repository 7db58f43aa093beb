// Unstructured (element-granular CSR) linear on CPU: y = x @ W.T (+ bias), W [out, in] stored as
// values[nnz] with int32 row_ptr/col_idx over output rows.
//
// Every kernel works on token-transposed panels: xT[i, t] for P = 32 tokens (zero-padded at the
// end), one contiguous block of in * P floats (512 KiB at in = 4096, half an L2) in scratch memory
// on 2 MiB pages, so one nonzero W[o, i] becomes the AXPY yT[o, panel] += v * xT[i, panel] over P
// contiguous tokens, vectorised over tokens with the accumulators of one output row held in
// registers for all of its nonzeros (4 nonzeros in flight on AVX-512).
//   forward  with >= 2 panels per thread, a job is one panel (transposed by its thread, then all
//            rows); otherwise the panels are transposed up front and jobs are (panel, row chunk)
//   dX       the same kernel over the transposed index (values gathered through t_perm)
//   dValues  SDDMM: dv[k] = dot(dYT[row_k, :], xT[col_k, :]), only at the nonzeros
// AVX-512 and AVX2 float kernels (rows, SDDMM dot products, transposes) are compiled with function target attributes and picked per call
// with cpu::active_isa() (isa.h: SPARSECL_CPU_ISA forces a lower one); float64 and the generic
// path use the portable templates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "checks.h"
#include "cpu/microkernels.h"

namespace sparsecl {
namespace {

constexpr int64_t kPanel = 32;     // tokens per panel: an xT panel of 4096 features is 512 KiB, half an L2
constexpr int64_t kRowGroup = 16;  // output rows buffered before the transposed store into y
static_assert(kRowGroup == 16 && kPanel % 16 == 0, "the AVX-512 transposes move 16 x 16 tiles");

// Runs fn(job) for job in [0, n_jobs) on the intra-op threads, handing out jobs dynamically: the
// 2-core machines this targets are shared, and a static split stalls on a descheduled thread.
template <typename F>
void parallel_jobs(int64_t n_jobs, const F& fn) {
#ifdef _OPENMP
  if (n_jobs > 1 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
    for (int64_t job = 0; job < n_jobs; ++job) fn(job);
    return;
  }
#endif
  for (int64_t job = 0; job < n_jobs; ++job) fn(job);
}

// Row boundaries splitting rows [0, n_rows) into n_chunks ranges of about equal nnz.
std::vector<int64_t> balanced_rows(const int32_t* row_ptr, int64_t n_rows, int64_t n_chunks) {
  std::vector<int64_t> b(n_chunks + 1, n_rows);
  b[0] = 0;
  const int64_t nnz = row_ptr[n_rows];
  for (int64_t c = 1; c < n_chunks; ++c) {
    const int64_t target = nnz * c / n_chunks;
    const int64_t r = std::lower_bound(row_ptr, row_ptr + n_rows + 1, int32_t(target)) - row_ptr;
    b[c] = std::max(b[c - 1], std::min(r, n_rows));
  }
  return b;
}

// A [tokens, features] operand with any strides.
template <typename T>
struct Tokens {
  const T* p;
  int64_t s0, s1, n, cols;
};

// Panel p of the token-transposed operand: out[i * P + t] = a[p * P + t, i], zero for tokens >= n.
// Column blocks of 64 keep the block being written (64 x P) in L1.
template <typename T>
void transpose_panel_portable(const Tokens<T>& a, int64_t p, T* out) {
  constexpr int64_t kColBlock = 64;
  const int64_t t0 = p * kPanel, tn = std::min(kPanel, a.n - t0);
  for (int64_t i0 = 0; i0 < a.cols; i0 += kColBlock) {
    const int64_t in = std::min(kColBlock, a.cols - i0);
    T* o = out + i0 * kPanel;
    for (int64_t t = 0; t < kPanel; ++t) {
      if (t < tn) {
        const T* ar = a.p + (t0 + t) * a.s0 + i0 * a.s1;
        for (int64_t i = 0; i < in; ++i) o[i * kPanel + t] = ar[i * a.s1];
      } else {
        for (int64_t i = 0; i < in; ++i) o[i * kPanel + t] = T(0);
      }
    }
  }
}

#if defined(__x86_64__)
// In-register 16 x 16 transpose: r[i] holds row i on entry and column i on exit.
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane L: t[2i] = a[4L] b[4L] a[4L+1] b[4L+1], a, b = rows 2i, 2i+1
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + j], lane L: column 4L + j of rows 4i .. 4i + 3
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {  // column 4L + j = lane L of r[j], r[4 + j], r[8 + j], r[12 + j]
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
    t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// transpose_panel for contiguous float rows: 16 x 16 tiles through registers, masked at the edges.
__attribute__((target("avx512f"))) void transpose_panel_avx512(const float* a, int64_t lda, int64_t n_tokens,
                                                                int64_t cols, int64_t t0, float* out) {
  const int64_t tn = std::min(kPanel, n_tokens - t0);
  __m512 r[16];
  for (int64_t i0 = 0; i0 < cols; i0 += 16) {
    const int64_t in = std::min<int64_t>(16, cols - i0);
    const __mmask16 m = __mmask16((1u << in) - 1);
    for (int64_t h = 0; h < kPanel; h += 16) {
      for (int t = 0; t < 16; ++t)
        r[t] = h + t < tn ? _mm512_maskz_loadu_ps(m, a + (t0 + h + t) * lda + i0) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t i = 0; i < in; ++i) _mm512_storeu_ps(out + (i0 + i) * kPanel + h, r[i]);
    }
  }
}

// The transposed store of panel_rows for a full group of 16 rows: y[t0 + t, g0 + r] = buf[r * P + t] + bias.
__attribute__((target("avx512f"))) void store_group_avx512(const float* buf, int64_t tn, const float* bias,
                                                            float* y, int64_t ldy) {
  const __m512 b = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  __m512 r[16];
  for (int64_t h = 0; h < tn; h += 16) {
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(buf + i * kPanel + h);
    transpose16(r);
    for (int64_t t = 0; t < std::min<int64_t>(16, tn - h); ++t) _mm512_storeu_ps(y + (h + t) * ldy, _mm512_add_ps(r[t], b));
  }
}

// In-register 8 x 8 transpose: r[i] holds row i on entry and column i on exit.
__attribute__((target("avx2,fma"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: t[2i] = a0 b0 a1 b1, t[2i+1] = a2 b2 a3 b3 of rows 2i, 2i+1
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // u[4i + j], lane L: column 4L + j of rows 4i .. 4i + 3
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {  // column j: low lanes of u[j], u[4 + j]; column 4 + j: their high lanes
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// transpose_panel_avx512 with 8 x 8 tiles.
__attribute__((target("avx2,fma"))) void transpose_panel_avx2(const float* a, int64_t lda, int64_t n_tokens,
                                                               int64_t cols, int64_t t0, float* out) {
  const int64_t tn = std::min(kPanel, n_tokens - t0);
  __m256 r[8];
  for (int64_t i0 = 0; i0 < cols; i0 += 8) {
    const int64_t in = std::min<int64_t>(8, cols - i0);
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(in)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t h = 0; h < kPanel; h += 8) {
      for (int t = 0; t < 8; ++t)
        r[t] = h + t < tn ? _mm256_maskload_ps(a + (t0 + h + t) * lda + i0, m) : _mm256_setzero_ps();
      transpose8(r);
      for (int64_t i = 0; i < in; ++i) _mm256_storeu_ps(out + (i0 + i) * kPanel + h, r[i]);
    }
  }
}

// store_group_avx512 with 8 x 8 tiles (two halves of the 16-row group).
__attribute__((target("avx2,fma"))) void store_group_avx2(const float* buf, int64_t tn, const float* bias, float* y,
                                                           int64_t ldy) {
  __m256 r[8];
  for (int64_t half = 0; half < kRowGroup; half += 8) {
    const __m256 b = bias ? _mm256_loadu_ps(bias + half) : _mm256_setzero_ps();
    for (int64_t h = 0; h < tn; h += 8) {
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(buf + (half + i) * kPanel + h);
      transpose8(r);
      for (int64_t t = 0; t < std::min<int64_t>(8, tn - h); ++t)
        _mm256_storeu_ps(y + (h + t) * ldy + half, _mm256_add_ps(r[t], b));
    }
  }
}
#endif

// The ISA of this call's float kernels (transposes go 16 x 16 or 8 x 8 through registers); generic for
// float64.
template <typename T>
cpu::Isa simd_isa() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) return cpu::active_isa();
#endif
  return cpu::Isa::kGeneric;
}

template <typename T>
void transpose_panel(const Tokens<T>& a, int64_t p, cpu::Isa isa, T* out) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (isa == cpu::Isa::kAvx512 && a.s1 == 1) return transpose_panel_avx512(a.p, a.s0, a.n, a.cols, p * kPanel, out);
    if (isa == cpu::Isa::kAvx2 && a.s1 == 1) return transpose_panel_avx2(a.p, a.s0, a.n, a.cols, p * kPanel, out);
  }
#endif
  transpose_panel_portable(a, p, out);
}

// All panels of a into the calling thread's workspace slot: [n_panels, cols, P].
template <typename T>
T* transpose_all(const Tokens<T>& a, int slot) {
  const int64_t n_panels = (a.n + kPanel - 1) / kPanel;
  T* out = cpu::workspace<T>(slot, n_panels * a.cols * kPanel);
  const cpu::Isa isa = simd_isa<T>();
  at::parallel_for(0, n_panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) transpose_panel(a, p, isa, out + p * a.cols * kPanel);
  });
  return out;
}

// ---- forward / dX: one output row of yT over one token panel ------------------------------------
// out[t] = sum_k v[k] * xT[col[k], t] over the row's nonzeros, accumulated in registers.

template <typename T>
void row_portable(const T* xT, const T* vals, const int32_t* rp, const int32_t* ci, int64_t r, T* out) {
  T acc[kPanel] = {};
  for (int32_t k = rp[r]; k < rp[r + 1]; ++k) {
    const T v = vals[k];
    const T* xr = xT + int64_t(ci[k]) * kPanel;
    for (int64_t t = 0; t < kPanel; ++t) acc[t] += v * xr[t];
  }
  std::copy(acc, acc + kPanel, out);
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void row_avx512(const float* xT, const float* vals, const int32_t* rp,
                                                    const int32_t* ci, int64_t r, float* out) {
  // 4 nonzeros in flight, each a P-token AXPY in P/16 zmm: 8 independent FMA chains for P = 32
  constexpr int V = kPanel / 16;
  __m512 a[V], b[V], c[V], d[V];
  for (int j = 0; j < V; ++j) a[j] = b[j] = c[j] = d[j] = _mm512_setzero_ps();
  int32_t k = rp[r];
  const int32_t end = rp[r + 1];
  for (; k + 4 <= end; k += 4) {
    const float* x0 = xT + int64_t(ci[k]) * kPanel;
    const float* x1 = xT + int64_t(ci[k + 1]) * kPanel;
    const float* x2 = xT + int64_t(ci[k + 2]) * kPanel;
    const float* x3 = xT + int64_t(ci[k + 3]) * kPanel;
    const __m512 v0 = _mm512_set1_ps(vals[k]), v1 = _mm512_set1_ps(vals[k + 1]);
    const __m512 v2 = _mm512_set1_ps(vals[k + 2]), v3 = _mm512_set1_ps(vals[k + 3]);
    for (int j = 0; j < V; ++j) {
      a[j] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 16 * j), a[j]);
      b[j] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1 + 16 * j), b[j]);
      c[j] = _mm512_fmadd_ps(v2, _mm512_loadu_ps(x2 + 16 * j), c[j]);
      d[j] = _mm512_fmadd_ps(v3, _mm512_loadu_ps(x3 + 16 * j), d[j]);
    }
  }
  for (; k < end; ++k) {
    const float* x0 = xT + int64_t(ci[k]) * kPanel;
    const __m512 v0 = _mm512_set1_ps(vals[k]);
    for (int j = 0; j < V; ++j) a[j] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 16 * j), a[j]);
  }
  for (int j = 0; j < V; ++j)
    _mm512_storeu_ps(out + 16 * j, _mm512_add_ps(_mm512_add_ps(a[j], b[j]), _mm512_add_ps(c[j], d[j])));
}

// Nonzeros ahead whose x rows are prefetched: the rows are random gathers from a panel that may not fit L2
// (512 KiB on Zen 3): measured here, 30% faster on long rows (d=0.35, 2048 in), neutral on short ones.
constexpr int32_t kAhead = 16;

__attribute__((target("avx2,fma"))) void row_avx2(const float* xT, const float* vals, const int32_t* rp,
                                                   const int32_t* ci, int64_t r, float* out) {
  constexpr int V = kPanel / 8;  // 2 nonzeros in flight: 2 * V ymm accumulators, independent chains
  __m256 a[V], b[V];
  for (int j = 0; j < V; ++j) a[j] = b[j] = _mm256_setzero_ps();
  int32_t k = rp[r];
  const int32_t end = rp[r + 1];
  for (; k + 2 <= end; k += 2) {
    if (k + kAhead + 2 <= end) {
      for (int q = 0; q < 2; ++q) {
        const char* p = reinterpret_cast<const char*>(xT + int64_t(ci[k + kAhead + q]) * kPanel);
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p + 64, _MM_HINT_T0);
      }
    }
    const float* x0 = xT + int64_t(ci[k]) * kPanel;
    const float* x1 = xT + int64_t(ci[k + 1]) * kPanel;
    const __m256 v0 = _mm256_set1_ps(vals[k]), v1 = _mm256_set1_ps(vals[k + 1]);
    for (int j = 0; j < V; ++j) {
      a[j] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8 * j), a[j]);
      b[j] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x1 + 8 * j), b[j]);
    }
  }
  if (k < end) {
    const float* x0 = xT + int64_t(ci[k]) * kPanel;
    const __m256 v0 = _mm256_set1_ps(vals[k]);
    for (int j = 0; j < V; ++j) a[j] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x0 + 8 * j), a[j]);
  }
  for (int j = 0; j < V; ++j) _mm256_storeu_ps(out + 8 * j, _mm256_add_ps(a[j], b[j]));
}
#endif

template <typename T>
using RowFn = void (*)(const T*, const T*, const int32_t*, const int32_t*, int64_t, T*);

template <typename T>
RowFn<T> pick_row_kernel() {
  return &row_portable<T>;
}

#if defined(__x86_64__)
template <>
RowFn<float> pick_row_kernel<float>() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512: return &row_avx512;
    case cpu::Isa::kAvx2: return &row_avx2;
    default: return &row_portable<float>;
  }
}
#endif

// Rows [r0, r1) of one token panel xp (tokens t0 .. t0 + P) into y [T, n_rows] (+ bias), kRowGroup
// rows at a time through a buffer, so each token's stores into y are contiguous.
template <typename T>
void panel_rows(RowFn<T> row, cpu::Isa isa, const T* xp, const T* vals, const int32_t* rp, const int32_t* ci, int64_t r0,
                int64_t r1, int64_t n_tokens, int64_t t0, int64_t n_rows, const T* bias, T* y) {
  alignas(64) T buf[kRowGroup * kPanel];
  const int64_t tn = std::min(kPanel, n_tokens - t0);
  for (int64_t g0 = r0; g0 < r1; g0 += kRowGroup) {
    const int64_t gn = std::min(kRowGroup, r1 - g0);
    for (int64_t r = 0; r < gn; ++r) row(xp, vals, rp, ci, g0 + r, buf + r * kPanel);
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (isa == cpu::Isa::kAvx512 && gn == kRowGroup) {
        store_group_avx512(buf, tn, bias ? bias + g0 : nullptr, y + t0 * n_rows + g0, n_rows);
        continue;
      }
      if (isa == cpu::Isa::kAvx2 && gn == kRowGroup) {
        store_group_avx2(buf, tn, bias ? bias + g0 : nullptr, y + t0 * n_rows + g0, n_rows);
        continue;
      }
    }
#endif
    for (int64_t t = 0; t < tn; ++t) {
      T* yr = y + (t0 + t) * n_rows + g0;
      for (int64_t r = 0; r < gn; ++r) yr[r] = buf[r * kPanel + t] + (bias ? bias[g0 + r] : T(0));
    }
  }
}

// y [T, n_rows] = a [T, n_cols] times the CSR matrix (vals, rp, ci) [n_rows, n_cols] transposed (+ bias).
// With at least two panels per thread every job is one panel: its thread transposes it into its own
// workspace (written and read while in L2, never a full transposed copy in memory) and runs all rows.
// Otherwise the few panels are transposed up front and jobs are (panel, row chunk of equal nnz).
template <typename T>
void spmm_tokens(const Tokens<T>& a, const T* vals, const int32_t* rp, const int32_t* ci, int64_t n_rows,
                 const T* bias, T* y) {
  const int64_t n_panels = (a.n + kPanel - 1) / kPanel, threads = at::get_num_threads();
  const RowFn<T> row = pick_row_kernel<T>();
  const cpu::Isa isa = simd_isa<T>();
  if (n_panels >= 2 * threads) {
    parallel_jobs(n_panels, [&](int64_t p) {
      T* xp = cpu::workspace<T>(0, a.cols * kPanel);
      transpose_panel(a, p, isa, xp);
      panel_rows(row, isa, xp, vals, rp, ci, 0, n_rows, a.n, p * kPanel, n_rows, bias, y);
    });
    return;
  }
  const T* xT = transpose_all(a, 0);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>((8 * threads + n_panels - 1) / n_panels,
                                                                  (n_rows + kRowGroup - 1) / kRowGroup));
  auto bounds = balanced_rows(rp, n_rows, n_chunks);
  for (auto& b : bounds) b = b / kRowGroup * kRowGroup;  // chunks start on row-group boundaries
  bounds.back() = n_rows;
  parallel_jobs(n_panels * n_chunks, [&](int64_t job) {
    const int64_t p = job / n_chunks, c = job % n_chunks;  // consecutive jobs share a panel (cache reuse)
    panel_rows(row, isa, xT + p * a.cols * kPanel, vals, rp, ci, bounds[c], bounds[c + 1], a.n, p * kPanel, n_rows, bias,
               y);
  });
}

// ---- dValues: SDDMM at the nonzeros ------------------------------------------------------------

template <typename T>
void sddmm_row_portable(const T* g, const T* xT, const int32_t* ci, int32_t k0, int32_t k1, bool first, T* dv) {
  for (int32_t k = k0; k < k1; ++k) {
    const T* xr = xT + int64_t(ci[k]) * kPanel;
    T s = 0;
    for (int64_t t = 0; t < kPanel; ++t) s += g[t] * xr[t];
    dv[k] = first ? s : dv[k] + s;
  }
}

#if defined(__x86_64__)
constexpr int kSddmmV = kPanel / 16;

__attribute__((target("avx512f"))) inline __m512 dot_avx512(const __m512* g, const float* xr) {
  __m512 s = _mm512_mul_ps(g[0], _mm512_loadu_ps(xr));
  for (int j = 1; j < kSddmmV; ++j) s = _mm512_fmadd_ps(g[j], _mm512_loadu_ps(xr + 16 * j), s);
  return s;
}

// 16-lane vector -> 8-lane by adding halves
__attribute__((target("avx512f"))) inline __m256 fold512(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

__attribute__((target("avx512f"))) void sddmm_row_avx512(const float* g, const float* xT, const int32_t* ci,
                                                          int32_t k0, int32_t k1, bool first, float* dv) {
  __m512 gr[kSddmmV];
  for (int j = 0; j < kSddmmV; ++j) gr[j] = _mm512_loadu_ps(g + 16 * j);
  int32_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    // four dot products reduced together: fold 16->8 lanes, then hadd trees give [s0 s1 s2 s3] per 128 bits
    const __m256 s0 = fold512(dot_avx512(gr, xT + int64_t(ci[k]) * kPanel));
    const __m256 s1 = fold512(dot_avx512(gr, xT + int64_t(ci[k + 1]) * kPanel));
    const __m256 s2 = fold512(dot_avx512(gr, xT + int64_t(ci[k + 2]) * kPanel));
    const __m256 s3 = fold512(dot_avx512(gr, xT + int64_t(ci[k + 3]) * kPanel));
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    if (!first) s = _mm_add_ps(s, _mm_loadu_ps(dv + k));
    _mm_storeu_ps(dv + k, s);
  }
  for (; k < k1; ++k) {
    const __m256 h = fold512(dot_avx512(gr, xT + int64_t(ci[k]) * kPanel));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const float s = _mm_cvtss_f32(_mm_hadd_ps(_mm_hadd_ps(q, q), q));
    dv[k] = first ? s : dv[k] + s;
  }
}

constexpr int kSddmmV2 = kPanel / 8;

__attribute__((target("avx2,fma"))) inline __m256 dot_avx2(const __m256* g, const float* xr) {
  __m256 s = _mm256_mul_ps(g[0], _mm256_loadu_ps(xr));
  for (int j = 1; j < kSddmmV2; ++j) s = _mm256_fmadd_ps(g[j], _mm256_loadu_ps(xr + 8 * j), s);
  return s;
}

// [sum(s0), ..., sum(s7)]: hadd trees per 128-bit lane, then the two lanes of each tree added
__attribute__((target("avx2,fma"))) inline __m256 hsum4x2_avx2(__m256 s0, __m256 s1, __m256 s2, __m256 s3, __m256 s4,
                                                               __m256 s5, __m256 s6, __m256 s7) {
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(s4, s5), _mm256_hadd_ps(s6, s7));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

__attribute__((target("avx2,fma"))) void sddmm_row_avx2(const float* g, const float* xT, const int32_t* ci,
                                                         int32_t k0, int32_t k1, bool first, float* dv) {
  __m256 gr[kSddmmV2];
  for (int j = 0; j < kSddmmV2; ++j) gr[j] = _mm256_loadu_ps(g + 8 * j);
  int32_t k = k0;
  for (; k + 8 <= k1; k += 8) {  // eight dot products reduced together: [s0 .. s7] in one ymm
    __m256 s[8];
    for (int q = 0; q < 8; ++q) s[q] = dot_avx2(gr, xT + int64_t(ci[k + q]) * kPanel);
    __m256 sum = hsum4x2_avx2(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    if (!first) sum = _mm256_add_ps(sum, _mm256_loadu_ps(dv + k));
    _mm256_storeu_ps(dv + k, sum);
  }
  for (; k < k1; ++k) {
    const __m256 h = dot_avx2(gr, xT + int64_t(ci[k]) * kPanel);
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const float s = _mm_cvtss_f32(_mm_hadd_ps(_mm_hadd_ps(q, q), q));
    dv[k] = first ? s : dv[k] + s;
  }
}
#endif

template <typename T>
using SddmmFn = void (*)(const T*, const T*, const int32_t*, int32_t, int32_t, bool, T*);

template <typename T>
SddmmFn<T> pick_sddmm_kernel() {
  return &sddmm_row_portable<T>;
}

#if defined(__x86_64__)
template <>
SddmmFn<float> pick_sddmm_kernel<float>() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512: return &sddmm_row_avx512;
    case cpu::Isa::kAvx2: return &sddmm_row_avx2;
    default: return &sddmm_row_portable<float>;
  }
}
#endif

// dv[k] = sum_t g[t, row_k] * x[t, col_k]: both operands transposed into panels, then each job (a
// chunk of rows with equal nnz) sweeps every panel, accumulating into dv.
template <typename T>
void sddmm(const Tokens<T>& g, const Tokens<T>& x, const int32_t* rp, const int32_t* ci, T* dv) {
  const int64_t n_rows = g.cols, nnz = rp[n_rows], n_panels = (x.n + kPanel - 1) / kPanel;
  if (n_panels == 0) {
    std::fill(dv, dv + nnz, T(0));
    return;
  }
  const T* gT = transpose_all(g, 0);
  const T* xT = transpose_all(x, 1);
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(8 * at::get_num_threads(), n_rows));
  const auto bounds = balanced_rows(rp, n_rows, n_chunks);
  const SddmmFn<T> row = pick_sddmm_kernel<T>();
  parallel_jobs(n_chunks, [&](int64_t c) {
    for (int64_t p = 0; p < n_panels; ++p)
      for (int64_t r = bounds[c]; r < bounds[c + 1]; ++r)
        row(gT + (p * n_rows + r) * kPanel, xT + p * x.cols * kPanel, ci, rp[r], rp[r + 1], p == 0, dv);
  });
}

// ---- input checks ------------------------------------------------------------------------------

void check_values(const at::Tensor& values, const at::Tensor& like, const at::Tensor& idx, const char* idx_name) {
  SPARSECL_CHECK(values.dim() == 1, "values must be 1-D [nnz], got ", values.sizes());
  SPARSECL_CHECK(values.scalar_type() == like.scalar_type(), "values dtype ", values.scalar_type(), " != ",
                 like.scalar_type());
  check_same_device(values, "values", like);
  SPARSECL_CHECK(idx.size(0) == values.size(0), idx_name, " has ", idx.size(0), " entries but values has ",
                 values.size(0));
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", false);
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  check_values(values, x, col_idx, "col_idx");
  SPARSECL_CHECK(out_features >= 0, "out_features must be >= 0, got ", out_features);
  check_ptr_array(row_ptr, out_features, values.size(0), "row_ptr");
  check_ids_below(col_idx, x.size(1), "col_idx");
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [", out_features, "], got ",
                   bias->sizes());
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype ", bias->scalar_type(), " must match x dtype ",
                   x.scalar_type());
    check_same_device(*bias, "bias", x);
  }
  auto y = at::empty({x.size(0), out_features}, x.options());
  if (x.size(0) == 0 || out_features == 0) return y;
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_cpu", [&] {
    const Tokens<scalar_t> a{x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.size(0), x.size(1)};
    spmm_tokens<scalar_t>(a, vc.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
                          out_features, bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor csr_linear_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, int64_t in_features) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", false);
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  check_values(values, dy, t_col_idx, "t_col_idx");
  SPARSECL_CHECK(t_perm.size(0) == values.size(0), "t_perm has ", t_perm.size(0), " entries but values has ",
                 values.size(0));
  SPARSECL_CHECK(in_features >= 0, "in_features must be >= 0, got ", in_features);
  check_ptr_array(t_row_ptr, in_features, values.size(0), "t_row_ptr");
  check_ids_below(t_col_idx, dy.size(1), "t_col_idx");
  check_ids_below(t_perm, values.size(0), "t_perm");
  auto dx = at::empty({dy.size(0), in_features}, dy.options());
  if (dy.size(0) == 0 || in_features == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_linear_dx_cpu", [&] {
    // values in transposed order, gathered once per call into scratch memory
    const int64_t nnz = values.size(0), vs = values.stride(0);
    const scalar_t* v = values.data_ptr<scalar_t>();
    const int32_t* perm = t_perm.data_ptr<int32_t>();
    scalar_t* vt = cpu::workspace<scalar_t>(1, nnz);
    at::parallel_for(0, nnz, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) vt[k] = v[int64_t(perm[k]) * vs];
    });
    const Tokens<scalar_t> g{dy.data_ptr<scalar_t>(), dy.stride(0), dy.stride(1), dy.size(0), dy.size(1)};
    spmm_tokens<scalar_t>(g, vt, t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(), in_features, nullptr,
                          dx.data_ptr<scalar_t>());
  });
  return dx;
}

at::Tensor csr_linear_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", false);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype ", dy.scalar_type(), " must match x dtype ",
                 x.scalar_type());
  check_same_device(dy, "grad_out", x);
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx (", row_idx.size(0), ") and col_idx (", col_idx.size(0),
                 ") lengths differ");
  const int64_t nnz = col_idx.size(0), out_f = dy.size(1);
  check_ids_below(row_idx, out_f, "row_idx");
  check_ids_below(col_idx, x.size(1), "col_idx");
  auto dv = at::empty({nnz}, x.options());
  if (nnz == 0) return dv;
  // the kernel walks rows: rebuild row offsets from row_idx, which must be sorted (CSR order)
  std::vector<int32_t> rp(out_f + 1);
  {
    const int32_t* ri = row_idx.data_ptr<int32_t>();
    int64_t r = 0;
    for (int64_t k = 0; k < nnz; ++k) {
      SPARSECL_CHECK(ri[k] >= r, "row_idx must be non-decreasing (CSR order), at entry ", k);
      for (; r < ri[k]; ++r) rp[r + 1] = int32_t(k);
    }
    for (; r < out_f; ++r) rp[r + 1] = int32_t(nnz);
    rp[0] = 0;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_dw_cpu", [&] {
    const Tokens<scalar_t> g{dy.data_ptr<scalar_t>(), dy.stride(0), dy.stride(1), dy.size(0), out_f};
    const Tokens<scalar_t> a{x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.size(0), x.size(1)};
    sddmm<scalar_t>(g, a, rp.data(), col_idx.data_ptr<int32_t>(), dv.data_ptr<scalar_t>());
  });
  return dv;
}

// Column-major (transposed) index of a CSR index by a stable counting sort over columns, so rows stay
// increasing within each column: o_ri [nnz] (row of each entry), o_trp [in_f + 1], o_tci [nnz] (row of each
// transposed entry) and o_tp [nnz] (its row-major entry index). Rows are split into one range per thread;
// a range's entries go after those of earlier ranges in every column, so the result does not depend on
// the thread count.
void transpose_csr(const int32_t* rp, const int32_t* ci, int64_t out_f, int64_t in_f, int32_t* o_ri,
                   int32_t* o_trp, int32_t* o_tci, int32_t* o_tp) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), out_f / 64));
  std::vector<int64_t> slots(size_t(parts * in_f), 0);  // per range and column: a count, then a write offset
  // fn(the range's per-column slots, row, entry) for every entry; the row ranges run in parallel
  auto for_each_entry = [&](auto&& fn) {
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t r = out_f * p / parts; r < out_f * (p + 1) / parts; ++r)
          for (int64_t k = rp[r]; k < rp[r + 1]; ++k) fn(slots.data() + p * in_f, r, k);
    });
  };
  for_each_entry([&](int64_t* count, int64_t r, int64_t k) {
    ++count[ci[k]];
    o_ri[k] = int32_t(r);
  });
  int64_t start = 0;
  o_trp[0] = 0;
  for (int64_t c = 0; c < in_f; ++c) {
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t n = slots[p * in_f + c];
      slots[p * in_f + c] = start;
      start += n;
    }
    o_trp[c + 1] = int32_t(start);
  }
  for_each_entry([&](int64_t* next, int64_t r, int64_t k) {
    const int64_t t = next[ci[k]]++;
    o_tci[t] = int32_t(r), o_tp[t] = int32_t(k);
  });
}

// (row_idx, t_row_ptr, t_col_idx, t_perm) of a CSR index with n_cols columns (see CSRLayout).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_transpose_cpu(const at::Tensor& row_ptr,
                                                                             const at::Tensor& col_idx,
                                                                             int64_t n_cols) {
  check_index(row_ptr, "row_ptr", col_idx);
  check_index(col_idx, "col_idx", col_idx);
  SPARSECL_CHECK(row_ptr.size(0) >= 1, "row_ptr must have at least one entry");
  SPARSECL_CHECK(n_cols >= 0, "n_cols must be >= 0, got ", n_cols);
  const int64_t out_f = row_ptr.size(0) - 1, nnz = col_idx.size(0);
  check_ptr_array(row_ptr, out_f, nnz, "row_ptr");
  check_ids_below(col_idx, n_cols, "col_idx");
  auto i32 = row_ptr.options();
  auto ri = at::empty({nnz}, i32), trp = at::empty({n_cols + 1}, i32), tci = at::empty({nnz}, i32),
       tp = at::empty({nnz}, i32);
  transpose_csr(row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), out_f, n_cols, ri.data_ptr<int32_t>(),
                trp.data_ptr<int32_t>(), tci.data_ptr<int32_t>(), tp.data_ptr<int32_t>());
  return {ri, trp, tci, tp};
}

// Incremental topology change of a CSR layout with in_f columns (see CSRLayout.update): drop the entries
// with keep=false and insert the sorted, new flat positions `grow` (row * in_f + col) by merging sorted
// lists per row, O(nnz + g + rows); the transposed index is then rebuilt by transpose_csr, O(nnz + cols).
// Returns (row_ptr, col_idx, row_idx, t_row_ptr, t_col_idx, t_perm, src); src[new] = old index or -1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_update_cpu(
    const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t in_f, const at::Tensor& keep,
    const at::Tensor& grow) {
  check_index(row_ptr, "row_ptr", col_idx);
  check_index(col_idx, "col_idx", col_idx);
  const int64_t out_f = row_ptr.size(0) - 1, nnz = col_idx.size(0);
  SPARSECL_CHECK(out_f >= 0, "row_ptr must have at least one entry");
  SPARSECL_CHECK(in_f >= 0, "in_features must be >= 0, got ", in_f);
  SPARSECL_CHECK(keep.scalar_type() == at::kBool && keep.dim() == 1 && keep.size(0) == nnz && keep.is_contiguous(),
                 "keep must be a contiguous bool [nnz] tensor");
  SPARSECL_CHECK(grow.scalar_type() == at::kLong && grow.dim() == 1 && grow.is_contiguous(),
                 "grow must be a contiguous int64 1-D tensor");
  check_ptr_array(row_ptr, out_f, nnz, "row_ptr");
  check_ids_below(col_idx, in_f, "col_idx");
  const int32_t *rp = row_ptr.data_ptr<int32_t>(), *ci = col_idx.data_ptr<int32_t>();
  const bool* kp = keep.data_ptr<bool>();
  const int64_t* gp = grow.data_ptr<int64_t>();
  const int64_t g = grow.size(0);
  // The merge runs in parallel over rows: each row's output segment starts at the prefix sum of the kept +
  // grown entries before it, so rows write disjoint ranges.
  constexpr int64_t kGrain = 256;
  std::vector<int64_t> kept_in_row(out_f);
  at::parallel_for(0, out_f, kGrain, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      int64_t kept_r = rp[r] < rp[r + 1] ? kp[rp[r]] : 0;
      for (int64_t k = rp[r] + 1; k < rp[r + 1]; ++k) {
        SPARSECL_CHECK(ci[k] > ci[k - 1], "col_idx must be strictly increasing within a row (row ", r, ")");
        kept_r += kp[k];
      }
      kept_in_row[r] = kept_r;
    }
  });
  for (int64_t j = 0; j < g; ++j) {
    SPARSECL_CHECK(gp[j] >= 0 && gp[j] < out_f * in_f, "grow position ", gp[j], " outside [0, ", out_f * in_f, ")");
    SPARSECL_CHECK(j == 0 || gp[j] > gp[j - 1], "grow must be sorted without duplicates");
  }
  int64_t kept = 0;
  for (int64_t r = 0; r < out_f; ++r) kept += kept_in_row[r];
  const int64_t n_new = kept + g;
  SPARSECL_CHECK(n_new <= std::numeric_limits<int32_t>::max(), "too many nonzeros for int32 indices");
  auto i32 = row_ptr.options();
  auto n_rp = at::empty({out_f + 1}, i32), n_ci = at::empty({n_new}, i32), n_ri = at::empty({n_new}, i32);
  auto n_trp = at::empty({in_f + 1}, i32), n_tci = at::empty({n_new}, i32), n_tp = at::empty({n_new}, i32);
  auto src = at::empty({n_new}, grow.options());
  int32_t *o_rp = n_rp.data_ptr<int32_t>(), *o_ci = n_ci.data_ptr<int32_t>();
  int64_t* o_src = src.data_ptr<int64_t>();
  // grown entries per row: g_row[r]..g_row[r+1] (grow is sorted row-major)
  std::vector<int64_t> g_row(out_f + 1, 0);
  for (int64_t j = 0; j < g; ++j) ++g_row[gp[j] / in_f + 1];
  for (int64_t r = 0; r < out_f; ++r) g_row[r + 1] += g_row[r];
  o_rp[0] = 0;
  for (int64_t r = 0; r < out_f; ++r) o_rp[r + 1] = int32_t(o_rp[r] + kept_in_row[r] + g_row[r + 1] - g_row[r]);
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  at::parallel_for(0, out_f, kGrain, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      int64_t k = rp[r], j = g_row[r], n = o_rp[r];
      const int64_t k_end = rp[r + 1], j_end = g_row[r + 1], row_base = r * in_f;
      int64_t gc = j < j_end ? gp[j] - row_base : kNone;  // column of the next grown entry
      while (true) {
        while (k < k_end && !kp[k]) ++k;
        if (k >= k_end && gc == kNone) break;
        if (k < k_end && ci[k] < gc) {
          o_ci[n] = ci[k], o_src[n++] = k++;
        } else {
          SPARSECL_CHECK(k >= k_end || ci[k] != gc, "grow position ", gp[j], " is already active");
          o_ci[n] = int32_t(gc), o_src[n++] = -1;
          ++j;
          gc = j < j_end ? gp[j] - row_base : kNone;
        }
      }
    }
  });
  transpose_csr(o_rp, o_ci, out_f, in_f, n_ri.data_ptr<int32_t>(), n_trp.data_ptr<int32_t>(),
                n_tci.data_ptr<int32_t>(), n_tp.data_ptr<int32_t>());
  return {n_rp, n_ci, n_ri, n_trp, n_tci, n_tp, src};
}

// (keep, grow) that turn the layout (row_ptr, col_idx) into the bool [out, in] new_mask (see
// CSRLayout.with_topology): keep[k] = new_mask at entry k; grow = new_mask's set positions that are not
// entries, sorted flat (row * in + col). One pass over the mask: each row is copied to a scratch row,
// the current entries are cleared there, and the few set bytes left are found a word at a time.
std::tuple<at::Tensor, at::Tensor> csr_mask_delta_cpu(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                                      const at::Tensor& new_mask) {
  check_index(row_ptr, "row_ptr", col_idx);
  check_index(col_idx, "col_idx", col_idx);
  SPARSECL_CHECK(new_mask.scalar_type() == at::kBool && new_mask.dim() == 2 && new_mask.device().is_cpu(),
                 "new_mask must be a 2-D bool CPU tensor, got ", new_mask.scalar_type(), " ", new_mask.sizes());
  const int64_t out_f = new_mask.size(0), in_f = new_mask.size(1), nnz = col_idx.size(0);
  SPARSECL_CHECK(row_ptr.size(0) == out_f + 1, "row_ptr has ", row_ptr.size(0), " entries, new_mask has ", out_f,
                 " rows");
  check_ptr_array(row_ptr, out_f, nnz, "row_ptr");
  check_ids_below(col_idx, in_f, "col_idx");
  const auto mask = new_mask.contiguous();
  auto keep = at::empty({nnz}, new_mask.options());
  const int32_t *rp = row_ptr.data_ptr<int32_t>(), *ci = col_idx.data_ptr<int32_t>();
  const uint8_t* mp = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  bool* kp = keep.data_ptr<bool>();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), out_f));
  std::vector<std::vector<int64_t>> found(parts);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    const int64_t words = (in_f + 7) / 8;
    std::vector<uint64_t> row(words + 1);  // one spare word: the tail word is zeroed even when in_f == 0
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t r = out_f * p / parts; r < out_f * (p + 1) / parts; ++r) {
        row[words > 0 ? words - 1 : 0] = 0;
        if (in_f > 0) std::memcpy(row.data(), mp + r * in_f, size_t(in_f));  // an empty mask's data is null
        auto* bytes = reinterpret_cast<uint8_t*>(row.data());
        for (int64_t k = rp[r]; k < rp[r + 1]; ++k) {
          kp[k] = bytes[ci[k]] != 0;
          bytes[ci[k]] = 0;
        }
        for (int64_t w = 0; w < words; ++w)
          for (uint64_t v = row[w]; v; v &= v - 1)  // little-endian: byte i of the word is column 8w+i
            found[p].push_back(r * in_f + w * 8 + __builtin_ctzll(v) / 8);
      }
  });
  int64_t g = 0;
  for (const auto& f : found) g += int64_t(f.size());
  auto grow = at::empty({g}, row_ptr.options().dtype(at::kLong));
  int64_t* gp = grow.data_ptr<int64_t>();
  for (const auto& f : found) gp = std::copy(f.begin(), f.end(), gp);
  return {keep, grow};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("csr_update", &csr_update_cpu);
  m.impl("csr_transpose", &csr_transpose_cpu);
  m.impl("csr_mask_delta", &csr_mask_delta_cpu);
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("csr_linear_dx", &csr_linear_dx_cpu);
  m.impl("csr_linear_dw", &csr_linear_dw_cpu);
}

}  // namespace sparsecl
