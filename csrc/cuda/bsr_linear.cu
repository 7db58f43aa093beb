// Block-sparse linear on CUDA: forward, dX through the transposed index, and dValues (SDDMM at
// active blocks). fp16/bf16 run on tensor cores (WMMA 16x16x16, fp32 accumulation) with cp.async
// double buffering; fp32/fp64 run on FMA register tiles, so fp32 keeps full fp32 products.
//
// Forward and dX are one "gather GEMM": a CTA owns a tile of tokens and one output block of B
// features and loops over the nonzero blocks feeding it: forward walks a block row (row_ptr,
// col_idx) and uses each W block transposed; dX walks a block column through the transposed index
// (t_row_ptr, t_col_idx, t_perm) and uses W blocks as stored, so no second copy of values exists.
// dValues: one CTA per active block accumulates dY[:, o-block]^T @ x[:, i-block] over token tiles.
//
// Features need not be multiples of B: out-of-range entries are zero-filled in shared memory, so
// the padding entries of edge blocks are never read, and their gradient is written as 0.
// Index *values* are trusted (BlockSparseLayout validates them; checking here would sync the device).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "checks.h"

namespace sparsecl {
namespace {

namespace wmma = nvcuda::wmma;

template <typename T> struct Native { using type = T; };
template <> struct Native<at::Half> { using type = __half; };
template <> struct Native<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ float to_float(T v) { return float(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return T(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Copy 8 consecutive 16-bit elements src[0..8) into dst: one cp.async when the whole chunk is in
// range and 16-byte aligned, else element by element with zeros past `valid` (0 <= valid).
template <typename T>
__device__ __forceinline__ void load_chunk8(T* dst, const T* src, int valid, bool vec) {
  if (vec && valid >= 8) {
    cp_async16(dst, src);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[e] = e < valid ? src[e] : from_float<T>(0.f);
  }
}

// Linear CTA id -> (output block nb, token tile tt), GROUP output blocks at a time, so consecutive
// CTAs share their tile of the gathered operand in L2.
__device__ __forceinline__ void grouped_tile(int64_t pid, int64_t n_blocks, int64_t n_tiles, int64_t* nb,
                                             int64_t* tt) {
  constexpr int64_t GROUP = 8;
  const int64_t per_group = GROUP * n_tiles;
  const int64_t first = (pid / per_group) * GROUP;
  const int64_t size = min(n_blocks - first, GROUP);
  *nb = first + (pid % per_group) % size;
  *tt = (pid % per_group) / size;
}

struct GatherArgs {
  const void* a;      // [T, K] activations (x for forward, grad_out for dX), contiguous
  const void* w;      // values [nnzb, B, B]
  const void* bias;   // [N] or null
  void* out;          // [T, N]
  const int32_t* ptr; // [N/B + 1] offsets over output blocks
  const int32_t* idx; // block index along K of each entry
  const int32_t* perm;// values block of each entry, or null (identity)
  int64_t T, K, N, n_blocks, n_tiles;
  bool w_t;           // forward: W block used transposed (K runs along its columns)
  bool a_vec, w_vec;  // 16-byte cp.async allowed
};

// ---- tensor cores (fp16/bf16) ----------------------------------------------------------------
// each warp: TC_WM x 16 tokens x B features, so every W fragment loaded feeds TC_WM products
constexpr int TC_WARPS = 8, TC_WM = 2, TC_BM = TC_WARPS * TC_WM * 16;

template <int B> constexpr int tc_lda() { return B + 8; }  // 16-byte row pad against bank conflicts
constexpr int cmax(int a, int b) { return a > b ? a : b; }
// two stages of (A tile + W block), later reused for the fp32 [TC_BM][B + 4] epilogue tile
template <int B> constexpr int tc_gather_smem(int elem) {
  return cmax(2 * (TC_BM + B) * tc_lda<B>() * elem, TC_BM * (B + 4) * 4);
}

template <typename T, int B>
__global__ void __launch_bounds__(TC_WARPS * 32) gather_mm_tc(GatherArgs p) {
  constexpr int LDA = tc_lda<B>(), LDC = B + 4, NF = B / 16, CH = B / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);  // [2][TC_BM][LDA]
  T* Ws = As + 2 * TC_BM * LDA;            // [2][B][LDA]
  const T* a = static_cast<const T*>(p.a);
  const T* w = static_cast<const T*>(p.w);
  int64_t nb, tt;
  grouped_tile(blockIdx.x, p.n_blocks, p.n_tiles, &nb, &tt);
  const int64_t t0 = tt * TC_BM;
  const int n_lim = int(min(int64_t(B), p.N - nb * B));
  const int tid = threadIdx.x, warp = tid / 32;
  const int32_t start = p.ptr[nb], n_steps = p.ptr[nb + 1] - start;

  auto load_stage = [&](int stage, int32_t j) {
    const int64_t kb = p.idx[j];
    const int64_t blk = p.perm ? p.perm[j] : j;
    const int k_lim = int(min(int64_t(B), p.K - kb * B));
    T* as = As + stage * TC_BM * LDA;
    for (int c = tid; c < TC_BM * CH; c += TC_WARPS * 32) {
      const int r = c / CH, col = (c % CH) * 8;
      const int64_t t = t0 + r;
      const int valid = t < p.T ? k_lim - col : 0;
      load_chunk8(as + r * LDA + col, a + (t < p.T ? t : 0) * p.K + kb * B + col, valid, p.a_vec);
    }
    // W block rows run along N (forward) or K (dX); columns along the other
    const int rows_lim = p.w_t ? n_lim : k_lim, cols_lim = p.w_t ? k_lim : n_lim;
    const T* wb = w + blk * B * B;
    T* ws = Ws + stage * B * LDA;
    for (int c = tid; c < B * CH; c += TC_WARPS * 32) {
      const int r = c / CH, col = (c % CH) * 8;
      load_chunk8(ws + r * LDA + col, wb + r * B + col, r < rows_lim ? cols_lim - col : 0, p.w_vec);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[TC_WM][NF];
#pragma unroll
  for (int m = 0; m < TC_WM; ++m)
#pragma unroll
    for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[m][f], 0.f);

  if (n_steps > 0) load_stage(0, start);
  cp_async_commit();
  for (int s = 0; s < n_steps; ++s) {
    if (s + 1 < n_steps) load_stage((s + 1) & 1, start + s + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* as = As + (s & 1) * TC_BM * LDA + warp * TC_WM * 16 * LDA;
    const T* ws = Ws + (s & 1) * B * LDA;
#pragma unroll
    for (int kk = 0; kk < NF; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[TC_WM];
#pragma unroll
      for (int m = 0; m < TC_WM; ++m) wmma::load_matrix_sync(fa[m], as + m * 16 * LDA + kk * 16, LDA);
      if (p.w_t) {  // b(k=i, n=o) = W[o][i]: column-major view of the stored block
#pragma unroll
        for (int nn = 0; nn < NF; ++nn) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, ws + nn * 16 * LDA + kk * 16, LDA);
#pragma unroll
          for (int m = 0; m < TC_WM; ++m) wmma::mma_sync(acc[m][nn], fa[m], fb, acc[m][nn]);
        }
      } else {  // b(k=o, n=i) = W[o][i]: the stored block as is
#pragma unroll
        for (int nn = 0; nn < NF; ++nn) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, ws + kk * 16 * LDA + nn * 16, LDA);
#pragma unroll
          for (int m = 0; m < TC_WM; ++m) wmma::mma_sync(acc[m][nn], fa[m], fb, acc[m][nn]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

  float* Cs = reinterpret_cast<float*>(smem_raw);  // [TC_BM][LDC], reuses the stages
#pragma unroll
  for (int m = 0; m < TC_WM; ++m)
#pragma unroll
    for (int f = 0; f < NF; ++f)
      wmma::store_matrix_sync(Cs + (warp * TC_WM + m) * 16 * LDC + f * 16, acc[m][f], LDC, wmma::mem_row_major);
  __syncthreads();
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for (int e = tid; e < TC_BM * B; e += TC_WARPS * 32) {
    const int r = e / B, c = e % B;
    const int64_t t = t0 + r;
    if (t < p.T && c < n_lim) {
      float v = Cs[r * LDC + c];
      if (bias) v += to_float(bias[nb * B + c]);
      out[t * p.N + nb * B + c] = from_float<T>(v);
    }
  }
}

struct SddmmArgs {
  const void* g;  // grad_out [T, O], contiguous
  const void* x;  // x [T, I], contiguous
  void* out;      // [nnzb, B, B]
  const int32_t* row_idx;
  const int32_t* col_idx;
  int64_t T, O, I;
  bool g_vec, x_vec;
};

constexpr int SD_BT = 64, SD_WARPS = 4;

template <int B> constexpr int sd_frags_per_warp() {
  return (B / 16) * (B / 16) >= SD_WARPS ? (B / 16) * (B / 16) / SD_WARPS : 1;
}
// warps that split the tokens of one output fragment (4 for B = 16, else 1)
template <int B> constexpr int sd_ksplit() { return SD_WARPS * sd_frags_per_warp<B>() / ((B / 16) * (B / 16)); }
// two stages of (G tile + X tile), later reused for KS fp32 [B][B + 4] partial blocks
template <int B> constexpr int tc_sddmm_smem(int elem) {
  return cmax(4 * SD_BT * tc_lda<B>() * elem, sd_ksplit<B>() * B * (B + 4) * 4);
}

template <typename T, int B>
__global__ void __launch_bounds__(SD_WARPS * 32) sddmm_tc(SddmmArgs p) {
  constexpr int LDA = tc_lda<B>(), LDC = B + 4, NB = B / 16, CH = B / 8;
  constexpr int FPW = sd_frags_per_warp<B>(), KS = sd_ksplit<B>();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* Gs = reinterpret_cast<T*>(smem_raw);  // [2][SD_BT][LDA]
  T* Xs = Gs + 2 * SD_BT * LDA;            // [2][SD_BT][LDA]
  const T* g = static_cast<const T*>(p.g);
  const T* x = static_cast<const T*>(p.x);
  const int64_t k = blockIdx.x;
  const int64_t o0 = int64_t(p.row_idx[k]) * B, i0 = int64_t(p.col_idx[k]) * B;
  const int o_lim = int(min(int64_t(B), p.O - o0)), i_lim = int(min(int64_t(B), p.I - i0));
  const int tid = threadIdx.x, warp = tid / 32;
  const int fgroup = warp / KS, kslice = warp % KS;
  const int64_t n_tiles = (p.T + SD_BT - 1) / SD_BT;

  auto load_stage = [&](int stage, int64_t tile) {
    T* gs = Gs + stage * SD_BT * LDA;
    T* xs = Xs + stage * SD_BT * LDA;
    for (int c = tid; c < SD_BT * CH; c += SD_WARPS * 32) {
      const int r = c / CH, col = (c % CH) * 8;
      const int64_t t = tile * SD_BT + r;
      const int64_t ts = t < p.T ? t : 0;
      load_chunk8(gs + r * LDA + col, g + ts * p.O + o0 + col, t < p.T ? o_lim - col : 0, p.g_vec);
      load_chunk8(xs + r * LDA + col, x + ts * p.I + i0 + col, t < p.T ? i_lim - col : 0, p.x_vec);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FPW];
#pragma unroll
  for (int f = 0; f < FPW; ++f) wmma::fill_fragment(acc[f], 0.f);

  if (n_tiles > 0) load_stage(0, 0);
  cp_async_commit();
  for (int64_t s = 0; s < n_tiles; ++s) {
    if (s + 1 < n_tiles) load_stage((s + 1) & 1, s + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* gs = Gs + (s & 1) * SD_BT * LDA;
    const T* xs = Xs + (s & 1) * SD_BT * LDA;
#pragma unroll
    for (int ks = kslice; ks < SD_BT / 16; ks += KS) {
#pragma unroll
      for (int q = 0; q < FPW; ++q) {
        const int f = fgroup * FPW + q, fo = f / NB, fi = f % NB;
        // a(m=o, k=t) = G[t][o]: column-major view; b(k=t, n=i) = X[t][i]: row-major
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, gs + ks * 16 * LDA + fo * 16, LDA);
        wmma::load_matrix_sync(fb, xs + ks * 16 * LDA + fi * 16, LDA);
        wmma::mma_sync(acc[q], fa, fb, acc[q]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

  float* Cs = reinterpret_cast<float*>(smem_raw);  // [KS][B][LDC], reuses the stages
#pragma unroll
  for (int q = 0; q < FPW; ++q) {
    const int f = fgroup * FPW + q, fo = f / NB, fi = f % NB;
    wmma::store_matrix_sync(Cs + kslice * B * LDC + fo * 16 * LDC + fi * 16, acc[q], LDC, wmma::mem_row_major);
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out) + k * B * B;
  for (int e = tid; e < B * B; e += SD_WARPS * 32) {
    const int o = e / B, i = e % B;
    float v = 0.f;
#pragma unroll
    for (int s = 0; s < KS; ++s) v += Cs[s * B * LDC + o * LDC + i];
    out[e] = from_float<T>(v);  // zero in the padding: its inputs were zero-filled
  }
}

// ---- FMA register tiles (fp32/fp64), runtime B ------------------------------------------------
constexpr int FMA_THREADS = 256;

// 256 threads = (B/4 column groups) x (1024/B token groups); each thread TM tokens x 4 features.
template <typename T>
__global__ void __launch_bounds__(FMA_THREADS) gather_mm_fma(GatherArgs p, int B) {
  using A = typename Acc<T>::type;
  constexpr int TM = sizeof(T) == 8 ? 1 : 2;
  __shared__ T As[64 * TM * 17];  // [BM][B + 1], BM = TM * 1024 / B (largest for B = 16)
  __shared__ T Ws[64 * 64];       // [B (k)][B (n)]
  const int BM = TM * 1024 / B, LDA = B + 1, CG = B / 4;
  const T* a = static_cast<const T*>(p.a);
  const T* w = static_cast<const T*>(p.w);
  int64_t nb, tt;
  grouped_tile(blockIdx.x, p.n_blocks, p.n_tiles, &nb, &tt);
  const int64_t t0 = tt * BM;
  const int n_lim = int(min(int64_t(B), p.N - nb * B));
  const int tid = threadIdx.x, cg = tid % CG, tg = tid / CG;
  A acc[TM][4] = {};
  for (int32_t j = p.ptr[nb]; j < p.ptr[nb + 1]; ++j) {
    const int64_t kb = p.idx[j];
    const int64_t blk = p.perm ? p.perm[j] : j;
    const int k_lim = int(min(int64_t(B), p.K - kb * B));
    for (int e = tid; e < BM * B; e += FMA_THREADS) {
      const int r = e / B, c = e % B;
      const int64_t t = t0 + r;
      As[r * LDA + c] = (t < p.T && c < k_lim) ? a[t * p.K + kb * B + c] : T(0);
    }
    const int rows_lim = p.w_t ? n_lim : k_lim, cols_lim = p.w_t ? k_lim : n_lim;
    const T* wb = w + blk * B * B;
    for (int e = tid; e < B * B; e += FMA_THREADS) {
      const int r = e / B, c = e % B;
      const T v = (r < rows_lim && c < cols_lim) ? wb[e] : T(0);
      Ws[p.w_t ? c * B + r : e] = v;  // Ws[k][n]
    }
    __syncthreads();
    for (int kk = 0; kk < B; ++kk) {
      A av[TM], wv[4];
#pragma unroll
      for (int r = 0; r < TM; ++r) av[r] = A(As[(tg * TM + r) * LDA + kk]);
#pragma unroll
      for (int q = 0; q < 4; ++q) wv[q] = A(Ws[kk * B + cg * 4 + q]);
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * wv[q];
    }
    __syncthreads();
  }
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t t = t0 + tg * TM + r;
    if (t >= p.T) continue;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int c = cg * 4 + q;
      if (c < n_lim) out[t * p.N + nb * B + c] = T(acc[r][q] + (bias ? A(bias[nb * B + c]) : A(0)));
    }
  }
}

// (B/4)^2 threads cover a block with 4x4 tiles; the remaining factor KS = 256/(B/4)^2 splits tokens.
template <typename T>
__global__ void __launch_bounds__(FMA_THREADS) sddmm_fma(SddmmArgs p, int B) {
  using A = typename Acc<T>::type;
  constexpr int TC = 32;
  __shared__ T buf[2 * TC * 64];  // Gs [TC][B], Xs [TC][B]; then the KS partial blocks
  T* Gs = buf;
  T* Xs = buf + TC * B;
  const T* g = static_cast<const T*>(p.g);
  const T* x = static_cast<const T*>(p.x);
  const int64_t k = blockIdx.x;
  const int64_t o0 = int64_t(p.row_idx[k]) * B, i0 = int64_t(p.col_idx[k]) * B;
  const int o_lim = int(min(int64_t(B), p.O - o0)), i_lim = int(min(int64_t(B), p.I - i0));
  const int tid = threadIdx.x, G = B / 4, per = G * G, KS = FMA_THREADS / per;
  const int grp = tid / per, og = (tid % per) / G, ig = tid % G;
  A acc[4][4] = {};
  for (int64_t tb = 0; tb < p.T; tb += TC) {
    for (int e = tid; e < TC * B; e += FMA_THREADS) {
      const int r = e / B, c = e % B;
      const int64_t t = tb + r;
      Gs[e] = (t < p.T && c < o_lim) ? g[t * p.O + o0 + c] : T(0);
      Xs[e] = (t < p.T && c < i_lim) ? x[t * p.I + i0 + c] : T(0);
    }
    __syncthreads();
    for (int r = grp; r < TC; r += KS) {
      A gv[4], xv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        gv[q] = A(Gs[r * B + og * 4 + q]);
        xv[q] = A(Xs[r * B + ig * 4 + q]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[u][q] += gv[u] * xv[q];
    }
    __syncthreads();
  }
  // KS partial blocks -> buf (KS * B * B = 4096 entries), then sum
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int q = 0; q < 4; ++q) buf[grp * B * B + (og * 4 + u) * B + ig * 4 + q] = T(acc[u][q]);
  __syncthreads();
  T* out = static_cast<T*>(p.out) + k * B * B;
  for (int e = tid; e < B * B; e += FMA_THREADS) {
    A v = 0;
    for (int s = 0; s < KS; ++s) v += A(buf[s * B * B + e]);
    out[e] = T(v);
  }
}

// ---- host side --------------------------------------------------------------------------------
bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename K>
void set_smem(K kernel, int bytes) {
  if (bytes > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <typename S>
constexpr bool is_16bit() { return std::is_same_v<S, at::Half> || std::is_same_v<S, at::BFloat16>; }

template <typename S, int B>
void launch_gather_tc(GatherArgs p, cudaStream_t stream) {
  using T = typename Native<S>::type;
  p.n_tiles = (p.T + TC_BM - 1) / TC_BM;
  constexpr int smem = tc_gather_smem<B>(sizeof(T));
  set_smem(gather_mm_tc<T, B>, smem);
  gather_mm_tc<T, B><<<unsigned(p.n_tiles * p.n_blocks), TC_WARPS * 32, smem, stream>>>(p);
}

template <typename S, int B>
void launch_sddmm_tc(SddmmArgs p, int64_t nnzb, cudaStream_t stream) {
  using T = typename Native<S>::type;
  constexpr int smem = tc_sddmm_smem<B>(sizeof(T));
  set_smem(sddmm_tc<T, B>, smem);
  sddmm_tc<T, B><<<unsigned(nnzb), SD_WARPS * 32, smem, stream>>>(p);
}

template <typename S>
void launch_gather(GatherArgs p, int B, cudaStream_t stream) {
  if constexpr (is_16bit<S>()) {
    p.a_vec = p.a_vec && p.K % 8 == 0;
    switch (B) {
      case 16: return launch_gather_tc<S, 16>(p, stream);
      case 32: return launch_gather_tc<S, 32>(p, stream);
      default: return launch_gather_tc<S, 64>(p, stream);
    }
  } else {
    const int bm = (sizeof(S) == 8 ? 1 : 2) * 1024 / B;
    p.n_tiles = (p.T + bm - 1) / bm;
    gather_mm_fma<S><<<unsigned(p.n_tiles * p.n_blocks), FMA_THREADS, 0, stream>>>(p, B);
  }
}

template <typename S>
void launch_sddmm(SddmmArgs p, int B, int64_t nnzb, cudaStream_t stream) {
  if constexpr (is_16bit<S>()) {
    p.g_vec = p.g_vec && p.O % 8 == 0;
    p.x_vec = p.x_vec && p.I % 8 == 0;
    switch (B) {
      case 16: return launch_sddmm_tc<S, 16>(p, nnzb, stream);
      case 32: return launch_sddmm_tc<S, 32>(p, nnzb, stream);
      default: return launch_sddmm_tc<S, 64>(p, nnzb, stream);
    }
  } else {
    sddmm_fma<S><<<unsigned(nnzb), FMA_THREADS, 0, stream>>>(p, B);
  }
}

void check_block_size(const at::Tensor& values) {
  SPARSECL_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, B, B], got ",
                 values.sizes());
  const int64_t B = values.size(1);
  SPARSECL_CHECK(B == 16 || B == 32 || B == 64, "block size must be 16, 32 or 64, got ", B);
}

void run_gather(const at::Tensor& a, const at::Tensor& values, const at::Tensor& bias, at::Tensor& out,
                const at::Tensor& ptr, const at::Tensor& idx, const at::Tensor* perm, bool w_t) {
  const int64_t B = values.size(1);
  GatherArgs p{};
  p.a = a.data_ptr();
  p.w = values.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.ptr = ptr.data_ptr<int32_t>();
  p.idx = idx.data_ptr<int32_t>();
  p.perm = perm ? perm->data_ptr<int32_t>() : nullptr;
  p.T = a.size(0);
  p.K = a.size(1);
  p.N = out.size(1);
  p.n_blocks = ptr.size(0) - 1;
  p.w_t = w_t;
  p.a_vec = aligned16(p.a);
  p.w_vec = aligned16(p.w);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "bsr_linear_gather_cuda",
                                  [&] { launch_gather<scalar_t>(p, int(B), stream); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bsr_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", true);
  SPARSECL_CHECK(values.scalar_type() == x.scalar_type(), "values dtype ", values.scalar_type(), " != x dtype ",
                 x.scalar_type());
  check_same_device(values, "values", x);
  check_block_size(values);
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(out_features >= 0, "out_features must be >= 0");
  const int64_t B = values.size(1);
  const int64_t n_rb = (out_features + B - 1) / B;
  SPARSECL_CHECK(row_ptr.size(0) == n_rb + 1, "row_ptr must have ", n_rb + 1, " entries, got ", row_ptr.size(0));
  SPARSECL_CHECK(col_idx.size(0) == values.size(0), "col_idx has ", col_idx.size(0), " entries but values has ",
                 values.size(0), " blocks");
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [", out_features, "], got ",
                   bias->sizes());
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype must match x");
    check_same_device(*bias, "bias", x);
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({x.size(0), out_features}, x.options());
  if (y.numel() == 0) return y;
  run_gather(xc, vc, bc, y, row_ptr, col_idx, nullptr, true);
  return y;
}

at::Tensor bsr_linear_dx_cuda(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                              const at::Tensor& t_col_idx, const at::Tensor& t_perm, int64_t in_features) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", true);
  SPARSECL_CHECK(values.scalar_type() == dy.scalar_type(), "values dtype must match grad_out");
  check_same_device(values, "values", dy);
  check_block_size(values);
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  SPARSECL_CHECK(in_features >= 0, "in_features must be >= 0");
  const int64_t B = values.size(1);
  const int64_t n_cb = (in_features + B - 1) / B;
  SPARSECL_CHECK(t_row_ptr.size(0) == n_cb + 1, "t_row_ptr must have ", n_cb + 1, " entries, got ", t_row_ptr.size(0));
  SPARSECL_CHECK(t_col_idx.size(0) == values.size(0) && t_perm.size(0) == values.size(0),
                 "t_col_idx and t_perm must have nnzb=", values.size(0), " entries");
  c10::cuda::CUDAGuard guard(dy.device());
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty({dy.size(0), in_features}, dy.options());
  if (dx.numel() == 0) return dx;
  run_gather(gc, vc, at::Tensor(), dx, t_row_ptr, t_col_idx, &t_perm, false);
  return dx;
}

at::Tensor bsr_linear_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                              const at::Tensor& col_idx, int64_t block_size) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", true);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_same_device(dy, "grad_out", x);
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
  SPARSECL_CHECK(block_size == 16 || block_size == 32 || block_size == 64, "block_size must be 16, 32 or 64, got ",
                 block_size);
  c10::cuda::CUDAGuard guard(x.device());
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  const int64_t nnzb = col_idx.size(0);
  auto dv = at::empty({nnzb, block_size, block_size}, x.options());
  if (nnzb == 0) return dv;
  SddmmArgs p{};
  p.g = gc.data_ptr();
  p.x = xc.data_ptr();
  p.out = dv.data_ptr();
  p.row_idx = row_idx.data_ptr<int32_t>();
  p.col_idx = col_idx.data_ptr<int32_t>();
  p.T = x.size(0);
  p.O = dy.size(1);
  p.I = x.size(1);
  p.g_vec = aligned16(p.g);
  p.x_vec = aligned16(p.x);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bsr_linear_dw_cuda",
                                  [&] { launch_sddmm<scalar_t>(p, int(block_size), nnzb, stream); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) {
  m.impl("bsr_linear", &bsr_linear_cuda);
  m.impl("bsr_linear_dx", &bsr_linear_dx_cuda);
  m.impl("bsr_linear_dw", &bsr_linear_dw_cuda);
}

}  // namespace sparsecl
