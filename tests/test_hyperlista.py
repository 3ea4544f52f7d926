"""HyperLISTA: exactly 3 hyperparameters, instance-adaptive, inference reads only y."""

import inspect
import math

import pytest
import torch

from sparseprior.solvers.analytic import analytic_weight
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem, l1_phase_transition
from sparseprior.solvers.unrolled import (
    HyperLISTA,
    build_solver,
    load_solver,
    marchenko_pastur_heavy_ball,
    save_solver,
    shrink_ss_rows,
)


@pytest.fixture(scope="module")
def problem() -> SparseRecoveryProblem:
    return SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=3, n_val=128,
                                                       n_test=128))


def test_exactly_three_hyperparameters(problem):
    model = build_solver("HyperLISTA", problem.A, num_layers=16)
    assert model.n_params == 3
    assert sorted(n for n, _ in model.named_parameters()) == [
        "shared.c_beta", "shared.c_ss", "shared.c_theta"]
    assert set(model.hyperparameters) == {"c_beta", "c_theta", "c_ss"}
    assert sorted(model.state_dict()) == ["A", "shared.c_beta", "shared.c_ss", "shared.c_theta"]


def test_inference_reads_only_y(problem):
    model = build_solver("HyperLISTA", problem.A, num_layers=8)
    assert list(inspect.signature(model.forward).parameters) == ["y", "num_layers"]
    # Two different x* with the same measurements y (they differ by a null-space vector of A)
    # must give identical estimates.
    x1, y = problem.sample(4, 0)
    null = torch.linalg.svd(problem.A.double())[2][-1].float()          # A @ null ~ 0
    x2 = x1 + 3.0 * null
    torch.testing.assert_close(x2 @ problem.A.T, y, atol=1e-5, rtol=0)
    with torch.no_grad():
        out_a = model(y)
        out_b = model(y.clone())
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    assert not torch.allclose(x1, x2)


def reference(A, y, T, c_beta, c_theta, c_ss, theta_scale=1.0, beta_scale=1.0, noise_std=None):
    """Straightforward per-sample loop of the HyperLISTA update."""
    W = analytic_weight(A).double()
    A = A.double()
    pinv = torch.linalg.pinv(A)
    n = A.shape[1]
    outs = []
    for b in range(y.shape[0]):
        yb = y[b].double()
        x = x_prev = torch.zeros(n, dtype=torch.float64)
        u0 = (pinv @ yb).abs().sum()
        traj = []
        for _ in range(T):
            r = yb - A @ x
            u = (pinv @ r).abs().sum()
            theta = c_theta * theta_scale * u
            if noise_std is not None:   # per entry: at least c_theta noise std of W^T r
                theta = torch.clamp(c_theta * noise_std * W.norm(dim=0), min=theta)
            p = min(max(c_ss * math.log(u0 / u), 0.0), 1.0)
            k = math.floor(p * n + 1e-6)
            beta = c_beta * beta_scale * int((x != 0).sum())
            z = x + W.T @ r
            mag = z.abs()
            keep = torch.zeros(n, dtype=torch.bool)
            if k > 0:
                cut = torch.sort(mag, descending=True).values[k - 1]
                keep = (mag >= cut) & (mag > theta)
            shrunk = torch.where(keep, z, torch.sign(z) * torch.clamp(mag - theta, min=0.0))
            x, x_prev = shrunk + beta * (x - x_prev), x
            traj.append(x)
        outs.append(torch.stack(traj))
    return torch.stack(outs, dim=1)          # (T, batch, n)


@pytest.mark.parametrize(("rule", "noise_std"), [("scale-free", None), ("legacy", None),
                                                 ("scale-free", 0.02)])
def test_matches_the_per_sample_reference(problem, rule, noise_std):
    _, y = problem.sample(6, 1)
    hp = ({"c_beta": 0.01, "c_theta": 0.01, "c_ss": 0.8} if rule == "legacy"
          else {"c_beta": 0.3, "c_theta": 3.0, "c_ss": 0.8})
    model = HyperLISTA(problem.A, num_layers=6, rule=rule, noise_std=noise_std, **hp)
    with torch.no_grad():
        got = torch.stack(model(y)).double()
    ref = reference(problem.A, y, 6, **hp, theta_scale=model.theta_scale,
                    beta_scale=model.beta_scale, noise_std=noise_std)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("c_ss", [0.0, 0.8, 50.0])  # no row selects / some do / all do
@pytest.mark.parametrize("shared_matmul", [True, False])
@pytest.mark.parametrize(("snr_db", "momentum"), [(None, "linear"), (20.0, "linear"),
                                                  (None, "marchenko-pastur")])
def test_inference_path_matches_the_autograd_path(problem, c_ss, shared_matmul, snr_db,
                                                  momentum):
    _, y = problem.sample(64, 2)
    model = HyperLISTA(problem.A, num_layers=8, c_ss=c_ss, snr_db=snr_db, momentum=momentum)
    assert model.w_per_pinv.numel() == problem.A.shape[1]  # closed-form W = A^+T diag(d)
    torch.testing.assert_close(model.A_pinv_T * model.w_per_pinv, model.W, atol=1e-6,
                               rtol=1e-4)
    if not shared_matmul:
        model.w_per_pinv = model.w_per_pinv[:0]  # the [A^+ | W] fallback
    with torch.enable_grad():
        slow = torch.stack(model(y)).detach()
    with torch.no_grad():
        fast = torch.stack(model(y))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_scale_free_rule_normalises_by_crosstalk_and_m(problem):
    from sparseprior.solvers.unrolled import interference_rms

    model = HyperLISTA(problem.A)
    W = analytic_weight(problem.A)
    G = W.double().T @ problem.A.double()
    off = G[~torch.eye(G.shape[0], dtype=torch.bool)]
    assert interference_rms(W, problem.A) == pytest.approx(float(off.pow(2).mean().sqrt()))
    assert model.theta_scale == pytest.approx(
        interference_rms(W, problem.A) * math.sqrt(math.pi / (2 * problem.m)))
    assert model.beta_scale == pytest.approx(1.0 / problem.m)
    legacy = HyperLISTA(problem.A, rule="legacy")
    assert (legacy.theta_scale, legacy.beta_scale) == (1.0, 1.0)
    with pytest.raises(ValueError, match="rule must be one of"):
        HyperLISTA(problem.A, rule="paper")


def test_checkpoint_without_rule_loads_as_legacy(problem, tmp_path):
    import json

    model = HyperLISTA(problem.A, num_layers=4, rule="legacy", c_theta=0.01)
    save_solver(model, tmp_path / "old")
    meta = tmp_path / "old.json"
    header = json.loads(meta.read_text())
    header["config"].pop("rule")
    meta.write_text(json.dumps(header))
    loaded = load_solver(tmp_path / "old.safetensors", A=problem.A)
    assert loaded.rule == "legacy"
    assert load_solver(tmp_path / "old.safetensors").theta_scale == 1.0


def test_calibrate_uses_prior_samples_and_improves_on_them():
    A = SparseRecoveryProblem.generate(ProblemConfig(m=40, n=80, seed=5)).A
    start = {"c_beta": 1.0, "c_theta": 8.0, "c_ss": 3.0}       # a poor start
    model = HyperLISTA.calibrate(A, p=0.1, num_layers=8, samples=64, rounds=1,
                                 factors=(0.5, 1.0), center=start, confirm=3)
    info = model.calibration
    assert info["evaluations"] == 8 and info["samples"] == 64
    assert info["prior_nmse_db"] < info["shipped_prior_nmse_db"] - 1.0
    assert model.hyperparameters == pytest.approx(info["best"])
    assert model.num_layers == 8 and model.rule == "scale-free"
    # the search's best settings are re-scored on a second prior set of the same size
    assert info["holdout_evaluations"] == 4 and info["holdout_nmse_db"] < -1.0


def test_holdout_confirmation_rejects_a_setting_that_only_the_search_set_liked():
    from sparseprior.solvers.tuning import confirm_on_holdout, evaluate_hyperparameters

    prob = SparseRecoveryProblem.generate(ProblemConfig(m=40, n=80, seed=5, n_val=1, n_test=64))
    x, y = prob.test_set()
    model = HyperLISTA.for_problem(prob, num_layers=8)
    poor = {**HyperLISTA.DEFAULTS, "c_theta": 0.05}            # barely thresholds: no recovery
    tried = [(-20.0, dict(HyperLISTA.DEFAULTS)), (-90.0, poor)]  # a lucky score for the poor one
    held_poor = evaluate_hyperparameters(model, poor, x, y)
    best, value, held = confirm_on_holdout(model, tried, x, y, top=3)
    assert held_poor > max(-20.0, held)                        # the premise: poor on holdout
    assert best == HyperLISTA.DEFAULTS and value == -20.0
    assert confirm_on_holdout(model, tried, x, y, top=0)[0] == HyperLISTA.DEFAULTS


def test_instance_adaptive_thresholds_give_scale_equivariance(problem):
    # theta_t scales with the residual, so scaling y scales every estimate.
    _, y = problem.sample(8, 2)
    model = build_solver("HyperLISTA", problem.A, num_layers=6)
    with torch.no_grad():
        a, b = model(y)[-1], model(10.0 * y)[-1]
    torch.testing.assert_close(b, 10.0 * a, atol=1e-4, rtol=1e-4)


def test_round_trip_and_bad_input(problem, tmp_path):
    model = HyperLISTA(problem.A, num_layers=4, c_beta=0.02, c_theta=0.003, c_ss=1.5)
    save_solver(model, tmp_path / "h")
    loaded = load_solver(tmp_path / "h.safetensors", A=problem.A)
    assert loaded.hyperparameters == pytest.approx(model.hyperparameters)
    with pytest.raises(ValueError, match="c_theta"):
        HyperLISTA(problem.A, c_theta=float("nan"))
    with pytest.raises(ValueError, match="gamma"):
        HyperLISTA(problem.A, gamma=0.0)


def test_noise_floor_follows_the_given_noise_level(problem):
    _, y = problem.sample(5, 4)
    w_norms = analytic_weight(problem.A).norm(dim=0)
    assert HyperLISTA(problem.A).noise_floor(y) is None
    by_std = HyperLISTA(problem.A, noise_std=0.1).noise_floor(y)
    torch.testing.assert_close(by_std, 0.1 * w_norms.expand(5, -1), rtol=1e-5, atol=0)
    # snr_db: sigma_b from ||y_b||: E||y||^2 = ||Ax||^2 (1 + 10^(-snr/10)),
    # m sigma^2 = ||Ax||^2 10^(-snr/10)
    by_snr = HyperLISTA(problem.A, snr_db=20.0).noise_floor(y)
    sigma = y.norm(dim=1, keepdim=True) / math.sqrt(problem.m * 101.0)
    torch.testing.assert_close(by_snr, sigma * w_norms, rtol=1e-5, atol=0)
    # A noise level far above the signal thresholds every entry to zero.
    with torch.no_grad():
        assert not HyperLISTA(problem.A, noise_std=1e3)(y)[-1].any()


def test_noise_level_helps_on_a_noisy_problem():
    noisy = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.1, snr_db=20.0,
                                                         seed=2, n_val=1, n_test=256))
    x, y = noisy.test_set()
    blind = HyperLISTA(noisy.A)
    aware = HyperLISTA.for_problem(noisy)
    assert aware.snr_db == 20.0 and blind.snr_db is None
    aware.p = None                 # the noise level alone
    with torch.no_grad():
        gain = nmse_db(blind(y)[-1], x) - nmse_db(aware(y)[-1], x)
    assert gain > 1.0, f"knowing the SNR gained only {gain:.2f} dB"


def test_noise_level_round_trips_and_is_validated(problem, tmp_path):
    save_solver(HyperLISTA(problem.A, num_layers=4, snr_db=30.0), tmp_path / "n")
    assert load_solver(tmp_path / "n.safetensors").snr_db == 30.0
    with pytest.raises(ValueError, match="not both"):
        HyperLISTA(problem.A, snr_db=20.0, noise_std=0.1)
    with pytest.raises(ValueError, match="noise_std"):
        HyperLISTA(problem.A, noise_std=-1.0)
    with pytest.raises(ValueError, match="snr_db"):
        HyperLISTA(problem.A, snr_db=float("inf"))


def test_sparsity_factor_scales_the_threshold(problem):
    _, y = problem.sample(16, 5)
    # m = 30, n = 60: delta = 1/2, rho*(1/2) = 0.3857, so m rho* = 11.57 non-zeros.
    assert HyperLISTA(problem.A).sparsity_factor == 1.0
    sparse = HyperLISTA(problem.A, p=0.025, num_layers=6)
    k = 0.025 * 60 + 3.0 * math.sqrt(60 * 0.025 * 0.975)          # p n + 3 binomial stds
    g = (k / (30 * l1_phase_transition(0.5))) ** -0.25
    assert sparse.sparsity_factor == pytest.approx(g)
    assert g > 1.2
    # At and beyond the phase transition the threshold is the p-blind one.
    assert HyperLISTA(problem.A, p=0.125).sparsity_factor == 1.0
    factors = [HyperLISTA(problem.A, p=p).sparsity_factor for p in (0.01, 0.02, 0.05, 0.1)]
    assert factors == sorted(factors, reverse=True)
    assert sparse.sparsity_rule == HyperLISTA.DEFAULT_SPARSITY_RULE == "phase-transition"
    # The candidate rule also scales with the undersampling ratio, (1/2 / 0.45)^0.2 here.
    delta = HyperLISTA(problem.A, p=0.025, sparsity_rule="phase-transition-delta")
    assert delta.sparsity_factor == pytest.approx(g * (0.5 / 0.45) ** 0.2)
    same = HyperLISTA(problem.A, num_layers=6, c_theta=HyperLISTA.DEFAULTS["c_theta"] * g)
    with torch.no_grad():
        torch.testing.assert_close(sparse(y)[-1], same(y)[-1], atol=1e-6, rtol=1e-5)
    assert HyperLISTA.for_problem(problem).p == problem.config.p
    with pytest.raises(ValueError, match="p n < m"):
        HyperLISTA(problem.A, p=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        HyperLISTA(problem.A, p=0.0)
    with pytest.raises(ValueError, match="sparsity_rule must be one of"):
        HyperLISTA(problem.A, p=0.1, sparsity_rule="amp")


def test_rho_sparsity_rule_and_checkpoints_without_it(problem, tmp_path):
    import json

    # The rule of the first p-aware release: sqrt(ln(1/rho) / ln 4), rho = p n / m.
    old = HyperLISTA(problem.A, num_layers=4, p=0.025, sparsity_rule="rho")
    assert old.sparsity_factor == pytest.approx(math.sqrt(math.log(20.0) / math.log(4.0)))
    assert HyperLISTA(problem.A, p=0.2, sparsity_rule="rho").sparsity_factor < 1.0
    save_solver(old, tmp_path / "old")
    meta = tmp_path / "old.json"
    header = json.loads(meta.read_text())
    assert header["config"].pop("sparsity_rule") == "rho"
    meta.write_text(json.dumps(header))
    loaded = load_solver(tmp_path / "old.safetensors", A=problem.A)
    assert loaded.sparsity_rule == "rho"
    assert loaded.sparsity_factor == pytest.approx(old.sparsity_factor)
    fresh = HyperLISTA(problem.A, num_layers=4, p=0.025)
    save_solver(fresh, tmp_path / "new")
    assert load_solver(tmp_path / "new.safetensors", A=problem.A).sparsity_rule == \
        "phase-transition"
    delta = HyperLISTA(problem.A, num_layers=4, p=0.025, sparsity_rule="phase-transition-delta")
    save_solver(delta, tmp_path / "delta")
    loaded = load_solver(tmp_path / "delta.safetensors", A=problem.A)
    assert loaded.sparsity_factor == pytest.approx(delta.sparsity_factor)


def test_knowing_the_sparsity_helps_far_inside_the_phase_transition():
    # m/n = 1/2, p = 0.02: about 4 non-zeros for 100 measurements, far inside the transition;
    # the raised threshold (g = 1.40) converges faster.
    easy = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.02, seed=4, n_val=1,
                                                        n_test=256))
    x, y = easy.test_set()
    with torch.no_grad():
        gain = (nmse_db(HyperLISTA(easy.A)(y)[-1], x)
                - nmse_db(HyperLISTA.for_problem(easy)(y)[-1], x))
    assert gain > 20.0, f"knowing p gained only {gain:.2f} dB"
    # m/n = 0.3, p = 0.1: at the transition p changes nothing (the candidate rule: only its
    # undersampling factor).
    hard = SparseRecoveryProblem.generate(ProblemConfig(m=60, n=200, p=0.1, seed=4, n_val=1,
                                                        n_test=64))
    _, y = hard.test_set()
    delta = HyperLISTA.for_problem(hard, sparsity_rule="phase-transition-delta")
    assert delta.sparsity_factor == pytest.approx((0.3 / 0.45) ** 0.2)
    same = HyperLISTA(hard.A, c_theta=HyperLISTA.DEFAULTS["c_theta"] * delta.sparsity_factor)
    with torch.no_grad():
        torch.testing.assert_close(delta(y)[-1], same(y)[-1])
        torch.testing.assert_close(HyperLISTA.for_problem(hard)(y)[-1], HyperLISTA(hard.A)(y)[-1])



def _shrink_ss_rows_by_sorting(z, theta, k):
    """The definition, row by row: among the k largest |z| and above its threshold -> kept."""
    out = torch.empty_like(z)
    theta = theta.expand_as(z)
    for b in range(z.shape[0]):
        mag, kb = z[b].abs(), int(k[b])
        kth = mag.sort(descending=True).values[kb - 1] if kb > 0 else math.inf
        keep = (mag >= kth) & (mag > theta[b])
        soft = torch.sign(z[b]) * (mag - theta[b]).clamp_min(0.0)
        out[b] = torch.where(keep, z[b], soft)
    return out


@pytest.mark.parametrize("per_entry", [False, True])
def test_shrink_ss_rows_matches_its_definition(per_entry):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 30, generator=g)
    theta = (torch.rand(40, 30 if per_entry else 1, generator=g) * 1.5)
    k = torch.randint(0, 31, (40,), generator=g).float()
    k[:4] = torch.tensor([0.0, 30.0, 1.0, 29.0])
    got = shrink_ss_rows(z, theta, k)
    torch.testing.assert_close(got, _shrink_ss_rows_by_sorting(z, theta, k), atol=0, rtol=0)
    counts = (z.abs() > theta.amin(dim=1, keepdim=True)).sum(dim=1)
    assert bool(((k > 0) & (k < counts)).any()) and bool((k >= counts).any())  # both branches


def test_marchenko_pastur_heavy_ball_matches_the_spectrum_of_a_gaussian_support():
    g = torch.Generator().manual_seed(0)
    m, n, s = 300, 900, 80          # m / n = 1/3: the (1 - delta) / delta factor is 2
    A = torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(m)
    W = analytic_weight(A.float()).double()
    support = torch.randperm(n, generator=g)[:s]
    eig = torch.linalg.eigvals(W[:, support].T @ A[:, support]).real   # real: D^1/2 P D^1/2
    lo, hi = float(eig.min()), float(eig.max())
    step, beta = marchenko_pastur_heavy_ball(torch.tensor([float(s)]), m, n)
    # Polyak's heavy ball on [lo, hi]: step 4 / (sqrt(lo) + sqrt(hi))^2, contraction
    # (sqrt(hi) - sqrt(lo)) / (sqrt(hi) + sqrt(lo)) = sqrt(beta)
    assert float(step) == pytest.approx(4.0 / (math.sqrt(lo) + math.sqrt(hi)) ** 2, rel=0.1)
    rate = (math.sqrt(hi) - math.sqrt(lo)) / (math.sqrt(hi) + math.sqrt(lo))
    assert float(beta.sqrt()) == pytest.approx(rate, rel=0.1)
    step, beta = marchenko_pastur_heavy_ball(torch.tensor([0.0, 40.0, 120.0, 300.0, 700.0]),
                                             m, n)
    assert float(step[0]) == 1.0 and float(beta[0]) == 0.0 and float(beta[-1]) == 1.0
    assert bool((beta.diff() >= 0).all())


def test_marchenko_pastur_momentum_option(problem, tmp_path):
    import json

    model = HyperLISTA(problem.A, num_layers=6, momentum="marchenko-pastur", p=0.1)
    assert model.hyperparameters == pytest.approx(HyperLISTA.MOMENTUM_DEFAULTS[
        "marchenko-pastur"])
    save_solver(model, tmp_path / "mp")
    loaded = load_solver(tmp_path / "mp.safetensors", A=problem.A)
    assert loaded.momentum == "marchenko-pastur"
    _, y = problem.sample(16, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y)[-1], model(y)[-1])
        assert not torch.allclose(HyperLISTA(problem.A, num_layers=6, p=0.1, c_beta=1.5)(y)[-1],
                                  model(y)[-1])   # the rule changes the iteration
    header = json.loads((tmp_path / "mp.json").read_text())
    header["config"].pop("momentum")                # written before the option existed
    (tmp_path / "mp.json").write_text(json.dumps(header))
    assert load_solver(tmp_path / "mp.safetensors", A=problem.A).momentum == "linear"
    with pytest.raises(ValueError, match="momentum must be one of"):
        HyperLISTA(problem.A, momentum="nesterov")
    cal = HyperLISTA.calibrate(problem.A, p=0.1, num_layers=4, samples=32, rounds=1,
                               factors=(1.0,), momentum="marchenko-pastur")
    assert cal.momentum == "marchenko-pastur"
    assert cal.calibration["best"] == pytest.approx(HyperLISTA.MOMENTUM_DEFAULTS[
        "marchenko-pastur"])      # factors (1.0,): the search stays at its centre
