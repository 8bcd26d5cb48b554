"""The ``check`` mechanism: right or flagged, never silently wrong, and no false alarms.

References are closed forms. Each test names the guarantee it pins down.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import rootdiff
from rootdiff import _checks

# --------------------------------------------------------------------------- forward check


def _ridge_data(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 20))
    X[:, 10:] *= 0.05  # weakly determined directions: small gradient, far minimiser
    w0 = rng.normal(size=20)
    y = X @ w0 + 0.1 * rng.normal(size=200)
    Xv = rng.normal(size=(50, 20))
    Xv[:, 10:] *= 0.05
    return [jnp.asarray(a, dtype) for a in (X, y, Xv, Xv @ w0)]


def _ridge_hypergradient(steps, dtype, lam=-9.21):  # log(1e-4)
    X, y, Xv, yv = _ridge_data(dtype)
    obj = lambda w, lam: 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.exp(lam) * jnp.sum(w**2)  # noqa: E731
    val = lambda w: jnp.mean((Xv @ w - yv) ** 2)  # noqa: E731

    @rootdiff.argmin(obj)
    def fit(w, lam):
        return jax.lax.fori_loop(0, steps, lambda _, w: w - 0.5 * jax.grad(obj)(w, lam), w)

    def exact(lam):
        A = X.T @ X / X.shape[0] + jnp.exp(lam) * jnp.eye(20)
        return jnp.linalg.solve(A, X.T @ y / X.shape[0])

    lam = jnp.asarray(lam, dtype)
    got = jax.jit(jax.grad(lambda lam: val(fit(jnp.zeros(20, dtype), lam))))(lam)
    return got, jax.grad(lambda lam: val(exact(lam)))(lam)


def test_float32_weakly_curved_argmin_is_flagged(float32):
    """A small gradient far from the minimiser (3000 gradient steps, float32):
    the hypergradient is ~80 % off; the old absolute residual test passed it."""
    with pytest.warns(rootdiff.ConvergenceWarning, match="relative Newton step"):
        got, exact = _ridge_hypergradient(3000, jnp.float32)
    assert abs(float(got) / float(exact) - 1) > 0.1  # really wrong: the flag is earned


def test_float32_converged_argmin_is_right_and_silent(float32, recwarn):
    got, exact = _ridge_hypergradient(20000, jnp.float32)
    np.testing.assert_allclose(float(got), float(exact), rtol=5e-3)
    assert not [w for w in recwarn if issubclass(w.category, rootdiff.ConvergenceWarning)]


P = jnp.array([0.3, -1.2, 0.7])
W = jnp.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.1, 0.2, 0.3]])


def _F(x, p):
    return x + 0.3 * jnp.tanh(W @ x) - p


@jax.jit
def _newton(x, p):
    step = lambda _, x: x - jnp.linalg.solve(jax.jacfwd(_F)(x, p), _F(x, p))  # noqa: E731
    return jax.lax.fori_loop(0, 30, step, x)


def _perturbed_solver(err, **kw):
    """A solver accurate to ``err`` (relative), as a peer's loose tolerance leaves it."""
    return rootdiff.custom_root(_F, **kw)(lambda x, p: _newton(x, p) * (1 + err))


def _jac_error(err, **kw):
    J = jax.jacrev(lambda p: _perturbed_solver(err, **kw)(jnp.zeros(3), p))(P)
    J_exact = jnp.linalg.inv(jax.jacfwd(_F)(_newton(jnp.zeros(3), P), P))  # ∂ₚF = −I
    return float(jnp.max(jnp.abs(J - J_exact)) / jnp.max(jnp.abs(J_exact)))


def test_no_false_alarm_at_loose_but_adequate_tolerance(recwarn):
    """Solved to 1e-6 (a peer library's usual forward tolerance): the derivative is
    within 1e-5 and nothing is reported (the old absolute test, sqrt(eps) = 1.5e-8
    on |F|, warned here)."""
    assert _jac_error(1e-6) < 1e-5
    assert not [w for w in recwarn if issubclass(w.category, rootdiff.ConvergenceWarning)]


def test_inaccurate_solution_is_flagged_with_its_estimated_error():
    with pytest.warns(rootdiff.ConvergenceWarning, match=r"Newton step .* 9\.99\de-04 > tolerance"):
        assert _jac_error(1e-3) > 1e-5  # beyond the stated float64 tolerance
    # the user's own tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("error", rootdiff.ConvergenceWarning)
        _jac_error(1e-3, step_tol=1e-2)
    with pytest.warns(rootdiff.ConvergenceWarning, match="residual max"):
        _jac_error(1e-3, residual_tol=1e-6)


def test_exact_root_at_singular_jacobian_is_not_flagged(recwarn):
    double = rootdiff.custom_root(lambda x, a: (x - a) ** 2)(lambda x, a: a)
    np.testing.assert_allclose(double(jnp.zeros(2), jnp.ones(2)), jnp.ones(2))
    assert not [w for w in recwarn if issubclass(w.category, rootdiff.ConvergenceWarning)]


# --------------------------------------------------------------------------- nan mode


def test_nan_mode_poisons_values_and_every_derivative():
    # F is linear in x, so its Jacobian does not see the NaN: the poisoning must.
    F = lambda x, a: 2.0 * x - a  # noqa: E731
    wrong = rootdiff.custom_root(F, check="nan")(lambda x, a: a)
    f = lambda a: wrong(jnp.ones(2), a)  # noqa: E731
    a = jnp.array([4.0, 9.0])
    assert np.all(np.isnan(f(a)))
    assert np.all(np.isnan(jax.grad(lambda a: f(a).sum())(a)))
    assert np.all(np.isnan(jax.jvp(f, (a,), (jnp.ones(2),))[1]))
    assert np.all(np.isnan(jax.jacfwd(f)(a)))
    assert np.all(np.isnan(jax.jit(jax.jacrev(f))(a)))
    right = rootdiff.custom_root(F, check="nan")(lambda x, a: a / 2)
    g = jax.grad(lambda a: right(jnp.ones(2), a).sum())(a)
    np.testing.assert_allclose(g, [0.5, 0.5])


def test_non_finite_solution_has_nan_derivatives_even_with_check_off():
    """A solver that reports failure by NaN (as QP solvers do with check="nan"),
    and a linear optimality function whose Jacobian does not see the NaN."""
    s = rootdiff.custom_root(lambda x, b: 2.0 * x - b, check="off")(
        lambda x, b: jnp.where(b > 0, b / 2, jnp.nan)
    )
    g = jax.vmap(jax.grad(lambda b: s(0.0, b)))(jnp.array([1.0, -1.0]))
    assert g[0] == 0.5 and np.isnan(g[1])  # per problem under vmap


def test_poison_helper():
    v, ok = jnp.array([1.0, 2.0]), jnp.array([True, False])
    out, t = jax.jvp(lambda v: _checks.poison(v, ok), (v,), (jnp.ones(2),))
    assert out[0] == 1 and np.isnan(out[1]) and t[0] == 1 and np.isnan(t[1])
    g = jax.grad(lambda v: _checks.poison(v, ok).sum())(v)
    assert g[0] == 1 and np.isnan(g[1])


# --------------------------------------------------------------------------- inputs


def test_complex_params_non_holomorphic():
    """x + ½ conj(x) = a: Re x = Re a / 1.5, Im x = Im a / 0.5 (dx/d(Im a) = 2i)."""
    F = lambda x, a: x + 0.5 * jnp.conj(x) - a  # noqa: E731
    solve = rootdiff.custom_root(F)(lambda x, a: jnp.real(a) / 1.5 + 1j * jnp.imag(a) / 0.5)
    a = jnp.array([1.0 + 1.0j, -2.0 + 0.5j])
    x0 = jnp.zeros(2, jnp.complex128)
    _, t = jax.jvp(lambda a: solve(x0, a), (a,), (1j * jnp.ones(2),))
    np.testing.assert_allclose(t, 2j * jnp.ones(2))
    g = jax.grad(lambda r: jnp.real(solve(x0, a + r)).sum())(jnp.zeros(2))
    np.testing.assert_allclose(g, jnp.full(2, 1 / 1.5))
    jax.test_util.check_grads(lambda a: solve(x0, a), (a,), order=1, modes=["fwd", "rev"])


def test_complex_argmin():
    """min |x − a|² + c (Re x)²: Re x = Re a/(1+c), Im x = Im a."""
    obj = lambda x, a: jnp.sum(jnp.abs(x - a) ** 2 + 0.5 * jnp.real(x) ** 2)  # noqa: E731
    sol = rootdiff.argmin(obj)(lambda x, a: jnp.real(a) / 1.5 + 1j * jnp.imag(a))
    a = jnp.array([1.0 + 2.0j])
    _, t_re = jax.jvp(lambda a: sol(jnp.zeros(1, jnp.complex128), a), (a,), (jnp.ones(1) + 0j,))
    _, t_im = jax.jvp(lambda a: sol(jnp.zeros(1, jnp.complex128), a), (a,), (1j * jnp.ones(1),))
    np.testing.assert_allclose(t_re, [1 / 1.5])
    np.testing.assert_allclose(t_im, [1j])


def test_root_jvp_and_vjp_treat_python_floats_as_arrays():
    F = lambda x, a: x**2 - a  # noqa: E731
    np.testing.assert_allclose(rootdiff.root_jvp(F, jnp.array(2.0), (4.0,), (1.0,)), 0.25)
    (g,) = rootdiff.root_vjp(F, jnp.array(2.0), (4.0,), jnp.array(1.0))
    np.testing.assert_allclose(g, 0.25)
    # integers stay non-differentiable
    (g,) = rootdiff.root_vjp(lambda x, n: x**2 - n, jnp.array(2.0), (4,), jnp.array(1.0))
    assert g is None


def test_python_scalar_init_params_error_is_a_value_error():
    s = rootdiff.custom_root(lambda x, a: x - a)(lambda x, a: jnp.ones(2) * a)
    with pytest.raises(ValueError, match=r"init_params is .*float\d*\[\]"):
        s(0.0, jnp.ones(2))


def test_keyword_arguments_bind_to_positional_parameters():
    """jaxopt's pattern: ``solver(None, lam, X=X, y=y)`` with an optimality function
    ``jax.grad(objective)`` whose parameters are all positional."""

    def objective(w, lam, X, y):
        return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)

    def solver(_init, lam, X, y):
        return jnp.linalg.solve(X.T @ X / len(y) + lam * jnp.eye(2), X.T @ y / len(y))

    X, y = jnp.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]]), jnp.array([1.0, 0.0, -1.0])
    dec = rootdiff.custom_root(jax.grad(objective))(solver)
    J = jax.jacrev(dec, argnums=1)(None, 0.3, X=X, y=y)
    np.testing.assert_allclose(J, jax.jacrev(solver, argnums=1)(None, 0.3, X, y), rtol=1e-10)


# --------------------------------------------------------------------------- reporting


def test_user_exception_is_reraised_with_a_note():
    class Odd(Exception):
        def __init__(self, a, b):  # a constructor type(e)(msg) cannot rebuild
            super().__init__(f"{a}/{b}")

    def F(x, a):
        raise Odd(1, 2)

    s = rootdiff.custom_root(F)(lambda x, a: a)
    with pytest.raises(Odd, match="1/2") as info:
        s(jnp.zeros(2), jnp.ones(2))
    assert any(
        "evaluated at the solver's output" in n for n in getattr(info.value, "__notes__", [])
    )

    def branchy(x, a):
        return x - a if x[0] > 0 else x + a  # Python `if` on a tracer

    with pytest.raises(jax.errors.TracerBoolConversionError):
        rootdiff.custom_root(branchy)(lambda x, a: a)(jnp.zeros(2), jnp.ones(2))


def test_one_warning_per_call_at_the_users_line():
    wrong = rootdiff.custom_root(lambda x, a: x**2 - a)(lambda x, a: a)
    for f, a in (
        (lambda a: wrong(1.0, a), 4.0),
        (jax.grad(lambda a: wrong(1.0, a)), 4.0),
        (jax.grad(jax.jit(lambda a: wrong(1.0, a))), 4.0),
        (jax.vmap(jax.grad(lambda a: wrong(1.0, a))), jnp.array([4.0, 9.0])),
    ):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            jax.block_until_ready(f(a))
        assert len(rec) == 1, [str(w.message) for w in rec]
        assert rec[0].filename == __file__


def test_backward_warning_prints_the_tolerance_used():
    cg1 = functools.partial(rootdiff.linear_solve.cg, maxiter=1)
    F = lambda x, a: jnp.array([[3.0, 1.0, 0], [1.0, 2.0, 0.5], [0, 0.5, 1]]) @ x - a  # noqa: E731
    s = rootdiff.custom_root(F, solve=cg1, symmetric=True)(lambda x, a: jnp.linalg.solve(
        jnp.array([[3.0, 1.0, 0], [1.0, 2.0, 0.5], [0, 0.5, 1]]), a))  # fmt: skip
    tol = rootdiff.linear_solve.default_tol(jnp.float64)
    with pytest.warns(rootdiff.ConvergenceWarning, match=f"> tolerance {tol:.3e}"):
        jax.grad(lambda a: s(jnp.zeros(3), a).sum())(jnp.array([1.0, -1.0, 2.0]))


def test_forward_check_measures_in_one_reduction():
    """max|F(x)|, max|δ| and max|x| of the forward check are one (variadic) reduction
    when params is one array: fewer kernels for XLA to compile (40 before, 35 here)."""
    import re

    n = 200
    M = jnp.eye(n) * 2.0 + 0.01
    f = rootdiff.custom_root(lambda x, a: M @ x - a, solve="cg", symmetric=True)(
        lambda x, a: a / 2.0
    )
    hlo = jax.jit(lambda a: f(jnp.zeros(n), a)).lower(jnp.ones(n)).compile().as_text()
    kernels = len(re.findall(r"\s(fusion|dot|while|conditional|custom-call|sort)\(", hlo))
    assert kernels <= 36, kernels


def test_max_abs_each_propagates_nan_and_handles_pytrees():
    from rootdiff._trees import _max_abs_each

    one = _max_abs_each(jnp.array([1.0, jnp.nan]), jnp.array([-3.0, 0.0]), jnp.zeros(2))
    assert np.isnan(one[0]) and float(one[1]) == 3.0 and float(one[2]) == 0.0
    mixed = _max_abs_each(jnp.array([1.0, -2.0]), (jnp.array([-3.0]), jnp.ones(3)), jnp.zeros(3))
    assert [float(m) for m in mixed] == [2.0, 3.0, 0.0]
    # A wrong answer with pytree params (the per-leaf path) is still reported.
    F = lambda x, a: (x[0] - a, x[1] - 2 * a[:1])  # noqa: E731
    wrong = rootdiff.custom_root(F)(lambda x, a: (a + 1.0, 2 * a[:1]))
    with pytest.warns(rootdiff.ConvergenceWarning, match="forward solve"):
        wrong((jnp.zeros(2), jnp.zeros(1)), jnp.ones(2))


def test_newton_step_by_cg_estimate_measures_the_error():
    """With ``solve="cg"`` the Newton step is a plain CG (no verification on the true
    residual): a 1e-3 relative error is reported as about 1e-3, an accurate
    minimiser is not flagged."""
    rng = np.random.default_rng(3)
    M = rng.normal(size=(30, 30))
    H = jnp.asarray(M @ M.T / 30 + np.eye(30))
    obj = lambda x, c, err: 0.5 * x @ H @ x - c @ x  # noqa: E731
    c = jnp.asarray(rng.normal(size=30))
    solver = rootdiff.argmin(obj, solve="cg")(lambda x, c, err: jnp.linalg.solve(H, c) * (1 + err))
    with pytest.warns(
        rootdiff.ConvergenceWarning, match=r"Newton step .* 9\.9\d\de-04 > tolerance"
    ):
        solver(jnp.zeros(30), c, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rootdiff.ConvergenceWarning)
        solver(jnp.zeros(30), c, 0.0)


def test_newton_step_by_gmres_estimate_measures_the_error():
    """A large nonsymmetric system (``solve="auto"`` picks GMRES): a 1e-3 relative
    error is reported as about 1e-3, an accurate solution is not flagged, and the
    gradient is exact. Without a derivative the Newton step runs the estimate's loop
    (no GMRES: no triangular solve in the program); with one it runs GMRES, the
    derivative's own loop, whose kernels XLA compiles once for both."""
    n = 120  # above linear_solve.DENSE_THRESHOLD
    rng = np.random.default_rng(5)
    A = jnp.asarray(np.eye(n) + 0.3 * rng.normal(size=(n, n)) / np.sqrt(n))
    A_inv = jnp.linalg.inv(A)  # the forward solve, without a triangular solve of its own
    F = lambda x, c, err: A @ x - c  # noqa: E731
    solver = rootdiff.custom_root(F)(lambda x, c, err: (A_inv @ c) * (1 + err))
    c = jnp.asarray(rng.normal(size=n))
    flagged = r"Newton step .* (9\.99\d|1\.000)e-0[34] >"
    with pytest.warns(rootdiff.ConvergenceWarning, match=flagged):
        solver(jnp.zeros(n), c, 1e-3)
    loss = lambda c: jnp.sum(solver(jnp.zeros(n), c, 0.0))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error", rootdiff.ConvergenceWarning)
        g = jax.grad(loss)(c)
        xs = jax.vmap(lambda c: solver(jnp.zeros(n), c, 0.0))(jnp.stack([c, -c]))
    np.testing.assert_allclose(g, jnp.linalg.solve(A.T, jnp.ones(n)), rtol=1e-9)
    np.testing.assert_allclose(xs[1], -A_inv @ c, rtol=1e-12)
    with pytest.warns(rootdiff.ConvergenceWarning, match="in 1 of 2 problem"):
        jax.vmap(lambda c, e: solver(jnp.zeros(n), c, e))(jnp.stack([c, c]), jnp.array([0, 1e-3]))
    assert "triangular_solve" not in str(jax.make_jaxpr(loss)(c))
    assert "triangular_solve" in str(jax.make_jaxpr(jax.grad(loss))(c))
