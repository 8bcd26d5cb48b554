r"""Implicit differentiation of roots and fixed points: the one rule rootdiff has.

If ``F(x, θ) = 0`` defines ``x*(θ)`` and ``∂ₓF`` is invertible at the solution,

.. math::  ∂x^*/∂θ = -(∂ₓF)^{-1} ∂_θF.

Forward mode solves ``∂ₓF · ẋ = −∂_θF · θ̇``; reverse mode solves
``(∂ₓF)ᵀ u = x̄`` and returns ``θ̄ = −(∂_θF)ᵀ u``. Both use only JVPs/VJPs of ``F``.

The decorators below attach *one* ``jax.custom_jvp`` rule to the user's solver.
Its tangent is computed by ``jax.lax.custom_linear_solve`` with a transpose solve,
so JAX derives reverse mode by transposition, and ``jacfwd``, ``jacrev``,
``hessian``, ``vmap`` and ``jit`` all compose. Every traced value that the solver,
the optimality function or the linear ``solve`` closes over (a factorisation
computed inside ``jit``, a value being differentiated, a ``scan`` carry) is hoisted
into an explicit input of the ``custom_jvp`` (:func:`_convert`), so the rule never
captures a tracer of a finished trace. Only the optimality function's inputs get
derivatives; the solver and the linear solve are black boxes.
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

from rootdiff import _checks, _eager, _hints
from rootdiff import linear_solve as _ls
from rootdiff._root_products import RootInfo, root_jvp, root_vjp
from rootdiff._solves import (
    Solve,
    _implicit_tangent,
    _is_builtin,
    _resolve_solver,
    _run_solve,
    _unpartial,
)
from rootdiff._trees import (
    PyTree,
    _add_note,
    _convert,
    _decode_aux,
    _describe,
    _encode_aux,
    _from_real,
    _is_float,
    _max_abs,
    _needs_real_view,
    _real_dtype,
    _same_layout,
    _sol_dtype,
    _split,
    _to_real,
    _zero_tangent,
)

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


def default_residual_tol(sol: PyTree) -> float:
    """Absolute residual tolerance ``sqrt(eps)`` of the solution's dtype (legacy check)."""
    dt = _sol_dtype(sol)
    return float(np.sqrt(jnp.finfo(dt).eps)) if jnp.issubdtype(dt, jnp.inexact) else 0.0


def default_step_tol(sol: PyTree) -> float:
    """Default forward-check tolerance on the relative Newton step ``‖δ‖∞/‖x‖∞``.

    1e-5 in float64, 1e-3 in float32, 5e-2 in 16-bit floats: about a hundred times
    the rounding floor ``eps · cond(∂ₓF)`` of a well-conditioned problem solved to
    machine precision, and tight enough that a derivative is rarely off by more
    than a few times the tolerance (the relative Newton step estimates the
    relative error of ``x``; the derivative inherits it, amplified by how strongly
    the derivative depends on the badly-determined directions of ``x``).
    """
    dt = _real_dtype(_sol_dtype(sol))
    if not jnp.issubdtype(dt, jnp.inexact):
        return 0.0
    eps = float(jnp.finfo(dt).eps)
    return 1e-5 if eps < 1e-10 else 1e-3 if eps < 1e-6 else 5e-2


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


class _Config(NamedTuple):
    solve: Callable[..., Any]
    transpose_solve: Callable[..., Any] | None
    has_aux: bool
    hints: bool
    symmetric: bool
    check: str
    residual_tol: float | None
    step_tol: float | None


def _config(solve, transpose_solve, has_aux, symmetric, check, residual_tol, step_tol, hints):
    _checks.validate_mode(check)
    _ls.get_solver(solve)  # fail early on unknown names
    tsolve = None if transpose_solve is None else _resolve_solver(transpose_solve, symmetric)
    for name, tol in (("residual_tol", residual_tol), ("step_tol", step_tol)):
        if tol is not None and not float(tol) >= 0:
            raise ValueError(f"{name} must be a number >= 0 (or None); got {tol!r}")
    _hints.check_solves(hints, [_ls.get_solver(solve), tsolve])
    return _Config(
        _resolve_solver(solve, symmetric), tsolve, has_aux, bool(hints), symmetric, check,
        None if residual_tol is None else float(residual_tol),
        None if step_tol is None else float(step_tol),
    )  # fmt: skip


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
        initial guesses the derivative's Krylov solves use. The decorated
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


# --------------------------------------------------------------------------- the rule


class _LayoutError(ValueError):
    pass


def _solve_root(solver, optimality_fun, init_params, args, kwargs, cfg: _Config, site):
    fname = getattr(optimality_fun, "__name__", "optimality_fun")
    _check_signature(optimality_fun, init_params, args, kwargs, fname)
    dyn, rebuild = _split(args, kwargs)
    has_aux, check = cfg.has_aux, cfg.check

    def solver_flat(init, dyn_leaves):
        a, k = rebuild(dyn_leaves)
        return solver(init, *a, **k)

    # Hoist closed-over tracers into explicit inputs (tangents of the solver's are dropped).
    solver_c, s_consts, out_shape = _convert(solver_flat, init_params, dyn)
    n_out = 1 + has_aux + cfg.hints  # (params[, aux][, hint])
    if n_out > 1:
        parts = ["params"] + ["aux"] * has_aux + ["hint"] * cfg.hints
        options = " and ".join(o for o, on in (("has_aux", has_aux), ("hints", cfg.hints)) if on)
        if not (isinstance(out_shape, tuple) and len(out_shape) == n_out):
            raise TypeError(
                f"with {options}=True the solver must return ({', '.join(parts)}); it "
                f"returned {_describe(out_shape)}"
            )
        if cfg.hints and not isinstance(out_shape[-1], _hints.SolveHint):
            raise TypeError(
                f"with hints=True the solver's last output must be a rootdiff.SolveHint; "
                f"got {type(out_shape[-1]).__name__}"
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

    # Complex params: solve on the real view unless the user's own solve expects complex.
    user_solves = [s for s in (cfg.solve, cfg.transpose_solve) if s is not None]
    real = _needs_real_view(sol_shape) and all(_is_builtin(s) for s in user_solves)
    view = (lambda t: _to_real(t)) if real else (lambda t: t)
    unview = (lambda t: _from_real(t, sol_shape)) if real else (lambda t: t)
    # Shapes, not zeros, where possible: they keep the solution's type under
    # shard_map (varying axes).
    example = (
        view(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sol_shape)) if real else sol_shape
    )

    def F_view(x, dyn_leaves):
        a, k = rebuild(dyn_leaves)
        out = optimality_fun(unview(x), *a, **k)
        if not _same_layout(out, sol_shape, dtypes=True):
            raise _LayoutError(
                f"{fname} must return a pytree with the structure, shapes and dtypes "
                f"of params; params is {_describe(sol_shape)} but {fname} returned "
                f"{_describe(out)}"
            )
        return view(out)

    try:
        F_c, f_consts, _ = _convert(F_view, example, dyn)
    except _LayoutError:
        raise
    except Exception as e:
        _add_note(
            e, f"rootdiff: raised by {fname} evaluated at the solver's output params "
            f"{_describe(sol_shape)}"
        )  # fmt: skip
        raise

    # The linear solves, as functions of explicit inputs (their closures hoisted).
    def fwd_raw(sol, dyn_leaves, fc, b, solve=cfg.solve):
        _, mv = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
        return _run_solve(solve, mv, b, check=check)

    def bwd_raw(sol, dyn_leaves, fc, b):
        if cfg.symmetric:
            _, vecmat = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
        else:
            _, vjp_fun = jax.vjp(lambda x: F_c(x, dyn_leaves, *fc), sol)
            vecmat = lambda u: vjp_fun(u)[0]  # noqa: E731
        return _run_solve(cfg.transpose_solve or cfg.solve, vecmat, b, check=check)

    lin_args = (example, dyn, f_consts, example)
    builtin = all(_is_builtin(s) for s in user_solves)
    if builtin:
        fwd_c, l_fwd = (lambda *a: fwd_raw(*a[:4])), []
    else:
        fwd_c, l_fwd, _ = _convert(fwd_raw, *lin_args)
    if cfg.symmetric and cfg.transpose_solve is None:
        bwd_c, l_bwd = None, []
    elif all(_is_builtin(s) for s in user_solves):
        bwd_c, l_bwd = (lambda *a: bwd_raw(*a[:4])), []
    else:
        bwd_c, l_bwd, _ = _convert(bwd_raw, *lin_args)

    residual_tol, step_tol = cfg.residual_tol, cfg.step_tol
    if residual_tol is None and step_tol is None:
        step_tol = default_step_tol(example)
    dtype = _real_dtype(_sol_dtype(example))
    floor = float(np.sqrt(jnp.finfo(dtype).eps))
    # The Newton step is an error estimate: a built-in solve to relative residual
    # 0.1·step_tol resolves it to 10 % wherever cond(∂ₓF) ≤ 1/step_tol, in a fraction
    # of the iterations of the derivative's solve (tolerance eps^0.75).
    step_solve = cfg.solve
    if builtin and step_tol is not None and "tol" not in _unpartial(cfg.solve)[1]:
        step_solve = functools.partial(cfg.solve, tol=max(0.1 * step_tol, _ls.default_tol(dtype)))

    def forward_check(sol, dyn_leaves, fc, lf):
        Fx = F_c(sol, dyn_leaves, *fc)
        r = _max_abs(Fx).astype(dtype)
        values, tols, labels = [], [], []
        if step_tol is not None:
            if builtin:
                delta, _ = fwd_raw(sol, dyn_leaves, fc, Fx, solve=step_solve)
            else:
                delta, _ = fwd_c(sol, dyn_leaves, fc, Fx, *lf)
            step = jnp.where(r == 0, 0.0, _max_abs(delta))  # an exact root needs no step
            values.append(step / jnp.maximum(_max_abs(sol), floor))
            tols.append(step_tol)
            labels.append("relative Newton step ‖(∂ₓF)⁻¹F(x)‖∞/‖x‖∞")
        if residual_tol is not None:
            values.append(r)
            tols.append(residual_tol)
            labels.append("residual max|F(x)|")
        return _checks.guard(
            sol, jnp.stack([jnp.asarray(v, dtype) for v in values]),
            jnp.asarray(tols, dtype), -1, mode=check, label=tuple(labels), site=site,
            what=f"the forward solve ({fname}: estimated error of the solution)",
        )  # fmt: skip

    def reported(x, info, system):
        rel, tol, its, ok = info
        return _checks.guard(
            x, rel, tol, its, mode=check, ok=ok, site=site,
            label="relative residual ‖b − A u‖/‖b‖",
            what=f"the linear solve of the implicit derivative ({fname}, {system})",
        )  # fmt: skip

    def guarded(raw, consts, system):
        def solve(sol, dyn_leaves, fc, b):
            return reported(*raw(sol, dyn_leaves, fc, b, *consts), system)

        return solve

    def guarded_mv(fn, system, M=None, init=None):
        # A built-in solver uses the operator that custom_linear_solve hands it;
        # M and init are the solver's hints, if any.
        def solve(mv, b):
            run = functools.partial(_run_solve, check=check)
            return reported(*_hints.solve(fn, mv, b, M, init, run), system)

        return solve

    @jax.custom_jvp
    def root(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd):
        out = solver_c(init, dyn_leaves, *s_consts)
        sol = view(out[0] if n_out > 1 else out)
        if check != "off":
            sol = forward_check(sol, dyn_leaves, f_consts, l_fwd)
        if n_out == 1:
            return sol
        return sol, tuple(jax.tree.map(_encode_aux, o) for o in out[1:])

    def root_jvp_rule(primals, tangents):
        init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd = primals
        _, dyn_dot, _, f_consts_dot, _, _ = tangents
        out = root(*primals)
        sol = out[0] if n_out > 1 else out

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
            fwd = guarded(
                fwd_c, l_fwd, "system ∂ₓF u = b" if bwd_c is None else "tangent system ∂ₓF u = b"
            )
            bwd = fwd if bwd_c is None else guarded(bwd_c, l_bwd, "adjoint system (∂ₓF)ᵀ u = b")
            if builtin:
                hint = _view_hint(out[1][-1]) if cfg.hints else None
                M, init = _hints.for_system(hint, False, cfg.symmetric, sol)
                fwd_mv = guarded_mv(
                    cfg.solve,
                    "system ∂ₓF u = b" if bwd_c is None else "tangent system ∂ₓF u = b",
                    M, init,
                )  # fmt: skip
                M, init = _hints.for_system(hint, True, cfg.symmetric, sol)
                bwd_mv = (
                    fwd_mv if bwd_c is None and hint is None
                    else guarded_mv(
                        cfg.transpose_solve or cfg.solve,
                        "system ∂ₓF u = b" if bwd_c is None else "adjoint system (∂ₓF)ᵀ u = b",
                        M, init,
                    )
                )  # fmt: skip
            else:
                fwd_mv = lambda _mv, b: fwd(sol, dyn_leaves, f_consts, b)  # noqa: E731
                bwd_mv = lambda _mv, b: bwd(sol, dyn_leaves, f_consts, b)  # noqa: E731
            sol_dot = _implicit_tangent(
                F_x, F_theta, sol, [theta_all[i] for i in live], [dot_all[i] for i in live],
                fwd_mv, bwd_mv, cfg.symmetric,
            )  # fmt: skip
        else:
            sol_dot = jax.tree.map(jnp.zeros_like, sol)
        # A non-finite solution (check="nan", a failed solver) has NaN derivatives:
        # a primal-only factor keeps the tangent linear, so reverse mode sees it too.
        sol_dot = jax.tree.map(
            lambda t, s: t * jnp.where(jnp.isfinite(s), 1, jnp.nan).astype(t.dtype), sol_dot, sol
        )
        if n_out > 1:
            return out, (sol_dot, jax.tree.map(_zero_tangent, out[1]))
        return out, sol_dot

    def _view_hint(encoded):
        # The hint, decoded, on the real view of complex params.
        hint = jax.tree.map(_decode_aux, encoded, out_shape[-1])
        if not real:
            return hint
        lift = lambda f: None if f is None else (lambda v: view(f(unview(v))))  # noqa: E731
        return _hints.SolveHint(
            lift(hint.precond), lift(hint.transpose_precond),
            None if hint.init is None else view(hint.init),
            None if hint.transpose_init is None else view(hint.transpose_init),
        )  # fmt: skip

    root.defjvp(root_jvp_rule, symbolic_zeros=True)
    out = root(init_params, dyn, s_consts, f_consts, l_fwd, l_bwd)
    if n_out == 1:
        return unview(out)
    if has_aux:
        aux = jax.tree.map(_decode_aux, out[1][0], out_shape[1])
        return unview(out[0]), jax.lax.stop_gradient(aux)
    return unview(out[0])
