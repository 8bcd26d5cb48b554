r"""Bisection for a scalar root, differentiable through :func:`rootdiff.custom_root`.

Finds ``x*`` in ``[lower, upper]`` with ``f(x*, *args) = 0`` by halving a bracket on
which ``f`` changes sign. The derivative with respect to ``args`` is the implicit one,

.. math:: ∂x^*/∂θ = -\bigl(∂_x f(x^*, θ)\bigr)^{-1} ∂_θ f(x^*, θ),

attached by :func:`rootdiff.custom_root` with ``f`` as the optimality function; the
``1 × 1`` linear system is solved by a division (no dense solve is materialised).

Why our own loop rather than ``jaxopt.Bisection`` or ``optimistix.Bisection``: we
need (i) a root lying exactly on a bracket end to be returned, not replaced by the
other end, (ii) a lane without a sign change to come back as NaN under ``vmap``
rather than as an endpoint, and (iii) a loop whose condition is a carried flag,
so that under ``vmap`` the batched predicate costs no extra evaluation of ``f``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rootdiff import linear_solve as _ls
from rootdiff.implicit import custom_root

__all__ = ["bisection", "scalar_solve"]


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


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _root_dtype(lower: Any, upper: Any, args: tuple) -> Any:
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


def bisection(
    f: Callable[..., jax.Array],
    lower: Any,
    upper: Any,
    *args: Any,
    tol: float | jax.Array | None = None,
    maxiter: int | None = None,
    check_bracket: bool = True,
    ftol: float = 0.0,
    solve: Any = scalar_solve,
    check: str = "warn",
) -> jax.Array:
    r"""Root ``x*`` of the scalar function ``f(x, *args)`` in ``[lower, upper]``.

    Halves the bracket, keeping the half on which ``f`` changes sign, until its width
    is at most ``tol`` (or ``|f(mid)| ≤ ftol``, by default ``f(mid) = 0`` exactly, or
    no float lies strictly between the ends), then returns the false-position point
    of the last bracket ``lo − f(lo)(hi − lo)/(f(hi) − f(lo))`` (exact where ``f``
    is linear on it, an ``O(tol²)`` error where smooth). Increasing and decreasing
    ``f`` both work.
    A root exactly at ``lower`` or ``upper`` is returned as that end.

    Differentiable with respect to ``args`` in every mode (``grad``, ``jvp``,
    ``jacfwd``, ``jacrev``, ``hessian``) through :func:`rootdiff.custom_root` with
    ``f`` as the optimality function; ``lower`` and ``upper`` get no derivative
    (they are ``stop_gradient``-ed). Integer and non-array ``args`` pass through.
    Under ``vmap`` all roots are found in one compiled loop.

    Bracket handling: an eager call (concrete values) whose ``f(lower)`` and
    ``f(upper)`` have the same sign raises ``ValueError`` (when ``check_bracket``).
    Under ``jit``/``vmap`` such a problem (or one with ``f`` NaN at an end)
    returns **NaN** — never an endpoint — and the forward ``check`` reports it.

    Args:
      f: ``f(x, *args)`` returning a scalar; ``x`` is a scalar of the root's dtype
        (the bracket's, promoted with floating ``args``).
      lower, upper: bracket ends (scalars, may be traced; swapped if reversed).
      *args: extra arguments of ``f`` (any pytrees).
      tol: bracket width at which to stop; default ``4·eps·max(|lower|, |upper|)``
        in the root's dtype (≈1e-15 relative in float64, ≈5e-7 in float32).
      maxiter: iteration cap; default ``3·(mantissa bits + 1)`` (159 in float64,
        72 in float32), more than the default ``tol`` needs.
      check_bracket: raise ``ValueError`` eagerly when there is no sign change.
      ftol: also stop, returning ``mid``, when ``|f(mid)| ≤ ftol``. Default 0: a
        residual test depends on the scale of ``f`` (a flat ``f`` passes it far
        from the root), so by default only the bracket width decides.
      solve: the ``1 × 1`` linear solve of the derivative (default: a division).
      check: ``"warn"``, ``"raise"``, ``"nan"`` or ``"off"``, as in
        :func:`rootdiff.custom_root`: reports NaN roots (no bracket) and a zero
        derivative ``∂ₓf(x*) = 0`` (infinite derivative of the root).

    Returns:
      The root, a scalar of the root's dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> f = lambda x, a: x**2 - a                   # root sqrt(a) in [0, 3]
      >>> round(float(rootdiff.bisection(f, 0.0, 3.0, jnp.array(2.0))), 4)
      1.4142
      >>> g = jax.grad(lambda a: rootdiff.bisection(f, 0.0, 3.0, a))(2.0)
      >>> round(float(g), 4)                           # 1 / (2 sqrt(2))
      0.3536
      >>> batch = jax.vmap(lambda a: rootdiff.bisection(f, 0.0, 3.0, a, check="off"))
      >>> [round(float(r), 4) for r in batch(jnp.array([1.0, 4.0, 16.0]))]  # 16: no bracket
      [1.0, 2.0, nan]
    """
    dtype = _root_dtype(lower, upper, args)
    lower = jax.lax.stop_gradient(jnp.asarray(lower, dtype))
    upper = jax.lax.stop_gradient(jnp.asarray(upper, dtype))
    if lower.shape != () or upper.shape != ():
        raise ValueError(
            f"bisection: lower and upper must be scalars, got shapes {lower.shape} and "
            f"{upper.shape}; use jax.vmap for a batch of roots"
        )
    finfo = jnp.finfo(dtype)
    if maxiter is None:
        maxiter = 3 * (finfo.nmant + 1)
    name = getattr(f, "__name__", "f")

    def F(x, *a):
        fx = jnp.asarray(f(x, *a))
        if fx.shape != ():
            raise ValueError(f"bisection: {name}(x, *args) must return a scalar, got {fx.shape}")
        return fx.astype(dtype)

    F.__name__ = name

    if check_bracket and _is_concrete((lower, upper, args)):
        f_lo, f_hi = float(F(lower, *args)), float(F(upper, *args))
        if not (np.sign(f_lo) * np.sign(f_hi) <= 0):  # also catches NaN
            raise ValueError(
                f"bisection: f does not change sign on [lower, upper] = "
                f"[{float(lower)!r}, {float(upper)!r}]: f(lower) = {f_lo!r}, "
                f"f(upper) = {f_hi!r}. Choose a bracket with f(lower)·f(upper) ≤ 0."
            )

    lo0, hi0 = jnp.minimum(lower, upper), jnp.maximum(lower, upper)
    if tol is None:
        width_tol = 4 * finfo.eps * jnp.maximum(jnp.abs(lo0), jnp.abs(hi0))
    else:
        width_tol = jnp.asarray(tol, dtype)

    @custom_root(F, solve=solve, check=check, residual_tol=float("inf"))
    def solver(_init, *a):
        # residual_tol=inf: the core's forward check then flags only NaN roots; the
        # bracket width, not |f|, measures convergence of bisection.
        f_lo, f_hi = F(lo0, *a), F(hi0, *a)
        s_lo, s_hi = jnp.sign(f_lo), jnp.sign(f_hi)
        bracketed = s_lo * s_hi <= 0  # False when either is NaN
        # A root exactly at an end collapses the bracket onto it.
        at_lo, at_hi = s_lo == 0, (s_hi == 0) & (s_lo != 0)
        lo = jnp.where(at_hi, hi0, lo0)
        hi = jnp.where(at_lo, lo0, hi0)
        f_lo, f_hi = jnp.where(at_hi, f_hi, f_lo), jnp.where(at_lo, f_lo, f_hi)
        done = ~bracketed | (hi - lo <= width_tol)

        def cond(state):
            return ~state[-1] & (state[-2] < maxiter)

        def body(state):
            lo, hi, f_lo, f_hi, i, _ = state
            mid = lo + 0.5 * (hi - lo)
            f_mid = F(mid, *a)
            s_mid = jnp.sign(f_mid)
            right = s_mid == s_lo  # the sign change is in [mid, hi]
            zero = jnp.abs(f_mid) <= ftol
            new_lo = jnp.where(zero | right, mid, lo)
            new_hi = jnp.where(zero | ~right, mid, hi)
            f_lo = jnp.where(zero | right, f_mid, f_lo)
            f_hi = jnp.where(zero | ~right, f_mid, f_hi)
            done = zero | (new_hi - new_lo <= width_tol) | (mid <= lo) | (mid >= hi)
            return new_lo, new_hi, f_lo, f_hi, i + 1, done

        # The counter is typed like the data (a literal 0 has no mesh in its type,
        # which breaks vmap over an Explicit mesh axis).
        init = (lo, hi, f_lo, f_hi, jnp.zeros_like(lo, dtype=jnp.int32), done)
        lo, hi, f_lo, f_hi, _, _ = jax.lax.while_loop(cond, body, init)
        # Final false-position step inside the last bracket: exact for f linear
        # there, error O(width²) for smooth f; never leaves the bracket.
        mid = lo + 0.5 * (hi - lo)
        slope_ok = (f_hi != f_lo) & jnp.isfinite(f_lo) & jnp.isfinite(f_hi)
        secant = lo - f_lo * (hi - lo) / jnp.where(slope_ok, f_hi - f_lo, 1.0)
        root = jnp.where(slope_ok, jnp.clip(secant, lo, hi), mid)
        return jnp.where(bracketed, root, jnp.nan).astype(dtype)

    return solver(jnp.zeros((), dtype), *args)
