// The NMS kernels' test hooks, defined on the CUDA library's module and on
// the emulator's alike (the limits live in nms_checks.h).
#pragma once

#include <torch/extension.h>

#include "nms_checks.h"

namespace gflops {

inline void def_nms_hooks(pybind11::module& m) {
  m.def("set_nms_segment_max",
        [](int64_t rows) {
          TORCH_CHECK(rows >= 64 && rows <= kNmsSegmentCap, "set_nms_segment_max: 64 to ", kNmsSegmentCap,
                      " rows, got ", rows);
          nms_segment_max().store(rows);
        },
        "Test hook: the largest class segment the CUDA batched_nms suppresses in one block (64-4096, default 1024)");
  m.def("set_nms_mask_bytes",
        [](int64_t bytes) {
          TORCH_CHECK(bytes > 0, "set_nms_mask_bytes: a positive budget, got ", bytes);
          nms_mask_bytes().store(bytes);
        },
        "Test hook: the CUDA nms mask tile's budget in bytes (default 32 MiB; at least 64 rows a tile)");
  m.def("set_multiclass_chunk",
        [](int64_t pairs) {
          TORCH_CHECK(pairs > 0, "set_multiclass_chunk: a positive number of pairs, got ", pairs);
          multiclass_chunk().store(pairs);
        },
        "Test hook: the (anchor, class) pairs a block of the CUDA multiclass_nms selection walks (default 16384)");
}

}  // namespace gflops
