"""Pure-PyTorch reference implementations: the oracle gflops is checked against."""
from .boxes import box_iou, giou_loss
from .decode import bbox2distance, decode_distribution, distance2bbox, gfl_box_branch, integral
from .losses import distribution_focal_loss, quality_focal_loss

__all__ = ["quality_focal_loss", "distribution_focal_loss", "box_iou", "giou_loss", "integral",
           "distance2bbox", "bbox2distance", "decode_distribution", "gfl_box_branch"]
