// Width-sliced (slimmable) linear and conv2d on W[:o, :i] as a strided view, written with ATen ops
// so one implementation serves CPU (MKL) and CUDA (cuBLAS); registered per device in
// cpu/slimmable.cpp and cuda/slimmable.cu. Optional bool mask (shape of W) is applied panel by panel:
// no full-size (or even active-size) masked weight is materialised.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace sparsecl {
namespace slim {

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& mask, int64_t out_features, bool cuda);
at::Tensor linear_dx(const at::Tensor& grad_out, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                     int64_t in_features, bool cuda);
void linear_dw_(const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                const at::Tensor& grad_weight, bool cuda);

std::vector<at::Tensor> linear_multi(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& mask,
                                     at::IntArrayRef in_widths, at::IntArrayRef out_widths, bool cuda);
at::Tensor linear_multi_dx(at::TensorList grad_outs, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                           at::IntArrayRef in_widths, int64_t in_features, bool cuda);
void linear_multi_dw_(at::TensorList grad_outs, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                      at::IntArrayRef in_widths, const at::Tensor& grad_weight, bool cuda);

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& mask, int64_t out_channels, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, bool cuda);
at::Tensor conv2d_dx(const at::Tensor& grad_out, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                     at::IntArrayRef x_shape, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, bool cuda);
void conv2d_dw_(const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                const at::Tensor& grad_weight, at::IntArrayRef stride, at::IntArrayRef padding,
                at::IntArrayRef dilation, bool cuda);

}  // namespace slim
}  // namespace sparsecl
