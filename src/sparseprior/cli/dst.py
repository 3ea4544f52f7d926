"""``sparseprior dst ...``: dynamic sparse training (SET, RigL, GraNet, static baseline, and any
method registered in :data:`sparseprior.dst.DST_POLICIES`).

Thin: the options are generated from :class:`~sparseprior.dst.DSTRunConfig` (the method's and
the schedule's fields without a prefix: ``--method``, ``--sparsity``, ``--epochs``, ``--lr``,
``--seed``), or read from ``--config run/config.json``; the library does the rest. ``dst train``
is torchrun-ready: ``torchrun --nproc_per_node 2 -m sparseprior dst train ...`` runs DDP (gloo on
CPU, nccl on GPU; ``--batch-size`` is the global batch), and only rank 0 writes and prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.cli.options import config_options
from sparseprior.common.device import resolve_device
from sparseprior.dst import DST_POLICIES, DSTRunConfig, ExportConfig

app = typer.Typer(help="Dynamic sparse training: SET, RigL, GraNet, static sparse baseline.",
                  no_args_is_help=True)


def _print_summary(summary: dict) -> None:
    from sparseprior.common.results import format_table

    rows = [{"layer": n, "shape": "x".join(str(s) for s in v["shape"]),
             "nonzero": v["nonzero"], "sparsity": round(v["sparsity"], 4)}
            for n, v in summary["layers"].items()]
    typer.echo(format_table(rows))
    typer.echo(f"{summary['method']} on {summary['model']}: test accuracy "
               f"{summary['test_accuracy']:.4f}, sparsity {summary['sparsity']:.4f} counted from "
               f"the weights ({summary['nonzero']}/{summary['total']} non-zero), "
               f"{summary['updates']} mask updates, {summary['steps']} steps in "
               f"{summary['seconds']:.1f} s")


@app.command()
@config_options(flatten=("dst", "train"), run=DSTRunConfig)
def train(
    run: DSTRunConfig,
    out: Path = typer.Option(None, help="Run folder (default runs/dst/<model>-<method>-"
                             "<sparsity>-<hash of the non-default settings>); a rerun with "
                             "the same settings resumes or returns the finished result."),
    threads: int = typer.Option(None, help="Same as --num-threads."),
) -> None:
    """Train one model with one method; writes a run folder and prints per-layer sparsity."""
    from sparseprior.dst import run_dst
    from sparseprior.dst.train import default_run_dir
    from sparseprior.engine.distributed import env_dist_info

    if threads is not None:
        run = run.replace(train=run.train.replace(num_threads=threads))
    folder = out or default_run_dir(run)
    summary = run_dst(run, folder, device=resolve_device(run.train.device))
    if env_dist_info().is_main:
        _print_summary(summary)
        typer.echo(f"run folder: {folder}")


@app.command()
def methods() -> None:
    """List the registered DST methods (built-in and plugged in)."""
    for name, policy in DST_POLICIES.items():
        typer.echo(f"{name}: {policy.help}")


@app.command()
@config_options(export=ExportConfig)
def export(
    export: ExportConfig,
    run: Path = typer.Argument(..., help="A finished `dst train` run folder."),
    out: Path = typer.Option(None, help="CSR file (default <run>/sparse_inference)."),
) -> None:
    """Export a trained run to CSR linear layers; check outputs and time dense vs CSR."""
    from sparseprior.common.results import format_table
    from sparseprior.dst import export_run

    result = export_run(run, out, export)
    typer.echo(f"CSR layers: {result['csr_layers']}")
    typer.echo(f"max |dense - csr| output difference on {result['checked_images']} test images: "
               f"{result['max_abs_difference']:.2e}; accuracy dense "
               f"{result['dense_accuracy']:.4f}, csr {result['sparse_accuracy']:.4f}")
    if result["latency"]:
        typer.echo(format_table([{**r, "ms": round(r["ms"], 4), "speedup": round(r["speedup"], 2)}
                                 for r in result["latency"]]))
    typer.echo(f"saved {result['file']}")
