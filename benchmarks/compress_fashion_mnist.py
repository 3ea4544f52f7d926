"""Compression benchmark on Fashion-MNIST: packed size, one-thread CPU latency, baselines.

For LeNet-300-100 and LeNet-5 (and, with ``--resnet``, a ResNet-20 on a training subset):
train the fp32 original, run the storage recipe (gradual pruning + 4-bit QAT -> packed file) and
the latency recipe (structured pruning -> ONNX Runtime int8), plus the baselines
(torch.nn.utils.prune, PyTorch dynamic int8, low-rank alone, SmartExchange alone); time every
variant side by side (interleaved rounds, one thread) at batch 1 and 64.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compress_fashion_mnist.py \
        --out runs/compress_bench [--models lenet300 lenet5] [--resnet]

Writes ``<out>/<model>/results.json``, ``<out>/results.json``, ``<out>/tables.md`` and the plots
``docs/img/compress_tradeoffs.png`` and ``docs/img/compress_latency.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sparseprior.common.runs import RunDir  # noqa: E402
from sparseprior.compress.experiments import (  # noqa: E402
    BenchConfig,
    baseline_rows,
    plot_tradeoffs,
    run_compression_benchmark,
)
from sparseprior.compress.pack import pack, read_header, unpack, unpack_state  # noqa: E402
from sparseprior.report import format_table  # noqa: E402

CONFIGS = {
    "lenet300": BenchConfig(model="lenet300", epochs=10, finetune_epochs=6, sparsity=0.9,
                            bits=4, structured_ratios={"features.0": 0.67,
                                                       "features.2": 0.5}),
    "lenet5": BenchConfig(model="lenet5", epochs=10, finetune_epochs=8, sparsity=0.8, bits=4,
                          structured_ratios={"features.0": 0.34, "features.3": 0.5,
                                             "fc.0": 0.5, "fc.2": 0.5}),
    "resnet20": BenchConfig(model="resnet20", build={"width": 0.5}, subset=10_000, epochs=4,
                            finetune_epochs=2, sparsity=0.8, bits=4, structured_ratio=0.5,
                            latency_rounds=7),
}


def plot_latency(path: Path, results: dict) -> Path:
    """Speed-up over fp32 PyTorch (bars) per variant, batch 1 and 64, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (model, res) in zip(axes[0], results.items(), strict=True):
        names = list(res["candidates"])
        batches = list(res["latency_by_batch"])
        width = 0.8 / len(batches)
        for i, b in enumerate(batches):
            speed = [res["latency_by_batch"][b]["speedup"][n] for n in names]
            ax.barh([k + i * width for k in range(len(names))], speed, height=width,
                    label=f"batch {b}")
        ax.axvline(1, color="gray", lw=1)
        ax.axvline(3, color="red", ls="--", lw=1, label="3x target")
        ax.set_yticks([k + width / 2 for k in range(len(names))], names, fontsize=8)
        ax.set_xlabel("speed-up over fp32 PyTorch, 1 thread\n(median of per-round ratios)")
        ax.set_title(f"{model}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def model_table(name: str, res: dict) -> str:
    """Markdown: a headline (accuracy, packed size) and the baseline table of one model."""
    st = res["storage"]
    head = (f"### {name} on {res['dataset']} ({res['train_images']} training images), "
            f"{res['seconds']:.0f} s\n\nfp32 accuracy {100 * res['original']['accuracy']:.2f}%"
            f"; packed file {st['packed_bytes']} B = {st['ratio']:.1f}x smaller than "
            f"{res['original']['fp32_safetensors_bytes']} B fp32 safetensors, accuracy "
            f"{100 * st['accuracy']:.2f}% (drop {st['drop_points']:.2f} pt)\n")
    return head + "\n" + format_table(baseline_rows(res)) + "\n"


def repack_file(path: Path) -> int:
    """Re-encode a packed file with the current writer; the decoded tensors must be
    bit-identical (so accuracy is unchanged). Returns the new size in bytes."""
    state, header = unpack_state(path)
    model = unpack(path)
    arch = header["architecture"]
    info = pack(model, path, model_name=arch["model"], build=arch["build"], meta=header["meta"])
    new_state, _ = unpack_state(path)
    if new_state.keys() != state.keys() or any(not torch.equal(new_state[k], state[k])
                                                for k in state):
        raise ValueError(f"re-packing {path} changed its tensors")
    return info.size


def repack_results(out: Path, results: dict) -> None:
    """Re-encode every packed file of the runs in ``out`` and update the sizes in ``results``
    (used after a format change that does not touch the weights)."""
    for name, res in results.items():
        folder = out / name
        fp32 = res["original"]["fp32_safetensors_bytes"]
        for recipe in ("storage", "latency"):
            for i, row in enumerate(res[recipe]["steps"]):
                size = repack_file(folder / recipe / f"step_{i}.sppk")
                row["packed KB"] = round(size / 1024, 1)
        size = repack_file(folder / "storage.sppk")
        st = res["storage"]
        payload = read_header(folder / "storage.sppk")[1]
        st.update(packed_bytes=size, ratio=fp32 / size,
                  header_bytes=size - len(payload) - 12 - 32)  # prefix and SHA-256
        cands = res["candidates"]
        last = len(res["latency"]["steps"]) - 1
        cands["combined: structured (PyTorch)"]["size_bytes"] = \
            (folder / "latency" / f"step_{last}.sppk").stat().st_size
        if (folder / "smartexchange.sppk").exists():
            cands["SmartExchange alone"]["size_bytes"] = repack_file(folder / "smartexchange.sppk")


def _int_keys(results: dict) -> dict:
    """JSON turns the batch-size keys into strings; turn them back."""
    for res in results.values():
        res["latency_by_batch"] = {int(k): v for k, v in res["latency_by_batch"].items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compress_bench"))
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--resnet", action="store_true", help="Also ResNet-20 on a subset.")
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    parser.add_argument("--plots-only", action="store_true",
                        help="Only redraw the plots and tables from <out>/results.json.")
    parser.add_argument("--repack", action="store_true",
                        help="Re-encode the saved packed files with the current format, "
                             "update their sizes in results.json, redraw (no training).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sparseprior.engine.trainer").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    models = list(args.models) + (["resnet20"] if args.resnet else [])
    out = RunDir(args.out)
    # earlier models' results are kept (e.g. a later `--models resnet20` run adds a section)
    results = _int_keys(out.read_json("results.json")) if out.file("results.json").exists() \
        else {}
    start = time.perf_counter()
    if args.repack:
        repack_results(args.out, results)
        out.write_json("results.json", results)
    for name in [] if args.plots_only or args.repack else models:
        results[name] = run_compression_benchmark(CONFIGS[name], RunDir(args.out / name))
        print(model_table(name, results[name]), flush=True)
        out.write_json("results.json", results)
    args.img.mkdir(parents=True, exist_ok=True)
    plot_tradeoffs(args.img / "compress_tradeoffs.png", results)
    plot_latency(args.img / "compress_latency.png", results)
    total = time.perf_counter() - start
    tables = [model_table(n, r) for n, r in results.items()]
    out.write_text("tables.md", "\n".join(tables) + f"\nThis invocation: {total:.0f} s\n")
    print(json.dumps({m: {"storage_ratio": r["storage"]["ratio"],
                          "storage_drop": r["storage"]["drop_points"]} for m, r in
                      results.items()}, indent=1))
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
