"""Evaluation with test-time optimisation: eval_cliff.py, eval_hmr.py and the in-training test.

Per batch (upstream-behaviour §7, decisions D2, D6-D8): :func:`train.tto.test_time_optimize`
predicts before and after TTO; :class:`EvalTargets` builds the protocol's ground truth;
:func:`errors_mm` scores MPJPE, PA-MPJPE (per-sample Procrustes) and PVE (unaligned), in mm.
Joints, each centred on its pelvis (a no-op on SPIN's pelvis-centred files):

* all sets but MPI-INF-3DHP: the 14 LSP joints of ``J_regressor_h36m`` on the gendered SMPL
  mesh (female where ``gender == 1``, else male), the prediction's likewise on its neutral mesh;
* MPI-INF-3DHP: ``pose_3d[:, J24_TO_J17]`` against the prediction's 17 regressed joints; no PVE;
* ``--h36m_gt mocap`` (h36m-p1/p2): SPIN's protocol, the 14 mocap joints of
  ``pose_3d[:, J24_TO_J14]``; PVE still against the MoSh mesh (not available for a file with
  only the mocap ``S``, e.g. SPIN's ``h36m_valid_protocol2.npz``).

A test set without the GT its protocol scores against (``pose``/``shape`` for a mesh, ``S`` for
joints) is refused (:func:`check_ground_truth`), rather than scored against zeros.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import constants
from utils.runtime import place, seed_everything, select_device, to_device
from config import DataPaths, MissingFileError
from train.tto import TTOConfig, test_time_optimize
from train.visualize import Visualizer
from utils.atomic import atomic_path
from utils.camera import Camera
from utils.errors import OptionError, UserError
from utils.pose_utils import mpjpe as _mpjpe, pve as _pve, reconstruction_error

METRICS = ("MPJPE", "PA-MPJPE", "PVE")
_KEY = {"MPJPE": "mpjpe", "PA-MPJPE": "pa_mpjpe", "PVE": "pve"}
NO_MESH_DATASETS = ("mpi-inf-3dhp",)   # GT is 3D joints only: no PVE
MOCAP_DATASETS = ("h36m-p1", "h36m-p2")
GT24_PELVIS = constants.J24_TO_J17[14]   # 'Pelvis (MPII)'; H36M_TO_J17[14] = H36M pelvis


# Metrics (pure functions) -------------------------------------------------------------------------
def h36m_joints(j_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """[17,V] regressor, [B,V,3] vertices -> [B,17,3] H36M joints."""
    return torch.einsum("jv,bvc->bjc", j_regressor.to(vertices.dtype), vertices)


def centred(j17: torch.Tensor, order=constants.H36M_TO_J14) -> torch.Tensor:
    """[B,17,3] H36M-regressor joints -> the joints ``order`` ([B,14,3] LSP, or ``H36M_TO_J17``)
    minus the H36M pelvis."""
    p = constants.H36M_PELVIS
    return j17[:, order] - j17[:, p:p + 1]


def errors_mm(pred_joints, gt_joints, pred_vertices=None, gt_vertices=None) -> dict:
    """Per-sample errors in mm of joints [B,J,3] (in metres, centred by the protocol) and
    vertices [B,V,3] or None: {'mpjpe', 'pa_mpjpe' (float64 Procrustes per sample), 'pve' (NaN
    without vertices)}, each [B] float64 numpy."""
    pj, gj, pv, gv = (None if x is None else torch.as_tensor(x).detach().double().cpu().numpy()
                      for x in (pred_joints, gt_joints, pred_vertices, gt_vertices))
    return {"mpjpe": 1000.0 * _mpjpe(pj, gj),
            "pa_mpjpe": 1000.0 * reconstruction_error(pj, gj, reduction=None),
            "pve": np.full(len(pj), np.nan) if pv is None or gv is None else 1000.0 * _pve(pv, gv)}


def check_ground_truth(ds, dataset: str, h36m_gt: str = "mosh") -> bool:
    """Raise :class:`DatasetError` when the test set ``ds`` (a ``BaseDataset``) lacks the GT
    its protocol scores the joints against; return whether it has a GT mesh (PVE)."""
    from datasets.annotations import DatasetError
    from_s = dataset in NO_MESH_DATASETS or (h36m_gt == "mocap" and dataset in MOCAP_DATASETS)
    where = f"{dataset} ({ds.npz_file})"
    if from_s and not ds.has_pose_3d:
        raise DatasetError(f"{where}: has no 'S' (GT 3D joints), which the {dataset} protocol "
                           f"scores against. Use the seed README's file of this test set")
    if not from_s and not ds.has_pose_shape:
        mocap = (" (a file with only the mocap joints 'S', such as SPIN's "
                 "h36m_valid_protocol2.npz, is scored with --h36m_gt mocap; PVE is then not "
                 "available)" if dataset in MOCAP_DATASETS and ds.has_pose_3d else "")
        raise DatasetError(f"{where}: has no 'pose'/'shape' (GT SMPL), which the {dataset} "
                           f"protocol scores against (joints and PVE from the GT mesh). Use the "
                           f"seed README's file of this test set{mocap}")
    return dataset not in NO_MESH_DATASETS and bool(ds.has_pose_shape)


def check_test_set(o, dataset: str, paths: DataPaths) -> None:
    """Read the test set ``dataset`` as the in-training evaluation will (its files, checks and
    GT), so that a missing or unusable file stops train.py at the start, not at the first test
    epoch; the error says how to train without it."""
    from datasets import BaseDataset
    try:
        check_ground_truth(BaseDataset(o, dataset, is_train=False, paths=paths), dataset,
                           getattr(o, "h36m_gt", "mosh"))
    except UserError as e:
        raise type(e)(f"{e} (test set {dataset!r} of --eval_datasets, the in-training "
                      f"evaluation; --eval_datasets '' trains without it)") from None


class EvalTargets(nn.Module):
    """Ground truth of the evaluation protocols (module docstring): ``J_regressor_h36m``
    [17,6890] as a buffer and the male / female SMPL models of the GT meshes (none for
    MPI-INF-3DHP or without ``mesh``: no PVE), so ``.to(device)`` moves everything."""

    def __init__(self, paths: DataPaths, dataset: str, h36m_gt: str = "mosh", mesh: bool = True):
        super().__init__()
        self.mocap = h36m_gt == "mocap" and dataset in MOCAP_DATASETS
        from models.smpl import build_smpl, load_regressor
        self.register_buffer("j_regressor", load_regressor(paths.j_regressor_h36m(), rows=17))
        self.mpi = dataset in NO_MESH_DATASETS   # 17 joints of S
        self.has_mesh = mesh and not self.mpi
        if self.has_mesh:
            self.smpl_male = build_smpl(paths, "male")
            self.smpl_female = build_smpl(paths, "female")

    @torch.no_grad()
    def gt_vertices(self, pose: torch.Tensor, betas: torch.Tensor, gender: torch.Tensor):
        """pose [B,72] axis-angle, betas [B,10], gender [B] (0 m, 1 f, -1 unknown -> male)."""
        from utils.geometry import batch_rodrigues
        B = pose.shape[0]
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(B, 24, 3, 3)
        args = dict(betas=betas, body_pose=rot[:, 1:], global_orient=rot[:, :1], pose2rot=False)
        verts = self.smpl_male(**args).vertices
        female = gender == 1
        if bool(female.any()):
            verts = torch.where(female[:, None, None], self.smpl_female(**args).vertices, verts)
        return verts

    @torch.no_grad()
    def targets(self, batch: dict) -> dict:
        """GT of a batch: {'joints': [B,14|17,3] centred, 'vertices': [B,V,3] or None}."""
        verts = self.gt_vertices(batch["pose"], batch["betas"], batch["gender"]) \
            if self.has_mesh else None
        if self.mpi or self.mocap:   # S: centred on its pelvis (a no-op on SPIN's files)
            s = batch["pose_3d"][:, :, :3]
            order = constants.J24_TO_J17 if self.mpi else constants.J24_TO_J14
            joints = s[:, order] - s[:, GT24_PELVIS, None]
        else:
            joints = centred(h36m_joints(self.j_regressor, verts))
        return {"joints": joints, "vertices": verts}

    @torch.no_grad()
    def score(self, pred_vertices: torch.Tensor, targets: dict) -> tuple[dict, torch.Tensor]:
        """Errors of a predicted (neutral) mesh [B,V,3] -> (errors_mm dict, [B,17,3] joints)."""
        j17 = h36m_joints(self.j_regressor, pred_vertices)
        pj = centred(j17, constants.H36M_TO_J17) if self.mpi else centred(j17)
        return errors_mm(pj, targets["joints"], pred_vertices, targets["vertices"]), j17


# Networks and setup -------------------------------------------------------------------------------
def read_eval_checkpoint(o, paths: DataPaths, log=print):
    """Read ``--checkpoint`` once -> (path, checkpoint dict), taking the options it decides
    (issue #13 point 7): ``--model``, ``--backbone``, ``--bbox_type``, ``--crop_scale`` not
    given on the command line become the values train.py recorded, or for a file without
    options (the released ones) the network recognised from its keys; a contradicting value
    is a one-line error, and a file of another role (aux or backbone weights) is named."""
    from models.checkpoint_kind import describe, metahmr_network
    from models.checkpoints import CheckpointError, read_checkpoint
    from utils.options import apply_checkpoint_options
    path = paths.release_checkpoint(o.checkpoint)
    data = read_checkpoint(path, "Meta-HMR checkpoint")
    what = describe(data)
    if what is not None:
        raise CheckpointError(f"{path}: {what}")
    stored = data.get("options") if isinstance(data, dict) else None
    apply_checkpoint_options(o, str(path), stored if isinstance(stored, dict) else None,
                             metahmr_network(data), log=log)
    return path, data


def build_eval_networks(options, paths: DataPaths, checkpoint_path,
                        data: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """Main and aux networks with the checkpoint's weights (strict), eval mode, aux frozen;
    ``data``: the checkpoint if already read (:func:`read_eval_checkpoint`)."""
    from models import build_model
    from models.checkpoints import load_metahmr_checkpoint, load_metahmr_state
    mean = paths.smpl_mean_params()
    model, model_aux = (build_model(model=options.model, backbone=options.backbone, role=role,
                                    bbox_type=options.bbox_type, mean_params=mean)
                        for role in ("main", "aux"))
    if data is None:
        load_metahmr_checkpoint(checkpoint_path, model, model_aux)
    else:
        load_metahmr_state(data, checkpoint_path, model, model_aux)
    model.eval()
    model_aux.eval().requires_grad_(False)
    return model, model_aux


_SMPL_CACHE: dict = {}


def _neutral_smpl(paths: DataPaths, device: torch.device):
    key = (str(Path(paths.root).resolve()), str(device))
    if key not in _SMPL_CACHE:
        from models.smpl import build_smpl
        _SMPL_CACHE.clear()
        _SMPL_CACHE[key] = build_smpl(paths, "neutral").to(device)
    return _SMPL_CACHE[key]


# The evaluation loop ------------------------------------------------------------------------------
def evaluate(model, model_aux, options, dataset_name: str, paths: DataPaths | None = None,
             device=None, smpl=None, writer=None, max_batches: int = 0, log=print,
             batch_size: int | None = None, step: int | None = None,
             return_per_sample: bool = False) -> dict:
    """TTO + metrics over a test set (upstream-behaviour §7).

    ``options``: the eval options, or the training ones (``eval_batch_size`` passed as
    ``batch_size``); ``smpl``: the neutral SMPL (built when None); ``writer``: TensorBoard, logs
    ``<ds>/MPJPE`` etc. at ``step``; ``max_batches``: 0 = all.
    Returns {'MPJPE', 'PA-MPJPE', 'PVE' (not for MPI-INF-3DHP), the same with '_before', 'n',
    'n_nonfinite', 'mean_tto_steps', 'loss_2d_before', 'loss_2d_after', 'tto_s_per_image',
    'n_skipped', 'skipped' (the samples left out for an unreadable image, as {sample_index,
    imgname, reason})}; with ``return_per_sample`` also 'per_sample' (the result file's arrays).
    """
    from utils.progress import Progress
    o = options
    paths = paths if paths is not None else DataPaths.from_options(o)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    smpl = smpl if smpl is not None else _neutral_smpl(paths, device)
    ds, loader = _test_loader(o, dataset_name, paths, device,
                              batch_size if batch_size is not None else o.batch_size, max_batches)
    h36m_gt = getattr(o, "h36m_gt", "mosh")
    mesh = check_ground_truth(ds, dataset_name, h36m_gt)
    targets_model = EvalTargets(paths, dataset_name, h36m_gt, mesh).to(device)
    camera, cfg = Camera.from_options(o), TTOConfig.from_options(o)
    viz = Visualizer(o, ds, smpl, camera) if getattr(o, "viz", False) else None
    tally = _Tally(dataset_name, pve=mesh)
    total = min(len(loader), max_batches) if max_batches else len(loader)
    # a live bar in a terminal; otherwise a line every --log_freq batches (issue #13 point 1)
    bar = Progress(loader, total, f"eval {dataset_name}", getattr(o, "log_freq", 0), log,
                   unit="batch")
    try:
        with _read_only(model, model_aux):
            for i, batch in enumerate(bar):
                if max_batches and i >= max_batches:
                    break
                tally.skipped += batch.pop("skipped", [])      # --skip_bad_images: not scored
                if "img" not in batch:
                    continue
                b = to_device(batch, device)
                t0 = time.perf_counter()
                res = test_time_optimize(model, model_aux, b, smpl, camera, cfg)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                tally.add(b, res, targets_model, camera, time.perf_counter() - t0)
                if viz is not None:
                    viz(b, res)
                bar.update(i + 1, tally.running())
    finally:
        bar.close()
        if viz is not None:
            viz.close()
    res_dict, arrays = tally.summary(len(ds), max_batches)
    if writer is not None:
        for k in (*METRICS, *(m + "_before" for m in METRICS), "n_nonfinite", "mean_tto_steps"):
            if k in res_dict:
                writer.add_scalar(f"{dataset_name}/{k}", res_dict[k], step)
    if getattr(o, "result_file", None):
        write_result_file(o.result_file, arrays)
    if return_per_sample:
        res_dict["per_sample"] = arrays
    return res_dict


def _test_loader(o, dataset_name: str, paths: DataPaths, device, batch_size: int,
                 max_batches: int):
    """The test set (no augmentation) and its DataLoader, in order unless ``--shuffle``;
    unreadable images are left out of the batches and listed (``batch['skipped']``)."""
    from datasets import BaseDataset
    from datasets.base_dataset import collate_skipping
    ds = BaseDataset(o, dataset_name, is_train=False, paths=paths)
    n_batches = -(-len(ds) // batch_size)
    return ds, DataLoader(ds, batch_size=batch_size, shuffle=getattr(o, "shuffle", False),
                          num_workers=min(o.num_workers, n_batches, max_batches or n_batches),
                          generator=torch.Generator().manual_seed(o.seed),
                          pin_memory=device.type == "cuda", collate_fn=collate_skipping)


@contextlib.contextmanager
def _read_only(model, model_aux):
    """Both networks in eval mode, the aux network without gradients; their modes restored
    afterwards (the trainer evaluates between steps)."""
    modes = (model.training, model_aux.training, [p.requires_grad for p in model_aux.parameters()])
    model.eval()
    model_aux.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train(modes[0])
        model_aux.train(modes[1])
        for p, r in zip(model_aux.parameters(), modes[2]):
            p.requires_grad_(r)


class _Tally:
    """What the evaluation of one test set has seen so far: per-sample errors and predictions,
    the TTO 2D losses, steps and time, the skipped samples."""

    def __init__(self, dataset: str, pve: bool = True):
        self.dataset, self.metrics = dataset, [m for m in METRICS if pve or m != "PVE"]
        self.keep = {k: [] for k in (
            "imgname", "sample_index", "tto_steps", "nonfinite", "pred_joints", "pose", "betas",
            "camera", "translation", *(f"{_KEY[m]}{s}" for m in METRICS for s in ("", "_before")))}
        self.loss_sum, self.loss_n = {"before": 0.0, "after": 0.0}, {"before": 0, "after": 0}
        self.tto_time, self.n, self.sums = 0.0, 0, dict.fromkeys((*_KEY.values(), "tto_steps"), 0.0)
        self.skipped: list[dict] = []

    def add(self, b: dict, res, targets_model, camera: Camera, tto_s: float) -> None:
        """Score one batch's TTO result against its GT and keep it."""
        tgt = targets_model.targets(b)
        err_after, j17 = targets_model.score(res.after["vertices"], tgt)
        err_before, _ = targets_model.score(res.before["vertices"], tgt)
        for k in _KEY.values():
            self.keep[k].append(err_after[k])
            self.keep[k + "_before"].append(err_before[k])
        for when, loss in (("before", res.loss_2d_before), ("after", res.loss_2d_after)):
            loss = loss.detach().float().reshape(-1)
            ok = torch.isfinite(loss)
            self.loss_sum[when] += float(loss[ok].sum())
            self.loss_n[when] += int(ok.sum())
        _collect(self.keep, b, res, j17, camera)
        self.tto_time += tto_s
        self.n += len(err_after["mpjpe"])
        for k in self.sums:   # running sums: the progress line must not re-add every batch
            self.sums[k] += float(np.sum(self.keep[k][-1]))

    def running(self) -> dict:
        """The running values a progress line / the bar shows (mm, TTO steps, s per image)."""
        n, sums = self.n, self.sums
        out = {m: f"{sums[_KEY[m]] / n:.2f}" for m in self.metrics} if n else {}
        out.update({"samples": str(n), "TTO steps": f"{sums['tto_steps'] / max(n, 1):.2f}",
                    "s/img": f"{self.tto_time / max(n, 1):.3f}"})
        return out

    def summary(self, n_dataset: int, max_batches: int) -> tuple[dict, dict]:
        """(the metrics dict of :func:`evaluate`, the per-sample arrays)."""
        arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.keep.items()}
        n = len(arrays["mpjpe"])
        if n == 0:
            what = (f"evaluation of {self.dataset}: no sample was evaluated (dataset of "
                    f"{n_dataset} samples, max_batches={max_batches}, {len(self.skipped)} "
                    f"skipped as unreadable)")
            if self.skipped:   # every image read was unreadable: the user's files (exit 2)
                s = self.skipped[0]
                raise UserError(f"{what}, e.g. {s['imgname']} ({s['reason']}). Replace the "
                                f"images, or check --data_root")
            raise RuntimeError(what)
        out = {m + w: float(arrays[_KEY[m] + w].mean()) for m in self.metrics
               for w in ("", "_before")}
        out.update(n=n, n_nonfinite=int(arrays["nonfinite"].sum()),
                   mean_tto_steps=float(arrays["tto_steps"].mean()),
                   loss_2d_before=self.loss_sum["before"] / max(self.loss_n["before"], 1),
                   loss_2d_after=self.loss_sum["after"] / max(self.loss_n["after"], 1),
                   tto_s_per_image=self.tto_time / n, n_skipped=len(self.skipped),
                   skipped=self.skipped)
        return out, arrays


def _collect(keep: dict, b: dict, res, j17: torch.Tensor, camera: Camera) -> None:
    """Append the per-sample predictions of one batch to ``keep``."""
    from utils.geometry import rotmat_to_axis_angle
    a = res.after
    B = a["rotmat"].shape[0]
    np_ = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
    keep["imgname"].append(np.asarray(b["imgname"], dtype=str))
    keep["sample_index"].append(np_(torch.as_tensor(b["sample_index"])).astype(np.int64))
    keep["tto_steps"].append(np_(res.steps).astype(np.int64))
    keep["nonfinite"].append(np_(res.nonfinite).astype(bool))
    keep["pred_joints"].append(np_(j17))
    keep["pose"].append(np_(rotmat_to_axis_angle(a["rotmat"].reshape(-1, 3, 3)).reshape(B, 72)))
    keep["betas"].append(np_(a["betas"]))
    keep["camera"].append(np_(a["cam"]))
    keep["translation"].append(np_(camera.full_translation(a["cam"], b)))


def write_result_file(path, arrays: dict) -> Path:
    """Per-sample results: npz (default) or JSON (``.json``). Arrays have N rows each.

    Keys: imgname, sample_index, mpjpe, pa_mpjpe, pve (+ ``_before``; mm; PVE NaN for
    MPI-INF-3DHP), pred_joints [N,17,3] (H36M regressor order, camera-free, not centred),
    pose [N,72] axis-angle, betas [N,10], camera [N,3] crop camera (s, tx, ty),
    translation [N,3] full-image camera translation (CLIFF) or crop translation (HMR),
    tto_steps [N], nonfinite [N].
    """
    path = Path(path)
    if path.suffix == ".json":   # strict JSON: NaN (no PVE) is null
        from utils.jsonio import write_json
        write_json(path, arrays, indent=None)
    else:   # at the very name given (np.savez of a name would append .npz to any other suffix)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


# eval_cliff.py / eval_hmr.py ----------------------------------------------------------------------
def main(options) -> dict:
    """Evaluate a checkpoint on a test set; print the metrics and write the requested files."""
    o = options
    if o.h36m_gt != "mosh" and o.dataset not in MOCAP_DATASETS:   # (else silently ignored)
        raise OptionError(f"--h36m_gt {o.h36m_gt} applies to H36M ({', '.join(MOCAP_DATASETS)}), "
                          f"not --dataset {o.dataset}. Drop --h36m_gt")
    seed_everything(o.seed)
    device = select_device(o.device)
    paths = DataPaths.from_options(o)
    if o.synthetic:
        from datasets.synthetic import build_world
        build_world(paths.root)
    if not o.checkpoint:
        raise SystemExit("error: --checkpoint is required (a Meta-HMR checkpoint with 'model' "
                         "and 'model_aux', e.g. ckpt/cliff_hrnet_3dpw.pt from the Meta-HMR "
                         "README, https://github.com/fmx789/Meta-HMR, or a train.py checkpoint)")
    try:
        ckpt, data = read_eval_checkpoint(o, paths)
        model, model_aux = build_eval_networks(o, paths, ckpt, data)
    except MissingFileError as e:
        raise SystemExit(f"error: {e}") from e
    del data
    for net in (model, model_aux):
        place(net, device, o.memory_format)
    res = evaluate(model, model_aux, o, o.dataset, paths=paths, device=device,
                   max_batches=o.max_batches)
    print(format_results(o.dataset, res))
    if o.json_out:   # strict JSON: a metric the set does not have is null
        from utils.jsonio import write_json
        from utils.options import to_dict
        metrics = {**{f"{m}{w}": None for m in METRICS for w in ("", "_before")}, **res}
        write_json(o.json_out, {"dataset": o.dataset, "metrics": metrics,
                                "options": to_dict(o)}, sort_keys=True)
    return res


def format_results(dataset: str, r: dict) -> str:
    """The final stdout block: MPJPE / PA-MPJPE / PVE after (and before) TTO, in mm."""
    lines = [f"*** Final results: {dataset}, {r['n']} samples ***"]
    for m in METRICS:
        if m in r:
            lines.append(f"{m}: {r[m]:.2f} mm (before TTO: {r[m + '_before']:.2f})")
        else:   # PVE without a GT mesh
            lines.append(f"{m}: not available (the {dataset} file has no GT mesh)")
    lines.append(f"TTO: {r['mean_tto_steps']:.2f} steps per sample on average, "
                 f"{r['n_nonfinite']} non-finite, {r['tto_s_per_image']:.3f} s per image; "
                 f"2D loss {r['loss_2d_before']:.6f} -> {r['loss_2d_after']:.6f}")
    if r.get("n_skipped"):
        lines.append(f"{r['n_skipped']} sample(s) left out of the metrics (unreadable images, "
                     f"--skip_bad_images): " + "; ".join(
                         f"{s['imgname']} (sample {s['sample_index']}: {s['reason']})"
                         for s in r["skipped"]))
    return "\n".join(lines)
