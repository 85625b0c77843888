"""Shared pieces of the benchmarks (decisions D15): machine description, synthetic inputs, the
body model, peak-memory measurement, one child process per mode, tables and JSON.

Every benchmark runs random-weight networks on synthetic inputs, so no data file is needed.
The SMPL-format body model is the synthetic world's stand-in (``datasets.synthetic_body``),
written once into a cache folder (``~/.cache/metahmr_bench``, or ``$METAHMR_BENCH_CACHE``);
its cost is that of the real SMPL (6890 vertices, 24 joints), which is all a timing needs.
BatchNorm statistics are set from the synthetic batch (:func:`calibrate_batchnorm`) so that
random networks in eval mode stay finite.

Each mode is measured in a fresh child process (the script re-runs itself with ``--_child`` and
the parent's parsed options as JSON) so that its peak memory is its own: the peak of one mode
never hides the next one's, and the allocator starts empty every time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
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
from utils import options as project_options  # noqa: E402
from utils.runtime import compile_backbone, place, select_device  # noqa: E402,F401 (scripts)
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
    synthetic world's neutral model, regressors and mean parameters
    (``datasets.synthetic.write_body_files``, about 2 s) are written into :func:`cache_root`
    the first time.
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
    print(f"writing the synthetic body model into {paths.data_dir} (once)", file=sys.stderr)
    from datasets.synthetic import write_body_files
    write_body_files(paths, genders=("neutral",))
    return root


def setup(args, o: argparse.Namespace, device: torch.device, compile_aux: bool = True):
    """(main, aux, smpl, batch) for the options ``o`` of one mode: random-weight networks
    (seeded by ``--seed``, placed as the scripts place them) with the mean parameters of
    :func:`body_model_root` (``--smpl_root``), its neutral SMPL, a synthetic batch of
    ``--batch_size`` at ``o``'s crop, every BatchNorm calibrated on it. ``--compile``: the
    backbones compiled (the aux one too unless ``compile_aux`` is False)."""
    from config import DataPaths
    from constants import crop_size
    from models import build_model
    from models.smpl import build_smpl
    paths = DataPaths(body_model_root(args.smpl_root))
    mean = paths.smpl_mean_params()
    torch.manual_seed(args.seed)
    nets = [place(build_model(o.model, o.backbone, role, o.bbox_type, mean), device)
            for role in ("main", "aux")]
    for net in nets[:(2 if compile_aux else 1) if args.compile else 0]:
        compile_backbone(net)
    smpl = build_smpl(paths, "neutral").to(device)
    batch = synthetic_batch(args.batch_size, crop_size(o.bbox_type), device, args.seed)
    for net in nets:
        calibrate_batchnorm(net, batch)
    return nets[0], nets[1], smpl, batch


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


def measure(fn: Callable[[], object], args, device: torch.device, unit: str) -> dict:
    """Time ``--iters`` calls of ``fn`` after ``--warmup`` under :class:`PeakMemory`: wall and
    CPU seconds per ``unit`` (medians, and every call's), mean / min / max, peak memory."""
    with PeakMemory(device) as mem:
        times, cpu_times = time_iterations(fn, args.iters, args.warmup, device)
    t = summarize(times)
    return {f"s_per_{unit}": t["median"], f"cpu_s_per_{unit}": summarize(cpu_times)["median"],
            "peak_mb": mem.peak_mb, "peak_total_mb": mem.total_mb, "times_s": times,
            "cpu_times_s": cpu_times, "mean_s": t["mean"], "min_s": t["min"], "max_s": t["max"],
            "memory_method": mem.method}


def add_ratios(modes: dict, base: str, unit: str, time_key: str) -> None:
    """Each mode's time (``time_key``), CPU time and peak memory over mode ``base``'s (None
    where ``base`` was not measured or its figure is 0)."""
    b = modes.get(base)
    for r in modes.values():
        for key, fig in ((time_key, f"s_per_{unit}"), (f"cpu_ratio_to_{base}", f"cpu_s_per_{unit}"),
                         (f"peak_ratio_to_{base}", "peak_mb")):
            r[key] = r[fig] / b[fig] if b and b[fig] > 0 else None


# ------------------------------------------------------------------------------------------------
# one child process per mode
def run_child(script: str | os.PathLike, mode: str, args: argparse.Namespace) -> dict:
    """Parent side: run ``script --_child JSON`` in a fresh interpreter, JSON = the mode and the
    parent's parsed options; the figures the child printed (:func:`bench_main`)."""
    cmd = [sys.executable, str(script), "--_child",
           strict_dumps({"mode": mode, "options": vars(args)})]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    other = [ln for ln in proc.stdout.splitlines() if not ln.startswith(CHILD_MARK)]
    if other:
        print("\n".join(other))
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode!r} failed (exit code {proc.returncode}); its traceback is "
                           f"above. Command: {shlex.join(cmd)}")
    return json.loads(lines[-1][len(CHILD_MARK):])


# ------------------------------------------------------------------------------------------------
# output
def print_header(what: str, settings: str, res: dict, unit: str = "iters") -> None:
    """The line above a table: what was timed, its settings, the machine."""
    c, m = res["config"], res["machine"]
    print(f"\n{what}, {c['model']}/{c['backbone']}, batch {c['batch_size']}, crop "
          f"{c['crop_hw'][0]}x{c['crop_hw'][1]}, {settings}, {c['iters']} {unit} after "
          f"{c['warmup']} warm-up; {m['device']} ({m.get('gpu', m['cpu'])}), "
          f"{m['torch_threads']} threads, torch {m['torch']}")


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


# ------------------------------------------------------------------------------------------------
# options and the entry point
def network_parser(doc: str, batch_size: int, batch_help: str, modes, iters: int,
                   warmup: int) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark shares: the network, crop, device and
    seed options of ``utils.options`` (default seed 0, crop rect), batch, timing, modes,
    output. ``modes``: the script's mode names (all measured by default)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    project_options.add_model_options(p)
    project_options.add_bbox_type(p, "rect", " (rect: the README's)")
    project_options.add_device(p)
    project_options.add_seed(p)
    p.set_defaults(seed=0)
    p.add_argument("--batch_size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--iters", type=int, default=iters, help="timed calls per mode")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls before timing")
    p.add_argument("--modes", default=",".join(modes),
                   help=f"comma-separated subset of {','.join(modes)}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
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


def parse_bench_args(p: argparse.ArgumentParser, argv, modes) -> argparse.Namespace:
    """Parse and check the shared options; ``args.mode_list`` = the modes to measure."""
    args = p.parse_args(argv)
    args.mode_list = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.mode_list if m not in modes]
    if bad or not args.mode_list:
        p.error(f"--modes: unknown {bad}; choose from {list(modes)}")
    if args.model == "hmr" and args.backbone == "hrnet":
        p.error("--model hmr has no HRNet variant (choose --backbone resnet or resnet18)")
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--iters and --batch_size must be >= 1, --warmup >= 0")
    return args


def measure_modes(args, script: str, measure_mode: Callable) -> dict:
    """Measure every mode of ``args.mode_list``: each in a fresh child process (honest peak
    memory), or in this process with ``--in_process``."""
    body_model_root(args.smpl_root)        # written once, before the children start
    modes = {}
    for mode in args.mode_list:
        print(f"measuring {mode} ...", file=sys.stderr, flush=True)
        modes[mode] = (measure_mode(args, mode) if args.in_process
                       else run_child(script, mode, args))
    return modes


def bench_main(args, measure_mode: Callable, run: Callable, report: Callable) -> int:
    """Shared entry of the benchmark scripts: a child (``--_child``) measures one mode with the
    parent's options and prints its figures on one marked line; the parent runs all modes
    (one child each), prints the table and writes ``--json``."""
    child = json.loads(args._child) if args._child else None
    if child:
        args = argparse.Namespace(**child["options"])
    if args.threads:
        torch.set_num_threads(args.threads)
    if child:
        print(CHILD_MARK + strict_dumps(measure_mode(args, child["mode"])), flush=True)
        return 0
    res = run(args)
    report(res)
    if args.json:
        write_json(args.json, res)
    return 0
