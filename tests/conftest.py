"""Shared fixtures."""

from __future__ import annotations

import pytest

from sparseprior.cli import main


@pytest.fixture
def cli(capsys):
    """Run ``sparseprior ARGS``; return (exit code, stdout, stderr)."""

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(args)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    return run
