// C++ unit tests of csrc/checks.h: SPARSECL_CHECK throws c10::Error with the message assembled without
// iostreams (numbers, sizes, dtypes, devices), and check_ids_below finds out-of-range entries anywhere.
#include <gtest/gtest.h>
#include <ATen/ATen.h>

#include <string>

#include "checks.h"

namespace {

std::string message_of(void (*fn)()) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.msg();
  }
  return "<no exception>";
}

TEST(Checks, MessageFromPieces) {
  auto msg = message_of([] {
    const int64_t n = -1234567890123;
    const at::Tensor t = at::zeros({3, 0, 5});
    SPARSECL_CHECK(false, "n=", n, " u=", size_t(7), " sizes ", t.sizes(), " dtype ", t.scalar_type(), " on ",
                   t.device(), " half ", 0.5, " ", std::string("end"));
  });
  EXPECT_NE(msg.find("n=-1234567890123 u=7 sizes [3, 0, 5] dtype Float on cpu half 0.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find(" end"), std::string::npos) << msg;
}

TEST(Checks, EmptyMessageNamesTheCondition) {
  auto msg = message_of([] {
    const int a = 1;
    SPARSECL_CHECK(a == 2);
  });
  EXPECT_NE(msg.find("check failed: a == 2"), std::string::npos) << msg;
}

TEST(Checks, PassingCheckDoesNotEvaluateTheMessage) {
  int evaluated = 0;
  auto piece = [&] { return ++evaluated; };
  SPARSECL_CHECK(true, "never ", piece());
  EXPECT_EQ(evaluated, 0);
}

TEST(Checks, IdsBelowFindsEveryOutOfRangeEntry) {
  // sizes above and below the parallel grain; the bad entry at the start, the middle and the end
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 18}) {
    auto idx = at::randint(0, 100, {n}, at::kInt);
    EXPECT_NO_THROW(sparsecl::check_ids_below(idx, 100, "idx"));
    for (int64_t at_pos : {int64_t(0), n / 2, n - 1}) {
      for (int bad : {-1, 100}) {
        auto b = idx.clone();
        b[at_pos] = bad;
        try {
          sparsecl::check_ids_below(b, 100, "idx");
          ADD_FAILURE() << "no error for " << bad << " at " << at_pos << " of " << n;
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.msg()).find(std::to_string(bad)), std::string::npos) << e.msg();
        }
      }
    }
  }
}

}  // namespace
