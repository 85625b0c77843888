"""Mesh recovery with test-time optimisation on a user's own images (``demo.py``).

For every person of every image in ``--img_dir``:

1. **Bounding box.** From OpenPose keypoints (``--openpose_dir``: ``<stem>_keypoints.json``,
   BODY_25, ``people[i].pose_keypoints_2d`` = flat ``x, y, c`` list, any number of people) or from
   a bbox file (``--bbox_file``: JSON ``{image name: [[x, y, w, h], ...]}``). Either way the box
   follows the datasets' rule (:func:`utils.imutils.bbox_from_keypoints`): the tight box of the
   keypoints with confidence > ``--kp_threshold`` (of a detector box: its two corners),
   ``scale = max(w * 4/3, h) / 200 * 1.2``.
2. **Network input** (:func:`prepare_person`): the dataset's eval crop (``crop_trans`` from
   :func:`utils.imutils.get_affine_transform`, bilinear warp with a black border, ImageNet
   normalisation), CLIFF's ``bbox_info`` from the full image with the focal length
   (``--focal_length``, default the image diagonal as in training), and the OpenPose keypoints
   mapped into the 25 OpenPose slots of a [49, 3] array in crop pixels (GT slots zero).
3. **Prediction.** With keypoints, :func:`train.tto.test_time_optimize` runs as in evaluation
   with ``--use_openpose2d`` semantics (2D loss on the OpenPose slots with their confidences:
   OpenPose weight 1, GT weight 0). Step 0 also uses the aux network's pseudo-labels, which the
   released code masks by the GT flags ``has_smpl`` / ``has_pose_3d``; an in-the-wild image has
   no GT, and with both flags 0 step 0 would drop the pseudo-labels (the heart of Meta-HMR's
   step 0) and keep only the 2D + camera terms. The demo therefore sets ``has_smpl = 1`` and
   ``has_pose_3d = 1``: the aux pseudo-labels act on every person, as they do on the
   3DPW / H36M test sets the method was tuned on. Without keypoints (``--bbox_file``) there is
   nothing to adapt to: one forward pass (``before`` = ``after``).
4. **Outputs** in ``--out_dir``: ``<stem>_overlay.jpg`` (every person's mesh over the image;
   before | after TTO side by side, one panel without TTO), ``<stem>_person<i>.npz`` per person
   (keys in :func:`person_record`), ``<stem>_person<i>.obj`` with ``--save_obj``, and
   ``summary.json``.

``--from_dataset NAME`` takes the inputs from a SPIN-format test set of ``--data_root`` instead
(its images and npz ``openpose`` keypoints, written to ``<out_dir>/inputs/`` as an image folder
and OpenPose files: :func:`export_dataset_inputs`), e.g. the synthetic world's, so the demo runs
without any real data: ``python demo.py --synthetic --from_dataset h36m-p2 --checkpoint ...``.

Bad input never stops the run: an image without a keypoint file / bbox entry, an unreadable
image, a keypoint / bbox entry that cannot be parsed, or one with no (usable) people is
reported (``tqdm.write``) and counted, and a summary closes the run. A missing checkpoint, SMPL
file, image folder or bbox file is a clear error before any work (:class:`config.MissingFileError`).

Persons of consecutive images are batched together (``--batch_size`` people per TTO batch);
with ``--tto_mode sample`` (default) each person is adapted on its own, so results do not
depend on the batching (``--tto_mode batch`` adapts one copy per batch of people, as the
released evaluation does per batch of frames). Cameras: CLIFF predicts a full-image camera (focal ``f``, principal
point the image centre); HMR a crop camera, which is expressed in full-image pixels with focal
``5000 * 200 s / crop_h`` and principal point the bbox centre (exact, per person).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

import constants
from config import TEST_DATASETS, DataPaths, MissingFileError
from datasets.inputs import (IMAGE_EXTS, NUM_OPENPOSE, DemoInputError, bbox_from_openpose,
                             bbox_from_xywh, bboxes_for, export_dataset_inputs, list_images,
                             load_bbox_file, read_openpose_json)
from utils import imutils

__all__ = ["demo_parser", "parse_demo", "resolve_demo", "main", "run_demo", "prepare_person",
           "collate", "predict", "image_camera", "person_record", "render_people",
           "SKIP_REASONS"]


# reason -> how the summary names it
SKIP_REASONS = {
    "no_keypoint_file": "no keypoint file",
    "no_bbox": "no bbox entry",
    "unreadable_image": "unreadable image",
    "bad_annotation": "keypoint / bbox entry could not be parsed",
    "no_people": "no people",
    "no_usable_people": "no person with enough confident keypoints / a valid box",
    "error": "failed while predicting or writing",
}

# one colour per person (RGB, 0..1), reused cyclically
PALETTE = ((0.65, 0.74, 0.86), (0.95, 0.62, 0.78), (0.70, 0.88, 0.65), (0.98, 0.80, 0.55),
           (0.78, 0.70, 0.92), (0.60, 0.88, 0.88))


# options of utils.options' shared groups that mean nothing here (name -> default), and those
# the demo always implies (OpenPose 2D loss; bad images are always skipped and counted)
_UNUSED_COMMON = {"amp": "off", "img_root": None, "openpose_train_weight": 0.0,
                  "gt_train_weight": 1.0}
_IMPLIED_COMMON = ("use_openpose2d", "skip_bad_images")


# ------------------------------------------------------------------------------------------------
# Options
def demo_parser() -> argparse.ArgumentParser:
    """Options of demo.py: the evaluation scripts' shared groups (data and device, model,
    test-time optimisation, loss weights; :mod:`utils.options`) plus the demo's own."""
    from utils.options import add_common, add_crop_scale
    p = argparse.ArgumentParser(
        description="Meta-HMR demo: SMPL meshes (with test-time optimisation on OpenPose "
                    "keypoints) for every person in a folder of images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("demo")
    g.add_argument("--checkpoint", type=str, required=True,
                   help="Meta-HMR checkpoint with 'model' and 'model_aux' (e.g. "
                        "ckpt/cliff_hrnet_3dpw.pt, or a train.py checkpoint)")
    g.add_argument("--img_dir", type=str, default=None, help="folder of input images")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--openpose_dir", type=str, default=None,
                     help="folder of OpenPose BODY_25 files <image stem>_keypoints.json: "
                          "bboxes from the keypoints, and TTO on them")
    src.add_argument("--bbox_file", type=str, default=None,
                     help="JSON {image file name: [[x, y, w, h], ...]}: no keypoints, no TTO")
    g.add_argument("--from_dataset", type=str, default=None, choices=TEST_DATASETS,
                   help="instead of --img_dir/--openpose_dir: take the images and 'openpose' "
                        "keypoints of this test set of --data_root (e.g. the synthetic world), "
                        "copied to <out_dir>/inputs/")
    g.add_argument("--max_images", type=int, default=0,
                   help="process at most this many images (0 = all)")
    g.add_argument("--out_dir", type=str, default="demo_out", help="output folder")
    g.add_argument("--kp_threshold", type=float, default=0.1,
                   help="OpenPose keypoints with confidence <= this are ignored (bbox and TTO)")
    g.add_argument("--min_keypoints", type=int, default=3,
                   help="people with fewer confident OpenPose keypoints are skipped")
    g.add_argument("--focal_length", type=float, default=None,
                   help="focal length in pixels of every image (default: the image diagonal, "
                        "as in training)")
    g.add_argument("--batch_size", type=int, default=8, help="people per TTO / forward batch")
    g.add_argument("--bbox_type", type=str, default="rect", choices=("square", "rect"),
                   help="square 224x224 or rect 256x192 crops (must match the checkpoint)")
    add_crop_scale(g)
    g.add_argument("--test_val_step", type=int, default=14,
                   help="extra test-time steps after step 0")
    g.add_argument("--after_innerlr", type=float, default=1e-5,
                   help="test-time Adam lr for steps >= 1")
    g.add_argument("--save_obj", action="store_true",
                   help="also write every person's adapted mesh (.obj, camera coordinates)")
    g.add_argument("--draw_keypoints", action="store_true",
                   help="draw the confident OpenPose keypoints on the overlays")
    g.add_argument("--render_backend", type=str, default="auto",
                   choices=("auto", "pyrender", "software"),
                   help="overlay renderer: pyrender offscreen, or the software rasteriser "
                        "(auto: pyrender when a GL context can be made)")
    add_common(p)
    for action in p._actions:   # shared options the demo has no use for: hidden (and refused)
        if action.dest in _UNUSED_COMMON or action.dest in _IMPLIED_COMMON:
            action.help = argparse.SUPPRESS
    return p


def resolve_demo(o: argparse.Namespace) -> argparse.Namespace:
    """Check the demo's option combinations and fill the implied TTO settings."""
    from utils.options import resolve
    o = resolve(o)
    # options of the shared groups that the demo has no use for: refuse rather than ignore
    for name, default in _UNUSED_COMMON.items():
        if getattr(o, name) != default:
            raise SystemExit(f"error: --{name} has no effect in demo.py")
    if o.from_dataset is not None:
        given = [n for n in ("img_dir", "openpose_dir", "bbox_file") if getattr(o, n)]
        if given:
            raise SystemExit(f"error: --from_dataset replaces --{', --'.join(given)}")
    elif o.img_dir is None or (o.openpose_dir is None and o.bbox_file is None):
        raise SystemExit("error: give --img_dir and one of --openpose_dir / --bbox_file "
                         "(or --from_dataset)")
    if o.max_images < 0:
        raise SystemExit(f"error: --max_images must be >= 0, got {o.max_images}")
    if o.batch_size < 1:
        raise SystemExit(f"error: --batch_size must be >= 1, got {o.batch_size}")
    if o.test_val_step < 0:
        raise SystemExit(f"error: --test_val_step must be >= 0, got {o.test_val_step}")
    if o.focal_length is not None and not o.focal_length > 0:
        raise SystemExit(f"error: --focal_length must be positive, got {o.focal_length}")
    if o.min_keypoints < 2:
        raise SystemExit(f"error: --min_keypoints must be >= 2 (a box needs two points), "
                         f"got {o.min_keypoints}")
    # the 2D loss is on the OpenPose keypoints (weight 1), never on GT slots (weight 0)
    o.use_openpose2d = True
    return o


def parse_demo(argv=None) -> argparse.Namespace:
    return resolve_demo(demo_parser().parse_args(argv))


# ------------------------------------------------------------------------------------------------
# Network input
def prepare_person(img_rgb: np.ndarray, center, scale: float, focal: float, bbox_type: str,
                   openpose=None, crop_scale: float = 1.0) -> dict:
    """One person's network input, as the dataset builds it at evaluation (no augmentation).

    Args:
        img_rgb: [H, W, 3] uint8 RGB full image.
        center: [2] bbox centre (full-image pixels); scale: bbox height / 200.
        focal: focal length in pixels (CLIFF camera and bbox_info).
        bbox_type: 'rect' (256x192) or 'square' (224x224).
        openpose: [25, 3] OpenPose keypoints (full-image pixels, confidence) or None.
        crop_scale: ``--crop_scale`` (the crop is the bbox type's size times this).
    Returns:
        dict of tensors: img [3, crop_h, crop_w], keypoints [49, 3] (crop pixels: OpenPose in
        slots 0-24, GT slots 25-48 zero), keypoints_full [25, 3], center [2], scale, img_h,
        img_w, focal_length, bbox_info [3], crop_trans [2, 3], has_smpl = has_pose_3d = 1
        (module docstring, item 3).
    """
    crop_h, crop_w = constants.crop_size(bbox_type, crop_scale)
    h, w = img_rgb.shape[:2]
    trans = imutils.get_affine_transform(center, scale, 0.0, (crop_w, crop_h))
    crop = cv2.warpAffine(img_rgb, trans, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    kp = np.zeros((constants.NUM_JOINTS_OUT, 3))
    kp_full = np.zeros((NUM_OPENPOSE, 3))
    if openpose is not None:
        kp_full = np.asarray(openpose, dtype=np.float64)
        kp[:NUM_OPENPOSE, :2] = imutils.transform_points(kp_full[:, :2], trans)
        kp[:NUM_OPENPOSE, 2] = kp_full[:, 2]
    f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return {
        "img": torch.from_numpy(imutils.normalize_image(crop)),
        "keypoints": f32(kp),
        "keypoints_full": f32(kp_full),
        "center": f32(center),
        "scale": f32(scale),
        "img_h": f32(h),
        "img_w": f32(w),
        "focal_length": f32(focal),
        "bbox_info": f32(imutils.bbox_info(center, scale, h, w, focal)),
        "crop_trans": f32(trans),
        "has_smpl": f32(1.0),
        "has_pose_3d": f32(1.0),
    }


def collate(people: list[dict]) -> dict:
    """Stack the tensors of :func:`prepare_person` dicts along a new batch dimension."""
    return {k: torch.stack([p[k] for p in people]) for k in people[0]}


# ------------------------------------------------------------------------------------------------
# Prediction and cameras
@dataclass
class Prediction:
    """Predictions at the loaded weights (``before``) and after TTO (``after``), per person;
    with ``tto=False`` both are the same forward pass."""

    before: dict
    after: dict
    steps: torch.Tensor      # [B] weight updates per person
    nonfinite: torch.Tensor  # [B] bool
    tto: bool


def predict(model, model_aux, batch: dict, smpl, camera, cfg, tto: bool) -> Prediction:
    """TTO on the batch's OpenPose keypoints (``tto=True``) or a plain forward pass.

    batch: :func:`collate` output on the networks' device. Both networks in eval mode.
    Returns per-person dicts with rotmat [B,24,3,3], betas [B,10], cam [B,3],
    vertices [B,6890,3], joints [B,49,3], keypoints_2d [B,49,2] (normalised crop coords).
    """
    from train.tto import test_time_optimize
    from utils.camera import smpl_predict
    B = batch["img"].shape[0]
    if tto:
        res = test_time_optimize(model, model_aux, batch, smpl, camera, cfg)
        return Prediction(res.before, res.after, res.steps, res.nonfinite, True)
    with torch.no_grad():
        out = model(batch["img"], batch["bbox_info"] if model.use_bbox_info else None)
        pred = {k: v.detach() for k, v in smpl_predict(out, smpl, camera, batch).items()}
    dev = batch["img"].device
    return Prediction(pred, pred, torch.zeros(B, dtype=torch.long, device=dev),
                      torch.zeros(B, dtype=torch.bool, device=dev), False)


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


def person_record(pred: Prediction, batch: dict, camera) -> list[dict]:
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


# ------------------------------------------------------------------------------------------------
# The run
@dataclass
class _Image:
    path: Path
    rgb: np.ndarray
    people: list            # prepare_person dicts
    person_ids: list        # index of each person in the keypoint / bbox file


@dataclass
class Summary:
    images: int = 0
    processed: int = 0
    people: int = 0
    people_skipped: int = 0
    nonfinite: int = 0
    skipped: dict = field(default_factory=lambda: {k: 0 for k in SKIP_REASONS})
    per_image: dict = field(default_factory=dict)   # image name -> status / message

    def skip(self, image: Path, reason: str, message: str, log) -> None:
        self.skipped[reason] += 1
        self.per_image[image.name] = {"status": reason, "message": message}
        log(f"[demo] skipped {image.name}: {message}")

    def as_dict(self) -> dict:
        return {"images": self.images, "processed": self.processed, "people": self.people,
                "people_skipped": self.people_skipped, "nonfinite": self.nonfinite,
                "skipped": dict(self.skipped), "per_image": self.per_image}

    def text(self) -> str:
        n_skip = sum(self.skipped.values())
        lines = [f"Demo summary: {self.images} images, {self.processed} processed "
                 f"({self.people} people), {n_skip} skipped"]
        for k, v in self.skipped.items():
            if v:
                lines.append(f"  {v} x {SKIP_REASONS[k]}")
        if self.people_skipped:
            lines.append(f"  {self.people_skipped} people skipped (too few confident keypoints "
                         f"or an invalid box) in processed images")
        if self.nonfinite:
            lines.append(f"  {self.nonfinite} people whose TTO went non-finite (last finite "
                         f"prediction kept)")
        return "\n".join(lines)


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_image(path: Path, o, source, summary: Summary, log) -> _Image | None:
    """Read one image and its people; bad input is reported, counted, and gives None."""
    if o.openpose_dir is not None:
        kp_file = Path(o.openpose_dir) / f"{path.stem}_keypoints.json"
        if not kp_file.is_file():
            summary.skip(path, "no_keypoint_file", f"no keypoint file {kp_file}", log)
            return None
        try:
            raw = read_openpose_json(kp_file)
        except DemoInputError as e:
            summary.skip(path, "bad_annotation", str(e), log)
            return None
    else:
        try:
            raw = bboxes_for(source, path)
        except DemoInputError as e:
            summary.skip(path, "bad_annotation", str(e), log)
            return None
        if raw is None:
            summary.skip(path, "no_bbox", f"no entry for {path.name} in {o.bbox_file}", log)
            return None
    if not raw:
        summary.skip(path, "no_people", "the keypoint / bbox entry lists no people", log)
        return None
    rgb = _read_rgb(path)
    if rgb is None:
        summary.skip(path, "unreadable_image",
                     f"cannot read image {path} (corrupt or not an image)", log)
        return None
    h, w = rgb.shape[:2]
    focal = float(o.focal_length) if o.focal_length else float(imutils.diagonal_focal(h, w))
    people, ids, dropped = [], [], []
    for i, item in enumerate(raw):
        if o.openpose_dir is not None:
            center, scale, n, kp = bbox_from_openpose(item, o.kp_threshold)
            if n < o.min_keypoints:
                dropped.append(f"person {i}: {n} keypoints with confidence > "
                               f"{o.kp_threshold} (need {o.min_keypoints})")
                continue
            if not scale > 0:
                dropped.append(f"person {i}: its confident keypoints coincide (empty box)")
                continue
        else:
            if not (item[2] > 0 and item[3] > 0):
                dropped.append(f"box {i}: width and height must be positive, got {list(item)}")
                continue
            (center, scale), kp = bbox_from_xywh(item), None
        people.append(prepare_person(rgb, center, scale, focal, o.bbox_type, kp, o.crop_scale))
        ids.append(i)
    if not people:
        summary.skip(path, "no_usable_people", "; ".join(dropped), log)
        return None
    if dropped:
        summary.people_skipped += len(dropped)
        log(f"[demo] {path.name}: skipped " + "; ".join(dropped))
    return _Image(path, rgb, people, ids)


def _write_image(img: _Image, records: list[dict], o, renderer, faces, out_dir: Path,
                 tto: bool) -> dict:
    """Write the npz (and obj) files and the overlay of one image; returns its status."""
    from utils.renderer import make_grid, save_obj
    stem, files = img.path.stem, []
    for pid, rec in zip(img.person_ids, records):
        p = out_dir / f"{stem}_person{pid}.npz"
        np.savez(p, image=np.asarray(img.path.name), person=np.asarray(pid), **rec)
        files.append(p.name)
        if o.save_obj:
            obj = save_obj(rec["vertices"] + rec["cam_t"][None], faces,
                           out_dir / f"{stem}_person{pid}.obj")
            files.append(obj.name)
    panels = [render_people(renderer, img.rgb, records, "_before" if tto else "",
                            draw_keypoints=o.draw_keypoints)]
    if tto:
        panels.append(render_people(renderer, img.rgb, records, "",
                                    draw_keypoints=o.draw_keypoints))
    overlay = out_dir / f"{stem}_overlay.jpg"
    if not cv2.imwrite(str(overlay), cv2.cvtColor(make_grid(panels), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {overlay}")
    files.append(overlay.name)
    return {"status": "ok", "people": len(records), "files": files,
            "kp_error_px_before": [float(r["kp_error_px_before"]) for r in records],
            "kp_error_px": [float(r["kp_error_px"]) for r in records],
            "tto_steps": [int(r["tto_steps"]) for r in records]}


def run_demo(o, log=None) -> dict:
    """The whole demo (module docstring). Returns the summary dict (also ``summary.json``).

    Raises :class:`config.MissingFileError` (checkpoint, SMPL / mean-parameter / regressor
    files, image folder, bbox file) and ``SystemExit`` (no image in the folder, unreadable
    bbox file) before any work.
    """
    from tqdm import tqdm
    from train.evaluation import build_eval_networks
    from utils.runtime import place, seed_everything, select_device
    from train.tto import TTOConfig
    from utils.camera import Camera
    from models.smpl import build_smpl
    from utils.renderer import Renderer

    log = log or tqdm.write
    paths = DataPaths.from_options(o)
    if o.synthetic:
        from datasets.synthetic import build_world
        build_world(paths.root)
    # everything that must exist, before any work
    ckpt = paths.release_checkpoint(o.checkpoint)
    paths.smpl_model("neutral")
    paths.smpl_mean_params()
    paths.j_regressor_extra()
    out_dir = Path(o.out_dir)
    if o.from_dataset is not None:
        with np.load(paths.dataset_npz(o.from_dataset, is_train=False)) as z:
            n = len(z["imgname"])
        img_dir, kp_dir = export_dataset_inputs(
            paths, o.from_dataset, out_dir / "inputs",
            range(min(n, o.max_images) if o.max_images else n))
        o = argparse.Namespace(**{**vars(o), "img_dir": str(img_dir),
                                  "openpose_dir": str(kp_dir)})
    img_dir = require(o.img_dir, "image folder (--img_dir)")
    if not img_dir.is_dir():
        raise SystemExit(f"error: --img_dir {img_dir} is not a folder")
    if o.openpose_dir is not None:
        if not require(o.openpose_dir, "OpenPose keypoint folder (--openpose_dir)").is_dir():
            raise SystemExit(f"error: --openpose_dir {o.openpose_dir} is not a folder")
        source = None
    else:
        source = load_bbox_file(o.bbox_file)
    images = list_images(img_dir)
    if not images:
        raise SystemExit(f"error: no image ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    if o.max_images:
        images = images[:o.max_images]

    seed_everything(o.seed)
    device = select_device(o.device)
    model, model_aux = build_eval_networks(o, paths, ckpt)
    for net in (model, model_aux):
        place(net, device, o.memory_format)
    smpl = build_smpl(paths, "neutral").to(device)
    faces = np.asarray(smpl.faces, dtype=np.int64)
    camera, cfg = Camera.from_options(o), TTOConfig.from_options(o)
    tto = o.openpose_dir is not None
    renderer = Renderer(faces, backend=o.render_backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary(images=len(images))

    def flush(pending: list[_Image]) -> None:
        people = [p for img in pending for p in img.people]
        records: list[dict] = []
        try:
            for s in range(0, len(people), o.batch_size):
                batch = {k: v.to(device) for k, v in collate(people[s:s + o.batch_size]).items()}
                pred = predict(model, model_aux, batch, smpl, camera, cfg, tto)
                records += person_record(pred, batch, camera)
        except Exception as e:  # noqa: BLE001 - reported per image; the run goes on
            for img in pending:
                summary.skip(img.path, "error", f"prediction failed: {type(e).__name__}: {e}",
                             log)
            return
        k = 0
        for img in pending:
            recs, k = records[k:k + len(img.people)], k + len(img.people)
            try:
                status = _write_image(img, recs, o, renderer, faces, out_dir, tto)
            except Exception as e:  # noqa: BLE001
                summary.skip(img.path, "error", f"writing results failed: "
                             f"{type(e).__name__}: {e}", log)
                continue
            summary.per_image[img.path.name] = status
            summary.processed += 1
            summary.people += len(recs)
            summary.nonfinite += int(sum(bool(r["nonfinite"]) for r in recs))

    pending: list[_Image] = []
    try:
        for path in tqdm(images, desc="demo", unit="img", disable=None):
            img = _load_image(path, o, source, summary, log)
            if img is None:
                continue
            pending.append(img)
            if sum(len(i.people) for i in pending) >= o.batch_size:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
    finally:
        renderer.close()
    result = summary.as_dict()
    result["out_dir"] = str(out_dir)
    result["tto"] = tto
    with open(out_dir / "summary.json", "w") as f:
        json.dump(result, f, indent=2)
    log(summary.text())
    return result


def main(options) -> dict:
    """demo.py: run the demo; a missing file is a one-line error naming it."""
    try:
        return run_demo(options)
    except MissingFileError as e:
        raise SystemExit(f"error: {e}") from e
