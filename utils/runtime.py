"""Device selection and seeding, shared by training, evaluation, the demo and the benchmarks."""
from __future__ import annotations

import random

import numpy as np
import torch


def select_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a device (decisions D11); a clear exit when CUDA is missing."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if name == "cuda":   # the crops have a fixed size: cuDNN times its kernels once per shape
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def place(module: torch.nn.Module, device: torch.device,
          memory_format: str = "auto") -> torch.nn.Module:
    """``module`` on ``device`` in the layout of ``--memory_format``; 'auto': channels_last on
    the CPU (oneDNN convolutions ~1.3x faster: ResNet-50 fwd + bwd 523 vs 673 ms, batch 4,
    256x192), contiguous elsewhere. Values and state_dict keys do not depend on it."""
    if memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"unknown memory_format {memory_format!r}")
    device = torch.device(device)
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cpu" else "contiguous"
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    return module.to(device=device, memory_format=fmt)


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch dict with its tensors on ``device`` (copied asynchronously where possible)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (decisions D14)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adam(params, **kwargs) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, fused (one kernel per step: the same update up to rounding) where
    torch supports it: per-sample TTO steps it for every sample (a quarter of its time before)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def compile_backbone(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` of ``net.extract_features`` in place (state_dict unchanged), for the
    benchmarks' ``--compile`` only: on the CPU it gains nothing reliable (README). A deep copy of
    ``net`` still calls the original's compiled backbone (TTO workers copy it: use one worker)."""
    net.extract_features = torch.compile(net.extract_features)
    return net
