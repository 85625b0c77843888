"""train/losses.py: hand-computed values, SPIN normalisations, batch vs sample mode, gradients."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import constants
from train import losses as L

B, V = 4, 50


def _batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    pred = {"vertices": r(B, V, 3), "keypoints_2d": r(B, 49, 2), "joints": r(B, 49, 3),
            "rotmat": r(B, 24, 3, 3), "betas": r(B, 10), "cam": r(B, 3).abs() * 0.2}
    conf = torch.rand(B, 49, 1, generator=g, dtype=dtype)
    target = {"vertices": r(B, V, 3), "keypoints_2d": torch.cat([r(B, 49, 2), conf], -1),
              "joints_3d": torch.cat([r(B, 24, 3), torch.rand(B, 24, 1, generator=g,
                                                               dtype=dtype)], -1),
              "rotmat": r(B, 24, 3, 3), "betas": r(B, 10),
              "has_smpl": torch.tensor([1, 0, 1, 1], dtype=torch.bool),
              "has_pose_3d": torch.tensor([0, 1, 1, 0], dtype=torch.bool)}
    return pred, target


def _slice(d, i):
    return {k: v[i:i + 1] for k, v in d.items()}


def test_zero_when_pred_equals_gt():
    pred, target = _batch()
    same = {"vertices": target["vertices"], "keypoints_2d": target["keypoints_2d"][..., :2],
            "joints": torch.cat([pred["joints"][:, :25], target["joints_3d"][..., :3]], 1),
            "rotmat": target["rotmat"], "betas": target["betas"], "cam": pred["cam"]}
    out = L.smpl_loss(same, target, terms=("vertices", "keypoints_2d", "keypoints_3d", "pose",
                                           "betas"))
    for k, v in out.items():
        assert float(v) == 0.0, k
    # the camera term is not a distance: exp(-10 s)^2, s = 0.1 -> e^-2
    cam = torch.tensor([[0.1, 5.0, -3.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(L.camera_loss(cam), torch.tensor([math.exp(-2.0), 1.0]))


def test_keypoint_2d_hand_case():
    pred = torch.zeros(1, 49, 2)
    gt = torch.zeros(1, 49, 3)
    gt[0, :, 2] = 1.0
    gt[0, 0, :2] = torch.tensor([1.0, 0.0])        # OpenPose joint, conf 1
    gt[0, 30] = torch.tensor([0.2, 0.4, 0.5])       # GT joint, conf 0.5
    gt[0, 40, 2] = 0.0                              # zero-conf joints still count below
    val = L.keypoint_2d_loss(pred, gt, openpose_weight=0.5, gt_weight=2.0)
    # (0.5*1*1 + 2*0.5*(0.04+0.16)) / (49*2) = 0.7 / 98
    torch.testing.assert_close(val, torch.tensor([0.7 / 98]))
    # default training weights: OpenPose 0, GT 1 -> 0.5*0.2/98
    torch.testing.assert_close(L.keypoint_2d_loss(pred, gt), torch.tensor([0.1 / 98]))


def test_keypoint_3d_hip_centred_hand_case():
    gt = torch.zeros(1, 24, 4)
    gt[..., 3] = 1.0
    pred = torch.zeros(1, 24, 3) + torch.tensor([5.0, -2.0, 1.0])   # a global shift only
    assert float(L.keypoint_3d_loss(pred, gt)) == pytest.approx(0.0, abs=1e-12)
    pred[0, 10] += torch.tensor([0.3, 0.0, 0.4])                    # one joint off by 0.5
    gt[0, 10, 3] = 0.4
    torch.testing.assert_close(L.keypoint_3d_loss(pred, gt), torch.tensor([0.4 * 0.25 / 72]))
    # moving a hip moves the centre of every other joint by half of it
    pred2 = torch.zeros(1, 24, 3)
    pred2[0, constants.GT24_RHIP, 0] = 1.0
    gt[..., 3] = 1.0
    # centre x = 0.5: rhip residual 0.5, the other 23 joints -0.5 -> 24 * 0.25 / 72
    torch.testing.assert_close(L.keypoint_3d_loss(pred2, gt), torch.tensor([24 * 0.25 / 72]))


def test_batch_mode_matches_spin_normalisation():
    pred, target = _batch(1)
    w = L.LossWeights()
    out = L.smpl_loss(pred, target, w, mode="batch")
    hs, h3 = target["has_smpl"], target["has_pose_3d"]
    # SPIN-style means over the selected samples, written with torch.nn.functional
    ref_v = F.l1_loss(pred["vertices"][hs], target["vertices"][hs])
    ref_p = F.mse_loss(pred["rotmat"][hs], target["rotmat"][hs])
    ref_b = F.mse_loss(pred["betas"][hs], target["betas"][hs])
    conf = target["keypoints_2d"][..., 2:].clone()
    conf[:, :25] *= w.openpose
    conf[:, 25:] *= w.gt
    ref_2d = (conf * F.mse_loss(pred["keypoints_2d"], target["keypoints_2d"][..., :2],
                                reduction="none")).mean()
    pj = pred["joints"][h3, 25:]
    gj = target["joints_3d"][h3]
    pj = pj - 0.5 * (pj[:, 2:3] + pj[:, 3:4])
    gx = gj[..., :3] - 0.5 * (gj[:, 2:3, :3] + gj[:, 3:4, :3])
    ref_3d = (gj[..., 3:] * (pj - gx) ** 2).mean()
    ref_cam = (torch.exp(-10 * pred["cam"][:, 0]) ** 2).mean()
    refs = {"vertices": 0.5 * ref_v, "pose": ref_p, "betas": 0.001 * ref_b,
            "keypoints_2d": 5 * ref_2d, "keypoints_3d": 5 * ref_3d, "cam": ref_cam}
    for k, r in refs.items():
        torch.testing.assert_close(out[k], r, msg=k)
        assert out[k].dim() == 0
    torch.testing.assert_close(out["total"], sum(refs.values()))


def test_sample_mode_is_per_sample_batch_mode():
    pred, target = _batch(2)
    w = L.LossWeights(openpose=0.3)
    samp = L.smpl_loss(pred, target, w, mode="sample")
    assert samp["total"].shape == (B,)
    for i in range(B):
        one = L.smpl_loss(_slice(pred, i), _slice(target, i), w, mode="batch")
        for k in one:
            torch.testing.assert_close(samp[k][i], one[k], msg=f"{k}[{i}]")
    # masked-out samples give 0 in sample mode
    assert float(samp["vertices"][1]) == 0.0 and float(samp["keypoints_3d"][0]) == 0.0


def test_sample_mode_gradient_is_each_samples_own():
    pred, target = _batch(3)
    p = {k: v.clone().requires_grad_(True) for k, v in pred.items()}
    L.smpl_loss(p, target, mode="sample")["total"].sum().backward()
    for i in range(B):
        pi = {k: v[i:i + 1].clone().requires_grad_(True) for k, v in pred.items()}
        L.smpl_loss(pi, _slice(target, i), mode="batch")["total"].backward()
        for k in pred:
            torch.testing.assert_close(p[k].grad[i:i + 1], pi[k].grad, msg=f"{k}[{i}]")


def test_empty_mask_zero_and_backprop():
    pred, target = _batch(4)
    target["has_smpl"] = torch.zeros(B, dtype=torch.bool)
    target["has_pose_3d"] = torch.zeros(B)
    target["vertices"][0] = float("nan")                 # masked-out garbage must not leak
    p = {k: v.clone().requires_grad_(True) for k, v in pred.items()}
    out = L.smpl_loss(p, target, terms=("vertices", "keypoints_3d", "pose", "betas"))
    for k in ("vertices", "keypoints_3d", "pose", "betas", "total"):
        assert out[k].item() == 0.0, k
    out["total"].backward()
    assert torch.isfinite(p["vertices"].grad).all()
    assert float(p["rotmat"].grad.abs().sum()) == 0.0
    v = torch.ones(3, requires_grad=True)
    r = L.reduce_per_sample(v, torch.zeros(3, dtype=torch.bool), "batch")
    r.backward()
    assert r.item() == 0.0 and v.grad is not None
    # float mask in batch mode: sum(m v) / sum(m)
    torch.testing.assert_close(
        L.reduce_per_sample(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 1.0])),
        torch.tensor(2.5))


def test_gradient_step_lowers_2d_loss():
    pred, target = _batch(5, dtype=torch.float32)
    kp = pred["keypoints_2d"].clone().requires_grad_(True)
    loss = L.smpl_loss({"keypoints_2d": kp}, target, terms=("keypoints_2d",))["total"]
    loss.backward()
    with torch.no_grad():
        kp2 = kp - 0.5 * kp.grad
    after = L.smpl_loss({"keypoints_2d": kp2}, target, terms=("keypoints_2d",))["total"]
    assert after.item() < loss.item()
    # only the joints with positive effective confidence moved (OpenPose weight 0)
    assert float(kp.grad[:, :25].abs().sum()) == 0.0


def test_tto_2d_loss_weights():
    """keypoint weight 1 gives the raw 2D loss; openpose/gt multiply the two joint groups."""
    pred, target = _batch(6)
    raw = L.keypoint_2d_loss(pred["keypoints_2d"], target["keypoints_2d"], 0.0, 1.0).mean()
    out = L.smpl_loss(pred, target, L.LossWeights(keypoint=1.0), terms=L.TTO_TERMS)
    torch.testing.assert_close(out["total"], raw)
    raw_op = L.keypoint_2d_loss(pred["keypoints_2d"], target["keypoints_2d"], 1.0, 0.0).mean()
    op = L.LossWeights(keypoint=1.0, openpose=1.0, gt=0.0)
    torch.testing.assert_close(L.smpl_loss(pred, target, op, terms="keypoints_2d")["total"], raw_op)


def test_loss_weights_from_options_and_errors():
    opts = SimpleNamespace(shape_loss_weight=0.25, keypoint_loss_weight=3, pose_loss_weight=2.0,
                           beta_loss_weight=0.01, openpose_train_weight=0.5, gt_train_weight=1.0)
    w = L.LossWeights.from_options(opts)
    assert w == L.LossWeights(shape=0.25, keypoint=3.0, pose=2.0, beta=0.01, cam=1.0,
                              openpose=0.5, gt=1.0)
    assert L.LossWeights() == L.LossWeights(0.5, 5.0, 1.0, 0.001, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="gt_train_weight"):
        L.LossWeights.from_options(SimpleNamespace(shape_loss_weight=1))
    pred, target = _batch()
    del target["has_pose_3d"]
    with pytest.raises(ValueError, match="keypoints_3d.*has_pose_3d"):
        L.smpl_loss(pred, target)
    with pytest.raises(ValueError, match="'vertices'.*pred"):
        L.smpl_loss({}, target, terms=("vertices",))
    with pytest.raises(ValueError, match="unknown term"):
        L.smpl_loss(pred, target, terms=("smoothness",))


def test_pseudo_targets_from_the_aux_prediction():
    pred, target = _batch(7)
    aux = {k: pred[k] + 0.0 for k in ("vertices", "joints", "rotmat", "betas")}

    class _Cam:     # pseudo_targets takes the 2D keypoints from the camera model
        def target_keypoints(self, batch):
            return batch["kp"]

    batch = {"kp": target["keypoints_2d"], "has_smpl": target["has_smpl"],
             "has_pose_3d": target["has_pose_3d"]}
    tgt = L.pseudo_targets(aux, batch, _Cam())
    assert tgt["joints_3d"].shape == (B, 24, 4)
    assert (tgt["joints_3d"][..., 3] == 1).all()
    torch.testing.assert_close(tgt["joints_3d"][..., :3], pred["joints"][:, 25:49])
    out = L.smpl_loss(pred, tgt, mode="sample")
    for k in ("vertices", "keypoints_3d", "pose", "betas"):
        assert float(out[k].abs().sum()) == 0.0, k
    assert float(out["keypoints_2d"].sum()) > 0


def test_gt_targets_rotations_match_scipy():
    """The outer loss's GT rotation matrices are the axis-angle poses' (scipy's rotvec), the
    other targets the batch's own tensors."""
    from scipy.spatial.transform import Rotation
    rots = Rotation.random(B * 24, random_state=8)
    pred, target = _batch(8, dtype=torch.float32)

    class _Cam:
        def target_keypoints(self, batch):
            return batch["kp"]

    batch = {"pose": torch.tensor(rots.as_rotvec().reshape(B, 72), dtype=torch.float32),
             "pose_3d": target["joints_3d"], "betas": target["betas"], "kp": target["keypoints_2d"],
             "has_smpl": target["has_smpl"], "has_pose_3d": target["has_pose_3d"]}
    gt = L.gt_targets(batch, target["vertices"], _Cam())
    want = torch.tensor(rots.as_matrix().reshape(B, 24, 3, 3), dtype=torch.float32)
    torch.testing.assert_close(gt["rotmat"], want, atol=1e-5, rtol=0)
    for k, v in (("keypoints_2d", "kp"), ("joints_3d", "pose_3d"), ("betas", "betas"),
                 ("has_smpl", "has_smpl"), ("has_pose_3d", "has_pose_3d")):
        assert torch.equal(gt[k], batch[v]), k
    assert torch.equal(gt["vertices"], target["vertices"])


@pytest.mark.parametrize("kind", ["cliff", "hmr"])
def test_2d_loss_gradient_reaches_the_camera(kind):
    """The predicted camera (s, tx, ty) is projected with its graph: autograd's gradient of
    the 2D keypoint loss with respect to it equals central finite differences (float64)."""
    from types import SimpleNamespace as NS

    from utils.camera import Camera, smpl_predict
    g = torch.Generator().manual_seed(9)
    n = 2
    joints = 0.5 * torch.randn(n, 49, 3, generator=g, dtype=torch.float64)
    body = lambda **kw: NS(vertices=torch.zeros(n, 5, 3, dtype=torch.float64),  # noqa: E731
                           joints=joints)   # a stand-in body model: fixed joints
    k, a, b = 0.2, -10.0, -20.0                 # full image -> crop: x' = k x + a, y' = k y + b
    batch = {"img": torch.zeros(n, 3, 64, 48), "center": torch.tensor([[150.0, 210.0]] * n),
             "scale": torch.tensor([1.1] * n), "img_h": torch.tensor([480.0] * n),
             "img_w": torch.tensor([320.0] * n), "focal_length": torch.tensor([500.0] * n),
             "crop_trans": torch.tensor([[[k, 0, a], [0, k, b]]] * n),
             "keypoints": torch.cat([torch.rand(n, 49, 2, generator=g) * 48,
                                     torch.ones(n, 49, 1)], -1)}
    camera = Camera(kind, 64, 48)
    rotmat = torch.eye(3, dtype=torch.float64).expand(n, 24, 3, 3)
    betas = torch.zeros(n, 10, dtype=torch.float64)
    target = {"keypoints_2d": camera.target_keypoints(batch)}

    def loss(cam):
        pred = smpl_predict((rotmat, betas, cam), body, camera, batch)
        return L.smpl_loss(pred, target, terms=("keypoints_2d",))["total"]

    cam = torch.tensor([[0.9, 0.05, -0.1], [1.2, -0.2, 0.1]], dtype=torch.float64,
                       requires_grad=True)
    got, = torch.autograd.grad(loss(cam), cam, allow_unused=True)
    assert got is not None
    eps, fd = 1e-6, torch.zeros_like(cam)
    with torch.no_grad():
        for i in range(n):
            for j in range(3):
                d = torch.zeros_like(cam)
                d[i, j] = eps
                fd[i, j] = (loss(cam + d) - loss(cam - d)) / (2 * eps)
    assert float(fd.abs().min()) > 1e-6
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-9)
