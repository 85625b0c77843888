"""The training mixture of H36M, COCO + MPII, MPI-INF-3DHP [and 3DPW] (upstream §6.4).

Each item draws ``p = np.random.rand()`` and takes the first dataset (order h36m, coco, mpii,
mpi-inf-3dhp[, 3dpw]) whose cumulative share reaches ``p``, at ``index % len(dataset)``. The
shares are ``constants.MIX_WITHOUT_3DPW`` / ``MIX_WITH_3DPW``, 'lsp_coco_mpii' split between COCO
and MPII by length. The epoch is the largest dataset's length (released, §9.2 item 18).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch.utils.data import Dataset

import constants
from config import DataPaths
from datasets.base_dataset import BaseDataset

__all__ = ["MixedDataset", "mixture_partition"]

_SPLIT_KEY = "lsp_coco_mpii"
_SPLIT_INTO = ("coco", "mpii")


def mixture_partition(ratios: Mapping[str, float], lengths: Mapping[str, int]) -> dict[str, float]:
    """{name: probability} (sums to 1) from the constants' ``ratios`` ('lsp_coco_mpii' split
    over coco and mpii by ``lengths``)."""
    out, total = {}, sum(lengths.get(k, 0) for k in _SPLIT_INTO)
    for name, r in ratios.items():
        out.update({k: r * lengths[k] / total for k in _SPLIT_INTO} if name == _SPLIT_KEY
                   else {name: r})
    return out


class MixedDataset(Dataset):
    """Training mixture. use_3dpw default ``options.train_3dpw``; paths default
    ``DataPaths.from_options(options)``; datasets: prebuilt datasets by name (every name of
    the partition) instead of ``BaseDataset(options, name, is_train=True)``."""

    def __init__(self, options, paths: DataPaths | None = None, use_3dpw: bool | None = None,
                 *, datasets: Mapping[str, Dataset] | None = None):
        super().__init__()
        use_3dpw = bool(getattr(options, "train_3dpw", False)) if use_3dpw is None else use_3dpw
        ratios = constants.MIX_WITH_3DPW if use_3dpw else constants.MIX_WITHOUT_3DPW
        names = [n for r in ratios for n in (_SPLIT_INTO if r == _SPLIT_KEY else (r,))]
        if datasets is None:
            paths = paths if paths is not None else DataPaths.from_options(options)
            datasets = {n: BaseDataset(options, n, is_train=True, paths=paths) for n in names}
        if missing := [n for n in names if n not in datasets]:
            raise ValueError(f"MixedDataset needs datasets {names}; missing {missing}")
        self.names, self.datasets = names, [datasets[n] for n in names]
        self.lengths = [len(d) for d in self.datasets]
        if empty := [n for n, m in zip(names, self.lengths) if m == 0]:
            raise ValueError(f"MixedDataset: empty dataset(s) {empty}")
        self.partition = mixture_partition(ratios, dict(zip(names, self.lengths)))
        self._cum = np.cumsum([self.partition[n] for n in names])
        self._cum[-1] = 1.0  # guard against rounding: every p in [0, 1) finds a dataset

    def __len__(self) -> int:
        return max(self.lengths)

    @property
    def n_skipped(self) -> int:
        """Images skipped by the member datasets (``skip_bad_images``), all processes."""
        return sum(int(getattr(d, "n_skipped", 0)) for d in self.datasets)

    def __getitem__(self, index):
        i = int(np.searchsorted(self._cum, np.random.rand(), side="left"))
        return self.datasets[i][int(index) % self.lengths[i]]
