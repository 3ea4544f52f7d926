"""Compression experiments: storage and latency recipes, the baselines users would pick
instead, side-by-side latency, plots, and the ``reproduce`` section.

One experiment (:func:`run_compression_benchmark`) on a registry model and dataset:

1. train the fp32 model (the *original*); its float32 safetensors file is the size reference;
2. **storage** recipe: gradual magnitude pruning + k-bit QAT -> the packed file
   (``os.path.getsize``);
3. **latency** recipe: structured pruning (+ fine-tuning) -> ONNX, run by ONNX Runtime in fp32
   and after ONNX Runtime's dynamic int8 quantization (the deployable candidates: int8 is not
   always the faster one); accuracy is measured by running ONNX Runtime;
4. **baselines**: ``torch.nn.utils.prune`` (global L1, same fine-tuning), PyTorch dynamic int8,
   low-rank alone, SmartExchange alone;
5. latency of every candidate at batch 1 and 64, one thread, interleaved in one run (200
   rounds by default, :func:`~sparseprior.compress.latency.measure_latency`), ratios (median
   and IQR over rounds) against the fp32 PyTorch original, against the same original in ONNX
   Runtime and against it as a bare functional chain (no ``nn.Module`` overhead; where the
   model is a plain chain), so the runtime's and the framework's share of a speed-up is visible.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseprior.common.config import Config
from sparseprior.common.results import Section
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.compress.export import deployable_copy, export_onnx, ort_int8, ort_run, ort_session
from sparseprior.compress.latency import functional_chain, measure_latency
from sparseprior.compress.pack import fp32_safetensors_size, pack
from sparseprior.compress.pipeline import CompressResult, accuracy, compress_, evaluate
from sparseprior.compress.quantize import dynamic_int8
from sparseprior.compress.recipe import Recipe
from sparseprior.engine import TrainConfig, Trainer

log = logging.getLogger(__name__)

MODES = ("quick", "full")


@dataclasses.dataclass
class BenchConfig(Config):
    """One compression benchmark.

    Attributes:
        model: registry model name (``lenet300``, ``lenet5``, ``resnet20``, ...).
        build: extra ``build_model`` arguments.
        dataset, data_root, subset: the data (``subset`` training images; ``None``: all).
        epochs: training epochs of the fp32 original.
        finetune_epochs: fine-tuning epochs of each compression step / baseline.
        finetune_lr: Adam learning rate of fine-tuning (cosine decay to 0).
        sparsity, bits: the storage recipe's final sparsity and code width.
        structured_ratios: the latency recipe's fraction of units removed per layer
            (module name -> ratio; layers not named use ``structured_ratio``).
        structured_ratio: default fraction of units removed.
        lowrank_energy: energy kept by the low-rank baseline.
        latency_rounds: interleaved rounds of the latency measurement (>= 200 for a report).
        batch_sizes: latency batch sizes.
        seed: seed of initialisation and data order.
    """

    model: str = "lenet300"
    build: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = None
    epochs: int = 8
    finetune_epochs: int = 2
    finetune_lr: float = 1e-3
    sparsity: float = 0.9
    bits: int = 4
    structured_ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    structured_ratio: float = 0.5
    lowrank_energy: float = 0.9
    latency_rounds: int = 200
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    seed: int = 0

    def train(self, epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3,
                           lr_schedule="cosine", weight_decay=0.0, eval_every=0, log_every=0,
                           progress=False, seed=self.seed, device="cpu")

    def finetune(self) -> dict[str, Any]:
        return {"batch_size": 128, "optimizer": "adam", "lr": self.finetune_lr,
                "lr_schedule": "cosine",
                "weight_decay": 0.0, "seed": self.seed, "device": "cpu"}


def storage_recipe(config: BenchConfig) -> Recipe:
    """Gradual global magnitude pruning to ``sparsity`` (fine-tuned), then ``bits``-bit
    per-channel uniform QAT."""
    e = config.finetune_epochs
    return Recipe(name="storage", train=config.finetune(), steps=[
        {"kind": "prune", "options": {"sparsity": config.sparsity, "schedule": "gradual",
                                      "scope": "global"}, "epochs": e},
        {"kind": "quantize", "options": {"bits": config.bits, "granularity": "channel"},
         "epochs": max(1, e // 2)}])


def latency_recipe(config: BenchConfig) -> Recipe:
    """Structured pruning (``structured_ratios``) with fine-tuning; int8 comes at export."""
    return Recipe(name="latency", train=config.finetune(), steps=[
        {"kind": "structured", "options": {"ratio": config.structured_ratio,
                                           "ratios": dict(config.structured_ratios)},
         "epochs": config.finetune_epochs}])


def lowrank_recipe(config: BenchConfig) -> Recipe:
    return Recipe(name="lowrank", train=config.finetune(), steps=[
        {"kind": "lowrank", "options": {"energy": config.lowrank_energy},
         "epochs": config.finetune_epochs}])


def smartexchange_recipe(config: BenchConfig) -> Recipe:
    return Recipe(name="smartexchange", train=config.finetune(), steps=[
        {"kind": "smartexchange", "options": {"bits": 4, "threshold": 0.1},
         "epochs": config.finetune_epochs}])


# --------------------------------------------------------------------------- helpers


def train_original(config: BenchConfig, splits: Any) -> nn.Module:
    """The fp32 model trained for ``config.epochs`` with the one ``Trainer``."""
    from sparseprior.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=splits.input_shape[0],
                        num_classes=splits.num_classes, input_size=splits.input_shape[1:],
                        **config.build)
    Trainer(model, splits.train, config.train(config.epochs)).fit()
    return model.eval()


def build_kwargs(config: BenchConfig, splits: Any) -> dict[str, Any]:
    return {"in_channels": splits.input_shape[0], "num_classes": splits.num_classes,
            "input_size": list(splits.input_shape[1:]), **config.build}


def torch_prune_baseline(model: nn.Module, config: BenchConfig, splits: Any
                         ) -> tuple[nn.Module, dict[str, int]]:
    """``torch.nn.utils.prune.global_unstructured`` (L1) to ``sparsity`` + the same
    fine-tuning; returns the model (masks removed into the weights) and its file sizes with
    and without the pruning re-parametrisation (``weight_orig`` + ``weight_mask``)."""
    import torch.nn.utils.prune as tprune

    from sparseprior.sparsity import prunable_parameters

    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    targets = [(modules[n[: -len(".weight")]], "weight") for n in prunable_parameters(pruned)]
    tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured,
                               amount=config.sparsity)
    Trainer(pruned, splits.train, TrainConfig.from_dict(
        {**config.finetune(), "epochs": config.finetune_epochs, "progress": False,
         "eval_every": 0, "log_every": 0})).fit()
    sizes = {"reparametrized": _torch_save_size(pruned)}
    for module, name in targets:
        tprune.remove(module, name)
    sizes["removed"] = _torch_save_size(pruned)
    return pruned.eval(), sizes


def _torch_save_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@dataclasses.dataclass
class Candidate:
    """A deployable variant: how to run it, its accuracy and its size on disk."""

    name: str
    runner: Callable[[torch.Tensor], Any]
    accuracy: float
    size_bytes: int
    size_note: str


def _ort_candidate(name: str, onnx: bytes, test_set: Any, note: str) -> Candidate:
    session = ort_session(onnx, threads=1)

    def fn(x: Any) -> Any:
        return ort_run(session, x)

    return Candidate(name, fn, accuracy(fn, test_set), len(onnx), note)


def _torch_candidate(name: str, model: nn.Module, test_set: Any, size: int, note: str
                     ) -> Candidate:
    model.eval()
    return Candidate(name, model, evaluate(model, test_set) if any(
        True for _ in model.parameters()) else accuracy(model, test_set), size, note)


def _bind(fn: Callable[[Any], Any], x: Any) -> Callable[[], Any]:
    return lambda: fn(x)


BARE = "fp32 (functional)"


def measure_candidates(candidates: Mapping[str, Candidate], input_shape: tuple[int, ...],
                       batch_sizes: list[int], rounds: int) -> dict[int, Any]:
    """Side-by-side latency (ms) and speed-ups vs ``fp32 (PyTorch)`` and ``fp32 (ONNX
    Runtime)`` per batch size, one thread."""
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape)
        xn = x.numpy()
        runners = {n: _bind(c.runner, xn if "ONNX" in n else x) for n, c in candidates.items()}
        res = measure_latency(runners, baseline="fp32 (PyTorch)", rounds=rounds,
                              calls=max(3, 200 // b), warmup=3)
        vs_ort = res.speedup_over("fp32 (ONNX Runtime)") if "fp32 (ONNX Runtime)" in runners \
            else {}
        vs_bare = res.speedup_over(BARE) if BARE in runners else {}
        iqr = {n: [q1, q3] for n, (_, q1, q3) in res.ratio_stats("fp32 (PyTorch)").items()}
        out[b] = {"median_ms": res.median_ms, "iqr_ms": res.iqr_ms, "speedup": res.speedup,
                  "speedup_iqr": iqr, "speedup_vs_ort_fp32": vs_ort,
                  "speedup_vs_functional": vs_bare, "rounds": rounds, "calls": res.calls}
    return out


# --------------------------------------------------------------------------- experiment


def run_compression_benchmark(config: BenchConfig, run: RunDir, splits: Any | None = None,
                              *, baselines: bool = True) -> dict[str, Any]:
    """Run the whole benchmark for one model (see the module docstring); writes
    ``results.json``, the packed files and ONNX models into ``run`` and returns the results."""
    from sparseprior.data import load_dataset

    start = time.perf_counter()
    run.write_config(config)
    if splits is None:
        splits = load_dataset(config.dataset, config.data_root, subset=config.subset,
                              seed=config.seed)
    build = build_kwargs(config, splits)
    original = train_original(config, splits)
    example = original.example_input(2)
    base_acc = evaluate(original, splits.test)
    fp32_size = fp32_safetensors_size(original, run.file("original_fp32.safetensors"))
    log.info("%s original: acc %.4f, %d bytes", config.model, base_acc, fp32_size)

    def recipe_run(recipe: Recipe) -> CompressResult:
        return compress_(copy.deepcopy(original), recipe, train_set=splits.train,
                         test_set=splits.test, model_name=config.model, build=build,
                         example_input=example, run_dir=run.path / recipe.name,
                         latency_rounds=0)

    storage = recipe_run(storage_recipe(config))
    packed = pack(storage.model, run.file("storage.sppk"), model_name=config.model,
                  build=build, meta={"recipe": storage_recipe(config).to_dict()})
    latency = recipe_run(latency_recipe(config))
    onnx_small = export_onnx(latency.model, example[:1], run.file("latency_fp32.onnx"))
    onnx_small8 = ort_int8(onnx_small)
    (run.file("latency_int8.onnx")).write_bytes(onnx_small8)
    onnx_orig = export_onnx(original, example[:1])
    test = splits.test
    cands: dict[str, Candidate] = {
        "fp32 (PyTorch)": _torch_candidate("fp32 (PyTorch)", deployable_copy(original), test,
                                           fp32_size, "safetensors fp32"),
        "fp32 (ONNX Runtime)": _ort_candidate("fp32 (ONNX Runtime)", onnx_orig, test,
                                              "ONNX fp32"),
        "combined: structured (PyTorch)": _torch_candidate(
            "combined: structured (PyTorch)", deployable_copy(latency.model), test,
            latency.reports[-1].packed_bytes, "packed fp32"),
        "combined: structured + dynamic int8 (PyTorch)": _torch_candidate(
            "combined: structured + dynamic int8 (PyTorch)", dynamic_int8(latency.model), test,
            _torch_save_size(dynamic_int8(latency.model)), "torch.save"),
        "combined: structured (ONNX Runtime)": _ort_candidate(
            "combined: structured (ONNX Runtime)", onnx_small, test, "ONNX fp32"),
        "combined: structured + int8 (ONNX Runtime)": _ort_candidate(
            "combined: structured + int8 (ONNX Runtime)", onnx_small8, test, "ONNX int8"),
    }
    chain = functional_chain(deployable_copy(original), example)
    if chain is not None:  # the bare F.linear/F.conv2d chain: no nn.Module overhead
        cands = {"fp32 (PyTorch)": cands.pop("fp32 (PyTorch)"),
                 BARE: Candidate(BARE, chain, accuracy(chain, test), fp32_size,
                                 "safetensors fp32"), **cands}
    rows_extra: dict[str, dict[str, Any]] = {}
    if baselines:
        tp_model, tp_sizes = torch_prune_baseline(original, config, splits)
        cands["torch.nn.utils.prune"] = _torch_candidate(
            "torch.nn.utils.prune", tp_model, test, tp_sizes["removed"],
            f"torch.save; {tp_sizes['reparametrized']} B with weight_orig+weight_mask")
        dq = dynamic_int8(original)
        cands["PyTorch dynamic int8"] = _torch_candidate("PyTorch dynamic int8", dq, test,
                                                         _torch_save_size(dq), "torch.save")
        lr = recipe_run(lowrank_recipe(config))
        cands["low-rank alone"] = _torch_candidate(
            "low-rank alone", deployable_copy(lr.model), test,
            fp32_safetensors_size(lr.model, run.file("lowrank_fp32.safetensors")),
            "safetensors fp32")
        rows_extra["low-rank alone"] = {"details": lr.reports[-1].details}
        se = recipe_run(smartexchange_recipe(config))
        se_pack = pack(se.model, run.file("smartexchange.sppk"), model_name=config.model,
                       build=build)
        cands["SmartExchange alone"] = _torch_candidate(
            "SmartExchange alone", deployable_copy(se.model), test, se_pack.size,
            "packed (Ce codes + B)")
        rows_extra["SmartExchange alone"] = {"details": se.reports[-1].details}
    lat = measure_candidates(cands, tuple(splits.input_shape), list(config.batch_sizes),
                             config.latency_rounds)
    storage_acc = storage.reports[-1].accuracy
    unpack_check = _unpack_check(run.file("storage.sppk"), storage.model, example)
    result = {
        "model": config.model, "dataset": splits.name, "train_images": len(splits.train),
        "original": {"accuracy": base_acc, "fp32_safetensors_bytes": fp32_size},
        "storage": {"accuracy": storage_acc, "packed_bytes": packed.size,
                    "ratio": fp32_size / packed.size, "drop_points": 100 * (base_acc
                                                                            - storage_acc),
                    "header_bytes": packed.header_bytes, "steps": storage.rows(),
                    "unpack_max_abs_diff": unpack_check},
        "latency": {"steps": latency.rows(), "kept_units": latency.reports[-1].details.get(
            "kept_units")},
        "candidates": {n: {"accuracy": c.accuracy, "size_bytes": c.size_bytes,
                           "size_note": c.size_note, **rows_extra.get(n, {})}
                       for n, c in cands.items()},
        "latency_by_batch": lat,
        "seconds": time.perf_counter() - start,
    }
    run.write_json("results.json", result)
    return result


@torch.no_grad()
def _unpack_check(path: Path, model: nn.Module, example: torch.Tensor) -> float:
    from sparseprior.compress.pack import unpack

    return float((unpack(path)(example) - model.eval()(example)).abs().max())


# --------------------------------------------------------------------------- tables, plots


def baseline_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate: accuracy, drop, size and ratio vs fp32, latency and speed-ups."""
    base = result["original"]
    rows = []
    lat = result["latency_by_batch"]
    for name, c in result["candidates"].items():
        row: dict[str, Any] = {
            "method": name, "acc %": round(100 * c["accuracy"], 2),
            "drop pt": round(100 * (base["accuracy"] - c["accuracy"]), 2),
            "size KB": round(c["size_bytes"] / 1024, 1),
            "size x": round(base["fp32_safetensors_bytes"] / c["size_bytes"], 2)}
        for b, m in lat.items():
            row[f"b{b} ms"] = round(m["median_ms"][name], 4)
            row[f"b{b} speed-up"] = round(m["speedup"][name], 2)
            if m.get("speedup_vs_ort_fp32"):
                row[f"b{b} vs ORT fp32"] = round(m["speedup_vs_ort_fp32"][name], 2)
            if m.get("speedup_vs_functional"):
                row[f"b{b} vs bare"] = round(m["speedup_vs_functional"][name], 2)
        rows.append(row)
    storage = result["storage"]
    rows.append({"method": "combined: prune + k-bit, packed file",
                 "acc %": round(100 * storage["accuracy"], 2),
                 "drop pt": round(storage["drop_points"], 2),
                 "size KB": round(storage["packed_bytes"] / 1024, 1),
                 "size x": round(storage["ratio"], 2)})
    return rows


def plot_tradeoffs(path: str | Path, results: Mapping[str, Mapping[str, Any]],
                   batch: int = 64) -> Path:
    """Two panels per model: accuracy vs size (log) and accuracy vs latency at ``batch``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results) + 1.2),
                             squeeze=False)
    for row, (model, res) in enumerate(results.items()):
        ax_size, ax_lat = axes[row]
        lat = res["latency_by_batch"].get(batch) or res["latency_by_batch"].get(str(batch))
        for name, c in res["candidates"].items():
            ax_size.scatter(c["size_bytes"] / 1024, 100 * c["accuracy"], label=name)
            if lat:
                ax_lat.scatter(lat["median_ms"][name], 100 * c["accuracy"], label=name)
        st = res["storage"]
        ax_size.scatter(st["packed_bytes"] / 1024, 100 * st["accuracy"], marker="*", s=200,
                        label="combined: packed file")
        for ax, xlabel in ((ax_size, "size on disk (KB, log)"),
                           (ax_lat, f"latency at batch {batch}, 1 thread (ms, log)")):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.axhline(100 * res["original"]["accuracy"] - 1, color="gray", ls="--", lw=1)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{model} on {res['dataset']} (dashed: fp32 accuracy - 1 pt)",
                         fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 1.2 / (4 * len(results) + 1.2), 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- section


def section_config(mode: str) -> BenchConfig:
    """Quick: LeNet-300-100 on 20k Fashion-MNIST images, 4 epochs, no baselines (< 60 s on
    one core); full: the benchmark settings."""
    check_choice(mode, "mode", MODES)
    if mode == "quick":
        return BenchConfig(model="lenet300", subset=20_000, epochs=4, finetune_epochs=2,
                           structured_ratios={"features.0": 0.67, "features.2": 0.5},
                           latency_rounds=5)
    return BenchConfig(model="lenet300", epochs=8, finetune_epochs=2,
                       structured_ratios={"features.0": 0.67, "features.2": 0.5})


def compress_section(run: RunDir, mode: str, device: torch.device) -> Section:
    """``reproduce`` section: the storage and latency recipes on LeNet-300-100 (CPU,
    one thread; ``device`` is ignored because latency is measured on the CPU)."""
    config = section_config(mode)
    section = Section("Compression (packed file size, one-thread CPU latency)")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        try:
            result = run_compression_benchmark(config, run, baselines=mode == "full")
        except (ValueError, OSError) as err:
            if config.dataset != "fashion-mnist":
                raise
            section.notes.append(f"Fashion-MNIST not available ({err}); used digits.")
            config = config.replace(dataset="digits", subset=None, model="mlp",
                                    build={"hidden": [64, 32]}, structured_ratios={})
            result = run_compression_benchmark(config, run, baselines=mode == "full")
    finally:
        torch.set_num_threads(threads)
    section.rows = baseline_rows(result)
    plot_tradeoffs(run.file("tradeoffs.png"), {config.model: result})
    section.plots = ["tradeoffs.png"]
    st = result["storage"]
    section.notes.append(
        f"{config.model} on {result['train_images']} {result['dataset']} training images, "
        f"{config.epochs} epochs; storage recipe: gradual pruning to {config.sparsity:.0%} + "
        f"{config.bits}-bit QAT -> packed file {st['packed_bytes']} B vs "
        f"{result['original']['fp32_safetensors_bytes']} B fp32 safetensors "
        f"({st['ratio']:.1f}x), accuracy drop {st['drop_points']:.2f} points. Latency: "
        f"median of interleaved rounds, 1 thread; speed-ups are per-round ratios.")
    section.data = {"result": result}
    return section
