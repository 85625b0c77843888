"""Every loss term once (upstream-behaviour §5), shared by the training inner and outer steps
and test-time optimisation (TTO).

Each term returns a **per-sample** value [B]; :func:`reduce_per_sample` turns it into

* ``mode='batch'``: the released normalisation, ``sum(mask * v) / sum(mask)`` (the mean over
  the samples that pass the mask; 0, still in the graph, when it is empty): exactly SPIN's
  ``mean`` over the selected elements;
* ``mode='sample'``: ``mask * v`` [B], each sample's loss as if the batch were that one sample;
  the gradient of their sum with respect to a sample's own (fast) weights is that sample's own
  loss gradient (per-sample adaptation, D2).

:func:`smpl_loss` targets: inner step / TTO step 0, :func:`pseudo_targets`; outer step,
:func:`gt_targets` (the caller multiplies ``total`` by ``constants.OUTER_LOSS_SCALE``); TTO
steps >= 1, ``terms=TTO_TERMS`` with keypoint weight 1 (the raw 2D loss, not x5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import constants
from utils.geometry import batch_rodrigues

NUM_OPENPOSE = 25

# term -> (pred key, target key, mask key, LossWeights field)
_TERMS = {
    "vertices": ("vertices", "vertices", "has_smpl", "shape"),
    "keypoints_2d": ("keypoints_2d", "keypoints_2d", None, "keypoint"),
    "keypoints_3d": ("joints", "joints_3d", "has_pose_3d", "keypoint"),
    "pose": ("rotmat", "rotmat", "has_smpl", "pose"),
    "betas": ("betas", "betas", "has_smpl", "beta"),
    "cam": ("cam", None, None, "cam"),
}
ALL_TERMS = tuple(_TERMS)
INNER_TERMS = ALL_TERMS            # inner step and TTO step 0: pseudo-labels + 2D + camera
TTO_TERMS = ("keypoints_2d",)      # TTO steps >= 1: the 2D loss alone


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# per-sample terms ---------------------------------------------------------------------------------
def _keypoints_checked(pred: torch.Tensor, gt: torch.Tensor, name: str, d: int) -> torch.Tensor:
    """Check pred [B,J,d] and gt [B,J,d+1] (+ conf); gt in pred's dtype."""
    _check(pred.dim() == 3 and pred.shape[-1] == d,
           f"{name}: pred must be [B,J,{d}], got {tuple(pred.shape)}")
    _check(gt.shape == (*pred.shape[:2], d + 1),
           f"{name}: gt must be [B,J,{d + 1}] matching pred {tuple(pred.shape)}, "
           f"got {tuple(gt.shape)}")
    return gt.to(pred.dtype)


def keypoint_2d_loss(pred: torch.Tensor, gt: torch.Tensor, openpose_weight: float = 0.0,
                     gt_weight: float = 1.0) -> torch.Tensor:
    """Confidence-weighted squared 2D error per sample: pred [B, J, 2] and gt [B, J, 3] (+ conf)
    in normalised crop coords; conf[:, :25] (OpenPose) *= openpose_weight, the rest *= gt_weight;
    [B] = sum conf (p - g)^2 / (J * 2), zero-confidence entries included (SPIN, spec §9.2-16)."""
    gt = _keypoints_checked(pred, gt, "keypoint_2d_loss", 2)
    j = pred.shape[1]
    w = torch.full((j,), float(gt_weight), dtype=pred.dtype, device=pred.device)
    w[:NUM_OPENPOSE] = float(openpose_weight)
    conf = gt[..., 2] * w                                              # [B, J]
    sq = ((pred - gt[..., :2]) ** 2).sum(-1)                           # [B, J]
    return (conf * sq).sum(-1) / (j * 2)


def keypoint_3d_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Hip-centred, confidence-weighted squared 3D error per sample: pred [B, 24, 3] (the
    model's joints[:, 25:49]), gt [B, 24, 4] (+ conf), each centred on its own midpoint of the
    GT-24 hips; [B] = sum conf d^2 / (24 * 3)."""
    gt = _keypoints_checked(pred, gt, "keypoint_3d_loss", 3)
    rhip, lhip, g = constants.GT24_RHIP, constants.GT24_LHIP, gt[..., :3]
    g = g - 0.5 * (g[:, rhip] + g[:, lhip])[:, None]
    p = pred - 0.5 * (pred[:, rhip] + pred[:, lhip])[:, None]
    return (gt[..., 3] * ((p - g) ** 2).sum(-1)).sum(-1) / (pred.shape[1] * 3)


def _mean_error(pred: torch.Tensor, gt: torch.Tensor, term: str) -> torch.Tensor:
    """Per-sample mean over all but the batch dimension of |d| ('vertices': [B, V, 3]) or d^2
    ('pose': rotmats [B, 24, 3, 3]; 'betas': [B, 10]) -> [B]."""
    _check(pred.shape == gt.shape, f"smpl_loss: term {term!r}: pred and gt shapes differ: "
                                   f"{tuple(pred.shape)} vs {tuple(gt.shape)}")
    d = pred - gt.to(pred.dtype)
    return (d.abs() if term == "vertices" else d ** 2).flatten(1).mean(1)


def camera_loss(pred_cam: torch.Tensor) -> torch.Tensor:
    """Camera scale regulariser per sample: pred_cam [B, 3] (s, tx, ty) -> [B] = exp(-10 s)^2."""
    return torch.exp(-10.0 * pred_cam[:, 0]) ** 2


# reduction ----------------------------------------------------------------------------------------
def reduce_per_sample(values: torch.Tensor, mask: torch.Tensor | None = None,
                      mode: str = "batch", count: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample values [B] (optional bool/float mask [B]) -> the loss of ``mode`` (module
    docstring; 'batch' without a mask: the mean over B); masked-out samples give exactly 0 even
    if non-finite. ``count`` ('batch' with a mask): the divisor instead of ``sum(mask)`` (under
    DDP the global count / world size: the ranks' average is the global masked mean)."""
    if mask is not None:
        _check(mask.shape == values.shape,
               f"reduce_per_sample: mask {tuple(mask.shape)} does not match values "
               f"{tuple(values.shape)}")
    _check(mode in ("batch", "sample"),
           f"reduce_per_sample: mode must be 'batch' or 'sample', got {mode!r}")
    if mask is None:
        return values.mean() if mode == "batch" else values
    m = mask.to(device=values.device, dtype=values.dtype)
    v = torch.where(m != 0, values * m, torch.zeros_like(values))
    if mode == "sample":
        return v
    return v.sum() / (m.sum().clamp(min=1.0) if count is None else count)


# weights and the combined loss --------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """Term weights (spec §5): identical in the inner and outer steps."""
    shape: float = 0.5        # vertices L1
    keypoint: float = 5.0     # 2D and 3D keypoints
    pose: float = 1.0
    beta: float = 0.001
    cam: float = 1.0
    openpose: float = 0.0     # conf multiplier of the 25 OpenPose joints in the 2D loss
    gt: float = 1.0           # conf multiplier of the 24 GT joints in the 2D loss

    @classmethod
    def from_options(cls, opts) -> "LossWeights":
        """From parsed options (cam is fixed at 1)."""
        names = {"shape": "shape_loss_weight", "keypoint": "keypoint_loss_weight",
                 "pose": "pose_loss_weight", "beta": "beta_loss_weight",
                 "openpose": "openpose_train_weight", "gt": "gt_train_weight"}
        missing = [o for o in names.values() if not hasattr(opts, o)]
        _check(not missing, f"LossWeights.from_options: options lack {missing}")
        return cls(**{k: float(getattr(opts, o)) for k, o in names.items()})


def smpl_loss(pred: dict, target: dict, weights: LossWeights | None = None, mode: str = "batch",
              terms=ALL_TERMS, counts: dict | None = None) -> dict:
    """The Meta-HMR loss: weighted sum of the requested terms.

    pred: 'vertices' [B,V,3], 'keypoints_2d' [B,49,2] (normalised), 'joints' [B,49,3]
    (joints[:, 25:49] enter the 3D term), 'rotmat' [B,24,3,3], 'betas' [B,10], 'cam' [B,3].
    target: 'vertices', 'keypoints_2d' [B,49,3], 'joints_3d' [B,24,4], 'rotmat', 'betas',
    'has_smpl' [B], 'has_pose_3d' [B] (masks: vertices / pose / betas by has_smpl, keypoints_3d
    by has_pose_3d); only the keys of the requested terms are needed, else a ValueError names
    the term. Returns {term: weighted value, ..., 'total': sum}, 0-dim ('batch') or [B].
    ``counts`` ('batch'): mask key -> the divisor of its masked terms (:func:`reduce_per_sample`).
    """
    weights = weights if weights is not None else LossWeights()
    if isinstance(terms, str):
        terms = (terms,)
    unknown = [t for t in terms if t not in _TERMS]
    _check(not unknown, f"smpl_loss: unknown term(s) {unknown}; known: {list(_TERMS)}")
    _check(len(terms) > 0, "smpl_loss: no terms requested")
    out = {}
    for term in terms:
        p_key, t_key, m_key, weight = _TERMS[term]
        miss = [f"pred[{p_key!r}]"] if p_key not in pred else []
        miss += [f"target[{k!r}]" for k in (t_key, m_key) if k is not None and k not in target]
        _check(not miss, f"smpl_loss: term {term!r} needs {', '.join(miss)}")
        p, gt = pred[p_key], target.get(t_key)
        if term == "keypoints_2d":
            v = keypoint_2d_loss(p, gt, weights.openpose, weights.gt)
        elif term == "keypoints_3d":
            v = keypoint_3d_loss(p[:, NUM_OPENPOSE:NUM_OPENPOSE + gt.shape[1]], gt)
        elif term == "cam":
            v = camera_loss(p)
        else:
            v = _mean_error(p, gt, term)
        mask = target[m_key] if m_key is not None else None
        count = (counts or {}).get(m_key)
        out[term] = getattr(weights, weight) * reduce_per_sample(v, mask, mode, count)
    out["total"] = sum((out[t] for t in terms[1:]), out[terms[0]])
    return out


def _targets(batch: dict, camera, joints_3d, vertices, rotmat, betas) -> dict:
    return {"keypoints_2d": camera.target_keypoints(batch), "joints_3d": joints_3d,
            "vertices": vertices, "rotmat": rotmat, "betas": betas,
            "has_smpl": batch["has_smpl"], "has_pose_3d": batch["has_pose_3d"]}


def gt_targets(batch: dict, gt_vertices: torch.Tensor, camera) -> dict:
    """Supervised targets of the outer loss (``camera``: :class:`utils.camera.Camera`)."""
    pose = batch["pose"]
    rotmat = batch_rodrigues(pose.reshape(-1, 3)).reshape(pose.shape[0], 24, 3, 3)
    return _targets(batch, camera, batch["pose_3d"], gt_vertices, rotmat, batch["betas"])


def pseudo_targets(aux_pred: dict, batch: dict, camera, detach: bool = True) -> dict:
    """Inner-step / TTO step-0 targets: the aux prediction (``joints_3d`` = its joints[:, 25:49]
    with conf 1) and the GT 2D keypoints; the pseudo-label terms stay masked by the GT flags
    (released behaviour, spec §2.3). ``detach=False`` keeps the aux graph (second-order MAML:
    the aux network receives the meta-gradient)."""
    aux = [aux_pred["joints"][:, NUM_OPENPOSE:NUM_OPENPOSE + constants.NUM_JOINTS_SMPL],
           *(aux_pred[k] for k in ("vertices", "rotmat", "betas"))]
    j, vertices, rotmat, betas = [t.detach() for t in aux] if detach else aux
    return _targets(batch, camera, torch.cat([j, torch.ones_like(j[..., :1])], dim=-1),
                    vertices, rotmat, betas)


def total(losses: dict) -> torch.Tensor:
    """Scalar objective of :func:`smpl_loss`'s output: the batch loss, or the sum of the
    per-sample losses (module docstring)."""
    t = losses["total"]
    return t.sum() if t.dim() else t
