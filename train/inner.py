"""Fast weights and the training inner step (decisions D2-D4).

The main network is never copied: the head's adapted weights (``fc1, fc2, decpose, decshape,
deccam``) are plain tensors passed to it, one set per batch (``batch`` mode, as released) or
per-sample additive updates (:class:`FastDelta`, ``sample`` mode). One backward to the head
layers' outputs gives every sample its own gradient: a sum of one outer product per IEF
iteration, kept as low-rank factors (:class:`models.LowRankDelta`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from models.regressor import LowRankDelta
from train.losses import INNER_TERMS, LossWeights, smpl_loss, total
from utils.camera import Camera, smpl_predict

Tensor = torch.Tensor
Params = dict[str, Tensor]


def run_head(model, features: Tensor, bbox_info: Tensor | None, params=None,
             record: dict | None = None):
    """The regression head on precomputed backbone features with ``params``: None (the
    module's own weights), a dict {name: tensor} (batch mode; per-sample tensors with a leading
    [B] also work) or a :class:`FastDelta`. ``record``: see :meth:`Regressor.forward`."""
    kwargs = {"features": features, "bbox_info": bbox_info if model.use_bbox_info else None,
              "record": record}
    if isinstance(params, dict):
        return functional_call(model, params, (), kwargs, strict=False)
    return model(**kwargs, head_delta=getattr(params, "delta", None))   # None or a FastDelta


@dataclass
class FastDelta:
    """Per-sample fast weights as ``W + delta[i]``: {'<layer>.weight': LowRankDelta (factors
    [B,R,out], [B,R,in]), '<layer>.bias': [B, out]}."""

    delta: dict[str, "LowRankDelta | Tensor"]

    def dense(self, name: str) -> Tensor:
        """The update of parameter ``name`` as a [B, *shape] tensor."""
        d = self.delta[name]
        return d.dense() if isinstance(d, LowRankDelta) else d


def inner_adapt(model, features: Tensor, bbox_info: Tensor | None, batch: dict, targets: dict,
                smpl, camera: Camera, weights: LossWeights, lr: float, steps: int, mode: str,
                first_order: bool) -> tuple["Params | FastDelta", dict[str, Tensor]]:
    """``steps`` SGD steps of ``lr`` on the head fast weights (module docstring) with the inner
    (pseudo-label) loss, from ``features`` [B,D] (computed once per iteration, decisions D4).
    ``first_order``: FOMAML (gradients detached); otherwise the graph is kept (MAML). Returns
    the fast weights (for :func:`run_head`) and, detached, the first step's 'inner_loss' (before
    it) and 'inner_grad_norm'."""
    B = features.shape[0]
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
            loss = total(smpl_loss(pred, targets, weights, mode=mode, terms=INNER_TERMS))
            grads = _head_gradients(loss, record, create_graph=not first_order)
            if first_order:
                grads = {k: (g.detach(), x.detach()) for k, (g, x) in grads.items()}
            if step == 0:
                info["inner_loss"] = loss.detach() / (B if mode == "sample" else 1)
                info["inner_grad_norm"] = torch.sqrt(_grad_sq_norm(grads, mode == "sample"))
            fast = _sgd_step(fast, grads, lr)
    return fast, info


def _sgd_step(fast: "Params | FastDelta", grads: dict, lr: float) -> "Params | FastDelta":
    """Fast weights after one SGD step of ``lr`` with the gradients of :func:`_head_gradients`:
    per sample (:class:`FastDelta`), W - lr Σ_t g_it x_itᵀ kept as factors; per batch (a dict),
    one set W - lr Σ_i Σ_t g_it x_itᵀ, one matmul per layer."""
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
    """dL/d(head layer outputs) from a recorded forward pass ``record``: {layer: [(x_t [B,in],
    y_t [B,out]) per IEF iteration t]} -> {layer: (g [B,T,out], x [B,T,in])}, g_t = dL/dy_t.

    The weight gradient is Σ_t g_tᵀ x_t and, the samples not interacting in the head, sample
    i's share of it is Σ_t g_it x_itᵀ: the per-sample gradients of a summed per-sample loss
    come from the same backward. Both in float32 (under autocast the activations may not be).
    """
    outputs = [y for calls in record.values() for _, y in calls]
    grads = iter(torch.autograd.grad(loss, outputs, create_graph=create_graph, allow_unused=True))
    out = {}
    for name, calls in record.items():   # (zip takes the next len(calls) grads)
        g = torch.stack([torch.zeros_like(y) if gr is None else gr
                         for (_, y), gr in zip(calls, grads)], dim=1)
        out[name] = (g.float(), torch.stack([x for x, _ in calls], dim=1).float())
    return out


def _grad_sq_norm(grads: dict, per_sample: bool) -> Tensor:
    """Squared norm of the head gradient (weights and biases) of :func:`_head_gradients`:
    of every sample's own gradient, summed (Σ_i ||Σ_t g_it x_itᵀ||² = Σ (G Gᵀ) ⊙ (X Xᵀ)),
    or of the batch gradient."""
    sq = 0.0
    for g, x in grads.values():
        g, x = g.detach(), x.detach()
        if per_sample:
            sq = sq + ((g @ g.transpose(1, 2)) * (x @ x.transpose(1, 2))).sum() \
                + g.sum(1).square().sum()
        else:
            sq = sq + (g.flatten(0, 1).T @ x.flatten(0, 1)).square().sum() \
                + g.sum((0, 1)).square().sum()
    return torch.as_tensor(sq)
