"""The linear solves of the implicit derivative, and their convergence reports.

:func:`_run_solve` runs a built-in or user ``solve`` and reports its relative
residual; :func:`_implicit_tangent` poses the tangent system through
``jax.lax.custom_linear_solve`` so that reverse mode follows by transposition.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun
from jax.flatten_util import ravel_pytree

from rootdiff import _krylov
from rootdiff import linear_solve as _ls
from rootdiff._trees import _real_dtype, _tree_neg

Solve = str | Callable[..., Any]


def _accepts_info(solve: Callable[..., Any]) -> bool:
    try:
        return "return_info" in inspect.signature(solve).parameters
    except (TypeError, ValueError):
        return False


def _resolve_solver(solve: Solve, symmetric: bool) -> Callable[..., Any]:
    """The linear solver named or given by ``solve``; ``"auto"`` learns ``symmetric``."""
    fn = _ls.get_solver(solve)
    return functools.partial(_ls.auto, symmetric=symmetric) if fn is _ls.auto else fn


def _unpartial(fn: Callable[..., Any]) -> tuple[Callable[..., Any], dict, bool]:
    """``(base function, merged keywords, whether the partials bind traced values)``."""
    keywords: dict = {}
    traced = False
    while isinstance(fn, functools.partial):
        leaves = jax.tree.leaves((fn.args, fn.keywords))
        traced |= any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    return fn, keywords, traced


def _is_builtin(fn: Callable[..., Any]) -> bool:
    """A solver of :mod:`rootdiff.linear_solve` (possibly partial'ed with constants)."""
    base, _, traced = _unpartial(fn)
    return not traced and any(base is s for s in _ls.SOLVERS.values())


def _stated_tol(fn: Callable[..., Any], n: int, dtype: Any) -> float:
    """The relative tolerance a built-in ``fn`` applies to ``‖b − A x‖/‖b‖`` (NaN: unknown)."""
    base, kw, _ = _unpartial(fn)
    if kw.get("tol") is not None:
        return float(kw["tol"])
    dense = (_ls.lu, _ls.cholesky, _ls.lstsq)
    if base is _ls.auto:
        base = _ls.lu if n <= _ls.DENSE_THRESHOLD else _ls.cg
    if any(base is d for d in dense):
        return float(np.sqrt(jnp.finfo(dtype).eps))
    if any(base is s for s in _ls.SOLVERS.values()):
        return _ls.default_tol(dtype)
    return float("nan")


def _estimate_solver(
    fn: Callable[..., Any], b: Any, differentiated: bool = False
) -> Callable[..., Any] | None:
    """A cheaper solver for an error estimate with the built-in ``fn``'s options, or None.

    ``solve(matvec, b) -> (x, converged)``. The forward check's Newton step needs a
    few digits, not a derivative's accuracy verified on the true residual, so it
    runs a Krylov recursion without verification, a smaller loop to compile:
    :func:`rootdiff._krylov.cg_estimate` for CG (``"cg"``, or ``"auto"`` on a large
    symmetric system), :func:`rootdiff._krylov.gmres_estimate` for GMRES
    (``"gmres"``, or ``"auto"`` on a large nonsymmetric system; unrestarted up to
    ``FULL_GMRES_MAX`` unknowns, as ``"auto"``'s second stage). Other solvers (dense,
    BiCGStab, a preconditioned solve) run as given.

    ``differentiated``: the program also runs the derivative's solve. GMRES then
    runs as given, the derivative's very loop: XLA:CPU compiles the kernels the two
    loops have in common (all but the operator's) once, so the Newton step adds
    less compile time than a loop of its own (deep-equilibrium fixed point,
    ``value_and_grad``: +0.15 s against +0.25 s for the estimate's loop; value
    alone: +0.75 s against +0.47 s). CG's estimate is cheaper either way.
    """
    base, kw, _ = _unpartial(fn)
    if kw.get("M") is not None:
        return None
    n = sum(jnp.size(leaf) for leaf in jax.tree.leaves(b))
    if base is _ls.auto and n > _ls.DENSE_THRESHOLD:
        if kw.get("symmetric"):
            base = _ls.cg
        else:
            base = _ls.gmres
            if "restart" not in kw and n <= _ls.FULL_GMRES_MAX:
                kw = {**kw, "restart": n}
    if base is _ls.cg:
        opts = {k: v for k, v in kw.items() if k in ("tol", "atol", "maxiter", "ridge")}
        return functools.partial(_krylov.cg_estimate, **opts)
    if base is _ls.gmres and not differentiated:
        keep = ("tol", "atol", "maxiter", "ridge", "restart")
        return functools.partial(_krylov.gmres_estimate, **{k: kw[k] for k in keep if k in kw})
    return None


def _run_solve(fn, matvec, b, *, check: str, **opts):
    """``fn(matvec, b)`` and ``(relative residual, tolerance, iterations, ok)``.

    Built-in solvers report their own convergence. A user's callable is checked by
    one extra matvec, ``‖b − A x‖ ≤ sqrt(eps) ‖b‖``: this is what catches a ``solve``
    that ignores the operator it is given (e.g. a pre-factorised forward solve
    used for the transposed system). ``opts`` (a solver's hints) are passed on.
    """
    b_flat = ravel_pytree(b)[0]
    dtype = _real_dtype(b_flat.dtype)
    n = b_flat.size
    if _accepts_info(fn):
        x, info = fn(matvec, b, return_info=True, **opts)
        rel = info.residual_norm / jnp.where(info.b_norm > 0, info.b_norm, 1.0)
        tol = _stated_tol(fn, n, dtype)
        return x, (rel.astype(dtype), jnp.asarray(tol, dtype), info.iterations, info.converged)
    x = fn(matvec, b, **opts)
    if check == "off":
        one = jnp.ones((), dtype)
        return x, (0 * one, one, jnp.asarray(-1, jnp.int32), jnp.asarray(True))
    r = ravel_pytree(jax.tree.map(jnp.subtract, matvec(x), b))[0]
    b_norm = jnp.linalg.norm(b_flat)
    rel = (jnp.linalg.norm(r) / jnp.where(b_norm > 0, b_norm, 1.0)).astype(dtype)
    tol = jnp.asarray(np.sqrt(jnp.finfo(dtype).eps), dtype)
    return x, (rel, tol, jnp.asarray(-1, jnp.int32), rel <= tol)


def _implicit_tangent(F_x, F_theta, sol, theta, theta_dot, fwd_solve, bwd_solve, symmetric):
    """``ẋ`` solving ``∂ₓF ẋ = −∂_θF θ̇`` via a transposable ``custom_linear_solve``.

    ``fwd_solve(matvec, b)`` / ``bwd_solve(matvec, b)`` map a right-hand side (a
    pytree like ``sol``) to the solution of the tangent / adjoint system, given the
    operator ``custom_linear_solve`` hands them (on pytrees); a solve that builds its
    operator from explicit inputs (to hoist a user solve's closure) ignores it.
    The system is posed on the raveled vector: ``custom_linear_solve``'s
    transpose rule requires the right-hand side to be entirely linear, which a
    pytree whose leaves are only partly perturbed (as in grad-of-grad) violates.
    """
    _, rhs = jax.jvp(F_theta, (theta,), (theta_dot,))
    _, matvec = jax.linearize(F_x, sol)
    b, unravel = ravel_pytree(_tree_neg(rhs))

    def flat(f):
        return lambda v: ravel_pytree(f(unravel(v)))[0].astype(b.dtype)

    def on_pytrees(solve):
        # ``solve(mv, r)`` on pytrees, given custom_linear_solve's flat operator ``mv``.
        def flat_solve(mv, r):
            mv_tree = lambda u: unravel(mv(ravel_pytree(u)[0].astype(b.dtype)))  # noqa: E731
            return ravel_pytree(solve(mv_tree, unravel(r)))[0].astype(b.dtype)

        return flat_solve

    x = custom_linear_solve(
        flat(matvec),
        b,
        solve=on_pytrees(fwd_solve),
        transpose_solve=on_pytrees(bwd_solve),
        symmetric=symmetric,
    )
    return unravel(x)


# --------------------------------------------------------------------------- shard_map


def _manual_axes() -> frozenset:
    """The mesh axes made manual by an enclosing ``shard_map`` (empty outside one)."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    return frozenset(getattr(mesh, "manual_axes", ()) or ())


def _vma(x: Any) -> frozenset:
    """The manual axes along which ``x`` varies (its type under ``shard_map``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.9; earlier versions: aval.vma
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _pvary_to(x: jax.Array, axes: frozenset) -> jax.Array:
    missing = tuple(sorted(axes - _vma(x)))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)  # pragma: no cover - jax < 0.8


def _no_auto_pcast():
    try:
        from jax._src.config import auto_pcast
    except ImportError:  # pragma: no cover - JAX without automatic pvary insertion
        return contextlib.nullcontext()
    return auto_pcast(False)


def custom_linear_solve(matvec, b, solve, *, transpose_solve=None, symmetric=False):
    """``jax.lax.custom_linear_solve`` that also works inside ``shard_map``.

    Same arguments as JAX's (``solve(matvec, r)``); inside ``shard_map`` it poses
    the solve through :func:`_linear_solve_manual`, which keeps the varying-axes
    types of the closed-over values consistent.
    """
    if not _manual_axes():
        return jax.lax.custom_linear_solve(
            matvec, b, solve, transpose_solve=transpose_solve, symmetric=symmetric
        )
    if transpose_solve is None:
        if not symmetric:
            raise ValueError("custom_linear_solve: transpose_solve is required unless symmetric")
        transpose_solve = solve
    return _linear_solve_manual(
        matvec, b, solve=solve, transpose_solve=transpose_solve, symmetric=symmetric
    )


def _linear_solve_manual(matvec, b, *, solve, transpose_solve, symmetric):
    """``jax.lax.custom_linear_solve`` inside ``shard_map``, with consistent types.

    ``custom_linear_solve`` traces its ``matvec``/``solve`` functions with the
    types of the values they close over, then casts every closed-over value to
    the union of their varying axes (automatic ``pvary``). A function that
    closes over both device-invariant values (a factorisation of replicated
    data, a constant) and device-varying ones then holds a jaxpr typed for the
    invariant value but receives the varying one, and lowering fails ("Primitive
    mul requires varying manual axes to match"). Here each function is traced
    first, with the right-hand side cast to the union ``U`` of all the varying
    axes involved; the solve is then posed on replays of those jaxprs with the
    automatic cast off, so every jaxpr sees exactly the types it was traced
    with, and the solution is typed as varying along ``U``.
    """
    if symmetric:
        vecmat = matvec
    else:
        vecmat = lambda u: jax.linear_transpose(matvec, b)(u)[0]  # noqa: E731
    fns = (matvec, lambda r: solve(matvec, r), lambda r: transpose_solve(vecmat, r))
    jaxprs = [jax.make_jaxpr(f)(b) for f in fns]
    axes = _vma(b).union(*(_vma(c) for j in jaxprs for c in j.consts))
    if axes != _vma(b):
        b = _pvary_to(b, axes)
        vecmat = matvec if symmetric else (lambda u: jax.linear_transpose(matvec, b)(u)[0])
        jaxprs = [jax.make_jaxpr(f)(b) for f in fns]

    def replay(j):
        return lambda v: _pvary_to(jaxpr_as_fun(j)(v)[0], axes)

    mv, s, ts = map(replay, jaxprs)
    with _no_auto_pcast():
        return jax.lax.custom_linear_solve(
            mv, b, solve=lambda _, r: s(r), transpose_solve=lambda _, r: ts(r), symmetric=symmetric
        )
