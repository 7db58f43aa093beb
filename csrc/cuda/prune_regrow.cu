// Fused prune-regrow on CUDA (design.md §3): segmented radix select over all layers at once.
// Each item has a unique 64-bit rank: (order-preserving score key << 32) | flat index, with
// drop key = asc(prune) and grow key = ~asc(grow) (NaN -> asc 0), so "the n smallest ranks" is the
// contract's selection with its tie and NaN rules. The n-th smallest rank of every layer is found
// digit by digit (8 bits per pass, 8 passes): a histogram kernel (grid.y = layer) counts the digit of
// the items whose higher digits equal the prefix found so far, then a one-block-per-layer kernel picks
// the digit. Drop runs first; grow candidates (E and (not A or dropped)) are recomputed from the drop
// threshold. A final kernel writes masks and zeroes weights. Scores are converted to float exactly
// (fp16/bf16/fp32); fp64 scores are rejected here.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "checks.h"
#include "prune_keys.h"

namespace sparsecl {
namespace {

constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = 64 / kDigitBits;
constexpr int kThreads = 256;

struct Layer {
  void* w;
  bool* mask;
  const bool* elig;
  const void* ps;
  const void* gs;
  int64_t numel, rows, cols, mask_cols, B;
};

struct State {  // per layer, per selection
  unsigned long long prefix;  // rank bits decided so far
  long long k;                // rank (1-based) still to find below the decided prefix
  long long n;                // clipped count
};

// keys from prune_keys.h, shared with the CPU kernel; scores are widened to float exactly first
template <typename S>
__device__ __forceinline__ unsigned long long drop_rank(const Layer& L, int64_t i) {
  return keys::rank32(keys::drop_key(static_cast<float>(static_cast<const S*>(L.ps)[i])), uint64_t(i));
}

template <typename S>
__device__ __forceinline__ unsigned long long grow_rank(const Layer& L, int64_t i) {
  return keys::rank32(keys::grow_key(static_cast<float>(static_cast<const S*>(L.gs)[i])), uint64_t(i));
}

// Is i in D? (requires the drop selection to be final: prefix == the n-th smallest rank)
template <typename S>
__device__ __forceinline__ bool in_drop(const Layer& L, const State& d, int64_t i) {
  return d.n > 0 && L.mask[i] && (!L.elig || L.elig[i]) && drop_rank<S>(L, i) <= d.prefix;
}

// which = 0: drop candidates (A and E); 1: grow candidates (E and (not A or in D)).
template <typename S>
__device__ __forceinline__ bool candidate(const Layer& L, const State& drop, int which, int64_t i,
                                          unsigned long long* rank) {
  if (L.elig && !L.elig[i]) return false;
  if (which == 0) {
    if (!L.mask[i]) return false;
    *rank = drop_rank<S>(L, i);
    return true;
  }
  if (L.mask[i] && !in_drop<S>(L, drop, i)) return false;
  *rank = grow_rank<S>(L, i);
  return true;
}

template <typename S>
__global__ void histogram_kernel(const Layer* layers, const State* drop, const State* sel, int which, int pass,
                                 unsigned long long* hist) {
  __shared__ unsigned int h[kBins];
  const int l = blockIdx.y;
  const Layer L = layers[l];
  const State st = sel[l], dst = drop[l];
  if ((pass > 0 && st.n == 0) || (which == 1 && dst.n == 0)) return;
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const int shift = 64 - kDigitBits * (pass + 1);
  const unsigned long long high_mask = pass == 0 ? 0ull : (~0ull << (64 - kDigitBits * pass));
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < L.numel; i += int64_t(gridDim.x) * blockDim.x) {
    unsigned long long r;
    if (candidate<S>(L, dst, which, i, &r) && (r & high_mask) == st.prefix) atomicAdd(&h[(r >> shift) & (kBins - 1)], 1u);
  }
  __syncthreads();
  unsigned long long* out = hist + (int64_t(l) * kPasses + pass) * kBins;
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (h[b]) atomicAdd(out + b, static_cast<unsigned long long>(h[b]));
}

// One thread per layer: choose this pass's digit. Pass 0 also clips n (drop: to |A ∩ E|; grow: the
// drop's clipped n, always available since D itself is a grow candidate).
__global__ void select_kernel(int n_layers, const long long* counts, const State* drop, State* sel, int which,
                              int pass, const unsigned long long* hist) {
  const int l = blockIdx.x * blockDim.x + threadIdx.x;
  if (l >= n_layers) return;
  State st = sel[l];
  const unsigned long long* h = hist + (int64_t(l) * kPasses + pass) * kBins;
  if (pass == 0) {
    unsigned long long total = 0;
    for (int b = 0; b < kBins; ++b) total += h[b];
    st.prefix = 0;
    st.n = which == 0 ? (counts[l] < (long long)total ? counts[l] : (long long)total) : drop[l].n;
    st.k = st.n;
  }
  if (st.n > 0) {
    unsigned long long below = 0;
    int b = 0;
    for (; b < kBins - 1; ++b) {
      if (below + h[b] >= (unsigned long long)st.k) break;
      below += h[b];
    }
    st.k -= (long long)below;
    st.prefix |= static_cast<unsigned long long>(b) << (64 - kDigitBits * (pass + 1));
  }
  sel[l] = st;
}

template <typename W, typename S>
__global__ void apply_kernel(const Layer* layers, const State* drop, const State* grow, unsigned long long* changed) {
  const int l = blockIdx.y;
  const Layer L = layers[l];
  const State d = drop[l], g = grow[l];
  if (d.n == 0) return;
  unsigned int local = 0;
  // (row, col) of i in a 2-D block mask advance with i, so the loop has no 64-bit division: i = row * mc + col
  // holds at every step (col + step_col < 2 * mc, so one carry suffices)
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, mc = L.mask_cols > 0 ? L.mask_cols : 1;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t row = i / mc, col = i % mc;
  const int64_t step_row = stride / mc, step_col = stride % mc;
  for (; i < L.numel; i += stride, row += step_row, col += step_col, row += col >= mc, col -= col >= mc ? mc : 0) {
    if (L.elig && !L.elig[i]) continue;
    const bool a = L.mask[i];
    const bool dropped = in_drop<S>(L, d, i);
    const bool grown = (!a || dropped) && grow_rank<S>(L, i) <= g.prefix;
    if (dropped == grown) continue;  // untouched, or dropped and regrown (keeps mask and weight)
    // here: D \ G (true -> false) or G \ A (false -> true)
    L.mask[i] = grown;
    ++local;
    W* w = static_cast<W*>(L.w);
    if (L.B == 1) {
      w[i] = W(0);
    } else {
      const int64_t r0 = row * L.B, c0 = col * L.B;
      const int64_t r1 = min(L.rows, r0 + L.B), c1 = min(L.cols, c0 + L.B);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) w[r * L.cols + c] = W(0);
    }
  }
  if (local) atomicAdd(changed + l, static_cast<unsigned long long>(local));
}

at::Tensor prune_regrow_cuda(at::TensorList weights, at::TensorList masks, at::TensorList prune_scores,
                             at::TensorList grow_scores, const at::Tensor& counts, at::TensorList eligible) {
  const int64_t L = int64_t(weights.size());
  SPARSECL_CHECK(int64_t(masks.size()) == L && int64_t(prune_scores.size()) == L && int64_t(grow_scores.size()) == L,
                 "weights, masks, prune_scores and grow_scores must have one entry per layer");
  SPARSECL_CHECK(eligible.empty() || int64_t(eligible.size()) == L, "eligible must be empty or have one entry per layer");
  SPARSECL_CHECK(counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == L,
                 "counts must be int64 [", L, "], got ", counts.scalar_type(), " ", counts.sizes());
  SPARSECL_CHECK(L <= 65535, "at most 65535 layers per call");
  if (L == 0) return at::zeros({0}, counts.options());
  const at::Device dev = weights[0].device();
  SPARSECL_CHECK(counts.device().is_cpu() || counts.device() == dev, "counts must be on the CPU or on ", dev);
  auto counts_cpu = counts.to(at::kCPU).contiguous();
  for (int64_t l = 0; l < L; ++l)
    SPARSECL_CHECK(counts_cpu.data_ptr<int64_t>()[l] >= 0, "counts must be >= 0 (layer ", l, ")");
  c10::cuda::CUDAGuard guard(dev);
  const at::ScalarType wtype = weights[0].scalar_type(), stype = prune_scores[0].scalar_type();
  std::vector<at::Tensor> w_work(L), m_work(L), keep;
  std::vector<Layer> host(L);
  int64_t max_numel = 1;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor &w = weights[l], &m = masks[l], &p = prune_scores[l], &g = grow_scores[l];
    SPARSECL_CHECK(w.device() == dev && m.device() == dev && p.device() == dev && g.device() == dev, "layer ", l,
                   ": all tensors must be on ", dev);
    SPARSECL_CHECK(w.scalar_type() == wtype && w.is_floating_point(), "weights must be floating point and share one dtype");
    SPARSECL_CHECK(m.scalar_type() == at::kBool, "layer ", l, ": mask must be bool, got ", m.scalar_type());
    SPARSECL_CHECK(p.scalar_type() == stype && g.scalar_type() == stype, "all scores must share one dtype");
    SPARSECL_CHECK(stype == at::kFloat || stype == at::kHalf || stype == at::kBFloat16,
                   "CUDA prune_regrow supports float32/float16/bfloat16 scores, got ", stype);
    SPARSECL_CHECK(p.sizes() == m.sizes() && g.sizes() == m.sizes(), "layer ", l, ": scores must have the mask's shape");
    SPARSECL_CHECK(m.numel() < (int64_t(1) << 32), "layer ", l, " has 2^32 or more positions");
    const int64_t B = block_size_of(w, m, l);
    const bool* e = nullptr;
    if (!eligible.empty()) {
      SPARSECL_CHECK(eligible[l].scalar_type() == at::kBool && eligible[l].sizes() == m.sizes() &&
                      eligible[l].device() == dev, "layer ", l, ": eligible must be bool of the mask shape on ", dev);
      keep.push_back(eligible[l].contiguous());
      e = keep.back().data_ptr<bool>();
    }
    w_work[l] = w.contiguous();
    m_work[l] = m.contiguous();
    keep.push_back(p.contiguous());
    const void* pp = keep.back().data_ptr();
    keep.push_back(g.contiguous());
    const void* gp = keep.back().data_ptr();
    host[l] = {w_work[l].data_ptr(), m_work[l].data_ptr<bool>(), e, pp, gp, m.numel(),
               w.dim() == 2 ? w.size(0) : 1, w.dim() == 2 ? w.size(1) : w.numel(), m.dim() == 2 ? m.size(1) : 1, B};
    max_numel = std::max(max_numel, m.numel());
  }
  auto opts = weights[0].options();
  auto layers_t = at::empty({int64_t(L * sizeof(Layer))}, opts.dtype(at::kByte));
  auto states = at::zeros({int64_t(2 * L * sizeof(State))}, opts.dtype(at::kByte));
  auto hist = at::zeros({2, L, kPasses, kBins}, opts.dtype(at::kLong));
  auto counts_dev = counts_cpu.to(dev);
  auto changed = at::zeros({L}, opts.dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  auto host_bytes = at::empty({int64_t(L * sizeof(Layer))}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host_bytes.data_ptr(), host.data(), L * sizeof(Layer));
  layers_t.copy_(host_bytes, /*non_blocking=*/true);
  const Layer* d_layers = reinterpret_cast<const Layer*>(layers_t.data_ptr());
  State* d_drop = reinterpret_cast<State*>(states.data_ptr());
  State* d_grow = d_drop + L;
  auto* h = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  const dim3 grid(unsigned(std::min<int64_t>((max_numel + kThreads - 1) / kThreads, 1024)), unsigned(L));
  const int sel_blocks = int((L + 127) / 128);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, stype, "prune_regrow_cuda_scores", [&] {
    using S = scalar_t;
    for (int which = 0; which < 2; ++which) {
      State* sel = which == 0 ? d_drop : d_grow;
      unsigned long long* hw = h + int64_t(which) * L * kPasses * kBins;
      for (int pass = 0; pass < kPasses; ++pass) {
        histogram_kernel<S><<<grid, kThreads, 0, stream>>>(d_layers, d_drop, sel, which, pass, hw);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        select_kernel<<<sel_blocks, 128, 0, stream>>>(int(L), reinterpret_cast<const long long*>(counts_dev.data_ptr<int64_t>()),
                                                      d_drop, sel, which, pass, hw);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wtype, "prune_regrow_cuda_weights", [&] {
      apply_kernel<scalar_t, S><<<grid, kThreads, 0, stream>>>(
          d_layers, d_drop, d_grow, reinterpret_cast<unsigned long long*>(changed.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  for (int64_t l = 0; l < L; ++l) {
    if (!weights[l].is_same(w_work[l])) weights[l].copy_(w_work[l]);
    if (!masks[l].is_same(m_work[l])) masks[l].copy_(m_work[l]);
  }
  return changed.to(counts.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CUDA, m) { m.impl("prune_regrow", &prune_regrow_cuda); }

}  // namespace sparsecl
