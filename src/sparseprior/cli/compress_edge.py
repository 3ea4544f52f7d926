"""``sparseprior compress serve`` and ``compress finetune``: the packed file as the fast model,
and fine-tuning it in compressed form.

Thin command functions (registered in the ``compress`` group); the work lives in
:mod:`sparseprior.compress.serve` and :mod:`sparseprior.compress.finetune`. Library
``ValueError`` s become one line and exit code 2 in :func:`sparseprior.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from sparseprior.cli.options import config_options
from sparseprior.compress.finetune import FinetuneRunConfig


def serve(
    packed: Path = typer.Argument(..., help="Packed model file (.sppk)."),
    batch: int = typer.Option(1, help="Batch size the kernels are chosen for."),
    kernels: str = typer.Option(None, help="Comma-separated candidate kernels of an MLP "
                                "(default: all available: dense, torch-csr, csr, csc, cols)."),
    int8_calibration: str = typer.Option(None, help="Conv nets: also try ONNX Runtime static "
                                         "int8, calibrated on 256 training images of this "
                                         "dataset (e.g. fashion-mnist); kept if faster."),
    plan_rounds: int = typer.Option(15, help="Interleaved timing rounds per layer for the plan."),
    rounds: int = typer.Option(200, help="Interleaved rounds of served vs its fp32 baseline "
                               "(0: skip)."),
    out: Path = typer.Option(None, help="Write the plan, check and timing as JSON here."),
) -> None:
    """Serve a packed model: an MLP from its codes (per-layer kernel plan, measured), a conv
    net with ONNX Runtime (fp32, or static int8 if faster); output check against the decoded
    model (1e-4) and speed vs the fp32 baseline (bare dense chain / decoded model), one thread."""
    import torch

    from sparseprior.common.checkpoint import atomic_write_bytes
    from sparseprior.common.results import format_table
    from sparseprior.compress.serve import serve_packed, speed_report

    torch.set_num_threads(1)
    names = [k.strip() for k in kernels.split(",")] if kernels else None
    calibration = _calibration_images(int8_calibration) if int8_calibration else None
    served = serve_packed(packed, batch_size=batch, kernels=names, rounds=plan_rounds,
                          calibration=calibration)
    report = {"plan": served.plan_rows(), "max_abs_diff": served.check(),
              "speed": speed_report(served, rounds=rounds) if rounds else None}
    typer.echo(format_table(report["plan"]))
    typer.echo(f"max |served - decoded| = {report['max_abs_diff']:.3g}")
    if report["speed"]:
        s = report["speed"]
        typer.echo(f"batch {s['batch']}: {s['speedup_median']:.2f}x the {s['baseline']} "
                   f"(IQR {s['speedup_q1']:.2f}-{s['speedup_q3']:.2f}, {s['rounds']} rounds)")
    if out is not None:
        atomic_write_bytes(out, json.dumps(report, indent=1).encode())


def _calibration_images(dataset: str, count: int = 256) -> Any:
    """The first ``count`` training images of ``dataset`` (a key of DATASETS)."""
    import torch

    from sparseprior.data import load_dataset

    train = load_dataset(dataset).train
    return torch.stack([train[i][0] for i in range(min(count, len(train)))])


@config_options(run=FinetuneRunConfig)
def finetune(
    run: FinetuneRunConfig,
    packed: Path = typer.Argument(..., help="Packed model file (.sppk) to adapt."),
    out: Path = typer.Option(..., help="Re-packed fine-tuned file to write (.sppk)."),
) -> None:
    """Fine-tune a packed model in compressed form (mask and code grid fixed; scales, biases
    and optionally codes trained) and re-pack it; prints trainable values, peak training
    memory and the file size before/after."""
    from sparseprior.common.results import format_table
    from sparseprior.compress.finetune import finetune_on_dataset

    result = finetune_on_dataset(packed, out, run)
    typer.echo(format_table([result.row()]))
    typer.echo(f"re-packed: {result.path} ({result.size_after} bytes)")
