"""Resumable, reproducible data order (decisions D13, D14).

The permutation of an epoch is a function of (seed, epoch) and is stored in mid-epoch
checkpoints; every sample's augmentation draws are seeded by (seed, epoch, index), so a resumed
run sees exactly the batches the uninterrupted run would have seen, with any number of workers."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def check_occluders(dataset: Dataset) -> None:
    """Read every occluder file of ``dataset`` (or its ``.datasets``) now, before the run's
    folder is written."""
    for d in getattr(dataset, "datasets", [dataset]):
        if getattr(d, "occluder", None) is not None:
            d.occluder.check()


class SeededDataset(Dataset):
    """Wraps a dataset; seeds numpy and python RNGs per (seed, epoch, index) before each item."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        np.random.seed(s)
        random.seed(s)
        return self.dataset[index]


class EpochSampler(Sampler[int]):
    """Per-epoch permutation from (seed, epoch), sharded over DDP ranks, resumable mid-epoch
    (:meth:`set_epoch` with a stored permutation and the batches already done)."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.perm: list[int] = self.permutation(0)
        self.start = 0

    def permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def set_epoch(self, epoch: int, perm: list[int] | None = None, start_batch: int = 0,
                  batch_size: int = 1) -> None:
        self.perm = list(perm) if perm is not None else self.permutation(epoch)
        self.start = start_batch * batch_size

    def _mine(self) -> list[int]:
        total = (self.n // self.world) * self.world
        return self.perm[self.rank:total:self.world]

    def __iter__(self):
        return iter(self._mine()[self.start:])

    def __len__(self) -> int:
        return len(self._mine()) - self.start
