"""The ``sparseprior`` command. Thin: parses options and calls the library.

One sub-command group per pillar lives in its own module (``cli/solvers.py``, ``cli/tickets.py``,
``cli/dst.py``, ``cli/compress.py``) so each stays small. Bad input (``ValueError``/``TypeError``
from the library) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

# Spinning OpenMP threads starve other processes on small shared machines; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import typer

from sparseprior.cli import compress as compress_cli
from sparseprior.cli import dst as dst_cli
from sparseprior.cli import fed as fed_cli
from sparseprior.cli import solvers as solvers_cli
from sparseprior.cli import tickets as tickets_cli
from sparseprior.common.device import resolve_device

app = typer.Typer(
    name="sparseprior",
    help="Sparsity as a prior: learned sparse solvers, compression, sparse networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(solvers_cli.app, name="solvers")
app.add_typer(tickets_cli.app, name="tickets")
app.add_typer(dst_cli.app, name="dst")
app.add_typer(compress_cli.app, name="compress")
app.add_typer(fed_cli.app, name="fed")


@app.command()
def reproduce(
    out: Path = typer.Option(Path("runs/reproduce"), help="Run folder for the report."),
    mode: str = typer.Option("quick", help="'quick' (< 10 min on 2 CPU cores) or 'full'."),
    only: list[str] = typer.Option(None, help="Run only these sections (repeatable)."),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'."),
) -> None:
    """Run the headline experiments and write report.html, report.md and results.json."""
    from sparseprior.report.reproduce import reproduce as run_reproduce

    path = run_reproduce(out, mode=mode, only=only or None, device=resolve_device(device))
    typer.echo(f"report: {path}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
