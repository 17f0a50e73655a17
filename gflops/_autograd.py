"""Autograd of the Triton twin (torch.ops.gflops_triton), whose kernels are
Python launchers. gflops and its emulated twin register theirs in C++
(csrc/autograd.h), which holds the same rules: gradients flow to the logits
only, each backward is an op of its own. The Triton kernels never fuse the
gradient into the forward, so the *_and_grad ops' second output is always
empty here and the backward op runs.
"""
import torch


def register(ns):
    """Registers autograd for the loss and decoding ops of the library `ns`."""
    ops = getattr(torch.ops, ns)

    def autograd(name, backward, setup, n_inputs):
        def plain_backward(ctx, grad, *_):
            return backward(ctx, grad), *(None,) * (n_inputs - 1)

        def fused_setup(ctx, inputs, output):
            setup(ctx, inputs, output[0])
            ctx.mark_non_differentiable(output[1])

        torch.library.register_autograd(f"{ns}::{name}", plain_backward, setup_context=setup)
        torch.library.register_autograd(f"{ns}::{name}_and_grad", plain_backward, setup_context=fused_setup)

    def qfl_setup(ctx, inputs, output):
        pred, label, score, weight, beta, reduction, avg_factor = inputs
        ctx.save_for_backward(pred, label, score, weight)
        ctx.args = beta, reduction, avg_factor

    def qfl_backward(ctx, grad):
        return ops.quality_focal_loss_backward(grad, *ctx.saved_tensors, *ctx.args)

    def dfl_setup(ctx, inputs, output):
        pred, target, weight, reduction, avg_factor = inputs
        ctx.save_for_backward(pred, target, weight)
        ctx.args = reduction, avg_factor

    def dfl_backward(ctx, grad):
        return ops.distribution_focal_loss_backward(grad, *ctx.saved_tensors, *ctx.args)

    def integral_setup(ctx, inputs, output):
        pred, reg_max = inputs
        ctx.save_for_backward(pred)
        ctx.reg_max = reg_max

    def integral_backward(ctx, grad):
        return ops.integral_backward(grad, *ctx.saved_tensors, ctx.reg_max)

    def decode_setup(ctx, inputs, output):
        pred, points, strides, reg_max, max_shape = inputs
        ctx.save_for_backward(pred, points, strides)
        ctx.args = reg_max, max_shape

    def decode_backward(ctx, grad):
        return ops.decode_distribution_backward(grad, *ctx.saved_tensors, *ctx.args)

    autograd("quality_focal_loss", qfl_backward, qfl_setup, 7)
    autograd("distribution_focal_loss", dfl_backward, dfl_setup, 5)
    autograd("integral", integral_backward, integral_setup, 2)
    autograd("decode_distribution", decode_backward, decode_setup, 5)
