"""Edges of multi-process training (torchrun, gloo on the CPU): rank-0 output,
counts of all ranks, resuming on another process count, a training set too small for the
processes. The worker is tests/ddp_worker.py (its module docstring lists the actions).

Independent facts: a single process reading the same samples meets the same unreadable images.
(That one step on N ranks is one step on their global batch, also when the ranks hold different
numbers of samples with 3D joints: tests/test_ddp.py.)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_ddp import _argv, _load, torchrun


def _trainer(root, log_dir, name, *extra):
    from train.trainer import Trainer
    from utils.options import parse_train
    return Trainer(parse_train(_argv(root, log_dir, name, *extra)))


def test_rank0_output_all_ranks_counts_and_resume_on_another_process_count(synthetic_root,
                                                                            tmp_path, capsys):
    """Two ranks, one epoch, on a copy of the world with unreadable images read by both ranks
    and --skip_bad_images: the end line counts the images skipped by both ranks (as many as one
    process reading the same samples meets), rank 0 alone prints the run's lines and writes its
    files; resuming that epoch-end checkpoint on one process says that the process count and
    global batch changed; a non-finite step is reported by rank 0 only (counted on all)."""
    world = tmp_path / "world"
    shutil.copytree(synthetic_root, world, copy_function=os.link)
    # epoch 0 on 2 ranks: rank 0 reads h36m samples 0 and 1, rank 1 mpii samples 3 and 2
    for npz, folder, bad in (("h36m_mosh_train_fixname", "h36m", [0]),
                             ("mpii_smpl_w3d_train", "mpii", [2, 3])):
        names = np.load(world / "data" / "datasets" / f"{npz}.npz")["imgname"]
        for name in names[bad]:
            f = world / "datasets" / folder / str(name)
            f.unlink()                      # a hard link: the session world keeps its file
            f.write_bytes(b"not an image")
    extra = ["--first_order", "--inner_lr", "1e-5", "--batch_size", "1", "--num_epochs", "1",
             "--skip_bad_images", "--summary_steps", "1"]
    r = torchrun(tmp_path / "out", "train", _argv(world, tmp_path, "run", *extra))
    assert r.returncode == 0, r.stderr[-4000:]
    out = r.stdout
    assert out.count("training finished") == 1, out[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.json",
                                                     "tensorboard"]   # (.lock: one run at a time)
    assert len(list((run / "tensorboard").iterdir())) == 1
    # resume at the epoch end on one process: continued, and said
    ck = run / "checkpoints" / "current.pt"
    assert _load(ck)["world_size"] == 2 and _load(ck)["dataset_perm"] is None
    capsys.readouterr()
    tr = _trainer(world, tmp_path, "run", *extra, "--resume")
    assert tr.epoch == 1 and tr.step == 2
    lines = capsys.readouterr().out.splitlines()
    assert any(s.startswith("note: ") and "on 2 process(es) (global batch 2)" in s
               and "on 1 (global batch 1)" in s for s in lines), lines
    # the samples of epoch 0 (global batch 2: all 4) read by one process; rank 0's alone
    from train.data import EpochSampler
    mix, tr.dataset.epoch = tr.dataset.dataset, 0
    counts = []
    for world_size in (1, 2):
        before = mix.n_skipped
        for i in EpochSampler(4, True, tr.options.seed, rank=0, world=world_size):
            tr.dataset[i]
        counts.append(mix.n_skipped - before)
    n, n_rank0 = counts
    assert 0 < n_rank0 < n, counts   # not vacuous: both ranks met unreadable images
    assert f"{n} unreadable image(s) skipped (--skip_bad_images)" in out, (n, out[-3000:])
    # a non-finite step on a rank other than 0: counted, not printed
    tr.main = False
    tr.account({"loss": torch.tensor(float("nan")), "skipped": True}, bar=None)
    assert tr.n_nonfinite == 1 and capsys.readouterr().out == ""


def test_a_training_set_smaller_than_the_processes_batch_is_refused_before_the_run_folder(
        synthetic_root, tmp_path):
    """4 samples, --batch_size 5: one OptionError naming the per-process batch, no run folder
    (it used to be raised in the loop, after config.json was written)."""
    from utils.errors import OptionError
    with pytest.raises(OptionError, match=r"--batch_size 5 \(per process\) x 1 process"):
        _trainer(synthetic_root, tmp_path, "small", "--batch_size", "5")
    assert not (Path(tmp_path) / "small").exists()


def test_a_damaged_rank_random_state_is_refused():
    """A checkpoint's per-rank random states must be what ``rank_rng_states`` writes (uint8, the
    device's state size): anything else is a ValueError (one line through the trainer), not a
    crash inside torch.set_rng_state."""
    from train.distributed import check_rank_states
    cpu = torch.device("cpu")
    good = torch.get_rng_state()
    check_rank_states([good, good.clone()], cpu)
    for bad in ([good[:-1]], [good.float()], good, [good, "x"]):
        with pytest.raises(ValueError, match="rng_ranks are not"):
            check_rank_states(bad, cpu)
