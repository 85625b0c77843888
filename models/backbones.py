"""Image encoders of the regressors (upstream-behaviour.md §2.1, decisions D9).

* ResNet-50 / ResNet-18 trunks: torchvision's modules (conv1, bn1, relu, maxpool, layer1..4),
  registered flat on the caller (the released ResNet nets have no ``backbone.`` prefix), with
  adaptive average pooling: at the released crop sizes (224² -> 7×7 map, 256×192 -> 8×6 map) it
  equals the released ``AvgPool2d(7)`` / ``AvgPool2d((8, 6))``, and it works for any crop size.
* :class:`PoseHRNet`: the PARE-style pose HRNet-W48 of the CLIFF-HRNet main network: the standard
  HRNet trunk (stem, layer1, transitions, stages 2-4 with multi-scale output everywhere), the
  unused 24-channel ``final_layer``, and ``downsample_stage_{1,2,3}`` (3, 2, 1 strided 3×3
  conv+BN+ReLU) that bring branches 0-2 to 1/32 resolution; the four maps are concatenated
  (48+96+192+384 = 720 channels) and averaged -> [B, 720]. The trunk modules are timm's HRNet
  modules (same design, same key names), re-registered here so that the key order and names are
  those of the released ``backbone.*`` keys.
* :func:`cls_hrnet_w48`: the classification HRNet-W48 of the CLIFF-HRNet aux network (CLIFF's
  encoder): timm's ``HighResolutionNet`` with the classification head and no classifier, whose
  ``state_dict`` keys are exactly the released ``encoder.*`` keys; output [B, 2048].

Every encoder maps an image batch [B, 3, H, W] to a feature batch [B, D]. HRNet needs H and W
divisible by 32 (the branch maps must upsample back exactly).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
RESNET_DIMS = {"resnet": 2048, "resnet18": 512}
HRNET_TRUNK = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2",
               "stage3", "transition3", "stage4")
POSE_HRNET_DIM = 48 + 96 + 192 + 384   # 720
CLS_HRNET_DIM = 2048
POSE_HRNET_HEATMAPS = 24               # channels of the (unused) final_layer of the released net


def resnet_trunk(arch: str) -> "OrderedDict[str, nn.Module]":
    """torchvision ResNet trunk modules, by name, for ``arch`` in {'resnet' (50), 'resnet18'}.

    The caller registers them (``add_module``) in this order; keys then read ``conv1.weight``,
    ``layer1.0.downsample.0.weight`` etc. (Bottleneck stride on conv2, as SPIN/CLIFF).
    """
    import torchvision

    ctors = {"resnet": torchvision.models.resnet50, "resnet18": torchvision.models.resnet18}
    if arch not in ctors:
        raise ValueError(f"unknown ResNet backbone {arch!r}: expected one of {sorted(ctors)}")
    net = ctors[arch](weights=None)
    return OrderedDict((name, getattr(net, name)) for name in RESNET_TRUNK)


def resnet_features(m: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """ResNet trunk registered on ``m`` (see :func:`resnet_trunk`): [B,3,H,W] -> [B, D]."""
    x = m.maxpool(m.relu(m.bn1(m.conv1(img))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _hrnet_w48(**kwargs) -> nn.Module:
    """timm's HRNet-W48 (same stage configuration for the pose and the classification nets)."""
    from timm.models.hrnet import HighResolutionNet, cfg_cls

    return HighResolutionNet(cfg_cls["hrnet_w48"], **kwargs)


def hrnet_stages(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """HRNet trunk registered on ``m`` (names :data:`HRNET_TRUNK`): [B,3,H,W] -> branch maps.

    Returns 4 maps [B, 48|96|192|384, H/4|H/8|H/16|H/32, ...]. A new branch is made from the last
    branch of the previous stage; existing branches pass through their transition (if any).
    """
    x = F.relu(m.bn1(m.conv1(x)))
    x = F.relu(m.bn2(m.conv2(x)))
    x = m.layer1(x)
    xl = [t(x) for t in m.transition1]
    yl = m.stage2(xl)
    for transition, stage in ((m.transition2, m.stage3), (m.transition3, m.stage4)):
        xl = [yl[i] if isinstance(t, nn.Identity) else t(yl[-1]) for i, t in enumerate(transition)]
        yl = stage(xl)
    return yl


def _conv_bn_relu_chain(channels: int, n: int) -> nn.Sequential:
    """n × [3×3 stride-2 conv (no bias), BN, ReLU], constant channels (keys 0, 1, 3, 4, ...)."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(channels, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PoseHRNet(nn.Module):
    """PARE's pose HRNet-W48 with conv downsampling to a 720-d feature (main CLIFF-HRNet net).

    forward: img [B, 3, H, W] (H, W multiples of 32) -> feature [B, 720].
    """

    feature_dim = POSE_HRNET_DIM

    def __init__(self) -> None:
        super().__init__()
        timm_net = _hrnet_w48(head="features", num_classes=0)   # trunk only, no aggregation head
        for name in HRNET_TRUNK:
            self.add_module(name, getattr(timm_net, name))
        widths = (48, 96, 192)
        self.final_layer = nn.Conv2d(widths[0], POSE_HRNET_HEATMAPS, 1)
        for i, c in enumerate(widths):          # branch i needs 3 - i halvings to reach 1/32
            self.add_module(f"downsample_stage_{i + 1}", _conv_bn_relu_chain(c, 3 - i))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream pose-HRNet init: conv weights N(0, 0.001²), conv biases 0, BN 1/0."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, std=0.001)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        yl = hrnet_stages(self, img)
        maps = [self.downsample_stage_1(yl[0]), self.downsample_stage_2(yl[1]),
                self.downsample_stage_3(yl[2]), yl[3]]
        return F.adaptive_avg_pool2d(torch.cat(maps, 1), 1).flatten(1)


def cls_hrnet_w48() -> nn.Module:
    """Classification HRNet-W48 without classifier (CLIFF's encoder): [B,3,H,W] -> [B, 2048].

    incre Bottlenecks to 128/256/512/1024, strided conv+BN+ReLU downsampling sums, a 1×1 conv to
    2048 + BN + ReLU, then global average pooling (timm ``hrnet_w48``, ``num_classes=0``).
    """
    return _hrnet_w48(num_classes=0)
