"""The crop is built as released (upstream-behaviour.md §6.3 items 2 and 5; issue #12 point 1).

Independent facts used: the three-point construction of §6.3 item 5 ("Numerically") written out
here step by step (float32 correspondences, then ``cv2.getAffineTransform``); the closed-form
similarity of §6.3 item 5 evaluated in float64, which agrees with it to ~1e-5 px without being
bit-identical; the bbox rule of §6.3 item 2 written out on the npz's float64 keypoints; a
hand-made image cropped with ``cv2.warpAffine`` by hand.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest

from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from datasets import BaseDataset
from utils import imutils

# (center, scale, rot in degrees, (crop_w, crop_h)); centres not representable in float32
CASES = [
    ((41.37, 29.81), 0.3172, 0.0, (192, 256)),
    ((41.37, 29.81), 0.3172, 23.5, (192, 256)),
    ((55.123456789, 20.987654321), 0.41234567, -41.0, (224, 224)),
    ((10.3, 60.7), 0.2, 90.0, (48, 64)),
    ((1012.37, 733.91), 3.1, 17.0, (224, 224)),
    ((406.91, 524.627), 6.0528, 0.0, (224, 224)),  # float32 third point != rounded float64 one
]


def released_matrix(center, scale, rot, crop_w, crop_h, inv=False):
    """§6.3 item 5, "Numerically", one step per sentence of the spec."""
    scale_xy = [scale * crop_w / crop_h, scale]
    src_w = 200 * scale_xy[0]
    theta = np.pi * rot / 180
    vx, vy = 0.0, -0.5 * src_w                        # [0, -0.5 src_w] rotated by theta
    src_dir = np.array([vx * np.cos(theta) - vy * np.sin(theta),
                        vx * np.sin(theta) + vy * np.cos(theta)])
    dst_dir = np.array([0.0, -0.5 * crop_w])
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = np.asarray(center, dtype=np.float64)
    src[1, :] = np.asarray(center, dtype=np.float64) + src_dir
    dst[0, :] = [crop_w / 2, crop_h / 2]
    dst[1, :] = np.array([crop_w / 2, crop_h / 2]) + dst_dir
    for p in (src, dst):                              # third point, in the arrays' float32
        diff = p[0, :] - p[1, :]
        p[2, 0] = p[1, 0] - diff[1]
        p[2, 1] = p[1, 1] + diff[0]
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def closed_form(center, scale, rot, crop_w, crop_h, inv=False):
    """§6.3 item 5's formula x' = k R(θ)(x - c) + crop/2, evaluated in float64."""
    k = crop_h / (200.0 * scale)
    t = np.deg2rad(rot)
    r = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    c, half = np.asarray(center, np.float64), np.array([crop_w / 2, crop_h / 2])
    if inv:                                           # x = R^T (x' - crop/2) / k + c
        a = r.T / k
        return np.concatenate([a, (c - a @ half)[:, None]], 1)
    return np.concatenate([k * r, (half - k * r @ c)[:, None]], 1)


@pytest.mark.parametrize("case", CASES)
def test_matrix_is_the_three_point_construction(case):
    c, s, rot, (cw, ch) = case
    for inv in (False, True):
        got = imutils.get_affine_transform(c, s, rot, (cw, ch), inv=inv)
        assert got.dtype == np.float64 and got.shape == (2, 3)
        np.testing.assert_array_equal(got, released_matrix(c, s, rot, cw, ch, inv))


def test_batched_matrices_are_the_per_sample_ones():
    centers = np.array([c for c, _, _, _ in CASES[:3]])
    scales = np.array([s for _, s, _, _ in CASES[:3]])
    rots = np.array([r for _, _, r, _ in CASES[:3]])
    got = imutils.get_affine_transform(centers, scales, rots, (192, 256), inv=True)
    assert got.shape == (3, 2, 3)
    for i in range(3):
        np.testing.assert_array_equal(
            got[i], released_matrix(centers[i], scales[i], rots[i], 192, 256, inv=True))
    # broadcasting: one centre and scale, two angles
    got = imutils.get_affine_transform(centers[0], scales[0], [0.0, 30.0], (192, 256))
    np.testing.assert_array_equal(got[1], released_matrix(centers[0], scales[0], 30.0, 192, 256))


def test_closed_form_similarity_agrees_to_1e5_px_but_is_not_bit_identical():
    rng = np.random.default_rng(0)
    differs = 0
    for c, s, rot, (cw, ch) in CASES:
        m = imutils.get_affine_transform(c, s, rot, (cw, ch))
        mi = imutils.get_affine_transform(c, s, rot, (cw, ch), inv=True)
        cf, cfi = closed_form(c, s, rot, cw, ch), closed_form(c, s, rot, cw, ch, inv=True)
        crop_pts = rng.uniform(0, 1, (200, 2)) * [cw, ch]            # anywhere in the crop
        full_pts = crop_pts @ cfi[:, :2].T + cfi[:, 2]
        err = np.abs(full_pts @ m[:, :2].T + m[:, 2] - crop_pts).max()     # crop px
        err_inv = np.abs(crop_pts @ mi[:, :2].T + mi[:, 2] - full_pts).max()  # full px
        assert err < 3e-5, (c, s, rot, err)
        assert err_inv < 3e-5 * 200 * s / ch * 4, (c, s, rot, err_inv)
        differs += int(not np.array_equal(m, cf))
    assert differs >= len(CASES) - 1  # the float32 correspondences do round differently


# ---------------------------------------------------------------------------------------------
# Through the dataset: a hand-made image and npz with a known bbox
IMG_W, IMG_H = 123, 97


def _world(root, name):
    """One hand-made image and a float64 npz whose visible GT keypoints define the bbox."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (IMG_H, IMG_W, 3), dtype=np.uint8)     # noise: every pixel counts
    folder = root / "datasets" / DATASET_FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "im.png"), img)
    part = np.zeros((1, 24, 3))
    part[0, :, :2] = rng.uniform([30.0, 20.0], [90.0, 80.0], (24, 2)) + 1e-7 / 3  # not float32
    part[0, :, 2] = 1.0
    part[0, [3, 17], :2] = [[500.123, -300.7], [-40.1, 999.9]]        # invisible: outside
    part[0, [3, 17], 2] = 0.0
    op = np.concatenate([rng.uniform(25, 95, (1, 25, 2)) + 1e-7 / 7, np.ones((1, 25, 1))], -1)
    npz = root / "data" / "datasets" / DATASET_FILES["test"][name]
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, imgname=np.array(["im.png"]), part=part, openpose=op,
             center=np.zeros((1, 2)), scale=np.ones(1), gender=np.array(["f"]))
    return img, part[0], op[0]


def _bbox(part):
    """§6.3 item 2 on float64: tight box of the visible joints, 4:3 rule, x1.2."""
    vis = part[:, 2] > 0
    lo, hi = part[vis, :2].min(0), part[vis, :2].max(0)
    w, h = hi - lo
    return (lo + hi) / 2, max(w * (256 / 192), h) / 200 * 1.2


def _dataset(root, name, bbox_type, is_train):
    opts = argparse.Namespace(bbox_type=bbox_type, rot_factor=30.0, noise_factor=0.4,
                              scale_factor=0.25, ignore_3d=False, syn_occ=False, ALB=False,
                              skip_bad_images=False)
    return BaseDataset(opts, name, is_train, paths=DataPaths(root))


@pytest.mark.parametrize("name,bbox_type,aug", [
    ("h36m-p2", "rect", (0, 0.0, 1.0)),
    ("h36m-p2", "square", (0, 23.5, 1.1)),
    ("3dpw", "rect", (0, -37.0, 0.8)),
    ("3dpw", "square", (1, 0.0, 1.0)),
])
def test_dataset_crop_is_the_hand_made_crop(tmp_path, name, bbox_type, aug):
    img, part, op = _world(tmp_path, name)
    flip, rot, sc = aug
    ds = _dataset(tmp_path, name, bbox_type, is_train=False)
    ds.augm_params = lambda: (flip, None, rot, sc)     # a training draw, fixed
    it = ds[0]
    cw, ch = (192, 256) if bbox_type == "rect" else (224, 224)
    kp = np.concatenate([op, part], 0)
    if name == "3dpw":                                # half size: image and keypoints
        img = cv2.resize(img, (IMG_W // 2, IMG_H // 2))
        kp[:, :2] /= 2
    center, scale = _bbox(kp[25:])
    scale *= sc
    if flip:
        img = cv2.flip(img, 1)
        center[0] = img.shape[1] - 1 - center[0]
    full = released_matrix(center, scale, rot, cw, ch)
    crop = cv2.warpAffine(img, full, (cw, ch), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    want_img = imutils.normalize_image(np.ascontiguousarray(crop[..., ::-1]))
    np.testing.assert_array_equal(it["img"].numpy(), want_img)
    np.testing.assert_array_equal(it["full_trans"].numpy(), full.astype(np.float32))
    np.testing.assert_array_equal(it["crop_trans"].numpy(),
                                  released_matrix(center, scale, 0.0, cw, ch).astype(np.float32))
    np.testing.assert_array_equal(it["inv_trans"].numpy(), released_matrix(
        center, scale, 0.0, cw, ch, inv=True).astype(np.float32))
    if not flip:  # (the flip's joint permutation is tested in test_datasets.py)
        xy = (full[:, :2] @ kp[:, :2].T).T + full[:, 2]                # float64, as released
        np.testing.assert_array_equal(it["keypoints"].numpy()[:, :2], xy.astype(np.float32))


def test_keypoints_stay_float64_through_the_bbox(tmp_path):
    _, part, op = _world(tmp_path, "h36m-p2")
    ds = _dataset(tmp_path, "h36m-p2", "rect", is_train=False)
    assert ds.part.dtype == np.float64 and ds.openpose.dtype == np.float64
    center, scale = _bbox(part)
    np.testing.assert_array_equal(ds.center[0], center)
    assert float(ds.scale[0]) == scale
    # the float32 cast this replaces gives another bbox (so the check above can fail)
    c32, s32 = _bbox(part.astype(np.float32).astype(np.float64))
    assert not (np.array_equal(c32, center) and s32 == scale)
    np.testing.assert_array_equal(ds.part[0], part)
    np.testing.assert_array_equal(ds.openpose[0], op)
