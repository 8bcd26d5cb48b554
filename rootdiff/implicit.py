r"""Implicit differentiation of roots and fixed points: the one rule rootdiff has.

If ``F(x, θ) = 0`` defines ``x*(θ)`` and ``∂ₓF`` is invertible at the solution,

.. math::  ∂x^*/∂θ = -(∂ₓF)^{-1} ∂_θF.

Forward mode solves ``∂ₓF · ẋ = −∂_θF · θ̇``; reverse mode solves
``(∂ₓF)ᵀ u = x̄`` and returns ``θ̄ = −(∂_θF)ᵀ u``. Both use only JVPs/VJPs of ``F``.

The decorators below attach *one* ``jax.custom_jvp`` rule to the user's solver.
Its tangent is computed by ``jax.lax.custom_linear_solve`` with a transpose solve,
so JAX derives reverse mode by transposition, and ``jacfwd``, ``jacrev``,
``hessian``, ``vmap`` and ``jit`` all compose. Values closed over by the
optimality function (including tracers of an outer transformation) are hoisted
with ``jax.closure_convert`` and receive their derivatives; values closed over by
the solver are hoisted too, but the solver is a black box and is never
differentiated.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from rootdiff import _checks
from rootdiff import linear_solve as _ls

__all__ = [
    "custom_root",
    "custom_fixed_point",
    "root_jvp",
    "root_vjp",
    "argmin",
    "RootInfo",
]

PyTree = Any
Solve = str | Callable[..., Any]


class RootInfo(NamedTuple):
    """Diagnostics returned by :func:`root_jvp` / :func:`root_vjp` with ``return_info=True``.

    Attributes:
      optimality_residual: ``max |F(sol, θ)|`` — how well ``sol`` solves the problem.
      linear_solve: the :class:`~rootdiff.linear_solve.SolveInfo` of the tangent
        (JVP) or cotangent (VJP) system.
    """

    optimality_residual: jax.Array
    linear_solve: _ls.SolveInfo


# --------------------------------------------------------------------------- helpers


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _describe(tree: Any) -> str:
    """Human-readable ``structure: shape dtype`` summary of a pytree."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = ", ".join(f"{jnp.dtype(leaf.dtype).name}{list(np.shape(leaf))}" for leaf in leaves)
    return f"{treedef} with leaves [{shapes}]"


def _same_layout(a: Any, b: Any, *, dtypes: bool) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if np.shape(x) != np.shape(y):
            return False
        if dtypes and jnp.dtype(x.dtype) != jnp.dtype(y.dtype):
            return False
    return True


def _max_abs(tree: PyTree) -> jax.Array:
    leaves = [jnp.max(jnp.abs(leaf), initial=0.0) for leaf in jax.tree.leaves(tree)]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())


def _tree_neg(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.negative, tree)


def _zero_tangent(x: jax.Array) -> jax.Array:
    if _is_float(x):
        return jnp.zeros_like(x)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _sol_dtype(sol: PyTree) -> Any:
    leaves = jax.tree.leaves(sol)
    return jnp.result_type(*leaves) if leaves else jnp.float32


def default_residual_tol(sol: PyTree) -> float:
    """Default forward-check tolerance ``sqrt(eps)`` of the solution's dtype."""
    dt = _sol_dtype(sol)
    return float(np.sqrt(jnp.finfo(dt).eps)) if jnp.issubdtype(dt, jnp.inexact) else 0.0


def _accepts_info(solve: Callable[..., Any]) -> bool:
    try:
        return "return_info" in inspect.signature(solve).parameters
    except (TypeError, ValueError):
        return False


def _resolve_solver(solve: Solve, symmetric: bool) -> Callable[..., Any]:
    """The linear solver named or given by ``solve``; ``"auto"`` learns ``symmetric``."""
    fn = _ls.get_solver(solve)
    return functools.partial(_ls.auto, symmetric=symmetric) if fn is _ls.auto else fn


def _make_linear_solve(
    solve: Solve, *, symmetric: bool, check: str
) -> Callable[[Callable[[PyTree], PyTree], PyTree], PyTree]:
    """A ``solve(matvec, b) -> x`` closure with the user's choice and checks."""
    fn = _resolve_solver(solve, symmetric)
    with_info = _accepts_info(fn)

    def linear_solve(matvec, b):
        if not with_info:
            return fn(matvec, b)
        x, info = fn(matvec, b, return_info=True)
        return _checks.guard(
            x, info.residual_norm, info.b_norm, info.iterations, mode=check,
            what="the linear solve of the implicit derivative (threshold shown: |b|)",
            ok=info.converged,
        )  # fmt: skip

    return linear_solve


def _split(args: tuple, kwargs: dict):
    """Split ``(args, kwargs)`` into array leaves and a function rebuilding them.

    Non-array leaves (Python numbers, strings, callables, ...) stay static.
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dyn_idx = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    dyn = [jnp.asarray(leaves[i]) for i in dyn_idx]
    template = [None if i in set(dyn_idx) else leaf for i, leaf in enumerate(leaves)]

    def rebuild(dyn_leaves):
        out = list(template)
        for i, v in zip(dyn_idx, dyn_leaves):
            out[i] = v
        return jax.tree.unflatten(treedef, out)

    return dyn, rebuild


def _implicit_tangent(F_x, F_theta, sol, theta, theta_dot, linear_solve, symmetric):
    """``ẋ`` solving ``∂ₓF ẋ = −∂_θF θ̇`` via a transposable ``custom_linear_solve``.

    The system is posed on the raveled vector: ``custom_linear_solve``'s transpose
    rule requires the right-hand side to be entirely linear, which a pytree whose
    leaves are only partly perturbed (as in grad-of-grad) violates.
    """
    _, rhs = jax.jvp(F_theta, (theta,), (theta_dot,))
    _, matvec = jax.linearize(F_x, sol)
    b, unravel = ravel_pytree(_tree_neg(rhs))

    def flat(mv):
        return lambda v: ravel_pytree(mv(unravel(v)))[0].astype(b.dtype)

    def solve_flat(mv, rhs_flat):
        x = linear_solve(
            lambda t: unravel(mv(ravel_pytree(t)[0].astype(b.dtype))), unravel(rhs_flat)
        )
        return ravel_pytree(x)[0].astype(b.dtype)

    x = jax.lax.custom_linear_solve(
        flat(matvec), b, solve=solve_flat, transpose_solve=solve_flat, symmetric=symmetric
    )
    return unravel(x)


def _check_signature(optimality_fun, params, args, kwargs, name):
    try:
        sig = inspect.signature(optimality_fun)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(params, *args, **kwargs)
    except TypeError as e:
        kw = ", ".join(kwargs)
        raise TypeError(
            f"{name}{sig} cannot accept the solver's arguments: it is called as "
            f"{name}(params, *args, **kwargs) with {len(args)} positional argument(s) "
            f"after params and keyword argument(s) [{kw}]: {e}"
        ) from None


# --------------------------------------------------------------------------- decorators


def custom_root(
    optimality_fun: Callable[..., PyTree],
    *,
    solve: Solve = "auto",
    has_aux: bool = False,
    symmetric: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorator: make ``solver(init_params, *args, **kwargs)`` differentiable implicitly.

    The decorated solver returns ``params`` with ``optimality_fun(params, *args,
    **kwargs) = 0``. Its derivatives follow from the implicit function theorem,

    .. math:: ∂ₓF\,ẋ = -∂_θF\,θ̇ \quad\text{(JVP)},\qquad (∂ₓF)^⊤u = x̄,\;
              θ̄ = -(∂_θF)^⊤u \quad\text{(VJP)},

    with ``θ`` every floating-point array in ``args`` and ``kwargs`` and every array
    ``optimality_fun`` closes over. ``init_params`` gets a zero derivative; integer
    arrays and non-array arguments (numbers, strings, callables, ``None``) pass
    through untouched. All of ``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``hessian``,
    ``vmap`` and ``jit`` work.

    Args:
      optimality_fun: ``F(params, *args, **kwargs)`` returning a pytree with the
        structure, shapes and dtypes of ``params``.
      solve: linear solver for ``∂ₓF``: a name in :mod:`rootdiff.linear_solve`
        (``"auto"``, ``"cg"``, ``"gmres"``, ``"bicgstab"``, ``"normal_cg"``,
        ``"lu"``, ``"cholesky"``, ``"lstsq"``) or a callable
        ``solve(matvec, b) -> x`` (e.g. ``functools.partial(rootdiff.linear_solve.cg,
        tol=1e-10)``).
      has_aux: the solver returns ``(params, aux)``; ``aux`` is passed through with
        zero derivative.
      symmetric: declare ``∂ₓF`` symmetric (true for ``F = ∇f``); ``"auto"`` then
        picks CG for large systems and the transpose solve reuses ``solve``.
      check: what to do when the forward solution's residual
        ``max |F(params)|`` exceeds ``residual_tol`` or the linear solve of a
        derivative does not converge: ``"warn"`` (default), ``"raise"``,
        ``"nan"`` (poison the value with NaN) or ``"off"``. Works under ``jit``
        and ``vmap``.
      residual_tol: forward tolerance for ``check``; default ``sqrt(eps)`` of
        ``params``' dtype (≈1.5e-8 in float64, ≈3.5e-4 in float32).

    Returns:
      A decorator; the decorated function has the solver's signature.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> F = lambda x, a: x**3 - a                     # root: x = a^(1/3)
      >>> @rootdiff.custom_root(F)
      ... def cube_root(x, a):
      ...     for _ in range(30):
      ...         x = x - F(x, a) / (3 * x**2)          # Newton
      ...     return x
      >>> g = jax.grad(cube_root, argnums=1)(jnp.array(1.0), jnp.array(8.0))
      >>> round(float(g), 6)                           # d a^(1/3)/da = 1/12
      0.083333
    """
    _checks.validate_mode(check)
    _ls.get_solver(solve)  # fail early on unknown names
    linear_solve = _make_linear_solve(solve, symmetric=symmetric, check=check)

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(solver)
        def wrapped(init_params: PyTree, *args: Any, **kwargs: Any) -> Any:
            return _solve_root(
                solver, optimality_fun, init_params, args, kwargs,
                has_aux=has_aux, symmetric=symmetric, linear_solve=linear_solve,
                check=check, residual_tol=residual_tol,
            )  # fmt: skip

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable[..., PyTree],
    *,
    solve: Solve = "auto",
    has_aux: bool = False,
    symmetric: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a solver returning ``params = fixed_point_fun(params, *args, **kwargs)``.

    Equivalent to :func:`custom_root` with ``F(x, θ) = T(x, θ) − x``; all options
    are as there.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> T = lambda x, a: 0.5 * (x + a / x)             # Babylonian sqrt
      >>> @rootdiff.custom_fixed_point(T)
      ... def sqrt(x, a):
      ...     for _ in range(30):
      ...         x = T(x, a)
      ...     return x
      >>> round(float(jax.grad(sqrt, argnums=1)(jnp.array(1.0), jnp.array(4.0))), 6)
      0.25
    """

    def optimality_fun(params, *args, **kwargs):
        return jax.tree.map(jnp.subtract, fixed_point_fun(params, *args, **kwargs), params)

    optimality_fun.__name__ = getattr(fixed_point_fun, "__name__", "fixed_point_fun")
    try:  # report the user's signature in binding errors
        optimality_fun.__signature__ = inspect.signature(fixed_point_fun)
    except (TypeError, ValueError):
        pass
    return custom_root(
        optimality_fun, solve=solve, has_aux=has_aux, symmetric=symmetric,
        check=check, residual_tol=residual_tol,
    )  # fmt: skip


def argmin(
    objective: Callable[..., jax.Array],
    *,
    solve: Solve = "auto",
    has_aux: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: differentiable ``argmin_x objective(x, *args, **kwargs)``.

    Wraps a minimiser ``minimise(init, *args, **kwargs)`` with :func:`custom_root`
    on the optimality condition ``∇ₓ objective(x, θ) = 0``. The Hessian is
    symmetric, so ``"auto"`` uses a dense solve for small problems and CG
    (Hessian-vector products, no Hessian materialised) for large ones.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> objective = lambda x, lam: jnp.sum((x - 1.0) ** 2) + lam * jnp.sum(x**2)
      >>> @rootdiff.argmin(objective)
      ... def minimise(x, lam):
      ...     for _ in range(200):
      ...         x = x - 0.1 * jax.grad(objective)(x, lam)
      ...     return x
      >>> g = jax.grad(lambda lam: minimise(jnp.zeros(2), lam).sum())(1.0)
      >>> round(float(g), 4)                           # d/dλ 2/(1+λ) at λ=1
      -0.5
    """

    def gradient(x, *args, **kwargs):
        return jax.grad(objective)(x, *args, **kwargs)

    gradient.__name__ = f"grad({getattr(objective, '__name__', 'objective')})"
    try:
        gradient.__signature__ = inspect.signature(objective)
    except (TypeError, ValueError):
        pass
    return custom_root(
        gradient, solve=solve, has_aux=has_aux, symmetric=True, check=check,
        residual_tol=residual_tol,
    )  # fmt: skip


# --------------------------------------------------------------------------- the rule


def _solve_root(
    solver, optimality_fun, init_params, args, kwargs, *,
    has_aux, symmetric, linear_solve, check, residual_tol,
):  # fmt: skip
    fname = getattr(optimality_fun, "__name__", "optimality_fun")
    _check_signature(optimality_fun, init_params, args, kwargs, fname)
    dyn, rebuild = _split(args, kwargs)

    def solver_flat(init, dyn_leaves):
        a, k = rebuild(dyn_leaves)
        return solver(init, *a, **k)

    def F_flat(x, dyn_leaves):
        a, k = rebuild(dyn_leaves)
        return optimality_fun(x, *a, **k)

    # Hoist closed-over tracers into explicit inputs (tangents of the solver's are dropped).
    solver_c, solver_consts = jax.closure_convert(solver_flat, init_params, dyn)
    out_shape = jax.eval_shape(solver_c, init_params, dyn, *solver_consts)
    if has_aux:
        if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
            raise TypeError(
                f"with has_aux=True the solver must return (params, aux); it returned "
                f"{_describe(out_shape)}"
            )
        sol_shape = out_shape[0]
    else:
        sol_shape = out_shape
    if init_params is not None and not _same_layout(sol_shape, init_params, dtypes=False):
        raise ValueError(
            f"the solver returned params {_describe(sol_shape)}, but init_params is "
            f"{_describe(init_params)}; params and init_params must have the same "
            f"structure and shapes (did the solver return the wrong thing, or "
            f"was init_params of the wrong shape?)"
        )
    bad = [s for s in jax.tree.leaves(sol_shape) if not jnp.issubdtype(s.dtype, jnp.inexact)]
    if bad:
        raise TypeError(f"the solver returned non-floating params {_describe(sol_shape)}")
    # Shapes, not zeros: they keep the solution's type under shard_map (varying axes).
    example = sol_shape
    try:
        F_c, F_consts = jax.closure_convert(F_flat, example, dyn)
        F_shape = jax.eval_shape(F_c, example, dyn, *F_consts)
    except Exception as e:
        raise type(e)(
            f"{fname} failed when evaluated at the solver's output params "
            f"{_describe(sol_shape)} (see the error above)"
        ) from e
    if not _same_layout(F_shape, sol_shape, dtypes=True):
        raise ValueError(
            f"{fname} must return a pytree with the structure, shapes and dtypes of "
            f"params; params is {_describe(sol_shape)} but {fname} returned "
            f"{_describe(F_shape)}"
        )
    tol = default_residual_tol(sol_shape) if residual_tol is None else residual_tol

    @jax.custom_jvp
    def root(init, dyn_leaves, s_consts, f_consts):
        out = solver_c(init, dyn_leaves, *s_consts)
        sol = out[0] if has_aux else out
        if check != "off":
            residual = _max_abs(F_c(sol, dyn_leaves, *f_consts))
            sol = _checks.guard(
                sol, residual, tol, -1, mode=check,
                what=f"the forward solve ({fname} residual max|F(params)|)",
            )  # fmt: skip
        return (sol, out[1]) if has_aux else sol

    def root_jvp_rule(primals, tangents):
        init, dyn_leaves, s_consts, f_consts = primals
        _, dyn_dot, _, f_consts_dot = tangents
        out = root(init, dyn_leaves, s_consts, f_consts)
        sol = out[0] if has_aux else out

        # θ: the floating inputs of F that carry a non-zero tangent.
        theta_all = list(dyn_leaves) + list(f_consts)
        dot_all = list(dyn_dot) + list(f_consts_dot)
        live = [
            i for i, (x, t) in enumerate(zip(theta_all, dot_all))
            if _is_float(x) and not isinstance(t, SymbolicZero)
        ]  # fmt: skip
        n_dyn = len(dyn_leaves)

        def F_theta(theta):
            vals = list(theta_all)
            for i, v in zip(live, theta):
                vals[i] = v
            return F_c(sol, vals[:n_dyn], *vals[n_dyn:])

        def F_x(x):
            return F_c(x, dyn_leaves, *f_consts)

        if live:
            theta = [theta_all[i] for i in live]
            theta_dot = [dot_all[i] for i in live]
            sol_dot = _implicit_tangent(
                F_x, F_theta, sol, theta, theta_dot, linear_solve, symmetric
            )
        else:
            sol_dot = jax.tree.map(jnp.zeros_like, sol)
        if has_aux:
            return out, (sol_dot, jax.tree.map(_zero_tangent, out[1]))
        return out, sol_dot

    root.defjvp(root_jvp_rule, symbolic_zeros=True)
    out = root(init_params, dyn, solver_consts, F_consts)
    if has_aux:
        return out[0], jax.lax.stop_gradient(out[1])
    return out


# --------------------------------------------------------------------------- low level


def _theta_fun(optimality_fun, sol, args):
    """``θ ↦ F(sol, args)`` over the floating leaves ``θ`` of ``args``."""
    leaves, treedef = jax.tree.flatten(args)
    idx = [i for i, leaf in enumerate(leaves) if _is_array(leaf) and _is_float(leaf)]

    def F_theta(theta):
        vals = list(leaves)
        for i, v in zip(idx, theta):
            vals[i] = v
        return optimality_fun(sol, *jax.tree.unflatten(treedef, vals))

    return F_theta, [leaves[i] for i in idx], idx, leaves, treedef


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
    ``args`` (same structure; tangents of non-floating leaves are ignored).

    Args:
      optimality_fun: ``F(x, *args)``.
      sol: a root, any pytree.
      args: tuple of ``F``'s arguments after ``x``.
      tangents: tuple with the structure of ``args``.
      solve, symmetric: the linear solver, as in :func:`custom_root`.
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
    theta_dot = [jnp.asarray(t_leaves[i], jnp.result_type(a_leaves[i])) for i in idx]
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
    symmetric: bool = False,
    return_info: bool = False,
):
    """Cotangents of ``args`` for the root ``sol`` of ``optimality_fun(x, *args) = 0``.

    Solves ``(∂ₓF)ᵀ u = cotangent`` and returns ``θ̄ = −(∂_θF)ᵀ u`` as a tuple with the
    structure of ``args`` (``None`` in place of non-floating leaves).

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
    fn = _resolve_solver(solve, symmetric)
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
