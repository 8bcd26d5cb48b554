r"""Sparse logistic regression on breast cancer: the l1 penalty tuned by hypergradient.

Run it with::

    python examples/lasso_logistic.py          # ROOTDIFF_FAST=1 for a quick run

scikit-learn's bundled *breast cancer* data (569 tumours, 30 measurements; no
download), split 35/30/35 into train/validation/test. The model has an unpenalised
intercept, so the parameters are a pytree ``{"w": (30,), "b": ()}`` and the prox is
:func:`rootdiff.prox.prox_lasso` with a matching pytree of penalties ``{"w": λ, "b": 0}``:

.. math::
    (w, b)^*(λ) = \operatorname{argmin}_{w, b}\ \tfrac1n \textstyle\sum_i
                  \log\bigl(1 + e^{−y_i (x_i^⊤ w + b)}\bigr) + λ\lVert w\rVert_1 .

``log λ`` is tuned by Adam on the validation log-loss, with hypergradients from
:func:`rootdiff.proximal_gradient` (backtracking step, no Lipschitz constant needed),
checked against central finite differences. For comparison, scikit-learn's
``LogisticRegressionCV(penalty="l1", solver="liblinear")``: 5-fold CV over a grid of ``C`` on
train + validation (the same samples; ours is refitted on them at the tuned ``λ``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402

import rootdiff  # noqa: E402
from rootdiff.prox import prox_lasso  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
STEPS = 10 if FAST else 40
FD_TOLERANCE = 1e-8


def load_data(seed: int = 0):
    X, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_tr, n_val = int(0.35 * len(y)), int(0.30 * len(y))
    tr, va, te = perm[:n_tr], perm[n_tr : n_tr + n_val], perm[n_tr + n_val :]
    mu, sd = X[tr].mean(0), X[tr].std(0)
    split = lambda i: (jnp.asarray((X[i] - mu) / sd), jnp.asarray(2.0 * y[i] - 1))  # noqa: E731
    return split(tr), split(va), split(te)


def log_loss(params, X, y):
    return jnp.mean(jax.nn.softplus(-y * (X @ params["w"] + params["b"])))


def solve(lam, X, y, init=None, tol=1e-9):
    init = {"w": jnp.zeros(X.shape[1]), "b": jnp.zeros(())} if init is None else init
    return rootdiff.proximal_gradient(log_loss, init, prox_lasso, X, y,
                                      hyperparams_prox={"w": lam, "b": 0.0}, tol=tol,
                                      maxiter=20000)  # fmt: skip


def main() -> int:
    (Xt, yt), (Xv, yv), (Xe, ye) = load_data()
    accuracy = lambda p, X, y: float(jnp.mean(jnp.sign(X @ p["w"] + p["b"]) == y))  # noqa: E731

    def val_loss(theta, init):
        params = solve(jnp.exp(theta), Xt, yt, init)
        return log_loss(params, Xv, yv), params

    @jax.jit
    def tune(theta0):
        opt = optax.adam(0.3)

        def step(c, _):
            theta, state, p = c
            (v, p), g = jax.value_and_grad(val_loss, has_aux=True)(theta, p)
            u, state = opt.update(g, state)
            return (optax.apply_updates(theta, u), state, p), (v, theta)

        p0 = {"w": jnp.zeros(Xt.shape[1]), "b": jnp.zeros(())}
        (theta, _, _), hist = jax.lax.scan(step, (theta0, opt.init(theta0), p0), None,
                                           length=STEPS)  # fmt: skip
        return theta, hist

    theta0 = jnp.log(0.1)
    t = time.perf_counter()
    compiled = tune.lower(theta0).compile()
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    theta, (vals, thetas) = jax.block_until_ready(compiled(theta0))
    t_tune = time.perf_counter() - t
    for k in range(0, STEPS, max(1, STEPS // 6)):
        print(f"step {k:3d}: λ = {float(jnp.exp(thetas[k])):.4f}, "
              f"validation log-loss {float(vals[k]):.4f}")  # fmt: skip
    lam = float(jnp.exp(theta))
    print(f"tuned λ = {lam:.4f} in {t_tune:.2f} s (+ {t_compile:.1f} s compilation, once)")

    # hypergradient d(validation log-loss)/dλ against central differences, at a λ of
    # moderate conditioning on the way (the tuned λ is weak: slow, ill-conditioned solves)
    lam = float(jnp.exp(thetas[min(3, STEPS - 1)]))

    @jax.jit
    def loss_and_support(lam):  # one compiled solve serves the differences and supports
        p = solve(lam, Xt, yt, tol=1e-14)
        return log_loss(p, Xv, yv), p["w"] != 0

    f = lambda lam: loss_and_support(lam)[0]  # noqa: E731
    g = float(jax.jit(jax.grad(f))(lam))
    # Richardson-extrapolated central differences (error O(h⁴)): a step large enough
    # that the solutions' rounding does not swamp the difference, support kept fixed
    supp = lambda lam: np.asarray(loss_and_support(lam)[1])  # noqa: E731
    stable = lambda h: all((supp(lam) == supp(lam + s)).all() for s in (h, -h, h / 2, -h / 2))  # noqa: E731
    h = next((r * lam for r in (1e-2, 3e-3, 1e-3, 3e-4) if stable(r * lam)), None)
    assert h is not None, "the support changes within 0.03% of λ: no FD check here"
    central = lambda h: (float(f(lam + h)) - float(f(lam - h))) / (2 * h)  # noqa: E731
    fd = (4 * central(h / 2) - central(h)) / 3
    rel = abs(g - fd) / abs(fd)
    print(f"at λ = {lam:.4f}: hypergradient {g:+.10e}, central FD {fd:+.10e}, "
          f"relative error {rel:.1e}")  # fmt: skip

    Xa, ya = jnp.concatenate([Xt, Xv]), jnp.concatenate([yt, yv])
    p_ours = solve(float(jnp.exp(theta)), Xa, ya)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saga's own convergence and deprecation notices
        cv = LogisticRegressionCV(Cs=10 if FAST else 30, cv=5, penalty="l1",
                                  solver="liblinear", max_iter=5000)  # fmt: skip
        cv = cv.fit(np.asarray(Xa), np.asarray(ya))
    t_cv = time.perf_counter() - t
    p_cv = {"w": jnp.asarray(cv.coef_[0]), "b": jnp.asarray(cv.intercept_[0])}
    print(f"\n{'method':36s} {'test log-loss':>13s} {'accuracy':>9s} {'nonzeros':>9s} "
          f"{'time [s]':>9s}")  # fmt: skip
    for name, p, t in (("hypergradient (rootdiff)", p_ours, t_tune),
                       ("LogisticRegressionCV (scikit-learn)", p_cv, t_cv)):  # fmt: skip
        print(f"{name:36s} {float(log_loss(p, Xe, ye)):13.4f} {accuracy(p, Xe, ye):9.3f} "
              f"{int(jnp.sum(p['w'] != 0)):9d} {t:9.2f}")  # fmt: skip
    ok = rel <= FD_TOLERANCE
    print(f"hypergradient vs FD: {'ok' if ok else 'FAILED'} (tolerance {FD_TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
