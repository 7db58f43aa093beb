// ctest entry: define the sparsecl op schemas from the same list Python uses, then run the tests.
#include <gtest/gtest.h>
#include <torch/library.h>

#define SPARSECL_SCHEMA(s) m.def(s);
TORCH_LIBRARY(sparsecl, m) {
#include "sparsecl/ops/schemas.def"
}
#undef SPARSECL_SCHEMA

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
