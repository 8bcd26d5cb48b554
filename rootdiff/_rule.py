r"""The implicit-function rule behind every decorator, in one place.

:func:`_solve_root` runs the user's solver and attaches one ``jax.custom_jvp`` rule
to its output: the tangent solves ``∂ₓF · ẋ = −∂_θF · θ̇`` with
``jax.lax.custom_linear_solve`` (reverse mode by transposition), after the forward
check (one Newton step ``δ = (∂ₓF)⁻¹F(x)``, see :func:`default_step_tol`). Every
traced value the solver, ``F`` or the linear solve closes over is hoisted into an
explicit input (:func:`rootdiff._trees._convert`).
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

from rootdiff import _checks, _hints
from rootdiff import linear_solve as _ls
from rootdiff._solves import (
    _estimate_solver,
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
    _max_abs_each,
    _needs_real_view,
    _real_dtype,
    _same_layout,
    _sol_dtype,
    _split,
    _to_real,
    _zero_tangent,
)


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

    def forward_check(sol, dyn_leaves, fc, lf, hint=None, differentiated=False):
        Fx = F_c(sol, dyn_leaves, *fc)
        values, tols, labels = [], [], []
        if step_tol is not None:
            if builtin and hint is not None and hint.precond is not None:
                # The Newton step solves the tangent system: the hint's preconditioner
                # is for it (a stage without it follows if it misleads; its init is
                # for another right-hand side).
                _, mv = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
                run = functools.partial(_run_solve, check=check)
                delta, _ = _hints.solve(step_solve, mv, Fx, hint.precond, None, run)
            elif builtin and (est := _estimate_solver(step_solve, Fx, differentiated)) is not None:
                _, mv = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
                delta, _ = est(mv, Fx)
            elif builtin:
                delta, _ = fwd_raw(sol, dyn_leaves, fc, Fx, solve=step_solve)
            else:
                delta, _ = fwd_c(sol, dyn_leaves, fc, Fx, *lf)
            # One reduction for the three maxima (one kernel to compile, not three).
            r, delta_max, sol_max = (m.astype(dtype) for m in _max_abs_each(Fx, delta, sol))
            step = jnp.where(r == 0, 0.0, delta_max)  # an exact root needs no step
            values.append(step / jnp.maximum(sol_max, floor))
            tols.append(step_tol)
            labels.append("relative Newton step ‖(∂ₓF)⁻¹F(x)‖∞/‖x‖∞")
        else:
            r = _max_abs(Fx).astype(dtype)
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

    def primal(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd, differentiated=False):
        # ``(output, solution before the check)``: the derivative linearises F at the
        # latter, the very point where the check evaluated F, so that XLA computes F
        # there once (the checked solution is the same value, tied to the report).
        out = solver_c(init, dyn_leaves, *s_consts)
        raw = sol = view(out[0] if n_out > 1 else out)
        if check != "off":
            hint = _real_hint(out[-1]) if cfg.hints else None
            sol = forward_check(sol, dyn_leaves, f_consts, l_fwd, hint, differentiated)
        if n_out == 1:
            return sol, raw
        return (sol, tuple(jax.tree.map(_encode_aux, o) for o in out[1:])), raw

    @jax.custom_jvp
    def root(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd):
        return primal(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd)

    # The primal of a differentiated call, with the same rule (higher derivatives).
    @jax.custom_jvp
    def root_d(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd):
        return primal(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd, differentiated=True)

    def root_jvp_rule(primals, tangents):
        init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd = primals
        _, dyn_dot, _, f_consts_dot, _, _ = tangents
        # The check's Newton step may then run the derivative's own Krylov loop (see
        # _estimate_solver): XLA compiles the identical kernels of the two loops once.
        out, raw = root_d(*primals)
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
            return F_c(raw, vals[:n_dyn], *vals[n_dyn:])

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
                fwd_mv = lambda _mv, b: fwd(raw, dyn_leaves, f_consts, b)  # noqa: E731
                bwd_mv = lambda _mv, b: bwd(raw, dyn_leaves, f_consts, b)  # noqa: E731
            sol_dot = _implicit_tangent(
                F_x, F_theta, raw, [theta_all[i] for i in live], [dot_all[i] for i in live],
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
            return (out, raw), ((sol_dot, jax.tree.map(_zero_tangent, out[1])), sol_dot)
        return (out, raw), (sol_dot, sol_dot)

    def _view_hint(encoded):
        # The hint, decoded, on the real view of complex params.
        return _real_hint(jax.tree.map(_decode_aux, encoded, out_shape[-1]))

    def _real_hint(hint):
        if not real:
            return hint
        lift = lambda f: None if f is None else (lambda v: view(f(unview(v))))  # noqa: E731
        return _hints.SolveHint(
            lift(hint.precond), lift(hint.transpose_precond),
            None if hint.init is None else view(hint.init),
            None if hint.transpose_init is None else view(hint.transpose_init),
        )  # fmt: skip

    root.defjvp(root_jvp_rule, symbolic_zeros=True)
    root_d.defjvp(root_jvp_rule, symbolic_zeros=True)
    out = root(init_params, dyn, s_consts, f_consts, l_fwd, l_bwd)[0]
    if n_out == 1:
        return unview(out)
    if has_aux:
        aux = jax.tree.map(_decode_aux, out[1][0], out_shape[1])
        return unview(out[0]), jax.lax.stop_gradient(aux)
    return unview(out[0])
