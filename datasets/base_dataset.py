"""SPIN-format datasets: npz annotations + images -> augmented crops (upstream-behaviour.md §6).

One :class:`BaseDataset` per (dataset name, split). The npz is read once in ``__init__`` and
validated (required keys, lengths, shapes, NaN/inf, a visible GT keypoint per sample); each
``__getitem__`` reads one image and runs the pipeline of §6.3:

1. keypoints (49, 3) = OpenPose 25 + GT 24; for 3DPW the image is resized to (W//2, H//2) and
   the keypoints and the npz focal length are halved;
2. bbox from the visible GT keypoints (x1.2, 4:3 rule); the npz center/scale are ignored;
3. training draws (numpy global state, in this order): flip ``uniform() <= 0.5``,
   ``pn = uniform(1-nf, 1+nf, 3)``, ``rot = clip(randn()*rf, -2rf, 2rf)``,
   ``sc = clip(randn()*sf + 1, 1-sf, 1+sf)``, then ``uniform() <= 0.6`` zeroes rot;
   ``scale *= sc``;
4. flip of image, centre (``x -> W-1-x``), keypoints, S and pose;
5. ``full_trans`` (rotated), ``crop_trans`` and ``inv_trans`` (not rotated), built as released
   (:func:`utils.imutils.get_affine_transform`: three float32 point pairs, then
   ``cv2.getAffineTransform``); keypoints (float64 from the npz on, as released) mapped with
   ``full_trans`` into crop pixels; S and the root orientation rotated by -rot;
6. image: optional photometric augmentation (``--ALB``, RGB kept), ``cv2.warpAffine``
   (bilinear, black border), synthetic occlusion (training h36m / mpi-inf-3dhp with
   ``--syn_occ``), pixel noise, ImageNet normalisation, CHW.

The npz is read without unpickling and checked (:mod:`datasets.annotations`: object arrays and
duplicated zip members are refused). Bad data raises :class:`DatasetError` naming the file, the
sample index and the problem; a 3DPW test file without ``gender``, and a test file without
usable ``openpose`` keypoints under ``--use_openpose2d``, are errors too. An image is unreadable
when it is missing, undecodable, a truncated JPEG, or under 2 pixels on a side
(:mod:`datasets.image_files`). With
``options.skip_bad_images`` a training set replaces an unreadable image by the next readable
one (index + 1, + 2, ... wrapping; each sample's ``n_skipped`` says how many were skipped to
produce it), while a test set returns ``{'skipped': True, 'sample_index', 'imgname',
'reason'}``, which :func:`collate_skipping` leaves out of the batch and lists, so that the
sample is never scored in another's place. ``dataset.n_skipped`` counts the skips over every
process that used this dataset object (DataLoader workers included, through a shared-memory
counter).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

import constants
from config import DataPaths
from datasets.annotations import DatasetError, check_annotations, read_annotations
from datasets.image_files import MIN_IMAGE_SIDE, read_image_file
from datasets.occlusion import SyntheticOcclusion
from utils import imutils

__all__ = ["BaseDataset", "DatasetError", "OCCLUDED_DATASETS", "HALF_SIZE_DATASETS",
           "collate_skipping", "read_image_file"]

OCCLUDED_DATASETS = ("h36m", "mpi-inf-3dhp")   # --syn_occ applies to their training samples
HALF_SIZE_DATASETS = ("3dpw",)                 # images at half resolution (§6.3 item 1)
GENDERED_TEST_SETS = ("3dpw",)   # test GT from the gendered SMPL: 'gender' is required
_NOTED: set[str] = set()         # test files whose missing 'S' was already said


def _opt(options, name, default):
    value = getattr(options, name, default)
    return default if value is None else value


class BaseDataset(Dataset):
    """One SPIN-format dataset.

    Args:
        options: namespace; reads ``bbox_type`` ('rect'), ``rot_factor`` (30), ``noise_factor``
            (0.4), ``scale_factor`` (0.25), ``ignore_3d``, ``syn_occ``, ``ALB``,
            ``skip_bad_images`` (all False by default); missing attributes take these defaults.
        dataset: dataset name of ``config.DATASET_FILES`` ('h36m', '3dpw', 'h36m-p2', ...).
        is_train: training split and augmentation, or test split without augmentation.
        paths: data layout; default ``DataPaths.from_options(options)``.
    """

    def __init__(self, options, dataset: str, is_train: bool, paths: DataPaths | None = None):
        super().__init__()
        self.options = options
        self.dataset = dataset
        self.is_train = bool(is_train)
        self.paths = paths if paths is not None else DataPaths.from_options(options)
        self.bbox_type = _opt(options, "bbox_type", "rect")
        self.crop_h, self.crop_w = constants.crop_size(
            self.bbox_type, float(_opt(options, "crop_scale", 1.0)))
        self.rot_factor = float(_opt(options, "rot_factor", 30.0))
        self.noise_factor = float(_opt(options, "noise_factor", 0.4))
        self.scale_factor = float(_opt(options, "scale_factor", 0.25))
        self.ignore_3d = bool(_opt(options, "ignore_3d", False))
        self.use_alb = bool(_opt(options, "ALB", False))
        self.skip_bad_images = bool(_opt(options, "skip_bad_images", False))
        self.half_size = dataset in HALF_SIZE_DATASETS
        self.use_syn_occ = (bool(_opt(options, "syn_occ", False)) and self.is_train
                            and dataset in OCCLUDED_DATASETS)
        self.npz_file = self.paths.dataset_npz(dataset, self.is_train)
        self.img_dir = self.paths.image_folder(dataset)
        # occluders: only needed (and only required to exist) when they will be used (D8)
        self.occluder = SyntheticOcclusion(self.paths.occluders()) if self.use_syn_occ else None
        # test sets leave an unreadable image's sample out (see collate_skipping), training
        # replaces it by the next readable one
        self.drop_bad_images = not self.is_train
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._warned_skip = False
        self._load(self.npz_file)

    # -- annotations -------------------------------------------------------------------------
    def _fail(self, msg: str, index: int | None = None) -> DatasetError:
        where = f"{self.npz_file}" + (f", sample {index}" if index is not None else "")
        return DatasetError(f"{self.dataset} ({where}): {msg}")

    def _load(self, path: Path) -> None:
        data = read_annotations(path)
        self.n = n = check_annotations(data, self._fail)
        self.imgname = data["imgname"].astype(str)
        self._load_keypoints(data)
        self._load_smpl(data)
        if "gender" in data:
            g = np.char.lower(np.char.strip(data["gender"].astype(str)))
            self.gender = np.where(g == "m", 0, 1).astype(np.int64)
        elif self.dataset in GENDERED_TEST_SETS and not self.is_train:
            raise self._fail("has no 'gender' array, which the 3DPW protocol needs (each "
                             "person is scored against the SMPL mesh of their gender). Use the "
                             "released 3dpw_test_w2d_smpl3d_gender_openpose.npz, or add a "
                             "'gender' array of 'm'/'f' per sample")
        else:
            self.gender = np.full(n, -1, np.int64)
        self.focal_length = None
        if "focal_length" in data:
            f = data["focal_length"].astype(np.float64).reshape(-1)
            f = np.broadcast_to(f, (n,)).copy()
            if (f <= 0).any():
                i = int(np.argmax(f <= 0))
                raise self._fail(f"'focal_length' is not positive ({f[i]})", i)
            self.focal_length = f / 2 if self.half_size else f
        self.maskname = data["maskname"].astype(str) if "maskname" in data else None
        if not self.is_train:
            self._check_test_inputs(data)
        self.partname = data["partname"].astype(str) if "partname" in data else None

    def _load_keypoints(self, data: dict) -> None:
        """GT and OpenPose 2D keypoints (halved for 3DPW) and the bbox built from them."""
        n = self.n
        # float64 through the bbox, the affine and the keypoint map, as released (§6.3 item 5)
        self.part = data["part"].astype(np.float64)
        self.openpose = (data["openpose"].astype(np.float64) if "openpose" in data
                         else np.zeros((n, 25, 3), np.float64))
        if self.half_size:
            self.part[..., :2] /= 2
            self.openpose[..., :2] /= 2
        center, scale, n_vis = imutils.bbox_from_keypoints(self.part)
        if (n_vis == 0).any():
            i = int(np.argmax(n_vis == 0))
            raise self._fail(f"no visible GT 2D keypoint ('part' confidence > 0) to build the "
                             f"bbox ({int((n_vis == 0).sum())} such samples, first is {i})", i)
        if (scale <= 0).any():
            i = int(np.argmax(scale <= 0))
            raise self._fail(f"degenerate bbox: all visible GT 2D keypoints at one point "
                             f"({int((scale <= 0).sum())} such samples, first is {i})", i)
        self.center, self.scale = center, scale

    def _load_smpl(self, data: dict) -> None:
        """SMPL pose / shape, ``has_smpl`` and the 3D joints ``S`` (none under --ignore_3d)."""
        n = self.n
        self.has_pose_shape = "pose" in data
        if self.has_pose_shape:
            self.pose = data["pose"].astype(np.float32)
            self.betas = data["shape"][:, :10].astype(np.float32)
        if "has_smpl" in data:
            self.has_smpl = data["has_smpl"].astype(np.float32)
            if not self.has_pose_shape and (self.has_smpl != 0).any():
                i = int(np.argmax(self.has_smpl != 0))
                raise self._fail("'has_smpl' is set but the file has no 'pose'/'shape'", i)
        else:
            self.has_smpl = np.full(n, 1.0 if self.has_pose_shape else 0.0, np.float32)
        self.has_pose_3d = 1.0 if "S" in data else 0.0
        if "S" in data:
            s = data["S"].astype(np.float32)
            if s.shape[2] == 3:  # no confidence column: all joints valid
                s = np.concatenate([s, np.ones_like(s[..., :1])], -1)
            self.pose_3d = s
        if self.ignore_3d:
            self.has_smpl = np.zeros(n, np.float32)
            self.has_pose_3d = 0.0

    def _check_test_inputs(self, data: dict) -> None:
        """Test sets: the inputs test-time optimisation reads must be there (issue #15 item 8)."""
        if _opt(self.options, "use_openpose2d", False) and (
                "openpose" not in data or not (data["openpose"][..., 2] > 0).any()):
            what = "no 'openpose' array" if "openpose" not in data else \
                "'openpose' keypoints that all have confidence 0"
            raise self._fail(f"has {what}, so --use_openpose2d would run test-time optimisation "
                             f"on an all-zero 2D loss. Drop --use_openpose2d (use the GT 2D "
                             f"keypoints) or use the *_openpose.npz file of the seed README")
        if "S" not in data and not self.ignore_3d and str(self.npz_file) not in _NOTED:
            _NOTED.add(str(self.npz_file))
            print(f"note: {self.dataset} ({self.npz_file}) has no 'S' (3D joints): the 3D "
                  f"keypoint term of the test-time pseudo-label loss is dropped for it",
                  file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return self.n

    @property
    def n_skipped(self) -> int:
        """Images skipped (missing/unreadable, with ``skip_bad_images``), all processes."""
        return int(self._skipped.item())

    # -- images ------------------------------------------------------------------------------
    def image_path(self, index: int) -> str:
        return os.path.join(self.img_dir, self.imgname[index])

    def _load_image(self, index: int) -> tuple[np.ndarray | None, str]:
        """(BGR uint8 image, halved for 3DPW, '') or (None, why it is unreadable)."""
        path = self.image_path(index)
        img, why = read_image_file(path)
        if img is not None and self.half_size:
            h, w = img.shape[:2]
            if min(h // 2, w // 2) < MIN_IMAGE_SIDE:
                return None, f"image is {w}x{h} pixels, too small to halve (3DPW) and crop"
            img = cv2.resize(img, (w // 2, h // 2))
        return img, why

    def _read_image(self, index: int) -> np.ndarray | None:
        """BGR uint8 image (halved for 3DPW); None if bad and ``skip_bad_images``."""
        img, why = self._load_image(index)
        if img is None:
            self._bad_image(index, why)
        return img

    def _bad_image(self, index: int, why: str) -> None:
        """Raise for an unreadable image, or warn once (``skip_bad_images``)."""
        path = self.image_path(index)
        if not self.skip_bad_images:
            what = ("leave such samples out of the metrics" if self.drop_bad_images else
                    "replace bad images by the next readable one")
            raise self._fail(f"cannot read image {path}: {why}. Replace the file, or pass "
                             f"--skip_bad_images to {what}", index)
        if not self._warned_skip:
            warnings.warn(f"{self.dataset}: skipping unreadable image {path} (sample {index}): "
                          f"{why}; later skips are only counted", stacklevel=4)
            self._warned_skip = True

    # -- one sample --------------------------------------------------------------------------
    def augm_params(self):
        """Draw (flip, pn, rot, sc) in the released order; eval: (0, None, 0, 1)."""
        if not self.is_train:
            return 0, None, 0.0, 1.0
        flip = 1 if np.random.uniform() <= 0.5 else 0
        pn = np.random.uniform(1 - self.noise_factor, 1 + self.noise_factor, 3)
        rot = min(2 * self.rot_factor, max(-2 * self.rot_factor,
                                           np.random.randn() * self.rot_factor))
        sc = min(1 + self.scale_factor, max(1 - self.scale_factor,
                                            np.random.randn() * self.scale_factor + 1))
        if np.random.uniform() <= 0.6:
            rot = 0.0
        return flip, pn, float(rot), float(sc)

    def __getitem__(self, index):
        index = int(index)
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.dataset} "
                             f"({self.npz_file}) of {self.n} samples")
        index %= self.n
        start, skipped = index, 0
        img, why = self._load_image(index)
        while img is None:
            self._bad_image(index, why)       # raises unless skip_bad_images
            self._skipped += 1
            if self.drop_bad_images:          # test sets: left out, never replaced
                return {"skipped": True, "sample_index": index,
                        "imgname": self.image_path(index), "reason": why}
            skipped += 1
            if skipped >= self.n:
                raise self._fail(f"no readable image in the whole dataset (tried all {self.n} "
                                 f"samples, starting at {start}; images under {self.img_dir})")
            index = (index + 1) % self.n
            img, why = self._load_image(index)
        item = self._process(index, img)
        item["n_skipped"] = skipped
        return item

    def _process(self, index: int, img: np.ndarray) -> dict:
        img_h, img_w = img.shape[:2]
        flip, pn, rot, sc = self.augm_params()
        center = self.center[index].copy()
        scale = float(self.scale[index]) * sc
        keypoints = np.concatenate([self.openpose[index], self.part[index]], 0)  # (49, 3)
        pose = self.pose[index].copy() if self.has_pose_shape else np.zeros(72, np.float32)
        betas = self.betas[index] if self.has_pose_shape else np.zeros(10, np.float32)
        pose_3d = self.pose_3d[index] if self.has_pose_3d else np.zeros((24, 4), np.float32)
        if flip:
            img = cv2.flip(img, 1)
            center[0] = img_w - 1 - center[0]
            keypoints = imutils.flip_keypoints_2d(keypoints, img_w, constants.J49_FLIP_PERM)
            pose_3d = imutils.flip_joints_3d(pose_3d, constants.J24_FLIP_PERM)
            pose = imutils.flip_smpl_pose(pose)
        if rot != 0.0 and self.has_pose_3d:
            pose_3d = imutils.rotate_points_inplane(pose_3d, rot)
        if rot != 0.0 and self.has_pose_shape:
            pose = imutils.rotate_root_orientation(pose, rot)
        out_size = (self.crop_w, self.crop_h)
        full_trans = imutils.get_affine_transform(center, scale, rot, out_size)
        crop_trans = imutils.get_affine_transform(center, scale, 0.0, out_size)
        inv_trans = imutils.get_affine_transform(center, scale, 0.0, out_size, inv=True)
        img_t = self._crop(img, full_trans, pn)
        kp_crop = keypoints.copy()
        kp_crop[:, :2] = imutils.transform_points(keypoints[:, :2].astype(np.float64), full_trans)
        focal = (float(self.focal_length[index]) if self.focal_length is not None
                 else float(imutils.diagonal_focal(img_h, img_w)))
        binfo = imutils.bbox_info(center, scale, img_h, img_w, focal)
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return {
            "img": img_t,
            "keypoints": f32(kp_crop),
            "keypoints_full": f32(keypoints),
            "pose": f32(pose),
            "betas": f32(betas),
            "pose_3d": f32(pose_3d),
            "has_smpl": f32(self.has_smpl[index]),
            "has_pose_3d": f32(self.has_pose_3d),
            "scale": f32(scale),
            "center": f32(center),
            "orig_shape": f32([img_h, img_w]),
            "img_h": f32(img_h),
            "img_w": f32(img_w),
            "focal_length": f32(focal),
            "bbox_info": f32(binfo),
            "full_trans": f32(full_trans),
            "crop_trans": f32(crop_trans),
            "inv_trans": f32(inv_trans),
            "is_flipped": int(flip),
            "rot_angle": f32(rot),
            "scale_factor": f32(sc),
            "gender": int(self.gender[index]),
            "sample_index": index,
            "dataset_name": self.dataset,
            "imgname": self.image_path(index),
            "maskname": "" if self.maskname is None else str(self.maskname[index]),
            "partname": "" if self.partname is None else str(self.partname[index]),
        }

    def _crop(self, img: np.ndarray, full_trans: np.ndarray, pn) -> torch.Tensor:
        """The network input: (photometric augmentation,) the affine crop, (occluders,) pixel
        noise and ImageNet normalisation; CHW float32. BGR until the crop exists (cheaper),
        RGB from there on."""
        out_size = (self.crop_w, self.crop_h)
        if self.use_alb:
            img = imutils.photometric_augment(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        crop = cv2.warpAffine(img, full_trans, out_size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        if not self.use_alb:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        if self.occluder is not None:
            crop = self.occluder(crop)
        return torch.from_numpy(imutils.normalize_image(crop, pn))


def collate_skipping(items: list[dict]) -> dict:
    """DataLoader ``collate_fn`` for test sets read with ``skip_bad_images``.

    Samples whose image was unreadable (``{'skipped': True, ...}`` items) are left out of the
    batch and listed under ``batch['skipped']`` (dicts with sample_index, imgname, reason);
    the others are collated as usual. A batch of only skipped samples has no other key.
    """
    from torch.utils.data import default_collate
    good = [it for it in items if not it.get("skipped")]
    bad = [{k: it[k] for k in ("sample_index", "imgname", "reason")}
           for it in items if it.get("skipped")]
    batch = default_collate(good) if good else {}
    batch["skipped"] = bad
    return batch
