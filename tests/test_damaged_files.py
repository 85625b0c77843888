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


def test_stack_global_on_an_object_is_untraced_not_named_from_its_text():
    """A STACK_GLOBAL whose module operand is the object a GLOBAL pushed (not a string) cannot
    be named: it is reported untraced (so refused), never as the GLOBAL's text."""
    from utils.safe_pickle import referenced_globals
    data = b"\x80\x04cos\nsystem\n\x8c\x04path\x93."
    assert referenced_globals(data) == ["os.system", "<untraced>.<untraced>"]
    data = b"\x80\x04\x8c\x02os\x8c\x04path\x93."     # two strings: named
    assert referenced_globals(data) == ["os.path"]


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


# ------------------------------------------------------------------------------------------------
# damaged bytes that the readers themselves do not notice; files of another kind
def _flip_member_byte(path, member: str) -> None:
    """Flip one byte in the stored data of zip ``member`` (a valid zip otherwise)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member))
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:
                                                          info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start + 5] ^= 0x40
    path.write_bytes(bytes(data))


def test_checkpoint_with_changed_bytes_is_refused(tmp_path):
    """torch.load does not check a zip's CRC-32: a changed weight would load silently."""
    from models.checkpoints import CheckpointError, read_checkpoint
    path = tmp_path / "c.pt"
    w = torch.arange(64.0)
    torch.save({"model": {"w": w}}, path)
    _flip_member_byte(path, "data/0")
    assert not torch.equal(torch.load(path, map_location="cpu", weights_only=True)["model"]["w"], w)
    with pytest.raises(CheckpointError, match=r"c.pt: this checkpoint is corrupt \(Bad CRC-32 "
                                              r"for file '.*data/0'\)") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)
    torch.serialization.set_crc32_options(False)     # a file written without checksums loads
    try:
        torch.save({"model": {"w": w}}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(read_checkpoint(tmp_path / "nocrc.pt")["model"]["w"], w)


def test_npz_and_checkpoint_swapped_and_damaged_npz(tmp_path):
    from models.checkpoints import CheckpointError, read_checkpoint
    from utils.safe_npz import NpzError, read_npz
    npz, pt = tmp_path / "mean.npz", tmp_path / "c.pt"
    np.savez(npz, pose=np.arange(144.0), shape=np.zeros(10))
    torch.save({"model": {"w": torch.zeros(2)}}, pt)
    with pytest.raises(CheckpointError, match=r"mean.npz: not a PyTorch checkpoint: a zip "
                                              r"archive \(an .npz of numpy\) .*pose.npy"):
        read_checkpoint(npz)
    with pytest.raises(NpzError, match=r"c.pt: this is a PyTorch file .*not an npz"):
        read_npz(pt)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(NpzError, match=r"dir.npz: is a folder"):
        read_npz(tmp_path / "dir.npz")
    _flip_member_byte(npz, "pose.npy")
    with pytest.raises(NpzError, match=r"mean.npz: this npz file is damaged \(array 'pose': "
                                       r"Bad CRC-32"):
        read_npz(npz)


def _nets_and_state(step: bool = True):
    """Two tiny networks and a train.py-layout checkpoint of them with an Adam state (group 0
    the main network, group 1 the aux network)."""
    torch.manual_seed(0)
    model, aux = torch.nn.Linear(3, 2), torch.nn.Linear(2, 4)
    opt = torch.optim.Adam([{"params": list(model.parameters())},
                            {"params": list(aux.parameters()), "lr": 1e-6}])
    if step:
        (model(torch.ones(1, 3)).sum() + aux(torch.ones(1, 2)).sum()).backward()
        opt.step()
    return model, aux, {"model": model.state_dict(), "model_aux": aux.state_dict(),
                        "optimizer": opt.state_dict()}


def _damage(ckpt: dict, change) -> dict:
    import copy
    ckpt = copy.deepcopy(ckpt)
    change(ckpt)
    return ckpt


@pytest.mark.parametrize("change, match", [
    (lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
     r"state 'exp_avg' of parameter 0 is not a float tensor \[2, 3\]"),
    (lambda c: c["optimizer"]["state"][3].update(exp_avg_sq=torch.full((4,), np.nan)),
     r"state 'exp_avg_sq' of parameter 3 .* and finite"),
    (lambda c: c["optimizer"]["state"][1].update(step=torch.ones(2)),
     r"state 'step' of parameter 1 is not one number"),
    (lambda c: c["optimizer"]["param_groups"][1].update(lr="1e-6"),
     r"group 1: 'lr' is '1e-6', not a number"),
    (lambda c: c.update(optimizer=None), r"\['optimizer'\] is a NoneType without 'state'"),
    (lambda c: c["model"].update(weight=c["model"]["weight"].long()),
     r"weight: file torch.int64 vs model torch.float32"),
    (lambda c: c["model"].update(weight=c["model"]["weight"].to_sparse()),
     r"weight: not a dense tensor \(Tensor, torch.sparse_coo\)"),
])
def test_checkpoint_entries_that_do_not_fit_are_refused(tmp_path, change, match):
    """A state of the wrong shape would make fused Adam write out of bounds (the process
    aborts); an integer or sparse weight would be converted or crash without a word."""
    from models.checkpoints import CheckpointError, load_metahmr_state
    model, aux, ckpt = _nets_and_state()
    assert load_metahmr_state(ckpt, "c.pt", model, aux, optimizer=True) is ckpt
    _, _, fresh = _nets_and_state(step=False)     # before any step: no per-parameter state
    assert load_metahmr_state(fresh, "c.pt", model, aux, optimizer=True) is fresh
    damaged = _damage(ckpt, change)
    with pytest.raises(CheckpointError, match=rf"c.pt: .*{match}") as e:
        load_metahmr_state(damaged, "c.pt", model, aux, optimizer=True)
    assert "\n" not in str(e.value)
    if not match.startswith("weight"):   # evaluation reads the weights only
        assert load_metahmr_state(damaged, "c.pt", model, aux) is damaged


@pytest.mark.parametrize("key, value, match", [
    ("epoch", float("inf"), r"'epoch' is inf, not a whole number >= 0"),
    ("batch_idx", -1, r"'batch_idx' is -1"),
    ("total_step_count", torch.tensor([1, 2]), r"'total_step_count' is tensor"),
    ("batch_size", 0, r"'batch_size' is 0, not a whole number >= 1"),
    ("dataset_perm", torch.arange(3), r"'dataset_perm' is Tensor, not a list"),
    ("rng", "x", r"its 'rng' states do not load"),
])
def test_resume_bookkeeping_damage_is_refused(tmp_path, key, value, match):
    from models.checkpoints import CheckpointError
    from train import checkpoint as ckpt
    good = {"epoch": 1, "batch_idx": 2, "total_step_count": 3, "batch_size": 2,
            "dataset_perm": [1, 0, 2], "rng": ckpt.rng_state()}
    ckpt.atomic_save(good, tmp_path / "previous.pt")
    ckpt.atomic_save({**good, key: value}, tmp_path / "current.pt")
    os.utime(tmp_path / "previous.pt", ns=(10**18,) * 2)
    with pytest.raises(CheckpointError, match=rf"current.pt: cannot resume from it \({match}"):
        ckpt.load(tmp_path / "current.pt")
    path, data = ckpt.load_for_resume(tmp_path, log=None)      # the newest one that loads
    assert path.name == "previous.pt" and data["epoch"] == 1


def test_bad_rng_state_is_refused_and_the_generators_are_kept(tmp_path):
    import random
    from models.checkpoints import CheckpointError
    from train import checkpoint as ckpt
    state = ckpt.rng_state()                 # torch and numpy states that load, then
    state["python"] = "(3, (1, 2), None)"    # one that random.setstate refuses
    ckpt.atomic_save({"rng": state}, tmp_path / "current.pt")
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    with pytest.raises(CheckpointError, match=r"'rng' states do not load \("):
        ckpt.load(tmp_path / "current.pt")
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())


def test_a_folder_named_like_a_checkpoint(tmp_path):
    from models.checkpoints import CheckpointError
    from train import checkpoint as ckpt
    (tmp_path / "current.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint of this run folder loads .*"
                                              r"current.pt: is a folder"):
        ckpt.load_for_resume(tmp_path, log=None)
    with pytest.raises(UserError, match=r"current.pt: is a folder, so the file cannot be "
                                        r"written there") as e:
        ckpt.atomic_save({"step": 1}, tmp_path / "current.pt")
    assert "\n" not in str(e.value) and os.listdir(tmp_path) == ["current.pt"]


@pytest.mark.parametrize("key, change, match", [
    ("pose", lambda v: _set(v, (1, 4), 1e30),              # float32 squares overflow: NaN GT
     r"'pose' holds values beyond ±1e\+06 \(first at sample 1, 1 samples"),
    ("openpose", lambda v: _set(v, (0, 3, 2), -0.5),       # a negative TTO loss weight
     r"'openpose' has a negative confidence"),
    ("has_smpl", lambda v: _set(v, 1, 2.0), r"'has_smpl' holds values other than 0 and 1"),
])
def test_implausible_annotation_values_are_refused(tmp_path, key, change, match):
    from datasets.annotations import DatasetError, check_annotations
    good = dict(imgname=np.array(["a.jpg", "b.jpg"]), part=np.ones((2, 24, 3)),
                openpose=np.full((2, 25, 3), 0.5), pose=np.full((2, 72), 0.1),
                shape=np.zeros((2, 10)), has_smpl=np.ones(2))

    def check(data):
        return check_annotations(data, lambda msg, index=None: DatasetError(f"ann.npz: {msg}"))

    assert check(good) == 2
    with pytest.raises(DatasetError, match=rf"ann.npz: {match}"):
        check({**good, key: change(good[key])})


def test_a_folder_in_place_of_an_image_is_said(tmp_path):
    from datasets.image_files import read_image_file
    (tmp_path / "a.jpg").mkdir()
    assert read_image_file(str(tmp_path / "a.jpg")) == (None, "a folder, not an image file")
    assert read_image_file(str(tmp_path / "b.jpg")) == (None, "file does not exist")
