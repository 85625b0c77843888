"""The synthetic body's skeleton: shape parameters -> keyframes of every body segment.

The neutral body (metres; y up, facing +z, the subject's left on +x, like SMPL) is a set of
segments, each a chain of keyframes (a centre and the two radii of an elliptical cross-section,
and the SMPL joint the keyframe sits on, if any): head + neck + torso (crown -> crotch), the
arms, the legs and the feet, with the end-cap lengths of each segment. Every SMPL joint has a
keyframe centred on it. :func:`keyframes` applies the 10 shape parameters of
:data:`SHAPE_PARAMS` (0 height, 1 girth, 2 shoulder width, 3 hip width, 4 leg length, 5 arm
length, 6 belly, 7 head size, 8 neck length, 9 chest) and returns the segments, the 24 joints
and the landmarks (crown, finger tips, toes, heels, nose) that the mesh
(:mod:`datasets.synthetic_tube`) and the body model (:mod:`datasets.synthetic_body`) use.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SHAPE_PARAMS", "shape_params", "keyframes"]

SHAPE_PARAMS = ("height", "girth", "shoulders", "hips", "legs", "arms", "belly", "head",
                "neck", "chest")

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
_NOSE = (0.0, 0.415, 0.118)     # nose bump centre (neutral, on the face)


_HEAD = ("head_top", "head_mid", "jaw", "head")
_NECK_Y = 0.300


def shape_params(values: dict | None) -> dict:
    """All of :data:`SHAPE_PARAMS`, 0 unless given in ``values``."""
    p = {k: 0.0 for k in SHAPE_PARAMS}
    for k, v in (values or {}).items():
        if k not in p:
            raise ValueError(f"unknown shape parameter {k!r}; expected one of {SHAPE_PARAMS}")
        p[k] = float(v)
    return p


def _factors(p: dict) -> dict:
    """The body proportions set by the shape parameters ``p``."""
    return {"girth": 1.0 + 0.12 * p["girth"], "limb_g": 1.0 + 0.08 * p["girth"],
            "hand_g": 1.0 + 0.02 * p["girth"], "head_s": 1.0 + 0.06 * p["head"],
            "neck_up": 0.015 * p["neck"], "sh_w": 0.018 * p["shoulders"],
            "hip_w": 0.012 * p["hips"], "legs": 1.0 + 0.05 * p["legs"],
            "arms": 1.0 + 0.05 * p["arms"], "belly": 0.02 * p["belly"],
            "chest": 0.015 * p["chest"], "scale": 1.0 + 0.055 * p["height"]}


def _side_joint(j: int | None, sgn: float) -> int | None:
    """The joint of a left-side keyframe on the side ``sgn`` (+1 left, -1 right)."""
    return j if (j is None or sgn > 0) else _RIGHT[j]


def _torso_keyframe(name: str, y: float, z: float, ru: float, rv: float,
                    s: dict) -> tuple[np.ndarray, float, float]:
    c = np.array([0.0, y, z])
    if name in _HEAD:
        c[1] = _NECK_Y + (y - _NECK_Y) * s["head_s"] + s["neck_up"]
        return c, ru * s["head_s"], rv * s["head_s"]
    if name == "neck":
        c[1] += 0.5 * s["neck_up"]
    ru, rv = ru * s["girth"], rv * s["girth"]
    if name == "collar_lvl":
        ru += s["sh_w"]
    if name == "chest":
        ru += 0.6 * s["sh_w"] + s["chest"]
        rv += s["chest"]
    if name == "spine3":
        ru += 0.5 * s["chest"]
        rv += 0.7 * s["chest"]
    if name == "waist":
        rv += s["belly"]
        c[2] += 0.5 * s["belly"]
    if name in ("spine2", "spine1"):
        rv += 0.6 * s["belly"]
        c[2] += 0.3 * s["belly"]
    if name in ("hip_lvl", "pelvis", "low_pelvis", "crotch"):
        ru += 1.6 * s["hip_w"]
    return c, ru, rv


def _arm(s: dict, sgn: float) -> list:
    arm = []
    sh_x = _ARM[1][1] + s["sh_w"]
    for name, x, y, z, ru, rv, j in _ARM:
        x = x + (0.5 * s["sh_w"] if name == "collar" else s["sh_w"])
        if name not in ("collar", "shoulder"):
            x = sh_x + (x - sh_x) * s["arms"]
        g = s["hand_g"] if name in ("wrist", "palm", "hand") else s["limb_g"]
        arm.append((np.array([sgn * x, y, z]), ru * g, rv * g, _side_joint(j, sgn)))
    return arm


def _leg_point(x: float, y: float, z: float, s: dict, sgn: float) -> np.ndarray:
    hip_y = _LEG[0][2]
    return np.array([sgn * (x + s["hip_w"]), hip_y + (y - hip_y) * s["legs"], z])


def _leg(s: dict, sgn: float) -> list:
    leg = []
    for name, x, y, z, ru, rv, j in _LEG:
        g = s["girth"] if name in ("hip", "thigh") else s["limb_g"]
        leg.append((_leg_point(x, y, z, s, sgn), ru * g, rv * g, _side_joint(j, sgn)))
    return leg


def _foot(s: dict, sgn: float) -> list:
    return [(_leg_point(x, y, z, s, sgn), ru, rv, _side_joint(j, sgn))
            for name, x, y, z, ru, rv, j in _FOOT]


def _scaled(parts: dict, joints: np.ndarray, marks: dict, s: dict) -> tuple[dict, dict, dict]:
    """Everything scaled about the origin by the height factor; the nose and the head scale."""
    scale = s["scale"]
    joints = joints * scale
    marks = {k: v * scale for k, v in marks.items()}
    parts = {name: ([(c * scale, ru * scale, rv * scale, j) for c, ru, rv, j in kfs],
                    (caps[0] * scale, caps[1] * scale))
             for name, (kfs, caps) in parts.items()}
    marks["nose"] = np.array(_NOSE, dtype=np.float64)
    marks["nose"][1] = (_NECK_Y + (_NOSE[1] - _NECK_Y) * s["head_s"] + s["neck_up"]) * scale
    marks["nose"][2] = _NOSE[2] * s["head_s"] * scale
    marks["head_scale"] = s["head_s"] * scale
    return parts, joints, marks


def keyframes(p: dict) -> tuple[dict, np.ndarray, dict]:
    """Keyframes of every part, the 24 joints and the landmarks, for parameters ``p``.

    Returns (parts: name -> (list of (centre, ru, rv, joint)), (cap_start, cap_end)),
    joints [24, 3], landmarks name -> point (and 'head_scale').
    """
    s = _factors(p)
    torso = [(*_torso_keyframe(name, y, z, ru, rv, s), j) for name, y, z, ru, rv, j in _TORSO]
    parts = {"torso": (torso, (_CROWN_CAP * s["head_s"], _CROTCH_CAP * s["girth"]))}
    marks = {"crown": torso[0][0] + np.array([0.0, _CROWN_CAP * s["head_s"], 0.0])}
    for side, sgn in (("l", 1.0), ("r", -1.0)):
        arm = _arm(s, sgn)
        caps = (_ARM_CAPS[0], _ARM_CAPS[1] * s["arms"])
        parts[f"arm_{side}"] = (arm, caps)
        marks[f"tip_{side}"] = arm[-1][0] + np.array([sgn * caps[1], 0.0, 0.0])
        parts[f"leg_{side}"] = (_leg(s, sgn), (_LEG_CAPS[0], _LEG_CAPS[1]))
        foot = _foot(s, sgn)
        parts[f"foot_{side}"] = (foot, _FOOT_CAPS)
        marks[f"toe_{side}"] = foot[-1][0] + np.array([0.0, 0.0, _FOOT_CAPS[1]])
        marks[f"heel_{side}"] = foot[0][0] - np.array([0.0, 0.0, _FOOT_CAPS[0]])
    joints = np.zeros((24, 3))
    for kfs, _ in parts.values():
        for c, _, _, j in kfs:
            if j is not None:
                joints[j] = c
    return _scaled(parts, joints, marks, s)
