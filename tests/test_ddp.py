"""Multi-process training under torchrun + DistributedDataParallel, on the CPU (gloo, 2 ranks).

Independent facts: data parallelism means every rank applies the optimizer step to the gradient
of the global batch (the ranks' batches together). The reference below computes it in this one
process with plain autograd (no DDP, no process group) and takes the Adam step; the ranks must
hold those weights (and both ranks the same ones), also for the aux network's meta-gradient
under second order. (It is the mean of the ranks' own gradients only when every rank has as
many samples of each masked loss term: tests/test_ddp_edges.py.)

BatchNorm and dropout: the networks run in eval mode in the comparison. In train mode a forward
is not a function of (weights, batch) alone: dropout draws from each process's RNG, and BatchNorm
updates running buffers that DDP replaces by rank 0's at every forward, so the reference in one
process could not replay the ranks' forwards exactly. In eval mode (running statistics, no
dropout) it can, and the comparison isolates what DDP must do: average the gradients.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

import forkrun  # noqa: E402  the project's commands, forked from a warm server

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
BATCH = 2
BN_STATS = ("running_mean", "running_var")


def _argv(root, log_dir, name, *extra):
    return ["--name", name, "--log_dir", str(log_dir), "--data_root", str(root),
            "--backbone", "resnet18", "--bbox_type", "rect", "--crop_scale", "0.25",
            "--model", "cliff", "--batch_size", str(BATCH), "--num_workers", "0",
            "--inner_lr", "1e-3", "--outer_lr", "1e-4", "--aux_lr", "1e-4",
            "--test_epochs", "1000", "--save_epochs", "1000", "--summary_steps", "1000",
            "--no_pretrained_backbone", "--device", "cpu", *extra]


def torchrun(out_dir, action: str, args, nproc: int = 2, timeout: float = 300):
    """Run tests/ddp_worker.py under torchrun (free port: --standalone). On a timeout the whole
    process group is killed: workers hung in a collective would outlive torchrun."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return forkrun.run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        nproc, WORKER, out_dir, action, *args], cwd=ROOT, timeout=timeout,
                       new_session=True)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _reference(root, tmp_path, steps: int, extra) -> tuple[dict, dict, list, dict]:
    """One process: per step, the global batch's gradient by plain autograd (and each rank's own
    gradient), Adam.
    Also, per parameter, a mask of the elements whose mean gradient was, at some step, near
    zero (below 1e-5 of the tensor's largest: rounding-level flips seen were below 1e-6)."""
    import ddp_worker
    from train.trainer import Trainer
    from utils.options import parse_train
    tr = Trainer(parse_train(_argv(root, tmp_path, "ref", *extra)))
    assert tr.world == 1
    named = [(f"{n}/{k}", p) for n, net in (("model", tr.model), ("model_aux", tr.model_aux))
             for k, p in net.named_parameters() if p.requires_grad]
    per_rank, near_zero = [], {}
    for s in range(steps):
        tr.model.eval()
        per_rank = []
        for r in range(2):
            batch = ddp_worker.fixed_batch(tr.dataset, s, r, 2, BATCH)
            loss = tr.run_step.forward(batch)["_loss"]
            per_rank.append(torch.autograd.grad(loss, [p for _, p in named]))
        both = ddp_worker.fixed_batch(tr.dataset, s, 0, 1, 2 * BATCH)   # rank 0's + rank 1's
        mean = torch.autograd.grad(tr.run_step.forward(both)["_loss"], [p for _, p in named])
        for (k, p), g in zip(named, mean):
            p.grad = g
            tiny = p.grad.abs() <= 1e-5 * p.grad.abs().max()
            near_zero[k] = tiny | near_zero.get(k, tiny)
        tr.optimizer.step()
    grads = {k: p.grad for k, p in named}
    return {"model": tr.model.state_dict(), "model_aux": tr.model_aux.state_dict()}, grads, [
        dict(zip([k for k, _ in named], g)) for g in per_rank], near_zero


def test_ranks_apply_the_global_batch_gradient(synthetic_root, tmp_path):
    """Second order (per-sample inner step): the main network's and the aux network's
    meta-gradients are both the global batch's (its two ranks hold different numbers of samples
    with 3D joints at the last step, so that is not the mean of the ranks' own gradients).
    (First order: the resume test below.)"""
    # --aux_mode eval: under second order the aux network runs in train mode by default
    order, extra, steps = "second", ["--tto_mode", "sample", "--aux_mode", "eval"], 2
    r = torchrun(tmp_path, f"steps:{steps}", _argv(synthetic_root, tmp_path, "ddp", *extra))
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    for net in ("model", "model_aux"):           # every rank holds the same weights
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    ref, ref_grads, local, near_zero = _reference(synthetic_root, tmp_path, steps, extra)
    aux_keys = [k for k in ref_grads if k.startswith("model_aux/")]
    assert bool(aux_keys) == (order == "second")   # aux is trained only under second order
    assert set(a["grads"]) == set(ref_grads)
    for k, g in ref_grads.items():   # the last step's gradient is the mean, up to float
        # rounding (another summation order, carried through the second-order inner step);
        # a rank's own gradient is ~50% off the mean, far outside this tolerance
        err = float((a["grads"][k] - g).abs().max())
        assert err <= 1e-3 * float(g.abs().max()) + 1e-9, (k, err)
    # the weights follow the reference's Adam trajectory. Adam's update lr * m / (sqrt(v) + eps)
    # turns a rounding-level difference of a near-zero gradient into up to ~2 lr (how many such
    # elements depends on the CPU's summation order), so only elements whose mean gradient was
    # near zero at some step may differ. (Adam's update is nearly scale-free, so this is no test
    # of the averaging: the gradient check above is.)
    lr, checked, total = 1e-4, 0, 0
    for net in ("model", "model_aux"):
        for k, v in ref[net].items():
            diff = (a[net][k].double() - v.double()).abs()
            assert float(diff.max()) <= 2 * steps * 1.5 * lr, (net, k)
            exempt = near_zero.get(f"{net}/{k}", torch.zeros_like(diff, dtype=torch.bool))
            assert not bool((diff > 1e-6)[~exempt].any()), (net, k)
            checked, total = checked + int((~exempt).sum()), total + v.numel()
    assert checked >= total // 3, (checked, total)   # dead ReLUs: ~46% exempt on this tiny crop
    # not vacuous: the ranks' own gradients are far from their mean (main and aux)
    for prefix in ("model/", "model_aux/"):
        keys = [k for k in local[0] if k.startswith(prefix)]
        spread = max(float((local[0][k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max())
                     for k in keys if ref_grads[k].abs().max() > 0)
        assert spread > 0.05, (prefix, spread)
    # ... and their mean is not the global batch's (each rank's own masked mean of the 3D term)
    own = max(float(((local[0][k] + local[1][k]) / 2 - g).abs().max() / g.abs().max())
              for k, g in ref_grads.items() if k.startswith("model/") and g.abs().max() > 0)
    assert own > 0.05, own


def test_torchrun_train_resume_continues_at_the_same_step(synthetic_root, tmp_path):
    """Two ranks train 4 steps, keeping the checkpoint written at step 3; a run resumed from it
    under torchrun reaches the same weights at the same step; checkpoints keep the released key
    names (no 'module.')."""
    # 4 samples / (2 ranks x batch 1): 2 steps per epoch; the checkpoint at step 3 is mid-epoch
    small = ["--first_order", "--batch_size", "1", "--max_steps", "4"]
    full = torchrun(tmp_path / "full", "train:snapshots", _argv(
        synthetic_root, tmp_path, "full", "--checkpoint_steps", "3", *small))
    assert full.returncode == 0, full.stderr[-4000:]
    a, b = _load(tmp_path / "full" / "rank0.pt"), _load(tmp_path / "full" / "rank1.pt")
    for k in a["model"]:   # BN running statistics: each rank's last batch (DDP hands rank 0's
        if not k.endswith(BN_STATS):   # to every rank at the start of the next forward)
            assert torch.equal(a["model"][k], b["model"][k]), k
    ck3 = tmp_path / "full" / "checkpoints" / "current_step3.pt"
    assert _load(ck3)["total_step_count"] == 3 and _load(ck3)["dataset_perm"] is not None
    second = torchrun(tmp_path / "part", "train", _argv(
        synthetic_root, tmp_path, "resumed", *small, "--resume", "--checkpoint", str(ck3)))
    assert second.returncode == 0, second.stderr[-4000:]
    assert "step 3" in second.stdout
    c = _load(tmp_path / "part" / "rank0.pt")
    assert c["step"] == 4
    # each rank its own dropout stream (alike, sample j of each rank's batch drew the same
    # masks), resumed as it was: the resumed ranks end in the uninterrupted ranks' states
    assert not torch.equal(a["rng"], b["rng"])
    for r, ref_rank in ((0, a), (1, b)):
        assert torch.equal(_load(tmp_path / "part" / f"rank{r}.pt")["rng"], ref_rank["rng"]), r
    saved = _load(tmp_path / "resumed" / "checkpoints" / "current.pt")
    ref = _load(tmp_path / "full" / "checkpoints" / "current.pt")
    assert saved["total_step_count"] == ref["total_step_count"] == 4
    from models import build_model
    for net, role in (("model", "main"), ("model_aux", "aux")):
        assert list(saved[net]) == list(build_model("cliff", "resnet18", role, "rect").state_dict())
        for k in ref[net]:
            assert torch.equal(saved[net][k], ref[net][k]), (net, k)


def test_a_stuck_rank_stops_the_others_within_the_timeout(synthetic_root, tmp_path):
    """Rank 1 never takes a step: rank 0 waits in DDP's collective for --dist_timeout, then
    stops with one error line, and torchrun ends the run (no endless hang)."""
    t0 = time.time()
    r = torchrun(tmp_path, "hang", _argv(synthetic_root, tmp_path, "hang", "--max_steps", "2",
                                         "--first_order", "--dist_timeout", "5"), timeout=240)
    elapsed = time.time() - t0
    assert r.returncode != 0
    assert "error: rank 0: lost contact with the other ranks" in r.stderr, r.stderr[-4000:]
    assert elapsed < 120, elapsed


def test_sync_bn_local_rank_and_peer_errors_without_a_process_group(monkeypatch):
    """In one process: --sync_bn turns every BatchNorm into SyncBatchNorm (state_dict keys
    kept); the GPU index is LOCAL_RANK, not the global RANK (multi-node); a RuntimeError that
    merely mentions a timeout is not reported as a lost rank."""
    import pytest
    from torch import nn

    from train import distributed as dist
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    keys = list(net.state_dict())
    out = dist.wrap(net, torch.device("cpu"), sync_bn=True)
    assert isinstance(out[1], nn.SyncBatchNorm) and isinstance(out[2][0], nn.SyncBatchNorm)
    assert list(out.state_dict()) == keys
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.local_rank() == 1
    with pytest.raises(RuntimeError, match="DataLoader timed out"):
        with dist.peer_errors(0, 10.0):
            raise RuntimeError("DataLoader timed out after 5 seconds")


def test_sigterm_to_every_process_stops_all_ranks_at_one_step(synthetic_root, tmp_path):
    """SIGTERM to the whole job (a cluster's scancel or preemption signals every process:
    torchrun, which passes it on once more, and both ranks): the ranks agree on one step, rank
    0 saves current.pt there, every process ends within a minute (no rank left waiting in a
    collective) and no process of the run is left."""
    args = _argv(synthetic_root, tmp_path, "term", "--first_order", "--batch_size", "1",
                 "--max_steps", "40", "--summary_steps", "1")
    run = tmp_path / "term"
    p = forkrun.start(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "train.py", *args], cwd=ROOT, new_session=True)
    t0 = time.time()
    while not list((run / "tensorboard").glob("events.out.tfevents.*")):   # step 1 logged
        assert p.poll() is None and time.time() - t0 < 300, p.communicate()
        time.sleep(0.05)
    ranks = set(_processes_holding(f"--log_dir\0{tmp_path}\0")) - {p.pid}   # not torchrun
    assert len(ranks) == 2
    sent = time.time()
    os.killpg(p.pid, signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert time.time() - sent < 60
    saved = _load(run / "checkpoints" / "current.pt")
    step = saved["total_step_count"]
    assert 1 <= step < 40 and saved["world_size"] == 2
    assert f"training stopped by SIGTERM at epoch {saved['epoch']}, step {step}" in out, err
    assert "lost contact" not in err and "stopping at once" not in err
    assert [f.name for f in (run / "checkpoints").iterdir()] == ["current.pt"]
    time.sleep(1)
    assert _processes_holding(f"--log_dir\0{tmp_path}\0") == []


def _processes_holding(text: str) -> list[int]:
    """The running processes whose command line (arguments separated by NUL; a zombie's is
    empty) holds ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            pass
    return found
