"""Synthetic occlusion with Pascal VOC object patches (upstream-behaviour.md §2.7, decisions D8).

``data/VOC/pascal_occluders.npy`` holds RGBA uint8 patches (RGB like the crops): an object
array of H x W x 4 arrays (read through :func:`utils.safe_pickle.load_npy`: arrays only, nothing
runs) or one N x H x W x 4 array. Each crop gets 1-7 patches of random size and place,
alpha-blended and clipped at its border. Every draw comes from numpy's random state (the patch
index too, not the released ``random.choice``: one seed governs the pipeline).
"""
from __future__ import annotations

import functools
import os

import cv2
import numpy as np

from utils import safe_pickle
from utils.errors import UserError

__all__ = ["SyntheticOcclusion", "load_occluders", "OccluderFileError"]


class OccluderFileError(UserError, ValueError):
    """The occluder file is unreadable or holds something other than RGBA patches."""


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> tuple[np.ndarray, ...]:
    try:
        raw = safe_pickle.load_npy(path, what="occluder file")   # never runs code
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise OccluderFileError(f"cannot read occluder file {path}: {e}") from e
    if raw.dtype != object and raw.ndim != 4:   # load_npy returns an ndarray or raises
        raise OccluderFileError(
            f"occluder file {path}: expected an object array of HxWx4 RGBA uint8 patches or "
            f"an NxHxWx4 array, got a {raw.dtype} array of shape {raw.shape}")
    items = list(raw.reshape(-1) if raw.dtype == object else raw)
    if not items:
        raise OccluderFileError(f"occluder file {path} holds no occluders")
    out = []
    for i, p in enumerate(items):
        p = np.asarray(p)
        if p.ndim != 3 or p.shape[2] != 4 or p.shape[0] < 1 or p.shape[1] < 1:
            raise OccluderFileError(
                f"occluder file {path}: occluder {i} has shape {p.shape}, expected (H, W, 4) RGBA")
        if p.dtype != np.uint8:
            if not np.issubdtype(p.dtype, np.number) or p.min() < 0 or p.max() > 255:
                raise OccluderFileError(
                    f"occluder file {path}: occluder {i} has dtype {p.dtype} with values "
                    f"outside 0..255, expected uint8 RGBA")
            p = p.astype(np.uint8)
        out.append(np.ascontiguousarray(p))
    return tuple(out)


def load_occluders(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """The checked occluder patches (loaded once per process and file)."""
    path = os.fspath(path)
    return _load_cached(os.path.abspath(path), os.path.getmtime(path))


class SyntheticOcclusion:
    """Pastes random occluders of ``path`` (pascal_occluders.npy, read on first use) on crops."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._occluders: tuple[np.ndarray, ...] | None = None

    @property
    def occluders(self) -> tuple[np.ndarray, ...]:
        if self._occluders is None:
            self._occluders = load_occluders(self.path)
        return self._occluders

    def check(self) -> None:
        """Read and check the occluder file now (:class:`OccluderFileError` if it is bad), so
        that a training run stops before it writes anything, not at its first batch."""
        try:
            _ = self.occluders
        except OccluderFileError as e:
            raise OccluderFileError(f"{e}. Restore the released pascal_occluders.npy (or train "
                                    f"without --syn_occ)") from None

    def __getstate__(self):  # DataLoader workers reload (cached) rather than pickle patches
        return {"path": self.path, "_occluders": None}

    def __call__(self, img: np.ndarray, rng=np.random, return_mask: bool = False):
        """(H, W, 3) uint8 RGB crop -> occluded copy, and with ``return_mask`` the coverage
        ``1 - prod(1 - a_i)`` (H, W) float32; ``rng``: a numpy ``RandomState``-like source."""
        occluders = self.occluders
        h, w = img.shape[:2]
        out = img.copy()
        keep = np.ones((h, w), np.float32) if return_mask else None
        im_scale = min(w, h) / 256.0
        for _ in range(rng.randint(1, 8)):
            occ = occluders[rng.randint(len(occluders))]
            factor = rng.uniform(0.2, 1.0) * im_scale
            a = _paste_over(_resize_by_factor(occ, factor), out, rng.uniform([0.0, 0.0], [w, h]))
            if keep is not None and a is not None:
                keep[a[0]] *= 1.0 - a[1]
        return (out, 1.0 - keep) if return_mask else out


def _resize_by_factor(im: np.ndarray, factor: float) -> np.ndarray:
    size = tuple(max(1, int(round(im.shape[i] * factor))) for i in (1, 0))
    return cv2.resize(im, size, interpolation=cv2.INTER_LINEAR if factor > 1.0 else cv2.INTER_AREA)


def _paste_over(src: np.ndarray, dst: np.ndarray, center):
    """Alpha-blend RGBA ``src`` centred at (x, y) into RGB ``dst`` in place; returns the
    touched ((rows, cols), alpha (h, w)), or None if the patch lies outside."""
    sh, sw = src.shape[:2]
    dh, dw = dst.shape[:2]
    x0, y0 = int(np.round(center[0])) - sw // 2, int(np.round(center[1])) - sh // 2
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + sw, dw), min(y0 + sh, dh)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    patch = src[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = (slice(cy0, cy1), slice(cx0, cx1))
    # round(a/255 * src + (1 - a/255) * dst) in exact integer arithmetic (max 255*255 < 2^16)
    a = patch[..., 3:4].astype(np.uint16)
    acc = patch[..., :3].astype(np.uint16) * a + dst[region].astype(np.uint16) * (255 - a)
    dst[region] = ((acc + 127) // 255).astype(np.uint8)
    return region, patch[..., 3].astype(np.float32) * (1.0 / 255.0)
