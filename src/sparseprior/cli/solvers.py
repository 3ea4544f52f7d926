"""``sparseprior solvers ...``: problems, training, evaluation and benchmarks of sparse solvers."""

from __future__ import annotations

import typer

app = typer.Typer(help="Learned sparse solvers (LISTA family) and classic baselines.",
                  no_args_is_help=True)
