// Every schema of the gflops library, as one function so that the emulated
// twin library (gflops_emu, csrc/emulation) declares exactly the same ops.
// The losses' `reduction` is 'none' | 'sum' | 'mean', 'mean' dividing the sum by
// avg_factor where given, else by the number of rows (SPEC.md): one op per call
// (a division after it would be a second op and a second autograd node).
#pragma once

#include <torch/library.h>

namespace gflops {

inline void define_schemas(torch::Library& m) {
  m.def("quality_focal_loss(Tensor pred, Tensor label, Tensor score, Tensor? weight, float beta, str reduction, float? avg_factor=None) -> Tensor");
  m.def("quality_focal_loss_backward(Tensor grad, Tensor pred, Tensor label, Tensor score, Tensor? weight, float beta, str reduction, float? avg_factor=None) -> Tensor");
  // The loss and, where a backend fuses them (CPU, float32/float64), d loss / d pred in pred's dtype from
  // the same sweep; elsewhere an empty tensor, and the backward op runs later (csrc/autograd.h, whose
  // Autograd kernel of quality_focal_loss calls this op where it fuses and scales the buffer in place).
  m.def("quality_focal_loss_and_grad(Tensor pred, Tensor label, Tensor score, Tensor? weight, float beta, str reduction, float? avg_factor=None) -> (Tensor, Tensor)");
  m.def("distribution_focal_loss(Tensor pred, Tensor target, Tensor? weight, str reduction, float? avg_factor=None) -> Tensor");
  m.def("distribution_focal_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str reduction, float? avg_factor=None) -> Tensor");
  // As quality_focal_loss_and_grad, for the DFL.
  m.def("distribution_focal_loss_and_grad(Tensor pred, Tensor target, Tensor? weight, str reduction, float? avg_factor=None) -> (Tensor, Tensor)");

  m.def("box_iou(Tensor boxes1, Tensor boxes2, str mode, bool aligned, float eps) -> Tensor");
  m.def("giou_loss(Tensor pred, Tensor target, Tensor? weight, float eps, str reduction, float? avg_factor=None) -> Tensor");
  m.def("giou_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, float eps, str reduction, float? avg_factor=None) -> Tensor");

  m.def("integral(Tensor pred, int reg_max) -> Tensor");
  m.def("integral_backward(Tensor grad, Tensor pred, int reg_max) -> Tensor");
  // The distances and, where a backend fuses them (CPU, float32/float64), d distance / d pred (pred's shape:
  // each bin's derivative of its side) from the same exponentials; else empty. As quality_focal_loss_and_grad.
  m.def("integral_and_grad(Tensor pred, int reg_max) -> (Tensor, Tensor)");
  m.def("decode_distribution(Tensor pred, Tensor points, Tensor strides, int reg_max, float[]? max_shape) -> Tensor");
  m.def("decode_distribution_backward(Tensor grad, Tensor pred, Tensor points, Tensor strides, int reg_max, float[]? max_shape) -> Tensor");
  // The boxes and, where a backend fuses them (CPU, float32/float64), d box side / d pred (pred's shape: each
  // bin's derivative of its side) from the same exponentials; else empty. Autograd scales it by the
  // incoming gradient, as for quality_focal_loss_and_grad.
  m.def("decode_distribution_and_grad(Tensor pred, Tensor points, Tensor strides, int reg_max, float[]? max_shape) -> (Tensor, Tensor)");
  m.def("gfl_box_branch(Tensor pred, Tensor points, Tensor strides, Tensor gt_boxes, Tensor weight, int reg_max) -> (Tensor, Tensor, Tensor)");
  m.def("gfl_box_branch_backward(Tensor grad_giou, Tensor grad_dfl, Tensor pred, Tensor points, Tensor strides, Tensor gt_boxes, Tensor weight, int reg_max) -> Tensor");

  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("multiclass_nms(Tensor cls_scores, Tensor bbox_preds, Tensor points, Tensor strides, int[] level_sizes, Tensor image_shapes, Tensor? scale_factors, int reg_max, float score_thr, int nms_pre, float iou_threshold, int max_per_img, float min_bbox_size) -> (Tensor, Tensor, Tensor, Tensor)");

  m.def("autoassign_loss_terms(Tensor cls_logits, Tensor obj_logits, Tensor distances, Tensor points, Tensor strides, Tensor gt_boxes, Tensor gt_labels, Tensor gt_valid, Tensor mu, Tensor sigma, int[] level_shapes) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("autoassign_loss_terms_backward(Tensor grad_pos, Tensor grad_neg, Tensor grad_prior, Tensor cls_logits, Tensor obj_logits, Tensor distances, Tensor points, Tensor strides, Tensor gt_boxes, Tensor gt_labels, Tensor gt_valid, Tensor mu, Tensor sigma, Tensor point_t, Tensor gt_stats, int[] level_shapes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("autoassign_loss_totals(Tensor cls_logits, Tensor obj_logits, Tensor distances, Tensor points, Tensor strides, Tensor gt_boxes, Tensor gt_labels, Tensor gt_valid, Tensor mu, Tensor sigma, int[] level_shapes) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("autoassign_loss_totals_backward(Tensor grad_pos, Tensor grad_neg, Tensor grad_center, Tensor cls_logits, Tensor obj_logits, Tensor distances, Tensor points, Tensor strides, Tensor gt_boxes, Tensor gt_labels, Tensor gt_valid, Tensor mu, Tensor sigma, Tensor point_t, Tensor gt_stats, Tensor image_stats, int[] level_shapes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  m.def("atss_assign(Tensor anchors, int[] num_level_anchors, Tensor gt_boxes, Tensor gt_labels, Tensor gt_valid, Tensor? anchor_valid, int topk, int background_label) -> (Tensor, Tensor, Tensor)");
}

}  // namespace gflops
