"""The synthetic world's data sets: how each mimics its real one, and how one is generated.

:data:`DATASET_SPECS` holds a :class:`DatasetSpec` per ``'<split>/<name>'`` of
``config.DATASET_FILES``. :func:`write_dataset` draws a set from one numpy generator (seeded by the
world seed and the set's name): image names in the real set's style, a subject per sequence (gender
(H36M: the real subject's), shape, clothes, background, image size, focal length), a pose per
sample, then per sample the camera translation that puts the body in view, the exact annotations and
the image (:mod:`datasets.synthetic_images`); conventions: :mod:`datasets.synthetic`.
"""
from __future__ import annotations

import math
import zlib
from collections import namedtuple
from functools import partial
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from datasets.synthetic_images import background, clothes, draw_body
from utils.atomic import atomic_path

__all__ = ["DatasetSpec", "DATASET_SPECS", "expected_keys", "mean_pose", "write_dataset",
           "write_file"]


# How one synthetic set mimics its real one: split, name (config.DATASET_FILES), aspects (W, H)
# in units of img_size (several: one drawn per sequence), whether the npz has S, pose / shape /
# has_smpl, gender (then rendered with the gendered model), focal_length (else the loader uses
# the diagonal); the GT-24 joints the real set annotates, person size (range, as a fraction of
# the limiting image side), pose variety, std of the body's lean (rad), whether subject,
# background and camera are shared per sequence.
DatasetSpec = namedtuple("DatasetSpec", "split name aspect has_3d has_smpl gendered focal "
                                        "visible fill spread tilt per_sequence")


# GT-24 joints annotated in the real 2D sets (SPIN's order, constants.JOINT_NAMES[25:])
_COCO_J24, _MPII_J24, _ALL_J24 = tuple(range(12)) + (19, 20, 21, 22, 23), tuple(range(16)), \
    tuple(range(24))
_SQUARE, _COCO_AR = ((1, 1),), ((1.25, 1), (1, 1.25), (1, 1), (1.33, 1))
_SPECS = {  # key: aspects, keys (3: S, s: pose/shape, g: gender, f: focal_length), visible,
    # fill, spread, tilt, per sequence
    "train/h36m": (_SQUARE, "3sg", _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "train/mpii": (((1.25, 1),), "s", _MPII_J24, (0.45, 0.85), 1.1, 0.2, False),
    "train/coco": (_COCO_AR, "s", _COCO_J24, (0.35, 0.85), 1.1, 0.2, False),
    "train/mpi-inf-3dhp": (_SQUARE, "3s", _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "train/3dpw": (((1.5, 2),), "3sgf", _ALL_J24, (0.4, 0.75), 0.7, 0.08, True),
    "test/3dpw": (((1.5, 2),), "3sgf", _ALL_J24, (0.4, 0.75), 0.7, 0.08, True),
    "test/h36m-p1": (_SQUARE, "3sg", _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/h36m-p2": (_SQUARE, "3sg", _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/mpi-inf-3dhp": (_SQUARE, "3", _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "test/coco": (_COCO_AR, "s", _COCO_J24, (0.35, 0.85), 1.1, 0.2, False)}
DATASET_SPECS = {key: DatasetSpec(*key.split("/"), aspect, *(c in keys for c in "3sgf"), *rest)
                 for key, (aspect, keys, *rest) in _SPECS.items()}
assert set(DATASET_SPECS) == {f"{s}/{n}" for s in DATASET_FILES for n in DATASET_FILES[s]}
_H36M_GENDER = {1: "f", 5: "f", 6: "m", 7: "f", 8: "m", 9: "m", 11: "m"}
_H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing",
                 "Purchases", "Sitting", "Smoking", "TakingPhoto", "Waiting", "Walking",
                 "WalkDog", "WalkTogether")
_H36M_CAMS = ("54138969", "55011271", "58860488", "60457274")
_PW3D = {"train": ("courtyard_arguing_00", "courtyard_backpack_00", "courtyard_basketball_00",
                   "downtown_bar_00", "outdoors_climbing_00", "outdoors_slalom_00"),
         "test": ("downtown_walking_00", "downtown_stairs_00", "flat_guitar_01",
                  "office_phoneCall_00", "outdoors_fencing_01", "downtown_runForBus_00")}
# per body joint 1..23: lo, hi of its x, y, z axis-angle components in SMPL's joint frames
# (x left, y up, z forward), and the resting pose they are drawn around (arms a little down,
# knees a little bent)
_R = np.array([
    [-1.6, .5, -.5, .5, -.2, .7], [-1.6, .5, -.5, .5, -.7, .2], [-.3, .6, -.3, .3, -.25, .25],
    [0, 2.2, -.05, .05, -.05, .05], [0, 2.2, -.05, .05, -.05, .05], [-.2, .3, -.2, .2, -.15, .15],
    [-.4, .6, -.2, .2, -.2, .2], [-.4, .6, -.2, .2, -.2, .2], [-.2, .3, -.2, .2, -.15, .15],
    [-.3, .3, -.1, .1, -.1, .1], [-.3, .3, -.1, .1, -.1, .1], [-.4, .5, -.5, .5, -.3, .3],
    [-.1, .1, -.15, .15, -.2, .3], [-.1, .1, -.15, .15, -.3, .2], [-.3, .4, -.5, .5, -.3, .3],
    [-.6, .6, -1.2, .5, -1.45, .6], [-.6, .6, -.5, 1.2, -.6, 1.45], [-.2, .2, -2.3, 0, -.1, .1],
    [-.2, .2, 0, 2.3, -.1, .1], [-.5, .5, -.3, .3, -.5, .5], [-.5, .5, -.3, .3, -.5, .5],
    [-.2, .2, -.2, .2, -.2, .2], [-.2, .2, -.2, .2, -.2, .2]])
_REST = {1: (-0.1, 0, 0.05), 2: (-0.1, 0, -0.05), 4: (0.25, 0, 0), 5: (0.25, 0, 0),
         16: (0, -0.1, -1.1), 17: (0, 0.1, 1.1), 18: (0, -0.35, 0), 19: (0, 0.35, 0)}
_LO, _HI = _R[:, 0::2], _R[:, 1::2]
_MID = np.array([_REST.get(j, (0.0, 0.0, 0.0)) for j in range(1, 24)], dtype=np.float64)
_CHUNK = 128                     # bodies posed at a time (bounded memory)


def write_file(path: Path, write: Callable) -> None:
    """``write(fh)`` into ``path`` atomically (a concurrent writer never leaves half a file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def expected_keys(key: str) -> set[str]:
    """The npz keys the synthetic set ``'<split>/<name>'`` carries."""
    s = DATASET_SPECS[key]
    return {"imgname", "center", "scale", "part", "openpose"} | {
        k for ks, on in (("pose shape has_smpl", s.has_smpl), ("S", s.has_3d),
                         ("gender", s.gendered), ("focal_length", s.focal)) if on
        for k in ks.split()}


def _image_names(spec: DatasetSpec, n: int, rng) -> tuple[list[str], list[int]]:
    """Image names in the real set's style and the sequence id of every sample."""
    train, p2, pool, names = spec.split == "train", spec.name == "h36m-p2", _PW3D[spec.split], []
    subjects, coco = ((1, 5, 6, 7, 8), "train2014") if train else ((9, 11), "val2014")
    for q, k in (divmod(i, 10) for i in range(n)):        # 10 samples per sequence
        if spec.name.startswith("h36m"):                    # p1 and p2 share the folder
            act = _H36M_ACTIONS[(q // len(subjects)) % len(_H36M_ACTIONS)]
            names.append(f"images/S{subjects[q % len(subjects)]}_{act}_{2 if p2 else 1}."
                         f"{_H36M_CAMS[3 if p2 else q % 4]}_{k * 5 + 1:06d}.jpg")
        elif spec.name == "3dpw":
            names.append(f"imageFiles/{pool[q % len(pool)]}/image_"
                         f"{(q // len(pool)) * 1000 + k * 3:05d}.jpg")
        elif spec.name == "mpi-inf-3dhp" and train:
            names.append(f"S{q % 8 + 1}/Seq{q // 8 % 2 + 1}/imageFrames/video_{q % 9}/"
                         f"frame_{k * 10 + 1:06d}.jpg")
        elif spec.name == "mpi-inf-3dhp":
            names.append(f"mpi_inf_3dhp_test_set/TS{q % 6 + 1}/imageSequence/"
                         f"img_{q // 6 * 10 + k + 1:06d}.jpg")
        elif spec.name == "mpii":
            names.append(f"images/{int(rng.integers(1e8, 1e9)):09d}.jpg")
        else:  # coco
            names.append(f"{coco}/COCO_{coco}_{int(rng.integers(1e5, 6e5)):012d}.jpg")
    if len(set(names)) != len(names):   # random ids collided: make them unique
        names = [f"{Path(s).parent}/{Path(s).stem}_{i}{Path(s).suffix}"
                 for i, s in enumerate(names)]
    return names, [i // 10 if spec.per_sequence else i for i in range(n)]


def _rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])}[axis]


def mean_pose() -> np.ndarray:
    """[72] axis-angle: upright facing the camera (camera frame), the resting body pose."""
    return np.concatenate([Rotation.from_matrix(_rot("x", math.pi)).as_rotvec(), _MID.reshape(69)])


def _project(points: np.ndarray, f: float, w: int, h: int) -> np.ndarray:
    """[..., 3] camera frame -> [..., 2] pixels, principal point (W/2, H/2)."""
    return f * points[..., :2] / points[..., 2:3] + np.array([w / 2.0, h / 2.0])


def _place(verts: np.ndarray, root: np.ndarray, f: float, w: int, h: int, fill: float,
           rng: np.random.Generator) -> np.ndarray:
    """Camera translation [3] putting the body (posed at the origin) in view at size ``fill``."""
    rel = verts - root
    ext_x, ext_y = np.ptp(rel[:, 0]), np.ptp(rel[:, 1])
    z = max(f * max(ext_x / w, ext_y / h) / fill, 1.2 + max(0.0, -rel[:, 2].min()))
    mid = (rel.max(0) + rel.min(0)) / 2
    u, v = (s / 2.0 + rng.uniform(-0.8, 0.8) * (max(0.0, (1 - e * f / z / s)) * s / 2)
            for e, s in ((ext_x, w), (ext_y, h)))       # centre: shifted within the free room
    t = np.array([(u - w / 2.0) * z / f - mid[0], (v - h / 2.0) * z / f - mid[1], z]) - root
    for _ in range(3):   # keep the projected body inside (perspective: the above is approximate)
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
    idx = np.asarray(index)
    verts, joints, root = (np.zeros((len(idx), *s)) for s in ((6890, 3), (49, 3), (3,)))
    model = np.array([("male" if gender[i] == "m" else "female") if spec.gendered else "neutral"
                      for i in idx])
    for name in np.unique(model):
        sel, rows = np.flatnonzero(model == name), idx[model == name]
        with torch.no_grad():
            out = models[name](betas=torch.as_tensor(betas[rows]),
                               body_pose=torch.as_tensor(pose[rows, 3:]),
                               global_orient=torch.as_tensor(pose[rows, :3]))
        verts[sel], joints[sel] = out.vertices.numpy(), out.joints.numpy()
        root[sel] = out.smpl_joints[:, 0].numpy()
    return verts, joints, root


def _sequences(spec: DatasetSpec, names: list[str], seqs: list[int], img_size: int,
               rng: np.random.Generator) -> dict[int, dict]:
    """Per sequence: the subject (gender, betas, clothes), background seed, image size (one of
    the set's aspects) and focal length (the diagonal, jittered where the set stores it)."""
    seq = {}
    for q in sorted(set(seqs)):
        a = spec.aspect[int(rng.integers(len(spec.aspect)))]
        w, h = (max(2, int(round(x * img_size / 2.0)) * 2) for x in a)   # even
        gender = _H36M_GENDER[int(names[seqs.index(q)].split("/")[1].split("_")[0][1:])] \
            if spec.name.startswith("h36m") else "m" if rng.uniform() < 0.5 else "f"
        seq[q] = dict(gender=gender, betas=np.clip(rng.normal(0, 0.8, 10), -2.5, 2.5),
                      clothes=clothes(rng), bg_seed=int(rng.integers(2 ** 31)), w=w, h=h,
                      f=math.sqrt(w * w + h * h) * (rng.uniform(0.85, 1.15) if spec.focal
                                                    else 1.0))
    return seq


def _annotate(ann: dict, i: int, spec: DatasetSpec, sq: dict, verts: np.ndarray,
              joints: np.ndarray, root: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Place sample ``i``'s body (posed at the origin) in view and fill its rows of ``ann``;
    returns its camera-frame vertices."""
    w, h, f = sq["w"], sq["h"], sq["f"]
    t = _place(verts, root, f, w, h, rng.uniform(*spec.fill), rng)
    v_cam, j_cam = verts + t, joints + t
    uv = _project(j_cam, f, w, h)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    vis = np.isin(np.arange(24), spec.visible) & inside[25:]
    part, openpose = ann["part"][i], ann["openpose"][i]
    part[vis, :2], part[vis, 2] = uv[25:][vis], 1.0
    ann["S"][i, :, :3], ann["S"][i, :, 3] = j_cam[25:], 1.0
    body_h = np.ptp(uv[25:, 1])
    op_ok = inside[:25] & (rng.uniform(size=25) > 0.08)
    openpose[op_ok, :2] = uv[:25][op_ok] + rng.normal(0, 0.01 * body_h, (op_ok.sum(), 2))
    openpose[op_ok, 2] = rng.uniform(0.35, 0.95, op_ok.sum())
    if vis.sum() < 4:
        raise AssertionError(f"{spec.split}/{spec.name}[{i}]: only {vis.sum()} GT joints in view")
    lo, hi = part[vis, :2].min(0), part[vis, :2].max(0)
    ann["center"][i], ann["scale"][i] = (lo + hi) / 2, 1.2 * max(hi - lo) / 200.0
    ann["focal_length"][i] = f
    return v_cam


def write_dataset(key: str, n: int, img_size: int, paths: DataPaths, models: dict,
                  seed: int) -> Path:
    """Generate the set ``key`` (``'<split>/<name>'``) of ``n`` samples at base image side
    ``img_size`` under ``paths``, posing the bodies with ``models`` (float64 SMPL by gender:
    'neutral', 'male', 'female'); returns the npz written."""
    spec = DATASET_SPECS[key]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    names, seqs = _image_names(spec, n, rng)
    folder = paths.images_dir / DATASET_FOLDERS[spec.name]
    seq = _sequences(spec, names, seqs, img_size, rng)
    gender = [seq[q]["gender"] for q in seqs]
    betas = np.stack([seq[q]["betas"] for q in seqs])
    pose, half = np.zeros((n, 72)), (_HI - _LO) / 2
    for i in range(n):  # camera-frame root orientation (upright, random yaw, small lean), body
        R = _rot("x", math.pi) @ _rot("z", rng.normal(0, spec.tilt / 2)) \
            @ _rot("x", rng.normal(0, spec.tilt)) @ _rot("y", rng.uniform(-math.pi, math.pi))
        pose[i, :3] = Rotation.from_matrix(R).as_rotvec()
        x = np.clip(rng.normal(0.0, 0.45, half.shape), -1.2, 1.2)
        pose[i, 3:] = np.clip(_MID + spec.spread * half * x, _LO, _HI).reshape(69)
    faces = models["neutral"].faces.astype(np.int64)
    lbs_w = models["neutral"].lbs_weights.double().numpy()
    ann = {k: np.zeros((n, *s)) for k, s in (("part", (24, 3)), ("openpose", (25, 3)),
           ("S", (24, 4)), ("center", (2,)), ("scale", ()), ("focal_length", ()))}
    backgrounds: dict[int, np.ndarray] = {}
    for i in range(n):
        if i % _CHUNK == 0:
            verts, joints, root = _pose_bodies(models, spec, gender, betas, pose,
                                               range(i, min(n, i + _CHUNK)))
        sq, b, q = seq[seqs[i]], i % _CHUNK, seqs[i]
        v_cam = _annotate(ann, i, spec, sq, verts[b], joints[b], root[b], rng)
        if spec.per_sequence:   # the sequence's background, drawn once, jittered per frame
            if q not in backgrounds:
                backgrounds[q] = background(np.random.default_rng(sq["bg_seed"]), sq["h"],
                                            sq["w"]).astype(np.int16)
            jitter = rng.integers(-3, 4, backgrounds[q].shape)
            bg = np.clip(backgrounds[q] + jitter, 0, 255).astype(np.uint8)
        else:                   # a new one per image
            bg = background(rng, sq["h"], sq["w"])
        img, _ = draw_body(bg, v_cam, faces, lbs_w, sq["clothes"], sq["f"], rng)
        path = folder / names[i]
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {path}")
    data = {"imgname": np.array(names), "center": ann["center"], "scale": ann["scale"],
            "part": ann["part"], "openpose": ann["openpose"], "pose": pose, "shape": betas,
            "has_smpl": np.ones(n), "S": ann["S"], "gender": np.array(gender),
            "focal_length": ann["focal_length"]}      # the real set's keys, in SPIN's order
    npz = paths.data_dir / "datasets" / DATASET_FILES[spec.split][spec.name]
    write_file(npz, partial(np.savez, **{k: v for k, v in data.items() if k in expected_keys(key)}))
    return npz
