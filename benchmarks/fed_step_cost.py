"""What the FedDST grid costs on this CPU, and whether grouping clients into one batch helps.

Times a LeNet-5 SGD step (forward, cross-entropy, backward, update; 1x28x28 inputs, one
thread) at the clients' batch size and at that batch times the clients per round (what one
grouped step over all clients of a round would process), in interleaved rounds, and reports
the per-sample cost of each and the grid's compute time extrapolated from the step count::

    OMP_NUM_THREADS=1 python benchmarks/fed_step_cost.py --out runs/fed-step-cost

Grid (the issue's): K = 100 clients of 600 images, C = 10 per round, E = 2 local epochs, batch
32, 200 rounds, 30 runs (5 strategies x 2 splits x 3 seeds). The extrapolation counts training
steps only (evaluation and aggregation come on top), so it is a lower bound.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch import nn

from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.models import LeNet5


def step_seconds(model: nn.Module, batch: int, steps: int, gen: torch.Generator) -> float:
    """Median seconds of one SGD step at ``batch`` over ``steps`` timed steps (after 3)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--per-round", type=int, default=10, help="clients per round C")
    ap.add_argument("--client-samples", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = LeNet5()
    batches = (args.batch, args.batch * args.per_round)
    per_sample: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.timing_rounds):          # interleaved: both sizes see the same load
        for b in batches:
            per_sample[b].append(step_seconds(model, b, args.steps, gen) / b)
    cost = {b: statistics.median(v) for b, v in per_sample.items()}
    steps_per_run = (args.rounds * args.per_round * args.epochs
                     * math.ceil(args.client_samples / args.batch))
    grid_s = steps_per_run * args.runs * cost[args.batch] * args.batch
    rows = [{"batch": b, "us per sample": f"{cost[b] * 1e6:.0f}",
             "ms per step": f"{cost[b] * b * 1e3:.2f}",
             "per-sample cost vs batch " + str(args.batch): f"{cost[b] / cost[args.batch]:.3f}"}
            for b in batches]
    print(format_table(rows))
    print(f"grid: {steps_per_run} steps per run x {args.runs} runs = "
          f"{grid_s / 3600:.2f} h of one core's training steps ({grid_s / 7200:.2f} h on two "
          f"cores); one batch of {args.per_round} clients' samples costs "
          f"{cost[batches[1]] / cost[args.batch]:.2f}x per sample")
    result = {"command": "python " + " ".join(sys.argv), "per_sample_s": per_sample,
              "median_per_sample_s": cost, "steps_per_run": steps_per_run,
              "grid_train_seconds_one_core": grid_s, "threads": 1}
    if args.out:
        RunDir(args.out).write_json("step_cost.json", result)
    return result


if __name__ == "__main__":
    main()
