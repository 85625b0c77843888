"""Pose sampling of the synthetic world: random SMPL poses within per-joint limits.

:func:`sample_body_pose` draws the 23 body joints' axis-angle rotations around a resting pose
(arms a little down, knees a little bent), :func:`sample_global_orient` an upright camera-frame
root orientation (random yaw, small lean), :func:`mean_pose` the resting pose facing the
camera (the world's ``smpl_mean_params.npz`` pose).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["sample_body_pose", "sample_global_orient", "mean_pose"]

# per joint (x, y, z) axis-angle ranges in SMPL's joint frames (x left, y up, z forward)
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
