"""``sparseprior solvers``: bad input is one line and exit 2 (issue 11), secrets stay masked,
problem files are written atomically, options come from the configs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from sparseprior.solvers import fit as fit_module
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.tuning import mask_storage_url


def one_line_error(cli, args: list[str]) -> str:
    code, _, err = cli(args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bench_iters_zero_is_refused(cli):
    assert "iters must be >= 1, got 0" in one_line_error(cli, ["solvers", "bench", "--iters",
                                                               "0"])


def test_cs_dct_refuses_a_different_atom_count(cli):
    line = one_line_error(cli, ["solvers", "cs", "--dictionary", "dct", "--n-atoms", "100"])
    assert "dct dictionary of 16x16 patches has exactly d = 256 atoms, got 100" in line


def test_cs_refuses_a_non_image_file(cli, tmp_path):
    line = one_line_error(cli, ["solvers", "cs", "--train-images", "/etc/passwd", "--out",
                                str(tmp_path / "cs")])
    assert "'/etc/passwd' is not a readable image file" in line


def _corrupt_files(tmp_path):
    good = SparseRecoveryProblem.generate(ProblemConfig(m=6, n=10, n_val=4, n_test=4))
    path = good.save(tmp_path / "good.npz")
    files = {"garbage.npz": b"not a zip file at all", "empty.safetensors": b"",
             "truncated.npz": path.read_bytes()[:200],
             "garbage.safetensors": b"\xff" * 64}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with (zipfile.ZipFile(tmp_path / "missing.npz", "w") as zf,   # an npz without the arrays
          zf.open("config.npy", "w") as fh):
        np.save(fh, np.array(json.dumps({"m": 6, "n": 10})))
    return [*files, "missing.npz"]


def test_corrupt_problem_files_are_one_line_errors(cli, tmp_path):
    for name in _corrupt_files(tmp_path):
        path = str(tmp_path / name)
        line = one_line_error(cli, ["solvers", "eval", "x.safetensors", "--problem", path])
        assert path in line and "problem" in line


def test_optuna_storage_errors_are_one_line_and_hide_the_password(cli, tmp_path):
    line = one_line_error(cli, ["solvers", "tune", "--storage",
                                "postgresql://bob:s3cret@127.0.0.1:1/db", "--m", "10", "--n",
                                "20", "--out", str(tmp_path / "t")])
    assert "bob:***@127.0.0.1" in line and "s3cret" not in line
    line = one_line_error(cli, ["solvers", "tune", "--storage", "sqlite:////no/such/dir/x.db",
                                "--m", "10", "--n", "20", "--out", str(tmp_path / "t2")])
    assert "cannot open Optuna study" in line


def test_storage_urls_are_masked():
    assert mask_storage_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_storage_url("mysql+pymysql://u:p%40ss@h/db") == "mysql+pymysql://u:***@h/db"
    assert mask_storage_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_storage_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_sizes_beyond_memory_are_refused_with_the_estimate(cli, tmp_path, monkeypatch):
    line = one_line_error(cli, ["solvers", "problem", str(tmp_path / "p.npz"), "--n",
                                "100000000"])
    assert "needs about" in line and "GiB" in line and not (tmp_path / "p.npz").exists()
    monkeypatch.setattr(fit_module, "available_memory_bytes", lambda: 2**30)
    line = one_line_error(cli, ["solvers", "train", "--solver", "LISTA", "--m", "100", "--n",
                                "2000"])
    assert "LISTA with T=16 for (m, n) = (100, 2000)" in line and "GiB" in line


def test_problem_files_are_written_atomically(cli, tmp_path, monkeypatch):
    path = tmp_path / "p.npz"
    code, out, _ = cli(["solvers", "problem", str(path), "--m", "8", "--n", "16"])
    assert code == 0 and "saved to" in out
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    line = one_line_error(cli, ["solvers", "problem", str(path), "--m", "9", "--n", "16"])
    assert "No space left on device" in line
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_unwritable_problem_path(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(cli, ["solvers", "problem", str(tmp_path / "file" / "p.npz"),
                                "--m", "8", "--n", "16"])
    assert "cannot write" in line and "p.npz" in line


def test_config_file_reruns_a_fit(cli, tmp_path):
    cfg = tmp_path / "fit.json"
    cfg.write_text(json.dumps({"solver": "HyperLISTA", "fit": {"num_layers": 3},
                               "problem": {"m": 10, "n": 20, "seed": 2}}))
    code, out, err = cli(["solvers", "train", "--config", str(cfg), "--grid-rounds", "1",
                          "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 0, err
    assert "tuned HyperLISTA (3 layers)" in out
    problem = json.loads((tmp_path / "run" / "problem.json").read_text())
    assert (problem["m"], problem["n"], problem["seed"]) == (10, 20, 2)
    saved = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert saved["fit"]["grid_rounds"] == 1 and saved["fit"]["num_layers"] == 3
    code, out, err = cli(["solvers", "train", "--config", str(tmp_path / "run" / "fit.json"),
                          "--out", str(tmp_path / "rerun"), "--device", "cpu"])
    assert code == 0, err
    assert json.loads((tmp_path / "rerun" / "fit.json").read_text()) == saved


def test_commands_are_thin():
    """No command function takes more than 8 parameters (as written, before the generated
    options); no while loops (training/timing) in cli/solvers.py."""
    import ast
    import inspect

    from sparseprior.cli import solvers as cli_solvers

    tree = ast.parse(inspect.getsource(cli_solvers))
    commands = [node for node in tree.body if isinstance(node, ast.FunctionDef)
                and any("command" in ast.unparse(d) for d in node.decorator_list)]
    assert len(commands) == 8       # problem, train, eval, bench, headline, tune, cs, recover
    for fn in commands:
        assert len(fn.args.args) + len(fn.args.kwonlyargs) <= 8, fn.name
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.While)]


@pytest.mark.parametrize("command", ["problem", "train", "eval", "bench", "headline", "tune",
                                     "cs"])
def test_help_lists_config_options(cli, command):
    code, out, _ = cli(["solvers", command, "--help"])
    assert code == 0 and "--config" in out


def test_storage_password_never_reaches_files_or_output(cli, tmp_path, monkeypatch):
    import optuna

    from sparseprior.solvers import tuning

    url = "postgresql://bob:hunter2@db.example:5432/studies"
    seen = []

    def in_memory(storage, study_name, sampler):       # stands in for the database server
        seen.append(storage)
        return optuna.create_study(study_name=study_name, direction="minimize",
                                   sampler=sampler)

    monkeypatch.setattr(tuning, "open_study", in_memory)
    out = tmp_path / "t"
    code, text, err = cli(["solvers", "tune", "--storage", url, "--tuning-n-trials", "2",
                           "--tuning-num-layers", "2", "--m", "10", "--n", "20", "--out",
                           str(out), "--device", "cpu"])
    assert code == 0, err
    assert seen == [url]
    assert "bob:***@db.example" in text and "hunter2" not in text + err
    for path in out.rglob("*.json"):
        assert "hunter2" not in path.read_text(), path
    assert json.loads((out / "best.json").read_text())["storage"] == (
        "postgresql://bob:***@db.example:5432/studies")
