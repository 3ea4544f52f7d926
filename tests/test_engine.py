"""The one training loop: training, masks, callbacks, metrics, checkpoints and exact resume."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sparseprior.engine import Callback, LambdaCallback, TrainConfig, Trainer, WeightSnapshot, optim
from sparseprior.engine.optim import build_optimizer, fused_option, lr_factor_fn
from sparseprior.engine.state import flatten_state, unflatten_state
from sparseprior.sparsity import MaskSet, SparsityConfig, sparsify_


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=gen)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1, 0, 0] > 0).long()
    return TensorDataset(x, y)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 4))


CFG = dict(epochs=4, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, device="cpu",
           log_every=2)


class Counter(Callback):
    """A stateful callback: its state must survive resume."""

    def __init__(self):
        self.steps = 0
        self.acc = torch.zeros(3)

    def after_step(self, trainer):
        self.steps += 1
        self.acc += trainer.step

    def state_dict(self):
        return {"steps": self.steps, "acc": self.acc, "pair": (1, 2.5)}

    def load_state_dict(self, state):
        assert state["pair"] == (1, 2.5)
        self.steps, self.acc = state["steps"], state["acc"].clone()


class Crash(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def after_step(self, trainer):
        if trainer.step == self.at_step:
            raise RuntimeError("simulated crash")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("kw,msg", [
    (dict(optimizer="rmsprop"), "optimizer='rmsprop' is not one of"),
    (dict(lr=0.0), r"lr must be in \(0.0"),
    (dict(momentum=0.0, nesterov=True), "nesterov=True needs"),
    (dict(lr_schedule="step"), "needs milestones"),
    (dict(lr_schedule="step", milestones=[5, 3]), "strictly increasing"),
    (dict(device="tpu"), "device='tpu' is not one of"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(max_steps=0), "max_steps must be >= 1"),
])
def test_train_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_train_config_round_trip():
    cfg = TrainConfig(lr_schedule="step", milestones=[2, 3], warmup_epochs=0.5)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_lr_schedules():
    cos = lr_factor_fn(TrainConfig(lr_schedule="cosine", epochs=2), 5, 10)
    assert cos(0) == 1.0 and abs(cos(5) - 0.5) < 1e-12 and abs(cos(10)) < 1e-12
    step = lr_factor_fn(TrainConfig(lr_schedule="step", milestones=[1, 2], gamma=0.5), 4, 12)
    assert [step(s) for s in (0, 3, 4, 7, 8)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    warm = lr_factor_fn(TrainConfig(warmup_epochs=1.0), 4, 40)
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizer_is_fused_on_cpu_and_matches_the_loop(name, monkeypatch):
    torch.manual_seed(0)
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.01, momentum=0.9)
    fused_model, loop_model = nn.Linear(6, 3), nn.Linear(6, 3)
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model.parameters(), config)
    assert fused.param_groups[0]["fused"] is True
    monkeypatch.setattr(optim, "fused_option", lambda params: {"foreach": False})
    loop = build_optimizer(loop_model.parameters(), config)
    assert not loop.param_groups[0]["fused"]
    x = torch.randn(8, 6)
    for _ in range(5):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.equal(a, torch.zeros_like(a))


def test_fused_option_falls_back():
    assert fused_option([]) == {}
    assert fused_option([nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)]
                        ) == {}
    assert fused_option(nn.Linear(2, 2).parameters()) == {"fused": True}


def test_fit_learns_and_logs(tmp_path):
    data = make_data(128)
    trainer = Trainer(make_model(), data, TrainConfig(**{**CFG, "epochs": 6}), val_set=data,
                      test_set=make_data(32, seed=1), run_dir=tmp_path)
    history = trainer.fit()
    assert len(history) == 6 and trainer.step == 6 * 8
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.6
    assert set(history[0]) >= {"epoch", "step", "train_loss", "train_acc", "val_loss",
                               "val_acc", "lr", "time", "density"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().split("\n")
               if line]
    kinds = [r["kind"] for r in records]
    assert kinds.count("epoch") == 6 and kinds.count("test") == 1 and kinds.count("step") == 24
    ev = trainer.evaluate(data)
    assert set(ev) == {"loss", "accuracy"} and abs(ev["loss"] - history[-1]["val_loss"]) < 1e-6
    assert (tmp_path / "train_config.json").is_file()


def test_max_steps_and_should_stop():
    trainer = Trainer(make_model(), make_data(), TrainConfig(**{**CFG, "max_steps": 6}))
    trainer.fit()
    assert trainer.step == 6 and trainer.epoch == 1 and trainer.batch_in_epoch == 2
    stopper = LambdaCallback(after_step=lambda t: setattr(t, "should_stop", t.step == 3))
    trainer = Trainer(make_model(), make_data(), TrainConfig(**CFG), callbacks=[stopper])
    assert len(trainer.fit()) == 1 and trainer.step == 3


def test_masked_training_keeps_zeros_and_hooks_see_dense_grads(tmp_path):
    model = make_model()
    masks = sparsify_(model, SparsityConfig(sparsity=0.8, distribution="erk"))
    seen = {"dense_grad": False, "calls": []}

    def after_backward(t):
        w = t.model[4].weight
        seen["dense_grad"] |= bool((w.grad[~t.masks["4.weight"]] != 0).any())
        seen["calls"].append("after_backward")

    def after_step(t):
        assert torch.all(t.model[4].weight[~t.masks["4.weight"]] == 0)
        seen["calls"].append("after_step")

    cb = LambdaCallback(after_backward=after_backward, after_step=after_step,
                        on_epoch_end=lambda t: t.log(custom=1.5))
    trainer = Trainer(model, make_data(), TrainConfig(**CFG), masks=masks, callbacks=[cb],
                      run_dir=tmp_path)
    history = trainer.fit()
    assert seen["dense_grad"], "after_backward must see unmasked gradients"
    assert seen["calls"][:2] == ["after_backward", "after_step"]
    assert history[-1]["custom"] == 1.5
    stats = masks.stats(model)
    assert abs(history[-1]["density"] - stats.density) < 1e-12
    assert abs(stats.density - 0.2) < 0.02
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
    from safetensors.torch import load_file
    saved = load_file(next((tmp_path / "checkpoints").glob("step-*.safetensors")))
    for name, mask in masks.items():
        assert torch.all(saved[f"model/{name}"][~mask] == 0)
        assert torch.equal(saved[f"masks/{name}"], mask)


def test_extra_loss_is_added():
    """A linear penalty c * sum(gamma) adds exactly c to gamma's gradient."""
    grads = []

    def record(t):
        grads.append(t.model[1].weight.grad.clone())

    cfg = TrainConfig(**{**CFG, "max_steps": 1})
    Trainer(make_model(), make_data(), cfg, callbacks=[LambdaCallback(after_backward=record)]
            ).fit()
    penalty = LambdaCallback(extra_loss=lambda t: 3.0 * t.model[1].weight.sum(),
                             after_backward=record)
    trainer = Trainer(make_model(), make_data(), cfg, callbacks=[penalty])
    trainer.fit()
    assert torch.allclose(grads[1] - grads[0], torch.full((4,), 3.0), atol=1e-5)
    assert trainer.loss is not None and trainer.loss.ndim == 0


def test_bad_inputs():
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(make_model(), make_data(), {"epochs": 1})
    other = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="mask does not fit this model"):
        Trainer(make_model(), make_data(), TrainConfig(**CFG), masks=MaskSet.dense(other))


# --------------------------------------------------------------------------- resume


def run(tmp_path, cfg, *, callbacks=(), masks_sparsity=0.7, resume=False, model_seed=0):
    model = make_model(model_seed)
    masks = sparsify_(model, SparsityConfig(sparsity=masks_sparsity))
    trainer = Trainer(model, make_data(), cfg, val_set=make_data(32, seed=2), masks=masks,
                      callbacks=list(callbacks), run_dir=tmp_path)
    trainer.fit(resume=resume)
    return trainer


def assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_after_crash_is_exact(tmp_path):
    cfg = TrainConfig(**{**CFG, "lr_schedule": "cosine", "warmup_epochs": 0.5})
    full = run(tmp_path / "full", cfg, callbacks=[Counter(), WeightSnapshot([0, 5])])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "cut", cfg, callbacks=[Counter(), WeightSnapshot([0, 5]),
                                              Crash(at_step=10)])
    # a different initial model proves the weights come from the checkpoint
    resumed = run(tmp_path / "cut", cfg, callbacks=[Counter(), WeightSnapshot([0, 5]),
                                                    Crash(at_step=-1)],
                  resume=True, model_seed=5)
    assert resumed.step == full.step == 16
    assert_same_weights(full, resumed)
    assert resumed.masks.digest() == full.masks.digest()
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    cb_full, cb_res = full.callbacks[0], resumed.callbacks[0]
    assert cb_full.steps == cb_res.steps and torch.equal(cb_full.acc, cb_res.acc)
    snap_full, snap_res = full.callbacks[1].snapshots, resumed.callbacks[1].snapshots
    assert sorted(snap_full) == sorted(snap_res) == [0, 5]
    for step in (0, 5):
        for k, v in snap_full[step].items():
            assert torch.equal(v, snap_res[step][k]), (step, k)
    assert torch.all(snap_full[0]["0.weight"][~full.masks["0.weight"]] == 0)  # masked init
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records written after the checkpoint were dropped


def test_resume_extends_training_and_mid_epoch(tmp_path):
    full = run(tmp_path / "full", TrainConfig(**CFG))
    run(tmp_path / "ext", TrainConfig(**{**CFG, "epochs": 2}))
    extended = run(tmp_path / "ext", TrainConfig(**CFG), resume=True, model_seed=3)
    assert_same_weights(full, extended)
    run(tmp_path / "mid", TrainConfig(**{**CFG, "max_steps": 7}))  # stops inside epoch 2
    mid = run(tmp_path / "mid", TrainConfig(**CFG), resume=True, model_seed=4)
    assert_same_weights(full, mid)
    # a finished run resumes to a no-op
    again = run(tmp_path / "full", TrainConfig(**CFG), resume=True, model_seed=9)
    assert_same_weights(full, again) and again.step == 16


def test_checkpoint_files_and_mismatch(tmp_path):
    run(tmp_path, TrainConfig(**{**CFG, "epochs": 2, "keep_checkpoints": 1}))
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "latest.json", "step-00000008.json", "step-00000008.safetensors"]
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    with pytest.raises(ValueError, match="checkpoint callbacks"):
        run(tmp_path, TrainConfig(**CFG), callbacks=[Counter()], resume=True)
    with pytest.raises(ValueError, match="mask state does not match"):
        model = make_model()
        masks = sparsify_(model, SparsityConfig(sparsity=0.5, include_output=True))
        Trainer(model, make_data(), TrainConfig(**CFG), masks=masks,
                run_dir=tmp_path).fit(resume=True)


def test_state_flattening_round_trip():
    state = {"a": torch.arange(3), 0: {"t": (1, 2.0, None, "s", float("inf"))},
             "l": [torch.ones(2, dtype=torch.bool), {"x": -1}]}
    skeleton, tensors = flatten_state(state)
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], state["a"]) and back[0] == state[0]
    assert torch.equal(back["l"][0], state["l"][0]) and back["l"][1] == {"x": -1}
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        flatten_state({"bad": object()})
