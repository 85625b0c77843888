"""The synthetic stand-in world: the seed README's data tree, generated from a fixed seed.

    python -m datasets.synthetic --root data/synthetic            # default (~700 images)
    python -m datasets.synthetic --root /tmp/w --tiny              # a few images per set
    python -m datasets.synthetic --root data/synthetic --force --weights resnet18,resnet
    python -m datasets.synthetic --root data/synthetic --raw       # + 3DPW in the raw layout

writes, under ``root`` (the :class:`config.DataPaths` layout): ``data/smpl/SMPL_{NEUTRAL,MALE,
FEMALE}.pkl`` (:mod:`datasets.synthetic_body`), ``data/J_regressor_{extra,h36m}.npy``,
``data/smpl_mean_params.npz`` (``cam`` = [0.9, 0, 0]), ``data/VOC/pascal_occluders.npy`` (1-D
object array of RGBA uint8 patches: read it with ``utils.safe_pickle.load_npy``, never
``np.load(path, allow_pickle=True)``), a SPIN-format npz and JPEGs named like the real ones for
every train and test set (:mod:`datasets.synthetic_sets`), optionally stand-in network weights,
``synthetic_world.json`` (what was built) and, last, ``.complete``.

Every image shows one posed body (the gendered model in sets that store ``gender``, else the
neutral) over a random background, with exact annotations: ``f`` = the npz ``focal_length`` if
stored (3DPW), else the image diagonal; principal point ``(W/2, H/2)``; ``S`` [N, 24, 4] = the
GT joints (SPIN model joints 25..48) in the camera frame; ``part`` [N, 24, 3] = their
projections, confidence 1 where the real set annotates the joint and it is in the image;
``openpose`` [N, 25, 3] = noisy projections of joints 0..24 (confidences in [0.35, 0.95], some
0); ``pose`` [N, 72] (global orientation in the camera frame) and ``shape`` [N, 10] with
``SMPL(pose, shape).joints + t = S`` for an unstored t; ``center`` / ``scale`` = SPIN's bbox of
``part``. 3DPW's images are twice the others' size (the loader halves both). Deterministic in
``seed``; 3DPW in the official raw layout: :mod:`datasets.synthetic_raw`.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

import config
from config import DATASET_FOLDERS, DataPaths
from datasets.synthetic_images import occluder_patches
from datasets.synthetic_sets import (DATASET_SPECS, expected_keys, mean_pose, write_dataset,
                                     write_file)
from utils.cli import run
from utils.errors import OptionError, UserError
from utils.jsonio import dumps as strict_dumps

__all__ = ["build_world", "write_body_files", "DEFAULT_SIZES", "TINY_SIZES", "DEFAULT_IMG_SIZE",
           "TINY_IMG_SIZE", "GENERATOR_VERSION", "DATASET_SPECS", "expected_keys", "main"]

GENERATOR_VERSION = 1
DEFAULT_IMG_SIZE, TINY_IMG_SIZE = 256, 128
MANIFEST, MARKER = "synthetic_world.json", ".complete"
DEFAULT_SIZES = {"train/h36m": 160, "train/mpii": 80, "train/coco": 80, "train/mpi-inf-3dhp": 80,
                 "train/3dpw": 80, "test/3dpw": 80, "test/h36m-p1": 40, "test/h36m-p2": 40,
                 "test/mpi-inf-3dhp": 40, "test/coco": 40}
TINY_SIZES = {k: 4 for k in DEFAULT_SIZES}


def write_body_files(paths: DataPaths, genders=("neutral", "male", "female")) -> None:
    """The body model of each of ``genders``, the regressors and the mean parameters, each
    written atomically: all that :class:`models.smpl.SMPL` and the networks read (the benchmarks
    write only the neutral model's)."""
    from datasets import synthetic_body as sb
    models = {g: sb.build_body_model(g) for g in genders}
    for gender, model in models.items():
        write_file(paths.smpl_dir / f"SMPL_{gender.upper()}.pkl",
                   partial(pickle.dump, model.data, protocol=2))
    for name, reg in zip(("extra", "h36m"), sb.extra_regressors(models["neutral"])):
        write_file(paths.data_dir / f"J_regressor_{name}.npy", partial(np.save, arr=reg))
    write_file(paths.data_dir / "smpl_mean_params.npz",
               partial(np.savez, **sb.mean_params(mean_pose())))


def _write_weights(root: Path, weights, paths: DataPaths, log) -> None:
    from models.checkpoints import write_standin_weights
    t0 = time.time()
    write_standin_weights(root, backbones=tuple(weights), mean_params=paths.smpl_mean_params())
    log(f"  stand-in weights for {', '.join(weights)} ({time.time() - t0:.1f} s)")


def build_world(root: str | os.PathLike = config.SYNTHETIC_ROOT, sizes: dict | None = None,
                img_size: int | None = None, seed: int | None = None, force: bool = False,
                weights=("resnet18",), log: Callable | None = print) -> Path:
    """Build (or reuse) the synthetic world under the data root ``root``; returns ``Path(root)``.

    ``sizes``: samples per set (keys ``'<split>/<name>'``; missing ones: :data:`DEFAULT_SIZES`);
    ``img_size``: base image side (3DPW's images are 1.5 x 2 of it; default 256); ``seed``
    (default 0); ``force``: rebuild even if complete; ``weights``: backbones whose stand-in
    network weights to write ('resnet18', 'resnet', 'hrnet'; () for none); ``log``: progress
    printer (None: quiet). A complete world is reused when every argument given (not None)
    matches what it was built with and the generator version is the same; otherwise it is
    rebuilt. A data tree that this generator did not write is never overwritten.
    """
    root, t_start, log = Path(root), time.time(), log or (lambda _: None)
    paths, manifest_path, marker = DataPaths(root), root / MANIFEST, root / MARKER
    want = {"version": GENERATOR_VERSION, "seed": 0 if seed is None else int(seed),
            "img_size": DEFAULT_IMG_SIZE if img_size is None else int(img_size),
            "sizes": dict(DEFAULT_SIZES)}
    for k, v in (sizes or {}).items():
        if k not in DEFAULT_SIZES:
            raise OptionError(f"unknown dataset {k!r} in sizes; expected keys like "
                             f"{sorted(DEFAULT_SIZES)}")
        if int(v) < 2:
            raise OptionError(f"sizes[{k!r}] = {v}: every set needs at least 2 samples")
        want["sizes"][k] = int(v)
    weights = tuple(w for w in (weights or ()) if w)
    if unknown := [w for w in weights if w not in config.BACKBONE_FILES]:
        raise OptionError(f"unknown backbone(s) {unknown} for stand-in weights; choose from "
                         f"{sorted(config.BACKBONE_FILES)}")
    # reuse a complete world of this generator version built with every argument given
    have = json.loads(manifest_path.read_text()) if marker.exists() and \
        manifest_path.exists() else {}
    if not force and have.get("version") == GENERATOR_VERSION and all(
            arg is None or have.get(k) == want[k]
            for k, arg in (("seed", seed), ("img_size", img_size), ("sizes", sizes))):
        need = [config.BACKBONE_FILES[b] for b in weights] + \
            [p for (m, b), p in config.AUX_FILES.items() if b in weights]
        if not all((root / p).exists() for p in need):
            _write_weights(root, weights, paths, log)
        return root
    previous = manifest_path.exists()     # an earlier (maybe partial) synthetic build
    folders = [paths.images_dir / d for d in set(DATASET_FOLDERS.values())]
    if not previous and (foreign := [
            p for p in (paths.smpl_dir / "SMPL_NEUTRAL.pkl", paths.data_dir / "datasets", *folders)
            if p.exists() and (p.is_file() or any(p.iterdir()))]):
        raise UserError(f"{root} holds a data tree that the synthetic generator did not write "
                        f"({foreign[0]}; no {MANIFEST}); refusing to overwrite it. Choose "
                        "another --root for the synthetic world.")
    log(f"building the synthetic world in {root} (seed {want['seed']}, images "
        f"{want['img_size']} px, {sum(want['sizes'].values())} samples)")
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    manifest_path.write_text(strict_dumps({**want, "complete": False}, indent=2))
    for folder in folders if previous else ():       # stale images of an earlier build
        if folder.is_dir():
            shutil.rmtree(folder)
    t0 = time.time()
    write_body_files(paths)
    write_file(paths.data_dir / "VOC" / "pascal_occluders.npy", partial(
        np.save, arr=occluder_patches(np.random.default_rng([want["seed"], 7])), allow_pickle=True))
    log(f"  body models, regressors, mean params, occluders ({time.time() - t0:.1f} s)")
    import torch
    from models.smpl import build_smpl
    models = {g: build_smpl(paths, g, dtype=torch.float64) for g in ("neutral", "male", "female")}
    for key, n in want["sizes"].items():
        t0 = time.time()
        write_dataset(key, n, want["img_size"], paths, models, want["seed"])
        log(f"  {key}: {n} images ({time.time() - t0:.1f} s)")
    if weights:
        _write_weights(root, weights, paths, log)
    manifest_path.write_text(strict_dumps({**want, "complete": True}, indent=2))
    marker.write_text(f"built in {time.time() - t_start:.1f} s\n")
    log(f"done in {time.time() - t_start:.1f} s: use --data_root {root}")
    return root


def _parse_sizes(text: str) -> dict:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if bad := [s for s in items if "=" not in s]:
        raise argparse.ArgumentTypeError(f"--sizes item {bad[0]!r} is not KEY=N")
    return {k.strip(): int(v) for k, v in (s.split("=", 1) for s in items)}


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
    sizes = {k: v if (n := a.n_train if k.startswith("train/") else a.n_test) is None else n
             for k, v in (TINY_SIZES if a.tiny else DEFAULT_SIZES).items()} | a.sizes
    img_size = (TINY_IMG_SIZE if a.tiny else DEFAULT_IMG_SIZE) if a.img_size is None else a.img_size
    root = build_world(a.root, sizes=sizes, img_size=img_size, seed=a.seed, force=a.force,
                       weights=[w.strip() for w in a.weights.split(",")])
    if a.raw:
        from datasets.synthetic_raw import write_raw_3dpw
        write_raw_3dpw(root, seed=a.seed)
    return root


if __name__ == "__main__":
    run(main)
