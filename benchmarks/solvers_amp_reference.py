"""Bayes-optimal AMP as a reference: how close can an estimator told the prior get?

Two questions about the transfer targets of issue 12, answered on the same seed-0 test sets as
``benchmarks/solvers_transfer.py`` (its transfer.json files give the HyperLISTA, FISTA and
support-oracle columns; nothing here is tuned):

1. Noisy problems: the target "calibrated HyperLISTA within 5 dB of the support-oracle floor".
   AMP with the Bernoulli-Gaussian posterior-mean denoiser, told p and the SNR (what
   ``HyperLISTA.for_problem`` is told), tracks the Bayes-optimal error on Gaussian A: where it
   is itself more than 5 dB above the oracle floor, no estimator that does not know the
   support can be expected to meet the target.
2. Iterations: AMP's NMSE after 16 iterations (as many products with A and A^T as HyperLISTA's
   16 layers) against shipped HyperLISTA's layer 16, and, on the default problem, the
   iterations AMP needs to reach HyperLISTA's layer-16 NMSE (its NMSE traced in float64) and
   the wall time of that many iterations against HyperLISTA's 16 layers (one thread, both
   timed side by side in interleaved rounds, AMP in float32 like HyperLISTA).

AMP assumes an i.i.d. Gaussian-like A: on the kappa-100 problems it is reported, not trusted.

    OMP_NUM_THREADS=1 python benchmarks/solvers_amp_reference.py \\
        --transfer runs/transfer-delta-n200/transfer.json,runs/transfer-delta-n500/transfer.json \\
        --out runs/amp-reference
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from solvers_transfer import family, family_problem, problem_name
from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.solvers.amp import bayes_amp
from sparseprior.solvers.metrics import nmse_db_per_step
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA


def amp_row(spec: dict[str, Any], row: dict[str, Any], args: argparse.Namespace
            ) -> dict[str, Any]:
    """AMP on the problem's test set next to the transfer row's figures."""
    problem, name = family_problem(spec, args.seed, args.samples, args.samples)
    x, y = problem.test_set()
    trace = bayes_amp(problem.A, y, spec["p"], snr_db=spec.get("snr_db"),
                      max_iter=args.iters, x_true=x).nmse_db
    trace = [v if v == v else float("inf") for v in trace]        # NaN: diverged
    out = {"problem": name, "label": spec["label"], "amp16_db": trace[15],
           "amp_db": min(trace), "shipped_db": row["shipped_db"],
           "calibrated_db": row["calibrated_db"],
           "fista_best_db": min(row["fista1000_db"], row["fista_cont1000_db"]),
           "oracle_db": row["oracle_db"]}
    print(f"{name:<32} AMP@16 {out['amp16_db']:8.2f}  AMP best {out['amp_db']:8.2f}  "
          f"HyperLISTA {row['shipped_db']:8.2f}  calibrated {row['calibrated_db']:8.2f}"
          + (f"  oracle {row['oracle_db']:7.2f}" if row["oracle_db"] is not None else ""),
          flush=True)
    return out


def noisy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Who is within 5 dB of the oracle floor on the noisy problems, per SNR."""
    out: dict[str, Any] = {}
    for label in ("snr40", "snr20"):
        sel = [r for r in rows if r["label"] == label]
        out[label] = {
            "problems": len(sel),
            "amp_within_5db": sum(r["amp_db"] <= r["oracle_db"] + 5.0 for r in sel),
            "calibrated_within_5db": sum(r["calibrated_db"] <= r["oracle_db"] + 5.0
                                         for r in sel),
            "calibrated_within_1db_of_amp": sum(r["calibrated_db"] <= r["amp_db"] + 1.0
                                                for r in sel),
            "calibrated_misses_where_amp_misses": sum(
                r["calibrated_db"] > r["oracle_db"] + 5.0 and r["amp_db"] > r["oracle_db"] + 5.0
                for r in sel),
        }
    return out


def default_problem_race(args: argparse.Namespace) -> dict[str, Any]:
    """Default problem: AMP iterations and wall time to HyperLISTA's layer-16 NMSE."""
    problem = SparseRecoveryProblem.generate(ProblemConfig())
    x, y = problem.test_set()
    p = problem.config.p
    model = HyperLISTA.for_problem(problem, num_layers=16).eval()
    with torch.no_grad():
        layers = nmse_db_per_step(model(y), x)
    target = layers[-1]
    trace = bayes_amp(problem.A, y, p, max_iter=args.iters, x_true=x).nmse_db
    iters = next((i + 1 for i, v in enumerate(trace) if v <= target), None)
    times: dict[str, list[float]] = {"HyperLISTA": [], "AMP": []}
    for _ in range(args.rounds):                      # interleaved: load hits both alike
        with torch.no_grad():
            start = time.perf_counter()
            model(y)
            times["HyperLISTA"].append(time.perf_counter() - start)
        start = time.perf_counter()
        bayes_amp(problem.A, y, p, max_iter=iters or args.iters, dtype=torch.float32)
        times["AMP"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"hyperlista_layers_db": layers, "target_db": target, "amp_db": trace,
           "amp_iters_to_target": iters, "seconds": med,
           "amp_over_hyperlista_wall": med["AMP"] / med["HyperLISTA"], "samples": len(y)}
    print(f"default problem: HyperLISTA layer 16 {target:.2f} dB; AMP reaches it after "
          f"{iters} iterations; wall AMP / HyperLISTA = {out['amp_over_hyperlista_wall']:.2f}")
    return out


def plot(path: Path, rows: list[dict[str, Any]], race: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.3))
    layers = race["hyperlista_layers_db"]
    left.plot(range(1, len(layers) + 1), layers, "o-", label="HyperLISTA (shipped, told p)")
    left.plot(range(1, len(race["amp_db"]) + 1), race["amp_db"], "s-", ms=3,
              label="Bayes-AMP (told p)")
    left.set_xlabel("layer / iteration")
    left.set_ylabel("test NMSE (dB)")
    left.set_title("default problem 250x500, p = 0.1, noiseless")
    left.set_xlim(0, 40)
    left.legend()
    for label, marker in (("snr40", "o"), ("snr20", "s")):
        sel = [r for r in rows if r["label"] == label]
        right.scatter([r["amp_db"] - r["oracle_db"] for r in sel],
                      [r["calibrated_db"] - r["oracle_db"] for r in sel], marker=marker,
                      label=label)
    right.axhline(5.0, color="k", ls="--", lw=1)
    right.axvline(5.0, color="k", ls=":", lw=1)
    lim = right.get_xlim()
    right.plot(lim, lim, color="grey", lw=0.8)
    right.set_xlabel("Bayes-AMP gap to the support oracle (dB)")
    right.set_ylabel("calibrated HyperLISTA gap to the oracle (dB)")
    right.set_title("noisy problems (dashed: the 5 dB target)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfer", required=True, help="transfer.json files, comma-separated")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds on the default problem")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/amp-reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = [json.loads(Path(f).read_text()) for f in args.transfer.split(",")]
    settings = {json.dumps(f["settings"], sort_keys=True) for f in files}
    if len(settings) != 1:
        raise SystemExit(f"--transfer files were written with different settings: {settings}")
    args.seed, args.samples = files[0]["settings"]["seed"], files[0]["settings"]["samples"]
    transfer = {r["problem"]: r for f in files for r in f["rows"]}
    rows = []
    for spec in family("full"):
        if problem_name(spec) in transfer:
            rows.append(amp_row(spec, transfer[problem_name(spec)], args))
    gaussian = [r for r in rows if r["label"] != "kappa100"]
    summary = {
        "noisy": noisy_summary(rows),
        "gaussian_problems": len(gaussian),
        "hyperlista16_beats_amp16": sum(r["shipped_db"] < r["amp16_db"] for r in gaussian),
        "amp16_beats_fista1000": sum(r["amp16_db"] < r["fista_best_db"] for r in gaussian),
        "amp_diverged_kappa100": sum(r["amp_db"] == float("inf") or r["amp_db"] > 0
                                     for r in rows if r["label"] == "kappa100"),
        "kappa100_problems": sum(r["label"] == "kappa100" for r in rows),
    }
    race = default_problem_race(args)
    print(json.dumps(summary, indent=1))
    table = format_table([{k: (f"{v:.2f}" if isinstance(v, float) else v)
                           for k, v in r.items()} for r in rows])
    out = RunDir(args.out)
    result = {"command": "python " + " ".join(sys.argv), "transfer": args.transfer,
              "iters": args.iters, "summary": summary, "default_problem": race, "rows": rows}
    out.write_json("amp_reference.json", result)
    (out.path / "table.md").write_text(table + "\n")
    print(f"plot: {plot(out.file('amp_reference.png'), rows, race)}")
    return result


if __name__ == "__main__":
    main()
