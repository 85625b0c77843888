"""User inputs of the demo: image and video listings, OpenPose BODY_25 JSON files, bbox files,
boxes from them, a test set written out as such inputs, and one person's network input. Parsing
errors are :class:`DemoInputError` naming the file or entry: the demo reports them per image."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

import constants
from config import DataPaths, require
from datasets.annotations import DatasetError, check_annotations, read_annotations
from datasets.image_files import decode_image, opencv_can_open, write_image
from utils import imutils
from utils.jsonio import dumps

__all__ = ["DemoInputError", "IMAGE_EXTS", "NUM_OPENPOSE", "list_images", "read_openpose_json",
           "load_bbox_file", "bboxes_for", "bbox_from_openpose", "bbox_from_xywh", "far_outside",
           "box_problem", "keypoints_problem", "keypoint_box_problem", "export_dataset_inputs",
           "prepare_person", "collate", "read_video", "read_image", "sample_name"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NUM_OPENPOSE = 25
FAR_OUTSIDE = 0.5   # keypoints beyond this fraction of the image's larger side outside it
MIN_BOX_SIDE = 2.0  # pixels: a box (or the keypoints' span) smaller on every side holds no person


class DemoInputError(ValueError):
    """A per-image input (keypoint file, bbox entry) is malformed; the message says what."""


def read_video(path, every: int = 1):
    """(fps, iterator of (name, [H, W, 3] uint8 RGB)): every ``every``-th frame from 0, named as
    OpenPose names it, ``<video stem>_<frame:012d>``. Raises :class:`DemoInputError` when OpenCV
    cannot open the file or it has no frame."""
    if not opencv_can_open(path):
        raise DemoInputError(f"{path}: OpenCV cannot open a video whose name is not valid "
                             f"UTF-8. Rename it")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoInputError(f"{path}: cannot open this video (not a video, or a codec OpenCV "
                             f"lacks). Convert it, e.g. to H.264 .mp4, or pass its frames as "
                             f"--img_dir")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    ok, bgr = cap.read()
    if not ok or bgr is None:
        cap.release()
        raise DemoInputError(f"{path}: this video has no readable frame")

    def frames(i=0, bgr=bgr):
        try:
            while bgr is not None:
                if i % every == 0:
                    yield f"{Path(path).stem}_{i:012d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                ok, bgr = cap.read()
                bgr, i = (bgr if ok else None), i + 1
        finally:
            cap.release()
    return (fps if fps > 0 else 25.0), frames()


def read_image(path) -> np.ndarray | None:
    """[H, W, 3] uint8 RGB of an image file (EXIF orientation applied, as OpenPose's OpenCV
    reader does; alpha dropped, 16-bit and grey converted), or None when it cannot be decoded
    (:func:`datasets.image_files.decode_image`: names not valid UTF-8 too)."""
    bgr = decode_image(path, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def list_images(img_dir) -> list[Path]:
    """Image files (by extension, case-insensitive) directly in ``img_dir``, sorted by name."""
    return sorted(p for p in Path(img_dir).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_openpose_json(path) -> list[np.ndarray]:
    """People of an OpenPose BODY_25 file -> list of [25, 3] float64 (x, y, confidence); an
    empty ``people`` list gives []. Raises :class:`DemoInputError` naming the file when it is not
    valid JSON, has no ``people`` list, or a ``pose_keypoints_2d`` is not 75 finite numbers."""
    try:
        with open(path, encoding="utf-8-sig") as f:   # (a byte-order mark is allowed)
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:   # (nesting too deep)
        raise DemoInputError(f"{path}: cannot read OpenPose JSON: {e}") from e
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise DemoInputError(f"{path}: expected an object with a 'people' list (OpenPose format)")
    out = []
    for i, person in enumerate(people):
        if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
            raise DemoInputError(f"{path}: people[{i}] has no 'pose_keypoints_2d' (the BODY_25 "
                                 f"body keypoints OpenPose writes with --write_json)")
        arr = _array(person["pose_keypoints_2d"])
        if arr is None or arr.shape != (3 * NUM_OPENPOSE,):
            raise DemoInputError(f"{path}: people[{i}].pose_keypoints_2d must be a flat list of "
                                 f"{3 * NUM_OPENPOSE} numbers (BODY_25 x, y, c), got shape "
                                 f"{None if arr is None else arr.shape}")
        if not np.isfinite(arr).all():
            raise DemoInputError(f"{path}: people[{i}].pose_keypoints_2d has NaN or inf")
        out.append(arr.reshape(NUM_OPENPOSE, 3))
    return out


def _array(value) -> np.ndarray | None:
    """Numbers (not booleans, not strings) as float64, else None."""
    try:
        arr = np.asarray(value)
        return arr.astype(np.float64) if arr.dtype.kind in "iuf" else None
    except (TypeError, ValueError):
        return None


def load_bbox_file(path) -> dict[str, list]:
    """``{image name: [[x, y, w, h], ...]}`` from a JSON file (read before any work). The file
    must exist (:class:`config.MissingFileError`) and be a JSON object; the entries are checked
    per image (:func:`bboxes_for`), so one bad entry skips one image."""
    p = require(path, "bbox file (--bbox_file)")
    try:   # (a byte-order mark is allowed)
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as e:
        raise SystemExit(f"error: --bbox_file {p}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SystemExit(f"error: --bbox_file {p}: expected a JSON object "
                         f"{{image name: [[x, y, w, h], ...]}}, got {type(data).__name__}")
    return data


def bboxes_for(entries: dict, image: Path) -> list[np.ndarray] | None:
    """The [4] float64 (x, y, w, h) boxes of ``image`` (looked up by file name, then stem); None
    without an entry. Raises :class:`DemoInputError` when the entry is not a list of 4-number
    lists (a single [x, y, w, h] is accepted too)."""
    if (key := next((k for k in (image.name, image.stem) if k in entries), None)) is None:
        return None
    if (arr := _array(entries[key])) is not None and arr.size == 0:
        return []
    arr = arr[None] if arr is not None and arr.shape == (4,) else arr
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise DemoInputError(f"bbox entry {key!r}: expected a list of [x, y, w, h] boxes, "
                             f"got {entries[key]!r:.200}")
    return list(arr)


def far_outside(points, image_hw) -> np.ndarray:
    """[N] bool: the (x, y) ``points`` ([N, >=2]) more than ``FAR_OUTSIDE`` times the larger
    side of an image of ``image_hw`` (height, width) outside it."""
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    wh = np.array(image_hw[::-1], dtype=np.float64)
    m = FAR_OUTSIDE * wh.max()
    return ((xy < -m) | (xy > wh + m)).any(axis=1)


def keypoints_problem(kp25, threshold: float, image_hw) -> str | None:
    """Why one person's [25, 3] OpenPose keypoints do not belong to an image of ``image_hw``,
    or None: more than half of its confident keypoints lie :func:`far_outside` it (a file of
    another image or resolution; a few such are glitches, for :func:`bbox_from_openpose`)."""
    kp = np.asarray(kp25, dtype=np.float64)
    confident = kp[:, 2] > threshold
    far = int((confident & far_outside(kp, image_hw)).sum())
    if 2 * far <= int(confident.sum()):
        return None
    h, w = image_hw
    return (f"{far} of its {int(confident.sum())} confident keypoints lie far outside the "
            f"{w}x{h} image (more than {FAR_OUTSIDE:g} x its larger side beyond the border): "
            f"the keypoint file seems to be of another image or resolution")


def box_problem(box, image_hw) -> str | None:
    """Why a detector box (x, y, w, h) cannot be used on an image of ``image_hw`` (height,
    width), or None: a side under 2 px, the box outside the image, or a corner
    :func:`far_outside` it (e.g. 1e300: its crop and camera would not be finite)."""
    x, y, bw, bh = shown = [float(v) for v in box]
    h, w = image_hw
    if not (bw >= MIN_BOX_SIDE and bh >= MIN_BOX_SIDE):
        return f"width and height must be at least {MIN_BOX_SIDE:g} px, got {shown}"
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        return f"{shown} lies outside the {w}x{h} image"
    if far_outside([[x, y], [x + bw, y + bh]], image_hw).any():
        return (f"{shown} reaches far outside the {w}x{h} image (more than {FAR_OUTSIDE:g} x "
                f"its larger side beyond the border): not a box of this image")
    return None


def keypoint_box_problem(kp25) -> str | None:
    """Why the keypoints used for one person's box ([25, 3], confidence > 0: the output of
    :func:`bbox_from_openpose`) give no box to crop, or None: all within [-1, 1] (coordinates
    normalised by OpenPose's ``--keypoint_scale`` 3 or 4, not pixels), or a span under
    ``MIN_BOX_SIDE`` px on both axes (coinciding points: no person)."""
    kp = np.asarray(kp25, dtype=np.float64)
    xy = kp[kp[:, 2] > 0, :2]
    if not len(xy):
        return "no confident keypoint"
    if (np.abs(xy) <= 1.0).all():
        return ("its confident keypoints all lie within [-1, 1]: normalised coordinates "
                "(OpenPose --keypoint_scale 3 or 4)? The demo needs pixels (OpenPose's "
                "default, --keypoint_scale 0)")
    w, h = xy.max(0) - xy.min(0)
    if not max(w, h) >= MIN_BOX_SIDE:
        return (f"its confident keypoints span {w:.3g} x {h:.3g} px (under {MIN_BOX_SIDE:g} px): "
                f"no person to crop")
    return None


def bbox_from_openpose(kp25, threshold: float, image_hw=None):
    """[25, 3] OpenPose keypoints -> (center [2], scale, n_confident, kp with conf zeroed).

    Keypoints with confidence <= ``threshold``, or :func:`far_outside` an image of ``image_hw``
    (a detector glitch: it would blow up the box and pull the test-time fit, issue #13 point 9)
    get confidence 0; the box is :func:`utils.imutils.bbox_from_keypoints` of the rest."""
    kp = np.array(kp25, dtype=np.float64)
    kp[kp[:, 2] <= threshold, 2] = 0.0
    if image_hw is not None:
        kp[far_outside(kp, image_hw), 2] = 0.0
    center, scale, n = imutils.bbox_from_keypoints(kp)
    return center, float(scale), int(n), kp


def bbox_from_xywh(box):
    """A detector box (x, y, w, h) -> (center [2], scale) by the keypoint boxes' rule (its corners
    as the keypoints: centre = box centre, ``scale = max(w 4/3, h) / 200 * 1.2``)."""
    x, y, w, h = (float(v) for v in box)
    center, scale, _ = imutils.bbox_from_keypoints(np.array([[x, y, 1.0], [x + w, y + h, 1.0]]))
    return center, float(scale)


def export_dataset_inputs(paths: DataPaths, dataset: str, out_dir,
                          max_images: int = 0) -> tuple[Path, Path]:
    """Copy images of a test set (``config.TEST_DATASETS``) and write their keypoints as
    OpenPose BODY_25 JSON files (in the stored image's pixels); returns (image folder, keypoint
    folder): ``out_dir/images/<name>.jpg`` (``.png``, its stored pixels, for an image with an EXIF
    orientation tag: :func:`_copy_as_stored`) and ``out_dir/openpose/<name>_keypoints.json``
    (:func:`sample_name`) for the first ``max_images`` samples (0: all), from the npz's
    'openpose' array. A bad npz, a set without 'openpose' or a missing image raise
    :class:`DatasetError`."""
    npz = paths.dataset_npz(dataset, is_train=False)
    data = read_annotations(npz)
    n = check_annotations(data, lambda msg, index=None: DatasetError(f"{npz}: {msg}"))
    if "openpose" not in data:
        raise DatasetError(f"{npz}: no 'openpose' keypoints in this {dataset} test set, so "
                           f"--from_dataset cannot use it. Choose a set with them, or run "
                           f"on --img_dir with --openpose_dir / --bbox_file")
    img_root, out = paths.image_folder(dataset), Path(out_dir)
    img_out, kp_out = out / "images", out / "openpose"
    img_out.mkdir(parents=True, exist_ok=True)
    kp_out.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for i in range(min(n, max_images) if max_images else n):
        rel = Path(str(data["imgname"][i]))
        name = sample_name(rel, dataset, i, names)
        if not (img_root / rel).is_file():
            raise DatasetError(f"{npz}, sample {i}: image {img_root / rel} does not exist. "
                               f"Restore the {dataset} images under {img_root}")
        _copy_as_stored(img_root / rel, img_out / name, rel.suffix)
        kp = np.asarray(data["openpose"][i], float).reshape(-1).tolist()
        (kp_out / f"{name}_keypoints.json").write_text(dumps(   # strict JSON
            {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": kp}]}))
    return img_out, kp_out


def sample_name(imgname, dataset: str, index: int, names: set) -> str:
    """A test-set sample's file name stem: ``<sequence>-<frame>`` for 3DPW, else the image stem;
    ``_<index>`` appended when ``names`` (which gets it) already holds the name."""
    p = Path(str(imgname))
    name = f"{p.parent.name}-{p.stem}" if dataset == "3dpw" else p.stem
    name = f"{name}_{index}" if name in names else name
    names.add(name)
    return name


def _copy_as_stored(src: Path, dst_stem: Path, suffix: str) -> None:
    """Copy a dataset image to ``dst_stem`` + ``suffix``, or, when it carries an EXIF orientation
    tag that turns it, write its stored pixels as ``dst_stem.png`` (lossless): the dataset's
    keypoints are in the stored pixels (its reader ignores the tag, as the release's decoder),
    the demo reads photos upright (as OpenPose does)."""
    from PIL import Image
    try:   # cheap test (no decode) before the exact one
        with Image.open(src) as im:
            tagged = im.getexif().get(0x0112, 1) != 1
    except Exception:  # noqa: BLE001 - not readable by Pillow: OpenCV decides below if needed
        tagged = False
    if tagged:
        stored = decode_image(src, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        shown = decode_image(src, cv2.IMREAD_COLOR)
        if stored is not None and (shown is None or not np.array_equal(stored, shown)):
            if write_image(dst_stem.with_name(dst_stem.name + ".png"), stored):
                return
    shutil.copyfile(src, dst_stem.with_name(dst_stem.name + suffix))


def prepare_person(img_rgb: np.ndarray, center, scale: float, focal: float, bbox_type: str,
                   openpose=None, crop_scale: float = 1.0) -> dict:
    """One person's network input, as the dataset builds it at evaluation (no augmentation).

    img_rgb: [H, W, 3] uint8 RGB; center [2] (pixels), scale (bbox height / 200); focal: in
    pixels; bbox_type: 'rect' (256x192) or 'square' (224x224), times ``crop_scale``; openpose:
    [25, 3] (pixels, confidence) or None. Returns tensors: img [3, crop_h, crop_w], keypoints
    [49, 3] (crop pixels: OpenPose in slots 0-24, GT slots zero), keypoints_full [25, 3], center
    [2], scale, img_h, img_w, focal_length, bbox_info [3], crop_trans [2, 3], has_smpl =
    has_pose_3d = 1 (see train/demo.py)."""
    crop_h, crop_w = constants.crop_size(bbox_type, crop_scale)
    h, w = img_rgb.shape[:2]
    trans = imutils.get_affine_transform(center, scale, 0.0, (crop_w, crop_h))
    crop = cv2.warpAffine(img_rgb, trans, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    kp, kp_full = np.zeros((constants.NUM_JOINTS_OUT, 3)), np.zeros((NUM_OPENPOSE, 3))
    if openpose is not None:
        kp_full = np.asarray(openpose, dtype=np.float64)
        kp[:NUM_OPENPOSE, :2] = imutils.transform_points(kp_full[:, :2], trans)
        kp[:NUM_OPENPOSE, 2] = kp_full[:, 2]
    f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return {"img": torch.from_numpy(imutils.normalize_image(crop)), "keypoints": f32(kp),
            "keypoints_full": f32(kp_full), "center": f32(center), "scale": f32(scale),
            "img_h": f32(h), "img_w": f32(w), "focal_length": f32(focal),
            "bbox_info": f32(imutils.bbox_info(center, scale, h, w, focal)),
            "crop_trans": f32(trans), "has_smpl": f32(1.0), "has_pose_3d": f32(1.0)}


def collate(people: list[dict]) -> dict:
    """Stack the tensors of :func:`prepare_person` dicts along a new batch dimension."""
    return {k: torch.stack([p[k] for p in people]) for k in people[0]}
