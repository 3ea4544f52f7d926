import subprocess
import sys

import pytest


def test_problem_command_writes_file(cli, tmp_path):
    path = tmp_path / "p.npz"
    code, out, _ = cli(["solvers", "problem", str(path), "--m", "20", "--n", "40"])
    assert code == 0 and path.exists() and "condition number" in out


@pytest.mark.parametrize("args, fragment", [
    (["solvers", "problem", "X.npz", "--p", "1.5"], "p must be in"),
    (["solvers", "problem", "X.txt"], ".npz or .safetensors"),
    (["solvers", "problem", "X.npz", "--m", "-1"], "m must be >= 1"),
    (["solvers", "eval", "missing.safetensors", "--m", "4", "--n", "8"], "not found"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "sparseprior", "--help"],
                         capture_output=True, text=True, check=True)
    assert "solvers" in out.stdout and "reproduce" in out.stdout


def test_train_eval_and_mismatched_checkpoint(cli, tmp_path):
    out = tmp_path / "run"
    small = ["--m", "10", "--n", "20", "--seed", "1"]
    code, text, _ = cli(["solvers", "train", "--solver", "LISTA-CP", "--num-layers", "2",
                          "--budget", "quick", "--out", str(out), "--device", "cpu", *small])
    assert code == 0 and "test NMSE at layer 2" in text
    ckpt = out / "model.safetensors"
    assert ckpt.exists()
    code, text, _ = cli(["solvers", "eval", str(ckpt), *small])
    assert code == 0 and "layer   2" in text and "support:" in text
    code, _, err = cli(["solvers", "eval", str(ckpt), "--m", "12", "--n", "20"])
    assert code == 2 and err.startswith("error: ") and "12" in err
