r"""Batched QPs: ``jit(vmap(value_and_grad(loss)))`` through a QP solver (seed 000).

``min ½xᵀQx + qᵀx`` s.t. ``Ax = b``, ``Gx ≤ h``; per-problem loss ``‖x* − 1‖²``,
gradient with respect to all six arguments (qpax's argument order). Three batches:

* seed 000: 256 non-negative least-squares problems (5 variables, 10 rows);
* 64 QPs with 50 variables, 10 equalities and 100 inequalities;
* qpax's own benchmark configuration (its ``benchmarks/benchmark_batch_forward_backward.py``:
  32 variables, 64 inequalities, random strictly feasible problems), batch 1 … 512,
  float64 and float32 (generated here with the same distributions).

Every implementation receives the symmetrised ``(Q + Qᵀ)/2`` inside the loss, so
all report the same (symmetric) ``∂Q``.

Reference (numpy float64, independent of every solver benchmarked): an accurate
interior-point solve (qpax at ``solver_tol=1e-12``) only *identifies* the active
set; the exact solution then solves the equality-constrained KKT system with the
active inequalities as equalities, and is verified (primal feasibility, dual
signs, strict complementarity). The derivative is the exact derivative of that
system; it is validated by central differences of the active-set solution map
along random directions, and the worst disagreement is reported in the note.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, bench_all

jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------- problems


def nnls_batch(n_qps: int = 256, n_vars: int = 5, n_rows: int = 10, seed: int = 0):
    """Seed 000's problems: NNLS ``min ½‖Fx − g‖²`` s.t. ``x ≥ 0`` in QP form."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n_qps, n_rows, n_vars))
    g = rng.standard_normal((n_qps, n_rows))
    Q = np.einsum("bri,brj->bij", F, F)
    q = -np.einsum("bri,br->bi", F, g)
    A = np.zeros((n_qps, 0, n_vars))
    b = np.zeros((n_qps, 0))
    G = np.broadcast_to(-np.eye(n_vars), (n_qps, n_vars, n_vars)).copy()
    h = np.zeros((n_qps, n_vars))
    return Q, q, A, b, G, h


def general_batch(n_qps: int = 64, n: int = 50, p: int = 10, m: int = 100, seed: int = 1):
    """Random strictly feasible QPs with equalities and inequalities."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n_qps, n, n))
    Q = np.einsum("bij,bkj->bik", M, M) / n + 0.1 * np.eye(n)
    q = 2 * rng.standard_normal((n_qps, n))
    A = rng.standard_normal((n_qps, p, n))
    G = rng.standard_normal((n_qps, m, n))
    x_feas = rng.standard_normal((n_qps, n))
    b = np.einsum("bij,bj->bi", A, x_feas)
    h = np.einsum("bij,bj->bi", G, x_feas) + rng.uniform(0.1, 1.0, (n_qps, m))
    return Q, q, A, b, G, h


def qpax_batch(n_qps: int = 64, n: int = 32, m: int = 64, seed: int = 7, dtype=np.float64):
    """qpax's benchmark problems: ``Q = I``, ``q ~ −N(0, 1)``, ``G ~ U[−4, 4]``,
    ``h = G x₀ + U[0.5, 1.5]`` with ``x₀ = ½·1`` (strictly feasible), no equalities."""
    rng = np.random.default_rng(seed)
    Q = np.broadcast_to(np.eye(n), (n_qps, n, n)).copy()
    q = -rng.standard_normal((n_qps, n))
    G = rng.uniform(-4.0, 4.0, (n_qps, m, n))
    h = np.einsum("bij,bj->bi", G, np.full((n_qps, n), 0.5)) + rng.uniform(0.5, 1.5, (n_qps, m))
    A, b = np.zeros((n_qps, 0, n)), np.zeros((n_qps, 0))
    return tuple(np.asarray(v, dtype) for v in (Q, q, A, b, G, h))


# --------------------------------------------------------------------------- reference


def _active_set_solve(Q, q, A, b, G, h, active):
    n, p = len(q), len(b)
    E = np.concatenate([A, G[active]])
    e = np.concatenate([b, h[active]])
    k = len(e)
    K = np.block([[Q, E.T], [E, np.zeros((k, k))]])
    sol = np.linalg.solve(K, np.concatenate([-q, e]))
    x, lam = sol[:n], sol[n:]
    z = np.zeros(len(h))
    z[active] = lam[p:]
    return x, lam, z, K, E


def _loss_np(x):
    return float(np.sum((x - 1.0) ** 2))


def reference_one(Q, q, A, b, G, h, active):
    """Exact loss gradient for one QP with a given (verified) active set."""
    n, p = len(q), len(b)
    x, lam, z, K, E = _active_set_solve(Q, q, A, b, G, h, active)
    xbar = 2 * (x - 1.0)
    uv = np.linalg.solve(K, np.concatenate([xbar, np.zeros(len(lam))]))
    u, v = uv[:n], uv[n:]
    dQ = -np.outer(u, x)
    dQ = 0.5 * (dQ + dQ.T)
    dE = -(np.outer(v, x) + np.outer(lam, u))
    dG = np.zeros_like(G)
    dG[active] = dE[p:]
    dh = np.zeros_like(h)
    dh[active] = v[p:]
    return (dQ, -u, dE[:p], v[:p], dG, dh), x, z


def kkt_ok(Q, q, A, b, G, h, active, margin=1e-9):
    x, _, z, _, _ = _active_set_solve(Q, q, A, b, G, h, active)
    slack = h - G @ x
    return bool(np.all(slack[~active] > margin) and np.all(z[active] > margin))


def reference_batch(data, seed: int = 0):
    """Reference gradients for a batch, and the worst central-difference disagreement."""
    import qpax

    Q, q, A, b, G, h = data
    Qs = 0.5 * (Q + np.swapaxes(Q, 1, 2))
    solve = jax.jit(
        jax.vmap(lambda *a: qpax.solve_qp(*a, solver_tol=1e-12, max_iter=100)[:3])
    )  # fmt: skip
    x_ipm, s_ipm, z_ipm = map(np.asarray, solve(*map(jnp.asarray, (Qs, q, A, b, G, h))))
    rng = np.random.default_rng(seed)
    grads, worst_fd, n_bad = [], 0.0, 0
    for i in range(len(q)):
        prob = [Qs[i], q[i], A[i], b[i], G[i], h[i]]
        active = z_ipm[i] > s_ipm[i]
        if not kkt_ok(*prob, active):
            n_bad += 1
        g, x, _ = reference_one(*prob, active)
        grads.append(g)
        if i < 8:  # central differences along a random direction (symmetric in Q)
            d = [rng.standard_normal(np.shape(a)) for a in prob]
            d[0] = 0.5 * (d[0] + d[0].T)
            eps = 1e-6
            plus = [a + eps * da for a, da in zip(prob, d)]
            minus = [a - eps * da for a, da in zip(prob, d)]
            if kkt_ok(*plus, active) and kkt_ok(*minus, active):
                fd = (
                    _loss_np(_active_set_solve(*plus, active)[0])
                    - _loss_np(_active_set_solve(*minus, active)[0])
                ) / (2 * eps)
                an = sum(np.sum(ga * da) for ga, da in zip(g, d))
                worst_fd = max(worst_fd, abs(fd - an) / max(abs(an), 1e-12))
            else:
                n_bad += 1
    stacked = tuple(np.stack([g[j] for g in grads]) for j in range(6))
    return stacked, worst_fd, n_bad


# --------------------------------------------------------------------------- implementations


def _loss_of(solve_primal):
    def loss(Q, q, A, b, G, h):
        x = solve_primal(0.5 * (Q + Q.T), q, A, b, G, h)
        return jnp.sum((x - jnp.ones_like(x)) ** 2)

    return loss


def implementations(p: int) -> dict:
    impls = {}
    try:
        import rootdiff

        solve_qp = getattr(rootdiff, "solve_qp", None)
        if solve_qp is None:
            from rootdiff.solvers.qp import solve_qp
        impls["rootdiff solve_qp"] = _loss_of(solve_qp)
    except ImportError as e:
        impls["rootdiff solve_qp"] = f"not available yet ({e})"
    try:
        import qpax

        impls["qpax solve_qp_primal (backend='e', default)"] = _loss_of(
            lambda *a: qpax.solve_qp_primal(*a, backend="e")
        )
        impls["qpax solve_qp_primal (backend='i')"] = _loss_of(
            lambda *a: qpax.solve_qp_primal(*a, backend="i")
        )
    except ImportError:
        impls["qpax"] = "not installed"
    try:
        from jaxopt import OSQP

        def osqp(Q, q, A, b, G, h):
            eq = (A, b) if p > 0 else None
            return OSQP().run(params_obj=(Q, q), params_eq=eq, params_ineq=(G, h)).params.primal

        impls["jaxopt OSQP (default tol=1e-3)"] = _loss_of(osqp)
    except ImportError:
        impls["jaxopt OSQP"] = "not installed"
    return impls


def _run_batch(name, data, quick, only=None):
    p = data[2].shape[1]
    float64 = data[1].dtype == np.float64
    try:  # the reference is computed in float64 from the same (possibly float32) data
        g_ref, worst_fd, n_bad = reference_batch(tuple(np.asarray(v, np.float64) for v in data))
        ref_note = f"ref FD-check {worst_fd:.0e}" + (f", {n_bad} degenerate" if n_bad else "")
    except ImportError:
        g_ref, ref_note = None, "no reference (qpax missing)"
    impls = implementations(p)
    if only is not None:
        impls = {k: v for k, v in impls.items() if any(key in k for key in only)}
    return bench_all(
        name, impls, tuple(map(jnp.asarray, data)), g_ref, quick=quick,
        repeats=5 if quick else 9, note_rootdiff=ref_note, float64=float64,
        differentiate=lambda loss: jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))),
    )  # fmt: skip


def run_nnls(quick: bool = False) -> list[Row]:
    n_qps = 64 if quick else 256
    return _run_batch(f"batched QP: {n_qps} NNLS n=5 (seed 000)", nnls_batch(n_qps), quick)


def run_general(quick: bool = False) -> list[Row]:
    n_qps, n, p, m = (16, 20, 4, 40) if quick else (64, 50, 10, 100)
    data = general_batch(n_qps, n, p, m)
    return _run_batch(f"batched QP: {n_qps} x (n={n}, p={p}, m={m})", data, quick)


def warm_start_sequence(steps: int = 20, n: int = 20, m: int = 40, drift: float = 1e-3):
    """Iterations of ``solve_qp`` along slowly changing QPs: cold start vs ``init=``.

    ``q_t = q_0 + t·drift·r`` (a random direction ``r``), other data fixed; the warm
    start is the ``(x, info)`` of step ``t − 1``. Returns the two lists of iterations
    and the largest difference between the warm and cold answers.
    """
    import rootdiff

    rng = np.random.default_rng(3)
    F = rng.standard_normal((n, n))
    Q = jnp.asarray(F @ F.T / n + 0.1 * np.eye(n))
    G = jnp.asarray(rng.standard_normal((m, n)))
    h = jnp.asarray(rng.uniform(0.1, 1.0, m))
    q0, r = (jnp.asarray(rng.standard_normal(n)) for _ in range(2))
    cold = jax.jit(lambda q: rootdiff.solve_qp(Q, q, None, None, G, h, return_info=True))
    warm = jax.jit(
        lambda q, init: rootdiff.solve_qp(Q, q, None, None, G, h, init=init, return_info=True)
    )
    prev = cold(q0)
    its_cold, its_warm, diff = [], [], 0.0
    for t in range(1, steps + 1):
        q = q0 + t * drift * r
        xc, ic = cold(q)
        prev = warm(q, prev)
        its_cold.append(int(ic.iterations))
        its_warm.append(int(prev[1].iterations))
        diff = max(diff, float(jnp.max(jnp.abs(prev[0] - xc))))
    return its_cold, its_warm, diff


def run_qpax_config(quick: bool = False) -> list[Row]:
    """qpax's benchmark configuration (n = 32, m = 64), rootdiff vs qpax's default.

    Full mode: batch 1, 8, 64 and 512 in float64 and float32; ``--quick``: batch 16
    in float64 only (the test suite's smoke run).
    """
    rows = []
    cases = [(16, np.float64)] if quick else [
        (bs, dt) for dt in (np.float64, np.float32) for bs in (1, 8, 64, 512)
    ]  # fmt: skip
    for n_qps, dtype in cases:
        name = f"batched QP: qpax's benchmark, {n_qps} x (n=32, m=64), {np.dtype(dtype).name}"
        rows += _run_batch(name, qpax_batch(n_qps, dtype=dtype), quick,
                           only=("rootdiff", "backend='e'"))  # fmt: skip
    return rows


def iteration_counts(repeats: int = 9) -> list[str]:
    """Interior-point iterations and time per iteration, rootdiff beside qpax (forward only).

    Per workload: the iterations of every problem of the batch (under ``vmap`` the loop
    runs until the slowest is done, so the maximum is what the batch pays), and the
    run time of rootdiff's interior-point loop alone (``rootdiff.solvers._ipm.ipm``:
    equilibration, the loop, no polishing or derivative) and of qpax's whole forward
    solve, each divided by its maximum. The two are timed interleaved in one process
    (minimum of ``repeats`` calls); read the ratios, not the absolute times.
    """
    import time

    import qpax

    import rootdiff
    from rootdiff.solvers import _ipm

    def ipm_only(*a):
        tol = 1e-10 if a[1].dtype == jnp.float64 else 1e-5
        r = _ipm.ipm(*a, tol=tol, atol=0.0, maxiter=100)
        return r.x, r.k

    cases = [
        ("256 NNLS n=5", nnls_batch(256)),
        ("64 x (n=50, p=10, m=100)", general_batch(64, 50, 10, 100)),
        ("qpax config 64 x (n=32, m=64) float64", qpax_batch(64)),
        ("qpax config 64 x (n=32, m=64) float32", qpax_batch(64, dtype=np.float32)),
    ]
    lines = []
    for name, data in cases:
        data = tuple(map(jnp.asarray, data))
        info = jax.jit(jax.vmap(lambda *a: rootdiff.solve_qp(*a, return_info=True, check="off")[1]))
        k_rd = np.asarray(info(*data).iterations)
        k_qp = np.asarray(jax.jit(jax.vmap(lambda *a: qpax.solve_qp(*a)[-1]))(*data))
        fns = {
            "rootdiff loop": jax.jit(jax.vmap(ipm_only)).lower(*data).compile(),
            "qpax forward": jax.jit(jax.vmap(qpax.solve_qp_primal)).lower(*data).compile(),
        }
        times = {k: [] for k in fns}
        for f in fns.values():
            jax.block_until_ready(f(*data))
        for _ in range(repeats):
            for k, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f(*data))
                times[k].append(time.perf_counter() - t)
        t_rd, t_qp = (1e3 * min(times[k]) for k in fns)
        lines.append(
            f"{name}: iterations rootdiff max {k_rd.max()} mean {k_rd.mean():.1f}, "
            f"qpax max {k_qp.max()} mean {k_qp.mean():.1f}; rootdiff loop {t_rd:.2f} ms "
            f"({t_rd / k_rd.max():.2f} ms/iteration), qpax forward {t_qp:.2f} ms "
            f"({t_qp / k_qp.max():.2f} ms/iteration); 1-min load {os.getloadavg()[0]:.1f}"
        )
        print(lines[-1], flush=True)
    return lines


WORKLOADS = {"qp_nnls": run_nnls, "qp_general": run_general, "qp_qpax_config": run_qpax_config}

if __name__ == "__main__":
    from benchmarks._common import format_table

    q = "--quick" in sys.argv
    if "--iterations" in sys.argv:
        iteration_counts()
    elif "--warm-start" in sys.argv:
        c, w, d = warm_start_sequence()
        print(f"cold iterations {c} (total {sum(c)})\nwarm iterations {w} (total {sum(w)})")
        print(f"largest |x_warm - x_cold| = {d:.1e}")
    else:
        print(format_table(run_nnls(q) + run_general(q) + run_qpax_config(q)))
