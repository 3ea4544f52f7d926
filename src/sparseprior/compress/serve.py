"""The file is the fast model: run a packed ``.sppk`` MLP straight from its codes.

``unpack`` decodes a packed file to dense float weights, which are no faster than the original.
:class:`ServedModel` instead keeps each Linear layer as its *non-zeros* and their *integer codes*
(``int8`` for symmetric uniform codes, ``int16`` for asymmetric ones, float32 for power-of-two
codes and unquantized weights) with one float32 scale per output row, and multiplies with
sparse kernels::

    y[r] = scale[r] * sum_k code[r, k] * x[col(r, k)] + bias[r]

Kernels (registry :data:`KERNELS`; the ``numba`` ones need the optional ``numba`` package):

* ``dense``: ``torch.addmm`` with the decoded fp32 weight (BLAS; the layer as ``unpack`` gives it).
* ``torch-csr``: PyTorch's sparse CSR ``addmm`` on the decoded weight.
* ``csr`` (numba): row-wise gather-dot over the codes (batch 1) / row-wise axpy over the batch.
* ``csc`` (numba): column-wise scatter that *skips zero activations* (ReLU outputs, blank
  pixels): an input column is visited only when its activation is non-zero (batch 1) or
  non-zero for at least one example of the batch. When most inputs of the planning example
  share one non-zero value ``c`` (the background of standardised images), the kernel computes
  ``W x = W (x - c) + c W 1`` so that the background is skipped too (``c W 1`` folded into the
  bias once).
* ``cols`` (numba): the *dense* code matrix (zeros included, int8 for 8-bit codes: a quarter
  of the fp32 bytes), column by column with the same zero/background skipping as ``csc``;
  the loop over output rows is contiguous and vectorises, so at batch 1 it beats the
  scatter of ``csc`` when the layer is not extremely sparse (measured, not assumed).

Activations flow *feature-major*, ``(features, batch)`` contiguous float32, so the batch is the
inner, vectorisable loop of the sparse kernels; the input is transposed once on entry and the
logits once on exit. :meth:`ServedModel.from_packed` measures every applicable kernel of every
layer on the layer's real input at the requested batch size (interleaved rounds, median, one
thread) and keeps the fastest: :attr:`ServedModel.plan` lists each layer's choice and the
measured milliseconds of every candidate. Then every combination of the numba kernels fused
into one compiled call (:func:`fused_chain`; for a planned batch size >= 16 also compiled for
exactly that size, :func:`sparseprior.compress.kernels.batch_chain`) is timed through the
batch-major entry point against the per-layer chain, and the fastest is kept (``fused_ms``).
Every kernel computes in float32 from the same
values as the decoded model (only the summation order and the place of the scale multiply
differ), so outputs agree with ``unpack(path)`` to ~1e-6; :meth:`ServedModel.check` measures it.

Supported architectures: chains of Linear layers with ReLU between them (the registry's
``lenet300`` and ``mlp``); :func:`serve_packed` serves any other registry model (conv nets)
with ONNX Runtime instead (:mod:`.serve_ort`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparseprior.common.registry import Registry
from sparseprior.common.validation import check_positive_int
from sparseprior.compress.kernels import batch_chain, jit_kernels, numba
from sparseprior.compress.latency import measure_latency
from sparseprior.compress.quantize import QuantSpec, quant_spec_of, quantize_tensor

Kernel = Callable[[np.ndarray], np.ndarray]
"""A prepared layer kernel: feature-major input ``(in, B)`` -> output ``(out, B)`` (float32)."""


# --------------------------------------------------------------------------- the layers


@dataclasses.dataclass
class SparseLinear:
    """One Linear layer as served: decoded weight and its codes.

    Attributes:
        name: module name in the decoded model (e.g. ``features.0``).
        weight: decoded float32 weight ``(out, in)`` (what ``unpack`` loads).
        bias: float32 ``(out,)`` (zeros when the layer has none).
        codes: ``(out, in)`` integer-valued codes (int8/int16) or float32 values such that
            ``weight == codes * scale[:, None]`` exactly.
        scale: float32 ``(out,)``.
        relu: whether a ReLU follows the layer.
    """

    name: str
    weight: Tensor
    bias: Tensor
    codes: np.ndarray
    scale: np.ndarray
    relu: bool

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.codes))


def layer_codes(weight: Tensor, spec: QuantSpec | None) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scale)`` with ``codes * scale`` (one scale per output channel, dim 0) equal
    to ``weight`` bit for bit; ``codes`` has the weight's shape.

    Quantized weights (``spec`` given) are re-quantized (decoded weights are fixed points of
    quantization, so this returns the file's codes); the integer value ``code - zero_point`` is
    stored as int8/int16, power-of-two codes as their float multiplier. Float weights (or codes
    that do not reproduce the weight exactly) are returned as float32 values with scale 1.
    """
    w = weight.detach().float().cpu()
    rows = w.shape[0]
    ones = np.ones(rows, dtype=np.float32)
    if spec is None:
        return w.numpy().copy(), ones
    q = quantize_tensor(w, spec)
    scale = q.scale.float().reshape(-1).expand(rows) if q.scale.numel() == 1 else q.scale.float()
    col = scale.reshape(-1, *([1] * (w.dim() - 1)))
    if spec.scheme == "uniform":
        zp = q.zero_point.to(torch.int32).reshape(-1)
        zp = zp.expand(rows) if zp.numel() == 1 else zp
        ints = q.codes.to(torch.int32) - zp.reshape(col.shape)
        values = ints.float() * col
        dtype = np.int8 if int(ints.abs().max()) <= 127 else np.int16
        codes = ints.numpy().astype(dtype)
    else:
        codes_f = q.dequantize() / col  # +-2^e or 0: exact division
        values = codes_f * col
        codes = codes_f.numpy().astype(np.float32)
    if not torch.equal(values, w):
        return w.numpy().copy(), ones
    return codes, scale.numpy().astype(np.float32).copy()


def read_packed_layers(path: str | Path) -> tuple[list[SparseLinear], nn.Module]:
    """The adapter to :mod:`sparseprior.compress.pack` (with :func:`serve_packed`, which decodes
    once and then picks the MLP or the ONNX Runtime path): the served layers of a packed MLP
    and the decoded model (``unpack(path)``), for checks.

    Raises ``ValueError`` for a file that does not hold a chain of Linear/ReLU layers.
    """
    from sparseprior.compress.pack import unpack

    model = unpack(path)
    return chain_layers(model, where=f"packed file {str(path)!r}"), model


def chain_layers(model: nn.Module, where: str = "model") -> list[SparseLinear]:
    """The Linear layers of an MLP-like model (``Linear``/``ReLU``/``Flatten``/``Sequential``
    leaves in order) as :class:`SparseLinear`; ``ValueError`` for anything else."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    layers: list[SparseLinear] = []
    for name, module in leaves:
        if isinstance(module, nn.Linear):
            codes, scale = layer_codes(module.weight, quant_spec_of(module))
            bias = (module.bias.detach().float().clone() if module.bias is not None
                    else torch.zeros(module.out_features))
            layers.append(SparseLinear(name, module.weight.detach().float().clone(), bias,
                                       codes, scale, relu=False))
        elif isinstance(module, nn.ReLU) and layers and not layers[-1].relu:
            layers[-1].relu = True
        elif not isinstance(module, (nn.Flatten, nn.Identity, nn.Dropout)):
            raise ValueError(f"{where}: serving supports chains of Linear layers with ReLU "
                             f"between them (lenet300, mlp); found {type(module).__name__} "
                             f"{name!r}")
    if not layers:
        raise ValueError(f"{where} has no Linear layer to serve")
    for prev, nxt in zip(layers, layers[1:], strict=False):
        if prev.shape[0] != nxt.shape[1]:
            raise ValueError(f"{where}: layer {nxt.name!r} takes {nxt.shape[1]} inputs but "
                             f"{prev.name!r} gives {prev.shape[0]}; not a simple chain")
    return layers


# --------------------------------------------------------------------------- kernels

KERNELS: Registry[Callable[[SparseLinear, np.ndarray], Kernel]] = Registry("serve kernel")
"""Kernel name -> ``prepare(layer, example) -> kernel`` (``example``: the layer's feature-major
planning input ``(in, B)``); ``prepare`` raises ``RuntimeError`` when the kernel is unavailable
here (e.g. no numba)."""


FUSABLE = ("csr", "csc", "cols")
"""The numba kernels; :func:`fused_chain` runs any mix of them inside one compiled call."""


def _torch_out(y: Tensor, relu: bool) -> np.ndarray:
    return (torch.relu_(y) if relu else y).numpy()


@KERNELS.register("dense")
def _prepare_dense(layer: SparseLinear, example: np.ndarray) -> Kernel:
    w, b = layer.weight.contiguous(), layer.bias.reshape(-1, 1).contiguous()

    def run(h: np.ndarray) -> np.ndarray:
        return _torch_out(torch.addmm(b, w, torch.from_numpy(h)), layer.relu)
    return run


@KERNELS.register("torch-csr")
def _prepare_torch_csr(layer: SparseLinear, example: np.ndarray) -> Kernel:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        w = layer.weight.to_sparse_csr()
    b = layer.bias.reshape(-1, 1).contiguous()

    def run(h: np.ndarray) -> np.ndarray:
        return _torch_out(torch.sparse.addmm(b, w, torch.from_numpy(h)), layer.relu)
    return run


def _compressed(codes: np.ndarray, by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (``by='row'``) or CSC (``'col'``) of a dense code matrix: (pointers int64,
    indices uint16 when they fit, else uint32, values in the codes' dtype)."""
    mat = codes if by == "row" else np.ascontiguousarray(codes.T)
    nz = mat != 0
    ptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
    idx = np.nonzero(nz)[1].astype(np.uint16 if mat.shape[1] <= 65536 else np.uint32)
    return ptr, idx, np.ascontiguousarray(mat[nz])


@KERNELS.register("csr")
def _prepare_csr(layer: SparseLinear, example: np.ndarray) -> Kernel:
    jit = jit_kernels()
    ptr, idx, val = _compressed(layer.codes, "row")
    scale, bias, relu = layer.scale, layer.bias.numpy().astype(np.float32), layer.relu
    vec, mat = jit["csr_vec"], jit["csr_mat"]

    def run(h: np.ndarray) -> np.ndarray:
        fn = vec if h.shape[1] == 1 else mat
        return fn(ptr, idx, val, scale, bias, h, relu)
    return run


def _shifted_bias(layer: SparseLinear, shift: float) -> np.ndarray:
    """The bias that makes ``W (x - shift)`` exact: ``b + shift * W 1`` (float64 sum)."""
    bias = layer.bias.double().numpy()
    if shift != 0.0:
        bias = bias + shift * layer.scale.astype(np.float64) * \
            layer.codes.astype(np.float64).sum(1)
    return bias.astype(np.float32)


def _column_kernel(fn: Callable, weights: tuple[np.ndarray, ...], layer: SparseLinear,
                   example: np.ndarray) -> Kernel:
    """A column kernel (``csc``/``cols``) with the example's background folded into the bias."""
    shift = background_value(example)
    scale, relu, bias = layer.scale, layer.relu, _shifted_bias(layer, shift)
    if shift == 0.0:
        return lambda h: fn(*weights, scale, bias, h, relu)
    c = np.float32(shift)
    return lambda h: fn(*weights, scale, bias, h - c, relu)


@KERNELS.register("csc")
def _prepare_csc(layer: SparseLinear, example: np.ndarray) -> Kernel:
    return _column_kernel(jit_kernels()["csc"], _compressed(layer.codes, "col"), layer,
                          example)


@KERNELS.register("cols")
def _prepare_cols(layer: SparseLinear, example: np.ndarray) -> Kernel:
    return _column_kernel(jit_kernels()["cols"], (_dense_columns(layer.codes),), layer,
                          example)


def _dense_columns(codes: np.ndarray) -> np.ndarray:
    """The code matrix ``(out, in)`` stored column after column, flat: ``[j * out + r]``."""
    return np.ascontiguousarray(codes.T).reshape(-1)


def background_value(example: np.ndarray, min_share: float = 0.25) -> float:
    """The most frequent value of ``example`` when it is non-zero and at least ``min_share``
    of the entries (e.g. the standardised blank pixel), else 0."""
    values, counts = np.unique(example, return_counts=True)
    top = int(np.argmax(counts))
    if values[top] != 0 and counts[top] >= min_share * example.size:
        return float(values[top])
    return 0.0


def available_kernels() -> tuple[str, ...]:
    """Kernel names usable here (the numba ones only when numba imports)."""
    return tuple(n for n in KERNELS.names() if numba is not None or n not in FUSABLE)


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class LayerPlan:
    """One layer's choice: ``kernel`` and the measured median ms per call of every candidate
    (at the plan's batch size, on the layer's real input)."""

    name: str
    shape: tuple[int, int]
    nnz: int
    kernel: str
    ms: dict[str, float]

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    def row(self) -> dict[str, Any]:
        return {"layer": self.name, "shape": f"{self.shape[0]}x{self.shape[1]}",
                "density": round(self.density, 4), "kernel": self.kernel,
                **{f"{k} ms": round(v, 5) for k, v in self.ms.items()}}


def _check_kernels(kernels: Sequence[str] | None) -> tuple[str, ...]:
    usable = available_kernels()
    if kernels is None:
        return usable
    if isinstance(kernels, str) or not kernels:
        raise ValueError(f"kernels must be a non-empty list of names from {usable}, "
                         f"got {kernels!r}")
    for name in kernels:
        KERNELS.get(name)  # unknown name -> ValueError listing the choices
        if name not in usable:
            raise ValueError(f"kernel {name!r} is not available here (needs numba); "
                             f"available: {usable}")
    return tuple(kernels)


def _fused_combos(plan: Sequence[LayerPlan], names: Sequence[str], limit: int = 32
                  ) -> list[tuple[str, ...]]:
    """Kernel combinations to try inside one fused call: every combination of the numba
    kernels when there are at most ``limit``, else each layer's fastest (measured alone)."""
    usable = [k for k in FUSABLE if k in names]
    if not usable:
        return []
    if len(usable) ** len(plan) <= limit:
        return list(itertools.product(usable, repeat=len(plan)))
    return [tuple(min(usable, key=p.ms.__getitem__) for p in plan)]


_META = ("kind", "relu", "out", "in", "ptr_offset", "nz_offset", "row_offset", "dense_offset")
"""Columns of the fused chain's per-layer ``meta`` rows (int64)."""
_KIND = {"csr": 0, "csc": 1, "cols": 2}


SPECIALISE_FROM = 16
"""Plans at this batch size or larger also compile a chain specialised to it
(:func:`sparseprior.compress.kernels.batch_chain`, ~2-3 s once per batch size)."""


class FusedChain:
    """All layers in ONE compiled call (no Python between layers). :meth:`rows` maps a
    batch-major ``(B, in)`` batch to ``(B, out)`` (with the chain specialised to
    ``batch_size`` when ``B`` is that size), ``self(h)`` a feature-major ``(in, B)`` batch to
    ``(out, B)``, :meth:`one` one example ``(in,)`` to ``(1, out)``. Built by
    :func:`fused_chain`."""

    def __init__(self, arrays: tuple[np.ndarray, ...], batch_size: int = 1) -> None:
        jit = jit_kernels()
        self.arrays = arrays
        self.batch_size = batch_size
        self._batch, self._one = jit["chain"], jit["chain_vec"]
        self._fixed = batch_chain(batch_size) if batch_size >= SPECIALISE_FROM else None

    def __call__(self, h: np.ndarray) -> np.ndarray:
        if h.shape[1] == 1:
            return self._one(*self.arrays, h.reshape(-1)).reshape(-1, 1)
        return self._batch(*self.arrays, h)

    def one(self, x: np.ndarray) -> np.ndarray:
        """One example, ``(in,)`` float32 -> ``(1, out)``."""
        return self._one(*self.arrays, x)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Batch-major ``(B, in)`` float32 -> ``(B, out)``."""
        if x.shape[0] == 1:
            return self._one(*self.arrays, x.reshape(-1))
        if self._fixed is not None and x.shape[0] == self.batch_size:
            return self._fixed(*self.arrays, np.ascontiguousarray(x))
        return np.ascontiguousarray(self._batch(*self.arrays, np.ascontiguousarray(x.T)).T)


def fused_chain(layers: Sequence[SparseLinear], plan: Sequence[LayerPlan],
                examples: Sequence[np.ndarray], batch_size: int = 1) -> FusedChain | None:
    """The planned kernels of every layer fused into one compiled call when each is a numba
    kernel (:data:`FUSABLE`) and the codes share one dtype; else ``None``. Same arithmetic as
    the per-layer kernels (column kernels keep their background shift)."""
    if numba is None or any(p.kernel not in FUSABLE for p in plan) or \
            len({layer.codes.dtype for layer in layers}) != 1:
        return None
    sparse = [_compressed(layer.codes, "row" if p.kernel == "csr" else "col")
              if p.kernel != "cols" else None for layer, p in zip(layers, plan, strict=True)]
    dense = [_dense_columns(layer.codes) if p.kernel == "cols" else layer.codes[:0, 0]
             for layer, p in zip(layers, plan, strict=True)]
    empty = (np.zeros(1, np.int64), np.zeros(0, np.uint16), layers[0].codes[:0, 0])
    sparse = [q if q is not None else empty for q in sparse]
    shifts = [background_value(h) if p.kernel != "csr" else 0.0
              for p, h in zip(plan, examples, strict=True)]

    def offsets(sizes: list[int]) -> np.ndarray:
        return np.cumsum([0] + sizes[:-1]).astype(np.int64)

    meta = np.stack([
        [_KIND[p.kernel] for p in plan], [int(layer.relu) for layer in layers],
        [layer.shape[0] for layer in layers], [layer.shape[1] for layer in layers],
        offsets([len(q[0]) for q in sparse]), offsets([len(q[1]) for q in sparse]),
        offsets([layer.shape[0] for layer in layers]), offsets([len(d) for d in dense]),
    ], axis=1).astype(np.int64)
    index_dtype = np.result_type(*(q[1].dtype for q in sparse))  # uint16 when all fit
    return FusedChain((
        meta, np.array(shifts, np.float32),
        np.concatenate([q[0] for q in sparse]).astype(np.int32),
        np.concatenate([q[1] for q in sparse]).astype(index_dtype),
        np.concatenate([q[2] for q in sparse]), np.concatenate(dense),
        np.concatenate([layer.scale for layer in layers]).astype(np.float32),
        np.concatenate([_shifted_bias(layer, c) for layer, c in zip(layers, shifts,
                                                                     strict=True)])),
        batch_size=batch_size)


class ServedModel:
    """A packed MLP served from its codes with one measured kernel per layer.

    >>> served = ServedModel.from_packed("lenet300.sppk", batch_size=64)  # doctest: +SKIP
    >>> served(x)            # (B, 1, 28, 28) or (B, 784) -> logits (B, 10)  # doctest: +SKIP
    >>> served.plan          # [LayerPlan(name='features.0', kernel='csc', ms={...}), ...]
    """

    def __init__(self, layers: list[SparseLinear], kernels: dict[str, Kernel],
                 plan: list[LayerPlan], batch_size: int, reference: nn.Module | None = None
                 ) -> None:
        self.layers = layers
        self._run = [kernels[layer.name] for layer in layers]
        self.fused: FusedChain | None = None  # set by from_layers when one call is faster
        self.fused_ms: dict[str, float] = {}  # measured: per-layer chain vs one fused call
        self.plan = plan
        self.batch_size = batch_size
        self.reference = reference
        self.in_features = layers[0].shape[1]
        self.out_features = layers[-1].shape[0]

    @classmethod
    def from_packed(cls, path: str | Path, *, batch_size: int = 1, example: Tensor | None = None,
                    kernels: Sequence[str] | None = None, rounds: int = 15, seed: int = 0
                    ) -> ServedModel:
        """Serve the packed file at ``path``; kernels chosen by measured speed at
        ``batch_size`` on ``example`` (``(B, ...)`` inputs; default: uniform [0, 1) noise)."""
        layers, reference = read_packed_layers(path)
        return cls.from_layers(layers, batch_size=batch_size, example=example,
                               kernels=kernels, rounds=rounds, seed=seed, reference=reference)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> ServedModel:
        """Serve an in-memory MLP (e.g. a compressed model before packing)."""
        return cls.from_layers(chain_layers(model), reference=model.eval(), **kwargs)

    @classmethod
    def from_layers(cls, layers: list[SparseLinear], *, batch_size: int = 1,
                    example: Tensor | None = None, kernels: Sequence[str] | None = None,
                    rounds: int = 15, seed: int = 0, reference: nn.Module | None = None
                    ) -> ServedModel:
        """Prepare every candidate kernel of every layer, time them, keep the fastest."""
        batch_size = check_positive_int(batch_size, "batch_size")
        rounds = check_positive_int(rounds, "rounds")
        names = _check_kernels(kernels)
        h = _example_input(layers[0].shape[1], batch_size, example, seed)
        first = h
        chosen: dict[str, Kernel] = {}
        plan: list[LayerPlan] = []
        inputs: list[np.ndarray] = []
        for layer in layers:
            inputs.append(h)
            prepared = {n: KERNELS.get(n)(layer, h) for n in names}
            result = measure_latency({n: (lambda f=f, h=h: f(h)) for n, f in prepared.items()},
                                     rounds=rounds, calls=max(3, 100 // batch_size), warmup=2)
            best = min(result.median_ms, key=result.median_ms.__getitem__)
            plan.append(LayerPlan(layer.name, layer.shape, layer.nnz, best,
                                  dict(result.median_ms)))
            chosen[layer.name] = prepared[best]
            h = np.ascontiguousarray(prepared["dense" if "dense" in prepared else best](h))
        served = cls(layers, chosen, plan, batch_size, reference)
        candidates = {"layers": (None, plan)}
        for combo in _fused_combos(plan, names):
            option = [dataclasses.replace(p, kernel=k) for p, k in zip(plan, combo, strict=True)]
            fused = fused_chain(layers, option, inputs, batch_size)
            if fused is not None:
                candidates["fused " + "+".join(combo)] = (fused, option)
        if len(candidates) > 1:
            rows = np.ascontiguousarray(first.T)

            def through_entry(fused: FusedChain | None) -> Callable[[], np.ndarray]:
                def run() -> np.ndarray:  # timed as called: batch-major in and out
                    served.fused = fused
                    return served.forward_rows(rows)
                return run

            runners = {n: through_entry(f) for n, (f, _) in candidates.items()}
            result = measure_latency(runners, rounds=rounds, calls=max(3, 100 // batch_size),
                                     warmup=2)
            served.fused_ms = dict(result.median_ms)
            best = min(result.median_ms, key=result.median_ms.__getitem__)
            served.fused, served.plan = candidates[best]
        return served

    def _check_input(self, x: Any) -> np.ndarray:
        """``x`` as a ``(B, in)`` float32 numpy view (copied only when needed)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (batch, ...), got "
                            f"{type(x).__name__}")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"x must have shape (batch, ...) with {self.in_features} values "
                             f"per example, got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.requires_grad:
            x = x.detach().to("cpu", torch.float32)
        return x.numpy().reshape(x.shape[0], self.in_features)

    def forward_features(self, h: np.ndarray) -> np.ndarray:
        """Feature-major ``(in, B)`` float32 -> ``(out, B)``: the served chain, no checks."""
        if self.fused is not None:
            return self.fused(h)
        for run in self._run:
            h = run(h)
        return h

    def __call__(self, x: Tensor) -> Tensor:
        """``(B, *input_shape)`` float -> logits ``(B, out_features)`` (float32, CPU)."""
        if type(x) is Tensor and x.dtype is torch.float32 and not x.requires_grad and \
                x.is_cpu:  # the common case, checked on the numpy view (cheaper than torch)
            arr = x.numpy()
            if arr.ndim >= 2 and arr.shape[0] and arr.size == arr.shape[0] * self.in_features:
                if arr.shape[0] == 1 and self.fused is not None:  # latency-critical
                    return torch.from_numpy(self.fused.one(arr.reshape(-1)))
                return torch.from_numpy(self.forward_rows(arr.reshape(arr.shape[0], -1)))
        return torch.from_numpy(self.forward_rows(self._check_input(x)))

    def forward_rows(self, flat: np.ndarray) -> np.ndarray:
        """Batch-major ``(B, in)`` float32 -> ``(B, out)``: the served chain, no checks."""
        if self.fused is not None:
            return self.fused.rows(flat)
        if flat.shape[0] == 1:
            return self.forward_features(flat.reshape(-1, 1).copy()).reshape(1, -1)
        out = self.forward_features(np.ascontiguousarray(flat.T))
        return np.ascontiguousarray(out.T)

    def check(self, against: nn.Module | None = None, x: Tensor | None = None, *,
              atol: float = 1e-4, seed: int = 0) -> float:
        """Largest ``|served(x) - against(x)|`` (default ``against``: the decoded model,
        default ``x``: 64 uniform [0, 1) inputs); ``ValueError`` when above ``atol``."""
        model = against if against is not None else self.reference
        if model is None:
            raise ValueError("check needs a model to compare against (against=unpack(path))")
        if x is None:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(64, self.in_features, generator=g)
        with torch.inference_mode():
            ref = model.eval()(x)
        diff = float((self(x) - ref).abs().max())
        if not math.isfinite(diff) or diff > atol:
            raise ValueError(f"served outputs differ from the decoded model by {diff:.3g} "
                             f"(> atol={atol})")
        return diff

    def plan_rows(self) -> list[dict[str, Any]]:
        return [p.row() for p in self.plan]

    def speed_report(self, x: Tensor | None = None, *, rounds: int = 50, seed: int = 0
                     ) -> dict[str, Any]:
        """Served vs the bare fp32 dense chain (:func:`bare_dense_chain`) at ``batch_size``
        (default ``x``: uniform [0, 1) inputs), one thread, interleaved (see
        :func:`speed_summary`)."""
        if x is None:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(self.batch_size, self.in_features, generator=g)
        xt = torch.from_numpy(np.ascontiguousarray(self._check_input(x)))
        chain = bare_dense_chain(self.layers)
        lat = measure_latency({"served": lambda: self(xt), "bare fp32 chain": lambda: chain(xt)},
                              rounds=check_positive_int(rounds, "rounds"),
                              calls=max(3, 200 // len(xt)), warmup=5)
        return speed_summary(lat, "bare fp32 chain", "bare fp32 dense chain", len(xt), rounds)


def _example_input(in_features: int, batch_size: int, example: Tensor | None, seed: int
                   ) -> np.ndarray:
    """Feature-major ``(in, batch_size)`` float32 planning input."""
    if example is None:
        g = torch.Generator().manual_seed(seed)
        example = torch.rand(batch_size, in_features, generator=g)
    if not isinstance(example, Tensor) or example.dim() < 2 or \
            example[0].numel() != in_features:
        raise ValueError(f"example must be a tensor (batch, ...) with {in_features} values per "
                         f"example, got {getattr(example, 'shape', type(example).__name__)}")
    flat = example.detach().reshape(example.shape[0], -1).float().cpu()
    reps = -(-batch_size // flat.shape[0])
    flat = flat.repeat(reps, 1)[:batch_size]
    return np.ascontiguousarray(flat.numpy().T)


def bare_dense_chain(layers: Sequence[SparseLinear]) -> Callable[[Tensor], Tensor]:
    """The strongest simple fp32 baseline: ``F.linear``/``relu`` on the decoded weights, no
    module and no checks; ``(B, in)`` -> ``(B, out)``."""
    import torch.nn.functional as F

    params = [(layer.weight.contiguous(), layer.bias.contiguous(), layer.relu)
              for layer in layers]

    def run(x: Tensor) -> Tensor:
        for w, b, relu in params:
            x = F.linear(x, w, b)
            if relu:
                x = F.relu(x)
        return x
    return run


def speed_report(served: Any, x: Tensor | None = None, *, rounds: int = 50,
                 seed: int = 0) -> dict[str, Any]:
    """``served.speed_report(x, rounds=, seed=)``: served vs its fp32 baseline at
    ``served.batch_size`` (the bare dense chain for :class:`ServedModel`, the decoded model in
    PyTorch eager for :class:`~.serve_ort.OrtServedModel`), one thread, interleaved."""
    return served.speed_report(x, rounds=rounds, seed=seed)


def speed_summary(lat: Any, baseline: str, label: str, batch: int, rounds: int
                  ) -> dict[str, Any]:
    """The report of a served-vs-``baseline`` measurement (:class:`~.latency.LatencyResult`
    with candidates ``"served"`` and ``baseline``): median ms of both and the median and
    quartiles of the per-round ratio; ``label`` names the baseline for people."""
    median, q1, q3 = lat.ratio_stats(baseline)["served"]
    return {"batch": batch, "rounds": rounds, "baseline": label, "median_ms": lat.median_ms,
            "speedup_median": median, "speedup_q1": q1, "speedup_q3": q3}


def serve_packed(path: str | Path, *, batch_size: int = 1, example: Tensor | None = None,
                 kernels: Sequence[str] | None = None, rounds: int = 15,
                 calibration: Tensor | None = None) -> Any:
    """Serve the packed file at ``path`` and check it against the decoded model.

    A chain of Linear layers (MLP) runs from its codes (:class:`ServedModel`, kernels chosen
    by measured speed, checked to 1e-4); any other registry model (conv nets) runs in ONNX
    Runtime (:class:`~.serve_ort.OrtServedModel`: fp32, or static int8 calibrated on
    ``calibration`` when that measures faster).
    """
    from sparseprior.compress.pack import unpack
    from sparseprior.compress.serve_ort import OrtServedModel

    model = unpack(path)
    try:
        layers = chain_layers(model, where=f"packed file {str(path)!r}")
    except ValueError:
        if kernels:
            raise ValueError(f"packed file {str(path)!r} is not a chain of Linear layers: it "
                             f"is served by ONNX Runtime, kernels={list(kernels)} do not "
                             f"apply") from None
        served: Any = OrtServedModel.from_model(model, batch_size=batch_size,
                                                calibration=calibration, rounds=rounds)
    else:
        served = ServedModel.from_layers(layers, batch_size=batch_size, example=example,
                                         kernels=kernels, rounds=rounds, reference=model)
    served.check()
    return served
