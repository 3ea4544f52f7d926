"""``compress_(model, recipe)``: run a recipe's steps in order, fine-tuning with the one
``Trainer``, and report after every step: accuracy, parameters, FLOPs, packed file size and
latency.

::

    from sparseprior.compress import Recipe, compress_
    recipe = Recipe(steps=[{"kind": "prune", "options": {"sparsity": 0.9}, "epochs": 1},
                           {"kind": "quantize", "options": {"bits": 4}, "epochs": 1}],
                    train={"optimizer": "adam", "lr": 5e-4})
    result = compress_(model, recipe, train_set=splits.train, test_set=splits.test,
                       model_name="lenet300")
    result.model, result.rows()       # the compressed model and one row per step

Counting conventions: ``params`` counts every parameter of the model as it is (structured
pruning and factorization change it); ``nonzero`` counts the non-zero ones; ``macs`` are the
multiply-accumulates per sample of conv/linear layers as executed densely, ``nonzero_macs``
only those with a non-zero weight; ``FLOPs = 2 * MACs``. ``packed_bytes`` is
``os.path.getsize`` of the packed file; latency is PyTorch eager, one thread, median
(a quick interleaved measurement; the benchmarks measure longer and side by side).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sparseprior.compress.export import deployable_copy
from sparseprior.compress.latency import measure_latency, torch_runner
from sparseprior.compress.layers import layer_type_of
from sparseprior.compress.pack import pack
from sparseprior.compress.quantize import freeze_quantized_
from sparseprior.compress.recipe import Recipe, Step
from sparseprior.compress.steps import StepState
from sparseprior.engine import Trainer
from sparseprior.models.base import forward_with_hooks
from sparseprior.sparsity import MaskSet

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def count_cost(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """``params``, ``nonzero`` (parameters), ``macs`` and ``nonzero_macs`` per sample (see the
    module docstring) from one forward pass of ``example_input`` ``(1, *input_shape)``."""
    totals = {"macs": 0, "nonzero_macs": 0}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        weight = layer_type_of(module).dense_weight(module)  # type: ignore[union-attr,misc]
        units = weight.shape[0]
        per_unit = output.numel() // max(1, output.shape[0]) // units  # positions per filter
        totals["macs"] += per_unit * weight.numel()
        totals["nonzero_macs"] += per_unit * int(torch.count_nonzero(weight))

    forward_with_hooks(model, example_input, hook, _has_dense_weight)
    return {"params": sum(p.numel() for p in model.parameters()),
            "nonzero": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
            **totals}


def _has_dense_weight(module: nn.Module) -> bool:
    entry = layer_type_of(module)
    return entry is not None and entry.dense_weight is not None


@torch.no_grad()
def accuracy(predict: Callable[[Tensor], Any], dataset: Dataset, batch_size: int = 1000
             ) -> float:
    """Top-1 accuracy of ``predict`` (inputs ``(B, ...)`` -> logits, torch or numpy) over a
    ``TensorDataset``-like dataset of ``(x, y)``."""
    x_all, y_all = dataset.tensors if hasattr(dataset, "tensors") else \
        (torch.stack([dataset[i][0] for i in range(len(dataset))]),
         torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))]))
    correct = 0
    for start in range(0, len(y_all), batch_size):
        logits = predict(x_all[start:start + batch_size])
        pred = np.asarray(logits.cpu() if isinstance(logits, Tensor) else logits).argmax(1)
        correct += int((pred == y_all[start:start + batch_size].numpy()).sum())
    return correct / len(y_all)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 1000) -> float:
    """Test accuracy of a PyTorch model (eval mode, on its own device)."""
    model.eval()
    device = next(model.parameters()).device
    return accuracy(lambda x: model(x.to(device)), dataset, batch_size)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class StepReport:
    """Measurements after one step (``index`` 0 is the input model, kind ``'original'``)."""

    index: int
    kind: str
    accuracy: float | None
    params: int
    nonzero: int
    macs: int
    nonzero_macs: int
    packed_bytes: int
    latency_ms: dict[str, float]
    seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat table row (accuracy in %, FLOPs = 2 * MACs)."""
        row: dict[str, Any] = {
            "step": self.index, "kind": self.kind,
            "acc %": round(100 * self.accuracy, 2) if self.accuracy is not None else "",
            "params": self.params, "nonzero": self.nonzero,
            "MFLOPs": round(2 * self.macs / 1e6, 4),
            "nz MFLOPs": round(2 * self.nonzero_macs / 1e6, 4),
            "packed KB": round(self.packed_bytes / 1024, 1)}
        row.update({f"{k} ms": round(v, 4) for k, v in self.latency_ms.items()})
        return row


@dataclasses.dataclass
class CompressResult:
    """The compressed model, the per-step reports and the final masks (if any)."""

    model: nn.Module
    reports: list[StepReport]
    masks: MaskSet | None = None

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.reports]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [dataclasses.asdict(r) for r in self.reports]}


# --------------------------------------------------------------------------- steps


def _apply_step(state: StepState, step: Step) -> dict[str, Any]:
    """Transform the model with the registered step (gradual pruning only attaches masks and a
    callback here: it prunes during :func:`_finetune`); returns details for the report."""
    state.callbacks = []
    return dict(step.step_type.apply(state, step.config) or {})


def _finetune(state: StepState, step: Step, recipe: Recipe, train_set: Dataset,
              run_dir: Path | None) -> dict[str, Any]:
    """Fine-tune with the one ``Trainer`` (masks kept, the step's callbacks added)."""
    config = recipe.train_config(step.epochs)
    masks = state.masks
    if masks is None and state.pruned:
        masks = MaskSet.from_weights(state.model)  # keep earlier pruning's zeros
    trainer = Trainer(state.model, train_set, config, masks=masks, run_dir=run_dir)
    trainer.callbacks.extend(make(trainer) for make in state.callbacks)
    history = trainer.fit()
    if masks is not None:
        masks.detach()
        state.masks = MaskSet(masks.state_dict())
    return {"train_loss": history[-1]["train_loss"] if history else None,
            "train_acc": history[-1]["train_acc"] if history else None}


def _freeze(model: nn.Module) -> None:
    """Project training-time forms onto what is stored: quantized weights onto their grid, and
    every registered layer type's own ``freeze`` (e.g. SmartExchange ``Ce``)."""
    freeze_quantized_(model)
    for module in model.modules():
        entry = layer_type_of(module)
        if entry is not None and entry.freeze is not None:
            entry.freeze(module)


def measure_step(model: nn.Module, *, index: int, kind: str, test_set: Dataset | None,
                 example_input: Tensor, model_name: str, build: Mapping[str, Any],
                 pack_path: Path, latency_batches: tuple[int, ...] = (1, 64),
                 latency_rounds: int = 5, seconds: float = 0.0,
                 details: dict[str, Any] | None = None) -> StepReport:
    """Accuracy, counts, packed size and a quick latency of ``model``."""
    acc = evaluate(model, test_set) if test_set is not None else None
    cost = count_cost(model, example_input[:1])
    info = pack(model, pack_path, model_name=model_name, build=build)
    latency: dict[str, float] = {}
    if latency_batches and latency_rounds:
        plain = deployable_copy(model).cpu()
        shape = example_input.shape[1:]
        runners = {f"b{b}": torch_runner(plain, torch.randn(b, *shape)) for b in latency_batches}
        latency = measure_latency(runners, rounds=latency_rounds, calls=5, warmup=2).median_ms
    return StepReport(index, kind, acc, cost["params"], cost["nonzero"], cost["macs"],
                      cost["nonzero_macs"], info.size, latency, seconds, details or {})


def compress_(model: nn.Module, recipe: Recipe, *, train_set: Dataset | None = None,
              test_set: Dataset | None = None, model_name: str,
              build: Mapping[str, Any] | None = None, example_input: Tensor | None = None,
              run_dir: str | Path | None = None, latency_rounds: int = 5,
              progress: Callable[[StepReport], None] | None = None) -> CompressResult:
    """Run ``recipe`` on ``model`` and measure after every step.

    ``model`` is changed in place by in-place steps; structured pruning returns a new, smaller
    model, so always use ``result.model``. ``model_name``/``build`` describe how the registry
    built it (needed for the packed file). ``train_set`` is required when a step fine-tunes.
    With ``run_dir`` each step's packed file (``step_<i>.sppk``) and training logs are kept
    there. ``latency_rounds=0`` skips the latency measurement.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if any(s.epochs for s in recipe.steps) and train_set is None:
        raise ValueError("the recipe fine-tunes (a step has epochs > 0) but no train_set "
                         "was given")
    build = dict(build or {})
    example_input = example_input if example_input is not None else \
        model.example_input(2)  # type: ignore[operator]
    tmp = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    else:
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
    measure = {"test_set": test_set, "example_input": example_input, "model_name": model_name,
               "build": build, "latency_rounds": latency_rounds}
    try:
        state = StepState(model, example_input)
        reports = [measure_step(model, index=0, kind="original",
                                pack_path=folder / "step_0.sppk", **measure)]
        if progress:
            progress(reports[-1])
        for i, step in enumerate(recipe.steps, start=1):
            start = time.perf_counter()
            details = _apply_step(state, step)
            if step.epochs:
                details.update(_finetune(state, step, recipe, train_set,
                                         folder / f"step_{i}_train" if run_dir else None))
            _freeze(state.model)
            reports.append(measure_step(state.model, index=i, kind=step.kind,
                                        pack_path=folder / f"step_{i}.sppk",
                                        seconds=time.perf_counter() - start, details=details,
                                        **measure))
            if progress:
                progress(reports[-1])
    finally:
        if tmp is not None:
            tmp.cleanup()
    return CompressResult(state.model, reports, state.masks)
