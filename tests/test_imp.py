"""IMP with rewinding: densities per level, exact rewinding, controls, resume, validation."""

from __future__ import annotations

import pytest
import torch

from sparseprior.engine import TrainConfig, Trainer
from sparseprior.sparsity import MaskSet
from sparseprior.tickets import imp as imp_mod
from sparseprior.tickets.imp import (
    IMPConfig,
    build_seeded_model,
    level_dir,
    load_imp_result,
    load_splits,
    load_ticket,
    load_weights,
    matched_random_masks,
    prune_by_magnitude,
    run_imp,
)

LEVELS = 3
REWIND = 3


def _config(**changes) -> IMPConfig:
    base = IMPConfig(
        model="mlp", model_options={"hidden": [24, 16]}, dataset="synthetic",
        dataset_options={"n_train": 192, "n_test": 96, "image_shape": [1, 6, 6],
                         "num_classes": 4},
        levels=LEVELS, rewind_step=REWIND, init_seed=3, ablations=["reinit", "random"],
        train=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0,
                          device="cpu", progress=False, log_every=0, num_threads=1))
    return base.replace(**changes)


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imp")
    config = _config()
    return config, folder, run_imp(config, folder)


def _counts(masks) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in masks.items()}


def test_level_density_is_0_8_power_counted_from_tensors(imp_run):
    config, folder, result = imp_run
    assert [s["level"] for s in result.levels] == list(range(LEVELS + 1))
    for level, summary in enumerate(result.levels):
        trained = load_weights(level_dir(folder, level) / "final")
        names = list(summary["layer_density"])
        assert names == ["features.0.weight", "features.2.weight"]  # output layer kept dense
        total = sum(trained[n].numel() for n in names)
        nonzero = sum(int(torch.count_nonzero(trained[n])) for n in names)
        assert abs(nonzero - 0.8 ** level * total) <= len(names)
        assert summary["density"] == pytest.approx(nonzero / total)
        assert summary["target_density"] == pytest.approx(0.8 ** level)
        assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert result.rows()[-1]["reinit_acc"] is not None


def test_masks_are_nested_and_rewinding_is_exact(imp_run):
    config, folder, _ = imp_run
    # theta_k in rewind.safetensors equals the weights after k steps of the dense training
    splits = load_splits(config)
    model = build_seeded_model(config, splits, config.init_seed)
    Trainer(model, splits.train, config.train.replace(max_steps=REWIND)).fit()
    rewind = load_weights(folder / "rewind")
    for name, value in model.state_dict().items():
        assert torch.equal(value, rewind[name]), name
    previous = None
    for level in range(1, LEVELS + 1):
        _, ticket, masks = load_ticket(folder, level)
        state = ticket.state_dict()
        for name, value in rewind.items():
            if name in masks:
                keep = masks[name]
                assert torch.equal(state[name][keep], value[keep])  # survivors rewound exactly
                assert not state[name][~keep].any()
            else:
                assert torch.equal(state[name], value)  # biases, output layer: rewound too
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks)
        previous = masks


def test_controls_match_the_imp_per_layer_densities(imp_run):
    config, folder, result = imp_run
    assert [s["level"] for s in result.controls["random"]] == list(range(1, LEVELS + 1))
    for level in range(1, LEVELS + 1):
        imp_masks = MaskSet.load(level_dir(folder, level) / "masks")
        random_masks = MaskSet.load(level_dir(folder, level) / "random" / "masks")
        reinit_masks = MaskSet.load(level_dir(folder, level) / "reinit" / "masks")
        assert _counts(random_masks) == _counts(imp_masks)
        assert random_masks != imp_masks
        assert reinit_masks == imp_masks
    reinit = result.controls["reinit"][0]
    assert reinit["init_seed"] != config.init_seed
    assert result.controls["random"][0]["layer_density"] == pytest.approx(
        result.levels[1]["layer_density"])


def test_resume_skips_finished_levels(imp_run, monkeypatch, tmp_path):
    config, folder, result = imp_run
    calls = []
    real = imp_mod.Trainer

    def counting(*args, **kwargs):
        calls.append(kwargs.get("run_dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(imp_mod, "Trainer", counting)
    again = run_imp(config, folder)
    assert calls == [] and again.rows() == result.rows()
    # one more level: only the new level (and its controls) train
    more = run_imp(config.replace(levels=LEVELS + 1, ablations=[]), folder)
    assert len(calls) == 1 and len(more.levels) == LEVELS + 2
    assert load_imp_result(folder).rows()[LEVELS]["imp_acc"] == result.rows()[LEVELS]["imp_acc"]
    with pytest.raises(ValueError, match="different IMP experiment.*rate"):
        run_imp(config.replace(rate=0.5), folder)


def test_prune_by_magnitude_scopes_and_active():
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, 20, generator=gen), "b": torch.randn(30, 7, generator=gen)}
    dense = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    glob = prune_by_magnitude(weights, dense, 0.8, "global")
    assert sum(_counts(glob).values()) == round(0.8 * 410)
    layer = prune_by_magnitude(weights, dense, 0.64, "layerwise")
    assert _counts(layer) == {"a": 128, "b": 134}
    # a weight pruned earlier never comes back, even when large
    weights["a"][~layer["a"]] = 100.0
    nested = prune_by_magnitude(weights, layer, 0.5, "layerwise")
    assert not (nested["a"] & ~layer["a"]).any()
    rand = matched_random_masks(layer, seed=1)
    assert _counts(rand) == _counts(layer) and rand != layer


@pytest.mark.parametrize("changes, fragment", [
    ({"levels": -1}, "levels must be >= 0"),
    ({"rate": 1.0}, "rate must be in"),
    ({"scope": "local"}, "scope='local'"),
    ({"ablations": ["shuffle"]}, "ablations"),
    ({"ablation_levels": [9]}, "ablation_levels has level 9"),
    ({"model": "resnet7"}, "model='resnet7'"),
    ({"model_options": {"depth": 3}}, "does not take model_options"),
])
def test_config_errors_are_clear(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        _config(**changes)


def test_rewind_step_beyond_training_is_a_clear_error(tmp_path):
    config = _config(levels=0, ablations=[], rewind_step=10_000)
    with pytest.raises(ValueError, match="rewind_step=10000 is beyond"):
        run_imp(config, tmp_path / "run")


def test_config_round_trips_through_json(tmp_path):
    config = _config()
    path = tmp_path / "c.json"
    path.write_text(config.to_json())
    again = IMPConfig.from_json(path)
    assert isinstance(again.train, TrainConfig) and again.train == config.train
    assert again.levels == config.levels
