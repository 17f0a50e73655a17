#include "nms_checks.h"

#include <cmath>

namespace gflops {

namespace {

void check_threshold(double v, const char* op, const char* name) {
  TORCH_CHECK(v >= 0.0 && v <= 1.0, op, ": ", name, " must be in [0, 1], got ", v);
}

// A per-image (B, 2) pair such as (H, W), in the accumulation dtype.
at::Tensor per_image_pair(const at::Tensor& t, int64_t batch, const at::Tensor& like, at::ScalarType acc,
                          const char* op, const char* name, const char* what) {
  check_same_device(like, t, op, "cls_scores", name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == 2, op, ": ", name, " must have shape (B, 2) = (",
              batch, ", 2) ", what, ", got ", t.sizes());
  TORCH_CHECK(t.is_floating_point() || at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must be a real number tensor, got ", t.scalar_type());
  return t.to(acc).contiguous();
}

}  // namespace

NmsInputs nms_prepare(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                      double iou_threshold, const char* op) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must have shape (K, 4) (x1, y1, x2, y2), got ",
              boxes.sizes());
  check_float(boxes, op, "boxes");
  check_same_device(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must have shape (K,) = (",
              boxes.size(0), ",), got ", scores.sizes());
  check_float(scores, op, "scores");
  check_threshold(iou_threshold, op, "iou_threshold");
  NmsInputs in;
  in.count = boxes.size(0);
  in.iou_threshold = iou_threshold;
  in.boxes = boxes.contiguous();
  in.scores = scores.contiguous();
  if (idxs) {
    check_same_device(boxes, *idxs, op, "boxes", "idxs");
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == in.count, op, ": idxs must have shape (K,) = (", in.count,
                ",), got ", idxs->sizes());
    const auto t = idxs->scalar_type();
    TORCH_CHECK(at::isIntegralType(t, /*includeBool=*/false), op, ": idxs must be an integer tensor, got ", t);
    in.idxs = idxs->to(at::kLong).contiguous();
  }
  return in;
}

MulticlassInputs multiclass_prepare(const at::Tensor& cls_scores, const at::Tensor& bbox_preds,
                                    const at::Tensor& points, const at::Tensor& strides,
                                    at::IntArrayRef level_sizes, const at::Tensor& image_shapes,
                                    const c10::optional<at::Tensor>& scale_factors, int64_t reg_max,
                                    double score_thr, int64_t nms_pre, double iou_threshold,
                                    int64_t max_per_img, double min_bbox_size, const char* op) {
  TORCH_CHECK(cls_scores.dim() == 3, op, ": cls_scores must have shape (B, N, C) (logits), got ", cls_scores.sizes());
  check_float(cls_scores, op, "cls_scores");
  TORCH_CHECK(reg_max >= 0, op, ": reg_max must be >= 0, got ", reg_max);
  MulticlassInputs in;
  in.batch = cls_scores.size(0);
  in.anchors = cls_scores.size(1);
  in.classes = cls_scores.size(2);
  in.reg_max = reg_max;
  const int64_t B = in.batch, N = in.anchors;
  check_same_device(cls_scores, bbox_preds, op, "cls_scores", "bbox_preds");
  TORCH_CHECK(bbox_preds.dim() == 3 && bbox_preds.size(0) == B && bbox_preds.size(1) == N &&
                  bbox_preds.size(2) == 4 * (reg_max + 1),
              op, ": bbox_preds must have shape (B, N, 4 * (reg_max + 1)) = (", B, ", ", N, ", ", 4 * (reg_max + 1),
              "), got ", bbox_preds.sizes());
  TORCH_CHECK(bbox_preds.scalar_type() == cls_scores.scalar_type(), op, ": bbox_preds must have cls_scores' dtype (",
              cls_scores.scalar_type(), "), got ", bbox_preds.scalar_type());
  const at::ScalarType acc = acc_dtype(cls_scores);
  check_same_device(cls_scores, points, op, "cls_scores", "points");
  TORCH_CHECK(points.dim() == 2 && points.size(0) == N && points.size(1) == 2, op,
              ": points must have shape (N, 2) = (", N, ", 2) (anchor centres), got ", points.sizes());
  check_float(points, op, "points");
  check_same_device(cls_scores, strides, op, "cls_scores", "strides");
  TORCH_CHECK(strides.dim() == 1 && strides.size(0) == N, op, ": strides must have shape (N,) = (", N, ",), got ",
              strides.sizes());
  check_float(strides, op, "strides");
  in.image_shapes = per_image_pair(image_shapes, B, cls_scores, acc, op, "image_shapes", "(H, W)");
  if (scale_factors.has_value() && scale_factors->defined())
    in.scale_factors = per_image_pair(*scale_factors, B, cls_scores, acc, op, "scale_factors", "(sx, sy)");
  else
    in.scale_factors = at::ones({B, 2}, cls_scores.options().dtype(acc));
  check_threshold(score_thr, op, "score_thr");
  check_threshold(iou_threshold, op, "iou_threshold");
  TORCH_CHECK(nms_pre >= 1, op, ": nms_pre must be >= 1, got ", nms_pre);
  TORCH_CHECK(max_per_img >= 1, op, ": max_per_img must be >= 1, got ", max_per_img);
  TORCH_CHECK(std::isfinite(min_bbox_size) && min_bbox_size >= 0.0, op, ": min_bbox_size must be finite and >= 0, got ",
              min_bbox_size);
  const int64_t levels = static_cast<int64_t>(level_sizes.size());
  TORCH_CHECK(levels >= 1 && levels <= kNmsMaxLevels, op, ": level_sizes must list 1 to ", kNmsMaxLevels,
              " levels, got ", levels);
  in.level_start.push_back(0);
  in.slot_start.push_back(0);
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t n = level_sizes[l];
    TORCH_CHECK(n >= 0, op, ": level_sizes must be >= 0, got ", n, " at level ", l);
    in.level_start.push_back(in.level_start.back() + n);
    in.slot_start.push_back(in.slot_start.back() + std::min(nms_pre, n * in.classes));
  }
  TORCH_CHECK(in.level_start.back() == N, op, ": level_sizes ", level_sizes, " sum to ", in.level_start.back(),
              " but cls_scores has N = ", N, " anchors");
  in.nms_pre = nms_pre;
  in.max_per_img = max_per_img;
  in.score_thr = score_thr;
  in.iou_threshold = iou_threshold;
  in.min_bbox_size = min_bbox_size;
  in.cls = cls_scores.contiguous();
  in.reg = bbox_preds.contiguous();
  in.points = points.to(acc).contiguous();
  in.strides = strides.to(acc).contiguous();
  return in;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_outputs(const MulticlassInputs& in) {
  auto opts = in.cls.options().dtype(acc_dtype(in.cls));
  return {at::zeros({in.batch, in.max_per_img, 4}, opts), at::zeros({in.batch, in.max_per_img}, opts),
          at::full({in.batch, in.max_per_img}, -1, opts.dtype(at::kLong)),
          at::zeros({in.batch}, opts.dtype(at::kLong))};
}

}  // namespace gflops
