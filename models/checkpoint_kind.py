"""What a weight file is, from its keys and shapes (issue #13 point 7).

Evaluation and the demo need a Meta-HMR checkpoint (``{'model', 'model_aux', ...}``). Users
also hold the other files of the seed README's layout, which look alike on disk; given one of
those, the scripts say what it is and where it goes instead of listing missing keys.
Recognised (reference/checkpoint_layout.md §1-3, key lists reference/state_dict/*.tsv):

* a Meta-HMR checkpoint: the network family from the head's input width (``fc1.weight``
  ``[1024, feat + 160]`` CLIFF: feature + 3 bbox_info + 144 pose6d + 10 betas + 3 cam;
  ``feat + 157`` HMR) and the backbone from the trunk keys (``backbone.stage4.*`` pose HRNet-W48,
  720-d; ``layer4.0.conv3.*`` ResNet-50 bottlenecks, 2048-d; ``layer4.0.conv2.*`` without
  ``conv3`` ResNet-18, 512-d). Files written by train.py also record their ``options``;
* the aux-network initialisations: CLIFF ResNet-50 (``['model']``, ``module.encoder.`` ResNet
  keys: ``res50-…pt``), CLIFF HRNet-W48 (``['model']``, ``module.encoder.`` HRNet keys:
  ``hr48-…pt``), SPIN's HMR (``['model']``, flat ResNet keys, head 2205 wide: ``hmr.pt``);
* the main-backbone initialisations: ``pose_resnet.pth`` (``['state_dict']``, ``backbone.``
  keys) and ``pose_hrnet_w48_256x192.pth`` (a plain HRNet state dict);
* a single network's bare state dict (``fc1.weight`` at the top level).
"""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["network_of", "describe", "metahmr_network"]

_FEATURE = {"resnet": 2048, "resnet18": 512, "hrnet": 720}
_HEAD_EXTRA = {160: "cliff", 157: "hmr"}
_NAMES = {"cliff": "CLIFF", "hmr": "HMR", "resnet": "ResNet-50", "resnet18": "ResNet-18",
          "hrnet": "HRNet-W48"}


def _strip(state: Mapping) -> dict:
    return {(k[7:] if isinstance(k, str) and k.startswith("module.") else k): v
            for k, v in state.items()}


def _backbone(keys: set) -> str | None:
    if any(k.startswith(("backbone.stage4.", "encoder.stage4.", "stage4.")) for k in keys):
        return "hrnet"
    for pre in ("", "encoder.", "backbone."):
        if f"{pre}layer4.0.conv3.weight" in keys:
            return "resnet"
        if f"{pre}layer4.0.conv2.weight" in keys:
            return "resnet18"
    return None


def network_of(state: Mapping) -> dict | None:
    """{'model': 'cliff'|'hmr'|None, 'backbone': ...} of one network's state dict, from its
    keys (``module.`` removed) and head width; None when it holds no known trunk."""
    if not isinstance(state, Mapping):
        return None
    state = _strip(state)
    keys = {k for k in state if isinstance(k, str)}
    bb = _backbone(keys)
    if bb is None:
        return None
    fc1 = state.get("fc1.weight")
    shape = tuple(getattr(fc1, "shape", ()))
    feat = 2048 if bb == "hrnet" and any(k.startswith("encoder.") for k in keys) \
        else _FEATURE[bb]
    model = _HEAD_EXTRA.get(shape[1] - feat) if len(shape) == 2 else None
    return {"model": model, "backbone": bb, "encoder": any(k.startswith("encoder.") for k in keys)}


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
    if isinstance(obj.get("model"), Mapping) and "model_aux" not in obj:
        net = network_of(obj["model"])
        if net is not None:
            if net["model"] == "cliff" and net["encoder"]:
                src = "res50-…" if net["backbone"] == "resnet" else \
                    "hr48-…" if net["backbone"] == "hrnet" else "cliff_res18"
                return (f"this is a CLIFF {_NAMES[net['backbone']]} auxiliary checkpoint "
                        f"({src}), not a Meta-HMR training checkpoint; pass it as "
                        f"--aux_checkpoint to train.py")
            if net["model"] == "hmr":
                return (f"this is an HMR {_NAMES[net['backbone']]} auxiliary checkpoint "
                        f"(SPIN's hmr.pt), not a Meta-HMR training checkpoint; pass it as "
                        f"--aux_checkpoint to train.py --model hmr")
            return (f"this holds one {_label(net)} network under 'model' but no 'model_aux': "
                    f"not a Meta-HMR checkpoint (which holds both networks)")
    if isinstance(obj.get("state_dict"), Mapping):
        state = {k.replace("backbone.", ""): v for k, v in obj["state_dict"].items()
                 if isinstance(k, str)}
        bb = _backbone(set(state))
        if bb is not None and "fc1.weight" not in state:
            return (f"this is a pretrained {_NAMES[bb]} backbone (pose_resnet.pth), not a "
                    f"Meta-HMR training checkpoint; pass it as --backbone_checkpoint to train.py")
    keys = {k for k in obj if isinstance(k, str)}
    bb = _backbone(keys)
    if bb == "hrnet" and "fc1.weight" not in keys and "conv1.weight" in keys:
        return ("this is a pretrained HRNet-W48 pose backbone (pose_hrnet_w48_256x192.pth), not "
                "a Meta-HMR training checkpoint; pass it as --backbone_checkpoint to train.py")
    if bb is not None:
        net = network_of(obj)
        return (f"this is the bare state dict of one {_label(net)} network, not a Meta-HMR "
                f"checkpoint (a dict with 'model' and 'model_aux' written by train.py)")
    return None
