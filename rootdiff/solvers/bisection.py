r"""Bisection for a scalar root, differentiable through :func:`rootdiff.custom_root`.

Finds ``x*`` in ``[lower, upper]`` with ``f(x*, *args) = 0`` by halving a bracket on
which ``f`` changes sign. The derivative with respect to ``args`` is the implicit one,

.. math:: ∂x^*/∂θ = -\bigl(∂_x f(x^*, θ)\bigr)^{-1} ∂_θ f(x^*, θ),

attached by :func:`rootdiff.custom_root` with ``f`` as the optimality function; the
``1 × 1`` linear system is solved by a division (no dense solve is materialised).

The bracket is halved in the *ordering of floating-point numbers* (the midpoint of
the two ends' bit patterns read as ordered integers), not in value: every step
halves the number of floats left in the bracket, so whatever the bracket's width
(``[-1e30, 10]``, ``[-inf, inf]``) and wherever the root (``1e-300`` or ``1e300``),
at most ``8 · itemsize + 1`` steps (65 in float64, 33 in float32) reach two
adjacent floats. Within one binade the bit-pattern midpoint is the arithmetic one.

Why our own loop rather than ``jaxopt.Bisection`` or ``optimistix.Bisection``: we
need (i) a root lying exactly on a bracket end to be returned, not replaced by the
other end, (ii) a lane without a sign change to come back as NaN under ``vmap``
rather than as an endpoint, (iii) a loop whose condition is a carried flag, so that
under ``vmap`` the batched predicate costs no extra evaluation of ``f``, and (iv)
the scale-free stopping rule above.

Eager calls are compiled once per function and static options: ``f`` (and ``solve``)
is taken apart into its code and the arrays it closes over, which become inputs of
a cached ``jax.jit`` (so a new closure over new arrays reuses the compiled loop and
never sees stale constants; a closed-over tracer under ``grad``/``vmap`` becomes an
ordinary differentiated input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rootdiff import _checks
from rootdiff import linear_solve as _ls
from rootdiff.implicit import custom_root
from rootdiff.solvers._bisection_cache import _ARRAY, _compiled, _hoist, _is_concrete, _Uncacheable
from rootdiff.solvers._bisection_loop import _bisect, _bracket, _sign_change

__all__ = ["BisectionInfo", "bisection", "scalar_solve"]


class BisectionInfo(NamedTuple):
    """Diagnostics of :func:`bisection` (``return_info=True``); scalars per problem.

    Attributes:
      iterations: bisection steps taken.
      expansions: bracket widenings taken (``expand``).
      converged: the bracket closed (width ``≤ tol``, adjacent floats, or
        ``|f(mid)| ≤ ftol``) within ``maxiter``, on a valid bracket.
      bracketed: ``f`` changes sign on the (possibly widened) bracket.
      lower, upper: the final bracket.
    """

    iterations: jax.Array
    expansions: jax.Array
    converged: jax.Array
    bracketed: jax.Array
    lower: jax.Array
    upper: jax.Array


def scalar_solve(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, *, return_info=False):
    """Solve the ``1 × 1`` system ``a x = b`` with ``a = matvec(1)`` by a division.

    ``a = 0`` (a root where ``f`` is flat) gives ``inf``/``NaN`` and an unconverged
    :class:`~rootdiff.linear_solve.SolveInfo`, which ``check`` reports.
    """
    a = matvec(jnp.ones_like(b))
    x = b / a
    if not return_info:
        return x
    residual = jnp.abs(b - a * x)
    ok = jnp.isfinite(x) & (a != 0)
    return x, _ls.SolveInfo(residual, jnp.abs(b), jnp.ones((), jnp.int32), ok)


# --------------------------------------------------------------------------- the solver


def _root_dtype(lower: Any, upper: Any, args: Any) -> Any:
    """Floating dtype of the root: that of the bracket, or of the floating ``args``."""
    floats = [
        leaf for leaf in jax.tree.leaves(args)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, float))
        and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]  # fmt: skip
    dtype = jnp.result_type(lower, upper, *floats)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _bisection_impl(f, lower, upper, args, kwargs, *, tol, ftol, maxiter, max_expand,
                    solve, check, mode):  # fmt: skip
    """``mode``: ``"solve"`` → ``(root, info)``; ``"ends"`` → the (widened) bracket."""
    dtype = _root_dtype(lower, upper, (args, kwargs))
    lower = jax.lax.stop_gradient(jnp.asarray(lower, dtype))
    upper = jax.lax.stop_gradient(jnp.asarray(upper, dtype))
    if lower.shape != () or upper.shape != ():
        raise ValueError(
            f"bisection: lower and upper must be scalars, got shapes {lower.shape} and "
            f"{upper.shape}; use jax.vmap for a batch of roots"
        )
    nbits = 8 * jnp.dtype(dtype).itemsize
    maxiter = nbits + 1 if maxiter is None else int(maxiter)
    tol = jnp.asarray(-1.0 if tol is None else tol, dtype)  # -1: until adjacent floats
    ftol = jnp.asarray(ftol, dtype)
    name = getattr(f, "__name__", "f")

    def F(x, *a, **k):
        fx = jnp.asarray(f(x, *a, **k))
        if fx.shape != ():
            raise ValueError(f"bisection: {name}(x, *args) must return a scalar, got {fx.shape}")
        return fx.astype(dtype)

    F.__name__ = name
    if mode == "ends":
        bounds = _bracket(lambda x: F(x, *args, **kwargs), lower, upper, max_expand)
        return bounds[:4], bounds[4]

    @custom_root(F, solve=solve, check=check, residual_tol=float("inf"), has_aux=True)
    def solver(_init, *a, **k):
        # residual_tol=inf: the core's forward check then flags only NaN roots (no
        # sign change); the bracket, not |f|, measures convergence of bisection.
        Fa = lambda x: F(x, *a, **k)
        lo, hi, f_lo, f_hi, n_expand = _bracket(Fa, lower, upper, max_expand)
        root, (its, converged, bracketed, lo, hi) = _bisect(
            Fa, lo, hi, f_lo, f_hi, tol=tol, ftol=ftol, maxiter=maxiter
        )
        root = _checks.guard(
            root, hi - lo, jnp.maximum(tol, 0), its, mode=check, ok=converged | ~bracketed,
            what=f"bisection (maxiter={maxiter} reached; residual: final bracket width)",
        )  # fmt: skip
        return root, BisectionInfo(its, n_expand, converged, bracketed, lo, hi)

    return solver(jnp.zeros((), dtype), *args, **kwargs)


# --------------------------------------------------------------------------- public


def bisection(
    f: Callable[..., jax.Array],
    lower: Any,
    upper: Any,
    *args: Any,
    tol: float | jax.Array | None = None,
    maxiter: int | None = None,
    check_bracket: bool = True,
    ftol: float | jax.Array = 0.0,
    expand: bool | int = False,
    solve: Any = scalar_solve,
    check: str = "warn",
    return_info: bool = False,
    **kwargs: Any,
) -> jax.Array | tuple[jax.Array, BisectionInfo]:
    r"""Root ``x*`` of the scalar function ``f(x, *args, **kwargs)`` in ``[lower, upper]``.

    Halves the bracket, keeping the half on which ``f`` changes sign, until two
    adjacent floats remain (or its width is at most ``tol``, or ``|f(mid)| ≤ ftol``,
    by default ``f(mid) = 0`` exactly), then returns the false-position point of the
    last bracket ``lo − f(lo)(hi − lo)/(f(hi) − f(lo))``. The halving is in the
    ordering of floats (see the module docstring): at most 65 steps in float64 and
    33 in float32 whatever the bracket, so the root is found to the last bit for
    brackets like ``[-1e30, 10]``. Increasing and decreasing ``f`` both work. A root
    exactly at ``lower`` or ``upper`` is returned as that end.

    Differentiable with respect to ``args`` and ``kwargs`` (and arrays ``f`` closes
    over) in every mode (``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``hessian``)
    through :func:`rootdiff.custom_root` with ``f`` as the optimality function;
    ``lower`` and ``upper`` get no derivative (they are ``stop_gradient``-ed).
    Integer and non-array ``args`` pass through. Under ``vmap`` all roots are found
    in one compiled loop; eager calls are compiled once per ``f`` and options.

    Bracket handling: with ``expand``, a bracket without a sign change is first
    widened geometrically (width doubling, towards the end with the smaller ``|f|``).
    An eager call (concrete values, ``f`` closing over no tracer) whose final bracket
    has no sign change raises ``ValueError`` (when ``check_bracket``). Under
    ``jit``/``vmap``/``grad`` such a problem (or one with ``f`` NaN at an end) returns
    **NaN** — never an endpoint — and the forward ``check`` reports it.

    Args:
      f: ``f(x, *args, **kwargs)`` returning a scalar; ``x`` is a scalar of the root's
        dtype (the bracket's, promoted with floating ``args``).
      lower, upper: bracket ends (scalars, may be traced; swapped if reversed).
      *args, **kwargs: extra arguments of ``f`` (any pytrees; keyword names must
        differ from this function's options).
      tol: stop when the bracket width is at most ``tol``; default: adjacent floats.
      maxiter: cap on bisection steps; default ``8 · itemsize + 1`` (65 in float64,
        33 in float32), always enough for adjacent floats. Hitting the cap first is
        reported by ``check`` and in ``BisectionInfo.converged``.
      check_bracket: raise ``ValueError`` eagerly when there is no sign change.
      ftol: also stop, returning ``mid``, when ``|f(mid)| ≤ ftol``. Default 0: a
        residual test depends on the scale of ``f``.
      expand: widen a bracket that misses the root: ``True`` (up to 64 widenings) or
        the maximum number of widenings; ``False`` (default) keeps the bracket.
      solve: the ``1 × 1`` linear solve of the derivative (default: a division).
      check: ``"warn"``, ``"raise"``, ``"nan"`` or ``"off"``, as in
        :func:`rootdiff.custom_root`: reports NaN roots (no bracket), ``maxiter``
        reached before the bracket closed, and a zero derivative ``∂ₓf(x*) = 0``.
      return_info: also return a :class:`BisectionInfo`.

    Returns:
      The root, a scalar of the root's dtype (and ``BisectionInfo`` if asked).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> f = lambda x, a: x**2 - a                   # root sqrt(a) in [0, 3]
      >>> round(float(rootdiff.bisection(f, 0.0, 3.0, jnp.array(2.0))), 4)
      1.4142
      >>> g = jax.grad(lambda a: rootdiff.bisection(f, 0.0, 3.0, a=a))(2.0)
      >>> round(float(g), 4)                           # 1 / (2 sqrt(2))
      0.3536
      >>> batch = jax.vmap(lambda a: rootdiff.bisection(f, 0.0, 3.0, a, check="off"))
      >>> [round(float(r), 4) for r in batch(jnp.array([1.0, 4.0, 16.0]))]  # 16: no bracket
      [1.0, 2.0, nan]
      >>> round(float(rootdiff.bisection(f, 0.0, 1.0, 16.0, expand=True)), 4)
      4.0
    """
    _checks.validate_mode(check)
    max_expand = (64 if expand is True else int(expand)) if expand else 0
    if max_expand < 0:
        raise ValueError(f"bisection: expand must be a bool or a count >= 0, got {expand!r}")
    tol = None if tol is None else jnp.asarray(tol)
    options = dict(maxiter=maxiter, max_expand=max_expand, check=check)
    # Python floats in args/kwargs are weakly typed arrays, as in JAX; other
    # non-array leaves (ints, strings, callables) are static.
    args, kwargs = jax.tree.map(
        lambda v: jnp.asarray(v) if isinstance(v, (float, complex)) else v, (args, kwargs)
    )
    leaves: list = []
    try:
        key, rebuild = _hoist((f, solve, args, kwargs), leaves, depth=-1)
        key = (key, tol is None, tuple(sorted(options.items())))
        compiled = _compiled
    except _Uncacheable:  # compile afresh for this call, as jax.jit would re-trace
        flat, treedef = jax.tree.flatten((args, kwargs))
        idx = [i for i, v in enumerate(flat) if isinstance(v, _ARRAY)]
        leaves, key, compiled = [flat[i] for i in idx], None, lambda key, make: make()

        def rebuild(it):
            vals = list(flat)
            for i in idx:
                vals[i] = next(it)
            return (f, solve, *jax.tree.unflatten(treedef, vals))

    dyn = (leaves, lower, upper, tol, ftol)

    if check_bracket and _is_concrete(dyn):
        ends = compiled(("ends", key), lambda: jax.jit(_runner(rebuild, "ends", options)))
        (lo, hi, f_lo, f_hi), n_expand = ends(*dyn)
        if _is_concrete((f_lo, f_hi)) and not bool(_sign_change(f_lo, f_hi)):
            widened = f" after {int(n_expand)} widenings" if max_expand else ""
            raise ValueError(
                f"bisection: f does not change sign on [lower, upper] = "
                f"[{float(lo)!r}, {float(hi)!r}]{widened}: f(lower) = {float(f_lo)!r}, "
                f"f(upper) = {float(f_hi)!r}. Choose a bracket with f(lower)·f(upper) ≤ 0"
                f"{'' if max_expand else ' or pass expand=True'}."
            )
    run = compiled(("solve", key), lambda: jax.jit(_runner(rebuild, "solve", options)))
    root, info = run(*dyn)
    return (root, info) if return_info else root


def _runner(rebuild, mode, options):
    def run(leaves, lower, upper, tol, ftol):
        f, solve, args, kwargs = rebuild(iter(leaves))
        return _bisection_impl(
            f, lower, upper, args, kwargs, tol=tol, ftol=ftol, solve=solve, mode=mode, **options
        )

    return run
