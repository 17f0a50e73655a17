"""The one ops namespace the detectors call: each op comes from reference/
(pure PyTorch) or, with backend 'gflops', from gflops where gflops has it."""
import functools

from . import assign, autoassign_loss, boxes, decode, losses, nms

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
    "distance_multiclass_nms": nms.distance_multiclass_nms,
    "autoassign_loss_terms": autoassign_loss.autoassign_loss_terms,
    "autoassign_loss": autoassign_loss.autoassign_loss,
}

# Reference ops built from other ops, by keyword: while gflops lacks the whole
# op, the reference one runs on the namespace's parts (gflops's where it has them).
COMPOSED = {"autoassign_loss_terms": ("box_iou", "giou_loss"), "distance_multiclass_nms": ("batched_nms",),
            "autoassign_loss": ("autoassign_loss_terms",)}


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
        for name, parts in COMPOSED.items():
            if self.sources[name] == "reference":
                setattr(self, name, functools.partial(getattr(self, name), **{p: getattr(self, p) for p in parts}))

    def used(self, names):
        """{op: source} of the ops `names`, and of the parts of those that are composed here."""
        out = {}
        for n in names:
            out[n] = self.sources[n]
            if n in COMPOSED and self.sources[n] == "reference":
                out.update(self.used(COMPOSED[n]))
        return out

    def report(self, names=None):
        return ", ".join(f"{k}={v}" for k, v in (self.used(names) if names else self.sources).items())
