"""Decorated solvers called without ``jax.jit`` are traced once, derivatives included.

Traces are counted by a Python side effect in the solver (it runs only while the
solver is traced); values are checked against closed forms.
"""

import jax
import jax.numpy as jnp
import numpy as np

import rootdiff


def F(x, a):
    return x**3 - a


def make_cube_root():
    count = [0]

    @rootdiff.custom_root(F)
    def cube_root(x, a):
        count[0] += 1
        return jax.lax.fori_loop(0, 40, lambda _, x: x - F(x, a) / (3 * x**2), x)

    return cube_root, count


A = jnp.array([8.0, 27.0, 2.0])


def test_repeated_eager_derivatives_trace_once():
    cube_root, count = make_cube_root()
    f = lambda a: jnp.sum(cube_root(jnp.ones(3), a) ** 2)  # Σ a^(2/3)  # noqa: E731
    for _ in range(2):
        h = jax.hessian(f)(A)
    assert count[0] == 1
    np.testing.assert_allclose(h, np.diag(-2 / 9 * np.asarray(A) ** (-4 / 3)), rtol=1e-10)
    for _ in range(2):
        g = jax.grad(f)(A)
        v = jax.vmap(jax.grad(f))(jnp.stack([A, 2 * A]))
    np.testing.assert_allclose(g, 2 / 3 * np.asarray(A) ** (-1 / 3), rtol=1e-10)
    np.testing.assert_allclose(v[1], 2 / 3 * np.asarray(2 * A) ** (-1 / 3), rtol=1e-10)
    assert count[0] == 1  # the same shapes: no new trace of the solver
    cube_root(jnp.ones(2), A[:2])  # new shapes: one new trace
    assert count[0] == 2


def test_under_jit_the_solver_is_inlined():
    cube_root, count = make_cube_root()
    jaxpr = jax.make_jaxpr(lambda a: cube_root(jnp.ones(3), a))(A)
    assert "jitted" not in str(jaxpr)  # no nested jit of the eager cache
    assert count[0] == 1


def test_closures_and_concrete_arguments_still_work():
    def outer(b):  # decorated inside a traced function, closing over a tracer
        @rootdiff.custom_root(lambda x, a: x**3 - a * b)
        def s(x, a):
            return jax.lax.fori_loop(0, 40, lambda _, x: x - (x**3 - a * b) / (3 * x**2), x)

        return s(1.0, 8.0)

    np.testing.assert_allclose(jax.grad(outer)(1.0), 2 / 3, rtol=1e-10)

    count = [0]

    @rootdiff.custom_root(lambda x, a, n, update: F(x, a))
    def python_loop(x, a, n, update):  # a static int, and a callable: not cached
        count[0] += 1
        for _ in range(n):
            x = update(x, a)
        return x

    newton = lambda x, a: x - F(x, a) / (3 * x**2)  # noqa: E731
    for _ in range(2):
        g = jax.grad(python_loop, argnums=1)(jnp.array(2.0), jnp.array(8.0), 8, newton)
    np.testing.assert_allclose(g, 1 / 12, rtol=1e-10)
    assert count[0] == 2
