"""solve_qp on the inputs real users bring: infinite and huge bounds, badly scaled data,
non-convex Q, singular equality systems, infeasible and unbounded problems (each
status), the elastic mode, warm starts, qpax-style calls and Maros–Meszaros problems.

Every derivative is checked against central finite differences or a closed form.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rootdiff
from rootdiff import QPStatus

S = QPStatus
# One jitted entry point for most tests (one compile per shape).
info_off = jax.jit(lambda *a: rootdiff.solve_qp(*a, return_info=True, check="off"))


def solve2(Q, q, A=None, b=None, G=None, h=None):
    """``info_off`` on a two-variable problem padded to 2 equality and 6 inequality rows.

    Padding rows are ``0ᵀx = 0`` and absent rows (``h = +inf``): the same problem, one
    compiled solve for all the forward checks below (compiles dominate this module).
    """
    A = jnp.zeros((0, 2)) if A is None else jnp.asarray(A, float)
    b = jnp.zeros(0) if b is None else jnp.asarray(b, float)
    G = jnp.zeros((0, 2)) if G is None else jnp.asarray(G, float)
    h = jnp.zeros(0) if h is None else jnp.asarray(h, float)
    A = jnp.concatenate([A, jnp.zeros((2 - A.shape[0], 2))])
    b = jnp.concatenate([b, jnp.zeros(2 - b.shape[0])])
    G = jnp.concatenate([G, jnp.zeros((6 - G.shape[0], 2))])
    h = jnp.concatenate([h, jnp.full(6 - h.shape[0], jnp.inf)])
    return info_off(jnp.asarray(Q, float), jnp.asarray(q, float), A, b, G, h)


# The issue's two-variable problem: exact answer (0.25, 0.75) while x₁ ≤ 0.3 is inactive.
Q2 = jnp.array([[2.0, 0.5], [0.5, 1.0]])
q2 = jnp.array([-1.0, -1.0])
A2, b2 = jnp.array([[1.0, 1.0]]), jnp.array([1.0])
G2 = jnp.eye(2)


def _fd_grad(f, x, eps=1e-6):
    x = np.asarray(x, float)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        g.flat[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * eps)
    return g


def test_loose_and_infinite_bounds():
    # inf, 1e20 ("no bound" as OSQP/qpax users write it) and a real but loose 1e10
    hs = jnp.array([[0.3, jnp.inf], [0.3, 1e20], [0.3, 1e10], [0.3, 0.7]])
    xs, info = jax.vmap(info_off, in_axes=(None, None, None, None, None, 0))(Q2, q2, A2, b2, G2, hs)
    np.testing.assert_allclose(xs, [[0.25, 0.75]] * 3 + [[0.3, 0.7]], atol=1e-10)
    assert np.all(np.asarray(info.status) == S.SOLVED)


def test_infinite_bound_zero_cotangent_every_mode():
    h = jnp.array([0.3, jnp.inf])

    def f(h):
        return rootdiff.solve_qp(Q2, q2, A2, b2, G2, h)

    gh = jax.jit(jax.grad(lambda h: f(h) @ jnp.array([1.0, 2.0])))(h)
    assert np.all(np.isfinite(gh)) and float(gh[1]) == 0.0 and float(gh[0]) == 0.0
    J = jax.jit(jax.jacfwd(f))(h)
    assert np.all(np.isfinite(J)) and np.all(np.asarray(J) == 0.0)
    fq = lambda q: rootdiff.solve_qp(Q2, q, A2, b2, G2, h) @ q  # noqa: E731
    fd = _fd_grad(lambda q: solve2(Q2, q, A2, b2, G2, h)[0] @ q, q2)
    np.testing.assert_allclose(jax.jit(jax.grad(fq))(q2), fd, atol=1e-7)


def test_qpax_issue_qptest_with_inf_in_h():
    # Maros–Meszaros QPTEST as posed in qpax's bug reports (x₂ ≤ +inf); qpax's answer.
    Q = jnp.array([[8.0, 2.0], [2.0, 10.0]])
    q = jnp.array([1.5, -2.0])
    G = jnp.array([[-1.0, 2.0], [-2.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    h = jnp.array([6.0, -2.0, 20.0, jnp.inf, 0.0, 0.0])
    x, info = solve2(Q, q, None, None, G, h)
    np.testing.assert_allclose(x, [0.7625, 0.4750], atol=1e-10)
    assert int(info.status) == S.SOLVED
    g = jax.jit(jax.grad(lambda h: rootdiff.solve_qp(Q, q, None, None, G, h).sum()))(h)
    assert np.all(np.isfinite(g)) and float(g[3]) == 0.0


def test_tiny_data_is_scaled_not_lost():
    s = 1e-8
    h = jnp.array([0.3, 1.0]) * s
    # (an eager call with the default options: it shares the compiled solve of the
    # qpax-style call below)
    x, info = rootdiff.solve_qp(Q2, q2 * s, A2, b2 * s, G2, h, return_info=True)
    np.testing.assert_allclose(x / s, [0.25, 0.75], atol=1e-8)
    assert int(info.status) == S.SOLVED
    # dx/dq of the equality-constrained problem: −P Q⁻¹-like closed form via a KKT solve
    K = jnp.block([[Q2, A2.T], [A2, jnp.zeros((1, 1))]])
    dxdq = -jnp.linalg.inv(K)[:2, :2]
    J = jax.jit(jax.jacobian(lambda q: rootdiff.solve_qp(Q2, q, A2, b2 * s, G2, h)))(q2 * s)
    np.testing.assert_allclose(J, dxdq, atol=1e-8)


def test_non_convex_is_reported():
    box_G = jnp.concatenate([jnp.eye(2), -jnp.eye(2)])
    _, info = solve2(jnp.diag(jnp.array([1.0, -1.0])), q2, None, None, box_G, jnp.ones(4))
    assert int(info.status) == S.NON_CONVEX
    _, info = solve2(-jnp.eye(2), q2)
    assert int(info.status) == S.NON_CONVEX


def test_equality_only_singular_but_solvable():
    # a duplicated equality row; x = (0.5, 0.5); along the consistent direction b + t(1, 1)
    # dx₁/dt = ½ (a change of one copy alone has no derivative: finite is all we ask)
    A, b = jnp.array([[1.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 1.0])

    def eq(Q, q, A, b):
        return rootdiff.solve_qp(Q, q, A, b, None, None, return_info=True)

    x, info = jax.jit(eq)(jnp.eye(2), q2, A, b)
    assert int(info.status) == S.SOLVED
    assert int(info.derivative) == S.DEPENDENT_CONSTRAINTS
    np.testing.assert_allclose(x, [0.5, 0.5], atol=1e-9)
    # dx/db does not exist (the copies can be changed apart): reported, here silenced
    eq_off = lambda b: rootdiff.solve_qp(jnp.eye(2), q2, A, b, None, None, check="off")  # noqa: E731
    g = jax.jit(jax.grad(lambda b: eq_off(b)[0]))(b)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(), 0.5, atol=1e-8)
    # singular Q with q in its range: min ½(x₁ + x₂)² − 2(x₁ + x₂) s.t. x₁ = x₂ → (1, 1)
    x, info = solve2(jnp.ones((2, 2)), -2 * jnp.ones(2), jnp.array([[1.0, -1.0]]), jnp.zeros(1))
    assert int(info.status) == S.SOLVED
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-9)


def test_every_status_on_constructed_problems():
    # contradicting equalities x₁ = 0, x₁ = 1
    _, info = solve2(jnp.eye(2), q2, jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.array([0.0, 1.0]))
    assert int(info.status) == S.PRIMAL_INFEASIBLE
    # contradicting inequalities x₁ ≤ 0, x₁ ≥ 1, for several q
    for q in ([-1.0, -1.0], [1.0, 0.0], [0.0, 5.0]):
        _, info = solve2(jnp.eye(2), q, None, None, [[1.0, 0.0], [-1.0, 0.0]], [0.0, -1.0])
        assert int(info.status) == S.PRIMAL_INFEASIBLE
    # a free descent direction: min −x₂ s.t. x₁ ≤ 0 (Q = 0)
    _, info = solve2(jnp.zeros((2, 2)), jnp.array([0.0, -1.0]), None, None, [[1.0, 0.0]], [0.0])
    assert int(info.status) == S.DUAL_INFEASIBLE
    # iteration limit: 24 inequalities, about half active (the 2-variable problems
    # above are solved exactly by polishing after a single iteration)
    rng = np.random.default_rng(0)
    M, G = rng.normal(size=(8, 8)), rng.normal(size=(24, 8))
    Q, q, h = M @ M.T + 0.1 * np.eye(8), 5 * rng.normal(size=8), 0.1 * rng.uniform(size=24)
    e8 = jnp.zeros((0, 8)), jnp.zeros(0)
    _, info = rootdiff.solve_qp(Q, q, *e8, G, h, maxiter=1, return_info=True, check="off")
    assert int(info.status) in (S.MAX_ITERATIONS, S.INACCURATE)


def test_unbounded_warning_is_informative():
    with pytest.warns(rootdiff.ConvergenceWarning) as rec:
        rootdiff.solve_qp(jnp.zeros((2, 2)), jnp.array([0.0, -1.0]), None, None,
                          jnp.array([[1.0, 0.0]]), jnp.array([0.0]))  # fmt: skip
    msg = str(rec[0].message)
    assert "unbounded" in msg and "residual 0.000e+00" not in msg


def test_check_nan_poisons_value():
    G = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
    h = jnp.array([0.0, -1.0])
    x = rootdiff.solve_qp(jnp.eye(2), q2, None, None, G, h, check="nan")
    assert np.all(np.isnan(x))


def test_qpax_style_calls_and_messages():
    # 1-D A and G for one row; None for absent constraints
    x = rootdiff.solve_qp(Q2, q2, jnp.array([1.0, 1.0]), jnp.array([1.0]), jnp.array([1.0, 0.0]),
                          jnp.array(0.3))  # fmt: skip
    np.testing.assert_allclose(x, [0.25, 0.75], atol=1e-10)
    with pytest.raises(ValueError, match=r"Q has shape \(2, 2\).*q of shape \(3,\)"):
        rootdiff.solve_qp(Q2, jnp.ones(3), None, None, None, None)
    # jax.jit of the function itself, with the info, at qpax's absolute tolerance
    x, info = jax.jit(rootdiff.solve_qp)(
        Q2, q2, A2, b2, G2, jnp.array([0.3, 1.0]), tol=0.0, atol=1e-9, return_info=True
    )
    assert int(info.status) == S.SOLVED
    np.testing.assert_allclose(x, [0.25, 0.75], atol=1e-10)
    assert max(float(info.primal_residual), float(info.dual_residual), float(info.gap)) <= 1e-9


def test_elastic_mode_feasible_and_infeasible_with_derivatives():
    G = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
    h_ok, h_bad = jnp.array([0.5, 0.0]), jnp.array([0.0, -1.0])
    Q, q = jnp.eye(2), jnp.array([-1.0, -1.0])
    el = lambda h, lam: rootdiff.solve_qp(Q, q, None, None, G, h, elastic=lam)  # noqa: E731
    # feasible, λ above the multipliers: the QP's own answer
    np.testing.assert_allclose(el(h_ok, 10.0), [0.5, 1.0], atol=1e-9)
    # infeasible: x₁ ≤ 0 and x₁ ≥ 1 → minimise ½x₁² − x₁ + λ(x₁₊ + (1 − x₁)₊): x₁ = 1 (λ=2)
    x = el(h_bad, 2.0)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-8)
    # derivatives (grad, jacfwd) against finite differences, w.r.t. h and λ
    loss = lambda h, lam: el(h, lam) @ jnp.array([1.0, 3.0])  # noqa: E731
    h_mid = jnp.array([0.0, -0.5])  # infeasible, kink-free
    for lam in (0.3,):
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))(h_mid, lam)
        np.testing.assert_allclose(g[0], _fd_grad(lambda h: loss(h, lam), h_mid), atol=1e-6)
        gl = _fd_grad(lambda l_: loss(h_mid, l_), jnp.array(lam))
        np.testing.assert_allclose(g[1], gl, atol=1e-6)
        J = jax.jit(jax.jacfwd(lambda h: el(h, lam)))(h_mid)
        np.testing.assert_allclose(J.T @ jnp.array([1.0, 3.0]), g[0], atol=1e-9)


def test_warm_start_saves_iterations_and_has_zero_derivative():
    rng = np.random.default_rng(0)
    n, m = 6, 10
    F = rng.normal(size=(n, n))
    Q = jnp.asarray(F @ F.T + np.eye(n))
    G = jnp.asarray(rng.normal(size=(m, n)))
    h = jnp.asarray(rng.uniform(0.1, 1.0, m))
    q0 = jnp.asarray(rng.normal(size=n))
    solve = jax.jit(lambda q, init: rootdiff.solve_qp(Q, q, None, None, G, h, init=init,
                                                       return_info=True))  # fmt: skip
    cold = jax.jit(lambda q: rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True))
    x, info = cold(q0)
    q1 = q0 + 1e-3
    xw, iw = solve(q1, (x, info))
    xc, ic = cold(q1)
    np.testing.assert_allclose(xw, xc, atol=1e-9)
    assert int(iw.status) == S.SOLVED
    assert int(iw.iterations) < int(ic.iterations)
    g_init = jax.jit(jax.grad(lambda x0: solve(q1, (x0, info))[0].sum()))(x)
    assert np.all(np.asarray(g_init) == 0.0)


MM_DIR = os.environ.get("MAROS_MESZAROS_DIR", "/work/shared/maros_meszaros")


@jax.jit
def _polish_from(x, y, z, active):
    from rootdiff.solvers import _ipm, _qp_diff

    h = jnp.array([0.3, 1.0])
    data = (Q2, q2, A2, b2, G2, h)
    absent = _ipm.absent_rows(h)
    (Qs, _, As, _, Gs, _), sc = _ipm.equilibrate(*data, absent)
    merit = lambda v: _ipm.merit(*data, absent, *v, 1e-10, 0.0)[0]  # noqa: E731
    point, active, _, value, taken = _qp_diff.polish_corrected(
        (x, y, z), active, data, (Qs, As, Gs, sc), absent, merit
    )
    return point, active, value, taken


def test_polishing_corrects_a_misidentified_active_set():
    # The answer (0.25, 0.75) has x₁ ≤ 0.3 inactive; an interior-point answer that ends
    # next to it with row 1 taken as active polishes to x₁ = 0.3 with a negative
    # multiplier: the row must leave the active set and polishing be tried again.
    x0, y0, z0 = jnp.array([0.2501, 0.7499]), jnp.array([0.125]), jnp.array([1e-4, 0.0])
    (x, y, z), active, merit, taken = _polish_from(x0, y0, z0, jnp.array([True, False]))
    assert bool(taken) and not bool(active[0])
    np.testing.assert_allclose(x, [0.25, 0.75], atol=1e-14)
    np.testing.assert_allclose(y, [0.125], atol=1e-14)
    assert float(merit) <= 1.0 and np.all(np.asarray(z) == 0.0)


def test_maros_meszaros_small_solved_and_derivatives_match_fd(name="ZECEVIC2"):
    # ZECEVIC2 (n = 2, 6 rows: QPTEST's shapes, whose compiled solve it shares); the
    # benchmark checks the same on all problems with n <= 100.
    pytest.importorskip("scipy.io")
    path = os.path.join(MM_DIR, name + ".mat")
    if not os.path.exists(path):
        pytest.skip("Maros–Meszaros problems not available")
    from benchmarks.maros_meszaros import grad_check, load, residuals

    _, data = load(path)
    args = tuple(jnp.asarray(v) for v in data)
    assert args[0].shape == (2, 2) and args[2].shape[0] == 0 and args[4].shape[0] <= 6
    x, info = solve2(*args)
    assert int(info.status) == S.SOLVED
    assert max(residuals(data, x, info.y[:0], info.z[: len(data[5])])) <= 1e-9
    err, smooth = grad_check(data, args, seed=0)
    assert smooth
    assert err <= 1e-6


# A face of minimisers: min x₁ + x₂ s.t. x₁ + x₂ ≥ 1, x ≥ 0 (Q = 0).
G_face, h_face = jnp.array([[-1.0, -1.0], [-1.0, 0.0], [0.0, -1.0]]), jnp.array([-1.0, 0.0, 0.0])
# A vertex with three active constraints in two dimensions: x = (1, 1).
G_dep, h_dep = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 1.0, 2.0])
e2 = jnp.zeros((0, 2)), jnp.zeros(0)


@jax.jit
def _flagged_derivatives(Q, q, G, h):
    """The answer, ``info.derivative``, ``∇_q x₁`` (check="warn"), ``∇_h x₁`` (check="nan")."""
    x, info = rootdiff.solve_qp(Q, q, *e2, G, h, return_info=True, check="off")
    x1 = lambda q, h, check: rootdiff.solve_qp(Q, q, *e2, G, h, check=check)[0]  # noqa: E731
    return x, info.derivative, jax.grad(x1)(q, h, "warn"), jax.grad(x1, argnums=1)(q, h, "nan")


def test_derivative_flags_where_no_derivative_exists():
    # A face of minimisers: x jumps when q moves, no derivative at all.
    with pytest.warns(rootdiff.ConvergenceWarning, match="derivative of solve_qp"):
        out = jax.block_until_ready(
            _flagged_derivatives(jnp.zeros((2, 2)), jnp.ones(2), G_face, h_face)
        )
    x, code, _, g_h = out
    assert abs(float(x.sum()) - 1.0) < 1e-9 and int(code) == S.NOT_UNIQUE
    assert np.isnan(g_h[0]) and np.all(g_h[1:] == 0.0)  # inactive rows: exactly zero
    # A vertex with three active rows: w.r.t. q the derivative exists (x stays: zero)
    # and is not flagged (a warning would fail the test); w.r.t. h it does not.
    Q, q = jnp.eye(2), jnp.array([-2.0, -2.0])
    x, code, g_q, g_h = _flagged_derivatives(Q, q, G_dep, h_dep)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-9)
    assert int(code) == S.DEPENDENT_CONSTRAINTS and np.all(np.isnan(g_h))
    np.testing.assert_allclose(g_q, [0.0, 0.0], atol=1e-12)
    # x₁ + x₂ ≤ 2.5: two active rows, exact derivatives (dx₁/dh₁ = 1)
    x, code, g_q, g_h = _flagged_derivatives(Q, q, G_dep, h_dep.at[2].set(2.5))
    assert int(code) == S.DERIVATIVE_EXACT
    np.testing.assert_allclose(g_h, [1.0, 0.0, 0.0], atol=1e-9)
