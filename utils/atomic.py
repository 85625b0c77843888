"""Files that are either the old or the new version, never half written."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

from utils.errors import UserError

# the temporary name of atomic_path: .<name>.tmp<writer's process id>
_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


def temporary_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file of ``path`` written by process ``pid`` (default this one)."""
    return path.with_name(f".{path.name}.tmp{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts; 0 is kept as alive)."""
    try:
        os.kill(pid, 0)   # signal 0: nothing is sent, the process is only looked up
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Remove the :func:`atomic_path` temporaries of ``folder`` whose writer process is gone
    (a kill or crash during a write leaves them); those of live processes stay."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            m = _TMP_NAME.match(entry.name)
            if m and entry.is_file(follow_symlinks=False) and not _alive(int(m.group(1))):
                Path(entry.path).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to: renamed over ``path`` (atomic within a
    folder) when the block ends without an error, removed otherwise. A crash during the write
    leaves the previous ``path``, and a temporary :func:`remove_stale_temporaries` removes.
    A folder at ``path`` is a :class:`utils.errors.UserError` before anything is written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, so the file cannot be written there. Remove or "
                        f"rename the folder, or write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
