"""DDP: a 2-process CPU (gloo) run of a masked model matches a single process with the same
global batch, keeps masks identical across ranks and masked weights exactly zero."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from sparseprior.engine import TrainConfig, Trainer, launch
from sparseprior.sparsity import SparsityConfig, sparsify_

pytestmark = [
    pytest.mark.slow,  # > 10 s: run with -m slow
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

CFG = dict(epochs=3, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-4, device="cpu",
           num_threads=1, log_every=0, lr_schedule="cosine")


def make_data(n=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, :4].sum(dim=1) > 0).long() + 2 * (x[:, 4] > 0).long()
    return TensorDataset(x, y)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def train(run_dir):
    model = make_model()
    masks = sparsify_(model, SparsityConfig(sparsity=0.75, distribution="erk"))
    data = make_data()
    trainer = Trainer(model, data, TrainConfig(**CFG), val_set=data, masks=masks,
                      run_dir=run_dir)
    history = trainer.fit()
    return trainer, history


def _worker(rank, out_dir):
    out = Path(out_dir)
    trainer, history = train(out / "run")
    assert dist.is_initialized() and dist.get_world_size() == 2 and trainer.dist.rank == rank
    assert isinstance(trainer.network, nn.parallel.DistributedDataParallel)
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
              out / f"weights{rank}.safetensors")
    (out / f"result{rank}.json").write_text(json.dumps(
        {"digest": trainer.masks.digest(), "history": history, "step": trainer.step}))


def test_ddp_two_process_gloo_matches_single_process(tmp_path):
    launch(_worker, 2, args=(str(tmp_path),))
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    weights = [load_file(tmp_path / f"weights{r}.safetensors") for r in range(2)]

    # masks identical across ranks, masked weights exactly zero on every rank
    assert results[0]["digest"] == results[1]["digest"]
    single, single_history = train(tmp_path / "single")
    assert single.masks.digest() == results[0]["digest"]
    for w in weights:
        for name, mask in single.masks.items():
            assert torch.all(w[name][~mask.cpu()] == 0), name
    # ranks hold the same weights; it trained; each rank took the single-process step count
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    hist = results[0]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert results[0]["step"] == results[1]["step"] == single.step == 3 * 4
    # evaluation is all-reduced: both ranks report the same validation metrics
    assert hist[-1]["val_loss"] == results[1]["history"][-1]["val_loss"]
    # same global batch => same result as one process, up to float reduction order
    state = single.model.state_dict()
    for name, value in weights[0].items():
        assert torch.allclose(value, state[name], atol=1e-5, rtol=1e-4), name
    for a, b in zip(hist, single_history, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert abs(a["val_acc"] - b["val_acc"]) < 1e-9
    # only rank 0 wrote the run folder, and wrote it once
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(single_history)
    assert (tmp_path / "run" / "checkpoints" / "latest.json").is_file()
