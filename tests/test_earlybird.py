"""Early-Bird tickets: L1 on BN scales, channel masks, FIFO detection, physical slimming."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparseprior.engine import TrainConfig, Trainer
from sparseprior.models import build_model
from sparseprior.tickets.earlybird import (
    EarlyBirdCallback,
    EarlyBirdConfig,
    EarlyBirdDetector,
    bn_l1_penalty,
    channel_masks,
    check_earlybird_args,
    default_earlybird_train,
    distance_matrix,
    hamming_distance,
    masks_from_scores,
    run_earlybird,
)
from sparseprior.tickets.slimming import (
    apply_channel_masks_,
    count_macs,
    count_params,
    find_channel_groups,
    load_slimmed,
    masked_model,
    save_slimmed,
    slim_model,
)

TINY_CFG = [4, "M", 8, "M", 8]
BUILD = {"in_channels": 1, "num_classes": 3, "input_size": 8}


def tiny_vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg-small", cfg=TINY_CFG, **BUILD)


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random gamma/beta/running stats so BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def random_masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in find_channel_groups(model):
        keep = torch.rand(g.channels, generator=gen) < 0.5
        keep[0] = True
        masks.update({n: keep.clone() for n in g.names})
    return masks


# --------------------------------------------------------------------------- penalty, masks


def test_l1_penalty_is_lambda_times_sum_abs_gamma():
    model = randomize_bn_(tiny_vgg())
    names = [g.names[0] for g in find_channel_groups(model)]
    expected = sum(float(model.get_submodule(n).weight.detach().abs().sum()) for n in names)
    pen = bn_l1_penalty(model, names, 1e-4)
    assert pen.requires_grad
    assert float(pen.detach()) == pytest.approx(1e-4 * expected, rel=1e-6)
    pen.backward()
    bn = model.get_submodule(names[0])
    assert torch.allclose(bn.weight.grad, 1e-4 * bn.weight.detach().sign())


def test_global_mask_prunes_smallest_gammas_over_all_layers():
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.05]), torch.tensor([0.3, 0.2, 0.8, 0.7])]
    a, b = masks_from_scores(scores, 0.5)
    assert a.tolist() == [False, True, True, False]
    assert b.tolist() == [False, False, True, True]
    # layer-wise: half of each layer
    a, b = masks_from_scores(scores, 0.5, scope="layerwise")
    assert a.tolist() == [False, True, True, False]
    assert b.tolist() == [False, False, True, True]
    # global threshold can empty a layer; min_channels keeps its largest channel(s)
    scores = [torch.tensor([0.01, 0.02]), torch.tensor([0.5, 0.6, 0.7, 0.8])]
    a, b = masks_from_scores(scores, 0.5)
    assert a.tolist() == [False, True] and b.tolist() == [False, True, True, True]


def test_channel_masks_from_model_gammas():
    model = tiny_vgg()
    groups = find_channel_groups(model)
    assert [g.names for g in groups] == [("features.1",), ("features.5",), ("features.9",)]
    gammas = {"features.1": [5.0, 0.01, 3.0, 0.02], "features.5": [1, 2, 3, 4, 5, 6, 7, 8],
              "features.9": [0.03, 9, 9, 9, 9, 9, 9, 0.04]}
    with torch.no_grad():
        for name, g in gammas.items():
            model.get_submodule(name).weight.copy_(torch.tensor(g, dtype=torch.float32))
    masks = channel_masks(model, groups, 0.25)  # the 5 smallest of 20 channels
    assert masks["features.1"].tolist() == [True, False, True, False]
    assert masks["features.5"].tolist() == [False] + [True] * 7
    assert masks["features.9"].tolist() == [False] + [True] * 6 + [False]


def test_hamming_distance_and_matrix():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, False, True])
    assert hamming_distance(a, a) == 0.0
    assert hamming_distance(a, b) == 0.5
    assert hamming_distance(a, ~a) == 1.0
    assert hamming_distance({"x": a, "y": a}, {"x": b, "y": a}) == 0.25
    m = distance_matrix([a, b, ~a])
    assert torch.allclose(m, torch.tensor([[0, 0.5, 1], [0.5, 0, 0.5], [1, 0.5, 0]]))
    with pytest.raises(ValueError, match="same shape"):
        hamming_distance(a, a[:3])


def test_detector_fires_only_when_masks_stabilise():
    n = 20
    base = torch.zeros(n, dtype=torch.bool)
    base[:10] = True

    def flip(k: int) -> torch.Tensor:  # base with k positions flipped
        m = base.clone()
        m[:k] = ~m[:k]
        return m

    det = EarlyBirdDetector(fifo_size=3, threshold=0.1)
    # changing masks: distances >= 0.1 -> not drawn; stable tail -> drawn
    seq = [flip(10), flip(6), flip(4), flip(2), flip(1), flip(1), flip(1)]
    drawn = []
    for m in seq:
        det.update(m)
        drawn.append(det.drawn)
    assert drawn == [False, False, False, False, False, True, True]
    # FIFO not yet full: never drawn, even for identical masks
    det = EarlyBirdDetector(fifo_size=4, threshold=0.1)
    assert [det.update(base) for _ in range(3)] == [None, None, None]
    assert not det.drawn
    assert det.update(base) == 0.0 and det.drawn
    # distance exactly at the threshold does not fire (strictly below)
    det = EarlyBirdDetector(fifo_size=2, threshold=0.1)
    det.update(flip(0))
    assert det.update(flip(2)) == pytest.approx(0.1) and not det.drawn


# --------------------------------------------------------------------------- slimming


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_slimmed_model_is_smaller_and_matches_masked_model(name):
    if name == "vgg":
        model = randomize_bn_(tiny_vgg())
        x_shape = (5, 1, 8, 8)
    else:
        torch.manual_seed(0)
        model = randomize_bn_(build_model("resnet", depth=8, width=0.5, **BUILD))
        x_shape = (5, 1, 8, 8)
    masks = random_masks(model)
    masked = masked_model(model, masks)
    slim = slim_model(model, masks)
    x = torch.randn(*x_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = masked(x), slim(x)
        full = model(x)
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, ref)  # the mask did change the function
    assert count_params(slim) < count_params(model)
    assert count_macs(slim) < count_macs(model)
    kept = {n: int(m.sum()) for n, m in masks.items()}
    for n, k in kept.items():
        assert slim.get_submodule(n).num_features == k
    # the original is untouched
    assert all(model.get_submodule(n).num_features == m.numel() for n, m in masks.items())


def test_resnet_groups_are_coupled_and_internal_bns_independent():
    model = build_model("resnet20", width=0.25, **BUILD)
    groups = find_channel_groups(model)
    coupled = [g for g in groups if g.coupled]
    assert len(coupled) == 3  # one residual stream per stage
    assert "bn1" in coupled[0].names and "stages.1.0.shortcut.1" in coupled[1].names
    independent = find_channel_groups(model, coupled=False)
    assert sorted(g.names[0] for g in independent) == sorted(
        f"stages.{s}.{b}.bn1" for s in range(3) for b in range(3))


def test_apply_channel_masks_zeroes_pruned_channel_outputs():
    model = randomize_bn_(tiny_vgg())
    masks = random_masks(model)
    apply_channel_masks_(model, masks)
    acts = {}
    model.features[2].register_forward_hook(lambda m, i, o: acts.setdefault("relu", o.clone()))
    with torch.no_grad():
        model(torch.randn(3, 1, 8, 8))
    pruned = ~masks["features.1"]
    assert acts["relu"][:, pruned].abs().max() == 0.0


def test_count_macs_by_hand():
    model = tiny_vgg()
    # conv 1->4 @8x8, conv 4->8 @4x4, conv 8->8 @2x2, linear 8->3
    expected = 64 * 4 * 1 * 9 + 16 * 8 * 4 * 9 + 4 * 8 * 8 * 9 + 8 * 3
    assert count_macs(model) == expected


def test_slimmed_checkpoint_round_trip(tmp_path):
    for name, kw in (("vgg-small", {"cfg": TINY_CFG}), ("resnet", {"depth": 8, "width": 0.5})):
        torch.manual_seed(0)
        build = dict(BUILD, **kw)
        model = randomize_bn_(build_model(name, **build))
        slim = slim_model(model, random_masks(model)).eval()
        path = save_slimmed(slim, tmp_path / f"{name}.safetensors", model_name=name,
                            build_kwargs=build, meta={"note": "test"})
        header = json.loads(path.with_suffix(".json").read_text())
        assert header["config"]["channels"]["features.1" if name == "vgg-small" else "bn1"] > 0
        loaded = load_slimmed(path)
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.equal(loaded(x), slim(x))
        assert count_params(loaded) == count_params(slim)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"prune_ratio": 0.0}, "prune_ratio"), ({"prune_ratio": 1.0}, "prune_ratio"),
    ({"prune_ratio": -0.2}, "prune_ratio"), ({"threshold": 0.0}, "threshold"),
    ({"threshold": -1.0}, "threshold"), ({"fifo_size": 1}, "fifo_size"),
    ({"l1_lambda": -1e-4}, "l1_lambda"),
])
def test_bad_arguments_raise_clear_value_errors(kw, match):
    args = {"prune_ratio": 0.5, "threshold": 0.1, "fifo_size": 5, "l1_lambda": 1e-4} | kw
    with pytest.raises(ValueError, match=match):
        check_earlybird_args(**args)
    cb_args = dict(args)
    with pytest.raises(ValueError, match=match):
        EarlyBirdCallback(cb_args.pop("prune_ratio"), **cb_args)


@pytest.mark.parametrize("kw, match", [
    ({"prune_ratio": 1.5}, "prune_ratio"), ({"distance_threshold": 0.0}, "threshold"),
    ({"fifo_size": 1}, "fifo_size"), ({"search_epochs_max": 3, "fifo_size": 5}, "fifo"),
    ({"model": "nope"}, "model"), ({"width": 0.5, "model": "lenet5"}, "width"),
    ({"search_epochs_max": 12, "train": default_earlybird_train().replace(epochs=10)},
     "retrain_epochs"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyBirdConfig(**kw)


def test_detector_bad_fifo_message():
    with pytest.raises(ValueError, match="fifo_size must be an int >= 2"):
        EarlyBirdDetector(fifo_size=1)


# --------------------------------------------------------------------------- with the engine


def synthetic_data(n: int = 96):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    x += y.view(-1, 1, 1, 1).float()
    return torch.utils.data.TensorDataset(x, y)


def test_callback_stops_when_drawn_and_state_round_trips(tmp_path):
    model = tiny_vgg()
    cb = EarlyBirdCallback(0.5, threshold=1.0, fifo_size=3)  # any distance < 1 -> drawn
    trainer = Trainer(model, synthetic_data(), TrainConfig(epochs=6, batch_size=32, lr=0.05,
                                                           device="cpu", progress=False),
                      callbacks=[cb], run_dir=tmp_path / "run")
    history = trainer.fit()
    assert cb.drawn_epoch == 3 and len(history) == 3  # stopped at the draw
    assert history[-1]["eb_drawn"] is True and history[0]["eb_distance"] is None
    assert set(cb.ticket_masks) == {"features.1", "features.5", "features.9"}
    assert len(cb.mask_history) == 3 and cb.ticket_state is not None
    other = EarlyBirdCallback(0.5, threshold=1.0, fifo_size=3)
    other.load_state_dict(cb.state_dict())
    assert other.drawn_epoch == 3 and len(other.detector.fifo) == 3
    assert all(torch.equal(a, b) for a, b in zip(other.mask_history, cb.mask_history,
                                                 strict=True))


def test_callback_records_and_continues_when_configured():
    cb = EarlyBirdCallback(0.5, threshold=1.0, fifo_size=2, stop_when_drawn=False,
                           l1_lambda=0.0)
    trainer = Trainer(tiny_vgg(), synthetic_data(), TrainConfig(
        epochs=4, batch_size=32, device="cpu", progress=False), callbacks=[cb])
    assert len(trainer.fit()) == 4 and cb.drawn_epoch == 2
    assert len(cb.distances) == 4 and cb.distances[0] is None


def test_run_earlybird_end_to_end(tmp_path):
    train = default_earlybird_train().replace(batch_size=64, epochs=3, lr=0.1,
                                              eval_batch_size=250, progress=False)
    config = EarlyBirdConfig(dataset="synthetic", width=0.125, subset=128, fifo_size=2,
                             distance_threshold=1.0, search_epochs_max=2, train=train)
    result = run_earlybird(config, tmp_path / "eb", device="cpu")
    assert result["drawn_epoch"] == 2 and result["retrain_epochs"] == 1
    assert result["slim"]["flops"] < result["full"]["flops"]
    assert result["reduction"]["params_pct"] > 0
    assert result["max_abs_diff_masked_vs_slim"] < 1e-4
    tf = result["training_flops"]
    assert tf["earlybird"] == 3 * 128 * (2 * result["full"]["flops"]
                                         + 1 * result["slim"]["flops"])
    assert tf["full"] == 3 * 128 * 3 * result["full"]["flops"]
    for f in ("earlybird.json", "mask_distance.png", "config.json",
              "slim_model.safetensors", "slim_model.json"):
        assert (tmp_path / "eb" / f).is_file()
    loaded = load_slimmed(tmp_path / "eb" / "slim_model.safetensors")
    assert count_params(loaded) == result["slim"]["params"]
    assert EarlyBirdConfig.from_json(tmp_path / "eb" / "config.json") == config


def test_earlybird_section_quick_on_digits(tmp_path):
    from sparseprior.common.runs import RunDir
    from sparseprior.tickets.earlybird import earlybird_section

    section = earlybird_section(RunDir(tmp_path / "eb"), "quick", torch.device("cpu"),
                                dataset="digits")
    assert len(section.rows) == 3 and section.plots == ["mask_distance.png"]
    assert (tmp_path / "eb" / "mask_distance.png").is_file()
    assert section.data["dataset"]["name"] == "digits"
