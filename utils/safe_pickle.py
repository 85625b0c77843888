"""Restricted unpickling of every pickle the project reads (issue #15, security items 1-2).

``pickle.load`` imports and calls whatever a file names (``os.system`` included). :func:`load_file`
and :func:`load_npy` admit only what the official files need, refusing anything else with
:class:`UnsafePickleError` before importing it: numpy arrays, dtypes, scalars and their
reconstructors; ``scipy.sparse`` matrices / arrays; ``chumpy.ch.Ch`` subclasses (chumpy is imported
only when a file names it); the basic containers of protocol 2. Python-2 names are mapped as
``pickle`` does. :func:`referenced_globals` lists what a pickle names without unpickling it.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import importlib
import io
import os
import pickle
import pickletools

import numpy as np

from utils.errors import UserError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_file", "load_npy", "read_npy",
           "referenced_globals"]

# modules whose names are looked up at all (anything else is refused before it is imported)
_MODULE_PREFIXES = ("numpy.core.", "numpy._core.", "scipy.sparse.", "chumpy.")
_MODULES = ("numpy", "numpy.dtypes", "numpy.core", "numpy._core", "scipy.sparse", "chumpy",
            "builtins")
_BUILTINS = {set, frozenset, list, dict, tuple, object, slice, complex, bytes, bytearray,
             int, float, bool, str}
_NAMED = {("copyreg", "_reconstructor"): copyreg._reconstructor,
          ("_codecs", "encode"): codecs.encode, ("codecs", "encode"): codecs.encode,
          ("collections", "OrderedDict"): collections.OrderedDict}
_NP_HELPERS = (np._core.multiarray._reconstruct, np._core.multiarray.scalar,
               np._core.numeric._frombuffer)   # numpy's array reconstructors


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A pickle names something outside the allowed set (it could run code): refused."""


def _resolve(mod: str, name: str):
    """Import ``mod`` and return its ``name``; numpy 1.x / old scipy module names mapped."""
    if mod == "numpy.core" or mod.startswith("numpy.core."):
        mod = "numpy._core" + mod[len("numpy.core"):]
    elif mod.startswith("scipy.sparse."):     # scipy.sparse.csc -> scipy.sparse (same classes)
        mod = "scipy.sparse"
    return getattr(importlib.import_module(mod), name)


def _admitted(module: str, obj: object) -> bool:
    """Whether ``obj`` (from ``module``: ``_MODULES`` / ``_MODULE_PREFIXES``) is allowed."""
    top = module.split(".")[0]
    if top == "builtins":
        return obj in _BUILTINS
    if top == "numpy":
        return (obj in (np.ndarray, np.dtype) or any(obj is f for f in _NP_HELPERS)
                or (isinstance(obj, type) and issubclass(obj, (np.dtype, np.generic))))
    bases = ((_resolve("scipy.sparse", "spmatrix"), _resolve("scipy.sparse", "sparray"))
             if top == "scipy" else _resolve("chumpy.ch", "Ch"))   # scipy.sparse or chumpy
    return isinstance(obj, type) and issubclass(obj, bases)


def _py3(module: str, name: str) -> tuple[str, str]:
    """The Python-3 module and name of a pickled global (Python-2 names mapped as pickle does)."""
    return _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` of the allowed globals only; ``source`` (the file name) and ``what``
    (its role, e.g. "SMPL body model") go into the error messages."""

    def __init__(self, file, source: str = "<pickle>", what: str = "pickle", **kwargs):
        super().__init__(file, **{"encoding": "latin1", **kwargs})
        self.source, self.what = str(source), what

    def _refuse(self, module: str, name: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self.source}: refused to load this {self.what}: it names {module}.{name}, which "
            f"is not a numpy array, scipy sparse matrix, chumpy array or basic container (a "
            f"pickle that names other things can run code when loaded). Use the official file "
            f"(or one written by this project); do not use this one")

    def find_class(self, module: str, name: str):
        mod, nm = _py3(module, name)
        if (mod, nm) in _NAMED:
            return _NAMED[mod, nm]
        if "." in nm or not (mod in _MODULES or mod.startswith(_MODULE_PREFIXES)):
            raise self._refuse(module, name)                   # refused before any import
        try:
            obj = _resolve(mod, nm)
        except (ImportError, AttributeError) as e:
            if mod.split(".")[0] == "chumpy" and isinstance(e, ModuleNotFoundError):
                raise UnsafePickleError(
                    f"{self.source}: this {self.what} holds chumpy arrays and chumpy is not "
                    f"installed. Install it (pip install chumpy-fixed) and retry") from None
            raise self._refuse(module, name) from None
        if not _admitted(mod, obj):
            raise self._refuse(module, name)
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to load this {self.what}: it uses "
                                f"persistent ids, which the official files never do")


def referenced_globals(data: bytes, pickles: int = 1) -> list[str]:
    """The ``module.name`` globals that the first ``pickles`` pickles in ``data`` name, in order
    (``GLOBAL`` / ``INST`` and protocol 4-5 ``STACK_GLOBAL``, whose two strings are traced
    through the memo; Python-2 names mapped), read with :mod:`pickletools`: nothing is imported
    or run. Damaged data ends the scan quietly (what was found before it is returned)."""
    names, fh, strings = [], io.BytesIO(data), ("UNICODE", "STRING")
    for _ in range(pickles):
        stack, memo = [], {}   # stack: the str pushed by each opcode (None for anything else)
        try:
            for op, arg, _pos in pickletools.genops(fh):
                if op.name in ("GLOBAL", "INST"):
                    names.append(".".join(_py3(*str(arg).split(" ", 1))))
                elif op.name == "STACK_GLOBAL":
                    mod, name = ([None, None] + stack)[-2:]
                    names.append(".".join(_py3(mod, name)) if isinstance(mod, str)
                                 and isinstance(name, str) else "<untraced>.<untraced>")
                if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1] if stack else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                elif op.name not in ("FRAME", "PROTO"):
                    stack.append(arg if isinstance(arg, str) and op.name.endswith(strings)
                                 else None)
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: stop reading
            break
        if fh.tell() >= len(data):
            break
    return names


def load_file(path: str | os.PathLike, what: str = "pickle"):
    """Unpickle the file at ``path`` through the allow list (``encoding='latin1'``)."""
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh, source=str(path), what=what).load()


def load_npy(path: str | os.PathLike, what: str = "array file") -> np.ndarray:
    """``np.load`` of one ``.npy``, an object array unpickled through the allow list
    (:class:`UnsafePickleError` otherwise; numpy's ``ValueError`` for a file that is no .npy)."""
    with open(path, "rb") as fh:
        return read_npy(fh, str(path), what)


def read_npy(fh, source: str = "<npy>", what: str = "array file") -> np.ndarray:
    """:func:`load_npy` of an open binary file (e.g. an npz member), named ``source`` in errors."""
    version = np.lib.format.read_magic(fh)
    _shape, _fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(fh)
    if not dtype.hasobject:
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False)
    arr = RestrictedUnpickler(fh, source=source, what=what).load()
    if not isinstance(arr, np.ndarray):
        raise UnsafePickleError(f"{source}: expected a pickled numpy array in this {what}, found "
                                f"{type(arr).__name__}. Re-create the file with np.save")
    return arr
