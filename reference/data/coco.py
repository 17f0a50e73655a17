"""A COCO detection dataset read through pycocotools, with the GFL transforms."""
import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO instances JSON.

    As MMDetection's CocoDataset and GFL pipeline: crowd boxes, boxes under
    1 px or of zero area, and boxes that do not overlap the image are
    ignored; category ids map to contiguous labels 0..C-1 in id order.
    Images are resized keeping their aspect ratio to fit `scale` (long,
    short), e.g. (1333, 800), the boxes scaled and clipped to the resized
    image (boxes left with zero area are dropped), flipped at random with
    probability `flip`, and normalised. For training, `filter_empty_gt`
    drops images without any annotation and `min_size` images whose shorter
    side is under it (MMDetection's filter_cfg: True, 32). Each item is
    (image CHW float, dict(boxes (G, 4) xyxy, labels (G,), image_id,
     scale_factor, ori_shape, img_shape)).
    """

    def __init__(self, img_dir, ann_file, scale=(1333, 800), flip=0.0, seed=0, filter_empty_gt=False, min_size=0):
        self.coco = COCO(str(ann_file))
        self.img_dir = img_dir
        self.cat_ids = sorted(self.coco.cats.keys())
        self.cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        # MMDetection's filter: an image is kept if it has any annotation of a
        # known category (a crowd-only image stays, and trains as background).
        annotated = {a["image_id"] for a in self.coco.anns.values() if a["category_id"] in self.cat_to_label}
        self.ids = [i for i in sorted(self.coco.imgs.keys())
                    if min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) >= min_size
                    and not (filter_empty_gt and i not in annotated)]
        self.scale = scale
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    @property
    def num_classes(self):
        return len(self.cat_ids)

    def __len__(self):
        return len(self.ids)

    def aspect_groups(self):
        """Per item: 1 if the image is at least as wide as tall, else 0."""
        return [int(self.coco.imgs[i]["width"] >= self.coco.imgs[i]["height"]) for i in self.ids]

    def annotations(self, img_id):
        """The usable boxes (G, 4) xyxy in original pixels and labels (G,)."""
        info = self.coco.imgs[img_id]
        boxes, labels = [], []
        for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id)):
            x, y, w, h = a["bbox"]
            inter_w = max(0.0, min(x + w, info["width"]) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, info["height"]) - max(y, 0.0))
            if a.get("iscrowd", 0) or w < 1 or h < 1 or a.get("area", w * h) <= 0 or inter_w * inter_h == 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.cat_to_label[a["category_id"]])
        return (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64))

    def __getitem__(self, i):
        img_id = self.ids[i]
        info = self.coco.imgs[img_id]
        img = Image.open(f"{self.img_dir}/{info['file_name']}").convert("RGB")
        w, h = img.size
        long_side, short_side = max(self.scale), min(self.scale)
        s = min(long_side / max(w, h), short_side / min(w, h))
        nw, nh = int(w * s + 0.5), int(h * s + 0.5)
        img = img.resize((nw, nh), Image.BILINEAR)
        boxes, labels = self.annotations(img_id)
        sx, sy = nw / w, nh / h
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, nw)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, nh)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        arr = (np.asarray(img, np.float32) - MEAN) / STD
        if self.flip > 0 and self.rng.random() < self.flip:
            arr = arr[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        meta = dict(boxes=torch.from_numpy(boxes.reshape(-1, 4)), labels=torch.from_numpy(labels), image_id=img_id,
                    scale_factor=(sx, sy), ori_shape=(h, w), img_shape=(nh, nw))
        return image, meta


def collate(batch, size_divisor=32):
    """Pads images to a common multiple of size_divisor and GT boxes to the
    batch's largest count: images (B, 3, H, W), gt_boxes (B, G, 4),
    gt_labels (B, G) (-1 for padding), gt_valid (B, G), metas (list)."""
    images, metas = zip(*batch)
    H = max(im.shape[1] for im in images)
    W = max(im.shape[2] for im in images)
    H = (H + size_divisor - 1) // size_divisor * size_divisor
    W = (W + size_divisor - 1) // size_divisor * size_divisor
    out = torch.zeros(len(images), 3, H, W)
    for k, im in enumerate(images):
        out[k, :, :im.shape[1], :im.shape[2]] = im
    G = max((m["boxes"].shape[0] for m in metas), default=0)
    boxes = torch.zeros(len(images), G, 4)
    labels = torch.full((len(images), G), -1, dtype=torch.long)
    valid = torch.zeros(len(images), G, dtype=torch.bool)
    for k, m in enumerate(metas):
        g = m["boxes"].shape[0]
        boxes[k, :g], labels[k, :g], valid[k, :g] = m["boxes"], m["labels"], True
    return dict(images=out, gt_boxes=boxes, gt_labels=labels, gt_valid=valid, metas=list(metas))


class AspectRatioBatchSampler(torch.utils.data.Sampler):
    """MMDetection's AspectRatioBatchSampler: items from `sampler` go to a
    bucket by orientation (wide or tall) and a batch is yielded when a bucket
    fills, so a batch never mixes orientations (less padding); at the end of
    an epoch the leftovers of both buckets are batched together."""

    def __init__(self, sampler, groups, batch_size, drop_last=False):
        self.sampler, self.groups, self.batch_size, self.drop_last = sampler, groups, batch_size, drop_last

    def __iter__(self):
        buckets = [[], []]
        for i in self.sampler:
            b = buckets[self.groups[i]]
            b.append(i)
            if len(b) == self.batch_size:
                yield b[:]
                b.clear()
        left = buckets[0] + buckets[1]
        for k in range(0, len(left), self.batch_size):
            chunk = left[k:k + self.batch_size]
            if len(chunk) == self.batch_size or not self.drop_last:
                yield chunk

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
