import math

import pytest
import torch

from sparseprior.solvers.classic import ista, lipschitz_constant, soft_threshold
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import (
    SOLVERS,
    TiLISTA,
    UnrolledSolver,
    _kth_largest,
    build_solver,
    load_solver,
    save_solver,
    shrink_ss,
    support_mask,
    support_percent,
)

T = 6


@pytest.fixture(scope="module")
def problem() -> SparseRecoveryProblem:
    return SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=3, n_val=64,
                                                       n_test=64))


def ista_ss_reference(A: torch.Tensor, y: torch.Tensor, lam: float, steps: int,
                      ss_step: float = 1.2, ss_max: float = 13.0) -> list[torch.Tensor]:
    """ISTA whose shrinkage spares, per sample, the top p_t% magnitudes that exceed lam/L."""
    L = lipschitz_constant(A)
    theta = lam / L
    n = A.shape[1]
    x = torch.zeros(y.shape[0], n)
    out = []
    for t in range(1, steps + 1):
        z = x - (x @ A.T - y) @ A / L
        k = int(math.floor(min(t * ss_step, ss_max) * n / 100 + 1e-6))
        order = torch.argsort(z.abs(), dim=1, descending=True)
        keep = torch.zeros_like(z, dtype=torch.bool)
        for row in range(z.shape[0]):
            for j in order[row, :k].tolist():
                keep[row, j] = bool(z[row, j].abs() > theta)
        x = torch.where(keep, z, soft_threshold(z, theta))
        out.append(x)
    return out


@pytest.mark.parametrize("name", ["LISTA", "LISTA-CP", "TiLISTA"])
def test_initialisation_is_ista(problem, name):
    _, y = problem.test_set()
    model = build_solver(name, problem.A, num_layers=T, lam=0.4, support_selection=False)
    with torch.no_grad():
        outs = model(y)
    ref = ista(problem.A, y, 0.4, max_iter=T, return_iterates=True).iterates
    assert len(outs) == T and all(o.shape == (y.shape[0], problem.n) for o in outs)
    for got, want in zip(outs, ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["LISTA-SS", "LISTA-CPSS", "TiLISTA"])
def test_initialisation_with_support_selection(problem, name):
    _, y = problem.test_set()
    model = build_solver(name, problem.A, num_layers=T, lam=0.3)
    assert model.support_selection
    with torch.no_grad():
        outs = model(y)
    for got, want in zip(outs, ista_ss_reference(problem.A, y, 0.3, T), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_support_selection_hand_made():
    # n = 10, 20% -> the top 2 magnitudes of each row may pass, if they exceed theta = 1.
    z = torch.tensor([[5.0, -4.0, 3.0, 0.5, -0.2, 0.0, 2.0, -1.5, 0.1, 0.9],
                      [0.3, -0.4, 1.2, 0.5, -0.2, 0.8, 0.1, -0.9, 0.7, 0.6]])
    mask = support_mask(z, 1.0, 20.0)
    want = torch.zeros_like(mask)
    want[0, [0, 1]] = True  # 5 and -4
    want[1, 2] = True  # 1.2 is top and above theta; -0.9 is second but below theta
    assert torch.equal(mask, want)
    out = shrink_ss(z, 1.0, 20.0)
    expected = soft_threshold(z, 1.0)
    expected[0, 0], expected[0, 1], expected[1, 2] = 5.0, -4.0, 1.2
    assert torch.equal(out, expected)
    assert not support_mask(z, 1.0, 5.0).any()  # floor(0.5) = 0 entries
    assert torch.equal(support_mask(z, 4.5, 20.0)[0], torch.arange(10) == 0)


def test_support_mask_matches_plain_topk():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        z = torch.randn(16, 50, generator=gen) * torch.rand(16, 1, generator=gen) * 3
        theta, percent = float(torch.rand((), generator=gen)), float(torch.rand((), generator=gen)
                                                                        * 30)
        k = int(math.floor(percent * 50 / 100 + 1e-6))
        plain = torch.zeros_like(z, dtype=torch.bool)
        if k:
            plain.scatter_(1, torch.topk(z.abs(), k, dim=1).indices, True)
        assert torch.equal(support_mask(z, theta, percent), plain & (z.abs() > theta))


def test_kth_largest_paths_agree_and_ties_are_kept():
    mag = torch.rand(7, 33, generator=torch.Generator().manual_seed(2))
    for k in (1, 5, 32):
        want = torch.sort(mag, dim=1, descending=True).values[:, k - 1]
        assert torch.equal(_kth_largest(mag, k), want)  # numpy path
        torch.testing.assert_close(_kth_largest(mag.half(), k), want.half())  # topk path
    tied = torch.tensor([[2.0, -2.0, 2.0, 0.1]])
    assert support_mask(tied, 1.0, 25.0).tolist() == [[True, True, True, False]]


def test_support_percent_schedule():
    assert [round(support_percent(t), 6) for t in (1, 2, 10, 11, 16)] == [1.2, 2.4, 12.0, 13.0,
                                                                        13.0]
    assert support_percent(3, step=2.0, max_percent=5.0) == 5.0


def test_selection_is_not_differentiated():
    z = torch.tensor([[3.0, 0.5, -2.0, 0.1]], requires_grad=True)
    theta = torch.tensor(0.2, requires_grad=True)
    shrink_ss(z, theta, 50.0).sum().backward()
    # 3 and -2 pass (gradient 1, no theta dependence); 0.5 shrinks (d/dtheta = -1); 0.1 -> 0.
    assert torch.equal(z.grad, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert theta.grad.item() == -1.0


def test_layer_parameters_and_counts(problem):
    m, n = problem.m, problem.n
    lista = build_solver("LISTA", problem.A, num_layers=3)
    assert [tuple(p.shape) for p in lista.layer_parameters(1)] == [(n, m), ()]
    assert [tuple(p.shape) for p in lista.layer_parameters(2)] == [(n, m), (n, n), ()]
    assert lista.n_params == 3 * (n * m + 1) + 2 * n * n
    cp = build_solver("LISTA-CPSS", problem.A, num_layers=3)
    assert cp.n_params == 3 * (m * n + 1)
    ti = build_solver("TiLISTA", problem.A, num_layers=3)
    assert ti.n_params == m * n + 3 * 2
    assert ti.layer_parameters(1)[0] is ti.shared["W"]
    assert all(ti.shared["W"] is not p for p in ti.layer_parameters(2))
    all_layers = [p for t in range(1, 4) for p in ti.layer_parameters(t)]
    assert {id(p) for p in all_layers} == {id(p) for p in ti.parameters()}
    with pytest.raises(ValueError, match="layer"):
        ti.layer_parameters(4)
    assert isinstance(ti, UnrolledSolver) and set(SOLVERS) == {
        "LISTA", "LISTA-CP", "LISTA-SS", "LISTA-CPSS", "TiLISTA", "ALISTA", "HyperLISTA"}
    assert cp.config == {"name": "LISTA-CPSS", "m": m, "n": n, "num_layers": 3, "lam": 0.4,
                         "support_selection": True, "ss_step": 1.2, "ss_max": 13.0}


def test_forward_partial_depth_and_gradients(problem):
    x, y = problem.sample(8, 0)
    model = build_solver("LISTA-CPSS", problem.A, num_layers=4)
    outs = model(y, num_layers=2)
    assert len(outs) == 2
    torch.testing.assert_close(outs[1], model(y)[1])
    ((outs[-1] - x) ** 2).mean().backward()
    assert model.layers[1]["W"].grad is not None and model.layers[2]["W"].grad is None
    assert "A" in dict(model.named_buffers()) and not model.A.requires_grad


def test_bad_inputs(problem):
    with pytest.raises(ValueError, match="unknown solver 'ALISTA-X'"):
        build_solver("ALISTA-X", problem.A)
    with pytest.raises(ValueError, match="num_layers"):
        build_solver("LISTA", problem.A, num_layers=0)
    bad = problem.A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_solver("LISTA-CP", bad)
    with pytest.raises(ValueError, match="2 dimension"):
        build_solver("LISTA-CP", problem.A[0])
    with pytest.raises(ValueError, match="all zeros"):
        build_solver("LISTA-CP", torch.zeros(3, 4))
    with pytest.raises(ValueError, match="ss_max"):
        TiLISTA(problem.A, ss_max=0.0)
    model = build_solver("LISTA-CP", problem.A, num_layers=2)
    with pytest.raises(ValueError, match=r"\(batch, m=30\)"):
        model(torch.zeros(4, problem.n))
    with pytest.raises(ValueError, match=r"\(batch, m=30\)"):
        model(torch.zeros(problem.m))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((2, problem.m), float("inf")))
    with pytest.raises(ValueError, match="layer"):
        model(torch.zeros(2, problem.m), num_layers=3)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_checkpoint_round_trip(problem, tmp_path, name):
    _, y = problem.test_set()
    model = build_solver(name, problem.A, num_layers=3, lam=0.2, ss_step=2.0)
    with torch.no_grad():  # move away from the initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    save_solver(model, tmp_path / "ck")
    loaded = load_solver(tmp_path / "ck.safetensors", A=problem.A)
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        for a, b in zip(model(y), loaded(y), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(load_solver(tmp_path / "ck").A, problem.A)


def test_checkpoint_size_mismatch(problem, tmp_path):
    save_solver(build_solver("LISTA-CP", problem.A, num_layers=2), tmp_path / "ck")
    with pytest.raises(ValueError, match=r"\(30, 60\).*\(20, 60\)"):
        load_solver(tmp_path / "ck", A=torch.randn(20, 60))
