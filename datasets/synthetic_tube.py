"""The synthetic body's surface: 10 shape parameters -> keyframes -> one closed tube.

The neutral body (metres; y up, facing +z, the subject's left on +x, like SMPL) is a chain of
keyframes per segment (a centre, the two radii of an elliptical cross-section, the SMPL joint
it sits on: every joint has one) with end caps. :func:`keyframes` applies :data:`SHAPE_PARAMS`.
The mesh is a UV sphere (6890 vertices, 13776 triangles; closed, genus 0, like SMPL's): one
tube from the north pole (top of the head) to the south pole (tip of the right foot) through

    head + neck + torso | arm L | arm R | leg L | foot L | leg R | foot R

each a rounded "sausage" (cross-sections interpolated between keyframes by Catmull-Rom splines,
quarter-ellipse end caps). Between two sausages the tube pinches to 2 mm and runs inside the
body along the bones (a ring per joint on the way), so the visible surface is the union of the
sausages. The ring count between two keyframes is fixed (from the neutral body): every
parameter value gives the same topology. A small bump on the face is the nose.
"""
from __future__ import annotations

import math
from collections import namedtuple
from functools import lru_cache

import numpy as np

__all__ = ["SHAPE_PARAMS", "shape_params", "keyframes", "N_SEG", "N_RINGS", "N_VERTS",
           "PART_NAMES", "PARTS", "Ring", "surface", "faces", "signed_volume"]

SHAPE_PARAMS = ("height", "girth", "shoulders", "hips", "legs", "arms", "belly", "head",
                "neck", "chest")
# Keyframes: name, centre, radii (ru, rv) along (u, v), joint. Torso/head and legs: u = x
# (width), v = z (depth); arms: u = y (thickness), v = depth; feet: u = y (height), v = width.
_TORSO = [  # name, y, z, ru, rv, joint (x = 0)
    ("head_top", .465, .025, .077, .096, None), ("head_mid", .425, .027, .076, .095, None),
    ("jaw", .390, .028, .068, .086, None), ("head", .365, .020, .056, .068, 15),
    ("neck", .300, -.005, .052, .052, 12), ("neck_base", .265, -.005, .075, .060, None),
    ("collar_lvl", .215, .000, .155, .085, None), ("chest", .150, .012, .165, .098, None),
    ("spine3", .090, .012, .158, .100, 9), ("spine2", .030, .008, .148, .098, 6),
    ("waist", -.040, .005, .135, .092, None), ("spine1", -.105, .005, .140, .095, 3),
    ("hip_lvl", -.170, .010, .152, .100, None), ("pelvis", -.225, .015, .162, .102, 0),
    ("low_pelvis", -.285, .015, .155, .095, None), ("crotch", -.330, .015, .120, .080, None)]
_ARM = [  # left arm: name, x, y, z, ru, rv, joint (right: x -> -x, joint -> _RIGHT[joint])
    ("collar", .075, .210, -.005, .045, .050, 13), ("shoulder", .175, .225, -.015, .056, .056, 16),
    ("upper", .300, .218, -.022, .048, .050, None), ("elbow", .435, .212, -.030, .040, .042, 18),
    ("fore", .540, .215, -.032, .040, .043, None), ("wrist", .700, .220, -.035, .022, .030, 20),
    ("palm", .745, .218, -.038, .016, .044, None), ("hand", .785, .215, -.040, .014, .045, 22)]
_LEG = [
    ("hip", .075, -.315, .015, .085, .085, 1), ("thigh", .085, -.450, .020, .078, .080, None),
    ("thigh_low", .092, -.6, .020, .062, .064, None), ("knee", .095, -.7, .020, .052, .054, 4),
    ("calf", .093, -.82, .005, .052, .058, None), ("calf_low", .09, -.96, -.01, .04, .042, None),
    ("ankle", .085, -1.085, -.020, .033, .036, 7)]
_FOOT = [
    ("heel", .086, -1.128, -.040, .035, .035, None), ("mid", .098, -1.128, .030, .036, .042, None),
    ("ball", .110, -1.133, .095, .030, .047, 10), ("toe", .118, -1.140, .130, .024, .045, None)]
_CROWN_CAP, _CROTCH_CAP, _ARM_CAPS, _LEG_CAPS, _FOOT_CAPS = 0.080, 0.045, (0.040, 0.095), \
    (0.070, 0.055), (0.045, 0.055)
_RIGHT = {13: 14, 16: 17, 18: 19, 20: 21, 22: 23, 1: 2, 4: 5, 7: 8, 10: 11}
_NOSE = (0.0, 0.415, 0.118)     # nose bump centre (neutral, on the face)
_HEAD, _NECK_Y = ("head_top", "head_mid", "jaw", "head"), 0.300

N_SEG, N_RINGS = 28, 246
N_VERTS = N_SEG * N_RINGS + 2          # 6890
N_CAP = 5                               # rings per end cap (the last one is the pinch)
R_MIN = 0.002                           # radius of pinches and hidden connectors (m)
PART_NAMES = ("torso", "arm_l", "arm_r", "leg_l", "foot_l", "leg_r", "foot_r", "hidden")
_X, _Y = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
PARTS = [  # in tube order: name, reference axis of the ring frame's u, allowed skin joints
    ("torso", _X, (0, 3, 6, 9, 12, 15)), ("arm_l", _Y, (9, 13, 16, 18, 20, 22)),
    ("arm_r", _Y, (9, 14, 17, 19, 21, 23)), ("leg_l", _X, (0, 1, 4, 7)), ("foot_l", _Y, (7, 10)),
    ("leg_r", _X, (0, 2, 5, 8)), ("foot_r", _Y, (8, 11))]
_CONNECTORS = {  # hidden connector after each part: the joints the pinched tube visits
    "torso": (0, 3, 6, 9), "arm_l": (22, 20, 18, 16, 13, 9),
    "arm_r": (23, 21, 19, 17, 14, 9, 6, 3, 0), "foot_l": (10, 7, 4, 1, 0)}


# one cross-section of the tube: centre, radii, part (PART_NAMES index), the joint whose
# keyframe it is, the reference axis of its frame
Ring = namedtuple("Ring", "centre ru rv part joint ref", defaults=(None, None))


def shape_params(values: dict | None) -> dict:
    """All of :data:`SHAPE_PARAMS`, 0 unless given in ``values``."""
    if bad := [k for k in values or {} if k not in SHAPE_PARAMS]:
        raise ValueError(f"unknown shape parameter {bad[0]!r}; expected one of {SHAPE_PARAMS}")
    return {k: float((values or {}).get(k, 0.0)) for k in SHAPE_PARAMS}


def keyframes(p: dict) -> tuple[dict, np.ndarray, dict]:
    """For parameters ``p``: (parts: name -> (list of (centre, ru, rv, joint), (cap_start,
    cap_end)), joints [24, 3], landmarks name -> point, and 'head_scale')."""
    girth, limb_g, hand_g = (1.0 + k * p["girth"] for k in (0.12, 0.08, 0.02))
    head_s, neck_up, sh_w, hip_w = 1.0 + 0.06 * p["head"], 0.015 * p["neck"], \
        0.018 * p["shoulders"], 0.012 * p["hips"]
    legs, arms, belly, chest = 1.0 + 0.05 * p["legs"], 1.0 + 0.05 * p["arms"], \
        0.02 * p["belly"], 0.015 * p["chest"]
    hip = (0, 1.6 * hip_w, 0)
    adjust = {  # torso keyframe: added to (z, ru, rv) after the girth scaling
        "collar_lvl": (0, sh_w, 0), "chest": (0, 0.6 * sh_w + chest, chest),
        "spine3": (0, 0.5 * chest, 0.7 * chest), "waist": (0.5 * belly, 0, belly),
        "spine2": (0.3 * belly, 0, 0.6 * belly), "spine1": (0.3 * belly, 0, 0.6 * belly),
        "hip_lvl": hip, "pelvis": hip, "low_pelvis": hip, "crotch": hip}
    torso = []
    for name, y, z, ru, rv, j in _TORSO:
        if name in _HEAD:
            c, ru, rv = (0.0, _NECK_Y + (y - _NECK_Y) * head_s + neck_up, z), ru * head_s, \
                rv * head_s
        else:
            dz, du, dv = adjust.get(name, (0, 0, 0))
            c, ru, rv = (0.0, y + (0.5 * neck_up if name == "neck" else 0), z + dz), \
                ru * girth + du, rv * girth + dv
        torso.append((np.array(c), ru, rv, j))
    parts = {"torso": (torso, (_CROWN_CAP * head_s, _CROTCH_CAP * girth))}
    marks = {"crown": torso[0][0] + np.array([0.0, _CROWN_CAP * head_s, 0.0])}
    sh_x, hip_y = _ARM[1][1] + sh_w, _LEG[0][2]
    gain = {"hip": girth, "thigh": girth, "wrist": hand_g, "palm": hand_g, "hand": hand_g}
    for side, sgn in (("l", 1.0), ("r", -1.0)):
        arm, leg, foot = [], [], []
        for out, table in ((arm, _ARM), (leg, _LEG), (foot, _FOOT)):
            for name, x, y, z, ru, rv, j in table:
                if table is _ARM:
                    x = x + (0.5 * sh_w if name == "collar" else sh_w)
                    if name not in ("collar", "shoulder"):
                        x = sh_x + (x - sh_x) * arms
                    c = np.array([sgn * x, y, z])
                else:   # legs and feet
                    c = np.array([sgn * (x + hip_w), hip_y + (y - hip_y) * legs, z])
                g = gain.get(name, 1.0 if table is _FOOT else limb_g)
                out.append((c, ru * g, rv * g, j if j is None or sgn > 0 else _RIGHT[j]))
        caps = (_ARM_CAPS[0], _ARM_CAPS[1] * arms)
        parts.update({f"arm_{side}": (arm, caps), f"leg_{side}": (leg, _LEG_CAPS),
                      f"foot_{side}": (foot, _FOOT_CAPS)})
        marks[f"tip_{side}"] = arm[-1][0] + np.array([sgn * caps[1], 0.0, 0.0])
        marks[f"toe_{side}"] = foot[-1][0] + np.array([0.0, 0.0, _FOOT_CAPS[1]])
        marks[f"heel_{side}"] = foot[0][0] - np.array([0.0, 0.0, _FOOT_CAPS[0]])
    joints = np.zeros((24, 3))
    for j, c in ((j, c) for kfs, _ in parts.values() for c, _, _, j in kfs if j is not None):
        joints[j] = c
    # everything scaled about the origin by the height factor
    scale = 1.0 + 0.055 * p["height"]
    parts = {name: ([(c * scale, ru * scale, rv * scale, j) for c, ru, rv, j in kfs],
                    (caps[0] * scale, caps[1] * scale)) for name, (kfs, caps) in parts.items()}
    marks = {k: v * scale for k, v in marks.items()}
    marks["nose"] = np.array([_NOSE[0], (_NECK_Y + (_NOSE[1] - _NECK_Y) * head_s + neck_up)
                              * scale, _NOSE[2] * head_s * scale], dtype=np.float64)
    marks["head_scale"] = head_s * scale
    return parts, joints * scale, marks


def _catmull_rom(p0, p1, p2, p3, s):
    s2, s3 = s * s, s * s * s
    return 0.5 * ((2 * p1) + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * s3)


@lru_cache(maxsize=None)
def _ring_layout() -> dict:
    """Interior rings of each keyframe segment (name, k): the ring budget left after keyframes,
    caps and connectors, shared in proportion to the segments' lengths on the neutral body."""
    parts, _, _ = keyframes(shape_params(None))
    fixed, seg_len, keys = 0, [], []
    for i, (name, _, _) in enumerate(PARTS):
        kfs = parts[name][0]
        fixed += len(kfs) + 2 * N_CAP - (i == 0) - (i == len(PARTS) - 1) + \
            len(_CONNECTORS.get(name, ()))
        seg_len += [float(np.linalg.norm(b[0] - a[0])) for a, b in zip(kfs, kfs[1:])]
        keys += [(name, k) for k in range(len(kfs) - 1)]
    budget = N_RINGS - fixed
    share = np.asarray(seg_len) / sum(seg_len) * budget
    counts = np.floor(share).astype(int)     # the rest to the largest remainders
    counts[np.argsort(-(share - counts))[:budget - counts.sum()]] += 1
    return {key: int(c) for key, c in zip(keys, counts)}


def _rings(p: dict) -> tuple[list[Ring], np.ndarray, np.ndarray, np.ndarray, dict]:
    """The tube's rings for parameters ``p``, its north and south pole, the joints [24, 3] and
    the landmarks."""
    parts, joints, marks = keyframes(p)
    layout, rings, last = _ring_layout(), [], len(PARTS) - 1
    for i, (name, ref, _) in enumerate(PARTS):
        (kfs, caps), pid, ref = parts[name], PART_NAMES.index(name), np.asarray(ref)
        unit = [(b - a) / np.linalg.norm(b - a) for a, b in ((kfs[0][0], kfs[1][0]),
                                                             (kfs[-2][0], kfs[-1][0]))]
        a0, a1 = unit[0] * caps[0], unit[1] * caps[1]       # start and end cap axes

        def cap(kf, axis, ks):      # quarter ellipse: ring k at phi = (pi / 2) k / N_CAP
            for k in ks:
                phi = 0.5 * np.pi * k / N_CAP
                rings.append(Ring(kf[0] + axis * np.sin(phi), max(kf[1] * np.cos(phi), R_MIN),
                                  max(kf[2] * np.cos(phi), R_MIN), pid, None, ref))
        cap(kfs[0], -a0, range(N_CAP - 1 if i == 0 else N_CAP, 0, -1))
        ext = [2 * kfs[0][0] - kfs[1][0], *(k[0] for k in kfs), 2 * kfs[-1][0] - kfs[-2][0]]
        rext = [np.array(k[1:3]) for k in (kfs[0], *kfs, kfs[-1])]
        for k, (c, ru, rv, j) in enumerate(kfs):    # keyframe rings and the interpolated ones
            rings.append(Ring(c, ru, rv, pid, j, ref))
            n = layout.get((name, k), 0)
            for m in range(1, n + 1):
                c, r = (_catmull_rom(*e[k:k + 4], m / (n + 1)) for e in (ext, rext))
                rings.append(Ring(c, max(r[0], R_MIN), max(r[1], R_MIN), pid, None, ref))
        cap(kfs[-1], a1, range(1, N_CAP if i == last else N_CAP + 1))
        rings += [Ring(joints[j].copy(), R_MIN, R_MIN, PART_NAMES.index("hidden"))
                  for j in _CONNECTORS.get(name, ())]
        if i == 0:
            north = kfs[0][0] - a0
    if len(rings) != N_RINGS:
        raise AssertionError(f"built {len(rings)} rings, expected {N_RINGS}")
    return rings, north, kfs[-1][0] + a1, joints, marks


def surface(p: dict):
    """(vertices [6890, 3] in ring order, before the landmark permutation; rings; joints;
    landmarks; the ring-normal direction of every non-pole vertex [6888, 3]) for ``p``."""
    rings, north, south, joints, marks = _rings(p)
    c = np.stack([r.centre for r in rings])
    t = np.concatenate([c[1:], south[None]]) - np.concatenate([north[None], c[:-1]])
    tang, u = np.zeros_like(c), np.zeros_like(c)     # ring frames (tangent, u, v = t x u)
    last_t, last_u = np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    norms = np.sqrt((t * t).sum(1))
    for i, r in enumerate(rings):
        ti = t[i] / norms[i] if norms[i] > 1e-12 else last_t
        ref = r.ref if r.ref is not None else last_u
        ui = ref - (ref @ ti) * ti
        if ui @ ui < 0.04:   # reference nearly along the tangent: the first axis far from it
            ui = next(x for a in np.eye(3) if (x := a - (a @ ti) * ti) @ x >= 0.25)
        tang[i] = last_t = ti
        u[i] = last_u = ui / math.sqrt(ui @ ui)
    v = np.cross(tang, u)
    theta = 2 * np.pi * np.arange(N_SEG) / N_SEG
    cos, sin = np.cos(theta), np.sin(theta)
    ru, rv = np.array([r.ru for r in rings]), np.array([r.rv for r in rings])
    offs = (ru[:, None, None] * cos[None, :, None] * u[:, None, :]
            + rv[:, None, None] * sin[None, :, None] * v[:, None, :])          # [R, S, 3]
    verts = c[:, None, :] + offs
    # the nose: a small bump on the face
    is_head = np.array([r.part == 0 and r.centre[1] > joints[12][1] for r in rings])
    radial = offs / np.maximum(np.linalg.norm(offs, axis=-1, keepdims=True), 1e-12)
    d2 = ((verts - marks["nose"]) ** 2).sum(-1)
    bump = 0.016 * marks["head_scale"] * np.exp(-d2 / (2 * (0.014 * marks["head_scale"]) ** 2))
    verts = verts + (bump * is_head[:, None])[..., None] * radial
    allv = np.concatenate([north[None], verts.reshape(-1, 3), south[None]])
    return allv, rings, joints, marks, radial.reshape(-1, 3)


def faces() -> np.ndarray:
    """UV-sphere triangles (ring order) [13776, 3], wound outward for the tube."""
    k, S, south = np.arange(N_SEG), N_SEG, 1 + N_RINGS * N_SEG
    a, b = (1 + np.arange(N_RINGS)[:, None] * S + m for m in (k, (k + 1) % S))   # k, k + 1
    quads = np.stack([a[:-1], b[:-1], b[1:], a[:-1], b[1:], a[1:]], -1).reshape(-1, 3)
    return np.concatenate([np.stack([np.zeros(S, np.int64), b[0], a[0]], 1), quads,
                           np.stack([np.full(S, south), a[-1], b[-1]], 1)]).astype(np.int64)


def signed_volume(v, f) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)
