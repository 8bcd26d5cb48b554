"""Tests of rootdiff.proximal_gradient: Lasso-type problems against scikit-learn, closed
forms and finite differences, in every mode; the support-restricted derivative; the
derivative at a support change."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rootdiff
from rootdiff.prox import prox_elastic_net, prox_group_lasso, prox_lasso

RNG = np.random.default_rng(0)
N, P = 20, 8
X = jnp.asarray(RNG.normal(size=(N, P)))
W_TRUE = np.array([2.0, -1.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
Y = jnp.asarray(np.asarray(X) @ W_TRUE + 0.3 * RNG.normal(size=N))
LAM = 0.3  # support of size 3-6: some coordinates in, some out
TOL = 1e-13


def loss(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


@functools.partial(jax.jit, static_argnames="support")
def lasso(lam, y, support=None):
    return rootdiff.proximal_gradient(
        loss, jnp.zeros(P, y.dtype), prox_lasso, X.astype(y.dtype), y, hyperparams_prox=lam,
        tol=TOL if y.dtype == jnp.float64 else None, support=support,
    )  # fmt: skip


lasso_full = jax.jit(lambda lam, y: lasso(lam, y, support=False))
lasso_supp = jax.jit(lambda lam, y: lasso(lam, y, support=True))


def closed_form(lam, w):
    """On the support S: w_S = (X_SᵀX_S/n)⁻¹ (X_Sᵀy/n − λ_S sign(w_S)); zero off S."""
    S = np.flatnonzero(np.abs(np.asarray(w)) > 1e-10)
    Xs = np.asarray(X)[:, S]
    G = Xs.T @ Xs / N
    lam = np.broadcast_to(np.asarray(lam), (P,))
    sign = np.sign(np.asarray(w)[S])
    ref = np.zeros(P)
    ref[S] = np.linalg.solve(G, Xs.T @ np.asarray(Y) / N - lam[S] * sign)
    dref = np.zeros((P, P))  # ∂w/∂λ (one λ per feature)
    dref[np.ix_(S, S)] = -np.linalg.inv(G) * sign[None, :]
    return ref, dref, S


def test_lasso_matches_sklearn_and_closed_form():
    linear_model = pytest.importorskip("sklearn.linear_model")
    w = lasso(LAM, Y)
    ref = linear_model.Lasso(alpha=LAM, fit_intercept=False, tol=1e-14, max_iter=100000)
    ref = ref.fit(np.asarray(X), np.asarray(Y)).coef_
    np.testing.assert_allclose(w, ref, atol=1e-8)
    cf, _, S = closed_form(LAM, w)
    assert 2 <= len(S) <= P - 2
    np.testing.assert_allclose(w, cf, atol=1e-10)


def test_derivatives_match_finite_differences_both_modes():
    check_grads(lasso_supp, (LAM, Y), order=1, modes=["fwd", "rev"], eps=1e-6)
    check_grads(lasso_full, (LAM, Y), order=1, modes=["rev"], eps=1e-6)


def test_support_restricted_agrees_with_full_and_closed_form():
    lam = jnp.full(P, LAM)  # weighted Lasso: one λ per feature
    w = lasso(lam, Y)
    _, dref, _ = closed_form(lam, w)
    J_full = jax.jacrev(lasso_full)(lam, Y)
    J_supp = jax.jacrev(lasso_supp)(lam, Y)
    np.testing.assert_allclose(J_full, dref, atol=1e-9)
    np.testing.assert_allclose(J_supp, dref, atol=1e-9)


def test_hessian_and_vmap_jit():
    val = lambda lam: jnp.sum((X @ lasso(lam, Y) - Y) ** 2)  # noqa: E731
    H = jax.jit(jax.hessian(val))(LAM)
    g = jax.jit(jax.grad(val))
    eps = 1e-5
    np.testing.assert_allclose(H, (g(LAM + eps) - g(LAM - eps)) / (2 * eps), rtol=1e-6)
    lams = jnp.array([0.1, 0.3, 0.5])
    batched = jax.jit(jax.vmap(lambda lam: lasso(lam, Y)))(lams)
    looped = jnp.stack([lasso(lam, Y) for lam in lams])
    np.testing.assert_allclose(batched, looped, atol=1e-10)


def test_support_change_gives_the_zero_branch_derivative():
    """At a support change x*(λ) has a kink; the derivative returned is one-sided.

    ``min ½‖x − c‖² + λ‖x‖₁`` has ``x*ᵢ = sign(cᵢ) max(|cᵢ| − λ, 0)``. At ``λ = 1 = c₁``
    coordinate 1 is exactly at its threshold: ``∂x*₁/∂λ`` is −1 from the left and 0
    from the right. A coordinate exactly at its threshold is treated as outside the
    support, so rootdiff returns the right derivative ``[−1, 0, 0]`` (in floating point
    the solver's rounding decides which side a real problem lands on; both one-sided
    derivatives are valid generalized derivatives).
    """
    c = jnp.array([2.0, 1.0, 0.5])
    fun = lambda x, c: 0.5 * jnp.sum((x - c) ** 2)  # noqa: E731
    sol = lambda lam: rootdiff.proximal_gradient(  # noqa: E731
        fun, jnp.zeros(3), prox_lasso, c, hyperparams_prox=lam, stepsize=1.0
    )
    np.testing.assert_allclose(sol(1.0), [1.0, 0.0, 0.0])
    d = jax.jacfwd(sol)(1.0)
    np.testing.assert_allclose(d, [-1.0, 0.0, 0.0])
    np.testing.assert_allclose(jax.jacrev(sol)(1.0), d)
    h = 1e-3
    right = (sol(1.0 + h) - sol(1.0)) / h
    left = (sol(1.0) - sol(1.0 - h)) / h
    np.testing.assert_allclose(d, right, atol=1e-9)
    assert abs(float(left[1]) + 1.0) < 1e-9  # the other side differs


def test_support_change_at_lambda_max():
    """At ``λ_max = max|∇f(0)|`` the Lasso solution is 0 and a feature is about to enter.

    The derivative is the right one (0: the solution stays 0 for λ ≥ λ_max), not the
    left one.
    """
    lam_max = jnp.max(jnp.abs(jax.grad(loss)(jnp.zeros(P), X, Y)))
    w = lasso(lam_max, Y)
    np.testing.assert_array_equal(w, 0.0)
    np.testing.assert_array_equal(jax.jacfwd(lasso_supp)(lam_max, Y), 0.0)
    left = (lasso(lam_max, Y) - lasso(lam_max * (1 - 1e-4), Y)) / (lam_max * 1e-4)
    assert float(jnp.max(jnp.abs(left))) > 0.1  # the left derivative is not 0


def test_elastic_net_matches_sklearn_and_fd():
    linear_model = pytest.importorskip("sklearn.linear_model")
    alpha, l1_ratio = 0.2, 0.6
    hp = (alpha * l1_ratio, (1 - l1_ratio) / l1_ratio)  # (λ, γ) with λγ = α(1 − l1_ratio)
    enet = jax.jit(
        lambda hp, y: rootdiff.proximal_gradient(
            loss, jnp.zeros(P), prox_elastic_net, X, y, hyperparams_prox=hp, tol=TOL
        )
    )
    ref = linear_model.ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False,
                                  tol=1e-14, max_iter=100000)  # fmt: skip
    ref = ref.fit(np.asarray(X), np.asarray(Y)).coef_
    np.testing.assert_allclose(enet(hp, Y), ref, atol=1e-8)
    check_grads(enet, (hp, Y), order=1, modes=["rev"], eps=1e-6)


def test_group_lasso_pytree_and_index_groups():
    ids = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    prox_ids = lambda x, lam, s: prox_group_lasso(x, lam, s, groups=ids)  # noqa: E731
    flat = jax.jit(
        lambda lam, y: rootdiff.proximal_gradient(
            loss, jnp.zeros(P), prox_ids, X, y, hyperparams_prox=lam, tol=TOL
        )
    )
    tree_loss = lambda w, X, y: loss(jnp.concatenate([w[k] for k in "abcd"]), X, y)  # noqa: E731
    init = {k: jnp.zeros(2) for k in "abcd"}
    tree = jax.jit(
        lambda lam, y: rootdiff.proximal_gradient(
            tree_loss, init, prox_group_lasso, X, y, hyperparams_prox=lam, tol=TOL
        )
    )
    lam = 0.4
    w = flat(lam, Y)
    wt = tree(lam, Y)
    np.testing.assert_allclose(jnp.concatenate([wt[k] for k in "abcd"]), w, atol=1e-9)
    # optimality: ∇_G f + λ w_G/‖w_G‖ = 0 on active groups, ‖∇_G f‖ ≤ λ on the others
    g = np.asarray(jax.grad(loss)(w, X, Y)).reshape(4, 2)
    wg = np.asarray(w).reshape(4, 2)
    norms = np.linalg.norm(wg, axis=1)
    active = norms > 1e-10
    assert 0 < active.sum() < 4
    np.testing.assert_allclose(g[active] + lam * wg[active] / norms[active, None], 0, atol=1e-8)
    assert np.all(np.linalg.norm(g[~active], axis=1) <= lam + 1e-9)
    check_grads(flat, (lam, Y), order=1, modes=["rev"], eps=1e-6)


def test_keyword_arguments_and_python_floats():
    fun = lambda w, *, X, y, scale: scale * loss(w, X, y)  # noqa: E731
    w = rootdiff.proximal_gradient(fun, jnp.zeros(P), prox_lasso, X=X, y=Y, scale=1.0,
                                   hyperparams_prox=LAM, tol=TOL)  # fmt: skip
    np.testing.assert_allclose(w, lasso(LAM, Y), atol=1e-9)
    # a Python float argument is differentiated like a weakly typed array
    g = jax.grad(
        lambda s: jnp.sum(rootdiff.proximal_gradient(fun, jnp.zeros(P), prox_lasso, X=X, y=Y,
                                                     scale=s, hyperparams_prox=LAM, tol=TOL))
    )(1.0)  # fmt: skip
    eps = 1e-6
    fd = lambda s: jnp.sum(
        rootdiff.proximal_gradient(  # noqa: E731
            fun, jnp.zeros(P), prox_lasso, X=X, y=Y, scale=s, hyperparams_prox=LAM, tol=TOL
        )
    )
    np.testing.assert_allclose(g, (fd(1 + eps) - fd(1 - eps)) / (2 * eps), rtol=1e-6)


def test_repeated_eager_calls_are_cheap():
    fun = lambda w, y: loss(w, X, y)  # noqa: E731
    run = lambda lam: rootdiff.proximal_gradient(  # noqa: E731
        fun, jnp.zeros(P), prox_lasso, Y, hyperparams_prox=lam
    )
    run(0.3).block_until_ready()  # compiles
    jax.grad(lambda lam: jnp.sum(run(lam)))(0.3).block_until_ready()
    t = time.perf_counter()
    for lam in (0.2, 0.25, 0.35):
        run(lam).block_until_ready()
        jax.grad(lambda lam: jnp.sum(run(lam)))(lam).block_until_ready()
    per_call = (time.perf_counter() - t) / 3
    assert per_call < 0.3, per_call  # was seconds per call when loops were re-traced


def test_float32(float32):
    X32, Y32 = X.astype(jnp.float32), Y.astype(jnp.float32)
    w, info = rootdiff.proximal_gradient(
        loss, jnp.zeros(P, jnp.float32), prox_lasso, X32, Y32, hyperparams_prox=LAM,
        return_info=True,
    )  # fmt: skip
    assert w.dtype == jnp.float32 and bool(info.converged)
    cf, dref, S = closed_form(np.full(P, LAM), np.asarray(w, np.float64))
    np.testing.assert_allclose(w, cf, atol=1e-4)
    J = jax.jacrev(lambda lam: lasso(lam, Y32))(jnp.full(P, LAM, jnp.float32))
    np.testing.assert_allclose(J, dref, atol=1e-3)


def test_nonconvergence_is_reported():
    with pytest.warns(rootdiff.ConvergenceWarning, match="proximal_gradient"):
        _, info = rootdiff.proximal_gradient(
            loss, jnp.zeros(P), prox_lasso, X, Y, hyperparams_prox=LAM, maxiter=3,
            return_info=True,
        )  # fmt: skip
    assert not bool(info.converged) and int(info.iterations) == 3
    assert float(info.optimality) > float(info.threshold)


def _loop_reductions(jaxpr):
    """The reduction primitives in the body of every ``while`` loop of ``jaxpr``."""
    for e in jaxpr.eqns:
        if e.primitive.name == "while":
            body = e.params["body_jaxpr"].jaxpr
            yield [b.primitive.name for b in body.eqns if b.primitive.name.startswith("reduce")]
        for param in e.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _loop_reductions(inner)


def test_the_stopping_tests_read_their_maxima_in_one_reduction():
    """Per iteration the tests need max|x⁺ − y|, max|∇f(y)|, max|y| and whether x⁺ and
    ∇f(y) are finite: one variadic reduction (one kernel), not one (up to three
    kernels) each; with a line search, ∇f's finiteness is tested before the search."""
    run = lambda y, step: rootdiff.proximal_gradient(  # noqa: E731
        loss, jnp.zeros(P), prox_lasso, X, y, hyperparams_prox=LAM, stepsize=step, check="off"
    )
    for step in (0.1, None):  # fixed step, line search
        bodies = list(_loop_reductions(jax.make_jaxpr(lambda y: run(y, step))(Y).jaxpr))
        fista = max(bodies, key=len)
        assert "reduce_max" not in fista and fista.count("reduce") == 1, fista
        assert ("reduce_and" in fista) == (step is None), fista


def test_the_convergence_report_makes_no_pass_over_the_solution():
    """The solver's report defers a non-finite x to the implicit rule's check; x is
    non-finite only if the start is (the loop then does not run), so the report reads
    the iteration count instead of testing every entry of x (no reduction over x)."""
    jaxpr = jax.make_jaxpr(
        lambda y: rootdiff.proximal_gradient(
            loss, jnp.zeros(P), prox_lasso, X, y, hyperparams_prox=LAM, stepsize=0.1
        )
    )(Y).jaxpr
    found = list(_reductions_outside_loops(jaxpr))
    assert found.count("reduce_and") <= 3, found  # the start's finiteness, the rule's check


def _reductions_outside_loops(jaxpr):
    """The reduction primitives of ``jaxpr``, the bodies of ``while`` loops excluded."""
    for e in jaxpr.eqns:
        if e.primitive.name.startswith("reduce"):
            yield e.primitive.name
        if e.primitive.name != "while":
            for param in e.params.values():
                for sub in param if isinstance(param, (tuple, list)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from _reductions_outside_loops(inner)
