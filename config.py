"""The data layout of the seed README under one root (decisions D10; the tree: README.md, "With
the real data"): ``--data_root`` (default ``.`` or env ``METAHMR_ROOT``), images under
``--img_root`` (default ``<data_root>/datasets``). A missing file is a :class:`MissingFileError`
naming it, where it was expected and where the seed README says to get it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError   # a leaf module without imports

SYNTHETIC_ROOT = "data/synthetic"

# npz annotation files under <root>/data/datasets/
DATASET_FILES = {
    "test": {
        "h36m-p1": "h36m_mosh_val_p1.npz",
        "h36m-p2": "h36m_mosh_val_p2_fixname_openpose.npz",
        "coco": "coco_2014_smpl_val_openpose.npz",
        "mpi-inf-3dhp": "mpi_inf_3dhp_valid_openpose.npz",
        "3dpw": "3dpw_test_w2d_smpl3d_gender_openpose.npz",
    },
    "train": {
        "h36m": "h36m_mosh_train_fixname.npz",
        "mpii": "mpii_smpl_w3d_train.npz",
        "coco": "coco_2014_smpl_train.npz",
        "mpi-inf-3dhp": "mpi_inf_3dhp_train_name_revised.npz",
        "3dpw": "3dpw_train_w2d_smpl3d_gender.npz",
    },
}
TEST_DATASETS = tuple(DATASET_FILES["test"])

# image folder (under img_root) of each dataset name; the npz imgname is joined onto it
DATASET_FOLDERS = {
    "h36m": "h36m", "h36m-p1": "h36m", "h36m-p2": "h36m",
    "coco": "coco", "3dpw": "pw3d", "mpii": "mpii", "mpi-inf-3dhp": "mpii3d",
}

# released weight files (relative to root) and where the seed README says to get them
_README = "the Meta-HMR README (https://github.com/fmx789/Meta-HMR)"   # the "seed README"
_SMPL_SRC = f"the SMPL website (https://smpl.is.tue.mpg.de/), {_README}, 'Data Preparation' step 1"
_SPIN_SRC = f"SPIN's data files (https://github.com/nkolot/SPIN), {_README}, step 2"
_CLIFF_SRC = f"the CLIFF Google Drive folder named in {_README}, step 2"
_BACKBONE_SRC = f"the pretrained-weights Google Drive folder of {_README}, step 3"
_CKPT_SRC = f"the Meta-HMR checkpoint Google Drive folders of {_README}, step 4"
_DATASET_SRC = ("the official dataset websites (images) and SPIN/CLIFF (npz annotations), "
                f"{_README}, step 2; or build the synthetic stand-in world with "
                "`python -m datasets.synthetic --root data/synthetic`")

BACKBONE_FILES = {  # main-network backbone initialisation
    "resnet": "models/backbones/pose_resnet.pth",
    "hrnet": "models/backbones/pose_hrnet_w48_256x192.pth",
    "resnet18": "models/backbones/resnet18.pth",  # our small extra backbone
}
AUX_FILES = {  # aux-network initialisation, by (model, backbone)
    ("cliff", "resnet"): "models/ckpt/res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt",
    ("cliff", "hrnet"): "models/ckpt/hr48-PA43.0_MJE69.0_MVE81.2_3dpw.pt",
    ("hmr", "resnet"): "models/ckpt/hmr.pt",
    ("cliff", "resnet18"): "models/ckpt/cliff_res18.pt",   # our small extra backbone
    ("hmr", "resnet18"): "models/ckpt/hmr_res18.pt",
}


class MissingFileError(UserError, FileNotFoundError):
    """A file of the data layout is missing; the message says what, where and from where."""


def require(path: str | os.PathLike, what: str, source: str = "") -> Path:
    """``Path(path)`` if it exists, else a :class:`MissingFileError` naming ``what`` (e.g.
    "SMPL neutral body model") and, if given, ``source``: where to get it."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{what} not found: expected at {p.resolve()}"
                               + (f". Get it from {source}" if source else ""))
    return p


def default_root() -> str:
    return os.environ.get("METAHMR_ROOT", ".")


@dataclass(frozen=True)
class DataPaths:
    """All paths of the layout, under ``root`` (and ``img_root`` for the raw images)."""

    root: Path = Path(".")
    img_root: Path | None = None

    def __post_init__(self):   # accept str paths
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "img_root", None if self.img_root is None else Path(self.img_root))

    @classmethod
    def from_options(cls, options) -> "DataPaths":
        """Build from parsed options having ``data_root`` and optionally ``img_root``."""
        return cls(getattr(options, "data_root", None) or default_root(),
                   getattr(options, "img_root", None) or None)

    def check_root(self) -> None:
        """Raise :class:`MissingFileError` when the data root (or ``img_root``) does not exist:
        said once for the folder, rather than naming the first file missing under it."""
        for folder, option in ((self.root, "--data_root (env METAHMR_ROOT)"),
                               (self.img_root, "--img_root")):
            if folder is not None and not folder.is_dir():
                raise MissingFileError(
                    f"{folder.resolve()}: this folder, given by {option}, does not exist. Pass "
                    f"the folder that holds the seed README's layout (data/, ckpt/, models/, "
                    f"datasets/), or --synthetic for the stand-in world")

    def _require(self, path: Path, what: str, source: str = "") -> Path:
        """:func:`require` for a file under the root: a missing root is said first."""
        if not path.exists():
            self.check_root()
        return require(path, what, source)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def images_dir(self) -> Path:
        return self.img_root if self.img_root is not None else self.root / "datasets"

    @property
    def smpl_dir(self) -> Path:
        return self.data_dir / "smpl"

    def smpl_model(self, gender: str = "neutral") -> Path:
        return self._require(self.smpl_dir / f"SMPL_{gender.upper()}.pkl",
                             f"SMPL {gender} body model", _SMPL_SRC)

    def smpl_mean_params(self) -> Path:
        return self._require(self.data_dir / "smpl_mean_params.npz", "SMPL mean parameters",
                             _SPIN_SRC)

    def j_regressor_extra(self) -> Path:
        return self._require(self.data_dir / "J_regressor_extra.npy", "extra joint regressor",
                             _SPIN_SRC)

    def j_regressor_h36m(self) -> Path:
        return self._require(self.data_dir / "J_regressor_h36m.npy", "H36M joint regressor",
                             _SPIN_SRC)

    def occluders(self) -> Path:
        return self._require(self.data_dir / "VOC" / "pascal_occluders.npy",
                             "Pascal VOC occluders (pascal_occluders.npy)",
                             "the occluder file of the released code (Pascal VOC 2012 objects)")

    def dataset_npz(self, name: str, is_train: bool) -> Path:
        split = "train" if is_train else "test"
        files = DATASET_FILES[split]
        if name not in files:
            raise ValueError(f"unknown {split} dataset {name!r}; choose from {sorted(files)}")
        return self._require(self.data_dir / "datasets" / files[name],
                             f"{name} {split} annotations", _DATASET_SRC)

    def image_folder(self, name: str) -> Path:
        return self._require(self.images_dir / DATASET_FOLDERS[name], f"{name} image folder",
                             _DATASET_SRC)

    def backbone_checkpoint(self, backbone: str) -> Path:   # --backbone's choices: all known
        return self._require(self.root / BACKBONE_FILES[backbone],
                             f"pretrained {backbone} backbone", _BACKBONE_SRC)

    def aux_checkpoint(self, model: str, backbone: str) -> Path:   # all but hmr/hrnet (refused)
        return self._require(self.root / AUX_FILES[model, backbone],
                             f"{model}/{backbone} aux-network checkpoint",
                             _CLIFF_SRC if model == "cliff" else _SPIN_SRC)

    def release_checkpoint(self, path: str | os.PathLike) -> Path:
        return require(path, "Meta-HMR checkpoint", _CKPT_SRC)
