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

**Honest about bad fits** (issue #13): a confident keypoint far outside the image (a
detector glitch) is ignored for the box and TTO (:func:`datasets.inputs.bbox_from_openpose`);
each person keeps the better of the predictions before / after TTO, and one whose TTO raised
the 2D keypoint error or diverged gets ``status`` ``tto_worse`` / ``tto_diverged`` and a
warning (:func:`train.demo_results.judge_tto`). Each image prints its people and their 2D
keypoint error before -> after TTO; ``main`` exits with code 2 when no image was processed.
``--video`` runs the same per frame (:mod:`train.video`).

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
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from config import TEST_DATASETS, DataPaths, MissingFileError, require
from datasets.inputs import (collate, prepare_person)  # noqa: F401 (re-exported)
from datasets.inputs import (IMAGE_EXTS, DemoInputError, bbox_from_openpose,
                             bbox_from_xywh, bboxes_for, export_dataset_inputs, list_images,
                             load_bbox_file, read_openpose_json)
from train.demo_results import (PALETTE, TTO_STATUS, image_camera, judge_tto,  # noqa: F401
                                person_record, render_people)
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
    from utils.options import (add_bbox_type, add_common, add_crop_scale, add_tto_steps,
                               from_checkpoint)
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
    g.add_argument("--video", type=str, default=None,
                   help="instead of --img_dir: a video file, run frame by frame (keypoints "
                        "<video stem>_<frame:012d>_keypoints.json, as OpenPose names them); "
                        "writes per-frame results and <video stem>_overlay.mp4 (train/video.py)")
    g.add_argument("--every", type=int, default=1,
                   help="--video: process every N-th frame (1 = all)")
    g.add_argument("--max_images", type=int, default=0,
                   help="process at most this many images / video frames (0 = all)")
    g.add_argument("--out_dir", type=str, default="demo_out", help="output folder")
    g.add_argument("--kp_threshold", type=float, default=0.1,
                   help="OpenPose keypoints with confidence <= this are ignored (bbox and TTO)")
    g.add_argument("--min_keypoints", type=int, default=3,
                   help="people with fewer confident OpenPose keypoints are skipped")
    g.add_argument("--focal_length", type=float, default=None,
                   help="focal length in pixels of every image (default: the image diagonal, "
                        "as in training)")
    g.add_argument("--batch_size", type=int, default=8, help="people per TTO / forward batch")
    add_bbox_type(g, None, " (default: the checkpoint's, else rect)")
    add_crop_scale(g, from_checkpoint=True)
    add_tto_steps(g, 14, 1e-5)
    g.add_argument("--save_obj", action="store_true",
                   help="also write every person's adapted mesh (.obj, camera coordinates)")
    g.add_argument("--draw_keypoints", action="store_true",
                   help="draw the confident OpenPose keypoints on the overlays")
    g.add_argument("--render_backend", type=str, default="auto",
                   choices=("auto", "pyrender", "software"),
                   help="overlay renderer: pyrender offscreen, or the software rasteriser "
                        "(auto: pyrender when a GL context can be made)")
    add_common(p)
    from_checkpoint(p)   # --model/--backbone/--bbox_type/--crop_scale: the checkpoint's
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
    if o.video is not None and (o.img_dir or o.from_dataset):
        raise SystemExit("error: --video replaces --img_dir / --from_dataset (its frames are "
                         "the images). Give one input")
    if o.every < 1:
        raise SystemExit(f"error: --every must be >= 1 (1 = every frame), got {o.every}")
    if o.from_dataset is not None:
        given = [n for n in ("img_dir", "openpose_dir", "bbox_file") if getattr(o, n)]
        if given:
            raise SystemExit(f"error: --from_dataset replaces --{', --'.join(given)}")
    elif o.video is not None:
        if o.openpose_dir is None and o.bbox_file is None:
            raise SystemExit("error: --video needs --openpose_dir (OpenPose's "
                             "<video>_<frame:012d>_keypoints.json files) or --bbox_file")
    elif o.img_dir is None or (o.openpose_dir is None and o.bbox_file is None):
        raise SystemExit("error: give --img_dir and one of --openpose_dir / --bbox_file "
                         "(or --from_dataset)")
    if o.max_images < 0:
        raise SystemExit(f"error: --max_images must be >= 0, got {o.max_images}")
    if o.batch_size < 1:
        raise SystemExit(f"error: --batch_size must be >= 1, got {o.batch_size}")
    if o.test_val_step < -1:
        raise SystemExit(f"error: --test_val_step must be >= -1 (-1: no test-time "
                         f"optimisation), got {o.test_val_step}")
    if o.focal_length is not None and not o.focal_length > 0:
        raise SystemExit(f"error: --focal_length must be positive, got {o.focal_length}")
    if o.min_keypoints < 2:
        raise SystemExit(f"error: --min_keypoints must be >= 2 (a box needs two points), "
                         f"got {o.min_keypoints}")
    # the 2D loss is on the OpenPose keypoints (weight 1), never on GT slots (weight 0)
    o.use_openpose2d = True
    return o


def parse_demo(argv=None) -> argparse.Namespace:
    from utils.options import fill_checkpoint_defaults
    return resolve_demo(fill_checkpoint_defaults(demo_parser().parse_args(argv)))


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
    tto_rejected: int = 0
    skipped: dict = field(default_factory=lambda: {k: 0 for k in SKIP_REASONS})
    per_image: dict = field(default_factory=dict)   # image name -> status / message

    def skip(self, image: Path, reason: str, message: str, log) -> None:
        self.skipped[reason] += 1
        self.per_image[image.name] = {"status": reason, "message": message}
        log(f"[demo] skipped {image.name}: {message}")

    def as_dict(self) -> dict:
        return {"images": self.images, "processed": self.processed, "people": self.people,
                "people_skipped": self.people_skipped, "nonfinite": self.nonfinite,
                "tto_rejected": self.tto_rejected,
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
        if self.tto_rejected:
            lines.append(f"  {self.tto_rejected} people whose TTO raised the 2D error or "
                         f"diverged (prediction before TTO kept)")
        if self.nonfinite:
            lines.append(f"  {self.nonfinite} people whose TTO went non-finite (last finite "
                         f"prediction kept)")
        return "\n".join(lines)


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_image(path: Path, o, source, summary: Summary, log,
                rgb: np.ndarray | None = None) -> _Image | None:
    """Read one image (or take ``rgb``, a video frame) and its people; bad input is reported,
    counted, and gives None."""
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
    rgb = _read_rgb(path) if rgb is None else rgb
    if rgb is None:
        summary.skip(path, "unreadable_image",
                     f"cannot read image {path} (corrupt or not an image)", log)
        return None
    h, w = rgb.shape[:2]
    focal = float(o.focal_length) if o.focal_length else float(imutils.diagonal_focal(h, w))
    people, ids, dropped = [], [], []
    for i, item in enumerate(raw):
        if o.openpose_dir is not None:
            center, scale, n, kp = bbox_from_openpose(item, o.kp_threshold, (h, w))
            far = int(((np.asarray(item)[:, 2] > o.kp_threshold) & (kp[:, 2] == 0)).sum())
            if far:
                log(f"warning: {path.name} person {i}: {far} confident keypoint(s) far "
                    f"outside the image ignored")
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
                 tto: bool, overlay_sink=None) -> dict:
    """Write the npz (and obj) files and the overlay of one image; returns its status.

    Each person's record keeps the better of the predictions before / after TTO
    (:func:`train.demo_results.judge_tto`); the overlay's right panel shows the kept one.
    """
    from utils.renderer import make_grid, save_obj
    stem, files = img.path.stem, []
    judged = [judge_tto(r) for r in records]
    records, statuses = [r for r, _ in judged], [st for _, st in judged]
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
    if overlay_sink is not None:
        overlay_sink(img, make_grid(panels))
    else:
        overlay = out_dir / f"{stem}_overlay.jpg"
        if not cv2.imwrite(str(overlay), cv2.cvtColor(make_grid(panels), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {overlay}")
        files.append(overlay.name)
    return {"status": "ok", "people": len(records), "files": files,
            "person_status": statuses,
            "kp_error_px_before": [float(r["kp_error_px_before"]) for r in records],
            "kp_error_px": [float(r["kp_error_px"]) for r in records],
            "kp_error_px_tto": [float(r["kp_error_px_tto"]) for r in records],
            "tto_steps": [int(r["tto_steps"]) for r in records]}


def _image_line(name: str, status: dict) -> str:
    """``<image>: N people; 2D keypoint error before -> after TTO: a -> b px, ...`` plus a
    warning per person whose TTO was rejected (issue #13 point 10)."""
    people = status["people"]
    before, after = status["kp_error_px_before"], status["kp_error_px_tto"]
    if not any(np.isfinite(before)):
        return f"[demo] {name}: {people} {'person' if people == 1 else 'people'} (no TTO)"
    errs = ", ".join(f"{b:.1f} -> {a:.1f}" for b, a in zip(before, after))
    line = (f"[demo] {name}: {people} {'person' if people == 1 else 'people'}; 2D keypoint "
            f"error before -> after TTO (px): {errs}")
    for i, st in enumerate(status["person_status"]):
        if st in ("tto_worse", "tto_diverged"):
            line += f"\nwarning: {name} person {i}: {TTO_STATUS[st]}"
    return line


def check_inputs(o, paths: DataPaths):
    """Everything that must exist, before any work: checkpoint, SMPL files, the image folder
    (``--from_dataset``: written from the test set first), keypoint folder or bbox file.
    Returns (options with the image / keypoint folders, images, bbox source or None)."""
    paths.release_checkpoint(o.checkpoint)
    paths.smpl_model("neutral")
    paths.smpl_mean_params()
    paths.j_regressor_extra()
    if o.from_dataset is not None:
        with np.load(paths.dataset_npz(o.from_dataset, is_train=False)) as z:
            n = len(z["imgname"])
        img_dir, kp_dir = export_dataset_inputs(
            paths, o.from_dataset, Path(o.out_dir) / "inputs",
            range(min(n, o.max_images) if o.max_images else n))
        o = argparse.Namespace(**{**vars(o), "img_dir": str(img_dir),
                                  "openpose_dir": str(kp_dir)})
    images = []
    if getattr(o, "video", None) is None:
        img_dir = require(o.img_dir, "image folder (--img_dir)")
        if not img_dir.is_dir():
            raise SystemExit(f"error: --img_dir {img_dir} is not a folder")
    if o.openpose_dir is not None:
        if not require(o.openpose_dir, "OpenPose keypoint folder (--openpose_dir)").is_dir():
            raise SystemExit(f"error: --openpose_dir {o.openpose_dir} is not a folder")
        source = None
    else:
        source = load_bbox_file(o.bbox_file)
    if getattr(o, "video", None) is None:
        images = list_images(img_dir)
        if not images:
            raise SystemExit(f"error: no image ({', '.join(IMAGE_EXTS)}) in {img_dir}")
        if o.max_images:
            images = images[:o.max_images]
    return o, images, source


class DemoRun:
    """The networks, renderer and summary of one demo run (images or video frames)."""

    def __init__(self, o, paths: DataPaths, n_images: int, source, log):
        from train.evaluation import build_eval_networks, read_eval_checkpoint
        from utils.runtime import place, seed_everything, select_device
        from train.tto import TTOConfig
        from utils.camera import Camera
        from models.smpl import build_smpl
        from utils.renderer import Renderer
        seed_everything(o.seed)
        self.device = select_device(o.device)
        ckpt, data = read_eval_checkpoint(o, paths, log=log)   # options it records decide
        self.model, self.model_aux = build_eval_networks(o, paths, ckpt, data)
        del data
        for net in (self.model, self.model_aux):
            place(net, self.device, o.memory_format)
        self.smpl = build_smpl(paths, "neutral").to(self.device)
        self.faces = np.asarray(self.smpl.faces, dtype=np.int64)
        self.camera, self.cfg = Camera.from_options(o), TTOConfig.from_options(o)
        self.o, self.source, self.log = o, source, log
        self.tto = o.openpose_dir is not None
        self.renderer = Renderer(self.faces, backend=o.render_backend)
        self.out_dir = Path(o.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = Summary(images=n_images)

    def load(self, path: Path, rgb: np.ndarray | None = None) -> _Image | None:
        """One image (or video frame ``rgb`` named ``path``) and its people, or None."""
        return _load_image(path, self.o, self.source, self.summary, self.log, rgb)

    def flush(self, pending: list[_Image], overlay_sink=None) -> None:
        """Predict every person of ``pending`` and write each image's results
        (``overlay_sink(img, overlay_rgb)`` instead of ``<stem>_overlay.jpg`` when given)."""
        o, summary, log = self.o, self.summary, self.log
        people = [p for img in pending for p in img.people]
        records: list[dict] = []
        try:
            for s in range(0, len(people), o.batch_size):
                batch = {k: v.to(self.device)
                         for k, v in collate(people[s:s + o.batch_size]).items()}
                pred = predict(self.model, self.model_aux, batch, self.smpl, self.camera,
                               self.cfg, self.tto)
                records += person_record(pred, batch, self.camera)
        except Exception as e:  # noqa: BLE001 - reported per image; the run goes on
            for img in pending:
                summary.skip(img.path, "error", f"prediction failed: {type(e).__name__}: {e}",
                             log)
            return
        k = 0
        for img in pending:
            recs, k = records[k:k + len(img.people)], k + len(img.people)
            try:
                status = _write_image(img, recs, o, self.renderer, self.faces, self.out_dir,
                                      self.tto, overlay_sink)
            except Exception as e:  # noqa: BLE001
                summary.skip(img.path, "error", f"writing results failed: "
                             f"{type(e).__name__}: {e}", log)
                continue
            summary.per_image[img.path.name] = status
            log(_image_line(img.path.name, status))
            summary.tto_rejected += sum(st in ("tto_worse", "tto_diverged")
                                        for st in status["person_status"])
            summary.processed += 1
            summary.people += len(recs)
            summary.nonfinite += int(sum(bool(r["nonfinite"]) for r in recs))

    def finish(self, **extra) -> dict:
        """Close the renderer, write ``summary.json`` (strict JSON: NaN is null), log the
        summary; returns the summary dict."""
        from utils.jsonio import write_json
        self.renderer.close()
        result = {**self.summary.as_dict(), "out_dir": str(self.out_dir), "tto": self.tto,
                  **extra}
        write_json(self.out_dir / "summary.json", result)
        self.log(self.summary.text())
        return result


def run_demo(o, log=None) -> dict:
    """The whole demo (module docstring). Returns the summary dict (also ``summary.json``).

    Raises :class:`config.MissingFileError` (checkpoint, SMPL / mean-parameter / regressor
    files, image folder, bbox file) and ``SystemExit`` (no image in the folder, unreadable
    bbox file) before any work.
    """
    from tqdm import tqdm
    log = log or tqdm.write
    paths = DataPaths.from_options(o)
    if o.synthetic:
        from datasets.synthetic import build_world
        build_world(paths.root)
    o, images, source = check_inputs(o, paths)
    run = DemoRun(o, paths, len(images), source, log)
    pending: list[_Image] = []
    try:
        for path in tqdm(images, desc="demo", unit="img", disable=None):
            img = run.load(path)
            if img is None:
                continue
            pending.append(img)
            if sum(len(i.people) for i in pending) >= o.batch_size:
                run.flush(pending)
                pending = []
        if pending:
            run.flush(pending)
    finally:
        result = run.finish()
    return result


def main(options) -> dict:
    """demo.py: run the demo; a missing file is a one-line error naming it."""
    try:
        if getattr(options, "video", None) is not None:
            from train.video import run_video
            result = run_video(options)
        else:
            result = run_demo(options)
    except MissingFileError as e:
        raise SystemExit(f"error: {e}") from e
    if result["images"] and not result["processed"]:   # issue #13 point 10
        raise SystemExit(f"error: none of the {result['images']} image(s) could be processed "
                         f"(reasons above and in {Path(result['out_dir']) / 'summary.json'}). "
                         f"Check the images and their keypoint / bbox files")
    return result
