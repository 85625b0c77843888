"""``--viz`` of eval_cliff.py / eval_hmr.py: the predicted meshes over the input images."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

import constants
from datasets.inputs import sample_name
from utils.camera import Camera
from utils.imutils import denormalize_image


class Visualizer:
    """Renders the predicted meshes (before / after TTO) over the input images (``--viz``).

    CLIFF: the original image (3DPW at half size, the dataset's own reader), the per-image
    focal length and the image centre, the full-image camera. HMR: the un-normalised crop, focal
    5000 and the crop centre. Files in ``--viz_dir``: ``<name>_input.jpg``, ``_before.jpg``,
    ``_ours_gt.jpg`` (``_ours_openpose.jpg`` with --use_openpose2d), ``_compare.jpg`` (the three
    side by side) and, with ``--save_obj``, ``<name>.obj`` (the adapted mesh, camera
    coordinates). ``<name>``: :func:`datasets.inputs.sample_name`.
    """

    AFTER_GT = (0.65, 0.74, 0.86)       # light blue
    AFTER_OPENPOSE = (0.95, 0.62, 0.78)  # pink
    BEFORE = (0.80, 0.80, 0.80)         # grey

    def __init__(self, o, dataset, smpl, camera: Camera):
        from utils.renderer import Renderer
        self.dataset, self.camera = dataset, camera
        self.dir = Path(getattr(o, "viz_dir", None) or "eval_result/img_viz")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max = int(getattr(o, "viz_max", 0))
        self.save_obj = bool(getattr(o, "save_obj", False))
        self.suffix = "ours_openpose" if getattr(o, "use_openpose2d", False) else "ours_gt"
        self.color = self.AFTER_OPENPOSE if getattr(o, "use_openpose2d", False) else self.AFTER_GT
        self.faces = np.asarray(smpl.faces, np.int64)
        self.renderer = Renderer(self.faces, backend=getattr(o, "viz_backend", "auto"))
        self.count, self.names = 0, set()

    def _indices(self, B: int) -> range:
        return range(1 if self.max == 0 else B if self.max < 0 else
                     min(B, max(0, self.max - self.count)))

    def _image(self, b: dict, i: int) -> np.ndarray:
        """RGB uint8 background of sample i."""
        if self.camera.kind == "hmr":
            return denormalize_image(b["img"][i].detach().float().cpu().numpy())
        bgr = self.dataset.read_image(int(b["sample_index"][i]))
        if bgr is None:
            raise RuntimeError(f"--viz: cannot read {b['imgname'][i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __call__(self, b: dict, res) -> None:
        for i in self._indices(res.after["vertices"].shape[0]):
            img = self._image(b, i)
            if self.camera.kind == "hmr":
                f, c = constants.FOCAL_LENGTH, (self.camera.crop_w / 2.0, self.camera.crop_h / 2.0)
            else:
                f, c = float(b["focal_length"][i]), (img.shape[1] / 2.0, img.shape[0] / 2.0)
            name = sample_name(b["imgname"][i], self.dataset.dataset, int(b["sample_index"][i]),
                               self.names)
            out = {"input": img}
            one = {k: v[i:i + 1] for k, v in b.items() if torch.is_tensor(v)}
            for tag, pred, col in (("before", res.before, self.BEFORE),
                                   (self.suffix, res.after, self.color)):
                t = self.camera.full_translation(pred["cam"][i:i + 1], one)[0]
                verts = (pred["vertices"][i] + t).detach().float().cpu().numpy()
                out[tag] = self.renderer.render(verts, f, c, img, color=col)
                if tag == self.suffix and self.save_obj:
                    from utils.renderer import save_obj
                    save_obj(verts, self.faces, self.dir / f"{name}.obj")
            out["compare"] = np.concatenate([out["input"], out["before"], out[self.suffix]], 1)
            for tag, im in out.items():
                p = self.dir / f"{name}_{tag}.jpg"
                if not cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"--viz: could not write {p}")
            self.count += 1

    def close(self) -> None:
        self.renderer.close()
