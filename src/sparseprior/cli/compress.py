"""``sparseprior compress ...``: pruning + quantization + factorization, packed files, latency.

Thin: options come from the library's configs (:class:`~sparseprior.compress.runner.
CompressRunConfig`, :class:`~sparseprior.compress.runner.PackedBenchConfig`; ``--config
file.json`` plus overrides) and each command calls one runner of
:mod:`sparseprior.compress.runner`. Library ``ValueError`` s become one line and exit code 2 in
:func:`sparseprior.cli.main`.

* ``run --recipe R.json``: train (or load) a registry model, run the recipe, print one row per
  step, write ``results.json`` and the final ``model.sppk`` (rerun: ``--config <run>/config.json``);
* ``pack WEIGHTS``: pack a safetensors checkpoint of a registry model (optionally PTQ to k bits);
* ``unpack FILE``: check and decode a packed file into fp32 safetensors (and ONNX);
* ``bench FILE``: one-thread latency of the packed model vs its fp32 original and the bare
  baselines, interleaved rounds, median and IQR of the ratios.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from sparseprior.cli.compress_edge import finetune, serve
from sparseprior.cli.options import config_options
from sparseprior.compress.runner import CompressRunConfig, PackedBenchConfig

app = typer.Typer(help="Compression: prune, quantize, factorize; pack to a real file; measure.",
                  no_args_is_help=True)


@app.command()
@config_options(cfg=CompressRunConfig)
def run(
    cfg: CompressRunConfig,
    recipe: Path = typer.Option(None, help="Recipe file (.json, or .yaml with PyYAML); "
                                "replaces recipe_config."),
    out: Path = typer.Option(Path("runs/compress"), help="Run folder."),
) -> None:
    """Run a compression recipe; print accuracy, params, FLOPs, packed size, latency per step."""
    from sparseprior.common.results import format_table
    from sparseprior.compress import load_recipe
    from sparseprior.compress.runner import run_compress

    if recipe is not None:
        cfg = cfg.replace(recipe_config=load_recipe(recipe).to_dict())
    result = run_compress(cfg, out, echo=typer.echo)
    typer.echo(format_table(result.rows))
    typer.echo(f"packed model: {result.packed_path} ({result.packed_bytes} bytes)")


@app.command("pack")
def pack_cmd(
    weights: Path = typer.Argument(..., help="safetensors state_dict of a registry model."),
    out: Path = typer.Option(..., help="Packed file to write (.sppk)."),
    model: str = typer.Option("lenet300", help="Registry model: lenet300, lenet5, mlp, "
                              "resnet20, ..."),
    build: str = typer.Option("{}", help="build_model keyword arguments as JSON, e.g. "
                              "'{\"num_classes\": 10}'."),
    bits: int = typer.Option(None, help="Quantize every linear/conv weight to this many bits "
                             "first (post-training, per channel)."),
    scheme: str = typer.Option("uniform", help="uniform or pow2 (with --bits)."),
) -> None:
    """Pack a checkpoint into the compressed file format (sparse weights stored sparsely)."""
    from sparseprior.compress.runner import pack_checkpoint

    info = pack_checkpoint(weights, out, model=model, build=_json_arg(build, "build"),
                           bits=bits, scheme=scheme)
    typer.echo(f"{info.path}: {info.size} bytes (header {info.header_bytes} bytes, "
               f"{weights.stat().st_size} bytes before)")


@app.command()
def unpack(
    packed: Path = typer.Argument(..., help="A .sppk file."),
    out: Path = typer.Option(None, help="Write the decoded model as fp32 safetensors here."),
    onnx: Path = typer.Option(None, help="Also export the runnable model to ONNX here."),
    onnx_int8: Path = typer.Option(None, help="Also write an ONNX Runtime int8 (dynamic "
                                   "quantization) model here: the fast CPU deployment."),
) -> None:
    """Verify checksums, decode, and print the architecture; optionally write fp32/ONNX."""
    from safetensors.torch import save_file

    from sparseprior.common.checkpoint import atomic_write_bytes
    from sparseprior.common.results import format_table
    from sparseprior.compress import deployable_copy, export_onnx, ort_int8, read_header, unpack
    from sparseprior.compress.runner import packed_rows

    header, _ = read_header(packed)
    model = unpack(packed)
    typer.echo(format_table(packed_rows(header)))
    typer.echo(f"{packed}: {packed.stat().st_size} bytes, checksums OK, model "
               f"{header['architecture']['model']}")
    plain = deployable_copy(model)
    if out is not None:
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(out))
        typer.echo(f"fp32 weights: {out}")
    if onnx is not None or onnx_int8 is not None:
        data = export_onnx(plain, plain.example_input(1), onnx)
        if onnx is not None:
            typer.echo(f"ONNX: {onnx}")
        if onnx_int8 is not None:
            atomic_write_bytes(onnx_int8, ort_int8(data))
            typer.echo(f"ONNX int8: {onnx_int8}")


@app.command()
@config_options(cfg=PackedBenchConfig)
def bench(cfg: PackedBenchConfig,
          packed: Path = typer.Argument(..., help="A .sppk file.")) -> None:
    """Latency of the packed model (PyTorch, bare functional chain, ONNX Runtime, int8) vs the
    fp32 original architecture and its strongest fp32 baselines, measured side by side."""
    from sparseprior.common.results import format_table
    from sparseprior.compress.runner import bench_packed

    result = bench_packed(packed, cfg)
    typer.echo(format_table(result.rows))
    for note in result.notes:
        typer.echo(note)


def _json_arg(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be a JSON object, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name} must be a JSON object, got {text!r}")
    return value


app.command("serve")(serve)
app.command("finetune")(finetune)
