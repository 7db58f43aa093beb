// C++ unit tests of the CPU block-sparse kernels through the dispatcher, against dense ATen math.
#include <gtest/gtest.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <string>

#include "cpu/isa.h"

namespace {

at::Tensor call(const char* name, std::vector<c10::IValue> args) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  torch::jit::Stack stack(args.begin(), args.end());
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

struct Case {
  at::Tensor row_ptr, col_idx, row_idx, values, dense;
  int64_t out_f, in_f;
};

// a 3x2-block layout with blocks (0,1), (2,0), (2,1); out=2B+6, in=B+8 (70 and 40 for B=32) so
// edge blocks are clipped
Case make_case(int64_t B) {
  Case c;
  c.out_f = 2 * B + 6;
  c.in_f = B + 8;
  c.row_ptr = at::tensor({0, 1, 1, 3}, at::kInt);
  c.col_idx = at::tensor({1, 0, 1}, at::kInt);
  c.row_idx = at::tensor({0, 2, 2}, at::kInt);
  c.values = at::randn({3, B, B}, at::kDouble);
  const int64_t out_f = c.out_f, in_f = c.in_f;
  auto full = at::zeros({3 * B, 2 * B}, at::kDouble);
  for (int k = 0; k < 3; ++k) {
    int64_t r = c.row_idx[k].item<int>(), col = c.col_idx[k].item<int>();
    full.slice(0, r * B, (r + 1) * B).slice(1, col * B, (col + 1) * B).copy_(c.values[k]);
  }
  c.dense = full.slice(0, 0, out_f).slice(1, 0, in_f).contiguous();
  return c;
}

TEST(BsrLinear, ForwardMatchesDense) {
  auto c = make_case(32);
  auto x = at::randn({9, 40}, at::kDouble);
  auto bias = at::randn({70}, at::kDouble);
  auto y = call("sparsecl::bsr_linear", {x, c.values, c.row_ptr, c.col_idx, int64_t(70), bias});
  EXPECT_TRUE(at::allclose(y, at::matmul(x, c.dense.t()) + bias, 1e-10, 1e-10));
}

TEST(BsrLinear, DxMatchesDense) {
  auto c = make_case(32);
  // transposed index of the layout above: column 0 -> (row 2, value 1); column 1 -> (row 0, value 0), (row 2, value 2)
  auto t_row_ptr = at::tensor({0, 1, 3}, at::kInt);
  auto t_col_idx = at::tensor({2, 0, 2}, at::kInt);
  auto t_perm = at::tensor({1, 0, 2}, at::kInt);
  auto g = at::randn({5, 70}, at::kDouble);
  auto dx = call("sparsecl::bsr_linear_dx", {g, c.values, t_row_ptr, t_col_idx, t_perm, int64_t(40)});
  EXPECT_TRUE(at::allclose(dx, at::matmul(g, c.dense), 1e-10, 1e-10));
}

TEST(BsrLinear, DwIsDenseGradientAtActiveBlocks) {
  auto c = make_case(32);
  auto x = at::randn({6, 40}, at::kDouble);
  auto g = at::randn({6, 70}, at::kDouble);
  auto dv = call("sparsecl::bsr_linear_dw", {g, x, c.row_idx, c.col_idx, int64_t(32)});
  auto dense_grad = at::zeros({96, 64}, at::kDouble);
  dense_grad.slice(0, 0, 70).slice(1, 0, 40).copy_(at::matmul(g.t(), x));
  for (int k = 0; k < 3; ++k) {
    int64_t r = c.row_idx[k].item<int>(), col = c.col_idx[k].item<int>();
    auto expect = dense_grad.slice(0, r * 32, (r + 1) * 32).slice(1, col * 32, (col + 1) * 32);
    EXPECT_TRUE(at::allclose(dv[k], expect, 1e-10, 1e-10)) << "block " << k;
  }
}

// float32 runs the micro-kernels: every ISA this CPU supports (forced through SPARSECL_CPU_ISA)
// must match the float64 dense result, here with T=37 (not a multiple of any panel height).
TEST(BsrLinear, Float32EveryIsaMatchesDense) {
  const int best = static_cast<int>(sparsecl::cpu::runtime_isa_enum());
  for (int isa = 0; isa <= best; ++isa) {
    const std::string name = sparsecl::cpu::isa_name(static_cast<sparsecl::cpu::Isa>(isa));
    setenv("SPARSECL_CPU_ISA", name.c_str(), 1);
    for (int64_t B : {16, 32, 64}) {
      auto c = make_case(B);
      auto v = c.values.to(at::kFloat);
      auto x = at::randn({37, c.in_f}, at::kDouble);
      auto g = at::randn({37, c.out_f}, at::kDouble);
      auto y = call("sparsecl::bsr_linear", {x.to(at::kFloat), v, c.row_ptr, c.col_idx, c.out_f, c10::IValue()});
      EXPECT_TRUE(at::allclose(y.to(at::kDouble), at::matmul(x, c.dense.t()), 1e-4, 1e-4)) << name << " B=" << B;
      auto t_row_ptr = at::tensor({0, 1, 3}, at::kInt), t_col_idx = at::tensor({2, 0, 2}, at::kInt),
           t_perm = at::tensor({1, 0, 2}, at::kInt);
      auto dx = call("sparsecl::bsr_linear_dx", {g.to(at::kFloat), v, t_row_ptr, t_col_idx, t_perm, c.in_f});
      EXPECT_TRUE(at::allclose(dx.to(at::kDouble), at::matmul(g, c.dense), 1e-4, 1e-4)) << name << " B=" << B;
      auto dv = call("sparsecl::bsr_linear_dw", {g.to(at::kFloat), x.to(at::kFloat), c.row_idx, c.col_idx, B});
      auto dense_grad = at::zeros({3 * B, 2 * B}, at::kDouble);
      dense_grad.slice(0, 0, c.out_f).slice(1, 0, c.in_f).copy_(at::matmul(g.t(), x));
      for (int k = 0; k < 3; ++k) {
        int64_t r = c.row_idx[k].item<int>(), col = c.col_idx[k].item<int>();
        auto expect = dense_grad.slice(0, r * B, (r + 1) * B).slice(1, col * B, (col + 1) * B);
        EXPECT_TRUE(at::allclose(dv[k].to(at::kDouble), expect, 1e-4, 1e-4)) << name << " B=" << B << " block " << k;
      }
    }
  }
  unsetenv("SPARSECL_CPU_ISA");
}

TEST(BsrLinear, RejectsUnknownIsaRequest) {
  setenv("SPARSECL_CPU_ISA", "sse9", 1);
  auto c = make_case(16);
  auto x = at::randn({2, c.in_f});
  EXPECT_THROW(call("sparsecl::bsr_linear", {x, c.values.to(at::kFloat), c.row_ptr, c.col_idx, c.out_f,
                                             c10::IValue()}),
               c10::Error);
  unsetenv("SPARSECL_CPU_ISA");
}

TEST(BsrLinear, RejectsOutOfRangeColumn) {
  auto c = make_case(32);
  auto bad = at::tensor({1, 0, 5}, at::kInt);
  auto x = at::randn({2, 40}, at::kDouble);
  EXPECT_THROW(call("sparsecl::bsr_linear", {x, c.values, c.row_ptr, bad, int64_t(70), c10::IValue()}), c10::Error);
}

}  // namespace
