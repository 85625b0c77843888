"""SPIN-format datasets: npz annotations + images -> augmented crops (upstream-behaviour.md §6).

The npz is read and checked once (:mod:`datasets.annotations`); an item runs §6.3 on one image:
keypoints (49, 3) = OpenPose 25 + GT 24 (3DPW: image, keypoints and focal halved), the bbox from
the visible GT keypoints (the npz center/scale are ignored), the training draws, flip, rotation,
crop, occluders, pixel noise and normalisation. Bad data raises :class:`DatasetError` naming
file, sample and problem; so does an unreadable image unless ``skip_bad_images``: training then
uses the next readable one, a test set returns ``{'skipped': True, ...}`` for
:func:`collate_skipping` to leave out.
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
           "collate_skipping"]

OCCLUDED_DATASETS = ("h36m", "mpi-inf-3dhp")   # --syn_occ applies to their training samples
HALF_SIZE_DATASETS = ("3dpw",)                 # images at half resolution (§6.3 item 1)
GENDERED_TEST_SETS = ("3dpw",)   # test GT from the gendered SMPL: 'gender' is required
_NOTED: set[str] = set()         # test files whose missing 'S' was already said


def _opt(options, name, default):
    return default if (value := getattr(options, name, default)) is None else value


def _first(bad: np.ndarray) -> int:
    return int(np.argmax(bad))


class BaseDataset(Dataset):
    """One SPIN-format dataset ``dataset`` (a ``config.DATASET_FILES`` name), training split with
    augmentation or test split without. ``options`` attributes that are missing or None take
    the defaults below; ``paths`` defaults to ``DataPaths.from_options(options)``."""

    def __init__(self, options, dataset: str, is_train: bool, paths: DataPaths | None = None):
        super().__init__()
        self.options, self.dataset, self.is_train = options, dataset, bool(is_train)
        self.paths = paths if paths is not None else DataPaths.from_options(options)
        self.bbox_type = _opt(options, "bbox_type", "rect")
        self.crop_h, self.crop_w = constants.crop_size(
            self.bbox_type, float(_opt(options, "crop_scale", 1.0)))
        self.rot_factor = float(_opt(options, "rot_factor", 30.0))
        self.noise_factor = float(_opt(options, "noise_factor", 0.4))
        self.scale_factor = float(_opt(options, "scale_factor", 0.25))
        # training only, like every augmentation (§6.3): a test set keeps its 3D labels, which
        # the test-time pseudo-label loss masks by, and its pixels
        self.ignore_3d, self.use_alb, syn_occ = (bool(_opt(options, k, False)) and self.is_train
                                                 for k in ("ignore_3d", "ALB", "syn_occ"))
        self.use_syn_occ = syn_occ and dataset in OCCLUDED_DATASETS
        self.skip_bad_images = bool(_opt(options, "skip_bad_images", False))
        self.half_size = dataset in HALF_SIZE_DATASETS
        self.npz_file = self.paths.dataset_npz(dataset, self.is_train)
        self.img_dir = self.paths.image_folder(dataset)
        # occluders: only needed (and only required to exist) when they will be used (D8)
        self.occluder = SyntheticOcclusion(self.paths.occluders()) if self.use_syn_occ else None
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
        # 2D keypoints (float64 through bbox, affine and keypoint map, as released) and the bbox
        self.part = data["part"].astype(np.float64)
        self.openpose = (data["openpose"].astype(np.float64) if "openpose" in data
                         else np.zeros((n, 25, 3), np.float64))
        if self.half_size:
            self.part[..., :2] /= 2
            self.openpose[..., :2] /= 2
        self.center, self.scale, n_vis = imutils.bbox_from_keypoints(self.part)
        for bad, what in ((n_vis == 0, "no visible GT 2D keypoint ('part' confidence > 0) to "
                                       "build the bbox"),
                          (self.scale <= 0, "degenerate bbox: all visible GT 2D keypoints at "
                                            "one point")):
            if bad.any():
                raise self._fail(f"{what} ({int(bad.sum())} such samples, first is "
                                 f"{_first(bad)})", _first(bad))
        # SMPL pose / shape, has_smpl and the 3D joints S (none under --ignore_3d)
        self.has_pose_shape = "pose" in data
        if self.has_pose_shape:
            self.pose = data["pose"].astype(np.float32)
            self.betas = data["shape"][:, :10].astype(np.float32)
        if "has_smpl" in data:
            self.has_smpl = data["has_smpl"].astype(np.float32)
            if not self.has_pose_shape and (self.has_smpl != 0).any():
                raise self._fail("'has_smpl' is set but the file has no 'pose'/'shape'",
                                 _first(self.has_smpl != 0))
        else:
            self.has_smpl = np.full(n, 1.0 if self.has_pose_shape else 0.0, np.float32)
        self.has_pose_3d = float("S" in data)
        if "S" in data:   # (N, 24, 3) without the confidence column: all joints valid
            s = data["S"].astype(np.float32)
            self.pose_3d = np.pad(s, ((0, 0), (0, 0), (0, 4 - s.shape[2])), constant_values=1)
        if self.ignore_3d:
            self.has_smpl, self.has_pose_3d = np.zeros(n, np.float32), 0.0
        if "gender" in data:
            g = np.char.lower(np.char.strip(data["gender"].astype(str)))
            # the release reads anything but 'm' as female; in a test set (scored against the
            # gendered meshes) another value is a broken file. Training does not read it.
            if not self.is_train and (bad := ~np.isin(g, ("m", "f"))).any():
                raise self._fail(f"'gender' holds {sorted(set(g[bad].tolist()))[:5]} "
                                 f"({int(bad.sum())} samples, first is {_first(bad)}); expected "
                                 f"'m' or 'f' per sample", _first(bad))
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
            f = np.broadcast_to(data["focal_length"].astype(np.float64).reshape(-1), (n,)).copy()
            if (f <= 0).any():
                raise self._fail(f"'focal_length' is not positive ({f[_first(f <= 0)]})",
                                 _first(f <= 0))
            self.focal_length = f / 2 if self.half_size else f
        self.maskname, self.partname = (data[k].astype(str) if k in data else np.full(n, "")
                                        for k in ("maskname", "partname"))
        if not self.is_train:
            self._check_test_inputs(data)

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
        img, why = read_image_file(self.image_path(index))
        if img is not None and self.half_size:
            h, w = img.shape[:2]
            if min(h // 2, w // 2) < MIN_IMAGE_SIDE:
                return None, f"image is {w}x{h} pixels, too small to halve (3DPW) and crop"
            img = cv2.resize(img, (w // 2, h // 2))
        return img, why

    def read_image(self, index: int) -> np.ndarray | None:
        """BGR uint8 image (halved for 3DPW); None if bad and ``skip_bad_images``."""
        img, why = self._load_image(index)
        if img is None:
            self._bad_image(index, why)
        return img

    def _named_with_folder(self, index: int) -> str | None:
        """The existing file that a missing image means when its imgname starts with the
        image folder itself ('pw3d/...' or 'datasets/pw3d/...'), else None."""
        paths = (os.path.join(base, self.imgname[index])
                 for base in (self.img_dir.parent, self.img_dir.parent.parent))
        return next((p for p in paths if os.path.isfile(p)
                     and Path(p).resolve().is_relative_to(self.img_dir.resolve())), None)

    def _bad_image(self, index: int, why: str) -> None:
        """Raise for an unreadable image, or warn once (``skip_bad_images``)."""
        path = self.image_path(index)
        if not self.skip_bad_images:
            what = ("replace bad images by the next readable one" if self.is_train else
                    "leave such samples out of the metrics")
            if why == "file does not exist" and (found := self._named_with_folder(index)):
                raise self._fail(f"cannot read image {path}: {why}, but {found} does: this "
                                 f"file's imgname starts with the image folder, which is "
                                 f"joined already. Remove that prefix from its imgname "
                                 f"(names relative to {self.img_dir})", index)
            raise self._fail(f"cannot read image {path}: {why}. Replace the file, or pass "
                             f"--skip_bad_images to {what}", index)
        if not self._warned_skip:
            warnings.warn(f"{self.dataset}: skipping unreadable image {path} (sample {index}): "
                          f"{why}; later skips are only counted", stacklevel=4)
            self._warned_skip = True

    # -- one sample --------------------------------------------------------------------------
    def augm_params(self):
        """(flip, pixel noise [3], rot, scale): training draws from numpy's global state in the
        released order (rot zeroed 60% of the time); a test set: (0, None, 0, 1)."""
        if not self.is_train:
            return 0, None, 0.0, 1.0
        rf, sf = self.rot_factor, self.scale_factor
        flip = 1 if np.random.uniform() <= 0.5 else 0
        pn = np.random.uniform(1 - self.noise_factor, 1 + self.noise_factor, 3)
        rot = min(2 * rf, max(-2 * rf, np.random.randn() * rf))
        sc = min(1 + sf, max(1 - sf, np.random.randn() * sf + 1))
        return flip, pn, 0.0 if np.random.uniform() <= 0.6 else float(rot), float(sc)

    def __getitem__(self, index):
        index = int(index)
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.dataset} "
                             f"({self.npz_file}) of {self.n} samples")
        start = index % self.n
        for skipped in range(self.n):
            index = (start + skipped) % self.n
            img, why = self._load_image(index)
            if img is not None:
                return {**self._process(index, img), "n_skipped": skipped}
            self._bad_image(index, why)       # raises unless skip_bad_images
            self._skipped += 1
            if not self.is_train:             # test sets: left out, never replaced
                return {"skipped": True, "sample_index": index,
                        "imgname": self.image_path(index), "reason": why}
        raise self._fail(f"no readable image in the whole dataset (tried all {self.n} "
                         f"samples, starting at {start}; images under {self.img_dir})")

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
        full_trans, crop_trans, inv_trans = (
            imutils.get_affine_transform(center, scale, r, (self.crop_w, self.crop_h), inv=inv)
            for r, inv in ((rot, False), (0.0, False), (0.0, True)))
        img_t = self._crop(img, full_trans, pn)
        kp_crop = keypoints.copy()
        kp_crop[:, :2] = imutils.transform_points(keypoints[:, :2].astype(np.float64), full_trans)
        focal = (float(self.focal_length[index]) if self.focal_length is not None
                 else float(imutils.diagonal_focal(img_h, img_w)))
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return dict(img=img_t, **{k: f32(v) for k, v in dict(
            keypoints=kp_crop, keypoints_full=keypoints, pose=pose, betas=betas, pose_3d=pose_3d,
            has_smpl=self.has_smpl[index], has_pose_3d=self.has_pose_3d, scale=scale,
            center=center, orig_shape=[img_h, img_w], img_h=img_h, img_w=img_w,
            focal_length=focal, bbox_info=imutils.bbox_info(center, scale, img_h, img_w, focal),
            full_trans=full_trans, crop_trans=crop_trans, inv_trans=inv_trans).items()},
            is_flipped=int(flip), rot_angle=f32(rot), scale_factor=f32(sc),
            gender=int(self.gender[index]), sample_index=index, dataset_name=self.dataset,
            imgname=self.image_path(index), maskname=str(self.maskname[index]),
            partname=str(self.partname[index]))

    def _crop(self, img: np.ndarray, full_trans: np.ndarray, pn) -> torch.Tensor:
        """(--ALB,) the affine crop, (occluders,) pixel noise, ImageNet normalisation: CHW
        float32. BGR until the crop exists (cheaper), RGB from there on."""
        if self.use_alb:
            img = imutils.photometric_augment(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        crop = cv2.warpAffine(img, full_trans, (self.crop_w, self.crop_h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        if not self.use_alb:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        if self.occluder is not None:
            crop = self.occluder(crop)
        return torch.from_numpy(imutils.normalize_image(crop, pn))


def collate_skipping(items: list[dict]) -> dict:
    """``collate_fn`` for test sets read with ``skip_bad_images``: skipped items are left out
    and listed under ``batch['skipped']`` (sample_index, imgname, reason); a batch of only
    skipped samples has no other key."""
    good = [it for it in items if not it.get("skipped")]
    bad = [{k: it[k] for k in ("sample_index", "imgname", "reason")}
           for it in items if it.get("skipped")]
    return {**(torch.utils.data.default_collate(good) if good else {}), "skipped": bad}
