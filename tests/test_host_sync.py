"""The CUDA path, checked on the CPU: host reads of device values (each a CUDA synchronisation)
in a training step and a TTO step, the SMPL forward pass on a device without values, low
precision (``--amp``) where it is not meant to run.

On CUDA every read of a tensor's value on the host (``.item()``, ``bool()``, ``float()``,
``.tolist()``, ``.cpu()``, ``nonzero`` and boolean-mask indexing) and every tensor made from host
data (``torch.tensor([..], device=cuda)``: a blocking host-to-device copy) waits for the GPU to
finish all queued work. :func:`host_reads` counts them on the CPU.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import traceback

import numpy as np
import pytest
import torch

from conftest import dataset_batch, meta_options

CPU = torch.device("cpu")
_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy", "nonzero")


@contextlib.contextmanager
def host_reads():
    """Counter {'<what> <file>:<line>': n} of the host reads and host-data tensors above.
    (``__index__``, a list indexed by a tensor, is left to the SMPL test: on the CPU the
    host-held kinematic tree cannot be told from a device tensor.)"""
    counts: collections.Counter = collections.Counter()
    saved = []

    def wrap(owner, name, counted=lambda *a, **k: True):
        orig = getattr(owner, name)
        saved.append((owner, name, orig))

        def f(*a, **k):
            if counted(*a, **k):
                frame = traceback.extract_stack(limit=2)[0]   # the caller
                counts[f"{name} {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"] += 1
            return orig(*a, **k)
        setattr(owner, name, f)

    def is_mask(t):
        return torch.is_tensor(t) and t.dtype == torch.bool

    def mask_index(self, idx, *rest):
        return is_mask(idx) or (isinstance(idx, tuple) and any(is_mask(i) for i in idx))

    for name in _READS:
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "__getitem__", mask_index)
    wrap(torch.Tensor, "__setitem__", mask_index)
    for name in ("tensor", "as_tensor"):
        wrap(torch, name, lambda data, *a, **k: not torch.is_tensor(data))
    wrap(torch, "nonzero")
    try:
        yield counts
    finally:
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)


def _networks(root, model: str):
    from config import DataPaths
    from models import build_model
    torch.manual_seed(0)
    o = meta_options(root, model=model)
    mean = DataPaths(root).smpl_mean_params()
    nets = [build_model(model, "resnet18", role, "rect", mean) for role in ("main", "aux")]
    with torch.no_grad():   # non-trivial head outputs
        for m in nets:
            for name in ("decpose", "decshape", "deccam"):
                getattr(m, name).weight.normal_(0, 1e-3)
    return o, nets[0], nets[1].eval(), dataset_batch(root, o)


@pytest.mark.parametrize("model", ["cliff", "hmr"])
def test_a_training_step_reads_one_value(synthetic_root, smpl_neutral, model):
    """One meta step (CLIFF and HMR cameras, per-sample inner step) reads one value on the host,
    the finite check of the loss that decides whether the step is skipped. The projections made
    their crop size (and HMR its focal length) with torch.tensor: 5 (CLIFF) and 14 (HMR)
    host-to-device copies per step."""
    from train.meta_step import MetaStep, build_optimizer
    o, model_, aux, batch = _networks(synthetic_root, model)
    opts = argparse.Namespace(**{**vars(o), "first_order": True, "inner_step": 1,
                                 "tto_mode": "sample", "aux_mode": None, "amp": "off"})
    step = MetaStep(opts, model_, aux, smpl_neutral, build_optimizer(opts, model_, aux), CPU)
    step(batch)    # Adam's state
    with host_reads() as reads:
        out = step(batch)
    assert not out.get("skipped") and torch.isfinite(out["loss"])
    assert list(reads) == [next(k for k in reads if k.startswith("__bool__ meta_step.py"))], reads
    assert sum(reads.values()) == 1


@pytest.mark.parametrize("mode, chunk", [("sample", 3), ("batch", 0)])
def test_a_tto_step_reads_one_value(setup, mode, chunk):
    """TTO reads one value per pass (whether every sample is done, whether every pass was
    finite, whether any gradient is still needed: the stop rule's decisions), nothing else: the
    last finite prediction was kept by boolean-mask assignment (12 reads per pass) and the three
    flags were read one by one."""
    from train.tto import TTOConfig, test_time_optimize
    from utils.camera import Camera
    o, model, aux, batch, smpl = setup
    steps = 1
    o = argparse.Namespace(**{**vars(o), "tto_mode": mode, "tto_chunk": chunk, "tto_workers": 1,
                              "test_val_step": steps, "adapt_val_step": False})
    with host_reads() as reads:
        res = test_time_optimize(model, aux, batch, smpl, Camera.from_options(o),
                                 TTOConfig.from_options(o))
    passes = 1 + steps + 1        # step 0, the Adam steps, the final prediction
    assert res.steps.tolist() == [steps + 1] * batch["img"].shape[0]
    per_group = 1 if mode == "batch" else -(-batch["img"].shape[0] // chunk)   # groups
    assert sum(reads.values()) == passes * per_group, reads


def test_smpl_forward_reads_no_value_of_the_device(synthetic_root):
    """On the meta device tensors have no values, so any host read raises: the SMPL forward
    pass runs there, i.e. reads none on a GPU. smplx indexes a Python list with parents[i] for
    the 23 joints; with the kinematic tree moved to the device with the model, that was 23
    .item() (CUDA syncs) per forward pass, several per training and TTO step. The tree stays on
    the host, the rest moves."""
    from config import DataPaths
    from models.smpl import build_smpl, load_smpl_data
    smpl = build_smpl(DataPaths(synthetic_root), "neutral")
    g = torch.Generator().manual_seed(0)
    args = {"betas": torch.randn(2, 10, generator=g),
            "global_orient": torch.randn(2, 3, generator=g),
            "body_pose": 0.3 * torch.randn(2, 69, generator=g)}
    meta = copy.deepcopy(smpl).to("meta")
    assert meta.v_template.device.type == "meta" and meta.parents.device.type == "cpu"
    out = meta(**{k: v.to("meta") for k, v in args.items()})
    assert out.vertices.shape == (2, 6890, 3) and out.joints.shape == (2, 49, 3)
    assert out.vertices.device.type == "meta"
    kintree = load_smpl_data(smpl.model_file)["kintree_table"]   # the file's skeleton
    assert smpl.parents[1:].tolist() == np.asarray(kintree)[0, 1:].astype(int).tolist()


def test_procrustes_in_torch_under_autocast_and_in_half_precision():
    """compute_similarity_transform_torch under autocast (bf16, as --amp would give it) raised
    (autocast's matmul fed bf16 into torch.linalg.det: no low-precision kernel; on CUDA the SVD
    too), as did bf16 / fp16 inputs. It now aligns in float32: the float64 numpy result."""
    from utils.pose_utils import (compute_similarity_transform_batch,
                                  compute_similarity_transform_torch, reconstruction_error)
    g = torch.Generator().manual_seed(0)
    S2 = torch.randn(3, 14, 3, generator=g)
    S1 = 0.8 * S2 @ torch.linalg.qr(torch.randn(3, 3, generator=g))[0] + 0.05 * torch.randn(
        3, 14, 3, generator=g) + 0.3
    ref = compute_similarity_transform_batch(S1.double().numpy(), S2.double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hat = compute_similarity_transform_torch(S1, S2)
        err = reconstruction_error(S1, S2, reduction=None)
    assert hat.dtype == torch.float32
    np.testing.assert_allclose(hat.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(err.numpy(), reconstruction_error(
        S1.double().numpy(), S2.double().numpy(), reduction=None), atol=1e-6)
    for dtype in (torch.bfloat16, torch.float16):
        hat = compute_similarity_transform_torch(S1.to(dtype), S2.to(dtype))
        assert hat.dtype == dtype
        np.testing.assert_allclose(hat.float().numpy(), ref, atol=0.03)


def test_amp_on_the_cpu_is_refused(synthetic_root, tmp_path):
    """train.py --amp bf16 / fp16 on the CPU trained in float32 without a word; now one line,
    before the run folder exists."""
    from train.trainer import Trainer
    from utils.errors import OptionError
    from utils.options import parse_train
    argv = ["--name", "amp", "--log_dir", str(tmp_path), "--data_root", str(synthetic_root),
            "--backbone", "resnet18", "--no_pretrained_backbone", "--crop_scale", "0.25",
            "--num_workers", "0", "--device", "cpu"]
    for amp in ("bf16", "fp16"):
        with pytest.raises(OptionError, match=f"^--amp {amp} is mixed precision on CUDA.*"
                                              f"Drop --amp, or train with --device cuda$"):
            Trainer(parse_train([*argv, "--amp", amp]))
    assert not (tmp_path / "amp").exists()


def test_a_training_step_on_cuda_synchronises_as_counted(synthetic_root, smpl_neutral,
                                                        cuda_device):
    """On a GPU (``METAHMR_TEST_DEVICE=cuda``; ``bench/device_check.sh`` runs it): CUDA's own
    detector (``torch.cuda.set_sync_debug_mode('warn')``) sees, per meta step, the loss's finite
    check and at most one blocking copy per SMPL forward pass (smplx's ``joints[:, parents]``
    with the host-held kinematic tree), nothing more."""
    import warnings
    from train.meta_step import MetaStep, build_optimizer
    o, model_, aux, batch = _networks(synthetic_root, "cliff")
    opts = argparse.Namespace(**{**vars(o), "first_order": True, "inner_step": 1,
                                 "tto_mode": "sample", "aux_mode": None, "amp": "off"})
    smpl = copy.deepcopy(smpl_neutral).to(cuda_device)
    model_, aux = model_.to(cuda_device), aux.to(cuda_device)
    batch = {k: v.to(cuda_device) if torch.is_tensor(v) else v for k, v in batch.items()}
    step = MetaStep(opts, model_, aux, smpl, build_optimizer(opts, model_, aux), cuda_device)
    step(batch)    # Adam's state, cuDNN's choices
    passes = []
    hook = smpl.register_forward_hook(lambda *a: passes.append(1))
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            out = step(batch)
            torch.cuda.set_sync_debug_mode("default")
    finally:
        torch.cuda.set_sync_debug_mode("default")
        hook.remove()
    syncs = [str(w.message) for w in seen if "synchroniz" in str(w.message)]
    assert not out.get("skipped") and passes
    assert 1 <= len(syncs) <= 1 + len(passes), syncs
