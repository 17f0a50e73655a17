"""torchrun support: process group set-up and the cross-process mean of the loss normalisers."""
import os

import torch
import torch.distributed as dist


def init(device):
    """Joins the process group when launched by torchrun; returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def reduce_mean(t):
    """Mean of a tensor over processes (identity when not distributed); no host sync."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def cleanup():
    """Leaves the process group once every process is done with it: a process that
    tore gloo down while a peer still held its pairs was seen to abort (std::terminate)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
