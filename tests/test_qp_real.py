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
# Compiles dominate this module: every problem below is posed on one padded shape
# (2 variables, 2 equality rows, 6 inequality rows), solved by one compiled forward
# program (``solve2``) and differentiated by one compiled derivative program
# (``probe``). Padding rows are ``0ᵀx = 0`` and absent rows (``h = +inf``): the same
# problem.
info_off = jax.jit(lambda *a: rootdiff.solve_qp(*a, return_info=True, check="off"))
# jax.jit of solve_qp itself (qpax's usage), shared by the tests that call it.
solve_jit = jax.jit(rootdiff.solve_qp)


def pad2(A=None, b=None, G=None, h=None):
    """``(A, b, G, h)`` of a two-variable problem padded to 2 equality and 6 inequality rows."""
    A = jnp.zeros((0, 2)) if A is None else jnp.asarray(A, float).reshape(-1, 2)
    b = jnp.zeros(0) if b is None else jnp.asarray(b, float).reshape(-1)
    G = jnp.zeros((0, 2)) if G is None else jnp.asarray(G, float).reshape(-1, 2)
    h = jnp.zeros(0) if h is None else jnp.asarray(h, float).reshape(-1)
    A = jnp.concatenate([A, jnp.zeros((2 - A.shape[0], 2))])
    b = jnp.concatenate([b, jnp.zeros(2 - b.shape[0])])
    G = jnp.concatenate([G, jnp.zeros((6 - G.shape[0], 2))])
    h = jnp.concatenate([h, jnp.full(6 - h.shape[0], jnp.inf)])
    return A, b, G, h


def solve2(Q, q, A=None, b=None, G=None, h=None):
    """``info_off`` on a two-variable problem padded by :func:`pad2`."""
    return info_off(jnp.asarray(Q, float), jnp.asarray(q, float), *pad2(A, b, G, h))


@jax.jit
def _probe(Q, q, A, b, G, h, c, dq, dh):
    # x, info, ∇(cᵀx) w.r.t. (q, b, h) by reverse mode, and the forward-mode tangent
    # of x along (dq, 0, dh): every autodiff mode in one compiled program.
    def f(q, b, h):
        return rootdiff.solve_qp(Q, q, A, b, G, h, return_info=True, check="off")

    # One forward solve: the tangent map at the answer, and reverse mode as its transpose
    # (what jax.grad does through solve_qp's derivative rule).
    (x, info), lin = jax.linearize(f, q, b, h)
    tangent = lambda dq, db, dh: lin(dq, db, dh)[0]  # noqa: E731
    t = tangent(dq, jnp.zeros_like(b), dh)
    grads = jax.linear_transpose(tangent, q, b, h)(c)
    return x, info, grads, t


def probe(Q, q, A=None, b=None, G=None, h=None, c=(1.0, 0.0), dq=(0.0, 0.0), dh=None):
    """:func:`_probe` on the padded problem; the gradient w.r.t. ``h`` is cut to its rows."""
    A, b, G, h_pad = pad2(A, b, G, h)
    dh = jnp.zeros(6) if dh is None else jnp.concatenate([jnp.asarray(dh, float),
                                                          jnp.zeros(6 - len(dh))])  # fmt: skip
    as_f = lambda v: jnp.asarray(v, float)  # noqa: E731
    x, info, (gq, gb, gh), t = _probe(as_f(Q), as_f(q), A, b, G, h_pad, as_f(c), as_f(dq), dh)
    m = 0 if h is None else len(h)
    return x, info, (gq, gb, gh[:m]), t


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
    # x₁ ≤ 0.3 inactive, x₂ ≤ inf absent: zero cotangents (reverse) and zero tangents
    # (forward) w.r.t. h; w.r.t. q the gradient matches central differences.
    h, c = jnp.array([0.3, jnp.inf]), jnp.array([1.0, 2.0])
    x, info, (gq, _, gh), t = probe(Q2, q2, A2, b2, G2, h, c=c, dh=[1.0, -2.0])
    np.testing.assert_allclose(x, [0.25, 0.75], atol=1e-10)
    assert np.all(np.asarray(gh) == 0.0) and np.all(np.asarray(t) == 0.0)
    fd = _fd_grad(lambda q: solve2(Q2, q, A2, b2, G2, h)[0] @ c, q2)
    np.testing.assert_allclose(gq, fd, atol=1e-7)
    # forward mode w.r.t. q: J_q e₁ = −(K⁻¹)[:2, 0] (equality-constrained answer)
    K = jnp.block([[Q2, A2.T], [A2, jnp.zeros((1, 1))]])
    _, _, _, t = probe(Q2, q2, A2, b2, G2, h, dq=[1.0, 0.0])
    np.testing.assert_allclose(t, -jnp.linalg.inv(K)[:2, 0], atol=1e-9)


def test_qpax_issue_qptest_with_inf_in_h():
    # Maros–Meszaros QPTEST as posed in qpax's bug reports (x₂ ≤ +inf); qpax's answer.
    Q = jnp.array([[8.0, 2.0], [2.0, 10.0]])
    q = jnp.array([1.5, -2.0])
    G = jnp.array([[-1.0, 2.0], [-2.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    h = jnp.array([6.0, -2.0, 20.0, jnp.inf, 0.0, 0.0])
    x, info, (_, _, g), _ = probe(Q, q, None, None, G, h, c=jnp.ones(2))
    np.testing.assert_allclose(x, [0.7625, 0.4750], atol=1e-10)
    assert int(info.status) == S.SOLVED
    assert np.all(np.isfinite(g)) and float(g[3]) == 0.0


def test_tiny_data_is_scaled_not_lost():
    s = 1e-8
    h = jnp.array([0.3, 1.0]) * s
    # dx/dq of the equality-constrained problem (x₁ ≤ 0.3 s inactive): −(K⁻¹)[:2, :2]
    K = jnp.block([[Q2, A2.T], [A2, jnp.zeros((1, 1))]])
    dxdq = -jnp.linalg.inv(K)[:2, :2]
    for k in range(2):
        e = jnp.eye(2)[k]
        x, info, (gq, _, _), t = probe(Q2, q2 * s, A2, b2 * s, G2, h, c=e, dq=e)
        np.testing.assert_allclose(x / s, [0.25, 0.75], atol=1e-8)
        assert int(info.status) == S.SOLVED
        np.testing.assert_allclose(t, dxdq[:, k], atol=1e-8)  # forward: column k
        np.testing.assert_allclose(gq, dxdq[k], atol=1e-8)  # reverse: row k


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

    @jax.jit
    def eq(Q, q, A, b):
        # (no inequality rows at all: their absence is what used to fail)
        x, info = rootdiff.solve_qp(Q, q, A, b, None, None, return_info=True)
        # dx/db does not exist (the copies can be changed apart): reported, here silenced
        eq_off = lambda b: rootdiff.solve_qp(Q, q, A, b, None, None, check="off")  # noqa: E731
        return x, info, jax.grad(lambda b: eq_off(b)[0])(b)

    x, info, g = eq(jnp.eye(2), q2, A, b)
    assert int(info.status) == S.SOLVED
    assert int(info.derivative) == S.DEPENDENT_CONSTRAINTS
    np.testing.assert_allclose(x, [0.5, 0.5], atol=1e-9)
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
    # min −x₂ s.t. x₁ ≤ 0 (and 0ᵀx = 0: the shapes of the qpax-style call below)
    with pytest.warns(rootdiff.ConvergenceWarning) as rec:
        jax.block_until_ready(solve_jit(jnp.zeros((2, 2)), jnp.array([0.0, -1.0]), jnp.zeros(2),
                                        jnp.zeros(1), jnp.array([1.0, 0.0]), jnp.array(0.0),
                                        tol=0.0, atol=1e-9, return_info=True))  # fmt: skip
    msg = str(rec[0].message)
    assert "unbounded" in msg and "residual 0.000e+00" not in msg


def test_check_nan_poisons_value():
    # x₁ ≤ 0 and x₁ ≥ 1 (a third, absent row: the shapes of _flagged_derivatives)
    G = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    h = jnp.array([0.0, -1.0, jnp.inf])
    with pytest.warns(rootdiff.ConvergenceWarning):
        out = jax.block_until_ready(_flagged_derivatives(jnp.eye(2), q2, G, h))
    assert np.isnan(out[4])  # x₁ under check="nan"


def test_qpax_style_calls_and_messages():
    with pytest.raises(ValueError, match=r"Q has shape \(2, 2\).*q of shape \(3,\)"):
        rootdiff.solve_qp(Q2, jnp.ones(3), None, None, None, None)
    # jax.jit of the function itself, with the info, at qpax's absolute tolerance, with
    # 1-D A and G for one row (qpax's style)
    x, info = solve_jit(
        Q2, q2, jnp.array([1.0, 1.0]), b2, jnp.array([1.0, 0.0]), jnp.array(0.3),
        tol=0.0, atol=1e-9, return_info=True,
    )  # fmt: skip
    assert int(info.status) == S.SOLVED
    np.testing.assert_allclose(x, [0.25, 0.75], atol=1e-10)
    assert max(float(info.primal_residual), float(info.dual_residual), float(info.gap)) <= 1e-9


def test_elastic_mode_feasible_and_infeasible_with_derivatives():
    G = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
    h_ok, h_bad = jnp.array([0.5, 0.0]), jnp.array([0.0, -1.0])
    Q, q, w = jnp.eye(2), jnp.array([-1.0, -1.0]), jnp.array([1.0, 3.0])

    @jax.jit
    def elastic(h, lam, dh):
        # the answer, ∇(wᵀx) w.r.t. (h, λ) and the tangent of x along dh: one program
        el = lambda h, lam: rootdiff.solve_qp(Q, q, None, None, G, h, elastic=lam)  # noqa: E731
        x, t = jax.jvp(lambda h: el(h, lam), (h,), (dh,))
        return x, jax.grad(lambda h, lam: el(h, lam) @ w, argnums=(0, 1))(h, lam), t

    dh = jnp.array([1.0, -0.5])
    # feasible, λ above the multipliers: the QP's own answer
    np.testing.assert_allclose(elastic(h_ok, 10.0, dh)[0], [0.5, 1.0], atol=1e-9)
    # infeasible: x₁ ≤ 0 and x₁ ≥ 1 → minimise ½x₁² − x₁ + λ(x₁₊ + (1 − x₁)₊): x₁ = 1 (λ=2)
    np.testing.assert_allclose(elastic(h_bad, 2.0, dh)[0], [1.0, 1.0], atol=1e-8)
    # derivatives (reverse, forward) against finite differences, w.r.t. h and λ
    h_mid, lam = jnp.array([0.0, -0.5]), 0.3  # infeasible, kink-free
    _, g, t = elastic(h_mid, lam, dh)
    loss = lambda h, l_: elastic(h, l_, dh)[0] @ w  # noqa: E731
    np.testing.assert_allclose(g[0], _fd_grad(lambda h: loss(h, lam), h_mid), atol=1e-6)
    np.testing.assert_allclose(
        g[1], _fd_grad(lambda l_: loss(h_mid, l_), jnp.array(lam)), atol=1e-6
    )
    eps = 1e-6
    fd_t = (elastic(h_mid + eps * dh, lam, dh)[0] - elastic(h_mid - eps * dh, lam, dh)[0]) / (
        2 * eps
    )
    np.testing.assert_allclose(t, fd_t, atol=1e-6)
    np.testing.assert_allclose(t @ w, g[0] @ dh, atol=1e-9)


def test_warm_start_saves_iterations_and_has_zero_derivative():
    rng = np.random.default_rng(0)
    n, m = 6, 10
    F = rng.normal(size=(n, n))
    Q = jnp.asarray(F @ F.T + np.eye(n))
    G = jnp.asarray(rng.normal(size=(m, n)))
    h = jnp.asarray(rng.uniform(0.1, 1.0, m))
    q0 = jnp.asarray(rng.normal(size=n))
    cold = jax.jit(lambda q: rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True))

    @jax.jit
    def warm(q, init):
        # the warm-started answer and the gradient of its sum w.r.t. the initial x
        def solve(x0):
            return rootdiff.solve_qp(Q, q, None, None, G, h, init=(x0, init[1]), return_info=True)

        (x, info), g_init = solve(init[0]), jax.grad(lambda x0: solve(x0)[0].sum())(init[0])
        return x, info, g_init

    x, info = cold(q0)
    q1 = q0 + 1e-3
    xw, iw, g_init = warm(q1, (x, info))
    xc, ic = cold(q1)
    np.testing.assert_allclose(xw, xc, atol=1e-9)
    assert int(iw.status) == S.SOLVED
    assert int(iw.iterations) < int(ic.iterations)
    assert np.all(np.asarray(g_init) == 0.0)


MM_DIR = os.environ.get("MAROS_MESZAROS_DIR", "/work/shared/maros_meszaros")


@jax.jit
def _polish_from(x, y, z, active):
    from rootdiff.solvers import _ipm, _qp_diff

    h = jnp.array([0.3, 1.0])
    data = (Q2, q2, A2, b2, G2, h)
    absent = _ipm.absent_rows(h)
    (Qs, _, As, _, Gs, _), sc = _ipm.equilibrate(*data, absent)
    merit = lambda v: _ipm.merit(*data, absent, *v, 1e-10, 0.0)  # noqa: E731
    point, active, _, (value, *_), taken, _ = _qp_diff.polish_and_probe(
        (x, y, z), active, data, (Qs, As, Gs, sc), absent, merit, probe=False
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
    # ZECEVIC2 (n = 2, 6 rows: the shapes of the shared programs); the benchmark checks
    # the same on all problems with n <= 100.
    pytest.importorskip("scipy.io")
    path = os.path.join(MM_DIR, name + ".mat")
    if not os.path.exists(path):
        pytest.skip("Maros–Meszaros problems not available")
    from benchmarks.maros_meszaros import load, residuals

    _, (Q, q, A, b, G, h) = load(path)
    assert Q.shape == (2, 2) and A.shape[0] == 0 and G.shape[0] <= 6
    rng = np.random.default_rng(0)
    c, dq, dh = rng.standard_normal(2), rng.standard_normal(2), rng.standard_normal(len(h))
    x, info, (gq, _, gh), t = probe(Q, q, None, None, G, h, c=c, dq=dq, dh=dh)
    assert int(info.status) == S.SOLVED
    assert max(residuals((Q, q, A, b, G, h), x, info.y[:0], info.z[: len(h)])) <= 1e-9
    # directional derivative along (dq, dh): forward, reverse and central differences
    eps = 1e-6

    def at(e):
        return np.asarray(solve2(Q, q + e * dq, None, None, G, h + e * dh)[0])

    fw, bw = (at(eps) - np.asarray(x)) / eps, (np.asarray(x) - at(-eps)) / eps
    np.testing.assert_allclose(fw, bw, atol=1e-6)  # smooth: no kink within the step
    central = (fw + bw) / 2
    scale = max(np.abs(central).max(), 1.0)
    assert np.abs(np.asarray(t) - central).max() <= 1e-6 * scale
    assert abs(float(gq @ dq + gh @ dh) - float(c @ central)) <= 1e-6 * scale * np.abs(c).sum()


def test_maros_meszaros_exact_gap_sees_below_the_float64_floor():
    # The benchmark's exact gap of a point whose terms (≈ 1.2e8) cancel: against a
    # closed form in rational arithmetic, while the float64 scoring's own evaluation is
    # off by more than 1e-9 (the floor the benchmark reports: float64 numbers of that
    # size are 1.5e-8 apart).
    from fractions import Fraction as F

    from benchmarks.maros_meszaros import exact_gap, gap_terms, residuals

    a, c = 11001.123456789012, 3.0000000000000004
    Q, q = np.array([[c, 0.0], [0.0, 0.0]]), np.array([0.0, 1.0])
    A, b = np.array([[1.0, 0.0]]), np.array([-c * a])  # b·y ≈ −c a²
    G, h = np.array([[0.0, 1.0]]), np.array([0.5])
    x, y, z = np.array([a, 0.25]), np.array([a]), np.array([-0.5])
    data = (Q, q, A, b, G, h)
    exact = F(c) * F(a) ** 2 + F(0.25) + F(b[0]) * F(a) + F(0.5) * F(-0.5)
    assert exact_gap(data, x, y, z) == float(exact) != 0.0
    assert np.spacing(np.max(np.abs(gap_terms(data, x, y, z)))) > 1e-8
    assert abs(residuals(data, x, y, z)[2] - abs(float(exact))) > 1e-9


# A face of minimisers: min x₁ + x₂ s.t. x₁ + x₂ ≥ 1, x ≥ 0 (Q = 0).
G_face, h_face = jnp.array([[-1.0, -1.0], [-1.0, 0.0], [0.0, -1.0]]), jnp.array([-1.0, 0.0, 0.0])
# A vertex with three active constraints in two dimensions: x = (1, 1).
G_dep, h_dep = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 1.0, 2.0])
e2 = jnp.zeros((0, 2)), jnp.zeros(0)


@jax.jit
def _flagged_derivatives(Q, q, G, h):
    """The answer, ``info.derivative``, ``∇_q x₁`` (check="warn"), ``∇_h x₁`` and ``x₁``
    (check="nan")."""
    x, info = rootdiff.solve_qp(Q, q, *e2, G, h, return_info=True, check="off")
    x1 = lambda q, h, check: rootdiff.solve_qp(Q, q, *e2, G, h, check=check)[0]  # noqa: E731
    x1_nan, g_h = jax.value_and_grad(x1, argnums=1)(q, h, "nan")
    return x, info.derivative, jax.grad(x1)(q, h, "warn"), g_h, x1_nan


def test_derivative_flags_where_no_derivative_exists():
    # A face of minimisers: x jumps when q moves, no derivative at all.
    with pytest.warns(rootdiff.ConvergenceWarning, match="derivative of solve_qp"):
        out = jax.block_until_ready(
            _flagged_derivatives(jnp.zeros((2, 2)), jnp.ones(2), G_face, h_face)
        )
    x, code, _, g_h, _ = out
    assert abs(float(x.sum()) - 1.0) < 1e-9 and int(code) == S.NOT_UNIQUE
    assert np.isnan(g_h[0]) and np.all(g_h[1:] == 0.0)  # inactive rows: exactly zero
    # A vertex with three active rows: w.r.t. q the derivative exists (x stays: zero)
    # and is not flagged (a warning would fail the test); w.r.t. h it does not.
    Q, q = jnp.eye(2), jnp.array([-2.0, -2.0])
    x, code, g_q, g_h, _ = _flagged_derivatives(Q, q, G_dep, h_dep)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-9)
    assert int(code) == S.DEPENDENT_CONSTRAINTS and np.all(np.isnan(g_h))
    np.testing.assert_allclose(g_q, [0.0, 0.0], atol=1e-12)
    # x₁ + x₂ ≤ 2.5: two active rows, exact derivatives (dx₁/dh₁ = 1)
    x, code, g_q, g_h, _ = _flagged_derivatives(Q, q, G_dep, h_dep.at[2].set(2.5))
    assert int(code) == S.DERIVATIVE_EXACT
    np.testing.assert_allclose(g_h, [1.0, 0.0, 0.0], atol=1e-9)
