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


# --------------------------------------------------------------------------- issue 11: one line


def _recipe(tmp_path, text: str, suffix: str = ".json"):
    path = tmp_path / f"r{suffix}"
    path.write_text(text)
    return path


def _one_line_error(result, *needles: str) -> None:
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bench_rejects_batch_zero_and_zero_rounds(cli, tmp_path):
    packed = tmp_path / "m.sppk"
    packed.write_bytes(b"unused: the options are checked first")
    _one_line_error(cli(["compress", "bench", str(packed), "--batch", "0"]), "batch", "0")
    _one_line_error(cli(["compress", "bench", str(packed), "--rounds", "0"]), "rounds")


def test_bad_recipes_are_one_line(cli, tmp_path):
    cases = [("steps: [kind: prune\n  bad: : yaml", ".yaml", "not valid YAML"),
             ('{"steps": [', ".json", "not valid JSON"),
             ("[1, 2]", ".json", "must hold a mapping"),
             ('{"steps": [{"kind": "shrink"}]}', ".json", "unknown step kind 'shrink'"),
             ('{"steps": [{"kind": "prune"}], "train": 3}', ".json", "recipe train"),
             ("\udcff", ".json", None)]
    for text, suffix, needle in cases[:-1]:
        path = _recipe(tmp_path, text, suffix)
        _one_line_error(cli(["compress", "run", "--recipe", str(path), "--dataset",
                             "synthetic", "--out", str(tmp_path / "run")]), needle)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(cli(["compress", "run", "--recipe", str(binary), "--out",
                         str(tmp_path / "run")]), "UTF-8")
    _one_line_error(cli(["compress", "run", "--out", str(tmp_path / "run")]), "no recipe")


def test_bad_weights_are_one_line(cli, tmp_path):
    recipe = _recipe(tmp_path, json.dumps({"steps": [{"kind": "prune",
                                                       "options": {"sparsity": 0.5}}]}))
    args = ["compress", "run", "--recipe", str(recipe), "--model", "lenet5", "--dataset",
            "synthetic", "--latency-rounds", "0"]
    _one_line_error(cli([*args, "--out", str(tmp_path / "a"), "--weights",
                         str(tmp_path / "missing.safetensors")]), "no such file")
    good = tmp_path / "w.safetensors"
    save_file(build_model("lenet5", **{**BUILD, "input_size": 12}).state_dict(), str(good))
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error(cli([*args, "--out", str(tmp_path / "b"), "--weights", str(truncated)]),
                    "not a readable safetensors file")
    other = tmp_path / "other.safetensors"
    save_file(build_model("lenet300").state_dict(), str(other))
    _one_line_error(cli([*args, "--out", str(tmp_path / "c"), "--weights", str(other)]),
                    "does not fit model LeNet5")
    _one_line_error(cli(["compress", "pack", str(other), "--out", str(tmp_path / "m.sppk"),
                         "--model", "lenet5"]), "does not fit model LeNet5")
    _one_line_error(cli(["compress", "pack", str(truncated), "--out",
                         str(tmp_path / "m.sppk"), "--model", "lenet5"]), "truncated")


def test_run_folder_is_claimed_and_config_reruns(cli, tmp_path):
    recipe = _recipe(tmp_path, json.dumps({"steps": [{"kind": "prune",
                                                       "options": {"sparsity": 0.5}}]}))
    out = tmp_path / "run"
    base = ["compress", "run", "--model", "mlp", "--model-options", '{"hidden": [16]}',
            "--dataset", "synthetic", "--epochs", "1", "--latency-rounds", "0", "--out",
            str(out)]
    code, stdout, err = cli([*base, "--recipe", str(recipe)])
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe_config"]["steps"][0]["kind"] == "prune"
    first = json.loads((out / "results.json").read_text())
    # the folder's own config reruns the same experiment (the recipe travels inside it)
    code, _, err = cli(["compress", "run", "--config", str(out / "config.json"), "--out",
                        str(out)])
    assert code == 0, err
    again = json.loads((out / "results.json").read_text())
    assert again["packed_bytes"] == first["packed_bytes"]
    # another experiment into the same folder is refused, naming the field
    _one_line_error(cli([*base, "--recipe", str(recipe), "--seed", "1"]), "seed")
