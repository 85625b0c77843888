"""Shared pieces of the benchmarks (decisions D15): machine description, synthetic inputs, the
body model, peak-memory measurement, one child process per mode, tables and JSON.

Every benchmark runs random-weight networks on synthetic inputs, so no data file is needed.
The SMPL-format body model is the synthetic world's stand-in (``datasets.synthetic_body``),
written once into a cache folder (``~/.cache/metahmr_bench``, or ``$METAHMR_BENCH_CACHE``);
its cost is that of the real SMPL (6890 vertices, 24 joints), which is all a timing needs.
BatchNorm statistics are set from the synthetic batch (:func:`calibrate_batchnorm`) so that
random networks in eval mode stay finite.

Each mode is measured in a fresh child process (the script re-runs itself with ``--_child MODE``)
so that its peak memory is its own: the peak of one mode never hides the next one's, and the
allocator starts empty every time.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from utils.runtime import place, select_device  # noqa: E402,F401  (select_device: for the scripts)
from utils.jsonio import dumps as strict_dumps  # noqa: E402
CHILD_MARK = "@@BENCH_RESULT@@ "     # prefix of the child's result line on stdout


# ------------------------------------------------------------------------------------------------
# machine
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """The machine and software the figures were measured on."""
    info = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_mb=round(props.total_memory / 2**20),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# synthetic inputs
def synthetic_batch(batch_size: int, crop_hw: tuple[int, int], device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with every key the training step and TTO read, shaped like the dataset's output.

    Geometry is plausible (a person-sized box inside a 1000x1000 image, the crop maps from
    ``utils.imutils``), values are random: img [B,3,H,W] ~ N(0,1) (ImageNet-normalised range);
    pose [B,72] ~ N(0, 0.2²) axis-angle; betas [B,10] ~ N(0,1); pose_3d [B,24,4] (metres,
    conf 1); keypoints [B,49,3] crop pixels inside the crop, conf 1; has_smpl, has_pose_3d [B]
    ones; center [B,2], scale [B] (bbox height / 200), img_h, img_w, focal_length [B]
    (CLIFF's diagonal focal), bbox_info [B,3], crop_trans [B,2,3].
    """
    from utils import imutils
    h, w = crop_hw
    g = np.random.default_rng(seed)
    B = batch_size
    img_h = np.full(B, 1000.0)
    img_w = np.full(B, 1000.0)
    center = np.stack([g.uniform(400, 600, B), g.uniform(400, 600, B)], -1)
    scale = g.uniform(1.5, 2.5, B)
    focal = imutils.diagonal_focal(img_h, img_w) * np.ones(B)
    crop_trans = np.stack([imutils.get_affine_transform(center[i], scale[i], 0.0, (w, h))
                           for i in range(B)])
    kp = np.concatenate([g.uniform(0.1 * w, 0.9 * w, (B, 49, 1)),
                         g.uniform(0.1 * h, 0.9 * h, (B, 49, 1)), np.ones((B, 49, 1))], -1)
    pose_3d = np.concatenate([g.normal(0, 0.3, (B, 24, 3)), np.ones((B, 24, 1))], -1)
    arrays = {
        "img": g.standard_normal((B, 3, h, w)),
        "pose": g.normal(0, 0.2, (B, 72)),
        "betas": g.standard_normal((B, 10)),
        "pose_3d": pose_3d,
        "keypoints": kp,
        "has_smpl": np.ones(B),
        "has_pose_3d": np.ones(B),
        "center": center,
        "scale": scale,
        "img_h": img_h,
        "img_w": img_w,
        "focal_length": focal,
        "bbox_info": imutils.bbox_info(center, scale, img_h, img_w, focal),
        "crop_trans": crop_trans,
    }
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=device)
            for k, v in arrays.items()}


# ------------------------------------------------------------------------------------------------
# body model
def cache_root() -> Path:
    """Folder holding the stand-in body model of the benchmarks."""
    return Path(os.environ.get("METAHMR_BENCH_CACHE",
                               Path.home() / ".cache" / "metahmr_bench")).expanduser()


def body_model_root(root: str | os.PathLike | None = None) -> Path:
    """A data root holding ``data/smpl/SMPL_NEUTRAL.pkl``, ``data/J_regressor_extra.npy`` and
    ``data/smpl_mean_params.npz``.

    ``root`` given: used as is (e.g. the real data root, to time the real SMPL). Otherwise the
    synthetic world's stand-ins are written into :func:`cache_root` the first time.
    """
    if root is not None:
        return Path(root)
    root = cache_root()
    from config import DataPaths, MissingFileError
    paths = DataPaths(root)
    try:
        paths.smpl_model("neutral")
        paths.j_regressor_extra()
        paths.smpl_mean_params()
        return root
    except MissingFileError:
        pass
    write_standin_body_model(root)
    return root


def write_standin_body_model(root: str | os.PathLike) -> None:
    """Write the synthetic world's neutral body model (SMPL pickle format, plain numpy), its
    ``J_regressor_extra`` [9, 6890] and SPIN-format mean parameters (the world's upright mean
    pose, zero shape, camera (0.9, 0, 0)) under ``root/data``: the same files as
    ``datasets.synthetic.build_world`` writes, about 2 s, nothing else of the world."""
    import pickle
    from config import DataPaths
    from datasets import synthetic, synthetic_body
    paths = DataPaths(Path(root))
    print(f"writing the synthetic body model into {paths.data_dir} (once)", file=sys.stderr)
    model = synthetic_body.build_body_model("neutral")
    extra, _ = synthetic_body.extra_regressors(model)
    mean = synthetic_body.mean_params(synthetic.mean_pose())
    paths.smpl_dir.mkdir(parents=True, exist_ok=True)
    files = ((paths.data_dir / "J_regressor_extra.npy", lambda fh: np.save(fh, extra)),
             (paths.data_dir / "smpl_mean_params.npz", lambda fh: np.savez(fh, **mean)),
             (paths.smpl_dir / "SMPL_NEUTRAL.pkl",
              lambda fh: pickle.dump(model.data, fh, protocol=2)))
    for path, write in files:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)            # atomic: a concurrent run never reads half a file


def build_body_model(device: torch.device, root: str | os.PathLike | None = None):
    """The neutral SMPL of :func:`body_model_root`, on ``device``."""
    from config import DataPaths
    from models.smpl import build_smpl
    return build_smpl(DataPaths(body_model_root(root)), "neutral").to(device)


def build_networks(model: str, backbone: str, bbox_type: str, device: torch.device,
                   seed: int, root: str | os.PathLike | None = None):
    """Main and aux networks with random weights (seeded) and the mean parameters of
    :func:`body_model_root`, on ``device``."""
    from config import DataPaths
    from models import build_model
    mean = DataPaths(body_model_root(root)).smpl_mean_params()
    torch.manual_seed(seed)
    main = build_model(model, backbone, "main", bbox_type, mean)
    aux = build_model(model, backbone, "aux", bbox_type, mean)
    return place(main, device), place(aux, device)     # as the scripts: --memory_format auto


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, batch: dict) -> None:
    """Set every BatchNorm's running statistics to those of ``batch`` (one forward pass in
    training mode with a cumulative average); the network's mode is restored.

    A random-weight network in eval mode normalises with running mean 0 / variance 1, which
    does not normalise at all: through ResNet-50's 53 layers the features grow until the first
    test-time step is non-finite (and TTO stops after one step). Calibrated, the eval-mode
    network has activations of a trained one's scale, so every step runs.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    net(batch["img"], batch["bbox_info"] if net.use_bbox_info else None)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    net.train(was_training)


# ------------------------------------------------------------------------------------------------
# timing and memory
def time_iterations(fn: Callable[[], object], iters: int, warmup: int,
                    device: torch.device) -> tuple[list[float], list[float]]:
    """Wall seconds and process CPU seconds (all threads) of each of ``iters`` calls of ``fn``
    after ``warmup`` untimed calls. On a shared machine the wall time rises with the other
    processes' load; the CPU time much less (a contended CPU still inflates it a little)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _status_kb(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if m is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(m.group(1))


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a code region, in MiB, above what was in use when the region began.

    CUDA: ``torch.cuda.max_memory_allocated`` (stats reset on entry), minus the memory
    allocated on entry. CPU: the RSS high-water mark (``VmHWM``, reset on entry through
    ``/proc/self/clear_refs``; else ``getrusage().ru_maxrss``, then only a lower bound when the
    set-up peaked higher) minus the RSS on entry. After the region: ``peak_mb`` (increase),
    ``total_mb`` (absolute peak), ``method``.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated - allocated at start"
        else:
            self.reset = _reset_rss_peak()
            self.base = _rss_bytes()
            self.method = ("RSS high-water (VmHWM, reset at start) - RSS at start" if self.reset
                           else "ru_maxrss - RSS at start (lower bound: peak not resettable)")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.reset:
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_mb = (peak - self.base) / 2**20
        self.total_mb = peak / 2**20


def _rss_bytes() -> int:
    try:
        return _status_kb("VmRSS") * 1024
    except OSError:
        return 0


def summarize(times: Sequence[float]) -> dict:
    """Median (the figure), mean, min and max of per-iteration seconds."""
    return {"median": statistics.median(times), "mean": statistics.fmean(times),
            "min": min(times), "max": max(times), "n": len(times)}


# ------------------------------------------------------------------------------------------------
# one child process per mode
def child_result(result: dict) -> None:
    """Child side: hand the mode's figures to the parent (one marked line on stdout)."""
    print(CHILD_MARK + strict_dumps(result), flush=True)


def run_child(script: str | os.PathLike, mode: str, argv: Sequence[str]) -> dict:
    """Parent side: run ``script --_child mode argv...`` in a fresh interpreter; its figures."""
    cmd = [sys.executable, str(script), *argv, "--_child", mode]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    other = [ln for ln in proc.stdout.splitlines() if not ln.startswith(CHILD_MARK)]
    if other:
        print("\n".join(other))
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode!r} failed (exit code {proc.returncode}); its traceback is "
                           f"above. Command: {' '.join(cmd)}")
    return json.loads(lines[-1][len(CHILD_MARK):])


# ------------------------------------------------------------------------------------------------
# output
def print_table(title: str | None, columns: Sequence[tuple[str, str, str]],
                rows: dict[str, dict]) -> None:
    """Print ``rows`` {name: figures} as a table; columns: (key, header, format spec)."""
    width = max([4] + [len(n) for n in rows]) + 2
    cw = [max(len(h), 10) + 2 for _, h, _ in columns]
    if title:
        print(title)
    print(f"{'mode':<{width}}" + "".join(f"{h:>{c}}" for (_, h, _), c in zip(columns, cw)))
    for name, r in rows.items():
        cells = []
        for (k, _, fmt), c in zip(columns, cw):
            v = r.get(k)
            cells.append(f"{'-' if v is None else format(v, fmt):>{c}}")
        print(f"{name:<{width}}" + "".join(cells))


def write_json(path: str | os.PathLike, data: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(strict_dumps(data, indent=2) + "\n")
    print(f"wrote {p}")


def network_parser(doc: str, batch_size: int, batch_help: str, modes, iters: int,
                   warmup: int):
    """Argument parser with the options every benchmark shares (network, batch, crop, device,
    timing, modes, output). ``modes``: the script's mode names (all measured by default)."""
    import argparse
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="cliff", choices=("cliff", "hmr"),
                   help="regressor family: cliff (bbox input, full-image camera) or hmr")
    p.add_argument("--backbone", default="resnet", choices=("resnet", "hrnet", "resnet18"),
                   help="resnet (ResNet-50), hrnet (HRNet-W48; aux: cls-HRNet-W48) or resnet18")
    p.add_argument("--batch_size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--bbox_type", default="rect", choices=("rect", "square"),
                   help="crop size: rect 256x192 (the README's) or square 224x224")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when available")
    p.add_argument("--iters", type=int, default=iters, help="timed calls per mode")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls before timing")
    p.add_argument("--modes", default=",".join(modes),
                   help=f"comma-separated subset of {','.join(modes)}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbones (utils.runtime.compile_backbone); the "
                        "warm-up calls absorb the compilation")
    p.add_argument("--smpl_root", default=None,
                   help="data root holding data/smpl/SMPL_NEUTRAL.pkl, data/J_regressor_extra.npy "
                        "and data/smpl_mean_params.npz (default: the synthetic stand-ins, "
                        "cached in ~/.cache/metahmr_bench or $METAHMR_BENCH_CACHE)")
    p.add_argument("--in_process", action="store_true",
                   help="measure every mode in this process (faster; on the CPU a mode's peak "
                        "memory can then be hidden by an earlier one's)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p


def parse_bench_args(p, argv, modes):
    """Parse and check the shared options; ``args.mode_list`` = the modes to measure and
    ``args.child_argv`` = the options a child process gets (all but the parent's own)."""
    args = p.parse_args(argv)
    args.mode_list = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.mode_list if m not in modes]
    if bad or not args.mode_list:
        p.error(f"--modes: unknown {bad}; choose from {list(modes)}")
    if args.model == "hmr" and args.backbone == "hrnet":
        p.error("--model hmr has no HRNet variant (choose --backbone resnet or resnet18)")
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--iters and --batch_size must be >= 1, --warmup >= 0")
    parent_only = {"help", "_child", "json", "modes", "in_process"}
    args.child_argv = []
    for action in p._actions:
        value = getattr(args, action.dest, None)
        if action.dest in parent_only or value is None or value is False:
            continue
        args.child_argv += ([action.option_strings[-1]] if value is True
                            else [action.option_strings[-1], str(value)])
    return args


def measure_modes(args, script: str, measure_mode: Callable) -> dict:
    """Measure every mode of ``args.mode_list``: each in a fresh child process (honest peak
    memory), or in this process with ``--in_process``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    body_model_root(args.smpl_root)        # written once, before the children start
    modes = {}
    for mode in args.mode_list:
        print(f"measuring {mode} ...", file=sys.stderr, flush=True)
        modes[mode] = (measure_mode(args, mode) if args.in_process
                       else run_child(script, mode, args.child_argv))
    return modes


def bench_main(args, measure_mode: Callable, run: Callable, report: Callable) -> int:
    """Shared entry of the benchmark scripts: a child measures one mode, the parent runs all
    modes (one child each), prints the table and writes ``--json``."""
    if args._child:
        if args.threads:
            torch.set_num_threads(args.threads)
        child_result(measure_mode(args, args._child))
        return 0
    res = run(args)
    report(res)
    if args.json:
        write_json(args.json, res)
    return 0
