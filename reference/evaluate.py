"""Run a detector (GFL or AutoAssign, as the checkpoint says) on a COCO-format
set and score it with pycocotools' COCOeval.

    python -m reference.evaluate --checkpoint work_dirs/gfl/latest.pth [--ops gflops]
"""
import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import torch

from .config import PRESETS
from .data import CocoDetection, collate

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def coco_results(ds, metas, preds):
    """COCO result records (xywh boxes, original category ids) of one batch of predictions."""
    out = []
    for m, p in zip(metas, preds):
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            out.append(dict(image_id=m["image_id"], category_id=ds.cat_ids[label], score=score,
                            bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    return out


def coco_stats(coco, results, verbose=True):
    """The 12 COCOeval bbox numbers by name (all 0 when there is no detection)."""
    if not results:
        if verbose:
            print("no detections: every COCO metric is 0")
        return dict(zip(STAT_NAMES, [0.0] * 12))
    from pycocotools.cocoeval import COCOeval

    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet:
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, [float(x) for x in ev.stats]))


@torch.no_grad()
def evaluate(model, img_dir, ann_file, scale, device, batch_size=1, out_json=None, verbose=True):
    """Returns dict(stats=12 COCO numbers by name, forward_s / postprocess_s per image, detections).
    Batch 1 by default: batch padding changes the GroupNorm statistics of the
    head, so a padded image would not be scored as it is alone."""
    dtype = next(model.parameters()).dtype
    ds = CocoDetection(img_dir, ann_file, scale=scale, flip=0.0)
    loader = torch.utils.data.DataLoader(ds, batch_size, shuffle=False, collate_fn=collate)
    model.eval()
    results, t_fwd, t_post = [], 0.0, 0.0
    for data in loader:
        images = data["images"].to(device, dtype)
        _sync(device)
        t0 = time.perf_counter()
        raw = model.raw(images)
        _sync(device)
        t1 = time.perf_counter()
        preds = model.postprocess(*raw, data["metas"])
        _sync(device)
        t_fwd += t1 - t0
        t_post += time.perf_counter() - t1
        results += coco_results(ds, data["metas"], preds)
    stats = coco_stats(ds.coco, results, verbose)
    out = dict(stats=stats, images=len(ds), detections=len(results),
               forward_s_per_img=t_fwd / max(len(ds), 1), postprocess_s_per_img=t_post / max(len(ds), 1))
    if out_json:
        Path(out_json).write_text(json.dumps(out, indent=2))
        # The detections themselves, so two runs can be compared record by record.
        Path(out_json).with_name("detections.json").write_text(json.dumps(results))
    out["results"] = results
    return out


def main(argv=None):
    from .train import DTYPES, build_model, default_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ops", choices=["reference", "gflops"], default=None, help="default: the training run's")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", help="COCO image folder (default: the preset's synthetic val split)")
    p.add_argument("--ann-file")
    p.add_argument("--scale", type=int, nargs=2)
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1: padding changes "
                   "GroupNorm statistics)")
    p.add_argument("--out", help="JSON file for the metrics (default: next to the checkpoint)")
    a = p.parse_args(argv)
    ckpt = torch.load(a.checkpoint, map_location="cpu")
    preset = ckpt["preset"]
    device = torch.device(a.device)
    dtype = DTYPES[ckpt.get("dtype", "float32")]
    model = build_model(ckpt["num_classes"], preset, a.ops or ckpt.get("ops", "reference"), dtype=dtype,
                        model=ckpt.get("detector", "gfl")).to(device)
    model.load_state_dict(ckpt["model"])
    if a.data_root:
        img_dir, ann = a.data_root, a.ann_file
    else:
        _, _, img_dir, ann = default_data(preset)
    scale = tuple(a.scale) if a.scale else PRESETS[preset]["scale"]
    out = a.out or str(Path(a.checkpoint).with_name("eval.json"))
    res = evaluate(model, img_dir, ann, scale, device, a.batch_size, out)
    print(json.dumps(res["stats"], indent=2))


if __name__ == "__main__":
    main()
