"""SPIN-format npz annotations: read without unpickling code (:func:`utils.safe_npz.read_npz`:
duplicated zip members are refused; object arrays, which files written over the years by other
scripts hold, are read through the restricted unpickler and must hold text or numbers), made
plain (:func:`read_annotations`: text as ``str`` arrays, Windows path separators as ``/``), then
checked (:func:`check_annotations`) before any sample is used. Keys nothing reads are left
unchecked. Problems raise :class:`DatasetError` naming the file, sample and problem.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from utils.errors import UserError
from utils.safe_npz import read_npz

__all__ = ["DatasetError", "read_annotations", "check_annotations"]

# npz key -> expected per-sample shape
_SHAPES = {"part": (24, 3), "openpose": (25, 3), "pose": (72,), "S": (24, 4),
           "center": (2,), "has_smpl": (), "gender": ()}
_SCALAR_OK = ("focal_length",)   # may hold one value for all samples
_TEXT = ("imgname", "gender", "maskname", "partname")   # read as str arrays
MAX_ABS = 1e6      # no annotation (pixels, metres, radians, betas) comes near it
_NAN = "contains NaN or inf"
_NUMERIC = ("part", "openpose", "pose", "shape", "S", "center", "scale", "has_smpl",
            "focal_length")   # must be bool / int / float arrays (not strings)
KNOWN_KEYS = (*_TEXT, *_NUMERIC)   # what BaseDataset reads; other keys are not checked


class DatasetError(UserError, ValueError):
    """Bad dataset content; the message names the file, the sample index and what is wrong."""


def read_annotations(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, materialised, no code unpickled; the keys BaseDataset reads made plain
    (:func:`_plain`), ``imgname`` with ``/`` for Windows' ``\\``."""
    try:
        data = read_npz(path, objects=True)
    except UserError as e:   # a bad npz, or an object array naming something unsafe (safe_pickle)
        raise DatasetError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any unreadable-file error, re-raised with the name
        raise DatasetError(f"{path}: cannot read this annotation file ({type(e).__name__}: "
                           f"{e}). Re-create it with numpy.savez") from e
    data.update({k: _plain(path, k, v) for k, v in data.items() if k in KNOWN_KEYS})
    if "imgname" in data and data["imgname"].dtype.kind == "U":
        data["imgname"] = np.char.replace(data["imgname"], "\\", "/")
    return data


def _plain(path: Path, key: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` with text as ``str`` (bytes decoded as file names are: UTF-8, other bytes kept
    through surrogate escapes) and an object array as text or numbers (else an error)."""
    if arr.dtype.kind == "O":
        items = arr.reshape(-1).tolist()
        if all(isinstance(x, (str, bytes)) for x in items):
            arr = np.array([x if isinstance(x, str) else os.fsdecode(x) for x in items],
                           dtype=str).reshape(arr.shape)
        elif all(isinstance(x, (bool, int, float, np.number, np.bool_)) for x in items):
            arr = arr.astype(np.float64)
        elif all(isinstance(x, np.ndarray) and x.dtype.kind in "biuf" for x in items) and \
                len({x.shape for x in items}) == 1 and arr.ndim == 1:
            arr = np.stack(items) if items else arr.astype(np.float64)
        else:
            kinds = sorted({type(x).__name__ for x in items})
            raise DatasetError(f"{path}: {key!r} is an object array holding {', '.join(kinds)}; "
                               f"expected text or numbers. Re-create the file with a string or "
                               f"numeric array (e.g. np.asarray(list_of_str, dtype=str))")
    if key in _TEXT and arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8", "surrogateescape")
    return arr


def check_annotations(data: dict[str, np.ndarray], fail: Callable[..., DatasetError]) -> int:
    """Check what :class:`BaseDataset` relies on (keys, lengths, shapes, dtypes, plausible values;
    keys outside :data:`KNOWN_KEYS` are not checked); ``fail(message, index=None)`` makes the
    error. Returns N."""
    present, data = sorted(data), {k: v for k, v in data.items() if k in KNOWN_KEYS}
    for key in ("imgname", "part"):
        if key not in data:
            raise fail(f"missing required key {key!r} (keys present: {present})")
    if ("pose" in data) != ("shape" in data):
        have, miss = ("pose", "shape") if "pose" in data else ("shape", "pose")
        raise fail(f"has {have!r} but no {miss!r}: SMPL needs both")
    if data["imgname"].ndim != 1:
        raise fail(f"'imgname' has shape {data['imgname'].shape}, expected (N,)")
    n = len(data["imgname"])
    if scalar := [k for k, v in data.items() if v.ndim == 0 and k not in _SCALAR_OK]:
        raise fail(f"{scalar[0]!r} is a single value (a 0-d array), expected one entry per "
                   f"sample ({n}, as in imgname)")
    lengths = {k: len(v) for k, v in data.items() if v.ndim > 0}
    if k_bad := [k for k, m in lengths.items() if m != n and k not in _SCALAR_OK]:
        listing = ", ".join(f"{k} has {m}" for k, m in lengths.items())
        raise fail(f"arrays of different lengths ({', '.join(k_bad)} differ from "
                   f"imgname): {listing}")
    if n == 0:
        raise fail("no samples (imgname is empty)")
    if text := [k for k in _NUMERIC if k in data and data[k].dtype.kind not in "biuf"]:
        raise fail(f"{text[0]!r} has dtype {data[text[0]].dtype}, expected numbers (bool, int "
                   f"or float). Re-create the file with numeric arrays (e.g. arr.astype(float))")
    for key, shape in ((k, s) for k, s in _SHAPES.items() if k in data):
        if (got := data[key].shape)[1:] != shape and not (key == "S" and got[1:] == (24, 3)):
            want = f"(N, {', '.join(map(str, shape))})" if shape else "(N,)"
            raise fail(f"{key!r} has shape {got}, expected {want}")
    if "shape" in data and (data["shape"].ndim != 2 or data["shape"].shape[1] < 10):
        raise fail(f"'shape' has shape {data['shape'].shape}, expected (N, 10)")
    if "focal_length" in data and data["focal_length"].size not in (1, n):
        raise fail(f"'focal_length' has shape {data['focal_length'].shape}, expected "
                   f"a scalar or one value per sample ({n})")
    for key, bad, what in _implausible(data):
        if (bad := bad.reshape(len(bad), -1).any(axis=1)).any():
            first, tail = int(np.argmax(bad)), "" if what == _NAN else ": the file is damaged"
            raise fail(f"{key!r} {what} (first at sample {first}, {int(bad.sum())} samples "
                       f"affected){tail}", first)
    return n


def _implausible(data: dict[str, np.ndarray]):
    """(key, per-sample mask, what) of values no annotation has: NaN / inf, beyond :data:`MAX_ABS`
    (float32 arithmetic on them overflows to inf / NaN), a negative keypoint confidence (a
    negative loss weight), a ``has_smpl`` other than 0 / 1."""
    for key, arr in data.items():
        if arr.dtype.kind in "fc":
            yield key, ~np.isfinite(np.atleast_1d(arr)), _NAN
    for key in (k for k in _NUMERIC if k in data and data[k].ndim):
        big = np.abs(data[key].astype(np.float64)) > MAX_ABS
        yield key, big, f"holds values beyond ±{MAX_ABS:g}"
    for key, width in (("part", 3), ("openpose", 3), ("S", 4)):   # S may have no confidence
        if key in data and data[key].shape[-1] == width:
            yield key, data[key][..., -1] < 0, "has a negative confidence (its last column)"
    if "has_smpl" in data:
        yield "has_smpl", ~np.isin(data["has_smpl"], (0, 1)), "holds values other than 0 and 1"
