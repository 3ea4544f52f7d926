"""The compression benchmark end to end on tiny synthetic data (every baseline and table)."""

from __future__ import annotations

from sparseprior.common.runs import RunDir
from sparseprior.compress.experiments import (
    BenchConfig,
    baseline_rows,
    plot_tradeoffs,
    run_compression_benchmark,
)
from sparseprior.data import load_dataset


def test_benchmark_runs_all_baselines_on_tiny_data(tmp_path):
    splits = load_dataset("synthetic", seed=0, n_train=256, n_test=64, num_classes=4,
                          image_shape=(1, 12, 12))
    config = BenchConfig(model="mlp", build={"hidden": [24, 12]}, dataset="synthetic",
                         epochs=1, finetune_epochs=1, sparsity=0.75,
                         structured_ratios={"features.0": 0.5}, latency_rounds=2,
                         batch_sizes=[1, 8])
    result = run_compression_benchmark(config, RunDir(tmp_path), splits)
    names = set(result["candidates"])
    assert {"fp32 (PyTorch)", "fp32 (functional)", "fp32 (ONNX Runtime)", "torch.nn.utils.prune",
            "PyTorch dynamic int8", "low-rank alone", "SmartExchange alone",
            "combined: structured + int8 (ONNX Runtime)"} <= names
    storage = result["storage"]
    assert storage["packed_bytes"] == (tmp_path / "storage.sppk").stat().st_size
    assert storage["ratio"] > 3  # 75% sparse, 4-bit codes vs fp32
    assert storage["unpack_max_abs_diff"] < 1e-5
    prune_size = result["candidates"]["torch.nn.utils.prune"]["size_bytes"]
    assert prune_size >= 0.95 * result["original"]["fp32_safetensors_bytes"]  # saves nothing
    for b in (1, 8):
        lat = result["latency_by_batch"][b]
        assert lat["speedup"]["fp32 (PyTorch)"] == 1.0
        assert lat["speedup_vs_functional"]["fp32 (functional)"] == 1.0
        q1, q3 = lat["speedup_iqr"]["combined: structured (PyTorch)"]
        assert q1 <= lat["speedup"]["combined: structured (PyTorch)"] <= q3
    # the bare chain computes what the model computes
    assert abs(result["candidates"]["fp32 (functional)"]["accuracy"]
               - result["original"]["accuracy"]) < 1e-9
    rows = baseline_rows(result)
    assert rows[-1]["method"].startswith("combined: prune + k-bit")
    assert plot_tradeoffs(tmp_path / "t.png", {"mlp": result}, batch=8).stat().st_size > 0
