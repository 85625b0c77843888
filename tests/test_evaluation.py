"""Evaluation with test-time optimisation (train/evaluation.py, eval_cliff.py, eval_hmr.py).

Independent facts used: a prediction equal to the GT has zero error; a rigid offset of every
point by c gives a mean error |c| and a zero Procrustes error; a similarity transform of the GT
(scipy rotation, scale, shift) has zero PA error; Procrustes can only lower the error; per-sample
adaptation of a sample cannot depend on the other samples of its batch, nor on their order; a
batch of one adapted as a batch is that sample adapted on its own; gradient steps on the 2D loss
lower the 2D loss; a mesh rendered over an image covers the projections of its interior joints.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import constants
from config import DataPaths
from train import evaluation as ev
from utils.options import parse_eval

from conftest import TEST_DEVICE  # noqa: E402
import forkrun  # noqa: E402  the project's commands, forked from a warm server

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# fixtures: random resnet18 networks saved as a train.py-style checkpoint
@pytest.fixture(scope="module")
def ckpts(synthetic_root, tmp_path_factory, device):   # device: skip where it is missing
    from models import build_model
    paths = DataPaths(Path(synthetic_root))
    out = {}
    for model in ("cliff", "hmr"):
        torch.manual_seed(0)
        main = build_model(model=model, backbone="resnet18", role="main", bbox_type="rect",
                           mean_params=paths.smpl_mean_params())
        aux = build_model(model=model, backbone="resnet18", role="aux", bbox_type="rect",
                          mean_params=paths.smpl_mean_params())
        path = tmp_path_factory.mktemp("ckpt") / f"{model}.pt"
        torch.save({"model": main.state_dict(), "model_aux": aux.state_dict()}, path)
        out[model] = path
    return out


def _opts(root, model="cliff", *extra):
    argv = ["--data_root", str(root), "--dataset", "3dpw", "--bbox_type", "rect",
            "--backbone", "resnet18", "--batch_size", "2", "--test_val_step", "1",
            "--inner_lr", "1e-5", "--after_innerlr", "1e-5", "--device", TEST_DEVICE,
            "--num_workers", "0", "--log_freq", "0", *map(str, extra)]
    return parse_eval(model, argv)


@pytest.fixture(scope="module")
def nets(synthetic_root, ckpts):
    o = _opts(synthetic_root)
    return ev.build_eval_networks(o, DataPaths.from_options(o), ckpts["cliff"])


def _run(root, nets, *extra, **kw):
    o = _opts(root, "cliff", *extra)
    return ev.evaluate(*nets, o, o.dataset, max_batches=o.max_batches, log=lambda s: None,
                       return_per_sample=True, **kw)


_CACHE: dict = {}


def _run_cached(root, nets, *extra):
    key = tuple(map(str, extra))
    if key not in _CACHE:
        _CACHE[key] = _run(root, nets, *extra)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# metrics
def test_errors_zero_offset_and_similarity():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(3, 14, 3)) * 0.3
    gv = rng.normal(size=(3, 50, 3))
    e = ev.errors_mm(gt, gt, gv, gv)
    for k in ("mpjpe", "pa_mpjpe", "pve"):
        np.testing.assert_allclose(e[k], 0.0, atol=1e-6)

    c = np.array([0.03, -0.04, 0.12])                       # |c| = 0.13 m
    e = ev.errors_mm(gt + c, gt, gv + c, gv)
    np.testing.assert_allclose(e["mpjpe"], 130.0, rtol=1e-9)
    np.testing.assert_allclose(e["pve"], 130.0, rtol=1e-9)
    np.testing.assert_allclose(e["pa_mpjpe"], 0.0, atol=1e-6)

    R = Rotation.from_rotvec([0.3, -1.2, 0.5]).as_matrix()
    sim = 1.7 * gt @ R.T + np.array([1.0, 2.0, -3.0])
    e = ev.errors_mm(torch.as_tensor(sim), torch.as_tensor(gt))
    assert (e["mpjpe"] > 100).all()
    np.testing.assert_allclose(e["pa_mpjpe"], 0.0, atol=1e-6)
    assert np.isnan(e["pve"]).all()

    noisy = gt + rng.normal(size=gt.shape) * 0.02
    e = ev.errors_mm(noisy, gt)
    assert (e["pa_mpjpe"] <= e["mpjpe"] + 1e-9).all() and (e["pa_mpjpe"] > 0).all()


def _procrustes_error(pred, gt):
    """Mean joint error of ``pred`` [J,3] after the similarity (s, R proper, t) that best maps it
    onto ``gt`` (Umeyama, with numpy's SVD), and its residual sum of squares."""
    x, y = pred - pred.mean(0), gt - gt.mean(0)
    u, d, vt = np.linalg.svd(y.T @ x)
    z = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ z @ vt
    s = np.trace(np.diag(d) @ z) / np.sum(x ** 2)
    res = s * x @ r.T - y
    return np.linalg.norm(res, axis=1).mean(), np.sum(res ** 2)


def test_pa_mpjpe_aligns_the_prediction_onto_the_gt():
    """pred = 2 gt + noise is no similarity of gt: PA-MPJPE is the error after aligning the
    prediction onto the GT (in the GT's metres -> mm), not the GT onto the prediction."""
    from scipy.spatial import procrustes
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(3, 14, 3)) * 0.3
    pred = 2.0 * gt + rng.normal(size=gt.shape) * 0.05
    e = ev.errors_mm(torch.as_tensor(pred), torch.as_tensor(gt))
    for b in range(3):
        err, ss = _procrustes_error(pred[b], gt[b])
        # the helper's fit is scipy's optimum: disparity = SS / |gt - mean|^2
        _, _, disparity = procrustes(gt[b], pred[b])
        assert ss == pytest.approx(disparity * np.sum((gt[b] - gt[b].mean(0)) ** 2), rel=1e-9)
        assert e["pa_mpjpe"][b] == pytest.approx(1000.0 * err, rel=1e-9)


def test_pve_of_a_shifted_mesh_is_the_shift(synthetic_root):
    """D7: PVE is unaligned. A predicted mesh = the GT mesh + c scores PVE = 1000 |c| mm, while
    its (pelvis-centred) joints score 0."""
    t = ev.EvalTargets(DataPaths(Path(synthetic_root)), "3dpw")
    rng = np.random.default_rng(4)
    B = 2
    batch = {"pose": torch.as_tensor(rng.normal(size=(B, 72)) * 0.2, dtype=torch.float32),
             "betas": torch.as_tensor(rng.normal(size=(B, 10)), dtype=torch.float32),
             "gender": torch.tensor([0, 1])}
    gt = t.targets(batch)
    c = torch.tensor([0.03, -0.04, 0.12])                     # |c| = 0.13 m
    err, _ = t.score(gt["vertices"] + c, gt)
    np.testing.assert_allclose(err["pve"], 130.0, rtol=1e-5)
    np.testing.assert_allclose(err["mpjpe"], 0.0, atol=1e-3)


def test_joint_protocols(synthetic_root):
    paths = DataPaths(Path(synthetic_root))
    rng = np.random.default_rng(1)
    B = 3
    pose = torch.as_tensor(rng.normal(size=(B, 72)) * 0.2, dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(B, 10)), dtype=torch.float32)
    s = torch.as_tensor(rng.normal(size=(B, 24, 4)), dtype=torch.float32)
    batch = {"pose": pose, "betas": betas, "gender": torch.tensor([0, 1, -1]), "pose_3d": s}

    t = ev.EvalTargets(paths, "3dpw")
    from models.smpl import build_smpl
    from utils.geometry import batch_rodrigues
    rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(B, 24, 3, 3)
    ref = {g: build_smpl(paths, g)(betas=betas, body_pose=rot[:, 1:], global_orient=rot[:, :1],
                                   pose2rot=False).vertices for g in ("male", "female")}
    gt = t.targets(batch)
    torch.testing.assert_close(gt["vertices"][0], ref["male"][0])
    torch.testing.assert_close(gt["vertices"][1], ref["female"][1])
    torch.testing.assert_close(gt["vertices"][2], ref["male"][2])
    jr = torch.as_tensor(np.load(paths.j_regressor_h36m()), dtype=torch.float32)
    j17 = torch.einsum("jv,bvc->bjc", jr, gt["vertices"])
    expect = j17[:, constants.H36M_TO_J14] - j17[:, :1]
    torch.testing.assert_close(gt["joints"], expect)
    assert gt["joints"].shape == (B, 14, 3)
    # scoring the GT mesh against itself
    err, pj17 = t.score(gt["vertices"], gt)
    assert pj17.shape == (B, 17, 3)
    np.testing.assert_allclose(err["mpjpe"], 0, atol=1e-4)
    np.testing.assert_allclose(err["pve"], 0, atol=1e-4)

    mocap = ev.EvalTargets(paths, "h36m-p2", h36m_gt="mocap").targets(batch)["joints"]
    sel = s[:, constants.J24_TO_J14, :3]     # SPIN: as stored, centred on GT-24 14 'Pelvis'
    torch.testing.assert_close(mocap, sel - s[:, 14:15, :3])
    mosh = ev.EvalTargets(paths, "h36m-p2").targets(batch)["joints"]
    torch.testing.assert_close(mosh, expect)             # released default: the MoSh mesh

    mpi = ev.EvalTargets(paths, "mpi-inf-3dhp")
    g = mpi.targets(batch)
    assert g["vertices"] is None
    s17 = s[:, constants.J24_TO_J17, :3]
    torch.testing.assert_close(g["joints"], s17 - s[:, 14:15, :3])   # GT-24 14: pelvis
    assert constants.H36M_TO_J17[14] == constants.H36M_PELVIS
    err, _ = mpi.score(ref["male"], g)
    assert np.isnan(err["pve"]).all() and np.isfinite(err["mpjpe"]).all()


# ---------------------------------------------------------------------------------------------
# the evaluation loop
def test_evaluate_sample_mode_and_result_file(synthetic_root, nets, tmp_path):
    class Writer:
        def __init__(self):
            self.tags = {}

        def add_scalar(self, tag, value, step=None):
            self.tags[tag] = value

    w = Writer()
    rf = tmp_path / "res.npz"
    logs = []
    o = _opts(synthetic_root, "cliff", "--batch_size", 1, "--max_batches", 2,
              "--result_file", rf, "--log_freq", 1)
    r = ev.evaluate(*nets, o, "3dpw", writer=w, max_batches=2, log=logs.append,
                    return_per_sample=True)
    n = r["n"]
    assert n == 2 and len(logs) == 2 and "MPJPE" in logs[0]
    ps = r["per_sample"]
    assert (ps["pa_mpjpe"] <= ps["mpjpe"] + 1e-6).all()
    assert (ps["pa_mpjpe_before"] <= ps["mpjpe_before"] + 1e-6).all()
    assert r["PA-MPJPE"] <= r["MPJPE"] and np.isfinite(r["PVE"])
    assert r["n_nonfinite"] == 0 and r["mean_tto_steps"] == 2
    # TTO lowers the 2D keypoint loss it optimises
    assert r["loss_2d_after"] < r["loss_2d_before"]
    assert w.tags["3dpw/MPJPE"] == r["MPJPE"] and "3dpw/PVE_before" in w.tags

    with np.load(rf) as z:
        keys = set(z.files)
        data = {k: z[k] for k in z.files}
    want = {"imgname", "mpjpe", "pa_mpjpe", "pve", "pred_joints", "pose", "betas", "camera",
            "translation", "tto_steps", "nonfinite"}
    assert want <= keys
    for k in keys:
        assert len(data[k]) == n, k
    assert data["pred_joints"].shape == (n, 17, 3) and data["pose"].shape == (n, 72)
    assert data["betas"].shape == (n, 10) and data["camera"].shape == (n, 3)
    assert data["translation"].shape == (n, 3) and (data["translation"][:, 2] > 0).all()
    for k in ("pred_joints", "pose", "betas", "camera"):
        assert np.abs(data[k]).sum() > 0, f"{k} left empty"
    np.testing.assert_allclose(data["mpjpe"], ps["mpjpe"])
    # the axis-angle pose reproduces the predicted mesh's joints
    from models.smpl import build_smpl
    smpl = build_smpl(DataPaths(Path(synthetic_root)), "neutral")
    pose = torch.as_tensor(data["pose"])
    v = smpl(betas=torch.as_tensor(data["betas"]), body_pose=pose[:, 3:],
             global_orient=pose[:, :3]).vertices
    jr = torch.as_tensor(np.load(DataPaths(Path(synthetic_root)).j_regressor_h36m()),
                         dtype=torch.float32)
    np.testing.assert_allclose(torch.einsum("jv,bvc->bjc", jr, v).numpy(),
                               data["pred_joints"], atol=1e-4)


def test_batch_of_one_batch_mode_equals_sample_mode(synthetic_root, nets):
    a = _run_cached(synthetic_root, nets, "--batch_size", 1, "--max_batches", 3)
    b = _run(synthetic_root, nets, "--batch_size", 1, "--max_batches", 2, "--tto_mode", "batch")
    pa, pb = a["per_sample"], b["per_sample"]
    for k in ("pred_joints", "pose", "betas", "camera", "mpjpe"):
        np.testing.assert_allclose(pa[k][:2], pb[k], atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(pa["tto_steps"][:2], pb["tto_steps"])


def test_sample_mode_independent_of_batch_size_and_order(synthetic_root, nets):
    one = _run_cached(synthetic_root, nets, "--batch_size", 1, "--max_batches", 3)["per_sample"]
    # vectorised per-sample TTO (torch.func.vmap over the 3 samples of the batch)
    three = _run(synthetic_root, nets, "--batch_size", 3, "--max_batches", 1,
                 "--tto_chunk", 3)["per_sample"]
    np.testing.assert_array_equal(one["sample_index"], three["sample_index"])
    for k in ("mpjpe", "pa_mpjpe", "pve"):
        # mm; float32 rounding after the TTO steps differs between a loop and vmap
        np.testing.assert_allclose(one[k], three[k], atol=1e-3, rtol=0, err_msg=k)
    np.testing.assert_allclose(one["pred_joints"], three["pred_joints"], atol=2e-5)  # m
    # a batch mixing other samples, in another order (tto_chunk 0: a loop on the CPU)
    shuf = _run(synthetic_root, nets, "--batch_size", 3, "--max_batches", 1, "--shuffle",
                "--seed", 5)["per_sample"]
    idx = {int(i): j for j, i in enumerate(one["sample_index"])}
    common = [(j, idx[int(i)]) for j, i in enumerate(shuf["sample_index"]) if int(i) in idx]
    assert len(common) >= 2        # 3 of the world's 4 samples: at least 2 also in `one`
    assert shuf["sample_index"].tolist() != [0, 1, 2]          # the order did change
    for j, k in common:   # mm; convolutions at batch 3 vs 1 round differently, then TTO
        np.testing.assert_allclose(shuf["mpjpe"][j], one["mpjpe"][k], atol=1e-3)


def test_use_openpose2d_adapts_to_the_openpose_keypoints(synthetic_root, nets):
    """--use_openpose2d end to end: the same start, TTO on another 2D target (the npz
    OpenPose keypoints): its 2D loss falls, and the adapted prediction differs from GT-keypoint
    TTO's."""
    gt = _run_cached(synthetic_root, nets, "--batch_size", 1, "--max_batches", 3)
    op = _run(synthetic_root, nets, "--batch_size", 1, "--max_batches", 3, "--use_openpose2d")
    g, p = gt["per_sample"], op["per_sample"]
    np.testing.assert_array_equal(g["sample_index"], p["sample_index"])
    np.testing.assert_allclose(p["mpjpe_before"], g["mpjpe_before"], rtol=1e-6)
    assert op["loss_2d_before"] != pytest.approx(gt["loss_2d_before"], rel=1e-3)
    assert op["loss_2d_after"] < op["loss_2d_before"]
    assert np.abs(p["pred_joints"] - g["pred_joints"]).max() > 1e-6
    assert op["n"] == 3 and op["mean_tto_steps"] == 2.0


@pytest.mark.parametrize("model,n", [("cliff", 2), ("hmr", 1)])
def test_viz_draws_the_mesh(synthetic_root, ckpts, tmp_path, model, n):
    vd = tmp_path / "viz"
    o = _opts(synthetic_root, model, "--viz", "--viz_dir", vd, "--viz_max", -1,
              "--test_val_step", 0, "--save_obj", "--batch_size", n)
    o.viz_backend = "software"
    net = ev.build_eval_networks(o, DataPaths.from_options(o), ckpts[model])
    r = ev.evaluate(*net, o, "3dpw", max_batches=1, return_per_sample=True)
    names = sorted(p.name[:-len("_input.jpg")] for p in vd.glob("*_input.jpg"))
    assert len(names) == r["n"] == n
    ps = r["per_sample"]
    import trimesh
    for name in names:
        for tag in ("before", "ours_gt", "compare"):
            assert (vd / f"{name}_{tag}.jpg").is_file()
        assert len(trimesh.load(vd / f"{name}.obj", process=False).vertices) == 6890
    # the overlay covers the projections of the body's interior joints (pelvis, spine, thorax)
    from models.smpl import build_smpl
    smpl = build_smpl(DataPaths(Path(synthetic_root)), "neutral")
    for j in range(r["n"]):
        img = Path(ps["imgname"][j])
        name = f"{img.parent.name}-{img.stem}"
        assert name in names
        inp = cv2.imread(str(vd / f"{name}_input.jpg")).astype(int)
        out = cv2.imread(str(vd / f"{name}_ours_gt.jpg")).astype(int)
        pose = torch.as_tensor(ps["pose"][j:j + 1])
        joints = smpl(betas=torch.as_tensor(ps["betas"][j:j + 1]), body_pose=pose[:, 3:],
                      global_orient=pose[:, :3]).joints[0].numpy()
        cam = joints[[25 + 14, 25 + 15, 25 + 16]] + ps["translation"][j]
        h, w = inp.shape[:2]
        if model == "cliff":
            from datasets import BaseDataset
            f = float(BaseDataset(o, "3dpw", False)[int(ps["sample_index"][j])]["focal_length"])
        else:
            f = constants.FOCAL_LENGTH
        uv = f * cam[:, :2] / cam[:, 2:] + np.array([w / 2, h / 2])
        inside = [(int(round(u)), int(round(v))) for u, v in uv
                  if 2 <= u < w - 2 and 2 <= v < h - 2]
        assert inside, "no joint projects into the image"
        for u, v in inside:
            assert np.abs(out[v, u] - inp[v, u]).sum() > 30, (name, u, v)
        changed = (np.abs(out - inp).max(-1) > 40).mean()
        assert 0 < changed < 0.8, changed                # the body, not the whole image


def test_eval_script_end_to_end(synthetic_root, ckpts, tmp_path):
    js, rf = tmp_path / "m.json", tmp_path / "r.npz"
    cmd = ["eval_cliff.py", "--dataset", "3dpw", "--bbox_type", "rect",
           "--backbone", "resnet18", "--batch_size", "2", "--inner_lr", "1e-5",
           "--after_innerlr", "1e-5", "--inner_step", "1", "--test_val_step", "1",
           "--adapt_val_step", "--checkpoint", str(ckpts["cliff"]), "--data_root",
           str(synthetic_root), "--max_batches", "1", "--num_workers", "0", "--device", TEST_DEVICE,
           "--json_out", str(js), "--result_file", str(rf)]
    p = forkrun.run(cmd, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MPJPE:" in p.stdout and "PA-MPJPE:" in p.stdout and "PVE:" in p.stdout
    data = json.loads(js.read_text())
    assert data["metrics"]["n"] == 2 and data["options"]["batch_size"] == 2
    assert data["metrics"]["PA-MPJPE"] <= data["metrics"]["MPJPE"]
    with np.load(rf) as z:
        assert len(z["mpjpe"]) == 2


def test_missing_checkpoint_is_a_clear_error(synthetic_root, tmp_path, device):
    o = _opts(synthetic_root)
    with pytest.raises(SystemExit, match="--checkpoint is required"):
        ev.main(o)
    o.checkpoint = str(tmp_path / "nope.pt")
    with pytest.raises(SystemExit, match="nope.pt"):
        ev.main(o)


def test_mpi_inf_3dhp_scores_both_sides_pelvis_centred(synthetic_root):
    """MPI-INF-3DHP (§7): the GT's 17 joints minus its pelvis against the prediction's 17
    regressed joints minus the H36M pelvis. A predicted mesh whose regressed joints are the GT
    joints up to a translation scores 0, wherever the mesh is; --h36m_gt mocap changes only
    h36m-p1/p2: 3DPW keeps the mesh GT."""
    paths = DataPaths(Path(synthetic_root))
    rng = np.random.default_rng(5)
    B = 2
    pose = torch.as_tensor(rng.normal(size=(B, 72)) * 0.2, dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(B, 10)), dtype=torch.float32)
    t3dpw = ev.EvalTargets(paths, "3dpw")
    verts = t3dpw.gt_vertices(pose, betas, torch.tensor([0, 0]))
    verts = verts + torch.tensor([0.4, -0.3, 5.0])           # a camera-frame mesh, far from 0
    jr = torch.as_tensor(np.load(paths.j_regressor_h36m()), dtype=torch.float32)
    j17 = torch.einsum("jv,bvc->bjc", jr, verts)[:, constants.H36M_TO_J17]
    s = torch.zeros(B, 24, 4)
    s[:, constants.J24_TO_J17, :3] = j17 + torch.tensor([[[1.0, 2.0, -0.5]], [[-3.0, 0.2, 0.1]]])
    s[..., 3] = 1
    batch = {"pose": pose, "betas": betas, "gender": torch.tensor([0, 0]), "pose_3d": s}
    mpi = ev.EvalTargets(paths, "mpi-inf-3dhp")
    err, _ = mpi.score(verts, mpi.targets(batch))
    np.testing.assert_allclose(err["mpjpe"], 0.0, atol=0.01)   # float32 at 5 m
    assert np.isnan(err["pve"]).all()
    err, _ = mpi.score(verts + torch.tensor([0.0, 0.0, 0.1]), mpi.targets(batch))
    np.testing.assert_allclose(err["mpjpe"], 0.0, atol=0.01)   # float32 at 5 m

    batch["pose_3d"] = torch.as_tensor(rng.normal(size=(B, 24, 4)), dtype=torch.float32)
    mesh_gt = t3dpw.targets(batch)["joints"]
    mocap_3dpw = ev.EvalTargets(paths, "3dpw", h36m_gt="mocap").targets(batch)["joints"]
    torch.testing.assert_close(mocap_3dpw, mesh_gt)


def test_summary_counts_nonfinite_and_keeps_before_apart():
    """The summary of per-sample results: n_nonfinite counts the flagged samples, each metric
    and its '_before' are the means of their own arrays, mean_tto_steps the mean of the steps."""
    t = ev._Tally("3dpw")
    for k in t.keep:
        t.keep[k] = [np.zeros(3)]
    t.keep["nonfinite"] = [np.array([True, False]), np.array([True])]
    t.keep["tto_steps"] = [np.array([1, 2, 6])]
    for i, (m, key) in enumerate(ev._KEY.items()):
        t.keep[key] = [np.array([1.0, 2.0, 6.0]) * (i + 1)]
        t.keep[key + "_before"] = [np.array([10.0, 20.0, 60.0]) * (i + 1)]
    out, _ = t.summary(3, 0)
    assert out["n"] == 3 and out["n_nonfinite"] == 2 and out["mean_tto_steps"] == 3.0
    for i, m in enumerate(ev.METRICS):
        assert out[m] == pytest.approx(3.0 * (i + 1))
        assert out[m + "_before"] == pytest.approx(30.0 * (i + 1))


def test_collect_keeps_the_adapted_camera_and_the_nonfinite_flags():
    """The result file's rows of one batch: 'camera' is the crop camera (s, tx, ty) after TTO
    (not before, not the translation), 'nonfinite' the per-sample flags, 'pose' the axis-angle
    of the rotation matrices (identity -> 0, 90 deg about z -> (0, 0, pi/2))."""
    from types import SimpleNamespace

    class Cam:   # the translation column has its own source, told apart from 'camera'
        def full_translation(self, cam, b):
            return cam * 0 + torch.tensor([7.0, 8.0, 9.0])

    rot = torch.eye(3).repeat(2, 24, 1, 1)
    rot[1, 0] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    after = {"rotmat": rot, "betas": torch.full((2, 10), 0.5),
             "cam": torch.tensor([[0.9, 0.1, -0.2], [1.1, -0.3, 0.4]])}
    before = {**after, "cam": torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])}
    res = SimpleNamespace(after=after, before=before, steps=torch.tensor([3, 0]),
                          nonfinite=torch.tensor([False, True]))
    keep = {k: [] for k in ev._Tally("3dpw").keep}
    ev._collect(keep, {"imgname": ["a.jpg", "b.jpg"], "sample_index": [4, 9]}, res,
                torch.zeros(2, 17, 3), Cam())
    got = {k: np.concatenate(v) for k, v in keep.items() if v}
    np.testing.assert_allclose(got["camera"], [[0.9, 0.1, -0.2], [1.1, -0.3, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(got["translation"], [[7.0, 8.0, 9.0]] * 2)
    np.testing.assert_array_equal(got["nonfinite"], [False, True])
    assert got["nonfinite"].dtype == bool
    np.testing.assert_array_equal(got["tto_steps"], [3, 0])
    np.testing.assert_array_equal(got["sample_index"], [4, 9])
    assert list(got["imgname"]) == ["a.jpg", "b.jpg"]
    want_pose = np.zeros((2, 72))
    want_pose[1, 2] = np.pi / 2
    np.testing.assert_allclose(got["pose"], want_pose, atol=1e-5)


def test_every_image_skipped_is_a_one_line_error(capsys):
    """--skip_bad_images with every image of the test set unreadable: nothing to score is the
    user's files, so one line `error: ...` naming an unreadable image and exit code 2 through
    the entry scripts' wrapper, not a traceback."""
    from utils.cli import run
    t = ev._Tally("3dpw")
    t.skipped = [{"sample_index": i, "imgname": f"/d/img_{i}.jpg", "reason": "corrupt"}
                 for i in range(2)]
    with pytest.raises(SystemExit) as e:
        run(lambda argv: t.summary(2, 0), [])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "/d/img_0.jpg" in err[0], err


def test_tto_adam_step_of_channels_last_weights_with_contiguous_grads():
    """--memory_format channels_last (the CPU default) with --tto_chunk > 1: vmap returns the
    per-sample gradients of a [G, C, K, H, W] weight contiguous, the weight itself channels-last.
    Adam's first step moves every entry by lr against the sign of its own gradient, whatever
    the layouts (fused Adam used to pair the two by memory position)."""
    from types import SimpleNamespace
    from train.tto import _Weights
    torch.manual_seed(0)
    w = torch.randn(2, 4, 3, 5, 5).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    weights = _Weights(SimpleNamespace(head_param_names=["head"]),
                       {"head": torch.zeros(3), "conv": w}, 2, vectorised=False)
    g = torch.randn(2, 4, 3, 5, 5)   # contiguous
    assert weights.rest["conv"].stride() != g.stride()
    weights.adam_step(({"head": torch.ones(3)}, {"conv": g}), 0.1, clean=True)
    torch.testing.assert_close(weights.leaves["conv"].detach(), w - 0.1 * torch.sign(g))
