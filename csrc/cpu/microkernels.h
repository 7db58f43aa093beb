// Register-blocked fp32 micro-kernels shared by the CPU sparse ops, compiled for AVX-512 and AVX2
// through function target attributes (no -march flags), plus the packing and scheduling helpers
// around them. The kernel body lives in microkernel_body.inc and is compiled once per ISA.
//
// One micro-kernel computes a register tile of C (MR rows x NV vectors) as a sum of panels:
//   C[r, j] = init[j] + (accumulate ? C[r, j] : 0) + sum_p sum_{kk < depth[p]} A_p[kk*lda + r] * B_p[kk*ldb + j]
// A is broadcast one element at a time (a packed token panel, or a strided row of grad_out), B is
// loaded as vectors (rows of a block, or rows of x). Only rows r < mr and columns j < nc of B/C/init
// are read or written (masked), so clipped edge blocks never touch padding.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checks.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/isa.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPARSECL_X86_KERNELS 1
#endif

namespace sparsecl {
namespace cpu {

struct TileArgs {
  const float* const* a;  // np panel pointers into A
  const float* const* b;  // np panel pointers into B
  const int* depth;       // np reduction lengths
  int np;
  int64_t lda, ldb;
  const float* init;  // nullptr or a row of nc floats added to every row (bias)
  bool accumulate;    // add C's current contents
  float* c;
  int64_t ldc;
  int mr, nc;  // rows and columns of C to write (A is read for r < mr, B for j < nc)
};

// The micro-kernels of one ISA: tile shapes and entry points. nullptr (generic) means scalar code.
struct MicroKernels {
  const char* name;
  int width;        // floats per vector
  int panel_rows;   // MR of packed token panels (tile() reads all MR rows of A: pad the panel)
  int max_vectors;  // NV of the widest tile
  int outer_rows;   // most rows of outer_tile()
  // C tile of panel_rows x nv vectors, A a packed panel (A[kk*lda + r] valid for every r < panel_rows)
  void (*tile)(const TileArgs&, int nv);
  // C tile of mr <= outer_rows rows x nv vectors, A read only for r < mr (strided rows of grad_out)
  void (*outer_tile)(const TileArgs&, int nv);
};

#ifdef SPARSECL_X86_KERNELS
#if defined(__clang__)
#define SPARSECL_TARGET_PUSH(t) _Pragma("clang attribute push(__attribute__((target(" #t "))), apply_to = function)")
#define SPARSECL_TARGET_POP _Pragma("clang attribute pop")
#else
#define SPARSECL_TARGET_PUSH(t) _Pragma("GCC push_options") _Pragma(SPARSECL_STR(GCC target(t)))
#define SPARSECL_TARGET_POP _Pragma("GCC pop_options")
#endif
#define SPARSECL_STR(x) #x

SPARSECL_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace avx512 {
struct Vec {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static inline Mask mask(int n) { return n >= 16 ? Mask(0xFFFF) : n <= 0 ? Mask(0) : Mask((1u << n) - 1); }
  static inline Reg zero() { return _mm512_setzero_ps(); }
  static inline Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline Reg load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static inline void store(float* p, Reg v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static inline Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
};
constexpr int kPanelRows = 14, kMaxVectors = 2, kOuterRows = 8;  // 28 (resp. 16) zmm accumulators
#include "cpu/microkernel_body.inc"
}  // namespace avx512
SPARSECL_TARGET_POP

SPARSECL_TARGET_PUSH("avx2,fma")
namespace avx2 {
struct Vec {
  using Reg = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8;
  static inline Mask mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline Reg zero() { return _mm256_setzero_ps(); }
  static inline Reg broadcast(const float* p) { return _mm256_set1_ps(*p); }  // not _mm256_broadcast_ss: GCC then spills acc
  static inline Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline Reg load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static inline void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static inline void store(float* p, Reg v, Mask m) { _mm256_maskstore_ps(p, m, v); }
  static inline Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
};
constexpr int kPanelRows = 6, kMaxVectors = 2, kOuterRows = 6;  // 12 ymm accumulators
#include "cpu/microkernel_body.inc"
}  // namespace avx2
SPARSECL_TARGET_POP
#endif  // SPARSECL_X86_KERNELS

// Micro-kernels for the ISA the dispatcher picked (active_isa()), nullptr for the generic path.
inline const MicroKernels* micro_kernels(Isa isa) {
#ifdef SPARSECL_X86_KERNELS
  static const MicroKernels k512{"avx512", avx512::Vec::kWidth, avx512::kPanelRows, avx512::kMaxVectors,
                                 avx512::kOuterRows, &avx512::tile, &avx512::outer_tile};
  static const MicroKernels k2{"avx2", avx2::Vec::kWidth, avx2::kPanelRows, avx2::kMaxVectors, avx2::kOuterRows,
                               &avx2::tile, &avx2::outer_tile};
  if (isa == Isa::kAvx512) return &k512;
  if (isa == Isa::kAvx2) return &k2;
#endif
  (void)isa;
  return nullptr;
}

// Scratch memory of the calling thread, kept between calls: packed panels of a large input are tens
// of MB, and fresh allocations that size come from mmap, so every call would pay the page faults
// and zeroing (measured: as long as the FMAs themselves at T=4096, 768->3072, d=0.1). Backed by
// 2 MiB pages where the kernel allows it (madvise): kernels that gather rows of a panel at random
// miss the TLB on 4 KiB pages (measured: csr_linear forward 1.2x slower at T=512, 4096->4096, d=0.1).
// Contents are not kept when a slot grows.
template <typename T = float>
inline T* workspace(int slot, int64_t n) {
  struct Buffer {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[slot];
  const size_t want = size_t(std::max<int64_t>(n, 1)) * sizeof(T);
  if (b.bytes < want) {
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t bytes = (want + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, bytes);
    SPARSECL_CHECK(p != nullptr, "could not allocate ", bytes, " bytes of kernel scratch memory");
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    std::free(b.p);
    b.p = p;
    b.bytes = bytes;
  }
  return static_cast<T*>(b.p);
}

// Packs src [rows, cols] (row stride ld) into token panels of mr rows, each stored feature-major:
// dst[(p * cols + j) * mr + r] = src[(p * mr + r) * ld + j], rows past the end zero. A panel is the
// A operand of MicroKernels::tile (lda = mr); contiguous panels avoid the cache-set conflicts of
// power-of-two row strides, and each broadcast of mr consecutive floats stays in one or two lines.
inline void pack_panels(const float* src, int64_t rows, int64_t cols, int64_t ld, int64_t mr, float* dst) {
  const int64_t n_panels = (rows + mr - 1) / mr;
  constexpr int64_t kCols = 256;  // columns per pass: the pass's output (kCols * mr floats) stays in L1
  at::parallel_for(0, n_panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t rn = std::min(mr, rows - p * mr);
      for (int64_t j0 = 0; j0 < cols; j0 += kCols) {
        const int64_t j1 = std::min(cols, j0 + kCols);
        float* out = dst + p * cols * mr;
        for (int64_t r = 0; r < mr; ++r) {
          const float* in = src + (p * mr + r) * ld;
          if (r < rn)
            for (int64_t j = j0; j < j1; ++j) out[j * mr + r] = in[j];
          else
            for (int64_t j = j0; j < j1; ++j) out[j * mr + r] = 0.f;
        }
      }
    }
  });
}

// Order of the (row, token chunk) items of a sparse kernel over packed token panels (forward: block
// rows of W; dX: block columns). Row-major sweeps all panels per row: the row's B blocks are reused
// from cache, and each row reads its columns of every panel. Chunk-major sweeps all rows per chunk of
// panels sized to stay in L2: the panels are read once, all of B once per chunk. The order moving
// fewer bytes from beyond L2 wins; re-reads count a quarter when they can come from L3 (B within the
// L3 budget; the panels only if they and the output C together fit it, since C streams through L3).
// A heuristic tuned on this project's shapes: square 4096 x 4096 with T=512 runs row-major, the ViT
// MLP shapes with T=4096 chunk-major (row-major there measured 1.3-1.5x slower).
struct PanelSchedule {
  int64_t n_rows = 0, n_chunks = 1, per_chunk = 1;
  bool chunk_major = false;
  int64_t items() const { return n_rows * n_chunks; }
  int64_t row(int64_t i) const { return chunk_major ? i % n_rows : i / n_chunks; }
  int64_t chunk(int64_t i) const { return chunk_major ? i / n_rows : i % n_chunks; }
  // cost of the items before item i: blocks of each row (ptr: CSR offsets) + 1 for its overhead
  int64_t cost_before(const int32_t* ptr, int64_t i) const {
    const int64_t r = row(i), c = chunk(i), nnz = ptr[n_rows];
    if (chunk_major) return c * (nnz + n_rows) + ptr[r] + r;
    const int64_t before = (int64_t(ptr[r]) + r) * n_chunks;
    return c == 0 ? before : before + c * (int64_t(ptr[r + 1]) - ptr[r] + 1);
  }
};

// n_panels token panels of panel_bytes each; n_rows rows with nnz blocks in all over n_cols block
// columns of A; b_bytes: all B blocks; c_bytes: the output.
inline PanelSchedule make_panel_schedule(int64_t n_rows, int64_t n_panels, int64_t nnz, int64_t n_cols,
                                         int64_t panel_bytes, int64_t b_bytes, int64_t c_bytes) {
  constexpr double kL2 = 384 << 10, kL3 = 24 << 20;
  PanelSchedule s;
  s.n_rows = n_rows;
  if (n_rows == 0 || n_panels == 0) return s;
  const double a_bytes = double(n_panels) * double(panel_bytes);
  const int64_t per_chunk = std::clamp<int64_t>(int64_t(kL2 / std::max<int64_t>(panel_bytes, 1)), 1, n_panels);
  const int64_t chunks = (n_panels + per_chunk - 1) / per_chunk;
  const double a_reads = a_bytes * double(nnz) / double(std::max<int64_t>(n_cols, 1));
  const double row_major = double(b_bytes) + a_reads * (a_bytes + double(c_bytes) <= kL3 ? 0.25 : 1.0);
  const double chunk_major = a_bytes + double(b_bytes) * double(chunks) * (double(b_bytes) <= kL3 ? 0.25 : 1.0);
  s.chunk_major = chunk_major < row_major;
  if (s.chunk_major) {
    s.per_chunk = per_chunk;
  } else {  // enough (row, chunk) items for every thread even with few rows
    const int64_t want = std::clamp<int64_t>((4 * at::get_num_threads() + n_rows - 1) / n_rows, 1, n_panels);
    s.per_chunk = (n_panels + want - 1) / want;
  }
  s.n_chunks = (n_panels + s.per_chunk - 1) / s.per_chunk;
  return s;
}

// Runs body(begin, end) over [0, n) split into one contiguous range per thread of about equal cost,
// where cost_before(i) is the total cost of items [0, i) (non-decreasing). Work per item varies
// (nonzeros per block row), so an even split of the item range would leave threads idle.
template <class CostBefore, class Body>
void balanced_parallel_for(int64_t n, const CostBefore& cost_before, const Body& body) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), n);
  const double total = double(cost_before(n));
  auto boundary = [&](int64_t p) {  // first item whose preceding cost reaches p/parts of the total
    if (p >= parts) return n;
    const double target = total * double(p) / double(parts);
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (double(cost_before(mid)) < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t begin = boundary(p), end = boundary(p + 1);
      if (begin < end) body(begin, end);
    }
  });
}

}  // namespace cpu
}  // namespace sparsecl
