"""A deterministic generator of a COCO-format detection dataset.

Writes real PNG files and a real COCO instances JSON: shapes of several
classes with textures, partial occlusion, overlap, blur and unannotated
clutter, so that boundaries are sometimes ambiguous. Used as the default
dataset of the demo and the tests (COCO itself cannot be downloaded here).

    python -m reference.data.synthetic --out data/synthetic --images 64 --size 256
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle", "ring", "cross", "diamond", "star", "bar"]


def _polygon(kind, cx, cy, r, rng):
    if kind == "triangle":
        a0 = rng.uniform(0, 2 * math.pi)
        return [(cx + r * math.cos(a0 + k * 2 * math.pi / 3), cy + r * math.sin(a0 + k * 2 * math.pi / 3))
                for k in range(3)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)]
    if kind == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(kind)


def _draw_object(img, kind, cx, cy, r, color, rng):
    """Draws one object on its own layer (so blur and texture stay local); returns its tight box."""
    w, h = img.size
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    fill = tuple(int(c) for c in color) + (255,)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif kind == "cross":
        t = max(2, r / 3)
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif kind == "bar":
        d.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=fill)
    else:
        d.polygon(_polygon(kind, cx, cy, r, rng), fill=fill)
    alpha = np.asarray(layer)[..., 3]
    if rng.random() < 0.5:  # texture: stripes or noise modulate the colour
        arr = np.asarray(layer).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        tex = 0.75 + 0.25 * np.sin((xx * rng.uniform(0.2, 0.8) + yy * rng.uniform(0.2, 0.8)))
        if rng.random() < 0.5:
            tex = 0.8 + 0.2 * rng.random((h, w))
        arr[..., :3] *= tex[..., None]
        layer = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGBA")
    if rng.random() < 0.25:
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    img.alpha_composite(layer)
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _clutter(img, rng):
    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(rng.integers(3, 10)):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.normal(0, w / 6), y0 + rng.normal(0, h / 6)
        d.line([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,),
               width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 6)):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 3)
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,))


def _background(w, h, rng):
    base = rng.integers(0, 255, 3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (xx / w * rng.uniform(-60, 60) + yy / h * rng.uniform(-60, 60))[..., None]
    noise = rng.normal(0, 12, (h, w, 3))
    arr = (base + grad + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([arr, np.full((h, w), 255, np.uint8)]), "RGBA")


def generate(out, images=64, size=256, num_classes=6, max_objects=8, seed=0, split="train"):
    """Writes out/<split>/*.png and out/annotations/instances_<split>.json; returns the JSON path."""
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(CLASSES)}], got {num_classes}")
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cats = [{"id": 10 + i, "name": CLASSES[i], "supercategory": "shape"} for i in range(num_classes)]
    imgs, anns = [], []
    for i in range(images):
        w = int(size * rng.uniform(0.8, 1.2))
        h = int(size * rng.uniform(0.8, 1.2))
        img = _background(w, h, rng)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            c = int(rng.integers(0, num_classes))
            r = rng.uniform(0.05, 0.22) * min(w, h)
            cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
            box = _draw_object(img, CLASSES[c], cx, cy, r, rng.integers(30, 255, 3), rng)
            if box is None or box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cats[c]["id"],
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                         "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
        _clutter(img, rng)
        if rng.random() < 0.2:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        name = f"{split}_{i:06d}.png"
        img.convert("RGB").save(out / split / name)
        imgs.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    path = out / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(generate(a.out, a.images, a.size, a.classes, seed=a.seed, split="train"))
    print(generate(a.out, a.val_images, a.size, a.classes, seed=a.seed + 1, split="val"))


if __name__ == "__main__":
    main()
