"""Mesh overlays for ``--viz``, training summaries and the demo (decisions D12).

:class:`Renderer` draws a mesh given in **camera coordinates, OpenCV convention** (x right,
y down, z forward; i.e. the predicted mesh already translated by the full-image camera
translation) with pinhole intrinsics, and blends it over an RGB image where it covers it.

Backends:

* ``'pyrender'``: pyrender offscreen (OpenGL through EGL or OSMesa). The PyOpenGL platform is
  chosen automatically: an existing ``PYOPENGL_PLATFORM`` is respected, otherwise ``egl`` then
  ``osmesa`` are tried, each in a throw-away subprocess (a broken GL stack can segfault), and
  the first that renders is written to ``os.environ`` before pyrender / PyOpenGL are imported
  (PyOpenGL reads the variable once, at its first import). The result is cached per process.
* ``'software'``: the numpy/cv2 rasteriser :func:`utils.raster.render_mesh_software`, used where
  no GL context can be made. ``backend='auto'`` picks pyrender when it works, else this one;
  :attr:`Renderer.backend` records the choice.

Known trap: creating a GL context and *later* importing triton (pulled in by torchvision, timm,
``torch._dynamo``) segfaults. Importing ``torch._dynamo`` before any GL context exists avoids
it, hence the import at the top of this module.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch._dynamo  # noqa: F401  must precede any GL context (triton/GL segfault)

import cv2
import numpy as np

__all__ = ["Renderer", "make_grid", "save_obj", "draw_keypoints", "select_gl_platform",
           "DEFAULT_COLOR"]

DEFAULT_COLOR = (0.65, 0.74, 0.86)   # light blue, RGB in 0..1
_GL_CANDIDATES = ("egl", "osmesa")
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


# ---------------------------------------------------------------------------------------------
# GL platform selection

def _probe_platform(platform: str) -> tuple[bool, str]:
    """Try ``platform`` in a subprocess. Returns (works, short reason)."""
    env = dict(os.environ, PYOPENGL_PLATFORM=platform)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_CODE], env=env, capture_output=True,
                              text=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {_PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return True, "ok"
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return False, f"exit code {proc.returncode}: {tail}"


def select_gl_platform(refresh: bool = False) -> str | None:
    """The PyOpenGL platform pyrender should use here, or None if no GL context can be made.

    Respects an existing ``PYOPENGL_PLATFORM``; otherwise probes ``egl`` then ``osmesa`` (each
    in a subprocess) and sets ``os.environ['PYOPENGL_PLATFORM']`` to the first that works. If
    PyOpenGL was already imported without the variable, its platform is fixed and only that one
    is probed. Cached per process (``refresh=True`` probes again).

    Returns:
        'egl' | 'osmesa' | another user-set platform name | None.
    """
    global _GL_PLATFORM_CACHE
    if _GL_PLATFORM_CACHE is not _UNSET and not refresh:
        return _GL_PLATFORM_CACHE  # type: ignore[return-value]

    reasons = []
    env_platform = os.environ.get("PYOPENGL_PLATFORM")
    if env_platform:
        candidates: tuple[str, ...] = (env_platform,)
    elif "OpenGL" in sys.modules:
        # PyOpenGL already chose its platform at import; we can only use that one.
        import OpenGL.platform
        name = type(OpenGL.platform.PLATFORM).__name__
        chosen = {"EGLPlatform": "egl", "OSMesaPlatform": "osmesa"}.get(name)
        candidates = (chosen,) if chosen else ()
        if not chosen:
            reasons.append(f"PyOpenGL already imported with platform {name}, which pyrender "
                           "cannot use offscreen")
    else:
        candidates = _GL_CANDIDATES

    result = None
    for platform in candidates:
        ok, why = _probe_platform(platform)
        if ok:
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


# ---------------------------------------------------------------------------------------------
# Input checks

def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array") from exc


def _check_vertices(vertices) -> np.ndarray:
    v = _to_numpy(vertices, "vertices")
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"vertices contain {int((~np.isfinite(v)).sum())} non-finite values")
    return v.astype(np.float64)


def _check_faces(faces) -> np.ndarray:
    f = _to_numpy(faces, "faces")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        if not np.all(np.mod(f, 1) == 0):
            raise ValueError(f"faces must hold integer vertex indices, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.size and f.min() < 0:
        raise ValueError(f"faces hold a negative vertex index ({f.min()})")
    return f


def _check_intrinsics(focal_length, camera_center) -> tuple[float, float, float, float]:
    fl = _to_numpy(focal_length, "focal_length").astype(np.float64).reshape(-1)
    if fl.size == 1:
        fx = fy = float(fl[0])
    elif fl.size == 2:
        fx, fy = float(fl[0]), float(fl[1])
    else:
        raise ValueError(f"focal_length must be a float or (fx, fy), got {fl.size} values")
    if not (fx > 0 and fy > 0 and np.isfinite(fx) and np.isfinite(fy)):
        raise ValueError(f"focal_length must be positive and finite, got ({fx}, {fy})")
    cc = _to_numpy(camera_center, "camera_center").astype(np.float64).reshape(-1)
    if cc.size != 2 or not np.all(np.isfinite(cc)):
        raise ValueError(f"camera_center must be finite (cx, cy), got {cc.tolist()}")
    return fx, fy, float(cc[0]), float(cc[1])


def _check_image(image) -> np.ndarray:
    img = _to_numpy(image, "image")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be an RGB array of shape [H, W, 3], got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (0..255), got dtype {img.dtype}")
    return img


def _check_color(color) -> tuple[float, float, float]:
    c = np.asarray(color, dtype=np.float64).reshape(-1)
    if c.size != 3 or np.any(c < 0) or np.any(c > 1):
        raise ValueError(f"color must be (r, g, b) in 0..1, got {tuple(np.asarray(color))}")
    return float(c[0]), float(c[1]), float(c[2])


# ---------------------------------------------------------------------------------------------

class Renderer:
    """Draws one mesh topology over images.

    Args:
        faces: [F, 3] int vertex indices (e.g. the SMPL faces).
        backend: 'auto' (pyrender if a GL context can be made, else software), 'pyrender'
            (raise if no GL context) or 'software'.
        light_intensity: strength of the pyrender directional light shining along the
            camera's viewing direction (3.0: a surface facing the camera shows ``color``).
        ambient: brightness of an unlit surface relative to ``color``, 0..1 (both backends).

    Attributes:
        backend: 'pyrender' or 'software', the backend actually used.
        gl_platform: the PyOpenGL platform ('egl', 'osmesa', ...) or None.
    """

    def __init__(self, faces, backend: str = "auto", light_intensity: float = 3.0,
                 ambient: float = 0.3):
        if backend not in ("auto", "pyrender", "software"):
            raise ValueError(f"backend must be 'auto', 'pyrender' or 'software', got {backend!r}")
        self.faces = _check_faces(faces)
        self.requested_backend = backend
        self.light_intensity = float(light_intensity)
        self.ambient = float(ambient)
        self._holds_gl = False   # whether this renderer counts as a user of the shared context
        self.gl_platform: str | None = None
        if backend == "software":
            self.backend = "software"
            return
        platform = select_gl_platform()
        if platform is None:
            why = "; ".join(gl_failure_reasons()) or "no platform to try"
            if backend == "pyrender":
                raise RuntimeError(f"pyrender backend requested but no GL context can be made "
                                   f"({why}); use backend='software' or 'auto'")
            self.backend = "software"
        else:
            self.backend = "pyrender"
            self.gl_platform = platform

    # -- public API ------------------------------------------------------------------------

    def render(self, vertices, focal_length, camera_center, image, color=DEFAULT_COLOR,
               alpha: float = 0.9) -> np.ndarray:
        """Blend the shaded mesh over ``image`` where it covers it.

        Args:
            vertices: [V, 3] camera coordinates, OpenCV convention (metres).
            focal_length: float or (fx, fy), pixels.
            camera_center: (cx, cy), pixels.
            image: [H, W, 3] uint8 RGB.
            color: (r, g, b) in 0..1, the mesh's base colour.
            alpha: opacity of the mesh where it covers the image, 0..1.

        Returns:
            [H, W, 3] uint8 RGB; pixels outside the mesh mask equal ``image``'s.
        """
        img = _check_image(image)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        h, w = img.shape[:2]
        rgb, mask = self._render_layers(vertices, focal_length, camera_center, h, w, color)
        out = img.copy()
        if mask.any():
            blended = (1.0 - alpha) * img[mask].astype(np.float32) + alpha * 255.0 * rgb[mask]
            out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def close(self) -> None:
        """Release the GL context (freed once no renderer uses it). The renderer stays usable."""
        if self._holds_gl:
            self._holds_gl = False
            _SHARED_GL.release()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _render_layers(self, vertices, focal_length, camera_center, height, width, color):
        """(rgb [H, W, 3] float32 in 0..1, mask [H, W] bool)."""
        v = _check_vertices(vertices)
        if self.faces.size and self.faces.max() >= len(v):
            raise ValueError(f"faces index vertex {self.faces.max()} but only {len(v)} vertices "
                             "were given")
        fx, fy, cx, cy = _check_intrinsics(focal_length, camera_center)
        height, width = int(height), int(width)
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        col = _check_color(color)
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
        return self._render_software(v, fx, fy, cx, cy, height, width, col)

    def _render_software(self, v, fx, fy, cx, cy, height, width, color):
        from utils.raster import render_mesh_software
        rgb, mask = render_mesh_software(v, self.faces, (fx, fy), (cx, cy), height, width,
                                         color=color, ambient=self.ambient)
        return np.asarray(rgb, dtype=np.float32), np.asarray(mask, dtype=bool)

    def _render_pyrender(self, v, fx, fy, cx, cy, height, width, color):
        import pyrender
        import trimesh

        # OpenCV camera (y down, z forward) -> OpenGL camera (y up, z backward):
        # 180 deg rotation about x.
        v_gl = v * np.array([1.0, -1.0, -1.0])
        mesh = trimesh.Trimesh(v_gl, self.faces, process=False)
        # pyrender shades in linear space and writes pow(colour, 1/2.2): linearise the inputs so
        # that a fully lit surface shows ``color`` and an unlit one ``ambient * color``, as in
        # the software rasteriser.
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
        # GL samples pixel (c, r) at its centre (c + 0.5, r + 0.5); OpenCV puts pixel centres at
        # integer coordinates, so shift the principal point by half a pixel.
        camera = pyrender.IntrinsicsCamera(fx=fx, fy=fy, cx=cx + 0.5, cy=cy + 0.5, znear=znear,
                                           zfar=zfar)
        scene.add(camera, pose=np.eye(4))
        # A directional light at the camera shines along -z (the GL viewing direction).
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=self.light_intensity),
                  pose=np.eye(4))

        if not self._holds_gl:
            _SHARED_GL.acquire()
            self._holds_gl = True
        color_img, depth = _SHARED_GL.render(scene, height, width)
        rgb = np.zeros((height, width, 3), np.float32)
        if color_img.shape[-1] == 4:
            # Framebuffer platforms (EGL) multisample: alpha is the covered fraction of each
            # pixel and the colour is premultiplied by it. Covered = at least half the pixel
            # (~ its centre inside the mesh, as in the software rasteriser); the colour is
            # un-premultiplied there.
            a = color_img[..., 3].astype(np.float32)
            mask = a >= 128
            rgb[mask] = np.clip(color_img[..., :3][mask].astype(np.float32) / a[mask, None], 0, 1)
        else:
            # OSMesa has no framebuffers: pyrender returns RGB only, not multisampled.
            mask = depth > 0
            rgb[mask] = color_img[mask].astype(np.float32) / 255.0
        return rgb, mask


class _SharedOffscreen:
    """One pyrender OffscreenRenderer per process, resized to each image, shared by all
    :class:`Renderer` objects and deleted when the last one closes.

    One context rather than one per image size: pyrender's EGL ``delete()`` calls
    ``eglTerminate`` on the display, which all EGL contexts of the process share, so deleting
    one context breaks every other (EGL_BAD_DISPLAY).
    """

    def __init__(self):
        self.offscreen = None
        self.users = 0

    def acquire(self) -> None:
        self.users += 1

    def release(self) -> None:
        self.users = max(0, self.users - 1)
        if self.users == 0:
            self.delete()

    def render(self, scene, height: int, width: int):
        import pyrender

        if self.offscreen is None:
            self.offscreen = pyrender.OffscreenRenderer(viewport_width=width,
                                                        viewport_height=height)
        else:
            self.offscreen.viewport_width = width
            self.offscreen.viewport_height = height
        return self.offscreen.render(scene, flags=pyrender.RenderFlags.RGBA)

    def delete(self) -> None:
        offscreen, self.offscreen = self.offscreen, None
        if offscreen is not None:
            try:
                offscreen.delete()
            except Exception:  # pragma: no cover - context already gone
                pass


_SHARED_GL = _SharedOffscreen()
atexit.register(_SHARED_GL.delete)   # free GL before interpreter teardown


# ---------------------------------------------------------------------------------------------
# Helpers

def make_grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate images side by side.

    Args:
        images: non-empty list of [H, W_i, C] (or [H, W_i]) arrays with the same H, C and dtype.

    Returns:
        [H, sum W_i, C] array.
    """
    if len(images) == 0:
        raise ValueError("make_grid needs at least one image")
    arrays = [_to_numpy(im, f"images[{i}]") for i, im in enumerate(images)]
    ref = arrays[0]
    for i, im in enumerate(arrays):
        if im.ndim != ref.ndim or im.shape[0] != ref.shape[0] or im.shape[2:] != ref.shape[2:]:
            raise ValueError(f"images[{i}] has shape {im.shape}, expected height {ref.shape[0]} "
                             f"and channels {ref.shape[2:]} like images[0] {ref.shape}")
        if im.dtype != ref.dtype:
            raise ValueError(f"images[{i}] has dtype {im.dtype}, images[0] has {ref.dtype}")
    return np.concatenate(arrays, axis=1)


def save_obj(vertices, faces, path) -> Path:
    """Write a mesh ([V, 3] vertices, [F, 3] faces) to a Wavefront .obj file via trimesh.

    Creates the parent folder. Returns the path written.
    """
    import trimesh

    v = _check_vertices(vertices)
    f = _check_faces(faces)
    if f.size and f.max() >= len(v):
        raise ValueError(f"faces index vertex {f.max()} but only {len(v)} vertices were given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(v, f, process=False).export(str(path), file_type="obj")
    return path


def draw_keypoints(image, kp, color=(255, 0, 0), radius: int | None = None) -> np.ndarray:
    """Draw 2D keypoints as filled circles on a copy of ``image``.

    Args:
        image: [H, W, 3] uint8 RGB.
        kp: [J, 2] pixel coordinates, or [J, 3] with a confidence column (points with
            confidence <= 0 are skipped).
        color: (r, g, b) in 0..255.
        radius: circle radius in pixels; default ~1% of the smaller image side (at least 1).

    Returns:
        [H, W, 3] uint8 RGB.
    """
    img = _check_image(image)
    k = _to_numpy(kp, "kp").astype(np.float64)
    if k.ndim != 2 or k.shape[1] not in (2, 3):
        raise ValueError(f"kp must have shape [J, 2] or [J, 3], got {k.shape}")
    if radius is None:
        radius = max(1, int(round(min(img.shape[:2]) / 100)))
    out = np.ascontiguousarray(img.copy())
    col = tuple(int(c) for c in color)
    for j in range(len(k)):
        if k.shape[1] == 3 and not k[j, 2] > 0:
            continue
        if not np.all(np.isfinite(k[j, :2])):
            continue
        center = (int(round(k[j, 0])), int(round(k[j, 1])))
        cv2.circle(out, center, int(radius), col, thickness=-1, lineType=cv2.LINE_AA)
    return out
