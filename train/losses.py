"""Every loss term once (upstream-behaviour §5), shared by the training inner and outer steps
and test-time optimisation (TTO).

Each term returns a **per-sample** value [B]; :func:`reduce_per_sample` turns it into

* ``mode='batch'``: the released normalisation, ``sum(mask * v) / sum(mask)`` (the mean over the
  N samples that pass the mask; 0, still in the graph, when it is empty): exactly SPIN's
  ``mean`` over the selected elements, 2D ``sum conf (p-g)^2 / (B 49 2)``, 3D
  ``sum conf d^2 / (N 24 3)``, vertices ``sum |d| / (N V 3)``, pose ``sum d^2 / (N 24 9)``,
  betas ``sum d^2 / (N 10)``, camera mean over B;
* ``mode='sample'``: ``mask * v`` [B], each sample's loss as if the batch were that one sample;
  the gradient of their sum with respect to a sample's own (fast) weights is that sample's own
  loss gradient (per-sample adaptation, D2).

:func:`smpl_loss` targets: inner step / TTO step 0, :func:`pseudo_targets` (aux vertices,
rotmats, betas, ``joints_3d`` = aux ``joints[:, 25:49]`` with conf 1, the GT 2D keypoints and
the GT ``has_smpl`` / ``has_pose_3d`` masks); outer step, :func:`gt_targets` (the caller
multiplies ``total`` by ``constants.OUTER_LOSS_SCALE``); TTO steps >= 1, ``terms=TTO_TERMS``
with keypoint weight 1 (the raw 2D loss, not x5; the OpenPose / GT conf multipliers apply).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import constants
from utils.geometry import batch_rodrigues

__all__ = [
    "keypoint_2d_loss", "keypoint_3d_loss", "vertex_loss", "pose_loss", "betas_loss",
    "camera_loss", "reduce_per_sample", "LossWeights", "smpl_loss", "gt_targets", "pseudo_targets",
    "total", "ALL_TERMS", "INNER_TERMS", "TTO_TERMS",
]

NUM_OPENPOSE = 25

ALL_TERMS = ("vertices", "keypoints_2d", "keypoints_3d", "pose", "betas", "cam")
INNER_TERMS = ALL_TERMS            # inner step and TTO step 0: pseudo-labels + 2D + camera
TTO_TERMS = ("keypoints_2d",)      # TTO steps >= 1: the 2D loss alone


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ----------------------------------------------------------------------------------------------
# per-sample terms
def _keypoints_checked(pred: torch.Tensor, gt: torch.Tensor, name: str, d: int) -> torch.Tensor:
    """Check pred [B,J,d] and gt [B,J,d+1] (+ conf); gt in pred's dtype."""
    _check(pred.dim() == 3 and pred.shape[-1] == d,
           f"{name}: pred must be [B,J,{d}], got {tuple(pred.shape)}")
    _check(gt.shape == (*pred.shape[:2], d + 1),
           f"{name}: gt must be [B,J,{d + 1}] matching pred {tuple(pred.shape)}, "
           f"got {tuple(gt.shape)}")
    return gt.to(pred.dtype)


def keypoint_2d_loss(pred: torch.Tensor, gt: torch.Tensor, openpose_weight: float = 0.0,
                     gt_weight: float = 1.0, num_openpose: int = NUM_OPENPOSE) -> torch.Tensor:
    """Confidence-weighted squared 2D error per sample: pred [B, J, 2] and gt [B, J, 3] (+ conf)
    in normalised crop coords; conf[:, :num_openpose] *= openpose_weight, the rest *= gt_weight;
    [B] = sum conf (p - g)^2 / (J * 2), zero-confidence entries included (SPIN, spec §9.2-16).
    """
    gt = _keypoints_checked(pred, gt, "keypoint_2d_loss", 2)
    j = pred.shape[1]
    w = torch.full((j,), float(gt_weight), dtype=pred.dtype, device=pred.device)
    w[:min(num_openpose, j)] = float(openpose_weight)
    conf = gt[..., 2] * w                                              # [B, J]
    sq = ((pred - gt[..., :2]) ** 2).sum(-1)                           # [B, J]
    return (conf * sq).sum(-1) / (j * 2)


def keypoint_3d_loss(pred: torch.Tensor, gt: torch.Tensor, rhip: int = constants.GT24_RHIP,
                     lhip: int = constants.GT24_LHIP) -> torch.Tensor:
    """Hip-centred, confidence-weighted squared 3D error per sample: pred [B, 24, 3] (the
    model's joints[:, 25:49]), gt [B, 24, 4] (+ conf), each centred on its own midpoint of
    joints ``rhip`` and ``lhip``; [B] = sum conf d^2 / (24 * 3)."""
    gt = _keypoints_checked(pred, gt, "keypoint_3d_loss", 3)
    conf, g = gt[..., 3], gt[..., :3]
    g = g - 0.5 * (g[:, rhip] + g[:, lhip])[:, None]
    p = pred - 0.5 * (pred[:, rhip] + pred[:, lhip])[:, None]
    return (conf * ((p - g) ** 2).sum(-1)).sum(-1) / (pred.shape[1] * 3)


def _same_shape(pred, gt, name):
    _check(pred.shape == gt.shape,
           f"{name}: pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    _check(pred.dim() >= 2, f"{name}: expected a batch [B, ...], got {tuple(pred.shape)}")


def vertex_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L1 per sample: pred, gt [B, V, 3] -> [B] = sum |d| / (V * 3)."""
    _same_shape(pred, gt, "vertex_loss")
    return (pred - gt.to(pred.dtype)).abs().flatten(1).mean(1)


def pose_loss(pred_rotmat: torch.Tensor, gt_rotmat: torch.Tensor) -> torch.Tensor:
    """MSE on rotation matrices per sample: [B, 24, 3, 3] x2 -> [B] = sum d^2 / (24 * 9)."""
    _same_shape(pred_rotmat, gt_rotmat, "pose_loss")
    return ((pred_rotmat - gt_rotmat.to(pred_rotmat.dtype)) ** 2).flatten(1).mean(1)


def betas_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """MSE on shape coefficients per sample: [B, 10] x2 -> [B] = sum d^2 / 10."""
    _same_shape(pred, gt, "betas_loss")
    return ((pred - gt.to(pred.dtype)) ** 2).flatten(1).mean(1)


def camera_loss(pred_cam: torch.Tensor) -> torch.Tensor:
    """Camera scale regulariser per sample: pred_cam [B, 3] (s, tx, ty) -> [B] = exp(-10 s)^2."""
    _check(pred_cam.dim() == 2 and pred_cam.shape[-1] == 3,
           f"camera_loss: pred_cam must be [B,3], got {tuple(pred_cam.shape)}")
    return torch.exp(-10.0 * pred_cam[:, 0]) ** 2


# ----------------------------------------------------------------------------------------------
# reduction
def reduce_per_sample(values: torch.Tensor, mask: torch.Tensor | None = None,
                      mode: str = "batch") -> torch.Tensor:
    """Per-sample values [B] (optional bool/float mask [B]) -> the loss of ``mode`` (module
    docstring; 'batch' without a mask: the mean over B). Masked-out samples give exactly 0
    even if their value is non-finite."""
    _check(values.dim() == 1, f"reduce_per_sample: values must be [B], got {tuple(values.shape)}")
    if mask is None:
        m = torch.ones_like(values)
    else:
        _check(mask.shape == values.shape,
               f"reduce_per_sample: mask {tuple(mask.shape)} does not match values "
               f"{tuple(values.shape)}")
        m = mask.to(device=values.device, dtype=values.dtype)
    v = torch.where(m != 0, values * m, torch.zeros_like(values))
    if mode == "sample":
        return v
    if mode == "batch":
        return v.sum() / m.sum().clamp(min=1.0) if mask is not None else v.mean()
    raise ValueError(f"reduce_per_sample: mode must be 'batch' or 'sample', got {mode!r}")


# ----------------------------------------------------------------------------------------------
# weights and the combined loss
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

    def term_weight(self, term: str) -> float:
        return {"vertices": self.shape, "keypoints_2d": self.keypoint,
                "keypoints_3d": self.keypoint, "pose": self.pose, "betas": self.beta,
                "cam": self.cam}[term]


# term -> (pred keys, target keys incl. mask)
_NEEDS = {
    "vertices": (("vertices",), ("vertices", "has_smpl")),
    "keypoints_2d": (("keypoints_2d",), ("keypoints_2d",)),
    "keypoints_3d": (("joints",), ("joints_3d", "has_pose_3d")),
    "pose": (("rotmat",), ("rotmat", "has_smpl")),
    "betas": (("betas",), ("betas", "has_smpl")),
    "cam": (("cam",), ()),
}


def smpl_loss(pred: dict, target: dict, weights: LossWeights | None = None, mode: str = "batch",
              terms=ALL_TERMS) -> dict:
    """The Meta-HMR loss: weighted sum of the requested terms.

    pred: 'vertices' [B,V,3], 'keypoints_2d' [B,49,2] (normalised), 'joints' [B,49,3]
    (joints[:, 25:49] enter the 3D term), 'rotmat' [B,24,3,3], 'betas' [B,10], 'cam' [B,3].
    target: 'vertices', 'keypoints_2d' [B,49,3], 'joints_3d' [B,24,4], 'rotmat', 'betas',
    'has_smpl' [B], 'has_pose_3d' [B] (masks: vertices / pose / betas by has_smpl, keypoints_3d
    by has_pose_3d); only the keys of the requested terms are needed, else a ValueError names
    the term. Returns {term: weighted value, ..., 'total': sum}, 0-dim ('batch') or [B].
    """
    weights = weights if weights is not None else LossWeights()
    if isinstance(terms, str):
        terms = (terms,)
    unknown = [t for t in terms if t not in _NEEDS]
    _check(not unknown, f"smpl_loss: unknown term(s) {unknown}; known: {list(_NEEDS)}")
    _check(len(terms) > 0, "smpl_loss: no terms requested")
    _check(mode in ("batch", "sample"),
           f"smpl_loss: mode must be 'batch' or 'sample', got {mode!r}")
    for term in terms:
        p_keys, t_keys = _NEEDS[term]
        miss = [f"pred[{k!r}]" for k in p_keys if k not in pred]
        miss += [f"target[{k!r}]" for k in t_keys if k not in target]
        _check(not miss, f"smpl_loss: term {term!r} needs {', '.join(miss)}")

    out = {}
    for term in terms:
        if term == "vertices":
            v, m = vertex_loss(pred["vertices"], target["vertices"]), target["has_smpl"]
        elif term == "keypoints_2d":
            v = keypoint_2d_loss(pred["keypoints_2d"], target["keypoints_2d"],
                                 weights.openpose, weights.gt)
            m = None
        elif term == "keypoints_3d":
            joints = pred["joints"]
            n3 = target["joints_3d"].shape[1]
            _check(joints.dim() == 3 and joints.shape[1] >= NUM_OPENPOSE + n3,
                   f"smpl_loss: term 'keypoints_3d' needs pred['joints'] with at least "
                   f"{NUM_OPENPOSE + n3} joints, got {tuple(joints.shape)}")
            v = keypoint_3d_loss(joints[:, NUM_OPENPOSE:NUM_OPENPOSE + n3], target["joints_3d"])
            m = target["has_pose_3d"]
        elif term == "pose":
            v, m = pose_loss(pred["rotmat"], target["rotmat"]), target["has_smpl"]
        elif term == "betas":
            v, m = betas_loss(pred["betas"], target["betas"]), target["has_smpl"]
        else:  # cam
            v, m = camera_loss(pred["cam"]), None
        out[term] = weights.term_weight(term) * reduce_per_sample(v, m, mode)
    total = out[terms[0]]
    for term in terms[1:]:
        total = total + out[term]
    out["total"] = total
    return out


def gt_targets(batch: dict, gt_vertices: torch.Tensor, camera) -> dict:
    """Supervised targets of the outer loss (``camera``: :class:`utils.camera.Camera`)."""
    pose = batch["pose"]
    return {
        "keypoints_2d": camera.target_keypoints(batch),
        "joints_3d": batch["pose_3d"],
        "vertices": gt_vertices,
        "rotmat": batch_rodrigues(pose.reshape(-1, 3)).reshape(pose.shape[0], 24, 3, 3),
        "betas": batch["betas"],
        "has_smpl": batch["has_smpl"], "has_pose_3d": batch["has_pose_3d"],
    }


def pseudo_targets(aux_pred: dict, batch: dict, camera, detach: bool = True) -> dict:
    """Inner-step / TTO step-0 targets (module docstring); the pseudo-label terms stay masked
    by the GT flags (released behaviour, spec §2.3). ``detach=False`` keeps the aux graph
    (second-order MAML: the aux network receives the meta-gradient)."""
    d = (lambda t: t.detach()) if detach else (lambda t: t)  # noqa: E731
    j = d(aux_pred["joints"][:, NUM_OPENPOSE:NUM_OPENPOSE + constants.NUM_JOINTS_SMPL])
    return {
        "keypoints_2d": camera.target_keypoints(batch),
        "joints_3d": torch.cat([j, torch.ones_like(j[..., :1])], dim=-1),
        "vertices": d(aux_pred["vertices"]),
        "rotmat": d(aux_pred["rotmat"]),
        "betas": d(aux_pred["betas"]),
        "has_smpl": batch["has_smpl"], "has_pose_3d": batch["has_pose_3d"],
    }


def total(losses: dict) -> torch.Tensor:
    """Scalar objective of :func:`smpl_loss`'s output: the batch loss, or the sum of the
    per-sample losses (module docstring)."""
    t = losses["total"]
    return t.sum() if t.dim() else t
