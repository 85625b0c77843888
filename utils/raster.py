"""Software rasteriser (numpy): triangle meshes -> images.

Draws the synthetic world's images (``datasets/synthetic_images.py``) and is the fallback of
:class:`utils.renderer.Renderer` without GL (D12). Vertices are camera coordinates, OpenCV
convention (x right, y down, z forward); pixel (r, c) is covered when its centre (c, r) lies
inside or on a projected triangle. Per-pixel z-buffer (perspective-correct depth); faces with a
vertex at ``z <= 1e-3`` are culled, no clipping, no back-face culling. Two-sided Lambert
shading ``ambient + (1 - ambient) |n.l|`` with smooth (vertex) normals.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["rasterize", "render_mesh_software", "vertex_normals"]

_MAX_CANDIDATES = 4_000_000   # (face, pixel) pairs per chunk: bounds the memory (~ 200 MB)
_NEAR = 1e-3                  # faces with a vertex at z <= this are culled


def as_numpy(x) -> np.ndarray:
    """An array of ``x`` (a torch tensor is detached and moved to the CPU)."""
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def check_vertices(vertices) -> np.ndarray:
    """[V, 3] finite -> float64 [V, 3]; ValueError otherwise."""
    v = as_numpy(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"vertices contain {int((~np.isfinite(v)).sum())} non-finite values")
    return v.astype(np.float64)


def check_faces(faces, n_vertices: int | None = None) -> np.ndarray:
    """[F, 3] integer-valued, non-negative (and < ``n_vertices``) -> int64 [F, 3]."""
    f = as_numpy(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer) and not np.all(np.mod(f, 1) == 0):
        raise ValueError(f"faces must hold integer vertex indices, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.size and f.min() < 0:
        raise ValueError(f"faces hold a negative vertex index ({f.min()})")
    if n_vertices is not None and f.size and f.max() >= n_vertices:
        raise ValueError(f"faces index vertex {f.max()} but only {n_vertices} vertices were given")
    return f


def check_intrinsics(focal, center) -> tuple[float, float, float, float]:
    """f or (fx, fy) > 0 and (cx, cy), finite -> (fx, fy, cx, cy)."""
    fl = as_numpy(focal).astype(np.float64).reshape(-1)
    if fl.size not in (1, 2):
        raise ValueError(f"focal_length must be a float or (fx, fy), got {fl.size} values")
    fx, fy = float(fl[0]), float(fl[-1])
    if not (fx > 0 and fy > 0 and np.isfinite(fx) and np.isfinite(fy)):
        raise ValueError(f"focal_length must be positive and finite, got ({fx}, {fy})")
    cc = as_numpy(center).astype(np.float64).reshape(-1)
    if cc.size != 2 or not np.all(np.isfinite(cc)):
        raise ValueError(f"camera_center must be finite (cx, cy), got {cc.tolist()}")
    return fx, fy, float(cc[0]), float(cc[1])


def check_size(height, width) -> tuple[int, int]:
    """(height, width) as positive ints; ValueError otherwise."""
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return height, width


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. vertices [V,3], faces [F,3] -> [V,3] (0 if isolated)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    vn = np.zeros_like(v)
    # face normals (length: twice the area) to corner 0 of every face, then corner 1, corner 2
    np.add.at(vn, f.T, np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]))
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def rasterize(vertices, faces, focal, center, height: int, width: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which face covers each pixel, where, at what depth.

    vertices [V, 3] (camera coordinates), faces [F, 3]; focal f or (fx, fy) and center (cx, cy)
    in pixels. Returns face_id [H, W] int64 (-1 empty), bary [H, W, 3] float32
    perspective-correct barycentrics (0 empty), depth [H, W] float32 camera z (inf empty).
    """
    v = check_vertices(vertices)
    f = check_faces(faces, len(v))
    fx, fy, cx, cy = check_intrinsics(focal, center)
    height, width = check_size(height, width)
    n_pix = height * width
    best_invz = np.zeros(n_pix)                 # 1/z of the nearest surface so far (0 = none)
    best_face = np.full(n_pix, -1, np.int64)
    best_l = np.zeros((n_pix, 2))               # screen-space barycentrics l1, l2

    z = v[:, 2]
    fid = np.flatnonzero(np.all(z[f] > _NEAR, axis=1))
    zs = np.where(z > _NEAR, z, 1.0)
    corners = np.ascontiguousarray(f[fid].T)                    # [3, K] vertex ids
    xs = (fx * v[:, 0] / zs + cx)[corners]                      # [3, K] projected corners
    ys = (fy * v[:, 1] / zs + cy)[corners]
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)           # twice the signed area
    lo = np.maximum(np.ceil([xs.min(0), ys.min(0)]), 0)         # [2, K] pixel box, x and y
    hi = np.minimum(np.floor([xs.max(0), ys.max(0)]), [[width - 1], [height - 1]])
    size = hi - lo + 1
    sel = np.flatnonzero((size > 0).all(0) & (np.abs(d) > 1e-12))
    x0, y0, dd = x0[sel], y0[sel], d[sel]
    # l1 = a1 x + b1 y + c1, l2 = a2 x + b2 y + c2 (barycentrics of vertices 1 and 2)
    a1, b1 = (y2[sel] - y0) / dd, -(x2[sel] - x0) / dd
    a2, b2 = -(y1[sel] - y0) / dd, (x1[sel] - x0) / dd
    coef = np.stack([a1, b1, -(a1 * x0 + b1 * y0), a2, b2, -(a2 * x0 + b2 * y0)])   # [6, S]
    box = np.concatenate([lo[:, sel], size[:, sel]]).astype(np.int64)     # [4, S] x, y, w, h
    iz = 1.0 / z[f[fid[sel]]]                                             # [S, 3]
    fid = fid[sel]
    bounds, start = np.cumsum(box[2] * box[3]), 0
    while start < sel.size:            # chunks of about _MAX_CANDIDATES (face, pixel) pairs
        base = bounds[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(bounds, base + _MAX_CANDIDATES, "right")))
        _raster_chunk(box[:, start:stop], coef[:, start:stop], iz[start:stop], fid[start:stop],
                      width, best_invz, best_face, best_l)
        start = stop

    covered = best_face >= 0
    bary = np.zeros((n_pix, 3), np.float32)
    depth = np.full(n_pix, np.inf, np.float32)
    l1, l2 = best_l[covered, 0], best_l[covered, 1]
    wts = np.stack([1.0 - l1 - l2, l1, l2], 1) / z[f[best_face[covered]]]
    bary[covered] = (wts / wts.sum(1, keepdims=True)).astype(np.float32)
    depth[covered] = (1.0 / best_invz[covered]).astype(np.float32)
    return (best_face.reshape(height, width), bary.reshape(height, width, 3),
            depth.reshape(height, width))


def _raster_chunk(box, coef, iz, face_ids, width, best_invz, best_face, best_l) -> None:
    """Test every (face, pixel-centre) candidate in the pixel boxes [4, S] (x, y, w, h) with the
    faces' edge functions coef [6, S]; update the z-buffer."""
    x, y, w, h = box
    counts = w * h
    local = np.repeat(np.arange(len(counts)), counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    px = (x[local] + offs % w[local]).astype(np.float64)
    py = (y[local] + offs // w[local]).astype(np.float64)
    a1, b1, c1, a2, b2, c2 = coef
    l1 = a1[local] * px + b1[local] * py + c1[local]
    l2 = a2[local] * px + b2[local] * py + c2[local]
    inside = np.flatnonzero((l1 >= -1e-9) & (l2 >= -1e-9) & (l1 + l2 <= 1.0 + 1e-9))
    local, l1, l2 = local[inside], l1[inside], l2[inside]
    izl = iz[local]
    invz = (1.0 - l1 - l2) * izl[:, 0] + l1 * izl[:, 1] + l2 * izl[:, 2]
    pix = py[inside].astype(np.int64) * width + px[inside].astype(np.int64)
    order = np.lexsort((-invz, pix))                 # per pixel: nearest (largest 1/z) first
    first = np.ones(order.size, bool)
    first[1:] = pix[order[1:]] != pix[order[:-1]]
    win = order[first]
    win = win[invz[win] > best_invz[pix[win]]]
    p = pix[win]
    best_invz[p] = invz[win]
    best_face[p] = face_ids[local[win]]
    best_l[p] = np.stack([l1[win], l2[win]], 1)


def render_mesh_software(vertices, faces, focal, center, height: int, width: int,
                         color: Sequence[float] = (0.8, 0.8, 0.8),
                         light_dir: Sequence[float] = (0.0, 0.0, 1.0), ambient: float = 0.3,
                         vertex_colors=None) -> tuple[np.ndarray, np.ndarray]:
    """Shaded mesh (arguments of :func:`rasterize`).

    color: RGB in 0..1 (unless ``vertex_colors`` [V, 3] in 0..1 are interpolated);
    light_dir: where the directional light travels (camera frame); ambient: 0..1; smooth
    (vertex) normals. Returns rgb [H, W, 3] float32 in 0..1 (0 empty), mask [H, W].
    """
    v = check_vertices(vertices)
    f = check_faces(faces, len(v))
    col = np.asarray(color, dtype=np.float64).reshape(-1)
    if col.size != 3 or not np.all(np.isfinite(col)):
        raise ValueError(f"color must be 3 RGB floats in 0..1, got {color!r}")
    light = np.asarray(light_dir, dtype=np.float64).reshape(-1)
    if light.size != 3 or not np.linalg.norm(light) > 0:
        raise ValueError(f"light_dir must be a non-zero 3-vector, got {light_dir!r}")
    light = light / np.linalg.norm(light)
    if not 0.0 <= float(ambient) <= 1.0:
        raise ValueError(f"ambient must be in [0, 1], got {ambient}")
    if vertex_colors is not None:
        vc = np.asarray(vertex_colors, dtype=np.float64)
        if vc.shape != (len(v), 3):
            raise ValueError(f"vertex_colors must have shape [{len(v)}, 3], got {vc.shape}")

    face_id, bary, _ = rasterize(v, f, focal, center, height, width)
    mask = face_id >= 0
    rgb = np.zeros((*mask.shape, 3), np.float32)
    b = bary[mask].astype(np.float64)[..., None]                  # [P, 3, 1]
    tri = f[face_id[mask]]                                         # [P, 3]
    n = (vertex_normals(v, f)[tri] * b).sum(1)
    norm = np.linalg.norm(n, axis=1)
    lam = np.abs(n @ light) / np.maximum(norm, 1e-12)
    lam[norm == 0] = 1.0
    shade = float(ambient) + (1.0 - float(ambient)) * lam
    base = (vc[tri] * b).sum(1) if vertex_colors is not None else col[None, :]
    rgb[mask] = np.clip(base * shade[:, None], 0.0, 1.0).astype(np.float32)
    return rgb, mask
