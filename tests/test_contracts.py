"""Every public solver through the compositions other libraries' test suites use.

``grad`` of a ``jit``-ted function, ``jacrev``/``jvp`` of one, a differentiated
``lax.scan`` whose body calls the solver, ``remat`` (``jax.checkpoint``) and
``vmap`` of a differentiated scan — in particular for linear ``solve`` callables
that close over traced values (a factorisation computed inside the traced
function, or of a value being differentiated), the way rootdiff's QP solvers and
JAX's own ``custom_root`` tests are written. References: closed forms
(``jnp.linalg.solve``, ``sqrt``) and, for the bundled solvers, their plain
``jax.grad`` (itself checked against finite differences in their own modules).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.projections import projection_non_negative

import rootdiff

RNG = np.random.default_rng(0)
A3 = jnp.asarray(RNG.normal(size=(3, 3)) + 3 * np.eye(3))  # non-symmetric, well conditioned
B3 = jnp.asarray(RNG.normal(size=3))
SPD = A3 @ A3.T


def close(a, b, rtol=1e-6, atol=1e-9):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _residual(x, a, b):
    return a @ x - b


def lu_linear_solve(a, b):
    """``a⁻¹ b`` by a decorated solver whose solves close over an LU factorisation."""
    lu = jax.scipy.linalg.lu_factor(jax.lax.stop_gradient(a))

    @rootdiff.custom_root(
        _residual,
        solve=lambda _mv, r: jax.scipy.linalg.lu_solve(lu, r),
        transpose_solve=lambda _vm, r: jax.scipy.linalg.lu_solve(lu, r, trans=1),
    )
    def solver(_x0, a, b):
        return jax.scipy.linalg.lu_solve(lu, b)

    return solver(jnp.zeros_like(b), a, b)


def cho_linear_solve(a, b):
    """JAX's own pattern: the factorisation is of the value being differentiated."""
    factors = jax.scipy.linalg.cho_factor(a)
    cho = lambda _mv, r: jax.scipy.linalg.cho_solve(factors, r)  # noqa: E731

    @rootdiff.custom_root(_residual, solve=cho, symmetric=True)
    def solver(_x0, a, b):
        return jax.scipy.linalg.cho_solve(factors, b)

    return solver(jnp.zeros_like(b), a, b)


def _loss(solve):
    return lambda a, b: jnp.sum(jnp.sin(solve(a, b)))


def _ref_loss(a, b):
    return jnp.sum(jnp.sin(jnp.linalg.solve(a, b)))


@pytest.mark.parametrize("solve, a", [(lu_linear_solve, A3), (cho_linear_solve, SPD)])
def test_closed_over_solve_under_jit_outside_grad(solve, a):
    loss = _loss(solve)
    ref = jax.grad(_ref_loss, argnums=(0, 1))(a, B3)
    close(jax.grad(jax.jit(loss), argnums=(0, 1))(a, B3), ref)
    close(jax.grad(loss, argnums=(0, 1))(a, B3), ref)  # eager grad, traced factorisation
    close(jax.jacrev(jax.jit(solve), argnums=1)(a, B3), jnp.linalg.inv(a))
    t = jnp.ones(3)
    _, tangent = jax.jvp(jax.jit(lambda b: solve(a, b)), (B3,), (t,))
    close(tangent, jnp.linalg.solve(a, t))


def _scan_remat(f):
    """θ ↦ Σ_{k<2} f(θ · (1 + k/10)), each step rematerialised, via ``lax.scan``."""

    def total(theta):
        def body(carry, k):
            return carry + f(theta * (1 + 0.1 * k)), None

        return jax.lax.scan(jax.checkpoint(body), 0.0, jnp.arange(2.0))[0]

    return total


def _check_compositions(f, theta, ref_grad=None, rtol=1e-6):
    """``f`` through jit-outside-grad, grad-of-scan with remat and vmap-of-scan.

    References: ``ref_grad`` (a closed form) or ``jit(grad(f))``; the scan's is the
    same gradient at the two points the scan visits.
    """
    grad_jit = jax.grad(jax.jit(f))
    ref = jax.jit(jax.grad(f) if ref_grad is None else ref_grad)
    close(grad_jit(theta), ref(theta), rtol=rtol)
    scan_ref = ref(theta) + 1.1 * ref(theta * 1.1)
    # Under jax.jit (compiled once, not op by op): the solver is traced in the scan's
    # body either way.
    got = jax.jit(jax.vmap(jax.grad(_scan_remat(f))))(jnp.stack([theta, theta]))
    close(got, jnp.stack([scan_ref, scan_ref]), rtol=rtol)


def test_closed_over_solve_in_scan_remat_vmap():
    ref_b = jax.grad(lambda b: _ref_loss(A3, b))
    _check_compositions(lambda b: _loss(lu_linear_solve)(A3, b), B3, ref_b)
    ref_a = jax.grad(lambda a: _ref_loss(a, B3))
    _check_compositions(lambda a: _loss(cho_linear_solve)(a, B3), SPD, ref_a)


def test_solve_ignoring_its_operator_is_flagged_without_transpose_solve():
    def solve(a, b):
        lu = jax.scipy.linalg.lu_factor(jax.lax.stop_gradient(a))
        pre = lambda _mv, r: jax.scipy.linalg.lu_solve(lu, r)  # noqa: E731
        s = rootdiff.custom_root(_residual, solve=pre)(lambda _x, a, b: pre(None, b))
        return s(jnp.zeros(3), a, b)

    with pytest.warns(rootdiff.ConvergenceWarning, match="adjoint system"):
        jax.grad(lambda b: solve(A3, b).sum())(B3)
    # forward mode uses the operator the solve was written for: right, silent
    _, t = jax.jvp(lambda b: solve(A3, b), (B3,), (jnp.ones(3),))
    close(t, jnp.linalg.solve(A3, jnp.ones(3)))


def test_transpose_solve_in_custom_fixed_point_and_root_vjp():
    # fixed point x = x - (A x - b) / 4 ... written with a pre-factorised solve of I - T'
    T = lambda x, a, b: x - 0.25 * (a @ x - b)  # noqa: E731
    lu = jax.scipy.linalg.lu_factor(0.25 * A3)  # ∂ₓ(T - x) = -A/4

    @rootdiff.custom_fixed_point(
        T,
        solve=lambda _mv, r: -jax.scipy.linalg.lu_solve(lu, r),
        transpose_solve=lambda _vm, r: -jax.scipy.linalg.lu_solve(lu, r, trans=1),
    )
    def fp(_x0, a, b):
        return jnp.linalg.solve(a, b)

    ones = jnp.ones(3)
    close(jax.grad(lambda b: fp(jnp.zeros(3), A3, b).sum())(B3), jnp.linalg.solve(A3.T, ones))
    x = jnp.linalg.solve(A3, B3)
    lu_a = jax.scipy.linalg.lu_factor(A3)
    (_, gb) = rootdiff.root_vjp(
        _residual, x, (A3, B3), jnp.ones(3),
        solve=lambda _mv, r: jax.scipy.linalg.lu_solve(lu_a, r),
        transpose_solve=lambda _vm, r: jax.scipy.linalg.lu_solve(lu_a, r, trans=1),
    )  # fmt: skip
    close(gb, jnp.linalg.solve(A3.T, jnp.ones(3)))


# --------------------------------------------------------------------------- bundled solvers

Q2 = jnp.array([[2.0, 0.5], [0.5, 1.0]])
A12 = jnp.array([[1.0, 1.0]])


def test_solve_eq_qp_contracts():
    def x_of(b):
        return rootdiff.solve_eq_qp(Q2, jnp.array([0.3, -0.2]), A12, b)[0]

    def ref_x(b):
        K = jnp.block([[Q2, A12.T], [A12, jnp.zeros((1, 1))]])
        return jnp.linalg.solve(K, jnp.concatenate([-jnp.array([0.3, -0.2]), b]))[:2]

    f = lambda b: jnp.sum(jnp.sin(x_of(b)))  # noqa: E731
    b = jnp.array([1.0])
    close(jax.jacrev(jax.jit(x_of))(b), jax.jacrev(ref_x)(b))
    _check_compositions(f, b, jax.grad(lambda b: jnp.sum(jnp.sin(ref_x(b)))))


def test_solve_qp_contracts():
    # One inequality, active at the solution: the QP is the equality-constrained
    # one on that row, whose KKT system gives x(h) in closed form.
    q, G = jnp.array([-1.0, -2.0]), A12

    def f(h):
        return jnp.sum(jnp.sin(rootdiff.solve_qp(Q2, q, jnp.zeros((0, 2)), jnp.zeros(0), G, h)))

    def ref(h):
        K = jnp.block([[Q2, G.T], [G, jnp.zeros((1, 1))]])
        return jnp.sum(jnp.sin(jnp.linalg.solve(K, jnp.concatenate([-q, h]))[:2]))

    _check_compositions(f, jnp.array([1.0]), jax.grad(ref), rtol=1e-5)


def test_bisection_contracts():
    def f(a):
        return rootdiff.bisection(lambda x, a: x**2 - a, 0.0, 3.0, a) ** 3

    _check_compositions(f, jnp.array(2.0), lambda a: 1.5 * jnp.sqrt(a))  # d a^{3/2}/da


def test_projected_gradient_contracts():
    # Non-negative least squares whose second coordinate stays at its bound:
    # x = ((b₁ + b₃)/2, 0) near b.
    M = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    fun = lambda x, b: 0.5 * jnp.sum((M @ x - b) ** 2)  # noqa: E731

    def f(b):
        x = rootdiff.projected_gradient(fun, jnp.zeros(2), projection_non_negative, b)
        return jnp.sum(jnp.sin(x))

    ref = jax.grad(lambda b: jnp.sin(0.5 * (b[0] + b[2])))
    _check_compositions(f, jnp.array([1.0, -2.0, 1.0]), ref, rtol=1e-5)


def _sparsemax_sort(x):
    """Sort-based sparsemax (differentiable by plain JAX): the reference."""
    z = jnp.sort(x)[::-1]
    k = jnp.arange(1, x.size + 1)
    support = 1 + k * z > jnp.cumsum(z)
    n = jnp.sum(support)
    tau = (jnp.sum(jnp.where(support, z, 0.0)) - 1) / n
    return jnp.maximum(x - tau, 0.0)


def test_layers_contracts():
    x = jnp.array([0.3, -0.1, 0.25, 0.05])
    w = jnp.arange(1.0, 5.0)
    f = lambda x: jnp.sum(jnp.sin(rootdiff.layers.sparsemax(x)) * w)  # noqa: E731
    _check_compositions(f, x, jax.grad(lambda x: jnp.sum(jnp.sin(_sparsemax_sort(x)) * w)))
    g = lambda x: jnp.sum(jnp.sin(rootdiff.layers.lml(x, 2)) * w)  # noqa: E731
    _check_compositions(g, x, rtol=1e-5)
