"""Synthetic occlusion with Pascal VOC object patches (upstream-behaviour.md §2.7, decisions D8).

``data/VOC/pascal_occluders.npy`` holds RGBA uint8 patches: an object (or list) array of
H x W x 4 arrays, or one N x H x W x 4 array. An object array is a pickle: it is read through
:func:`utils.safe_pickle.load_npy` (numpy arrays only; anything else is refused, never run).
The colour channels are RGB, like the crops.

Per crop (numpy global random state, in this order): ``count = randint(1, 8)`` (1..7), then for
each occluder: its index ``randint(len)``, a size factor ``U(0.2, 1.0) * min(W, H) / 256``
(``cv2.resize``, INTER_AREA when shrinking, INTER_LINEAR when enlarging), and a centre
``U([0, 0], [W, H])``; the patch is centred there (rounded) and alpha-blended,
``out = a * patch + (1 - a) * out`` with ``a = alpha / 255``, clipped at the crop border.
The released code draws the occluder index with Python's ``random.choice``; we use numpy for
every draw so that one seed governs the whole pipeline.
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
    if isinstance(raw, np.ndarray) and raw.dtype != object and raw.ndim == 4:
        items = list(raw)
    elif isinstance(raw, np.ndarray) and raw.dtype == object:
        items = list(raw.reshape(-1))
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise OccluderFileError(
            f"occluder file {path}: expected an object array (or list) of HxWx4 RGBA uint8 "
            f"patches or an NxHxWx4 array, got {type(raw).__name__} "
            f"{getattr(raw, 'dtype', '')}{getattr(raw, 'shape', '')}")
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
    """Load and validate the occluder patches (cached per file: loaded once per process)."""
    path = os.fspath(path)
    return _load_cached(os.path.abspath(path), os.path.getmtime(path))


class SyntheticOcclusion:
    """Pastes random Pascal VOC occluders onto crops.

    Args:
        path: the ``pascal_occluders.npy`` file (e.g. ``config.DataPaths.occluders()``). It is
            read on first use, once per process, and shared between instances.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._occluders: tuple[np.ndarray, ...] | None = None

    @property
    def occluders(self) -> tuple[np.ndarray, ...]:
        if self._occluders is None:
            self._occluders = load_occluders(self.path)
        return self._occluders

    def __getstate__(self):  # DataLoader workers reload (cached) rather than pickle patches
        return {"path": self.path, "_occluders": None}

    def __call__(self, img: np.ndarray, rng=np.random, return_mask: bool = False):
        """Occlude one image.

        Args:
            img: (H, W, 3) uint8 RGB crop (not modified).
            rng: numpy ``RandomState``-like source of the draws (default: global state).
            return_mask: also return the coverage, ``1 - prod(1 - a_i)`` over the pasted
                occluders' alphas, (H, W) float32 in [0, 1].
        Returns:
            (H, W, 3) uint8 occluded copy, and the mask if asked.
        """
        occluders = self.occluders
        h, w = img.shape[:2]
        out = img.copy()
        keep = np.ones((h, w), np.float32) if return_mask else None
        im_scale = min(w, h) / 256.0
        count = rng.randint(1, 8)
        for _ in range(count):
            occ = occluders[rng.randint(len(occluders))]
            factor = rng.uniform(0.2, 1.0) * im_scale
            center = rng.uniform([0.0, 0.0], [w, h])
            occ = _resize_by_factor(occ, factor)
            a = _paste_over(occ, out, center)
            if keep is not None and a is not None:
                region, alpha = a
                keep[region] *= 1.0 - alpha
        if return_mask:
            return out, 1.0 - keep
        return out


def _resize_by_factor(im: np.ndarray, factor: float) -> np.ndarray:
    new_w = max(1, int(round(im.shape[1] * factor)))
    new_h = max(1, int(round(im.shape[0] * factor)))
    interp = cv2.INTER_LINEAR if factor > 1.0 else cv2.INTER_AREA
    return cv2.resize(im, (new_w, new_h), interpolation=interp)


def _paste_over(src: np.ndarray, dst: np.ndarray, center):
    """Alpha-blend RGBA ``src`` centred at ``center`` (x, y) into RGB ``dst`` in place.

    Returns ((row slice, col slice), alpha (h, w)) of the touched region, or None if the patch
    lies outside ``dst``.
    """
    sh, sw = src.shape[:2]
    dh, dw = dst.shape[:2]
    cx, cy = int(np.round(center[0])), int(np.round(center[1]))
    x0, y0 = cx - sw // 2, cy - sh // 2
    x1, y1 = x0 + sw, y0 + sh
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, dw), min(y1, dh)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    patch = src[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = (slice(cy0, cy1), slice(cx0, cx1))
    # round(a/255 * src + (1 - a/255) * dst) in exact integer arithmetic (max 255*255 < 2^16)
    a = patch[..., 3:4].astype(np.uint16)
    acc = patch[..., :3].astype(np.uint16) * a
    acc += dst[region].astype(np.uint16) * (255 - a)
    acc += 127
    acc //= 255
    dst[region] = acc.astype(np.uint8)
    return region, patch[..., 3].astype(np.float32) * (1.0 / 255.0)
