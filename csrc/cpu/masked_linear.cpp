// Masked dense linear on CPU: y = x @ (weight * mask).T (+ bias) without materialising weight * mask.
// Masked-out weights contribute exactly 0 (where(mask, weight, 0)), even when they are inf/NaN.
//
// The mask is applied while packing panels of the weight: a panel of output rows is masked into a
// bounded scratch buffer (at most kPanelBytes = 32 MiB) that feeds the BLAS GEMM (MKL/OpenBLAS through
// at::mm), so extra memory and traffic are one panel, not a second full weight. The GEMM itself is
// the library's register-blocked micro-kernel; masking is one streaming pass over weight + mask
// (AVX-512 masked loads: 16 mask bytes -> a k-register -> zero-masked load of 16 weights).
//   forward  y[:, panel]  = x @ (W * mask)[panel].T        (+ bias)
//   dX       dX          += dY[:, panel] @ (W * mask)[panel]
//   dW       dY.T @ x, zeroed in place outside grad_mask (exactly 0 there, even for inf/NaN inputs)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "checks.h"
#include "cpu/isa.h"

namespace sparsecl {
namespace {

constexpr int64_t kPanelBytes = 32 << 20;  // 2 panels for 4096x4096 fp32: fewer, larger GEMMs
constexpr int64_t kMinPanelRows = 256;  // narrower GEMMs lose more to BLAS packing than masking costs

template <typename T>
void mask_portable(const T* w, const bool* m, T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = m[j] ? w[j] : T(0);
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl"))) void mask_avx512(const float* w, const bool* m, float* out,
                                                                      int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __mmask16 k = _mm_test_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + j)),
                                           _mm_set1_epi8(-1));
    _mm512_storeu_ps(out + j, _mm512_maskz_loadu_ps(k, w + j));
  }
  mask_portable(w + j, m + j, out + j, n - j);
}
#endif

inline void mask_rows(const float* w, const bool* m, float* out, int64_t n) {
#if defined(__x86_64__)
  if (cpu::runtime_isa_enum() == cpu::Isa::kAvx512) return mask_avx512(w, m, out, n);
#endif
  mask_portable(w, m, out, n);
}

inline void mask_rows(const double* w, const bool* m, double* out, int64_t n) { mask_portable(w, m, out, n); }

// out[r, :] = where(mask[r, :], w[r, :], 0) for a contiguous block of rows, in parallel.
void pack_masked(const at::Tensor& w, const at::Tensor& mask, at::Tensor& out) {
  const int64_t n = w.numel();
  const bool* m = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "masked_linear_pack", [&] {
    const scalar_t* src = w.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) { mask_rows(src + b, m + b, dst + b, e - b); });
  });
}

// Rows per masked panel. SPARSECL_MASKED_PANEL_BYTES overrides the byte budget (tests use it to
// exercise several panels on small shapes).
int64_t panel_rows(const at::Tensor& weight) {
  const char* env = std::getenv("SPARSECL_MASKED_PANEL_BYTES");
  const int64_t budget = env ? std::max<int64_t>(1, std::atoll(env)) : kPanelBytes;
  const int64_t row_bytes = std::max<int64_t>(1, weight.size(1) * weight.element_size());
  return std::max<int64_t>(kMinPanelRows, budget / row_bytes);
}

void check_weight_mask(const at::Tensor& weight, const at::Tensor& mask, const at::Tensor& like, const char* mname) {
  SPARSECL_CHECK(weight.dim() == 2, "weight must be 2-D [out, in], got ", weight.sizes());
  SPARSECL_CHECK(weight.scalar_type() == like.scalar_type(), "weight dtype ", weight.scalar_type(), " != ",
                 like.scalar_type());
  check_same_device(weight, "weight", like);
  SPARSECL_CHECK(mask.scalar_type() == at::kBool, mname, " must be bool, got ", mask.scalar_type());
  SPARSECL_CHECK(mask.sizes() == weight.sizes(), mname, " shape ", mask.sizes(), " != weight shape ", weight.sizes());
  check_same_device(mask, mname, like);
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", false);
  check_weight_mask(weight, mask, x, "mask");
  SPARSECL_CHECK(x.size(1) == weight.size(1), "x has ", x.size(1), " features but weight is ", weight.sizes());
  const int64_t out_f = weight.size(0);
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == out_f, "bias must be [", out_f, "], got ", bias->sizes());
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype ", bias->scalar_type(), " must match x dtype ",
                   x.scalar_type());
    check_same_device(*bias, "bias", x);
  }
  auto y = at::empty({x.size(0), out_f}, x.options());
  if (x.size(0) == 0 || out_f == 0) return y;
  const int64_t po = std::min(out_f, panel_rows(weight));
  auto buf = at::empty({po, weight.size(1)}, weight.options());
  auto wc = weight.contiguous();
  auto mc = mask.contiguous();
  for (int64_t o0 = 0; o0 < out_f; o0 += po) {
    const int64_t n = std::min(po, out_f - o0);
    auto panel = buf.narrow(0, 0, n);
    pack_masked(wc.narrow(0, o0, n), mc.narrow(0, o0, n), panel);
    auto out = y.narrow(1, o0, n);
    if (bias)
      at::addmm_out(out, bias->narrow(0, o0, n), x, panel.t());
    else
      at::mm_out(out, x, panel.t());
  }
  return y;
}

at::Tensor masked_linear_dx_cpu(const at::Tensor& dy, const at::Tensor& weight, const at::Tensor& mask) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", false);
  check_weight_mask(weight, mask, dy, "mask");
  SPARSECL_CHECK(dy.size(1) == weight.size(0), "grad_out has ", dy.size(1), " features but weight is ", weight.sizes());
  const int64_t out_f = weight.size(0);
  auto dx = at::zeros({dy.size(0), weight.size(1)}, dy.options());
  if (dy.size(0) == 0 || out_f == 0 || weight.size(1) == 0) return dx;
  const int64_t po = std::min(out_f, panel_rows(weight));
  auto buf = at::empty({po, weight.size(1)}, weight.options());
  auto wc = weight.contiguous();
  auto mc = mask.contiguous();
  for (int64_t o0 = 0; o0 < out_f; o0 += po) {
    const int64_t n = std::min(po, out_f - o0);
    auto panel = buf.narrow(0, 0, n);
    pack_masked(wc.narrow(0, o0, n), mc.narrow(0, o0, n), panel);
    dx.addmm_(dy.narrow(1, o0, n), panel);
  }
  return dx;
}

at::Tensor masked_linear_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& grad_mask) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", false);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype ", dy.scalar_type(), " must match x dtype ",
                 x.scalar_type());
  check_same_device(dy, "grad_out", x);
  SPARSECL_CHECK(grad_mask.scalar_type() == at::kBool, "grad_mask must be bool, got ", grad_mask.scalar_type());
  SPARSECL_CHECK(grad_mask.dim() == 2 && grad_mask.size(0) == dy.size(1) && grad_mask.size(1) == x.size(1),
                 "grad_mask must be [", dy.size(1), ", ", x.size(1), "], got ", grad_mask.sizes());
  check_same_device(grad_mask, "grad_mask", x);
  auto dw = at::mm(dy.t(), x);
  dw.masked_fill_(grad_mask.logical_not(), 0);
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_dx", &masked_linear_dx_cpu);
  m.impl("masked_linear_dw", &masked_linear_dw_cpu);
}

}  // namespace sparsecl
