"""demo.py / train/demo.py: mesh recovery with TTO on a folder of images.

Inputs are images of the synthetic world's H36M-p2 test set with OpenPose JSON files written from
the npz ``openpose`` keypoints; the networks are random-weight resnet18 CLIFF networks saved as
``{'model', 'model_aux'}``.

Independent facts used:

* the synthetic world's annotations are exact: ``SMPL(pose, shape).joints + t = S`` for one
  translation t per sample, and ``part`` is the pinhole projection of ``S`` with the image
  diagonal as focal length and the image centre as principal point. Random weights cannot
  predict those bodies, so the geometry (bbox -> crop -> camera -> full-image projection and
  overlay) is tested honestly by feeding the GT body through the demo's own camera and
  rendering path: its 2D joints must land on ``part`` and its overlay must cover the joints;
* the overlay written by a run is the rendering of the meshes saved with it (mesh pixels
  change, the rest of the image does not);
* TTO takes gradient steps on a 2D keypoint loss: the 2D error to the keypoints goes down;
* a person shifted by d pixels in the keypoint file gets a box shifted by d;
* the saved axis-angle pose, put through SMPL, gives the saved 3D joints; the saved 2D joints
  are the pinhole projection of the saved 3D joints plus the camera translation;
* the box rule: centre = box centre, scale = max(w * 4/3, h) / 200 * 1.2.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import DataPaths, MissingFileError
from utils.errors import UserError
from conftest import TEST_DEVICE  # noqa: E402
from datasets import inputs as demo_inputs
from train import demo
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]
DATASET = "h36m-p2"
SHIFT = 15.0          # pixels: the second person of the multi-person file

def _mask(renderer, vertices, focal_length, camera_center, height, width):
    """[H, W] bool: the pixels the renderer covers with the mesh."""
    from utils.renderer import DEFAULT_COLOR
    return renderer._render_layers(vertices, focal_length, camera_center, height, width,
                                   DEFAULT_COLOR)[1]



def _npz(root):
    with np.load(DataPaths(Path(root)).dataset_npz(DATASET, is_train=False)) as z:
        return {k: z[k] for k in z.files}


def _write_kp(path, people):
    with open(path, "w") as f:
        json.dump({"version": 1.3, "people": [
            {"person_id": [-1], "pose_keypoints_2d": np.asarray(p, float).reshape(-1).tolist()}
            for p in people]}, f)


@pytest.fixture(scope="module")
def ckpt(synthetic_root, tmp_path_factory, device):   # device: skip where it is missing
    from models import build_model
    mean = DataPaths(Path(synthetic_root)).smpl_mean_params()
    torch.manual_seed(0)
    main = build_model("cliff", "resnet18", "main", "rect", mean)
    aux = build_model("cliff", "resnet18", "aux", "rect", mean)
    path = tmp_path_factory.mktemp("demo_ckpt") / "cliff_res18.pt"
    torch.save({"model": main.state_dict(), "model_aux": aux.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def inputs(synthetic_root, tmp_path_factory):
    """A folder with good and bad inputs, and the expected outcome of each image."""
    d = tmp_path_factory.mktemp("demo_in")
    img, kp = d / "images", d / "openpose"
    img.mkdir()
    kp.mkdir()
    z = _npz(synthetic_root)
    src = DataPaths(Path(synthetic_root)).image_folder(DATASET)
    for i, name in ((1, "b"), (2, "nokp"), (3, "empty")):
        shutil.copyfile(src / z["imgname"][i], img / f"{name}.jpg")
    op = z["openpose"]
    shifted = op[1].copy()
    shifted[:, 0] += SHIFT
    faint = op[1].copy()
    faint[:, 2] = 0.05                      # every keypoint below --kp_threshold 0.1
    _write_kp(kp / "b_keypoints.json", [op[1], shifted, faint])
    _write_kp(kp / "empty_keypoints.json", [])                           # no people
    (img / "broken.jpg").write_bytes(b"this is not a JPEG file" * 10)    # unreadable
    _write_kp(kp / "broken_keypoints.json", [op[2]])
    shutil.copyfile(img / "b.jpg", img / "badjson.jpg")
    (kp / "badjson_keypoints.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2')
    (img / "notes.txt").write_text("not an image: ignored")
    return {"img": img, "kp": kp, "npz": z, "src": src}


def _argv(root, ckpt, out, *extra):
    return ["--checkpoint", str(ckpt), "--data_root", str(root), "--backbone", "resnet18",
            "--device", TEST_DEVICE, "--render_backend", "software", "--out_dir", str(out),
            *map(str, extra)]


@pytest.fixture(scope="module")
def run(synthetic_root, ckpt, inputs, tmp_path_factory, device):   # device: skip if missing
    """One demo run with TTO (step 0 and 1 Adam step) over the folder of `inputs`.

    Only b.jpg (2 usable people) reaches the networks: TTO costs ~2-4 s per person here."""
    out = tmp_path_factory.mktemp("demo_out")
    o = demo.parse_demo(_argv(synthetic_root, ckpt, out, "--img_dir", inputs["img"],
                              "--openpose_dir", inputs["kp"], "--test_val_step", 1,
                              "--batch_size", 2, "--save_obj"))
    logs: list[str] = []
    summary = demo.run_demo(o, log=logs.append)
    return {"out": out, "summary": summary, "logs": logs}


def _load(out, name):
    with np.load(out / name) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------
def test_bad_inputs_reported_and_counted(run, inputs):
    s, logs = run["summary"], "\n".join(run["logs"])
    assert s["images"] == 5                              # notes.txt is not an image
    assert s["ignored"] == ["notes.txt"]                  # ... and summary.json says so
    assert "1 folder entries ignored (not image files)" in logs
    assert s["processed"] == 1 and s["people"] == 2       # b: 2 usable people of 3
    assert s["people_skipped"] == 1                       # b's faint person
    expected = {"no_keypoint_file": 1, "unreadable_image": 1, "no_people": 1,
                "bad_annotation": 1, "no_bbox": 0, "no_usable_people": 0, "error": 0}
    assert s["skipped"] == expected
    for name, reason in (("nokp.jpg", "no_keypoint_file"), ("broken.jpg", "unreadable_image"),
                         ("empty.jpg", "no_people"), ("badjson.jpg", "bad_annotation")):
        assert s["per_image"][name]["status"] == reason
        assert name in logs                               # reported while running
    assert "nokp_keypoints.json" in s["per_image"]["nokp.jpg"]["message"]
    assert "badjson_keypoints.json" in s["per_image"]["badjson.jpg"]["message"]
    assert "1 x no keypoint file" in logs and "Demo summary: 5 images, 1 processed" in logs
    assert json.loads((run["out"] / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert not list(run["out"].glob("nokp_*")) and not list(run["out"].glob("broken_*"))


def test_outputs_per_person(run, inputs, smpl_neutral):
    out = run["out"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["b_overlay.jpg", "b_person0.npz", "b_person0.obj",
                            "b_person1.npz", "b_person1.obj", "summary.json"])
    r = _load(out, "b_person1.npz")
    assert r["pose"].shape == (72,) and r["betas"].shape == (10,) and r["cam_t"].shape == (3,)
    assert r["joints_2d"].shape == (49, 2) and r["joints_3d"].shape == (49, 3)
    assert bool(r["tto"]) and int(r["tto_steps"]) == 2 and not bool(r["nonfinite"])
    # axis-angle pose through SMPL -> the saved 3D joints
    with torch.no_grad():
        so = smpl_neutral(betas=torch.tensor(r["betas"][None]),
                          body_pose=torch.tensor(r["pose"][None, 3:]),
                          global_orient=torch.tensor(r["pose"][None, :3]))
    np.testing.assert_allclose(so.joints[0].numpy(), r["joints_3d"], atol=2e-4)
    # 2D joints = pinhole projection (image diagonal focal, image centre) of joints + cam_t
    h, w = cv2.imread(str(inputs["img"] / "b.jpg")).shape[:2]
    assert float(r["focal_length"]) == pytest.approx(np.hypot(h, w), rel=1e-6)
    np.testing.assert_allclose(r["camera_center"], [w / 2, h / 2])
    p = r["joints_3d"] + r["cam_t"]
    np.testing.assert_allclose(r["joints_2d"], p[:, :2] / p[:, 2:] * np.hypot(h, w)
                               + [w / 2, h / 2], atol=1e-2)
    # the .obj is the saved mesh in camera coordinates
    import trimesh
    mesh = trimesh.load(out / "b_person1.obj", process=False)
    np.testing.assert_allclose(mesh.vertices, r["vertices"] + r["cam_t"], atol=1e-5)


def test_multi_person_file_gives_one_result_per_person(run, inputs):
    r0, r1 = _load(run["out"], "b_person0.npz"), _load(run["out"], "b_person1.npz")
    op = inputs["npz"]["openpose"][1]
    conf = op[:, 2] > 0.1
    np.testing.assert_allclose(r0["keypoints"][conf], op[conf], atol=1e-5)
    np.testing.assert_allclose(r1["keypoints"][conf, 0], op[conf, 0] + SHIFT, atol=1e-4)
    np.testing.assert_allclose(r1["bbox_center"] - r0["bbox_center"], [SHIFT, 0], atol=1e-3)
    assert float(r1["bbox_scale"]) == pytest.approx(float(r0["bbox_scale"]), rel=1e-6)
    assert run["summary"]["per_image"]["b.jpg"]["people"] == 2


def test_tto_lowers_2d_error(run):
    for name in ("b_person0.npz", "b_person1.npz"):
        r = _load(run["out"], name)
        # the stored error is the confidence-weighted pixel distance of the OpenPose slots
        kp = r["keypoints"]
        for tag in ("", "_before"):
            d = np.linalg.norm(r["joints_2d" + tag][:25] - kp[:, :2], axis=1)
            assert float(r["kp_error_px" + tag]) == pytest.approx(
                float((kp[:, 2] * d).sum() / kp[:, 2].sum()), rel=1e-4)
        assert float(r["kp_error_px"]) < float(r["kp_error_px_before"]), name
        assert not np.allclose(r["pose"], r["pose_before"])


def test_overlay_is_the_rendering_of_the_saved_meshes(run, inputs, smpl_neutral):
    from utils.renderer import Renderer
    faces = np.asarray(smpl_neutral.faces, np.int64)
    img = cv2.imread(str(inputs["img"] / "b.jpg"))[..., ::-1].astype(np.float32)
    h, w = img.shape[:2]
    ov = cv2.imread(str(run["out"] / "b_overlay.jpg"))[..., ::-1].astype(np.float32)
    assert ov.shape == (h, 2 * w, 3)                      # before | after
    rec = [_load(run["out"], f"b_person{i}.npz") for i in (0, 1)]
    r = Renderer(faces, backend="software")
    for panel, tag in ((ov[:, :w], "_before"), (ov[:, w:], "")):
        mask = np.zeros((h, w), bool)
        for p in rec:
            mask |= _mask(r, p["vertices" + tag] + p["cam_t" + tag],
                                  float(p["focal_length"]), p["camera_center"], h, w)
        diff = np.abs(panel - img).mean(-1)
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert inner.sum() > 100
        assert np.median(diff[outer]) < 4                 # JPEG noise only
        assert np.mean(diff[inner] > 10) > 0.8            # the mesh is drawn there


def test_gt_body_through_the_demo_camera_lands_on_the_person(synthetic_root, inputs):
    """Geometry: the GT body, expressed as a crop camera of the demo's own bbox, is projected
    and drawn by the demo's path onto the GT 2D joints of the image."""
    from utils.camera import Camera
    from utils.geometry import batch_rodrigues
    from utils.renderer import Renderer
    from models.smpl import build_smpl
    z = inputs["npz"]
    camera = Camera("cliff", 256, 192)
    smpl = {g: build_smpl(DataPaths(Path(synthetic_root)), g) for g in ("male", "female")}
    renderer = Renderer(np.asarray(smpl["male"].faces, np.int64), backend="software")
    for i in range(2):
        gender = {"m": "male", "f": "female"}[str(z["gender"][i]).strip()]
        rgb = cv2.imread(str(inputs["src"] / z["imgname"][i]))[..., ::-1]
        h, w = rgb.shape[:2]
        f = float(np.hypot(h, w))
        center, scale, n, kp = demo_inputs.bbox_from_openpose(z["openpose"][i], 0.1)
        batch = demo.collate([demo.prepare_person(np.ascontiguousarray(rgb), center, scale, f,
                                                  "rect", kp)])
        pose = torch.tensor(z["pose"][i:i + 1], dtype=torch.float32)
        betas = torch.tensor(z["shape"][i:i + 1, :10], dtype=torch.float32)
        rotmat = batch_rodrigues(pose.reshape(-1, 3)).reshape(1, 24, 3, 3)
        with torch.no_grad():
            so = smpl[gender](betas=betas, body_pose=rotmat[:, 1:],
                              global_orient=rotmat[:, :1], pose2rot=False)
        offsets = z["S"][i, :, :3] - so.joints[0, 25:].numpy()
        assert offsets.std(0).max() < 1e-3                 # one translation per sample
        t = offsets.mean(0)
        # the crop camera whose CLIFF full-image translation is t (inverse of cam_crop2full)
        bs = 2 * f / t[2]
        cam = torch.tensor([[bs / (200 * scale), t[0] - 2 * (center[0] - w / 2) / bs,
                             t[1] - 2 * (center[1] - h / 2) / bs]], dtype=torch.float32)
        gt = {"rotmat": rotmat, "betas": betas, "cam": cam, "vertices": so.vertices,
              "joints": so.joints}
        pred = demo.Prediction(gt, gt, torch.zeros(1, dtype=torch.long),
                               torch.zeros(1, dtype=torch.bool), False)
        rec = demo.person_record(pred, batch, camera)[0]
        np.testing.assert_allclose(rec["cam_t"], t, rtol=1e-4, atol=1e-4)
        part = z["part"][i]
        vis = part[:, 2] > 0
        err = np.linalg.norm(rec["joints_2d"][25:][vis] - part[vis, :2], axis=1)
        assert err.max() < 0.05, err                      # the dataset's own projection
        # the overlay drawn by the demo covers the GT joints
        overlay = demo.render_people(renderer, np.ascontiguousarray(rgb), [rec])
        mask = _mask(renderer, rec["vertices"] + rec["cam_t"], float(rec["focal_length"]),
                                    rec["camera_center"], h, w)
        changed = np.abs(overlay.astype(int) - rgb.astype(int)).sum(-1) > 0
        assert (changed & ~mask).sum() == 0 and changed.sum() > 0.9 * mask.sum()
        xy = np.round(part[vis, :2]).astype(int)
        inside = [(0 <= x < w and 0 <= y < h and mask[y, x]) for x, y in xy]
        assert np.mean(inside) >= 0.9, np.mean(inside)


def test_prepare_person_keypoints_and_bbox_info_by_hand():
    """OpenPose keypoints (with their confidences) go into the crop by x' = k (x - c) + crop/2,
    k = crop_h / (200 s); bbox_info is CLIFF's formula of a non-square image."""
    rgb = np.zeros((60, 80, 3), np.uint8)                        # H 60, W 80
    op = np.zeros((25, 3))
    op[[0, 4, 11]] = [[40, 25, 0.9], [50, 10, 0.3], [30, 45, 0.6]]
    p = demo.prepare_person(rgb, np.array([40.0, 25.0]), 0.5, 100.0, "rect", openpose=op)
    k = 256 / (200 * 0.5)
    want = np.zeros((49, 3))
    want[:25, :2] = k * (op[:, :2] - [40, 25]) + [96, 128]
    want[:25, 2] = op[:, 2]
    np.testing.assert_allclose(p["keypoints"].numpy(), want, atol=1e-4)
    np.testing.assert_allclose(p["bbox_info"].numpy(),
                               [(40 - 40) / 100 * 2.8, (25 - 30) / 100 * 2.8,
                                (200 * 0.5 - 0.24 * 100) / (0.06 * 100)], rtol=1e-6)
    assert (float(p["img_h"]), float(p["img_w"])) == (60.0, 80.0)



@pytest.mark.parametrize("kind", ["cliff", "hmr"])
def test_image_camera_reproduces_the_network_projection(kind):
    """The per-person full-image camera, mapped into the crop, is the training projection."""
    from utils.camera import Camera
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    people = [demo.prepare_person(rgb, c, s, 200.0, "rect")
              for c, s in (([70.0, 50.0], 0.4), ([100.0, 70.0], 0.3))]
    batch = demo.collate(people)
    camera = Camera(kind, 256, 192)
    joints = torch.tensor(rng.normal(0, 0.3, (2, 49, 3)), dtype=torch.float32)
    cam = torch.tensor([[0.9, 0.05, -0.1], [1.1, -0.1, 0.2]], dtype=torch.float32)
    t, f, c = demo.image_camera(camera, cam, batch)
    p = (joints + t[:, None]).numpy()
    full = p[..., :2] / p[..., 2:] * f.numpy()[:, None, None] + c.numpy()[:, None]
    crop = np.einsum("bij,bnj->bni", batch["crop_trans"][:, :, :2].numpy(), full) \
        + batch["crop_trans"][:, None, :, 2].numpy()
    norm = 2 * crop / np.array([192, 256]) - 1
    np.testing.assert_allclose(norm, camera.project(joints, cam, batch).numpy(), atol=1e-4)


def test_bbox_entries_are_lists_of_four_finite_numbers():
    """A --bbox_file entry, looked up by file name then stem: a list of [x, y, w, h] boxes, or one
    box; anything else is a DemoInputError naming the entry (that image is skipped)."""
    entries = {"a.jpg": [[1, 2, 3, 4], [5, 6, 7, 8.5]], "b": [1, 2, 3, 4], "c.png": [],
               "s": "1 2 3 4", "ragged": [[1, 2, 3, 4], [1, 2]], "three": [1, 2, 3],
               "nan": [[1, 2, float("nan"), 4]], "bool": [[True, False, True, True]],
               "nested": [[[1, 2, 3, 4]]]}
    got = demo_inputs.bboxes_for(entries, Path("x/a.jpg"))
    np.testing.assert_array_equal(np.stack(got), [[1, 2, 3, 4], [5, 6, 7, 8.5]])
    np.testing.assert_array_equal(np.stack(demo_inputs.bboxes_for(entries, Path("b.jpg"))),
                                  [[1, 2, 3, 4]])
    assert demo_inputs.bboxes_for(entries, Path("c.png")) == []
    assert demo_inputs.bboxes_for(entries, Path("none.jpg")) is None
    for key in ("s", "ragged", "three", "nan", "bool", "nested"):
        with pytest.raises(demo_inputs.DemoInputError, match=f"bbox entry '{key}': expected a "
                                                             f"list of \\[x, y, w, h\\] boxes"):
            demo_inputs.bboxes_for(entries, Path(f"{key}.jpg"))


def test_bbox_file_mode_cli(synthetic_root, ckpt, inputs, tmp_path):
    """The entry script: boxes from a bbox file, one forward pass, no TTO."""
    img = tmp_path / "img"
    img.mkdir()
    shutil.copyfile(inputs["src"] / inputs["npz"]["imgname"][0], img / "a.jpg")
    for name in ("b.jpg", "nokp.jpg"):
        shutil.copyfile(inputs["img"] / name, img / name)
    # b: one good box, one without area, one outside the image; the file starts with a BOM
    boxes = {"a.jpg": [[30, 10, 60, 100]], "b": [[20, 5, 50, 110], [0, 0, 0, 5],
                                                 [5000, 5000, 50, 50]]}
    (tmp_path / "boxes.json").write_text("\ufeff" + json.dumps(boxes), encoding="utf-8")
    out = tmp_path / "out"
    proc = forkrun.run([REPO / "demo.py", *_argv(synthetic_root, ckpt, out, "--img_dir", img,
                                                 "--bbox_file", tmp_path / "boxes.json")],
                       cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Demo summary: 3 images, 2 processed (2 people), 1 skipped" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped"]["no_bbox"] == 1 and s["people_skipped"] == 2 and not s["tto"]
    assert "lies outside the" in proc.stdout + proc.stderr
    r = _load(out, "a_person0.npz")
    assert not bool(r["tto"]) and int(r["tto_steps"]) == 0 and np.isnan(r["kp_error_px"])
    np.testing.assert_allclose(r["pose"], r["pose_before"])
    np.testing.assert_allclose(r["bbox_center"], [60, 60])
    assert float(r["bbox_scale"]) == pytest.approx(max(60 * 4 / 3, 100) / 200 * 1.2)
    h, w = cv2.imread(str(img / "a.jpg")).shape[:2]
    assert cv2.imread(str(out / "a_overlay.jpg")).shape == (h, w, 3)   # one panel
    assert (out / "b_person0.npz").exists() and not (out / "b_person1.npz").exists()


# ---------------------------------------------------------------------------------------------
# errors before any work
@pytest.fixture
def no_work(monkeypatch):
    import train.evaluation

    def fail(*a, **k):
        raise AssertionError("networks were built before the inputs were checked")
    monkeypatch.setattr(train.evaluation, "build_eval_networks", fail)


def test_missing_files_fail_before_any_work(synthetic_root, ckpt, inputs, tmp_path, no_work):
    out = tmp_path / "out"
    base = ["--img_dir", inputs["img"], "--openpose_dir", inputs["kp"]]
    o = demo.parse_demo(_argv(synthetic_root, tmp_path / "nope.pt", out, *base))
    with pytest.raises(MissingFileError, match="nope.pt"):
        demo.run_demo(o)
    with pytest.raises(SystemExit, match="Meta-HMR checkpoint not found.*nope.pt"):
        demo.main(o)
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    o = demo.parse_demo(_argv(empty_root, ckpt, out, *base))
    with pytest.raises(MissingFileError, match="SMPL neutral body model.*SMPL_NEUTRAL.pkl"):
        demo.run_demo(o)
    o = demo.parse_demo(_argv(synthetic_root, ckpt, out, "--img_dir", tmp_path / "noimg",
                              "--openpose_dir", inputs["kp"]))
    with pytest.raises(MissingFileError, match="noimg"):
        demo.run_demo(o)
    o = demo.parse_demo(_argv(synthetic_root, ckpt, out, "--img_dir", inputs["img"],
                              "--bbox_file", tmp_path / "nobox.json"))
    with pytest.raises(MissingFileError, match="nobox.json"):
        demo.run_demo(o)
    (tmp_path / "txt").mkdir()
    o = demo.parse_demo(_argv(synthetic_root, ckpt, out, "--img_dir", tmp_path / "txt",
                              "--openpose_dir", inputs["kp"]))
    with pytest.raises(SystemExit, match="no image"):
        demo.run_demo(o)
    (tmp_path / "afile").write_text("")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):   # --out_dir at or under a file
        o = demo.parse_demo(_argv(synthetic_root, ckpt, bad, *base))
        with pytest.raises(SystemExit, match="afile is a file, not a folder"):
            demo.run_demo(o)
    dup = tmp_path / "dup"                     # a.jpg and a.png: one keypoint file, one output
    dup.mkdir()
    for name in ("a.jpg", "a.png"):
        shutil.copyfile(inputs["img"] / "b.jpg", dup / name)
    o = demo.parse_demo(_argv(synthetic_root, ckpt, out, "--img_dir", dup,
                              "--openpose_dir", inputs["kp"]))
    with pytest.raises(SystemExit, match="a.jpg, a.png in .* share a name"):
        demo.run_demo(o)
    with pytest.raises(SystemExit, match="--kp_threshold must be >= 0"):
        demo.parse_demo(_argv(synthetic_root, ckpt, out, *base, "--kp_threshold", -1))
    assert not out.exists()


def test_options():
    o = demo.parse_demo(["--checkpoint", "c.pt", "--img_dir", "i", "--openpose_dir", "k"])
    assert (o.bbox_type, o.test_val_step, o.inner_lr, o.after_innerlr, o.tto_mode) == \
        ("rect", 14, 1e-5, 1e-5, "sample")
    assert o.use_openpose2d and o.focal_length is None
    from train.tto import TTOConfig
    cfg = TTOConfig.from_options(o)
    assert (cfg.weights.openpose, cfg.weights.gt) == (1.0, 0.0)
    for bad in (["--img_dir", "i"],                                          # no keypoints/bbox
                ["--img_dir", "i", "--openpose_dir", "k", "--amp", "bf16"],  # unused option
                ["--from_dataset", "3dpw", "--img_dir", "i"],
                ["--img_dir", "i", "--openpose_dir", "k", "--batch_size", "0"],
                ["--img_dir", "i", "--openpose_dir", "k", "--min_keypoints", "1"]):
        with pytest.raises((SystemExit, UserError)):   # both reach the user as one line
            demo.parse_demo(["--checkpoint", "c.pt", *bad])
    assert demo.parse_demo(["--checkpoint", "c.pt", "--img_dir", "i", "--openpose_dir", "k",
                            "--min_keypoints", "2"]).min_keypoints == 2   # two points: a box
    with pytest.raises(SystemExit):   # argparse: the two sources exclude each other
        demo.demo_parser().parse_args(["--checkpoint", "c", "--img_dir", "i",
                                       "--openpose_dir", "k", "--bbox_file", "b"])


def test_openpose_json_parsing(tmp_path):
    p = tmp_path / "k.json"
    kp = np.arange(75, dtype=float).reshape(25, 3)
    _write_kp(p, [kp, kp + 1])
    people = demo_inputs.read_openpose_json(p)
    assert len(people) == 2 and np.array_equal(people[1], kp + 1)
    for text in ("[1, 2]", '{"people": 3}', '{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}',
                 '{"people": [{"face": []}]}', "not json"):
        p.write_text(text)
        with pytest.raises(demo_inputs.DemoInputError, match="k.json"):
            demo_inputs.read_openpose_json(p)
    center, scale, n, kp0 = demo_inputs.bbox_from_openpose(
        np.array([[10, 20, 0.9], [30, 80, 0.5], [500, 500, 0.05]] + [[0, 0, 0]] * 22), 0.1)
    assert n == 2 and kp0[2, 2] == 0
    np.testing.assert_allclose(center, [20, 50])
    assert scale == pytest.approx(max(20 * 4 / 3, 60) / 200 * 1.2)


def test_export_keeps_the_stored_pixels_of_an_exif_rotated_dataset_image(synthetic_root,
                                                                          tmp_path):
    """A dataset image with an EXIF orientation tag (COCO has some): its annotations are in the
    stored pixels (the dataset reader ignores the tag), while the demo reads photos upright. The
    exported image must show the demo those stored pixels, which the exported keypoints are
    in; an untagged image is copied byte for byte."""
    from PIL import Image
    from datasets.image_files import read_image_file
    paths = DataPaths(Path(synthetic_root))
    z = _npz(synthetic_root)
    rel = [Path(str(n)) for n in z["imgname"][:2]]
    img_root = tmp_path / "images"
    folder = paths.image_folder(DATASET).relative_to(paths.images_dir)
    for r in rel:
        (img_root / folder / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths.image_folder(DATASET) / r, img_root / folder / r)
    tagged = img_root / folder / rel[0]
    with Image.open(tagged) as im:
        stored = np.asarray(im.convert("RGB"))[:, :96]   # (not square: a turn shows)
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tagged, exif=exif.tobytes(), quality=95)
    h, w = stored.shape[:2]
    assert h != w and demo_inputs.read_image(tagged).shape[:2] == (w, h)   # shown turned
    img, kp = demo_inputs.export_dataset_inputs(DataPaths(Path(synthetic_root), img_root),
                                                DATASET, tmp_path / "out", max_images=2)
    (first,), (second,) = (sorted(img.glob(f"{r.stem}.*")) for r in rel)
    bgr, why = read_image_file(str(tagged))           # the pixels of the npz annotations
    assert why == "" and bgr.shape[:2] == (h, w)
    assert np.array_equal(demo_inputs.read_image(first), bgr[..., ::-1])
    assert second.read_bytes() == (img_root / folder / rel[1]).read_bytes()
    np.testing.assert_allclose(
        demo_inputs.read_openpose_json(kp / f"{rel[0].stem}_keypoints.json")[0], z["openpose"][0])


def test_export_dataset_inputs(synthetic_root, tmp_path):
    """--from_dataset: images copied, the npz's keypoints written in OpenPose format."""
    paths = DataPaths(Path(synthetic_root))
    z = _npz(synthetic_root)
    img, kp = demo_inputs.export_dataset_inputs(paths, DATASET, tmp_path / "a", max_images=3)
    names = [Path(str(n)).stem for n in z["imgname"][:3]]
    assert len(z["imgname"]) > 3          # the first max_images samples, not all
    assert sorted(p.stem for p in demo_inputs.list_images(img)) == sorted(names)
    people = demo_inputs.read_openpose_json(kp / f"{names[2]}_keypoints.json")
    assert len(people) == 1
    np.testing.assert_allclose(people[0], z["openpose"][2])
    src = paths.image_folder(DATASET) / z["imgname"][2]
    assert (img / f"{names[2]}.jpg").read_bytes() == src.read_bytes()
