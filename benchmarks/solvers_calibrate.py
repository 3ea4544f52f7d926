"""Time of ``HyperLISTA.calibrate(A)`` on one CPU thread (target: <= 60 s), 250x500 and 1000x2000.

    OMP_NUM_THREADS=1 python benchmarks/solvers_calibrate.py

Prints process CPU time (the compute spent; robust on a shared machine) and wall time.
"""

import time

import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA

torch.set_num_threads(1)
for m, n in ((250, 500), (1000, 2000)):
    A = SparseRecoveryProblem.generate(ProblemConfig(m=m, n=n)).A
    c0, w0 = time.process_time(), time.perf_counter()
    model = HyperLISTA.calibrate(A, p=0.1)
    info = model.calibration
    print(f"{m}x{n}: cpu {time.process_time() - c0:.1f} s, "
          f"wall {time.perf_counter() - w0:.1f} s, samples {info['samples']}, "
          f"evals {info['evaluations']}, shipped {info['shipped_prior_nmse_db']:.2f} "
          f"-> calibrated {info['prior_nmse_db']:.2f} dB, best {info['best']}", flush=True)
