#include "assign_checks.h"

#include <limits>

namespace gflops {

AtssInputs atss_prepare(const at::Tensor& anchors, at::IntArrayRef num_level_anchors, const at::Tensor& gt_boxes,
                        const at::Tensor& gt_labels, const at::Tensor& gt_valid,
                        const c10::optional<at::Tensor>& anchor_valid, int64_t topk, int64_t background_label,
                        const char* op) {
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(1) == 4, op,
              ": anchors must have shape (N, 4) (x1, y1, x2, y2), got ", anchors.sizes());
  check_float(anchors, op, "anchors");
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, op,
              ": gt_boxes must have shape (B, G, 4) (padded per image), got ", gt_boxes.sizes());
  check_same_device(anchors, gt_boxes, op, "anchors", "gt_boxes");
  TORCH_CHECK(gt_boxes.scalar_type() == anchors.scalar_type(), op, ": gt_boxes must have the anchors' dtype (",
              anchors.scalar_type(), "), got ", gt_boxes.scalar_type());
  AtssInputs in;
  in.batch = gt_boxes.size(0);
  in.num_gt = gt_boxes.size(1);
  in.num_anchors = anchors.size(0);
  const std::vector<int64_t> bg_shape{in.batch, in.num_gt};
  const at::IntArrayRef bg(bg_shape);
  check_same_device(anchors, gt_labels, op, "anchors", "gt_labels");
  TORCH_CHECK(gt_labels.sizes() == bg, op, ": gt_labels must have shape (B, G) = ", bg, ", got ", gt_labels.sizes());
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong || gt_labels.scalar_type() == at::kInt, op,
              ": gt_labels must be int64 or int32, got ", gt_labels.scalar_type());
  check_same_device(anchors, gt_valid, op, "anchors", "gt_valid");
  TORCH_CHECK(gt_valid.sizes() == bg, op, ": gt_valid must have shape (B, G) = ", bg, ", got ", gt_valid.sizes());
  TORCH_CHECK(gt_valid.scalar_type() == at::kBool, op, ": gt_valid must be bool, got ", gt_valid.scalar_type());
  if (anchor_valid.has_value() && anchor_valid->defined()) {
    const at::Tensor& v = *anchor_valid;
    check_same_device(anchors, v, op, "anchors", "anchor_valid");
    TORCH_CHECK((v.dim() == 1 && v.size(0) == in.num_anchors) ||
                    (v.dim() == 2 && v.size(0) == in.batch && v.size(1) == in.num_anchors),
                op, ": anchor_valid must have shape (N,) = (", in.num_anchors, ",) or (B, N) = (", in.batch, ", ",
                in.num_anchors, "), got ", v.sizes());
    TORCH_CHECK(v.scalar_type() == at::kBool, op, ": anchor_valid must be bool, got ", v.scalar_type());
    in.anchor_valid = v.contiguous();
    in.anchor_valid_per_image = v.dim() == 2;
  }
  TORCH_CHECK(topk >= 1, op, ": topk must be >= 1, got ", topk);
  TORCH_CHECK(in.num_anchors < std::numeric_limits<int32_t>::max() && in.num_gt < std::numeric_limits<int32_t>::max(),
              op, ": at most 2^31 - 1 anchors and GTs per image, got ", in.num_anchors, " and ", in.num_gt);
  const int64_t levels = static_cast<int64_t>(num_level_anchors.size());
  TORCH_CHECK(levels <= kAtssMaxLevels, op, ": num_level_anchors has ", levels, " levels; at most ",
              kAtssMaxLevels, " are supported");
  in.level_start.push_back(0);
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t n = num_level_anchors[l];
    TORCH_CHECK(n >= 0, op, ": num_level_anchors must be >= 0, got ", n, " at level ", l);
    in.level_start.push_back(in.level_start.back() + n);
    in.num_candidates += std::min(n, topk);
  }
  TORCH_CHECK(in.level_start.back() == in.num_anchors, op, ": num_level_anchors ", num_level_anchors, " sum to ",
              in.level_start.back(), " but anchors has N = ", in.num_anchors, " rows");
  in.topk = topk;
  in.background_label = background_label;
  in.anchors = anchors.contiguous();
  in.gt_boxes = gt_boxes.contiguous();
  in.gt_labels = gt_labels.to(at::kLong).contiguous();
  in.gt_valid = gt_valid.contiguous();
  return in;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> atss_background(const AtssInputs& in) {
  auto opts = in.anchors.options();
  return {at::zeros({in.batch, in.num_anchors}, opts.dtype(at::kLong)),
          at::full({in.batch, in.num_anchors}, in.background_label, opts.dtype(at::kLong)),
          at::zeros({in.batch, in.num_anchors}, opts)};
}

}  // namespace gflops
