"""DST run folders, exact resume, CSR inference export, and the ``sparseprior dst`` CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprior.dst import (
    CSRLinear,
    DSTConfig,
    DSTRunConfig,
    DynamicSparsity,
    compare_latency,
    csr_layers,
    initial_masks,
    load_run_model,
    load_sparse_inference,
    run_dst,
    save_sparse_inference,
    to_sparse_inference,
)
from sparseprior.engine import TrainConfig, Trainer

SYNTH = {"n_train": 256, "n_test": 128, "image_shape": [1, 6, 6], "num_classes": 4}
TRAIN = TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", num_threads=1,
                    log_every=0, eval_every=0, progress=False)


def _config(method: str = "rigl", **dst) -> DSTRunConfig:
    return DSTRunConfig(dst=DSTConfig(method=method, sparsity=0.9, delta_t=4, **dst),
                        model="mlp", model_options={"hidden": [64, 32]}, dataset="synthetic",
                        dataset_options=SYNTH, train=TRAIN)


@pytest.fixture(scope="module")
def rigl_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dst") / "rigl"
    return folder, run_dst(_config(), folder)


def test_run_folder_has_config_metrics_weights_and_counted_sparsity(rigl_run):
    folder, summary = rigl_run
    for name in ("config.json", "model.json", "metrics.jsonl", "summary.json",
                 "final.safetensors", "masks.safetensors"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoints").exists()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "dst_update"]
    assert len(updates) == summary["updates"] == 4      # steps 4, 8, 12, 16 < T_end = 18
    assert all(r["method"] == "rigl" and r["layers"] for r in updates)
    config, model, masks = load_run_model(folder)
    assert config == _config()
    # per-layer sparsity in the summary is counted from the saved tensors
    params = dict(model.named_parameters())
    for name, layer in summary["layers"].items():
        assert layer["nonzero"] == int(torch.count_nonzero(params[name]))
        assert layer["nonzero"] <= int(masks[name].sum())
        assert torch.all(params[name][~masks[name]] == 0)
    assert summary["mask_density"] == pytest.approx(0.1, abs=2e-3)
    assert summary["sparsity"] >= 0.9 - 2e-3
    assert 0.25 < summary["test_accuracy"] <= 1.0
    again = run_dst(_config(), folder)                  # finished: read back, not retrained
    assert again["cached"] and again["test_accuracy"] == summary["test_accuracy"]


def test_a_different_experiment_in_the_same_folder_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(_config().to_json())
    with pytest.raises(ValueError, match="holds a different DST run"):
        run_dst(_config("set"), tmp_path / "run")


def test_interrupted_training_resumes_exactly(tmp_path):
    cfg = DSTConfig(method="rigl", sparsity=0.8, delta_t=2, alpha=0.4)
    data = torch.utils.data.TensorDataset(torch.randn(96, 10), torch.randint(0, 3, (96,)))
    schedule = TRAIN.replace(epochs=4, checkpoint_every=1)

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        dst = DynamicSparsity(cfg)
        return model, dst, initial_masks(model, cfg)

    model, dst, masks = build()
    Trainer(model, data, schedule, masks=masks, callbacks=[dst]).fit()
    calls = {"n": 0}

    def crashing_loss(out, y):
        calls["n"] += 1
        if calls["n"] == 5:                              # in epoch 2, after the epoch-1 save
            raise RuntimeError("simulated crash")
        return F.cross_entropy(out, y)

    m2, d2, k2 = build()
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(m2, data, schedule, masks=k2, callbacks=[d2], run_dir=tmp_path,
                loss_fn=crashing_loss).fit()
    m3, d3, k3 = build()
    trainer = Trainer(m3, data, schedule, masks=k3, callbacks=[d3], run_dir=tmp_path)
    trainer.fit(resume=True)
    assert [u["step"] for u in d3.updates] == [2, 4, 6, 8]
    assert [u["digest"] for u in d3.updates] == [u["digest"] for u in dst.updates]
    assert trainer.masks.digest() == masks.digest()
    for a, b in zip(model.state_dict().values(), m3.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_csr_export_matches_the_masked_model_and_round_trips(rigl_run, tmp_path):
    folder, _ = rigl_run
    _, model, _ = load_run_model(folder)
    sparse = to_sparse_inference(model)
    layers = csr_layers(sparse)
    assert sorted(layers) == ["features.0", "features.2"]   # the sparse layers, not the output
    assert isinstance(sparse.get_submodule("classifier"), nn.Linear)
    params = dict(model.named_parameters())
    for name, layer in layers.items():
        assert layer.nnz == int(torch.count_nonzero(params[f"{name}.weight"]))
    x = torch.randn(300, 1, 6, 6)
    with torch.no_grad():
        for batch in (x, x[:1], x[:7]):
            assert torch.allclose(sparse(batch), model(batch), atol=1e-5, rtol=1e-5)
    assert isinstance(model.get_submodule("features.0"), nn.Linear)   # original untouched
    path = save_sparse_inference(tmp_path / "csr", sparse)
    loaded = load_sparse_inference(path, load_run_model(folder)[1])
    with torch.no_grad():
        assert torch.equal(loaded(x), sparse(x))
    # dense layers below min_sparsity stay dense
    assert csr_layers(to_sparse_inference(model, min_sparsity=0.999)) == {}
    with pytest.raises(ValueError, match="not nn.Linear modules"):
        to_sparse_inference(model, layers=["nope"])


def test_csr_linear_handles_vectors_batches_and_no_bias():
    torch.manual_seed(0)
    w = torch.randn(5, 7) * (torch.rand(5, 7) > 0.7)
    for bias in (torch.randn(5), None):
        layer = CSRLinear(w, bias)
        for x in (torch.randn(7), torch.randn(1, 7), torch.randn(4, 7), torch.randn(2, 3, 7)):
            assert torch.allclose(layer(x), F.linear(x, w, bias), atol=1e-6)
    with pytest.raises(ValueError, match="expects inputs"):
        CSRLinear(w)(torch.randn(2, 6))


def test_compare_latency_reports_interleaved_medians_and_ratios():
    dense = nn.Linear(20, 10)
    rows = compare_latency({"a": dense, "b": dense}, (20,), batch_sizes=(1, 8), repeats=3,
                           min_seconds=0.001)
    assert [(r["model"], r["batch"]) for r in rows] == [("a", 1), ("b", 1), ("a", 8),
                                                        ("b", 8)]
    assert all(r["ms"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0
    with pytest.raises(ValueError, match="reference='c'"):
        compare_latency({"a": dense}, (20,), reference="c")


# --------------------------------------------------------------------------- CLI

TINY = ["--dataset", "digits", "--subset", "320", "--epochs", "2", "--batch-size", "32",
        "--device", "cpu", "--threads", "1"]


def test_cli_train_and_export(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = cli(["dst", "train", "--method", "rigl", "--sparsity", "0.9",
                           "--delta-t", "5", "--out", str(out), *TINY])
    assert code == 0, stdout
    assert "| layer | shape | nonzero | sparsity |" in stdout
    assert "rigl on lenet300" in stdout and "2 mask updates" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "rigl" and summary["sparsity"] >= 0.89
    code, stdout, _ = cli(["dst", "export", str(out), "--repeats", "2"])
    assert code == 0 and "max |dense - csr|" in stdout and "| csr | 256 |" in stdout
    assert (out / "sparse_inference.safetensors").is_file()
    assert (out / "export.json").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--delta-t", "0"], "delta_t must be >= 1"),
    (["--t-end", "1.5"], "beyond training"),
    (["--delta-t", "500"], "leaves no mask update before T_end"),
    (["--method", "snfs"], "method='snfs'"),
])
def test_cli_bad_input_is_one_line_exit_2(cli, tmp_path, args, fragment):
    code, _, err = cli(["dst", "train", *TINY, "--out", str(tmp_path / "bad"), *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_cli_export_of_a_missing_run_is_an_error(cli, tmp_path):
    code, _, err = cli(["dst", "export", str(tmp_path / "none")])
    assert code == 2 and "is not a finished DST run folder" in err


# --------------------------------------------------------------------------- experiments


def _fake(model, method, sparsity, acc):
    return {"model": model, "method": method, "target_sparsity": sparsity, "test_accuracy": acc,
            "sparsity": sparsity, "density": 1 - sparsity, "seed": 0}


def test_grid_cells_table_claims_and_plot(tmp_path):
    from sparseprior.dst.experiments import (
        GRID_METHODS,
        GRID_MODELS,
        GRID_SPARSITIES,
        grid_cells,
        grid_claims,
        grid_table,
        plot_grid,
    )

    cells = grid_cells(GRID_MODELS, GRID_METHODS, GRID_SPARSITIES)
    assert len(cells) == 34 and len(set(cells)) == 34
    assert cells[:2] == [("lenet5", "dense", 0.0, 0), ("lenet300", "dense", 0.0, 0)]
    assert [c[2] for c in cells[2:10]] == [0.98] * 8          # the claims' cells come first
    more = grid_cells(GRID_MODELS, GRID_METHODS, GRID_SPARSITIES, extra_seeds=[1, 2])
    assert more[:34] == cells and len(more) == 34 + 2 * 18
    assert {c[2] for c in more[34:]} == {0.0, 0.9, 0.98} and {c[3] for c in more[34:]} == {1, 2}
    runs = [_fake("lenet300", "dense", 0.0, 0.90), _fake("lenet300", "rigl", 0.9, 0.893),
            _fake("lenet300", "static", 0.98, 0.85), _fake("lenet300", "set", 0.98, 0.86),
            _fake("lenet300", "rigl", 0.98, 0.87), _fake("lenet300", "granet", 0.98, 0.855)]
    claims = grid_claims(runs)
    assert claims[0].startswith("[PASS]") and "+0.70 points below dense" in claims[0]
    assert claims[1].startswith("[MISS]")                      # GraNet below SET
    runs[-1]["test_accuracy"] = 0.88
    assert grid_claims(runs)[1].startswith("[PASS]")
    runs[1]["test_accuracy"] = 0.885
    assert grid_claims(runs)[0].startswith("[MISS]")          # 1.5 points below dense
    table = grid_table(runs)
    assert [r["target sparsity %"] for r in table] == [90.0, 98.0]
    assert table[1]["RigL %"] == 87.0 and table[0]["static %"] == ""
    # a second seed: means over seeds in the table and the claims
    runs.append({**_fake("lenet300", "rigl", 0.98, 0.85), "seed": 1})
    assert grid_table(runs)[1]["RigL %"] == 86.0 and grid_table(runs)[1]["seeds"] == "1-2"
    assert grid_claims(runs)[1].startswith("[MISS]") and "(n=2)" in grid_claims(runs)[1]
    assert plot_grid(tmp_path / "grid.png", runs, "lenet300").stat().st_size > 0
