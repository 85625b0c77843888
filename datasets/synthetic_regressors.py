"""Extra joint regressors and mean parameters of the synthetic world.

:func:`extra_regressors` writes the rows of ``J_regressor_extra.npy`` (SPIN's 9 extra joints,
:data:`EXTRA_JOINT_NAMES`) and ``J_regressor_h36m.npy`` (the 17 H36M joints,
:data:`H36M_JOINT_NAMES`) for the synthetic body model: each row is a set of convex vertex
weights (non-negative, summing to 1, found by NNLS) reproducing a point of the template within
2 mm, placed where those datasets put the joint relative to SMPL's skeleton.
:func:`mean_params` is the content of ``smpl_mean_params.npz``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import nnls

from datasets.synthetic_tube import N_VERTS, PART_NAMES

if TYPE_CHECKING:
    from datasets.synthetic_body import BodyModel

__all__ = ["EXTRA_JOINT_NAMES", "H36M_JOINT_NAMES", "extra_regressors", "mean_params"]

# SPIN's J_regressor_extra rows and the H36M regressor rows (names for documentation/tests)
EXTRA_JOINT_NAMES = ("Right Hip", "Left Hip", "Neck (LSP)", "Top of Head (LSP)",
                     "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)",
                     "Head (H36M)")
# Rows of J_regressor_h36m.npy as SPIN's H36M_TO_J17 reads them (anatomical sides of the
# subject): H36M_TO_J14[0] = 6 is LSP's *right* ankle, so rows 1-3 are the left leg and 4-6
# the right leg (the H36M names "R_Hip, R_Knee, R_Ankle" of rows 1-3 have the legs swapped),
# rows 11-13 the left arm and 14-16 the right arm.
H36M_JOINT_NAMES = ("Pelvis", "L Hip", "L Knee", "L Ankle", "R Hip", "R Knee", "R Ankle",
                    "Spine", "Thorax", "Neck/Nose", "Head", "L Shoulder", "L Elbow",
                    "L Wrist", "R Shoulder", "R Elbow", "R Wrist")


def _convex_weights(verts: np.ndarray, cand: np.ndarray, target: np.ndarray,
                    ridge: float = 3e-4) -> np.ndarray:
    """Non-negative weights on ``cand`` vertices, summing to 1, reproducing ``target``.

    Solves min |V^T w - p|^2 + (10 (1^T w - 1))^2 + ridge |w|^2, w >= 0 (NNLS); the ridge
    spreads the weight over many nearby vertices.
    """
    V = verts[cand]                                   # [K, 3]
    k = len(cand)
    A = np.concatenate([V.T, 10.0 * np.ones((1, k)), np.sqrt(ridge) * np.eye(k)])
    b = np.concatenate([target, [10.0], np.zeros(k)])
    w, _ = nnls(A, b, maxiter=50 * k)
    w[w < 1e-4 * w.max()] = 0.0
    return w / w.sum()


def _regress_points(model: BodyModel, targets: list[tuple[np.ndarray, tuple[str, ...]]],
                    radius: float = 0.09) -> np.ndarray:
    """Rows of convex vertex weights reproducing each target point (within 2 mm)."""
    v = model.data["v_template"]
    out = np.zeros((len(targets), N_VERTS))
    for i, (p, parts) in enumerate(targets):
        ok = np.isin(model.part, [PART_NAMES.index(n) for n in parts])
        d = np.linalg.norm(v - p, axis=1)
        r = radius
        while True:
            cand = np.flatnonzero(ok & (d < r))
            if len(cand) >= 8:
                w = _convex_weights(v, cand, p)
                err = np.linalg.norm(w @ v[cand] - p)
                if err < 2e-3:
                    break
            if r > 0.3:
                raise AssertionError(f"regressor row {i}: cannot reproduce {p} from vertices "
                                     f"of {parts} (off by {err * 1000:.1f} mm)")
            r *= 1.3
        out[i, cand] = w
    return out


def extra_regressors(model: BodyModel) -> tuple[np.ndarray, np.ndarray]:
    """(J_regressor_extra [9, 6890], J_regressor_h36m [17, 6890]) for the (neutral) model.

    Rows are convex vertex weights reproducing points of the template: SPIN's extra joints
    (``EXTRA_JOINT_NAMES``) and the 17 H36M joints (``H36M_JOINT_NAMES``: the row order that
    ``constants.H36M_TO_J17`` expects, legs left first), placed where those
    datasets put them relative to SMPL's skeleton (e.g. LSP hips a little below and outside
    SMPL's, the H36M 'Neck/Nose' in the lower face).
    """
    J = np.asarray(model.data["J"])
    v = model.data["v_template"]
    crown = v[model.part == 0][np.argmax(v[model.part == 0][:, 1])]
    nose = v[model.landmarks["nose"]]
    torso, head = ("torso",), ("torso",)
    leg_l, leg_r = ("leg_l", "torso"), ("leg_r", "torso")
    arm_l, arm_r = ("arm_l", "torso"), ("arm_r", "torso")
    mid_hip = (J[1] + J[2]) / 2
    hip_r = J[2] + np.array([-0.012, -0.03, 0.0])
    hip_l = J[1] + np.array([0.012, -0.03, 0.0])
    extra = [
        (hip_r, leg_r), (hip_l, leg_l),
        (0.5 * (J[12] + J[9]) + np.array([0.0, 0.03, 0.0]), torso),          # neck (LSP)
        (crown - np.array([0.0, 0.012, 0.0]), head),                         # top of head
        (mid_hip + np.array([0.0, 0.02, 0.0]), torso + ("leg_l", "leg_r")),   # pelvis (MPII)
        ((J[13] + J[14]) / 2, torso),                                         # thorax (MPII)
        ((J[3] + J[6]) / 2, torso),                                           # spine (H36M)
        (J[15] + np.array([0.0, -0.005, 0.06]), head),                        # jaw (H36M)
        ((J[15] + crown) / 2 + np.array([0.0, 0.0, 0.01]), head),             # head (H36M)
    ]
    h36m_hip_r = J[2] + np.array([-0.01, 0.01, 0.0])
    h36m_hip_l = J[1] + np.array([0.01, 0.01, 0.0])
    h36m = [
        ((h36m_hip_r + h36m_hip_l) / 2, torso + ("leg_l", "leg_r")),
        (h36m_hip_l, leg_l), (J[4], ("leg_l",)), (J[7] - np.array([0, 0.01, 0]), ("leg_l",)),
        (h36m_hip_r, leg_r), (J[5], ("leg_r",)), (J[8] - np.array([0, 0.01, 0]), ("leg_r",)),
        ((J[3] + J[6]) / 2 + np.array([0.0, 0.02, 0.0]), torso),             # spine
        ((J[13] + J[14]) / 2 + np.array([0.0, 0.01, 0.0]), torso),           # thorax
        (nose - np.array([0.0, 0.02, 0.04]), head),                          # neck/nose
        (crown - np.array([0.0, 0.05, -0.005]), head),                       # head
        (J[16], arm_l), (J[18], ("arm_l",)), (J[20], ("arm_l",)),
        (J[17], arm_r), (J[19], ("arm_r",)), (J[21], ("arm_r",)),
    ]
    return _regress_points(model, extra), _regress_points(model, h36m)


def mean_params(mean_pose_aa: np.ndarray) -> dict:
    """SPIN-format ``smpl_mean_params.npz`` content: pose (144,) 6D, shape (10,), cam (3,).

    ``mean_pose_aa`` [72] axis-angle (global orientation in the camera frame first).
    """
    from scipy.spatial.transform import Rotation
    R = Rotation.from_rotvec(np.asarray(mean_pose_aa, dtype=np.float64).reshape(24, 3))
    import torch

    from utils.geometry import rotmat_to_rot6d
    pose6d = rotmat_to_rot6d(torch.from_numpy(R.as_matrix())).numpy()
    return {"pose": pose6d.reshape(144),
            "shape": np.zeros(10), "cam": np.array([0.9, 0.0, 0.0])}
