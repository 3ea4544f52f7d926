"""Fine-tuning in compressed form: adapt a packed model to new data without decompressing its
structure, and re-pack it to the same format.

A packed weight is ``W = codes * scale`` (one float32 scale per output channel, or one per
tensor) on a fixed sparsity mask. During fine-tuning here:

* the **mask is fixed**: pruned weights stay exactly zero and kept weights stay non-zero;
* the **code grid is fixed**: the bit width, scheme and granularity of every quantized tensor
  are those of the file; the weight is always ``codes * scale`` on that grid;
* what is **trained** is what the format keeps free: the per-channel (or per-tensor) ``scale``
  of every weight, biases and normalisation parameters, and, for the layers named in
  ``code_layers`` (symmetric uniform codes only), the integer codes themselves by QAT with a
  straight-through estimator: a latent float per kept weight, rounded to the grid in the
  forward pass, its magnitude kept in ``[1, 2^(b-1) - 1]`` (so it never becomes a pruned zero).
  The codes at the grid's end (``|code| = 2^(b-1) - 1``) stay fixed, so each channel keeps its
  range and re-quantizing at pack time reproduces the trained scale and codes.

The trained model is written back with :func:`~sparseprior.compress.pack.pack`: same mask,
same code widths, same number of scales, so the file size changes only by the header (the
meta records the fine-tuning). Peak training memory is measured as the growth of the
process's peak resident set size during training (Linux ``/proc/self/status`` ``VmHWM``, reset
through ``/proc/self/clear_refs`` before training).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset, TensorDataset

from sparseprior.common.config import Config
from sparseprior.common.validation import check_positive_int, check_range
from sparseprior.compress.quantize import (
    QuantSpec,
    freeze_quantized_,
    quant_spec_of,
    quantize_,
    strip_quant_,
)
from sparseprior.compress.serve import layer_codes
from sparseprior.engine import TrainConfig, Trainer


@dataclasses.dataclass
class FinetuneConfig(Config):
    """Fine-tuning a packed model in compressed form.

    Attributes:
        epochs: passes over the new training data.
        lr: Adam learning rate (cosine schedule to 0).
        batch_size: training batch size.
        train_scales: train the per-channel/per-tensor scale of every weight.
        train_biases: train biases and normalisation parameters.
        code_layers: layers whose codes are trained by QAT on the fixed grid (symmetric uniform
            codes only), e.g. ["features.0"]; empty: no codes are trained.
        code_lr: step size of the latent codes, in code units (a code moves one grid step
            once its latent has moved 0.5); the latent is stored divided by ``code_lr / lr``
            so that one Adam learning rate serves both.
        seed: seed of the data order.
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    train_scales: bool = True
    train_biases: bool = True
    code_layers: list[str] = dataclasses.field(default_factory=list)
    code_lr: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_range(float(self.lr), "lr", 0.0, None, low_inclusive=False)
        check_range(float(self.code_lr), "code_lr", 0.0, None, low_inclusive=False)
        if isinstance(self.code_layers, str) or not all(
                isinstance(n, str) for n in self.code_layers):
            raise ValueError(f"code_layers must be a list of layer names, got "
                             f"{self.code_layers!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam",
                           lr=self.lr, weight_decay=0.0, lr_schedule="cosine", seed=self.seed,
                           device="cpu", eval_every=0, log_every=0, progress=False)


# --------------------------------------------------------------------------- the weight


class FixedGridWeight(nn.Module):
    """Parametrization ``W = codes * scale`` on a fixed mask and code grid.

    Args:
        codes: float tensor of the weight's shape: integer codes (uniform) or signed powers of
            two (pow2) or float values (unquantized weights, scale 1); zero off the mask.
        scale: ``(C,)`` per output channel or ``(1,)`` per tensor.
        positive: keep the scale positive (asymmetric codes, whose zero point assumes it).
        qmax: largest code magnitude when the codes are trained, else ``None``.
        gain: the latent codes are ``gain * latent`` (Adam moves ``latent`` by about the
            learning rate per step, so the codes move by about ``gain * lr``).
    """

    def __init__(self, codes: Tensor, scale: Tensor, *, positive: bool, train_scale: bool,
                 qmax: int | None = None, gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("base", codes.detach().float().clone())
        self.scale = nn.Parameter(scale.detach().float().clone(), requires_grad=train_scale)
        self.positive = positive
        self.qmax = qmax
        self.gain = float(gain)
        if qmax is not None:
            flat = self.base.reshape(-1)
            free = (flat != 0) & (flat.abs() < qmax)  # kept, and not at the grid's end
            self.register_buffer("free_index", torch.nonzero(free).reshape(-1))
            self.latent = nn.Parameter(flat[self.free_index].clone() / self.gain)

    def codes(self) -> Tensor:
        """The current codes (weight's shape); straight-through gradient to ``latent``."""
        if self.qmax is None:
            return self.base
        u = self.latent * self.gain
        mag = u.detach().abs().round().clamp(1, self.qmax)
        q = torch.where(u.detach() >= 0, mag, -mag)
        q = u + (q - u).detach()
        return self.base.reshape(-1).index_put((self.free_index,), q).reshape(self.base.shape)

    def forward(self, original: Tensor) -> Tensor:
        s = self.scale.abs() if self.positive else self.scale
        return self.codes() * s.reshape(-1, *([1] * (self.base.dim() - 1)))

    def trainable(self) -> int:
        """Values fine-tuning may change: scales plus trainable codes."""
        count = self.scale.numel() if self.scale.requires_grad else 0
        return count + (self.latent.numel() if self.qmax is not None else 0)


def _grid_weight(module: nn.Module, spec: QuantSpec | None, config: FinetuneConfig,
                 name: str) -> FixedGridWeight:
    codes, scale = layer_codes(module.weight, spec)
    scale_t = torch.from_numpy(scale)
    if spec is not None and spec.granularity == "tensor":
        scale_t = scale_t[:1]
    qmax = None
    if name in config.code_layers:
        if spec is None or spec.scheme != "uniform" or not spec.symmetric:
            raise ValueError(f"code_layers: layer {name!r} has "
                             f"{'no codes' if spec is None else spec.to_dict()}; training "
                             f"codes needs symmetric uniform codes")
        qmax = 2 ** (spec.bits - 1) - 1
    positive = spec is not None and spec.scheme == "uniform" and not spec.symmetric
    return FixedGridWeight(torch.from_numpy(codes).float(), scale_t, positive=positive,
                           train_scale=config.train_scales, qmax=qmax,
                           gain=config.code_lr / config.lr)


def prepare_compressed_(model: nn.Module, config: FinetuneConfig
                        ) -> dict[str, QuantSpec | None]:
    """Make ``model`` (as decoded from a packed file) trainable in compressed form, in place.

    Every Linear/Conv2d weight becomes a :class:`FixedGridWeight`; all other parameters are
    frozen except biases/normalisation parameters (``train_biases``). Returns
    ``layer name -> QuantSpec`` (``None`` for unquantized weights) for :func:`restore_`.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    unknown = sorted(set(config.code_layers) - set(layers))
    if unknown:
        raise ValueError(f"code_layers: unknown layer(s) {unknown}; the model's Linear/Conv2d "
                         f"layers are {list(layers)}")
    specs = {n: quant_spec_of(m) for n, m in layers.items()}
    strip_quant_(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        is_norm = isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm))
        for pname, p in module.named_parameters(recurse=False):
            if config.train_biases and (pname == "bias" or is_norm):
                p.requires_grad_(True)
    for name, module in layers.items():
        grid = _grid_weight(module, specs[name], config, name)
        parametrize.register_parametrization(module, "weight", grid, unsafe=True)
    return specs


@torch.no_grad()
def restore_(model: nn.Module, specs: Mapping[str, QuantSpec | None]) -> nn.Module:
    """Write the trained ``codes * scale`` into plain weights and re-attach each layer's
    quantization spec (weights snapped to their grid), ready for ``pack``. In place."""
    for name, spec in specs.items():
        module = model.get_submodule(name)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if spec is not None:
            quantize_(model, spec, names=[name])
    freeze_quantized_(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def trainable_count(model: nn.Module) -> int:
    """Values fine-tuning may change: trainable scales/codes of the grid weights plus every
    other parameter with ``requires_grad``."""
    grids = [m for m in model.modules() if isinstance(m, FixedGridWeight)]
    inside = {id(p) for g in grids for p in g.parameters()}
    rest = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in inside)
    return rest + sum(g.trainable() for g in grids)


# --------------------------------------------------------------------------- measurement


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_peak_memory(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """``(fn(), bytes)``: how far the process's peak resident memory rose above its resident
    memory at the start while ``fn`` ran (Linux; ``None`` where ``/proc`` is unavailable)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return fn(), None
    start = _proc_status_kb("VmRSS")
    result = fn()
    peak = _proc_status_kb("VmHWM")
    if start is None or peak is None:
        return result, None
    return result, max(0, peak - start) * 1024


def fit_measured(model: nn.Module, train_set: Dataset, train: TrainConfig
                 ) -> tuple[list[dict[str, Any]], int | None]:
    """Train with the one :class:`~sparseprior.engine.Trainer`; ``(history, peak bytes)``."""
    trainer = Trainer(model, train_set, train)
    return measure_peak_memory(trainer.fit)


@torch.no_grad()
def accuracy_on(model: nn.Module, data: Dataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on a ``TensorDataset``."""
    x, y = data.tensors  # type: ignore[attr-defined]
    model.eval()
    hits = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))


# --------------------------------------------------------------------------- the packed file


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`finetune_packed` did.

    Attributes:
        model: the fine-tuned model (plain layers with quantization specs, eval mode).
        path: the re-packed file.
        trainable: values fine-tuning could change; ``total``: all parameters of the model.
        peak_memory_bytes: measured peak memory growth during training (``None``: not Linux).
        size_before, size_after: packed file sizes in bytes.
        acc_before, acc_after: accuracy on ``test_set`` (``None`` without one).
        history: the trainer's epoch records.
    """

    model: nn.Module
    path: Path
    trainable: int
    total: int
    peak_memory_bytes: int | None
    size_before: int
    size_after: int
    acc_before: float | None
    acc_after: float | None
    history: list[dict[str, Any]]

    def row(self) -> dict[str, Any]:
        return {"trainable": self.trainable, "total": self.total,
                "trainable %": round(100 * self.trainable / max(1, self.total), 3),
                "peak MB": None if self.peak_memory_bytes is None
                else round(self.peak_memory_bytes / 2**20, 2),
                "size before": self.size_before, "size after": self.size_after,
                "acc before": self.acc_before, "acc after": self.acc_after}


def load_packed(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The ONE adapter to :mod:`sparseprior.compress.pack` on the reading side: the decoded
    model and the file's header (architecture, meta)."""
    from sparseprior.compress.pack import read_header, unpack

    return unpack(path), read_header(path)[0]


def write_packed(model: nn.Module, header: Mapping[str, Any], path: str | Path,
                 meta: Mapping[str, Any]) -> int:
    """The adapter on the writing side: re-pack ``model`` with the original file's model name
    and build arguments; returns the new file's size in bytes."""
    from sparseprior.compress.pack import pack

    arch = header["architecture"]
    return pack(model, path, model_name=arch["model"], build=arch["build"],
                meta={**dict(header.get("meta") or {}), **dict(meta)}).size


def _masks(model: nn.Module) -> dict[str, Tensor]:
    return {n: m.weight.detach() != 0 for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def finetune_packed(path: str | Path, train_set: Dataset, out: str | Path,
                    config: FinetuneConfig | None = None, *, test_set: Dataset | None = None
                    ) -> FinetuneResult:
    """Fine-tune the packed model at ``path`` on ``train_set`` in compressed form (see the
    module docstring) and write it to ``out`` in the same format.

    Raises ``ValueError`` for a bad config or file; ``RuntimeError`` if the mask changed (a bug).
    """
    config = config or FinetuneConfig()
    config.validate()
    path, out = Path(path), Path(out)
    model, header = load_packed(path)
    before_masks = _masks(model)
    acc_before = accuracy_on(model, test_set) if test_set is not None else None
    specs = prepare_compressed_(model, config)
    trainable = trainable_count(model)
    history, peak = fit_measured(model, train_set, config.train_config())
    restore_(model, specs)
    after_masks = _masks(model)
    changed = [n for n in before_masks if not torch.equal(before_masks[n], after_masks[n])]
    if changed:
        raise RuntimeError(f"fine-tuning changed the sparsity mask of {changed}")
    size_after = write_packed(model, header, out, {"finetune": config.to_dict()})
    acc_after = accuracy_on(model, test_set) if test_set is not None else None
    total = sum(p.numel() for p in model.parameters())
    return FinetuneResult(model, out, trainable, total, peak, os.path.getsize(path),
                          size_after, acc_before, acc_after, history)


# --------------------------------------------------------------------------- the shift


@dataclasses.dataclass
class ShiftConfig(Config):
    """A fixed, documented distortion of image data (applied to train and test alike).

    Attributes:
        rotate: rotation in degrees (bilinear, border padding), 0: none.
        invert: flip the sign of the (standardised) pixel values.
        noise: standard deviation of added Gaussian noise (in standardised units).
        seed: seed of the noise (the split's index is added, so train and test differ).
    """

    rotate: float = 30.0
    invert: bool = False
    noise: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        check_range(float(self.noise), "noise", 0.0, None)
        if not math.isfinite(float(self.rotate)):
            raise ValueError(f"rotate must be finite, got {self.rotate!r}")


@torch.no_grad()
def shift_images(x: Tensor, shift: ShiftConfig, offset: int = 0) -> Tensor:
    """``x`` ``(N, C, H, W)`` distorted by ``shift`` (noise seeded with ``seed + offset``)."""
    shift.validate()
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    out = x.float()
    if shift.rotate:
        a = math.radians(float(shift.rotate))
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
    if shift.invert:
        out = -out
    if shift.noise:
        g = torch.Generator().manual_seed(shift.seed + offset)
        out = out + shift.noise * torch.randn(out.shape, generator=g)
    return out


def shifted(data: Dataset, shift: ShiftConfig, offset: int = 0) -> TensorDataset:
    """A ``TensorDataset`` with the images of ``data`` distorted by :func:`shift_images`."""
    x, y = data.tensors  # type: ignore[attr-defined]
    return TensorDataset(shift_images(x, shift, offset), y)


@dataclasses.dataclass
class FinetuneRunConfig(Config):
    """Fine-tuning a packed model on a registry dataset.

    Attributes:
        tune: how to fine-tune (:class:`FinetuneConfig`).
        shift: the distortion applied to train and test images (:class:`ShiftConfig`).
        distort: apply ``shift`` (false: fine-tune on the undistorted data).
        dataset: fashion-mnist, mnist, digits, ...
        data_root: dataset folder (default: the dataset's own).
        subset: use only this many training images.
    """

    tune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    shift: ShiftConfig = dataclasses.field(default_factory=ShiftConfig)
    distort: bool = True
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = None

    def validate(self) -> None:
        self.tune.validate()
        self.shift.validate()
        if self.subset is not None:
            check_positive_int(self.subset, "subset")


def finetune_on_dataset(path: str | Path, out: str | Path, run: FinetuneRunConfig
                        ) -> FinetuneResult:
    """:func:`finetune_packed` on ``run.dataset``, distorted by ``run.shift`` (train and test
    alike) when ``run.distort``; accuracies are on the (shifted) test split."""
    from sparseprior.data import load_dataset

    run.validate()
    splits = load_dataset(run.dataset, run.data_root, subset=run.subset, seed=run.tune.seed)
    train, test = splits.train, splits.test
    if run.distort:
        train, test = shifted(train, run.shift, 0), shifted(test, run.shift, 1)
    return finetune_packed(path, train, out, run.tune, test_set=test)
