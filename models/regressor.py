"""HMR / CLIFF regressors with iterative error feedback (upstream-behaviour.md §2.1, §2.2, §4.1).

:class:`Regressor`: the six released networks and a ResNet-18 extra, with the released keys,
shapes and order. The head (fc1, fc2, decpose, decshape, deccam) is the fast-weight set (D3): it
computes every linear map with :func:`batched_linear`, so it runs under
``torch.func.functional_call`` with shared ([out, in]) or per-sample ([B, out, in]) weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import constants
from config import require
from . import backbones
from utils.errors import UserError
from utils.geometry import batch_rodrigues, rot6d_to_rotmat, rotmat_to_rot6d
from utils.safe_npz import read_npz

NPOSE = 6 * constants.NUM_JOINTS_SMPL      # 144
NSHAPE = constants.NUM_BETAS               # 10
NCAM = 3
NBBOX = 3                                  # CLIFF bbox_info
HIDDEN = 1024
INIT_BUFFERS = ("init_pose", "init_shape", "init_cam")
HEAD_LAYERS = ("fc1", "fc2", "decpose", "decshape", "deccam")
HEAD_PARAM_NAMES = tuple(f"{layer}.{p}" for layer in HEAD_LAYERS for p in ("weight", "bias"))
MODELS = ("cliff", "hmr")
BACKBONES = ("resnet", "hrnet", "resnet18")
ROLES = ("main", "aux")
DEFAULT_N_ITER = {"main": 10, "aux": 3}


class RegressorOutput(NamedTuple):
    pred_rotmat: torch.Tensor   # [B, 24, 3, 3]
    pred_betas: torch.Tensor    # [B, 10]
    pred_cam: torch.Tensor      # [B, 3] weak-perspective crop camera [s, tx, ty]
    pred_pose6d: torch.Tensor   # [B, 144]


@dataclass(frozen=True)
class LowRankDelta:
    """A per-sample weight update as factors, dW[i] = u[i]ᵀ v[i]; u [B, R, out], v [B, R, in]:
    an SGD step of the head is a sum of outer products, dW = -lr Σ_t g_t x_tᵀ (R = n_iter per
    step), so the adapted layer maps x to W x + u[i]ᵀ (v[i] x) without B weight matrices."""

    u: torch.Tensor
    v: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in] -> dW[i] x[i] [B, out], in the factors' dtype even under autocast (an
        update of lr ~1e-5 underflows in float16)."""
        with torch.autocast(x.device.type, enabled=False):
            vx = torch.bmm(self.v, x.to(self.v.dtype).unsqueeze(2))
            return torch.bmm(self.u.transpose(1, 2), vx).squeeze(2)

    def dense(self) -> torch.Tensor:
        """dW as [B, out, in] (for inspection and tests)."""
        return torch.bmm(self.u.transpose(1, 2), self.v)

    def __add__(self, other: "LowRankDelta") -> "LowRankDelta":
        """The sum of two updates (factors side by side, rank R1 + R2)."""
        return LowRankDelta(torch.cat([self.u, other.u], 1), torch.cat([self.v, other.v], 1))


def batched_linear(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ + b: x [B, in]; weight [out, in] or per-sample [B, out, in]; bias None, [out]
    or [B, out]. Returns [B, out]."""
    if weight.dim() == 2:
        if bias is not None and bias.dim() == 2:
            return F.linear(x, weight) + bias
        return F.linear(x, weight, bias)
    if weight.dim() != 3 or x.dim() != 2 or weight.shape[0] != x.shape[0]:
        raise ValueError(f"batched_linear: per-sample weight {tuple(weight.shape)} does not match "
                         f"input {tuple(x.shape)} (expected weight [B, out, in], x [B, in])")
    if bias is None:
        return torch.bmm(x.unsqueeze(1), weight.transpose(1, 2)).squeeze(1)
    bias = bias.unsqueeze(-2).expand(x.shape[0], 1, weight.shape[1])   # [B, 1, out]
    return torch.baddbmm(bias, x.unsqueeze(1), weight.transpose(1, 2)).squeeze(1)


class MeanParamsError(UserError, ValueError):
    """``smpl_mean_params.npz`` is unreadable or has the wrong content."""


MEAN_PARAMS_MAX = 1e3   # larger mean parameters are a damaged file


def load_mean_params(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN's ``smpl_mean_params.npz`` -> pose6d [1,144], shape [1,10], cam [1,3] (float32);
    a 72-d axis-angle ``pose`` is converted to 6D."""
    p = require(path, "SMPL mean parameters (smpl_mean_params.npz)")
    f = read_npz(p)   # never unpickles; one-line errors for an unreadable file
    if missing := [k for k in ("pose", "shape", "cam") if k not in f]:
        raise MeanParamsError(f"{p}: missing keys {missing} (has {sorted(f)}). Use SPIN's "
                              f"smpl_mean_params.npz")
    if bad := [k for k in ("pose", "shape", "cam") if np.asarray(f[k]).dtype.kind not in "iuf"]:
        raise MeanParamsError(f"{p}: {bad[0]!r} must be numbers, not "
                              f"{np.asarray(f[bad[0]]).dtype}. Use SPIN's smpl_mean_params.npz")
    pose, shape, cam = (torch.as_tensor(np.asarray(f[k], dtype=np.float32)).reshape(1, -1)
                        for k in ("pose", "shape", "cam"))
    # mean rotations, shape coefficients and a camera: all of order 1 (SPIN's are within +-3)
    if not all(bool((t.abs() <= MEAN_PARAMS_MAX).all()) for t in (pose, shape, cam)):
        raise MeanParamsError(f"{p}: holds NaN or inf, or values beyond +-{MEAN_PARAMS_MAX:g}. "
                              f"Use SPIN's smpl_mean_params.npz")
    if pose.shape[1] == 3 * constants.NUM_JOINTS_SMPL:        # axis-angle -> 6D
        pose = rotmat_to_rot6d(batch_rodrigues(pose.reshape(-1, 3))).reshape(1, NPOSE)
    for name, t, n in (("pose", pose, NPOSE), ("shape", shape, NSHAPE), ("cam", cam, NCAM)):
        if t.shape[1] != n:
            raise MeanParamsError(f"{p}: '{name}' has {t.shape[1]} values, expected {n}"
                             + (" (6D) or 72 (axis-angle)" if name == "pose" else ""))
    return pose, shape, cam


class Regressor(nn.Module):
    """HMR/CLIFF regressor, encoder + IEF head, randomly initialised with the released
    architecture and keys (``init_pose`` [1,144], ``init_shape`` [1,10], ``init_cam`` [1,3],
    then the modules). model 'cliff' | 'hmr'; backbone 'resnet' | 'hrnet' (cliff only) |
    'resnet18'; role 'main' (10 IEF iterations) | 'aux' (3); bbox_type 'rect' (256×192) |
    'square' (224²), the crop size only; mean_params: smpl_mean_params.npz, or None for
    the identity pose, zero shape and cam. Attributes: model_type, backbone_name, role,
    bbox_type, use_bbox_info, feature_dim, n_iter."""

    head_param_names = HEAD_PARAM_NAMES

    def __init__(self, model: str = "cliff", backbone: str = "resnet", role: str = "main",
                 bbox_type: str = "rect", mean_params: str | os.PathLike | None = None,
                 n_iter: int | None = None) -> None:
        super().__init__()
        for name, value, choices in (("model", model, MODELS), ("backbone", backbone, BACKBONES),
                                     ("role", role, ROLES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}: expected one of {choices}")
        constants.crop_size(bbox_type)            # validates bbox_type
        if model == "hmr" and backbone == "hrnet":
            raise ValueError("there is no HMR network with an HRNet backbone (upstream has none); "
                             "use --backbone resnet (or resnet18) with --model hmr")
        self.model_type, self.backbone_name, self.role, self.bbox_type = (
            model, backbone, role, bbox_type)
        self.use_bbox_info = model == "cliff"
        self.n_iter = DEFAULT_N_ITER[role] if n_iter is None else int(n_iter)
        init = load_mean_params(mean_params) if mean_params is not None else (   # stand-ins
            torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).repeat(constants.NUM_JOINTS_SMPL)[None],
            torch.zeros(1, NSHAPE), torch.zeros(1, NCAM))
        for name, value in zip(INIT_BUFFERS, init):
            self.register_buffer(name, value)

        # released order: ResNet trunk or HRNet encoder.*, then the head, then HRNet backbone.*
        if backbone in backbones.RESNET_DIMS:
            for name, mod in backbones.resnet_trunk(backbone).items():
                self.add_module(name, mod)
            self.feature_dim = backbones.RESNET_DIMS[backbone]
        elif role == "aux":
            self.feature_dim = backbones.CLS_HRNET_DIM
            self.encoder = backbones.hrnet_w48(num_classes=0)
        else:
            self.feature_dim = backbones.POSE_HRNET_DIM
        n_in = self.feature_dim + (NBBOX if self.use_bbox_info else 0) + NPOSE + NSHAPE + NCAM
        self.fc1, self.drop1 = nn.Linear(n_in, HIDDEN), nn.Dropout(0.5)
        self.fc2, self.drop2 = nn.Linear(HIDDEN, HIDDEN), nn.Dropout(0.5)
        self.decpose, self.decshape, self.deccam = (
            nn.Linear(HIDDEN, NPOSE), nn.Linear(HIDDEN, NSHAPE), nn.Linear(HIDDEN, NCAM))
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        if backbone == "hrnet" and role == "main":
            self.backbone = backbones.PoseHRNet()

    @property
    def crop_size(self) -> tuple[int, int]:
        """(H, W) of the input crop: (256, 192) rect, (224, 224) square."""
        return constants.crop_size(self.bbox_type)

    def head_params(self) -> dict[str, nn.Parameter]:
        """The 10 fast-weight parameters by state_dict name, in upstream order."""
        return {name: self.get_parameter(name) for name in HEAD_PARAM_NAMES}

    def trunk_state_keys(self) -> list[str]:
        """state_dict keys of the encoder (everything but the init buffers and the head)."""
        skip = {*INIT_BUFFERS, *HEAD_LAYERS}
        return [k for k in self.state_dict() if k.split(".")[0] not in skip]

    def extract_features(self, img: torch.Tensor) -> torch.Tensor:
        """img [B, 3, H, W] (ImageNet-normalised crop) -> features [B, feature_dim]."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got {tuple(img.shape)}")
        if self.backbone_name == "hrnet" and (img.shape[2] % 32 or img.shape[3] % 32):
            raise ValueError(f"HRNet needs H and W divisible by 32, got {tuple(img.shape[2:])}")
        if self.backbone_name in backbones.RESNET_DIMS:
            return backbones.resnet_features(self, img)
        return self.backbone(img) if self.role == "main" else self.encoder(img)

    def forward(self, img: torch.Tensor | None = None, bbox_info: torch.Tensor | None = None,
                n_iter: int | None = None, features: torch.Tensor | None = None,
                head_delta: dict | None = None, record: dict | None = None) -> RegressorOutput:
        """IEF from the mean parameters: img [B, 3, H, W] or ``features`` [B, D] (encoder
        skipped, D4); bbox_info [B, 3] (CLIFF only); n_iter default ``self.n_iter``.

        head_delta: per-sample head updates {name: [B, out, in] | LowRankDelta, or [B, out] for
        biases}: sample i runs with ``W + delta[i]`` (the shared W's gradient stays one matmul).
        record: collects {layer: [(input [B, in], output [B, out]), ...]} in call order.
        """
        if (img is None) == (features is None):
            raise ValueError("pass exactly one of img [B,3,H,W] or features [B,D]")
        if features is None:
            features = self.extract_features(img)
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [B, {self.feature_dim}], got "
                             f"{tuple(features.shape)}")
        batch = features.shape[0]
        parts = [features]
        if self.use_bbox_info:
            if bbox_info is None or tuple(bbox_info.shape) != (batch, NBBOX):
                got = None if bbox_info is None else tuple(bbox_info.shape)
                raise ValueError(f"CLIFF needs bbox_info [B={batch}, 3], got {got}")
            parts.append(bbox_info.to(features.dtype))

        pose, shape, cam = (t.expand(batch, -1) for t in
                            (self.init_pose, self.init_shape, self.init_cam))
        d = head_delta or {}

        def lin(name: str, x: torch.Tensor) -> torch.Tensor:   # head layer (+ its delta)
            layer = getattr(self, name)
            y = batched_linear(x, layer.weight, layer.bias)
            dw, db = d.get(f"{name}.weight"), d.get(f"{name}.bias")
            if dw is not None:
                y = y + (dw(x) if isinstance(dw, LowRankDelta) else batched_linear(x, dw))
            if db is not None:
                y = y + db
            if record is not None:
                record.setdefault(name, []).append((x, y))
            return y

        for _ in range(self.n_iter if n_iter is None else n_iter):
            x = self.drop1(lin("fc1", torch.cat(parts + [pose, shape, cam], dim=1)))
            x = self.drop2(lin("fc2", x))
            pose = lin("decpose", x) + pose
            shape = lin("decshape", x) + shape
            cam = lin("deccam", x) + cam
        rotmat = rot6d_to_rotmat(pose).view(batch, constants.NUM_JOINTS_SMPL, 3, 3)
        return RegressorOutput(rotmat, shape, cam, pose)


build_model = Regressor   # the public constructor
