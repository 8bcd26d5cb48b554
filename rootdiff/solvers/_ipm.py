r"""The interior-point iteration of :func:`rootdiff.solve_qp` (forward solve only).

``min ½xᵀQx + qᵀx`` s.t. ``Ax = b``, ``Gx ≤ h`` is solved in four stages, all with
fixed shapes (``jit``/``vmap``-friendly, one ``lax.while_loop``):

1. **Equilibration** (:func:`equilibrate`): Ruiz scaling of the KKT matrix,
   cost scaling, and a scaling of ``x`` for tiny right-hand sides; rows with
   ``h_i = +inf`` (or ``≥ 1e20``) become the trivial constraint ``0 ≤ 1``.
2. **Regularised Mehrotra predictor–corrector** (:func:`ipm`) on ``Gx + s = h``,
   ``s ≥ 0``: every Newton system is solved with the quasi-definite regularised
   matrix of :mod:`rootdiff.solvers._kkt` plus iterative refinement against the
   exact one (rank-deficient ``A``, free variables, singular ``Q``).
3. **Honest termination** on the *unscaled* residuals of the current point (see
   :func:`merit`), or an infeasibility certificate, or ``maxiter``.
4. **Polishing** (in :mod:`rootdiff.solvers.qp`): one Newton step on the KKT
   conditions of the identified active set.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rootdiff.solvers import _kkt
from rootdiff.solvers._kkt import inf_norm, max_of

#: ``h_i`` at least this large is "no constraint" (OSQP/qpax users write 1e20).
HUGE = 1e20
#: Ruiz equilibration sweeps.
_RUIZ = 10
#: Fraction of the step to the boundary of ``s, z ≥ 0`` that is taken.
_TAU = 0.995
#: Forced refinement rounds of the corrector with equality constraints. (One forced
#: round, the second only when the residual asks, is faster, but QBEACONF then stalls
#: at the iteration limit: the second round must not depend on the floor test.)
#: Without equalities every round depends on it (the residual tells when the
#: regularisation's error matters: rarely on well-conditioned problems).
_REFINE = 2
#: Most further refinement rounds of the corrector, taken only while the residual is
#: above its floor and still falls (see ``newton`` in :func:`ipm`).
_MORE = 7
#: Scaled stopping tolerance when only an absolute one is asked for (float32, float64).
SCALED_TOL = (1e-5, 1e-10)

# Status codes (mirrored by rootdiff.QPStatus).
SOLVED, MAX_ITERATIONS, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE, INACCURATE, NON_CONVEX = range(6)


class Scaling(NamedTuple):
    """``x = γ D x̂``, ``y = γ E_A ŷ / c``, ``z = γ E_G ẑ / c``, ``s = γ ŝ / E_G``."""

    D: jax.Array
    EA: jax.Array
    EG: jax.Array
    c: jax.Array
    gamma: jax.Array


class Iterate(NamedTuple):
    x: jax.Array
    y: jax.Array
    z: jax.Array
    s: jax.Array


class Result(NamedTuple):
    x: jax.Array  # unscaled primal-dual point (z = 0 on absent rows)
    y: jax.Array
    z: jax.Array
    s: jax.Array
    k: jax.Array
    status: jax.Array
    active: jax.Array  # identified active set (False on absent rows)
    scaled: tuple  # (Q̂, Â, Ĝ, Scaling) for the solves of polishing and derivatives


def absent_rows(h):
    """Rows of ``Gx ≤ h`` that constrain nothing: ``h_i = +inf`` or ``h_i ≥ 1e20``."""
    return ~(h < HUGE)  # NaN counts as absent too: it cannot constrain


def equilibrate(Q, q, A, b, G, h, absent):
    """Scaled data ``(Q̂, q̂, Â, b̂, Ĝ, ĥ)`` and the :class:`Scaling`.

    Ruiz: repeatedly divide every row and column of ``[[Q, Aᵀ, Gᵀ], [A, 0, 0],
    [G, 0, 0]]`` by the square root of its largest entry, so that all are ≈ 1
    (what makes 1e8 entries and the regularisation coexist). Then the cost is
    scaled to ``max(‖Q̂‖, ‖q̂‖) ≈ 1``, and ``x`` by ``γ = min(1, ‖(b, h)‖∞)`` so that
    tiny right-hand sides are not lost against the fixed thresholds.
    """
    dtype = q.dtype
    G = jnp.where(absent[:, None], 0.0, G)
    h = jnp.where(absent, 0.0, h)
    n, p, m = q.shape[0], b.shape[0], h.shape[0]
    D, EA, EG = jnp.ones(n, dtype), jnp.ones(p, dtype), jnp.ones(m, dtype)

    def inv_sqrt(v):
        return jnp.where(v > 0, 1.0 / jnp.sqrt(jnp.where(v > 0, v, 1.0)), 1.0)

    def sweep(_, carry):
        D, EA, EG, Qs, As, Gs = carry
        col = jnp.maximum(jnp.max(jnp.abs(Qs), axis=0, initial=0.0),
                          jnp.maximum(jnp.max(jnp.abs(As), axis=0, initial=0.0),
                                      jnp.max(jnp.abs(Gs), axis=0, initial=0.0)))  # fmt: skip
        d, ea, eg = (
            inv_sqrt(col),
            inv_sqrt(jnp.max(jnp.abs(As), axis=1, initial=0.0)),
            inv_sqrt(jnp.max(jnp.abs(Gs), axis=1, initial=0.0)),
        )
        D, EA, EG = D * d, EA * ea, EG * eg
        Qs = d[:, None] * Qs * d[None, :]
        As = ea[:, None] * As * d[None, :]
        Gs = eg[:, None] * Gs * d[None, :]
        return D, EA, EG, Qs, As, Gs

    D, EA, EG, Qs, As, Gs = jax.lax.fori_loop(0, _RUIZ, sweep, (D, EA, EG, Q, A, G))
    qs, bs, hs = D * q, EA * b, EG * h
    rhs = jnp.maximum(inf_norm(bs), inf_norm(hs))
    gamma = jnp.where(rhs > 0, jnp.minimum(1.0, rhs), 1.0)
    qs = qs / gamma
    cost = jnp.maximum(inf_norm(Qs), inf_norm(qs))
    c = jnp.where(cost > 0, 1.0 / jnp.where(cost > 0, cost, 1.0), 1.0)
    c = jnp.clip(c, 1e-6, 1e6)
    scaled = (c * Qs, c * qs, As, bs / gamma, Gs, jnp.where(absent, 1.0, hs / gamma))
    return scaled, Scaling(D, EA, EG, c, gamma)


def unscale(it: Iterate, sc: Scaling, absent) -> Iterate:
    g, c = sc.gamma, sc.c
    z = jnp.where(absent, 0.0, g * sc.EG * it.z / c)
    s = jnp.where(absent, jnp.inf, g * it.s / sc.EG)
    return Iterate(g * sc.D * it.x, g * sc.EA * it.y / c, z, s)


#: Rounding units of the x scale that :func:`merit`'s floor grants (see there).
_MERIT_FLOOR = 10.0


def merit(Q, q, A, b, G, h, absent, x, y, z, tol, atol, xscale=None):
    """``max`` over the three residuals of ``residual / (atol + tol · scale)``.

    On the original data, absent rows excluded, per row / component:

    * primal: ``|A_i x − b_i|`` and ``(G_i x − h_i)₊`` against ``max(|b_i|, ‖A_i‖∞‖x‖∞)``;
    * dual: ``|(Qx + q + Aᵀy + Gᵀz)_j|`` against ``max(|q_j|, ‖Q_j‖∞‖x‖∞,
      ‖A_j‖∞‖y‖∞, ‖G_j‖∞‖z‖∞)`` (``·_j``: column ``j``);
    * gap: ``|xᵀQx + qᵀx + bᵀy + hᵀz|`` against ``max(|xᵀQx|, |qᵀx|, |bᵀy|, |hᵀz|)``.

    ``xscale`` (``(n,)``, optional): a size ``ξ`` of ``x`` that does not vanish with
    ``x`` (the interior point's ``γ D``, which makes ``x̂`` of unit size). Each
    denominator is then at least ``10 ε`` times the residual's size at ``|x| = ξ``
    (``max_j |A_ij| ξ_j``, ``max_j |G_ij| ξ_j``, ``max_k |Q_jk| ξ_k``, ``|q|ᵀξ``):
    where ``x* = 0`` with ``b = 0``, ``h = 0``, the relative rule alone is its own
    scale (``(G_i x)₊`` against ``‖G_i‖‖x‖``, ``|qᵀx|`` against itself) and rejects
    every ``x ≠ 0``, however close to rounding (polishing's ``x = 1e-17``). The floor
    is at the working precision (``10 ε`` of unit ``x̂``), below any tolerance.

    The point meets the tolerance when the merit is ``≤ 1``. Returns the merit and
    the three absolute residuals (∞-norms).
    """
    tiny = jnp.finfo(q.dtype).tiny
    hf = jnp.where(absent, 0.0, h)
    Gf = jnp.where(absent[:, None], 0.0, G)
    nx, ny, nz = inf_norm(x), inf_norm(y), inf_norm(z)
    rpe = A @ x - b
    rpi = jnp.maximum(Gf @ x - hf, 0.0)
    sc_e = jnp.maximum(jnp.abs(b), jnp.max(jnp.abs(A), axis=1, initial=0.0) * nx)
    sc_i = jnp.maximum(jnp.abs(hf), jnp.max(jnp.abs(Gf), axis=1, initial=0.0) * nx)
    Qx = Q @ x
    rd = Qx + q + A.T @ y + Gf.T @ z
    sc_d = jnp.maximum(
        jnp.maximum(jnp.abs(q), jnp.max(jnp.abs(Q), axis=0, initial=0.0) * nx),
        jnp.maximum(jnp.max(jnp.abs(A), axis=0, initial=0.0) * ny,
                    jnp.max(jnp.abs(Gf), axis=0, initial=0.0) * nz),
    )  # fmt: skip
    terms = [x @ Qx, q @ x, b @ y, hf @ z]
    gap = jnp.abs(sum(terms))
    if xscale is None:
        fl_e = fl_i = fl_d = fl_g = 0.0
    else:
        unit = _MERIT_FLOOR * jnp.finfo(q.dtype).eps
        xi = xscale.astype(q.dtype)

        def at_xi(M):  # max_j |M_ij| ξ_j
            return unit * jnp.max(jnp.abs(M) * xi, axis=1, initial=0.0)

        fl_e, fl_i, fl_d, fl_g = at_xi(A), at_xi(Gf), at_xi(Q), unit * (jnp.abs(q) @ xi)

    def ratio(r, s, fl):
        return jnp.max(r / jnp.maximum(jnp.maximum(atol + tol * s, fl), tiny), initial=0.0)

    value = max_of(
        ratio(jnp.abs(rpe), sc_e, fl_e), ratio(rpi, sc_i, fl_i), ratio(jnp.abs(rd), sc_d, fl_d),
        ratio(gap, max_of(*map(jnp.abs, terms)), fl_g),
    )  # fmt: skip
    value = jnp.where(jnp.isnan(value), jnp.inf, value)
    prim = jnp.maximum(inf_norm(rpe), inf_norm(rpi))
    return value, (prim, inf_norm(rd), gap)


def first_true(conds, values, default) -> jax.Array:
    """``values[i]`` for the first true ``conds[i]``, else ``default`` (int32).

    Nested ``where`` rather than ``jnp.select``, whose stacked literal conditions
    cannot be batched over an Explicit mesh axis (vmap of a sharded batch).
    """
    out = jnp.asarray(default, jnp.int32)
    for c, v in reversed(list(zip(conds, values, strict=True))):
        out = jnp.where(c, jnp.asarray(v, jnp.int32), out)
    return out


def is_convex(Qs):
    """Whether the (scaled, ``‖Q̂‖ ≤ 1``) ``Q̂`` is positive semidefinite up to ``eps^0.4``.

    A Cholesky (unrolled LDLᵀ for small ``n``) of ``Q̂ + eps^0.4 I``.
    """
    n = Qs.shape[0]
    if n == 0:
        return jnp.array(True)
    shift = float(jnp.finfo(Qs.dtype).eps) ** 0.4
    M = Qs + shift * jnp.eye(n, dtype=Qs.dtype)
    if n <= _kkt.SMALL:
        _, d = _kkt.ldl_factor(M)
        return jnp.all(d > 0)
    return jnp.all(jnp.isfinite(jnp.linalg.cholesky(M)))


def ipm_regularisation(dtype, size: int) -> float:
    """``ρ = δ`` of the interior point's Newton systems (equilibrated data, entries ≈ 1).

    The regularised direction moves ``x`` by at most about ``‖r_d‖ / ρ`` per iteration
    along directions of curvature below ``ρ`` (near-LPs whose answer has ``|x̂| ≈ 1e6``
    in scaled units: a free column of an equality row, whose cost is ``1e-3``), and
    refinement cannot remove that bias (it shrinks it by ``ρ / (λ + ρ)`` per round): the
    dual residual then stalls at ``ρ |dx|``. So ``ρ`` is as small as the factorisation
    allows: ``eps^0.625`` (1.6e-10 in float64) for the pivoted LU above
    :data:`_kkt.SMALL` unknowns; ``√eps`` for the unpivoted LDLᵀ up to it, which needs
    ``ρδ ≫ eps‖A‖²`` to keep its pivots' signs (see :func:`_kkt.regularisation`, which
    polishing and derivatives use).
    """
    if size <= _kkt.SMALL:
        return _kkt.regularisation(dtype)
    return float(jnp.finfo(dtype).eps) ** 0.625


def _max_step(v, dv):
    """Largest α ∈ (0, 1] with v + α dv ≥ 0 (v > 0)."""
    ratio = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
    return jnp.minimum(1.0, jnp.min(ratio, initial=jnp.inf))


class Products(NamedTuple):
    """``Q̂x, Âᵀy, Ĝᵀz, Âx, Ĝx`` of an iterate (scaled data)."""

    Qx: jax.Array
    ATy: jax.Array
    GTz: jax.Array
    Ax: jax.Array
    Gx: jax.Array


class _State(NamedTuple):
    it: Iterate
    products: Products
    best: Iterate
    merit: jax.Array
    k: jax.Array
    status: jax.Array  # -1 while running


def ipm(Q, q, A, b, G, h, *, tol, atol, maxiter, init=None) -> Result:
    """Run stages 1–3 on ``Q`` (symmetric), ``q, A, b, G, h`` (no gradients flow here).

    ``init``: an optional unscaled :class:`Iterate` (warm start); it is pushed into
    the interior (``s, z ≥ 1e-2`` in scaled units) before use.
    """
    dtype = q.dtype
    m = h.shape[0]
    absent = absent_rows(h)
    infeasible_row = h == -jnp.inf
    h0 = jnp.where(infeasible_row, 0.0, h)
    (Qs, qs, As, bs, Gs, hs), sc = equilibrate(Q, q, A, b, G, h0, absent)
    reg = ipm_regularisation(dtype, q.shape[0] + b.shape[0])
    # Python floats where tol is one (a literal array has no mesh in its type), traced
    # otherwise. The scaled stop (below) needs a tolerance even for a purely absolute
    # request (tol = 0), to know when to polish.
    floor, scaled_tol = float(jnp.finfo(dtype).eps) ** 0.5 * 1e-1, SCALED_TOL[q.itemsize == 8]
    if isinstance(tol, (int, float)):
        eps_inf, tol_s = max(tol, floor), (tol if tol > 0 else scaled_tol)
    else:
        eps_inf, tol_s = jnp.maximum(tol, floor), jnp.where(tol > 0, tol, scaled_tol)

    def measure(it):
        u = unscale(it, sc, absent)
        return merit(Q, q, A, b, G, h, absent, u.x, u.y, u.z, tol, atol)[0]

    def products(it):
        # The matrix-vector products of an iterate, computed once and shared by the
        # stopping tests, the certificates and the next Newton step's residuals.
        x, y, z, _ = it
        return Products(Qs @ x, As.T @ y, Gs.T @ z, As @ x, Gs @ x)

    def scaled_done(it, pr):
        # The honest rule is relative, so it cannot accept any iterate when a scale
        # vanishes at the answer (NNLS with x* = 0, h = 0: the gap |qᵀx| is its own
        # scale however small x gets). The equilibrated data give the missing
        # absolute scale (entries ≈ 1): once the scaled residuals and s ⊙ z are at
        # tol, the active set is identified and polishing finishes the job (its
        # answer is judged by the honest rule again in rootdiff.solvers.qp).
        x, y, z, s = it
        rd = pr.Qx + qs + pr.ATy + pr.GTz
        sc_d = 1.0 + max_of(inf_norm(pr.Qx), inf_norm(qs), inf_norm(pr.ATy), inf_norm(pr.GTz))
        rp = jnp.maximum(inf_norm(pr.Ax - bs), inf_norm(pr.Gx + s - hs))
        sc_p = 1.0 + max_of(
            inf_norm(pr.Ax), inf_norm(bs), inf_norm(pr.Gx), inf_norm(s), inf_norm(hs)
        )
        sc_g = 1.0 + max_of(*map(jnp.abs, [x @ pr.Qx, qs @ x, bs @ y, hs @ z]))
        gap = jnp.dot(s, z)
        return (inf_norm(rd) <= tol_s * sc_d) & (rp <= tol_s * sc_p) & (gap <= tol_s * sc_g)

    def classify(it, best, best_merit, k):
        pr = products(it)
        value = measure(it)
        improved = value < best_merit
        # Still converging by the honest rule: the scaled stop waits (an absolute
        # tolerance on data whose |x| is 1e6 needs a few more iterations than it).
        halving = jnp.isfinite(best_merit) & (value < 0.5 * best_merit)
        best = jax.tree.map(lambda a, b_: jnp.where(improved, a, b_), it, best)
        best_merit = jnp.minimum(value, best_merit)
        # Infeasibility certificates on the scaled iterates, which diverge along them:
        # primal (Farkas) — z ≥ 0, Âᵀy + Ĝᵀz ≈ 0, b̂ᵀy + ĥᵀz < 0;
        # dual — Q̂x ≈ 0, Âx ≈ b̂-bounded, Ĝx ≤ ĥ-bounded, q̂ᵀx < 0.
        t_p = -(jnp.dot(bs, it.y) + jnp.dot(hs, it.z))
        p_inf = (t_p > 0) & (inf_norm(pr.ATy + pr.GTz) <= eps_inf * t_p)
        t_d = -jnp.dot(qs, it.x)
        Gx_pos = jnp.max(jnp.maximum(pr.Gx, 0.0), initial=0.0)
        d_inf = (t_d > 0) & (
            jnp.maximum(jnp.maximum(inf_norm(pr.Qx), inf_norm(pr.Ax)), Gx_pos) <= eps_inf * t_d
        )
        finite = jnp.all(jnp.isfinite(it.x)) & jnp.all(jnp.isfinite(it.z))
        status = first_true(
            [~convex, best_merit <= 1.0, jnp.any(infeasible_row) | p_inf, d_inf,
             finite & scaled_done(it, pr) & ~halving, finite & (k < maxiter)],
            [NON_CONVEX, SOLVED, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE, INACCURATE, -1],
            MAX_ITERATIONS,
        )  # fmt: skip
        return _State(it, pr, best, best_merit, k, status)

    # Initial point: x from min ½xᵀQx + qᵀx + ½‖Gx − h_c‖² s.t. Ax = b (h clipped so
    # that loose bounds do not pull it away), then s = h − Gx shifted into the interior
    # by 1.5× its largest violation v (at least 1) and z = max(v, 1) / s: every
    # s ⊙ z starts at the same value. (Shifting only the violated rows, s = 1 where x
    # violates a bound by 1e4, made the first steps remove a residual much larger
    # than s: steps to the boundary of 1e-6 for dozens of iterations.) Where x is
    # feasible this is s = max(h − Gx, 1), z = 1 / s.
    if init is None:
        hc = jnp.clip(hs, -1e3, 1e3)
        start_red = _kkt.Reduced(Qs, As, Gs, jnp.ones_like(hs), reg, chol=True)
        x0, y0, _ = start_red.apply_inverse((-qs, bs, hc))
        r = hs - Gs @ x0
        shift = jnp.maximum(-1.5 * jnp.min(r, initial=0.0), 0.0)
        s0 = jnp.maximum(r + shift, 1.0)
        z0 = jnp.maximum(shift, 1.0) / s0
        start = Iterate(x0, y0, z0, s0)
    else:
        g, c = sc.gamma, sc.c
        s_in = jnp.where(absent, 1.0, init.s * sc.EG / g)
        start = Iterate(init.x / (g * sc.D), c * init.y / (g * sc.EA),
                        jnp.maximum(c * init.z / (g * sc.EG), 1e-2),
                        jnp.maximum(jnp.where(jnp.isfinite(s_in), s_in, 1.0), 1e-2))  # fmt: skip

    # After the start's factorisation, not beside it: two batched LAPACK factorisations
    # that XLA:CPU may run at once can deadlock its thread pool (see _kkt.serial).
    convex = is_convex(_kkt.serial(Qs, after=start.x))

    def matvec(z, s):
        D = s / z

        def mv(d):
            dx, dy, dz = d
            return (Qs @ dx + As.T @ dy + Gs.T @ dz, As @ dx, Gs @ dx - D * dz)

        return mv

    def body(state):
        x, y, z, s = state.it
        pr = state.products
        rd = pr.Qx + qs + pr.ATy + pr.GTz
        rpe, rpi = pr.Ax - bs, pr.Gx + s - hs
        red = _kkt.Reduced(Qs, As, Gs, s / z, reg, chol=True)
        mv = matvec(z, s)
        forced = _REFINE if b.shape[0] > 0 else 0

        def newton(r4, refined=True):
            # Q dx + Aᵀdy + Gᵀdz = −rd, A dx = −rpe, G dx + ds = −rpi, z ds + s dz = −r4.
            rhs = (-rd, -rpe, -rpi + r4 / z)
            if refined:
                # Refinement rounds (one loop: one traced copy of the solve): `forced`
                # ones, then up to _MORE further while the residual is above `floor`
                # and still falls by 10 %: near the end, with dependent active rows,
                # each round removes only part of the regularisation's error, and an
                # inexact direction stalls the dual residual.
                floor = float(jnp.finfo(dtype).eps) ** 0.75 * max_of(*map(inf_norm, rhs))
                d, _ = _kkt.refine_from_zero(
                    red.apply_inverse, mv, rhs, 1 + forced + _MORE, always=1 + forced,
                    shrink=0.9, floor=floor,
                )  # fmt: skip
            else:
                d = red.apply_inverse(rhs)
            dx, dy, dz = d
            return dx, dy, dz, (-r4 - s * dz) / z

        if m == 0:
            dx, dy, dz, ds = newton(s * z)
        else:
            mu = jnp.dot(s, z) / m
            _, _, dz, ds = newton(s * z, refined=False)  # predictor (affine scaling)
            a_aff = jnp.minimum(_max_step(s, ds), _max_step(z, dz))
            mu_aff = jnp.dot(s + a_aff * ds, z + a_aff * dz) / m
            sigma = jnp.clip(mu_aff / jnp.maximum(mu, jnp.finfo(dtype).tiny), 0.0, 1.0) ** 3
            dx, dy, dz, ds = newton(s * z + ds * dz - sigma * mu)  # corrector
        alpha = jnp.minimum(1.0, _TAU * jnp.minimum(_max_step(s, ds), _max_step(z, dz)))
        new = Iterate(x + alpha * dx, y + alpha * dy, z + alpha * dz, s + alpha * ds)
        return classify(new, state.best, state.merit, state.k + 1)

    def frozen_body(state):
        # Under vmap the loop runs until every problem is done; finished ones keep state.
        new = body(state)
        return jax.tree.map(lambda a, b_: jnp.where(state.status < 0, a, b_), new, state)

    # Scalars typed like the data, not literals: a literal has no mesh in its type,
    # which breaks vmap over an Explicit mesh axis.
    zero = jnp.zeros_like(jnp.sum(start.x), dtype=dtype)
    first = classify(start, start, zero + jnp.inf, zero.astype(jnp.int32))
    final = jax.lax.while_loop(lambda st: st.status < 0, frozen_body, first)
    # A diverging iterate is the certificate, a scaled-converged one identifies the
    # active set; otherwise the most accurate one (by the honest rule) is returned.
    last = (final.status == PRIMAL_INFEASIBLE) | (final.status == DUAL_INFEASIBLE)
    last = last | (final.status == INACCURATE)
    chosen = jax.tree.map(lambda a, b_: jnp.where(last, a, b_), final.it, final.best)
    active = (chosen.z > chosen.s) & ~absent
    u = unscale(chosen, sc, absent)
    return Result(u.x, u.y, u.z, u.s, final.k, final.status, active, (Qs, As, Gs, sc))
