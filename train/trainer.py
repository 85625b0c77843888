"""Meta-HMR training loop: :class:`Trainer` runs ``train.meta_step.MetaStep`` (one iteration of
the method, for HMR and CLIFF) over the epochs, with data loading, logging, checkpoints, resume,
in-training evaluation, DDP ranks and stop signals."""
from __future__ import annotations

import collections
import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from config import DataPaths
from train import checkpoint as ckpt
from train import distributed as dist
from train.data import EpochSampler, SeededDataset, check_occluders
from train.meta_step import MetaStep, build_networks, build_optimizer
from utils.options import save_options, to_dict
from utils import runtime
from utils.atomic import WriteError, check_folder, write_error
from utils.errors import OptionError, UserError
from utils.stop import StopRequest, exit_code
from utils.imutils import denormalize_image


HISTORY = 10_000   # steps of outer loss kept in memory by the trainer
EVAL_WAIT_S = 48 * 3600.0   # how long the other ranks wait for rank 0's in-training evaluation
RESUME_OPTIONS = ("resume", "checkpoint", "from_json")   # differ on resume by nature


@contextlib.contextmanager
def quiet_writer_thread():
    """Leave out the traceback of TensorBoard's writer thread dying on a failed write (a full
    disk): the trainer reports that error as one line (:meth:`Trainer.writing`)."""
    import threading
    previous = threading.excepthook

    def hook(args):
        if not (type(args.thread).__name__ == "_AsyncWriterThread"
                and isinstance(args.exc_value, OSError)):
            previous(args)
    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


class Trainer:
    """The training loop, plain and explicit."""

    def __init__(self, options):
        self.options = o = options
        self.device = self.select_device()
        self.rank, self.world = dist.init(self.device, o.dist_timeout)
        self.main = self.rank == 0
        if o.sync_bn and self.world == 1:
            print("note: --sync_bn has no effect in a single process (it synchronises the "
                  "BatchNorm statistics of torchrun's processes)")
        runtime.seed_everything(o.seed)
        self.paths = DataPaths.from_options(o)
        if o.synthetic and self.main:
            from datasets.synthetic import build_world
            build_world(self.paths.root)
        dist.barrier()
        self.run_dir = Path(o.log_dir).absolute() / o.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_saved: Path | None = None
        self.stop = StopRequest(announce=False)   # replaced by the loop's (SIGTERM / SIGINT)
        if self.main:   # before the set-up's work: a run folder that cannot be written
            self.check_run_folder()

        from models.smpl import build_smpl
        self.smpl = build_smpl(self.paths, "neutral").to(self.device)
        self.model, self.model_aux = build_networks(o, self.paths)
        for net in (self.model, self.model_aux):
            runtime.place(net, self.device, o.memory_format)
        self.optimizer = build_optimizer(o, self.model, self.model_aux)
        self.run_step = MetaStep(o, self.model, self.model_aux, self.smpl, self.optimizer,
                                 self.device)

        from datasets import MixedDataset
        mixture = MixedDataset(o, paths=self.paths)
        check_occluders(mixture)   # a bad occluder file: an error now, not at the first batch
        from train.evaluation import check_test_set   # likewise the in-training test sets
        self.eval_names = [d for d in o.eval_datasets.split(",") if d]
        for name in self.eval_names:
            check_test_set(o, name, self.paths)
        self.dataset = SeededDataset(mixture, o.seed)
        self.sampler = EpochSampler(len(self.dataset), o.shuffle_train, o.seed, self.rank,
                                    self.world)
        if len(self.dataset) < o.batch_size * self.world:   # before the run folder is made
            raise OptionError(f"--batch_size {o.batch_size} (per process) x {self.world} "
                              f"process(es) is larger than the training set "
                              f"({len(self.dataset)} samples): not one step per epoch. Lower "
                              f"--batch_size or run fewer processes")
        self.epoch, self.batch_idx, self.step = 0, 0, 0
        self.resume_perm: list[int] | None = None   # the stored order of a mid-epoch checkpoint
        self.rng_ranks: list | None = None   # the ranks' random states of a resumed checkpoint
        self.n_nonfinite = self.nonfinite_run = 0
        self.history = collections.deque(maxlen=HISTORY)   # outer losses (detached; for the study)
        self.writer = self.renderer = None
        if o.pretrained_checkpoint:
            self.load_pretrained(o.pretrained_checkpoint)
        if o.resume:
            self.resume(o.checkpoint)
        # under torchrun: DDP (gives every rank rank 0's weights), each rank its dropout stream
        self.run_step.distribute(sync_bn=o.sync_bn)
        if self.world > 1:
            dist.seed_rank(self.device, o.seed, self.rank, self.step, self.rng_ranks)
        if self.main:   # the run folder only once set-up succeeded (issue #13 point 3)
            self.make_run_folder()

    def select_device(self) -> torch.device:
        """This process's device (under torchrun its LOCAL_RANK's GPU), options checked first."""
        o = self.options
        if o.checkpoint and not o.resume:   # (else silently ignored)
            raise OptionError(f"--checkpoint {o.checkpoint} is the checkpoint to --resume from. "
                              f"Add --resume, or pass --pretrained_checkpoint to start a new "
                              f"run from its weights")
        device = runtime.select_device(o.device)
        if device.type == "cuda":
            torch.cuda.set_device(dist.local_rank())
            device = torch.device("cuda", dist.local_rank())
        if o.sync_bn and device.type != "cuda":
            raise SystemExit("error: --sync_bn needs CUDA (SyncBatchNorm has no CPU kernel). "
                             "Drop --sync_bn or train with --device cuda")
        if o.amp != "off" and device.type != "cuda":   # (else silently float32)
            raise OptionError(f"--amp {o.amp} is mixed precision on CUDA, and this run is on the "
                              f"CPU (--device {o.device}), where it would train in float32. "
                              f"Drop --amp, or train with --device cuda")
        return device

    def make_run_folder(self) -> None:
        """Rank 0: lock the run folder (one run at a time), make its folders, write config.json."""
        if not self.options.resume and any(self.ckpt_dir.glob("*.pt")):
            print(f"note: {self.ckpt_dir} holds the checkpoints of an earlier run; this run "
                  f"starts anew (no --resume) and overwrites current.pt")
        self.lock = ckpt.lock_run_folder(self.run_dir)   # one run per folder at a time
        for folder in (self.ckpt_dir, self.run_dir / "tensorboard"):
            with self.writing(folder, training=False):
                folder.mkdir(parents=True, exist_ok=True)
        save_options(self.options, self.run_dir / "config.json")

    def check_run_folder(self) -> None:
        """Before any work: no folder where a file of the run goes, its folders writable."""
        for f in ("config.json", "test_log.txt", "checkpoints/current.pt"):
            if (self.run_dir / f).is_dir():
                raise UserError(f"{self.run_dir / f}: is a folder, so the run cannot write its "
                                f"{f} there. Remove or rename the folder, or pass another --name")
        for folder in (self.ckpt_dir, self.run_dir / "tensorboard"):
            check_folder(folder)

    @contextlib.contextmanager
    def writing(self, path: Path, training: bool = True):
        """A system error while writing ``path`` (a full disk, ...) is one line naming it and,
        once ``training``, where to continue from."""
        try:
            yield
        except OSError as e:
            text = str(e if isinstance(e, WriteError) else write_error(path, e, atomic=False))
            if training:
                text += (f". Training stopped at step {self.step}; the checkpoints in "
                         f"{self.ckpt_dir} are unchanged: continue from the newest with --resume")
            raise WriteError(text) from None

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, name: str, mid_epoch: bool) -> None:
        """Rank 0 writes the checkpoint ``name`` (with the epoch's order when ``mid_epoch``)."""
        rng_ranks = dist.rank_rng_states(self.device)   # (a collective: before the return)
        if not self.main:
            return
        state = {"model": self.model.state_dict(), "model_aux": self.model_aux.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                 "batch_idx": self.batch_idx, "batch_size": self.options.batch_size,
                 "world_size": self.world,
                 "dataset_perm": list(self.sampler.perm) if mid_epoch else None,
                 "total_step_count": self.step, "options": to_dict(self.options),
                 "rng": ckpt.rng_state(), "n_nonfinite": self.n_nonfinite,
                 **({"rng_ranks": rng_ranks} if rng_ranks else {})}
        with self.writing(self.ckpt_dir / name):
            self.last_saved = ckpt.atomic_save(state, self.ckpt_dir / name)

    def link(self, src: str, name: str) -> Path | None:
        """Give the checkpoint ``src`` the extra name ``name`` (a hard link; issue #13 pt 4)."""
        if not self.main:
            return None
        with self.writing(self.ckpt_dir / name):
            self.last_saved = ckpt.link_as(self.ckpt_dir / src, self.ckpt_dir / name)
        return self.last_saved

    def load_pretrained(self, path) -> None:
        """Weights only (released Meta-HMR checkpoints included)."""
        from models.checkpoints import load_metahmr_checkpoint
        data = load_metahmr_checkpoint(path, self.model, self.model_aux, optimizer=True)
        if "optimizer" in data:
            try:
                self.load_optimizer(data["optimizer"])
            except ValueError as e:
                if self.main:
                    print(f"note: optimizer state of {path} not loaded ({e})")

    def load_optimizer(self, state: dict) -> None:
        """Adam's state (moments, step counts) from ``state``, with this run's hyperparameters
        (``load_state_dict`` alone would put back the saved lr: ``--resume --outer_lr`` ignored)."""
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, values in zip(self.optimizer.param_groups, hyper):
            group.update(values)

    def resume(self, path=None) -> None:
        found = ((path, ckpt.load(path)) if path else   # newest that loads (issue #15 item 10)
                 ckpt.load_for_resume(self.ckpt_dir, log=print if self.main else None))
        if found is None:
            if self.main:
                print(f"--resume: no checkpoint in {self.ckpt_dir}; starting from scratch")
            return
        path, data = found
        from models.checkpoints import CheckpointError, load_metahmr_state
        load_metahmr_state(data, path, self.model, self.model_aux, optimizer=True)   # strict
        # mid-epoch, the position is in batches of the saved size and process count
        bs, world = self.options.batch_size, self.world
        saved = (data.get("batch_size", bs), data.get("world_size", world))
        if data.get("dataset_perm") is not None and saved != (bs, world):
            raise OptionError(f"{path} stopped mid-epoch (batch {data['batch_idx']}) with "
                              f"--batch_size {saved[0]} on {saved[1]} process(es); this run has "
                              f"--batch_size {bs} on {world}. Resume with those, or pass "
                              f"--pretrained_checkpoint {path} to start a new run from its weights")
        try:   # the bookkeeping of a train.py checkpoint
            self.load_optimizer(data["optimizer"])
            self.epoch, self.batch_idx = int(data["epoch"]), int(data["batch_idx"])
            self.step = int(data["total_step_count"])
            self.n_nonfinite = int(data.get("n_nonfinite", 0))
            perm = self.resume_perm = data.get("dataset_perm")
            if perm is not None and sorted(perm) != list(range(len(self.dataset))):
                raise ValueError("its dataset_perm is not an order of this training set")
            if "rng" in data:
                ckpt.set_rng_state(data["rng"])
            if saved[1] == world and "rng_ranks" in data:   # each rank's own torch stream
                dist.check_rank_states(data["rng_ranks"], self.device)   # (set in __init__)
                self.rng_ranks = data["rng_ranks"]
        except (KeyError, TypeError, ValueError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise CheckpointError(f"{path}: cannot resume from it ({what}). --resume needs a "
                                  f"checkpoint written by train.py for this run; pass its weights "
                                  f"with --pretrained_checkpoint instead") from None
        if not self.main:
            return
        print(f"resumed from {path}: epoch {self.epoch}, batch {self.batch_idx}, step {self.step}")
        if saved != (bs, world):   # at an epoch end (mid-epoch: refused above)
            print(f"note: {path} was trained with --batch_size {saved[0]} on {saved[1]} "
                  f"process(es) (global batch {saved[0] * saved[1]}); this run continues "
                  f"with --batch_size {bs} on {world} (global batch {bs * world}), at the "
                  f"same learning rates, each epoch's order shared over {world} process(es)")
        recorded, now = data.get("options"), to_dict(self.options)
        if isinstance(recorded, dict):   # said, not silent: this run uses its own options
            changed = [f"--{k} {recorded[k]!r} -> {now[k]!r}" for k in sorted(now) if k in recorded
                       and recorded[k] != now[k] and k not in RESUME_OPTIONS + ("batch_size",)]
            if changed:
                print(f"note: options changed since {Path(path).name} was saved (this run "
                      f"uses the new values): " + ", ".join(changed))

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> None:
        """Train until ``--num_epochs`` / ``--max_steps`` / ``--time_to_run``; SIGTERM / SIGINT
        stop at the next step with a checkpoint, a failed collective with one error line."""
        with dist.peer_errors(self.rank, self.options.dist_timeout), \
                StopRequest(announce=self.main) as self.stop, quiet_writer_thread():
            return self._loop()

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived on any rank (all ranks ask at the same steps)."""
        return dist.any_rank(self.stop.signum is not None, self.device)

    def stopped(self, where: str) -> None:
        """End of a run stopped by a signal: the state is saved; exit status 128 + signal."""
        self.finish(f"stopped by {self.stop.name}" + (f" {where}" if where else ""))
        raise SystemExit(exit_code(self.stop.signum or 15))

    def _loop(self) -> None:
        o = self.options
        start_time = time.time()
        per_epoch = len(self.dataset) // (o.batch_size * self.world)   # >= 1 (__init__)
        from tqdm import tqdm
        if o.max_steps and self.main and o.max_steps > (o.num_epochs - self.epoch) * per_epoch:
            print(f"note: --max_steps {o.max_steps} wins over --num_epochs {o.num_epochs} "
                  f"({per_epoch} steps per epoch): training runs "
                  f"{-(-o.max_steps // per_epoch)} epochs")
        # --max_steps, when given, decides alone how long training runs (issue #13 point 5)
        while (self.step < o.max_steps) if o.max_steps else (self.epoch < o.num_epochs):
            self.dataset.epoch = self.epoch
            self.sampler.set_epoch(self.epoch, self.resume_perm, self.batch_idx, o.batch_size)
            self.resume_perm = None
            loader = DataLoader(self.dataset, batch_size=o.batch_size, sampler=self.sampler,
                                num_workers=o.num_workers, drop_last=True,
                                pin_memory=o.pin_memory and self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(o.seed))
            bar = tqdm(loader, desc=f"epoch {self.epoch}", initial=self.batch_idx,
                       total=per_epoch, disable=not self.main, dynamic_ncols=True)
            for batch in bar:
                batch = runtime.to_device(batch, self.device)
                self.model.train()
                out = self.run_step(batch, log_inner=(self.step + 1) % o.summary_steps == 0)
                self.batch_idx += 1
                self.step += 1
                self.account(out, bar)
                if o.checkpoint_steps > 0 and self.step % o.checkpoint_steps == 0:   # (all ranks)
                    self.save("current.pt", mid_epoch=self.batch_idx < per_epoch)
                if math.isfinite(o.time_to_run) and dist.any_rank(   # all ranks stop together
                        time.time() - start_time > o.time_to_run, self.device):
                    self.save("current.pt", mid_epoch=True)
                    if self.main:
                        print(f"time_to_run reached: saved {self.ckpt_dir / 'current.pt'}")
                    return self.finish()
                # (a last step that ends an epoch goes through the epoch end: save, test)
                if o.max_steps and self.step >= o.max_steps and self.batch_idx < per_epoch:
                    self.save("current.pt", mid_epoch=True)
                    return self.finish()
                # SIGTERM / SIGINT: stop here, where a checkpoint resumes exactly
                if self.batch_idx < per_epoch and self.stop_requested():
                    self.save("current.pt", mid_epoch=True)
                    return self.stopped("")
            self.epoch += 1
            self.batch_idx = 0
            self.save("current.pt", mid_epoch=False)
            test = self.epoch > o.test_start_epoch and (self.epoch % o.test_epochs == 0
                                                       or self.epoch % o.save_epochs == 0)
            more = (self.step < o.max_steps) if o.max_steps else (self.epoch < o.num_epochs)
            if (test or more) and self.stop_requested():
                if test:   # the evaluation (hours on the real test sets) is not waited for
                    self.link("current.pt", "previous.pt")
                return self.stopped(f"before the in-training evaluation of epoch {self.epoch} "
                                    f"(not run)" if test else "")
            if test:
                self.test_and_save()
        return self.finish()

    def account(self, out: dict, bar) -> None:
        """Count non-finite steps, update the bar, write TensorBoard scalars."""
        o = self.options
        self.history.append(out["loss"])
        if out.get("skipped"):
            self.n_nonfinite += 1
            self.nonfinite_run += 1
            if self.main:   # the same on every rank (dist.any_rank decided)
                print(f"warning: non-finite loss at step {self.step}; step skipped "
                      f"({self.n_nonfinite} so far)")
            if self.nonfinite_run >= o.max_nonfinite:
                raise FloatingPointError(f"{self.nonfinite_run} consecutive non-finite losses "
                                         f"(step {self.step}); stopping. Lower --outer_lr / "
                                         f"--inner_lr or check the data.")
        else:
            self.nonfinite_run = 0
        if not self.main:
            return
        if self.step % 10 == 0 or self.step == 1:
            bar.set_postfix(loss=f"{float(out['loss']):.4f}")
        if self.step % o.summary_steps == 0:
            with self.writing(self.run_dir / "tensorboard"):
                self.log_summary(out)

    def log_summary(self, out: dict) -> None:
        """TensorBoard scalars (and with ``--log_images`` mesh overlays) of one step."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for k, v in out.items():
            if torch.is_tensor(v):
                self.writer.add_scalar(f"train/{k}", float(v), self.step)
        if self.options.log_images and "_viz" in out:
            self.writer.add_images("train/mesh", self.overlays(out["_viz"]), self.step,
                                   dataformats="NHWC")
        for i, g in enumerate(self.optimizer.param_groups):
            self.writer.add_scalar(f"lr/group{i}", g["lr"], self.step)
        self.writer.add_scalar("train/n_nonfinite", self.n_nonfinite, self.step)

    def overlays(self, viz: dict) -> np.ndarray:
        """Predicted meshes over the input crops of ``MetaStep``'s ``_viz`` ([N,H,W,3] uint8)."""
        from utils.renderer import Renderer
        if self.renderer is None:
            self.renderer = Renderer(self.smpl.faces)
        focal, centre = self.run_step.camera.crop_intrinsics(viz["batch"])
        imgs = denormalize_image(viz["batch"]["img"].detach().float().cpu().numpy())
        verts = (viz["vertices"] + viz["translation"][:, None]).cpu().numpy()
        return np.stack([self.renderer.render(verts[i], float(focal[i]), centre[i].tolist(),
                                              np.ascontiguousarray(imgs[i]))
                         for i in range(len(verts))])

    def test_and_save(self) -> None:
        """Evaluate on the configured test sets and keep a checkpoint named by the results."""
        o = self.options
        self.link("current.pt", "previous.pt")   # the epoch-end state just saved as current.pt
        if not self.eval_names:
            return
        if not self.main:   # rank 0 evaluates alone; no collective timeout while waiting for it
            return dist.wait_for_main(f"eval_{self.epoch}", EVAL_WAIT_S)
        from train.evaluation import evaluate
        self.model.eval()
        results = {ds: evaluate(self.model, self.model_aux, o, ds, paths=self.paths,
                                device=self.device, smpl=self.smpl, writer=self.writer,
                                batch_size=o.eval_batch_size, max_batches=o.eval_max_batches,
                                step=self.step) for ds in self.eval_names}
        self.model.train()
        tag = "_".join(f"{ds.replace('-p2', '').replace('-', '')}_mp{r['MPJPE']:.2f}"
                       f"_pa{r['PA-MPJPE']:.2f}" + (f"_pve{r['PVE']:.2f}" if "PVE" in r else "")
                       for ds, r in results.items())   # (no PVE: a set without GT mesh)
        with self.writing(self.run_dir / "test_log.txt"), \
                open(self.run_dir / "test_log.txt", "a") as f:
            f.write(f"epoch {self.epoch} step {self.step}: " + ", ".join(
                f"{ds} MPJPE {r['MPJPE']:.2f} PA-MPJPE {r['PA-MPJPE']:.2f} PVE "
                + (f"{r['PVE']:.2f}" if "PVE" in r else "n/a") for ds, r in results.items())
                + "\n")
        kept = self.link("previous.pt", f"previous_{self.epoch}_{tag}.pt")
        print(f"epoch {self.epoch}, step {self.step}: " + "; ".join(
            f"{ds} " + ", ".join(f"{m} {r[m]:.2f}" for m in ("MPJPE", "PA-MPJPE", "PVE")
                                 if m in r) + " mm" for ds, r in results.items())
              + f"\ncheckpoint: {kept}", flush=True)
        dist.wait_for_main(f"eval_{self.epoch}", EVAL_WAIT_S)

    def finish(self, how: str = "finished") -> None:
        if self.writer is not None:
            with self.writing(self.run_dir / "tensorboard"):
                self.writer.close()
        skipped = dist.sum_over_ranks(self.dataset.dataset.n_skipped, self.device)
        if self.main:
            resume = "; continue with the same command plus --resume" if how != "finished" else ""
            print(f"training {how} at epoch {self.epoch}, step {self.step}; last checkpoint: "
                  f"{self.last_saved or 'none written'}; run folder: {self.run_dir}{resume}",
                  flush=True)
            if self.n_nonfinite:
                print(f"{self.n_nonfinite} step(s) skipped for non-finite losses")
            if skipped:
                print(f"{skipped} unreadable image(s) skipped (--skip_bad_images)")
        dist.cleanup()


def main(options) -> None:
    Trainer(options).train()
