"""LeNet-5 (convolutional)."""

from __future__ import annotations

import torch
from torch import nn

from sparseprior.models.base import ClassifierModel, as_size, init_weights


def _lenet5_feature_size(size: int) -> int:
    # conv 5x5 pad 2 keeps size; pool /2; conv 5x5 no pad -4; pool /2
    return (size // 2 - 4) // 2


class LeNet5(ClassifierModel):
    """LeNet-5 with ReLU and max pooling.

    ``conv1`` 6@5x5 pad 2 -> ReLU -> maxpool 2 -> ``conv2`` 16@5x5 -> ReLU -> maxpool 2 ->
    fc 120 -> ReLU -> fc 84 -> ReLU -> ``classifier`` (num_classes).

    Input ``(B, in_channels, H, W)`` with exactly the ``input_size`` it was built for (the
    first fc layer's size depends on it; H, W >= 12); output logits ``(B, num_classes)``.
    For 1x28x28 the flattened features are 16x5x5 = 400 (61,706 parameters with 10 classes).
    Modules: ``features.0`` (conv1), ``features.3`` (conv2), ``fc.0``, ``fc.2``, ``classifier``.
    """

    MIN_SIZE = 12

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 input_size: int | tuple[int, int] = 28) -> None:
        h, w = as_size(input_size)
        if min(h, w) < self.MIN_SIZE:
            raise ValueError(f"input_size={input_size!r} is too small for LeNet-5; "
                             f"allowed: H, W >= {self.MIN_SIZE}")
        super().__init__(in_channels, (h, w), num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = 16 * _lenet5_feature_size(h) * _lenet5_feature_size(w)
        self.fc = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(84, self.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        self._check_image(x, exact=True)
        return self.classifier(self.fc(self.features(x).flatten(1)))
