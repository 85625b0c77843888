"""Shared pytest fixtures: a tiny synthetic world built once per session, and its SMPL.

``synthetic_root``: the data root of a tiny world (``datasets.synthetic.build_world``: every
train/test set with ``TEST_WORLD_SIZE`` samples at ``TEST_WORLD_IMG_SIZE`` px, the body models,
regressors, mean parameters, occluders and the resnet18 stand-in weights). It is built in the
session's temporary folder, or reused from ``$METAHMR_TEST_WORLD`` when that names a folder
(built there the first time; rebuilt automatically when the generator version changes).

``device``: the device of the device-relevant tests, ``$METAHMR_TEST_DEVICE`` (cpu by default;
``METAHMR_TEST_DEVICE=cuda python -m pytest -q`` runs them on the GPU and skips them where there
is none); ``cuda_device``: the same, for CUDA-only paths (skipped on the CPU).

Also: two torch threads (the test machine has two cores), and ``torch._dynamo`` imported before
anything can create a GL context (importing triton after a GL context exists segfaults).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch._dynamo  # noqa: F401  must precede any GL context (triton/GL segfault)

import pytest

torch.set_num_threads(2)

TEST_DEVICE = os.environ.get("METAHMR_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda"):
    raise pytest.UsageError(f"METAHMR_TEST_DEVICE must be cpu or cuda, got {TEST_DEVICE!r}")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the device-relevant tests (networks, meta step, TTO, trainer, evaluation,
    demo, renderer): ``$METAHMR_TEST_DEVICE``, cpu by default. With ``cuda`` and no GPU, every
    test that asks for it is skipped (the others still run on the CPU)."""
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("METAHMR_TEST_DEVICE=cuda but no CUDA device is available")
    return torch.device(TEST_DEVICE)


@pytest.fixture(scope="session")
def cuda_device(device) -> torch.device:
    """The device, for tests of CUDA-only paths (``--amp`` on CUDA, EGL, NCCL): skipped unless
    ``METAHMR_TEST_DEVICE=cuda``."""
    if device.type != "cuda":
        pytest.skip("CUDA-only path: run with METAHMR_TEST_DEVICE=cuda on a GPU machine")
    return device

TEST_WORLD_SIZE = 4
TEST_WORLD_IMG_SIZE = 128
TEST_WORLD_WEIGHTS = ("resnet18",)


def world_sizes() -> dict:
    """Samples per set of the session world (every train and test set)."""
    from datasets.synthetic import DEFAULT_SIZES
    return {k: TEST_WORLD_SIZE for k in DEFAULT_SIZES}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Path of the session's tiny synthetic world (``config.DataPaths(root)`` layout)."""
    from datasets.synthetic import build_world
    cache = os.environ.get("METAHMR_TEST_WORLD")
    root = Path(cache) if cache else tmp_path_factory.mktemp("synthetic_world")
    return build_world(root, sizes=world_sizes(), img_size=TEST_WORLD_IMG_SIZE, seed=0,
                       weights=TEST_WORLD_WEIGHTS, log=None)


@pytest.fixture(scope="session")
def smpl_neutral(synthetic_root):
    """The neutral :class:`models.smpl.SMPL` of the synthetic world (float32, CPU)."""
    from config import DataPaths
    from models.smpl import build_smpl
    return build_smpl(DataPaths(synthetic_root), "neutral")


# ------------------------------------------------------------------------------------------------
# networks and a batch for the inner-step and TTO tests
def meta_options(root, **kw):
    from utils.options import train_parser
    o = train_parser().parse_args(["--data_root", str(root), "--backbone", "resnet18",
                                   "--bbox_type", "rect", "--model", kw.pop("model", "cliff"),
                                   "--crop_scale", "0.25"])
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def dataset_batch(root, options, n=3, dataset="3dpw"):
    from config import DataPaths
    from datasets import BaseDataset
    ds = BaseDataset(options, dataset, is_train=False, paths=DataPaths(root))
    items = [ds[i] for i in range(n)]
    return torch.utils.data.default_collate(items)


@pytest.fixture(scope="module")
def setup(synthetic_root, smpl_neutral):
    """(options, main CLIFF ResNet-18, aux, a 3-sample 3DPW batch of 64x48 crops, neutral
    SMPL), heads with non-trivial outputs; for the inner-step and TTO tests."""
    from config import DataPaths
    from models import build_model
    torch.manual_seed(0)
    o = meta_options(synthetic_root)
    mean = DataPaths(synthetic_root).smpl_mean_params()
    model = build_model("cliff", "resnet18", "main", "rect", mean).eval()
    aux = build_model("cliff", "resnet18", "aux", "rect", mean).eval()
    # give the heads a non-trivial output so the losses have real gradients
    with torch.no_grad():
        for m in (model, aux):
            for name in ("decpose", "decshape", "deccam"):
                getattr(m, name).weight.normal_(0, 1e-3)
    batch = dataset_batch(synthetic_root, o)
    return o, model, aux, batch, smpl_neutral


@pytest.fixture(scope="module")
def device_setup(setup, device):
    """``setup`` (options, main, aux, batch, SMPL) on the test device (copies: ``setup`` itself
    stays on the CPU)."""
    import copy
    o, model, aux, batch, smpl = setup
    if device.type == "cpu":
        return setup
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return (o, *(copy.deepcopy(m).to(device) for m in (model, aux)), batch,
            copy.deepcopy(smpl).to(device))
