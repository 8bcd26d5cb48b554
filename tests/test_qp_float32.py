"""float32 QPs: every answer and derivative of ``solve_qp`` is right or flagged.

Right: ``x`` within ``1e-4`` (relative to ``1 + ‖x‖∞``) and the Jacobian of ``x`` with
respect to ``(q, b, h)`` within ``1e-4 + 300 · cond · eps32`` in relative sensitivities
(``|∂x_i/∂θ_j| · scale(θ_j) / ‖x‖∞``, ``cond`` of the equilibrated active-set KKT
matrix), against a float64 NumPy solve of the same (float32-rounded) data on the
known active set. Flagged: ``info.status`` not solved or ``info.derivative`` not exact
(then ``check="warn"`` warns when the derivative is taken).

The problems are built from a chosen KKT point (``x*``, ``y*``, active set, ``z*``,
slacks), so the active set of the reference is known; one compiled program (float32,
``jit(vmap(...))``) solves them all.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rootdiff
from rootdiff import QPStatus

N, P, M = 6, 2, 12
EPS32 = float(np.finfo(np.float32).eps)
KINDS = ("plain", "near_degenerate", "huge_bounds", "scaled", "singular_Q")


def _kkt_problem(rng, kind, tiny=None, scale=None):
    """Data whose solution has a chosen active set; float32-rounded (as float64)."""
    cq = 10 ** rng.uniform(0, 3)
    U = np.linalg.qr(rng.standard_normal((N, N)))[0]
    ev = np.exp(rng.uniform(0, np.log(cq), N))
    ev[0], ev[-1] = 1.0, cq
    if kind == "singular_Q":
        ev[: rng.integers(1, N)] = 0.0
    Q = (U * ev) @ U.T / cq
    A, G = rng.standard_normal((P, N)), rng.standard_normal((M, N))
    x, y = rng.standard_normal(N), rng.standard_normal(P)
    active = np.zeros(M, bool)
    active[rng.choice(M, rng.integers(1, N - P + 1), replace=False)] = True
    z = np.where(active, 10 ** rng.uniform(-2, 0, M), 0.0)
    s = np.where(active, 0.0, 10 ** rng.uniform(-2, 0, M))
    if kind == "near_degenerate":  # a multiplier or a slack near zero
        tiny = 10 ** rng.uniform(-9, -3) if tiny is None else tiny
        if rng.random() < 0.5:
            z[rng.choice(np.flatnonzero(active))] = tiny
        else:
            s[rng.choice(np.flatnonzero(~active))] = tiny
    h, b, q = G @ x + s, A @ x, -(Q @ x + A.T @ y + G.T @ z)
    if kind == "huge_bounds":  # loose rows written as 1e20 / inf
        for i in rng.choice(np.flatnonzero(~active), 2, replace=False):
            h[i] = rng.choice([1e20, np.inf])
    if kind == "scaled":
        c, d = scale if scale is not None else 10 ** rng.uniform(-4, 4, 2)
        Q, q, G, h = Q * c, q * c, G * d, h * d
    data = [np.asarray(v, np.float32).astype(np.float64) for v in (Q, q, A, b, G, h)]
    return data, active


def _reference(Q, q, A, b, G, h, active):
    """``x`` and ``∂x/∂(q, b, h)`` of the active set (float64), and the condition number
    of the equilibrated KKT matrix; ``None`` if the rounded data left the active set's
    KKT point not strictly complementary (then the reference is not known)."""
    E = np.concatenate([A, G[active]])
    k = len(E)
    K = np.block([[Q, E.T], [E, np.zeros((k, k))]])
    Ki = np.linalg.inv(K)
    sol = Ki @ np.concatenate([-q, b, h[active]])
    x, z = sol[:N], sol[N + P :]
    slack = np.where(np.isfinite(h), h - G @ x, np.inf)
    if np.any(z <= 0) or np.any(slack[~active] <= 0):
        return None
    J = np.zeros((N, N + P + M))
    J[:, :N], J[:, N : N + P] = -Ki[:N, :N], Ki[:N, N : N + P]
    J[:, N + P + np.flatnonzero(active)] = Ki[:N, N + P :]
    d = np.ones(len(K))
    for _ in range(30):  # Ruiz
        d /= np.sqrt(np.abs(K * d[:, None] * d[None, :]).max(axis=1))
    return x, J, np.linalg.cond(K * d[:, None] * d[None, :])


def _sensitivity_error(J, J_ref, data, x):
    """``max |ΔJ_ij| · scale(θ_j) / ‖x‖∞`` (the error of relative sensitivities)."""
    Q, q, A, b, G, h = data
    nx = np.abs(x).max()
    hf = np.where(np.abs(h) < 1e20, h, 0.0)
    scale = np.concatenate([
        np.full(N, max(np.abs(q).max(), np.abs(Q).max() * nx)),
        np.maximum(np.abs(b), np.abs(A).max(axis=1) * nx),
        np.maximum(np.abs(hf), np.abs(G).max(axis=1) * nx),
    ])  # fmt: skip
    return np.abs((J - J_ref) * scale).max() / max(nx, 1e-30)


@jax.jit
@jax.vmap
def _solve32(Q, q, A, b, G, h):
    def x_of(q, b, h):
        return rootdiff.solve_qp(Q, q, A, b, G, h)  # check="warn", the default

    _, info = rootdiff.solve_qp(Q, q, A, b, G, h, return_info=True)
    Jq, Jb, Jh = jax.jacfwd(x_of, argnums=(0, 1, 2))(q, b, h)
    return info.x, info.status, info.derivative, jnp.concatenate([Jq, Jb, Jh], axis=1)


# Three constructed cases, then a seeded sweep of every kind.
SCALED = "scaled: Q ~ 1e-5, G ~ 200"
NEAR_KINK = "multiplier 1e-9"
UNPOLISHED = "interior point's answer"
COST_DOMINATES = "scaled: q dominates Q"


def _sweep_problem(seed, index):
    """Problem ``index`` of a sweep in the order of :func:`solved`'s (kinds in turn)."""
    rng = np.random.default_rng(seed)
    for i in range(index + 1):
        data, active = _kkt_problem(rng, KINDS[i % len(KINDS)])
    return data, active


@pytest.fixture(scope="module")
def solved():
    rng = np.random.default_rng(0)
    cases = [(SCALED, *_kkt_problem(np.random.default_rng(7), "scaled", scale=(1e-5, 200.0)))]
    cases.append((NEAR_KINK, *_kkt_problem(np.random.default_rng(1), "near_degenerate", 1e-9)))
    cases.append((UNPOLISHED, *_sweep_problem(2, 192)))
    cases.append((COST_DOMINATES, *_sweep_problem(0, 153)))
    cases += [(k, *_kkt_problem(rng, k)) for _ in range(8) for k in KINDS]
    stacked = [np.stack([c[1][j] for c in cases]).astype(np.float32) for j in range(6)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [np.asarray(v) for v in jax.block_until_ready(_solve32(*stacked))]
    messages = [str(w.message) for w in caught if w.category is rootdiff.ConvergenceWarning]
    return cases, out, messages


def _verdicts(cases, out):
    """``(name, flagged, x error, sensitivity error, tolerance)`` per problem with a reference."""
    x32, status, derivative, J32 = out
    rows = []
    for i, (name, data, active) in enumerate(cases):
        ref = _reference(*data, active)
        if ref is None:
            continue
        x, J, cond = ref
        flagged = status[i] != QPStatus.SOLVED or derivative[i] != QPStatus.DERIVATIVE_EXACT
        ex = np.abs(x32[i] - x).max() / (1.0 + np.abs(x).max())
        eJ = _sensitivity_error(J32[i].astype(np.float64), J, data, x)
        rows.append((name, flagged, ex, eJ, 1e-4 + 300 * cond * EPS32))
    return rows


def test_float32_sweep_right_or_flagged(solved):
    cases, out, messages = solved
    rows = _verdicts(cases, out)
    wrong = [r for r in rows if not r[1] and (r[2] > 1e-4 or r[3] > r[4])]
    assert not wrong, f"wrong and not flagged: {wrong}"
    # The sweep is not vacuous: most problems are right without a flag, some are flagged
    # (and the flagged derivatives were reported by check="warn").
    assert sum(not r[1] for r in rows) >= 0.7 * len(rows) and len(rows) >= 35
    assert any(r[1] for r in rows) and messages


def test_near_degenerate_multiplier_is_flagged_as_degenerate(solved):
    # A multiplier of 1e-9 is below float32's rounding of the dual equation: which side of
    # the kink the answer lands on is decided by rounding (the derivative O(1) off).
    cases, out, messages = solved
    i = next(k for k, c in enumerate(cases) if c[0] == NEAR_KINK)
    assert int(out[1][i]) == QPStatus.SOLVED
    assert int(out[2][i]) == QPStatus.DEGENERATE
    assert any("degenerate" in m for m in messages)


def test_scaled_data_derivative_is_refined_to_float32_accuracy(solved):
    # Q ~ 1e-5 and G ~ 200: in the data's units the z rows' rounding dominates the
    # derivative solve's residual; refinement must judge progress in equilibrated units.
    cases, out, _ = solved
    i = next(k for k, c in enumerate(cases) if c[0] == SCALED)
    name, flagged, ex, eJ, tol = next(r for r in _verdicts([cases[i]], [v[i : i + 1] for v in out]))
    assert not flagged and ex < 1e-4 and eJ < 1e-3, (ex, eJ, tol)


def test_answer_that_polishing_cannot_confirm_is_flagged(solved):
    # Huge bounds (1e20, inf) on two rows: the interior point meets the float32 tolerance
    # with the one active row still taken as inactive (z = 9e-3, s = 2e-3 there), and no
    # polished active set satisfies the KKT signs within three corrections. The answer
    # is the interior point's, 3e-3 from x* (√(sᵀz)), so its derivative is flagged.
    cases, out, messages = solved
    i = next(k for k, c in enumerate(cases) if c[0] == UNPOLISHED)
    assert int(out[1][i]) == QPStatus.SOLVED
    x_ref = _reference(*cases[i][1], cases[i][2])[0]
    right = np.abs(out[0][i] - x_ref).max() <= 1e-4 * (1 + np.abs(x_ref).max())
    assert right or int(out[2][i]) == QPStatus.UNPOLISHED
    assert any("polishing" in m for m in messages)


def test_qpax_benchmark_small_multiplier_in_float32():
    # qpax's benchmark problem 118 of the batch of 512 (float32): one multiplier is 7e-7.
    # The interior point stops with it inactive, and the polished point violated that
    # row by 2.7e-5 (within the tolerance), so the derivative was of the wrong active
    # set: 31 % off, unflagged. Now the row is corrected into the active set.
    from benchmarks.qp import qpax_batch, reference_one

    data = [v[118] for v in qpax_batch(512, dtype=np.float32)]
    data64 = [v.astype(np.float64) for v in data]

    def loss(Q, q, A, b, G, h):
        x, info = rootdiff.solve_qp(Q, q, A, b, G, h, return_info=True)
        return jnp.sum((x - 1.0) ** 2), info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rootdiff.ConvergenceWarning)  # 8 rounding units
        (_, info), g = jax.jit(jax.value_and_grad(loss, argnums=range(6), has_aux=True))(*data)
    active = np.zeros(64, bool)
    active[[0, 6, 9, 14, 20, 26, 32, 33, 35, 36, 37, 42, 45, 47, 49, 50, 51, 53, 54, 56, 63]] = True
    g_ref = reference_one(*data64, active)[0]
    err = np.linalg.norm(np.concatenate([np.ravel(a - r) for a, r in zip(g, g_ref)]))
    assert int(info.status) == QPStatus.SOLVED
    assert err <= 1e-5 * np.linalg.norm(np.concatenate([np.ravel(r) for r in g_ref]))


def test_derivative_right_when_linear_cost_dominates_curvature(solved):
    # Q and q scaled 2000 times G and h: the interior point's cost scaling (by ‖q̂‖) left
    # the curvature of the active-set Jacobian at twice its regularisation, refinement
    # stopped 1e-5 short, and the derivative was 200 times its tolerance off, unflagged.
    # The active-set solves now scale the cost by ‖Q̂‖ alone (q is not in that matrix).
    cases, out, _ = solved
    i = next(k for k, c in enumerate(cases) if c[0] == COST_DOMINATES)
    name, flagged, ex, eJ, tol = _verdicts([cases[i]], [v[i : i + 1] for v in out])[0]
    assert not flagged and ex < 1e-4 and eJ < tol, (flagged, ex, eJ, tol)


# --- qpprobe


def test_answer_zero_with_zero_right_hand_side_is_solved_in_float32(float32):
    # x* = 0, every row active with h = 0 (q = −Gᵀz*, z* > 0): the relative tolerance has
    # no scale there (any x ≠ 0 failed it): INACCURATE or not converged, now solved.
    rng = np.random.default_rng(0)
    n, m = 5, 3
    data = []
    for _ in range(3):
        M, G = rng.standard_normal((8, n)), rng.standard_normal((m, n))
        z = np.abs(rng.standard_normal(m)) + 0.5
        data.append((M.T @ M + 0.1 * np.eye(n), -G.T @ z, G, np.zeros(m), z))
    Q, q, G, h, z = (np.stack(v).astype(np.float32) for v in zip(*data, strict=True))

    def one(Q, q, G, h):
        x, info = rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True, check="off")
        J = jax.jacfwd(lambda q: rootdiff.solve_qp(Q, q, None, None, G, h, check="off"))(q)
        return x, info.status, info.derivative, info.z, J

    x, status, derivative, z_out, J = jax.jit(jax.vmap(one))(Q, q, G, h)
    assert x.dtype == jnp.float32
    assert np.all(np.asarray(status) == QPStatus.SOLVED), status
    assert np.all(np.asarray(derivative) == QPStatus.DERIVATIVE_EXACT), derivative
    assert np.max(np.abs(x)) < 1e-5
    np.testing.assert_allclose(z_out, z, rtol=1e-4)
    for k in range(len(q)):  # closed form on the active set: −Z (ZᵀQZ)⁻¹ Zᵀ
        Gk, Qk = G[k].astype(np.float64), Q[k].astype(np.float64)
        Z = np.linalg.svd(Gk)[2][m:].T
        np.testing.assert_allclose(J[k], -Z @ np.linalg.solve(Z.T @ Qk @ Z, Z.T), atol=1e-4)
