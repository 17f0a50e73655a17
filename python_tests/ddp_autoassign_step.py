"""One AutoAssign training step (train.train_step, float64) on a global batch
of 4 images, alone or under torchrun with the batch split over the processes;
saves the process-averaged losses and the (DDP-averaged) gradients.
Used by test_autoassign_detector.py: python ddp_autoassign_step.py OUT.pt"""
import sys

import torch

from reference import distributed
from reference.stages import StageTimer
from reference.train import train_step
from test_autoassign_detector import _batch, _tiny


def main(out):
    rank, world, device = distributed.init("cpu")
    images, boxes, labels, valid = _batch(counts=(2, 3, 0, 0), dtype=torch.float64)
    # BatchNorm on running statistics: otherwise the split batch would normalise differently.
    model = _tiny(norm_eval=True).double()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    per = 4 // world
    part = slice(rank * per, (rank + 1) * per)
    g = int(valid[part].sum(1).max())
    data = dict(images=images[part], gt_boxes=boxes[part, :g], gt_labels=labels[part, :g], gt_valid=valid[part, :g],
                metas=[dict(img_shape=(64, 64))] * per)
    model.train()
    losses, total, outs, ins = train_step(net, model, data, device, torch.float64, False, StageTimer(device),
                                          distributed.reduce_mean)
    total.backward()
    torch.autograd.backward(outs, [t.grad if t.grad is not None else torch.zeros_like(t) for t in ins])
    mean = distributed.reduce_mean(torch.stack([losses[k].detach() for k in sorted(losses)]))
    if rank == 0:
        torch.save(dict(world=world, losses=dict(zip(sorted(losses), mean.tolist())),
                        grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}), out)
    del net  # DDP's reducer holds gloo work; release it before the group goes
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
