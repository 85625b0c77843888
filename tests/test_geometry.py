"""utils/geometry.py and utils/pose_utils.py against independent facts (scipy, hand numbers)."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from utils import geometry as G
from utils import pose_utils as P

DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _rand_rot(n, seed=0):
    return Rotation.random(n, random_state=seed)


# ---------------------------------------------------------------------------------------------
# rotations

@pytest.mark.parametrize("dtype", DTYPES)
def test_rot6d_identity(dtype):
    x = torch.tensor([[1.0, 0, 0, 1, 0, 0]], dtype=dtype)
    R = G.rot6d_to_rotmat(x)
    assert R.dtype == dtype and R.shape == (1, 3, 3)
    torch.testing.assert_close(R[0], torch.eye(3, dtype=dtype))


@pytest.mark.parametrize("k", [1, 3, 24])
def test_rot6d_orthonormal_any_rows(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(5, 6 * k, generator=g, dtype=torch.float64)
    R = G.rot6d_to_rotmat(x)
    assert R.shape == (5 * k, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(5 * k, dtype=torch.float64))
    # layout: first column is normalise(entries 0, 2, 4) of each 6-vector, in row order
    a1 = x.reshape(-1, 6)[:, 0::2]
    torch.testing.assert_close(R[:, :, 0], a1 / a1.norm(dim=1, keepdim=True))
    # [..., 6] input gives the same rotations
    torch.testing.assert_close(G.rot6d_to_rotmat(x.reshape(5, k, 6)), R)


def test_rot6d_roundtrip_scipy():
    Rs = torch.from_numpy(_rand_rot(50).as_matrix())
    six = G.rotmat_to_rot6d(Rs)
    assert six.shape == (50, 6)
    torch.testing.assert_close(six[:, 0::2], Rs[:, :, 0])          # a1 = entries 0, 2, 4
    torch.testing.assert_close(six[:, 1::2], Rs[:, :, 1])          # a2 = entries 1, 3, 5
    torch.testing.assert_close(G.rot6d_to_rotmat(six), Rs, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="multiple of 6"):
        G.rot6d_to_rotmat(torch.zeros(2, 7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_rodrigues_vs_scipy(dtype):
    rv = _rand_rot(40, seed=1).as_rotvec()
    axis = rv[:3] / np.linalg.norm(rv[:3], axis=1, keepdims=True)
    extra = np.concatenate([np.zeros((1, 3)), 1e-9 * axis, 3e-3 * axis,        # tiny / Taylor
                            (np.pi - 1e-6) * axis, np.pi * axis, 5.0 * axis])   # near pi, > pi
    rv = np.concatenate([rv, extra])
    R = G.batch_rodrigues(torch.tensor(rv, dtype=dtype))
    assert R.dtype == dtype
    torch.testing.assert_close(R, torch.tensor(Rotation.from_rotvec(rv).as_matrix(), dtype=dtype),
                               atol=TOL[dtype] * 10, rtol=0)


def test_batch_rodrigues_gradient_at_zero():
    v = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    R = G.batch_rodrigues(v)
    # dR/dv at 0 is the skew generator: R[2,1] = vx, R[0,2] = vy, R[1,0] = vz
    (g,) = torch.autograd.grad(R[0, 2, 1] + 2 * R[0, 0, 2] + 3 * R[0, 1, 0], v)
    torch.testing.assert_close(g, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    # gradient check across the Taylor / closed-form switch
    for val in (1e-3, 2e-2, 1.0):
        x = torch.tensor([[val, -0.5 * val, 0.3 * val]], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(G.batch_rodrigues, (x,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotmat_to_quat_vs_scipy(dtype):
    rot = _rand_rot(30, seed=2)
    xyzw = rot.as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1) * 2.5     # unnormalised
    q = G.rotmat_to_quat(torch.tensor(rot.as_matrix(), dtype=dtype))
    assert (q[:, 0] >= 0).all()                          # w >= 0 picks one of q and -q
    ref = torch.tensor(wxyz / np.linalg.norm(wxyz, axis=1, keepdims=True), dtype=dtype)
    torch.testing.assert_close(q, ref * torch.sign(ref[:, :1]), atol=TOL[dtype] * 10, rtol=0)


def test_rotmat_to_axis_angle_vs_scipy():
    rv = _rand_rot(200, seed=3).as_rotvec()
    R = torch.from_numpy(Rotation.from_rotvec(rv).as_matrix())
    aa = G.rotmat_to_axis_angle(R)
    assert aa.shape == (200, 3)
    torch.testing.assert_close(aa, torch.from_numpy(rv), atol=1e-10, rtol=0)
    # near pi, exactly pi and identity: compare the rotations (the axis sign is free at pi)
    ax = np.array([[1.0, 2.0, -2.0], [0.0, 0.0, 1.0], [1.0, 0, 0], [0.3, -0.9, 0.1]])
    ax /= np.linalg.norm(ax, axis=1, keepdims=True)
    cases = np.concatenate([ax * np.pi, ax * (np.pi - 1e-7), ax * (np.pi - 1e-3),
                            ax * 1e-8, np.zeros((1, 3))])
    Rc = torch.from_numpy(Rotation.from_rotvec(cases).as_matrix())
    aac = G.rotmat_to_axis_angle(Rc)
    torch.testing.assert_close(G.batch_rodrigues(aac), Rc, atol=1e-10, rtol=0)
    ang = aac.norm(dim=1).numpy()
    np.testing.assert_allclose(ang, np.linalg.norm(cases, axis=1), atol=1e-9)
    # float32 near pi stays accurate
    aa32 = G.rotmat_to_axis_angle(Rc.float())
    torch.testing.assert_close(G.batch_rodrigues(aa32), Rc.float(), atol=1e-5, rtol=0)
    # gradients finite everywhere, including identity and pi
    Rg = Rc.clone().requires_grad_(True)
    G.rotmat_to_axis_angle(Rg).sum().backward()
    assert torch.isfinite(Rg.grad).all()


def test_rotmat_to_axis_angle_small_and_moderate_angles_vs_scipy():
    """float64, angles 1e-3 .. 3 rad about random axes: scipy's rotation vector to 1e-9
    relative (the series near 0 is for tiny angles only)."""
    rng = np.random.default_rng(11)
    ang = np.concatenate([np.geomspace(1e-3, 0.3, 40), np.linspace(0.3, 3.0, 10)])
    ax = rng.normal(size=(len(ang), 3))
    rv = ax / np.linalg.norm(ax, axis=1, keepdims=True) * ang[:, None]
    m = Rotation.from_rotvec(rv).as_matrix()
    ref = Rotation.from_matrix(m).as_rotvec()
    aa = G.rotmat_to_axis_angle(torch.from_numpy(m)).numpy()
    err = np.linalg.norm(aa - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() < 1e-9, (err.max(), ang[err.argmax()])


# ---------------------------------------------------------------------------------------------
# cameras and projections (hand-computed numbers)

@pytest.mark.parametrize("dtype", DTYPES)
def test_cam_crop2full_and_projection_by_hand(dtype):
    # s=0.5, bbox b = 2*200 = 400, bs = 200; f = 1000; image 720 x 1280 (h, w); centre (600, 300)
    cam = torch.tensor([[0.5, 0.1, -0.2]], dtype=dtype)
    t = G.cam_crop2full(cam, torch.tensor([[600.0, 300.0]], dtype=dtype),
                        torch.tensor([2.0], dtype=dtype), torch.tensor([[720.0, 1280.0]], dtype=dtype),
                        torch.tensor([1000.0], dtype=dtype))
    # tz = 2*1000/200 = 10; tx = 2*(600-640)/200 + 0.1 = -0.3; ty = 2*(300-360)/200 - 0.2 = -0.8
    assert t.dtype == dtype
    torch.testing.assert_close(t, torch.tensor([[-0.3, -0.8, 10.0]], dtype=dtype))
    pts = torch.tensor([[[0.3, 0.8, 0.0], [1.0, 0.8, 2.0]]], dtype=dtype)
    uv = G.perspective_projection(pts, torch.eye(3, dtype=dtype)[None], t,
                                  torch.tensor([1000.0], dtype=dtype),
                                  torch.tensor([[640.0, 360.0]], dtype=dtype))
    # (0,0,10) -> image centre; (0.7, 0, 12) -> u = 1000*0.7/12 + 640 = 698.3333, v = 360
    torch.testing.assert_close(uv, torch.tensor([[[640.0, 360.0], [698.333333333, 360.0]]],
                                                dtype=dtype))


def test_perspective_projection_rotation_and_fxfy():
    R = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])   # 90 deg about z
    p = torch.tensor([[[1.0, 2.0, 3.0]]])
    uv = G.perspective_projection(p, R, torch.tensor([[0.0, 0.0, 1.0]]),
                                  torch.tensor([[100.0, 200.0]]), torch.tensor([[10.0, 20.0]]))
    # R p = (-2, 1, 3); + t -> (-2, 1, 4); u = 100*-0.5 + 10 = -40; v = 200*0.25 + 20 = 70
    torch.testing.assert_close(uv, torch.tensor([[[-40.0, 70.0]]]))


def test_shared_centre_with_batch_of_two():
    # a [2] centre is (cx, cy) shared by the batch, a [B] focal is per sample, even when B == 2
    p = torch.tensor([[[1.0, 1.0, 2.0]], [[1.0, 1.0, 2.0]]])
    uv = G.perspective_projection(p, None, torch.zeros(2, 3), torch.tensor([10.0, 20.0]),
                                  torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(uv, torch.tensor([[[8.0, 9.0]], [[13.0, 14.0]]]))
    with pytest.raises(ValueError, match="camera_center"):
        G.perspective_projection(p, None, torch.zeros(2, 3), 1.0, torch.zeros(3))


def test_project_full_to_crop_by_hand():
    joints = torch.tensor([[[0.2, -0.1, 10.0]]], dtype=torch.float64)
    crop_trans = torch.tensor([[[0.5, 0.0, -230.0], [0.0, 0.5, -95.0]]], dtype=torch.float64)
    out = G.project_full_to_crop(joints, torch.zeros(1, 3, dtype=torch.float64),
                                 torch.tensor([1000.0], dtype=torch.float64),
                                 torch.tensor([[720.0, 1280.0]], dtype=torch.float64),
                                 crop_trans, (256, 192))
    # full px: u = 1000*0.02 + 640 = 660, v = -10 + 360 = 350; crop px: (330-230, 175-95) =
    # (100, 80); normalised: 2*100/192 - 1 = 0.0416667, 2*80/256 - 1 = -0.375
    torch.testing.assert_close(out, torch.tensor([[[0.04166666666667, -0.375]]],
                                                 dtype=torch.float64))
    kp = G.normalize_keypoints_2d(torch.tensor([[[100.0, 80.0, 0.7]]], dtype=torch.float64),
                                  (256, 192))
    torch.testing.assert_close(kp[..., :2], out)
    assert kp[0, 0, 2].item() == pytest.approx(0.7)
    # identity crop_trans and the crop equal to the image: normalised full-image coords
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64)
    out2 = G.project_full_to_crop(joints, torch.zeros(1, 3, dtype=torch.float64), 1000.0,
                                  torch.tensor([[720.0, 1280.0]], dtype=torch.float64), eye,
                                  (720, 1280))
    torch.testing.assert_close(out2, torch.tensor([[[2 * 660 / 1280 - 1, 2 * 350 / 720 - 1]]],
                                                  dtype=torch.float64))


def test_project_crop_by_hand():
    # t = (0.1, 0.2, 2*5000/(224*0.9)); a joint at the origin lands at (s*tx, s*ty) normalised
    cam = torch.tensor([[0.9, 0.1, 0.2]])
    out = G.project_crop(torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]]), cam, (224, 224), 224)
    tz = 10000.0 / (224 * 0.9)
    torch.testing.assert_close(out, torch.tensor([[[0.09, 0.18],
                                                   [5000 * 0.6 / tz / 112, 0.18]]]))
    # rect crop: x divided by 96, y by 128, bbox_size 256
    out = G.project_crop(torch.zeros(1, 1, 3), cam, (256, 192), 256.0)
    tz = 10000.0 / (256 * 0.9)
    torch.testing.assert_close(out, torch.tensor([[[5000 * 0.1 / tz / 96, 5000 * 0.2 / tz / 128]]]))


# ---------------------------------------------------------------------------------------------
# Procrustes and metrics

def _similarity(seed, n=30, batch=4):
    rng = np.random.default_rng(seed)
    S1 = rng.normal(size=(batch, n, 3))
    R = _rand_rot(batch, seed=seed).as_matrix()
    s = rng.uniform(0.5, 2.0, size=batch)
    t = rng.normal(size=(batch, 3))
    S2 = s[:, None, None] * np.einsum("bij,bnj->bni", R, S1) + t[:, None]
    return S1, S2, s, R, t


def test_procrustes_recovers_known_transform():
    S1, S2, s, R, t = _similarity(4)
    hat, (s_hat, R_hat, t_hat) = P.compute_similarity_transform_batch(S1, S2, return_transform=True)
    np.testing.assert_allclose(hat, S2, atol=1e-10)
    np.testing.assert_allclose(s_hat, s, atol=1e-10)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-10)
    for dtype in DTYPES:
        hat_t, (st, Rt, tt) = P.compute_similarity_transform_torch(
            torch.tensor(S1, dtype=dtype), torch.tensor(S2, dtype=dtype), return_transform=True)
        assert hat_t.dtype == dtype
        np.testing.assert_allclose(hat_t.numpy(), S2, atol=1e-6 if dtype == torch.float64 else 1e-4)
        np.testing.assert_allclose(Rt.numpy(), R, atol=1e-6 if dtype == torch.float64 else 1e-4)


def test_procrustes_reflection_fix():
    # S2 is a mirror image of S1: the best orthogonal map is a reflection (det -1, exact fit);
    # the answer must be the best *proper* rotation, the one scipy's Kabsch finds.
    rng = np.random.default_rng(5)
    S1 = rng.normal(size=(2, 20, 3)) * np.array([3.0, 2.0, 1.0])
    S2 = S1 * np.array([1.0, 1.0, -1.0]) + 0.01 * rng.normal(size=S1.shape)
    X1 = S1 - S1.mean(1, keepdims=True)
    X2 = S2 - S2.mean(1, keepdims=True)
    U, _, Vt = np.linalg.svd(np.swapaxes(X1, 1, 2) @ X2)
    assert (np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)) < 0).all()  # needs fix
    hat, (s, R, t) = P.compute_similarity_transform_batch(S1, S2, return_transform=True)
    _, (_, Rt, _) = P.compute_similarity_transform_torch(torch.from_numpy(S1), torch.from_numpy(S2),
                                                          return_transform=True)
    for b in range(2):
        assert np.linalg.det(R[b]) == pytest.approx(1.0)
        ref, _ = Rotation.align_vectors(X2[b], X1[b])       # min |X2 - R X1|, proper rotation
        np.testing.assert_allclose(R[b], ref.as_matrix(), atol=1e-8)
        np.testing.assert_allclose(Rt[b].numpy(), ref.as_matrix(), atol=1e-8)
        # optimal scale for that rotation: <R X1, X2> / |X1|^2
        s_ref = np.sum((X1[b] @ R[b].T) * X2[b]) / np.sum(X1[b] ** 2)
        assert s[b] == pytest.approx(s_ref, abs=1e-10)
        assert s[b] > 0


def test_reconstruction_error_and_mpjpe():
    S1, S2, *_ = _similarity(6, n=14, batch=5)
    assert P.reconstruction_error(S1, S2) == pytest.approx(0.0, abs=1e-10)
    assert float(P.reconstruction_error(torch.from_numpy(S1), torch.from_numpy(S2))) == \
        pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(7)
    pred, gt = rng.normal(size=(6, 14, 3)), rng.normal(size=(6, 14, 3))
    pa = P.reconstruction_error(pred, gt, reduction=None)
    mp = P.mpjpe(pred, gt)
    assert pa.shape == (6,) and mp.shape == (6,)
    assert (pa <= mp + 1e-12).all()
    assert P.reconstruction_error(pred, gt, "sum") == pytest.approx(pa.sum())
    assert P.reconstruction_error(pred, gt, "mean") == pytest.approx(pa.mean())
    pa_t = P.reconstruction_error(torch.from_numpy(pred), torch.from_numpy(gt), reduction=None)
    np.testing.assert_allclose(pa_t.numpy(), pa, atol=1e-10)
    # hand case: a (3, 4, 0) offset on every joint -> MPJPE 5; PVE the same function
    g = np.zeros((1, 4, 3))
    assert P.mpjpe(g + np.array([3.0, 4.0, 0.0]), g)[0] == pytest.approx(5.0)
    assert float(P.pve(torch.zeros(1, 2, 3), torch.tensor([[[0.0, 0, 1], [0, 2, 0]]]))) == \
        pytest.approx(1.5)
    with pytest.raises(ValueError):
        P.reconstruction_error(pred, gt, reduction="max")
    with pytest.raises(ValueError, match="same shape"):
        P.compute_similarity_transform_batch(pred, gt[:, :3])
