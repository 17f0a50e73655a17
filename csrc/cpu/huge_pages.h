// Large CPU outputs (a gradient as big as the logits) are written once into
// fresh memory, and the page faults of that first touch cost as much as the
// arithmetic: at 4 KiB pages a 115 MB QFL gradient takes ~28000 faults,
// about 30 ms of a 60 ms backward on the 2-core benchmark machine. Where the
// kernel runs transparent huge pages in "madvise" mode (the common default),
// asking for 2 MiB pages on the untouched buffer cuts that to ~55 faults.
// PyTorch's allocator does the same for every allocation when
// THP_MEM_ALLOC_ENABLE=1; this does it for gflops' own large outputs only.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gflops {
namespace cpu {

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 2 * kHuge) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (p + kHuge - 1) & ~(kHuge - 1), last = (p + bytes) & ~(kHuge - 1);
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only
#else
  (void)t;
#endif
}

// at::empty_like(t) for an output about to be written in full.
inline at::Tensor empty_output_like(const at::Tensor& t) {
  at::Tensor out = at::empty_like(t);
  advise_huge_pages(out);
  return out;
}

}  // namespace cpu
}  // namespace gflops
