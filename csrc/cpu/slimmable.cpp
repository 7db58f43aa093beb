// Slimmable (width-sliced) linear / conv2d: compute with W[:o, :i] as a strided view (BLAS takes the
// row stride of the full weight as its leading dimension, so nothing is copied), and accumulate the
// weight gradient straight into grad_weight[:o, :i] (no full-size temporary).
//
// Multi-width: widths (i_k, o_k) share one input. The weight is cut into blocks at every distinct
// i_k / o_k; each block's product is computed once and shared by every width that contains it
// (running partial sums over input segments), so the cost is that of the union of the slices
// (the widest one when widths are nested) instead of the sum over widths.
//
// A bool mask (shape of W) multiplies the weight panel by panel (kPanelElems entries at a time).
#include "cpu/slimmable.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "conv_geom.h"

namespace sparsecl {
namespace slim {
namespace {

constexpr int64_t kPanelElems = int64_t(1) << 18;

int64_t panel_rows(int64_t cols) { return std::max<int64_t>(1, kPanelElems / std::max<int64_t>(cols, 1)); }

at::Tensor block(const at::Tensor& t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  return t.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
}

at::Tensor opt_block(const at::Tensor& t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  return t.defined() ? block(t, r0, r1, c0, c1) : at::Tensor();
}

// Elementwise work on blocks (bias broadcast, copies between widths, grad sums, mask products) runs
// serially on CPU: it is tiny next to the GEMMs, and ATen's parallel elementwise kernels stall when
// the cores are oversubscribed (measured here: 37 ms instead of 0.06 ms for a 2 MB copy under load).
enum class Op { kCopy, kAdd, kMul };

template <typename T, typename S>
void serial_2d(const at::Tensor& dst, const at::Tensor& src, Op op) {
  T* d = dst.data_ptr<T>();
  const S* s = src.data_ptr<S>();
  const int64_t rows = dst.size(0), cols = dst.size(1);
  const int64_t d0 = dst.stride(0), d1 = dst.stride(1), s0 = src.stride(0), s1 = src.stride(1);
  for (int64_t r = 0; r < rows; ++r) {
    T* dr = d + r * d0;
    const S* sr = s + r * s0;
    if (d1 == 1 && s1 == 1) {
      if (op == Op::kCopy) for (int64_t c = 0; c < cols; ++c) dr[c] = T(sr[c]);
      else if (op == Op::kAdd) for (int64_t c = 0; c < cols; ++c) dr[c] += T(sr[c]);
      else for (int64_t c = 0; c < cols; ++c) dr[c] *= T(sr[c]);
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        T& v = dr[c * d1];
        const T u = T(sr[c * s1]);
        v = op == Op::kCopy ? u : op == Op::kAdd ? v + u : v * u;
      }
    }
  }
}

// dst (op)= src for 2-D blocks of one shape (src may be broadcast, or a bool mask for kMul).
void blockwise(const at::Tensor& dst, const at::Tensor& src, Op op) {
  const bool serial = dst.is_cpu() && dst.dim() == 2 && src.dim() == 2 && dst.sizes() == src.sizes() &&
                      (dst.scalar_type() == at::kFloat || dst.scalar_type() == at::kDouble) &&
                      (src.scalar_type() == dst.scalar_type() || src.scalar_type() == at::kBool);
  if (!serial) {
    if (op == Op::kCopy) dst.copy_(src);
    else if (op == Op::kAdd) dst.add_(src);
    else dst.mul_(src);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "slimmable_blockwise", [&] {
    if (src.scalar_type() == at::kBool) serial_2d<scalar_t, bool>(dst, src, op);
    else serial_2d<scalar_t, scalar_t>(dst, src, op);
  });
}

// out [T, r] (+)= a [T, k] @ (w * m).T for w, m [r, k] strided views (m undefined: no mask).
void mm_nt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w, const at::Tensor& m, bool accumulate) {
  if (!m.defined()) {
    if (accumulate) out.addmm_(a, w.t());
    else at::mm_out(const_cast<at::Tensor&>(out), a, w.t());
    return;
  }
  const int64_t rows = w.size(0), P = panel_rows(w.size(1));
  at::Tensor buf = at::empty({std::min(P, rows), w.size(1)}, w.options());
  for (int64_t r0 = 0; r0 < rows; r0 += P) {
    const int64_t n = std::min(P, rows - r0);
    at::Tensor wm = buf.narrow(0, 0, n);
    blockwise(wm, w.narrow(0, r0, n), Op::kCopy);
    blockwise(wm, m.narrow(0, r0, n), Op::kMul);
    at::Tensor o = out.narrow(1, r0, n);
    if (accumulate) o.addmm_(a, wm.t());
    else at::mm_out(o, a, wm.t());
  }
}

// out [T, k] (+)= g [T, r] @ (w * m) for w, m [r, k].
void mm_nn(const at::Tensor& out, const at::Tensor& g, const at::Tensor& w, const at::Tensor& m, bool accumulate) {
  if (!m.defined()) {
    if (accumulate) out.addmm_(g, w);
    else at::mm_out(const_cast<at::Tensor&>(out), g, w);
    return;
  }
  const int64_t rows = w.size(0), P = panel_rows(w.size(1));
  if (rows == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  at::Tensor buf = at::empty({std::min(P, rows), w.size(1)}, w.options());
  for (int64_t r0 = 0; r0 < rows; r0 += P) {
    const int64_t n = std::min(P, rows - r0);
    at::Tensor wm = buf.narrow(0, 0, n);
    blockwise(wm, w.narrow(0, r0, n), Op::kCopy);
    blockwise(wm, m.narrow(0, r0, n), Op::kMul);
    if (accumulate || r0 > 0) out.addmm_(g.narrow(1, r0, n), wm);
    else at::mm_out(const_cast<at::Tensor&>(out), g.narrow(1, r0, n), wm);
  }
}

// gw [r, k] += (g [T, r].T @ a [T, k]) * m.
void mm_tn_acc(const at::Tensor& gw, const at::Tensor& g, const at::Tensor& a, const at::Tensor& m) {
  if (!m.defined()) {
    gw.addmm_(g.t(), a);
    return;
  }
  const int64_t rows = gw.size(0), P = panel_rows(gw.size(1));
  for (int64_t r0 = 0; r0 < rows; r0 += P) {
    const int64_t n = std::min(P, rows - r0);
    at::Tensor t = at::mm(g.narrow(1, r0, n).t(), a);
    blockwise(t, m.narrow(0, r0, n), Op::kMul);
    blockwise(gw.narrow(0, r0, n), t, Op::kAdd);
  }
}

void check_weight(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, const at::Tensor& like,
                  int64_t dim, bool cuda) {
  SPARSECL_CHECK(weight.dim() == dim, "weight must be ", dim, "-D, got shape ", weight.sizes());
  check_float(like, "input", cuda);
  SPARSECL_CHECK(weight.scalar_type() == like.scalar_type(), "weight dtype ", weight.scalar_type(), " != input dtype ",
                 like.scalar_type());
  check_same_device(weight, "weight", like);
  if (mask) {
    SPARSECL_CHECK(mask->scalar_type() == at::kBool, "mask must be bool, got ", mask->scalar_type());
    SPARSECL_CHECK(mask->sizes() == weight.sizes(), "mask shape ", mask->sizes(), " != weight shape ", weight.sizes());
    check_same_device(*mask, "mask", like);
  }
}

void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& weight, const at::Tensor& like) {
  if (!bias) return;
  SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be [", weight.size(0),
                 "] (the full-width bias), got ", bias->sizes());
  SPARSECL_CHECK(bias->scalar_type() == like.scalar_type(), "bias dtype must match input");
  check_same_device(*bias, "bias", like);
}

void check_width(int64_t w, int64_t full, const char* what) {
  SPARSECL_CHECK(w >= 0 && w <= full, what, " ", w, " outside [0, ", full, "]");
}

void check_grad_weight(const at::Tensor& gw, const at::Tensor& like, int64_t dim) {
  SPARSECL_CHECK(gw.dim() == dim, "grad_weight must be ", dim, "-D, got shape ", gw.sizes());
  SPARSECL_CHECK(gw.scalar_type() == like.scalar_type(), "grad_weight dtype ", gw.scalar_type(), " != ",
                 like.scalar_type());
  check_same_device(gw, "grad_weight", like);
}

at::Tensor opt_mask(const c10::optional<at::Tensor>& mask) { return mask ? *mask : at::Tensor(); }

struct Widths {
  std::vector<int64_t> in, out;
};

Widths check_widths(at::IntArrayRef in_widths, at::IntArrayRef out_widths, int64_t in_limit, int64_t out_limit) {
  SPARSECL_CHECK(in_widths.size() == out_widths.size(), "in_widths has ", in_widths.size(), " entries but out_widths has ",
                 out_widths.size());
  SPARSECL_CHECK(!in_widths.empty(), "give at least one width");
  for (size_t k = 0; k < in_widths.size(); ++k) {
    check_width(in_widths[k], in_limit, "in width");
    check_width(out_widths[k], out_limit, "out width");
  }
  return {in_widths.vec(), out_widths.vec()};
}

std::vector<int64_t> bounds(const std::vector<int64_t>& w) {
  std::vector<int64_t> b;
  for (int64_t v : w)
    if (v > 0) b.push_back(v);
  std::sort(b.begin(), b.end());
  b.erase(std::unique(b.begin(), b.end()), b.end());
  return b;
}

// Segments [lo, hi) between consecutive bounds, merged while the set of widths covering them
// (covers(k, segment end)) stays the same; segments no width covers are dropped.
struct Run {
  int64_t lo, hi;
  std::vector<size_t> ks;
};

template <typename Covers>
std::vector<Run> runs(const Widths& w, const std::vector<int64_t>& bs, Covers covers) {
  std::vector<Run> out;
  int64_t lo = 0;
  for (int64_t hi : bs) {
    std::vector<size_t> ks;
    for (size_t k = 0; k < w.in.size(); ++k)
      if (covers(k, hi)) ks.push_back(k);
    if (!ks.empty()) {
      if (!out.empty() && out.back().hi == lo && out.back().ks == ks) out.back().hi = hi;
      else out.push_back({lo, hi, ks});
    }
    lo = hi;
  }
  return out;
}

// Sum of grad_outs[k][:, r0:r1] over ks (a view when there is one; a temporary otherwise).
at::Tensor sum_grads(at::TensorList g, const std::vector<size_t>& ks, int64_t r0, int64_t r1) {
  at::Tensor s = g[ks[0]].narrow(1, r0, r1 - r0);
  if (ks.size() == 1) return s;
  at::Tensor sum = at::empty(s.sizes(), s.options());
  blockwise(sum, s, Op::kCopy);
  for (size_t j = 1; j < ks.size(); ++j) blockwise(sum, g[ks[j]].narrow(1, r0, r1 - r0), Op::kAdd);
  return sum;
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& mask, int64_t out_features, bool cuda) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_width], got ", x.sizes());
  check_weight(weight, mask, x, 2, cuda);
  check_bias(bias, weight, x);
  check_width(x.size(1), weight.size(1), "x's in width");
  check_width(out_features, weight.size(0), "out_features");
  const int64_t o = out_features, i = x.size(1);
  at::Tensor y = at::empty({x.size(0), o}, x.options());
  if (bias) blockwise(y, bias->narrow(0, 0, o).expand({x.size(0), o}), Op::kCopy);
  mm_nt(y, x, block(weight, 0, o, 0, i), opt_block(opt_mask(mask), 0, o, 0, i), bias.has_value());
  return y;
}

at::Tensor linear_dx(const at::Tensor& grad_out, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                     int64_t in_features, bool cuda) {
  SPARSECL_CHECK(grad_out.dim() == 2, "grad_out must be 2-D [tokens, out_width], got ", grad_out.sizes());
  check_weight(weight, mask, grad_out, 2, cuda);
  check_width(grad_out.size(1), weight.size(0), "grad_out's out width");
  check_width(in_features, weight.size(1), "in_features");
  const int64_t o = grad_out.size(1), i = in_features;
  at::Tensor dx = at::empty({grad_out.size(0), i}, grad_out.options());
  mm_nn(dx, grad_out, block(weight, 0, o, 0, i), opt_block(opt_mask(mask), 0, o, 0, i), false);
  return dx;
}

void linear_dw_(const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                const at::Tensor& grad_weight, bool cuda) {
  SPARSECL_CHECK(grad_out.dim() == 2 && x.dim() == 2 && grad_out.size(0) == x.size(0),
                 "grad_out [T, o] and x [T, i] must be 2-D with equal T, got ", grad_out.sizes(), " and ", x.sizes());
  check_weight(grad_weight, mask, x, 2, cuda);
  check_grad_weight(grad_weight, x, 2);
  SPARSECL_CHECK(grad_out.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_width(grad_out.size(1), grad_weight.size(0), "grad_out's out width");
  check_width(x.size(1), grad_weight.size(1), "x's in width");
  const int64_t o = grad_out.size(1), i = x.size(1);
  mm_tn_acc(block(grad_weight, 0, o, 0, i), grad_out, x, opt_block(opt_mask(mask), 0, o, 0, i));
}

std::vector<at::Tensor> linear_multi(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& mask,
                                     at::IntArrayRef in_widths, at::IntArrayRef out_widths, bool cuda) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_weight(weight, mask, x, 2, cuda);
  check_bias(bias, weight, x);
  const Widths w = check_widths(in_widths, out_widths, std::min(x.size(1), weight.size(1)), weight.size(0));
  const at::Tensor m = opt_mask(mask);
  const int64_t T = x.size(0);
  std::vector<at::Tensor> ys;
  for (int64_t o : w.out) ys.push_back(at::empty({T, o}, x.options()));
  int64_t r0 = 0;
  for (int64_t r1 : bounds(w.out)) {
    std::vector<size_t> ks;  // widths whose output covers rows [r0, r1), by increasing in width
    for (size_t k = 0; k < w.out.size(); ++k)
      if (w.out[k] >= r1) ks.push_back(k);
    std::stable_sort(ks.begin(), ks.end(), [&](size_t a, size_t b) { return w.in[a] < w.in[b]; });
    // the partial sum lives in the output of the width reading the most input columns
    at::Tensor acc = ys[ks.back()].narrow(1, r0, r1 - r0);
    bool started = bias.has_value();
    if (started) blockwise(acc, bias->narrow(0, r0, r1 - r0).expand({T, r1 - r0}), Op::kCopy);
    int64_t c0 = 0;
    for (size_t k : ks) {
      const int64_t c1 = w.in[k];
      if (c1 > c0) {
        mm_nt(acc, x.narrow(1, c0, c1 - c0), block(weight, r0, r1, c0, c1), opt_block(m, r0, r1, c0, c1), started);
        started = true;
        c0 = c1;
      }
      if (!started) {
        acc.zero_();
        started = true;
      }
      if (k != ks.back()) blockwise(ys[k].narrow(1, r0, r1 - r0), acc, Op::kCopy);
    }
    r0 = r1;
  }
  return ys;
}

at::Tensor linear_multi_dx(at::TensorList grad_outs, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                           at::IntArrayRef in_widths, int64_t in_features, bool cuda) {
  SPARSECL_CHECK(grad_outs.size() == in_widths.size(), "got ", grad_outs.size(), " grad_outs for ", in_widths.size(),
                 " widths");
  SPARSECL_CHECK(!grad_outs.empty(), "give at least one width");
  const at::Tensor& g0 = grad_outs[0];
  check_weight(weight, mask, g0, 2, cuda);
  check_width(in_features, weight.size(1), "in_features");
  std::vector<int64_t> outs;
  for (const auto& g : grad_outs) {
    SPARSECL_CHECK(g.dim() == 2 && g.size(0) == g0.size(0), "every grad_out must be [T, o_k] with one T");
    SPARSECL_CHECK(g.scalar_type() == g0.scalar_type(), "grad_outs must share one dtype");
    check_same_device(g, "grad_out", g0);
    outs.push_back(g.size(1));
  }
  const Widths w = check_widths(in_widths, outs, in_features, weight.size(0));
  const at::Tensor m = opt_mask(mask);
  at::Tensor dx = at::empty({g0.size(0), in_features}, g0.options());
  const std::vector<int64_t> ib = bounds(w.in), ob = bounds(w.out);
  int64_t c0 = 0;
  for (int64_t c1 : ib) {
    at::Tensor dxc = dx.narrow(1, c0, c1 - c0);
    bool started = false;
    // consecutive row segments read by the same widths form one GEMM
    for (const auto& run : runs(w, ob, [&](size_t k, int64_t r1) { return w.in[k] >= c1 && w.out[k] >= r1; })) {
      mm_nn(dxc, sum_grads(grad_outs, run.ks, run.lo, run.hi), block(weight, run.lo, run.hi, c0, c1),
            opt_block(m, run.lo, run.hi, c0, c1), started);
      started = true;
    }
    if (!started) dxc.zero_();
    c0 = c1;
  }
  dx.narrow(1, c0, in_features - c0).zero_();
  return dx;
}

void linear_multi_dw_(at::TensorList grad_outs, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                      at::IntArrayRef in_widths, const at::Tensor& grad_weight, bool cuda) {
  SPARSECL_CHECK(grad_outs.size() == in_widths.size(), "got ", grad_outs.size(), " grad_outs for ", in_widths.size(),
                 " widths");
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D, got ", x.sizes());
  check_weight(grad_weight, mask, x, 2, cuda);
  check_grad_weight(grad_weight, x, 2);
  std::vector<int64_t> outs;
  for (const auto& g : grad_outs) {
    SPARSECL_CHECK(g.dim() == 2 && g.size(0) == x.size(0), "every grad_out must be [T, o_k] with x's T=", x.size(0),
                   ", got ", g.sizes());
    SPARSECL_CHECK(g.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
    check_same_device(g, "grad_out", x);
    outs.push_back(g.size(1));
  }
  const Widths w = check_widths(in_widths, outs, std::min(x.size(1), grad_weight.size(1)), grad_weight.size(0));
  const at::Tensor m = opt_mask(mask);
  const std::vector<int64_t> ib = bounds(w.in);
  int64_t r0 = 0;
  for (int64_t r1 : bounds(w.out)) {
    // consecutive column segments written by the same widths form one GEMM
    for (const auto& run : runs(w, ib, [&](size_t k, int64_t c1) { return w.in[k] >= c1 && w.out[k] >= r1; }))
      mm_tn_acc(block(grad_weight, r0, r1, run.lo, run.hi), sum_grads(grad_outs, run.ks, r0, r1),
                x.narrow(1, run.lo, run.hi - run.lo), opt_block(m, r0, r1, run.lo, run.hi));
    r0 = r1;
  }
}

// conv2d as implicit GEMM over im2col columns [N, i*kh*kw, L]: per sample, y[n]^T = cols[n]^T @ W2^T
// with W2 = W[:o, :i] viewed as [o, i*kh*kw] (a view when the weight is contiguous).
namespace {

struct ConvGeom {
  int64_t kh, kw;
  std::vector<int64_t> stride, padding, dilation;
};

ConvGeom check_conv(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation) {
  check_conv_args(stride, padding, dilation);
  return {weight.size(2), weight.size(3), stride.vec(), padding.vec(), dilation.vec()};
}

// Whether [i, kh, kw] of t are packed, so W[:o, :i] flattens to a [o, i*kh*kw] view.
bool is_flat_view(const at::Tensor& t) {
  return t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
}

// [o, i*kh*kw] view of t[:o, :i] (a copy only when t's inner dims are not contiguous).
at::Tensor flat(const at::Tensor& t, int64_t o, int64_t i) {
  at::Tensor s = t.narrow(0, 0, o).narrow(1, 0, i);
  const int64_t k = t.size(2) * t.size(3);
  if (is_flat_view(t)) return s.as_strided({o, i * k}, {t.stride(0), 1}, s.storage_offset());
  return s.reshape({o, i * k});
}


at::MemoryFormat format_of(const at::Tensor& t) { return t.suggest_memory_format(); }

}  // namespace

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& mask, int64_t out_channels, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, bool cuda) {
  SPARSECL_CHECK(x.dim() == 4, "x must be 4-D [N, C, H, W], got ", x.sizes());
  check_weight(weight, mask, x, 4, cuda);
  check_bias(bias, weight, x);
  check_width(x.size(1), weight.size(1), "x's channels");
  check_width(out_channels, weight.size(0), "out_channels");
  const ConvGeom g = check_conv(weight, stride, padding, dilation);
  const int64_t N = x.size(0), i = x.size(1), o = out_channels;
  const int64_t Ho = conv_out_size(x.size(2), g.kh, g.stride[0], g.padding[0], g.dilation[0]);
  const int64_t Wo = conv_out_size(x.size(3), g.kw, g.stride[1], g.padding[1], g.dilation[1]);
  SPARSECL_CHECK(Ho > 0 && Wo > 0, "output would be empty: input ", x.sizes(), " is smaller than the dilated kernel");
  const int64_t L = Ho * Wo;
  at::Tensor y = at::empty({N, o, Ho, Wo}, x.options());
  at::Tensor w2 = flat(weight, o, i);
  at::Tensor m2 = mask ? flat(*mask, o, i) : at::Tensor();
  if (bias) y.copy_(bias->narrow(0, 0, o).view({1, o, 1, 1}).expand({N, o, Ho, Wo}));
  else if (i == 0) y.zero_();  // no input channels: im2col rejects the empty input, the sum is empty
  if (N > 0 && o > 0 && i > 0) {
    at::Tensor cols = at::im2col(x.contiguous(), {g.kh, g.kw}, g.dilation, g.padding, g.stride);  // [N, i*k, L]
    at::Tensor y3 = y.view({N, o, L});
    for (int64_t n = 0; n < N; ++n) mm_nt(y3[n].t(), cols[n].t(), w2, m2, bias.has_value());
  }
  return y.contiguous(format_of(x));
}

at::Tensor conv2d_dx(const at::Tensor& grad_out, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                     at::IntArrayRef x_shape, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, bool cuda) {
  SPARSECL_CHECK(grad_out.dim() == 4, "grad_out must be 4-D, got ", grad_out.sizes());
  SPARSECL_CHECK(x_shape.size() == 4 && x_shape[0] == grad_out.size(0), "x_shape must be [N, C, H, W] with grad_out's N");
  check_weight(weight, mask, grad_out, 4, cuda);
  check_width(grad_out.size(1), weight.size(0), "grad_out's channels");
  check_width(x_shape[1], weight.size(1), "x's channels");
  const ConvGeom g = check_conv(weight, stride, padding, dilation);
  const int64_t N = x_shape[0], i = x_shape[1], o = grad_out.size(1);
  const int64_t Ho = conv_out_size(x_shape[2], g.kh, g.stride[0], g.padding[0], g.dilation[0]);
  const int64_t Wo = conv_out_size(x_shape[3], g.kw, g.stride[1], g.padding[1], g.dilation[1]);
  SPARSECL_CHECK(grad_out.size(2) == Ho && grad_out.size(3) == Wo, "grad_out spatial size ", grad_out.sizes(),
                 " does not match the convolution of x_shape ", x_shape);
  const int64_t L = Ho * Wo, K = i * g.kh * g.kw;
  if (N == 0 || i == 0) return at::zeros(x_shape, grad_out.options()).contiguous(format_of(grad_out));  // col2im rejects empty
  at::Tensor dcols = at::empty({N, K, L}, grad_out.options());
  at::Tensor w2 = flat(weight, o, i);
  at::Tensor m2 = mask ? flat(*mask, o, i) : at::Tensor();
  at::Tensor g3 = grad_out.contiguous().view({N, o, L});
  for (int64_t n = 0; n < N; ++n) mm_nn(dcols[n].t(), g3[n].t(), w2, m2, false);
  at::Tensor dx = at::col2im(dcols, {x_shape[2], x_shape[3]}, {g.kh, g.kw}, g.dilation, g.padding, g.stride);
  return dx.contiguous(format_of(grad_out));
}

void conv2d_dw_(const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& mask,
                const at::Tensor& grad_weight, at::IntArrayRef stride, at::IntArrayRef padding,
                at::IntArrayRef dilation, bool cuda) {
  SPARSECL_CHECK(x.dim() == 4 && grad_out.dim() == 4 && x.size(0) == grad_out.size(0),
                 "x and grad_out must be 4-D with one batch size, got ", x.sizes(), " and ", grad_out.sizes());
  check_weight(grad_weight, mask, x, 4, cuda);
  check_grad_weight(grad_weight, x, 4);
  SPARSECL_CHECK(grad_out.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_width(grad_out.size(1), grad_weight.size(0), "grad_out's channels");
  check_width(x.size(1), grad_weight.size(1), "x's channels");
  const ConvGeom g = check_conv(grad_weight, stride, padding, dilation);
  const int64_t N = x.size(0), i = x.size(1), o = grad_out.size(1);
  const int64_t Ho = conv_out_size(x.size(2), g.kh, g.stride[0], g.padding[0], g.dilation[0]);
  const int64_t Wo = conv_out_size(x.size(3), g.kw, g.stride[1], g.padding[1], g.dilation[1]);
  SPARSECL_CHECK(grad_out.size(2) == Ho && grad_out.size(3) == Wo, "grad_out spatial size ", grad_out.sizes(),
                 " does not match the convolution of x ", x.sizes());
  if (N == 0 || o == 0 || i == 0) return;
  const int64_t L = Ho * Wo;
  at::Tensor cols = at::im2col(x.contiguous(), {g.kh, g.kw}, g.dilation, g.padding, g.stride);
  at::Tensor g3 = grad_out.contiguous().view({N, o, L});
  at::Tensor m2 = mask ? flat(*mask, o, i) : at::Tensor();
  // accumulate into the grad's own memory when [o, i*k] is a view of it; else via an active-size temporary
  const bool direct = is_flat_view(grad_weight);
  at::Tensor gw2 = direct ? flat(grad_weight, o, i) : at::zeros({o, i * g.kh * g.kw}, x.options());
  for (int64_t n = 0; n < N; ++n) mm_tn_acc(gw2, g3[n].t(), cols[n].t(), m2);
  if (!direct) grad_weight.narrow(0, 0, o).narrow(1, 0, i).add_(gw2.view({o, i, g.kh, g.kw}));
}

}  // namespace slim

namespace {

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                      const c10::optional<at::Tensor>& m, int64_t o) {
  return slim::linear(x, w, b, m, o, false);
}
at::Tensor linear_dx_cpu(const at::Tensor& g, const at::Tensor& w, const c10::optional<at::Tensor>& m, int64_t i) {
  return slim::linear_dx(g, w, m, i, false);
}
void linear_dw_cpu(const at::Tensor& g, const at::Tensor& x, const c10::optional<at::Tensor>& m, const at::Tensor& gw) {
  slim::linear_dw_(g, x, m, gw, false);
}
std::vector<at::Tensor> multi_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                                  const c10::optional<at::Tensor>& m, at::IntArrayRef iw, at::IntArrayRef ow) {
  return slim::linear_multi(x, w, b, m, iw, ow, false);
}
at::Tensor multi_dx_cpu(at::TensorList g, const at::Tensor& w, const c10::optional<at::Tensor>& m,
                        at::IntArrayRef iw, int64_t i) {
  return slim::linear_multi_dx(g, w, m, iw, i, false);
}
void multi_dw_cpu(at::TensorList g, const at::Tensor& x, const c10::optional<at::Tensor>& m, at::IntArrayRef iw,
                  const at::Tensor& gw) {
  slim::linear_multi_dw_(g, x, m, iw, gw, false);
}
at::Tensor conv_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                    const c10::optional<at::Tensor>& m, int64_t o, at::IntArrayRef s, at::IntArrayRef p,
                    at::IntArrayRef d) {
  return slim::conv2d(x, w, b, m, o, s, p, d, false);
}
at::Tensor conv_dx_cpu(const at::Tensor& g, const at::Tensor& w, const c10::optional<at::Tensor>& m,
                       at::IntArrayRef xs, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  return slim::conv2d_dx(g, w, m, xs, s, p, d, false);
}
void conv_dw_cpu(const at::Tensor& g, const at::Tensor& x, const c10::optional<at::Tensor>& m, const at::Tensor& gw,
                 at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  slim::conv2d_dw_(g, x, m, gw, s, p, d, false);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("slimmable_linear", &linear_cpu);
  m.impl("slimmable_linear_dx", &linear_dx_cpu);
  m.impl("slimmable_linear_dw_", &linear_dw_cpu);
  m.impl("slimmable_linear_multi", &multi_cpu);
  m.impl("slimmable_linear_multi_dx", &multi_dx_cpu);
  m.impl("slimmable_linear_multi_dw_", &multi_dw_cpu);
  m.impl("slimmable_conv2d", &conv_cpu);
  m.impl("slimmable_conv2d_dx", &conv_dx_cpu);
  m.impl("slimmable_conv2d_dw_", &conv_dw_cpu);
}

}  // namespace sparsecl
