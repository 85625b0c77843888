"""Fast weights, the meta inner step and test-time optimisation (decisions D2-D6).

The main network is never copied. Adapted weights are plain tensors passed to the network
through :func:`torch.func.functional_call`:

* the *inner step* (training) and *TTO step 0* take SGD steps of ``inner_lr`` on the regression
  head (``fc1, fc2, decpose, decshape, deccam``) with the combined loss: pseudo-labels from the
  auxiliary network + the 2D keypoint loss + the camera term;
* *TTO steps >= 1* take Adam steps of ``after_innerlr`` on all weights with the 2D loss only.

Granularity (``tto_mode``): ``batch`` adapts one set of weights per batch (the released code);
``sample`` adapts every sample on its own. In the inner step, one backward to the head layers'
outputs gives every sample its own gradient, and each sample's update of a layer's weight
(a sum of one outer product per IEF iteration) is kept as low-rank factors. In TTO, per-sample adaptation of all weights is vectorised with
``torch.func.vmap`` over chunks of ``tto_chunk`` samples (1 = a loop over samples). On the CPU
the chunks run in ``tto_workers`` threads at one intra-op thread each: a batch-of-one network
step cannot keep several cores busy, independent samples can.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from constants import FOCAL_LENGTH, options_crop_size
from models.regressor import LowRankDelta
from train.losses import LossWeights, smpl_loss
from utils import runtime
from utils.geometry import (batch_rodrigues, cam_crop2full, normalize_keypoints_2d,
                            project_crop, project_full_to_crop)

Tensor = torch.Tensor
Params = dict[str, Tensor]

INNER_TERMS = ("vertices", "keypoints_2d", "keypoints_3d", "pose", "betas", "cam")
TTO_TERMS = ("keypoints_2d",)


# ------------------------------------------------------------------------------------------------
# Cameras: CLIFF's full-image perspective camera or HMR's crop camera
@dataclass(frozen=True)
class Camera:
    """Projection of the predicted joints into normalised crop coordinates.

    ``kind='cliff'``: the crop camera is converted to a full-image translation
    (:func:`cam_crop2full`), projected with the image's focal length and centre, and mapped into
    the crop with ``crop_trans``. ``kind='hmr'``: fixed focal 5000 in the crop.
    """

    kind: str
    crop_h: int
    crop_w: int

    @classmethod
    def from_options(cls, options) -> "Camera":
        h, w = options_crop_size(options)
        return cls(options.model, h, w)

    def img_hw(self, batch: dict) -> Tensor:
        """[B,2] full-image (h, w)."""
        return torch.stack([batch["img_h"], batch["img_w"]], dim=-1).float()

    def full_translation(self, cam: Tensor, batch: dict) -> Tensor:
        """[B,3] camera translation in the full image (CLIFF) or the crop (HMR)."""
        if self.kind == "cliff":
            return cam_crop2full(cam, batch["center"], batch["scale"], self.img_hw(batch),
                                 batch["focal_length"])
        s = cam[:, 0]
        tz = 2 * FOCAL_LENGTH / (self.crop_h * s + 1e-9)
        return torch.stack([cam[:, 1], cam[:, 2], tz], dim=-1)

    def crop_intrinsics(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Focal [B] and principal point [B,2] in crop pixels that go with
        :meth:`full_translation` (for rendering a mesh over the network's input crop).

        CLIFF: the full-image camera seen through the un-rotated similarity ``crop_trans``;
        HMR: focal 5000 at the crop centre.
        """
        B = batch["img"].shape[0]
        if self.kind == "cliff":
            A = batch["crop_trans"].float()                 # [B,2,3] = [[k,0,a],[0,k,b]]
            k = A[:, 0, 0]
            centre = torch.stack([batch["img_w"], batch["img_h"]], -1).float() / 2
            principal = (A[:, :, :2] @ centre[..., None])[..., 0] + A[:, :, 2]
            return k * batch["focal_length"].float(), principal
        f = torch.full((B,), FOCAL_LENGTH, device=batch["img"].device)
        c = torch.tensor([self.crop_w / 2, self.crop_h / 2], device=f.device).expand(B, 2)
        return f, c

    def project(self, joints: Tensor, cam: Tensor, batch: dict) -> Tensor:
        """joints [B,J,3], cam [B,3] -> [B,J,2] normalised crop coordinates."""
        if self.kind == "cliff":
            t = self.full_translation(cam, batch)
            return project_full_to_crop(joints, t, batch["focal_length"], self.img_hw(batch),
                                        batch["crop_trans"], (self.crop_h, self.crop_w))
        return project_crop(joints, cam, (self.crop_h, self.crop_w), bbox_size=self.crop_h)

    def target_keypoints(self, batch: dict) -> Tensor:
        """[B,49,3] normalised GT/OpenPose 2D keypoints of the batch (crop pixels in the batch)."""
        return normalize_keypoints_2d(batch["keypoints"], (self.crop_h, self.crop_w))


# ------------------------------------------------------------------------------------------------
# Forward through head (+ optional fast weights) and SMPL
def run_head(model, features: Tensor, bbox_info: Tensor | None, params=None,
             record: dict | None = None):
    """The regression head on precomputed backbone features with adapted weights.

    ``params``: None (the module's own weights), a dict {name: tensor} substituted through
    ``functional_call`` (batch mode; per-sample tensors with a leading [B] also work), or a
    :class:`FastDelta` (sample mode: per-sample additive updates of the head weights).
    ``record``: see :meth:`models.Regressor.forward`.
    """
    kwargs = {"features": features, "bbox_info": bbox_info if model.use_bbox_info else None,
              "record": record}
    if params is None:
        return model(**kwargs)
    if isinstance(params, FastDelta):
        return model(**kwargs, head_delta=params.delta)
    return functional_call(model, params, (), kwargs, strict=False)


@dataclass
class FastDelta:
    """Per-sample fast weights as ``W + delta[i]``: {'<layer>.weight': LowRankDelta (factors
    [B,R,out], [B,R,in]), '<layer>.bias': [B, out]}."""

    delta: dict[str, "LowRankDelta | Tensor"]

    def dense(self, name: str) -> Tensor:
        """The update of parameter ``name`` as a [B, *shape] tensor."""
        d = self.delta[name]
        return d.dense() if isinstance(d, LowRankDelta) else d


def smpl_predict(out, smpl, camera: Camera, batch: dict) -> dict[str, Tensor]:
    """Regressor output -> dict(rotmat, betas, cam, vertices, joints [B,49,3], keypoints_2d)."""
    rotmat, betas, cam = out[0], out[1], out[2]
    so = smpl(betas=betas, body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1], pose2rot=False)
    return {"rotmat": rotmat, "betas": betas, "cam": cam, "vertices": so.vertices,
            "joints": so.joints, "keypoints_2d": camera.project(so.joints, cam, batch)}


def gt_targets(batch: dict, gt_vertices: Tensor, camera: Camera) -> dict[str, Tensor]:
    """Supervised targets of the outer loss."""
    pose = batch["pose"]
    return {
        "keypoints_2d": camera.target_keypoints(batch),
        "joints_3d": batch["pose_3d"],
        "vertices": gt_vertices,
        "rotmat": batch_rodrigues(pose.reshape(-1, 3)).reshape(pose.shape[0], 24, 3, 3),
        "betas": batch["betas"],
        "has_smpl": batch["has_smpl"],
        "has_pose_3d": batch["has_pose_3d"],
    }


def pseudo_targets(aux_pred: dict, batch: dict, camera: Camera,
                   detach: bool = True) -> dict[str, Tensor]:
    """Inner-step / TTO step-0 targets: aux-network pseudo-labels + 2D keypoints.

    The pseudo-label terms stay masked by the GT flags ``has_smpl`` / ``has_pose_3d``
    (released behaviour). ``detach=False`` keeps the aux graph (second-order MAML: the aux
    network receives the meta-gradient).
    """
    d = (lambda t: t.detach()) if detach else (lambda t: t)  # noqa: E731
    j = d(aux_pred["joints"][:, 25:])
    return {
        "keypoints_2d": camera.target_keypoints(batch),
        "joints_3d": torch.cat([j, torch.ones_like(j[..., :1])], dim=-1),
        "vertices": d(aux_pred["vertices"]),
        "rotmat": d(aux_pred["rotmat"]),
        "betas": d(aux_pred["betas"]),
        "has_smpl": batch["has_smpl"],
        "has_pose_3d": batch["has_pose_3d"],
    }


def _total(losses: dict[str, Tensor]) -> Tensor:
    """Scalar objective: the batch loss, or the sum of per-sample losses (sample mode)."""
    t = losses["total"]
    return t.sum() if t.dim() else t


# ------------------------------------------------------------------------------------------------
# Training inner step
def inner_adapt(model, features: Tensor, bbox_info: Tensor | None, batch: dict, targets: dict,
                smpl, camera: Camera, weights: LossWeights, lr: float, steps: int, mode: str,
                first_order: bool) -> tuple["Params | FastDelta", dict[str, Tensor]]:
    """SGD steps of ``lr`` on the head fast weights with the inner (pseudo-label) loss.

    Args:
        features: [B,D] backbone features (computed once per iteration, decisions D4).
        mode: 'sample' (every sample its own fast weights W + delta[i], the weight updates
            kept as low-rank factors: :func:`_sgd_step`) or 'batch' (one set for the
            batch).
        first_order: FOMAML (gradients detached); otherwise the graph is kept (MAML).
    Returns:
        fast weights ({name: tensor} in batch mode, :class:`FastDelta` in sample mode, both
        accepted by :func:`run_head`) and logging values: 'inner_loss' (before the first step)
        and 'inner_grad_norm' (of the first step), both detached scalars.
    """
    B = features.shape[0]
    if mode not in ("sample", "batch"):
        raise ValueError(f"unknown tto_mode {mode!r}")
    fast: Params | FastDelta = (FastDelta({}) if mode == "sample"   # W + 0 for every sample
                                else dict(model.head_params()))
    info: dict[str, Tensor] = {}
    feats = (features.detach() if first_order else features).float()
    # float32 even under --amp: the head and SMPL are cheap, and gradients of this size
    # times lr ~1e-5 are below float16's resolution
    with torch.autocast(features.device.type, enabled=False):
        for step in range(steps):
            record: dict = {}
            pred = smpl_predict(run_head(model, feats, bbox_info, fast, record), smpl, camera,
                                batch)
            loss = _total(smpl_loss(pred, targets, weights, mode=mode, terms=INNER_TERMS))
            grads = _head_gradients(loss, record, create_graph=not first_order)
            if first_order:
                grads = {k: (g.detach(), x.detach()) for k, (g, x) in grads.items()}
            if step == 0:
                info["inner_loss"] = loss.detach() / (B if mode == "sample" else 1)
                info["inner_grad_norm"] = torch.sqrt(_grad_sq_norm(grads, mode == "sample"))
            fast = _sgd_step(fast, grads, lr)
    return fast, info


def _sgd_step(fast: "Params | FastDelta", grads: dict, lr: float) -> "Params | FastDelta":
    """Fast weights after one SGD step of ``lr`` with the gradients of :func:`_head_gradients`.

    Per sample (:class:`FastDelta`): sample i gets W - lr Σ_t g_it x_itᵀ, the weight update kept
    as factors (:class:`models.LowRankDelta`). Per batch (a dict of tensors): one set,
    W - lr Σ_i Σ_t g_it x_itᵀ, one matmul per layer.
    """
    if isinstance(fast, FastDelta):
        delta = dict(fast.delta)
        for name, (g, x) in grads.items():
            for k, d in ((f"{name}.weight", LowRankDelta(-lr * g, x)),
                         (f"{name}.bias", -lr * g.sum(1))):
                delta[k] = d if k not in delta else delta[k] + d
        return FastDelta(delta)
    new = dict(fast)
    for name, (g, x) in grads.items():
        new[f"{name}.weight"] = fast[f"{name}.weight"] - lr * (g.flatten(0, 1).T @ x.flatten(0, 1))
        new[f"{name}.bias"] = fast[f"{name}.bias"] - lr * g.sum((0, 1))
    return new


def _head_gradients(loss: Tensor, record: dict, create_graph: bool) -> dict:
    """dL/d(head layer outputs) from a recorded forward pass.

    ``record``: {layer: [(x_t [B,in], y_t [B,out]) per IEF iteration t]} (see
    :meth:`models.Regressor.forward`). Returns {layer: (g [B,T,out], x [B,T,in])} with
    g_t = dL/dy_t: the weight gradient is Σ_t g_tᵀ x_t and, the samples not interacting in the
    head, sample i's share of it is Σ_t g_it x_itᵀ: the per-sample gradients of a summed
    per-sample loss come from the same backward as the batch gradient. Both come back in
    float32 (under autocast the activations may be float16 / bfloat16): the updates are built
    from them in float32.
    """
    layers = list(record)
    outputs = [y for name in layers for _, y in record[name]]
    grads = torch.autograd.grad(loss, outputs, create_graph=create_graph, allow_unused=True)
    out, i = {}, 0
    for name in layers:
        calls = record[name]
        g = torch.stack([torch.zeros_like(y) if gr is None else gr
                         for (_, y), gr in zip(calls, grads[i:i + len(calls)])], dim=1)
        out[name] = (g.float(), torch.stack([x for x, _ in calls], dim=1).float())
        i += len(calls)
    return out


def _grad_sq_norm(grads: dict, per_sample: bool) -> Tensor:
    """Squared norm of the head gradient (weights and biases) of :func:`_head_gradients`:
    of every sample's own gradient, summed (Σ_i ||Σ_t g_it x_itᵀ||² = Σ (G Gᵀ) ⊙ (X Xᵀ)),
    or of the batch gradient."""
    total = 0.0
    for g, x in grads.values():
        g, x = g.detach(), x.detach()
        if per_sample:
            total = total + ((g @ g.transpose(1, 2)) * (x @ x.transpose(1, 2))).sum() \
                + g.sum(1).square().sum()
        else:
            total = total + (g.flatten(0, 1).T @ x.flatten(0, 1)).square().sum() \
                + g.sum((0, 1)).square().sum()
    return torch.as_tensor(total)


# ------------------------------------------------------------------------------------------------
# Test-time optimisation
@dataclass
class TTOConfig:
    """Test-time optimisation settings (option names in brackets)."""

    inner_lr: float = 1e-5          # step-0 SGD on the head (--inner_lr)
    after_innerlr: float = 1e-5     # Adam lr of steps >= 1 (--after_innerlr)
    test_val_step: int = 14         # extra steps after step 0 (--test_val_step)
    adapt_val_step: bool = False    # early stop (--adapt_val_step)
    adapt_tol: float = 2e-5         # |delta loss| threshold (--adapt_tol)
    no_use_adam: bool = False       # steps >= 1: head SGD of after_innerlr (--no_use_adam)
    no_inner_step: bool = False     # skip the step-0 SGD (--no_inner_step)
    use_openpose2d: bool = False    # 2D loss on OpenPose keypoints (--use_openpose2d)
    mode: str = "sample"            # --tto_mode
    chunk: int = 0                  # --tto_chunk (sample mode; 0 = auto)
    workers: int = 0                # --tto_workers (sample mode on the CPU; 0 = auto)
    trace: bool = False             # keep the prediction of every step (TTOResult.trace)
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)

    @classmethod
    def from_options(cls, o) -> "TTOConfig":
        w = LossWeights.from_options(o)
        # the test-time 2D loss uses GT keypoints, or OpenPose ones with --use_openpose2d
        w = dataclasses.replace(w, openpose=1.0 if o.use_openpose2d else 0.0,
                                gt=0.0 if o.use_openpose2d else 1.0)
        return cls(inner_lr=o.inner_lr, after_innerlr=o.after_innerlr,
                   test_val_step=o.test_val_step, adapt_val_step=o.adapt_val_step,
                   adapt_tol=getattr(o, "adapt_tol", 2e-5), no_use_adam=o.no_use_adam,
                   no_inner_step=o.no_inner_step, use_openpose2d=o.use_openpose2d,
                   mode=getattr(o, "tto_mode", "sample"), chunk=getattr(o, "tto_chunk", 0),
                   workers=getattr(o, "tto_workers", 0), weights=w)


@dataclass
class TTOResult:
    """Predictions after TTO ('after') and at the loaded weights ('before'), per sample."""

    after: dict[str, Tensor]
    before: dict[str, Tensor]
    steps: Tensor        # [B] number of weight updates each sample received
    nonfinite: Tensor    # [B] bool: TTO went non-finite; the last finite prediction is kept
    loss_2d_before: Tensor  # [B] or [1] 2D loss at the loaded weights
    loss_2d_after: Tensor   # 2D loss at the final weights
    # with TTOConfig.trace: the prediction after t weight updates, t = 0 .. test_val_step + 1
    # (t = 0 is 'before'; t = k + 1 is what test_val_step = k returns without early stop);
    # a sample that went non-finite or stopped keeps its last prediction
    trace: list[dict[str, Tensor]] | None = None


_PRED_KEYS = ("rotmat", "betas", "cam", "vertices", "joints", "keypoints_2d")


def _slice(batch: dict, idx) -> dict:
    return {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor)}


def _group_objective(model, buffers: Params, smpl, camera: Camera, cfg: TTOConfig,
                     stage0: bool, in_vmap: bool):
    """f(head, rest, inputs) -> (loss, (loss_2d, pred)) for one group of samples.

    ``model`` only provides the structure: every parameter and buffer is passed in.
    """
    w2d = dataclasses.replace(cfg.weights, keypoint=1.0)

    def f(head: Params, rest: Params, inputs: dict):
        if in_vmap:   # one sample -> a batch of one
            inputs = {k: v.unsqueeze(0) for k, v in inputs.items()}
        out = functional_call(model, {**buffers, **rest, **head}, (),
                              {"img": inputs["img"],
                               "bbox_info": inputs["bbox_info"] if model.use_bbox_info else None},
                              strict=False)
        pred = smpl_predict(out, smpl, camera, inputs)
        l2d = smpl_loss(pred, inputs, w2d, mode="batch", terms=TTO_TERMS)["total"]
        if stage0:
            loss = smpl_loss(pred, inputs, cfg.weights, mode="batch", terms=INNER_TERMS)["total"]
        else:
            loss = l2d
        return loss, (l2d.detach(), {k: pred[k].detach() for k in _PRED_KEYS})

    return f


def test_time_optimize(model, model_aux, batch: dict, smpl, camera: Camera,
                       cfg: TTOConfig) -> TTOResult:
    """Adapt to a batch and predict (decisions D6). ``model`` and ``model_aux`` are not modified.

    Both networks should be in eval mode. ``batch`` holds the dataset's tensors on the device.
    """
    B = batch["img"].shape[0]
    with torch.no_grad():
        aux_out = model_aux(batch["img"], batch["bbox_info"] if model_aux.use_bbox_info else None)
        aux_pred = smpl_predict(aux_out, smpl, camera, batch)
    inputs = {"img": batch["img"], "bbox_info": batch["bbox_info"],
              **{k: batch[k] for k in ("center", "scale", "img_h", "img_w", "focal_length",
                                       "crop_trans") if k in batch}}
    inputs.update(pseudo_targets(aux_pred, batch, camera))
    state = ({k: p.detach() for k, p in model.named_parameters()}, dict(model.named_buffers()))
    if cfg.mode == "batch":
        return _tto_group(model, state, smpl, camera, cfg, inputs, vectorised=False)
    if cfg.mode != "sample":
        raise ValueError(f"unknown tto_mode {cfg.mode!r}")
    if cfg.chunk > 0:
        chunk = cfg.chunk
    else:   # auto: vectorised on accelerators; on the CPU grouped convolutions are slower
        chunk = B if batch["img"].device.type != "cpu" else 1   # than a loop (decisions D2)
    groups = [_slice(inputs, slice(s, s + chunk)) for s in range(0, B, chunk)]
    workers = _n_workers(cfg.workers, len(groups), batch["img"].device)
    if workers == 1:
        parts = [_tto_group(model, state, smpl, camera, cfg, g, chunk > 1) for g in groups]
    else:
        parts = _parallel_groups(model, state, smpl, camera, cfg, groups, chunk > 1, workers)
    if len(parts) == 1:
        return parts[0]
    cat = lambda xs: torch.cat(xs, dim=0)  # noqa: E731
    return TTOResult(
        after={k: cat([p.after[k] for p in parts]) for k in _PRED_KEYS},
        before={k: cat([p.before[k] for p in parts]) for k in _PRED_KEYS},
        steps=cat([p.steps for p in parts]), nonfinite=cat([p.nonfinite for p in parts]),
        loss_2d_before=cat([p.loss_2d_before.reshape(-1) for p in parts]),
        loss_2d_after=cat([p.loss_2d_after.reshape(-1) for p in parts]),
        trace=None if not cfg.trace else [
            {k: cat([p.trace[t][k] for p in parts]) for k in _PRED_KEYS}
            for t in range(len(parts[0].trace))])


def _n_workers(requested: int, n_groups: int, device: torch.device) -> int:
    """Threads adapting groups concurrently: ``requested``, or (0) one per intra-op thread on
    the CPU and 1 on accelerators; never more than there are groups."""
    if requested < 0:
        raise ValueError(f"tto_workers must be >= 0, got {requested}")
    if requested == 0:
        requested = torch.get_num_threads() if device.type == "cpu" else 1
    return max(1, min(requested, n_groups))


def stateless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device (no storage).

    ``functional_call`` swaps tensors on the module it runs, so two threads must not share one;
    each worker runs its own stateless copy with the real tensors passed in.
    """
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _parallel_groups(model, state, smpl, camera: Camera, cfg: TTOConfig, groups: list[dict],
                     vectorised: bool, workers: int) -> list[TTOResult]:
    """Adapt the groups in ``workers`` threads, each with one intra-op thread (CPU).

    Every group is computed exactly as in a loop; only the float rounding of the kernels can
    differ (they run single-threaded).
    """
    local = threading.local()

    def job(group: dict) -> TTOResult:
        if not hasattr(local, "net"):
            torch.set_num_threads(1)
            local.net = stateless_copy(model)
        return _tto_group(local.net, state, smpl, camera, cfg, group, vectorised)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="tto") as pool:
            return list(pool.map(job, groups))
    finally:
        torch.set_num_threads(threads)   # some backends share the setting between threads


def _tto_group(model, state: tuple[Params, Params], smpl, camera: Camera, cfg: TTOConfig,
               inputs: dict, vectorised: bool) -> TTOResult:
    """TTO of one group of B samples.

    ``state``: the (parameters, buffers) to start from; ``model`` gives the structure only.

    ``vectorised=False``: the group is one task with one set of weights (batch mode, or a
    single sample in sample mode). ``vectorised=True``: every sample is its own task; the
    per-sample weights carry a leading [B] dimension and the steps run under ``vmap``.
    """
    B = inputs["img"].shape[0]
    G = B if vectorised else 1                 # number of independent weight sets
    device = inputs["img"].device
    head_names = list(model.head_param_names)
    params, buffers = state
    head = {k: params[k] for k in head_names}
    rest = {k: v for k, v in params.items() if k not in head}

    def per_group(p: Params) -> Params:      # independent copies for every group
        if vectorised:
            return {k: v.unsqueeze(0).expand(G, *v.shape).clone() for k, v in p.items()}
        return {k: v.clone() for k, v in p.items()}

    def per_sample(pred: dict) -> dict:       # vmap outputs [G,1,...] -> [B,...]
        return {k: v.reshape(B, *v.shape[2:]) for k, v in pred.items()} if vectorised else pred

    def evaluate(stage0: bool, head_p: Params, rest_p: Params, rest_batched: bool, need: str):
        """Loss [G], 2D loss [G], predictions, and gradients for need='head'|'all'|'none'."""
        f = _group_objective(model, buffers, smpl, camera, cfg, stage0, vectorised)
        dims = (0, 0 if rest_batched else None, 0)
        if need == "none":
            with torch.no_grad():
                fn = vmap(f, in_dims=dims) if vectorised else f
                loss, (l2d, pred) = fn(head_p, rest_p, inputs)
            grads = None
        else:
            fn = grad_and_value(f, argnums=0 if need == "head" else (0, 1), has_aux=True)
            if vectorised:
                fn = vmap(fn, in_dims=dims)
            grads, (loss, (l2d, pred)) = fn(head_p, rest_p, inputs)
            if need == "head":
                grads = (grads, {})
        return loss.reshape(-1), l2d.reshape(-1), per_sample(pred), grads

    def to_samples(x: Tensor) -> Tensor:      # [G] -> [B]
        return x if vectorised else x.expand(B)

    def merge(dst: dict | None, src: dict, mask: Tensor) -> dict:
        """dst[k][samples of the groups in mask] = src[k][...]."""
        if dst is None:
            dst = {k: v.clone() for k, v in src.items()}
        m = to_samples(mask)
        for k in dst:
            dst[k][m] = src[k][m]
        return dst

    head_w = per_group(head) if vectorised else dict(head)
    rest_w, rest_batched, adam = rest, False, None
    steps = torch.zeros(G, dtype=torch.long, device=device)
    done = torch.zeros(G, dtype=torch.bool, device=device)
    stop_flag = torch.zeros_like(done)
    nonfinite = torch.zeros_like(done)
    final = before = last_pred = None
    loss2d_before = prev2d = None
    trace: list[dict] | None = [] if cfg.trace else None

    def record(pred: dict, ok: Tensor) -> None:   # ok [G]: pred is finite and still current
        if trace is not None:
            trace.append({k: v.clone() for k, v in pred.items()} if not trace else
                         merge({k: v.clone() for k, v in trace[-1].items()}, pred, ok))

    for t in range(cfg.test_val_step + 1):
        stage0 = t == 0 and not cfg.no_inner_step
        use_adam = not stage0 and not cfg.no_use_adam
        if use_adam and adam is None:       # all weights become per-group leaf tensors
            head_w = {k: v.detach().clone() for k, v in head_w.items()}
            rest_w, rest_batched = per_group(rest), vectorised
            leaves = {**head_w, **rest_w}
            for v in leaves.values():
                v.requires_grad_(True)
            adam = runtime.adam(leaves.values(), lr=cfg.after_innerlr)
        loss, l2d, pred, grads = evaluate(stage0, head_w, rest_w, rest_batched,
                                          "all" if use_adam else "head")
        finite = torch.isfinite(loss) & torch.isfinite(l2d)
        finite &= to_samples_all_finite(pred, B, G, vectorised)
        if t == 0:
            before = {k: v.clone() for k, v in pred.items()}
            loss2d_before = l2d.clone()
        record(pred, finite & ~done)
        newly_bad = ~finite & ~done
        finish = stop_flag & ~done & finite   # stopped after the previous update
        if finish.any():
            final = merge(final, pred, finish)
        if newly_bad.any():                   # keep the last finite prediction
            nonfinite |= newly_bad
            final = merge(final, last_pred if last_pred is not None else pred, newly_bad)
        done |= finish | newly_bad
        last_pred = pred if last_pred is None else merge(last_pred, pred, finite & ~done)
        if bool(done.all()):
            break
        active = ~done
        if use_adam:
            gh, gr = grads
            clean = bool(finite.all())    # else zero the non-finite gradients of failed groups
            for k, v in leaves.items():
                g = gh.get(k, gr.get(k))
                v.grad = None if g is None else g.detach() if clean else torch.nan_to_num(g)
            adam.step()
        else:                                 # SGD on the head fast weights
            lr = cfg.inner_lr if stage0 else cfg.after_innerlr
            head_w = {k: (head_w[k] - lr * torch.nan_to_num(grads[0][k])).detach()
                      for k in head_names}
        steps += active.long()
        if t >= 1 and cfg.adapt_val_step and prev2d is not None:
            stop_flag |= (prev2d - l2d).abs() < cfg.adapt_tol
        prev2d = l2d

    loss2d_after = prev2d if prev2d is not None else loss2d_before
    if not bool(done.all()):
        _, l2d_final, pred, _ = evaluate(False, head_w, rest_w, rest_batched, "none")
        fin = torch.isfinite(l2d_final) & to_samples_all_finite(pred, B, G, vectorised)
        todo = ~done
        final = merge(final, pred, todo & fin)
        if (todo & ~fin).any():
            nonfinite |= todo & ~fin
            final = merge(final, last_pred, todo & ~fin)
        loss2d_after = torch.where(todo & fin, l2d_final, loss2d_after)
        record(pred, todo & fin)
    if trace is not None:                     # stopped early: the rest repeat the last one
        trace += [trace[-1]] * (cfg.test_val_step + 2 - len(trace))
    return TTOResult(after=final, before=before, steps=to_samples(steps),
                     nonfinite=to_samples(nonfinite), loss_2d_before=loss2d_before,
                     loss_2d_after=loss2d_after, trace=trace)


def to_samples_all_finite(pred: dict, B: int, G: int, vectorised: bool) -> Tensor:
    """[G] bool: every predicted vertex and camera value of the group is finite."""
    ok = torch.stack([torch.isfinite(pred[k].reshape(B, -1)).all(1) for k in ("vertices", "cam")])
    ok = ok.all(0)
    return ok if vectorised else ok.all().reshape(1)


test_time_optimize.__test__ = False  # not a pytest test, despite its name
