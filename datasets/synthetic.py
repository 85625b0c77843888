"""The synthetic stand-in world: the seed README's data tree, generated from a fixed seed.

    python -m datasets.synthetic --root data/synthetic            # default (~700 images)
    python -m datasets.synthetic --root /tmp/w --tiny              # a few images per set
    python -m datasets.synthetic --root data/synthetic --force --weights resnet18,resnet
    python -m datasets.synthetic --root data/synthetic --raw       # + 3DPW in the raw layout

writes, under ``root`` (the layout of :class:`config.DataPaths`):

* ``data/smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl``: a humanoid body model in SMPL's pickle format
  (see :mod:`datasets.synthetic_body`), loadable by :class:`models.smpl.SMPL`;
* ``data/J_regressor_extra.npy`` [9, 6890] and ``data/J_regressor_h36m.npy`` [17, 6890]
  (rows of convex vertex weights), ``data/smpl_mean_params.npz`` (SPIN's keys: ``pose``
  (144,) 6D mean pose, ``shape`` (10,), ``cam`` (3,) = [0.9, 0, 0]);
* ``data/VOC/pascal_occluders.npy``: the released format, a 1-D numpy **object array of RGBA
  uint8 patches** ``[h_i, w_i, 4]`` of varied sizes (alpha 255 on the object, 0 around it,
  anti-aliased edge), saved with ``np.save(..., allow_pickle=True)``; load it with
  ``utils.safe_pickle.load_npy(path)`` (which admits numpy arrays only, so a crafted file
  cannot run code; never ``np.load(path, allow_pickle=True)``);
* ``data/datasets/<config.DATASET_FILES[split][name]>``: SPIN-format npz for every train
  (h36m, mpii, coco, mpi-inf-3dhp, 3dpw) and test (3dpw, h36m-p1, h36m-p2, mpi-inf-3dhp, coco)
  set, with JPEG images under ``datasets/<config.DATASET_FOLDERS[name]>/`` (``imgname`` is
  relative to that folder and follows each real set's naming);
* optionally the stand-in network weights of ``models.checkpoints.write_standin_weights``;
* ``synthetic_world.json`` (what was built) and, last, ``.complete``.

Every image shows one posed body of the gendered (sets that store ``gender``: h36m, 3dpw) or
neutral model, in front of a random background (gradients, blobs, a floor), shaded with clothes
colours. The annotations are exact: with ``f`` = the npz ``focal_length`` if stored (3DPW),
else the image diagonal ``sqrt(W^2 + H^2)`` (CLIFF's convention), and the principal point at
the image centre ``(W/2, H/2)`` (pixel centres at integers),

* ``S`` [N, 24, 4] = the 24 GT joints (SPIN model joints 25..48) in the camera frame (metres,
  OpenCV axes: x right, y down, z forward) with confidence 1 (sets with 3D: h36m, 3dpw,
  mpi-inf-3dhp);
* ``part`` [N, 24, 3] = their pinhole projections, confidence 1 where the joint is annotated in
  the real set (COCO: limbs + face; MPII: limbs + neck/head/pelvis/thorax; others all) and
  inside the image, else the row is 0;
* ``openpose`` [N, 25, 3] = projections of the OpenPose-order joints (model joints 0..24) plus
  Gaussian noise (~1% of the body height), confidences in [0.35, 0.95], some dropped (0);
* ``pose`` [N, 72] (axis-angle, global orientation in the camera frame) and ``shape`` [N, 10]
  reproduce the body with the GT model: ``SMPL(pose, shape).joints + t`` = S for one
  translation t per sample (not stored, as in the real files);
* ``center`` / ``scale`` (SPIN's bbox of ``part``: ``scale = 1.2 max(w, h) / 200``),
  ``has_smpl``, ``gender`` ('m' / 'f'), ``focal_length`` per sample (3DPW only; the loader
  halves it with the image).

3DPW images are stored at twice the other sets' size (portrait), as the loader halves them.
Everything is deterministic in ``seed`` (one numpy generator per dataset).

This module builds the world (what is written, when a built one is reused) and holds the
command line; the pieces: :mod:`datasets.synthetic_specs` (how each set mimics its real one,
image names), :mod:`datasets.synthetic_poses` (pose sampling), :mod:`datasets.synthetic_images`
(backgrounds, clothes, the rendered body, occluders), :mod:`datasets.synthetic_sets` (one set:
placement, annotations, JPEGs, npz), :mod:`datasets.synthetic_body` (the body model and its
regressors), :mod:`datasets.synthetic_raw` (3DPW in the official raw layout).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

import config
from config import DATASET_FOLDERS, DataPaths
from datasets.synthetic_images import occluder_patches
from datasets.synthetic_poses import mean_pose
from datasets.synthetic_sets import write_dataset
from datasets.synthetic_specs import DATASET_SPECS, expected_keys
from utils.jsonio import dumps as strict_dumps

__all__ = ["build_world", "write_body_files", "DEFAULT_SIZES", "TINY_SIZES", "DEFAULT_IMG_SIZE", "TINY_IMG_SIZE",
           "GENERATOR_VERSION", "DATASET_SPECS", "expected_keys", "mean_pose", "main"]

GENERATOR_VERSION = 1
DEFAULT_IMG_SIZE = 256
TINY_IMG_SIZE = 128
MANIFEST = "synthetic_world.json"
MARKER = ".complete"

DEFAULT_SIZES = {
    "train/h36m": 160, "train/mpii": 80, "train/coco": 80, "train/mpi-inf-3dhp": 80,
    "train/3dpw": 80,
    "test/3dpw": 80, "test/h36m-p1": 40, "test/h36m-p2": 40, "test/mpi-inf-3dhp": 40,
    "test/coco": 40,
}
TINY_SIZES = {k: 4 for k in DEFAULT_SIZES}


def write_body_files(paths: DataPaths, genders=("neutral", "male", "female")) -> None:
    """The body model of each of ``genders`` (``data/smpl/SMPL_<GENDER>.pkl``), the regressors
    ``data/J_regressor_{extra,h36m}.npy`` and ``data/smpl_mean_params.npz``: all the files that
    :class:`models.smpl.SMPL` and the networks' mean parameters read (the benchmarks write only
    the neutral model's). Each file is written atomically (a concurrent writer never leaves a
    half-written file)."""
    from datasets import synthetic_body as sb
    models = sb.write_body_models(paths.smpl_dir, genders)
    extra, h36m = sb.extra_regressors(models["neutral"])
    _save_npy(paths.data_dir / "J_regressor_extra.npy", extra)
    _save_npy(paths.data_dir / "J_regressor_h36m.npy", h36m)
    tmp = paths.data_dir / f"smpl_mean_params.tmp{os.getpid()}.npz"
    np.savez(tmp, **sb.mean_params(mean_pose()))
    os.replace(tmp, paths.data_dir / "smpl_mean_params.npz")


def _write_static(paths: DataPaths, seed: int, log) -> None:
    """Body models, regressors, mean parameters and occluders."""
    t0 = time.time()
    write_body_files(paths)
    occ = occluder_patches(np.random.default_rng([seed, 7]))
    _save_npy(paths.data_dir / "VOC" / "pascal_occluders.npy", occ, allow_pickle=True)
    if log:
        log(f"  body models, regressors, mean params, occluders ({time.time() - t0:.1f} s)")


def _save_npy(path: Path, arr: np.ndarray, allow_pickle: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp, arr, allow_pickle=allow_pickle)
    os.replace(tmp, path)


def _resolve_sizes(sizes: dict | None) -> dict:
    out = dict(DEFAULT_SIZES)
    for k, v in (sizes or {}).items():
        if k not in DEFAULT_SIZES:
            raise ValueError(f"unknown dataset {k!r} in sizes; expected keys like "
                             f"{sorted(DEFAULT_SIZES)}")
        if int(v) < 2:
            raise ValueError(f"sizes[{k!r}] = {v}: every set needs at least 2 samples")
        out[k] = int(v)
    return out


def _weights_present(root: Path, weights) -> bool:
    need = [config.BACKBONE_FILES[b] for b in weights if b in config.BACKBONE_FILES]
    need += [p for (m, b), p in config.AUX_FILES.items() if b in weights]
    return all((root / p).exists() for p in need)


def _write_weights(root: Path, weights, paths: DataPaths, log) -> None:
    if not weights:
        return
    try:
        from models.checkpoints import write_standin_weights
    except ImportError as e:
        if log:
            log(f"  note: stand-in network weights not written "
                f"(models.checkpoints.write_standin_weights unavailable: {e})")
        return
    t0 = time.time()
    write_standin_weights(root, backbones=tuple(weights), mean_params=paths.smpl_mean_params())
    if log:
        log(f"  stand-in weights for {', '.join(weights)} ({time.time() - t0:.1f} s)")


def _built_as(root: Path, want: dict, seed, img_size, sizes) -> bool:
    """A complete world is under ``root``, built by this generator version with every argument
    that was given (None arguments match anything)."""
    manifest_path = root / MANIFEST
    if not ((root / MARKER).exists() and manifest_path.exists()):
        return False
    have = json.loads(manifest_path.read_text())
    return (have.get("version") == GENERATOR_VERSION
            and (seed is None or have.get("seed") == want["seed"])
            and (img_size is None or have.get("img_size") == want["img_size"])
            and (sizes is None or have.get("sizes") == want["sizes"]))


def _refuse_foreign(root: Path, paths: DataPaths) -> None:
    """Raise if ``root`` holds a data tree that this generator did not write."""
    foreign = [p for p in (paths.smpl_dir / "SMPL_NEUTRAL.pkl", paths.data_dir / "datasets",
                           *(paths.images_dir / d for d in set(DATASET_FOLDERS.values())))
               if p.exists() and (p.is_file() or any(p.iterdir()))]
    if foreign:
        raise RuntimeError(f"{root} holds a data tree that the synthetic generator did not "
                           f"write ({foreign[0]}; no {MANIFEST}); refusing to overwrite "
                           "it. Choose another --root for the synthetic world.")


def _write_sets(paths: DataPaths, want: dict, log) -> None:
    """Every train and test set (images and npz), posed with the world's body models."""
    import torch
    from models.smpl import build_smpl
    models = {g: build_smpl(paths, g, dtype=torch.float64) for g in ("neutral", "male", "female")}
    for key, n in want["sizes"].items():
        t0 = time.time()
        write_dataset(key, n, want["img_size"], paths, models, want["seed"])
        if log:
            log(f"  {key}: {n} images ({time.time() - t0:.1f} s)")


def build_world(root: str | os.PathLike = config.SYNTHETIC_ROOT, sizes: dict | None = None,
                img_size: int | None = None, seed: int | None = None, force: bool = False,
                weights=("resnet18",), log: Callable | None = print) -> Path:
    """Build (or reuse) the synthetic world under ``root``; returns ``Path(root)``.

    Args:
        root: the data root (``config.DataPaths(root)`` layout).
        sizes: samples per set, keys ``'<split>/<name>'`` (e.g. ``'train/h36m'``); missing keys
            take :data:`DEFAULT_SIZES`. None = defaults.
        img_size: base image side in pixels (3DPW images are 1.5x2 of it). None = 256.
        seed: generator seed. None = 0.
        force: rebuild even if a complete world is there.
        weights: backbones whose stand-in network weights to write ('resnet18', 'resnet',
            'hrnet'); () for none.
        log: progress printer (None: quiet).

    A complete world (``.complete`` present) is reused when every argument that was given
    matches what it was built with (None arguments match anything) and the generator version
    is the same; otherwise it is rebuilt. A folder that holds a data tree that this generator
    did not write is never overwritten.
    """
    root = Path(root)
    paths = DataPaths(root)
    manifest_path, marker = root / MANIFEST, root / MARKER
    want = {"version": GENERATOR_VERSION, "seed": 0 if seed is None else int(seed),
            "img_size": DEFAULT_IMG_SIZE if img_size is None else int(img_size),
            "sizes": _resolve_sizes(sizes)}
    weights = tuple(w for w in (weights or ()) if w)
    if unknown := [w for w in weights if w not in config.BACKBONE_FILES]:
        raise ValueError(f"unknown backbone(s) {unknown} for stand-in weights; choose from "
                         f"{sorted(config.BACKBONE_FILES)}")
    if not force and _built_as(root, want, seed, img_size, sizes):
        if not _weights_present(root, weights):
            _write_weights(root, weights, paths, log)
        return root
    previous = manifest_path.exists()     # an earlier (maybe partial) synthetic build
    if not previous:
        _refuse_foreign(root, paths)

    t_start = time.time()
    if log:
        log(f"building the synthetic world in {root} (seed {want['seed']}, images "
            f"{want['img_size']} px, {sum(want['sizes'].values())} samples)")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    manifest_path.write_text(strict_dumps({**want, "complete": False}, indent=2))
    if previous:                                     # stale images of an earlier build
        for name in set(DATASET_FOLDERS.values()):
            d = paths.images_dir / name
            if d.is_dir():
                shutil.rmtree(d)
    _write_static(paths, want["seed"], log)
    _write_sets(paths, want, log)
    _write_weights(root, weights, paths, log)
    manifest_path.write_text(strict_dumps({**want, "complete": True}, indent=2))
    marker.write_text(f"built in {time.time() - t_start:.1f} s\n")
    if log:
        log(f"done in {time.time() - t_start:.1f} s: use --data_root {root}")
    return root


def _parse_sizes(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--sizes item {item!r} is not KEY=N")
        k, v = item.split("=", 1)
        out[k.strip()] = int(v)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m datasets.synthetic",
                                description="Write the synthetic stand-in world (body model, "
                                            "regressors, SPIN-format datasets, images).")
    p.add_argument("--root", default=config.SYNTHETIC_ROOT,
                   help=f"data root to write (default {config.SYNTHETIC_ROOT})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--img_size", type=int, default=None,
                   help=f"base image side in pixels (default {DEFAULT_IMG_SIZE}; "
                        f"{TINY_IMG_SIZE} with --tiny)")
    p.add_argument("--n_train", type=int, default=None, help="samples in every training set")
    p.add_argument("--n_test", type=int, default=None, help="samples in every test set")
    p.add_argument("--sizes", type=_parse_sizes, default={},
                   help="per-set sizes, e.g. 'train/h36m=50,test/3dpw=20'")
    p.add_argument("--tiny", action="store_true",
                   help=f"{TINY_SIZES['train/h36m']} samples per set at {TINY_IMG_SIZE} px")
    p.add_argument("--weights", default="resnet18",
                   help="comma-separated backbones whose stand-in weights to write "
                        "(resnet18, resnet, hrnet; '' for none; default resnet18)")
    p.add_argument("--force", action="store_true", help="rebuild even if the world is complete")
    p.add_argument("--raw", action="store_true",
                   help="also write the 3DPW sets in the official raw layout (sequenceFiles/ "
                        "beside imageFiles/ in datasets/pw3d; see datasets/synthetic_raw.py)")
    a = p.parse_args(argv)
    sizes = dict(TINY_SIZES) if a.tiny else dict(DEFAULT_SIZES)
    for k in sizes:
        if a.n_train is not None and k.startswith("train/"):
            sizes[k] = a.n_train
        if a.n_test is not None and k.startswith("test/"):
            sizes[k] = a.n_test
    sizes.update(a.sizes)
    img_size = a.img_size if a.img_size is not None else (TINY_IMG_SIZE if a.tiny
                                                          else DEFAULT_IMG_SIZE)
    weights = tuple(w.strip() for w in a.weights.split(",") if w.strip())
    try:
        root = build_world(a.root, sizes=sizes, img_size=img_size, seed=a.seed, force=a.force,
                           weights=weights)
        if a.raw:
            from datasets.synthetic_raw import write_raw_3dpw
            write_raw_3dpw(root, seed=a.seed)
        return root
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main(sys.argv[1:])
