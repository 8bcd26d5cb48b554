r"""Differentiable convex quadratic programs: :func:`solve_qp`.

.. math::  \min_x\ \tfrac12 x^⊤Qx + q^⊤x \quad\text{s.t.}\quad Ax = b,\ Gx ≤ h

The forward solve is a regularised primal–dual interior-point method on
equilibrated data (:mod:`rootdiff.solvers._ipm`, linear algebra in
:mod:`rootdiff.solvers._kkt`), polished on the identified active set; its
derivatives are exact derivatives of the solution map, attached by
:func:`rootdiff.custom_root` to the KKT conditions on that active set
(:mod:`rootdiff.solvers._qp_diff`). Everything has fixed shapes: ``jit`` and
``vmap`` work, and a batch of QPs runs as one compiled loop.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rootdiff import _checks
from rootdiff.solvers import _ipm, _kkt
from rootdiff.solvers._ipm import Iterate
from rootdiff.solvers._qp_diff import (
    _DEGENERATE_LEVEL,
    differentiable,
    flag_derivatives,
    polish_and_probe,
    qp_central_path_residual,
    qp_kkt_residual,
    slack_margin,
)
from rootdiff.solvers._qp_elastic import elastic_data
from rootdiff.solvers.eq_qp import _sym, solve_eq_qp

__all__ = [
    "solve_qp",
    "solve_eq_qp",
    "QPInfo",
    "QPStatus",
    "qp_kkt_residual",
    "qp_central_path_residual",
]


class QPStatus:
    """Status codes in :attr:`QPInfo.status`."""

    SOLVED = _ipm.SOLVED
    MAX_ITERATIONS = _ipm.MAX_ITERATIONS
    PRIMAL_INFEASIBLE = _ipm.PRIMAL_INFEASIBLE
    DUAL_INFEASIBLE = _ipm.DUAL_INFEASIBLE
    INACCURATE = _ipm.INACCURATE
    NON_CONVEX = _ipm.NON_CONVEX
    NAMES = (
        "solved",
        "not converged (iteration limit)",
        "primal infeasible",
        "dual infeasible (unbounded)",
        "solved to reduced accuracy (residuals within sqrt(tol))",
        "non-convex (Q is not positive semidefinite)",
    )
    #: Codes of :attr:`QPInfo.derivative`.
    DERIVATIVE_EXACT, DEPENDENT_CONSTRAINTS, NOT_UNIQUE, DEGENERATE, UNPOLISHED = range(5)


class QPInfo(NamedTuple):
    """Duals and diagnostics of :func:`solve_qp` (``return_info=True``).

    Attributes:
      y: ``(p,)`` multipliers of ``Ax = b`` (differentiable, like ``x``).
      z: ``(m,)`` multipliers of ``Gx ≤ h``, ``z ≥ 0`` (differentiable; 0 on rows
        with ``h_i = +inf``).
      s: ``(m,)`` slacks ``h − Gx`` of the returned ``x`` (``inf`` on absent rows).
      converged: whether ``status == QPStatus.SOLVED``.
      iterations: interior-point iterations used.
      primal_residual: ``max(‖Ax − b‖∞, ‖(Gx − h)₊‖∞)`` (absolute).
      dual_residual: ``‖Qx + q + Aᵀy + Gᵀz‖∞`` (absolute).
      gap: duality gap ``|xᵀQx + qᵀx + bᵀy + hᵀz|`` (absolute).
      status: a :class:`QPStatus` code.
      x: ``(n,)`` the primal answer (without derivative; for ``init=``).
      derivative: whether the solution map has a derivative at the answer:
        ``QPStatus.DERIVATIVE_EXACT`` (0: unique minimiser, linearly independent
        active constraints), ``QPStatus.DEPENDENT_CONSTRAINTS`` (1: the active
        constraints are linearly dependent — derivatives w.r.t. ``Q`` and ``q``
        are exact, those w.r.t. ``A``, ``b``, ``G``, ``h`` do not exist) or
        ``QPStatus.NOT_UNIQUE`` (2: the minimiser is not unique — no derivative) or
        ``QPStatus.DEGENERATE`` (3: a constraint is degenerate to working precision —
        its multiplier, or its slack, is within rounding of zero (:func:`degeneracy`):
        the map has a kink there, and rounding decided which one-sided derivative is
        returned) or ``QPStatus.UNPOLISHED`` (4: polishing confirmed no active set:
        ``x`` is the interior point's, accurate to the tolerance only, and the
        derivative, taken on the guessed active set, may be wrong). Taking a
        derivative that does not exist is reported per ``check``.
    """

    y: jax.Array
    z: jax.Array
    s: jax.Array
    converged: jax.Array
    iterations: jax.Array
    primal_residual: jax.Array
    dual_residual: jax.Array
    gap: jax.Array
    status: jax.Array
    x: jax.Array | None = None
    derivative: jax.Array | None = None


def _default_tol(dtype) -> float:
    # Tight enough to identify the active set reliably; polishing then makes the
    # solution exact to rounding.
    return 1e-10 if dtype == jnp.float64 else 1e-5


def _prepare(Q, q, A, b, G, h):
    """Float arrays of consistent shapes; ``None`` and 1-D ``A``/``G`` accepted."""
    q = jnp.asarray(q) if q is not None else None
    if q is None or q.ndim != 1:
        raise ValueError(f"solve_qp: q must be a vector of shape (n,), got {_shape(q)}")
    n = q.shape[0]
    if (A is None) != (b is None) or (G is None) != (h is None):
        raise ValueError("solve_qp: pass A and b together, and G and h together (or both None)")
    if A is None:
        A, b = np.zeros((0, n)), np.zeros(0)
    if G is None:
        G, h = np.zeros((0, n)), np.zeros(0)
    arrays = [jnp.asarray(v) for v in (Q, q, A, b, G, h)]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    Q, q, A, b, G, h = (v.astype(dtype) for v in arrays)
    # One constraint row may be given as a vector (as qpax's atleast_2d).
    if A.ndim == 1 and A.shape[0] == n and b.ndim <= 1 and b.size == 1:
        A, b = A[None, :], b.reshape(1)
    if G.ndim == 1 and G.shape[0] == n and h.ndim <= 1 and h.size == 1:
        G, h = G[None, :], h.reshape(1)
    b = b.reshape(1) if b.ndim == 0 else b
    h = h.reshape(1) if h.ndim == 0 else h
    want = {"Q": (n, n), "A": (b.shape[0] if b.ndim == 1 else -1, n), "b": (A.shape[0],),
            "G": (h.shape[0] if h.ndim == 1 else -1, n), "h": (G.shape[0],)}  # fmt: skip
    for name, arr in zip(("Q", "A", "b", "G", "h"), (Q, A, b, G, h)):
        if arr.shape != want[name]:
            raise ValueError(
                f"solve_qp: {name} has shape {arr.shape}, expected {want[name]} with n = {n} "
                f"taken from q of shape {q.shape} (Q (n, n), q (n,), A (p, n), b (p,), "
                f"G (m, n), h (m,); pass A = b = None or G = h = None for no constraints)"
            )
    return Q, q, A, b, G, h


def _shape(v):
    return None if v is None else jnp.shape(v)


def _as_iterate(init, x_like, A, G):
    """A warm start: ``(x, QPInfo)``, a :class:`QPInfo` with ``x``, or ``(x, y, z[, s])``."""
    if init is None:
        return None
    sg = jax.lax.stop_gradient
    if isinstance(init, QPInfo):
        x, y, z, s = init.x, init.y, init.z, init.s
    elif isinstance(init, tuple) and len(init) == 2 and isinstance(init[1], QPInfo):
        x = init[0] if init[1].x is None else init[1].x
        y, z, s = init[1].y, init[1].z, init[1].s
    elif isinstance(init, tuple) and len(init) in (3, 4):
        x, y, z = init[:3]
        s = init[3] if len(init) == 4 else None
    else:
        raise TypeError("solve_qp: init must be (x, QPInfo), a QPInfo, or (x, y, z[, s])")
    if x is None:
        raise ValueError("solve_qp: init has no x (pass the (x, info) pair)")
    x, y, z = (sg(jnp.asarray(v, x_like.dtype)) for v in (x, y, z))
    s = jnp.ones_like(z) if s is None else sg(jnp.asarray(s, x_like.dtype))
    return Iterate(x, y, z, s)


def solve_qp(
    Q: jax.Array,
    q: jax.Array,
    A: jax.Array | None = None,
    b: jax.Array | None = None,
    G: jax.Array | None = None,
    h: jax.Array | None = None,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int = 100,
    smoothing: float = 0.0,
    init=None,
    elastic: float | None = None,
    return_info: bool = False,
    check: str = "warn",
    diff_solve=None,
):
    r"""Solve ``min ½xᵀQx + qᵀx`` s.t. ``Ax = b``, ``Gx ≤ h``, differentiably.

    Same argument order and empty-array convention as ``qpax.solve_qp_primal``: no
    equalities is ``A = zeros((0, n))``, ``b = zeros(0)`` (or ``None``, ``None``),
    likewise for ``G``, ``h``; a single row may be a vector. ``Q`` must be positive
    semidefinite (its symmetric part is used); ``h_i = +inf`` (or any
    ``h_i ≥ 1e20``) means "no constraint" and gets zero derivatives. Works under
    ``jit`` and ``vmap`` (a batch of QPs runs as one compiled loop that stops when
    every problem is done).

    **Algorithm.** Ruiz equilibration, then a regularised Mehrotra
    predictor–corrector interior point on ``Gx + s = h``, ``s ≥ 0`` (each Newton
    system solved with a quasi-definite regularised matrix plus iterative
    refinement, so redundant equalities, free variables and singular ``Q`` are
    fine), then one polishing Newton step on the identified active set.

    **Tolerance.** The answer is ``solved`` when each residual of the returned
    point is at most ``atol + tol · scale``, per row / component, on the original
    data: primal ``|A_i x − b_i|``, ``(G_i x − h_i)₊`` against
    ``max(|b_i|, ‖A_i‖∞‖x‖∞)``; dual ``|(Qx + q + Aᵀy + Gᵀz)_j|`` against the largest
    of its terms' sizes; the duality gap ``|xᵀQx + qᵀx + bᵀy + hᵀz|`` against its
    largest term. The default is relative (``tol = 1e-10`` in float64, ``1e-5`` in
    float32, ``atol = 0``); qpax's absolute ``solver_tol`` is ``tol=0,
    atol=solver_tol``. Each bound is at least ten rounding units of its residual at
    ``x`` of the problem's own size (so that ``x* = 0`` with ``b = 0``, ``h = 0`` can
    be solved at all: there the relative scale vanishes with ``x``).

    **Statuses** (:class:`QPStatus`, in ``return_info=True``'s ``info.status``):
    solved; iteration limit; primal infeasible (a Farkas certificate: ``z ≥ 0``,
    ``Aᵀy + Gᵀz ≈ 0``, ``bᵀy + hᵀz < 0``); dual infeasible (a direction ``d`` with
    ``Qd ≈ 0``, ``Ad ≈ 0``, ``Gd ≤ 0``, ``qᵀd < 0``); reduced accuracy; non-convex.

    **Derivatives** (w.r.t. all six inputs, every autodiff mode) are those of the
    exact solution map: :func:`rootdiff.custom_root` on the KKT conditions of the
    active set identified at the solution (:func:`qp_kkt_residual`). At a
    degenerate constraint (``z_i = 0`` and ``G_i x = h_i``) the map has a kink; the
    derivative is then the one-sided one of the side the answer lies on. Where no
    derivative exists — the minimiser is not unique, or the active constraints are
    linearly dependent and ``A``, ``b``, ``G`` or ``h`` is differentiated — taking
    one is reported per ``check`` (``"nan"``: NaN derivatives, ``x`` kept) and
    ``info.derivative`` says which (:class:`QPInfo`).
    ``diff_solve``: a :mod:`rootdiff.linear_solve` name or callable to solve the
    ``(n + p + m)``-square derivative system generically instead.

    **Failures.** If a problem is not solved, ``check`` says what happens:
    ``"warn"`` (default) emits one :class:`rootdiff.ConvergenceWarning` per call,
    ``"raise"`` raises, ``"nan"`` makes ``x`` and its derivatives NaN in the failed
    problems (through :func:`rootdiff.custom_root`'s check), ``"off"`` leaves it to
    ``info.status``.

    **Smoothed derivatives** (``smoothing = κ > 0``, qpax's ``target_kappa``): the
    returned ``x`` is still exact, its derivatives are those of the central-path
    point of barrier weight ``κ`` (smooth across active-set changes, biased).

    **Infeasible problems** (``elastic = λ > 0``): solve the ℓ1-penalised QP
    ``min ½xᵀQx + qᵀx + λ(‖(Gx − h)₊‖₁ + ‖Ax − b‖₁)`` instead, which always has an
    answer (the QP's own when it is feasible and ``λ`` exceeds its multipliers), with
    exact derivatives in every mode (also w.r.t. ``λ``); ``info`` then describes the
    penalised problem in the variables ``(x, u, v, w)`` of
    :func:`rootdiff.solvers._qp_elastic.elastic_data`.

    **Warm start.** ``init`` may be the ``(x, info)`` of an earlier call (or
    ``(x, y, z)``); it gets a zero derivative.

    Args:
      Q: ``(n, n)`` positive semidefinite matrix.
      q: ``(n,)``.
      A: ``(p, n)``, ``b``: ``(p,)`` — equality constraints (``p`` may be 0, or None).
      G: ``(m, n)``, ``h``: ``(m,)`` — inequality constraints (``m`` may be 0, or None).
      tol, atol: relative and absolute tolerances (see above).
      maxiter: iteration limit of the interior point.
      smoothing: ``κ ≥ 0`` for smoothed derivatives.
      init: warm start (see above).
      elastic: ``λ`` of the elastic mode, or None (see above).
      return_info: also return a :class:`QPInfo` (duals, status, residuals).
      check: ``"warn"``, ``"raise"``, ``"nan"`` or ``"off"``.
      diff_solve: linear solver of the derivative system.

    Returns:
      ``x`` of shape ``(n,)``, or ``(x, info)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> Q, q = jnp.eye(2), jnp.array([-1.0, -2.0])   # min ½‖x‖² − x₁ − 2x₂
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # s.t. x₁ + x₂ ≤ 1
      >>> x, info = rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True)
      >>> [round(float(v), 4) + 0.0 for v in x], int(info.status), round(float(info.z[0]), 4)
      ([0.0, 1.0], 0, 1.0)
      >>> dx_dh = jax.jacobian(lambda h: rootdiff.solve_qp(Q, q, None, None, G, h))(h)
      >>> [round(float(v), 4) for v in dx_dh[:, 0]]
      [0.5, 0.5]
    """
    _checks.validate_mode(check)
    Q, q, A, b, G, h = _prepare(Q, q, A, b, G, h)
    if not isinstance(smoothing, jax.core.Tracer) and smoothing < 0:
        raise ValueError(f"solve_qp: smoothing must be >= 0, got {smoothing}")
    tol = _default_tol(q.dtype) if tol is None else tol
    # Under jax.jit(solve_qp) the flag arrives as a tracer, whose value is unknown:
    # passing it at all means asking for the info.
    want_info = True if isinstance(return_info, jax.core.Tracer) else bool(return_info)
    if elastic is not None:
        return _solve_elastic(Q, q, A, b, G, h, elastic, tol, atol, maxiter, smoothing,
                              init, check, diff_solve, want_info)  # fmt: skip
    start = _as_iterate(init, q, A, G)
    # The derivative probes serve the check and info.derivative only.
    probe = want_info or check != "off"
    args = (Q, q, A, b, G, h, tol, atol, maxiter, smoothing, start, check, diff_solve, probe)
    x, info = (_solve_jit if _concrete(args) else _solve)(*args)
    return (x, info) if want_info else x


def _concrete(args) -> bool:
    """No tracers anywhere and hashable options: the call can use the compiled cache."""
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(args)):
        return False
    try:
        hash(args[6:10] + args[11:])
    except TypeError:
        return False
    return True


def _solve(Q, q, A, b, G, h, tol, atol, maxiter, smoothing, start, check, diff_solve, probe=True):
    # The IPM is a black box: run it on non-differentiated data, then hand its
    # answer to custom_root, whose derivative solve reuses the IPM's scaling.
    sg = jax.lax.stop_gradient
    data = sg((_sym(Q), q, A, b, G, h))
    res = _ipm.ipm(*data, tol=tol, atol=atol, maxiter=maxiter, init=start)
    absent = _ipm.absent_rows(data[5])
    # The answer's rounding floor: x̂ = x / (γ D) is of unit size (see _ipm.merit).
    xscale = res.scaled[3].gamma * res.scaled[3].D
    # Polishing, and (probe) whether the derivative exists: both solve with the
    # active-set factorisation that the derivative reuses.
    sol, active, solve, (value, resid, slack), polished, defect = polish_and_probe(
        (res.x, res.y, res.z), res.active, data, res.scaled, absent,
        lambda v: _ipm.merit(*data, absent, *v, tol, atol, xscale), probe=probe,
    )  # fmt: skip
    status = _final_status(res.status, value, tol, atol)
    ok = status == QPStatus.SOLVED
    sol = _guard(sol, value, res.k, ok, check)

    mode = "nan" if check == "nan" else "off"
    x, y, z = differentiable(sol, (Q, q, A, b, G, h), ok=ok, active=active, solve=solve,
                             diff_solve=diff_solve, check=mode)  # fmt: skip
    if probe:
        # Does the derivative exist (unique minimiser, independent active constraints,
        # no constraint at a kink to working precision)?
        margin = degeneracy(sol, active, data, absent, slack)
        code = defect[0]
        at_kink = (margin <= _DEGENERATE_LEVEL) & (code != QPStatus.NOT_UNIQUE)
        code = jnp.where(at_kink, QPStatus.DEGENERATE, code)
        # Not polished: the answer is the interior point's, accurate to the tolerance
        # only (|x − x*| ≈ √(sᵀz)), and no active set was confirmed for the derivative.
        unconfirmed = ~polished & (code != QPStatus.NOT_UNIQUE)
        code = jnp.where(unconfirmed, QPStatus.UNPOLISHED, code).astype(defect[0].dtype)
        flagged = (jnp.where(ok, code, QPStatus.DERIVATIVE_EXACT), (*defect[1], margin))
        x, y, z = flag_derivatives((x, y, z), (Q, q, A, b, G, h), flagged, check)
    else:
        code = None
    if not (isinstance(smoothing, (int, float)) and smoothing == 0):
        # Central-path point of barrier weight κ from the solution (Newton on s ⊙ z = κ).
        sol_k, s_k = _central_path(data, sol, res.s, smoothing, absent)
        xk, yk, zk = differentiable(sol_k, (Q, q, A, b, G, h), ok=ok, smoothing=smoothing,
                                    s=s_k, diff_solve=diff_solve)  # fmt: skip
        x, y, z = (sg(v) + (vk - sg(vk)) for v, vk in ((x, xk), (y, yk), (z, zk)))
    return x, _info(x, y, z, res, status, data, absent, resid)._replace(derivative=code)


#: Repeated eager calls (concrete data) reuse one compiled solve per shape and option set
#: instead of re-tracing the interior-point loop every time.
_solve_jit = jax.jit(_solve, static_argnums=(6, 7, 8, 9, 11, 12, 13))


def _solve_elastic(Q, q, A, b, G, h, penalty, tol, atol, maxiter, smoothing, init, check,
                   diff_solve, want_info):  # fmt: skip
    n, p, m = q.shape[0], b.shape[0], h.shape[0]
    data = elastic_data(Q, q, A, b, G, h, penalty)
    start = None
    if init is not None:
        it = _as_iterate(init, q, A, G)
        if it.x.shape[0] == n:  # a plain answer: zero violations
            k = m + 2 * p
            it = Iterate(jnp.concatenate([it.x, jnp.zeros(k, q.dtype)]), it.y,
                         jnp.concatenate([it.z, jnp.ones(k, q.dtype)]),
                         jnp.concatenate([it.s, jnp.ones(k, q.dtype)]))  # fmt: skip
        start = it
    probe = want_info or check != "off"
    args = (*data, tol, atol, maxiter, smoothing, start, check, diff_solve, probe)
    xe, info = (_solve_jit if _concrete(args) else _solve)(*args)
    if not want_info:
        return xe[:n]
    return xe[:n], info


def _central_path(data, sol, s, kappa, absent, steps=30):
    """Newton's method on the central-path equations ``s ⊙ z = κ`` from ``sol``."""
    Q, q, A, b, G, h = data
    Gf = jnp.where(absent[:, None], 0.0, G)
    hf = jnp.where(absent, 1.0, h)
    x, y, z = sol
    s = hf - Gf @ x
    z = jnp.where(absent, kappa, jnp.maximum(z, 1e-3 * kappa))
    s = jnp.maximum(s, 1e-3 * kappa)

    def body(_, it):
        x, y, z, s = it
        rd, rpe, rpi = Q @ x + q + A.T @ y + Gf.T @ z, A @ x - b, Gf @ x + s - hf
        rc = s * z - kappa
        D = s / z
        red = _kkt.Reduced(Q, A, Gf, D, _kkt.regularisation(q.dtype))

        def mv(d):
            dx, dy, dz = d
            return (Q @ dx + A.T @ dy + Gf.T @ dz, A @ dx, Gf @ dx - D * dz)

        # The regularised solve, then up to two refinement rounds while the residual halves.
        rhs = (-rd, -rpe, -rpi + rc / z)
        dx, dy, dz = _kkt.refine_from_zero(red.apply_inverse, mv, rhs, 3, always=1)[0]
        ds = (-rc - s * dz) / z
        a = jnp.minimum(1.0, 0.99 * jnp.minimum(_ipm._max_step(s, ds), _ipm._max_step(z, dz)))
        return x + a * dx, y + a * dy, z + a * dz, s + a * ds

    x, y, z, s = jax.lax.fori_loop(0, steps, body, (x, y, z, s))
    return (x, y, jnp.where(absent, 0.0, z)), jnp.where(absent, jnp.inf, s)


def _final_status(ipm_status, value, tol, atol):
    """Honest status of the returned point: solved only if it meets the tolerance."""
    certified = (
        (ipm_status == QPStatus.PRIMAL_INFEASIBLE)
        | (ipm_status == QPStatus.DUAL_INFEASIBLE)
        | (ipm_status == QPStatus.NON_CONVEX)
    )
    loose = jnp.sqrt(jnp.maximum(jnp.asarray(tol, value.dtype), jnp.finfo(value.dtype).eps))
    loose = loose / jnp.maximum(jnp.asarray(tol, value.dtype), jnp.finfo(value.dtype).eps)
    return _ipm.first_true(
        [certified, value <= 1.0, value <= loose],
        [ipm_status, QPStatus.SOLVED, QPStatus.INACCURATE],
        QPStatus.MAX_ITERATIONS,
    )


def degeneracy(sol, active, data, absent, slack=None):
    r"""Distance of the answer from a kink of the solution map, in rounding units.

    A constraint is *degenerate* when it is active with a zero multiplier: the
    solution map has a kink there, and the derivative computed on either side is
    one-sided. At working precision this is the case whenever the deciding quantity
    is within rounding of zero — the multiplier ``z_i`` of an active row against the
    rounding of the dual equation it is solved from, the slack ``s_i = h_i − G_i x``
    of an inactive row against the rounding of ``G_i x − h_i``:

    .. math::  \min\Big(\min_{i\ \text{active}} \frac{z_i ‖G_i‖_∞}{ε\, \max(‖q‖_∞,
               ‖Qx‖_∞, ‖A^⊤y‖_∞, ‖G^⊤z‖_∞)},\ \min_{i\ \text{inactive}}
               \frac{h_i − G_i x}{ε\,(|h_i| + |G_i|\,|x|)}\Big)

    (``ε`` the dtype's machine epsilon; absent rows excluded; ``inf`` without rows).
    Which side the answer lands on is then decided by rounding (float32 data with a
    multiplier of 1e-7 relative: the derivative O(1) off). ``slack``: the second
    term's :func:`rootdiff.solvers._qp_diff.slack_margin` of ``x``, if already computed.
    """
    Q, q, A, b, G, h = data
    x, y, z = sol
    eps = jnp.finfo(q.dtype).eps
    tiny = jnp.finfo(q.dtype).tiny
    Gf, hf = jnp.where(absent[:, None], 0.0, G), jnp.where(absent, 0.0, h)
    inf_norm = _kkt.inf_norm
    dual = _kkt.max_of(inf_norm(q), inf_norm(Q @ x), inf_norm(A.T @ y), inf_norm(Gf.T @ z))
    z_margin = z * jnp.max(jnp.abs(Gf), axis=1, initial=0.0) / jnp.maximum(eps * dual, tiny)
    s_margin = slack_margin(x, Gf, hf) if slack is None else slack
    margin = jnp.where(active, z_margin, s_margin)
    margin = jnp.where(absent, jnp.inf, jnp.where(jnp.isnan(margin), 0.0, margin))
    return jnp.min(margin, initial=jnp.inf)


def _guard(sol, value, iterations, ok, check):
    if check in ("off", "nan"):  # "nan" goes through custom_root's check
        return sol
    return _checks.guard(
        sol, value, 1.0, iterations, mode=check, ok=ok,
        what="solve_qp (status is not 'solved': iteration limit, infeasible, unbounded "
        "or non-convex; see return_info=True's status. 'residual' is the worst residual "
        "relative to its tolerance; derivatives there are meaningless)",
    )  # fmt: skip


def _info(x, y, z, res, status, data, absent, residuals):
    sg = jax.lax.stop_gradient
    Q, q, A, b, G, h = data
    # The residuals of the returned point, as polishing measured them (NaN where
    # check="nan" made x NaN).
    finite = jnp.all(jnp.isfinite(sg(x)))
    prim, dual, gap = (jnp.where(finite, r, jnp.nan) for r in residuals)
    return QPInfo(
        y=y,
        z=z,
        s=jnp.where(absent, jnp.inf, h - G @ sg(x)),
        converged=status == QPStatus.SOLVED,
        iterations=res.k,
        primal_residual=prim,
        dual_residual=dual,
        gap=gap,
        status=status,
        x=sg(x),
    )
