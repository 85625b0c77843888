"""What a user sees (issue #13): strict JSON, the run folder, checkpoints written once, the step
budget, options taken from a checkpoint, file kinds named, the demo's bbox with an outlier
keypoint and its verdict on TTO, one-line errors with exit code 2.

Independent facts used: the JSON standard (RFC 8259 has no NaN / Infinity), hand-computed boxes
(the 4:3, x1.2 rule), the released state_dict manifests (shared/reference/state_dict/*.tsv)
with the released files' key mappings (reference/checkpoint_layout.md §2), file-system inode
identity for hard links.
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import OptionError

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = Path("/work/shared/reference/state_dict")
if not MANIFESTS.exists():
    MANIFESTS = REPO / "shared/reference/state_dict"


def _strict_loads(text: str):
    """json.loads that refuses NaN / Infinity / -Infinity (they are not JSON)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# point 2: strict JSON
def test_strict_json_writer(tmp_path):
    from utils.jsonio import dumps, write_json
    obj = {"a": math.inf, "b": [float("nan"), 1.5, np.float32(2.0)], "c": np.arange(3),
           "d": -math.inf, "e": Path("x/y")}
    assert _strict_loads(dumps(obj)) == {"a": None, "b": [None, 1.5, 2.0], "c": [0, 1, 2],
                                         "d": None, "e": "x/y"}
    p = write_json(tmp_path / "sub" / "x.json", obj)
    assert _strict_loads(p.read_text())["a"] is None
    with pytest.raises(ValueError):          # the stdlib default would have written NaN
        _strict_loads(json.dumps({"x": float("nan")}))


def test_config_json_is_strict_and_round_trips(tmp_path):
    from utils.options import parse_train, save_options
    o = parse_train(["--name", "x"])
    assert o.time_to_run == math.inf
    save_options(o, tmp_path / "config.json")
    data = _strict_loads((tmp_path / "config.json").read_text())
    assert data["time_to_run"] is None
    back = parse_train(["--from_json", str(tmp_path / "config.json")])
    assert back.time_to_run == math.inf and back.name == "x"
    # every value read back through its own option: a round trip of non-default values ...
    o = parse_train(["--name=-y", "--first_order", "--no_pin_memory", "--test_val_step",
                     "-1", "--outer_lr", "3e-05", "--tto_mode", "batch", "--checkpoint", "c.pt"])
    save_options(o, tmp_path / "c.json")
    back = parse_train(["--from_json", str(tmp_path / "c.json")])
    assert {k: v for k, v in vars(back).items() if k != "from_json"} == \
        {k: v for k, v in vars(o).items() if k != "from_json"}
    # ... and a wrong one is the error it would be on the command line
    from utils.errors import OptionError
    for key, value, why in (("first_order", "no", "expected true or false"),
                            ("batch_size", 2.5, "invalid int value"),
                            ("model", "banana", "invalid choice"),
                            ("log_dir", ["a"], "expected one value"),
                            ("batch_size", None, "is null"), ("aux_mode", True, "expected like")):
        (tmp_path / "bad.json").write_text(json.dumps({**data, key: value}))
        with pytest.raises(OptionError, match=why):
            parse_train(["--from_json", str(tmp_path / "bad.json")])


def _json_writes(path: Path) -> list[tuple[int, str]]:
    """(line, call) of json.dump / json.dumps calls without allow_nan=False in a file."""
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("dump", "dumps") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json":
            ok = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant)
                     and k.value.value is False for k in node.keywords)
            if not ok:
                bad.append((node.lineno, ast.unparse(node)[:80]))
    return bad


def test_every_json_write_of_the_project_is_strict():
    """Every json.dump(s) outside the tests goes through utils.jsonio or says allow_nan=False."""
    files = [p for p in REPO.rglob("*.py")
             if not {".venv", "tests", "shared", ".git"} & set(p.relative_to(REPO).parts)]
    assert len(files) > 20
    bad = {str(p.relative_to(REPO)): b for p in files if (b := _json_writes(p))}
    assert not bad, bad


def test_eval_result_file_json_is_strict(tmp_path):
    from train.evaluation import write_result_file
    arrays = {"mpjpe": np.array([50.0, 60.0]), "pve": np.array([np.nan, np.nan]),
              "imgname": np.array(["a.jpg", "b.jpg"])}
    p = write_result_file(tmp_path / "r.json", arrays)
    data = _strict_loads(p.read_text())
    assert data == {"mpjpe": [50.0, 60.0], "pve": [None, None], "imgname": ["a.jpg", "b.jpg"]}
    # any other name is the npz of --result_file's help (upstream's np.savez), not JSON, at the
    # very name given (the printed one)
    (tmp_path / "other").mkdir()
    p = write_result_file(tmp_path / "other" / "r.txt", arrays)
    assert list((tmp_path / "other").iterdir()) == [p] == [tmp_path / "other" / "r.txt"]
    with np.load(p) as z:
        np.testing.assert_array_equal(z["mpjpe"], [50.0, 60.0])


# ---------------------------------------------------------------------------------------------
# points 3-6: training and evaluation options
def _train_argv(root, log_dir, *extra):
    return ["--name", "run", "--log_dir", str(log_dir), "--data_root", str(root),
            "--backbone", "resnet18", "--bbox_type", "rect", "--crop_scale", "0.25",
            "--batch_size", "4", "--num_workers", "0", "--device", "cpu",
            "--no_pretrained_backbone", "--summary_steps", "1000", "--first_order", *extra]


def test_failed_start_leaves_no_run_folder(tmp_path):
    from config import MissingFileError
    from train.trainer import Trainer
    from utils.options import parse_train
    for root in (tmp_path / "nonexistent", tmp_path / "empty"):   # no folder / no SMPL file
        if root.name == "empty":
            root.mkdir()
        with pytest.raises(MissingFileError):
            Trainer(parse_train(_train_argv(root, tmp_path / "logs")))
        assert not (tmp_path / "logs").exists()


def test_max_steps_wins_and_checkpoints_are_written_once(synthetic_root, tmp_path, capsys):
    """--num_epochs 1 with --max_steps = one epoch + 1 runs into the 2nd epoch. The test
    epoch's previous.pt / previous_<tag>.pt are hard links of that epoch's current.pt (one
    inode), which the later save of current.pt leaves intact."""
    from train.trainer import Trainer
    from utils.options import parse_train
    tr = Trainer(parse_train(_train_argv(
        synthetic_root, tmp_path, "--num_epochs", "1", "--max_steps", "1000",
        "--test_epochs", "1", "--eval_datasets", "3dpw", "--eval_batch_size", "2",
        "--eval_max_batches", "1", "--test_val_step", "0", "--batch_size", "2")))
    per_epoch = len(tr.dataset) // 2
    assert 2 <= per_epoch <= 10   # (so that the last step is mid-epoch)
    tr.options.max_steps = total = per_epoch + 1
    tr.train()
    assert tr.step == total and tr.epoch == 1
    out = capsys.readouterr().out
    assert f"--max_steps {total} wins over --num_epochs 1" in out
    ck = tmp_path / "run" / "checkpoints"
    named = list(ck.glob("previous_1_3dpw_mp*.pt"))
    assert len(named) == 1
    prev = (ck / "previous.pt").stat()
    assert named[0].stat().st_ino == prev.st_ino and prev.st_nlink == 2
    assert (ck / "current.pt").stat().st_ino != prev.st_ino         # the last step, saved anew
    first = torch.load(named[0], map_location="cpu", weights_only=True)
    last = torch.load(ck / "current.pt", map_location="cpu", weights_only=True)
    assert first["total_step_count"] == per_epoch and last["total_step_count"] == total
    # the in-training evaluation's metrics and the checkpoint path are printed
    assert re.search(r"3dpw MPJPE [\d.]+, PA-MPJPE [\d.]+, PVE [\d.]+ mm", out)
    assert f"checkpoint: {named[0]}" in out
    assert f"last checkpoint: {ck / 'current.pt'}" in out
    assert _strict_loads((tmp_path / "run" / "config.json").read_text())["time_to_run"] is None


def test_eval_workers_default_to_the_machine():
    import os
    from utils.options import parse_eval
    o = parse_eval("cliff", [])
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert o.num_workers == min(8, n)


# ---------------------------------------------------------------------------------------------
# point 7: options from the checkpoint; what a file is
# the released defaults (upstream-behaviour.md §3.1 / §3.2), written out from its tables; where
# decisions.md differs it is said: checkpoint_steps (D13: 1000, the released one was unused)
RELEASED_TRAIN_DEFAULTS = {
    "name": "train_coco_loss", "time_to_run": math.inf, "resume": False, "num_workers": 4,
    "pin_memory": True, "log_dir": "logs", "checkpoint": None, "from_json": None,
    "pretrained_checkpoint": None, "backbone": "resnet", "model": "cliff", "num_epochs": 1600,
    "batch_size": 256, "use_openpose2d": False, "adapt_val_step": False, "syn_occ": False,
    "bbox_type": "square", "ALB": False, "no_inner": False, "beta1": 0.9, "beta2": 0.999,
    "outer_lr": 1e-4, "eps_adam": 1e-8, "inner_lr": 1e-5, "aux_lr": 1e-6,
    "no_learn_loss": False, "first_order": False, "inner_step": 1, "after_innerlr": 2e-7,
    "test_val_step": 0, "no_use_adam": False, "no_inner_step": False, "rot_factor": 30.0,
    "noise_factor": 0.4, "scale_factor": 0.25, "ignore_3d": False, "shape_loss_weight": 0.5,
    "keypoint_loss_weight": 5.0, "pose_loss_weight": 1.0, "beta_loss_weight": 0.001,
    "openpose_train_weight": 0.0, "gt_train_weight": 1.0, "summary_steps": 100,
    "checkpoint_steps": 1000, "test_epochs": 50, "save_epochs": 50, "test_start_epoch": 0,
    "shuffle_train": True}
RELEASED_EVAL_DEFAULTS = {   # (cliff, hmr)
    "checkpoint": (None, None), "dataset": ("h36m-p1", "h36m-p1"), "log_freq": (8, 50),
    "batch_size": (40, 40), "shuffle": (False, False), "result_file": (None, None),
    "viz": (False, False), "inner_lr": (1e-5, 1e-5), "test_val_step": (7, 14),
    "after_innerlr": (2e-7, 1e-5), "no_use_adam": (False, False),
    "no_inner_step": (False, False), "adapt_val_step": (False, False),
    "use_openpose2d": (False, False), "shape_loss_weight": (0.5, 0.5),
    "keypoint_loss_weight": (5.0, 5.0), "pose_loss_weight": (1.0, 1.0),
    "beta_loss_weight": (0.001, 0.001)}


def test_option_defaults_are_the_released_ones():
    """D1: every option keeps the released default (a checkpoint's network options: its own,
    else the released eval defaults resnet / rect)."""
    from utils.options import fill_checkpoint_defaults, parse_eval, parse_train
    o = vars(parse_train([]))
    assert {k: o.get(k, "missing") for k in RELEASED_TRAIN_DEFAULTS} == RELEASED_TRAIN_DEFAULTS
    for i, model in enumerate(("cliff", "hmr")):
        e = vars(fill_checkpoint_defaults(parse_eval(model, [])))
        want = {k: v[i] for k, v in RELEASED_EVAL_DEFAULTS.items()}
        assert {k: e.get(k, "missing") for k in want} == want
        assert (e["model"], e["backbone"], e["bbox_type"]) == (model, "resnet", "rect")


def _save_ckpt(root, path, options=None, model="cliff", backbone="resnet18"):
    from config import DataPaths
    from models import build_model
    mean = DataPaths(Path(root)).smpl_mean_params()
    torch.manual_seed(0)
    data = {"model": build_model(model, backbone, "main", "rect", mean).state_dict(),
            "model_aux": build_model(model, backbone, "aux", "rect", mean).state_dict()}
    if options is not None:
        data["options"] = options
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def trained_ckpt(synthetic_root, tmp_path_factory):
    """A train.py-style checkpoint recording --backbone resnet18 --bbox_type rect
    --crop_scale 0.25."""
    p = tmp_path_factory.mktemp("ck") / "cliff_r18.pt"
    return _save_ckpt(synthetic_root, p, {"model": "cliff", "backbone": "resnet18",
                                          "bbox_type": "rect", "crop_scale": 0.25})


def _resolve(root, ckpt, *argv, model="cliff"):
    from config import DataPaths
    from train.evaluation import read_eval_checkpoint
    from utils.options import parse_eval
    o = parse_eval(model, ["--checkpoint", str(ckpt), "--data_root", str(root), *argv])
    notes: list[str] = []
    read_eval_checkpoint(o, DataPaths.from_options(o), log=notes.append)
    return o, notes


def test_options_default_from_the_checkpoint(synthetic_root, trained_ckpt):
    o, notes = _resolve(synthetic_root, trained_ckpt)
    assert (o.model, o.backbone, o.bbox_type, o.crop_scale) == ("cliff", "resnet18", "rect",
                                                                0.25)
    assert not notes
    o, _ = _resolve(synthetic_root, trained_ckpt, "--crop_scale", "0.25", "--backbone",
                    "resnet18")   # agreeing values are fine
    for argv, pattern in ((["--bbox_type", "square"], "--bbox_type square contradicts the "
                           "checkpoint, which was trained with --bbox_type rect"),
                          (["--backbone", "resnet"], "--backbone resnet contradicts"),
                          (["--crop_scale", "1"], "--crop_scale 1.0 contradicts .* "
                           "--crop_scale 0.25")):
        with pytest.raises(OptionError, match=pattern):
            _resolve(synthetic_root, trained_ckpt, *argv)
    with pytest.raises(OptionError, match="evaluate it with eval_cliff.py"):
        _resolve(synthetic_root, trained_ckpt, model="hmr")


def test_released_style_checkpoint_is_recognised_from_its_keys(synthetic_root, tmp_path):
    p = _save_ckpt(synthetic_root, tmp_path / "released.pt", None, "hmr", "resnet18")
    o, notes = _resolve(synthetic_root, p, model="hmr")
    assert (o.model, o.backbone, o.bbox_type, o.crop_scale) == ("hmr", "resnet18", "rect", 1.0)
    assert len(notes) == 1 and "records no training options" in notes[0] \
        and "--bbox_type rect" in notes[0]
    with pytest.raises(OptionError, match="this is a HMR checkpoint; evaluate it with "
                                          "eval_hmr.py"):
        _resolve(synthetic_root, p)
    with pytest.raises(OptionError, match="holds a network of --backbone resnet18"):
        _resolve(synthetic_root, p, "--backbone", "resnet", model="hmr")


def _manifest(name: str, device="meta") -> dict:
    out = {}
    for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines():
        key, shape, _ = line.split("\t")
        dims = [int(d) for d in shape.strip("[]").split(",") if d]
        out[key] = torch.empty(dims, device=device)
    return out


@pytest.mark.skipif(not MANIFESTS.exists(), reason="state_dict manifests not available")
def test_file_kinds_from_the_released_key_layouts():
    from models.checkpoint_kind import describe, metahmr_network
    for main, aux, want in (("cliff_hrnet_rect_main", "cliff_hrnet_rect_aux", ("cliff", "hrnet")),
                            ("cliff_resnet_rect_main", "cliff_resnet_rect_aux",
                             ("cliff", "resnet")),
                            ("hmr_resnet_square_main", "hmr_resnet_square_aux", ("hmr", "resnet"))):
        ck = {"model": _manifest(main), "model_aux": _manifest(aux), "epoch": 3}
        net = metahmr_network(ck)
        assert (net["model"], net["backbone"]) == want and describe(ck) is None
    # the released aux files, with upstream's key mappings undone (checkpoint_layout.md §2)
    res = _manifest("cliff_resnet_rect_aux")
    head = ("init_", "fc1", "fc2", "decpose", "decshape", "deccam")
    res50 = {"model": {("module." if k.startswith(head) else "module.encoder.") + k: v
                       for k, v in res.items()}}
    assert describe(res50) == ("this is a CLIFF ResNet-50 auxiliary checkpoint (res50-…), not "
                               "a Meta-HMR training checkpoint; pass it as --aux_checkpoint to "
                               "train.py")
    hr48 = {"model": {"module." + k: v for k, v in _manifest("cliff_hrnet_rect_aux").items()}}
    assert "CLIFF HRNet-W48 auxiliary checkpoint (hr48-" in describe(hr48)
    hmr = {"model": {k: v for k, v in _manifest("hmr_resnet_square_aux").items()
                     if not k.startswith("init_")}}
    assert "HMR ResNet-50 auxiliary checkpoint (SPIN's hmr.pt)" in describe(hmr)
    pose_resnet = {"state_dict": {"backbone." + k: v for k, v in res.items()
                                  if not k.startswith(head)}}
    assert "--backbone_checkpoint" in describe(pose_resnet)
    # a whole network (with its head's fc1) is never called a pretrained backbone
    assert "backbone_checkpoint" not in (describe({"state_dict": res}) or "")
    flat_hr = {k.removeprefix("backbone."): v
               for k, v in _manifest("cliff_hrnet_rect_main").items()}
    assert "conv1.weight" in flat_hr and "fc1.weight" in flat_hr
    assert "bare state dict of one CLIFF HRNet-W48" in describe(flat_hr)
    assert "bare state dict of one CLIFF HRNet-W48" in describe(_manifest("cliff_hrnet_rect_main"))


def test_eval_with_an_aux_file_is_one_line_exit_2(synthetic_root, capsys):
    """The synthetic world's CLIFF ResNet-18 aux file (released res50 layout) given to
    eval_cliff.py: one line naming what it is, exit code 2."""
    from config import AUX_FILES
    from train.evaluation import main
    from utils.cli import run
    from utils.options import parse_eval
    aux = Path(synthetic_root) / AUX_FILES["cliff", "resnet18"]
    with pytest.raises(SystemExit) as e:
        run(lambda argv: main(parse_eval("cliff", argv)),
            ["--checkpoint", str(aux), "--data_root", str(synthetic_root), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {aux}: this is a CLIFF ResNet-18 auxiliary checkpoint")
    assert "pass it as --aux_checkpoint" in err


# ---------------------------------------------------------------------------------------------
# point 9: the demo's bbox and its verdict on TTO
def test_far_outside_keypoint_does_not_blow_up_the_box():
    from datasets.inputs import bbox_from_openpose
    kp = np.zeros((25, 3))
    kp[:6] = [[200, 100, 0.9], [300, 400, 0.8], [250, 250, 0.7], [220, 300, 0.9],
              [280, 150, 0.9], [240, 380, 0.5]]
    kp[7] = [-900, 1400, 0.95]            # a confident detector glitch
    center, scale, n, kp0 = bbox_from_openpose(kp, 0.1, (512, 512))
    np.testing.assert_allclose(center, [250, 250])
    assert scale == pytest.approx(max(100 * 4 / 3, 300) / 200 * 1.2) and n == 6
    assert kp0[7, 2] == 0 and (kp0[:6, 2] > 0).all()
    _, wide, _, _ = bbox_from_openpose(kp, 0.1)                # without the image size
    assert wide > 5 * scale
    kp[7] = [520, 700, 0.95]              # outside, but within half the image: kept
    assert bbox_from_openpose(kp, 0.1, (512, 512))[3][7, 2] == 0.95


def test_far_outside_is_half_the_larger_side_and_the_threshold_is_inclusive():
    from datasets.inputs import bbox_from_openpose
    kp = np.zeros((25, 3))
    kp[:4] = [[100, 20, 0.9], [300, 80, 0.9], [200, 50, 0.9], [-150, 50, 0.9]]
    # a 400 x 100 (w x h) image: 'far' is beyond 0.5 * 400 = 200 px, so x = -150 is kept ...
    center, scale, n, kp0 = bbox_from_openpose(kp, 0.1, (100, 400))
    assert n == 4 and kp0[3, 2] == 0.9
    np.testing.assert_allclose(center, [75, 50])
    kp[3, 0] = -201                       # ... and x = -201 dropped
    assert bbox_from_openpose(kp, 0.1, (100, 400))[3][3, 2] == 0
    kp[3] = [200, 50, 0.1]                # confidence == threshold: zeroed (<= threshold)
    assert bbox_from_openpose(kp, 0.1)[3][3, 2] == 0 and bbox_from_openpose(kp, 0.1)[2] == 3


def _record(err_before, err_after, betas_after=0.1, nonfinite=False):
    rec = {"tto": np.asarray(True), "nonfinite": np.asarray(nonfinite)}
    for tag, err, betas in (("", err_after, betas_after), ("_before", err_before, 0.2)):
        rec["pose" + tag] = np.full(72, 0.01 if tag else 0.02)
        rec["betas" + tag] = np.full(10, betas)
        rec["cam_crop" + tag] = np.array([0.9, 0.0, 0.1])
        rec["cam_t" + tag] = np.array([0.0, 0.1, 8.0])
        rec["joints_3d" + tag] = np.zeros((49, 3))
        rec["joints_2d" + tag] = np.zeros((49, 2))
        rec["vertices" + tag] = np.full((6890, 3), 0.3)
        rec["kp_error_px" + tag] = np.asarray(err)
    return rec


def test_tto_verdict_keeps_the_better_prediction():
    from train.demo_report import judge_tto
    rec, status = judge_tto(_record(12.0, 4.0))
    assert status == "ok" and float(rec["betas"][0]) == 0.1 and bool(rec["tto_kept"])
    rec, status = judge_tto(_record(4.0, 12.0))                 # worse after TTO
    assert status == "tto_worse" and not bool(rec["tto_kept"])
    assert float(rec["betas"][0]) == 0.2 and float(rec["kp_error_px"]) == 4.0
    assert float(rec["kp_error_px_tto"]) == 12.0 and float(rec["betas_before"][0]) == 0.2
    rec, status = judge_tto(_record(30.0, 3.0, betas_after=5.6e7))   # exploded shape
    assert status == "tto_diverged" and float(rec["betas"][0]) == 0.2
    assert judge_tto(_record(30.0, 3.0, nonfinite=True))[1] == "tto_diverged"
    assert judge_tto(_record(np.nan, np.nan) | {"tto": np.asarray(False)})[1] == "no_tto"


def test_per_image_line_reports_errors_and_warnings():
    from train.demo_report import image_line as _image_line
    line = _image_line("a.jpg", {"people": 2, "kp_error_px_before": [12.34, 4.0],
                                 "kp_error_px_tto": [3.21, 9.0],
                                 "person_status": ["ok", "tto_worse"]})
    first, warn = line.split("\n")
    assert first == ("[demo] a.jpg: 2 people; 2D keypoint error before -> after TTO (px): "
                     "12.3 -> 3.2, 4.0 -> 9.0")
    assert warn.startswith("warning: a.jpg person 1: TTO raised the 2D keypoint error")


# ---------------------------------------------------------------------------------------------
# option ranges, defaults and combinations from what the values mean (mutation probe)
def test_option_range_edges_follow_what_the_values_mean():
    """Independent facts: numpy seeds are 32-bit unsigned (numpy itself accepts 2**32 - 1 and
    refuses 2**32); a pixel multiplier U[1-n, 1+n] is never negative iff n <= 1; a scale clipped
    to [1-s, 1+s] is never 0 iff s < 1; a negative step period means nothing."""
    from utils.options import parse_train
    np.random.seed(2 ** 32 - 1)
    with pytest.raises(ValueError):
        np.random.seed(2 ** 32)
    o = parse_train(["--seed", str(2 ** 32 - 1), "--noise_factor", "1", "--scale_factor",
                     "0.99"])
    assert (o.seed, o.noise_factor, o.scale_factor) == (2 ** 32 - 1, 1.0, 0.99)
    for argv, match in ((["--seed", str(2 ** 32)], r"--seed must be in \[0, 4294967295\]"),
                        (["--noise_factor", "1.5"], r"--noise_factor must be in \[0, 1\]"),
                        (["--scale_factor", "1"], r"--scale_factor must be in \[0, 1\)"),
                        (["--checkpoint_steps", "-1"], "--checkpoint_steps must be >= 0"),
                        (["--outer_lr", "0"], "--outer_lr must be > 0, got 0.0")):
        with pytest.raises(OptionError, match=match):
            parse_train(argv)


def test_resolved_training_options_follow_the_decisions(tmp_path):
    """D14: --seed defaults to 2023 (as released) in training and evaluation; --max_steps 0 =
    no step limit; --no_inner is inner_step 0; D5: the aux network runs in eval mode under
    --first_order, in train mode without it, --aux_mode overrides; the released code has no
    HMR HRNet (no aux file for it in the layout)."""
    from config import AUX_FILES
    from utils.options import parse_eval, parse_train
    o = parse_train([])
    assert (o.seed, parse_eval("cliff", []).seed, parse_eval("hmr", []).seed) == (2023,) * 3
    assert (o.max_steps, o.inner_step, o.aux_mode) == (0, 1, "train")
    assert parse_train(["--no_inner", "--inner_step", "3"]).inner_step == 0
    assert parse_train(["--first_order"]).aux_mode == "eval"
    assert parse_train(["--first_order", "--aux_mode", "train"]).aux_mode == "train"
    assert ("hmr", "hrnet") not in AUX_FILES
    with pytest.raises(OptionError, match="--model hmr has no HRNet variant"):
        parse_train(["--model", "hmr", "--backbone", "hrnet"])


def test_from_json_that_is_no_options_object_is_one_line(tmp_path, capsys, monkeypatch):
    """A config.json holding a JSON array or number, or naming an option no script has, is one
    line `error: ...` with exit code 2 (the project's rule for an expected mistake)."""
    from utils.cli import run
    from utils.options import parse_train
    monkeypatch.delenv("METAHMR_DEBUG", raising=False)
    for text, want in (("[1, 2]", "expected a JSON object of options"),
                       ("3", "expected a JSON object of options"),
                       ('{"name": "x", "banana": 1}', "has unknown options ['banana']")):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(SystemExit) as e:
            run(parse_train, ["--from_json", str(tmp_path / "c.json")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and want in err, err


def test_data_layout_root_image_folders_and_sources(tmp_path, monkeypatch):
    """D10: the root defaults to env METAHMR_ROOT; a missing file names where it was expected
    and where the seed README says to get it; raw images lie under --img_root when given, in
    the released folder names (upstream-behaviour.md: 3DPW under datasets/pw3d); a missing
    --img_root is said once for the folder."""
    from argparse import Namespace
    from config import DataPaths, MissingFileError
    from utils.options import parse_train
    monkeypatch.setenv("METAHMR_ROOT", str(tmp_path))
    assert parse_train([]).data_root == str(tmp_path)
    assert DataPaths.from_options(Namespace()).root == tmp_path
    with pytest.raises(MissingFileError, match=re.escape(
            f"SMPL neutral body model not found: expected at "
            f"{tmp_path / 'data/smpl/SMPL_NEUTRAL.pkl'}. Get it from the SMPL website")):
        DataPaths(tmp_path).smpl_model()
    images = tmp_path / "elsewhere"
    (images / "pw3d").mkdir(parents=True)
    assert DataPaths(tmp_path, images).image_folder("3dpw") == images / "pw3d"
    with pytest.raises(MissingFileError, match="given by --img_root, does not exist"):
        DataPaths(tmp_path, tmp_path / "nope").image_folder("coco")


def test_progress_lines_in_a_log_every_log_freq_and_after_the_last(monkeypatch):
    """Issue #13 point 1: without a terminal, a line `[<desc>] <i>/<total>: ...` (i counted
    from 1) every --log_freq iterations and after the last one; --log_freq 0: none."""
    import io
    import sys
    from utils.progress import Progress
    monkeypatch.setattr(sys, "stderr", io.StringIO())        # a log file, not a terminal
    for freq, want in ((2, [2, 4, 5]), (0, [])):
        lines: list[str] = []
        bar = Progress(range(5), 5, "eval 3dpw", freq, log=lines.append)
        for i, _ in enumerate(bar, 1):
            bar.update(i, {"MPJPE": f"{10.0 * i:.1f}"})
        bar.close()
        assert lines == [f"[eval 3dpw] {i}/5: MPJPE {10.0 * i:.1f}" for i in want]
