"""Runs that meet damaged or foreign files: options recorded in a checkpoint, a bad occluder
file, temporaries left by a killed checkpoint save, demo boxes and keypoints that do not belong
to their image, non-finite predictions.

Independent facts used: argparse's own verdict on a value (``float('abc')`` fails, 'banana' is
no backbone); a process that has exited has no PID (``os.kill(pid, 0)`` fails); a 128 px image
cannot hold a box 1e300 px wide or 1000 times its width, nor keypoints a million pixels away;
NaN is not a finite number.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import forkrun  # the project's commands, forked from a warm server
from config import DataPaths
from utils.errors import OptionError, UserError

REPO = Path(__file__).resolve().parents[1]
DATASET = "h36m-p2"


# ---------------------------------------------------------------------------------------------
# options recorded in a checkpoint
@pytest.mark.parametrize("stored, option, value", [
    ({"crop_scale": "abc"}, "--crop_scale", "'abc'"),
    ({"backbone": "banana"}, "--backbone", "'banana'"),
    ({"bbox_type": "oval"}, "--bbox_type", "'oval'"),
    ({"crop_scale": -1.0}, "--crop_scale", "-1.0"),
    ({"crop_scale": [0.25]}, "crop_scale", "[0.25]"),
    ({"model": True}, "model", "True")])
def test_bad_recorded_options_are_one_error(stored, option, value):
    from utils.options import apply_checkpoint_options, parse_eval
    o = parse_eval("cliff", [])
    full = {"model": "cliff", "backbone": "resnet18", "bbox_type": "rect", "crop_scale": 0.25,
            **stored}
    with pytest.raises(OptionError) as e:
        apply_checkpoint_options(o, "runs/x/current.pt", full, None, log=lambda m: None)
    text = str(e.value)
    assert text.startswith("runs/x/current.pt: ") and option in text and value in text


def test_eval_of_a_checkpoint_with_a_bad_recorded_option_is_one_line(synthetic_root, tmp_path,
                                                                     capsys):
    from models import build_model
    from train.evaluation import main
    from utils.cli import run
    from utils.options import parse_eval
    mean = DataPaths(Path(synthetic_root)).smpl_mean_params()
    path = tmp_path / "damaged.pt"
    torch.save({"model": build_model("cliff", "resnet18", "main", "rect", mean).state_dict(),
                "model_aux": build_model("cliff", "resnet18", "aux", "rect", mean).state_dict(),
                "options": {"model": "cliff", "backbone": "resnet18", "bbox_type": "rect",
                            "crop_scale": "abc"}}, path)
    with pytest.raises(SystemExit) as e:
        run(lambda argv: main(parse_eval("cliff", argv)),
            ["--checkpoint", str(path), "--data_root", str(synthetic_root), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: ") and "--crop_scale" in err and "'abc'" in err


# ---------------------------------------------------------------------------------------------
# a bad occluder file stops training before anything is written
def test_bad_occluder_file_fails_before_the_run_folder(synthetic_root, tmp_path, monkeypatch):
    from train.trainer import Trainer
    from utils.options import parse_train
    bad = tmp_path / "occluders.npy"
    np.save(bad, np.zeros((3, 5, 5, 3), np.uint8))        # RGB, not RGBA
    monkeypatch.setattr(DataPaths, "occluders", lambda self: bad)
    argv = ["--name", "run", "--log_dir", str(tmp_path / "logs"), "--data_root",
            str(synthetic_root), "--backbone", "resnet18", "--bbox_type", "rect",
            "--crop_scale", "0.25", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
            "--no_pretrained_backbone", "--first_order", "--syn_occ"]
    with pytest.raises(UserError, match=r"occluders\.npy.*\(5, 5, 3\)"):
        Trainer(parse_train(argv))
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------------------------------
# temporaries of a killed checkpoint save
def _exited_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_save_temporaries_are_removed_and_never_resumed(tmp_path):
    from train.checkpoint import atomic_save, load_for_resume
    from utils.atomic import temporary_name
    folder = tmp_path / "checkpoints"
    current = atomic_save({"step": 1}, folder / "current.pt")
    stale = temporary_name(current, _exited_pid())
    live = temporary_name(current, os.getppid())            # the writer still runs
    for f in (stale, live):
        f.write_bytes(b"half a checkpoint")
    future = os.stat(current).st_mtime + 100
    os.utime(stale, (future, future))                        # the newest file of the folder
    path, data = load_for_resume(folder, log=None)           # at a --resume
    assert path == current and data["step"] == 1
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"half a checkpoint")
    atomic_save({"step": 2}, folder / "current.pt")          # the next save
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["current.pt", live.name])


# ---------------------------------------------------------------------------------------------
# the demo: boxes and keypoints of another image, non-finite predictions
@pytest.fixture(scope="module")
def demo_files(synthetic_root, tmp_path_factory):
    """A random-weight CLIFF ResNet-18 checkpoint, and one test image copied under names."""
    from models import build_model
    paths = DataPaths(Path(synthetic_root))
    d = tmp_path_factory.mktemp("robust_demo")
    mean = paths.smpl_mean_params()
    torch.manual_seed(0)
    torch.save({"model": build_model("cliff", "resnet18", "main", "rect", mean).state_dict(),
                "model_aux": build_model("cliff", "resnet18", "aux", "rect", mean).state_dict()},
               d / "ck.pt")
    with np.load(paths.dataset_npz(DATASET, is_train=False)) as z:
        name, op = str(z["imgname"][1]), z["openpose"][1]
    (d / "img").mkdir()
    for n in ("a", "b", "c"):
        shutil.copyfile(paths.image_folder(DATASET) / name, d / "img" / f"{n}.jpg")
    return {"dir": d, "ckpt": d / "ck.pt", "openpose": op}


def _demo_options(root, files, out, *extra):
    from train import demo
    return demo.parse_demo(["--checkpoint", str(files["ckpt"]), "--data_root", str(root),
                            "--backbone", "resnet18", "--device", "cpu", "--render_backend",
                            "software", "--out_dir", str(out), "--img_dir",
                            str(files["dir"] / "img"), "--crop_scale", "0.25", *map(str, extra)])


def test_demo_skips_huge_boxes_and_never_writes_nonfinite_results(synthetic_root, demo_files,
                                                                  tmp_path, monkeypatch):
    """a: a good box, one 1e300 px, one 1000x the image's width; b: two good boxes, the second
    (centre x 70) predicted as NaN; c: only that box."""
    from train import demo
    w = 128
    boxes = {"a.jpg": [[30, 10, 60, 100], [0, 0, 1e300, 1e300], [-500 * w, 10, 1000 * w, 100]],
             "b.jpg": [[30, 10, 60, 100], [40, 10, 60, 100]], "c.jpg": [[40, 10, 60, 100]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    real = demo.predict

    def nan_at_x70(model, model_aux, batch, *a, **k):
        pred = real(model, model_aux, batch, *a, **k)
        for p in (pred.before, pred.after):
            p["vertices"][batch["center"][:, 0] == 70] = float("nan")
        return pred
    monkeypatch.setattr(demo, "predict", nan_at_x70)
    out, logs = tmp_path / "out", []
    s = demo.run_demo(_demo_options(synthetic_root, demo_files, out, "--bbox_file",
                                    tmp_path / "boxes.json"), log=logs.append)
    text = "\n".join(logs)
    assert "box 1: [0.0, 0.0, 1e+300, 1e+300] reaches far outside" in text
    assert "box 2: [-64000.0, 10.0, 128000.0, 100.0] reaches far outside" in text
    assert "person 1: its prediction is not finite" in text
    assert s["processed"] == 2 and s["people"] == 2 and s["people_skipped"] == 3
    assert s["per_image"]["c.jpg"]["status"] == "error"
    assert "not finite" in s["per_image"]["c.jpg"]["message"]
    written = sorted(p.name for p in out.glob("*.npz"))
    assert written == ["a_person0.npz", "b_person0.npz"]
    for name in written:
        with np.load(out / name) as z:
            for k in ("vertices", "cam_t", "joints_2d", "pose", "bbox_scale"):
                assert np.isfinite(z[k]).all(), (name, k)


def test_demo_refuses_keypoints_of_another_image(synthetic_root, demo_files, tmp_path):
    """Per person of a 128 px image: its keypoints shifted by 1e6 px, or most of them far
    outside, are not its keypoints (skipped, said why); a few far ones are ignored, said too."""
    from datasets.inputs import keypoints_problem
    from train import demo
    op = demo_files["openpose"]
    confident = np.flatnonzero(op[:, 2] > 0.1)
    assert len(confident) >= 10
    shifted, most, few = op.copy(), op.copy(), op.copy()
    shifted[:, :2] += 1e6
    most[confident[:len(confident) // 2 + 1], :2] = [-1e6, 5e5]   # more than half
    few[confident[:2], :2] = 1e6
    kp = tmp_path / "kp"
    kp.mkdir()
    demo_json = {"version": 1.3, "people": [{"pose_keypoints_2d": p.reshape(-1).tolist()}
                                            for p in (shifted, most, few, op)]}
    (kp / "a_keypoints.json").write_text(json.dumps(demo_json))
    assert keypoints_problem(op, 0.1, (128, 128)) is None
    assert keypoints_problem(few, 0.1, (128, 128)) is None
    assert "another image" in keypoints_problem(most, 0.1, (128, 128))
    logs: list[str] = []
    run = demo.DemoRun(_demo_options(synthetic_root, demo_files, tmp_path / "out",
                                     "--openpose_dir", kp), log=logs.append)
    img = run.load(demo_files["dir"] / "img" / "a.jpg")
    text = "\n".join(logs)
    assert img.person_ids == [2, 3]                    # `few` and the true keypoints
    n = len(confident)
    assert f"person 0: {n} of its {n} confident keypoints lie far outside the 128x128" in text
    assert f"person 1: {n // 2 + 1} of its {n} confident keypoints lie far outside" in text
    assert "person 2: 2 confident keypoint(s) far outside the image ignored" in text
    used = img.people[0]["keypoints_full"].numpy()[:, 2]     # `few`: the far two not used
    assert (used[confident[:2]] == 0).all() and (used[confident[2:]] > 0).all()
    run.renderer.close()


def test_demo_refuses_normalised_or_sub_pixel_keypoints(synthetic_root, demo_files, tmp_path):
    """OpenPose run with --keypoint_scale 3 writes a person's pixel keypoints divided by the
    image size ([0, 1]), with 4 mapped to [-1, 1]: not pixels of the 128x128 image, refused per
    person naming the option (they were cropped from a sub-pixel box); keypoints spanning
    under 2 px are refused as a box under 2 px is; the pixel keypoints are used."""
    from datasets.inputs import bbox_from_openpose, keypoint_box_problem
    from train import demo
    op, size = demo_files["openpose"], 128.0
    scale3, scale4, dot = op.copy(), op.copy(), op.copy()
    scale3[:, :2] = op[:, :2] / size
    scale4[:, :2] = op[:, :2] / size * 2 - 1
    dot[:, :2] = [60.0, 70.0] + np.linspace(0.0, 1.5, 25)[:, None]   # a 1.5 px span
    kp = tmp_path / "kp"
    kp.mkdir()
    (kp / "a_keypoints.json").write_text(json.dumps({"version": 1.3, "people": [
        {"pose_keypoints_2d": p.reshape(-1).tolist()} for p in (scale3, scale4, dot, op)]}))
    assert keypoint_box_problem(bbox_from_openpose(op, 0.1, (128, 128))[3]) is None
    logs: list[str] = []
    run = demo.DemoRun(_demo_options(synthetic_root, demo_files, tmp_path / "out",
                                     "--openpose_dir", kp), log=logs.append)
    img = run.load(demo_files["dir"] / "img" / "a.jpg")
    text = "\n".join(logs)
    assert img.person_ids == [3]
    for i in (0, 1):
        assert f"person {i}: its confident keypoints all lie within [-1, 1]" in text
    assert text.count("--keypoint_scale 3 or 4") == 2
    assert "person 2: its confident keypoints span 1.5 x 1.5 px (under 2 px)" in text
    run.renderer.close()


# ---------------------------------------------------------------------------------------------
# atomic writes, restricted unpickling, npz reading (mutation probe)
def test_a_failed_atomic_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    """An error during the write (a full disk, a failing torch.save) leaves the previous file
    as it was and no temporary; a temporary naming a PID no system can have (above Linux's
    PID_MAX_LIMIT, 2**22) is a dead writer's: removed at the next save, no traceback."""
    from train.checkpoint import atomic_save, load_for_resume
    from utils.atomic import atomic_path, temporary_name
    path = atomic_save({"step": 1}, tmp_path / "current.pt")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a checkpo")
            raise OSError("disk full")
    assert torch.load(path, map_location="cpu", weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["current.pt"]
    huge = temporary_name(path, 10 ** 30)
    huge.write_bytes(b"half a checkpoint")
    assert load_for_resume(tmp_path, log=None)[1] == {"step": 1} and not huge.exists()


def test_python2_strings_persistent_ids_and_non_arrays_in_pickles(tmp_path):
    """The official SMPL files are Python-2 pickles whose array data are byte strings, which
    Python 3 reads with encoding='latin1' (the pickle module's documented way for numpy);
    a persistent id (never in the official files) and an object .npy that holds no array are
    refused, not returned."""
    import io
    import pickle
    from utils.safe_pickle import UnsafePickleError, load_file, load_npy
    a = np.array([1.5, -2.0, 3e-300])         # its bytes are not ASCII
    raw = pickle.dumps(a, protocol=2)
    i = raw.index(b"\x89h") + 1               # after NEWFALSE: _codecs.encode(str, 'latin1')
    j = raw.index(b"R", raw.index(b"\x86", i)) + 1
    py2 = raw[:i] + b"U" + bytes([a.nbytes]) + a.tobytes() + raw[j:]   # a Python-2 str
    (tmp_path / "py2.pkl").write_bytes(py2)
    np.testing.assert_array_equal(pickle.loads(py2, encoding="latin1"), a)
    np.testing.assert_array_equal(load_file(tmp_path / "py2.pkl"), a)

    class Persistent(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "marker" else None
    buf = io.BytesIO()
    Persistent(buf, protocol=2).dump({"a": "marker"})
    (tmp_path / "pid.pkl").write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent ids"):
        load_file(tmp_path / "pid.pkl")
    with open(tmp_path / "list.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False,
                                                  "shape": (2,)})
        pickle.dump([1, 2], fh, protocol=2)
    with pytest.raises(UnsafePickleError, match="expected a pickled numpy array"):
        load_npy(tmp_path / "list.npy")


def test_npz_that_is_no_zip_or_holds_an_object_array_is_named(tmp_path):
    """numpy.savez writes a zip archive: any other file is an NpzError naming it, and an
    object array (a pickle) is refused as one, naming its key."""
    from utils.safe_npz import NpzError, read_npz
    (tmp_path / "a.npz").write_text("not a zip")
    with pytest.raises(NpzError, match=f"{tmp_path / 'a.npz'}: not an npz file"):
        read_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", ok=np.arange(2), obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(NpzError, match="array 'obj' is an object array, i.e. a pickle"):
        read_npz(tmp_path / "b.npz")


def test_what_a_checkpoint_file_is_and_resume_ties(tmp_path):
    """A file holding no dict is no checkpoint of train.py (one error naming it); one CLIFF
    main network (fc1 input 512 + 160: a ResNet-18 CLIFF head, no 'encoder.' trunk as in the
    aux files) under 'model' without 'model_aux' is said to be that, not an aux checkpoint;
    on equal modification times --resume takes current.pt (the file written last)."""
    from models.checkpoint_kind import describe
    from models.checkpoints import CheckpointError
    from train.checkpoint import atomic_save, load, load_for_resume
    torch.save([1, 2], tmp_path / "list.pt")
    assert describe([1, 2]) is None and describe(torch.zeros(2)) is None   # nothing to name
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dict"):
        load(tmp_path / "list.pt")
    main = {"layer4.0.conv2.weight": torch.zeros(1), "fc1.weight": torch.zeros(1024, 672)}
    assert describe({"model": main}) == (
        "this holds one CLIFF ResNet-18 network under 'model' but no 'model_aux': not a "
        "Meta-HMR checkpoint (which holds both networks)")
    run = tmp_path / "run"
    for name, step in (("epoch_1.pt", 1), ("current.pt", 2)):
        atomic_save({"step": step}, run / name)
        os.utime(run / name, ns=(10 ** 18, 10 ** 18))
    assert load_for_resume(run, log=None) == (run / "current.pt", {"step": 2})


# ---------------------------------------------------------------------------------------------
# the run folder on a real machine: full disks, files in the way, two runs, changed options
def _train_argv(root, log_dir, name, *extra):
    return ["--name", name, "--log_dir", str(log_dir), "--data_root", str(root),
            "--backbone", "resnet18", "--bbox_type", "rect", "--model", "cliff",
            "--crop_scale", "0.25", "--batch_size", "1", "--num_workers", "0", "--first_order",
            "--no_pretrained_backbone", "--device", "cpu", *extra]


class _FullDisk:
    """A binary file whose writes fail as on a full disk after ``room`` bytes (what
    ``write(2)`` does there: ENOSPC)."""

    def __init__(self, path, room: int):
        self.f, self.room = open(path, "wb"), room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous(tmp_path,
                                                                                  monkeypatch,
                                                                                  capsys):
    """torch.save on a disk that fills up half way (its zip writer turns the ENOSPC into a
    RuntimeError): the previous checkpoint loads unchanged, no temporary is left, and train.py's
    wrapper prints one line naming the file and the system's cause, with a non-zero status."""
    import train.checkpoint as C
    from utils.cli import run
    path = C.atomic_save({"step": 1, "w": torch.ones(1000)}, tmp_path / "current.pt")
    monkeypatch.setattr(C, "open", lambda p, mode: _FullDisk(p, 2000), raising=False)
    with pytest.raises(SystemExit) as e:
        run(lambda argv: C.atomic_save({"step": 2, "w": torch.zeros(1000)}, path), [])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and os.strerror(errno.ENOSPC) in err[0], err
    monkeypatch.undo()
    data = C.load(path)
    assert data["step"] == 1 and torch.equal(data["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["current.pt"]


def test_json_files_are_replaced_whole_and_a_device_is_written_in_place(tmp_path, monkeypatch):
    """config.json on a full disk: the previous file stays whole (a half-written one would not
    parse), no temporary; /dev/full (a device that always answers ENOSPC) is written in place,
    not renamed over, and its failure is one WriteError naming it."""
    from pathlib import Path as P
    from utils.atomic import WriteError
    from utils.jsonio import write_json
    f = write_json(tmp_path / "config.json", {"outer_lr": 1e-4})
    real = P.write_text

    def half(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(P, "write_text", half)
    with pytest.raises(WriteError, match=r"config.json: cannot be written: No space left"):
        write_json(f, {"outer_lr": 1e-5, "long": "x" * 1000})
    monkeypatch.undo()
    assert json.loads(f.read_text()) == {"outer_lr": 1e-4}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    if os.path.exists("/dev/full"):
        with pytest.raises(WriteError, match=r"/dev/full: cannot be written: No space left"):
            write_json("/dev/full", {"a": 1})
        assert P("/dev/full").is_char_device()


@pytest.mark.parametrize("make, match", [
    (lambda run: (run / "tensorboard").write_text("x"), r"tensorboard is a file, not a folder"),
    (lambda run: (run / "checkpoints").write_text("x"), r"checkpoints is a file, not a folder"),
    (lambda run: (run / "config.json").mkdir(), r"config.json: is a folder"),
    (lambda run: (run / "checkpoints" / "current.pt").mkdir(parents=True), r"current.pt: is a fo"),
])
def test_a_run_folder_that_cannot_hold_the_run_fails_before_the_set_up(synthetic_root, tmp_path,
                                                                       monkeypatch, make, match):
    """A file where the run's tensorboard/ or checkpoints/ goes, a folder where its config.json
    or current.pt goes: one error before the networks are built (it came at the first summary
    or checkpoint, up to an epoch later), and nothing written."""
    import models.smpl
    from train.trainer import Trainer
    from utils.options import parse_train
    run = tmp_path / "r"
    run.mkdir()
    make(run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    monkeypatch.setattr(models.smpl, "build_smpl", lambda *a, **k: pytest.fail("set-up ran"))
    with pytest.raises(UserError, match=match):
        Trainer(parse_train(_train_argv(synthetic_root, tmp_path, "r")))
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_run_folder_name_that_is_not_utf8_is_refused_at_once(synthetic_root, tmp_path):
    """TensorBoard encodes its folder as UTF-8, so a run under a name that is not (bytes 0xff
    0xfe, as a Linux file name may be) failed at its first summary; now one option error."""
    from utils.options import parse_train
    odd = os.fsdecode(bytes(tmp_path) + b"/l\xff\xfe")
    with pytest.raises(OptionError, match="not valid UTF-8"):
        parse_train(_train_argv(synthetic_root, odd, "r"))
    with pytest.raises(OptionError, match="not valid UTF-8"):
        parse_train(_train_argv(synthetic_root, tmp_path, os.fsdecode(b"r\xff")))
    assert list(tmp_path.iterdir()) == []


def test_two_runs_in_one_run_folder_at_once_are_refused(synthetic_root, tmp_path):
    """Another process holds the run folder (a run started with the same --name): the second
    run stops with one error naming that process, before writing anything; once the holder
    has ended (even by SIGKILL), the folder is free again."""
    from train.trainer import Trainer
    from utils.options import parse_train
    run = tmp_path / "same"
    held = tmp_path / "held"
    holder = forkrun.start(["-c", "import time; from train.checkpoint import lock_run_folder; "
                            f"f = lock_run_folder({str(run)!r}); open({str(held)!r}, 'w'); "
                            "time.sleep(120)"], cwd=REPO)
    try:
        while not held.exists():
            assert holder.poll() is None, holder.communicate()
            time.sleep(0.02)
        with pytest.raises(UserError, match=rf"in use by another training run \(pid "
                                            rf"{holder.pid} on "):
            Trainer(parse_train(_train_argv(synthetic_root, tmp_path, "same")))
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    tr = Trainer(parse_train(_train_argv(synthetic_root, tmp_path, "same")))
    assert (run / "config.json").is_file() and tr.lock is not None


def test_resume_with_changed_options_uses_them_and_says_so(synthetic_root, tmp_path, capsys):
    """--resume with another --outer_lr / --aux_lr: Adam continues with its saved moments at
    the rates of the command line (load_state_dict put the saved rates back, silently keeping
    1e-4), and a note lists what changed."""
    from train.trainer import Trainer
    from utils.options import parse_train
    argv = _train_argv(synthetic_root, tmp_path, "lr", "--outer_lr", "1e-4", "--max_steps", "1",
                       "--checkpoint_steps", "1")
    Trainer(parse_train(argv)).train()
    saved = torch.load(tmp_path / "lr" / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)["optimizer"]
    capsys.readouterr()
    tr = Trainer(parse_train(argv + ["--resume", "--outer_lr", "3e-5", "--aux_lr", "2e-6"]))
    assert [g["lr"] for g in tr.optimizer.param_groups] == [3e-5, 2e-6]
    state = tr.optimizer.state_dict()["state"]
    assert state.keys() == saved["state"].keys()
    for i in state:
        for k, v in state[i].items():
            assert torch.equal(v, saved["state"][i][k]), (i, k)
    out = capsys.readouterr().out
    assert "note: options changed" in out and "--outer_lr 0.0001 -> 3e-05" in out
    assert "--aux_lr 1e-06 -> 2e-06" in out


def test_a_tensorboard_write_that_fails_is_one_line(synthetic_root, tmp_path, monkeypatch,
                                                    capsys):
    """TensorBoard's writer thread meets a full disk at the first summary: train.py prints one
    line naming the tensorboard folder, the cause and where to continue from (the thread's own
    traceback is not printed), exit status non-zero."""
    from tensorboard.compat.tensorflow_stub.io import gfile
    from utils.cli import run
    from train.trainer import main
    from utils.options import parse_train

    def full(self, filename, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(gfile.LocalFileSystem, "write", full)
    argv = _train_argv(synthetic_root, tmp_path, "tb", "--max_steps", "2", "--summary_steps", "1")
    with pytest.raises(SystemExit) as e:
        run(lambda a: main(parse_train(a)), argv)
    assert e.value.code != 0
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("epoch 0")]
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {tmp_path / 'tb' / 'tensorboard'}: cannot be written: "
                             f"{os.strerror(errno.ENOSPC)}") and "--resume" in err[0]


def test_ctrl_c_outside_the_training_loop_is_one_line(capsys):
    """Ctrl-C where nothing handles it (set-up, an evaluation, the demo): one line, the shell's
    status of a SIGINT death (128 + 2), no KeyboardInterrupt traceback."""
    import signal
    from utils.cli import run

    def interrupted(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        run(interrupted, [])
    assert e.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C)"
