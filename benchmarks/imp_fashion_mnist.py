"""Benchmark: IMP with rewinding on LeNet-300-100, full Fashion-MNIST, vs its two controls.

Claims checked (table printed, JSON + PNG saved into ``--out``):

* IMP tickets keep the dense test accuracy (within 0.5 points) down to about 10% density;
* they beat random re-initialisation (same mask, new init) at every density <= 10%;
* and random pruning (random mask with the same per-layer densities, rewound weights).

Settings: :func:`sparseprior.tickets.experiments.imp_experiment_config` (``full``): 16 levels at
20%/level (density 2.8%), global magnitude ranking with the output layer dense, rewind to the
initialisation (k = 0), Adam lr 1.2e-3 with cosine decay, batch 128, 6 epochs per level, one
CPU thread.
Resumable: rerun the same command to continue an interrupted run.

Usage::

    python benchmarks/imp_fashion_mnist.py --out runs/bench-imp-fmnist        # ~25 min, 2 cores
    python benchmarks/imp_fashion_mnist.py --levels 2 --out runs/bench-imp-probe  # timing probe
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
from sparseprior.tickets.experiments import (
    imp_experiment_config,
    imp_series,
    imp_table,
    plot_accuracy_vs_density,
)
from sparseprior.tickets.imp import run_imp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = imp_experiment_config("full")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-imp-fmnist", help="results folder")
    p.add_argument("--dataset", default=full.dataset)
    p.add_argument("--subset", type=int, default=full.subset, help="training images")
    p.add_argument("--levels", type=int, default=full.levels)
    p.add_argument("--rate", type=float, default=full.rate)
    p.add_argument("--scope", default=full.scope)
    p.add_argument("--rewind-step", type=int, default=full.rewind_step)
    p.add_argument("--epochs", type=int, default=full.train.epochs)
    p.add_argument("--batch-size", type=int, default=full.train.batch_size)
    p.add_argument("--optimizer", default=full.train.optimizer)
    p.add_argument("--lr", type=float, default=full.train.lr)
    p.add_argument("--seed", type=int, default=full.init_seed)
    p.add_argument("--no-controls", action="store_true", help="skip reinit/random controls")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def claims(result, table: list[dict]) -> list[str]:
    """One line per claim, with PASS/MISS, from the measured rows."""
    dense = result.dense_accuracy
    rows = result.rows()
    lines = []
    within = [r for r in rows if r["imp_acc"] >= dense - 0.005]
    lowest = min(r["density"] for r in within)
    lines.append(f"[{'PASS' if lowest <= 0.11 else 'MISS'}] tickets within 0.5 points of dense "
                 f"({dense:.2%}) down to density {lowest:.1%} (target: about 10%)")
    for key, name in (("reinit_acc", "random reinit"), ("random_acc", "random pruning")):
        sparse = [r for r in rows if r["density"] <= 0.1 and r.get(key) is not None]
        if sparse:
            wins = sum(r["imp_acc"] > r[key] for r in sparse)
            lines.append(f"[{'PASS' if wins == len(sparse) else 'MISS'}] tickets beat {name} "
                         f"at {wins}/{len(sparse)} densities <= 10%")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sparseprior.engine.trainer").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    config = imp_experiment_config(
        "full", args.dataset, subset=args.subset, levels=args.levels, rate=args.rate,
        scope=args.scope, rewind_step=args.rewind_step, init_seed=args.seed,
        ablations=[] if args.no_controls else ["reinit", "random"],
        train={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
               "optimizer": args.optimizer, "num_threads": args.threads, "seed": args.seed})
    out = Path(args.out)
    start = time.perf_counter()
    result = run_imp(config, out, device=args.device)
    wall = time.perf_counter() - start
    table = imp_table(result)
    lines = claims(result, table)
    train_seconds = sum(s["seconds"] for s in result.levels) + sum(
        s["seconds"] for items in result.controls.values() for s in items)
    plot_accuracy_vs_density(out / "accuracy_vs_density.png", imp_series(result),
                             dense_accuracy=result.dense_accuracy,
                             title=f"IMP with rewinding (k={config.rewind_step}), LeNet-300-100, "
                                   f"{config.dataset}")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    RunDir(out).write_json("benchmark.json", {
        "command": command, "config": config.to_dict(), "wall_seconds_this_call": wall,
        "train_seconds_all_levels": train_seconds, "table": table, "claims": lines,
        "result": result.to_dict()})
    RunDir(out).write_text("table.md", format_table(table) + "\n\n" + "\n".join(lines) + "\n")
    print(format_table(table))
    print("\n".join(lines))
    print(f"wall time of this call: {wall:.0f} s; training time summed over all levels and "
          f"controls: {train_seconds:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
