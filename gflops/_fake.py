"""Fake (meta) kernels: output shapes and dtypes for torch.compile and opcheck."""
import torch


def _acc_dtype(pred):
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _same_device(op, pred, **others):
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == pred.device,
                         lambda: f"{op}: {name} is on {t.device} but pred is on {pred.device}")


def _loss_out(op, pred, reduction):
    torch._check(pred.dim() == 2, lambda: f"{op}: pred must be 2-D, got shape {tuple(pred.shape)}")
    shape = () if reduction == "sum" else (pred.shape[0],)
    return pred.new_empty(shape, dtype=_acc_dtype(pred))


@torch.library.register_fake("gflops::quality_focal_loss")
def _qfl(pred, label, score, weight, beta, reduction):
    op = "gflops.quality_focal_loss"
    _same_device(op, pred, label=label, score=score, weight=weight)
    return _loss_out(op, pred, reduction)


@torch.library.register_fake("gflops::quality_focal_loss_backward")
def _qfl_bwd(grad, pred, label, score, weight, beta, reduction):
    return pred.new_empty(pred.shape)


@torch.library.register_fake("gflops::distribution_focal_loss")
def _dfl(pred, target, weight, reduction):
    op = "gflops.distribution_focal_loss"
    _same_device(op, pred, target=target, weight=weight)
    return _loss_out(op, pred, reduction)


@torch.library.register_fake("gflops::distribution_focal_loss_backward")
def _dfl_bwd(grad, pred, target, weight, reduction):
    return pred.new_empty(pred.shape)
