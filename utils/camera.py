"""The two camera models of Meta-HMR and the prediction they score (upstream-behaviour §4.4).

``cliff``: the network's crop camera (s, tx, ty) becomes a translation in the full image
(:func:`utils.geometry.cam_crop2full`), joints are projected with the image's focal length and
centre and mapped into the crop with the sample's ``crop_trans``. ``hmr``: a weak-perspective
camera in the crop, focal 5000.

Shared by the training inner step, the outer loss, test-time optimisation, evaluation and the
demo. ``smpl`` arguments are any body model called like :class:`models.smpl.SMPL` (this module
imports nothing from ``models/``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from constants import FOCAL_LENGTH, options_crop_size
from utils.geometry import (cam_crop2full, normalize_keypoints_2d, project_crop,
                            project_full_to_crop)

Tensor = torch.Tensor

PRED_KEYS = ("rotmat", "betas", "cam", "vertices", "joints", "keypoints_2d")


@dataclass(frozen=True)
class Camera:
    """Projection of the predicted joints into normalised crop coordinates.

    ``kind``: 'cliff' (full-image perspective camera) or 'hmr' (crop camera);
    ``crop_h``, ``crop_w``: the network's input crop in pixels.
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
        """cam [B,3] -> [B,3] camera translation in the full image (CLIFF) or the crop (HMR)."""
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


def smpl_predict(out, smpl, camera: Camera, batch: dict) -> dict[str, Tensor]:
    """Regressor output (rotmat [B,24,3,3], betas [B,10], cam [B,3], ...) -> the prediction
    every loss scores: dict(rotmat, betas, cam, vertices [B,V,3], joints [B,49,3],
    keypoints_2d [B,49,2] normalised crop coordinates)."""
    rotmat, betas, cam = out[0], out[1], out[2]
    so = smpl(betas=betas, body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1], pose2rot=False)
    return {"rotmat": rotmat, "betas": betas, "cam": cam, "vertices": so.vertices,
            "joints": so.joints, "keypoints_2d": camera.project(so.joints, cam, batch)}
