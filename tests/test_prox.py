"""Tests of rootdiff.prox: each operator against the argmin that defines it, derivatives
against finite differences, pytrees, index groups and projections."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.projections as oproj
import pytest
from jax.test_util import check_grads

from rootdiff import prox as P

RNG = np.random.default_rng(1)
X = jnp.asarray(RNG.normal(size=6) * 2)
S = 0.7  # scaling

# (prox, hyperparams, penalty g(y, hp)) — the prox is argmin ½‖y − x‖² + s g(y)
CASES = {
    "lasso": (P.prox_lasso, 0.8, lambda y, hp: hp * jnp.sum(jnp.abs(y))),
    "weighted_lasso": (
        P.prox_lasso,
        jnp.linspace(0.1, 2.0, 6),
        lambda y, hp: jnp.sum(hp * jnp.abs(y)),
    ),
    "elastic_net": (
        P.prox_elastic_net,
        (0.5, 2.0),
        lambda y, hp: hp[0] * (jnp.sum(jnp.abs(y)) + 0.5 * hp[1] * jnp.sum(y**2)),
    ),
    "ridge": (P.prox_ridge, 1.5, lambda y, hp: 0.5 * hp * jnp.sum(y**2)),
    "group_lasso": (P.prox_group_lasso, 1.0, lambda y, hp: hp * jnp.linalg.norm(y)),
}


def _argmin_reference(penalty, hp, x, s, nonneg=False):
    optimize = pytest.importorskip("scipy.optimize")
    obj = lambda y: float(0.5 * np.sum((y - x) ** 2) + s * penalty(jnp.asarray(y), hp))  # noqa: E731
    bounds = [(0, None)] * len(x) if nonneg else None
    x0 = np.maximum(np.asarray(x), 0) if nonneg else np.asarray(x)
    res = optimize.minimize(obj, x0, method="Powell", bounds=bounds,
                            options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 100000})  # fmt: skip
    return res.x, obj


@pytest.mark.parametrize("name", list(CASES))
def test_prox_is_the_argmin(name):
    prox, hp, penalty = CASES[name]
    out = np.asarray(prox(X, hp, S))
    ref, obj = _argmin_reference(penalty, hp, np.asarray(X), S)
    assert obj(out) <= obj(ref) + 1e-9  # at least as good as a derivative-free search
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_non_negative_lasso_is_the_argmin():
    out = np.asarray(P.prox_non_negative_lasso(X, 0.8, S))
    ref, obj = _argmin_reference(lambda y, hp: hp * jnp.sum(y), 0.8, np.asarray(X), S, True)
    assert np.all(out >= 0) and obj(out) <= obj(ref) + 1e-9
    np.testing.assert_allclose(out, np.maximum(np.asarray(X) - S * 0.8, 0))


def test_closed_forms_and_kink_convention():
    x = jnp.array([3.0, -0.5, -2.0, 1.0])
    np.testing.assert_allclose(P.prox_lasso(x, 1.0), [2.0, 0.0, -1.0, 0.0])
    # exactly at the threshold the zero branch is taken, derivative included
    d = jax.jacfwd(lambda x: P.prox_lasso(x, 1.0))(x)
    np.testing.assert_allclose(jnp.diag(d), [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(jax.grad(lambda lam: P.prox_lasso(x, lam)[3])(1.0), 0.0)
    np.testing.assert_allclose(P.prox_ridge(x, 1.0, 2.0), x / 3)
    np.testing.assert_allclose(P.prox_none(x, None, 5.0), x)
    np.testing.assert_allclose(P.prox_non_negative(x), jnp.maximum(x, 0))
    np.testing.assert_allclose(P.prox_box(x, (-1.0, 1.0)), jnp.clip(x, -1, 1))


@pytest.mark.parametrize("name", ["lasso", "elastic_net", "group_lasso"])
def test_derivatives_match_finite_differences(name):
    prox, hp, _ = CASES[name]
    check_grads(lambda x, hp: prox(x, hp, S), (X, hp), order=1, modes=["fwd", "rev"],
                eps=1e-6)  # fmt: skip


def test_pytree_inputs_and_per_leaf_hyperparams():
    tree = {"a": X[:3], "b": X[3:]}
    out = P.prox_lasso(tree, {"a": 0.1, "b": 2.0}, S)
    np.testing.assert_allclose(out["a"], P.prox_lasso(X[:3], 0.1, S))
    np.testing.assert_allclose(out["b"], P.prox_lasso(X[3:], 2.0, S))
    out = P.prox_elastic_net(tree, (0.5, 2.0), S)
    np.testing.assert_allclose(out["b"], P.prox_elastic_net(X[3:], (0.5, 2.0), S))
    # group Lasso on a pytree: one group per leaf
    out = P.prox_group_lasso(tree, 1.0, S)
    np.testing.assert_allclose(out["a"], P.prox_group_lasso(X[:3], 1.0, S))


def test_group_lasso_index_groups():
    ids = jnp.array([0, 0, 0, 1, 1, 2])
    out = P.prox_group_lasso(X, jnp.array([0.5, 10.0, 0.1]), S, groups=ids)
    np.testing.assert_allclose(out[:3], P.prox_group_lasso(X[:3], 0.5, S))
    np.testing.assert_allclose(out[3:5], 0.0)  # a large λ zeroes the whole group
    np.testing.assert_allclose(out[5:], P.prox_group_lasso(X[5:], 0.1, S))
    # jit with traced ids, and a derivative in λ
    prox = jax.jit(functools.partial(P.prox_group_lasso, scaling=S))
    np.testing.assert_allclose(prox(X, 0.5, groups=ids), P.prox_group_lasso(X, 0.5, S, groups=ids))
    with pytest.raises(ValueError, match="1-D"):
        P.prox_group_lasso(X.reshape(2, 3), 1.0, groups=ids.reshape(2, 3))


def _block_soft_jacobian(v, t):
    """Closed form: ``(1 − t/‖v‖) I + t vvᵀ/‖v‖³`` when ``‖v‖ > t``, else 0."""
    v = np.asarray(v, np.float64)
    r = np.linalg.norm(v)
    if r <= t:
        return np.zeros((len(v), len(v)))
    return (1 - t / r) * np.eye(len(v)) + t * np.outer(v, v) / r**3


@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e25])
def test_group_lasso_zero_tiny_and_huge_groups_float32(float32, scale):
    # A group at exactly 0 (padded features, an inactive group at the start) has a
    # zero Jacobian, not sqrt's NaN at 0; squares of 1e±25 neither underflow nor
    # overflow in float32 (the norm is computed scaled).
    v = np.array([3.0, -4.0, 0.0, 0.0, 1.0], np.float32) * np.float32(scale)
    t = np.float32(2.0 * scale)
    ids = jnp.array([0, 0, 1, 1, 2])
    by_ids = lambda x: P.prox_group_lasso(x, t, groups=ids)  # noqa: E731
    by_leaf = lambda x: P.prox_group_lasso({"a": x[:2], "b": x[2:4]}, t)  # noqa: E731
    ref = np.zeros((5, 5))
    ref[:2, :2] = _block_soft_jacobian(v[:2], float(t))
    np.testing.assert_allclose(by_ids(jnp.asarray(v))[:2], 0.6 * v[:2], rtol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(by_ids)(jnp.asarray(v)), ref, rtol=1e-5, atol=1e-6)
    jac = jax.jacrev(by_leaf)(jnp.asarray(v))
    np.testing.assert_allclose(jac["a"], ref[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jac["b"], ref[2:4], rtol=1e-5, atol=1e-6)


def test_prox_from_projection_calling_conventions():
    x = jnp.array([2.0, -1.0, 0.5])
    box = P.prox_from_projection(oproj.projection_box)  # projection_box(y, lower, upper)
    np.testing.assert_allclose(box(x, (0.0, 1.0), 0.3), [1.0, 0.0, 0.5])
    nonneg = P.prox_from_projection(oproj.projection_non_negative)  # one argument
    np.testing.assert_allclose(nonneg(x, None, 0.3), [2.0, 0.0, 0.5])
    two = P.prox_from_projection(lambda y, hp: jnp.maximum(y, 0.0))  # two, hp None
    np.testing.assert_allclose(two(x, None, 1.0), [2.0, 0.0, 0.5])
    ball = P.prox_from_projection(oproj.projection_l2_ball)
    np.testing.assert_allclose(jnp.linalg.norm(ball(x, 1.0, 9.0)), 1.0)


def test_float32(float32):
    x = jnp.asarray(X, jnp.float32)
    for name in ("lasso", "elastic_net", "group_lasso", "ridge"):
        prox, hp, _ = CASES[name]
        out = prox(x, hp, S)
        assert out.dtype == jnp.float32
        ref = np.asarray(prox(np.asarray(X, np.float64), hp, S))
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bad_hyperparameters_are_errors_naming_the_argument():
    x = jnp.array([3.0, -1.0])
    # a negative weight has no minimiser: the formula would silently grow x
    for prox, arg, bad in [
        (P.prox_lasso, "l1reg", -1.0),
        (P.prox_ridge, "l2reg", jnp.array([1.0, -0.5])),
        (P.prox_group_lasso, "l2reg", -0.1),
        (P.prox_elastic_net, r"hyperparams\[0\]", (-1.0, 1.0)),
    ]:
        with pytest.raises(ValueError, match=f"{arg} must be >= 0"):
            prox(x, bad)
    with pytest.raises(ValueError, match=r"l1reg of shape \(3,\) does not broadcast.*\(2,\)"):
        P.prox_lasso(x, jnp.ones(3))
    with pytest.raises(ValueError, match="l1reg must be a scalar, an array or a pytree like x"):
        P.prox_lasso({"a": x, "b": x}, {"a": 1.0})
    with pytest.raises(ValueError, match="lower must be <= upper"):
        P.prox_box(x, (1.0, 0.0))
    # valid: zero weights, a negative linear term, bounds at infinity, traced values
    np.testing.assert_array_equal(P.prox_lasso(x, 0.0), x)
    np.testing.assert_array_equal(P.prox_non_negative_lasso(x, -1.0), [4.0, 0.0])
    np.testing.assert_array_equal(P.prox_box(x, (-jnp.inf, jnp.inf)), x)
    np.testing.assert_array_equal(jax.jit(P.prox_lasso)(x, 1.0), [2.0, 0.0])
