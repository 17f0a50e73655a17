// Argument checks of the assignment ops, shared by CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "checks.h"
#include "common/atss.h"

namespace gflops {

using gf::kAtssMaxLevels;

struct AtssInputs {
  at::Tensor anchors;       // (N, 4) contiguous
  at::Tensor gt_boxes;      // (B, G, 4) contiguous, anchors' dtype
  at::Tensor gt_labels;     // (B, G) int64 contiguous
  at::Tensor gt_valid;      // (B, G) bool contiguous
  at::Tensor anchor_valid;  // undefined (all valid), (N,) or (B, N) bool contiguous
  bool anchor_valid_per_image = false;
  std::vector<int64_t> level_start;  // L + 1 offsets into the anchors
  int64_t batch = 0, num_gt = 0, num_anchors = 0, topk = 0, background_label = 0;
  int64_t num_candidates = 0;  // K = sum over levels of min(topk, level size)
};

AtssInputs atss_prepare(const at::Tensor& anchors, at::IntArrayRef num_level_anchors, const at::Tensor& gt_boxes,
                        const at::Tensor& gt_labels, const at::Tensor& gt_valid,
                        const c10::optional<at::Tensor>& anchor_valid, int64_t topk, int64_t background_label,
                        const char* op);

// The (B, N) outputs: assigned_gt int64 (0 = background), assigned_labels
// int64 (background_label for background), max_iou in the anchors' dtype (0
// for background), initialised as all background.
std::tuple<at::Tensor, at::Tensor, at::Tensor> atss_background(const AtssInputs& in);

// The CPU kernel's gf::AtssPath counts since the last call (then cleared).
std::vector<int64_t> atss_census_cpu();

}  // namespace gflops
