"""Shared pieces of the benchmarks (decisions D15): options, set-up, measurement, tables.

Random-weight networks, synthetic inputs and the synthetic SMPL-format body model (written once
into ``$METAHMR_BENCH_CACHE``): no data file is needed. Each mode runs in a fresh child process
(``multiprocessing`` spawn), so that its peak memory is its own.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from config import DataPaths, MissingFileError
from constants import options_crop_size
from utils import options as project_options
from utils.jsonio import to_strict, write_json
from utils.runtime import compile_backbone, place, select_device

REPO = Path(__file__).resolve().parents[1]


def _proc(key: str, path: str = "/proc/self/status") -> int | str | None:
    """A field of a /proc file: ``VmRSS`` etc. in bytes, ``model name`` as text; None if absent."""
    try:
        m = re.search(rf"^{key}\s*:\s*(.+)$", Path(path).read_text(), re.M)
    except OSError:
        return None
    v = m and m.group(1).strip()
    return int(v.split()[0]) * 1024 if v and v.endswith(" kB") else v


def machine_info(device: torch.device) -> dict:
    """The machine and software the figures were measured on."""
    info = {"device": str(device),
            "cpu": _proc("model name", "/proc/cpuinfo") or platform.processor()
            or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_mb=round(props.total_memory / 2**20),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def synthetic_batch(batch_size: int, crop_hw: tuple[int, int], device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key the training step and TTO read, shaped like the dataset's output: plausible
    geometry (a person-sized box in a 1000x1000 image), random values (img ~ N(0, 1))."""
    from utils import imutils
    (h, w), B, g = crop_hw, batch_size, np.random.default_rng(seed)
    img_h = img_w = np.full(B, 1000.0)
    center = np.stack([g.uniform(400, 600, B), g.uniform(400, 600, B)], -1)
    scale = g.uniform(1.5, 2.5, B)
    focal = imutils.diagonal_focal(img_h, img_w) * np.ones(B)
    kp = np.concatenate([g.uniform(0.1 * w, 0.9 * w, (B, 49, 1)),
                         g.uniform(0.1 * h, 0.9 * h, (B, 49, 1)), np.ones((B, 49, 1))], -1)
    pose_3d = np.concatenate([g.normal(0, 0.3, (B, 24, 3)), np.ones((B, 24, 1))], -1)
    arrays = {"img": g.standard_normal((B, 3, h, w)), "pose": g.normal(0, 0.2, (B, 72)),
              "betas": g.standard_normal((B, 10)), "pose_3d": pose_3d, "keypoints": kp,
              "has_smpl": np.ones(B), "has_pose_3d": np.ones(B), "center": center,
              "scale": scale, "img_h": img_h, "img_w": img_w, "focal_length": focal,
              "bbox_info": imutils.bbox_info(center, scale, img_h, img_w, focal),
              "crop_trans": np.stack([imutils.get_affine_transform(c, s, 0.0, (w, h))
                                      for c, s in zip(center, scale)])}
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=device)
            for k, v in arrays.items()}


def body_model_root(root: str | os.PathLike | None = None) -> Path:
    """A data root with the neutral SMPL, J_regressor_extra and mean parameters: ``root`` (e.g.
    the real one), else the cache folder (the synthetic ones written there the first time)."""
    if root is not None:
        return Path(root)
    root = Path(os.environ.get("METAHMR_BENCH_CACHE",
                               Path.home() / ".cache" / "metahmr_bench")).expanduser()
    paths = DataPaths(root)
    try:
        paths.smpl_model("neutral"), paths.j_regressor_extra(), paths.smpl_mean_params()
    except MissingFileError:
        print(f"writing the synthetic body model into {paths.data_dir} (once)", file=sys.stderr)
        from datasets.synthetic import write_body_files
        write_body_files(paths, genders=("neutral",))
    return root


def setup(args, o: argparse.Namespace, device: torch.device, compile_aux: bool = True):
    """(main, aux, smpl, batch) for the options ``o`` of one mode: random-weight networks placed
    as the scripts place them (``--compile``: backbones compiled, the aux one if
    ``compile_aux``), a synthetic batch at ``o``'s crop, every BatchNorm calibrated on it."""
    from models import build_model
    from models.smpl import build_smpl
    paths = DataPaths(body_model_root(args.smpl_root))
    mean = paths.smpl_mean_params()
    torch.manual_seed(args.seed)
    nets = [place(build_model(o.model, o.backbone, role, o.bbox_type, mean), device)
            for role in ("main", "aux")]
    for net in nets[:(2 if compile_aux else 1) if args.compile else 0]:
        compile_backbone(net)
    batch = synthetic_batch(args.batch_size, options_crop_size(o), device, args.seed)
    for net in nets:
        calibrate_batchnorm(net, batch)
    return nets[0], nets[1], build_smpl(paths, "neutral").to(device), batch


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, batch: dict) -> None:
    """BatchNorm running statistics := those of ``batch``. Uncalibrated, a random network in
    eval mode does not normalise, and through ResNet-50 the first TTO step turns non-finite."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in bns], net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    net(batch["img"], batch["bbox_info"] if net.use_bbox_info else None)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    net.train(was_training)


@contextlib.contextmanager
def stopwatch(device: torch.device | None = None):
    """Yields a dict that gets the region's wall and CPU seconds (``wall_s``, ``cpu_s``) on exit,
    after the CUDA ``device``'s work; CPU: all threads of this process and its finished children
    (e.g. DataLoader workers), less sensitive than wall time to a shared machine's load."""
    def cpu() -> float:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + c.ru_utime + c.ru_stime
    times, wall0, cpu0 = {}, time.perf_counter(), cpu()
    yield times
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    times.update(wall_s=time.perf_counter() - wall0, cpu_s=cpu() - cpu0)


def measure(fns: dict, args, device: torch.device, unit: str) -> dict[str, dict]:
    """For each of ``fns`` (calls of one ``unit``), after ``--warmup`` calls: the wall and CPU
    seconds of ``--iters`` calls (medians ``s_per_<unit>``; round-robin over ``fns``, so that
    load hits each alike), and the peak memory (MiB) above the start's over them all, warm-up
    included: CUDA ``max_memory_allocated``; CPU the RSS high-water mark, reset through
    ``/proc/self/clear_refs`` (else ``ru_maxrss``: an upper bound). The kernel's RSS counters are
    approximate, so a growth below their slack reads as 0, never a negative peak."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base, method = (torch.cuda.memory_allocated(device),
                        "cuda max_memory_allocated - allocated at start")
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            method = "RSS high-water (VmHWM, reset at start) - RSS at start"
        except OSError:
            method = "ru_maxrss - RSS at start (upper bound: peak not resettable)"
        base = _proc("VmRSS") or 0
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for i in range(args.warmup + args.iters):
        for k, fn in fns.items():
            with stopwatch(device) as t:
                fn()
            if i >= args.warmup:
                wall[k].append(t["wall_s"])
                cpu[k].append(t["cpu_s"])
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else _proc("VmHWM") if method.startswith("RSS")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {k: {f"s_per_{unit}": statistics.median(wall[k]),
                f"cpu_s_per_{unit}": statistics.median(cpu[k]),
                "peak_mb": max(peak - base, 0) / 2**20, "peak_total_mb": peak / 2**20,
                "times_s": wall[k], "cpu_times_s": cpu[k], "mean_s": statistics.fmean(wall[k]),
                "min_s": min(wall[k]), "max_s": max(wall[k]), "memory_method": method}
            for k in fns}


def add_ratios(modes: dict, base: str, unit: str, time_key: str) -> None:
    """Each mode's time (as ``time_key``), CPU time and peak memory over ``base``'s, or None."""
    b = modes.get(base)
    for r in modes.values():
        for key, fig in ((time_key, f"s_per_{unit}"), (f"cpu_ratio_to_{base}", f"cpu_s_per_{unit}"),
                         (f"peak_ratio_to_{base}", "peak_mb")):
            r[key] = r[fig] / b[fig] if b and b[fig] > 0 else None


def network_parser(doc: str, batch_size: int, batch_help: str, modes, iters: int,
                   warmup: int) -> argparse.ArgumentParser:
    """The options every benchmark shares (network, crop, device, seed: ``utils.options``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    project_options.add_model_options(p)
    project_options.add_bbox_type(p, "rect", " (rect: the README's)")
    project_options.add_crop_scale(p)
    project_options.add_device(p)
    project_options.add_seed(p)
    p.set_defaults(seed=0)
    add = p.add_argument
    add("--batch_size", type=int, default=batch_size, help=batch_help)
    add("--iters", type=int, default=iters, help="timed calls per mode")
    add("--warmup", type=int, default=warmup, help="untimed calls before timing")
    add("--modes", default=",".join(modes), help=f"comma-separated subset of {','.join(modes)}")
    add("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    add("--compile", action="store_true", help="torch.compile the backbones (utils.runtime."
        "compile_backbone); the warm-up calls absorb the compilation")
    add("--smpl_root", default=None,
        help="data root holding data/smpl/SMPL_NEUTRAL.pkl, data/J_regressor_extra.npy and "
             "data/smpl_mean_params.npz (default: the synthetic stand-ins, cached in "
             "~/.cache/metahmr_bench or $METAHMR_BENCH_CACHE)")
    add("--in_process", action="store_true", help="measure every mode in this process (faster; "
        "on the CPU a mode's peak memory can then be hidden by an earlier one's)")
    add("--json", default=None, help="also write the figures to this file")
    return p


def parse_bench_args(p: argparse.ArgumentParser, argv, modes) -> argparse.Namespace:
    """Parse and check the shared options; ``args.mode_list`` = the modes to measure."""
    args = p.parse_args(argv)
    args.mode_list = [m for m in args.modes.split(",") if m]
    if (bad := [m for m in args.mode_list if m not in modes]) or not args.mode_list:
        p.error(f"--modes: unknown {bad}; choose from {list(modes)}")
    if args.model == "hmr" and args.backbone == "hrnet":
        p.error("--model hmr has no HRNet variant (choose --backbone resnet or resnet18)")
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--iters and --batch_size must be >= 1, --warmup >= 0")
    try:
        options_crop_size(args)
    except ValueError as e:
        p.error(f"--crop_scale: {e}")
    return args


def _measure_in_child(measure_mode, args, mode: str):
    """One mode's figures, as strict JSON values, in a child process of ``bench_main``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return to_strict(measure_mode(args, mode))


def bench_main(args, measure_mode, run, report) -> int:
    """Entry of train_step.py and tto.py: measures every mode (``measure_mode``; a spawned child
    process each unless ``--in_process``), gets the result and its config from ``run``, prints
    the table (``report``), writes ``--json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    body_model_root(args.smpl_root)        # written once, before the children start
    results = {}
    for mode in args.mode_list:
        print(f"measuring {mode} ...", file=sys.stderr, flush=True)
        if args.in_process:
            results[mode] = measure_mode(args, mode)
            continue
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            try:
                results[mode] = child.submit(_measure_in_child, measure_mode, args, mode).result()
            except Exception as e:
                raise RuntimeError(f"mode {mode!r} failed; its traceback is above") from e
    device = select_device(args.device)
    res, config = run(args, results, device)
    res.update(machine=machine_info(device), config={
        **config, "crop_hw": list(options_crop_size(args)), "iters": args.iters,
        "warmup": args.warmup, "isolated_processes": not args.in_process, "weights": "random",
        "inputs": "synthetic random batch",
        "body_model": "given root" if args.smpl_root else "synthetic stand-in (SMPL format)"})
    report(res)
    if args.json:
        print(f"wrote {write_json(args.json, res)}")
    return 0


def print_results(res: dict, what: str, settings: str, unit: str, base: str, head: list,
                  tail: list = (), fmt: str = ".3f", counted: str = "iters") -> None:
    """What was timed, on what, then the table: ``head``, CPU figures, memory, ``tail``."""
    c, m = res["config"], res["machine"]
    print(f"\n{what}, {c['model']}/{c['backbone']}, batch {c['batch_size']}, crop "
          f"{c['crop_hw'][0]}x{c['crop_hw'][1]}, {settings}, {c['iters']} {counted} after "
          f"{c['warmup']} warm-up; {m['device']} ({m.get('gpu', m['cpu'])}), "
          f"{m['torch_threads']} threads, torch {m['torch']}")
    cpu = [(f"cpu_s_per_{unit}", f"CPU s/{unit}", fmt),
           (f"cpu_ratio_to_{base}", f"CPU x {base}", ".2f")]
    print_table([*head, *(cpu if m["device"] == "cpu" else []), ("peak_mb", "peak MiB", ".0f"),
                 (f"peak_ratio_to_{base}", f"mem x {base}", ".2f"), *tail], res["modes"])


def print_table(columns: list[tuple[str, str, str]], rows: dict[str, dict]) -> None:
    """``rows`` {name: figures} as a table; columns: (key, header, format spec)."""
    width, cw = max([4] + [len(n) for n in rows]) + 2, [max(len(h), 10) + 2 for _, h, _ in columns]
    print(f"{'mode':<{width}}" + "".join(f"{h:>{c}}" for (_, h, _), c in zip(columns, cw)))
    for name, r in rows.items():
        print(f"{name:<{width}}" + "".join(f"{'-' if r.get(k) is None else format(r[k], f):>{c}}"
                                           for (k, _, f), c in zip(columns, cw)))
