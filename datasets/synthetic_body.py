"""The synthetic body model in SMPL's file format (the stand-in for ``SMPL_*.pkl``), its extra
joint regressors and mean parameters.

The surface is the tube of :mod:`datasets.synthetic_tube`. ``J_regressor`` [24, 6890] (sparse):
the uniform average of each joint's keyframe ring. ``weights``: Gaussian in the distance of each
ring's centre to the bones its segment may follow. ``shapedirs``: central differences in the 10
shape parameters (beta_k = +-1). ``posedirs``: each bent joint pushes the surface around it
outward by up to ~1 cm x (1 - cos angle). Male and female are other parameter presets. A vertex
permutation puts the vertices that smplx reads as face, foot and fingertip keypoints (SMPL's
ids, e.g. nose 332) on this body's nose, eyes, ears, toes, heels and fingertips. The pickle
holds numpy arrays and a scipy sparse ``J_regressor`` (no chumpy) under the official keys.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import scipy.sparse
from scipy.optimize import nnls
from scipy.spatial.transform import Rotation

import constants
from datasets.synthetic_tube import (N_SEG, N_VERTS, PART_NAMES, PARTS, faces, shape_params,
                                     signed_volume, surface)

__all__ = ["GENDER_PRESETS", "BodyModel", "build_body_model", "extra_regressors", "mean_params"]

UINT32_MAX = 4294967295                 # the official kintree_table root marker
GENDER_PRESETS = {"neutral": {}, "male": dict(height=0.6, shoulders=1.0, hips=-0.8, chest=0.5,
                                                girth=0.2, head=0.2),
                  "female": dict(height=-0.9, shoulders=-1.0, hips=1.2, chest=-0.3, girth=-0.3,
                                 neck=0.3, belly=-0.3)}
# the bone of each joint ends at a joint, or a landmark
_BONE_END = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "toe_l", "toe_r", 15, 16, 17, "crown", 18, 19, 20,
             21, 22, 23, "tip_l", "tip_r")
_SKIN_SIGMA = {"torso": 0.05, "hidden": 0.01}       # limbs: 0.025

# a generated body model: the SMPL-format dict (what is pickled), the part index (PART_NAMES)
# of every vertex [6890], landmarks: name -> vertex id
BodyModel = namedtuple("BodyModel", "data part landmarks")


def _skinning(rings, joints, marks) -> tuple[np.ndarray, np.ndarray]:
    """Skinning weights [6890, 24] (per ring; each pole takes its ring's) and J_regressor
    [24, 6890] (uniform average of each joint's keyframe ring), in ring order."""
    c, dist = np.stack([r.centre for r in rings]), np.zeros((len(rings), 24))
    for j, e in enumerate(_BONE_END):     # distance of the ring centres to bone j
        a, ab = joints[j], (joints[e] if isinstance(e, int) else marks[e]) - joints[j]
        t = np.clip(((c - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
        dist[:, j] = np.linalg.norm(c - (a + t[:, None] * ab), axis=1)
    skin_joints = {n: a for n, _, a in PARTS}
    allowed, sigma = np.zeros((len(rings), 24), bool), np.zeros(len(rings))
    for i, r in enumerate(rings):     # a hidden connector may follow any bone
        allowed[i, list(skin_joints.get(PART_NAMES[r.part], range(24)))] = True
        sigma[i] = _SKIN_SIGMA.get(PART_NAMES[r.part], 0.025)
    d = np.where(allowed, dist, np.inf)
    logw = -(d ** 2 - (d.min(1, keepdims=True)) ** 2) / (2 * sigma[:, None] ** 2)
    w = np.exp(np.where(allowed, logw, -np.inf))
    w /= w.sum(1, keepdims=True)
    w[w < 1e-4] = 0.0
    w = w / w.sum(1, keepdims=True)
    weights = np.concatenate([w[:1], np.repeat(w, N_SEG, axis=0), w[-1:]])
    jreg = np.zeros((24, N_VERTS))
    for i, r in enumerate(rings):
        if r.joint is not None:
            jreg[r.joint, 1 + i * N_SEG: 1 + (i + 1) * N_SEG] = 1.0 / N_SEG
    return weights, jreg


def _landmark_targets(joints, marks) -> dict:
    """smplx's vertex keypoints (names of vertex_ids) -> (target point on the neutral body,
    the part the vertex is taken from)."""
    hs, nose = marks["head_scale"], marks["nose"]
    t = {"nose": (nose + np.array([0.0, 0.0, 0.03]), "torso")}
    for side, sgn in (("r", -1.0), ("l", 1.0)):
        t[f"{side}eye"] = (np.array([sgn * 0.032 * hs, nose[1] + 0.03 * hs, 0.14 * hs]), "torso")
        t[f"{side}ear"] = (np.array([sgn * 0.09 * hs, nose[1] + 0.01 * hs, joints[15][2]]), "torso")
    for side, sgn, s in (("L", 1.0, "l"), ("R", -1.0, "r")):
        toe, heel = marks[f"toe_{s}"], marks[f"heel_{s}"]
        t[f"{side}BigToe"] = (toe + np.array([-sgn * 0.02, -0.02, 0.0]), f"foot_{s}")
        t[f"{side}SmallToe"] = (toe + np.array([sgn * 0.035, -0.02, -0.03]), f"foot_{s}")
        t[f"{side}Heel"] = (heel + np.array([0.0, -0.02, 0.0]), f"foot_{s}")
    for side, sgn in (("l", 1.0), ("r", -1.0)):
        for name, dz, dx in (("thumb", 0.045, -0.08), ("index", 0.02, -0.01),
                             ("middle", 0.0, 0.0), ("ring", -0.02, -0.01),
                             ("pinky", -0.04, -0.03)):
            t[f"{side}{name}"] = (marks[f"tip_{side}"] + np.array([sgn * dx, 0.0, dz]),
                                  f"arm_{side}")
    return t


def _permutation(verts, part, targets) -> tuple[np.ndarray, dict]:
    """order[new] = old so that smplx's vertex ids land on the landmarks; and name -> new id."""
    from smplx.vertex_ids import vertex_ids
    ids = vertex_ids["smplh"]
    order, pos = np.arange(len(verts)), np.arange(len(verts))     # pos[old] = new
    taken = set()
    for name, (target, part_name) in targets.items():
        cand = np.flatnonzero(part == PART_NAMES.index(part_name))
        cand = cand[np.argsort(np.linalg.norm(verts[cand] - target, axis=1))]
        old = next(int(c) for c in cand if int(c) not in taken)
        taken.add(old)
        new, cur, other = ids[name], pos[old], order[ids[name]]
        order[new], order[cur] = old, other
        pos[old], pos[other] = new, cur
    return order, {name: ids[name] for name in targets}


def build_body_model(gender: str = "neutral") -> BodyModel:
    """Generate the body model of ``gender`` ('neutral', 'male', 'female')."""
    p0 = shape_params(GENDER_PRESETS[gender])
    verts, rings, joints, marks, radial = surface(p0)
    part = np.concatenate([[0], np.repeat([r.part for r in rings], N_SEG),   # + the poles
                           [PART_NAMES.index("foot_r")]])
    tris = faces()
    tris = tris if signed_volume(verts, tris) >= 0 else tris[:, ::-1].copy()   # wound outward
    weights, jreg = _skinning(rings, joints, marks)
    # landmarks chosen on the neutral body, so that every gender shares the permutation
    verts_n, _, joints_n, marks_n, _ = surface(shape_params(None))
    order, chosen = _permutation(verts_n, part, _landmark_targets(joints_n, marks_n))
    shapedirs = np.stack([(surface({**p0, k: p0[k] + 1.0})[0] - surface({**p0, k: p0[k] - 1.0})[0])
                          / 2.0 for k in p0], -1)     # central differences, one unit each
    # pose blend shapes: a bulge around each bent joint j (rows 9 (j - 1) + {0, 4, 8}: trace(R)
    # - 3) along the ring normals, on the visible surface only
    posedirs, radial_all = np.zeros((N_VERTS, 3, 207)), np.pad(radial, ((1, 1), (0, 0)))
    visible = (part != PART_NAMES.index("hidden"))[:, None]
    for j in range(1, 24):
        amp = 0.01 if j in (1, 2, 4, 5, 16, 17, 18, 19) else 0.005
        bump = 4.0 * weights[:, j] * weights[:, constants.SMPL_PARENTS[j]]
        posedirs[:, :, [9 * (j - 1), 9 * (j - 1) + 4, 9 * (j - 1) + 8]] = \
            (-0.5 * amp * bump[:, None] * radial_all * visible)[..., None]
    inv = np.argsort(order)               # vertices reordered: order[new] = old, inv[old] = new
    v_template = verts[order]
    data = {"v_template": v_template, "f": inv[tris].astype(np.uint32),
            "J_regressor": scipy.sparse.csc_matrix(jreg[:, order]),
            "kintree_table": np.array([[UINT32_MAX] + list(constants.SMPL_PARENTS[1:]),
                                       list(range(24))], dtype=np.int64),
            "weights": weights[order], "posedirs": posedirs[order],
            "shapedirs": shapedirs[order], "J": jreg[:, order] @ v_template,
            "bs_style": "lbs", "bs_type": "lrotmin"}
    return BodyModel(data=data, part=part[order], landmarks=chosen)


def _regress_points(model: BodyModel, targets: list, radius: float = 0.09) -> np.ndarray:
    """Rows of convex vertex weights reproducing each target point (within 2 mm), from the
    vertices of the given parts near it: min |V^T w - p|^2 + (10 (1^T w - 1))^2 + 3e-4 |w|^2,
    w >= 0 (NNLS; the ridge spreads the weight over many nearby vertices)."""
    v, out = model.data["v_template"], np.zeros((len(targets), N_VERTS))
    for i, (p, parts) in enumerate(targets):
        ok = np.isin(model.part, [PART_NAMES.index(n) for n in parts])
        d, r = np.linalg.norm(v - p, axis=1), radius
        while True:
            cand = np.flatnonzero(ok & (d < r))
            if (k := len(cand)) >= 8:
                A = np.concatenate([v[cand].T, 10.0 * np.ones((1, k)), np.sqrt(3e-4) * np.eye(k)])
                w, _ = nnls(A, np.concatenate([p, [10.0], np.zeros(k)]), maxiter=50 * k)
                w[w < 1e-4 * w.max()] = 0.0
                w = w / w.sum()
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
    """(J_regressor_extra [9, 6890], J_regressor_h36m [17, 6890]) for the (neutral) model: convex
    vertex weights reproducing, within 2 mm, where those datasets put each joint relative to SMPL's
    skeleton (e.g. LSP hips a little below and outside SMPL's, the H36M 'Neck/Nose' in the lower
    face). Rows: SPIN's 9 extra joints; the 17 H36M joints as SPIN's H36M_TO_J17 reads them, with
    anatomical sides (rows 1-3 the left leg, 4-6 the right: H36M's names of rows 1-3 have the legs
    swapped, H36M_TO_J14[0] = 6 is LSP's right ankle; 11-13 the left arm, 14-16 the right)."""
    J, v = np.asarray(model.data["J"]), model.data["v_template"]
    crown = v[model.part == 0][np.argmax(v[model.part == 0][:, 1])]
    nose = v[model.landmarks["nose"]]
    torso, legs = ("torso",), ("torso", "leg_l", "leg_r")
    leg_l, leg_r, arm_l, arm_r = ((n, "torso") for n in ("leg_l", "leg_r", "arm_l", "arm_r"))
    extra = [
        (J[2] + np.array([-0.012, -0.03, 0.0]), leg_r),                     # right hip (LSP)
        (J[1] + np.array([0.012, -0.03, 0.0]), leg_l),                       # left hip (LSP)
        (0.5 * (J[12] + J[9]) + np.array([0.0, 0.03, 0.0]), torso),          # neck (LSP)
        (crown - np.array([0.0, 0.012, 0.0]), torso),                        # top of head
        ((J[1] + J[2]) / 2 + np.array([0.0, 0.02, 0.0]), legs),              # pelvis (MPII)
        ((J[13] + J[14]) / 2, torso),                                         # thorax (MPII)
        ((J[3] + J[6]) / 2, torso),                                           # spine (H36M)
        (J[15] + np.array([0.0, -0.005, 0.06]), torso),                       # jaw (H36M)
        ((J[15] + crown) / 2 + np.array([0.0, 0.0, 0.01]), torso),            # head (H36M)
    ]
    hip_r, hip_l = J[2] + np.array([-0.01, 0.01, 0.0]), J[1] + np.array([0.01, 0.01, 0.0])
    h36m = [
        ((hip_r + hip_l) / 2, legs),                                          # pelvis
        (hip_l, leg_l), (J[4], ("leg_l",)), (J[7] - np.array([0, 0.01, 0]), ("leg_l",)),
        (hip_r, leg_r), (J[5], ("leg_r",)), (J[8] - np.array([0, 0.01, 0]), ("leg_r",)),
        ((J[3] + J[6]) / 2 + np.array([0.0, 0.02, 0.0]), torso),             # spine
        ((J[13] + J[14]) / 2 + np.array([0.0, 0.01, 0.0]), torso),           # thorax
        (nose - np.array([0.0, 0.02, 0.04]), torso),                         # neck/nose
        (crown - np.array([0.0, 0.05, -0.005]), torso),                      # head
        (J[16], arm_l), (J[18], ("arm_l",)), (J[20], ("arm_l",)),
        (J[17], arm_r), (J[19], ("arm_r",)), (J[21], ("arm_r",)),
    ]
    return _regress_points(model, extra), _regress_points(model, h36m)


def mean_params(mean_pose_aa: np.ndarray) -> dict:
    """``smpl_mean_params.npz`` (SPIN's keys) for the [72] axis-angle pose ``mean_pose_aa``
    (global orientation in the camera frame first): pose (144,) 6D, shape (10,), cam (3,)."""
    R = Rotation.from_rotvec(np.asarray(mean_pose_aa, dtype=np.float64).reshape(24, 3))
    return {"pose": R.as_matrix()[:, :, :2].reshape(144), "shape": np.zeros(10),   # 6D
            "cam": np.array([0.9, 0.0, 0.0])}
