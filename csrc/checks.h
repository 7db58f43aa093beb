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

// CSR-style pointer array: n+1 entries, starts at 0, ends at nnz, non-decreasing (CPU tensors).
inline void check_ptr_array(const at::Tensor& ptr, int64_t n, int64_t nnz, const char* name) {
  TORCH_CHECK(ptr.size(0) == n + 1, name, " must have ", n + 1, " entries, got ", ptr.size(0));
  const int32_t* p = ptr.data_ptr<int32_t>();
  TORCH_CHECK(p[0] == 0 && p[n] == nnz, name, " must start at 0 and end at nnz=", nnz, ", got ", p[0], " and ", p[n]);
  for (int64_t r = 0; r < n; ++r) TORCH_CHECK(p[r] <= p[r + 1], name, " must be non-decreasing (at ", r, ")");
}

// Every entry of an int32 index in [0, limit).
inline void check_ids_below(const at::Tensor& idx, int64_t limit, const char* name) {
  if (idx.numel() == 0) return;
  auto mm = at::aminmax(idx);
  const int64_t lo = std::get<0>(mm).item<int32_t>(), hi = std::get<1>(mm).item<int32_t>();
  TORCH_CHECK(lo >= 0 && hi < limit, name, " has entries in [", lo, ", ", hi, "] outside [0, ", limit, ")");
}

}  // namespace sparsecl
