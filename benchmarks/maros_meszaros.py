r"""``solve_qp`` on the Maros–Meszaros dense subset, scored as the published QP benchmark.

Run:  python benchmarks/maros_meszaros.py [--quick] [--no-grad] [--only NAME,NAME]
      [--out results_dir]

Each problem ``min ½xᵀPx + qᵀx  s.t.  l ≤ [C; I] x ≤ u`` (read from
``../shared/maros_meszaros/*.mat``, or ``$MAROS_MESZAROS_DIR``) is converted as the
published benchmark does: rows of ``C`` with ``u − l < 1e-10`` become ``Ax = b``;
every other row gives ``Cx ≤ u`` and ``−Cx ≤ −l``, infinite (``|v| ≥ 9e19``) ones
dropped; bounds become rows ``±eᵢ`` of ``G`` (infinite ones dropped).

A problem is *solved* at an accuracy when ``solve_qp`` reports status 0 **and**
its ``(x, y, z)`` meets, in absolute ∞-norms (float64, on the original data):

* primal residual ``max(‖Ax − b‖∞, ‖(Gx − h)₊‖∞)``,
* dual residual ``‖Px + q + Aᵀy + Gᵀz‖∞``,
* duality gap ``|xᵀPx + qᵀx + bᵀy + hᵀz|``,

each ``≤ 1e-9`` (high), ``≤ 1e-6`` (mid) or ``≤ 1e-3`` (low). As in the published
benchmark, the solver runs *at the accuracy's tolerance*: ``solve_qp(...,
tol=0, atol=1e-9)`` for high (the same absolute rule as the scoring), then, only if
that is not solved, at ``atol=1e-6`` for mid and ``1e-3`` for low. One compile per
problem (the tolerances are traced arguments); compile and run times (of the
high-accuracy call) are reported separately.

The float64 floor of the gap: the table also gives the gap of the returned point
evaluated exactly (``exact gap``, rational arithmetic on its float64 entries, see
:func:`exact_gap`) and the spacing of float64 numbers at the size of the gap's
largest term (``f64 spacing``). Where that spacing exceeds the accuracy's
threshold, the terms cancel to a gap below the float64 resolution of the terms
themselves: the scored (float64) gap carries a rounding error of that size for
*any* float64 point, and whether it lands below 1e-9 is a rounding coincidence.

Derivatives (full mode, problems solved at mid accuracy with ``n ≤ 100``):
``jit(grad)`` of the linear loss ``cᵀx`` with respect to ``(q, b, h)`` along a random
direction, at the default tolerance, against finite differences of the forward
solve (steps ``1e-6`` and ``1e-5`` relative to the data, shrunk by 10 up to three
times while they cross a kink). Where the forward and backward
one-sided differences agree (the active set is stable) the error is against the
central difference; where they disagree the direction crosses a kink of the
solution map (a degenerate constraint), and the error is against the nearer
one-sided difference, the documented derivative there. Where the active
constraints are linearly dependent only ``q`` is perturbed, see :func:`grad_check`.
The table also shows ``QPInfo.derivative`` where it is not 0 (``solve_qp`` reports
that no derivative exists: the minimiser is not unique, or the active constraints
are dependent and only the derivative w.r.t. ``Q``, ``q`` exists).

``--quick`` runs 5 small problems (seconds; used in CI).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.environ.get(
    "MAROS_MESZAROS_DIR", os.path.join(HERE, "..", "..", "..", "shared", "maros_meszaros")
)
if not os.path.isdir(DEFAULT_DIR):
    DEFAULT_DIR = "/work/shared/maros_meszaros"

QUICK = ("HS35", "HS51", "QPTEST", "ZECEVIC2", "HS76")
LEVELS = {"high": 1e-9, "mid": 1e-6, "low": 1e-3}
#: Published success rates (qpbenchmark 2.3.0, 61-problem dense subset), high / mid.
PUBLISHED = {
    "PIQP": (81, 98),
    "ProxQP": (76, 87),
    "SCS": (68, 74),
    "Clarabel": (44, 50),
    "OSQP": (42, 42),
    "quadprog": (26, 32),
}
INF = 9e19
#: ``QPInfo.derivative`` codes as shown in the table.
DERIVATIVE_NOTE = (
    "",
    " [flag: dependent constraints]",
    " [flag: not unique]",
    " [flag: degenerate]",
    " [flag: unpolished]",
)


def load(path: str):
    """``(name, (Q, q, A, b, G, h))`` in float64 numpy, converted as described above."""
    import scipy.io

    d = scipy.io.loadmat(path)
    n = int(np.asarray(d["n"]).squeeze())
    m = int(np.asarray(d["m"]).squeeze())
    P = np.asarray(d["P"].todense(), dtype=np.float64)
    P = 0.5 * (P + P.T)  # the files hold the full symmetric matrix; keep it exactly symmetric
    q = np.asarray(d["q"], dtype=np.float64).ravel()
    Afull = np.asarray(d["A"].todense(), dtype=np.float64)
    lo, up = np.asarray(d["l"], float).ravel(), np.asarray(d["u"], float).ravel()
    C, cl, cu = Afull[: m - n], lo[: m - n], up[: m - n]
    lb, ub = lo[m - n :], up[m - n :]
    eq = (cu - cl) < 1e-10
    A, b = C[eq], cu[eq]
    rows, rhs = [], []
    ineq = ~eq
    keep_u = ineq & (cu < INF)
    keep_l = ineq & (cl > -INF)
    rows += [C[keep_u], -C[keep_l]]
    rhs += [cu[keep_u], -cl[keep_l]]
    eye = np.eye(n)
    rows += [eye[ub < INF], -eye[lb > -INF]]
    rhs += [ub[ub < INF], -lb[lb > -INF]]
    G, h = np.concatenate(rows), np.concatenate(rhs)
    name = os.path.splitext(os.path.basename(path))[0]
    return name, (P, q, A.reshape(-1, n), b, G.reshape(-1, n), h)


def residuals(data, x, y, z):
    """The published benchmark's three absolute residuals (∞-norms)."""
    Q, q, A, b, G, h = data
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    prim = max(
        np.max(np.abs(A @ x - b), initial=0.0), np.max(np.maximum(G @ x - h, 0.0), initial=0.0)
    )
    dual = np.max(np.abs(Q @ x + q + A.T @ y + G.T @ z), initial=0.0)
    gap = abs(x @ Q @ x + q @ x + b @ y + h @ z)
    return float(prim), float(dual), float(gap)


def gap_terms(data, x, y, z):
    """The four float64 terms ``xᵀPx, qᵀx, bᵀy, hᵀz`` of the scoring rule's gap."""
    Q, q, A, b, G, h = data
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    return np.array([x @ Q @ x, q @ x, b @ y, h @ z])


def exact_gap(data, x, y, z) -> float:
    """``xᵀPx + qᵀx + bᵀy + hᵀz`` of the float64 point evaluated exactly, rounded once.

    Rational arithmetic (:class:`fractions.Fraction`) on the nonzero float64 entries:
    the point's own duality gap, free of the rounding error of a float64 evaluation
    (about ``eps · Σ|products|``, which exceeds 1e-9 when the terms reach 1e7).
    """
    from fractions import Fraction

    Q, q, A, b, G, h = data
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    X = [Fraction(v) for v in x]
    i, j = np.nonzero(Q)
    total = sum((X[a] * Fraction(Q[a, c]) * X[c] for a, c in zip(i, j)), Fraction(0))
    for coef, var in ((q, x), (b, y), (h, z)):
        nz = np.flatnonzero(coef * var)
        total += sum((Fraction(coef[k]) * Fraction(var[k]) for k in nz), Fraction(0))
    return float(total)


def float64_floor(data, x, y, z, samples=300, seed=0) -> dict:
    """How well *any* float64 point can score on this problem: the solver's active set
    (``z > s``) solved exactly, then rounded to float64 and scored.

    The active-set KKT system ``[[P, Eᵀ], [E, 0]] (x, y, z_a) = (−q, b, h_a)`` (``E =
    [A; G_a]``, singular where the active rows are dependent) is solved by iterative
    refinement from the solver's point, with a float64 pseudo-inverse for the
    corrections and the residuals computed exactly (rational arithmetic), until they
    are far below float64 resolution. That solution ``u*`` is then rounded: to nearest,
    and ``samples`` times faithfully (each entry one of the floats next to ``u*``), as
    the output of a float64 solver that is exact up to its last bit. Returns the
    scoring rule's residuals of the nearest rounding, its exact gap, and over the
    faithful roundings the fraction that meets 1e-9 on all three residuals
    (``p_pass``) and the fraction whose exact gap is ``≤ 1e-9`` (``p_exact``).
    """
    from fractions import Fraction

    import scipy.sparse

    Q, q, A, b, G, h = data
    n, p = len(q), len(b)
    act = np.asarray(z) > h - G @ np.asarray(x)
    E = np.concatenate([A, G[act]])
    K = np.block([[Q, E.T], [E, np.zeros((len(E), len(E)))]])
    rhs = np.concatenate([-q, b, h[act]])
    pinv = np.linalg.pinv(K, rcond=1e-13, hermitian=True)
    Ks = scipy.sparse.csr_matrix(K)

    def exact_residual(u):  # rhs − K u, exactly, rounded once per row
        out = np.empty(len(rhs))
        for i in range(len(rhs)):
            cols = range(Ks.indptr[i], Ks.indptr[i + 1])
            out[i] = float(Fraction(rhs[i]) - sum(Fraction(Ks.data[k]) * u[Ks.indices[k]]
                                                  for k in cols))  # fmt: skip
        return out

    u = [Fraction(v) for v in np.concatenate([x, y, np.asarray(z)[act]])]
    for _ in range(4):
        u = [a + Fraction(d) for a, d in zip(u, pinv @ exact_residual(u))]
    kkt = float(np.max(np.abs(exact_residual(u))))
    hi = np.array([float(v) for v in u])
    lo = np.array([float(v - Fraction(w)) for v, w in zip(u, hi)])  # u* = hi + lo

    def point(v):
        zz = np.zeros(len(h))
        zz[act] = v[n + p :]
        return v[:n], v[n : n + p], zz

    # The exact gap of hi + δ to first order in δ (u* has gap ~0; δ ~ 1e-16 |u*|).
    grad = np.concatenate([2 * Q @ hi[:n] + q, b, h[act]])
    rng = np.random.default_rng(seed)
    passes, exact_ok = 0, 0
    for _ in range(samples):
        k = rng.integers(-1, 2, size=hi.shape)
        v = np.where(
            k > 0, np.nextafter(hi, np.inf), np.where(k < 0, np.nextafter(hi, -np.inf), hi)
        )
        passes += max(residuals(data, *point(v))) <= LEVELS["high"]
        exact_ok += abs(grad @ ((v - hi) - lo)) <= LEVELS["high"]
    return dict(
        kkt_residual=kkt,
        nearest=residuals(data, *point(hi)),
        nearest_exact_gap=abs(exact_gap(data, *point(hi))),
        p_pass=passes / samples,
        p_exact=exact_ok / samples,
    )


def _solver():
    import rootdiff

    def solve(Q, q, A, b, G, h, tol, atol):
        return rootdiff.solve_qp(Q, q, A, b, G, h, tol=tol, atol=atol, return_info=True,
                                 check="off")  # fmt: skip

    return jax.jit(solve)


def _passes(data, out, level_tol) -> bool:
    x, info = out
    res = residuals(data, x, info.y, info.z)
    return int(info.status) == 0 and bool(np.all(np.isfinite(res))) and max(res) <= level_tol


def run_problem(name, data, solve, grad: bool, seed: int = 0, floor: bool = False) -> dict:
    args = tuple(jnp.asarray(v) for v in data)
    high = (0.0, LEVELS["high"])
    t0 = time.perf_counter()
    compiled = solve.lower(*args, *high).compile()
    t_compile = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args, *high))  # warm-up
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args, *high))
    t_run = time.perf_counter() - t0
    x, info = out
    prim, dual, gap = residuals(data, x, info.y, info.z)
    status = int(info.status)
    row = dict(
        name=name,
        n=len(data[1]),
        p=len(data[3]),
        m=len(data[5]),
        status=status,
        iterations=int(info.iterations),
        primal_residual=prim,
        dual_residual=dual,
        gap=gap,
        compile_s=t_compile,
        run_s=t_run,
        finite=bool(np.all(np.isfinite(np.asarray(x)))),
        derivative=int(info.derivative),
    )
    # The float64 floor of the gap: the spacing of float64 numbers at the size of its
    # largest term, and the point's gap evaluated exactly (see exact_gap).
    row["gap_term"] = float(np.max(np.abs(gap_terms(data, x, info.y, info.z))))
    row["gap_spacing"] = float(np.spacing(row["gap_term"]))
    row["exact_gap"] = abs(exact_gap(data, x, info.y, info.z))
    if floor:
        row["floor"] = float64_floor(data, x, info.y, info.z, seed=seed)
    # Each accuracy at its own tolerance; a lower one is run only if needed.
    solved = False
    for level, level_tol in LEVELS.items():
        if not solved and level != "high":
            out = jax.block_until_ready(compiled(*args, 0.0, level_tol))
            row[f"status_{level}"] = int(out[1].status)
        solved = solved or _passes(data, out, level_tol)
        row[level] = solved
    if grad and row["mid"] and row["n"] <= 100:
        active = np.asarray(info.z) > np.asarray(info.s)
        E = np.concatenate([data[2], data[4][active]])
        row["active_full_rank"] = bool(np.linalg.matrix_rank(E) == E.shape[0])
        dependent = not row["active_full_rank"] or row["derivative"] == 1
        row["grad_rel_err"], row["fd_smooth"] = grad_check(data, args, seed, q_only=dependent)
        row["q_only"] = dependent
    return row


def grad_check(data, args, seed, q_only=False):
    """Relative error of ``jit(grad)`` of ``cᵀx`` w.r.t. ``(q, b, h)`` against FD.

    Returns ``(error, smooth)``: ``smooth`` when the forward and backward one-sided
    differences agree at two steps (then the error is against the central
    difference; the steps start at ``1e-6`` relative to the data and shrink by 10,
    at most three times, until no kink lies within them); otherwise the direction
    crosses a kink and the error is against the nearer one-sided difference (the
    solution map of a QP is piecewise affine in ``(q, b, h)``, so one-sided
    differences are exact up to the solver's accuracy as long as the step crosses
    no other kink).

    With ``q_only`` (the active constraints are linearly dependent) only ``q`` is
    perturbed: a generic change of ``b`` or ``h`` then makes the active constraints
    inconsistent, so the active set changes along the direction at once.
    """
    import rootdiff

    rng = np.random.default_rng(seed)
    Q, q, A, b, G, h = args
    c = jnp.asarray(rng.standard_normal(q.shape))
    dirs = [jnp.asarray(rng.standard_normal(v.shape)) for v in (q, b, h)]
    if q_only:
        dirs = [dirs[0], jnp.zeros_like(b), jnp.zeros_like(h)]

    def lin(q, b, h):
        return c @ rootdiff.solve_qp(Q, q, A, b, G, h, check="off")

    g = jax.jit(jax.grad(lin, argnums=(0, 1, 2)))(q, b, h)
    analytic = float(sum(jnp.vdot(gi, di) for gi, di in zip(g, dirs)))
    f = jax.jit(lin)
    scale = max(1.0, float(max(jnp.max(jnp.abs(v), initial=0.0) for v in (q, b, h))))
    f0 = float(f(q, b, h))

    def at(t):
        return float(f(*[v + t * d for v, d in zip((q, b, h), dirs)]))

    agree = lambda u, v: abs(u - v) <= 1e-6 * max(abs(u), abs(v), 1.0)  # noqa: E731
    # Steps from 1e-6 relative to the data down to 1e-9: the largest at which the
    # one-sided differences agree (a step that crosses no kink) is used.
    for level in range(4):
        eps = 1e-6 * scale * 10.0**-level
        (fw1, bw1), (fw2, bw2) = [((at(e) - f0) / e, (f0 - at(-e)) / e) for e in (eps, 10 * eps)]
        size = max(abs(fw1), abs(bw1), 1e-12)
        smooth = agree(fw1, bw1) and agree(fw2, bw2) and agree(fw1, fw2)
        if smooth:
            return abs(analytic - 0.5 * (fw1 + bw1)) / size, True
    return min(abs(analytic - fw1), abs(analytic - bw1)) / size, False


def table(rows) -> str:
    head = (
        "| problem | n | p | m | status | iters | primal res | dual res | gap | exact gap "
        "| f64 spacing | high | mid | compile s | run ms | grad err |\n" + "|---" * 16 + "|"
    )
    lines = [head]
    for r in rows:
        ge = r.get("grad_rel_err")
        ge_s = "" if ge is None else f"{ge:.0e}" + ("" if r.get("fd_smooth") else " (kink)")
        if ge is not None and r.get("q_only", not r.get("active_full_rank", True)):
            ge_s += " (q only)"
        ge_s += DERIVATIVE_NOTE[r.get("derivative", 0)]
        lines.append(
            f"| {r['name']} | {r['n']} | {r['p']} | {r['m']} | {r['status']} | {r['iterations']} "
            f"| {r['primal_residual']:.1e} | {r['dual_residual']:.1e} | {r['gap']:.1e} "
            f"| {r.get('exact_gap', float('nan')):.1e} | {r.get('gap_spacing', float('nan')):.0e} "
            f"| {'✓' if r['high'] else '✗'} | {'✓' if r['mid'] else '✗'} "
            f"| {r['compile_s']:.1f} | {1e3 * r['run_s']:.1f} | {ge_s} |"
        )
    return "\n".join(lines)


def floor_table(rows) -> str:
    """The :func:`float64_floor` experiment, one row per problem."""
    lines = [
        "| problem | gap's largest term | f64 spacing | exact gap (solver) | exactly solved, "
        "rounded: scored gap / exact gap | P(scored ≤ 1e-9) | P(exact gap ≤ 1e-9) |",
        "|---" * 7 + "|",
    ]
    for r in rows:
        f = r["floor"]
        lines.append(
            f"| {r['name']} | {r['gap_term']:.1e} | {r['gap_spacing']:.1e} | {r['exact_gap']:.1e} "
            f"| {f['nearest'][2]:.1e} / {f['nearest_exact_gap']:.1e} | {f['p_pass']:.2f} "
            f"| {f['p_exact']:.2f} |"
        )
    return "\n".join(lines)


def summary(rows) -> str:
    k = len(rows)
    rates = {lv: 100.0 * sum(r[lv] for r in rows) / k for lv in LEVELS}
    lines = [
        f"Success rates on {k} problems: high {rates['high']:.0f} %, mid {rates['mid']:.0f} %, "
        f"low {rates['low']:.0f} %.",
        "",
        "| solver | high (1e-9) | mid (1e-6) |",
        "|---|---|---|",
        f"| **rootdiff solve_qp** ({k} problems, this run) | {rates['high']:.0f} % "
        f"| {rates['mid']:.0f} % |",
    ]
    for solver, (hi, mid) in PUBLISHED.items():
        lines.append(f"| {solver} (published, 61 problems) | {hi} % | {mid} % |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-grad", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--floor", action="store_true",
                    help="float64_floor on each problem, no derivatives (with --only)")  # fmt: skip
    ap.add_argument("--first", default="", help="run these problems first (NAME,NAME)")
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)
    files = sorted(glob.glob(os.path.join(a.dir, "*.mat")))
    first = a.first.split(",") if a.first else []
    files.sort(key=lambda f: first.index(n) if (n := os.path.basename(f)[:-4]) in first else 99)
    if not files:
        sys.exit(f"no .mat files in {a.dir}")
    names = set(a.only.split(",")) if a.only else (set(QUICK) if a.quick else None)
    solve = _solver()
    rows = []
    os.makedirs(a.out, exist_ok=True)
    tag = "maros_meszaros" + ("_quick" if a.quick else "") + ("_floor" if a.floor else "")
    for path in files:
        name, data = load(path)
        if names is not None and name not in names:
            continue
        r = run_problem(name, data, solve, grad=not (a.quick or a.no_grad or a.floor),
                        floor=a.floor)  # fmt: skip
        rows.append(r)
        print(
            f"{name:10s} n={r['n']:4d} status={r['status']} it={r['iterations']:3d} "
            f"prim={r['primal_residual']:.1e} dual={r['dual_residual']:.1e} "
            f"gap={r['gap']:.1e} (exact {r['exact_gap']:.1e}, spacing {r['gap_spacing']:.0e}) "
            f"high={r['high']} mid={r['mid']} "
            f"compile={r['compile_s']:.1f}s run={1e3 * r['run_s']:.1f}ms"
            + (f" grad_err={r['grad_rel_err']:.1e}" if "grad_rel_err" in r else ""),
            flush=True,
        )
        if "floor" in r:
            print("   float64 floor:", floor_table([r]).splitlines()[-1], flush=True)
        with open(os.path.join(a.out, tag + ".json"), "w") as f:  # after each: runs are long
            json.dump(rows, f, indent=1)
    md = summary(rows) + "\n\n" + table(rows) + "\n"
    if a.floor:
        md += "\n" + floor_table(rows) + "\n"
    with open(os.path.join(a.out, tag + ".md"), "w") as f:
        f.write(md)
    print()
    print(md)
    return rows


if __name__ == "__main__":
    main()
