// Shared input guards for every sparsecl kernel: each op checks dtype, device, shape and
// index validity before touching memory, so bad input raises instead of crashing.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace sparsecl {

inline void check_index(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the data is on ", like.device());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but x is on ", like.device());
}

inline void check_float(const at::Tensor& t, const char* name, bool cuda) {
  auto s = t.scalar_type();
  bool ok = s == at::kFloat || s == at::kDouble || (cuda && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK(ok, name, " has unsupported dtype ", s,
              cuda ? " (CUDA supports float32, float64, float16, bfloat16)" : " (CPU supports float32, float64)");
}

}  // namespace sparsecl
