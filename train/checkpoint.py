"""Atomic checkpoints and resume (decisions D9, D13).

A checkpoint is one plain dict (safe to load with ``weights_only=True``) with the released keys
(``model``, ``model_aux``, ``optimizer``, ``epoch``, ``batch_idx``, ``batch_size``,
``total_step_count``, ``options``) plus ``dataset_perm`` (the sampler's permutation of the
current epoch, None at an epoch end) and ``rng`` (torch / numpy / python states)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_path, remove_stale_temporaries


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``: a
    crash during the write leaves the previous file (and a temporary the next save removes)."""
    remove_stale_temporaries(Path(path).parent)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def link_as(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give the file ``src`` the extra name ``path``, atomically: a hard link (a later
    :func:`atomic_save` over ``src`` leaves ``path`` intact), or a copy where there are none."""
    import shutil
    src, path = Path(src), Path(path)
    if src.resolve() == path.resolve():
        return path
    remove_stale_temporaries(path.parent)
    with atomic_path(path) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return path


def lock_run_folder(folder: str | os.PathLike):
    """Hold ``folder`` for this process (a ``UserError`` when another run holds it): a POSIX
    lock on ``folder/.lock`` (holding the PID and host), released by the system when the process
    ends, also on a kill, not inherited by forked DataLoader workers. Returns the open file."""
    import errno
    import fcntl
    import socket
    from utils.errors import UserError
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):   # no locks here (some network FS)
            print(f"note: {folder} cannot be locked ({e.strerror}); two runs with this --name "
                  f"at once would not be detected")
            return f
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{folder}: in use by another training run ({holder}); two runs in one "
                        f"run folder would overwrite each other's checkpoints. Wait for it to "
                        f"end or stop it, or pass another --name") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def rng_state() -> dict:
    """RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": repr(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    import ast
    random.setstate(ast.literal_eval(state["python"]))


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint on the CPU, with the one-line errors of ``read_checkpoint``."""
    from models.checkpoints import CheckpointError, read_checkpoint
    data = read_checkpoint(path, "training checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a checkpoint dict. "
                              f"Pass a checkpoint written by train.py")
    if why := _bad_bookkeeping(data):
        raise CheckpointError(f"{path}: cannot resume from it ({why}): the file is damaged. "
                              f"Pass an earlier checkpoint, or its weights alone with "
                              f"--pretrained_checkpoint")
    return data


# bookkeeping entries that are counts -> their least value
_COUNTS = {"epoch": 0, "batch_idx": 0, "total_step_count": 0, "n_nonfinite": 0,
           "batch_size": 1, "world_size": 1}


def _bad_bookkeeping(data: dict) -> str | None:
    """What is wrong with the resume entries of ``data`` (counts, the order, the RNG states,
    tried on the generators and put back), or None."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)
    for key, least in _COUNTS.items():
        if key in data and not (count(v := data[key]) and v >= least):
            return f"{key!r} is {v!r:.40}, not a whole number >= {least}"
    perm = data.get("dataset_perm")
    if perm is not None and not (isinstance(perm, list) and all(map(count, perm))):
        return f"'dataset_perm' is {type(perm).__name__}, not a list of sample indices"
    if "rng" in data:
        saved = rng_state()
        try:
            set_rng_state(data["rng"])
        except Exception as e:  # noqa: BLE001 - any malformed state
            return f"its 'rng' states do not load ({type(e).__name__}: {e})"[:200]
        finally:
            set_rng_state(saved)
    return None


def load_for_resume(folder: str | os.PathLike, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``folder`` that loads, as (path, dict); None if there is none.
    Unreadable files are skipped with a message (``CheckpointError`` when all are); temporaries
    of saves (hidden files) are never picked, and removed when their writer is gone."""
    from models.checkpoints import CheckpointError
    log, bad = log or (lambda text: None), []
    remove_stale_temporaries(folder)
    # a folder named *.pt is kept: it is said to be unreadable like a damaged file
    found = [p for p in Path(folder).glob("*.pt") if not p.name.startswith(".") and p.exists()]
    # newest first (current.pt first on equal times)
    for path in sorted(found,
                       key=lambda p: (p.stat().st_mtime_ns, p.name == "current.pt"), reverse=True):
        try:
            data = load(path)
        except CheckpointError as e:
            bad.append(str(e))
            log(f"warning: --resume: skipping unreadable checkpoint {e}")
            continue
        if bad:
            log(f"--resume: using {path}, the newest checkpoint that loads")
        return path, data
    if bad:
        raise CheckpointError(f"{Path(folder)}: no checkpoint of this run folder loads "
                              f"({len(bad)} unreadable; first: {bad[0]}). Start without "
                              f"--resume, or pass a good file with --checkpoint")
    return None
