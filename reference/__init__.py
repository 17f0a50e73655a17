"""Pure-PyTorch reference implementations: the oracle gflops is checked against."""
from .losses import distribution_focal_loss, quality_focal_loss

__all__ = ["quality_focal_loss", "distribution_focal_loss"]
