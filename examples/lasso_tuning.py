r"""Tune the Lasso and the elastic net by hypergradient descent, against scikit-learn's CV.

Run it with::

    python examples/lasso_tuning.py          # ROOTDIFF_FAST=1 for a quick run

The problem has the shape of the classic *leukemia* benchmark: 38 training samples and
7129 features (synthetic, from ``sklearn.datasets.make_regression``, with 3 informative
features; no download), plus 34 validation and 200 test samples. The Lasso

.. math::
    w^*(λ) = \operatorname{argmin}_w \tfrac{1}{2n}\lVert X_{tr} w − y_{tr}\rVert^2
             + λ\lVert w\rVert_1

is solved by :func:`rootdiff.proximal_gradient` with :func:`rootdiff.prox.prox_lasso`;
``jax.grad`` of the validation loss ``‖X_val w^*(λ) − y_val‖²/m`` w.r.t. ``log λ`` comes
from the implicit function theorem on the proximal-gradient fixed point, posed on the
solution's support only (a linear system the size of the support). The outer loop is
optax's Adam on ``log λ``; the elastic net tunes ``(log λ, log γ)`` the same way.

With ``p ≫ n`` a proximal-gradient pass over all 7129 features is the expensive part,
so the forward solve uses a *working set*: the ``K`` features with the largest
``|∇f|/λ`` (plus the current support) are solved for, the optimality of the others is
checked, and the set is refreshed until none violates it. Its result is handed to
``proximal_gradient`` on the full problem as a warm start, which confirms it (a few
iterations) and attaches the derivative.

The script

1. checks the hypergradient against central finite differences (float64, stable
   support; relative error ≤ 1e-8),
2. runs hypergradient descent for the Lasso and the elastic net (progress printed),
3. runs ``LassoCV`` and ``ElasticNetCV`` on the same criterion (fit on the training
   samples, score on the validation samples, refit on both at the chosen value; ours is
   refitted the same way), and ``LassoCV`` with its usual 5-fold CV on the same samples,
4. prints the test losses and wall times (compilation reported separately).
"""

from __future__ import annotations

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64: accurate hypergradients and FD check

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402
from sklearn.linear_model import ElasticNetCV, LassoCV  # noqa: E402
from sklearn.model_selection import PredefinedSplit  # noqa: E402

import rootdiff  # noqa: E402
from rootdiff.prox import prox_elastic_net, prox_lasso  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
N_TRAIN, N_VAL, N_TEST = 38, 34, 200
P = 1500 if FAST else 7129
STEPS = 6 if FAST else 25
K = 64  # working-set size
TOL = 1e-6  # inner tolerance during tuning
FD_TOLERANCE = 1e-8

sg = jax.lax.stop_gradient
PROXES = (prox_lasso, prox_elastic_net)


def load_data(seed: int = 0):
    X, y = make_regression(N_TRAIN + N_VAL + N_TEST, P, n_informative=3, noise=10.0,
                           random_state=seed)  # fmt: skip
    fit = slice(0, N_TRAIN + N_VAL)
    X = (X - X[fit].mean(0)) / X[fit].std(0)
    y = y - y[fit].mean()
    tr, va, te = slice(0, N_TRAIN), slice(N_TRAIN, N_TRAIN + N_VAL), slice(-N_TEST, None)
    return [(jnp.asarray(X[s]), jnp.asarray(y[s])) for s in (tr, va, te)]


def loss(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


def lipschitz(X):
    return jnp.linalg.norm(X, 2) ** 2 / X.shape[0]


def fit(X, y, prox, hp, w_prev, L, tol=TOL, rounds=5):
    """Lasso-type fit on a working set; differentiable in ``hp`` (and ``y``).

    The ``K`` features with the largest ``|∇f|/λ`` (plus the current support) are
    solved for; the set is refreshed until no other feature violates optimality
    (``|∇ⱼf| ≤ λ`` where ``wⱼ = 0``). The solution is then the full problem's solution,
    and its derivative is the full problem's too (zero off the support, which lies in the
    working set): the implicit rule runs on the working set's ``K`` columns only. If
    ``rounds`` refreshes do not suffice, the full problem is solved instead (``L`` is
    the Lipschitz constant of ``∇loss`` on all of ``X``, computed once).
    """
    lam = hp[0] if isinstance(hp, tuple) else hp
    p = X.shape[1]
    k = min(K, p)
    restrict = lambda h, idx: jax.tree.map(lambda v: v if jnp.ndim(v) == 0 else v[idx], h)  # noqa: E731

    def small(w, idx, hs, tol):
        Xs = X[:, idx]
        return rootdiff.proximal_gradient(
            loss, w[idx], prox, Xs, y, hyperparams_prox=hs, stepsize=1 / lipschitz(Xs),
            tol=tol, maxiter=20000,
        )  # fmt: skip

    def violation(w):
        g = jax.grad(loss)(w, X, y)
        return jnp.max(jnp.where(w == 0, jnp.abs(g) - sg(lam), -jnp.inf))

    def body(c):
        w, _, r, _ = c
        g = jax.grad(loss)(w, X, y)
        score = jnp.abs(g) / sg(lam) + jnp.where(w != 0, jnp.inf, 0.0)
        idx = jax.lax.top_k(score, k)[1]
        w = jnp.zeros_like(w).at[idx].set(small(w, idx, sg(restrict(hp, idx)), tol))
        return w, idx, r + 1, violation(w)

    cond = lambda c: (c[2] < rounds) & (c[3] > tol * sg(lam))  # noqa: E731
    c0 = (sg(w_prev), jnp.arange(k, dtype=jnp.int32), 0, jnp.inf)
    w, idx, _, viol = jax.lax.while_loop(cond, body, c0)

    def on_working_set():  # the converged working-set problem, differentiated
        v = small(w, idx, restrict(hp, idx), tol)
        return jnp.zeros_like(w).at[idx].set(v)

    def on_everything():  # fallback: all features
        return rootdiff.proximal_gradient(
            loss, w, prox, X, y, hyperparams_prox=hp, stepsize=1 / L, tol=tol, maxiter=20000
        )

    return jax.lax.cond(viol <= tol * sg(lam), on_working_set, on_everything)


def make_tuner(train, val, prox, to_hp, lr, steps):
    (Xt, yt), (Xv, yv) = train, val
    L = lipschitz(Xt)

    def val_loss(theta, w_prev):
        w = fit(Xt, yt, prox, to_hp(theta), w_prev, L)
        return jnp.mean((Xv @ w - yv) ** 2), w

    @jax.jit
    def run(theta0):
        # Adam with a decaying step; the best point seen is returned (the validation
        # loss of a small sample is flat and noisy near its minimum)
        opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

        def step(c, _):
            theta, state, w, best = c
            (v, w), g = jax.value_and_grad(val_loss, has_aux=True)(theta, w)
            best = jax.tree.map(lambda a, b: jnp.where(v < best[0], a, b), (v, theta), best)
            u, state = opt.update(g, state)
            return (optax.apply_updates(theta, u), state, w, best), (v, theta)

        c0 = (theta0, opt.init(theta0), jnp.zeros(Xt.shape[1]), (jnp.inf, theta0))
        (_, _, _, (_, theta)), hist = jax.lax.scan(step, c0, None, length=steps)
        return theta, hist

    return run


def timed_tuning(name, run, theta0):
    t = time.perf_counter()
    compiled = run.lower(theta0).compile()
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    theta, (vals, thetas) = compiled(theta0)
    theta = jax.block_until_ready(theta)
    t_run = time.perf_counter() - t
    for k in range(0, len(vals), max(1, len(vals) // 8)):
        print(f"  {name} step {k:3d}: validation MSE {float(vals[k]):10.2f}  "
              f"θ = {np.round(np.asarray(thetas[k]), 3)}")  # fmt: skip
    print(f"  {name}: tuned in {t_run:.2f} s (+ {t_compile:.1f} s compilation, once)")
    return theta, t_run, t_compile


def f64(hp):
    """Hyperparameters as float64 arrays: one compiled program whatever their Python type
    (a weak-typed Python float and a NumPy float64 would each compile their own)."""
    return jax.tree.map(lambda v: jnp.asarray(v, dtype=jnp.float64), hp)


def fitter(X, y):
    """``(hp, prox_id) ↦ w``: the accurate fit on ``(X, y)`` (jitted once per penalty)."""
    L = lipschitz(X)
    fit_jit = jax.jit(
        lambda hp, prox_id: fit(X, y, PROXES[prox_id], hp, jnp.zeros(P), L, tol=1e-12,
                                rounds=20),
        static_argnums=1,
    )  # fmt: skip
    return lambda hp, prox_id: fit_jit(f64(hp), prox_id)


def check_hypergradient(solve, train, val):
    """d val / dλ against central differences in λ (w* is affine in λ on a stable support).

    ``solve(λ, 0)`` is the Lasso fit on the training samples (jitted, tolerance 1e-12).
    """
    (Xt, yt), (Xv, yv) = train, val
    lam_max = float(jnp.max(jnp.abs(Xt.T @ yt)) / N_TRAIN)
    val_loss = lambda lam: jnp.mean((Xv @ solve(lam, 0) - yv) ** 2)  # noqa: E731
    hypergradient = jax.jit(jax.grad(val_loss))  # built once: compiled once, not per λ
    worst = 0.0
    for frac in (0.3, 0.1):
        lam = lam_max * frac
        g = float(hypergradient(lam))
        h = 1e-4 * lam
        s0, sp, sm = (np.asarray(solve(v, 0)) != 0 for v in (lam, lam + h, lam - h))
        assert (s0 == sp).all() and (s0 == sm).all(), "support changed: pick a smaller h"
        fd = (float(val_loss(lam + h)) - float(val_loss(lam - h))) / (2 * h)
        rel = abs(g - fd) / abs(fd)
        worst = max(worst, rel)
        print(f"  λ = {lam:7.3f} (support {int(s0.sum())}): hypergradient {g:+.10e}, "
              f"central FD {fd:+.10e}, relative error {rel:.1e}")  # fmt: skip
    return worst


def main() -> int:
    train, val, test = load_data()
    (Xt, yt), (Xv, yv), (Xe, ye) = train, val, test
    Xa, ya = jnp.concatenate([Xt, Xv]), jnp.concatenate([yt, yv])
    print(f"data: train {Xt.shape}, validation {Xv.shape}, test {Xe.shape}")
    print("1. hypergradient against central finite differences")
    # Accurate fits (tolerance 1e-12), one compiled program per data set and penalty:
    # on the training samples (the finite-difference check and the criterion below)
    # and on train + validation (the refit at the tuned values, as the CV refit does).
    solve, refit = fitter(Xt, yt), fitter(Xa, ya)
    fd_error = check_hypergradient(solve, train, val)

    lam_max = float(jnp.max(jnp.abs(Xt.T @ yt)) / N_TRAIN)
    test_mse = lambda w: float(jnp.mean((Xe @ w - ye) ** 2))  # noqa: E731

    print("2. hypergradient descent (Adam on log-hyperparameters)")
    theta0 = jnp.log(lam_max / 10)
    run = make_tuner(train, val, prox_lasso, jnp.exp, 0.3, STEPS)
    theta, t_lasso, c_lasso = timed_tuning("Lasso", run, theta0)
    w_lasso = refit(jnp.exp(theta), 0)

    # θ = (log α, logit r) in scikit-learn's terms: λ = α r, λγ = α (1 − r)
    def to_hp(th):
        alpha, r = jnp.exp(th[0]), jax.nn.sigmoid(th[1])
        return alpha * r, (1 - r) / r

    if not FAST:  # (the fast mode skips the elastic net: one compilation less)
        run = make_tuner(train, val, prox_elastic_net, to_hp, 0.3, STEPS)
        theta0_en = jnp.array([theta0 - jnp.log(0.9), jnp.log(9.0)])  # α r = λ_max/10, r = 0.9
        theta_en, t_enet, c_enet = timed_tuning("elastic net", run, theta0_en)
        w_enet = refit(to_hp(theta_en), 1)

    print("3. scikit-learn's grid search on the same samples (train + validation)")
    # The same criterion as ours: fit on the 38 training samples, score on the 34
    # validation samples (a predefined split), then refit on all 72 at the chosen value.
    holdout = PredefinedSplit(np.r_[np.full(N_TRAIN, -1), np.zeros(N_VAL)])
    n_alphas = 20 if FAST else 100
    Xa_np, ya_np = np.asarray(Xa), np.asarray(ya)

    def sk(model):
        t = time.perf_counter()
        model = model.fit(Xa_np, ya_np)
        return model, time.perf_counter() - t

    cv, t_cv = sk(LassoCV(cv=holdout, fit_intercept=False, alphas=n_alphas))
    cv5, t_cv5 = sk(LassoCV(cv=5, fit_intercept=False, alphas=n_alphas))
    if not FAST:
        ratios = [0.1, 0.5, 0.7, 0.9, 0.95, 0.99]
        ecv, t_ecv = sk(ElasticNetCV(cv=holdout, fit_intercept=False, alphas=n_alphas,
                                     l1_ratio=ratios))  # fmt: skip

    # the criterion itself: validation MSE of the training-set fit at each choice
    crit = lambda hp, prox_id: jnp.mean((Xv @ solve(hp, prox_id) - yv) ** 2)  # noqa: E731
    sk_hp = lambda m: (m.alpha_ * m.l1_ratio_, (1 - m.l1_ratio_) / m.l1_ratio_)  # noqa: E731

    nnz = lambda w: int((w != 0).sum())  # noqa: E731
    rows = [
        ("Lasso, hypergradient (rootdiff)", w_lasso, t_lasso, crit(jnp.exp(theta), 0)),
        ("Lasso, LassoCV, same hold-out", cv.coef_, t_cv, crit(cv.alpha_, 0)),
        ("Lasso, LassoCV, 5-fold CV", cv5.coef_, t_cv5, crit(cv5.alpha_, 0)),
    ]
    if not FAST:
        rows += [
            ("Elastic net, hypergradient (rootdiff)", w_enet, t_enet, crit(to_hp(theta_en), 1)),
            ("Elastic net, ElasticNetCV, same hold-out", ecv.coef_, t_ecv, crit(sk_hp(ecv), 1)),
        ]
    print(f"\n{'method':42s} {'val. MSE':>9s} {'test MSE':>9s} {'time [s]':>9s} "
          f"{'nonzeros':>9s}")  # fmt: skip
    for name, w, t, v in rows:
        w = jnp.asarray(w)
        print(f"{name:42s} {float(v):9.2f} {test_mse(w):9.2f} {t:9.2f} {nnz(w):9d}")
    print(
        "(val. MSE: the criterion, i.e. the validation error of the fit on the training "
        "samples; test MSE: after the refit on training + validation)"
    )
    print(f"(compilation, once per problem shape: Lasso {c_lasso:.1f} s; test MSE of the "
          f"zero model {float(jnp.mean(ye**2)):.1f})")  # fmt: skip
    print(f"speed-up over LassoCV: {t_cv / t_lasso:.1f}x (same hold-out), "
          f"{t_cv5 / t_lasso:.1f}x (5-fold)"
          + ("" if FAST else f"; over ElasticNetCV {t_ecv / t_enet:.1f}x"))  # fmt: skip
    ok = fd_error <= FD_TOLERANCE
    print(f"hypergradient vs FD: worst relative error {fd_error:.1e} "
          f"({'ok' if ok else 'FAILED'}, tolerance {FD_TOLERANCE:.0e})")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
