r"""Weighted Lasso: one penalty per feature, tuned by gradient (hundreds of hyperparameters).

Run it with::

    python examples/lasso_weighted.py          # ROOTDIFF_FAST=1 for a quick run

.. math::
    w^*(θ) = \operatorname{argmin}_w \tfrac{1}{2n}\lVert X_{tr} w − y_{tr}\rVert^2
             + \textstyle\sum_j e^{θ_j} |w_j| ,
    \qquad \min_θ\ \tfrac1m\lVert X_{val} w^*(θ) − y_{val}\rVert^2 .

No grid search can tune ``p`` penalties; a hypergradient costs one linear solve on the
solution's support whatever ``p`` is. The data are synthetic (``make_regression``, 10
informative features of ``p``; no download). The script

1. tunes one shared ``λ`` by hypergradient descent (the plain Lasso),
2. starts the weighted Lasso there and tunes all ``p`` penalties (optax Adam),
3. checks the ``p``-dimensional hypergradient against central finite differences on a
   few coordinates (float64, stable support; relative error ≤ 1e-8),
4. prints test errors and support recovery, and saves ``weighted_lasso.png`` (learned
   ``λ_j`` per feature, true support marked) into ``$ROOTDIFF_OUT`` (default: ``.``).

A penalty only moves while its feature is in the support (the derivative off the
support is zero: a small change of ``λ_j`` does not move a zero coefficient), so the
learned penalties shrink on the useful features and stay put elsewhere.
"""

from __future__ import annotations

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402

import rootdiff  # noqa: E402
from rootdiff.prox import prox_lasso  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
N_TRAIN, N_VAL, N_TEST = 60, 60, 1000
P = 100 if FAST else 400
STEPS_SHARED, STEPS_WEIGHTED = (10, 30) if FAST else (30, 150)
FD_TOLERANCE = 1e-8


def load_data(seed: int = 0):
    X, y, coef = make_regression(N_TRAIN + N_VAL + N_TEST, P, n_informative=10, noise=20.0,
                                 coef=True, random_state=seed)  # fmt: skip
    X = (X - X[:N_TRAIN].mean(0)) / X[:N_TRAIN].std(0)
    y = y - y[:N_TRAIN].mean()
    cut = [0, N_TRAIN, N_TRAIN + N_VAL, len(y)]
    parts = [(jnp.asarray(X[a:b]), jnp.asarray(y[a:b])) for a, b in zip(cut, cut[1:])]
    return parts, np.flatnonzero(coef)


def loss(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


def main() -> int:
    (train, val, test), support = load_data()
    (Xt, yt), (Xv, yv), (Xe, ye) = train, val, test
    L = float(jnp.linalg.norm(Xt, 2) ** 2 / N_TRAIN)

    def solve(lam, w0, tol=1e-8):
        return rootdiff.proximal_gradient(loss, w0, prox_lasso, Xt, yt, hyperparams_prox=lam,
                                          stepsize=1 / L, tol=tol, maxiter=50000)  # fmt: skip

    def val_loss(theta, w0):
        w = solve(jnp.exp(theta), w0)
        return jnp.mean((Xv @ w - yv) ** 2), w

    def tune(theta0, steps, lr):
        opt = optax.adam(lr)

        def step(c, _):
            theta, state, w = c
            (v, w), g = jax.value_and_grad(val_loss, has_aux=True)(theta, w)
            u, state = opt.update(g, state)
            return (optax.apply_updates(theta, u), state, w), v

        c0 = (theta0, opt.init(theta0), jnp.zeros(P))
        (theta, _, _), vals = jax.lax.scan(step, c0, None, length=steps)
        return theta, vals

    tune = jax.jit(tune, static_argnums=(1, 2))

    @jax.jit
    def exact(lam):  # an accurate fit and its validation MSE: one compiled program
        w = solve(jnp.broadcast_to(lam, (P,)), jnp.zeros(P), tol=1e-13)
        return jnp.mean((Xv @ w - yv) ** 2), w

    test_mse = lambda lam: float(jnp.mean((Xe @ exact(lam)[1] - ye) ** 2))  # noqa: E731

    lam_max = float(jnp.max(jnp.abs(Xt.T @ yt)) / N_TRAIN)
    t = time.perf_counter()
    theta_1, vals_1 = tune(jnp.log(lam_max / 10), STEPS_SHARED, 0.2)
    print(f"1. one shared λ: {float(jnp.exp(theta_1)):.3f}, validation MSE "
          f"{float(vals_1[0]):.1f} -> {float(vals_1[-1]):.1f} ({time.perf_counter() - t:.1f} s "
          f"with compilation)")  # fmt: skip
    t = time.perf_counter()
    theta_p, vals_p = tune(jnp.full(P, theta_1), STEPS_WEIGHTED, 0.1)
    theta_p = jax.block_until_ready(theta_p)
    print(f"2. {P} penalties: validation MSE {float(vals_p[0]):.1f} -> {float(vals_p[-1]):.1f}"
          f" ({time.perf_counter() - t:.1f} s with compilation)")  # fmt: skip
    for k in range(0, STEPS_WEIGHTED, max(1, STEPS_WEIGHTED // 6)):
        print(f"   step {k:4d}: validation MSE {float(vals_p[k]):.2f}")

    # 3. hypergradient against central differences (w* is affine in λ on a stable support)
    lam = jnp.exp(theta_p)
    f_val = lambda lam: exact(lam)[0]  # noqa: E731
    g = jax.jit(jax.grad(f_val))(lam)
    w = exact(lam)[1]
    worst = 0.0
    for j in np.flatnonzero(np.asarray(w))[:3]:
        h = 1e-4 * float(lam[j])
        e = jnp.zeros(P).at[j].set(h)
        same = [bool(jnp.all((exact(lam + s * e)[1] != 0) == (w != 0))) for s in (1, -1)]
        assert all(same), "support changed in the FD check"
        fd = (float(f_val(lam + e)) - float(f_val(lam - e))) / (2 * h)
        rel = abs(float(g[j]) - fd) / abs(fd)
        worst = max(worst, rel)
        print(
            f"3. ∂val/∂λ_{j}: hypergradient {float(g[j]):+.10e}, FD {fd:+.10e}, rel. err {rel:.1e}"
        )

    found = np.flatnonzero(np.asarray(w))
    hits = len(np.intersect1d(found, support))
    print(f"4. test MSE: one λ {test_mse(jnp.full(P, jnp.exp(theta_1))):.1f}, one λ per feature "
          f"{test_mse(lam):.1f}; support: {len(found)} selected, {hits} of {len(support)} "
          f"true features among them")  # fmt: skip

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no plot")
    else:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.semilogy(np.asarray(lam), ".", color="tab:blue", label="learned λ_j")
        ax.semilogy(support, np.asarray(lam)[support], "o", mfc="none", color="tab:red",
                    ms=9, label="true support")  # fmt: skip
        ax.axhline(float(jnp.exp(theta_1)), color="gray", ls="--", label="tuned shared λ")
        ax.set_xlabel("feature j")
        ax.set_ylabel("penalty λ_j")
        ax.set_title(f"Weighted Lasso: {P} penalties tuned by hypergradient descent")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = os.path.join(OUT, "weighted_lasso.png")
        fig.savefig(path, dpi=120)
        print(f"saved {path}")
    ok = worst <= FD_TOLERANCE
    print(f"hypergradient vs FD: worst relative error {worst:.1e} ({'ok' if ok else 'FAILED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
