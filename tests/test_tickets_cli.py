"""``sparseprior tickets ...``: a tiny end-to-end run and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from sparseprior.cli import main

TINY = ["--dataset", "digits", "--subset", "160", "--epochs", "1", "--batch-size", "32",
        "--device", "cpu", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """``--threads 1`` sets torch's global thread count; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_imp_command_runs_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "imp"
    code, stdout, _ = _run(["tickets", "imp", "--model", "mlp", "--hidden", "16,16",
                            "--levels", "1", "--rewind-step", "2", "--ablation", "random",
                            "--out", str(out), *TINY], capsys)
    assert code == 0
    assert "| level | density | imp_acc | random_acc |" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["rewind_step"] == 2 and config["model_options"] == {"hidden": [16, 16]}
    assert (out / "level_01" / "random" / "summary.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["tickets", "imp", "--levels", "-1"], "levels must be >= 0"),
    (["tickets", "imp", "--scope", "local"], "scope='local'"),
    (["tickets", "imp", "--model", "mlp", "--hidden", "16,x"], "--hidden must be"),
    (["tickets", "imp", "--ablation", "shuffle"], "ablations[i]='shuffle'"),
    (["tickets", "elastic", "--target-depth", "4", "--mapping", "0:1", *TINY],
     "without a source"),
    (["tickets", "elastic", "--model", "lenet300", "--target-depth", "4", *TINY],
     "equal hidden widths"),
    (["tickets", "elastic", "--source-run", "missing-run", "--target-depth", "4"],
     "is not an IMP run folder"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
