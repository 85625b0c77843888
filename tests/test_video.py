"""demo.py on a video (issue #13 point 12) and its exit code when nothing could be processed
(point 10): a short clip made from the synthetic world's images, OpenPose files named as
OpenPose names them (``<video>_<frame:012d>_keypoints.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import DataPaths

DATASET = "h36m-p2"
N_FRAMES = 5


def _strict(text):
    def refuse(name):
        raise ValueError(name)
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def clip(synthetic_root, tmp_path_factory):
    """clip.mp4 of N_FRAMES world images (one size), keypoints for frames 0-3 (not 4), and a
    train.py-style checkpoint (ResNet-18, crop scale 0.25: fast)."""
    from models import build_model
    d = tmp_path_factory.mktemp("video")
    paths = DataPaths(Path(synthetic_root))
    with np.load(paths.dataset_npz(DATASET, is_train=False)) as z:
        names, op = z["imgname"], z["openpose"]
    k = len(names)   # the tiny test world has few images: the clip cycles through them
    frames = [cv2.imread(str(paths.image_folder(DATASET) / names[i % k]))
              for i in range(N_FRAMES)]
    h, w = frames[0].shape[:2]
    assert all(f.shape[:2] == (h, w) for f in frames)
    writer = cv2.VideoWriter(str(d / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    kp = d / "openpose"
    kp.mkdir()
    for i in range(N_FRAMES - 1):
        person = {"person_id": [-1], "pose_keypoints_2d": op[i % k].reshape(-1).tolist()}
        (kp / f"clip_{i:012d}_keypoints.json").write_text(json.dumps({"people": [person]}))
    mean = paths.smpl_mean_params()
    torch.manual_seed(0)
    ckpt = d / "r18.pt"
    torch.save({"model": build_model("cliff", "resnet18", "main", "rect", mean).state_dict(),
                "model_aux": build_model("cliff", "resnet18", "aux", "rect", mean).state_dict(),
                "options": {"model": "cliff", "backbone": "resnet18", "bbox_type": "rect",
                            "crop_scale": 0.25}}, ckpt)
    return {"dir": d, "kp": kp, "ckpt": ckpt, "frames": frames, "hw": (h, w)}


def _argv(root, clip, out, *extra):
    return ["--checkpoint", str(clip["ckpt"]), "--data_root", str(root), "--device", "cpu",
            "--render_backend", "software", "--out_dir", str(out), "--test_val_step", "0",
            *map(str, extra)]


def test_video_frame_by_frame(synthetic_root, clip, tmp_path):
    from train import demo
    out = tmp_path / "out"
    logs: list[str] = []
    o = demo.parse_demo(_argv(synthetic_root, clip, out, "--video", clip["dir"] / "clip.mp4",
                              "--openpose_dir", clip["kp"], "--every", 2))
    from train.video import run_video
    s = run_video(o, log=logs.append)
    # frames 0, 2, 4 read; 4 has no keypoint file
    assert (s["images"], s["processed"], s["skipped"]["no_keypoint_file"]) == (3, 2, 1)
    for i in (0, 2):
        with np.load(out / f"clip_{i:012d}_person0.npz") as z:
            assert z["vertices"].shape == (6890, 3) and str(z["status"]) in (
                "ok", "tto_worse", "tto_diverged")
    assert not (out / f"clip_{1:012d}_person0.npz").exists()
    assert any("clip_000000000000.jpg: 1 person; 2D keypoint error" in m for m in logs)
    summary = _strict((out / "summary.json").read_text())
    assert summary["every"] == 2 and summary["overlay_video"] == "clip_overlay.mp4"
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    h, w = clip["hw"]
    assert len(got) == 3 and got[0].shape == (h, 2 * w, 3)       # before | after panels
    # the frame without keypoints is the raw frame (twice), up to the codec's loss
    raw = np.concatenate([clip["frames"][4]] * 2, axis=1).astype(float)
    assert np.abs(got[2].astype(float) - raw).mean() < 8.0
    # a processed frame shows a mesh: it differs from its raw frame
    raw0 = np.concatenate([clip["frames"][0]] * 2, axis=1).astype(float)
    assert np.abs(got[0].astype(float) - raw0).mean() > np.abs(got[2].astype(float) - raw).mean()


def test_demo_exits_2_when_no_image_is_processed(synthetic_root, clip, tmp_path, capsys):
    from train.demo import main, parse_demo
    from utils.cli import run
    img = tmp_path / "img"
    img.mkdir()
    cv2.imwrite(str(img / "lonely.jpg"), clip["frames"][0])      # no keypoint file for it
    with pytest.raises(SystemExit) as e:
        run(lambda argv: main(parse_demo(argv)),
            _argv(synthetic_root, clip, tmp_path / "out", "--img_dir", img,
                  "--openpose_dir", clip["kp"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: none of the 1 image(s) could be processed")


@pytest.mark.parametrize("argv, pattern", [
    (["--video", "v.mp4"], "--video needs --openpose_dir"),
    (["--video", "v.mp4", "--img_dir", "i", "--openpose_dir", "k"], "--video replaces"),
    (["--video", "v.mp4", "--openpose_dir", "k", "--every", "0"], "--every must be >= 1"),
])
def test_video_option_errors(argv, pattern):
    from train.demo import parse_demo
    with pytest.raises(SystemExit, match=pattern):
        parse_demo(["--checkpoint", "c.pt", *argv])


def test_overlay_video_runs_at_fps_over_every_and_stops_at_max_images(synthetic_root, clip,
                                                                      tmp_path):
    """The 10 fps clip read every 4th frame plays at 2.5 fps; --max_images 1 reads frame 0."""
    from train import demo
    from train.video import run_video
    out = tmp_path / "out"
    o = demo.parse_demo(_argv(synthetic_root, clip, out, "--video", clip["dir"] / "clip.mp4",
                              "--openpose_dir", clip["kp"], "--every", 4, "--max_images", 1))
    s = run_video(o, log=lambda m: None)
    assert s["images"] == 1 and s["fps"] == pytest.approx(10.0)
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(2.5, rel=1e-3)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 1
