"""QFL and DFL written plainly from SPEC.md sections 1-2, in float32
(float64 for float64 logits), with no host synchronisation."""
import torch
import torch.nn.functional as F


def _acc(pred):
    return pred.double() if pred.dtype == torch.float64 else pred.float()


def _reduce(loss, reduction, avg_factor):
    if reduction == "none":
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError("avg_factor can not be used with reduction='sum'")
        return loss.sum()
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    if avg_factor is not None:
        return loss.sum() / avg_factor
    return loss.sum() / max(loss.shape[0], 1)


def quality_focal_loss(pred, label, score, weight=None, beta=2.0, reduction="mean", avg_factor=None):
    x = _acc(pred)
    num_classes = x.shape[1]
    classes = torch.arange(num_classes, device=x.device)
    # Labels outside [0, C) match no class column, so those rows are background,
    # and their score is never read (a NaN there must not reach the loss).
    hit = classes[None, :] == label[:, None]
    target = torch.where(hit, score.to(x.dtype)[:, None], torch.zeros((), dtype=x.dtype, device=x.device))
    s = torch.sigmoid(x)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    loss = (bce * (target - s).abs().pow(beta)).sum(dim=1)
    if weight is not None:
        loss = loss * weight.to(x.dtype)
    return _reduce(loss, reduction, avg_factor)


def distribution_focal_loss(pred, target, weight=None, reduction="mean", avg_factor=None):
    x = _acc(pred)
    t = target.to(x.dtype)
    left = t.floor().long()
    right = left + 1
    w_left = right.to(x.dtype) - t
    w_right = t - left.to(x.dtype)
    log_p = F.log_softmax(x, dim=1)
    loss = -(w_left * log_p.gather(1, left[:, None]).squeeze(1)
             + w_right * log_p.gather(1, right[:, None]).squeeze(1))
    if weight is not None:
        loss = loss * weight.to(x.dtype)
    return _reduce(loss, reduction, avg_factor)
