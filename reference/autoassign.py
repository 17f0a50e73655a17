"""The AutoAssign detector (Zhu et al., 2020) as MMDetection 3.x configures it
(autoassign_head.py, configs/autoassign/autoassign_r50-caffe_fpn_1x_coco.py):
ResNet + FPN (P3-P7, strides 8-128) + the AutoAssign head, with the loss of
SPEC.md section 6 (reference/autoassign_loss.py).

The head, choice by choice:
- Two towers (classification, regression) of `stacked_convs` x [conv3x3
  with bias, GroupNorm(32), ReLU], shared over levels. MMDetection forces
  conv_bias=True here, where FCOS's 'auto' would drop the bias before GN.
- Predictors, 3x3 convs: class logits (C) on the class tower, box distances
  (4) and objectness (1) on the regression tower.
- A learnable scale per level, init 1.0. The distances are
  max(scale * conv_reg, 0) * stride in pixels (l, t, r, b), in float32, the
  same in training and test (MMDetection 3.x; 2.x applied the stride only at
  test time).
- Init: every conv N(0, 0.01) with bias 0, then class bias -log(0.98/0.02)
  (prior 0.02) and box bias 4.0 (starting distances 4 strides).
- Points at (x * stride, y * stride), no half-stride offset
  (MlvlPointGenerator(offset=0)), level by level, row-major.
- The center prior's mu (C, 2) init 0 and sigma (C, 2) init 1 are the
  model's parameters. The forward returns them stacked as one output, so
  that under DDP their gradient arrives with the head's.
- Post-process (BaseDenseHead's, with the objectness as score factor): per
  level the best nms_pre (point, class) pairs with sigma(cls) > score_thr,
  scored sigma(cls) * sigma(obj), decoded and clipped to the image, boxes
  with w, h > min_bbox_size, class-wise NMS at 0.6, the best 100.
- Training (MMDetection's config; reference/train.py --model autoassign):
  SGD lr 0.01 per 16 images, momentum 0.9, weight decay 1e-4 with none on
  normalisation layers, linear warm-up over 1000 iterations from 0.001 (twice
  GFL's 500), 12 epochs with x0.1 at 8 and 11.
"""
import math

import torch
from torch import nn

from .backbone import FPN, ResNet
from .gfl import STRIDES, Scale, _identity, _tower, anchors, unpad
from .ops import Ops


def _acc(t):
    return t if t.dtype == torch.float64 else t.float()


class AutoAssignHead(nn.Module):
    def __init__(self, num_classes, in_channels=256, stacked_convs=4):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, in_channels, stacked_convs, bias=True)
        self.reg_tower = _tower(in_channels, in_channels, stacked_convs, bias=True)
        self.cls = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.obj = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in STRIDES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.02) / 0.02))
        nn.init.constant_(self.reg.bias, 4.0)

    def forward(self, feats):
        """(B, N, C) class logits, (B, N, 4) distances in pixels, (B, N) objectness logits."""
        cls, dist, obj = [], [], []
        for f, scale, stride in zip(feats, self.scales, STRIDES):
            c, r = self.cls_tower(f), self.reg_tower(f)
            cls.append(self.cls(c).flatten(2).transpose(1, 2))
            dist.append((_acc(scale(self.reg(r))).clamp(min=0) * stride).flatten(2).transpose(1, 2))
            obj.append(self.obj(r).flatten(2).squeeze(1))
        return torch.cat(cls, 1), torch.cat(dist, 1), torch.cat(obj, 1)


class CenterPrior(nn.Module):
    """The learnable Gaussian center prior of each class: mu and sigma (C, 2), in strides."""

    def __init__(self, num_classes):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(num_classes, 2))
        self.sigma = nn.Parameter(torch.ones(num_classes, 2))


def points(feat_shapes, device, dtype=torch.float32):
    """Points (N, 2) at (x * stride, y * stride), strides (N,) and level sizes."""
    pts, strides, _, sizes = anchors(feat_shapes, device, dtype=dtype)
    return pts, strides, sizes


class AutoAssign(nn.Module):
    OPS = ("autoassign_loss", "distance_multiclass_nms")

    def __init__(self, num_classes, depth=50, base_width=64, fpn_channels=256, stacked_convs=4, ops=None,
                 frozen_stages=-1, norm_eval=False):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNet(depth, base_width, frozen_stages, norm_eval)
        self.neck = FPN(self.backbone.out_channels, fpn_channels)
        self.head = AutoAssignHead(num_classes, fpn_channels, stacked_convs)
        self.center_prior = CenterPrior(num_classes)
        self.ops = ops or Ops("reference")

    def forward(self, images, gt_boxes=None, gt_labels=None, gt_valid=None, img_shapes=None,
                reduce_mean=_identity, timer=None):
        """The losses when GT is given, else the raw outputs (what DDP wraps)."""
        if gt_boxes is not None:
            return self.loss_from_raw(*self.raw(images), gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean)
        return self.raw(images, timer)

    def raw(self, images, timer=None):
        """(cls, distances, objectness, prior (2, C, 2): mu and sigma, level shapes)."""
        feats = self.neck(self.backbone(images))
        if timer is not None:
            timer("backbone+neck")
        cls, dist, obj = self.head(feats)
        prior = torch.stack([self.center_prior.mu, self.center_prior.sigma])
        if timer is not None:
            timer("head")
        return cls, dist, obj, prior, [tuple(f.shape[-2:]) for f in feats]

    def loss(self, images, gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean=_identity):
        return self.loss_from_raw(*self.raw(images), gt_boxes, gt_labels, gt_valid, img_shapes, reduce_mean)

    def loss_from_raw(self, cls, dist, obj, prior, shapes, gt_boxes, gt_labels, gt_valid, img_shapes,
                      reduce_mean=_identity, timer=None):
        """SPEC section 6's losses. AutoAssign has no assignment step apart
        from its loss: the `assign` stage is only the points."""
        dtype = torch.float64 if cls.dtype == torch.float64 else torch.float32
        pts, strides, _ = points(shapes, cls.device, dtype)
        if timer is not None:
            timer("assign")
        return self.ops.autoassign_loss(cls, obj, dist, pts, strides, gt_boxes.to(dtype), gt_labels, gt_valid,
                                        prior[0], prior[1], reduce_mean, level_shapes=shapes)

    @torch.no_grad()
    def predict(self, images, metas, **kw):
        return self.postprocess(*self.raw(images), metas, **kw)

    @torch.no_grad()
    def postprocess(self, cls, dist, obj, prior, shapes, metas, score_thr=0.05, nms_pre=1000, iou_threshold=0.6,
                    max_per_img=100, min_bbox_size=0.0):
        dtype = torch.float64 if cls.dtype == torch.float64 else torch.float32
        pts, _, sizes = points(shapes, cls.device, dtype)
        return unpad(*self.ops.distance_multiclass_nms(
            cls, dist, obj, pts, sizes, [m["img_shape"] for m in metas], score_thr, nms_pre, iou_threshold,
            max_per_img, min_bbox_size, [m["scale_factor"] for m in metas]), metas)
