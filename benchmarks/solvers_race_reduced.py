"""The honest race on the default problem at a reduced size.

    OMP_NUM_THREADS=1 python benchmarks/solvers_race_reduced.py               # shipped setting
    OMP_NUM_THREADS=1 python benchmarks/solvers_race_reduced.py --calibrated  # calibrated for A
    OMP_NUM_THREADS=1 python benchmarks/solvers_race_reduced.py --setting 1.0,3.6,3.0 --blind \
        --out runs/race-reduced-previous      # a given setting (here the previous shipped one)
    OMP_NUM_THREADS=1 python benchmarks/solvers_race_reduced.py --momentum marchenko-pastur \
        --out runs/race-reduced-mp            # the Marchenko-Pastur momentum rule, its defaults

Default: the shipped HyperLISTA, no retuning (told the problem's p). ``--calibrated``: the
HyperLISTA that ``HyperLISTA.calibrate(A, p)`` tunes on prior samples of another seed (no
validation or test data); ``--setting c_beta,c_theta,c_ss``: that setting (``--blind``: not
told p, as before the sparsity factor existed). Either is written to
``<out>/given/default/HyperLISTA.safetensors`` and raced from there. Classic baselines are
tuned on the validation set; see ``sparseprior.solvers.headline``. The full race:
``sparseprior solvers bench --suite headline`` (1000 test samples, 10,000 problems).
"""

import argparse
from pathlib import Path

import torch

from sparseprior.common.runs import RunDir
from sparseprior.solvers.headline import HeadlineConfig, run_headline_problem
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import MOMENTUM_RULES, HyperLISTA, save_solver

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--calibrated", action="store_true")
ap.add_argument("--setting", default=None, help="c_beta,c_theta,c_ss")
ap.add_argument("--blind", action="store_true", help="with --setting: do not tell it p")
ap.add_argument("--momentum", choices=MOMENTUM_RULES, default="linear",
                help="HyperLISTA's momentum rule (its own defaults unless --setting)")
ap.add_argument("--out", default=None, help="default: runs/race-reduced[-calibrated]")
args = ap.parse_args()
if args.calibrated and args.setting:
    raise SystemExit("give --calibrated or --setting, not both")
out = Path(args.out or ("runs/race-reduced-calibrated" if args.calibrated
                        else "runs/race-reduced"))
torch.set_num_threads(1)
checkpoints = None
if args.calibrated or args.setting or args.momentum != "linear":
    A = SparseRecoveryProblem.generate(ProblemConfig()).A
    p = None if args.blind else ProblemConfig().p
    if args.calibrated:
        model = HyperLISTA.calibrate(A, p=ProblemConfig().p, seed=17, momentum=args.momentum)
        meta = {"calibration": model.calibration}
    else:
        values = ({} if args.setting is None else
                  dict(zip(HyperLISTA.HYPERPARAMETERS,
                           (float(v) for v in args.setting.split(",")), strict=True)))
        model = HyperLISTA(A, p=p, momentum=args.momentum, **values)
        meta = {"setting": model.hyperparameters, "told_p": p, "momentum": args.momentum}
    checkpoints = out / "given"
    save_solver(model, checkpoints / "default" / "HyperLISTA", meta=meta)
    print("racing:", model.hyperparameters, "p:", model.p)
cfg = HeadlineConfig(problems=("default",), models=("HyperLISTA",), n_eval=200, n_wall=1000,
                     ista_iters=2000, fista_iters=1000, lams=(1e-2, 1e-3, 1e-4),
                     grid_factors=(1.0,), grid_rounds=1, lam_min=1e-6)
data = run_headline_problem(RunDir(out), "default", cfg, checkpoints=checkpoints)
print((out / "table.md").read_text())
print(data["baseline_floor_db"])
