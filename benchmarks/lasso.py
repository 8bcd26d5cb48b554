r"""Lasso hypergradient on a leukemia-shaped problem (38 × 7129), and tuning vs LassoCV.

.. math::
    w^*(λ) = \arg\min_w \tfrac{1}{2n}\|X w − y\|^2 + λ\|w\|_1,
    \qquad L(λ) = \tfrac{1}{m}\|X_v w^*(λ) − y_v\|^2 .

Reference (numpy, float64): on the support ``S`` of a tightly converged solution,
``w_S = (X_SᵀX_S/n)⁻¹(X_Sᵀy/n − λ s)``, so ``dw_S/dλ = −(X_SᵀX_S/n)⁻¹ s`` and
``dL/dλ = 2 (X_v w − y_v)ᵀ X_v dw/dλ / m``.

Workload ``lasso``: ``jax.jit(jax.value_and_grad(L))`` with

* rootdiff ``proximal_gradient`` (FISTA, step ``1/L``), derivative on the support
  (the default for ``prox_lasso``) and on the full system (``support=False``);
* the same from a warm start at the solution, so that the time is the derivative's
  (backward solve) alone: support-restricted CG vs GMRES on the full system;
* rootdiff on a working set of 64 columns containing the support (forward and
  derivative; ``examples/lasso_tuning.py``);
* jaxopt ``ProximalGradient(implicit_diff=True)`` with ``jaxopt.prox.prox_lasso``.

Workload ``lasso tuning``: choosing λ — rootdiff hypergradient descent (25 Adam steps
on log λ, working set, hold-out) against scikit-learn ``LassoCV`` on the same hold-out
and with 5-fold CV (100 alphas); time (compilation apart) and test MSE in the note.
"""

from __future__ import annotations

import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import HERE, Row, bench_all, format_table

jax.config.update("jax_enable_x64", True)

import rootdiff  # noqa: E402
from rootdiff.prox import prox_lasso  # noqa: E402


def _example():
    path = os.path.join(os.path.dirname(HERE), "examples", "lasso_tuning.py")
    spec = importlib.util.spec_from_file_location("lasso_tuning_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_problem(p: int, seed: int = 0):
    from sklearn.datasets import make_regression

    n_tr, n_val, n_te = 38, 34, 200
    X, y = make_regression(n_tr + n_val + n_te, p, n_informative=3, noise=10.0,
                           random_state=seed)  # fmt: skip
    fit = slice(0, n_tr + n_val)
    X = (X - X[fit].mean(0)) / X[fit].std(0)
    y = y - y[fit].mean()
    return X[:n_tr], y[:n_tr], X[n_tr : n_tr + n_val], y[n_tr : n_tr + n_val], X[-n_te:], y[-n_te:]


def loss(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


def reference_grad(X, y, Xv, yv, lam, w_tight):
    S = np.flatnonzero(np.abs(w_tight) > 1e-12)
    Xs = X[:, S]
    G = Xs.T @ Xs / len(y)
    s = np.sign(w_tight[S])
    w = np.zeros(X.shape[1])
    w[S] = np.linalg.solve(G, Xs.T @ y / len(y) - lam * s)
    dw = np.zeros_like(w)
    dw[S] = -np.linalg.solve(G, s)
    return float(2 * (Xv @ w - yv) @ (Xv @ dw) / len(yv)), w


def implementations(X, y, Xv, yv, lam, w_star, tol):
    Xj, yj, Xvj, yvj = map(jnp.asarray, (X, y, Xv, yv))
    L = float(np.linalg.norm(X, 2) ** 2 / len(y))
    zeros = jnp.zeros(X.shape[1])
    val = lambda w: jnp.mean((Xvj @ w - yvj) ** 2)  # noqa: E731

    def rd(support, init):
        def f(lam):
            w = rootdiff.proximal_gradient(loss, init, prox_lasso, Xj, yj, hyperparams_prox=lam,
                                           stepsize=1 / L, tol=tol, maxiter=100000,
                                           support=support)  # fmt: skip
            return val(w)

        return f

    ex = _example()

    def working_set(lam):
        return val(ex.fit(Xj, yj, prox_lasso, lam, zeros, L, tol=tol, rounds=20))

    impls = {
        "rootdiff proximal_gradient (support)": rd(None, zeros),
        "rootdiff proximal_gradient (support=False)": rd(False, zeros),
        "rootdiff warm start, derivative only (support)": rd(None, jnp.asarray(w_star)),
        "rootdiff warm start, derivative only (support=False)": rd(False, jnp.asarray(w_star)),
        "rootdiff working set of 64 columns": working_set,
    }
    try:
        import jaxopt
    except ImportError:
        impls["jaxopt ProximalGradient(implicit_diff=True)"] = None
    else:
        pg = jaxopt.ProximalGradient(fun=loss, prox=jaxopt.prox.prox_lasso, stepsize=1 / L,
                                     tol=tol, maxiter=100000, implicit_diff=True)  # fmt: skip
        impls["jaxopt ProximalGradient(implicit_diff=True)"] = lambda lam: val(
            pg.run(zeros, lam, Xj, yj).params
        )
    return impls


def tuning_rows(X, y, Xv, yv, Xe, ye, quick: bool) -> list[Row]:
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import PredefinedSplit

    ex = _example()
    Xt, yt, Xvj, yvj, Xej, yej = map(jnp.asarray, (X, y, Xv, yv, Xe, ye))
    Xa, ya = np.concatenate([X, Xv]), np.concatenate([y, yv])
    lam_max = float(np.max(np.abs(X.T @ y)) / len(y))
    steps = 10 if quick else 25
    run = ex.make_tuner((Xt, yt), (Xvj, yvj), prox_lasso, jnp.exp, 0.3, steps)
    theta0 = jnp.log(lam_max / 10)
    t = time.perf_counter()
    compiled = run.lower(theta0).compile()
    compile_s = time.perf_counter() - t
    compiled(theta0)  # warm-up
    t = time.perf_counter()
    theta, _ = jax.block_until_ready(compiled(theta0))
    t_ours = time.perf_counter() - t
    La = float(np.linalg.norm(Xa, 2) ** 2 / len(ya))
    w = ex.fit(jnp.asarray(Xa), jnp.asarray(ya), prox_lasso, jnp.exp(theta),
               jnp.zeros(X.shape[1]), La, tol=1e-10, rounds=20)  # fmt: skip
    mse = lambda w: float(np.mean((Xe @ np.asarray(w) - ye) ** 2))  # noqa: E731
    name = "lasso tuning"
    rows = [Row(name, f"rootdiff hypergradient descent ({steps} steps, hold-out)", compile_s,
                1e3 * t_ours, note=f"test MSE {mse(w):.1f}", is_rootdiff=True)]  # fmt: skip
    holdout = PredefinedSplit(np.r_[np.full(len(y), -1), np.zeros(len(yv))])
    for label, cv in (("same hold-out", holdout), ("5-fold CV", 5)):
        t = time.perf_counter()
        model = LassoCV(cv=cv, fit_intercept=False, alphas=100).fit(Xa, ya)
        t_cv = time.perf_counter() - t
        rows.append(Row(name, f"scikit-learn LassoCV (100 alphas, {label})", None, 1e3 * t_cv,
                        note=f"test MSE {mse(model.coef_):.1f}"))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[Row]:
    p = 2000 if quick else 7129
    X, y, Xv, yv, Xe, ye = make_problem(p)
    lam = float(np.max(np.abs(X.T @ y)) / len(y)) / 5
    tol = 1e-10
    w_tight = rootdiff.proximal_gradient(
        loss, jnp.zeros(p), prox_lasso, jnp.asarray(X), jnp.asarray(y), hyperparams_prox=lam,
        stepsize=len(y) / np.linalg.norm(X, 2) ** 2, tol=1e-14, maxiter=200000,
    )  # fmt: skip
    g_ref, w_star = reference_grad(X, y, Xv, yv, lam, np.asarray(w_tight))
    impls = implementations(X, y, Xv, yv, lam, w_star, tol)
    S = int(np.sum(w_star != 0))
    rows = bench_all(
        f"lasso {X.shape[0]}x{p}", impls, (jnp.asarray(lam),), jnp.asarray(g_ref),
        quick=quick, repeats=5, note_rootdiff=f"support {S} of {p}",
    )  # fmt: skip
    return rows + tuning_rows(X, y, Xv, yv, Xe, ye, quick)


WORKLOADS = {"lasso": run}


if __name__ == "__main__":
    import sys

    print(format_table(run(quick="--quick" in sys.argv)))
