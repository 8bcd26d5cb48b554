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
from typing import Any

import jax
import jax.numpy as jnp

from rootdiff._krylov import bicgstab, cg, gmres, normal_cg
from rootdiff._linalg_base import (
    MatVec,
    PyTree,
    SolveInfo,
    _finish,
    _flat,
    _norm,
    _with_ridge,
    default_tol,
    materialize,
)

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
    "default_tol",
    "materialize",
]

#: Systems with at most this many unknowns are solved densely by ``auto``.
#: Measured in ``benchmarks/dense_threshold.py`` (see docs/benchmarks.md): on a
#: 2-core CPU the dense LU of the materialised Jacobian beats GMRES/CG up to about
#: 100 unknowns for a single system and 100–200 for a vmapped batch.
DENSE_THRESHOLD = 100

#: Up to this many unknowns, ``auto``'s GMRES falls back to unrestarted GMRES when
#: GMRES(20) stalls (a basis of ``n + 1`` vectors: 0.7 MB per problem in float64).
FULL_GMRES_MAX = 300
_AUTO_RESTART = 20


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
