"""The official 3DPW release, read and checked (input of ``python -m datasets.prepare 3dpw``).

Layout of a 3DPW root (the extracted download, e.g. ``<data root>/datasets/pw3d``)::

    sequenceFiles/{train,validation,test}/<sequence>.pkl   (Python 2 pickles)
    imageFiles/<sequence>/image_%05d.jpg                   (numbered by frame index)

Each sequence file is a dict; the keys read here (every other key is ignored):

==================  ===============================================================
``sequence``        the sequence name (folder of ``imageFiles``)
``genders``         per actor 'm' / 'f'
``betas``           per actor [>= 10] SMPL shape (the first 10 are used)
``poses``           per actor [N, 72] SMPL axis-angle pose, world frame
``trans``           per actor [N, 3] SMPL translation, world frame (metres)
``poses2d``         per actor [N, 3, 18] OpenPose COCO-18 joints (x, y, confidence rows)
``cam_poses``       [N, 4, 4] world-to-camera transforms
``cam_intrinsics``  [3, 3] pinhole matrix K
``campose_valid``   per actor [N] (frames where the camera pose and the fit are valid)
==================  ===============================================================

Pickles can run code when loaded: the files are read through :mod:`utils.safe_pickle`, which
admits numpy arrays, dtypes and scalars and the basic containers, and refuses every other
global before importing it (a crafted file raises :class:`RawDataError`, nothing runs). Every
problem (unreadable file, missing key, wrong shape or type, NaN in a valid frame, a sequence
without a valid frame, a missing image) raises :class:`RawDataError` naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import safe_pickle
from utils.errors import UserError

__all__ = ["RawDataError", "load_pickle", "Sequence", "read_sequence",
           "sequence_files", "image_name", "REQUIRED_KEYS", "COCO18_NAMES", "BODY25_FROM_COCO18",
           "SPLITS"]

SPLITS = ("train", "validation", "test")
REQUIRED_KEYS = ("sequence", "genders", "betas", "poses", "trans", "poses2d", "cam_poses",
                 "cam_intrinsics", "campose_valid")

# OpenPose COCO-18 order (poses2d) and, for each BODY_25 joint (constants.JOINT_NAMES[:25]),
# the COCO-18 joint it is (-1: BODY_25 joints COCO-18 has no counterpart for: MidHip, feet)
COCO18_NAMES = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow",
                "LWrist", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye",
                "REar", "LEar")
BODY25_FROM_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, -1, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                      -1, -1, -1, -1, -1, -1)


class RawDataError(UserError, ValueError):
    """A file of the raw 3DPW release is unreadable, unsafe or has the wrong content."""


# ---------------------------------------------------------------------------------------------
def load_pickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` (Python 2 pickles too: ``encoding='latin1'``) through the project's
    restricted unpickler (:mod:`utils.safe_pickle`: numpy arrays and basic containers, nothing
    that can run code); raises :class:`RawDataError` naming the file on any failure."""
    path = Path(path)
    try:
        return safe_pickle.load_file(path, what="3DPW sequence file")
    except safe_pickle.UnsafePickleError as e:
        raise RawDataError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - truncated / corrupt files raise many types
        raise RawDataError(f"{path}: cannot read the pickle ({type(e).__name__}: {e}). "
                           "Re-download the file") from None


# ---------------------------------------------------------------------------------------------
# one sequence file
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

    @property
    def n_frames(self) -> int:
        return len(self.cam_poses)


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
    v = data[key]
    if isinstance(v, np.ndarray) and v.dtype != object and v.ndim >= 1:
        v = list(v)
    if not isinstance(v, (list, tuple, np.ndarray)) or len(v) != n_actors:
        got = len(v) if isinstance(v, (list, tuple, np.ndarray)) else type(v).__name__
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
    seq = Sequence(
        file=path, name=name, genders=genders,
        betas=_betas(path, _per_actor(path, data, "betas", A)),
        poses=np.stack([_array(path, f"'poses'[{a}]", p, (N, 72))
                        for a, p in enumerate(_per_actor(path, data, "poses", A))]),
        trans=np.stack([_array(path, f"'trans'[{a}]", t, (N, 3))
                        for a, t in enumerate(_per_actor(path, data, "trans", A))]),
        poses2d=np.stack([_array(path, f"'poses2d'[{a}]", p, (N, 3, 18))
                          for a, p in enumerate(_per_actor(path, data, "poses2d", A))]),
        cam_poses=cam, K=K,
        valid=np.stack([_array(path, f"'campose_valid'[{a}]", v, (N,))
                        for a, v in enumerate(_per_actor(path, data, "campose_valid", A))]) != 0)
    if not seq.valid.any():
        raise RawDataError(f"{path}: sequence {name!r} has no valid frame ('campose_valid' is "
                           f"false for all {N} frames of its {A} actor(s)). Remove the file or "
                           "re-download it")
    _check_finite(seq)
    return seq


def _betas(path: Path, betas: list) -> np.ndarray:
    """[A, 10]: the first 10 SMPL shape values of every actor."""
    out = []
    for a, b in enumerate(betas):
        b = _array(path, f"'betas'[{a}]", b, (None,))
        if len(b) < 10:
            raise RawDataError(f"{path}: 'betas'[{a}] has {len(b)} values, expected at least "
                               "10 (SMPL shape). Re-download the file")
        out.append(b[:10])
    return np.stack(out)


def _check_finite(seq: Sequence) -> None:
    """NaN / inf in a valid frame (invalid frames are never read)."""
    checks = {"poses": seq.poses, "trans": seq.trans, "poses2d": seq.poses2d}
    for a in range(seq.n_actors):
        f = np.flatnonzero(seq.valid[a])
        for key, arr in checks.items():
            bad = ~np.isfinite(arr[a, f].reshape(len(f), -1)).all(1)
            if bad.any():
                raise RawDataError(f"{seq.file}: {key!r} of actor {a} holds NaN/inf in valid "
                                   f"frame {int(f[np.argmax(bad)])}. Re-download the file")
        bad = ~np.isfinite(seq.cam_poses[f].reshape(len(f), -1)).all(1)
        if bad.any():
            raise RawDataError(f"{seq.file}: 'cam_poses' holds NaN/inf in valid frame "
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
