"""A synthetic humanoid body model in SMPL's file format (the stand-in for ``SMPL_*.pkl``).

The surface is one closed tube (a UV sphere of 6890 vertices and 13776 triangles, like SMPL's
mesh; :mod:`datasets.synthetic_tube`) laid through keyframes around SMPL's 24 joints
(:mod:`datasets.synthetic_keyframes`): a mannequin ~1.7 m tall, y up, facing +z, the subject's
left on +x (like SMPL). This module turns it into a body model:

Every joint has a keyframe ring centred on it, so ``J_regressor`` (a sparse [24, 6890] matrix,
each row the uniform average of that ring's vertices) regresses the skeleton exactly.
Skinning weights come from the distances of each ring's centre to the bones its segment may
follow (Gaussian, normalised; all vertices of a ring share them). ``shapedirs`` are the
central differences of the generator in 10 shape parameters (0 height, 1 girth, 2 shoulder
width, 3 hip width, 4 leg length, 5 arm length, 6 belly, 7 head size, 8 neck length, 9 chest),
so beta_k = +-1 is one "standard deviation" of parameter k. ``posedirs`` are small smooth
corrective bulges: each bent joint pushes the surface around it outward along the ring
normals by up to ~1 cm x (1 - cos angle). Male and female variants are other parameter
presets (taller / broader shoulders; shorter / wider hips). A vertex permutation puts the
vertices that smplx reads as face, foot and fingertip keypoints (SMPL's vertex ids, e.g. nose
332, left big toe 3216) on the nose, eyes, ears, toes, heels and fingertips of this body.

The pickle holds plain numpy arrays and a scipy sparse ``J_regressor`` (no chumpy), with the
keys of the official files: ``v_template, f, J_regressor, kintree_table, weights, posedirs,
shapedirs, J, bs_style, bs_type``. The world's extra regressors and mean parameters:
:mod:`datasets.synthetic_regressors` (re-exported here).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

import constants
from datasets.synthetic_keyframes import SHAPE_PARAMS, shape_params
from datasets.synthetic_regressors import (EXTRA_JOINT_NAMES, H36M_JOINT_NAMES,
                                           extra_regressors, mean_params)
from datasets.synthetic_tube import (N_FACES, N_RINGS, N_SEG, N_VERTS, PART_NAMES, PARTS, Ring,
                                     faces, signed_volume, surface)

__all__ = ["N_VERTS", "N_FACES", "N_SEG", "N_RINGS", "SHAPE_PARAMS", "GENDER_PRESETS",
           "BodyModel", "build_body_model", "write_body_models", "extra_regressors",
           "mean_params", "H36M_JOINT_NAMES", "EXTRA_JOINT_NAMES", "PART_NAMES"]

UINT32_MAX = 4294967295                 # the official kintree_table root marker
GENDER_PRESETS = {
    "neutral": {},
    "male": {"height": 0.6, "shoulders": 1.0, "hips": -0.8, "chest": 0.5, "girth": 0.2,
             "head": 0.2},
    "female": {"height": -0.9, "shoulders": -1.0, "hips": 1.2, "chest": -0.3, "girth": -0.3,
               "neck": 0.3, "belly": -0.3},
}
# bone of each joint: joint -> end point (a joint id, or a named landmark)
_BONE_END = {0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 10: "toe_l",
             11: "toe_r", 12: 15, 13: 16, 14: 17, 15: "crown", 16: 18, 17: 19, 18: 20, 19: 21,
             20: 22, 21: 23, 22: "tip_l", 23: "tip_r"}
_SKIN_SIGMA = {"torso": 0.05, "hidden": 0.01}
_SKIN_SIGMA_LIMB = 0.025


@dataclass
class BodyModel:
    """A generated body model: the SMPL pickle dict plus generator metadata."""
    gender: str
    data: dict                      # the SMPL-format dict (what is pickled)
    part: np.ndarray                # [6890] part index per vertex (PART_NAMES)
    ring: np.ndarray                # [6890] ring index per vertex (-1 for the poles)
    landmarks: dict = field(default_factory=dict)   # name -> vertex id


def _seg_dist(points, a, b):
    """Distance of points [N, 3] to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _bone_end(j, joints, marks):
    e = _BONE_END[j]
    return joints[e] if isinstance(e, int) else marks[e]


def _ring_weights(rings, joints, marks) -> np.ndarray:
    """Skinning weights [R, 24] per ring (shared by its vertices)."""
    c = np.stack([r.centre for r in rings])
    dist = np.stack([_seg_dist(c, joints[j], _bone_end(j, joints, marks)) for j in range(24)], 1)
    skin_joints = {n: a for n, _, a in PARTS}
    allowed = np.zeros((len(rings), 24), bool)
    sigma = np.zeros(len(rings))
    hidden = PART_NAMES.index("hidden")
    for i, r in enumerate(rings):
        name = PART_NAMES[r.part]
        if r.part == hidden:
            allowed[i] = True
        else:
            allowed[i, list(skin_joints[name])] = True
        sigma[i] = _SKIN_SIGMA.get(name, _SKIN_SIGMA_LIMB)
    d = np.where(allowed, dist, np.inf)
    logw = -(d ** 2 - (d.min(1, keepdims=True)) ** 2) / (2 * sigma[:, None] ** 2)
    w = np.where(allowed, np.exp(np.where(allowed, logw, -np.inf)), 0.0)
    w /= w.sum(1, keepdims=True)
    w[w < 1e-4] = 0.0
    return w / w.sum(1, keepdims=True)


def _landmark_targets(joints, marks) -> dict:
    """Target points (neutral body) of smplx's vertex keypoints (names of vertex_ids)."""
    hs = marks["head_scale"]
    head_c = joints[15]
    t = {"nose": marks["nose"] + np.array([0.0, 0.0, 0.03])}
    for side, sgn in (("r", -1.0), ("l", 1.0)):
        t[f"{side}eye"] = np.array([sgn * 0.032 * hs, marks["nose"][1] + 0.03 * hs, 0.14 * hs])
        t[f"{side}ear"] = np.array([sgn * 0.09 * hs, marks["nose"][1] + 0.01 * hs, head_c[2]])
    for side, sgn, S in (("L", 1.0, "l"), ("R", -1.0, "r")):
        toe, heel = marks[f"toe_{S}"], marks[f"heel_{S}"]
        t[f"{side}BigToe"] = toe + np.array([-sgn * 0.02, -0.02, 0.0])
        t[f"{side}SmallToe"] = toe + np.array([sgn * 0.035, -0.02, -0.03])
        t[f"{side}Heel"] = heel + np.array([0.0, -0.02, 0.0])
    for side, sgn in (("l", 1.0), ("r", -1.0)):
        tip = marks[f"tip_{side}"]
        for name, dz, dx in (("thumb", 0.045, -0.08), ("index", 0.02, -0.01),
                             ("middle", 0.0, 0.0), ("ring", -0.02, -0.01),
                             ("pinky", -0.04, -0.03)):
            t[f"{side}{name}"] = tip + np.array([sgn * dx, 0.0, dz])
    return t


_LANDMARK_PARTS = {"nose": "torso", "reye": "torso", "leye": "torso", "rear": "torso",
                   "lear": "torso"}


def _landmark_part(name: str) -> str:
    if name in _LANDMARK_PARTS:
        return _LANDMARK_PARTS[name]
    if name.startswith(("LBig", "LSmall", "LHeel")):
        return "foot_l"
    if name.startswith(("RBig", "RSmall", "RHeel")):
        return "foot_r"
    return "arm_l" if name[0] == "l" else "arm_r"


def _permutation(verts, part, targets) -> tuple[np.ndarray, dict]:
    """order[new] = old so that smplx's vertex ids land on the landmarks; and name -> new id."""
    from smplx.vertex_ids import vertex_ids
    ids = vertex_ids["smplh"]
    order = np.arange(len(verts))
    pos = np.arange(len(verts))         # pos[old] = new
    taken, chosen = set(), {}
    for name, target in targets.items():
        cand = np.flatnonzero(part == PART_NAMES.index(_landmark_part(name)))
        cand = cand[np.argsort(np.linalg.norm(verts[cand] - target, axis=1))]
        old = next(int(c) for c in cand if int(c) not in taken)
        taken.add(old)
        new = ids[name]
        cur = pos[old]
        other = order[new]
        order[new], order[cur] = old, other
        pos[old], pos[other] = new, cur
        chosen[name] = new
    return order, chosen


def _shapedirs(p0: dict) -> np.ndarray:
    """Shape blend shapes: central differences of the surface, one unit of each parameter."""
    shapedirs = np.zeros((N_VERTS, 3, len(SHAPE_PARAMS)))
    for k, name in enumerate(SHAPE_PARAMS):
        hi, lo = dict(p0), dict(p0)
        hi[name] += 1.0
        lo[name] -= 1.0
        shapedirs[:, :, k] = (surface(hi)[0] - surface(lo)[0]) / 2.0
    return shapedirs


def _skinning(rings: list[Ring], joints, marks) -> tuple[np.ndarray, np.ndarray]:
    """Skinning weights [6890, 24] (per ring; each pole takes its ring's) and J_regressor
    [24, 6890] (uniform average of each joint's keyframe ring), in ring order."""
    wr = _ring_weights(rings, joints, marks)
    weights = np.zeros((N_VERTS, 24))
    weights[1:-1] = np.repeat(wr, N_SEG, axis=0)
    weights[0] = wr[0]
    weights[-1] = wr[-1]
    jreg = np.zeros((24, N_VERTS))
    for i, r in enumerate(rings):
        if r.joint is not None:
            jreg[r.joint, 1 + i * N_SEG: 1 + (i + 1) * N_SEG] = 1.0 / N_SEG
    return weights, jreg


def _posedirs(weights: np.ndarray, radial: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Pose blend shapes: a bulge around each bent joint (index 9*(j-1) + {0,4,8}: trace(R) - 3),
    along the ring normals ``radial``, on the visible surface only."""
    posedirs = np.zeros((N_VERTS, 3, 207))
    radial_all = np.zeros((N_VERTS, 3))
    radial_all[1:-1] = radial
    visible = (part != PART_NAMES.index("hidden"))[:, None]
    parents = constants.SMPL_PARENTS
    for j in range(1, 24):
        amp = 0.01 if j in (1, 2, 4, 5, 16, 17, 18, 19) else 0.005
        bump = 4.0 * weights[:, j] * weights[:, parents[j]]
        disp = -0.5 * amp * bump[:, None] * radial_all * visible
        for d in (0, 4, 8):
            posedirs[:, :, 9 * (j - 1) + d] = disp
    return posedirs


def _smpl_dict(verts, tris, jreg, weights, posedirs, shapedirs, order) -> dict:
    """The SMPL pickle content, vertices reordered by ``order`` (order[new] = old)."""
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    v_template = verts[order]
    return {
        "v_template": v_template,
        "f": inv[tris].astype(np.uint32),
        "J_regressor": scipy.sparse.csc_matrix(jreg[:, order]),
        "kintree_table": np.array([[UINT32_MAX] + list(constants.SMPL_PARENTS[1:]),
                                   list(range(24))], dtype=np.int64),
        "weights": weights[order],
        "posedirs": posedirs[order],
        "shapedirs": shapedirs[order],
        "J": jreg[:, order] @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def build_body_model(gender: str = "neutral") -> BodyModel:
    """Generate the body model of ``gender`` ('neutral', 'male', 'female')."""
    if gender not in GENDER_PRESETS:
        raise ValueError(f"gender must be one of {sorted(GENDER_PRESETS)}, got {gender!r}")
    p0 = shape_params(GENDER_PRESETS[gender])
    verts, rings, joints, marks, radial = surface(p0)
    ring_of = np.concatenate([[-1], np.repeat(np.arange(len(rings)), N_SEG), [-1]])
    part = np.array([rings[r].part if r >= 0 else 0 for r in ring_of])
    part[-1] = PART_NAMES.index("foot_r")
    tris = faces()
    if signed_volume(verts, tris) < 0:
        tris = tris[:, ::-1].copy()
    weights, jreg = _skinning(rings, joints, marks)
    # landmarks (chosen on the neutral body so that every gender shares the permutation)
    if gender != "neutral":
        verts_n, _, joints_n, marks_n, _ = surface(shape_params(None))
    else:
        verts_n, joints_n, marks_n = verts, joints, marks
    order, chosen = _permutation(verts_n, part, _landmark_targets(joints_n, marks_n))
    data = _smpl_dict(verts, tris, jreg, weights, _posedirs(weights, radial, part),
                      _shapedirs(p0), order)
    return BodyModel(gender=gender, data=data, part=part[order], ring=ring_of[order],
                     landmarks=chosen)


def write_body_models(smpl_dir: str | os.PathLike,
                      genders=("neutral", "male", "female")) -> dict[str, BodyModel]:
    """Write ``SMPL_<GENDER>.pkl`` of each of ``genders`` under ``smpl_dir``; returns the
    models."""
    smpl_dir = Path(smpl_dir)
    smpl_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for gender in genders:
        model = build_body_model(gender)
        path = smpl_dir / f"SMPL_{gender.upper()}.pkl"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump(model.data, fh, protocol=2)
        os.replace(tmp, path)
        out[gender] = model
    return out
