"""Serving a packed MLP from its codes: outputs equal the decoded model, the plan covers every
layer, bad inputs give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseprior.compress import QuantSpec, freeze_quantized_, pack, quantize_, unpack
from sparseprior.compress.serve import (
    ServedModel,
    available_kernels,
    layer_codes,
    serve_packed,
)
from sparseprior.models import build_model
from sparseprior.sparsity import SparsityConfig, sparsify_

SMALL = {"in_channels": 1, "num_classes": 4, "input_size": 12}
BUILD = {"hidden": [32, 16], **SMALL}


def packed_mlp(tmp_path, spec: QuantSpec | None, sparsity: float = 0.85, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("mlp", **BUILD).eval()
    sparsify_(model, SparsityConfig(sparsity=sparsity, distribution="uniform"))
    if spec is not None:
        quantize_(model, spec)
        freeze_quantized_(model)
    path = tmp_path / "m.sppk"
    pack(model, path, model_name="mlp", build=BUILD)
    return path


def inputs(batch: int, seed: int = 3) -> torch.Tensor:
    x = torch.rand(batch, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    x[x < 0.4] = 0  # blank pixels, as in real images (the csc kernel skips them)
    return x


@pytest.mark.parametrize("spec", [QuantSpec(4, "uniform", "channel", True),
                                  QuantSpec(5, "uniform", "tensor", False),
                                  QuantSpec(3, "pow2", "channel"), None])
def test_every_kernel_matches_decoded_model(tmp_path, spec):
    path = packed_mlp(tmp_path, spec)
    decoded = unpack(path)
    for kernel in available_kernels():
        for batch in (1, 5):
            served = ServedModel.from_packed(path, batch_size=batch, kernels=[kernel], rounds=1)
            assert [p.kernel for p in served.plan] == [kernel] * 3
            x = inputs(batch)
            with torch.inference_mode():
                ref = decoded(x)
            assert served(x).shape == ref.shape
            assert float((served(x) - ref).abs().max()) <= 1e-4, (kernel, batch)


def test_codes_reproduce_decoded_weights_exactly(tmp_path):
    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    layer = unpack(path).features[0]
    codes, scale = layer_codes(layer.weight, layer.quant_spec)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 7
    assert torch.equal(torch.from_numpy(codes).float() * torch.from_numpy(scale)[:, None],
                       layer.weight.detach())
    assert 0.1 < np.count_nonzero(codes) / codes.size < 0.2  # the 85% sparse mask, kept


def test_plan_covers_every_layer_and_check_passes(tmp_path):
    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    served = serve_packed(path, batch_size=4, example=inputs(2), rounds=2)
    assert [p.name for p in served.plan] == ["features.0", "features.2", "classifier"]
    for p in served.plan:
        assert p.kernel in p.ms and set(p.ms) == set(available_kernels())
        assert all(v > 0 for v in p.ms.values())
        if served.fused is None:
            assert p.kernel == min(p.ms, key=p.ms.get)  # the measured fastest
    if served.fused_ms:  # the plan in use is the fastest measured option (per layer or fused)
        best = min(served.fused_ms, key=served.fused_ms.get)
        assert (best == "layers") == (served.fused is None)
        if served.fused is not None:
            assert best == "fused " + "+".join(p.kernel for p in served.plan)
    assert served.plan[0].shape == (32, 144) and 0.1 < served.plan[0].density < 0.2
    assert served.check(unpack(path)) <= 1e-4
    rows = served.plan_rows()
    assert rows[0]["layer"] == "features.0" and "kernel" in rows[0]


def test_bad_inputs_raise_clear_errors(tmp_path):
    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    served = ServedModel.from_packed(path, batch_size=1, kernels=["dense"], rounds=1)
    with pytest.raises(ValueError, match="144 values per example"):
        served(torch.zeros(2, 10))
    with pytest.raises(TypeError, match="torch.Tensor"):
        served(np.zeros((1, 144), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        ServedModel.from_packed(path, batch_size=0)
    with pytest.raises(ValueError, match="unknown serve kernel 'fast'"):
        ServedModel.from_packed(path, kernels=["fast"])
    with pytest.raises(ValueError, match="not found"):
        ServedModel.from_packed(tmp_path / "missing.sppk")
    torch.manual_seed(0)
    conv = build_model("lenet5", **SMALL)
    pack(conv, tmp_path / "c.sppk", model_name="lenet5", build=SMALL)
    with pytest.raises(ValueError, match="chains of Linear"):
        ServedModel.from_packed(tmp_path / "c.sppk")
    with pytest.raises(ValueError, match="atol"):
        served.check(build_model("mlp", **BUILD))


@pytest.mark.skipif("csc" not in available_kernels(), reason="needs numba")
@pytest.mark.parametrize("kernel", ["csc", "cols"])
def test_column_kernels_background_shift_is_exact(tmp_path, kernel):
    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    x = inputs(3)
    x[x == 0] = -0.8  # a standardised blank pixel: the most frequent input value
    served = ServedModel.from_packed(path, batch_size=3, example=x, kernels=[kernel],
                                     rounds=1)
    with torch.inference_mode():
        ref = unpack(path)(x)
    assert float((served(x) - ref).abs().max()) <= 1e-4
    assert float((served(x[:1]) - ref[:1]).abs().max()) <= 1e-4
    wide = torch.cat([x, x], dim=3)[..., :12]  # a strided (non-contiguous) batch
    assert not wide.is_contiguous()
    assert float((served(wide) - ref).abs().max()) <= 1e-4
    assert float((served(x.double()) - ref).abs().max()) <= 1e-4


def test_cli_serve_and_finetune_commands(tmp_path):
    import typer
    from typer.testing import CliRunner

    from sparseprior.cli.compress_edge import finetune, serve

    app = typer.Typer()
    app.command("serve")(serve)
    app.command("finetune")(finetune)
    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    res = CliRunner().invoke(app, ["serve", str(path), "--batch", "2", "--plan-rounds", "1",
                                   "--rounds", "3", "--kernels", "dense,torch-csr",
                                   "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "features.0" in res.output and "bare fp32 dense chain" in res.output
    assert (tmp_path / "s.json").is_file()
    digits = {"hidden": [16], "in_channels": 1, "num_classes": 10, "input_size": 8}
    torch.manual_seed(0)
    small = build_model("mlp", **digits)
    quantize_(small, QuantSpec(4, "uniform", "channel", True))
    freeze_quantized_(small)
    pack(small, tmp_path / "d.sppk", model_name="mlp", build=digits)
    res = CliRunner().invoke(app, ["finetune", str(tmp_path / "d.sppk"), "--out",
                                   str(tmp_path / "f.sppk"), "--dataset", "digits",
                                   "--subset", "64",
                                   "--tune-epochs", "1", "--shift-rotate", "10"])
    assert res.exit_code == 0, res.output
    assert "re-packed" in res.output and (tmp_path / "f.sppk").is_file()


@pytest.mark.skipif("csc" not in available_kernels(), reason="needs numba")
@pytest.mark.parametrize("kernels", [["csr"], ["csc"], ["cols"], ["csr", "csc"],
                                     ["csr", "csc", "cols"]])
def test_fused_chain_matches_decoded_model(tmp_path, kernels):
    from sparseprior.compress.serve import fused_chain

    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    x = inputs(3)
    x[x == 0] = -0.8  # a background value for the csc shift
    served = ServedModel.from_packed(path, batch_size=3, example=x, kernels=kernels, rounds=1)
    h = np.ascontiguousarray(x.reshape(3, -1).numpy().T)
    examples = [h]
    for run in served._run[:-1]:
        examples.append(np.ascontiguousarray(run(examples[-1])))
    served.fused = fused_chain(served.layers, served.plan, examples)
    assert served.fused is not None
    with torch.inference_mode():
        ref = unpack(path)(x)
    assert float((served(x) - ref).abs().max()) <= 1e-4
    assert float((served(x[:1]) - ref[:1]).abs().max()) <= 1e-4


@pytest.mark.skipif("csc" not in available_kernels(), reason="needs numba")
def test_chain_specialised_to_the_planned_batch_matches_decoded_model(tmp_path):
    from sparseprior.compress.serve import SPECIALISE_FROM

    path = packed_mlp(tmp_path, QuantSpec(4, "uniform", "channel", True))
    batch = SPECIALISE_FROM
    x = inputs(batch)
    x[x == 0] = -0.8
    served = ServedModel.from_packed(path, batch_size=batch, example=x,
                                     kernels=["csr", "csc", "cols"], rounds=1)
    assert served.fused is not None and served.fused._fixed is not None
    with torch.inference_mode():
        ref = unpack(path)(x)
    for rows in (batch, batch - 1, 1):  # the specialised chain, the generic one, one example
        assert float((served(x[:rows]) - ref[:rows]).abs().max()) <= 1e-4, rows
