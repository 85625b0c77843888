"""Rotations, cameras and projections (SPIN / CLIFF conventions): batched, pure torch.

Outputs have the dtype and device of the main input (float32 or float64). The one definition
of each training projection: :func:`project_full_to_crop` (CLIFF full-image camera,
upstream-behaviour §4.4) and :func:`project_crop` (HMR crop camera, focal 5000, §2.6).
Translations are ``[tx, ty, tz]`` in the camera frame (OpenCV: x right, y down, z forward);
crop cameras are ``[s, tx, ty]`` (weak-perspective scale and translation).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

import constants

__all__ = ["rot6d_to_rotmat", "rotmat_to_rot6d", "batch_rodrigues", "rotmat_to_quat",
           "rotmat_to_axis_angle", "cam_crop2full", "crop_cam_to_translation",
           "perspective_projection", "project_full_to_crop", "project_crop",
           "normalize_keypoints_2d"]


def _per_sample(value, width: int, like: torch.Tensor, name: str, vector: bool = False
                ) -> torch.Tensor:
    """``value`` as [B, width] with ``like``'s dtype/device (B = ``like.shape[0]``): a number,
    [B] or [B, width]; or, with ``vector`` (a point or size), [width] shared by the batch."""
    batch = like.shape[0]
    if isinstance(value, numbers.Real):   # no host-to-device copy (a CUDA sync) for a number
        t = torch.full((), value, dtype=like.dtype, device=like.device)
    else:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.shape == (batch, width):
        return t
    if vector and t.shape == (width,):
        return t.expand(batch, width)
    if not vector and (t.dim() == 0 or t.shape == (batch,)):
        return t.reshape(-1, 1).expand(batch, width)
    expected = f"[{width}]" if vector else f"a number, [{batch}]"
    raise ValueError(f"{name}: expected {expected} or [{batch},{width}], "
                     f"got shape {tuple(t.shape)}")


def _check_last(x: torch.Tensor, size: int, name: str, multiple: bool = False) -> None:
    """``x`` is a tensor whose last dimension is ``size`` (``multiple``: a multiple of it)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or (x.shape[-1] % size if multiple else x.shape[-1] != size):
        what = "last dimension must be a multiple of" if multiple else "expected last dimension"
        raise ValueError(f"{name}: {what} {size}, got shape {tuple(x.shape)}")


def _check_rotmat(r: torch.Tensor, name: str) -> None:
    if r.dim() < 2 or r.shape[-2:] != (3, 3):
        raise ValueError(f"{name}: expected [..., 3, 3], got {tuple(r.shape)}")


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """6D representation [B, 6k] (or [..., 6m]) -> [B*k, 3, 3] rotations, in order (SPIN): read
    as ``reshape(-1, 3, 2)``, columns a1 = entries (0, 2, 4), a2 = (1, 3, 5) (identity
    [1, 0, 0, 1, 0, 0]); Gram-Schmidt b1 = a1/|a1|, b2 = normalise(a2 - (b1.a2) b1), b3 = b1 x b2;
    R = [b1 b2 b3] (columns)."""
    _check_last(x, 6, "rot6d_to_rotmat", multiple=True)
    x = x.reshape(-1, 3, 2)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def rotmat_to_rot6d(rotmat: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> [..., 6] = (R00, R01, R10, R11, R20, R21), the inverse of
    :func:`rot6d_to_rotmat` (reshape [B, 24, 6] to [B, 144] for the regressor's pose)."""
    _check_rotmat(rotmat, "rotmat_to_rot6d")
    return rotmat[..., :, :2].reshape(*rotmat.shape[:-2], 6)


def batch_rodrigues(axisangle: torch.Tensor) -> torch.Tensor:
    """Axis-angle [..., 3] -> [..., 3, 3]: R = I + A [v]x + B [v]x^2, A = sin(t)/t,
    B = (1 - cos t)/t^2, t = |v|; Taylor series below t = 1e-2 (exact at 0, finite gradient)."""
    _check_last(axisangle, 3, "batch_rodrigues")
    v = axisangle
    t2 = (v * v).sum(-1, keepdim=True)[..., None]           # [..., 1, 1]
    small = t2 < 1e-4
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    a = torch.where(small, 1.0 - t2 / 6.0 + t2 * t2 / 120.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0 + t2 * t2 / 720.0, (1.0 - torch.cos(t)) / t2_safe)
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    k = torch.stack((o, -z, y, z, o, -x, -y, x, o), dim=-1).reshape(*v.shape[:-1], 3, 3)  # [v]x
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def rotmat_to_quat(rotmat: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> unit quaternion [..., 4] (w, x, y, z), w >= 0. Shepperd's method (the
    largest of four denominators, >= 1): accurate at every angle, finite gradients."""
    _check_rotmat(rotmat, "rotmat_to_quat")
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = (r.unbind(-1) for r in rotmat.unbind(-2))
    # 4 q_k^2 for k = w, x, y, z
    sq = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                      1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1)
    r = torch.sqrt(sq.clamp(min=0.25))          # 2|q_k|; only the largest (>= 1) is used
    # candidate k (rows) equals 4 q_k * (w, x, y, z)
    cand = torch.stack((sq[..., 0], m21 - m12, m02 - m20, m10 - m01,
                        m21 - m12, sq[..., 1], m10 + m01, m02 + m20,
                        m02 - m20, m10 + m01, sq[..., 2], m21 + m12,
                        m10 - m01, m02 + m20, m21 + m12, sq[..., 3]), dim=-1).unflatten(-1, (4, 4))
    cand = cand / (2.0 * r[..., None])
    best = sq.argmax(dim=-1)                     # [...]
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> axis-angle [..., 3], angle in [0, pi]: via :func:`rotmat_to_quat`,
    angle = 2 atan2(|v|, w) (robust near pi) and a Taylor series of angle/|v| near 0."""
    q = rotmat_to_quat(rotmat)
    w, v = q[..., :1], q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    small = n2 < 1e-12
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    angle = 2.0 * torch.atan2(n, w)
    w_safe = torch.where(small, w, torch.ones_like(w))      # w >= 1/sqrt(2) where small
    factor = torch.where(small, 2.0 / w_safe - (2.0 / 3.0) * n2 / w_safe ** 3, angle / n)
    return v * factor


def cam_crop2full(crop_cam: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                  full_img_shape: torch.Tensor, focal_length) -> torch.Tensor:
    """CLIFF: crop camera [B, 3] (s, tx, ty) -> full-image translation [B, 3]: center [B, 2] or
    [2] bbox centre (cx, cy) px; scale [B] bbox height / 200; full_img_shape [B, 2] or [2] (h, w);
    focal_length [B] or float. With bs = 200 scale s + 1e-9:
    (2 (cx - w/2) / bs + tx, 2 (cy - h/2) / bs + ty, 2 f / bs)."""
    _check_last(crop_cam, 3, "cam_crop2full crop_cam")
    center = _per_sample(center, 2, crop_cam, "cam_crop2full center", vector=True)
    hw = _per_sample(full_img_shape, 2, crop_cam, "cam_crop2full full_img_shape", vector=True)
    scale = _per_sample(scale, 1, crop_cam, "cam_crop2full scale")[:, 0]
    f = _per_sample(focal_length, 1, crop_cam, "cam_crop2full focal_length")[:, 0]
    (h, w), (cx, cy) = hw.unbind(-1), center.unbind(-1)
    bs = scale * 200.0 * crop_cam[:, 0] + 1e-9
    tz = 2.0 * f / bs
    tx = 2.0 * (cx - w / 2.0) / bs + crop_cam[:, 1]
    ty = 2.0 * (cy - h / 2.0) / bs + crop_cam[:, 2]
    return torch.stack((tx, ty, tz), dim=-1)


def crop_cam_to_translation(crop_cam: torch.Tensor, bbox_size, focal_length=constants.FOCAL_LENGTH
                            ) -> torch.Tensor:
    """HMR: crop camera [B, 3] (s, tx, ty) -> [B, 3] (tx, ty, 2 f / (bbox_size s + 1e-9));
    bbox_size, focal_length: float or [B]."""
    _check_last(crop_cam, 3, "crop_cam_to_translation crop_cam")
    size = _per_sample(bbox_size, 1, crop_cam, "crop_cam_to_translation bbox_size")[:, 0]
    f = _per_sample(focal_length, 1, crop_cam, "crop_cam_to_translation focal_length")[:, 0]
    tz = 2.0 * f / (size * crop_cam[:, 0] + 1e-9)
    return torch.stack((crop_cam[:, 1], crop_cam[:, 2], tz), dim=-1)


def perspective_projection(points: torch.Tensor, rotation: torch.Tensor | None,
                           translation: torch.Tensor, focal_length, camera_center) -> torch.Tensor:
    """Pinhole: points [B, N, 3] -> pixels [B, N, 2], u = fx X/Z + cx, v = fy Y/Z + cy with
    (X, Y, Z) = R p + t. rotation [B, 3, 3] or None; translation [B, 3]; focal_length float,
    [B] or [B, 2] (fx, fy); camera_center [B, 2] or [2] (cx, cy)."""
    _check_last(points, 3, "perspective_projection points")
    if points.dim() != 3:
        raise ValueError(f"perspective_projection: points must be [B,N,3], "
                         f"got {tuple(points.shape)}")
    if rotation is not None:
        points = points @ rotation.transpose(-1, -2)
    points = points + translation[:, None, :]
    f = _per_sample(focal_length, 2, points, "perspective_projection focal_length")
    c = _per_sample(camera_center, 2, points, "perspective_projection camera_center", vector=True)
    xy = points[..., :2] / points[..., 2:3]
    return xy * f[:, None, :] + c[:, None, :]


def project_full_to_crop(joints: torch.Tensor, cam_t_full: torch.Tensor, focal_length,
                         img_hw: torch.Tensor, crop_trans: torch.Tensor,
                         crop_hw: Sequence[int]) -> torch.Tensor:
    """CLIFF keypoints: joints [B, J, 3] -> [B, J, 2] normalised crop coordinates: projected with
    K = [[f, 0, w/2], [0, f, h/2]] and translation cam_t_full [B, 3] (:func:`cam_crop2full`),
    mapped by crop_trans [B, 2, 3] (full-image -> crop pixels, the un-rotated map of §4.4), then
    x -> 2x/crop_w - 1, y -> 2y/crop_h - 1. focal_length [B] or float; img_hw [B, 2] (h, w);
    crop_hw (h, w)."""
    _check_last(joints, 3, "project_full_to_crop joints")
    bsz = joints.shape[0]
    hw = _per_sample(img_hw, 2, joints, "project_full_to_crop img_hw", vector=True)
    center = torch.stack((hw[:, 1], hw[:, 0]), dim=-1) / 2.0
    full = perspective_projection(joints, None, cam_t_full, focal_length, center)  # [B,J,2]
    crop_trans = torch.as_tensor(crop_trans, dtype=joints.dtype, device=joints.device)
    if crop_trans.shape != (bsz, 2, 3):
        raise ValueError(f"project_full_to_crop: crop_trans must be [{bsz},2,3], "
                         f"got {tuple(crop_trans.shape)}")
    crop = full @ crop_trans[:, :, :2].transpose(-1, -2) + crop_trans[:, None, :, 2]
    return 2.0 * crop / _crop_wh(crop_hw, crop) - 1.0


def project_crop(joints: torch.Tensor, crop_cam: torch.Tensor, crop_hw: Sequence[int],
                 bbox_size) -> torch.Tensor:
    """HMR keypoints (§2.6): joints [B, J, 3] -> [B, J, 2] normalised crop coordinates:
    f = 5000, principal point 0, t = :func:`crop_cam_to_translation` (crop_cam [B, 3],
    bbox_size float or [B]); x / (crop_w/2), y / (crop_h/2) with crop_hw (h, w)."""
    t = crop_cam_to_translation(crop_cam, bbox_size)
    zero = torch.zeros(2, dtype=joints.dtype, device=joints.device)
    uv = perspective_projection(joints, None, t, constants.FOCAL_LENGTH, zero)
    return uv / (_crop_wh(crop_hw, uv) / 2.0)


def _crop_wh(crop_hw, like: torch.Tensor) -> torch.Tensor:
    """(h, w) -> tensor [w, h] with ``like``'s dtype/device, filled on the device (torch.tensor
    of a list would be a host-to-device copy, which synchronises CUDA, in every projection)."""
    if len(crop_hw) != 2:
        raise ValueError(f"crop_hw must be (h, w), got {crop_hw!r}")
    return torch.stack([torch.full((), float(x), dtype=like.dtype, device=like.device)
                        for x in (crop_hw[1], crop_hw[0])])


def normalize_keypoints_2d(kp: torch.Tensor, crop_hw: Sequence[int]) -> torch.Tensor:
    """kp [B, J, 3] (x, y, conf) in crop pixels -> [B, J, 3] with x -> 2x/crop_w - 1,
    y -> 2y/crop_h - 1, conf unchanged; crop_hw (h, w)."""
    _check_last(kp, 3, "normalize_keypoints_2d")
    return torch.cat((2.0 * kp[..., :2] / _crop_wh(crop_hw, kp) - 1.0, kp[..., 2:]), dim=-1)
