"""Mesh recovery with test-time optimisation on a user's own images (``demo.py``; its outputs:
the README's "Demo on your own images").

For every person of every image in ``--img_dir``: a box from its OpenPose keypoints
(``--openpose_dir``) or a detector box (``--bbox_file``); the network input as the datasets build
it at evaluation (:func:`prepare_person`); TTO on the keypoints, or one forward pass without them
(:func:`predict`); the better prediction before / after TTO (:mod:`train.demo_report`); npz files
(:func:`person_record`), an overlay (:func:`render_people`) and ``summary.json``. ``--video``:
per frame (:mod:`train.video`); ``--from_dataset``: a test set's inputs, in ``<out_dir>/inputs/``.

TTO runs as evaluation's with ``--use_openpose2d``. The released code masks step 0's aux
pseudo-labels by the GT flags ``has_smpl`` / ``has_pose_3d``; an in-the-wild image has no GT,
and flags 0 would drop the pseudo-labels (the heart of Meta-HMR's step 0), so the demo sets
both to 1, as on the 3DPW / H36M test sets the method was tuned on.

Bad input is reported, counted and summed up, and the run goes on; a missing file fails before
any work (:class:`config.MissingFileError`); ``main`` exits with code 2 when no image was
processed. With ``--tto_mode sample`` (default) each person is adapted on its own, so results
do not depend on how people share ``--batch_size`` batches.
"""
from __future__ import annotations

import argparse
import collections
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import constants
from config import TEST_DATASETS, DataPaths, MissingFileError, require
from datasets.image_files import write_image
from datasets.inputs import (IMAGE_EXTS, NUM_OPENPOSE, DemoInputError, bbox_from_openpose,
                             bbox_from_xywh, bboxes_for, box_problem, collate,
                             export_dataset_inputs, keypoint_box_problem, keypoints_problem,
                             list_images, load_bbox_file, prepare_person, read_image,
                             read_openpose_json, read_video)
from models.smpl import build_smpl
from train.demo_report import Summary, image_line, judge_finite
from train.tto import TTOConfig, test_time_optimize
from train.video import run_video
from utils import imutils
from utils.camera import Camera, smpl_predict
from utils.geometry import perspective_projection, rotmat_to_axis_angle
from utils.jsonio import write_json
from utils.options import (add_bbox_type, add_common, add_crop_scale, add_tto_steps,
                           fill_checkpoint_defaults, from_checkpoint, refuse_unused, resolve)
from utils.runtime import place, seed_everything, select_device

__all__ = ["demo_parser", "parse_demo", "resolve_demo", "main", "run_demo", "prepare_person",
           "collate", "predict", "image_camera", "person_record", "render_people", "PALETTE",
           "DemoRun"]

# options of utils.options' shared groups that mean nothing here (name -> default), and those
# the demo always implies (OpenPose 2D loss; bad images are always skipped and counted)
_UNUSED_COMMON = {"amp": "off", "img_root": None, "openpose_train_weight": 0.0,
                  "gt_train_weight": 1.0}
_IMPLIED_COMMON = ("use_openpose2d", "skip_bad_images")


def demo_parser() -> argparse.ArgumentParser:
    """Options of demo.py: the evaluation scripts' shared groups (data and device, model,
    test-time optimisation, loss weights; :mod:`utils.options`) plus the demo's own."""
    p = argparse.ArgumentParser(description="Meta-HMR demo: SMPL meshes (with test-time "
                                "optimisation on OpenPose keypoints) for every person in a folder "
                                "of images", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("demo")
    g.add_argument("--checkpoint", required=True, help="Meta-HMR checkpoint with 'model' and "
                   "'model_aux' (e.g. ckpt/cliff_hrnet_3dpw.pt, or a train.py checkpoint)")
    g.add_argument("--img_dir", help="folder of input images")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--openpose_dir", help="folder of OpenPose BODY_25 files <image stem>"
                     "_keypoints.json: bboxes from the keypoints, and TTO on them")
    src.add_argument("--bbox_file",
                     help="JSON {image file name: [[x, y, w, h], ...]}: no keypoints, no TTO")
    g.add_argument("--from_dataset", choices=TEST_DATASETS, help="instead of --img_dir/"
                   "--openpose_dir: take the images and 'openpose' keypoints of this test set "
                   "of --data_root (e.g. the synthetic world), copied to <out_dir>/inputs/")
    g.add_argument("--video", help="instead of --img_dir: a video file, run frame by frame "
                   "(keypoints <video stem>_<frame:012d>_keypoints.json, as OpenPose names "
                   "them); writes per-frame results and <video stem>_overlay.mp4 (train/video.py)")
    g.add_argument("--every", type=int, default=1,
                   help="--video: process every N-th frame (1 = all)")
    g.add_argument("--max_images", type=int, default=0,
                   help="process at most this many images / video frames (0 = all)")
    g.add_argument("--out_dir", default="demo_out", help="output folder")
    g.add_argument("--kp_threshold", type=float, default=0.1,
                   help="OpenPose keypoints with confidence <= this are ignored (bbox and TTO)")
    g.add_argument("--min_keypoints", type=int, default=3,
                   help="people with fewer confident OpenPose keypoints are skipped")
    g.add_argument("--focal_length", type=float, help="focal length in pixels of every image "
                   "(default: the image diagonal, as in training)")
    g.add_argument("--batch_size", type=int, default=8, help="people per TTO / forward batch")
    add_bbox_type(g, None, " (default: the checkpoint's, else rect)")
    add_crop_scale(g, from_checkpoint=True)
    add_tto_steps(g, 14, 1e-5)
    g.add_argument("--save_obj", action="store_true",
                   help="also write every person's adapted mesh (.obj, camera coordinates)")
    g.add_argument("--draw_keypoints", action="store_true",
                   help="draw the confident OpenPose keypoints on the overlays")
    g.add_argument("--render_backend", default="auto", choices=("auto", "pyrender", "software"),
                   help="overlay renderer: pyrender offscreen, or the software rasteriser "
                        "(auto: pyrender when a GL context can be made)")
    add_common(p)
    from_checkpoint(p)   # --model/--backbone/--bbox_type/--crop_scale: the checkpoint's
    for action in p._actions:   # shared options the demo has no use for: hidden (and refused)
        if action.dest in _UNUSED_COMMON or action.dest in _IMPLIED_COMMON:
            action.help = argparse.SUPPRESS
    return p


def resolve_demo(o: argparse.Namespace) -> argparse.Namespace:
    """Check the demo's option combinations (after :func:`utils.options.resolve`) and fill the
    implied TTO settings."""
    o = refuse_unused(resolve(o), _UNUSED_COMMON, "demo.py")
    given = [n for n in ("img_dir", "openpose_dir", "bbox_file") if getattr(o, n)]
    no_source, dataset = o.openpose_dir is None and o.bbox_file is None, o.from_dataset is not None
    for bad, message in (
            (o.video is not None and (o.img_dir or o.from_dataset), "--video replaces --img_dir "
             "/ --from_dataset (its frames are the images). Give one input"),
            (o.every < 1, f"--every must be >= 1 (1 = every frame), got {o.every}"),
            (o.video is None and o.every != 1, "--every picks frames of --video; images take "
             "no --every (use --max_images to process fewer)"),
            (dataset and given, f"--from_dataset replaces --{', --'.join(given)}"),
            (not dataset and o.video is not None and no_source, "--video needs --openpose_dir "
             "(OpenPose's <video>_<frame:012d>_keypoints.json files) or --bbox_file"),
            (not dataset and o.video is None and (o.img_dir is None or no_source), "give "
             "--img_dir and one of --openpose_dir / --bbox_file (or --from_dataset)"),
            (o.max_images < 0, f"--max_images must be >= 0, got {o.max_images}"),
            (o.min_keypoints < 2, f"--min_keypoints must be >= 2 (a box needs two points), "
             f"got {o.min_keypoints}"),
            (not o.kp_threshold >= 0, f"--kp_threshold must be >= 0 (a confidence), got "
             f"{o.kp_threshold}")):
        if bad:
            raise SystemExit(f"error: {message}")
    o.use_openpose2d = True   # the 2D loss: on the OpenPose keypoints (weight 1), not GT (0)
    return o


def parse_demo(argv=None) -> argparse.Namespace:
    return resolve_demo(fill_checkpoint_defaults(demo_parser().parse_args(argv)))


# -- prediction, cameras, per-person results -----------------------------------------------------
@dataclass
class Prediction:
    """Per-person predictions at the loaded weights (``before``) and after TTO (``after``), the
    same forward pass with ``tto=False``; steps: [B] weight updates, nonfinite: [B] bool."""
    before: dict
    after: dict
    steps: torch.Tensor
    nonfinite: torch.Tensor
    tto: bool


def predict(model, model_aux, batch: dict, smpl, camera, cfg, tto: bool) -> Prediction:
    """TTO on the batch's OpenPose keypoints (``tto=True``) or a plain forward pass. batch:
    :func:`collate` output on the networks' device. The dicts hold rotmat [B,24,3,3], betas
    [B,10], cam [B,3], vertices [B,6890,3], joints [B,49,3], keypoints_2d [B,49,2] (normalised
    crop coords)."""
    if tto:
        res = test_time_optimize(model, model_aux, batch, smpl, camera, cfg)
        return Prediction(res.before, res.after, res.steps, res.nonfinite, True)
    with torch.no_grad():
        out = model(batch["img"], batch["bbox_info"] if model.use_bbox_info else None)
        pred = {k: v.detach() for k, v in smpl_predict(out, smpl, camera, batch).items()}
    zeros = torch.zeros(batch["img"].shape[0], dtype=torch.long, device=batch["img"].device)
    return Prediction(pred, pred, zeros, zeros.bool(), False)


def image_camera(camera, cam: torch.Tensor, batch: dict):
    """Per-person pinhole camera of the full image that reproduces the network's projection.
    camera: :class:`utils.camera.Camera`; cam: [B, 3] predicted crop camera (s, tx, ty).
    Returns (translation [B, 3], focal [B], principal point [B, 2]), full-image pixels. CLIFF:
    ``cam_crop2full`` translation, the image's focal length, the image centre; HMR: the crop
    translation ``[tx, ty, 2*5000/(crop_h s)]`` with focal ``5000 * 200 s / crop_h`` and principal
    point the bbox centre (the crop camera mapped back through the inverse crop transform)."""
    t = camera.full_translation(cam, batch)
    if camera.kind == "cliff":
        f = batch["focal_length"].to(t.dtype)
        c = torch.stack([batch["img_w"], batch["img_h"]], dim=-1).to(t.dtype) / 2.0
    else:
        f = (constants.FOCAL_LENGTH * 200.0 * batch["scale"] / camera.crop_h).to(t.dtype)
        c = batch["center"].to(t.dtype)
    return t, f, c


def person_record(pred: Prediction, batch: dict, camera) -> list[dict]:
    """Per-person result arrays (numpy) of a batch, as written to ``<stem>_person<i>.npz``.

    After TTO, and with ``_before`` at the loaded weights: pose [72] SMPL axis-angle, betas [10],
    cam_crop [3] (s, tx, ty), cam_t [3] (full-image camera translation, OpenCV axes, metres),
    joints_3d [49,3] (SPIN order, body frame: camera frame = joints_3d + cam_t), joints_2d [49,2]
    (full-image pixels), vertices [6890,3] (body frame), kp_error_px (confidence-weighted mean
    pixel distance of the OpenPose slots to the keypoints; NaN without keypoints). Once:
    focal_length, camera_center [2] (:func:`image_camera`), bbox_center [2], bbox_scale, img_h,
    img_w, keypoints [25,3] (the OpenPose input used: confidences <= --kp_threshold zeroed; zeros
    without keypoints), tto, tto_steps, nonfinite."""
    B, kp_full, cols = batch["img"].shape[0], batch["keypoints_full"], {}
    np_ = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
    for tag, p in (("", pred.after), ("_before", pred.before)):
        t, f, c = image_camera(camera, p["cam"], batch)
        j2d = perspective_projection(p["joints"], None, t, f, c)
        conf = kp_full[..., 2].to(j2d.dtype)
        w, d = conf.sum(-1), (j2d[:, :NUM_OPENPOSE] - kp_full[..., :2].to(j2d.dtype)).norm(dim=-1)
        cols.update({
            "pose" + tag: np_(rotmat_to_axis_angle(p["rotmat"].reshape(-1, 3, 3)).reshape(B, 72)),
            "betas" + tag: np_(p["betas"]), "cam_crop" + tag: np_(p["cam"]),
            "cam_t" + tag: np_(t), "joints_3d" + tag: np_(p["joints"]),
            "joints_2d" + tag: np_(j2d), "vertices" + tag: np_(p["vertices"]),
            "kp_error_px" + tag: np_(torch.where(w > 0, (conf * d).sum(-1) / w.clamp_min(1e-12),
                                                 torch.full_like(w, float("nan"))))})
    cols.update(focal_length=np_(f), camera_center=np_(c), bbox_center=np_(batch["center"]),
                bbox_scale=np_(batch["scale"]), img_h=np_(batch["img_h"]),
                img_w=np_(batch["img_w"]), keypoints=np_(kp_full),
                tto_steps=pred.steps.detach().cpu().numpy().astype(np.int64),
                nonfinite=pred.nonfinite.detach().cpu().numpy().astype(bool))
    return [{**{k: v[i] for k, v in cols.items()}, "tto": np.asarray(pred.tto)}
            for i in range(B)]


# one colour per person (RGB, 0..1), reused cyclically
PALETTE = ((0.65, 0.74, 0.86), (0.95, 0.62, 0.78), (0.70, 0.88, 0.65), (0.98, 0.80, 0.55),
           (0.78, 0.70, 0.92), (0.60, 0.88, 0.88))


def render_people(renderer, img_rgb: np.ndarray, records: list[dict], tag: str = "",
                  colors=PALETTE, draw_keypoints: bool = False) -> np.ndarray:
    """Every person's mesh over the full image (far people first, near ones drawn over them);
    records: :func:`person_record` dicts; tag: '' (after TTO) or '_before'. [H, W, 3] uint8 RGB."""
    out = img_rgb
    for i in sorted(range(len(records)), key=lambda i: -float(records[i]["cam_t" + tag][2])):
        r = records[i]
        verts = r["vertices" + tag] + r["cam_t" + tag][None]
        if np.isfinite(verts).all() and (verts[:, 2] > 0).any():   # else nothing to draw
            out = renderer.render(verts, float(r["focal_length"]), r["camera_center"], out,
                                  color=colors[i % len(colors)])
    if draw_keypoints:
        from utils.renderer import draw_keypoints as draw
        for r in records:
            if (r["keypoints"][:, 2] > 0).any():
                out = draw(out, r["keypoints"], color=(255, 40, 40))
    return out


# -- the run -------------------------------------------------------------------------------------
@dataclass
class _Image:
    path: Path
    rgb: np.ndarray
    people: list            # prepare_person dicts
    person_ids: list        # index of each person in the keypoint / bbox file


class DemoRun:
    """One demo run (images or video frames): ``inputs`` (the images, or ``--video``'s (fps,
    frames)), ``source`` (the bbox entries; None with keypoints), the networks, the renderer and
    the summary. Fails before any work when a file is missing (:class:`config.MissingFileError`)
    or unusable (``SystemExit``: no image, an unreadable bbox file or video)."""

    def __init__(self, o, log=None):
        from train.evaluation import build_eval_networks, read_eval_checkpoint
        from utils.renderer import Renderer   # pyrender: imported when needed
        self.log = log = log or tqdm.write
        paths = DataPaths.from_options(o)
        if o.synthetic:
            from datasets.synthetic import build_world
            build_world(paths.root)
        video = None if o.video is None else require(o.video, "video (--video)")
        self.out_dir = Path(o.out_dir)
        file = next(q for q in (self.out_dir, *self.out_dir.parents) if q.exists())
        if not file.is_dir():   # checked here, created later
            raise SystemExit(f"error: --out_dir {self.out_dir}: {file} is a file, not a folder. "
                             f"Pass a folder path")
        paths.release_checkpoint(o.checkpoint)
        paths.smpl_model("neutral")
        paths.smpl_mean_params()
        paths.j_regressor_extra()
        if o.from_dataset is not None:
            o = argparse.Namespace(**vars(o))   # a copy: the caller's options stay as given
            o.img_dir, o.openpose_dir = map(str, export_dataset_inputs(
                paths, o.from_dataset, Path(o.out_dir) / "inputs", o.max_images))
        if video is None and not require(o.img_dir, "image folder (--img_dir)").is_dir():
            raise SystemExit(f"error: --img_dir {Path(o.img_dir)} is not a folder")
        self.tto = o.openpose_dir is not None
        self.source = None if self.tto else load_bbox_file(o.bbox_file)
        if self.tto and not require(o.openpose_dir,
                                    "OpenPose keypoint folder (--openpose_dir)").is_dir():
            raise SystemExit(f"error: --openpose_dir {o.openpose_dir} is not a folder")
        other = []   # --img_dir entries that are not image files: said, and in summary.json
        if video is None:
            images, img_dir = list_images(o.img_dir), Path(o.img_dir)
            if other := sorted({p.name for p in img_dir.iterdir()} - {p.name for p in images}):
                log(f"[demo] {img_dir}: ignoring {len(other)} entries that are not image files "
                    f"({', '.join(IMAGE_EXTS)}): {', '.join(other[:5])}"
                    f"{' ...' if len(other) > 5 else ''}")
            self.inputs = images[:o.max_images or None]
            if not self.inputs:
                raise SystemExit(f"error: no image ({', '.join(IMAGE_EXTS)}) in {img_dir}")
            stems = collections.Counter(p.stem for p in self.inputs)
            if same := sorted(p.name for p in self.inputs if stems[p.stem] > 1):
                raise SystemExit(f"error: {', '.join(same[:6])} in {img_dir} share a name (their "
                                 f"keypoint files and outputs are named by it). Rename or move all "
                                 f"but one")
        else:
            try:
                self.inputs = read_video(video, o.every)
            except DemoInputError as e:
                raise SystemExit(f"error: {e}") from None
        seed_everything(o.seed)
        self.device = select_device(o.device)
        self.model, self.model_aux = build_eval_networks(   # the options it records decide
            o, paths, *read_eval_checkpoint(o, paths, log=log))
        for net in (self.model, self.model_aux):
            place(net, self.device, o.memory_format)
        self.smpl = build_smpl(paths, "neutral").to(self.device)
        self.faces = np.asarray(self.smpl.faces, dtype=np.int64)
        self.camera, self.cfg, self.o = Camera.from_options(o), TTOConfig.from_options(o), o
        self.renderer = Renderer(self.faces, backend=o.render_backend)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = Summary(images=0 if video else len(self.inputs),   # frames: as read
                               ignored=other)

    def load(self, path: Path, rgb: np.ndarray | None = None) -> _Image | None:
        """One image (or video frame ``rgb`` named ``path``) and its people; bad input is
        reported, counted (:meth:`Summary.skip`), and gives None."""
        o, skip = self.o, partial(self.summary.skip, path, log=self.log)
        try:
            if self.tto:
                kp_file = Path(o.openpose_dir) / f"{path.stem}_keypoints.json"
                if not kp_file.is_file():
                    return skip("no_keypoint_file", f"no keypoint file {kp_file}")
                raw = read_openpose_json(kp_file)
            elif (raw := bboxes_for(self.source, path)) is None:
                return skip("no_bbox", f"no entry for {path.name} in {o.bbox_file}")
        except DemoInputError as e:
            return skip("bad_annotation", str(e))
        if not raw:
            return skip("no_people", "the keypoint / bbox entry lists no people")
        rgb = read_image(path) if rgb is None else rgb
        if rgb is None:
            return skip("unreadable_image", f"cannot read image {path} (corrupt or not an image)")
        h, w = rgb.shape[:2]
        focal = float(o.focal_length) if o.focal_length else float(imutils.diagonal_focal(h, w))
        people, ids, dropped = [], [], []
        for i, item in enumerate(raw):
            box = self._box(path, i, item, (h, w))
            if isinstance(box, str):
                dropped.append(f"{'person' if self.tto else 'box'} {i}: {box}")
                continue
            center, scale, kp = box
            people.append(prepare_person(rgb, center, scale, focal, o.bbox_type, kp, o.crop_scale))
            ids.append(i)
        if not people:
            return skip("no_usable_people", "; ".join(dropped))
        if dropped:
            self.summary.people_skipped += len(dropped)
            self.log(f"[demo] {path.name}: skipped " + "; ".join(dropped))
        return _Image(path, rgb, people, ids)

    def _box(self, path: Path, i: int, item: np.ndarray, hw: tuple) -> tuple | str:
        """Entry ``i`` of an image of ``hw`` (height, width) -> (center, scale, keypoints or None),
        or why it is unusable (:func:`box_problem`, :func:`keypoints_problem`, too few confident
        keypoints, :func:`keypoint_box_problem`); a few confident keypoints far outside the image
        are ignored, with a warning."""
        if not self.tto:
            return box_problem(item, hw) or (*bbox_from_xywh(item), None)
        o = self.o
        if why := keypoints_problem(item, o.kp_threshold, hw):
            return why
        center, scale, n, kp = bbox_from_openpose(item, o.kp_threshold, hw)
        if far := int(((np.asarray(item)[:, 2] > o.kp_threshold) & (kp[:, 2] == 0)).sum()):
            self.log(f"warning: {path.name} person {i}: {far} confident keypoint(s) far "
                     f"outside the image ignored")
        if n < o.min_keypoints:
            return f"{n} keypoints with confidence > {o.kp_threshold} (need {o.min_keypoints})"
        return keypoint_box_problem(kp) or (center, scale, kp)

    def _write(self, img: _Image, records: list[dict], overlay_sink=None) -> None:
        """Write the npz (and obj) files and the overlay of one image, then log and count it.
        Each record keeps the better prediction (:func:`~train.demo_report.judge_finite`: the
        overlay's right panel shows it; a non-finite one is dropped, an image left without
        people is skipped)."""
        from utils.renderer import make_grid, save_obj
        o, stem, files, summary = self.o, img.path.stem, [], self.summary
        judged, dropped = judge_finite(img.person_ids, records)
        if not judged:
            return summary.skip(img.path, "error", "; ".join(dropped), self.log)
        if dropped:
            summary.people_skipped += len(dropped)
            self.log(f"[demo] {img.path.name}: skipped " + "; ".join(dropped))
        pids, records, statuses = zip(*judged)
        for pid, rec in zip(pids, records):
            p = self.out_dir / f"{stem}_person{pid}.npz"
            np.savez(p, image=np.asarray(img.path.name), person=np.asarray(pid), **rec)
            files.append(p.name)
            if o.save_obj:
                files.append(save_obj(rec["vertices"] + rec["cam_t"][None], self.faces,
                                      self.out_dir / f"{stem}_person{pid}.obj").name)
        overlay = make_grid([render_people(self.renderer, img.rgb, records, tag,
                                           draw_keypoints=o.draw_keypoints)
                             for tag in (("_before", "") if self.tto else ("",))])
        if overlay_sink is not None:
            overlay_sink(overlay)
        else:
            path = self.out_dir / f"{stem}_overlay.jpg"
            if not write_image(path, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not encode {path}")
            files.append(path.name)
        errors = {k: [float(r[k]) for r in records]
                  for k in ("kp_error_px_before", "kp_error_px", "kp_error_px_tto")}
        summary.per_image[img.path.name] = status = {
            "status": "ok", "people": len(records), "files": files, "person_status": list(statuses),
            **errors, "tto_steps": [int(r["tto_steps"]) for r in records]}
        self.log(image_line(img.path.name, status))
        summary.tto_rejected += sum(st in ("tto_worse", "tto_diverged") for st in statuses)
        summary.processed += 1
        summary.people += len(records)
        summary.nonfinite += int(sum(bool(r["nonfinite"]) for r in records))

    def flush(self, pending: list[_Image], overlay_sink=None) -> None:
        """Predict every person of ``pending`` and write each image's results
        (``overlay_sink(overlay_rgb)`` instead of ``<stem>_overlay.jpg`` when given)."""
        people, records, summary = [p for img in pending for p in img.people], [], self.summary
        try:
            for s in range(0, len(people), self.o.batch_size):
                batch = {k: v.to(self.device)
                         for k, v in collate(people[s:s + self.o.batch_size]).items()}
                pred = predict(self.model, self.model_aux, batch, self.smpl, self.camera,
                               self.cfg, self.tto)
                records += person_record(pred, batch, self.camera)
        except Exception as e:  # noqa: BLE001 - reported per image; the run goes on
            for img in pending:
                summary.skip(img.path, "error", f"prediction failed: {type(e).__name__}: {e}",
                             self.log)
            return
        for img in pending:
            recs, records = records[:len(img.people)], records[len(img.people):]
            try:
                self._write(img, recs, overlay_sink)
            except Exception as e:  # noqa: BLE001
                summary.skip(img.path, "error", f"writing results failed: "
                             f"{type(e).__name__}: {e}", self.log)

    def finish(self, **extra) -> dict:
        """Close the renderer, write ``summary.json`` (strict JSON: NaN is null), log the
        summary; returns the summary dict."""
        self.renderer.close()
        result = {**asdict(self.summary), "out_dir": str(self.out_dir), "tto": self.tto, **extra}
        write_json(self.out_dir / "summary.json", result)
        self.log(self.summary.text())
        return result


def run_demo(o, log=None) -> dict:
    """The whole demo (module docstring); returns the summary dict (also ``summary.json``).
    Fails before any work as :class:`DemoRun` does."""
    run, pending = DemoRun(o, log), []
    try:
        for path in tqdm(run.inputs, desc="demo", unit="img", disable=None):
            if (img := run.load(path)) is not None:
                pending.append(img)
            if pending and sum(len(i.people) for i in pending) >= run.o.batch_size:
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
        result = (run_demo if options.video is None else run_video)(options)
    except MissingFileError as e:
        raise SystemExit(f"error: {e}") from e
    if result["images"] and not result["processed"]:   # issue #13 point 10
        raise SystemExit(f"error: none of the {result['images']} image(s) could be processed "
                         f"(reasons above and in {Path(result['out_dir']) / 'summary.json'}). "
                         f"Check the images and their keypoint / bbox files")
    return result
