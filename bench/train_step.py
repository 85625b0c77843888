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
from utils import runtime  # noqa: E402

MODES = {
    "plain": ["--no_inner"],
    "meta_fo_batch": ["--first_order", "--tto_mode", "batch"],
    "meta_fo_sample": ["--first_order", "--tto_mode", "sample"],
    "meta_so": ["--tto_mode", "sample"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = common.network_parser(__doc__, batch_size=4, batch_help="training batch size",
                              modes=MODES, iters=10, warmup=2)
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="mixed precision (CUDA only; ignored on CPU, as in training)")
    p.add_argument("--inner_step", type=int, default=1, help="inner SGD steps of the meta modes")
    p.add_argument("--train_lr", action="store_true",
                   help="Adam at the training learning rates (default 0: every iteration starts "
                        "from the same weights; random-weight meta-training can diverge)")
    p.add_argument("--no_interleave", action="store_true",
                   help="report the per-mode child timings instead of a round-robin timing "
                        "of all modes in one process (the default: fair on a loaded machine)")
    return common.parse_bench_args(p, argv, MODES)


def train_options(args, mode: str) -> argparse.Namespace:
    """The training options of one mode, through the real parser (defaults as train.py)."""
    from utils.options import resolve, train_parser
    argv = ["--model", args.model, "--backbone", args.backbone,
            "--batch_size", str(args.batch_size), "--bbox_type", args.bbox_type,
            "--device", args.device, "--amp", args.amp, "--inner_step", str(args.inner_step),
            "--seed", str(args.seed), *MODES[mode]]
    return resolve(train_parser().parse_args(argv))


def measure_mode(args, mode: str) -> dict:
    """Build networks, SMPL, Adam and a batch; time ``MetaStep`` in this process."""
    from constants import crop_size
    from train.trainer import MetaStep, build_optimizer
    device = common.select_device(args.device)
    o = train_options(args, mode)
    model, model_aux = common.build_networks(o.model, o.backbone, o.bbox_type, device,
                                             args.seed, args.smpl_root)
    if args.compile:
        for net in (model, model_aux):
            runtime.compile_backbone(net)
    model.train()
    # as Trainer builds it; learning rates 0 unless --train_lr (module docstring)
    optimizer = build_optimizer(o, model, model_aux, 1.0 if args.train_lr else 0.0)
    smpl = common.build_body_model(device, args.smpl_root)
    step = MetaStep(o, model, model_aux, smpl, optimizer, device)
    batch = common.synthetic_batch(args.batch_size, crop_size(o.bbox_type), device, args.seed)
    for net in (model, model_aux):            # the aux network runs in eval mode
        common.calibrate_batchnorm(net, batch)
    losses, skipped = [], []

    def one():
        out = step(batch)
        losses.append(float(out["loss"]))
        skipped.append(bool(out.get("skipped", False)))

    with common.PeakMemory(device) as mem:
        times, cpu_times = common.time_iterations(one, args.iters, args.warmup, device)
    t = common.summarize(times)
    return {"s_per_iter": t["median"], "images_per_s": args.batch_size / t["median"],
            "peak_mb": mem.peak_mb, "peak_total_mb": mem.total_mb, "times_s": times,
            "cpu_s_per_iter": common.summarize(cpu_times)["median"], "cpu_times_s": cpu_times,
            "mean_s": t["mean"], "min_s": t["min"], "max_s": t["max"],
            "loss_first": losses[0], "loss_last": losses[-1],
            "skipped_steps": sum(skipped), "memory_method": mem.method}


def interleaved_times(args) -> dict[str, dict]:
    """Time every mode round-robin in one process (one network pair, Adam lr 0), so that the
    load of a shared machine hits every mode alike; medians per mode."""
    from constants import crop_size
    from train.trainer import MetaStep, build_optimizer
    device = common.select_device(args.device)
    o0 = train_options(args, "plain")
    model, model_aux = common.build_networks(o0.model, o0.backbone, o0.bbox_type, device,
                                             args.seed, args.smpl_root)
    if args.compile:
        for net in (model, model_aux):
            runtime.compile_backbone(net)
    smpl = common.build_body_model(device, args.smpl_root)
    batch = common.synthetic_batch(args.batch_size, crop_size(o0.bbox_type), device, args.seed)
    for net in (model, model_aux):
        common.calibrate_batchnorm(net, batch)
    model.train()
    optimizer = build_optimizer(o0, model, model_aux, 0.0)
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
    plain = modes.get("plain")
    for r in modes.values():
        r["ratio_to_plain"] = r["s_per_iter"] / plain["s_per_iter"] if plain else None
        r["cpu_ratio_to_plain"] = (r["cpu_s_per_iter"] / plain["cpu_s_per_iter"]
                                   if plain and plain["cpu_s_per_iter"] > 0 else None)
        r["peak_ratio_to_plain"] = (r["peak_mb"] / plain["peak_mb"]
                                    if plain and plain["peak_mb"] > 0 else None)
    from constants import crop_size
    h, w = crop_size(args.bbox_type)
    config = {"model": args.model, "backbone": args.backbone, "batch_size": args.batch_size,
              "bbox_type": args.bbox_type, "crop_hw": [h, w],
              "amp": args.amp if device.type == "cuda" else "off",
              "inner_step": args.inner_step, "iters": args.iters, "warmup": args.warmup,
              "seed": args.seed, "isolated_processes": not args.in_process,
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
    c, m = res["config"], res["machine"]
    where = m.get("gpu", m["cpu"])
    print(f"\nMetaStep, {c['model']}/{c['backbone']}, batch {c['batch_size']}, crop "
          f"{c['crop_hw'][0]}x{c['crop_hw'][1]}, amp {c['amp']}, {c['iters']} iters after "
          f"{c['warmup']} warm-up; {m['device']} ({where}), {m['torch_threads']} threads, "
          f"torch {m['torch']}")
    cols = [("s_per_iter", "s/iter", ".3f"), ("ratio_to_plain", "x plain", ".2f"),
            ("images_per_s", "img/s", ".2f")]
    if m["device"] == "cpu":
        cols += [("cpu_s_per_iter", "CPU s/iter", ".3f"),
                 ("cpu_ratio_to_plain", "CPU x plain", ".2f")]
    cols += [("peak_mb", "peak MiB", ".0f"), ("peak_ratio_to_plain", "mem x plain", ".2f")]
    common.print_table(None, cols, res["modes"])


def main(argv=None) -> int:
    return common.bench_main(parse_args(argv), measure_mode, run, report)


if __name__ == "__main__":
    raise SystemExit(main())
