"""A torchrun worker for tests/test_ddp.py (not a test module itself).

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR ACTION TRAIN_OPTIONS...

ACTION:
  ``steps:N``  build the Trainer, put both networks in eval mode and run N iterations of
               ``Trainer.run_step`` on the fixed batches of :func:`fixed_batch`; save this rank's
               weights and last gradients (and its torch random state) to OUT_DIR/rank<R>.pt.
  ``train``    ``Trainer.train()`` as train.py runs it; save this rank's weights.
  ``train:snapshots``  the same, and every checkpoint written is kept as current_step<N>.pt.
  ``hang``     ``Trainer.train()``, except that rank 1 never takes its first step (a stuck rank).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def fixed_batch(dataset, step: int, rank: int, world: int, batch_size: int) -> dict:
    """The batch of ``rank`` at ``step``: consecutive dataset samples, different on every rank."""
    from torch.utils.data import default_collate
    first = (step * world + rank) * batch_size
    return default_collate([dataset[(first + i) % len(dataset)] for i in range(batch_size)])


def main(argv: list[str]) -> None:
    from train.trainer import Trainer
    from utils.options import parse_train
    out, action, options = Path(argv[0]), argv[1], argv[2:]
    tr = Trainer(parse_train(options))
    assert isinstance(tr.run_step.net, torch.nn.parallel.DistributedDataParallel)
    if action.startswith("steps:"):
        for s in range(int(action.split(":")[1])):
            tr.model.eval()      # deterministic forward (tests/test_ddp.py says why)
            batch = fixed_batch(tr.dataset, s, tr.rank, tr.world, tr.options.batch_size)
            out_step = tr.run_step(batch)
            assert not out_step.get("skipped")
    elif action == "hang":
        if tr.rank == 1:
            time.sleep(3600)
        tr.train()
    else:
        if action == "train:snapshots":    # every checkpoint written is also kept as
            save = tr.save                  # current_step<N>.pt
            def tr_save(name, mid_epoch):   # noqa: E306
                save(name, mid_epoch)
                if tr.main:
                    shutil.copyfile(tr.ckpt_dir / name, tr.ckpt_dir / f"current_step{tr.step}.pt")
            tr.save = tr_save
        tr.train()
    grads = {f"{n}/{k}": p.grad for n, net in (("model", tr.model), ("model_aux", tr.model_aux))
             for k, p in net.named_parameters() if p.grad is not None}
    torch.save({"model": tr.model.state_dict(), "model_aux": tr.model_aux.state_dict(),
                "grads": grads, "step": tr.step, "rng": torch.get_rng_state()},
               out / f"rank{tr.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
