"""DDP set-up for ``torchrun`` (decisions D11): the process group, the DDP wrapper, rank-0 duties.

Nothing here acts in a plain ``python train.py`` run. A rank that dies or hangs does not leave
the others waiting forever: every collective has the ``--dist_timeout`` (gloo raises when a
peer's connection drops, NCCL aborts the communicator), and torchrun stops the other workers."""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn


def init(device: torch.device, timeout_s: float = 600.0) -> tuple[int, int]:
    """(rank, world_size), after initialising the process group under torchrun (``RANK`` and
    ``WORLD_SIZE`` set; NCCL on CUDA, gloo on the CPU; ``timeout_s`` bounds every collective)."""
    if not {"RANK", "WORLD_SIZE"} <= os.environ.keys() or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_over_ranks(value: int, device: torch.device) -> int:
    """``value`` summed over the ranks (one tiny all-reduce; the value when not distributed)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return int(t.item())


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (one tiny all-reduce; the flag itself when not
    distributed). Ranks must take the same branch around DDP's backward."""
    return sum_over_ranks(int(flag), device) > 0


def rank_rng_states(device: torch.device) -> list[torch.Tensor] | None:
    """Every rank's torch random state (the CPU's, then on CUDA the device's: dropout draws from
    it) as one uint8 tensor each, gathered on every rank (None when not distributed)."""
    if not dist.is_initialized():
        return None
    mine = torch.get_rng_state()
    if device.type == "cuda":
        mine = torch.cat([mine, torch.cuda.get_rng_state(device)])
    mine = mine.to(device)
    states = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(states, mine)
    return [s.cpu() for s in states]


def seed_rank(device: torch.device, seed: int, rank: int, step: int,
              states: list[torch.Tensor] | None = None) -> None:
    """Give this rank its own torch random stream (else sample j of every rank's batch draws
    the same dropout masks): its state in ``states`` (:func:`rank_rng_states`, checked by
    :func:`check_rank_states`) on resume, else one seeded from (``seed``, ``step``, ``rank``)."""
    if states is None or rank >= len(states):
        torch.manual_seed(seed + 1_000_003 * step + rank)
        return
    n = torch.get_rng_state().numel()
    torch.set_rng_state(states[rank][:n].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[rank][n:].clone(), device)


def check_rank_states(states, device: torch.device) -> None:
    """ValueError unless ``states`` (a checkpoint's ``rng_ranks``) holds random states of this
    device kind, as :func:`rank_rng_states` writes them."""
    want = torch.get_rng_state().numel() + (
        torch.cuda.get_rng_state(device).numel() if device.type == "cuda" else 0)
    if not isinstance(states, list) or not all(
            torch.is_tensor(t) and t.dtype == torch.uint8 and t.shape == (want,) for t in states):
        raise ValueError(f"its rng_ranks are not {want}-byte random states of the "
                         f"{device.type} device")


def mask_counts(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Per mask key, the divisor that makes DDP's average of the ranks' masked batch means the
    masked mean of the global batch: (masked samples of all ranks, at least 1) / world size (one
    tiny all-reduce; None when not distributed). Each rank's own count would weight a term by
    the rank's share (README: a step on N ranks is one step on their global batch)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    t = torch.stack([m.float().sum() for m in masks.values()])
    dist.all_reduce(t)
    return dict(zip(masks, t.clamp(min=1.0) / dist.get_world_size()))


def wrap(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``module`` under DDP when a process group exists (else unchanged); ``sync_bn``: BatchNorm
    -> SyncBatchNorm first (in place: parameters, buffers and state_dict keys stay). DDP gives
    every rank rank 0's parameters and buffers, and re-broadcasts the buffers every forward."""
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if not dist.is_initialized():
        return module
    ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def wait_for_main(key: str, timeout_s: float) -> None:
    """End of a section that rank 0 runs alone (the in-training evaluation, hours long): rank 0
    marks ``key`` done in the rendezvous store, the others wait for it up to ``timeout_s`` (not
    a collective: the process group's timeout does not cut it short)."""
    if not dist.is_initialized():
        return
    store = dist.distributed_c10d._get_default_store()
    if dist.get_rank() == 0:
        store.set(key, "done")
    else:
        store.wait([key], datetime.timedelta(seconds=timeout_s))


# in gloo's plain RuntimeError of a failed collective (a peer's closed connection, a timeout)
PEER_FAILURE_MARKS = ("gloo", "NCCL", "Timed out", "timed out", "Connection closed",
                      "Connection reset", "pair closure")


@contextlib.contextmanager
def peer_errors(rank: int, timeout_s: float):
    """A failed collective (a peer died or hung past the timeout: a ``DistError`` of NCCL or the
    store, or gloo's ``RuntimeError``) as one ``error:`` line naming this rank, not a traceback."""
    try:
        yield
    except RuntimeError as e:
        lost = isinstance(e, dist.DistError) or any(m in str(e) for m in PEER_FAILURE_MARKS)
        if not (dist.is_initialized() and lost):
            raise
        text = str(e).strip()
        first = text.splitlines()[0][:300] if text else type(e).__name__
        raise SystemExit(f"error: rank {rank}: lost contact with the other ranks ({first}). "
                         f"A rank died or hung for more than --dist_timeout {timeout_s:g} s; "
                         f"its own output says why") from e
