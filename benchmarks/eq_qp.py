r"""Equality-constrained QP: ``min ½xᵀQx + cᵀx`` s.t. ``Ax = b`` (n = 500, p = 100).

Loss ``½‖x* − t‖² + ½‖y*‖²`` of the primal and dual solutions; gradient with
respect to ``(Q, c, A, b)``. Every implementation receives the symmetrised
``(Q + Qᵀ)/2`` inside the loss, so all report the same (symmetric) ``∂Q``.

Reference (numpy float64): ``K = [[Q, Aᵀ], [A, 0]]``, ``(x, y) = K⁻¹(−c, b)``,
adjoint ``K (u, v) = (x̄, ȳ)``, then ``∂Q = −sym(u xᵀ)``, ``∂c = −u``,
``∂A = −(v xᵀ + y uᵀ)``, ``∂b = v``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, bench_all

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


def reference_grad(Q, c, A, b, t):
    n, p = len(c), len(b)
    K = np.block([[Q, A.T], [A, np.zeros((p, p))]])
    sol = np.linalg.solve(K, np.concatenate([-c, b]))
    x, y = sol[:n], sol[n:]
    uv = np.linalg.solve(K.T, np.concatenate([x - t, y]))
    u, v = uv[:n], uv[n:]
    dQ = -np.outer(u, x)
    dQ = 0.5 * (dQ + dQ.T)
    return (dQ, -u, -(np.outer(v, x) + np.outer(y, u)), v)


def _loss(x, y, t):
    return 0.5 * jnp.sum((x - t) ** 2) + 0.5 * jnp.sum(y**2)


def _solve_eq_qp():
    import rootdiff

    if hasattr(rootdiff, "solve_eq_qp"):
        return rootdiff.solve_eq_qp
    from rootdiff.solvers.eq_qp import solve_eq_qp

    return solve_eq_qp


def implementations() -> dict:
    impls = {}
    try:
        solve = _solve_eq_qp()

        def rd(Q, c, A, b, t):
            x, y = solve(0.5 * (Q + Q.T), c, A, b)
            return _loss(x, y, t)

        impls["rootdiff solve_eq_qp"] = rd
    except ImportError as e:
        impls["rootdiff solve_eq_qp"] = f"not available yet ({e})"

    def dense(Q, c, A, b, t):
        n, p = c.shape[0], b.shape[0]
        K = jnp.block([[0.5 * (Q + Q.T), A.T], [A, jnp.zeros((p, p), A.dtype)]])
        sol = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
        return _loss(sol[:n], sol[n:], t)

    impls["dense KKT jnp.linalg.solve + autodiff"] = dense
    try:
        from jaxopt import EqualityConstrainedQP

        def jx(tol):
            qp = EqualityConstrainedQP(tol=tol)

            def loss(Q, c, A, b, t):
                sol = qp.run(params_obj=(0.5 * (Q + Q.T), c), params_eq=(A, b)).params
                return _loss(sol.primal, sol.dual_eq, t)

            return loss

        impls["jaxopt EqualityConstrainedQP (default tol=1e-5)"] = jx(1e-5)
        impls["jaxopt EqualityConstrainedQP (tol=1e-10)"] = jx(1e-10)
    except ImportError:
        impls["jaxopt"] = "not installed"
    return impls


def run(quick: bool = False) -> list[Row]:
    n, p = (100, 20) if quick else (500, 100)
    name = f"equality QP n={n} p={p}"
    Q, c, A, b, t = make_problem(n, p)
    g_ref = reference_grad(Q, c, A, b, t)
    args = tuple(map(jnp.asarray, (Q, c, A, b, t)))
    return bench_all(
        name, implementations(), args, g_ref, quick=quick, repeats=5 if quick else 9,
        differentiate=lambda loss: jax.value_and_grad(loss, argnums=(0, 1, 2, 3)),
    )  # fmt: skip


WORKLOADS = {"eq_qp": run}

if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
