"""Datasets: SPIN-format npz + images -> training / evaluation samples. The public names are
imported lazily, so ``python -m datasets.synthetic`` does not pull in torch/cv2."""
from __future__ import annotations

import importlib

_EXPORTS = {"BaseDataset": "datasets.base_dataset", "DatasetError": "datasets.base_dataset",
            "MixedDataset": "datasets.mixed_dataset", "mixture_partition": "datasets.mixed_dataset",
            "SyntheticOcclusion": "datasets.occlusion", "OccluderFileError": "datasets.occlusion"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return globals().setdefault(name, getattr(importlib.import_module(_EXPORTS[name]), name))


def __dir__():
    return sorted(list(globals()) + __all__)
