"""Fine-tuning in compressed form: mask and code grid fixed, the re-packed file decodes, the
trainable parameters are those designed, accuracy improves on a toy shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from sparseprior.compress import (
    QuantSpec,
    freeze_quantized_,
    pack,
    quantize_,
    read_header,
    unpack,
)
from sparseprior.compress.finetune import (
    FinetuneConfig,
    ShiftConfig,
    accuracy_on,
    finetune_packed,
    shift_images,
)
from sparseprior.compress.quantize import quant_spec_of
from sparseprior.compress.serve import layer_codes
from sparseprior.engine import TrainConfig, Trainer
from sparseprior.models import build_model
from sparseprior.sparsity import SparsityConfig, sparsify_

SMALL = {"in_channels": 1, "num_classes": 4, "input_size": 12}
BUILD = {"hidden": [32, 16], **SMALL}
LAYERS = ("features.0", "features.2", "classifier")


def toy_data(n: int, seed: int) -> TensorDataset:
    """Four classes: a bright quadrant of a 12x12 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 12, 12, generator=g)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, 6 * r:6 * r + 6, 6 * q:6 * q + 6] += 1.0
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("mlp", **BUILD)
    train = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                        device="cpu", eval_every=0, log_every=0, progress=False)
    Trainer(model, toy_data(1024, 1), train).fit()
    sparsify_(model, SparsityConfig(sparsity=0.8, distribution="uniform"))
    quantize_(model, QuantSpec(4, "uniform", "channel", True))
    freeze_quantized_(model)
    path = tmp_path_factory.mktemp("ft") / "m.sppk"
    pack(model, path, model_name="mlp", build=BUILD)
    return path


SHIFT = ShiftConfig(rotate=90.0, invert=True, noise=0.0)


def shifted_toy(n: int, seed: int) -> TensorDataset:
    data = toy_data(n, seed)
    return TensorDataset(shift_images(data.tensors[0], SHIFT), data.tensors[1])


def codes_of(model):
    return {n: layer_codes(model.get_submodule(n).weight, quant_spec_of(model.get_submodule(n)))
            for n in LAYERS}


def test_mask_and_grid_fixed_file_decodes_and_size_kept(packed, tmp_path):
    original = unpack(packed)
    config = FinetuneConfig(epochs=1, lr=1e-2, batch_size=64)
    result = finetune_packed(packed, shifted_toy(512, 2), tmp_path / "ft.sppk", config)
    back = unpack(tmp_path / "ft.sppk")
    x = shifted_toy(8, 3).tensors[0]
    assert torch.allclose(back(x), result.model(x), atol=1e-5)
    before, after = codes_of(original), codes_of(back)
    for name in LAYERS:
        a, b = original.get_submodule(name), back.get_submodule(name)
        assert quant_spec_of(a) == quant_spec_of(b)  # same grid
        assert torch.equal(a.weight != 0, b.weight != 0)  # same mask
        (ca, sa), (cb, sb) = before[name], after[name]
        # only scales were trained: the codes are the same up to each row's sign
        sign = np.where((cb.astype(int) * ca).sum(axis=1) < 0, -1, 1)  # a negative scale
        assert np.array_equal(cb, ca * sign[:, None].astype(ca.dtype))
        assert not np.allclose(sa, sb)  # the scales did change
    # same codes, positions and grid: with format v2 the parts are entropy-coded, so new
    # scale values may code a few bytes longer or shorter; the file stays within 2% (issue
    # 15's target) plus the header's meta that records the fine-tuning (tens of bytes)
    before_payload = read_header(packed)[0]["payload_bytes"]
    after_payload = read_header(tmp_path / "ft.sppk")[0]["payload_bytes"]
    assert abs(after_payload - before_payload) <= 0.02 * before_payload
    assert abs(result.size_after - result.size_before) <= 0.02 * result.size_before + 80
    assert result.trainable == 2 * (32 + 16 + 4)  # per-row scales + biases


def test_code_training_keeps_mask_and_counts(packed, tmp_path):
    original = unpack(packed)
    w0 = original.features[0].weight
    config = FinetuneConfig(epochs=1, lr=5e-2, batch_size=64, code_layers=["features.0"])
    result = finetune_packed(packed, shifted_toy(512, 2), tmp_path / "ft.sppk", config)
    back = unpack(tmp_path / "ft.sppk")
    w1 = back.features[0].weight
    assert torch.equal(w0 != 0, w1 != 0)
    c0, _ = codes_of(original)["features.0"]
    c1, _ = codes_of(back)["features.0"]
    assert np.abs(c1).max() <= 7 and (np.abs(c1[c0 != 0]) >= 1).all()
    assert (c0 != c1).any()  # codes moved on the grid
    free = int(((c0 != 0) & (np.abs(c0) < 7)).sum())
    assert result.trainable == 2 * (32 + 16 + 4) + free


def test_accuracy_improves_on_a_toy_shift(packed, tmp_path):
    test = shifted_toy(512, 4)
    config = FinetuneConfig(epochs=3, lr=2e-2, batch_size=64, code_layers=["features.0"])
    result = finetune_packed(packed, shifted_toy(1024, 2), tmp_path / "ft.sppk", config,
                             test_set=test)
    assert result.acc_before < 0.6
    assert result.acc_after > result.acc_before + 0.2
    assert accuracy_on(unpack(tmp_path / "ft.sppk"), test) == pytest.approx(result.acc_after)
    assert result.peak_memory_bytes is None or result.peak_memory_bytes >= 0


def test_bad_config_raises(packed, tmp_path):
    with pytest.raises(ValueError, match="unknown layer"):
        finetune_packed(packed, shifted_toy(64, 2), tmp_path / "x.sppk",
                        FinetuneConfig(code_layers=["nope"]))
    with pytest.raises(ValueError, match="epochs"):
        finetune_packed(packed, shifted_toy(64, 2), tmp_path / "x.sppk",
                        FinetuneConfig(epochs=0))
    with pytest.raises(ValueError, match="noise"):
        shift_images(torch.zeros(1, 1, 4, 4), ShiftConfig(noise=-1.0))
