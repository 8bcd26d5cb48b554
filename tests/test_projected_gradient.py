"""Tests of rootdiff.projected_gradient: values against scipy / KKT, derivatives against FD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.projections as oproj
import optax.tree_utils
import pytest
from jax.test_util import check_grads

import rootdiff
from rootdiff.solvers.projected_gradient import projected_gradient

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.normal(size=(12, 5)))
X_TRUE = np.array([1.0, -0.5, 0.8, -0.3, 0.5])
B = jnp.asarray(np.asarray(A) @ X_TRUE + 0.1 * RNG.normal(size=12))
L = float(jnp.linalg.norm(A, 2) ** 2)  # Lipschitz constant of the least-squares gradient


def least_squares(x, A, b):
    return 0.5 * jnp.sum((A @ x - b) ** 2)


# Solutions accurate to 1e-12 so that central finite differences (eps 1e-6) are
# accurate to ~1e-6; the default tolerance is exercised by the float32 and closure tests.
TOL = 1e-12


@functools.partial(jax.jit, static_argnames=("fixed_step", "tol"))
def nnls(A, b, fixed_step=False, tol=TOL):
    step = 1.0 / L if fixed_step else None
    return projected_gradient(
        least_squares, jnp.zeros(A.shape[1], A.dtype), oproj.projection_non_negative, A, b,
        stepsize=step, tol=tol, return_info=True,
    )  # fmt: skip


# d/db Σ x*(b)²: shared (jitted once) by several tests
grad_sq_nnls = jax.jit(jax.grad(lambda b: jnp.sum(nnls(A, b)[0] ** 2)))


def box(y, hp):
    return oproj.projection_box(y, *hp)


@jax.jit
def box_ls(A, b, lo, hi):
    return projected_gradient(
        least_squares, jnp.zeros(5), box, A, b, hyperparams_proj=(lo, hi), tol=TOL
    )


# Simplex-constrained QP: min ½xᵀQx + qᵀx  s.t. x ≥ 0, Σx = s.
M = RNG.normal(size=(6, 6))
Q = jnp.asarray(M @ M.T / 6 + 0.5 * np.eye(6))
q = jnp.asarray(RNG.normal(size=6))


def quadratic(x, Q, q):
    return 0.5 * x @ Q @ x + q @ x


@jax.jit
def simplex_qp(Q, q, s):
    return projected_gradient(
        quadratic, jnp.zeros(6), oproj.projection_simplex, Q, q, hyperparams_proj=s, tol=TOL
    )


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("fixed_step", [False, True])
def test_nnls_matches_scipy(fixed_step):
    optimize = pytest.importorskip("scipy.optimize")
    x, info = nnls(A, B, fixed_step=fixed_step)
    ref, _ = optimize.nnls(np.asarray(A), np.asarray(B))
    assert bool(info.converged)
    assert float(info.residual) <= TOL
    assert 1 <= np.sum(ref == 0) < 5  # some constraints active, some not: a real test
    np.testing.assert_allclose(x, ref, atol=1e-7)
    if fixed_step:
        assert float(info.stepsize) == pytest.approx(1.0 / L)


def test_box_least_squares_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    lo, hi = -0.2 * jnp.ones(5), 0.6 * jnp.ones(5)
    x = box_ls(A, B, lo, hi)
    ref = optimize.lsq_linear(np.asarray(A), np.asarray(B), bounds=(lo, hi), tol=1e-14).x
    np.testing.assert_allclose(x, ref, atol=1e-7)
    assert np.any(np.isclose(ref, 0.6)) and np.any(np.isclose(ref, -0.2))


def kkt_solution(Q, q, s, support):
    """Solve the KKT system of the simplex QP restricted to ``support`` (reference)."""
    Qs, qs = np.asarray(Q)[np.ix_(support, support)], np.asarray(q)[support]
    k = len(support)
    K = np.block([[Qs, -np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    z = np.linalg.solve(K, np.concatenate([-qs, [s]]))
    x = np.zeros(len(q))
    x[support] = z[:k]
    return x, z[k]


def test_simplex_qp_satisfies_kkt():
    x = np.asarray(simplex_qp(Q, q, 1.0))
    support = np.flatnonzero(x > 1e-9)
    assert 1 < len(support) < 6
    ref, nu = kkt_solution(Q, q, 1.0, support)
    np.testing.assert_allclose(x, ref, atol=1e-8)
    # dual feasibility off the support: (Qx + q)_i - nu >= 0
    slack = np.asarray(Q) @ ref + np.asarray(q) - nu
    assert np.all(np.delete(slack, support) > 1e-6)


def test_pytree_params():
    """A dict of parameters solves the same problem as the flat vector."""
    fun = lambda p, A, b: least_squares(jnp.concatenate([p["u"], p["v"]]), A, b)
    init = {"u": jnp.zeros(2), "v": jnp.zeros(3)}
    sol = jax.jit(lambda A, b: projected_gradient(fun, init, oproj.projection_non_negative, A, b))
    p = sol(A, B)
    x, _ = nnls(A, B)
    np.testing.assert_allclose(jnp.concatenate([p["u"], p["v"]]), x, atol=1e-8)
    # derivative of a pytree solution: compare with the flat one
    g_tree = jax.jit(jax.grad(lambda b: optax.tree_utils.tree_norm(sol(A, b), squared=True)))(B)
    g_flat = grad_sq_nnls(B)
    np.testing.assert_allclose(g_tree, g_flat, atol=1e-8)


# --------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("fixed_step", [False, True])
def test_nnls_derivatives_match_finite_differences(fixed_step):
    f = lambda A, b: nnls(A, b, fixed_step=fixed_step)[0]
    check_grads(f, (A, B), order=1, modes=["fwd", "rev"], eps=1e-6)


def test_nnls_jacobian_closed_form():
    """On the support S, x_S = (A_Sᵀ A_S)⁻¹ A_Sᵀ b, so ∂x_S/∂b = pinv(A_S); zero off S."""
    x, _ = nnls(A, B)
    S = np.flatnonzero(np.asarray(x) > 1e-9)
    ref = np.zeros((5, 12))
    ref[S] = np.linalg.pinv(np.asarray(A)[:, S])
    f = lambda b: nnls(A, b)[0]
    np.testing.assert_allclose(jax.jacfwd(f)(B), ref, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(f)(B), ref, atol=1e-8)


def test_box_hyperparams_derivatives():
    """Derivatives w.r.t. the projection's hyperparameters (the bounds)."""
    lo, hi = -0.2 * jnp.ones(5), 0.6 * jnp.ones(5)
    check_grads(lambda b, lo, hi: box_ls(A, b, lo, hi), (B, lo, hi), order=1, eps=1e-6)
    x = box_ls(A, B, lo, hi)
    J_hi = jax.jacrev(box_ls, argnums=3)(A, B, lo, hi)
    at_upper = np.isclose(np.asarray(x), 0.6)
    assert at_upper.any()
    # coordinates at the upper bound move with it one for one
    np.testing.assert_allclose(np.diag(J_hi)[at_upper], 1.0, atol=1e-10)


def test_simplex_qp_all_modes():
    s = jnp.array(1.0)
    # second order is checked below through jax.hessian (check_grads order=2 compiles
    # too many eager nested transforms for the time budget)
    check_grads(simplex_qp, (Q, q, s), order=1, modes=["fwd", "rev"], eps=1e-5)
    jf = jax.jit(jax.jacfwd(simplex_qp, argnums=(1, 2)))(Q, q, s)
    # closed form: on the support, [Q_SS -1; 1ᵀ 0] [ẋ_S; ν̇] = [-q̇_S; ṡ]
    x = np.asarray(simplex_qp(Q, q, s))
    S = np.flatnonzero(x > 1e-9)
    k = len(S)
    K = np.block([[np.asarray(Q)[np.ix_(S, S)], -np.ones((k, 1))], [np.ones((1, k)), 0]])
    Kinv = np.linalg.inv(K)
    ref_q = np.zeros((6, 6))
    ref_q[np.ix_(S, S)] = -Kinv[:k, :k]
    np.testing.assert_allclose(jf[0], ref_q, atol=1e-8)
    np.testing.assert_allclose(jf[1][S], Kinv[:k, k], atol=1e-8)
    # hessian of a scalar loss of the solution w.r.t. q, against FD of its gradient
    loss = lambda q: jnp.sum(simplex_qp(Q, q, s) ** 3)
    H = jax.jit(jax.hessian(loss))(q)
    g = jax.jit(jax.vmap(jax.grad(loss)))
    eps = 1e-6
    E = eps * jnp.eye(6)
    H_fd = (g(q + E) - g(q - E)) / (2 * eps)
    np.testing.assert_allclose(H, H_fd, atol=1e-6)


def test_vmap_and_jit_match_loop():
    bs = jnp.asarray(RNG.normal(size=(4, 12)))
    batched = jax.vmap(lambda b: nnls(A, b)[0])(bs)
    looped = jnp.stack([nnls(A, b)[0] for b in bs])
    np.testing.assert_allclose(batched, looped, atol=1e-8)
    grads = jax.jit(jax.vmap(jax.grad(lambda b: jnp.sum(nnls(A, b)[0] ** 2))))(bs)
    ref = jnp.stack([grad_sq_nnls(b) for b in bs])
    np.testing.assert_allclose(grads, ref, atol=1e-8)


def test_closed_over_tracer_is_differentiated():
    """``fun`` closing over a differentiated array gets its derivative too."""

    def solve_closure(b):
        fun = lambda x: least_squares(x, A, b)
        return projected_gradient(fun, jnp.zeros(5), oproj.projection_non_negative)

    g_closure = jax.jit(jax.grad(lambda b: jnp.sum(solve_closure(b) ** 2)))(B)
    g_args = grad_sq_nnls(B)
    np.testing.assert_allclose(g_closure, g_args, atol=1e-8)


# --------------------------------------------------------------------------- status, float32


def test_non_convergence_is_reported():
    run = lambda: projected_gradient(
        least_squares, jnp.zeros(5), oproj.projection_non_negative, A, B, maxiter=3,
        return_info=True,
    )  # fmt: skip
    with pytest.warns(rootdiff.ConvergenceWarning):
        _, info = run()
    assert not bool(info.converged) and int(info.iterations) == 3
    assert float(info.residual) > 1e-6


def test_invalid_options():
    with pytest.raises(ValueError, match="backtrack"):
        projected_gradient(least_squares, jnp.zeros(5), oproj.projection_non_negative, A, B,
                           backtrack=1.5)  # fmt: skip


def test_float32(float32):
    optimize = pytest.importorskip("scipy.optimize")
    A32, B32 = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
    x, info = nnls(A32, B32, tol=None)
    assert x.dtype == jnp.float32 and bool(info.converged)
    ref, _ = optimize.nnls(np.asarray(A, np.float64), np.asarray(B, np.float64))
    assert float(info.residual) <= 0.25 * np.sqrt(np.finfo(np.float32).eps)
    np.testing.assert_allclose(x, ref, atol=1e-3)
    x_fixed, _ = nnls(A32, B32, fixed_step=True, tol=None)
    np.testing.assert_allclose(x_fixed, ref, atol=1e-3)
    g = jax.grad(lambda b: jnp.sum(nnls(A32, b, tol=None)[0] ** 2))(B32)
    S = np.flatnonzero(ref > 1e-9)
    P = np.linalg.pinv(np.asarray(A, np.float64)[:, S])
    np.testing.assert_allclose(g, 2 * P.T @ ref[S], atol=1e-3)


# --------------------------------------------------------------------------- honest status


def test_ill_conditioned_start_is_not_accepted():
    """A tiny step must not make the starting point look converged.

    ``f = ½(1e8 x₀² + x₁²) − a·x`` on ``x ≥ 0`` has solution ``(3e-9, 0.3)``; the step is
    ~1e-8, so ``|T(x₀) − x₀|`` is ~3e-9 at ``x₀ = 0``. The scale-aware test (gradient
    mapping relative to its start) either reaches the solution or reports failure.
    """
    f = lambda x, a: 0.5 * (1e8 * x[0] ** 2 + x[1] ** 2) - a @ x  # noqa: E731
    a = jnp.array([0.3, 0.3])
    with pytest.warns(rootdiff.ConvergenceWarning, match="projected_gradient"):
        x, info = projected_gradient(
            f, jnp.zeros(2), oproj.projection_non_negative, a, maxiter=50, return_info=True
        )
    assert not bool(info.converged)
    assert float(info.optimality) > float(info.threshold)
    # With a fixed step 1/L and many iterations it reaches the solution to within the
    # rounding floor of the step (η|∇f| below eps·|x|), and says that it stopped there.
    x, info = projected_gradient(
        f, jnp.zeros(2), oproj.projection_non_negative, a, stepsize=1e-8, maxiter=100000,
        return_info=True, check="off",
    )  # fmt: skip
    np.testing.assert_allclose(x, [3e-9, 0.3], rtol=1e-6)
    assert bool(info.converged) or bool(info.step_collapsed)


def test_non_smooth_objective_collapsed_step_is_flagged():
    f = lambda x, a: jnp.sum(jnp.abs(x - a))  # noqa: E731
    with pytest.warns(rootdiff.ConvergenceWarning, match="line search found no step"):
        _, info = projected_gradient(
            f, jnp.zeros(2), oproj.projection_non_negative, jnp.array([0.3, 0.7]),
            return_info=True,
        )  # fmt: skip
    assert bool(info.step_collapsed) and not bool(info.converged)


def test_projection_must_keep_the_shape():
    proj = lambda y, hp: jnp.maximum(y, hp)  # noqa: E731
    with pytest.raises(ValueError, match=r"shaped like init.*\(3, 3\)"):
        projected_gradient(least_squares, jnp.zeros(3), proj, A[:, :3], B,
                           hyperparams_proj=jnp.zeros((3, 1)))  # fmt: skip


def test_infeasible_projection_reports_once_per_call():
    """An empty set under jit: NaN and a handful of reports, not one per iteration."""
    import warnings

    from rootdiff.projections import projection_box_section

    proj = lambda y, total: projection_box_section(y, total, 0.0, 1.0)  # noqa: E731
    run = jax.jit(lambda b: projected_gradient(least_squares, jnp.zeros(5), proj, A, b,
                                               hyperparams_proj=50.0))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = run(B)
    assert bool(jnp.all(jnp.isnan(x)))
    reports = [w for w in caught if issubclass(w.category, rootdiff.ConvergenceWarning)]
    assert 1 <= len(reports) <= 3, [str(w.message)[:80] for w in reports]


# --------------------------------------------------------------------------- jaxopt-style calls


def test_keyword_arguments_and_jaxopt_projection_conventions():
    fun = lambda x, *, c: 0.5 * jnp.sum((x - c) ** 2)  # noqa: E731
    c = jnp.array([1.0, -1.0, 2.0])
    x = projected_gradient(fun, jnp.zeros(3), oproj.projection_non_negative, c=c)
    np.testing.assert_allclose(x, [1.0, 0.0, 2.0], atol=1e-7)
    # optax's projection_box(y, lower, upper) with jaxopt's hyperparams_proj=(lower, upper)
    x = projected_gradient(fun, jnp.zeros(3), oproj.projection_box, c=c,
                           hyperparams_proj=(0.0, 1.5))  # fmt: skip
    np.testing.assert_allclose(x, [1.0, 0.0, 1.5], atol=1e-7)
    # a two-argument projection with hyperparams_proj=None
    x = projected_gradient(fun, jnp.zeros(3), lambda y, hp: jnp.maximum(y, 0.0), c=c)
    np.testing.assert_allclose(x, [1.0, 0.0, 2.0], atol=1e-7)
    g = jax.grad(
        lambda c: jnp.sum(
            projected_gradient(
                fun, jnp.zeros(3), oproj.projection_box, c=c, hyperparams_proj=(0.0, 1.5)
            )
        )
    )(c)
    np.testing.assert_allclose(g, [1.0, 0.0, 0.0], atol=1e-7)


def test_repeated_eager_calls_do_not_retrace():
    # Re-tracing the solver's loop on every call without jax.jit cost 1.6–6.3 s per
    # call; count the traces of the objective (a Python side effect runs once per
    # trace) rather than timing the calls.
    traces = []

    def counted(x, A, b):
        traces.append(1)
        return least_squares(x, A, b)

    run = lambda b: projected_gradient(  # noqa: E731
        counted, jnp.zeros(5), oproj.projection_non_negative, A, b
    )
    run(B).block_until_ready()
    first = len(traces)
    assert first > 0
    for k in range(3):
        run(B + 0.01 * k).block_until_ready()
    assert len(traces) == first
