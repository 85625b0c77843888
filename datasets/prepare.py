"""Dataset preparation: official releases -> the SPIN-format npz files the project reads.

    python -m datasets.prepare 3dpw --raw <3DPW root> --out <data root> [--with_focal_length]

``3dpw`` (:mod:`datasets.prepare_3dpw`) writes, under ``<out>/data/datasets/``,
``3dpw_test_w2d_smpl3d_gender_openpose.npz`` and ``3dpw_train_w2d_smpl3d_gender.npz``; the body
models come from ``--data_root``, else ``$METAHMR_ROOT``, else ``--out``. A bad input file ends
the run with one line ``error: <file>: <what is wrong>. <what to do>`` (exit code 2), writing
nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main"]


def _csv(text: str) -> tuple:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets.prepare", description="Build SPIN-format "
                                "npz annotations from an official dataset release.")
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                           help="the dataset to prepare (3dpw)")
    q = sub.add_parser("3dpw", help="3DPW: sequenceFiles/*.pkl + imageFiles/ -> npz",
                       description="Official 3DPW release -> data/datasets/3dpw_*.npz")
    q.add_argument("--raw", type=Path, required=True,
                   help="the 3DPW root (holding sequenceFiles/ and imageFiles/)")
    q.add_argument("--out", type=Path, default=None,
                   help="data root to write data/datasets/*.npz into (default: the data root)")
    q.add_argument("--data_root", type=Path, default=None,
                   help="data root with data/smpl/SMPL_{MALE,FEMALE}.pkl and "
                        "data/J_regressor_extra.npy (default: $METAHMR_ROOT, else --out)")
    q.add_argument("--sets", type=_csv, default=("test", "train"),
                   help="comma-separated files to write: test, train (default both)")
    q.add_argument("--train_splits", type=_csv, default=("train",),
                   help="sequenceFiles folders the training file is built from, "
                        "comma-separated (default 'train'; e.g. 'train,validation')")
    q.add_argument("--with_focal_length", action="store_true",
                   help="also store focal_length (cam_intrinsics fx); without it the "
                        "evaluation uses the image diagonal, as with the published file")
    return p


def main(argv=None) -> dict:
    """Parse ``argv`` and prepare; returns {set name: SetSummary}."""
    from config import MissingFileError
    from datasets.prepare_3dpw import prepare_3dpw
    from models.smpl import SMPLFileError
    a = build_parser().parse_args(argv)
    data_root = a.data_root or Path(os.environ.get("METAHMR_ROOT") or a.out or ".")
    out = a.out or data_root
    if bad := [s for s in a.train_splits if s not in ("train", "validation")]:
        what = ("the evaluation's split (training on it would leak the test set into the "
                "model)" if bad == ["test"] else "unknown 3DPW split")
        raise SystemExit(f"error: --train_splits {','.join(bad)}: {what}. "
                         "Use train and/or validation")
    if bad := [s for s in a.sets if s not in ("test", "train")]:
        raise SystemExit(f"error: --sets {','.join(bad)}: unknown. Use test and/or train")
    t0 = time.time()
    print(f"3dpw: reading {a.raw}, body models from {data_root}, writing under {out}",
          flush=True)
    try:
        result = prepare_3dpw(a.raw, out, data_root=data_root, sets=a.sets,
                              train_splits=a.train_splits, with_focal_length=a.with_focal_length)
    except (MissingFileError, SMPLFileError) as e:
        raise SystemExit(f"error: {e}. The body models come from --data_root "
                         "(or METAHMR_ROOT, else --out)") from None
    frames = sum(s.kept + sum(s.skipped.values()) for s in result.values())
    print(f"done in {time.time() - t0:.1f} s ({frames} frames read)", flush=True)
    return result


if __name__ == "__main__":
    from utils.cli import run
    run(main, sys.argv[1:])
