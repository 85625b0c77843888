"""The training inner step (train/inner.py) on the synthetic world, against plain autograd."""
from __future__ import annotations

import pytest
import torch

from train.inner import inner_adapt, run_head
from train.losses import INNER_TERMS, LossWeights, pseudo_targets, smpl_loss
from utils.camera import Camera, smpl_predict


def _inputs(setup, idx=None):
    """(batch, camera, features, pseudo-targets) of the setup batch (rows ``idx``), no graph."""
    o, model, aux, batch, smpl = setup
    if idx is not None:
        batch = {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()}
    cam = Camera.from_options(o)
    with torch.no_grad():
        aux_pred = smpl_predict(aux(batch["img"], batch["bbox_info"]), smpl, cam, batch)
        feats = model.extract_features(batch["img"])
    return batch, cam, feats, pseudo_targets(aux_pred, batch, cam)


def _inner(setup, mode, idx=None, lr=1e-5, first_order=True):
    o, model, aux, _, smpl = setup
    batch, cam, feats, targets = _inputs(setup, idx)
    fast, info = inner_adapt(model, feats, batch["bbox_info"], batch, targets, smpl, cam,
                             LossWeights(), lr, 1, mode, first_order)
    return fast, info, feats, targets, batch, cam


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_inner_step_changes_only_head_and_lowers_loss(device_setup, mode):
    o, model, aux, _, smpl = device_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, info, feats, targets, batch, cam = _inner(device_setup, mode)
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
def test_inner_step_under_autocast_keeps_the_float32_update(device_setup, mode, dtype):
    """Under low-precision autocast (--amp; the test device's) the fast-weight update (lr 1e-5
    x gradient, far below float16's resolution) is built in float32 and matches the float32
    step."""
    setup = device_setup
    ref, *_ = _inner(setup, mode)
    try:
        with torch.autocast(setup[3]["img"].device.type, dtype=dtype):
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


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_second_order_meta_gradient_reaches_the_features(setup, mode):
    """D4: without --first_order the graph through the features is kept. The outer pass sees
    the features detached, so their meta-gradient flows through the inner step alone; it equals
    that of the plainly written inner step (autograd, create_graph=True; per sample: summed
    over the samples adapted alone)."""
    o, model, aux, _, smpl = setup
    batch, cam, feats0, targets = _inputs(setup)
    feats, lr, B = feats0.clone().requires_grad_(True), 1e-4, feats0.shape[0]

    def outer(params, idx):
        b = {k: v[idx] for k, v in batch.items() if torch.is_tensor(v)}
        p = smpl_predict(run_head(model, feats0[idx], b["bbox_info"], params), smpl, cam, b)
        return p["keypoints_2d"].square().sum()

    fast, _ = inner_adapt(model, feats, batch["bbox_info"], batch, targets, smpl, cam,
                          LossWeights(), lr, 1, mode, first_order=False)
    got, = torch.autograd.grad(outer(fast, slice(None)), feats, allow_unused=True)
    got = torch.zeros_like(feats) if got is None else got
    want = torch.zeros_like(feats)
    for idx in [slice(None)] if mode == "batch" else [slice(i, i + 1) for i in range(B)]:
        b = {k: v[idx] for k, v in batch.items() if torch.is_tensor(v)}
        t = {k: v[idx] for k, v in targets.items()}
        ref = _reference_inner(model, feats[idx], b, t, smpl, cam, lr, create_graph=True)
        want += torch.autograd.grad(outer(ref, idx), feats)[0]
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5 * float(want.abs().max()))
    model.zero_grad(set_to_none=True)


def _alone(setup):
    """Each sample of the setup batch alone at the module's weights: its inner loss (the batch
    loss of a one-sample batch) and autograd's gradient of it for every head parameter."""
    o, model, aux, _, smpl = setup
    batch, cam, feats, targets = _inputs(setup)
    head = model.head_params()
    losses, grads = [], []
    for i in range(feats.shape[0]):
        b = {k: v[i:i + 1] for k, v in batch.items() if torch.is_tensor(v)}
        t = {k: v[i:i + 1] for k, v in targets.items()}
        p = smpl_predict(run_head(model, feats[i:i + 1], b["bbox_info"], dict(head)), smpl, cam, b)
        loss = smpl_loss(p, t, LossWeights(), mode="batch", terms=INNER_TERMS)["total"]
        losses.append(loss.detach())
        grads.append(dict(zip(head, torch.autograd.grad(loss, list(head.values())))))
    return torch.stack(losses), grads


def test_inner_step_logs_the_mean_per_sample_loss(setup):
    """Sample mode logs the mean over samples of each sample's own inner loss (as the trainer
    logs 'inner_loss_after'); batch mode the batch loss."""
    losses, _ = _alone(setup)
    _, info, *_ = _inner(setup, "sample")
    torch.testing.assert_close(info["inner_loss"], losses.mean(), rtol=1e-5, atol=0)
    o, model, aux, _, smpl = setup
    batch, cam, feats, targets = _inputs(setup)
    with torch.no_grad():
        p = smpl_predict(run_head(model, feats, batch["bbox_info"]), smpl, cam, batch)
        want = smpl_loss(p, targets, LossWeights(), mode="batch", terms=INNER_TERMS)["total"]
    _, info, *_ = _inner(setup, "batch")
    torch.testing.assert_close(info["inner_loss"], want, rtol=1e-5, atol=0)


def test_inner_step_logs_the_per_sample_gradient_norm(setup):
    """Sample mode's 'inner_grad_norm' = sqrt(sum over samples of the squared norm of that
    sample's own head gradient, weights and biases), from autograd on the parameters."""
    _, grads = _alone(setup)
    sq = {kind: sum(float(g.double().square().sum()) for gi in grads for k, g in gi.items()
                    if k.endswith(kind)) for kind in (".weight", ".bias")}
    _, info, *_ = _inner(setup, "sample")
    want = (sq[".weight"] + sq[".bias"]) ** 0.5
    assert sq[".bias"] / (sq[".weight"] + sq[".bias"]) > 1e-4   # the biases' share is seen
    assert float(info["inner_grad_norm"]) == pytest.approx(want, rel=1e-5)
