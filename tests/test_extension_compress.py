"""Extension points of the compression pillar, used as a researcher would: a new compression step
(with its own options class) and a new layer type are defined in THIS file only, registered,
and run end to end through the public API (``compress_``, ``pack``/``unpack``, ONNX export)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sparseprior.common.config import Config
from sparseprior.compress import (
    STEPS,
    Recipe,
    StepState,
    compress_,
    deployable_copy,
    pack,
    register_layer,
    register_step,
    unpack,
)
from sparseprior.compress.layers import unregister_layer
from sparseprior.models import build_model

BUILD = {"in_channels": 1, "num_classes": 4, "input_size": (8, 8), "hidden": [24, 12]}


# --------------------------------------------------------------------------- a new step


@dataclasses.dataclass
class ShareConfig(Config):
    """Weight sharing (Deep Compression): per layer, the non-zero weights are clustered into
    ``clusters`` values by 1-D k-means; zeros stay exactly zero.

    Attributes:
        clusters: shared values per layer (>= 1).
        iterations: Lloyd iterations.
    """

    clusters: int = 8
    iterations: int = 10

    def validate(self) -> None:
        if not isinstance(self.clusters, int) or self.clusters < 1:
            raise ValueError(f"clusters must be an integer >= 1, got {self.clusters!r}")


@torch.no_grad()
def share_weights_(weight: Tensor, config: ShareConfig) -> int:
    """Replace the non-zeros of ``weight`` by their k-means centroid (in place); returns the
    number of distinct non-zero values."""
    nz = weight != 0
    values = weight[nz]
    centroids = torch.quantile(values, torch.linspace(0, 1, config.clusters))
    for _ in range(config.iterations):
        assign = (values[:, None] - centroids[None]).abs().argmin(1)
        for k in range(config.clusters):
            if bool((assign == k).any()):
                centroids[k] = values[assign == k].mean()
    assign = (values[:, None] - centroids[None]).abs().argmin(1)
    weight[nz] = centroids[assign]
    return int(torch.unique(weight[nz]).numel())


def share_step(state: StepState, config: ShareConfig) -> dict[str, Any]:
    values = {name: share_weights_(m.weight, config) for name, m in state.model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))}
    return {"distinct_values": values}


# --------------------------------------------------------------------------- a new layer type


class ScaledLinear(nn.Module):
    """``x -> (x @ W^T) * scale + bias``: a linear layer with a per-output scale kept apart."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.scale = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight) * self.scale + self.bias


@torch.no_grad()
def densify_scaled(m: ScaledLinear) -> nn.Linear:
    dense = nn.Linear(m.in_features, m.out_features)
    dense.weight.copy_(m.weight * m.scale[:, None])
    dense.bias.copy_(m.bias)
    return dense


@dataclasses.dataclass
class FactorScaleConfig(Config):
    """Pull each row's L2 norm out of the hidden linear layers into a separate scale."""


@torch.no_grad()
def factor_scale_step(state: StepState, config: FactorScaleConfig) -> dict[str, Any]:
    replaced = []
    for name, m in list(state.model.named_modules()):
        if type(m) is nn.Linear and name.startswith("features"):
            new = ScaledLinear(m.in_features, m.out_features)
            norms = m.weight.norm(dim=1).clamp_min(1e-12)
            new.weight.copy_(m.weight / norms[:, None])
            new.scale.copy_(norms)
            new.bias.copy_(m.bias)
            state.model.set_submodule(name, new)
            replaced.append(name)
    state.masks = None  # the structure changed
    return {"replaced": replaced}


@pytest.fixture
def registered():
    register_step("share", ShareConfig, summary="k-means weight sharing")(share_step)
    register_step("factor_scale", FactorScaleConfig)(factor_scale_step)
    register_layer("ScaledLinear", ScaledLinear,
                   describe=lambda m: {"in": m.in_features, "out": m.out_features},
                   build=lambda s: ScaledLinear(s["in"], s["out"]),
                   densify=densify_scaled,
                   dense_weight=lambda m: m.weight * m.scale[:, None])
    yield
    STEPS.unregister("share")
    STEPS.unregister("factor_scale")
    unregister_layer("ScaledLinear")


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(128, 1, 8, 8, generator=g),
                         torch.randint(0, 4, (128,), generator=g))


def test_new_step_runs_end_to_end(registered, tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", **BUILD)
    data = _data()
    recipe = Recipe(train={"batch_size": 32, "seed": 0}, steps=[
        {"kind": "prune", "options": {"sparsity": 0.5}},
        {"kind": "share", "options": {"clusters": 4}, "epochs": 0}])
    result = compress_(model, recipe, train_set=data, test_set=data, model_name="mlp",
                       build=BUILD, run_dir=tmp_path, latency_rounds=0)
    assert [r.kind for r in result.reports] == ["original", "prune", "share"]
    shared = result.reports[-1]
    assert all(v <= 4 for v in shared.details["distinct_values"].values())
    assert shared.nonzero == result.reports[1].nonzero  # zeros kept exactly
    for m in result.model.modules():
        if isinstance(m, nn.Linear):
            assert torch.unique(m.weight[m.weight != 0]).numel() <= 4
    assert (tmp_path / "step_2.sppk").stat().st_size == shared.packed_bytes


def test_new_step_options_are_validated(registered):
    with pytest.raises(ValueError, match="clusters"):
        Recipe(steps=[{"kind": "share", "options": {"clusters": 0}}])
    with pytest.raises(ValueError, match="unknown field"):
        Recipe(steps=[{"kind": "share", "options": {"k": 3}}])
    with pytest.raises(ValueError, match="share"):  # already registered: no silent override
        register_step("share", ShareConfig)(share_step)


def test_unregistered_step_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown step kind 'share'; choose from .*prune"):
        Recipe(steps=[{"kind": "share"}])


def test_new_layer_type_packs_unpacks_and_exports(registered, tmp_path):
    torch.manual_seed(1)
    model = build_model("mlp", **BUILD)
    data = _data()
    recipe = Recipe(train={"batch_size": 32, "seed": 0},
                    steps=[{"kind": "factor_scale", "epochs": 1}])
    result = compress_(model, recipe, train_set=data, test_set=data, model_name="mlp",
                       build=BUILD, latency_rounds=0)
    small = result.model.eval()
    assert isinstance(small.features[0], ScaledLinear)
    assert result.reports[-1].macs == result.reports[0].macs  # counted through dense_weight
    info = pack(small, tmp_path / "m.sppk", model_name="mlp", build=BUILD)
    back = unpack(info.path)
    assert isinstance(back.features[0], ScaledLinear)
    x = data.tensors[0][:16]
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
        plain = deployable_copy(small)
        assert not any(isinstance(m, ScaledLinear) for m in plain.modules())
        assert torch.allclose(plain(x), small(x), atol=1e-5)
