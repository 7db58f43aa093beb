// CPU instruction-set dispatch: kernels are compiled for AVX-512, AVX2 and generic x86-64
// (function target attributes) and the best one the running CPU supports is picked once.
// SPARSECL_CPU_ISA=generic|avx2|avx512, read at every dispatch, forces a lower path (tests run
// every path on one machine); asking for more than the CPU supports is an error.
#pragma once
#include "checks.h"

#include <cstdlib>
#include <cstring>
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

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

inline std::string runtime_isa() { return isa_name(runtime_isa_enum()); }

// The ISA kernels dispatch to now: the detected one, or SPARSECL_CPU_ISA when set.
inline Isa active_isa() {
  const Isa best = runtime_isa_enum();
  const char* env = std::getenv("SPARSECL_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  Isa want;
  if (std::strcmp(env, "generic") == 0) want = Isa::kGeneric;
  else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  else if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  else SPARSECL_CHECK(false, "SPARSECL_CPU_ISA must be generic, avx2 or avx512, got '", env, "'");
  SPARSECL_CHECK(static_cast<int>(want) <= static_cast<int>(best), "SPARSECL_CPU_ISA=", env,
                 " but this CPU supports at most ", isa_name(best));
  return want;
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
