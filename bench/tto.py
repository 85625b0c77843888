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
from utils import options as project_options  # noqa: E402

MODES = ("batch", "sample")
README_TTO = ["--inner_lr", "1e-5", "--after_innerlr", "1e-5", "--inner_step", "1"]
# the options of eval_cliff.py / eval_hmr.py this benchmark sets from its own command line
EVAL_KEYS = ("backbone", "batch_size", "bbox_type", "device", "seed", "tto_chunk", "tto_workers",
             "test_val_step", "adapt_val_step")


def parse_args(argv=None) -> argparse.Namespace:
    p = common.network_parser(__doc__, batch_size=20, batch_help="evaluation (TTO) batch size",
                              modes=MODES, iters=3, warmup=1)
    project_options.add_tto_parallel(p)
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
    """The evaluation options of one mode: the eval script's defaults, the README's TTO rates,
    the mode, then this benchmark's network, batch, device, seed and TTO settings."""
    o = project_options.eval_parser(args.model).parse_args([*README_TTO, "--tto_mode", mode])
    vars(o).update({k: getattr(args, k) for k in EVAL_KEYS})
    return project_options.resolve(project_options.fill_checkpoint_defaults(o))


def measure_mode(args, mode: str) -> dict:
    """Build networks, SMPL and a batch; time ``test_time_optimize`` in this process (with
    ``--compile``: the main backbone, whose weights TTO swaps every step)."""
    from train.tto import TTOConfig, test_time_optimize
    from utils.camera import Camera
    device = common.select_device(args.device)
    o = eval_options(args, mode)
    model, model_aux, smpl, batch = common.setup(args, o, device, compile_aux=False)
    model.eval()
    model_aux.eval()
    model_aux.requires_grad_(False)           # as in evaluation
    camera, cfg = Camera.from_options(o), TTOConfig.from_options(o)
    last = {}

    def one():
        last["res"] = test_time_optimize(model, model_aux, batch, smpl, camera, cfg)

    r = common.measure(one, args, device, "batch")
    res = last["res"]
    return {**r, "images_per_s": args.batch_size / r["s_per_batch"],
            "s_per_image": r["s_per_batch"] / args.batch_size,
            "mean_steps": float(res.steps.float().mean()),
            "nonfinite": int(res.nonfinite.sum()),
            "loss_2d_before": float(res.loss_2d_before.float().mean()),
            "loss_2d_after": float(res.loss_2d_after.float().mean())}


def run(args) -> dict:
    device = common.select_device(args.device)
    modes = common.measure_modes(args, __file__, measure_mode)
    ratios = {}
    if "batch" in modes and "sample" in modes:
        common.add_ratios(modes, "batch", "batch", "time_ratio_to_batch")
        s = modes["sample"]
        ratios = {"sample_over_batch_time": s["time_ratio_to_batch"],
                  "sample_over_batch_peak_mb": s["peak_ratio_to_batch"]}
    from constants import crop_size
    config = {**{k: getattr(args, k) for k in EVAL_KEYS if k != "device"},
              "model": args.model, "crop_hw": list(crop_size(args.bbox_type)),
              "tto_chunk_note": "0 = auto: whole batch on CUDA, 1 on the CPU (train/tto.py)",
              "steps": f"1 + {args.test_val_step}", "inner_lr": 1e-5, "after_innerlr": 1e-5,
              "iters": args.iters, "warmup": args.warmup,
              "isolated_processes": not args.in_process, "weights": "random",
              "inputs": "synthetic random batch",
              "body_model": "given root" if args.smpl_root else "synthetic stand-in (SMPL format)"}
    return {"modes": modes, "ratios": ratios, "machine": common.machine_info(device),
            "config": config}


def report(res: dict) -> None:
    c = res["config"]
    common.print_header("test_time_optimize", f"steps {c['steps']}, adapt_val_step "
                        f"{'on' if c['adapt_val_step'] else 'off'}, tto_chunk "
                        f"{c['tto_chunk'] or '0 (auto)'}, tto_workers "
                        f"{c['tto_workers'] or '0 (auto)'}", res, unit="batches")
    cols = [("images_per_s", "img/s", ".2f"), ("s_per_batch", "s/batch", ".2f"),
            ("time_ratio_to_batch", "time x batch", ".2f")]
    if res["machine"]["device"] == "cpu":
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
