"""ALISTA checkpoint on the default problem: set-level, median, without the densest sample,
and on a 1000-sample test set drawn with another seed (same A)."""

import sys

import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import load_solver

prob = SparseRecoveryProblem.generate(ProblemConfig())
model = load_solver(sys.argv[1] if len(sys.argv) > 1 else "runs/alista-cpu/model.safetensors", prob.A)
model.eval()
x, y = prob.test_set()
with torch.no_grad():
    out = model(y)[-1]
err = ((out - x) ** 2).sum(1); ref = (x ** 2).sum(1)
per = 10 * torch.log10(err / ref)
nnz = (x != 0).sum(1)
worst = int(nnz.argmax())
keep = torch.arange(len(x)) != worst
print("set-level", float(10 * torch.log10(err.sum() / ref.sum())))
print("median sample", float(per.median()), "densest sample nnz", int(nnz[worst]), float(per[worst]))
print("without the densest sample", float(10 * torch.log10(err[keep].sum() / ref[keep].sum())))
x2, y2 = prob.sample(1000, generator=12345)
with torch.no_grad():
    out2 = model(y2)[-1]
print("other-seed 1000-sample test set", float(10 * torch.log10(((out2 - x2) ** 2).sum() / (x2 ** 2).sum())), "max nnz", int((x2 != 0).sum(1).max()))
