"""The synthetic stand-in world: the seed README's data tree, generated from a fixed seed.

    python -m datasets.synthetic --root data/synthetic            # default (~700 images)
    python -m datasets.synthetic --root /tmp/w --tiny              # a few images per set
    python -m datasets.synthetic --root data/synthetic --force --weights resnet18,resnet
    python -m datasets.synthetic --root data/synthetic --raw       # + 3DPW in the raw layout

writes, under ``root`` (the layout of :class:`config.DataPaths`):

* ``data/smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl``: a humanoid body model in SMPL's pickle format
  (see :mod:`datasets.synthetic_body`), loadable by :class:`models.smpl.SMPL`;
* ``data/J_regressor_extra.npy`` [9, 6890] and ``data/J_regressor_h36m.npy`` [17, 6890]
  (rows of convex vertex weights), ``data/smpl_mean_params.npz`` (SPIN's keys: ``pose``
  (144,) 6D mean pose, ``shape`` (10,), ``cam`` (3,) = [0.9, 0, 0]);
* ``data/VOC/pascal_occluders.npy``: the released format, a 1-D numpy **object array of RGBA
  uint8 patches** ``[h_i, w_i, 4]`` of varied sizes (alpha 255 on the object, 0 around it,
  anti-aliased edge), saved with ``np.save(..., allow_pickle=True)``; load it with
  ``utils.safe_pickle.load_npy(path)`` (which admits numpy arrays only, so a crafted file
  cannot run code; never ``np.load(path, allow_pickle=True)``);
* ``data/datasets/<config.DATASET_FILES[split][name]>``: SPIN-format npz for every train
  (h36m, mpii, coco, mpi-inf-3dhp, 3dpw) and test (3dpw, h36m-p1, h36m-p2, mpi-inf-3dhp, coco)
  set, with JPEG images under ``datasets/<config.DATASET_FOLDERS[name]>/`` (``imgname`` is
  relative to that folder and follows each real set's naming);
* optionally the stand-in network weights of ``models.checkpoints.write_standin_weights``;
* ``synthetic_world.json`` (what was built) and, last, ``.complete``.

Every image shows one posed body of the gendered (sets that store ``gender``: h36m, 3dpw) or
neutral model, in front of a random background (gradients, blobs, a floor), shaded with clothes
colours. The annotations are exact: with ``f`` = the npz ``focal_length`` if stored (3DPW),
else the image diagonal ``sqrt(W^2 + H^2)`` (CLIFF's convention), and the principal point at
the image centre ``(W/2, H/2)`` (pixel centres at integers),

* ``S`` [N, 24, 4] = the 24 GT joints (SPIN model joints 25..48) in the camera frame (metres,
  OpenCV axes: x right, y down, z forward) with confidence 1 (sets with 3D: h36m, 3dpw,
  mpi-inf-3dhp);
* ``part`` [N, 24, 3] = their pinhole projections, confidence 1 where the joint is annotated in
  the real set (COCO: limbs + face; MPII: limbs + neck/head/pelvis/thorax; others all) and
  inside the image, else the row is 0;
* ``openpose`` [N, 25, 3] = projections of the OpenPose-order joints (model joints 0..24) plus
  Gaussian noise (~1% of the body height), confidences in [0.35, 0.95], some dropped (0);
* ``pose`` [N, 72] (axis-angle, global orientation in the camera frame) and ``shape`` [N, 10]
  reproduce the body with the GT model: ``SMPL(pose, shape).joints + t`` = S for one
  translation t per sample (not stored, as in the real files);
* ``center`` / ``scale`` (SPIN's bbox of ``part``: ``scale = 1.2 max(w, h) / 200``),
  ``has_smpl``, ``gender`` ('m' / 'f'), ``focal_length`` per sample (3DPW only; the loader
  halves it with the image).

3DPW images are stored at twice the other sets' size (portrait), as the loader halves them.
Everything is deterministic in ``seed`` (one numpy generator per dataset).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

import config
from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from utils.jsonio import dumps as strict_dumps

__all__ = ["build_world", "DEFAULT_SIZES", "TINY_SIZES", "DEFAULT_IMG_SIZE", "TINY_IMG_SIZE",
           "GENERATOR_VERSION", "DATASET_SPECS", "expected_keys", "main"]

GENERATOR_VERSION = 1
DEFAULT_IMG_SIZE = 256
TINY_IMG_SIZE = 128
MANIFEST = "synthetic_world.json"
MARKER = ".complete"

DEFAULT_SIZES = {
    "train/h36m": 160, "train/mpii": 80, "train/coco": 80, "train/mpi-inf-3dhp": 80,
    "train/3dpw": 80,
    "test/3dpw": 80, "test/h36m-p1": 40, "test/h36m-p2": 40, "test/mpi-inf-3dhp": 40,
    "test/coco": 40,
}
TINY_SIZES = {k: 4 for k in DEFAULT_SIZES}

# GT-24 joints annotated in the real 2D sets (SPIN's order, constants.JOINT_NAMES[25:])
_COCO_J24 = tuple(range(12)) + (19, 20, 21, 22, 23)
_MPII_J24 = tuple(range(16))
_ALL_J24 = tuple(range(24))
_H36M_GENDER = {1: "f", 5: "f", 6: "m", 7: "f", 8: "m", 9: "m", 11: "m"}
_H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing",
                 "Purchases", "Sitting", "Smoking", "TakingPhoto", "Waiting", "Walking",
                 "WalkDog", "WalkTogether")
_H36M_CAMS = ("54138969", "55011271", "58860488", "60457274")
_PW3D_TRAIN = ("courtyard_arguing_00", "courtyard_backpack_00", "courtyard_basketball_00",
               "downtown_bar_00", "outdoors_climbing_00", "outdoors_slalom_00")
_PW3D_TEST = ("downtown_walking_00", "downtown_stairs_00", "flat_guitar_01",
              "office_phoneCall_00", "outdoors_fencing_01", "downtown_runForBus_00")


@dataclass(frozen=True)
class DatasetSpec:
    """How one synthetic set mimics its real counterpart."""
    split: str                # 'train' | 'test'
    name: str                 # config.DATASET_FILES name
    aspect: tuple             # (W, H) in units of img_size; several = one drawn per image
    has_3d: bool              # write S
    has_smpl: bool            # write pose / shape / has_smpl
    gendered: bool            # write gender (and render with the gendered model)
    focal: bool               # write focal_length (else the loader uses the diagonal)
    visible: tuple            # GT-24 joints annotated in the real set
    fill: tuple               # person size as a fraction of the limiting image side
    spread: float             # pose variety
    tilt: float               # std of the body's lean (rad)
    per_sequence: bool        # subject, background and camera shared per sequence


DATASET_SPECS = {
    "train/h36m": DatasetSpec("train", "h36m", ((1, 1),), True, True, True, False, _ALL_J24,
                              (0.55, 0.8), 0.8, 0.08, True),
    "train/mpii": DatasetSpec("train", "mpii", ((1.25, 1),), False, True, False, False,
                              _MPII_J24, (0.45, 0.85), 1.1, 0.2, False),
    "train/coco": DatasetSpec("train", "coco", ((1.25, 1), (1, 1.25), (1, 1), (1.33, 1)),
                              False, True, False, False, _COCO_J24, (0.35, 0.85), 1.1, 0.2,
                              False),
    "train/mpi-inf-3dhp": DatasetSpec("train", "mpi-inf-3dhp", ((1, 1),), True, True, False,
                                      False, _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "train/3dpw": DatasetSpec("train", "3dpw", ((1.5, 2),), True, True, True, True, _ALL_J24,
                              (0.4, 0.75), 0.7, 0.08, True),
    "test/3dpw": DatasetSpec("test", "3dpw", ((1.5, 2),), True, True, True, True, _ALL_J24,
                             (0.4, 0.75), 0.7, 0.08, True),
    "test/h36m-p1": DatasetSpec("test", "h36m-p1", ((1, 1),), True, True, True, False,
                                _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/h36m-p2": DatasetSpec("test", "h36m-p2", ((1, 1),), True, True, True, False,
                                _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/mpi-inf-3dhp": DatasetSpec("test", "mpi-inf-3dhp", ((1, 1),), True, False, False,
                                     False, _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "test/coco": DatasetSpec("test", "coco", ((1.25, 1), (1, 1.25), (1, 1), (1.33, 1)), False,
                             True, False, False, _COCO_J24, (0.35, 0.85), 1.1, 0.2, False),
}
assert set(DATASET_SPECS) == {f"{s}/{n}" for s in DATASET_FILES for n in DATASET_FILES[s]}


def expected_keys(key: str) -> set[str]:
    """The npz keys the synthetic set ``'<split>/<name>'`` carries."""
    spec = DATASET_SPECS[key]
    keys = {"imgname", "center", "scale", "part", "openpose"}
    if spec.has_smpl:
        keys |= {"pose", "shape", "has_smpl"}
    if spec.has_3d:
        keys.add("S")
    if spec.gendered:
        keys.add("gender")
    if spec.focal:
        keys.add("focal_length")
    return keys


# ---------------------------------------------------------------------------------------------
# poses: per joint (x, y, z) axis-angle ranges in SMPL's joint frames (x left, y up, z forward)
# and the resting value each component is drawn around.
_R = {  # joint: ((lo_x, hi_x), (lo_y, hi_y), (lo_z, hi_z))
    1: ((-1.6, 0.5), (-0.5, 0.5), (-0.2, 0.7)), 2: ((-1.6, 0.5), (-0.5, 0.5), (-0.7, 0.2)),
    3: ((-0.3, 0.6), (-0.3, 0.3), (-0.25, 0.25)),
    4: ((0.0, 2.2), (-0.05, 0.05), (-0.05, 0.05)), 5: ((0.0, 2.2), (-0.05, 0.05), (-0.05, 0.05)),
    6: ((-0.2, 0.3), (-0.2, 0.2), (-0.15, 0.15)),
    7: ((-0.4, 0.6), (-0.2, 0.2), (-0.2, 0.2)), 8: ((-0.4, 0.6), (-0.2, 0.2), (-0.2, 0.2)),
    9: ((-0.2, 0.3), (-0.2, 0.2), (-0.15, 0.15)),
    10: ((-0.3, 0.3), (-0.1, 0.1), (-0.1, 0.1)), 11: ((-0.3, 0.3), (-0.1, 0.1), (-0.1, 0.1)),
    12: ((-0.4, 0.5), (-0.5, 0.5), (-0.3, 0.3)),
    13: ((-0.1, 0.1), (-0.15, 0.15), (-0.2, 0.3)), 14: ((-0.1, 0.1), (-0.15, 0.15), (-0.3, 0.2)),
    15: ((-0.3, 0.4), (-0.5, 0.5), (-0.3, 0.3)),
    16: ((-0.6, 0.6), (-1.2, 0.5), (-1.45, 0.6)), 17: ((-0.6, 0.6), (-0.5, 1.2), (-0.6, 1.45)),
    18: ((-0.2, 0.2), (-2.3, 0.0), (-0.1, 0.1)), 19: ((-0.2, 0.2), (0.0, 2.3), (-0.1, 0.1)),
    20: ((-0.5, 0.5), (-0.3, 0.3), (-0.5, 0.5)), 21: ((-0.5, 0.5), (-0.3, 0.3), (-0.5, 0.5)),
    22: ((-0.2, 0.2), (-0.2, 0.2), (-0.2, 0.2)), 23: ((-0.2, 0.2), (-0.2, 0.2), (-0.2, 0.2)),
}
_REST = {1: (-0.1, 0, 0.05), 2: (-0.1, 0, -0.05), 4: (0.25, 0, 0), 5: (0.25, 0, 0),
         16: (0, -0.1, -1.1), 17: (0, 0.1, 1.1), 18: (0, -0.35, 0), 19: (0, 0.35, 0)}
_LO = np.array([[_R[j][a][0] for a in range(3)] for j in range(1, 24)])
_HI = np.array([[_R[j][a][1] for a in range(3)] for j in range(1, 24)])
_MID = np.array([_REST.get(j, (0.0, 0.0, 0.0)) for j in range(1, 24)], dtype=np.float64)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R).as_rotvec()


def sample_body_pose(rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """[69] axis-angle body pose within per-joint limits, drawn around a resting pose."""
    half = (_HI - _LO) / 2
    x = np.clip(rng.normal(0.0, 0.45, half.shape), -1.2, 1.2)
    return np.clip(_MID + spread * half * x, _LO, _HI).reshape(69)


def mean_pose() -> np.ndarray:
    """[72] axis-angle: upright facing the camera (camera frame), the resting body pose."""
    return np.concatenate([_rotvec(_rot_x(math.pi)), _MID.reshape(69)])


def sample_global_orient(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """[3] camera-frame root orientation: upright (y up -> image up), random yaw, small lean."""
    R = _rot_x(math.pi) @ _rot_z(rng.normal(0, tilt / 2)) @ _rot_x(rng.normal(0, tilt)) \
        @ _rot_y(rng.uniform(-math.pi, math.pi))
    return _rotvec(R)


# ---------------------------------------------------------------------------------------------
# images

def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 RGB: gradient + low-frequency noise + shapes + optional floor."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    low = rng.normal(0, 25, (4, 4, 3)).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.uniform() < 0.6:   # a floor below a horizon
        horizon = int(h * rng.uniform(0.45, 0.8))
        floor = rng.uniform(0, 255, 3)
        ramp = np.linspace(0.8, 1.2, h - horizon, dtype=np.float32)[:, None, None]
        img[horizon:] = 0.3 * img[horizon:] + 0.7 * floor[None, None] * ramp
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 10))):
        col = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        p = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        s = max(2, int(rng.uniform(0.05, 0.3) * min(h, w)))
        if kind == 0:
            cv2.rectangle(img, p, (p[0] + s, p[1] + int(s * rng.uniform(0.3, 2))), col, -1)
        elif kind == 1:
            cv2.circle(img, p, s // 2, col, -1, lineType=cv2.LINE_AA)
        else:
            q = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(img, p, q, col, max(1, s // 8), lineType=cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


_SKIN = np.array([[0.96, 0.80, 0.69], [0.88, 0.67, 0.52], [0.76, 0.57, 0.42],
                  [0.58, 0.40, 0.28], [0.40, 0.27, 0.18]])


def _clothes(rng: np.random.Generator) -> np.ndarray:
    """Colour [24, 3] of each SMPL joint's body part (skin, shirt, trousers, shoes)."""
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.95, 1.05)
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(60, 255)]]],
                   np.uint8)
    shirt = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 200), rng.uniform(30, 180)]]],
                   np.uint8)
    trousers = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    shoes = np.full(3, rng.uniform(0.05, 0.5))
    col = np.zeros((24, 3))
    col[[12, 15, 20, 21, 22, 23]] = skin
    col[[3, 6, 9, 13, 14, 16, 17]] = shirt
    col[[18, 19]] = shirt if rng.uniform() < 0.5 else skin       # long / short sleeves
    col[[0, 1, 2]] = trousers
    col[[4, 5]] = trousers if rng.uniform() < 0.7 else skin       # trousers / shorts
    col[[7, 8, 10, 11]] = shoes
    return np.clip(col, 0, 1)


def _draw_body(bg: np.ndarray, verts: np.ndarray, faces: np.ndarray, weights: np.ndarray,
               colours: np.ndarray, f: float, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Composite the shaded body over ``bg`` (RGB uint8). Returns (image RGB uint8, mask)."""
    from utils.raster import render_mesh_software
    h, w = bg.shape[:2]
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.0, 0.8), 1.0])
    rgb, mask = render_mesh_software(verts, faces, f, (w / 2.0, h / 2.0), h, w,
                                     light_dir=light, ambient=float(rng.uniform(0.3, 0.5)),
                                     vertex_colors=weights @ colours)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)[..., None]
    out = bg.astype(np.float32) * (1 - alpha) + rgb * 255.0 * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------
# one dataset

def _names(spec: DatasetSpec, n: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """Image names in the real set's style and the sequence id of every sample."""
    names, seqs = [], []
    per_seq = 10
    for i in range(n):
        q, k = divmod(i, per_seq)
        if spec.name.startswith("h36m"):
            subjects = (1, 5, 6, 7, 8) if spec.split == "train" else (9, 11)
            subj = subjects[q % len(subjects)]
            act = _H36M_ACTIONS[(q // len(subjects)) % len(_H36M_ACTIONS)]
            cam = _H36M_CAMS[3] if spec.name == "h36m-p2" else _H36M_CAMS[q % 4]
            sub = 2 if spec.name == "h36m-p2" else 1     # p1 and p2 share the folder
            names.append(f"images/S{subj}_{act}_{sub}.{cam}_{k * 5 + 1:06d}.jpg")
        elif spec.name == "3dpw":
            pool = _PW3D_TRAIN if spec.split == "train" else _PW3D_TEST
            frame = (q // len(pool)) * 1000 + k * 3
            names.append(f"imageFiles/{pool[q % len(pool)]}/image_{frame:05d}.jpg")
        elif spec.name == "mpi-inf-3dhp":
            if spec.split == "train":
                names.append(f"S{q % 8 + 1}/Seq{q // 8 % 2 + 1}/imageFrames/video_{q % 9}/"
                             f"frame_{k * 10 + 1:06d}.jpg")
            else:
                names.append(f"mpi_inf_3dhp_test_set/TS{q % 6 + 1}/imageSequence/"
                             f"img_{q // 6 * per_seq + k + 1:06d}.jpg")
        elif spec.name == "mpii":
            names.append(f"images/{int(rng.integers(1e8, 1e9)):09d}.jpg")
        else:  # coco
            split = "train2014" if spec.split == "train" else "val2014"
            names.append(f"{split}/COCO_{split}_{int(rng.integers(1e5, 6e5)):012d}.jpg")
        seqs.append(q if spec.per_sequence else i)
    if len(set(names)) != len(names):   # random ids collided: make them unique
        names = [f"{Path(s).parent}/{Path(s).stem}_{i}{Path(s).suffix}"
                 for i, s in enumerate(names)]
    return names, seqs


def _seq_gender(spec: DatasetSpec, name: str, rng: np.random.Generator) -> str:
    if spec.name.startswith("h36m"):
        subj = int(name.split("/")[1].split("_")[0][1:])
        return _H36M_GENDER[subj]
    return "m" if rng.uniform() < 0.5 else "f"


def _project(points: np.ndarray, f: float, w: int, h: int) -> np.ndarray:
    """[..., 3] camera frame -> [..., 2] pixels, principal point (W/2, H/2)."""
    return f * points[..., :2] / points[..., 2:3] + np.array([w / 2.0, h / 2.0])


def _place(verts: np.ndarray, root: np.ndarray, f: float, w: int, h: int, fill: float,
           rng: np.random.Generator) -> np.ndarray:
    """Camera translation [3] putting the body (posed at the origin) in view at size ``fill``."""
    rel = verts - root
    ext_x, ext_y = np.ptp(rel[:, 0]), np.ptp(rel[:, 1])
    z = f * max(ext_x / w, ext_y / h) / fill
    z = max(z, 1.2 + max(0.0, -rel[:, 2].min()))
    mid = (rel.max(0) + rel.min(0)) / 2
    free_x = max(0.0, (1 - ext_x * f / z / w)) * w / 2
    free_y = max(0.0, (1 - ext_y * f / z / h)) * h / 2
    u = w / 2.0 + rng.uniform(-0.8, 0.8) * free_x
    v = h / 2.0 + rng.uniform(-0.8, 0.8) * free_y
    t = np.array([(u - w / 2.0) * z / f - mid[0], (v - h / 2.0) * z / f - mid[1], z]) - root
    # keep the projected body inside the image (perspective makes the estimate approximate)
    for _ in range(3):
        uv = _project(verts + t, f, w, h)
        lo, hi = uv.min(0), uv.max(0)
        if (hi - lo)[0] > w - 2 or (hi - lo)[1] > h - 2:
            t[2] *= 1.15
            continue
        shift = np.maximum(0, 1 - lo) - np.maximum(0, hi - (np.array([w, h]) - 2))
        if not shift.any():
            break
        t[:2] += shift * (verts[:, 2] + t[2]).mean() / f
    return t


def _pose_bodies(models: dict, spec: DatasetSpec, gender, betas, pose, index: range):
    """Vertices [n, 6890, 3], 49 joints [n, 49, 3] and root joint [n, 3] of samples ``index``
    (float64), with the gendered model where the set stores the gender, else the neutral."""
    import torch
    idx = list(index)
    n = len(idx)
    verts, joints, root = np.zeros((n, 6890, 3)), np.zeros((n, 49, 3)), np.zeros((n, 3))
    if spec.gendered:
        groups = [(name, [k for k, i in enumerate(idx) if gender[i] == code])
                  for code, name in (("m", "male"), ("f", "female"))]
    else:
        groups = [("neutral", list(range(n)))]
    for name, sel in groups:
        if not sel:
            continue
        rows = [idx[k] for k in sel]
        with torch.no_grad():
            out = models[name](betas=torch.as_tensor(betas[rows]),
                               body_pose=torch.as_tensor(pose[rows, 3:]),
                               global_orient=torch.as_tensor(pose[rows, :3]))
        verts[sel] = out.vertices.numpy()
        joints[sel] = out.joints.numpy()
        root[sel] = out.smpl_joints[:, 0].numpy()
    return verts, joints, root


def _generate_dataset(key: str, n: int, img_size: int, paths: DataPaths, models: dict,
                      seed: int, log: Callable | None) -> Path:
    spec = DATASET_SPECS[key]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    names, seqs = _names(spec, n, rng)
    folder = paths.images_dir / DATASET_FOLDERS[spec.name]

    # subjects / sequences: gender, shape, clothes, background seed, image size, focal
    seq_ids = sorted(set(seqs))
    seq = {}
    for q in seq_ids:
        first = seqs.index(q)
        a = spec.aspect[int(rng.integers(len(spec.aspect)))]
        w, h = _even(a[0] * img_size), _even(a[1] * img_size)
        diag = math.sqrt(w * w + h * h)
        seq[q] = dict(gender=_seq_gender(spec, names[first], rng),
                      betas=np.clip(rng.normal(0, 0.8, 10), -2.5, 2.5),
                      clothes=_clothes(rng), bg_seed=int(rng.integers(2 ** 31)), w=w, h=h,
                      f=diag * (rng.uniform(0.85, 1.15) if spec.focal else 1.0))
    gender = [seq[q]["gender"] for q in seqs]
    betas = np.stack([seq[q]["betas"] for q in seqs])
    pose = np.zeros((n, 72))
    for i in range(n):
        pose[i, :3] = sample_global_orient(rng, spec.tilt)
        pose[i, 3:] = sample_body_pose(rng, spec.spread)

    faces = models["neutral"].faces.astype(np.int64)
    lbs_w = models["neutral"].lbs_weights.double().numpy()
    part = np.zeros((n, 24, 3))
    openpose = np.zeros((n, 25, 3))
    S = np.zeros((n, 24, 4))
    center = np.zeros((n, 2))
    scale = np.zeros(n)
    focal = np.zeros(n)
    backgrounds: dict[int, np.ndarray] = {}
    chunk = 128                                 # bodies posed at a time (bounded memory)
    for i in range(n):
        if i % chunk == 0:
            verts, joints, root = _pose_bodies(models, spec, gender, betas, pose,
                                               range(i, min(n, i + chunk)))
        sq = seq[seqs[i]]
        w, h, f = sq["w"], sq["h"], sq["f"]
        fill = rng.uniform(*spec.fill)
        b = i % chunk
        t = _place(verts[b], root[b], f, w, h, fill, rng)
        v_cam, j_cam = verts[b] + t, joints[b] + t
        uv = _project(j_cam, f, w, h)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
        vis = np.zeros(24, bool)
        vis[list(spec.visible)] = True
        vis &= inside[25:]
        part[i, vis, :2] = uv[25:][vis]
        part[i, vis, 2] = 1.0
        S[i, :, :3] = j_cam[25:]
        S[i, :, 3] = 1.0
        body_h = np.ptp(uv[25:, 1])
        op_ok = inside[:25] & (rng.uniform(size=25) > 0.08)
        openpose[i, op_ok, :2] = uv[:25][op_ok] + rng.normal(0, 0.01 * body_h, (op_ok.sum(), 2))
        openpose[i, op_ok, 2] = rng.uniform(0.35, 0.95, op_ok.sum())
        if vis.sum() < 4:
            raise AssertionError(f"{key}[{i}]: only {vis.sum()} GT joints in view")
        lo, hi = part[i, vis, :2].min(0), part[i, vis, :2].max(0)
        center[i] = (lo + hi) / 2
        scale[i] = 1.2 * max(hi - lo) / 200.0
        focal[i] = f
        if spec.per_sequence:
            if seqs[i] not in backgrounds:
                backgrounds[seqs[i]] = _background(np.random.default_rng(sq["bg_seed"]), h, w)
            bg = backgrounds[seqs[i]]
            bg = np.clip(bg.astype(np.int16) + rng.integers(-3, 4, bg.shape), 0,
                         255).astype(np.uint8)
        else:
            bg = _background(rng, h, w)
        img, _ = _draw_body(bg, v_cam, faces, lbs_w, sq["clothes"], f, rng)
        out_path = folder / names[i]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {out_path}")

    data = {"imgname": np.array(names), "center": center, "scale": scale, "part": part,
            "openpose": openpose}
    if spec.has_smpl:
        data.update(pose=pose, shape=betas, has_smpl=np.ones(n))
    if spec.has_3d:
        data["S"] = S
    if spec.gendered:
        data["gender"] = np.array(gender)
    if spec.focal:
        data["focal_length"] = focal
    assert set(data) == expected_keys(key), (key, sorted(data))
    npz = paths.data_dir / "datasets" / DATASET_FILES[spec.split][spec.name]
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, npz)
    return npz


# ---------------------------------------------------------------------------------------------
# occluders, regressors, mean parameters

def _occluders(rng: np.random.Generator, count: int = 40) -> np.ndarray:
    """Object array of RGBA uint8 patches (varied sizes, shapes, colours, textures)."""
    patches = []
    for _ in range(count):
        h, w = (int(x) for x in rng.integers(24, 140, 2))
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(0, 2)
            if kind == 0:
                c = (int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.7) * h))
                ax = (max(2, int(rng.uniform(0.2, 0.5) * w)),
                      max(2, int(rng.uniform(0.2, 0.5) * h)))
                cv2.ellipse(mask, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
            else:
                k = int(rng.integers(3, 8))
                ang = np.sort(rng.uniform(0, 2 * np.pi, k))
                rad = rng.uniform(0.25, 0.5, k)
                pts = np.stack([w / 2 + rad * w * np.cos(ang), h / 2 + rad * h * np.sin(ang)], 1)
                cv2.fillPoly(mask, [pts.astype(np.int32)], 255, cv2.LINE_AA)
        if mask.max() == 0:
            mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
        base = rng.uniform(0, 255, 3)
        low = cv2.resize(rng.normal(0, 30, (3, 3, 3)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
        rgb = np.clip(base + low + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        patches.append(np.dstack([rgb, mask]))
    arr = np.empty(len(patches), dtype=object)
    arr[:] = patches
    return arr


def _write_static(paths: DataPaths, seed: int, log) -> None:
    """Body models, regressors, mean parameters and occluders."""
    from datasets import synthetic_body as sb
    t0 = time.time()
    models = sb.write_body_models(paths.smpl_dir)
    extra, h36m = sb.extra_regressors(models["neutral"])
    _save_npy(paths.data_dir / "J_regressor_extra.npy", extra)
    _save_npy(paths.data_dir / "J_regressor_h36m.npy", h36m)
    mp = sb.mean_params(mean_pose())
    tmp = paths.data_dir / "smpl_mean_params.tmp.npz"
    np.savez(tmp, **mp)
    os.replace(tmp, paths.data_dir / "smpl_mean_params.npz")
    occ = _occluders(np.random.default_rng([seed, 7]))
    _save_npy(paths.data_dir / "VOC" / "pascal_occluders.npy", occ, allow_pickle=True)
    if log:
        log(f"  body models, regressors, mean params, occluders ({time.time() - t0:.1f} s)")


def _save_npy(path: Path, arr: np.ndarray, allow_pickle: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr, allow_pickle=allow_pickle)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the world

def _resolve_sizes(sizes: dict | None) -> dict:
    out = dict(DEFAULT_SIZES)
    for k, v in (sizes or {}).items():
        if k not in DEFAULT_SIZES:
            raise ValueError(f"unknown dataset {k!r} in sizes; expected keys like "
                             f"{sorted(DEFAULT_SIZES)}")
        if int(v) < 2:
            raise ValueError(f"sizes[{k!r}] = {v}: every set needs at least 2 samples")
        out[k] = int(v)
    return out


def _weights_present(root: Path, weights) -> bool:
    need = [config.BACKBONE_FILES[b] for b in weights if b in config.BACKBONE_FILES]
    need += [p for (m, b), p in config.AUX_FILES.items() if b in weights]
    return all((root / p).exists() for p in need)


def _write_weights(root: Path, weights, paths: DataPaths, log) -> None:
    if not weights:
        return
    try:
        from models.checkpoints import write_standin_weights
    except ImportError as e:
        if log:
            log(f"  note: stand-in network weights not written "
                f"(models.checkpoints.write_standin_weights unavailable: {e})")
        return
    t0 = time.time()
    write_standin_weights(root, backbones=tuple(weights), mean_params=paths.smpl_mean_params())
    if log:
        log(f"  stand-in weights for {', '.join(weights)} ({time.time() - t0:.1f} s)")


def build_world(root: str | os.PathLike = config.SYNTHETIC_ROOT, sizes: dict | None = None,
                img_size: int | None = None, seed: int | None = None, force: bool = False,
                weights=("resnet18",), log: Callable | None = print) -> Path:
    """Build (or reuse) the synthetic world under ``root``; returns ``Path(root)``.

    Args:
        root: the data root (``config.DataPaths(root)`` layout).
        sizes: samples per set, keys ``'<split>/<name>'`` (e.g. ``'train/h36m'``); missing keys
            take :data:`DEFAULT_SIZES`. None = defaults.
        img_size: base image side in pixels (3DPW images are 1.5x2 of it). None = 256.
        seed: generator seed. None = 0.
        force: rebuild even if a complete world is there.
        weights: backbones whose stand-in network weights to write ('resnet18', 'resnet',
            'hrnet'); () for none.
        log: progress printer (None: quiet).

    A complete world (``.complete`` present) is reused when every argument that was given
    matches what it was built with (None arguments match anything) and the generator version
    is the same; otherwise it is rebuilt. A folder that holds a data tree that this generator
    did not write is never overwritten.
    """
    root = Path(root)
    paths = DataPaths(root)
    manifest_path, marker = root / MANIFEST, root / MARKER
    want = {"version": GENERATOR_VERSION, "seed": 0 if seed is None else int(seed),
            "img_size": DEFAULT_IMG_SIZE if img_size is None else int(img_size),
            "sizes": _resolve_sizes(sizes)}
    weights = tuple(w for w in (weights or ()) if w)
    if unknown := [w for w in weights if w not in config.BACKBONE_FILES]:
        raise ValueError(f"unknown backbone(s) {unknown} for stand-in weights; choose from "
                         f"{sorted(config.BACKBONE_FILES)}")
    if marker.exists() and manifest_path.exists() and not force:
        have = json.loads(manifest_path.read_text())
        same = (have.get("version") == GENERATOR_VERSION
                and (seed is None or have.get("seed") == want["seed"])
                and (img_size is None or have.get("img_size") == want["img_size"])
                and (sizes is None or have.get("sizes") == want["sizes"]))
        if same:
            if not _weights_present(root, weights):
                _write_weights(root, weights, paths, log)
            return root
    previous = manifest_path.exists()     # an earlier (maybe partial) synthetic build
    if not previous:
        foreign = [p for p in (paths.smpl_dir / "SMPL_NEUTRAL.pkl", paths.data_dir / "datasets",
                               *(paths.images_dir / d for d in set(DATASET_FOLDERS.values())))
                   if p.exists() and (p.is_file() or any(p.iterdir()))]
        if foreign:
            raise RuntimeError(f"{root} holds a data tree that the synthetic generator did not "
                               f"write ({foreign[0]}; no {MANIFEST}); refusing to overwrite "
                               "it. Choose another --root for the synthetic world.")

    t_start = time.time()
    if log:
        log(f"building the synthetic world in {root} (seed {want['seed']}, images "
            f"{want['img_size']} px, {sum(want['sizes'].values())} samples)")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    manifest_path.write_text(strict_dumps({**want, "complete": False}, indent=2))
    if previous:                                     # stale images of an earlier build
        for name in set(DATASET_FOLDERS.values()):
            d = paths.images_dir / name
            if d.is_dir():
                shutil.rmtree(d)
    _write_static(paths, want["seed"], log)

    import torch
    from models.smpl import build_smpl
    models = {g: build_smpl(paths, g, dtype=torch.float64) for g in ("neutral", "male", "female")}
    for key, n in want["sizes"].items():
        t0 = time.time()
        _generate_dataset(key, n, want["img_size"], paths, models, want["seed"], log)
        if log:
            log(f"  {key}: {n} images ({time.time() - t0:.1f} s)")
    _write_weights(root, weights, paths, log)
    manifest_path.write_text(strict_dumps({**want, "complete": True}, indent=2))
    marker.write_text(f"built in {time.time() - t_start:.1f} s\n")
    if log:
        log(f"done in {time.time() - t_start:.1f} s: use --data_root {root}")
    return root


def _parse_sizes(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--sizes item {item!r} is not KEY=N")
        k, v = item.split("=", 1)
        out[k.strip()] = int(v)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m datasets.synthetic",
                                description="Write the synthetic stand-in world (body model, "
                                            "regressors, SPIN-format datasets, images).")
    p.add_argument("--root", default=config.SYNTHETIC_ROOT,
                   help=f"data root to write (default {config.SYNTHETIC_ROOT})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--img_size", type=int, default=None,
                   help=f"base image side in pixels (default {DEFAULT_IMG_SIZE}; "
                        f"{TINY_IMG_SIZE} with --tiny)")
    p.add_argument("--n_train", type=int, default=None, help="samples in every training set")
    p.add_argument("--n_test", type=int, default=None, help="samples in every test set")
    p.add_argument("--sizes", type=_parse_sizes, default={},
                   help="per-set sizes, e.g. 'train/h36m=50,test/3dpw=20'")
    p.add_argument("--tiny", action="store_true",
                   help=f"{TINY_SIZES['train/h36m']} samples per set at {TINY_IMG_SIZE} px")
    p.add_argument("--weights", default="resnet18",
                   help="comma-separated backbones whose stand-in weights to write "
                        "(resnet18, resnet, hrnet; '' for none; default resnet18)")
    p.add_argument("--force", action="store_true", help="rebuild even if the world is complete")
    p.add_argument("--raw", action="store_true",
                   help="also write the 3DPW sets in the official raw layout (sequenceFiles/ "
                        "beside imageFiles/ in datasets/pw3d; see datasets/synthetic_raw.py)")
    a = p.parse_args(argv)
    sizes = dict(TINY_SIZES) if a.tiny else dict(DEFAULT_SIZES)
    for k in sizes:
        if a.n_train is not None and k.startswith("train/"):
            sizes[k] = a.n_train
        if a.n_test is not None and k.startswith("test/"):
            sizes[k] = a.n_test
    sizes.update(a.sizes)
    img_size = a.img_size if a.img_size is not None else (TINY_IMG_SIZE if a.tiny
                                                          else DEFAULT_IMG_SIZE)
    weights = tuple(w.strip() for w in a.weights.split(",") if w.strip())
    try:
        root = build_world(a.root, sizes=sizes, img_size=img_size, seed=a.seed, force=a.force,
                           weights=weights)
        if a.raw:
            from datasets.synthetic_raw import write_raw_3dpw
            write_raw_3dpw(root, seed=a.seed)
        return root
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main(sys.argv[1:])
