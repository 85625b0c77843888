"""The synthetic reproduction study: plain vs meta-trained CLIFF, error against test-time steps.

    python bench/synthetic_study.py --out bench/out/study   # the README's run: ~25 min, 2 cores

On the synthetic world, CLIFF-ResNet18: an aux network trained plainly from a random backbone;
plain and meta CLIFF trained from its trunk (same initialisation and data order); both scored
on synthetic 3DPW and H36M-p2 after 0..N + 1 TTO updates per sample and per batch, with the aux
network and the mean parameters as no-TTO references. Writes ``synthetic_study.{json,md,png}``,
``runs/`` and ``weights/`` into ``--out``; a stage trained with the same options and inputs is
reused (delete ``runs/<name>`` to retrain). The numbers say nothing about the real datasets.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train.evaluation as ev  # noqa: E402
from bench.common import REPO, machine_info, stopwatch  # noqa: E402
from config import DataPaths  # noqa: E402
from datasets.synthetic import DEFAULT_SIZES, MANIFEST, build_world  # noqa: E402
from utils.errors import OptionError  # noqa: E402
from utils.jsonio import write_json  # noqa: E402
from utils.options import add_crop_scale, add_device  # noqa: E402
from utils.runtime import place, select_device  # noqa: E402

MODELS, MODES, TEST_SETS = ("plain", "meta"), ("sample", "batch"), ("3dpw", "h36m-p2")
METRICS, SHOWN = ("MPJPE", "PA-MPJPE", "PVE"), ("MPJPE", "PA-MPJPE")  # JSON; figure and tables
TRAIN_SETS = ("h36m", "mpii", "coco", "mpi-inf-3dhp")   # the mixture without 3DPW
AUX_N_ITER, BACKBONE, BBOX = 3, "resnet18", "rect"     # IEF iterations of the aux network
LRS = {"aux_lr": 1e-4, "outer_lr": 5e-5, "after_innerlr": 1e-5}   # Adam: aux, plain/meta, TTO
INT_OPTIONS = (   # name, default, smallest value, help
    ("n_train", 200, 1, "samples of every training set of the mixture (H36M: twice this)"),
    ("n_test", 60, 1, "samples of the 3DPW and H36M-p2 test sets"),
    ("img_size", 192, 1, "base image side of the world (pixels)"),
    ("aux_steps", 2000, 1, "steps of the aux network's training"),
    ("steps", 1200, 1, "steps of the plain and of the meta run"),
    ("batch_size", 16, 1, "training batch size"),
    ("num_workers", 2, 0, "training DataLoader workers"),
    ("seed", 2023, 0, "seed of the plain and meta runs (aux network: seed + 1)"),
    ("tto_steps", 5, 0, "N: score after 0..N + 1 TTO updates (--test_val_step k: k + 1)"),
    ("max_eval", 40, 1, "evaluate about this many samples per test set (whole batches)"),
    ("eval_batch_size", 20, 1, "evaluation (TTO) batch size"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="bench/out/study", help="output folder")
    p.add_argument("--docs_dir", default="", help="also copy the md and png here ('' = no copy)")
    p.add_argument("--world", default="bench/out/study_world",
                   help="data root of the study world (built, or reused when its sizes match)")
    for name, default, _, text in INT_OPTIONS:
        p.add_argument(f"--{name}", type=int, default=default, help=text)
    add_crop_scale(p)
    p.add_argument("--inner_lr", type=float, default=1e-5,
                   help="SGD lr of the meta run's inner step and of TTO step 0 (released 1e-5; "
                        "1e-4 made meta-training diverge here)")
    add_device(p)
    p.set_defaults(crop_scale=0.25, device="cpu")
    a = p.parse_args(argv)
    for name, _, smallest, _ in INT_OPTIONS:
        if (value := getattr(a, name)) < smallest:
            raise OptionError(f"--{name} {value} is below {smallest}. Pass {smallest} or more")
    if a.n_train < a.batch_size:
        raise OptionError(f"--n_train {a.n_train} is smaller than --batch_size {a.batch_size}. "
                          f"Pass a larger --n_train or a smaller --batch_size")
    return a


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_stage(a, name: str, extra: list[str], steps: int, depends: dict,
                n_iter: int | None = None) -> dict:
    """Train one run with train.py's trainer (``n_iter`` IEF iterations; None: the default) for
    ``steps``, or reuse its checkpoint when ``study_stage.json`` says it was written with the same
    options and inputs (``depends``). Returns the stage summary with its stamp."""
    from train.trainer import Trainer
    from utils.options import parse_train
    argv = ["--name", name, "--log_dir", str(Path(a.out) / "runs"), "--data_root", str(a.world),
            "--model", "cliff", "--backbone", BACKBONE, "--bbox_type", BBOX,
            "--crop_scale", str(a.crop_scale), "--batch_size", str(a.batch_size),
            "--num_workers", str(a.num_workers), "--eval_datasets", "", "--checkpoint_steps", "0",
            "--test_epochs", "1000000", "--save_epochs", "1000000", "--summary_steps", "100000",
            "--device", a.device, *extra, "--max_steps", str(steps)]
    run_dir = Path(a.out) / "runs" / name
    ckpt, stamp_file = run_dir / "checkpoints" / "current.pt", run_dir / "study_stage.json"
    stamp = {"argv": argv, "n_iter": n_iter, "depends": depends}
    done = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    if ckpt.is_file() and done.get("stamp") == stamp:
        log(f"{name}: reusing {ckpt} ({done['summary']['steps']} steps)")
        return {**done["summary"], "checkpoint": str(ckpt), "reused": True, "stamp": stamp}
    log(f"{name}: training {steps} steps: train.py {' '.join(argv)}")
    stamp_file.unlink(missing_ok=True)
    with stopwatch() as sw:
        tr = Trainer(parse_train(argv))
        if n_iter is not None:
            tr.model.n_iter = n_iter
        try:
            tr.train()
        except FloatingPointError as e:
            raise SystemExit(f"error: the {name} run diverged: {e}") from e
    if tr.step != steps:
        raise RuntimeError(f"{name}: trained {tr.step} steps, expected {steps}")
    losses = [float(x) for x in tr.history]
    k = max(1, min(20, len(losses) // 5))
    summary = {"steps": tr.step, **sw, "loss_first": sum(losses[:k]) / k,
               "loss_last": sum(losses[-k:]) / k, "loss_window": k,
               "n_nonfinite": tr.n_nonfinite, "argv": argv}
    del tr
    gc.collect()
    write_json(stamp_file, {"stamp": stamp, "summary": summary})
    log(f"{name}: done in {sw['wall_s']:.0f} s; loss {summary['loss_first']:.3f} -> "
        f"{summary['loss_last']:.3f} (means of the first / last {k} steps)")
    return {**summary, "checkpoint": str(ckpt), "reused": False, "stamp": stamp}


def network(world: Path, role: str = "main", n_iter: int | None = None, checkpoint=None):
    """CLIFF-ResNet18 in eval mode, with the ``model`` weights of ``checkpoint`` if given."""
    from models import build_model
    from models.checkpoints import load_metahmr_checkpoint
    net = build_model("cliff", BACKBONE, role, BBOX, DataPaths(world).smpl_mean_params(),
                      n_iter=n_iter)
    if checkpoint is not None:
        load_metahmr_checkpoint(checkpoint, net)
    return net.eval()


def train_networks(a, world: Path) -> tuple[dict, torch.nn.Module]:
    """The aux, plain and meta stages (their summaries) and the aux network, exported as a
    CLIFF aux checkpoint (loaded back as the trainer loads it, checked value by value) and its
    trunk as a ``pose_resnet.pth`` file (the plain and meta runs' initialisation)."""
    from models.checkpoints import load_aux_weights, resnet_aux_file, resnet_backbone_file
    aux_stage = train_stage(a, "aux", ["--no_inner", "--no_pretrained_backbone", "--outer_lr",
                                       str(LRS["aux_lr"]), "--seed", str(a.seed + 1)],
                            a.aux_steps, {"world": json.loads((world / MANIFEST).read_text())},
                            n_iter=AUX_N_ITER)
    trained = network(world, n_iter=AUX_N_ITER, checkpoint=aux_stage["checkpoint"])
    weights = Path(a.out) / "weights"
    aux_file, trunk_file = weights / "cliff_res18_aux.pt", weights / "resnet18_aux_trunk.pth"
    weights.mkdir(parents=True, exist_ok=True)
    torch.save(resnet_aux_file(trained), aux_file)
    torch.save(resnet_backbone_file(trained), trunk_file)
    aux = network(world, "aux")
    load_aux_weights(aux_file, aux, "cliff", BACKBONE)
    got = aux.state_dict()
    if bad := [k for k, v in trained.state_dict().items() if not torch.equal(got[k], v)]:
        raise RuntimeError(f"{aux_file}: {bad[0]} did not round-trip through load_aux_weights")
    common = ["--aux_checkpoint", str(aux_file), "--backbone_checkpoint", str(trunk_file),
              "--outer_lr", str(LRS["outer_lr"]), "--seed", str(a.seed)]
    after_aux = {"aux": aux_stage["stamp"], "main_init": "aux_trunk"}
    meta = ["--first_order", "--tto_mode", "sample", "--inner_lr", str(a.inner_lr),
            "--inner_step", "1"]
    return {"aux": aux_stage,
            "plain": train_stage(a, "plain", [*common, "--no_inner"], a.steps, after_aux),
            "meta": train_stage(a, "meta", [*common, *meta], a.steps, after_aux)}, aux


def traced_tto(n: int):
    """Inside, ``evaluate`` with ``--test_val_step k`` (k <= n) takes its TTO result from one run
    of ``n`` steps per batch (no early stop): the prediction after k + 1 updates, kept by an
    observer of ``test_time_optimize``, is what a run with ``--test_val_step k`` returns
    (tests/test_tto.py); for k < n its 2D loss is NaN (not computed) and its ``nonfinite``
    flags (``n_nonfinite``) are the n-step run's."""
    tto, runs = ev.test_time_optimize, {}

    def traced(model, model_aux, batch, smpl, camera, cfg):
        key = tuple(batch["sample_index"].reshape(-1).tolist())
        if key not in runs:
            trace: list[dict] = []
            runs[key] = trace, tto(model, model_aux, batch, smpl, camera,
                                   dataclasses.replace(cfg, test_val_step=n),
                                   observer=lambda t, pred: trace.append(pred))
        trace, res = runs[key]
        k = cfg.test_val_step
        return res if k == n else dataclasses.replace(
            res, after=trace[min(k + 1, len(trace) - 1)], steps=torch.clamp(res.steps, max=k + 1),
            loss_2d_after=torch.full_like(res.loss_2d_after, float("nan")))
    return mock.patch.object(ev, "test_time_optimize", traced)


def evaluate_models(a, nets: dict, aux, device) -> tuple[dict, list[dict], dict]:
    """No-TTO scores of the aux network and of the mean parameters (a network whose decoders
    are zero) per test set; the rows (0..N + 1 updates) of every test set, model and TTO mode;
    their timings. Each score: ``evaluate`` on about ``--max_eval`` samples."""
    from utils.options import parse_eval

    def score(net, aux, ds: str, mode: str, k: int) -> dict:
        o = parse_eval("cliff", [
            "--data_root", str(a.world), "--backbone", BACKBONE, "--bbox_type", BBOX,
            "--crop_scale", str(a.crop_scale), "--batch_size", str(a.eval_batch_size),
            "--num_workers", "0", "--device", device.type, "--seed", str(a.seed), "--log_freq",
            "0", "--inner_lr", str(a.inner_lr), "--after_innerlr", str(LRS["after_innerlr"]),
            "--test_val_step", str(k), "--tto_mode", mode])
        return ev.evaluate(net, aux, o, ds, paths=DataPaths(Path(a.world)), device=device,
                           max_batches=-(-a.max_eval // a.eval_batch_size), log=log)

    mean = network(Path(a.world), "aux")
    with torch.no_grad():
        for layer in (mean.decpose, mean.decshape, mean.deccam):
            layer.weight.zero_()
            layer.bias.zero_()
    refs: dict = {"aux": {}, "mean_parameters": {}}
    for name, net in (("aux", aux), ("mean_parameters", place(mean, device))):
        for ds in TEST_SETS:
            r = score(net, net, ds, "batch", 0)
            refs[name][ds] = {m: r[m + "_before"] for m in METRICS} | {"n": r["n"]}
            log(f"{name} on {ds} (no TTO, {r['n']} samples): " + _fmt(refs[name][ds]))
    rows, timings, last = [], {}, a.tto_steps
    for ds, name, mode in ((d, n, m) for d in TEST_SETS for n in nets for m in MODES):
        with stopwatch() as timings[f"{name}/{ds}/{mode}"], traced_tto(a.tto_steps):
            res = [score(nets[name], aux, ds, mode, k) for k in range(last + 1)]
        r0 = res[0]
        curve = [{"test_val_step": None, "updates": 0, **{m: r0[m + "_before"] for m in METRICS},
                  "n": r0["n"], "n_nonfinite": 0, "loss_2d": r0["loss_2d_before"]}] + [
            {"test_val_step": k, "updates": k + 1, **{m: r[m] for m in METRICS}, "n": r["n"],
             "n_nonfinite": r["n_nonfinite"], "loss_2d": r["loss_2d_after"] if k == last else None}
            for k, r in enumerate(res)]
        rows += [{"dataset": ds, "model": name, "mode": mode, **row} for row in curve]
        log(f"{name} {ds} {mode}: MPJPE by updates "
            + " ".join(f"{x['MPJPE']:.1f}" for x in curve))
    return refs, rows, timings


def _fmt(s: dict) -> str:
    return ", ".join(f"{m} {s[m]:.1f}" for m in METRICS if m in s)


def _curve(rows, ds, model, mode, metric) -> list[float]:
    sel = [r for r in rows if (r["dataset"], r["model"], r["mode"]) == (ds, model, mode)]
    return [r[metric] for r in sorted(sel, key=lambda r: r["updates"])]


def plot(result: dict, path: Path) -> None:
    """Error against TTO updates, plain vs meta (rows: test sets; columns: MPJPE, PA-MPJPE)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, refs, s = result["rows"], result["no_tto_references"], result["settings"]
    fig, axes = plt.subplots(len(TEST_SETS), len(SHOWN), figsize=(9, 3.3 * len(TEST_SETS)),
                             squeeze=False)
    x = list(range(s["tto_steps"] + 2))
    for ax, (ds, metric) in zip(axes.flat, ((d, m) for d in TEST_SETS for m in SHOWN)):
        for model, mode in ((m, md) for m in MODELS for md in MODES):
            ax.plot(x, _curve(rows, ds, model, mode, metric),
                    {"sample": "-o", "batch": "--s"}[mode], ms=4, label=f"{model}, TTO {mode}",
                    color={"plain": "tab:blue", "meta": "tab:red"}[model])
        ax.axhline(refs["aux"][ds][metric], color="0.4", ls=":", label="aux network (no TTO)")
        ax.axhline(refs["mean_parameters"][ds][metric], color="0.6", ls="-.",
                   label="mean parameters")
        ax.set_title(f"synthetic {ds}: {metric} (n={refs['aux'][ds]['n']})", fontsize=10)
        ax.set_xlabel("TTO updates (0 = none; k + 1 = --test_val_step k)", fontsize=8)
        ax.set_ylabel(f"{metric} (mm)", fontsize=9)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Plain vs meta-trained CLIFF-ResNet18 on the synthetic world ({s['steps']} "
                 f"training steps each)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The study as markdown: how it was run, the set-up, one table per test set."""
    s, st, m, refs = result["settings"], result["training"], result["machine"], \
        result["no_tto_references"]
    total, n_cols = result["timings"]["total"], s["tto_steps"] + 2
    lines = [
        "# Synthetic reproduction study: plain vs meta-trained CLIFF, error against TTO steps", "",
        f"Generated {result['date']} by", "", f"    {result['command']}", "",
        f"on {m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} "
        f"threads, {m['device']}): {total['wall_s'] / 60:.1f} min wall, "
        f"{total['cpu_s'] / 60:.1f} min CPU.", "",
        "**The data is the synthetic stand-in world** (`datasets/synthetic.py`) and the networks "
        "are trained for minutes: the numbers show how plain and meta-training behave under "
        "test-time optimisation on this world, nothing about the paper's real-data results.", "",
        "![error against TTO updates, plain vs meta](synthetic_study.png)", "", "## Set-up", "",
        "* Options (with the defaults): `" + " ".join(
            f"--{k} {v}" for k, v in s.items() if k not in (*LRS, "out", "docs_dir")) + "`; Adam "
        "lr: aux {aux_lr:g}, plain and meta {outer_lr:g}, TTO {after_innerlr:g}.".format(**s),
        "* CLIFF-ResNet18, rect crop. Aux network: 3 IEF iterations, trained from a random "
        "backbone (seed + 1). Plain (`--no_inner`) and meta (`--first_order --tto_mode sample "
        "--inner_lr`): the same initialisation (the aux network's trunk; fresh head) and data "
        "order. TTO: step 0 = one SGD step of `--inner_lr` on the head (aux pseudo-labels + 2D "
        "loss), then Adam steps on all weights (2D loss), no early stop.",
        f"* Training loss (x60 outer loss, mean of the first / last {st['plain']['loss_window']} "
        "steps): " + "; ".join(f"{n} {st[n]['loss_first']:.2f} -> {st[n]['loss_last']:.2f}"
                               for n in ("aux", *MODELS)) + ".", ""]
    for ds in TEST_SETS:
        lines += [f"## Synthetic {ds} ({refs['aux'][ds]['n']} samples)", "",
                  f"Without TTO: aux network {_fmt(refs['aux'][ds])} mm; the mean parameters "
                  f"{_fmt(refs['mean_parameters'][ds])} mm.", "",
                  "| metric (mm) | model | TTO mode | " + " | ".join(map(str, range(n_cols)))
                  + " |", "|---|---|---|" + "---:|" * n_cols]
        for metric, model, mode in ((a, b, c) for a in SHOWN for b in MODELS for c in MODES):
            c = _curve(result["rows"], ds, model, mode, metric)
            lines.append(f"| {metric} | {model} | {mode} | " + " | ".join(
                f"**{v:.1f}**" if v == min(c) else f"{v:.1f}" for v in c) + " |")
        lines.append("")
    lines.append("Columns: TTO weight updates (0 = none; k + 1 = `--test_val_step k`). Bold: the "
                 "lowest error of the row. Every number: `synthetic_study.json`.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    device = select_device(a.device)
    a.device = device.type
    os.chdir(REPO)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, dict] = {}
    # samples per set: the mixture, the test sets, the others 2
    sizes = ({k: 2 for k in DEFAULT_SIZES} | {f"train/{n}": a.n_train for n in TRAIN_SETS}
             | {"train/h36m": 2 * a.n_train} | {f"test/{n}": a.n_test for n in TEST_SETS})
    with stopwatch() as total:
        with stopwatch() as timings["world"]:
            world = build_world(a.world, sizes=sizes, img_size=a.img_size, seed=0,
                                weights=(BACKBONE,), log=log)
        stages, aux = train_networks(a, world)
        for name, st in stages.items():
            timings[f"{name} training"] = {k: st[k] for k in ("wall_s", "cpu_s", "reused")}
        nets = {n: place(network(world, checkpoint=stages[n]["checkpoint"]), device)
                for n in MODELS}
        with stopwatch() as timings["evaluation"]:
            refs, rows, eval_timings = evaluate_models(a, nets, place(aux, device), device)
    timings["total"] = total
    result = {"command": " ".join(["python bench/synthetic_study.py", *argv]),
              "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
              "settings": {**vars(a), **LRS}, "machine": machine_info(device),
              "world_sizes": sizes, "timings": timings, "eval_timings": eval_timings,
              "training": stages, "no_tto_references": refs, "rows": rows,
              "notes": {"updates": "0 = no TTO (TTOResult.before); k + 1 = --test_val_step k",
                        "loss_2d": "mean TTO 2D loss of the returned prediction (None where "
                                   "the one N-step run per batch does not compute it)"}}
    write_json(out / "synthetic_study.json", result)
    (out / "synthetic_study.md").write_text(markdown(result))
    plot(result, out / "synthetic_study.png")
    log(f"wrote {out}/synthetic_study.{{json,md,png}} "
        f"({(out / 'synthetic_study.png').stat().st_size / 1024:.0f} KB png)")
    for name in ("synthetic_study.md", "synthetic_study.png") if a.docs_dir else ():
        Path(a.docs_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / name, Path(a.docs_dir) / name)
    log(f"total {total['wall_s'] / 60:.1f} min wall, {total['cpu_s'] / 60:.1f} min CPU")
    return result


if __name__ == "__main__":
    from utils.cli import run
    run(main)
