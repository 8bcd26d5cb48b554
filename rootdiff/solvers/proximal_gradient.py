r"""Accelerated proximal gradient, differentiable through its fixed point.

Solves

.. math::  x^\star(θ, λ) = \operatorname{argmin}_x f(x, θ) + g(x, λ)

for a smooth ``f`` and a convex ``g`` given by its proximal operator
``prox(y, λ, s) = argmin_x ½‖x − y‖² + s g(x, λ)``. The forward solver is FISTA (Beck
& Teboulle, 2009) with adaptive restart (O'Donoghue & Candès, 2015) and, when no
fixed step is given, a backtracking line search on the step ``η``. Nothing in the
loop is differentiated: the derivatives w.r.t. ``θ`` (``args``/``kwargs``) and
``λ`` (``hyperparams_prox``) come from :func:`rootdiff.custom_fixed_point` applied to
the proximal-gradient map

.. math::  T(x, θ, λ) = \operatorname{prox}\bigl(x − η ∇ₓf(x, θ), λ, η\bigr),
           \qquad x^\star = T(x^\star, θ, λ),

whose prox JAX differentiates. A projection is the prox of its set's indicator, so
:func:`rootdiff.projected_gradient` is this solver with ``prox = projection``.

The stopping test is scale-aware: the *gradient mapping* ``G(y) = (y − T(y))/η``
(which does not shrink with the step, unlike ``T(y) − y``) must fall to ``tol`` times
its value at the start, down to a floor set by rounding. A line search that cannot
find a step (a non-smooth ``f``, or NaN) stops the solve and is reported.

Repeated calls without ``jax.jit`` are cheap: the solve is compiled once per
(function, prox, static options, argument shapes) and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from rootdiff import _checks
from rootdiff._trees import _max_abs
from rootdiff.implicit import Solve, custom_fixed_point, custom_root
from rootdiff.solvers._fista import _fista

__all__ = ["proximal_gradient", "ProximalGradientInfo"]

PyTree = Any


class ProximalGradientInfo(NamedTuple):
    """Status of :func:`proximal_gradient` / :func:`projected_gradient`; never differentiated.

    Attributes:
      iterations: number of FISTA iterations (gradient evaluations, line search aside).
      residual: ``max |T(x) − x|`` at the returned ``x`` with the returned ``stepsize``.
      stepsize: the step ``η`` of the fixed-point map ``T``.
      converged: the stopping test ``optimality ≤ threshold`` was met within ``maxiter``.
      optimality: ``max |G(x)|``, ``G(x) = (x − T(x))/η`` the gradient mapping (zero
        exactly at a solution; in the units of ``∇f``).
      threshold: the value ``optimality`` had to reach: ``tol · max(|G(x₀)|, |∇f(x₀)|)`` plus a
        rounding floor.
      step_collapsed: the line search could not find a step (``f`` non-smooth or not
        finite near ``x``): the solve stopped there and is not converged.
    """

    iterations: jax.Array
    residual: jax.Array
    stepsize: jax.Array
    converged: jax.Array
    optimality: jax.Array
    threshold: jax.Array
    step_collapsed: jax.Array


# --------------------------------------------------------------------------- helpers


def _dtype(tree: PyTree) -> Any:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("init must contain at least one array")
    dt = jnp.result_type(*leaves)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"init must hold floating-point arrays; got dtype {dt}")
    return dt


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _shapes(tree: PyTree) -> str:
    leaves, treedef = jax.tree.flatten(tree)
    return f"{treedef} with shapes {[tuple(np.shape(v)) for v in leaves]}"


def _detached(fn: Callable[..., Any], *operands: Any) -> Any:
    """``fn(*operands)`` with no derivative flowing through it.

    Array leaves of ``operands`` and the arrays ``fn`` closes over (hoisted by
    ``jax.closure_convert``) are ``stop_gradient``-ed, so the solver's ``while_loop``
    carries no tangents and reverse mode through the implicit rule works even when
    ``fun`` closes over traced values. Non-array leaves stay static.
    """
    leaves, treedef = jax.tree.flatten(operands)
    idx = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

    def flat_fn(dyn):
        vals = list(leaves)
        for i, v in zip(idx, dyn):
            vals[i] = v
        return fn(*jax.tree.unflatten(treedef, vals))

    dyn = [jnp.asarray(leaves[i]) for i in idx]
    fn_c, consts = jax.closure_convert(flat_fn, dyn)
    return fn_c(jax.lax.stop_gradient(dyn), *jax.lax.stop_gradient(consts))


class _Options(NamedTuple):
    maxiter: int
    tol: float | None
    backtrack: float
    increase: float
    max_backtracks: int
    support: bool | None
    solve: Any
    check: str
    residual_tol: float | None
    return_info: bool
    what: str


# --------------------------------------------------------------------------- the solve


def _solve(fun, prox, init, args, kwargs, hp, stepsize, opts: _Options, prox_name: str):
    dtype = _dtype(init)
    tol = 0.25 * float(np.sqrt(np.finfo(dtype).eps)) if opts.tol is None else opts.tol

    out_shape = jax.eval_shape(lambda x, h: prox(x, h, jnp.ones((), dtype)), init, hp)
    in_shape = jax.eval_shape(lambda x: x, init)
    if jax.tree.structure(out_shape) != jax.tree.structure(in_shape) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(out_shape), jax.tree.leaves(in_shape))
    ):
        raise ValueError(
            f"{prox_name} must return a point shaped like init; for init "
            f"{_shapes(in_shape)} it returned {_shapes(out_shape)} (check the shape of "
            f"the hyperparameters: they broadcast against the point)"
        )

    def forward(init, args, kwargs, hp, step):
        f = lambda x: fun(x, *args, **kwargs)  # noqa: E731
        return _fista(f, prox, init, hp, stepsize=step, opts=opts, tol=tol, dtype=dtype)

    x, s = _detached(forward, init, args, kwargs, hp, stepsize)
    eta = jax.lax.stop_gradient(s.eta)
    converged = s.done

    def fixed_point_map(x, eta, args, kwargs, hp):
        g = jax.grad(fun)(x, *args, **kwargs)
        return prox(otu.tree_add_scale(x, -eta, g), hp, eta)

    core_tol = _core_tol(opts)
    support = opts.support
    if support is None:
        support = bool(getattr(prox, "separable", False))
    if support:
        sol = _support_restricted(fun, fixed_point_map, prox, x, eta, args, kwargs, hp, opts)
    else:

        @custom_fixed_point(
            fixed_point_map, solve=opts.solve, check=opts.check, residual_tol=core_tol
        )
        def verified(x, eta, args, kwargs, hp):
            del eta, args, kwargs, hp  # x is already the fixed point found by FISTA
            return x

        sol = verified(x, eta, args, kwargs, hp)

    what = (
        f"{opts.what} (gradient mapping max|G(x)| against tol·max(|G(x0)|, |∇f(x0)|); a residual "
        f"of inf: the step stopped moving x: the line search found no step (is fun "
        f"smooth?) or the step is below x's rounding (ill-conditioned))"
    )
    # One report per call: a non-finite x is reported by the implicit rule's check.
    # The loop never takes a non-finite iterate, so x is non-finite only when the start
    # is, and then the loop did not run (it = 0): a test without a pass over x.
    ok = converged | (s.it == 0)
    sol = _checks.guard(sol, s.opt, s.thr, s.it, mode=opts.check, what=what, ok=ok)
    if not opts.return_info:
        return sol
    residual = jax.lax.stop_gradient(
        _max_abs(otu.tree_sub(fixed_point_map(x, eta, args, kwargs, hp), x))
    )
    info = ProximalGradientInfo(
        iterations=s.it, residual=residual, stepsize=eta, converged=converged,
        optimality=s.opt, threshold=s.thr, step_collapsed=s.collapsed,
    )  # fmt: skip
    return sol, info


def _core_tol(opts: _Options) -> float:
    """Forward tolerance handed to the implicit rule's check.

    This solver's own (scale-aware) stopping test is the forward verdict, so by default
    the rule checks only what that test cannot see: a non-finite result, and the
    backward linear solve.
    """
    return float("inf") if opts.residual_tol is None else opts.residual_tol


def _support_restricted(fun, fixed_point_map, prox, x, eta, args, kwargs, hp, opts):
    r"""The implicit derivative posed on the support only (coordinate-separable ``prox``).

    For a separable prox, ``∂T/∂x = D(I − η∇²f)`` with ``D = diag(dᵢ)`` the prox's
    derivative at ``z = x − η∇f(x)``; ``dᵢ = 0`` off the support ``S``. Off ``S`` the
    tangent is read off directly, and on ``S`` it solves the symmetric system
    ``(diag(1/d_S − 1) + η∇²f_SS) ẋ_S = …``. We pose it as the root of

    ``F(x) = (x − T(x̃)) / d`` on ``S`` and ``x − T(x̃)`` off ``S``, where ``x̃ = x`` on
    ``S`` and the (constant) solution off ``S``.

    ``F`` vanishes where ``T(x) = x`` and gives the same derivative, but its Jacobian is
    ``blockdiag(diag(1/d_S − 1) + η∇²f_SS, I)``: symmetric positive (semi)definite, so
    ``"auto"`` takes CG (or a dense solve when small) over GMRES on ``∂T − I``, and the
    Krylov iterations only see the support's block.
    """
    sg = jax.lax.stop_gradient
    x, args_c, kwargs_c, hp_c = sg((x, args, kwargs, hp))
    g = jax.grad(fun)(x, *args_c, **kwargs_c)
    z = otu.tree_add_scale(x, -eta, g)
    _, d = jax.jvp(lambda z: prox(z, hp_c, eta), (z,), (jax.tree.map(jnp.ones_like, z),))
    mask = jax.tree.map(lambda v: v != 0, d)

    def restricted(x, eta, args, kwargs, hp, mask, d, xs):
        x_tilde = jax.tree.map(lambda m, a, b: jnp.where(m, a, sg(b)), mask, x, xs)
        r = otu.tree_sub(x, fixed_point_map(x_tilde, eta, args, kwargs, hp))
        return jax.tree.map(lambda m, v, dd: jnp.where(m, v / jnp.where(m, dd, 1), v), mask, r, d)

    @custom_root(
        restricted, solve=opts.solve, symmetric=True, check=opts.check,
        residual_tol=_core_tol(opts),
    )  # fmt: skip
    def verified(x, eta, args, kwargs, hp, mask, d, xs):
        return x

    return verified(x, eta, args, kwargs, hp, mask, d, x)


# --------------------------------------------------------------------------- eager cache


def _static_ok(leaf: Any) -> bool:
    try:
        hash(leaf)
    except TypeError:
        return False
    return True


def _is_dynamic(leaf: Any) -> bool:
    # Python floats are traced as weakly typed arrays (as jax.jit does); ints, bools,
    # strings, None and callables stay static (they may select code paths or shapes).
    return _is_array(leaf) or (isinstance(leaf, (float, complex)) and not isinstance(leaf, bool))


@functools.lru_cache(maxsize=64)
def _compiled(fun, prox, treedef, static, opts, prox_name):
    """A jitted solve for one (fun, prox, argument structure, static values, options)."""

    def run(dyn):
        it = iter(dyn)
        leaves = [next(it) if s is _DYNAMIC else s for s in static]
        init, args, kwargs, hp, stepsize = jax.tree.unflatten(treedef, leaves)
        return _solve(fun, prox, init, args, kwargs, hp, stepsize, opts, prox_name)

    return jax.jit(run)


class _Dynamic:
    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<dynamic>"


_DYNAMIC = _Dynamic()


def _dispatch(fun, prox, init, args, kwargs, hp, stepsize, opts, prox_name):
    """Run the solve through a cached ``jax.jit`` (cheap repeated eager calls).

    Under an outer ``jit``/``grad``/``vmap`` the inner ``jit`` is inlined or
    differentiated as usual; values ``fun`` closes over are captured by the trace.
    Unhashable static leaves (rare) fall back to an uncached solve.
    """
    leaves, treedef = jax.tree.flatten((init, args, kwargs, hp, stepsize))
    static = tuple(_DYNAMIC if _is_dynamic(v) else v for v in leaves)
    dyn = [v for v in leaves if _is_dynamic(v)]
    try:
        hash((fun, prox, treedef, static, opts))
    except TypeError:
        return _solve(fun, prox, init, args, kwargs, hp, stepsize, opts, prox_name)
    return _compiled(fun, prox, treedef, static, opts, prox_name)(dyn)


# --------------------------------------------------------------------------- public API


def _options(maxiter, tol, backtrack, increase, max_backtracks, support, solve, check,
             residual_tol, return_info, what):  # fmt: skip
    if not 0 < backtrack < 1:
        raise ValueError(f"backtrack must lie in (0, 1); got {backtrack}")
    if increase < 1:
        raise ValueError(f"increase must be >= 1; got {increase}")
    if int(maxiter) < 1:
        raise ValueError(f"maxiter must be >= 1; got {maxiter}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0; got {tol}")
    _checks.validate_mode(check)
    if support not in (None, True, False):
        raise TypeError(f"support must be None, True or False (static); got {support!r}")
    return _Options(
        int(maxiter), None if tol is None else float(tol), float(backtrack), float(increase),
        int(max_backtracks), support, solve, check,
        None if residual_tol is None else float(residual_tol), bool(return_info), what,
    )  # fmt: skip


def proximal_gradient(
    fun: Callable[..., jax.Array],
    init: PyTree,
    prox: Callable[..., PyTree] | None = None,
    *args: Any,
    hyperparams_prox: Any = None,
    stepsize: float | jax.Array | None = None,
    maxiter: int = 1000,
    tol: float | None = None,
    backtrack: float = 0.5,
    increase: float = 1.25,
    max_backtracks: int = 40,
    support: bool | None = None,
    solve: Solve = "auto",
    check: str = "warn",
    residual_tol: float | None = None,
    return_info: bool = False,
    **kwargs: Any,
) -> PyTree | tuple[PyTree, ProximalGradientInfo]:
    r"""``argmin_x fun(x, *args, **kwargs) + g(x, hyperparams_prox)`` by FISTA, differentiably.

    ``g`` is given by its proximal operator ``prox(y, hyperparams_prox, scaling)``
    (jaxopt's convention; see :mod:`rootdiff.prox`). The result ``x*`` is a fixed point
    of ``T(x) = prox(x − η ∇ₓfun(x, …), λ, η)``; derivatives w.r.t. every floating
    array in ``args``, ``kwargs`` and ``hyperparams_prox`` (and arrays ``fun`` or
    ``prox`` close over) follow from the implicit function theorem on ``T(x) − x = 0``
    (:func:`rootdiff.custom_fixed_point`), in every mode — ``grad``, ``jvp``,
    ``jacfwd``, ``jacrev``, ``hessian`` — with ``vmap`` and ``jit``. ``init`` gets a zero
    derivative; the iterations are never differentiated. The derivative exists where
    the solution's support is stable (no coordinate exactly at a prox threshold); at a
    support change it is a one-sided derivative (see the guide).

    Forward solver: FISTA with adaptive restart; with ``stepsize=None`` the step is
    found by backtracking (factor ``backtrack``), starting each iteration from
    ``increase`` × the previous step. Stopping test (scale-aware): the gradient mapping
    ``G(y) = (y − T(y))/η`` satisfies ``max|G(y)| ≤ tol · max(|G(x₀)|, |∇f(x₀)|)`` (plus a rounding
    floor) at a point ``y`` that the returned ``x`` equals. A line search that finds no
    step stops the solve; not converging is reported by ``check``.

    Args:
      fun: smooth objective ``fun(x, *args, **kwargs) -> scalar``; ``x`` is a pytree
        like ``init``.
      init: initial point (any pytree of floating arrays).
      prox: ``prox(y, hyperparams, scaling)`` of ``g``; ``None`` for ``g = 0``.
      *args, **kwargs: arguments of ``fun`` (pytrees; floating arrays and Python floats
        are differentiated; ints, strings, ``None`` and callables pass through). A
        keyword argument named like an option of this function goes to the option.
      hyperparams_prox: second argument of ``prox`` (pytree, differentiated).
      stepsize: a fixed step ``η`` (should be ``≤ 1/L``, ``L`` the Lipschitz constant
        of ``∇fun``); ``None`` (default) for backtracking.
      maxiter: maximum number of iterations.
      tol: relative tolerance on the gradient mapping; default ``sqrt(eps)/4`` of
        ``init``'s dtype (≈3.7e-9 in float64, ≈8.6e-5 in float32).
      backtrack, increase, max_backtracks: line-search factors (``0 < backtrack < 1``,
        ``increase ≥ 1``) and the cap on step halvings per iteration.
      support: pose the derivative's linear system on the solution's support only (a
        symmetric positive definite system of the support's size; off the support the
        derivative is read off directly). Valid for coordinate-separable proxes;
        ``None`` (default) turns it on for the separable operators of
        :mod:`rootdiff.prox` (l1, non-negative l1, elastic net, ridge, box, ...).
      solve: linear solver of the implicit derivative (see :func:`rootdiff.custom_root`).
      check, residual_tol: the convergence checks of :func:`rootdiff.custom_root`
        (forward residual ``max|T(x) − x|`` and backward solve), plus this solver's own
        stopping test; ``"warn"`` (default), ``"raise"``, ``"nan"`` or ``"off"``.
      return_info: also return a :class:`ProximalGradientInfo`.

    Returns:
      ``x*`` (pytree like ``init``), or ``(x*, info)`` with ``return_info=True``.

    Example:
      The Lasso ``min_w ½‖Aw − b‖² + λ‖w‖₁`` and the derivative of its solution in λ:

      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> from rootdiff.prox import prox_lasso
      >>> A = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> b = jnp.array([2.0, 0.2, 2.0])
      >>> fun = lambda w, A, b: 0.5 * jnp.sum((A @ w - b) ** 2)
      >>> lasso = lambda lam: rootdiff.proximal_gradient(
      ...     fun, jnp.zeros(2), prox_lasso, A, b, hyperparams_prox=lam)
      >>> [round(float(v), 4) for v in lasso(0.5)]
      [1.75, 0.0]
      >>> [round(float(v), 4) for v in jax.jacobian(lasso)(0.5)]
      [-0.5, 0.0]
    """
    opts = _options(maxiter, tol, backtrack, increase, max_backtracks, support, solve, check,
                    residual_tol, return_info, "proximal_gradient")  # fmt: skip
    prox = _identity_prox if prox is None else prox
    return _dispatch(fun, prox, init, args, kwargs, hyperparams_prox, stepsize, opts, "prox")


def _identity_prox(x, hyperparams=None, scaling=1.0):
    del hyperparams, scaling
    return x


_identity_prox.separable = True  # type: ignore[attr-defined]
