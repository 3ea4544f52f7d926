"""FedDST vs FedAvg, FedAvgM, the static ERK mask (and FedDST without readjustment) on
Fashion-MNIST with LeNet-5: the issue's grid, with counted upload.

Full grid (the issue's targets; K=100 clients, C=10 per round, E=2, 200 rounds, sparsity 0.8,
pathological 2-shard and Dirichlet 0.3 splits, 3 seeds; 30 runs)::

    python benchmarks/fed_fashion_mnist.py --out runs/bench-fed --workers 2

Reduced run (what fits a shared 2-core machine)::

    python benchmarks/fed_fashion_mnist.py --out runs/bench-fed-small --rounds 10 \\
        --clients 10 --per-round 4 --subset 2000 --seeds 0 --test-images 1000 \\
        --eval-every 1 --readjust-every 3 --strategies feddst,fedavg,fedavgm,static \\
        --workers 2

Each run is a resumable ``fed run`` folder ``<out>/<split>/<strategy>-s<seed>`` (a rerun skips
finished runs). Writes ``<out>/benchmark.json`` (summaries, per-(split, seed) comparisons,
claims, command, wall time) and ``<out>/<split>/accuracy_vs_{rounds,upload}.png`` (seed 0).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.sparsity import SPARSE_INITS

STRATEGIES = ["feddst", "feddst-noadj", "fedavg", "fedavgm", "static"]
SPLITS = ["shards:2", "dirichlet:0.3"]


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker process, 1 thread)."""
    import torch

    from sparseprior.federated.experiments import grid_config, reduced_test
    from sparseprior.federated.simulation import run_federated

    torch.set_num_threads(1)
    config = grid_config(job["strategy"], job["split"], job["seed"], threads=1,
                         **job["overrides"])
    splits = reduced_test(config.load_splits(config.seed), job["test_images"])
    summary = run_federated(config, job["folder"], splits=splits)
    summary.pop("state", None)
    return {**summary, "folder": job["folder"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-fed")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--subset", type=int, default=None, help="training images (default all)")
    p.add_argument("--test-images", type=int, default=None, help="test images (default all)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--readjust-every", type=int, default=10,
                   help="FedDST rounds between mask readjustments (scale down with --rounds)")
    p.add_argument("--feddst-alpha", type=float, default=None,
                   help="FedDST's readjustment fraction alpha (default: the config's 0.05); "
                        "applies to the feddst strategies only")
    p.add_argument("--sparse-init", default=None, choices=tuple(SPARSE_INITS),
                   help="initial weights of the sparse strategies (default: the config's "
                        "'rescaled'; 'unscaled' is the masked dense init)")
    p.add_argument("--workers", type=int, default=1, help="parallel runs (1 thread each)")
    args = p.parse_args(argv)
    from sparseprior.federated.experiments import TITLES, claims, compare
    from sparseprior.federated.plots import plot_runs

    out = RunDir(args.out)
    overrides = {"rounds": args.rounds, "clients": args.clients, "per_round": args.per_round,
                 "subset": args.subset, "eval_every": args.eval_every,
                 "readjust_every": args.readjust_every,
                 **({} if args.sparse_init is None else {"sparse_init": args.sparse_init})}
    alpha = {} if args.feddst_alpha is None else {"alpha": args.feddst_alpha}
    jobs = [{"strategy": s, "split": sp, "seed": int(seed),
             "overrides": {**overrides, **(alpha if s.startswith("feddst") else {})},
             "test_images": args.test_images,
             "folder": str(out.path / sp.replace(":", "") / f"{s}-s{seed}")}
            for seed in args.seeds.split(",") for sp in args.splits.split(",")
            for s in args.strategies.split(",")]
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            summaries = list(pool.map(one_run, jobs))
    else:
        summaries = [one_run(j) for j in jobs]
    seconds = time.perf_counter() - start
    comparisons = []
    for sp in args.splits.split(","):
        for seed in args.seeds.split(","):
            hist = {j["strategy"]: RunDir(j["folder"]).read_metrics() for j in jobs
                    if j["split"] == sp and str(j["seed"]) == seed}
            comparisons.append({"split": sp, "seed": int(seed), **compare(hist)})
            if seed == args.seeds.split(",")[0]:
                plot_runs({TITLES[k]: v for k, v in hist.items()},
                          out.path / sp.replace(":", ""),
                          title=f"LeNet-5, Fashion-MNIST, {sp}, seed {seed}")
    full = (args.rounds, args.clients, args.per_round, args.subset, args.readjust_every,
            args.feddst_alpha) == (200, 100, 10, None, 10, None)
    found = claims(comparisons, decides=full,
                   note="" if full else "reduced grid: reported, not decided")
    rows = [{"split": s["split"], "seed": s["seed"], "strategy": s["strategy"],
             "test acc %": round(100 * s["test_acc"], 2),
             "sparsity": round(s["sparsity"], 4),
             "upload kB/client/round": round(s["upload_bytes_per_client_round"] / 1e3, 1),
             "upload MB": round(s["upload_mb"], 2)} for s in summaries]
    eq = [{"split": c["split"], "seed": c["seed"], "budget MB": round(c["budget_mb"], 2),
           **{f"{k} %": round(100 * v["acc_at_budget"], 2) if v["acc_at_budget"] is not None
              else None for k, v in c["strategies"].items()}} for c in comparisons]
    print(format_table(rows))
    print("\naccuracy at FedDST's cumulative upload:")
    print(format_table(eq))
    print()
    for c in found:
        m = "n/a" if c.measured is None else f"{c.measured:.3f}"
        print(f"[{c.verdict}] {c.claim}: {m} {c.unit} (target {c.target}) {c.note}")
    print(f"\nwall time {seconds:.0f} s for {len(jobs)} runs ({args.workers} workers)")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or
                                                                          sys.argv[1:])])
    out.write_json("benchmark.json", {
        "command": command, "seconds": seconds, "workers": args.workers, "runs": summaries,
        "comparisons": comparisons,
        "claims": [c.__dict__ | {"verdict": c.verdict} for c in found]})
    print(json.dumps({"saved": str(out.file("benchmark.json"))}))


if __name__ == "__main__":
    main()
