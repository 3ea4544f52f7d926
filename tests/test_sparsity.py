"""Sparse core: masks stay exactly zero, densities hit targets, scores/schedules match formulas."""

import math

import pytest
import torch
from torch import nn

from sparseprior.sparsity import (
    MaskSet,
    SparsityConfig,
    cosine_drop_fraction,
    cubic_sparsity,
    drop_and_grow,
    er_densities,
    erk_densities,
    imp_density,
    imp_levels_for,
    kept_counts,
    layer_densities,
    output_layer_name,
    prunable_parameters,
    select_masks,
    sparsify_,
    sparsity_stats,
    uniform_densities,
)


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def sgd_run(model, masks, steps=50, opt_cls=torch.optim.SGD, **opt_kw):
    opt = opt_cls(model.parameters(), **opt_kw)
    masks.attach(model, opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


# --------------------------------------------------------------------------- prunable layers


def test_prunable_parameters_default_excludes_output_bias_and_bn():
    model = tiny_cnn()
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight", "8.weight"]
    assert list(prunable_parameters(model, include_output=True))[-1] == "10.weight"
    assert output_layer_name(model) == "10"
    model.output_layer_name = "8"
    assert "8.weight" not in prunable_parameters(model)
    assert "10.weight" in prunable_parameters(model)


def test_prunable_parameters_names_and_errors():
    model = tiny_cnn()
    got = prunable_parameters(model, names=["3", "10.weight"])
    assert list(got) == ["3.weight", "10.weight"]
    with pytest.raises(ValueError, match=r"unknown prunable layer name\(s\) \['nope'\].*valid"):
        prunable_parameters(model, names=["nope"])
    with pytest.raises(ValueError, match="1.weight"):  # BN weight is not prunable
        prunable_parameters(model, names=["1.weight"])


# --------------------------------------------------------------------------- masks stay zero


@pytest.mark.parametrize("opt_cls,kw", [
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=5e-4)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=5e-2)),
])
def test_masked_weights_stay_exactly_zero(tmp_path, opt_cls, kw):
    torch.set_num_threads(1)
    model = tiny_cnn()
    masks = sparsify_(model, SparsityConfig(sparsity=0.8, distribution="erk"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = sgd_run(model, masks, opt_cls=opt_cls, **kw)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name], before[name]), f"{name} did not train"
        for value in opt.state[params[name]].values():
            if value.shape == mask.shape:
                assert torch.all(value[~mask] == 0)
    # saved state_dict and file hold exact zeros too
    sd = model.state_dict()
    for name, mask in masks.items():
        assert torch.all(sd[name][~mask] == 0)
    from safetensors.torch import load_file, save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    loaded = load_file(tmp_path / "m.safetensors")
    for name, mask in masks.items():
        assert int(torch.count_nonzero(loaded[name])) <= int(mask.sum())
        assert torch.all(loaded[name][~mask] == 0)


def test_momentum_from_dense_phase_cannot_revive_pruned_weights():
    """Prune mid-training: attaching zeroes momentum at masked positions."""
    torch.set_num_threads(1)
    model = tiny_cnn()
    opt = sgd_run(model, MaskSet.dense(model), steps=5, lr=0.05, momentum=0.9)
    masks = sparsify_(model, SparsityConfig(sparsity=0.7, scope="global"))
    masks.attach(model, opt)
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 6, 6, generator=gen)),
                                    torch.randint(0, 10, (8,), generator=gen)).backward()
        opt.step()
    assert masks.stats(model).nonzero <= int(sum(m.sum() for m in masks.values()))
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.all(p[~masks[name]] == 0)


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_counted_sparsity_equals_requested(distribution, sparsity):
    model = tiny_cnn()
    masks = sparsify_(model, SparsityConfig(sparsity=sparsity, distribution=distribution))
    stats = masks.stats(model)
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    dens = layer_densities(shapes, 1 - sparsity, distribution)
    for name, layer in stats.layers.items():
        assert abs(layer.nonzero - dens[name] * layer.total) <= 1, name
    assert abs(stats.nonzero - (1 - sparsity) * stats.total) <= len(stats.layers)
    assert math.isclose(stats.sparsity, 1 - stats.density)


def test_stats_count_actual_tensors_not_masks():
    model = tiny_cnn()
    masks = MaskSet.dense(model)
    with torch.no_grad():
        model[0].weight[0].zero_()
    stats = masks.stats(model)
    assert stats.layers["0.weight"].nonzero == model[0].weight.numel() - 27
    assert masks.density() == 1.0
    assert sparsity_stats(model).nonzero == stats.nonzero
    d = stats.to_dict()
    assert set(d) == {"total", "nonzero", "density", "sparsity", "layers"}


def test_global_scope_keeps_exact_total_and_largest_weights():
    model = tiny_cnn()
    params = prunable_parameters(model)
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    masks = sparsify_(model, SparsityConfig(sparsity=0.75, scope="global"))
    kept = int(sum(m.sum() for m in masks.values()))
    assert kept == round(0.25 * flat.numel())
    threshold = flat.sort(descending=True).values[kept - 1]
    for m, p in zip(masks.values(), params.values(), strict=True):
        assert torch.all(p[m].abs() >= threshold)


def test_random_score_is_seeded():
    a = sparsify_(tiny_cnn(), SparsityConfig(sparsity=0.5, score="random", seed=3))
    b = sparsify_(tiny_cnn(), SparsityConfig(sparsity=0.5, score="random", seed=3))
    c = sparsify_(tiny_cnn(), SparsityConfig(sparsity=0.5, score="random", seed=4))
    assert a.digest() == b.digest() != c.digest()


# --------------------------------------------------------------------------- densities

SHAPES = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "conv3": (64, 32, 3, 3),
          "fc1": (256, 1024), "fc2": (10, 256)}


@pytest.mark.parametrize("fn", [uniform_densities, er_densities, erk_densities])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.3, 0.6, 0.9, 1.0])
def test_densities_capped_and_hit_global_target(fn, density):
    dens = fn(SHAPES, density)
    assert all(0.0 <= d <= 1.0 for d in dens.values())
    total = sum(math.prod(s) for s in SHAPES.values())
    kept = sum(kept_counts(SHAPES, dens).values())
    assert abs(kept - density * total) <= len(SHAPES)


def test_erk_small_layers_become_dense_and_ratios_follow_formula():
    dens = erk_densities(SHAPES, 0.5)
    assert dens["conv1"] == 1.0 and dens["fc2"] == 1.0  # capped
    raw = {n: sum(s) / math.prod(s) for n, s in SHAPES.items()}
    sparse = [n for n, d in dens.items() if d < 1.0]
    assert len(sparse) >= 2
    ratios = {dens[n] / raw[n] for n in sparse}
    assert max(ratios) - min(ratios) < 1e-9  # same epsilon for every non-dense layer


def test_er_ignores_kernel_size_erk_does_not():
    shapes = {"a": (8, 8, 1, 1), "b": (8, 8, 5, 5), "c": (512, 512)}
    er = er_densities(shapes, 0.2)
    erk = erk_densities(shapes, 0.2)
    # ER's score for a and b is equal, so (being uncapped) their densities match
    if er["a"] < 1 and er["b"] < 1:
        assert math.isclose(er["a"], er["b"])
    assert erk["a"] >= erk["b"] or erk["a"] == 1.0


def test_uniform_with_dense_layer_rescales_the_rest():
    dens = uniform_densities(SHAPES, 0.5, dense_layers=["conv1"])
    assert dens["conv1"] == 1.0
    total = sum(math.prod(s) for s in SHAPES.values())
    assert math.isclose(sum(dens[n] * math.prod(s) for n, s in SHAPES.items()), 0.5 * total)


def test_density_errors():
    with pytest.raises(ValueError, match="distribution='xyz' is not one of"):
        layer_densities(SHAPES, 0.5, "xyz")
    with pytest.raises(ValueError, match="density must be in"):
        erk_densities(SHAPES, 0.0)
    with pytest.raises(ValueError, match="dense_layers"):
        uniform_densities(SHAPES, 0.01, dense_layers=["fc1"])


# --------------------------------------------------------------------------- scores


def test_select_masks_layerwise_exact_counts_and_active_restriction():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(7, 9, generator=gen), "b": torch.rand(13, generator=gen)}
    masks = select_masks(scores, densities={"a": 0.3, "b": 0.5})
    assert int(masks["a"].sum()) == round(0.3 * 63) and int(masks["b"].sum()) == round(6.5)
    active = {"a": masks["a"], "b": masks["b"]}
    smaller = select_masks(scores, density=0.1, active=active)
    for n in scores:
        assert torch.all(smaller[n] <= active[n])  # never revives pruned weights
    with pytest.raises(ValueError, match="scope='global' needs density"):
        select_masks(scores, densities={"a": 0.3, "b": 0.5}, scope="global")


def test_drop_and_grow_hand_made_case():
    weights = torch.tensor([[0.5, -0.1, 0.0, 0.0],
                            [0.0, 2.0, -0.05, 0.0]])
    mask = weights != 0
    grads = torch.tensor([[9.0, 0.0, 0.3, 0.7],
                          [0.2, 0.0, 0.0, 0.1]])
    new = drop_and_grow(weights, mask, None, grads, n_swap=2)
    # drop the two smallest |w| among active: -0.05 (1,2) and -0.1 (0,1)
    # grow the two largest |g| among previously-inactive: 0.7 (0,3) and 0.3 (0,2)
    expected = torch.tensor([[True, False, True, True],
                             [False, True, False, False]])
    assert torch.equal(new, expected)
    assert int(new.sum()) == int(mask.sum())


def test_drop_and_grow_never_regrows_just_dropped_and_clips():
    weights = torch.tensor([1.0, 2.0, 0.0, 0.0])
    mask = weights != 0
    grow = torch.tensor([100.0, 100.0, 1.0, 2.0])  # active positions have huge grow score
    new = drop_and_grow(weights, mask, None, grow, n_swap=10)  # clipped to 2
    assert torch.equal(new, torch.tensor([False, False, True, True]))
    assert torch.equal(drop_and_grow(weights, mask, None, grow, 0), mask)


def test_drop_and_grow_preserves_count_random_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(10, 10, generator=gen)
        m = torch.rand(10, 10, generator=gen) < 0.3
        w = w * m
        new = drop_and_grow(w, m, None, torch.rand(10, 10, generator=gen), n_swap=5)
        assert int(new.sum()) == int(m.sum())
        assert int((m & ~new).sum()) == min(5, int(m.sum()), 100 - int(m.sum()))


def test_update_zeroes_dropped_grown_and_optimizer_state():
    torch.set_num_threads(1)
    model = tiny_cnn()
    masks = sparsify_(model, SparsityConfig(sparsity=0.5))
    opt = sgd_run(model, masks, steps=3, lr=0.05, momentum=0.9)
    name = "3.weight"
    p = dict(model.named_parameters())[name]
    p.grad = torch.randn_like(p)
    old = masks[name].clone()
    new = drop_and_grow(p, old, None, p.grad.abs(), n_swap=10)
    changes = masks.update_({name: new})
    assert changes[name] == {"dropped": 10, "grown": 10}
    grown, dropped = new & ~old, old & ~new
    assert torch.all(p[grown] == 0) and torch.all(p[dropped] == 0)
    buf = opt.state[p]["momentum_buffer"]
    assert torch.all(buf[grown | dropped] == 0)
    assert torch.equal(masks[name], new)
    with pytest.raises(ValueError, match="unknown layer"):
        masks.update_({"bogus": new})


# --------------------------------------------------------------------------- persistence


def test_mask_save_load_round_trip_and_wrong_model(tmp_path):
    model = tiny_cnn()
    masks = sparsify_(model, SparsityConfig(sparsity=0.6))
    masks.save(tmp_path / "masks")
    loaded = MaskSet.load(tmp_path / "masks.safetensors", model=model)
    assert loaded.digest() == masks.digest() and loaded.names == masks.names
    assert loaded == masks and loaded != MaskSet.dense(model)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mask does not fit this model.*shapes differ"):
        MaskSet.load(tmp_path / "masks", model=other)
    with pytest.raises(ValueError, match="not in the model"):
        masks.attach(nn.Sequential(nn.Linear(3, 3)))
    fresh = MaskSet.dense(model)
    fresh.load_state_dict(masks.state_dict())
    assert fresh.digest() == masks.digest()
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"0.weight": masks["0.weight"]})


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_is_value_error(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
        SparsityConfig(sparsity=bad)


def test_sparsity_config_errors():
    with pytest.raises(ValueError, match="distribution='x' is not one of"):
        SparsityConfig(distribution="x")
    with pytest.raises(ValueError, match="unknown prunable layer"):
        sparsify_(tiny_cnn(), SparsityConfig(layers=["conv_does_not_exist"]))
    cfg = SparsityConfig(sparsity=0.3, layers=["0"])
    assert SparsityConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- schedules


def test_imp_density_levels():
    for level in range(8):
        assert math.isclose(imp_density(level), 0.8 ** level)
    assert math.isclose(imp_density(3, rate=0.5), 0.125)
    assert imp_levels_for(0.8 ** 5 + 1e-12) == 5
    assert imp_levels_for(0.1) == math.ceil(math.log(0.1) / math.log(0.8))


def test_cubic_schedule_formula():
    kw = dict(initial_sparsity=0.0, final_sparsity=0.9, start_step=100, n_updates=10,
              update_every=20)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(100, **kw) == 0.0
    assert cubic_sparsity(10_000, **kw) == 0.9
    for t in (120, 180, 250, 299):
        expected = 0.9 + (0.0 - 0.9) * (1 - (t - 100) / (10 * 20)) ** 3
        assert math.isclose(cubic_sparsity(t, **kw), expected)


def test_cosine_drop_fraction_formula():
    for t in (0, 10, 37, 99):
        expected = 0.3 / 2 * (1 + math.cos(math.pi * t / 100))
        assert math.isclose(cosine_drop_fraction(t, alpha=0.3, end_step=100), expected)
    assert cosine_drop_fraction(100, alpha=0.3, end_step=100) == 0.0
    assert cosine_drop_fraction(500, alpha=0.3, end_step=100) == 0.0
