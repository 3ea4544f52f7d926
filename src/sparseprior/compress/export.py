"""Deployment: a plain copy of a compressed model, ONNX export checked with ONNX Runtime, and
ONNX Runtime's int8 (dynamic quantization) path.

* :func:`deployable_copy` turns training-time forms into plain layers: quantization-aware
  layers become ``nn.Linear``/``nn.Conv2d`` (their weights already hold the quantized values)
  and registered layer types with a ``densify`` function are replaced by its result
  (SmartExchange layers become dense layers with ``W = Ce @ B``). Structured pruning and
  low-rank layers stay as they are (they are what makes it fast).
* :func:`export_onnx` exports with the TorchScript exporter (``dynamo=False``; no onnxscript
  needed) and a dynamic batch axis; :func:`check_onnx` runs the file in ONNX Runtime and
  returns the largest absolute difference to PyTorch.
* :func:`ort_int8` quantizes the ONNX model's MatMul/Gemm weights to int8 with ONNX Runtime's
  dynamic quantization (activations quantized on the fly).
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import sparseprior.compress.smartexchange  # noqa: F401  (registers its layer types)
from sparseprior.compress.layers import layer_type_of
from sparseprior.compress.quantize import strip_quant_

log = logging.getLogger(__name__)


@torch.no_grad()
def deployable_copy(model: nn.Module) -> nn.Module:
    """A plain eval-mode copy: no fake quantization, and every layer whose registered type has
    a ``densify`` function (see :mod:`~.layers`; e.g. SmartExchange) replaced by its plain form."""
    plain = strip_quant_(copy.deepcopy(model)).eval()
    for name, module in list(plain.named_modules()):
        entry = layer_type_of(module)
        if entry is not None and entry.densify is not None:
            plain.set_submodule(name, entry.densify(module))
    return plain


def export_onnx(model: nn.Module, example_input: Tensor, path: str | Path | None = None,
                *, opset: int = 17) -> bytes:
    """ONNX bytes of :func:`deployable_copy` of ``model`` (input ``x``, output ``logits``,
    dynamic batch); also written to ``path`` when given."""
    plain = deployable_copy(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(plain, (example_input,), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    data = buf.getvalue()
    if path is not None:
        from sparseprior.common.checkpoint import atomic_write_bytes

        atomic_write_bytes(path, data)
    return data


def ort_session(onnx: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (sequential execution)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = onnx if isinstance(onnx, bytes) else str(onnx)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def ort_run(session: Any, x: Tensor | np.ndarray) -> np.ndarray:
    """Logits ``(B, classes)`` of an ONNX Runtime session for input ``x``."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    return session.run(None, {"x": np.ascontiguousarray(arr, dtype=np.float32)})[0]


def ort_int8(onnx: bytes) -> bytes:
    """ONNX Runtime dynamic int8 quantization of ``onnx`` (MatMul/Gemm weights to int8)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx)
        logging.getLogger("root").setLevel(logging.ERROR)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        return dst.read_bytes()


@torch.no_grad()
def check_onnx(model: nn.Module, onnx: bytes, x: Tensor) -> float:
    """Largest ``|ORT(x) - PyTorch(x)|`` over the logits of :func:`deployable_copy`."""
    ref = deployable_copy(model)(x).cpu().numpy()
    got = ort_run(ort_session(onnx), x)
    if got.shape != ref.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}")
    return float(np.abs(got - ref).max())
