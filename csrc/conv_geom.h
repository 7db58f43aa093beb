// Convolution geometry shared by the sparse and slimmable conv2d kernels, CPU and CUDA: the output size
// and the checks of stride, padding, dilation and the input shape.
#pragma once
#include "checks.h"

namespace sparsecl {

// 0 when the dilated kernel does not fit the padded input (C++ division truncates toward zero, so the plain
// formula would give 1 for a span in (-s, 0) and accept an invalid convolution)
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

inline void check_conv_args(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  SPARSECL_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                 "stride, padding and dilation must have 2 entries each");
  for (int d = 0; d < 2; ++d) {
    SPARSECL_CHECK(stride[d] >= 1, "stride must be >= 1, got ", stride);
    SPARSECL_CHECK(padding[d] >= 0, "padding must be >= 0, got ", padding);
    SPARSECL_CHECK(dilation[d] >= 1, "dilation must be >= 1, got ", dilation);
  }
}

// N, C, H, W of the input, O output channels, Ho x Wo output, kernel kh x kw, stride, padding, dilation.
struct ConvShape {
  int64_t N, C, H, W, O, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Checked geometry of a convolution of an input of shape x_shape [N, C, H, W] into O channels.
inline ConvShape make_conv_shape(at::IntArrayRef x_shape, int64_t O, int64_t kh, int64_t kw, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  SPARSECL_CHECK(x_shape.size() == 4, "x_shape must be [N, C, H, W], got ", x_shape);
  check_conv_args(stride, padding, dilation);
  SPARSECL_CHECK(kh > 0 && kw > 0, "kernel size must be positive, got ", kh, "x", kw);
  ConvShape g{x_shape[0], x_shape[1], x_shape[2], x_shape[3], O, 0, 0, kh, kw, stride[0], stride[1], padding[0],
              padding[1], dilation[0], dilation[1]};
  g.Ho = conv_out_size(g.H, kh, g.sh, g.ph, g.dh);
  g.Wo = conv_out_size(g.W, kw, g.sw, g.pw, g.dw);
  SPARSECL_CHECK(g.Ho > 0 && g.Wo > 0, "input ", x_shape, " is too small for kernel ", kh, "x", kw,
                 " with padding ", padding, " and dilation ", dilation);
  return g;
}

// t has like's dtype and device (bias, values, grad_out against x).
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& like) {
  SPARSECL_CHECK(t.scalar_type() == like.scalar_type(), name, " dtype ", t.scalar_type(), " != ", like.scalar_type());
  check_same_device(t, name, like);
}

inline void check_conv_bias(const c10::optional<at::Tensor>& bias, int64_t O, const at::Tensor& x) {
  if (!bias) return;
  SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == O, "bias must be [", O, "], got ", bias->sizes());
  check_like(*bias, "bias", x);
}

}  // namespace sparsecl
