// Argument checks of the AutoAssign loss op, shared by CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <vector>

#include "checks.h"

namespace gflops {

struct AutoAssignInputs {
  at::Tensor cls, obj;             // (B, P, C), (B, P): logits, one float dtype, contiguous
  at::Tensor dist, points, strides, gt_boxes, mu, sigma;  // the accumulation dtype, contiguous
  at::Tensor gt_labels, gt_valid;  // (B, G) int64, bool
  std::vector<int64_t> level_start, level_h, level_w;
  int64_t batch = 0, points_n = 0, classes = 0, num_gt = 0;
};

// level_shapes: (H0, W0, H1, W1, ...), the grid of each level, row-major, with
// P = sum H * W points at (x * stride, y * stride).
AutoAssignInputs autoassign_prepare(const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist,
                                    const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
                                    const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
                                    const at::Tensor& sigma, at::IntArrayRef level_shapes, const char* op);

// The labels of valid GTs must lie in [0, C): checked on the host for CPU
// tensors, and on CUDA when validation is on (it costs a sync).
void autoassign_check_values(const AutoAssignInputs& in, const char* op);

// Test-only: the culls of the loops over a point's GTs (common/autoassign.h)
// on (the default) or off, so that a test compares the culled loops with the
// full ones on one backend. Read at each call by the CPU and CUDA launchers.
inline std::atomic<bool>& autoassign_cull() {
  static std::atomic<bool> on{true};
  return on;
}

}  // namespace gflops
