"""The synthetic world's data sets: how each mimics its real counterpart, and its file names.

:data:`DATASET_SPECS` holds one :class:`DatasetSpec` per ``'<split>/<name>'`` of
``config.DATASET_FILES`` (image aspect, which annotations the npz carries, which GT joints the
real set annotates, person size, pose variety, whether subject / background / camera are shared
per sequence); :func:`expected_keys` lists a set's npz keys; :func:`image_names` names the
images in the real set's style (``images/S9_Walking_1.55011271_000001.jpg``,
``imageFiles/<sequence>/image_%05d.jpg``, ``train2014/COCO_train2014_%012d.jpg``, ...) and
:func:`sequence_gender` gives a sequence's subject a gender (H36M: the real subject's).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import DATASET_FILES

__all__ = ["DatasetSpec", "DATASET_SPECS", "expected_keys", "image_names", "sequence_gender"]

# GT-24 joints annotated in the real 2D sets (SPIN's order, constants.JOINT_NAMES[25:])
_COCO_J24 = tuple(range(12)) + (19, 20, 21, 22, 23)
_MPII_J24 = tuple(range(16))
_ALL_J24 = tuple(range(24))
_H36M_GENDER = {1: "f", 5: "f", 6: "m", 7: "f", 8: "m", 9: "m", 11: "m"}
_H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing",
                 "Purchases", "Sitting", "Smoking", "TakingPhoto", "Waiting", "Walking",
                 "WalkDog", "WalkTogether")
_H36M_CAMS = ("54138969", "55011271", "58860488", "60457274")
_PW3D_TRAIN = ("courtyard_arguing_00", "courtyard_backpack_00", "courtyard_basketball_00",
               "downtown_bar_00", "outdoors_climbing_00", "outdoors_slalom_00")
_PW3D_TEST = ("downtown_walking_00", "downtown_stairs_00", "flat_guitar_01",
              "office_phoneCall_00", "outdoors_fencing_01", "downtown_runForBus_00")


@dataclass(frozen=True)
class DatasetSpec:
    """How one synthetic set mimics its real counterpart."""
    split: str                # 'train' | 'test'
    name: str                 # config.DATASET_FILES name
    aspect: tuple             # (W, H) in units of img_size; several = one drawn per image
    has_3d: bool              # write S
    has_smpl: bool            # write pose / shape / has_smpl
    gendered: bool            # write gender (and render with the gendered model)
    focal: bool               # write focal_length (else the loader uses the diagonal)
    visible: tuple            # GT-24 joints annotated in the real set
    fill: tuple               # person size as a fraction of the limiting image side
    spread: float             # pose variety
    tilt: float               # std of the body's lean (rad)
    per_sequence: bool        # subject, background and camera shared per sequence


DATASET_SPECS = {
    "train/h36m": DatasetSpec("train", "h36m", ((1, 1),), True, True, True, False, _ALL_J24,
                              (0.55, 0.8), 0.8, 0.08, True),
    "train/mpii": DatasetSpec("train", "mpii", ((1.25, 1),), False, True, False, False,
                              _MPII_J24, (0.45, 0.85), 1.1, 0.2, False),
    "train/coco": DatasetSpec("train", "coco", ((1.25, 1), (1, 1.25), (1, 1), (1.33, 1)),
                              False, True, False, False, _COCO_J24, (0.35, 0.85), 1.1, 0.2,
                              False),
    "train/mpi-inf-3dhp": DatasetSpec("train", "mpi-inf-3dhp", ((1, 1),), True, True, False,
                                      False, _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "train/3dpw": DatasetSpec("train", "3dpw", ((1.5, 2),), True, True, True, True, _ALL_J24,
                              (0.4, 0.75), 0.7, 0.08, True),
    "test/3dpw": DatasetSpec("test", "3dpw", ((1.5, 2),), True, True, True, True, _ALL_J24,
                             (0.4, 0.75), 0.7, 0.08, True),
    "test/h36m-p1": DatasetSpec("test", "h36m-p1", ((1, 1),), True, True, True, False,
                                _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/h36m-p2": DatasetSpec("test", "h36m-p2", ((1, 1),), True, True, True, False,
                                _ALL_J24, (0.55, 0.8), 0.8, 0.08, True),
    "test/mpi-inf-3dhp": DatasetSpec("test", "mpi-inf-3dhp", ((1, 1),), True, False, False,
                                     False, _ALL_J24, (0.5, 0.8), 1.0, 0.12, True),
    "test/coco": DatasetSpec("test", "coco", ((1.25, 1), (1, 1.25), (1, 1), (1.33, 1)), False,
                             True, False, False, _COCO_J24, (0.35, 0.85), 1.1, 0.2, False),
}
assert set(DATASET_SPECS) == {f"{s}/{n}" for s in DATASET_FILES for n in DATASET_FILES[s]}


def expected_keys(key: str) -> set[str]:
    """The npz keys the synthetic set ``'<split>/<name>'`` carries."""
    spec = DATASET_SPECS[key]
    keys = {"imgname", "center", "scale", "part", "openpose"}
    if spec.has_smpl:
        keys |= {"pose", "shape", "has_smpl"}
    if spec.has_3d:
        keys.add("S")
    if spec.gendered:
        keys.add("gender")
    if spec.focal:
        keys.add("focal_length")
    return keys


def image_names(spec: DatasetSpec, n: int,
                rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """Image names in the real set's style and the sequence id of every sample."""
    names, seqs = [], []
    per_seq = 10
    for i in range(n):
        q, k = divmod(i, per_seq)
        if spec.name.startswith("h36m"):
            subjects = (1, 5, 6, 7, 8) if spec.split == "train" else (9, 11)
            subj = subjects[q % len(subjects)]
            act = _H36M_ACTIONS[(q // len(subjects)) % len(_H36M_ACTIONS)]
            cam = _H36M_CAMS[3] if spec.name == "h36m-p2" else _H36M_CAMS[q % 4]
            sub = 2 if spec.name == "h36m-p2" else 1     # p1 and p2 share the folder
            names.append(f"images/S{subj}_{act}_{sub}.{cam}_{k * 5 + 1:06d}.jpg")
        elif spec.name == "3dpw":
            pool = _PW3D_TRAIN if spec.split == "train" else _PW3D_TEST
            frame = (q // len(pool)) * 1000 + k * 3
            names.append(f"imageFiles/{pool[q % len(pool)]}/image_{frame:05d}.jpg")
        elif spec.name == "mpi-inf-3dhp":
            if spec.split == "train":
                names.append(f"S{q % 8 + 1}/Seq{q // 8 % 2 + 1}/imageFrames/video_{q % 9}/"
                             f"frame_{k * 10 + 1:06d}.jpg")
            else:
                names.append(f"mpi_inf_3dhp_test_set/TS{q % 6 + 1}/imageSequence/"
                             f"img_{q // 6 * per_seq + k + 1:06d}.jpg")
        elif spec.name == "mpii":
            names.append(f"images/{int(rng.integers(1e8, 1e9)):09d}.jpg")
        else:  # coco
            split = "train2014" if spec.split == "train" else "val2014"
            names.append(f"{split}/COCO_{split}_{int(rng.integers(1e5, 6e5)):012d}.jpg")
        seqs.append(q if spec.per_sequence else i)
    if len(set(names)) != len(names):   # random ids collided: make them unique
        names = [f"{Path(s).parent}/{Path(s).stem}_{i}{Path(s).suffix}"
                 for i, s in enumerate(names)]
    return names, seqs


def sequence_gender(spec: DatasetSpec, name: str, rng: np.random.Generator) -> str:
    if spec.name.startswith("h36m"):
        subj = int(name.split("/")[1].split("_")[0][1:])
        return _H36M_GENDER[subj]
    return "m" if rng.uniform() < 0.5 else "f"
