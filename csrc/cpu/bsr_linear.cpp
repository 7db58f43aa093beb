// Block-sparse linear on CPU: y = x @ W.T (+ bias) with W stored as BSR blocks values[k] = W[rb*B:, cb*B:].
// Three kernels: forward (parallel over block rows x token chunks), dX = dY @ W through the
// transposed index (parallel over block columns), and dValues = SDDMM only at active blocks.
// Features need not be multiples of B: edge blocks are clipped, their out-of-range entries are
// never read and their gradient is written as zero.
// float32 runs on the AVX-512 / AVX2 micro-kernels of microkernels.h (chosen at dispatch, see
// isa.h); float64 and the forced generic path run the scalar *_generic kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/microkernels.h"

namespace sparsecl {
namespace {

constexpr int64_t kTokenTile = 16;

void check_layout(const at::Tensor& values, const at::Tensor& ptr, const at::Tensor& idx, const at::Tensor& like) {
  SPARSECL_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, B, B], got ", values.sizes());
  check_index(ptr, "row_ptr", like);
  check_index(idx, "col_idx", like);
  SPARSECL_CHECK(idx.size(0) == values.size(0), "col_idx has ", idx.size(0), " entries but values has ", values.size(0),
                 " blocks");
}

// Pack block V ([ob x ib] of a B x B row-major block) transposed into vt[i * B + o].
template <typename T>
inline void pack_transposed(const T* v, int64_t B, int64_t ob, int64_t ib, T* vt) {
  for (int64_t o = 0; o < ob; ++o)
    for (int64_t i = 0; i < ib; ++i) vt[i * B + o] = v[o * B + i];
}

template <typename T>
void forward_generic(const T* x, int64_t n_tokens, int64_t in_f, const T* values, int64_t B, const int32_t* row_ptr,
                    const int32_t* col_idx, int64_t n_block_rows, int64_t out_f, const T* bias, T* y) {
  const int64_t n_tiles = (n_tokens + kTokenTile - 1) / kTokenTile;
  at::parallel_for(0, n_block_rows * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(kTokenTile * B), vt(B * B);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t rb = job / n_tiles, t0 = (job % n_tiles) * kTokenTile;
      const int64_t tn = std::min(kTokenTile, n_tokens - t0);
      const int64_t o0 = rb * B, ob = std::min(B, out_f - o0);
      for (int64_t t = 0; t < tn; ++t)
        for (int64_t o = 0; o < ob; ++o) acc[t * B + o] = bias ? bias[o0 + o] : T(0);
      for (int32_t k = row_ptr[rb]; k < row_ptr[rb + 1]; ++k) {
        const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, in_f - i0);
        pack_transposed(values + int64_t(k) * B * B, B, ob, ib, vt.data());
        for (int64_t t = 0; t < tn; ++t) {
          const T* xr = x + (t0 + t) * in_f + i0;
          T* a = acc.data() + t * B;
          for (int64_t i = 0; i < ib; ++i) {
            const T xv = xr[i];
            const T* w = vt.data() + i * B;
            for (int64_t o = 0; o < ob; ++o) a[o] += xv * w[o];
          }
        }
      }
      for (int64_t t = 0; t < tn; ++t) std::copy(acc.data() + t * B, acc.data() + t * B + ob, y + (t0 + t) * out_f + o0);
    }
  });
}

template <typename T>
void dx_generic(const T* dy, int64_t n_tokens, int64_t out_f, const T* values, int64_t B, const int32_t* t_row_ptr,
               const int32_t* t_col_idx, const int32_t* t_perm, int64_t n_block_cols, int64_t in_f, T* dx) {
  const int64_t n_tiles = (n_tokens + kTokenTile - 1) / kTokenTile;
  at::parallel_for(0, n_block_cols * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(kTokenTile * B);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t cb = job / n_tiles, t0 = (job % n_tiles) * kTokenTile;
      const int64_t tn = std::min(kTokenTile, n_tokens - t0);
      const int64_t i0 = cb * B, ib = std::min(B, in_f - i0);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int32_t j = t_row_ptr[cb]; j < t_row_ptr[cb + 1]; ++j) {
        const int64_t o0 = int64_t(t_col_idx[j]) * B, ob = std::min(B, out_f - o0);
        const T* v = values + int64_t(t_perm[j]) * B * B;
        for (int64_t t = 0; t < tn; ++t) {
          const T* g = dy + (t0 + t) * out_f + o0;
          T* a = acc.data() + t * B;
          for (int64_t o = 0; o < ob; ++o) {
            const T gv = g[o];
            const T* w = v + o * B;
            for (int64_t i = 0; i < ib; ++i) a[i] += gv * w[i];
          }
        }
      }
      for (int64_t t = 0; t < tn; ++t) std::copy(acc.data() + t * B, acc.data() + t * B + ib, dx + (t0 + t) * in_f + i0);
    }
  });
}

template <typename T>
void dw_generic(const T* dy, const T* x, int64_t n_tokens, int64_t out_f, int64_t in_f, int64_t B,
               const int32_t* row_idx, const int32_t* col_idx, int64_t nnzb, T* dv) {
  at::parallel_for(0, nnzb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, out_f - o0);
      const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, in_f - i0);
      T* out = dv + k * B * B;
      std::fill(out, out + B * B, T(0));
      for (int64_t t = 0; t < n_tokens; ++t) {
        const T* g = dy + t * out_f + o0;
        const T* xr = x + t * in_f + i0;
        for (int64_t o = 0; o < ob; ++o) {
          const T gv = g[o];
          T* a = out + o * B;
          for (int64_t i = 0; i < ib; ++i) a[i] += gv * xr[i];
        }
      }
    }
  });
}

using cpu::MicroKernels;
using cpu::TileArgs;

// The gather-GEMM pass shared by forward and dX. `src_panels` is the source [T, src_f] packed into
// token panels (the micro-kernel's A operand); destination block row r has the active blocks
// ptr[r]..ptr[r+1], on source block idx[j], with weight rows `block(j)` ([B source][B destination],
// row-major). Each (block row, token chunk) item sweeps its panels in strips of the widest tile,
// accumulating over all the row's blocks in registers before one store into dst [T, dst_f] (+ bias).
// Items run in the order of cpu::make_panel_schedule.
template <typename BlockFn>
void gather_gemm_pass(const MicroKernels& mk, const float* src_panels, int64_t T, int64_t src_f, int64_t dst_f,
                      int64_t B, const int32_t* ptr, const int32_t* idx, int64_t n_dst_blocks, BlockFn block,
                      const float* bias, float* dst) {
  const int64_t MR = mk.panel_rows, n_panels = (T + MR - 1) / MR, strip = int64_t(mk.max_vectors) * mk.width;
  const int64_t nnzb = ptr[n_dst_blocks], n_src_blocks = (src_f + B - 1) / B;
  const auto sched = cpu::make_panel_schedule(n_dst_blocks, n_panels, nnzb, n_src_blocks, MR * src_f * 4,
                                                nnzb * B * B * 4, T * dst_f * 4);
  cpu::balanced_parallel_for(
      sched.items(), [&](int64_t i) { return sched.cost_before(ptr, i); },
      [&](int64_t begin, int64_t end) {
        std::vector<const float*> a, b;
        std::vector<int> depth;
        for (int64_t item = begin; item < end; ++item) {
          const int64_t r = sched.row(item), chunk = sched.chunk(item);
          const int64_t k0 = ptr[r], nk = ptr[r + 1] - k0;
          const int64_t d0 = r * B, db = std::min(B, dst_f - d0);
          a.resize(nk);
          b.resize(nk);
          depth.resize(nk);
          for (int64_t p = 0; p < nk; ++p) depth[p] = int(std::min(B, src_f - int64_t(idx[k0 + p]) * B));
          const int64_t p_end = std::min(n_panels, (chunk + 1) * sched.per_chunk);
          for (int64_t panel = chunk * sched.per_chunk; panel < p_end; ++panel) {
            const float* spp = src_panels + panel * MR * src_f;
            for (int64_t p = 0; p < nk; ++p) a[p] = spp + int64_t(idx[k0 + p]) * B * MR;
            for (int64_t s = 0; s < db; s += strip) {
              const int nc = int(std::min(strip, db - s));
              for (int64_t p = 0; p < nk; ++p) b[p] = block(k0 + p) + s;
              const TileArgs t{a.data(), b.data(), depth.data(), int(nk), MR, B, bias ? bias + d0 + s : nullptr,
                               false, dst + panel * MR * dst_f + d0 + s, dst_f, int(std::min(MR, T - panel * MR)), nc};
              mk.tile(t, (nc + mk.width - 1) / mk.width);
            }
          }
        }
      });
}

// Forward: x packed once into token panels and W.T once, block by block (wt[k][i][o] = V_k[o][i], so one
// vector load reads a row of W.T), then the shared gather-GEMM pass over the block rows.
void forward_simd(const MicroKernels& mk, const float* x, int64_t T, int64_t in_f, const float* values, int64_t B,
                  const int32_t* row_ptr, const int32_t* col_idx, int64_t n_rb, int64_t out_f, const float* bias,
                  float* y) {
  if (T == 0 || n_rb == 0) return;
  const int64_t MR = mk.panel_rows, n_panels = (T + MR - 1) / MR;
  const int64_t nnzb = row_ptr[n_rb];
  float* xp = cpu::workspace(0, n_panels * MR * in_f);
  float* wt = cpu::workspace(1, nnzb * B * B);
  cpu::pack_panels(x, T, in_f, in_f, MR, xp);
  at::parallel_for(0, n_rb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t rb = begin; rb < end; ++rb) {
      const int64_t ob = std::min(B, out_f - rb * B);
      for (int64_t k = row_ptr[rb]; k < row_ptr[rb + 1]; ++k)
        pack_transposed(values + k * B * B, B, ob, std::min(B, in_f - int64_t(col_idx[k]) * B), wt + k * B * B);
    }
  });
  gather_gemm_pass(mk, xp, T, in_f, out_f, B, row_ptr, col_idx, n_rb, [&](int64_t k) { return wt + k * B * B; },
                   bias, y);
}

// dX = dY @ W: grad_out packed into token panels; the shared pass over the block columns reads the rows of
// V in place (through t_perm), masked at clipped columns.
void dx_simd(const MicroKernels& mk, const float* dy, int64_t T, int64_t out_f, const float* values, int64_t B,
             const int32_t* t_row_ptr, const int32_t* t_col_idx, const int32_t* t_perm, int64_t n_cb, int64_t in_f,
             float* dx) {
  if (T == 0 || n_cb == 0) return;
  const int64_t MR = mk.panel_rows, n_panels = (T + MR - 1) / MR;
  float* dyp = cpu::workspace(0, n_panels * MR * out_f);
  cpu::pack_panels(dy, T, out_f, out_f, MR, dyp);
  gather_gemm_pass(mk, dyp, T, out_f, in_f, B, t_row_ptr, t_col_idx, n_cb,
                   [&](int64_t j) { return values + int64_t(t_perm[j]) * B * B; }, nullptr, dx);
}

// Tokens per pass of the SDDMM: the dY and x rows of one pass stay cached across the block's
// row groups even when power-of-two row strides map them onto few cache sets.
constexpr int64_t kSddmmTokens = 64;

// dValues[k] = dY[:, rows of k].T @ x[:, cols of k]: outer-product tiles (rows of dY broadcast,
// rows of x as vectors) reduced over tokens in passes of kSddmmTokens, blocks split evenly over
// threads in index order (consecutive blocks share a block row, so its dY columns stay cached).
void dw_simd(const MicroKernels& mk, const float* dy, const float* x, int64_t T, int64_t out_f, int64_t in_f,
             int64_t B, const int32_t* row_idx, const int32_t* col_idx, int64_t nnzb, float* dv) {
  if (T == 0) {
    std::fill(dv, dv + nnzb * B * B, 0.f);
    return;
  }
  const int64_t R = mk.outer_rows, strip = int64_t(mk.max_vectors) * mk.width;
  cpu::balanced_parallel_for(nnzb, [](int64_t i) { return i; }, [&](int64_t begin, int64_t end) {
    for (int64_t t0 = 0; t0 < T; t0 += kSddmmTokens) {
      const int depth = int(std::min(kSddmmTokens, T - t0));
      for (int64_t k = begin; k < end; ++k) {
        const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, out_f - o0);
        const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, in_f - i0);
        float* out = dv + k * B * B;
        if (t0 == 0 && (ob < B || ib < B)) std::fill(out, out + B * B, 0.f);
        for (int64_t og = 0; og < ob; og += R) {
          for (int64_t s = 0; s < ib; s += strip) {
            const int nc = int(std::min(strip, ib - s));
            const float* a = dy + t0 * out_f + o0 + og;
            const float* b = x + t0 * in_f + i0 + s;
            const TileArgs t{&a, &b, &depth, 1, out_f, in_f, nullptr, t0 > 0, out + og * B + s, B,
                             int(std::min(R, ob - og)), nc};
            mk.outer_tile(t, (nc + mk.width - 1) / mk.width);
          }
        }
      }
    }
  });
}

at::Tensor bsr_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_features, const c10::optional<at::Tensor>& bias) {
  SPARSECL_CHECK(x.dim() == 2, "x must be 2-D [tokens, in_features], got ", x.sizes());
  check_float(x, "x", false);
  SPARSECL_CHECK(values.scalar_type() == x.scalar_type(), "values dtype ", values.scalar_type(), " != x dtype ",
                 x.scalar_type());
  check_same_device(values, "values", x);
  check_layout(values, row_ptr, col_idx, x);
  const int64_t B = values.size(1), in_f = x.size(1);
  SPARSECL_CHECK(out_features >= 0, "out_features must be >= 0");
  const int64_t n_rb = (out_features + B - 1) / B, n_cb = (in_f + B - 1) / B;
  check_ptr_array(row_ptr, n_rb, values.size(0), "row_ptr");
  check_ids_below(col_idx, n_cb, "col_idx");
  if (bias) {
    SPARSECL_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [", out_features, "], got ",
                   bias->sizes());
    SPARSECL_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype must match x");
    check_same_device(*bias, "bias", x);
  }
  auto xc = x.contiguous();
  auto vc = values.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto y = at::empty({x.size(0), out_features}, x.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  if (mk) {
    forward_simd(*mk, xc.data_ptr<float>(), x.size(0), in_f, vc.data_ptr<float>(), B, row_ptr.data_ptr<int32_t>(),
                 col_idx.data_ptr<int32_t>(), n_rb, out_features, bias ? bc.data_ptr<float>() : nullptr,
                 y.data_ptr<float>());
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_linear_cpu", [&] {
    forward_generic<scalar_t>(xc.data_ptr<scalar_t>(), x.size(0), in_f, vc.data_ptr<scalar_t>(), B,
                             row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), n_rb, out_features,
                             bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
  });
  return y;
}

at::Tensor bsr_linear_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, int64_t in_features) {
  SPARSECL_CHECK(dy.dim() == 2, "grad_out must be 2-D [tokens, out_features], got ", dy.sizes());
  check_float(dy, "grad_out", false);
  SPARSECL_CHECK(values.scalar_type() == dy.scalar_type(), "values dtype must match grad_out");
  check_same_device(values, "values", dy);
  check_layout(values, t_row_ptr, t_col_idx, dy);
  check_index(t_perm, "t_perm", dy);
  SPARSECL_CHECK(t_perm.size(0) == values.size(0), "t_perm must have nnzb entries");
  const int64_t B = values.size(1), out_f = dy.size(1);
  SPARSECL_CHECK(in_features >= 0, "in_features must be >= 0");
  const int64_t n_cb = (in_features + B - 1) / B, n_rb = (out_f + B - 1) / B;
  check_ptr_array(t_row_ptr, n_cb, values.size(0), "t_row_ptr");
  check_ids_below(t_col_idx, n_rb, "t_col_idx");
  check_ids_below(t_perm, values.size(0), "t_perm");
  auto gc = dy.contiguous();
  auto vc = values.contiguous();
  auto dx = at::empty({dy.size(0), in_features}, dy.options());
  const MicroKernels* mk = dy.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  if (mk) {
    dx_simd(*mk, gc.data_ptr<float>(), dy.size(0), out_f, vc.data_ptr<float>(), B, t_row_ptr.data_ptr<int32_t>(),
            t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), n_cb, in_features, dx.data_ptr<float>());
    return dx;
  }
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "bsr_linear_dx_cpu", [&] {
    dx_generic<scalar_t>(gc.data_ptr<scalar_t>(), dy.size(0), out_f, vc.data_ptr<scalar_t>(), B,
                        t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(), n_cb,
                        in_features, dx.data_ptr<scalar_t>());
  });
  return dx;
}

at::Tensor bsr_linear_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, int64_t block_size) {
  SPARSECL_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0),
                 "grad_out [T, out] and x [T, in] must be 2-D with equal T, got ", dy.sizes(), " and ", x.sizes());
  check_float(x, "x", false);
  SPARSECL_CHECK(dy.scalar_type() == x.scalar_type(), "grad_out dtype must match x");
  check_same_device(dy, "grad_out", x);
  check_index(row_idx, "row_idx", x);
  check_index(col_idx, "col_idx", x);
  SPARSECL_CHECK(row_idx.size(0) == col_idx.size(0), "row_idx and col_idx lengths differ");
  SPARSECL_CHECK(block_size > 0, "block_size must be positive");
  const int64_t B = block_size, nnzb = col_idx.size(0);
  check_ids_below(row_idx, (dy.size(1) + B - 1) / B, "row_idx");
  check_ids_below(col_idx, (x.size(1) + B - 1) / B, "col_idx");
  auto gc = dy.contiguous();
  auto xc = x.contiguous();
  auto dv = at::empty({nnzb, B, B}, x.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  if (mk) {
    dw_simd(*mk, gc.data_ptr<float>(), xc.data_ptr<float>(), x.size(0), dy.size(1), x.size(1), B,
            row_idx.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nnzb, dv.data_ptr<float>());
    return dv;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_linear_dw_cpu", [&] {
    dw_generic<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), x.size(0), dy.size(1), x.size(1), B,
                        row_idx.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nnzb, dv.data_ptr<scalar_t>());
  });
  return dv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("bsr_linear", &bsr_linear_cpu);
  m.impl("bsr_linear_dx", &bsr_linear_dx_cpu);
  m.impl("bsr_linear_dw", &bsr_linear_dw_cpu);
}

}  // namespace sparsecl
