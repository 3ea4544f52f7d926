"""What the optimizer implementation costs per training step on the CPU: loop, foreach, fused.

PyTorch picks the per-tensor Python loop for CPU tensors unless told otherwise; the Trainer now
asks for the fused kernels (``engine.optim.fused_option``). For each model and optimizer this
times, in interleaved rounds on one thread, the ``optimizer.step()`` alone and the whole training
step (forward, cross-entropy, backward, step) with each implementation, and reports the median
seconds and the whole-step ratio loop / fused::

    OMP_NUM_THREADS=1 python benchmarks/optimizer_step.py --out runs/optimizer-step
    ... --earlybert-run runs/eb/seed0   # also that EarlyBERT ticket's slim model

With an EarlyBERT run it prints the full/slim training-step ratio under each optimizer
implementation: how much of EarlyBERT's step-timing saving the optimizer accounts for.

Models: LeNet-300-100 and LeNet-5 on 1x28x28 inputs (batch 64, SGD with momentum as the DST
and federated benchmarks train them), and all-MiniLM-L6-v2 with a classifier on 32 x 64 tokens
(AdamW as EarlyBERT trains it; skipped when the ``nlp`` extra or the model wheel is missing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


def minilm_cases(earlybert_run: Path | None
                 ) -> dict[str, tuple[nn.Module, Callable[[], torch.Tensor], str]]:
    """The MiniLM classifier, and with ``earlybert_run`` also the slim model of that run's
    ticket (its ``phases/search.json``) on the pre-trained weights."""
    try:
        from sparseprior.nlp.experiment import stored_ticket_masks
        from sparseprior.nlp.model import TextClassifier, load_encoder
        from sparseprior.nlp.slim import slim_
        models = {"MiniLM-L6 / AdamW": TextClassifier(load_encoder(), 2)}
    except (ImportError, OSError, ValueError) as err:
        print(f"MiniLM skipped: {err}")
        return {}
    if earlybert_run is not None:
        found = RunDir(earlybert_run).read_json("phases/search.json")
        models["MiniLM-L6 slim ticket / AdamW"] = slim_(TextClassifier(load_encoder(), 2),
                                                         *stored_ticket_masks(found))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 64), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = torch.randint(0, 2, (32,), generator=g)
    return {label: (m, lambda m=m: F.cross_entropy(m(batch), y), "adamw")
            for label, m in models.items()}


def _optimizer(model: nn.Module, optimizer: str, impl: dict) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, **impl)
    return torch.optim.AdamW(model.parameters(), lr=0.0, **impl)


def time_cases(cases: dict[str, tuple[nn.Module, Callable[[], torch.Tensor], str]],
               rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per case and implementation, the median seconds of the step alone and of the whole
    training step; every case and implementation takes a turn within every round."""
    turns = [(label, name, loss_fn, _optimizer(model, optimizer, impl))
             for label, (model, loss_fn, optimizer) in cases.items()
             for name, impl in IMPLEMENTATIONS.items()]
    for model, _, _ in cases.values():
        model.train()
    times = {(label, name): {"step": [], "whole": []} for label, name, _, _ in turns}
    for r in range(rounds + 1):        # round 0 warms up (optimizer state allocated)
        for label, name, loss_fn, opt in turns:
            start = time.perf_counter()
            loss_fn().backward()
            mid = time.perf_counter()
            opt.step()
            end = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if r:
                times[label, name]["step"].append(end - mid)
                times[label, name]["whole"].append(end - start)
    out: dict[str, dict[str, dict[str, float]]] = {label: {} for label in cases}
    for (label, name), t in times.items():
        out[label][name] = {k: statistics.median(v) for k, v in t.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/optimizer-step")
    ap.add_argument("--rounds", type=int, default=20,
                    help="rounds for the LeNets; MiniLM gets a quarter (at least 3)")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--earlybert-run", type=Path, default=None,
                    help="an EarlyBERT run folder (seed<k>/ with phases/search.json): also time "
                         "its slim ticket and report the full/slim step ratio per optimizer")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    groups = [({"LeNet-300-100 / SGD": (*vision_case(lenet_300_100(), 64), "sgd"),
                "LeNet-5 / SGD": (*vision_case(LeNet5(), 64), "sgd")}, args.rounds)]
    if not args.no_minilm:
        groups.append((minilm_cases(args.earlybert_run), max(3, args.rounds // 4)))
    rows, result = [], {"rounds": args.rounds, "threads": 1, "cases": {}}
    for cases, rounds in groups:
        for label, t in time_cases(cases, rounds).items():
            result["cases"][label] = {"rounds": rounds, **t}
            rows.append({"model / optimizer": label,
                         "params": sum(p.numel() for p in cases[label][0].parameters()),
                         **{f"{n} step ms": 1e3 * t[n]["step"] for n in IMPLEMENTATIONS},
                         "whole step ms, loop": 1e3 * t["loop"]["whole"],
                         "whole step ms, fused": 1e3 * t["fused"]["whole"],
                         "whole loop / fused": t["loop"]["whole"] / t["fused"]["whole"]})
    print(format_table(rows))
    cases = result["cases"]
    if "MiniLM-L6 slim ticket / AdamW" in cases:
        full, slim = cases["MiniLM-L6 / AdamW"], cases["MiniLM-L6 slim ticket / AdamW"]
        result["earlybert_step_ratio"] = {n: full[n]["whole"] / slim[n]["whole"]
                                          for n in IMPLEMENTATIONS}
        print("EarlyBERT training step full/slim: " + ", ".join(
            f"{n} {r:.3f}x" for n, r in result["earlybert_step_ratio"].items()))
    run = RunDir(args.out)
    run.write_json("optimizer_step.json", result)
    run.write_text("table.md", format_table(rows) + "\n")


if __name__ == "__main__":
    main()
