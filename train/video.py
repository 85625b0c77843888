"""``demo.py --video clip.mp4 --openpose_dir DIR``: the demo on a video, frame by frame.

Frames are read with OpenCV (:func:`datasets.inputs.read_video`), every ``--every``-th from
frame 0. Frame ``i`` is named ``<video stem>_<i:012d>``, the name OpenPose gives its keypoint
file (``<video stem>_<i:012d>_keypoints.json`` in ``--openpose_dir``; with ``--bbox_file`` the
entry of that name, ``.jpg`` optional). Each frame runs like one image of the demo
(:class:`train.demo.DemoRun`: boxes, TTO on the keypoints, the better of the predictions
before / after TTO kept), and ``--out_dir`` gets

* ``<frame name>_person<i>.npz`` (and ``.obj`` with ``--save_obj``) per person and frame, with
  the keys of the image demo;
* ``<video stem>_overlay.mp4``: one frame per processed frame (``fps / --every``), the overlay
  panels of the image demo (before | after TTO; one panel without keypoints); a frame that
  could not be processed is written unchanged, so the video keeps its timing;
* ``summary.json``: as for images, plus ``video``, ``fps``, ``every`` and ``overlay_video``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from config import DataPaths, require
from datasets.inputs import DemoInputError, read_video, video_frame_name

__all__ = ["run_video", "OverlayVideo"]


class OverlayVideo:
    """An mp4 written frame by frame (RGB frames of one size; opened at the first frame)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.size, self.frames = path, fps, None, None, 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self.writer is None:
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, self.size)
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write an mp4 video here")
        if (w, h) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def run_video(o, log=None) -> dict:
    """The demo on ``o.video`` (module docstring). Returns the summary dict.

    Raises :class:`config.MissingFileError` (video, checkpoint, SMPL files, keypoint folder)
    and ``SystemExit`` (a file OpenCV cannot read as a video) before any work.
    """
    from tqdm import tqdm
    from train.demo import DemoRun, check_inputs
    from utils.renderer import make_grid
    log = log or tqdm.write
    paths = DataPaths.from_options(o)
    if o.synthetic:
        from datasets.synthetic import build_world
        build_world(paths.root)
    video = require(o.video, "video (--video)")
    o, _, source = check_inputs(o, paths)
    try:
        fps, frames = read_video(video, o.every)
    except DemoInputError as e:
        raise SystemExit(f"error: {e}") from None
    run = DemoRun(o, paths, 0, source, log)
    out = OverlayVideo(run.out_dir / f"{video.stem}_overlay.mp4", fps / o.every)
    n_panels = 2 if run.tto else 1
    try:
        for i, rgb in tqdm(frames, desc="video", unit="frame", disable=None):
            if o.max_images and run.summary.images >= o.max_images:
                break
            run.summary.images += 1
            img = run.load(Path(video_frame_name(video, i) + ".jpg"), rgb)
            shown: list[np.ndarray] = []
            if img is not None:
                run.flush([img], overlay_sink=lambda _img, overlay: shown.append(overlay))
            out.write(shown[0] if shown else make_grid([rgb] * n_panels))
    finally:
        out.close()
        result = run.finish(video=str(video), fps=fps, every=o.every,
                            overlay_video=out.path.name if out.frames else None)
    if out.frames:
        log(f"[demo] wrote {out.frames} frame(s) to {out.path}")
    return result
