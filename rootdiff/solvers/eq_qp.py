r"""Equality-constrained quadratic programs, differentiable through their KKT system.

.. math::  \min_x\ \tfrac12 x^⊤Qx + c^⊤x \quad\text{s.t.}\quad Ax = b

is solved by one direct solve of its KKT system

.. math::  K \begin{bmatrix}x\\ y\end{bmatrix} =
           \begin{bmatrix}-c\\ b\end{bmatrix},\qquad
           K = \begin{bmatrix}Q & A^⊤\\ A & 0\end{bmatrix},

whose residual ``F(x, y) = (Qx + c + Aᵀy, Ax − b)`` is the optimality function
given to :func:`rootdiff.custom_root`. ``∂₍ₓ,ᵧ₎F = K``: the tangent and adjoint
systems are QPs with the same KKT matrix (seed 001), so the derivative's linear
solve reuses the forward LU factorisation of ``K`` instead of factorising again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from rootdiff import linear_solve as _ls
from rootdiff.implicit import custom_root

__all__ = ["solve_eq_qp", "eq_qp_kkt_residual"]


def _sym(Q: jax.Array) -> jax.Array:
    # The objective ½xᵀQx depends only on the symmetric part of Q; using it makes the
    # KKT matrix symmetric (so one factorisation serves both derivative modes) and
    # makes the derivative w.r.t. Q the symmetric one, ½(Q̄ + Q̄ᵀ).
    return 0.5 * (Q + Q.T)


def eq_qp_kkt_residual(
    primal_dual: tuple[jax.Array, jax.Array],
    Q: jax.Array | None,
    c: jax.Array,
    A: jax.Array,
    b: jax.Array,
    matvec_Q: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """KKT residual ``F(x, y) = (Q_s x + c + Aᵀy, Ax − b)`` with ``Q_s = (Q + Qᵀ)/2``.

    With ``matvec_Q`` given, ``Q x`` is ``matvec_Q(x)`` (assumed symmetric) and ``Q``
    is ignored.
    """
    x, y = primal_dual
    Qx = matvec_Q(x) if matvec_Q is not None else _sym(Q) @ x
    return Qx + c + A.T @ y, A @ x - b


def _kkt_matrix(Q: jax.Array, A: jax.Array) -> jax.Array:
    p = A.shape[0]
    top = jnp.concatenate([_sym(Q), A.T], axis=1)
    bottom = jnp.concatenate([A, jnp.zeros((p, p), A.dtype)], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def solve_eq_qp(
    Q: jax.Array | None,
    c: jax.Array,
    A: jax.Array,
    b: jax.Array,
    *,
    matvec_Q: Callable[[jax.Array], jax.Array] | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    check: str = "off",
) -> tuple[jax.Array, jax.Array]:
    r"""Primal and dual solution of ``min ½xᵀQx + cᵀx`` s.t. ``Ax = b``.

    The returned pair ``(x, y)`` solves the KKT system
    ``Q x + c + Aᵀ y = 0``, ``A x = b`` (``y`` is the multiplier of ``Ax = b``).
    Dense path (default): ``K = [[Q, Aᵀ], [A, 0]]`` is LU-factorised once
    (``jax.scipy.linalg.lu_factor``); the forward solve and every derivative solve
    (JVP and VJP, to any order) are triangular solves with that factorisation, so a
    ``jit(value_and_grad(...))`` costs one factorisation. ``Q`` is assumed symmetric
    (its symmetric part ``(Q + Qᵀ)/2`` is used, so ``∂/∂Q`` is a symmetric matrix).
    ``K`` must be nonsingular: ``A`` of full row rank and ``Q`` positive definite on
    the null space of ``A``; otherwise the result is ``inf``/``NaN``.

    Matrix-free path: pass ``matvec_Q`` (``x ↦ Q x``, symmetric; it may close over
    arrays, which then receive derivatives) and ``Q=None``. The KKT system (symmetric
    indefinite) is then solved by GMRES, forward and backward, with ``tol``/``maxiter``
    as in :func:`rootdiff.linear_solve.gmres` (default ``tol`` 1e-12 in float64).

    Derivatives w.r.t. ``Q``, ``c``, ``A``, ``b`` come from :func:`rootdiff.custom_root`
    on the KKT residual (:func:`eq_qp_kkt_residual`); every mode works (``grad``,
    ``jvp``, ``jacfwd``, ``jacrev``, ``hessian``, ``vmap``, ``jit``).

    Args:
      Q: ``(n, n)`` symmetric matrix, or ``None`` with ``matvec_Q``.
      c: ``(n,)`` linear cost.
      A: ``(p, n)`` equality constraint matrix (``p`` may be 0).
      b: ``(p,)`` right-hand side.
      matvec_Q: optional callable ``x ↦ Q x`` for the matrix-free path.
      tol, maxiter: GMRES options of the matrix-free path.
      check: forward residual check of :func:`rootdiff.custom_root`; ``"off"`` by
        default because a direct solve is exact up to rounding, whose absolute size
        scales with the data (a fixed threshold would warn spuriously).

    Returns:
      ``(x, y)``: primal ``(n,)`` and dual ``(p,)`` solutions.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> Q, c = jnp.eye(2), jnp.zeros(2)
      >>> A, b = jnp.array([[1.0, 1.0]]), jnp.array([1.0])
      >>> x, y = rootdiff.solve_eq_qp(Q, c, A, b)       # closest point to 0 on x₁+x₂=1
      >>> [round(float(v), 6) for v in x], round(float(y[0]), 6)
      ([0.5, 0.5], -0.5)
      >>> g = jax.grad(lambda b: rootdiff.solve_eq_qp(Q, c, A, b)[0][0])(b)
      >>> round(float(g[0]), 6)
      0.5
    """
    c, A, b = jnp.asarray(c), jnp.asarray(A), jnp.asarray(b)
    n, p = c.shape[0], b.shape[0]
    if A.shape != (p, n):
        raise ValueError(f"A must have shape (p, n) = ({p}, {n}); got {A.shape}")
    if matvec_Q is None:
        Q = jnp.asarray(Q)
        if Q.shape != (n, n):
            raise ValueError(f"Q must have shape (n, n) = ({n}, {n}); got {Q.shape}")
        return _solve_dense(Q, c, A, b, check=check)
    return _solve_matrix_free(matvec_Q, c, A, b, tol=tol, maxiter=maxiter, check=check)


def _solve_dense(Q, c, A, b, *, check):
    n = c.shape[0]
    # The factorisation is data for the black-box solver and for the derivative
    # solve; it is never differentiated (its tangents would be dropped anyway).
    lu = jax.scipy.linalg.lu_factor(jax.lax.stop_gradient(_kkt_matrix(Q, A)))

    def kkt_solve(_matvec, rhs):
        # K is symmetric, so this also serves as the transpose solve.
        r_x, r_y = rhs
        sol = jax.scipy.linalg.lu_solve(lu, jnp.concatenate([r_x, r_y]))
        return sol[:n], sol[n:]

    @custom_root(eq_qp_kkt_residual, solve=kkt_solve, symmetric=True, check=check)
    def solver(_init, Q, c, A, b):
        del Q, A  # already in the factorisation
        return kkt_solve(None, (-c, b))

    return solver(None, Q, c, A, b)


def _solve_matrix_free(matvec_Q, c, A, b, *, tol, maxiter, check):
    dtype = jnp.result_type(c, A, b)
    tol = (1e-12 if dtype == jnp.float64 else 1e-6) if tol is None else tol
    gmres = partial(_ls.gmres, tol=tol, maxiter=maxiter, restart=50)
    residual = partial(eq_qp_kkt_residual, matvec_Q=matvec_Q)

    @custom_root(residual, solve=gmres, symmetric=True, check=check)
    def solver(_init, Q, c, A, b):
        zeros = (jnp.zeros_like(c), jnp.zeros_like(b))
        # K (x, y) = (-c, b) is the residual at 0 shifted: F(v) - F(0) = K v.
        f0 = residual(zeros, Q, c, A, b)
        matvec = lambda v: jax.tree.map(jnp.subtract, residual(v, Q, c, A, b), f0)
        return gmres(matvec, jax.tree.map(jnp.negative, f0))

    return solver(None, None, c, A, b)
