"""``sparseprior compress ...``: pruning + quantization + factorization, packed files, latency.

Thin: parses options and calls :mod:`sparseprior.compress`. Library ``ValueError`` s become one
line and exit code 2 in :func:`sparseprior.cli.main`.

* ``run --recipe R.json``: train (or load) a registry model, run the recipe, print one row per
  step, write ``results.json`` and the final ``model.sppk``;
* ``pack WEIGHTS``: pack a safetensors checkpoint of a registry model (optionally PTQ to k bits);
* ``unpack FILE``: check and decode a packed file into fp32 safetensors (and ONNX);
* ``bench FILE``: one-thread latency of the packed model vs its fp32 original, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Compression: prune, quantize, factorize; pack to a real file; measure.",
                  no_args_is_help=True)

MODEL = typer.Option("lenet300", help="Registry model: lenet300, lenet5, mlp, resnet20, ...")
DATASET = typer.Option("fashion-mnist", help="fashion-mnist, mnist, digits, cifar10, synthetic.")
DATA_ROOT = typer.Option(None, help="Dataset folder (default: the dataset's own).")
THREADS = typer.Option(1, help="torch.set_num_threads (1: the latency setting).")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _build(model: str, splits: Any, hidden: str | None) -> tuple[Any, dict[str, Any]]:
    from sparseprior.cli.tickets import parse_ints
    from sparseprior.models import build_model

    build: dict[str, Any] = {"in_channels": splits.input_shape[0],
                             "num_classes": splits.num_classes,
                             "input_size": list(splits.input_shape[1:])}
    widths = parse_ints(hidden, "hidden")
    if widths:
        build["hidden"] = widths
    return build_model(model, **{**build, "input_size": tuple(build["input_size"])}), build


@app.command()
def run(
    recipe: Path = typer.Option(..., help="Recipe file (.json, or .yaml with PyYAML)."),
    out: Path = typer.Option(Path("runs/compress"), help="Run folder."),
    model: str = MODEL,
    hidden: str = typer.Option(None, help="MLP hidden widths (model 'mlp'), e.g. 256,128."),
    dataset: str = DATASET, data_root: Path = DATA_ROOT,
    subset: int = typer.Option(None, help="Use only this many training images."),
    weights: Path = typer.Option(None, help="Start from this safetensors state_dict instead "
                                 "of training."),
    epochs: int = typer.Option(5, help="Training epochs of the fp32 model (without --weights)."),
    seed: int = typer.Option(0, help="Seed of init, data subset and order."),
    latency_rounds: int = typer.Option(5, help="Interleaved latency rounds per step (0: skip)."),
    threads: int = THREADS,
) -> None:
    """Run a compression recipe; print accuracy, params, FLOPs, packed size, latency per step."""
    import torch
    from safetensors.torch import load_file

    from sparseprior.common.results import format_table
    from sparseprior.common.runs import RunDir
    from sparseprior.compress import compress_, load_recipe, pack
    from sparseprior.compress.experiments import BenchConfig
    from sparseprior.data import load_dataset
    from sparseprior.engine import Trainer

    _threads(threads)
    rec = load_recipe(recipe)
    splits = load_dataset(dataset, data_root, subset=subset, seed=seed)
    torch.manual_seed(seed)
    net, build = _build(model, splits, hidden)
    if weights is not None:
        net.load_state_dict(load_file(str(weights)))
    else:
        Trainer(net, splits.train, BenchConfig(seed=seed).train(epochs)).fit()
    folder = RunDir(out)
    folder.write_json("recipe.json", rec.to_dict())
    result = compress_(net, rec, train_set=splits.train, test_set=splits.test,
                       model_name=model, build=build, run_dir=folder.path,
                       latency_rounds=latency_rounds,
                       progress=lambda r: typer.echo(f"step {r.index} {r.kind}: acc "
                                                     f"{r.accuracy:.4f}, {r.packed_bytes} B"))
    info = pack(result.model, folder.file("model.sppk"), model_name=model, build=build,
                meta={"recipe": rec.to_dict()})
    folder.write_json("results.json", {"recipe": rec.to_dict(), **result.to_dict(),
                                       "packed_bytes": info.size})
    typer.echo(format_table(result.rows()))
    typer.echo(f"packed model: {info.path} ({info.size} bytes)")


@app.command("pack")
def pack_cmd(
    weights: Path = typer.Argument(..., help="safetensors state_dict of a registry model."),
    out: Path = typer.Option(..., help="Packed file to write (.sppk)."),
    model: str = MODEL,
    build: str = typer.Option("{}", help="build_model keyword arguments as JSON, e.g. "
                              "'{\"num_classes\": 10}'."),
    bits: int = typer.Option(None, help="Quantize every linear/conv weight to this many bits "
                             "first (post-training, per channel)."),
    scheme: str = typer.Option("uniform", help="uniform or pow2 (with --bits)."),
) -> None:
    """Pack a checkpoint into the compressed file format (sparse weights stored sparsely)."""
    from safetensors.torch import load_file

    from sparseprior.compress import QuantSpec, freeze_quantized_, pack, quantize_
    from sparseprior.models import build_model

    kwargs = _json_arg(build, "build")
    net = build_model(model, **{k: tuple(v) if isinstance(v, list) else v
                                for k, v in kwargs.items()})
    if not weights.is_file():
        raise ValueError(f"weights file {str(weights)!r} not found")
    net.load_state_dict(load_file(str(weights)))
    if bits is not None:
        quantize_(net, QuantSpec(bits=bits, scheme=scheme))
        freeze_quantized_(net)
    info = pack(net, out, model_name=model, build=kwargs)
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

    header, _ = read_header(packed)
    model = unpack(packed)
    rows = [{"tensor": r["name"], "shape": "x".join(map(str, r["shape"])),
             "encoding": r["encoding"], "positions": r.get("positions") or "",
             "bits": (r.get("quant") or {}).get("bits", ""), "nnz": r.get("nnz", ""),
             "bytes": sum(n for _, n in r["parts"])} for r in header["tensors"]]
    typer.echo(format_table(rows))
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
def bench(
    packed: Path = typer.Argument(..., help="A .sppk file."),
    batch: list[int] = typer.Option([1, 64], help="Batch sizes (repeatable)."),
    rounds: int = typer.Option(15, help="Interleaved timing rounds."),
    int8: bool = typer.Option(True, help="Also time ONNX Runtime / PyTorch dynamic int8."),
) -> None:
    """One-thread latency of the packed model (PyTorch, ONNX Runtime, int8) vs the fp32
    original architecture (same sizes as the registry model), measured side by side."""
    import torch

    from sparseprior.common.results import format_table
    from sparseprior.compress import (
        build_from_architecture,
        deployable_copy,
        dynamic_int8,
        export_onnx,
        measure_latency,
        ort_int8,
        ort_run,
        ort_session,
        read_header,
        unpack,
    )
    from sparseprior.models import build_model

    _threads(1)
    header, _ = read_header(packed)
    arch = header["architecture"]
    small = deployable_copy(unpack(packed))
    original = build_model(arch["model"], **{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in arch["build"].items()}).eval()
    _ = build_from_architecture  # the unpacked model was rebuilt from the same description
    shape = tuple(small.example_input(1).shape[1:])
    variants: dict[str, Any] = {"fp32 original (PyTorch)": original,
                                "packed model (PyTorch)": small}
    sessions: dict[str, Any] = {"fp32 original (ONNX Runtime)":
                                ort_session(export_onnx(original, original.example_input(1)))}
    onnx_small = export_onnx(small, small.example_input(1))
    sessions["packed model (ONNX Runtime)"] = ort_session(onnx_small)
    if int8:
        variants["packed model (PyTorch dynamic int8)"] = dynamic_int8(small)
        sessions["packed model (ONNX Runtime int8)"] = ort_session(ort_int8(onnx_small))
    rows = []
    for b in batch:
        x = torch.randn(b, *shape)
        xn = x.numpy()
        runners = {n: _bind(m, x) for n, m in variants.items()}
        runners.update({n: _bind(lambda a, s=s: ort_run(s, a), xn) for n, s in sessions.items()})
        res = measure_latency(runners, baseline="fp32 original (PyTorch)", rounds=rounds,
                              calls=max(3, 200 // b))
        rows += [{"batch": b, "variant": n, "median ms": round(res.median_ms[n], 4),
                  "speed-up": round(res.speedup[n], 2)} for n in runners]
    typer.echo(format_table(rows))
    typer.echo("one thread; median over interleaved rounds; speed-up = median per-round ratio "
               "vs the fp32 original in PyTorch (random weights: speed only)")


def _bind(fn: Any, x: Any) -> Any:
    return lambda: fn(x)


def _json_arg(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be a JSON object, got {text!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"--{name} must be a JSON object, got {text!r}")
    return value
