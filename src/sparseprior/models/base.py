"""Shared pieces of the reference models: the base class, input checks and weight init."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from sparseprior.common.validation import check_positive_int


def as_size(input_size: int | tuple[int, int] | list[int], name: str = "input_size"
            ) -> tuple[int, int]:
    """Turn ``28`` or ``(28, 28)`` into ``(H, W)``; ``ValueError`` when not positive ints."""
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2:
            raise ValueError(f"{name} must be an int or (H, W), got {input_size!r}")
        h, w = input_size
    else:
        h = w = input_size
    try:
        return check_positive_int(h, name), check_positive_int(w, name)
    except TypeError as err:
        raise ValueError(f"{name} must be a positive int or (H, W), got {input_size!r}") from err


@torch.no_grad()
def forward_with_hooks(model: nn.Module, example_input: torch.Tensor,
                       hook: Callable[[nn.Module, Any, torch.Tensor], None],
                       modules: Callable[[nn.Module], bool]) -> None:
    """One eval-mode forward pass of ``example_input`` with ``hook`` on every module for which
    ``modules(m)`` is true; hooks are removed and the train/eval mode restored afterwards."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if modules(m)]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights and zero biases for every ``Conv2d`` and
    ``Linear``; weight 1 and bias 0 for every BatchNorm (the init used by open_lth)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ClassifierModel(nn.Module):
    """Base class of the reference image classifiers.

    Attributes:
        output_layer_name: name (as in ``named_modules()``) of the final ``nn.Linear`` that
            produces the logits; always ``"classifier"`` here.
        input_shape: the ``(C, H, W)`` the model was built for.
        num_classes: number of logits.
    """

    output_layer_name: ClassVar[str] = "classifier"

    def __init__(self, in_channels: int, input_size: int | tuple[int, int], num_classes: int
                 ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.input_size = as_size(input_size)
        self.input_shape: tuple[int, ...] = (self.in_channels, *self.input_size)

    @property
    def output_layer(self) -> nn.Linear:
        """The final classifier layer (``self.get_submodule(self.output_layer_name)``)."""
        return self.get_submodule(self.output_layer_name)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """Zeros of shape ``(batch_size, *input_shape)`` on the model's device."""
        p = next(self.parameters())
        return torch.zeros(batch_size, *self.input_shape, device=p.device, dtype=p.dtype)

    def _check_image(self, x: torch.Tensor, exact: bool) -> None:
        """Check ``x`` is ``(B, C, H, W)`` with this model's ``C`` (and ``H, W`` if ``exact``).
        Skipped while tracing (JIT / FX), where shapes are symbolic."""
        if not isinstance(x, torch.Tensor) or torch.jit.is_tracing():
            return
        ok = x.dim() == 4 and x.shape[1] == self.in_channels
        if exact:
            ok = ok and tuple(x.shape[2:]) == self.input_size
        if not ok:
            want = f"(batch, {', '.join(map(str, self.input_shape))})" if exact else \
                f"(batch, {self.in_channels}, H, W)"
            raise ValueError(f"{type(self).__name__} expects input x of shape {want}, "
                             f"got {tuple(x.shape)}")
