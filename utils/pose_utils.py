"""Evaluation metrics: Procrustes alignment, PA-MPJPE, MPJPE and PVE (upstream-behaviour §7.3).

Procrustes (Umeyama): the similarity s R x + t (det R = +1) minimising sum |s R S1_i + t - S2_i|^2.
With K = X1^T X2 = U diag(sigma) V^T of the centred sets, R = V Z U^T, Z = diag(1, 1, sign
det(V U^T)), s = trace(diag(sigma) Z) / |X1|^2, t = mu2 - s R mu1. Metrics take numpy arrays or
torch tensors and return the same kind, in the input units.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["compute_similarity_transform_batch", "compute_similarity_transform_torch",
           "reconstruction_error", "mpjpe", "pve"]

_EPS = 1e-12


def _check_pair(S1, S2, name: str, what: str = "arrays of the same shape [B,N,3]") -> None:
    if S1.shape != S2.shape or S1.ndim != 3 or S1.shape[-1] != 3:
        raise ValueError(f"{name}: expected two {what}, got {tuple(S1.shape)} and "
                         f"{tuple(S2.shape)}")


def _procrustes(S1, S2):
    """S1, S2 [B, N, 3] (numpy or torch) -> S1_hat [B, N, 3], (scale [B], R [B,3,3], t [B,3])."""
    xp = torch if torch.is_tensor(S1) else np
    mu1, mu2 = S1.mean(1, keepdims=True), S2.mean(1, keepdims=True)
    X1, X2 = S1 - mu1, S2 - mu2
    U, sig, Vt = xp.linalg.svd(X1.swapaxes(1, 2) @ X2)
    V, Ut = Vt.swapaxes(1, 2), U.swapaxes(1, 2)
    d = xp.sign(xp.linalg.det(V @ Ut))
    d = xp.where(d == 0, 1.0, d)
    z = xp.stack((xp.ones_like(d), xp.ones_like(d), d), -1)          # diag(Z) [B, 3]
    R = (V * z[:, None, :]) @ Ut
    scale = (sig * z).sum(1) / (X1 ** 2).sum((1, 2)).clip(min=_EPS)
    t = mu2[:, 0] - scale[:, None] * (mu1 @ R.swapaxes(1, 2))[:, 0]
    S1_hat = scale[:, None, None] * (S1 @ R.swapaxes(1, 2)) + t[:, None, :]
    return S1_hat, (scale, R, t)


def compute_similarity_transform_batch(S1, S2, return_transform: bool = False):
    """Procrustes-align each S1[b] to S2[b] (numpy, [B, N, 3], computed in float64): S1_hat
    (dtype of S1), and (scale [B], R [B, 3, 3], t [B, 3]) with ``return_transform``."""
    S1, S2 = np.asarray(S1), np.asarray(S2)
    _check_pair(S1, S2, "compute_similarity_transform_batch")
    dtype = S1.dtype if np.issubdtype(S1.dtype, np.floating) else np.float64
    hat, transform = _procrustes(S1.astype(np.float64), S2.astype(np.float64))
    return (hat.astype(dtype), transform) if return_transform else hat.astype(dtype)


def compute_similarity_transform_torch(S1: torch.Tensor, S2: torch.Tensor,
                                       return_transform: bool = False):
    """:func:`compute_similarity_transform_batch` in torch (device and dtype of S1), computed in
    float32 at least and outside autocast: torch.linalg has no float16 / bfloat16 SVD or det,
    and autocast would hand them its low-precision matmul outputs."""
    _check_pair(S1, S2, "compute_similarity_transform_torch")
    dtype = torch.promote_types(S1.dtype, torch.float32)
    kind = S1.device.type
    with (torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind)
          else contextlib.nullcontext()):
        hat, transform = _procrustes(S1.to(dtype), S2.to(dtype))
    return (hat.to(S1.dtype), transform) if return_transform else hat.to(S1.dtype)


def mpjpe(pred, gt):
    """Mean Euclidean distance per sample, no alignment: pred, gt [B, N, 3] -> [B] (MPJPE of
    pelvis-centred joints; PVE of vertices: :func:`pve` is this function)."""
    _check_pair(pred, gt, "mpjpe", "[B,N,3] of the same shape")
    if torch.is_tensor(pred):
        return torch.linalg.vector_norm(pred - gt, dim=-1).mean(-1)
    return np.sqrt(((np.asarray(pred) - np.asarray(gt)) ** 2).sum(-1)).mean(-1)


pve = mpjpe


def reconstruction_error(S1, S2, reduction: str | None = "mean"):
    """PA-MPJPE: S1 (prediction), S2 (GT) [B, J, 3], numpy or torch; the per-sample errors
    after Procrustes, reduced by ``reduction`` ('mean' / 'sum' -> scalar, None -> [B])."""
    tensor = torch.is_tensor(S1)
    S2 = torch.as_tensor(S2).to(S1) if tensor else np.asarray(S2)
    align = compute_similarity_transform_torch if tensor else compute_similarity_transform_batch
    err = mpjpe(align(S1, S2), S2)
    if reduction not in ("mean", "sum", None, "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or None, got {reduction!r}")
    return getattr(err, reduction)() if reduction in ("mean", "sum") else err
