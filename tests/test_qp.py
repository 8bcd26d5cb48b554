"""solve_qp against scipy, closed forms, the active-set KKT solve and finite differences.

The derivative reference is independent of rootdiff: once the active set of a
non-degenerate QP is known, its solution is that of an equality-constrained QP
(active inequalities as equalities) — a dense KKT solve that plain JAX autodiff
differentiates in every mode.
"""

import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rootdiff
from rootdiff import QPStatus

N, P, M = 4, 1, 6


def _empty(n):
    return jnp.zeros((0, n)), jnp.zeros(0)


def _problem(seed=0, n=N, p=P, m=M, dtype=np.float64):
    """Random strictly convex QP with a feasible point x0 and some active constraints."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n, n))
    Q = F @ F.T + 0.5 * np.eye(n)
    q = 3 * rng.normal(size=n)
    A = rng.normal(size=(p, n))
    x0 = rng.normal(size=n)
    b = A @ x0
    G = rng.normal(size=(m, n))
    h = G @ x0 + rng.uniform(0.1, 1.0, size=m)
    return tuple(jnp.asarray(v, dtype) for v in (Q, q, A, b, G, h))


def active_set_qp(active):
    """Reference solver given the active set: an equality-constrained QP, dense KKT."""

    def solve(Q, q, A, b, G, h):
        Aa = jnp.concatenate([A, G[active]])
        ba = jnp.concatenate([b, h[active]])
        n, p = q.shape[0], ba.shape[0]
        K = jnp.block([[0.5 * (Q + Q.T), Aa.T], [Aa, jnp.zeros((p, p), Q.dtype)]])
        return jnp.linalg.solve(K, jnp.concatenate([-q, ba]))[:n]

    return solve


def loss(solver):
    def f(*a):
        x = solver(*a)  # one solve per loss: half the graph to compile
        return jnp.sum(jnp.sin(x)) + jnp.sum(x**2)

    return f


solve_info = jax.jit(lambda *a: rootdiff.solve_qp(*a, return_info=True))
ARGNUMS = (0, 1, 2, 3, 4, 5)
grad_ours = jax.jit(jax.grad(loss(rootdiff.solve_qp), argnums=ARGNUMS))
loss_ours = jax.jit(loss(rootdiff.solve_qp))


def all_modes(solver):
    """grad, jvp, jacfwd, jacrev and hessian of ``solver`` in one compiled function."""

    def f(Q, q, A, b, G, h):
        sol = lambda q, h: solver(Q, q, A, b, G, h)
        tangents = (jnp.ones_like(q), jnp.linspace(-1.0, 1.0, h.shape[0]))
        return {
            "jvp": jax.jvp(sol, (q, h), tangents)[1],
            "jacfwd": jax.jacfwd(sol, argnums=(0, 1))(q, h),
            "jacrev": jax.jacrev(sol, argnums=(0, 1))(q, h),
            "hessian": jax.hessian(lambda q: loss(solver)(Q, q, A, b, G, h))(q),
        }

    return jax.jit(f)


@pytest.fixture(scope="module")
def problem():
    args = _problem(0)
    x, info = solve_info(*args)
    assert int(info.status) == QPStatus.SOLVED
    active = np.asarray(info.z > info.s)
    # Non-degenerate: multipliers and slacks well away from zero.
    assert 0 < active.sum() < M
    assert float(jnp.min(jnp.where(active, info.z, jnp.inf))) > 1e-3
    assert float(jnp.min(jnp.where(active, jnp.inf, info.s))) > 1e-3
    return args, active


# --------------------------------------------------------------------------- values


def test_nnls_matches_scipy_batched():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    Fs, gs = rng.normal(size=(8, 10, 5)), rng.normal(size=(8, 10))
    Qs = jnp.asarray(np.einsum("bij,bik->bjk", Fs, Fs))
    qs = jnp.asarray(-np.einsum("bij,bi->bj", Fs, gs))
    A, b = _empty(5)
    G, h = -jnp.eye(5), jnp.zeros(5)
    xs = jax.jit(jax.vmap(rootdiff.solve_qp, in_axes=(0, 0, None, None, None, None)))(
        Qs, qs, A, b, G, h
    )
    # The interior point stops at tol=1e-8; polishing on the active set makes x exact.
    for i in range(8):
        np.testing.assert_allclose(xs[i], optimize.nnls(Fs[i], gs[i])[0], atol=1e-12)


def test_nnls_answer_at_zero_is_solved_quickly():
    # x* = 0 with h = 0 (q > 0): every relative scale of the stopping rule vanishes
    # at the answer, so no interior iterate can meet it; the loop must still stop
    # (scaled residuals) and polishing must return the exact x = 0 as solved.
    rng = np.random.default_rng(0)
    F = rng.normal(size=(10, 5))
    Q, q = jnp.asarray(F.T @ F), jnp.asarray(rng.uniform(0.1, 2.0, 5))
    x, info = solve_info(Q, q, *_empty(5), -jnp.eye(5), jnp.zeros(5))
    assert int(info.status) == QPStatus.SOLVED
    assert int(info.iterations) < 20
    np.testing.assert_array_equal(x, 0.0)
    np.testing.assert_allclose(info.z, q, rtol=1e-12)


def test_general_qp_matches_slsqp(problem):
    optimize = pytest.importorskip("scipy.optimize")
    (Q, q, A, b, G, h), _ = problem
    Qn, qn, An, bn, Gn, hn = (np.asarray(v) for v in (Q, q, A, b, G, h))
    res = optimize.minimize(
        lambda x: 0.5 * x @ Qn @ x + qn @ x,
        np.zeros(N),
        jac=lambda x: Qn @ x + qn,
        method="SLSQP",
        constraints=[
            {"type": "eq", "fun": lambda x: An @ x - bn, "jac": lambda x: An},
            {"type": "ineq", "fun": lambda x: hn - Gn @ x, "jac": lambda x: -Gn},
        ],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    x, info = solve_info(Q, q, A, b, G, h)
    np.testing.assert_allclose(x, res.x, atol=1e-6)
    # KKT: stationarity, feasibility, dual feasibility.
    assert float(info.dual_residual) < 1e-9
    assert float(info.primal_residual) < 1e-9
    assert bool(jnp.all(info.z >= 0))


def test_lp_matches_linprog():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(2)
    n, m = 3, 7
    G = rng.normal(size=(m, n))
    h = G @ rng.normal(size=n) + 1.0
    q = -G.T @ rng.uniform(0.1, 1.0, size=m)  # bounded: -q in the cone of G's rows
    res = optimize.linprog(q, A_ub=G, b_ub=h, bounds=[(None, None)] * n, method="highs")
    A, b = _empty(n)
    x, info = rootdiff.solve_qp(jnp.zeros((n, n)), q, A, b, G, h, return_info=True)
    assert int(info.status) == QPStatus.SOLVED
    np.testing.assert_allclose(float(q @ x), res.fun, rtol=1e-8)


def test_closed_form_projection_and_empty_conventions():
    # Projection of c onto the half-space x1 + x2 <= 1: x = c - (sum c - 1)/2.
    c = jnp.array([1.0, 2.0])
    A, b = _empty(2)
    G, h = jnp.ones((1, 2)), jnp.ones(1)
    x = rootdiff.solve_qp(jnp.eye(2), -c, A, b, G, h)
    np.testing.assert_allclose(x, c - 1.0, atol=1e-9)
    dx_dh = jax.jit(jax.jacobian(lambda h: rootdiff.solve_qp(jnp.eye(2), -c, A, b, G, h)))(h)
    np.testing.assert_allclose(dx_dh[:, 0], [0.5, 0.5], atol=1e-9)
    # No inequalities at all: the equality-constrained solve.
    Gn, hn = _empty(2)
    x, info = rootdiff.solve_qp(jnp.eye(2), -c, jnp.ones((1, 2)), jnp.ones(1), Gn, hn,
                                return_info=True)  # fmt: skip
    np.testing.assert_allclose(x, [0.0, 1.0], atol=1e-12)
    assert info.z.shape == (0,) and int(info.status) == QPStatus.SOLVED


# --------------------------------------------------------------------------- derivatives


def test_grad_all_six_inputs_matches_active_set_reference(problem):
    args, active = problem
    ref = jax.grad(loss(active_set_qp(active)), argnums=ARGNUMS)(*args)
    for name, g, r in zip("Q q A b G h".split(), grad_ours(*args), ref):
        np.testing.assert_allclose(g, r, rtol=1e-7, atol=1e-8, err_msg=name)


def test_finite_differences_all_six_inputs(problem):
    """Central differences along random directions, one per input (float64)."""
    args, _ = problem
    grads = grad_ours(*args)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for j, name in enumerate("Q q A b G h".split()):
        v = jnp.asarray(rng.normal(size=args[j].shape))
        plus = [a + eps * v if i == j else a for i, a in enumerate(args)]
        minus = [a - eps * v if i == j else a for i, a in enumerate(args)]
        fd = (loss_ours(*plus) - loss_ours(*minus)) / (2 * eps)
        assert float(jnp.vdot(grads[j], v)) == pytest.approx(float(fd), rel=1e-6, abs=1e-8), name


def test_jvp_jacfwd_jacrev_hessian(problem):
    args, active = problem
    ours = all_modes(rootdiff.solve_qp)(*args)
    ref = all_modes(active_set_qp(active))(*args)
    for mode in ours:
        for a, r in zip(jax.tree.leaves(ours[mode]), jax.tree.leaves(ref[mode])):
            np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-8, err_msg=mode)


def test_duals_are_differentiable(problem):
    (Q, q, A, b, G, h), active = problem
    dz = jax.jit(
        jax.jacobian(lambda h: rootdiff.solve_qp(Q, q, A, b, G, h, return_info=True)[1].z)
    )(h)
    # Inactive multipliers stay at zero to first order.
    np.testing.assert_allclose(dz[~active], 0.0, atol=1e-8)
    assert bool(jnp.all(jnp.isfinite(dz)))


def test_vmap_batch_matches_loop():
    batch = [_problem(s) for s in range(3, 7)]
    stacked = [jnp.stack(v) for v in zip(*batch)]

    # One compiled function for the values and the gradients (has_aux: x of the same solve).
    def x_and_grad(*a):
        def f(*a):
            x = rootdiff.solve_qp(*a)
            return jnp.sum(jnp.sin(x)) + jnp.sum(x**2), x

        g, x = jax.grad(f, argnums=ARGNUMS, has_aux=True)(*a)
        return x, g

    xs, gs = jax.jit(jax.vmap(x_and_grad))(*stacked)
    for i, args in enumerate(batch):
        np.testing.assert_allclose(xs[i], solve_info(*args)[0], rtol=1e-10, atol=1e-12)
        for g, r in zip(gs, grad_ours(*args)):
            np.testing.assert_allclose(g[i], r, rtol=1e-8, atol=1e-10)


def test_generic_diff_solve_agrees_with_structured(problem):
    args, _ = problem
    g_lu = jax.grad(loss(lambda *a: rootdiff.solve_qp(*a, diff_solve="lu")), argnums=ARGNUMS)(*args)
    for g, r in zip(g_lu, grad_ours(*args)):
        np.testing.assert_allclose(g, r, rtol=1e-8, atol=1e-10)


def test_float32(float32):
    args = _problem(0, dtype=np.float32)

    @jax.jit
    def run(*args):
        x, info = rootdiff.solve_qp(*args, return_info=True)
        return x, info, jax.grad(loss(rootdiff.solve_qp), argnums=1)(*args)

    x, info, g = run(*args)
    assert x.dtype == jnp.float32 and int(info.status) == QPStatus.SOLVED
    active = np.asarray(info.z > info.s)
    r = jax.grad(loss(active_set_qp(active)), argnums=1)(*args)
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- status and edge cases


def test_primal_infeasible_status():
    # x1 + x2 = 1, x >= 0, x1 + x2 <= 0.5.
    G = jnp.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    h = jnp.array([0.0, 0.0, 0.5])
    x, info = rootdiff.solve_qp(
        jnp.eye(2), jnp.ones(2), jnp.ones((1, 2)), jnp.ones(1), G, h, return_info=True, check="off"
    )
    assert int(info.status) == QPStatus.PRIMAL_INFEASIBLE
    assert not bool(info.converged)


def test_dual_infeasible_status():
    # min -x2 + ½x1² s.t. x >= 0 is unbounded along x2.
    A, b = _empty(2)
    Q = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    x, info = rootdiff.solve_qp(Q, jnp.array([0.0, -1.0]), A, b, -jnp.eye(2), jnp.zeros(2),
                                return_info=True, check="off")  # fmt: skip
    assert int(info.status) == QPStatus.DUAL_INFEASIBLE


def test_failure_checks_warn_raise_nan():
    A, b = _empty(1)
    args = (jnp.zeros((1, 1)), -jnp.ones(1), A, b, -jnp.eye(1), jnp.zeros(1))  # unbounded
    with pytest.warns(rootdiff.ConvergenceWarning, match="solve_qp"):
        rootdiff.solve_qp(*args)
    with pytest.raises(Exception, match="solve_qp"):
        jax.block_until_ready(rootdiff.solve_qp(*args, check="raise"))
    # "nan": the failed problem is NaN, a solved one in the same batch is untouched.
    ok = (jnp.eye(1), -jnp.ones(1), A, b, -jnp.eye(1), jnp.zeros(1))
    batch = [jnp.stack([u, v]) for u, v in zip(args, ok)]
    xs = jax.jit(jax.vmap(lambda *a: rootdiff.solve_qp(*a, check="nan")))(*batch)
    assert bool(jnp.all(jnp.isnan(xs[0]))) and abs(float(xs[1, 0]) - 1.0) < 1e-8


def test_maxiter_reports_not_converged():
    args = _problem(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rootdiff.ConvergenceWarning)
        _, info = rootdiff.solve_qp(*args, maxiter=0, return_info=True)
    # (After 2 iterations this problem's active set is already right, and the
    # polished answer is honestly "solved".)
    assert int(info.status) in (QPStatus.MAX_ITERATIONS, QPStatus.INACCURATE)
    assert int(info.iterations) == 0 and not bool(info.converged)


def test_degenerate_constraint_gives_finite_one_sided_derivative():
    # min ½x² s.t. x <= h: x = min(h, 0), kink at h = 0 where z = 0 and x = h.
    A, b = _empty(1)
    f = jax.jit(
        jax.grad(lambda h: rootdiff.solve_qp(jnp.eye(1), jnp.zeros(1), A, b, jnp.eye(1), h)[0])
    )
    # At the kink the derivative does not exist: reported (check="warn"), one-sided.
    with pytest.warns(rootdiff.ConvergenceWarning, match="degenerate"):
        g0 = float(f(jnp.zeros(1))[0])
    assert np.isfinite(g0) and g0 in (0.0, 1.0)  # one of the one-sided derivatives
    assert float(f(jnp.array([-0.5]))[0]) == pytest.approx(1.0)
    assert float(f(jnp.array([0.5]))[0]) == pytest.approx(0.0, abs=1e-12)


def test_smoothed_derivative_option():
    # Projection onto x1 + x2 <= 1 with a log barrier κ: dx/dh = w/(1 + 2w), w = z/s.
    c, kappa = jnp.array([1.0, 2.0]), 1e-2
    A, b = _empty(2)
    G, h = jnp.ones((1, 2)), jnp.ones(1)
    f = lambda h: rootdiff.solve_qp(jnp.eye(2), -c, A, b, G, h, smoothing=kappa)
    exact = lambda h: rootdiff.solve_qp(jnp.eye(2), -c, A, b, G, h)
    x, jac, jac_exact = jax.jit(lambda h: (f(h), jax.jacobian(f)(h), jax.jacobian(exact)(h)))(h)
    np.testing.assert_allclose(x, c - 1.0, atol=1e-9)  # the value stays exact
    # Central path: x = c - z·1, s = h - 1ᵀx = 2z - 2 and s z = κ, so 2z² - 2z - κ = 0.
    z = (2 + np.sqrt(4 + 8 * kappa)) / 4
    w = z / (kappa / z)
    np.testing.assert_allclose(jac[:, 0], w / (1 + 2 * w), rtol=1e-8)
    np.testing.assert_allclose(jac_exact[:, 0], 0.5, rtol=1e-9)
    assert not np.allclose(jac, jac_exact, atol=1e-4)  # the smoothing is visible


def test_shape_errors():
    Q, q, A, b, G, h = _problem()
    with pytest.raises(ValueError, match="G has shape"):
        rootdiff.solve_qp(Q, q, A, b, G[:, :2], h)


def test_qpax_documented_difference(problem):
    """qpax agrees on x; its default gradients are those of a smoothed problem."""
    qpax = pytest.importorskip("qpax")
    args, active = problem
    np.testing.assert_allclose(qpax.solve_qp_primal(*args), rootdiff.solve_qp(*args), atol=1e-4)
    ref = jax.grad(loss(active_set_qp(active)), argnums=1)(*args)
    g_qpax = jax.grad(loss(qpax.solve_qp_primal), argnums=1)(*args)
    g_ours = grad_ours(*args)[1]
    assert float(jnp.max(jnp.abs(g_ours - ref))) < 1e-7
    assert float(jnp.max(jnp.abs(g_qpax - ref))) > 1e-5  # qpax: target_kappa=1e-3 smoothing


SHARDED = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import rootdiff
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    B, n, m = 16, 3, 4
    F = rng.normal(size=(B, n, n))
    Q = F @ F.transpose(0, 2, 1) + np.eye(n)
    data = [Q, rng.normal(size=(B, n)), np.zeros((B, 0, n)), np.zeros((B, 0)),
            rng.normal(size=(B, m, n)), rng.uniform(0.1, 1, size=(B, m))]
    loss = lambda *a: jnp.sum(rootdiff.solve_qp(*a) ** 2)
    f = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 4, 5))))
    one = f(*[jnp.asarray(d) for d in data])
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharded = [jax.device_put(d, NamedSharding(mesh, P("batch"))) for d in data]
    many = f(*sharded)
    assert len(many[0].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    print("OK")
    """
)


def test_sharded_batch_over_8_host_devices():
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_corrector_extra_rounds_run_only_when_the_residual_asks():
    # The interior point's corrector may add refinement rounds; once the residual is at
    # its floor it must not solve again: the inverse below is exact on the first
    # right-hand side and deliberately wrong on any smaller one, so a further round
    # would move d.
    from rootdiff.solvers._kkt import refine_from_zero

    M = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    rhs = (jnp.array([1.0, 2.0]),)
    exact = jnp.linalg.solve(M, rhs[0])

    def mv(d):
        return (M @ d[0],)

    def wrong(e):  # first round: 1e-13 relative off, leaving a residual below the floor
        small = jnp.max(jnp.abs(e[0])) < 1e-3
        return (jnp.linalg.solve(M, e[0]) * (1 + 1e-13) + jnp.where(small, 1.0, 0.0),)

    kept, size = jax.jit(lambda r: refine_from_zero(wrong, mv, r, 8, 1, 0.9, 1e-11))(rhs)
    np.testing.assert_allclose(kept[0], exact, rtol=1e-12)
    assert 0 < float(size) <= 1e-11

    # A rough inverse (half the true one) is refined while the residual falls.
    def half(e):
        return (0.5 * jnp.linalg.solve(M, e[0]),)

    refined, _ = jax.jit(lambda r: refine_from_zero(half, mv, r, 8, 1, 0.9, 1e-12))(rhs)
    err = np.abs(np.asarray(refined[0] - exact)).max()
    assert err <= 0.5**8 * np.abs(np.asarray(exact)).max() * 1.01
    assert err > 0  # at most 8 solves were taken


# --- ipmfast


def _while_body_products(n, p, m):
    """Matrix–vector products with ``Ĝ`` (``(m, n)`` operands) in the interior-point loop's
    body, counted in its jaxpr (every traced call site once, nested loops included)."""
    import jax.extend

    from rootdiff.solvers import _ipm

    rng = np.random.default_rng(0)
    Q = jnp.eye(n)
    q, A, b = jnp.asarray(rng.standard_normal(n)), jnp.ones((p, n)), jnp.ones(p)
    G, h = jnp.asarray(rng.standard_normal((m, n))), jnp.ones(m)
    jaxpr = jax.make_jaxpr(lambda *d: _ipm.ipm(*d, tol=1e-10, atol=0.0, maxiter=20))(
        Q, q, A, b, G, h
    )
    loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "while"]
    body = max(loops, key=lambda e: len(e.params["body_jaxpr"].jaxpr.eqns))

    def count(jx):
        k = sum(
            e.primitive.name == "dot_general"
            and any(getattr(v.aval, "shape", None) in ((m, n), (n, m)) for v in e.invars)
            for e in jx.eqns
        )
        return k + sum(count(sub) for sub in jax.extend.core.subjaxprs(jx))

    return count(body.params["body_jaxpr"].jaxpr)


def test_interior_point_iteration_computes_each_residual_product_once():
    # The products Ĝx and Ĝᵀz of a new iterate (and Q̂x, Âx, Âᵀy) are computed once
    # and shared by the honest and scaled stopping tests, the infeasibility
    # certificates and the next Newton step's residuals; the rest of the count is the
    # Newton solves, the refinement's exact matvecs, ĜᵀWĜ and the unscaled merit.
    # Recomputing them for each test and for the next step gave 24.
    assert _while_body_products(n=20, p=2, m=30) <= 19


def test_float32_data_with_x64_enabled():
    # float32 inputs while x64 is on (as in a float64 program that holds some float32
    # data): the answer, its derivative and every internal solve stay in float32.
    # min ½‖x‖² − cᵀx s.t. x ≤ u: x = min(c, u), ∂Σx/∂u = 1 where c > u.
    c = jnp.array([1.0, -2.0, 3.0], jnp.float32)
    u = jnp.array([0.5, 0.0, 4.0], jnp.float32)
    G = jnp.eye(3, dtype=jnp.float32)
    Q, A, b = G, jnp.zeros((0, 3), jnp.float32), jnp.zeros(0, jnp.float32)

    def f(u):
        return jnp.sum(rootdiff.solve_qp(Q, -c, A, b, G, u))

    val, g = jax.jit(jax.value_and_grad(f))(u)
    assert val.dtype == g.dtype == jnp.float32
    np.testing.assert_allclose(val, 0.5 - 2.0 + 3.0, atol=1e-5)
    np.testing.assert_allclose(g, [1.0, 0.0, 0.0], atol=1e-4)


# --- qppost


def _qp_diff_solves(fn, *args):
    """Traced calls of the regularised active-set solve, per call site in _qp_diff."""
    from rootdiff.solvers import _kkt

    calls = {}
    original = _kkt.Reduced.apply_inverse

    def counted(self, r):
        frame, names = sys._getframe(1), []
        while frame is not None:
            if frame.f_code.co_filename.endswith("_qp_diff.py"):
                names.append(frame.f_code.co_name)
            frame = frame.f_back
        if names:
            stage = next(n for n in names if n in STAGES)  # the innermost
            calls[stage] = calls.get(stage, 0) + 1
        return original(self, r)

    _kkt.Reduced.apply_inverse = counted
    try:
        jax.make_jaxpr(fn)(*args)
    finally:
        _kkt.Reduced.apply_inverse = original
    return calls


STAGES = ("polish_and_probe", "derivative_defect", "differentiable")


def test_each_active_set_solve_is_traced_once():
    # Every traced copy of the solve is compiled separately: polishing, each derivative
    # probe and the derivative's own solve hold one copy each (refinement from zero, the
    # first solve inside the loop), and the probes only when something reads them.
    Q, q, A, b, G, h = _problem(0)

    def grad(check):
        return jax.grad(lambda q: jnp.sum(rootdiff.solve_qp(Q, q, A, b, G, h, check=check)))

    def with_info(q):
        return rootdiff.solve_qp(Q, q, A, b, G, h, check="off", return_info=True)

    polished = _qp_diff_solves(grad("warn"), q)
    stage = "polish_and_probe"
    assert polished == {stage: 1, "derivative_defect": 1, "differentiable": 1}, polished
    assert _qp_diff_solves(grad("off"), q) == {stage: 1, "differentiable": 1}
    assert _qp_diff_solves(with_info, q)["derivative_defect"] == 1


def test_probes_and_info_residuals_with_check_off():
    # A duplicated equality row: x is unique, the constraints are dependent. The probes
    # run for info.derivative although check="off", and the reported residuals are the
    # returned point's (measured here independently).
    Q, q = jnp.eye(2), jnp.array([-1.0, -2.0])
    A, b = jnp.array([[1.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 1.0])
    G, h = jnp.array([[1.0, 0.0]]), jnp.array([0.1])
    x, info = rootdiff.solve_qp(Q, q, A, b, G, h, check="off", return_info=True)
    np.testing.assert_allclose(x, [0.0, 1.0], atol=1e-10)
    assert int(info.status) == QPStatus.SOLVED
    assert int(info.derivative) == QPStatus.DEPENDENT_CONSTRAINTS
    xn, yn, zn = (np.asarray(v) for v in (x, info.y, info.z))
    An, Gn, hn = np.asarray(A), np.asarray(G), np.asarray(h)
    dual = np.abs(xn + np.asarray(q) + An.T @ yn + Gn.T @ zn).max()
    prim = max(np.abs(An @ xn - 1.0).max(), np.maximum(Gn @ xn - hn, 0).max())
    assert float(info.dual_residual) == pytest.approx(dual, abs=1e-15)
    assert float(info.primal_residual) == pytest.approx(prim, abs=1e-15)


# --- qpfast


def test_cholesky_retries_only_where_potrf_fails():
    # A batch of reduced matrices Q + ρI + GᵀWG: one well-conditioned, one whose
    # regularisation is below the rounding of a 1e10 weight beside a free direction,
    # one indefinite. potrf fails on the last two; the retry's relative diagonal shift
    # factorises the second, leaves the first bit for bit, and the third stays NaN.
    from rootdiff.solvers import _kkt

    n = 20
    rng = np.random.default_rng(0)
    M = rng.standard_normal((n, n))
    good = M @ M.T + np.eye(n)
    v = rng.standard_normal((n, 3))
    weak = 1e10 * v @ v.T + 1.6e-10 * np.eye(n)  # rank 3 + ρI
    bad = good - 2 * np.linalg.eigvalsh(good)[-1] * np.eye(n)
    H = jnp.asarray(np.stack([good, weak, bad]))
    assert not np.all(np.isfinite(np.asarray(jax.vmap(jnp.linalg.cholesky)(H)[1])))
    L = np.asarray(jax.jit(jax.vmap(_kkt.cholesky))(H))
    np.testing.assert_array_equal(L[0], np.linalg.cholesky(good))
    assert np.all(np.isfinite(L[1]))
    shift = L[1] @ L[1].T - weak  # a diagonal shift relative to diag(H), tiny
    np.testing.assert_allclose(shift - np.diag(np.diag(shift)), 0.0, atol=1e-4)
    assert np.all(np.diag(shift) >= 0) and np.all(np.diag(shift) <= 1e-2 * np.diag(weak))
    assert not np.all(np.isfinite(L[2]))


@pytest.fixture(scope="module")
def _free_lp():
    # No equalities, n > 16 (the Cholesky path): an LP-like QP whose Q has a null space
    # of dimension 14, entries up to 1e6, boxes on half the variables and a few general
    # rows; checked on the exact KKT conditions below.
    rng = np.random.default_rng(3)
    n, m = 24, 30
    B = rng.standard_normal((n, 10))
    Q = B @ B.T * 1e3
    q = rng.standard_normal(n) * 1e6
    G = np.concatenate([np.eye(n), -np.eye(n), rng.standard_normal((m - 2 * n % m, n))])[:60]
    h = np.concatenate([np.ones(n), np.ones(n), np.ones(12)])[: G.shape[0]] * 1e2
    return Q, q, G, h


def test_cholesky_path_singular_q_huge_entries(_free_lp):
    Q, q, G, h = _free_lp
    x, info = rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True)
    assert int(info.status) == QPStatus.SOLVED
    # Exact KKT check on the original data (not the solver's own measure).
    xn, zn = np.asarray(x), np.asarray(info.z)
    scale = np.abs(q).max()
    assert np.abs(Q @ xn + q + G.T @ zn).max() <= 1e-8 * scale
    assert np.maximum(G @ xn - h, 0).max() <= 1e-9 * np.abs(h).max()
    assert zn.min() >= 0 and abs(zn @ (h - G @ xn)) <= 1e-8 * scale * np.abs(h).max()


def test_cholesky_path_reports_non_convex():
    rng = np.random.default_rng(4)
    n = 20
    M = rng.standard_normal((n, n))
    Q = M @ M.T - 5.0 * np.eye(n) * np.abs(np.linalg.eigvalsh(M @ M.T)).max()
    G = np.concatenate([np.eye(n), -np.eye(n)])
    _, info = rootdiff.solve_qp(Q, rng.standard_normal(n), None, None, G, np.ones(2 * n),
                                check="off", return_info=True)  # fmt: skip
    assert int(info.status) == QPStatus.NON_CONVEX


def test_interior_point_loop_traces_two_step_solves():
    # Each traced copy of the reduced solve is compiled separately: the loop body holds
    # the predictor's and the corrector's (its refinement rounds in one loop from zero),
    # plus the starting point's outside the loop.
    from rootdiff.solvers import _ipm, _kkt

    Q, q, A, b, G, h = (jnp.asarray(v) for v in _problem(0))
    calls = []
    original = _kkt.Reduced.apply_inverse

    def counted(self, r):
        calls.append(1)
        return original(self, r)

    _kkt.Reduced.apply_inverse = counted
    try:
        jax.make_jaxpr(lambda *a: _ipm.ipm(*a, tol=1e-10, atol=0.0, maxiter=50))(Q, q, A, b, G, h)
    finally:
        _kkt.Reduced.apply_inverse = original
    assert len(calls) == 3


# --- qppost


def test_polishing_returns_the_slack_margins_of_the_point_it_returns():
    # degeneracy() reuses polishing's slack margins (rounding units of h_i − G_i x) instead
    # of recomputing G x: they must be the returned point's, not the interior point's
    # (whose active rows sit ~1e-10 / eps units off the boundary, not within rounding).
    from rootdiff.solvers import _ipm
    from rootdiff.solvers._qp_diff import polish_and_probe, slack_margin

    Q, q, A, b, G, h = _problem(0)

    @jax.jit
    def run(*data):
        res = _ipm.ipm(*data, tol=1e-10, atol=0.0, maxiter=50)
        absent = _ipm.absent_rows(h)
        point, active, _, (_, _, slack), taken, _ = polish_and_probe(
            (res.x, res.y, res.z), res.active, data, res.scaled, absent,
            lambda v: _ipm.merit(*data, absent, *v, 1e-10, 0.0), probe=False,
        )  # fmt: skip
        return point[0], res.x, active, slack, taken

    x, x_ipm, active, slack, taken = run(Q, q, A, b, G, h)
    assert bool(taken) and bool(jnp.any(active))
    np.testing.assert_allclose(slack, slack_margin(x, G, h), rtol=1e-9, atol=8.0)
    assert np.all(np.abs(np.asarray(slack)[np.asarray(active)]) <= 8.0)  # on the boundary
    ipm_slack = np.asarray(slack_margin(x_ipm, G, h))[np.asarray(active)]
    assert np.all(np.abs(ipm_slack) > 1e3)  # the interior point's would not be


# --- qpprobe


def _zero_answer_problems(seeds=(0, 1, 2), n=5, m=3):
    # x* = 0 with every row active and h = 0: q = −Gᵀz* with z* > 0 (strictly
    # complementary, independent rows, Q ≻ 0). Nothing in h (nor in x) gives the
    # relative tolerance a scale.
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        M = rng.standard_normal((8, n))
        G = rng.standard_normal((m, n))
        z = np.abs(rng.standard_normal(m)) + 0.5
        out.append((M.T @ M + 0.1 * np.eye(n), -G.T @ z, G, np.zeros(m), z))
    return [np.stack(v) for v in zip(*out, strict=True)]


def test_answer_zero_with_zero_right_hand_side_is_solved_and_polished():
    # The relative rule alone judged (G_i x)₊ against ‖G_i‖‖x‖ and |qᵀx| against itself:
    # any x ≠ 0 failed it, however close to rounding. The interior point's answer was
    # "not converged" (cold start), and polishing's (x = 1e-17) was thrown away from an
    # exact warm start (derivative UNPOLISHED).
    Q, q, G, h, z = _zero_answer_problems()

    def solve(Q, q, G, h, init):
        return rootdiff.solve_qp(Q, q, None, None, G, h, init=init, return_info=True,
                                 check="off")  # fmt: skip

    cold = jax.jit(jax.vmap(lambda *d: (solve(*d, None), jax.jacobian(
        lambda q: solve(d[0], q, d[2], d[3], None)[0])(d[1]))))  # fmt: skip
    (x, info), dx_dq = cold(Q, q, G, h)
    warm = jax.jit(jax.vmap(solve))
    init = (np.zeros_like(q), np.zeros((len(q), 0)), z)
    x_w, info_w = warm(Q, q, G, h, init)
    for xs, inf in ((x, info), (x_w, info_w)):
        assert np.all(np.asarray(inf.status) == QPStatus.SOLVED), inf.status
        assert np.all(np.asarray(inf.derivative) == QPStatus.DERIVATIVE_EXACT), inf.derivative
        assert np.max(np.abs(xs)) < 1e-12
        np.testing.assert_allclose(inf.z, z, rtol=1e-9)
    for k in range(len(q)):  # closed form on the active set: −Z (ZᵀQZ)⁻¹ Zᵀ
        Z = np.linalg.svd(G[k])[2][G.shape[1] :].T
        expected = -Z @ np.linalg.solve(Z.T @ Q[k] @ Z, Z.T)
        np.testing.assert_allclose(dx_dq[k], expected, atol=1e-10)
