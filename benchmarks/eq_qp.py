r"""Equality-constrained QP: ``min ½xᵀQx + cᵀx`` s.t. ``Ax = b``.

The workload that counts is the one users write: ``jit(value_and_grad(loss))`` of a
loss of the primal solution ``x*`` only, ``½‖x* − t‖²``, differentiated with respect
to the data vectors ``(c, b)``, against a plain dense KKT solve with
``jnp.linalg.solve`` differentiated by JAX (n = 500, p = 100 and n = 2000, p = 400).
A second workload keeps the earlier protocol: loss ``½‖x* − t‖² + ½‖y*‖²`` of primal
and dual, gradient with respect to ``(Q, c, A, b)`` (n = 500, p = 100).

Timing. On a shared, loaded machine, implementations timed one after the other
(each median taken in its own stretch of time) disagree by more than 2× even when
they compile to the same program; here every implementation of a workload is timed
*interleaved* — one call of each in turn, repeated — and the minimum is reported, as
is the minimum of two compilations each (also interleaved). The note adds the median,
over rounds, of each implementation's CPU time divided by the dense KKT solve's in the
same round (less disturbed by the load than wall time), and the machine's load.

Factorisation. A Cholesky of ``Q + δI``, ``W = L⁻¹Aᵀ`` and a Cholesky of the ``p × p``
Schur complement ``WᵀW + δI`` (a third of the flops of the LU of the ``(n + p)²``
KKT matrix) was measured at n = 2000, p = 400 and not adopted: LAPACK's Cholesky
alone took 194 ms of CPU against 362 ms for the LU, Cholesky and ``W`` together
218 ms, but packing the factors into the LU format (one solve routine for both, with
a run-time fallback to LU for an indefinite ``Q``) brought it to 347 ms, and the
whole ``value_and_grad`` was no faster than the dense solve; keeping the factors
apart would put a conditional in every derivative solve (more to compile) and,
under ``vmap``, run both factorisations.

Where the time goes (value and gradient, one process, single-threaded to read
small differences on a loaded machine). Both programs make one LU factorisation and
four triangular solves. rootdiff writes ``K_δ`` in one fused kernel, while
``jnp.block`` writes the block rows and then copies them into ``K`` (one more pass
over ``K``, with XLA:CPU at ``n + p`` of a few hundred and above), and its shift
``δ`` reads ``max|diag Q|`` rather than all of ``Q``: with the forward check off,
rootdiff is then as fast as the dense solve or faster (the row ``check='off'``).
What remains is the check: ``K v`` from ``Q`` and ``A`` (two passes over ``Q``, as
``(Qx + Qᵀx)/2``, and two over ``A``), its maxima and its report; 12 kernels above
``check='off'``, about 110 ms of XLA:CPU compile time at n = 500 (the report's
conditional and callback about 4 ms of it). ``K v`` is four matrix-vector
products. As multiply-and-sum reductions (no ``dot`` in the program) the check
compiled in about 65 ms (XLA:CPU: 10 against 20–25 ms a kernel), but ran slower — the four alone,
n = 2000: 4.5 against 2.8 ms; n = 500: 0.22 against 0.13 ms — and far slower when
``Q`` is an expression, as in the second workload, whose loss passes
``(Q + Qᵀ)/2``: XLA then wrote that matrix, and ``x`` broadcast to its shape, to
memory before reducing (the check 1.3 against 0.33 ms at n = 500; the whole
``value_and_grad`` 1.5× against 1.1× the dense solve). Other forms, measured and
dropped: ``K v`` as two reductions over ``[Q; A]`` (XLA writes the concatenation, a
copy of ``Q``); ``Q``'s symmetric part written once by the factorisation for one
product (one more kernel, no multi-output fusion); the two blocks' maxima as one
reduction (no fewer kernels). What bounds the compile time from below is shared
with the dense solve: LAPACK's row swaps are turned into a permutation by a
``while`` loop (about 50 ms of XLA time at n = 500) and applied by a gather in each
solve (about 30 ms for the two); a loop of our own with plain dynamic slices
compiles no faster, and applying the inverse permutation to the solution instead
(through ``K = Uᵀ Lᵀ P``, ``K`` being symmetric) gives more kernels, not fewer.
The check flags inconsistent constraints and a ``Q`` unbounded below, and it
stays. The only ``O((n + p)²)`` quantities the solve already has are the LU factors:
``L U v`` reproduces ``P K_δ v`` whatever the factorisation's own error, so a
residual read from them would verify the triangular solves but not the
factorisation, and no longer be a check of ``K v = rhs``.

Reference gradient (numpy float64): ``K = [[Q, Aᵀ], [A, 0]]``, ``(x, y) = K⁻¹(−c, b)``,
adjoint ``K (u, v) = (x̄, ȳ)``, then ``∂Q = −sym(u xᵀ)``, ``∂c = −u``,
``∂A = −(v xᵀ + y uᵀ)``, ``∂b = v``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, omitted_in_quick, rel_err

jax.config.update("jax_enable_x64", True)


def make_problem(n: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n)) / np.sqrt(n)
    Q = M @ M.T + 0.5 * np.eye(n)
    c = rng.standard_normal(n)
    A = rng.standard_normal((p, n)) / np.sqrt(n)
    b = rng.standard_normal(p)
    t = rng.standard_normal(n)
    return Q, c, A, b, t


def reference_grad(Q, c, A, b, t, *, dual_in_loss: bool):
    n, p = len(c), len(b)
    K = np.block([[Q, A.T], [A, np.zeros((p, p))]])
    sol = np.linalg.solve(K, np.concatenate([-c, b]))
    x, y = sol[:n], sol[n:]
    uv = np.linalg.solve(K.T, np.concatenate([x - t, y if dual_in_loss else 0 * y]))
    u, v = uv[:n], uv[n:]
    dQ = -np.outer(u, x)
    dQ = 0.5 * (dQ + dQ.T)
    return dQ, -u, -(np.outer(v, x) + np.outer(y, u)), v


DENSE = "dense KKT jnp.linalg.solve + autodiff"
CHECK_OFF = "rootdiff solve_eq_qp (check='off')"


def _dense(Q, c, A, b):
    n, p = c.shape[0], b.shape[0]
    K = jnp.block([[Q, A.T], [A, jnp.zeros((p, p), A.dtype)]])
    sol = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
    return sol[:n], sol[n:]


def _solvers() -> dict:
    import rootdiff

    out = {
        "rootdiff solve_eq_qp": rootdiff.solve_eq_qp,
        # What the forward check costs (it is what flags inconsistent constraints).
        CHECK_OFF: functools.partial(rootdiff.solve_eq_qp, check="off"),
        "dense KKT jnp.linalg.solve + autodiff": _dense,
    }
    try:
        from jaxopt import EqualityConstrainedQP

        def jx(tol):
            qp = EqualityConstrainedQP(tol=tol)

            def solve(Q, c, A, b):
                sol = qp.run(params_obj=(Q, c), params_eq=(A, b)).params
                return sol.primal, sol.dual_eq

            return solve

        out["jaxopt EqualityConstrainedQP (default tol=1e-5)"] = jx(1e-5)
        out["jaxopt EqualityConstrainedQP (tol=1e-10)"] = jx(1e-10)
    except ImportError:
        out["jaxopt EqualityConstrainedQP"] = None
    return out


def user_loss(solve):
    """``(c, b) ↦ ½‖x* − t‖²``: what a user differentiates (Q, A fixed data)."""

    def loss(c, b, Q, A, t):
        x, _ = solve(Q, c, A, b)
        return 0.5 * jnp.sum((x - t) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))


def full_loss(solve):
    """``(Q, c, A, b) ↦ ½‖x* − t‖² + ½‖y*‖²`` with ``Q`` symmetrised in the loss."""

    def loss(Q, c, A, b, t):
        x, y = solve(0.5 * (Q + Q.T), c, A, b)
        return 0.5 * jnp.sum((x - t) ** 2) + 0.5 * jnp.sum(y**2)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))


def _interleaved(fns: dict, args: tuple, repeats: int):
    """Compile each twice and call each ``repeats`` times, in turn.

    Per name: minimum compile time, minimum wall time (ms), the output, and the median
    over rounds of the ratio of its CPU time (``time.process_time``, all threads) to
    that of :data:`DENSE` in the same round (NaN without it): on a loaded machine the
    wall time also counts the wait for a core, which the CPU time does not.
    """
    compiled, compile_s, outs = {}, {k: [] for k in fns}, {}
    for _ in range(2):
        for k, f in fns.items():
            t0 = time.perf_counter()
            fresh = jax.jit(lambda *a, f=f: f(*a))  # a new function: no cached executable
            fresh.lower(*args).compile()
            compile_s[k].append(time.perf_counter() - t0)
            # Called through ``fresh``, as users call a jitted function: it reuses the
            # executable and takes JAX's C++ dispatch path (see _common.time_jitted).
            compiled[k] = fresh
    for k, f in compiled.items():
        outs[k] = jax.block_until_ready(f(*args))  # warm-up
    run_s, cpu_s = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in compiled.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(f(*args))
            run_s[k].append(time.perf_counter() - t0)
            cpu_s[k].append(time.process_time() - c0)
    ref = cpu_s.get(DENSE)
    cpu_ratio = {
        k: float(np.median(np.divide(v, ref))) if ref else float("nan") for k, v in cpu_s.items()
    }
    return {k: (min(compile_s[k]), 1e3 * min(run_s[k]), outs[k], cpu_ratio[k]) for k in fns}


def _workload(name, make_fn, args, g_ref, grad_of, *, quick, repeats, only=None) -> list[Row]:
    rows, fns = [], {}
    for impl, solve in _solvers().items():
        if only is not None and impl not in only:
            continue
        if solve is None:
            rows.append(Row(name, impl, note="SKIPPED: not installed"))
        elif quick and omitted_in_quick(impl):
            rows.append(Row(name, impl, note="SKIPPED: omitted in --quick"))
        else:
            fns[impl] = make_fn(solve)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = _interleaved(fns, args, repeats)
    load = os.getloadavg()[0]
    for impl, (c, r, out, cpu_ratio) in results.items():
        note = f"interleaved minima, load {load:.1f}; CPU time ÷ dense KKT (median) {cpu_ratio:.2f}"
        rows.append(
            Row(name, impl, c, r, rel_err(grad_of(out), g_ref), note=note,
                is_rootdiff=impl.startswith("rootdiff"))
        )  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    sizes = [(100, 20)] if quick else [(500, 100), (2000, 400)]
    repeats = 5 if quick else 21
    rows = []
    for n, p in sizes:
        Q, c, A, b, t = make_problem(n, p)
        _, gc, _, gb = reference_grad(Q, c, A, b, t, dual_in_loss=False)
        args = tuple(map(jnp.asarray, (c, b, Q, A, t)))
        only = None if n <= 500 else ("rootdiff solve_eq_qp", CHECK_OFF, DENSE)
        rows += _workload(
            f"equality QP n={n} p={p}, grad (c, b) of a loss of x", user_loss, args, (gc, gb),
            lambda out: out[1], quick=quick, repeats=repeats, only=only,
        )  # fmt: skip
    n, p = (100, 20) if quick else (500, 100)
    Q, c, A, b, t = make_problem(n, p)
    g_ref = reference_grad(Q, c, A, b, t, dual_in_loss=True)
    rows += _workload(
        f"equality QP n={n} p={p}, grad (Q, c, A, b) of a loss of x and y", full_loss,
        tuple(map(jnp.asarray, (Q, c, A, b, t))), g_ref, lambda out: out[1], quick=quick,
        repeats=repeats, only=("rootdiff solve_eq_qp", DENSE),
    )  # fmt: skip
    return rows


WORKLOADS = {"eq_qp": run}

if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
