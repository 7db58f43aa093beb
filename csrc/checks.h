// Shared input guards for every sparsecl kernel: each op checks dtype, device, shape and
// index validity before touching memory, so bad input raises instead of crashing.
//
// Every check uses SPARSECL_CHECK, not TORCH_CHECK: TORCH_CHECK formats its message with std::ostream,
// and on the H100 image (nvcc 13.0 with gcc 13.3, torch 2.11) a CUDA entry check that streamed an
// integer crashed inside std::ostream::_M_insert<long> instead of raising (cuda-gdb backtrace in
// bench/results/gpu-h100-2026-11-25/NOTES.md). SPARSECL_CHECK builds the message without iostreams
// (std::to_string, c10::toString, Device::str) and throws the same c10::Error (RuntimeError).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

namespace sparsecl {
namespace check_detail {

inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
std::string piece(T v) {
  return std::to_string(v);
}
inline std::string piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
inline std::string piece(c10::IntArrayRef a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + "]";
}

template <typename... Args>
[[noreturn]] void fail(const char* func, const char* file, uint32_t line, const char* cond, const Args&... args) {
  std::string msg;
  ((msg += piece(args)), ...);
  c10::detail::torchCheckFail(func, file, line, msg.empty() ? std::string("check failed: ") + cond : msg);
}

}  // namespace check_detail

#define SPARSECL_CHECK(cond, ...)                                                                \
  do {                                                                                           \
    if (C10_UNLIKELY(!(cond)))                                                                   \
      ::sparsecl::check_detail::fail(__func__, __FILE__, static_cast<uint32_t>(__LINE__), #cond, \
                                     ##__VA_ARGS__);                                             \
  } while (0)

inline void check_index(const at::Tensor& t, const char* name, const at::Tensor& like) {
  SPARSECL_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  SPARSECL_CHECK(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  SPARSECL_CHECK(t.is_contiguous(), name, " must be contiguous");
  SPARSECL_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the data is on ", like.device());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like) {
  SPARSECL_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but x is on ", like.device());
}

inline void check_float(const at::Tensor& t, const char* name, bool cuda) {
  auto s = t.scalar_type();
  bool ok = s == at::kFloat || s == at::kDouble || (cuda && (s == at::kHalf || s == at::kBFloat16));
  SPARSECL_CHECK(ok, name, " has unsupported dtype ", s,
                 cuda ? " (CUDA supports float32, float64, float16, bfloat16)" : " (CPU supports float32, float64)");
}

// CSR-style pointer array: n+1 entries, starts at 0, ends at nnz, non-decreasing (CPU tensors).
inline void check_ptr_array(const at::Tensor& ptr, int64_t n, int64_t nnz, const char* name) {
  SPARSECL_CHECK(ptr.size(0) == n + 1, name, " must have ", n + 1, " entries, got ", ptr.size(0));
  const int32_t* p = ptr.data_ptr<int32_t>();
  SPARSECL_CHECK(p[0] == 0 && p[n] == nnz, name, " must start at 0 and end at nnz=", nnz, ", got ", p[0], " and ", p[n]);
  for (int64_t r = 0; r < n; ++r) SPARSECL_CHECK(p[r] <= p[r + 1], name, " must be non-decreasing (at ", r, ")");
}

// prune_regrow's granularity of layer l: 1 when the mask has the weight's shape, else the power-of-two
// block size B whose grid (ceil(out/B), ceil(in/B)) the mask is.
inline int64_t block_size_of(const at::Tensor& w, const at::Tensor& m, int64_t l) {
  if (w.sizes() == m.sizes()) return 1;
  SPARSECL_CHECK(w.dim() == 2 && m.dim() == 2, "layer ", l, ": mask shape ", m.sizes(),
                 " must equal the weight shape ", w.sizes(), " (element granularity) or its 2-D block grid");
  for (int64_t B = 2; B <= 2 * std::max<int64_t>(1, std::max(w.size(0), w.size(1))); B *= 2)
    if ((w.size(0) + B - 1) / B == m.size(0) && (w.size(1) + B - 1) / B == m.size(1)) return B;
  SPARSECL_CHECK(false, "layer ", l, ": mask shape ", m.sizes(), " is neither the weight shape ", w.sizes(),
                 " nor its block grid (ceil(out/B), ceil(in/B)) for a power-of-two B");
}

// Every entry of an int32 index in [0, limit). CPU tensors use one fused parallel min/max pass:
// at::aminmax took 3 ms on 420K int32 entries here (20 calls per CSR training step), this takes ~0.05 ms.
inline void check_ids_below(const at::Tensor& idx, int64_t limit, const char* name) {
  const int64_t n = idx.numel();
  if (n == 0) return;
  int64_t lo, hi;
  if (idx.is_cpu()) {
    const int32_t* p = idx.data_ptr<int32_t>();
    using Range = std::pair<int32_t, int32_t>;
    const Range r = at::parallel_reduce(
        int64_t(0), n, int64_t(1) << 16, Range{INT32_MAX, INT32_MIN},
        [p](int64_t b, int64_t e, Range acc) {
          int32_t mn = acc.first, mx = acc.second;
          for (int64_t i = b; i < e; ++i) {
            mn = std::min(mn, p[i]);
            mx = std::max(mx, p[i]);
          }
          return Range{mn, mx};
        },
        [](Range a, Range b) { return Range{std::min(a.first, b.first), std::max(a.second, b.second)}; });
    lo = r.first;
    hi = r.second;
  } else {
    auto mm = at::aminmax(idx);
    lo = std::get<0>(mm).item<int32_t>();
    hi = std::get<1>(mm).item<int32_t>();
  }
  SPARSECL_CHECK(lo >= 0 && hi < limit, name, " has entries in [", lo, ", ", hi, "] outside [0, ", limit, ")");
}

}  // namespace sparsecl
