"""One Meta-HMR training iteration, for HMR and CLIFF (the camera model is the only difference).

:class:`MetaStep` (``Trainer.run_step``, decisions D2-D5):

1. GT mesh from the GT SMPL parameters (neutral model).
2. Backbone features of the main network, once (reused by the inner and the outer pass).
3. Aux pseudo-labels (frozen aux network; no_grad + eval mode under ``--first_order``).
4. Inner step: ``inner_step`` SGD steps of ``inner_lr`` on the head fast weights with the
   pseudo-label + 2D loss (per sample or per batch: ``--tto_mode``).
5. Outer loss: the supervised loss at the adapted weights, x60; Adam on the main network
   (and the aux group unless ``--no_learn_loss``).

Under ``--amp`` (CUDA) only the backbones run in bf16 / fp16; heads, SMPL and losses in float32."""
from __future__ import annotations

import torch

import constants
from config import DataPaths
from train import distributed as dist
from train.inner import inner_adapt, run_head
from train.losses import LossWeights, gt_targets, pseudo_targets, smpl_loss
from utils import runtime
from utils.camera import Camera, smpl_predict

N_OVERLAYS = 4   # mesh overlays logged per summary with --log_images


def build_networks(o, paths: DataPaths):
    """Main and aux networks, initialised as released (decisions D5, D9)."""
    from models import build_model
    from models.checkpoints import load_aux_weights, load_backbone_weights
    mean = paths.smpl_mean_params()
    model = build_model(o.model, o.backbone, "main", o.bbox_type, mean)
    model_aux = build_model(o.model, o.backbone, "aux", o.bbox_type, mean)
    if not o.no_pretrained_backbone:
        f = o.backbone_checkpoint or paths.backbone_checkpoint(o.backbone)
        load_backbone_weights(f, model, o.backbone)
    f = o.aux_checkpoint or paths.aux_checkpoint(o.model, o.backbone)
    load_aux_weights(f, model_aux, o.model, o.backbone)
    return model, model_aux


def build_optimizer(o, model, model_aux, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam over the main network and, unless ``--no_learn_loss``, the aux network, as released
    (fused where supported). ``lr_scale`` multiplies both rates (the benchmark uses 0)."""
    groups = [{"params": list(model.parameters()), "lr": o.outer_lr * lr_scale,
               "betas": (o.beta1, o.beta2), "eps": o.eps_adam}]
    if not o.no_learn_loss:
        groups.append({"params": list(model_aux.parameters()), "lr": o.aux_lr * lr_scale})
    return runtime.adam(groups)


class MetaStep:
    """One training iteration (module docstring), without data loading and logging (also used
    by ``bench/train_step.py``)."""

    def __init__(self, options, model, model_aux, smpl, optimizer, device: torch.device):
        o = self.options = options
        self.model, self.model_aux, self.smpl, self.optimizer = model, model_aux, smpl, optimizer
        self.camera, self.weights = Camera.from_options(o), LossWeights.from_options(o)
        self.meta = o.inner_step > 0
        self.aux_grad = self.meta and not o.first_order
        # D5: aux in eval mode and frozen under --first_order, train mode (as released) otherwise
        self.aux_train = (o.aux_mode or ("eval" if o.first_order else "train")) == "train"
        self.model_aux.requires_grad_(self.aux_grad)
        self.device = device
        amp = o.amp if device.type == "cuda" else "off"
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.net: torch.nn.Module = MetaNetworks(self)   # DDP-wrapped by distribute()

    def distribute(self, sync_bn: bool = False) -> None:
        """Run the forward under DDP when a process group exists (``sync_bn``: SyncBatchNorm).
        Every parameter that requires a gradient gets one in every mode (the IEF loop feeds every
        head output back), hence no ``find_unused_parameters``."""
        self.net = dist.wrap(MetaNetworks(self), self.device, sync_bn)

    def __call__(self, batch: dict, log_inner: bool = False) -> dict[str, torch.Tensor]:
        """One iteration; ``log_inner`` also measures the inner loss after the inner step."""
        out = self.net(batch, log_inner)           # MetaStep.forward, through DDP when wrapped
        loss = out.pop("_loss")
        if dist.any_rank(not bool(torch.isfinite(loss)), self.device):
            if isinstance(self.net, torch.nn.parallel.DistributedDataParallel):
                loss.backward()     # completes DDP's reduction; the gradients are discarded
                self.optimizer.zero_grad(set_to_none=True)
            return {**out, "skipped": True}
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out

    def _backbone(self, net, img: torch.Tensor) -> torch.Tensor:
        """``net``'s features [B, D] in float32, under ``--amp`` computed in low precision (not the
        heads: adapted weights differ by lr ~1e-5 x a gradient, below bf16 / fp16 resolution)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return net.extract_features(img).float()

    def forward(self, batch: dict, log_inner: bool = False) -> dict[str, torch.Tensor]:
        """The loss to back-propagate (``_loss``) and the logged values (detached)."""
        o = self.options
        img, bbox_info = batch["img"], batch["bbox_info"]
        with torch.no_grad():
            pose = batch["pose"]
            gt_vertices = self.smpl(betas=batch["betas"], body_pose=pose[:, 3:],
                                    global_orient=pose[:, :3]).vertices
        gt = gt_targets(batch, gt_vertices, self.camera)
        features = self._backbone(self.model, img)        # once (decisions D4)
        fast, log = None, {}
        if self.meta:
            self.model_aux.train(self.aux_train)
            with torch.set_grad_enabled(self.aux_grad):
                aux_out = run_head(self.model_aux, self._backbone(self.model_aux, img), bbox_info)
                aux_pred = smpl_predict(aux_out, self.smpl, self.camera, batch)
            targets = pseudo_targets(aux_pred, batch, self.camera, detach=not self.aux_grad)
            fast, log = inner_adapt(self.model, features, bbox_info, batch, targets,
                                    self.smpl, self.camera, self.weights, o.inner_lr,
                                    o.inner_step, o.tto_mode, o.first_order)
        pred = smpl_predict(run_head(self.model, features, bbox_info, fast), self.smpl,
                            self.camera, batch)
        # under DDP, the masked terms divide by the global count (the global batch's loss)
        counts = dist.mask_counts({k: gt[k] for k in ("has_smpl", "has_pose_3d")})
        losses = smpl_loss(pred, gt, self.weights, mode="batch", counts=counts)
        loss = constants.OUTER_LOSS_SCALE * losses["total"]
        out = {f"loss_{k}": v.detach() for k, v in losses.items() if k != "total"}
        out.update(loss=loss.detach(), **log)
        if self.meta and log_inner:   # the inner loss at the adapted weights (logging only;
            # its dropout draws are forked off, so that logging never changes the training)
            dev = features.device
            with torch.no_grad(), torch.random.fork_rng(
                    devices=[dev] if dev.type == "cuda" else [], device_type="cuda"):
                p = smpl_predict(run_head(self.model, features.detach(), bbox_info, fast),
                                 self.smpl, self.camera, batch)
                after = smpl_loss(p, targets, self.weights, mode=o.tto_mode)["total"]
                out["inner_loss_after"] = after.mean() if after.dim() else after
        if log_inner:   # the first samples, for the mesh overlays
            n = N_OVERLAYS
            few = {k: v[:n] for k, v in batch.items() if torch.is_tensor(v)}
            out["_viz"] = {"batch": few, "vertices": pred["vertices"][:n].detach(),
                           "translation": self.camera.full_translation(pred["cam"][:n],
                                                                       few).detach()}
        out["_loss"] = loss
        return out


class MetaNetworks(torch.nn.Module):
    """Both networks as one module whose forward is :meth:`MetaStep.forward`, so that DDP sees
    the whole iteration and hooks the gradients of both. SMPL is deliberately not a submodule
    (DDP would broadcast its buffers every step)."""

    def __init__(self, step: MetaStep):
        super().__init__()
        self.model, self.model_aux = step.model, step.model_aux
        object.__setattr__(self, "step", step)     # a plain reference, not a submodule

    def forward(self, batch: dict, log_inner: bool = False) -> dict[str, torch.Tensor]:
        return self.step.forward(batch, log_inner)
