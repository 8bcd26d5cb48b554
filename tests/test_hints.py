"""SolveHint: a solver's preconditioner and initial guesses for the derivative's solves.

A hint may only change how fast the linear solves converge, never the derivative
beyond the solve's tolerance. Reference: the closed-form Jacobian of the
fixed point ``z = tanh(W z + x)``, ``∂z/∂x = (I − D W)⁻¹ D`` with
``D = diag(1 − z²)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import rootdiff

N = 6
_rng = np.random.default_rng(0)
W0 = jnp.asarray(_rng.normal(size=(N, N)) * 0.6 / np.sqrt(N))
X0 = jnp.asarray(_rng.normal(size=N))
BAD = jnp.asarray(_rng.normal(size=(N, N))) + 2 * jnp.eye(N)  # a misleading preconditioner


def T(z, W, x):
    return jnp.tanh(W @ z + x)


def iterate(z, W, x):
    return jax.lax.fori_loop(0, 200, lambda _, z: T(z, W, x), z)


def _fixed_point_np(W, x):
    z = np.zeros(N)
    for _ in range(200):
        z = np.tanh(W @ z + x)
    return z


def closed_form_jac(W, x):
    """``∂z/∂x = (I − D W)⁻¹ D``, in NumPy float64."""
    W, x = np.asarray(W, np.float64), np.asarray(x, np.float64)
    D = np.diag(1 - _fixed_point_np(W, x) ** 2)
    return np.linalg.solve(np.eye(N) - D @ W, D)


@rootdiff.custom_fixed_point(T, solve="gmres", hints=True)
def wrong_hint(z, W, x):
    z = iterate(z, W, x)
    return z, rootdiff.SolveHint(
        precond=Partial(jnp.matmul, BAD), init=jnp.full(N, 7.0), transpose_init=-jnp.ones(N)
    )


@rootdiff.custom_fixed_point(T, solve="gmres", has_aux=True, hints=True)
def exact_hint(z, W, x):
    z = iterate(z, W, x)
    J = jnp.eye(N) - jnp.diag(1 - z**2) @ W  # ∂ₓF = −J; the exact inverse preconditions
    return (
        z,
        {"iterations": 200},
        rootdiff.SolveHint(precond=Partial(jnp.matmul, -jnp.linalg.inv(J))),
    )


def _modes(s):
    """Every mode, in one jitted program (one compilation): grad, jvp, jacfwd, vmap, jacrev."""
    return {
        "grad": jax.grad(lambda x: jnp.sum(jnp.sin(s(x))))(X0),
        "jvp": jax.jvp(s, (X0,), (jnp.arange(N, dtype=X0.dtype),))[1],
        "jacfwd": jax.jacfwd(s)(X0),
        "vmap": jax.vmap(jax.jacrev(s))(jnp.stack([X0, -X0])),
    }


def _reference():
    J = closed_form_jac(W0, X0)
    z = _fixed_point_np(np.asarray(W0), np.asarray(X0))
    return {
        "grad": J.T @ np.cos(z),
        "jvp": J @ np.arange(N),
        "jacfwd": J,
        "vmap": np.stack([J, closed_form_jac(W0, -X0)]),
    }


def test_hints_do_not_change_derivatives():
    @jax.jit
    def run():
        wrong = _modes(lambda x: wrong_hint(jnp.zeros(N), W0, x))
        exact = _modes(lambda x: exact_hint(jnp.zeros(N), W0, x)[0])
        return wrong, exact, exact_hint(jnp.zeros(N), W0, X0)[1]

    wrong, exact, aux = run()
    ref = _reference()
    for name in ref:
        np.testing.assert_allclose(wrong[name], ref[name], rtol=1e-9, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(exact[name], ref[name], rtol=1e-9, atol=1e-11, err_msg=name)
    assert int(aux["iterations"]) == 200  # aux passes through next to the hint


def test_hint_float32(float32):
    W, x = W0.astype(jnp.float32), X0.astype(jnp.float32)

    @rootdiff.custom_fixed_point(T, solve="gmres", hints=True)
    def solver(z, W, x):
        # ∂ₓF = DW − I ≈ −I: the preconditioner −I (also used by the forward check).
        M = Partial(jnp.matmul, -jnp.eye(N, dtype=jnp.float32))
        return iterate(z, W, x), rootdiff.SolveHint(precond=M, init=jnp.ones(N, jnp.float32))

    g = jax.jacrev(lambda x: solver(jnp.zeros(N, jnp.float32), W, x))(x)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, closed_form_jac(W0, X0), rtol=1e-4, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="hints=True needs solve= to be a Krylov solver"):
        rootdiff.custom_fixed_point(T, solve="lu", hints=True)
    bad = rootdiff.custom_fixed_point(T, solve="gmres", hints=True)(iterate)
    with pytest.raises(TypeError, match=r"must return \(params, hint\)"):
        bad(jnp.zeros(N), W0, X0)
    no_hint = rootdiff.custom_fixed_point(T, solve="gmres", hints=True)(
        lambda z, W, x: (iterate(z, W, x), None)
    )
    with pytest.raises(TypeError, match="must be a rootdiff.SolveHint"):
        no_hint(jnp.zeros(N), W0, X0)


def test_converged_hinted_solve_spends_no_second_stage():
    # A hinted solve that met its tolerance is final: an exact initial guess costs
    # the one product that verifies it, no second (unhinted) stage. A wrong guess
    # still reaches the answer.
    import functools

    from rootdiff import _hints, linear_solve
    from rootdiff._solves import _run_solve

    A = jnp.eye(N) - 0.5 * W0
    b = jnp.arange(1.0, N + 1)
    x_exact = jnp.linalg.solve(A, b)
    products = []

    def matvec(v):
        jax.debug.callback(lambda: products.append(1))
        return A @ v

    run = functools.partial(_run_solve, check="off")
    hinted = jax.jit(lambda init: _hints.solve(linear_solve.gmres, matvec, b, None, init, run))
    for init, expected in ((x_exact, 1), (-x_exact, None)):
        products.clear()
        x, (rel, tol, its, ok) = hinted(init)
        jax.block_until_ready(x)
        assert bool(ok) and float(rel) <= float(tol)
        np.testing.assert_allclose(x, x_exact, rtol=1e-10)
        if expected is not None:
            assert len(products) == expected, products


def _counting_hint_solver(M_of, iters, calls):
    """A fixed-point solver whose hint's preconditioner ``M_of(z, W)`` counts its uses."""

    def counted(M, v):
        jax.debug.callback(lambda: calls.append(1))
        return M @ v

    @rootdiff.custom_fixed_point(T, solve="gmres", hints=True, check="raise")
    def solver(z, W, x):
        z = jax.lax.fori_loop(0, iters, lambda _, z: T(z, W, x), z)
        return z, rootdiff.SolveHint(precond=Partial(counted, M_of(z, W)))

    return solver


def test_forward_check_uses_the_preconditioner():
    """The forward check's Newton step ``(∂ₓF)⁻¹F`` solves the tangent system, the one
    the hint's preconditioner is for: an exact one makes it one GMRES step. A
    misleading one neither flags an accurate answer nor hides an inaccurate one."""
    exact = lambda z, W: -jnp.linalg.inv(jnp.eye(N) - jnp.diag(1 - z**2) @ W)  # noqa: E731
    calls = []
    z = _counting_hint_solver(exact, 200, calls)(jnp.zeros(N), W0, X0)  # no derivative
    jax.block_until_ready(z)
    assert 1 <= len(calls) <= 3, len(calls)  # without it: no use outside derivatives
    np.testing.assert_allclose(z, _fixed_point_np(np.asarray(W0), np.asarray(X0)), rtol=1e-12)
    misleading = lambda z, W: BAD  # noqa: E731
    jax.block_until_ready(_counting_hint_solver(misleading, 200, [])(jnp.zeros(N), W0, X0))
    with pytest.raises(Exception, match="forward solve"):
        jax.block_until_ready(_counting_hint_solver(misleading, 3, [])(jnp.zeros(N), W0, X0))
