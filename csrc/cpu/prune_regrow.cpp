// Fused prune-regrow on CPU (design.md §3), segmented over layers, in place on weights and masks.
// Both selections are "the n smallest ranks" (prune_keys.h). Per layer:
//  1. a sample of 64 spread runs of 128 positions guesses, per set, a key bound that the n best
//     candidates very likely fall under (small layers take every candidate);
//  2. ONE pass over mask, eligible and both scores (chunks of all layers in parallel; AVX-512 or AVX2
//     where available) counts |A ∩ E| and compacts, in index order, the drop candidates (A ∩ E) and the
//     grow candidates (E \ A) whose key is within the bound: a few % of the layer;
//  3. the exact n-th smallest rank of each list is found by a small radix select on the list (D's grow
//     keys join the grow list: a dropped position may regrow); a list shorter than n means the guess
//     was short, and only then that set's candidates are collected again without a bound;
//  4. the writes touch only D \ G and G \ A, in index order.
// Memory traffic is one read of mask + scores plus the changed positions of mask and weight.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <numeric>
#include <cstring>
#include <omp.h>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPARSECL_PR_X86 1
#endif

#include "checks.h"
#include "cpu/isa.h"
#include "prune_keys.h"

namespace sparsecl {
namespace {

using keys::KeyOf;

struct LayerView {
  void* w;
  bool* mask;
  const bool* elig;
  const void* ps;
  const void* gs;
  int64_t numel, n, rows, cols, mask_cols, B;
};

// Compacted candidates of one chunk: keys and offsets from the chunk start, in index order; drop
// candidates also carry their grow key (a dropped position may regrow), read while the line is loaded.
template <typename K>
struct Buf {
  K* key = nullptr;
  K* gkey = nullptr;
  uint32_t* off = nullptr;
  int64_t size = 0;
  size_t at = 0;                 // first pass: offset of the packed lists in the scanning thread's arena
  std::unique_ptr<char[]> own;   // a rescan's storage

  static size_t bytes(int64_t len, bool with_gkey) {  // room for a whole chunk (+16 for full-vector stores)
    return (size_t(len + 16) * ((with_gkey ? 2 : 1) * sizeof(K) + sizeof(uint32_t)) + 63) & ~size_t(63);
  }
  void place(char* p, int64_t len, bool with_gkey) {
    key = reinterpret_cast<K*>(p);
    p += size_t(len + 16) * sizeof(K);
    gkey = with_gkey ? reinterpret_cast<K*>(p) : nullptr;
    if (with_gkey) p += size_t(len + 16) * sizeof(K);
    off = reinterpret_cast<uint32_t*>(p);
    size = 0;
  }
  void alloc(int64_t len, bool with_gkey) {  // uninitialised: only the pages written are touched
    own.reset(new char[bytes(len, with_gkey)]);
    place(own.get(), len, with_gkey);
  }
  // Moves the lists down to dst (<= key), back to back; returns the bytes used (rounded to 64).
  size_t pack(char* dst) {
    char* q = dst;
    std::memmove(q, key, size_t(size) * sizeof(K));
    q += size_t(size) * sizeof(K);
    if (gkey) std::memmove(q, gkey, size_t(size) * sizeof(K)), q += size_t(size) * sizeof(K);
    std::memmove(q, off, size_t(size) * sizeof(uint32_t));
    q += size_t(size) * sizeof(uint32_t);
    return (size_t(q - dst) + 63) & ~size_t(63);
  }
  void place_packed(char* p) {
    const bool with_gkey = gkey != nullptr;
    key = reinterpret_cast<K*>(p);
    p += size_t(size) * sizeof(K);
    gkey = with_gkey ? reinterpret_cast<K*>(p) : nullptr;
    if (with_gkey) p += size_t(size) * sizeof(K);
    off = reinterpret_cast<uint32_t*>(p);
  }
};

template <typename K>
struct Chunk {
  int64_t layer, begin, end;
  Buf<K> d, g;
  int64_t active = 0;  // |A ∩ E| in the chunk
  int tid = 0;         // thread whose arena holds the first pass's lists
};

// First-pass scratch, one per thread, kept across calls: fresh pages would be faulted in and zeroed on
// every call (a measurable share of the time). It grows to the largest call seen.
struct Arena {
  std::unique_ptr<char[]> data;
  size_t cap = 0, used = 0;
  size_t reserve(size_t n) {  // offset of n bytes after the used ones; may move data
    if (used + n > cap) {
      const size_t ncap = std::max(2 * cap, used + n);
      std::unique_ptr<char[]> bigger(new char[ncap]);
      if (used) std::memcpy(bigger.get(), data.get(), used);
      data = std::move(bigger);
      cap = ncap;
    }
    return used;
  }
};

Arena& thread_arena() {
  thread_local Arena arena;
  return arena;
}

// Scalar scan of [b, e): counts A ∩ E, keeps drop keys <= hi_d (if want_d) and grow keys <= hi_g (if want_g).
template <typename S, typename K>
void scan_generic(const LayerView& L, Chunk<K>& c, K hi_d, K hi_g, bool want_d, bool want_g) {
  const S* ps = static_cast<const S*>(L.ps);
  const S* gs = static_cast<const S*>(L.gs);
  int64_t active = 0;
  for (int64_t i = c.begin; i < c.end; ++i) {
    if (L.elig && !L.elig[i]) continue;
    if (L.mask[i]) {
      ++active;
      if (!want_d) continue;
      const K k = keys::drop_key(ps[i]);
      if (k <= hi_d) {
        c.d.key[c.d.size] = k;
        c.d.gkey[c.d.size] = keys::grow_key(gs[i]);
        c.d.off[c.d.size++] = uint32_t(i - c.begin);
      }
    } else if (want_g) {
      const K k = keys::grow_key(gs[i]);
      if (k <= hi_g) {
        c.g.key[c.g.size] = k;
        c.g.off[c.g.size++] = uint32_t(i - c.begin);
      }
    }
  }
  c.active = active;
}

#ifdef SPARSECL_PR_X86
// The same scan for float scores, 16 positions per step: keys built in registers, candidates packed with
// vpcompressd into registers and stored whole (the buffers have 16 spare slots; compress-to-memory is
// slow on some CPUs).
#define SPARSECL_PR_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))
SPARSECL_PR_TARGET inline __m512i asc_key16(__m512i u) {  // keys::asc_key, 16 lanes
  const __m512i top = _mm512_set1_epi32(int(0x80000000u)), zero = _mm512_setzero_si512();
  __m512i k = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31), top));
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  k = _mm512_mask_mov_epi32(k, _mm512_cmpeq_epi32_mask(a, zero), top);
  return _mm512_mask_mov_epi32(k, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000)), zero);
}

SPARSECL_PR_TARGET void scan_avx512(const LayerView& L, Chunk<uint32_t>& c, uint32_t hi_d, uint32_t hi_g, bool want_d, bool want_g) {
  const float* ps = static_cast<const float*>(L.ps);
  const float* gs = static_cast<const float*>(L.gs);
  const __m512i ones = _mm512_set1_epi32(-1);
  const __m512i vhd = _mm512_set1_epi32(int(hi_d)), vhg = _mm512_set1_epi32(int(hi_g));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t active = 0, nd = 0, ng = 0;
  uint32_t* dk = c.d.key;
  uint32_t* dgk = c.d.gkey;
  uint32_t* dof = c.d.off;
  uint32_t* gk = c.g.key;
  uint32_t* gof = c.g.off;
  for (int64_t i = c.begin; i < c.end; i += 16) {
    const int64_t rem = c.end - i;
    const __mmask16 lanes = rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
    const __m128i mb = _mm_maskz_loadu_epi8(lanes, L.mask + i);
    __mmask16 el = lanes;
    if (L.elig) {
      const __m128i eb = _mm_maskz_loadu_epi8(lanes, L.elig + i);
      el = _mm_mask_test_epi8_mask(lanes, eb, eb);
    }
    const __mmask16 act = _mm_mask_test_epi8_mask(el, mb, mb);
    const __mmask16 ina = __mmask16(el & ~act);
    active += _mm_popcnt_u32(act);
    const __m512i off = _mm512_add_epi32(_mm512_set1_epi32(int(i - c.begin)), iota);
    const __m512i kg = _mm512_xor_si512(asc_key16(_mm512_maskz_loadu_epi32(el, gs + i)), ones);
    if (want_d) {
      const __m512i k = asc_key16(_mm512_maskz_loadu_epi32(act, ps + i));
      const __mmask16 sel = _mm512_mask_cmple_epu32_mask(act, k, vhd);
      _mm512_storeu_si512(dk + nd, _mm512_maskz_compress_epi32(sel, k));
      _mm512_storeu_si512(dgk + nd, _mm512_maskz_compress_epi32(sel, kg));
      _mm512_storeu_si512(dof + nd, _mm512_maskz_compress_epi32(sel, off));
      nd += _mm_popcnt_u32(sel);
    }
    if (want_g) {
      const __m512i& k = kg;
      const __mmask16 sel = _mm512_mask_cmple_epu32_mask(ina, k, vhg);
      _mm512_storeu_si512(gk + ng, _mm512_maskz_compress_epi32(sel, k));
      _mm512_storeu_si512(gof + ng, _mm512_maskz_compress_epi32(sel, off));
      ng += _mm_popcnt_u32(sel);
    }
  }
  c.active = active;
  if (want_d) c.d.size = nd;
  if (want_g) c.g.size = ng;
}

// The same scan on AVX2, 8 positions per step, branch-free: AVX2 has no compress instruction, so the
// selected lanes are moved to the front by a permutation looked up from the 8 selection bits and the
// whole vector is stored (a data-dependent loop over the bits mispredicts about once per step).
#define SPARSECL_PR_TARGET2 __attribute__((target("avx2,fma,bmi,popcnt")))
SPARSECL_PR_TARGET2 inline __m256i asc_key8(__m256i u) {  // keys::asc_key, 8 lanes
  const __m256i top = _mm256_set1_epi32(int(0x80000000u));
  __m256i k = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), top));
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  k = _mm256_blendv_epi8(k, top, _mm256_cmpeq_epi32(a, _mm256_setzero_si256()));
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000)), k);  // NaN -> 0
}

// Lanes of k (unsigned) <= hi, as a bit mask within `lanes`.
SPARSECL_PR_TARGET2 inline uint32_t le_bits8(__m256i k, __m256i hi_flipped, uint32_t lanes) {
  const __m256i top = _mm256_set1_epi32(int(0x80000000u));
  const __m256i gt = _mm256_cmpgt_epi32(_mm256_xor_si256(k, top), hi_flipped);
  return lanes & ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(gt)));
}

// 8 bools as 8 lanes of 0 / -1 (bytes past `valid` read as false).
SPARSECL_PR_TARGET2 inline __m256i bool_lanes8(const bool* p, int64_t valid) {
  uint64_t b = 0;
  if (valid >= 8) std::memcpy(&b, p, 8);
  else std::memcpy(&b, p, size_t(valid));
  const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(b)));
  return _mm256_cmpgt_epi32(v, _mm256_setzero_si256());
}

// Per 8-bit selection: the indices of its set lanes, in order, one byte each (vpermd moves them to the front).
constexpr std::array<uint64_t, 256> kCompressPerm8 = [] {
  std::array<uint64_t, 256> t{};
  for (uint32_t m = 0; m < 256; ++m)
    for (int j = 0, n = 0; j < 8; ++j)
      if (m >> j & 1) t[m] |= uint64_t(j) << (8 * n++);
  return t;
}();

SPARSECL_PR_TARGET2 inline __m256i compress_perm8(uint32_t sel) {
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(kCompressPerm8[sel])));
}

// 8 floats as int lanes; lanes outside in_range read as 0 (never selected).
SPARSECL_PR_TARGET2 inline __m256i load8(const float* p, bool full, __m256i in_range) {
  return full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
              : _mm256_maskload_epi32(reinterpret_cast<const int*>(p), in_range);
}

SPARSECL_PR_TARGET2 void scan_avx2(const LayerView& L, Chunk<uint32_t>& c, uint32_t hi_d, uint32_t hi_g, bool want_d,
                                   bool want_g) {
  const float* ps = static_cast<const float*>(L.ps);
  const float* gs = static_cast<const float*>(L.gs);
  const __m256i top = _mm256_set1_epi32(int(0x80000000u)), ones = _mm256_set1_epi32(-1);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i vhd = _mm256_xor_si256(_mm256_set1_epi32(int(hi_d)), top);
  const __m256i vhg = _mm256_xor_si256(_mm256_set1_epi32(int(hi_g)), top);
  int64_t active = 0, nd = 0, ng = 0;
  for (int64_t i = c.begin; i < c.end; i += 8) {
    const int64_t rem = c.end - i;
    const bool full = rem >= 8;
    const __m256i in_range = full ? ones : _mm256_cmpgt_epi32(_mm256_set1_epi32(int(rem)), iota);
    const uint32_t mask_bits = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(bool_lanes8(L.mask + i, rem))));
    const uint32_t el_bits = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(
        L.elig ? _mm256_and_si256(in_range, bool_lanes8(L.elig + i, rem)) : in_range)));
    const uint32_t act = el_bits & mask_bits, ina = el_bits & ~mask_bits;
    active += __builtin_popcount(act);
    const uint32_t off0 = uint32_t(i - c.begin);
    const __m256i g = _mm256_xor_si256(asc_key8(load8(gs + i, full, in_range)), ones);
    const __m256i off = _mm256_add_epi32(_mm256_set1_epi32(int(off0)), iota);
    if (want_d) {
      const __m256i k = asc_key8(load8(ps + i, full, in_range));
      const uint32_t sel = le_bits8(k, vhd, act);
      const __m256i perm = compress_perm8(sel);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.d.key + nd), _mm256_permutevar8x32_epi32(k, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.d.gkey + nd), _mm256_permutevar8x32_epi32(g, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.d.off + nd), _mm256_permutevar8x32_epi32(off, perm));
      nd += __builtin_popcount(sel);
    }
    if (want_g) {
      const uint32_t sel = le_bits8(g, vhg, ina);
      const __m256i perm = compress_perm8(sel);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.g.key + ng), _mm256_permutevar8x32_epi32(g, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.g.off + ng), _mm256_permutevar8x32_epi32(off, perm));
      ng += __builtin_popcount(sel);
    }
  }
  c.active = active;
  if (want_d) c.d.size = nd;
  if (want_g) c.g.size = ng;
}
#endif

// Scan into the chunk's buffers, already placed for the wanted sets.
template <typename S, typename K>
void scan(const LayerView& L, Chunk<K>& c, K hi_d, K hi_g, bool want_d, bool want_g, cpu::Isa isa) {
#ifdef SPARSECL_PR_X86
  if constexpr (std::is_same_v<S, float>) {
    if (isa == cpu::Isa::kAvx512) return scan_avx512(L, c, hi_d, hi_g, want_d, want_g);
    if (isa == cpu::Isa::kAvx2) return scan_avx2(L, c, hi_d, hi_g, want_d, want_g);
  }
#endif
  scan_generic<S, K>(L, c, hi_d, hi_g, want_d, want_g);
}

// Key bounds (drop, grow) that the n best candidates of each set very likely fall under, from the keys
// of 64 spread runs of 128 positions; the largest key (no bound) for small layers or a thin sample.
template <typename S, typename K>
std::pair<K, K> guess_bounds(const LayerView& L) {
  constexpr int64_t kRuns = 64, kRun = 128;
  const K all = ~K(0);
  const int64_t N = L.numel;
  if (N < 8 * kRuns * kRun) return {all, all};
  const S* ps = static_cast<const S*>(L.ps);
  const S* gs = static_cast<const S*>(L.gs);
  std::vector<K> d, g;
  for (int64_t r = 0; r < kRuns; ++r)
    for (int64_t i = r * (N / kRuns), e = i + kRun; i < e; ++i) {
      if (L.elig && !L.elig[i]) continue;
      if (L.mask[i]) d.push_back(keys::drop_key(ps[i]));
      else g.push_back(keys::grow_key(gs[i]));
    }
  const double scale = double(N) / double(kRuns * kRun);
  // n among the sampled share of the set, with a 10% + 4 sigma + 16 margin
  auto bound = [&](std::vector<K>& v) {
    if (v.size() < 64) return all;
    const double expect = std::min<double>(double(v.size()), double(L.n) / scale);
    const double r = 1.1 * expect + 4.0 * std::sqrt(expect) + 16.0;
    if (r >= double(v.size())) return all;
    auto it = v.begin() + int64_t(r);
    std::nth_element(v.begin(), it, v.end());
    return *it;
  };
  return {bound(d), bound(g)};
}

// Rank type: 64-bit for 32-bit keys of layers below 2^32 positions, else 128-bit.
template <typename K, typename R>
inline R make_rank(K key, int64_t idx) {
  return (R(key) << (sizeof(R) * 8 - sizeof(K) * 8)) | R(uint64_t(idx));
}

template <typename K, typename R>
inline K key_of(R r) { return K(r >> (sizeof(R) * 8 - sizeof(K) * 8)); }

template <typename K, typename R>
inline int64_t idx_of(R r) {
  constexpr int idx_bits = int(sizeof(R) * 8 - sizeof(K) * 8);
  return int64_t(uint64_t(r & ((R(1) << (idx_bits < 64 ? idx_bits : 63)) - 1)));
}

// The n-th smallest rank of v (1 <= n <= |v|; v[0, split) and v[split, end) each in index order): a
// histogram of the key (2048 bins over the keys' range) picks the bin holding it; nth_element orders
// that bin only, unless the bin holds a single key (heavy ties, e.g. many zero scores), whose ranks then
// follow the index order: a merge of the bin's two runs.
template <typename K, typename R>
R nth_smallest(const std::vector<R>& v, int64_t n, size_t split) {
  std::vector<R> bin;
  size_t bin_split = split;
  if (v.size() <= 4096) {
    bin = v;
  } else {
    K lo = ~K(0), hi = 0;
    for (R r : v) {
      const K k = key_of<K, R>(r);
      lo = std::min(lo, k);
      hi = std::max(hi, k);
    }
    int shift = 0;
    while (((hi - lo) >> shift) >= 2048) ++shift;
    std::vector<int64_t> hist(2048, 0);
    for (R r : v) ++hist[(key_of<K, R>(r) - lo) >> shift];
    int64_t t = 0, below = 0;
    while (below + hist[t] < n) below += hist[t++];
    bin.reserve(hist[t]);
    for (size_t j = 0; j < v.size(); ++j) {
      if (j == split) bin_split = bin.size();
      if (int64_t((key_of<K, R>(v[j]) - lo) >> shift) == t) bin.push_back(v[j]);
    }
    if (split >= v.size()) bin_split = bin.size();
    n -= below;
  }
  const K k0 = key_of<K, R>(bin[0]);
  if (std::all_of(bin.begin(), bin.end(), [&](R r) { return key_of<K, R>(r) == k0; })) {
    std::inplace_merge(bin.begin(), bin.begin() + bin_split, bin.end());  // one key: rank order = index order
    return bin[n - 1];
  }
  std::nth_element(bin.begin(), bin.begin() + (n - 1), bin.end());
  return bin[n - 1];
}

template <typename W>
inline __attribute__((always_inline)) void zero_position(const LayerView& L, int64_t i) {
  W* w = static_cast<W*>(L.w);
  if (w == nullptr) return;  // mask-only layer
  if (L.B == 1) {
    w[i] = W(0);
    return;
  }
  const int64_t r0 = (i / L.mask_cols) * L.B, c0 = (i % L.mask_cols) * L.B;
  const int64_t r1 = std::min(L.rows, r0 + L.B), c1 = std::min(L.cols, c0 + L.B);
  for (int64_t r = r0; r < r1; ++r) std::fill(w + r * L.cols + c0, w + r * L.cols + c1, W(0));
}

// Ranks of one set of a layer's chunks (index order); for the drop set also the grow keys.
template <typename K, typename R>
void gather(const std::vector<Chunk<K>*>& chunks, bool drop_set, std::vector<R>& out, std::vector<K>* gkeys) {
  int64_t total = 0;
  for (auto* c : chunks) total += (drop_set ? c->d : c->g).size;
  out.clear();
  out.reserve(total);
  if (gkeys) gkeys->clear(), gkeys->reserve(total);
  for (auto* c : chunks) {
    const Buf<K>& b = drop_set ? c->d : c->g;
    for (int64_t j = 0; j < b.size; ++j) out.push_back(make_rank<K, R>(b.key[j], c->begin + b.off[j]));
    if (gkeys) gkeys->insert(gkeys->end(), b.gkey, b.gkey + b.size);
  }
}

// Selection and writes of one layer after the scan; returns |D \ G| + |G \ A|.
template <typename W, typename S, typename K, typename R>
int64_t finish_layer(const LayerView& L, std::vector<Chunk<K>*>& chunks, K hi_g, cpu::Isa isa) {
  int64_t active = 0;
  for (auto* c : chunks) active += c->active;
  const int64_t n = std::min(L.n, active);
  if (n == 0) return 0;
  const K all = ~K(0);
  auto rescan = [&](bool drop_set) {  // the guess was short: every candidate of that set, one chunk at a time
    for (auto* c : chunks) {
      (drop_set ? c->d : c->g).alloc(c->end - c->begin, drop_set);
      scan<S, K>(L, *c, all, all, drop_set, !drop_set, isa);
    }
  };

  std::vector<R> drop;
  std::vector<K> drop_gkey;
  gather<K, R>(chunks, true, drop, &drop_gkey);
  if (int64_t(drop.size()) < n) {
    rescan(true);
    gather<K, R>(chunks, true, drop, &drop_gkey);
  }
  const R pivot_d = nth_smallest<K, R>(drop, n, drop.size());
  int64_t nd = 0;
  for (size_t j = 0; j < drop.size(); ++j)
    if (drop[j] <= pivot_d) drop[nd] = drop[j], drop_gkey[nd++] = drop_gkey[j];
  drop.resize(nd);
  drop_gkey.resize(nd);

  // grow candidates: E \ A under the bound, and D (a dropped position may regrow), merged in index order
  std::vector<R> grow, grow_d;
  auto add_drop = [&](K bound) {
    grow_d.clear();
    for (int64_t j = 0; j < nd; ++j)
      if (drop_gkey[j] <= bound) grow_d.push_back(make_rank<K, R>(drop_gkey[j], idx_of<K, R>(drop[j])));
  };
  gather<K, R>(chunks, false, grow, nullptr);
  add_drop(hi_g);
  if (int64_t(grow.size() + grow_d.size()) < n) {
    rescan(false);
    gather<K, R>(chunks, false, grow, nullptr);
    add_drop(all);
  }
  const size_t n_inactive = grow.size();
  grow.insert(grow.end(), grow_d.begin(), grow_d.end());
  const R pivot_g = nth_smallest<K, R>(grow, n, n_inactive);

  // D \ G cleared, G \ A set (mask still false); D ∩ G keeps mask and weight. The positions are
  // scattered: the weight and mask lines are prefetched for writing a few items ahead.
  constexpr int64_t kAhead = 16;
  auto prefetch = [&](int64_t i) {
    __builtin_prefetch(static_cast<W*>(L.w) + (L.B == 1 ? i : (i / L.mask_cols) * L.B * L.cols + (i % L.mask_cols) * L.B), 1);
    __builtin_prefetch(L.mask + i, 1);
  };
  int64_t changed = 0;
  for (int64_t j = 0; j < nd; ++j) {
    if (j + kAhead < nd) prefetch(idx_of<K, R>(drop[j + kAhead]));
    const int64_t i = idx_of<K, R>(drop[j]);
    if (make_rank<K, R>(drop_gkey[j], i) <= pivot_g) continue;
    L.mask[i] = false;
    zero_position<W>(L, i);
    ++changed;
  }
  for (size_t j = 0; j < grow.size(); ++j) {
    if (j + kAhead < grow.size() && grow[j + kAhead] <= pivot_g) prefetch(idx_of<K, R>(grow[j + kAhead]));
    const R r = grow[j];
    if (r > pivot_g) continue;
    const int64_t i = idx_of<K, R>(r);
    if (L.mask[i]) continue;  // in D ∩ G
    L.mask[i] = true;
    zero_position<W>(L, i);
    ++changed;
  }
  return changed;
}

template <typename W, typename S>
void run_layers(const std::vector<LayerView>& views, const std::vector<int64_t>& order, int64_t* out) {
  using K = typename KeyOf<S>::type;
  constexpr int64_t kChunk = int64_t(1) << 18;
  const int64_t L = int64_t(views.size());
  const cpu::Isa isa = cpu::active_isa();
  const int nt = at::in_parallel_region() ? 1 : int(std::max<int64_t>(1, at::get_num_threads()));

  // chunks of every layer, largest layers first
  std::vector<std::pair<K, K>> bounds(L, {K(0), K(0)});
  std::vector<Chunk<K>> chunks;
  std::vector<int64_t> first(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) {
    const LayerView& v = views[l];
    first[l] = int64_t(chunks.size());
    if (v.n > 0)
      for (int64_t b = 0; b < v.numel; b += kChunk) chunks.push_back({l, b, std::min(v.numel, b + kChunk)});
  }
  first[L] = int64_t(chunks.size());
  std::vector<int64_t> chunk_order(chunks.size());
  std::iota(chunk_order.begin(), chunk_order.end(), 0);
  std::stable_sort(chunk_order.begin(), chunk_order.end(), [&](int64_t a, int64_t b) {
    return views[chunks[a].layer].numel > views[chunks[b].layer].numel;
  });
  const int64_t n_chunks = int64_t(chunks.size());

#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t j = 0; j < L; ++j)
    if (views[order[j]].n > 0) bounds[order[j]] = guess_bounds<S, K>(views[order[j]]);

  // the first pass: each thread packs its chunks' lists into its arena, back to back
  std::vector<char*> bases(nt, nullptr);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    Arena& arena = thread_arena();
    arena.used = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < n_chunks; ++j) {
      Chunk<K>& c = chunks[chunk_order[j]];
      const int64_t len = c.end - c.begin;
      const size_t bd = Buf<K>::bytes(len, true);
      const size_t at = arena.reserve(bd + Buf<K>::bytes(len, false));
      c.d.place(arena.data.get() + at, len, true);
      c.g.place(arena.data.get() + at + bd, len, false);
      scan<S, K>(views[c.layer], c, bounds[c.layer].first, bounds[c.layer].second, true, true, isa);
      const size_t pd = c.d.pack(arena.data.get() + at);
      const size_t pg = c.g.pack(arena.data.get() + at + pd);
      c.tid = t;
      c.d.at = at;
      c.g.at = at + pd;
      arena.used = at + pd + pg;
    }
    bases[t] = arena.data.get();
  }
  for (auto& c : chunks) {
    c.d.place_packed(bases[c.tid] + c.d.at);
    c.g.place_packed(bases[c.tid] + c.g.at);
  }

#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t j = 0; j < L; ++j) {
    const int64_t l = order[j];
    const LayerView& v = views[l];
    if (v.n == 0 || v.numel == 0) continue;
    std::vector<Chunk<K>*> mine;
    for (int64_t c = first[l]; c < first[l + 1]; ++c) mine.push_back(&chunks[c]);
    const K hi_g = bounds[l].second;
    if (sizeof(K) == 4 && v.numel < (int64_t(1) << 32)) out[l] = finish_layer<W, S, K, uint64_t>(v, mine, hi_g, isa);
    else out[l] = finish_layer<W, S, K, unsigned __int128>(v, mine, hi_g, isa);
  }
}

at::Tensor prune_regrow_cpu(at::TensorList weights, at::TensorList masks, at::TensorList prune_scores,
                            at::TensorList grow_scores, const at::Tensor& counts, at::TensorList eligible) {
  const int64_t L = int64_t(weights.size());
  SPARSECL_CHECK(int64_t(masks.size()) == L && int64_t(prune_scores.size()) == L && int64_t(grow_scores.size()) == L,
                 "weights, masks, prune_scores and grow_scores must have one entry per layer, got ", L, ", ",
                 masks.size(), ", ", prune_scores.size(), ", ", grow_scores.size());
  SPARSECL_CHECK(eligible.empty() || int64_t(eligible.size()) == L, "eligible must be empty or have one entry per layer (",
                 L, "), got ", eligible.size());
  SPARSECL_CHECK(counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == L,
                 "counts must be int64 [", L, "], got ", counts.scalar_type(), " ", counts.sizes());
  SPARSECL_CHECK(counts.device().is_cpu(), "counts must be on the CPU for the CPU kernel, got ", counts.device());
  auto counts_c = counts.contiguous();
  const int64_t* cnt = counts_c.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) SPARSECL_CHECK(cnt[l] >= 0, "counts must be >= 0, got ", cnt[l], " for layer ", l);

  std::vector<at::Tensor> w_work(L), m_work(L), keep;
  std::vector<LayerView> views(L);
  // an empty weight not shaped like its mask: a mask-only layer (its values live elsewhere, e.g. compact storage)
  auto mask_only = [&](int64_t l) { return weights[l].numel() == 0 && weights[l].sizes() != masks[l].sizes(); };
  at::ScalarType wtype = at::kFloat, stype = L ? prune_scores[0].scalar_type() : at::kFloat;
  for (int64_t l = L - 1; l >= 0; --l)
    if (!mask_only(l)) wtype = weights[l].scalar_type();
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor &w = weights[l], &m = masks[l], &p = prune_scores[l], &g = grow_scores[l];
    SPARSECL_CHECK(w.device().is_cpu() && m.device().is_cpu() && p.device().is_cpu() && g.device().is_cpu(),
                   "layer ", l, ": all tensors must be on the CPU");
    SPARSECL_CHECK(w.is_floating_point(), "layer ", l, ": weight must be floating point, got ", w.scalar_type());
    SPARSECL_CHECK(mask_only(l) || w.scalar_type() == wtype, "all weights must share one dtype: layer ", l, " is ",
                   w.scalar_type(), ", the first is ", wtype);
    SPARSECL_CHECK(m.scalar_type() == at::kBool, "layer ", l, ": mask must be bool, got ", m.scalar_type());
    check_float(p, "prune_score", false);
    SPARSECL_CHECK(p.scalar_type() == stype && g.scalar_type() == stype, "all scores must share one dtype (layer ", l,
                   ": ", p.scalar_type(), ", ", g.scalar_type(), "; layer 0: ", stype, ")");
    SPARSECL_CHECK(p.sizes() == m.sizes() && g.sizes() == m.sizes(), "layer ", l, ": scores ", p.sizes(), " and ",
                   g.sizes(), " must have the mask's shape ", m.sizes());
    const int64_t B = mask_only(l) ? 1 : block_size_of(w, m, l);
    const bool* e = nullptr;
    if (!eligible.empty()) {
      const at::Tensor& el = eligible[l];
      SPARSECL_CHECK(el.scalar_type() == at::kBool, "layer ", l, ": eligible must be bool, got ", el.scalar_type());
      SPARSECL_CHECK(el.sizes() == m.sizes(), "layer ", l, ": eligible shape ", el.sizes(), " != mask shape ", m.sizes());
      SPARSECL_CHECK(el.device().is_cpu(), "layer ", l, ": eligible must be on the CPU");
      keep.push_back(el.contiguous());
      e = keep.back().data_ptr<bool>();
    }
    w_work[l] = w.contiguous();
    m_work[l] = m.contiguous();
    keep.push_back(p.contiguous());
    const void* pp = keep.back().data_ptr();
    keep.push_back(g.contiguous());
    const void* gp = keep.back().data_ptr();
    views[l] = {mask_only(l) ? nullptr : w_work[l].data_ptr(), m_work[l].data_ptr<bool>(), e, pp, gp, m.numel(),
                cnt[l], w.dim() == 2 ? w.size(0) : 1, w.dim() == 2 ? w.size(1) : w.numel(),
                m.dim() == 2 ? m.size(1) : 1, B};
  }
  for (int64_t l = 0; l < L; ++l)
    SPARSECL_CHECK(m_work[l].numel() < (int64_t(1) << 62), "layer ", l, " is too large");

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

// ---- random growth scores ------------------------------------------------------------------------
// out[i] = U[0, 1) from a counter-based hash of (seed, i), 24 bits: the same values for any thread count,
// on every rank and (through the torch formulation in sparsecl/ops/prune_regrow.py) on every device.
// For a fixed seed the 32-bit hashes of i < 2^32 are distinct (each step below is a bijection of i).

inline uint32_t fmix32(uint32_t h) {  // MurmurHash3's finaliser, a bijection with full avalanche
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline __attribute__((always_inline)) void random_scores_body(float* out, int64_t begin, int64_t end, uint32_t k0,
                                                              uint32_t k1) {
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t h = fmix32(fmix32(uint32_t(i) ^ k0) ^ (uint32_t(uint64_t(i) >> 32) * 0x9E3779B9u) ^ k1);
    out[i] = float(h >> 8) * 0x1p-24f;
  }
}

void random_scores_generic(float* out, int64_t b, int64_t e, uint32_t k0, uint32_t k1) {
  random_scores_body(out, b, e, k0, k1);
}
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) void random_scores_avx2(float* out, int64_t b, int64_t e, uint32_t k0, uint32_t k1) {
  random_scores_body(out, b, e, k0, k1);  // vectorised with vpmulld
}
#endif

void random_scores_cpu(const at::Tensor& out, int64_t seed) {
  SPARSECL_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got ", out.device());
  SPARSECL_CHECK(out.scalar_type() == at::kFloat, "out must be float32, got ", out.scalar_type());
  SPARSECL_CHECK(out.is_contiguous(), "out must be contiguous");
  const uint64_t k = splitmix64(uint64_t(seed));
  const uint32_t k0 = uint32_t(k), k1 = uint32_t(k >> 32);
  auto fill = &random_scores_generic;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu::active_isa() != cpu::Isa::kGeneric) fill = &random_scores_avx2;
#endif
  float* p = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 1 << 16, [&](int64_t b, int64_t e) { fill(p, b, e, k0, k1); });
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsecl, CPU, m) {
  m.impl("prune_regrow", &prune_regrow_cpu);
  m.impl("random_scores_", &random_scores_cpu);
}

}  // namespace sparsecl
