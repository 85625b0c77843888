"""The data pipeline (datasets/, utils/imutils.py; upstream-behaviour.md §6, §4.2, §2.7).

Independent facts used: pinhole projection of the GT 3D joints gives the GT 2D keypoints of the
world (the world is built that way), and the crop is a similarity map of the full image; a mirror
conjugates a rotation as M R M (scipy); mirroring twice is the identity; the CLIFF bbox_info
formula written out by hand; the mixture frequencies converge to the partition (binomial
error); pixels far from any pasted occluder's alpha cannot change; cv2.resize halves a 3DPW
image to (W//2, H//2).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import DataLoader

import constants
from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from datasets import BaseDataset, DatasetError, MixedDataset, SyntheticOcclusion
from datasets.mixed_dataset import mixture_partition
from utils import imutils

IMG_W, IMG_H = 160, 120


def _opts(**kw):
    base = dict(bbox_type="rect", rot_factor=30.0, noise_factor=0.4, scale_factor=0.25,
                ignore_3d=False, syn_occ=False, ALB=False, skip_bad_images=False)
    base.update(kw)
    return argparse.Namespace(**base)


# ---------------------------------------------------------------------------------------------
# A tiny SPIN-format world of our own (bad-data cases, and a fallback for `synthetic_root`)
def _project(S, f, w, h):
    """(..., 24, 3+) camera-frame joints -> (..., 24, 2) pixels, principal point (W/2, H/2)."""
    return f[..., None, None] * S[..., :2] / S[..., 2:3] + np.array([w / 2, h / 2])


def make_npz_and_images(root: Path, name: str, is_train: bool, n: int = 5, size=(IMG_W, IMG_H),
                        seed: int = 0, focal: bool = True, drop=(), extra=None) -> Path:
    """Write ``root/data/datasets/<file>.npz`` and the images; returns the npz path."""
    rng = np.random.default_rng(seed)
    w, h = size
    folder = root / "datasets" / DATASET_FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        rel = f"seq{i % 2}/img_{i:03d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / rel), img)
        names.append(rel)
    f = rng.uniform(0.9, 1.1, n) * 1.5 * w
    root_xyz = np.stack([rng.uniform(-0.3, 0.3, n), rng.uniform(-0.2, 0.2, n),
                         rng.uniform(4.5, 6.0, n)], -1)
    S = root_xyz[:, None] + rng.uniform(-0.5, 0.5, (n, 24, 3)) * [1.0, 1.6, 0.4]
    part = np.concatenate([_project(S, f, w, h), np.ones((n, 24, 1))], -1)
    part[:, [13, 20], 2] = 0  # a few invisible joints
    op = np.concatenate([_project(S, f, w, h)[:, np.arange(25) % 24],
                         np.full((n, 25, 1), 0.5)], -1)
    data = dict(imgname=np.array(names), center=np.zeros((n, 2)), scale=np.ones(n),
                part=part, openpose=op, pose=rng.normal(0, 0.3, (n, 72)),
                shape=rng.normal(0, 1, (n, 10)),
                S=np.concatenate([S, np.ones((n, 24, 1))], -1),
                gender=np.array(["m", "f"] * n)[:n])
    if focal:
        data["focal_length"] = f
    for k in drop:
        data.pop(k, None)
    data.update(extra or {})
    npz = root / "data" / "datasets" / DATASET_FILES["train" if is_train else "test"][name]
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **data)
    return npz


def make_occluders(root: Path, seed: int = 0) -> Path:
    """Three RGBA patches: a solid disc (alpha 255 inside, 0 outside) and two soft squares."""
    rng = np.random.default_rng(seed)
    patches = []
    for size in (60, 90, 40):
        p = np.zeros((size, size, 4), np.uint8)
        p[..., :3] = rng.integers(0, 256, 3)
        yy, xx = np.mgrid[:size, :size]
        inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 2.5) ** 2
        p[..., 3] = np.where(inside, 255, 0)
        patches.append(p)
    arr = np.empty(len(patches), dtype=object)
    arr[:] = patches
    path = root / "data" / "VOC" / "pascal_occluders.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr, allow_pickle=True)
    return path


@pytest.fixture(scope="module")
def world(request, tmp_path_factory) -> Path:
    """The shared synthetic world when tests/conftest.py provides it, else our tiny one."""
    try:
        return Path(request.getfixturevalue("synthetic_root"))
    except pytest.FixtureLookupError:
        root = tmp_path_factory.mktemp("fake_world")
        for k, (name, tr) in enumerate([("h36m", True), ("mpi-inf-3dhp", True), ("coco", True),
                                        ("mpii", True), ("3dpw", False), ("h36m-p2", False)]):
            make_npz_and_images(root, name, tr, n=4, seed=k,
                                size=(2 * IMG_W, 2 * IMG_H) if name == "3dpw" else
                                (IMG_W, IMG_H))
        make_occluders(root)
        return root


def _ds(root, name="h36m", is_train=True, **kw) -> BaseDataset:
    return BaseDataset(_opts(**kw), name, is_train, paths=DataPaths(Path(root)))


def _fixed(ds, flip=0, rot=0.0, sc=1.0, pn=None):
    ds.augm_params = lambda: (flip, pn, rot, sc)
    return ds


# ---------------------------------------------------------------------------------------------
# Geometry
def test_affine_transform_geometry():
    c, s, (cw, ch) = np.array([70.0, 40.0]), 0.8, (192, 256)
    m = imutils.get_affine_transform(c, s, 0.0, (cw, ch))
    # bbox centre -> crop centre; the box top (200s/2 above) -> top edge; width 200s*cw/ch
    pts = np.array([c, c - [0, 100 * s], c + [100 * s * cw / ch, 0]])
    np.testing.assert_allclose(imutils.transform_points(pts, m),
                               [[cw / 2, ch / 2], [cw / 2, 0], [cw, ch / 2]], atol=1e-9)
    # positive rot turns content counter-clockwise on screen: a point right of the centre goes up
    m90 = imutils.get_affine_transform(c, s, 90.0, (cw, ch))
    k = ch / (200 * s)
    np.testing.assert_allclose(imutils.transform_points(c[None] + [10, 0], m90),
                               [[cw / 2, ch / 2 - 10 * k]], atol=1e-9)
    # the same as cv2's 3-point construction from those correspondences
    src = np.float32([c, c + [10, 0], c + [0, 10]])
    dst = imutils.transform_points(src.astype(np.float64), m90).astype(np.float32)
    np.testing.assert_allclose(cv2.getAffineTransform(src, dst), m90, atol=1e-4)
    # inv is the inverse; batching broadcasts
    inv = imutils.get_affine_transform(c, s, 0.0, (cw, ch), inv=True)
    q = np.random.default_rng(0).uniform(0, 200, (7, 2))
    np.testing.assert_allclose(imutils.transform_points(imutils.transform_points(q, m), inv), q,
                               atol=1e-9)
    mb = imutils.get_affine_transform(np.stack([c, c]), np.array([s, 2 * s]), [0.0, 30.0],
                                      (cw, ch))
    assert mb.shape == (2, 2, 3)
    np.testing.assert_allclose(mb[0], m)


def test_augmentation_draw_order():
    ds_opts = _opts(rot_factor=30.0, noise_factor=0.4, scale_factor=0.25)
    fake = BaseDataset.__new__(BaseDataset)
    fake.is_train, fake.rot_factor = True, ds_opts.rot_factor
    fake.noise_factor, fake.scale_factor = ds_opts.noise_factor, ds_opts.scale_factor
    for seed in range(20):
        np.random.seed(seed)
        flip, pn, rot, sc = BaseDataset.augm_params(fake)
        r = np.random.RandomState(seed)
        e_flip = r.uniform() <= 0.5
        e_pn = r.uniform(0.6, 1.4, 3)
        e_rot = float(np.clip(r.randn() * 30, -60, 60))
        e_sc = float(np.clip(r.randn() * 0.25 + 1, 0.75, 1.25))
        if r.uniform() <= 0.6:
            e_rot = 0.0
        assert (flip, rot, sc) == (int(e_flip), e_rot, e_sc)
        np.testing.assert_array_equal(pn, e_pn)


# ---------------------------------------------------------------------------------------------
# Samples of the world
def test_keypoints_are_projected_3d_joints_mapped_to_the_crop(world):
    for name, is_train in (("h36m", True), ("3dpw", False), ("h36m-p2", False)):
        ds = _fixed(_ds(world, name, is_train))
        for i in range(min(len(ds), 3)):
            it = ds[i]
            S = it["pose_3d"].numpy().astype(np.float64)
            f = float(it["focal_length"])
            w, h = float(it["img_w"]), float(it["img_h"])
            proj = f * S[:, :2] / S[:, 2:3] + [w / 2, h / 2]
            crop = imutils.transform_points(proj, it["crop_trans"].numpy().astype(np.float64))
            kp = it["keypoints"].numpy()
            vis = kp[25:, 2] > 0
            assert vis.sum() >= 10
            err = np.abs(crop[vis] - kp[25:][vis, :2]).max()
            assert err < 0.1, f"{name}[{i}]: 2D keypoints off their 3D projection by {err:.2f} px"


def test_crop_scale_shrinks_the_crop_and_its_keypoints(world):
    """--crop_scale 0.25: a 64x48 crop of the same box; the keypoints (crop px) scale alike."""
    full, small = _fixed(_ds(world, "3dpw", False)), _fixed(_ds(world, "3dpw", False,
                                                                  crop_scale=0.25))
    a, b = full[0], small[0]
    assert tuple(a["img"].shape) == (3, 256, 192) and tuple(b["img"].shape) == (3, 64, 48)
    vis = a["keypoints"][:, 2] > 0
    torch.testing.assert_close(b["keypoints"][vis, :2], 0.25 * a["keypoints"][vis, :2],
                               rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b["bbox_info"], a["bbox_info"])
    with pytest.raises(ValueError, match="crop_scale"):
        _ds(world, "3dpw", False, crop_scale=0.01)


def test_rotation_turns_3d_joints_like_the_2d_crop(world):
    """The in-plane rotation of S (about the camera axis) turns the projected joints by the same
    angle as the crop map turns the 2D keypoints (directions between joints agree)."""
    ds = _ds(world, "h36m", True)
    base = _fixed(ds, rot=0.0)[0]
    it = _fixed(ds, rot=25.0)[0]
    S = it["pose_3d"].numpy().astype(np.float64)
    f, w, h = float(it["focal_length"]), float(it["img_w"]), float(it["img_h"])
    proj = f * S[:, :2] / S[:, 2:3] + [w / 2, h / 2]
    kp = it["keypoints"].numpy().astype(np.float64)
    k = ds.crop_h / (200 * float(it["scale"]))
    vis = np.flatnonzero(kp[25:, 2] > 0)
    d_crop = (kp[25 + vis, :2] - kp[25 + vis[0], :2]) / k
    d_proj = proj[vis] - proj[vis[0]]
    np.testing.assert_allclose(d_crop, d_proj, atol=1e-3 * np.abs(d_proj).max())
    # the root orientation turned by the same -rot about z (scipy as the reference)
    rz = Rotation.from_euler("z", -25.0, degrees=True)
    want = (rz * Rotation.from_rotvec(base["pose"][:3].double().numpy())).as_matrix()
    got = Rotation.from_rotvec(it["pose"][:3].double().numpy()).as_matrix()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(it["pose"][3:], base["pose"][3:])


def test_flip_twice_is_identity_and_mirror_is_consistent(world):
    ds = _ds(world, "h36m", True)
    a = _fixed(ds, flip=0)[1]
    b = _fixed(ds, flip=1)[1]
    w = float(a["img_w"])
    assert int(b["is_flipped"]) == 1 and float(b["center"][0]) == pytest.approx(
        w - 1 - float(a["center"][0]))
    # flipping the flipped sample again gives back the original
    np.testing.assert_allclose(imutils.flip_keypoints_2d(b["keypoints_full"].numpy(), w),
                               a["keypoints_full"].numpy(), atol=1e-4)
    np.testing.assert_allclose(imutils.flip_joints_3d(b["pose_3d"].numpy()),
                               a["pose_3d"].numpy(), atol=1e-6)
    np.testing.assert_allclose(imutils.flip_smpl_pose(b["pose"].numpy()), a["pose"].numpy(),
                               atol=1e-6)
    # the mirror of a rotation R is M R M, M = diag(-1, 1, 1), joint by joint with the L/R swap
    mirror = np.diag([-1.0, 1.0, 1.0])
    ra = Rotation.from_rotvec(a["pose"].double().numpy().reshape(24, 3)).as_matrix()
    rb = Rotation.from_rotvec(b["pose"].double().numpy().reshape(24, 3)).as_matrix()
    np.testing.assert_allclose(rb, mirror @ ra[constants.SMPL_JOINTS_FLIP_PERM] @ mirror,
                               atol=1e-5)
    # the crop of the flipped image is the mirrored crop (one-pixel shift of the mirror axis)
    ia, ib = a["img"].numpy(), b["img"].numpy()[..., ::-1]
    std = np.asarray(constants.IMG_NORM_STD)[:, None, None]
    diff = np.abs(ib[..., :-1] - ia[..., 1:]) * std * 255
    assert np.median(diff) < 1.0 and np.percentile(diff, 99) < 3.0
    # mirrored crop keypoints: x' = crop_w - x (same pixel-centre convention)
    ka, kb = a["keypoints"].numpy(), b["keypoints"].numpy()
    kb_back = imutils.flip_keypoints_2d(kb, ds.crop_w + 1)
    np.testing.assert_allclose(kb_back[:, :2], ka[:, :2], atol=1e-3)


def test_bbox_and_bbox_info_by_hand(world):
    ds = _ds(world, "h36m", True, bbox_type="square")
    np.random.seed(3)
    for i in range(len(ds)):
        it = ds[i]
        part = it["keypoints_full"].numpy()[25:].astype(np.float64)
        if int(it["is_flipped"]):
            part = imutils.flip_keypoints_2d(part, float(it["img_w"]), constants.J24_FLIP_PERM)
        vis = part[:, 2] > 0
        lo, hi = part[vis, :2].min(0), part[vis, :2].max(0)
        w_, h_ = hi - lo
        scale0 = max(w_ * 4 / 3, h_) / 200 * 1.2
        assert float(it["scale"]) == pytest.approx(scale0 * float(it["scale_factor"]), rel=1e-5)
        cx, cy = (lo + hi) / 2
        if int(it["is_flipped"]):
            cx = float(it["img_w"]) - 1 - cx
        np.testing.assert_allclose(it["center"].numpy(), [cx, cy], rtol=1e-5)
        W, H, f = float(it["img_w"]), float(it["img_h"]), float(it["focal_length"])
        s = float(it["scale"])
        want = [(cx - W / 2) / f * 2.8, (cy - H / 2) / f * 2.8, (s * 200 - 0.24 * f) / (0.06 * f)]
        np.testing.assert_allclose(it["bbox_info"].numpy(), want, rtol=1e-4, atol=1e-5)
        assert it["img"].shape == (3, 224, 224)


def test_focal_defaults_to_image_diagonal(tmp_path):
    make_npz_and_images(tmp_path, "coco", False, n=2, focal=False)
    it = _ds(tmp_path, "coco", False)[0]
    assert float(it["focal_length"]) == pytest.approx(math.hypot(IMG_W, IMG_H), rel=1e-6)


def test_3dpw_half_size(tmp_path):
    npz = make_npz_and_images(tmp_path, "3dpw", False, n=2, size=(201, 151))
    raw = np.load(npz)
    ds = _fixed(_ds(tmp_path, "3dpw", False))
    it = ds[1]
    assert (float(it["img_h"]), float(it["img_w"])) == (75.0, 100.0)
    np.testing.assert_allclose(it["orig_shape"].numpy(), [75, 100])
    np.testing.assert_allclose(it["keypoints_full"].numpy()[25:, :2], raw["part"][1, :, :2] / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(it["keypoints_full"].numpy()[25:, 2], raw["part"][1, :, 2])
    assert float(it["focal_length"]) == pytest.approx(raw["focal_length"][1] / 2, rel=1e-6)
    # the crop samples the half-size image: compare with cropping cv2.resize by hand
    full = cv2.cvtColor(cv2.imread(str(tmp_path / "datasets/pw3d" / str(raw["imgname"][1]))),
                        cv2.COLOR_BGR2RGB)
    half = cv2.resize(full, (100, 75))
    crop = cv2.warpAffine(half, it["full_trans"].numpy().astype(np.float64), (192, 256))
    want = imutils.normalize_image(crop)  # (float32 matrix here: at most 1 grey level apart)
    np.testing.assert_allclose(it["img"].numpy(), want, atol=1.01 / 255 / 0.224)
    assert np.mean(np.abs(it["img"].numpy() - want) > 1e-4) < 1e-3
    # non-3DPW datasets keep the full size
    make_npz_and_images(tmp_path, "h36m-p2", False, n=1, size=(201, 151))
    assert float(_ds(tmp_path, "h36m-p2", False)[0]["img_w"]) == 201.0


def test_sample_keys_and_collate(world):
    ds = _ds(world, "mpi-inf-3dhp", True, syn_occ=True, ALB=True)
    np.random.seed(0)
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    n = 3
    shapes = {"img": (n, 3, 256, 192), "keypoints": (n, 49, 3), "keypoints_full": (n, 49, 3),
              "pose": (n, 72), "betas": (n, 10), "pose_3d": (n, 24, 4), "has_smpl": (n,),
              "has_pose_3d": (n,), "scale": (n,), "center": (n, 2), "orig_shape": (n, 2),
              "is_flipped": (n,), "rot_angle": (n,), "gender": (n,), "sample_index": (n,),
              "img_h": (n,), "img_w": (n,), "focal_length": (n,), "bbox_info": (n, 3),
              "full_trans": (n, 2, 3), "crop_trans": (n, 2, 3), "inv_trans": (n, 2, 3),
              "scale_factor": (n,), "n_skipped": (n,)}
    for k, shp in shapes.items():
        assert tuple(batch[k].shape) == shp, k
        if batch[k].is_floating_point():
            assert batch[k].dtype == torch.float32, k
    for k in ("imgname", "dataset_name", "maskname", "partname"):
        assert isinstance(batch[k], list) and len(batch[k]) == n
    assert all(Path(p).is_file() for p in batch["imgname"])
    assert set(batch["gender"].tolist()) <= {-1, 0, 1}
    raw = np.load(ds.npz_file)
    want_gender = ([{"m": 0, "f": 1}[str(g)] for g in raw["gender"][:n]] if "gender" in raw
                   else [-1] * n)
    assert batch["gender"].tolist() == want_gender
    assert torch.isfinite(batch["img"]).all()
    # ignore_3d switches the 3D supervision off
    it = _ds(world, "h36m", True, ignore_3d=True)[0]
    assert float(it["has_smpl"]) == 0 and float(it["has_pose_3d"]) == 0
    h36m = _ds(world, "h36m", True)
    raw = np.load(h36m.npz_file)
    assert [int(h36m[i]["gender"]) for i in range(2)] == [
        0 if str(g) == "m" else 1 for g in raw["gender"][:2]]


def test_occluders_loaded_only_when_used(tmp_path):
    """Eval and non-occluded datasets never need the occluder file (decisions D8)."""
    make_npz_and_images(tmp_path, "coco", True, n=2)
    make_npz_and_images(tmp_path, "h36m", True, n=2)
    make_npz_and_images(tmp_path, "h36m-p2", False, n=2)
    assert _ds(tmp_path, "coco", True, syn_occ=True).occluder is None
    assert _ds(tmp_path, "h36m-p2", False, syn_occ=True).occluder is None
    assert _ds(tmp_path, "h36m", True, syn_occ=False).occluder is None
    with pytest.raises(FileNotFoundError, match="pascal_occluders.npy"):
        _ds(tmp_path, "h36m", True, syn_occ=True)


# ---------------------------------------------------------------------------------------------
# Synthetic occlusion
def test_occlusion_changes_pixels_only_under_occluders(world):
    occ = SyntheticOcclusion(DataPaths(world).occluders())
    patches = occ.occluders
    assert len(patches) >= 1 and all(p.ndim == 3 and p.shape[2] == 4 for p in patches)
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (256, 192, 3)).astype(np.uint8)
    for seed in range(30):
        out, mask = occ(img, rng=np.random.RandomState(seed), return_mask=True)
        changed = np.any(out != img, -1)
        assert not changed[mask == 0].any()               # nothing outside the alpha masks
        full = mask >= 1.0 - 1e-6
        if full.any():                                     # opaque occluder pixels replace
            assert changed[full].mean() > 0.9              # the image (same colour is rare)
    # a single opaque patch at a known place: exactly its rectangle changes
    patch = np.zeros((20, 30, 4), np.uint8)
    patch[..., :3] = (250, 10, 10)
    patch[..., 3] = 255
    one = SyntheticOcclusion("unused.npy")
    one._occluders = (patch,)

    class Draws:  # count 1, index 0, size factor 256/min(W,H) -> 1.0, centre (50, 60)
        def randint(self, lo, hi=None):
            return 1 if hi is not None else 0

        def uniform(self, lo, hi):
            return 256.0 / 192.0 if np.isscalar(lo) else np.array([50.0, 60.0])

    out = one(img, rng=Draws())
    changed = np.any(out != img, -1)
    ys, xs = np.nonzero(changed)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (50, 69, 35, 64)
    assert (out[50:70, 35:65] == (250, 10, 10)).all()


def test_occlusion_count_and_alpha_rounding():
    """1-7 occluders per crop (randint(1, 8)); alpha blending rounds a/255 src + (1 - a/255) dst
    to the nearest integer."""
    patch = np.zeros((4, 4, 4), np.uint8)
    patch[..., :3], patch[..., 3] = 200, 100
    occ = SyntheticOcclusion("unused.npy")
    occ._occluders = (patch,)

    class Counting:   # a real RandomState that counts the occluder-index draws
        def __init__(self, seed):
            self.rs, self.n = np.random.RandomState(seed), 0

        def randint(self, lo, hi=None):
            self.n += hi is None
            return self.rs.randint(lo, hi)

        def uniform(self, lo, hi):
            return self.rs.uniform(lo, hi)
    img = np.full((16, 16, 3), 50, np.uint8)
    counts = set()
    for seed in range(60):
        rng = Counting(seed)
        occ(img, rng=rng)
        counts.add(rng.n)
    assert counts == set(range(1, 8))

    class One:        # one occluder, factor 1, centred at (8, 8)
        def randint(self, lo, hi=None):
            return 1 if hi is not None else 0

        def uniform(self, lo, hi):
            return 1.0 if np.isscalar(lo) else np.array([8.0, 8.0])
    out = occ(np.full((256, 256, 3), 50, np.uint8), rng=One())
    want = int(np.floor(200 * 100 / 255 + 50 * 155 / 255 + 0.5))       # 108.82 -> 109
    assert want == 109 and (out[6:10, 6:10] == want).all() and (out[:6] == 50).all()


def test_occlusion_in_the_pipeline(world):
    """syn_occ only alters training h36m / mpi-inf-3dhp crops, and only where occluders are."""
    ds_plain = _fixed(_ds(world, "h36m", True))
    ds_occ = _fixed(_ds(world, "h36m", True, syn_occ=True))
    calls = []
    real = ds_occ.occluder.__call__

    class Spy:
        def __call__(self, crop):
            out, mask = real(crop, rng=np.random, return_mask=True)
            calls.append(mask)
            return out
    ds_occ.occluder = Spy()
    np.random.seed(1)
    a, b = ds_plain[0]["img"].numpy(), ds_occ[0]["img"].numpy()
    mask = calls[0]
    changed = np.any(np.abs(a - b) > 1e-6, 0)
    assert changed.any() and not changed[mask == 0].any()


def test_bad_occluder_file(tmp_path):
    p = tmp_path / "occ.npy"
    np.save(p, np.zeros((3, 5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"occ\.npy.*occluder 0 has shape \(5, 5, 3\)"):
        SyntheticOcclusion(p).occluders


# ---------------------------------------------------------------------------------------------
# Mixture
class _Tagged(torch.utils.data.Dataset):
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        assert 0 <= i < self.n
        return self.name, i


@pytest.mark.parametrize("use_3dpw", [False, True])
def test_mixture_ratios(use_3dpw):
    lengths = {"h36m": 50, "coco": 30, "mpii": 10, "mpi-inf-3dhp": 70, "3dpw": 20}
    parts = dict(h36m=0.4, coco=0.3 * 30 / 40, mpii=0.3 * 10 / 40, **{"mpi-inf-3dhp": 0.1,
                                                                        "3dpw": 0.2})
    if not use_3dpw:
        parts = {"h36m": 0.5, "coco": 0.3 * 0.75, "mpii": 0.3 * 0.25, "mpi-inf-3dhp": 0.2}
        lengths.pop("3dpw")
    mix = MixedDataset(_opts(), use_3dpw=use_3dpw,
                       datasets={k: _Tagged(k, n) for k, n in lengths.items()})
    assert len(mix) == max(lengths.values())
    assert mix.partition == pytest.approx(parts)
    np.random.seed(0)
    n = 20000
    draws = [mix[j % len(mix)] for j in range(n)]
    for name, p in parts.items():
        got = sum(d[0] == name for d in draws) / n
        assert abs(got - p) < 0.02, (name, got, p)
    j = 63  # the index is taken modulo each dataset's length
    assert {mix[j] for _ in range(200)} == {(k, j % m) for k, m in lengths.items()}


def test_mixture_option_and_partition_helper():
    lengths = {"h36m": 1, "coco": 3, "mpii": 1, "mpi-inf-3dhp": 1, "3dpw": 1}
    mix = MixedDataset(argparse.Namespace(train_3dpw=True),
                       datasets={k: _Tagged(k, n) for k, n in lengths.items()})
    assert mix.names == ["h36m", "coco", "mpii", "mpi-inf-3dhp", "3dpw"]
    assert sum(mixture_partition(constants.MIX_WITH_3DPW, lengths).values()) == pytest.approx(1)
    with pytest.raises(ValueError, match="missing"):
        MixedDataset(_opts(), use_3dpw=True, datasets={"h36m": _Tagged("h36m", 1)})


def test_mixed_dataset_on_the_world(world):
    mix = MixedDataset(_opts(bbox_type="rect"), paths=DataPaths(world), use_3dpw=False)
    np.random.seed(0)
    names = {mix[0]["dataset_name"] for _ in range(12)}
    assert names <= {"h36m", "coco", "mpii", "mpi-inf-3dhp"} and len(names) >= 2
    assert mix.n_skipped == 0


# ---------------------------------------------------------------------------------------------
# Bad data: clear errors naming the file and the index
def _expect(tmp_path, name, match, is_train=True, **kw):
    with pytest.raises(DatasetError, match=match) as e:
        _ds(tmp_path, name, is_train, **kw)
    assert DATASET_FILES["train" if is_train else "test"][name] in str(e.value)
    return e.value


@pytest.mark.parametrize("key", ["imgname", "part"])
def test_missing_required_key(tmp_path, key):
    make_npz_and_images(tmp_path, "h36m", True, drop=[key])
    _expect(tmp_path, "h36m", f"missing required key '{key}'")


def test_pose_without_shape(tmp_path):
    make_npz_and_images(tmp_path, "h36m", True, drop=["shape"])
    _expect(tmp_path, "h36m", "has 'pose' but no 'shape'")


def test_arrays_of_different_lengths(tmp_path):
    make_npz_and_images(tmp_path, "mpii", True, n=5, extra={"S": np.ones((4, 24, 4))})
    _expect(tmp_path, "mpii", r"different lengths.*S.*imgname has 5.*S has 4")


@pytest.mark.parametrize("key,value", [("has_smpl", np.float64(1.0)), ("gender", np.str_("m"))])
def test_scalar_per_sample_key(tmp_path, key, value):
    """A 0-d array where each sample needs an entry (only focal_length may be one value)."""
    make_npz_and_images(tmp_path, "h36m", True, n=3, extra={key: np.array(value)})
    _expect(tmp_path, "h36m", f"'{key}' is a single value .*one entry per sample \\(3")


def test_scalar_focal_length_is_shared(tmp_path):
    make_npz_and_images(tmp_path, "h36m", True, n=3, extra={"focal_length": np.array(700.0)})
    assert (_ds(tmp_path, "h36m", True).focal_length == 700.0).all()


@pytest.mark.parametrize("bad", ["male", "", "x"])
def test_gender_other_than_m_or_f(tmp_path, bad):
    """A test set is scored against the gendered meshes: another value is refused. Training
    does not read gender: the release's reading ('m' -> 0, anything else -> 1) is kept."""
    gender = {"gender": np.array(["m", bad, "f"])}
    make_npz_and_images(tmp_path, "3dpw", False, n=3, extra=gender)
    err = _expect(tmp_path, "3dpw", f"'gender' holds \\['{bad}'\\].*expected 'm' or 'f'",
                  is_train=False)
    assert "sample 1" in str(err)
    make_npz_and_images(tmp_path, "h36m", True, n=3, extra=gender)
    assert _ds(tmp_path, "h36m", True).gender.tolist() == [0, 1, 1]


def _variant(data: dict, variant: str, folder: Path) -> dict:
    """``data`` (a 3-sample file of make_npz_and_images) as other writers store it."""
    names = data["imgname"]
    if variant == "bytes":               # Python 2's str, numpy 'S'
        data.update(imgname=names.astype("S"), gender=data["gender"].astype("S"))
    elif variant == "object":            # lists saved as object arrays (pickled)
        data.update(imgname=names.astype(object),
                    gender=np.array([g.encode() for g in data["gender"]], dtype=object))
    elif variant == "windows":
        data["imgname"] = np.array([n.replace("/", "\\") for n in names])
    elif variant == "latin1":            # a file name that is not UTF-8, stored as bytes
        raw = names[0].encode().replace(b".png", b"\xe9.png")
        os.rename(folder / names[0], folder / os.fsdecode(raw))
        data["imgname"] = np.array([raw] + [n.encode() for n in names[1:]])
    elif variant == "loose":             # scale (N, 1), float32, keys nothing reads
        n = len(names)
        data.update(scale=data["scale"][:, None], center=data["center"].astype(np.float32),
                    pose=data["pose"].astype(np.float32), meta=np.array("v1"),
                    seq_names=np.array(["a", "b"] * n), cam_t=np.full((n, 3), np.nan))
    return data


@pytest.mark.parametrize("variant, compressed", [
    ("bytes", False), ("object", False), ("windows", False), ("latin1", False),
    ("loose", True)])
def test_annotation_files_of_other_writers(tmp_path, variant, compressed):
    """SPIN-format files written over the years by other numpy versions and scripts read as
    the plain file does: every sample names the image file written for it (on disk), with the
    plain file's keypoints, SMPL, 3D joints and gender ('m' 0, 'f' 1, as written)."""
    npz = make_npz_and_images(tmp_path, "3dpw", False, n=3)
    folder = tmp_path / "datasets" / DATASET_FOLDERS["3dpw"]
    ref = _ds(tmp_path, "3dpw", False)
    expect = [ref[i] for i in range(3)]
    with np.load(npz) as z:
        data = _variant({k: z[k] for k in z.files}, variant, folder)
    (np.savez_compressed if compressed else np.savez)(npz, **data)
    ds = _ds(tmp_path, "3dpw", False)
    assert ds.gender.tolist() == [0, 1, 0]
    for i in range(3):
        assert os.path.samefile(ds.image_path(i), next(folder.glob(f"seq{i % 2}/img_{i:03d}*")))
        item = ds[i]
        for key in ("img", "keypoints", "pose", "betas", "pose_3d", "center", "scale"):
            torch.testing.assert_close(item[key], expect[i][key], rtol=0, atol=0)


def test_object_array_of_other_things_is_one_line(tmp_path):
    """An object array that holds neither text nor numbers (here dicts, which the restricted
    unpickler may build) is named, key and content, not passed on."""
    npz = make_npz_and_images(tmp_path, "h36m", True, n=2)
    with np.load(npz) as z:
        data = {k: z[k] for k in z.files}
    data["imgname"] = np.array([{"file": n} for n in data["imgname"]], dtype=object)
    np.savez(npz, **data)
    _expect(tmp_path, "h36m", r"'imgname' is an object array holding dict; expected text or "
                              r"numbers")


def test_imgname_that_starts_with_the_image_folder(tmp_path):
    """imgname is relative to the dataset's image folder: a name that repeats the folder
    ('h36m/...', or 'datasets/h36m/...' from the root) is said to, naming the file it meant."""
    npz = make_npz_and_images(tmp_path, "h36m", True, n=2)
    with np.load(npz) as z:
        data = {k: z[k] for k in z.files}
    for prefix in ("h36m/", "datasets/h36m/"):
        np.savez(npz, **{**data, "imgname": np.char.add(prefix, data["imgname"])})
        with pytest.raises(DatasetError, match=rf"h36m/{prefix}seq0/img_000.png: file does "
                                               r"not exist, but \S*/datasets/h36m/seq0/img_000"
                                               r".png does: .*Remove that prefix"):
            _ds(tmp_path, "h36m", True)[0]


def test_gender_codes(tmp_path):
    """'m' -> 0 (male model), 'f' -> 1; case, spaces and bytes as stored by numpy are read."""
    make_npz_and_images(tmp_path, "h36m", True, n=4,
                        extra={"gender": np.array([b"m", b"F", b" f", b"M"])})
    assert _ds(tmp_path, "h36m", True).gender.tolist() == [0, 1, 1, 0]


def test_bad_shape(tmp_path):
    make_npz_and_images(tmp_path, "coco", True, n=3, extra={"part": np.ones((3, 14, 3))})
    _expect(tmp_path, "coco", r"'part' has shape \(3, 14, 3\), expected \(N, 24, 3\)")


@pytest.mark.parametrize("key,where", [("part", (3, 7, 0)), ("S", (2, 1, 2)),
                                       ("pose", (4, 5)), ("focal_length", (1,))])
def test_nan_or_inf_in_annotations(tmp_path, key, where):
    npz = make_npz_and_images(tmp_path, "h36m", True, n=6)
    data = dict(np.load(npz))
    data[key] = data[key].astype(np.float64)
    data[key][where] = np.inf if key == "S" else np.nan
    np.savez(npz, **data)
    err = _expect(tmp_path, "h36m", f"'{key}' contains NaN or inf")
    assert f"sample {where[0]}" in str(err)


def test_no_visible_keypoint(tmp_path):
    npz = make_npz_and_images(tmp_path, "h36m", True, n=6)
    data = dict(np.load(npz))
    data["part"][4, :, 2] = 0
    np.savez(npz, **data)
    err = _expect(tmp_path, "h36m", "no visible GT 2D keypoint")
    assert "sample 4" in str(err)


def test_unreadable_npz(tmp_path):
    npz = make_npz_and_images(tmp_path, "h36m", True, n=2)
    npz.write_bytes(b"not a zip file")
    _expect(tmp_path, "h36m", "h36m_mosh_train_fixname.npz: not an npz file")


def test_missing_npz_and_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="h36m train annotations"):
        _ds(tmp_path, "h36m", True)


def _break_images(tmp_path, n=5):
    npz = make_npz_and_images(tmp_path, "h36m", True, n=n)
    names = np.load(npz)["imgname"]
    folder = tmp_path / "datasets" / "h36m"
    (folder / names[1]).unlink()                       # missing
    (folder / names[2]).write_bytes(b"\x89PNG garbage")  # unreadable
    return folder, names


def test_missing_or_unreadable_image(tmp_path):
    folder, names = _break_images(tmp_path)
    ds = _ds(tmp_path, "h36m", True)
    ds[0]
    with pytest.raises(DatasetError, match=r"sample 1.*does not exist") as e:
        ds[1]
    assert str(folder / names[1]) in str(e.value) and "h36m_mosh_train" in str(e.value)
    with pytest.raises(DatasetError, match=r"sample 2.*could not be decoded") as e:
        ds[2]
    assert str(folder / names[2]) in str(e.value)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_skip_bad_images(tmp_path):
    _break_images(tmp_path)
    ds = _ds(tmp_path, "h36m", True, skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        it = ds[1]
    assert it["sample_index"] == 3 and it["n_skipped"] == 2 and ds.n_skipped == 2
    # counted across DataLoader worker processes too
    loader = DataLoader(torch.utils.data.Subset(ds, [1, 2]), batch_size=1, num_workers=2)
    got = [int(b["sample_index"][0]) for b in loader]
    assert got == [3, 3] and ds.n_skipped == 2 + 3


def test_normalize_image_matches_torchvision():
    from torchvision.transforms import functional as TF
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    ref = TF.normalize(TF.to_tensor(img), constants.IMG_NORM_MEAN, constants.IMG_NORM_STD)
    np.testing.assert_allclose(imutils.normalize_image(img), ref.numpy(), atol=1e-5)
    pn = np.array([0.7, 1.0, 1.39])
    noisy = np.clip(img * pn, 0, 255).astype(np.uint8)  # float -> uint8 truncates
    ref = TF.normalize(TF.to_tensor(noisy), constants.IMG_NORM_MEAN, constants.IMG_NORM_STD)
    np.testing.assert_allclose(imutils.normalize_image(img, pn), ref.numpy(), atol=1e-5)


def test_alb_keeps_rgb(world, monkeypatch):
    """--ALB runs on the RGB image (decisions D8: no channel swap) and never moves pixels."""
    ds_off, ds_on = _fixed(_ds(world, "h36m", True)), _fixed(_ds(world, "h36m", True, ALB=True))
    seen = []

    def identity(img, rng=np.random):
        seen.append(img.copy())
        return img
    monkeypatch.setattr(imutils, "photometric_augment", identity)
    it_on, it_off = ds_on[0], ds_off[0]
    np.testing.assert_allclose(it_on["img"].numpy(), it_off["img"].numpy(), atol=1e-6)
    rgb = cv2.cvtColor(cv2.imread(it_on["imgname"]), cv2.COLOR_BGR2RGB)
    if ds_on.half_size:
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2))
    np.testing.assert_array_equal(seen[0], rgb)
    monkeypatch.undo()
    red = np.zeros((40, 50, 3), np.uint8)
    red[..., 0] = 200
    red[10:30, 10:40] = (220, 30, 30)
    changed = 0
    for seed in range(30):
        out = imutils.photometric_augment(red, np.random.RandomState(seed))
        assert out.shape == red.shape and out.dtype == np.uint8
        m = out.reshape(-1, 3).mean(0)
        grey = np.ptp(out.astype(int), axis=-1).max() == 0  # the to-grey step was drawn
        assert grey or (m[0] > m[1] and m[0] > m[2])  # still red: channel order kept
        changed += int(np.any(out != red))
    assert changed >= 10


def test_denormalize_image_inverts_torchvision_normalize():
    """Every uint8 value comes back from torchvision's normalisation, batched and channel-last."""
    from torchvision.transforms import functional as TF
    img = np.stack(np.meshgrid(np.arange(256), np.arange(3), indexing="ij"), -1)[..., :1]
    img = np.repeat(img, 3, -1).astype(np.uint8)[None].repeat(2, 0)      # (2, 256, 3, 3)
    norm = torch.stack([TF.normalize(TF.to_tensor(i), constants.IMG_NORM_MEAN,
                                     constants.IMG_NORM_STD) for i in img])
    assert np.array_equal(imutils.denormalize_image(norm.numpy()), img)


def test_test_sets_ignore_the_training_only_options(world, monkeypatch):
    """--ignore_3d and --ALB act on training sets only (§6.3): a test set keeps its 3D labels
    (the test-time pseudo-label loss is masked by them) and its pixels, also when the
    in-training evaluation passes the training options."""
    monkeypatch.setattr(imutils, "photometric_augment", lambda img, rng=np.random: 255 - img)
    plain = _ds(world, "3dpw", False)[0]
    flagged = _ds(world, "3dpw", False, ignore_3d=True, ALB=True)[0]
    assert float(plain["has_smpl"]) == 1          # so that keeping it is seen
    for k in ("img", "has_smpl", "has_pose_3d", "pose_3d", "pose"):
        np.testing.assert_array_equal(np.asarray(flagged[k]), np.asarray(plain[k]), err_msg=k)
    train = _fixed(_ds(world, "h36m", True, ignore_3d=True, ALB=True))[0]   # training: both act
    assert float(train["has_smpl"]) == 0
    assert not np.allclose(train["img"].numpy(), _fixed(_ds(world, "h36m", True))[0]["img"])


def test_exif_orientation_is_ignored(tmp_path):
    """Dataset images are read as stored (the release's decoder ignores EXIF orientation): the
    npz keypoints and boxes refer to the stored pixels."""
    from PIL import Image
    from datasets.image_files import read_image_file
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:, :30] = 255                                 # the left half white
    exif = Image.Exif()
    exif[0x0112] = 6                                  # orientation: shown turned by 90 degrees
    path = tmp_path / "tagged.jpg"
    Image.fromarray(raw).save(path, exif=exif, quality=95)
    assert cv2.imread(str(path)).shape[:2] == (60, 40)    # OpenCV's default applies the tag
    img, why = read_image_file(str(path))
    assert why == "" and img.shape[:2] == (40, 60)
    assert img[:, :30].mean() > 200 and img[:, 30:].mean() < 50


@pytest.mark.parametrize("name", ["h36m-p2", "3dpw"])
def test_test_set_items_are_the_annotations_unaugmented(tmp_path, name):
    """A test set draws no augmentation (§6.3: training only), whatever the random state: the
    item's keypoints, SMPL and 3D joints are the npz values (3DPW: 2D keypoints, GT and OpenPose
    alike, halved with the image), flags 'not flipped, no rotation, scale 1'."""
    npz = make_npz_and_images(tmp_path, name, False, n=2, size=(200, 150))
    raw = np.load(npz)
    half = 2.0 if name == "3dpw" else 1.0
    ds = _ds(tmp_path, name, False)
    for seed in range(3):   # a draw of flip (p 0.5) etc. would show in one of these
        np.random.seed(seed)
        it = ds[1]
        assert int(it["is_flipped"]) == 0 and float(it["rot_angle"]) == 0.0
        assert float(it["scale_factor"]) == 1.0
        kp = it["keypoints_full"].numpy()
        np.testing.assert_allclose(kp[:25, :2], raw["openpose"][1, :, :2] / half, rtol=1e-6)
        np.testing.assert_allclose(kp[25:, :2], raw["part"][1, :, :2] / half, rtol=1e-6)
        np.testing.assert_allclose(kp[:, 2], np.r_[raw["openpose"][1, :, 2], raw["part"][1, :, 2]])
        np.testing.assert_allclose(it["pose"].numpy(), raw["pose"][1], rtol=1e-6)
        np.testing.assert_allclose(it["pose_3d"].numpy(), raw["S"][1], rtol=1e-6)
        assert float(it["has_smpl"]) == 1.0 and float(it["has_pose_3d"]) == 1.0
        # the crop keypoints are the full-image ones under the unrotated crop transform
        ct = it["crop_trans"].numpy().astype(np.float64)
        np.testing.assert_allclose(it["keypoints"].numpy()[:, :2],
                                   kp[:, :2] @ ct[:, :2].T + ct[:, 2], rtol=1e-4, atol=1e-3)


def test_test_set_flags_without_labels(tmp_path):
    """A test file without SMPL labels has has_smpl 0; S without a confidence column counts
    every joint as valid (1); --syn_occ never occludes a test set, MPI-INF-3DHP included."""
    npz = make_npz_and_images(tmp_path, "mpi-inf-3dhp", False, n=2, drop=("pose", "shape"))
    raw = dict(np.load(npz))
    raw["S"] = raw["S"][..., :3]
    np.savez(npz, **raw)
    ds = _ds(tmp_path, "mpi-inf-3dhp", False, syn_occ=True)
    assert ds.occluder is None
    it = ds[0]
    assert float(it["has_smpl"]) == 0.0 and float(it["has_pose_3d"]) == 1.0
    np.testing.assert_allclose(it["pose_3d"].numpy(), np.c_[raw["S"][0], np.ones(24)], rtol=1e-6)


def test_img_root_moves_the_image_folders(tmp_path):
    """--img_root (D10) replaces <data_root>/datasets for the raw images only: a test set's
    images are read from <img_root>/<folder>, the annotations still from <data_root>/data."""
    make_npz_and_images(tmp_path / "imgs_src", "h36m-p2", False, n=1)
    make_npz_and_images(tmp_path / "root", "h36m-p2", False, n=1)
    (tmp_path / "root" / "datasets").rename(tmp_path / "elsewhere")
    o = _opts(data_root=str(tmp_path / "root"), img_root=str(tmp_path / "elsewhere"))
    ds = BaseDataset(o, "h36m-p2", False)
    assert Path(ds.image_path(0)).parent.parent == tmp_path / "elsewhere" / "h36m"
    assert ds[0]["img"].shape == (3, 256, 192)


def test_flip_mirrors_the_3d_joints_about_the_camera_yz_plane(world):
    """Spec §6.3 item 4: S is gathered with J24_FLIP_PERM (written out here) and x -> -x; the
    flipped joints still project onto the flipped 2D keypoints (x -> W - 1 - x: one pixel
    left of the mirror of the projection about W/2, y unchanged)."""
    perm = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20, 23, 22]
    ds = _ds(world, "h36m", True)
    a, b = _fixed(ds, flip=0)[1], _fixed(ds, flip=1)[1]
    np.testing.assert_allclose(b["pose_3d"].numpy(),
                               a["pose_3d"].numpy()[perm] * [-1.0, 1.0, 1.0, 1.0], atol=1e-6)
    S = b["pose_3d"].numpy().astype(np.float64)
    f, w, h = float(b["focal_length"]), float(b["img_w"]), float(b["img_h"])
    proj = f * S[:, :2] / S[:, 2:3] + [w / 2, h / 2]
    kp = b["keypoints_full"].numpy()[25:]
    vis = kp[:, 2] > 0
    np.testing.assert_allclose(kp[vis, 0], proj[vis, 0] - 1.0, atol=0.1)
    np.testing.assert_allclose(kp[vis, 1], proj[vis, 1], atol=0.1)
