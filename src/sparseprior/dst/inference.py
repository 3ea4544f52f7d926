"""Real sparse inference: CSR linear layers, export of a trained sparse model, latency ratios.

During training the sparsity is *simulated*: weights are dense tensors with zeros, so a masked
step costs the same FLOPs as a dense one. :func:`to_sparse_inference` turns the sparse
``nn.Linear`` layers of a trained model into :class:`CSRLinear` layers that store only the
non-zeros (``torch.sparse_csr``) and multiply with sparse kernels, which is really faster at
high sparsity on CPU (measured by :func:`compare_latency`). Conv layers are left dense.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.common.config import Config
from sparseprior.common.validation import check_positive_int, check_range

CSR_KIND = "dst/csr"


class CSRLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored in CSR (only the non-zeros).

    Input ``(B, in_features)`` or ``(in_features,)``; output ``(B, out_features)`` or
    ``(out_features,)``. Batch 1 uses a sparse matrix-vector product, larger batches one sparse
    x dense product ``W @ x^T`` (so chained CSR layers never copy). Inference only (no
    gradients through the CSR weight).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        dense = weight.detach().to_dense() if weight.layout != torch.strided else \
            weight.detach()
        self.out_features, self.in_features = (int(s) for s in dense.shape)
        with warnings.catch_warnings():  # "CSR support is in beta": known, and measured here
            warnings.simplefilter("ignore", UserWarning)
            self.weight = dense.to_sparse_csr()
        self.bias = bias.detach().clone() if bias is not None else None

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> CSRLinear:
        return cls(layer.weight, layer.bias)

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"CSRLinear expects inputs (..., {self.in_features}), got "
                             f"{tuple(x.shape)}")
        if x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1):
            vec = x.reshape(-1)
            out = torch.mv(self.weight, vec) if self.bias is None else \
                torch.addmv(self.bias, self.weight, vec)
            return out if x.ndim == 1 else out.unsqueeze(0)
        flat = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = torch.mm(self.weight, flat.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat.t())
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def to_dense_weight(self) -> Tensor:
        return self.weight.to_dense()

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz} ({self.nnz / total:.2%} dense)")


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def to_sparse_inference(model: nn.Module, *, min_sparsity: float = 0.5,
                        layers: Sequence[str] | None = None) -> nn.Module:
    """A copy of ``model`` (CPU, eval mode) whose sparse ``nn.Linear`` layers are CSR layers.

    Args:
        model: a trained model whose pruned weights are exactly zero (e.g. a DST run).
        min_sparsity: convert a linear layer only if its counted fraction of zero weights is at
            least this (CSR is slower than dense at low sparsity), in ``[0, 1]``.
        layers: module names to consider (default: every ``nn.Linear``).

    Returns:
        the converted copy; its outputs equal the original's up to float summation order.
    """
    check_range(float(min_sparsity), "min_sparsity", 0.0, 1.0)
    out = copy.deepcopy(model).to("cpu").eval()
    linear = _linear_layers(out)
    names = list(linear) if layers is None else list(layers)
    unknown = [n for n in names if n not in linear]
    if unknown:
        raise ValueError(f"layers {unknown} are not nn.Linear modules of the model; linear "
                         f"layers are {list(linear)}")
    for name in names:
        layer = linear[name]
        sparsity = 1.0 - int(torch.count_nonzero(layer.weight)) / layer.weight.numel()
        if sparsity >= min_sparsity:
            _set_module(out, name, CSRLinear.from_linear(layer))
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def csr_layers(model: nn.Module) -> dict[str, CSRLinear]:
    """The :class:`CSRLinear` modules of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CSRLinear)}


def save_sparse_inference(path: str | Path, model: nn.Module,
                          info: Mapping[str, Any] | None = None) -> Path:
    """Save the CSR parts (``crow_indices``, ``col_indices``, ``values``, ``bias``) of every
    :class:`CSRLinear` and the dense state of the rest, as safetensors + JSON (atomic)."""
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    csr = csr_layers(model)
    for name, layer in csr.items():
        w = layer.weight
        tensors[f"{name}.crow_indices"] = w.crow_indices()
        tensors[f"{name}.col_indices"] = w.col_indices()
        tensors[f"{name}.values"] = w.values()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias
        shapes[name] = [layer.out_features, layer.in_features]
    for key, value in model.state_dict().items():
        if value.layout == torch.strided:
            tensors[key] = value
    return save_safetensors_checkpoint(path, tensors, {"csr_layers": shapes, **(info or {})},
                                       kind=CSR_KIND)


def load_sparse_inference(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a model saved by :func:`save_sparse_inference` into ``model`` (same architecture,
    dense); returns the converted copy (CPU, eval mode)."""
    tensors, header = load_safetensors_checkpoint(path, kind=CSR_KIND)
    shapes = header["config"].get("csr_layers", {})
    out = copy.deepcopy(model).to("cpu").eval()
    for name, (rows, cols) in shapes.items():
        weight = torch.sparse_csr_tensor(tensors.pop(f"{name}.crow_indices"),
                                         tensors.pop(f"{name}.col_indices"),
                                         tensors.pop(f"{name}.values"), size=(rows, cols),
                                         check_invariants=True)
        _set_module(out, name, CSRLinear(weight, tensors.pop(f"{name}.bias", None)))
    missing, unexpected = out.load_state_dict(tensors, strict=False)
    if unexpected:
        raise ValueError(f"{str(path)!r} has tensors {unexpected} that the model lacks")
    return out


# --------------------------------------------------------------------------- latency


def _calls_for(model: nn.Module, x: Tensor, min_seconds: float) -> int:
    """Back-to-back calls that take about ``min_seconds`` (after a short warm-up)."""
    for _ in range(2):
        model(x)
    start = time.perf_counter()
    for _ in range(3):
        model(x)
    return max(1, int(min_seconds / max((time.perf_counter() - start) / 3, 1e-7)))


@torch.no_grad()
def compare_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 15,
    min_seconds: float = 0.02,
    threads: int = 1,
    reference: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Forward latency of each model, interleaved, with speed-ups over ``reference``.

    For each batch size this calls :func:`sparseprior.compress.latency.measure_latency` (the
    project's one latency tool: ``repeats`` rounds, the order rotating, every model timed once
    per round on the same random input; medians over rounds), with the number of back-to-back
    calls per round set so the slowest model's block lasts about ``min_seconds``.

    Args:
        models: name -> model (CPU, eval mode).
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``.
        batch_sizes: batch sizes to time.
        repeats: interleaved rounds.
        min_seconds: length of one timed block.
        threads: ``torch.set_num_threads`` during the measurement.
        reference: the model the speed-ups are relative to (default: the first).
        seed: seed of the random input.

    Returns:
        rows ``{model, batch, ms, speedup}``: ``ms`` the median milliseconds per forward call,
        ``speedup`` the median over rounds of ``t(reference) / t(model)`` in the same round.
    """
    from sparseprior.compress.latency import measure_latency, torch_runner

    if not models:
        raise ValueError("models is empty; pass name -> model")
    check_positive_int(repeats, "repeats")
    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference={reference!r} is not among the models {list(models)}")
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        check_positive_int(batch, "batch_sizes[i]")
        x = torch.randn((batch, *input_shape), generator=gen)
        calls = min(_calls_for(m, x, min_seconds) for m in models.values())
        result = measure_latency({n: torch_runner(m, x) for n, m in models.items()},
                                 baseline=reference, rounds=repeats, calls=calls,
                                 warmup=2, threads=threads)
        rows += [{"model": n, "batch": batch, "ms": result.median_ms[n],
                  "speedup": result.speedup[n]} for n in models]
    return rows


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, inputs: Tensor) -> float:
    """``max |a(x) - b(x)|`` over ``inputs`` (CPU)."""
    return float((a(inputs) - b(inputs)).abs().max())


@dataclasses.dataclass
class ExportConfig(Config):
    """How :func:`export_run` converts and measures a run.

    Attributes:
        min_sparsity: convert linear layers at least this sparse to CSR, in [0, 1].
        check_images: test images on which dense and CSR outputs are compared.
        batch_sizes: batch sizes of the latency comparison.
        repeats: interleaved timing rounds (0: no timing).
        threads: torch threads during the timing.
    """

    min_sparsity: float = 0.5
    check_images: int = 2000
    batch_sizes: tuple[int, ...] = (1, 256)
    repeats: int = 15
    threads: int = 1

    def validate(self) -> None:
        check_range(float(self.min_sparsity), "min_sparsity", 0.0, 1.0)
        check_positive_int(self.check_images, "check_images")
        if not self.batch_sizes:
            raise ValueError("batch_sizes must hold at least one batch size")
        for b in self.batch_sizes:
            check_positive_int(b, "batch_sizes[i]")
        check_positive_int(self.repeats, "repeats", allow_zero=True)
        check_positive_int(self.threads, "threads")


def export_run(run_dir: str | Path, out: str | Path | None = None,
               config: ExportConfig | None = None, **options: Any) -> dict[str, Any]:
    """Export a finished DST run folder to CSR inference and measure it against dense.

    ``config`` (or :class:`ExportConfig` keywords in ``options``) says what to convert and
    measure. Writes ``out`` (default ``<run>/sparse_inference.safetensors`` + ``.json``) and
    ``<run>/export.json`` with: the CSR layers and their non-zeros, the largest output
    difference and both accuracies on the first ``check_images`` test images, and the
    interleaved latency of dense vs CSR (``compare_latency``) at ``batch_sizes``.
    """
    cfg = (config or ExportConfig()).replace(**options) if options else (config or
                                                                        ExportConfig())
    min_sparsity, check_images, repeats, threads = (cfg.min_sparsity, cfg.check_images,
                                                    cfg.repeats, cfg.threads)
    batch_sizes = tuple(cfg.batch_sizes)
    from sparseprior.common.runs import RunDir
    from sparseprior.dst.train import load_run_model, load_splits

    config, model, _ = load_run_model(run_dir)
    model = model.to("cpu").eval()
    sparse = to_sparse_inference(model, min_sparsity=min_sparsity)
    layers = {n: {"shape": [m.out_features, m.in_features], "nnz": m.nnz}
              for n, m in csr_layers(sparse).items()}
    run = RunDir(run_dir)
    path = save_sparse_inference(out or run.file("sparse_inference"), sparse,
                                 {"run": str(run.path), "min_sparsity": min_sparsity})
    splits = load_splits(config)
    x, y = splits.test.tensors
    x, y = x[:check_images], y[:check_images]
    with torch.no_grad():
        dense_out, sparse_out = model(x), sparse(x)
    result = {
        "file": str(path), "csr_layers": layers,
        "max_abs_difference": float((dense_out - sparse_out).abs().max()),
        "checked_images": int(len(y)),
        "dense_accuracy": float((dense_out.argmax(1) == y).float().mean()),
        "sparse_accuracy": float((sparse_out.argmax(1) == y).float().mean()),
        "threads": threads,
        "latency": compare_latency({"dense (masked)": model, "csr": sparse},
                                   tuple(splits.input_shape), batch_sizes=batch_sizes,
                                   repeats=repeats, threads=threads) if repeats else [],
    }
    run.write_json("export.json", result)
    return result
