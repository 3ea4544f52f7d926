"""VGG-style networks with BatchNorm, global average pooling and one linear classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparseprior.models.base import ClassifierModel, as_size, init_weights

#: Layer lists: an int is a 3x3 conv (pad 1) + BN + ReLU with that many channels; "M" is a
#: 2x2 max pool. "small" fits 28x28 (-> 3x3) and 32x32 (-> 4x4) inputs.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "small": [64, "M", 128, "M", 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


def _check_cfg(cfg: Sequence[int | str]) -> list[int | str]:
    if isinstance(cfg, (str, bytes)) or not isinstance(cfg, Sequence) or not cfg:
        raise ValueError(f"cfg must be a non-empty list of channel counts and 'M', got {cfg!r}")
    out: list[int | str] = []
    for item in cfg:
        if item == "M":
            out.append("M")
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            out.append(item)
        else:
            raise ValueError(f"cfg entries must be positive ints or 'M', got {item!r} in {cfg}")
    if not any(isinstance(i, int) for i in out):
        raise ValueError(f"cfg must contain at least one conv layer (an int), got {cfg}")
    return out


class VGG(ClassifierModel):
    """VGG with BatchNorm.

    ``features``: for each int ``c`` in ``cfg`` a Conv2d 3x3 pad 1 (no bias) -> BN -> ReLU with
    ``round(c * width)`` channels; for each ``"M"`` a 2x2 max pool. Then global average pooling
    and ``classifier`` (Linear last_channels -> num_classes).

    Input ``(B, in_channels, H, W)`` with H, W >= 2 ** (number of "M"); output logits
    ``(B, num_classes)``.
    """

    def __init__(self, cfg: Sequence[int | str] | str = "small", in_channels: int = 3,
                 num_classes: int = 10, input_size: int | tuple[int, int] = 32, *,
                 width: float = 1.0) -> None:
        if isinstance(cfg, str):
            if cfg not in VGG_CONFIGS:
                raise ValueError(f"cfg={cfg!r} is unknown; allowed: {sorted(VGG_CONFIGS)} or a "
                                 f"list such as [64, 'M', 128, 'M']")
            cfg = VGG_CONFIGS[cfg]
        layer_cfg = _check_cfg(cfg)
        h, w = as_size(input_size)
        min_size = 2 ** layer_cfg.count("M")
        if min(h, w) < min_size:
            raise ValueError(f"input_size={input_size!r} is too small for this VGG with "
                             f"{layer_cfg.count('M')} pools; allowed: H, W >= {min_size}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width must be a positive number (channel multiplier), "
                             f"got {width!r}")
        super().__init__(in_channels, (h, w), num_classes)
        self.cfg = layer_cfg
        layers: list[nn.Module] = []
        prev = self.in_channels
        for item in self.cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = max(1, round(int(item) * width))
                layers += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, self.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        self._check_image(x, exact=False)
        return self.classifier(self.pool(self.features(x)).flatten(1))
