"""Tests of ``rootdiff.layers``: sparsemax against a sort-based reference, LML against
its defining equations and the paper's closed-form backward, in every autodiff mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rootdiff
from rootdiff.layers import lml, sparsemax

# --------------------------------------------------------------------------- references


def sparsemax_sort(x):
    """Sort-based sparsemax of one row (Martins & Astudillo, 2016, Algorithm 1)."""
    z = jnp.sort(x)[::-1]
    ks = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cumsum = jnp.cumsum(z)
    support_size = jnp.sum(1 + ks * z > cumsum)
    tau = (cumsum[support_size - 1] - 1) / support_size
    return jnp.maximum(x - tau, 0.0)


def sparsemax_jacobian(y):
    """Closed form ``diag(s) − s sᵀ/|S|`` with ``s`` the support of ``y``."""
    s = (y > 0).astype(y.dtype)
    return jnp.diag(s) - jnp.outer(s, s) / s.sum()


def lml_closed_form_vjp(y, g):
    """The LML paper's backward (seed 003)."""
    Hinv = 1.0 / (1.0 / y + 1.0 / (1.0 - y))
    dnu = jnp.sum(Hinv * g) / jnp.sum(Hinv)
    return -Hinv * (-g + dnu)


def lml_jacobian(y):
    """``diag(w) − w wᵀ/Σw`` with ``w = y(1 − y)``."""
    w = y * (1 - y)
    return jnp.diag(w) - jnp.outer(w, w) / w.sum()


def assert_rel(actual, desired, rtol):
    actual, desired = np.asarray(actual), np.asarray(desired)
    scale = np.max(np.abs(desired))
    assert np.max(np.abs(actual - desired)) <= rtol * scale, np.max(np.abs(actual - desired))


rng = np.random.default_rng(0)
X = rng.normal(size=(6, 9)) * 2.0
G = rng.normal(size=(6, 9))
X3 = rng.normal(size=(3, 7, 4))

sparsemax_sort_rows = jax.jit(jax.vmap(sparsemax_sort))
sparsemax_grad = jax.jit(jax.grad(lambda x, g: jnp.sum(g * sparsemax(x))))
sparsemax_sort_grad = jax.jit(jax.grad(lambda x, g: jnp.sum(g * sparsemax_sort_rows(x))))
lml_grad = jax.jit(jax.grad(lambda x, g, k: jnp.sum(g * lml(x, k))), static_argnums=2)


# --------------------------------------------------------------------------- sparsemax


def test_sparsemax_matches_sort_values_and_vjp():
    assert_rel(sparsemax(X), sparsemax_sort_rows(X), 1e-13)
    assert_rel(sparsemax_grad(X, G), sparsemax_sort_grad(X, G), 1e-13)
    y = sparsemax(X)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-14)
    assert (y >= 0).all() and ((y > 0).sum(-1) >= 1).all()


def test_sparsemax_axis_and_batch_in_one_loop():
    ref = jnp.moveaxis(sparsemax_sort_rows(jnp.moveaxis(X3, 1, -1).reshape(-1, 7)), -1, 1)
    ref = jnp.moveaxis(ref.reshape(3, 4, 7), -1, 1)
    assert_rel(sparsemax(X3, axis=1), ref, 1e-13)
    assert_rel(sparsemax(X3, axis=-2), ref, 1e-13)
    assert str(jax.make_jaxpr(sparsemax)(X3)).count("while[") == 1
    batched = jax.jit(jax.vmap(sparsemax))(X3)
    assert_rel(batched, sparsemax(X3), 1e-15)


def test_sparsemax_all_modes_closed_form():
    x = jnp.array(X[0])
    y = sparsemax(x)
    J = sparsemax_jacobian(y)
    assert 1 < int((y > 0).sum()) < x.size  # a non-trivial support
    assert_rel(jax.jacrev(sparsemax)(x), J, 1e-13)
    assert_rel(jax.jacfwd(sparsemax)(x), J, 1e-13)
    _, t = jax.jvp(sparsemax, (x,), (jnp.array(G[0]),))
    assert_rel(t, J @ G[0], 1e-13)
    # Sparsemax is piecewise linear: the Hessian of |y − t|² is 2 Jᵀ J.
    t0 = jnp.array(G[1])
    H = jax.hessian(lambda x: jnp.sum((sparsemax(x) - t0) ** 2))(x)
    assert_rel(H, 2 * J.T @ J, 1e-12)


@pytest.mark.parametrize(
    "row",
    [
        [0.3, -0.7, -2.0, -0.9],  # support of size one: τ = max − 1, the bracket end
        [1e4, 0.0, -3.0, 1e4 - 2.0],  # large |x|
        [2.0, 2.0, 2.0, -1.0],  # ties
        [5.0, 5.0, 4.0, 4.0],  # ties on both sides of τ
        [1e4 + 0.25, 1e4, 1e4 - 0.5, 1e4 - 1.0],  # large offset, small spread
        [-3.0, -3.0, -3.0, -3.0],  # all equal
    ],
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sparsemax_hard_rows(row, dtype):
    x = jnp.array(row, dtype=dtype)
    y = sparsemax(x)
    assert y.dtype == x.dtype
    ref = sparsemax_sort(jnp.array(row, dtype="float64"))
    tol = 1e-13 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(y, ref, atol=tol)
    assert abs(float(y.sum()) - 1.0) <= tol


def test_sparsemax_float32_batch(float32):
    x = jnp.asarray(X * 100, jnp.float32)
    y = sparsemax(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, sparsemax_sort_rows(jnp.asarray(X * 100)), atol=2e-6)
    g = jnp.asarray(G, jnp.float32)
    np.testing.assert_allclose(sparsemax_grad(x, g), sparsemax_sort_grad(x, g), atol=1e-6)


# --------------------------------------------------------------------------- LML


def assert_lml_solution(y, x, k, tol):
    """``Σy = k`` and ``logit(y) − x`` constant (one ``ν`` per row)."""
    np.testing.assert_allclose(y.sum(-1), k, rtol=tol)
    nu = jnp.log(y) - jnp.log1p(-y) - x
    np.testing.assert_allclose(nu, nu[..., :1] * np.ones_like(nu), atol=tol * 10)


@pytest.mark.parametrize("k", [1, 8])
def test_lml_values_and_closed_form_vjp(k):
    y = lml(X, k)
    assert_lml_solution(y, X, k, 1e-13)
    ref = jax.vmap(lml_closed_form_vjp)(y, jnp.array(G))
    assert_rel(lml_grad(X, G, k), ref, 1e-12)


def test_lml_all_modes_closed_form():
    x = jnp.array(X[1])
    f = lambda x: lml(x, 3)
    J = lml_jacobian(f(x))
    assert_rel(jax.jacrev(f)(x), J, 1e-12)
    assert_rel(jax.jacfwd(f)(x), J, 1e-12)
    _, t = jax.jvp(f, (x,), (jnp.array(G[1]),))
    assert_rel(t, J @ G[1], 1e-12)
    # Second order (jacfwd over jacrev) against plain autodiff through Newton steps
    # started at the (constant) root: their derivatives converge quadratically too.
    g2 = jnp.array(G[2])
    H = jax.hessian(lambda x: jnp.vdot(g2, lml(x, 3)))(x)
    H_ref = jax.hessian(lambda x: jnp.vdot(g2, lml_unrolled(x, 3)))(x)
    assert_rel(H, H_ref, 1e-10)
    check_grads(lambda x: jnp.vdot(g2, lml(x, 3)), (x,), order=1, modes=["rev"])


def lml_unrolled(x, k, steps=6):
    """LML by Newton's method on ν from the (stop-gradient) root, plain autodiff."""
    nu0 = jax.lax.stop_gradient(jnp.log(lml(x, k)[0]) - jnp.log1p(-lml(x, k)[0]) - x[0])
    nu = nu0
    for _ in range(steps):
        y = jax.nn.sigmoid(x + nu)
        nu = nu - (jnp.sum(y) - k) / jnp.sum(y * (1 - y))
    return jax.nn.sigmoid(x + nu)


def test_lml_axis_vmap_and_array_k():
    y = lml(X3, 2, axis=1)
    assert_lml_solution(jnp.moveaxis(y, 1, -1), jnp.moveaxis(X3, 1, -1), 2, 1e-13)
    assert_rel(jax.jit(jax.vmap(lambda x: lml(x, 2, axis=0)))(X3), y, 1e-14)
    # Per-row k (floating, differentiated) against dy/dk = w / Σw.
    ks = jnp.linspace(1.5, 6.0, 6)
    y = lml(X, ks)
    assert_lml_solution(y, X, ks, 1e-13)
    dy_dk = jax.jacfwd(lambda k: lml(X[0], k))(ks[0])
    w = y[0] * (1 - y[0])
    assert_rel(dy_dk, w / w.sum(), 1e-12)
    # Integer arrays for k (seed 003's N) pass through without derivative.
    assert_rel(lml(X, jnp.array(3)), lml(X, 3), 1e-15)
    assert str(jax.make_jaxpr(lambda x: lml(x, ks))(X)).count("while[") == 1


def _reductions_outside_loops(jaxpr):
    """Reductions of the program, the bodies of ``while`` loops excluded."""
    out = []
    for e in jaxpr.eqns:
        if e.primitive.name.startswith("reduce") or e.primitive.name == "argmax":
            out.append(e.primitive.name)
        if e.primitive.name == "while":
            continue
        for param in e.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _reductions_outside_loops(inner)
    return out


def test_lml_row_statistics_are_one_reduction():
    """The bracket needs each row's max, its min over the finite entries and their
    number: one variadic reduction over ``x`` (not three, each a kernel to compile);
    the two others are F at the bracket's ends."""
    found = _reductions_outside_loops(jax.make_jaxpr(lambda x: lml(x, 3))(X).jaxpr)
    assert sorted(found) == ["reduce", "reduce_sum", "reduce_sum"], found


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lml_hard_rows(dtype):
    tol = 1e-12 if dtype == "float64" else 2e-6
    # k close to n, ties, large offset.
    cases = [
        (jnp.array([1.0, 2.0, 3.0, 0.5], dtype), 3.99),
        (jnp.array([1.0, 1.0, 1.0, 1.0], dtype), 2),
        (jnp.array([1e4 + 1.0, 1e4, 1e4 - 2.0, 1e4 + 0.5], dtype), 1),
    ]
    for x, k in cases:
        y = lml(x, k)
        assert y.dtype == x.dtype
        assert abs(float(y.sum()) - k) <= tol * k * 10
    # Saturated rows (|x| = 1e4): y is 0/1 and the gradient is finite (zero).
    x = jnp.array([1e4, 0.0, -1e4, 5.0], dtype)
    y = lml(x, 1)
    np.testing.assert_allclose(y, [1.0, 0.0, 0.0, 0.0], atol=tol)
    g = jax.grad(lambda x: lml(x, 1)[0])(x)
    assert np.isfinite(g).all() and np.abs(g).max() <= tol
    # Static k outside (0, n).
    np.testing.assert_array_equal(lml(x, 4), jnp.ones(4))
    np.testing.assert_array_equal(lml(x, 0), jnp.zeros(4))


def test_lml_float32_matches_float64(float32):
    x32 = jnp.asarray(X, jnp.float32)
    y = lml(x32, 3)
    assert y.dtype == jnp.float32
    with jax.enable_x64(True):
        y64 = lml(jnp.asarray(X, jnp.float64), 3)
        g64 = lml_grad(jnp.asarray(X, jnp.float64), jnp.asarray(G, jnp.float64), 3)
    np.testing.assert_allclose(y, y64, atol=2e-6)
    g32 = lml_grad(x32, jnp.asarray(G, jnp.float32), 3)
    np.testing.assert_allclose(g32, g64, atol=5e-6)


def test_layers_are_exported():
    assert rootdiff.layers.sparsemax is sparsemax and rootdiff.layers.lml is lml


def test_masked_entries():
    """``−inf`` scores get zero output and zero gradient; the rest is unaffected."""
    x = jnp.array([1.0, -jnp.inf, 0.5, 2.0, -jnp.inf, -0.3])
    keep = np.isfinite(x)
    g = jnp.array(G[0, :6])
    for layer in (sparsemax, lambda x: lml(x, 2)):
        y = layer(x)
        np.testing.assert_allclose(y[keep], layer(x[keep]), rtol=1e-13)
        assert (y[~keep] == 0).all()
        grad = jax.grad(lambda x: jnp.vdot(g, layer(x)))(x)
        ref = jax.grad(lambda x: jnp.vdot(g[keep], layer(x)))(x[keep])
        np.testing.assert_allclose(grad[keep], ref, rtol=1e-12)
        assert (grad[~keep] == 0).all()


def test_masked_by_a_large_negative_score():
    """Masking with −1e30 (float64) leaves the other entries' answer unchanged."""
    x = jnp.array([2.0, 1.0, -1.0, 0.5, -1e30])
    y = lml(x, 2)
    np.testing.assert_allclose(y[:4], lml(x[:4], 2), rtol=1e-13)
    assert float(y[4]) == 0.0 and float(y.sum()) == pytest.approx(2.0, rel=1e-14)
    np.testing.assert_allclose(sparsemax(x)[:4], sparsemax(x[:4]), rtol=1e-14)
    g = jax.grad(lambda x: lml(x, 2)[0])(x)
    np.testing.assert_allclose(g[:4], jax.grad(lambda x: lml(x, 2)[0])(x[:4]), rtol=1e-10)


def test_masked_by_a_large_negative_score_float32(float32):
    x = jnp.array([2.0, 1.0, -1.0, 0.5, -1e9], jnp.float32)
    y = lml(x, 2)  # was [1, 1, 1, 1, 0]
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y[:4], [0.79321189, 0.58525791, 0.16035296, 0.46117724], rtol=2e-6)
    assert float(y[4]) == 0.0 and abs(float(y.sum()) - 2.0) <= 1e-5


def test_bad_axis_and_empty_input_say_what_is_wrong():
    x = jnp.ones((2, 3))
    for layer in (sparsemax, lambda x, axis: lml(x, 1, axis=axis)):
        with pytest.raises(ValueError, match=r"axis=-3 is out of range for x of shape \(2, 3\)"):
            layer(x, axis=-3)
        with pytest.raises(ValueError, match="axis=2"):
            layer(x, axis=2)
    with pytest.raises(ValueError, match="no entries along axis 0"):
        sparsemax(jnp.zeros(0))
    with pytest.raises(TypeError, match="axis must be an int"):
        sparsemax(x, axis=None)
    # an array k that does not fit the batch shape (x without axis) is named
    for k in (jnp.ones(3), jnp.ones((2, 1)), jnp.ones((1, 2, 1))):
        with pytest.raises(ValueError, match=r"lml: k of shape .* batch shape \(2,\)"):
            lml(x, k)
    assert lml(x, jnp.array([1.0, 2.0])).sum(-1).tolist() == pytest.approx([1.0, 2.0])


def test_lml_new_python_k_does_not_recompile():
    from rootdiff import layers

    x = jnp.linspace(-1.0, 2.0, 7)
    before = layers._lml_scalar_k._cache_size()
    ys = [lml(x, k) for k in (2, 3, 4.5)]
    assert layers._lml_scalar_k._cache_size() == before + 1
    for k, y in zip((2, 3, 4.5), ys):
        assert_lml_solution(y, x, k, 1e-13)
