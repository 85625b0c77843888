"""What the demo says about its people and images: whether the adapted prediction is kept
(:func:`judge_tto`, the README's "Demo on your own images"), which predictions may be written at
all (:func:`judge_finite`), each image's line (:func:`image_line`) and the run's
:class:`Summary` (its counts go into ``summary.json``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SKIP_REASONS", "TTO_STATUS", "PREDICTION_KEYS", "FINITE_KEYS", "judge_tto",
           "judge_finite", "image_line", "Summary"]

# reason -> how the summary names it
SKIP_REASONS = {
    "no_keypoint_file": "no keypoint file", "no_bbox": "no bbox entry",
    "unreadable_image": "unreadable image",
    "bad_annotation": "keypoint / bbox entry could not be parsed", "no_people": "no people",
    "no_usable_people": "no person with enough confident keypoints / a valid box",
    "error": "failed while predicting or writing"}

TTO_STATUS = {
    "ok": "TTO lowered (or kept) the 2D keypoint error",
    "no_tto": "no keypoints, no TTO (one forward pass)",
    "tto_worse": "TTO raised the 2D keypoint error; the prediction before TTO is kept",
    "tto_diverged": "TTO diverged (non-finite or exploding values); the prediction before TTO "
                    "is kept"}
# keys of person_record that exist after TTO and at the loaded weights ("_before")
PREDICTION_KEYS = ("pose", "betas", "cam_crop", "cam_t", "joints_3d", "joints_2d", "vertices",
                   "kp_error_px")
# values of a written record that must be finite (the kept prediction and its camera)
FINITE_KEYS = PREDICTION_KEYS[:-1] + ("focal_length", "camera_center", "bbox_center",
                                      "bbox_scale")
MAX_ABS_BETA = 10.0      # SMPL shapes are a few units; 10 is no human body
MAX_BODY_EXTENT_M = 5.0  # body-frame vertices within 5 m of the root
MAX_DEPTH_M = 1000.0     # camera translation: in front of the camera, within 1 km


def judge_tto(rec: dict) -> tuple[dict, str]:
    """Keep the better of one person's predictions before and after TTO: the adapted one when
    it is sane (finite, a human body in front of the camera: the limits above), TTO never went
    non-finite and its 2D keypoint error is not above the one before TTO; else the one before
    (status ``tto_diverged`` or ``tto_worse``). Returns (record with ``kp_error_px_tto``,
    ``status``, ``tto_kept``; status)."""
    out, t = dict(rec), np.asarray(rec["cam_t"], np.float64)
    sane = (all(np.isfinite(np.asarray(rec[k], np.float64)).all() for k in PREDICTION_KEYS[:-1])
            and np.abs(rec["betas"]).max() <= MAX_ABS_BETA
            and np.abs(rec["vertices"]).max() <= MAX_BODY_EXTENT_M
            and 0.0 < t[2] <= MAX_DEPTH_M and np.abs(t[:2]).max() <= MAX_DEPTH_M)
    if not bool(rec["tto"]):
        status = "no_tto"
    elif bool(rec["nonfinite"]) or not sane:
        status = "tto_diverged"
    else:
        e0, e1 = float(rec["kp_error_px_before"]), float(rec["kp_error_px"])
        status = "tto_worse" if np.isfinite(e0) and not e1 <= e0 else "ok"
    if status in ("tto_worse", "tto_diverged"):
        out.update({k: rec[k + "_before"] for k in PREDICTION_KEYS})
    out["kp_error_px_tto"] = rec["kp_error_px"]   # the error TTO reached, kept or not
    out["status"], out["tto_kept"] = np.asarray(status), np.asarray(status == "ok")
    return out, status


def judge_finite(ids: list, records: list[dict]) -> tuple[list, list[str]]:
    """:func:`judge_tto` of each person's record (``ids``: its index in the image's input), kept
    only when its kept prediction is finite (:data:`FINITE_KEYS`). Returns the judged (id,
    record, status) triples and why each other person is dropped (never written)."""
    judged, dropped = [], []
    for pid, rec in zip(ids, records):
        out, status = judge_tto(rec)
        bad = [k for k in FINITE_KEYS if not np.isfinite(np.asarray(out[k], float)).all()]
        if bad:
            dropped.append(f"person {pid}: its prediction is not finite (NaN or inf in "
                           f"{', '.join(bad)}); not written")
        else:
            judged.append((pid, out, status))
    return judged, dropped


def image_line(name: str, status: dict) -> str:
    """``<image>: N people; 2D keypoint error before -> after TTO: a -> b px, ...`` plus a
    warning per person whose TTO was rejected (issue #13 point 10)."""
    people, before = status["people"], status["kp_error_px_before"]
    head = f"[demo] {name}: {people} {'person' if people == 1 else 'people'}"
    if not any(np.isfinite(before)):
        return head + " (no TTO)"
    errs = ", ".join(f"{b:.1f} -> {a:.1f}" for b, a in zip(before, status["kp_error_px_tto"]))
    return head + f"; 2D keypoint error before -> after TTO (px): {errs}" + "".join(
        f"\nwarning: {name} person {i}: {TTO_STATUS[st]}"
        for i, st in enumerate(status["person_status"]) if st in ("tto_worse", "tto_diverged"))


@dataclass
class Summary:
    images: int = 0
    processed: int = 0
    people: int = 0
    people_skipped: int = 0
    nonfinite: int = 0
    tto_rejected: int = 0
    skipped: dict = field(default_factory=lambda: {k: 0 for k in SKIP_REASONS})
    per_image: dict = field(default_factory=dict)   # image name -> status / message
    ignored: list = field(default_factory=list)     # --img_dir entries that are not images

    def skip(self, image: Path, reason: str, message: str, log) -> None:
        self.skipped[reason] += 1
        self.per_image[image.name] = {"status": reason, "message": message}
        log(f"[demo] skipped {image.name}: {message}")

    def text(self) -> str:
        lines = [f"Demo summary: {self.images} images, {self.processed} processed "
                 f"({self.people} people), {sum(self.skipped.values())} skipped"]
        lines += [f"  {v} x {SKIP_REASONS[k]}" for k, v in self.skipped.items() if v]
        counts = ((len(self.ignored), "folder entries ignored (not image files)"),
                  (self.people_skipped, "people skipped (too few confident keypoints, an invalid "
                   "box, a non-finite prediction) in processed images"),
                  (self.tto_rejected, "people whose TTO raised the 2D error or diverged "
                   "(prediction before TTO kept)"),
                  (self.nonfinite, "people whose TTO went non-finite (last finite prediction "
                   "kept)"))
        return "\n".join(lines + [f"  {n} {text}" for n, text in counts if n])
