"""The one ops namespace the detector calls: each op comes from reference/
(pure PyTorch) or, with backend 'gflops', from gflops where gflops has it."""
from . import assign, boxes, decode, losses, nms

REFERENCE_OPS = {
    "quality_focal_loss": losses.quality_focal_loss,
    "distribution_focal_loss": losses.distribution_focal_loss,
    "integral": decode.integral,
    "decode_distribution": decode.decode_distribution,
    "box_iou": boxes.box_iou,
    "giou_loss": boxes.giou_loss,
    "gfl_box_branch": decode.gfl_box_branch,
    "atss_assign": assign.atss_assign,
    "nms": nms.nms,
    "batched_nms": nms.batched_nms,
    "multiclass_nms": nms.multiclass_nms,
}


class Ops:
    """ops.<name>(...) for every op above; ops.sources says where each came from."""

    def __init__(self, backend="reference"):
        if backend not in ("reference", "gflops"):
            raise ValueError(f"ops backend must be 'reference' or 'gflops', got {backend!r}")
        self.backend = backend
        self.sources = {}
        lib = None
        if backend == "gflops":
            import gflops as lib
        for name, fn in REFERENCE_OPS.items():
            if lib is not None and hasattr(lib, name):
                fn, src = getattr(lib, name), "gflops"
            else:
                src = "reference"
            setattr(self, name, fn)
            self.sources[name] = src

    def report(self):
        return ", ".join(f"{k}={v}" for k, v in self.sources.items())
