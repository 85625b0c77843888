"""The synthetic body's mesh: one closed tube laid through the keyframes (a UV sphere).

Topology: a UV sphere of ``N_RINGS`` rings of ``N_SEG`` vertices plus two poles
(246 * 28 + 2 = 6890 vertices, 2 * 246 * 28 = 13776 triangles; closed, genus 0, like SMPL's
mesh). The sphere is a single tube from the north pole (top of the head) to the south pole
(tip of the right foot), and the tube is laid through the body:

    head + neck + torso (crown -> crotch) | arm L | arm R | leg L | foot L | leg R | foot R

Each segment is a rounded "sausage" around a chain of keyframes
(:func:`datasets.synthetic_keyframes.keyframes`: elliptical cross-sections interpolated
between keyframes by Catmull-Rom splines, quarter-ellipse end caps). Between two sausages the
tube pinches to 2 mm and runs *inside* the body along the bones (one ring per joint on the
way), so the connections are hidden and the visible surface is the union of the sausages. The
number of rings between two keyframes is fixed (from the neutral body), so every parameter
value gives the same topology; a small bump on the face is the nose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datasets.synthetic_keyframes import keyframes, shape_params

__all__ = ["N_SEG", "N_RINGS", "N_VERTS", "N_FACES", "PART_NAMES", "PARTS", "Ring", "surface",
           "faces", "signed_volume"]

N_SEG = 28
N_RINGS = 246
N_VERTS = N_SEG * N_RINGS + 2          # 6890
N_FACES = 2 * N_SEG * N_RINGS           # 13776
N_CAP = 5                               # rings per end cap (the last one is the pinch)
R_MIN = 0.002                           # radius of pinches and hidden connectors (m)
PART_NAMES = ("torso", "arm_l", "arm_r", "leg_l", "foot_l", "leg_r", "foot_r", "hidden")

# parts in tube order: (name, reference axis for the ring frame u, allowed skin joints)
PARTS = [
    ("torso", (1.0, 0.0, 0.0), (0, 3, 6, 9, 12, 15)),
    ("arm_l", (0.0, 1.0, 0.0), (9, 13, 16, 18, 20, 22)),
    ("arm_r", (0.0, 1.0, 0.0), (9, 14, 17, 19, 21, 23)),
    ("leg_l", (1.0, 0.0, 0.0), (0, 1, 4, 7)),
    ("foot_l", (0.0, 1.0, 0.0), (7, 10)),
    ("leg_r", (1.0, 0.0, 0.0), (0, 2, 5, 8)),
    ("foot_r", (0.0, 1.0, 0.0), (8, 11)),
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


@dataclass
class Ring:
    """One cross-section of the tube."""
    centre: np.ndarray
    ru: float
    rv: float
    part: int                 # index into PART_NAMES
    joint: int | None = None  # joint whose keyframe this ring is
    ref: np.ndarray | None = None


def _catmull_rom(p0, p1, p2, p3, s):
    s2, s3 = s * s, s * s * s
    return 0.5 * ((2 * p1) + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * s3)


@lru_cache(maxsize=None)
def _ring_layout() -> dict:
    """How many interior rings each keyframe segment gets (fixed for every parameter value).

    Computed once from the neutral body: the ring budget left after keyframes, caps and
    connectors is shared between segments in proportion to their length.
    """
    parts, _, _ = keyframes(shape_params(None))
    fixed, seg_len, keys = 0, [], []
    for i, (name, _, _) in enumerate(PARTS):
        kfs, _ = parts[name]
        pole_start, pole_end = i == 0, i == len(PARTS) - 1
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


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _cap_rings(kf: tuple, axis: np.ndarray, ks, pid: int, ref: np.ndarray) -> list[Ring]:
    """A quarter-ellipse end cap of keyframe ``kf`` = (centre, ru, rv, joint): ring k at
    ``centre + sin(phi) axis`` with radii ``cos(phi) (ru, rv)`` (at least R_MIN),
    phi = (pi / 2) k / N_CAP, for k in ``ks``."""
    rings = []
    for k in ks:
        phi = 0.5 * np.pi * k / N_CAP
        rings.append(Ring(kf[0] + axis * np.sin(phi), max(kf[1] * np.cos(phi), R_MIN),
                          max(kf[2] * np.cos(phi), R_MIN), pid, None, ref))
    return rings


def _segment_rings(name: str, kfs: list, pid: int, ref: np.ndarray) -> list[Ring]:
    """The keyframe rings of a part and the Catmull-Rom interpolated rings between them."""
    layout = _ring_layout()
    cs = [k[0] for k in kfs]
    ext = [2 * cs[0] - cs[1]] + cs + [2 * cs[-1] - cs[-2]]
    rad = [np.array(k[1:3]) for k in kfs]
    rext = [rad[0]] + rad + [rad[-1]]
    rings = []
    for k in range(len(kfs)):
        rings.append(Ring(cs[k], kfs[k][1], kfs[k][2], pid, kfs[k][3], ref))
        if k == len(kfs) - 1:
            break
        n = layout[(name, k)]
        for m in range(1, n + 1):
            s = m / (n + 1)
            c = _catmull_rom(ext[k], ext[k + 1], ext[k + 2], ext[k + 3], s)
            r = _catmull_rom(rext[k], rext[k + 1], rext[k + 2], rext[k + 3], s)
            rings.append(Ring(c, max(r[0], R_MIN), max(r[1], R_MIN), pid, None, ref))
    return rings


def _cap_axes(kfs: list, caps: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The start and end cap of a part: the tangent at each end times the cap length."""
    return (_unit(kfs[1][0] - kfs[0][0]) * caps[0], _unit(kfs[-1][0] - kfs[-2][0]) * caps[1])


def _rings(p: dict) -> tuple[list[Ring], np.ndarray, np.ndarray, np.ndarray, dict]:
    """The ring sequence of the tube for parameters ``p``.

    Returns (rings, north pole [3], south pole [3], joints [24, 3], landmarks).
    """
    parts, joints, marks = keyframes(p)
    rings: list[Ring] = []
    last = len(PARTS) - 1
    for i, (name, ref, _) in enumerate(PARTS):
        kfs, caps = parts[name]
        pid, ref = PART_NAMES.index(name), np.asarray(ref)
        a0, a1 = _cap_axes(kfs, caps)
        rings += _cap_rings(kfs[0], -a0, range(N_CAP - 1 if i == 0 else N_CAP, 0, -1), pid, ref)
        rings += _segment_rings(name, kfs, pid, ref)
        rings += _cap_rings(kfs[-1], a1, range(1, N_CAP if i == last else N_CAP + 1), pid, ref)
        rings += [Ring(joints[j].copy(), R_MIN, R_MIN, PART_NAMES.index("hidden"))
                  for j in _CONNECTORS[name]]      # hidden connector to the next part
    if len(rings) != N_RINGS:
        raise AssertionError(f"built {len(rings)} rings, expected {N_RINGS}")
    (first, first_caps), (end, end_caps) = parts[PARTS[0][0]], parts[PARTS[-1][0]]
    north = first[0][0] - _cap_axes(first, first_caps)[0]
    south = end[-1][0] + _cap_axes(end, end_caps)[1]
    return rings, north, south, joints, marks


def _cross(a, b) -> np.ndarray:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


def _frames(rings: list[Ring], north, south) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def surface(p: dict):
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


def faces() -> np.ndarray:
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


def signed_volume(v, f) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)
