"""Low-level implicit products: one JVP or VJP through a given root.

:func:`root_jvp` solves ``∂ₓF ẋ = −∂_θF θ̇``; :func:`root_vjp` solves
``(∂ₓF)ᵀ u = x̄`` and returns ``θ̄ = −(∂_θF)ᵀ u``. Both are re-exported by
:mod:`rootdiff.implicit` and :mod:`rootdiff`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rootdiff import linear_solve as _ls
from rootdiff._solves import Solve, _resolve_solver
from rootdiff._trees import (
    PyTree,
    _describe,
    _is_array,
    _is_float,
    _is_py_float,
    _max_abs,
    _same_layout,
    _tree_neg,
)

__all__ = ["RootInfo", "root_jvp", "root_vjp"]


class RootInfo(NamedTuple):
    """Diagnostics returned by :func:`root_jvp` / :func:`root_vjp` with ``return_info=True``.

    Attributes:
      optimality_residual: ``max |F(sol, θ)|`` — how well ``sol`` solves the problem.
      linear_solve: the :class:`~rootdiff.linear_solve.SolveInfo` of the tangent
        (JVP) or cotangent (VJP) system.
    """

    optimality_residual: jax.Array
    linear_solve: _ls.SolveInfo


def _theta_fun(optimality_fun, sol, args):
    """``θ ↦ F(sol, args)`` over the floating leaves ``θ`` of ``args``.

    Python ``float``/``complex`` leaves count as (weakly typed) floating arrays, as
    in JAX; integers, booleans and other objects are held fixed.
    """
    leaves, treedef = jax.tree.flatten(args)
    idx = [
        i for i, leaf in enumerate(leaves)
        if (_is_array(leaf) and _is_float(leaf)) or _is_py_float(leaf)
    ]  # fmt: skip

    def F_theta(theta):
        vals = list(leaves)
        for i, v in zip(idx, theta):
            vals[i] = v
        return optimality_fun(sol, *jax.tree.unflatten(treedef, vals))

    return F_theta, [jnp.asarray(leaves[i]) for i in idx], idx, leaves, treedef


def root_jvp(
    optimality_fun: Callable[..., PyTree],
    sol: PyTree,
    args: tuple,
    tangents: tuple,
    *,
    solve: Solve = "auto",
    symmetric: bool = False,
    return_info: bool = False,
):
    """Tangent ``ẋ`` of the root ``sol`` of ``optimality_fun(x, *args) = 0``.

    Solves ``∂ₓF(sol, args) ẋ = −∂_θF(sol, args) θ̇``, with ``θ̇ = tangents`` given for
    ``args`` (same structure; tangents of non-floating leaves are ignored; Python
    floats are floating, as in JAX).

    Args:
      optimality_fun: ``F(x, *args)``.
      sol: a root, any pytree.
      args: tuple of ``F``'s arguments after ``x``.
      tangents: tuple with the structure of ``args``.
      solve, symmetric: the linear solver, as in :func:`custom_root` (only the
        system ``∂ₓF`` itself is solved, so no ``transpose_solve`` is needed).
      return_info: also return a :class:`RootInfo` (residual of ``F`` at ``sol`` and
        the linear solve's :class:`~rootdiff.linear_solve.SolveInfo`).

    Example:
      >>> import jax.numpy as jnp
      >>> F = lambda x, a: x**2 - a
      >>> float(root_jvp(F, jnp.array(2.0), (jnp.array(4.0),), (jnp.array(1.0),)))
      0.25
    """
    args = tuple(args)
    F_theta, theta, idx, _, _ = _theta_fun(optimality_fun, sol, args)
    t_leaves = jax.tree.leaves(tuple(tangents))
    a_leaves = jax.tree.leaves(args)
    if len(t_leaves) != len(a_leaves):
        raise ValueError(
            f"tangents must have the structure of args: args is {_describe(args)}, "
            f"tangents is {_describe(tuple(tangents))}"
        )
    theta_dot = [jnp.asarray(t_leaves[i], jnp.result_type(th)) for i, th in zip(idx, theta)]
    _, rhs = jax.jvp(F_theta, (theta,), (theta_dot,))
    F_x = lambda x: optimality_fun(x, *args)  # noqa: E731
    F_sol, matvec = jax.linearize(F_x, sol)
    fn = _resolve_solver(solve, symmetric)
    if not return_info:
        return fn(matvec, _tree_neg(rhs))
    x, info = fn(matvec, _tree_neg(rhs), return_info=True)
    return x, RootInfo(_max_abs(F_sol), info)


def root_vjp(
    optimality_fun: Callable[..., PyTree],
    sol: PyTree,
    args: tuple,
    cotangent: PyTree,
    *,
    solve: Solve = "auto",
    transpose_solve: Solve | None = None,
    symmetric: bool = False,
    return_info: bool = False,
):
    """Cotangents of ``args`` for the root ``sol`` of ``optimality_fun(x, *args) = 0``.

    Solves ``(∂ₓF)ᵀ u = cotangent`` and returns ``θ̄ = −(∂_θF)ᵀ u`` as a tuple with the
    structure of ``args`` (``None`` in place of non-floating leaves; Python floats
    get a cotangent, as in JAX).

    Args:
      optimality_fun, sol, args: as in :func:`root_jvp`.
      cotangent: a pytree like ``sol``.
      solve: solver called as ``solve(vecmat, b)`` with ``vecmat`` the transposed
        operator ``u ↦ (∂ₓF)ᵀ u``; it must use the operator it is given.
      transpose_solve: if given, used instead of ``solve`` for this (transposed)
        system: the name mirrors :func:`custom_root`, so one pair of callables
        serves both.
      symmetric, return_info: as in :func:`root_jvp`.

    Example:
      >>> import jax.numpy as jnp
      >>> F = lambda x, a: x**2 - a
      >>> (g,) = root_vjp(F, jnp.array(2.0), (jnp.array(4.0),), jnp.array(1.0))
      >>> float(g)
      0.25
    """
    args = tuple(args)
    F_theta, theta, idx, leaves, treedef = _theta_fun(optimality_fun, sol, args)
    F_x = lambda x: optimality_fun(x, *args)  # noqa: E731
    F_sol, F_vjp = jax.vjp(F_x, sol)
    if not _same_layout(cotangent, sol, dtypes=False):
        raise ValueError(
            f"cotangent must have the structure and shapes of sol: sol is "
            f"{_describe(sol)}, cotangent is {_describe(cotangent)}"
        )
    fn = _resolve_solver(solve if transpose_solve is None else transpose_solve, symmetric)
    rmatvec = lambda u: F_vjp(u)[0]  # noqa: E731
    if return_info:
        u, info = fn(rmatvec, cotangent, return_info=True)
    else:
        u = fn(rmatvec, cotangent)
    _, theta_vjp = jax.vjp(F_theta, theta)
    (theta_bar,) = theta_vjp(_tree_neg(u))
    out = [None] * len(leaves)
    for i, g in zip(idx, theta_bar):
        out[i] = g
    result = jax.tree.unflatten(treedef, out)
    return (result, RootInfo(_max_abs(F_sol), info)) if return_info else result
