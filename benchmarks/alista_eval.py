"""A trained solver checkpoint on the default problem: set-level NMSE, median sample, without the
densest sample, and on a 1000-sample test set drawn with another seed (same A).

    python benchmarks/alista_eval.py runs/alista-cpu/model.safetensors
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import UnrolledSolver, load_solver


def db(err: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(err.sum() / ref.sum()))


def evaluate(model: UnrolledSolver, problem: SparseRecoveryProblem) -> dict[str, Any]:
    """Layer-T NMSE (dB) on the problem's test set (set-level, median sample, densest sample,
    without it) and on 1000 samples of another seed."""
    x, y = problem.test_set()
    with torch.no_grad():
        out = model(y)[-1]
        x2, y2 = problem.sample(1000, generator=12345)
        out2 = model(y2)[-1]
    err, ref = ((out - x) ** 2).sum(1), (x**2).sum(1)
    nnz = (x != 0).sum(1)
    worst = int(nnz.argmax())
    keep = torch.arange(len(x)) != worst
    return {"test_db": db(err, ref),
            "test_median_sample_db": float((10 * torch.log10(err / ref)).median()),
            "densest_nnz": int(nnz[worst]), "densest_db": db(err[worst], ref[worst]),
            "without_densest_db": db(err[keep], ref[keep]),
            "other_seed_db": db((out2 - x2) ** 2, x2**2),
            "other_seed_densest_nnz": int((x2 != 0).sum(1).max())}


def report(r: dict[str, Any]) -> str:
    return (f"default test set: {r['test_db']:.2f} dB set-level, median sample "
            f"{r['test_median_sample_db']:.2f} dB\n"
            f"densest sample ({r['densest_nnz']} non-zeros): {r['densest_db']:.2f} dB; "
            f"without it: {r['without_densest_db']:.2f} dB\n"
            f"another seed's 1000-sample test set: {r['other_seed_db']:.2f} dB "
            f"(densest sample {r['other_seed_densest_nnz']} non-zeros)")


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/alista-cpu/model.safetensors"
    problem = SparseRecoveryProblem.generate(ProblemConfig())
    print(report(evaluate(load_solver(path, problem.A).eval(), problem)))
