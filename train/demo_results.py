"""Per-person results of the demo: full-image cameras, result arrays, the TTO verdict, and
the mesh overlays (used by :mod:`train.demo` and :mod:`train.video`).
"""
from __future__ import annotations

import numpy as np
import torch

import constants
from datasets.inputs import NUM_OPENPOSE

__all__ = ["PALETTE", "image_camera", "person_record", "render_people", "judge_tto",
           "TTO_STATUS"]

# one colour per person (RGB, 0..1), reused cyclically
PALETTE = ((0.65, 0.74, 0.86), (0.95, 0.62, 0.78), (0.70, 0.88, 0.65), (0.98, 0.80, 0.55),
           (0.78, 0.70, 0.92), (0.60, 0.88, 0.88))


def image_camera(camera, cam: torch.Tensor, batch: dict):
    """Per-person pinhole camera of the full image that reproduces the network's projection.

    camera: :class:`utils.camera.Camera`; cam: [B, 3] predicted crop camera (s, tx, ty).
    Returns (translation [B, 3], focal [B], principal point [B, 2]), full-image pixels:

    * CLIFF: ``cam_crop2full`` translation, the image's focal length, the image centre;
    * HMR: the crop translation ``[tx, ty, 2*5000/(crop_h s)]`` with focal
      ``5000 * 200 s / crop_h`` and principal point the bbox centre (the crop camera mapped
      back through the inverse crop transform).
    """
    t = camera.full_translation(cam, batch)
    if camera.kind == "cliff":
        f = batch["focal_length"].to(t.dtype)
        c = torch.stack([batch["img_w"], batch["img_h"]], dim=-1).to(t.dtype) / 2.0
    else:
        f = (constants.FOCAL_LENGTH * 200.0 * batch["scale"] / camera.crop_h).to(t.dtype)
        c = batch["center"].to(t.dtype)
    return t, f, c


def _project(points: torch.Tensor, t, f, c) -> torch.Tensor:
    from utils.geometry import perspective_projection
    return perspective_projection(points, None, t, f, c)


def _kp_error_px(joints_2d: torch.Tensor, kp_full: torch.Tensor) -> torch.Tensor:
    """[B] confidence-weighted mean pixel distance of the OpenPose slots to the keypoints
    (NaN where no keypoint has confidence > 0)."""
    conf = kp_full[..., 2]
    d = (joints_2d[:, :NUM_OPENPOSE] - kp_full[..., :2]).norm(dim=-1)
    w = conf.sum(-1)
    return torch.where(w > 0, (conf * d).sum(-1) / w.clamp_min(1e-12),
                       torch.full_like(w, float("nan")))


def person_record(pred, batch: dict, camera) -> list[dict]:
    """Per-person result arrays (numpy) of a batch, as written to ``<stem>_person<i>.npz``.

    Keys (after TTO; the same with ``_before`` at the loaded weights, for pose, betas,
    cam_crop, cam_t, joints_2d, joints_3d, vertices):
    pose [72] SMPL axis-angle; betas [10]; cam_crop [3] (s, tx, ty); cam_t [3] camera
    translation in full-image camera coordinates (OpenCV axes, metres); focal_length,
    camera_center [2] (the full-image intrinsics of ``cam_t``: see :func:`image_camera`);
    joints_3d [49,3] SPIN-order joints in the body frame (camera frame = joints_3d + cam_t);
    joints_2d [49,2] full-image pixels; vertices [6890,3] body frame; bbox_center [2];
    bbox_scale; img_h; img_w; keypoints [25,3] the OpenPose input used (confidences <=
    --kp_threshold zeroed; zeros without keypoints); tto; tto_steps; nonfinite;
    kp_error_px / kp_error_px_before (weighted mean pixel distance of the OpenPose slots to
    the keypoints; NaN without keypoints).
    """
    from utils.geometry import rotmat_to_axis_angle
    B = batch["img"].shape[0]
    np_ = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
    cols = {}
    kp_full = batch["keypoints_full"]
    for tag, p in (("", pred.after), ("_before", pred.before)):
        t, f, c = image_camera(camera, p["cam"], batch)
        j2d = _project(p["joints"], t, f, c)
        cols["pose" + tag] = np_(rotmat_to_axis_angle(p["rotmat"].reshape(-1, 3, 3))
                                 .reshape(B, 72))
        cols["betas" + tag] = np_(p["betas"])
        cols["cam_crop" + tag] = np_(p["cam"])
        cols["cam_t" + tag] = np_(t)
        cols["joints_3d" + tag] = np_(p["joints"])
        cols["joints_2d" + tag] = np_(j2d)
        cols["vertices" + tag] = np_(p["vertices"])
        cols["kp_error_px" + tag] = np_(_kp_error_px(j2d, kp_full.to(j2d.dtype)))
    cols["focal_length"], cols["camera_center"] = np_(f), np_(c)
    cols["bbox_center"], cols["bbox_scale"] = np_(batch["center"]), np_(batch["scale"])
    cols["img_h"], cols["img_w"] = np_(batch["img_h"]), np_(batch["img_w"])
    cols["keypoints"] = np_(kp_full)
    cols["tto_steps"] = pred.steps.detach().cpu().numpy().astype(np.int64)
    cols["nonfinite"] = pred.nonfinite.detach().cpu().numpy().astype(bool)
    return [{**{k: v[i] for k, v in cols.items()}, "tto": np.asarray(pred.tto)}
            for i in range(B)]


def render_people(renderer, img_rgb: np.ndarray, records: list[dict], tag: str = "",
                  colors=PALETTE, draw_keypoints: bool = False) -> np.ndarray:
    """Every person's mesh over the full image (far people first, near ones drawn over them).

    records: :func:`person_record` dicts; tag: '' (after TTO) or '_before'.
    Returns [H, W, 3] uint8 RGB.
    """
    out = img_rgb
    order = sorted(range(len(records)), key=lambda i: -float(records[i]["cam_t" + tag][2]))
    for i in order:
        r = records[i]
        verts = r["vertices" + tag] + r["cam_t" + tag][None]
        if not (np.isfinite(verts).all() and (verts[:, 2] > 0).any()):
            continue   # nothing in front of the camera to draw
        out = renderer.render(verts, float(r["focal_length"]), r["camera_center"], out,
                              color=colors[i % len(colors)])
    if draw_keypoints:
        from utils.renderer import draw_keypoints as draw
        for r in records:
            if (r["keypoints"][:, 2] > 0).any():
                out = draw(out, r["keypoints"], color=(255, 40, 40))
    return out




# -- is the adapted prediction better? (issue #13 point 9) ---------------------------------------
TTO_STATUS = {
    "ok": "TTO lowered (or kept) the 2D keypoint error",
    "no_tto": "no keypoints, no TTO (one forward pass)",
    "tto_worse": "TTO raised the 2D keypoint error; the prediction before TTO is kept",
    "tto_diverged": "TTO diverged (non-finite or exploding values); the prediction before TTO "
                    "is kept",
}
# keys of person_record that exist after TTO and at the loaded weights ("_before")
PREDICTION_KEYS = ("pose", "betas", "cam_crop", "cam_t", "joints_3d", "joints_2d", "vertices",
                   "kp_error_px")
MAX_ABS_BETA = 10.0     # SMPL shapes are a few units; 10 is no human body
MAX_BODY_EXTENT_M = 5.0  # body-frame vertices within 5 m of the root
MAX_DEPTH_M = 1000.0     # camera translation: in front of the camera, within 1 km


def _sane(rec: dict, tag: str) -> bool:
    """Finite values that describe a human body in front of the camera."""
    vals = [np.asarray(rec[k + tag], np.float64) for k in PREDICTION_KEYS if k != "kp_error_px"]
    if not all(np.isfinite(v).all() for v in vals):
        return False
    t = np.asarray(rec["cam_t" + tag], np.float64)
    return (np.abs(rec["betas" + tag]).max() <= MAX_ABS_BETA
            and np.abs(rec["vertices" + tag]).max() <= MAX_BODY_EXTENT_M
            and 0.0 < t[2] <= MAX_DEPTH_M and np.abs(t[:2]).max() <= MAX_DEPTH_M)


def judge_tto(rec: dict) -> tuple[dict, str]:
    """Keep the better of the predictions before and after TTO for one person.

    The adapted prediction is kept when it is sane (finite, |betas| <= 10, the body within
    5 m of its root, in front of the camera within 1 km), TTO never went non-finite, and its
    weighted 2D keypoint error is not above the one before TTO. Otherwise the prediction before
    TTO replaces it (its keys without suffix: pose, betas, cam_crop, cam_t, joints_3d,
    joints_2d, vertices, kp_error_px), with status ``tto_diverged`` (not sane / non-finite) or
    ``tto_worse``. Returns (record with ``status`` and ``tto_kept`` added, status).
    """
    out = dict(rec)
    if not bool(rec["tto"]):
        status = "no_tto"
    elif bool(rec["nonfinite"]) or not _sane(rec, ""):
        status = "tto_diverged"
    else:
        e0, e1 = float(rec["kp_error_px_before"]), float(rec["kp_error_px"])
        status = "tto_worse" if np.isfinite(e0) and not e1 <= e0 else "ok"
    if status in ("tto_worse", "tto_diverged"):
        for k in PREDICTION_KEYS:
            out[k] = rec[k + "_before"]
    out["kp_error_px_tto"] = rec["kp_error_px"]   # the error TTO reached, kept or not
    out["status"] = np.asarray(status)
    out["tto_kept"] = np.asarray(status == "ok")
    return out, status
