"""Networks and checkpoints (models/, decisions D3, D4, D9).

Independent facts used: the released state_dict manifests (shared/reference/state_dict/*.tsv);
scipy's rotations (a 6D vector made of a rotation's first two columns maps back to it);
AvgPool2d over the whole 8×6 / 7×7 map equals adaptive pooling; a small gradient step lowers a
smooth loss; per-sample weights must give, for each sample, what a network holding that sample's
weights gives; a file written and read back restores exactly the written tensors.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.spatial.transform import Rotation
from torch.func import functional_call, vmap

import config
from models import (CheckpointError, build_model, load_aux_weights, load_backbone_weights,
                    load_metahmr_checkpoint, write_standin_weights)
from models.regressor import HEAD_LAYERS, HEAD_PARAM_NAMES, LowRankDelta, batched_linear

MANIFESTS = Path("/work/shared/reference/state_dict")
if not MANIFESTS.exists():
    MANIFESTS = Path(__file__).resolve().parents[1] / "shared/reference/state_dict"


def _cliff_inputs(batch=2, h=64, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g), torch.randn(batch, 3, generator=g)


@pytest.fixture(scope="module")
def mean_file(tmp_path_factory):
    """A SPIN-format smpl_mean_params.npz with random rotations (6D), shape and cam."""
    rots = Rotation.random(24, random_state=3)
    path = tmp_path_factory.mktemp("mean") / "smpl_mean_params.npz"
    rng = np.random.default_rng(3)
    six = rots.as_matrix()[:, :, :2].reshape(144)          # rows of the first two columns
    np.savez(path, pose=six, shape=rng.normal(size=10), cam=np.array([0.9, 0.01, -0.02]))
    return path, rots


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_model("cliff", "resnet18", "main").eval()


# -- structure -----------------------------------------------------------------------------------
@pytest.mark.skipif(not MANIFESTS.exists(), reason="state_dict manifests not available")
@pytest.mark.parametrize("name", sorted(p.stem for p in MANIFESTS.glob("*.tsv")))
def test_state_dict_matches_release_manifest(name):
    model, backbone, bbox_type, role = name.split("_")
    with torch.device("meta"):
        net = build_model(model, backbone, role, bbox_type)
    params = {n for n, _ in net.named_parameters()}
    got = [(k, "[" + ",".join(map(str, v.shape)) + "]", "parameter" if k in params else "buffer")
           for k, v in net.state_dict().items()]
    lines = (MANIFESTS / f"{name}.tsv").read_text().splitlines()
    expected = [tuple(line.split("\t")) for line in lines]
    assert got == expected                                   # keys, shapes, kinds and order
    dtypes = {v.dtype for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert dtypes == {torch.float32}
    assert net.n_iter == (10 if role == "main" else 3)
    head_keys = [k for k, *_ in got if k.split(".")[0] in HEAD_LAYERS]
    assert list(net.head_params()) == list(HEAD_PARAM_NAMES) == head_keys


def test_bad_arguments():
    with pytest.raises(ValueError, match="HRNet"):
        build_model("hmr", "hrnet")
    with pytest.raises(ValueError, match="backbone"):
        build_model("cliff", "vgg")
    with pytest.raises(ValueError, match="bbox_type"):
        build_model("cliff", "resnet18", bbox_type="round")


def test_adaptive_pool_equals_released_avgpool(r18):
    for (h, w), kernel in (((256, 192), (8, 6)), ((224, 224), (7, 7))):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            m = r18.maxpool(r18.relu(r18.bn1(r18.conv1(x))))
            m = r18.layer4(r18.layer3(r18.layer2(r18.layer1(m))))
            assert m.shape[-2:] == kernel
            torch.testing.assert_close(r18.extract_features(x), nn.AvgPool2d(kernel)(m).flatten(1))


# -- IEF head ------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis_angle", [False, True])
def test_zero_decoders_give_mean_params(mean_file, tmp_path, axis_angle):
    path, rots = mean_file
    if axis_angle:                                            # 72-d axis-angle mean pose variant
        with np.load(path) as f:
            data = dict(f)
        data["pose"] = rots.as_rotvec().reshape(72)
        path = tmp_path / "mean_aa.npz"
        np.savez(path, **data)
    net = build_model("cliff", "resnet18", "aux", mean_params=path).eval()
    with torch.no_grad():
        for layer in (net.decpose, net.decshape, net.deccam):
            layer.weight.zero_(), layer.bias.zero_()
        img, bbox = _cliff_inputs()
        out = net(img, bbox)
    with np.load(mean_file[0]) as f:
        shape, cam = f["shape"], f["cam"]
    expected_rot = torch.tensor(rots.as_matrix(), dtype=torch.float32)
    for i in range(2):
        torch.testing.assert_close(out.pred_rotmat[i], expected_rot, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.pred_betas[i], torch.tensor(shape, dtype=torch.float32))
        torch.testing.assert_close(out.pred_cam[i], torch.tensor(cam, dtype=torch.float32))
        torch.testing.assert_close(out.pred_pose6d[i], net.init_pose[0])


class _MaskDropout(nn.Module):
    """Dropout (p = 0.5) that records each mask it draws."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def forward(self, x):
        self.masks.append((torch.rand_like(x) >= 0.5).to(x.dtype) * 2.0)
        return x * self.masks[-1]


def test_ief_iterations_written_out(r18):
    """§4.1 by hand: each IEF iteration is [feat, bbox_info, pose, shape, cam] -> fc1 ->
    dropout -> fc2 -> dropout -> residual updates of pose, shape and cam, with fresh masks per
    dropout call (train mode)."""
    net = copy.deepcopy(r18).train()
    net.drop1, net.drop2 = _MaskDropout(), _MaskDropout()
    g = torch.Generator().manual_seed(4)
    feats, bbox = torch.randn(2, net.feature_dim, generator=g), torch.randn(2, 3, generator=g)
    with torch.no_grad():
        for layer in (net.decpose, net.decshape, net.deccam):
            layer.bias.normal_(0, 0.1, generator=g)
        net.init_cam.copy_(torch.tensor([[0.9, 0.01, -0.02]]))
        out = net(features=feats, bbox_info=bbox, n_iter=3)
        assert len(net.drop1.masks) == len(net.drop2.masks) == 3
        pose, shape, cam = (t.expand(2, -1) for t in (net.init_pose, net.init_shape, net.init_cam))
        for m1, m2 in zip(net.drop1.masks, net.drop2.masks):
            x = torch.cat([feats, bbox, pose, shape, cam], 1) @ net.fc1.weight.T + net.fc1.bias
            x = (m1 * x) @ net.fc2.weight.T + net.fc2.bias
            x = m2 * x
            pose = pose + x @ net.decpose.weight.T + net.decpose.bias
            shape = shape + x @ net.decshape.weight.T + net.decshape.bias
            cam = cam + x @ net.deccam.weight.T + net.deccam.bias
    assert not torch.equal(net.drop2.masks[0], net.drop2.masks[1])
    for got, want in zip(out[1:], (shape, cam, pose)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_ief_accumulates_the_residuals(r18):
    """With zero decoder weights and biases b, n IEF iterations give init + n b for the pose
    (6D), the shape and the camera (from non-zero initial values)."""
    net = copy.deepcopy(r18).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("init_pose", "init_shape", "init_cam"):
            getattr(net, name).normal_(0, 1, generator=g)
        b = {}
        for layer in ("decpose", "decshape", "deccam"):
            getattr(net, layer).weight.zero_()
            b[layer] = getattr(net, layer).bias.normal_(0, 0.1, generator=g).clone()
        feats, bbox = torch.randn(2, net.feature_dim, generator=g), torch.randn(2, 3, generator=g)
        for n in (1, 4):
            out = net(features=feats, bbox_info=bbox, n_iter=n)
            for got, init, layer in ((out.pred_pose6d, net.init_pose, "decpose"),
                                     (out.pred_betas, net.init_shape, "decshape"),
                                     (out.pred_cam, net.init_cam, "deccam")):
                torch.testing.assert_close(got, (init + n * b[layer]).expand(2, -1), msg=layer)


def test_features_path_equals_image_path_and_bad_inputs(r18, device):
    r18 = copy.deepcopy(r18).to(device)
    img, bbox = (x.to(device) for x in _cliff_inputs())
    with torch.no_grad():
        a = r18(img, bbox)
        b = r18(features=r18.extract_features(img), bbox_info=bbox)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="bbox_info"):
        r18(img)
    with pytest.raises(ValueError, match="exactly one"):
        r18(img, bbox, features=torch.zeros(2, 512, device=device))
    with pytest.raises(ValueError, match="features must be"):
        r18(features=torch.zeros(2, 100, device=device), bbox_info=bbox)


def test_functional_call_shared_and_per_sample_weights(r18):
    img, bbox = _cliff_inputs()
    feats = r18.extract_features(img).detach()
    own = {k: v.detach() for k, v in r18.head_params().items()}
    ref = r18(features=feats, bbox_info=bbox)
    shared = functional_call(r18, own, args=(), kwargs=dict(features=feats, bbox_info=bbox))
    for x, y in zip(ref, shared):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # per-sample: sample 0 keeps the module's weights, sample 1 gets perturbed weights
    g = torch.Generator().manual_seed(1)
    other = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in own.items()}
    stacked = {k: torch.stack([own[k], other[k]]) for k in own}
    per = functional_call(r18, stacked, args=(), kwargs=dict(features=feats, bbox_info=bbox))
    ref1 = functional_call(r18, other, args=(), kwargs=dict(features=feats, bbox_info=bbox))
    for x, y0, y1 in zip(per, ref, ref1):
        torch.testing.assert_close(x[0], y0[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x[1], y1[1], atol=1e-5, rtol=1e-5)
    # and through vmap over samples (one weight set per sample, shared-shape weights inside)
    one = lambda p, f, b: functional_call(r18, p, args=(), kwargs=dict(  # noqa: E731
        features=f[None], bbox_info=b[None])).pred_cam[0]
    torch.testing.assert_close(vmap(one)(stacked, feats, bbox), per.pred_cam, atol=1e-5, rtol=1e-5)


def test_batched_linear_against_einsum():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((4, 5), (4, 3, 5), (4, 3)))
    torch.testing.assert_close(batched_linear(x, w, b), torch.einsum("bi,boi->bo", x, w) + b)
    torch.testing.assert_close(batched_linear(x, w, b[0]), torch.einsum("bi,boi->bo", x, w) + b[0])
    torch.testing.assert_close(batched_linear(x, w[0], b), x @ w[0].T + b)
    with pytest.raises(ValueError):
        batched_linear(x[:3], w, b)


def test_low_rank_delta_is_a_sum_of_outer_products():
    g = torch.Generator().manual_seed(1)
    u, v, x = (torch.randn(*s, generator=g, dtype=torch.float64)
               for s in ((4, 3, 6), (4, 3, 5), (4, 5)))
    d = LowRankDelta(u, v)
    dense = sum(torch.einsum("bo,bi->boi", u[:, r], v[:, r]) for r in range(3))
    torch.testing.assert_close(d.dense(), dense)
    torch.testing.assert_close(d(x), torch.einsum("boi,bi->bo", dense, x))
    torch.testing.assert_close((d + d).dense(), 2 * dense)


def test_head_delta_low_rank_equals_per_sample_weights(r18):
    """W + u[i]ᵀv[i] given as factors == the dense per-sample weights through functional_call."""
    img, bbox = _cliff_inputs()
    feats = r18.extract_features(img).detach()
    B, g = feats.shape[0], torch.Generator().manual_seed(2)
    head = r18.head_params()
    delta, dense = {}, {}
    for k, w in head.items():
        if k.endswith("weight"):
            u = 1e-3 * torch.randn(B, 2, w.shape[0], generator=g)
            v = torch.randn(B, 2, w.shape[1], generator=g)
            delta[k] = LowRankDelta(u, v)
            dense[k] = w.detach() + delta[k].dense()
        else:
            delta[k] = 1e-3 * torch.randn(B, w.shape[0], generator=g)
            dense[k] = w.detach() + delta[k]
    record = {}
    with torch.no_grad():
        low = r18(features=feats, bbox_info=bbox, head_delta=delta, record=record)
        ref = functional_call(r18, dense, (), dict(features=feats, bbox_info=bbox))
    torch.testing.assert_close(low.pred_cam, ref.pred_cam, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low.pred_pose6d, ref.pred_pose6d, rtol=1e-4, atol=1e-5)
    assert {k: len(v) for k, v in record.items()} == {n: r18.n_iter for n in HEAD_LAYERS}


def test_sgd_step_on_fast_weights(r18):
    img, bbox = _cliff_inputs()
    feats = r18.extract_features(img).detach()
    before = {k: v.clone() for k, v in r18.state_dict().items()}
    params = r18.head_params()

    def loss_of(p):
        out = functional_call(r18, p, args=(), kwargs=dict(features=feats, bbox_info=bbox))
        return (out.pred_cam - 1).pow(2).sum() + out.pred_betas.pow(2).sum(), out

    loss0, out0 = loss_of(params)
    grads = torch.autograd.grad(loss0, list(params.values()), create_graph=True)   # second order
    norm = torch.sqrt(sum(g.detach().pow(2).sum() for g in grads))
    fast = {k: v - (1e-4 / norm) * g for (k, v), g in zip(params.items(), grads)}   # small step
    loss1, out1 = loss_of(fast)
    assert loss1.item() < loss0.item()
    assert not torch.allclose(out0.pred_cam, out1.pred_cam)
    meta_grad = torch.autograd.grad(loss1, params["fc1.weight"])[0]
    assert torch.isfinite(meta_grad).all() and meta_grad.abs().sum() > 0
    for k, v in r18.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in r18.parameters())


def test_two_image_forward_resnet50(device):
    torch.manual_seed(0)
    cliff = build_model("cliff", "resnet", "main", "rect").eval().to(device)
    img, bbox = (x.to(device) for x in _cliff_inputs(2, *cliff.crop_size))
    with torch.no_grad():
        out = cliff(img, bbox)
    assert out.pred_rotmat.shape == (2, 24, 3, 3) and out.pred_betas.shape == (2, 10)
    eye = torch.eye(3, device=device).expand(2, 24, 3, 3)
    torch.testing.assert_close(out.pred_rotmat @ out.pred_rotmat.transpose(-1, -2), eye,
                               atol=1e-5, rtol=0)
    hmr = build_model("hmr", "resnet", "aux", "square").train().to(device)
    assert hmr.crop_size == (224, 224) and not hmr.use_bbox_info
    out = hmr(torch.randn(2, 3, 224, 224, device=device))
    assert out.pred_cam.shape == (2, 3) and torch.isfinite(out.pred_cam).all()


def test_two_image_forward_hrnet(device):
    img, bbox = (x.to(device) for x in _cliff_inputs(2, 64, 64))
    for role, dim in (("main", 720), ("aux", 2048)):
        net = build_model("cliff", "hrnet", role).eval().to(device)
        assert net.feature_dim == dim
        with torch.no_grad():
            f = net.extract_features(img)
            out = net(features=f, bbox_info=bbox)
        assert f.shape == (2, dim) and torch.isfinite(out.pred_rotmat).all()
    with pytest.raises(ValueError, match="divisible by 32"):
        net.extract_features(torch.zeros(1, 3, 64, 48, device=device))


# -- checkpoints ---------------------------------------------------------------------------------
def _perturbed(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.add_(0.05 * torch.randn(v.shape, generator=g))
    return net


def test_metahmr_checkpoint_round_trip(tmp_path, mean_file):
    main = _perturbed(build_model("cliff", "resnet18", "main", mean_params=mean_file[0]), 1).eval()
    aux = _perturbed(build_model("cliff", "resnet18", "aux"), 2).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": main.state_dict(), "model_aux": aux.state_dict(), "epoch": 3}, path)
    main2 = build_model("cliff", "resnet18", "main").eval()
    aux2 = build_model("cliff", "resnet18", "aux").eval()
    ckpt = load_metahmr_checkpoint(path, main2, aux2)
    assert ckpt["epoch"] == 3
    img, bbox = _cliff_inputs()
    with torch.no_grad():
        for a, b in ((main, main2), (aux, aux2)):
            for x, y in zip(a(img, bbox), b(img, bbox)):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
    # DDP-saved file: 'module.' prefixes are removed
    torch.save({"model": {"module." + k: v for k, v in main.state_dict().items()}}, path)
    load_metahmr_checkpoint(path, build_model("cliff", "resnet18", "main"))
    torch.save({"model": {"module." + k: v for k, v in main.state_dict().items()},
                "model_aux": {"module." + k: v for k, v in aux.state_dict().items()}}, path)
    load_metahmr_checkpoint(path, main2, aux2)
    # mismatches name the file and the keys
    sd = dict(main.state_dict())
    del sd["layer2.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["fc2.bias"] = torch.zeros(7)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_metahmr_checkpoint(path, main2)
    msg = str(err.value)
    assert str(path) in msg and "layer2.0.conv1.weight" in msg and "extra.weight" in msg
    assert "fc2.bias" in msg
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="'model'"):
        load_metahmr_checkpoint(path, main2)


def test_standin_files_load_back(tmp_path, mean_file):
    out = write_standin_weights(tmp_path, backbones=("resnet18",), seed=5, mean_params=mean_file[0])
    assert out["backbone/resnet18"] == tmp_path / config.BACKBONE_FILES["resnet18"]
    assert out["aux/cliff/resnet18"] == tmp_path / config.AUX_FILES["cliff", "resnet18"]
    assert out["aux/hmr/resnet18"] == tmp_path / config.AUX_FILES["hmr", "resnet18"]
    assert not list(tmp_path.rglob(".*tmp*"))

    raw = torch.load(out["backbone/resnet18"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("backbone.") for k in raw) and "backbone.fc1.weight" not in raw
    main = build_model("cliff", "resnet18", "main")
    head_before = {k: v.clone() for k, v in main.head_params().items()}
    assert load_backbone_weights(out["backbone/resnet18"], main) == []
    for k, v in raw.items():
        assert torch.equal(main.state_dict()[k[len("backbone."):]], v)
    for k, v in main.head_params().items():
        assert torch.equal(v, head_before[k])

    raw = torch.load(out["aux/cliff/resnet18"], map_location="cpu", weights_only=True)["model"]
    assert "module.encoder.conv1.weight" in raw and "module.fc1.weight" in raw
    aux = build_model("cliff", "resnet18", "aux")
    assert load_aux_weights(out["aux/cliff/resnet18"], aux, "cliff", "resnet18") == []
    assert torch.equal(aux.layer4[1].conv2.weight, raw["module.encoder.layer4.1.conv2.weight"])
    assert torch.equal(aux.init_cam, raw["module.init_cam"])
    # the official CLIFF files hold init_* and load strictly: one missing is an error (only
    # hmr.pt may lack them); a weight of +inf is refused like NaN
    torch.save({"model": {k: v for k, v in raw.items() if k != "module.init_pose"}},
               tmp_path / "no_init.pt")
    with pytest.raises(CheckpointError, match="missing keys.*init_pose"):
        load_aux_weights(tmp_path / "no_init.pt", aux, "cliff", "resnet18")
    inf = {k: v.clone() for k, v in raw.items()}
    inf["module.fc2.weight"][0, 0] = float("inf")
    torch.save({"model": inf}, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"NaN or inf in 1 tensor\(s\) \(fc2.weight\)"):
        load_aux_weights(tmp_path / "inf.pt", aux, "cliff", "resnet18")

    raw = torch.load(out["aux/hmr/resnet18"], map_location="cpu", weights_only=True)["model"]
    assert "init_pose" not in raw
    hmr = build_model("hmr", "resnet18", "aux", mean_params=mean_file[0])
    init = hmr.init_pose.clone()
    missed = load_aux_weights(out["aux/hmr/resnet18"], hmr, "hmr", "resnet18")
    assert missed == ["init_pose", "init_shape", "init_cam"]
    assert torch.equal(hmr.init_pose, init) and torch.equal(hmr.fc1.weight, raw["fc1.weight"])
    del raw["fc1.weight"]                                    # anything else missing is an error
    torch.save({"model": raw}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="fc1.weight"):
        load_aux_weights(tmp_path / "bad.pt", hmr, "hmr", "resnet18")

    # pose_resnet.pth layout: the trunk under 'backbone.' beside the unused keypoint head (its
    # deconv and final layers are ignored); a file saved before BN counted its batches has no
    # num_batches_tracked (tolerated, reported)
    full = torch.load(out["backbone/resnet18"], map_location="cpu", weights_only=True)
    sd = {k: v for k, v in full["state_dict"].items() if not k.endswith("num_batches_tracked")}
    sd["keypoint_head.deconv_layers.0.weight"] = torch.zeros(1)   # (shape: any, unused)
    sd["keypoint_head.final_layer.weight"] = torch.zeros(17, 256, 1, 1)
    sd["keypoint_head.final_layer.bias"] = torch.zeros(17)
    torch.save({"state_dict": sd}, tmp_path / "pose_resnet.pth")
    missed = load_backbone_weights(tmp_path / "pose_resnet.pth", main)
    assert missed and all(k.endswith(".num_batches_tracked") for k in missed)
    assert "bn1.num_batches_tracked" in missed

    bad = torch.load(out["backbone/resnet18"], map_location="cpu", weights_only=True)
    del bad["state_dict"]["backbone.layer3.1.bn2.weight"]
    torch.save(bad, tmp_path / "bad_backbone.pth")
    with pytest.raises(CheckpointError, match="layer3.1.bn2.weight"):
        load_backbone_weights(tmp_path / "bad_backbone.pth", main)
    with pytest.raises(config.MissingFileError):
        load_backbone_weights(tmp_path / "nope.pth", main)


def test_standin_files_load_back_resnet50(tmp_path):
    out = write_standin_weights(tmp_path, backbones=("resnet",), seed=1)
    main, aux, hmr = (build_model(m, "resnet", r) for m, r in
                      (("cliff", "main"), ("cliff", "aux"), ("hmr", "aux")))
    assert load_backbone_weights(out["backbone/resnet"], main) == []
    assert load_aux_weights(out["aux/cliff/resnet"], aux, "cliff", "resnet") == []
    assert load_aux_weights(out["aux/hmr/resnet"], hmr, "hmr", "resnet") == [
        "init_pose", "init_shape", "init_cam"]
    assert not torch.equal(main.conv1.weight, aux.conv1.weight)   # separately seeded files


def test_hrnet_backbone_file_loads_trunk_only(tmp_path):
    from models.backbones import PoseHRNet
    from models.checkpoints import HRNET_TRUNK_PREFIXES

    torch.manual_seed(7)
    donor = PoseHRNet()
    coco = {k: v for k, v in donor.state_dict().items()       # HRNet-COCO file layout
            if k.split(".")[0] in HRNET_TRUNK_PREFIXES
            and not k.startswith(("stage4.2.fuse_layers.1", "stage4.2.fuse_layers.2",
                                  "stage4.2.fuse_layers.3"))}
    coco["final_layer.weight"] = torch.zeros(17, 48, 1, 1)     # COCO heatmaps, ignored
    coco["final_layer.bias"] = torch.zeros(17)
    path = tmp_path / "pose_hrnet_w48_256x192.pth"
    torch.save(coco, path)
    net = build_model("cliff", "hrnet", "main")
    keep = {k: v.clone() for k, v in net.state_dict().items()
            if k.startswith(("fc1", "deccam", "backbone.final_layer", "backbone.downsample_stage_1",
                             "backbone.stage4.2.fuse_layers.3"))}
    missed = load_backbone_weights(path, net)
    assert missed and all(k.startswith("stage4.2.fuse_layers.") for k in missed)
    sd = net.state_dict()
    for k, v in coco.items():
        if not k.startswith("final_layer"):
            assert torch.equal(sd["backbone." + k], v), k
    for k, v in keep.items():                                # head, extras, absent fuse layers
        assert torch.equal(sd[k], v), k
    torch.save({k: v for k, v in coco.items() if k.startswith(("conv1", "bn1"))}, path)
    with pytest.raises(CheckpointError, match="missing keys.*layer1.0.conv1.weight"):
        load_backbone_weights(path, net)
    torch.save({"module." + k: coco[k] for k in ("conv1.weight", "bn1.weight")}, path)
    with pytest.raises(CheckpointError, match="unprefixed"):
        load_backbone_weights(path, net)
    # only stage4.2.fuse_layers.{1,2,3} may be absent: fuse layer 0 of the last module, or
    # another module's fuse layer, missing is a damaged file (one file, both named)
    other = "stage4.1.fuse_layers.1.0.0.0.weight"
    torch.save({k: v for k, v in coco.items()
                if k != other and not k.startswith("stage4.2.fuse_layers.0.")}, path)
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_backbone_weights(path, net)
    assert other in str(err.value) and "stage4.2.fuse_layers.0." in str(err.value)
    # a file without BN batch counters passes the key check (counters tolerated) and then
    # -inf is refused
    inf = {k: v.clone() for k, v in coco.items() if not k.endswith("num_batches_tracked")}
    inf["layer1.0.conv1.weight"][0, 0, 0, 0] = float("-inf")
    torch.save(inf, path)
    with pytest.raises(CheckpointError, match=r"NaN or inf.*layer1\.0\.conv1\.weight"):
        load_backbone_weights(path, net)


def test_channels_last_gives_the_same_network(r18):
    """--memory_format: the same outputs and gradients, the same strict state_dict."""
    import copy
    from utils.runtime import place
    img, bbox = _cliff_inputs()
    cl = place(copy.deepcopy(r18), "cpu", "auto")           # auto = channels_last on the CPU
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not cl.conv1.weight.is_contiguous()
    outs = []
    for net in (r18, cl):
        net.zero_grad(set_to_none=True)
        out = net(img, bbox)
        out.pred_pose6d.square().sum().backward()
        outs.append((out.pred_pose6d.detach(), net.layer1[0].conv1.weight.grad.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-3, atol=1e-5)
    plain = copy.deepcopy(r18)
    plain.load_state_dict(cl.state_dict(), strict=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, r18.state_dict()[k]), k
    assert place(copy.deepcopy(r18), "cpu", "contiguous").conv1.weight.is_contiguous()
    with pytest.raises(ValueError):
        place(r18, "cpu", "nhwc")

