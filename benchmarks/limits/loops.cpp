// The machine's arithmetic limit for the loss kernels: the same vectorised
// exp and log1p (csrc/common/math.h) and the same clones and threading as
// the CPU kernels, over a flat array, with nothing else around them. A
// kernel's time against these says how much of it goes beyond the
// transcendental functions every implementation must evaluate.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "common/math.h"
#include "cpu/reduce.h"

namespace {

// x -> log1p(exp(-|x|)) per element: one exp and one log1p each (what QFL's
// sigmoid and BCE share); `with_log1p` false keeps the exp alone (DFL).
GF_CPU_CLONES void loop(const float* x, float* y, int64_t i0, int64_t i1, bool with_log1p) {
  if (with_log1p) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y[i] = gf::glog1p_unit(gf::gexp(-std::fabs(x[i])));
  } else {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y[i] = gf::gexp(x[i]);
  }
}

void run(const at::Tensor& x, at::Tensor& y, bool with_log1p) {
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && x.scalar_type() == at::kFloat &&
              y.scalar_type() == at::kFloat && x.numel() == y.numel());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, x.numel(), gflops::cpu::kBlockElems,
                   [&](int64_t i0, int64_t i1) { loop(xp, yp, i0, i1, with_log1p); });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
