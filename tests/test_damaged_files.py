"""Damaged or crafted files give one clear error, never a raw exception or a silent load.

npz members that are no arrays, numeric annotations stored as strings, SMPL model dicts with
wrong types / values / indices, and checkpoints whose pickle (any protocol, plain or in a torch
zip) names code: that code must never run (a marker file would appear) and the error names it.
"""
from __future__ import annotations

import builtins
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from utils.errors import UserError

# SMPL's skeleton: the parent of each of the 24 joints (the root's is unused)
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


class _Runs:
    """Pickles as a call of ``func(arg)``: ``os.system`` / ``eval`` of a command making a file."""

    def __init__(self, func, arg: str):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_npz_member_that_is_no_array_is_refused(tmp_path):
    from datasets.annotations import DatasetError, read_annotations
    from utils.safe_npz import NpzError, read_npz
    path = tmp_path / "ann.npz"
    np.savez(path, part=np.zeros((2, 24, 3)))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("note.txt", "added by hand")
    with np.load(path) as z:                    # numpy itself hands back the raw bytes
        assert isinstance(z["note.txt"], bytes)
    with pytest.raises(NpzError, match=r"ann.npz: .*'note.txt' are not .npy .*numpy.savez"):
        read_npz(path)
    with pytest.raises(DatasetError, match="'note.txt'"):
        read_annotations(path)


@pytest.mark.parametrize("key, value", [
    ("has_smpl", np.array(["nan", "1"])),
    ("pose", np.zeros((2, 72)).astype(str)),
    ("part", np.full((2, 24, 3), b"1")),
])
def test_numeric_annotations_stored_as_text_are_refused(tmp_path, key, value):
    from datasets.annotations import DatasetError, check_annotations, read_annotations
    good = dict(imgname=np.array(["a.jpg", "b.jpg"]), part=np.ones((2, 24, 3)),
                pose=np.zeros((2, 72)), shape=np.zeros((2, 10)), has_smpl=np.ones(2),
                gender=np.array(["m", "f"]))
    path = tmp_path / "ann.npz"

    def check(data):
        np.savez(path, **data)
        return check_annotations(read_annotations(path),
                                 lambda msg, index=None: DatasetError(f"{path}: {msg}"))

    assert check(good) == 2                     # strings in imgname / gender are fine
    with pytest.raises(DatasetError, match=rf"ann.npz: '{key}' has dtype {value.dtype}, "
                                           rf"expected numbers"):
        check({**good, key: value})


def _smpl_dict() -> dict:
    """A well-formed SMPL model dict (zero-valued arrays, the official types and shapes)."""
    return {"v_template": np.zeros((6890, 3)), "f": np.array([[0, 1, 2]], np.uint32),
            "J_regressor": sp.csc_matrix(np.eye(24, 6890)),
            "weights": np.full((6890, 24), 1 / 24), "posedirs": np.zeros((6890, 3, 207)),
            "shapedirs": np.zeros((6890, 3, 10)),
            "kintree_table": np.array([SMPL_PARENTS, range(24)], np.int64),
            "bs_style": "lbs", "bs_type": "lrotmin"}


def _with(key: str, change) -> dict:
    data = _smpl_dict()
    data[key] = change(data[key])
    return data


def _set(arr, index, value):
    arr = np.array(arr)
    arr[index] = value
    return arr


@pytest.mark.parametrize("key, change", [
    ("J_regressor", lambda v: v.toarray().tolist()),          # a list, not an array
    ("v_template", lambda v: _set(v, (0, 0), np.nan)),
    ("J_regressor", lambda v: sp.csc_matrix(_set(v.toarray(), (0, 0), np.inf))),
    ("weights", lambda v: v.astype(str)),
    ("kintree_table", lambda v: _set(v, (0, 5), 99)),          # parent out of range
    ("kintree_table", lambda v: _set(v, (0, 5), 7)),           # parent after the joint
    ("kintree_table", lambda v: v + 0.5),                      # not integer
    ("f", lambda v: _set(v, (0, 1), 6890)),                    # no such vertex
])
def test_damaged_smpl_model_is_one_error_naming_file_and_key(tmp_path, monkeypatch, key,
                                                              change):
    import chumpy as ch
    from models import smpl
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    data = _smpl_dict()
    data["shapedirs"] = ch.array(data["shapedirs"])             # as in the official files
    monkeypatch.setattr(smpl.safe_pickle, "load_file", lambda p, what: data)
    assert smpl.load_smpl_data(path) is data
    data = _with(key, change)
    with pytest.raises(smpl.SMPLFileError, match=rf"SMPL_NEUTRAL.pkl: '{key}' ") as e:
        smpl.load_smpl_data(path)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)


def _assert_refused(path, marker, code: str) -> None:
    from models.checkpoints import CheckpointError, read_checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=rf"{path.name}: refused: .*\({code}\)") as e:
            read_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]     # the error alone, no torch noise
    assert "\n" not in str(e.value) and not marker.exists()


def test_checkpoint_naming_code_is_refused_by_name(tmp_path):
    """Protocols 2-5, as a plain pickle and in a torch zip (protocol 4+: STACK_GLOBAL)."""
    marker = tmp_path / "FILE"
    system = _Runs(os.system, f"echo pwned > {marker}")
    evil = _Runs(builtins.eval, f"open({str(marker)!r}, 'w')")
    for protocol in (2, 3, 4, 5):
        for name, obj, code in (("sys", system, r"(os|posix)\.system"),
                                ("eval", evil, r"(builtins|__builtin__)\.eval")):
            path = tmp_path / f"{name}{protocol}.pkl"
            path.write_bytes(pickle.dumps({"model": obj}, protocol=protocol))
            _assert_refused(path, marker, code)
            path = tmp_path / f"{name}{protocol}.pt"
            torch.save({"model": obj}, path, pickle_protocol=protocol)
            assert zipfile.is_zipfile(path)
            _assert_refused(path, marker, code)


def test_stack_global_through_the_memo_is_named(tmp_path):
    """Protocol 4: the strings of STACK_GLOBAL pushed, memoised, popped, fetched again."""
    marker, path = tmp_path / "FILE", tmp_path / "memo.pkl"
    cmd = f"echo pwned > {marker}".encode()
    path.write_bytes(b"\x80\x04\x8c\x02os\x940\x8c\x06system\x940h\x00h\x01\x93"
                     + b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.")
    _assert_refused(path, marker, r"os\.system")


def test_checkpoint_protocols_above_2_are_said_or_loaded_quietly(tmp_path):
    from models.checkpoints import CheckpointError, read_checkpoint
    state = {"model": {"w": torch.arange(3.0)}}
    torch.save(state, tmp_path / "p3.pt", pickle_protocol=3)
    torch.save(state, tmp_path / "p4.pt", pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(read_checkpoint(tmp_path / "p3.pt")["model"]["w"], torch.arange(3.0))
        with pytest.raises(CheckpointError, match=r"p4.pt: this checkpoint uses pickle "
                                                  r"protocol 4, .*Re-save it"):
            read_checkpoint(tmp_path / "p4.pt")
    assert not caught, [str(w.message) for w in caught]
