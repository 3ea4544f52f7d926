"""Sparse-aware initialisation: each unit's kept weights scaled by sqrt(fan_in / kept)."""

from __future__ import annotations

import pytest
import torch

from sparseprior.sparsity import SPARSE_INITS, kept_fan_in_scale, rescale_to_kept_fan_in


def test_scale_per_unit_known_mask():
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    assert kept_fan_in_scale(mask).tolist() == pytest.approx([1.0, 2.0, 1.0, 2 ** 0.5])


def test_rescale_conv_zeroes_masked_and_scales_kept():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 2, 2, 2, generator=g) < 0.5
    mask[0] = True
    weights = {"conv.weight": torch.ones(3, 2, 2, 2), "conv.bias": torch.ones(3)}
    out = rescale_to_kept_fan_in(weights, {"conv.weight": mask})
    w = out["conv.weight"]
    assert bool((w[~mask] == 0).all())
    for unit in range(3):
        kept = int(mask[unit].sum())
        assert torch.allclose(w[unit][mask[unit]], torch.full((kept,), (8 / kept) ** 0.5))
    assert out["conv.bias"] is weights["conv.bias"]          # unmasked tensors untouched
    assert weights["conv.weight"].eq(1).all()                # the input is not modified


def test_rescaled_mask_keeps_the_dense_signal_variance():
    """Masked to density 0.2, Kaiming weights pass ~0.2 of the signal variance; rescaled ~1."""
    torch.manual_seed(0)
    w = torch.nn.init.kaiming_normal_(torch.empty(512, 1024), nonlinearity="linear")
    mask = torch.rand_like(w) < 0.2
    x = torch.randn(2048, 1024)
    dense = (x @ w.T).var()
    ratios = {name: float((x @ init({"w": w}, {"w": mask})["w"].T).var() / dense)
              for name, init in SPARSE_INITS.items()}
    assert ratios["unscaled"] == pytest.approx(0.2, rel=0.1)
    assert ratios["rescaled"] == pytest.approx(1.0, rel=0.1)


def test_rescale_rejects_mismatched_masks():
    with pytest.raises(ValueError, match="shape"):
        rescale_to_kept_fan_in({"w": torch.ones(2, 3)}, {"w": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(KeyError, match="no weight"):
        rescale_to_kept_fan_in({"w": torch.ones(2, 3)}, {"v": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="output and an input"):
        kept_fan_in_scale(torch.ones(3, dtype=torch.bool))


def test_federated_sparse_strategies_start_rescaled():
    from sparseprior.federated import FedRunConfig
    from sparseprior.federated.strategies import STRATEGIES
    from sparseprior.models import build_model

    states = {}
    for init in ("rescaled", "unscaled"):
        config = FedRunConfig(strategy="static", sparse_init=init, sparsity=0.8)
        config.validate()
        torch.manual_seed(0)
        states[init] = STRATEGIES.get("static")(config).init_state(build_model("lenet5"))
    masks = states["rescaled"].masks
    assert sorted(masks) == sorted(states["unscaled"].masks)
    assert all(bool((masks[n] == states["unscaled"].masks[n]).all()) for n in masks)
    for name, mask in masks.items():
        a, b = states["rescaled"].weights[name], states["unscaled"].weights[name]
        assert bool((a[~mask] == 0).all()) and bool((b[~mask] == 0).all())
        scale = kept_fan_in_scale(mask).view(-1, *[1] * (a.dim() - 1)).float()
        assert torch.allclose(a, b * scale)
    with pytest.raises(ValueError, match="sparse_init"):
        FedRunConfig(strategy="static", sparse_init="xavier").validate()


def test_dst_initial_mask_rescaled_in_place_on_the_model():
    from sparseprior.dst import DSTConfig, initial_masks
    from sparseprior.sparsity import init_masked_

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 3))

    cfg = DSTConfig(method="rigl", sparsity=0.75, include_output=True, mask_seed=1)
    plain, scaled = model(), model()
    masks = initial_masks(plain, cfg)
    assert initial_masks(scaled, cfg.replace(sparse_init="rescaled")) == masks
    dense = dict(model().named_parameters())
    for name, mask in masks.items():
        a, b = dict(scaled.named_parameters())[name], dict(plain.named_parameters())[name]
        assert torch.equal(b, dense[name] * mask)  # unscaled: the dense init, masked
        scale = kept_fan_in_scale(mask).view(-1, 1).float()
        assert torch.allclose(a, dense[name] * mask * scale)
        assert float(scale.min()) > 1.0  # every unit lost inputs at 25% density
    assert torch.equal(scaled[0].bias, plain[0].bias)  # biases untouched
    with pytest.raises(ValueError, match="sparse_init"):
        DSTConfig(sparse_init="xavier").validate()
    with pytest.raises(ValueError, match="unknown sparse init"):
        init_masked_(model(), masks, "xavier")
    with pytest.raises(KeyError, match="lacks"):
        init_masked_(model(), {"9.weight": masks["0.weight"]})
