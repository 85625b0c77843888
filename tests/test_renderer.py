"""Mesh overlays (utils/renderer.py, decisions D12).

Independent facts used: a camera-facing square at depth z with pinhole intrinsics covers exactly
the pixels whose centres (integer coordinates, OpenCV convention) fall inside its projected
rectangle; a sphere's silhouette contains the projection of its centre; corners far from the
mesh stay empty; trimesh reads back what was written.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import utils.renderer as renderer_mod
from utils.renderer import Renderer, draw_keypoints, make_grid, save_obj, select_gl_platform

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64
FX, FY = 120.0, 110.0
CX, CY = 31.0, 23.0

def _mask(renderer, vertices, focal_length, camera_center, height, width):
    """[H, W] bool: the pixels the renderer covers with the mesh."""
    from utils.renderer import DEFAULT_COLOR
    return renderer._render_layers(vertices, focal_length, camera_center, height, width,
                                   DEFAULT_COLOR)[1]



def _gl_or_skip() -> str:
    platform = select_gl_platform()
    if platform is None:
        pytest.skip("no GL context can be made here (" +
                    "; ".join(renderer_mod.gl_failure_reasons()) + ")")
    return platform


BACKENDS = ["software", "pyrender"]


def _make(faces, backend):
    if backend == "pyrender":
        _gl_or_skip()
    r = Renderer(faces, backend=backend)
    assert r.backend == backend
    return r


def _sphere(centre, radius, subdivisions=3):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices) + np.asarray(centre), np.asarray(m.faces)


def _square(u0, u1, v0, v1, z):
    """Camera-facing square whose projection is the pixel rectangle [u0,u1] x [v0,v1]."""
    x0, x1 = (u0 - CX) * z / FX, (u1 - CX) * z / FX
    y0, y1 = (v0 - CY) * z / FY, (v1 - CY) * z / FY
    verts = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return verts, faces


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_covers_projected_centre_not_corners(backend):
    centre = np.array([0.3, -0.2, 4.0])
    verts, faces = _sphere(centre, 0.5)
    r = _make(faces, backend)
    mask = _mask(r, verts, (FX, FY), (CX, CY), H, W)
    assert mask.shape == (H, W) and mask.dtype == bool
    assert r.backend == backend, "pyrender failed and fell back to software"
    u = FX * centre[0] / centre[2] + CX        # 40.0
    v = FY * centre[1] / centre[2] + CY        # 17.5
    assert mask[int(round(v)), int(round(u))]
    assert mask[int(np.floor(v)) - 2:int(np.ceil(v)) + 3, int(u) - 3:int(u) + 4].all()
    for (y, x) in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        assert not mask[y, x], f"corner ({y}, {x}) covered"
    # silhouette of a sphere (radius r, centre distance d, depth z) is an ellipse of area
    # pi fx fy r^2 sqrt(d^2 - r^2) / (z^2 - r^2)^(3/2)
    r2, d2, z = 0.25, float(centre @ centre), centre[2]
    area = np.pi * FX * FY * r2 * np.sqrt(d2 - r2) / (z ** 2 - r2) ** 1.5
    assert abs(mask.sum() - area) / area < 0.05, (mask.sum(), area)
    r.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_square_covers_its_projected_rectangle(backend):
    u0, u1, v0, v1 = 10.3, 40.6, 5.2, 30.7
    verts, faces = _square(u0, u1, v0, v1, z=6.0)
    r = _make(faces, backend)
    mask = _mask(r, verts, (FX, FY), (CX, CY), H, W)
    assert r.backend == backend, "pyrender failed and fell back to software"
    cols = np.arange(W)[None, :]
    rows = np.arange(H)[:, None]
    inside = (cols >= u0) & (cols <= u1) & (rows >= v0) & (rows <= v1)
    # pixel centres at integers: exact away from the edges, at most a sub-pixel slack on them
    grown = (cols >= u0 - 1) & (cols <= u1 + 1) & (rows >= v0 - 1) & (rows <= v1 + 1)
    shrunk = (cols >= u0 + 1) & (cols <= u1 - 1) & (rows >= v0 + 1) & (rows <= v1 - 1)
    assert mask[shrunk].all()
    assert not mask[~grown].any()
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.95, iou
    # the winding of the faces does not matter (no back-face culling)
    mask_flipped = _mask(r, verts, (FX, FY), (CX, CY), H, W) if backend == "software" else \
        _mask(Renderer(faces[:, ::-1].copy(), backend=backend), verts, (FX, FY), (CX, CY),
                                                                      H, W)
    assert (mask_flipped == mask).mean() > 0.99


def test_pyrender_and_software_agree():
    _gl_or_skip()
    sphere_v, sphere_f = _sphere([-0.4, 0.1, 5.0], 0.6)
    box = trimesh.creation.box(extents=(0.5, 0.9, 0.4))
    rot = trimesh.transformations.rotation_matrix(0.6, [1.0, 1.0, 0.3])
    box.apply_transform(rot)
    box_v = np.asarray(box.vertices) + [0.7, -0.2, 4.5]
    verts = np.concatenate([sphere_v, box_v])
    faces = np.concatenate([sphere_f, np.asarray(box.faces) + len(sphere_v)])
    gl = Renderer(faces, backend="pyrender")
    sw = Renderer(faces, backend="software")
    for (h, w, f, c) in [(H, W, (FX, FY), (CX, CY)), (60, 40, 90.0, (18.0, 33.0))]:
        m_gl = _mask(gl, verts, f, c, h, w)
        m_sw = _mask(sw, verts, f, c, h, w)
        iou = (m_gl & m_sw).sum() / (m_gl | m_sw).sum()
        assert iou > 0.9, (h, w, iou)
        assert gl.backend == "pyrender", "pyrender failed and fell back to software"
    # and the shading is alike: same headlight, same colour where fully lit
    rgb_gl, m_gl = gl._render_layers(verts, (FX, FY), (CX, CY), H, W, (0.65, 0.74, 0.86))
    rgb_sw, m_sw = sw._render_layers(verts, (FX, FY), (CX, CY), H, W, (0.65, 0.74, 0.86))
    both = m_gl & m_sw
    assert np.abs(rgb_gl[both] - rgb_sw[both]).mean() < 0.08
    gl.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlay_changes_only_masked_pixels(backend):
    verts, faces = _sphere([0.0, 0.2, 3.0], 0.5)
    r = _make(faces, backend)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image_before = image.copy()
    out = r.render(verts, FX, (CX, CY), image, color=(1.0, 0.0, 0.0), alpha=0.9)
    mask = _mask(r, verts, FX, (CX, CY), H, W)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert r.backend == backend, "pyrender failed and fell back to software"
    assert np.array_equal(image, image_before), "render modified its input"
    changed = (out != image).any(-1)
    assert mask.sum() > 50
    assert not (changed & ~mask).any()
    assert changed[mask].mean() > 0.95
    # a red mesh at alpha 0.9 makes covered pixels red-dominant
    o = out[mask].astype(int)
    assert (o[:, 0] > o[:, 1]).mean() > 0.95 and (o[:, 0] > o[:, 2]).mean() > 0.95
    # alpha 0 leaves the image as it was
    assert np.array_equal(r.render(verts, FX, (CX, CY), image, alpha=0.0), image)
    r.close()


def test_mesh_outside_view_changes_nothing():
    verts, faces = _sphere([0.0, 0.0, -3.0], 0.5)          # behind the camera
    r = Renderer(faces, backend="software")
    image = np.full((H, W, 3), 77, np.uint8)
    assert np.array_equal(r.render(verts, FX, (CX, CY), image), image)


def test_bad_inputs_raise():
    verts, faces = _sphere([0.0, 0.0, 3.0], 0.5, subdivisions=1)
    r = Renderer(faces, backend="software")
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="vertices"):
        r.render(verts[:, :2], FX, (CX, CY), image)
    with pytest.raises(ValueError, match="only 10 vertices"):
        r.render(verts[:10], FX, (CX, CY), image)
    with pytest.raises(ValueError, match="uint8"):
        r.render(verts, FX, (CX, CY), image.astype(np.float32))
    with pytest.raises(ValueError, match="focal_length"):
        r.render(verts, -1.0, (CX, CY), image)
    with pytest.raises(ValueError, match="backend"):
        Renderer(faces, backend="opengl")


def test_env_platform_is_respected_and_auto_falls_back(monkeypatch):
    """A PYOPENGL_PLATFORM that cannot work is not overridden: auto -> software."""
    # monkeypatch restores the cached probe result (and the env) afterwards
    monkeypatch.setattr(renderer_mod, "_GL_PLATFORM_CACHE", renderer_mod._UNSET)
    monkeypatch.setattr(renderer_mod, "_GL_PLATFORM_CACHE_REASONS", [])
    monkeypatch.setenv("PYOPENGL_PLATFORM", "no-such-platform")
    faces = np.array([[0, 1, 2]])
    r = Renderer(faces, backend="auto")
    assert r.backend == "software" and r.gl_platform is None
    assert os.environ["PYOPENGL_PLATFORM"] == "no-such-platform"
    assert any("no-such-platform" in s for s in renderer_mod.gl_failure_reasons())
    with pytest.raises(RuntimeError, match="no GL context"):
        Renderer(faces, backend="pyrender")


_TRAP_SCRIPT = r"""
import numpy as np, trimesh
from utils.renderer import Renderer
m = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
r = Renderer(m.faces, backend="pyrender")
img = np.zeros((32, 32, 3), np.uint8)
out = r.render(np.asarray(m.vertices) + [0, 0, 3.0], 60.0, (16.0, 16.0), img)
assert r.backend == "pyrender" and (out != img).any()
# model code after a GL context exists: these pull in triton
import torch, torchvision, timm, torch._dynamo
net = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
with torch.no_grad():
    feat = net(torch.zeros(1, 3, 64, 64))
tv = torchvision.models.resnet18(weights=None)
out2 = r.render(np.asarray(m.vertices) + [0, 0, 3.0], 60.0, (16.0, 16.0), img)
assert np.array_equal(out, out2)
r.close()
print("TRAP-OK", tuple(feat.shape))
"""


def test_gl_context_then_triton_imports_do_not_crash():
    platform = _gl_or_skip()
    env = dict(os.environ, PYOPENGL_PLATFORM=platform)
    proc = subprocess.run([sys.executable, "-c", _TRAP_SCRIPT], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "TRAP-OK (1, 512)" in proc.stdout


def test_save_obj_roundtrip(tmp_path):
    verts, faces = _sphere([0.1, 0.2, 0.3], 0.7, subdivisions=2)
    path = save_obj(verts, faces, tmp_path / "a" / "b" / "mesh.obj")
    assert path.is_file()
    loaded = trimesh.load(str(path), process=False, force="mesh")
    assert len(loaded.vertices) == len(verts)
    assert len(loaded.faces) == len(faces)
    np.testing.assert_allclose(np.asarray(loaded.vertices), verts, atol=1e-6)


def test_make_grid():
    a = np.zeros((10, 4, 3), np.uint8)
    b = np.full((10, 6, 3), 255, np.uint8)
    g = make_grid([a, b, a])
    assert g.shape == (10, 14, 3)
    assert (g[:, :4] == 0).all() and (g[:, 4:10] == 255).all() and (g[:, 10:] == 0).all()
    with pytest.raises(ValueError, match=r"images\[1\]"):
        make_grid([a, np.zeros((9, 4, 3), np.uint8)])
    with pytest.raises(ValueError):
        make_grid([])


def test_draw_keypoints():
    image = np.zeros((40, 50, 3), np.uint8)
    kp = np.array([[10.0, 20.0, 1.0], [40.0, 5.0, 0.0]])
    out = draw_keypoints(image, kp, color=(0, 255, 0), radius=2)
    assert out[20, 10, 1] == 255 and out[20, 10, 0] == 0
    assert (out[5, 40] == 0).all(), "zero-confidence keypoint was drawn"
    assert (out[0, 0] == 0).all() and (image == 0).all()
    out2 = draw_keypoints(image, kp[:, :2], color=(0, 0, 255), radius=2)
    assert out2[5, 40, 2] == 255


def test_egl_renders_on_the_gpu(cuda_device, monkeypatch):
    """On a GPU machine the automatic choice is EGL (hardware offscreen), and it draws."""
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    assert select_gl_platform(refresh=True) == "egl", renderer_mod.gl_failure_reasons()
    centre = np.array([0.0, 0.0, 4.0])
    verts, faces = _sphere(centre, 0.5)
    r = _make(faces, "pyrender")
    mask = _mask(r, verts, (FX, FY), (CX, CY), H, W)
    assert mask[int(round(CY)), int(round(CX))] and not mask[0, 0]
    r.close()


def test_raster_covers_edge_pixels_and_culls_faces_crossing_the_camera_plane():
    """A triangle projecting to (10, 10), (20, 10), (10, 20) covers exactly the 66 pixel
    centres with c, r >= 10 and c + r <= 30 (its three edges included); a face with one corner
    behind the camera is culled; faces must index given vertices (an index == V is refused)."""
    from utils.raster import rasterize
    tri = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 2.0, 1.0]])
    face_id = rasterize(tri, [[0, 1, 2]], 10.0, (0.0, 0.0), 32, 32)[0]
    r, c = np.mgrid[:32, :32]
    np.testing.assert_array_equal(face_id >= 0, (c >= 10) & (r >= 10) & (c + r <= 30))
    assert (face_id >= 0).sum() == 66
    crossing = tri.copy()
    crossing[2, 2] = -1.0
    assert (rasterize(crossing, [[0, 1, 2]], 10.0, (0.0, 0.0), 32, 32)[0] < 0).all()
    with pytest.raises(ValueError, match="faces index vertex 3"):
        rasterize(tri, [[0, 1, 3]], 10.0, (0.0, 0.0), 32, 32)


def test_render_and_helpers_refuse_out_of_contract_arguments():
    """The documented ranges: alpha and colour in 0..1 (a 0..255 colour is refused, not
    clipped), make_grid of one dtype, draw_keypoints' default radius ~1% of the smaller side."""
    verts, faces = _square(10, 40, 10, 30, 3.0)
    r = Renderer(faces, backend="software")
    image = np.zeros((H, W, 3), np.uint8)
    for kw in (dict(alpha=1.5), dict(alpha=-0.1), dict(color=(255, 0, 0))):
        with pytest.raises(ValueError, match="alpha|color"):
            r.render(verts, (FX, FY), (CX, CY), image, **kw)
    with pytest.raises(ValueError, match="dtype"):
        make_grid([image, image.astype(np.float32)])
    tall = np.zeros((100, 400, 3), np.uint8)
    out = draw_keypoints(tall, np.array([[200.0, 50.0]]), color=(255, 255, 255))
    assert out[50, 199:202, 0].tolist() == [255, 255, 255] and out[50, 203, 0] == 0


def test_visualizer_names_colours_and_viz_max(tmp_path):
    """--viz: the input panel keeps the image's colours (a BGR file read back is unchanged);
    two images with one stem get two sets of files; --viz_max N renders N samples over all
    batches, 0 the first of each batch."""
    import argparse
    import types

    import cv2
    import torch

    from train.visualize import Visualizer
    verts, faces = _square(10, 40, 10, 30, 3.0)
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[..., 0] = 200                                        # blue in OpenCV's BGR
    data = types.SimpleNamespace(dataset="h36m-p2", read_image=lambda i: bgr.copy())
    camera = types.SimpleNamespace(kind="cliff",
                                   full_translation=lambda cam, one: torch.zeros(1, 3))
    pred = {"vertices": torch.as_tensor(verts).expand(2, -1, -1), "cam": torch.zeros(2, 3)}
    res = types.SimpleNamespace(before=pred, after=pred)

    def run(viz_max, batches):
        out = tmp_path / f"viz{viz_max}"
        o = argparse.Namespace(viz_dir=out, viz_max=viz_max, save_obj=False,
                               use_openpose2d=False, viz_backend="software")
        viz = Visualizer(o, data, types.SimpleNamespace(faces=faces), camera)
        for names in batches:
            viz({"sample_index": torch.arange(2), "imgname": names,
                 "focal_length": torch.full((2,), FX)}, res)
        return out, sorted(p.name for p in out.glob("*_input.jpg"))

    out, got = run(-1, [["a/img.jpg", "b/img.jpg"]])
    assert len(got) == 2 and "img_input.jpg" in got
    back = cv2.imread(str(out / "img_input.jpg")).astype(int)
    assert np.abs(back - bgr).max() <= 3
    assert len(run(3, [["c0.jpg", "c1.jpg"], ["c2.jpg", "c3.jpg"]])[1]) == 3
    assert run(0, [["d0.jpg", "d1.jpg"], ["d2.jpg", "d3.jpg"]])[1] == ["d0_input.jpg",
                                                                       "d2_input.jpg"]
