// Slimmable linear / conv2d on CUDA: the ATen implementation of cpu/slimmable.cpp (cuBLAS GEMMs on
// strided W[:o, :i] views with the full weight's row stride as leading dimension, in-place slice
// gradients, shared blocks for the multi-width call) registered for CUDA tensors. The Triton
// kernels (kernels/slimmable.py, backend "triton") do the multi-width call in one launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cpu/slimmable.h"

namespace sparsecl {
namespace {

at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                       const c10::optional<at::Tensor>& m, int64_t o) {
  c10::cuda::CUDAGuard guard(x.device());
  return slim::linear(x, w, b, m, o, true);
}
at::Tensor linear_dx_cuda(const at::Tensor& g, const at::Tensor& w, const c10::optional<at::Tensor>& m, int64_t i) {
  c10::cuda::CUDAGuard guard(g.device());
  return slim::linear_dx(g, w, m, i, true);
}
void linear_dw_cuda(const at::Tensor& g, const at::Tensor& x, const c10::optional<at::Tensor>& m,
                    const at::Tensor& gw) {
  c10::cuda::CUDAGuard guard(x.device());
  slim::linear_dw_(g, x, m, gw, true);
}
std::vector<at::Tensor> multi_cuda(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                                   const c10::optional<at::Tensor>& m, at::IntArrayRef iw, at::IntArrayRef ow) {
  c10::cuda::CUDAGuard guard(x.device());
  return slim::linear_multi(x, w, b, m, iw, ow, true);
}
at::Tensor multi_dx_cuda(at::TensorList g, const at::Tensor& w, const c10::optional<at::Tensor>& m,
                         at::IntArrayRef iw, int64_t i) {
  c10::cuda::CUDAGuard guard(w.device());
  return slim::linear_multi_dx(g, w, m, iw, i, true);
}
void multi_dw_cuda(at::TensorList g, const at::Tensor& x, const c10::optional<at::Tensor>& m, at::IntArrayRef iw,
                   const at::Tensor& gw) {
  c10::cuda::CUDAGuard guard(x.device());
  slim::linear_multi_dw_(g, x, m, iw, gw, true);
}
at::Tensor conv_cuda(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                     const c10::optional<at::Tensor>& m, int64_t o, at::IntArrayRef s, at::IntArrayRef p,
                     at::IntArrayRef d) {
  c10::cuda::CUDAGuard guard(x.device());
  return slim::conv2d(x, w, b, m, o, s, p, d, true);
}
at::Tensor conv_dx_cuda(const at::Tensor& g, const at::Tensor& w, const c10::optional<at::Tensor>& m,
                        at::IntArrayRef xs, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  c10::cuda::CUDAGuard guard(g.device());
  return slim::conv2d_dx(g, w, m, xs, s, p, d, true);
}
void conv_dw_cuda(const at::Tensor& g, const at::Tensor& x, const c10::optional<at::Tensor>& m, const at::Tensor& gw,
                  at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  c10::cuda::CUDAGuard guard(x.device());
  slim::conv2d_dw_(g, x, m, gw, s, p, d, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) {
  m.impl("slimmable_linear", &linear_cuda);
  m.impl("slimmable_linear_dx", &linear_dx_cuda);
  m.impl("slimmable_linear_dw_", &linear_dw_cuda);
  m.impl("slimmable_linear_multi", &multi_cuda);
  m.impl("slimmable_linear_multi_dx", &multi_dx_cuda);
  m.impl("slimmable_linear_multi_dw_", &multi_dw_cuda);
  m.impl("slimmable_conv2d", &conv_cuda);
  m.impl("slimmable_conv2d_dx", &conv_dx_cuda);
  m.impl("slimmable_conv2d_dw_", &conv_dw_cuda);
}

}  // namespace sparsecl
