r"""At what system size ``n`` does a matrix-free backward solve beat the dense one?

Times only the backward (VJP) linear solve of the implicit rule,
``rootdiff.root_vjp(F, sol, θ, x̄, solve=...)`` under ``jit``, for

* nonsymmetric: ``F(x, θ) = x − tanh(W x + θ)`` with ``‖W‖₂ ≈ 0.5`` (a DEQ layer;
  ``∂ₓF = I − D W`` is well conditioned), dense ``lu`` vs ``gmres``;
* symmetric: ``F(x, θ) = H x − θ`` with ``H = MMᵀ/n + I`` (an argmin Hessian,
  condition ≈ 5), dense ``lu`` / ``cholesky`` vs ``cg``;

single system and a vmapped batch of 64. ``DENSE_THRESHOLD`` in
``rootdiff/linear_solve.py`` is the ``n`` below which ``solve="auto"`` goes dense.

Usage: ``python benchmarks/dense_threshold.py [--quick]``; prints a table and
the crossover for each case.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import time_jitted  # noqa: E402

jax.config.update("jax_enable_x64", True)


def problem(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "nonsymmetric":
        W = jnp.asarray(rng.standard_normal((n, n)) * 0.5 / (2 * np.sqrt(n)))
        F = lambda x, theta: x - jnp.tanh(W @ x + theta)
    else:
        M = rng.standard_normal((n, n))
        H = jnp.asarray(M @ M.T / n + np.eye(n))
        F = lambda x, theta: H @ x - theta
    sol = jnp.asarray(0.3 * rng.standard_normal(n))
    theta = jnp.asarray(rng.standard_normal(n))
    xbar = jnp.asarray(rng.standard_normal(n))
    return F, sol, theta, xbar


def time_case(kind: str, n: int, solve: str, batch: int | None, repeats: int) -> float:
    import rootdiff

    F, sol, theta, xbar = problem(kind, n)

    def vjp(sol, theta, xbar):
        return rootdiff.root_vjp(F, sol, (theta,), xbar, solve=solve)[0]

    args = (sol, theta, xbar)
    if batch:
        vjp = jax.vmap(vjp)
        args = tuple(
            jnp.broadcast_to(a, (batch, n)) + 0.01 * jnp.arange(batch)[:, None] for a in args
        )
    return time_jitted(vjp, args, repeats)[1]


def main(quick: bool = False) -> None:
    sizes = [25, 50, 100, 200] if quick else [25, 50, 100, 200, 400, 800, 1600]
    repeats = 5 if quick else 9
    cases = {"nonsymmetric": ("lu", "gmres", "auto"), "symmetric": ("lu", "cholesky", "cg")}
    print("| case | batch | n | backward solve time (ms) |")
    print("|---|---|---|---|")
    for kind, solves in cases.items():
        for batch in (None, 64):
            crossover = None
            for n in sizes:
                if batch and n > 800:
                    continue
                t = {s: time_case(kind, n, s, batch, repeats) for s in solves}
                dense = min(t[s] for s in solves if s in ("lu", "cholesky"))
                iterative = min(t[s] for s in solves if s in ("gmres", "cg"))  # auto: shown only
                if crossover is None and iterative < dense:
                    crossover = n
                cells = ", ".join(f"{s} {v:.3g}" for s, v in t.items())
                print(f"| {kind} | {batch or 1} | {n} | {cells} |", flush=True)
            print(
                f"# {kind}, batch {batch or 1}: matrix-free first faster at n = {crossover}"
                f" (sizes tried: {sizes})",
                flush=True,
            )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
