"""Trustworthy runs: divergence is an error, run folders are safe to share, kill and resume."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sparseprior.common.checkpoint import atomic_write_text
from sparseprior.common.runs import RunDir, config_diff
from sparseprior.engine import DivergenceError, TrainConfig, Trainer


def _data(n: int = 64, nan: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    if nan:
        x[3, 2] = float("nan")
    return TensorDataset(x, torch.randint(0, 3, (n,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("field", ["lr", "weight_decay", "momentum", "gamma"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_train_config_rejects_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_huge_learning_rate_is_a_divergence_error_and_nothing_is_marked_finished(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e12, momentum=0.0, weight_decay=0.0,
                      progress=False, log_every=0)
    trainer = Trainer(_model(), _data(), cfg, run_dir=tmp_path / "run")
    with pytest.raises(DivergenceError, match="diverged.*lower the learning rate"):
        trainer.fit()
    ckpts = list((tmp_path / "run").glob("checkpoints/*.safetensors"))
    assert ckpts == []  # no checkpoint of a diverged model, the run is not finished


def test_nan_pixel_is_refused_before_training():
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="train_set tensor 0 holds 1 NaN/inf"):
        Trainer(_model(), _data(nan=True), cfg)


def test_checkpoint_with_nan_weights_does_not_resume(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, log_every=0)
    trainer = Trainer(_model(), _data(), cfg, run_dir=tmp_path / "run")
    trainer.fit()
    path = next((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, path)
    fresh = Trainer(_model(), _data(), cfg.replace(epochs=2), run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="NaN/inf"):
        fresh.fit(resume=True)


def test_torn_metrics_line_is_tolerated_and_cut_before_appending(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics({"step": 1})
    with open(run.file("metrics.jsonl"), "a") as fh:
        fh.write('{"step": 2, "lo')  # killed mid-write
    assert run.read_metrics() == [{"step": 1}]
    run.log_metrics({"step": 3})
    assert run.read_metrics() == [{"step": 1}, {"step": 3}]
    with open(run.file("metrics.jsonl"), "a") as fh:
        fh.write("garbage\n")
        fh.write('{"step": 4}\n')
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        run.read_metrics()


def test_stale_temp_files_are_removed_and_files_follow_the_umask(tmp_path):
    (tmp_path / ".config.json.abc.tmp").write_text("half")
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path)
        path = atomic_write_text(run.file("a.txt"), "x")
    finally:
        os.umask(old)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_run_folder_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file|exists as a file"):
        RunDir(tmp_path / "f" / "run")


def test_lock_refuses_a_second_holder(tmp_path):
    run = RunDir(tmp_path)
    with run.lock(), pytest.raises(ValueError, match="in use by pid"), RunDir(tmp_path).lock():
        pass
    with run.lock():  # released
        pass


def test_claim_contract(tmp_path):
    run = RunDir(tmp_path)
    cfg = {"method": "rigl", "train": {"lr": 0.1, "device": "cpu"}}
    assert run.claim(cfg) is False
    assert run.claim(cfg) is True
    moved = {"method": "rigl", "train": {"lr": 0.1, "device": "cuda"}}
    assert run.claim(moved, may_differ=("device",)) is True
    assert json.loads(run.file("config.json").read_text())["train"]["device"] == "cuda"
    with pytest.raises(ValueError, match=r"\['train.lr'\] differ"):
        run.claim({"method": "rigl", "train": {"lr": 0.2, "device": "cuda"}})
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c"]


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, log_every=0)
    Trainer(_model(), _data(), cfg, run_dir=tmp_path / "run").fit()
    other = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    fresh = Trainer(other, _data(), cfg.replace(epochs=2), run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="does not fit this model"):
        fresh.fit(resume=True)
