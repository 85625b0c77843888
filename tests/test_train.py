"""train.py end to end on the synthetic world: loss falls, resume is exact, checkpoints are atomic,
aux gradients follow --first_order, non-finite losses are handled (DDP: tests/test_ddp.py)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import forkrun  # noqa: E402  the project's commands, forked from a warm server

ROOT = Path(__file__).resolve().parents[1]


def _argv(root, log_dir, name, *extra):
    return ["--name", name, "--log_dir", str(log_dir), "--data_root", str(root),
            "--backbone", "resnet18", "--bbox_type", "rect", "--model", "cliff",
            "--batch_size", "2", "--num_workers", "0", "--inner_lr", "1e-5",
            "--outer_lr", "1e-4", "--test_epochs", "1000", "--save_epochs", "1000",
            "--summary_steps", "5", "--no_pretrained_backbone", *extra]


def _trainer(root, tmp_path, device, *extra):
    """A Trainer on the test device (conftest ``device``)."""
    from train.trainer import Trainer
    from utils.options import parse_train
    return Trainer(parse_train(_argv(root, tmp_path, "t", "--device", device.type, *extra)))


def _first_batch(tr):
    from torch.utils.data import default_collate
    batch = default_collate([tr.dataset[i] for i in range(tr.options.batch_size)])
    return {k: v.to(tr.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _fixed_batch_loss(tr, batch) -> float:
    """Outer loss (no inner step, no update) on a fixed batch, dropout seeded."""
    from train.losses import smpl_loss
    from train.inner import run_head
    from train.losses import gt_targets
    from utils.camera import smpl_predict
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        tr.model.train()
        step = tr.run_step
        pose = batch["pose"]
        gt_v = tr.smpl(betas=batch["betas"], body_pose=pose[:, 3:], global_orient=pose[:, :3]).vertices
        feats = tr.model.extract_features(batch["img"])
        pred = smpl_predict(run_head(tr.model, feats, batch["bbox_info"]), tr.smpl, step.camera,
                            batch)
        return float(smpl_loss(pred, gt_targets(batch, gt_v, step.camera), step.weights)["total"])


def test_training_lowers_loss(synthetic_root, tmp_path, device):
    tr = _trainer(synthetic_root, tmp_path, device, "--max_steps", "16", "--outer_lr", "3e-5",
                  "--first_order", "--batch_size", "4", "--crop_scale", "0.5")
    batch = _first_batch(tr)
    before = _fixed_batch_loss(tr, batch)
    tr.train()
    assert len(tr.history) == 16 and all(torch.isfinite(x) for x in tr.history)
    after = _fixed_batch_loss(tr, batch)
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "t" / "config.json").is_file()
    assert (tmp_path / "t" / "checkpoints" / "current.pt").is_file()


@pytest.mark.parametrize("first_order", [True, False])
def test_aux_gradient_follows_first_order(synthetic_root, tmp_path, first_order, device):
    tr = _trainer(synthetic_root, tmp_path, device, *(["--first_order"] if first_order else []))
    batch = _first_batch(tr)
    tr.model.train()
    tr.run_step(batch)
    grads = [p.grad for p in tr.model_aux.parameters()]
    if first_order:
        assert all(g is None for g in grads)
    else:
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # the main network always gets its gradient
    assert tr.model.fc1.weight.grad is not None and tr.model.conv1.weight.grad is not None


def test_nonfinite_losses_are_skipped_then_stop(synthetic_root, tmp_path, monkeypatch, device):
    tr = _trainer(synthetic_root, tmp_path, device, "--max_nonfinite", "3", "--first_order")
    batch = _first_batch(tr)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    import train.meta_step as T
    real = T.smpl_loss

    def nan_loss(*a, **k):
        out = real(*a, **k)
        out["total"] = out["total"] * float("nan")
        return out
    monkeypatch.setattr(T, "smpl_loss", nan_loss)
    out = tr.run_step(batch)
    assert out.get("skipped")
    for k, v in tr.model.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, before[k]), k
    bar = type("Bar", (), {"set_postfix": lambda *a, **k: None})()
    tr.account(out, bar)
    tr.account(out, bar)
    with pytest.raises(FloatingPointError, match="consecutive non-finite"):
        tr.account(out, bar)


def _run(args, **kw):
    return forkrun.run(["train.py", *args], cwd=ROOT, **kw)


# batch 1 on the 4-sample world: 4 steps per epoch; small crops for speed; every step logged
# (the signal tests wait for the first TensorBoard event)
STOP_STEPS = "6"
STOP_ARGS = ["--batch_size", "1", "--first_order", "--crop_scale", "0.25", "--summary_steps", "1"]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory) -> dict:
    """The final checkpoint of a run of STOP_STEPS steps that nothing interrupted."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    ref = _run(_argv(synthetic_root, tmp, "ref", "--max_steps", STOP_STEPS, *STOP_ARGS),
               timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return torch.load(tmp / "ref" / "checkpoints" / "current.pt", map_location="cpu",
                      weights_only=True)


def _same_state(a: dict, b: dict) -> None:
    """Both networks and Adam's state bit for bit, at the same step."""
    assert b["total_step_count"] == a["total_step_count"] == int(STOP_STEPS)
    for net in ("model", "model_aux"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)


def test_sigkill_and_resume_is_bit_exact(synthetic_root, tmp_path, uninterrupted):
    # the first checkpoint (step 3) is mid-epoch
    args = _argv(synthetic_root, tmp_path, "killed", "--max_steps", STOP_STEPS,
                 "--checkpoint_steps", "3", *STOP_ARGS)
    p = forkrun.start(["train.py", *args], cwd=ROOT)
    ck = tmp_path / "killed" / "checkpoints" / "current.pt"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 300 and p.poll() is None:
        time.sleep(0.05)
    p.kill()
    assert p.wait() == -signal.SIGKILL
    assert ck.exists()
    saved = torch.load(ck, map_location="cpu", weights_only=True)
    assert saved["total_step_count"] < int(STOP_STEPS)
    assert saved["dataset_perm"] is not None      # the kill came mid-epoch
    _resume(args)
    _same_state(uninterrupted, torch.load(ck, map_location="cpu", weights_only=True))


def _resume(args) -> None:
    """train.py ``args`` plus --resume, in this process (the interpreter's start spared)."""
    from train.trainer import Trainer
    from utils.options import parse_train
    Trainer(parse_train([*args, "--resume"])).train()


def _signal_after_first_step(args, run: Path, sig: int) -> tuple[subprocess.CompletedProcess,
                                                                  float, list[int]]:
    """train.py ``args`` (STOP_ARGS: --summary_steps 1), sent ``sig`` once its first step is logged
    (the first TensorBoard event file); (the finished process, seconds from signal to exit, the
    PIDs of its child processes when the signal was sent)."""
    p = forkrun.start(["train.py", *args], cwd=ROOT)
    t0 = time.time()
    while not list((run / "tensorboard").glob("events.out.tfevents.*")):
        assert p.poll() is None and time.time() - t0 < 300, p.communicate()
        time.sleep(0.05)
    children = _running({p.pid}, parent=True)
    sent = time.time()
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), time.time() - sent, children


def test_sigterm_saves_the_step_reached_and_resume_is_bit_exact(synthetic_root, tmp_path,
                                                                uninterrupted, capsys):
    """SIGTERM (a cluster's preemption, scancel, timeout) during training: the run stops after
    the step in progress with current.pt at that step and no temporary, exits with the shell's
    status of a SIGTERM death (128 + 15) and no traceback; --resume then ends exactly where
    the uninterrupted run ends."""
    args = _argv(synthetic_root, tmp_path, "term", "--max_steps", STOP_STEPS, *STOP_ARGS)
    run = tmp_path / "term"
    r, took, _ = _signal_after_first_step(args, run, signal.SIGTERM)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "SIGTERM received" in r.stderr
    saved = torch.load(run / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    step = saved["total_step_count"]
    assert 1 <= step < int(STOP_STEPS)
    assert f"training stopped by SIGTERM at epoch {saved['epoch']}, step {step}" in r.stdout
    assert "--resume" in r.stdout
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["current.pt"]
    assert took < 60
    capsys.readouterr()
    _resume(args)
    out = capsys.readouterr().out
    assert f"step {step}" in out and "note: options changed" not in out
    ck = run / "checkpoints" / "current.pt"
    _same_state(uninterrupted, torch.load(ck, map_location="cpu", weights_only=True))


def _running(pids: set[int], parent: bool = False) -> list[int]:
    """Of ``pids`` (``parent``: of their children), the processes that are running: not gone,
    not zombies."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()   # state, ppid, ...
                if (int(stat[1]) if parent else int(d.name)) in pids and stat[0] != "Z":
                    found.append(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def test_ctrl_c_stops_with_a_checkpoint_one_message_and_no_workers_left(synthetic_root,
                                                                        tmp_path):
    """SIGINT (Ctrl-C): a checkpoint at the step reached, exit status 128 + 2, the stop said
    in lines without a traceback, and no DataLoader worker left running."""
    run = tmp_path / "ctrl_c"
    args = _argv(synthetic_root, tmp_path, "ctrl_c", "--max_steps", "40", *STOP_ARGS,
                 "--num_workers", "2")
    r, _, workers = _signal_after_first_step(args, run, signal.SIGINT)
    assert len(workers) == 2                 # the DataLoader workers, running at the signal
    assert r.returncode == 128 + signal.SIGINT, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr
    saved = torch.load(run / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    assert 1 <= saved["total_step_count"] < 40
    assert "training stopped by SIGINT" in r.stdout
    t0 = time.time()
    while _running(set(workers)) and time.time() - t0 < 10:
        time.sleep(0.2)
    assert _running(set(workers)) == []


def test_stop_request_waits_for_the_loop_and_a_later_repeat_stops_at_once(monkeypatch):
    """The first SIGTERM only sets the flag; the same signal again at once (torchrun passing
    a Ctrl-C on to its workers) is that one request; later, it stops at once with 128 + 15.
    A forked child (a DataLoader worker) ignores the signals; the previous handlers are back
    at the end."""
    import utils.stop as S
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    clock = [100.0]
    monkeypatch.setattr(S.time, "monotonic", lambda: clock[0])
    with S.StopRequest(announce=False) as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._pid = -1                         # as in a forked worker
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum is None
        stop._pid = os.getpid()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        clock[0] += 0.2
        os.kill(os.getpid(), signal.SIGINT)    # a repeat within the second: the same request
        clock[0] += 5
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.code == 128 + signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_logging_does_not_change_the_training(synthetic_root, tmp_path, device):
    """The same run with a summary every step and with none ends with the same weights: the
    logging pass (inner loss after the inner step, head in train mode) drew dropout masks from
    the training's random stream, so --summary_steps changed the result."""
    weights = []
    for every in ("1", "1000"):
        tr = _trainer(synthetic_root, tmp_path / every, device, "--first_order", "--max_steps",
                      "2", "--summary_steps", every, "--crop_scale", "0.25")
        tr.train()
        weights.append(tr.model.state_dict())
    assert (tmp_path / "1" / "t" / "tensorboard").is_dir()    # it did log, every step
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    from train.checkpoint import atomic_save, load
    path = tmp_path / "current.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    code = f"""
import os, signal, torch
import train.checkpoint as C
real = torch.save
def dying_save(obj, f):
    f.write(b"partial garbage")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
C.atomic_save({{"step": 2, "w": torch.zeros(3)}}, {str(path)!r})
"""
    r = forkrun.run(["-c", code], cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    data = load(path)
    assert data["step"] == 1 and torch.equal(data["w"], torch.ones(3))


def test_in_training_evaluation_writes_log_and_named_checkpoint(synthetic_root, tmp_path,
                                                                device):
    tr = _trainer(synthetic_root, tmp_path, device, "--first_order", "--batch_size", "4",
                  "--num_epochs", "1", "--test_epochs", "1", "--eval_datasets", "3dpw,mpi-inf-3dhp",
                  "--eval_batch_size", "2", "--eval_max_batches", "1", "--test_val_step", "1",
                  "--after_innerlr", "1e-5")
    tr.train()
    run = tmp_path / "t"
    log = (run / "test_log.txt").read_text()
    assert "3dpw MPJPE" in log and "PA-MPJPE" in log
    assert re.search(r"mpi-inf-3dhp MPJPE [\d.]+ PA-MPJPE [\d.]+ PVE n/a$", log.strip())
    named = list((run / "checkpoints").glob("previous_1_3dpw_mp*_pa*_pve*_mpiinf3dhp_mp*.pt"))
    assert len(named) == 1 and (run / "checkpoints" / "previous.pt").is_file()
    assert re.fullmatch(r".*_mpiinf3dhp_mp[\d.]+_pa[\d.]+\.pt", named[0].name)  # no PVE there
    data = torch.load(named[0], map_location="cpu", weights_only=True)
    assert {"model", "model_aux", "optimizer", "epoch", "options"} <= set(data)
    assert data["epoch"] == 1 and data["options"]["model"] == "cliff"


def test_log_images_writes_mesh_overlays(synthetic_root, tmp_path, monkeypatch, device):
    import train.meta_step as T
    monkeypatch.setattr(T, "N_OVERLAYS", 2)     # fewer overlays than samples in the batch
    tr = _trainer(synthetic_root, tmp_path, device, "--first_order", "--max_steps", "1",
                  "--summary_steps", "1", "--log_images", "--batch_size", "4")
    tr.train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "t" / "tensorboard")).Reload()
    assert "train/mesh" in acc.Tags()["images"]
    assert "train/inner_loss_after" in acc.Tags()["scalars"]
    assert "train/inner_grad_norm" in acc.Tags()["scalars"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_step_on_cuda(synthetic_root, tmp_path, cuda_device, amp):
    """--amp on CUDA: the step runs under autocast (fp16 through the GradScaler), the loss is
    finite and both networks' weights move (second order: aux too)."""
    tr = _trainer(synthetic_root, tmp_path, cuda_device, "--amp", amp, "--aux_lr", "1e-4")
    assert tr.run_step.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert tr.run_step.scaler.is_enabled() == (amp == "fp16")
    batch = _first_batch(tr)
    w, a = tr.model.fc1.weight.detach().clone(), tr.model_aux.fc1.weight.detach().clone()
    tr.model.train()
    for _ in range(20):    # fp16: the GradScaler skips Adam while its first scales overflow
        out = tr.run_step(batch)
        assert not out.get("skipped") and torch.isfinite(out["loss"])
        if not torch.equal(tr.model.fc1.weight, w):
            break
    assert not torch.equal(tr.model.fc1.weight, w) and not torch.equal(tr.model_aux.fc1.weight, a)


def test_mid_epoch_resume_needs_the_same_batches(synthetic_root, tmp_path):
    """A checkpoint written mid-epoch holds its position as a batch count of its own batch size
    and process count: resuming with another batch size is one clear error, not a silent skip."""
    from train.trainer import Trainer
    from utils.errors import OptionError
    from utils.options import parse_train
    args = _argv(synthetic_root, tmp_path, "mid", "--device", "cpu", "--batch_size", "1",
                 "--first_order", "--crop_scale", "0.25", "--checkpoint_steps", "1")
    Trainer(parse_train(args + ["--max_steps", "1"])).train()
    saved = torch.load(tmp_path / "mid" / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    assert saved["dataset_perm"] is not None and (saved["batch_size"], saved["world_size"]) == (1, 1)
    with pytest.raises(OptionError, match="stopped mid-epoch .*--batch_size 1 on 1 process"):
        Trainer(parse_train(args + ["--max_steps", "2", "--resume", "--batch_size", "2"]))
    tr = Trainer(parse_train(args + ["--max_steps", "2", "--resume"]))   # the same: resumes
    assert tr.step == 1 and tr.batch_idx == 1
    # the bookkeeping comes from its own entries (here all different from each other)
    later = tmp_path / "later.pt"
    torch.save({**saved, "epoch": 2, "batch_idx": 1, "total_step_count": 9, "n_nonfinite": 3},
               later)
    tr = Trainer(parse_train(args + ["--max_steps", "20", "--resume", "--checkpoint", str(later)]))
    assert (tr.epoch, tr.batch_idx, tr.step, tr.n_nonfinite) == (2, 1, 9, 3)
    # a file that is not a whole train.py checkpoint: one error naming what is wrong
    from models.checkpoints import CheckpointError
    for drop, why in (("optimizer", "no 'optimizer'"), ("model_aux", "model_aux")):
        bad = tmp_path / f"no_{drop}.pt"
        torch.save({k: v for k, v in saved.items() if k != drop}, bad)
        with pytest.raises(CheckpointError, match=f"{bad}.*{why}"):
            Trainer(parse_train(args + ["--resume", "--checkpoint", str(bad)]))


def test_epoch_sampler_order_shards_and_resume_position():
    """Per-epoch permutations from (seed, epoch); DistributedSampler-style shards (equal sizes,
    disjoint, interleaved rank::world over the first n // world * world); a resumed epoch skips
    start_batch * batch_size samples of its shard."""
    from train.data import EpochSampler
    s = EpochSampler(10, True, seed=3)
    p0, p1 = s.permutation(0), s.permutation(1)
    assert sorted(p0) == sorted(p1) == list(range(10)) and p0 != p1
    assert EpochSampler(10, True, seed=3).permutation(1) == p1       # reproducible
    assert EpochSampler(10, True, seed=4).permutation(1) != p1
    assert EpochSampler(10, False, seed=3).permutation(5) == list(range(10))
    shards = []
    for r in range(3):
        sr = EpochSampler(10, True, seed=3, rank=r, world=3)
        sr.set_epoch(1)
        shards.append(list(sr))
        assert shards[-1] == [p1[i] for i in range(r, 9, 3)] and len(sr) == 3
    assert sorted(sum(shards, [])) == sorted(p1[:9])
    s.set_epoch(1, start_batch=2, batch_size=3)
    assert list(s) == p1[6:] and len(s) == 4


def test_samples_are_seeded_by_seed_epoch_and_index():
    from train.data import SeededDataset

    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            import numpy as np
            return float(np.random.rand())
    d = SeededDataset(Draw(), seed=7)
    e0 = [d[i] for i in range(3)]
    assert len(set(e0)) == 3 and [d[i] for i in range(3)] == e0
    d.epoch = 1
    e1 = [d[i] for i in range(3)]
    assert not set(e1) & set(e0)


def test_rng_state_round_trip():
    import random
    import numpy as np
    from train.checkpoint import rng_state, set_rng_state
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_cuda_process_set_up(synthetic_root, tmp_path, cuda_device, capsys):
    """On a GPU: cuDNN picks its kernels by timing (fixed crop sizes), and --sync_bn in a single
    process says that it does nothing there instead of being silently ignored."""
    torch.backends.cudnn.benchmark = False
    tr = _trainer(synthetic_root, tmp_path, cuda_device, "--sync_bn", "--first_order")
    assert torch.backends.cudnn.benchmark and tr.world == 1
    assert "note: --sync_bn has no effect in a single process" in capsys.readouterr().out
