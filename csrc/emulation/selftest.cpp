// The op gflops_emu::selftest(case, x): runs one kernel of
// selftest_kernels.cuh on x (float32, 1-D) through the emulator and returns
// what it wrote. Only in the emulated library, for python_tests/test_emulator.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "selftest_kernels.cuh"

namespace {

namespace et = gf::emu_test;
using gf::cuda::launch;

at::Tensor selftest(c10::string_view which, const at::Tensor& x_in) {
  const std::string c(which);
  TORCH_CHECK(x_in.dim() == 1 && x_in.scalar_type() == at::kFloat, "selftest: x must be 1-D float32");
  const at::Tensor x = x_in.contiguous();
  const int n = static_cast<int>(x.numel());
  const float* xp = x.data_ptr<float>();
  const int block = n < gf::cuda::kThreads ? (n < 1 ? 1 : n) : gf::cuda::kThreads;
  at::Tensor out = at::full({gf::cuda::kThreads}, -1.0f, x.options());
  float* o = out.data_ptr<float>();
  if (c == "block_sum" || c == "atomic_sum") {
    const int grid = 16;
    at::Tensor part = at::zeros({grid}, x.options());
    if (c == "block_sum") {
      launch<et::block_sum_kernel>(grid, gf::cuda::kThreads, 0, nullptr, xp, n, part.data_ptr<float>());
      launch<gf::cuda::sum_partials_kernel<float>>(1, gf::cuda::kThreads, 0, nullptr,
                                                   static_cast<const float*>(part.data_ptr<float>()), grid, 1.0f, o,
                                                   nullptr);
    } else {
      out.zero_();
      launch<et::atomic_sum_kernel>(grid, gf::cuda::kThreads, 0, nullptr, xp, n, o);
    }
    return out.narrow(0, 0, 1);
  }
  if (c == "missing_barrier") launch<et::missing_barrier_kernel>(1, gf::cuda::kThreads, 0, nullptr, xp, n, o);
  else if (c == "warp_synced") launch<et::warp_read_then_write_kernel<true>>(1, gf::cuda::kThreads, 0, nullptr, xp, n, o);
  else if (c == "warp_unsynced") launch<et::warp_read_then_write_kernel<false>>(1, gf::cuda::kThreads, 0, nullptr, xp, n, o);
  else if (c == "read_past_end") launch<et::read_past_end_kernel>(1, block, 0, nullptr, xp, n, o);
  else if (c == "shared_past_end") launch<et::shared_past_end_kernel>(1, 64, 0, nullptr, xp, n, o);
  else if (c == "full_mask_shuffle") launch<et::full_mask_shuffle_kernel>(1, block, 0, nullptr, xp, n, o);
  else if (c == "half_barrier") launch<et::half_barrier_kernel>(1, gf::cuda::kThreads, 0, nullptr, xp, n, o);
  else if (c == "too_many_threads") launch<et::bounded_kernel>(1, 256, 0, nullptr, xp, n, o);
  else if (c == "big_shared") launch<et::big_shared_kernel>(1, gf::cuda::kThreads, 0, nullptr, xp, n, o);
  else if (c == "big_dynamic_shared") launch<et::bounded_kernel>(1, 64, 64 * 1024, nullptr, xp, n, o);
  else TORCH_CHECK(false, "selftest: unknown case '", c, "'");
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gflops_emu, m) { m.def("selftest(str case, Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(gflops_emu, CPU, m) { m.impl("selftest", &selftest); }
