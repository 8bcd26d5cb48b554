r"""Optimality functions of the QP, the active-set linear solve, polishing, and the
attachment of exact derivatives through :func:`rootdiff.custom_root`.

On the active set ``a`` identified at the solution the KKT conditions are

.. math::  F(x, y, z) = \begin{bmatrix} Qx + q + A^⊤y + G^⊤(a ⊙ z) \\ Ax − b \\
           a ⊙ (Gx − h) − (1 − a) ⊙ z \end{bmatrix} = 0,

linear in ``(x, y, z)`` with the symmetric Jacobian
``[[Q, Aᵀ, G_aᵀ], [A, 0, 0], [G_a, 0, −diag(1 − a)]]``. It is solved in the
equilibrated coordinates of the interior point (:mod:`rootdiff.solvers._ipm`)
with the regularised reduced matrix of :mod:`rootdiff.solvers._kkt`, refined
against the exact ``F``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from rootdiff import _checks
from rootdiff.implicit import custom_root
from rootdiff.solvers import _kkt
from rootdiff.solvers.eq_qp import _sym

#: Most refinement steps of the active-set solves (each multiplies the error by
#: ``δ/(λ + δ)``: many are needed only for ill-conditioned ``Q``; they stop at rounding).
#: 16 for derivatives (30 cost the 256-QP NNLS batch 30 % run time, for 2 fewer wrong
#: derivatives in 2,800 float32 problems), 30 for the probe of :func:`derivative_defect`.
_REFINE = 16
_REFINE_PROBE = 30
#: A refinement round must shrink the residual (of some block) by this factor for the
#: next one to run. Not 0.5: with the curvature near the regularisation (``λ ≈ ρ``,
#: float32) rounds shrink it by 0.3–0.6 in turn, and a halving rule stopped at random
#: after a few rounds (derivatives 10–30 times their tolerance off, polished ``x``
#: 3e-4 off, depending on the rounding of the batch they were computed in).
_SHRINK = 0.8
#: The probe stops once its residual is at most this many rounding units of its
#: right-hand side (the shrink rule alone goes on at rounding, by chance).
_FLOOR = 10.0
_REFINE_POLISH = 50
#: Most active-set corrections of polishing (see :func:`polish_corrected`).
_ROUNDS = 3
#: Codes of :func:`derivative_defect` (mirrored by ``QPStatus.DERIVATIVE_*``).
EXACT, DEPENDENT_CONSTRAINTS, NOT_UNIQUE, DEGENERATE, UNPOLISHED = range(5)
#: Relative probe residual above which the active-set Jacobian counts as singular.
_SINGULAR = 1e-3
#: Rounding units from a kink at or below which a constraint counts as degenerate
#: (:func:`rootdiff.solvers.qp.degeneracy`; float32 sweeps: every wrong one-sided
#: derivative had at most 2.6, the non-degenerate problems at least 6000).
_DEGENERATE_LEVEL = 10.0


def qp_kkt_residual(primal_dual, Q, q, A, b, G, h, active):
    """KKT residual of the QP on an identified active set (the exact optimality function).

    ``active`` is a boolean ``(m,)`` mask; ``a`` below is its 0/1 value, ``ā = 1 − a``:

    .. math::  F(x, y, z) = \\begin{bmatrix} Q_s x + q + A^⊤y + G^⊤(a ⊙ z) \\\\ Ax − b
               \\\\ a ⊙ (Gx − h) − ā ⊙ z \\end{bmatrix}

    with ``Q_s = (Q + Qᵀ)/2``. Under strict complementarity the QP's solution is a
    root of ``F`` and the solution map's derivative is ``−(∂F)⁻¹ ∂_θF``. Inactive
    rows (including ``h_i = ±inf``) depend on neither ``G_i`` nor ``h_i``: they get
    zero cotangents.
    """
    x, y, z = primal_dual
    z_active = jnp.where(active, z, 0.0)
    G_active = jnp.where(active[:, None], G, 0.0)
    return (
        _sym(Q) @ x + q + A.T @ y + G_active.T @ z_active,
        A @ x - b,
        jnp.where(active, G_active @ x - jnp.where(active, h, 0.0), -z),
    )


def qp_central_path_residual(primal_dual, Q, q, A, b, G, h, smoothing, balanced=False):
    """KKT residual of the log-barrier problem: the central path at ``μ = smoothing``.

    ``F = (Q_s x + q + Aᵀy + Gᵀz, Ax − b, d ⊙ (z ⊙ (Gx − h) + κ))`` with ``κ =
    smoothing`` and a constant (non-differentiated) row scaling ``d``: ``1/z``
    (``balanced=False``, symmetric ``∂F``) or ``1/(z + |Gx − h|)`` (rows of unit
    size, for generic dense solvers). Rows with ``h_i = +inf`` are dropped.
    """
    x, y, z = primal_dual
    finite = jnp.isfinite(h)
    G = jnp.where(finite[:, None], G, 0.0)
    z = jnp.where(finite, z, 0.0)
    r = G @ x - jnp.where(finite, h, 0.0)
    denom = z + jnp.abs(r) if balanced else z
    scale = jax.lax.stop_gradient(1.0 / jnp.maximum(denom, jnp.finfo(r.dtype).tiny))
    last = jnp.where(finite, scale * (z * r + smoothing), primal_dual[2])
    return _sym(Q) @ x + q + A.T @ y + G.T @ z, A @ x - b, last


def balanced(scaled):
    """The interior point's equilibrated data with the cost rescaled to ``‖Q̂‖∞ = 1``.

    The interior point scales the cost by ``c = 1 / max(‖Q̂‖∞, ‖q̂‖∞)`` (after Ruiz), so
    that its iterates stay of unit size. The active-set Jacobian does not contain ``q``:
    there that scaling only shrinks the curvature ``c Q̂`` against the constraints'
    entries (≈ 1) and the fixed regularisation ``ρ``. With ``‖q̂‖ ≫ ‖Q̂‖`` (float32 data
    whose ``Q, q`` are ``1e3`` times ``G, h``) the reduced Hessian's smallest eigenvalue
    fell to ``2ρ``, where refinement gains only a factor 3 per round: the derivative
    solve stopped ``1e-5`` short of convergence, 4–200 times its tolerance off, and the
    probe of :func:`derivative_defect` under its threshold. Here ``c' = c / ‖c Q̂‖∞``
    (at most ``1e6``; ``c`` for ``Q̂ = 0``), which maps back to the same ``x, y, z``
    (``y = γ E_A ŷ / c'``, ``z = γ E_G ẑ / c'``).
    """
    Qs, As, Gs, sc = scaled
    size = _kkt.inf_norm(Qs)
    t = jnp.where(size > 0, 1.0 / jnp.where(size > 0, size, 1.0), 1.0)
    t = jnp.minimum(t, jnp.maximum(1e6 / sc.c, 1.0)).astype(Qs.dtype)
    return Qs * t, As, Gs, sc._replace(c=sc.c * t)


def active_set_factor(scaled, active):
    """The regularised reduced matrix of the active-set Jacobian, factorised (a pytree),
    in the :func:`balanced` coordinates."""
    Qs, As, Gs, _ = balanced(scaled)
    return _kkt.Reduced(Qs, As, Gs, jnp.where(active, 0.0, jnp.inf), _kkt.regularisation(Qs.dtype))


def active_set_solve(scaled, active, steps=None, red=None):
    """``solve(matvec, r)`` for the active-set Jacobian, factorised once.

    ``scaled = (Q̂, Â, Ĝ, scaling)`` from the interior point: the system is mapped to
    the equilibrated coordinates (``J = S Ĵ T⁻¹`` with diagonal ``S``, ``T``; the
    :func:`balanced` ones), solved there with the regularised reduced matrix (active
    rows as equalities, inactive ones eliminated), mapped back, then refined up to
    ``steps`` times (default 16) against the exact ``matvec`` it is given (so
    transposed systems work: ``J`` is symmetric), while the residual of some block (in
    equilibrated units) still shrinks by ``0.8`` per round
    (:func:`_kkt.refine_from_zero`; ``by_block=False``: while the whole residual does).
    ``red``: the :func:`active_set_factor` of ``active``, if already computed.
    ``solve.apply_inverse``: the regularised solve alone (no refinement).
    """
    steps = _REFINE if steps is None else steps
    red = active_set_factor(scaled, active) if red is None else red
    sc = balanced(scaled)[3]
    g, c = sc.gamma, sc.c
    row_i = jnp.where(active, g / sc.EG, g * sc.EG / c)

    def apply_inverse(r):
        # S⁻¹ r, with S = diag((γ/c)/D, γ/E_A, row_i) the scaling of F's blocks.
        rx, ry, rz = r[0] * sc.D * c / g, r[1] * sc.EA / g, r[2] / row_i
        dx, dy, dz = red.apply_inverse((rx, ry, jnp.where(active, rz, 0.0)))
        dz = jnp.where(active, dz, -rz)
        return g * sc.D * dx, g * sc.EA * dy / c, g * sc.EG * dz / c

    def scaled_parts(r):
        # Sizes of the residual's blocks in the equilibrated units the solve works in
        # (S⁻¹ r). In the data's units one block can sit at its rounding while another
        # still shrinks five-fold per round (float32, Q ≈ 1e-5 and G ≈ 200: the z rows'
        # rounding, 0.2, hid an x block going from 1e-2 to 1e-7, and refinement
        # stopped after one round with the derivative 20 % off).
        rx, ry, rz = r[0] * sc.D * c / g, r[1] * sc.EA / g, r[2] / row_i
        return _kkt.inf_norm(rx), _kkt.inf_norm(ry), _kkt.inf_norm(rz)

    def solve(matvec, rhs, steps=steps, by_block=True):
        parts = scaled_parts if by_block else None
        # No floor: one relative to the largest block stopped the others early (float32
        # derivatives 20 times their tolerance off), one relative to polishing's
        # right-hand side left x = 1e-17 where x* = 0 (the relative merit then fails).
        return _kkt.refine_from_zero(
            apply_inverse, matvec, rhs, steps + 1, blocks=parts, shrink=_SHRINK
        )[0]

    solve.factor = red
    solve.apply_inverse = apply_inverse
    return solve


def polish(sol, active, data, solve):
    """One Newton step on :func:`qp_kkt_residual` from the interior point's answer.

    On a fixed active set the KKT conditions are linear, so one step solves the
    equality-constrained QP of that set to rounding. The caller keeps the step only
    where it stays optimal and is more accurate.
    """
    Q, q, A, b, G, h = data
    residual, matvec = jax.linearize(lambda v: qp_kkt_residual(v, Q, q, A, b, G, h, active), sol)
    # The whole residual's rule: per block, Maros–Meszaros points at float64's floor
    # move (QSHARE1B's gap 1.6e-10 -> 1.5e-9).
    step = solve(matvec, residual, steps=_REFINE_POLISH, by_block=False)
    x, y, z = (v - d for v, d in zip(sol, step, strict=True))
    return x, y, jnp.where(active, z, 0.0)


def _probe(scaled, active):
    """The generic right-hand side ``(v_x, v_y, v_z)`` of :func:`derivative_defect`
    (``v_z`` zero on inactive rows), in equilibrated units."""
    Qs, As, Gs, _ = scaled
    n, p, m = Qs.shape[0], As.shape[0], Gs.shape[0]
    dtype = Qs.dtype

    def generic(k, shift):  # deterministic, no sign pattern aligned with any structure
        return jnp.cos(shift + 2.399963 * jnp.arange(k, dtype=dtype) ** 1.5)

    # Zeros typed like the data (batched / sharded alike), not literals.
    zx, zy, zz = jnp.zeros_like(Qs[0]), jnp.zeros_like(As[:, 0]), jnp.zeros_like(Gs[:, 0])
    return zx + generic(n, 0.3), zy + generic(p, 0.7), jnp.where(active, zz + generic(m, 1.1), zz)


def slack_margin(x, Gf, hf):
    r"""The slacks ``h_i − G_i x`` in rounding units of ``G_i x − h_i``:

    .. math::  \frac{h_i − G_i x}{ε\,(|h_i| + |G_i|\,|x|)}

    (``ε`` the dtype's machine epsilon; the denominator at least the smallest normal
    number). ``Gf``, ``hf``: ``G`` and ``h`` with absent rows zeroed (``(m, n)``,
    ``(m,)``). Below ``−1`` a row is violated beyond rounding; near zero (from either
    side) it is at a kink (:func:`rootdiff.solvers.qp.degeneracy`).
    """
    eps, tiny = jnp.finfo(hf.dtype).eps, jnp.finfo(hf.dtype).tiny
    scale = jnp.abs(hf) + jnp.abs(Gf) @ jnp.abs(x)
    return (hf - Gf @ x) / jnp.maximum(eps * scale, tiny)


def polish_and_probe(sol, active, data, scaled, absent, merit, rounds=_ROUNDS, probe=True):
    """:func:`polish` on ``active`` with active-set corrections, then (``probe``)
    :func:`derivative_defect` with the factorisation polishing leaves.

    A polished point is *consistent* if it is finite, its active multipliers are
    ``≥ 0`` and it violates no inactive row (beyond the rounding of ``G_i x − h_i``).
    It is kept if it is finite with multipliers ``≥ 0`` and at least as accurate as
    ``sol`` (by ``merit``, lower is better), or consistent and within the tolerance
    (``merit ≤ 1``). When it is not consistent, the active set was misidentified (a
    near-degenerate row at the end of the interior point): rows with a negative
    multiplier leave it, inactive rows the polished ``x`` violates join it, and
    polishing is tried again, at most ``rounds`` times (a ``while_loop``: nothing
    more runs when the first try is consistent). The first consistent point is
    returned, else the kept one of lowest merit.
    Each round measures ``sol`` and the polished point at once: ``merit`` and the
    :func:`slack_margin` of every row (one traced copy of each in the program; the
    residuals are also the ones reported, the margins serve the consistency test and
    :func:`rootdiff.solvers.qp.degeneracy`).

    ``merit(point)`` returns ``(value, residuals)`` (as :func:`rootdiff.solvers._ipm.merit`).
    Returns ``(point, active, solve, (value, residuals, slack), taken, defect)``: the
    polished point, its active set and active-set ``solve`` if one was kept, else
    ``sol``, ``active`` and its solve; ``merit`` and :func:`slack_margin` of the
    returned point; whether a polished point was kept; and :func:`derivative_defect`
    for the returned active set (``None`` without ``probe``).
    """
    G, h = data[4], data[5]
    Gf, hf = jnp.where(absent[:, None], 0.0, G), jnp.where(absent, 0.0, h)
    # Placeholders for the loop's first carry, typed like the data (not literals).
    zero = jnp.zeros_like(jnp.sum(sol[0]) + jnp.sum(scaled[0][0]))
    stack = functools.partial(jax.tree.map, lambda *c: jnp.stack(c))

    def violated(slack, act):
        # Inactive rows violated by more than the rounding of G_i x − h_i.
        return (slack < -1.0) & ~act & ~absent

    def measure(point):  # (merit value, residuals, slack margins)
        return (*merit(point), slack_margin(point[0], Gf, hf))

    def attempt(act, red):
        pol = polish(sol, act, data, active_set_solve(scaled, act, red=red))
        both = jax.vmap(measure)(stack(sol, pol))
        sol_meas, pol_meas = (jax.tree.map(lambda v, i=i: v[i], both) for i in (0, 1))
        z_min = jnp.min(jnp.where(act, pol[2], jnp.inf), initial=jnp.inf)
        kkt = jnp.all(jnp.isfinite(pol[0])) & (z_min >= 0)
        # Consistent: no inactive row violated either, so the active set is the
        # answer's (the derivative's branch). A point within the tolerance can still
        # violate a row whose multiplier is small (qpax's float32 benchmark: 2.7e-5,
        # z = 7e-7). A consistent point meeting the tolerance is kept even if ``sol``
        # measures lower: the merit's duality gap cancels terms (in float32 its
        # rounding is 5 % of the tolerance) and cannot see ``sol``'s s ⊙ z ≠ 0, which
        # moves x by about √(sᵀz) (5e-4 on that benchmark).
        consistent = kkt & ~jnp.any(violated(pol_meas[2], act))
        better = pol_meas[0] <= sol_meas[0]
        take = kkt & (better | (consistent & (pol_meas[0] <= 1.0)))
        return pol, pol_meas, sol_meas, take, consistent & take

    def cond(st):
        k, *_, consistent, changed = st
        return ~consistent & changed & (k <= rounds)

    def body(st):
        # Round 0 polishes on ``active``; later rounds on the last one's correction.
        # All rounds share this one traced (and compiled) body. The best point so far
        # is kept: a consistent one first, else the lowest merit.
        k, act, (last, last_slack), b_act, b_red, b_pol, b_meas, _, b_take, _, _ = st
        new = jnp.where(k == 0, act, (act & (last[2] > 0)) | violated(last_slack, act))
        # "+ zero": typed like the carry (device-varying under shard_map when the
        # data are), although parts of the factor depend on replicated data only.
        red = jax.tree.map(lambda a: a + zero.astype(a.dtype), active_set_factor(scaled, new))
        pol, pol_meas, sol_meas, take, consistent = attempt(new, red)
        better = take & (consistent | ~b_take | (pol_meas[0] < b_meas[0]))
        sel = functools.partial(jax.tree.map, lambda a, b: jnp.where(better, a, b))
        # Without a kept point the factor of round 0 (on ``active``) is returned.
        b_red = jax.tree.map(lambda a, b: jnp.where(better | (k == 0), a, b), red, b_red)
        b_act, b_pol, b_meas = sel((new, pol, pol_meas), (b_act, b_pol, b_meas))
        changed = (k == 0) | jnp.any(new != act)
        return (k + 1, new, (pol, pol_meas[2]), b_act, b_red, b_pol, b_meas, sol_meas,
                b_take | better, consistent, changed)  # fmt: skip

    def placeholder(shapes):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) + zero.astype(s.dtype), shapes)

    red_init = placeholder(jax.eval_shape(active_set_factor, scaled, active))
    meas_init = placeholder(jax.eval_shape(measure, sol))
    k0 = zero.astype(jnp.int32)
    last = (sol, meas_init[2])
    init = (k0, active, last, active, red_init, sol, meas_init, meas_init, k0 < 0, k0 < 0, k0 == 0)
    out = jax.lax.while_loop(cond, body, init)
    _, _, _, act, red, pol, pol_meas, sol_meas, take, _, _ = out
    sel = functools.partial(jax.tree.map, lambda a, b: jnp.where(take, a, b))
    defect = derivative_defect(scaled, act, red) if probe else None
    solve = active_set_solve(scaled, act, red=red)
    return pol, act, solve, sel(pol_meas, sol_meas), take, defect


def _flagged(residual):
    """``residual`` plus ``+inf`` where the solver reported failure (``ok`` False).

    This routes solve_qp's status through custom_root's ``check``: a failed problem
    is not a root of the optimality function, so ``check="nan"`` poisons it (and its
    derivatives) like any other unconverged root.
    """

    def F(primal_dual, *args):
        *args, ok = args
        r = residual(primal_dual, *args)
        bad = jnp.where(ok, 0.0, jnp.inf).astype(r[0].dtype)
        return (r[0] + bad, *r[1:])

    return F


def differentiable(sol, inputs, *, ok, active=None, solve=None, smoothing=0.0, s=None,
                   diff_solve=None, check="off"):  # fmt: skip
    """Attach the implicit derivative to ``sol = (x, y, z)`` via :func:`custom_root`.

    ``smoothing = 0``: :func:`qp_kkt_residual` on ``active``, solved by ``solve``
    (:func:`active_set_solve`) unless ``diff_solve`` names another linear solver.
    ``smoothing > 0``: :func:`qp_central_path_residual` (``s``: slacks of ``sol``).
    ``check`` is custom_root's, applied to problems with ``ok`` False.
    """
    if smoothing == 0:
        residual, extra = qp_kkt_residual, (active,)
    else:
        residual, extra = qp_central_path_residual, (float(smoothing),)
        if diff_solve is None:
            G = inputs[4]
            x, _, z = sol
            w = z / s
            solve = _central_path_solve(inputs[0], inputs[2], G, w)
        else:
            residual = functools.partial(qp_central_path_residual, balanced=True)
    symmetric = diff_solve is None
    if diff_solve is not None:
        solve = diff_solve
    dtype = sol[0].dtype
    tol = float(jnp.finfo(dtype).max)

    @custom_root(_flagged(residual), solve=solve, symmetric=symmetric, check=check,
                 residual_tol=tol)  # fmt: skip
    def solver(_init, *args):
        return sol

    return solver(None, *inputs, *extra, jax.lax.stop_gradient(ok))


def _central_path_solve(Q, A, G, w):
    """Solve for the central-path Jacobian ``[[Q, Aᵀ, Gᵀ], [A, 0, 0], [G, 0, −1/w]]``."""
    sg = jax.lax.stop_gradient
    Q, A, G, w = sg(_sym(Q)), sg(A), sg(G), sg(w)
    finite = jnp.isfinite(w) & (w > 0)
    G = jnp.where(finite[:, None], G, 0.0)
    red = _kkt.Reduced(Q, A, G, jnp.where(finite, 1.0 / jnp.where(finite, w, 1.0), jnp.inf),
                       _kkt.regularisation(Q.dtype))  # fmt: skip

    def apply_inverse(r):
        dx, dy, dz = red.apply_inverse(r)
        return dx, dy, jnp.where(finite, dz, r[2])

    def solve(matvec, rhs):
        # Three solves, unconditionally (the regularised one and two refinement rounds).
        return _kkt.refine_from_zero(apply_inverse, matvec, rhs, 3, always=3)[0]

    return solve


def derivative_defect(scaled, active, red, steps=None):
    r"""Whether the solution map has a derivative at the answer: a code and two residuals.

    The derivative solves systems with the active-set Jacobian
    ``J = [[Q, Aᵀ, G_aᵀ], [A, 0, 0], [G_a, 0, 0]]``. For positive semidefinite ``Q``
    its null space is the direct sum of

    * ``{(d, 0, 0) : Qd = 0, Ad = 0, G_a d = 0}`` — the minimiser is **not unique**
      (the reduced Hessian on the null space of the active constraints is
      singular): ``x`` can move along ``d`` at no cost, no derivative exists;
    * ``{(0, u, w) : Aᵀu + G_aᵀw = 0}`` — the active constraints are **linearly
      dependent**: ``x`` is unique and its derivative w.r.t. ``Q`` and ``q`` is
      exact, but the multipliers are not, and a generic change of ``b`` or ``h``
      (or ``A``, ``G``) changes the active set at once (no derivative).

    Each is detected by one probe system ``J d = r`` solved as the derivative's are
    (the regularised factor ``red`` from polishing, plus up to ``steps`` rounds of
    refinement against the exact ``J``), in the equilibrated coordinates: a probe
    ``r = (v, 0, 0)`` is consistent exactly when the first part is trivial, and
    ``r = (0, v_y, v_z)`` exactly when the second is (``v`` generic). The
    relative residual ``‖r − J d‖∞ / ‖r‖∞`` left after refinement is at rounding
    level for a consistent probe and ``O(1)`` otherwise; above ``1e-3`` the
    defect is reported: ``J`` is singular at least at the level of the
    regularisation (in the :func:`balanced` coordinates, where the cost is scaled by
    ``‖Q̂‖`` alone: an eigenvalue below about ``ρ / 4`` shrinks the residual by less
    than ``0.8`` per round, and refinement stops with it ``O(1)``; one above converges
    within the ``30`` rounds). An ill-conditioned but regular ``J`` (whose derivative
    is merely less accurate) is not flagged.

    Returns ``(code, (res_unique, res_independent))`` with ``code`` one of
    ``EXACT``, ``DEPENDENT_CONSTRAINTS``, ``NOT_UNIQUE`` (the worse one wins).
    """
    steps = _REFINE_PROBE if steps is None else steps
    Qs, As, Gs, _ = balanced(scaled)
    Ga = jnp.where(active[:, None], Gs, 0.0)

    def mv(d):
        dx, dy, dz = d  # dz is zero on inactive rows (their weight in red is 0)
        return Qs @ dx + As.T @ dy + Ga.T @ dz, As @ dx, Ga @ dx

    # One probe r = (v_x, v_y, v_z): its parts are the two probes above. The null
    # vectors of the first kind live in the x block and those of the second in the
    # (y, z) blocks, so what refinement cannot remove stays in the block of its kind:
    # each block's residual is its probe's (one loop, going on while either shrinks).
    # The probe is a constant: typed like the factor it is solved with (under shard_map
    # a constant does not vary along the mesh axis, the loop's carry after one solve
    # does, and a loop's carry must keep its type).
    fac = jax.tree.leaves(red.fac)[0]
    r = tuple(_kkt.serial(v, after=fac) for v in _probe(scaled, active))

    def blocks(e):
        return _kkt.inf_norm(e[0]), _kkt.max_of(_kkt.inf_norm(e[1]), _kkt.inf_norm(e[2]))

    floor = _FLOOR * jnp.finfo(Qs.dtype).eps * _kkt.max_of(*blocks(r))
    _, errs = _kkt.refine_from_zero(
        red.apply_inverse, mv, r, steps + 1, blocks=blocks, shrink=_SHRINK, floor=floor
    )
    tiny = jnp.finfo(Qs.dtype).tiny
    res_x, res_c = (
        jnp.where(jnp.isnan(e), jnp.inf, e / jnp.maximum(size, tiny))
        for e, size in zip(errs, blocks(r), strict=True)
    )
    tol = _SINGULAR
    code = jnp.where(res_x > tol, NOT_UNIQUE, jnp.where(res_c > tol, DEPENDENT_CONSTRAINTS, EXACT))
    return code.astype(jnp.int32), (res_x, res_c)


def flag_derivatives(values, inputs, defect, check):
    """``values`` unchanged; their derivatives reported per ``check`` where none exists.

    ``defect = (code, (res_x, res_c, margin))``: :func:`derivative_defect`'s code (or
    ``DEGENERATE``, ``UNPOLISHED``), its residuals and the degeneracy margin in rounding units
    (:func:`rootdiff.solvers.qp.degeneracy`). Reported when the minimiser is not
    unique, a constraint is degenerate or no active set was confirmed (any input
    differentiated), or when the
    active constraints are dependent and ``A``, ``b``, ``G`` or ``h``
    (``inputs[2:]``) is differentiated. ``check``: ``"warn"`` / ``"raise"`` report (once per call,
    when the derivative is taken), ``"nan"`` makes those derivatives NaN (the
    values stay), ``"off"`` only records the code in ``QPInfo.derivative``.
    """
    if check == "off":
        return values
    site = _checks.user_site() if check in ("warn", "raise") else None
    code, (res_x, res_c, margin) = jax.lax.stop_gradient(defect)

    @jax.custom_jvp
    def ident(values, inputs, code, res):
        return values

    def rule(primals, tangents):
        values, inputs, code, (res_x, res_c, margin) = primals
        v_dot, in_dot, _, _ = tangents
        live = [not isinstance(t, SymbolicZero) for t in in_dot]
        bad = jnp.zeros((), bool)
        if any(live):
            bad = bad | (code == NOT_UNIQUE) | (code == DEGENERATE) | (code == UNPOLISHED)
        if any(live[2:]):
            bad = bad | (code == DEPENDENT_CONSTRAINTS)
        if check == "nan":
            factor = jnp.where(bad, jnp.nan, jnp.ones_like(res_x))
        else:
            factor = _checks.guard(
                jnp.ones_like(res_x),
                jnp.stack([jnp.maximum(res_x, res_c), margin.astype(res_x.dtype)]),
                jnp.asarray([_SINGULAR, _DEGENERATE_LEVEL], res_x.dtype), jnp.int32(-1),
                mode=check, ok=~bad, site=site,
                label=("residual of a probe solve with the active-set Jacobian",
                       "rounding units from a kink (degenerate at or below the tolerance)"),
                what="the derivative of solve_qp (it does not exist here: the minimiser is "
                "not unique, a constraint is degenerate to working precision, polishing "
                "confirmed no active set, or the active constraints are linearly dependent "
                "and A, b, G or h is differentiated; return_info=True's info.derivative "
                "says which)",
            )  # fmt: skip

        def scale(v, t):
            t = jnp.zeros_like(v) if isinstance(t, SymbolicZero) else t
            return t * factor.astype(t.dtype)

        return values, jax.tree.map(scale, values, v_dot)

    ident.defjvp(rule, symbolic_zeros=True)
    return ident(values, inputs, code, (res_x, res_c, margin))
