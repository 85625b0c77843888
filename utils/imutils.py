"""Image and keypoint maths of the data pipeline (upstream-behaviour.md §4.2, §6.3), numpy.

Geometric functions broadcast over leading dimensions (``...``); image functions take one
(H, W, 3) uint8 RGB image. Pixels are (x, y), y down; ``scale`` is bbox height / 200 (SPIN);
``rot`` is in degrees, positive turns the image content counter-clockwise on screen.
"""
from __future__ import annotations

import cv2
import numpy as np

import constants

__all__ = ["get_affine_transform", "transform_points", "bbox_from_keypoints", "bbox_info",
           "diagonal_focal", "flip_keypoints_2d", "flip_joints_3d", "flip_smpl_pose",
           "rotate_points_inplane", "rotate_root_orientation", "inplane_rotation_matrix",
           "normalize_image", "photometric_augment"]


def get_affine_transform(center, scale, rot, out_size, inv: bool = False) -> np.ndarray:
    """Full image -> crop similarity (crop -> full with ``inv``), built as released (§6.3 5):
    center (..., 2) px, scale (...), rot (...) degrees, out_size (crop_w, crop_h) -> (..., 2, 3)
    float64. Geometrically x' = k R(θ)(x - c) + crop/2 with k = crop_h / (200 scale); numerically
    :func:`_three_point_affine`, which rounds differently (~1e-5 px) and decides the pixels."""
    center = np.asarray(center, dtype=np.float64)
    cx, cy, scale, rot = np.broadcast_arrays(center[..., 0], center[..., 1], scale, rot)
    out = [_three_point_affine(np.array([x, y]), float(s), float(r), out_size, inv)
           for x, y, s, r in zip(cx.flat, cy.flat, scale.flat, rot.flat)]
    return np.reshape(out, cx.shape + (2, 3))


def _three_point_affine(center: np.ndarray, scale: float, rot: float, out_size,
                        inv: bool) -> np.ndarray:
    """The released construction (§6.3 item 5, "Numerically"): float32 point triples
    ``src = [c, c + R(θ)[0, -src_w/2], .]`` (src_w = 200 scale crop_w/crop_h, rotation in
    float64), ``dst = [crop/2, crop/2 + [0, -crop_w/2], .]``, third point ``p1 + [-(p0-p1)_y,
    (p0-p1)_x]`` in float32; then ``cv2.getAffineTransform(src, dst)`` (swapped for ``inv``)."""
    crop_w, crop_h = float(out_size[0]), float(out_size[1])
    src_w = 200.0 * (scale * crop_w / crop_h)
    theta = np.pi * rot / 180.0
    src_dir = -0.5 * src_w * np.array([-np.sin(theta), np.cos(theta)])   # R(θ) [0, -src_w/2]
    half = np.array([crop_w * 0.5, crop_h * 0.5])
    src = np.float32([center, center + src_dir, [0, 0]])
    dst = np.float32([half, half + np.array([0.0, -0.5 * crop_w]), [0, 0]])
    for p in (src, dst):                 # float32 arithmetic, as released
        d = p[0] - p[1]
        p[2] = p[1] + np.array([-d[1], d[0]])
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def transform_points(points, trans) -> np.ndarray:
    """points (..., N, 2) through 2x3 affine maps trans (..., 2, 3) -> (..., N, 2)."""
    points, trans = np.asarray(points), np.asarray(trans)
    return points @ np.swapaxes(trans[..., :2], -1, -2) + trans[..., None, :, 2]


def bbox_from_keypoints(keypoints, aspect_ratio: float = constants.CROP_ASPECT_RATIO,
                        factor: float = constants.BBOX_SCALE_FACTOR):
    """(center, scale) of the tight box of the keypoints with confidence > 0 (§6.3 item 2):
    keypoints (..., J, 3) px -> center (..., 2) = box centre, scale (...) =
    ``max(w aspect_ratio, h) / 200 factor`` (both float64, NaN with no keypoint visible) and
    n_visible (...) int."""
    kp = np.asarray(keypoints, dtype=np.float64)
    vis = kp[..., 2] > 0
    n_vis = vis.sum(-1)
    lo = np.where(vis[..., None], kp[..., :2], np.inf).min(-2)
    hi = np.where(vis[..., None], kp[..., :2], -np.inf).max(-2)
    with np.errstate(invalid="ignore"):
        center, wh = (lo + hi) / 2, hi - lo
        scale = np.maximum(wh[..., 0] * aspect_ratio, wh[..., 1]) / 200.0 * factor
    none = n_vis == 0
    return np.where(none[..., None], np.nan, center), np.where(none, np.nan, scale), n_vis


def diagonal_focal(img_h, img_w) -> np.ndarray:
    """CLIFF's focal-length guess, the image diagonal ``sqrt(W^2 + H^2)``. Shapes broadcast."""
    return np.sqrt(np.asarray(img_w, dtype=np.float64) ** 2
                   + np.asarray(img_h, dtype=np.float64) ** 2)


def bbox_info(center, scale, img_h, img_w, focal) -> np.ndarray:
    """CLIFF bbox input (§4.2): center (..., 2), scale, img_h, img_w, focal (...) -> (..., 3)
    float64 ``[(cx - W/2)/f 2.8, (cy - H/2)/f 2.8, (200 s - 0.24 f) / (0.06 f)]``."""
    c, s, f, w, h = (np.asarray(a, dtype=np.float64) for a in (center, scale, focal, img_w, img_h))
    b = constants.BBOX_INFO_SCALE
    return np.stack(np.broadcast_arrays((c[..., 0] - w / 2) / f * b, (c[..., 1] - h / 2) / f * b,
                                        (s * 200 - 0.24 * f) / (0.06 * f)), -1)


# Flips: each permutation is a gather new[i] = old[perm[i]], applied before the negation.
def flip_keypoints_2d(keypoints, img_w, perm=constants.J49_FLIP_PERM) -> np.ndarray:
    """Mirrored (..., J, C>=2) keypoints (new array): left/right permuted, ``x -> W - 1 - x``;
    other columns (confidence) travel with the permutation."""
    out = np.array(np.asarray(keypoints)[..., perm, :], copy=True)
    out[..., 0] = img_w - 1 - out[..., 0]
    return out


def flip_joints_3d(joints, perm=constants.J24_FLIP_PERM) -> np.ndarray:
    """Mirrored (..., J, C>=3) joints (new array): left/right permuted, then ``x -> -x``."""
    out = np.array(np.asarray(joints)[..., perm, :], copy=True)
    out[..., 0] = -out[..., 0]
    return out


def flip_smpl_pose(pose) -> np.ndarray:
    """Mirrored SMPL axis-angle pose (..., 72) (new array): joints permuted, y and z negated."""
    out = np.array(np.asarray(pose)[..., constants.SMPL_POSE_FLIP_PERM], copy=True)
    out[..., np.arange(out.shape[-1]) % 3 > 0] *= -1   # y and z of every joint
    return out


def inplane_rotation_matrix(rot) -> np.ndarray:
    """Rotation by -rot (degrees, (...)) about the camera z axis -> (..., 3, 3) float64: the
    2D crop map's rotation, applied to 3D quantities."""
    t = -np.deg2rad(np.asarray(rot, dtype=np.float64))
    c, s, zero, one = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(t.shape + (3, 3))


def rotate_points_inplane(points, rot) -> np.ndarray:
    """points (..., J, C>=3) with xyz rotated by :func:`inplane_rotation_matrix` (new array,
    extra columns kept)."""
    out = np.array(points)
    r = inplane_rotation_matrix(rot).astype(out.dtype, copy=False)
    out[..., :3] = out[..., :3] @ np.swapaxes(r, -1, -2)
    return out


def rotate_root_orientation(pose, rot) -> np.ndarray:
    """pose (..., 72) axis-angle with the global orientation (0:3) rotated in-plane (§6.3 5):
    ``R_root' = inplane_rotation_matrix(rot) @ R_root`` (new array)."""
    from scipy.spatial.transform import Rotation
    out = np.array(pose)
    aa = out[..., :3].astype(np.float64)           # Rodrigues
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    x, y, z = np.moveaxis(aa / np.maximum(angle, 1e-12), -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    a = angle[..., None]
    r = inplane_rotation_matrix(rot) @ (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k))
    out[..., :3] = Rotation.from_matrix(r.reshape(-1, 3, 3)).as_rotvec().reshape(aa.shape)
    return out


_MEAN = np.asarray(constants.IMG_NORM_MEAN, dtype=np.float32)
_STD = np.asarray(constants.IMG_NORM_STD, dtype=np.float32)


def normalize_image(img, pn=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(trunc(clip(img pn, 0, 255))/255 - mean) /
    std`` (§6.3 item 6; ``pn`` (3,) per-channel noise or None). Each uint8 value of a channel
    maps to one float: computed as a 256-entry lookup table per channel (same numbers)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize_image expects an (H, W, 3) uint8 image, got "
                         f"{img.dtype}{img.shape}")
    v = np.arange(256, dtype=np.float32)[None, :].repeat(3, 0)            # (3, 256)
    if pn is not None:
        v = np.trunc(np.clip(v * np.asarray(pn, dtype=np.float32)[:, None], 0.0, 255.0))
    lut = (v * (1.0 / (255.0 * _STD))[:, None] - (_MEAN / _STD)[:, None]).astype(np.float32)
    out = cv2.LUT(np.ascontiguousarray(img), np.ascontiguousarray(lut.T[None]))  # (H, W, 3)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def denormalize_image(img) -> np.ndarray:
    """(..., 3, H, W) normalised float -> (..., H, W, 3) uint8 RGB: :func:`normalize_image`
    undone (without its noise), rounded to the nearest value."""
    x = np.moveaxis(np.asarray(img, dtype=np.float32), -3, -1) * _STD + _MEAN
    return np.ascontiguousarray((np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def photometric_augment(img, rng=np.random) -> np.ndarray:
    """Our stand-in for the released ``--ALB`` albumentations pipeline (RGB stays RGB, D8):
    (H, W, 3) uint8 -> (H, W, 3) uint8, geometry untouched; each step drawn from ``rng`` (a
    ``RandomState``-like) with its probability (below)."""
    out = img
    if rng.uniform() < 0.5:                                    # brightness / contrast
        alpha, beta = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1) * 255.0
        out = np.clip(out.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.3:                                    # hue / saturation
        dh, ds = rng.uniform(-10, 10), rng.uniform(0.8, 1.2)
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + dh, 180.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * ds, 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.uniform() < 0.2:                                    # Gaussian blur
        k = int(rng.choice([3, 5, 7]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    if rng.uniform() < 0.2:                                    # Gaussian noise
        sigma = rng.uniform(2, 10)
        noise = rng.standard_normal(out.shape).astype(np.float32) * sigma
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.05:                                   # grey
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if rng.uniform() < 0.2:                                    # JPEG re-compression
        q = int(rng.uniform(40, 95))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)
