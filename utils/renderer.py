"""Mesh overlays for ``--viz``, training summaries and the demo (decisions D12).

:class:`Renderer` blends a mesh in camera coordinates (OpenCV convention: x right, y down, z
forward; pinhole intrinsics) over an RGB image, with pyrender (offscreen GL through EGL or
OSMesa: :func:`select_gl_platform`) or :func:`utils.raster.render_mesh_software`.

Known trap: creating a GL context and *later* importing triton (torchvision, timm,
``torch._dynamo``) segfaults; hence ``torch._dynamo`` is imported first, at the top.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch._dynamo  # noqa: F401  must precede any GL context (triton/GL segfault)

import cv2
import numpy as np

from utils.raster import (as_numpy, check_faces, check_intrinsics, check_size, check_vertices,
                          render_mesh_software)

__all__ = ["Renderer", "make_grid", "save_obj", "draw_keypoints", "select_gl_platform",
           "DEFAULT_COLOR"]

DEFAULT_COLOR = (0.65, 0.74, 0.86)   # light blue, RGB in 0..1
_UNSET = object()
_GL_PLATFORM_CACHE: object = _UNSET   # str (working platform) or None (no GL), once probed
_GL_PLATFORM_CACHE_REASONS: list[str] = []   # why each probed platform failed
_PROBE_TIMEOUT_S = 60

# Renders one triangle offscreen with pyrender; exit code 0 iff a GL context works.
_PROBE_CODE = r"""
import numpy as np, pyrender, trimesh
r = pyrender.OffscreenRenderer(16, 16)
s = pyrender.Scene()
tri = trimesh.Trimesh(np.array([[-1., -1, -3], [1, -1, -3], [0, 1, -3]]), np.array([[0, 1, 2]]),
                      process=False)
s.add(pyrender.Mesh.from_trimesh(tri))
s.add(pyrender.IntrinsicsCamera(8., 8., 8., 8.))
color, depth = r.render(s)
r.delete()
assert (depth > 0).any(), "probe triangle not drawn"
"""


def _probe_platform(platform: str) -> str | None:
    """Why ``platform`` cannot render, None if it can (tried in a subprocess: a broken GL stack
    can segfault)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_CODE], capture_output=True, text=True,
                              env=dict(os.environ, PYOPENGL_PLATFORM=platform),
                              timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"timed out after {_PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return f"exit code {proc.returncode}: {tail}"


def select_gl_platform(refresh: bool = False) -> str | None:
    """The PyOpenGL platform for pyrender ('egl', 'osmesa', a user-set one), None without GL.

    An existing ``PYOPENGL_PLATFORM`` is the only candidate; else the one PyOpenGL was already
    imported with; else ``egl`` then ``osmesa``. The first that renders (each probed in a
    subprocess) is written to ``os.environ`` (PyOpenGL reads it once, at import). Cached per
    process (``refresh=True`` probes again).
    """
    global _GL_PLATFORM_CACHE
    if _GL_PLATFORM_CACHE is not _UNSET and not refresh:
        return _GL_PLATFORM_CACHE  # type: ignore[return-value]
    reasons, candidates = [], ("egl", "osmesa")
    if env_platform := os.environ.get("PYOPENGL_PLATFORM"):
        candidates = (env_platform,)
    elif "OpenGL" in sys.modules:       # PyOpenGL fixed its platform at import
        import OpenGL.platform
        name = type(OpenGL.platform.PLATFORM).__name__
        chosen = {"EGLPlatform": "egl", "OSMesaPlatform": "osmesa"}.get(name)
        candidates = (chosen,) if chosen else ()
        if not chosen:
            reasons.append(f"PyOpenGL already imported with platform {name}, which pyrender "
                           "cannot use offscreen")
    result = None
    for platform in candidates:
        if (why := _probe_platform(platform)) is None:
            result = platform
            break
        reasons.append(f"{platform}: {why}")
    if result is not None and not env_platform:
        os.environ["PYOPENGL_PLATFORM"] = result
    _GL_PLATFORM_CACHE = result
    _GL_PLATFORM_CACHE_REASONS[:] = reasons
    return result


def gl_failure_reasons() -> list[str]:
    """Why each probed GL platform failed in the last :func:`select_gl_platform` call."""
    return list(_GL_PLATFORM_CACHE_REASONS)


def _check_image(image) -> np.ndarray:
    img = as_numpy(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be an RGB array of shape [H, W, 3], got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (0..255), got dtype {img.dtype}")
    return img


class Renderer:
    """Draws one mesh topology (faces [F, 3], e.g. SMPL's) over images with ``backend`` 'auto',
    'pyrender' (raise without GL) or 'software'. Attributes ``backend`` (the one used) and
    ``gl_platform`` (or None)."""

    light_intensity = 3.0   # pyrender headlight: a surface facing the camera shows ``color``
    ambient = 0.3           # unlit brightness relative to ``color`` (both backends)

    def __init__(self, faces, backend: str = "auto"):
        if backend not in ("auto", "pyrender", "software"):
            raise ValueError(f"backend must be 'auto', 'pyrender' or 'software', got {backend!r}")
        self.faces = check_faces(faces)
        self.requested_backend = backend
        self._holds_gl = False   # whether this renderer counts as a user of the shared context
        self.gl_platform = None if backend == "software" else select_gl_platform()
        self.backend = "software" if self.gl_platform is None else "pyrender"
        if backend == "pyrender" and self.gl_platform is None:
            why = "; ".join(gl_failure_reasons()) or "no platform to try"
            raise RuntimeError(f"pyrender backend requested but no GL context can be made "
                               f"({why}); use backend='software' or 'auto'")

    def render(self, vertices, focal_length, camera_center, image, color=DEFAULT_COLOR,
               alpha: float = 0.9) -> np.ndarray:
        """``image`` [H, W, 3] uint8 RGB with the mesh (vertices [V, 3], colour (r, g, b) in
        0..1) blended in at opacity ``alpha`` where it covers it; focal f or (fx, fy) and
        camera_center (cx, cy) in pixels. Pixels outside the mesh keep ``image``'s values."""
        img = _check_image(image)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        h, w = img.shape[:2]
        rgb, mask = self._render_layers(vertices, focal_length, camera_center, h, w, color)
        out = img.copy()
        blended = (1.0 - alpha) * img[mask].astype(np.float32) + alpha * 255.0 * rgb[mask]
        out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def close(self) -> None:
        """Release the GL context (freed once no renderer uses it). The renderer stays usable."""
        if self._holds_gl:
            self._holds_gl = False
            _SHARED_GL.release()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _render_layers(self, vertices, focal_length, camera_center, height, width, color):
        """(rgb [H, W, 3] float32 in 0..1, mask [H, W] bool)."""
        v = check_vertices(vertices)
        check_faces(self.faces, len(v))
        fx, fy, cx, cy = check_intrinsics(focal_length, camera_center)
        height, width = check_size(height, width)
        col = np.asarray(color, dtype=np.float64).reshape(-1)
        if col.size != 3 or np.any(col < 0) or np.any(col > 1):
            raise ValueError(f"color must be (r, g, b) in 0..1, got {tuple(np.asarray(color))}")
        if self.backend == "pyrender":
            try:
                return self._render_pyrender(v, fx, fy, cx, cy, height, width, col)
            except Exception as exc:
                if self.requested_backend == "pyrender":
                    raise
                warnings.warn(f"pyrender failed ({type(exc).__name__}: {exc}); falling back to "
                              "the software rasteriser", RuntimeWarning, stacklevel=3)
                self.close()
                self.backend = "software"
        return render_mesh_software(v, self.faces, (fx, fy), (cx, cy), height, width,
                                    color=col, ambient=self.ambient)

    def _render_pyrender(self, v, fx, fy, cx, cy, height, width, color):
        import pyrender
        import trimesh

        # OpenCV camera (y down, z forward) -> OpenGL (y up, z backward): 180 deg about x.
        mesh = trimesh.Trimesh(v * np.array([1.0, -1.0, -1.0]), self.faces, process=False)
        # pyrender shades in linear space and writes pow(colour, 1/2.2): linearise the inputs so
        # that a fully lit surface shows ``color`` and an unlit one ``ambient * color``.
        material = pyrender.MetallicRoughnessMaterial(
            metallicFactor=0.0, roughnessFactor=0.8, alphaMode="OPAQUE", doubleSided=True,
            baseColorFactor=(*(np.asarray(color) ** 2.2), 1.0))
        scene = pyrender.Scene(bg_color=(0.0, 0.0, 0.0, 0.0),
                               ambient_light=(self.ambient ** 2.2,) * 3)
        scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=True))
        z = v[:, 2]
        z_front = z[z > 0]
        znear = max(1e-3, 0.5 * float(z_front.min())) if z_front.size else 1e-2
        zfar = max(2.0 * float(z.max()) + 1.0, znear * 10.0)
        # GL samples pixel (c, r) at (c + 0.5, r + 0.5), OpenCV at (c, r): shift by half a pixel.
        scene.add(pyrender.IntrinsicsCamera(fx=fx, fy=fy, cx=cx + 0.5, cy=cy + 0.5, znear=znear,
                                            zfar=zfar), pose=np.eye(4))
        # a directional light at the camera shines along -z (the GL viewing direction)
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=self.light_intensity),
                  pose=np.eye(4))
        if not self._holds_gl:
            _SHARED_GL.users += 1
            self._holds_gl = True
        color_img, depth = _SHARED_GL.render(scene, height, width)
        rgb = np.zeros((height, width, 3), np.float32)
        if color_img.shape[-1] == 4:
            # EGL multisamples: alpha is the covered fraction, the colour premultiplied by it.
            # Covered = at least half the pixel (~ its centre, as in software); un-premultiply.
            a = color_img[..., 3].astype(np.float32)
            mask = a >= 128
            rgb[mask] = np.clip(color_img[..., :3][mask].astype(np.float32) / a[mask, None], 0, 1)
        else:   # OSMesa: RGB only, not multisampled
            mask = depth > 0
            rgb[mask] = color_img[mask].astype(np.float32) / 255.0
        return rgb, mask


class _SharedOffscreen:
    """One pyrender OffscreenRenderer per process, resized to each image, shared by all
    renderers and deleted when the last closes: pyrender's EGL ``delete()`` terminates the
    display all EGL contexts share, so deleting one context would break the others."""

    offscreen, users = None, 0

    def release(self) -> None:
        self.users = max(0, self.users - 1)
        if self.users == 0:
            self.delete()

    def render(self, scene, height: int, width: int):
        import pyrender
        if self.offscreen is None:
            self.offscreen = pyrender.OffscreenRenderer(width, height)
        self.offscreen.viewport_width, self.offscreen.viewport_height = width, height
        return self.offscreen.render(scene, flags=pyrender.RenderFlags.RGBA)

    def delete(self) -> None:
        offscreen, self.offscreen = self.offscreen, None
        if offscreen is not None:
            with contextlib.suppress(Exception):   # the context may be gone already
                offscreen.delete()


_SHARED_GL = _SharedOffscreen()
atexit.register(_SHARED_GL.delete)   # free GL before interpreter teardown


def make_grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """Non-empty [H, W_i, C] (or [H, W_i]) images of one H, C and dtype, side by side."""
    if len(images) == 0:
        raise ValueError("make_grid needs at least one image")
    arrays = [as_numpy(im) for im in images]
    ref = arrays[0]
    for i, im in enumerate(arrays):
        if im.ndim != ref.ndim or im.shape[0] != ref.shape[0] or im.shape[2:] != ref.shape[2:]:
            raise ValueError(f"images[{i}] has shape {im.shape}, expected height {ref.shape[0]} "
                             f"and channels {ref.shape[2:]} like images[0] {ref.shape}")
        if im.dtype != ref.dtype:
            raise ValueError(f"images[{i}] has dtype {im.dtype}, images[0] has {ref.dtype}")
    return np.concatenate(arrays, axis=1)


def save_obj(vertices, faces, path) -> Path:
    """Write vertices [V, 3], faces [F, 3] as a Wavefront .obj (trimesh; folders created)."""
    import trimesh
    v = check_vertices(vertices)
    f = check_faces(faces, len(v))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(v, f, process=False).export(str(path), file_type="obj")
    return path


def draw_keypoints(image, kp, color=(255, 0, 0), radius: int | None = None) -> np.ndarray:
    """A copy of ``image`` [H, W, 3] uint8 with keypoints kp [J, 2] (or [J, 3]: confidence <= 0
    skipped) as filled circles of ``color`` (0..255) and ``radius`` (default ~1% of the
    smaller side, at least 1)."""
    img = _check_image(image)
    k = as_numpy(kp).astype(np.float64)
    if k.ndim != 2 or k.shape[1] not in (2, 3):
        raise ValueError(f"kp must have shape [J, 2] or [J, 3], got {k.shape}")
    if radius is None:
        radius = max(1, int(round(min(img.shape[:2]) / 100)))
    out = np.ascontiguousarray(img.copy())
    col = tuple(int(c) for c in color)
    for x, y, *conf in k:
        if (conf and not conf[0] > 0) or not (np.isfinite(x) and np.isfinite(y)):
            continue
        cv2.circle(out, (int(round(x)), int(round(y))), int(radius), col, thickness=-1,
                   lineType=cv2.LINE_AA)
    return out
