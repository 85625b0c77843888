"""One synthetic data set: posed bodies placed in view, rendered to JPEGs, annotated in an npz.

:func:`write_dataset` generates the set ``'<split>/<name>'`` of :data:`DATASET_SPECS` from one
numpy generator (seeded by the world seed and the set's name), in this order: the image names;
per sequence a subject (gender, shape, clothes, background seed, image size, focal length);
per sample a pose; then, sample by sample, the camera translation that puts the body in view
(:func:`_place`), its exact annotations (GT joints ``S``, their projections ``part``, noisy
``openpose`` detections, SPIN's bbox ``center`` / ``scale``) and its image (background, shaded
body). The npz is written last (its keys: :func:`expected_keys`). See :mod:`datasets.synthetic`
for the conventions (camera frame, focal length, principal point).
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import cv2
import numpy as np

from config import DATASET_FILES, DATASET_FOLDERS, DataPaths
from datasets.synthetic_images import background, clothes, draw_body
from datasets.synthetic_poses import sample_body_pose, sample_global_orient
from datasets.synthetic_specs import (DATASET_SPECS, DatasetSpec, expected_keys, image_names,
                                      sequence_gender)

__all__ = ["write_dataset"]

_CHUNK = 128                     # bodies posed at a time (bounded memory)


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


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


def _sequences(spec: DatasetSpec, names: list[str], seqs: list[int], img_size: int,
               rng: np.random.Generator) -> dict[int, dict]:
    """Per sequence: the subject's gender, shape and clothes, the background seed, the image
    size (one of the set's aspects) and the focal length (the diagonal, jittered where the set
    stores it)."""
    seq = {}
    for q in sorted(set(seqs)):
        first = seqs.index(q)
        a = spec.aspect[int(rng.integers(len(spec.aspect)))]
        w, h = _even(a[0] * img_size), _even(a[1] * img_size)
        diag = math.sqrt(w * w + h * h)
        seq[q] = dict(gender=sequence_gender(spec, names[first], rng),
                      betas=np.clip(rng.normal(0, 0.8, 10), -2.5, 2.5),
                      clothes=clothes(rng), bg_seed=int(rng.integers(2 ** 31)), w=w, h=h,
                      f=diag * (rng.uniform(0.85, 1.15) if spec.focal else 1.0))
    return seq


def _poses(spec: DatasetSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 72] axis-angle poses: camera-frame root orientation, then the body pose."""
    pose = np.zeros((n, 72))
    for i in range(n):
        pose[i, :3] = sample_global_orient(rng, spec.tilt)
        pose[i, 3:] = sample_body_pose(rng, spec.spread)
    return pose


def _annotate(ann: dict, i: int, spec: DatasetSpec, sq: dict, verts: np.ndarray,
              joints: np.ndarray, root: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Place sample ``i``'s body (posed at the origin) in view and fill its rows of ``ann``;
    returns its camera-frame vertices."""
    w, h, f = sq["w"], sq["h"], sq["f"]
    fill = rng.uniform(*spec.fill)
    t = _place(verts, root, f, w, h, fill, rng)
    v_cam, j_cam = verts + t, joints + t
    uv = _project(j_cam, f, w, h)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    vis = np.zeros(24, bool)
    vis[list(spec.visible)] = True
    vis &= inside[25:]
    part = ann["part"][i]
    part[vis, :2] = uv[25:][vis]
    part[vis, 2] = 1.0
    ann["S"][i, :, :3] = j_cam[25:]
    ann["S"][i, :, 3] = 1.0
    body_h = np.ptp(uv[25:, 1])
    op_ok = inside[:25] & (rng.uniform(size=25) > 0.08)
    openpose = ann["openpose"][i]
    openpose[op_ok, :2] = uv[:25][op_ok] + rng.normal(0, 0.01 * body_h, (op_ok.sum(), 2))
    openpose[op_ok, 2] = rng.uniform(0.35, 0.95, op_ok.sum())
    if vis.sum() < 4:
        raise AssertionError(f"{spec.split}/{spec.name}[{i}]: only {vis.sum()} GT joints in view")
    lo, hi = part[vis, :2].min(0), part[vis, :2].max(0)
    ann["center"][i] = (lo + hi) / 2
    ann["scale"][i] = 1.2 * max(hi - lo) / 200.0
    ann["focal_length"][i] = f
    return v_cam


def _background(spec: DatasetSpec, q: int, sq: dict, cache: dict,
                rng: np.random.Generator) -> np.ndarray:
    """The sample's background: its sequence's (drawn once, then jittered per frame) or a new
    one per image."""
    if not spec.per_sequence:
        return background(rng, sq["h"], sq["w"])
    if q not in cache:
        cache[q] = background(np.random.default_rng(sq["bg_seed"]), sq["h"], sq["w"])
    bg = cache[q]
    return np.clip(bg.astype(np.int16) + rng.integers(-3, 4, bg.shape), 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"could not write {path}")


def _write_npz(spec: DatasetSpec, paths: DataPaths, names: list[str], ann: dict,
               pose: np.ndarray, betas: np.ndarray, gender: list[str]) -> Path:
    """The set's npz with the keys its real counterpart has (:func:`expected_keys`)."""
    n = len(names)
    data = {"imgname": np.array(names), "center": ann["center"], "scale": ann["scale"],
            "part": ann["part"], "openpose": ann["openpose"]}
    if spec.has_smpl:
        data.update(pose=pose, shape=betas, has_smpl=np.ones(n))
    if spec.has_3d:
        data["S"] = ann["S"]
    if spec.gendered:
        data["gender"] = np.array(gender)
    if spec.focal:
        data["focal_length"] = ann["focal_length"]
    key = f"{spec.split}/{spec.name}"
    assert set(data) == expected_keys(key), (key, sorted(data))
    npz = paths.data_dir / "datasets" / DATASET_FILES[spec.split][spec.name]
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, npz)
    return npz


def write_dataset(key: str, n: int, img_size: int, paths: DataPaths, models: dict,
                  seed: int) -> Path:
    """Generate the set ``key`` (``'<split>/<name>'``) of ``n`` samples at base image side
    ``img_size`` under ``paths``, posing the bodies with ``models`` (float64 SMPL by gender:
    'neutral', 'male', 'female'); returns the npz written."""
    spec = DATASET_SPECS[key]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    names, seqs = image_names(spec, n, rng)
    folder = paths.images_dir / DATASET_FOLDERS[spec.name]
    seq = _sequences(spec, names, seqs, img_size, rng)
    gender = [seq[q]["gender"] for q in seqs]
    betas = np.stack([seq[q]["betas"] for q in seqs])
    pose = _poses(spec, n, rng)
    faces = models["neutral"].faces.astype(np.int64)
    lbs_w = models["neutral"].lbs_weights.double().numpy()
    ann = {"part": np.zeros((n, 24, 3)), "openpose": np.zeros((n, 25, 3)),
           "S": np.zeros((n, 24, 4)), "center": np.zeros((n, 2)), "scale": np.zeros(n),
           "focal_length": np.zeros(n)}
    backgrounds: dict[int, np.ndarray] = {}
    for i in range(n):
        if i % _CHUNK == 0:
            verts, joints, root = _pose_bodies(models, spec, gender, betas, pose,
                                               range(i, min(n, i + _CHUNK)))
        sq, b = seq[seqs[i]], i % _CHUNK
        v_cam = _annotate(ann, i, spec, sq, verts[b], joints[b], root[b], rng)
        bg = _background(spec, seqs[i], sq, backgrounds, rng)
        img, _ = draw_body(bg, v_cam, faces, lbs_w, sq["clothes"], sq["f"], rng)
        _write_jpeg(folder / names[i], img)
    return _write_npz(spec, paths, names, ann, pose, betas, gender)
