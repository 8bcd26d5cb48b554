r"""Equality-constrained quadratic programs, differentiable through their KKT system.

.. math::  \min_x\ \tfrac12 x^⊤Qx + c^⊤x \quad\text{s.t.}\quad Ax = b

is solved by one direct solve of its KKT system

.. math::  K \begin{bmatrix}x\\ y\end{bmatrix} =
           \begin{bmatrix}-c\\ b\end{bmatrix},\qquad
           K = \begin{bmatrix}Q & A^⊤\\ A & 0\end{bmatrix},

The KKT residual is ``F(x, y) = (Qx + c + Aᵀy, Ax − b)`` and ``∂₍ₓ,ᵧ₎F = K``: by the
implicit function theorem the tangent and adjoint systems are QPs with the same
KKT matrix (seed 001), ``K (ẋ, ẏ) = (−ċ − Q̇x − Ȧᵀy, ḃ − Ȧx)``. The dense path
states this with ``jax.lax.custom_linear_solve`` (the IFT of a linear system, as
``jnp.linalg.solve`` does), whose derivative solves reuse the forward LU
factorisation of ``K`` instead of factorising again; the matrix-free path gives
``F`` to :func:`rootdiff.custom_root` with GMRES.

Singular ``K`` (a duplicated equality row, a singular ``Q`` with ``c`` in its range):
what is factorised is the quasi-definite ``K_δ = [[Q + δI, Aᵀ], [A, −δI]]`` with
``δ = eps·max(max|diag Q|, max|A|)`` (``= eps·max|K|`` for a positive semidefinite
``Q``, whose largest entry lies on its diagonal), a perturbation at most the size of
one rounding of ``K``'s largest entry (LU's own backward error is larger), so for a
nonsingular ``K`` the solve is as accurate as a plain LU, with no refinement step; for
a singular but consistent system it returns a finite solution instead of ``inf``/NaN;
for an inconsistent one (contradictory constraints) the KKT residual stays large and
the check reports it. (An indefinite ``Q`` with a small diagonal gets a smaller ``δ``:
if ``K`` is then singular, the ``inf``/NaN it gives is reported by the check too.)
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
from rootdiff._solves import custom_linear_solve
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
    # Two stacked reductions rather than seven (each is compiled on its own).
    r_top, Kv_top, c_, x_ = jnp.max(
        jnp.abs(jnp.stack([res[:n], -c - res[:n], c, x])), axis=1, initial=0.0
    )  # Kv_top: |Qx + Aᵀy|
    r_bot, b_, y_ = jnp.max(jnp.abs(jnp.stack([res[n:], b, y])), axis=1, initial=0.0)
    primal = r_bot / (norm_A * x_ + b_ + tiny)
    dual = r_top / (Kv_top + c_ + norm_A * y_ + tiny)
    residual = jnp.maximum(primal, dual)
    return residual <= _rel_tol(x.dtype), residual  # False for NaN


def _report(sol, ok, residual, check):
    if check == "off":
        return sol
    return _checks.guard(sol, residual, _rel_tol(residual.dtype), 1, mode=check, ok=ok, what=_WHAT)


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
    (``jax.lax.linalg.lu``, with a rounding-level regularisation, see the
    module docstring); the forward solve and every derivative solve (JVP and VJP, to
    any order) are triangular solves with that factorisation, so a
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

    Derivatives w.r.t. ``Q``, ``c``, ``A``, ``b`` are the implicit ones of the KKT
    residual (:func:`eq_qp_kkt_residual`): ``jax.lax.custom_linear_solve`` on the
    dense path, :func:`rootdiff.custom_root` on the matrix-free one; every mode works (``grad``,
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
        max|b|)``, or the dual analogue) — a backward-stable solve is far below — or,
        on the matrix-free path, when a derivative's GMRES solve fails. On the dense
        path a derivative solve is the forward factorisation applied once more; with
        ``check="nan"`` a failed forward check makes the derivatives NaN too.

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


@jax.jit
def _factorise(Q_, A_):
    """``(LU factors, row permutation, max|A|)`` of ``K_δ``; a jitted function, so
    that tracing it again for the same shapes (a new outer ``jit``) is a cache hit."""
    n = Q_.shape[0]
    # A barrier: with Q and A closed over as constants, XLA would otherwise fold the
    # reductions and products below on the host at compile time (seconds for n = 500).
    Q_, A_ = jax.lax.optimization_barrier((Q_, A_))
    # Every pass over the (n + p)² matrix K costs about as much as a triangular solve,
    # so K_δ is written once and then read only by the LU: each block is zero-padded
    # to the full size and the four are summed, one elementwise expression that XLA
    # fuses into a single kernel writing K (symmetrisation and shift included).
    # jnp.block would write the block rows separately and then copy them into K (the
    # assembly a user writes for jnp.linalg.solve does): one more pass over K.
    # δ = eps·max(max|diag Q|, max|A|): max|Q| = max|diag Q| for a positive
    # semidefinite Q (|Qᵢⱼ| ≤ √(QᵢᵢQⱼⱼ)), read in O(n) instead of one more pass over Q
    # (as long as a triangular solve); max|A| is read from A in its own layout (from
    # K, in the column-major layout LAPACK wants, XLA would first copy it transposed).
    # diag Q as a strided slice of the flattened Q (jnp.diagonal traces a masked sum).
    norm_Q, norm_A = _amax_pair(jax.lax.slice(Q_.reshape(-1), (0,), (n * n,), (n + 1,)), A_)
    delta = jnp.finfo(Q_.dtype).eps * jnp.maximum(norm_Q, norm_A)
    K = _assemble(_sym(Q_), A_, delta)
    # lax.linalg.lu gives the permutation once (jax.scipy.linalg.lu_solve would
    # rebuild it from the pivots, a loop, on every solve).
    lu, _, perm = jax.lax.linalg.lu(K)  # K = K_δ = [[Q + δI, Aᵀ], [A, −δI]]
    return lu, perm, norm_A


def _solve_dense(Q, c, A, b, *, check):
    n = c.shape[0]
    Qs = _sym(Q)  # the matvec below (differentiated) uses the symmetric part
    # The factorisation is data for the solve; it is never differentiated (the
    # derivative comes from the matvec, as in jax.numpy.linalg.solve).
    Q_, A_ = jax.lax.stop_gradient((Q, A))
    lu, perm, norm_A = _factorise(Q_, A_)
    tri = partial(jax.lax.linalg.triangular_solve, left_side=True)

    def lu_apply(_matvec, r):
        y = tri(lu, r[perm, None], lower=True, unit_diagonal=True)
        return tri(lu, y, lower=False)[:, 0]

    def matvec(v):  # K v, differentiable in (Q, A)
        return jnp.concatenate([Qs @ v[:n] + v[n:] @ A, A @ v[:n]])

    # K is linear in (Q, A) and the solution linear in (−c, b): lax.custom_linear_solve
    # is the implicit function theorem for this system (∂v = K⁻¹(∂r − ∂K v)); every
    # derivative solve (tangent or adjoint, K symmetric, any order) is one more
    # application of the factorisation.
    rhs = jnp.concatenate([-c, b])
    v = custom_linear_solve(matvec, rhs, lu_apply, symmetric=True)  # also under shard_map
    if check != "off":
        ok, rel_residual = _kkt_ok_dense_jit(Q_, A_, norm_A, v, rhs)
        v = _report(v, ok, rel_residual, check)
    return _split(v, n)


def _split(v: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``(v[:n], v[n:])`` as two plain slices (quicker to trace than indexing)."""
    return jax.lax.slice_in_dim(v, 0, n), jax.lax.slice_in_dim(v, n, v.shape[0])


def _amax_pair(d: jax.Array, A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(max|d|, max|A|)`` for ``d`` of shape ``(n,)`` and ``A`` of shape ``(p, n)``.

    One variadic reduction over ``A``'s shape (``d`` broadcast along its rows): one
    kernel for XLA:CPU to compile, where the two reductions alone are four (it splits
    a one-dimensional reduction of more than 32 elements into three kernels).
    """
    if A.shape[0] == 0:
        return _amax(d), jnp.zeros((), A.dtype)
    zero = jnp.zeros((), A.dtype)
    norm_d, norm_A = jax.lax.reduce(
        (jnp.broadcast_to(jnp.abs(d), A.shape), jnp.abs(A)), (zero, zero),
        lambda u, v: (jnp.maximum(u[0], v[0]), jnp.maximum(u[1], v[1])), (0, 1),
    )  # fmt: skip
    return norm_d, norm_A


def _assemble(Qs: jax.Array, A: jax.Array, delta: jax.Array) -> jax.Array:
    """``K_δ = [[Qs + δI, Aᵀ], [A, −δI]]`` as one fused elementwise expression."""
    n, p = Qs.shape[0], A.shape[0]
    i, j = (jax.lax.broadcasted_iota(jnp.int32, (n + p, n + p), d) for d in (0, 1))
    shift = jnp.where(i == j, jnp.where(i < n, delta, -delta), 0)
    pad = lambda M, rows, cols: jnp.pad(M, (rows, cols))  # noqa: E731
    return (
        pad(Qs, (0, p), (0, p)) + pad(A.T, (0, p), (n, 0)) + pad(A, (n, 0), (0, p)) + shift
    ).astype(Qs.dtype)


def _kkt_ok_dense(Q, A, norm_A, v, rhs):
    """:func:`_kkt_ok` for the dense path, ``v = (x, y)``, ``rhs = (−c, b)`` and
    ``norm_A = max|A|``.

    The same measures, with ``K v`` computed from ``Q`` (its symmetric part, as
    ``(Q x + Qᵀx)/2``) and ``A`` by four matrix-vector products, not from the
    assembled ``K``, whose buffer the factorisation overwrites (keeping it would cost
    a copy of ``K``); then the maxima of ``|K v − rhs|``, ``|K v|``,
    ``|rhs|`` and ``|v|`` by one variadic reduction over the primal rows ``< n`` and
    one over the dual rows ``≥ n`` (each one kernel for XLA to compile; a separate
    reduction per maximum would be one to three kernels, about 10 ms each on a CPU,
    for a check of a few microseconds).
    """
    Q, A, v, rhs = jax.lax.stop_gradient((Q, A, v, rhs))
    n = Q.shape[0]
    x, y = _split(v, n)
    # K v as four matrix-vector products. Written as multiply-and-sum reductions
    # instead, each compiles in about half the time (XLA:CPU: 10 against 20-25 ms),
    # but runs slower, and far slower when Q is an expression (a user's (Q + Qᵀ)/2):
    # XLA then writes Q, or x broadcast to Q's shape, to memory before reducing.
    # n = 500, the check alone: 0.13 against 0.22 ms, and 0.33 against 1.3 ms for a
    # symmetrised Q; n = 2000: 2.8 against 4.5 ms. Full precision: a reduced-precision
    # float32 product (TF32 on a GPU) would be a residual error of its own.
    dot = partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    Qx, Qtx, Aty, Ax = dot(Q, x), dot(x, Q), dot(y, A), dot(A, x)
    zero = jnp.zeros((), v.dtype)
    top, bot = 0.5 * (Qx + Qtx) + Aty, Ax
    rhs_top, rhs_bot = _split(rhs, n)

    def maxima(Kv, r, u):
        terms = [jnp.abs(t) for t in (Kv - r, Kv, r, u)]
        return jax.lax.reduce(
            terms, [zero] * 4, lambda a, b: [jnp.maximum(s, w) for s, w in zip(a, b)], (0,)
        )

    r_top, Kv_top, c_, x_ = maxima(top, rhs_top, x)  # x_ = max|x|, c_ = max|c|
    r_bot, _, b_, y_ = maxima(bot, rhs_bot, y)
    tiny = jnp.finfo(v.dtype).tiny
    # The dual measure r_top / (Kv_top + c_ + max|A|·y_), the primal r_bot / (max|A|·x_
    # + b_); a (1,) array, the report's shape.
    num = jnp.stack([r_top, r_bot])
    den = jnp.stack([Kv_top + c_ + norm_A * y_, norm_A * x_ + b_]) + tiny
    residual = jnp.max(num / den, keepdims=True)
    return residual[0] <= _rel_tol(v.dtype), residual  # False for NaN


_kkt_ok_dense_jit = jax.jit(_kkt_ok_dense)


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
