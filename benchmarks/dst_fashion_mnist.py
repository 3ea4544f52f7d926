"""Benchmark: dynamic sparse training on Fashion-MNIST, LeNet-300-100 and LeNet-5.

Grid: sparsity 80/90/95/98% x {static, SET, RigL, GraNet}, plus dense, per model (34 runs for
both models). Settings: :func:`sparseprior.dst.experiments.grid_config` (SGD 0.05, momentum 0.9,
cosine, weight decay 1e-4, batch 128; ERK densities, output layer dense; masks updated every
100 steps until 75% of training with alpha 0.3; GraNet from density 0.5, pruned during the
first half of training).

Claims checked (table printed, JSON + PNG saved into ``--out``):

* RigL at 90% sparsity within 1 point of dense;
* at 98%: RigL and GraNet above SET above static.

Each run is a folder ``<out>/<model>-<method>-<sparsity>``: a rerun skips finished runs and
resumes interrupted ones. ``--jobs N`` runs N processes in parallel (each with one CPU thread;
with ``--device cuda`` they share the GPU). ``--budget S`` starts no new run after S seconds, so
the command ends in time and reports what finished. ``--extra-seeds 1,2`` repeats dense and the
90%/98% cells with more seeds (after the seed-0 grid); tables, claims and plots use the means.

Usage::

    python benchmarks/dst_fashion_mnist.py --device cuda --jobs 10 --epochs 20   # GPU machine
    python benchmarks/dst_fashion_mnist.py --models lenet300 --sparsities 0.9,0.98 \\
        --epochs 8 --out runs/bench-dst-fmnist-cpu                              # 2-core CPU
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from sparseprior.common.runs import RunDir
from sparseprior.dst.experiments import (
    GRID_METHODS,
    GRID_MODELS,
    GRID_SPARSITIES,
    MODEL_TITLES,
    Cell,
    grid_cells,
    grid_claims,
    grid_config,
    grid_table,
    plot_grid,
    run_name,
)
from sparseprior.report import format_table

_SPLITS: dict[Any, Any] = {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-dst-fmnist", help="results folder")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--models", default=",".join(GRID_MODELS))
    p.add_argument("--methods", default=",".join(GRID_METHODS))
    p.add_argument("--sparsities", default=",".join(f"{s:g}" for s in GRID_SPARSITIES))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--sparse-init", default="unscaled", choices=("unscaled", "rescaled"),
                   help="initial weights of the kept connections (DSTConfig.sparse_init)")
    p.add_argument("--subset", type=int, default=None, help="training images (default all)")
    p.add_argument("--extra-seeds", default="",
                   help="more seeds (comma-separated) for dense and the --seed-sparsities "
                        "cells, run after the whole seed-0 grid; results are means over seeds")
    p.add_argument("--seed-sparsities", default="0.9,0.98")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which no new run starts")
    p.add_argument("--no-dense", action="store_true", help="skip the dense runs")
    p.add_argument("--only-cells", default="",
                   help="run only these cells (comma-separated run names such as "
                        "lenet300-rigl-0.9-s1), in this order")
    return p.parse_args(argv)


def _run_cell(cell: Cell, args: argparse.Namespace, deadline: float | None
              ) -> dict[str, Any] | None:
    """One grid cell in this process (one CPU thread); ``None`` if past the deadline."""
    import torch

    from sparseprior.dst import load_splits, run_dst

    model, method, sparsity, seed = cell
    folder = Path(args.out) / run_name(*cell)
    if deadline is not None and time.time() > deadline and \
            not (folder / "summary.json").exists():
        return None
    torch.set_num_threads(1)
    config = grid_config(model, method, sparsity, epochs=args.epochs,
                         data_root=args.data_root, subset=args.subset, seed=seed,
                         delta_t=args.delta_t, sparse_init=args.sparse_init, num_threads=1)
    key = (args.data_root, args.subset, seed)
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(config)
    summary = run_dst(config, folder, device=args.device, splits=_SPLITS[key])
    summary.pop("layers", None)
    return summary


def run_grid(args: argparse.Namespace, cells: list[Cell],
             deadline: float | None, report: Any) -> list[dict[str, Any]]:
    """Run ``cells`` with ``args.jobs`` processes; ``report(summaries)`` after each one."""
    summaries: list[dict[str, Any]] = []

    def finished(cell: Cell, s: dict[str, Any] | None) -> None:
        if s is not None:
            summaries.append(s)
            logging.warning("done %s: acc %.4f sparsity %.4f (%.0f s)", run_name(*cell),
                            s["test_accuracy"], s["sparsity"], s["seconds"])
            report(summaries)

    if args.jobs <= 1:
        for cell in cells:
            finished(cell, _run_cell(cell, args, deadline))
        return summaries
    ctx = mp.get_context("spawn")   # CUDA-safe
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        pending: dict[Future, Cell] = {
            pool.submit(_run_cell, cell, args, deadline): cell for cell in cells}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cell = pending.pop(fut)
                try:
                    finished(cell, fut.result())
                except Exception as err:  # one failed cell must not lose the others
                    logging.error("run %s failed: %s", run_name(*cell), err)
    return summaries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    start = time.time()
    deadline = start + args.budget if args.budget else None
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    cells = grid_cells(models, methods, sparsities,
                       extra_seeds=[int(x) for x in args.extra_seeds.split(",") if x],
                       seed_sparsities=[float(x) for x in args.seed_sparsities.split(",") if x])
    if args.no_dense:
        cells = [c for c in cells if c[1] != "dense"]
    if args.only_cells:
        wanted = [n for n in args.only_cells.split(",") if n]
        by_name = {run_name(*c): c for c in cells}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise SystemExit(f"--only-cells: {unknown} are not cells of this grid")
        cells = [by_name[n] for n in wanted]
    out = RunDir(args.out)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0],
                                                             *(argv or sys.argv[1:])])

    def report(summaries: list[dict[str, Any]]) -> None:
        table = grid_table(summaries)
        claims = grid_claims(summaries)
        out.write_json("benchmark.json", {"command": command, "args": vars(args),
                                          "wall_seconds": time.time() - start,
                                          "runs": summaries, "table": table,
                                          "claims": claims})
        out.write_text("table.md", format_table(table) + "\n\n" + "\n".join(claims) + "\n")

    summaries = run_grid(args, cells, deadline, report)
    report(summaries)
    for model in models:
        if any(s["model"] == model for s in summaries):
            plot_grid(out.file(f"accuracy_vs_density_{model}.png"), summaries, model,
                      title=f"DST on Fashion-MNIST, {MODEL_TITLES.get(model, model)}, "
                            f"{args.epochs} epochs (mean over seeds)")
    done = {(s["model"], s["method"], round(float(s["target_sparsity"]), 4), s.get("seed", 0))
            for s in summaries}
    missing = [run_name(*c) for c in cells if (c[0], c[1], round(c[2], 4), c[3]) not in done]
    print(format_table(grid_table(summaries)))
    print("\n".join(grid_claims(summaries)))
    if missing:
        print(f"not finished within the budget: {missing}")
    print(f"wall {time.time() - start:.0f} s; {len(summaries)}/{len(cells)} runs; "
          f"results in {out.path}")


if __name__ == "__main__":
    main()
