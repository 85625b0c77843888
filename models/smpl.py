"""SPIN's SMPL wrapper over ``smplx.SMPL`` (upstream-behaviour.md §4.3).

Loads ``SMPL_{NEUTRAL,MALE,FEMALE}.pkl`` (official chumpy pickles or the synthetic stand-ins,
same path) with ``create_transl=False``, appends ``J_regressor_extra`` [9, 6890] to smplx's 45
joints and gathers the 54 source joints (0-23 SMPL skeleton, 24-34 smplx vertex keypoints,
35-44 fingertips (unused), 45-53 extra) with ``constants.JOINT_MAP`` into SPIN's 49 (0-24
OpenPose BODY_25, 25-48 the 24 GT joints). Pose as axis-angle (``pose2rot=True``:
global_orient [B, 3], body_pose [B, 69]) or rotation matrices ([B, 1, 3, 3], [B, 23, 3, 3]).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.lbs import vertices2joints

import constants
from config import DataPaths
from utils import safe_pickle
from utils.errors import UserError

__all__ = ["SMPL", "SMPLOutput", "build_smpl", "load_regressor", "load_smpl_data",
           "SMPLFileError", "NUM_SOURCE_JOINTS"]

NUM_VERTS = 6890
NUM_SOURCE_JOINTS = 54          # 24 SMPL + 21 smplx vertex joints + 9 extra
_EXPECTED = {  # key -> expected shape (None: any size on that axis)
    "v_template": (NUM_VERTS, 3), "f": (None, 3), "J_regressor": (24, NUM_VERTS),
    "weights": (NUM_VERTS, 24), "posedirs": (NUM_VERTS, 3, 207), "shapedirs": (NUM_VERTS, 3, None),
    "kintree_table": (2, 24)}
_USE_OFFICIAL = "Use the official SMPL_*.pkl of the seed README (or the synthetic world's)"


class SMPLFileError(UserError, ValueError):
    """An SMPL model or regressor file is unreadable or has the wrong content."""


@dataclass
class SMPLOutput(smplx.utils.SMPLOutput):
    """smplx's output with joints [B, 49, 3] (SPIN order) and smpl_joints [B, 24, 3] (posed
    skeleton); vertices [B, 6890, 3]; the inputs (betas [B, 10], global_orient, body_pose)."""
    smpl_joints: torch.Tensor | None = None


def _dense(x) -> np.ndarray:
    """numpy array from a numpy or chumpy (``.r``) value."""
    return np.asarray(x.r if hasattr(x, "r") and not isinstance(x, np.ndarray) else x)


def load_smpl_data(path: str | os.PathLike) -> dict:
    """Read an SMPL pickle through :mod:`utils.safe_pickle` (nothing runs) and check its keys,
    shapes, values and indices (:class:`SMPLFileError` naming the file and key); returns it."""
    path = Path(path)
    try:
        data = safe_pickle.load_file(path, what="SMPL body model")
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as e:   # noqa: BLE001 - re-raised with the file name
        raise SMPLFileError(f"{path}: cannot read this SMPL body model ({type(e).__name__}: "
                            f"{e}). {_USE_OFFICIAL}") from e
    if not isinstance(data, dict):
        raise SMPLFileError(f"SMPL model {path}: expected a pickled dict, got {type(data)}")
    arrays = {}
    for key, shape in _EXPECTED.items():
        if key not in data:
            raise SMPLFileError(f"SMPL model {path}: missing key {key!r} "
                                f"(keys present: {sorted(data)})")
        arrays[key] = _numeric(path, key, data[key])
        got = tuple(arrays[key].shape)
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = "x".join("N" if s is None else str(s) for s in shape)
            raise SMPLFileError(f"SMPL model {path}: {key!r} has shape {got}, expected {want}")
    if (k := arrays["shapedirs"].shape[2]) < constants.NUM_BETAS:
        raise SMPLFileError(f"SMPL model {path}: 'shapedirs' has {k} components, need >= 10")
    parents, faces = arrays["kintree_table"][0, 1:], arrays["f"]
    for key, bad in (("kintree_table", (parents < 0) | (parents >= np.arange(1, 24))),
                     ("f", (faces < 0) | (faces >= NUM_VERTS))):
        if bad.any() or (arrays[key] != np.round(arrays[key])).any():
            what = ("a joint's parent (row 0) must be an earlier joint, 0 <= parent[i] < i"
                    if key == "kintree_table" else f"vertex indices must be 0..{NUM_VERTS - 1}")
            raise SMPLFileError(f"SMPL model {path}: {key!r} holds invalid indices ({what}). "
                                f"{_USE_OFFICIAL}")
    return data


def _numeric(path: Path, key: str, value) -> np.ndarray:
    """``value`` of SMPL file ``key`` as a numeric numpy array (a scipy.sparse matrix: its stored
    values checked, the matrix returned), finite; :class:`SMPLFileError` naming the file and key
    otherwise."""
    kind = type(value).__module__.split(".")[0]
    if not isinstance(value, np.ndarray) and kind not in ("scipy", "chumpy"):
        raise SMPLFileError(f"SMPL model {path}: {key!r} is a {type(value).__name__}, not an "
                            f"array. {_USE_OFFICIAL}")
    try:
        values = np.asarray(value.data if kind == "scipy" else _dense(value))
    except Exception as e:   # noqa: BLE001 - a damaged chumpy / sparse object
        raise SMPLFileError(f"SMPL model {path}: {key!r} cannot be read as an array "
                            f"({type(e).__name__}: {e}). {_USE_OFFICIAL}") from None
    if values.dtype.kind not in "biuf":
        raise SMPLFileError(f"SMPL model {path}: {key!r} has dtype {values.dtype}, expected "
                            f"numbers. {_USE_OFFICIAL}")
    if not np.isfinite(values).all():
        raise SMPLFileError(f"SMPL model {path}: {key!r} holds NaN or inf. {_USE_OFFICIAL}")
    return value if kind == "scipy" else values


def load_regressor(path: str | os.PathLike, rows: int | None = None) -> torch.Tensor:
    """A joint regressor ``.npy`` [rows, 6890] as float32; :class:`SMPLFileError` naming the
    file if unreadable, of another shape, or not finite."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:   # noqa: BLE001
        raise SMPLFileError(f"cannot read joint regressor {path}: {type(e).__name__}: {e}") from e
    want = f"[{rows if rows is not None else 'N'}, {NUM_VERTS}]"
    if arr.ndim != 2 or arr.shape[1] != NUM_VERTS or (rows is not None and arr.shape[0] != rows):
        raise SMPLFileError(f"joint regressor {path} has shape {arr.shape}, expected {want}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise SMPLFileError(f"joint regressor {path} holds non-finite or non-numeric values")
    return torch.as_tensor(arr.astype(np.float32))


class SMPL(smplx.SMPL):
    """SMPL with SPIN's 49 joints. model_path: an ``SMPL_*.pkl`` or a folder holding
    ``SMPL_{GENDER}.pkl``; joint_regressor_extra: ``J_regressor_extra.npy`` or a [9, 6890]
    array; kwargs go to ``smplx.SMPL`` (``create_transl`` defaults to False)."""

    def __init__(self, model_path: str | os.PathLike, joint_regressor_extra,
                 gender: str = "neutral", **kwargs):
        kwargs.setdefault("create_transl", False)
        kwargs.pop("get_skin", None)
        path = Path(model_path)
        if path.is_dir():
            path = path / f"SMPL_{gender.upper()}.pkl"
        if not path.exists():
            raise SMPLFileError(f"SMPL model not found: {path.resolve()}")
        data = {k: (v if k in ("bs_style", "bs_type") or "scipy.sparse" in str(type(v))
                    else _dense(v)) for k, v in load_smpl_data(path).items()}
        with contextlib.redirect_stdout(io.StringIO()):   # smplx warns on 10-beta files
            super().__init__(model_path=str(path), gender=gender,
                             data_struct=smplx.utils.Struct(**data), **kwargs)
        self.model_file = str(path)
        if isinstance(joint_regressor_extra, (str, os.PathLike)):
            extra = load_regressor(joint_regressor_extra, rows=9)
        else:
            extra = torch.as_tensor(np.asarray(joint_regressor_extra, dtype=np.float32))
            if extra.shape != (9, NUM_VERTS):
                raise SMPLFileError(f"J_regressor_extra has shape {tuple(extra.shape)}, "
                                    f"expected [9, {NUM_VERTS}]")
        self.register_buffer("J_regressor_extra", extra.to(self.dtype))
        self.register_buffer("joint_map", torch.tensor(constants.JOINT_MAP, dtype=torch.long))
        # the kinematic tree stays on the host (a plain attribute, not a buffer): smplx's lbs
        # indexes a Python list with parents[i] for each of the 23 joints, which on a CUDA
        # tensor is a .item(), a device synchronisation, 23 per forward pass
        object.__setattr__(self, "parents", self._buffers.pop("parents"))

    def forward(self, betas: torch.Tensor | None = None, body_pose: torch.Tensor | None = None,
                global_orient: torch.Tensor | None = None, pose2rot: bool = True,
                **kwargs) -> SMPLOutput:
        """betas [B, 10]; body_pose [B, 69] / global_orient [B, 3] (``pose2rot``) or
        [B, 23, 3, 3] / [B, 1, 3, 3]; missing inputs use the module's parameters."""
        kwargs.pop("get_skin", None)
        for x, name, tail in ((body_pose, "body_pose", (69,) if pose2rot else (23, 3, 3)),
                              (global_orient, "global_orient", (3,) if pose2rot else (1, 3, 3)),
                              (betas, "betas", (self.num_betas,))):
            if x is not None and not torch.is_tensor(x):
                raise TypeError(f"SMPL: {name} must be a tensor, got {type(x).__name__}")
            if x is not None and (tuple(x.shape[1:]) != tail or x.dim() != len(tail) + 1):
                want = ", ".join(["B"] + [str(t) for t in tail])
                raise ValueError(f"SMPL: {name} has shape {tuple(x.shape)}, expected [{want}]")
        out = super().forward(betas=betas, body_pose=body_pose, global_orient=global_orient,
                              pose2rot=pose2rot, **kwargs)
        extra = vertices2joints(self.J_regressor_extra, out.vertices)
        source = torch.cat([out.joints, extra], dim=1)            # [B, 54, 3]
        return SMPLOutput(**{**vars(out), "joints": source[:, self.joint_map]},
                          smpl_joints=out.joints[:, :24])


def build_smpl(paths: DataPaths, gender: str = "neutral", **kwargs) -> SMPL:
    """The SMPL model of ``gender`` from the data layout ``paths`` (missing files raise
    :class:`config.MissingFileError` naming the file and where to get it)."""
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"gender must be 'neutral', 'male' or 'female', got {gender!r}")
    return SMPL(paths.smpl_model(gender), paths.j_regressor_extra(), gender=gender, **kwargs)
