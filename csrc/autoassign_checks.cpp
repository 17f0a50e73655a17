#include "autoassign_checks.h"

#include <limits>

namespace gflops {

namespace {

void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* op, const char* name, const char* layout) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", layout, " = ", want, ", got ", t.sizes());
}

void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want,
              " (the accumulation dtype of the logits), got ", t.scalar_type());
}

}  // namespace

AutoAssignInputs autoassign_prepare(const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist,
                                    const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
                                    const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
                                    const at::Tensor& sigma, at::IntArrayRef level_shapes, const char* op) {
  TORCH_CHECK(cls.dim() == 3, op, ": cls_logits must have shape (B, P, C), got ", cls.sizes());
  check_float(cls, op, "cls_logits");
  AutoAssignInputs in;
  in.batch = cls.size(0);
  in.points_n = cls.size(1);
  in.classes = cls.size(2);
  const int64_t B = in.batch, P = in.points_n, C = in.classes;
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == B && gt_boxes.size(2) == 4, op,
              ": gt_boxes must have shape (B, G, 4) with B = ", B, ", got ", gt_boxes.sizes());
  in.num_gt = gt_boxes.size(1);
  const int64_t G = in.num_gt;
  const at::ScalarType acc = acc_dtype(cls);
  const std::pair<const at::Tensor*, const char*> all[] = {
      {&obj, "obj_logits"}, {&dist, "distances"}, {&points, "points"}, {&strides, "strides"},
      {&gt_boxes, "gt_boxes"}, {&gt_labels, "gt_labels"}, {&gt_valid, "gt_valid"}, {&mu, "mu"}, {&sigma, "sigma"}};
  for (const auto& [t, name] : all) check_same_device(cls, *t, op, "cls_logits", name);
  check_shape(obj, {B, P}, op, "obj_logits", "(B, P)");
  TORCH_CHECK(obj.scalar_type() == cls.scalar_type(), op, ": obj_logits must have the cls_logits' dtype (",
              cls.scalar_type(), "), got ", obj.scalar_type());
  check_shape(dist, {B, P, 4}, op, "distances", "(B, P, 4)");
  check_shape(points, {P, 2}, op, "points", "(P, 2)");
  check_shape(strides, {P}, op, "strides", "(P,)");
  check_shape(gt_labels, {B, G}, op, "gt_labels", "(B, G)");
  check_shape(gt_valid, {B, G}, op, "gt_valid", "(B, G)");
  check_shape(mu, {C, 2}, op, "mu", "(C, 2)");
  check_shape(sigma, {C, 2}, op, "sigma", "(C, 2)");
  const std::pair<const at::Tensor*, const char*> acc_side[] = {
      {&dist, "distances"}, {&points, "points"}, {&strides, "strides"}, {&gt_boxes, "gt_boxes"}, {&mu, "mu"},
      {&sigma, "sigma"}};
  for (const auto& [t, name] : acc_side) check_dtype(*t, acc, op, name);
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong || gt_labels.scalar_type() == at::kInt, op,
              ": gt_labels must be int64 or int32, got ", gt_labels.scalar_type());
  TORCH_CHECK(gt_valid.scalar_type() == at::kBool, op, ": gt_valid must be bool, got ", gt_valid.scalar_type());
  TORCH_CHECK(level_shapes.size() % 2 == 0 && !level_shapes.empty(), op,
              ": level_shapes must list (H, W) of each level, got ", level_shapes);
  TORCH_CHECK(P < std::numeric_limits<int32_t>::max() && G < std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 points and GTs per image, got ", P, " and ", G);
  int64_t start = 0;
  for (size_t l = 0; l < level_shapes.size(); l += 2) {
    const int64_t h = level_shapes[l], w = level_shapes[l + 1];
    TORCH_CHECK(h >= 0 && w >= 0, op, ": level_shapes must be >= 0, got ", level_shapes);
    TORCH_CHECK(h < (int64_t(1) << 30) && w < (int64_t(1) << 30), op,
                ": a level of 2^30 or more rows or columns, got ", level_shapes);
    in.level_start.push_back(start);
    in.level_h.push_back(h);
    in.level_w.push_back(w);
    start += h * w;
  }
  TORCH_CHECK(start == P, op, ": level_shapes ", level_shapes, " hold ", start, " points but the inputs have P = ",
              P);
  in.cls = cls.contiguous();
  in.obj = obj.contiguous();
  in.dist = dist.contiguous();
  in.points = points.contiguous();
  in.strides = strides.contiguous();
  in.gt_boxes = gt_boxes.contiguous();
  in.gt_labels = gt_labels.to(at::kLong).contiguous();
  in.gt_valid = gt_valid.contiguous();
  in.mu = mu.contiguous();
  in.sigma = sigma.contiguous();
  return in;
}

void autoassign_check_values(const AutoAssignInputs& in, const char* op) {
  if (in.gt_labels.numel() == 0) return;
  const at::Tensor bad = in.gt_valid & ((in.gt_labels < 0) | (in.gt_labels >= in.classes));
  fail_on_first(bad.flatten(), in.gt_labels.flatten(), op, "gt_labels of valid GTs must be in [0, num_classes)");
}

}  // namespace gflops
