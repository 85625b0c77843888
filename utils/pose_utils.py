"""Evaluation metrics: Procrustes alignment, PA-MPJPE, MPJPE and PVE (upstream-behaviour §7.3).

Procrustes (Umeyama) finds the similarity transform s R x + t (R a proper rotation, det +1)
minimising sum_i |s R S1_i + t - S2_i|^2. With K = X1^T X2 = U diag(sigma) V^T of the centred
point sets, R = V Z U^T with Z = diag(1, 1, sign det(V U^T)) (the reflection fix),
s = trace(diag(sigma) Z) / |X1|^2 and t = mu2 - s R mu1.

The metric functions accept numpy arrays or torch tensors and return the same kind; all errors
are in the input units (the evaluation multiplies by 1000 for mm).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "compute_similarity_transform_batch",
    "compute_similarity_transform_torch", "reconstruction_error", "mpjpe", "pve",
    "mean_euclidean_error",
]

_EPS = 1e-12


def _check_pair(S1, S2, ndim: int, name: str) -> None:
    if S1.shape != S2.shape or S1.ndim != ndim or S1.shape[-1] != 3:
        want = "[N,3]" if ndim == 2 else "[B,N,3]"
        raise ValueError(f"{name}: expected two arrays of the same shape {want}, "
                         f"got {tuple(S1.shape)} and {tuple(S2.shape)}")


def _umeyama_np(S1: np.ndarray, S2: np.ndarray):
    """S1, S2: [B, N, 3] float64 -> (scale [B], R [B,3,3], t [B,3])."""
    mu1, mu2 = S1.mean(1, keepdims=True), S2.mean(1, keepdims=True)
    X1, X2 = S1 - mu1, S2 - mu2
    var1 = (X1 ** 2).sum((1, 2))
    K = np.swapaxes(X1, 1, 2) @ X2                                   # [B,3,3]
    U, sig, Vt = np.linalg.svd(K)
    V = np.swapaxes(Vt, 1, 2)
    d = np.sign(np.linalg.det(V @ np.swapaxes(U, 1, 2)))
    d = np.where(d == 0, 1.0, d)
    Z = np.broadcast_to(np.eye(3), K.shape).copy()
    Z[:, 2, 2] = d
    R = V @ Z @ np.swapaxes(U, 1, 2)
    scale = (sig * np.diagonal(Z, axis1=1, axis2=2)).sum(1) / np.maximum(var1, _EPS)
    t = mu2[:, 0] - scale[:, None] * (mu1 @ np.swapaxes(R, 1, 2))[:, 0]
    return scale, R, t


def compute_similarity_transform_batch(S1: np.ndarray, S2: np.ndarray,
                                       return_transform: bool = False):
    """Align each S1[b] to S2[b] with a similarity transform (numpy).

    S1, S2: [B, N, 3]. Returns S1_hat [B, N, 3] (= s R S1 + t, dtype of S1), and with
    ``return_transform`` also (scale [B], R [B, 3, 3], t [B, 3]).
    """
    S1, S2 = np.asarray(S1), np.asarray(S2)
    _check_pair(S1, S2, 3, "compute_similarity_transform_batch")
    dtype = S1.dtype if np.issubdtype(S1.dtype, np.floating) else np.float64
    a, b = S1.astype(np.float64), S2.astype(np.float64)
    scale, R, t = _umeyama_np(a, b)
    S1_hat = scale[:, None, None] * (a @ np.swapaxes(R, 1, 2)) + t[:, None, :]
    S1_hat = S1_hat.astype(dtype)
    return (S1_hat, (scale, R, t)) if return_transform else S1_hat


def compute_similarity_transform_torch(S1: torch.Tensor, S2: torch.Tensor,
                                       return_transform: bool = False):
    """Batched torch Procrustes: S1, S2 [B, N, 3] -> S1_hat [B, N, 3] (same device/dtype).

    With ``return_transform`` also returns (scale [B], R [B, 3, 3], t [B, 3]).
    """
    _check_pair(S1, S2, 3, "compute_similarity_transform_torch")
    mu1, mu2 = S1.mean(1, keepdim=True), S2.mean(1, keepdim=True)
    X1, X2 = S1 - mu1, S2 - mu2
    var1 = (X1 ** 2).sum((1, 2))
    K = X1.transpose(1, 2) @ X2
    U, sig, Vt = torch.linalg.svd(K)
    V = Vt.transpose(1, 2)
    d = torch.sign(torch.linalg.det(V @ U.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    z = torch.stack((torch.ones_like(d), torch.ones_like(d), d), dim=-1)   # [B,3]
    R = (V * z[:, None, :]) @ U.transpose(1, 2)
    scale = (sig * z).sum(1) / var1.clamp(min=_EPS)
    t = mu2[:, 0] - scale[:, None] * (mu1 @ R.transpose(1, 2))[:, 0]
    S1_hat = scale[:, None, None] * (S1 @ R.transpose(1, 2)) + t[:, None, :]
    return (S1_hat, (scale, R, t)) if return_transform else S1_hat


def _reduce(err, reduction):
    if reduction is None or reduction == "none":
        return err
    if reduction == "mean":
        return err.mean()
    if reduction == "sum":
        return err.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or None, got {reduction!r}")


def mean_euclidean_error(pred, gt):
    """Per-sample mean Euclidean distance: pred, gt [B, N, 3] -> [B] (numpy or torch)."""
    if pred.shape != gt.shape or pred.shape[-1] != 3 or pred.ndim != 3:
        raise ValueError(f"mean_euclidean_error: expected two [B,N,3] of the same shape, "
                         f"got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if torch.is_tensor(pred):
        return torch.linalg.vector_norm(pred - gt, dim=-1).mean(-1)
    return np.sqrt(((np.asarray(pred) - np.asarray(gt)) ** 2).sum(-1)).mean(-1)


def mpjpe(pred, gt):
    """MPJPE per sample: pred, gt [B, J, 3] (already pelvis-centred) -> [B]."""
    return mean_euclidean_error(pred, gt)


def pve(pred_vertices, gt_vertices):
    """Per-vertex error per sample, no alignment: [B, V, 3] x2 -> [B]."""
    return mean_euclidean_error(pred_vertices, gt_vertices)


def reconstruction_error(S1, S2, reduction: str | None = "mean"):
    """PA-MPJPE: Procrustes-align each S1[b] to S2[b], then the mean joint error.

    S1 (prediction), S2 (GT): [B, J, 3], numpy or torch. Returns the per-sample errors reduced
    by ``reduction``: 'mean' / 'sum' -> scalar, None -> [B].
    """
    if torch.is_tensor(S1):
        S1_hat = compute_similarity_transform_torch(S1, torch.as_tensor(S2).to(S1))
        return _reduce(mean_euclidean_error(S1_hat, torch.as_tensor(S2).to(S1)), reduction)
    S1_hat = compute_similarity_transform_batch(S1, S2)
    return _reduce(mean_euclidean_error(S1_hat, np.asarray(S2)), reduction)
