"""Per-iteration time of the package's FISTA vs a minimal reference loop written here.

The reference is what a sceptical expert would write: precompute M = I - A^T A / L and
b = A^T y / L, then per iteration one ``addmm``, one ``softshrink`` and the momentum update
(two variants: the axpy form ``x + c (x - x_prev)`` and a single ``lerp``). Both sides include
their set-up (L, M, b) and run the same number of iterations on the same (batch, m) input.
Rounds are interleaved in a shuffled order; times are process CPU time by default (with one
thread it is the compute actually spent, robust to a shared machine; ``--clock wall`` for
wall time); the report gives the median and the spread
(10th-90th percentile) of the per-round ratio ours / fastest reference.

    OMP_NUM_THREADS=1 python benchmarks/solvers_fista_speed.py --rounds 21 --out runs/fista-speed

Target (issue 12): FISTA within 1.15x of the reference. The same table lists ISTA,
FISTA-cont and FISTA-restart against the same reference (for information: restart adds one
reduction per iteration, continuation a (batch, 1) threshold until lambda reaches its floor).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparseprior.common.runs import RunDir
from sparseprior.solvers.classic import fista, fista_continuation, fista_restart, ista
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem


def reference_fista(A: torch.Tensor, y: torch.Tensor, lam: float, iters: int,
                    lerp: bool) -> torch.Tensor:
    """Minimal batched FISTA: one addmm + softshrink + momentum update per iteration."""
    L = float(torch.linalg.matrix_norm(A.double(), ord=2) ** 2)
    A64 = A.double()
    M = (torch.eye(A.shape[1], dtype=torch.float64) - A64.T @ A64 / L).to(A.dtype)
    b = ((y.double() @ A64) / L).to(A.dtype)
    x = torch.zeros(y.shape[0], A.shape[1], dtype=A.dtype)
    z, t, th = x, 1.0, lam / L
    for _ in range(iters):
        x_new = F.softshrink(torch.addmm(b, z, M), th)
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        c = (t - 1.0) / t_new
        z = torch.lerp(x, x_new, 1.0 + c) if lerp else x_new + c * (x_new - x)
        x, t = x_new, t_new
    return x


def _time(fn: Callable[[], torch.Tensor], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=250)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lam", type=float, default=1e-4)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (robust on a shared machine; 1 thread); wall")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=args.m, n=args.n))
    x, y = prob.sample(args.batch, torch.Generator().manual_seed(1))
    A, K, lam = prob.A, args.iters, args.lam
    ref_axpy = reference_fista(A, y, lam, K, lerp=False)
    ours = fista(A, y, lam, max_iter=K).x
    agree = float((ours - ref_axpy).abs().max() / ref_axpy.abs().max())
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "ref (axpy)": lambda: reference_fista(A, y, lam, K, lerp=False),
        "ref (lerp)": lambda: reference_fista(A, y, lam, K, lerp=True),
        "FISTA": lambda: fista(A, y, lam, max_iter=K).x,
        "ISTA": lambda: ista(A, y, lam, max_iter=K).x,
        "FISTA-cont": lambda: fista_continuation(A, y, lam, max_iter=K).x,
        "FISTA-restart": lambda: fista_restart(A, y, lam, max_iter=K).x,
    }
    for fn in cases.values():   # warm-up
        fn()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in cases}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(cases)
        rng.shuffle(order)
        for key in order:
            times[key].append(_time(cases[key], clock))
    ref = [min(a, b) for a, b in zip(times["ref (axpy)"], times["ref (lerp)"], strict=True)]
    rows = []
    for key, ts in times.items():
        ratios = sorted(t / r for t, r in zip(ts, ref, strict=True))
        q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
        rows.append({"solver": key, "ms/iter (median)": 1e3 * statistics.median(ts) / K,
                     "ratio vs fastest ref (median)": statistics.median(ratios),
                     "p10": q[0], "p90": q[-1]})
    print(f"{args.m}x{args.n}, batch {args.batch}, {K} iterations, {args.rounds} interleaved "
          f"rounds, {args.threads} thread(s), {args.clock} clock; max rel. difference FISTA "
          f"vs reference {agree:.1e}")
    print(f"{'solver':<15}{'ms/iter':>10}{'ratio':>8}{'p10':>8}{'p90':>8}")
    for r in rows:
        print(f"{r['solver']:<15}{r['ms/iter (median)']:>10.3f}"
              f"{r['ratio vs fastest ref (median)']:>8.3f}{r['p10']:>8.3f}{r['p90']:>8.3f}")
    fista_row = next(r for r in rows if r["solver"] == "FISTA")
    result = {"args": vars(args), "max_rel_diff": agree, "rows": rows,
              "target": 1.15, "met": fista_row["ratio vs fastest ref (median)"] <= 1.15,
              "command": "python " + " ".join(sys.argv)}
    print(f"target FISTA <= 1.15x reference: {'met' if result['met'] else 'MISSED'}")
    if args.out:
        RunDir(args.out).write_json("fista_speed.json", result)
    return result


if __name__ == "__main__":
    main()
