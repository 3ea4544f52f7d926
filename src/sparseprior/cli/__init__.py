"""The ``sparseprior`` command. Thin: parses options and calls the library.

Each pillar's sub-command group lives in its own module (``cli/solvers.py``, ``cli/dst.py``,
...), registered in :data:`GROUPS` and imported only when used, so ``sparseprior --help`` starts
in well under a second. Errors a user can cause (``ValueError``/``TypeError`` from the library,
file-system errors, memory) become one line on stderr and exit code 2; any other exception is a
bug: one line and exit code 1. ``--debug`` (or ``SPARSEPRIOR_DEBUG=1``) shows tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click
import typer

# Spinning OpenMP threads starve other processes on small shared machines; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Sub-command name -> (module holding a typer ``app``, one-line help). Add a group here.
GROUPS: dict[str, tuple[str, str]] = {
    "solvers": ("sparseprior.cli.solvers", "Learned sparse solvers: LISTA family, ALISTA, "
                "HyperLISTA vs ISTA/FISTA."),
    "tickets": ("sparseprior.cli.tickets", "Lottery tickets: IMP with rewinding, Elastic LTH, "
                "Early-Bird."),
    "dst": ("sparseprior.cli.dst", "Dynamic sparse training: SET, RigL, GraNet, static."),
    "compress": ("sparseprior.cli.compress", "Compression: prune, quantize, factorize, pack, "
                 "measure."),
    "reproduce": ("sparseprior.cli.reproduce", "Run the headline experiments and write the "
                  "report (report.html, report.md, results.json)."),
}

USER_ERRORS = (ValueError, TypeError, OSError, MemoryError)


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in GROUPS:
            return None
        module = importlib.import_module(GROUPS[name][0])
        command = typer.main.get_command(module.app)
        command.name = name
        if not command.help:
            command.help = GROUPS[name][1]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in GROUPS.items()])


def _version(ctx: click.Context, _param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from sparseprior import __version__

        click.echo(f"sparseprior {__version__}")
        ctx.exit()


@click.group(cls=LazyGroup, help="Sparsity as a prior: learned sparse solvers, compression, "
             "sparse networks.", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and exit.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def app(debug: bool) -> None:
    if debug:
        os.environ["SPARSEPRIOR_DEBUG"] = "1"


def one_line(err: BaseException) -> str:
    """An exception as one line: its message with newlines folded."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text += f": {err.filename}"
    return text


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SPARSEPRIOR_DEBUG") == "1"
    try:
        app.main(args=args, prog_name="sparseprior", standalone_mode=True)
    except USER_ERRORS as err:
        if debug:
            raise
        typer.echo(f"error: {one_line(err)}", err=True)
        sys.exit(2)
    except Exception as err:  # a bug: say so in one line, traceback with --debug
        if debug:
            raise
        typer.echo(f"error: internal error ({type(err).__name__}: {one_line(err)}); rerun "
                   "with --debug for the traceback and report it", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
