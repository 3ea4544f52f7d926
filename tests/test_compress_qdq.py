"""ONNX Runtime static QDQ int8 with calibration on a tiny conv net."""

from __future__ import annotations

import pytest
import torch

from sparseprior.compress.export import export_onnx, ort_run, ort_session
from sparseprior.compress.qdq import ort_static_int8, quantized_op_types
from sparseprior.models import build_model

SMALL = {"in_channels": 1, "num_classes": 4, "input_size": 12}


def test_static_qdq_quantizes_convs_and_stays_close():
    torch.manual_seed(0)
    model = build_model("lenet5", **SMALL).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(64, 1, 12, 12, generator=g)
    fp32 = export_onnx(model, calib[:1])
    int8 = ort_static_int8(fp32, calib, batch_size=16)
    ops = quantized_op_types(int8)
    assert ops.get("QuantizeLinear", 0) >= 2 and ops.get("DequantizeLinear", 0) >= 4
    assert ops.get("Conv", 0) == quantized_op_types(fp32)["Conv"]  # convs wrapped in Q/DQ
    x = torch.rand(16, 1, 12, 12, generator=g)
    ref = ort_run(ort_session(fp32), x)
    got = ort_run(ort_session(int8), x)
    err = abs(got - ref).max() / abs(ref).max()
    assert err < 0.1  # int8 activations: about a percent of the logit range
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_static_qdq_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        ort_static_int8(b"", torch.zeros(2, 1, 4, 4), method="kl")
    with pytest.raises(ValueError, match="calibration"):
        ort_static_int8(b"", torch.zeros(0, 4))
