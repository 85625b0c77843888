"""Data-pipeline throughput: samples/s of one BaseDataset, alone and under a DataLoader.

    python bench/data_speed.py [--data_root data/synthetic] [--dataset h36m] [--n 300]
                               [--workers 2] [--batch_size 16] [--json out.json]

Training-mode augmentation with the README training command's rect crop and ``--syn_occ``.
Rows: the image read alone (the floor), the whole pipeline in this process, and a DataLoader
with ``--workers`` worker processes (steady state: timed from the first batch).
"""
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

from bench.common import print_table  # noqa: E402
from utils import options as project_options  # noqa: E402
from utils.jsonio import write_json  # noqa: E402


def main(argv=None) -> int:
    from torch.utils.data import DataLoader, Subset
    from config import SYNTHETIC_ROOT, DataPaths, MissingFileError
    from datasets import BaseDataset
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--data_root", type=str, default=SYNTHETIC_ROOT, help="data layout root")
    add("--img_root", type=str, default=None, help="image folders root (default <root>/datasets)")
    add("--dataset", type=str, default="h36m", help="training dataset name")
    project_options.add_bbox_type(p, "rect")
    add("--no_syn_occ", action="store_true", help="switch synthetic occlusion off")
    add("--ALB", action="store_true", help="photometric augmentation on")
    add("--n", type=int, default=300, help="samples per measurement")
    add("--workers", type=int, default=2, help="DataLoader workers")
    add("--batch_size", type=int, default=16, help="DataLoader batch size")
    project_options.add_seed(p)
    p.set_defaults(seed=0)
    add("--json", type=str, default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    o = project_options.train_parser().parse_args([])   # train.py's augmentation
    vars(o).update(data_root=a.data_root, img_root=a.img_root, bbox_type=a.bbox_type,
                   syn_occ=not a.no_syn_occ, ALB=a.ALB)
    t0 = time.perf_counter()
    try:
        ds = BaseDataset(o, a.dataset, is_train=True, paths=DataPaths.from_options(o))
    except MissingFileError as e:
        print(f"{e}\nBuild the synthetic world with: python -m datasets.synthetic "
              f"--root {SYNTHETIC_ROOT}", file=sys.stderr)
        return 2
    init_s, n_ds = time.perf_counter() - t0, len(ds)
    np.random.seed(a.seed)
    torch.set_num_threads(1)

    def row(n: int, t: float) -> dict:
        return {"samples_per_s": n / t, "ms_per_sample": 1e3 * t / n}

    def rate(fn) -> dict:
        for i in range(5):
            fn(i)
        t0 = time.perf_counter()
        for i in range(a.n):
            fn(i)
        return row(a.n, time.perf_counter() - t0)

    rows = {"image read only": rate(lambda i: ds.read_image(i % n_ds)),
            "pipeline, 1 process": rate(lambda i: ds[i % n_ds])}
    if a.workers > 0:
        idx = [i % n_ds for i in range(a.n + a.batch_size * (a.workers + 1))]
        it = iter(DataLoader(Subset(ds, idx), batch_size=a.batch_size, num_workers=a.workers,
                             shuffle=False, persistent_workers=False, prefetch_factor=2))
        next(it)  # workers started and the pipeline full
        t0 = time.perf_counter()
        done = sum(batch["img"].shape[0] for batch in it)
        rows[f"DataLoader, {a.workers} workers"] = row(done, time.perf_counter() - t0)
    first = ds[0]
    res = {"dataset": a.dataset, "n_samples_in_dataset": n_ds, "init_s": init_s,
           "crop": list(first["img"].shape), "syn_occ": not a.no_syn_occ, "ALB": a.ALB,
           "image_size": [int(first["img_h"]), int(first["img_w"])], "modes": rows,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__}}
    print(f"BaseDataset({a.dataset!r}, train), {n_ds} samples, images {res['image_size'][0]}x"
          f"{res['image_size'][1]}, crop {res['crop'][1]}x{res['crop'][2]}, syn_occ="
          f"{res['syn_occ']}, ALB={a.ALB}, init {init_s:.2f} s, {os.cpu_count()} CPUs")
    print_table([("samples_per_s", "samples/s", ".1f"), ("ms_per_sample", "ms/sample", ".2f")],
                rows)
    if a.json:
        print(f"wrote {write_json(a.json, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
