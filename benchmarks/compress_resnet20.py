"""ResNet-20 (width 1.0) on Fashion-MNIST: >= 10x storage and >= 3x latency at <= 1 pt (issue 15).

Starts from a converged fp32 ResNet-20, a finished ``sparseprior dst train --method dense``
run folder (its ``summary.json`` gives the epochs and test accuracy; its ``config.json`` the
model and data, so a run on CIFAR-10 from ``--dataset cifar10 --data-root DIR`` works the
same way), runs the recipe
``benchmarks/compress_recipe_resnet20.json`` (structured channel slimming + fine-tuning, then
int8 per-channel QAT) through ``compress run``, and measures on the 10k test images:

* accuracy of the fp32 original (PyTorch), the packed model decoded (PyTorch) and the packed
  model in ONNX Runtime fp32 (the deployment that is timed);
* storage: the ``.sppk`` file vs the fp32 safetensors of the original (and the fp32 ONNX file
  the packed model decodes to);
* latency: ``compress bench`` of the packed file (``--rounds`` interleaved rounds, batch 1 and
  64, one thread): the packed model in ONNX Runtime vs fp32 PyTorch (and vs the fastest fp32
  variant of the original, ONNX Runtime).

The baseline (30 epochs, SGD 0.1 momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch)::

    sparseprior dst train --method dense --model resnet20 --epochs 30 --batch-size 128 \\
        --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --lr-schedule cosine \\
        --warmup-epochs 1 --threads 1 --checkpoint-every 1 --eval-every 5 --no-progress \\
        --out runs/resnet20-fp32
    OMP_NUM_THREADS=1 python benchmarks/compress_resnet20.py runs/resnet20-fp32 \\
        --out runs/compress_resnet20
    OMP_NUM_THREADS=1 python benchmarks/compress_resnet20.py runs/resnet20-fp32 \\
        --ratio 0.4 --out runs/compress_resnet20_r04      # a milder slimming

A finished compression (``<out>/compress/model.sppk`` with its ``results.json``) is reused;
delete it to rerun. Writes ``<out>/results.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sparseprior.common.results import format_table  # noqa: E402
from sparseprior.compress.export import deployable_copy, export_onnx, ort_run, ort_session  # noqa: E402
from sparseprior.compress.pack import fp32_safetensors_size, unpack  # noqa: E402
from sparseprior.compress.pipeline import accuracy, evaluate  # noqa: E402
from sparseprior.compress.runner import (  # noqa: E402
    ORIGINAL,
    CompressRunConfig,
    PackedBenchConfig,
    bench_packed,
    run_compress,
)
from sparseprior.dst.train import load_run_model  # noqa: E402

RECIPE = Path(__file__).with_name("compress_recipe_resnet20.json")
DEPLOYED = "packed model (ONNX Runtime)"
TARGETS = {"storage": 10.0, "latency": 3.0, "drop_pt": 1.0}
DATA_KEYS = ("model", "model_options", "dataset", "dataset_options", "data_root")


def baseline(run_dir: Path, out: Path) -> tuple[torch.nn.Module, Path, dict[str, Any]]:
    """The converged fp32 model, its plain state_dict file and what its run says of it."""
    _, model, masks = load_run_model(run_dir)
    if masks is not None:
        raise ValueError(f"{run_dir}: a sparse run; the baseline must be dense "
                         f"(--method dense)")
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    weights = out / "fp32.safetensors"
    fp32_bytes = fp32_safetensors_size(model, weights)
    info = {"run": str(run_dir), "epochs": config.get("train", {}).get("epochs"),
            "run_test_accuracy": summary["test_accuracy"], "fp32_bytes": fp32_bytes,
            "data": {k: config.get(k) for k in DATA_KEYS}}
    return model, weights, info


def load_recipe(path: Path, ratio: float | None) -> dict[str, Any]:
    """The recipe file, with the structured step's ``ratio`` replaced when given."""
    recipe = json.loads(path.read_text())
    if ratio is not None:
        steps = [s for s in recipe["steps"] if s["kind"] == "structured"]
        if not steps:
            raise ValueError(f"--ratio: {path} has no structured step")
        for step in steps:
            step["options"] = {**step.get("options", {}), "ratio": ratio}
    return recipe


def compress(weights: Path, recipe: dict[str, Any], data: dict[str, Any], out: Path,
             threads: int) -> Path:
    """``<out>/model.sppk`` of the recipe applied to ``weights`` (reused when finished)."""
    packed = out / "model.sppk"
    if packed.exists() and (out / "results.json").exists():
        print(f"reusing {packed} (delete {out} to rerun the compression)")
        return packed
    config = CompressRunConfig(**data, weights=str(weights), recipe_config=recipe,
                               latency_rounds=0, threads=threads)
    return run_compress(config, out, echo=print).packed_path


def accuracies(original: torch.nn.Module, small: torch.nn.Module, onnx: bytes,
               data: dict[str, Any]) -> dict[str, float]:
    """Test accuracy (%) of the original and of the packed model (``small``: decoded,
    ``onnx``: its ONNX export), in PyTorch and in ORT."""
    test = CompressRunConfig(**data).load_splits(0).test
    session = ort_session(onnx)
    return {"fp32 original (PyTorch)": 100 * evaluate(original, test),
            "packed model (PyTorch)": 100 * evaluate(small, test),
            DEPLOYED: 100 * accuracy(partial(ort_run, session), test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32_run", type=Path, help="finished `dst train --method dense` run")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--ratio", type=float, default=None,
                        help="replace the structured step's ratio (fraction of channels removed)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="threads of the fine-tuning")
    parser.add_argument("--out", type=Path, default=Path("runs/compress_resnet20"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    original, weights, base = baseline(args.fp32_run, args.out)
    recipe = load_recipe(args.recipe, args.ratio)
    packed = compress(weights, recipe, base["data"], args.out / "compress", args.threads)
    torch.set_num_threads(1)
    small = deployable_copy(unpack(packed))
    onnx = export_onnx(small, original.example_input(1))
    acc = accuracies(original.eval(), small, onnx, base["data"])
    sizes = {"fp32 safetensors (original)": base["fp32_bytes"],
             "fp32 ONNX (packed model decoded)": len(onnx),
             "packed .sppk": packed.stat().st_size}
    bench = bench_packed(packed, PackedBenchConfig(batch=[1, 64], rounds=args.rounds,
                                                   int8=False))
    speed = {b: dict(zip(("median", "q1", "q3"), res.ratio_stats(ORIGINAL)[DEPLOYED],
                             strict=True))
             for b, res in bench.latency.items()}
    drop = acc["fp32 original (PyTorch)"] - acc[DEPLOYED]
    storage = base["fp32_bytes"] / sizes["packed .sppk"]
    verdict = {"storage_x": storage, "latency_x": {b: s["median"] for b, s in speed.items()},
               "drop_pt": drop,
               "met": storage >= TARGETS["storage"] and drop <= TARGETS["drop_pt"]
               and all(s["median"] >= TARGETS["latency"] for s in speed.values())}

    print(format_table([{"deployment": k, "test acc %": round(v, 2)} for k, v in acc.items()]))
    print(format_table([{"file": k, "bytes": v, "x smaller": round(base["fp32_bytes"] / v, 2)}
                        for k, v in sizes.items()]))
    print(format_table(bench.rows))
    for note in bench.notes:
        print(f"- {note}")
    print(f"baseline: {base['epochs']} epochs, run test accuracy "
          f"{100 * base['run_test_accuracy']:.2f}%")
    print(f"verdict (targets {TARGETS}): {storage:.1f}x storage, latency "
          + ", ".join(f"{s['median']:.2f}x at batch {b}" for b, s in speed.items())
          + f", drop {drop:+.2f} pt -> {'MET' if verdict['met'] else 'MISSED'}")
    (args.out / "results.json").write_text(json.dumps(
        {"baseline": base, "recipe": recipe, "accuracy": acc,
         "sizes": sizes, "latency_rows": bench.rows, "latency_ratio": speed,
         "notes": bench.notes, "targets": TARGETS, "verdict": verdict}, indent=2))


if __name__ == "__main__":
    main()
