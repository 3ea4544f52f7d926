"""Merge the results of several ``dst_fashion_mnist.py`` calls into one table, claims and plots.

Each input is a ``benchmark.json`` written by ``benchmarks/dst_fashion_mnist.py``, optionally
followed by ``!method,...`` to leave those methods out of it (e.g. runs made before a fix).
Later inputs replace earlier ones for the same (model, method, sparsity, seed).

Usage::

    python benchmarks/dst_collect.py --out runs/bench-dst-merged \\
        'runs/device-results/dst/grid/benchmark.json!granet' \\
        runs/device-results2/dst/grid2/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from sparseprior.common.runs import RunDir
from sparseprior.dst.experiments import (
    MODEL_TITLES,
    grid_claims,
    grid_table,
    plot_grid,
)
from sparseprior.report import format_table


def load(spec: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs of one ``benchmark.json`` (``path!m1,m2`` drops methods m1, m2) and its source."""
    path, _, drop = spec.partition("!")
    data = json.loads(Path(path).read_text())
    dropped = {m for m in drop.split(",") if m}
    runs = [r for r in data["runs"] if r["method"] not in dropped]
    return runs, {"file": path, "command": data.get("command"), "dropped": sorted(dropped),
                  "runs": len(runs)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="benchmark.json[!method,...]")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="DST on Fashion-MNIST, {model}, 20 epochs")
    args = p.parse_args(argv)
    merged: dict[tuple, dict[str, Any]] = {}
    sources = []
    for spec in args.inputs:
        runs, source = load(spec)
        sources.append(source)
        for r in runs:
            key = (r["model"], r["method"], round(float(r["target_sparsity"]), 4),
                   r.get("seed", 0))
            merged[key] = r
    runs = list(merged.values())
    out = RunDir(args.out)
    table, claims = grid_table(runs), grid_claims(runs)
    for model in sorted({r["model"] for r in runs}):
        plot_grid(out.file(f"accuracy_vs_density_{model}.png"), runs, model,
                  title=args.title.format(model=MODEL_TITLES.get(model, model)))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0],
                                                             *(argv or sys.argv[1:])])
    out.write_json("benchmark.json", {"command": command, "sources": sources, "runs": runs,
                                      "table": table, "claims": claims})
    text = format_table(table) + "\n\n" + "\n".join(claims) + "\n"
    out.write_text("table.md", text)
    print(text)


if __name__ == "__main__":
    main()
