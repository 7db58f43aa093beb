// C++ unit tests of the CPU prune_regrow kernel through the dispatcher: a worked example of the
// contract (NaN, ties, regrowth of a dropped position) and nnz preservation with heavy ties.
#include <gtest/gtest.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>

namespace {

at::Tensor prune_regrow(std::vector<at::Tensor> w, std::vector<at::Tensor> m, std::vector<at::Tensor> p,
                        std::vector<at::Tensor> g, at::Tensor counts) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sparsecl::prune_regrow", "");
  torch::jit::Stack stack{c10::IValue(w), c10::IValue(m), c10::IValue(p), c10::IValue(g), counts,
                          c10::IValue(std::vector<at::Tensor>{})};
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

TEST(PruneRegrow, WorkedExample) {
  auto w = at::arange(1, 9, at::kFloat).view({2, 4});
  auto m = at::tensor({1, 1, 0, 0, 1, 0, 0, 1}).to(at::kBool).view({2, 4});
  const float nan = std::nanf("");
  auto p = at::tensor({5.f, 1.f, 0.f, 0.f, 1.f, 0.f, 0.f, nan}).view({2, 4});  // D = {7 (NaN), 1 (tie -> lower)}
  auto g = at::tensor({0.f, 9.f, 3.f, 3.f, 0.f, 0.f, 7.f, 0.f}).view({2, 4});  // G = {1 (regrown), 6}
  auto changed = prune_regrow({w}, {m}, {p}, {g}, at::tensor({int64_t(2)}));
  EXPECT_EQ(changed[0].item<int64_t>(), 2);
  EXPECT_TRUE(at::equal(m, at::tensor({1, 1, 0, 0, 1, 0, 1, 0}).to(at::kBool).view({2, 4})));
  EXPECT_TRUE(at::equal(w, at::tensor({1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 0.f, 0.f}).view({2, 4})));
}

TEST(PruneRegrow, HeavyTiesKeepNnz) {
  for (int rep = 0; rep < 5; ++rep) {
    auto m = at::rand({37, 53}) < 0.3;
    auto m0 = m.clone();
    auto w = at::randn({37, 53});
    auto p = at::randint(0, 3, {37, 53}).to(at::kFloat);
    auto g = at::randint(0, 3, {37, 53}).to(at::kFloat);
    auto changed = prune_regrow({w}, {m}, {p}, {g}, at::tensor({int64_t(100)}));
    EXPECT_EQ(m.sum().item<int64_t>(), m0.sum().item<int64_t>());
    EXPECT_EQ(changed[0].item<int64_t>(), (m != m0).sum().item<int64_t>());
    EXPECT_TRUE(at::all(w.masked_select(m != m0) == 0).item<bool>());
  }
}

}  // namespace
