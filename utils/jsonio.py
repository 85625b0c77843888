"""Strict JSON output (issue #13 point 2): a non-finite float becomes ``null`` ("no value"),
numpy / torch values plain numbers and lists, paths strings; dumped with ``allow_nan=False``."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePath

__all__ = ["to_strict", "dumps", "write_json"]


def to_strict(obj: object) -> object:
    """A copy of ``obj`` made of JSON values only (non-finite floats -> None)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_strict(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    tolist = getattr(obj, "tolist", None)   # numpy arrays / scalars, torch tensors
    if callable(tolist):
        return to_strict(tolist())
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def dumps(obj: object, **kwargs) -> str:
    """``json.dumps`` of :func:`to_strict` (``obj``) with ``allow_nan=False``."""
    return json.dumps(to_strict(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: object, indent: int | None = 2,
               sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON to ``path`` (parent folders created); returns the path. A file
    is replaced atomically (:func:`utils.atomic.atomic_path`: a failed write leaves the previous
    file); a link or a path that is no regular file (``/dev/stdout``, a pipe) is written in place.
    A failed write is one :class:`utils.atomic.WriteError` naming ``path``."""
    from utils.atomic import atomic_path, write_error
    path = Path(path)
    text = dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    if path.is_symlink() or path.exists() and not path.is_file() and not path.is_dir():
        try:
            path.write_text(text)
        except OSError as e:
            raise write_error(path, e, atomic=False) from None
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
