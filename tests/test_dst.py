"""Dynamic sparse training: exact counts after every update, zero-start growth with reset
momentum, RigL's choice on a hand-made case, schedules vs their formulas, bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sparseprior.dst import (
    DSTConfig,
    DSTRunConfig,
    DynamicSparsity,
    UpdateSchedule,
    initial_masks,
    target_counts,
)
from sparseprior.engine import Callback, TrainConfig, Trainer
from sparseprior.sparsity import MaskSet


def make_data(n: int = 96, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    y = (x[:, :6].sum(dim=1) > 0).long() + 2 * (x[:, 6] > 0).long()
    return TensorDataset(x, y)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(),
                          nn.Linear(24, 4))
    model.output_layer_name = "4"
    return model


TRAIN = TrainConfig(epochs=4, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4,
                    device="cpu", num_threads=1, log_every=0, eval_every=0, progress=False)


class Inspector(Callback):
    """Runs after the DST callback: checks the state right after every mask update."""

    def __init__(self, dst: DynamicSparsity) -> None:
        self.dst = dst
        self.seen = 0
        self.before: dict[str, torch.Tensor] = {}
        self.checked_grown = 0

    def on_train_start(self, trainer):
        self.before = trainer.masks.clone().state_dict()

    def after_step(self, trainer):
        if len(self.dst.updates) == self.seen:
            return
        self.seen = len(self.dst.updates)
        record = self.dst.updates[-1]
        assert record["step"] == trainer.step
        targets = self.dst.targets(trainer.step)
        params = dict(trainer.model.named_parameters())
        for name, mask in trainer.masks.items():
            # exact number of active weights after every update
            assert int(mask.sum()) == targets[name] == record["layers"][name]["active"]
            w = params[name].detach()
            old = self.before[name]
            layer = record["layers"][name]
            grown, dropped = mask & ~old, old & ~mask
            assert torch.all(w[~mask] == 0), "a masked weight is not zero"
            assert torch.all(w[grown] == 0), "a grown weight does not start at zero"
            buf = trainer.optimizer.state[params[name]]["momentum_buffer"]
            assert torch.all(buf[grown] == 0) and torch.all(buf[dropped] == 0), \
                "momentum was not reset where the mask changed"
            # every grown weight of the drop-and-grow step starts at zero, also one that the
            # pruning step of the same update removed (then zero, not its old value)
            assert int((mask & (w == 0)).sum()) >= layer["grown"]
            assert int(mask.sum()) == int(old.sum()) - layer["pruned"]
            self.checked_grown += layer["grown"]
            # the weights count exactly the active ones that were not just grown
            assert int(torch.count_nonzero(w)) == int((mask & ~grown & (w != 0)).sum())
            assert int(torch.count_nonzero(w)) <= targets[name]
        self.before = trainer.masks.clone().state_dict()


@pytest.mark.parametrize("method, d_i", [("set", 0.6), ("rigl", 0.6), ("granet", 0.6),
                                         ("granet", 1.0)])
def test_exact_counts_zero_growth_and_reset_momentum_after_every_update(method, d_i):
    cfg = DSTConfig(method=method, sparsity=0.8, delta_t=3, t_end=0.75, alpha=0.4,
                    initial_density=d_i, prune_start=0.1, prune_end=0.6, mask_seed=1)
    model = make_model()
    masks = initial_masks(model, cfg)
    dst = DynamicSparsity(cfg)
    inspector = Inspector(dst)
    trainer = Trainer(model, make_data(), TRAIN, masks=masks, callbacks=[dst, inspector])
    trainer.fit()
    assert trainer.total_steps == 24
    expected = [t for t in range(3, 24, 3) if t < 18 or (method == "granet"
                                                          and dst.schedule.is_prune_step(t))]
    assert [u["step"] for u in dst.updates] == expected
    assert inspector.seen == len(expected) and inspector.checked_grown > 0
    # the final mask holds the final per-layer counts of the configured density rule
    shapes = masks.shapes
    final = target_counts(shapes, cfg.density, "erk")
    assert {n: int(m.sum()) for n, m in trainer.masks.items()} == final
    for record in dst.updates:
        assert record["grown"] > 0 or record["drop_fraction"] == 0
        assert math.isclose(record["drop_fraction"],
                            0.4 / 2 * (1 + math.cos(math.pi * record["step"] / 18)))


def test_initial_masks_have_exact_erk_counts_and_zero_weights():
    model = make_model()
    cfg = DSTConfig(method="static", sparsity=0.75, distribution="erk", mask_seed=3)
    masks = initial_masks(model, cfg)
    assert masks.names == ["0.weight", "2.weight"]  # output layer kept dense
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in masks.names}
    counts = target_counts(shapes, 0.25, "erk")
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(sum(counts.values()) - 0.25 * total) <= len(counts)
    assert masks.stats(model).nonzero == sum(counts.values())
    # same seed, same mask; another seed, another mask
    assert initial_masks(make_model(), cfg) == masks
    assert initial_masks(make_model(), cfg.replace(mask_seed=4)) != masks
    assert initial_masks(model, cfg.replace(method="dense")) is None


def test_static_never_changes_the_mask():
    cfg = DSTConfig(method="static", sparsity=0.9, delta_t=2)
    model = make_model()
    masks = initial_masks(model, cfg)
    before = masks.digest()
    dst = DynamicSparsity(cfg)
    Trainer(model, make_data(), TRAIN, masks=masks, callbacks=[dst]).fit()
    assert dst.updates == [] and masks.digest() == before


def _hand_made_layer():
    """Layer 0 (3 x 4) with hand-set weights, mask and gradient; output layer dense."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
    model.output_layer_name = "1"
    w = torch.tensor([[0.9, -0.05, 0.0, 0.0],
                      [0.0, 0.0, -0.7, 0.2],
                      [0.0, 0.0, 0.0, 0.0]])
    mask = w != 0                                       # 4 active weights
    grad = torch.tensor([[5.0, 4.0, 0.3, -0.4],
                         [0.2, -3.0, 9.0, 0.1],
                         [2.5, 0.0, -0.6, 0.05]])
    with torch.no_grad():
        model[0].weight.copy_(w)
    return model, mask, grad


def test_rigl_grows_exactly_the_largest_gradients_among_inactive_positions():
    model, mask, grad = _hand_made_layer()
    # delta_t=1, T_end=100 steps: drop fraction at step 1 = 0.5/2 (1 + cos(pi/100)) ~ 0.4999
    cfg = DSTConfig(method="rigl", sparsity=0.5, delta_t=1, t_end=1.0, alpha=0.5)
    masks = MaskSet({"0.weight": mask})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(model, opt)
    trainer = SimpleNamespace(model=model, masks=masks, total_steps=100, step=0,
                              run_dir=None, optimizer=opt)
    dst = DynamicSparsity(cfg)
    dst.on_train_start(trainer)
    model[0].weight.grad = grad.clone()
    dst.after_backward(trainer)            # captures |grad| before any masking
    masks.mask_grads_()                    # what the trainer does next
    trainer.step = 1
    dst.after_step(trainer)
    new = masks["0.weight"]
    # 2 swaps: drop the 2 smallest |w| among active: -0.05 (0,1) and 0.2 (1,3);
    # grow the 2 largest |grad| among inactive: -3.0 (1,1) and 2.5 (2,0) -- not 4.0 at
    # (0,1) (just dropped: never regrown in the same update) nor 9.0 / 5.0 (already active)
    expected = torch.tensor([[True, False, False, False],
                             [False, True, True, False],
                             [True, False, False, False]])
    assert torch.equal(new, expected)
    record = dst.updates[0]
    assert record["layers"]["0.weight"] == {"active": 4, "target": 4, "pruned": 0,
                                            "dropped": 2, "grown": 2}
    w = model[0].weight.detach()
    assert w[2, 0] == 0 and w[1, 1] == 0 and w[0, 1] == 0 and w[1, 3] == 0
    assert w[0, 0] == pytest.approx(0.9) and w[1, 2] == pytest.approx(-0.7)


def test_set_grows_at_random_with_a_per_step_seed():
    model, mask, _ = _hand_made_layer()
    cfg = DSTConfig(method="set", sparsity=0.5, delta_t=1, t_end=1.0, alpha=0.5, mask_seed=7)
    chosen = []
    for _ in range(2):
        m = MaskSet({"0.weight": mask})
        net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
        net.load_state_dict(model.state_dict())
        m.attach(net)
        trainer = SimpleNamespace(model=net, masks=m, total_steps=100, step=0, run_dir=None)
        dst = DynamicSparsity(cfg)
        dst.on_train_start(trainer)
        trainer.step = 1
        dst.after_step(trainer)
        chosen.append(m["0.weight"].clone())
    assert torch.equal(chosen[0], chosen[1])           # same seed and step: same growth
    assert int(chosen[0].sum()) == 4
    # the two weakest were dropped and never regrown in the same call
    assert not chosen[0][0, 1] and not chosen[0][1, 3]


def test_schedules_match_their_formulas():
    cfg = DSTConfig(method="rigl", delta_t=10, t_end=0.75, alpha=0.3)
    sched = UpdateSchedule.for_training(cfg, 1000)
    assert sched.end_step == 750
    for t in (0, 10, 123, 500, 749):
        assert sched.drop_fraction(t, 0.3) == pytest.approx(
            0.3 / 2 * (1 + math.cos(math.pi * t / 750)))
    assert sched.drop_fraction(750, 0.3) == 0.0 and sched.drop_fraction(900, 0.3) == 0.0
    assert sched.update_steps() == list(range(10, 750, 10))

    granet = DSTConfig(method="granet", sparsity=0.9, initial_density=0.5, delta_t=10,
                       prune_start=0.1, prune_end=0.5)
    g = UpdateSchedule.for_training(granet, 1000)
    assert (g.prune_start, g.prune_updates) == (100, 40)
    s_i, s_f = 0.5, 0.9
    for t in (0, 100, 130, 250, 400, 500, 800):
        progress = min(max((t - 100) / 400, 0.0), 1.0)
        formula = s_f + (s_i - s_f) * (1 - progress) ** 3
        assert g.density(t, 0.5, 0.1) == pytest.approx(1 - formula)
    assert g.is_prune_step(500) and not g.is_prune_step(100) and not g.is_prune_step(510)
    # pruning continues after T_end when the window says so
    late = UpdateSchedule.for_training(granet.replace(t_end=0.2, prune_end=0.6), 1000)
    assert late.is_update_step(600) and not late.is_update_step(610)


@pytest.mark.parametrize("changes, fragment", [
    ({"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ({"sparsity": 1.5}, "sparsity must be in [0, 1)"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"delta_t": 0}, "delta_t must be >= 1"),
    ({"delta_t": -5}, "delta_t must be >= 1"),
    ({"delta_t": 2.5}, "delta_t must be an integer"),
    ({"t_end": 1.5}, "beyond training"),
    ({"t_end": 0.0}, "t_end must be in (0.0, 1.0]"),
    ({"method": "snip"}, "method='snip' is not one of"),
    ({"distribution": "random"}, "distribution='random'"),
    ({"alpha": 2.0}, "alpha must be in"),
    ({"method": "granet", "initial_density": 0.05, "sparsity": 0.9},
     "initial_density must be in"),
    ({"initial_density": 0.0}, "initial_density must be in"),
    ({"prune_start": 0.6, "prune_end": 0.5}, "pruning window"),
])
def test_bad_config_is_a_clear_error(changes, fragment):
    with pytest.raises(ValueError) as err:
        DSTConfig(**changes)
    assert fragment in str(err.value)


def test_delta_t_longer_than_training_is_a_clear_error():
    cfg = DSTConfig(method="rigl", sparsity=0.5, delta_t=50)
    model = make_model()
    trainer = Trainer(model, make_data(), TRAIN, masks=initial_masks(model, cfg),
                      callbacks=[DynamicSparsity(cfg)])
    with pytest.raises(ValueError, match="leaves no mask update before T_end"):
        trainer.fit()
    with pytest.raises(ValueError, match="needs the Trainer to have masks"):
        Trainer(make_model(), make_data(), TRAIN, callbacks=[DynamicSparsity(cfg)]).fit()


def test_run_config_validates_and_round_trips():
    cfg = DSTRunConfig.from_dict({"dst": {"method": "granet", "sparsity": 0.95},
                                  "model": "lenet5", "train": {"epochs": 2}})
    assert isinstance(cfg.dst, DSTConfig) and cfg.train.epochs == 2
    assert DSTRunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="model='nope'"):
        DSTRunConfig(model="nope")
    with pytest.raises(ValueError, match="does not take model_options"):
        DSTRunConfig(model="lenet300", model_options={"hidden": [3]})
