"""Compression: quantization, low rank, SmartExchange, structured pruning, the packed file,
ONNX export, recipes and the pipeline (tiny seeded models, synthetic data)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparseprior.compress import (
    LowRankConfig,
    QuantSpec,
    Recipe,
    SmartExchangeConfig,
    StructuredConfig,
    apply_unit_masks_,
    check_onnx,
    compress_,
    export_onnx,
    factorize_,
    factorize_layer,
    fake_quantize,
    freeze_quantized_,
    load_recipe,
    measure_latency,
    ort_int8,
    pack,
    quantize_,
    quantize_tensor,
    read_header,
    se_decompose,
    smartexchange_,
    snap_to_grid,
    structured_prune,
    unit_masks,
    unpack,
)
from sparseprior.compress.pack import (
    decode_positions,
    encode_positions,
    pack_bits,
    theoretical_bits,
    unpack_bits,
)
from sparseprior.compress.pipeline import count_cost
from sparseprior.compress.smartexchange import freeze_smartexchange_
from sparseprior.data import load_dataset
from sparseprior.models import build_model
from sparseprior.sparsity import SparsityConfig, sparsify_

SMALL = {"in_channels": 1, "num_classes": 4, "input_size": 12}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", hidden=[32, 16], **SMALL).eval()


def lenet5(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet5", **SMALL).eval()


def x_batch(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("spec", [QuantSpec(4, "uniform", "channel", True),
                                  QuantSpec(3, "uniform", "tensor", False),
                                  QuantSpec(4, "pow2", "channel"),
                                  QuantSpec(8, "uniform", "tensor", True)])
def test_quantize_codes_range_zero_and_idempotence(spec):
    w = torch.randn(7, 9)
    w[w.abs() < 0.5] = 0.0
    q = quantize_tensor(w, spec)
    assert q.codes.min() >= 0 and q.codes.max() < 2 ** spec.bits
    values = q.dequantize()
    assert torch.all(values[w == 0] == 0)  # pruned weights stay exactly zero
    assert torch.equal(quantize_tensor(values, spec).codes, q.codes)
    snapped = snap_to_grid(w, spec).dequantize()  # a bit-exact fixed point
    assert torch.equal(quantize_tensor(snapped, spec).dequantize(), snapped)
    assert len(torch.unique(values)) <= 2 ** spec.bits * (7 if spec.granularity == "channel"
                                                          else 1)


def test_uniform_error_bounded_by_half_step():
    w = torch.randn(5, 20)
    spec = QuantSpec(6, "uniform", "channel", True)
    q = quantize_tensor(w, spec)
    step = q.scale[:, None]
    assert torch.all((q.dequantize() - w).abs() <= step / 2 + 1e-6)


def test_pow2_values_are_signed_powers_of_two():
    spec = QuantSpec(4, "pow2", "tensor")
    w = torch.randn(50)
    values = quantize_tensor(w, spec).dequantize()
    nz = values[values != 0] / values.abs().max()
    exps = torch.log2(nz.abs())
    assert torch.allclose(exps, exps.round())
    assert exps.min() >= 1 - spec.max_exponent_steps and exps.max() <= 0


def test_fake_quantize_straight_through_gradient():
    w = torch.randn(4, 4, requires_grad=True)
    fake_quantize(w, QuantSpec(3)).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_quant_spec_validation():
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=1)
    with pytest.raises(ValueError, match="scheme"):
        QuantSpec(scheme="log")
    with pytest.raises(ValueError, match="pow2"):
        QuantSpec(scheme="pow2", symmetric=False)


# --------------------------------------------------------------------------- low rank


def test_lowrank_full_rank_reproduces_linear_and_conv():
    torch.manual_seed(0)
    lin = nn.Linear(12, 9)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(4, 12)
    xc = torch.randn(2, 3, 9, 9)
    assert torch.allclose(factorize_layer(lin, 9)(x), lin(x), atol=1e-5)
    assert torch.allclose(factorize_layer(conv, 5)(xc), conv(xc), atol=1e-5)


def test_lowrank_energy_and_budget_ranks():
    model = mlp()
    ranks = factorize_(copy.deepcopy(model), LowRankConfig(rank_ratio=0.25))
    assert ranks == {"features.0": 8, "features.2": 4}  # 0.25 * min(out, in)
    full = factorize_(copy.deepcopy(model), LowRankConfig(energy=1.0))
    assert full == {}  # full rank never saves parameters


# --------------------------------------------------------------------------- SmartExchange


def test_smartexchange_ce_powers_of_two_and_error_decreases():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3, generator=gen) @ torch.randn(3, 8, generator=gen)
    w += 0.05 * torch.randn(64, 8, generator=gen)
    config = SmartExchangeConfig(bits=4, threshold=0.05, iterations=15, rank=4)
    dec = se_decompose(w, config)
    ce = dec.ce
    e_min, e_max = config.exponent_range
    nz = ce[ce != 0]
    exps = torch.log2(nz.abs())
    assert torch.allclose(exps, exps.round())
    assert exps.min() >= e_min and exps.max() <= e_max
    assert 0 < dec.density < 1
    assert len(dec.errors) >= 2
    assert all(b <= a for a, b in zip(dec.errors, dec.errors[1:], strict=False))
    assert dec.errors[-1] < dec.errors[0]
    rel = torch.linalg.norm(w - ce @ dec.basis) / torch.linalg.norm(w)
    assert math.isclose(float(rel), dec.errors[-1], rel_tol=1e-4)


def test_smartexchange_layers_keep_form_when_trained():
    model = lenet5()
    decs = smartexchange_(model, SmartExchangeConfig(threshold=0.05))
    assert set(decs) == {"features.0", "features.3", "fc.0", "fc.2"}
    layer = model.fc[0]
    support = layer.support.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x_batch()).pow(2).mean().backward()
    opt.step()
    freeze_smartexchange_(model)
    assert torch.equal(layer.ce != 0, layer.ce.ne(0) & support)  # no entry off the support
    nz = layer.ce[layer.ce != 0]
    assert torch.allclose(torch.log2(nz.abs()), torch.log2(nz.abs()).round())


# --------------------------------------------------------------------------- structured


@pytest.mark.parametrize("builder", [mlp, lenet5])
def test_structured_model_smaller_and_matches_masked(builder):
    model = builder()
    masks = unit_masks(model, StructuredConfig(ratio=0.5))
    masked = apply_unit_masks_(copy.deepcopy(model), masks)
    small, kept = structured_prune(model, StructuredConfig(ratio=0.5))
    x = x_batch()
    assert sum(p.numel() for p in small.parameters()) < \
        sum(p.numel() for p in model.parameters())
    assert all(v == masks[n].numel() - masks[n].numel() // 2 for n, v in kept.items())
    assert torch.allclose(small(x), masked(x), atol=1e-5)


def test_structured_batchnorm_models_use_slimming():
    torch.manual_seed(0)
    model = build_model("vgg-small", cfg=[4, "M", 8], **SMALL).eval()
    small, kept = structured_prune(model, StructuredConfig(ratio=0.5))
    assert sum(p.numel() for p in small.parameters()) < \
        sum(p.numel() for p in model.parameters())
    assert all(v == 2 or v == 4 for v in kept.values())
    assert small(x_batch()).shape == (6, 4)


def test_structured_config_rejects_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer"):
        unit_masks(mlp(), StructuredConfig(ratios={"nope": 0.5}))


# --------------------------------------------------------------------------- packing


def quantized_sparse_mlp(spec: QuantSpec) -> nn.Module:
    model = mlp()
    sparsify_(model, SparsityConfig(sparsity=0.8, distribution="uniform"))
    quantize_(model, spec)
    freeze_quantized_(model)
    return model


@pytest.mark.parametrize("spec", [QuantSpec(4, "uniform", "channel", True),
                                  QuantSpec(5, "uniform", "tensor", False),
                                  QuantSpec(3, "pow2", "channel")])
def test_pack_unpack_exact_codes_and_outputs(tmp_path, spec):
    model = quantized_sparse_mlp(spec)
    info = pack(model, tmp_path / "m.sppk", model_name="mlp", build={"hidden": [32, 16], **SMALL})
    assert info.size == (tmp_path / "m.sppk").stat().st_size
    back = unpack(tmp_path / "m.sppk")
    assert same_state(back, model)  # the quantized weights exactly
    for name in ("features.0", "features.2", "classifier"):
        a = quantize_tensor(model.get_submodule(name).weight, spec)
        b = quantize_tensor(back.get_submodule(name).weight, spec)
        assert torch.equal(a.codes, b.codes)
    x = x_batch()
    assert torch.allclose(back(x), model(x), atol=1e-6)


@pytest.mark.parametrize("scheme", ["uniform", "pow2"])
def test_float16_scales_and_biases_are_stored_exactly_in_two_bytes(tmp_path, scheme):
    half = QuantSpec(4, scheme, "channel", scale_dtype="float16", bias_dtype="float16")
    model = quantized_sparse_mlp(half)
    for name in ("features.0", "features.2", "classifier"):
        layer = model.get_submodule(name)
        q = quantize_tensor(layer.weight, half)
        assert torch.equal(q.scale.half().float(), q.scale)  # float16 values
        assert torch.equal(layer.bias.half().float(), layer.bias)
        assert torch.equal(quantize_tensor(q.dequantize(), half).codes, q.codes)  # fixed point
    build = {"hidden": [32, 16], **SMALL}
    small = pack(model, tmp_path / "h.sppk", model_name="mlp", build=build)
    back = unpack(tmp_path / "h.sppk")
    assert same_state(back, model)
    x = x_batch()
    assert torch.equal(back(x), model(x))
    records = {r["name"]: r for r in read_header(tmp_path / "h.sppk")[0]["tensors"]}
    assert records["features.0.weight"]["scale_dtype"] == "float16"
    assert records["features.0.bias"]["value_dtype"] == "float16"
    other = quantized_sparse_mlp(QuantSpec(4, scheme, "channel"))
    with torch.no_grad():
        for name in ("features.0", "features.2", "classifier"):
            other.get_submodule(name).bias.normal_()  # float32 values: kept in 4 bytes
    full = pack(other, tmp_path / "f.sppk", model_name="mlp", build=build)
    assert small.size < full.size
    assert "value_dtype" not in {k for r in read_header(tmp_path / "f.sppk")[0]["tensors"]
                                 for k in r}
    assert same_state(unpack(tmp_path / "f.sppk"), other)


def test_float16_bias_rounding_is_straight_through_in_qat():
    model = mlp()
    quantize_(model, QuantSpec(8, bias_dtype="float16"))
    layer = model.features[0]
    with torch.no_grad():
        layer.bias.add_(1e-5)  # off the float16 grid
    x = x_batch()
    out = layer(x.reshape(len(x), -1))
    ref = torch.nn.functional.linear(x.reshape(len(x), -1), fake_quantize(
        layer.weight, layer.quant_spec), layer.bias.half().float())
    assert torch.equal(out, ref)
    out.sum().backward()
    assert torch.allclose(layer.bias.grad, torch.full_like(layer.bias, len(x)))
    with pytest.raises(ValueError, match="bias_dtype"):
        QuantSpec(4, bias_dtype="bfloat16")


def test_pack_unpack_lowrank_smartexchange_structured(tmp_path):
    model, _ = structured_prune(lenet5(), StructuredConfig(ratio=0.5))
    factorize_(model, LowRankConfig(rank_ratio=0.5, layers=["fc.0"]))
    smartexchange_(model, SmartExchangeConfig(layers=["fc.2"]))
    freeze_smartexchange_(model)
    quantize_(model, QuantSpec(6), names=["features.3", "fc.0.first"])
    freeze_quantized_(model)
    pack(model, tmp_path / "m.sppk", model_name="lenet5", build=SMALL)
    back = unpack(tmp_path / "m.sppk")
    assert same_state(back, model)
    assert type(back.fc[0]).__name__ == "LowRankLinear"
    assert type(back.fc[2]).__name__ == "SmartExchangeLinear"
    x = x_batch()
    assert torch.allclose(back(x), model.eval()(x), atol=1e-6)
    header, _ = read_header(tmp_path / "m.sppk")
    encodings = {r["name"]: r["encoding"] for r in header["tensors"]}
    assert encodings["fc.2.ce"] == "codes" and encodings["fc.0.first.weight"] == "codes"
    assert encodings["fc.0.second.weight"] == "float"


def test_sparse_4bit_layer_file_near_theoretical_bits(tmp_path):
    torch.manual_seed(0)  # one 300x400 layer: an MLP without hidden layers, no bias
    model = build_model("mlp", hidden=[], in_channels=1, num_classes=300, input_size=20)
    model.classifier = nn.Linear(400, 300, bias=False)
    sparsify_(model, SparsityConfig(sparsity=0.9, include_output=True, scope="global"))
    quantize_(model, QuantSpec(4, "uniform", "tensor", True))
    freeze_quantized_(model)
    arch_build = {"hidden": [], "in_channels": 1, "num_classes": 300, "input_size": 20}
    nnz = int((model.classifier.weight != 0).sum())
    assert nnz == 12_000
    theory = theoretical_bits(120_000, nnz, 4, scales=1)
    bitmap = pack(model, tmp_path / "b.sppk", model_name="mlp", build=arch_build,
                  positions="bitmap", version=1)  # the plain bit-packed layout
    assert theory <= 8 * bitmap.size <= 1.10 * theory
    auto = pack(model, tmp_path / "a.sppk", model_name="mlp", build=arch_build, version=1)
    assert auto.size <= bitmap.size
    assert torch.equal(unpack(tmp_path / "a.sppk").classifier.weight, model.classifier.weight)
    coded = pack(model, tmp_path / "c.sppk", model_name="mlp", build=arch_build)  # version 2
    assert coded.size < auto.size
    assert torch.equal(unpack(tmp_path / "c.sppk").classifier.weight, model.classifier.weight)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("encoding", ["bitmap", "delta", "auto"])
def test_position_codes_round_trip(density, encoding):
    rng = np.random.default_rng(0)
    mask = rng.random(997) < density
    kind, bits, data = encode_positions(mask, encoding)
    assert np.array_equal(decode_positions(data, kind, bits, mask.size, int(mask.sum())), mask)


def test_bit_packing_round_trip_and_range():
    values = np.arange(37) % 8
    assert np.array_equal(unpack_bits(pack_bits(values, 3), 3, 37), values)
    assert len(pack_bits(values, 3)) == math.ceil(37 * 3 / 8)
    with pytest.raises(ValueError, match="values must lie"):
        pack_bits(np.array([8]), 3)


def test_corrupted_and_truncated_files_are_rejected(tmp_path):
    model = quantized_sparse_mlp(QuantSpec(4))
    path = tmp_path / "m.sppk"
    pack(model, path, model_name="mlp", build={"hidden": [32, 16], **SMALL})
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # a payload byte
    (tmp_path / "flip.sppk").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted: SHA-256"):
        unpack(tmp_path / "flip.sppk")
    (tmp_path / "cut.sppk").write_bytes(data[:-57])
    with pytest.raises(ValueError, match="truncated"):
        unpack(tmp_path / "cut.sppk")
    (tmp_path / "tiny.sppk").write_bytes(data[:20])
    with pytest.raises(ValueError, match="truncated"):
        unpack(tmp_path / "tiny.sppk")
    (tmp_path / "magic.sppk").write_bytes(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="not a sparseprior packed file"):
        unpack(tmp_path / "magic.sppk")
    head = bytearray(data)
    head[20] ^= 0x20  # inside the JSON header
    (tmp_path / "head.sppk").write_bytes(bytes(head))
    with pytest.raises(ValueError, match="corrupted"):
        unpack(tmp_path / "head.sppk")


# --------------------------------------------------------------------------- ONNX


def test_onnx_runtime_matches_pytorch_for_compressed_model():
    model, _ = structured_prune(lenet5(), StructuredConfig(ratio=0.5))
    factorize_(model, LowRankConfig(rank_ratio=0.5, layers=["fc.0"]))
    quantize_(model, QuantSpec(4))
    freeze_quantized_(model)
    onnx = export_onnx(model, model.example_input(1))
    x = x_batch(5)
    assert check_onnx(model, onnx, x) < 1e-4
    assert check_onnx(model, ort_int8(onnx), x) < 0.5  # int8 activations: close, not exact


# --------------------------------------------------------------------------- recipe, pipeline


def test_recipe_validation_and_loading(tmp_path):
    with pytest.raises(ValueError, match="step kind"):
        Recipe(steps=[{"kind": "shrink"}])
    with pytest.raises(ValueError, match="sparsity"):
        Recipe(steps=[{"kind": "prune", "options": {"sparsity": 1.5}}])
    with pytest.raises(ValueError, match="gradual"):
        Recipe(steps=[{"kind": "prune", "options": {"schedule": "gradual"}}])
    with pytest.raises(ValueError, match="unknown field"):
        Recipe(steps=[{"kind": "quantize", "options": {"bitz": 4}}])
    with pytest.raises(ValueError, match="non-empty"):
        Recipe(steps=[])
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"name": "x", "steps": [{"kind": "quantize",
                                                         "options": {"bits": 4}}]}))
    recipe = load_recipe(path)
    assert recipe.steps[0].config.bits == 4
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


def test_compress_pipeline_reports_every_step(tmp_path):
    splits = load_dataset("synthetic", seed=0, n_train=256, n_test=64, num_classes=4,
                          image_shape=(1, 12, 12))
    model = build_model("lenet5", **SMALL)
    recipe = Recipe(train={"optimizer": "adam", "lr": 1e-3, "batch_size": 64}, steps=[
        {"kind": "structured", "options": {"ratio": 0.25}},
        {"kind": "prune", "options": {"sparsity": 0.8, "schedule": "gradual",
                                      "n_updates": 3}, "epochs": 1},
        {"kind": "quantize", "options": {"bits": 4}, "epochs": 1}])
    result = compress_(model, recipe, train_set=splits.train, test_set=splits.test,
                       model_name="lenet5", build=SMALL, run_dir=tmp_path, latency_rounds=1)
    kinds = [r.kind for r in result.reports]
    assert kinds == ["original", "structured", "prune", "quantize"]
    sizes = [r.packed_bytes for r in result.reports]
    assert sizes[1] < sizes[0] and sizes[2] < sizes[1] and sizes[3] < sizes[2]
    assert result.reports[1].params < result.reports[0].params
    prunable = [result.model.features[0].weight, result.model.features[3].weight,
                result.model.fc[0].weight, result.model.fc[2].weight]
    total = sum(w.numel() for w in prunable)
    zeros = sum(int((w == 0).sum()) for w in prunable)
    assert zeros / total >= 0.8 - 1e-3  # sparsity kept through QAT
    assert all(0 <= r.accuracy <= 1 for r in result.reports)
    assert all(set(r.latency_ms) == {"b1", "b64"} for r in result.reports)
    assert (tmp_path / "step_3.sppk").stat().st_size == sizes[3]
    back = unpack(tmp_path / "step_3.sppk")
    x = splits.test.tensors[0][:8]
    assert torch.allclose(back(x), result.model.eval()(x), atol=1e-5)


def test_count_cost_counts_nonzero_macs():
    model = mlp()
    cost = count_cost(model, x_batch(1))
    assert cost["macs"] == 144 * 32 + 32 * 16 + 16 * 4
    sparsify_(model, SparsityConfig(sparsity=0.5, distribution="uniform"))
    pruned = count_cost(model, x_batch(1))
    assert pruned["nonzero_macs"] == cost["macs"] - (144 * 32 + 32 * 16) // 2


def test_measure_latency_interleaved_ratios():
    fast = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    res = measure_latency({"a": lambda: fast(x), "b": lambda: fast(x)}, baseline="a",
                          rounds=3, calls=2, warmup=1)
    assert res.speedup["a"] == 1.0 and res.median_ms["b"] > 0
    assert len(res.times_ms["a"]) == 3
    with pytest.raises(ValueError, match="baseline"):
        measure_latency({"a": lambda: None}, baseline="z")


def test_gradual_pruning_follows_cubic_schedule():
    from sparseprior.compress import GradualPruning, PruneConfig

    cb = GradualPruning(PruneConfig(sparsity=0.9, schedule="gradual", n_updates=4),
                        total_steps=100)
    assert cb.update_every == 18  # floor(0.75 * 100 / 4)
    targets = [cb.target(s) for s in range(0, 101, 6)]
    assert targets[0] == 0.0 and all(b >= a for a, b in zip(targets, targets[1:],
                                                               strict=False))
    assert cb.target(4 * 18) == pytest.approx(0.9) and cb.target(100) == pytest.approx(0.9)


def test_ratio_stats_median_and_iqr():
    x = torch.randn(8, 16)
    layer = nn.Linear(16, 16)
    res = measure_latency({"a": lambda: layer(x), "b": lambda: layer(x)}, baseline="a",
                          rounds=9, calls=2, warmup=1)
    stats = res.ratio_stats("a")
    assert stats["a"] == (1.0, 1.0, 1.0)
    med, q1, q3 = stats["b"]
    assert q1 <= med <= q3 and med == pytest.approx(res.speedup["b"])
    with pytest.raises(ValueError, match="baseline"):
        res.ratio_stats("z")


@pytest.mark.parametrize("name,build", [("lenet300", {}), ("lenet5", {}),
                                        ("vgg-small", {"in_channels": 3, "input_size": 16,
                                                      "width": 0.25})])
def test_functional_chain_matches_the_model(name, build):
    from sparseprior.compress.latency import functional_chain

    torch.manual_seed(0)
    model = build_model(name, **build).eval()
    for m in model.modules():  # non-trivial BN statistics, folded into the convs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    chain = functional_chain(model, model.example_input(2))
    assert chain is not None
    x = torch.randn(3, *model.example_input(1).shape[1:])
    with torch.no_grad():
        assert torch.allclose(chain(x), model(x), atol=1e-4)


def test_functional_chain_refuses_residual_networks():
    from sparseprior.compress.latency import functional_chain

    model = build_model("resnet20", width=0.25)
    assert functional_chain(model, model.example_input(2)) is None


def test_bad_architecture_descriptions_are_value_errors():
    from sparseprior.compress import build_from_architecture, describe_architecture

    arch = describe_architecture(build_model("lenet5"), "lenet5", {})
    mutations = {"KeyError: 'in'": lambda a: a["layers"]["features.0"].pop("in"),
                 "unknown layer type 'Nope'":
                     lambda a: a["layers"]["features.0"].__setitem__("type", "Nope"),
                 "not a module": lambda a: a["layers"].__setitem__("x.y", {"type": "Linear",
                                                                          "in": 1, "out": 1,
                                                                          "bias": True}),
                 "quant must be a mapping":
                     lambda a: a["layers"]["features.0"].__setitem__("quant", 3)}
    for match, mutate in mutations.items():
        bad = copy.deepcopy(arch)
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            build_from_architecture(bad)
    assert type(build_from_architecture(arch)).__name__ == "LeNet5"
