"""Pixels of the synthetic world: backgrounds, clothes colours, the rendered body, occluders.

:func:`background` paints a random scene (colour gradient, low-frequency noise, a floor below a
horizon, rectangles / discs / lines, blur and sensor noise), :func:`clothes` draws per-part
colours (skin, shirt with long or short sleeves, trousers or shorts, shoes), :func:`draw_body`
shades the posed mesh with them (``utils.raster.render_mesh_software``) and composites it over
the background with an anti-aliased edge, and :func:`occluder_patches` draws the RGBA patches
of ``data/VOC/pascal_occluders.npy``. Every random draw comes from the generator passed in.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["background", "clothes", "draw_body", "occluder_patches"]

_SKIN = np.array([[0.96, 0.80, 0.69], [0.88, 0.67, 0.52], [0.76, 0.57, 0.42],
                  [0.58, 0.40, 0.28], [0.40, 0.27, 0.18]])


def _smooth_noise(rng: np.random.Generator, std: float, n: int, h: int, w: int) -> np.ndarray:
    """[h, w, 3] float32: an n x n grid of Gaussian noise, upsampled (bicubic)."""
    low = rng.normal(0, std, (n, n, 3)).astype(np.float32)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 RGB: gradient + low-frequency noise + shapes + optional floor."""
    c0, c1, ang = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += _smooth_noise(rng, 25, 4, h, w)
    if rng.uniform() < 0.6:   # a floor below a horizon
        horizon, floor = int(h * rng.uniform(0.45, 0.8)), rng.uniform(0, 255, 3)
        ramp = np.linspace(0.8, 1.2, h - horizon, dtype=np.float32)[:, None, None]
        img[horizon:] = 0.3 * img[horizon:] + 0.7 * floor[None, None] * ramp
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 10))):
        col, kind = tuple(float(c) for c in rng.uniform(0, 255, 3)), rng.integers(0, 3)
        p = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        s = max(2, int(rng.uniform(0.05, 0.3) * min(h, w)))
        if kind == 0:
            cv2.rectangle(img, p, (p[0] + s, p[1] + int(s * rng.uniform(0.3, 2))), col, -1)
        elif kind == 1:
            cv2.circle(img, p, s // 2, col, -1, lineType=cv2.LINE_AA)
        else:
            q = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(img, p, q, col, max(1, s // 8), lineType=cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def clothes(rng: np.random.Generator) -> np.ndarray:
    """Colour [24, 3] of each SMPL joint's body part (skin, shirt, trousers, shoes)."""
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.95, 1.05)
    shirt, trousers = (cv2.cvtColor(np.array([[[rng.uniform(0, 180), rng.uniform(*s),
                                                rng.uniform(*v)]]], np.uint8),
                                    cv2.COLOR_HSV2RGB)[0, 0] / 255.0
                       for s, v in (((60, 255), (60, 255)), ((0, 200), (30, 180))))
    col = np.zeros((24, 3))
    col[[7, 8, 10, 11]] = np.full(3, rng.uniform(0.05, 0.5))       # shoes
    col[[12, 15, 20, 21, 22, 23]] = skin
    col[[3, 6, 9, 13, 14, 16, 17]] = shirt
    col[[18, 19]] = shirt if rng.uniform() < 0.5 else skin         # long / short sleeves
    col[[0, 1, 2]] = trousers
    col[[4, 5]] = trousers if rng.uniform() < 0.7 else skin        # trousers / shorts
    return np.clip(col, 0, 1)


def draw_body(bg: np.ndarray, verts: np.ndarray, faces: np.ndarray, weights: np.ndarray,
              colours: np.ndarray, f: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Composite the shaded body over ``bg`` (RGB uint8). Returns (image RGB uint8, mask)."""
    from utils.raster import render_mesh_software
    h, w = bg.shape[:2]
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.0, 0.8), 1.0])
    rgb, mask = render_mesh_software(verts, faces, f, (w / 2.0, h / 2.0), h, w,
                                     light_dir=light, ambient=float(rng.uniform(0.3, 0.5)),
                                     vertex_colors=weights @ colours)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)[..., None]
    out = bg.astype(np.float32) * (1 - alpha) + rgb * 255.0 * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def occluder_patches(rng: np.random.Generator, count: int = 40) -> np.ndarray:
    """Object array of RGBA uint8 patches (varied sizes, shapes, colours, textures)."""
    arr = np.empty(count, dtype=object)
    for i in range(count):
        h, w = (int(x) for x in rng.integers(24, 140, 2))
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            if rng.integers(0, 2) == 0:   # an ellipse
                c = tuple(int(rng.uniform(0.3, 0.7) * s) for s in (w, h))
                ax = tuple(max(2, int(rng.uniform(0.2, 0.5) * s)) for s in (w, h))
                cv2.ellipse(mask, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
            else:                         # a polygon
                k = int(rng.integers(3, 8))
                ang, rad = np.sort(rng.uniform(0, 2 * np.pi, k)), rng.uniform(0.25, 0.5, k)
                pts = np.stack([w / 2 + rad * w * np.cos(ang), h / 2 + rad * h * np.sin(ang)], 1)
                cv2.fillPoly(mask, [pts.astype(np.int32)], 255, cv2.LINE_AA)
        if mask.max() == 0:
            mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
        rgb = rng.uniform(0, 255, 3) + _smooth_noise(rng, 30, 3, h, w) + rng.normal(0, 8, (h, w, 3))
        arr[i] = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), mask])
    return arr
