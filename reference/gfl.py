"""The GFL detector (Li et al., 2020) as MMDetection configures it: ResNet +
FPN (P3-P7) + the GFL head with ATSS assignment, QFL (1.0), DFL (0.25) and
GIoU (2.0). Every op of the head goes through an `Ops` namespace, so the same
detector runs on reference/ ops or on gflops."""
import math

import torch
from torch import nn

from .backbone import FPN, ResNet
from .ops import Ops

STRIDES = (8, 16, 32, 64, 128)


def _identity(t):
    return t


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


def _tower(cin, channels, n, bias=False):
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1, bias=bias),
                   nn.GroupNorm(min(32, channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class GFLHead(nn.Module):
    """Shared 4-conv towers with GroupNorm, one square anchor of 8 x stride per
    location, reg_max + 1 bins per side, a learnable scale per level."""

    def __init__(self, num_classes, in_channels=256, stacked_convs=4, reg_max=16):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.cls_tower = _tower(in_channels, in_channels, stacked_convs)
        self.reg_tower = _tower(in_channels, in_channels, stacked_convs)
        self.cls = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(in_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in STRIDES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats):
        """(B, N, C) class logits and (B, N, 4 (reg_max+1)) box logits, level by level, row-major."""
        cls, reg = [], []
        for f, scale in zip(feats, self.scales):
            cls.append(self.cls(self.cls_tower(f)).flatten(2).transpose(1, 2))
            reg.append(scale(self.reg(self.reg_tower(f))).flatten(2).transpose(1, 2))
        return torch.cat(cls, 1), torch.cat(reg, 1)


def anchors(feat_shapes, device, octave_base_scale=8, dtype=torch.float32):
    """Anchor centres (N, 2) at (x * stride, y * stride), strides (N,), square
    anchor boxes (N, 4) of side octave_base_scale * stride, and level sizes."""
    points, strides, boxes, sizes = [], [], [], []
    for (h, w), s in zip(feat_shapes, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        p = torch.stack([xs.flatten(), ys.flatten()], 1).to(dtype) * s
        half = octave_base_scale * s / 2
        points.append(p)
        strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
        boxes.append(torch.cat([p - half, p + half], 1))
        sizes.append(h * w)
    return torch.cat(points), torch.cat(strides), torch.cat(boxes), sizes


def pad_shape(img_shape, size_divisor=32):
    """An image's own padded (h, w): each side rounded up to size_divisor."""
    return tuple(-(-int(v) // size_divisor) * size_divisor for v in img_shape)


def valid_flags(feat_shapes, pad_shapes, device):
    """(B, N) anchor validity as MMDetection's AnchorGenerator.valid_flags:
    on each level, column x < ceil(pad_w / stride) and row y < ceil(pad_h /
    stride), with (pad_h, pad_w) the image's own padded size, not the
    batch's. Anchors over the batch padding are never ATSS candidates and
    have classification weight 0."""
    flags = []
    for (h, w), s in zip(feat_shapes, STRIDES):
        vh = torch.tensor([min(-(-ph // s), h) for ph, _ in pad_shapes], device=device)
        vw = torch.tensor([min(-(-pw // s), w) for _, pw in pad_shapes], device=device)
        ys = torch.arange(h, device=device)[:, None].expand(h, w).flatten()
        xs = torch.arange(w, device=device)[None, :].expand(h, w).flatten()
        flags.append((ys[None] < vh[:, None]) & (xs[None] < vw[:, None]))
    return torch.cat(flags, 1)


class GFL(nn.Module):
    # The ops namespace entries this detector calls (what `--ops` reports).
    OPS = ("atss_assign", "gfl_box_branch", "quality_focal_loss", "multiclass_nms")

    def __init__(self, num_classes, depth=50, base_width=64, fpn_channels=256, stacked_convs=4, reg_max=16,
                 ops=None, frozen_stages=-1, norm_eval=False):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.backbone = ResNet(depth, base_width, frozen_stages, norm_eval)
        self.neck = FPN(self.backbone.out_channels, fpn_channels)
        self.head = GFLHead(num_classes, fpn_channels, stacked_convs, reg_max)
        self.ops = ops or Ops("reference")

    def forward(self, images, gt_boxes=None, gt_labels=None, gt_valid=None, img_shapes=None,
                reduce_mean=_identity, timer=None):
        """The losses when GT is given, else the raw outputs (what DDP wraps:
        the training loop computes the losses from them)."""
        if gt_boxes is not None:
            return self.loss(images, gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean)
        return self.raw(images, timer)

    def raw(self, images, timer=None):
        feats = self.neck(self.backbone(images))
        if timer is not None:
            timer("backbone+neck")
        cls, reg = self.head(feats)
        if timer is not None:
            timer("head")
        return cls, reg, [tuple(f.shape[-2:]) for f in feats]

    def loss(self, images, gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean=_identity):
        """QFL + GIoU + DFL as SPEC section 4; normalisers stay on the device.
        reduce_mean averages a tensor over processes under DDP."""
        return self.loss_from_raw(*self.raw(images), gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean)

    def loss_from_raw(self, cls, reg, shapes, gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean=_identity,
                      timer=None):
        """The head's losses from its raw outputs. `timer(stage)` (optional)
        is called when assignment ends, to split the step into stages."""
        B, N, C = cls.shape
        device, dtype = cls.device, cls.dtype if cls.dtype == torch.float64 else torch.float32
        points, strides, anchor_boxes, sizes = anchors(shapes, device, dtype=dtype)
        anchor_valid = valid_flags(shapes, [pad_shape(s) for s in img_shapes], device)
        assigned_gt, labels, _ = self.ops.atss_assign(anchor_boxes, sizes, gt_boxes.to(dtype),
                                                      gt_labels.clamp(min=0), gt_valid, C, 9, anchor_valid)
        if timer is not None:
            timer("assign")
        cls_flat, reg_flat = cls.reshape(B * N, C), reg.reshape(B * N, -1)
        pos = (assigned_gt > 0).flatten()
        pos_idx = torch.nonzero(pos).squeeze(1)
        img, anchor = pos_idx // N, pos_idx % N
        gt = gt_boxes.to(dtype)[img, assigned_gt.flatten()[pos_idx] - 1]
        weight = cls_flat.detach().to(dtype).sigmoid().max(1).values[pos_idx]
        giou_sum, dfl_sum, score_pos = self.ops.gfl_box_branch(reg_flat[pos_idx], points[anchor], strides[anchor],
                                                               gt, weight, self.reg_max)
        score = torch.zeros(B * N, device=device, dtype=score_pos.dtype)
        score[pos_idx] = score_pos
        # MMDetection's avg_factor: per image max(num_pos, 1), summed, averaged over processes.
        num_pos = reduce_mean((assigned_gt > 0).sum(1).clamp(min=1).sum().to(dtype))
        w_sum = reduce_mean(weight.sum()).clamp(min=1)
        loss_cls = self.ops.quality_focal_loss(cls_flat, labels.flatten(), score,
                                               weight=anchor_valid.flatten().to(dtype), avg_factor=num_pos)
        return dict(loss_cls=loss_cls, loss_bbox=2.0 * giou_sum / w_sum, loss_dfl=0.25 * dfl_sum / 4 / w_sum)

    @torch.no_grad()
    def predict(self, images, metas, **kw):
        """Per image: boxes (K, 4) in original image pixels, scores (K,), labels (K,)."""
        return self.postprocess(*self.raw(images), metas, **kw)

    @torch.no_grad()
    def postprocess(self, cls, reg, shapes, metas, score_thr=0.05, nms_pre=1000, iou_threshold=0.6,
                    max_per_img=100, min_bbox_size=0.0):
        dtype = cls.dtype if cls.dtype == torch.float64 else torch.float32
        points, strides, _, sizes = anchors(shapes, cls.device, dtype=dtype)

        return unpad(*self.ops.multiclass_nms(
            cls, reg, points, strides, sizes, [m["img_shape"] for m in metas], score_thr, nms_pre, iou_threshold,
            max_per_img, min_bbox_size, [m["scale_factor"] for m in metas], self.reg_max), metas)


def unpad(boxes, scores, labels, counts, metas):
    """The padded batch of detections as one dict per image, boxes in original image pixels."""
    out = []
    for b, m in enumerate(metas):
        k = int(counts[b])
        sx, sy = m["scale_factor"]
        scale = torch.tensor([sx, sy, sx, sy], device=boxes.device, dtype=boxes.dtype)
        out.append(dict(boxes=boxes[b, :k] / scale, scores=scores[b, :k], labels=labels[b, :k]))
    return out
