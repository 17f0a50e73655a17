"""Train a detector: GFL (default) or AutoAssign.

    python -m reference.train --preset small --ops gflops --work-dir work_dirs/gflops
    python -m reference.train --model autoassign --preset small --work-dir work_dirs/autoassign
    torchrun --nproc-per-node 2 -m reference.train --preset tiny

Without --data-root / --ann-file it trains on the built-in synthetic COCO-format
dataset (generated on first use under data/synthetic-<preset>).
"""
import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from .autoassign import AutoAssign
from .config import EPOCHS, LR_STEPS, MODEL_SETTINGS, PRESETS
from .data import AspectRatioBatchSampler, CocoDetection, collate, generate
from .gfl import GFL
from .ops import Ops
from .stages import StageTimer, medians
from .weights import load_weights


def default_data(preset, root="data"):
    """The synthetic dataset of a preset: (train images, train json, val images, val json)."""
    cfg = PRESETS[preset]
    out = Path(root) / f"synthetic-{preset}"
    train_json = out / "annotations" / "instances_train.json"
    val_json = out / "annotations" / "instances_val.json"
    if not train_json.exists():
        generate(out, cfg["images"], cfg["image_size"], seed=0, split="train")
    if not val_json.exists():
        generate(out, cfg["val_images"], cfg["image_size"], seed=1, split="val")
    return out / "train", train_json, out / "val", val_json


MODELS = {"gfl": GFL, "autoassign": AutoAssign}


def build_model(num_classes, preset, ops_backend, weights=None, partial_weights=False, dtype=torch.float32,
                frozen_stages=-1, norm_eval=False, model="gfl"):
    cfg = PRESETS[preset]
    model = MODELS[model](num_classes, cfg["depth"], cfg["base_width"], cfg["fpn_channels"],
                          stacked_convs=cfg["stacked_convs"], ops=Ops(ops_backend), frozen_stages=frozen_stages,
                          norm_eval=norm_eval)
    if weights:
        load_weights(model, weights, partial_weights)
    return model.to(dtype)


def peak_memory_mib(device):
    """Peak memory of this process: CUDA allocations on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lr_at(it, base_lr, warmup_iters, steps, warmup_ratio=0.001):
    """Linear warm-up from warmup_ratio * lr, then x0.1 at each step."""
    lr = base_lr * 0.1 ** sum(it >= s for s in steps)
    if it < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
    return lr


def schedule(num_batches, epochs=EPOCHS, iters=None):
    """(total iterations, lr steps): `epochs` of `num_batches` each unless
    `iters` is given; the steps fall at epochs 8 and 11 of 12 (the same
    fractions of a shorter or longer run)."""
    total = iters if iters is not None else epochs * num_batches
    return total, [round(total * e / EPOCHS) for e in LR_STEPS]


def param_groups(model, weight_decay, norm_decay_mult=1.0):
    """SGD parameter groups: normalisation layers' weights and biases decay by
    weight_decay * norm_decay_mult (MMDetection's paramwise norm_decay_mult)."""
    norm_types = (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm)
    norm = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    params = list(model.parameters())
    groups = [dict(params=[p for p in params if id(p) not in norm], weight_decay=weight_decay),
              dict(params=[p for p in params if id(p) in norm], weight_decay=weight_decay * norm_decay_mult)]
    return [g for g in groups if g["params"]]


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def train_step(net, model, data, device, dtype, amp, timer, reduce_mean):
    """One forward and backward, split into the stages of TRAIN_STAGES (the
    losses' own backward apart from the network's); returns the losses."""
    images = data["images"].to(device, dtype, non_blocking=True)
    gt = [data[k].to(device) for k in ("gt_boxes", "gt_labels", "gt_valid")]
    timer("data")
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        *outs, shapes = net(images, timer=timer)
        # The losses start from detached head outputs so that their backward
        # can be timed apart from the network's; the gradient is the same.
        ins = [t.detach().requires_grad_() for t in outs]
        losses = model.loss_from_raw(*ins, shapes, *gt, [m["img_shape"] for m in data["metas"]], reduce_mean, timer)
    total = sum(losses.values())
    return losses, total, outs, ins


def train(args):
    rank, world, device = distributed.init(args.device)
    cfg = PRESETS[args.preset]
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    if args.data_root:
        img_dir, ann = Path(args.data_root), Path(args.ann_file)
    else:
        if rank == 0:
            default_data(args.preset)
        if world > 1:
            torch.distributed.barrier()
        img_dir, ann, _, _ = default_data(args.preset)
    scale = tuple(args.scale) if args.scale else cfg["scale"]
    ds = CocoDetection(img_dir, ann, scale=scale, flip=0.5, seed=args.seed + rank, filter_empty_gt=True,
                       min_size=32)
    batch = args.batch_size or cfg["batch_size"]
    sampler = (torch.utils.data.distributed.DistributedSampler(ds, world, rank, seed=args.seed) if world > 1
               else torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(args.seed)))
    batches = AspectRatioBatchSampler(sampler, ds.aspect_groups(), batch)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=args.workers)
    model = build_model(ds.num_classes, args.preset, args.ops, args.weights, args.partial_weights, dtype,
                        args.frozen_stages, args.norm_eval, args.model).to(device)
    settings = MODEL_SETTINGS[args.model]
    if args.perturb_init:
        with torch.no_grad():  # a rounding-sized change: the control of the float64 comparison
            for prm in model.parameters():
                prm.mul_(1 + args.perturb_init)
    if rank == 0:
        print(f"model: {args.model}; ops: {model.ops.report(model.OPS)}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    base_lr = (args.lr or cfg["lr"]) * batch * world / 16 if args.scale_lr else (args.lr or cfg["lr"])
    opt = torch.optim.SGD(param_groups(model, 1e-4, settings["norm_decay_mult"]), lr=base_lr, momentum=0.9)
    iters, steps = schedule(len(batches), args.epochs, args.iters)
    warmup = args.warmup_iters if args.warmup_iters is not None else cfg["warmup_iters"] * settings["warmup_mult"]
    amp = args.amp and device.type == "cuda" and dtype == torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    work = Path(args.work_dir)
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
    log = open(work / "log.jsonl", "w") if rank == 0 else None
    history = []
    it, epoch = 0, 0
    timer = StageTimer(device)
    bar = tqdm(total=iters, disable=rank != 0 or args.quiet, desc="train")
    model.train()
    while it < iters:
        batches.set_epoch(epoch)
        timer.start()
        t0 = time.perf_counter()
        for data in loader:
            if it >= iters:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(it, base_lr, warmup, steps)
            losses, total, outs, ins = train_step(net, model, data, device, dtype, amp, timer,
                                                  distributed.reduce_mean)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            timer("losses")
            grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in ins]
            torch.autograd.backward(outs, grads)
            timer("backward")
            grad_norm = None
            if args.clip is not None:
                scaler.unscale_(opt)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip))
            scaler.step(opt)
            scaler.update()
            timer("optimizer")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            stages, step_s = timer.seconds(), t1 - t0
            timer.start()
            t0 = t1
            it += 1
            if rank == 0 and (it % args.log_interval == 0 or it == iters):
                rec = dict(iter=it, lr=opt.param_groups[0]["lr"], step_s=step_s, stages=stages,
                           **{k: float(v.detach()) for k, v in losses.items()}, loss=float(total.detach()))
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                history.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3f}", **{k[5:]: f"{rec[k]:.3f}" for k in losses})
            bar.update(1)
        epoch += 1
    bar.close()
    if rank == 0:
        summary = dict(summary=True, model=args.model, iters=it, peak_mem_mib=peak_memory_mib(device),
                       ops=model.ops.used(model.OPS),
                       dtype=args.dtype, lr_steps=steps, median_stage_s=medians(history),
                       median_step_s=sorted(r["step_s"] for r in history)[len(history) // 2] if history else None)
        log.write(json.dumps(summary) + "\n")
        torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict(), iter=it, preset=args.preset,
                        num_classes=ds.num_classes, ops=args.ops, dtype=args.dtype, detector=args.model),
                   work / "latest.pth")
        log.close()
    distributed.cleanup()
    return history


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="gfl")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--ops", choices=["reference", "gflops"], default="reference")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="COCO image folder (default: the built-in synthetic dataset)")
    p.add_argument("--ann-file", help="COCO instances JSON for --data-root")
    p.add_argument("--scale", type=int, nargs=2, help="resize to fit (long, short), e.g. 1333 800")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training length in epochs (default 12)")
    p.add_argument("--iters", type=int, help="training length in iterations (overrides --epochs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="parameters, activations and losses (float64: the same-function check)")
    p.add_argument("--lr", type=float, help="base learning rate (0.01 for batch 16)")
    p.add_argument("--scale-lr", action="store_true", help="scale lr linearly with the total batch / 16")
    p.add_argument("--warmup-iters", type=int)
    p.add_argument("--clip", type=float, default=None, help="gradient clipping max norm (default: none, as the "
                   "paper config)")
    p.add_argument("--amp", action="store_true", help="float16 mixed precision on CUDA (default: float32)")
    p.add_argument("--weights", help="a checkpoint or state_dict to start from, or a torchvision ResNet state_dict "
                   "for the backbone")
    p.add_argument("--frozen-stages", type=int, default=-1,
                   help="backbone stages not trained: 0 the stem, 1 also layer1, ... (MMDetection's GFL config, "
                   "for ImageNet weights: 1; default -1: none, as from scratch)")
    p.add_argument("--norm-eval", action="store_true",
                   help="keep the backbone's BatchNorm statistics fixed (MMDetection's GFL config, for ImageNet "
                   "weights)")
    p.add_argument("--partial-weights", action="store_true",
                   help="load the --weights keys that match and list the rest (default: strict)")
    p.add_argument("--perturb-init", type=float, default=0.0,
                   help="scale every initial parameter by (1 + this), e.g. 1e-15: how fast training amplifies a "
                   "rounding-level difference (the demo's control)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--log-interval", type=int, default=1)
    p.add_argument("--work-dir", default="work_dirs/gfl")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    train(parser().parse_args(argv))


if __name__ == "__main__":
    main()
