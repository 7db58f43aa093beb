// The Python module sparsecl._C: loading it registers every kernel with the dispatcher
// (TORCH_LIBRARY_IMPL in each op's source); build_info() says what was compiled.
#include <torch/extension.h>

#include "cpu/isa.h"

#ifndef SPARSECL_CUDA_ARCHS
#define SPARSECL_CUDA_ARCHS ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef SPARSECL_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(SPARSECL_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string("");
#endif
  info["cpu_isa_compiled"] = sparsecl::cpu::compiled_isas();
  info["cpu_isa_runtime"] = sparsecl::cpu::runtime_isa();
  info["openmp"] =
#ifdef _OPENMP
      true;
#else
      false;
#endif
  info["compiler"] = std::string(__VERSION__);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("build_info", &build_info, "What this extension was compiled with.");
}
