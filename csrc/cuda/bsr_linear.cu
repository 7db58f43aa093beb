// Block-sparse linear on CUDA: forward, dX through the transposed index, and dValues (SDDMM at
// active blocks). fp32/fp64/fp16/bf16 inputs, accumulation in fp32 (fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"

namespace sparsecl {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// One thread per output element y[t, o]; block row rb = blockIdx.y.
template <typename T>
__global__ void forward_naive(const T* __restrict__ x, int64_t n_tokens, int64_t in_f, const T* __restrict__ values,
                              int B, const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ col_idx,
                              int64_t out_f, const T* __restrict__ bias, T* __restrict__ y) {
  using A = typename Acc<T>::type;
  const int64_t rb = blockIdx.y;
  const int o = threadIdx.x;
  const int64_t t = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  const int64_t og = rb * B + o;
  if (t >= n_tokens || og >= out_f) return;
  A acc = bias ? A(bias[og]) : A(0);
  for (int32_t k = row_ptr[rb]; k < row_ptr[rb + 1]; ++k) {
    const int64_t i0 = int64_t(col_idx[k]) * B;
    const int ib = int(min(int64_t(B), in_f - i0));
    const T* v = values + int64_t(k) * B * B + int64_t(o) * B;
    const T* xr = x + t * in_f + i0;
    for (int i = 0; i < ib; ++i) acc += A(xr[i]) * A(v[i]);
  }
  y[t * out_f + og] = T(acc);
}

template <typename T>
__global__ void dx_naive(const T* __restrict__ dy, int64_t n_tokens, int64_t out_f, const T* __restrict__ values,
                         int B, const int32_t* __restrict__ t_row_ptr, const int32_t* __restrict__ t_col_idx,
                         const int32_t* __restrict__ t_perm, int64_t in_f, T* __restrict__ dx) {
  using A = typename Acc<T>::type;
  const int64_t cb = blockIdx.y;
  const int i = threadIdx.x;
  const int64_t t = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  const int64_t ig = cb * B + i;
  if (t >= n_tokens || ig >= in_f) return;
  A acc = 0;
  for (int32_t j = t_row_ptr[cb]; j < t_row_ptr[cb + 1]; ++j) {
    const int64_t o0 = int64_t(t_col_idx[j]) * B;
    const int ob = int(min(int64_t(B), out_f - o0));
    const T* v = values + int64_t(t_perm[j]) * B * B + i;
    const T* g = dy + t * out_f + o0;
    for (int o = 0; o < ob; ++o) acc += A(g[o]) * A(v[int64_t(o) * B]);
  }
  dx[t * in_f + ig] = T(acc);
}

template <typename T>
__global__ void dw_naive(const T* __restrict__ dy, const T* __restrict__ x, int64_t n_tokens, int64_t out_f,
                         int64_t in_f, int B, const int32_t* __restrict__ row_idx, const int32_t* __restrict__ col_idx,
                         T* __restrict__ dv) {
  using A = typename Acc<T>::type;
  const int64_t k = blockIdx.x;
  const int64_t o0 = int64_t(row_idx[k]) * B, i0 = int64_t(col_idx[k]) * B;
  for (int e = threadIdx.x; e < B * B; e += blockDim.x) {
    const int o = e / B, i = e % B;
    A acc = 0;
    if (o0 + o < out_f && i0 + i < in_f)
      for (int64_t t = 0; t < n_tokens; ++t) acc += A(dy[t * out_f + o0 + o]) * A(x[t * in_f + i0 + i]);
    dv[k * B * B + e] = T(acc);
  }
}

dim3 token_grid(int64_t n_tokens, int64_t blocks_y, int B, dim3* threads) {
  const int rows = std::max(1, 256 / B);
  *threads = dim3(B, rows);
  return dim3(unsigned((n_tokens + rows - 1) / rows), unsigned(blocks_y));
}

at::Tensor bsr_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", true);
  TORCH_CHECK(values.scalar_type() == x.scalar_type(), "values dtype must match x");
  check_same_device(values, "values", x);
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, B, B]");
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  const int64_t B = values.size(1);
  const int64_t n_rb = (out_features + B - 1) / B;
  TORCH_CHECK(row_ptr.size(0) == n_rb + 1, "row_ptr must have ", n_rb + 1, " entries");
  TORCH_CHECK(col_idx.size(0) == values.size(0), "col_idx must have nnzb entries");
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [out_features]");
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype must match x");
    check_same_device(*bias, "bias", x);
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({x.size(0), out_features}, x.options());
  if (y.numel() == 0) return y;
  dim3 threads;
  dim3 grid = token_grid(x.size(0), n_rb, int(B), &threads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bsr_linear_cuda", [&] {
    forward_naive<scalar_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<scalar_t>(), x.size(0), x.size(1), vc.data_ptr<scalar_t>(), int(B), row_ptr.data_ptr<int32_t>(),
        col_idx.data_ptr<int32_t>(), out_features, bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor bsr_linear_dx_cuda(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                              const at::Tensor& t_col_idx, const at::Tensor& t_perm, int64_t in_features) {
  TORCH_CHECK(dy.dim() == 2, "grad_out must be 2-D, got ", dy.sizes());
  check_float(dy, "grad_out", true);
  TORCH_CHECK(values.scalar_type() == dy.scalar_type(), "values dtype must match grad_out");
  check_same_device(values, "values", dy);
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  const int64_t B = values.size(1);
  const int64_t n_cb = (in_features + B - 1) / B;
  TORCH_CHECK(t_row_ptr.size(0) == n_cb + 1, "t_row_ptr must have ", n_cb + 1, " entries");
  c10::cuda::CUDAGuard guard(dy.device());
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty({dy.size(0), in_features}, dy.options());
  if (dx.numel() == 0) return dx;
  dim3 threads;
  dim3 grid = token_grid(dy.size(0), n_cb, int(B), &threads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "bsr_linear_dx_cuda", [&] {
    dx_naive<scalar_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gc.data_ptr<scalar_t>(), dy.size(0), dy.size(1), vc.data_ptr<scalar_t>(), int(B),
        t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), in_features,
        dx.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

at::Tensor bsr_linear_dw_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                              const at::Tensor& col_idx, int64_t block_size) {
  TORCH_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0), "grad_out and x must be 2-D with equal T");
  check_float(x, "x", true);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_same_device(dy, "grad_out", x);
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  TORCH_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
  TORCH_CHECK(block_size > 0, "block_size must be positive");
  c10::cuda::CUDAGuard guard(x.device());
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  auto dv = at::empty({col_idx.size(0), block_size, block_size}, x.options());
  if (dv.numel() == 0) return dv;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bsr_linear_dw_cuda", [&] {
    dw_naive<scalar_t><<<unsigned(col_idx.size(0)), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), x.size(0), dy.size(1), x.size(1), int(block_size),
        row_idx.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), dv.data_ptr<scalar_t>());
  });
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
