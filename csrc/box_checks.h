// Argument checks of the box and decoding ops, shared by CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "checks.h"

namespace gflops {

struct BoxPairInputs {
  at::Tensor a, b;        // contiguous (B, N, 4) and (B, M, 4), or (B*N, 4) twice when aligned
  int64_t batch = 1, n = 0, m = 0;
  bool giou = false;
  std::vector<int64_t> out_shape;
};
BoxPairInputs box_iou_prepare(const at::Tensor& boxes1, const at::Tensor& boxes2,
                              const std::string& mode, bool aligned, double eps, const char* op);

// GIoU loss: pred/target (N, 4); reuses LossInputs (target holds the boxes).
LossInputs giou_loss_prepare(const at::Tensor& pred, const at::Tensor& target,
                             const c10::optional<at::Tensor>& weight, double eps,
                             const std::string& reduction, c10::optional<double> avg_factor, const char* op);

// Distribution logits (..., 4 * (reg_max + 1)) viewed as rows of reg_max + 1 bins.
struct DistInputs {
  at::Tensor pred;      // contiguous
  int64_t rows = 0;     // boxes x 4 distributions
  int n1 = 0;           // reg_max + 1
  std::vector<int64_t> out_shape;  // (..., 4)
};
DistInputs integral_prepare(const at::Tensor& pred, int64_t reg_max, const char* op);

// Per-anchor points (A, 2) and strides (A,) for logits (..., A, 4 * (reg_max + 1)).
struct DecodeInputs {
  DistInputs dist;
  at::Tensor points, strides;  // accumulation dtype, contiguous
  int64_t anchors = 0;
  double max_h = 0, max_w = 0;
  bool clamp = false;
};
DecodeInputs decode_prepare(const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides,
                            int64_t reg_max, c10::optional<at::ArrayRef<double>> max_shape, const char* op);
void check_strides_positive(const at::Tensor& strides, const char* op);

// The GFL box branch over P positives.
struct BoxBranchInputs {
  DecodeInputs dec;    // dec.anchors == P
  at::Tensor gt, weight;
};
BoxBranchInputs box_branch_prepare(const at::Tensor& pred, const at::Tensor& points,
                                   const at::Tensor& strides, const at::Tensor& gt_boxes,
                                   const at::Tensor& weight, int64_t reg_max, const char* op);

}  // namespace gflops
