"""The released weight-file formats (reference/checkpoint_layout.md §1-3, keys in
reference/state_dict/*.tsv) and what a given file is, from its keys and shapes.

Networks are told by their trunk (``stage4.*`` HRNet-W48: pose 720-d, classification under
``encoder.`` 2048-d; ``layer4.0.conv3`` ResNet-50 2048-d; ``layer4.0.conv2`` ResNet-18 512-d) and
head width (``fc1.weight`` [1024, D + 160] CLIFF: 3 bbox_info + 144 pose6d + 10 betas + 3 cam;
D + 157 HMR).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["FORMATS", "Format", "rename", "network_of", "describe", "metahmr_network"]


class Format(NamedTuple):
    entry: str | None   # the file's key holding the state dict (None: the file is one)
    drop: tuple         # substrings removed from every key, in order ('^x': a leading x only)
    what: str           # the file's name in error messages
    source: str = ""    # the released file


_CLIFF_RES = ("model", ("module.", "encoder."), "CLIFF ResNet checkpoint ['model']")
_RESNETS = ("resnet", "resnet18")
FORMATS = {   # role -> Format; models.checkpoints loads by it, describe() names misplaced files
    "metahmr": Format("model", ("^module.",), "['model'] (main network)"),
    "metahmr_aux": Format("model_aux", ("^module.",), "['model_aux'] (aux network)"),
    ("aux", "cliff", "resnet"): Format(*_CLIFF_RES, "res50-…"),
    ("aux", "cliff", "resnet18"): Format(*_CLIFF_RES, "cliff_res18"),
    ("aux", "cliff", "hrnet"): Format("model", ("module.",), "CLIFF HRNet checkpoint ['model']",
                                      "hr48-…"),
    **{("aux", "hmr", bb): Format("model", ("^module.",), "HMR checkpoint ['model']",
                                  "SPIN's hmr.pt") for bb in _RESNETS},
    **{("backbone", bb): Format("state_dict", ("backbone.",), f"{bb} backbone trunk",
                                "pose_resnet.pth") for bb in _RESNETS},
    ("backbone", "hrnet"): Format(None, (), "pose-HRNet trunk", "pose_hrnet_w48_256x192.pth"),
}
_FEATURE = {"resnet": 2048, "resnet18": 512, "hrnet": 720}
_HEAD_EXTRA = {160: "cliff", 157: "hmr"}
_NAMES = {"cliff": "CLIFF", "hmr": "HMR", "resnet": "ResNet-50", "resnet18": "ResNet-18",
          "hrnet": "HRNet-W48"}
_PASS_AS = "this is {} ({}), not a Meta-HMR training checkpoint; pass it as {} to train.py"


def rename(state: Mapping, drop: tuple) -> dict:
    """``state`` with the substrings ``drop`` removed from its (str) keys ('^x': leading x)."""
    out = {}
    for k, v in state.items():
        for d in drop if isinstance(k, str) else ():
            k = k.removeprefix(d[1:]) if d[0] == "^" else k.replace(d, "")
        out[k] = v
    return out


def _backbone(keys: set) -> str | None:
    if any(k.startswith(("backbone.stage4.", "encoder.stage4.", "stage4.")) for k in keys):
        return "hrnet"
    for key, bb in (("conv3", "resnet"), ("conv2", "resnet18")):   # ResNet-50 has a conv2 too
        if any(f"{pre}layer4.0.{key}.weight" in keys for pre in ("", "encoder.", "backbone.")):
            return bb
    return None


def network_of(state: Mapping) -> dict | None:
    """{'model': 'cliff'|'hmr'|None, 'backbone', 'encoder': bool} of one network's state dict
    (``module.`` removed); None when it holds no known trunk."""
    if not isinstance(state, Mapping):
        return None
    state = rename(state, ("^module.",))
    keys = {k for k in state if isinstance(k, str)}
    if (bb := _backbone(keys)) is None:
        return None
    enc = any(k.startswith("encoder.") for k in keys)
    shape = tuple(getattr(state.get("fc1.weight"), "shape", ()))
    feat = 2048 if bb == "hrnet" and enc else _FEATURE[bb]
    return {"model": _HEAD_EXTRA.get(shape[1] - feat) if len(shape) == 2 else None,
            "backbone": bb, "encoder": enc}


def _label(net: dict) -> str:
    return f"{_NAMES.get(net['model'], 'unknown-head')} {_NAMES[net['backbone']]}"


def metahmr_network(obj: object) -> dict | None:
    """{'model', 'backbone'} of a Meta-HMR checkpoint's main network (None if not one)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) \
            and isinstance(obj.get("model_aux"), Mapping):
        return network_of(obj["model"])
    return None


def describe(obj: object) -> str | None:
    """One sentence saying what a file that is NOT a Meta-HMR checkpoint is and where it goes;
    None for a Meta-HMR checkpoint (or nothing recognisable)."""
    if not isinstance(obj, Mapping) or metahmr_network(obj) is not None:
        return None
    if isinstance(obj.get("model"), Mapping) and "model_aux" not in obj \
            and (net := network_of(obj["model"])) is not None:
        name, bb = _NAMES[net["backbone"]], net["backbone"]
        if net["model"] == "cliff" and net["encoder"]:
            return _PASS_AS.format(f"a CLIFF {name} auxiliary checkpoint",
                                   FORMATS["aux", "cliff", bb].source, "--aux_checkpoint")
        if net["model"] == "hmr":
            return _PASS_AS.format(f"an HMR {name} auxiliary checkpoint",
                                   FORMATS["aux", "hmr", "resnet"].source,
                                   "--aux_checkpoint") + " --model hmr"
        return (f"this holds one {_label(net)} network under 'model' but no 'model_aux': "
                f"not a Meta-HMR checkpoint (which holds both networks)")
    if isinstance(obj.get("state_dict"), Mapping):
        keys = {k for k in rename(obj["state_dict"], FORMATS["backbone", "resnet"].drop)
                if isinstance(k, str)}
        if (bb := _backbone(keys)) is not None and "fc1.weight" not in keys:
            return _PASS_AS.format(f"a pretrained {_NAMES[bb]} backbone",
                                   FORMATS["backbone", bb].source, "--backbone_checkpoint")
    keys = {k for k in obj if isinstance(k, str)}
    bb = _backbone(keys)
    if bb == "hrnet" and "fc1.weight" not in keys and "conv1.weight" in keys:
        return _PASS_AS.format("a pretrained HRNet-W48 pose backbone",
                               FORMATS["backbone", "hrnet"].source, "--backbone_checkpoint")
    if bb is not None:
        return (f"this is the bare state dict of one {_label(network_of(obj))} network, not a "
                f"Meta-HMR checkpoint (a dict with 'model' and 'model_aux' written by train.py)")
    return None
