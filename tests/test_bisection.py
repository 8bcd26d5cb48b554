"""Tests of ``rootdiff.bisection``: values, every autodiff mode, batching, brackets."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rootdiff


def sqrt_f(x, a):
    """Root sqrt(a) on [0, ∞): derivatives 1/(2√a) and −1/(4 a^{3/2})."""
    return x**2 - a


@jax.jit
def sqrt_root(a):
    return rootdiff.bisection(sqrt_f, 0.0, 10.0, a)


def kepler_f(E, M, e):
    """Kepler's equation E − e sin E = M, increasing in E for e < 1."""
    return E - e * jnp.sin(E) - M


@jax.jit
def kepler(M, e):
    return rootdiff.bisection(kepler_f, 0.0, 2 * jnp.pi, M, e)


def lml_f(nu, x, N):
    """Seed 003's optimality function (``N`` an integer)."""
    return jnp.sum(jax.nn.sigmoid(x + nu)) - N


def lml_closed_form_vjp(x, N, g):
    """The LML paper's backward (seed 003): ``dx = −Hinv (−g + dnu)``."""
    nu = rootdiff.bisection(lml_f, -20.0, 20.0, x, N)
    y = jax.nn.sigmoid(x + nu)
    Hinv = 1.0 / (1.0 / y + 1.0 / (1.0 - y))
    dnu = jnp.sum(Hinv * g) / jnp.sum(Hinv)
    return -Hinv * (-g + dnu)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "f, lower, upper, root",
    [
        (lambda x: x**2 - 2.0, 0.0, 2.0, np.sqrt(2.0)),  # increasing
        (lambda x: 2.0 - x**2, 0.0, 2.0, np.sqrt(2.0)),  # decreasing
        (lambda x: jnp.cos(x), 3.0, 1.0, np.pi / 2),  # reversed bracket, decreasing
        (lambda x: jnp.exp(x) - 1e6, 0.0, 100.0, np.log(1e6)),  # steep
        (lambda x: 1e-9 * (x - 0.3), -1.0, 1.0, 0.3),  # flat
        (lambda x: x - 1e-9, -1.0, 3.0, 1e-9),  # root near 0
    ],
)
def test_values_float64(f, lower, upper, root):
    x = rootdiff.bisection(f, lower, upper)
    assert abs(float(x) - root) <= 1e-12 * max(1.0, abs(root))


def test_values_float32(float32):
    x = sqrt_root(jnp.float32(2.0))
    assert x.dtype == jnp.float32
    assert abs(float(x) - np.sqrt(2.0)) <= 1e-6 * np.sqrt(2.0) * 10  # bracket [0, 10]
    M = jnp.linspace(0.1, 6.0, 7, dtype=jnp.float32)
    E = jax.vmap(kepler, (0, None))(M, jnp.float32(0.5))
    np.testing.assert_allclose(E - 0.5 * np.sin(E), M, atol=2e-6)
    g = jax.grad(sqrt_root)(jnp.float32(2.0))
    np.testing.assert_allclose(g, 0.5 / np.sqrt(2.0), rtol=1e-5)


def test_dtype_follows_arguments():
    assert rootdiff.bisection(sqrt_f, 0.0, 2.0, jnp.float32(2.0)).dtype == jnp.float32
    assert rootdiff.bisection(sqrt_f, 0.0, 2.0, 2.0).dtype == jnp.float64
    assert rootdiff.bisection(sqrt_f, jnp.float32(0), jnp.float32(2), 2).dtype == jnp.float32


def test_exact_zero_at_midpoint_stops():
    # f(mid) = 0 exactly at the first midpoint: returned exactly.
    assert float(rootdiff.bisection(lambda x: x - 0.5, 0.0, 1.0)) == 0.5


def test_tol_and_maxiter():
    loose = rootdiff.bisection(sqrt_f, 0.0, 2.0, 2.0, tol=1e-3)
    assert 1e-12 < abs(float(loose) - np.sqrt(2)) <= 5e-4
    # maxiter reached before the bracket closed: reported, and visible in the info.
    with pytest.warns(rootdiff.ConvergenceWarning, match="maxiter=3"):
        rootdiff.bisection(sqrt_f, 0.0, 2.0, 2.0, maxiter=3)
    capped, info = rootdiff.bisection(
        sqrt_f, 0.0, 2.0, 2.0, maxiter=3, check="off", return_info=True
    )
    assert not bool(info.converged) and bool(info.bracketed) and int(info.iterations) == 3
    assert float(info.lower) <= np.sqrt(2) <= float(info.upper)
    assert np.isnan(rootdiff.bisection(sqrt_f, 0.0, 2.0, 2.0, maxiter=3, check="nan"))
    g = jax.grad(lambda a: rootdiff.bisection(sqrt_f, 0.0, 2.0, a, maxiter=3, check="nan"))(2.0)
    assert np.isnan(g)
    # ftol: stop at the first midpoint with |f| ≤ ftol (1, then 1.5 with |f| = 0.25).
    assert float(rootdiff.bisection(sqrt_f, 0.0, 2.0, 2.0, ftol=0.3)) == 1.5


# --------------------------------------------------------------------------- bracket ends


@pytest.mark.parametrize("c", [0.0, 1.0])
def test_root_exactly_at_bracket_end(c):
    x = rootdiff.bisection(lambda x, c: x - c, 0.0, 1.0, c)
    assert float(x) == c
    x = jax.jit(lambda c: rootdiff.bisection(lambda x, c: c - x, 0.0, 1.0, c))(c)
    assert float(x) == c


def sparsemax_threshold_f(tau, z):
    return jnp.sum(jnp.maximum(z - tau, 0.0)) - 1.0


def test_sparsemax_bracket_edge():
    """Support of size one: τ = max − 1 is the lower end of [max − 1, max]."""
    z = jnp.array([0.0, -1.5, -2.0, -1.0, -3.0])  # only z[0] is within 1 of the max
    solve = jax.jit(lambda z: rootdiff.bisection(sparsemax_threshold_f, z.max() - 1, z.max(), z))
    tau = solve(z)
    assert float(tau) == -1.0
    np.testing.assert_array_equal(jnp.maximum(z - tau, 0.0), [1.0, 0, 0, 0, 0])


def test_jaxopt_documented_difference_at_bracket_edge():
    """jaxopt's Bisection returns ``upper`` when the root is exactly ``lower``."""
    jaxopt = pytest.importorskip("jaxopt")
    z = jnp.array([0.0, -1.5, -2.0, -3.0])
    sol = jaxopt.Bisection(sparsemax_threshold_f, lower=-1.0, upper=0.0, check_bracket=False).run(
        z=z
    )
    theirs = float(sol.params)
    ours = float(rootdiff.bisection(sparsemax_threshold_f, -1.0, 0.0, z))
    assert ours == -1.0
    if theirs != -1.0:  # documented: ≈ upper, so the sparsemax row is (almost) all zeros
        assert abs(theirs) < 1e-6
        assert float(jnp.sum(jnp.maximum(z - theirs, 0.0))) < 1e-6


def test_eager_call_without_sign_change_raises():
    with pytest.raises(ValueError, match=r"f\(lower\) = -2\.0.*f\(upper\) = -1\.0"):
        rootdiff.bisection(sqrt_f, 0.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="nan"):
        rootdiff.bisection(lambda x: jnp.log(x) - 1.0, -1.0, 1.0)
    # check_bracket=False: no eager error, but still NaN, never an endpoint.
    x = rootdiff.bisection(sqrt_f, 0.0, 1.0, 2.0, check_bracket=False, check="off")
    assert np.isnan(x)


def test_unbracketed_lane_is_nan_under_vmap_and_jit():
    a = jnp.array([1.0, 4.0, 200.0, 9.0])  # sqrt(200) > 10: no bracket
    batched = jax.jit(jax.vmap(sqrt_root))
    with pytest.warns(rootdiff.ConvergenceWarning, match="1 of 4"):
        x = batched(a)
    np.testing.assert_allclose(x[np.array([0, 1, 3])], [1.0, 2.0, 3.0], rtol=1e-13)
    assert np.isnan(x[2])
    quiet = jax.jit(jax.vmap(lambda a: rootdiff.bisection(sqrt_f, 0.0, 10.0, a, check="off")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(quiet(a)[2])
    with pytest.warns(rootdiff.ConvergenceWarning):
        assert np.isnan(sqrt_root(200.0))


# --------------------------------------------------------------------------- derivatives


def test_all_modes_closed_form():
    a = 2.0
    d1, d2 = 0.5 * a**-0.5, -0.25 * a**-1.5
    assert float(jax.grad(sqrt_root)(a)) == pytest.approx(d1, rel=1e-12)
    assert float(jax.jacrev(sqrt_root)(a)) == pytest.approx(d1, rel=1e-12)
    assert float(jax.jacfwd(sqrt_root)(a)) == pytest.approx(d1, rel=1e-12)
    _, t = jax.jvp(sqrt_root, (a,), (3.0,))
    assert float(t) == pytest.approx(3 * d1, rel=1e-12)
    assert float(jax.hessian(sqrt_root)(a)) == pytest.approx(d2, rel=1e-10)


def test_check_grads_two_parameters():
    """Kepler's equation: grad/jvp against finite differences, hessian in closed form."""
    check_grads(kepler, (1.3, 0.4), order=1, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)
    # Closed form: ∂E/∂M = 1/(1 − e cos E), ∂E/∂e = sin E/(1 − e cos E),
    # ∂²E/∂M² = −e sin E/(1 − e cos E)³.
    E = kepler(1.3, 0.4)
    gM, ge = jax.grad(kepler, argnums=(0, 1))(1.3, 0.4)
    den = 1 - 0.4 * np.cos(E)
    np.testing.assert_allclose([gM, ge], [1 / den, np.sin(E) / den], rtol=1e-12)
    hMM = jax.hessian(kepler)(1.3, 0.4)
    np.testing.assert_allclose(hMM, -0.4 * np.sin(E) / den**3, rtol=1e-10)


def test_vmap_one_loop_and_traced_bracket():
    M = jnp.linspace(0.1, 6.0, 9)
    e = jnp.linspace(0.0, 0.9, 9)
    batched = jax.vmap(kepler)
    assert str(jax.make_jaxpr(batched)(M, e)).count("while[") == 1
    E = jax.jit(batched)(M, e)
    np.testing.assert_allclose(E - e * np.sin(E), M, atol=1e-13)
    gM = jax.vmap(jax.grad(kepler))(M, e)
    np.testing.assert_allclose(gM, 1 / (1 - e * np.cos(E)), rtol=1e-12)

    # Traced, per-lane brackets; they receive no derivative.
    def root_in(lo, hi, a):
        return rootdiff.bisection(sqrt_f, lo, hi, a)

    a = jnp.array([1.0, 4.0, 9.0])
    x = jax.jit(jax.vmap(root_in))(a / 4, a + 1, a)
    np.testing.assert_allclose(x, jnp.sqrt(a), rtol=1e-13)
    g_lo, g_hi, g_a = jax.grad(root_in, argnums=(0, 1, 2))(0.0, 3.0, 4.0)
    assert (float(g_lo), float(g_hi)) == (0.0, 0.0)
    assert float(g_a) == pytest.approx(0.25, rel=1e-12)


def test_integer_args_seed_003():
    x = jnp.array([0.3, -1.2, 2.0, 0.7, -0.1])
    g = jnp.array([1.0, -2.0, 0.5, 0.3, 0.0])
    for N in (2, jnp.array(2), np.int32(2)):
        nu = rootdiff.bisection(lml_f, -20.0, 20.0, x, N)
        assert float(lml_f(nu, x, 2)) == pytest.approx(0.0, abs=1e-13)

        def loss(x):
            nu = rootdiff.bisection(lml_f, -20.0, 20.0, x, N)
            return jnp.vdot(g, jax.nn.sigmoid(x + nu))

        np.testing.assert_allclose(jax.grad(loss)(x), lml_closed_form_vjp(x, 2, g), rtol=1e-10)


def test_zero_derivative_at_root_is_reported():
    """f'(x*) = 0 makes the root's derivative infinite: the backward check says so."""
    cube = lambda x, a: x**3 - a
    with pytest.warns(rootdiff.ConvergenceWarning, match="linear solve"):
        g = jax.grad(lambda a: rootdiff.bisection(cube, -1.0, 1.0, a))(0.0)
    assert not np.isfinite(g)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scalars"):
        rootdiff.bisection(sqrt_f, jnp.zeros(2), 1.0, 0.5)
    with pytest.raises(ValueError, match="must return a scalar"):
        rootdiff.bisection(lambda x: jnp.stack([x, x]), -1.0, 1.0, check_bracket=False)


# --------------------------------------------------------------------------- scale, closures


def exp_f(x, a):
    return jnp.exp(x) - a


def test_wide_brackets_find_the_root_to_the_last_bits():
    """The stopping rule does not depend on the bracket's width."""
    x = rootdiff.bisection(exp_f, -1e30, 10.0, 1e-3)
    assert abs(float(x) - np.log(1e-3)) <= 4e-16 * 7
    x = rootdiff.bisection(exp_f, -jnp.inf, jnp.inf, 2.0)  # the whole real line
    assert abs(float(x) - np.log(2.0)) <= 4e-16
    x = rootdiff.bisection(lambda x: x - 1e-300, -1.0, 1e300)  # tiny root, huge bracket
    assert float(x) == pytest.approx(1e-300, rel=1e-15)


def test_wide_bracket_float32(float32):
    x = rootdiff.bisection(exp_f, -1e6, 1e6, jnp.float32(1e-3))
    assert x.dtype == jnp.float32
    assert abs(float(x) - np.log(1e-3)) <= 2e-6  # was −6.936 with a width-relative tol
    g = jax.grad(lambda a: rootdiff.bisection(exp_f, -1e6, 1e6, a))(jnp.float32(1e-3))
    np.testing.assert_allclose(g, 1e3, rtol=1e-4)


def test_closure_over_traced_values_under_grad_and_vmap():
    """``f`` closing over a traced value: no eager bracket check, derivative flows to it."""
    x = jnp.array([0.3, -1.2, 2.0, 0.7, -0.1])
    g = jnp.array([1.0, -2.0, 0.5, 0.3, 0.0])

    def loss(x):
        nu = rootdiff.bisection(lambda nu: jnp.sum(jax.nn.sigmoid(x + nu)) - 2, -10.0, 10.0)
        return jnp.vdot(g, jax.nn.sigmoid(x + nu))

    np.testing.assert_allclose(jax.grad(loss)(x), lml_closed_form_vjp(x, 2, g), rtol=1e-10)
    a = jnp.array([1.0, 4.0, 9.0])
    roots = jax.vmap(lambda a: rootdiff.bisection(lambda t: t**2 - a, 0.0, 10.0))(a)
    np.testing.assert_allclose(roots, jnp.sqrt(a), rtol=1e-14)
    # The bracket is still checked in-graph: no sign change → NaN and a report.
    with pytest.warns(rootdiff.ConvergenceWarning):
        r = jax.vmap(lambda a: rootdiff.bisection(lambda t: t**2 - a, 0.0, 1.0))(a)
    assert np.isnan(r[1:]).all()


def test_keyword_arguments_for_f():
    a = jnp.array(4.0)
    assert float(rootdiff.bisection(sqrt_f, 0.0, 5.0, a=a)) == 2.0
    g = jax.grad(lambda a: rootdiff.bisection(kepler_f, 0.0, 7.0, M=a, e=0.4))(1.3)
    E = kepler(1.3, 0.4)
    assert float(g) == pytest.approx(1 / (1 - 0.4 * np.cos(E)), rel=1e-12)


def test_eager_calls_reuse_compiled_work_without_stale_closures():
    import time

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return float(out), time.perf_counter() - t

    timed(lambda: rootdiff.bisection(sqrt_f, 0.0, 3.0, 2.0))
    r, dt = timed(lambda: rootdiff.bisection(sqrt_f, 0.0, 3.0, 3.0))
    assert r == pytest.approx(np.sqrt(3.0), rel=1e-15)
    assert dt < 0.1  # compiled once: a re-traced loop costs ~1 s
    # A new closure over a new array each call: same compiled loop, fresh values.
    times = []
    for c in (1.0, 2.0, 3.0):
        arr = jnp.array([c, c])
        r, dt = timed(lambda: rootdiff.bisection(lambda t: jnp.sum(t - arr), -10.0, 10.0))
        assert r == c
        times.append(dt)
    assert min(times[1:]) < 0.1

    # A mutable object's method is not cached on its identity.
    class Shift:
        def __init__(self, a):
            self.a = a

        def f(self, x):
            return x - self.a

    s = Shift(jnp.array(1.0))
    assert float(rootdiff.bisection(s.f, -3.0, 3.0)) == 1.0
    s.a = jnp.array(2.0)
    assert float(rootdiff.bisection(s.f, -3.0, 3.0)) == 2.0


# --------------------------------------------------------------------------- bracket expansion


def test_expansion_finds_a_root_outside_the_bracket():
    """Brackets that miss the root on either side are widened until they hold it."""
    cube_f = lambda x, a: x**3 - a
    for lo, hi, a in [(0.0, 1.0, 64.0), (10.0, 20.0, 8.0), (5.0, 5.0, -1.0)]:
        x, info = rootdiff.bisection(cube_f, lo, hi, a, expand=True, return_info=True)
        assert float(x) == pytest.approx(np.cbrt(a), rel=1e-15)
        assert int(info.expansions) >= 1 and bool(info.converged)
        assert int(info.iterations) <= 65
    # decreasing f, root far below the bracket
    x = rootdiff.bisection(lambda x: -(x + 1e5), 0.0, 1.0, expand=True)
    assert float(x) == pytest.approx(-1e5, rel=1e-15)
    # the derivative is the implicit one, whatever the widening
    g = jax.grad(lambda a: rootdiff.bisection(sqrt_f, 0.0, 1.0, a, expand=True))(16.0)
    assert float(g) == pytest.approx(1 / 8, rel=1e-12)
    batched = jax.jit(jax.vmap(lambda a: rootdiff.bisection(sqrt_f, 0.0, 1.0, a, expand=True)))
    np.testing.assert_allclose(batched(jnp.array([0.25, 100.0, 1e6])), [0.5, 10.0, 1e3], rtol=1e-15)


def test_expansion_budget_and_no_root():
    with pytest.raises(ValueError, match="after 3 widenings"):
        rootdiff.bisection(sqrt_f, 0.0, 1.0, 1e6, expand=3)
    with pytest.raises(ValueError, match="f does not change sign"):
        rootdiff.bisection(lambda x: x**2 + 1.0, 0.0, 1.0, expand=True)  # no root at all
    with pytest.warns(rootdiff.ConvergenceWarning):
        x = jax.jit(lambda a: rootdiff.bisection(sqrt_f, 0.0, 1.0, a, expand=3))(1e6)
    assert np.isnan(x)
