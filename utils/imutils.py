"""Image and keypoint maths of the data pipeline (upstream-behaviour.md §4.2, §6.3).

Pure functions on numpy arrays. Geometric functions broadcast over leading batch dimensions
(shapes in the docstrings, ``...`` = any batch shape); the image functions work on one HxWx3
uint8 image. Nothing here reads files or draws random numbers except :func:`photometric_augment`,
which takes the random state it draws from.

Conventions: pixel coordinates are (x, y) with y down; ``scale`` is the bbox height / 200
(SPIN); ``rot`` is in degrees, positive turns the image content counter-clockwise on screen.
"""
from __future__ import annotations

import cv2
import numpy as np

import constants

__all__ = [
    "get_affine_transform", "transform_points", "bbox_from_keypoints", "bbox_info",
    "diagonal_focal", "flip_keypoints_2d", "flip_joints_3d", "flip_smpl_pose",
    "rotate_points_inplane", "rotate_root_orientation", "inplane_rotation_matrix",
    "normalize_image", "photometric_augment",
]


# ---------------------------------------------------------------------------------------------
# Affine crop transforms
def get_affine_transform(center, scale, rot, out_size, inv: bool = False) -> np.ndarray:
    """Similarity transform between the full image and a crop, built as released (§6.3 item 5).

    Geometrically, with ``k = crop_h / (200 * scale)`` and θ = rot in radians, a full-image pixel
    (x, y) maps to ``x' = k( cosθ (x-cx) + sinθ (y-cy)) + crop_w/2``,
    ``y' = k(-sinθ (x-cx) + cosθ (y-cy)) + crop_h/2``: the crop covers ``200*scale`` high by
    ``200*scale*crop_w/crop_h`` wide. Numerically it is the classic three-point construction
    (:func:`_three_point_affine`: float32 correspondences, then ``cv2.getAffineTransform``), which
    rounds differently from that closed form (~1e-5 px) and decides the crop's pixels.

    Args:
        center: (..., 2) bbox centre (cx, cy) in full-image pixels.
        scale: (...) bbox height / 200.
        rot: (...) rotation in degrees (0 for ``crop_trans``).
        out_size: (crop_w, crop_h) in pixels.
        inv: return the crop -> full-image map instead.
    Returns:
        (..., 2, 3) float64 affine matrices (``cv2.warpAffine`` convention).
    """
    center = np.asarray(center, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    rot = np.asarray(rot, dtype=np.float64)
    if center.shape == (2,) and scale.ndim == 0 and rot.ndim == 0:  # one sample (the dataset)
        return _three_point_affine(center, float(scale), float(rot), out_size, inv)
    shape = np.broadcast_shapes(center.shape[:-1], scale.shape, rot.shape)
    cs = np.broadcast_to(center, shape + (2,)).reshape(-1, 2)
    ss = np.broadcast_to(scale, shape).reshape(-1)
    rs = np.broadcast_to(rot, shape).reshape(-1)
    out = [_three_point_affine(c, float(s), float(r), out_size, inv) for c, s, r in zip(cs, ss, rs)]
    return np.stack(out).reshape(shape + (2, 3)) if out else np.empty(shape + (2, 3))


def _three_point_affine(center: np.ndarray, scale: float, rot: float, out_size,
                        inv: bool) -> np.ndarray:
    """One 2x3 matrix by the released three-point construction (§6.3 item 5, "Numerically").

    ``src_w = 200 * (scale * crop_w / crop_h)``; ``src_dir`` = ``[0, -src_w/2]`` rotated by
    θ = ``pi * rot / 180`` (x' = x cosθ - y sinθ, y' = x sinθ + y cosθ), in float64;
    ``dst_dir = [0, -crop_w/2]``. Into float32 (3, 2) arrays: ``src = [c, c + src_dir, .]``,
    ``dst = [crop/2, crop/2 + dst_dir, .]``; the third point of each, in float32, is the second
    point plus the vector from the second to the first turned by 90 degrees,
    ``p2 = p1 + [-(p0 - p1)_y, (p0 - p1)_x]``. Then ``cv2.getAffineTransform(src, dst)``
    (``(dst, src)`` for ``inv``), a float64 matrix.
    """
    crop_w, crop_h = float(out_size[0]), float(out_size[1])
    src_w = 200.0 * (scale * crop_w / crop_h)
    theta = np.pi * rot / 180.0
    sn, cs = np.sin(theta), np.cos(theta)
    x, y = 0.0, -0.5 * src_w
    src_dir = np.array([x * cs - y * sn, x * sn + y * cs])
    half = np.array([crop_w * 0.5, crop_h * 0.5])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0], dst[1] = half, half + np.array([0.0, -0.5 * crop_w])
    for p in (src, dst):                 # float32 arithmetic, as released
        d = p[0] - p[1]
        p[2, 0] = p[1, 0] - d[1]         # (= p1_x + (-d_y), exactly)
        p[2, 1] = p[1, 1] + d[0]
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def transform_points(points, trans) -> np.ndarray:
    """Apply 2x3 affine matrices to 2D points.

    Args:
        points: (..., N, 2) (extra trailing columns, e.g. a confidence, are not accepted here).
        trans: (..., 2, 3).
    Returns:
        (..., N, 2) transformed points, dtype of the promotion of both inputs.
    """
    points = np.asarray(points)
    trans = np.asarray(trans)
    return points @ np.swapaxes(trans[..., :2], -1, -2) + trans[..., None, :, 2]


# ---------------------------------------------------------------------------------------------
# Bounding box and CLIFF bbox input
def bbox_from_keypoints(keypoints, aspect_ratio: float = constants.CROP_ASPECT_RATIO,
                        factor: float = constants.BBOX_SCALE_FACTOR):
    """Tight box of the visible keypoints, turned into (center, scale) by the 4:3 rule (§6.3 2).

    ``center`` = box centre, ``scale = max(w * aspect_ratio, h) / 200 * factor``; visible means
    confidence > 0.

    Args:
        keypoints: (..., J, 3) pixel x, y and confidence.
    Returns:
        center (..., 2) float64, scale (...) float64, n_visible (...) int. Where no keypoint
        is visible, center and scale are NaN.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    vis = kp[..., 2] > 0
    n_vis = vis.sum(-1)
    xy = kp[..., :2]
    big = np.where(vis[..., None], xy, np.inf)
    small = np.where(vis[..., None], xy, -np.inf)
    lo, hi = big.min(-2), small.max(-2)
    with np.errstate(invalid="ignore"):
        center = (lo + hi) / 2
        wh = hi - lo
        scale = np.maximum(wh[..., 0] * aspect_ratio, wh[..., 1]) / 200.0 * factor
    none = n_vis == 0
    center = np.where(none[..., None], np.nan, center)
    scale = np.where(none, np.nan, scale)
    return center, scale, n_vis


def diagonal_focal(img_h, img_w) -> np.ndarray:
    """CLIFF's focal-length guess, the image diagonal ``sqrt(W^2 + H^2)``. Shapes broadcast."""
    return np.sqrt(np.asarray(img_w, dtype=np.float64) ** 2
                   + np.asarray(img_h, dtype=np.float64) ** 2)


def bbox_info(center, scale, img_h, img_w, focal) -> np.ndarray:
    """CLIFF bbox input (§4.2).

    ``[(cx - W/2)/f * 2.8, (cy - H/2)/f * 2.8, (s*200 - 0.24 f) / (0.06 f)]``.

    Args:
        center: (..., 2); scale: (...); img_h, img_w, focal: (...) full-image size and focal.
    Returns:
        (..., 3) float64.
    """
    center = np.asarray(center, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    f = np.asarray(focal, dtype=np.float64)
    w = np.asarray(img_w, dtype=np.float64)
    h = np.asarray(img_h, dtype=np.float64)
    b = constants.BBOX_INFO_SCALE
    return np.stack(np.broadcast_arrays((center[..., 0] - w / 2) / f * b,
                                        (center[..., 1] - h / 2) / f * b,
                                        (s * 200 - 0.24 * f) / (0.06 * f)), -1)


# ---------------------------------------------------------------------------------------------
# Flips (each permutation is a gather new[i] = old[perm[i]], applied before the negation)
def flip_keypoints_2d(keypoints, img_w, perm=constants.J49_FLIP_PERM) -> np.ndarray:
    """Mirror 2D keypoints: permute left/right, then ``x -> W - 1 - x``.

    Args:
        keypoints: (..., J, C>=2); img_w: image width W; perm: length-J gather.
    Returns:
        (..., J, C) new array; other columns (confidence) travel with the permutation.
    """
    out = np.array(np.asarray(keypoints)[..., perm, :], copy=True)
    out[..., 0] = img_w - 1 - out[..., 0]
    return out


def flip_joints_3d(joints, perm=constants.J24_FLIP_PERM) -> np.ndarray:
    """Mirror 3D joints: permute left/right, then ``x -> -x``. (..., J, C>=3) -> same."""
    out = np.array(np.asarray(joints)[..., perm, :], copy=True)
    out[..., 0] = -out[..., 0]
    return out


def flip_smpl_pose(pose) -> np.ndarray:
    """Mirror SMPL axis-angle pose: permute the 24 joints, negate the y and z components.

    Args: pose (..., 72). Returns: (..., 72) new array.
    """
    out = np.array(np.asarray(pose)[..., constants.SMPL_POSE_FLIP_PERM], copy=True)
    out[..., 1::3] *= -1
    out[..., 2::3] *= -1
    return out


# ---------------------------------------------------------------------------------------------
# In-plane rotation of 3D quantities (the same rotation as the 2D crop map)
def inplane_rotation_matrix(rot) -> np.ndarray:
    """Rotation by -rot about the camera z axis, ``[[cos(-θ), -sin(-θ), 0], [sin(-θ), cos(-θ), 0],
    [0, 0, 1]]``. rot: (...) degrees. Returns (..., 3, 3) float64."""
    t = -np.deg2rad(np.asarray(rot, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    m = np.zeros(t.shape + (3, 3))
    m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1] = c, -s, s, c
    m[..., 2, 2] = 1.0
    return m


def rotate_points_inplane(points, rot) -> np.ndarray:
    """Left-multiply the xyz of 3D points by :func:`inplane_rotation_matrix`.

    Args: points (..., J, C>=3); rot (...) degrees. Returns (..., J, C) new array (extra
    columns such as a confidence are kept).
    """
    points = np.asarray(points)
    out = np.array(points, copy=True)
    r = inplane_rotation_matrix(rot).astype(points.dtype, copy=False)
    out[..., :3] = points[..., :3] @ np.swapaxes(r, -1, -2)
    return out


def _aa_to_rotmat(aa: np.ndarray) -> np.ndarray:
    """Rodrigues formula. (..., 3) -> (..., 3, 3)."""
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    a = angle[..., None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _rotmat_to_aa(r: np.ndarray) -> np.ndarray:
    """Inverse Rodrigues via quaternions (stable near 0 and pi). (..., 3, 3) -> (..., 3)."""
    from scipy.spatial.transform import Rotation
    flat = r.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(r.shape[:-2] + (3,))


def rotate_root_orientation(pose, rot) -> np.ndarray:
    """Rotate the SMPL global orientation (entries 0:3) in-plane by -rot (§6.3 item 5).

    ``R_root' = inplane_rotation_matrix(rot) @ R_root``.
    Args: pose (..., 72) axis-angle; rot (...) degrees. Returns (..., 72) new array.
    """
    pose = np.asarray(pose)
    out = np.array(pose, copy=True)
    r = inplane_rotation_matrix(rot) @ _aa_to_rotmat(pose[..., :3].astype(np.float64))
    out[..., :3] = _rotmat_to_aa(r)
    return out


# ---------------------------------------------------------------------------------------------
# Pixels
_MEAN = np.asarray(constants.IMG_NORM_MEAN, dtype=np.float32)
_STD = np.asarray(constants.IMG_NORM_STD, dtype=np.float32)


def normalize_image(img, pn=None) -> np.ndarray:
    """Pixel noise, then ``/255``, ImageNet normalisation and HWC -> CHW (§6.3 item 6).

    The noise multiplies channel c by ``pn[c]``, clips to [0, 255] and truncates to uint8 (the
    released code writes the product back into the uint8 image). Every step maps one uint8
    value of one channel to one float, so the whole chain is computed as a 256-entry lookup
    table per channel (exactly the same numbers, ~5x faster than the float arithmetic).

    Args:
        img: (H, W, 3) uint8 RGB.
        pn: (3,) per-channel multipliers, or None for none.
    Returns:
        (3, H, W) float32, ``(trunc(clip(img * pn, 0, 255))/255 - mean) / std``.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize_image expects an (H, W, 3) uint8 image, got "
                         f"{img.dtype}{img.shape}")
    v = np.arange(256, dtype=np.float32)[None, :].repeat(3, 0)            # (3, 256)
    if pn is not None:
        v = np.trunc(np.clip(v * np.asarray(pn, dtype=np.float32)[:, None], 0.0, 255.0))
    lut = (v * (1.0 / (255.0 * _STD))[:, None] - (_MEAN / _STD)[:, None]).astype(np.float32)
    out = cv2.LUT(np.ascontiguousarray(img), np.ascontiguousarray(lut.T[None]))  # (H, W, 3)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def photometric_augment(img, rng=np.random) -> np.ndarray:
    """Our stand-in for the released ``--ALB`` albumentations pipeline (not installed here).

    A small BEDLAM-style set of photometric changes, each applied with its own probability, in
    this order: brightness/contrast (p 0.5: ``x*U(0.8,1.2) + U(-0.1,0.1)*255``), hue/saturation
    (p 0.3: hue shift U(-10,10) of OpenCV's 0..180 scale, saturation x U(0.8,1.2)), blur (p 0.2:
    Gaussian, kernel 3, 5 or 7), Gaussian noise (p 0.2: σ U(2,10)), to-grey (p 0.05), JPEG
    re-compression (p 0.2: quality U(40,95)). Geometry is never touched. Unlike the released
    code (decisions D8) the channel order stays RGB.

    Args:
        img: (H, W, 3) uint8 RGB.
        rng: a ``numpy.random.RandomState``-like object (default: the global numpy state).
    Returns:
        (H, W, 3) uint8 RGB (a new array, or ``img`` itself if nothing was drawn).
    """
    out = img
    if rng.uniform() < 0.5:
        alpha, beta = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1) * 255.0
        out = np.clip(out.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.3:
        dh, ds = rng.uniform(-10, 10), rng.uniform(0.8, 1.2)
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + dh, 180.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * ds, 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.uniform() < 0.2:
        k = int(rng.choice([3, 5, 7]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    if rng.uniform() < 0.2:
        sigma = rng.uniform(2, 10)
        noise = rng.standard_normal(out.shape).astype(np.float32) * sigma
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.05:
        grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if rng.uniform() < 0.2:
        q = int(rng.uniform(40, 95))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)
