// Masked linear on CUDA: y = x @ (W*M).T + b, dX = dY @ (W*M), dW = (dY.T @ x) * G.
// One strided tiled GEMM  C[m, n] = sum_k A[m, k] * B[k, n]  serves all three (see masked_linear.py):
// the bool mask of B is applied while a weight tile is copied into shared memory, so weight*mask is
// never written to global memory, and the C mask zeroes the epilogue (dW is exactly 0 outside G).
// fp16/bf16: tensor cores through WMMA 16x16x16 with fp32 accumulation; fp32/fp64: FMA register tiles.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <type_traits>

#include "checks.h"

namespace sparsecl {
namespace {

struct Mat {  // a strided 2-D operand
  const void* p;
  int64_t s0, s1;
};
struct MaskMat {
  const bool* p;  // nullptr: no mask
  int64_t s0, s1;
};

constexpr int BM = 64, BN = 64, BK = 32, kThreads = 128;

// Copy the R x C tile at (r0, c0) of `src` into shared `dst` (pitch P), zero outside [rows, cols] and
// where `mask` is false. The loop walks the dimension with unit stride fastest so global reads coalesce.
template <typename T, int R, int C, int P>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t s0, int64_t s1, MaskMat mask, int64_t r0,
                                          int64_t c0, int64_t rows, int64_t cols) {
  const bool c_fast = s1 == 1 || s0 != 1;
  for (int e = threadIdx.x; e < R * C; e += kThreads) {
    const int r = c_fast ? e / C : e % R;
    const int c = c_fast ? e % C : e / R;
    const int64_t gr = r0 + r, gc = c0 + c;
    T v = T(0.0f);
    if (gr < rows && gc < cols && (!mask.p || mask.p[gr * mask.s0 + gc * mask.s1])) v = src[gr * s0 + gc * s1];
    dst[r * P + c] = v;
  }
}

template <typename A, typename T>
__device__ __forceinline__ void store_tile(const A* cs, int P, T* c, int64_t sc0, int64_t sc1, MaskMat cmask,
                                           const T* bias, int64_t m0, int64_t n0, int64_t M, int64_t N) {
  for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
    const int r = e / BN, cc = e % BN;
    const int64_t gm = m0 + r, gn = n0 + cc;
    if (gm >= M || gn >= N) continue;
    A v = cs[r * P + cc];
    if (bias) v += A(bias[gn]);
    if (cmask.p && !cmask.p[gm * cmask.s0 + gn * cmask.s1]) v = A(0);
    c[gm * sc0 + gn * sc1] = T(v);
  }
}

template <typename T> struct Wmma;
template <> struct Wmma<at::Half> { using type = __half; };
template <> struct Wmma<at::BFloat16> { using type = __nv_bfloat16; };

// fp16/bf16: 4 warps, each a 32x32 quarter of the 64x64 tile (2x2 WMMA fragments), fp32 accumulators.
template <typename T>
__global__ void __launch_bounds__(kThreads) masked_mm_wmma(Mat a, Mat b, MaskMat bmask, MaskMat cmask,
                                                            const T* __restrict__ bias, T* __restrict__ c, int64_t sc0,
                                                            int64_t sc1, int64_t M, int64_t N, int64_t K) {
  using namespace nvcuda;
  using W = typename Wmma<T>::type;
  constexpr int PA = BK + 8, PB = BN + 8, PC = BN + 4;
  __shared__ __align__(32) unsigned char smem[(BM * PA + BK * PB) * sizeof(W) > BM * PC * sizeof(float)
                                                  ? (BM * PA + BK * PB) * sizeof(W)
                                                  : BM * PC * sizeof(float)];
  T* as = reinterpret_cast<T*>(smem);  // c10 types in shared memory; WMMA reads them as W (same bits)
  T* bs = as + BM * PA;
  const W* as_w = reinterpret_cast<const W*>(as);
  const W* bs_w = reinterpret_cast<const W*>(bs);
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    __syncthreads();
    load_tile<T, BM, BK, PA>(as, static_cast<const T*>(a.p), a.s0, a.s1, MaskMat{nullptr, 0, 0}, m0, k0, M, K);
    load_tile<T, BK, BN, PB>(bs, static_cast<const T*>(b.p), b.s0, b.s1, bmask, k0, n0, K, N);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as_w + (wm * 32 + i * 16) * PA + kk, PA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs_w + kk * PB + wn * 32 + j * 16, PB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  __syncthreads();
  float* cs = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(cs + (wm * 32 + i * 16) * PC + wn * 32 + j * 16, acc[i][j], PC, wmma::mem_row_major);
  __syncthreads();
  store_tile<float, T>(cs, PC, c, sc0, sc1, cmask, bias, m0, n0, M, N);
}

// fp32/fp64: 128 threads, each a 4x8 register tile of the 64x64 block tile (accumulation in A).
template <typename T>
__global__ void __launch_bounds__(kThreads) masked_mm_fma(Mat a, Mat b, MaskMat bmask, MaskMat cmask,
                                                           const T* __restrict__ bias, T* __restrict__ c, int64_t sc0,
                                                           int64_t sc1, int64_t M, int64_t N, int64_t K) {
  using A = T;  // float or double
  constexpr int PA = BM + 1, PB = BN;
  __shared__ A as_t[BK * PA];  // A tile stored k-major: as_t[k][m]
  __shared__ A bs[BK * PB];
  const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;  // 8 column groups x 16 row groups
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  A acc[4][8] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    __syncthreads();
    // transpose A into as_t through load_tile's strided view: rows = k, cols = m
    load_tile<T, BK, BM, PA>(as_t, static_cast<const T*>(a.p), a.s1, a.s0, MaskMat{nullptr, 0, 0}, k0, m0, K, M);
    load_tile<T, BK, BN, PB>(bs, static_cast<const T*>(b.p), b.s0, b.s1, bmask, k0, n0, K, N);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < BK; ++k) {
      A av[4], bv[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as_t[k * PA + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 8; ++j) bv[j] = bs[k * PB + tx + 8 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] += av[i] * bv[j];
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t gn = n0 + tx + 8 * j;
      if (gn >= N) continue;
      A v = acc[i][j];
      if (bias) v += A(bias[gn]);
      if (cmask.p && !cmask.p[gm * cmask.s0 + gn * cmask.s1]) v = A(0);
      c[gm * sc0 + gn * sc1] = T(v);
    }
  }
}

template <typename T>
void launch_mm(dim3 grid, cudaStream_t stream, Mat a, Mat b, MaskMat bm, MaskMat cm, const T* bias, T* c, int64_t sc0,
               int64_t sc1, int64_t M, int64_t N, int64_t K) {
  if constexpr (std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>) {
    masked_mm_wmma<T><<<grid, kThreads, 0, stream>>>(a, b, bm, cm, bias, c, sc0, sc1, M, N, K);
  } else {
    masked_mm_fma<T><<<grid, kThreads, 0, stream>>>(a, b, bm, cm, bias, c, sc0, sc1, M, N, K);
  }
}

// c [M, N] (strided) = a @ where(bmask, b, 0) (+ bias), zeroed outside cmask.
void masked_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor* bmask, const at::Tensor* cmask,
               const at::Tensor* bias, at::Tensor& c) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const dim3 grid(unsigned((N + BN - 1) / BN), unsigned((M + BM - 1) / BM));
  SPARSECL_CHECK(grid.y <= 65535, "too many rows for one launch: ", M);
  auto stream = at::cuda::getCurrentCUDAStream();
  const MaskMat bm = bmask ? MaskMat{bmask->data_ptr<bool>(), bmask->stride(0), bmask->stride(1)} : MaskMat{nullptr, 0, 0};
  const MaskMat cm = cmask ? MaskMat{cmask->data_ptr<bool>(), cmask->stride(0), cmask->stride(1)} : MaskMat{nullptr, 0, 0};
  const Mat am{a.data_ptr(), a.stride(0), a.stride(1)}, bmat{b.data_ptr(), b.stride(0), b.stride(1)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "masked_mm_cuda", [&] {
    launch_mm<scalar_t>(grid, stream, am, bmat, bm, cm, bias ? bias->data_ptr<scalar_t>() : nullptr,
                        c.data_ptr<scalar_t>(), c.stride(0), c.stride(1), M, N, K);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_weight_mask(const at::Tensor& w, const at::Tensor& mask, const at::Tensor& like, const char* mask_name) {
  SPARSECL_CHECK(w.dim() == 2, "weight must be 2-D [out, in], got ", w.sizes());
  SPARSECL_CHECK(w.scalar_type() == like.scalar_type(), "weight dtype ", w.scalar_type(), " must match ",
                 like.scalar_type());
  check_same_device(w, "weight", like);
  SPARSECL_CHECK(mask.scalar_type() == at::kBool, mask_name, " must be bool, got ", mask.scalar_type());
  SPARSECL_CHECK(mask.sizes() == w.sizes(), mask_name, " shape ", mask.sizes(), " must equal weight shape ", w.sizes());
  check_same_device(mask, mask_name, like);
}

at::Tensor masked_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", true);
  check_weight_mask(weight, mask, x, "mask");
  SPARSECL_CHECK(x.size(1) == weight.size(1), "x has ", x.size(1), " input features but weight expects ",
                 weight.size(1));
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be [out_features]");
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype must match x");
    check_same_device(*bias, "bias", x);
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({x.size(0), weight.size(0)}, x.options());
  if (y.numel() == 0) return y;
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto wt = weight.t();
  auto mt = mask.t();
  masked_mm(x, wt, &mt, nullptr, bias ? &bc : nullptr, y);
  return y;
}

at::Tensor masked_linear_dx_cuda(const at::Tensor& dy, const at::Tensor& weight, const at::Tensor& mask) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", true);
  check_weight_mask(weight, mask, dy, "mask");
  SPARSECL_CHECK(dy.size(1) == weight.size(0), "grad_out has ", dy.size(1), " features but weight has ",
                 weight.size(0), " outputs");
  c10::cuda::CUDAGuard guard(dy.device());
  auto dx = at::empty({dy.size(0), weight.size(1)}, dy.options());
  if (dx.numel() == 0) return dx;
  masked_mm(dy, weight, &mask, nullptr, nullptr, dx);
  return dx;
}

at::Tensor masked_linear_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& grad_mask) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", true);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_same_device(dy, "grad_out", x);
  SPARSECL_CHECK(grad_mask.scalar_type() == at::kBool, "grad_mask must be bool, got ", grad_mask.scalar_type());
  SPARSECL_CHECK(grad_mask.dim() == 2 && grad_mask.size(0) == dy.size(1) && grad_mask.size(1) == x.size(1),
                 "grad_mask must be [out, in] = [", dy.size(1), ", ", x.size(1), "], got ", grad_mask.sizes());
  check_same_device(grad_mask, "grad_mask", x);
  c10::cuda::CUDAGuard guard(x.device());
  auto dw = at::empty({dy.size(1), x.size(1)}, x.options());
  if (dw.numel() == 0) return dw;
  auto dyt = dy.t();
  masked_mm(dyt, x, nullptr, &grad_mask, nullptr, dw);
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) {
  m.impl("masked_linear", &masked_linear_cuda);
  m.impl("masked_linear_dx", &masked_linear_dx_cuda);
  m.impl("masked_linear_dw", &masked_linear_dw_cuda);
}

}  // namespace sparsecl
