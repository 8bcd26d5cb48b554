"""Flat-vector machinery shared by the linear solvers of :mod:`rootdiff.linear_solve`.

* :class:`SolveInfo` and :func:`default_tol`, the solvers' report and tolerance;
* :func:`_flat` / :func:`_setup`: ravel a pytree system into ``matvec`` on flat vectors;
* sharding-aware dot products (:func:`_vdot`, :func:`_norm`, :func:`_matmul`): under
  an ``Explicit`` mesh axis a contraction asks for a replicated result;
* :func:`materialize`: the dense matrix of a linear map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

PyTree = Any
MatVec = Callable[[PyTree], PyTree]


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


def _finish(x, r_norm, b_norm, it, thresh, unravel, return_info, converged=None):
    ok = jnp.isfinite(r_norm) & (r_norm <= thresh)
    info = SolveInfo(
        residual_norm=r_norm,
        b_norm=b_norm,
        iterations=jnp.asarray(it, jnp.int32),
        converged=ok if converged is None else ok & converged,
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
