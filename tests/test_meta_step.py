"""One training iteration (train/meta_step.py MetaStep) against the method written out with plain
autograd: the outer loss at the adapted weights, x60, its gradients, the optimizer's groups,
accumulated per-sample inner steps with dropout, the aux network's mode, an HMR run."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch.func import functional_call

from train.inner import inner_adapt, run_head
from train.losses import INNER_TERMS, LossWeights, gt_targets, pseudo_targets, smpl_loss
from train.meta_step import MetaStep, build_optimizer
from utils.camera import Camera, smpl_predict

CPU = torch.device("cpu")


def _step_options(o, **kw):
    return argparse.Namespace(**{**vars(o), "first_order": True, "inner_step": 1,
                                 "tto_mode": "batch", "aux_mode": None, "amp": "off", **kw})


def _fresh(setup):
    o, model, aux, batch, smpl = setup
    return o, copy.deepcopy(model).eval(), copy.deepcopy(aux).eval(), batch, smpl


def test_first_order_outer_loss_is_taken_at_the_adapted_weights(setup):
    """MetaStep's loss and gradients == 60 x the GT loss at W' = W - lr dL_inner/dW, the update
    a constant (FOMAML), written out with functional_call and autograd."""
    o, model, aux, batch, smpl = _fresh(setup)
    lr = 1e-4
    opts = _step_options(o, inner_lr=lr)
    step = MetaStep(opts, model, aux, smpl, build_optimizer(opts, model, aux), CPU)
    cam, w = Camera.from_options(opts), LossWeights.from_options(opts)
    x = (batch["img"], batch["bbox_info"])
    with torch.no_grad():
        tgt = pseudo_targets(smpl_predict(aux(*x), smpl, cam, batch), batch, cam)
        pose = batch["pose"]
        gt_v = smpl(betas=batch["betas"], body_pose=pose[:, 3:], global_orient=pose[:, :3]).vertices
    gt = gt_targets(batch, gt_v, cam)
    head = model.head_params()
    inner = smpl_loss(smpl_predict(model(*x), smpl, cam, batch), tgt, w, terms=INNER_TERMS)
    g = torch.autograd.grad(inner["total"], list(head.values()))
    fast = {k: v - lr * gi.detach() for (k, v), gi in zip(head.items(), g)}
    ref = 60.0 * smpl_loss(smpl_predict(functional_call(model, fast, x), smpl, cam, batch),
                           gt, w)["total"]
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    with torch.no_grad():
        plain = 60.0 * smpl_loss(smpl_predict(model(*x), smpl, cam, batch), gt, w)["total"]

    out = step.forward(batch)
    assert torch.isfinite(ref)
    torch.testing.assert_close(out["_loss"], ref, rtol=1e-4, atol=1e-5)
    assert abs(float(plain - ref.detach())) > 1e-3 * float(ref.detach())   # the inner step matters
    out["_loss"].backward()
    for (name, p), r in zip(model.named_parameters(), ref_grads):
        r = torch.zeros_like(p) if r is None else r
        torch.testing.assert_close(p.grad, r, rtol=1e-3, atol=1e-5 * float(r.abs().max()) + 1e-9,
                                   msg=name)
    assert all(p.grad is None for p in aux.parameters())     # frozen under --first_order


@pytest.mark.parametrize("no_learn_loss", [False, True])
def test_optimizer_groups_and_learning_rates(setup, no_learn_loss):
    o, model, aux, _, _ = _fresh(setup)
    opts = _step_options(o, outer_lr=3e-4, aux_lr=2e-6, beta1=0.8, beta2=0.99, eps_adam=1e-7,
                         no_learn_loss=no_learn_loss)
    groups = build_optimizer(opts, model, aux).param_groups
    assert len(groups) == (1 if no_learn_loss else 2)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups[0]["params"]) == ids(model.parameters())
    assert (groups[0]["lr"], groups[0]["betas"], groups[0]["eps"]) == (3e-4, (0.8, 0.99), 1e-7)
    if not no_learn_loss:
        assert ids(groups[1]["params"]) == ids(aux.parameters()) and groups[1]["lr"] == 2e-6
    scaled = build_optimizer(opts, model, aux, lr_scale=0.0).param_groups
    assert all(gr["lr"] == 0.0 for gr in scaled)


class _ReplayDropout(torch.nn.Module):
    """Dropout whose masks are drawn once and can be replayed, sliced to some samples."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.masks, self.replay, self.rows = p, [], None, slice(None)

    def forward(self, x):
        if self.replay is None:
            m = (torch.rand_like(x) >= self.p).float() / (1 - self.p)
            self.masks.append(m)
        else:
            m = self.replay.pop(0)[self.rows]
        return x * m


@pytest.mark.parametrize("dropout", [False, True])
def test_accumulated_per_sample_inner_steps_match_per_sample_autograd(setup, dropout):
    """--inner_step 2 in sample mode == each sample adapted alone by plain autograd (two SGD
    steps on its own inner loss), with the same dropout masks when dropout is active."""
    o, model, aux, batch, smpl = _fresh(setup)
    cam, w, lr, B = Camera.from_options(o), LossWeights(), 1e-4, batch["img"].shape[0]
    torch.manual_seed(1)
    feats = torch.randn(B, model.feature_dim)
    with torch.no_grad():
        tgt = pseudo_targets(smpl_predict(aux(batch["img"], batch["bbox_info"]), smpl, cam,
                                          batch), batch, cam)
    drops = [_ReplayDropout(0.3), _ReplayDropout(0.3)] if dropout else []
    if dropout:
        model.drop1, model.drop2 = drops
    fast, _ = inner_adapt(model, feats, batch["bbox_info"], batch, tgt, smpl, cam, w, lr, 2,
                          "sample", True)
    ours = run_head(model, feats, batch["bbox_info"], fast)
    masks = [list(d.masks) for d in drops]
    for i in range(B):
        one = {k: v[i:i + 1] for k, v in batch.items() if torch.is_tensor(v)}
        t1 = {k: v[i:i + 1] for k, v in tgt.items()}
        for d, m in zip(drops, masks):
            d.replay, d.rows = list(m), slice(i, i + 1)
        params = {k: v.detach().clone() for k, v in model.head_params().items()}
        kw = {"features": feats[i:i + 1], "bbox_info": batch["bbox_info"][i:i + 1]}
        for _ in range(2):
            p = {k: v.requires_grad_(True) for k, v in params.items()}
            pred = smpl_predict(functional_call(model, p, (), kw), smpl, cam, one)
            loss = smpl_loss(pred, t1, w, terms=INNER_TERMS)["total"]
            g = torch.autograd.grad(loss, list(p.values()))
            params = {k: (v - lr * gk).detach() for (k, v), gk in zip(p.items(), g)}
        with torch.no_grad():
            ref = functional_call(model, params, (), kw)
        assert all(not d.replay for d in drops)               # every mask used, in order
        assert all(bool(torch.isfinite(t).all()) for t in ref[:3])
        for a, b in zip(ours[:3], ref[:3]):
            torch.testing.assert_close(a[i:i + 1].detach(), b, rtol=1e-4, atol=1e-5)
    moved = functional_call(model, dict(model.head_params()), (), {
        "features": feats, "bbox_info": batch["bbox_info"]}) if not dropout else None
    if moved is not None:
        assert float((moved[2] - ours[2]).detach().abs().max()) > 1e-5   # the head did change


@pytest.mark.parametrize("first_order,aux_mode,train_mode", [
    (True, None, False), (False, None, True), (True, "train", True), (False, "eval", False)])
def test_aux_network_mode(setup, first_order, aux_mode, train_mode):
    """Decisions D5: eval under --first_order, train (as released) under second order,
    --aux_mode overrides."""
    o, model, aux, batch, smpl = _fresh(setup)
    aux.train(not train_mode)
    opts = _step_options(o, first_order=first_order, aux_mode=aux_mode)
    seen = []
    aux.register_forward_pre_hook(lambda m, args: seen.append((m.training,
                                                                torch.is_grad_enabled())))
    MetaStep(opts, model, aux, smpl, build_optimizer(opts, model, aux), CPU).forward(batch)
    # D5: under --first_order the aux network runs under no_grad (frozen), else with gradients
    assert seen == [(train_mode, not first_order)]
    assert all(p.requires_grad != first_order for p in aux.parameters())


@pytest.mark.parametrize("first_order", [False, True])
def test_no_inner_step_is_plain_supervised_training(setup, first_order):
    """--no_inner (inner_step 0): the baseline never runs (nor drifts the BN statistics of) the
    aux network, which gets no gradient; the loss is 60 x the GT loss at the loaded weights."""
    o, model, aux, batch, smpl = _fresh(setup)
    opts = _step_options(o, first_order=first_order, inner_step=0)
    seen = []
    aux.register_forward_pre_hook(lambda m, args: seen.append(m))
    step = MetaStep(opts, model, aux, smpl, build_optimizer(opts, model, aux), CPU)
    out = step.forward(batch)
    assert seen == [] and not any(p.requires_grad for p in aux.parameters())
    cam = Camera.from_options(opts)
    with torch.no_grad():
        pose = batch["pose"]
        gt_v = smpl(betas=batch["betas"], body_pose=pose[:, 3:], global_orient=pose[:, :3]).vertices
        pred = smpl_predict(run_head(model, model.extract_features(batch["img"]),
                                     batch["bbox_info"]), smpl, cam, batch)
        want = 60.0 * smpl_loss(pred, gt_targets(batch, gt_v, cam), LossWeights.from_options(opts),
                                mode="batch")["total"]
    torch.testing.assert_close(out["_loss"].detach(), want, rtol=1e-5, atol=0)


def test_hmr_training_run(synthetic_root, tmp_path):
    """train.py --model hmr: the crop camera, a few steps, the loss of a fixed batch falls."""
    from torch.utils.data import default_collate

    from train.trainer import Trainer
    from utils.options import parse_train
    tr = Trainer(parse_train([
        "--name", "hmr", "--log_dir", str(tmp_path), "--data_root", str(synthetic_root),
        "--model", "hmr", "--backbone", "resnet18", "--bbox_type", "square", "--crop_scale",
        "0.25", "--batch_size", "4", "--num_workers", "0", "--max_steps", "8",
        "--outer_lr", "1e-4", "--first_order", "--no_pretrained_backbone", "--device", "cpu",
        "--test_epochs", "1000", "--save_epochs", "1000"]))
    assert tr.run_step.camera.kind == "hmr" and not tr.model.use_bbox_info
    batch = default_collate([tr.dataset[i] for i in range(4)])

    def fixed_loss() -> float:
        tr.model.eval()
        with torch.no_grad():
            pose = batch["pose"]
            gt_v = tr.smpl(betas=batch["betas"], body_pose=pose[:, 3:],
                           global_orient=pose[:, :3]).vertices
            pred = smpl_predict(tr.model(batch["img"]), tr.smpl, tr.run_step.camera, batch)
            return float(smpl_loss(pred, gt_targets(batch, gt_v, tr.run_step.camera))["total"])

    before = fixed_loss()
    tr.train()
    assert len(tr.history) == 8 and all(torch.isfinite(x) for x in tr.history)
    assert fixed_loss() < before


def test_amp_runs_only_the_backbones_in_low_precision(setup):
    """--amp (bf16 here: CPU autocast has it): the backbones' features are computed in bf16;
    heads, inner step, SMPL and losses run in float32 on them, so the loss equals a float32 step
    fed those same features (a head in bf16 would round the inner update away, lr ~1e-5)."""
    o, model, aux, batch, smpl = _fresh(setup)
    opts = _step_options(o, inner_lr=1e-4)
    step = MetaStep(opts, model, aux, smpl, build_optimizer(opts, model, aux), CPU)
    step.amp_dtype = torch.bfloat16
    amp_loss = step.forward(batch)["_loss"]
    feats = {}
    for net in (model, aux):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            f = net.extract_features(batch["img"])
        assert f.dtype == torch.bfloat16
        feats[id(net)] = f.float()
    step.amp_dtype = None
    for net in (model, aux):
        net.extract_features = lambda img, f=feats[id(net)]: f   # the bf16 features, in float32
    ref = step.forward(batch)["_loss"]
    assert amp_loss.dtype == torch.float32
    torch.testing.assert_close(amp_loss, ref, rtol=1e-6, atol=0)


def _options_probe_argv(root, log_dir, *extra):
    return ["--name", "probe", "--log_dir", str(log_dir), "--data_root", str(root), "--model",
            "cliff", "--backbone", "resnet18", "--bbox_type", "rect", "--crop_scale", "0.25",
            "--num_workers", "0", "--first_order", "--no_pretrained_backbone", "--device",
            "cpu", *extra]


def test_max_steps_ending_an_epoch_runs_the_epoch_end(synthetic_root, tmp_path, monkeypatch):
    """--max_steps reached on the last batch of an epoch: that epoch is complete, so its end
    runs as without --max_steps (epoch counted, --test_epochs evaluation, epoch-end save)."""
    from train.trainer import Trainer
    from utils.options import parse_train
    tested = []
    monkeypatch.setattr(Trainer, "test_and_save", lambda self: tested.append(self.epoch))
    tr = Trainer(parse_train(_options_probe_argv(
        synthetic_root, tmp_path, "--batch_size", "4", "--max_steps", "1", "--test_epochs", "1")))
    assert len(tr.dataset) // 4 == 1      # one batch per epoch: the only step ends epoch 0
    tr.train()
    assert (tr.step, tr.epoch, tested) == (1, 1, [1])
    saved = torch.load(tmp_path / "probe" / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    assert (saved["epoch"], saved["batch_idx"], saved["dataset_perm"]) == (1, 0, None)


def test_checkpoint_without_resume_is_refused(synthetic_root, tmp_path):
    """train.py --checkpoint names the file to --resume from; without --resume it would be
    silently ignored (training from scratch), so it is a one-line error, before any folder."""
    from train.trainer import Trainer
    from utils.errors import OptionError
    from utils.options import parse_train
    with pytest.raises(OptionError, match="--checkpoint .*--resume.*--pretrained_checkpoint"):
        Trainer(parse_train(_options_probe_argv(synthetic_root, tmp_path, "--checkpoint",
                                                str(tmp_path / "c.pt"))))
    assert not (tmp_path / "probe").exists()


def test_h36m_gt_on_another_test_set_is_refused(synthetic_root, tmp_path):
    """eval: --h36m_gt mocap only changes the H36M ground truth; on 3DPW it would be silently
    ignored, so it is a one-line error (before the checkpoint is read)."""
    from train.evaluation import main
    from utils.errors import OptionError
    from utils.options import parse_eval
    o = parse_eval("cliff", ["--checkpoint", str(tmp_path / "none.pt"), "--data_root",
                             str(synthetic_root), "--dataset", "3dpw", "--h36m_gt", "mocap",
                             "--device", "cpu"])
    with pytest.raises(OptionError, match="--h36m_gt mocap applies to H36M"):
        main(o)
