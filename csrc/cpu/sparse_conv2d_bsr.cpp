// bsr_conv2d on CPU: block-channel sparsity. Blocks are B output x B input channels with all kh*kw taps
// kept together, values [nnzb, B, B, kh, kw], indexed by a BlockSparseLayout over the [out_ch, in_ch] grid.
// fp32 on AVX2/AVX-512: padded-width micro-kernel tiles (sparse_conv2d_pw.h's padding and stride phases,
// the shared micro-kernels of cpu/microkernels.h); otherwise channels-last gather-GEMM: for a tile of
// output pixels and one output-channel block, every tap of every active block is a dense [P x B] @ [B x B]
// product on gathered input rows. dX is the same pass on grad_out through the transposed index; dValues is
// computed only at active blocks. Outputs are returned in the memory format of x (forward) / grad_out (dX).
#include "cpu/sparse_conv2d_pw.h"

#include <torch/library.h>

namespace sparsecl {
namespace conv_cpu {
namespace {

// ---- block-channel kernels (channels-last) -------------------------------------------------------

constexpr int64_t kPix = 32;  // output pixels per tile

// acc[p][0:B] += sum_k rows[p][k] * w[k][0:B] for p < np (np <= kPix), k < kb. Four pixels share
// each weight row load (register blocking); out-of-image rows point at zeros.
template <typename T, int B>
__attribute__((always_inline)) inline void gather_gemm(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                       T* acc) {
  int64_t p = 0;
  for (; p + 4 <= np; p += 4) {
    T a0[B], a1[B], a2[B], a3[B];
    for (int o = 0; o < B; ++o) {
      a0[o] = acc[(p + 0) * B + o]; a1[o] = acc[(p + 1) * B + o];
      a2[o] = acc[(p + 2) * B + o]; a3[o] = acc[(p + 3) * B + o];
    }
    const T *r0 = rows[p], *r1 = rows[p + 1], *r2 = rows[p + 2], *r3 = rows[p + 3];
    for (int64_t k = 0; k < kb; ++k) {
      const T* wk = w + k * B;
      const T x0 = r0[k], x1 = r1[k], x2 = r2[k], x3 = r3[k];
      for (int o = 0; o < B; ++o) {
        const T wv = wk[o];
        a0[o] += x0 * wv; a1[o] += x1 * wv; a2[o] += x2 * wv; a3[o] += x3 * wv;
      }
    }
    for (int o = 0; o < B; ++o) {
      acc[(p + 0) * B + o] = a0[o]; acc[(p + 1) * B + o] = a1[o];
      acc[(p + 2) * B + o] = a2[o]; acc[(p + 3) * B + o] = a3[o];
    }
  }
  for (; p < np; ++p) {
    const T* r = rows[p];
    T* a = acc + p * B;
    for (int64_t k = 0; k < kb; ++k) {
      const T xv = r[k];
      const T* wk = w + k * B;
      for (int o = 0; o < B; ++o) a[o] += xv * wk[o];
    }
  }
}

template <typename T, int B>
void gather_gemm_generic(const T* const* rows, int64_t np, const T* w, int64_t kb, T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}
template <typename T, int B>
__attribute__((target("avx2,fma"))) void gather_gemm_avx2(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                           T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}
template <typename T, int B>
__attribute__((target("avx512f"))) void gather_gemm_avx512(const T* const* rows, int64_t np, const T* w, int64_t kb,
                                                            T* acc) {
  gather_gemm<T, B>(rows, np, w, kb, acc);
}

template <typename T>
using GemmFn = void (*)(const T* const*, int64_t, const T*, int64_t, T*);

template <typename T, int B>
GemmFn<T> pick_gemm() {
  switch (cpu::runtime_isa_enum()) {
    case cpu::Isa::kAvx512: return &gather_gemm_avx512<T, B>;
    case cpu::Isa::kAvx2: return &gather_gemm_avx2<T, B>;
    default: return &gather_gemm_generic<T, B>;
  }
}

template <typename T>
GemmFn<T> gemm_for(int64_t B) {
  switch (B) {
    case 16: return pick_gemm<T, 16>();
    case 32: return pick_gemm<T, 32>();
    case 64: return pick_gemm<T, 64>();
  }
  SPARSECL_CHECK(false, "block size must be 16, 32 or 64, got ", B);
}

// One gather-GEMM pass shared by forward and dX. `dst` is [N*Hd*Wd, Cd] channels-last; `panels` hold
// per block [taps][B (source ch)][B (dest ch)] packed weights, zero-padded at clipped edges. For
// destination channel block db the active blocks are j in ptr[db]..ptr[db+1] (panel perm[j], source
// channel block sb[j]). `src_row(n, y, x, r, s)` is the source row for destination pixel (n, y, x)
// and tap (r, s), or nullptr outside the image.
template <typename T, typename RowFn>
void gather_pass(int64_t N, int64_t Hd, int64_t Wd, int64_t Cd, int64_t Cs, int64_t kh, int64_t kw, int64_t B,
                 const T* panels, const int32_t* ptr, const int32_t* sb, const int32_t* perm, const T* bias, T* dst,
                 RowFn src_row) {
  const int64_t taps = kh * kw, n_db = (Cd + B - 1) / B;
  const int64_t M = N * Hd * Wd, n_tiles = (M + kPix - 1) / kPix;
  const GemmFn<T> gemm = gemm_for<T>(B);
  const std::vector<T> zeros(B, T(0));
  at::parallel_for(0, n_db * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(kPix * B);
    std::vector<const T*> rows(kPix);
    int64_t pn[kPix], py[kPix], px[kPix];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t db = job % n_db, m0 = (job / n_db) * kPix, np = std::min(kPix, M - m0);
      const int64_t d0 = db * B, dbw = std::min(B, Cd - d0);
      for (int64_t p = 0; p < np; ++p) {
        const int64_t m = m0 + p;
        pn[p] = m / (Hd * Wd);
        py[p] = (m / Wd) % Hd;
        px[p] = m % Wd;
        for (int64_t o = 0; o < B; ++o) acc[p * B + o] = (bias && o < dbw) ? bias[d0 + o] : T(0);
      }
      for (int32_t j = ptr[db]; j < ptr[db + 1]; ++j) {
        const int64_t sbw = std::min(B, Cs - int64_t(sb[j]) * B), s0 = int64_t(sb[j]) * B;
        const T* panel = panels + int64_t(perm ? perm[j] : j) * taps * B * B;
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t r = t / kw, s = t % kw;
          for (int64_t p = 0; p < np; ++p) {
            const T* row = src_row(pn[p], py[p], px[p], r, s);
            rows[p] = row ? row + s0 : zeros.data();
          }
          gemm(rows.data(), np, panel + t * B * B, sbw, acc.data());
        }
      }
      for (int64_t p = 0; p < np; ++p) std::copy(acc.data() + p * B, acc.data() + p * B + dbw, dst + (m0 + p) * Cd + d0);
    }
  });
}

// Pack values [nnzb, B(o), B(i), kh, kw] into panels [nnzb, taps, B, B]: (i, o) order when
// `o_fast`, else (o, i). Clipped edge entries are zero.
template <typename T>
void pack_panels(const T* v, int64_t nnzb, int64_t B, int64_t taps, bool o_fast, T* out) {
  at::parallel_for(0, nnzb, 16, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i)
          for (int64_t t = 0; t < taps; ++t) {
            const T val = v[((k * B + o) * B + i) * taps + t];
            out[((k * taps + t) * B + (o_fast ? i : o)) * B + (o_fast ? o : i)] = val;
          }
  });
}

// dValues at active blocks: dv[k, o, i, r, s] = sum over output pixels of dy[p, o0+o] * x[src(p, r, s), i0+i].
template <typename T>
void block_dw(const T* dy, const T* x, const Geom& g, int64_t B, const int32_t* row_idx, const int32_t* col_idx,
              int64_t nnzb, T* dv) {
  const int64_t taps = g.kh * g.kw;
  at::parallel_for(0, nnzb * taps, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(B * B);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t k = job / taps, t = job % taps, r = t / g.kw, s = t % g.kw;
      const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, g.O - o0);
      const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, g.C - i0);
      std::fill(acc.begin(), acc.end(), T(0));
      int64_t hlo, hhi, wlo, whi;
      valid_range(g.Ho, g.H, g.sh, g.ph, r * g.dh, hlo, hhi);
      valid_range(g.Wo, g.W, g.sw, g.pw, s * g.dw, wlo, whi);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t ho = hlo; ho < hhi; ++ho) {
          const int64_t h = ho * g.sh - g.ph + r * g.dh;
          for (int64_t wo = wlo; wo < whi; ++wo) {
            const int64_t w = wo * g.sw - g.pw + s * g.dw;
            const T* gr = dy + ((n * g.Ho + ho) * g.Wo + wo) * g.O + o0;
            const T* xr = x + ((n * g.H + h) * g.W + w) * g.C + i0;
            for (int64_t o = 0; o < ob; ++o) {
              const T gv = gr[o];
              T* a = acc.data() + o * B;
              for (int64_t i = 0; i < ib; ++i) a[i] += gv * xr[i];
            }
          }
        }
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i) dv[((k * B + o) * B + i) * taps + t] = acc[o * B + i];
    }
  });
}

// ---- block-channel fast path (fp32 on AVX2/AVX-512): padded-width micro-kernel tiles ---------------
// With the source padded NCHW, MR consecutive padded-width positions q of one channel are exactly
// the shared micro-kernel's A panel (a[kk*lda + r], lda = plane), so each (active block, tap) is one
// panel of a destination tile [MR positions x B channels]: the tile sums all of them in registers
// before one store, and positions in the garbage columns (x >= Wd) are dropped on store.
using cpu::MicroKernels;
using cpu::TileArgs;

// dst[n, d, pixel(y, x)] (out: [N, Cd, plane], channels-last when dst_cl, else NCHW; y < Hd, x < Wd) = bias +
// sum over active blocks j of destination block db (ptr[db]..ptr[db+1], source block sb[j], panel perm[j])
// and taps t with shift[t] >= 0 of panel_t(j) applied to src shifted by shift[t]. src: N images of `img`
// floats, Cs planes of `plane` floats each in rows of width Wq (zero padded, slack after the last).
// panels as pack_panels.
void pw_block_pass(const MicroKernels& mk, const float* src, int64_t img, int64_t plane, int64_t N, int64_t Wq,
                   int64_t Cd, int64_t Cs, int64_t B, const int64_t* shift, int64_t taps, const float* panels,
                   const int32_t* ptr, const int32_t* sb, const int32_t* perm, const float* bias, bool dst_cl,
                   const PwOut<float>& out) {
  const int64_t Hd = out.Ho, Wd = out.Wo;
  float* dst = out.y;
  const int64_t MR = mk.panel_rows, len = Hd * Wq, n_tiles = (len + MR - 1) / MR, n_db = (Cd + B - 1) / B;
  const int64_t strip = int64_t(mk.max_vectors) * mk.width, nnzb = ptr[n_db];
  auto cost_before = [&](int64_t i) {  // items in (image, block row, tile) order; cost = blocks + 1
    const int64_t n = i / (n_db * n_tiles), db = (i / n_tiles) % n_db, tile = i % n_tiles;
    if (n >= N) return N * (nnzb + n_db) * n_tiles;
    return n * (nnzb + n_db) * n_tiles + (int64_t(ptr[db]) + db) * n_tiles + tile * (ptr[db + 1] - ptr[db] + 1);
  };
  cpu::balanced_parallel_for(N * n_db * n_tiles, cost_before, [&](int64_t begin, int64_t end) {
    std::vector<const float*> a, b, base;
    std::vector<int> depth;
    std::vector<float> buf(MR * B);
    std::vector<int64_t> pix(MR);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (n_db * n_tiles), db = (item / n_tiles) % n_db, q0 = (item % n_tiles) * MR;
      const int64_t mr = std::min(MR, len - q0), d0 = db * B, dbw = std::min(B, Cd - d0);
      const int64_t most = (ptr[db + 1] - ptr[db]) * taps;
      a.resize(most);
      b.resize(most);
      base.resize(most);
      depth.resize(most);
      int64_t np = 0;
      for (int32_t j = ptr[db]; j < ptr[db + 1]; ++j) {
        const int64_t s0 = int64_t(sb[j]) * B, panel = perm ? perm[j] : j;
        for (int64_t t = 0; t < taps; ++t) {
          if (shift[t] < 0) continue;
          a[np] = src + n * img + s0 * plane + q0 + shift[t];
          base[np] = panels + (panel * taps + t) * B * B;
          depth[np++] = int(std::min(B, Cs - s0));
        }
      }
      for (int64_t s = 0; s < dbw; s += strip) {
        const int nc = int(std::min(strip, dbw - s));
        for (int64_t p = 0; p < np; ++p) b[p] = base[p] + s;
        const TileArgs t{a.data(), b.data(), depth.data(), int(np), plane, B, bias ? bias + d0 + s : nullptr,
                         false, buf.data() + s, B, int(mr), nc};
        mk.tile(t, (nc + mk.width - 1) / mk.width);
      }
      for (int64_t r = 0; r < mr; ++r) {
        const int64_t q = q0 + r, y = q / Wq, x = q % Wq;
        pix[r] = x < Wd ? out.pixel(y, x) : -1;
      }
      if (dst_cl) {
        for (int64_t r = 0; r < mr; ++r)
          if (pix[r] >= 0) std::copy(buf.data() + r * B, buf.data() + r * B + dbw, dst + (n * out.plane + pix[r]) * Cd + d0);
      } else {
        for (int64_t o = 0; o < dbw; ++o) {
          float* dp = dst + (n * Cd + d0 + o) * out.plane;
          for (int64_t r = 0; r < mr; ++r)
            if (pix[r] >= 0) dp[pix[r]] = buf[r * B + o];
        }
      }
    }
  });
}

// Positions of one SDDMM pass: the pass's grad_out and x rows stay in L1 across taps and row groups.
constexpr int64_t kPwDwRows = 64;

// dValues at active blocks: dv[k, o, i, t] = sum_n sum_q gw[n, q, o0+o] * xcl[n, q + shift[t], i0+i],
// gw: grad_out channels-last in padded-width rows ([N, len, O], zeros at x >= Wo), xcl: x padded
// channels-last ([N, plane, C], slack after). Outer-product tiles (grad_out rows broadcast, x rows as
// vectors) accumulated per block over all images, positions and taps in a [taps, B, B] buffer.
void pw_block_dw(const MicroKernels& mk, const float* gw, int64_t len, const float* xcl, int64_t plane, const Geom& g,
                 int64_t B, const int64_t* shift, const int32_t* row_idx, const int32_t* col_idx, int64_t nnzb,
                 float* dv) {
  const int64_t taps = g.kh * g.kw, R = mk.outer_rows, strip = int64_t(mk.max_vectors) * mk.width;
  cpu::balanced_parallel_for(nnzb, [](int64_t i) { return i; }, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(taps * B * B);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o0 = int64_t(row_idx[k]) * B, ob = std::min(B, g.O - o0);
      const int64_t i0 = int64_t(col_idx[k]) * B, ib = std::min(B, g.C - i0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t q0 = 0; q0 < len; q0 += kPwDwRows) {
          const int depth = int(std::min(kPwDwRows, len - q0));
          for (int64_t t = 0; t < taps; ++t)
            for (int64_t og = 0; og < ob; og += R)
              for (int64_t s = 0; s < ib; s += strip) {
                const int nc = int(std::min(strip, ib - s));
                const float* a = gw + (n * len + q0) * g.O + o0 + og;
                const float* b = xcl + (n * plane + q0 + shift[t]) * g.C + i0 + s;
                const TileArgs tl{&a, &b, &depth, 1, g.O, g.C, nullptr, true, acc.data() + (t * B + og) * B + s, B,
                                  int(std::min(R, ob - og)), nc};
                mk.outer_tile(tl, (nc + mk.width - 1) / mk.width);
              }
        }
      float* out = dv + k * B * B * taps;
      for (int64_t o = 0; o < B; ++o)
        for (int64_t i = 0; i < B; ++i)
          for (int64_t t = 0; t < taps; ++t) out[(o * B + i) * taps + t] = acc[(t * B + o) * B + i];
    }
  });
}

at::Tensor bsr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, int64_t out_channels, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d(x, values, row_ptr, col_idx, out_channels, bias, stride, padding, dilation);
  if (strided_pointwise(g))
    return bsr_conv2d_cpu(subsampled_input(x, g), values, row_ptr, col_idx, out_channels, bias, kOnes, kZeros, kOnes);
  const int64_t B = values.size(1);
  auto bc = bias ? bias->contiguous() : at::Tensor();
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  const PwSrc src(g, g.C);
  if (mk && pw_fits(src.n_src(), src.ps)) {
    const bool cl = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().memory_format(x.suggest_memory_format()));
    if (y.numel() == 0) return y;
    auto xn = x.contiguous();
    float* xp = cpu::workspace(0, g.N * src.img() + kPwSlack);
    pad_planes<float>(xn.data_ptr<float>(), g.N * g.C, g.H, g.W, g.ph, g.pw, src.Wq, src.ps, xp, kPwSlack, src.split);
    pack_panels<float>(values.contiguous().data_ptr<float>(), values.size(0), B, taps, true, panels.data_ptr<float>());
    std::vector<int64_t> shift(taps);
    for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, t / g.kw, t % g.kw);
    pw_block_pass(*mk, xp, src.img(), src.ps, g.N, src.Wq, g.O, g.C, B, shift.data(), taps, panels.data_ptr<float>(),
                  row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nullptr,
                  bias ? bc.data_ptr<float>() : nullptr, cl, PwOut<float>::whole(y.data_ptr<float>(), g.Ho, g.Wo));
    return y;
  }
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({g.N, g.O, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return in_format(y, x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_conv2d_cpu", [&] {
    pack_panels<scalar_t>(values.contiguous().data_ptr<scalar_t>(), values.size(0), B, taps, true,
                          panels.data_ptr<scalar_t>());
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    gather_pass<scalar_t>(g.N, g.Ho, g.Wo, g.O, g.C, g.kh, g.kw, B, panels.data_ptr<scalar_t>(),
                          row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), nullptr,
                          bias ? bc.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                          [&](int64_t n, int64_t ho, int64_t wo, int64_t r, int64_t s) -> const scalar_t* {
                            const int64_t h = ho * g.sh - g.ph + r * g.dh, w = wo * g.sw - g.pw + s * g.dw;
                            if (h < 0 || h >= g.H || w < 0 || w >= g.W) return nullptr;
                            return xp + ((n * g.H + h) * g.W + w) * g.C;
                          });
  });
  return in_format(y, x);
}

at::Tensor bsr_conv2d_dx_cpu(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& t_row_ptr,
                             const at::Tensor& t_col_idx, const at::Tensor& t_perm, at::IntArrayRef x_shape,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d_dx(dy, values, t_row_ptr, t_col_idx, t_perm, x_shape, stride, padding, dilation);
  if (strided_pointwise(g)) {
    auto sub = bsr_conv2d_dx_cpu(dy, values, t_row_ptr, t_col_idx, t_perm, {g.N, g.C, g.Ho, g.Wo}, kOnes, kZeros,
                                 kOnes);
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format())).zero_();
    subsample(dx, g).copy_(sub);
    return dx;
  }
  const int64_t B = values.size(1);
  const int64_t taps = g.kh * g.kw;
  auto panels = at::empty({values.size(0), taps, B, B}, values.options());
  const MicroKernels* mk = dy.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  const PwDxSrc src(g);
  const int64_t plane = src.Hg * src.Wg;
  if (mk && pw_fits(g.O, plane)) {  // grad_out padded as in csr_conv2d_dx_cpu, one pass per stride phase
    const bool cl = dy.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    auto dx = at::empty(x_shape, dy.options().memory_format(dy.suggest_memory_format()));
    if (dx.numel() == 0) return dx;
    auto gn = dy.contiguous();
    float* gp = cpu::workspace(0, g.N * g.O * plane + kPwSlack);
    pad_planes<float>(gn.data_ptr<float>(), g.N * g.O, g.Ho, g.Wo, src.top, src.left, src.Wg, plane, gp);
    pack_panels<float>(values.contiguous().data_ptr<float>(), values.size(0), B, taps, false, panels.data_ptr<float>());
    std::vector<int64_t> shift(taps);
    for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
      for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {
        for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, a, b, t / g.kw, t % g.kw);
        pw_block_pass(*mk, gp, g.O * plane, plane, g.N, src.Wg, g.C, g.O, B, shift.data(), taps,
                      panels.data_ptr<float>(), t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(),
                      t_perm.data_ptr<int32_t>(), nullptr, cl, src.out(g, a, b, dx.data_ptr<float>()));
      }
    return dx;
  }
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto dx = at::empty(x_shape, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (dx.numel() == 0) return in_format(dx, dy);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "bsr_conv2d_dx_cpu", [&] {
    pack_panels<scalar_t>(values.contiguous().data_ptr<scalar_t>(), values.size(0), B, taps, false,
                          panels.data_ptr<scalar_t>());
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    gather_pass<scalar_t>(g.N, g.H, g.W, g.C, g.O, g.kh, g.kw, B, panels.data_ptr<scalar_t>(),
                          t_row_ptr.data_ptr<int32_t>(), t_col_idx.data_ptr<int32_t>(), t_perm.data_ptr<int32_t>(),
                          nullptr, dx.data_ptr<scalar_t>(),
                          [&](int64_t n, int64_t h, int64_t w, int64_t r, int64_t s) -> const scalar_t* {
                            const int64_t hh = h + g.ph - r * g.dh, ww = w + g.pw - s * g.dw;
                            if (hh < 0 || ww < 0 || hh % g.sh || ww % g.sw) return nullptr;
                            const int64_t ho = hh / g.sh, wo = ww / g.sw;
                            if (ho >= g.Ho || wo >= g.Wo) return nullptr;
                            return gp + ((n * g.Ho + ho) * g.Wo + wo) * g.O;
                          });
  });
  return in_format(dx, dy);
}

at::Tensor bsr_conv2d_dw_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_idx,
                             const at::Tensor& col_idx, int64_t block_size, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geom g = check_bsr_conv2d_dw(dy, x, row_idx, col_idx, block_size, kernel_size, stride, padding, dilation);
  if (strided_pointwise(g))
    return bsr_conv2d_dw_cpu(dy, subsample(x, g), row_idx, col_idx, block_size, kernel_size, kOnes, kZeros, kOnes);
  const int64_t B = block_size;
  auto gc = dy.contiguous(at::MemoryFormat::ChannelsLast);
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto dv = at::empty({col_idx.size(0), B, B, g.kh, g.kw}, x.options());
  const MicroKernels* mk = x.scalar_type() == at::kFloat ? cpu::micro_kernels(cpu::active_isa()) : nullptr;
  if (mk && pw_dw_safe(x)) {  // x channels-last, split into stride phases of whole pixels
    const PwSrc src(g, 1);
    const int64_t len = g.Ho * src.Wq, taps = g.kh * g.kw;
    // x read up to (kw-1)*dw positions past its last padded plane by the garbage columns
    const int64_t slack = ((g.kw - 1) * g.dw + 1) * g.C + kPwSlack;
    float* xp = cpu::workspace(0, g.N * src.img() * g.C + slack);
    pad_planes<float>(xc.data_ptr<float>(), g.N, g.H, g.W, g.ph, g.pw, src.Wq, src.ps * g.C, xp, slack, src.split,
                      g.C);
    float* gp = cpu::workspace(1, g.N * len * g.O + kPwSlack);
    pad_planes<float>(gc.data_ptr<float>(), g.N, g.Ho, g.Wo * g.O, 0, 0, src.Wq * g.O, len * g.O, gp);
    std::vector<int64_t> shift(taps);
    for (int64_t t = 0; t < taps; ++t) shift[t] = src.tap_shift(g, t / g.kw, t % g.kw);
    pw_block_dw(*mk, gp, len, xp, src.img(), g, B, shift.data(), row_idx.data_ptr<int32_t>(),
                col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<float>());
    return dv;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsr_conv2d_dw_cpu", [&] {
    block_dw<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), g, B, row_idx.data_ptr<int32_t>(),
                       col_idx.data_ptr<int32_t>(), col_idx.size(0), dv.data_ptr<scalar_t>());
  });
  return dv;
}
}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("bsr_conv2d", &bsr_conv2d_cpu);
  m.impl("bsr_conv2d_dx", &bsr_conv2d_dx_cpu);
  m.impl("bsr_conv2d_dw", &bsr_conv2d_dw_cpu);
}

}  // namespace conv_cpu
}  // namespace sparsecl
