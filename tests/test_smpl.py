"""The SMPL wrapper (models/smpl.py) and the synthetic body model (datasets/synthetic_body.py).

Independent facts used: the official pickle format (keys, shapes, kintree root marker
4294967295, scipy-sparse J_regressor, latin1 pickles; chumpy objects in the official files);
smplx's vertex keypoint table (smplx.vertex_ids) and SPIN's JOINT_MAP gather; trimesh's
watertightness and Euler characteristic (a closed genus-0 mesh has V - E + F = 2); LBS with
zero pose and shape is the template; a pure global rotation turns the mesh rigidly about the
root joint; scipy's Rotation for axis-angle <-> matrix; the H36M and LSP joint orders.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
import trimesh
from scipy.spatial.transform import Rotation
from smplx.vertex_ids import vertex_ids

import constants
from config import DataPaths, MissingFileError
from models.smpl import SMPL, SMPLFileError, build_smpl, load_regressor


def _pkl(root: Path, gender: str = "neutral") -> dict:
    with open(DataPaths(root).smpl_model(gender), "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _zero(b=1, dtype=torch.float32):
    return (torch.zeros(b, 10, dtype=dtype), torch.zeros(b, 69, dtype=dtype),
            torch.zeros(b, 3, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# the pickle format

@pytest.mark.parametrize("gender", ["neutral", "male", "female"])
def test_pickle_has_the_official_format(synthetic_root, gender):
    d = _pkl(synthetic_root, gender)
    assert {"v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs",
            "shapedirs", "J", "bs_style", "bs_type"} <= set(d)
    assert d["v_template"].shape == (6890, 3)
    assert d["f"].shape == (13776, 3) and d["f"].dtype == np.uint32
    assert scipy.sparse.issparse(d["J_regressor"]) and d["J_regressor"].format == "csc"
    assert d["J_regressor"].shape == (24, 6890)
    assert d["kintree_table"].shape == (2, 24) and int(d["kintree_table"][0, 0]) == 4294967295
    assert list(d["kintree_table"][0, 1:]) == constants.SMPL_PARENTS[1:]
    assert list(d["kintree_table"][1]) == list(range(24))
    assert d["weights"].shape == (6890, 24) and d["weights"].min() >= 0
    np.testing.assert_allclose(d["weights"].sum(1), 1.0, atol=1e-9)
    assert d["posedirs"].shape == (6890, 3, 207) and d["shapedirs"].shape == (6890, 3, 10)
    assert (d["bs_style"], d["bs_type"]) == ("lbs", "lrotmin")
    jr = d["J_regressor"].toarray()
    assert jr.min() >= 0 and np.allclose(jr.sum(1), 1.0)
    np.testing.assert_allclose(d["J"], jr @ d["v_template"], atol=1e-9)


def test_mesh_is_a_closed_genus0_humanoid(synthetic_root):
    d = _pkl(synthetic_root)
    mesh = trimesh.Trimesh(d["v_template"], d["f"].astype(np.int64), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2                     # V - E + F = 2: genus 0
    assert mesh.volume > 0                            # outward normals
    J, v = d["J"], d["v_template"]
    height = np.ptp(v[:, 1])
    assert 1.55 < height < 1.85, height               # about SMPL's size, y up
    # SMPL's conventions: y up, the subject's left on +x, facing +z
    assert J[15, 1] > J[12, 1] > J[9, 1] > J[0, 1] > J[4, 1] > J[7, 1]
    for left, right in [(1, 2), (4, 5), (7, 8), (13, 14), (16, 17), (18, 19), (20, 21)]:
        assert J[left, 0] > 0 > J[right, 0]
        np.testing.assert_allclose(J[left] * [-1, 1, 1], J[right], atol=1e-9)  # symmetric
    assert 1.4 < np.ptp(J[:, 0]) < 1.8                # T-pose arm span (hands)
    # smplx's vertex keypoints sit where their names say
    ids = vertex_ids["smplh"]
    nose, reye, leye = v[ids["nose"]], v[ids["reye"]], v[ids["leye"]]
    assert nose[2] > J[15, 2] + 0.05 and nose[1] > J[15, 1]        # front of the head
    assert reye[0] < 0 < leye[0] and reye[1] > nose[1] and leye[1] > nose[1]
    assert v[ids["rear"]][0] < -0.05 and v[ids["lear"]][0] > 0.05
    for side, ankle in (("L", 7), ("R", 8)):
        toe, heel = v[ids[f"{side}BigToe"]], v[ids[f"{side}Heel"]]
        assert toe[1] < J[ankle, 1] and heel[1] < J[ankle, 1]
        assert toe[2] > J[ankle, 2] + 0.1 > heel[2] + 0.1
        assert np.sign(toe[0]) == (1 if side == "L" else -1)
    for side, hand in (("l", 22), ("r", 23)):
        for tip in ("thumb", "index", "middle", "ring", "pinky"):
            assert np.linalg.norm(v[ids[side + tip]] - J[hand]) < 0.15


def test_shape_parameters_change_height_and_girth(smpl_neutral):
    b, p, g = _zero(3)
    b[1, 0] = 2.0   # taller
    b[2, 1] = 2.0   # wider
    with torch.no_grad():
        v = smpl_neutral(betas=b, body_pose=p, global_orient=g).vertices.numpy()
    h = np.ptp(v[:, :, 1], axis=1)
    assert h[1] > h[0] * 1.08
    waist = lambda x: np.ptp(x[np.abs(x[:, 1] - x[:, 1].mean()) < 0.03][:, 2])  # noqa: E731
    assert waist(v[2]) > waist(v[0]) * 1.15
    assert abs(h[2] - h[0]) < 0.02


def test_gendered_models_differ_and_share_topology(synthetic_root):
    m, f, n = (_pkl(synthetic_root, g) for g in ("male", "female", "neutral"))
    assert np.array_equal(m["f"], f["f"]) and np.array_equal(m["f"], n["f"])
    assert np.ptp(m["v_template"][:, 1]) > np.ptp(n["v_template"][:, 1]) > \
        np.ptp(f["v_template"][:, 1])
    # wider hips relative to the shoulders for the female model
    ratio = lambda d: d["J"][1, 0] / d["J"][16, 0]                    # noqa: E731
    assert ratio(f) > ratio(n) > ratio(m)


# ---------------------------------------------------------------------------------------------
# the wrapper

def test_zero_pose_and_shape_give_the_template(smpl_neutral, synthetic_root):
    d = _pkl(synthetic_root)
    b, p, g = _zero(2)
    with torch.no_grad():
        out = smpl_neutral(betas=b, body_pose=p, global_orient=g)
    assert out.vertices.shape == (2, 6890, 3)
    assert out.joints.shape == (2, 49, 3)
    assert out.smpl_joints.shape == (2, 24, 3)
    np.testing.assert_allclose(out.vertices[1].numpy(), d["v_template"], atol=1e-5)
    np.testing.assert_allclose(out.smpl_joints[0].numpy(), d["J"], atol=1e-5)
    # the 49 joints = SPIN's gather of [24 SMPL, 21 smplx vertex joints, 9 extra]
    v = d["v_template"]
    ids = vertex_ids["smplh"]
    order = ["nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
             "RSmallToe", "RHeel"] + [s + t for s in "lr"
                                      for t in ("thumb", "index", "middle", "ring", "pinky")]
    extra = np.load(DataPaths(synthetic_root).j_regressor_extra())
    source = np.concatenate([d["J"], v[[ids[k] for k in order]], extra @ v])
    assert source.shape == (54, 3)
    np.testing.assert_allclose(out.joints[0].numpy(), source[constants.JOINT_MAP], atol=1e-5)
    # a few named joints: OP MidHip = SMPL pelvis, OP Nose = vertex 332, GT R hip = extra row 0
    np.testing.assert_allclose(out.joints[0, 8].numpy(), d["J"][0], atol=1e-5)
    np.testing.assert_allclose(out.joints[0, 0].numpy(), v[332], atol=1e-5)
    np.testing.assert_allclose(out.joints[0, 27].numpy(), extra[0] @ v, atol=1e-5)


def test_rotation_matrices_match_axis_angle(smpl_neutral):
    rng = np.random.default_rng(0)
    aa = rng.normal(0, 0.4, (3, 24, 3))
    betas = torch.as_tensor(rng.normal(0, 1, (3, 10)), dtype=torch.float32)
    rot = torch.as_tensor(Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(3, 24, 3, 3),
                          dtype=torch.float32)
    aa_t = torch.as_tensor(aa, dtype=torch.float32)
    with torch.no_grad():
        a = smpl_neutral(betas=betas, body_pose=aa_t[:, 1:].reshape(3, 69),
                         global_orient=aa_t[:, 0])
        m = smpl_neutral(betas=betas, body_pose=rot[:, 1:], global_orient=rot[:, :1],
                         pose2rot=False)
    np.testing.assert_allclose(m.vertices.numpy(), a.vertices.numpy(), atol=1e-5)
    np.testing.assert_allclose(m.joints.numpy(), a.joints.numpy(), atol=1e-5)


def test_global_rotation_is_rigid_about_the_root(smpl_neutral):
    b, p, g = _zero(1)
    b[0, :3] = torch.tensor([0.5, -1.0, 0.3])
    R = Rotation.from_euler("xyz", [180, 30, 10], degrees=True)
    with torch.no_grad():
        rest = smpl_neutral(betas=b, body_pose=p, global_orient=g)
        turned = smpl_neutral(betas=b, body_pose=p,
                              global_orient=torch.as_tensor(R.as_rotvec()[None],
                                                            dtype=torch.float32))
    root = rest.smpl_joints[0, 0].numpy()
    want = R.apply(rest.vertices[0].numpy() - root) + root
    np.testing.assert_allclose(turned.vertices[0].numpy(), want, atol=1e-4)


def test_gradients_flow_to_pose_and_shape(smpl_neutral):
    betas = torch.zeros(2, 10, requires_grad=True)
    pose = (0.1 * torch.ones(2, 69)).requires_grad_()
    orient = torch.zeros(2, 3, requires_grad=True)
    out = smpl_neutral(betas=betas, body_pose=pose, global_orient=orient)
    (out.joints.square().sum() + out.vertices.square().mean()).backward()
    for name, x in (("betas", betas), ("body_pose", pose), ("global_orient", orient)):
        assert x.grad is not None and torch.isfinite(x.grad).all(), name
        assert x.grad.abs().sum() > 0, name
    # the knee bend moves the ankle: d(ankle)/d(knee angle) is non-zero
    assert pose.grad[0, 3 * 3:3 * 4].abs().sum() > 0


def test_pose_blend_shapes_bulge_bent_joints(smpl_neutral, synthetic_root):
    """With the knee bent, the pose corrective pushes knee-area vertices outward (they move
    off the pure-LBS position along their outward direction)."""
    b, p, g = _zero(1)
    p[0, 3 * 3] = 1.5            # left knee (joint 4), 86 degrees
    with torch.no_grad():
        out = smpl_neutral(betas=b, body_pose=p, global_orient=g)
        pd = smpl_neutral.posedirs.clone()
        smpl_neutral.posedirs.zero_()
        try:
            plain = smpl_neutral(betas=b, body_pose=p, global_orient=g)
        finally:
            smpl_neutral.posedirs.copy_(pd)
    delta = (out.vertices - plain.vertices)[0].norm(dim=1).numpy()
    knee = out.smpl_joints[0, 4].numpy()
    near = np.linalg.norm(out.vertices[0].numpy() - knee, axis=1) < 0.1
    assert 0.003 < delta[near].max() < 0.03
    assert delta[~near].max() < delta[near].max()


def test_bad_inputs_raise(smpl_neutral):
    b, p, g = _zero(1)
    with pytest.raises(ValueError, match=r"body_pose has shape \(1, 23, 3\)"):
        smpl_neutral(betas=b, body_pose=p.reshape(1, 23, 3), global_orient=g)
    with pytest.raises(ValueError, match="global_orient"):
        smpl_neutral(betas=b, body_pose=torch.eye(3).expand(1, 23, 3, 3),
                     global_orient=g, pose2rot=False)


# ---------------------------------------------------------------------------------------------
# loading: official chumpy pickles, our plain ones, bad files

def test_official_chumpy_pickle_loads_the_same(synthetic_root, tmp_path, smpl_neutral):
    ch = pytest.importorskip("chumpy")
    d = _pkl(synthetic_root)
    official = dict(d)   # the released files hold chumpy arrays for these keys
    for key in ("shapedirs", "J", "v_template"):
        official[key] = ch.array(d[key])
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as fh:
        pickle.dump(official, fh, protocol=2)
    m = SMPL(path, DataPaths(synthetic_root).j_regressor_extra())
    rng = np.random.default_rng(1)
    args = dict(betas=torch.as_tensor(rng.normal(0, 1, (2, 10)), dtype=torch.float32),
                body_pose=torch.as_tensor(rng.normal(0, 0.3, (2, 69)), dtype=torch.float32),
                global_orient=torch.as_tensor(rng.normal(0, 0.3, (2, 3)), dtype=torch.float32))
    with torch.no_grad():
        np.testing.assert_allclose(m(**args).vertices.numpy(),
                                   smpl_neutral(**args).vertices.numpy(), atol=1e-6)


def test_build_smpl_device_dtype_and_buffers(synthetic_root):
    m = build_smpl(DataPaths(synthetic_root), "female", dtype=torch.float64)
    assert m.J_regressor_extra.shape == (9, 6890) and m.J_regressor_extra.dtype == torch.float64
    assert "J_regressor_extra" in dict(m.named_buffers())
    assert not hasattr(m, "transl")                   # create_transl=False
    b, p, g = _zero(1, torch.float64)
    assert m(betas=b, body_pose=p, global_orient=g).joints.dtype == torch.float64


def test_missing_and_bad_files_raise_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(MissingFileError, match="SMPL_NEUTRAL.pkl"):
        build_smpl(DataPaths(tmp_path), "neutral")
    d = _pkl(synthetic_root)
    d.pop("weights")
    bad = tmp_path / "SMPL_BAD.pkl"
    with open(bad, "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    with pytest.raises(SMPLFileError, match=r"SMPL_BAD.pkl: missing key 'weights'"):
        SMPL(bad, np.zeros((9, 6890)))
    d = _pkl(synthetic_root)
    d["posedirs"] = d["posedirs"][:, :, :200]
    with open(bad, "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    with pytest.raises(SMPLFileError, match=r"'posedirs' has shape \(6890, 3, 200\)"):
        SMPL(bad, np.zeros((9, 6890)))
    reg = tmp_path / "J_regressor_extra.npy"
    np.save(reg, np.zeros((9, 6000)))
    with pytest.raises(SMPLFileError, match=r"J_regressor_extra.npy has shape \(9, 6000\)"):
        load_regressor(reg, rows=9)
    with pytest.raises(SMPLFileError, match="expected"):
        SMPL(DataPaths(synthetic_root).smpl_model("neutral"), reg)


# ---------------------------------------------------------------------------------------------
# the extra and H36M regressors

def test_regressors_are_convex_and_in_the_right_joint_order(synthetic_root, smpl_neutral):
    paths = DataPaths(synthetic_root)
    extra = load_regressor(paths.j_regressor_extra(), rows=9).numpy()
    h36m = load_regressor(paths.j_regressor_h36m(), rows=17).numpy()
    for r in (extra, h36m):
        assert r.min() >= 0
        np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-5)
        assert ((r > 0).sum(1) >= 10).all()            # spread over many vertices
    # on a posed body, the H36M joints (LSP-14 order via H36M_TO_J14) agree with SPIN's GT-24
    # joints of the same names (LSP order too): both regressors are made for the same skeleton
    rng = np.random.default_rng(3)
    pose = torch.as_tensor(rng.normal(0, 0.25, (2, 69)), dtype=torch.float32)
    with torch.no_grad():
        out = smpl_neutral(betas=torch.zeros(2, 10), body_pose=pose,
                           global_orient=torch.zeros(2, 3))
    j17 = torch.einsum("jv,bvc->bjc", torch.as_tensor(h36m), out.vertices).numpy()
    lsp = j17[:, constants.H36M_TO_J14]
    gt14 = out.joints[:, 25:25 + 14].numpy()
    err = np.linalg.norm(lsp - gt14, axis=-1)
    limbs = [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]            # ankles, knees, wrists, elbows, shoulders
    assert err[:, limbs].max() < 0.025, err
    assert err[:, [2, 3]].max() < 0.06, err            # hips: LSP's sit lower than H36M's
    assert err.max() < 0.1, err                        # neck and head top


def test_self_parent_few_shape_components_and_wrong_regressor_rows_are_refused(
        synthetic_root, tmp_path):
    """Broken files that smplx would crash on (a joint its own parent: its chain is not built
    yet; < 10 shape components for 10 betas) or silently misuse (a J_regressor_extra with 10
    rows shifts SPIN's joint map) are one SMPLFileError naming the file and key."""
    from models.smpl import load_smpl_data
    bad = tmp_path / "SMPL_NEUTRAL.pkl"
    for key, pattern in (("kintree_table", r"'kintree_table' holds invalid indices \(a joint's "
                                           r"parent \(row 0\) must be an earlier joint"),
                         ("f", r"'f' holds invalid indices \(vertex indices must be 0..6889"),
                         ("shapedirs", "'shapedirs' has 5 components")):
        d = _pkl(synthetic_root)
        d[key] = np.array(d[key])
        if key == "kintree_table":
            d[key][0, 5] = 5
        elif key == "f":
            d[key][7, 1] = 6890
        else:
            d[key] = d[key][:, :, :5]
        with open(bad, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        with pytest.raises(SMPLFileError, match=rf"SMPL_NEUTRAL.pkl: {pattern}"):
            load_smpl_data(bad)
    reg = tmp_path / "J_regressor_extra.npy"
    np.save(reg, np.full((10, 6890), 1 / 6890))
    with pytest.raises(SMPLFileError, match=r"J_regressor_extra.npy has shape \(10, 6890\)"):
        load_regressor(reg, rows=9)
