"""Training-iteration cost of Meta-HMR against plain training (decisions D15).

    python bench/train_step.py --model cliff --backbone resnet --batch_size 4 --device cpu \
                               [--iters 10] [--warmup 2] [--amp off|bf16|fp16] [--json out.json]

One ``train.meta_step.MetaStep`` iteration per call on random-weight networks and a synthetic
batch, in the modes of ``MODES`` (plain; first order per batch, as released, and per sample;
second order): seconds per iteration (medians; all modes round-robin in one process), peak
memory (one child process per mode), ratios to ``plain``. Adam runs at lr 0 unless
``--train_lr``: the same arithmetic and weights every iteration (random-weight meta-training on
one batch diverges at the real rates, and skipped steps would make the times meaningless).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from utils import options as project_options  # noqa: E402

MODES = {"plain": ["--no_inner"], "meta_fo_batch": ["--first_order", "--tto_mode", "batch"],
         "meta_fo_sample": ["--first_order", "--tto_mode", "sample"],
         "meta_so": ["--tto_mode", "sample"]}
# the options of train.py this benchmark sets from its own command line
TRAIN_KEYS = ("model", "backbone", "batch_size", "bbox_type", "crop_scale", "device", "amp",
              "inner_step", "seed")
# the figures that the interleaved timing replaces (the isolated ones are kept as isolated_*)
TIMES = ("s_per_iter", "cpu_s_per_iter", "times_s", "cpu_times_s", "mean_s", "min_s", "max_s")


def parse_args(argv=None):
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


def train_options(args, mode: str):
    """train.py's defaults, the mode's flags, then this benchmark's options (TRAIN_KEYS)."""
    o = project_options.train_parser().parse_args(MODES[mode])
    vars(o).update({k: getattr(args, k) for k in TRAIN_KEYS})
    return project_options.resolve(o)


def time_steps(args, modes: list[str]) -> dict[str, dict]:
    """``MetaStep`` of each of ``modes`` timed round-robin in this process, on one network pair
    (the main one training), SMPL, batch and Adam (built as Trainer builds it; lr 0 unless
    ``--train_lr``)."""
    from train.meta_step import MetaStep, build_optimizer
    device = common.select_device(args.device)
    o = train_options(args, modes[0])
    model, model_aux, smpl, batch = common.setup(args, o, device)
    model.train()                        # the aux network runs in eval mode
    optimizer = build_optimizer(o, model, model_aux, 1.0 if args.train_lr else 0.0)
    steps = {m: MetaStep(train_options(args, m), model, model_aux, smpl, optimizer, device)
             for m in modes}
    outs = {m: [] for m in modes}

    def one(m: str):
        model_aux.requires_grad_(steps[m].aux_grad)
        out = steps[m](batch)
        outs[m].append((float(out["loss"]), bool(out.get("skipped", False))))

    fns = {m: (lambda m=m: one(m)) for m in modes}
    return {m: {**r, "images_per_s": args.batch_size / r["s_per_iter"],
                "loss_first": outs[m][0][0], "loss_last": outs[m][-1][0],
                "skipped_steps": sum(s for _, s in outs[m])}
            for m, r in common.measure(fns, args, device, "iter").items()}


def measure_mode(args, mode: str) -> dict:
    """One mode timed alone."""
    return time_steps(args, [mode])[mode]


def run(args, modes: dict, device):
    if not args.no_interleave:     # every mode round-robin in one process, Adam as the children
        print("timing all modes interleaved ...", file=sys.stderr, flush=True)
        for m, t in time_steps(args, args.mode_list).items():
            r = modes[m]
            r.update(isolated_s_per_iter=r["s_per_iter"],
                     isolated_cpu_s_per_iter=r["cpu_s_per_iter"], **{k: t[k] for k in TIMES},
                     images_per_s=t["images_per_s"], interleaved_skipped_steps=t["skipped_steps"])
    common.add_ratios(modes, "plain", "iter", "ratio_to_plain")
    return {"modes": modes}, {
        **{k: getattr(args, k) for k in TRAIN_KEYS if k != "device"},
        "amp": args.amp if device.type == "cuda" else "off",
        "timing": "isolated" if args.no_interleave else "interleaved round-robin",
        "adam_lr": "training rates" if args.train_lr else 0.0, "compile": args.compile,
        "mode_flags": {m: " ".join(MODES[m]) for m in args.mode_list}}


def report(res: dict) -> None:
    for name, r in res["modes"].items():
        skipped = r.get("skipped_steps", 0) + r.get("interleaved_skipped_steps", 0)
        if skipped:
            print(f"warning: {name}: {skipped} iteration(s) had a non-finite loss and "
                  f"skipped backward and Adam; its time is not representative")
    common.print_results(res, "MetaStep", f"amp {res['config']['amp']}", "iter", "plain", [
        ("s_per_iter", "s/iter", ".3f"), ("ratio_to_plain", "x plain", ".2f"),
        ("images_per_s", "img/s", ".2f")])


if __name__ == "__main__":
    raise SystemExit(common.bench_main(parse_args(), measure_mode, run, report))
