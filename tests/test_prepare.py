"""3DPW preparation (datasets/prepare.py, prepare_3dpw.py, pw3d_raw.py) on the synthetic raw tree.

Independent facts used: the world's own 3DPW npz (written by the generator from camera-frame
SMPL bodies, datasets/synthetic.py) is the reference for every prepared key; the raw files are
checked against it with the COCO-18 / BODY_25 correspondence written out here by joint name and
rotations composed with cv2.Rodrigues; SPIN's box rule is computed by hand; the evaluation of
the same images with the same GT must give the same metrics. Every bad input raises an error
naming the file (and nothing is written), a crafted pickle never runs.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import constants
from config import DATASET_FILES, DataPaths
from datasets.prepare_3dpw import SKIP_INVALID, SKIP_NO_2D, SKIP_NO_GT, prepare_3dpw
from datasets.pw3d_raw import RawDataError, load_pickle
from datasets.synthetic_raw import write_raw_3dpw
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]
SEQ_TEST = "downtown_walking_00"            # the tiny world's 3DPW test sequence
COCO18 = ["Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
          "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar"]
BODY25 = [n[3:] for n in constants.JOINT_NAMES[:25]]                   # "OP Nose" -> "Nose"


def _npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rod(v) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(v, np.float64).reshape(3, 1))[0]


@pytest.fixture(scope="module")
def raw(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "pw3d"
    return write_raw_3dpw(synthetic_root, out=out, log=None)


@pytest.fixture(scope="module")
def models(synthetic_root):
    from models.smpl import build_smpl
    return {g: build_smpl(DataPaths(synthetic_root), g, dtype=torch.float64)
            for g in ("male", "female")}


@pytest.fixture(scope="module")
def prepared(raw, synthetic_root, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_3dpw(raw, out, data_root=synthetic_root, with_focal_length=True,
                           models=models, log=None)
    return out, summary


def _world(root, split="test") -> dict:
    return _npz(Path(root) / "data" / "datasets" / DATASET_FILES[split]["3dpw"])


# ---------------------------------------------------------------------------------------------
def test_raw_files_hold_the_world_in_world_coordinates(raw, synthetic_root, models):
    w = _world(synthetic_root)
    seq = pickle.load(open(raw / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl", "rb"),
                      encoding="latin1")
    assert seq["sequence"] == SEQ_TEST and seq["genders"] == [str(w["gender"][0])]
    frames = [int(n[-9:-4]) for n in w["imgname"].astype(str)]
    N = max(frames) + 1
    valid = np.asarray(seq["campose_valid"][0])
    assert valid.shape == (N,) and np.flatnonzero(valid).tolist() == frames
    K = seq["cam_intrinsics"]
    np.testing.assert_allclose(K[[0, 1], [0, 1]], w["focal_length"][0])
    for i, f in enumerate(frames):
        assert (raw / w["imgname"][i]).is_file()
        R_c, t_c = seq["cam_poses"][f, :3, :3], seq["cam_poses"][f, :3, 3]
        R_w = _rod(seq["poses"][0][f, :3])
        assert np.abs(R_w - _rod(w["pose"][i, :3])).max() > 0.05     # a real change of frame
        np.testing.assert_allclose(R_c @ R_w, _rod(w["pose"][i, :3]), atol=1e-9)
        np.testing.assert_allclose(seq["poses"][0][f, 3:], w["pose"][i, 3:])
        # poses2d: COCO-18 by joint name from the world's BODY_25 openpose
        for c, name in enumerate(COCO18):
            np.testing.assert_array_equal(seq["poses2d"][0][f][:, c],
                                          w["openpose"][i, BODY25.index(name)])
        # the gendered SMPL with trans, moved by cam_poses, is at the world's S
        m = models["male" if w["gender"][i] == "m" else "female"]
        t = lambda x: torch.as_tensor(np.asarray(x, np.float64)[None])  # noqa: E731
        j = m(betas=t(seq["betas"][0][:10]), body_pose=t(seq["poses"][0][f, 3:]),
              global_orient=t(seq["poses"][0][f, :3]), transl=t(seq["trans"][0][f]))
        cam = j.joints[0, 25:].numpy() @ R_c.T + t_c
        np.testing.assert_allclose(cam, w["S"][i, :, :3], atol=1e-6)


def test_round_trip_gives_the_world_npz(prepared, synthetic_root):
    out, summary = prepared
    for split in ("test", "train"):
        w = _world(synthetic_root, split)
        p = _npz(out / "data" / "datasets" / DATASET_FILES[split]["3dpw"])
        assert set(p) == {"imgname", "pose", "shape", "gender", "part", "S", "openpose",
                          "center", "scale", "focal_length"}
        order = {n: i for i, n in enumerate(p["imgname"].astype(str))}
        assert sorted(order) == sorted(w["imgname"].astype(str))
        idx = [order[n] for n in w["imgname"].astype(str)]
        p = {k: v[idx] for k, v in p.items()}
        np.testing.assert_array_equal(p["gender"], w["gender"])
        np.testing.assert_array_equal(p["shape"], w["shape"])
        np.testing.assert_array_equal(p["focal_length"], w["focal_length"])
        np.testing.assert_allclose(p["pose"][:, 3:], w["pose"][:, 3:], atol=1e-12)
        for a, b in zip(p["pose"], w["pose"]):
            np.testing.assert_allclose(_rod(a[:3]), _rod(b[:3]), atol=1e-9)
        np.testing.assert_allclose(p["S"], w["S"], atol=1e-6)
        np.testing.assert_array_equal(p["part"][..., 2], w["part"][..., 2])
        vis = w["part"][..., 2] > 0
        np.testing.assert_allclose(p["part"][vis][:, :2], w["part"][vis][:, :2], atol=1e-4)
        for b, name in enumerate(BODY25):       # BODY_25 from COCO-18; zeros where it has none
            want = w["openpose"][:, b] if name in COCO18 else np.zeros_like(w["openpose"][:, b])
            np.testing.assert_array_equal(p["openpose"][:, b], want)
        for i in range(len(idx)):               # SPIN's box of the COCO-18 joints, by hand
            kp = [w["openpose"][i, BODY25.index(n)] for n in COCO18]
            xy = np.array([k[:2] for k in kp if k[2] > 0])
            lo, hi = xy.min(0), xy.max(0)
            np.testing.assert_allclose(p["center"][i], (lo + hi) / 2)
            np.testing.assert_allclose(p["scale"][i], 1.2 * max(hi - lo) / 200)
        frames = [int(n[-9:-4]) for n in w["imgname"].astype(str)]
        s = summary[split]
        assert (s.files, len(s.sequences), s.actors, s.kept) == (1, 1, 1, len(frames))
        assert s.skipped[SKIP_INVALID] == max(frames) + 1 - len(frames)
        assert s.skipped[SKIP_NO_2D] == s.skipped[SKIP_NO_GT] == 0


def test_cli_default_has_no_focal_length(raw, synthetic_root, tmp_path):
    r = forkrun.run(["-m", "datasets.prepare", "3dpw", "--raw", raw, "--out", tmp_path,
                     "--data_root", synthetic_root, "--sets", "test"], cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "4 frames kept" in r.stdout and "campose_valid false: 6" in r.stdout
    p = _npz(tmp_path / "data" / "datasets" / DATASET_FILES["test"]["3dpw"])
    assert "focal_length" not in p and len(p["imgname"]) == 4
    assert not (tmp_path / "data" / "datasets" / DATASET_FILES["train"]["3dpw"]).exists()


def test_evaluation_on_prepared_npz_matches_world(prepared, raw, synthetic_root, tmp_path):
    from models import build_model
    from train import evaluation as ev
    from utils.options import parse_eval
    out, _ = prepared
    root = tmp_path / "root"                  # the world's data/ with the prepared npz
    (root / "data" / "datasets").mkdir(parents=True)
    for name in ("smpl", "J_regressor_extra.npy", "J_regressor_h36m.npy",
                 "smpl_mean_params.npz"):
        os.symlink(Path(synthetic_root) / "data" / name, root / "data" / name)
    name = DATASET_FILES["test"]["3dpw"]
    os.symlink(out / "data" / "datasets" / name, root / "data" / "datasets" / name)
    o = parse_eval("cliff", ["--data_root", str(synthetic_root), "--dataset", "3dpw",
                             "--bbox_type", "rect", "--backbone", "resnet18", "--batch_size",
                             "4", "--test_val_step", "1", "--inner_lr", "1e-5",
                             "--after_innerlr", "1e-5", "--device", "cpu", "--num_workers",
                             "0", "--log_freq", "0", "--crop_scale", "0.25"])
    mean = DataPaths(synthetic_root).smpl_mean_params()
    torch.manual_seed(0)
    nets = [build_model(model="cliff", backbone="resnet18", role=r, bbox_type="rect",
                        mean_params=mean).eval() for r in ("main", "aux")]
    nets[1].requires_grad_(False)
    res = [ev.evaluate(*nets, o, "3dpw", paths=p, log=lambda s: None)
           for p in (DataPaths(synthetic_root), DataPaths(root, img_root=raw.parent))]
    assert res[0]["n"] == res[1]["n"] == 4
    for k in ("MPJPE", "PA-MPJPE", "PVE", "MPJPE_before", "PA-MPJPE_before", "PVE_before"):
        assert np.isfinite(res[0][k])
        np.testing.assert_allclose(res[1][k], res[0][k], atol=1e-3, err_msg=k)  # mm


# ---------------------------------------------------------------------------------------------
# bad inputs: each names the file, nothing is written
def _copy(raw: Path, tmp: Path) -> Path:
    dst = tmp / "pw3d"
    shutil.copytree(raw, dst)
    return dst


def _edit(path: Path, fn) -> None:
    d = pickle.load(open(path, "rb"), encoding="latin1")
    d = fn(d)
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=2)


def _nan_at_valid(d):
    d["trans"][0][np.flatnonzero(d["campose_valid"][0])[1]] = np.nan
    return d


def _set(key, value):
    def fn(d):
        d[key] = value(d) if callable(value) else value
        return d
    return fn


BAD = {
    "missing_key": (lambda d: {k: v for k, v in d.items() if k != "cam_poses"},
                    "missing key(s) ['cam_poses']"),
    "pose_shape": (_set("poses", lambda d: [d["poses"][0][:, :71]]), "'poses'[0] has shape"),
    "trans_frames": (_set("trans", lambda d: [d["trans"][0][:-1]]), "'trans'[0] has shape"),
    "poses2d_shape": (_set("poses2d", lambda d: [d["poses2d"][0][:, :2]]),
                      "'poses2d'[0] has shape"),
    "intrinsics": (_set("cam_intrinsics", np.eye(3)[:2]), "'cam_intrinsics' has shape"),
    "cam_poses": (_set("cam_poses", lambda d: d["cam_poses"][:, :3]), "'cam_poses' has shape"),
    "actor_count": (_set("betas", []), "'betas' holds 0 entries"),
    "gender": (_set("genders", ["x"]), "'genders' holds 'x'"),
    "short_betas": (_set("betas", lambda d: [d["betas"][0][:8]]), "has 8 values"),
    "not_numeric": (_set("trans", ["abc"]), "'trans'[0] is not numeric"),
    "nan_valid": (_nan_at_valid, "NaN/inf in valid frame 3"),
    "no_valid_frame": (_set("campose_valid", lambda d: [np.zeros_like(d["campose_valid"][0])]),
                       "has no valid frame"),
    "not_a_dict": (lambda d: [d], "expected a pickled dict"),
    "bad_sequence_name": (_set("sequence", "../x"), "'sequence' is"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sequence_file_names_the_file(raw, tmp_path, case):
    fn, msg = BAD[case]
    r = _copy(raw, tmp_path)
    bad = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    _edit(bad, fn)
    with pytest.raises(RawDataError) as e:
        prepare_3dpw(r, tmp_path / "out", data_root=tmp_path, log=None)
    assert str(bad) in str(e.value) and msg in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_nan_in_an_invalid_frame_is_not_read(raw, tmp_path, models):
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    _edit(f, lambda d: (d["poses"][0].__setitem__(1, np.nan), d)[1])   # frame 1: invalid
    s = prepare_3dpw(r, tmp_path / "out", sets=("test",), models=models, log=None)
    assert s["test"].kept == 4


def test_an_actor_without_valid_frames_is_counted_not_fatal(raw, tmp_path, models):
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    _edit(f, lambda d: {**d, **{k: list(d[k]) * 2 for k in ("genders", "betas", "poses", "trans",
                                                           "poses2d")},
                        "campose_valid": [d["campose_valid"][0],
                                          np.zeros_like(d["campose_valid"][0])]})
    s = prepare_3dpw(r, tmp_path / "out", sets=("test",), models=models, log=None)["test"]
    assert s.actors == 2 and s.kept == 4 and s.skipped[SKIP_INVALID] == 6 + 10


def test_missing_image_and_layout_errors(raw, tmp_path):
    r = _copy(raw, tmp_path)
    img = r / "imageFiles" / SEQ_TEST / "image_00006.jpg"
    img.unlink()
    with pytest.raises(RawDataError, match="image missing") as e:
        prepare_3dpw(r, tmp_path / "out", log=None)
    assert str(img) in str(e.value)
    img.write_bytes(b"not a jpeg")
    with pytest.raises(RawDataError, match="unreadable image"):
        prepare_3dpw(r, tmp_path / "out", log=None)
    for f in (r / "sequenceFiles" / "test").glob("*.pkl"):
        f.unlink()
    with pytest.raises(RawDataError, match="no sequence file"):
        prepare_3dpw(r, tmp_path / "out", log=None)
    shutil.rmtree(r / "sequenceFiles" / "test")
    with pytest.raises(RawDataError, match="no such folder"):
        prepare_3dpw(r, tmp_path / "out", log=None)
    with pytest.raises(RawDataError, match="no such folder"):
        prepare_3dpw(tmp_path / "nowhere", tmp_path / "out", log=None)
    with pytest.raises(RawDataError, match="unknown 3DPW split"):
        prepare_3dpw(raw, tmp_path / "out", sets=("train",), train_splits=("val",), log=None)
    assert not (tmp_path / "out").exists()


def test_truncated_file(raw, tmp_path):
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(RawDataError, match="cannot read the pickle") as e:
        prepare_3dpw(r, tmp_path / "out", log=None)
    assert str(f) in str(e.value)


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_never_runs(raw, tmp_path):
    marker = tmp_path / "ran"
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    _edit(f, _set("sequence", _Planted(marker)))
    with pytest.raises(RawDataError, match="refused to load this 3DPW sequence file") as e:
        prepare_3dpw(r, tmp_path / "out", log=None)
    assert str(f) in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    f.write_bytes(pickle.dumps(_Planted(marker), protocol=0))
    with pytest.raises(RawDataError, match="refused to load"):
        load_pickle(f)
    assert not marker.exists()


def test_python2_strings_and_numpy_arrays_load():
    # protocol 2 as Python 2 writes it: SHORT_BINSTRING (byte strings) read as latin1 text
    p2 = b"\x80\x02}q\x00(U\x08sequenceq\x01U\x04caf\xe9q\x02U\x01nK\x07u."
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"py2_{os.getpid()}.pkl"
    try:
        path.write_bytes(p2)
        assert load_pickle(path) == {"sequence": "caf\u00e9", "n": 7}
        arrays = {"f": np.arange(6.0).reshape(2, 3), "i": np.arange(3, dtype=np.int64),
                  "b": np.array([True, False]), "s": np.array(["m", "f"]),
                  "x": np.float32(2.5), "l": [np.eye(2)], "t": ("a", 1)}
        path.write_bytes(pickle.dumps(arrays, protocol=2))
        got = load_pickle(path)
        assert got["t"] == ("a", 1) and got["s"].dtype == arrays["s"].dtype
        for k in ("f", "i", "b", "s", "x", "l"):
            np.testing.assert_array_equal(got[k], arrays[k])
            assert np.asarray(got[k]).dtype == np.asarray(arrays[k]).dtype
    finally:
        path.unlink(missing_ok=True)


def test_skipped_frames_are_counted_by_reason(raw, tmp_path, models):
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"

    def edit(d):
        v = np.flatnonzero(d["campose_valid"][0])          # frames 0, 3, 6, 9
        d["poses2d"][0][v[0], 2] = 0.0                     # no 2D joint: no box
        for fr in v[:2]:                                   # 50 m to the camera's right: no GT
            R = d["cam_poses"][fr, :3, :3]                 # joint in the image (frame 0 is
            d["trans"][0][fr] += R.T @ np.array([50.0, 0, 0])  # counted once, as no 2D)
        return d
    _edit(f, edit)
    s = prepare_3dpw(r, tmp_path / "out", sets=("test",), models=models, log=None)["test"]
    assert s.kept == 2 and s.skipped[SKIP_NO_2D] == 1 and s.skipped[SKIP_NO_GT] == 1
    assert s.skipped[SKIP_INVALID] == 6
    p = _npz(s.npz)
    assert sorted(int(n[-9:-4]) for n in p["imgname"].astype(str)) == [6, 9]
    assert "1 skipped" not in s.line() and "8 skipped" in s.line()
    _edit(f, lambda d: (d["poses2d"][0].__setitem__((slice(None), 2), 0.0), d)[1])
    with pytest.raises(RawDataError, match="no frame of 3DPW test kept"):
        prepare_3dpw(r, tmp_path / "out2", sets=("train", "test"), models=models, log=None)
    assert not (tmp_path / "out2").exists()        # the train file is not written either


def test_two_actors_of_both_genders(raw, synthetic_root, tmp_path, models):
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    other = {"m": "f", "f": "m"}

    def edit(d):      # actor 1: actor 0's motion 0.5 m further away, the other gender
        for k in ("betas", "poses", "trans", "poses2d", "campose_valid"):
            d[k] = [d[k][0], np.array(d[k][0], copy=True)]
        d["genders"] = [d["genders"][0], other[d["genders"][0]]]
        d["trans"][1] += np.array([0.0, 0.0, 0.5])
        d["betas"][1][:10] += 0.5                          # and another body shape
        return d
    _edit(f, edit)
    d = pickle.load(open(f, "rb"), encoding="latin1")
    s = prepare_3dpw(r, tmp_path / "out", sets=("test",), models=models, log=None)["test"]
    assert (s.actors, s.kept, s.skipped[SKIP_INVALID]) == (2, 8, 12)
    p, w = _npz(s.npz), _world(synthetic_root)
    for a in (0, 1):
        rows = np.flatnonzero(p["gender"] == d["genders"][a])
        assert len(rows) == 4
        m = models["male" if d["genders"][a] == "m" else "female"]
        for row in rows:
            fr = int(str(p["imgname"][row])[-9:-4])
            t = lambda x: torch.as_tensor(np.asarray(x, np.float64)[None])  # noqa: E731
            j = m(betas=t(d["betas"][a][:10]), body_pose=t(d["poses"][a][fr, 3:]),
                  global_orient=t(d["poses"][a][fr, :3]), transl=t(d["trans"][a][fr]))
            R, T = d["cam_poses"][fr, :3, :3], d["cam_poses"][fr, :3, 3]
            cam = j.joints[0, 25:].numpy() @ R.T + T
            np.testing.assert_allclose(p["S"][row, :, :3], cam, atol=1e-9)
            if a == 0:
                i = list(w["imgname"].astype(str)).index(str(p["imgname"][row]))
                np.testing.assert_allclose(p["S"][row], w["S"][i], atol=1e-6)


def test_cli_errors_are_one_line(raw, tmp_path, capsys):
    from datasets.prepare import main
    from utils.cli import run
    (tmp_path / "o").mkdir()
    with pytest.raises(SystemExit) as e:       # no body models under the data root
        run(main, ["3dpw", "--raw", str(raw), "--out", str(tmp_path / "o"), "--data_root",
                   str(tmp_path / "o"), "--sets", "test"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and "\n" not in err
    assert "SMPL male body model" in err and "--data_root" in err
    r = _copy(raw, tmp_path)
    f = r / "sequenceFiles" / "test" / f"{SEQ_TEST}.pkl"
    _edit(f, BAD["missing_key"][0])
    with pytest.raises(SystemExit) as e:
        run(main, ["3dpw", "--raw", str(r), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith(f"error: {f}: missing key") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        run(main, ["3dpw", "--raw", str(r), "--train_splits", "val"])
    assert e.value.code == 2 and "--train_splits val" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:   # the test split is the evaluation's: never trained on
        run(main, ["3dpw", "--raw", str(r), "--train_splits", "train,test"])
    assert e.value.code == 2 and "--train_splits test: the evaluation's split" in \
        capsys.readouterr().err


def test_part_visibility_and_focal_on_a_hand_made_frame():
    """_convert on one hand-made frame: joints exactly on the last pixel column / row are
    visible, half a pixel beyond (or before 0) not, a joint behind the camera is all zeros (even
    though x/z would land inside the image); focal_length is fx, not fy."""
    from datasets.pw3d_raw import Sequence
    from datasets.prepare_3dpw import SetSummary, _convert
    W, H = 64, 48
    K = np.array([[64.0, 0, 31], [0, 48.0, 23], [0, 0, 1]])
    S = np.zeros((1, 24, 3))
    S[0, :, 2] = 1.0                                   # (0, 0, 1) -> pixel (31, 23)
    S[0, 1] = [0.5, 0, 1]                              # u = 63 = W - 1: visible
    S[0, 2] = [0.5078125, 0, 1]                        # u = 63.5: outside
    S[0, 3] = [0, 0.5, 1]                              # v = 47 = H - 1: visible
    S[0, 4] = [0, 0.5 + 0.5 / 48, 1]                   # v = 47.5: outside
    S[0, 5] = [-31 / 64, 0, 1]                         # u = 0: visible
    S[0, 6] = [-31.5 / 64, 0, 1]                       # u = -0.5: outside
    S[0, 7] = [0, 0, -2]                               # behind the camera
    p2d = np.zeros((1, 1, 3, 18))
    p2d[0, 0, :, :2] = [[10, 20], [30, 40], [1, 1]]
    seq = Sequence(file=Path("x.pkl"), name="seq", genders=["f"], betas=np.zeros((1, 10)),
                   poses=np.zeros((1, 1, 72)), trans=np.zeros((1, 1, 3)), poses2d=p2d,
                   cam_poses=np.eye(4)[None], K=K, valid=np.ones((1, 1), bool))
    out = _convert(seq, {0: (W, H)}, [S], True, SetSummary("test", ("test",)))[0]
    want_vis = np.ones(24)
    want_vis[[2, 4, 6, 7]] = 0
    np.testing.assert_array_equal(out["part"][0, :, 2], want_vis)
    uv = S[0, :7, :2] / S[0, :7, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
    np.testing.assert_allclose(out["part"][0, :7, :2], uv, atol=1e-12)
    np.testing.assert_array_equal(out["part"][0, 7], [0, 0, 0])
    assert out["focal_length"].tolist() == [64.0]


def _py2(x, memo: dict) -> bytes:
    """Protocol-2 opcodes of ``x`` as Python 2.7 + numpy 1.x write them: bytes -> str
    (SHORT_BINSTRING / BINSTRING), arrays -> numpy.core.multiarray._reconstruct + raw-byte str."""
    import struct

    def glob(mod, name):
        if (mod, name) in memo:
            return b"h" + bytes([memo[mod, name]])
        memo[mod, name] = len(memo)
        return f"c{mod}\n{name}\n".encode() + b"q" + bytes([memo[mod, name]])
    if x is None or isinstance(x, bool):
        return {None: b"N", True: b"\x88", False: b"\x89"}[x]
    if isinstance(x, int):
        return b"K" + bytes([x]) if 0 <= x < 256 else b"J" + struct.pack("<i", x)
    if isinstance(x, bytes):
        return (b"U" + bytes([len(x)]) if len(x) < 256 else b"T" + struct.pack("<I", len(x))) + x
    if isinstance(x, tuple):
        return b"(" + b"".join(_py2(e, memo) for e in x) + b"t"
    if isinstance(x, list):
        return b"](" + b"".join(_py2(e, memo) for e in x) + b"e"
    if isinstance(x, dict):
        return b"}(" + b"".join(_py2(k, memo) + _py2(v, memo) for k, v in x.items()) + b"u"
    a = np.ascontiguousarray(x)
    dtype = (glob("numpy", "dtype") + _py2((a.dtype.str[1:].encode(), 0, 1), memo) + b"R"
             + _py2((3, b"|" if a.itemsize == 1 else b"<", None, None, None, -1, -1, 0), memo)
             + b"b")
    return (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray")
            + _py2((0,), memo) + _py2(b"b", memo) + b"\x87R(" + _py2(1, memo)
            + _py2(a.shape, memo) + dtype + b"\x89" + _py2(a.tobytes(), memo) + b"tb")


def test_python2_numpy1_sequence_files_give_the_same_npz(raw, prepared, synthetic_root, models,
                                                         tmp_path):
    # the official files: Python 2.7 + numpy 1.x pickles (numpy.core names, arrays' bytes as
    # Python-2 str, str keys, bool campose_valid, keys the tool does not read)
    r = _copy(raw, tmp_path)
    for f in sorted((r / "sequenceFiles").rglob("*.pkl")):
        d = pickle.loads(f.read_bytes())
        d["campose_valid"] = [v.astype(bool) for v in d["campose_valid"]]
        d["v_template_clothed"] = [np.zeros((4, 3)) for _ in d["genders"]]
        enc = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
        data = b"\x80\x02" + _py2({k.encode(): [enc(e) for e in v] if isinstance(v, list)
                                   else enc(v) for k, v in d.items()}, {}) + b"."
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in data and b"_codecs" not in data
        f.write_bytes(data)
    prepare_3dpw(r, tmp_path / "out", with_focal_length=True, models=models, log=None)
    for name in ("test", "train"):
        rel = Path("data") / "datasets" / DATASET_FILES[name]["3dpw"]
        assert (tmp_path / "out" / rel).read_bytes() == (prepared[0] / rel).read_bytes()
