"""Benchmark: Early-Bird tickets on Fashion-MNIST with vgg-small (CPU, one thread).

Claims checked (printed as a table, saved as JSON + PNG into ``--out``):

* the ticket is drawn early (epoch of the draw, FIFO mask distance below the threshold);
* the slimmed network has >= 40% fewer FLOPs (and fewer parameters) than the full one;
* after retraining it is within 1 point of the full network trained for the same epochs;
* the total training FLOPs (search on the full net + retraining the slim net) are lower.

Usage::

    python benchmarks/earlybird.py                   # ~10 min on a 2-core CPU
    python benchmarks/earlybird.py --quick           # the `reproduce` quick config, < 1 min
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from sparseprior.common.runs import RunDir
from sparseprior.report import format_table
from sparseprior.tickets.earlybird import (
    EarlyBirdConfig,
    result_rows,
    run_earlybird,
    section_config,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = section_config("full")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-earlybird", help="results folder")
    p.add_argument("--quick", action="store_true", help="the reproduce quick config")
    p.add_argument("--model", default=full.model)
    p.add_argument("--width", type=float, default=full.width)
    p.add_argument("--dataset", default=full.dataset)
    p.add_argument("--subset", type=int, default=full.subset, help="training images")
    p.add_argument("--epochs", type=int, default=full.epochs, help="baseline epochs (budget)")
    p.add_argument("--search-epochs", type=int, default=full.search_epochs_max)
    p.add_argument("--prune-ratio", type=float, default=full.prune_ratio)
    p.add_argument("--fifo", type=int, default=full.fifo_size)
    p.add_argument("--threshold", type=float, default=full.distance_threshold)
    p.add_argument("--l1", type=float, default=full.l1_lambda)
    p.add_argument("--lr", type=float, default=full.train.lr, help="SGD lr of every phase")
    p.add_argument("--retrain-init", default=full.retrain_init, choices=["inherit", "reinit"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> EarlyBirdConfig:
    if args.quick:
        quick = section_config("quick")
        return quick.replace(train=quick.train.replace(num_threads=args.threads, seed=args.seed))
    train = section_config("full").train.replace(epochs=args.epochs, lr=args.lr,
                                                 num_threads=args.threads, seed=args.seed)
    return EarlyBirdConfig(
        model=args.model, width=args.width, dataset=args.dataset, subset=args.subset,
        search_epochs_max=args.search_epochs, prune_ratio=args.prune_ratio,
        fifo_size=args.fifo, distance_threshold=args.threshold, l1_lambda=args.l1,
        retrain_init=args.retrain_init, train=train)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("sparseprior.engine.trainer").setLevel(logging.WARNING)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = make_config(args)
    run = RunDir(args.out)
    start = time.perf_counter()
    result = run_earlybird(config, run, device=args.device)
    wall = time.perf_counter() - start
    rows = result_rows(result)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    dist = ", ".join("-" if d is None else f"{d:.3f}" for d in result["distances"])
    lines = [
        format_table(rows), "",
        f"drawn: {result['drawn']} at epoch {result['drawn_epoch']} "
        f"(max FIFO distance per epoch: {dist})",
        f"kept channels: {100 * result['kept_channel_fraction']:.1f}%; slim test acc before "
        f"retraining: {100 * result['slim']['test_acc_before_retrain']:.2f}%; max |masked - "
        f"slim| output difference: {result['max_abs_diff_masked_vs_slim']:.2e}",
        "phase wall times (s): " + ", ".join(f"{k} {v:.0f}"
                                             for k, v in result["wall_time"].items()),
        f"command: {command}", f"wall time: {wall:.0f} s ({wall / 60:.1f} min), "
        f"torch threads {torch.get_num_threads()}",
    ]
    text = "\n".join(lines)
    print(text)
    run.write_text("table.md", text + "\n")
    run.write_json("benchmark.json", {"rows": rows, "command": command, "wall_time_s": wall,
                                      "threads": torch.get_num_threads(), "result": result})
    print(f"saved {Path(args.out) / 'benchmark.json'}, {Path(args.out) / 'mask_distance.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
