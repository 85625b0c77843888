"""Command-line options of train.py, eval_cliff.py, eval_hmr.py (decisions D1).

Every option the seed README uses keeps its name, meaning and default; unknown options are an
error. Argument groups are declared in ``--help`` order; the options the demo and the benchmarks
share have public ``add_*`` functions. Range checks: :mod:`utils.option_checks`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from config import SYNTHETIC_ROOT, TEST_DATASETS, default_root
from constants import crop_size
from utils.errors import OptionError
from utils.jsonio import write_json
from utils.option_checks import check_ranges

BACKBONES = ("resnet", "hrnet", "resnet18")


def _bool_pair(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    p.add_argument(f"--{name}", dest=name, action="store_true", help=help)
    p.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"disable --{name}")
    p.set_defaults(**{name: default})


def default_workers(cap: int = 8) -> int:
    """DataLoader workers by default: the CPUs this process may use, at most ``cap``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(cap, n))


def add_common(p: argparse.ArgumentParser) -> None:
    """The groups every script shares: data and device, model, TTO, loss weights."""
    g = p.add_argument_group("data and device")
    g.add_argument("--data_root", default=default_root(), help="root of the seed README's "
                   "layout (ckpt/, data/, models/); env METAHMR_ROOT")
    g.add_argument("--img_root", help="folder holding the raw image folders (h36m, coco, pw3d, "
                   "mpii, mpii3d); default <data_root>/datasets")
    g.add_argument("--synthetic", action="store_true",
                   help="use the synthetic stand-in world in data/synthetic (built when missing)")
    add_device(g)
    add_amp(g)
    g.add_argument("--memory_format", default="auto", choices=("auto", "channels_last",
                   "contiguous"), help="layout of the networks' convolution weights: auto = "
                   "channels_last on the CPU (about 1.3x faster there), contiguous on CUDA; "
                   "checkpoints load either way, results agree to float rounding (other kernels)")
    add_seed(g)
    g.add_argument("--skip_bad_images", action="store_true", help="skip unreadable images "
                   "(counted and reported) instead of failing; evaluation leaves them out of the "
                   "metrics and lists them")
    g.add_argument("--debug", action="store_true", help="on an error, show the full traceback "
                   "instead of one line (also env METAHMR_DEBUG=1)")
    add_model_options(p.add_argument_group("model"))
    g = p.add_argument_group("test-time optimisation")
    g.add_argument("--tto_mode", default="sample", choices=("sample", "batch"),
                   help="sample: adapt every sample on its own (paper); batch: one adapted copy "
                        "per batch (released code; needed to reproduce its published numbers)")
    add_tto_parallel(g)
    g.add_argument("--inner_lr", type=float, default=1e-5,
                   help="SGD step of the head fast weights (training inner step and TTO step 0)")
    g.add_argument("--use_openpose2d", action="store_true",
                   help="test-time 2D loss on OpenPose keypoints instead of GT 2D keypoints")
    g.add_argument("--adapt_val_step", action="store_true",
                   help="stop test-time steps once |loss change| < --adapt_tol")
    g.add_argument("--adapt_tol", type=float, default=2e-5, help="early-stop threshold of TTO")
    g.add_argument("--no_use_adam", action="store_true", help="TTO steps >= 1: head-only SGD of "
                   "after_innerlr instead of Adam on all weights")
    g.add_argument("--no_inner_step", action="store_true",
                   help="TTO: skip the step-0 head SGD step (every step is 2D-loss Adam)")
    g = p.add_argument_group("loss weights")
    g.add_argument("--shape_loss_weight", type=float, default=0.5, help="per-vertex L1 weight")
    g.add_argument("--keypoint_loss_weight", type=float, default=5.0,
                   help="2D and 3D keypoint weight")
    g.add_argument("--pose_loss_weight", type=float, default=1.0, help="rotmat MSE weight")
    g.add_argument("--beta_loss_weight", type=float, default=0.001, help="betas MSE weight")
    g.add_argument("--openpose_train_weight", type=float, default=0.0,
                   help="confidence multiplier of the 25 OpenPose joints in the training 2D loss")
    g.add_argument("--gt_train_weight", type=float, default=1.0,
                   help="confidence multiplier of the 24 GT joints in the training 2D loss")


def add_device(g) -> None:
    """``--device`` (also the benchmarks')."""
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when available")


def add_amp(g) -> None:
    """``--amp`` (also ``bench/train_step.py``'s)."""
    g.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="mixed precision on CUDA")


def add_seed(g) -> None:
    """``--seed`` (also the benchmarks', with their own default)."""
    g.add_argument("--seed", type=int, default=2023,
                   help="seed of python, numpy, torch, data order")


def add_bbox_type(g, default: str | None = "square", note: str = "") -> None:
    """``--bbox_type`` (training: square; evaluation: the checkpoint's; benchmarks: rect)."""
    g.add_argument("--bbox_type", default=default, choices=("square", "rect"),
                   help="square 224x224 or rect 256x192 crops" + note)


def add_tto_steps(g, test_val_step: int, after_innerlr: float, note: str = "") -> None:
    """``--test_val_step`` and ``--after_innerlr``, with the caller's released defaults."""
    g.add_argument("--test_val_step", type=int, default=test_val_step, help=f"extra test-time "
                   f"steps after step 0{note}; -1: no test-time optimisation (the plain network)")
    g.add_argument("--after_innerlr", type=float, default=after_innerlr,
                   help=f"test-time Adam lr for steps >= 1{note}")


def add_model_options(g) -> None:
    """``--model`` and ``--backbone`` (also the benchmarks')."""
    g.add_argument("--model", default="cliff", choices=("cliff", "hmr"),
                   help="regressor family: cliff (bbox input, full-image camera) or hmr")
    g.add_argument("--backbone", default="resnet", choices=BACKBONES,
                   help="resnet (ResNet-50), hrnet (HRNet-W48) or resnet18 (small, extra)")


def add_tto_parallel(g) -> None:
    """``--tto_chunk`` and ``--tto_workers`` (also ``bench/tto.py``'s)."""
    g.add_argument("--tto_chunk", type=int, default=0, help="sample mode: samples adapted "
                   "together under vmap; 0 = auto (whole batch on CUDA, one at a time on the CPU, "
                   "where a loop is faster), 1 = one at a time (least memory)")
    g.add_argument("--tto_workers", type=int, default=0, help="sample mode: chunks adapted "
                   "concurrently in this many threads of one intra-op thread each; 0 = auto (the "
                   "torch thread count on the CPU, 1 on CUDA); each worker holds its own adapted "
                   "weights and Adam state")


def add_crop_scale(g, from_checkpoint: bool = False) -> None:
    """``--crop_scale`` (``from_checkpoint``: default None, :func:`apply_checkpoint_options`)."""
    g.add_argument("--crop_scale", type=float, default=None if from_checkpoint else 1.0,
                   help="network input crop = the bbox type's size times this (1 = the released "
                        "256x192 / 224x224, which the official checkpoints expect); smaller crops "
                        "make quick CPU experiments (the synthetic study uses 0.25: 64x48). "
                   + ("Default: the checkpoint's value, else 1" if from_checkpoint else
                      "Evaluate with the value the model was trained with"))


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Meta-HMR training (dual networks, meta inner step)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _run_options(p.add_argument_group("run"))
    g = p.add_argument_group("meta-learning")
    g.add_argument("--no_inner", action="store_true",
                   help="no inner step: plain supervised training (baseline)")
    g.add_argument("--inner_step", type=int, default=1, help="inner SGD steps per iteration")
    g.add_argument("--first_order", action="store_true", help="first-order MAML (FOMAML)")
    g.add_argument("--aux_mode", choices=("eval", "train"), help="mode of the aux network: eval "
                   "(no dropout, frozen BN) or train (dropout on, BN statistics drift, as "
                   "released). Default: eval under --first_order (it runs under no_grad), train "
                   "without it (second order: it receives the meta-gradient, as released)")
    g.add_argument("--outer_lr", type=float, default=1e-4, help="Adam lr of the main network")
    g.add_argument("--beta1", type=float, default=0.9, help="Adam beta1 (main network)")
    g.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (main network)")
    g.add_argument("--eps_adam", type=float, default=1e-8, help="Adam eps (main network)")
    g.add_argument("--aux_lr", type=float, default=1e-6, help="Adam lr of the aux network")
    g.add_argument("--no_learn_loss", action="store_true", help="leave the aux net out of Adam")
    add_tto_steps(g, 0, 2e-7, " (in-training evaluation)")
    g.add_argument("--max_nonfinite", type=int, default=5,
                   help="stop after this many consecutive non-finite losses")
    g = p.add_argument_group("multi-GPU (torchrun + DDP)")
    g.add_argument("--sync_bn", action="store_true", help="under torchrun on CUDA: BatchNorm "
                   "statistics over all ranks (SyncBatchNorm) instead of each rank's own batch")
    g.add_argument("--dist_timeout", type=float, default=600.0,
                   help="under torchrun: seconds a rank waits in a collective for its peers "
                        "before it stops with an error (a dead or stuck rank)")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--summary_steps", type=int, default=100, help="TensorBoard scalar period")
    g.add_argument("--log_images", action="store_true",
                   help="render mesh overlays to TensorBoard every summary_steps")
    g.add_argument("--checkpoint_steps", type=int, default=1000,
                   help="write current.pt every N iterations (0 = only at epoch ends)")
    g.add_argument("--test_epochs", type=int, default=50, help="evaluate + save every N epochs")
    g.add_argument("--save_epochs", type=int, default=50, help="also save/test every N epochs")
    g.add_argument("--test_start_epoch", type=int, default=0, help="no test/save before this epoch")
    add_common(p)
    return p


def _run_options(g) -> None:
    g.add_argument("--name", default="train_coco_loss", help="experiment name")
    g.add_argument("--time_to_run", type=float, default=math.inf,
                   help="wall-clock budget in seconds; on expiry save current.pt and exit "
                        "(inf = no budget; written as null in config.json)")
    g.add_argument("--resume", action="store_true",
                   help="resume from --checkpoint, or the newest checkpoint of the run folder")
    g.add_argument("--num_workers", type=int, default=4, help="training DataLoader workers")
    _bool_pair(g, "pin_memory", True, "DataLoader pin_memory")
    g.add_argument("--log_dir", default="logs", help="root folder of the runs")
    g.add_argument("--checkpoint", help="checkpoint to --resume from")
    g.add_argument("--from_json",
                   help="load all options from a config.json (command-line values are ignored)")
    g.add_argument("--pretrained_checkpoint",
                   help="load model (+ model_aux, optimizer) weights before training")
    g.add_argument("--aux_checkpoint",
                   help="aux-network init file; default: the CLIFF/HMR file of the layout")
    g.add_argument("--backbone_checkpoint",
                   help="main-backbone init file; default: the layout's pose_resnet/pose_hrnet")
    g.add_argument("--no_pretrained_backbone", action="store_true",
                   help="start the main backbone from random weights")
    g.add_argument("--num_epochs", type=int, default=1600,
                   help="number of epochs (ignored when --max_steps is given)")
    g.add_argument("--max_steps", type=int, default=0,
                   help="train exactly this many iterations in total, however many epochs that "
                        "takes; wins over --num_epochs (0 = no limit: --num_epochs decides)")
    g.add_argument("--batch_size", type=int, default=256, help="training batch size per process "
                   "(under torchrun N processes train on a global batch of N times it)")
    g.add_argument("--eval_batch_size", type=int, default=20,
                   help="batch size of the in-training evaluation")
    g.add_argument("--eval_datasets", default="3dpw,h36m-p2",
                   help="comma-separated test sets of the in-training evaluation ('' = none)")
    g.add_argument("--eval_max_batches", type=int, default=0,
                   help="in-training evaluation: at most this many batches per set (0 = all)")
    # training data: occluders, crops, augmentation, the mixture
    g.add_argument("--syn_occ", action="store_true",
                   help="paste Pascal VOC occluders on H36M and MPI-INF-3DHP training crops")
    add_bbox_type(g)
    add_crop_scale(g)
    g.add_argument("--ALB", action="store_true", help="photometric augmentation of the full image")
    g.add_argument("--train_3dpw", action="store_true", help="train on the mixture with 3DPW "
                   "(40/30/10/20) instead of without (50/30/20)")
    g.add_argument("--rot_factor", type=float, default=30.0, help="rotation sigma in degrees")
    g.add_argument("--noise_factor", type=float, default=0.4, help="pixel noise U[1-n, 1+n]")
    g.add_argument("--scale_factor", type=float, default=0.25, help="scale sigma, clipped to 1+-s")
    g.add_argument("--ignore_3d", action="store_true", help="ignore 3D and SMPL supervision")
    _bool_pair(g, "shuffle_train", True, "shuffle the training data")


def eval_parser(model: str) -> argparse.ArgumentParser:
    """Options of eval_cliff.py (model='cliff') and eval_hmr.py (model='hmr')."""
    p = argparse.ArgumentParser(description=f"Meta-HMR evaluation ({model.upper()}) with TTO",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("evaluation")
    g.add_argument("--checkpoint", help="Meta-HMR checkpoint (model, model_aux)")
    g.add_argument("--dataset", default="h36m-p1",
                   choices=("h36m-p1", "h36m-p2", "3dpw", "mpi-inf-3dhp", "coco"), help="test set")
    g.add_argument("--h36m_gt", default="mosh", choices=("mosh", "mocap"),
                   help="H36M ground truth: MoSh SMPL fit (released) or mocap joints (standard)")
    g.add_argument("--log_freq", type=int, default=8 if model == "cliff" else 50,
                   help="print running metrics every N batches")
    g.add_argument("--batch_size", type=int, default=40, help="evaluation (and TTO) batch size")
    g.add_argument("--shuffle", action="store_true", help="shuffle the test set")
    g.add_argument("--num_workers", type=int, default=default_workers(),
                   help="DataLoader workers (default: the CPUs this process may use, at most 8)")
    g.add_argument("--max_batches", type=int, default=0,
                   help="evaluate at most N batches (0 = all)")
    g.add_argument("--result_file", help="write per-sample errors and predictions (.npz) here")
    g.add_argument("--json_out", help="write the final metrics as JSON")
    g.add_argument("--viz", action="store_true", help="render meshes over the input images")
    g.add_argument("--viz_dir", default="eval_result/img_viz", help="--viz output folder")
    g.add_argument("--viz_max", type=int, default=0,
                   help="render at most N samples (0 = first sample of every batch, -1 = all)")
    g.add_argument("--save_obj", action="store_true", help="with --viz, also export meshes (.obj)")
    add_bbox_type(g, None, " (default: the checkpoint's, else rect)")
    add_crop_scale(g, from_checkpoint=True)
    add_tto_steps(g, 7 if model == "cliff" else 14, 2e-7 if model == "cliff" else 1e-5)
    g.add_argument("--inner_step", type=int, default=1,
                   help="accepted for compatibility; evaluation always takes one step 0")
    add_common(p)
    from_checkpoint(p, model_fallback=model)
    for action in p._actions:   # (refused by parse_eval)
        if action.dest in EVAL_UNUSED:
            action.help = argparse.SUPPRESS
    return p


# options a checkpoint decides (issue #13 point 7): fallback when it records none
CHECKPOINT_OPTIONS = {"model": "cliff", "backbone": "resnet", "bbox_type": "rect",
                      "crop_scale": 1.0}


def from_checkpoint(p: argparse.ArgumentParser, model_fallback: str | None = None) -> None:
    """Evaluation / demo parsers: the :data:`CHECKPOINT_OPTIONS` default to the checkpoint's
    values (:func:`apply_checkpoint_options`); the help lines of --model, --backbone say so."""
    p.set_defaults(**dict.fromkeys(CHECKPOINT_OPTIONS), model_fallback=model_fallback)
    fallback = vars(fill_checkpoint_defaults(argparse.Namespace(model_fallback=model_fallback)))
    for a in p._actions:
        if a.dest in ("model", "backbone"):
            a.help = f"{a.help} (default: the checkpoint's, else {fallback[a.dest]})"


def fill_checkpoint_defaults(o: argparse.Namespace) -> argparse.Namespace:
    """Options of :data:`CHECKPOINT_OPTIONS` not given (None) get their fallback values and are
    listed in ``o.from_checkpoint``, for :func:`apply_checkpoint_options` to replace."""
    script = getattr(o, "model_fallback", None)
    o.from_checkpoint = tuple(n for n in CHECKPOINT_OPTIONS if getattr(o, n, None) is None)
    for n in o.from_checkpoint:
        setattr(o, n, script if n == "model" and script else CHECKPOINT_OPTIONS[n])
    return o


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def apply_checkpoint_options(o: argparse.Namespace, source: str, stored: dict | None,
                             inferred: dict | None, log=print) -> argparse.Namespace:
    """Take the :data:`CHECKPOINT_OPTIONS` the command line did not give (``o.from_checkpoint``)
    from a checkpoint: ``stored``, the options train.py recorded in it (None for released files),
    else ``inferred`` {'model', 'backbone'} from its keys (models/checkpoint_kind.py). A bad stored
    value or a contradicting command-line value is an :class:`OptionError`; a file recording no
    bbox type / crop scale keeps the released values, with a note."""
    stored = _stored_network_options(source, stored)
    known = {**{k: v for k, v in (inferred or {}).items()
                if k in ("model", "backbone") and v is not None}, **stored}
    free = set(getattr(o, "from_checkpoint", ()))
    script = getattr(o, "model_fallback", None)
    if "model" in free and script and known.get("model", script) != script:
        raise OptionError(f"{source}: this is a {known['model'].upper()} checkpoint; evaluate "
                          f"it with eval_{known['model']}.py (this script is for {script.upper()})")
    for name in CHECKPOINT_OPTIONS:
        given, have = getattr(o, name), known.get(name)
        if have is not None and name in free:
            setattr(o, name, have)
        elif have is not None and not _same(given, have):
            how = "was trained with" if name in stored else "holds a network of"
            shown = f"{have:g}" if isinstance(have, float) else have
            raise OptionError(f"{source}: --{name} {given} contradicts the checkpoint, which "
                              f"{how} --{name} {shown}. Drop --{name} (the checkpoint's value "
                              f"is then used) or pass a checkpoint trained with --{name} {given}")
    missing = [n for n in ("bbox_type", "crop_scale") if n not in stored]
    if missing:
        log(f"note: {source} records no training options; using "
            + ", ".join(f"--{n} {getattr(o, n):g}" if isinstance(getattr(o, n), float)
                        else f"--{n} {getattr(o, n)}" for n in missing)
            + " (pass the values it was trained with if they differ: its keys cannot tell)")
    return _check_network(o)


def _stored_network_options(source: str, stored: dict | None) -> dict:
    """The :data:`CHECKPOINT_OPTIONS` a checkpoint records (None: not recorded), each value
    read through its own option (type, choices) and checked like a command-line value."""
    stored = {k: v for k, v in (stored or {}).items()
              if k in CHECKPOINT_OPTIONS and v is not None}
    if not stored:
        return {}
    p = argparse.ArgumentParser(add_help=False)
    for add in (add_model_options, add_bbox_type, add_crop_scale):
        add(p)
    what = f"{source}: its recorded training options"
    try:
        parsed = _parse_json_values(p, stored, what)
        check_ranges(parsed)
        _check_network(parsed)
    except OptionError as e:
        message = str(e) if str(e).startswith(what) else f"{what}: {e}"
        raise OptionError(f"{message} (the file is damaged or was not written by train.py). "
                          f"Pass a checkpoint written by train.py") from None
    return {k: getattr(parsed, k) for k in stored}


def _check_network(o: argparse.Namespace) -> argparse.Namespace:
    """The combinations of network options that cannot be built."""
    if o.model == "hmr" and o.backbone == "hrnet":
        raise OptionError("--model hmr has no HRNet variant (choose --backbone resnet)")
    try:
        crop_size(o.bbox_type, o.crop_scale)
    except ValueError as e:
        raise OptionError(f"--crop_scale: {e}") from None
    return o


def resolve(options: argparse.Namespace) -> argparse.Namespace:
    """Apply --synthetic and check option combinations (errors name the options)."""
    if any(getattr(options, n, 0) is None for n in CHECKPOINT_OPTIONS):
        fill_checkpoint_defaults(options)   # an eval parser used directly (e.g. the benchmarks)
    if getattr(options, "synthetic", False) and options.data_root in (".", default_root()):
        options.data_root = SYNTHETIC_ROOT
    if getattr(options, "no_inner", False):
        options.inner_step = 0
    if hasattr(options, "aux_mode") and options.aux_mode is None:   # decisions D5
        options.aux_mode = "eval" if options.first_order else "train"
    check_ranges(options)   # every numeric option in its range (utils/option_checks.py)
    unknown = [d for d in getattr(options, "eval_datasets", "").split(",")
               if d and d not in TEST_DATASETS]   # (else a traceback at the first evaluation)
    if unknown:
        raise OptionError(f"--eval_datasets: unknown test set(s) {', '.join(map(repr, unknown))}."
                          f" Pass comma-separated names of {', '.join(TEST_DATASETS)} ('' = none)")
    return _check_network(options)


def parse_train(argv=None) -> argparse.Namespace:
    p = train_parser()
    options = p.parse_args(argv)
    if options.from_json:
        try:
            with open(options.from_json) as f:
                data = json.load(f)
            problem = None if isinstance(data, dict) else "expected a JSON object of options"
        except (OSError, ValueError, RecursionError) as e:
            problem = f"cannot read these options ({e})"
        if problem:
            raise OptionError(f"{options.from_json}: {problem}. Pass the config.json of a run "
                              f"(--from_json)")
        unknown = sorted(set(data) - set(vars(options)))
        if unknown:
            raise SystemExit(f"error: {options.from_json} has unknown options {unknown}")
        options = _parse_json_values(p, data, options.from_json)
    name = Path(options.name)
    if (not options.name.strip() or name.is_absolute() or {".", ".."} & set(name.parts)
            or "\0" in options.name):
        raise OptionError(f"--name {options.name!r}: the run folder is <log_dir>/<name>; pass "
                          f"a name (no '.', '..', NUL or leading '/')")
    try:   # TensorBoard encodes its paths as UTF-8 (it failed at the first summary step)
        str(Path(options.log_dir) / options.name).encode("utf-8")
    except UnicodeEncodeError:
        raise OptionError(f"--log_dir {options.log_dir!r} --name {options.name!r}: the run "
                          f"folder's name is not valid UTF-8, and TensorBoard cannot write "
                          f"there. Pass a UTF-8 --log_dir and --name") from None
    return check_outputs(resolve(options), folders=("log_dir",))


def _parse_json_values(p: argparse.ArgumentParser, data: dict, file) -> argparse.Namespace:
    """The options of a config.json, each value read back through its own option (type,
    choices, flag), so that a wrong value is the error it would be on the command line."""
    defaults = vars(p.parse_args([]))
    argv, nulls = [], {}
    for k, v in data.items():
        d = defaults[k]
        if v is None:   # config.json writes "no budget" (inf) as null
            if d is not None and k != "time_to_run":
                raise OptionError(f"{file}: {k} is null; expected a value like {d!r}")
            nulls[k] = math.inf if k == "time_to_run" else None
        elif isinstance(d, bool) or isinstance(v, bool):
            if not (isinstance(d, bool) and isinstance(v, bool)):
                raise OptionError(f"{file}: {k} is {v!r}; expected "
                                  + ("true or false" if isinstance(d, bool) else f"like {d!r}"))
            argv += [f"--{k}" if v else f"--no_{k}"] if v != d else []
        elif isinstance(v, (int, float, str)):
            argv.append(f"--{k}={v}")
        else:
            raise OptionError(f"{file}: {k} is {v!r:.60}; expected one value")

    def error(message: str):
        raise OptionError(f"{file}: {message}")
    p.error = error
    options = p.parse_args(argv)
    vars(options).update(nulls)
    return options


# options of the shared groups that evaluation has no use for (name -> default): the TTO 2D loss
# weights follow --use_openpose2d, and evaluation runs in full precision
EVAL_UNUSED = {"amp": "off", "openpose_train_weight": 0.0, "gt_train_weight": 1.0}


def refuse_unused(o: argparse.Namespace, unused: dict, script: str) -> argparse.Namespace:
    """An :class:`OptionError` for the first option of ``unused`` (name -> default) given
    another value: refused rather than silently ignored."""
    for name, default in unused.items():
        if getattr(o, name) != default:
            raise OptionError(f"--{name} has no effect in {script}. Drop it")
    return o


def check_outputs(o: argparse.Namespace, files=(), folders=()) -> argparse.Namespace:
    """The output paths of the options ``files`` and ``folders`` can be written (checked before any
    work): not empty, a file not a folder, no file where a folder is needed; else OptionError."""
    for name in (*files, *folders):
        value = getattr(o, name, None)
        if value is None:
            continue
        p = Path(value)
        if not str(value).strip() or name in files and p.name in ("", ".", ".."):
            kind = "folder" if name in folders else "file"
            raise OptionError(f"--{name} {value!r} names no {kind}. Pass a {kind} name")
        if name in files and p.is_dir():
            raise OptionError(f"--{name} {p} is a folder. Pass a file name")
        q = next(q for q in (p, *p.parents) if q.exists() or q == q.parent)
        if (q != p or name in folders) and q.exists() and not q.is_dir():
            raise OptionError(f"--{name} {p}: {q} is a file, not a folder. Pass another path")
    return o


def parse_eval(model: str, argv=None) -> argparse.Namespace:
    o = refuse_unused(resolve(eval_parser(model).parse_args(argv)), EVAL_UNUSED, f"eval_{model}.py")
    return check_outputs(o, ("result_file", "json_out"), ("viz_dir",) if o.viz else ())


def save_options(options: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved options as strict JSON (decisions D1; ``inf`` -> null)."""
    write_json(path, to_dict(options), sort_keys=True)


def to_dict(options: argparse.Namespace) -> dict:
    """Plain dict of options (safe for json and for loading with ``weights_only=True``)."""
    return {k: v for k, v in vars(options).items()
            if v is None or isinstance(v, (bool, int, float, str))}
