"""ALISTA checkpoint on the default problem: set-level NMSE, median sample, without the densest
sample, and on a 1000-sample test set drawn with another seed (same A).

    python benchmarks/alista_eval.py runs/alista-cpu/model.safetensors
"""

import sys

import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import load_solver


def db(err: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(err.sum() / ref.sum()))


path = sys.argv[1] if len(sys.argv) > 1 else "runs/alista-cpu/model.safetensors"
problem = SparseRecoveryProblem.generate(ProblemConfig())
model = load_solver(path, problem.A).eval()
x, y = problem.test_set()
with torch.no_grad():
    out = model(y)[-1]
err, ref = ((out - x) ** 2).sum(1), (x**2).sum(1)
nnz = (x != 0).sum(1)
worst = int(nnz.argmax())
keep = torch.arange(len(x)) != worst
print(f"default test set: {db(err, ref):.2f} dB set-level, median sample "
      f"{float((10 * torch.log10(err / ref)).median()):.2f} dB")
print(f"densest sample ({int(nnz[worst])} non-zeros): {db(err[worst], ref[worst]):.2f} dB; "
      f"without it: {db(err[keep], ref[keep]):.2f} dB")
x2, y2 = problem.sample(1000, generator=12345)
with torch.no_grad():
    out2 = model(y2)[-1]
print(f"another seed's 1000-sample test set: {db((out2 - x2) ** 2, x2**2):.2f} dB "
      f"(densest sample {int((x2 != 0).sum(1).max())} non-zeros)")
