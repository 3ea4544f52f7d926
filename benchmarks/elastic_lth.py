"""Benchmark: Elastic LTH on the MLP family, full Fashion-MNIST (CPU, one thread).

A ticket found by IMP on MLP [256, 256] (1 hidden-to-hidden layer) is stretched to 4 hidden
layers by replicating the hidden-to-hidden layer (mapping ``0:0,1,2``), weights at the rewind
step and mask alike, retrained with the same schedule, and compared with the ticket IMP finds
directly on MLP [256]*4 at the same density (the direct run's rate is set so that its last
level lands on the transformed ticket's density), and with the dense deeper MLP.

Settings: :func:`sparseprior.tickets.experiments.elastic_experiment_config` (``full``): 5 IMP
levels at 36%/level (density ~10%), global ranking, rewind to init (k = 0), Adam 1.2e-3 with
cosine decay, batch 128, 6 epochs per training. ``--extra-levels`` also transforms the tickets
of earlier levels (one training each) for the plot.

Usage::

    python benchmarks/elastic_lth.py --out runs/bench-elastic-mlp        # ~10 min, 2 cores
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
from sparseprior.tickets.elastic import ElasticConfig, run_elastic
from sparseprior.tickets.experiments import elastic_experiment_config, elastic_plot
from sparseprior.tickets.imp import load_imp_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = elastic_experiment_config("full")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-elastic-mlp", help="results folder")
    p.add_argument("--dataset", default=full.source.dataset)
    p.add_argument("--subset", type=int, default=full.source.subset)
    p.add_argument("--hidden", default="256,256", help="source MLP widths (equal)")
    p.add_argument("--target-depth", type=int, default=full.target_depth,
                   help="hidden layers of the target MLP")
    p.add_argument("--mapping", default=full.mapping, help="default: replicate")
    p.add_argument("--levels", type=int, default=full.source.levels)
    p.add_argument("--rate", type=float, default=full.source.rate)
    p.add_argument("--epochs", type=int, default=full.source.train.epochs)
    p.add_argument("--extra-levels", default="2,3", help="also transform these levels' tickets")
    p.add_argument("--seed", type=int, default=full.source.init_seed)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def _row(name: str, s: dict, depth: int | None = None) -> dict:
    return {"network": name, "hidden layers": s.get("depth", depth), "level": s["level"],
            "density %": round(100 * s["density"], 2),
            "test acc %": round(100 * s["test_accuracy"], 2)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sparseprior.engine.trainer").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    config = elastic_experiment_config(
        "full", args.dataset, subset=args.subset, model_options={"hidden": hidden},
        levels=args.levels, rate=args.rate, init_seed=args.seed, target_depth=args.target_depth,
        mapping=args.mapping,
        train={"epochs": args.epochs, "num_threads": args.threads, "seed": args.seed})
    out = Path(args.out)
    start = time.perf_counter()
    result = run_elastic(config, out, device=args.device)
    extra = []
    for level in [int(v) for v in args.extra_levels.split(",") if v.strip()]:
        if level >= args.levels:
            continue
        more = run_elastic(ElasticConfig(source_run=str(out / "source"), level=level,
                                         target_depth=args.target_depth, mapping=args.mapping,
                                         compare=False),
                           out / f"extra_level_{level:02d}", device=args.device)
        extra.append(more.transformed)
    wall = time.perf_counter() - start

    names = {"source ticket (IMP)": f"IMP ticket, MLP {hidden}",
             "elastic ticket (transformed)": f"elastic ticket -> {args.target_depth} layers",
             "target ticket (IMP on target)": f"IMP ticket found on {args.target_depth} layers",
             "target dense": f"dense MLP, {args.target_depth} layers"}
    summaries = [result.source, result.transformed, result.target_imp, result.target_dense]
    table = [_row(name, s) for name, s in zip(names.values(), summaries, strict=True)]
    table += [_row(f"elastic ticket -> {args.target_depth} layers", s) for s in extra]
    source_curve = load_imp_result(out / "source").levels
    target_curve = load_imp_result(out / "target_imp").levels
    table += [_row(f"IMP ticket, MLP {hidden}", s, len(hidden)) for s in source_curve[1:-1]]
    table += [_row(f"IMP ticket found on {args.target_depth} layers", s, args.target_depth)
              for s in target_curve[1:-1]]
    transformed, direct = result.transformed, result.target_imp
    dense = result.target_dense
    lines = [f"elastic ticket vs IMP directly on {args.target_depth} hidden layers at density "
             f"{transformed['density']:.1%}: "
             f"{100 * (transformed['test_accuracy'] - direct['test_accuracy']):+.2f} points",
             f"elastic ticket vs dense {args.target_depth}-layer MLP: "
             f"{100 * (transformed['test_accuracy'] - dense['test_accuracy']):+.2f} points",
             f"training time for a {args.target_depth}-layer ticket: elastic "
             f"{transformed['seconds']:.0f} s (one training; the source IMP run on the "
             f"shallower MLP took {sum(s['seconds'] for s in source_curve):.0f} s) vs IMP "
             f"directly on it {sum(s['seconds'] for s in target_curve):.0f} s "
             f"({len(target_curve)} trainings)"]
    elastic_plot(out / "elastic.png", result, out / "source", out / "target_imp", extra)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    train_seconds = sum(s["seconds"] for s in [*source_curve, *target_curve, transformed, *extra])
    RunDir(out).write_json("benchmark.json", {
        "command": command, "config": config.to_dict(), "mapping": result.mapping,
        "wall_seconds_this_call": wall, "train_seconds_all": train_seconds, "table": table,
        "claims": lines, "result": result.to_dict(), "extra": extra})
    RunDir(out).write_text("table.md", format_table(table) + "\n\n" + "\n".join(lines) + "\n")
    print(f"mapping: {result.mapping}")
    print(format_table(table))
    print("\n".join(lines))
    print(f"wall time of this call: {wall:.0f} s; training time summed over every network: "
          f"{train_seconds:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
