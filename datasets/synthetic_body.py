"""A synthetic humanoid body model in SMPL's file format (the stand-in for ``SMPL_*.pkl``).

Topology: a UV sphere of ``N_RINGS`` rings of ``N_SEG`` vertices plus two poles
(246 * 28 + 2 = 6890 vertices, 2 * 246 * 28 = 13776 triangles; closed, genus 0, like SMPL's
mesh). The sphere is a single tube from the north pole (top of the head) to the south pole
(tip of the right foot), and the tube is laid through the body:

    head + neck + torso (crown -> crotch) | arm L | arm R | leg L | foot L | leg R | foot R

Each segment is a rounded "sausage" around a chain of SMPL joints (elliptical cross-sections
interpolated between keyframes, quarter-ellipse end caps). Between two sausages the tube pinches
to 2 mm and runs *inside* the body along the bones (one ring per joint on the way), so the
connections are hidden and the visible surface is the union of the sausages: a mannequin with
SMPL's 24 joints, ~1.7 m tall, y up, facing +z, the subject's left on +x (like SMPL).

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
shapedirs, J, bs_style, bs_type``.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.optimize import nnls

import constants

__all__ = ["N_VERTS", "N_FACES", "N_SEG", "N_RINGS", "SHAPE_PARAMS", "GENDER_PRESETS",
           "BodyModel", "build_body_model", "write_body_models", "extra_regressors",
           "mean_params", "H36M_JOINT_NAMES", "EXTRA_JOINT_NAMES", "PART_NAMES"]

N_SEG = 28
N_RINGS = 246
N_VERTS = N_SEG * N_RINGS + 2          # 6890
N_FACES = 2 * N_SEG * N_RINGS           # 13776
N_CAP = 5                               # rings per end cap (the last one is the pinch)
R_MIN = 0.002                           # radius of pinches and hidden connectors (m)
UINT32_MAX = 4294967295                 # the official kintree_table root marker

SHAPE_PARAMS = ("height", "girth", "shoulders", "hips", "legs", "arms", "belly", "head",
                "neck", "chest")
GENDER_PRESETS = {
    "neutral": {},
    "male": {"height": 0.6, "shoulders": 1.0, "hips": -0.8, "chest": 0.5, "girth": 0.2,
             "head": 0.2},
    "female": {"height": -0.9, "shoulders": -1.0, "hips": 1.2, "chest": -0.3, "girth": -0.3,
               "neck": 0.3, "belly": -0.3},
}
PART_NAMES = ("torso", "arm_l", "arm_r", "leg_l", "foot_l", "leg_r", "foot_r", "hidden")

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

# ---------------------------------------------------------------------------------------------
# The neutral body (metres). Keyframes: name, centre, (ru, rv) radii along (u, v), joint id.
# Torso/head: u = x (width), v = z (depth). Arms: u = y (thickness), v = depth. Legs like the
# torso. Feet: u = y (height), v = width.
_TORSO = [  # name, y, z, ru, rv, joint
    ("head_top", 0.465, 0.025, 0.077, 0.096, None),
    ("head_mid", 0.425, 0.027, 0.076, 0.095, None),
    ("jaw", 0.390, 0.028, 0.068, 0.086, None),
    ("head", 0.365, 0.020, 0.056, 0.068, 15),
    ("neck", 0.300, -0.005, 0.052, 0.052, 12),
    ("neck_base", 0.265, -0.005, 0.075, 0.060, None),
    ("collar_lvl", 0.215, 0.000, 0.155, 0.085, None),
    ("chest", 0.150, 0.012, 0.165, 0.098, None),
    ("spine3", 0.090, 0.012, 0.158, 0.100, 9),
    ("spine2", 0.030, 0.008, 0.148, 0.098, 6),
    ("waist", -0.040, 0.005, 0.135, 0.092, None),
    ("spine1", -0.105, 0.005, 0.140, 0.095, 3),
    ("hip_lvl", -0.170, 0.010, 0.152, 0.100, None),
    ("pelvis", -0.225, 0.015, 0.162, 0.102, 0),
    ("low_pelvis", -0.285, 0.015, 0.155, 0.095, None),
    ("crotch", -0.330, 0.015, 0.120, 0.080, None),
]
_CROWN_CAP, _CROTCH_CAP = 0.080, 0.045
_ARM = [  # left arm: name, x, y, z, ru, rv, joint (right: x -> -x, joint + 1)
    ("collar", 0.075, 0.210, -0.005, 0.045, 0.050, 13),
    ("shoulder", 0.175, 0.225, -0.015, 0.056, 0.056, 16),
    ("upper", 0.300, 0.218, -0.022, 0.048, 0.050, None),
    ("elbow", 0.435, 0.212, -0.030, 0.040, 0.042, 18),
    ("fore", 0.540, 0.215, -0.032, 0.040, 0.043, None),
    ("wrist", 0.700, 0.220, -0.035, 0.022, 0.030, 20),
    ("palm", 0.745, 0.218, -0.038, 0.016, 0.044, None),
    ("hand", 0.785, 0.215, -0.040, 0.014, 0.045, 22),
]
_ARM_CAPS = (0.040, 0.095)
_LEG = [
    ("hip", 0.075, -0.315, 0.015, 0.085, 0.085, 1),
    ("thigh", 0.085, -0.450, 0.020, 0.078, 0.080, None),
    ("thigh_low", 0.092, -0.600, 0.020, 0.062, 0.064, None),
    ("knee", 0.095, -0.700, 0.020, 0.052, 0.054, 4),
    ("calf", 0.093, -0.820, 0.005, 0.052, 0.058, None),
    ("calf_low", 0.090, -0.960, -0.010, 0.040, 0.042, None),
    ("ankle", 0.085, -1.085, -0.020, 0.033, 0.036, 7),
]
_LEG_CAPS = (0.070, 0.055)
_FOOT = [
    ("heel", 0.086, -1.128, -0.040, 0.035, 0.035, None),
    ("mid", 0.098, -1.128, 0.030, 0.036, 0.042, None),
    ("ball", 0.110, -1.133, 0.095, 0.030, 0.047, 10),
    ("toe", 0.118, -1.140, 0.130, 0.024, 0.045, None),
]
_FOOT_CAPS = (0.045, 0.055)
_RIGHT = {13: 14, 16: 17, 18: 19, 20: 21, 22: 23, 1: 2, 4: 5, 7: 8, 10: 11}

# parts in tube order: (name, side, reference axis for the ring frame u, allowed skin joints)
_PARTS = [
    ("torso", 0, (1.0, 0.0, 0.0), (0, 3, 6, 9, 12, 15)),
    ("arm_l", 1, (0.0, 1.0, 0.0), (9, 13, 16, 18, 20, 22)),
    ("arm_r", -1, (0.0, 1.0, 0.0), (9, 14, 17, 19, 21, 23)),
    ("leg_l", 1, (1.0, 0.0, 0.0), (0, 1, 4, 7)),
    ("foot_l", 1, (0.0, 1.0, 0.0), (7, 10)),
    ("leg_r", -1, (1.0, 0.0, 0.0), (0, 2, 5, 8)),
    ("foot_r", -1, (0.0, 1.0, 0.0), (8, 11)),
]
# hidden connectors after each part: the joints the pinched tube visits (in order)
_CONNECTORS = {
    "torso": (0, 3, 6, 9),
    "arm_l": (22, 20, 18, 16, 13, 9),
    "arm_r": (23, 21, 19, 17, 14, 9, 6, 3, 0),
    "leg_l": (),
    "foot_l": (10, 7, 4, 1, 0),
    "leg_r": (),
    "foot_r": (),
}
# bone of each joint: joint -> end point (a joint id, or a named landmark)
_BONE_END = {0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 10: "toe_l",
             11: "toe_r", 12: 15, 13: 16, 14: 17, 15: "crown", 16: 18, 17: 19, 18: 20, 19: 21,
             20: 22, 21: 23, 22: "tip_l", 23: "tip_r"}
_SKIN_SIGMA = {"torso": 0.05, "hidden": 0.01}
_SKIN_SIGMA_LIMB = 0.025
_NOSE = (0.0, 0.415, 0.118)     # nose bump centre (neutral, on the face)


@dataclass
class _Ring:
    centre: np.ndarray
    ru: float
    rv: float
    part: int                 # index into PART_NAMES
    joint: int | None = None  # joint whose keyframe this ring is
    ref: np.ndarray | None = None


@dataclass
class BodyModel:
    """A generated body model: the SMPL pickle dict plus generator metadata."""
    gender: str
    data: dict                      # the SMPL-format dict (what is pickled)
    part: np.ndarray                # [6890] part index per vertex (PART_NAMES)
    ring: np.ndarray                # [6890] ring index per vertex (-1 for the poles)
    landmarks: dict = field(default_factory=dict)   # name -> vertex id


# ---------------------------------------------------------------------------------------------
# the generator: shape parameters -> keyframes -> rings -> vertices

def _params(values: dict | None) -> dict:
    p = {k: 0.0 for k in SHAPE_PARAMS}
    for k, v in (values or {}).items():
        if k not in p:
            raise ValueError(f"unknown shape parameter {k!r}; expected one of {SHAPE_PARAMS}")
        p[k] = float(v)
    return p


def _keyframes(p: dict) -> tuple[dict, dict, dict]:
    """Keyframes of every part, the 24 joints and the landmarks, for parameters ``p``.

    Returns (parts: name -> (list of (centre, ru, rv, joint)), (cap_start, cap_end)),
    joints [24, 3], landmarks name -> point.
    """
    girth = 1.0 + 0.12 * p["girth"]
    limb_g = 1.0 + 0.08 * p["girth"]
    hand_g = 1.0 + 0.02 * p["girth"]
    head_s = 1.0 + 0.06 * p["head"]
    neck_up = 0.015 * p["neck"]
    sh_w = 0.018 * p["shoulders"]
    hip_w = 0.012 * p["hips"]
    legs = 1.0 + 0.05 * p["legs"]
    arms = 1.0 + 0.05 * p["arms"]
    belly = 0.02 * p["belly"]
    chest = 0.015 * p["chest"]
    scale = 1.0 + 0.055 * p["height"]

    neck_y = 0.300
    torso = []
    for name, y, z, ru, rv, j in _TORSO:
        c = np.array([0.0, y, z])
        if name in ("head_top", "head_mid", "jaw", "head"):
            c[1] = neck_y + (y - neck_y) * head_s + neck_up
            ru, rv = ru * head_s, rv * head_s
        else:
            if name == "neck":
                c[1] += 0.5 * neck_up
            ru, rv = ru * girth, rv * girth
            if name == "collar_lvl":
                ru += sh_w
            if name == "chest":
                ru += 0.6 * sh_w + chest
                rv += chest
            if name == "spine3":
                ru += 0.5 * chest
                rv += 0.7 * chest
            if name == "waist":
                rv += belly
                c[2] += 0.5 * belly
            if name in ("spine2", "spine1"):
                rv += 0.6 * belly
                c[2] += 0.3 * belly
            if name in ("hip_lvl", "pelvis", "low_pelvis", "crotch"):
                ru += 1.6 * hip_w
        torso.append((c, ru, rv, j))
    crown = torso[0][0] + np.array([0.0, _CROWN_CAP * head_s, 0.0])
    parts = {"torso": (torso, (_CROWN_CAP * head_s, _CROTCH_CAP * girth))}

    joints = np.zeros((24, 3))
    marks = {"crown": crown}
    for c, _, _, j in torso:
        if j is not None:
            joints[j] = c

    for side, sgn in (("l", 1.0), ("r", -1.0)):
        # arm
        arm = []
        sh_x = _ARM[1][1] + sh_w
        for name, x, y, z, ru, rv, j in _ARM:
            x = x + (0.5 * sh_w if name == "collar" else sh_w)
            if name not in ("collar", "shoulder"):
                x = sh_x + (x - sh_x) * arms
            g = hand_g if name in ("wrist", "palm", "hand") else limb_g
            arm.append((np.array([sgn * x, y, z]), ru * g, rv * g,
                        j if sgn > 0 else _RIGHT[j] if j is not None else None))
        caps = (_ARM_CAPS[0], _ARM_CAPS[1] * arms)
        parts[f"arm_{side}"] = (arm, caps)
        last = arm[-1][0]
        marks[f"tip_{side}"] = last + np.array([sgn * caps[1], 0.0, 0.0])
        # leg and foot
        hip_y = _LEG[0][2]
        leg = []
        for name, x, y, z, ru, rv, j in _LEG:
            x = x + hip_w
            y = hip_y + (y - hip_y) * legs
            g = girth if name in ("hip", "thigh") else limb_g
            leg.append((np.array([sgn * x, y, z]), ru * g, rv * g,
                        j if (j is None or sgn > 0) else _RIGHT[j]))
        parts[f"leg_{side}"] = (leg, (_LEG_CAPS[0], _LEG_CAPS[1]))
        foot = []
        for name, x, y, z, ru, rv, j in _FOOT:
            x = x + hip_w
            y = hip_y + (y - hip_y) * legs
            foot.append((np.array([sgn * x, y, z]), ru, rv,
                         j if (j is None or sgn > 0) else _RIGHT[j]))
        parts[f"foot_{side}"] = (foot, _FOOT_CAPS)
        marks[f"toe_{side}"] = foot[-1][0] + np.array([0.0, 0.0, _FOOT_CAPS[1]])
        marks[f"heel_{side}"] = foot[0][0] - np.array([0.0, 0.0, _FOOT_CAPS[0]])
        for kf in arm + leg + foot:
            if kf[3] is not None:
                joints[kf[3]] = kf[0]

    # global size: everything scales about the origin
    joints = joints * scale
    marks = {k: v * scale for k, v in marks.items()}
    parts = {name: ([(c * scale, ru * scale, rv * scale, j) for c, ru, rv, j in kfs],
                    (caps[0] * scale, caps[1] * scale))
             for name, (kfs, caps) in parts.items()}
    marks["nose"] = np.array(_NOSE) * np.array([1.0, 1.0, 1.0])
    marks["nose"][1] = (neck_y + (_NOSE[1] - neck_y) * head_s + neck_up) * scale
    marks["nose"][2] = _NOSE[2] * head_s * scale
    marks["head_scale"] = head_s * scale
    return parts, joints, marks


def _catmull_rom(p0, p1, p2, p3, s):
    s2, s3 = s * s, s * s * s
    return 0.5 * ((2 * p1) + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * s3)


def _ring_layout() -> dict:
    """How many interior rings each keyframe segment gets (fixed for every parameter value).

    Computed once from the neutral body: the ring budget left after keyframes, caps and
    connectors is shared between segments in proportion to their length.
    """
    parts, _, _ = _keyframes(_params(None))
    fixed, seg_len, keys = 0, [], []
    for i, (name, _, _, _) in enumerate(_PARTS):
        kfs, _ = parts[name]
        pole_start, pole_end = i == 0, i == len(_PARTS) - 1
        fixed += len(kfs) + (N_CAP - 1 if pole_start else N_CAP) + \
            (N_CAP - 1 if pole_end else N_CAP) + len(_CONNECTORS[name])
        for k in range(len(kfs) - 1):
            seg_len.append(float(np.linalg.norm(kfs[k + 1][0] - kfs[k][0])))
            keys.append((name, k))
    budget = N_RINGS - fixed
    if budget < 0:
        raise AssertionError("ring budget exceeded")
    share = np.asarray(seg_len) / sum(seg_len) * budget
    counts = np.floor(share).astype(int)
    for idx in np.argsort(-(share - counts))[:budget - counts.sum()]:
        counts[idx] += 1
    return {key: int(c) for key, c in zip(keys, counts)}


_LAYOUT: dict | None = None


def _rings(p: dict) -> tuple[list[_Ring], np.ndarray, np.ndarray, np.ndarray, dict]:
    """The ring sequence of the tube for parameters ``p``.

    Returns (rings, north pole [3], south pole [3], joints [24, 3], landmarks).
    """
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = _ring_layout()
    parts, joints, marks = _keyframes(p)
    rings: list[_Ring] = []
    north = south = None
    for i, (name, _, ref, _) in enumerate(_PARTS):
        kfs, (cap0, cap1) = parts[name]
        pid = PART_NAMES.index(name)
        ref = np.asarray(ref)
        cs = [k[0] for k in kfs]
        # start cap (from the pinch / the north pole towards the first keyframe)
        t0 = cs[1] - cs[0]
        t0 /= np.linalg.norm(t0)
        ks = range(N_CAP - 1, 0, -1) if i == 0 else range(N_CAP, 0, -1)
        if i == 0:
            north = cs[0] - t0 * cap0
        for k in ks:
            phi = 0.5 * np.pi * k / N_CAP
            rings.append(_Ring(cs[0] - t0 * cap0 * np.sin(phi),
                               max(kfs[0][1] * np.cos(phi), R_MIN),
                               max(kfs[0][2] * np.cos(phi), R_MIN), pid, None, ref))
        # keyframes and the rings between them
        ext = [2 * cs[0] - cs[1]] + cs + [2 * cs[-1] - cs[-2]]
        rad = [np.array(k[1:3]) for k in kfs]
        rext = [rad[0]] + rad + [rad[-1]]
        for k in range(len(kfs)):
            rings.append(_Ring(cs[k], kfs[k][1], kfs[k][2], pid, kfs[k][3], ref))
            if k == len(kfs) - 1:
                break
            n = _LAYOUT[(name, k)]
            for m in range(1, n + 1):
                s = m / (n + 1)
                c = _catmull_rom(ext[k], ext[k + 1], ext[k + 2], ext[k + 3], s)
                r = _catmull_rom(rext[k], rext[k + 1], rext[k + 2], rext[k + 3], s)
                rings.append(_Ring(c, max(r[0], R_MIN), max(r[1], R_MIN), pid, None, ref))
        # end cap
        t1 = cs[-1] - cs[-2]
        t1 /= np.linalg.norm(t1)
        last = i == len(_PARTS) - 1
        for k in range(1, N_CAP if last else N_CAP + 1):
            phi = 0.5 * np.pi * k / N_CAP
            rings.append(_Ring(cs[-1] + t1 * cap1 * np.sin(phi),
                               max(kfs[-1][1] * np.cos(phi), R_MIN),
                               max(kfs[-1][2] * np.cos(phi), R_MIN), pid, None, ref))
        if last:
            south = cs[-1] + t1 * cap1
        # hidden connector to the next part
        for j in _CONNECTORS[name]:
            rings.append(_Ring(joints[j].copy(), R_MIN, R_MIN, PART_NAMES.index("hidden")))
    if len(rings) != N_RINGS:
        raise AssertionError(f"built {len(rings)} rings, expected {N_RINGS}")
    return rings, north, south, joints, marks


def _cross(a, b) -> np.ndarray:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


def _frames(rings: list[_Ring], north, south) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangent t, u, v (right-handed, v = t x u) of every ring. Each [R, 3]."""
    c = np.stack([r.centre for r in rings])
    prev = np.concatenate([north[None], c[:-1]])
    nxt = np.concatenate([c[1:], south[None]])
    t = nxt - prev
    u = np.zeros_like(c)
    v = np.zeros_like(c)
    last_t, last_u = np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    norms = np.sqrt((t * t).sum(1))
    for i, r in enumerate(rings):
        ti = t[i] / norms[i] if norms[i] > 1e-12 else last_t
        ref = r.ref if r.ref is not None else last_u
        ui = ref - (ref @ ti) * ti
        if ui @ ui < 0.04:   # reference nearly along the tangent: pick another
            for alt in np.eye(3):
                ui = alt - (alt @ ti) * ti
                if ui @ ui >= 0.25:
                    break
        ui = ui / math.sqrt(ui @ ui)
        t[i], u[i], v[i] = ti, ui, _cross(ti, ui)
        last_t, last_u = ti, ui
    return t, u, v


def _surface(p: dict):
    """Vertices (ring order, before the landmark permutation) and metadata for parameters p."""
    rings, north, south, joints, marks = _rings(p)
    _, u, v = _frames(rings, north, south)
    theta = 2 * np.pi * np.arange(N_SEG) / N_SEG
    cos, sin = np.cos(theta), np.sin(theta)
    c = np.stack([r.centre for r in rings])
    ru = np.array([r.ru for r in rings])
    rv = np.array([r.rv for r in rings])
    offs = (ru[:, None, None] * cos[None, :, None] * u[:, None, :]
            + rv[:, None, None] * sin[None, :, None] * v[:, None, :])          # [R, S, 3]
    verts = c[:, None, :] + offs
    # nose: a small bump on the face
    torso = PART_NAMES.index("torso")
    is_head = np.array([r.part == torso and r.centre[1] > joints[12][1] for r in rings])
    radial = offs / np.maximum(np.linalg.norm(offs, axis=-1, keepdims=True), 1e-12)
    d2 = ((verts - marks["nose"]) ** 2).sum(-1)
    bump = 0.016 * marks["head_scale"] * np.exp(-d2 / (2 * (0.014 * marks["head_scale"]) ** 2))
    verts = verts + (bump * is_head[:, None])[..., None] * radial
    allv = np.concatenate([north[None], verts.reshape(-1, 3), south[None]])
    return allv, rings, joints, marks, radial.reshape(-1, 3)


def _faces() -> np.ndarray:
    """UV-sphere triangles (ring order), [13776, 3], winding: outward for the tube."""
    S, R = N_SEG, N_RINGS
    idx = lambda r, k: 1 + r * S + (k % S)          # noqa: E731
    f = []
    for k in range(S):
        f.append((0, idx(0, k + 1), idx(0, k)))
    for r in range(R - 1):
        for k in range(S):
            a, b = idx(r, k), idx(r, k + 1)
            c, d = idx(r + 1, k), idx(r + 1, k + 1)
            f.append((a, b, d))
            f.append((a, d, c))
    south = 1 + R * S
    for k in range(S):
        f.append((south, idx(R - 1, k), idx(R - 1, k + 1)))
    return np.asarray(f, dtype=np.int64)


def _signed_volume(v, f) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


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
    allowed = np.zeros((len(rings), 24), bool)
    sigma = np.zeros(len(rings))
    hidden = PART_NAMES.index("hidden")
    for i, r in enumerate(rings):
        name = PART_NAMES[r.part]
        if r.part == hidden:
            allowed[i] = True
        else:
            allowed[i, list(dict((n, a) for n, _, _, a in _PARTS)[name])] = True
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


def _generate(p: dict):
    verts, rings, joints, marks, radial = _surface(p)
    return verts, rings, joints, marks, radial


def build_body_model(gender: str = "neutral") -> BodyModel:
    """Generate the body model of ``gender`` ('neutral', 'male', 'female')."""
    if gender not in GENDER_PRESETS:
        raise ValueError(f"gender must be one of {sorted(GENDER_PRESETS)}, got {gender!r}")
    p0 = _params(GENDER_PRESETS[gender])
    verts, rings, joints, marks, radial = _generate(p0)
    n_r = len(rings)
    ring_of = np.concatenate([[-1], np.repeat(np.arange(n_r), N_SEG), [-1]])
    part = np.array([rings[r].part if r >= 0 else 0 for r in ring_of])
    part[-1] = PART_NAMES.index("foot_r")

    faces = _faces()
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()

    # shape blend shapes: central differences, one unit of each parameter
    shapedirs = np.zeros((N_VERTS, 3, len(SHAPE_PARAMS)))
    for k, name in enumerate(SHAPE_PARAMS):
        hi, lo = dict(p0), dict(p0)
        hi[name] += 1.0
        lo[name] -= 1.0
        shapedirs[:, :, k] = (_generate(hi)[0] - _generate(lo)[0]) / 2.0

    # skinning weights (per ring), J_regressor (uniform average of each joint's keyframe ring)
    wr = _ring_weights(rings, joints, marks)
    weights = np.zeros((N_VERTS, 24))
    weights[1:-1] = np.repeat(wr, N_SEG, axis=0)
    weights[0] = wr[0]
    weights[-1] = wr[-1]
    jreg = np.zeros((24, N_VERTS))
    for i, r in enumerate(rings):
        if r.joint is not None:
            jreg[r.joint, 1 + i * N_SEG: 1 + (i + 1) * N_SEG] = 1.0 / N_SEG

    # pose blend shapes: bulge around each bent joint (index 9*(j-1) + {0,4,8}: trace(R) - 3)
    posedirs = np.zeros((N_VERTS, 3, 207))
    hidden = PART_NAMES.index("hidden")
    radial_all = np.zeros((N_VERTS, 3))
    radial_all[1:-1] = radial
    visible = (part != hidden)[:, None]
    parents = constants.SMPL_PARENTS
    for j in range(1, 24):
        amp = 0.01 if j in (1, 2, 4, 5, 16, 17, 18, 19) else 0.005
        bump = 4.0 * weights[:, j] * weights[:, parents[j]]
        disp = -0.5 * amp * bump[:, None] * radial_all * visible
        for d in (0, 4, 8):
            posedirs[:, :, 9 * (j - 1) + d] = disp

    # landmarks (chosen on the neutral body so that every gender shares the permutation)
    if gender == "neutral":
        nv, nr, nj, nm, _ = verts, rings, joints, marks, radial
    else:
        nv, nr, nj, nm, _ = _generate(_params(None))
    order, chosen = _permutation(nv, part, _landmark_targets(nj, nm))
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))

    v_template = verts[order]
    data = {
        "v_template": v_template,
        "f": inv[faces].astype(np.uint32),
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
    return BodyModel(gender=gender, data=data, part=part[order], ring=ring_of[order],
                     landmarks=chosen)


def write_body_models(smpl_dir: str | os.PathLike) -> dict[str, BodyModel]:
    """Write ``SMPL_{NEUTRAL,MALE,FEMALE}.pkl`` under ``smpl_dir``; returns the models."""
    smpl_dir = Path(smpl_dir)
    smpl_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for gender in ("neutral", "male", "female"):
        model = build_body_model(gender)
        path = smpl_dir / f"SMPL_{gender.upper()}.pkl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(model.data, fh, protocol=2)
        os.replace(tmp, path)
        out[gender] = model
    return out


# ---------------------------------------------------------------------------------------------
# extra regressors and mean parameters

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
