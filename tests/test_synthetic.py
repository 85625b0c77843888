"""The synthetic stand-in world (datasets/synthetic.py) and the software rasteriser
(utils/raster.py).

Independent facts used: the seed README's data layout (config.DataPaths) and SPIN's npz keys
(upstream-behaviour.md §6.2); pinhole projection (focal from the npz or the image diagonal,
principal point at the image centre, read from the decoded JPEG's size); a translation that
maps model joints onto 2D keypoints solves a linear least-squares problem (DLT); a joint
inside the body projects inside its silhouette; the body's outline is an intensity edge of the
image (Canny) where the annotation says it is, and not elsewhere; 6D rotations are orthonormal
(utils.geometry.rot6d_to_rotmat); rasterised points back-project onto the triangle they sample.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from datasets.synthetic import (DATASET_SPECS, MANIFEST, MARKER, build_world, expected_keys,
                                main)
from models.smpl import build_smpl
from utils.errors import OptionError, UserError
from utils.raster import rasterize, render_mesh_software
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]

KEYS = sorted(DATASET_SPECS)          # 'train/h36m', 'test/3dpw', ...
GENDER_MODEL = {"m": "male", "f": "female"}


def _built(root) -> dict:
    """What the world was built with (its manifest): sizes, img_size, seed."""
    return json.loads((Path(root) / MANIFEST).read_text())


def _npz(root, key) -> dict:
    split, name = key.split("/")
    with np.load(DataPaths(root).data_dir / "datasets" / DATASET_FILES[split][name]) as z:
        return {k: z[k] for k in z.files}


def _image(root, key, imgname) -> np.ndarray:
    name = key.split("/")[1]
    img = cv2.imread(str(DataPaths(root).images_dir / DATASET_FOLDERS[name] / imgname))
    assert img is not None, f"{key}: cannot read {imgname}"
    return img


@pytest.fixture(scope="module")
def models(synthetic_root):
    paths = DataPaths(synthetic_root)
    return {g: build_smpl(paths, g) for g in ("neutral", "male", "female")}


def _body(models, d, i):
    """Model joints [49, 3] and vertices [6890, 3] (no translation) of sample i (GT model)."""
    g = GENDER_MODEL[str(d["gender"][i])] if "gender" in d else "neutral"
    f32 = lambda x: torch.as_tensor(np.asarray(x)[None], dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        out = models[g](betas=f32(d["shape"][i]), body_pose=f32(d["pose"][i, 3:]),
                        global_orient=f32(d["pose"][i, :3]))
    return out.joints[0].double().numpy(), out.vertices[0].double().numpy()


def _focal(d, i, h, w) -> float:
    return float(d["focal_length"][i]) if "focal_length" in d else math.hypot(w, h)


def _translation_from_2d(X, uv, f, w, h) -> np.ndarray:
    """t such that f (X + t)_xy / (X + t)_z + (w/2, h/2) = uv, least squares (linear)."""
    c = uv - [w / 2.0, h / 2.0]
    A = np.zeros((2 * len(X), 3))
    b = np.zeros(2 * len(X))
    A[0::2, 0], A[0::2, 2], b[0::2] = f, -c[:, 0], c[:, 0] * X[:, 2] - f * X[:, 0]
    A[1::2, 1], A[1::2, 2], b[1::2] = f, -c[:, 1], c[:, 1] * X[:, 2] - f * X[:, 1]
    return np.linalg.lstsq(A, b, rcond=None)[0]


# ---------------------------------------------------------------------------------------------
# layout and keys

def test_the_world_has_the_seed_readme_layout(synthetic_root):
    paths = DataPaths(synthetic_root)
    for g in ("neutral", "male", "female"):
        assert paths.smpl_model(g).stat().st_size > 1e6
    for f in (paths.smpl_mean_params(), paths.j_regressor_extra(), paths.j_regressor_h36m(),
              paths.occluders()):
        assert f.is_file()
    for split, files in DATASET_FILES.items():
        for name in files:
            assert paths.dataset_npz(name, split == "train").is_file()
            assert paths.image_folder(name).is_dir()
    assert (synthetic_root / MARKER).is_file()
    manifest = json.loads((synthetic_root / MANIFEST).read_text())
    assert manifest["complete"] and manifest["sizes"].keys() == DATASET_SPECS.keys()
    # the stand-in network weights of the small backbone are there
    assert paths.backbone_checkpoint("resnet18").is_file()
    assert paths.aux_checkpoint("cliff", "resnet18").is_file()


@pytest.mark.parametrize("key", KEYS)
def test_npz_keys_shapes_and_images(synthetic_root, key):
    d = _npz(synthetic_root, key)
    spec = DATASET_SPECS[key]
    n = _built(synthetic_root)["sizes"][key]
    assert set(d) == expected_keys(key)
    assert {"imgname", "center", "scale", "part", "openpose"} <= set(d)
    assert ("S" in d) == (spec.name in ("h36m", "h36m-p1", "h36m-p2", "3dpw", "mpi-inf-3dhp"))
    assert ("gender" in d) == (spec.name in ("h36m", "h36m-p1", "h36m-p2", "3dpw"))
    assert ("focal_length" in d) == (spec.name == "3dpw")
    shapes = {"imgname": (n,), "center": (n, 2), "scale": (n,), "part": (n, 24, 3),
              "openpose": (n, 25, 3), "pose": (n, 72), "shape": (n, 10), "has_smpl": (n,),
              "S": (n, 24, 4), "gender": (n,), "focal_length": (n,)}
    for k, v in d.items():
        assert v.shape == shapes[k], (key, k, v.shape)
        if v.dtype.kind == "f":
            assert np.isfinite(v).all(), (key, k)
    assert d["imgname"].dtype.kind == "U" and len(set(d["imgname"])) == n
    if "gender" in d:
        assert set(d["gender"]) <= {"m", "f"}
    if "has_smpl" in d:
        assert (d["has_smpl"] == 1).all()
    if "S" in d:
        assert (d["S"][..., 3] == 1).all() and (d["S"][..., 2] > 0.5).all()   # in front
    # confidences: 0/1 for the GT joints, (0, 1) for OpenPose; joints the real set does not
    # annotate have confidence 0 (COCO: no neck/head/pelvis/thorax/spine/jaw; MPII: no face)
    assert set(np.unique(d["part"][..., 2])) <= {0.0, 1.0}
    assert (d["openpose"][..., 2] >= 0).all() and (d["openpose"][..., 2] < 1).all()
    unannotated = sorted(set(range(24)) - set(spec.visible))
    assert (d["part"][:, unannotated] == 0).all()
    if spec.name == "coco":
        assert unannotated == list(range(12, 19))
    if spec.name == "mpii":
        assert unannotated == list(range(16, 24))
    # images: size implied by the set (3DPW at 1.5 x 2 of the base size, for halving)
    s = _built(synthetic_root)["img_size"]
    for i in range(n):
        h, w = _image(synthetic_root, key, str(d["imgname"][i])).shape[:2]
        if spec.name == "3dpw":
            assert (w, h) == (int(1.5 * s), 2 * s)
        elif spec.name in ("h36m", "h36m-p1", "h36m-p2", "mpi-inf-3dhp"):
            assert (w, h) == (s, s)
        elif spec.name == "mpii":
            assert (w, h) == (int(1.25 * s), s)
        assert w % 2 == 0 and h % 2 == 0
        if "focal_length" in d:
            assert 0.8 < d["focal_length"][i] / math.hypot(w, h) < 1.2


# ---------------------------------------------------------------------------------------------
# annotations against geometry

@pytest.mark.parametrize("key", KEYS)
def test_keypoints_are_projections_of_the_3d_joints(synthetic_root, models, key):
    """part = pinhole projections of S (sets with 3D) and of the GT SMPL's joints (all sets
    with pose/shape): one translation per sample explains every keypoint to 1e-3 px."""
    d = _npz(synthetic_root, key)
    for i in range(len(d["imgname"])):
        h, w = _image(synthetic_root, key, str(d["imgname"][i])).shape[:2]
        f = _focal(d, i, h, w)
        vis = d["part"][i, :, 2] > 0
        assert vis.sum() >= 10, f"{key}[{i}]: {vis.sum()} visible joints"
        if "S" in d:
            S = d["S"][i, :, :3]
            proj = f * S[:, :2] / S[:, 2:] + [w / 2.0, h / 2.0]
            np.testing.assert_allclose(d["part"][i, vis, :2], proj[vis], atol=1e-6)
            # every joint is annotated in these sets: confidence 0 only outside the image
            outside = (proj[:, 0] < 0) | (proj[:, 0] > w - 1) | (proj[:, 1] < 0) | \
                (proj[:, 1] > h - 1)
            np.testing.assert_array_equal(~vis, outside)
        if "pose" not in d:
            continue
        J, _ = _body(models, d, i)
        t = _translation_from_2d(J[25:][vis], d["part"][i, vis, :2], f, w, h)
        P = J + t
        proj = f * P[:, :2] / P[:, 2:] + [w / 2.0, h / 2.0]
        assert np.abs(proj[25:][vis] - d["part"][i, vis, :2]).max() < 1e-3
        if "S" in d:   # S is the GT model's joints, translated
            np.testing.assert_allclose(P[25:], d["S"][i, :, :3], atol=1e-4)
        # OpenPose: the model's first 25 joints, projected, plus a little noise
        op = d["openpose"][i]
        det = op[:, 2] > 0
        assert det.sum() >= 12
        body_h = np.ptp(proj[25:, 1])
        err = np.linalg.norm(op[det, :2] - proj[:25][det], axis=1)
        assert np.median(err) < 0.03 * body_h and err.max() < 0.08 * body_h, (key, i, err)
        assert (op[~det] == 0).all()


def _edge_agreement(gray: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the silhouette's boundary pixels that lie within 2 px of an image edge."""
    edges = cv2.Canny(gray, 40, 100) > 0
    near = cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    m = mask.astype(np.uint8)
    boundary = (m - cv2.erode(m, np.ones((3, 3), np.uint8))) > 0
    return float(near[boundary].mean())


def test_bodies_are_drawn_where_the_annotations_put_them(synthetic_root, models):
    faces = models["neutral"].faces.astype(np.int64)
    true, shifted = [], []
    for key in KEYS:
        d = _npz(synthetic_root, key)
        if "pose" not in d:
            continue
        for i in range(len(d["imgname"])):
            img = _image(synthetic_root, key, str(d["imgname"][i]))
            h, w = img.shape[:2]
            f = _focal(d, i, h, w)
            vis = d["part"][i, :, 2] > 0
            J, V = _body(models, d, i)
            t = _translation_from_2d(J[25:][vis], d["part"][i, vis, :2], f, w, h)
            face_id, _, depth = rasterize(V + t, faces, f, (w / 2.0, h / 2.0), h, w)
            mask = face_id >= 0
            assert mask.sum() > 0.02 * h * w, f"{key}[{i}]: body too small or off-image"
            # every visible keypoint (a point inside the body) falls on the silhouette
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            kp = np.round(d["part"][i, vis, :2]).astype(int)
            assert grown[kp[:, 1], kp[:, 0]].all(), f"{key}[{i}]: keypoint off the body"
            gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            true.append(_edge_agreement(gray, mask))
            shifted.append(max(_edge_agreement(gray, np.roll(mask, w // 4, 1)),
                               _edge_agreement(gray, np.roll(mask, h // 5, 0))))
    true, shifted = np.array(true), np.array(shifted)
    assert true.min() > 0.6 and true.mean() > 0.85, true
    assert true.mean() - shifted.mean() > 0.35, (true.mean(), shifted.mean())


# ---------------------------------------------------------------------------------------------
# static files

def test_mean_params_regressors_and_occluders(synthetic_root):
    from utils.geometry import rot6d_to_rotmat
    paths = DataPaths(synthetic_root)
    with np.load(paths.smpl_mean_params()) as mp:
        assert set(mp.files) == {"pose", "shape", "cam"}
        assert mp["pose"].shape == (144,) and mp["shape"].shape == (10,)
        np.testing.assert_allclose(mp["cam"], [0.9, 0.0, 0.0])
        pose6d = torch.as_tensor(mp["pose"], dtype=torch.float64)
        R = rot6d_to_rotmat(pose6d[None]).reshape(24, 3, 3)
    np.testing.assert_allclose(R @ R.transpose(1, 2), torch.eye(3).expand(24, 3, 3).double(),
                               atol=1e-9)
    # the root is upright in the camera frame (180 deg about x: y up -> image up)
    np.testing.assert_allclose(R[0], np.diag([1.0, -1.0, -1.0]), atol=1e-9)
    # the rest of the mean pose: arms lowered from the T-pose, the rest near identity
    angles = np.degrees(np.arccos(np.clip((np.einsum("jii->j", R.numpy()) - 1) / 2, -1, 1)))
    assert 45 < angles[16] < 80 and 45 < angles[17] < 80
    assert angles[[3, 6, 9, 12, 15]].max() < 5

    occ = np.load(paths.occluders(), allow_pickle=True)
    assert occ.dtype == object and occ.ndim == 1 and len(occ) >= 20
    sizes = set()
    for p in occ:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 4
        assert p[..., 3].max() == 255 and p[..., 3].min() == 0
        sizes.add(p.shape[:2])
    assert len(sizes) > len(occ) // 2
    from datasets.occlusion import load_occluders
    assert len(load_occluders(paths.occluders())) == len(occ)


# ---------------------------------------------------------------------------------------------
# build_world: reuse, rebuild of a half-written world, determinism, refusal, CLI errors

def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (MARKER, MANIFEST):
            out[str(p.relative_to(root))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def test_build_world_is_deterministic_and_rebuilds_a_partial_world(tmp_path):
    sizes = {k: 2 for k in DATASET_SPECS}
    root = tmp_path / "w"
    build_world(root, sizes=sizes, img_size=64, seed=5, weights=(), log=None)
    first = _digest(root)
    assert len([k for k in first if k.endswith(".jpg")]) == 2 * len(DATASET_SPECS)
    # complete: reused as it is (nothing rewritten)
    stamp = (root / MARKER).stat().st_mtime_ns
    build_world(root, sizes=sizes, img_size=64, seed=5, weights=(), log=None)
    build_world(root, weights=(), log=None)              # None arguments match any build
    assert (root / MARKER).stat().st_mtime_ns == stamp
    # a half-written world (no marker) is rebuilt, identically
    (root / MARKER).unlink()
    npz = DataPaths(root).dataset_npz("3dpw", False)
    npz.unlink()
    build_world(root, sizes=sizes, img_size=64, seed=5, weights=(), log=None)
    assert (root / MARKER).is_file() and npz.is_file()
    assert _digest(root) == first


def test_build_world_refuses_a_foreign_data_tree_and_bad_sizes(tmp_path):
    real = tmp_path / "real"
    (real / "data" / "smpl").mkdir(parents=True)
    (real / "data" / "smpl" / "SMPL_NEUTRAL.pkl").write_bytes(b"not ours")
    with pytest.raises(UserError, match="did not write"):
        build_world(real, weights=(), log=None)
    assert (real / "data" / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes() == b"not ours"
    with pytest.raises(OptionError, match="unknown dataset 'train/lsp'"):
        build_world(tmp_path / "x", sizes={"train/lsp": 3}, log=None)
    with pytest.raises(OptionError, match="unknown dataset"):
        main(["--root", str(tmp_path / "y"), "--sizes", "test/foo=2"])
    with pytest.raises(OptionError, match="unknown backbone"):
        main(["--root", str(tmp_path / "y"), "--weights", "vgg"])


def test_cli_bad_sizes_is_one_line_exit_2(tmp_path):
    """``python -m datasets.synthetic`` with a too small set: one ``error:`` line, code 2,
    nothing written."""
    root = tmp_path / "w"
    p = forkrun.run(["-m", "datasets.synthetic", "--root", root, "--sizes", "train/h36m=1",
                     "--weights", ""], cwd=REPO, timeout=120,
                    env={**os.environ, "METAHMR_DEBUG": ""})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert lines == ["error: sizes['train/h36m'] = 1: every set needs at least 2 samples"], lines
    assert not root.exists()


# ---------------------------------------------------------------------------------------------
# the rasteriser

def test_raster_body_is_fast_and_depth_correct(smpl_neutral):
    faces = smpl_neutral.faces.astype(np.int64)
    with torch.no_grad():
        v = smpl_neutral(betas=torch.zeros(1, 10), body_pose=torch.zeros(1, 69),
                         global_orient=torch.tensor([[math.pi, 0.0, 0.0]])).vertices[0].numpy()
    v = v.astype(np.float64) + [0.0, 0.0, 2.6]
    render_mesh_software(v, faces, 300.0, (128, 128), 256, 256)          # warm-up
    t0 = time.perf_counter()
    rgb, mask = render_mesh_software(v, faces, 300.0, (128, 128), 256, 256)
    assert time.perf_counter() - t0 < 0.2
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.float32 and mask.dtype == bool
    assert 0.05 < mask.mean() < 0.5 and (rgb[~mask] == 0).all() and rgb[mask].max() <= 1
    # every covered pixel: the barycentric point on its face projects back to the pixel centre
    # and has the reported depth (perspective-correct interpolation)
    face_id, bary, depth = rasterize(v, faces, 300.0, (128, 128), 256, 256)
    rows, cols = np.nonzero(face_id >= 0)
    p = (bary[rows, cols, :, None] * v[faces[face_id[rows, cols]]]).sum(1)
    uv = 300.0 * p[:, :2] / p[:, 2:] + 128.0
    assert np.abs(uv - np.stack([cols, rows], 1)).max() < 1e-3
    np.testing.assert_allclose(depth[rows, cols], p[:, 2], rtol=1e-5)


def test_raster_nearest_surface_wins_and_culls_behind_camera():
    def square(z, half):
        v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
        return v, np.array([[0, 1, 2], [0, 2, 3]])
    far_v, far_f = square(5.0, 1.0)
    near_v, near_f = square(2.0, 0.2)
    behind_v, behind_f = square(-1.0, 5.0)
    for order in (0, 1):   # draw order does not matter
        parts = [(far_v, far_f, (0, 0, 1)), (near_v, near_f, (1, 0, 0)),
                 (behind_v, behind_f, (0, 1, 0))]
        if order:
            parts = parts[::-1]
        verts, faces, cols, base = [], [], [], 0
        for v, f, c in parts:
            verts.append(v)
            faces.append(f + base)
            cols.append(np.tile(c, (len(v), 1)))
            base += len(v)
        rgb, mask = render_mesh_software(np.concatenate(verts), np.concatenate(faces), 50.0,
                                         (32, 32), 64, 64, vertex_colors=np.concatenate(cols),
                                         ambient=1.0)
        assert (rgb[32, 32] == [1, 0, 0]).all()          # the near square at the centre
        assert (rgb[32, 25] == [0, 0, 1]).all()          # the far one around it
        assert not mask[0, 0] and not (rgb[..., 1] > 0).any()   # behind: culled
    with pytest.raises(ValueError, match="faces index"):
        rasterize(far_v, far_f + 10, 50.0, (32, 32), 64, 64)
