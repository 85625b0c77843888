"""Test-time optimisation throughput, per sample against per batch (decisions D15).

    python bench/tto.py --model cliff --backbone resnet --batch_size 20 --device cpu \
                        [--tto_chunk 0] [--tto_workers 0] [--adapt_val_step] [--iters 3] \
                        [--warmup 1] \
                        [--json out.json]

Times ``train.tto.test_time_optimize`` on random-weight networks and a synthetic batch (no data
file needed) at the seed README's evaluation settings: ``--inner_lr 1e-5 --after_innerlr 1e-5
--inner_step 1 --test_val_step 14`` (step 0 + 14 Adam steps), ``--bbox_type rect``.
``--adapt_val_step`` is off by default so that every step runs (random weights would make the
early stop arbitrary); turn it on to time the README command as is.

Modes: ``batch`` (one adapted copy per batch, the released code) and ``sample`` (every sample
adapted on its own; ``--tto_chunk`` samples vectorised together, 0 = ``test_time_optimize``'s
automatic choice: the whole batch on CUDA, a loop over samples on the CPU). Figures:
images per second (batch size / median seconds per batch), peak memory above the set-up
(CPU: RSS high-water; CUDA: ``max_memory_allocated``), each mode in its own child process, and
the sample/batch ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

MODES = ("batch", "sample")
README_TTO = ["--inner_lr", "1e-5", "--after_innerlr", "1e-5", "--inner_step", "1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = common.network_parser(__doc__, batch_size=20, batch_help="evaluation (TTO) batch size",
                              modes=MODES, iters=3, warmup=1)
    p.add_argument("--tto_chunk", type=int, default=0,
                   help="sample mode: samples adapted together under vmap; 0 = auto "
                        "(test_time_optimize's choice: the whole batch on CUDA, one at a time "
                        "on the CPU), 1 = a loop over samples")
    p.add_argument("--tto_workers", type=int, default=0,
                   help="sample mode: chunks adapted concurrently in CPU threads; 0 = auto "
                        "(one per torch thread on the CPU), 1 = one after the other")
    p.add_argument("--test_val_step", type=int, default=14, help="Adam steps after step 0")
    p.add_argument("--adapt_val_step", action="store_true",
                   help="early stop at |loss change| < 2e-5 (off here: all steps run)")
    args = common.parse_bench_args(p, argv, MODES)
    if args.tto_chunk < 0 or args.tto_workers < 0:
        p.error("--tto_chunk and --tto_workers must be >= 0")
    if args.compile and args.tto_workers != 1:   # a worker's network copy would still call
        p.error("--compile needs --tto_workers 1")   # the compiled original's backbone
    return args


def eval_options(args, mode: str) -> argparse.Namespace:
    """The evaluation options of one mode, through the real eval parser."""
    from utils.options import eval_parser, fill_checkpoint_defaults, resolve
    argv = ["--backbone", args.backbone, "--batch_size", str(args.batch_size),
            "--bbox_type", args.bbox_type, "--device", args.device, *README_TTO,
            "--test_val_step", str(args.test_val_step), "--tto_mode", mode,
            "--tto_chunk", str(args.tto_chunk), "--tto_workers", str(args.tto_workers),
            "--seed", str(args.seed)]
    if args.adapt_val_step:
        argv.append("--adapt_val_step")
    return resolve(fill_checkpoint_defaults(eval_parser(args.model).parse_args(argv)))


def measure_mode(args, mode: str) -> dict:
    """Build networks, SMPL and a batch; time ``test_time_optimize`` in this process."""
    from constants import crop_size
    from train.tto import TTOConfig, test_time_optimize
    from utils.camera import Camera
    device = common.select_device(args.device)
    o = eval_options(args, mode)
    model, model_aux = common.build_networks(o.model, o.backbone, o.bbox_type, device,
                                             args.seed, args.smpl_root)
    if args.compile:   # the main backbone (TTO swaps its weights every step)
        from utils.runtime import compile_backbone
        compile_backbone(model)
    model.eval()
    model_aux.eval()
    model_aux.requires_grad_(False)           # as in evaluation
    smpl = common.build_body_model(device, args.smpl_root)
    camera, cfg = Camera.from_options(o), TTOConfig.from_options(o)
    batch = common.synthetic_batch(args.batch_size, crop_size(o.bbox_type), device, args.seed)
    for net in (model, model_aux):
        common.calibrate_batchnorm(net, batch)
    last = {}

    def one():
        last["res"] = test_time_optimize(model, model_aux, batch, smpl, camera, cfg)

    with common.PeakMemory(device) as mem:
        times, cpu_times = common.time_iterations(one, args.iters, args.warmup, device)
    t = common.summarize(times)
    res = last["res"]
    return {"images_per_s": args.batch_size / t["median"], "s_per_batch": t["median"],
            "s_per_image": t["median"] / args.batch_size,
            "peak_mb": mem.peak_mb, "peak_total_mb": mem.total_mb, "times_s": times,
            "cpu_s_per_batch": common.summarize(cpu_times)["median"], "cpu_times_s": cpu_times,
            "mean_s": t["mean"], "min_s": t["min"], "max_s": t["max"],
            "mean_steps": float(res.steps.float().mean()),
            "nonfinite": int(res.nonfinite.sum()),
            "loss_2d_before": float(res.loss_2d_before.float().mean()),
            "loss_2d_after": float(res.loss_2d_after.float().mean()),
            "memory_method": mem.method}


def run(args) -> dict:
    device = common.select_device(args.device)
    modes = common.measure_modes(args, __file__, measure_mode)
    ratios = {}
    if "batch" in modes and "sample" in modes:
        b, s = modes["batch"], modes["sample"]
        ratios = {"sample_over_batch_time": s["s_per_batch"] / b["s_per_batch"],
                  "sample_over_batch_peak_mb": (s["peak_mb"] / b["peak_mb"]
                                                if b["peak_mb"] > 0 else None)}
        for r in modes.values():
            r["time_ratio_to_batch"] = r["s_per_batch"] / b["s_per_batch"]
            r["cpu_ratio_to_batch"] = (r["cpu_s_per_batch"] / b["cpu_s_per_batch"]
                                       if b["cpu_s_per_batch"] > 0 else None)
            r["peak_ratio_to_batch"] = r["peak_mb"] / b["peak_mb"] if b["peak_mb"] > 0 else None
    from constants import crop_size
    h, w = crop_size(args.bbox_type)
    config = {"model": args.model, "backbone": args.backbone, "batch_size": args.batch_size,
              "bbox_type": args.bbox_type, "crop_hw": [h, w], "tto_chunk": args.tto_chunk,
              "tto_workers": args.tto_workers,
              "tto_chunk_note": "0 = auto: whole batch on CUDA, 1 on the CPU (train/tto.py)",
              "steps": f"1 + {args.test_val_step}", "test_val_step": args.test_val_step,
              "adapt_val_step": args.adapt_val_step, "inner_lr": 1e-5, "after_innerlr": 1e-5,
              "iters": args.iters, "warmup": args.warmup, "seed": args.seed,
              "isolated_processes": not args.in_process, "weights": "random",
              "inputs": "synthetic random batch",
              "body_model": "given root" if args.smpl_root else "synthetic stand-in (SMPL format)"}
    return {"modes": modes, "ratios": ratios, "machine": common.machine_info(device),
            "config": config}


def report(res: dict) -> None:
    c, m = res["config"], res["machine"]
    where = m.get("gpu", m["cpu"])
    print(f"\ntest_time_optimize, {c['model']}/{c['backbone']}, batch {c['batch_size']}, crop "
          f"{c['crop_hw'][0]}x{c['crop_hw'][1]}, steps {c['steps']}, adapt_val_step "
          f"{'on' if c['adapt_val_step'] else 'off'}, tto_chunk {c['tto_chunk'] or '0 (auto)'}, "
          f"tto_workers {c.get('tto_workers') or '0 (auto)'}, "
          f"{c['iters']} batches after {c['warmup']} warm-up; {m['device']} ({where}), "
          f"{m['torch_threads']} threads, torch {m['torch']}")
    cols = [("images_per_s", "img/s", ".2f"), ("s_per_batch", "s/batch", ".2f"),
            ("time_ratio_to_batch", "time x batch", ".2f")]
    if m["device"] == "cpu":
        cols += [("cpu_s_per_batch", "CPU s/batch", ".2f"),
                 ("cpu_ratio_to_batch", "CPU x batch", ".2f")]
    cols += [("peak_mb", "peak MiB", ".0f"), ("peak_ratio_to_batch", "mem x batch", ".2f"),
             ("mean_steps", "steps", ".1f"), ("nonfinite", "nonfinite", "d")]
    common.print_table(None, cols, res["modes"])
    r = res["ratios"]
    if r:
        print(f"sample/batch: {r['sample_over_batch_time']:.2f}x the time per batch"
              + (f", {r['sample_over_batch_peak_mb']:.2f}x the peak memory"
                 if r["sample_over_batch_peak_mb"] is not None else ""))


def main(argv=None) -> int:
    return common.bench_main(parse_args(argv), measure_mode, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
