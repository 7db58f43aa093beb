// Batch-in-lanes engine of the CPU unstructured conv (csr_conv2d) for small output planes, fp32 on
// AVX-512 / AVX2. The padded-width engine (sparse_conv2d_pw.h) vectorises along output pixels: on 4x4 and
// 8x8 planes most of its lanes compute padding columns. Here the images of a block of L (one vector) sit
// in the lanes instead: the source is transposed once into [image block][plane][row][col][L] (zero
// padding around each plane, zero lanes past the batch), and each nonzero weight does one full-width FMA
// per output pixel of a register tile of TR x TC pixels, for every lane. Stride in width is a compile-time
// pixel step (1 or 2), so stride-2 convs read their input directly, without a phase split. dX is the same
// kernel on grad_out transposed and padded as in PwDxSrc (the stride phases of dx as passes of one
// parallel region); dValues is a dot product per nonzero of the grad_out tile with the shifted source tile,
// lane-wise, summed at the end. The transposes cost one pass over x / grad_out per call.
#pragma once
#include "cpu/sparse_conv2d_pw.h"

namespace sparsecl {
namespace conv_cpu {

// Bytes of tile windows a job's chunk of source planes spans: 32 KiB - 512 KiB measured alike on
// Zen 4, no chunking (all channels at once) up to 1.6x slower. dValues' row-local chunks sweep whole planes
// of every image block: 512 KiB of them, half of Zen 4's L2 (sized by tile windows instead, a stride-2 8x8
// output's chunks spilled L2 and ran bimodally, 14-27 ms on AVX2).
constexpr int64_t kBilChunk = 64 << 10, kBilChunkRowLocal = 512 << 10;

// out[(a*TC + b)*L + l] = (prev ? prev[...] : init) + sum_k val[k] * src[off[k] + a*rs + b*SC*L + l].
template <int VB, int TR, int TC, int SC>
__attribute__((always_inline)) inline void bil_row_body(const float* src, int64_t rs, const int32_t* off,
                                                        const float* val, int64_t nnz, float init,
                                                        const float* prev, float* out) {
  using V = typename Vt<float, VB>::V;
  constexpr int L = Vt<float, VB>::L;
  V acc[TR][TC];
#pragma GCC unroll 8
  for (int a = 0; a < TR; ++a)
#pragma GCC unroll 8
    for (int b = 0; b < TC; ++b) {
      if (prev) __builtin_memcpy(&acc[a][b], prev + (a * TC + b) * L, VB);
      else acc[a][b] = V{} + init;
    }
  for (int64_t k = 0; k < nnz; ++k) {
    const V v = V{} + val[k];
    const float* p = src + off[k];
#pragma GCC unroll 8
    for (int a = 0; a < TR; ++a)
#pragma GCC unroll 8
      for (int b = 0; b < TC; ++b) {
        V x;
        __builtin_memcpy(&x, p + a * rs + b * SC * L, VB);
        acc[a][b] += v * x;
      }
  }
#pragma GCC unroll 8
  for (int a = 0; a < TR; ++a)
#pragma GCC unroll 8
    for (int b = 0; b < TC; ++b) __builtin_memcpy(out + (a * TC + b) * L, &acc[a][b], VB);
}

// dv[k*L + l] += sum_{a, b} g[a*gs + b*L + l] * src[off[k] + a*rs + b*SC*L + l].
template <int VB, int TR, int TC, int SC>
__attribute__((always_inline)) inline void bil_dot_body(const float* src, int64_t rs, const float* g, int64_t gs,
                                                        const int32_t* off, int64_t nnz, float* dv) {
  using V = typename Vt<float, VB>::V;
  constexpr int L = Vt<float, VB>::L;
  V gr[TR][TC];
#pragma GCC unroll 8
  for (int a = 0; a < TR; ++a)
#pragma GCC unroll 8
    for (int b = 0; b < TC; ++b) __builtin_memcpy(&gr[a][b], g + a * gs + b * L, VB);
  for (int64_t k = 0; k < nnz; ++k) {
    V s[2] = {V{}, V{}};
    const float* p = src + off[k];
#pragma GCC unroll 8
    for (int a = 0; a < TR; ++a)
#pragma GCC unroll 8
      for (int b = 0; b < TC; ++b) {
        V x;
        __builtin_memcpy(&x, p + a * rs + b * SC * L, VB);
        s[(a * TC + b) & 1] += gr[a][b] * x;
      }
    V acc;
    __builtin_memcpy(&acc, dv + k * L, VB);
    acc += s[0] + s[1];
    __builtin_memcpy(dv + k * L, &acc, VB);
  }
}

using BilRowFn = void (*)(const float*, int64_t, const int32_t*, const float*, int64_t, float, const float*, float*);
using BilDotFn = void (*)(const float*, int64_t, const float*, int64_t, const int32_t*, int64_t, float*);

#define SPARSECL_BIL_ISA(NAME, TARGET, VB)                                                                  \
  template <int TR, int TC, int SC>                                                                        \
  __attribute__((target(TARGET))) void bil_row_##NAME(const float* src, int64_t rs, const int32_t* off,    \
                                                      const float* val, int64_t nnz, float init,           \
                                                      const float* prev, float* out) {                     \
    bil_row_body<VB, TR, TC, SC>(src, rs, off, val, nnz, init, prev, out);                                 \
  }                                                                                                        \
  template <int TR, int TC, int SC>                                                                        \
  __attribute__((target(TARGET))) void bil_dot_##NAME(const float* src, int64_t rs, const float* g,        \
                                                      int64_t gs, const int32_t* off, int64_t nnz,         \
                                                      float* dv) {                                         \
    bil_dot_body<VB, TR, TC, SC>(src, rs, g, gs, off, nnz, dv);                                            \
  }
SPARSECL_BIL_ISA(avx512, "avx512f,avx512vl,avx512bw,avx512dq,fma", 64)
SPARSECL_BIL_ISA(avx2, "avx2,fma", 32)
#undef SPARSECL_BIL_ISA

// A register tile of TR x TC output pixels (one vector of L images each) and its kernels.
struct BilTile {
  int lanes = 0, tr = 1, tc = 1;
  BilRowFn row = nullptr;
  BilDotFn dot = nullptr;
  int64_t pixels() const { return int64_t(tr) * tc; }
};

template <int TR, int TC, int SC>
BilTile bil_tile(bool avx512) {
  BilTile t;
  t.lanes = avx512 ? 16 : 8;
  t.tr = TR;
  t.tc = TC;
  t.row = avx512 ? &bil_row_avx512<TR, TC, SC> : &bil_row_avx2<TR, TC, SC>;
  t.dot = avx512 ? &bil_dot_avx512<TR, TC, SC> : &bil_dot_avx2<TR, TC, SC>;
  return t;
}

template <int SC>
std::vector<BilTile> bil_tiles(bool avx512, bool dot) {
  // accumulators: up to 24 of 32 zmm (row) or 16 (dot: plus partial sums and a load); 12 / 8 of 16 ymm
  if (avx512) {
    if (dot) return {bil_tile<4, 4, SC>(true), bil_tile<2, 8, SC>(true), bil_tile<2, 7, SC>(true),
                     bil_tile<2, 4, SC>(true), bil_tile<1, 8, SC>(true), bil_tile<1, 4, SC>(true)};
    return {bil_tile<6, 4, SC>(true), bil_tile<3, 8, SC>(true), bil_tile<3, 7, SC>(true), bil_tile<4, 4, SC>(true),
            bil_tile<2, 8, SC>(true), bil_tile<2, 4, SC>(true), bil_tile<1, 8, SC>(true), bil_tile<1, 4, SC>(true)};
  }
  if (dot) return {bil_tile<2, 4, SC>(false), bil_tile<1, 8, SC>(false), bil_tile<1, 7, SC>(false),
                   bil_tile<1, 4, SC>(false)};
  return {bil_tile<3, 4, SC>(false), bil_tile<2, 4, SC>(false), bil_tile<1, 8, SC>(false), bil_tile<1, 7, SC>(false),
          bil_tile<1, 4, SC>(false)};
}

// The tile that computes fewest pixels of an Ho x Wo grid (whole tiles), the largest of those.
inline BilTile pick_bil(int64_t Ho, int64_t Wo, int64_t sw, bool dot) {
  const bool avx512 = cpu::active_isa() == cpu::Isa::kAvx512;
  const std::vector<BilTile> cand = sw == 1 ? bil_tiles<1>(avx512, dot) : bil_tiles<2>(avx512, dot);
  auto computed = [&](const BilTile& t) { return ceil_div(Ho, t.tr) * t.tr * ceil_div(Wo, t.tc) * t.tc; };
  BilTile best = cand[0];
  for (const BilTile& t : cand)
    if (computed(t) < computed(best) || (computed(t) == computed(best) && t.pixels() > best.pixels())) best = t;
  return best;
}

// dst[blk][p][top + h][left + w][l] = src[(blk*L + l) * P + p][h][w] (planes H x W), zeros elsewhere: the
// planes of a [N, P, H, W] tensor transposed into blocks of L images, each plane Hs x Ws pixels of L lanes.
inline void bil_transpose_in(const float* src, int64_t N, int64_t P, int64_t H, int64_t W, int64_t top, int64_t left,
                             int64_t Hs, int64_t Ws, int64_t L, float* dst) {
  const int64_t nblk = ceil_div(N, L), plane = Hs * Ws * L, row = Ws * L;
  at::parallel_for(0, nblk * P, 8, [&](int64_t begin, int64_t end) {
    const float* s[16];
    for (int64_t j = begin; j < end; ++j) {
      const int64_t blk = j / P, p = j % P, nl = std::min(L, N - blk * L);
      for (int64_t l = 0; l < nl; ++l) s[l] = src + ((blk * L + l) * P + p) * H * W;
      float* d = dst + j * plane;
      std::fill(d, d + top * row, 0.f);
      std::fill(d + (top + H) * row, d + plane, 0.f);
      for (int64_t h = 0; h < H; ++h) {
        float* dr = d + (top + h) * row;
        std::fill(dr, dr + left * L, 0.f);
        std::fill(dr + (left + W) * L, dr + row, 0.f);
        for (int64_t w = 0; w < W; ++w) {
          float* px = dr + (left + w) * L;
          for (int64_t l = 0; l < nl; ++l) px[l] = s[l][h * W + w];
          for (int64_t l = nl; l < L; ++l) px[l] = 0.f;
        }
      }
    }
  });
}

// Entries of rows 0..rows-1 (row o: ptr[o]..ptr[o+1], ptr[0] = 0) by chunks of source planes of which a job
// reads about `budget` bytes (window_bytes per plane): row o's entries of chunk j are ptr[o*n_cc + j]..+1 of off / val, at
// original index idx (nullptr: the same index). Rows whose offsets ascend (a CSR index with sorted columns)
// are split in place; otherwise the entries are regrouped (pw_bucket).
struct BilChunks {
  int64_t n_cc = 1;
  std::vector<int32_t> ptr;
  const int32_t* off = nullptr;
  const float* val = nullptr;
  const int32_t* idx = nullptr;
  PwBuckets<float> held;
};

inline BilChunks bil_chunks(int64_t rows, const int32_t* ptr, const int32_t* off, const float* val, int64_t plane_sz,
                            int64_t n_src, int64_t window_bytes, int64_t budget = kBilChunk) {
  const int64_t cc = std::clamp<int64_t>(budget / window_bytes, 1, std::max<int64_t>(n_src, 1));
  bool ascending = true;
  for (int64_t o = 0; o < rows && ascending; ++o)
    for (int64_t k = ptr[o] + 1; k < ptr[o + 1]; ++k)
      if (off[k] < off[k - 1]) {
        ascending = false;
        break;
      }
  BilChunks c;
  if (!ascending) {
    c.held = pw_bucket<float>(rows, ptr, 1, off, val, plane_sz, n_src, cc);
    c.n_cc = c.held.n_cc;
    c.ptr = std::move(c.held.ptr);
    c.off = c.held.off.data();
    c.val = val ? c.held.val.data() : nullptr;
    c.idx = c.held.idx.data();
    return c;
  }
  c.n_cc = std::max<int64_t>(1, ceil_div(n_src, cc));
  c.ptr.resize(rows * c.n_cc + 1);
  const int64_t span = plane_sz * cc;
  for (int64_t o = 0; o < rows; ++o) {
    int64_t k = ptr[o];
    for (int64_t j = 0; j < c.n_cc; ++j) {
      c.ptr[o * c.n_cc + j] = int32_t(k);
      while (k < ptr[o + 1] && off[k] < (j + 1) * span) ++k;
    }
  }
  c.ptr[rows * c.n_cc] = ptr[rows];
  c.off = off;
  c.val = val;
  return c;
}

// One output of bil_spmm: rows' entries (chunked) and where the Ho x Wo grid is stored.
struct BilPass {
  BilChunks entries;
  PwOut<float> out;
};

// For every pass: out(n, o) = init[o] + sum over row o's entries k of val[k] * (source shifted by off[k]), on
// the out.Ho x out.Wo pixel grid: grid pixel (u, v) of image block blk reads src + blk*img + u*rs + v*sw*L
// (+ off[k]). src: [blk][planes] with L lanes per pixel, readable at every pixel of whole tiles. All passes
// run in one parallel region.
inline void bil_spmm(const float* src, int64_t img, int64_t N, int64_t rows, const std::vector<BilPass>& passes,
                     const float* init, int64_t rs, int64_t sw, const BilTile& t) {
  if (N == 0 || rows == 0) return;
  const int64_t L = t.lanes, nblk = ceil_div(N, L), tp = t.pixels() * L;
  int64_t tiles = 0;
  for (const BilPass& p : passes) tiles += ceil_div(p.out.Ho, t.tr) * ceil_div(p.out.Wo, t.tc);
  int64_t n_rc = std::clamp<int64_t>(ceil_div(8 * at::get_num_threads(), std::max<int64_t>(nblk * tiles, 1)), 1, rows);
  n_rc = std::max(n_rc, (rows + 63) / 64);  // at most 64 rows of tiles per job
  const int64_t rc = (rows + n_rc - 1) / n_rc;
  std::vector<int64_t> first{0};  // first job of each pass
  for (const BilPass& p : passes) first.push_back(first.back() + nblk * ceil_div(p.out.Ho, t.tr) * ceil_div(p.out.Wo, t.tc) * n_rc);
  at::parallel_for(0, first.back(), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(rc * tp);
    for (int64_t job_all = begin; job_all < end; ++job_all) {
      size_t pi = 0;
      while (first[pi + 1] <= job_all) ++pi;
      const BilChunks& e = passes[pi].entries;
      const PwOut<float>& out = passes[pi].out;
      const int64_t job = job_all - first[pi], tx = ceil_div(out.Wo, t.tc), n_tiles = ceil_div(out.Ho, t.tr) * tx;
      const int64_t blk = job / (n_tiles * n_rc), tile = (job / n_rc) % n_tiles, r0 = (job % n_rc) * rc;
      const int64_t r1 = std::min(rows, r0 + rc), u0 = (tile / tx) * t.tr, v0 = (tile % tx) * t.tc;
      const float* s = src + blk * img + u0 * rs + v0 * sw * L;
      const int64_t n_cc = e.n_cc;
      for (int64_t j = 0; j < n_cc; ++j)
        for (int64_t o = r0; o < r1; ++o) {
          const int64_t k0 = e.ptr[o * n_cc + j], k1 = e.ptr[o * n_cc + j + 1];
          float* ob = buf.data() + (o - r0) * tp;
          if (j == 0) t.row(s, rs, e.off + k0, e.val + k0, k1 - k0, init ? init[o] : 0.f, nullptr, ob);
          else if (k1 > k0) t.row(s, rs, e.off + k0, e.val + k0, k1 - k0, 0.f, ob, ob);
        }
      const int64_t nl = std::min(L, N - blk * L), ue = std::min<int64_t>(t.tr, out.Ho - u0),
                    ve = std::min<int64_t>(t.tc, out.Wo - v0);
      for (int64_t o = r0; o < r1; ++o)
        for (int64_t l = 0; l < nl; ++l) {
          float* yp = out.y + ((blk * L + l) * rows + o) * out.plane;
          const float* bp = buf.data() + (o - r0) * tp + l;
          for (int64_t a = 0; a < ue; ++a)
            for (int64_t b = 0; b < ve; ++b) yp[out.pixel(u0 + a, v0 + b)] = bp[(a * t.tc + b) * L];
        }
    }
  });
}

// dv[idx[k]] = sum over lanes, images and grid pixels of gt * source shifted by off[k], for the chunked
// entries e of `rows` rows. gt: grad_out [blk][rows][Hy][Wy][L], zero past the valid pixels and images
// (Hy, Wy whole tiles); src, rs, sw as in bil_spmm. row_local (small planes, chunks spanning every image
// block): a row's entries of one chunk take every block and tile in turn, so their per-lane partial sums
// stay in L1 and are summed once. Otherwise (chunks of one block's tile windows) each image block and tile
// sweeps the chunks, and the partial sums of all entries live in memory (16x nnz floats).
inline void bil_sddmm(const float* src, int64_t img, const float* gt, int64_t Hy, int64_t Wy, int64_t N, int64_t rows,
                      const BilChunks& e, int64_t rs, int64_t sw, const BilTile& t, bool row_local, float* dv) {
  const int64_t L = t.lanes, nblk = ceil_div(N, L), tx = Wy / t.tc, n_tiles = (Hy / t.tr) * tx, n_cc = e.n_cc;
  auto dot = [&](int64_t blk, int64_t tile, int64_t o, int64_t k0, int64_t n, float* acc) {
    const int64_t u0 = (tile / tx) * t.tr, v0 = (tile % tx) * t.tc;
    t.dot(src + blk * img + u0 * rs + v0 * sw * L, rs, gt + ((blk * rows + o) * Hy * Wy + u0 * Wy + v0) * L, Wy * L,
          e.off + k0, n, acc);
  };
  auto store = [&](int64_t k0, int64_t n, const float* acc) {
    for (int64_t d = 0; d < n; ++d) {
      float sum = 0;
      for (int64_t l = 0; l < L; ++l) sum += acc[d * L + l];
      dv[e.idx ? e.idx[k0 + d] : k0 + d] = sum;
    }
  };
  if (row_local) {
    int64_t most = 0;  // entries of the longest (row, chunk)
    for (int64_t r = 0; r < rows * n_cc; ++r) most = std::max<int64_t>(most, e.ptr[r + 1] - e.ptr[r]);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(most * L);
      for (int64_t j = 0; j < n_cc; ++j)
        for (int64_t o = begin; o < end; ++o) {
          const int64_t k0 = e.ptr[o * n_cc + j], n = e.ptr[o * n_cc + j + 1] - k0;
          if (n == 0) continue;
          std::fill(acc.begin(), acc.begin() + n * L, 0.f);
          for (int64_t blk = 0; blk < nblk; ++blk)
            for (int64_t tile = 0; tile < n_tiles; ++tile) dot(blk, tile, o, k0, n, acc.data());
          store(k0, n, acc.data());
        }
    });
    return;
  }
  std::vector<float> acc(int64_t(e.ptr[rows * n_cc]) * L, 0.f);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = 0; blk < nblk; ++blk)
      for (int64_t tile = 0; tile < n_tiles; ++tile)
        for (int64_t j = 0; j < n_cc; ++j)
          for (int64_t o = begin; o < end; ++o) {
            const int64_t k0 = e.ptr[o * n_cc + j], n = e.ptr[o * n_cc + j + 1] - k0;
            if (n > 0) dot(blk, tile, o, k0, n, acc.data() + k0 * L);
          }
    store(e.ptr[begin * n_cc], e.ptr[end * n_cc] - e.ptr[begin * n_cc], acc.data() + int64_t(e.ptr[begin * n_cc]) * L);
  });
}

// ---- csr_conv2d entry points (where bil_routes) --------------------------------------------------

// x padded by (ph, pw) and transposed for the grid of tile t over Ho x Wo: planes Hs x Ws, large enough
// for every pixel of whole tiles.
struct BilSrc {
  int64_t Hs, Ws, L;
  BilSrc(const Geom& g, const BilTile& t)
      : Hs(std::max(g.H + 2 * g.ph, (ceil_div(g.Ho, t.tr) * t.tr - 1) * g.sh + (g.kh - 1) * g.dh + 1)),
        Ws(std::max(g.W + 2 * g.pw, (ceil_div(g.Wo, t.tc) * t.tc - 1) * g.sw + (g.kw - 1) * g.dw + 1)),
        L(t.lanes) {}
  int64_t plane() const { return Hs * Ws * L; }
  // bytes of one source plane a tile reads
  int64_t window_bytes(const Geom& g, const BilTile& t) const {
    return ((t.tr - 1) * g.sh + (g.kh - 1) * g.dh + 1) * ((t.tc - 1) * g.sw + (g.kw - 1) * g.dw + 1) * L *
           int64_t(sizeof(float));
  }
  void fill(const float* x, const Geom& g, float* dst) const {
    bil_transpose_in(x, g.N, g.C, g.H, g.W, g.ph, g.pw, Hs, Ws, L, dst);
  }
  // offset of entry k (column col_idx[order[k]]) in one image block
  std::vector<int32_t> offsets(const Geom& g, const int32_t* col_idx, const int32_t* order, int64_t nnz) const {
    std::vector<int32_t> col_off(g.C * g.kh * g.kw), off(nnz);
    for (int64_t c = 0; c < int64_t(col_off.size()); ++c) {
      int64_t i, r, s;
      decode(c, g, i, r, s);
      col_off[c] = int32_t(((i * Hs + r * g.dh) * Ws + s * g.dw) * L);
    }
    for (int64_t k = 0; k < nnz; ++k) off[k] = col_off[col_idx[order ? order[k] : k]];
    return off;
  }
};

// Output planes up to this many pixels take the batch-in-lanes kernels (see bil_routes). Measured on Zen 4
// (batch 64, d=0.1, 1 thread, A/B against the padded-width kernels): forward and dX 1.5-2.3x at 4x4 and 8x8
// outputs, even at 16x16, 0.7x at 32x32; dValues 1.5-2x from 4x4 to 16x16 and 1.4x at 32x32.
constexpr int64_t kBilMaxPlane = 64, kBilMaxPlaneDw = 1024;

// Whether csr_conv2d of geometry g on tensor t runs batch-in-lanes (forward and dX, or dValues): fp32 on
// AVX-512/AVX2, width stride 1 or 2, a small output plane, and int32 offsets within every transposed source
// (tiles are at most 6 x 8).
inline bool bil_routes(const at::Tensor& t, const Geom& g, bool dvalues = false) {
  const cpu::Isa isa = cpu::active_isa();
  if (t.scalar_type() != at::kFloat || (isa != cpu::Isa::kAvx512 && isa != cpu::Isa::kAvx2) || g.sw > 2 ||
      g.Ho * g.Wo > (dvalues ? kBilMaxPlaneDw : kBilMaxPlane))
    return false;
  const int64_t Hs = std::max(g.H + 2 * g.ph, (g.Ho + 6) * g.sh + (g.kh - 1) * g.dh + 1),
                Ws = std::max(g.W + 2 * g.pw, (g.Wo + 8) * g.sw + (g.kw - 1) * g.dw + 1);
  const PwDxSrc d(g);
  return std::max(g.C * Hs * Ws, g.O * (d.Hg + 6) * (d.Wg + 8)) * 16 < INT32_MAX;
}

// Whether dValues' tiles cover the output plane exactly: then every product it sums is one the dense
// convolution sums too (tail lanes are 0 x 0, padding 0 x grad_out), so x needs no finiteness check (the
// check is a pass over x, measured at 10% of an 8x8 dValues).
inline bool bil_dw_exact(const Geom& g) {
  const BilTile t = pick_bil(g.Ho, g.Wo, g.sw, true);
  return g.Ho % t.tr == 0 && g.Wo % t.tc == 0;
}

inline void bil_csr_forward(const float* x, const Geom& g, const float* values, const int32_t* row_ptr,
                            const int32_t* col_idx, const float* bias, float* y) {
  const BilTile t = pick_bil(g.Ho, g.Wo, g.sw, false);
  const BilSrc src(g, t);
  const int64_t img = g.C * src.plane();
  float* xt = cpu::workspace(0, ceil_div(g.N, t.lanes) * img + 1);
  src.fill(x, g, xt);
  const std::vector<int32_t> off = src.offsets(g, col_idx, nullptr, row_ptr[g.O]);
  std::vector<BilPass> pass(1);
  pass[0].entries = bil_chunks(g.O, row_ptr, off.data(), values, src.plane(), g.C, src.window_bytes(g, t));
  pass[0].out = PwOut<float>::whole(y, g.Ho, g.Wo);
  bil_spmm(xt, img, g.N, g.O, pass, bias, g.sh * src.Ws * src.L, g.sw, t);
}

// dX by stride phase (a, b) of dx, all phases in one parallel region, as the padded-width dX: row i's
// entries are the transposed index's entries of columns (i, taps reaching the phase), read from grad_out
// transposed into planes Hg x Wg (PwDxSrc's, plus a whole tile of margin), grouped by chunk of grad_out
// channels as they are gathered.
inline void bil_csr_dx(const float* dy, const Geom& g, const float* v, const int32_t* tp, const int32_t* tc,
                       const int32_t* tperm, float* dx) {
  const BilTile t = pick_bil(ceil_div(g.H, g.sh), ceil_div(g.W, g.sw), 1, false);
  const PwDxSrc base(g);
  const int64_t L = t.lanes, Hg = base.Hg + t.tr, Wg = base.Wg + t.tc, plane = Hg * Wg * L, taps = g.kh * g.kw;
  float* gt = cpu::workspace(0, ceil_div(g.N, L) * g.O * plane + 1);
  bil_transpose_in(dy, g.N, g.O, g.Ho, g.Wo, base.top, base.left, Hg, Wg, L, gt);
  const int64_t window = (t.tr + ceil_div((g.kh - 1) * g.dh, g.sh)) * (t.tc + ceil_div((g.kw - 1) * g.dw, g.sw));
  const int64_t cc = std::clamp<int64_t>(kBilChunk / (window * L * int64_t(sizeof(float))), 1, std::max<int64_t>(g.O, 1));
  const int64_t n_cc = std::max<int64_t>(1, ceil_div(g.O, cc)), n_ph = std::min(g.sh, g.H) * std::min(g.sw, g.W);
  std::vector<BilPass> passes;
  std::vector<std::vector<int32_t>> offs;
  std::vector<std::vector<float>> vals;
  passes.reserve(n_ph);
  offs.reserve(n_ph);
  vals.reserve(n_ph);
  std::vector<int64_t> shift(taps);
  for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
    for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {
      for (int64_t k = 0; k < taps; ++k) {
        const int64_t eh = a + g.ph - (k / g.kw) * g.dh, ew = b + g.pw - (k % g.kw) * g.dw;
        shift[k] = eh % g.sh || ew % g.sw ? -1 : (eh / g.sh + base.top) * Wg + ew / g.sw + base.left;
      }
      BilPass pass;
      BilChunks& e = pass.entries;
      e.n_cc = n_cc;
      e.ptr.assign(g.C * n_cc + 1, 0);
      for (int64_t i = 0; i < g.C; ++i)
        for (int64_t k = 0; k < taps; ++k)
          if (shift[k] >= 0)
            for (int32_t j = tp[i * taps + k]; j < tp[i * taps + k + 1]; ++j) ++e.ptr[i * n_cc + tc[j] / cc + 1];
      for (int64_t r = 0; r < g.C * n_cc; ++r) e.ptr[r + 1] += e.ptr[r];
      std::vector<int32_t> next(e.ptr.begin(), e.ptr.end() - 1);
      offs.emplace_back(e.ptr.back());
      vals.emplace_back(e.ptr.back());
      for (int64_t i = 0; i < g.C; ++i)
        for (int64_t k = 0; k < taps; ++k)
          if (shift[k] >= 0)
            for (int32_t j = tp[i * taps + k]; j < tp[i * taps + k + 1]; ++j) {
              const int32_t d = next[i * n_cc + tc[j] / cc]++;
              offs.back()[d] = int32_t((tc[j] * Hg * Wg + shift[k]) * L);
              vals.back()[d] = v[tperm[j]];
            }
      e.off = offs.back().data();
      e.val = vals.back().data();
      pass.out = base.out(g, a, b, dx);
      passes.push_back(std::move(pass));
    }
  bil_spmm(gt, g.O * plane, g.N, g.C, passes, nullptr, Wg * L, 1, t);
}

// dValues of entries (row_idx[k], col_idx[k]) in any order.
inline void bil_csr_dw(const float* dy, const float* x, const Geom& g, const int32_t* ri, const int32_t* ci,
                       int64_t nnz, float* dv) {
  const BilTile t = pick_bil(g.Ho, g.Wo, g.sw, true);
  const BilSrc src(g, t);
  const int64_t L = t.lanes, nblk = ceil_div(g.N, L), img = g.C * src.plane();
  const int64_t Hy = ceil_div(g.Ho, t.tr) * t.tr, Wy = ceil_div(g.Wo, t.tc) * t.tc;
  std::vector<int32_t> ptr(g.O + 1, 0), order(nnz);  // entries grouped by row (stable counting sort)
  for (int64_t k = 0; k < nnz; ++k) ++ptr[ri[k] + 1];
  for (int64_t o = 0; o < g.O; ++o) ptr[o + 1] += ptr[o];
  {
    std::vector<int32_t> next(ptr.begin(), ptr.end() - 1);
    for (int64_t k = 0; k < nnz; ++k) order[next[ri[k]]++] = int32_t(k);
  }
  const std::vector<int32_t> off = src.offsets(g, ci, order.data(), nnz);
  const bool row_local = g.Ho * g.Wo <= kBilMaxPlane;
  const BilChunks e = bil_chunks(g.O, ptr.data(), off.data(), nullptr, src.plane(), g.C,
                                 row_local ? src.plane() * int64_t(sizeof(float)) * std::max<int64_t>(nblk, 1)
                                           : src.window_bytes(g, t),
                                 row_local ? kBilChunkRowLocal : kBilChunk);
  float* xt = cpu::workspace(0, nblk * img + 1);
  float* gt = cpu::workspace(1, nblk * g.O * Hy * Wy * L + 1);
  src.fill(x, g, xt);
  bil_transpose_in(dy, g.N, g.O, g.Ho, g.Wo, 0, 0, Hy, Wy, L, gt);
  std::vector<float> dvo(nnz);
  bil_sddmm(xt, img, gt, Hy, Wy, g.N, g.O, e, g.sh * src.Ws * L, g.sw, t, row_local, dvo.data());
  for (int64_t j = 0; j < nnz; ++j) dv[order[j]] = dvo[j];
}

}  // namespace conv_cpu
}  // namespace sparsecl
