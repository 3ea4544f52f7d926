"""``sparseprior fed ...``: federated dynamic sparse training (FedDST) and its baselines.

Thin: options are generated from :class:`~sparseprior.federated.FedRunConfig` (``--strategy``,
``--clients``, ``--per-round``, ``--rounds``, ``--split``, ``--local-epochs``, ...), or read from
``--config run/config.json``; the library does the work.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.cli.options import config_options
from sparseprior.federated.config import FedRunConfig

app = typer.Typer(help="Federated dynamic sparse training (FedDST), FedAvg(M), static masks.",
                  no_args_is_help=True)


def _row(summary: dict) -> dict:
    return {"strategy": summary["strategy"], "rounds": summary["rounds"],
            "test acc %": round(100 * summary["test_acc"], 2),
            "client test acc %": round(100 * summary["client_test_acc"], 2),
            "sparsity (counted)": round(summary["sparsity"], 4),
            "upload MB": round(summary["upload_mb"], 3),
            "upload kB/client/round": round(summary["upload_bytes_per_client_round"] / 1e3, 2),
            "failed": summary["failed"], "rejected": sum(summary["rejected"].values())}


@app.command()
@config_options(run=FedRunConfig)
def run(
    run: FedRunConfig,
    out: Path = typer.Option(None, help="Run folder (default runs/fed/<strategy>-<split>-s<seed>)"
                             "; a rerun resumes, or returns the finished result."),
) -> None:
    """Run one federated experiment with the embedded, deterministic simulation engine."""
    from sparseprior.common.results import format_table
    from sparseprior.federated import run_federated

    folder = out or Path("runs/fed") / f"{run.strategy}-{run.split.replace(':', '')}-s{run.seed}"

    def show(record: dict) -> None:
        acc = f", test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else ""
        typer.echo(f"round {record['round']}/{run.rounds}: {record['accepted']} updates, "
                   f"upload {record['upload_bytes'] / 1e3:.1f} kB{acc}")

    summary = run_federated(run, folder, progress=show)
    typer.echo(format_table([_row(summary)]))
    typer.echo(f"run folder: {folder}")


@app.command()
def strategies() -> None:
    """List the registered strategies."""
    from sparseprior.federated import STRATEGIES

    for name, cls in STRATEGIES.items():
        typer.echo(f"{name:14s} {cls.description}")


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Finished `fed run` folders."),
    out: Path = typer.Option(Path("."), help="Folder for the PNGs."),
) -> None:
    """Accuracy vs rounds and vs cumulative upload (MB) of several runs in one figure."""
    from sparseprior.common.runs import RunDir
    from sparseprior.federated.plots import plot_runs

    histories = {}
    for folder in runs:
        run = RunDir(folder)
        if not run.file("summary.json").exists():
            raise ValueError(f"{str(folder)!r} is not a finished `fed run` folder (no "
                             "summary.json)")
        histories[f"{folder.name}"] = run.read_metrics()
    for path in plot_runs(histories, out):
        typer.echo(f"saved {path}")


@app.command("config")
@config_options(run=FedRunConfig)
def write_config(
    run: FedRunConfig,
    out: Path = typer.Option(Path("fed-config.json"), help="Where to write the JSON."),
) -> None:
    """Write an experiment config (JSON) for `fed run --config` or the Flower ServerApp."""
    from sparseprior.common.checkpoint import atomic_write_text

    atomic_write_text(out, run.to_json())
    typer.echo(f"saved {out}")


@app.command("flower-app")
def flower_app(folder: Path = typer.Argument(Path("fed-app"), help="App folder to write.")
               ) -> None:
    """Write the Flower App folder for `flwr run` (needs the `fed` extra: flwr>=1.42,<2)."""
    try:
        from sparseprior.federated.flower_app import write_app_dir
    except ImportError as err:
        raise ValueError(f"Flower is not installed ({err}); pip install 'sparseprior[fed]'"
                         ) from None
    typer.echo(f"wrote {write_app_dir(folder)}")
