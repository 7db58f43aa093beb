// Fused prune-regrow on CPU (design.md §3), segmented over layers, in place on weights and masks.
// Per layer both selections are "the n smallest items by (key, flat index)" over order-preserving
// unsigned keys of the scores: drop key = asc(prune), grow key = ~asc(grow), NaN -> asc 0, so NaN is
// dropped first and grown last, and the index breaks ties. Selection is a radix select: one pass over
// the layer builds a histogram of the top key bits for both sets (and compacts the few drop candidates),
// a second pass over the grow candidates splits them at the threshold bin, and nth_element orders only
// the threshold bin. Writes touch only the dropped and grown positions. Layers run in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "checks.h"

namespace sparsecl {
namespace {

template <typename S> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

// Ascending order-preserving key; NaN -> 0 (below -inf); -0.0 and +0.0 share one key.
template <typename S>
inline typename KeyOf<S>::type asc_key(S v) {
  using K = typename KeyOf<S>::type;
  constexpr K top = K(1) << (sizeof(K) * 8 - 1);
  if (std::isnan(v)) return 0;
  if (v == S(0)) v = S(0);
  K u;
  std::memcpy(&u, &v, sizeof(K));
  return (u & top) ? ~u : (u | top);
}

template <typename K>
struct Item {
  K key;
  int64_t idx;
  bool operator<(const Item& o) const { return key < o.key || (key == o.key && idx < o.idx); }
  bool operator<=(const Item& o) const { return !(o < *this); }
};

// Threshold bin of a histogram: smallest bin t with (#items in bins <= t) >= n. Returns (t, #items below t).
inline std::pair<int64_t, int64_t> threshold_bin(const std::vector<int64_t>& hist, int64_t n) {
  int64_t below = 0;
  for (size_t t = 0; t < hist.size(); ++t) {
    if (below + hist[t] >= n) return {int64_t(t), below};
    below += hist[t];
  }
  return {int64_t(hist.size()) - 1, below};
}

// The n smallest of `ties` (all in the threshold bin) appended to `out`; returns the n-th smallest.
template <typename K>
Item<K> take_smallest(std::vector<Item<K>>& ties, int64_t n, std::vector<int64_t>& out) {
  std::nth_element(ties.begin(), ties.begin() + (n - 1), ties.end());
  for (int64_t j = 0; j < n; ++j) out.push_back(ties[j].idx);
  return ties[n - 1];
}

struct LayerView {
  void* w;
  bool* mask;
  const bool* elig;
  const void* ps;
  const void* gs;
  int64_t numel, n, rows, cols, mask_cols, B;
};

template <typename W>
inline void zero_position(const LayerView& L, int64_t i) {
  W* w = static_cast<W*>(L.w);
  if (L.B == 1) {
    w[i] = W(0);
    return;
  }
  const int64_t r0 = (i / L.mask_cols) * L.B, c0 = (i % L.mask_cols) * L.B;
  const int64_t r1 = std::min(L.rows, r0 + L.B), c1 = std::min(L.cols, c0 + L.B);
  for (int64_t r = r0; r < r1; ++r) std::fill(w + r * L.cols + c0, w + r * L.cols + c1, W(0));
}

template <typename W, typename S>
int64_t prune_regrow_layer(const LayerView& L) {
  using K = typename KeyOf<S>::type;
  constexpr int kKeyBits = sizeof(K) * 8;
  const S* ps = static_cast<const S*>(L.ps);
  const S* gs = static_cast<const S*>(L.gs);
  const int64_t N = L.numel;
  if (L.n == 0 || N == 0) return 0;
  // histogram width follows the layer size: small layers do not pay for 64K bins
  int hb = 4;
  while (hb < 16 && (int64_t(1) << hb) < N) ++hb;
  const int shift = kKeyBits - hb;
  const K flip = ~K(0);

  // pass 1: drop candidates compacted, grow keys of E \ A histogrammed
  std::vector<int64_t> dhist(size_t(1) << hb, 0), ghist(size_t(1) << hb, 0);
  std::vector<Item<K>> drop_cands;
  for (int64_t i = 0; i < N; ++i) {
    if (L.elig && !L.elig[i]) continue;
    if (L.mask[i]) {
      const K k = asc_key(ps[i]);
      drop_cands.push_back({k, i});
      ++dhist[k >> shift];
    } else {
      ++ghist[(asc_key(gs[i]) ^ flip) >> shift];
    }
  }
  const int64_t n = std::min<int64_t>(L.n, int64_t(drop_cands.size()));
  if (n == 0) return 0;

  // drop set D: split the compacted candidates at the threshold bin, order only that bin
  std::vector<int64_t> drop;
  drop.reserve(n);
  {
    auto [t, below] = threshold_bin(dhist, n);
    std::vector<Item<K>> ties;
    for (const auto& c : drop_cands) {
      const int64_t b = int64_t(c.key >> shift);
      if (b < t) drop.push_back(c.idx);
      else if (b == t) ties.push_back(c);
    }
    take_smallest(ties, n - below, drop);
  }
  drop_cands = {};

  // grow set G over E \ (A \ D): D joins the histogram, then one pass splits at the threshold bin
  for (int64_t d : drop) ++ghist[(asc_key(gs[d]) ^ flip) >> shift];
  std::vector<int64_t> grow;
  grow.reserve(n);
  Item<K> pivot;
  {
    auto [t, below] = threshold_bin(ghist, n);
    std::vector<Item<K>> ties;
    auto visit = [&](int64_t i) {
      const K k = asc_key(gs[i]) ^ flip;
      const int64_t b = int64_t(k >> shift);
      if (b < t) grow.push_back(i);
      else if (b == t) ties.push_back({k, i});
    };
    for (int64_t i = 0; i < N; ++i)
      if (!L.mask[i] && (!L.elig || L.elig[i])) visit(i);
    for (int64_t d : drop) visit(d);
    pivot = take_smallest(ties, n - below, grow);
  }

  // apply: D \ G cleared; G \ A set (their masks are still false: D \ G is cleared first, D ∩ G untouched)
  int64_t changed = 0;
  for (int64_t d : drop) {
    if (Item<K>{asc_key(gs[d]) ^ flip, d} <= pivot) continue;  // regrown: keeps mask and weight
    L.mask[d] = false;
    zero_position<W>(L, d);
    ++changed;
  }
  for (int64_t g : grow) {
    if (L.mask[g]) continue;  // in D ∩ G
    L.mask[g] = true;
    zero_position<W>(L, g);
    ++changed;
  }
  return changed;
}

template <typename W, typename S>
void run_layers(const std::vector<LayerView>& views, const std::vector<int64_t>& order, int64_t* out) {
  const int64_t L = int64_t(views.size());
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(L, at::get_num_threads())));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t j = 0; j < L; ++j) out[order[j]] = prune_regrow_layer<W, S>(views[order[j]]);
}

int64_t block_size_of(const at::Tensor& w, const at::Tensor& m, int64_t l) {
  if (w.sizes() == m.sizes()) return 1;
  TORCH_CHECK(w.dim() == 2 && m.dim() == 2, "layer ", l, ": mask shape ", m.sizes(),
              " must equal the weight shape ", w.sizes(), " (element granularity) or its 2-D block grid");
  for (int64_t B = 2; B <= 2 * std::max<int64_t>(1, std::max(w.size(0), w.size(1))); B *= 2)
    if ((w.size(0) + B - 1) / B == m.size(0) && (w.size(1) + B - 1) / B == m.size(1)) return B;
  TORCH_CHECK(false, "layer ", l, ": mask shape ", m.sizes(), " is neither the weight shape ", w.sizes(),
              " nor its block grid (ceil(out/B), ceil(in/B)) for a power-of-two B");
}

at::Tensor prune_regrow_cpu(at::TensorList weights, at::TensorList masks, at::TensorList prune_scores,
                            at::TensorList grow_scores, const at::Tensor& counts, at::TensorList eligible) {
  const int64_t L = int64_t(weights.size());
  TORCH_CHECK(int64_t(masks.size()) == L && int64_t(prune_scores.size()) == L && int64_t(grow_scores.size()) == L,
              "weights, masks, prune_scores and grow_scores must have one entry per layer, got ", L, ", ",
              masks.size(), ", ", prune_scores.size(), ", ", grow_scores.size());
  TORCH_CHECK(eligible.empty() || int64_t(eligible.size()) == L, "eligible must be empty or have one entry per layer (",
              L, "), got ", eligible.size());
  TORCH_CHECK(counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == L,
              "counts must be int64 [", L, "], got ", counts.scalar_type(), " ", counts.sizes());
  TORCH_CHECK(counts.device().is_cpu(), "counts must be on the CPU for the CPU kernel, got ", counts.device());
  auto counts_c = counts.contiguous();
  const int64_t* cnt = counts_c.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) TORCH_CHECK(cnt[l] >= 0, "counts must be >= 0, got ", cnt[l], " for layer ", l);

  std::vector<at::Tensor> w_work(L), m_work(L), keep;
  std::vector<LayerView> views(L);
  at::ScalarType wtype = L ? weights[0].scalar_type() : at::kFloat, stype = L ? prune_scores[0].scalar_type() : at::kFloat;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor &w = weights[l], &m = masks[l], &p = prune_scores[l], &g = grow_scores[l];
    TORCH_CHECK(w.device().is_cpu() && m.device().is_cpu() && p.device().is_cpu() && g.device().is_cpu(),
                "layer ", l, ": all tensors must be on the CPU");
    TORCH_CHECK(w.is_floating_point(), "layer ", l, ": weight must be floating point, got ", w.scalar_type());
    TORCH_CHECK(w.scalar_type() == wtype, "all weights must share one dtype: layer ", l, " is ", w.scalar_type(),
                ", layer 0 is ", wtype);
    TORCH_CHECK(m.scalar_type() == at::kBool, "layer ", l, ": mask must be bool, got ", m.scalar_type());
    check_float(p, "prune_score", false);
    TORCH_CHECK(p.scalar_type() == stype && g.scalar_type() == stype, "all scores must share one dtype (layer ", l,
                ": ", p.scalar_type(), ", ", g.scalar_type(), "; layer 0: ", stype, ")");
    TORCH_CHECK(p.sizes() == m.sizes() && g.sizes() == m.sizes(), "layer ", l, ": scores ", p.sizes(), " and ",
                g.sizes(), " must have the mask's shape ", m.sizes());
    const int64_t B = block_size_of(w, m, l);
    const bool* e = nullptr;
    if (!eligible.empty()) {
      const at::Tensor& el = eligible[l];
      TORCH_CHECK(el.scalar_type() == at::kBool, "layer ", l, ": eligible must be bool, got ", el.scalar_type());
      TORCH_CHECK(el.sizes() == m.sizes(), "layer ", l, ": eligible shape ", el.sizes(), " != mask shape ", m.sizes());
      TORCH_CHECK(el.device().is_cpu(), "layer ", l, ": eligible must be on the CPU");
      keep.push_back(el.contiguous());
      e = keep.back().data_ptr<bool>();
    }
    w_work[l] = w.contiguous();
    m_work[l] = m.contiguous();
    keep.push_back(p.contiguous());
    const void* pp = keep.back().data_ptr();
    keep.push_back(g.contiguous());
    const void* gp = keep.back().data_ptr();
    views[l] = {w_work[l].data_ptr(), m_work[l].data_ptr<bool>(), e, pp, gp, m.numel(), cnt[l],
                w.dim() == 2 ? w.size(0) : 1, w.dim() == 2 ? w.size(1) : w.numel(), m.dim() == 2 ? m.size(1) : 1, B};
  }
  for (int64_t l = 0; l < L; ++l)
    TORCH_CHECK(m_work[l].numel() < (int64_t(1) << 62), "layer ", l, " is too large");

  auto changed = at::zeros({L}, counts.options());
  int64_t* out = changed.data_ptr<int64_t>();
  // largest layers first, handed out one at a time, so two big layers do not share a thread
  std::vector<int64_t> order(L);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return views[a].numel > views[b].numel; });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wtype, "prune_regrow_cpu", [&] {
    using W = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(stype, "prune_regrow_cpu_scores", [&] { run_layers<W, scalar_t>(views, order, out); });
  });
  for (int64_t l = 0; l < L; ++l) {
    if (!weights[l].is_same(w_work[l])) const_cast<at::Tensor&>(weights[l]).copy_(w_work[l]);
    if (!masks[l].is_same(m_work[l])) const_cast<at::Tensor&>(masks[l]).copy_(m_work[l]);
  }
  return changed;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) { m.impl("prune_regrow", &prune_regrow_cpu); }

}  // namespace sparsecl
