"""``sparseprior reproduce``: run every registered report section and write the report."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False)


@app.command()
def reproduce(
    out: Path = typer.Option(None, help="Run folder for the report (default: runs/reproduce, "
                             "or runs/reproduce-full in full mode)."),
    mode: str = typer.Option("quick", help="'quick' (< 10 min on 2 CPU cores) or 'full'."),
    only: list[str] = typer.Option(None, help="Run only these sections (repeatable); see "
                                   "`sparseprior reproduce --list`."),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'."),
    list_sections: bool = typer.Option(False, "--list", help="List the sections and exit."),
) -> None:
    """Run the headline experiments and write report.html, report.md and results.json."""
    from sparseprior.common.results import discover_sections

    if list_sections:
        for spec in discover_sections():
            typer.echo(f"{spec.name:12s} {spec.summary}")
        return
    if mode != "quick":
        typer.echo(f"note: mode {mode!r} runs the full budgets behind docs/results.md: hours on "
                   "a 2-core CPU (quick mode: under 10 minutes)", err=True)
    from sparseprior.common.device import resolve_device
    from sparseprior.report.reproduce import reproduce as run_reproduce

    run_reproduce(out, mode=mode, only=only or None, device=resolve_device(device))
