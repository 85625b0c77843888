"""Training-iteration cost of Meta-HMR against plain training (decisions D15).

    python bench/train_step.py --model cliff --backbone resnet --batch_size 4 --device cpu \
                               [--iters 10] [--warmup 2] [--amp off|bf16|fp16] [--json out.json]

One full iteration of ``train.trainer.MetaStep`` (GT mesh, backbone once, aux pseudo-labels,
inner step, outer loss, backward, Adam) per call, on random-weight networks and a synthetic
batch (no data file needed), in four modes:

=================  ===============================================================
plain              ``--no_inner``: supervised training only (the baseline)
meta_fo_batch      ``--first_order --tto_mode batch`` (released granularity)
meta_fo_sample     ``--first_order --tto_mode sample`` (per-sample fast weights)
meta_so            second-order MAML, sample mode (aux network gets the meta-gradient)
=================  ===============================================================

Figures per mode: seconds per iteration (median of ``--iters`` after ``--warmup``), peak memory
above the set-up (CPU: RSS high-water; CUDA: ``max_memory_allocated``), each measured in its
own child process, and the ratio to ``plain`` measured in the same run.

Adam runs with learning rate 0 by default (``--train_lr``: the training rates): its arithmetic
is the same at any rate, and every timed iteration then does the same work from the same
weights. With random weights and one fixed batch, meta-training at the real rates diverges
within a few iterations (the CLIFF 2D loss explodes, the loss turns non-finite and the step
skips backward and Adam), which would make the times meaningless.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from utils import options as project_options  # noqa: E402

MODES = {
    "plain": ["--no_inner"],
    "meta_fo_batch": ["--first_order", "--tto_mode", "batch"],
    "meta_fo_sample": ["--first_order", "--tto_mode", "sample"],
    "meta_so": ["--tto_mode", "sample"],
}
# the options of train.py this benchmark sets from its own command line
TRAIN_KEYS = ("model", "backbone", "batch_size", "bbox_type", "device", "amp", "inner_step", "seed")


def parse_args(argv=None) -> argparse.Namespace:
    p = common.network_parser(__doc__, batch_size=4, batch_help="training batch size",
                              modes=MODES, iters=10, warmup=2)
    project_options.add_amp(p)
    p.add_argument("--train_lr", action="store_true",
                   help="Adam at the training learning rates (default 0: every iteration starts "
                        "from the same weights; random-weight meta-training can diverge)")
    p.add_argument("--inner_step", type=int, default=1, help="inner SGD steps of the meta modes")
    p.add_argument("--no_interleave", action="store_true",
                   help="report the per-mode child timings instead of a round-robin timing "
                        "of all modes in one process (the default: fair on a loaded machine)")
    return common.parse_bench_args(p, argv, MODES)


def train_options(args, mode: str) -> argparse.Namespace:
    """The training options of one mode: train.py's defaults, the mode's flags, then this
    benchmark's network, batch, device, amp, inner step and seed."""
    o = project_options.train_parser().parse_args(MODES[mode])
    vars(o).update({k: getattr(args, k) for k in TRAIN_KEYS})
    return project_options.resolve(o)


def _prepare(args, mode: str, device, lr_scale: float):
    """Networks (the main one in training mode), SMPL, Adam (as Trainer builds it), a batch."""
    from train.trainer import build_optimizer
    o = train_options(args, mode)
    model, model_aux, smpl, batch = common.setup(args, o, device)
    model.train()                        # the aux network runs in eval mode
    optimizer = build_optimizer(o, model, model_aux, lr_scale)
    return o, model, model_aux, smpl, optimizer, batch


def measure_mode(args, mode: str) -> dict:
    """Build networks, SMPL, Adam and a batch; time ``MetaStep`` in this process. Learning
    rates 0 unless ``--train_lr`` (module docstring)."""
    from train.trainer import MetaStep
    device = common.select_device(args.device)
    o, model, model_aux, smpl, optimizer, batch = _prepare(args, mode, device,
                                                           1.0 if args.train_lr else 0.0)
    step = MetaStep(o, model, model_aux, smpl, optimizer, device)
    losses, skipped = [], []

    def one():
        out = step(batch)
        losses.append(float(out["loss"]))
        skipped.append(bool(out.get("skipped", False)))

    r = common.measure(one, args, device, "iter")
    return {**r, "images_per_s": args.batch_size / r["s_per_iter"], "loss_first": losses[0],
            "loss_last": losses[-1], "skipped_steps": sum(skipped)}


def interleaved_times(args) -> dict[str, dict]:
    """Time every mode round-robin in one process (one network pair, Adam lr 0), so that the
    load of a shared machine hits every mode alike; medians per mode."""
    from train.trainer import MetaStep
    device = common.select_device(args.device)
    _, model, model_aux, smpl, optimizer, batch = _prepare(args, "plain", device, 0.0)
    steps = {m: MetaStep(train_options(args, m), model, model_aux, smpl, optimizer, device)
             for m in args.mode_list}
    wall = {m: [] for m in steps}
    cpu = {m: [] for m in steps}
    for it in range(args.warmup + args.iters):
        for m, step in steps.items():
            model_aux.requires_grad_(step.aux_grad)
            t0, c0 = time.perf_counter(), time.process_time()
            step(batch)
            common.synchronize(device)
            if it >= args.warmup:
                wall[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
    return {m: {"s_per_iter": common.summarize(wall[m])["median"], "times_s": wall[m],
                "cpu_s_per_iter": common.summarize(cpu[m])["median"]} for m in steps}


def run(args) -> dict:
    device = common.select_device(args.device)
    modes = common.measure_modes(args, __file__, measure_mode)
    if not args.no_interleave:
        print("timing all modes interleaved ...", file=sys.stderr, flush=True)
        for m, t in interleaved_times(args).items():
            r = modes[m]
            r["isolated_s_per_iter"], r["isolated_cpu_s_per_iter"] = (r["s_per_iter"],
                                                                      r["cpu_s_per_iter"])
            r.update(t, images_per_s=args.batch_size / t["s_per_iter"])
    common.add_ratios(modes, "plain", "iter", "ratio_to_plain")
    from constants import crop_size
    config = {**{k: getattr(args, k) for k in TRAIN_KEYS if k != "device"},
              "crop_hw": list(crop_size(args.bbox_type)),
              "amp": args.amp if device.type == "cuda" else "off",
              "iters": args.iters, "warmup": args.warmup,
              "isolated_processes": not args.in_process,
              "timing": "isolated" if args.no_interleave else "interleaved round-robin",
              "adam_lr": "training rates" if args.train_lr else 0.0,
              "weights": "random", "inputs": "synthetic random batch",
              "body_model": "given root" if args.smpl_root else "synthetic stand-in (SMPL format)",
              "compile": args.compile,
              "mode_flags": {m: " ".join(MODES[m]) for m in args.mode_list}}
    return {"modes": modes, "machine": common.machine_info(device), "config": config}


def report(res: dict) -> None:
    for name, r in res["modes"].items():
        if r.get("skipped_steps"):
            print(f"warning: {name}: {r['skipped_steps']} iteration(s) had a non-finite loss and "
                  f"skipped backward and Adam; its time is not representative")
    common.print_header("MetaStep", f"amp {res['config']['amp']}", res)
    cols = [("s_per_iter", "s/iter", ".3f"), ("ratio_to_plain", "x plain", ".2f"),
            ("images_per_s", "img/s", ".2f")]
    if res["machine"]["device"] == "cpu":
        cols += [("cpu_s_per_iter", "CPU s/iter", ".3f"),
                 ("cpu_ratio_to_plain", "CPU x plain", ".2f")]
    cols += [("peak_mb", "peak MiB", ".0f"), ("peak_ratio_to_plain", "mem x plain", ".2f")]
    common.print_table(None, cols, res["modes"])


def main(argv=None) -> int:
    return common.bench_main(parse_args(argv), measure_mode, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
