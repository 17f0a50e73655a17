// Argument checks of the NMS ops, shared by CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <vector>

#include "checks.h"
#include "common/nms.h"

namespace gflops {

using gf::kNmsMaxLevels;

// The largest class segment the CUDA batched_nms suppresses in one block
// (larger ones go through the device-wide mask). Test-only setter: a small
// value sends small inputs down the device-wide path.
constexpr int64_t kNmsSegmentDefault = 1024;
constexpr int64_t kNmsSegmentCap = 4096;  // the block's shared removal bits
inline std::atomic<int64_t>& nms_segment_max() {
  static std::atomic<int64_t> rows{kNmsSegmentDefault};
  return rows;
}
// The (anchor, class) pairs a block of the CUDA multiclass_nms selection
// walks: 64 a thread (test-only setter: a small chunk splits small levels).
constexpr int64_t kMcChunkDefault = 16384;
inline std::atomic<int64_t>& multiclass_chunk() {
  static std::atomic<int64_t> pairs{kMcChunkDefault};
  return pairs;
}
// The CUDA nms mask tile's budget in bytes (test-only setter: a small one
// gives small inputs several tiles).
constexpr int64_t kNmsMaskBytesDefault = int64_t(32) << 20;
inline std::atomic<int64_t>& nms_mask_bytes() {
  static std::atomic<int64_t> bytes{kNmsMaskBytesDefault};
  return bytes;
}

struct NmsInputs {
  at::Tensor boxes;   // (K, 4) contiguous, the boxes' dtype
  at::Tensor scores;  // (K,) contiguous
  at::Tensor idxs;    // (K,) int64 contiguous, or undefined (one class)
  int64_t count = 0;
  double iou_threshold = 0.0;
};

NmsInputs nms_prepare(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                      double iou_threshold, const char* op);

struct MulticlassInputs {
  at::Tensor cls;           // (B, N, C) logits, contiguous
  at::Tensor reg;           // (B, N, 4 * (reg_max + 1)), cls' dtype, contiguous
  at::Tensor points;        // (N, 2) accumulation dtype
  at::Tensor strides;       // (N,) accumulation dtype
  at::Tensor image_shapes;  // (B, 2) (H, W), accumulation dtype
  at::Tensor scale_factors; // (B, 2) (sx, sy), accumulation dtype (ones when not given)
  std::vector<int64_t> level_start;  // L + 1 anchor offsets
  std::vector<int64_t> slot_start;   // L + 1 candidate-slot offsets: min(nms_pre, N_l * C) per level
  int64_t batch = 0, anchors = 0, classes = 0, reg_max = 0, nms_pre = 0, max_per_img = 0;
  double score_thr = 0.0, iou_threshold = 0.0, min_bbox_size = 0.0;
};

MulticlassInputs multiclass_prepare(const at::Tensor& cls_scores, const at::Tensor& bbox_preds,
                                    const at::Tensor& points, const at::Tensor& strides,
                                    at::IntArrayRef level_sizes, const at::Tensor& image_shapes,
                                    const c10::optional<at::Tensor>& scale_factors, int64_t reg_max,
                                    double score_thr, int64_t nms_pre, double iou_threshold,
                                    int64_t max_per_img, double min_bbox_size, const char* op);

// The padded outputs: boxes (B, P, 4) 0, scores (B, P) 0, labels (B, P) -1,
// counts (B,) 0, boxes and scores in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_outputs(const MulticlassInputs& in);

}  // namespace gflops
