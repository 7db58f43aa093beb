// Argument checks of the sparse conv2d ops (bsr_conv2d*, csr_conv2d*), shared by the CPU and CUDA
// backends: ranks, dtypes (half precision on CUDA only), devices, sizes and the geometry. The index *values*
// (row pointers, ids in range) are checked where they are host memory; reading them on a GPU would sync.
#pragma once
#include "conv_geom.h"

namespace sparsecl {

// x or grad_out: 4-D floating point ([N, C, H, W]); half precision on CUDA only.
inline void check_conv_input(const at::Tensor& x, const char* name) {
  SPARSECL_CHECK(x.dim() == 4, name, " must be 4-D [N, C, H, W], got ", x.sizes());
  check_float(x, name, !x.is_cpu());
}

inline void check_block_size(int64_t B) {
  SPARSECL_CHECK(B == 16 || B == 32 || B == 64, "block size must be 16, 32 or 64, got ", B);
}

inline void check_block_values(const at::Tensor& values, const at::Tensor& like) {
  SPARSECL_CHECK(values.dim() == 5 && values.size(1) == values.size(2), "values must be [nnzb, B, B, kh, kw], got ",
                 values.sizes());
  check_block_size(values.size(1));
  check_like(values, "values", like);
}

inline void check_csr_values(const at::Tensor& values, const at::Tensor& like, const at::Tensor& idx) {
  SPARSECL_CHECK(values.dim() == 1, "values must be 1-D [nnz], got ", values.sizes());
  check_like(values, "values", like);
  SPARSECL_CHECK(values.size(0) == idx.size(0), "values has ", values.size(0), " entries but the index has ",
                 idx.size(0));
}

// grad_out is the output of the convolution g of an input of shape x_shape.
inline void check_grad_out(const at::Tensor& dy, const ConvShape& g, at::IntArrayRef x_shape) {
  SPARSECL_CHECK(dy.size(0) == g.N && dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_out ", dy.sizes(),
                 " does not match the convolution of x ", x_shape);
}

// The inputs of the dValues ops: grad_out and x of one batch, and the (row, col) index of the entries.
inline void check_dw_inputs(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                            const at::Tensor& col_idx) {
  check_conv_input(x, "x");
  check_conv_input(dy, "grad_out");
  check_like(dy, "grad_out", x);
  SPARSECL_CHECK(dy.size(0) == x.size(0), "grad_out and x must have the same batch size");
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
}

// ptr: row pointers over n rows ending at nnz; ids: entries in [0, limit). Values checked on the CPU only.
inline void check_conv_ptr(const at::Tensor& ptr, int64_t n, int64_t nnz, const char* name) {
  if (ptr.is_cpu())
    check_ptr_array(ptr, n, nnz, name);
  else
    SPARSECL_CHECK(ptr.size(0) == n + 1, name, " must have ", n + 1, " entries, got ", ptr.size(0));
}

inline void check_conv_ids(const at::Tensor& ids, int64_t limit, const char* name) {
  if (ids.is_cpu()) check_ids_below(ids, limit, name);
}

inline int64_t n_blocks(int64_t n, int64_t B) { return (n + B - 1) / B; }

// Each op's checks; each returns the checked geometry.
inline ConvShape check_bsr_conv2d(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                  const at::Tensor& col_idx, int64_t out_channels,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_conv_input(x, "x");
  check_block_values(values, x);
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(col_idx.size(0) == values.size(0), "col_idx has ", col_idx.size(0), " entries but values has ",
                 values.size(0), " blocks");
  SPARSECL_CHECK(out_channels >= 0, "out_channels must be >= 0");
  const int64_t B = values.size(1);
  const ConvShape g =
      make_conv_shape(x.sizes(), out_channels, values.size(3), values.size(4), stride, padding, dilation);
  check_conv_ptr(row_ptr, n_blocks(g.O, B), values.size(0), "row_ptr");
  check_conv_ids(col_idx, n_blocks(g.C, B), "col_idx");
  check_conv_bias(bias, g.O, x);
  return g;
}

inline ConvShape check_bsr_conv2d_dx(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                                     const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_conv_input(dy, "grad_out");
  check_block_values(values, dy);
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  SPARSECL_CHECK(t_col_idx.size(0) == values.size(0) && t_perm.size(0) == values.size(0),
                 "t_col_idx and t_perm must have nnzb entries");
  const int64_t B = values.size(1);
  const ConvShape g = make_conv_shape(x_shape, dy.size(1), values.size(3), values.size(4), stride, padding, dilation);
  check_grad_out(dy, g, x_shape);
  check_conv_ptr(t_row_ptr, n_blocks(g.C, B), values.size(0), "t_row_ptr");
  check_conv_ids(t_col_idx, n_blocks(g.O, B), "t_col_idx");
  check_conv_ids(t_perm, values.size(0), "t_perm");
  return g;
}

inline ConvShape check_bsr_conv2d_dw(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                                     const at::Tensor& col_idx, int64_t block_size, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_dw_inputs(dy, x, row_idx, col_idx);
  check_block_size(block_size);
  SPARSECL_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const ConvShape g =
      make_conv_shape(x.sizes(), dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_grad_out(dy, g, x.sizes());
  check_conv_ids(row_idx, n_blocks(g.O, block_size), "row_idx");
  check_conv_ids(col_idx, n_blocks(g.C, block_size), "col_idx");
  return g;
}

inline ConvShape check_csr_conv2d(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                  const at::Tensor& col_idx, int64_t out_channels, at::IntArrayRef kernel_size,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_conv_input(x, "x");
  check_index(row_ptr, "row_ptr", x);
  check_index(col_idx, "col_idx", x);
  check_csr_values(values, x, col_idx);
  SPARSECL_CHECK(out_channels >= 0, "out_channels must be >= 0");
  SPARSECL_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const ConvShape g =
      make_conv_shape(x.sizes(), out_channels, kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_conv_ptr(row_ptr, g.O, values.size(0), "row_ptr");
  check_conv_ids(col_idx, g.C * g.kh * g.kw, "col_idx");
  check_conv_bias(bias, g.O, x);
  return g;
}

inline ConvShape check_csr_conv2d_dx(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                                     const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation) {
  check_conv_input(dy, "grad_out");
  check_index(t_row_ptr, "t_row_ptr", dy);
  check_index(t_col_idx, "t_col_idx", dy);
  check_index(t_perm, "t_perm", dy);
  check_csr_values(values, dy, t_col_idx);
  SPARSECL_CHECK(t_perm.size(0) == values.size(0), "t_perm must have nnz entries");
  SPARSECL_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const ConvShape g = make_conv_shape(x_shape, dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_grad_out(dy, g, x_shape);
  check_conv_ptr(t_row_ptr, g.C * g.kh * g.kw, values.size(0), "t_row_ptr");
  check_conv_ids(t_col_idx, g.O, "t_col_idx");
  check_conv_ids(t_perm, values.size(0), "t_perm");
  return g;
}

inline ConvShape check_csr_conv2d_dw(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                                     const at::Tensor& col_idx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_dw_inputs(dy, x, row_idx, col_idx);
  SPARSECL_CHECK(kernel_size.size() == 2, "kernel_size must have 2 entries");
  const ConvShape g =
      make_conv_shape(x.sizes(), dy.size(1), kernel_size[0], kernel_size[1], stride, padding, dilation);
  check_grad_out(dy, g, x.sizes());
  check_conv_ids(row_idx, g.O, "row_idx");
  check_conv_ids(col_idx, g.C * g.kh * g.kw, "col_idx");
  return g;
}

}  // namespace sparsecl
