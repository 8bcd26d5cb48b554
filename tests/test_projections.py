"""Tests of rootdiff.projections: optax re-exports, capped simplex and box section."""

import jax
import jax.numpy as jnp
import numpy as np
import optax.projections
import pytest
from jax.test_util import check_grads

import rootdiff
from rootdiff import projections
from rootdiff.projections import projection_box_section, projection_capped_simplex

RNG = np.random.default_rng(0)


def reference_box_section(y, total, lower, upper):
    """Exact projection by the breakpoint method (independent of bisection).

    ``g(τ) = Σ clip(y − τ, l, u)`` is piecewise linear and non-increasing with kinks at
    ``y − u`` and ``y − l``: find the two consecutive kinks whose values bracket
    ``total`` and interpolate linearly between them.
    """
    y, lower, upper = (np.broadcast_to(np.asarray(a, np.float64), np.shape(y)) for a in
                       (y, lower, upper))  # fmt: skip
    g = lambda t: np.sum(np.clip(y - t, lower, upper))
    kinks = np.unique(np.concatenate([y - upper, y - lower]))
    values = np.array([g(t) for t in kinks])  # non-increasing
    j = np.searchsorted(-values, -total, side="left")  # first kink with g ≤ total
    if values[j] == total or j == 0:
        tau = kinks[j]
    else:
        t0, t1, g0, g1 = kinks[j - 1], kinks[j], values[j - 1], values[j]
        tau = t0 + (g0 - total) * (t1 - t0) / (g0 - g1)
    return np.clip(y - tau, lower, upper)


def free_set_jacobian(x, lower=0.0, upper=1.0):
    """Closed-form Jacobian ``diag(s) − s sᵀ/|S|`` (``s``: coordinates strictly inside)."""
    s = ((x > lower + 1e-12) & (x < upper - 1e-12)).astype(float)
    return np.diag(s) - np.outer(s, s) / max(s.sum(), 1.0)


capped = jax.jit(projection_capped_simplex, static_argnames="axis")


# --------------------------------------------------------------------------- re-exports


def test_every_optax_projection_is_reexported():
    names = [n for n in dir(optax.projections) if n.startswith("projection_")]
    assert len(names) >= 10
    for name in names:
        ours = getattr(projections, name)
        assert ours.__wrapped__ is getattr(optax.projections, name), name
        assert name in projections.__all__
    assert "projection_capped_simplex" in projections.__all__
    assert rootdiff.projections is projections


_V = np.array([1.0, 1.0, 1.0, 1.0])
# Every exported projection with hyperparameters for which x below is not in the set.
EXPORTED = {
    "projection_box": (0.0, 0.5),
    "projection_halfspace": (_V, 0.5),
    "projection_hypercube": (0.5,),
    "projection_hyperplane": (_V, 0.5),
    "projection_l1_ball": (0.8,),
    "projection_l1_sphere": (1.0,),
    "projection_l2_ball": (0.5,),
    "projection_l2_sphere": (0.5,),
    "projection_linf_ball": (0.5,),
    "projection_non_negative": (),
    "projection_simplex": (),
    "projection_vector": (_V,),
    "projection_box_section": (1.0, 0.0, 0.6),
    "projection_capped_simplex": (2.0,),
}
_X = np.array([0.3, -0.2, 0.9, 0.45])


def _all_projections(x, hps):
    """Value and Jacobian of every exported projection, in one jit."""
    out = {}
    for name, hp in hps.items():
        proj = getattr(projections, name)
        g = lambda x, f=proj, hp=hp: f(x, *hp)
        out[name] = (g(x), jax.jacrev(g)(x))
    return out


def _run_all(dtype):
    hps = {
        name: tuple(jnp.asarray(h, dtype) if isinstance(h, np.ndarray) else h for h in hp)
        for name, hp in EXPORTED.items()
    }
    return jax.jit(_all_projections)(jnp.asarray(_X, dtype), hps)


def _check_float32(results, reference):
    assert set(EXPORTED) == set(projections.__all__)
    for name, (y, J) in results.items():
        assert y.dtype == J.dtype == jnp.float32, name
        y_ref, J_ref = reference[name]
        np.testing.assert_allclose(y, y_ref, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(J, J_ref, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def reference64():
    return jax.tree.map(np.asarray, _run_all(jnp.float64))


def test_every_exported_projection_float32_with_x64_on(reference64):
    """float32 input with x64 enabled: float32 value and Jacobians, equal to float64's."""
    _check_float32(_run_all(jnp.float32), reference64)


def test_every_exported_projection_float32_with_x64_off(reference64, float32):
    _check_float32(_run_all(jnp.float32), reference64)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "n, k, scale",
    [(6, 2, 1.0), (6, 2.5, 1.0), (9, 1, 3.0), (5, 0, 1.0), (5, 5, 1.0), (8, 3, 100.0),
     (7, 6.9, 0.1)],
)  # fmt: skip
def test_capped_simplex_matches_breakpoint_reference(n, k, scale):
    y = RNG.normal(size=n) * scale
    x = np.asarray(capped(jnp.asarray(y), k))
    ref = reference_box_section(y, k, 0.0, 1.0)
    np.testing.assert_allclose(x, ref, atol=1e-12 * max(scale, 1))
    assert abs(x.sum() - k) < 1e-10 * max(scale, 1)
    assert np.all((x >= 0) & (x <= 1))


def test_capped_simplex_ties_and_flat_threshold():
    # ties: equal entries get equal values
    x = capped(jnp.array([0.5, 0.5, 0.5, -2.0]), 2)
    np.testing.assert_allclose(x, [2 / 3, 2 / 3, 2 / 3, 0.0], atol=1e-12)
    # integer k with every coordinate at a bound: τ is not unique, x is
    x = capped(jnp.array([5.0, 3.0, 0.0, -1.0]), 2)
    np.testing.assert_allclose(x, [1.0, 1.0, 0.0, 0.0], atol=0)


def test_box_section_matches_reference_with_vector_bounds():
    y = RNG.normal(size=7)
    lower = -RNG.uniform(0.1, 0.5, size=7)
    upper = RNG.uniform(0.1, 0.5, size=7)
    for total in (-1.0, 0.3, 1.5):
        x = projection_box_section(jnp.asarray(y), total, jnp.asarray(lower), jnp.asarray(upper))
        np.testing.assert_allclose(x, reference_box_section(y, total, lower, upper), atol=1e-12)


def test_batched_axis_matches_rows():
    Y = jnp.asarray(RNG.normal(size=(4, 6, 3)))
    X = capped(Y, 2.0, axis=1)
    for i in range(4):
        for j in range(3):
            ref = reference_box_section(np.asarray(Y[i, :, j]), 2.0, 0.0, 1.0)
            np.testing.assert_allclose(X[i, :, j], ref, atol=1e-12)
    # vmap over k as well
    ks = jnp.array([1.0, 2.5, 4.0])
    Xk = jax.vmap(lambda k: capped(Y[0, :, 0], k))(ks)
    np.testing.assert_allclose(Xk.sum(-1), ks, atol=1e-12)


def test_infeasible_total():
    with pytest.raises(ValueError, match="outside"):
        projection_capped_simplex(jnp.zeros(3), 4)
    with pytest.warns(rootdiff.ConvergenceWarning):
        x = capped(jnp.zeros(3), 4.0)
    assert np.all(np.isnan(x))


def test_masked_entries_at_minus_and_plus_inf():
    # Scores masked with -inf (or forced with +inf) sit at their bound; the other
    # entries are projected as without them, in value and derivative, eager and jit.
    y = jnp.array([2.0, -jnp.inf, 0.3, 0.1, -1.0, jnp.inf])
    keep = np.array([True, False, True, True, True, False])
    ref = np.asarray(capped(y[keep], 2.0))
    for proj in (projection_capped_simplex, capped):
        x = np.asarray(proj(y, 3.0))
        np.testing.assert_allclose(x[keep], ref, atol=1e-12)
        np.testing.assert_array_equal(x[~keep], [0.0, 1.0])
        J = np.asarray(jax.jacrev(lambda y: proj(y, 3.0))(y))
        np.testing.assert_allclose(J[np.ix_(keep, keep)], free_set_jacobian(ref), atol=1e-12)
        assert np.all(J[~keep] == 0) and np.all(J[:, ~keep] == 0)
    # k beyond what the unmasked entries can hold: a clear error naming the bound
    with pytest.raises(ValueError, match="outside"):
        projection_capped_simplex(y, 5.5)


def test_float32(float32):
    y = RNG.normal(size=8).astype(np.float32)
    x = capped(jnp.asarray(y), 3)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, reference_box_section(y, 3, 0.0, 1.0), atol=2e-6)
    J = jax.jacrev(lambda y: capped(y, 3))(jnp.asarray(y))
    np.testing.assert_allclose(J, free_set_jacobian(np.asarray(x, np.float64)), atol=1e-5)


# --------------------------------------------------------------------------- derivatives


def test_capped_simplex_jacobian_closed_form():
    y = jnp.asarray(RNG.normal(size=8))
    x = np.asarray(capped(y, 3))
    assert 1 < np.sum((x > 0) & (x < 1)) < 8  # a real free set and real active bounds
    J_ref = free_set_jacobian(x)
    np.testing.assert_allclose(jax.jacfwd(lambda y: capped(y, 3))(y), J_ref, atol=1e-12)
    np.testing.assert_allclose(jax.jacrev(lambda y: capped(y, 3))(y), J_ref, atol=1e-12)
    # ∂x/∂k = s/|S|
    dk = jax.jacfwd(capped, argnums=1)(y, 3.0)
    s = (x > 0) & (x < 1)
    np.testing.assert_allclose(dk, s / s.sum(), atol=1e-12)


def test_flat_threshold_gives_zero_jacobian_not_nan():
    y = jnp.array([5.0, 3.0, 0.0, -1.0])
    for jac in (jax.jacfwd, jax.jacrev):
        J = jac(lambda y: capped(y, 2))(y)
        np.testing.assert_array_equal(J, np.zeros((4, 4)))


def test_derivatives_match_finite_differences():
    y = jnp.asarray(RNG.normal(size=6))
    lo, hi = jnp.asarray(-RNG.uniform(0.1, 0.4, 6)), jnp.asarray(RNG.uniform(0.2, 0.6, 6))
    f = jax.jit(projection_box_section)
    check_grads(f, (y, jnp.array(0.5), lo, hi), order=1, modes=["fwd", "rev"], eps=1e-6)


def test_hessian_of_smooth_loss_matches_fd():
    y = jnp.asarray(RNG.normal(size=6))
    loss = lambda y: jnp.sum(capped(y, 2.0) ** 3)
    H = jax.jit(jax.hessian(loss))(y)
    grad = jax.jit(jax.vmap(jax.grad(loss)))
    eps = 1e-6
    E = eps * jnp.eye(6)
    np.testing.assert_allclose(H, (grad(y + E) - grad(y - E)) / (2 * eps), atol=1e-6)
    assert np.abs(H).max() > 0.1


def test_lml_by_projected_gradient_over_capped_simplex():
    """LML as ``argmin −xᵀy − H_b(y)`` over ``{ε ≤ y ≤ 1−ε, Σy = k}`` (seed 003's problem).

    The solution is ``sigmoid(x + ν)`` with ``Σ sigmoid(x + ν) = k`` (ν from scipy's
    brentq here), and ``∂y/∂k = Hinv / Σ Hinv`` with ``Hinv = y(1 − y)``. This instance
    (n = 100) makes FISTA's extrapolated point leave the entropy's domain, which the
    solver must survive by restarting.
    """
    optimize = pytest.importorskip("scipy.optimize")
    x = jnp.asarray(np.random.default_rng(1).normal(size=100))

    def objective(y, x):
        return -x @ y + jnp.sum(y * jnp.log(y) + (1 - y) * jnp.log1p(-y))

    @jax.jit
    def lml(x, k):
        proj = lambda y, k: projection_box_section(y, k, 1e-9, 1 - 1e-9)
        return rootdiff.projected_gradient(
            objective, jnp.full_like(x, 0.05), proj, x, hyperparams_proj=k, tol=1e-12
        )

    x_np = np.asarray(x)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    nu = optimize.brentq(lambda nu: sigmoid(x_np + nu).sum() - 5.0, -20, 20, xtol=1e-15)
    y_ref = sigmoid(x_np + nu)
    y = lml(x, 5.0)
    np.testing.assert_allclose(y, y_ref, atol=1e-9)
    # derivative w.r.t. the projection's hyperparameter k, against the closed form
    dy_dk = jax.jacfwd(lml, argnums=1)(x, jnp.array(5.0))
    h = y_ref * (1 - y_ref)
    np.testing.assert_allclose(dy_dk, h / h.sum(), atol=1e-8)
    # and the VJP w.r.t. x against the LML paper's backward pass
    g = jnp.asarray(np.random.default_rng(2).normal(size=100))
    vjp = jax.jit(jax.grad(lambda x: g @ lml(x, 5.0)))(x)
    ref = -h * (-np.asarray(g) + np.sum(h * np.asarray(g)) / h.sum())
    np.testing.assert_allclose(vjp, ref, atol=1e-8)
