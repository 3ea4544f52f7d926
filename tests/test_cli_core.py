"""The command's frame: lazy groups, --version, one-line errors, --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sparseprior
from sparseprior import cli as cli_module


def test_help_does_not_import_torch():
    code = ("import sys\nfrom sparseprior.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'sparseprior --help imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_version(cli):
    code, out, _ = cli(["--version"])
    assert code == 0 and out.strip() == f"sparseprior {sparseprior.__version__}"


def test_every_group_loads_and_has_help(cli):
    for name in cli_module.GROUPS:
        code, out, _ = cli([name, "--help"])
        assert code == 0 and "Usage" in out, name


def test_unknown_command_is_a_usage_error(cli):
    code, _, err = cli(["nope"])
    assert code == 2 and "No such command" in err


@pytest.mark.parametrize("exc, code", [(ValueError("bad\nvalue"), 2),
                                       (FileNotFoundError(2, "No such file", "x.json"), 2),
                                       (RuntimeError("boom"), 1)])
def test_errors_are_one_line_and_debug_shows_tracebacks(cli, monkeypatch, exc, code):
    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr(cli_module.LazyGroup, "get_command", fail)
    got, _, err = cli(["solvers", "--help"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code and len(lines) == 1 and lines[0].startswith("error: ")
    if code == 1:
        assert "--debug" in lines[0]
    with pytest.raises(type(exc)):
        cli_module.main(["--debug", "solvers", "--help"])


def test_long_commands_warn_before_they_start(cli, monkeypatch):
    import sparseprior.solvers.headline as headline

    def stop(*_a, **_k):
        raise ValueError("stopped before running")

    monkeypatch.setattr(headline, "run_headline", stop)
    code, _, err = cli(["solvers", "headline", "--out", "/tmp/sp-never-used"])
    assert code == 2 and "note: the headline suite" in err and "hours" in err
