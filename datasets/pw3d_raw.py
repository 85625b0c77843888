"""The official 3DPW release, read and checked (input of ``python -m datasets.prepare 3dpw``).

A 3DPW root holds ``sequenceFiles/{train,validation,test}/<sequence>.pkl`` (Python 2 pickles,
read through :mod:`utils.safe_pickle`: nothing runs) and ``imageFiles/<sequence>/image_%05d.jpg``
(by frame index). A sequence file (A actors, N frames) holds ``sequence`` (name), ``genders``,
``betas``, ``poses`` and ``trans`` (world frame, metres), ``poses2d`` (OpenPose COCO-18 x, y,
confidence rows), ``cam_poses`` (world to camera), ``cam_intrinsics`` and ``campose_valid``
(shapes: :class:`Sequence`). Every problem raises :class:`RawDataError` naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import safe_pickle
from utils.errors import UserError

__all__ = ["RawDataError", "load_pickle", "Sequence", "read_sequence",
           "sequence_files", "image_name", "REQUIRED_KEYS", "BODY25_FROM_COCO18", "SPLITS"]

SPLITS = ("train", "validation", "test")
_PER_ACTOR = {"poses": (72,), "trans": (3,), "poses2d": (3, 18), "campose_valid": ()}  # [N, ...]
REQUIRED_KEYS = ("sequence", "genders", "betas", "poses", "trans", "poses2d", "cam_poses",
                 "cam_intrinsics", "campose_valid")

# for each BODY_25 joint (constants.JOINT_NAMES[:25]), its index in poses2d's OpenPose COCO-18
# order (Nose, Neck, RShoulder, RElbow, RWrist, LShoulder, LElbow, LWrist, RHip, RKnee, RAnkle,
# LHip, LKnee, LAnkle, REye, LEye, REar, LEar); -1: none (MidHip, feet)
BODY25_FROM_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, -1, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                      -1, -1, -1, -1, -1, -1)


class RawDataError(UserError, ValueError):
    """A file of the raw 3DPW release is unreadable, unsafe or has the wrong content."""


def load_pickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` (Python 2 too) through :mod:`utils.safe_pickle`; any failure raises
    :class:`RawDataError` naming the file."""
    path = Path(path)
    try:
        return safe_pickle.load_file(path, what="3DPW sequence file")
    except safe_pickle.UnsafePickleError as e:
        raise RawDataError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - truncated / corrupt files raise many types
        raise RawDataError(f"{path}: cannot read the pickle ({type(e).__name__}: {e}). "
                           "Re-download the file") from None


@dataclass
class Sequence:
    """One checked sequence file (float64 arrays; A actors, N frames)."""
    file: Path
    name: str
    genders: list            # A x 'm' / 'f'
    betas: np.ndarray        # [A, 10]
    poses: np.ndarray        # [A, N, 72] world frame
    trans: np.ndarray        # [A, N, 3]
    poses2d: np.ndarray      # [A, N, 3, 18]
    cam_poses: np.ndarray    # [N, 4, 4] world -> camera
    K: np.ndarray            # [3, 3]
    valid: np.ndarray        # [A, N] bool

    @property
    def n_actors(self) -> int:
        return len(self.genders)


def image_name(sequence: str, frame: int) -> str:
    """The image of a frame, relative to the 3DPW root (the npz ``imgname``)."""
    return f"imageFiles/{sequence}/image_{frame:05d}.jpg"


def _text(x) -> str | None:
    if isinstance(x, bytes):
        return x.decode("latin1")
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return _text(x.item())
    return x if isinstance(x, str) else None


def _array(path: Path, what: str, x, shape: tuple) -> np.ndarray:
    """``x`` as float64 with ``shape`` (None = any size); raises RawDataError naming ``what``."""
    want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise RawDataError(f"{path}: {what} is not numeric ({type(x).__name__}), expected "
                           f"{want}. Re-download the file") from None
    if a.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, a.shape)):
        raise RawDataError(f"{path}: {what} has shape {list(a.shape)}, expected {want}. "
                           "Re-download the file")
    return a


def _per_actor(path: Path, data: dict, key: str, n_actors: int) -> list:
    got = len(v) if isinstance(v := data[key], (list, tuple, np.ndarray)) else type(v).__name__
    if got != n_actors:
        raise RawDataError(f"{path}: {key!r} holds {got} entries but 'genders' names "
                           f"{n_actors} actors; every per-actor key needs one entry per actor. "
                           "Re-download the file")
    return list(v)


def read_sequence(path: str | os.PathLike) -> Sequence:
    """Read and check one sequence file (keys, types, shapes, genders, finite valid frames)."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise RawDataError(f"{path}: expected a pickled dict, got {type(data).__name__}. "
                           "Is this a 3DPW sequence file?")
    if missing := [k for k in REQUIRED_KEYS if k not in data]:
        raise RawDataError(f"{path}: missing key(s) {missing} (keys present: "
                           f"{sorted(map(str, data))}). Re-download the file")
    name = _text(data["sequence"])
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise RawDataError(f"{path}: 'sequence' is {data['sequence']!r}, expected the sequence "
                           "name (a folder of imageFiles/)")
    genders = data["genders"]
    if not isinstance(genders, (list, tuple, np.ndarray)) or len(genders) == 0:
        raise RawDataError(f"{path}: 'genders' is {genders!r}, expected one 'm'/'f' per actor")
    genders = [_text(g) for g in genders]
    if bad := [g for g in genders if g not in ("m", "f")]:
        raise RawDataError(f"{path}: 'genders' holds {bad[0]!r}, expected 'm' or 'f'")
    A = len(genders)
    cam = _array(path, "'cam_poses'", data["cam_poses"], (None, 4, 4))
    N = len(cam)
    K = _array(path, "'cam_intrinsics'", data["cam_intrinsics"], (3, 3))
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise RawDataError(f"{path}: 'cam_intrinsics' has no positive focal lengths: {K.tolist()}")
    betas = []
    for a, b in enumerate(_per_actor(path, data, "betas", A)):
        if len(b := _array(path, f"'betas'[{a}]", b, (None,))) < 10:
            raise RawDataError(f"{path}: 'betas'[{a}] has {len(b)} values, expected at least "
                               "10 (SMPL shape). Re-download the file")
        betas.append(b[:10])
    arr = {key: np.stack([_array(path, f"'{key}'[{a}]", x, (N, *tail))
                          for a, x in enumerate(_per_actor(path, data, key, A))])
           for key, tail in _PER_ACTOR.items()}
    seq = Sequence(file=path, name=name, genders=genders, betas=np.stack(betas),
                   poses=arr["poses"], trans=arr["trans"], poses2d=arr["poses2d"],
                   cam_poses=cam, K=K, valid=arr["campose_valid"] != 0)
    if not seq.valid.any():
        raise RawDataError(f"{path}: sequence {name!r} has no valid frame ('campose_valid' is "
                           f"false for all {N} frames of its {A} actor(s)). Remove the file or "
                           "re-download it")
    _check_finite(seq)
    return seq


def _check_finite(seq: Sequence) -> None:
    """NaN / inf in a valid frame (invalid frames are never read)."""
    for a in range(seq.n_actors):
        f = np.flatnonzero(seq.valid[a])
        for key in ("poses", "trans", "poses2d", "cam_poses"):
            arr, who = ((seq.cam_poses, "") if key == "cam_poses"
                        else (getattr(seq, key)[a], f" of actor {a}"))
            if (bad := ~np.isfinite(arr[f]).all(tuple(range(1, arr.ndim)))).any():
                raise RawDataError(f"{seq.file}: {key!r}{who} holds NaN/inf in valid frame "
                                   f"{int(f[np.argmax(bad)])}. Re-download the file")
    if not np.isfinite(seq.betas).all():
        raise RawDataError(f"{seq.file}: 'betas' holds NaN/inf. Re-download the file")


def sequence_files(raw: str | os.PathLike, split: str) -> list[Path]:
    """The ``.pkl`` files of ``sequenceFiles/<split>`` (sorted); an error if there are none."""
    if split not in SPLITS:
        raise RawDataError(f"unknown 3DPW split {split!r}; choose from {list(SPLITS)}")
    folder = Path(raw) / "sequenceFiles" / split
    if not folder.is_dir():
        raise RawDataError(f"{folder}: no such folder. --raw must be the 3DPW root holding "
                           "sequenceFiles/ and imageFiles/ (the extracted official download)")
    files = sorted(folder.glob("*.pkl"))
    if not files:
        raise RawDataError(f"{folder}: no sequence file (*.pkl). Extract the 3DPW "
                           "sequenceFiles.zip there")
    return files
