"""The synthetic world's 3DPW sets in the official raw layout (``datasets.synthetic --raw``).

    python -m datasets.synthetic --root data/synthetic --raw
    python -m datasets.prepare 3dpw --raw data/synthetic/datasets/pw3d --out /tmp/pw3d \
        --data_root data/synthetic --with_focal_length

:func:`write_raw_3dpw` turns the world's 3DPW npz files back into what the official download holds
(:mod:`datasets.pw3d_raw`), to test the preparation tool end to end: the world's images as
``imageFiles/<sequence>/image_%05d.jpg`` and ``sequenceFiles/{test,train}/<sequence>.pkl``, an actor
per subject, ``campose_valid`` true exactly at the frames with an image, random world-to-camera
``cam_poses`` per frame, world-frame ``poses`` and ``trans`` that reproduce the npz ``S``. A second
camera under a sequence name goes to ``<sequence>_<k>.pkl`` (a file has one ``cam_intrinsics``).
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import zlib
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from config import DATASET_FOLDERS, DataPaths
from datasets.pw3d_raw import BODY25_FROM_COCO18
from datasets.synthetic_sets import write_file
from utils.safe_npz import read_npz

__all__ = ["write_raw_3dpw"]

_NAME = re.compile(r"^imageFiles/([^/]+)/image_(\d{5})\.jpg$")


def _subjects(d: dict, images: Path) -> dict:
    """{(sequence, focal, W, H): {actor (gender, betas): [sample indices]}} of one npz."""
    from PIL import Image
    files: dict = {}
    for i, name in enumerate(d["imgname"].astype(str)):
        if not (m := _NAME.match(name)):
            raise ValueError(f"3dpw imgname {name!r} is not imageFiles/<seq>/image_%05d.jpg")
        with Image.open(images / name) as im:
            w, h = im.size
        actor = (str(d["gender"][i]), tuple(np.round(d["shape"][i], 12)))
        files.setdefault((m.group(1), float(d["focal_length"][i]), w, h), {}) \
            .setdefault(actor, []).append(i)
    return files


def _actor(d: dict, idx: list, frames: np.ndarray, cam: np.ndarray, model, n: int) -> dict:
    """World-frame arrays [n, ...] of one actor from its npz samples ``idx`` at ``frames``."""
    import torch
    from scipy.spatial.transform import Rotation
    R_c, t_c = cam[frames, :3, :3], cam[frames, :3, 3]
    pose = d["pose"][idx].astype(np.float64).copy()
    R_g = Rotation.from_rotvec(pose[:, :3]).as_matrix()
    pose[:, :3] = Rotation.from_matrix(np.transpose(R_c, (0, 2, 1)) @ R_g).as_rotvec()
    betas = d["shape"][idx[0]].astype(np.float64)
    with torch.no_grad():
        j = model(betas=torch.as_tensor(np.repeat(betas[None], len(idx), 0)),
                  body_pose=torch.as_tensor(pose[:, 3:]),
                  global_orient=torch.as_tensor(pose[:, :3])).joints[:, 25:].numpy()
    s_world = np.einsum("mkj,mji->mki", d["S"][idx, :, :3] - t_c[:, None], R_c)  # R_c^T (S-t)
    out = {"poses": np.zeros((n, 72)), "trans": np.zeros((n, 3)),
           "poses2d": np.zeros((n, 3, 18)), "campose_valid": np.zeros(n, np.int64)}
    out["poses"][frames], out["trans"][frames] = pose, (s_world - j).mean(1)
    for b, c in enumerate(BODY25_FROM_COCO18):     # poses2d: COCO-18 order, [3, 18]
        if c >= 0:
            out["poses2d"][frames, :, c] = d["openpose"][idx, b]
    out["campose_valid"][frames] = 1
    return out


def _write_split(d: dict, split: str, images: Path, out: Path, models: dict,
                 seed: int) -> list[Path]:
    """One split's sequence files (a file per sequence and camera, in the world's sample
    order) and the images they need under ``out``; returns the files written."""
    from scipy.spatial.transform import Rotation
    written, count = [], {}
    for (seq, f, w, h), actors in _subjects(d, images).items():   # order: first samples
        k = count[seq] = count.get(seq, -1) + 1
        stem = seq if k == 0 else f"{seq}_{k}"
        frames = {a: np.array([int(_NAME.match(str(d["imgname"][i])).group(2)) for i in idx])
                  for a, idx in actors.items()}
        n = int(max(fr.max() for fr in frames.values())) + 1
        # random world-to-camera transforms: yaw anywhere, small tilt and roll, an offset
        rng = np.random.default_rng([seed, zlib.crc32(f"{split}/{stem}".encode())])
        angles = np.stack([rng.uniform(-np.pi, np.pi, n), rng.normal(0, 0.15, n),
                           rng.normal(0, 0.05, n)], 1)
        cam = np.tile(np.eye(4), (n, 1, 1))
        cam[:, :3, :3] = Rotation.from_euler("yxz", angles).as_matrix()
        cam[:, :3, 3] = rng.normal(0, 1.5, (n, 3))
        per = [_actor(d, idx, frames[a], cam, models["male" if a[0] == "m" else "female"], n)
               for a, idx in actors.items()]
        seq_file = {
            "sequence": seq, "genders": [a[0] for a in actors],
            "betas": [d["shape"][idx[0]].astype(np.float64) for idx in actors.values()],
            **{k: [p[k] for p in per] for k in ("poses", "trans", "poses2d", "campose_valid")},
            "cam_poses": cam, "img_frame_ids": np.arange(n),
            "cam_intrinsics": np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1.0]])}
        path = out / "sequenceFiles" / split / f"{stem}.pkl"
        write_file(path, partial(pickle.dump, seq_file, protocol=2))
        for i in (i for idx in actors.values() for i in idx):    # the images, linked
            src, dst = images / str(d["imgname"][i]), out / str(d["imgname"][i])
            if dst.exists() and os.path.samefile(src, dst):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        written.append(path)
    return written


def write_raw_3dpw(root: str | os.PathLike, out: str | os.PathLike | None = None,
                   seed: int = 0, log: Callable | None = print) -> Path:
    """Write the world's (under data root ``root``) 3DPW test and train sets under ``out`` (default:
    the world's image folder ``<root>/datasets/pw3d``, which then holds imageFiles/ and
    sequenceFiles/) in the official layout, with camera poses from ``seed``; returns ``out``."""
    import torch
    from models.smpl import build_smpl
    paths, log = DataPaths(root), log or (lambda _: None)
    images = paths.images_dir / DATASET_FOLDERS["3dpw"]
    out = Path(out) if out is not None else images
    models = {g: build_smpl(paths, g, dtype=torch.float64) for g in ("male", "female")}
    for split in ("test", "train"):
        d = read_npz(paths.dataset_npz("3dpw", split == "train"))
        target = out / "sequenceFiles" / split
        if target.is_dir():
            shutil.rmtree(target)
        files = _write_split(d, split, images, out, models, seed)
        log(f"  raw 3dpw {split}: {len(files)} sequence files, {len(d['imgname'])} frames "
            f"-> {target}")
    log(f"raw 3DPW tree in {out}: python -m datasets.prepare 3dpw --raw {out} "
        f"--out <folder> --data_root {root}")
    return out
