// Deterministic CPU reductions: rows are cut into fixed blocks (sized from
// the row length only, never from the thread count), each block is summed
// by one thread, and the block partials are added in order. So a result is
// bitwise the same whatever torch.get_num_threads() says.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Row loops are compiled for x86-64-v4, v3 and baseline; the loader picks one.
#define GF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// The same clones with no multiply-add fused into an FMA: for loops whose
// results must round as PyTorch's separate ops round (IoUs compared with a
// threshold, ties).
#define GF_CPU_CLONES_EXACT \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=off")))
#else
#define GF_CPU_CLONES
#define GF_CPU_CLONES_EXACT
#endif

namespace gflops {
namespace cpu {

constexpr int64_t kBlockElems = 1 << 15;

inline int64_t rows_per_block(int64_t cols) {
  return std::max<int64_t>(1, kBlockElems / std::max<int64_t>(cols, 1));
}

// As above in whole 16-row tiles (so that only a block's last tile can be
// partial), and at least kMinBlocks blocks where the rows allow, so that
// small inputs still spread over the threads. A function of the shape alone,
// so sums stay bitwise the same for any thread count.
constexpr int64_t kMinBlocks = 16;
inline int64_t rows_per_block(int64_t cols, int64_t rows) {
  const int64_t full = rows_per_block(cols);
  const int64_t tiles = full >= 16 ? full / 16 * 16 : full;
  const int64_t even = (rows + kMinBlocks - 1) / kMinBlocks;
  return std::max<int64_t>(1, std::min(tiles, (even + 15) / 16 * 16));
}

// Whether the *_and_grad ops return their gradient buffer for these logits:
// float32/float64 only, since a float16/bfloat16 buffer would round the
// unscaled gradient (underflowing what a loss scaler multiplies up later).
inline bool fuses_gradient(const at::Tensor& pred) {
  return pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble;
}

// The lowest row that a parallel sweep found invalid: rows report as they go
// (a rare path) and the minimum does not depend on the threads' order. So the
// CPU kernels check values in the sweep they make anyway, instead of in tensor
// ops of their own beforehand (six passes and a reduction, a third of a small
// DFL call).
class FirstBad {
 public:
  void report(int64_t r) {
    int64_t cur = v_.load(std::memory_order_relaxed);
    while (r < cur && !v_.compare_exchange_weak(cur, r, std::memory_order_relaxed)) {
    }
  }
  bool any() const { return v_.load() != kNone; }
  int64_t index() const { return v_.load(); }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> v_{kNone};
};

// K ordered sums over rows [0, n): fn(r0, r1, sums) adds rows r0..r1 into sums[0..K).
template <typename acc_t, int K, typename F>
std::array<acc_t, K> blocked_sums(int64_t n, int64_t rpb, const F& fn) {
  const int64_t nblocks = (n + rpb - 1) / rpb;
  std::vector<std::array<acc_t, K>> partial(nblocks);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      partial[b].fill(acc_t(0));
      fn(b * rpb, std::min(n, (b + 1) * rpb), partial[b].data());
    }
  });
  std::array<acc_t, K> total;
  total.fill(acc_t(0));
  for (const auto& p : partial)
    for (int k = 0; k < K; ++k) total[k] += p[k];
  return total;
}

}  // namespace cpu
}  // namespace gflops
