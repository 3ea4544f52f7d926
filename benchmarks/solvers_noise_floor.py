"""HyperLISTA on noisy problems: blind thresholds vs thresholds that know the noise level.

On the noisy problems of the reduced transfer grid (validation sets of ``--seed``, default 1:
the data the shipped setting was chosen on), the shipped setting's layer-16 NMSE (dB):

* blind: neither the noise level nor p (theta_t = c_theta s_theta u_t);
* aware: ``HyperLISTA.for_problem`` (the problem's SNR and p; theta_t = c_theta g max(s_theta u_t,
  sigma ||w_i||));
* a floor with its own constant c_noise (theta_t = max(c_theta s_theta u_t, c_noise sigma
  ||w_i||), a fourth hyperparameter), emulated by scaling sigma by c_noise / c_theta through a
  shifted SNR: does a separate constant buy anything?
* aware + LS refit: least squares on the support the aware HyperLISTA found (``debias``: how
  much of the gap to the support-oracle floor is shrinkage bias rather than missed support);
* calibrated (``HyperLISTA.calibrate`` for the problem's A, p and SNR, as the transfer
  benchmark runs it) and calibrated + debias;
* aware / calibrated + Bayes refit (``bayes_refit``: the found support widened by the
  columns most correlated with the residual, least squares on it, each value shrunk to its
  posterior mean under the Bernoulli(p)-Gaussian prior);
* the support-oracle floor (least squares on the true support).

    OMP_NUM_THREADS=1 python benchmarks/solvers_noise_floor.py --out runs/noise-floor

``--split test --seed 0``: the transfer benchmark's test sets (its oracle-gap column);
``--grid full --sizes 200``: the noisy problems of the full transfer grid with n = 200, with
a count per SNR of the estimates within 5 dB of the oracle floor.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from solvers_transfer import family, family_problem, hyper_db, hyper_db_debiased
from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.refit import support_oracle_ls
from sparseprior.solvers.unrolled import HyperLISTA

C_NOISE = (2.0, 3.0, 4.0, 5.0, 6.0)


def scaled_snr_db(snr_db: float, factor: float) -> float:
    """The SNR whose noise estimate sigma_b (||y_b|| / sqrt(m (10^(snr/10) + 1))) is
    ``factor`` times that of ``snr_db``."""
    return 10.0 * math.log10((10.0 ** (snr_db / 10.0) + 1.0) / factor ** 2 - 1.0)


@torch.no_grad()
def score(spec: dict[str, Any], samples: int, seed: int, split: str = "validation"
          ) -> dict[str, Any]:
    problem, name = family_problem(spec, seed, samples, samples if split == "test" else 1)
    x, y = problem.test_set() if split == "test" else problem.validation_set()
    A, c_theta = problem.A, HyperLISTA.DEFAULTS["c_theta"]
    aware = HyperLISTA.for_problem(problem)
    calibrated = HyperLISTA.calibrate(A, p=spec["p"], snr_db=spec["snr_db"], seed=seed + 17)
    row: dict[str, Any] = {"problem": name, "snr_db": spec["snr_db"],
                           "blind_db": hyper_db(HyperLISTA(A), x, y)}
    told = {"p": spec["p"], "snr_db": spec["snr_db"]}
    row["aware_db"], row["aware_refit_db"], row["aware_bayes_db"] = hyper_db_debiased(
        aware, x, y, **told)
    row["calibrated_db"], row["calibrated_refit_db"], row["calibrated_bayes_db"] = \
        hyper_db_debiased(calibrated, x, y, **told)
    row["oracle_db"] = nmse_db(support_oracle_ls(A, y, x), x)
    for c_noise in C_NOISE:
        snr = scaled_snr_db(spec["snr_db"], c_noise / c_theta)
        row[f"c_noise={c_noise:g}_db"] = hyper_db(HyperLISTA(problem.A, snr_db=snr, p=spec["p"]),
                                                  x, y)
    return row


ESTIMATES = ("aware_db", "aware_refit_db", "aware_bayes_db", "calibrated_db",
             "calibrated_refit_db", "calibrated_bayes_db")


def near_oracle_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per SNR: on how many problems each estimate lies within 5 dB of the oracle floor."""
    out = []
    for snr in sorted({r["snr_db"] for r in rows}):
        some = [r for r in rows if r["snr_db"] == snr]
        out.append({"snr_db": snr, "problems": len(some),
                    **{k.removesuffix("_db"): sum(r[k] <= r["oracle_db"] + 5.0 for r in some)
                       for k in ESTIMATES}})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--grid", choices=("reduced", "full"), default="reduced",
                    help="the transfer benchmark's grid whose noisy problems are scored")
    ap.add_argument("--sizes", type=lambda s: {int(v) for v in s.split(",")}, default=None,
                    help="only the problems with these n (comma-separated)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for spec in family(args.grid):
        if spec.get("snr_db") is not None and (args.sizes is None or spec["n"] in args.sizes):
            rows.append(score(spec, args.samples, args.seed, args.split))
            print(" ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                           for v in rows[-1].values()), flush=True)
    print(format_table([{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()}
                        for r in rows]))
    near = near_oracle_counts(rows)
    print(format_table(near))
    result = {"command": "python " + " ".join(sys.argv), "shipped": HyperLISTA.DEFAULTS,
              "seed": args.seed, "split": args.split, "samples": args.samples,
              "grid": args.grid, "rows": rows, "within_5db_of_oracle": near}
    if args.out:
        RunDir(args.out).write_json("noise_floor.json", result)
    return result


if __name__ == "__main__":
    main()
