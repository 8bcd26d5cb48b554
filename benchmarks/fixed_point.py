r"""Deep-equilibrium fixed point: gradient of a loss of ``Z* = tanh(Z* Wᵀ + X Uᵀ + b)``.

``Z`` is a batch ``(B, n)`` of states solved as one system; ``W`` (``n × n``) is
scaled to spectral norm ≈ 0.5, so the map is a contraction and ``K = 40``
iterations reach ``‖Z − T(Z)‖ ≈ 1e-12``. Loss ``½ mean ‖Z* − Y‖²``, gradient with
respect to ``(W, U, b)``.

rootdiff runs twice: with the default forward check (a Newton step, i.e. one
linear solve, estimating the error of ``Z*``) and with ``residual_tol=1e-8``, the
check a user who knows ``T`` is a contraction writes (one evaluation of ``T``).

Rows marked "adaptive forward" run the forward optimistix runs
(:func:`forward_adaptive`: stop when ``max |ΔZ|/(1 + |Z|) < 1e-12``, 18 evaluations of
``T`` at n = 4000 instead of 40); the others the fixed 40 iterations. Optimistix's
lead over jaxopt and rootdiff in the fixed-forward rows (0.70× of rootdiff) is its
forward alone: with the same forward optimistix is as fast as jaxopt (wall-time
minima 862 and 881 ms, interleaved, load 4).

Where the time goes (n = 4000, B = 8). Every product by ``∂ₓT`` or its transpose
reads ``W`` (128 MB), as one evaluation of ``T`` does, so the products are the cost;
counted from the solvers' iteration reports and the compiled programs:

* forward: 40 (adaptive: 18);
* rootdiff, default check: ``F`` at the answer (1, shared with the derivative's
  linearisation), the Newton step ``(∂ₓF)⁻¹F`` of the check (GMRES to relative residual
  1e-6: 8 products, and 1 to verify on the true residual), the adjoint solve (GMRES to
  ``eps^0.75`` ≈ 1.8e-12: 16 products, and 1 to verify), the gradient ``vᵀZ`` (one
  pass): 40 + 28;
* rootdiff, ``residual_tol=1e-8``: 40 + 19;
* jaxopt ``solve_gmres`` (``jax.scipy.sparse.linalg.gmres``, tol 1e-5, restart 20):
  ``b − A x0`` (1), a full restart cycle (20), the residual after it (1), the VJPs at
  the answer (2), the gradient: 40 + 25. A cycle always runs its 20 products, so its
  gradient is as exact as rootdiff's here.

So with any forward shared by both, rootdiff's derivative costs at least the 16
products GMRES needs for a 1e-12 gradient (a Krylov method cannot need fewer on this
spectrum, and a looser tolerance is not an option: the gradient error must stay
≤ 1e-12): (40 + 19)/(40 + 25) ≈ 0.91 with no check at all, against the 0.8 target;
measured (interleaved, 9 rounds, load 4, wall-time minima): 1.08× with the default
check, 0.85× with ``residual_tol`` (adaptive forward: 1.07×, 0.86×; the median CPU
time ratios agree within 0.06). The default check's Newton step
is 9 of the 28 products: the price of flagging a wrong answer on problems whose
residual looks small. A user who knows ``T`` is a contraction can check the residual
instead (``residual_tol``, the second row), and a solver that knows more about
``∂ₓT`` (a quasi-Newton estimate, a cheap approximation) can hand it to the
derivative's solve as a ``rootdiff.SolveHint`` (a preconditioner or a start).

Reference (numpy, float64, independent of JAX): iterate the forward map 200
times, then the adjoint fixed point ``u = Z̄ + (D ⊙ u) W`` (``D = 1 − Z²``) 200
times, and ``∂W = vᵀZ``, ``∂U = vᵀX``, ``∂b = Σ v`` with ``v = D ⊙ u``.

Peak memory: each implementation is also run alone in a fresh process
(``python -m benchmarks.fixed_point --memcase ...``), reporting peak
``ru_maxrss`` after compiling and running minus the RSS just before compiling
(full mode only; ``--quick`` skips the extra processes).
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, bench_all, measure_in_subprocess, memcase_measure

jax.config.update("jax_enable_x64", True)

K_ITERS = 40
M_IN = 64
DEFAULT_ROW = "rootdiff custom_fixed_point (solve=auto)"
RESIDUAL_ROW = "rootdiff custom_fixed_point (residual_tol=1e-8)"
ADAPTIVE = "adaptive forward"  # rows whose forward stops as optimistix's does
ADAPTIVE_TOL = 1e-12


def make_problem(n: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= 0.5 / (2.0 * np.sqrt(n))  # ‖W‖₂ ≈ 0.5 (Gaussian: ‖G‖₂ ≈ 2√n)
    U = rng.standard_normal((n, M_IN)) / np.sqrt(M_IN)
    b = 0.1 * rng.standard_normal(n)
    X = rng.standard_normal((batch, M_IN))
    Y = 0.5 * rng.standard_normal((batch, n))
    return W, U, b, X, Y


def reference_grad(W, U, b, X, Y, iters: int = 200):
    Z = np.zeros_like(Y)
    inj = X @ U.T + b
    for _ in range(iters):
        Z = np.tanh(Z @ W.T + inj)
    D = 1.0 - Z**2
    Zbar = (Z - Y) / Z.size
    u = Zbar.copy()
    for _ in range(iters):
        u = Zbar + (D * u) @ W
    v = D * u
    return (v.T @ Z, v.T @ X, v.sum(0))


def T(Z, W, U, b, X):
    return jnp.tanh(Z @ W.T + X @ U.T + b)


def forward(Z0, W, U, b, X):
    return jax.lax.fori_loop(0, K_ITERS, lambda _, Z: T(Z, W, U, b, X), Z0)


def forward_adaptive(Z0, W, U, b, X):
    """Iterate until ``max |ΔZ| / (1 + |Z|) < 1e-12``: optimistix's ``FixedPointIteration``
    stopping test with ``rtol = atol = 1e-12`` (18 evaluations of ``T`` here, not 40)."""

    def cond(state):
        Z, Z_new, k = state
        return (jnp.max(jnp.abs(Z_new - Z) / (ADAPTIVE_TOL * (1 + jnp.abs(Z_new)))) >= 1) & (
            k < 4 * K_ITERS
        )

    def body(state):
        _, Z, k = state
        return Z, T(Z, W, U, b, X), k + 1

    return jax.lax.while_loop(cond, body, (Z0, T(Z0, W, U, b, X), 1))[1]


def _loss_of(solver):
    def loss(params, X, Y):
        W, U, b = params
        Z = solver(jnp.zeros_like(Y), W, U, b, X)
        return 0.5 * jnp.mean((Z - Y) ** 2)

    return loss


def implementations() -> dict:
    import rootdiff

    impls = {
        DEFAULT_ROW: _loss_of(rootdiff.custom_fixed_point(T)(forward)),
        # What a user who knows T is a contraction (‖∂T/∂Z‖ ≤ L < 1) writes: the forward
        # check on the residual, ‖Z − Z*‖ ≤ max|T(Z) − Z| / (1 − L), one evaluation of T,
        # instead of the default Newton-step estimate (a linear solve).
        RESIDUAL_ROW: _loss_of(rootdiff.custom_fixed_point(T, residual_tol=1e-8)(forward)),
    }
    # The same three with the forward optimistix runs (stopped by its test, not after a
    # fixed count): the derivative is then a larger share of the time.
    impls[f"rootdiff custom_fixed_point (solve=auto, {ADAPTIVE})"] = _loss_of(
        rootdiff.custom_fixed_point(T)(forward_adaptive)
    )
    impls[f"rootdiff custom_fixed_point (residual_tol=1e-8, {ADAPTIVE})"] = _loss_of(
        rootdiff.custom_fixed_point(T, residual_tol=1e-8)(forward_adaptive)
    )
    try:
        from jaxopt import implicit_diff, linear_solve

        impls["jaxopt custom_fixed_point (solve_gmres)"] = _loss_of(
            implicit_diff.custom_fixed_point(T, solve=linear_solve.solve_gmres)(forward)
        )
        impls[f"jaxopt custom_fixed_point (solve_gmres, {ADAPTIVE})"] = _loss_of(
            implicit_diff.custom_fixed_point(T, solve=linear_solve.solve_gmres)(forward_adaptive)
        )
        gm_tight = functools.partial(linear_solve.solve_gmres, tol=1e-10)
        impls["jaxopt custom_fixed_point (solve_gmres tol=1e-10)"] = _loss_of(
            implicit_diff.custom_fixed_point(T, solve=gm_tight)(forward)
        )
        impls["jaxopt custom_fixed_point (default normal_cg)"] = _loss_of(
            implicit_diff.custom_fixed_point(T)(forward)
        )
    except ImportError:
        impls["jaxopt"] = None
    try:
        import lineax as lx
        import optimistix as optx

        def optx_solver(Z0, W, U, b, X):
            sol = optx.fixed_point(
                lambda Z, a: T(Z, *a), optx.FixedPointIteration(rtol=1e-12, atol=1e-12),
                Z0, (W, U, b, X), max_steps=K_ITERS * 4, throw=False,
                adjoint=optx.ImplicitAdjoint(lx.GMRES(rtol=1e-10, atol=1e-10)),
            )  # fmt: skip
            return sol.value

        impls["optimistix fixed_point (ImplicitAdjoint GMRES)"] = _loss_of(optx_solver)
    except ImportError:
        impls["optimistix"] = None
    impls[f"unrolled backprop ({K_ITERS} iterations)"] = _loss_of(forward)
    return impls


def _args(n, batch):
    W, U, b, X, Y = make_problem(n, batch)
    return (tuple(map(jnp.asarray, (W, U, b))), jnp.asarray(X), jnp.asarray(Y))


def memcase(case: dict) -> None:
    """Child-process entry: compile and run one implementation, report peak RSS."""
    loss = implementations()[case["impl"]]
    memcase_measure(jax.value_and_grad(loss), _args(case["n"], case["batch"]))


def run(quick: bool = False, memory: bool = True) -> list[Row]:
    rows = []
    sizes = [(400, 8)] if quick else [(4000, 8), (6000, 8)]
    for n, batch in sizes:
        W, U, b, X, Y = make_problem(n, batch)
        g_ref = reference_grad(W, U, b, X, Y)
        impls = implementations()
        if quick:  # the CI smoke run keeps one rootdiff row
            impls = {k: v for k, v in impls.items() if k != RESIDUAL_ROW and ADAPTIVE not in k}
        rows += bench_all(
            f"DEQ fixed point n={n} B={batch}", impls, _args(n, batch), g_ref,
            quick=quick, repeats=5,
            memory=(lambda impl: ("fixed_point", {"n": n, "batch": batch, "impl": impl}))
            if memory
            else None,
        )  # fmt: skip
    return rows


WORKLOADS = {"fixed_point": run}

if __name__ == "__main__":
    if "--memory-only" in sys.argv:  # peak memory rows only (no timing run)
        for n, batch in [(4000, 8), (6000, 8)]:
            for impl, loss in implementations().items():
                if loss is not None:
                    case = {"n": n, "batch": batch, "impl": impl}
                    rep = measure_in_subprocess("fixed_point", case)
                    mem = (
                        rep.get("peak_mb", 0) - rep.get("base_mb", 0) if "error" not in rep else rep
                    )
                    print(f"n={n} {impl}: {mem}", flush=True)
    elif "--memcase" in sys.argv:
        memcase(json.loads(sys.argv[sys.argv.index("--memcase") + 1]))
    else:
        from benchmarks._common import format_table

        print(format_table(run(quick="--quick" in sys.argv)))
