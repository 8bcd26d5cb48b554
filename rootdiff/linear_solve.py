"""Linear solvers for the implicit-function rule.

Every solver here is called as ``solve(matvec, b, **options)`` where ``matvec`` is
a linear function mapping a pytree shaped like ``b`` to a pytree shaped like ``b``,
and returns ``x`` with ``matvec(x) ≈ b`` (or ``(x, info)`` with
``return_info=True``).

Common options:

* ``init`` — initial guess (Krylov solvers), a pytree like ``b``; default zeros.
* ``tol`` — relative residual tolerance: converged when
  ``‖b − A x‖ ≤ max(tol · ‖b‖, atol)``. Default ``eps ** 0.75`` of ``b``'s dtype
  (≈ 1.8e-12 in float64, ≈ 6.5e-6 in float32), which gives gradients accurate to
  about 1e-10 relative in float64 on well-conditioned problems.
* ``maxiter`` — iteration cap (Krylov solvers).
* ``ridge`` — solve ``(A + ridge · I) x = b`` instead (regularises singular systems).
* ``M`` — preconditioner (Krylov solvers): a linear function approximating ``A⁻¹``.

Why our own Krylov solvers rather than ``jax.scipy.sparse.linalg``: those return no
convergence information (their ``info`` is always ``None``), so a non-converged
backward solve would yield a silently wrong gradient. Ours return a
:class:`SolveInfo` and otherwise follow the textbook algorithms.

The ``auto`` rule: systems with at most :data:`DENSE_THRESHOLD` unknowns are
materialised and solved densely by LU (exact, and fast for the batched small
problems that dominate in practice); larger ones use CG when declared symmetric
(``symmetric=True``, e.g. the Hessian of an argmin) and GMRES otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

__all__ = [
    "SolveInfo",
    "DENSE_THRESHOLD",
    "FULL_GMRES_MAX",
    "SOLVERS",
    "cg",
    "gmres",
    "bicgstab",
    "normal_cg",
    "lu",
    "cholesky",
    "lstsq",
    "auto",
    "get_solver",
]

PyTree = Any
MatVec = Callable[[PyTree], PyTree]

#: Systems with at most this many unknowns are solved densely by ``auto``.
#: Measured in ``benchmarks/dense_threshold.py`` (see docs/benchmarks.md): on a
#: 2-core CPU the dense LU of the materialised Jacobian beats GMRES/CG up to about
#: 100 unknowns for a single system and 100–200 for a vmapped batch.
DENSE_THRESHOLD = 100

#: Up to this many unknowns, ``auto``'s GMRES falls back to unrestarted GMRES when
#: GMRES(20) stalls (a basis of ``n + 1`` vectors: 0.7 MB per problem in float64).
FULL_GMRES_MAX = 300
_AUTO_RESTART = 20


class SolveInfo(NamedTuple):
    """Diagnostics of a linear solve, usable under ``jit`` and ``vmap``.

    Attributes:
      residual_norm: ``‖b − A x‖`` (2-norm) at the returned ``x``.
      b_norm: ``‖b‖`` (2-norm), so that ``residual_norm / b_norm`` is relative.
      iterations: number of iterations (matvecs) used; 1 for dense solves.
      converged: whether ``residual_norm ≤ max(tol · b_norm, atol)`` and finite.
    """

    residual_norm: jax.Array
    b_norm: jax.Array
    iterations: jax.Array
    converged: jax.Array


def default_tol(dtype: Any) -> float:
    """Default relative tolerance ``eps ** 0.75`` for ``dtype``."""
    return float(jnp.finfo(dtype).eps) ** 0.75


def _flat(matvec: MatVec, b: PyTree):
    """Ravel ``b`` and wrap ``matvec`` to act on flat vectors."""
    b_flat, unravel = ravel_pytree(b)
    if not jnp.issubdtype(b_flat.dtype, jnp.inexact):
        raise TypeError(f"linear solve: b must be floating point, got dtype {b_flat.dtype}")

    def mv(x):
        return ravel_pytree(matvec(unravel(x)))[0].astype(b_flat.dtype)

    return mv, b_flat, unravel


def _with_ridge(mv, ridge):
    if ridge is None or (isinstance(ridge, (int, float)) and ridge == 0):
        return mv
    return lambda x: mv(x) + ridge * x


def _explicitly_sharded(*xs: jax.Array) -> bool:
    """Whether any of ``xs`` has an axis sharded in its type (an ``Explicit`` mesh axis).

    Under ``Auto`` mesh axes, inside ``shard_map`` and without a mesh, shardings do
    not appear in the types and this is False.
    """
    for x in xs:
        spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
        if spec is not None and any(p is not None for p in spec):
            return True
    return False


def _reduced(*xs: jax.Array) -> P | None:
    """``out_sharding`` for a contraction over a vector axis of ``xs``.

    A dot product of two vectors sharded over an ``Explicit`` mesh axis is ambiguous
    to JAX's sharding-in-types rules (the contraction could leave partial sums); we
    ask for the replicated result, i.e. one all-reduce. ``None`` (JAX's default)
    everywhere else, so unsharded code is unchanged.
    """
    return P() if _explicitly_sharded(*xs) else None


def _matmul(a, b, out_sharding):
    # ``out_sharding`` only when needed: jax < 0.6 has no such argument.
    if out_sharding is None:
        return jnp.matmul(a, b)
    return jnp.matmul(a, b, out_sharding=out_sharding)


def _vdot(x, y):
    """``Σ conj(x) y`` on flat vectors; replicated when ``x``/``y`` are sharded."""
    return _matmul(jnp.conj(x), y, _reduced(x, y))


def _norm(x):
    return jnp.sqrt(jnp.real(_vdot(x, x)))


def _zero_count(like: jax.Array) -> jax.Array:
    """An int32 zero for a loop counter, typed (mesh, sharding) like the data ``like``.

    A Python ``0`` in a ``while_loop`` carry has an empty mesh in its type; when the
    loop is batched over an ``Explicit`` mesh axis (``vmap`` of a sharded batch)
    JAX cannot add that axis to it ("Resource axis ... not found in mesh: ()").
    Deriving every carry from the data avoids it.
    """
    return jnp.zeros_like(jnp.real(like), dtype=jnp.int32)


def _finish(x, r_norm, b_norm, it, thresh, unravel, return_info):
    info = SolveInfo(
        residual_norm=r_norm,
        b_norm=b_norm,
        iterations=jnp.asarray(it, jnp.int32),
        converged=jnp.isfinite(r_norm) & (r_norm <= thresh),
    )
    out = unravel(x)
    return (out, info) if return_info else out


def _setup(matvec, b, init, tol, atol, ridge, M):
    mv, b_flat, unravel = _flat(matvec, b)
    mv = _with_ridge(mv, ridge)
    x0 = jnp.zeros_like(b_flat) if init is None else ravel_pytree(init)[0].astype(b_flat.dtype)
    if M is None:
        prec = lambda r: r  # noqa: E731
    else:
        prec = lambda r: ravel_pytree(M(unravel(r)))[0].astype(b_flat.dtype)  # noqa: E731
    tol = default_tol(b_flat.dtype) if tol is None else tol
    b_norm = _norm(b_flat)
    thresh = jnp.maximum(tol * b_norm, atol)
    return mv, b_flat, unravel, x0, prec, b_norm, thresh


def cg(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Conjugate gradient for a symmetric positive definite ``A``: solves ``A x = b``.

    Args:
      matvec: ``v ↦ A v`` on pytrees shaped like ``b``; ``A`` must be SPD
        (or symmetric negative definite).
      b: right-hand side, any pytree of floating arrays (total size ``n``).
      init, tol, atol, maxiter, ridge, M: see the module docstring; ``maxiter``
        defaults to ``10 n``.
      return_info: also return a :class:`SolveInfo`.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x = cg(lambda v: A @ v, jnp.array([1.0, 2.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 2.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    maxiter = 10 * b_flat.size if maxiter is None else maxiter
    r0 = b_flat if init is None else b_flat - mv(x0)  # no matvec for a zero start
    z0 = prec(r0)
    gamma0 = _vdot(r0, z0)

    def cond(state):
        _, r, _, _, _, k = state
        return (_norm(r) > thresh) & (k < maxiter)

    def body(state):
        x, r, z, p, gamma, k = state
        Ap = mv(p)
        alpha = gamma / _vdot(p, Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        z = prec(r)
        gamma_new = _vdot(r, z)
        p = z + (gamma_new / gamma) * p
        return x, r, z, p, gamma_new, k + 1

    x, r, *_, k = jax.lax.while_loop(cond, body, (x0, r0, z0, z0, gamma0, _zero_count(gamma0)))
    # Report the true residual, not the recursively updated one.
    r_norm = _norm(b_flat - mv(x))
    return _finish(x, r_norm, b_norm, k, thresh, unravel, return_info)


def bicgstab(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Preconditioned BiCGStab for a general square ``A``: solves ``A x = b``.

    Args and returns as :func:`cg`; ``A`` need not be symmetric.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[3.0, 1.0], [-1.0, 2.0]])
      >>> x = bicgstab(lambda v: A @ v, jnp.array([1.0, 0.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 0.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    maxiter = 10 * b_flat.size if maxiter is None else maxiter
    r0 = b_flat if init is None else b_flat - mv(x0)  # no matvec for a zero start
    one = jnp.ones_like(b_norm, dtype=b_flat.dtype)
    zero = jnp.zeros_like(b_flat)

    def cond(state):
        _, r, *_, k = state
        return (_norm(r) > thresh) & (k < maxiter)

    def body(state):
        x, r, rhat, p, v, rho, alpha, omega, k = state
        rho_new = _vdot(rhat, r)
        beta = (rho_new / rho) * (alpha / omega)
        p = r + beta * (p - omega * v)
        phat = prec(p)
        v = mv(phat)
        alpha = rho_new / _vdot(rhat, v)
        s = r - alpha * v
        shat = prec(s)
        t = mv(shat)
        tt = _vdot(t, t)
        omega = jnp.where(tt > 0, _vdot(t, s) / jnp.where(tt > 0, tt, 1), 0)
        x = x + alpha * phat + omega * shat
        r = s - omega * t
        return x, r, rhat, p, v, rho_new, alpha, omega, k + 1

    init_state = (x0, r0, r0, zero, zero, one, one, one, _zero_count(b_norm))
    x, *_, k = jax.lax.while_loop(cond, body, init_state)
    r_norm = _norm(b_flat - mv(x))
    return _finish(x, r_norm, b_norm, k, thresh, unravel, return_info)


def gmres(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    restart: int = 20,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Restarted GMRES(``restart``) for a general square ``A``: solves ``A x = b``.

    Each cycle grows an Arnoldi basis (classical Gram–Schmidt with one
    re-orthogonalisation, as two matrix products) while Givens rotations keep the
    least-squares residual ``‖b − A x‖`` current, so a cycle stops as soon as it
    meets ``tol`` — no matvec is spent past convergence. The cycle's end residual
    is recomputed exactly (one matvec) and starts the next cycle. ``M`` is a right
    preconditioner. ``maxiter`` caps the number of Arnoldi matvecs
    (default ``10 n``).

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[3.0, 1.0], [-1.0, 2.0]])
      >>> x = gmres(lambda v: A @ v, jnp.array([1.0, 0.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 0.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    n = b_flat.size
    maxiter = 10 * n if maxiter is None else maxiter
    m = max(1, min(restart, n, maxiter))
    dtype = b_flat.dtype
    tiny = jnp.finfo(dtype).tiny
    eye = jnp.eye(m, dtype=dtype)
    red = _reduced(b_flat)

    def cycle(x, r, budget):
        beta = _norm(r)
        # The basis is built from r so that it carries r's sharding (rows split like
        # the vectors, never gathered); the small matrices below are replicated.
        V = jnp.broadcast_to(jnp.zeros_like(r)[None], (m + 1, n))
        V = V.at[0].set(r / jnp.where(beta > 0, beta, 1))
        # Small replicated arrays, typed like the data (see _zero_count).
        zero = jnp.zeros_like(beta, dtype=dtype)
        R = jnp.zeros((m + 1, m), dtype) + zero  # Hessenberg, rotated to upper triangular
        g = (jnp.zeros(m + 1, dtype) + zero).at[0].set(beta)  # rotated right-hand side
        cs = jnp.zeros(m, dtype) + zero
        sn = cs

        def inner_cond(state):
            j, _, _, g, _, _ = state
            return (j < jnp.minimum(m, budget)) & (jnp.abs(g[j]) > thresh)

        def inner_body(state):
            j, V, R, g, cs, sn = state
            w = mv(prec(V[j]))
            h = _matmul(V, w, red)  # rows > j of V are zero
            w = w - V.T @ h
            h2 = _matmul(V, w, red)  # re-orthogonalise (CGS2)
            w = w - V.T @ h2
            h = h + h2
            h_next = _norm(w)
            V = V.at[j + 1].set(
                jnp.where(h_next > tiny, w / jnp.where(h_next > tiny, h_next, 1), 0)
            )
            h = h.at[j + 1].set(h_next)

            def rotate(i, h):  # apply the previous rotations i < j
                hi, hi1 = h[i], h[i + 1]
                c, s = jnp.where(i < j, cs[i], 1), jnp.where(i < j, sn[i], 0)
                return h.at[i].set(c * hi + s * hi1).at[i + 1].set(-s * hi + c * hi1)

            h = jax.lax.fori_loop(0, m, rotate, h)
            denom = jnp.hypot(h[j], h[j + 1])
            c = jnp.where(denom > 0, h[j] / jnp.where(denom > 0, denom, 1), 1)
            s = jnp.where(denom > 0, h[j + 1] / jnp.where(denom > 0, denom, 1), 0)
            h = h.at[j].set(denom).at[j + 1].set(0)
            g = g.at[j + 1].set(-s * g[j]).at[j].set(c * g[j])
            return j + 1, V, R.at[:, j].set(h), g, cs.at[j].set(c), sn.at[j].set(s)

        j0 = _zero_count(beta)
        k, V, R, g, _, _ = jax.lax.while_loop(inner_cond, inner_body, (j0, V, R, g, cs, sn))
        active = jnp.arange(m) < k
        # Unused columns become identity rows so that the triangular solve ignores them.
        R_k = jnp.where(active[None, :] & active[:, None], R[:m], eye)
        safe = jnp.where(active, jnp.diagonal(R_k), 1)
        R_k = R_k.at[jnp.arange(m), jnp.arange(m)].set(jnp.where(safe != 0, safe, 1))
        y = jax.scipy.linalg.solve_triangular(R_k, jnp.where(active, g[:m], 0), lower=False)
        x = x + prec(V[:m].T @ y)
        return x, b_flat - mv(x), k

    def cond(state):
        _, r, it = state
        return (_norm(r) > thresh) & (it < maxiter)

    def body(state):
        x, r, it = state
        x, r, k = cycle(x, r, maxiter - it)
        return x, r, it + jnp.maximum(k, 1)

    r0 = b_flat if init is None else b_flat - mv(x0)  # no matvec for a zero start
    x, r, it = jax.lax.while_loop(cond, body, (x0, r0, _zero_count(b_norm)))
    return _finish(x, _norm(r), b_norm, it, thresh, unravel, return_info)


def normal_cg(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """CG on the normal equations ``(AᵀA + ridge·I) x = Aᵀ b``: least squares.

    ``A`` may be non-square: ``matvec`` maps the space of ``x`` (``n`` numbers) to
    the space of ``b`` (``m`` numbers), e.g. the Jacobian of an over-determined
    optimality condition. The space of ``x`` is given by ``init`` (a pytree shaped
    like ``x``, also the starting point); without ``init`` it is ``b``'s space
    (square ``A``). Returns the least-squares solution ``argmin ‖b − A x‖`` (the
    minimum-norm one from a zero start when ``A`` is rank deficient), at the price
    of squaring the condition number. ``Aᵀ`` is ``jax.linear_transpose`` of
    ``matvec``; ``M`` preconditions the normal equations (a map on ``x``'s space).

    ``info.residual_norm`` is ``‖b − A x‖``, which need not vanish for an
    inconsistent system; ``info.converged`` refers to the normal equations'
    residual ``‖Aᵀ(b − A x) − ridge·x‖``, which the iteration controls.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 × 2
      >>> x = normal_cg(lambda v: A @ v, jnp.array([1.0, 1.0, 0.0]), init=jnp.zeros(2))
      >>> [round(float(v), 4) for v in x]
      [0.3333, 0.3333]
    """
    b_flat, _ = ravel_pytree(b)
    if not jnp.issubdtype(b_flat.dtype, jnp.inexact):
        raise TypeError(f"normal_cg: b must be floating point, got dtype {b_flat.dtype}")
    x_flat, unravel_x = ravel_pytree(b if init is None else init)
    x_flat = x_flat.astype(b_flat.dtype)

    def mv(x):
        return ravel_pytree(matvec(unravel_x(x)))[0].astype(b_flat.dtype)

    try:
        out = jax.eval_shape(mv, x_flat)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "normal_cg: matvec failed on a vector shaped like "
            + ("b; for a non-square A pass init= shaped like x" if init is None else "init")
            + f" ({e})"
        ) from e
    if out.shape != b_flat.shape:
        raise ValueError(
            f"normal_cg: matvec maps {x_flat.size} numbers to {out.shape[0]}, but b has "
            f"{b_flat.size}; the output of matvec must be shaped like b"
            + ("" if init is not None else " (for a non-square A pass init= shaped like x)")
        )
    rmv = jax.linear_transpose(mv, x_flat)
    normal_mv = lambda x: rmv(mv(x))[0]  # noqa: E731
    prec = None if M is None else (lambda r: ravel_pytree(M(unravel_x(r)))[0].astype(r.dtype))
    x, info = cg(
        normal_mv, rmv(b_flat)[0], init=None if init is None else x_flat,
        tol=tol, atol=atol, maxiter=maxiter, ridge=ridge, M=prec, return_info=True,
    )  # fmt: skip
    info = info._replace(residual_norm=_norm(b_flat - mv(x)), b_norm=_norm(b_flat))
    out = unravel_x(x)
    return (out, info) if return_info else out


def materialize(
    mv: Callable[[jax.Array], jax.Array], n: int, dtype: Any, like: jax.Array | None = None
) -> jax.Array:
    """The ``n × n`` matrix of a linear map on flat vectors (``n`` matvecs, vmapped).

    ``like`` (a vector of the map's input space) gives the basis vectors its type,
    e.g. varying over the manual axes inside ``shard_map``.
    """
    eye = jnp.eye(n, dtype=dtype)
    if like is not None:
        eye = eye + jnp.zeros_like(like, dtype=dtype)
    return jax.vmap(mv, out_axes=1)(eye)


def _dense(method):
    def solve(
        matvec: MatVec,
        b: PyTree,
        *,
        init: PyTree | None = None,
        tol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        ridge: float | None = None,
        return_info: bool = False,
    ):
        del init, maxiter  # direct solves need neither
        mv, b_flat, unravel = _flat(matvec, b)
        mv = _with_ridge(mv, ridge)
        A = materialize(mv, b_flat.size, b_flat.dtype, like=b_flat)
        # XLA's CPU factorisations have no half-precision kernels: factorise in
        # float32 (more accurate anyway) and cast back.
        work = jnp.promote_types(b_flat.dtype, jnp.float32)
        x = method(A.astype(work), b_flat.astype(work)).astype(b_flat.dtype)
        if not return_info:
            return unravel(x)
        b_norm = _norm(b_flat)
        r_norm = _norm(b_flat - A @ x)
        # Direct solves are exact up to rounding; flag singular/ill-posed systems.
        t = jnp.sqrt(jnp.finfo(b_flat.dtype).eps) if tol is None else tol
        return _finish(x, r_norm, b_norm, 1, jnp.maximum(t * b_norm, atol), unravel, True)

    return solve


def _lu(A, b):
    # LU with partial pivoting; the row permutation is applied as a one-hot matrix
    # product rather than the gather ``b[perm]`` of ``jnp.linalg.solve``: under
    # ``vmap`` over an Explicit mesh axis, a gather of an unbatched ``b`` (e.g. the
    # basis tangents of ``jacfwd``) with batched pivots has no sharding JAX can infer.
    lu_, _, perm = jax.lax.linalg.lu(A)
    Pb = (perm[:, None] == jnp.arange(A.shape[0])).astype(A.dtype) @ b
    y = jax.scipy.linalg.solve_triangular(lu_, Pb, lower=True, unit_diagonal=True)
    return jax.scipy.linalg.solve_triangular(lu_, y, lower=False)


def _cholesky(A, b):
    c = jax.scipy.linalg.cho_factor(A)
    return jax.scipy.linalg.cho_solve(c, b)


def _lstsq(A, b):
    return jnp.linalg.lstsq(A, b)[0]


lu = _dense(_lu)
lu.__name__ = lu.__qualname__ = "lu"
lu.__doc__ = """Dense LU solve of ``A x = b`` (``A`` materialised by ``n`` vmapped matvecs).

    Options ``ridge`` and ``return_info``; ``tol`` only sets the residual level above
    which ``info.converged`` is False (default ``sqrt(eps)``), e.g. for singular ``A``.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[3.0, 1.0], [-1.0, 2.0]])
      >>> x = lu(lambda v: A @ v, jnp.array([1.0, 0.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 0.0]), atol=1e-5))
      True
    """

cholesky = _dense(_cholesky)
cholesky.__name__ = cholesky.__qualname__ = "cholesky"
cholesky.__doc__ = """Dense Cholesky solve of ``A x = b`` for symmetric positive definite ``A``.

    Same options as :func:`lu`. A non-SPD ``A`` gives NaN, reported by ``info``.
    """

lstsq = _dense(_lstsq)
lstsq.__name__ = lstsq.__qualname__ = "lstsq"
lstsq.__doc__ = """Dense least-squares (SVD) solve of ``A x = b``; minimum-norm for singular ``A``.

    Same options as :func:`lu`.
    """


def auto(
    matvec: MatVec,
    b: PyTree,
    *,
    symmetric: bool = False,
    return_info: bool = False,
    **options: Any,
):
    """Pick a solver: dense LU for ``n ≤ DENSE_THRESHOLD``, else CG or GMRES.

    ``n`` is the total size of ``b``. Above the threshold, ``symmetric=True``
    (declared by the caller, e.g. ``custom_root(..., symmetric=True)``) selects
    :func:`cg`, otherwise :func:`gmres`. Options are forwarded (``M`` and
    ``maxiter`` are dropped for the dense path).

    Restarted GMRES(20) can stall on non-normal or ill-conditioned systems that a
    direct solve handles exactly. So for ``n ≤ FULL_GMRES_MAX`` (and no ``restart``
    given) ``auto`` runs GMRES(20) for at most ``5 × 20`` iterations and then
    continues from its result with unrestarted GMRES (restart ``n``, at most ``n``
    iterations in exact arithmetic, basis of ``n + 1`` vectors). When the first
    stage converged the second does no iteration (one matvec to check), also under
    ``vmap``.
    """
    n = sum(jnp.size(leaf) for leaf in jax.tree.leaves(b))
    if n <= DENSE_THRESHOLD:
        options = {k: v for k, v in options.items() if k not in ("M", "restart")}
        return lu(matvec, b, return_info=return_info, **options)
    if symmetric or n > FULL_GMRES_MAX or "restart" in options:
        return (cg if symmetric else gmres)(matvec, b, return_info=return_info, **options)
    maxiter = options.pop("maxiter", None)
    maxiter = 10 * n if maxiter is None else maxiter
    first = min(maxiter, 5 * _AUTO_RESTART)
    x, info1 = gmres(matvec, b, return_info=True, maxiter=first, restart=_AUTO_RESTART, **options)
    options["init"] = x
    x, info2 = gmres(matvec, b, return_info=True, maxiter=maxiter, restart=n, **options)
    info = info2._replace(iterations=info1.iterations + info2.iterations)
    return (x, info) if return_info else x


SOLVERS: dict[str, Callable[..., Any]] = {
    "auto": auto,
    "cg": cg,
    "gmres": gmres,
    "bicgstab": bicgstab,
    "normal_cg": normal_cg,
    "lu": lu,
    "cholesky": cholesky,
    "lstsq": lstsq,
}


def get_solver(solve: str | Callable[..., Any], argname: str = "solve") -> Callable[..., Any]:
    """Resolve ``solve`` (a name in :data:`SOLVERS` or a callable) to a callable."""
    if callable(solve):
        return solve
    if isinstance(solve, str) and solve in SOLVERS:
        return SOLVERS[solve]
    raise ValueError(
        f"{argname}={solve!r} is not a known linear solver; expected one of "
        f"{sorted(SOLVERS)} or a callable solve(matvec, b, **options)."
    )
