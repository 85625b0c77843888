"""The two camera models of Meta-HMR and the prediction they score (upstream-behaviour §4.4).

``cliff``: the crop camera (s, tx, ty) becomes a full-image translation
(:func:`utils.geometry.cam_crop2full`); joints are projected with the image's focal length and
centre, then mapped into the crop by ``crop_trans``. ``hmr``: a crop camera with focal 5000.
``smpl`` arguments: any body model called like :class:`models.smpl.SMPL`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from constants import FOCAL_LENGTH, options_crop_size
from utils.geometry import (cam_crop2full, crop_cam_to_translation, normalize_keypoints_2d,
                            project_crop, project_full_to_crop)

Tensor = torch.Tensor

PRED_KEYS = ("rotmat", "betas", "cam", "vertices", "joints", "keypoints_2d")


@dataclass(frozen=True)
class Camera:
    """Projection of predicted joints into normalised crop coordinates; ``kind`` 'cliff' or
    'hmr', ``crop_h``, ``crop_w`` the network's input crop in pixels."""

    kind: str
    crop_h: int
    crop_w: int

    @classmethod
    def from_options(cls, options) -> "Camera":
        return cls(options.model, *options_crop_size(options))

    def img_hw(self, batch: dict) -> Tensor:
        """[B,2] full-image (h, w)."""
        return torch.stack([batch["img_h"], batch["img_w"]], dim=-1).float()

    def full_translation(self, cam: Tensor, batch: dict) -> Tensor:
        """cam [B,3] -> [B,3] camera translation in the full image (CLIFF) or the crop (HMR)."""
        if self.kind == "cliff":
            return cam_crop2full(cam, batch["center"], batch["scale"], self.img_hw(batch),
                                 batch["focal_length"])
        return crop_cam_to_translation(cam, self.crop_h)

    def crop_intrinsics(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Focal [B] and principal point [B,2] in crop pixels going with :meth:`full_translation`
        (rendering over the input crop): CLIFF's full-image camera seen through the un-rotated
        ``crop_trans``; HMR's focal 5000 at the crop centre."""
        B = batch["img"].shape[0]
        if self.kind == "cliff":
            A = batch["crop_trans"].float()                 # [B,2,3] = [[k,0,a],[0,k,b]]
            centre = torch.stack([batch["img_w"], batch["img_h"]], -1).float() / 2
            principal = (A[:, :, :2] @ centre[..., None])[..., 0] + A[:, :, 2]
            return A[:, 0, 0] * batch["focal_length"].float(), principal
        f = torch.full((B,), FOCAL_LENGTH, device=batch["img"].device)
        return f, torch.tensor([self.crop_w / 2, self.crop_h / 2], device=f.device).expand(B, 2)

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


def smpl_predict(out, smpl, camera: Camera, batch: dict) -> dict[str, Tensor]:
    """Regressor output (rotmat [B,24,3,3], betas [B,10], cam [B,3], ...) -> the prediction the
    losses score: rotmat, betas, cam, vertices [B,V,3], joints [B,49,3], keypoints_2d [B,49,2]."""
    rotmat, betas, cam = out[0], out[1], out[2]
    so = smpl(betas=betas, body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1], pose2rot=False)
    return {"rotmat": rotmat, "betas": betas, "cam": cam, "vertices": so.vertices,
            "joints": so.joints, "keypoints_2d": camera.project(so.joints, cam, batch)}
