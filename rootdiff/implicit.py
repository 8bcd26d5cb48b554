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
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun
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


def _is_py_float(x: Any) -> bool:
    """A Python ``float``/``complex`` (JAX treats them as weakly typed arrays)."""
    return isinstance(x, (float, complex)) and not isinstance(x, bool)


def _describe(tree: Any) -> str:
    """Human-readable ``structure: shape dtype`` summary of a pytree."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = ", ".join(
        f"{jnp.dtype(jnp.result_type(leaf)).name}{list(np.shape(leaf))}" for leaf in leaves
    )
    return f"{treedef} with leaves [{shapes}]"


def _same_layout(a: Any, b: Any, *, dtypes: bool) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if np.shape(x) != np.shape(y):
            return False
        if dtypes and jnp.dtype(jnp.result_type(x)) != jnp.dtype(jnp.result_type(y)):
            return False
    return True


def _max_abs(tree: PyTree) -> jax.Array:
    leaves = [jnp.max(jnp.abs(leaf), initial=0.0) for leaf in jax.tree.leaves(tree)]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())


def _tree_neg(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.negative, tree)


def _zero_tangent(x: jax.Array) -> jax.Array:
    if _is_float(x):
        return jnp.zeros_like(x)  # keeps the primal's type (shard_map's varying axes)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


# A ``custom_jvp`` output that is not floating needs a ``float0`` tangent, and a
# ``float0`` zero cannot carry the primal's type under ``shard_map`` (its varying
# manual axes): JAX then rejects the rule. So the aux of ``has_aux=True`` leaves the
# custom_jvp as float32 arrays holding the same values exactly, and is decoded right
# after: booleans and integers of ≤ 16 bits converted, wider integers first split
# into 16-bit pieces (an integer-to-integer bitcast, so no float bit patterns such
# as NaNs or denormals are ever made). Other dtypes (e.g. PRNG keys) keep a
# ``float0`` tangent.


def _encode_aux(x: jax.Array) -> jax.Array:
    dt = jnp.result_type(x)
    if dt == jnp.bool_:
        return jnp.asarray(x, jnp.float32)
    if not jnp.issubdtype(dt, jnp.integer):
        return x
    if jnp.iinfo(dt).bits > 16:
        x = jax.lax.bitcast_convert_type(x, jnp.uint16)  # shape (..., bits/16)
    return jnp.asarray(x, jnp.float32)


def _decode_aux(y: jax.Array, like: Any) -> jax.Array:
    dt = like.dtype
    if dt == jnp.bool_:
        return y != 0
    if not jnp.issubdtype(dt, jnp.integer):
        return y
    if jnp.iinfo(dt).bits > 16:
        return jax.lax.bitcast_convert_type(y.astype(jnp.uint16), dt)
    return y.astype(dt)


def _sol_dtype(sol: PyTree) -> Any:
    leaves = jax.tree.leaves(sol)
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _real_dtype(dt: Any) -> Any:
    return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.inexact) else dt


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


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python >= 3.11
        e.add_note(note)


# --------------------------------------------------------------------------- hoisting


def _convert(fun: Callable[..., Any], *example_args: Any):
    """Closure-convert ``fun``: ``(fun_c, consts, out_shape)``, ``fun_c(*args, *consts)``.

    Like :func:`jax.closure_convert`, but *every* traced value ``fun`` closes over is
    hoisted, including integer ones (LU pivots, active sets): ``jax.closure_convert``
    keeps those inside the jaxpr, and a rule traced later (``grad`` of a ``jit``-ted
    function, a differentiated ``scan``) would then meet a tracer of a finished
    trace. Concrete constants stay inside.
    """
    flat, in_tree = jax.tree.flatten(example_args)

    def flat_fun(*leaves):
        return fun(*jax.tree.unflatten(in_tree, leaves))

    closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*flat)
    out_tree = jax.tree.structure(out_shape)
    consts = list(closed.consts)
    hoist = [i for i, c in enumerate(consts) if isinstance(c, jax.core.Tracer)]
    n_args = len(example_args)
    jaxpr = closed.jaxpr

    def converted(*args_and_consts):
        args, hoisted = args_and_consts[:n_args], args_and_consts[n_args:]
        vals = list(consts)
        for i, c in zip(hoist, hoisted, strict=True):
            vals[i] = c
        leaves = jax.tree.leaves(args)
        return jax.tree.unflatten(out_tree, jaxpr_as_fun(ClosedJaxpr(jaxpr, vals))(*leaves))

    return converted, [consts[i] for i in hoist], out_shape


def _split(args: tuple, kwargs: dict):
    """Split ``(args, kwargs)`` into array leaves and a function rebuilding them.

    Non-array leaves (Python numbers, strings, callables, ...) stay static.
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dyn_idx = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    dyn = [jnp.asarray(leaves[i]) for i in dyn_idx]
    dyn_set = set(dyn_idx)
    template = [None if i in dyn_set else leaf for i, leaf in enumerate(leaves)]

    def rebuild(dyn_leaves):
        out = list(template)
        for i, v in zip(dyn_idx, dyn_leaves):
            out[i] = v
        return jax.tree.unflatten(treedef, out)

    return dyn, rebuild


# --------------------------------------------------------------------------- complex


def _needs_real_view(tree: PyTree) -> bool:
    leaves = jax.tree.leaves(tree)
    return any(jnp.issubdtype(jnp.result_type(s), jnp.complexfloating) for s in leaves)


def _to_real(tree: PyTree) -> PyTree:
    """Complex leaves ``z`` → real ``stack([Re z, Im z], -1)``; real leaves unchanged."""

    def leaf(z):
        if jnp.issubdtype(z.dtype, jnp.complexfloating):
            return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1)
        return z

    return jax.tree.map(leaf, tree)


def _from_real(tree: PyTree, template: PyTree) -> PyTree:
    def leaf(r, t):
        if jnp.issubdtype(t.dtype, jnp.complexfloating):
            return jax.lax.complex(r[..., 0], r[..., 1]).astype(t.dtype)
        return r

    return jax.tree.map(leaf, tree, template)


# --------------------------------------------------------------------------- linear solves


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


def _run_solve(fn, matvec, b, *, check: str):
    """``fn(matvec, b)`` and ``(relative residual, tolerance, iterations, ok)``.

    Built-in solvers report their own convergence. A user's callable is checked by
    one extra matvec, ``‖b − A x‖ ≤ sqrt(eps) ‖b‖``: this is what catches a ``solve``
    that ignores the operator it is given (e.g. a pre-factorised forward solve
    used for the transposed system).
    """
    b_flat = ravel_pytree(b)[0]
    dtype = _real_dtype(b_flat.dtype)
    n = b_flat.size
    if _accepts_info(fn):
        x, info = fn(matvec, b, return_info=True)
        rel = info.residual_norm / jnp.where(info.b_norm > 0, info.b_norm, 1.0)
        tol = _stated_tol(fn, n, dtype)
        return x, (rel.astype(dtype), jnp.asarray(tol, dtype), info.iterations, info.converged)
    x = fn(matvec, b)
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

    ``fwd_solve`` / ``bwd_solve`` map a right-hand side (a pytree like ``sol``) to the
    solution of the tangent / adjoint system; they build their operators from
    explicit inputs, so the operator ``custom_linear_solve`` hands them is not
    needed. The system is posed on the raveled vector: ``custom_linear_solve``'s
    transpose rule requires the right-hand side to be entirely linear, which a
    pytree whose leaves are only partly perturbed (as in grad-of-grad) violates.
    """
    _, rhs = jax.jvp(F_theta, (theta,), (theta_dot,))
    _, matvec = jax.linearize(F_x, sol)
    b, unravel = ravel_pytree(_tree_neg(rhs))

    def flat(f):
        return lambda v: ravel_pytree(f(unravel(v)))[0].astype(b.dtype)

    x = jax.lax.custom_linear_solve(
        flat(matvec),
        b,
        solve=lambda _mv, r: flat(fwd_solve)(r),
        transpose_solve=lambda _mv, r: flat(bwd_solve)(r),
        symmetric=symmetric,
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


class _Config(NamedTuple):
    solve: Callable[..., Any]
    transpose_solve: Callable[..., Any] | None
    has_aux: bool
    symmetric: bool
    check: str
    residual_tol: float | None
    step_tol: float | None


def _config(solve, transpose_solve, has_aux, symmetric, check, residual_tol, step_tol):
    _checks.validate_mode(check)
    _ls.get_solver(solve)  # fail early on unknown names
    tsolve = None if transpose_solve is None else _resolve_solver(transpose_solve, symmetric)
    for name, tol in (("residual_tol", residual_tol), ("step_tol", step_tol)):
        if tol is not None and not float(tol) >= 0:
            raise ValueError(f"{name} must be a number >= 0 (or None); got {tol!r}")
    return _Config(
        _resolve_solver(solve, symmetric), tsolve, has_aux, symmetric, check,
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
    cfg = _config(solve, transpose_solve, has_aux, symmetric, check, residual_tol, step_tol)

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(solver)
        def wrapped(init_params: PyTree, *args: Any, **kwargs: Any) -> Any:
            site = _checks.user_site() if cfg.check in ("warn", "raise") else None
            return _solve_root(solver, optimality_fun, init_params, args, kwargs, cfg, site)

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
        optimality_fun, solve=solve, transpose_solve=transpose_solve, has_aux=has_aux,
        symmetric=symmetric, check=check, residual_tol=residual_tol, step_tol=step_tol,
    )  # fmt: skip


def argmin(
    objective: Callable[..., jax.Array],
    *,
    solve: Solve = "auto",
    has_aux: bool = False,
    check: str = "warn",
    residual_tol: float | None = None,
    step_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: differentiable ``argmin_x objective(x, *args, **kwargs)``.

    Wraps a minimiser ``minimise(init, *args, **kwargs)`` with :func:`custom_root`
    on the optimality condition ``∇ₓ objective(x, θ) = 0``. The Hessian is
    symmetric, so ``"auto"`` uses a dense solve for small problems and CG
    (Hessian-vector products, no Hessian materialised) for large ones, and no
    ``transpose_solve`` is needed. ``check``, ``residual_tol`` and ``step_tol`` are
    as in :func:`custom_root` (the default forward test bounds the Newton step
    ``H⁻¹∇f`` relative to ``x``, so it sees a weakly curved objective whose
    gradient is small but whose minimiser is far).

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
        residual_tol=residual_tol, step_tol=step_tol,
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
    def fwd_raw(sol, dyn_leaves, fc, b):
        _, mv = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
        return _run_solve(cfg.solve, mv, b, check=check)

    def bwd_raw(sol, dyn_leaves, fc, b):
        if cfg.symmetric:
            _, vecmat = jax.linearize(lambda x: F_c(x, dyn_leaves, *fc), sol)
        else:
            _, vjp_fun = jax.vjp(lambda x: F_c(x, dyn_leaves, *fc), sol)
            vecmat = lambda u: vjp_fun(u)[0]  # noqa: E731
        return _run_solve(cfg.transpose_solve or cfg.solve, vecmat, b, check=check)

    lin_args = (example, dyn, f_consts, example)
    if all(_is_builtin(s) for s in user_solves):
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

    def forward_check(sol, dyn_leaves, fc, lf):
        Fx = F_c(sol, dyn_leaves, *fc)
        r = _max_abs(Fx).astype(dtype)
        values, tols, labels = [], [], []
        if step_tol is not None:
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

    def guarded(raw, consts, system):
        def solve(sol, dyn_leaves, fc, b):
            x, (rel, tol, its, ok) = raw(sol, dyn_leaves, fc, b, *consts)
            return _checks.guard(
                x, rel, tol, its, mode=check, ok=ok, site=site,
                label="relative residual ‖b − A u‖/‖b‖",
                what=f"the linear solve of the implicit derivative ({fname}, {system})",
            )  # fmt: skip

        return solve

    @jax.custom_jvp
    def root(init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd):
        out = solver_c(init, dyn_leaves, *s_consts)
        sol = view(out[0] if has_aux else out)
        if check != "off":
            sol = forward_check(sol, dyn_leaves, f_consts, l_fwd)
        return (sol, jax.tree.map(_encode_aux, out[1])) if has_aux else sol

    def root_jvp_rule(primals, tangents):
        init, dyn_leaves, s_consts, f_consts, l_fwd, l_bwd = primals
        _, dyn_dot, _, f_consts_dot, _, _ = tangents
        out = root(*primals)
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
            fwd = guarded(
                fwd_c, l_fwd, "system ∂ₓF u = b" if bwd_c is None else "tangent system ∂ₓF u = b"
            )
            bwd = fwd if bwd_c is None else guarded(bwd_c, l_bwd, "adjoint system (∂ₓF)ᵀ u = b")
            sol_dot = _implicit_tangent(
                F_x, F_theta, sol, [theta_all[i] for i in live], [dot_all[i] for i in live],
                lambda b: fwd(sol, dyn_leaves, f_consts, b),
                lambda b: bwd(sol, dyn_leaves, f_consts, b),
                cfg.symmetric,
            )  # fmt: skip
        else:
            sol_dot = jax.tree.map(jnp.zeros_like, sol)
        # A non-finite solution (check="nan", a failed solver) has NaN derivatives:
        # a primal-only factor keeps the tangent linear, so reverse mode sees it too.
        sol_dot = jax.tree.map(
            lambda t, s: t * jnp.where(jnp.isfinite(s), 1, jnp.nan).astype(t.dtype), sol_dot, sol
        )
        if has_aux:
            return out, (sol_dot, jax.tree.map(_zero_tangent, out[1]))
        return out, sol_dot

    root.defjvp(root_jvp_rule, symbolic_zeros=True)
    out = root(init_params, dyn, s_consts, f_consts, l_fwd, l_bwd)
    if has_aux:
        aux = jax.tree.map(_decode_aux, out[1], out_shape[1])
        return unview(out[0]), jax.lax.stop_gradient(aux)
    return unview(out)


# --------------------------------------------------------------------------- low level


def _theta_fun(optimality_fun, sol, args):
    """``θ ↦ F(sol, args)`` over the floating leaves ``θ`` of ``args``.

    Python ``float``/``complex`` leaves count as (weakly typed) floating arrays, as
    in JAX; integers, booleans and other objects are held fixed.
    """
    leaves, treedef = jax.tree.flatten(args)
    idx = [
        i for i, leaf in enumerate(leaves)
        if (_is_array(leaf) and _is_float(leaf)) or _is_py_float(leaf)
    ]  # fmt: skip

    def F_theta(theta):
        vals = list(leaves)
        for i, v in zip(idx, theta):
            vals[i] = v
        return optimality_fun(sol, *jax.tree.unflatten(treedef, vals))

    return F_theta, [jnp.asarray(leaves[i]) for i in idx], idx, leaves, treedef


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
    ``args`` (same structure; tangents of non-floating leaves are ignored; Python
    floats are floating, as in JAX).

    Args:
      optimality_fun: ``F(x, *args)``.
      sol: a root, any pytree.
      args: tuple of ``F``'s arguments after ``x``.
      tangents: tuple with the structure of ``args``.
      solve, symmetric: the linear solver, as in :func:`custom_root` (only the
        system ``∂ₓF`` itself is solved, so no ``transpose_solve`` is needed).
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
    theta_dot = [jnp.asarray(t_leaves[i], jnp.result_type(th)) for i, th in zip(idx, theta)]
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
    transpose_solve: Solve | None = None,
    symmetric: bool = False,
    return_info: bool = False,
):
    """Cotangents of ``args`` for the root ``sol`` of ``optimality_fun(x, *args) = 0``.

    Solves ``(∂ₓF)ᵀ u = cotangent`` and returns ``θ̄ = −(∂_θF)ᵀ u`` as a tuple with the
    structure of ``args`` (``None`` in place of non-floating leaves; Python floats
    get a cotangent, as in JAX).

    Args:
      optimality_fun, sol, args: as in :func:`root_jvp`.
      cotangent: a pytree like ``sol``.
      solve: solver called as ``solve(vecmat, b)`` with ``vecmat`` the transposed
        operator ``u ↦ (∂ₓF)ᵀ u``; it must use the operator it is given.
      transpose_solve: if given, used instead of ``solve`` for this (transposed)
        system: the name mirrors :func:`custom_root`, so one pair of callables
        serves both.
      symmetric, return_info: as in :func:`root_jvp`.

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
    fn = _resolve_solver(solve if transpose_solve is None else transpose_solve, symmetric)
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
