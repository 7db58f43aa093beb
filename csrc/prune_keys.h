// Selection keys of prune_regrow (design.md §3), shared by the CPU and CUDA kernels.
// Both selections become "the n smallest ranks", rank = (key << index bits) | flat index, so equal keys
// fall to the lower index. drop key = asc(prune score), grow key = ~asc(grow score), where asc is the
// order-preserving unsigned image of a float with NaN -> 0 (below -inf): NaN is dropped first and grown
// last. -0.0 and +0.0 share one key. float16/bfloat16 scores are widened to float exactly first.
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SPARSECL_HD __host__ __device__ __forceinline__
#else
#define SPARSECL_HD inline
#endif

namespace sparsecl {
namespace keys {

template <typename F> struct KeyOf { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

SPARSECL_HD uint32_t bits_of(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}

SPARSECL_HD uint64_t bits_of(double v) {
#ifdef __CUDA_ARCH__
  return static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}

template <typename F>
SPARSECL_HD typename KeyOf<F>::type asc_key(F v) {
  using K = typename KeyOf<F>::type;
  constexpr K top = K(1) << (sizeof(K) * 8 - 1);
  if (v != v) return 0;
  if (v == F(0)) v = F(0);
  const K u = bits_of(v);
  return (u & top) ? K(~u) : K(u | top);
}

template <typename F>
SPARSECL_HD typename KeyOf<F>::type drop_key(F v) { return asc_key(v); }

template <typename F>
SPARSECL_HD typename KeyOf<F>::type grow_key(F v) { return typename KeyOf<F>::type(~asc_key(v)); }

// 32-bit key and an index below 2^32 in one 64-bit rank.
SPARSECL_HD uint64_t rank32(uint32_t key, uint64_t idx) { return (uint64_t(key) << 32) | idx; }

}  // namespace keys
}  // namespace sparsecl
