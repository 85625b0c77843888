"""Reading an ``.npz`` without ever unpickling it (issue #15, items 1 and 5).

:func:`read_npz` refuses with :class:`NpzError` (naming the file and key) an object array (a
pickle; with ``objects=True`` unpickled through :mod:`utils.safe_pickle`'s allow list instead:
annotations of other scripts may hold file names so), a zip member stored twice (numpy would
take one) or not a ``.npy`` (numpy would return its raw bytes), a file that is not a zip archive
(a folder, a PyTorch file) and damaged bytes (a member failing its CRC-32).
"""
from __future__ import annotations

import collections
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.safe_pickle import UnsafePickleError, read_npy

__all__ = ["NpzError", "read_npz"]


class NpzError(UserError, ValueError):
    """An npz file that cannot be read safely; the message names the file and the key."""


def read_npz(path: str | os.PathLike, objects: bool = False) -> dict[str, np.ndarray]:
    """All arrays of the npz at ``path``, materialised; never unpickles, but with ``objects``
    reads object arrays through the restricted unpickler (module docstring)."""
    path = Path(path)
    if path.is_dir():
        raise NpzError(f"{path}: is a folder, not an npz file. Pass the .npz file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as e:
        raise NpzError(f"{path}: not an npz file (not a zip archive: {e}). Pass a file written "
                       f"by numpy.savez") from None
    if any(n.endswith("data.pkl") for n in names) and not all(n.endswith(".npy") for n in names):
        raise NpzError(f"{path}: this is a PyTorch file (written by torch.save), not an npz "
                       f"file. Pass a file written by numpy.savez")
    if twice := sorted(n for n, c in collections.Counter(names).items() if c > 1):
        raise NpzError(f"{path}: zip member(s) stored more than once: {', '.join(twice)} "
                       f"(which copy is meant is ambiguous; the file was tampered with or "
                       f"written wrongly). Re-create it with numpy.savez")
    if other := [n for n in names if not n.endswith(".npy")]:
        raise NpzError(f"{path}: zip member(s) {', '.join(map(repr, other))} are not .npy "
                       f"arrays (the file was not written by numpy.savez, or was altered "
                       f"since). Re-create it with numpy.savez")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            try:
                out[key] = z[key]
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:   # damaged bytes
                raise NpzError(f"{path}: this npz file is damaged (array {key!r}: {e}). "
                               f"Re-download or re-create it") from None
            except ValueError as e:
                if "allow_pickle" not in str(e) and "Object arrays" not in str(e):
                    raise NpzError(f"{path}: cannot read array {key!r} ({e}). Re-create the "
                                   f"file with numpy.savez") from None
                if not objects:
                    raise NpzError(f"{path}: array {key!r} is an object array, i.e. a pickle, "
                                   f"which could run code when loaded; refused. Store it as a "
                                   f"numeric or string array (np.savez of e.g. "
                                   f"arr.astype(str)) instead") from None
                try:   # through the allow list: anything else is an UnsafePickleError, never run
                    with z.zip.open(f"{key}.npy") as fh:
                        out[key] = read_npy(fh, f"{path} (array {key!r})", "npz array")
                except UnsafePickleError:
                    raise
                except Exception as e:  # noqa: BLE001 - a damaged pickle: named, not a traceback
                    raise NpzError(f"{path}: cannot read the object array {key!r} "
                                   f"({type(e).__name__}: {e}). Re-create the file with "
                                   f"numpy.savez of string or numeric arrays") from None
    return out
