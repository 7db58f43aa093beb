// Entry checks shared by the CPU and CUDA sparse conv2d ops (bsr_conv2d*, csr_conv2d*): tensor ranks,
// dtypes, devices and sizes. The index *values* are checked by the CPU ops only (they live on the device
// for CUDA).
#pragma once
#include "conv_geom.h"

namespace sparsecl {

// x or grad_out: 4-D floating point ([N, C, H, W]); half precision only where the backend has it.
inline void check_conv_input(const at::Tensor& x, const char* name, bool allow_half) {
  SPARSECL_CHECK(x.dim() == 4, name, " must be 4-D [N, C, H, W], got ", x.sizes());
  check_float(x, name, allow_half);
}

inline void check_block_values(const at::Tensor& values, const at::Tensor& like) {
  SPARSECL_CHECK(values.dim() == 5 && values.size(1) == values.size(2), "values must be [nnzb, B, B, kh, kw], got ",
                 values.sizes());
  const int64_t B = values.size(1);
  SPARSECL_CHECK(B == 16 || B == 32 || B == 64, "block size must be 16, 32 or 64, got ", B);
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
                            const at::Tensor& col_idx, bool allow_half) {
  check_conv_input(x, "x", allow_half);
  check_conv_input(dy, "grad_out", allow_half);
  check_like(dy, "grad_out", x);
  SPARSECL_CHECK(dy.size(0) == x.size(0), "grad_out and x must have the same batch size");
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
}

}  // namespace sparsecl
