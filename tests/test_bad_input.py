"""Bad input never runs code and never passes silently (issue #15; issue #13 item 8).

The security cases use crafted files whose pickle would create a marker file if it ran; each
test asserts the marker does not exist. The other cases check that a bad file or option gives
one clear error (or, with ``--skip_bad_images``, a counted and listed skip), never a silent
substitute.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from config import DATASET_FILES, DataPaths, MissingFileError
from datasets import BaseDataset, DatasetError
from datasets.base_dataset import collate_skipping
from utils.errors import OptionError, UserError
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]


class _Planted:
    """Pickles as a call of ``os.system('touch <marker>')``: the marker exists iff it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _opts(**kw):
    base = dict(bbox_type="rect", rot_factor=30.0, noise_factor=0.4, scale_factor=0.25,
                ignore_3d=False, syn_occ=False, ALB=False, skip_bad_images=False)
    return argparse.Namespace(**{**base, **kw})


def _world_npz(world: Path, name: str, is_train: bool = False) -> dict:
    split = "train" if is_train else "test"
    with np.load(world / "data" / "datasets" / DATASET_FILES[split][name]) as z:
        return {k: z[k] for k in z.files}


def _root(tmp: Path, world: Path, name: str, data: dict | None = None, is_train=False,
          copy_images=False) -> Path:
    """A data root with the world's images (linked, or copied) and ``data`` as the npz."""
    (tmp / "data" / "datasets").mkdir(parents=True, exist_ok=True)
    if copy_images:
        shutil.copytree(world / "datasets", tmp / "datasets")
    elif not (tmp / "datasets").exists():
        (tmp / "datasets").symlink_to(world / "datasets")
    for sub in ("smpl", "VOC"):
        if not (tmp / "data" / sub).exists():
            (tmp / "data" / sub).symlink_to(world / "data" / sub)
    for f in ("smpl_mean_params.npz", "J_regressor_extra.npy", "J_regressor_h36m.npy"):
        if not (tmp / "data" / f).exists():
            (tmp / "data" / f).symlink_to(world / "data" / f)
    split = "train" if is_train else "test"
    data = _world_npz(world, name, is_train) if data is None else data
    np.savez(tmp / "data" / "datasets" / DATASET_FILES[split][name], **data)
    return tmp


# -------------------------------------------------------------------------------------------
# Security: nothing in a data file runs
def test_npz_object_array_is_refused_and_never_unpickled(synthetic_root, tmp_path):
    """Object arrays of annotation files are read through the restricted unpickler (text and
    numbers only): one naming os.system is refused before anything runs."""
    marker = tmp_path / "marker"
    data = _world_npz(synthetic_root, "3dpw")
    planted = np.empty(len(data["imgname"]), dtype=object)
    planted[:] = [_Planted(marker)] * len(planted)
    data["gender"] = planted
    root = _root(tmp_path, synthetic_root, "3dpw", data)
    with pytest.raises(DatasetError, match=r"3dpw_test.*npz \(array 'gender'\): refused to "
                                           r"load .* names \w+\.system"):
        BaseDataset(_opts(), "3dpw", False, DataPaths(root))
    assert not marker.exists()


def test_smpl_pickle_with_code_is_refused(tmp_path):
    from models.smpl import load_smpl_data
    from utils.safe_pickle import UnsafePickleError
    marker, path = tmp_path / "marker", tmp_path / "SMPL_NEUTRAL.pkl"
    for protocol in (0, 2, 5):
        path.write_bytes(pickle.dumps({"v_template": _Planted(marker)}, protocol=protocol))
        with pytest.raises(UnsafePickleError, match=r"SMPL_NEUTRAL.pkl: refused .*os.system"
                                                    r"|SMPL_NEUTRAL.pkl: refused .*posix.system"):
            load_smpl_data(path)
    assert not marker.exists()
    # other callables that run code are refused by name too, before anything is imported
    for module, name in (("builtins", "eval"), ("subprocess", "call"), ("numpy", "load"),
                         ("scipy.io", "loadmat"), ("torch", "load")):
        path.write_bytes(f"c{module}\n{name}\n(S'x'\ntR.".encode())
        with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
            load_smpl_data(path)


def test_chumpy_era_smpl_file_loads_and_matches(synthetic_root, tmp_path):
    """An SMPL file as the official ones are written (Python-2 module names, chumpy arrays,
    scipy.sparse J_regressor, protocol 2) loads and gives the same mesh as the plain file."""
    import chumpy as ch
    from models.smpl import SMPL
    from utils import safe_pickle
    paths = DataPaths(synthetic_root)
    data = safe_pickle.load_file(paths.smpl_model("neutral"))
    data["shapedirs"] = ch.array(np.asarray(data["shapedirs"]))
    data["posedirs"] = ch.array(np.asarray(data["posedirs"]))
    raw = pickle.dumps(data, protocol=2)
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    raw = raw.replace(b"cscipy.sparse._csc\n", b"cscipy.sparse.csc\n")
    assert b"cnumpy.core.multiarray\n" in raw and b"cchumpy.ch\nCh\n" in raw
    old = tmp_path / "SMPL_NEUTRAL.pkl"
    old.write_bytes(raw)
    torch.manual_seed(0)
    pose, betas = torch.randn(2, 72) * 0.3, torch.randn(2, 10)
    kw = dict(betas=betas, body_pose=pose[:, 3:], global_orient=pose[:, :3])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)   # no numpy.core deprecation noise
        new_model = SMPL(old, paths.j_regressor_extra())
    ref = SMPL(paths.smpl_model("neutral"), paths.j_regressor_extra())(**kw)
    out = new_model(**kw)
    assert torch.equal(out.vertices, ref.vertices) and torch.equal(out.joints, ref.joints)


def test_occluder_file_with_code_is_refused(tmp_path):
    from datasets.occlusion import load_occluders
    from utils.safe_pickle import UnsafePickleError
    marker, path = tmp_path / "marker", tmp_path / "pascal_occluders.npy"
    arr = np.empty(2, dtype=object)
    arr[:] = [np.zeros((4, 4, 4), np.uint8), _Planted(marker)]
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="pascal_occluders.npy: refused"):
        load_occluders(path)
    assert not marker.exists()
    arr[1] = np.full((3, 5, 4), 7, np.uint8)       # a genuine object array still loads
    np.save(path, arr, allow_pickle=True)
    got = load_occluders(path)
    assert [o.shape for o in got] == [(4, 4, 4), (3, 5, 4)] and got[1][0, 0, 0] == 7


def test_joint_regressor_holding_objects_is_refused_and_never_unpickled(tmp_path):
    from models.smpl import SMPLFileError, load_regressor
    marker, path = tmp_path / "marker", tmp_path / "J_regressor_extra.npy"
    arr = np.empty((1, 2), dtype=object)
    arr[:] = _Planted(marker)
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(SMPLFileError, match="cannot read joint regressor .*J_regressor_extra"):
        load_regressor(path)
    assert not marker.exists()


def test_occluders_of_another_dtype_are_checked_then_made_uint8(tmp_path):
    """Float RGBA patches within 0..255 load as uint8 (truncated as numpy casts); values
    outside 0..255, or a non-numeric dtype, are named, never wrapped round silently."""
    from datasets.occlusion import OccluderFileError, load_occluders
    path = tmp_path / "pascal_occluders.npy"
    patches = np.full((2, 3, 5, 4), 200.7)
    patches[:, :, :, 3] = [0.0, 255.0, 0.0, 255.0, 0.0]   # alpha at both ends of the range
    np.save(path, patches)
    got = load_occluders(path)
    assert [(o.dtype, o.shape) for o in got] == [(np.uint8, (3, 5, 4))] * 2
    assert (got[1][..., :3] == 200).all() and got[1][0, :, 3].tolist() == [0, 255, 0, 255, 0]
    for i, bad in enumerate((np.full((1, 3, 5, 4), 300.0), np.full((1, 3, 5, 4), -1, np.int16),
                             np.full((1, 3, 5, 4), "x"))):
        np.save(path := tmp_path / f"occluders{i}.npy", bad)
        with pytest.raises(OccluderFileError, match=r"occluder 0 has dtype .* outside 0..255"):
            load_occluders(path)


def test_checkpoint_messages(tmp_path):
    from models.checkpoints import CheckpointError, read_checkpoint
    marker = tmp_path / "marker"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    torch.save({"model": _Planted(marker)}, tmp_path / "code.pt")
    (tmp_path / "text.pt").write_text("this is not a checkpoint\n")
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:200])
    cases = {"module.pt": r"module.pt: this file holds a pickled object \(torch.nn.modules."
                          r"linear.Linear\), not a state dict.*torch.save\(model.state_dict\(\)\)",
             "code.pt": r"code.pt: refused: this file contains code \((os|posix).system\)",
             "text.pt": r"text.pt: not a PyTorch checkpoint",
             "cut.pt": r"cut.pt: this checkpoint is truncated or corrupt"}
    for name, match in cases.items():
        with pytest.raises(CheckpointError, match=match) as e:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    assert not marker.exists()
    assert torch.equal(read_checkpoint(tmp_path / "good.pt")["model"]["w"], torch.zeros(3))


def test_checkpoint_of_another_network_is_one_line(synthetic_root, tmp_path):
    from models import build_model
    from models.checkpoints import CheckpointError, load_metahmr_checkpoint
    mean = DataPaths(synthetic_root).smpl_mean_params()
    hmr = build_model(model="hmr", backbone="resnet18", role="main", mean_params=mean)
    torch.save({"model": hmr.state_dict(), "model_aux": hmr.state_dict()}, tmp_path / "h.pt")
    cliff = build_model(model="cliff", backbone="resnet18", role="main", mean_params=mean)
    with pytest.raises(CheckpointError, match=r"h.pt: \['model'\].*does not match.*--model") as e:
        load_metahmr_checkpoint(tmp_path / "h.pt", cliff)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------------------
# Nothing silent
def test_3dpw_without_gender_is_an_error(synthetic_root, tmp_path):
    data = _world_npz(synthetic_root, "3dpw")
    data.pop("gender")
    root = _root(tmp_path, synthetic_root, "3dpw", data)
    with pytest.raises(DatasetError, match="no 'gender' array"):
        BaseDataset(_opts(), "3dpw", False, DataPaths(root))


def test_duplicated_npz_member_is_refused(synthetic_root, tmp_path):
    root = _root(tmp_path, synthetic_root, "3dpw")
    npz = root / "data" / "datasets" / DATASET_FILES["test"]["3dpw"]
    pose = _world_npz(synthetic_root, "3dpw")["pose"]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, pose + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # zipfile: "Duplicate name: 'pose.npy'"
        with zipfile.ZipFile(npz, "a") as zf:
            zf.writestr("pose.npy", buf.getvalue())
    with pytest.raises(DatasetError, match=r"npz: zip member\(s\) stored more than once: "
                                           r"pose.npy"):
        BaseDataset(_opts(), "3dpw", False, DataPaths(root))


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])


def test_truncated_jpeg_is_unreadable(synthetic_root, tmp_path):
    root = _root(tmp_path, synthetic_root, "3dpw", copy_images=True)
    ds = BaseDataset(_opts(), "3dpw", False, DataPaths(root))
    path = Path(ds.image_path(1))
    assert path.suffix == ".jpg"
    padded = Path(ds.image_path(2))                  # bytes after the EOI marker are fine
    padded.write_bytes(padded.read_bytes() + b"\x00" * 16)
    ds[2]
    _truncate(path)
    with pytest.raises(DatasetError, match=f"sample 1.*cannot read image {path}: truncated JPEG"):
        ds[1]
    # training: skipped and counted, replaced by the next readable sample
    train_root = _root(tmp_path / "t", synthetic_root, "3dpw", is_train=True, copy_images=True)
    tr = BaseDataset(_opts(skip_bad_images=True), "3dpw", True, DataPaths(train_root))
    _truncate(Path(tr.image_path(0)))
    with pytest.warns(UserWarning, match="skipping unreadable image.*truncated JPEG"):
        item = tr[0]
    assert item["sample_index"] == 1 and item["n_skipped"] == 1 and tr.n_skipped == 1


def test_tiny_image_is_a_named_error(synthetic_root, tmp_path):
    import cv2
    root = _root(tmp_path, synthetic_root, "h36m-p2", copy_images=True)
    ds = BaseDataset(_opts(), "h36m-p2", False, DataPaths(root))
    path = Path(ds.image_path(0))
    cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(DatasetError, match=f"{path}: image is 1x1 pixels, too small"):
        ds[0]


def test_3dpw_image_too_thin_to_halve_is_a_named_error(synthetic_root, tmp_path):
    """3DPW images are halved before cropping: one readable at 3 px high is 1 px after, and
    is refused by name, as an image of that size would be."""
    import cv2
    root = _root(tmp_path, synthetic_root, "3dpw", copy_images=True)
    ds = BaseDataset(_opts(), "3dpw", False, DataPaths(root))
    path = Path(ds.image_path(0))
    cv2.imwrite(str(path), np.zeros((3, 200, 3), np.uint8))
    with pytest.raises(DatasetError, match=f"{path}: image is 200x3 pixels, too small to halve"):
        ds[0]


def test_test_set_leaves_skipped_samples_out(synthetic_root, tmp_path):
    """A test set never scores another sample in place of an unreadable one."""
    root = _root(tmp_path, synthetic_root, "3dpw", copy_images=True)
    ds = BaseDataset(_opts(skip_bad_images=True), "3dpw", False, DataPaths(root))
    _truncate(Path(ds.image_path(1)))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_skipping)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        batches = list(loader)
    assert [b["sample_index"].tolist() for b in batches] == [[0], [2, 3]]
    assert [s["sample_index"] for s in batches[0]["skipped"]] == [1]
    assert batches[0]["skipped"][0]["imgname"] == ds.image_path(1) and ds.n_skipped == 1


def test_evaluation_skips_and_lists(synthetic_root, tmp_path):
    """eval --skip_bad_images: the metrics are those of the readable samples only."""
    from models import build_model
    from train import evaluation as ev
    from utils.options import parse_eval
    root = _root(tmp_path, synthetic_root, "3dpw", copy_images=True)
    mean = DataPaths(root).smpl_mean_params()
    torch.manual_seed(0)
    nets = [build_model(model="cliff", backbone="resnet18", role=r, bbox_type="rect",
                        mean_params=mean) for r in ("main", "aux")]
    argv = ["--data_root", str(root), "--dataset", "3dpw", "--bbox_type", "rect",
            "--backbone", "resnet18", "--batch_size", "2", "--test_val_step", "-1",
            "--device", "cpu", "--num_workers", "0", "--log_freq", "0", "--skip_bad_images",
            "--crop_scale", "1"]
    o = parse_eval("cliff", argv)
    full = ev.evaluate(*nets, o, "3dpw", log=lambda s: None, return_per_sample=True)
    _truncate(Path(root / "datasets" / "pw3d" / _world_npz(root, "3dpw")["imgname"][1]))
    with pytest.warns(UserWarning):
        part = ev.evaluate(*nets, o, "3dpw", log=lambda s: None, return_per_sample=True)
    keep = np.array([0, 2, 3])
    assert part["n"] == 3 and part["n_skipped"] == 1
    assert [s["sample_index"] for s in part["skipped"]] == [1]
    assert part["per_sample"]["sample_index"].tolist() == keep.tolist()
    for m, k in (("MPJPE", "mpjpe"), ("PA-MPJPE", "pa_mpjpe"), ("PVE", "pve")):
        assert part[m] == pytest.approx(full["per_sample"][k][keep].mean(), rel=1e-5)
    text = ev.format_results("3dpw", part)
    assert "1 sample(s) left out of the metrics" in text and "truncated JPEG" in text


@pytest.fixture(scope="module")
def eval_nets(synthetic_root):
    """Random-weight ResNet-18 CLIFF main and aux networks."""
    from models import build_model
    mean = DataPaths(synthetic_root).smpl_mean_params()
    torch.manual_seed(0)
    return [build_model(model="cliff", backbone="resnet18", role=r, bbox_type="rect",
                        mean_params=mean) for r in ("main", "aux")]


def _eval_argv(root, name, *extra):
    return ["--data_root", str(root), "--dataset", name, "--backbone", "resnet18",
            "--batch_size", "2", "--test_val_step", "-1", "--device", "cpu", "--num_workers",
            "0", "--log_freq", "0", "--crop_scale", "0.25", "--max_batches", "1", *extra]


@pytest.mark.parametrize("name, drop, h36m_gt, match", [
    ("3dpw", ("pose", "shape", "has_smpl"), "mosh", r"3dpw_test.*has no 'pose'/'shape'"),
    ("h36m-p2", ("pose", "shape", "has_smpl"), "mosh", r"no 'pose'/'shape'.*--h36m_gt mocap"),
    ("mpi-inf-3dhp", ("S",), "mosh", r"mpi_inf_3dhp_valid.*has no 'S' \(GT 3D joints\)"),
    ("h36m-p2", ("S",), "mocap", r"has no 'S' \(GT 3D joints\)"),
])
def test_test_set_without_the_gt_its_protocol_scores_is_refused(synthetic_root, tmp_path, name,
                                                                   drop, h36m_gt, match,
                                                                   eval_nets):
    """A test set lacking the GT its metrics are computed from (the SMPL mesh, or the 3D
    joints 'S') was scored against zeros (wrong numbers, PA-MPJPE 0): now one line."""
    from train import evaluation as ev
    from utils.options import parse_eval
    data = _world_npz(synthetic_root, name)
    for k in drop:
        data.pop(k)
    root = _root(tmp_path, synthetic_root, name, data)
    o = parse_eval("cliff", _eval_argv(root, name, "--h36m_gt", h36m_gt))
    with pytest.raises(DatasetError, match=match):
        ev.evaluate(*eval_nets, o, name, max_batches=1, log=lambda s: None)


def test_h36m_with_only_mocap_joints_has_no_pve(synthetic_root, tmp_path, eval_nets, capsys):
    """SPIN's h36m_valid_protocol2.npz layout (no pose/shape) under --h36m_gt mocap: MPJPE and
    PA-MPJPE from 'S', as with the full file (no TTO: the prediction does not read the GT);
    PVE is not available: not in the results, said on stdout, null in --json_out."""
    from train import evaluation as ev
    from utils.options import parse_eval
    data = _world_npz(synthetic_root, "h36m-p2")
    for k in ("pose", "shape", "has_smpl", "gender"):
        data.pop(k)
    root = _root(tmp_path, synthetic_root, "h36m-p2", data)
    ckpt = tmp_path / "c.pt"
    torch.save({"model": eval_nets[0].state_dict(), "model_aux": eval_nets[1].state_dict()},
               ckpt)
    part = ev.main(parse_eval("cliff", _eval_argv(
        root, "h36m-p2", "--h36m_gt", "mocap", "--checkpoint", str(ckpt), "--json_out",
        str(tmp_path / "m.json"))))
    assert "PVE" not in part and "PVE: not available" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["PVE"] is None and metrics["PVE_before"] is None
    o = parse_eval("cliff", _eval_argv(synthetic_root, "h36m-p2", "--h36m_gt", "mocap"))
    full = ev.evaluate(*eval_nets, o, "h36m-p2", max_batches=1, log=lambda s: None)
    assert np.isfinite(full["PVE"])
    for m in ("MPJPE", "PA-MPJPE"):
        assert part[m] == pytest.approx(full[m], rel=1e-6) and part[m] > 1


def test_training_reads_its_test_sets_at_the_start(synthetic_root, tmp_path):
    """The in-training evaluation's test sets were first read at the first test epoch (days
    into a run): a missing or unusable one now stops train.py at the start, with the way to
    train without it; no run folder is left."""
    from train.trainer import Trainer
    from utils.options import parse_train
    data = _world_npz(synthetic_root, "3dpw")
    for k in ("pose", "shape", "has_smpl"):
        data.pop(k)
    root = _root(tmp_path / "root", synthetic_root, "3dpw", data)
    (root / "models").symlink_to(synthetic_root / "models")
    for split in ("train", "test"):
        for f in DATASET_FILES[split].values():
            if not (root / "data" / "datasets" / f).exists():
                (root / "data" / "datasets" / f).symlink_to(
                    synthetic_root / "data" / "datasets" / f)
    argv = ["--name", "run", "--log_dir", str(tmp_path / "logs"), "--data_root", str(root),
            "--backbone", "resnet18", "--bbox_type", "rect", "--crop_scale", "0.25",
            "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
            "--no_pretrained_backbone", "--first_order", "--eval_datasets", "h36m-p2,3dpw"]
    with pytest.raises(DatasetError, match=r"3dpw_test.*has no 'pose'/'shape'.*test set '3dpw' "
                                           r"of --eval_datasets.*--eval_datasets '' trains"):
        Trainer(parse_train(argv))
    assert not (tmp_path / "logs").exists()


def test_openpose2d_without_openpose_and_missing_S_note(synthetic_root, tmp_path, capsys):
    data = _world_npz(synthetic_root, "3dpw")
    data.pop("openpose")
    root = _root(tmp_path, synthetic_root, "3dpw", data)
    with pytest.raises(DatasetError, match="no 'openpose' array.*--use_openpose2d"):
        BaseDataset(_opts(use_openpose2d=True), "3dpw", False, DataPaths(root))
    data = _world_npz(synthetic_root, "3dpw")
    data["openpose"][..., 2] = 0
    root = _root(tmp_path / "zero", synthetic_root, "3dpw", data)
    with pytest.raises(DatasetError, match="all have confidence 0"):
        BaseDataset(_opts(use_openpose2d=True), "3dpw", False, DataPaths(root))
    BaseDataset(_opts(), "3dpw", False, DataPaths(root))     # GT 2D keypoints: fine
    data = _world_npz(synthetic_root, "h36m-p2")
    data.pop("S")
    root = _root(tmp_path / "noS", synthetic_root, "h36m-p2", data)
    capsys.readouterr()
    for _ in range(2):
        BaseDataset(_opts(), "h36m-p2", False, DataPaths(root))
    err = capsys.readouterr().err
    assert err.count("has no 'S'") == 1 and "pseudo-label" in err


# -------------------------------------------------------------------------------------------
# Options, data root, resume
@pytest.mark.parametrize("argv, match", [
    (["--num_epochs", "0"], "--num_epochs must be >= 1, got 0"),
    (["--test_val_step", "-5"], "--test_val_step must be >= -1, got -5"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--outer_lr", "nan"], "--outer_lr must be > 0 and finite, got nan"),
    (["--inner_lr", "inf"], "--inner_lr must be >= 0 and finite"),
    (["--beta2", "1"], r"--beta2 must be in \[0, 1\)"),
    (["--eval_batch_size", "-1"], "--eval_batch_size must be >= 1"),
    (["--num_workers", "-2"], "--num_workers must be >= 0"),
])
def test_numeric_options_are_checked_at_parse_time(argv, match):
    from utils.options import parse_train
    with pytest.raises(OptionError, match=match):
        parse_train(argv)


def test_valid_option_edges_pass():
    from utils.options import parse_eval, parse_train
    o = parse_train(["--test_val_step", "-1", "--max_steps", "0", "--time_to_run", "inf",
                     "--beta1", "0"])
    assert o.test_val_step == -1 and o.time_to_run == float("inf")
    assert parse_eval("cliff", ["--test_val_step", "-1", "--viz_max", "-1"]).viz_max == -1


def test_missing_data_root_is_said(tmp_path):
    with pytest.raises(MissingFileError, match=f"{tmp_path / 'nope'}: this folder, given by "
                                               f"--data_root.*does not exist"):
        DataPaths(tmp_path / "nope").smpl_model("neutral")


def test_resume_falls_back_to_newest_readable(tmp_path):
    from models.checkpoints import CheckpointError
    from train import checkpoint as ckpt
    ckpt.atomic_save({"step": 1}, tmp_path / "previous_1.pt")
    ckpt.atomic_save({"step": 2}, tmp_path / "previous.pt")
    ckpt.atomic_save({"step": 3}, tmp_path / "current.pt")
    for i, name in enumerate(("previous_1.pt", "previous.pt", "current.pt")):
        os.utime(tmp_path / name, ns=(10**18 + i * 10**9,) * 2)   # oldest .. newest
    _truncate(tmp_path / "current.pt", 0.3)
    logs: list[str] = []
    path, data = ckpt.load_for_resume(tmp_path, log=logs.append)
    assert path == tmp_path / "previous.pt" and data["step"] == 2
    assert "current.pt" in logs[0] and "unreadable" in logs[0]
    assert "using" in logs[-1] and "previous.pt" in logs[-1]
    for name in ("previous.pt", "previous_1.pt"):
        (tmp_path / name).write_text("garbage")
    with pytest.raises(CheckpointError, match="no checkpoint of this run folder loads"):
        ckpt.load_for_resume(tmp_path, log=None)
    assert ckpt.load_for_resume(tmp_path / "empty", log=None) is None


# -------------------------------------------------------------------------------------------
# One line, exit code 2
def test_cli_run_one_line_and_debug(capsys, monkeypatch):
    from utils.cli import run

    def bad(argv):
        raise DatasetError("x.npz: broken.\nsecond line. Fix it")
    monkeypatch.delenv("METAHMR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run(bad, ["--foo"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: x.npz: broken.; second line. Fix it\n"
    with pytest.raises(SystemExit) as e:
        run(lambda argv: (_ for _ in ()).throw(SystemExit("error: old style")), [])
    assert e.value.code == 2 and capsys.readouterr().err == "error: old style\n"
    seen = []
    with pytest.raises(DatasetError):
        run(lambda argv: seen.append(argv) or bad(argv), ["--a", "--debug"])
    assert seen == [["--a"]]
    monkeypatch.setenv("METAHMR_DEBUG", "1")
    with pytest.raises(DatasetError):
        run(bad, [])
    with pytest.raises(KeyError):            # a bug keeps its traceback
        monkeypatch.delenv("METAHMR_DEBUG")
        run(lambda argv: {}["k"], [])


def _script(*argv, timeout=120):
    env = {**os.environ, "METAHMR_DEBUG": ""}
    return forkrun.run(argv, cwd=REPO, timeout=timeout, env=env)


def test_entry_scripts_print_one_line(synthetic_root, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    cases = [
        (["train.py", "--num_epochs", "0"], "error: --num_epochs must be >= 1"),
        (["train.py", "--data_root", tmp_path / "nope", "--log_dir", tmp_path / "logs",
          "--device", "cpu", "--backbone", "resnet18"], f"error: {tmp_path / 'nope'}: this folder"),
        (["eval_hmr.py", "--data_root", synthetic_root, "--checkpoint", text, "--device", "cpu",
          "--backbone", "resnet18"], f"error: {text}: not a PyTorch checkpoint"),
    ]
    for argv, start in cases:
        p = _script(*argv)
        assert p.returncode == 2, p.stderr[-2000:]
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(start), p.stderr[-2000:]


def test_demo_from_dataset_bad_set_is_one_line(synthetic_root, tmp_path):
    """demo.py --from_dataset on a test set without 'openpose' (the script: one line, exit 2),
    or naming a missing image (the same DatasetError, in process)."""
    from datasets.inputs import export_dataset_inputs
    data = _world_npz(synthetic_root, "h36m-p2")
    data["imgname"] = np.array(["nope/missing.jpg", *data["imgname"][1:]])
    root = _root(tmp_path / "missing", synthetic_root, "h36m-p2", data)
    with pytest.raises(DatasetError, match="sample 0: image .*nope/missing.jpg does not exist"):
        export_dataset_inputs(DataPaths(root), "h36m-p2", tmp_path / "inputs")
    data = _world_npz(synthetic_root, "h36m-p2")
    data.pop("openpose")
    want = "no 'openpose' keypoints in this h36m-p2 test set"
    root = _root(tmp_path / "root", synthetic_root, "h36m-p2", data)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"never read: the inputs fail first")
    p = _script("demo.py", "--from_dataset", "h36m-p2", "--data_root", root, "--checkpoint",
                ckpt, "--out_dir", tmp_path / "out", "--device", "cpu", "--backbone", "resnet18")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    assert re.search(want, lines[0]), lines[0]
    assert DATASET_FILES["test"]["h36m-p2"] in lines[0], lines[0]   # names the file


def test_nonfinite_weights_and_a_training_checkpoint_as_aux_file_are_refused(synthetic_root,
                                                                              tmp_path):
    from models import build_model
    from models.checkpoints import CheckpointError, load_aux_weights, load_metahmr_checkpoint
    mean = DataPaths(synthetic_root).smpl_mean_params()
    net, aux = (build_model("cliff", "resnet18", role, "rect", mean) for role in ("main", "aux"))
    good = {"model": net.state_dict(), "model_aux": aux.state_dict()}
    torch.save(good, tmp_path / "good.pt")
    with pytest.raises(CheckpointError, match="Meta-HMR checkpoint .*not an aux-network file"):
        load_aux_weights(tmp_path / "good.pt", aux, "cliff", "resnet18")
    bad = {"model": {k: v.clone() for k, v in good["model"].items()},
           "model_aux": good["model_aux"]}
    bad["model"]["fc1.weight"][0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"NaN or inf in 1 tensor\(s\) \(fc1.weight\)"):
        load_metahmr_checkpoint(tmp_path / "nan.pt", net, aux)
    load_metahmr_checkpoint(tmp_path / "good.pt", net, aux)      # finite: loads


def test_mean_params_file_errors_are_one_line(tmp_path):
    from models.regressor import MeanParamsError, load_mean_params
    z = {"pose": np.zeros(144), "shape": np.zeros(10), "cam": np.zeros(3)}
    cases = {"no_cam": ({**z, "cam": None}, r"missing keys \['cam'\]"),
             "nan": ({**z, "pose": np.full(144, np.nan)}, "NaN or inf"),
             "text": ({**z, "shape": np.array(["a"] * 10)}, "must be numbers"),
             "short": ({**z, "cam": np.zeros(2)}, "'cam' has 2 values, expected 3"),
             "complex": ({**z, "cam": np.zeros(3, complex)}, "'cam' must be numbers, not comp"),
             "bool": ({**z, "shape": np.zeros(10, bool)}, "'shape' must be numbers, not bool"),
             "huge": ({**z, "pose": np.full(144, 1e30)}, r"values beyond \+-1000")}
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **{k: v for k, v in arrays.items() if v is not None})
        with pytest.raises(MeanParamsError, match=match):
            load_mean_params(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "spin.npz", pose=np.full(144, 0.99), shape=np.full(10, -3.0),
             cam=np.array([0.9, 0.0, 0.0]))   # values of SPIN's order of magnitude load
    assert load_mean_params(tmp_path / "spin.npz")[2].tolist() == [[0.8999999761581421, 0, 0]]


# -------------------------------------------------------------------------------------------
# The demo's own inputs (probe of users' files): odd images, names, JSON, videos, options
_NON_UTF8 = os.fsdecode(b"caf\xe9 photo")   # a Latin-1 file name: not valid UTF-8


def test_demo_deeply_nested_json_is_a_reported_input_error(tmp_path):
    """JSON nested deeper than Python's parser recursion: the keypoint file is a per-image
    DemoInputError (a skip), the bbox file one line ``error:``, never a RecursionError."""
    from datasets.inputs import DemoInputError, load_bbox_file, read_openpose_json
    deep = tmp_path / "deep.json"
    deep.write_text('{"people": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DemoInputError, match="deep.json: cannot read OpenPose JSON"):
        read_openpose_json(deep)
    with pytest.raises(SystemExit, match="^error: --bbox_file .*deep.json: not valid JSON"):
        load_bbox_file(deep)


def test_demo_keypoint_file_without_body_keypoints_names_the_key(tmp_path):
    """An OpenPose person without 'pose_keypoints_2d' (OpenPose run without its body model, or
    a hand-made file) is a DemoInputError naming the key, not 'got shape None'."""
    from datasets.inputs import DemoInputError, read_openpose_json
    for person in ({"person_id": [-1], "face_keypoints_2d": []}, [1.0, 2.0]):
        (tmp_path / "k.json").write_text(json.dumps({"version": 1.3, "people": [person]}))
        with pytest.raises(DemoInputError, match=r"k.json: people\[0\] has no "
                                                 r"'pose_keypoints_2d'.*--write_json"):
            read_openpose_json(tmp_path / "k.json")


def test_demo_reads_odd_image_files_by_their_pixels(tmp_path):
    """Alpha, 16-bit, grey, EXIF-rotated images give the expected 8-bit RGB pixels; a file
    name that is not valid UTF-8 reads (OpenCV's own reader crashed on it); an empty or
    non-image file is None (a listed skip)."""
    import cv2
    from PIL import Image
    from datasets.inputs import read_image
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((24, 40), 7, np.uint8)])).save(tmp_path / "a.png")
    cv2.imwrite(str(tmp_path / "b.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6                       # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    Image.fromarray(rgb).save(os.path.join(tmp_path, _NON_UTF8 + ".png"))
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "b.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "g.png"), np.repeat(rgb[..., :1], 3, -1))
    assert read_image(tmp_path / "r.jpg").shape == (40, 24, 3)   # as OpenPose's OpenCV sees it
    assert np.array_equal(read_image(tmp_path / (_NON_UTF8 + ".png")), rgb)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("empty.jpg", "text.jpg", "missing.jpg"):
        assert read_image(tmp_path / name) is None


def test_demo_video_names_and_frame_sizes(tmp_path):
    """A video or output folder name that is not valid UTF-8 is one line ``error:`` (OpenCV
    crashed on it); frames too large or too small for the mp4 codec are scaled, not an
    OSError traceback."""
    import cv2
    from datasets.inputs import DemoInputError, read_video
    from train.video import OverlayVideo
    bad = tmp_path / (_NON_UTF8 + ".mp4")
    bad.write_bytes(b"")
    with pytest.raises(DemoInputError, match="not valid UTF-8"):
        read_video(bad)
    with pytest.raises(SystemExit, match="^error: .*not valid UTF-8"):
        OverlayVideo(tmp_path / _NON_UTF8 / "v.mp4", 10.0)
    for name, (h, w) in {"wide": (60, 9000), "tiny": (1, 2)}.items():
        out = OverlayVideo(tmp_path / f"{name}.mp4", 10.0)
        out.write(np.full((h, w, 3), 200, np.uint8))
        out.close()
        cap = cv2.VideoCapture(str(out.path))
        ok, frame = cap.read()
        cap.release()
        assert ok and 16 <= min(frame.shape[:2]) and max(frame.shape[:2]) <= 4096, name


def test_demo_on_a_non_utf8_image_name_and_out_dir(synthetic_root, tmp_path):
    """The whole demo (bbox mode) on an image and into a folder whose names are not valid
    UTF-8: the person is processed and the overlay written (OpenCV's file functions crashed)."""
    from models import build_model
    from train import demo
    mean = DataPaths(synthetic_root).smpl_mean_params()
    torch.manual_seed(0)
    nets = {r: build_model("cliff", "resnet18", r, "rect", mean) for r in ("main", "aux")}
    torch.save({"model": nets["main"].state_dict(), "model_aux": nets["aux"].state_dict()},
               tmp_path / "c.pt")
    src = _world_npz(synthetic_root, "h36m-p2")["imgname"][0]
    img_dir, out = tmp_path / "img", tmp_path / _NON_UTF8
    img_dir.mkdir()
    shutil.copyfile(DataPaths(synthetic_root).image_folder("h36m-p2") / str(src),
                    img_dir / (_NON_UTF8 + ".jpg"))
    (tmp_path / "boxes.json").write_text(json.dumps({_NON_UTF8: [[30, 10, 60, 100]]}))
    o = demo.parse_demo(["--checkpoint", str(tmp_path / "c.pt"), "--data_root",
                         str(synthetic_root), "--backbone", "resnet18", "--crop_scale", "0.25",
                         "--device", "cpu", "--render_backend", "software", "--img_dir",
                         str(img_dir), "--bbox_file", str(tmp_path / "boxes.json"),
                         "--out_dir", str(out)])
    summary = demo.run_demo(o, log=lambda *a: None)
    assert (summary["processed"], summary["people"]) == (1, 1), summary["per_image"]
    overlay = out / (_NON_UTF8 + "_overlay.jpg")
    assert overlay.read_bytes()[:2] == b"\xff\xd8"   # a JPEG
    assert (out / (_NON_UTF8 + "_person0.npz")).exists()


@pytest.mark.parametrize("script, argv, match", [
    ("train", ["--crop_scale", "1e300"], r"--crop_scale must be in \(0, 4\]"),
    ("demo", ["--focal_length", "inf"], "--focal_length must be >= 1 and finite"),
    ("demo", ["--focal_length", "1e-300"], "--focal_length must be >= 1, got 1e-300"),
    ("train", ["--eval_datasets", "3dpw,h36m"], "--eval_datasets: unknown test set.*'h36m'"),
    ("demo", ["--every", "2"], "--every picks frames of --video"),
    ("eval", ["--batch_size", "99999999999999999999"], "--batch_size must be at most 4294967295"),
    ("train", ["--num_epochs", "9" * 400], "--num_epochs must be at most 4294967295"),
    ("eval", ["--amp", "bf16"], "--amp has no effect in eval_cliff.py"),
    ("eval", ["--gt_train_weight", "0"], "--gt_train_weight has no effect in eval_cliff.py"),
])
def test_option_values_that_cannot_run_are_refused(script, argv, match):
    """A crop of 1e300 x the released size (a traceback deep in the data pipeline, after the run
    folder was made) and a focal length that is not a finite number of pixels (every person
    non-finite) are refused when the options are read, as is a test set name that training
    would only read at its first evaluation (a traceback, epochs later); so are options that
    would be ignored (evaluation has no mixed precision, its TTO 2D loss weights follow
    --use_openpose2d; images have no frames to pick) and integers beyond 32 bits (itertools
    raised on the batch size)."""
    from train.demo import parse_demo
    from utils.options import parse_eval, parse_train
    parse = {"train": parse_train, "eval": lambda a: parse_eval("cliff", a),
             "demo": lambda a: parse_demo(["--checkpoint", "c.pt", "--img_dir", "i",
                                           "--openpose_dir", "k", *a])}[script]
    with pytest.raises((OptionError, SystemExit), match=match):
        parse(argv)


def test_output_paths_are_checked_before_any_work(tmp_path):
    """An output that cannot be written is refused when the options are read, not after the
    evaluation or training it would hold (a traceback then: IsADirectoryError,
    FileExistsError); an empty name or --name '' (the run folder would be --log_dir itself)
    too. A new file or folder in a new folder is fine."""
    from utils.options import parse_eval, parse_train
    (tmp_path / "afile").write_text("")
    ev = lambda *a: parse_eval("cliff", [str(x) for x in a])  # noqa: E731
    for argv, match in ((["--result_file", tmp_path], "is a folder"),
                        (["--json_out", tmp_path / "afile" / "m.json"], "afile is a file"),
                        (["--viz", "--viz_dir", tmp_path / "afile"], "afile is a file"),
                        (["--json_out", ""], "names no file")):
        with pytest.raises(OptionError, match=f"^--{argv[-2].lstrip('-')} .*{match}"):
            ev(*argv)
    for argv, match in ((["--log_dir", tmp_path / "afile" / "sub"], "afile is a file"),
                        (["--name", ""], "the run folder is <log_dir>/<name>"),
                        (["--name", "../x"], "the run folder"),
                        (["--name", "a\0b"], "the run folder")):
        with pytest.raises(OptionError, match=match):
            parse_train([str(x) for x in argv])
    ev("--json_out", tmp_path / "new" / "m.json", "--viz", "--viz_dir", tmp_path / "new" / "v")
    assert parse_train(["--log_dir", str(tmp_path / "new"), "--name", "a/b"]).name == "a/b"


def test_dataset_image_with_a_non_utf8_name_is_read(tmp_path):
    """A dataset image whose name is not valid UTF-8 gives its stored pixels (OpenCV's own
    reader crashes the process on such a name); an EXIF tag is ignored, as for every dataset
    image."""
    import cv2
    from datasets.image_files import read_image_file
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / (_NON_UTF8 + ".png")
    path.write_bytes(cv2.imencode(".png", rgb)[1].tobytes())
    img, why = read_image_file(str(path))
    assert why == "" and np.array_equal(img, rgb)
