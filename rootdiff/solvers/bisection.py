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

import functools
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rootdiff import _checks
from rootdiff import linear_solve as _ls
from rootdiff.implicit import custom_root

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


# --------------------------------------------------------------------------- float ordering


def _int_type(dtype: Any) -> Any:
    return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def _to_key(x: jax.Array) -> jax.Array:
    """Monotone map float → signed integer (``-0.0`` and ``0.0`` both map to 0)."""
    itype = _int_type(x.dtype)
    i = jax.lax.bitcast_convert_type(x, itype)
    magnitude = i & jnp.iinfo(itype).max
    return jnp.where(i < 0, -magnitude, i)


def _from_key(k: jax.Array, dtype: Any) -> jax.Array:
    itype = k.dtype
    i = jnp.where(k < 0, (-k) | jnp.asarray(jnp.iinfo(itype).min, itype), k)
    return jax.lax.bitcast_convert_type(i, dtype)


def _key_mid(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """The float whose key is ``floor((key(lo) + key(hi)) / 2)`` (no integer overflow)."""
    a, b = _to_key(lo), _to_key(hi)
    return _from_key((a >> 1) + (b >> 1) + (a & b & 1), lo.dtype)


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


def _sign_change(f_lo: jax.Array, f_hi: jax.Array) -> jax.Array:
    return jnp.sign(f_lo) * jnp.sign(f_hi) <= 0  # False when either is NaN


def _expand(F, lo, hi, f_lo, f_hi, max_expand, factor=2.0):
    """Widen ``[lo, hi]`` geometrically until ``f`` changes sign (or ``max_expand``).

    The end with the smaller ``|f|`` is the one nearer a root of a monotone ``f``:
    the bracket moves past it, ``[hi, hi + w']`` or ``[lo − w', lo]``, its width
    ``w'`` doubling each time; the old end becomes the new inner end (``f`` has no
    sign change on the old bracket). On a tie (e.g. ``lower == upper``) both ends
    move out. Returns the bracket, ``f`` at its ends and the
    number of widenings.
    """
    scale = jnp.maximum(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), 1.0)

    def cond(s):
        lo, hi, f_lo, f_hi, j = s
        finite = jnp.isfinite(f_lo) & jnp.isfinite(f_hi) & jnp.isfinite(lo) & jnp.isfinite(hi)
        return ~_sign_change(f_lo, f_hi) & finite & (j < max_expand)

    def body(s):
        lo, hi, f_lo, f_hi, j = s
        width = hi - lo
        width = factor * jnp.where(width > 0, width, scale)
        x_up, x_dn = hi + width, lo - width
        f_up, f_dn = F(x_up), F(x_dn)
        up, dn = jnp.abs(f_hi) < jnp.abs(f_lo), jnp.abs(f_lo) < jnp.abs(f_hi)  # both: a tie
        new_lo = jnp.where(up, hi, x_dn)
        new_hi = jnp.where(dn, lo, x_up)
        f_lo, f_hi = jnp.where(up, f_hi, f_dn), jnp.where(dn, f_lo, f_up)
        return new_lo, new_hi, f_lo, f_hi, j + 1

    # Counters typed like the data: a literal has no mesh in its type, which breaks
    # vmap over an Explicit mesh axis.
    j0 = jnp.zeros_like(lo, dtype=jnp.int32)
    return jax.lax.while_loop(cond, body, (lo, hi, f_lo, f_hi, j0))


def _bracket(F, lower, upper, max_expand):
    lo0, hi0 = jnp.minimum(lower, upper), jnp.maximum(lower, upper)
    f_lo, f_hi = F(lo0), F(hi0)
    if max_expand:
        return _expand(F, lo0, hi0, f_lo, f_hi, max_expand)
    return lo0, hi0, f_lo, f_hi, jnp.zeros_like(lo0, dtype=jnp.int32)


def _bisect(F, lo, hi, f_lo, f_hi, *, tol, ftol, maxiter):
    """The loop: returns the root (NaN without a sign change) and the final state."""
    s_lo, s_hi = jnp.sign(f_lo), jnp.sign(f_hi)
    bracketed = s_lo * s_hi <= 0
    # A root exactly at an end collapses the bracket onto it.
    at_lo, at_hi = s_lo == 0, (s_hi == 0) & (s_lo != 0)
    lo, hi = jnp.where(at_hi, hi, lo), jnp.where(at_lo, lo, hi)
    f_lo, f_hi = jnp.where(at_hi, f_hi, f_lo), jnp.where(at_lo, f_lo, f_hi)
    closed0 = (hi - lo <= tol) | (_key_mid(lo, hi) == lo) | (lo == hi)
    done = ~bracketed | closed0

    def cond(state):
        return ~state[-1] & (state[-2] < maxiter)

    def body(state):
        lo, hi, f_lo, f_hi, i, _ = state
        mid = _key_mid(lo, hi)
        f_mid = F(mid)
        right = jnp.sign(f_mid) == s_lo  # the sign change is in [mid, hi]
        zero = jnp.abs(f_mid) <= ftol
        new_lo = jnp.where(zero | right, mid, lo)
        new_hi = jnp.where(zero | ~right, mid, hi)
        f_lo = jnp.where(zero | right, f_mid, f_lo)
        f_hi = jnp.where(zero | ~right, f_mid, f_hi)
        adjacent = (_to_key(new_hi) - _to_key(new_lo)) <= 1  # no overflow after a halving
        done = zero | adjacent | (new_hi - new_lo <= tol)
        return new_lo, new_hi, f_lo, f_hi, i + 1, done

    init = (lo, hi, f_lo, f_hi, jnp.zeros_like(lo, dtype=jnp.int32), done)
    lo, hi, f_lo, f_hi, its, done = jax.lax.while_loop(cond, body, init)
    # Final false-position step inside the last bracket: exact for f linear there,
    # error O(width²) for smooth f; never leaves the bracket.
    mid = _key_mid(lo, hi)
    slope_ok = (f_hi != f_lo) & jnp.isfinite(f_lo) & jnp.isfinite(f_hi)
    secant = lo - f_lo * (hi - lo) / jnp.where(slope_ok, f_hi - f_lo, 1.0)
    root = jnp.where(slope_ok, jnp.clip(secant, lo, hi), mid)
    root = jnp.where(bracketed, root, jnp.nan)
    return root, (its, done & bracketed, bracketed, lo, hi)


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


# --------------------------------------------------------------------------- compile cache


class _Id:
    """Hash and compare by identity (and keep the object alive while cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Id) and other.obj is self.obj


_ARRAY = (jax.Array, np.ndarray, np.generic)
_MAX_DEPTH = 4
_VALUE = (int, float, complex, bool, str, bytes, type(None), type, np.dtype, types.CodeType)
# Callables that cannot change behind a reference: keyed by identity.
_FIXED = (
    types.BuiltinFunctionType, np.ufunc, type(jax.jit(lambda x: x)),
    jax.custom_jvp, jax.custom_vjp, types.ModuleType,
)  # fmt: skip


class _Uncacheable(Exception):
    """An object whose behaviour may change behind its identity (a mutable instance)."""


def _hoist(obj: Any, leaves: list, depth: int = 0, arrays: bool = True):
    """``(key, rebuild)``: ``obj`` with its arrays taken out into ``leaves``.

    Functions (closure cells, defaults, the array globals they read),
    ``functools.partial`` objects, bound methods and containers are taken apart;
    their arrays become ``leaves`` (inputs of the cached ``jit``) and the rest goes
    into a hashable ``key``: immutable values by value, library callables by
    identity. Anything else (a mutable instance whose attributes could change)
    raises :class:`_Uncacheable`. ``rebuild(iterator over new leaves)`` recreates
    ``obj`` with the new leaves.
    """
    if isinstance(obj, _ARRAY):
        if not arrays:
            return _Id(obj), lambda it: obj
        leaves.append(obj)
        return "array", lambda it: next(it)
    if isinstance(obj, _VALUE):
        return ("value", type(obj), obj), lambda it: obj
    if isinstance(obj, _FIXED):
        return _Id(obj), lambda it: obj
    if depth >= _MAX_DEPTH:
        raise _Uncacheable
    if isinstance(obj, types.FunctionType):
        return _hoist_function(obj, leaves, depth, arrays)
    if isinstance(obj, functools.partial):
        (kf, rf), (ka, ra), (kk, rk) = (
            _hoist(v, leaves, depth + 1, arrays) for v in (obj.func, obj.args, obj.keywords)
        )
        return ("partial", kf, ka, kk), lambda it: functools.partial(rf(it), *ra(it), **rk(it))
    if isinstance(obj, types.MethodType):
        kf, rf = _hoist(obj.__func__, leaves, depth + 1, arrays)
        ks, rs = _hoist(obj.__self__, leaves, depth + 1, arrays)
        return ("method", kf, ks), lambda it: types.MethodType(rf(it), rs(it))
    if type(obj) in (tuple, list, dict):
        items, treedef = jax.tree.flatten(obj)
        subs = [_hoist(v, leaves, depth + 1, arrays) for v in items]
        key = (type(obj), treedef, tuple(k for k, _ in subs))
        return key, lambda it: jax.tree.unflatten(treedef, [r(it) for _, r in subs])
    raise _Uncacheable


def _hoist_function(fn, leaves, depth, arrays):
    subs = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            raise _Uncacheable from None
        k, r = _hoist(value, leaves, depth + 1, arrays)
        subs.append((k, lambda it, r=r: types.CellType(r(it))))
    kd, rd = _hoist(fn.__defaults__, leaves, depth + 1, arrays)
    kk, rk = _hoist(fn.__kwdefaults__, leaves, depth + 1, arrays)
    g = fn.__globals__
    names = [n for n in fn.__code__.co_names if n in g]
    # Array globals become inputs too (a notebook's data arrays); other globals key.
    gsubs = [_hoist(g[n], leaves, depth + 1, arrays) for n in names]
    key = ("function", fn.__code__, _Id(g), tuple(k for k, _ in subs), kd, kk,
           tuple(zip(names, (k for k, _ in gsubs))))  # fmt: skip

    def rebuild(it):
        closure = tuple(r(it) for _, r in subs) or None
        defaults, kwdefaults = rd(it), rk(it)
        new_globals = {n: r(it) for n, (_, r) in zip(names, gsubs)}
        if any(v is not g[n] for n, v in new_globals.items()):
            new_globals = {**g, **new_globals}  # a copy in which the array globals are inputs
        else:
            new_globals = g
        new = types.FunctionType(fn.__code__, new_globals, fn.__name__, defaults, closure)
        new.__kwdefaults__ = kwdefaults
        return new

    return key, rebuild


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 128


def _compiled(key, make):
    fn = _CACHE.get(key)
    if fn is None:
        fn = _CACHE[key] = make()
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return fn


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


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
