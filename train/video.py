"""``demo.py --video clip.mp4 --openpose_dir DIR``: the demo on a video, frame by frame.

Every ``--every``-th frame, named as OpenPose names it (:func:`datasets.inputs.read_video`; with
``--bbox_file`` the entry of that name, ``.jpg`` optional), runs like one image of the demo
(:class:`train.demo.DemoRun`). ``<video stem>_overlay.mp4`` gets each frame's overlay panels at
``fps / --every`` (a frame that could not be processed: unchanged, so the video keeps its
timing); ``summary.json`` adds ``video``, ``fps``, ``every``, ``overlay_video``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datasets.image_files import opencv_can_open

__all__ = ["run_video", "OverlayVideo"]


MAX_SIDE, MIN_SIDE = 4096, 16   # frame sides mp4v writes (it refuses widths >= 8192, 2x1)


class OverlayVideo:
    """An mp4 written frame by frame (RGB; opened at the first frame, whose size, scaled to
    sides within [MIN_SIDE, MAX_SIDE] where needed, the rest get)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.frames = path, fps, None, 0
        if not opencv_can_open(path):   # (checked before any work)
            raise SystemExit(f"error: {path}: OpenCV cannot write a video whose path is not "
                             f"valid UTF-8. Pass another --out_dir")

    def write(self, rgb: np.ndarray) -> None:
        if self.writer is None:
            w, h = rgb.shape[1::-1]
            f = max(min(1.0, MAX_SIDE / max(w, h)), MIN_SIDE / min(w, h))
            self.size = (max(2, round(w * f)), max(2, round(h * f)))
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, self.size)
            if not self.writer.isOpened():
                raise SystemExit(f"error: {self.path}: OpenCV cannot write a {self.size[0]}x"
                                 f"{self.size[1]} mp4 video here. Run on the frames as "
                                 f"--img_dir instead")
        if rgb.shape[1::-1] != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def run_video(o, log=None) -> dict:
    """The demo on ``o.video`` (module docstring). Returns the summary dict; fails before any
    work as :class:`train.demo.DemoRun` does."""
    from tqdm import tqdm
    from train.demo import DemoRun
    from utils.renderer import make_grid
    run = DemoRun(o, log)
    (fps, frames), video, every = run.inputs, Path(o.video), run.o.every
    out = OverlayVideo(run.out_dir / f"{video.stem}_overlay.mp4", fps / every)
    try:
        for name, rgb in tqdm(frames, desc="video", unit="frame", disable=None):
            if run.o.max_images and run.summary.images >= run.o.max_images:
                break
            run.summary.images += 1
            img, shown = run.load(Path(name + ".jpg"), rgb), []
            if img is not None:
                run.flush([img], overlay_sink=shown.append)
            out.write(shown[0] if shown else make_grid([rgb] * (2 if run.tto else 1)))
    finally:
        out.close()
        result = run.finish(video=str(video), fps=fps, every=every,
                            overlay_video=out.path.name if out.frames else None)
    if out.frames:
        run.log(f"[demo] wrote {out.frames} frame(s) to {out.path}")
    return result
