"""``sparseprior compress run|pack|unpack|bench`` end to end on tiny synthetic data."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from sparseprior.compress import unpack
from sparseprior.models import build_model

BUILD = {"in_channels": 1, "num_classes": 4, "input_size": [12, 12]}


def test_compress_run_writes_packed_model(cli, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"name": "t", "train": {"batch_size": 64}, "steps": [
        {"kind": "prune", "options": {"sparsity": 0.75}},
        {"kind": "quantize", "options": {"bits": 4}, "epochs": 1}]}))
    out = tmp_path / "run"
    code, stdout, err = cli(["compress", "run", "--recipe", str(recipe), "--out", str(out),
                             "--model", "lenet5", "--dataset", "synthetic", "--epochs", "1",
                             "--latency-rounds", "1"])
    assert code == 0, err
    assert "quantize" in stdout and "packed model" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["packed_bytes"] == (out / "model.sppk").stat().st_size
    assert [s["kind"] for s in results["steps"]] == ["original", "prune", "quantize"]


def test_compress_pack_unpack_bench(cli, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5", **{**BUILD, "input_size": 12})
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    packed = tmp_path / "m.sppk"
    code, stdout, err = cli(["compress", "pack", str(weights), "--out", str(packed),
                             "--model", "lenet5", "--build", json.dumps(BUILD), "--bits", "4"])
    assert code == 0, err
    assert packed.stat().st_size < weights.stat().st_size / 5
    code, stdout, err = cli(["compress", "unpack", str(packed), "--out",
                             str(tmp_path / "o.safetensors"), "--onnx", str(tmp_path / "o.onnx"),
                             "--onnx-int8", str(tmp_path / "o8.onnx")])
    assert code == 0, err
    assert "checksums OK" in stdout and (tmp_path / "o.onnx").stat().st_size > 0
    assert (tmp_path / "o8.onnx").stat().st_size > 0
    assert unpack(packed).features[0].weight.shape == (6, 1, 5, 5)
    code, stdout, err = cli(["compress", "bench", str(packed), "--batch", "2", "--rounds", "2"])
    assert code == 0, err
    assert "ONNX Runtime int8" in stdout


def test_compress_cli_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.sppk"
    bad.write_bytes(b"nope")
    code, _, err = cli(["compress", "unpack", str(bad)])
    assert code == 2 and "truncated" in err and "Traceback" not in err
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"steps": [{"kind": "prune", "options": {"sparsity": 2}}]}))
    code, _, err = cli(["compress", "run", "--recipe", str(recipe), "--dataset", "synthetic"])
    assert code == 2 and "sparsity" in err
