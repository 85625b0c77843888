"""The meta inner step and test-time optimisation (train/meta.py) on the synthetic world."""
from __future__ import annotations

import argparse
import dataclasses
import time

import pytest
import torch

from config import DataPaths
from models import build_model
from train.losses import LossWeights, smpl_loss
from train.meta import (INNER_TERMS, Camera, TTOConfig, inner_adapt, pseudo_targets, run_head,
                        smpl_predict, test_time_optimize)
from utils.options import train_parser


def _options(root, **kw):
    o = train_parser().parse_args(["--data_root", str(root), "--backbone", "resnet18",
                                   "--bbox_type", "rect", "--model", kw.pop("model", "cliff")])
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def _batch(root, options, n=3, dataset="3dpw"):
    from datasets import BaseDataset
    ds = BaseDataset(options, dataset, is_train=False, paths=DataPaths(root))
    items = [ds[i] for i in range(n)]
    return torch.utils.data.default_collate(items)


@pytest.fixture(scope="module")
def setup(synthetic_root, smpl_neutral):
    torch.manual_seed(0)
    o = _options(synthetic_root)
    mean = DataPaths(synthetic_root).smpl_mean_params()
    model = build_model("cliff", "resnet18", "main", "rect", mean).eval()
    aux = build_model("cliff", "resnet18", "aux", "rect", mean).eval()
    # give the heads a non-trivial output so the losses have real gradients
    with torch.no_grad():
        for m in (model, aux):
            for name in ("decpose", "decshape", "deccam"):
                getattr(m, name).weight.normal_(0, 1e-3)
    batch = _batch(synthetic_root, o)
    return o, model, aux, batch, smpl_neutral


def _inner(setup, mode, idx=None, lr=1e-5, first_order=True):
    o, model, aux, batch, smpl = setup
    if idx is not None:
        batch = {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()}
    cam = Camera.from_options(o)
    with torch.no_grad():
        aux_pred = smpl_predict(aux(batch["img"], batch["bbox_info"]), smpl, cam, batch)
        feats = model.extract_features(batch["img"])
    targets = pseudo_targets(aux_pred, batch, cam)
    fast, info = inner_adapt(model, feats, batch["bbox_info"], batch, targets, smpl, cam,
                             LossWeights(), lr, 1, mode, first_order)
    return fast, info, feats, targets, batch, cam


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_inner_step_changes_only_head_and_lowers_loss(setup, mode):
    o, model, aux, _, smpl = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, info, feats, targets, batch, cam = _inner(setup, mode)
    names = set(fast.delta if mode == "sample" else fast)
    assert names == set(model.head_param_names)
    for k, v in model.state_dict().items():      # the module itself is untouched
        assert torch.equal(v, before[k]), k

    def loss_at(params):
        with torch.no_grad():
            p = smpl_predict(run_head(model, feats, batch["bbox_info"], params), smpl, cam, batch)
            t = smpl_loss(p, targets, LossWeights(), mode=mode, terms=INNER_TERMS)["total"]
        return t.sum()

    assert loss_at(fast) < loss_at(None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_inner_step_under_autocast_keeps_the_float32_update(setup, mode, dtype):
    """Under low-precision autocast the fast-weight update (lr 1e-5 x gradient, far below
    float16's resolution) is built in float32 and matches the float32 step."""
    ref, *_ = _inner(setup, mode)
    try:
        with torch.autocast("cpu", dtype=dtype):
            low, info, *_ = _inner(setup, mode)
    except RuntimeError as e:       # a torch build without CPU autocast for this dtype
        pytest.skip(str(e))
    assert torch.isfinite(info["inner_grad_norm"])
    head = setup[1].head_params()
    for k in head:
        if mode == "sample":
            want, got = ref.dense(k), low.dense(k)
        else:
            want, got = ref[k] - head[k], low[k] - head[k]
        got, want = got.detach(), want.detach()
        assert got.dtype == torch.float32 and float(want.norm()) > 0
        assert float((got - want).norm() / want.norm()) < 0.15, k   # low-precision gradients


def test_sample_mode_equals_batch_mode_one_sample_at_a_time(setup):
    fast_s, *_ = _inner(setup, "sample")
    model = setup[1]
    head = model.head_params()
    for i in range(fast_s.dense("fc1.weight").shape[0]):
        fast_b, *_ = _inner(setup, "batch", idx=slice(i, i + 1))
        for k in fast_b:   # per-sample weights W + delta[i] = the batch step on sample i alone
            torch.testing.assert_close(head[k] + fast_s.dense(k)[i], fast_b[k], rtol=1e-4,
                                       atol=1e-7)


def _reference_inner(model, feats, batch, targets, smpl, cam, lr, create_graph):
    """The batch-mode inner step written plainly: W - lr dL/dW by autograd on the weights."""
    head = dict(model.head_params())
    pred = smpl_predict(run_head(model, feats, batch["bbox_info"], head), smpl, cam, batch)
    loss = smpl_loss(pred, targets, LossWeights(), mode="batch", terms=INNER_TERMS)["total"]
    grads = torch.autograd.grad(loss, list(head.values()), create_graph=create_graph)
    return {k: w - lr * g for (k, w), g in zip(head.items(), grads)}


def test_inner_step_matches_plain_autograd(setup):
    """Batch-mode fast weights = W - lr dL/dW from autograd on W itself."""
    fast, _, feats, targets, batch, cam = _inner(setup, "batch", lr=1e-3)
    o, model, aux, _, smpl = setup
    ref = _reference_inner(model, feats, batch, targets, smpl, cam, 1e-3, create_graph=False)
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_second_order_meta_gradient_matches_plain_autograd(setup, mode):
    """d(outer loss at the fast weights)/dW through the inner step (MAML) equals the
    gradient of the plainly written inner step (per sample: its average over samples alone)."""
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    lr = 1e-4
    with torch.no_grad():
        aux_pred = smpl_predict(aux(batch["img"], batch["bbox_info"]), smpl, cam, batch)
        feats = model.extract_features(batch["img"])
    targets = pseudo_targets(aux_pred, batch, cam)
    head = dict(model.head_params())

    def outer(params, idx):
        b = {k: v[idx] for k, v in batch.items() if torch.is_tensor(v)}
        p = smpl_predict(run_head(model, feats[idx], b["bbox_info"], params), smpl, cam, b)
        return p["keypoints_2d"].square().sum()

    B = feats.shape[0]
    fast, _ = inner_adapt(model, feats, batch["bbox_info"], batch, targets, smpl, cam,
                          LossWeights(), lr, 1, mode, first_order=False)
    got = torch.autograd.grad(outer(fast, slice(None)), list(head.values()))
    groups = [slice(None)] if mode == "batch" else [slice(i, i + 1) for i in range(B)]
    want = [torch.zeros_like(w) for w in head.values()]
    for idx in groups:
        b = {k: v[idx] for k, v in batch.items() if torch.is_tensor(v)}
        t = {k: v[idx] for k, v in targets.items()}
        ref = _reference_inner(model, feats[idx], b, t, smpl, cam, lr, create_graph=True)
        for acc, g in zip(want, torch.autograd.grad(outer(ref, idx), list(head.values()))):
            acc += g
    first = torch.autograd.grad(outer(head, slice(None)), list(head.values()))
    assert any(float((g - f).abs().max()) > 1e-6 * float(f.abs().max())
               for g, f in zip(got, first))   # the inner step matters at this lr
    for g, w in zip(got, want):   # float32 sums in another order: relative to the scale
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5 * float(w.abs().max()))


def test_second_order_gradient_reaches_aux(setup):
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    aux.zero_grad(set_to_none=True)
    aux.requires_grad_(True)
    try:
        aux_pred = smpl_predict(aux(batch["img"], batch["bbox_info"]), smpl, cam, batch)
        feats = model.extract_features(batch["img"])
        targets = pseudo_targets(aux_pred, batch, cam, detach=False)
        fast, _ = inner_adapt(model, feats, batch["bbox_info"], batch, targets, smpl, cam,
                              LossWeights(), 1e-5, 1, "sample", first_order=False)
        p = smpl_predict(run_head(model, feats, batch["bbox_info"], fast), smpl, cam, batch)
        p["keypoints_2d"].square().mean().backward()
        g = [q.grad for q in aux.head_params().values()]
        assert all(x is not None for x in g) and sum(float(x.abs().sum()) for x in g) > 0
    finally:
        aux.requires_grad_(False)
        aux.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)


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
    assert (cfg.mode, cfg.chunk, cfg.workers, cfg.trace) == ("batch", 5, 2, False)
    assert cfg.use_openpose2d and cfg.no_use_adam and cfg.no_inner_step and cfg.adapt_val_step
    assert isinstance(cfg.weights, LossWeights)
    assert (cfg.weights.openpose, cfg.weights.gt) == (1.0, 0.0)


def test_tto_vectorised_equals_loop_and_batch_mode_single(setup):
    o, model, aux, batch, smpl = setup
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
def test_tto_trace_gives_every_shorter_run(setup, mode, chunk):
    """trace[k + 1] of one run of n steps == the result of a run with test_val_step = k."""
    o, model, aux, batch, smpl = setup
    cam = Camera.from_options(o)
    cfg = _tto_cfg(o, tto_mode=mode, tto_chunk=chunk, test_val_step=2)
    full = test_time_optimize(model, aux, batch, smpl, cam, dataclasses.replace(cfg, trace=True))
    assert len(full.trace) == 4
    torch.testing.assert_close(full.trace[0]["vertices"], full.before["vertices"])
    torch.testing.assert_close(full.trace[-1]["vertices"], full.after["vertices"])
    for k in (0, 1):
        short = test_time_optimize(model, aux, batch, smpl, cam,
                                   dataclasses.replace(cfg, test_val_step=k))
        assert short.trace is None
        torch.testing.assert_close(full.trace[k + 1]["vertices"], short.after["vertices"],
                                   rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full.trace[1]["vertices"], full.trace[3]["vertices"])


def test_tto_worker_error_stops_the_batch(setup, monkeypatch):
    """An error in one worker reaches the caller; the groups not yet started do not run."""
    import train.meta as meta
    o, model, aux, batch, smpl = setup
    calls = []

    def failing_group(*args, **kwargs):
        calls.append(1)
        time.sleep(0.2)
        raise RuntimeError("boom")

    monkeypatch.setattr(meta, "_tto_group", failing_group)
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
    cam = Camera(kind, 256, 192)
    with torch.no_grad():
        out = model(batch["img"], batch["bbox_info"])
        pred = smpl_predict(out, smpl, cam, batch)
    f, c = cam.crop_intrinsics(batch)
    p = pred["joints"] + cam.full_translation(pred["cam"], batch)[:, None]
    px = f[:, None, None] * p[..., :2] / p[..., 2:] + c[:, None]
    norm = torch.stack([2 * px[..., 0] / 192 - 1, 2 * px[..., 1] / 256 - 1], -1)
    torch.testing.assert_close(norm, pred["keypoints_2d"], rtol=1e-4, atol=1e-4)
