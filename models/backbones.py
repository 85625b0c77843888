"""Image encoders of the regressors (upstream-behaviour.md §2.1, decisions D9): [B,3,H,W] -> [B,D].

* ResNet-50 / -18 trunks (torchvision modules registered flat on the caller), with adaptive
  average pooling: equal to the released ``AvgPool2d`` at its crop sizes, fine at any size.
  D = 2048 / 512.
* :class:`PoseHRNet`: PARE's pose HRNet-W48 (main CLIFF-HRNet net, ``backbone.*`` keys), timm's
  HRNet trunk modules in the released key order, an unused ``final_layer`` and strided convs
  bringing branches 0-2 to 1/32; concatenated and averaged: D = 48+96+192+384 = 720.
* CLIFF's classification HRNet-W48 encoder (timm ``hrnet_w48``, no classifier; keys = the
  released ``encoder.*`` keys): D = 2048. HRNet needs H and W divisible by 32.
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
    """torchvision's trunk modules (in order) of ResNet-50 ('resnet') or -18, as SPIN/CLIFF."""
    import torchvision
    net = {"resnet": torchvision.models.resnet50, "resnet18": torchvision.models.resnet18}[arch](
        weights=None)
    return OrderedDict((name, getattr(net, name)) for name in RESNET_TRUNK)


def resnet_features(m: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """ResNet trunk registered on ``m``: [B,3,H,W] -> [B, D]."""
    x = m.maxpool(m.relu(m.bn1(m.conv1(img))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def hrnet_w48(**kwargs) -> nn.Module:
    """timm's ``hrnet_w48``; ``num_classes=0``: CLIFF's encoder, [B,3,H,W] -> [B, 2048]."""
    from timm.models.hrnet import HighResolutionNet, cfg_cls
    return HighResolutionNet(cfg_cls["hrnet_w48"], **kwargs)


class PoseHRNet(nn.Module):
    """PARE's pose HRNet-W48 with conv downsampling: img [B, 3, H, W] -> feature [B, 720]."""

    feature_dim = POSE_HRNET_DIM

    def __init__(self) -> None:
        super().__init__()
        timm_net = hrnet_w48(head="features", num_classes=0)   # trunk only, no aggregation head
        for name in HRNET_TRUNK:
            self.add_module(name, getattr(timm_net, name))
        self.final_layer = nn.Conv2d(48, POSE_HRNET_HEATMAPS, 1)
        for i, c in enumerate((48, 96, 192)):   # branch i: 3 - i halvings to 1/32 (keys 0,1,3,4..)
            layers = [m for _ in range(3 - i) for m in (
                nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))]
            self.add_module(f"downsample_stage_{i + 1}", nn.Sequential(*layers))
        for mod in self.modules():   # upstream init: conv weights N(0, 0.001²), biases 0, BN 1/0
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, std=0.001)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """The trunk's 4 maps [B, 48|96|192|384, H/4..H/32, ...] (a new branch comes from the
        previous stage's last one), brought to 1/32, concatenated and averaged."""
        x = F.relu(self.bn1(self.conv1(img)))
        x = self.layer1(F.relu(self.bn2(self.conv2(x))))
        yl = self.stage2([t(x) for t in self.transition1])
        for transition, stage in ((self.transition2, self.stage3), (self.transition3, self.stage4)):
            yl = stage([yl[i] if isinstance(t, nn.Identity) else t(yl[-1])
                        for i, t in enumerate(transition)])
        maps = [self.downsample_stage_1(yl[0]), self.downsample_stage_2(yl[1]),
                self.downsample_stage_3(yl[2]), yl[3]]
        return F.adaptive_avg_pool2d(torch.cat(maps, 1), 1).flatten(1)

