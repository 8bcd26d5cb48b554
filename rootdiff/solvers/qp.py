r"""Differentiable convex quadratic programs: a batched interior-point method.

.. math::  \min_x\ \tfrac12 x^⊤Qx + q^⊤x \quad\text{s.t.}\quad Ax = b,\ Gx ≤ h

is solved by a primal–dual interior-point method (Mehrotra predictor–corrector)
with fixed shapes and a ``lax.while_loop``, so it runs under ``jit`` and ``vmap``
(one compiled loop for a whole batch). Its derivatives are *exact* derivatives of
the solution map, attached by :func:`rootdiff.custom_root` to the KKT conditions
on the active set identified at the solution (``active = z > s``),

.. math::  F(x, y, z) = \begin{bmatrix} Qx + q + A^⊤y + G^⊤(a ⊙ z) \\ Ax − b \\
           a ⊙ (Gx − h) − (1 − a) ⊙ z \end{bmatrix} = 0,

(:func:`qp_kkt_residual`), whose symmetric Jacobian is solved by eliminating
``z`` into the IPM's own reduced ``(n + p)``-square system. The optional
smoothed derivatives use the central-path conditions instead
(:func:`qp_central_path_residual`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rootdiff import _checks
from rootdiff.implicit import custom_root
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

    SOLVED = 0
    MAX_ITERATIONS = 1
    PRIMAL_INFEASIBLE = 2
    DUAL_INFEASIBLE = 3
    INACCURATE = 4
    NAMES = (
        "solved",
        "not converged (iteration limit or stalled)",
        "primal infeasible",
        "dual infeasible (unbounded)",
        "solved to reduced accuracy (merit <= sqrt(tol))",
    )


class QPInfo(NamedTuple):
    """Duals and diagnostics of :func:`solve_qp` (``return_info=True``).

    Attributes:
      y: ``(p,)`` multipliers of ``Ax = b`` (differentiable, like ``x``).
      z: ``(m,)`` multipliers of ``Gx ≤ h``, ``z ≥ 0`` (differentiable).
      s: ``(m,)`` slacks ``h − Gx`` of the returned ``x``.
      converged: whether ``status == QPStatus.SOLVED``.
      iterations: interior-point iterations used.
      primal_residual: ``max(‖Ax − b‖∞, ‖max(Gx − h, 0)‖∞)``.
      dual_residual: ``‖Qx + q + Aᵀy + Gᵀz‖∞``.
      gap: complementarity ``sᵀz`` of the final iterate.
      status: a :class:`QPStatus` code (0 solved, 1 max iterations,
        2 primal infeasible, 3 dual infeasible).
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


def qp_kkt_residual(primal_dual, Q, q, A, b, G, h, active):
    """KKT residual of the QP on an identified active set (the exact optimality function).

    ``active`` is a boolean ``(m,)`` mask (``z_i > s_i`` at the IPM's solution);
    ``a`` below is its 0/1 value, ``ā = 1 − a``:

    .. math::  F(x, y, z) = \\begin{bmatrix} Q_s x + q + A^⊤y + G^⊤(a ⊙ z) \\\\ Ax − b
               \\\\ a ⊙ (Gx − h) − ā ⊙ z \\end{bmatrix}

    with ``Q_s = (Q + Qᵀ)/2``. Under strict complementarity (``z_i > 0`` on active,
    ``G_i x < h_i`` on inactive constraints) the QP's solution is a root of ``F``
    and the solution map is differentiable with derivative ``−(∂F)⁻¹ ∂_θF`` — this
    ``F`` gives it exactly, independently of how small the IPM drove ``s ⊙ z``.
    ``∂F = [[Q_s, Aᵀ, G_aᵀ], [A, 0, 0], [G_a, 0, −diag(ā)]]`` (``G_a = diag(a) G``)
    is symmetric.
    """
    x, y, z = primal_dual
    z_active = jnp.where(active, z, 0.0)
    return (
        _sym(Q) @ x + q + A.T @ y + G.T @ z_active,
        A @ x - b,
        jnp.where(active, G @ x - h, -z),
    )


def qp_central_path_residual(primal_dual, Q, q, A, b, G, h, smoothing, balanced=False):
    """KKT residual of the log-barrier problem: the central path at ``μ = smoothing``.

    ``F = (Q_s x + q + Aᵀy + Gᵀz, Ax − b, d ⊙ (z ⊙ (Gx − h) + κ))`` with ``κ =
    smoothing`` and a constant (non-differentiated) row scaling ``d``, which changes
    neither the root nor the derivative: ``d = 1/z`` (``balanced=False``) makes
    ``∂F = [[Q_s, Aᵀ, Gᵀ], [A, 0, 0], [G, 0, diag((Gx − h)/z)]]`` symmetric (for the
    structured solve); ``d = 1/(z + |Gx − h|)`` gives rows of unit size (for generic
    dense solvers).
    """
    x, y, z = primal_dual
    r = G @ x - h
    denom = z + jnp.abs(r) if balanced else z
    scale = jax.lax.stop_gradient(1.0 / jnp.maximum(denom, jnp.finfo(r.dtype).tiny))
    return (
        _sym(Q) @ x + q + A.T @ y + G.T @ z,
        A @ x - b,
        scale * (z * r + smoothing),
    )


# --------------------------------------------------------------------------- dense kernels

#: Reduced systems up to this size are factorised by the unrolled LDLᵀ below.
_SMALL = 16


def _ldl_factor(K):
    """``K = L diag(d) Lᵀ`` without pivoting, unrolled over the (static) size.

    Why our own: under ``vmap`` a batch of tiny systems makes LAPACK's
    ``getrf``/``trsm`` one call per matrix, whose overhead dominates (4× slower than
    this for 5 × 5 systems). No pivoting is safe here: the reduced KKT matrices
    ``[[H + ρI, Aᵀ], [A, −ρI]]`` are quasi-definite (``H`` positive semidefinite),
    hence factorisable in any order with positive then negative pivots.
    """
    N = K.shape[-1]
    idx = jnp.arange(N)
    cols, diag = [], []
    for k in range(N):
        dk = K[k, k]
        lk = jnp.where(idx > k, K[:, k] / dk, 0.0)
        K = K - dk * jnp.outer(lk, lk)
        cols.append(lk)
        diag.append(dk)
    return jnp.stack(cols, axis=1), jnp.stack(diag)


def _ldl_solve(fac, r):
    L, d = fac
    N = r.shape[0]
    for k in range(N):  # forward substitution with the unit lower factor
        r = r - L[:, k] * r[k]
    r = r / d
    for k in reversed(range(N)):  # backward substitution with Lᵀ
        r = r - L[k, :] * r[k]
    return r


def _factor(K):
    if K.shape[-1] <= _SMALL:
        return _ldl_factor(K)
    return jax.scipy.linalg.lu_factor(K)


def _solve(fac, r):
    if r.shape[0] <= _SMALL:
        return _ldl_solve(fac, r)
    return jax.scipy.linalg.lu_solve(fac, r)


def _reduced_factor(Q, A, G, w, reg):
    """Factorise ``[[Q + Gᵀ diag(w) G + ρI, Aᵀ], [A, −ρI]]`` (``ρ = reg``)."""
    n, p = Q.shape[0], A.shape[0]
    H = Q + G.T @ (w[:, None] * G) + reg * jnp.eye(n, dtype=Q.dtype)
    K = jnp.block([[H, A.T], [A, -reg * jnp.eye(p, dtype=Q.dtype)]])
    return _factor(K)


def _reduced_solve(fac, n, rx, ry):
    sol = _solve(fac, jnp.concatenate([rx, ry]))
    return sol[:n], sol[n:]


def _inf_norm(v):
    return jnp.max(jnp.abs(v), initial=0.0)


def _max_step(v, dv):
    """Largest α ∈ (0, 1] with v + α dv ≥ 0 (v > 0)."""
    ratio = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
    return jnp.minimum(1.0, jnp.min(ratio, initial=jnp.inf))


def _default_tol(dtype) -> float:
    # Tight enough to identify the active set reliably (at 1e-8 an inactive
    # coordinate of 1e-4 was mistaken for active in seed 000's batch); the polishing
    # step (:func:`_polish`) then makes the solution exact to rounding.
    return 1e-10 if dtype == jnp.float64 else 1e-5


def _regularisation(dtype) -> float:
    return float(jnp.finfo(dtype).eps) ** 0.75


# --------------------------------------------------------------------------- the IPM


class _Iterate(NamedTuple):
    x: jax.Array
    y: jax.Array
    z: jax.Array
    s: jax.Array


class _State(NamedTuple):
    it: _Iterate  # current iterate
    res: tuple  # its residuals (rd, rpe, rpi)
    best: _Iterate  # iterate of smallest merit so far (what is returned)
    merit: jax.Array  # its merit
    stall: jax.Array  # iterations since the merit last dropped by 10%
    k: jax.Array
    status: jax.Array  # -1 while running


class _Result(NamedTuple):
    x: jax.Array
    y: jax.Array
    z: jax.Array
    s: jax.Array
    k: jax.Array
    status: jax.Array


#: Stop when the merit has not dropped by 10% for this many iterations.
_PATIENCE = 5

#: Fraction of the step to the boundary of s, z ≥ 0 that is taken.
_TAU = 0.995

#: Iterative-refinement steps of the structured derivative solve.
_REFINE = 2


def _ipm(Q, q, A, b, G, h, *, tol, maxiter, smoothing, start=None) -> _Result:
    """Mehrotra predictor–corrector on the slack form ``Gx + s = h, s ≥ 0``.

    Each iteration factorises the reduced KKT matrix
    ``[[Q + Gᵀ diag(z/s) G + ρI, Aᵀ], [A, −ρI]]`` once (``ρ = eps^¾``, a tiny
    regularisation that tolerates rank-deficient ``A`` and singular ``Q``) and
    solves it three times: predictor, corrector and one step of iterative
    refinement of the corrector against the unreduced Newton system (without
    it the dual residual stalls near 1e-9 as ``s, z → 0`` make the reduced
    matrix ill-conditioned). With ``smoothing = κ > 0`` the complementarity
    target is ``s ⊙ z = κ`` (Newton's method on the central-path equations),
    used for qpax-style smoothed derivatives.

    The merit of an iterate is the largest of its relative primal residual, dual
    residual and complementarity (see :func:`solve_qp`); the iterate of smallest
    merit is returned, so a run that stalls at the limit of floating-point
    accuracy returns its most accurate point rather than its last.
    """
    dtype = q.dtype
    n, m = q.shape[0], h.shape[0]
    reg = _regularisation(dtype)
    norm_bh = jnp.maximum(_inf_norm(b), _inf_norm(h))
    norm_q = _inf_norm(q)

    def classify(it, best, best_merit, stall, k):
        Qx, Ax, Gx, ATy, GTz = Q @ it.x, A @ it.x, G @ it.x, A.T @ it.y, G.T @ it.z
        rd, rpe, rpi = Qx + q + ATy + GTz, Ax - b, Gx + it.s - h
        scale_d = jnp.maximum(
            jnp.maximum(1.0, norm_q), jnp.maximum(_inf_norm(Qx), _inf_norm(ATy + GTz))
        )
        scale_p = jnp.maximum(jnp.maximum(1.0, norm_bh), jnp.maximum(_inf_norm(Ax), _inf_norm(Gx)))
        pres = jnp.maximum(_inf_norm(rpe), _inf_norm(rpi)) / scale_p
        dres = _inf_norm(rd) / scale_d
        if smoothing > 0:
            comp = _inf_norm(it.s * it.z - smoothing) / smoothing
        else:
            # Scaled by the sizes of s and z, not of the objective: the derivative's
            # error is about max_i min(s_i/z_i, z_i/s_i), so the products must be
            # small on the scale of s and z themselves.
            # Relative to the sizes of s and z (not of the objective, which can be
            # much larger): the solution's error grows like z_i / s_i on inactive and
            # s_i / z_i on active constraints.
            comp = jnp.dot(it.s, it.z) / (
                jnp.maximum(1.0, _inf_norm(it.s)) * jnp.maximum(1.0, _inf_norm(it.z))
            )
        value = jnp.maximum(jnp.maximum(pres, dres), comp)
        value = jnp.where(jnp.isnan(value), jnp.inf, value)

        improved = value < best_merit
        best = jax.tree.map(lambda a, b_: jnp.where(improved, a, b_), it, best)
        stall = jnp.where(value < 0.9 * best_merit, 0, stall + 1).astype(jnp.int32)
        best_merit = jnp.minimum(value, best_merit)

        # Infeasibility certificates (homogeneous, so tested on the iterates, which
        # diverge along them): primal — z ≥ 0, Aᵀy + Gᵀz ≈ 0, bᵀy + hᵀz < 0;
        # dual — Qx ≈ 0, Ax ≈ 0, Gx ≤ 0, qᵀx < 0.
        t_p = -(jnp.dot(b, it.y) + jnp.dot(h, it.z))
        p_inf = (t_p > 0) & (_inf_norm(ATy + GTz) <= tol * t_p)
        t_d = -jnp.dot(q, it.x)
        Gx_pos = jnp.max(jnp.maximum(Gx, 0.0), initial=0.0)
        d_inf = (t_d > 0) & (jnp.maximum(jnp.maximum(_inf_norm(Qx), _inf_norm(Ax)), Gx_pos)
                             <= tol * t_d)  # fmt: skip

        finite = jnp.all(jnp.isfinite(it.x)) & jnp.all(jnp.isfinite(it.z))
        running = finite & (k < maxiter) & (stall < _PATIENCE)
        # Nested where rather than jnp.select, whose stacked literal False cannot be
        # batched over an Explicit mesh axis (vmap of a sharded batch).
        status = QPStatus.MAX_ITERATIONS
        for c, v in reversed(
            [
                (best_merit <= tol, QPStatus.SOLVED),
                (p_inf, QPStatus.PRIMAL_INFEASIBLE),
                (d_inf, QPStatus.DUAL_INFEASIBLE),
                (running, -1),
                (best_merit <= tol**0.5, QPStatus.INACCURATE),
            ]
        ):
            status = jnp.where(c, v, status)
        status = jnp.asarray(status).astype(jnp.int32)
        return _State(it, (rd, rpe, rpi), best, best_merit, stall, k, status)

    # Initial point (as in CVXOPT): minimise ½xᵀQx + qᵀx + ½‖Gx − h‖² s.t. Ax = b,
    # take s = h − Gx, z = −s, and shift both into the positive orthant.
    if start is None:
        fac0 = _reduced_factor(Q, A, G, jnp.ones_like(h), reg)
        x0, y0 = _reduced_solve(fac0, n, -q + G.T @ h, b)
        s0 = h - G @ x0

        def shift(v):
            a = -jnp.min(v, initial=jnp.inf)
            return jnp.where(a < 0, v, v + 1.0 + a)

        start = _Iterate(x0, y0, shift(-s0), shift(s0))

    def body(state):
        x, y, z, s = state.it
        rd, rpe, rpi = state.res
        w = z / s
        fac = _reduced_factor(Q, A, G, w, reg)

        def newton(r1, r2, r3, r4):
            # Q dx + Aᵀdy + Gᵀdz = r1, A dx = r2, G dx + ds = r3, z ds + s dz = r4:
            # eliminate ds = r3 − G dx and dz = (r4 − z r3)/s + w G dx.
            t = (r4 - z * r3) / s
            dx, dy = _reduced_solve(fac, n, r1 - G.T @ t, r2)
            Gdx = G @ dx
            return dx, dy, t + w * Gdx, r3 - Gdx

        def refined(rc):
            r = (-rd, -rpe, -rpi, -rc)
            d = newton(*r)
            dx, dy, dz, ds = d
            e = (r[0] - (Q @ dx + A.T @ dy + G.T @ dz), r[1] - A @ dx,
                 r[2] - (G @ dx + ds), r[3] - (z * ds + s * dz))  # fmt: skip
            return jax.tree.map(jnp.add, d, newton(*e))

        if smoothing > 0:
            dx, dy, dz, ds = refined(s * z - smoothing)
        else:
            mu = jnp.dot(s, z) / m
            _, _, dz, ds = newton(-rd, -rpe, -rpi, -s * z)  # predictor (affine scaling)
            a_aff = jnp.minimum(_max_step(s, ds), _max_step(z, dz))
            mu_aff = jnp.dot(s + a_aff * ds, z + a_aff * dz) / m
            sigma = (mu_aff / mu) ** 3
            dx, dy, dz, ds = refined(s * z + ds * dz - sigma * mu)  # corrector
        alpha = jnp.minimum(1.0, _TAU * jnp.minimum(_max_step(s, ds), _max_step(z, dz)))
        new = _Iterate(x + alpha * dx, y + alpha * dy, z + alpha * dz, s + alpha * ds)
        return classify(new, state.best, state.merit, state.stall, state.k + 1)

    def cond(state):
        return state.status < 0

    def frozen_body(state):
        # Under vmap the loop runs until every problem is done; finished problems
        # keep their state.
        new = body(state)
        return jax.tree.map(lambda a, b_: jnp.where(state.status < 0, a, b_), new, state)

    # Scalars typed like the data, not literals: a literal has no mesh in its type,
    # which breaks vmap over an Explicit mesh axis.
    zero = jnp.zeros_like(jnp.sum(start.x))
    inf, k0 = zero + jnp.inf, zero.astype(jnp.int32)
    first = classify(start, start, inf, k0, k0)
    final = jax.lax.while_loop(cond, frozen_body, first)
    return _Result(*final.best, final.k, final.status)


def _structured_solve(Q, A, G, w, active, reg):
    """``solve(matvec, rhs)`` for the symmetric ``∂F`` of the QP's optimality functions.

    Both :func:`qp_kkt_residual` and :func:`qp_central_path_residual` have
    ``∂F = [[Q, Aᵀ, G_aᵀ], [A, 0, 0], [G_a, 0, −diag(1/w)]]`` (active-set form:
    ``w = ∞`` on active, ``w = 0`` with row ``−ż_i`` on inactive constraints;
    central path: ``w = z/s``). Eliminating ``dz = w ⊙ (G dx − r_z)`` leaves the
    IPM's ``(n + p)``-square reduced system ``[[Q + Gᵀ diag(w) G, Aᵀ], [A, 0]]``,
    factorised once here and used for every derivative solve (and, ``∂F`` being
    symmetric, for transposed ones). Infinite or huge ``w`` would swamp ``Q`` (at
    ``w ≈ 1e15`` nothing of ``Q`` survives rounding), so ``w`` is capped at
    ``eps^(-1/2)·max(1, ‖Q‖)/‖G‖²``, which enforces active constraints to about
    ``sqrt(eps)``; two steps of iterative refinement against the exact ``matvec``
    remove that error (each multiplies it by about ``sqrt(eps)``), the ``ρ``
    regularisation's bias and rounding.
    """
    n = Q.shape[0]
    eps = jnp.finfo(Q.dtype).eps
    w_cap = jnp.maximum(1.0, _inf_norm(Q)) / jnp.maximum(_inf_norm(G) ** 2, eps) / jnp.sqrt(eps)
    w = jnp.minimum(w, w_cap)
    fac = _reduced_factor(Q, A, G, w, reg)

    def apply_inverse(r):
        r_x, r_y, r_z = r
        dx, dy = _reduced_solve(fac, n, r_x + G.T @ (w * r_z), r_y)
        return dx, dy, jnp.where(active, w * (G @ dx - r_z), -r_z)

    def solve(matvec, rhs):
        d = apply_inverse(rhs)
        for _ in range(_REFINE):
            e = jax.tree.map(jnp.subtract, rhs, matvec(d))
            d = jax.tree.map(jnp.add, d, apply_inverse(e))
        return d

    return solve


# --------------------------------------------------------------------------- public API


def _as_float_arrays(*arrays):
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def _validate(Q, q, A, b, G, h):
    n = q.shape[0] if q.ndim == 1 else -1
    want = {"Q": (n, n), "q": (n,), "A": (b.shape[0], n), "b": (A.shape[0],),
            "G": (h.shape[0], n), "h": (G.shape[0],)}  # fmt: skip
    for name, arr in zip("Q q A b G h".split(), (Q, q, A, b, G, h)):
        if arr.shape != want[name]:
            raise ValueError(
                f"solve_qp: {name} has shape {arr.shape}, expected {want[name]} "
                f"(Q (n, n), q (n,), A (p, n), b (p,), G (m, n), h (m,); use "
                f"A = zeros((0, n)), b = zeros(0) for no equalities, same for G, h)"
            )


def solve_qp(
    Q: jax.Array,
    q: jax.Array,
    A: jax.Array,
    b: jax.Array,
    G: jax.Array,
    h: jax.Array,
    *,
    tol: float | None = None,
    maxiter: int = 50,
    smoothing: float = 0.0,
    return_info: bool = False,
    check: str = "warn",
    diff_solve=None,
):
    r"""Solve ``min ½xᵀQx + qᵀx`` s.t. ``Ax = b``, ``Gx ≤ h``, differentiably.

    Same argument order and empty-array convention as ``qpax.solve_qp_primal``: no
    equalities is ``A = zeros((0, n))``, ``b = zeros(0)``; no inequalities is
    ``G = zeros((0, n))``, ``h = zeros(0)`` (then the problem is solved by
    :func:`~rootdiff.solve_eq_qp`). ``Q`` must be positive semidefinite (its
    symmetric part is used). Works under ``jit`` and ``vmap`` (a batch of QPs runs
    as one compiled loop that stops when every problem is done).

    **Algorithm.** Mehrotra predictor–corrector interior-point method on
    ``Gx + s = h``, ``s ≥ 0``, started from CVXOPT's initial point; one
    factorisation of the ``(n + p)``-square reduced KKT matrix per iteration
    (unrolled LDLᵀ for ``n + p ≤ 16``, LAPACK LU above). Stops when the merit
    ``max(‖Ax − b‖∞, ‖Gx + s − h‖∞) / max(1, ‖b‖∞, ‖h‖∞, ‖Ax‖∞, ‖Gx‖∞)``,
    ``‖Qx + q + Aᵀy + Gᵀz‖∞ / max(1, ‖q‖∞, ‖Qx‖∞, ‖Aᵀy + Gᵀz‖∞)``,
    ``sᵀz / (max(1, ‖s‖∞) max(1, ‖z‖∞))`` is at most ``tol``; when an
    infeasibility certificate holds to ``tol`` (primal: ``‖Aᵀy + Gᵀz‖∞ ≤ tol·t``
    with ``t = −bᵀy − hᵀz > 0``; dual: ``‖Qx‖∞, ‖Ax‖∞, max(Gx)₊ ≤ tol·t`` with
    ``t = −qᵀx > 0``); when the merit has not dropped by 10% in 5 iterations
    (stalled at the limit of rounding); or after ``maxiter`` iterations. The
    iterate of smallest merit is returned.

    **Polishing.** On the active set ``{i : z_i > s_i}`` the KKT conditions are
    linear, so one Newton step on them (reusing the derivative's factorisation)
    solves the QP to rounding; the step is kept where it stays optimal (active
    multipliers ≥ 0, inactive constraints satisfied), else the interior point's
    answer is returned.

    **Derivatives** (w.r.t. all six inputs, every autodiff mode) are those of the
    exact solution map: :func:`rootdiff.custom_root` on the KKT conditions of the
    active set ``{i : z_i > s_i}`` identified at the solution
    (:func:`qp_kkt_residual`). They do not depend on how far the interior point
    drove ``s ⊙ z`` to zero, only on the accuracy of ``(x, y, z)`` and on the
    active set being identified; they match finite differences wherever the active
    set is non-degenerate (to rounding after polishing).
    The derivative system is solved by eliminating ``z`` into the IPM's reduced
    ``(n + p)``-square system (``diff_solve=None``); or pass a
    :mod:`rootdiff.linear_solve` name (``"lu"``, ``"lstsq"``, ...) to solve the
    ``(n + p + m)``-square system generically (``"lstsq"`` gives minimum-norm
    derivatives where it is singular, e.g. for non-unique solutions).
    At a *degenerate* constraint (``z_i = 0`` and ``G_i x = h_i``) the solution
    map has a kink and no derivative; the returned derivative is then the
    one-sided derivative of the side the final iterate lies on (constraint
    treated as active if ``z_i > s_i``, else inactive): finite, never NaN.

    **Failures.** If a problem is not solved (``status ≠ 0``: iteration limit,
    infeasible, unbounded), ``x`` is the last iterate and its derivatives are
    those of a non-solution, i.e. meaningless. ``check`` makes this loud:
    ``"warn"`` (default) emits a :class:`rootdiff.ConvergenceWarning` (once per
    batch), ``"raise"`` raises, ``"nan"`` returns NaN for ``x`` (hence NaN
    derivatives) in the failed problems only, ``"off"`` relies on
    ``return_info=True``'s ``status``.

    **Smoothed derivatives** (``smoothing = κ > 0``, qpax's ``target_kappa``):
    the returned ``x`` is still the exact solution, but its derivatives are those
    of the central-path point ``x_κ`` (the solution of the log-barrier problem
    ``min ½xᵀQx + qᵀx − κ Σ log(h − Gx)`` s.t. ``Ax = b``), which are smooth
    across active-set changes but biased. Off by default.

    Args:
      Q: ``(n, n)`` positive semidefinite matrix.
      q: ``(n,)``.
      A: ``(p, n)``, ``b``: ``(p,)`` — equality constraints (``p`` may be 0).
      G: ``(m, n)``, ``h``: ``(m,)`` — inequality constraints (``m`` may be 0).
      tol: relative tolerance of the interior point; default ``1e-10`` in float64
        (then polished to rounding, see above), ``1e-5`` in float32.
      maxiter: iteration limit of the interior-point method.
      smoothing: ``κ ≥ 0`` for smoothed derivatives (see above).
      return_info: also return a :class:`QPInfo` (duals, status, residuals).
      check: ``"warn"``, ``"raise"``, ``"nan"`` or ``"off"`` (see Failures).
      diff_solve: linear solver of the derivative system (a
        :mod:`rootdiff.linear_solve` name or callable).

    Returns:
      ``x`` of shape ``(n,)``, or ``(x, info)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import rootdiff
      >>> Q, q = jnp.eye(2), jnp.array([-1.0, -2.0])   # min ½‖x‖² − x₁ − 2x₂
      >>> A, b = jnp.zeros((0, 2)), jnp.zeros(0)
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # s.t. x₁ + x₂ ≤ 1
      >>> x, info = rootdiff.solve_qp(Q, q, A, b, G, h, return_info=True)
      >>> [round(float(v), 4) + 0.0 for v in x], int(info.status), round(float(info.z[0]), 4)
      ([0.0, 1.0], 0, 1.0)
      >>> dx_dh = jax.jacobian(lambda h: rootdiff.solve_qp(Q, q, A, b, G, h))(h)
      >>> [round(float(v), 4) for v in dx_dh[:, 0]]
      [0.5, 0.5]
    """
    _checks.validate_mode(check)
    Q, q, A, b, G, h = _as_float_arrays(Q, q, A, b, G, h)
    _validate(Q, q, A, b, G, h)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    tol = _default_tol(q.dtype) if tol is None else float(tol)
    if h.shape[0] == 0:
        return _solve_equality_only(Q, q, A, b, G, h, return_info=return_info, check=check)

    # The IPM is a black box: run it on non-differentiated data, then hand its
    # answer to custom_root, whose derivative solve reuses the IPM's factorisation.
    sg = jax.lax.stop_gradient
    data = sg((_sym(Q), q, A, b, G, h))
    res = _ipm(*data, tol=tol, maxiter=maxiter, smoothing=0.0)
    active = res.z > res.s
    kkt_solve = _structured_solve(data[0], data[2], data[4], jnp.where(active, jnp.inf, 0.0),
                                  active, _regularisation(res.s.dtype))  # fmt: skip
    sol = _polish((res.x, res.y, res.z), active, data, kkt_solve, tol)
    sol = _guard(sol, res, data, tol, check)
    x, y, z = _differentiable(
        sol, res.s, data, (Q, q, A, b, G, h), 0.0, diff_solve, active=active, solve=kkt_solve
    )

    if smoothing > 0:
        start = _Iterate(res.x, res.y, res.z, res.s)
        res_k = _ipm(*data, tol=tol, maxiter=maxiter, smoothing=smoothing, start=start)
        sol_k = (res_k.x, res_k.y, res_k.z)
        x_k, y_k, z_k = _differentiable(
            sol_k, res_k.s, data, (Q, q, A, b, G, h), float(smoothing), diff_solve
        )
        # Value of the exact solution, derivative of the central-path point.
        x, y, z = (sg(v) + (v_k - sg(v_k)) for v, v_k in ((x, x_k), (y, y_k), (z, z_k)))

    if not return_info:
        return x
    return x, _info(x, y, z, res, Q, q, A, b, G, h)


def _polish(sol, active, data, kkt_solve, tol):
    """One Newton step on :func:`qp_kkt_residual` from the IPM's answer.

    On a fixed active set the KKT conditions are *linear*, so one step solves the
    equality-constrained QP of that set exactly (to rounding) — the interior point
    leaves ``x`` accurate only to about ``tol``. The step reuses the factorisation
    of the derivative solve. It is kept only where it stays optimal: finite,
    active multipliers ``≥ 0`` and inactive constraints satisfied (to ``tol``);
    otherwise (wrong active set, degenerate problems) the IPM's answer is returned.
    """
    Q, q, A, b, G, h = data
    residual, matvec = jax.linearize(lambda v: qp_kkt_residual(v, Q, q, A, b, G, h, active), sol)
    step = kkt_solve(matvec, residual)
    x, y, z = (v - d for v, d in zip(sol, step, strict=True))
    scale_z = jnp.maximum(1.0, _inf_norm(sol[2]))
    scale_h = jnp.maximum(1.0, _inf_norm(h))
    ok = (
        jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y)) & jnp.all(jnp.isfinite(z))
        & (jnp.min(jnp.where(active, z, jnp.inf), initial=jnp.inf) >= -tol * scale_z)
        & (jnp.max(jnp.where(active, -jnp.inf, G @ x - h), initial=-jnp.inf) <= tol * scale_h)
        & (_inf_norm(A @ x - b) <= tol * jnp.maximum(1.0, _inf_norm(b)))
    )  # fmt: skip
    z = jnp.where(active, jnp.maximum(z, 0.0), 0.0)
    return tuple(jnp.where(ok, new, old) for new, old in zip((x, y, z), sol, strict=True))


def _differentiable(sol, s, data, inputs, smoothing, diff_solve, active=None, solve=None):
    """Attach the implicit derivative to ``sol = (x, y, z)`` via :func:`custom_root`.

    ``smoothing = 0``: the active-set residual :func:`qp_kkt_residual` with
    ``active`` (default ``z > s``); ``smoothing > 0``: :func:`qp_central_path_residual`.
    ``solve``: a prebuilt structured solve of the same system (reused factorisation).
    """
    x, y, z = sol
    Q, _, A, _, G, _ = data
    reg = _regularisation(s.dtype)
    if smoothing == 0:
        active = z > s if active is None else active
        residual, extra = qp_kkt_residual, (active,)
        w = jnp.where(active, jnp.inf, 0.0)
    else:
        active = jnp.ones(z.shape, bool)
        residual, extra = qp_central_path_residual, (float(smoothing),)
        w = z / s
    if diff_solve is None:
        if solve is None:
            solve = _structured_solve(Q, A, G, w, active, reg)
        symmetric = True
    else:
        solve, symmetric = diff_solve, False
        if smoothing > 0:
            residual = functools.partial(qp_central_path_residual, balanced=True)

    @custom_root(residual, solve=solve, symmetric=symmetric, check="off")
    def solver(_init, Q, q, A, b, G, h, *extra):
        return sol

    return solver(None, *inputs, *extra)


def _primal_residual(x, A, b, G, h):
    return jnp.maximum(_inf_norm(A @ x - b), jnp.max(jnp.maximum(G @ x - h, 0.0), initial=0.0))


def _guard(sol, res, data, tol, check):
    """Apply ``check`` to the IPM's outcome (per problem; one host call per batch)."""
    if check == "off":
        return sol
    ok = res.status == QPStatus.SOLVED
    if check == "nan":
        x, y, z = sol
        return jnp.where(ok, x, jnp.nan), y, z
    _, _, A, b, G, h = data
    residual = _primal_residual(res.x, A, b, G, h)
    return _checks.guard(
        sol, residual, tol, res.k, mode=check, ok=ok,
        what="solve_qp (status is not 'solved': iteration limit, infeasible or "
        "unbounded; see return_info=True; derivatives there are meaningless)",
    )  # fmt: skip


def _info(x, y, z, res, Q, q, A, b, G, h):
    sg = jax.lax.stop_gradient
    return QPInfo(
        y=y,
        z=z,
        s=h - G @ x,
        converged=res.status == QPStatus.SOLVED,
        iterations=res.k,
        primal_residual=sg(_primal_residual(x, A, b, G, h)),
        dual_residual=sg(_inf_norm(_sym(Q) @ x + q + A.T @ y + G.T @ z)),
        gap=sg(jnp.dot(res.s, res.z)),
        status=res.status,
    )


def _solve_equality_only(Q, q, A, b, G, h, *, return_info, check):
    x, y = solve_eq_qp(Q, q, A, b, check=check)
    finite = jnp.all(jnp.isfinite(x))
    status = jnp.where(finite, QPStatus.SOLVED, QPStatus.MAX_ITERATIONS).astype(jnp.int32)
    if check == "nan":
        x = jnp.where(finite, x, jnp.nan)
    elif check != "off":
        x = _checks.guard(
            x, jnp.where(finite, 0.0, jnp.inf), 0.0, 1, mode=check,
            what="solve_qp (singular KKT system of the equality-constrained QP)",
        )  # fmt: skip
    if not return_info:
        return x
    z = jnp.zeros((0,), x.dtype)
    res = _Result(x, y, z, z, jnp.int32(1), status)
    return x, _info(x, y, z, res, Q, q, A, b, G, h)
