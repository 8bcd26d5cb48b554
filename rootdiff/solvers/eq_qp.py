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

Singular ``K`` (a duplicated equality row, a singular ``Q`` with ``c`` in its range):
what is factorised is the quasi-definite ``K_δ = [[Q + δI, Aᵀ], [A, −δI]]`` with
``δ = 100·eps·max|K|``, and every solve is refined once against ``K`` itself
(``v ← v + K_δ⁻¹(r − K v)``). For a nonsingular ``K`` this converges to ``K⁻¹r`` as
fast as the refinement of a plain LU (the perturbation is at rounding level); for a
singular but consistent system it returns a finite solution instead of ``inf``/NaN;
for an inconsistent one (contradictory constraints) the residual stays large and
the check reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rootdiff import _checks
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


def _kkt_matrix(Q: jax.Array, A: jax.Array, delta: Any = 0.0) -> jax.Array:
    """``[[Q_s + δI, Aᵀ], [A, −δI]]`` (``δ = 0``: the KKT matrix itself)."""
    n, p = Q.shape[0], A.shape[0]
    top = jnp.concatenate([_sym(Q) + delta * jnp.eye(n, dtype=Q.dtype), A.T], axis=1)
    bottom = jnp.concatenate([A, -delta * jnp.eye(p, dtype=A.dtype)], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def _rel_tol(dtype: Any) -> float:
    return float(np.sqrt(jnp.finfo(dtype).eps))


def _amax(v: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(v), initial=0.0)


def _kkt_ok(sol, res, c, A, b):
    """Whether the KKT residual ``res = (−c − Qx − Aᵀy, b − Ax)`` is small relative
    to the data and the solution: primal ``max|Ax − b| ≤ tol·(max|A|·max|x| + max|b|)``
    and dual ``max|Qx + c + Aᵀy| ≤ tol·(max|Qx + Aᵀy| + max|c| + max|A|·max|y|)``,
    ``tol = sqrt(eps)``. A backward-stable solve meets both by orders of magnitude;
    inconsistent constraints (no feasible ``x``) or a ``Q`` unbounded below on
    ``Ax = b`` do not. Returns ``(ok, relative residual)``.
    """
    (x, y), res, c, A, b = jax.lax.stop_gradient((sol, res, c, A, b))
    n = x.shape[0]
    tiny = jnp.finfo(x.dtype).tiny
    norm_A = _amax(A)
    Kv_top = -c - res[:n]  # Qx + Aᵀy
    primal = _amax(res[n:]) / (norm_A * _amax(x) + _amax(b) + tiny)
    dual = _amax(res[:n]) / (_amax(Kv_top) + _amax(c) + norm_A * _amax(y) + tiny)
    residual = jnp.maximum(primal, dual)
    return residual <= _rel_tol(x.dtype), residual  # False for NaN


def _report(sol, ok, residual, check):
    if check == "off":
        return sol
    return _checks.guard(sol, residual, _rel_tol(residual.dtype), 1, mode=check, ok=ok, what=_WHAT)


def _poison(v, ok, check):
    """With ``check="nan"``, a failed forward solve makes derivatives NaN as well."""
    return jax.tree.map(lambda a: jnp.where(ok, a, jnp.nan), v) if check == "nan" else v


_WHAT = "solve_eq_qp (relative KKT residual: inconsistent constraints, or unbounded below?)"


def solve_eq_qp(
    Q: jax.Array | None,
    c: jax.Array,
    A: jax.Array,
    b: jax.Array,
    *,
    matvec_Q: Callable[[jax.Array], jax.Array] | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    check: str = "warn",
) -> tuple[jax.Array, jax.Array]:
    r"""Primal and dual solution of ``min ½xᵀQx + cᵀx`` s.t. ``Ax = b``.

    The returned pair ``(x, y)`` solves the KKT system
    ``Q x + c + Aᵀ y = 0``, ``A x = b`` (``y`` is the multiplier of ``Ax = b``).
    Dense path (default): ``K = [[Q, Aᵀ], [A, 0]]`` is LU-factorised once
    (``jax.scipy.linalg.lu_factor``, with a rounding-level regularisation, see the
    module docstring); the forward solve and every derivative solve (JVP and VJP, to
    any order) are refined triangular solves with that factorisation, so a
    ``jit(value_and_grad(...))`` costs one factorisation. ``Q`` is assumed symmetric
    (its symmetric part ``(Q + Qᵀ)/2`` is used, so ``∂/∂Q`` is a symmetric matrix).
    A singular but consistent ``K`` (a repeated constraint row, a singular ``Q``
    with ``c`` in its range) gives one of the solutions; contradictory constraints,
    or a ``Q`` unbounded below on ``Ax = b``, are reported by ``check``.
    float16/bfloat16 inputs are solved in float32 and the result cast back.

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
      check: ``"warn"`` (default), ``"raise"``, ``"nan"`` or ``"off"``, as in
        :func:`rootdiff.custom_root`, when the KKT residual is large relative to the
        data and the solution (primal ``max|Ax − b| > sqrt(eps)·(max|A|·max|x| +
        max|b|)``, or the dual analogue) — a backward-stable solve is far below — or
        when a derivative's linear solve fails (e.g. an adjoint not in the range of
        a singular ``K``).

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
    _checks.validate_mode(check)
    c, A, b = jnp.asarray(c), jnp.asarray(A), jnp.asarray(b)
    if c.ndim != 1 or b.ndim != 1:
        raise ValueError(f"c and b must be vectors; got shapes c {c.shape} and b {b.shape}")
    n, p = c.shape[0], b.shape[0]
    if A.shape != (p, n):
        raise ValueError(f"A must have shape (p, n) = ({p}, {n}); got {A.shape}")
    if matvec_Q is None:
        Q = jnp.asarray(Q)
        if Q.shape != (n, n):
            raise ValueError(f"Q must have shape (n, n) = ({n}, {n}); got {Q.shape}")
    data = (c, A, b) if Q is None else (Q, c, A, b)
    dtype = jnp.result_type(*data)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    if jnp.finfo(dtype).bits < 32:
        # float16/bfloat16: dense factorisations are not implemented for them (on
        # CPU), and their 3 digits would not survive one: solve in float32, cast back.
        cast = lambda v: None if v is None else jnp.asarray(v, jnp.float32)
        x, y = solve_eq_qp(
            cast(Q), cast(c), cast(A), cast(b), matvec_Q=matvec_Q, tol=tol,
            maxiter=maxiter, check=check,
        )  # fmt: skip
        return x.astype(dtype), y.astype(dtype)
    c, A, b = (v.astype(dtype) for v in (c, A, b))
    if matvec_Q is None:
        return _solve_dense(Q.astype(dtype), c, A, b, check=check)
    return _solve_matrix_free(matvec_Q, c, A, b, tol=tol, maxiter=maxiter, check=check)


def _solve_dense(Q, c, A, b, *, check):
    n = c.shape[0]
    # The factorisation is data for the black-box solver and for the derivative
    # solve; it is never differentiated (its tangents would be dropped anyway).
    Q_, A_, c_, b_ = jax.lax.stop_gradient((_sym(Q), A, c, b))
    # A barrier: with Q and A closed over as constants, XLA would otherwise fold the
    # reductions and products below on the host at compile time (seconds for n = 500).
    Q_, A_ = jax.lax.optimization_barrier((Q_, A_))
    delta = 100 * jnp.finfo(Q_.dtype).eps * jnp.maximum(_amax(Q_), _amax(A_))
    K_delta = _kkt_matrix(Q_, A_, delta)
    signs = jnp.concatenate([jnp.ones(n, Q_.dtype), -jnp.ones(b.shape[0], Q_.dtype)])

    def K_matvec(v):  # K v = K_δ v − δ·diag(I, −I) v: one matrix in memory
        return K_delta @ v - delta * signs * v

    # lax.linalg.lu gives the permutation once (jax.scipy.linalg.lu_solve would
    # rebuild it from the pivots, a loop, on every solve).
    lu, _, perm = jax.lax.linalg.lu(K_delta)
    tri = partial(jax.lax.linalg.triangular_solve, left_side=True)

    def lu_apply(r):
        y = tri(lu, r[perm, None], lower=True, unit_diagonal=True)
        return tri(lu, y, lower=False)[:, 0]

    # Forward: one solve, one product with K (compile time grows with every distinct
    # matrix product), which serves both the check and one step of iterative
    # refinement against K (removing the regularisation's O(δ‖K⁻¹‖) perturbation).
    rhs = jnp.concatenate([-c_, b_])
    v = lu_apply(rhs)
    res = rhs - K_matvec(v)
    sol = v + lu_apply(res)
    x0, y0 = sol[:n], sol[n:]
    ok, rel_residual = _kkt_ok((v[:n], v[n:]), res, c_, A_, b_)

    def kkt_solve(_matvec, r):
        # The derivative's operator is K itself (symmetric: also the transpose solve),
        # refined once as the forward solve is (gradients to rounding level).
        r = jnp.concatenate(r)
        v = lu_apply(r)
        v = v + lu_apply(r - K_matvec(v))
        return _poison((v[:n], v[n:]), ok, check)

    # check="off" for the core: the KKT check below replaces its forward check.
    @custom_root(eq_qp_kkt_residual, solve=kkt_solve, symmetric=True, check="off")
    def solver(_init, Q, c, A, b):
        del Q, c, A, b  # already solved for, above
        return _report((x0, y0), ok, rel_residual, check)

    return solver(None, Q, c, A, b)


def _solve_matrix_free(matvec_Q, c, A, b, *, tol, maxiter, check):
    dtype = jnp.result_type(c, A, b)
    tol = (1e-12 if dtype == jnp.float64 else 1e-6) if tol is None else tol
    gmres = partial(_ls.gmres, tol=tol, maxiter=maxiter, restart=50)
    residual = partial(eq_qp_kkt_residual, matvec_Q=matvec_Q)

    @custom_root(residual, solve=gmres, symmetric=True, check=check, residual_tol=float("inf"))
    def solver(_init, Q, c, A, b):
        zeros = (jnp.zeros_like(c), jnp.zeros_like(b))
        # K (x, y) = (-c, b) is the residual at 0 shifted: F(v) - F(0) = K v.
        f0 = residual(zeros, Q, c, A, b)
        matvec = lambda v: jax.tree.map(jnp.subtract, residual(v, Q, c, A, b), f0)
        x, y = gmres(matvec, jax.tree.map(jnp.negative, f0))
        r_x, r_y = residual((x, y), Q, c, A, b)
        res = -jnp.concatenate([r_x, r_y])
        ok, rel_residual = _kkt_ok((x, y), res, c, A, b)
        return _report((x, y), ok, rel_residual, check)

    return solver(None, None, c, A, b)
