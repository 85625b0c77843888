"""Official 3DPW release -> the SPIN-format npz files of ``config.DATASET_FILES`` (3dpw).

One sample per actor and ``campose_valid`` frame (SPIN's preprocessing plus what the evaluation
reads): ``imgname``; ``pose`` [72], the global orientation turned into the camera frame;
``shape`` [10]; ``gender`` 'm'/'f'; ``S`` [24, 4]: the 24 GT joints of the **gendered** SMPL
moved by ``cam_poses`` into the camera frame (metres, not root-centred), confidence 1; ``part``
[24, 3]: those projected with ``cam_intrinsics``, visible where in front of the camera and inside
the image; ``openpose`` [25, 3] from ``poses2d``; ``center`` / ``scale``: SPIN's box of the
``poses2d`` joints; ``focal_length`` only with ``with_focal_length`` (the released file has
none). A valid frame is skipped only without a ``poses2d`` joint (no box) or a GT joint inside
the image; every skip is counted by reason in the summary.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from config import DATASET_FILES, DataPaths
from utils.atomic import atomic_path
from datasets.pw3d_raw import (BODY25_FROM_COCO18, RawDataError, Sequence, image_name,
                               read_sequence, sequence_files)

__all__ = ["prepare_3dpw", "SetSummary", "SKIP_INVALID", "SKIP_NO_2D", "SKIP_NO_GT",
           "camera_frame_pose", "spin_box", "openpose_from_coco18", "image_size"]

SKIP_INVALID = "campose_valid false"
SKIP_NO_2D = "no poses2d joint with confidence > 0"
SKIP_NO_GT = "no GT joint inside the image"
SMPL_CHUNK = 512            # frames posed at a time


@dataclass
class SetSummary:
    """What one output file was built from."""
    name: str                                 # 'test' | 'train'
    splits: tuple
    files: int = 0
    sequences: set = field(default_factory=set)
    actors: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    npz: Path | None = None

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return (f"3dpw {self.name} (sequenceFiles/{'+'.join(self.splits)}): {self.files} files, "
                f"{len(self.sequences)} sequences, {self.actors} actors, {self.kept} frames "
                f"kept, {skipped} skipped" + (f" ({reasons})" if reasons else "")
                + (f" -> {self.npz}" if self.npz else ""))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (RawDataError naming a missing / bad file)."""
    from PIL import Image
    if not path.is_file():
        raise RawDataError(f"{path}: image missing (a valid frame of the sequence files needs "
                           "it). Extract the 3DPW imageFiles.zip into the --raw folder")
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:  # noqa: BLE001 - PIL raises several types
        raise RawDataError(f"{path}: unreadable image ({type(e).__name__}: {e}). "
                           "Re-extract imageFiles.zip") from None


def camera_frame_pose(pose: np.ndarray, R_cam: np.ndarray) -> np.ndarray:
    """[M, 72] poses with the global orientation (first 3) turned by ``R_cam`` [M, 3, 3]
    (``R_cam @ R_global``)."""
    from scipy.spatial.transform import Rotation
    out = np.array(pose, dtype=np.float64, copy=True)
    R = R_cam @ Rotation.from_rotvec(out[:, :3]).as_matrix()
    out[:, :3] = Rotation.from_matrix(R).as_rotvec()
    return out


def spin_box(kp: np.ndarray, factor: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPIN's npz box of 2D joints [M, J, 3] (conf > 0): centre [M, 2] of the tight box, scale
    [M] (``factor * max(w, h) / 200``), ok [M]."""
    vis = kp[..., 2] > 0
    lo = np.where(vis[..., None], kp[..., :2], np.inf).min(1)
    hi = np.where(vis[..., None], kp[..., :2], -np.inf).max(1)
    ok = vis.any(1)
    lo, hi = np.where(ok[:, None], lo, 0), np.where(ok[:, None], hi, 0)
    return (lo + hi) / 2, factor * (hi - lo).max(1) / 200.0, ok


def openpose_from_coco18(poses2d: np.ndarray) -> np.ndarray:
    """[M, 3, 18] 3DPW ``poses2d`` -> [M, 25, 3] BODY_25 (zeros where COCO-18 has no joint)."""
    idx = np.array(BODY25_FROM_COCO18)
    coco = np.transpose(np.asarray(poses2d, np.float64), (0, 2, 1))
    return np.where((idx >= 0)[:, None], coco[:, idx], 0.0)


def _gt_joints(seqs: list[Sequence], models: dict) -> dict:
    """{(sequence index, actor): [M, 24, 3]} camera-frame GT joints (float64) at the actor's
    valid frames, posed per gender over all sequences at once, SMPL_CHUNK bodies at a time."""
    import torch
    t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64)  # noqa: E731
    out = {}
    for gender, code in (("male", "m"), ("female", "f")):
        items = [(i, a, q, np.flatnonzero(q.valid[a])) for i, q in enumerate(seqs)
                 for a in range(q.n_actors) if q.genders[a] == code]
        if not items:
            continue
        betas, pose, trans, cam = (np.concatenate(x) for x in zip(*[
            (np.repeat(q.betas[a][None], len(f), 0), q.poses[a, f], q.trans[a, f], q.cam_poses[f])
            for _, a, q, f in items]))
        S = np.zeros((len(pose), 24, 3))
        for s in range(0, len(pose), SMPL_CHUNK):
            c = slice(s, s + SMPL_CHUNK)
            with torch.no_grad():
                j = models[gender](betas=t(betas[c]), body_pose=t(pose[c, 3:]),
                                   global_orient=t(pose[c, :3]), transl=t(trans[c])).joints
            S[c] = np.einsum("mij,mkj->mki", cam[c, :3, :3], j[:, 25:].numpy())
            S[c] += cam[c, None, :3, 3]
        ends = np.cumsum([len(f) for *_, f in items])
        out.update(zip([(i, a) for i, a, *_ in items], np.split(S, ends[:-1])))
    return out


def _convert(seq: Sequence, sizes: dict, joints: list, with_focal: bool,
             summary: SetSummary) -> list[dict]:
    """The samples of one sequence (a dict of arrays per actor) from each actor's GT joints
    [M, 24, 3] at its valid frames; counts into ``summary``."""
    out = []
    for a in range(seq.n_actors):
        summary.skipped[SKIP_INVALID] += int((~seq.valid[a]).sum())
        frames, S = np.flatnonzero(seq.valid[a]), joints[a]
        p, z = S @ seq.K.T, S[..., 2]
        front = z > 1e-9
        uv = np.where(front[..., None], p[..., :2] / np.where(front, z, 1.0)[..., None], 0.0)
        wh = np.array([sizes[int(f)] for f in frames], dtype=np.float64).reshape(-1, 2)  # [M, 2]
        inside = front & (uv >= 0).all(-1) & (uv <= (wh - 1)[:, None]).all(-1)
        part = np.concatenate([uv, inside[..., None].astype(np.float64)], -1)
        center, scale, has_2d = spin_box(np.transpose(seq.poses2d[a, frames], (0, 2, 1)))
        keep = has_2d & inside.any(1)
        summary.skipped[SKIP_NO_2D] += int((~has_2d).sum())
        summary.skipped[SKIP_NO_GT] += int((has_2d & ~keep).sum())
        k = frames[keep]
        summary.kept += len(k)
        sample = {
            "imgname": np.array([image_name(seq.name, int(f)) for f in k], dtype=str),
            "center": center[keep], "scale": scale[keep], "part": part[keep],
            "S": np.concatenate([S[keep], np.ones((len(k), 24, 1))], -1),
            "pose": camera_frame_pose(seq.poses[a, k], seq.cam_poses[k, :3, :3]),
            "shape": np.repeat(seq.betas[a][None], len(k), 0),
            "gender": np.array([seq.genders[a]] * len(k), dtype=str),
            "openpose": openpose_from_coco18(seq.poses2d[a, k])}
        if with_focal:
            sample["focal_length"] = np.full(len(k), seq.K[0, 0])
        out.append(sample)
    return out


def prepare_3dpw(raw: str | os.PathLike, out: str | os.PathLike,
                 data_root: str | os.PathLike | None = None, sets=("test", "train"),
                 train_splits=("train",), with_focal_length: bool = False,
                 log: Callable | None = print, models: dict | None = None) -> dict:
    """Write the 3DPW npz files of ``sets`` ('test', 'train') under ``<out>/data/datasets/``
    from the 3DPW root ``raw``; body models from ``models`` ({'male', 'female'}) or the
    ``config.DataPaths`` root ``data_root`` (default ``out``). Everything is read and checked
    (:class:`RawDataError` naming the file) before anything is written. Returns {set name:
    :class:`SetSummary`}."""
    raw, out = Path(raw), Path(out)
    if unknown := [s for s in sets if s not in ("test", "train")]:
        raise RawDataError(f"unknown 3DPW output set(s) {unknown}; choose from test, train")
    if not raw.is_dir():
        raise RawDataError(f"{raw}: no such folder. --raw must be the extracted 3DPW download "
                           "(holding sequenceFiles/ and imageFiles/)")
    plan = {}
    for name in sets:
        splits = ("test",) if name == "test" else tuple(train_splits)
        seqs = [read_sequence(f) for s in splits for f in sequence_files(raw, s)]
        # (W, H) of the image of every frame valid for some actor (errors name the file)
        sizes = [{int(f): image_size(raw / image_name(q.name, int(f)))
                  for f in np.flatnonzero(q.valid.any(0))} for q in seqs]
        plan[name] = (SetSummary(name, splits), list(zip(seqs, sizes)))
    if models is None:
        import torch
        from models.smpl import build_smpl
        paths = DataPaths(Path(data_root or out))
        models = {g: build_smpl(paths, g, dtype=torch.float64) for g in ("male", "female")}
    files = {}
    for name, (summary, seqs) in plan.items():
        parts, joints = [], _gt_joints([q for q, _ in seqs], models)
        summary.files, summary.actors = len(seqs), sum(q.n_actors for q, _ in seqs)
        summary.sequences.update(q.name for q, _ in seqs)
        for i, (seq, sizes) in enumerate(seqs):
            parts += _convert(seq, sizes, [joints[i, a] for a in range(seq.n_actors)],
                              with_focal_length, summary)
        if summary.kept == 0:
            raise RawDataError(f"{raw}: no frame of 3DPW {name} kept ({summary.line()}); "
                               "check the sequence files")
        summary.npz = out / "data" / "datasets" / DATASET_FILES[name]["3dpw"]
        files[summary.npz] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for (summary, _), (path, data) in zip(plan.values(), files.items()):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:   # all checked: now written
            np.savez(fh, **data)
        if log:
            log(summary.line())
    return {name: summary for name, (summary, _) in plan.items()}
