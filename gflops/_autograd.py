"""Autograd for the differentiable ops; each backward is an op of its own.

Gradients flow to the logits only. The QFL score, the DFL target and the
weights are constants (detectors pass them detached); gflops.losses refuses
them when they require grad rather than return a silently wrong gradient.
"""
import torch
from torch._subclasses.fake_tensor import is_fake


def register(ns):
    """Registers autograd for the differentiable ops of the library `ns`; their
    backward calls that library's backward ops."""
    ops = getattr(torch.ops, ns)

    def autograd(name, backward, setup):
        if hasattr(ops, name):  # the Triton twin has only the loss and decoding ops
            torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup)

    def _qfl_setup(ctx, inputs, output):
        pred, label, score, weight, beta, reduction = inputs
        ctx.save_for_backward(pred, label, score, weight)
        ctx.beta, ctx.reduction = beta, reduction

    def _qfl_backward(ctx, grad):
        pred, label, score, weight = ctx.saved_tensors[:4]
        gp = ops.quality_focal_loss_backward(grad, pred, label, score, weight, ctx.beta, ctx.reduction)
        return gp, None, None, None, None, None

    def fused(name, plain_setup, backward, n_tensors):
        """Autograd of `name`_and_grad, whose second output is the derivative of
        the first w.r.t. pred from the forward sweep (empty where the backend
        does not fuse), for a unit incoming gradient per element of the first
        output: so the gradient is that buffer, viewed as (*output shape, -1),
        times the incoming gradient. The op's first `n_tensors` inputs are
        tensors; `plain_setup` and `backward` are the op-based autograd of
        `name`, for where that buffer cannot serve."""

        def setup(ctx, inputs, output):
            plain_setup(ctx, inputs, output[0])
            fused = output[1]
            ctx.args = inputs[n_tensors:]
            ctx.fused = fused.shape == inputs[0].shape
            ctx.mark_non_differentiable(fused)
            ctx.set_materialize_grads(False)  # else autograd hands the backward a logits-sized zero gradient of `fused`
            # Traced (torch.compile, opcheck): saved like any tensor, scaled out of place, and the
            # compiler plans the buffers. Eager: held on ctx, not saved, so that the backward can
            # scale it in place (one logits-sized buffer in all) and drop it; it therefore bypasses
            # saved-tensor hooks (offloading), and lives until the backward runs or the graph goes.
            ctx.traced = is_fake(fused)
            if ctx.traced and ctx.fused:
                ctx.save_for_backward(*inputs[:n_tensors], fused)
            ctx.fused_grad = None if ctx.traced else fused

        def run_backward(ctx, grad, _grad_of_fused):
            nones = (None,) * (n_tensors + len(ctx.args))
            if grad is None:  # grads are not materialised: nothing flowed into the loss
                return nones
            if not ctx.fused or torch.is_grad_enabled():
                # create_graph: the buffer is a constant, so the op-based backward keeps autograd's view of pred.
                return backward(ctx, grad)
            def per_output(buf):  # the explicit last size: an empty output leaves -1 ambiguous
                return buf.view(*grad.shape, buf.numel() // max(grad.numel(), 1))
            if ctx.traced:
                buf = ctx.saved_tensors[n_tensors]
                return (per_output(buf) * grad.unsqueeze(-1)).view(buf.shape), *nones[1:]
            fused, ctx.fused_grad = ctx.fused_grad, None
            if fused is None:  # a second backward (retain_graph): the same sweep again, so the same bits
                fused = getattr(ops, f"{name}_and_grad")(*ctx.saved_tensors[:n_tensors], *ctx.args)[1]
            if grad.dim() == 0:  # a reduced loss: one scale for all (skips two views per step)
                fused.mul_(grad)
            else:
                per_output(fused).mul_(grad.unsqueeze(-1))
            return fused, *nones[1:]

        autograd(f"{name}_and_grad", run_backward, setup)

    def _dfl_setup(ctx, inputs, output):
        pred, target, weight, reduction = inputs
        ctx.save_for_backward(pred, target, weight)
        ctx.reduction = reduction

    def _dfl_backward(ctx, grad):
        pred, target, weight = ctx.saved_tensors[:3]
        gp = ops.distribution_focal_loss_backward(grad, pred, target, weight, ctx.reduction)
        return gp, None, None, None


    autograd("quality_focal_loss", _qfl_backward, _qfl_setup)
    autograd("distribution_focal_loss", _dfl_backward, _dfl_setup)
    fused("quality_focal_loss", _qfl_setup, _qfl_backward, 4)
    fused("distribution_focal_loss", _dfl_setup, _dfl_backward, 3)

    def _giou_setup(ctx, inputs, output):
        pred, target, weight, eps, reduction = inputs
        ctx.save_for_backward(pred, target, weight)
        ctx.eps, ctx.reduction = eps, reduction

    def _giou_backward(ctx, grad):
        pred, target, weight = ctx.saved_tensors
        return ops.giou_loss_backward(grad, pred, target, weight, ctx.eps, ctx.reduction), None, None, None, None

    def _integral_setup(ctx, inputs, output):
        pred, reg_max = inputs
        ctx.save_for_backward(pred)
        ctx.reg_max = reg_max

    def _integral_backward(ctx, grad):
        (pred,) = ctx.saved_tensors
        return ops.integral_backward(grad, pred, ctx.reg_max), None

    def _decode_setup(ctx, inputs, output):
        pred, points, strides, reg_max, max_shape = inputs
        ctx.save_for_backward(pred, points, strides)
        ctx.reg_max, ctx.max_shape = reg_max, max_shape

    def _decode_backward(ctx, grad):
        pred, points, strides = ctx.saved_tensors[:3]
        g = ops.decode_distribution_backward(grad, pred, points, strides, ctx.reg_max, ctx.max_shape)
        return g, None, None, None, None

    def _branch_setup(ctx, inputs, output):
        pred, points, strides, gt_boxes, weight, reg_max = inputs
        ctx.save_for_backward(pred, points, strides, gt_boxes, weight)
        ctx.reg_max = reg_max
        ctx.mark_non_differentiable(output[2])  # the quality score is computed from detached boxes

    def _branch_backward(ctx, grad_giou, grad_dfl, grad_score):
        pred, points, strides, gt_boxes, weight = ctx.saved_tensors
        g = ops.gfl_box_branch_backward(grad_giou, grad_dfl, pred, points, strides, gt_boxes, weight, ctx.reg_max)
        return g, None, None, None, None, None


    autograd("giou_loss", _giou_backward, _giou_setup)
    autograd("integral", _integral_backward, _integral_setup)
    fused("integral", _integral_setup, _integral_backward, 1)
    autograd("decode_distribution", _decode_backward, _decode_setup)
    fused("decode_distribution", _decode_setup, _decode_backward, 3)
    autograd("gfl_box_branch", _branch_backward, _branch_setup)

    def _autoassign_setup(ctx, inputs, output):
        cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes = inputs
        neg_weight, gt_stats = output[4], output[5]
        ctx.save_for_backward(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, neg_weight,
                              gt_stats)
        ctx.level_shapes = level_shapes
        ctx.mark_non_differentiable(output[3], neg_weight, gt_stats)

    def _autoassign_backward(ctx, g_pos, g_neg, g_prior, g_any, g_neg_weight, g_stats):
        saved = ctx.saved_tensors
        cls = saved[0]
        grads = [g if g is not None else cls.new_zeros(cls.shape[:1], dtype=saved[2].dtype)
                 for g in (g_pos, g_neg, g_prior)]
        d_cls, d_obj, d_dist, d_mu, d_sigma = ops.autoassign_loss_terms_backward(*grads, *saved, ctx.level_shapes)
        return d_cls, d_obj, d_dist, None, None, None, None, None, d_mu, d_sigma, None

    autograd("autoassign_loss_terms", _autoassign_backward, _autoassign_setup)


register("gflops")
