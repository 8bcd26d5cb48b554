r"""``rootdiff.argmin`` in every autodiff mode, against closed forms and finite differences.

The main reference is ridge regression,

.. math:: x^*(λ, X, y) = \operatorname{argmin}_x \tfrac12\lVert Xx - y\rVert^2
          + \tfrac{λ}{2}\lVert x\rVert^2 = (X^⊤X + λI)^{-1} X^⊤ y,

whose derivatives are taken by autodiff through the closed form ``jnp.linalg.solve``.
The decorated minimisers return ``stop_gradient`` of their answer, so a derivative can
only come from rootdiff's implicit rule: a test passes only if the rule is right.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rootdiff
from rootdiff import linear_solve

N_SAMPLES, N_FEATURES = 12, 5
RTOL = 1e-9


def ridge_objective(x, lam, X, y):
    return 0.5 * jnp.sum((X @ x - y) ** 2) + 0.5 * lam * jnp.sum(x**2)


def ridge_closed_form(lam, X, y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


def black_box_ridge(x0, lam, X, y):
    """A minimiser whose output carries no autodiff information of its own."""
    del x0
    return jax.lax.stop_gradient(ridge_closed_form(lam, X, y))


ridge = rootdiff.argmin(ridge_objective)(black_box_ridge)
ridge_cg = rootdiff.argmin(ridge_objective, solve="cg")(black_box_ridge)
ridge_cholesky = rootdiff.argmin(ridge_objective, solve="cholesky")(black_box_ridge)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(N_SAMPLES, N_FEATURES)))
    y = jnp.asarray(rng.normal(size=N_SAMPLES))
    return jnp.asarray(0.7), X, y


X0 = jnp.zeros(N_FEATURES)
SOLVERS = {"auto": ridge, "cg": ridge_cg, "cholesky": ridge_cholesky}


# A scalar loss of the solution, used for grad/hessian (weights make every x_i matter).
def loss_of(solution):
    w = jnp.arange(1.0, N_FEATURES + 1)
    return jnp.sum(w * jnp.sin(solution)) + jnp.sum(solution**2)


@jax.jit
def _grads(lam, X, y):
    out = {}
    for name, fn in SOLVERS.items():
        out[name] = jax.grad(lambda *a: loss_of(fn(X0, *a)), argnums=(0, 1, 2))(lam, X, y)
    out["reference"] = jax.grad(lambda *a: loss_of(ridge_closed_form(*a)), argnums=(0, 1, 2))(
        lam, X, y
    )
    return out


def test_value_matches_closed_form(data):
    lam, X, y = data
    for fn in SOLVERS.values():
        np.testing.assert_allclose(fn(X0, lam, X, y), ridge_closed_form(lam, X, y), rtol=1e-12)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_grad_all_arguments(data, name):
    grads = _grads(*data)
    for got, want in zip(grads[name], grads["reference"]):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12)
    assert float(jnp.abs(grads[name][0])) > 1e-3  # the λ-gradient is not trivially zero


def test_jvp_closed_form_derivative(data):
    """``dx*/dλ = −(XᵀX + λI)⁻¹ x*``."""
    lam, X, y = data
    x, x_dot = jax.jit(lambda lam, t: jax.jvp(lambda lam: ridge(X0, lam, X, y), (lam,), (t,)))(
        lam, jnp.asarray(1.0)
    )
    want = -jnp.linalg.solve(X.T @ X + lam * jnp.eye(N_FEATURES), x)
    np.testing.assert_allclose(x_dot, want, rtol=RTOL)


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_jacobian_wrt_targets_is_the_hat_operator(data, jac):
    """``∂x*/∂y = (XᵀX + λI)⁻¹ Xᵀ`` exactly."""
    lam, X, y = data
    J = jax.jit(jac(lambda y: ridge(X0, lam, X, y)))(y)
    want = jnp.linalg.solve(X.T @ X + lam * jnp.eye(N_FEATURES), X.T)
    np.testing.assert_allclose(J, want, rtol=RTOL, atol=1e-13)


def test_jacrev_wrt_design_matrix(data):
    lam, X, y = data
    J = jax.jit(jax.jacrev(lambda X: ridge(X0, lam, X, y)))(X)
    want = jax.jit(jax.jacrev(lambda X: ridge_closed_form(lam, X, y)))(X)
    np.testing.assert_allclose(J, want, rtol=RTOL, atol=1e-12)


def test_hessian(data):
    """Second derivatives in (λ, y) of a loss of the solution vs the closed form."""
    lam, X, y = data
    pack = lambda v: (v[0], v[1:])
    f = lambda v: loss_of(ridge(X0, pack(v)[0], X, pack(v)[1]))
    f_ref = lambda v: loss_of(ridge_closed_form(pack(v)[0], X, pack(v)[1]))
    v = jnp.concatenate([lam[None], y])
    H, H_ref = jax.jit(jax.hessian(f))(v), jax.jit(jax.hessian(f_ref))(v)
    np.testing.assert_allclose(H, H_ref, rtol=1e-8, atol=1e-11)


def test_check_grads_order_two(data):
    """jax.test_util.check_grads: finite differences, forward and reverse, to order 2."""
    lam, X, y = data
    f = jax.jit(lambda lam, y: ridge(X0, lam, X, y))
    check_grads(f, (lam, y), order=2, modes=("fwd", "rev"))


def test_vmap_and_vmap_of_grad(data):
    lam, X, y = data
    lams = jnp.array([0.1, 0.7, 3.0])
    xs = jax.jit(jax.vmap(lambda lam: ridge(X0, lam, X, y)))(lams)
    xs_ref = jax.vmap(lambda lam: ridge_closed_form(lam, X, y))(lams)
    np.testing.assert_allclose(xs, xs_ref, rtol=1e-12)
    g = jax.jit(jax.vmap(jax.grad(lambda lam: loss_of(ridge(X0, lam, X, y)))))(lams)
    g_ref = jax.vmap(jax.grad(lambda lam: loss_of(ridge_closed_form(lam, X, y))))(lams)
    np.testing.assert_allclose(g, g_ref, rtol=RTOL)


def test_vmap_over_data(data):
    lam, X, _ = data
    ys = jnp.asarray(np.random.default_rng(1).normal(size=(4, N_SAMPLES)))
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda y: ridge(X0, lam, X, y))))(ys)
    want = jnp.linalg.solve(X.T @ X + lam * jnp.eye(N_FEATURES), X.T)
    np.testing.assert_allclose(jac, jnp.broadcast_to(want, jac.shape), rtol=RTOL, atol=1e-13)


# ----------------------------------------------------------------------------- solvers


def test_forced_cg_path_is_used(data):
    """A spy around CG proves the derivative's linear solve went through it."""
    calls = []

    def spy_cg(matvec, b, **kw):
        calls.append(b.shape if hasattr(b, "shape") else None)
        return linear_solve.cg(matvec, b, **kw)

    fn = rootdiff.argmin(ridge_objective, solve=spy_cg)(black_box_ridge)
    lam, X, y = data
    g = jax.jit(jax.grad(lambda lam: loss_of(fn(X0, lam, X, y))))(lam)
    g_ref = _grads(lam, X, y)["reference"][0]
    assert calls, "the user-supplied linear solver was never called"
    np.testing.assert_allclose(g, g_ref, rtol=RTOL)


def test_auto_above_dense_threshold_uses_cg(monkeypatch):
    """``solve="auto"`` on more than DENSE_THRESHOLD unknowns: matrix-free CG, exact."""
    n = linear_solve.DENSE_THRESHOLD + 10
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.normal(size=(n + 20, n)) / np.sqrt(n))
    y = jnp.asarray(rng.normal(size=n + 20))
    calls = []
    original = linear_solve.cg

    def spy_cg(matvec, b, **kw):
        calls.append(jnp.size(b))
        return original(matvec, b, **kw)

    monkeypatch.setattr(linear_solve, "cg", spy_cg)
    fn = rootdiff.argmin(ridge_objective)(black_box_ridge)
    x0 = jnp.zeros(n)
    g = jax.jit(jax.grad(lambda lam: jnp.sum(fn(x0, lam, X, y) ** 2)))(jnp.asarray(0.5))
    g_ref = jax.jit(jax.grad(lambda lam: jnp.sum(ridge_closed_form(lam, X, y) ** 2)))(0.5)
    assert calls and calls[0] == n
    np.testing.assert_allclose(g, g_ref, rtol=1e-8)


# ----------------------------------------------------------------------------- pytrees, aux


def tree_objective(p, theta, X1, X2):
    """Ridge on two blocks of features with separate penalties; params and args are dicts."""
    residual = X1 @ p["a"] + X2 @ p["b"] - theta["y"]
    penalty = theta["lam"][0] * jnp.sum(p["a"] ** 2) + theta["lam"][1] * jnp.sum(p["b"] ** 2)
    return 0.5 * jnp.sum(residual**2) + 0.5 * penalty


def tree_closed_form(theta, X1, X2):
    X = jnp.concatenate([X1, X2], axis=1)
    d = jnp.concatenate(
        [jnp.full(X1.shape[1], theta["lam"][0]), jnp.full(X2.shape[1], theta["lam"][1])]
    )
    x = jnp.linalg.solve(X.T @ X + jnp.diag(d), X.T @ theta["y"])
    return {"a": x[: X1.shape[1]], "b": x[X1.shape[1] :]}


@pytest.mark.parametrize("solve", ["auto", "cg"])
def test_pytree_params_and_args(data, solve):
    _, X, y = data
    X1, X2 = X[:, :3], X[:, 3:]
    theta = {"lam": jnp.array([0.3, 2.0]), "y": y}

    @rootdiff.argmin(tree_objective, solve=solve)
    def fit(p0, theta, X1, X2):
        return jax.lax.stop_gradient(tree_closed_form(theta, X1, X2))

    p0 = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    out = lambda theta: fit(p0, theta, X1, X2)
    loss = lambda sol: jnp.sum(jnp.sin(sol["a"])) + jnp.sum(sol["b"] ** 3)
    g = jax.jit(jax.grad(lambda th: loss(out(th))))(theta)
    g_ref = jax.jit(jax.grad(lambda th: loss(tree_closed_form(th, X1, X2))))(theta)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12), g, g_ref)
    J = jax.jit(jax.jacfwd(out))(theta)
    J_ref = jax.jit(jax.jacfwd(lambda th: tree_closed_form(th, X1, X2)))(theta)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12), J, J_ref)


def test_pytree_leaf_independent_of_theta(data):
    """One params leaf (the intercept) whose optimality does not involve θ = λ."""
    _, X, y = data

    def objective(p, lam):
        return 0.5 * jnp.sum((X @ p["w"] + p["b"] - y) ** 2) + 0.5 * lam * jnp.sum(p["w"] ** 2)

    def closed_form(lam):
        A = jnp.concatenate([X, jnp.ones((N_SAMPLES, 1))], axis=1)
        d = jnp.concatenate([jnp.full(N_FEATURES, lam), jnp.zeros(1)])
        x = jnp.linalg.solve(A.T @ A + jnp.diag(d), A.T @ y)
        return {"w": x[:-1], "b": x[-1]}

    fit = rootdiff.argmin(objective)(lambda p0, lam: jax.lax.stop_gradient(closed_form(lam)))
    p0 = {"w": jnp.zeros(N_FEATURES), "b": jnp.zeros(())}
    loss = lambda p: jnp.sum(p["w"] ** 2) + p["b"] ** 2
    g = jax.jit(jax.grad(lambda lam: loss(fit(p0, lam))))(0.7)
    g_ref = jax.jit(jax.grad(lambda lam: loss(closed_form(lam))))(0.7)
    np.testing.assert_allclose(g, g_ref, rtol=RTOL)


def test_has_aux(data):
    lam, X, y = data

    @rootdiff.argmin(ridge_objective, has_aux=True)
    def fit(x0, lam, X, y):
        x = black_box_ridge(x0, lam, X, y)
        return x, {"iterations": jnp.asarray(7), "objective": ridge_objective(x, lam, X, y)}

    (x, aux), (x_dot, aux_dot) = jax.jit(
        lambda lam, t: jax.jvp(lambda lam: fit(X0, lam, X, y), (lam,), (t,))
    )(lam, jnp.asarray(1.0))
    assert int(aux["iterations"]) == 7
    np.testing.assert_allclose(aux["objective"], ridge_objective(x, lam, X, y))
    np.testing.assert_allclose(aux_dot["objective"], 0.0)  # aux is passed through undifferentiated
    want = -jnp.linalg.solve(X.T @ X + lam * jnp.eye(N_FEATURES), x)
    np.testing.assert_allclose(x_dot, want, rtol=RTOL)
    g = jax.jit(jax.grad(lambda lam: loss_of(fit(X0, lam, X, y)[0])))(lam)
    np.testing.assert_allclose(g, _grads(lam, X, y)["reference"][0], rtol=RTOL)


# ----------------------------------------------------------------------------- a real solver


def logistic_objective(w, lam, X, labels):
    """L2-regularised logistic regression: no closed form, checked by finite differences."""
    return jnp.sum(jnp.logaddexp(0.0, -labels * (X @ w))) + 0.5 * lam * jnp.sum(w**2)


@rootdiff.argmin(logistic_objective)
def newton_logistic(w, lam, X, labels):
    """A user's Newton loop: never differentiated by JAX."""
    grad = jax.grad(logistic_objective)
    hess = jax.hessian(logistic_objective)
    return jax.lax.fori_loop(
        0,
        30,
        lambda _, w: w - jnp.linalg.solve(hess(w, lam, X, labels), grad(w, lam, X, labels)),
        w,
    )


def test_newton_solver_check_grads(data):
    _, X, y = data
    labels = jnp.sign(y)
    f = jax.jit(lambda lam, X: newton_logistic(X0, lam, X, labels))
    check_grads(f, (jnp.asarray(0.5), X), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_eager_matches_jit(data):
    """Without jit (op by op) the rule gives the same gradient as under jit."""
    lam, X, y = data
    g = jax.grad(lambda lam: loss_of(ridge(X0, lam, X, y)))(lam)
    np.testing.assert_allclose(g, _grads(lam, X, y)["reference"][0], rtol=RTOL)


def test_unconverged_minimiser_warns(data):
    lam, X, y = data

    @rootdiff.argmin(ridge_objective)
    def two_gd_steps(x, lam, X, y):
        for _ in range(2):
            x = x - 0.01 * jax.grad(ridge_objective)(x, lam, X, y)
        return x

    with pytest.warns(rootdiff.ConvergenceWarning):
        jax.block_until_ready(two_gd_steps(X0, lam, X, y))


def test_float32(float32):
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.normal(size=(N_SAMPLES, N_FEATURES)), jnp.float32)
    y = jnp.asarray(rng.normal(size=N_SAMPLES), jnp.float32)
    lam = jnp.float32(0.7)
    fn = rootdiff.argmin(ridge_objective)(black_box_ridge)
    g = jax.jit(jax.grad(lambda lam: loss_of(fn(jnp.zeros(N_FEATURES, jnp.float32), lam, X, y))))(
        lam
    )
    assert g.dtype == jnp.float32
    g_ref = jax.jit(jax.grad(lambda lam: loss_of(ridge_closed_form(lam, X, y))))(lam)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4)
