"""CIFAR-style ResNet-(6n+2) (He et al. 2016, section 4.2): ResNet-20, -32, -56, ...

Structure (``width`` multiplies the channel counts 16/32/64)::

    conv1 3x3 (in_channels -> 16w) -> bn1 -> ReLU              # the stem
    stages[0]: n BasicBlocks, 16w channels, stride 1
    stages[1]: n BasicBlocks, 32w channels, block 0 has stride 2
    stages[2]: n BasicBlocks, 64w channels, block 0 has stride 2
    global average pool -> classifier (Linear 64w -> num_classes)

Only block 0 of a stage may change the resolution or the channel count (it then has a 1x1
conv + BN shortcut, "option B"); blocks 1..n-1 of a stage map ``(B, c, h, w)`` to the same
shape, so they can be copied (``copy.deepcopy``), inserted or dropped within their stage
(Elastic LTH) and the network stays valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseprior.models.base import ClassifierModel, as_size, init_weights

STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection.

    ``(B, in_planes, H, W)`` -> ``(B, planes, ceil(H/stride), ceil(W/stride))``. The shortcut is
    the identity when shape is kept, else ``shortcut`` = 1x1 conv (stride) + BN.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()

    @property
    def downsamples(self) -> bool:
        """True when the block changes the shape (and has a conv shortcut)."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def check_resnet_depth(depth: int) -> int:
    """Return ``n`` (blocks per stage) for ``depth = 6n + 2``; ``ValueError`` otherwise."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth!r} is not a CIFAR ResNet depth; allowed: 6n+2 with "
                         f"n >= 1, e.g. 8, 14, 20, 32, 44, 56, 110")
    return (depth - 2) // 6


class ResNet(ClassifierModel):
    """CIFAR-style ResNet-(6n+2) with ``stages: nn.ModuleList`` of 3 ``nn.Sequential`` of
    :class:`BasicBlock` (see the module docstring).

    Input ``(B, in_channels, H, W)`` (built for ``input_size``; any H, W >= 4 works thanks to
    the global pooling: 32x32 -> 32/16/8 per stage, 28x28 -> 28/14/7); output logits
    ``(B, num_classes)``. ResNet-20 with width 1 on 3x32x32, 10 classes: 272,474 parameters
    (0.27M as in the paper; option-B shortcuts add ~3k).
    """

    MIN_SIZE = 4

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10,
                 input_size: int | tuple[int, int] = 32, *, width: float = 1.0,
                 zero_init_residual: bool = False) -> None:
        n = check_resnet_depth(depth)
        h, w = as_size(input_size)
        if min(h, w) < self.MIN_SIZE:
            raise ValueError(f"input_size={input_size!r} is too small for ResNet; "
                             f"allowed: H, W >= {self.MIN_SIZE}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width must be a positive number (channel multiplier), "
                             f"got {width!r}")
        super().__init__(in_channels, (h, w), num_classes)
        self.width = float(width)
        self.stage_channels = tuple(max(1, round(c * width)) for c in STAGE_CHANNELS)
        stem = self.stage_channels[0]
        self.conv1 = nn.Conv2d(self.in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages = []
        prev = stem
        for planes, stride in zip(self.stage_channels, STAGE_STRIDES, strict=True):
            blocks = [BasicBlock(prev, planes, stride)]
            blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = planes
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, self.num_classes)
        init_weights(self)
        if zero_init_residual:
            for block in self.blocks():
                nn.init.zeros_(block.bn2.weight)

    @property
    def blocks_per_stage(self) -> list[int]:
        """Current number of blocks in each stage, e.g. ``[3, 3, 3]`` for ResNet-20."""
        return [len(stage) for stage in self.stages]

    @property
    def depth(self) -> int:
        """Weighted layers now: ``2 * (blocks in all stages) + 2`` (stem conv + classifier)."""
        return 2 * sum(self.blocks_per_stage) + 2

    def blocks(self) -> list[BasicBlock]:
        """All blocks, stage by stage."""
        return [block for stage in self.stages for block in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        self._check_image(x, exact=False)
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            out = stage(out)
        return self.classifier(self.pool(out).flatten(1))


def resnet(depth: int = 20, in_channels: int = 3, num_classes: int = 10,
           input_size: int | tuple[int, int] = 32, *, width: float = 1.0,
           zero_init_residual: bool = False) -> ResNet:
    """ResNet-``depth`` (``depth = 6n + 2``)."""
    return ResNet(depth, in_channels, num_classes, input_size, width=width,
                  zero_init_residual=zero_init_residual)
