"""Strict loading of every released weight file, and stand-in files for the synthetic world (D9).

File formats (reference/checkpoint_layout.md §2-3):

* Meta-HMR checkpoints (``ckpt/*.pt``, our training checkpoints): ``{'model': main state_dict,
  'model_aux': aux state_dict, ...}`` -> :func:`load_metahmr_checkpoint` (a leading ``module.``
  of DDP-saved files is removed).
* Aux init (:func:`load_aux_weights`): CLIFF ResNet ``res50-…pt`` ``['model']`` with ``module.``
  and ``encoder.`` removed; CLIFF HR48 ``hr48-…pt`` ``['model']`` with ``module.`` removed;
  SPIN ``hmr.pt`` ``['model']`` as is, where missing ``init_*`` buffers keep the mean params.
* Main backbone init (:func:`load_backbone_weights`): ``pose_resnet.pth`` ``['state_dict']`` with
  ``backbone.`` removed, trunk keys only; ``pose_hrnet_w48_256x192.pth`` a plain HRNet-COCO
  state_dict, of which the stem, layer1, transitions and stages 2-4 load into ``model.backbone``.

Every load reads with ``map_location='cpu', weights_only=True`` and is strict: a missing,
unexpected or wrongly shaped key raises :class:`CheckpointError` naming the file and the keys.
Two documented tolerances: BN ``num_batches_tracked`` counters may be absent from backbone files,
and the COCO pose-HRNet file lacks ``stage4.2.fuse_layers.{1,2,3}`` (its last module fuses to the
highest resolution only), which PARE's multi-scale stage 4 has and keeps random, as upstream.
"""
from __future__ import annotations

import os
import pickletools
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

import config
from config import require
from utils.atomic import atomic_path
from utils.errors import UserError

from .regressor import Regressor, build_model

INIT_BUFFERS = ("init_pose", "init_shape", "init_cam")
HRNET_TRUNK_PREFIXES = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2",
                        "transition3", "stage2", "stage3", "stage4")
_COCO_HRNET_ABSENT = re.compile(r"^stage4\.2\.fuse_layers\.[123]\.")
_SHOW = 12


class CheckpointError(UserError, RuntimeError):
    """A weight file does not match the network it is loaded into (message names file + keys)."""


def _fmt(keys: list) -> str:
    head = ", ".join(str(k) for k in keys[:_SHOW])
    return f"[{head}{f', ... ({len(keys) - _SHOW} more)' if len(keys) > _SHOW else ''}]"


def _unsafe_globals(path: Path) -> list[str]:
    """Names a checkpoint's pickle would import beyond torch's weights-only set (never run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: read the opcodes instead
        pass
    try:
        with open(path, "rb") as fh:
            ops = list(pickletools.genops(fh))
    except Exception:  # noqa: BLE001 - not a pickle at all
        return []
    names = [str(arg).replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"]
    return [n for n in names if not n.startswith(("collections.", "torch."))]


_CODE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "shutil",
                 "socket", "importlib", "runpy", "pty", "code", "pickle", "marshal", "types",
                 "functools", "operator", "ctypes", "webbrowser")


def _resolved(name: str) -> object:
    """The object a global name denotes, if its module is already imported (never imports)."""
    mod, _, attr = name.rpartition(".")
    return getattr(sys.modules.get(mod), attr, None)


def _is_class(name: str) -> bool:
    """Whether the global ``name`` is a class (a pickled object) rather than code to call."""
    if name.split(".")[0] in _CODE_MODULES:
        return False
    obj = _resolved(name)
    return isinstance(obj, type) if obj is not None else name.rpartition(".")[2][:1].isupper()


def _refusal(p: Path, what: str, names: list[str]) -> str:
    """The message for a file whose pickle names more than tensors and containers."""
    code = [n for n in names if not _is_class(n)]
    if code:
        return (f"{p}: refused: this file contains code ({', '.join(code[:3])}), which would "
                f"run when it is loaded. Do not use it; use the official {what} or one written "
                f"by this project")
    modules = [n for n in names
               if isinstance(_resolved(n), type) and issubclass(_resolved(n), nn.Module)]
    if modules:
        return (f"{p}: this file holds a pickled object ({modules[0]}), not a state dict, and "
                f"loading objects could run code. Re-save it with "
                f"torch.save(model.state_dict()) (or a dict of state dicts)")
    return (f"{p}: this file holds pickled objects ({', '.join(names[:3])}), not only tensors "
            f"and plain containers, and loading objects could run code. Re-save it with plain "
            f"dicts, lists, numbers, strings and tensors (e.g. vars(namespace))")


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors.

    Raises :class:`config.MissingFileError` for a missing file and :class:`CheckpointError`
    saying why for the rest: not a PyTorch file (e.g. a text file), truncated or corrupt, a
    pickled module instead of a state dict, other pickled objects, or code.
    """
    p = require(path, what)
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a {what}. Pass the .pt file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and the reason
        err = exc
    names = _unsafe_globals(p)
    if names:
        raise CheckpointError(_refusal(p, what, names)) from None
    with open(p, "rb") as fh:
        head = fh.read(4)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
    if head.startswith(b"PK"):
        raise CheckpointError(f"{p}: this {what} is truncated or corrupt ({first}). Re-download "
                              f"or re-create it") from None
    if head[:1] == b"\x80":   # a legacy (pre-zip) torch file
        raise CheckpointError(f"{p}: cannot read this {what} ({type(err).__name__}: {first}). "
                              f"Re-download or re-create it") from None
    raise CheckpointError(f"{p}: not a PyTorch checkpoint (it starts with {head!r}: neither a "
                          f"zip archive nor a pickle). Pass a file written by torch.save, e.g. "
                          f"a {what} of the Meta-HMR README (https://github.com/fmx789/Meta-HMR) "
                          f"or of train.py") from None


def _read(path: str | os.PathLike, what: str) -> object:
    return read_checkpoint(path, what)


def _entry(obj: object, key: str, path) -> Mapping:
    if not isinstance(obj, Mapping) or key not in obj:
        found = sorted(obj)[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with a {key!r} entry, found {found}")
    value = obj[key]
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{path}: [{key!r}] is a {type(value).__name__}, not a state_dict")
    return value


def _load_strict(module: nn.Module, state: Mapping, path, what: str,
                 may_miss: Callable[[str], bool] = lambda k: False,
                 own_keys: list[str] | None = None) -> list[str]:
    """Load ``state`` into ``module`` after checking keys and shapes; returns tolerated misses.

    own_keys: the part of ``module.state_dict()`` the file must cover (default: all of it).
    """
    own = module.state_dict()
    if own_keys is not None:
        own = {k: own[k] for k in own_keys}
    missing = [k for k in own if k not in state and not may_miss(k)]
    tolerated = [k for k in own if k not in state and may_miss(k)]
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" if torch.is_tensor(v)
           else f"{k}: not a tensor ({type(v).__name__})"
           for k, v in state.items()
           if k in own and (not torch.is_tensor(v) or v.shape != own[k].shape)]
    if missing or unexpected or bad:
        parts = [f"{path}: {what} does not match {type(module).__name__}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if bad:
            parts.append(f"wrong shapes ({len(bad)}): {_fmt(bad)}")
        raise CheckpointError("; ".join(parts) + ". It was saved from another network: pass "
                              "the file meant for this role, or the --model / --backbone / "
                              "--bbox_type it was trained with")
    module.load_state_dict(state, strict=own_keys is None and not tolerated)
    return tolerated


def _is_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_metahmr_checkpoint(path: str | os.PathLike, model: nn.Module,
                            model_aux: nn.Module | None = None) -> dict:
    """Load a Meta-HMR checkpoint's ``model`` (and ``model_aux`` if given) strictly.

    Returns the whole checkpoint dict (optimizer and bookkeeping entries included).
    """
    return load_metahmr_state(_read(path, "Meta-HMR checkpoint"), path, model, model_aux)


def load_metahmr_state(ckpt: object, path, model: nn.Module,
                       model_aux: nn.Module | None = None) -> dict:
    """:func:`load_metahmr_checkpoint` of an already read file (``ckpt``, read from ``path``).

    A file of another role (an aux or backbone initialisation, a bare state dict) is refused
    with a message saying what it is and where it goes (:func:`models.checkpoint_kind.describe`).
    """
    from .checkpoint_kind import describe
    what = describe(ckpt)
    if what is not None and model_aux is not None:
        raise CheckpointError(f"{path}: {what}")
    try:   # the main network alone: any file whose 'model' fits it strictly
        _load_strict(model, _strip_prefix(_entry(ckpt, "model", path), "module."), path,
                     "['model'] (main network)")
    except CheckpointError as e:
        if what is not None:
            raise CheckpointError(f"{e}. Note: {what}") from None
        raise
    if model_aux is not None:
        _load_strict(model_aux, _strip_prefix(_entry(ckpt, "model_aux", path), "module."), path,
                     "['model_aux'] (aux network)")
    return ckpt


def load_aux_weights(path: str | os.PathLike, model_aux: nn.Module, model: str = "cliff",
                     backbone: str = "resnet") -> list[str]:
    """Initialise the aux network from the CLIFF / SPIN-HMR checkpoint (upstream key mapping).

    Returns the keys that were allowed to be missing (HMR: the ``init_*`` buffers absent from
    ``hmr.pt``, which keep their mean-parameter values).
    """
    state = _entry(_read(path, f"{model}/{backbone} aux-network checkpoint"), "model", path)
    if model == "cliff" and backbone in ("resnet", "resnet18"):
        state = {k.replace("module.", "").replace("encoder.", ""): v for k, v in state.items()}
        return _load_strict(model_aux, state, path, "CLIFF ResNet checkpoint ['model']")
    if model == "cliff" and backbone == "hrnet":
        state = {k.replace("module.", ""): v for k, v in state.items()}
        return _load_strict(model_aux, state, path, "CLIFF HRNet checkpoint ['model']")
    if model == "hmr" and backbone in ("resnet", "resnet18"):
        return _load_strict(model_aux, _strip_prefix(state, "module."), path,
                            "HMR checkpoint ['model']", may_miss=lambda k: k in INIT_BUFFERS)
    raise ValueError(f"no aux-network checkpoint format for model={model!r}, backbone={backbone!r}")


def load_backbone_weights(path: str | os.PathLike, model: Regressor,
                          backbone: str | None = None) -> list[str]:
    """Initialise the main network's encoder from a pretrained pose backbone; head untouched.

    backbone: 'resnet' | 'resnet18' (``['state_dict']``, ``backbone.`` removed, trunk keys kept)
    or 'hrnet' (plain HRNet-COCO state_dict into ``model.backbone``); default
    ``model.backbone_name``. Returns the tolerated missing keys (see the module docstring).
    """
    backbone = backbone or model.backbone_name
    obj = _read(path, f"pretrained {backbone} backbone")
    if backbone in ("resnet", "resnet18"):
        state = {k.replace("backbone.", ""): v for k, v in _entry(obj, "state_dict", path).items()}
        target, what, trunk = model, f"{backbone} backbone trunk", model.trunk_state_keys()
        state = {k: v for k, v in state.items() if k in set(trunk)}
        if not state:
            raise CheckpointError(f"{path}: no {backbone} trunk key found (expected e.g. "
                                  f"'backbone.conv1.weight' under 'state_dict')")
        may_miss = _is_counter
    elif backbone == "hrnet":
        if not isinstance(obj, Mapping) or not isinstance(getattr(model, "backbone", None),
                                                          nn.Module):
            raise CheckpointError(f"{path}: expected a plain HRNet state_dict and a CLIFF-HRNet "
                                  f"main network (with .backbone)")
        state = {k: v for k, v in obj.items() if k.split(".")[0] in HRNET_TRUNK_PREFIXES}
        if not state:
            raise CheckpointError(f"{path}: no HRNet trunk key (conv1, layer1, stage2, ...) found;"
                                  f" keys must be unprefixed, e.g. 'conv1.weight'")
        target, what = model.backbone, "pose-HRNet trunk"
        trunk = [k for k in target.state_dict() if k.split(".")[0] in HRNET_TRUNK_PREFIXES]
        def may_miss(k: str) -> bool:
            return _is_counter(k) or bool(_COCO_HRNET_ABSENT.match(k))
    else:
        raise ValueError(f"no pretrained-backbone format for {backbone!r}")
    return _load_strict(target, state, path, what, may_miss=may_miss, own_keys=trunk)


# -- weight files in the released formats: the study's exports, the synthetic world's stand-ins --
def resnet_aux_file(net: Regressor) -> dict:
    """``net``'s weights in the CLIFF ResNet aux-checkpoint format that :func:`load_aux_weights`
    reads: ``{'model': {'module.encoder.' + trunk key, 'module.' + head key}}``."""
    trunk = set(net.trunk_state_keys())
    return {"model": {("module.encoder." if k in trunk else "module.") + k: v
                      for k, v in net.state_dict().items()}}


def resnet_backbone_file(net: Regressor) -> dict:
    """``net``'s trunk in the ``pose_resnet.pth`` format that :func:`load_backbone_weights`
    reads: ``{'state_dict': {'backbone.' + trunk key}}``."""
    trunk = set(net.trunk_state_keys())
    return {"state_dict": {"backbone." + k: v for k, v in net.state_dict().items() if k in trunk}}


def _save_atomic(obj: object, path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _seeded(seed: int, fn: Callable[[], Regressor]) -> Regressor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def write_standin_weights(root: str | os.PathLike, backbones=("resnet18", "resnet"), seed: int = 0,
                          mean_params: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write randomly initialised weight files in the released formats under ``root``.

    For each backbone: the main-backbone file (``config.BACKBONE_FILES``) and the aux files
    (``config.AUX_FILES``: CLIFF, and HMR for the ResNets), each from its own seeded network
    (``mean_params`` fills the CLIFF files' ``init_*`` buffers). Files are written atomically.
    Returns {label: path}, labels like 'backbone/resnet', 'aux/cliff/resnet'.
    """
    root, out = Path(root), {}
    for i, bb in enumerate(backbones):
        if bb not in config.BACKBONE_FILES:
            raise ValueError(f"unknown backbone {bb!r}: expected some of "
                             f"{sorted(config.BACKBONE_FILES)}")
        s = seed + 10 * i
        main = _seeded(s, lambda: build_model("cliff", bb, "main"))
        if bb == "hrnet":
            state = {k: v for k, v in main.backbone.state_dict().items()
                     if k.split(".")[0] in HRNET_TRUNK_PREFIXES and not _COCO_HRNET_ABSENT.match(k)}
            gen = torch.Generator().manual_seed(s)   # COCO heatmap layer (17 joints), unused
            state["final_layer.weight"] = torch.randn(17, 48, 1, 1, generator=gen) * 1e-3
            state["final_layer.bias"] = torch.zeros(17)
            bfile = state
        else:
            bfile = resnet_backbone_file(main)
        out[f"backbone/{bb}"] = _save_atomic(bfile, root / config.BACKBONE_FILES[bb])
        del main, bfile

        aux = _seeded(s + 1, lambda: build_model("cliff", bb, "aux", mean_params=mean_params))
        afile = ({"model": {"module." + k: v for k, v in aux.state_dict().items()}}
                 if bb == "hrnet" else resnet_aux_file(aux))
        out[f"aux/cliff/{bb}"] = _save_atomic(afile, root / config.AUX_FILES["cliff", bb])
        del aux, afile

        if ("hmr", bb) in config.AUX_FILES:
            hmr = _seeded(s + 2, lambda: build_model("hmr", bb, "aux"))
            state = {k: v for k, v in hmr.state_dict().items() if k not in INIT_BUFFERS}
            out[f"aux/hmr/{bb}"] = _save_atomic({"model": state},
                                                root / config.AUX_FILES["hmr", bb])
    return out


__all__ = ["CheckpointError", "read_checkpoint", "load_metahmr_checkpoint", "load_metahmr_state",
           "load_aux_weights",
           "load_backbone_weights", "write_standin_weights", "resnet_aux_file",
           "resnet_backbone_file"]
