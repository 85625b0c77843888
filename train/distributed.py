"""DDP set-up for ``torchrun`` (decisions D11): rank-0 logging and checkpoints."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device) -> tuple[int, int]:
    """Initialise the process group when launched by torchrun; return (rank, world_size)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    world = int(os.environ["WORLD_SIZE"])
    if world == 1 and not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x
