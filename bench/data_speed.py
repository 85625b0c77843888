"""Data-pipeline throughput: samples/s of one BaseDataset, alone and under a DataLoader.

    python bench/data_speed.py [--data_root data/synthetic] [--dataset h36m] [--n 300]
                               [--workers 2] [--batch_size 16] [--json out.json]

Training mode (flip / rotation / scale / pixel noise), ``--bbox_type rect`` (256x192) and
``--syn_occ`` on by default (the README training command). Rows: the image read alone (cv2
decode, the floor), the whole pipeline in this process, and a DataLoader with ``--workers``
worker processes (steady state: timed from the first batch). Build the synthetic world first
with ``python -m datasets.synthetic --root data/synthetic`` if it is missing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench.common import print_table, write_json  # noqa: E402
from config import SYNTHETIC_ROOT, DataPaths, MissingFileError  # noqa: E402
from datasets import BaseDataset  # noqa: E402
from utils import options as project_options  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_root", type=str, default=SYNTHETIC_ROOT, help="data layout root")
    p.add_argument("--img_root", type=str, default=None,
                   help="image folders root (default <root>/datasets)")
    p.add_argument("--dataset", type=str, default="h36m", help="training dataset name")
    project_options.add_bbox_type(p, "rect")
    p.add_argument("--no_syn_occ", action="store_true", help="switch synthetic occlusion off")
    p.add_argument("--ALB", action="store_true", help="photometric augmentation on")
    p.add_argument("--n", type=int, default=300, help="samples per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch_size", type=int, default=16, help="DataLoader batch size")
    project_options.add_seed(p)
    p.set_defaults(seed=0)
    p.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def _time(fn, n: int, warmup: int = 5) -> float:
    for i in range(warmup):
        fn(i)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t0


def measure(args) -> dict:
    options = project_options.train_parser().parse_args([])   # train.py's augmentation
    vars(options).update(data_root=args.data_root, img_root=args.img_root,
                         bbox_type=args.bbox_type, syn_occ=not args.no_syn_occ, ALB=args.ALB)
    t0 = time.perf_counter()
    ds = BaseDataset(options, args.dataset, is_train=True, paths=DataPaths.from_options(options))
    init_s = time.perf_counter() - t0
    n_ds = len(ds)
    np.random.seed(args.seed)
    torch.set_num_threads(1)

    rows = {}
    t = _time(lambda i: ds._read_image(i % n_ds), args.n)
    rows["image read only"] = {"samples_per_s": args.n / t, "ms_per_sample": 1e3 * t / args.n}
    t = _time(lambda i: ds[i % n_ds], args.n)
    rows["pipeline, 1 process"] = {"samples_per_s": args.n / t, "ms_per_sample": 1e3 * t / args.n}

    if args.workers > 0:
        idx = [i % n_ds for i in range(args.n + args.batch_size * (args.workers + 1))]
        loader = DataLoader(torch.utils.data.Subset(ds, idx), batch_size=args.batch_size,
                            num_workers=args.workers, shuffle=False,
                            persistent_workers=False, prefetch_factor=2)
        it = iter(loader)
        next(it)  # workers started and the pipeline full
        done, t0 = 0, time.perf_counter()
        for batch in it:
            done += batch["img"].shape[0]
        t = time.perf_counter() - t0
        rows[f"DataLoader, {args.workers} workers"] = {"samples_per_s": done / t,
                                                       "ms_per_sample": 1e3 * t / done}
    first = ds[0]["img"]
    return {"dataset": args.dataset, "n_samples_in_dataset": n_ds, "init_s": init_s,
            "crop": list(first.shape), "syn_occ": not args.no_syn_occ, "ALB": args.ALB,
            "image_size": [int(ds[0]["img_h"]), int(ds[0]["img_w"])],
            "modes": rows,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "torch": torch.__version__}}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        res = measure(args)
    except MissingFileError as e:
        print(f"{e}\nBuild the synthetic world with: python -m datasets.synthetic "
              f"--root {SYNTHETIC_ROOT}", file=sys.stderr)
        return 2
    print(f"BaseDataset({res['dataset']!r}, train), {res['n_samples_in_dataset']} samples, "
          f"images {res['image_size'][0]}x{res['image_size'][1]}, crop "
          f"{res['crop'][1]}x{res['crop'][2]}, syn_occ={res['syn_occ']}, ALB={res['ALB']}, "
          f"init {res['init_s']:.2f} s, {res['machine']['cpus']} CPUs")
    print_table(None, [("samples_per_s", "samples/s", ".1f"),
                       ("ms_per_sample", "ms/sample", ".2f")], res["modes"])
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
