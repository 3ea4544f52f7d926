"""Packed-file size against the strongest simple baselines (issue 15, item 5).

Trains LeNet-300-100 on Fashion-MNIST (fp32), runs the storage recipe
(``benchmarks/compress_recipe_storage.json``: 90% global gradual pruning + 4-bit per-channel
QAT), then compares, for the same compressed model:

* fp32 safetensors of the model (the reference of the "Nx smaller" ratios);
* ``xz -9e`` of the fp32 safetensors of the original (unpruned) model;
* ``xz -9e`` of the fp32 safetensors of the pruned + quantized model;
* "int8 codes + fp32 scales, xz -9e": every quantized tensor as one int8 code per entry plus
  its float32 scales, every other tensor as float32, concatenated and ``xz -9e``-ed (and the
  same with scales and biases as the packed file keeps them: float16 when the recipe rounds
  them);
* the packed file, format version 1 (bit-packed) and version 2 (entropy-coded parts), and
  ``xz -9e`` of the version 2 file (does a general compressor still find redundancy?);
* the entropy bound of codes and positions: for each quantized tensor
  ``nnz * H0(codes of the non-zeros) + log2 C(numel, nnz)`` bits (order-0 entropy of the
  codes, the information in the choice of the support), compared with the bytes version 2
  spends on those two parts.

``xz -9e`` is ``lzma.compress(data, preset=9 | PRESET_EXTREME)`` (the same xz container and
filter chain as the command-line tool).

    OMP_NUM_THREADS=1 python benchmarks/compress_size.py --out runs/compress_size
    OMP_NUM_THREADS=1 python benchmarks/compress_size.py --out runs/size_quick \\
        --subset 10000 --epochs 2          # quick run (smaller training)
    python benchmarks/compress_size.py --packed model.sppk --out runs/size_of_file

Writes ``<out>/sizes.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sparseprior.compress.entropy import entropy_bits  # noqa: E402
from sparseprior.compress.pack import (  # noqa: E402
    exact_float16,
    fp32_safetensors_size,
    pack,
    quant_targets,
    read_header,
    unpack,
)
from sparseprior.compress.quantize import quantize_tensor  # noqa: E402

RECIPE = Path(__file__).with_name("compress_recipe_storage.json")


def xz9e(data: bytes) -> int:
    """Bytes of ``xz -9e`` of ``data``."""
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))


def safetensors_bytes(model: nn.Module, path: Path) -> bytes:
    fp32_safetensors_size(model, path)
    return path.read_bytes()


def as_stored(values: np.ndarray, own: bool) -> bytes:
    """float32 bytes, or (``own``) as the packed file keeps them: float16 when exact."""
    return (exact_float16(values) if own else values.astype("<f4")).tobytes()


def int8_codes_blob(model: nn.Module, own: bool = False) -> bytes:
    """Quantized tensors as int8 codes (one per entry) + float32 scales, the rest float32
    (``own``: scales and other tensors as float16 where the packed file stores them so)."""
    targets = quant_targets(model)
    chunks = []
    for name, t in model.state_dict().items():
        if name in targets:
            q = quantize_tensor(t, *targets[name])
            chunks.append(q.codes.numpy().astype(np.int8).tobytes())
            chunks.append(as_stored(q.scale.numpy(), own))
        else:
            chunks.append(as_stored(t.detach().float().numpy(), own))
    return b"".join(chunks)


def entropy_bound(model: nn.Module) -> dict[str, float]:
    """Bits of the entropy bound of codes (order 0) and positions (log2 C(numel, nnz))."""
    out = {"codes_bits": 0.0, "positions_bits": 0.0}
    for name, (spec, scale) in quant_targets(model).items():
        t = model.state_dict()[name]
        q = quantize_tensor(t, spec, scale)
        nonzero = (q.dequantize() != 0).reshape(-1).numpy()
        numel, nnz = nonzero.size, int(nonzero.sum())
        out["codes_bits"] += entropy_bits(q.codes.reshape(-1).numpy()[nonzero])
        out["positions_bits"] += (math.lgamma(numel + 1) - math.lgamma(nnz + 1)
                                  - math.lgamma(numel - nnz + 1)) / math.log(2)
    return out


def coded_bytes(path: Path, names: set[str]) -> int:
    """Bytes a packed file spends on the positions + codes parts of ``names``."""
    header, _ = read_header(path)
    return sum(part[1] for rec in header["tensors"] if rec["name"] in names
               for part in rec["parts"] if part[0] in ("positions", "codes"))


def train_storage_model(args: argparse.Namespace
                        ) -> tuple[nn.Module, nn.Module, dict, dict[str, float]]:
    from sparseprior.compress import compress_, load_recipe
    from sparseprior.compress.experiments import BenchConfig
    from sparseprior.data import load_dataset
    from sparseprior.engine import Trainer
    from sparseprior.models import build_model

    splits = load_dataset("fashion-mnist", subset=args.subset, seed=args.seed)
    torch.manual_seed(args.seed)
    c, h, w = splits.input_shape
    build = {"in_channels": c, "num_classes": splits.num_classes, "input_size": [h, w]}
    net = build_model("lenet300", **{**build, "input_size": (h, w)})
    Trainer(net, splits.train, BenchConfig(seed=args.seed).train(args.epochs)).fit()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    result = compress_(net, load_recipe(args.recipe), train_set=splits.train,
                       test_set=splits.test, model_name="lenet300", build=build,
                       latency_rounds=0)
    dense = build_model("lenet300", **{**build, "input_size": (h, w)})
    dense.load_state_dict(original)
    accuracy = {"original": float(result.reports[0].accuracy),
                "compressed": float(result.reports[-1].accuracy)}
    return result.model, dense, build, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compress_size"))
    parser.add_argument("--packed", type=Path, help="measure this packed file (no training)")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--epochs", type=int, default=10, help="fp32 training epochs")
    parser.add_argument("--subset", type=int, default=None, help="training images used")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    if args.packed is not None:
        model = unpack(args.packed)
        header, _ = read_header(args.packed)
        build, name, dense, accuracy = (header["architecture"]["build"],
                                        header["architecture"]["model"], None, None)
    else:
        model, dense, build, accuracy = train_storage_model(args)
        name = "lenet300"
    fp32 = safetensors_bytes(model, args.out / "fp32.safetensors")
    rows["fp32 safetensors"] = len(fp32)
    if dense is not None:
        rows["xz -9e of the fp32 original"] = xz9e(safetensors_bytes(dense,
                                                                      args.out / "dense.st"))
    rows["xz -9e of the pruned+quantized fp32"] = xz9e(fp32)
    rows["int8 codes + fp32 scales, xz -9e"] = xz9e(int8_codes_blob(model))
    rows["int8 codes + the file's float16s, xz -9e"] = xz9e(int8_codes_blob(model, True))
    v1 = pack(model, args.out / "model_v1.sppk", model_name=name, build=build, version=1)
    v2 = pack(model, args.out / "model_v2.sppk", model_name=name, build=build, version=2)
    rows["packed, version 1"] = v1.size
    rows["packed, version 2"] = v2.size
    rows["xz -9e of the packed version 2 file"] = xz9e(v2.path.read_bytes())
    assert all(torch.equal(a, b) for a, b in zip(unpack(v2.path).state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    bound = entropy_bound(model)
    quantized = set(quant_targets(model))
    bound_bytes = (bound["codes_bits"] + bound["positions_bits"]) / 8
    v2_coded = coded_bytes(v2.path, quantized)
    base = rows["fp32 safetensors"]
    int8 = rows["int8 codes + fp32 scales, xz -9e"]
    print(f"{'file':45s} {'bytes':>10s} {'x smaller than fp32':>20s}")
    for label, size in rows.items():
        print(f"{label:45s} {size:10,d} {base / size:20.2f}")
    own = rows["int8 codes + the file's float16s, xz -9e"]
    print(f"version 2 vs int8+xz: {100 * (1 - v2.size / int8):.1f}% smaller "
          f"({100 * (1 - v2.size / own):.1f}% vs int8 codes with the file's float16 scales/biases)")
    print(f"entropy bound of codes+positions: {bound_bytes:,.0f} B; version 2 spends "
          f"{v2_coded:,d} B on them ({100 * (v2_coded / bound_bytes - 1):+.1f}%)")
    if accuracy is not None:
        print(f"accuracy: original fp32 {accuracy['original']:.4f}, compressed "
              f"{accuracy['compressed']:.4f}")
    result = {"sizes": rows, "ratios_vs_fp32": {k: base / v for k, v in rows.items()},
              "v2_vs_int8_xz_smaller_pct": 100 * (1 - v2.size / int8),
              "v2_vs_int8_own_scales_xz_smaller_pct": 100 * (1 - v2.size / own),
              "entropy_bound": {**bound, "bytes": bound_bytes, "v2_coded_bytes": v2_coded,
                                "v2_over_bound_pct": 100 * (v2_coded / bound_bytes - 1)},
              "accuracy": accuracy, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "sizes.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
