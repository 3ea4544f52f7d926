"""Fully connected networks: a configurable MLP and LeNet-300-100."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparseprior.common.validation import check_positive_int
from sparseprior.models.base import ClassifierModel, as_size, init_weights


class MLP(ClassifierModel):
    """Multi-layer perceptron ``input_dim -> hidden[0] -> ... -> num_classes`` with ReLU.

    The input is flattened inside: ``x`` of shape ``(B, *input_shape)`` (any shape whose
    non-batch size is ``input_dim``, e.g. ``(B, 1, 28, 28)`` or ``(B, 784)``) gives logits
    ``(B, num_classes)``. Hidden layers are ``features.0, features.2, ...``; the output layer
    is ``classifier``.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, *,
                 input_shape: tuple[int, int, int] | None = None) -> None:
        input_dim = check_positive_int(input_dim, "input_dim")
        if input_shape is None:
            c, size = 1, (1, input_dim)
        else:
            if len(input_shape) != 3 or math.prod(input_shape) != input_dim:
                raise ValueError(f"input_shape {input_shape} must be (C, H, W) with "
                                 f"C*H*W == input_dim={input_dim}")
            c, size = input_shape[0], (input_shape[1], input_shape[2])
        super().__init__(c, size, num_classes)
        if input_shape is None:
            self.input_shape = (input_dim,)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a list of layer widths, got {hidden!r}")
        self.hidden = [check_positive_int(h, "hidden[i]") for h in hidden]
        self.input_dim = input_dim
        layers: list[nn.Module] = []
        prev = input_dim
        for width in self.hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, self.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *input_shape)`` -> logits ``(B, num_classes)``."""
        if isinstance(x, torch.Tensor) and not torch.jit.is_tracing() and (
                x.dim() < 2 or x[0].numel() != self.input_dim):
            raise ValueError(f"MLP expects input x of shape (batch, ...) with {self.input_dim} "
                             f"values per example, got {tuple(x.shape)}")
        return self.classifier(self.features(x.flatten(1)))


def lenet_300_100(in_channels: int = 1, num_classes: int = 10,
                  input_size: int | tuple[int, int] = 28) -> MLP:
    """LeNet-300-100: ``784 -> 300 -> 100 -> 10`` for 1x28x28 input (266,610 parameters)."""
    shape = (check_positive_int(in_channels, "in_channels"), *as_size(input_size))
    return MLP(math.prod(shape), [300, 100], num_classes, input_shape=shape)
