"""gflops: fused CUDA/C++ kernels for Generalized-Focal-Loss detectors.

Every op is a `torch.ops.gflops.*` operator (CPU and CUDA kernels, fake
kernels for torch.compile, autograd); the functions here are thin wrappers
with the calling conventions detectors of this family already use.
"""
from . import _ext

_C = _ext.load()

from . import _fake  # noqa: E402,F401  (registrations; autograd is in C++, csrc/autograd.h)
from . import backend as _backend  # noqa: E402
from .backend import backend_info, set_backend  # noqa: E402
from .assign import atss_assign  # noqa: E402
from .autoassign import autoassign_loss, autoassign_loss_terms  # noqa: E402
from .boxes import GIoULoss, box_iou, giou_loss  # noqa: E402
from .decode import (  # noqa: E402
    bbox2distance,
    decode_distribution,
    distance2bbox,
    gfl_box_branch,
    integral,
)
from .nms import batched_nms, multiclass_nms, nms  # noqa: E402
from .losses import (  # noqa: E402
    DistributionFocalLoss,
    QualityFocalLoss,
    distribution_focal_loss,
    quality_focal_loss,
)

__version__ = "0.1.0"


def has_cuda() -> bool:
    """True when the CUDA kernels are compiled into the loaded library."""
    return bool(_C.cuda_compiled())


_backend.init_from_env()

_validation_listeners = []  # the emulated CUDA library keeps a switch of its own


def set_validation(enabled: bool) -> None:
    """Switch value checks on CUDA inputs (score in [0, 1], DFL targets in
    range) on or off. They cost a host sync, so they are off by default; the
    env var GFLOPS_VALIDATE=1 turns them on at start. CPU always checks."""
    _C.set_validation(bool(enabled))
    for listener in _validation_listeners:
        listener(bool(enabled))


def validation_enabled() -> bool:
    return bool(_C.validation_enabled())


__all__ = [
    "atss_assign",
    "autoassign_loss",
    "autoassign_loss_terms",
    "nms",
    "batched_nms",
    "multiclass_nms",
    "box_iou",
    "giou_loss",
    "GIoULoss",
    "integral",
    "distance2bbox",
    "bbox2distance",
    "decode_distribution",
    "gfl_box_branch",
    "quality_focal_loss",
    "distribution_focal_loss",
    "QualityFocalLoss",
    "DistributionFocalLoss",
    "has_cuda",
    "backend_info",
    "set_backend",
    "set_validation",
    "validation_enabled",
]
