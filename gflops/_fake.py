"""Fake (meta) kernels: output shapes and dtypes for torch.compile and opcheck.

Registered for the gflops library and, when it is loaded, its emulated twin."""
import torch


def _acc_dtype(pred):
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _same_device(op, pred, main="pred", **others):
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == pred.device,
                         lambda: f"{op}: {name} is on {t.device} but {main} is on {pred.device}")


def _loss_out(op, pred, reduction):
    torch._check(pred.dim() == 2, lambda: f"{op}: pred must be 2-D, got shape {tuple(pred.shape)}")
    shape = (pred.shape[0],) if reduction == "none" else ()
    return pred.new_empty(shape, dtype=_acc_dtype(pred))


def register(ns):
    """Registers the fake kernels of the ops the library `ns` has (the Triton
    twin has only the loss and decoding ops)."""
    lib = getattr(torch.ops, ns)

    def fake(name):
        if not hasattr(lib, name):
            return lambda fn: fn
        return torch.library.register_fake(f"{ns}::{name}")

    def _fused_grad(pred):
        return pred.new_empty(pred.shape if fuses_gradient(ns, pred) else (0,))

    @fake("autoassign_loss_terms")
    def _autoassign(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes,
                    op="gflops.autoassign_loss_terms"):
        torch._check(cls.dim() == 3, lambda: f"{op}: cls_logits must have shape (B, P, C), got {tuple(cls.shape)}")
        _same_device(op, cls, "cls_logits", obj_logits=obj, distances=dist, gt_boxes=gt_boxes, mu=mu, sigma=sigma)
        B, P, C = cls.shape
        acc = _acc_dtype(cls)
        per_image = [cls.new_empty((B,), dtype=acc) for _ in range(3)]
        return (*per_image, cls.new_empty((B,), dtype=torch.bool), cls.new_empty((B, P), dtype=acc),
                cls.new_empty((B, gt_boxes.shape[1], 4), dtype=acc))

    @fake("autoassign_loss_totals")
    def _autoassign_totals(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes):
        out = _autoassign(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes,
                          op="gflops.autoassign_loss")
        acc = out[0].dtype
        return (*[cls.new_empty((), dtype=acc) for _ in range(3)], out[4], out[5],
                cls.new_empty((cls.shape[0], 3), dtype=acc))

    @fake("autoassign_loss_totals_backward")
    def _autoassign_totals_bwd(grad_pos, grad_neg, grad_center, cls, obj, dist, points, strides, gt_boxes, gt_labels,
                               gt_valid, mu, sigma, point_t, gt_stats, image_stats, level_shapes):
        return _autoassign_bwd(grad_pos, grad_neg, grad_center, cls, obj, dist, points, strides, gt_boxes, gt_labels,
                               gt_valid, mu, sigma, point_t, gt_stats, level_shapes)

    @fake("autoassign_loss_terms_backward")
    def _autoassign_bwd(grad_pos, grad_neg, grad_prior, cls, obj, dist, points, strides, gt_boxes, gt_labels,
                        gt_valid, mu, sigma, point_t, gt_stats, level_shapes):
        return (cls.new_empty(cls.shape), obj.new_empty(obj.shape), dist.new_empty(dist.shape),
                mu.new_empty(mu.shape), sigma.new_empty(sigma.shape))

    @fake("quality_focal_loss")
    def _qfl(pred, label, score, weight, beta, reduction, avg_factor=None):
        op = "gflops.quality_focal_loss"
        _same_device(op, pred, label=label, score=score, weight=weight)
        return _loss_out(op, pred, reduction)

    @fake("quality_focal_loss_and_grad")
    def _qfl_and_grad(pred, label, score, weight, beta, reduction, avg_factor=None):
        loss = _qfl(pred, label, score, weight, beta, reduction)
        return loss, _fused_grad(pred)

    @fake("quality_focal_loss_backward")
    def _qfl_bwd(grad, pred, label, score, weight, beta, reduction, avg_factor=None):
        return pred.new_empty(pred.shape)

    @fake("distribution_focal_loss")
    def _dfl(pred, target, weight, reduction, avg_factor=None):
        op = "gflops.distribution_focal_loss"
        _same_device(op, pred, target=target, weight=weight)
        return _loss_out(op, pred, reduction)

    @fake("distribution_focal_loss_backward")
    def _dfl_bwd(grad, pred, target, weight, reduction, avg_factor=None):
        return pred.new_empty(pred.shape)

    @fake("distribution_focal_loss_and_grad")
    def _dfl_and_grad(pred, target, weight, reduction, avg_factor=None):
        return _dfl(pred, target, weight, reduction), _fused_grad(pred)

    @fake("box_iou")
    def _box_iou(boxes1, boxes2, mode, aligned, eps):
        _same_device("gflops.box_iou", boxes1, "boxes1", boxes2=boxes2)
        if aligned:
            return boxes1.new_empty(boxes1.shape[:-1])
        return boxes1.new_empty((*boxes1.shape[:-1], boxes2.shape[-2]))

    @fake("giou_loss")
    def _giou(pred, target, weight, eps, reduction, avg_factor=None):
        _same_device("gflops.giou_loss", pred, target=target, weight=weight)
        return _loss_out("gflops.giou_loss", pred, reduction)

    @fake("giou_loss_backward")
    def _giou_bwd(grad, pred, target, weight, eps, reduction, avg_factor=None):
        return pred.new_empty(pred.shape)

    @fake("integral")
    def _integral(pred, reg_max):
        return pred.new_empty((*pred.shape[:-1], 4))

    @fake("integral_backward")
    def _integral_bwd(grad, pred, reg_max):
        return pred.new_empty(pred.shape)

    @fake("integral_and_grad")
    def _integral_and_grad(pred, reg_max):
        return _integral(pred, reg_max), _fused_grad(pred)

    @fake("decode_distribution")
    def _decode(pred, points, strides, reg_max, max_shape):
        _same_device("gflops.decode_distribution", pred, points=points, strides=strides)
        return pred.new_empty((*pred.shape[:-1], 4))

    @fake("decode_distribution_backward")
    def _decode_bwd(grad, pred, points, strides, reg_max, max_shape):
        return pred.new_empty(pred.shape)

    @fake("decode_distribution_and_grad")
    def _decode_and_grad(pred, points, strides, reg_max, max_shape):
        return _decode(pred, points, strides, reg_max, max_shape), _fused_grad(pred)

    @fake("gfl_box_branch")
    def _branch(pred, points, strides, gt_boxes, weight, reg_max):
        _same_device("gflops.gfl_box_branch", pred, points=points, strides=strides, gt_boxes=gt_boxes, weight=weight)
        acc = _acc_dtype(pred)
        return pred.new_empty((), dtype=acc), pred.new_empty((), dtype=acc), pred.new_empty((pred.shape[0],), dtype=acc)

    @fake("gfl_box_branch_backward")
    def _branch_bwd(grad_giou, grad_dfl, pred, points, strides, gt_boxes, weight, reg_max):
        return pred.new_empty(pred.shape)


    @fake("atss_assign")
    def _atss(anchors, num_level_anchors, gt_boxes, gt_labels, gt_valid, anchor_valid, topk, background_label):
        op = "gflops.atss_assign"
        torch._check(anchors.dim() == 2 and anchors.shape[-1] == 4,
                     lambda: f"{op}: anchors must have shape (N, 4), got {tuple(anchors.shape)}")
        torch._check(gt_boxes.dim() == 3, lambda: f"{op}: gt_boxes must have shape (B, G, 4), got {tuple(gt_boxes.shape)}")
        _same_device(op, anchors, "anchors", gt_boxes=gt_boxes, gt_labels=gt_labels, gt_valid=gt_valid,
                     anchor_valid=anchor_valid)
        shape = (gt_boxes.shape[0], anchors.shape[0])
        return (anchors.new_empty(shape, dtype=torch.long), anchors.new_empty(shape, dtype=torch.long),
                anchors.new_empty(shape))


    def _nms_common(op, boxes, scores, idxs):
        torch._check(boxes.dim() == 2 and boxes.shape[-1] == 4,
                     lambda: f"{op}: boxes must have shape (K, 4), got {tuple(boxes.shape)}")
        _same_device(op, boxes, "boxes", scores=scores, idxs=idxs)
        # The number of kept boxes is data-dependent.
        return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.long)

    @fake("nms")
    def _nms(boxes, scores, iou_threshold):
        return _nms_common("gflops.nms", boxes, scores, None)

    @fake("batched_nms")
    def _batched_nms(boxes, scores, idxs, iou_threshold):
        return _nms_common("gflops.batched_nms", boxes, scores, idxs)

    @fake("multiclass_nms")
    def _multiclass_nms(cls_scores, bbox_preds, points, strides, level_sizes, image_shapes, scale_factors, reg_max,
                        score_thr, nms_pre, iou_threshold, max_per_img, min_bbox_size):
        op = "gflops.multiclass_nms"
        torch._check(cls_scores.dim() == 3,
                     lambda: f"{op}: cls_scores must have shape (B, N, C), got {tuple(cls_scores.shape)}")
        _same_device(op, cls_scores, "cls_scores", bbox_preds=bbox_preds, points=points, strides=strides,
                     image_shapes=image_shapes, scale_factors=scale_factors)
        B, P, acc = cls_scores.shape[0], max_per_img, _acc_dtype(cls_scores)
        return (cls_scores.new_empty((B, P, 4), dtype=acc), cls_scores.new_empty((B, P), dtype=acc),
                cls_scores.new_empty((B, P), dtype=torch.long), cls_scores.new_empty((B,), dtype=torch.long))


register("gflops")


def fuses_gradient(ns, pred):
    """Whether `ns`'s *_and_grad ops return the gradient for `pred`: the CPU
    kernels, for float32/float64 logits (a 16-bit buffer would round the
    unscaled gradient, underflowing what a loss scaler multiplies up later).
    csrc/autograd.h's fuses() adds one condition for calling them: no
    saved-tensor hooks (there autograd calls the plain op instead)."""
    return ns == "gflops" and pred.device.type == "cpu" and pred.dtype in (torch.float32, torch.float64)
