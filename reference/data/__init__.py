"""COCO-format data: the built-in synthetic dataset generator and the loader."""
from .coco import CocoDetection, collate
from .synthetic import generate

__all__ = ["CocoDetection", "collate", "generate"]
