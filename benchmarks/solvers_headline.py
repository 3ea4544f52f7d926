"""Headline benchmark driver (used by ``benchmarks/device/solvers.sh``; no Optuna needed).

    python benchmarks/solvers_headline.py train --problem snr30 --out W --device cuda \
        --models ALISTA,LISTA-CPSS,LISTA --stage-steps 1500,2000,2000 --budget gpu
    python benchmarks/solvers_headline.py bench --problem snr30 --out W --device cuda
    python benchmarks/solvers_headline.py race --out W --device cuda     # all problems, serially
    python benchmarks/solvers_headline.py summarize --out W

``train`` writes ``W/ckpt/<problem>/<solver>.safetensors`` (+ ``.json``); ``bench`` runs
:func:`sparseprior.solvers.headline.run_headline_problem` with those checkpoints into
``W/headline/<problem>`` (``--no-wall``: without the wall-clock race); ``race`` runs the
wall-clock race for every benchmarked problem one after the other (so no other process
shares the device while it is timed); ``summarize`` writes ``W/headline/summary.{json,md}``.
The same results come from ``sparseprior solvers headline --checkpoints W/ckpt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sparseprior.common.device import resolve_device
from sparseprior.common.runs import RunDir
from sparseprior.solvers.headline import (
    HEADLINE_PROBLEMS,
    HeadlineConfig,
    add_wall_clock,
    run_headline_problem,
    summarize_headline,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.training import budget_for, train_staged
from sparseprior.solvers.unrolled import build_solver, save_solver


def train(args: argparse.Namespace) -> None:
    """Train each model for one problem within its step budget (``--stage-steps``: a cap on
    every stage's optimizer steps per model; default the preset's caps); save checkpoints.
    Budgets are steps, so the result does not depend on the machine's load."""
    dev = resolve_device(args.device)
    problem = SparseRecoveryProblem.generate(ProblemConfig(m=args.m, n=args.n,
                                                           **HEADLINE_PROBLEMS[args.problem]))
    models = args.models.split(",")
    caps = ([int(s) for s in args.stage_steps.split(",")] if args.stage_steps
            else [None] * len(models))
    if len(caps) != len(models):
        raise SystemExit(f"--stage-steps needs one cap per model ({len(models)})")
    for name, cap in zip(models, caps, strict=True):
        start = time.perf_counter()
        model = build_solver(name, problem.A, num_layers=args.layers)
        config = budget_for(name, args.budget)
        if cap is not None:
            config = config.replace(max_steps_per_stage=cap, max_steps_fine_tune=cap)
        result = train_staged(model, problem, config, device=dev, progress=False)
        wall = time.perf_counter() - start
        path = Path(args.out) / "ckpt" / args.problem / name
        save_solver(model.cpu(), path, meta={"train_seconds": result.total_wall_s,
                                             "val_nmse_db": result.val_nmse_db[-1],
                                             "budget": args.budget, "device": str(dev),
                                             "steps": sum(r.steps for r in result.history)})
        print(f"[train] {args.problem} {name}: {sum(r.steps for r in result.history)} steps "
              f"in {wall:.1f} s, val NMSE L{args.layers} {result.val_nmse_db[-1]:.2f} dB",
              flush=True)


def bench(args: argparse.Namespace) -> None:
    """The headline benchmark on one problem with the trained checkpoints."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = HeadlineConfig(problems=(args.problem,), models=tuple(args.models.split(",")),
                            num_layers=args.layers, ista_iters=args.ista_iters,
                            fista_iters=args.fista_iters, n_eval=args.n_eval,
                            n_wall=args.n_wall, m=args.m, n=args.n, budget=args.budget,
                            max_train_steps=args.max_train_steps,
                            wall_clock=not args.no_wall)
    start = time.perf_counter()
    data = run_headline_problem(RunDir(Path(args.out) / "headline" / args.problem),
                                args.problem, config,
                                checkpoints=Path(args.out) / "ckpt",
                                device=resolve_device(args.device))
    print(f"[bench] {args.problem} done in {time.perf_counter() - start:.1f} s", flush=True)
    for row in data["table"]:
        print("  " + json.dumps(row), flush=True)


def race(args: argparse.Namespace) -> None:
    """The wall-clock race for every problem with a ``headline.json``, serially."""
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in HEADLINE_PROBLEMS:
        run = RunDir(Path(args.out) / "headline" / name)
        if not run.file("headline.json").is_file():
            continue
        start = time.perf_counter()
        data = add_wall_clock(run, Path(args.out) / "ckpt", resolve_device(args.device),
                              args.n_wall)
        speed = {k: round(v.get("speedup_vs_FISTA", float("nan")), 2)
                 for k, v in data["wall_clock"]["solvers"].items()}
        print(f"[race] {name}: speedup vs FISTA {speed} ({time.perf_counter() - start:.1f} s)",
              flush=True)


def summarize(args: argparse.Namespace) -> None:
    from sparseprior.report.report import format_table

    print(format_table(summarize_headline(Path(args.out) / "headline")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "bench", "race", "summarize"])
    parser.add_argument("--problem", default="default", choices=list(HEADLINE_PROBLEMS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="ALISTA,LISTA-CPSS,LISTA")
    parser.add_argument("--stage-steps", default=None,
                        help="per model, a cap on every stage's optimizer steps (e.g. "
                             "1500,2000,2000); default: the preset's caps")
    parser.add_argument("--budget", default="gpu")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--ista-iters", type=int, default=3000)
    parser.add_argument("--fista-iters", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=None)
    parser.add_argument("--n-wall", type=int, default=10_000)
    parser.add_argument("--max-train-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-wall", action="store_true")
    parser.add_argument("--m", type=int, default=250)
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args(argv)
    {"train": train, "bench": bench, "race": race, "summarize": summarize}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
