"""Test-time optimisation (TTO, decisions D2 and D6; upstream-behaviour §2.5, §7.2).

From the trained weights (never modified: the adapted weights are plain tensors passed through
:func:`torch.func.functional_call`): step 0, one SGD step of ``inner_lr`` on the head with the
combined loss, as the training inner step; steps 1..``test_val_step``, Adam steps of
``after_innerlr`` on all weights with the raw 2D loss (``--no_use_adam``: head SGD;
``--no_inner_step``: step 0 is an Adam step too); then a forward pass at the final weights.

Early stop (``--adapt_val_step``, the released rule): after Adam step t, stop when
``|loss_prev - loss_t| < adapt_tol`` (at t = 1 ``loss_prev`` is the combined step-0 loss).

``mode``: ``batch`` adapts one set of weights per batch (the released code); ``sample`` every
sample on its own, the stop decided per sample: groups of ``chunk`` samples under
:func:`torch.func.vmap`, run in ``workers`` CPU threads of one intra-op thread each.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from train.losses import INNER_TERMS, TTO_TERMS, LossWeights, pseudo_targets, smpl_loss
from utils import runtime
from utils.camera import PRED_KEYS, Camera, smpl_predict

Tensor = torch.Tensor
Params = dict[str, Tensor]
# observer(t, pred): the prediction [B, ...] after the pass at t updates (a stopped or
# diverged sample keeps its last one)
Observer = Callable[[int, dict], None]


@dataclass
class TTOConfig:
    """Test-time optimisation settings (option names in brackets)."""
    inner_lr: float = 1e-5          # step-0 SGD on the head (--inner_lr)
    after_innerlr: float = 1e-5     # Adam lr of steps >= 1 (--after_innerlr)
    test_val_step: int = 14         # steps after step 0; -1: no TTO (--test_val_step)
    adapt_val_step: bool = False    # early stop (--adapt_val_step)
    adapt_tol: float = 2e-5         # |delta loss| threshold (--adapt_tol)
    no_use_adam: bool = False       # steps >= 1: head SGD of after_innerlr (--no_use_adam)
    no_inner_step: bool = False     # no step-0 SGD: Adam from step 0 (--no_inner_step)
    use_openpose2d: bool = False    # 2D loss on OpenPose keypoints (--use_openpose2d)
    mode: str = "sample"            # --tto_mode
    chunk: int = 0                  # --tto_chunk (sample mode; 0 = auto)
    workers: int = 0                # --tto_workers (sample mode on the CPU; 0 = auto)
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)

    @classmethod
    def from_options(cls, o) -> "TTOConfig":
        # the test-time 2D loss uses GT keypoints, or OpenPose ones with --use_openpose2d
        op = o.use_openpose2d
        w = dataclasses.replace(LossWeights.from_options(o), openpose=1.0 if op else 0.0,
                                gt=0.0 if op else 1.0)
        same = ("inner_lr", "after_innerlr", "test_val_step", "adapt_val_step", "adapt_tol",
                "no_use_adam", "no_inner_step", "use_openpose2d")
        return cls(**{k: getattr(o, k) for k in same}, mode=o.tto_mode, chunk=o.tto_chunk,
                   workers=o.tto_workers, weights=w)


@dataclass
class TTOResult:
    """Predictions after TTO ('after') and at the loaded weights ('before'), per sample."""
    after: dict[str, Tensor]
    before: dict[str, Tensor]
    steps: Tensor           # [B] number of weight updates each sample received
    nonfinite: Tensor       # [B] bool: TTO went non-finite; the last finite prediction is kept
    loss_2d_before: Tensor  # [B] 2D loss at the loaded weights
    loss_2d_after: Tensor   # [B] 2D loss at the weights of 'after'

    @staticmethod
    def cat(parts: list["TTOResult"]) -> "TTOResult":
        """The results of consecutive groups of samples as one."""
        if len(parts) == 1:
            return parts[0]
        return TTOResult(*[
            {k: torch.cat([getattr(p, f.name)[k] for p in parts]) for k in PRED_KEYS}
            if f.name in ("after", "before") else
            torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(TTOResult)])


def test_time_optimize(model, model_aux, batch: dict, smpl, camera: Camera, cfg: TTOConfig,
                       observer: Observer | None = None) -> TTOResult:
    """Adapt to a batch (the dataset's tensors, on the device) and predict (decisions D6).
    Both networks should be in eval mode; neither is modified. ``observer``: for studies."""
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
        return _adapt_group(model, state, smpl, camera, cfg, inputs, False, observer)
    if cfg.mode != "sample":
        raise ValueError(f"unknown tto_mode {cfg.mode!r}")
    # auto chunk: vectorised on accelerators; on the CPU grouped convolutions are slower than
    # a loop (decisions D2)
    cpu = batch["img"].device.type == "cpu"
    chunk = cfg.chunk if cfg.chunk > 0 else 1 if cpu else B
    groups = [{k: v[s:s + chunk] for k, v in inputs.items()} for s in range(0, B, chunk)]
    if cfg.workers < 0:
        raise ValueError(f"tto_workers must be >= 0, got {cfg.workers}")
    # threads adapting groups concurrently (0: one per intra-op thread on the CPU, 1 elsewhere)
    workers = max(1, min(cfg.workers or (torch.get_num_threads() if cpu else 1), len(groups)))

    def run(group: dict, net=model, observer: Observer | None = None) -> TTOResult:
        return _adapt_group(net, state, smpl, camera, cfg, group, chunk > 1, observer)

    if observer is not None:
        return _observed_groups(run, groups, observer)
    if workers == 1:
        return TTOResult.cat([run(g) for g in groups])
    return TTOResult.cat(_parallel_groups(run, model, groups, workers))


test_time_optimize.__test__ = False  # not a pytest test, despite its name


def _observed_groups(run, groups: list[dict], observer: Observer) -> TTOResult:
    """Groups one after the other, their per-step predictions joined for ``observer``."""
    traces: list[list[dict]] = [[] for _ in groups]
    parts = [run(g, observer=lambda t, pred: tr.append(pred)) for g, tr in zip(groups, traces)]
    n = max(len(tr) for tr in traces)     # a group that stopped early repeats its last one
    for t in range(n):
        observer(t, {k: torch.cat([tr[min(t, len(tr) - 1)][k] for tr in traces])
                     for k in PRED_KEYS})
    return TTOResult.cat(parts)


def stateless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its parameters and buffers on the meta device (no storage):
    ``functional_call`` swaps tensors on the module it runs, so each worker thread needs its own."""
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _parallel_groups(run, model, groups: list[dict], workers: int) -> list[TTOResult]:
    """``run`` the groups in ``workers`` threads of one intra-op thread each (CPU): every group
    as in a loop, only the float rounding of the (single-threaded) kernels can differ."""
    local = threading.local()

    def job(group: dict) -> TTOResult:
        if not hasattr(local, "net"):
            torch.set_num_threads(1)
            local.net = stateless_copy(model)
        return run(group, local.net)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="tto") as pool:
            return list(pool.map(job, groups))
    finally:
        torch.set_num_threads(threads)   # some backends share the setting between threads


# One group: G independent weight sets for its B samples (G = 1, or G = B under vmap) --------------
class _Objective:
    """The group's loss, 2D loss and prediction as functions of (head, rest) weights; ``model``
    only provides the structure. ``vectorised``: every sample its own weights (a leading
    [G = B] dimension) under ``vmap``; otherwise one set for the group."""

    def __init__(self, model, buffers: Params, smpl, camera: Camera, cfg: TTOConfig,
                 inputs: dict, vectorised: bool):
        self.model, self.buffers, self.smpl, self.camera = model, buffers, smpl, camera
        self.inputs, self.vectorised = inputs, vectorised
        self.weights = cfg.weights
        self.weights_2d = dataclasses.replace(cfg.weights, keypoint=1.0)   # the raw 2D loss

    def _f(self, head: Params, rest: Params, inputs: dict, stage0: bool):
        if self.vectorised:   # one sample -> a batch of one
            inputs = {k: v.unsqueeze(0) for k, v in inputs.items()}
        bbox_info = inputs["bbox_info"] if self.model.use_bbox_info else None
        out = functional_call(self.model, {**self.buffers, **rest, **head},
                              (inputs["img"], bbox_info), strict=False)
        pred = smpl_predict(out, self.smpl, self.camera, inputs)
        l2d = smpl_loss(pred, inputs, self.weights_2d, terms=TTO_TERMS)["total"]
        loss = smpl_loss(pred, inputs, self.weights, terms=INNER_TERMS)["total"] if stage0 \
            else l2d
        return loss, (l2d.detach(), {k: pred[k].detach() for k in PRED_KEYS})

    def __call__(self, head: Params, rest: Params, rest_batched: bool, stage0: bool,
                 need: str):
        """-> loss [G], 2D loss [G], prediction {k: [B,...]}, gradients (head, rest) or None
        (``need``: gradients of the 'head' weights, of 'all', or 'none')."""
        f = functools.partial(self._f, stage0=stage0)
        if need != "none":
            f = grad_and_value(f, argnums=0 if need == "head" else (0, 1), has_aux=True)
        if self.vectorised:
            f = vmap(f, in_dims=(0, 0 if rest_batched else None, 0))
        with torch.no_grad() if need == "none" else contextlib.nullcontext():
            out = f(head, rest, self.inputs)
        grads, (loss, (l2d, pred)) = (None, out) if need == "none" else out
        if need == "head":
            grads = (grads, {})
        if self.vectorised:        # vmap outputs [G,1,...] -> [B,...]
            pred = {k: v.flatten(0, 1) for k, v in pred.items()}
        return loss.reshape(-1), l2d.reshape(-1), pred, grads


class _Progress:
    """Where each of the G weight sets of a group of B samples stands, and what it has
    produced. A set is *done* once its prediction is final."""

    def __init__(self, G: int, B: int, device) -> None:
        self.B = B
        self.steps = torch.zeros(G, dtype=torch.long, device=device)   # weight updates taken
        # [G] bool; stopping: the stop rule fired after the last update
        self.done, self.stopping, self.nonfinite = (
            torch.zeros(G, dtype=torch.bool, device=device) for _ in range(3))
        self.prev_loss: Tensor | None = None    # [G] objective of the previous step
        self.before: dict | None = None         # prediction at the loaded weights
        self.current: dict | None = None        # last finite prediction (-> 'after' when done)
        self.loss_2d_before: Tensor | None = None
        self.loss_2d: Tensor | None = None      # [G] 2D loss of 'current'

    def observe(self, loss: Tensor, l2d: Tensor, pred: dict, final: bool) -> Tensor:
        """Take in the forward pass at the current weights. A set is done once its prediction is
        final (early stop fired, or the last pass) or non-finite (it keeps its last finite one).
        -> whether every set's pass was finite (0-dim bool, read by :meth:`flags`)."""
        finite = torch.isfinite(loss) & torch.isfinite(l2d) & self._finite(pred)
        active = ~self.done
        if self.before is None:
            self.before, self.current = ({k: v.clone() for k, v in pred.items()} for _ in range(2))
            self.loss_2d_before, self.loss_2d = l2d.clone(), l2d.clone()
        else:   # torch.where, not boolean-mask indexing (nonzero: a CUDA sync per key)
            m = (active & finite).expand(self.B)
            self.current = {k: torch.where(m.reshape(-1, *[1] * (v.dim() - 1)), pred[k], v)
                            for k, v in self.current.items()}
            self.loss_2d = torch.where(active & finite, l2d, self.loss_2d)
        self.nonfinite |= active & ~finite
        self.done |= active & (~finite | self.stopping | final)
        return finite.all()

    def flags(self, clean: Tensor) -> tuple[bool, bool, bool]:
        """(every set done, ``clean``, every set done or stopping) read on the host at once: the
        one device synchronisation of a TTO step."""
        return tuple(torch.stack([self.done.all(), clean,
                                  (self.stopping | self.done).all()]).tolist())

    def _finite(self, pred: dict) -> Tensor:
        """[G] bool: every predicted vertex and camera value of the set is finite."""
        B = pred["cam"].shape[0]
        ok = torch.stack([torch.isfinite(pred[k].reshape(B, -1)).all(1)
                          for k in ("vertices", "cam")]).all(0)
        G = self.steps.shape[0]
        return ok if G == B else ok.all().reshape(1)

    def updated(self, loss: Tensor, adam: bool, cfg: TTOConfig) -> None:
        """Count an update of the active sets; the released stop rule after Adam steps."""
        active = ~self.done
        self.steps += active.long()
        if adam and cfg.adapt_val_step and self.prev_loss is not None:
            self.stopping |= active & ((self.prev_loss - loss).abs() < cfg.adapt_tol)
        self.prev_loss = loss

    def result(self) -> TTOResult:
        return TTOResult(self.current, self.before, *(
            x.expand(self.B).clone() for x in (self.steps, self.nonfinite, self.loss_2d_before,
                                               self.loss_2d)))


class _Weights:
    """The group's adapted weights: head fast weights for SGD steps; from the first Adam step
    on, every weight becomes a per-set leaf tensor with its own Adam state."""

    def __init__(self, model, params: Params, G: int, vectorised: bool):
        self.names = list(model.head_param_names)
        self.vectorised, self.G = vectorised, G
        self.head = self._own({k: params[k] for k in self.names}) if vectorised else \
            {k: params[k] for k in self.names}
        self.rest = {k: v for k, v in params.items() if k not in self.head}
        self.rest_batched = False
        self.adam = None

    def _own(self, p: Params) -> Params:
        """Independent copies for every set ([G, ...] under vmap)."""
        if self.vectorised:
            return {k: v.unsqueeze(0).expand(self.G, *v.shape).clone() for k, v in p.items()}
        return {k: v.clone() for k, v in p.items()}

    def sgd(self, grads: Params, lr: float) -> None:
        """Head fast weights minus ``lr`` x gradient (non-finite entries zeroed)."""
        self.head = {k: (self.head[k] - lr * torch.nan_to_num(grads[k])).detach()
                     for k in self.names}

    def adam_step(self, grads: tuple[Params, Params], lr: float, clean: bool) -> None:
        """One Adam step of ``lr`` on every weight (Adam is created at the first call).
        ``clean=False``: some set went non-finite; its gradients are zeroed where non-finite
        (Adam is elementwise: the other sets' steps are unchanged)."""
        if self.adam is None:
            self.head = {k: v.detach().clone() for k, v in self.head.items()}
            self.rest, self.rest_batched = self._own(self.rest), self.vectorised
            self.leaves = {**self.head, **self.rest}
            for v in self.leaves.values():
                v.requires_grad_(True)
            self.adam = runtime.adam(self.leaves.values(), lr=lr)
        gh, gr = grads
        for k, v in self.leaves.items():
            g = gh.get(k, gr.get(k))
            if g is not None:
                g = g.detach() if clean else torch.nan_to_num(g.detach())
                if g.stride() != v.stride():   # fused Adam pairs their memory elementwise:
                    g = torch.empty_like(v).copy_(g)   # vmap's grads of channels_last weights
            v.grad = g
        self.adam.step()
        for v in self.leaves.values():   # free now: the next gradients are new tensors
            v.grad = None


def _adapt_group(model, state: tuple[Params, Params], smpl, camera: Camera, cfg: TTOConfig,
                 inputs: dict, vectorised: bool, observer: Observer | None = None) -> TTOResult:
    """TTO of one group of B samples from ``state`` = (parameters, buffers), one set of weights
    (``vectorised=False``) or one per sample. Pass t runs the network at t updates, scores it,
    then (t <= test_val_step) updates; the pass after the last update or a stop predicts."""
    B, device = inputs["img"].shape[0], inputs["img"].device
    G = B if vectorised else 1
    objective = _Objective(model, state[1], smpl, camera, cfg, inputs, vectorised)
    w = _Weights(model, state[0], G, vectorised)
    progress = _Progress(G, B, device)
    last = cfg.test_val_step + 1
    idle = False    # every set done or stopping: the next pass needs no gradients
    for t in range(last + 1):
        stage0 = t == 0 and not cfg.no_inner_step
        adam = not stage0 and not cfg.no_use_adam
        final = t == last
        need = "none" if final or idle else "all" if adam else "head"
        loss, l2d, pred, grads = objective(w.head, w.rest, w.rest_batched, stage0, need)
        clean = progress.observe(loss, l2d, pred, final)
        if observer is not None:
            observer(t, {k: v.clone() for k, v in progress.current.items()})
        # counted before the update (a no-op when every set is done), so that the three flags
        # this step's control flow needs are read in one synchronisation
        progress.updated(loss, adam, cfg)
        done, clean, idle = progress.flags(clean)
        if done:
            break
        if adam:
            w.adam_step(grads, cfg.after_innerlr, clean)
        else:
            w.sgd(grads[0], cfg.inner_lr if stage0 else cfg.after_innerlr)
        del grads    # not alive during the next pass
    return progress.result()
