"""What the optimizer implementation costs per training step on the CPU: loop, foreach, fused.

PyTorch picks the per-tensor Python loop for CPU tensors unless told otherwise; the Trainer now
asks for the fused kernels (``engine.optim.fused_option``). For each model and optimizer this
times, in interleaved rounds on one thread, the ``optimizer.step()`` alone and the whole training
step (forward, cross-entropy, backward, step) with each implementation, and reports the median
seconds and the whole-step ratio loop / fused::

    OMP_NUM_THREADS=1 python benchmarks/optimizer_step.py --out runs/optimizer-step

Models: LeNet-300-100 and LeNet-5 on 1x28x28 inputs (batch 64, SGD with momentum as the DST
and federated benchmarks train them), and all-MiniLM-L6-v2 with a classifier on 32 x 64 tokens
(AdamW as EarlyBERT trains it; skipped when the ``nlp`` extra or the model wheel is missing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.models import LeNet5, lenet_300_100

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True},
                   "fused": {"fused": True}}


def vision_case(model: nn.Module, batch: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return model, lambda: F.cross_entropy(model(x), y)


def minilm_case() -> tuple[nn.Module, Callable[[], torch.Tensor]] | None:
    try:
        from sparseprior.nlp.model import TextClassifier, load_encoder
        model = TextClassifier(load_encoder(), 2)
    except (ImportError, OSError, ValueError) as err:
        print(f"MiniLM skipped: {err}")
        return None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 64), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = torch.randint(0, 2, (32,), generator=g)
    return model, lambda: F.cross_entropy(model(batch), y)


def time_case(model: nn.Module, loss_fn: Callable[[], torch.Tensor], optimizer: str,
              rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds of the step alone and of the whole training step, per implementation;
    the implementations take turns within every round."""
    model.train()
    opts = {}
    for name, impl in IMPLEMENTATIONS.items():
        if optimizer == "sgd":
            opts[name] = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, **impl)
        else:
            opts[name] = torch.optim.AdamW(model.parameters(), lr=0.0, **impl)
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "whole": []} for n in opts}
    for r in range(rounds + 1):        # round 0 warms up (optimizer state allocated)
        for name, opt in opts.items():
            start = time.perf_counter()
            loss_fn().backward()
            mid = time.perf_counter()
            opt.step()
            end = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if r:
                times[name]["step"].append(end - mid)
                times[name]["whole"].append(end - start)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/optimizer-step")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {"LeNet-300-100 / SGD": (*vision_case(lenet_300_100(), 64), "sgd"),
             "LeNet-5 / SGD": (*vision_case(LeNet5(), 64), "sgd")}
    if not args.no_minilm and (case := minilm_case()) is not None:
        cases["MiniLM-L6 / AdamW"] = (*case, "adamw")
    rows, result = [], {"rounds": args.rounds, "threads": 1, "cases": {}}
    for label, (model, loss_fn, optimizer) in cases.items():
        rounds = max(3, args.rounds // 4) if "MiniLM" in label else args.rounds
        t = time_case(model, loss_fn, optimizer, rounds)
        result["cases"][label] = {"rounds": rounds, **t}
        rows.append({"model / optimizer": label,
                     "params": sum(p.numel() for p in model.parameters()),
                     **{f"{n} step ms": 1e3 * t[n]["step"] for n in IMPLEMENTATIONS},
                     "whole step ms, loop": 1e3 * t["loop"]["whole"],
                     "whole step ms, fused": 1e3 * t["fused"]["whole"],
                     "whole loop / fused": t["loop"]["whole"] / t["fused"]["whole"]})
    print(format_table(rows))
    run = RunDir(args.out)
    run.write_json("optimizer_step.json", result)
    run.write_text("table.md", format_table(rows) + "\n")


if __name__ == "__main__":
    main()
