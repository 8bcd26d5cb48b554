r"""Implicit differentiation of roots and fixed points: the one rule rootdiff has.

If ``F(x, θ) = 0`` defines ``x*(θ)`` and ``∂ₓF`` is invertible at the solution,

.. math::  ∂x^*/∂θ = -(∂ₓF)^{-1} ∂_θF.

Forward mode solves ``∂ₓF · ẋ = −∂_θF · θ̇``; reverse mode solves
``(∂ₓF)ᵀ u = x̄`` and returns ``θ̄ = −(∂_θF)ᵀ u``. Both use only JVPs/VJPs of ``F``.

The decorators below attach *one* ``jax.custom_jvp`` rule to the user's solver
(it lives in :mod:`rootdiff._rule`). Its tangent is computed by
``jax.lax.custom_linear_solve`` with a transpose solve, so JAX derives reverse mode
by transposition, and ``jacfwd``, ``jacrev``, ``hessian``, ``vmap`` and ``jit`` all
compose. Every traced value that the solver, the optimality function or the linear
``solve`` closes over (a factorisation computed inside ``jit``, a value being
differentiated, a ``scan`` carry) is hoisted into an explicit input of the
``custom_jvp``, so the rule never captures a tracer of a finished trace. Only the
optimality function's inputs get derivatives; the solver and the linear solve are
black boxes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rootdiff import _checks, _eager, _hints
from rootdiff._root_products import RootInfo, root_jvp, root_vjp
from rootdiff._rule import _config, _solve_root
from rootdiff._solves import Solve
from rootdiff._trees import PyTree

__all__ = [
    "custom_root",
    "custom_fixed_point",
    "root_jvp",
    "root_vjp",
    "argmin",
    "RootInfo",
    "SolveHint",
]

SolveHint = _hints.SolveHint


# --------------------------------------------------------------------------- decorators


def custom_root(
    optimality_fun: Callable[..., PyTree],
    *,
    solve: Solve = "auto",
    transpose_solve: Solve | None = None,
    has_aux: bool = False,
    symmetric: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
    step_tol: float | None = None,
    hints: bool = False,
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
    ``vmap``, ``jit``, ``scan`` and ``remat`` work, in any nesting (``grad`` of a
    ``jit``-ted function included). Complex ``params`` are solved on their real
    view (real and imaginary parts), so ``optimality_fun`` need not be holomorphic.

    Args:
      optimality_fun: ``F(params, *args, **kwargs)`` returning a pytree with the
        structure, shapes and dtypes of ``params``.
      solve: linear solver for ``∂ₓF``: a name in :mod:`rootdiff.linear_solve`
        (``"auto"``, ``"cg"``, ``"gmres"``, ``"bicgstab"``, ``"normal_cg"``,
        ``"lu"``, ``"cholesky"``, ``"lstsq"``) or a callable
        ``solve(matvec, b) -> x`` (e.g. ``functools.partial(rootdiff.linear_solve.cg,
        tol=1e-10)``). A callable may close over arrays, traced or not (e.g. a
        factorisation computed by the solver). **Contract:** it must solve the
        system of the ``matvec`` it is given, because the same callable solves
        the transposed system in reverse mode — unless ``symmetric=True`` or a
        ``transpose_solve`` is given. A callable's answer is verified (with
        ``check`` on) by one extra product, ``‖b − A x‖ ≤ sqrt(eps) ‖b‖``, which
        flags a ``solve`` that ignores its operator.
      transpose_solve: callable ``transpose_solve(vecmat, b) -> u`` solving the
        transposed system ``(∂ₓF)ᵀ u = b`` (as in ``jax.lax.custom_linear_solve``);
        needed for a ``solve`` that does not use its ``matvec`` (a pre-factorised
        solve) when ``∂ₓF`` is not symmetric.
      has_aux: the solver returns ``(params, aux)``; ``aux`` is passed through with
        zero derivative.
      symmetric: declare ``∂ₓF`` symmetric (true for ``F = ∇f``); ``"auto"`` then
        picks CG for large systems and the transpose solve reuses ``solve``.
      check: what to do when the forward solution fails its test (below) or the
        linear solve of a derivative does not converge: ``"warn"`` (default),
        ``"raise"``, ``"nan"`` (NaN value *and* NaN derivatives) or ``"off"``.
        Works under ``jit`` and ``vmap`` (one report per call).
      residual_tol: if given, the forward test is ``max |F(params)| ≤
        residual_tol`` (absolute; ``inf`` flags only NaN), and the Newton-step test
        below runs only if ``step_tol`` is given too.
      step_tol: the forward test (default when neither tolerance is given):
        ``‖δ‖∞ ≤ step_tol · max(‖params‖∞, sqrt(eps))`` with ``δ = (∂ₓF)⁻¹F(params)``
        the Newton step, an estimate of the error of ``params`` (one extra linear
        solve with ``solve``, only when ``check`` is on). Default 1e-5 in float64,
        1e-3 in float32 (:func:`default_step_tol`): about the relative accuracy
        the solution, and usually the derivative, then has.
      hints: the solver also returns a :class:`SolveHint` — ``(params, hint)``, or
        ``(params, aux, hint)`` with ``has_aux`` — whose preconditioner and
        initial guesses the derivative's Krylov solves use (the preconditioner
        also the forward check's Newton step). The decorated
        function returns what it would without hints. A hint changes only the
        number of iterations, not the derivative (beyond the solve's tolerance).

    Called outside ``jax.jit``, the decorated function is compiled once per
    input shapes (and non-array arguments) and reused, derivatives included, as
    a jitted function would be; so the solver must be pure, as under ``jit``.

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
    cfg = _config(solve, transpose_solve, has_aux, symmetric, check, residual_tol, step_tol, hints)

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        def call(site, init_params, *args, **kwargs):
            return _solve_root(solver, optimality_fun, init_params, args, kwargs, cfg, site)

        cached = _eager.cached_call(call)  # repeated calls outside jit: traced once

        @functools.wraps(solver)
        def wrapped(init_params: PyTree, *args: Any, **kwargs: Any) -> Any:
            site = _checks.user_site() if cfg.check in ("warn", "raise") else None
            return cached(site, init_params, *args, **kwargs)

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable[..., PyTree],
    *,
    solve: Solve = "auto",
    transpose_solve: Solve | None = None,
    has_aux: bool = False,
    symmetric: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
    step_tol: float | None = None,
    hints: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a solver returning ``params = fixed_point_fun(params, *args, **kwargs)``.

    Equivalent to :func:`custom_root` with ``F(x, θ) = T(x, θ) − x``; all options
    are as there (``hints``: a :class:`SolveHint` for ``∂ₓF = ∂ₓT − I``).

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
        optimality_fun, solve=solve, transpose_solve=transpose_solve, has_aux=has_aux,
        symmetric=symmetric, check=check, residual_tol=residual_tol, step_tol=step_tol,
        hints=hints,
    )  # fmt: skip


def argmin(
    objective: Callable[..., jax.Array],
    *,
    solve: Solve = "auto",
    has_aux: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
    step_tol: float | None = None,
    hints: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: differentiable ``argmin_x objective(x, *args, **kwargs)``.

    Wraps a minimiser ``minimise(init, *args, **kwargs)`` with :func:`custom_root`
    on the optimality condition ``∇ₓ objective(x, θ) = 0``. The Hessian is
    symmetric, so ``"auto"`` uses a dense solve for small problems and CG
    (Hessian-vector products, no Hessian materialised) for large ones, and no
    ``transpose_solve`` is needed. ``check``, ``residual_tol``, ``step_tol`` and
    ``hints`` are as in :func:`custom_root` (the default forward test bounds the
    Newton step ``H⁻¹∇f`` relative to ``x``, so it sees a weakly curved objective
    whose gradient is small but whose minimiser is far).

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
        residual_tol=residual_tol, step_tol=step_tol, hints=hints,
    )  # fmt: skip
