"""ONNX Runtime static int8 (QDQ) quantization with calibration: int8 convolutions too.

ONNX Runtime's *dynamic* int8 (:func:`sparseprior.compress.export.ort_int8`) quantizes only
MatMul/Gemm weights, so conv-dominated networks gain nothing from it. *Static* quantization
calibrates activation ranges on example inputs once and inserts ``QuantizeLinear`` /
``DequantizeLinear`` pairs around Conv, MatMul/Gemm and friends, which ONNX Runtime fuses into
int8 kernels (``QLinearConv``-style execution on CPU).

:func:`ort_static_int8` takes an fp32 ONNX model (e.g. from
:func:`~sparseprior.compress.export.export_onnx`) and calibration inputs ``(N, *input_shape)``;
weights are quantized per channel (symmetric int8), activations per tensor (uint8, MinMax or
percentile calibration). Accuracy must be checked on held-out data (:func:`ort_accuracy`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseprior.common.validation import check_positive_int

CALIBRATIONS = ("minmax", "percentile", "entropy")


class _Batches:
    """An ONNX Runtime ``CalibrationDataReader`` over fixed input batches."""

    def __init__(self, x: np.ndarray, batch_size: int, input_name: str) -> None:
        self._items = iter([{input_name: x[i:i + batch_size]}
                            for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def ort_static_int8(onnx: bytes, calibration: Tensor | np.ndarray, *, method: str = "minmax",
                    batch_size: int = 32, per_channel: bool = True,
                    input_name: str = "x") -> bytes:
    """Static QDQ int8 ONNX bytes of ``onnx`` calibrated on ``calibration`` ``(N, ...)``.

    Args:
        onnx: fp32 ONNX model bytes (input named ``input_name``).
        calibration: representative inputs (a few hundred training images are plenty).
        method: ``'minmax'``, ``'percentile'`` or ``'entropy'`` activation calibration.
        batch_size: calibration batch size.
        per_channel: per-output-channel weight scales (conv/linear).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in CALIBRATIONS:
        raise ValueError(f"method={method!r} is not one of {CALIBRATIONS}")
    batch_size = check_positive_int(batch_size, "batch_size")
    x = calibration.detach().cpu().numpy() if isinstance(calibration, Tensor) else \
        np.asarray(calibration)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"calibration must be a non-empty batch (N, ...), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx)
        logging.getLogger("root").setLevel(logging.ERROR)
        quantize_static(str(src), str(dst), _Batches(x, batch_size, input_name),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=calib)
        return dst.read_bytes()


def quantized_op_types(onnx: bytes) -> dict[str, int]:
    """``op type -> count`` of an ONNX model (to see what was quantized)."""
    import onnx as onnx_lib

    model = onnx_lib.load_from_string(onnx)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@torch.no_grad()
def ort_accuracy(session: Any, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of an ONNX Runtime session on ``x`` ``(N, ...)``, labels ``y`` ``(N,)``."""
    from sparseprior.compress.export import ort_run

    hits = 0
    for i in range(0, len(x), batch_size):
        logits = ort_run(session, x[i:i + batch_size])
        hits += int((torch.from_numpy(logits).argmax(1) == y[i:i + batch_size]).sum())
    return hits / max(1, len(x))
