"""Serving a packed conv net (channel-slimmed, int8 codes) with ONNX Runtime: outputs equal
the decoded model, the candidates are measured, bad inputs give one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from sparseprior.compress import QuantSpec, freeze_quantized_, pack, quantize_, unpack
from sparseprior.compress.serve import serve_packed, speed_report
from sparseprior.compress.serve_ort import OrtServedModel
from sparseprior.compress.structured import StructuredConfig, structured_prune
from sparseprior.models import build_model

BUILD = {"in_channels": 1, "num_classes": 4, "input_size": 12, "depth": 8, "width": 0.5}


@pytest.fixture(scope="module")
def packed_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet", **BUILD)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model(torch.rand(32, 1, 12, 12))
    example = torch.zeros(1, 1, 12, 12)
    slim, _ = structured_prune(model.eval(), StructuredConfig(ratio=0.5), example)
    quantize_(slim, QuantSpec(8, granularity="channel"))
    freeze_quantized_(slim)
    path = tmp_path_factory.mktemp("ort") / "r.sppk"
    pack(slim, path, model_name="resnet", build=BUILD)
    return path


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_conv_net_served_by_ort_matches_decoded_model(packed_resnet):
    served = serve_packed(packed_resnet, batch_size=4, rounds=2)
    assert isinstance(served, OrtServedModel) and served.kind == "fp32"
    decoded = unpack(packed_resnet).eval()
    x = images(7)
    with torch.inference_mode():
        ref = decoded(x)
    got = served(x)
    assert got.shape == (7, 4) and got.dtype == torch.float32
    assert float((got - ref).abs().max()) < 1e-4
    assert served.check(x) < 1e-4
    assert [r["candidate"] for r in served.plan_rows()] == ["ONNX Runtime fp32"]


def test_int8_candidate_is_measured_and_checked(packed_resnet):
    calib = images(64, seed=2)
    served = OrtServedModel.from_model(unpack(packed_resnet), batch_size=8, calibration=calib,
                                       rounds=3)
    rows = {r["candidate"]: r for r in served.plan_rows()}
    assert set(rows) == {"ONNX Runtime fp32", "ONNX Runtime int8"}
    assert all(r["ms"] > 0 for r in rows.values())
    assert sum(r["chosen"] for r in rows.values()) == 1
    assert served.kind == min(served.ms, key=served.ms.get)
    ref = served.reference(calib).detach()
    int8 = served.use("int8")(calib)
    assert served.kind == "int8"
    assert float((int8 - ref).abs().max() / ref.abs().max()) < 0.1  # approximate, not exact
    with pytest.raises(ValueError, match="agrees"):
        served.check(min_agreement=1.01)  # the agreement rule can fail
    assert served.use("fp32").check(calib) < 1e-4
    with pytest.raises(ValueError, match="no candidate"):
        served.use("int4")


def test_speed_report_against_decoded_eager(packed_resnet):
    served = serve_packed(packed_resnet, batch_size=2, rounds=1)
    report = speed_report(served, rounds=3)
    assert report["baseline"] == "decoded model (PyTorch)" and report["batch"] == 2
    assert report["speedup_median"] > 0 and set(report["median_ms"]) == {
        "served", "decoded model (PyTorch)"}


def test_bad_inputs_one_line_errors(packed_resnet):
    served = serve_packed(packed_resnet, rounds=1)
    with pytest.raises(ValueError, match=r"shape \(batch, 1, 12, 12\)"):
        served(torch.zeros(2, 144))
    with pytest.raises(ValueError, match="floating"):
        served(torch.zeros(2, 1, 12, 12, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        served(images(2).numpy())
    with pytest.raises(ValueError, match="kernels"):
        serve_packed(packed_resnet, kernels=["csr"])
    with pytest.raises(ValueError, match="calibration"):
        OrtServedModel.from_model(unpack(packed_resnet), calibration=torch.zeros(4, 3, 12, 12))
    with pytest.raises(ValueError, match="batch_size"):
        OrtServedModel.from_model(unpack(packed_resnet), batch_size=0)


def test_cli_serves_conv_net(packed_resnet, tmp_path, cli):
    out = tmp_path / "serve.json"
    code, stdout, stderr = cli(["compress", "serve", str(packed_resnet), "--batch", "2",
                                "--plan-rounds", "1", "--rounds", "3", "--out", str(out)])
    assert code == 0, stderr
    assert "ONNX Runtime fp32" in stdout and "decoded model (PyTorch)" in stdout
    report = json.loads(out.read_text())
    assert report["max_abs_diff"] < 1e-4 and report["speed"]["batch"] == 2
