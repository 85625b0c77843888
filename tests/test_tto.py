"""Test-time optimisation (train/tto.py) on the synthetic world."""
from __future__ import annotations

import argparse
import dataclasses
import time

import pytest
import torch

from train.losses import LossWeights
from train.tto import TTOConfig, test_time_optimize
from utils.camera import Camera, smpl_predict


def _tto_cfg(o, **kw):
    ns = argparse.Namespace(**{**vars(o), "after_innerlr": 1e-5, "test_val_step": 3,
                               "adapt_val_step": False, **kw})
    return TTOConfig.from_options(ns)


def test_tto_config_reads_each_option_into_its_field(setup):
    o = setup[0]
    cfg = _tto_cfg(o, inner_lr=1e-3, after_innerlr=2e-4, test_val_step=7, adapt_tol=3e-5,
                   tto_mode="batch", tto_chunk=5, tto_workers=2, use_openpose2d=True,
                   no_use_adam=True, no_inner_step=True, adapt_val_step=True)
    assert (cfg.inner_lr, cfg.after_innerlr, cfg.test_val_step, cfg.adapt_tol) == (
        1e-3, 2e-4, 7, 3e-5)
    assert (cfg.mode, cfg.chunk, cfg.workers) == ("batch", 5, 2)
    assert cfg.use_openpose2d and cfg.no_use_adam and cfg.no_inner_step and cfg.adapt_val_step
    assert isinstance(cfg.weights, LossWeights)
    assert (cfg.weights.openpose, cfg.weights.gt) == (1.0, 0.0)


def test_tto_vectorised_equals_loop_and_batch_mode_single(device_setup):
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    vec = test_time_optimize(model, aux, batch, smpl, cam, _tto_cfg(o, tto_mode="sample",
                                                                     tto_chunk=3))
    loop = test_time_optimize(model, aux, batch, smpl, cam, _tto_cfg(o, tto_mode="sample",
                                                                      tto_chunk=1))
    for k in ("vertices", "cam", "rotmat"):
        torch.testing.assert_close(vec.after[k], loop.after[k], rtol=1e-3, atol=1e-4)
    one = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    b1 = test_time_optimize(model, aux, one, smpl, cam, _tto_cfg(o, tto_mode="batch"))
    torch.testing.assert_close(b1.after["vertices"], loop.after["vertices"][:1])
    # TTO lowers the 2D loss and leaves the model untouched
    assert float(vec.loss_2d_after.mean()) < float(vec.loss_2d_before.mean())
    assert vec.steps.tolist() == [4] * batch["img"].shape[0]


def test_tto_parallel_workers_equal_the_loop(setup):
    """Samples adapted in worker threads (CPU) give the loop's results and leave the thread
    count and the model as they were."""
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    loop = test_time_optimize(model, aux, batch, smpl, cam,
                              _tto_cfg(o, tto_mode="sample", tto_chunk=1, tto_workers=1))
    par = test_time_optimize(model, aux, batch, smpl, cam,
                             _tto_cfg(o, tto_mode="sample", tto_chunk=1, tto_workers=3))
    assert torch.get_num_threads() == threads
    for k in ("vertices", "cam", "rotmat", "joints"):
        torch.testing.assert_close(par.after[k], loop.after[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(par.before[k], loop.before[k], rtol=1e-4, atol=1e-5)
    assert par.steps.tolist() == loop.steps.tolist()
    assert float((par.after["vertices"] - par.before["vertices"]).abs().max()) > 1e-6
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("mode,chunk", [("sample", 1), ("sample", 3), ("batch", 0)])
def test_tto_observer_sees_every_shorter_run(device_setup, mode, chunk):
    """What the observer sees after t updates of one run == the result of a run with
    test_val_step = t - 1 (t = 0: the prediction before TTO)."""
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode=mode, tto_chunk=chunk, test_val_step=2)
    seen = {}
    full = test_time_optimize(model, aux, batch, smpl, cam, cfg,
                              observer=lambda t, pred: seen.__setitem__(t, pred))
    assert sorted(seen) == [0, 1, 2, 3]
    torch.testing.assert_close(seen[0]["vertices"], full.before["vertices"])
    torch.testing.assert_close(seen[3]["vertices"], full.after["vertices"])
    for k in (-1, 0, 1):
        short = test_time_optimize(model, aux, batch, smpl, cam,
                                   dataclasses.replace(cfg, test_val_step=k))
        torch.testing.assert_close(seen[k + 1]["vertices"], short.after["vertices"],
                                   rtol=1e-5, atol=1e-6)
    assert not torch.allclose(seen[1]["vertices"], seen[3]["vertices"])


def test_tto_worker_error_stops_the_batch(setup, monkeypatch):
    """An error in one worker reaches the caller; the groups not yet started do not run."""
    import train.tto as tto
    o, model, aux, batch, smpl = setup
    calls = []

    def failing_group(*args, **kwargs):
        calls.append(1)
        time.sleep(0.2)
        raise RuntimeError("boom")

    monkeypatch.setattr(tto, "_adapt_group", failing_group)
    big = {k: torch.cat([v] * 4) if torch.is_tensor(v) else v for k, v in batch.items()}
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        test_time_optimize(model, aux, big, smpl, Camera.from_options(o),
                           _tto_cfg(o, tto_mode="sample", tto_chunk=1, tto_workers=2))
    assert len(calls) < big["img"].shape[0] and torch.get_num_threads() == threads


def test_tto_early_stop_and_nonfinite(setup):
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    r = test_time_optimize(model, aux, batch, smpl, cam,
                           _tto_cfg(o, tto_mode="sample", adapt_val_step=True, adapt_tol=1e9))
    assert r.steps.tolist() == [2] * batch["img"].shape[0]   # step 0 + one Adam step, then stop
    bad = _tto_cfg(o, tto_mode="sample", after_innerlr=1e30, test_val_step=2)
    r = test_time_optimize(model, aux, batch, smpl, cam, bad)
    assert torch.isfinite(r.after["vertices"]).all()


@pytest.mark.parametrize("kind", ["cliff", "hmr"])
def test_crop_intrinsics_reproduce_the_training_projection(setup, kind):
    """Rendering in the crop (focal, centre of crop_intrinsics) lands where the loss projects."""
    o, model, aux, batch, smpl = setup
    h, w = Camera.from_options(o).crop_h, Camera.from_options(o).crop_w
    cam = Camera(kind, h, w)
    with torch.no_grad():
        out = model(batch["img"], batch["bbox_info"])
        pred = smpl_predict(out, smpl, cam, batch)
    f, c = cam.crop_intrinsics(batch)
    p = pred["joints"] + cam.full_translation(pred["cam"], batch)[:, None]
    px = f[:, None, None] * p[..., :2] / p[..., 2:] + c[:, None]
    norm = torch.stack([2 * px[..., 0] / cam.crop_w - 1, 2 * px[..., 1] / cam.crop_h - 1], -1)
    torch.testing.assert_close(norm, pred["keypoints_2d"], rtol=1e-4, atol=1e-4)


def _released_tto(model, aux, batch, smpl, cam, cfg: TTOConfig, trace: list | None = None):
    """The released per-batch TTO written out from the spec (upstream-behaviour §7.2, §2.5):
    a copy of the network; step 0: one SGD step of inner_lr on the head with the combined
    loss; steps >= 1: Adam of after_innerlr on every weight with the raw 2D loss, stopping once
    |loss_prev - loss| < tol (loss_prev at step 1: the combined step-0 loss); a final forward.
    ``--no_inner_step``: step 0 is an Adam step too; ``--no_use_adam``: steps >= 1 are head SGD
    steps of after_innerlr on the 2D loss, without the stop check.
    Returns (prediction, number of Adam steps); ``trace`` (a list) receives the (loss_prev,
    loss) pair of every stop check."""
    import copy

    from train.losses import INNER_TERMS, pseudo_targets, smpl_loss
    m = copy.deepcopy(model).eval()
    x = (batch["img"], batch["bbox_info"])
    with torch.no_grad():
        tgt = pseudo_targets(smpl_predict(aux(*x), smpl, cam, batch), batch, cam)
    adam = torch.optim.Adam(m.parameters(), lr=cfg.after_innerlr)
    head = [p for n, p in m.named_parameters() if n in m.head_param_names]
    prev, n_adam = None, 0
    for step in range(cfg.test_val_step + 1):
        pred = smpl_predict(m(*x), smpl, cam, batch)
        loss_2d = smpl_loss(pred, tgt, LossWeights(keypoint=1.0), terms=("keypoints_2d",))["total"]
        if (step == 0 and not cfg.no_inner_step) or cfg.no_use_adam:   # SGD on the head
            combined = step == 0 and not cfg.no_inner_step
            loss = smpl_loss(pred, tgt, LossWeights(), terms=INNER_TERMS)["total"] \
                if combined else loss_2d
            grads = torch.autograd.grad(loss, head)
            with torch.no_grad():
                for p, g in zip(head, grads):
                    p -= (cfg.inner_lr if combined else cfg.after_innerlr) * g
            prev = float(loss.detach())
            continue
        adam.zero_grad()
        loss_2d.backward()
        adam.step()
        n_adam += 1
        if trace is not None and cfg.adapt_val_step and prev is not None:
            trace.append((prev, float(loss_2d.detach())))
        if cfg.adapt_val_step and prev is not None and \
                abs(prev - float(loss_2d.detach())) < cfg.adapt_tol:
            break
        prev = float(loss_2d.detach())
    with torch.no_grad():
        return smpl_predict(m(*x), smpl, cam, batch), n_adam


@pytest.mark.parametrize("adapt,variant,n_adam,n_updates", [   # updates: SGD + Adam steps
    (False, {}, 3, 4), (True, {}, 1, 2), (False, {"no_use_adam": True}, 0, 4),
    (False, {"no_inner_step": True}, 4, 4), (True, {"no_inner_step": True}, 2, 2)])
def test_batch_mode_equals_the_released_loop(setup, adapt, variant, n_adam, n_updates):
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode="batch", test_val_step=3, inner_lr=1e-3, after_innerlr=1e-4,
                   adapt_val_step=adapt, adapt_tol=1e9 if adapt else 2e-5, **variant)
    ref, n = _released_tto(model, aux, batch, smpl, cam, cfg)
    ours = test_time_optimize(model, aux, batch, smpl, cam, cfg)
    assert n == n_adam
    assert ours.steps.tolist() == [n_updates] * batch["img"].shape[0]
    for k in ("vertices", "cam", "rotmat"):
        torch.testing.assert_close(ours.after[k], ref[k], rtol=1e-4, atol=1e-5)
    assert float((ours.after["vertices"] - ours.before["vertices"]).abs().max()) > 1e-4


def test_stop_rule_is_on_the_absolute_change_a_rise_keeps_going(setup):
    """D6: stop when |loss_prev - loss| < tol. After a large Adam step the 2D loss rises by far
    more than tol: that is a big change, so neither the released loop nor ours stops."""
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode="batch", test_val_step=3, inner_lr=1e-3, after_innerlr=1e-4,
                   adapt_val_step=True, adapt_tol=1e-3)
    trace = []
    ref, n = _released_tto(model, aux, batch, smpl, cam, cfg, trace)
    assert n == 3                                              # no stop in the released loop
    assert any(loss - prev > cfg.adapt_tol for prev, loss in trace)   # the case: a rise > tol
    ours = test_time_optimize(model, aux, batch, smpl, cam, cfg)
    assert ours.steps.tolist() == [1 + n] * batch["img"].shape[0]
    for k in ("vertices", "cam", "rotmat"):
        torch.testing.assert_close(ours.after[k], ref[k], rtol=1e-4, atol=1e-5)


def test_vectorised_steps_are_per_sample_a_stopped_sample_stays_at_its_stop(device_setup):
    """Sample mode under vmap: a sample without 2D evidence (all confidences 0: its 2D loss is
    0 at every step) stops after 2 Adam steps while the others run on; each sample gets the
    step count and the prediction of the released loop run on that sample alone."""
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["keypoints"][1, :, 2] = 0.0
    cfg = _tto_cfg(o, tto_mode="sample", tto_chunk=3, test_val_step=3, inner_lr=1e-3,
                   after_innerlr=1e-4, adapt_val_step=True, adapt_tol=1e-7)
    vec = test_time_optimize(model, aux, batch, smpl, cam, cfg)
    expect = []
    for i in range(batch["img"].shape[0]):
        one = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
        ref, n = _released_tto(model, aux, one, smpl, cam, cfg)
        expect.append(1 + n)                                   # step 0 + the Adam steps
        for k in ("vertices", "cam"):
            torch.testing.assert_close(vec.after[k][i:i + 1], ref[k], rtol=1e-3, atol=1e-4)
    assert expect == [4, 3, 4]                 # the case: only sample 1 stops early
    assert vec.steps.tolist() == expect


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_released_stop_rule_compares_the_step0_combined_loss_first(device_setup, mode):
    """inner_lr 0 and a negligible Adam lr: the 2D loss does not move, but at step 1 the rule
    compares it with the combined step-0 loss, so it stops after the 2nd Adam step."""
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode=mode, test_val_step=5, inner_lr=0.0, after_innerlr=1e-11,
                   adapt_val_step=True)
    r = test_time_optimize(model, aux, batch, smpl, cam, cfg)
    assert r.steps.tolist() == [3] * batch["img"].shape[0]      # step 0 + 2 Adam steps
    _, n_adam = _released_tto(model, aux, batch, smpl, cam, dataclasses.replace(cfg))
    assert n_adam == 2
    # no check without Adam
    r = test_time_optimize(model, aux, batch, smpl, cam, dataclasses.replace(cfg, no_use_adam=True))
    assert r.steps.tolist() == [6] * batch["img"].shape[0]


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_no_tto_is_the_plain_network(device_setup, mode):
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    r = test_time_optimize(model, aux, batch, smpl, cam,
                           _tto_cfg(o, tto_mode=mode, test_val_step=-1))
    with torch.no_grad():
        plain = smpl_predict(model(batch["img"], batch["bbox_info"]), smpl, cam, batch)
    for k in ("vertices", "cam", "rotmat", "keypoints_2d"):
        torch.testing.assert_close(r.after[k], plain[k], rtol=1e-5, atol=1e-6)
    assert r.steps.tolist() == [0] * batch["img"].shape[0]
    torch.testing.assert_close(r.loss_2d_after, r.loss_2d_before)


def test_diverging_samples_are_counted_and_keep_the_last_finite_prediction(device_setup):
    o, model, aux, batch, smpl = device_setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode="sample", after_innerlr=1e30, test_val_step=2)
    r = test_time_optimize(model, aux, batch, smpl, cam, cfg)
    assert r.nonfinite.all() and torch.isfinite(r.after["vertices"]).all()
    step0 = test_time_optimize(model, aux, batch, smpl, cam,
                               dataclasses.replace(cfg, test_val_step=0))
    assert not step0.nonfinite.any()
    torch.testing.assert_close(r.after["vertices"], step0.after["vertices"])
    torch.testing.assert_close(r.loss_2d_after, step0.loss_2d_after)
