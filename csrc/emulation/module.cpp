// The Python module of the emulated CUDA library (gflops.emulation): the
// gflops_emu op library (the same schemas as gflops, whose CPU kernels are
// the CUDA launchers of csrc/cuda/*.cu run through the emulator) and the
// emulator's test knobs.
#include <torch/extension.h>

#include "../autoassign_checks.h"
#include "../checks.h"
#include "../nms_hooks.h"
#include "../cuda/common.cuh"
#include "../schemas.h"
#include "controls.h"

TORCH_LIBRARY(gflops_emu, m) { gflops::define_schemas(m); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace emu = gf::emu;
  m.def("set_validation", &gflops::set_validation);
  m.def("validation_enabled", &gflops::validation_enabled);
  m.def("set_num_sms", &emu::set_num_sms, "SM count the emulated device reports (grids scale with it)");
  m.def("num_sms", &emu::num_sms);
  m.def("set_block_order", &emu::set_block_order, py::arg("shuffle"), py::arg("seed") = 0,
        "Run blocks in index order (default) or in a seeded shuffled order");
  m.def("force_int64_index", [](bool on) { gf::cuda::force_int64_index().store(on); },
        "Take the 64-bit index path of the kernels that have one, whatever the size");
  // Test hooks: a kernel family counts into an int64 tensor of 4 words while one is set (None: off).
  const auto set_counters = [](std::atomic<unsigned long long*>& buffer, const char* fn,
                               const c10::optional<at::Tensor>& counts) {
    const bool ok = !counts || (counts->scalar_type() == at::kLong && counts->is_contiguous() && counts->numel() >= 4);
    TORCH_CHECK(ok, fn, ": an int64 tensor of 4 counters, or None");
    buffer.store(counts ? reinterpret_cast<unsigned long long*>(counts->data_ptr<int64_t>()) : nullptr);
  };
  m.def("set_atss_census",
        [=](c10::optional<at::Tensor> c) { set_counters(gf::cuda::atss_census_buffer(), "set_atss_census", c); },
        "Count the ATSS kernels' paths (rank window, list window, scan, doublings) into `counts`; None stops");
  m.def("set_autoassign_census",
        [=](c10::optional<at::Tensor> c) {
          set_counters(gf::cuda::autoassign_census_buffer(), "set_autoassign_census", c);
        },
        "Count what the AutoAssign best-IoU tiles keep (GTs kept for the inside test, for the IoU, tiles with "
        "points, tiles with a point inside a GT) into `counts`; None stops");
  m.def("set_nms_census",
        [=](c10::optional<at::Tensor> c) { set_counters(gf::cuda::nms_census_buffer(), "set_nms_census", c); },
        "Count the rows nms/batched_nms settle by one block per class and by the device-wide mask into "
        "`counts`; None stops");
  gflops::def_nms_hooks(m);
  m.def("set_autoassign_cull", [](bool on) { gflops::autoassign_cull().store(on); },
        "The AutoAssign kernels' culls of the GTs a tile of points walks, on (default) or off");
  m.def("set_launch_log", &emu::set_launch_log, "Record (kernel, grid, block) of each launch; clears the log");
  m.def("launch_log", [] {
    py::list out;
    for (const auto& r : emu::launch_log())
      out.append(py::make_tuple(r.kernel, py::make_tuple(r.grid[0], r.grid[1], r.grid[2]),
                                py::make_tuple(r.block[0], r.block[1], r.block[2]), r.dynamic_smem));
    return out;
  });
  m.def("sanitizer", [] { return std::string(emu::sanitizer()); });
}
