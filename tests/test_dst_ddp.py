"""DST under DDP: a 2-process CPU (gloo) run keeps the masks identical on both ranks after every
update (digests), and its loss curve matches a single process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from sparseprior.dst import DSTConfig, DynamicSparsity, initial_masks
from sparseprior.engine import TrainConfig, Trainer, launch

pytestmark = [
    pytest.mark.slow,  # > 10 s: run with -m slow
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

TRAIN = dict(epochs=3, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, device="cpu",
             num_threads=1, log_every=0, eval_every=1, progress=False)
METHODS = {
    "rigl": DSTConfig(method="rigl", sparsity=0.8, delta_t=2, t_end=0.75, alpha=0.4),
    "granet": DSTConfig(method="granet", sparsity=0.85, initial_density=0.5, delta_t=2,
                        prune_end=0.5, t_end=0.75, alpha=0.4),
    "set": DSTConfig(method="set", sparsity=0.8, delta_t=2, t_end=0.75, alpha=0.4, mask_seed=5),
}


def make_data(n: int = 64) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 10, generator=gen)
    y = (x[:, :5].sum(dim=1) > 0).long() + 2 * (x[:, 5] > 0).long()
    return TensorDataset(x, y)


def train(method: str) -> tuple[Trainer, DynamicSparsity]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    cfg = METHODS[method]
    dst = DynamicSparsity(cfg)
    data = make_data()
    trainer = Trainer(model, data, TrainConfig(**TRAIN), val_set=data,
                      masks=initial_masks(model, cfg), callbacks=[dst])
    trainer.fit()
    return trainer, dst


def result(trainer: Trainer, dst: DynamicSparsity) -> dict:
    return {"digests": [u["digest"] for u in dst.updates],
            "steps": [u["step"] for u in dst.updates],
            "losses": [h["train_loss"] for h in trainer.history],
            "val": [h["val_loss"] for h in trainer.history],
            "final": trainer.masks.digest()}


def _worker(rank: int, out_dir: str) -> None:
    out = {}
    for method in METHODS:
        trainer, dst = train(method)
        assert trainer.dist.world_size == 2 and trainer.dist.rank == rank
        out[method] = result(trainer, dst)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))


def test_two_process_dst_keeps_masks_identical_and_matches_single_process(tmp_path):
    launch(_worker, 2, args=(str(tmp_path),))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for method in METHODS:
        r0, r1 = ranks[0][method], ranks[1][method]
        assert len(r0["digests"]) >= 3, method
        # identical masks on both ranks after every single update
        assert r0["digests"] == r1["digests"] and r0["final"] == r1["final"], method
        assert len(set(r0["digests"])) == len(r0["digests"]), "masks did not change"
        single = result(*train(method))
        assert single["steps"] == r0["steps"]
        # same global batch: the loss curve matches one process (up to reduction order)
        for a, b in zip(r0["losses"], single["losses"], strict=True):
            assert abs(a - b) < 1e-3 * max(1.0, abs(b)), (method, r0["losses"],
                                                         single["losses"])
        for a, b in zip(r0["val"], single["val"], strict=True):
            assert abs(a - b) < 1e-3 * max(1.0, abs(b)), method
