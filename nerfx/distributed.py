"""Data-parallel training under torchrun: process group, data shards, gradient averaging.

    torchrun --nproc_per_node 8 -m nerfx.train --model ddpm --data cifar10:PATH

Every process holds the whole model and trains on its own slice of each global batch (the batch
size setting is per process); after each backward the gradients are averaged over the processes
with one all-reduce per bucket, so every process takes the same optimiser step and the weights
stay identical. This is DistributedDataParallel's math without its forward hook, which sees only
`model(...)` calls and not methods such as `VAE.loss`. Process 0 writes checkpoints, pictures and
metrics. Nothing here does anything in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 1 << 22      # gradients are all-reduced in flat buckets of up to 4M elements


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_type: str) -> torch.device | None:
    """Joins the process group torchrun describes (NCCL on GPUs, gloo on CPUs); returns this
    process's device on GPUs (cuda:LOCAL_RANK), None on CPUs or without a launcher."""
    if not launched() or dist.is_initialized():
        return None
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return None


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def process_seed(seed: int) -> int:
    """A seed of this process's own random stream (the run's seed in process 0)."""
    return seed + 1_000_003 * rank()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_process(flag: bool) -> bool:
    """Whether flag holds on any process (so all take the same decision, e.g. to stop)."""
    if world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@torch.no_grad()
def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replaces each gradient by its mean over the processes (a no-op in one process)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads + [None]:
        if grad is not None:
            bucket.append(grad)
            size += grad.numel()
        if bucket and (grad is None or size >= BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world_size()
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0
