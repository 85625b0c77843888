"""User inputs of the demo: image and video listings, OpenPose BODY_25 JSON files, bbox files,
and boxes from them; and a SPIN-format test set written out as such inputs.

Pure file-format code (nothing here runs a network). Parsing errors are
:class:`DemoInputError` naming the file or entry: the demo reports them per image and goes on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from config import DataPaths, require
from utils import imutils

__all__ = ["DemoInputError", "IMAGE_EXTS", "NUM_OPENPOSE", "list_images", "read_openpose_json",
           "load_bbox_file", "bboxes_for", "bbox_from_openpose", "bbox_from_xywh",
           "export_dataset_inputs", "gt_to_openpose"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NUM_OPENPOSE = 25


class DemoInputError(ValueError):
    """A per-image input (keypoint file, bbox entry) is malformed; the message says what."""


def list_images(img_dir) -> list[Path]:
    """Image files (by extension, case-insensitive) directly in ``img_dir``, sorted by name."""
    d = Path(img_dir)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_openpose_json(path) -> list[np.ndarray]:
    """People of an OpenPose BODY_25 file -> list of [25, 3] float64 (x, y, confidence).

    Raises :class:`DemoInputError` naming the file when it is not valid JSON, has no
    ``people`` list, or a person's ``pose_keypoints_2d`` is not 75 finite numbers.
    An empty ``people`` list gives an empty list.
    """
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DemoInputError(f"{path}: cannot read OpenPose JSON: {e}") from e
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise DemoInputError(f"{path}: expected an object with a 'people' list (OpenPose format)")
    out = []
    for i, person in enumerate(people):
        kp = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        try:
            arr = np.asarray(kp, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (3 * NUM_OPENPOSE,):
            got = None if arr is None else arr.shape
            raise DemoInputError(f"{path}: people[{i}].pose_keypoints_2d must be a flat list of "
                                 f"{3 * NUM_OPENPOSE} numbers (BODY_25 x, y, c), got shape {got}")
        if not np.isfinite(arr).all():
            raise DemoInputError(f"{path}: people[{i}].pose_keypoints_2d has NaN or inf")
        out.append(arr.reshape(NUM_OPENPOSE, 3))
    return out


def load_bbox_file(path) -> dict[str, list]:
    """``{image name: [[x, y, w, h], ...]}`` from a JSON file (read before any work).

    The file must exist (:class:`config.MissingFileError`) and be a JSON object; the entries
    themselves are checked per image (:func:`bboxes_for`), so one bad entry skips one image.
    """
    p = require(path, "bbox file (--bbox_file)")
    try:
        with open(p) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --bbox_file {p}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SystemExit(f"error: --bbox_file {p}: expected a JSON object "
                         f"{{image name: [[x, y, w, h], ...]}}, got {type(data).__name__}")
    return data


def bboxes_for(entries: dict, image: Path) -> list[np.ndarray] | None:
    """The boxes of ``image`` (looked up by file name, then stem); None when there is no entry.

    Returns a list of [4] float64 (x, y, w, h). Raises :class:`DemoInputError` when the entry
    is not a list of 4-number lists (a single [x, y, w, h] is accepted too).
    """
    key = image.name if image.name in entries else image.stem if image.stem in entries else None
    if key is None:
        return None
    value = entries[key]
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (4,):
        arr = arr[None]
    if arr is not None and arr.size == 0:
        return []
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise DemoInputError(f"bbox entry {key!r}: expected a list of [x, y, w, h] boxes, "
                             f"got {value!r:.200}")
    return list(arr)


def bbox_from_openpose(kp25, threshold: float):
    """[25, 3] OpenPose keypoints -> (center [2], scale, n_confident, kp with conf zeroed).

    Keypoints with confidence <= ``threshold`` get confidence 0; the box is
    :func:`utils.imutils.bbox_from_keypoints` of the rest (x1.2, 4:3 rule).
    """
    kp = np.array(kp25, dtype=np.float64)
    kp[kp[:, 2] <= threshold, 2] = 0.0
    center, scale, n = imutils.bbox_from_keypoints(kp)
    return center, float(scale), int(n), kp


def bbox_from_xywh(box):
    """A detector box (x, y, w, h) -> (center [2], scale) by the same rule as keypoint boxes
    (its corners as the keypoints: centre = box centre, ``scale = max(w 4/3, h) / 200 * 1.2``)."""
    x, y, w, h = (float(v) for v in box)
    corners = np.array([[x, y, 1.0], [x + w, y + h, 1.0]])
    center, scale, _ = imutils.bbox_from_keypoints(corners)
    return center, float(scale)


def export_dataset_inputs(paths: DataPaths, dataset: str, out_dir, indices=None,
                          keypoints: str = "openpose") -> tuple[Path, Path]:
    """Copy images of a test set and write their keypoints as OpenPose BODY_25 JSON files.

    Args:
        paths: data layout (e.g. ``DataPaths(Path("data/synthetic"))``).
        dataset: a test set name (``config.TEST_DATASETS``), e.g. 'h36m-p2' or '3dpw'.
        out_dir: gets ``images/<name>.jpg`` and ``openpose/<name>_keypoints.json``, where
            ``<name>`` is ``<sequence>-<frame>`` for 3DPW, the image stem otherwise.
        indices: sample indices (default: all).
        keypoints: 'openpose' (the npz ``openpose`` array) or 'gt' (the GT ``part`` joints in
            their OpenPose slots, :func:`gt_to_openpose`; for sets without OpenPose).
    Returns:
        (image folder, keypoint folder). Keypoints are in the stored image's pixels (the npz
        values; 3DPW images are stored at full size, as in the real set).
    """
    import shutil
    with np.load(paths.dataset_npz(dataset, is_train=False)) as z:
        data = {k: z[k] for k in ("imgname", "openpose", "part") if k in z.files}
    img_root = paths.image_folder(dataset)
    n = len(data["imgname"])
    indices = range(n) if indices is None else indices
    out = Path(out_dir)
    img_out, kp_out = out / "images", out / "openpose"
    img_out.mkdir(parents=True, exist_ok=True)
    kp_out.mkdir(parents=True, exist_ok=True)
    if keypoints == "openpose":
        if "openpose" not in data:
            raise ValueError(f"{dataset}: the npz has no 'openpose' keypoints; use keypoints='gt'")
        kp_all = data["openpose"]
    elif keypoints == "gt":
        kp_all = gt_to_openpose(data["part"])
    else:
        raise ValueError(f"keypoints must be 'openpose' or 'gt', got {keypoints!r}")
    names: set[str] = set()
    for i in indices:
        rel = Path(str(data["imgname"][i]))
        name = f"{rel.parent.name}-{rel.stem}" if dataset == "3dpw" else rel.stem
        if name in names:
            name = f"{name}_{i}"
        names.add(name)
        shutil.copyfile(img_root / rel, img_out / f"{name}{rel.suffix}")
        person = {"person_id": [-1], "pose_keypoints_2d": np.asarray(kp_all[i], float)
                  .reshape(-1).tolist()}
        with open(kp_out / f"{name}_keypoints.json", "w") as f:
            json.dump({"version": 1.3, "people": [person]}, f)
    return img_out, kp_out


# OpenPose slot <- GT-24 joint (spec §4.3 names): the limbs, nose, eyes, ears
_GT_TO_OP = {0: 19, 2: 8, 3: 7, 4: 6, 5: 9, 6: 10, 7: 11, 9: 2, 10: 1, 11: 0, 12: 3, 13: 4,
             14: 5, 15: 21, 16: 20, 17: 23, 18: 22}


def gt_to_openpose(part) -> np.ndarray:
    """[..., 24, 3] GT 2D joints -> [..., 25, 3] in OpenPose BODY_25 order.

    Only the joints both skeletons name are filled (limbs, nose, eyes, ears); the neck,
    mid-hip and feet slots stay 0 (confidence 0: ignored by the bbox and the TTO loss).
    """
    part = np.asarray(part, dtype=np.float64)
    op = np.zeros(part.shape[:-2] + (NUM_OPENPOSE, 3))
    for o_idx, g_idx in _GT_TO_OP.items():
        op[..., o_idx, :] = part[..., g_idx, :]
    return op
