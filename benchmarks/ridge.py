r"""Ridge hypergradient: d/dλ of the validation loss of the ridge solution.

.. math::
    w^*(λ) = \arg\min_w \tfrac{1}{2n}\|X w - y\|^2 + \tfrac{λ}{2}\|w\|^2,
    \qquad L(λ) = \tfrac{1}{2 n_v}\|X_v w^*(λ) - y_v\|^2.

Reference (numpy, float64): ``dw/dλ = −(XᵀX/n + λI)⁻¹ w`` and
``dL/dλ = (X_v w − y_v)ᵀ X_v (dw/dλ) / n_v``.

Implementations, all inside one ``jax.jit(jax.value_and_grad(L))``:

* rootdiff ``argmin`` with the forward solver a user writes (CG on the normal
  equations) and rootdiff's default backward solve ("auto": CG here, since
  ``d > DENSE_THRESHOLD``), and with ``solve="cholesky"`` (materialise the Hessian,
  factorise once);
* rootdiff ``custom_root`` on the gradient with ``solve="cg"``;
* jaxopt ``custom_root`` with its default backward solver (``solve_normal_cg``) and
  with ``solve_cg`` — same forward solver;
* unrolled gradient descent (``lax.fori_loop``, reverse-mode autodiff);
* the closed form ``jnp.linalg.solve(XᵀX/n + λI, Xᵀy/n)`` differentiated by JAX.

Where rootdiff's time goes against jaxopt ``solve_cg`` (n = 2000, d = 200; one
process, interleaved, 41 rounds, load 3.3, median CPU time ÷ jaxopt's): it is only
Hessian-vector products. The shared forward CG takes about 22; jaxopt's derivative CG
(``jax.scipy.sparse.linalg.cg``, tol 1e-5) 9, for a gradient error of 1.1e-6;
rootdiff's takes 21 to its tolerance ``eps^0.75`` (gradient error 2.6e-13), and the
default forward check ``F`` at the answer and a Newton step (CG to relative residual
1e-6: 11 products). With the same tolerance and no check (``functools.partial(cg,
tol=1e-5)``, ``check="off"``) rootdiff is 1.01× jaxopt; the tighter tolerance makes it
1.33×, the check 1.75×. Compile time follows the same split (load 6.9, minimum of
3): 1.41 s (108 kernels), 1.14 s with ``check="off"`` (67 kernels, as many as
jaxopt's), jaxopt 0.92 s (see ``benchmarks/compile_time.py``).

Products with ``Xᵀ`` are written ``r @ X``: XLA:CPU compiles ``X.T @ r`` to a copy of
the transposed ``X`` followed by a matrix-vector product, 14× slower at d = 2000.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, bench_all

jax.config.update("jax_enable_x64", True)

LAM = 0.1


def make_problem(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d) / np.sqrt(d)
    X = rng.standard_normal((n, d))
    y = X @ w_true + 0.5 * rng.standard_normal(n)
    Xv = rng.standard_normal((n // 2, d))
    yv = Xv @ w_true + 0.5 * rng.standard_normal(n // 2)
    return X, y, Xv, yv


def reference_grad(X, y, Xv, yv, lam):
    n, d = X.shape
    H = X.T @ X / n + lam * np.eye(d)
    w = np.linalg.solve(H, X.T @ y / n)
    dw = -np.linalg.solve(H, w)
    return float((Xv @ w - yv) @ (Xv @ dw) / len(yv))


def ridge_objective(w, lam, X, y):
    r = X @ w - y
    return 0.5 * jnp.vdot(r, r) / X.shape[0] + 0.5 * lam * jnp.vdot(w, w)


def ridge_gradient(w, lam, X, y):
    # ``r @ X`` rather than ``X.T @ r``: on XLA:CPU the latter copies the transpose of
    # X on every call (measured 20 ms vs 1.4 ms for a 2000 × 2000 float64 X).
    return (X @ w - y) @ X / X.shape[0] + lam * w


def cg_forward(w0, lam, X, y):
    """The forward solver a user writes: CG on ``(XᵀX/n + λI) w = Xᵀy/n``."""
    n = X.shape[0]
    matvec = lambda v: (X @ v) @ X / n + lam * v  # not X.T @ (X @ v): see ridge_gradient
    w, _ = jax.scipy.sparse.linalg.cg(matvec, y @ X / n, x0=w0, tol=1e-13, maxiter=2000)
    return w


def val_loss(w, Xv, yv):
    r = Xv @ w - yv
    return 0.5 * jnp.vdot(r, r) / Xv.shape[0]


def implementations(d: int, n_unroll: int):
    """``name -> loss(lam, X, y, Xv, yv)`` for every implementation that can run."""
    import rootdiff

    impls = {}

    solver = rootdiff.argmin(ridge_objective)(cg_forward)
    impls["rootdiff argmin (fwd CG, solve=auto)"] = lambda lam, X, y, Xv, yv: val_loss(
        solver(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv
    )
    solver_chol = rootdiff.argmin(ridge_objective, solve="cholesky")(cg_forward)
    impls["rootdiff argmin (fwd CG, solve=cholesky)"] = lambda lam, X, y, Xv, yv: val_loss(
        solver_chol(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv
    )
    solver_cg = rootdiff.custom_root(ridge_gradient, solve="cg", symmetric=True)(cg_forward)
    impls["rootdiff custom_root (solve=cg)"] = lambda lam, X, y, Xv, yv: val_loss(
        solver_cg(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv
    )
    try:
        from jaxopt import implicit_diff, linear_solve

        jx_default = implicit_diff.custom_root(ridge_gradient)(cg_forward)
        jx_cg = implicit_diff.custom_root(ridge_gradient, solve=linear_solve.solve_cg)(cg_forward)
        impls["jaxopt custom_root (default normal_cg)"] = lambda lam, X, y, Xv, yv: val_loss(
            jx_default(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv
        )
        impls["jaxopt custom_root (solve_cg)"] = lambda lam, X, y, Xv, yv: val_loss(
            jx_cg(jnp.zeros(X.shape[1]), lam, X, y), Xv, yv
        )
    except ImportError:
        impls["jaxopt"] = None

    def unrolled(lam, X, y, Xv, yv):
        n = X.shape[0]
        # Step 1/L with L bounding the Hessian's largest eigenvalue (power iteration
        # on XᵀX/n, stopped out of the graph: only the iterations are differentiated).
        L = jax.lax.stop_gradient(_top_eig(X) + lam)
        w = jax.lax.fori_loop(
            0, n_unroll, lambda _, w: w - ridge_gradient(w, lam, X, y) / L, jnp.zeros(X.shape[1])
        )
        del n
        return val_loss(w, Xv, yv)

    impls[f"unrolled GD ({n_unroll} steps)"] = unrolled

    def closed_form(lam, X, y, Xv, yv):
        n, d = X.shape
        w = jnp.linalg.solve(X.T @ X / n + lam * jnp.eye(d), y @ X / n)
        return val_loss(w, Xv, yv)

    impls["closed form (jnp.linalg.solve)"] = closed_form
    return impls


def _top_eig(X, iters: int = 50):
    v = jnp.ones(X.shape[1]) / np.sqrt(X.shape[1])

    def body(_, v):
        u = (X @ v) @ X / X.shape[0]
        return u / jnp.linalg.norm(u)

    v = jax.lax.fori_loop(0, iters, body, v)
    return 1.01 * jnp.vdot(X @ v, X @ v) / X.shape[0]


def run(quick: bool = False) -> list[Row]:
    rows = []
    sizes = [(400, 300)] if quick else [(2000, 200), (2000, 2000)]
    for n, d in sizes:
        X, y, Xv, yv = make_problem(n, d)
        g_ref = reference_grad(X, y, Xv, yv, LAM)
        args = (jnp.asarray(LAM), *map(jnp.asarray, (X, y, Xv, yv)))
        impls = implementations(d, n_unroll=500)
        rows += bench_all(
            f"ridge n={n} d={d}", impls, args, g_ref, quick=quick, repeats=5 if quick else 7
        )
    return rows


WORKLOADS = {"ridge": run}

if __name__ == "__main__":
    from benchmarks._common import format_table

    print(format_table(run(quick="--quick" in __import__("sys").argv)))
