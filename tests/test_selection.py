"""Selection stages (pipeline/selection): the maths of each estimator, then the recovery claims at reduced size.

The full-size claims (≥ 5 seeds) are in `python -m pipeline.selection.report`; here every check uses fewer
seeds and smaller problems so the file runs in well under a minute and a half.
"""
import numpy as np
import pytest
import torch
from scipy.special import expit
from threadpoolctl import threadpool_limits

from pipeline.selection import dual_active as DA
from pipeline.selection import lowrank as LR
from pipeline.selection import relevance as RL
from pipeline.selection import report
from pipeline.selection import shared as SH


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny linear algebra: multithreaded BLAS only adds contention on a shared CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def num_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def num_hess(f, x, eps=1e-4):
    return np.stack([num_grad(lambda v: num_grad(f, v, eps)[j], x, eps) for j in range(len(x))])


# ----------------------------------------------------------------------------------------------- relevance
def test_logistic_gradient_and_optimum():
    rng = np.random.default_rng(0)
    X, w0 = rng.standard_normal((200, 5)), rng.standard_normal(5)
    y = (rng.random(200) < expit(X @ w0)).astype(float)
    w = rng.standard_normal(5)
    np.testing.assert_allclose(RL.logistic_grad(w, X, y, 0.1), num_grad(lambda v: RL.logistic_nll(v, X, y, 0.1), w),
                               atol=1e-7)
    w_hat = RL.fit_logistic(X, y, lam=0.1)
    assert np.linalg.norm(RL.logistic_grad(w_hat, X, y, 0.1)) < 1e-8


def test_lasso_satisfies_kkt_and_matches_sklearn_lasso():
    from sklearn.linear_model import Lasso
    rng = np.random.default_rng(1)
    for A, lam in ((rng.standard_normal((8, 12)), 0.3), (2.5 * rng.standard_normal((3, 6)), 1e-3)):
        b = rng.standard_normal(len(A))
        nu = RL.lasso(A, b, lam)
        g = A.T @ (b - A @ nu)      # KKT (necessary and sufficient): g_j = λ sign(ν_j) on the support, |g_j| ≤ λ off it
        on = nu != 0
        np.testing.assert_allclose(g[on], lam * np.sign(nu[on]), atol=1e-8)
        assert np.all(np.abs(g[~on]) <= lam + 1e-8)
    A, b = rng.standard_normal((8, 12)), rng.standard_normal(8)
    # sklearn's coordinate-descent Lasso minimises (1/2n)‖b − Aν‖² + α‖ν‖₁, i.e. ours divided by n.
    ref = Lasso(alpha=0.3 / 8, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(A, b).coef_
    np.testing.assert_allclose(RL.lasso(A, b, 0.3), ref, atol=1e-6)


def test_lasso_recovers_planted_sparse_nu_when_identifiable():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((10, 5))          # k ≥ M: ν is identifiable
    nu = np.array([0.0, 1.2, 0.0, -0.8, 0.0])
    nu_hat = RL.lasso(W, W @ nu, lam=1e-4)
    np.testing.assert_allclose(nu_hat, nu, atol=1e-3)
    np.testing.assert_allclose(RL.l1_minimal_solution(W[:5], W[:5] @ nu), nu, atol=1e-8)  # square: unique


def test_l1_minimal_solution_is_feasible_and_minimal():
    rng = np.random.default_rng(3)
    W, nu = rng.standard_normal((3, 6)), rng.standard_normal(6)
    nu1 = RL.l1_minimal_solution(W, W @ nu)
    np.testing.assert_allclose(W @ nu1, W @ nu, atol=1e-8)
    least_norm = np.linalg.pinv(W) @ (W @ nu)
    assert np.abs(nu1).sum() <= min(np.abs(nu).sum(), np.abs(least_norm).sum()) + 1e-9
    # Lasso with a vanishing penalty approaches the ℓ1-minimal solution (the identifiable target).
    np.testing.assert_allclose(RL.lasso(W, W @ nu, 1e-6), nu1, atol=1e-4)


def test_allocation_floor_and_split():
    f = RL.allocate_budget(np.array([0.0, 2.0, -1.0, 0.0]), floor=0.1)
    np.testing.assert_allclose(f.sum(), 1.0)
    np.testing.assert_allclose(f, [0.1, 0.1 + 0.6 * 2 / 3, 0.1 + 0.6 / 3, 0.1])
    s = RL.split_budget(101, f)
    assert s.sum() == 101 and np.all(np.abs(s - 101 * f) < 1)
    z = RL.composite_scores(np.array([[1.0, 10.0], [3.0, 30.0]]), np.array([1.0, -1.0]))
    np.testing.assert_allclose(z, [0.0, 0.0])   # standardised columns are identical, weights cancel


def test_shared_subspace_fit_is_orthonormal_and_recovers_more_with_more_data():
    rng = np.random.default_rng(4)
    truth = RL.plant(rng, d=12, k=2, M=4)
    errs = []
    for n in (150, 2000):
        data = [RL.sample_pairs(rng, truth["B"] @ truth["W"][:, m], n) for m in range(4)]
        B, W = RL.fit_shared_subspace([z for z, _ in data], [y for _, y in data], k=2)
        np.testing.assert_allclose(B.T @ B, np.eye(2), atol=1e-10)
        errs.append(RL.subspace_error(truth["B"], B))
    assert errs[1] < errs[0] and errs[1] < 0.25


def test_relevance_suite_reduced():
    out = RL.run_suite([0, 1], quick=True)
    assert all(c["pass"] for c in out["comparisons"]), out["comparisons"]


# --------------------------------------------------------------------------------------------- dual active
def _teacher_data(rng, n=400, d=4, betas=(0.5, 2.0)):
    theta = rng.standard_normal(d)
    theta /= np.linalg.norm(theta)
    beta = np.array(betas)
    Z, T = rng.standard_normal((n, d)), rng.integers(len(beta), size=n)
    y = (rng.random(n) < expit(beta[T] * (Z @ theta))).astype(float)
    return theta, beta, Z, T, y


def test_dual_nll_gradient_and_fisher():
    rng = np.random.default_rng(5)
    theta, beta, Z, T, y = _teacher_data(rng, n=60)
    d = len(theta)
    f = lambda v: DA.nll(v[:d], v[d:], Z, T, y)
    v0 = np.concatenate([theta + 0.1, beta * 0.9])
    np.testing.assert_allclose(np.concatenate(DA.nll_grad(v0[:d], v0[d:], Z, T, y)), num_grad(f, v0), atol=1e-7)
    # With labels at their expectation, the Hessian of the summed NLL is exactly Σ p(1−p)∇η∇ηᵀ.
    p = expit(beta[T] * (Z @ theta))
    H_num = num_hess(lambda v: len(y) * DA.nll(v[:d], v[d:], Z, T, p), np.concatenate([theta, beta]))
    np.testing.assert_allclose(DA.fisher(theta, beta, Z, T, lam=0.0), H_num, atol=1e-4)
    # The scale direction (θ, −β) carries no information.
    g = np.concatenate([theta, -beta])
    assert np.abs(DA.info_vectors(theta, beta, Z, T) @ g).max() < 1e-12


def test_sherman_morrison_and_greedy_scores_match_direct_inverse():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((5, 5))
    H, v = A @ A.T + np.eye(5), rng.standard_normal(5)
    np.testing.assert_allclose(DA.sherman_morrison(np.linalg.inv(H), v), np.linalg.inv(H + np.outer(v, v)),
                               atol=1e-12)
    theta, beta, Z, T, y = _teacher_data(rng, n=50)
    H = DA.fisher(theta, beta, Z, T)
    cand = rng.standard_normal((40, len(theta)))
    sel = DA.select_batch(theta, beta, cand, H, batch=6)
    H_run, picked = H.copy(), []
    for i, t, gain in zip(sel.pairs, sel.teachers, sel.gains):
        v = DA.info_vectors(theta, beta, cand[[i]], np.array([t]))[0]
        # Each pick is the argmax of the direct scores given the picks before it.
        allv = DA.info_vectors(theta, beta, np.repeat(cand, 2, axis=0), np.tile([0, 1], 40))
        direct = np.einsum("ij,jk,ik->i", allv, np.linalg.inv(H_run), allv)
        direct[picked] = -np.inf                               # unique=True: a picked candidate is retired
        np.testing.assert_allclose(gain, v @ np.linalg.solve(H_run, v), rtol=1e-9)
        assert np.isclose(gain, direct.max(), rtol=1e-9)
        picked.append(2 * i + t)
        H_run += np.outer(v, v)
    np.testing.assert_allclose(sel.H_inv, np.linalg.inv(H_run), atol=1e-10)
    assert len({(i, t) for i, t in zip(sel.pairs, sel.teachers)}) == 6    # no repeats within a batch


def test_dual_mle_recovers_theta_and_beta():
    rng = np.random.default_rng(7)
    theta, beta, Z, T, y = _teacher_data(rng, n=8000, d=5, betas=(0.5, 1.5, 3.0))
    th, be = DA.fit_mle(Z, T, y, 3)
    assert np.isclose(np.linalg.norm(th), 1.0)
    assert DA.angle(th, theta) < np.radians(4)
    np.testing.assert_allclose(be, beta, rtol=0.15)


def test_lcb_is_below_point_estimate():
    rng = np.random.default_rng(8)
    theta, beta, Z, T, y = _teacher_data(rng)
    H, Phi = DA.fisher(theta, beta, Z, T), rng.standard_normal((30, len(theta)))
    np.testing.assert_allclose(DA.lcb_scores(theta, H, Phi, gamma=0.0), Phi @ theta)
    assert np.all(DA.lcb_scores(theta, H, Phi, gamma=1.0) < Phi @ theta)


def test_dual_active_suite_reduced():
    a_opt = [DA.simulate(s, "doptimal", budget=300) for s in (0, 1, 2)]
    a_rnd = [DA.simulate(s, "random", budget=300) for s in (0, 1, 2)]
    assert np.mean([a for a, *_ in a_opt]) < np.mean([a for a, *_ in a_rnd])
    assert all(np.all(np.diff(b) > 0) for _, b, *_ in a_opt)


def test_dual_active_error_falls_with_the_budget():
    """The suite's error-vs-budget curve: D-optimal's θ̂ improves with every budget step on average over seeds, and
    each point is what an episode with that budget alone reaches (the curve is read off one longer episode)."""
    out = DA.run_suite([0, 1, 2], quick=True)
    curve = out["metrics"]["error_vs_budget"]
    assert curve["budgets"] == [120, 240, 360]
    assert set(curve["angle_deg_mean"]) == set(curve["angle_deg_per_seed"]) == {"doptimal", "random", "random_best"}
    assert all(np.shape(c) == (3, 3) for c in curve["angle_deg_per_seed"].values())  # budget × seed
    assert np.all(np.diff(curve["angle_deg_mean"]["doptimal"]) < 0)
    # the last budget is the suite's own budget: the same figure as the comparisons'
    for s, mean in out["metrics"]["angle_deg_mean"].items():
        assert curve["angle_deg_mean"][s][-1] == pytest.approx(mean)
    for s in ("doptimal", "random"):
        alone = DA.simulate(1, s, budget=240)[0]
        assert np.degrees(alone) == pytest.approx(curve["angle_deg_per_seed"][s][1][1], abs=1e-9)
    assert [row[0] for row in out["tables"][0]["rows"]] == ["D-optimal", "random pair & random teacher",
                                                            "random pair, teacher with largest β̂"]
    with pytest.raises(ValueError, match="exceed the budget"):
        DA.simulate(0, "random", budget=120, checkpoints=(240,))


# ------------------------------------------------------------------------------------------------ low rank
def test_pair_features_and_reduced_parametrisation():
    rng = np.random.default_rng(9)
    d_x, d_phi, r = 5, 7, 2
    Theta = LR.plant(rng, d_x, d_phi, r, sv=(2.0, 1.0))
    X, Z = rng.standard_normal((20, d_x)), rng.standard_normal((20, d_phi))
    np.testing.assert_allclose(LR.pair_features(X, Z) @ Theta.reshape(-1), np.einsum("ni,ij,nj->n", X, Theta, Z))
    U, s, Vt = np.linalg.svd(Theta)
    Ub, Vb = LR.complete_basis(U[:, :r]), LR.complete_basis(Vt[:r].T)
    np.testing.assert_allclose(Ub.T @ Ub, np.eye(d_x), atol=1e-12)
    np.testing.assert_allclose(Ub[:, :r], U[:, :r])
    m = LR.LowRankReward(Theta, Ub, Vb, r, None, None)
    red = m.to_reduced(Theta)
    assert red.size == LR.n_reduced_params(d_x, d_phi, r) == (d_x + d_phi) * r - r * r
    np.testing.assert_allclose(m.from_reduced(red), Theta, atol=1e-12)        # rank-r: nothing lost
    np.testing.assert_allclose(m.reduced_features(X, Z) @ red, np.einsum("ni,ij,nj->n", X, Theta, Z), atol=1e-12)


def test_reduced_fisher_is_the_reduced_hessian():
    rng = np.random.default_rng(10)
    Theta = LR.plant(rng, 4, 5, 1, sv=(2.0,))
    X, Z, y = LR.sample_training(rng, Theta, 400)
    m = LR.fit_lowrank(X, Z, y, 1, lam_fisher=0.0)
    F = m.reduced_features(X, Z)
    p = expit(F @ m.to_reduced(m.Theta))
    nll = lambda v: float(np.sum(np.logaddexp(0, F @ v) - p * (F @ v)))
    np.testing.assert_allclose(m.H, num_hess(nll, m.to_reduced(m.Theta)), atol=1e-3 * np.abs(m.H).max())


def test_lcb_is_the_worst_case_over_the_ellipsoid():
    rng = np.random.default_rng(11)
    Theta = LR.plant(rng, 4, 6, 2)
    X, Z, y = LR.sample_training(rng, Theta, 600)
    m = LR.fit_lowrank(X, Z, y, 2)
    xt, Phi, gamma = rng.standard_normal((50, 4)), rng.standard_normal((5, 6)), 1.5
    lcb = m.lcb(xt, Phi, gamma)
    G = m.reduced_features(np.broadcast_to(xt.mean(0), (5, 4)), Phi - Phi.mean(0))
    center = m.to_reduced(m.Theta)
    L = np.linalg.cholesky(m.H_inv)
    for g, lo in zip(G, lcb):
        u = rng.standard_normal((2000, len(center)))
        pts = center + gamma * (u / np.linalg.norm(u, axis=1, keepdims=True)) @ L.T   # on the boundary
        assert (pts @ g).min() >= lo - 1e-9
        worst = center - gamma * m.H_inv @ g / np.sqrt(g @ m.H_inv @ g)            # the analytic minimiser
        np.testing.assert_allclose(worst @ g, lo, rtol=1e-9)


def test_lowrank_beats_fullrank_and_prs_beats_fullrank_greedy_reduced():
    est = [LR.estimation_episode(s, n=2000) for s in (0, 1)]
    assert np.mean([e["err_low"] for e in est]) < np.mean([e["err_full"] for e in est])
    sh = LR.shift_episode(0, n=2000, n_states=100, gammas=(1.0,))
    assert sh["regret_prs_1"] < sh["regret_greedy_full"]


# -------------------------------------------------------------------------------------------------- shared
def test_bt_and_regression_losses_match_hand_computation():
    torch.manual_seed(0)
    m = SH.SharedRewardModel(3, ["regression", "bt"], hidden=4, rep_dim=2)
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal(6)
    X1, X0, yb = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), np.array([1, 0, 1, 1, 0, 1.0])
    with torch.no_grad():
        s = lambda t, A: m.score(t, torch.tensor(A, dtype=torch.float32)).detach().numpy().astype(float)
        reg = SH.evaluate(m, 0, SH.TaskData("regression", X=X, y=y))
        bt = SH.evaluate(m, 1, SH.TaskData("bt", X1=X1, X0=X0, y=yb))
    np.testing.assert_allclose(reg, np.mean((s(0, X) - y) ** 2), rtol=1e-5)
    h = s(1, X1) - s(1, X0)
    np.testing.assert_allclose(bt, -np.mean(yb * np.log(expit(h)) + (1 - yb) * np.log(expit(-h))), rtol=1e-5)


def test_training_uses_equal_minibatches_and_lowers_the_loss(monkeypatch):
    rng = np.random.default_rng(13)
    world = SH.World.make(rng, d=6, k=2)
    data = {0: world.task(rng, "bt", world.head(rng), 100), 1: world.task(rng, "regression", world.head(rng), 300)}
    sizes = []
    real = SH._loss

    def spy(m, t, kind, ts, idx=None):
        if idx is not None:                                    # training minibatches only, not evaluation
            sizes.append(len(idx))
        return real(m, t, kind, ts, idx)

    monkeypatch.setattr(SH, "_loss", spy)
    torch.manual_seed(0)
    model = SH.SharedRewardModel(6, ["bt", "regression"], hidden=16, rep_dim=2)
    before = [SH.evaluate(model, t, d) for t, d in data.items()]
    SH.train(model, data, steps=150, batch_size=16)
    after = [SH.evaluate(model, t, d) for t, d in data.items()]
    assert set(sizes) == {16} and len(sizes) == 300       # every step: one equal-size batch per task
    assert all(a < b for a, b in zip(after, before))


def test_transfer_freezes_then_unfreezes_the_trunk():
    rng = np.random.default_rng(14)
    world = SH.World.make(rng, d=6, k=2)
    torch.manual_seed(0)
    src = SH.SharedRewardModel(6, ["regression"], hidden=16, rep_dim=2)
    SH.train(src, {0: world.task(rng, "regression", world.head(rng), 200)}, steps=50)
    frozen, t, unfrozen = SH.transfer(src, world.task(rng, "bt", world.head(rng), 40), 30, 30)
    for a, b in zip(src.trunk.parameters(), frozen.trunk.parameters()):
        assert torch.equal(a, b)                               # frozen phase leaves the trunk as loaded
    assert any(not torch.equal(a, b) for a, b in zip(src.trunk.parameters(), unfrozen.trunk.parameters()))
    assert t == 0 and frozen.kinds == ["bt"]


def test_more_tasks_and_transfer_help_reduced():
    res = {1: [], 4: []}
    tr, sc = [], []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        world = SH.World.make(rng)
        heads = [world.head(rng) for _ in range(5)]
        kinds = ["bt", "regression", "regression", "regression"]
        train_d = [world.task(rng, k, h, 150) for k, h in zip(kinds, heads)]
        test_j = world.task(rng, "bt", heads[0], 1000)
        for T in res:
            torch.manual_seed(seed)
            model = SH.SharedRewardModel(16, kinds[:T])
            SH.train(model, {i: train_d[i] for i in range(T)}, steps=250, seed=seed)
            res[T].append(SH.evaluate(model, 0, test_j))
        new_tr, new_te = world.task(rng, "bt", heads[4], 40), world.task(rng, "bt", heads[4], 1000)
        frozen, t, _ = SH.transfer(model, new_tr, 200, 0, seed=seed)
        tr.append(SH.evaluate(frozen, t, new_te))
        torch.manual_seed(seed)
        scratch = SH.SharedRewardModel(16, ["bt"])
        SH.train(scratch, {0: new_tr}, 200, seed=seed)
        sc.append(SH.evaluate(scratch, 0, new_te))
    assert np.mean(res[4]) < np.mean(res[1])
    assert np.mean(tr) < np.mean(sc)


# -------------------------------------------------------------------------------------------------- report
def _fake_result(ok: bool) -> dict:
    comp = dict(name="x", value=1.0, baseline=2.0, baseline_name="b", better="lower", **{"pass": ok})
    return dict(seeds=[0], quick=True, wall_seconds=1.0, machine="m",
                suites=[dict(suite="s", title="T", setup="S", metrics={"a": 1.23456}, comparisons=[comp],
                             tables=[dict(title="curve", columns=["strategy", "120", "240"], rows=[["a", 27.6099, 3]])],
                             seconds=0.5),
                        dict(suite="u", title="U", setup="S", metrics={}, comparisons=[comp], seconds=0.5)],
                selection_cost=[dict(method="s", what="w", select_seconds=0.01)])


@pytest.mark.parametrize("ok", [True, False])
def test_report_markdown_and_exit_code(monkeypatch, ok, capsys):
    monkeypatch.setattr(report, "run", lambda seeds, quick, out: _fake_result(ok))
    assert report.main(["--seeds", "1"]) == (0 if ok else 1)
    md = capsys.readouterr().out
    assert ("PASS" if ok else "FAIL") in md and "| x | 1 | b | 2 |" in md and "10,000 candidate pairs" in md
    assert "curve:\n\n| strategy | 120 | 240 |\n|---|---|---|\n| a | 27.61 | 3 |\n" in md and "## 2. U" in md
