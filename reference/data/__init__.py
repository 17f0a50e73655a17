"""COCO-format data: the built-in synthetic dataset generator and the loader."""
from .coco import AspectRatioBatchSampler, CocoDetection, collate
from .synthetic import generate

__all__ = ["AspectRatioBatchSampler", "CocoDetection", "collate", "generate"]
