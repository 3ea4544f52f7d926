"""What the fine-tuning stages of staged training buy: train a solver with its preset keeping
only the first ``--stages`` stages per layer (1 = stage A only; the presets have 3), then report
training time (wall and process CPU) and the layer-16 NMSE of ``alista_eval.evaluate``.

    OMP_NUM_THREADS=1 python benchmarks/solvers_stages.py --solver LISTA-CPSS --budget cpu \\
        --stages 2 --out runs/stages-lista-cpss-2
    OMP_NUM_THREADS=1 python benchmarks/solvers_stages.py --solver ALISTA --budget cpu \\
        --stages 1 --out runs/stages-alista-1

Writes ``<out>/model.safetensors`` (+ ``.json``) and ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alista_eval import evaluate, report
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.training import budget_for, train_staged
from sparseprior.solvers.unrolled import build_solver, save_solver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solver", default="LISTA-CPSS")
    p.add_argument("--budget", default="cpu")
    p.add_argument("--stages", type=int, default=2, help="stages kept per layer (1..3)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--max-stage-steps", type=int, default=None,
                   help="cap every stage's steps (a smoke test; default: the preset's caps)")
    p.add_argument("--prefix-pool", type=int, default=None,
                   help="stage A trains on a pool of this many samples run once through the "
                        "frozen layers (StagedTrainingConfig.prefix_pool; default: the preset's)")
    p.add_argument("--fine-tune-window", type=int, default=None,
                   help="fine-tuning stages train only the last K layers "
                        "(StagedTrainingConfig.fine_tune_window; default: the preset's)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed (StagedTrainingConfig.seed; default: the preset's)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    config = budget_for(args.solver, args.budget)
    keep = args.stages - 1
    if not 0 <= keep <= len(config.fine_tune_lrs):
        raise SystemExit(f"--stages must be 1..{config.num_stages}")
    caps = config.max_steps_fine_tune
    config = config.replace(fine_tune_lrs=config.fine_tune_lrs[:keep],
                            max_steps_fine_tune=caps[:keep] if isinstance(caps, tuple) else caps)
    if args.max_stage_steps is not None:
        config = config.replace(max_steps_per_stage=args.max_stage_steps,
                                max_steps_fine_tune=args.max_stage_steps)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.prefix_pool is not None:
        config = config.replace(prefix_pool=args.prefix_pool)
    if args.fine_tune_window is not None:
        config = config.replace(fine_tune_window=args.fine_tune_window)
    problem = SparseRecoveryProblem.generate(ProblemConfig())
    model = build_solver(args.solver, problem.A, num_layers=args.layers)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_staged(model, problem, config, device="cpu", progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    save_solver(model, args.out / "model", meta={"stages": args.stages, "budget": args.budget})
    figures = evaluate(model, SparseRecoveryProblem.generate(ProblemConfig()))
    out = {"solver": args.solver, "budget": args.budget, "stages": args.stages,
           "prefix_pool": config.prefix_pool, "fine_tune_window": config.fine_tune_window,
           "seed": config.seed,
           "threads": torch.get_num_threads(), "wall_s": wall, "cpu_s": cpu,
           "steps": sum(r.steps for r in result.history),
           "val_nmse_db": result.val_nmse_db[-1], **figures,
           "stages_run": [{k: v for k, v in r.to_dict().items() if k != "curve"}
                          for r in result.history]}
    (args.out / "result.json").write_text(json.dumps(out, indent=1))
    print(f"{args.solver}, {args.stages} stage(s) per layer: {out['steps']} steps, "
          f"{wall:.0f} s wall, {cpu:.0f} s CPU; validation {out['val_nmse_db']:.2f} dB")
    print(report(figures))


if __name__ == "__main__":
    main()
