r"""Compile time of ``jax.jit(jax.value_and_grad(loss))``: rootdiff against its peers.

For every workload the function a user writes is traced and lowered
(``jax.jit(f).trace(*args).lower()``, the Python side: rootdiff's closure
conversion, ``eval_shape`` calls, the JVP/transpose rules) and then compiled
(``lowered.compile()``, XLA). Both are timed separately, rootdiff and peer
interleaved in one process, several repeats, and the **minimum** is reported (on
a loaded machine the minimum is the least noisy estimate of the work done).

Besides the default configuration, rootdiff is timed with pieces switched off,
to show where its compile time goes:

* ``check="off"``: no forward check (its Newton step is one more linear solve in
  the graph) and no guards (host callbacks of ``warn``/``raise``);
* ``check="nan"``: forward check and guards, but NaN poisoning instead of host
  callbacks;
* ``residual_tol=inf``: the forward check without its Newton step (only the
  callbacks and ``max |F(x)|``).

Workloads: ridge hypergradient (``custom_root`` + CG, as ``benchmarks/ridge.py``),
deep-equilibrium fixed point (``custom_fixed_point`` + GMRES, as
``benchmarks/fixed_point.py``, smaller ``n``: compile time does not depend on it),
lasso (``proximal_gradient`` vs jaxopt ``ProximalGradient``), sparsemax and LML
(vs jaxopt ``Bisection``), ``solve_qp`` (vs qpax) and ``solve_eq_qp`` (vs a dense
KKT solve).

Run: ``python -m benchmarks.compile_time [--repeats 3] [--only ridge,deq] [--cpu]``.

What the columns showed on a 2-core CPU (load 8–12, process CPU time, minimum of 3):
XLA:CPU spends roughly 10–15 ms per kernel, small scalar ones included, so the
``kernels`` column (independent of the load) is the figure to drive down — but not
the only one: kernels inside a loop body cost more. The forward check's Newton step
is one more Krylov loop (ridge: +32 kernels, ≈ 0.05–0.1 s; DEQ: +83 kernels,
≈ 0.2–0.3 s); the guards and residuals another 15 kernels (≈ 0.15 s). Swapping the
step's GMRES for BiCGStab (half the kernels standalone) did not shorten the compile
of the whole program, and neither did a fixed-size Arnoldi estimate by enough to
justify a weaker check.

Where ridge's time goes (one process, load 12): with ``check='off'`` rootdiff is
1.22–1.26× the peer with the same number of kernels (68 vs 67); with a plain CG
(``jax.scipy.sparse.linalg.cg``) as the derivative's solve it is 0.96×. The built-in
CG verifies convergence on a true residual inside its loop (one operator product
site). The final optimised loop bodies differ by two or three instructions, but
XLA:CPU compiles each kernel to its own LLVM module, and selects between vectors
are its largest (select fusions of 45–75 kB of IR against 27–30 kB for an axpy):
taking the x, r, p updates with scalar coefficients and carrying the iteration's
kind as one integer brought the LLVM modules from 53 to 50 (a plain CG loop: 44)
and ridge from 1.67× to 1.56× (``check='off'``: 1.27× → 1.20×), interleaved in
one process, load 3.5 (the table's last step). Verifying in an outer loop around
a plain inner CG loop (a second product site) was no faster, with 130 kernels
instead of 110.
The rest of the gap is the loop's few scalar kernels (the iteration kind, the
counter, the CG step's guards; ≈ 7–10 ms each), twice in the default
configuration (the Newton step's loop and the derivative's).

| workload (rootdiff ÷ peer, total) | kernels before → after | ratio before → after |
|---|---|---|
| ridge n=2000 d=200 | 117 → 115 → 110 → 107 (peer 67) | 1.81 → 1.58–1.73 → 1.55; 1.67 → 1.56 |
| DEQ n=400 B=8 | 221 → 201 → 196 → 177 (peer 116) | 1.65 → 1.46–1.59 → 1.55 → 1.22 |
| lasso p=200 | 113 → 109 → 93 (peer 78) | 1.36 → 1.23–1.49 → 1.20 (load 4) |
| equality QP n=500 p=100 | 44 → 42 → 40 → 39 → 38 (peer 27) | 1.91 → 1.59–1.82 → 1.51–1.58 → 1.58 |
| equality QP, the check's ``K v`` without dots | 38 → 36 | 1.63 → 1.30 (CPU time, load 7.5) |
| equality QP, ``K v`` as products again (run time) | 36 → 36 | 1.21–1.25 → 1.36–1.43 |
| sparsemax / LML | 33 / 41 → 38 (peers 50 / 49) | 0.71–0.74 / 0.97–1.02 → 0.99 |

XLA:CPU compiles a one-dimensional reduction of more than 32 elements as three
kernels (the operand, a reduce-window, the final reduce), a variadic one (several
operands reduced together) as one. FISTA's stopping tests now take their four
maxima per iteration (step, gradient, point, finiteness of the new iterate) in one
variadic reduction, the gradient's finiteness included with a fixed step, and the
solver's report no longer reads all of ``x`` (lasso: 108 → 93 kernels; ``check='off'``
84 → 71, below the peer's 78; total 1.20×, ``check='off'`` 0.97×, load 4); LML a
row's maximum, finite minimum and finite count (41 → 38; 1.02 → 0.99×); the
equality QP the shift's two
maxima (``check='off'``: 26 → 25 kernels, the dense solve 27). The rest of the gap
on lasso and the equality QP is their checks' kernels: the report (a conditional
and a host callback, 4–5 kernels each, three reports on lasso) and, for the
equality QP, ``K v`` and its reduction (four products, 14 kernels in all).

The derivative linearises ``F`` at the solver's answer as it was before the forward
check, where the check already evaluated ``F`` (the checked answer is the same value
tied to the report, which XLA cannot see through): XLA then evaluates ``F`` there
once, one product by ``W`` less per gradient on the DEQ and 182 → 177 kernels
(``residual_tol=inf`` 111 → 108); ridge's Hessian products need no value of ``F``,
so it is unchanged. What remains above the peer on DEQ and ridge is the Newton
step's Krylov loop (DEQ: 69 kernels, ridge: 25; ``check='off'`` is 97 kernels on DEQ
against jaxopt's 116, 66 on ridge against 67), on the equality QP ``K v`` and its
report (13 kernels): the checks, which stay. The last figures of the table are from one
run at load 7 (``--only ridge,deq,eq_qp``, minimum of 3).

Kernels differ in cost: XLA:CPU spends its compile time generating code kernel by
kernel (LLVM code generation about 60 %, the MLIR fusion pipeline about 35 %, the HLO
passes under 5 %, from a ``perf`` profile of the ridge compile), and a select between
vectors or a dynamic slice with a select is two to four times the code of an axpy. So
the total size of the LLVM IR (``XLA_FLAGS=--xla_dump_to``) is a second figure to watch.
GMRES's product input (``x`` or the next basis vector) and CG's next product input are
now chosen by scalar weights, not selects; GMRES's Givens rotation of ``Q`` is a product
by the rotation (exact: the other terms are zeros), the new basis vector is scaled by a
scalar factor, the zero-pivot guard is an exact diagonal update (not a scatter), and
the triangular solve is posed on the transposed lower-triangular matrix, which LAPACK
reads without a transposed copy. DEQ's program: 886 → 661 kB of optimised IR, 177 →
172 kernels; rootdiff 1.92 → 1.70 s (median 1.96 → 1.84 s), the peer 1.24–1.28 s, so
1.54× → 1.33× (median 1.47× → 1.41×); ``check='off'`` 1.15× → 0.96×,
``residual_tol=inf`` 1.24× → 1.02× (old and new code alternated in fresh processes,
3 rounds, process CPU time, load 8). The forward check's Newton step by CG is a plain
CG on its recursive residual (an estimate needs no verification): ridge 107 → 103
kernels, 527 → 493 kB of IR, but its compile time did not move measurably (1.53× →
1.51×, medians 1.51× → 1.54×, 6 repeats at load 8): what remains on ridge is the
check's own kernels — the Newton step's loop (19 kernels), its right-hand side and
tolerance (``F(x)``: 2 products, ``‖F‖``: 3 kernels), two reports (a conditional and a
host callback each) — at 5–8 ms each. A dot product of two vectors is three kernels
for XLA:CPU (product, partial sums, final sum) and a variadic reduction one, but
taking the Krylov solvers' dot products as variadic reductions made ridge *slower* to
compile (95 kernels, +12 %: XLA's sequential reduction loop is a larger kernel), and
sums in order lose accuracy in float32; it was dropped. Lasso (1.11×, ``check='off'``
0.99×; its derivative's CG is the smaller part of its program) and LML (0.94–1.03×, no
Krylov solve) did not change measurably.

The forward check of ``custom_root`` reduces ``|F(x)|``, ``|δ|`` and ``|x|`` in one
variadic reduction when params is one array (three reductions before, each one or
two kernels): −5 kernels on ridge and DEQ. The equality QP's forward check
(``K v − rhs`` and one reduction) is 13 kernels; its relative residual, once four
scalar kernels, is now one reduction (42 → 40 kernels; 1.59 → 1.51× in one process
at load 12). Reading ``K v`` from the two block rows of ``K_δ`` (two products
instead of four) made XLA:CPU write the blocks in two layouts — more passes over
``K`` — and was dropped.

Where the check's compile time goes (process CPU time, one process, minimum of 4,
load 1–2; DEQ n=400 B=8): ``value_and_grad`` 1.20 s with the default check, 1.05 s
without the Newton step (``residual_tol=inf``), 0.91 s with ``check='off'``; the
value alone 0.92 s, 0.17 s and 0.11 s. So the Newton step's GMRES costs 0.75 s alone
but only 0.15 s beside the derivative's GMRES: XLA:CPU compiles the kernels the two
loops share (all but the products) once. Checked directly (n = 3200): one GMRES
loop 0.70 s (71 kernels), two on the same operator 0.82 s (138), two on different
operators 0.84 s (130) — so the figure to drive down is the number of *distinct*
kernels, not of kernels. A lean loop of its own for the step
(restarted simpler GMRES on its recursive residual, one product per step, no Givens
rotations, triangular solve or verification: 48 kernels against GMRES's 74) costs
0.47 s alone but 0.25 s beside the derivative's GMRES. Hence: a value-only call runs
the lean estimate (value 0.96 → 0.65 s, 95 → 69 kernels; old and new code
alternated in fresh processes, 3 rounds, load 4), a differentiated one GMRES, the
derivative's loop (unchanged: 172 kernels, 1.03× of the old code's time, noise).
Ridge's CG estimate is cheaper in both (``value_and_grad`` 0.67 against 0.70 s with
the full CG, the value alone 0.46 against 0.55 s). The guards and ``max |F|`` are
the other 0.14 s (11 kernels).

The Newton step and the derivative's solve cannot share one Krylov loop with two
right-hand sides in reverse mode: the adjoint's right-hand side is the cotangent of
the checked output, which depends on the Newton step. In forward mode they could, but
the ``custom_jvp`` rule also serves linearisation (``grad``), where a loop carrying
the primal's step and the tangent's right-hand side together would move the primal's
check into the backward pass.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


#: Kinds of instructions of the optimised module that XLA:CPU generates code for.
_KINDS = re.compile(r"\s(fusion|dot|while|conditional|custom-call|sort)\(")


def measure(fn: Callable, args: tuple, clock=time.perf_counter) -> tuple[float, float, int]:
    """``(trace + lower s, compile s, kernels)`` of a fresh ``jax.jit(fn)``.

    ``kernels`` counts the fusions, dots, loops, conditionals and custom calls of
    the optimised module: a proxy of XLA's work that does not depend on the load.
    """
    # A new wrapper each time: ``jax.jit`` caches traces per function object.
    jitted = jax.jit(lambda *a: fn(*a))
    t0 = clock()
    lowered = jitted.trace(*args).lower()
    t1 = clock()
    compiled = lowered.compile()
    t2 = clock()
    return t1 - t0, t2 - t1, len(_KINDS.findall(compiled.as_text()))


# --------------------------------------------------------------------------- workloads
# Each returns ``(args, {name: fn})``; the first entry is the default rootdiff call,
# the entries starting with "peer" are the reference, the others are variants.


def _scipy_cg(matvec, b):
    return jax.scipy.sparse.linalg.cg(matvec, b, tol=1e-10)[0]


def ridge():
    import rootdiff
    from benchmarks import ridge as R

    X, y, Xv, yv = R.make_problem(2000, 200)
    args = (jnp.asarray(R.LAM), *map(jnp.asarray, (X, y, Xv, yv)))

    def loss_of(solver):
        def loss(lam, X, y, Xv, yv):
            return R.val_loss(solver(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv)

        return jax.value_and_grad(loss)

    def rd(**kw):
        kw = {"solve": "cg", "symmetric": True, **kw}
        return loss_of(rootdiff.custom_root(R.ridge_gradient, **kw)(R.cg_forward))

    fns = {
        "rootdiff custom_root(solve='cg')": rd(),
        "  check='off'": rd(check="off"),
        "  check='nan'": rd(check="nan"),
        "  residual_tol=inf (no Newton step)": rd(residual_tol=float("inf")),
        "  argmin (solve='auto')": loss_of(rootdiff.argmin(R.ridge_objective)(R.cg_forward)),
        # The built-in CG verifies convergence on a true residual inside its loop; a
        # plain CG (JAX's) as the derivative's solve shows what that costs to compile.
        "  check='off', solve=jax.scipy CG": rd(check="off", solve=_scipy_cg),
        "  forward solver alone (no derivative rule)": jax.value_and_grad(
            lambda lam, X, y, Xv, yv: R.val_loss(R.cg_forward(jnp.zeros(200), lam, X, y), Xv, yv)
        ),
    }
    try:
        from jaxopt import implicit_diff, linear_solve

        fns["peer: jaxopt custom_root(solve_cg)"] = loss_of(
            implicit_diff.custom_root(R.ridge_gradient, solve=linear_solve.solve_cg)(R.cg_forward)
        )
    except ImportError:
        pass
    return "ridge n=2000 d=200", args, fns


def deq():
    import rootdiff
    from benchmarks import fixed_point as FP

    n, batch = 400, 8
    args = FP._args(n, batch)

    def rd(**kw):
        return jax.value_and_grad(FP._loss_of(rootdiff.custom_fixed_point(FP.T, **kw)(FP.forward)))

    fns = {
        "rootdiff custom_fixed_point(solve='auto')": rd(),
        "  check='off'": rd(check="off"),
        "  check='nan'": rd(check="nan"),
        "  residual_tol=inf (no Newton step)": rd(residual_tol=float("inf")),
        "  solve='gmres'": rd(solve="gmres"),
        # No derivative: the forward check's Newton step alone (the estimate's loop).
        "  value only (no derivative)": FP._loss_of(rootdiff.custom_fixed_point(FP.T)(FP.forward)),
        "  value only, check='off'": FP._loss_of(
            rootdiff.custom_fixed_point(FP.T, check="off")(FP.forward)
        ),
    }
    try:
        from jaxopt import implicit_diff, linear_solve

        fns["peer: jaxopt custom_fixed_point(solve_gmres)"] = jax.value_and_grad(
            FP._loss_of(
                implicit_diff.custom_fixed_point(FP.T, solve=linear_solve.solve_gmres)(FP.forward)
            )
        )
    except ImportError:
        pass
    return f"DEQ fixed point n={n} B={batch}", args, fns


def lasso():
    import rootdiff
    from benchmarks import lasso as La
    from rootdiff.prox import prox_lasso

    X, y, Xv, yv, _, _ = La.make_problem(200)
    Xj, yj, Xvj, yvj = map(jnp.asarray, (X, y, Xv, yv))
    L = float(np.linalg.norm(X, 2) ** 2 / len(y))
    zeros = jnp.zeros(X.shape[1])

    def val(w):
        return jnp.mean((Xvj @ w - yvj) ** 2)

    def rd(**kw):
        def f(lam):
            return val(rootdiff.proximal_gradient(
                La.loss, zeros, prox_lasso, Xj, yj, hyperparams_prox=lam, stepsize=1 / L,
                tol=1e-10, maxiter=100000, **kw,
            ))  # fmt: skip

        return jax.value_and_grad(f)

    fns = {"rootdiff proximal_gradient": rd(), "  check='off'": rd(check="off")}
    try:
        import jaxopt

        pg = jaxopt.ProximalGradient(fun=La.loss, prox=jaxopt.prox.prox_lasso, stepsize=1 / L,
                                     tol=1e-10, maxiter=100000, implicit_diff=True)  # fmt: skip
        fns["peer: jaxopt ProximalGradient"] = jax.value_and_grad(
            lambda lam: val(pg.run(zeros, lam, Xj, yj).params)
        )
    except ImportError:
        pass
    return "lasso p=200", (jnp.asarray(0.5),), fns


def _layers(kind):
    from benchmarks import layers as Ly
    from rootdiff import layers

    if kind == "sparsemax":
        x, w = Ly.make_problem(1024, 1000)
        args = (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
        fns = {"rootdiff layers.sparsemax": lambda x, w: jnp.sum(w * layers.sparsemax(x))}
        peer = lambda x, w: jnp.sum(w * Ly.sparsemax_jaxopt(x))  # noqa: E731
        name = "sparsemax 1024x1000 f32"
    else:
        x, w = Ly.make_problem(256, 1000, seed=1)
        args = (jnp.asarray(2 * x), jnp.asarray(w))
        fns = {"rootdiff layers.lml": lambda x, w: jnp.sum(w * layers.lml(x, 10))}
        peer = lambda x, w: jnp.sum(w * Ly.lml_jaxopt(x, 10))  # noqa: E731
        name = "LML 256x1000 k=10 f64"
    fns = {k: jax.value_and_grad(f) for k, f in fns.items()}
    try:
        import jaxopt  # noqa: F401

        fns["peer: jaxopt Bisection + implicit diff"] = jax.value_and_grad(peer)
    except ImportError:
        pass
    return name, args, fns


def _qp(kind):
    import rootdiff
    from benchmarks import qp as Q

    if kind == "nnls":
        data, name = Q.nnls_batch(256), "batched QP: 256 NNLS n=5"
    else:
        data, name = Q.general_batch(64, 50, 10, 100), "batched QP: 64 x (n=50, p=10, m=100)"

    def batched(solve):
        return jax.vmap(jax.value_and_grad(Q._loss_of(solve), argnums=(0, 1, 2, 3, 4, 5)))

    fns = {
        "rootdiff solve_qp": batched(rootdiff.solve_qp),
        "  check='off'": batched(functools.partial(rootdiff.solve_qp, check="off")),
    }
    try:
        import qpax

        fns["peer: qpax solve_qp_primal"] = batched(qpax.solve_qp_primal)
    except ImportError:
        pass
    return name, tuple(map(jnp.asarray, data)), fns


def eq_qp():
    import rootdiff
    from benchmarks import eq_qp as E

    Q, c, A, b, t = E.make_problem(500, 100)
    args = tuple(map(jnp.asarray, (c, b, Q, A, t)))
    fns = {
        "rootdiff solve_eq_qp": E.user_loss(rootdiff.solve_eq_qp),
        "  check='off'": E.user_loss(functools.partial(rootdiff.solve_eq_qp, check="off")),
        "peer: dense KKT jnp.linalg.solve + autodiff": E.user_loss(E._dense),
    }
    return "equality QP n=500 p=100", args, fns


WORKLOADS = {
    "ridge": ridge,
    "deq": deq,
    "lasso": lasso,
    "sparsemax": functools.partial(_layers, "sparsemax"),
    "lml": functools.partial(_layers, "lml"),
    "qp_nnls": functools.partial(_qp, "nnls"),
    "qp_general": functools.partial(_qp, "general"),
    "eq_qp": eq_qp,
}


def run(only=None, repeats: int = 3, clock=time.perf_counter) -> list[tuple]:
    """Rows ``(workload, impl, trace s, compile s, kernels, total ÷ the peer's)``."""
    rows = []
    for key, make in WORKLOADS.items():
        if only and key not in only:
            continue
        name, args, fns = make()
        times = {k: [] for k in fns}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeats):
                for k, f in fns.items():  # interleaved
                    times[k].append(measure(f, args, clock))
        best = {k: (min(r[0] for r in v), min(r[1] for r in v), v[0][2]) for k, v in times.items()}
        peer = next((v for k, v in best.items() if k.startswith("peer")), None)
        for k, (t, c, ops) in best.items():
            ratio = (t + c) / (peer[0] + peer[1]) if peer else float("nan")
            rows.append((name, k, t, c, ops, ratio))
            print(f"{name:38s} {k:46s} {t:7.2f} {c:7.2f} {ops:5d} {ratio:6.2f}", flush=True)
    return rows


def format_table(rows) -> str:
    lines = [
        "| workload | implementation | trace + lower (s) | compile (s) | kernels | total ÷ peer |",
        "|---|---|---|---|---|---|",
    ]
    for name, k, t, c, ops, ratio in rows:
        lines.append(f"| {name} | {k.strip()} | {t:.2f} | {c:.2f} | {ops} | {ratio:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else None
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 3
    # --cpu: process CPU time instead of wall time, far less sensitive to the load of
    # other processes (XLA may compile on several threads: then CPU time > wall time).
    clock = time.process_time if "--cpu" in argv else time.perf_counter
    load0 = os.getloadavg()[0]
    rows = run(only, repeats, clock)
    print(
        f"\nload average {load0:.1f} → {os.getloadavg()[0]:.1f}; minimum of {repeats} "
        f"repeats; {'process CPU' if '--cpu' in argv else 'wall'} time\n"
    )
    print(format_table(rows))
