"""Test-time optimisation throughput, per sample against per batch (decisions D15).

    python bench/tto.py --model cliff --backbone resnet --batch_size 20 --device cpu \
                        [--tto_chunk 0] [--tto_workers 0] [--adapt_val_step] [--iters 3] \
                        [--warmup 1] [--json out.json]

Times ``train.tto.test_time_optimize`` on random-weight networks and a synthetic batch at the
seed README's settings (``README_TTO``, ``--test_val_step 14``, rect crop, no early stop) in the
modes ``batch`` (released) and ``sample``: images per second, peak memory (one child process
per mode), sample/batch ratios.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from utils import options as project_options  # noqa: E402

MODES = ("batch", "sample")
README_TTO = ["--inner_lr", "1e-5", "--after_innerlr", "1e-5", "--inner_step", "1"]
# the options of eval_cliff.py / eval_hmr.py this benchmark sets from its own command line
EVAL_KEYS = ("backbone", "batch_size", "bbox_type", "crop_scale", "device", "seed", "tto_chunk",
             "tto_workers", "test_val_step", "adapt_val_step")


def parse_args(argv=None):
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


def measure_mode(args, mode: str) -> dict:
    """Time ``test_time_optimize`` of one mode in this process: the eval script's defaults, the
    README's TTO rates, the mode, then this benchmark's options (EVAL_KEYS). ``--compile``: the
    main backbone only (TTO swaps its weights every step)."""
    from train.tto import TTOConfig, test_time_optimize
    from utils.camera import Camera
    o = project_options.eval_parser(args.model).parse_args([*README_TTO, "--tto_mode", mode])
    vars(o).update({k: getattr(args, k) for k in EVAL_KEYS})
    o = project_options.resolve(o)   # fills --model (always None here) and --crop_scale
    device = common.select_device(args.device)
    model, model_aux, smpl, batch = common.setup(args, o, device, compile_aux=False)
    model.eval()
    model_aux.eval().requires_grad_(False)           # as in evaluation
    camera, cfg, last = Camera.from_options(o), TTOConfig.from_options(o), {}

    def one():
        last["res"] = test_time_optimize(model, model_aux, batch, smpl, camera, cfg)

    r = common.measure({mode: one}, args, device, "batch")[mode]
    res = last["res"]
    return {**r, "images_per_s": args.batch_size / r["s_per_batch"],
            "s_per_image": r["s_per_batch"] / args.batch_size,
            "mean_steps": float(res.steps.float().mean()), "nonfinite": int(res.nonfinite.sum()),
            "loss_2d_before": float(res.loss_2d_before.float().mean()),
            "loss_2d_after": float(res.loss_2d_after.float().mean())}


def run(args, modes: dict, device):
    ratios = {}
    if "batch" in modes and "sample" in modes:
        common.add_ratios(modes, "batch", "batch", "time_ratio_to_batch")
        ratios = {"sample_over_batch_time": modes["sample"]["time_ratio_to_batch"],
                  "sample_over_batch_peak_mb": modes["sample"]["peak_ratio_to_batch"]}
    return {"modes": modes, "ratios": ratios}, {
        **{k: getattr(args, k) for k in EVAL_KEYS if k != "device"}, "model": args.model,
        "tto_chunk_note": "0 = auto: whole batch on CUDA, 1 on the CPU (train/tto.py)",
        "steps": f"1 + {args.test_val_step}", "inner_lr": 1e-5, "after_innerlr": 1e-5}


def report(res: dict) -> None:
    c = res["config"]
    common.print_results(
        res, "test_time_optimize", f"steps {c['steps']}, adapt_val_step "
        f"{'on' if c['adapt_val_step'] else 'off'}, tto_chunk {c['tto_chunk'] or '0 (auto)'}, "
        f"tto_workers {c['tto_workers'] or '0 (auto)'}", "batch", "batch",
        [("images_per_s", "img/s", ".2f"), ("s_per_batch", "s/batch", ".2f"),
         ("time_ratio_to_batch", "time x batch", ".2f")],
        [("mean_steps", "steps", ".1f"), ("nonfinite", "nonfinite", "d")], ".2f", "batches")
    if r := res["ratios"]:
        print(f"sample/batch: {r['sample_over_batch_time']:.2f}x the time per batch"
              + (f", {r['sample_over_batch_peak_mb']:.2f}x the peak memory"
                 if r["sample_over_batch_peak_mb"] is not None else ""))


if __name__ == "__main__":
    raise SystemExit(common.bench_main(parse_args(), measure_mode, run, report))
