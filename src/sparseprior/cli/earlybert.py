"""``sparseprior tickets earlybert``: EarlyBERT on a pre-trained BERT (Hugging Face), offline.

Thin: every field of :class:`sparseprior.nlp.experiment.EarlyBertConfig` is an option (generated
by :mod:`sparseprior.cli.options`), ``--config file.json`` loads a whole config (a run's
``config.json`` reruns it). ``transformers`` is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.cli.options import config_options
from sparseprior.nlp.experiment import EarlyBertConfig


@config_options(config=EarlyBertConfig)
def earlybert(
    config: EarlyBertConfig,
    out: Path = typer.Option(Path("runs/earlybert"), help="Run folder (config.json, "
                             "earlybert.json, plots, slim_model.safetensors/.json/.onnx)."),
    phase: str = typer.Option("", help="Phase worker: run only this phase (search, full, "
                              "random_ticket or random_even) of the run in --out, beside its "
                              "main run (same options), which picks the result up."),
    estimate: bool = typer.Option(False, help="Only estimate the training time saved: the "
                                  "search and slim/full step timing, no fine-tuning "
                                  "(earlybert_estimate.json; a later run goes on from it)."),
    baselines_from: Path = typer.Option(None, help="An earlier run folder whose options differ "
                                        "only in how the ticket is found (--mask-every, ratios, "
                                        "...): reuse its full fine-tuning and, where the masks "
                                        "are the same, its even random control."),
) -> None:
    """EarlyBERT: search structured early-bird tickets (heads + FFN neurons), slim the model for
    real, fine-tune it, and compare with full fine-tuning and the random ticket."""
    from sparseprior.common.results import format_table
    from sparseprior.nlp.experiment import (
        describe_phase,
        estimate_rows,
        estimate_run,
        reuse_baselines,
        run_earlybert,
        run_earlybert_phase,
        summary_rows,
    )

    if phase:
        typer.echo(f"{describe_phase(phase, run_earlybert_phase(config, out, phase))}; "
                   f"run folder: {out}")
        return
    if estimate:
        typer.echo(format_table(estimate_rows({config.seed: estimate_run(config, out)})))
        typer.echo(f"run folder: {out}")
        return
    if baselines_from is not None:
        shared = reuse_baselines(config, baselines_from, out)
        typer.echo(f"shared from {baselines_from}: {', '.join(shared)}")
    result = run_earlybert(config, out)
    typer.echo(format_table(summary_rows(result)))
    typer.echo(f"run folder: {out}")
