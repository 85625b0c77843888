"""Device selection and seeding, shared by training, evaluation, the demo and the benchmarks."""
from __future__ import annotations

import random

import numpy as np
import torch


def select_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a device (decisions D11); a clear exit when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (decisions D14)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
