"""The synthetic reproduction study: plain vs meta-trained CLIFF, error against test-time steps.

    python bench/synthetic_study.py --out bench/out/study [--steps 1200] [--aux_steps 2000] \
        [--batch_size 16] [--crop_scale 0.25] [--n_train 200] [--n_test 60] [--max_eval 40] \
        [--tto_steps 5] [--threads 1] \
        [--docs_dir docs/study] [--report_only]

On the synthetic stand-in world (``datasets.synthetic``), CLIFF with the small ResNet-18 backbone
and the rect crop (256x192, or smaller with ``--crop_scale``), on the CPU:

0. **World.** A study world bigger than the test world (``--world``, default
   ``bench/out/study_world``; reused when it was built with the same sizes): ``--n_train``
   samples in each training set of the mixture (H36M twice that, its share is 50%),
   ``--n_test`` in the 3DPW and H36M-p2 test sets.
1. **Aux network.** The world's aux checkpoint (``models/ckpt/cliff_res18.pt``) is a random
   stand-in, and meta-training with random pseudo-labels means nothing. So a network with the
   aux network's 3 IEF iterations is trained first by plain supervised training (the trainer of
   ``train.py --no_inner``, random backbone, ``--aux_steps`` steps, seed + 1) and written in the
   CLIFF aux checkpoint format (``{'model': {'module.encoder.' + trunk key, 'module.' + head
   key}}``), loaded back with ``models.checkpoints.load_aux_weights`` as a check, and passed to
   the next runs with ``--aux_checkpoint``.
2. **Two main networks**, from the same initialisation, the same data order (same ``--seed``)
   and the same number of steps (``--steps``): (a) *plain*: ``--no_inner``; (b) *meta*:
   ``--first_order --tto_mode sample --inner_lr INNER_LR``. Both start from the aux network's
   trunk exported in the ``pose_resnet.pth`` format (``--main_init aux_trunk``, the analogue of
   the paper's pose-pretrained backbone; the head is fresh) or from a random backbone
   (``--main_init random``).
3. **Evaluation** through ``train.evaluation.evaluate`` on the synthetic 3DPW and H36M-p2 test
   sets, in ``sample`` and ``batch`` TTO mode, with ``--test_val_step k`` for k = 0..N
   (``--tto_steps`` N), without early stop. "updates" in the table = k + 1 weight updates
   (TTO step 0 = one SGD step of ``--tto_inner_lr`` on the head with the aux pseudo-labels + 2D
   loss; then k Adam steps of ``--after_innerlr`` on all weights with the 2D loss); updates = 0 is
   the network without TTO (``TTOResult.before``, the ``*_before`` metrics). For reference,
   the aux network and the mean parameters (a network whose decoders are zero, so it predicts
   the mean pose, shape and camera for every image) are scored without TTO.

   ``--protocol trace`` (default) gets every k from one TTO run of N steps per batch: the run
   keeps the prediction after every update (an observer of ``test_time_optimize``; after k + 1
   updates is what a run with ``--test_val_step k`` returns, tested in tests/test_meta.py) and
   hands it to ``evaluate`` for each k, so the metrics still come from ``evaluate``;
   ``--protocol rerun`` runs ``evaluate`` afresh for every k (the same numbers, about
   (N + 4) / 2 times the TTO cost).

Outputs in ``--out``: ``synthetic_study.md`` (tables of MPJPE, PA-MPJPE, PVE per model, mode and
number of updates, the set-up, training losses and timings), ``synthetic_study.json`` (the same,
one row per dataset/model/mode/updates), ``synthetic_study.png`` (error against updates, plain vs
meta: the paper's figure), ``runs/`` (training runs: config.json, TensorBoard,
checkpoints/current.pt) and ``weights/`` (the exported aux and backbone files).
``--docs_dir DIR`` also copies the PNG and the markdown there; ``--report_only`` rewrites them
from the JSON. Training stages whose checkpoint was written with the same options and inputs
are reused (``--fresh`` retrains).

The default sizes are meant to finish in about 30 minutes on an idle 2-core CPU; the stage
times (wall and CPU seconds) are printed and written to the JSON. The world is synthetic: the
numbers say how the method behaves on it, nothing about the real datasets.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from utils.runtime import place  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ("plain", "meta")
MODES = ("sample", "batch")
METRICS = ("MPJPE", "PA-MPJPE", "PVE")
TEST_SETS = ("3dpw", "h36m-p2")
TRAIN_SETS = ("h36m", "mpii", "coco", "mpi-inf-3dhp")   # the mixture without 3DPW
AUX_N_ITER = 3                                          # IEF iterations of the aux network
BACKBONE = "resnet18"
BBOX = "rect"


# ------------------------------------------------------------------------------------------------
# options
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("output")
    g.add_argument("--out", default="bench/out/study", help="output folder")
    g.add_argument("--docs_dir", default="",
                   help="also copy synthetic_study.png and synthetic_study.md here "
                        "(e.g. docs/study); '' = no copy")
    g.add_argument("--fresh", action="store_true",
                   help="retrain every stage even if a checkpoint with the same options exists")
    g.add_argument("--report_only", action="store_true",
                   help="only rewrite the markdown and the plot from OUT/synthetic_study.json")
    g = p.add_argument_group("world")
    g.add_argument("--world", default="bench/out/study_world",
                   help="data root of the study world (built, or reused when the sizes match)")
    g.add_argument("--n_train", type=int, default=200,
                   help="samples of every training set of the mixture (H36M: twice this)")
    g.add_argument("--n_test", type=int, default=60, help="samples of the 3DPW and H36M-p2 test sets")
    g.add_argument("--img_size", type=int, default=192, help="base image side of the world")
    g.add_argument("--crop_scale", type=float, default=0.25,
                   help="network input = the rect crop (256x192) times this (train.py "
                        "--crop_scale); 0.25 = 64x48")
    g.add_argument("--world_seed", type=int, default=0, help="generator seed of the world")
    g = p.add_argument_group("training")
    g.add_argument("--aux_steps", type=int, default=2000, help="steps of the aux pre-training")
    g.add_argument("--steps", type=int, default=1200, help="steps of the plain and meta runs")
    g.add_argument("--batch_size", type=int, default=16, help="training batch size")
    g.add_argument("--aux_lr", type=float, default=1e-4, help="Adam lr of the aux pre-training")
    g.add_argument("--outer_lr", type=float, default=5e-5, help="Adam lr of the plain/meta runs")
    g.add_argument("--inner_lr", type=float, default=1e-5,
                   help="meta run: SGD step of the inner (head fast-weight) update (released "
                        "1e-5; 1e-4 made the meta run's loss explode here)")
    g.add_argument("--main_init", default="aux_trunk", choices=("aux_trunk", "random"),
                   help="main backbone init: the aux network's trunk (as a pose_resnet file) or "
                        "random")
    g.add_argument("--num_workers", type=int, default=2, help="training DataLoader workers")
    g.add_argument("--summary_steps", type=int, default=100000,
                   help="TensorBoard scalar period of the training runs (default: in effect "
                        "none; the JSON keeps the mean loss of the first and last steps)")
    g.add_argument("--seed", type=int, default=2023, help="seed of the plain and meta runs "
                                                          "(aux pre-training: seed + 1)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--tto_steps", type=int, default=5,
                   help="N: evaluate with --test_val_step k for k = 0..N")
    g.add_argument("--tto_inner_lr", type=float, default=None,
                   help="TTO step-0 SGD lr (--inner_lr of the evaluation); default --inner_lr")
    g.add_argument("--after_innerlr", type=float, default=1e-5,
                   help="TTO Adam lr of the steps after step 0 (README 1e-5)")
    g.add_argument("--max_eval", type=int, default=40,
                   help="evaluate at most about this many samples per test set (whole batches)")
    g.add_argument("--eval_batch_size", type=int, default=20, help="evaluation (TTO) batch size")
    g.add_argument("--eval_workers", type=int, default=0, help="evaluation DataLoader workers")
    g.add_argument("--eval_sets", default=",".join(TEST_SETS),
                   help="comma-separated test sets (3dpw, h36m-p2)")
    g.add_argument("--modes", default=",".join(MODES), help="TTO modes (sample, batch)")
    g.add_argument("--protocol", default="trace", choices=("trace", "rerun"),
                   help="trace: every k from one N-step TTO run per batch; rerun: evaluate "
                        "afresh for every k")
    g = p.add_argument_group("machine")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch default); on a busy machine 1 can be "
                        "several times faster (OpenMP threads spin against other processes)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="device of training and evaluation")
    a = p.parse_args(argv)
    a.eval_sets = [s for s in a.eval_sets.split(",") if s]
    a.modes = [m for m in a.modes.split(",") if m]
    if bad := [s for s in a.eval_sets if s not in TEST_SETS]:
        p.error(f"--eval_sets: unknown {bad}; choose from {TEST_SETS}")
    if bad := [m for m in a.modes if m not in MODES]:
        p.error(f"--modes: unknown {bad}; choose from {MODES}")
    for name in ("n_train", "n_test", "steps", "aux_steps", "batch_size", "max_eval",
                 "eval_batch_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.tto_steps < 0:
        p.error("--tto_steps must be >= 0")
    if a.n_train < a.batch_size:
        p.error(f"--n_train {a.n_train} is smaller than --batch_size {a.batch_size}")
    if a.tto_inner_lr is None:
        a.tto_inner_lr = a.inner_lr
    return a


# ------------------------------------------------------------------------------------------------
# timing
class Stopwatch:
    """Wall and CPU seconds of a region (CPU: this process + its finished children, e.g.
    DataLoader workers)."""

    def __enter__(self) -> "Stopwatch":
        self.t0, self.c0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, self._cpu() - self.c0

    @staticmethod
    def _cpu() -> float:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + c.ru_utime + c.ru_stime


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# stage 0: the world
def world_sizes(n_train: int, n_test: int) -> dict[str, int]:
    """Samples per set: the mixture's training sets and the two test sets; the others the
    minimum (2)."""
    from datasets.synthetic import DEFAULT_SIZES
    sizes = {k: 2 for k in DEFAULT_SIZES}
    for name in TRAIN_SETS:
        sizes[f"train/{name}"] = n_train
    sizes["train/h36m"] = 2 * n_train
    for name in TEST_SETS:
        sizes[f"test/{name}"] = n_test
    return sizes


def build_study_world(a) -> Path:
    from datasets.synthetic import build_world
    return build_world(a.world, sizes=world_sizes(a.n_train, a.n_test), img_size=a.img_size,
                       seed=a.world_seed, weights=(BACKBONE,), log=log)


# ------------------------------------------------------------------------------------------------
# stages 1-2: training
def train_argv(a, name: str, extra: list[str]) -> list[str]:
    """train.py options of one run (everything but the run-specific ``extra``)."""
    return ["--name", name, "--log_dir", str(Path(a.out) / "runs"), "--data_root", str(a.world),
            "--model", "cliff", "--backbone", BACKBONE, "--bbox_type", BBOX,
            "--crop_scale", str(a.crop_scale), "--batch_size", str(a.batch_size), "--num_workers", str(a.num_workers),
            "--eval_datasets", "", "--checkpoint_steps", "0", "--test_epochs", "1000000",
            "--save_epochs", "1000000", "--summary_steps", str(a.summary_steps), "--device", a.device,
            *extra]


def run_training(a, name: str, extra: list[str], steps: int, n_iter: int | None = None,
                 depends: dict | None = None) -> dict:
    """Train one run with ``train.trainer.Trainer`` (the trainer of train.py) for ``steps``.

    n_iter: IEF iterations of the trained network (None = the main network's 10).
    depends: what the run's inputs were made from (the world's manifest, the aux stage).
    Reuses ``runs/<name>/checkpoints/current.pt`` when ``study_stage.json`` says it was
    written with the same options and inputs (unless ``--fresh``). Returns the stage summary
    (with its ``stamp``).
    """
    from train.trainer import Trainer
    from utils.options import parse_train
    argv = train_argv(a, name, [*extra, "--max_steps", str(steps)])
    run_dir = Path(a.out) / "runs" / name
    ckpt = run_dir / "checkpoints" / "current.pt"
    stamp_file = run_dir / "study_stage.json"
    stamp = {"argv": argv, "n_iter": n_iter, "depends": depends}
    if not a.fresh and ckpt.is_file() and stamp_file.is_file():
        done = json.loads(stamp_file.read_text())
        if done.get("stamp") == stamp:
            log(f"{name}: reusing {ckpt} ({done['summary']['steps']} steps)")
            return {**done["summary"], "checkpoint": str(ckpt), "reused": True, "stamp": stamp}
    log(f"{name}: training {steps} steps: train.py {' '.join(argv)}"
        + (f" (network with {n_iter} IEF iterations)" if n_iter else ""))
    stamp_file.unlink(missing_ok=True)
    with Stopwatch() as sw:
        tr = Trainer(parse_train(argv))
        if n_iter is not None:
            tr.model.n_iter = n_iter
        try:
            tr.train()
        except FloatingPointError as e:
            raise SystemExit(f"error: the {name} run diverged ({e}); lower --outer_lr / "
                             f"--aux_lr / --inner_lr") from e
    losses = [float(x) for x in tr.history]
    k = max(1, min(20, len(losses) // 5))
    summary = {"steps": tr.step, "wall_s": sw.wall, "cpu_s": sw.cpu,
               "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
               "loss_window": k, "n_nonfinite": tr.n_nonfinite, "argv": argv}
    if tr.step != steps:
        raise RuntimeError(f"{name}: trained {tr.step} steps, expected {steps}")
    del tr
    gc.collect()
    from utils.jsonio import dumps as strict_dumps   # strict JSON (NaN -> null)
    stamp_file.write_text(strict_dumps({"stamp": stamp, "summary": summary}, indent=2))
    log(f"{name}: done in {sw.wall:.0f} s (CPU {sw.cpu:.0f} s); loss {summary['loss_first']:.3f} "
        f"-> {summary['loss_last']:.3f} (means of the first / last {k} steps)")
    return {**summary, "checkpoint": str(ckpt), "reused": False, "stamp": stamp}


def load_main(world: Path, ckpt: str | Path, n_iter: int | None = None):
    """A CLIFF-ResNet18 network (role main, or ``n_iter`` IEF iterations) with the ``model``
    weights of a training checkpoint, eval mode."""
    from config import DataPaths
    from models import build_model
    from models.checkpoints import load_metahmr_checkpoint
    net = build_model("cliff", BACKBONE, "main", BBOX, DataPaths(Path(world)).smpl_mean_params(),
                      n_iter=n_iter)
    load_metahmr_checkpoint(ckpt, net)
    return net.eval()


def export_aux(net, path: Path, world: Path):
    """Write ``net``'s weights in the CLIFF ResNet aux-checkpoint format and load them back
    (``load_aux_weights``, strict) into a fresh aux network, which is returned (eval mode)."""
    from config import DataPaths
    from models import build_model
    from models.checkpoints import load_aux_weights
    trunk = set(net.trunk_state_keys())
    state = {("module.encoder." if k in trunk else "module.") + k: v.detach().clone()
             for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    aux = build_model("cliff", BACKBONE, "aux", BBOX, DataPaths(Path(world)).smpl_mean_params())
    load_aux_weights(path, aux, "cliff", BACKBONE)
    for k, v in net.state_dict().items():
        if not torch.equal(aux.state_dict()[k], v):
            raise RuntimeError(f"{path}: {k} did not round-trip through load_aux_weights")
    return aux.eval()


def export_backbone(net, path: Path, world: Path) -> Path:
    """Write ``net``'s trunk in the ``pose_resnet.pth`` format (``{'state_dict':
    {'backbone.' + key}}``) and check it with ``load_backbone_weights``."""
    from config import DataPaths
    from models import build_model
    from models.checkpoints import load_backbone_weights
    trunk = set(net.trunk_state_keys())
    state = {"backbone." + k: v.detach().clone() for k, v in net.state_dict().items() if k in trunk}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    probe = build_model("cliff", BACKBONE, "main", BBOX, DataPaths(Path(world)).smpl_mean_params())
    load_backbone_weights(path, probe, BACKBONE)
    for k in trunk:
        if not torch.equal(probe.state_dict()[k], net.state_dict()[k]):
            raise RuntimeError(f"{path}: {k} did not round-trip through load_backbone_weights")
    return path


# ------------------------------------------------------------------------------------------------
# stage 3: evaluation
def eval_options(a, mode: str, k: int):
    from utils.options import parse_eval
    return parse_eval("cliff", [
        "--data_root", str(a.world), "--backbone", BACKBONE, "--bbox_type", BBOX,
        "--crop_scale", str(a.crop_scale), "--batch_size", str(a.eval_batch_size), "--num_workers", str(a.eval_workers),
        "--device", a.device, "--seed", str(a.seed), "--log_freq", "0",
        "--inner_lr", str(a.tto_inner_lr), "--after_innerlr", str(a.after_innerlr),
        "--test_val_step", str(k), "--tto_mode", mode])


class TraceTTO:
    """Inside this context, ``train.evaluation.evaluate`` with ``--test_val_step k`` (k <= n)
    takes its TTO result from one run of ``n`` steps per batch.

    ``test_time_optimize`` (as called by ``evaluate``) runs once per batch and ``tag`` with
    ``test_val_step = n`` and an observer, which sees the prediction after every t weight
    updates: the one after k + 1 is what ``--test_val_step k`` returns (no early stop).
    """

    def __init__(self, n: int):
        self.n, self.tag, self.cache = n, None, {}
        self.batches_run = 0

    def __enter__(self) -> "TraceTTO":
        import train.evaluation as ev
        self._orig_tto = ev.test_time_optimize
        ev.test_time_optimize = self._tto
        return self

    def __exit__(self, *exc) -> None:
        import train.evaluation as ev
        ev.test_time_optimize = self._orig_tto

    def _tto(self, model, model_aux, batch, smpl, camera, cfg):
        from train.tto import TTOResult
        k = int(cfg.test_val_step)
        if k > self.n or cfg.adapt_val_step:
            raise ValueError(f"TraceTTO: test_val_step {k} > {self.n} or adapt_val_step set")
        key = (self.tag, tuple(int(i) for i in batch["sample_index"].reshape(-1).tolist()))
        if key not in self.cache:
            trace: list[dict] = []
            res = self._orig_tto(model, model_aux, batch, smpl, camera,
                                 dataclasses.replace(cfg, test_val_step=self.n),
                                 observer=lambda t, pred: trace.append(pred))
            self.cache[key] = (res, trace)
            self.batches_run += 1
        res, trace = self.cache[key]
        last = k == self.n
        return TTOResult(
            after=res.after if last else trace[min(k + 1, len(trace) - 1)], before=res.before,
            steps=torch.clamp(res.steps, max=k + 1), nonfinite=res.nonfinite,
            loss_2d_before=res.loss_2d_before,
            loss_2d_after=res.loss_2d_after if last else torch.full_like(res.loss_2d_after,
                                                                          float("nan")))


def mean_param_network(world: Path):
    """A CLIFF network whose prediction is the mean parameters for every input (decoders
    zeroed): the no-learning reference."""
    from config import DataPaths
    from models import build_model
    net = build_model("cliff", BACKBONE, "aux", BBOX, DataPaths(Path(world)).smpl_mean_params())
    with torch.no_grad():
        for layer in (net.decpose, net.decshape, net.deccam):
            layer.weight.zero_()
            layer.bias.zero_()
    return net.eval()


def evaluate_models(a, nets: dict, aux, world: Path,
                    device: torch.device) -> tuple[list[dict], dict]:
    """Rows {dataset, model, mode, test_val_step, updates, MPJPE, PA-MPJPE, PVE, n, ...} for
    every model, mode and k in 0..N (+ updates 0 = no TTO), and the no-TTO scores of the
    references (the aux network, the mean parameters)."""
    from config import DataPaths
    from train.evaluation import evaluate
    paths = DataPaths(Path(world))
    max_batches = -(-a.max_eval // a.eval_batch_size)
    rows, refs, timings = [], {"aux": {}, "mean": {}}, {}
    references = {"aux": aux, "mean": place(mean_param_network(world), device)}
    for ds in a.eval_sets:
        # references without TTO: their *_before metrics (one cheap batch-mode step 0)
        for ref, net in references.items():
            r = evaluate(net, net, eval_options(a, "batch", 0), ds, paths=paths, device=device,
                         max_batches=max_batches, log=log)
            refs[ref][ds] = {m: r[m + "_before"] for m in METRICS} | {"n": r["n"]}
            log(f"{'aux network' if ref == 'aux' else 'mean parameters'} on {ds} (no TTO, "
                f"{r['n']} samples): " + _fmt_scores(refs[ref][ds]))
        for name, net in nets.items():
            for mode in a.modes:
                with Stopwatch() as sw, (TraceTTO(a.tto_steps) if a.protocol == "trace"
                                         else contextlib.nullcontext()) as tracer:
                    if tracer is not None:
                        tracer.tag = (name, ds, mode)
                    before = None
                    for k in range(a.tto_steps + 1):
                        r = evaluate(net, aux, eval_options(a, mode, k), ds, paths=paths,
                                     device=device, max_batches=max_batches, log=log)
                        if before is None:
                            before = {m: r[m + "_before"] for m in METRICS}
                            rows.append(_row(ds, name, mode, None, 0, before, r, nan_2d=True))
                        else:   # the no-TTO prediction does not depend on k
                            drift = max(abs(before[m] - r[m + "_before"]) for m in METRICS)
                            if drift > 1e-3:
                                raise RuntimeError(f"{name}/{ds}/{mode}: the no-TTO error "
                                                   f"changed with k ({drift:.4f} mm)")
                        rows.append(_row(ds, name, mode, k, k + 1,
                                         {m: r[m] for m in METRICS}, r,
                                         nan_2d=a.protocol == "trace" and k < a.tto_steps))
                timings[f"{name}/{ds}/{mode}"] = {"wall_s": sw.wall, "cpu_s": sw.cpu}
                curve = [x for x in rows if (x["dataset"], x["model"], x["mode"]) == (ds, name, mode)]
                log(f"{name} {ds} {mode} ({sw.wall:.0f} s): MPJPE by updates "
                    + " ".join(f"{x['MPJPE']:.1f}" for x in curve))
    return rows, {**refs, "eval_timings": timings}


def _row(ds, name, mode, k, updates, scores, r, nan_2d: bool) -> dict:
    return {"dataset": ds, "model": name, "mode": mode, "test_val_step": k, "updates": updates,
            **{m: scores.get(m, float("nan")) for m in METRICS}, "n": r["n"],
            "n_nonfinite": r["n_nonfinite"] if k is not None else 0,
            "loss_2d": (r["loss_2d_before"] if k is None
                        else (None if nan_2d else r["loss_2d_after"]))}


def _fmt_scores(s: dict) -> str:
    return ", ".join(f"{m} {s[m]:.1f}" for m in METRICS if m in s)


# ------------------------------------------------------------------------------------------------
# outputs
def _curve(rows, ds, model, mode, metric) -> list[float]:
    sel = sorted((r for r in rows if (r["dataset"], r["model"], r["mode"]) == (ds, model, mode)),
                 key=lambda r: r["updates"])
    return [r[metric] for r in sel]


def _unpack(result: dict):
    """(rows, settings namespace, no-TTO references {'aux', 'mean'}) of a result dict."""
    refs = result["no_tto_references"]
    return (result["rows"], argparse.Namespace(**result["settings"]),
            {"aux": refs["aux"], "mean": refs["mean_parameters"]})


def plot(result: dict, path: Path) -> Path:
    """Error against TTO updates, plain vs meta (rows: test sets; columns: MPJPE, PA-MPJPE)."""
    rows, a, extra = _unpack(result)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets, metrics = a.eval_sets, ("MPJPE", "PA-MPJPE")
    fig, axes = plt.subplots(len(sets), len(metrics), figsize=(9, 3.3 * len(sets)),
                             squeeze=False)
    colours = {"plain": "tab:blue", "meta": "tab:red"}
    styles = {"sample": ("-", "o"), "batch": ("--", "s")}
    x = list(range(a.tto_steps + 2))
    for i, ds in enumerate(sets):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for model in MODELS:
                for mode in a.modes:
                    ls, mk = styles[mode]
                    ax.plot(x, _curve(rows, ds, model, mode, metric), ls, marker=mk, ms=4,
                            color=colours[model], label=f"{model}, TTO {mode}")
            ax.axhline(extra["aux"][ds][metric], color="0.4", ls=":", lw=1.2,
                       label="aux network (no TTO)")
            ax.axhline(extra["mean"][ds][metric], color="0.6", ls="-.", lw=1,
                       label="mean parameters")
            ax.set_title(f"synthetic {ds}: {metric} (n={extra['aux'][ds]['n']})", fontsize=10)
            ax.set_xlabel("TTO updates (0 = none; 1 = step 0; k + 1 = --test_val_step k)",
                          fontsize=8)
            ax.set_ylabel(f"{metric} (mm)", fontsize=9)
            ax.set_xticks(x)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Plain vs meta-trained CLIFF-ResNet18 on the synthetic world "
                 f"({a.steps} training steps each)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def markdown(result: dict) -> str:
    """The study as markdown: set-up, one table per test set and metric, timings."""
    rows, a, extra = _unpack(result)
    t, st, machine = result["timings"], result["training"], result["machine"]
    total = t["total"]
    if not hasattr(a, "crop_scale"):          # written before --crop_scale existed
        a.crop_scale = 1.0
    from constants import crop_size
    crop_h, crop_w = crop_size(BBOX, a.crop_scale)
    lines = [
        "# Synthetic reproduction study: plain vs meta-trained CLIFF, error against TTO steps",
        "",
        f"Generated {result.get('date', '(date not recorded)')} by",
        "",
        f"    {result['command']}",
        "",
        f"on {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads): {total['wall_s'] / 60:.1f} min wall, "
        f"{total['cpu_s'] / 60:.1f} min CPU.",
        "",
        "**The data is the synthetic stand-in world** (rendered bodies of a humanoid SMPL-format "
        "model, `datasets/synthetic.py`), and the networks are trained for minutes on a CPU. The "
        "numbers show how plain and meta-training behave under test-time optimisation on this "
        "world; they say nothing about the paper's real-data results.",
        "",
        "![error against TTO updates, plain vs meta](synthetic_study.png)",
        "",
        "## Set-up",
        "",
        f"* World: `{a.world}`, {a.n_train} samples per training set of the mixture (H36M "
        f"{2 * a.n_train}), {a.n_test} per test set, images {a.img_size} px.",
        f"* CLIFF, ResNet-18 backbone, rect crop {crop_h}x{crop_w} (`--crop_scale "
        f"{a.crop_scale:g}`), batch {a.batch_size}, Adam.",
        f"* Aux network: 3 IEF iterations, trained by plain supervised training from a random "
        f"backbone ({a.aux_steps} steps, lr {a.aux_lr:g}, seed {a.seed + 1}), exported in the "
        f"CLIFF aux-checkpoint format and passed with `--aux_checkpoint`.",
        f"* Plain and meta: {a.steps} steps each, outer lr {a.outer_lr:g}, seed {a.seed} (same "
        f"initialisation and data order), main backbone initialised from "
        + ("the aux network's trunk (as a `pose_resnet.pth`-format file; fresh head)."
           if a.main_init == "aux_trunk" else "random weights."),
        f"  plain = `--no_inner`; meta = `--first_order --tto_mode sample --inner_lr "
        f"{a.inner_lr:g}` (one inner step; the aux network frozen, eval mode).",
        f"* TTO (both models alike): step 0 = one SGD step of {a.tto_inner_lr:g} on the head "
        f"with the aux pseudo-labels + 2D loss; then Adam steps of {a.after_innerlr:g} on all "
        f"weights with the 2D loss (GT 2D keypoints), no early stop; evaluation batch "
        f"{a.eval_batch_size}. Columns = number of weight updates: 0 = no TTO "
        f"(`TTOResult.before`), k + 1 = `--test_val_step k`. Protocol: {a.protocol}.",
        f"* Training losses (x60 outer loss, mean of the first / last "
        f"{st['plain']['loss_window']} steps): "
        + "; ".join(f"{n} {st[n]['loss_first']:.2f} -> {st[n]['loss_last']:.2f}"
                    for n in ("aux", "plain", "meta")) + ".",
        "",
    ]
    N1 = a.tto_steps + 1
    for ds in a.eval_sets:
        n = extra["aux"][ds]["n"]
        lines += [f"## Synthetic {ds} ({n} samples)", "",
                  f"Without TTO: aux network {_fmt_scores(extra['aux'][ds])} mm; the mean "
                  f"parameters (a network that predicts them for every image) "
                  f"{_fmt_scores(extra['mean'][ds])} mm."]
        if extra["aux"][ds]["PA-MPJPE"] > extra["mean"][ds]["PA-MPJPE"]:
            lines.append("The aux network's PA-MPJPE is higher than the mean parameters': at "
                         "this training budget its pseudo-labels carry little articulated-pose "
                         "information, so this run cannot show what meta-training does with a "
                         "strong aux network (the paper's setting).")
        lines.append("")
        for metric in METRICS:
            lines += [f"**{metric} (mm)**", "",
                      "| model | TTO mode | " + " | ".join(str(u) for u in range(N1 + 1)) + " |",
                      "|---|---|" + "---:|" * (N1 + 1)]
            for model in MODELS:
                for mode in a.modes:
                    c = _curve(rows, ds, model, mode, metric)
                    best = min(range(len(c)), key=lambda i: c[i])
                    cells = [f"**{v:.1f}**" if i == best else f"{v:.1f}" for i, v in enumerate(c)]
                    lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
            lines.append("")
        for mode in a.modes:
            p0, m0 = (_curve(rows, ds, mm, mode, "MPJPE") for mm in MODELS)
            lines.append(f"* {mode} mode, MPJPE meta - plain: {m0[0] - p0[0]:+.1f} mm without "
                         f"TTO, {m0[-1] - p0[-1]:+.1f} mm after {N1} updates; TTO changes plain "
                         f"by {p0[-1] - p0[0]:+.1f} mm and meta by {m0[-1] - m0[0]:+.1f} mm.")
        lines.append("")
    lines += ["## Time", "", "| stage | wall (s) | CPU (s) |", "|---|---:|---:|"]
    for name, s in t.items():
        note = " (reused from an earlier run)" if s.get("reused") else ""
        lines.append(f"| {name}{note} | {s['wall_s']:.0f} | {s['cpu_s']:.0f} |")
    lines += ["", "Bold: the lowest error of the row. Figure: `synthetic_study.png`; every "
              "number: `synthetic_study.json`.", ""]
    return "\n".join(lines)


def _stage_time(stage: dict) -> dict:
    return {"wall_s": stage["wall_s"], "cpu_s": stage["cpu_s"], "reused": stage["reused"]}


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from train.trainer import select_device
    device = select_device(a.device)
    a.device = device.type
    os.chdir(REPO)
    out = Path(a.out)
    if a.report_only:
        report_only(out, a.docs_dir)
        return {}
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/synthetic_study.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    timings: dict[str, dict] = {}
    with Stopwatch() as total:
        marker = Path(a.world) / ".complete"
        built_before = marker.stat().st_mtime if marker.exists() else None
        with Stopwatch() as sw:
            world = build_study_world(a)
        timings["world"] = {"wall_s": sw.wall, "cpu_s": sw.cpu,
                            "reused": built_before == marker.stat().st_mtime}

        # 1. the aux network
        manifest = json.loads((world / "synthetic_world.json").read_text())
        aux_stage = run_training(a, "aux", ["--no_inner", "--no_pretrained_backbone",
                                            "--outer_lr", str(a.aux_lr), "--seed",
                                            str(a.seed + 1)], a.aux_steps, n_iter=AUX_N_ITER,
                                 depends={"world": manifest})
        timings["aux training"] = _stage_time(aux_stage)
        trained = load_main(world, aux_stage["checkpoint"], n_iter=AUX_N_ITER)
        aux_file = out / "weights" / "cliff_res18_aux.pt"
        aux = export_aux(trained, aux_file, world)
        init = ["--no_pretrained_backbone"]
        if a.main_init == "aux_trunk":
            bb_file = export_backbone(trained, out / "weights" / "resnet18_aux_trunk.pth", world)
            init = ["--backbone_checkpoint", str(bb_file)]
        del trained

        # 2. plain and meta from the same init, data order and number of steps
        common = ["--aux_checkpoint", str(aux_file), "--outer_lr", str(a.outer_lr),
                  "--seed", str(a.seed), *init]
        stages = {"aux": aux_stage}
        after_aux = {"aux": aux_stage["stamp"], "main_init": a.main_init}
        stages["plain"] = run_training(a, "plain", [*common, "--no_inner"], a.steps,
                                       depends=after_aux)
        stages["meta"] = run_training(a, "meta", [*common, "--first_order", "--tto_mode",
                                                  "sample", "--inner_lr", str(a.inner_lr),
                                                  "--inner_step", "1"], a.steps,
                                      depends=after_aux)
        for n in ("plain", "meta"):
            timings[f"{n} training"] = _stage_time(stages[n])
        nets = {n: place(load_main(world, stages[n]["checkpoint"]), device) for n in MODELS}

        # 3. evaluation
        with Stopwatch() as sw:
            rows, extra = evaluate_models(a, nets, place(aux, device), world, device)
        timings["evaluation"] = {"wall_s": sw.wall, "cpu_s": sw.cpu}
    timings["total"] = {"wall_s": total.wall, "cpu_s": total.cpu}

    from bench.common import machine_info
    result = {"command": command, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
              "settings": vars(a), "machine": machine_info(device),
              "world_sizes": world_sizes(a.n_train, a.n_test), "timings": timings,
              "eval_timings": extra["eval_timings"], "training": stages,
              "no_tto_references": {"aux": extra["aux"], "mean_parameters": extra["mean"]},
              "rows": rows,
              "notes": {"updates": "0 = no TTO (TTOResult.before); k + 1 = --test_val_step k",
                        "loss_2d": "mean TTO 2D loss of the returned prediction (None where "
                                   "the trace protocol does not compute it)"}}
    write_outputs(result, out, a.docs_dir)
    log(f"total {total.wall / 60:.1f} min wall, {total.cpu / 60:.1f} min CPU")
    return result


def write_outputs(result: dict, out: Path, docs_dir: str = "") -> tuple[Path, Path, Path]:
    """Write synthetic_study.{json,md,png} into ``out`` (and the md + png into ``docs_dir``)."""
    from bench.common import write_json
    json_path = out / "synthetic_study.json"
    write_json(json_path, result)
    md_path = out / "synthetic_study.md"
    md_path.write_text(markdown(result))
    png_path = plot(result, out / "synthetic_study.png")
    log(f"wrote {md_path} and {png_path} ({png_path.stat().st_size / 1024:.0f} KB)")
    if png_path.stat().st_size > 150 * 1024:
        log(f"warning: {png_path} is over 150 KB")
    if docs_dir:
        d = Path(docs_dir)
        d.mkdir(parents=True, exist_ok=True)
        for p in (md_path, png_path):
            shutil.copyfile(p, d / p.name)
        log(f"copied them to {d}")
    print(md_path.read_text())
    return json_path, md_path, png_path


def report_only(out: Path, docs_dir: str = "") -> None:
    """Rewrite the markdown and the plot from ``out/synthetic_study.json`` (nothing is run)."""
    path = out / "synthetic_study.json"
    if not path.is_file():
        raise SystemExit(f"error: --report_only: {path} does not exist (run the study first)")
    write_outputs(json.loads(path.read_text()), out, docs_dir)


if __name__ == "__main__":
    main()
