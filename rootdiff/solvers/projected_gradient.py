r"""Accelerated projected gradient, differentiable through its fixed point.

Solves

.. math::  x^\star(θ, λ) = \operatorname{argmin}_{x ∈ C(λ)} f(x, θ)

for a smooth ``f`` and a convex set ``C(λ)`` given by its Euclidean projection
``P(y, λ)``. A projection is the proximal operator of the set's indicator, so this is
:func:`rootdiff.proximal_gradient` with ``prox = P``: one FISTA implementation
(backtracking, adaptive restart, scale-aware stopping test) and one derivative rule,
:func:`rootdiff.custom_fixed_point` on the projected-gradient map

.. math::  T(x, θ, λ) = P\bigl(x − η ∇ₓf(x, θ), λ\bigr),\qquad x^\star = T(x^\star, θ, λ).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from rootdiff.implicit import Solve
from rootdiff.prox import call_projection
from rootdiff.solvers.proximal_gradient import ProximalGradientInfo, _dispatch, _options

__all__ = ["projected_gradient", "ProjectedGradientInfo"]

PyTree = Any

#: The status of :func:`projected_gradient` (the same fields as proximal_gradient's).
ProjectedGradientInfo = ProximalGradientInfo


@functools.lru_cache(maxsize=64)
def _as_prox(projection: Callable[..., PyTree]) -> Callable[..., PyTree]:
    """``projection`` as a prox (cached, so that eager calls reuse compiled solves)."""

    def prox(y, hyperparams, scaling):
        del scaling  # the prox of an indicator does not depend on the step
        return call_projection(projection, y, hyperparams)

    prox.is_projection = True  # type: ignore[attr-defined]
    return prox


def projected_gradient(
    fun: Callable[..., jax.Array],
    init: PyTree,
    projection: Callable[..., PyTree],
    *args: Any,
    hyperparams_proj: Any = None,
    stepsize: float | jax.Array | None = None,
    maxiter: int = 1000,
    tol: float | None = None,
    backtrack: float = 0.5,
    increase: float = 1.25,
    max_backtracks: int = 40,
    solve: Solve = "auto",
    check: str = "warn",
    residual_tol: float | None = None,
    return_info: bool = False,
    **kwargs: Any,
) -> PyTree | tuple[PyTree, ProximalGradientInfo]:
    r"""``argmin_{x ∈ C} fun(x, *args)`` by accelerated projected gradient, differentiably.

    The result ``x*`` is a fixed point of ``T(x) = P(x − η ∇ₓfun(x, *args), λ)`` with
    ``P = projection`` and ``λ = hyperparams_proj``; derivatives w.r.t. every floating
    array in ``args`` and ``hyperparams_proj`` (and arrays ``fun`` or ``projection``
    close over) follow from the implicit function theorem on ``T(x) − x = 0``
    (:func:`rootdiff.custom_fixed_point`), in every mode: ``grad``, ``jvp``, ``jacfwd``,
    ``jacrev``, ``hessian``; ``vmap`` and ``jit`` compose. ``init`` gets a zero
    derivative; the iterations themselves are never differentiated.

    Forward solver: :func:`rootdiff.proximal_gradient`'s FISTA with adaptive restart
    and, with ``stepsize=None``, backtracking (factor ``backtrack``, each iteration
    starting from ``increase`` × the previous step). Stopping test (scale-aware): the
    gradient mapping ``G(y) = (y − T(y))/η`` satisfies ``max|G(y)| ≤ tol · max(|G(x₀)|, |∇f(x₀)|)``
    (plus a rounding floor) at a feasible ``y``; a tiny step cannot fake convergence,
    and a line search that finds no step (non-smooth ``fun``) stops the solve and is
    reported (``check``; ``info.step_collapsed``).

    Args:
      fun: smooth objective ``fun(x, *args, **kwargs) -> scalar``; ``x`` is a pytree
        like ``init``.
      init: initial point (any pytree of floating arrays); projected onto ``C`` first.
      projection: ``projection(y, hyperparams_proj)`` — the Euclidean projection onto
        ``C`` (or ``projection(y)`` when ``hyperparams_proj is None``), e.g. from
        :mod:`rootdiff.projections`. A projection needing two positional arguments
        is called ``projection(y, None)`` when ``hyperparams_proj`` is ``None``, and
        one needing more (optax's ``projection_box(y, lower, upper)``) is called
        ``projection(y, *hyperparams_proj)`` with a tuple (jaxopt's
        ``hyperparams_proj=(lower, upper)``). It must return a point shaped like ``y``.
      *args, **kwargs: arguments of ``fun`` (pytrees; floating arrays and Python
        floats are differentiated; ints, strings, ``None`` and callables pass through).
      hyperparams_proj: second argument of ``projection`` (pytree, differentiated).
      stepsize: a fixed step ``η`` (should be ``≤ 1/L``, ``L`` the Lipschitz constant of
        ``∇fun``); ``None`` (default) for backtracking.
      maxiter: maximum number of iterations (gradient evaluations).
      tol: relative tolerance on the gradient mapping; default ``sqrt(eps)/4`` of
        ``init``'s dtype (≈3.7e-9 in float64, ≈8.6e-5 in float32).
      backtrack, increase, max_backtracks: line-search factors (``0 < backtrack < 1``,
        ``increase ≥ 1``) and the cap on halvings per iteration.
      solve: linear solver of the implicit derivative (see :func:`rootdiff.custom_root`);
        ``∂ₓT − I`` is not symmetric, so ``"auto"`` picks LU (small) or GMRES.
      check, residual_tol: the forward/backward convergence checks of
        :func:`rootdiff.custom_root`, plus the solver's own stopping test.
      return_info: also return a :class:`ProjectedGradientInfo` (iterations, residual,
        stepsize, converged, optimality, threshold, step_collapsed).

    Returns:
      ``x*`` (pytree like ``init``), or ``(x*, info)`` with ``return_info=True``.

    Example:
      Non-negative least squares, and the derivative of the solution w.r.t. ``b``:

      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> from optax.projections import projection_non_negative
      >>> A = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> b = jnp.array([1.0, -2.0, 1.0])
      >>> fun = lambda x, b: 0.5 * jnp.sum((A @ x - b) ** 2)
      >>> nnls = lambda b: rootdiff.projected_gradient(
      ...     fun, jnp.zeros(2), projection_non_negative, b)
      >>> [round(float(v), 3) for v in nnls(b)]
      [1.0, 0.0]
      >>> [[round(float(v), 3) + 0.0 for v in row] for row in jax.jacobian(nnls)(b)]
      [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]
    """
    opts = _options(maxiter, tol, backtrack, increase, max_backtracks, False, solve, check,
                    residual_tol, return_info, "projected_gradient")  # fmt: skip
    try:
        prox = _as_prox(projection)
    except TypeError:  # unhashable projection object
        prox = _as_prox.__wrapped__(projection)
    return _dispatch(
        fun, prox, init, args, kwargs, hyperparams_proj, stepsize, opts,
        "projection(y, hyperparams_proj)",
    )  # fmt: skip
