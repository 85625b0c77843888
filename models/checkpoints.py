"""Strict loading of every released weight file, and stand-in files for the synthetic world (D9).

Formats: :data:`models.checkpoint_kind.FORMATS`. Reads are ``map_location='cpu',
weights_only=True``; loads are strict (a missing, unexpected or wrongly shaped key raises
:class:`CheckpointError` naming the file and keys), tolerating only absent BN
``num_batches_tracked`` in backbone files, ``init_*`` absent from ``hmr.pt`` (mean params kept)
and the COCO pose-HRNet file's missing ``stage4.2.fuse_layers.{1,2,3}`` (random, as upstream).
"""
from __future__ import annotations

import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

import config
from utils import safe_pickle
from utils.atomic import atomic_path
from utils.errors import UserError

from .backbones import HRNET_TRUNK as HRNET_TRUNK_PREFIXES   # the HRNet trunk's modules
from .checkpoint_kind import FORMATS, describe, metahmr_network, rename
from .regressor import INIT_BUFFERS, Regressor, build_model

_COCO_ABSENT = re.compile(r"^stage4\.2\.fuse_layers\.[123]\.")
_COUNTER = ".num_batches_tracked"   # BN batch counters: may be absent from backbone files
_SHOW = 12
_CODE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "shutil",
                 "socket", "importlib", "runpy", "pty", "code", "pickle", "marshal", "types",
                 "functools", "operator", "ctypes", "webbrowser")


class CheckpointError(UserError, RuntimeError):
    """A weight file does not match the network it is loaded into (message names file + keys)."""


def _refusal(p: Path, what: str, names: list[str]) -> str:
    """The message for a file whose pickle names more than tensors and containers."""
    def resolved(name: str) -> object:   # the object, if its module is imported (never imports)
        mod, _, attr = name.rpartition(".")
        return getattr(sys.modules.get(mod), attr, None)

    def is_class(name: str) -> bool:     # a class (a pickled object), not code to call
        if name.split(".")[0] in _CODE_MODULES:
            return False
        obj = resolved(name)
        return isinstance(obj, type) if obj is not None else name.rpartition(".")[2][:1].isupper()

    if code := [n for n in names if not is_class(n)]:
        return (f"{p}: refused: this file contains code ({', '.join(code[:3])}), which would "
                f"run when it is loaded. Do not use it; use the official {what} or one written "
                f"by this project")
    if modules := [n for n in names
                   if isinstance(resolved(n), type) and issubclass(resolved(n), nn.Module)]:
        return (f"{p}: this file holds a pickled object ({modules[0]}), not a state dict, and "
                f"loading objects could run code. Re-save it with "
                f"torch.save(model.state_dict()) (or a dict of state dicts)")
    return (f"{p}: this file holds pickled objects ({', '.join(names[:3])}), not only tensors "
            f"and plain containers, and loading objects could run code. Re-save it with plain "
            f"dicts, lists, numbers, strings and tensors (e.g. vars(namespace))")


def _load_error(p: Path, what: str, err: Exception) -> str:
    """Why torch.load failed on ``p``: names beyond torch's weights-only set in its pickles (read
    with :func:`utils.safe_pickle.referenced_globals`, never run; every protocol), a protocol
    above 3, a zip archive of another kind, truncated or corrupt bytes, not a PyTorch file."""
    names = None   # a torch zip's data.pkl members, else the file (a legacy one stores five)
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            data, pickles = [zf.read(n) for n in names if n.endswith("data.pkl")], 1
    except Exception:  # noqa: BLE001 - not a (readable) zip: the file itself
        data, pickles = [p.read_bytes()], 5
    try:   # torch's weights-only allow list (a private helper; by prefix where it is missing)
        safe = set(torch._weights_only_unpickler._get_allowed_globals()).__contains__
    except AttributeError:
        safe = lambda n: n.startswith(("collections.", "torch."))   # noqa: E731
    found = [n for d in data for n in safe_pickle.referenced_globals(d, pickles)]
    if unsafe := [n for n in dict.fromkeys(found) if not safe(n)]:
        return _refusal(p, what, unsafe)
    proto = data[0][1] if data and len(data[0]) > 1 and data[0][:1] == b"\x80" else 0
    if proto > 3 and "Unsupported operand" in str(err):
        return (f"{p}: this {what} uses pickle protocol {proto}, which torch.load("
                f"weights_only=True) cannot read. Re-save it with torch.save's default protocol "
                f"(no pickle_protocol argument)")
    with open(p, "rb") as fh:
        head = fh.read(4)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
    if head.startswith(b"PK"):
        if names is not None and not any(n.endswith("data.pkl") for n in names):
            kind = " (an .npz of numpy)" if names and all(n.endswith(".npy") for n in names) else ""
            return (f"{p}: not a PyTorch checkpoint: a zip archive{kind} without the data.pkl of "
                    f"torch.save (it holds {', '.join(names[:3]) or 'nothing'}). Pass a {what} "
                    f"written by torch.save")
        return f"{p}: this {what} is truncated or corrupt ({first}). Re-download or re-create it"
    if head[:1] == b"\x80":   # a legacy (pre-zip) torch file
        return (f"{p}: cannot read this {what} ({type(err).__name__}: {first}). Re-download or "
                f"re-create it")
    return (f"{p}: not a PyTorch checkpoint (it starts with {head!r}: neither a zip archive nor a "
            f"pickle). Pass a file written by torch.save, e.g. a {what} of the Meta-HMR README "
            f"(https://github.com/fmx789/Meta-HMR) or of train.py")


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors
    (:class:`config.MissingFileError`, else :class:`CheckpointError`: :func:`_load_error`, or
    damaged bytes that torch.load reads without noticing: a torch zip's CRC-32 checksums), and
    without torch's warnings on a failed file or on a pickle protocol above 2."""
    p = config.require(path, what)
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a {what}. Pass the .pt file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj, err = torch.load(p, map_location="cpu", weights_only=True), None
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name and the reason
            err = exc
    if err is not None:
        raise CheckpointError(_load_error(p, what, err)) from None
    if zipfile.is_zipfile(p):
        try:   # every member's CRC-32 (torch.load checks none; stored without one (0): skipped)
            with zipfile.ZipFile(p) as zf:
                for info in zf.infolist():
                    if info.CRC or not info.file_size:
                        with zf.open(info) as fh:
                            while fh.read(1 << 24):
                                pass
        except Exception as e:  # noqa: BLE001 - any zip damage torch.load did not notice
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{p}: this {what} is corrupt ({why}): its bytes changed "
                                  f"after it was written. Re-download or re-create it") from None
    for w in caught:
        if not str(w.message).startswith("Detected pickle protocol"):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def _state(obj: object, fmt, path) -> dict:
    """The state dict that ``fmt`` (a :class:`checkpoint_kind.Format`) finds in ``obj``."""
    if not isinstance(obj, Mapping) or fmt.entry not in obj:
        found = sorted(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with a {fmt.entry!r} entry, found {found}")
    if not isinstance(value := obj[fmt.entry], Mapping):
        raise CheckpointError(f"{path}: [{fmt.entry!r}] is a {type(value).__name__}, not a "
                              f"state_dict")
    return rename(value, fmt.drop)


def _dense(v: object) -> bool:
    return torch.is_tensor(v) and v.layout == torch.strided


def _mismatch(v: object, own: torch.Tensor) -> str | None:
    """Why the file's ``v`` cannot load into ``own`` as it is (not dense, another shape, not
    floating-point for a floating-point ``own``: a silent conversion), or None."""
    if not _dense(v):
        return f"not a dense tensor ({type(v).__name__}" + (
            f", {v.layout})" if torch.is_tensor(v) else ")")
    if v.shape != own.shape:
        return f"file {tuple(v.shape)} vs model {tuple(own.shape)}"
    if own.is_floating_point() and not v.is_floating_point():
        return f"file {v.dtype} vs model {own.dtype}"
    return None


def _load_strict(module: nn.Module, state: Mapping, path, what: str,
                 may_miss: Callable[[str], bool] = lambda k: False,
                 own_keys: list[str] | None = None) -> list[str]:
    """Load ``state`` into ``module`` (or its ``own_keys``) once keys and shapes fit; returns
    the tolerated misses."""
    own = module.state_dict()
    if own_keys is not None:
        own = {k: own[k] for k in own_keys}
    missing = [k for k in own if k not in state and not may_miss(k)]
    tolerated = [k for k in own if k not in state and may_miss(k)]
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: {why}" for k, v in state.items() if k in own and (why := _mismatch(v, own[k]))]
    if missing or unexpected or bad:
        parts = [f"{path}: {what} does not match {type(module).__name__}"]
        for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                           ("wrong shapes or types", bad)):
            if keys:
                more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                parts.append(f"{name} ({len(keys)}): [{', '.join(map(str, keys[:_SHOW]))}{more}]")
        raise CheckpointError("; ".join(parts) + ". It was saved from another network: pass "
                              "the file meant for this role, or the --model / --backbone / "
                              "--bbox_type it was trained with")
    if nonfinite := [k for k, v in state.items() if k in own and v.is_floating_point()
                     and not bool(torch.isfinite(v).all())]:
        raise CheckpointError(f"{path}: {what} holds NaN or inf in {len(nonfinite)} tensor(s) "
                              f"({', '.join(nonfinite[:_SHOW])}): a diverged or damaged run. "
                              f"Pass an earlier checkpoint")
    module.load_state_dict(state, strict=own_keys is None and not tolerated)
    return tolerated


def load_metahmr_checkpoint(path: str | os.PathLike, model: nn.Module,
                            model_aux: nn.Module | None = None, optimizer: bool = False) -> dict:
    """Load a Meta-HMR checkpoint's ``model`` (and ``model_aux`` if given) strictly; returns
    the whole checkpoint dict (optimizer and bookkeeping entries included)."""
    return load_metahmr_state(read_checkpoint(path, "Meta-HMR checkpoint"), path, model,
                              model_aux, optimizer)


def load_metahmr_state(ckpt: object, path, model: nn.Module,
                       model_aux: nn.Module | None = None, optimizer: bool = False) -> dict:
    """:func:`load_metahmr_checkpoint` of ``ckpt``, already read from ``path``. A file of
    another role is refused saying what it is (:func:`models.checkpoint_kind.describe`).
    ``optimizer``: its Adam state must fit the networks too (train.py loads it)."""
    what = describe(ckpt)
    if what is not None and model_aux is not None:
        raise CheckpointError(f"{path}: {what}")
    fmt = FORMATS["metahmr"]
    try:   # the main network alone: any file whose 'model' fits it strictly
        _load_strict(model, _state(ckpt, fmt, path), path, fmt.what)
    except CheckpointError as e:
        if what is not None:
            raise CheckpointError(f"{e}. Note: {what}") from None
        raise
    if model_aux is not None:
        fmt = FORMATS["metahmr_aux"]
        _load_strict(model_aux, _state(ckpt, fmt, path), path, fmt.what)
        if optimizer and "optimizer" in ckpt:
            _check_optimizer(ckpt["optimizer"], path, (model, model_aux))
    return ckpt


def _plain(v: object) -> bool:
    """A value Adam's options may take: None, a bool, a finite number, or a tuple of them."""
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v))


def _check_optimizer(opt: object, path, nets: tuple[nn.Module, ...]) -> None:
    """A train.py Adam state (checkpoint_layout.md: group ``g`` holds ``nets[g]``'s parameters
    in order) that fits the networks: plain group options; per parameter, a one-value step and
    floating-point, finite tensors of its shape (fused Adam would write out of bounds). A group
    of another size is left to ``optimizer.load_state_dict`` (its own error)."""
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: ['optimizer'] {what}: the file is damaged. Pass an "
                               f"earlier checkpoint")
    groups = opt.get("param_groups") if isinstance(opt, Mapping) else None
    state = opt.get("state") if isinstance(opt, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state, Mapping):
        raise fail(f"is a {type(opt).__name__} without 'state' and 'param_groups' (as "
                   f"torch.optim.Adam.state_dict() writes)")
    for g, (group, net) in enumerate(zip(groups, nets)):
        ids = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise fail(f"group {g} has no list of parameter ids")
        if bad := [k for k, v in group.items() if k != "params" and not _plain(v)]:
            raise fail(f"group {g}: {bad[0]!r} is {group[bad[0]]!r:.40}, not a number")
        params = list(net.parameters())
        for i, p in zip(ids, params) if len(ids) == len(params) else ():
            if not isinstance(entry := state.get(i, {}), Mapping):
                raise fail(f"state of parameter {i} is a {type(entry).__name__}, not a dict")
            for key, v in entry.items():
                if key == "step":   # a number (torch < 1.12) or a one-value tensor
                    v = torch.tensor(float(v)) if isinstance(v, (int, float)) else v
                    ok = _dense(v) and v.numel() == 1 and not v.is_complex()
                else:
                    ok = _dense(v) and v.shape == p.shape and v.is_floating_point()
                if not ok or not bool(torch.isfinite(v).all()):
                    want = "one number" if key == "step" else f"a float tensor {list(p.shape)}"
                    raise fail(f"state {key!r} of parameter {i} is not {want} and finite")


def load_aux_weights(path: str | os.PathLike, model_aux: nn.Module, model: str = "cliff",
                     backbone: str = "resnet") -> list[str]:
    """Initialise the aux network from the CLIFF / SPIN-HMR checkpoint; returns the keys
    allowed to be missing (HMR: ``init_*``, absent from ``hmr.pt``, keep the mean params)."""
    obj = read_checkpoint(path, f"{model}/{backbone} aux-network checkpoint")
    if metahmr_network(obj) is not None:
        raise CheckpointError(f"{path}: this is a Meta-HMR checkpoint (both networks), not an "
                              f"aux-network file. Pass it as --pretrained_checkpoint (train.py) "
                              f"or --checkpoint (evaluation)")
    if (fmt := FORMATS.get(("aux", model, backbone))) is None:
        raise ValueError(f"no aux-network checkpoint format for model={model!r}, "
                         f"backbone={backbone!r}")
    return _load_strict(model_aux, _state(obj, fmt, path), path, fmt.what,
                        may_miss=lambda k: model == "hmr" and k in INIT_BUFFERS)


def load_backbone_weights(path: str | os.PathLike, model: Regressor,
                          backbone: str | None = None) -> list[str]:
    """Initialise the main network's encoder (not the head) from a pretrained pose backbone
    ('resnet' | 'resnet18' | 'hrnet', default ``model.backbone_name``); returns tolerated misses."""
    backbone = backbone or model.backbone_name
    obj = read_checkpoint(path, f"pretrained {backbone} backbone")
    if (fmt := FORMATS.get(("backbone", backbone))) is None:
        raise ValueError(f"no pretrained-backbone format for {backbone!r}")
    if backbone == "hrnet":
        if not isinstance(obj, Mapping) or not isinstance(getattr(model, "backbone", None),
                                                          nn.Module):
            raise CheckpointError(f"{path}: expected a plain HRNet state_dict and a CLIFF-HRNet "
                                  f"main network (with .backbone)")
        model = model.backbone
        trunk = [k for k in model.state_dict() if k.split(".")[0] in HRNET_TRUNK_PREFIXES]
        state = {k: v for k, v in obj.items() if k.split(".")[0] in HRNET_TRUNK_PREFIXES}
        empty = ("no HRNet trunk key (conv1, layer1, stage2, ...) found; keys must be "
                 "unprefixed, e.g. 'conv1.weight'")
    else:
        trunk = model.trunk_state_keys()
        state = {k: v for k, v in _state(obj, fmt, path).items() if k in trunk}
        empty = (f"no {backbone} trunk key found (expected e.g. 'backbone.conv1.weight' under "
                 f"'state_dict')")
    if not state:
        raise CheckpointError(f"{path}: {empty}")
    return _load_strict(model, state, path, fmt.what, own_keys=trunk,   # no COCO key in ResNets
                        may_miss=lambda k: k.endswith(_COUNTER) or bool(_COCO_ABSENT.match(k)))


# -- weight files in the released formats: the study's exports, the synthetic world's stand-ins --
def resnet_aux_file(net: Regressor) -> dict:
    """``net`` as a CLIFF ResNet aux file: {'model': {'module.[encoder.]' + key}}."""
    trunk = set(net.trunk_state_keys())
    return {"model": {("module.encoder." if k in trunk else "module.") + k: v
                      for k, v in net.state_dict().items()}}


def resnet_backbone_file(net: Regressor) -> dict:
    """``net``'s trunk as ``pose_resnet.pth``: ``{'state_dict': {'backbone.' + trunk key}}``."""
    trunk = set(net.trunk_state_keys())
    return {"state_dict": {"backbone." + k: v for k, v in net.state_dict().items() if k in trunk}}


def _hrnet_backbone_file(net: Regressor, seed: int) -> dict:
    """``net``'s trunk as ``pose_hrnet_w48_256x192.pth`` (with an unused COCO heatmap layer)."""
    state = {k: v for k, v in net.backbone.state_dict().items()
             if k.split(".")[0] in HRNET_TRUNK_PREFIXES and not _COCO_ABSENT.match(k)}
    gen = torch.Generator().manual_seed(seed)
    return {**state, "final_layer.weight": torch.randn(17, 48, 1, 1, generator=gen) * 1e-3,
            "final_layer.bias": torch.zeros(17)}


def write_standin_weights(root: str | os.PathLike, backbones=("resnet18", "resnet"), seed: int = 0,
                          mean_params: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write random weight files in the released formats under ``root`` (atomically): per
    backbone ``config.BACKBONE_FILES`` and ``config.AUX_FILES`` (CLIFF; HMR for the ResNets),
    each from its own seeded network (``mean_params``: the CLIFF files' ``init_*``). Returns
    {label: path}, labels like 'backbone/resnet', 'aux/cliff/resnet'."""
    root, out = Path(root), {}

    def save(model: str, role: str, seed: int, to_file: Callable, **kwargs) -> None:
        label, file = ((f"backbone/{bb}", config.BACKBONE_FILES[bb]) if role == "main"
                       else (f"aux/{model}/{bb}", config.AUX_FILES[model, bb]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(model, bb, role, **kwargs)
        with atomic_path(root / file) as tmp:
            torch.save(to_file(net), tmp)
        out[label] = root / file

    for i, bb in enumerate(backbones):
        if bb not in config.BACKBONE_FILES:
            raise ValueError(f"unknown backbone {bb!r}: expected some of "
                             f"{sorted(config.BACKBONE_FILES)}")
        s = seed + 10 * i
        save("cliff", "main", s,
             (lambda n: _hrnet_backbone_file(n, s)) if bb == "hrnet" else resnet_backbone_file)
        save("cliff", "aux", s + 1, resnet_aux_file if bb != "hrnet" else
             lambda n: {"model": {"module." + k: v for k, v in n.state_dict().items()}},
             mean_params=mean_params)
        if ("hmr", bb) in config.AUX_FILES:
            save("hmr", "aux", s + 2, lambda n: {
                "model": {k: v for k, v in n.state_dict().items() if k not in INIT_BUFFERS}})
    return out


__all__ = ["CheckpointError", "read_checkpoint", "load_metahmr_checkpoint", "load_metahmr_state",
           "load_aux_weights", "load_backbone_weights", "write_standin_weights",
           "resnet_aux_file", "resnet_backbone_file"]
