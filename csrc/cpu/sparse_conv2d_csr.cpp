// csr_conv2d on CPU: element sparsity over [out_ch, in_ch*kh*kw] (column c = (i*kh + r)*kw + s, PyTorch's
// weight order), values [nnz]. Computed NCHW as implicit GEMM in padded-width space (sparse_conv2d_pw.h):
// each nonzero adds v * (a shifted source plane) to its output plane, a tile of output positions of several
// images kept in registers across a row's nonzeros; dX is the same kernel on padded grad_out with the
// transposed index, one pass per stride phase of dx; dValues is one dot product per nonzero. Small output
// planes in fp32 run batch-in-lanes instead (sparse_conv2d_bil.h: images in the vector lanes; dValues up
// to 32x32 outputs). Indices past
// int32 offsets take general per-nonzero loops. Outputs are returned in the memory format of x (forward) /
// grad_out (dX).
#include "cpu/sparse_conv2d_bil.h"

#include <torch/library.h>

namespace sparsecl {
namespace conv_cpu {
namespace {


// y[n, o] plane = bias + sum over nonzeros (o, c) of v * shifted x[n, i] plane.
template <typename T>
void csr_forward(const T* x, const Geom& g, const T* values, const int32_t* row_ptr, const int32_t* col_idx,
                 const T* bias, T* y) {
  const int64_t plane = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.O, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / g.O, o = job % g.O;
      T* acc = y + job * plane;
      std::fill(acc, acc + plane, bias ? bias[o] : T(0));
      for (int32_t k = row_ptr[o]; k < row_ptr[o + 1]; ++k) {
        int64_t i, r, s, hlo, hhi, wlo, whi;
        decode(col_idx[k], g, i, r, s);
        const T v = values[k];
        valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
        valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
        const T* xp = x + (n * g.C + i) * g.H * g.W;
        const int64_t woff = s * g.dw - g.pw;
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const T* xr = xp + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
          T* a = acc + ho * g.Wo;
          if (g.sw == 1) {
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo] += v * xr[wo];
          } else {
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo] += v * xr[wo * g.sw];
          }
        }
      }
    }
  });
}

// dx[n, i] plane = sum over taps (r, s) and nonzeros (o, (i, r, s)) of v * dy[n, o] scattered back.
template <typename T>
void csr_dx(const T* dy, const Geom& g, const T* values, const int32_t* t_row_ptr, const int32_t* t_col_idx,
            const int32_t* t_perm, T* dx) {
  const int64_t plane = g.H * g.W, taps = g.kh * g.kw;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / g.C, i = job % g.C;
      T* acc = dx + job * plane;
      std::fill(acc, acc + plane, T(0));
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t c = i * taps + t, r = t / g.kw, s = t % g.kw;
        int64_t hlo, hhi, wlo, whi;
        valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
        valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
        const int64_t woff = s * g.dw - g.pw;
        for (int32_t j = t_row_ptr[c]; j < t_row_ptr[c + 1]; ++j) {
          const int64_t o = t_col_idx[j];
          const T v = values[t_perm[j]];
          const T* gp = dy + (n * g.O + o) * g.Ho * g.Wo;
          for (int64_t ho = hlo; ho < hhi; ++ho) {
            T* a = acc + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
            const T* gr = gp + ho * g.Wo;
            for (int64_t wo = wlo; wo < whi; ++wo) a[wo * g.sw] += v * gr[wo];
          }
        }
      }
    }
  });
}

// dv[k] = sum over n and output pixels of dy[n, o_k] * x[n, i_k] shifted by tap (r_k, s_k).
template <typename T>
void csr_dw(const T* dy, const T* x, const Geom& g, const int32_t* row_idx, const int32_t* col_idx, int64_t nnz,
            T* dv) {
  at::parallel_for(0, nnz, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      int64_t i, r, s, hlo, hhi, wlo, whi;
      const int64_t o = row_idx[k];
      decode(col_idx[k], g, i, r, s);
      valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
      valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
      const int64_t woff = s * g.dw - g.pw;
      T sum = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* gp = dy + (n * g.O + o) * g.Ho * g.Wo;
        const T* xp = x + (n * g.C + i) * g.H * g.W;
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const T* gr = gp + ho * g.Wo;
          const T* xr = xp + (ho * g.sh - g.ph + r * g.dh) * g.W + woff;
          for (int64_t wo = wlo; wo < whi; ++wo) sum += gr[wo] * xr[wo * g.sw];
        }
      }
      dv[k] = sum;
    }
  });
}

at::Tensor csr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, at::IntArrayRef kernel_size,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d(x, values, row_ptr, col_idx, out_channels, kernel_size, bias, stride, padding,
                                  dilation);
  if (strided_pointwise(g))
    return csr_conv2d_cpu(subsampled_input(x, g), values, row_ptr, col_idx, out_channels, kernel_size, bias, kOnes, kZeros,
                          kOnes);
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options());
  if (bil_routes(x, g)) {
    bil_csr_forward(xc.data_ptr<float>(), g, vc.data_ptr<float>(), row_ptr.data_ptr<int32_t>(),
                    col_idx.data_ptr<int32_t>(), bias ? bc.data_ptr<float>() : nullptr, y.data_ptr<float>());
    return in_format(y, x);
  }
  const PwSrc src(g, g.C);
  const bool fast = pw_fits(src.n_src(), src.ps);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_cpu", [&] {
    const scalar_t* bp = bias ? bc.data_ptr<scalar_t>() : nullptr;
    if (!fast) {
      csr_forward<scalar_t>(xc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), row_ptr.data_ptr<int32_t>(),
                            col_idx.data_ptr<int32_t>(), bp, y.data_ptr<scalar_t>());
      return;
    }
    at::Tensor hold;
    scalar_t* xp = pw_scratch<scalar_t>(0, g.N * src.img() + kPwSlack, hold, x.options());
    pad_planes<scalar_t>(xc.data_ptr<scalar_t>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack,
                         src.split);
    std::vector<int32_t> off(values.size(0));
    pw_forward_offsets(col_idx.data_ptr<int32_t>(), nullptr, values.size(0), g, src, off.data());
    pw_spmm<scalar_t>(xp, src.img(), src.ps, src.n_src(), g.N, g.O, row_ptr.data_ptr<int32_t>(), 1, off.data(),
                      vc.data_ptr<scalar_t>(), bp, src.Wq,
                      PwOut<scalar_t>::whole(y.data_ptr<scalar_t>(), g.Ho, g.Wo));
  });
  return in_format(y, x);
}

at::Tensor csr_conv2d_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, kernel_size, stride, padding,
                                     dilation);
  if (strided_pointwise(g)) {
    auto sub = csr_conv2d_dx_cpu(dy, values, t_row_ptr, t_col_idx, t_perm, {g.N, g.C, g.Ho, g.Wo}, kernel_size,
                                 kOnes, kZeros, kOnes);
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format())).zero_();
    subsample(dx, g).copy_(sub);
    return dx;
  }
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty(x_shape, dy.options());
  if (bil_routes(dy, g)) {
    bil_csr_dx(gc.data_ptr<float>(), g, vc.data_ptr<float>(), t_row_ptr.data_ptr<int32_t>(),
               t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), dx.data_ptr<float>());
    return in_format(dx, dy);
  }
  const PwDxSrc src(g);
  const int64_t taps = g.kh * g.kw, plane = src.Hg * src.Wg;
  const bool fast = pw_fits(g.O, plane);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_conv2d_dx_cpu", [&] {
    const int32_t *tp = t_row_ptr.data_ptr<int32_t>(), *tc = t_col_idx.data_ptr<int32_t>(),
                  *tperm = t_perm.data_ptr<int32_t>();
    if (!fast) {
      csr_dx<scalar_t>(gc.data_ptr<scalar_t>(), g, vc.data_ptr<scalar_t>(), tp, tc, tperm, dx.data_ptr<scalar_t>());
      return;
    }
    at::Tensor hold;
    scalar_t* gp = pw_scratch<scalar_t>(0, g.N * g.O * plane + kPwSlack, hold, dy.options());
    pad_planes<scalar_t>(gc.data_ptr<scalar_t>(), g.N * g.O, g.Ho, g.Wo, src.top, src.left, src.Wg, plane, gp);
    std::vector<int32_t> ptr(g.C + 1), off(values.size(0));
    std::vector<scalar_t> val(values.size(0));
    std::vector<int64_t> shift(taps);
    const scalar_t* v = vc.data_ptr<scalar_t>();
    for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
      for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {  // one stride phase of dx: the taps that reach it
        for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, a, b, t / g.kw, t % g.kw);
        int32_t n = 0;
        for (int64_t i = 0; i < g.C; ++i) {
          ptr[i] = n;
          for (int64_t t = 0; t < taps; ++t) {
            if (shift[t] < 0) continue;
            for (int32_t j = tp[i * taps + t]; j < tp[i * taps + t + 1]; ++j, ++n) {
              off[n] = int32_t(tc[j] * plane + shift[t]);
              val[n] = v[tperm[j]];
            }
          }
        }
        ptr[g.C] = n;
        pw_spmm<scalar_t>(gp, g.O * plane, plane, g.O, g.N, g.C, ptr.data(), 1, off.data(), val.data(), nullptr,
                          src.Wg, src.out(g, a, b, dx.data_ptr<scalar_t>()));
      }
  });
  return in_format(dx, dy);
}

at::Tensor csr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_csr_conv2d_dw(dy, x, row_idx, col_idx, kernel_size, stride, padding, dilation);
  if (strided_pointwise(g))
    return csr_conv2d_dw_cpu(dy, subsample(x, g), row_idx, col_idx, kernel_size, kOnes, kZeros, kOnes);
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  auto dv = at::empty({col_idx.size(0)}, x.options());
  const int64_t nnz = col_idx.size(0);
  const bool bil = bil_routes(x, g, /*dvalues=*/true), safe = (bil && bil_dw_exact(g)) || pw_dw_safe(x);
  if (bil && safe) {
    bil_csr_dw(gc.data_ptr<float>(), xc.data_ptr<float>(), g, row_idx.data_ptr<int32_t>(),
               col_idx.data_ptr<int32_t>(), nnz, dv.data_ptr<float>());
    return dv;
  }
  const PwSrc src(g, g.C);
  const bool fast = pw_fits(src.n_src(), src.ps) && safe;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_dw_cpu", [&] {
    const int32_t *ri = row_idx.data_ptr<int32_t>(), *ci = col_idx.data_ptr<int32_t>();
    if (!fast) {
      csr_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, ri, ci, nnz, dv.data_ptr<scalar_t>());
      return;
    }
    // entries grouped by row (a stable counting sort: the identity for a layout's CSR order)
    std::vector<int32_t> ptr(g.O + 1, 0), order(nnz);
    for (int64_t k = 0; k < nnz; ++k) ++ptr[ri[k] + 1];
    for (int64_t o = 0; o < g.O; ++o) ptr[o + 1] += ptr[o];
    {
      std::vector<int32_t> next(ptr.begin(), ptr.end() - 1);
      for (int64_t k = 0; k < nnz; ++k) order[next[ri[k]]++] = int32_t(k);
    }
    std::vector<int32_t> off(nnz);
    pw_forward_offsets(ci, order.data(), nnz, g, src, off.data());
    const PwKernels<scalar_t> kk = pick_pw<scalar_t>(g.Ho * src.Wq);
    const int64_t tile = int64_t(kk.nt) * kk.lanes, lp = (g.Ho * src.Wq + tile - 1) / tile * tile;
    at::Tensor hold_x, hold_g;
    scalar_t* xp = pw_scratch<scalar_t>(0, g.N * src.img() + kPwSlack, hold_x, x.options());
    scalar_t* gp = pw_scratch<scalar_t>(1, g.N * g.O * lp + kPwSlack, hold_g, x.options());
    pad_planes<scalar_t>(xc.data_ptr<scalar_t>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack,
                         src.split);
    pad_planes<scalar_t>(gc.data_ptr<scalar_t>(), g.N * g.O, g.Ho, g.Wo, 0, 0, src.Wq, lp, gp);
    std::vector<scalar_t> dvo(nnz);
    pw_sddmm<scalar_t>(xp, src.img(), src.ps, src.n_src(), gp, lp, g.N, g.O, ptr.data(), off.data(), kk, dvo.data());
    scalar_t* d = dv.data_ptr<scalar_t>();
    for (int64_t j = 0; j < nnz; ++j) d[order[j]] = dvo[j];
  });
  return dv;
}
}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("csr_conv2d", &csr_conv2d_cpu);
  m.impl("csr_conv2d_dx", &csr_conv2d_dx_cpu);
  m.impl("csr_conv2d_dw", &csr_conv2d_dw_cpu);
}

}  // namespace conv_cpu
}  // namespace sparsecl
