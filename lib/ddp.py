"""Data-parallel unlearning with torch DistributedDataParallel: torchrun --nproc_per_node=N unlearn.py

Every rank draws the same global batch (same seed, same random.Random) and computes the loss on its
own contiguous shard. A shard's mean loss is weighted by its share of the global batch's targets, so
the gradient DDP averages over the ranks equals the single-process gradient of the global batch:

    loss_r = world · (n_r / n) · mean_r    →    (1/world) Σ_r ∇loss_r = ∇ Σ_r (n_r / n) · mean_r

Fisher sums and token counts are all-reduced before FILA. Every rank evaluates (the models are
identical, so they agree on when to stop); only rank 0 prints and writes files. Without torchrun
(WORLD_SIZE unset) every function here is a no-op and nothing touches torch.distributed.
"""
import os

import torch
import torch.distributed as dist


def world():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if world() > 1 else 0


def setup(device):
    """Join the process group when launched by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    on_gpu = device.startswith("cuda")
    dist.init_process_group("nccl" if on_gpu else "gloo")
    if on_gpu:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device


def shard(batch, per_token=True):
    """(this rank's contiguous part of a global batch, n_r / n: its share of the batch's targets,
    counted in tokens or in sequences). A rank whose part would be empty (a batch smaller than the
    number of processes) takes the batch's first example with share 0: every rank must run the
    forward and backward, or DDP's gradient all-reduce waits for the missing one forever."""
    k = -(-len(batch) // world())  # ceil
    part = batch[rank() * k:(rank() + 1) * k]
    if not part:
        return batch[:1], 0.0
    count = (lambda b: sum(sum(t[1:]) for _, t in b)) if per_token else len
    return part, count(part) / max(count(batch), 1)


def wrap(model, params):
    """DDP all-reduces the gradients of the trainable parameters during backward."""
    if world() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=None if not params[0].is_cuda else [params[0].device])


def all_reduce_sum(x):
    """Sum a tensor over the ranks, in place; returns it."""
    if world() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def any_rank(flag):
    """True on every rank if it is true on any (e.g. Ctrl-C reached one process first)."""
    if world() == 1:
        return bool(flag)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    return bool(all_reduce_sum(torch.tensor([float(bool(flag))], device=device)).item())


def finish():
    if world() > 1:
        dist.destroy_process_group()
