"""Sparse recovery y = A x*: 16 layers of HyperLISTA (3 shipped hyperparameters, no training)
vs ISTA, FISTA and FISTA with lambda-continuation (the strongest LASSO baseline), and Bayes-AMP
told the prior (as fast as HyperLISTA on this i.i.d. Gaussian A; it diverges on ill-conditioned
ones).

Runs in about 10 s on a 2-core CPU. NMSE(dB) = 10 log10(sum |x_hat - x*|^2 / sum |x*|^2) over
the whole test set (docs/solvers.md).
"""

import torch

from sparseprior.solvers.amp import bayes_amp
from sparseprior.solvers.classic import fista, fista_continuation, ista
from sparseprior.solvers.metrics import nmse_db_per_step
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA, build_solver

torch.manual_seed(0)
problem = SparseRecoveryProblem.generate(ProblemConfig(m=250, n=500, p=0.1, seed=0))
x, y = problem.test_set()
x, y = x[:200], y[:200]                                     # (200, 500), (200, 250)

model = build_solver("HyperLISTA", problem.A, num_layers=16)  # the shipped c_beta, c_theta, c_ss
with torch.no_grad():
    learned = nmse_db_per_step(model(y), x)
print(f"HyperLISTA ({model.n_params} hyperparameters): {learned[-1]:.1f} dB after 16 layers")
told = HyperLISTA.for_problem(problem, num_layers=16)       # told the prior's p (and SNR)
with torch.no_grad():
    print(f"HyperLISTA told p = 0.1:     {nmse_db_per_step(told(y), x)[-1]:.1f} dB after 16 layers")

for name, solve, lam in (("ISTA", ista, 2e-3), ("FISTA", fista, 2e-3),
                         ("FISTA + continuation", fista_continuation, 1e-5)):
    trace = solve(problem.A, y, lam, max_iter=300, x_true=x).nmse_db
    print(f"{name:21s} (lambda {lam:g}): {trace[15]:.1f} dB after 16 iterations, "
          f"{trace[-1]:.1f} dB after 300")

amp = bayes_amp(problem.A, y, p=0.1, max_iter=16, x_true=x).nmse_db
print(f"Bayes-AMP (told p = 0.1):   {amp[-1]:.1f} dB after 16 iterations")
