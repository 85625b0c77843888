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


def place(module: torch.nn.Module, device: torch.device,
          memory_format: str = "auto") -> torch.nn.Module:
    """Move ``module`` to ``device`` in the convolution layout of ``--memory_format``.

    'auto': channels_last on the CPU (oneDNN's convolutions run about 1.3x faster in it:
    ResNet-50 forward + backward 523 vs 673 ms at batch 4, 256x192), contiguous elsewhere.
    Values, state_dict keys and saved checkpoints do not depend on the layout.
    """
    if memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"unknown memory_format {memory_format!r}")
    device = torch.device(device)
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cpu" else "contiguous"
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    return module.to(device=device, memory_format=fmt)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (decisions D14)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adam(params, **kwargs) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, fused into one kernel per step where torch supports it.

    The fused implementation (CPU and CUDA, floating-point parameters) computes the same update
    as the default one, up to float rounding, in far fewer passes over memory: per-sample TTO
    takes an Adam step over the whole network for every sample, and there the step was a quarter
    of the time (bench/tto.py). Elsewhere the default (foreach) implementation is used.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def compile_backbone(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` of ``net.extract_features`` (the backbone), in place; parameters,
    buffers and state_dict keys stay those of ``net``.

    Measured with ``--compile`` of ``bench/train_step.py`` and ``bench/tto.py`` (README): on the
    CPU it does not gain reliably (ResNet-50 backbone forward + backward 1.06x the eager time,
    ResNet-18 0.94x; per-sample TTO recompiles for several batches), so the training and
    evaluation scripts do not offer it. A deep copy of ``net`` keeps calling the original's
    compiled backbone (TTO worker threads copy the network: use one worker).
    """
    net.extract_features = torch.compile(net.extract_features)
    return net
