// Unstructured CSR linear on CUDA: forward SpMM, dX through the transposed index, dValues (SDDMM at
// the nonzeros). fp32/fp64/fp16/bf16 inputs, accumulation in fp32 (fp64 for fp64).
//
// SpMM (forward and dX share one kernel pair; dX passes t_perm to find each value):
//  * skinny T (<= 32 tokens, decode-like): SpMV-like, one warp per output row; lanes split the row's
//    nonzeros, each lane gathers a contiguous token vector of x^T [in, T] per nonzero, then a warp
//    reduction. Memory-bound on values + col_idx, like SpMV.
//  * wide T: a block owns 8*RPW output rows and a tile of 128 tokens; it stages x[tile, k-chunk]
//    (transposed, as the accumulation type) in shared memory once and every warp walks its rows'
//    nonzeros in that chunk with per-row cursors (col_idx must be sorted within a row, as CSRLayout
//    guarantees), so x is read from global memory once per 8*RPW rows instead of once per nonzero.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <cstring>

#include "checks.h"

namespace sparsecl {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

constexpr unsigned kFull = 0xffffffffu;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Load TT consecutive elements of aT; VEC: n_tokens == TT and 16-byte aligned rows, so whole uint4 vectors.
template <typename T, int TT, bool VEC>
__device__ __forceinline__ void load_tokens(const T* col, int tn, T (&v)[TT]) {
  if constexpr (VEC) {
    static_assert((TT * sizeof(T)) % 16 == 0, "vector path needs whole 16-byte vectors");
    const uint4* p = reinterpret_cast<const uint4*>(col);
    uint4 buf[TT * sizeof(T) / 16];
#pragma unroll
    for (int i = 0; i < int(TT * sizeof(T) / 16); ++i) buf[i] = __ldg(p + i);
    memcpy(v, buf, sizeof(v));
  } else {
#pragma unroll
    for (int q = 0; q < TT; ++q) v[q] = q < tn ? col[q] : T(0);
  }
}

// out[t, r] = bias[r] + sum_j aT[idx[j], t] * v[perm[j] or j]; one warp per row r, TT tokens per pass.
template <typename T, int TT, bool VEC>
__global__ void spmm_skinny(const T* __restrict__ aT, int64_t n_tokens, const T* __restrict__ values,
                            const int32_t* __restrict__ ptr, const int32_t* __restrict__ idx,
                            const int32_t* __restrict__ perm, int64_t n_rows, const T* __restrict__ bias,
                            T* __restrict__ out) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= n_rows) return;
  const int64_t t0 = int64_t(blockIdx.y) * TT;
  const int tn = int(min(int64_t(TT), n_tokens - t0));
  A acc[TT];
#pragma unroll
  for (int q = 0; q < TT; ++q) acc[q] = A(0);
  const int32_t end = ptr[r + 1];
  for (int32_t j = ptr[r] + lane; j < end; j += 32) {
    const A v = A(values[perm ? perm[j] : j]);
    T xs[TT];
    load_tokens<T, TT, VEC>(aT + int64_t(idx[j]) * n_tokens + t0, tn, xs);
#pragma unroll
    for (int q = 0; q < TT; ++q) acc[q] += v * A(xs[q]);
  }
  const A b = bias ? A(bias[r]) : A(0);
  A mine = A(0);
#pragma unroll
  for (int q = 0; q < TT; ++q) {
    const A s = warp_sum(acc[q]);
    if (lane == q) mine = s;
  }
  if (lane < tn) out[(t0 + lane) * n_rows + r] = T(mine + b);
}

constexpr int kWideThreads = 256;  // 8 warps
constexpr int kBT = 128;           // tokens per block: 4 per lane, strided by 32 (conflict-free smem reads)
constexpr int kTPL = kBT / 32;

template <typename T> struct WideCfg { static constexpr int RPW = 8, KC = 64; };
template <> struct WideCfg<double> { static constexpr int RPW = 4, KC = 32; };

// out[t, r] = bias[r] + sum_j a[t, idx[j]] * v[perm[j] or j]; a is row-major [T, K].
template <typename T>
__global__ void __launch_bounds__(kWideThreads) spmm_wide(
    const T* __restrict__ a, int64_t n_tokens, int64_t k_feat, const T* __restrict__ values,
    const int32_t* __restrict__ ptr, const int32_t* __restrict__ idx, const int32_t* __restrict__ perm,
    int64_t n_rows, const T* __restrict__ bias, T* __restrict__ out) {
  using A = typename Acc<T>::type;
  constexpr int RPW = WideCfg<T>::RPW, KC = WideCfg<T>::KC, ROWS = 8 * RPW;
  constexpr int PITCH = kBT + 1;
  constexpr int SMEM_ROWS = KC > ROWS ? KC : ROWS;
  __shared__ A sx[SMEM_ROWS * PITCH];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t t0 = int64_t(blockIdx.y) * kBT;
  const int64_t row0 = int64_t(blockIdx.x) * ROWS;
  const int tn = int(min(int64_t(kBT), n_tokens - t0));

  A acc[RPW][kTPL];
  int32_t cur[RPW], rend[RPW];
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    const int64_t r = row0 + warp * RPW + rr;
    cur[rr] = r < n_rows ? ptr[r] : 0;
    rend[rr] = r < n_rows ? ptr[r + 1] : 0;
#pragma unroll
    for (int q = 0; q < kTPL; ++q) acc[rr][q] = A(0);
  }
  for (int64_t k0 = 0; k0 < k_feat; k0 += KC) {
    const int kn = int(min(int64_t(KC), k_feat - k0));
    __syncthreads();
    for (int e = tid; e < kBT * KC; e += kWideThreads) {  // k fastest: coalesced global reads
      const int tt = e / KC, kk = e % KC;
      sx[kk * PITCH + tt] = (tt < tn && kk < kn) ? A(a[(t0 + tt) * k_feat + k0 + kk]) : A(0);
    }
    __syncthreads();
    const int64_t k_end = k0 + kn;
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      int32_t c_cur = cur[rr];
      while (c_cur < rend[rr]) {
        const int32_t j = c_cur + lane;
        const int32_t c = j < rend[rr] ? idx[j] : INT_MAX;
        const bool ok = c < k_end;
        const A v = ok ? A(values[perm ? perm[j] : j]) : A(0);
        const int n = __popc(__ballot_sync(kFull, ok));  // sorted columns: the in-chunk ones are a prefix
        for (int i = 0; i < n; ++i) {
          const int ci = __shfl_sync(kFull, c, i) - int(k0);
          const A vi = __shfl_sync(kFull, v, i);
          const A* xs = sx + ci * PITCH + lane;
#pragma unroll
          for (int q = 0; q < kTPL; ++q) acc[rr][q] += vi * xs[32 * q];
        }
        c_cur += n;
        if (n < 32) break;
      }
      cur[rr] = c_cur;
    }
  }
  // epilogue through shared memory so the [tokens, rows] stores are coalesced along rows
  __syncthreads();
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr)
#pragma unroll
    for (int q = 0; q < kTPL; ++q) sx[(warp * RPW + rr) * PITCH + lane + 32 * q] = acc[rr][q];
  __syncthreads();
  const int rn = int(min(int64_t(ROWS), n_rows - row0));
  for (int e = tid; e < kBT * ROWS; e += kWideThreads) {
    const int tt = e / ROWS, rr = e % ROWS;
    if (tt < tn && rr < rn)
      out[(t0 + tt) * n_rows + row0 + rr] = T(sx[rr * PITCH + tt] + (bias ? A(bias[row0 + rr]) : A(0)));
  }
}

// dv[j] = sum_t gT[row[j], t] * xT[col[j], t]; one warp per nonzero, lanes over tokens.
template <typename T>
__global__ void sddmm_warp(const T* __restrict__ gT, const T* __restrict__ xT, int64_t n_tokens,
                           const int32_t* __restrict__ row_idx, const int32_t* __restrict__ col_idx, int64_t nnz,
                           T* __restrict__ dv) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t j = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (j >= nnz) return;
  const T* g = gT + int64_t(row_idx[j]) * n_tokens;
  const T* x = xT + int64_t(col_idx[j]) * n_tokens;
  A acc = A(0);
  for (int64_t t = lane; t < n_tokens; t += 32) acc += A(g[t]) * A(x[t]);
  acc = warp_sum(acc);
  if (lane == 0) dv[j] = T(acc);
}

void launch_spmm(const at::Tensor& a, const at::Tensor& values, const at::Tensor& ptr, const at::Tensor& idx,
                 const at::Tensor* perm, const at::Tensor* bias, at::Tensor& out) {
  const int64_t T_ = a.size(0), K = a.size(1), N = out.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "csr_spmm_cuda", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    const int32_t* pp = perm ? perm->data_ptr<int32_t>() : nullptr;
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    if (T_ <= 32) {
      auto aT = a.t().contiguous();
      const scalar_t* ap = aT.data_ptr<scalar_t>();
      const int32_t *rp = ptr.data_ptr<int32_t>(), *ip = idx.data_ptr<int32_t>();
      const bool aligned = reinterpret_cast<uintptr_t>(ap) % 16 == 0;
      const unsigned gx = unsigned((N + 7) / 8);
      if (T_ == 16 && aligned) {
        spmm_skinny<scalar_t, 16, true><<<gx, 256, 0, stream>>>(ap, T_, v, rp, ip, pp, N, b, o);
      } else {
        spmm_skinny<scalar_t, 16, false><<<dim3(gx, unsigned((T_ + 15) / 16)), 256, 0, stream>>>(ap, T_, v, rp, ip,
                                                                                                pp, N, b, o);
      }
    } else {
      auto ac = a.contiguous();
      constexpr int ROWS = 8 * WideCfg<scalar_t>::RPW;
      const dim3 grid(unsigned((N + ROWS - 1) / ROWS), unsigned((T_ + kBT - 1) / kBT));
      spmm_wide<scalar_t><<<grid, kWideThreads, 0, stream>>>(ac.data_ptr<scalar_t>(), T_, K, v,
                                                             ptr.data_ptr<int32_t>(), idx.data_ptr<int32_t>(), pp,
                                                             N, b, o);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_values(const at::Tensor& values, const at::Tensor& like, const char* like_name) {
  SPARSECL_CHECK(values.dim() == 1, "values must be 1-D [nnz], got shape ", values.sizes());
  SPARSECL_CHECK(values.scalar_type() == like.scalar_type(), "values dtype ", values.scalar_type(), " must match ",
                 like_name, " dtype ", like.scalar_type());
  check_same_device(values, "values", like);
}

at::Tensor csr_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", true);
  check_values(values, x, "x");
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(out_features >= 0, "out_features must be >= 0");
  SPARSECL_CHECK(row_ptr.size(0) == out_features + 1, "row_ptr must have out_features + 1 = ", out_features + 1,
                 " entries, got ", row_ptr.size(0));
  SPARSECL_CHECK(col_idx.size(0) == values.size(0), "col_idx must have nnz = ", values.size(0), " entries, got ",
                 col_idx.size(0));
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [out_features]");
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype must match x");
    check_same_device(*bias, "bias", x);
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({x.size(0), out_features}, x.options());
  if (y.numel() == 0) return y;
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  launch_spmm(x, vc, row_ptr, col_idx, nullptr, bias ? &bc : nullptr, y);
  return y;
}

at::Tensor csr_linear_dx_cuda(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                              const at::Tensor& t_col_idx, const at::Tensor& t_perm, int64_t in_features) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", true);
  check_values(values, dy, "grad_out");
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  SPARSECL_CHECK(in_features >= 0, "in_features must be >= 0");
  SPARSECL_CHECK(t_row_ptr.size(0) == in_features + 1, "t_row_ptr must have in_features + 1 = ", in_features + 1,
                 " entries, got ", t_row_ptr.size(0));
  SPARSECL_CHECK(t_col_idx.size(0) == values.size(0) && t_perm.size(0) == values.size(0),
                 "t_col_idx and t_perm must have nnz = ", values.size(0), " entries");
  c10::cuda::CUDAGuard guard(dy.device());
  auto dx = at::empty({dy.size(0), in_features}, dy.options());
  if (dx.numel() == 0) return dx;
  auto vc = values.contiguous();
  launch_spmm(dy, vc, t_row_ptr, t_col_idx, &t_perm, nullptr, dx);
  return dx;
}

at::Tensor csr_linear_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                              const at::Tensor& col_idx) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", true);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_same_device(dy, "grad_out", x);
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t nnz = col_idx.size(0);
  if (nnz == 0 || x.size(0) == 0) return at::zeros({nnz}, x.options());
  auto dv = at::empty({nnz}, x.options());
  auto gT = dy.t().contiguous();
  auto xT = x.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "csr_linear_dw_cuda", [&] {
    sddmm_warp<scalar_t><<<unsigned((nnz + 7) / 8), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        gT.data_ptr<scalar_t>(), xT.data_ptr<scalar_t>(), x.size(0), row_idx.data_ptr<int32_t>(),
        col_idx.data_ptr<int32_t>(), nnz, dv.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) {
  m.impl("csr_linear", &csr_linear_cuda);
  m.impl("csr_linear_dx", &csr_linear_dx_cuda);
  m.impl("csr_linear_dw", &csr_linear_dw_cuda);
}

}  // namespace sparsecl
