"""Shared fixtures: the CLI runner, torch's thread count restored after every test, a small
sparse-recovery problem."""

from __future__ import annotations

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _restore_threads():
    """Commands and runners may call ``torch.set_num_threads``; give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_problem():
    """A 30x60 sparse-recovery problem (p = 0.1, seed 3) with 128 validation/test samples."""
    from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem

    return SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=3, n_val=128,
                                                        n_test=128))
