"""``sparseprior tickets ...``: a tiny end-to-end run and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

TINY = ["--dataset", "digits", "--subset", "160", "--epochs", "1", "--batch-size", "32",
        "--device", "cpu", "--threads", "1"]


def test_imp_command_runs_and_prints_a_table(cli, tmp_path):
    out = tmp_path / "imp"
    code, stdout, _ = cli(["tickets", "imp", "--model", "mlp", "--hidden", "16,16",
                            "--levels", "1", "--rewind-step", "2", "--ablations", "random",
                            "--out", str(out), *TINY])
    assert code == 0
    assert "| level | density | imp_acc | random_acc |" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["rewind_step"] == 2 and config["model_options"] == {"hidden": [16, 16]}
    assert (out / "level_01" / "random" / "summary.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["tickets", "imp", "--levels", "-1"], "levels must be >= 0"),
    (["tickets", "imp", "--scope", "local"], "scope='local'"),
    (["tickets", "imp", "--model", "mlp", "--hidden", "16,x"], "--hidden must be"),
    (["tickets", "imp", "--ablations", "shuffle"], "ablations[i]='shuffle'"),
    (["tickets", "elastic", "--target-depth", "4", "--mapping", "0:1", *TINY],
     "without a source"),
    (["tickets", "elastic", "--hidden", "32,16", "--target-depth", "4", *TINY],
     "equal hidden widths"),
    (["tickets", "elastic", "--levels", "2", "--level", "99", "--target-depth", "4"],
     "level=99 is beyond the source IMP run's levels 1..2"),
    (["tickets", "earlybird", "--search-epochs-max", "20", "--epochs", "16"],
     "search_epochs_max=20 must be < epochs=16"),
    (["tickets", "elastic", "--source-run", "missing-run", "--target-depth", "4"],
     "is not an IMP run folder"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert not (tmp_path / "runs").exists()              # nothing trained, no folder written


def test_earlybird_defaults_are_valid():
    from sparseprior.tickets.earlybird import EarlyBirdConfig

    config = EarlyBirdConfig()                            # the CLI's defaults
    assert config.search_epochs_max < config.epochs
    assert EarlyBirdConfig.from_dict(config.to_dict()) == config


def test_earlybird_command_runs_and_validates(cli, tmp_path):
    args = ["tickets", "earlybird", "--dataset", "digits", "--subset", "1000", "--width",
            "0.25", "--search-epochs-max", "3", "--epochs", "4", "--fifo-size", "2",
            "--distance-threshold", "0.5", "--no-run-baseline", "--device", "cpu",
            "--out", str(tmp_path / "eb")]
    code, out, _ = cli(args)
    assert code == 0 and "ticket drawn at epoch" in out
    assert (tmp_path / "eb" / "slim_model.safetensors").exists()
    code, _, err = cli([*args[:-2], "--prune-ratio", "1.5", "--out", str(tmp_path / "bad")])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "prune_ratio" in lines[0]
