#include "box_checks.h"

namespace gflops {
namespace {

void check_last4(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == 4, op, ": ", name,
              " must have a last dimension of 4 (x1, y1, x2, y2), got shape ", t.sizes());
  check_float(t, op, name);
}

at::Tensor side_input(const at::Tensor& t, const at::Tensor& like, at::IntArrayRef shape, const char* op,
                      const char* name) {
  check_same_device(like, t, op, "pred", name);
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  check_float(t, op, name);
  return t.to(acc_dtype(like)).contiguous();
}

}  // namespace

BoxPairInputs box_iou_prepare(const at::Tensor& boxes1, const at::Tensor& boxes2,
                              const std::string& mode, bool aligned, double eps, const char* op) {
  check_last4(boxes1, op, "boxes1");
  check_last4(boxes2, op, "boxes2");
  check_same_device(boxes1, boxes2, op, "boxes1", "boxes2");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), op,
              ": boxes1 and boxes2 must have one dtype, got ", boxes1.scalar_type(), " and ",
              boxes2.scalar_type());
  TORCH_CHECK(mode == "iou" || mode == "giou", op, ": mode must be 'iou' or 'giou', got '", mode, "'");
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be finite and > 0, got ", eps);
  BoxPairInputs in;
  in.giou = mode == "giou";
  if (aligned) {
    TORCH_CHECK(boxes1.sizes() == boxes2.sizes(), op,
                ": aligned boxes must have one shape, got ", boxes1.sizes(), " and ", boxes2.sizes());
    in.a = boxes1.reshape({-1, 4}).contiguous();
    in.b = boxes2.reshape({-1, 4}).contiguous();
    in.n = in.a.size(0);
    auto s = boxes1.sizes();
    in.out_shape.assign(s.begin(), s.end() - 1);
    return in;
  }
  TORCH_CHECK(boxes1.dim() >= 2 && boxes2.dim() == boxes1.dim(), op,
              ": pairwise boxes must be (..., N, 4) and (..., M, 4) with the same leading dims, got ",
              boxes1.sizes(), " and ", boxes2.sizes());
  auto lead1 = boxes1.sizes().slice(0, boxes1.dim() - 2);
  auto lead2 = boxes2.sizes().slice(0, boxes2.dim() - 2);
  TORCH_CHECK(lead1 == lead2, op, ": boxes1 and boxes2 must share their leading (batch) dims, got ",
              boxes1.sizes(), " and ", boxes2.sizes());
  in.n = boxes1.size(-2);
  in.m = boxes2.size(-2);
  in.batch = 1;
  for (auto d : lead1) in.batch *= d;
  in.a = boxes1.reshape({in.batch, in.n, 4}).contiguous();
  in.b = boxes2.reshape({in.batch, in.m, 4}).contiguous();
  in.out_shape.assign(lead1.begin(), lead1.end());
  in.out_shape.push_back(in.n);
  in.out_shape.push_back(in.m);
  return in;
}

LossInputs giou_loss_prepare(const at::Tensor& pred, const at::Tensor& target,
                             const c10::optional<at::Tensor>& weight, double eps,
                             const std::string& reduction, c10::optional<double> avg_factor, const char* op) {
  TORCH_CHECK(pred.dim() == 2 && pred.size(1) == 4, op, ": pred must have shape (N, 4), got ", pred.sizes());
  check_float(pred, op, "pred");
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be finite and > 0, got ", eps);
  LossInputs in;
  in.pred = pred.contiguous();
  in.rows = pred.size(0);
  in.cols = 4;
  const Reduction r = parse_reduction(reduction, avg_factor, in.rows, op);
  in.sum = r.sum;
  in.mean = r.mean;
  in.divisor = r.divisor;
  in.target = side_input(target, pred, pred.sizes(), op, "target");
  if (weight.has_value() && weight->defined())
    in.weight = side_input(*weight, pred, {pred.size(0)}, op, "weight");
  return in;
}

DistInputs integral_prepare(const at::Tensor& pred, int64_t reg_max, const char* op) {
  TORCH_CHECK(reg_max >= 1 && reg_max < (1 << 20), op, ": reg_max must be >= 1, got ", reg_max);
  check_float(pred, op, "pred");
  const int64_t n1 = reg_max + 1;
  TORCH_CHECK(pred.dim() >= 1 && pred.size(-1) == 4 * n1, op,
              ": pred must have a last dimension of 4 * (reg_max + 1) = ", 4 * n1, ", got shape ",
              pred.sizes());
  DistInputs in;
  in.pred = pred.contiguous();
  in.n1 = static_cast<int>(n1);
  in.rows = pred.numel() / n1;
  auto s = pred.sizes();
  in.out_shape.assign(s.begin(), s.end());
  in.out_shape.back() = 4;
  return in;
}

DecodeInputs decode_prepare(const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides,
                            int64_t reg_max, c10::optional<at::ArrayRef<double>> max_shape, const char* op) {
  DecodeInputs in;
  in.dist = integral_prepare(pred, reg_max, op);
  TORCH_CHECK(pred.dim() >= 2, op, ": pred must be (..., A, 4 * (reg_max + 1)), got shape ", pred.sizes());
  in.anchors = pred.size(-2);
  in.points = side_input(points, pred, {in.anchors, 2}, op, "points");
  in.strides = side_input(strides, pred, {in.anchors}, op, "strides");
  if (max_shape.has_value()) {
    TORCH_CHECK(max_shape->size() == 2, op, ": max_shape must be (H, W), got ", max_shape->size(), " values");
    in.clamp = true;
    in.max_h = (*max_shape)[0];
    in.max_w = (*max_shape)[1];
  }
  return in;
}

void check_strides_positive(const at::Tensor& strides, const char* op) {
  fail_on_first(strides.le(0) | strides.isnan(), strides, op, "strides must be > 0");
}

BoxBranchInputs box_branch_prepare(const at::Tensor& pred, const at::Tensor& points,
                                   const at::Tensor& strides, const at::Tensor& gt_boxes,
                                   const at::Tensor& weight, int64_t reg_max, const char* op) {
  TORCH_CHECK(pred.dim() == 2, op, ": pred must be (P, 4 * (reg_max + 1)), got shape ", pred.sizes());
  BoxBranchInputs in;
  in.dec = decode_prepare(pred, points, strides, reg_max, c10::nullopt, op);
  in.gt = side_input(gt_boxes, pred, {in.dec.anchors, 4}, op, "gt_boxes");
  in.weight = side_input(weight, pred, {in.dec.anchors}, op, "weight");
  return in;
}

}  // namespace gflops
