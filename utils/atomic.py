"""Files that are either the old or the new version, never half written; a write that fails
(a full disk, a read-only folder, a file where a folder should be) is one :class:`WriteError`
line naming the file and the cause."""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Iterator

from utils.errors import UserError

# the temporary name of atomic_path: .<name>.tmp<writer's process id>
_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


class WriteError(UserError, OSError):
    """A file that could not be written (an ``OSError``); the message names it and the system's
    error, e.g. ``No space left on device (ENOSPC)``."""


def _os_error(e: BaseException | None) -> OSError | None:
    """``e`` or the first exception it arose from that is an ``OSError`` (``torch.save`` turns a
    failed write into a ``RuntimeError`` of its zip writer), else None."""
    seen = set()
    while e is not None and not isinstance(e, OSError) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e if isinstance(e, OSError) else None


def write_error(path: str | os.PathLike, e: OSError, atomic: bool = True) -> WriteError:
    """The one-line :class:`WriteError` of ``path`` for the system error ``e`` (``atomic``: the
    write was :func:`atomic_path`'s, so the previous version of the file is unchanged)."""
    other = e.filename not in (None, os.fspath(path)) and not _TMP_NAME.match(
        Path(os.fsdecode(e.filename)).name)
    return WriteError(f"{path}: cannot be written: {_cause(e)}"
                      + (f": {e.filename}" if other else "")
                      + (". The previous version of the file, if any, is unchanged" if atomic
                         else "") + ". Free space, make the folder writable, or write elsewhere")


def check_folder(folder: str | os.PathLike, probe: bool = True) -> None:
    """:class:`WriteError` when ``folder`` cannot be made (a file in its way) or, with
    ``probe``, no file can be created in it or the nearest existing folder above it (read-only,
    no permission): an unnamed temporary file is made there and removed, leaving nothing."""
    folder = Path(folder)
    q = next(q for q in (folder, *folder.parents) if q.exists() or q == q.parent)
    if not q.is_dir():
        raise WriteError(f"{folder}: cannot be created: {q} is a file, not a folder. Remove or "
                         f"rename that file, or write elsewhere")
    if probe:
        import tempfile
        try:
            tempfile.TemporaryFile(dir=q).close()
        except OSError as e:
            raise WriteError(f"{folder}: cannot be written: {_cause(e)} in {q}. Make it "
                             f"writable, or write elsewhere") from None


def _cause(e: OSError) -> str:
    """``No space left on device (ENOSPC)``: the system's text and the error's name."""
    cause = e.strerror or str(e) or type(e).__name__
    return cause + (f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else "")


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
    folder) when the block ends without an error, removed otherwise (a crash leaves the old
    ``path`` and a temporary that :func:`remove_stale_temporaries` removes). A folder at ``path``
    is a :class:`utils.errors.UserError` before anything is written; a system error in the
    block (also one wrapped by ``torch.save``) a :class:`WriteError` naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, so the file cannot be written there. Remove or "
                        f"rename the folder, or write elsewhere")
    tmp = temporary_name(path)
    try:
        check_folder(path.parent, probe=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        if isinstance(e, WriteError) or (os_error := _os_error(e)) is None:
            raise
        raise write_error(path, os_error) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
