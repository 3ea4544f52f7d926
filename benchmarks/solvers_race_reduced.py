"""The honest race on the default problem at a reduced size (shipped HyperLISTA, no retuning).

    OMP_NUM_THREADS=1 python benchmarks/solvers_race_reduced.py

Classic baselines are tuned on the validation set; see ``sparseprior.solvers.headline``. The
full race: ``sparseprior solvers bench --suite headline`` (1000 test samples, 10,000 problems).
"""

from pathlib import Path

import torch

from sparseprior.common.runs import RunDir
from sparseprior.solvers.headline import HeadlineConfig, run_headline_problem

torch.set_num_threads(1)
cfg = HeadlineConfig(problems=("default",), models=("HyperLISTA",), n_eval=200, n_wall=1000,
                     ista_iters=2000, fista_iters=1000, lams=(1e-2, 1e-3, 1e-4),
                     grid_factors=(1.0,), grid_rounds=1, lam_min=1e-6)
data = run_headline_problem(RunDir("runs/race-reduced"), "default", cfg)
print(Path("runs/race-reduced/table.md").read_text())
print(data["baseline_floor_db"])
