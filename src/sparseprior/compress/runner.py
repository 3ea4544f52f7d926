"""Experiment runners behind ``sparseprior compress run|pack|unpack|bench`` (the CLI only parses).

* :func:`run_compress` (:class:`CompressRunConfig`): train (or load) a registry model, run a
  recipe with :func:`~.pipeline.compress_`, pack the result; the run folder is claimed for this
  config (``config.json``, a different experiment in the same folder is an error) and locked.
* :func:`pack_checkpoint`: a safetensors checkpoint of a registry model -> packed file.
* :func:`bench_packed` (:class:`PackedBenchConfig`): one-thread latency of a packed model
  against the strongest fp32 baselines (PyTorch eager, a bare functional chain, ONNX Runtime
  fp32, optionally ``torch.compile``), many interleaved rounds, median and IQR of the ratios.
* :func:`load_weights`: a safetensors ``state_dict`` into a model, with one-line errors for a
  missing, truncated or mismatched file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseprior.common.config import Config
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_positive_int
from sparseprior.workloads import ModelDataConfig

__all__ = [
    "CompressRunConfig",
    "PackedBench",
    "PackedBenchConfig",
    "bench_packed",
    "load_weights",
    "pack_checkpoint",
    "packed_rows",
    "run_compress",
]

Echo = Callable[[str], None]


# --------------------------------------------------------------------------- weights


def load_weights(model: nn.Module, path: str | Path, what: str = "--weights") -> nn.Module:
    """Load the safetensors ``state_dict`` at ``path`` into ``model`` strictly (in place).

    Raises ``ValueError`` (one line, naming ``what`` and the file) when the file is missing,
    not a readable safetensors file (e.g. truncated), or holds another model's tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{what}: {str(path)!r} is not a readable safetensors file "
                         f"(truncated or corrupt?): {_first_line(err)}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise ValueError(f"{what}: {str(path)!r} does not fit model {type(model).__name__} "
                         f"({_mismatch(model, state)}); pass the model and options that wrote "
                         f"it") from None
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), first {shapes[0]}")
    if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    return "; ".join(parts) or "incompatible tensors"


def _build_model(name: str, build: Mapping[str, Any]) -> nn.Module:
    from sparseprior.models import build_model

    return build_model(name, **{k: tuple(v) if isinstance(v, list) else v
                                for k, v in build.items()})


# --------------------------------------------------------------------------- compress run


@dataclasses.dataclass
class CompressRunConfig(ModelDataConfig):
    """``compress run``: a registry model, its data, and the recipe applied to it.

    Attributes:
        recipe_config: the recipe itself (``name``, ``train``, ``steps``) as in a recipe file;
            the CLI's ``--recipe FILE`` fills it.
        weights: start from this safetensors ``state_dict`` instead of training.
        epochs: training epochs of the fp32 model (without ``weights``).
        seed: seed of initialisation, data subset and order.
        latency_rounds: interleaved latency rounds per step (0: skip).
        threads: ``torch.set_num_threads`` while running (1: the latency setting).
    """

    recipe_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str | None = None
    epochs: int = 5
    seed: int = 0
    latency_rounds: int = 5
    threads: int = 1

    def validate(self) -> None:
        super().validate()
        if self.recipe_config:
            self.recipe()
        check_positive_int(self.epochs, "epochs", allow_zero=self.weights is not None)
        check_positive_int(self.latency_rounds, "latency_rounds", allow_zero=True)
        check_positive_int(self.threads, "threads")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def recipe(self) -> Any:
        """The validated :class:`~.recipe.Recipe` (``ValueError`` when none is given)."""
        from sparseprior.compress.recipe import Recipe

        if not self.recipe_config:
            raise ValueError("no recipe: pass --recipe FILE (.json or .yaml) or a --config "
                             "file holding recipe_config")
        if not isinstance(self.recipe_config, dict):
            raise ValueError(f"recipe_config must be a mapping with 'steps', got "
                             f"{type(self.recipe_config).__name__}")
        return Recipe.from_dict(self.recipe_config)


@dataclasses.dataclass
class CompressRunResult:
    """What :func:`run_compress` produced: the per-step table, the packed file and its size."""

    rows: list[dict[str, Any]]
    packed_path: Path
    packed_bytes: int
    run_dir: Path


def run_compress(config: CompressRunConfig, out: str | Path,
                 echo: Echo | None = None) -> CompressRunResult:
    """Train (or load) ``config.model``, run its recipe and pack the result into ``out``.

    Writes ``config.json`` (claimed: a folder holding another experiment is a ``ValueError``),
    ``recipe.json``, per-step packed files and logs, ``model.sppk`` and ``results.json``; the
    folder is locked while running. ``echo`` receives one progress line per step.
    """
    recipe = config.recipe()
    run = RunDir(out)
    run.claim(config, may_differ=("threads",), kind="compress run")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(config.threads)
        with run.lock():
            return _run_locked(config, recipe, run, echo)
    finally:
        torch.set_num_threads(before)


def _run_locked(config: CompressRunConfig, recipe: Any, run: RunDir, echo: Echo | None
                ) -> CompressRunResult:
    from sparseprior.compress.experiments import BenchConfig
    from sparseprior.compress.pack import pack
    from sparseprior.compress.pipeline import compress_
    from sparseprior.engine import Trainer

    splits = config.load_splits(config.seed)
    build: dict[str, Any] = {"in_channels": splits.input_shape[0],
                             "num_classes": splits.num_classes,
                             "input_size": list(splits.input_shape[1:]), **config.model_options}
    torch.manual_seed(config.seed)
    model = _build_model(config.model, build)
    if config.weights is not None:
        load_weights(model, config.weights)
    else:
        Trainer(model, splits.train, BenchConfig(seed=config.seed).train(config.epochs)).fit()
    run.write_json("recipe.json", recipe.to_dict())

    def progress(r: Any) -> None:
        if echo is not None:
            acc = "n/a" if r.accuracy is None else f"{r.accuracy:.4f}"
            echo(f"step {r.index} {r.kind}: acc {acc}, {r.packed_bytes} B")

    result = compress_(model, recipe, train_set=splits.train, test_set=splits.test,
                       model_name=config.model, build=build, run_dir=run.path,
                       latency_rounds=config.latency_rounds, progress=progress)
    info = pack(result.model, run.file("model.sppk"), model_name=config.model, build=build,
                meta={"recipe": recipe.to_dict()})
    run.write_json("results.json", {"recipe": recipe.to_dict(), **result.to_dict(),
                                    "packed_bytes": info.size})
    return CompressRunResult(result.rows(), Path(info.path), info.size, run.path)


# --------------------------------------------------------------------------- pack / unpack


def pack_checkpoint(weights: str | Path, out: str | Path, *, model: str,
                    build: Mapping[str, Any], bits: int | None = None,
                    scheme: str = "uniform") -> Any:
    """Pack a safetensors checkpoint of registry model ``model`` (``build``: its
    ``build_model`` keywords) into ``out``; with ``bits``, per-channel PTQ first. Returns the
    :class:`~.pack.PackInfo`."""
    from sparseprior.compress.pack import pack
    from sparseprior.compress.quantize import QuantSpec, freeze_quantized_, quantize_

    if not isinstance(build, Mapping):
        raise ValueError(f"build must be a JSON object of build_model keywords, got {build!r}")
    spec = QuantSpec(bits=bits, scheme=scheme) if bits is not None else None
    net = load_weights(_build_model(model, build), weights)
    if spec is not None:
        quantize_(net, spec)
        freeze_quantized_(net)
    return pack(net, out, model_name=model, build=dict(build))


def packed_rows(header: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per stored tensor of a packed file's header."""
    return [{"tensor": r["name"], "shape": "x".join(map(str, r["shape"])),
             "encoding": r["encoding"], "positions": r.get("positions") or "",
             "bits": (r.get("quant") or {}).get("bits", ""), "nnz": r.get("nnz", ""),
             "bytes": sum(n for _, n in r["parts"])} for r in header["tensors"]]


# --------------------------------------------------------------------------- bench


@dataclasses.dataclass
class PackedBenchConfig(Config):
    """``compress bench``: how the packed model is timed.

    Attributes:
        batch: batch sizes, each ``>= 1``.
        rounds: interleaved timing rounds (statistics over rounds; >= 200 for a report).
        calls: back-to-back calls per candidate per round (``None``: ``max(3, 64 // batch)``).
        int8: also time ONNX Runtime and PyTorch dynamic int8 of the packed model.
        compile: also time ``torch.compile`` of both models (slow to start: 10-30 s each).
        threads: intra-op threads of PyTorch and ONNX Runtime.
    """

    batch: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    rounds: int = 200
    calls: int | None = None
    int8: bool = True
    compile: bool = False
    threads: int = 1

    def validate(self) -> None:
        if not isinstance(self.batch, list) or not self.batch:
            raise ValueError(f"batch must be a non-empty list of batch sizes, got "
                             f"{self.batch!r}")
        for b in self.batch:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"batch sizes must be integers >= 1, got {b!r} in "
                                 f"{self.batch}")
        check_positive_int(self.rounds, "rounds")
        if self.calls is not None:
            check_positive_int(self.calls, "calls")
        check_positive_int(self.threads, "threads")


ORIGINAL = "fp32 original (PyTorch)"


@dataclasses.dataclass
class PackedBench:
    """Rows (one per batch size and variant) and the notes that say how to read them."""

    rows: list[dict[str, Any]]
    notes: list[str]
    latency: dict[int, Any]


@dataclasses.dataclass
class _Variant:
    fn: Callable[[Any], Any]
    numpy: bool = False  # ONNX Runtime takes numpy arrays


def bench_variants(packed: str | Path, config: PackedBenchConfig
                   ) -> tuple[dict[str, _Variant], list[str], tuple[int, ...]]:
    """Every timed variant (name -> callable on one input), notes on the ones that are not
    available, and the input shape ``(C, H, W)`` / ``(features,)``."""
    from sparseprior.compress.export import (
        deployable_copy,
        export_onnx,
        ort_int8,
        ort_run,
        ort_session,
    )
    from sparseprior.compress.latency import functional_chain
    from sparseprior.compress.pack import read_header, unpack
    from sparseprior.compress.quantize import dynamic_int8

    header, _ = read_header(packed)
    arch = header["architecture"]
    small = deployable_copy(unpack(packed))
    original = _build_model(arch["model"], arch["build"]).eval()
    example = original.example_input(2)
    variants: dict[str, _Variant] = {}
    notes: list[str] = []
    for label, model in {"fp32 original": original, "packed model": small}.items():
        variants[f"{label} (PyTorch)"] = _Variant(model)
        chain = functional_chain(model, example)
        if chain is None:
            notes.append(f"{label}: no bare functional chain (not a plain chain of layers)")
        else:
            variants[f"{label} (functional)"] = _Variant(chain)
        session = ort_session(export_onnx(model, example[:1]), threads=config.threads)
        variants[f"{label} (ONNX Runtime)"] = _Variant(partial(ort_run, session), numpy=True)
        if config.compile:
            variants[f"{label} (torch.compile)"] = _Variant(torch.compile(model))
    if config.int8:
        variants["packed model (PyTorch dynamic int8)"] = _Variant(dynamic_int8(small))
        session = ort_session(ort_int8(export_onnx(small, example[:1])), threads=config.threads)
        variants["packed model (ONNX Runtime int8)"] = _Variant(partial(ort_run, session),
                                                                numpy=True)
    return variants, notes, tuple(example.shape[1:])


def _runners(variants: Mapping[str, _Variant], x: torch.Tensor, notes: list[str]
             ) -> dict[str, Callable[[], Any]]:
    """Bind ``x``; a variant that fails on it (e.g. ``torch.compile`` without a compiler) is
    left out with a note."""
    out = {}
    xn = x.numpy()
    for name, v in variants.items():
        arg = xn if v.numpy else x
        try:
            with torch.inference_mode():
                v.fn(arg)
        except Exception as err:  # noqa: BLE001 (an unavailable backend is reported, not fatal)
            if name == ORIGINAL:
                raise
            note = f"{name}: failed ({_first_line(err)})"
            if note not in notes:
                notes.append(note)
            continue
        out[name] = partial(v.fn, arg)
    return out


def bench_packed(packed: str | Path, config: PackedBenchConfig | None = None) -> PackedBench:
    """Latency of the packed model vs its fp32 original architecture, side by side.

    Per batch size every variant is timed in ``config.rounds`` interleaved rounds on
    ``config.threads`` threads; a row gives its median ms (IQR over rounds) and the median
    (IQR) of the per-round ratio against the fp32 original in PyTorch and against the
    *fastest* fp32 original variant (functional chain, ONNX Runtime, ``torch.compile``).
    Weights come from the file; inputs are random (speed only).
    """
    from sparseprior.compress.latency import measure_latency

    config = config or PackedBenchConfig()
    before = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    latency: dict[int, Any] = {}
    try:
        torch.set_num_threads(config.threads)
        variants, notes, shape = bench_variants(packed, config)
        for b in config.batch:
            x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
            res = measure_latency(_runners(variants, x, notes), baseline=ORIGINAL,
                                  rounds=config.rounds, calls=config.calls or max(3, 64 // b),
                                  warmup=3, threads=config.threads)
            latency[b] = res
            rows += _bench_rows(b, res)
    finally:
        torch.set_num_threads(before)
    notes.append(f"{config.threads} thread(s), {config.rounds} interleaved rounds; ms: median "
                 f"[IQR] per call; ratios: median [IQR] over rounds of t_baseline / t_variant "
                 f"(> 1: faster); 'vs best fp32': against the fastest fp32 original variant "
                 f"at that batch. Random inputs: speed only.")
    return PackedBench(rows, notes, latency)


def _bench_rows(batch: int, res: Any) -> list[dict[str, Any]]:
    fp32 = [n for n in res.median_ms if n.startswith("fp32 original")]
    best = min(fp32, key=lambda n: res.median_ms[n])
    vs_orig, vs_best = res.ratio_stats(ORIGINAL), res.ratio_stats(best)
    rows = []
    for name, ms in res.median_ms.items():
        q1, q3 = res.iqr_ms[name]
        rows.append({"batch": batch, "variant": name, "median ms": round(ms, 4),
                     "IQR ms": f"[{q1:.4f}, {q3:.4f}]",
                     "vs fp32 PyTorch": _ratio(vs_orig[name]),
                     "best fp32": best[len("fp32 original "):].strip("()"),
                     "vs best fp32": _ratio(vs_best[name])})
    return rows


def _ratio(stats: tuple[float, float, float]) -> str:
    return f"{stats[0]:.2f} [{stats[1]:.2f}, {stats[2]:.2f}]"
