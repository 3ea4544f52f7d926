"""``sparseprior tickets ...``: lottery tickets (IMP with rewinding, Elastic LTH, Early-Bird).

Thin: the options are generated from the configs (:class:`~sparseprior.tickets.IMPConfig`,
:class:`~sparseprior.tickets.ElasticConfig`, :class:`~sparseprior.tickets.earlybird.
EarlyBirdConfig`; the training schedule's fields without a prefix: ``--epochs``, ``--lr``,
``--seed``), or read from ``--config run/config.json``; the library does the rest. Library
``ValueError`` s become one line and exit code 2 in :func:`sparseprior.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sparseprior.cli.options import config_options
from sparseprior.common.device import resolve_device
from sparseprior.tickets.earlybird import EarlyBirdConfig
from sparseprior.tickets.elastic import ElasticConfig
from sparseprior.tickets.imp import IMPConfig

app = typer.Typer(help="Lottery tickets: IMP with rewinding, Elastic LTH, Early-Bird.",
                  no_args_is_help=True)

HIDDEN = typer.Option(None, help="MLP hidden widths, comma-separated (model 'mlp'), e.g. "
                      "256,256; short for --model-options '{\"hidden\": [256, 256]}'.")
THREADS = typer.Option(None, help="Same as --num-threads.")


def parse_ints(text: str | None, name: str) -> list[int] | None:
    """``"256,256"`` -> ``[256, 256]`` (``None`` stays ``None``); ``ValueError`` if malformed."""
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--{name} must be comma-separated integers like 256,256, "
                         f"got {text!r}") from err


def _with_machine(config: Any, hidden: str | None = None, threads: int | None = None) -> Any:
    """``--hidden`` into ``model_options`` and ``--threads`` into ``train.num_threads``."""
    widths = parse_ints(hidden, "hidden")
    if widths:
        config = config.replace(model_options={**config.model_options, "hidden": widths})
    if threads is not None:
        config = config.replace(train=config.train.replace(num_threads=threads))
    return config


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from sparseprior.common.results import format_table

    typer.echo(format_table(rows))


@app.command()
@config_options(flatten=("train",), imp=IMPConfig)
def imp(
    imp: IMPConfig,
    out: Path = typer.Option(None, help="Run folder (default runs/imp/<model>-<hash of the "
                             "settings>); a rerun skips finished levels, --levels may grow."),
    hidden: str = HIDDEN,
    threads: int = THREADS,
) -> None:
    """Iterative magnitude pruning with rewinding: one folder per level, table of accuracy."""
    from sparseprior.tickets.imp import default_run_dir, run_imp

    config = _with_machine(imp, hidden, threads)
    folder = out or default_run_dir(config)
    result = run_imp(config, folder, device=resolve_device(config.train.device))
    _print_rows(result.rows())
    typer.echo(f"run folder: {folder}")


@app.command()
@config_options(flatten=("source", "train"), elastic=ElasticConfig)
def elastic(
    elastic: ElasticConfig,
    out: Path = typer.Option(None, help="Run folder (default runs/elastic/<model>-d<target "
                             "depth>-<hash of the settings>); resumable."),
    hidden: str = HIDDEN,
    threads: int = THREADS,
) -> None:
    """Elastic LTH: transform a ticket to another depth, retrain, compare with IMP there."""
    from sparseprior.tickets.elastic import default_run_dir, run_elastic

    config = elastic.replace(source=_with_machine(elastic.source, hidden, threads))
    folder = out or default_run_dir(config)
    result = run_elastic(config, folder, device=resolve_device(config.source.train.device))
    typer.echo(f"mapping: {result.mapping}")
    _print_rows(result.rows())
    typer.echo(f"run folder: {folder}")


@app.command()
@config_options(flatten=("train",), earlybird=EarlyBirdConfig)
def earlybird(
    earlybird: EarlyBirdConfig,
    out: Path = typer.Option(None, help="Run folder (default runs/earlybird/<model>-<hash of "
                             "the settings>)."),
    threads: int = THREADS,
) -> None:
    """Early-Bird tickets: find the channel mask early, slim the network, retrain it."""
    from sparseprior.tickets.earlybird import default_run_dir, result_rows, run_earlybird

    config = earlybird
    if threads is not None:
        config = config.replace(train=config.train.replace(num_threads=threads))
    folder = out or default_run_dir(config)
    result = run_earlybird(config, folder, device=resolve_device(config.train.device))
    _print_rows(result_rows(result))
    typer.echo(f"ticket drawn at epoch {result['drawn_epoch']}; run folder: {folder}")


from sparseprior.cli.earlybert import earlybert  # noqa: E402  (transformers loads lazily)

app.command("earlybert")(earlybert)
