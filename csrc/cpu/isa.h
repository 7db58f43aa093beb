// CPU instruction-set dispatch: kernels are compiled for AVX-512, AVX2 and generic x86-64
// (function target attributes) and the best one the running CPU supports is picked once.
#pragma once
#include <string>
#include <vector>

namespace sparsecl {
namespace cpu {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detect_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

inline Isa runtime_isa_enum() {
  static const Isa isa = detect_isa();
  return isa;
}

inline std::string runtime_isa() {
  switch (runtime_isa_enum()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

inline std::vector<std::string> compiled_isas() {
#if defined(__x86_64__)
  return {"generic", "avx2", "avx512"};
#else
  return {"generic"};
#endif
}

}  // namespace cpu
}  // namespace sparsecl
