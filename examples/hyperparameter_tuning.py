r"""Tune one L2 penalty per feature by hypergradient descent through a decorated solver.

Run it with::

    python examples/hyperparameter_tuning.py

The model is ridge regression on scikit-learn's bundled *diabetes* data set (442
patients, 10 measurements; no download), expanded with all degree-2 products and
squares into ``p = 65`` features, so there are more coefficients than the 176
training patients can pin down and regularisation decides the fit. Each feature
``j`` gets its own penalty ``λ_j = exp(θ_j)``:

.. math::
    w^*(θ) = \operatorname{argmin}_{w, b}\;
             \tfrac{1}{2n}\lVert X_{tr} w + b - y_{tr}\rVert^2
             + \tfrac12 \textstyle\sum_j e^{θ_j} w_j^2 ,
    \qquad
    \mathcal{L}_{val}(θ) = \tfrac1m \lVert X_{val} w^*(θ) + b^*(θ) - y_{val}\rVert^2 .

The inner problem is solved by a plain optax L-BFGS loop — exactly what a user would
write — decorated with :func:`rootdiff.argmin`, so ``jax.grad`` of the validation loss
with respect to the 65 log-penalties costs one Hessian-vector linear solve instead of
back-propagating through the L-BFGS iterations. The outer loop is optax's Adam on ``θ``.

The script

1. checks the hypergradient at the start against central finite differences (float64),
2. runs hypergradient descent, printing step, validation loss and time,
3. runs the classic alternative, a grid search over one shared penalty ``λ``,
4. prints a table (best validation loss, test loss, wall time) and saves
   ``hyperparameter_tuning.png`` (validation loss per outer step, grid-search best as
   a horizontal line) into ``$ROOTDIFF_OUT`` (default: the current directory).

``ROOTDIFF_FAST=1`` shrinks the run to a few seconds (used by the test suite).
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
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.preprocessing import PolynomialFeatures  # noqa: E402

import rootdiff  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
OUTER_STEPS = 8 if FAST else 150
GRID_SIZE = 5 if FAST else 30
LEARNING_RATE = 0.1
FD_TOLERANCE = 1e-5  # relative error allowed between hypergradient and central FD


# ----------------------------------------------------------------------------- data


def load_data(seed: int = 0):
    """Diabetes with degree-2 features, split 40/30/30 into train/validation/test.

    Features and target are standardised with the training statistics only.
    """
    X, y = load_diabetes(return_X_y=True)
    X = PolynomialFeatures(degree=2, include_bias=False).fit_transform(X)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_tr, n_val = int(0.4 * len(y)), int(0.3 * len(y))
    tr, val, te = perm[:n_tr], perm[n_tr : n_tr + n_val], perm[n_tr + n_val :]
    mu, sd = X[tr].mean(0), X[tr].std(0)
    y_mu, y_sd = y[tr].mean(), y[tr].std()
    split = lambda idx: (jnp.asarray((X[idx] - mu) / sd), jnp.asarray((y[idx] - y_mu) / y_sd))
    return split(tr), split(val), split(te)


# ----------------------------------------------------------------------------- model


def predict(params: jax.Array, X: jax.Array) -> jax.Array:
    """Linear model; ``params = [w_1 .. w_p, b]`` (weights, then the intercept)."""
    return X @ params[:-1] + params[-1]


def mse(params: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((predict(params, X) - y) ** 2)


def train_objective(params: jax.Array, log_lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    """½·MSE on the training set + ½ Σⱼ exp(θⱼ) wⱼ² (the intercept is not penalised)."""
    return 0.5 * mse(params, X, y) + 0.5 * jnp.sum(jnp.exp(log_lam) * params[:-1] ** 2)


def fit_exact(log_lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    """Closed-form minimiser of ``train_objective`` (the reference for the checks).

    Solves ``(Aᵀ A / n + diag(λ, 0)) params = Aᵀ y / n`` with ``A = [X, 1]``.
    """
    A = jnp.concatenate([X, jnp.ones((X.shape[0], 1))], axis=1)
    penalty = jnp.concatenate([jnp.exp(log_lam), jnp.zeros(1)])
    return jnp.linalg.solve(A.T @ A / len(y) + jnp.diag(penalty), A.T @ y / len(y))


@rootdiff.argmin(train_objective)
def fit(init: jax.Array, log_lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    """Minimise ``train_objective`` with optax's L-BFGS until max|∇| ≤ 1e-12.

    An ordinary optimisation loop: rootdiff never differentiates through it, it only
    uses the optimality condition ∇_params train_objective = 0 at its output.
    """
    fun = lambda params: train_objective(params, log_lam, X, y)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def not_done(carry):
        params, state = carry
        grad = optax.tree_utils.tree_get(state, "grad")
        grad_max = optax.tree_utils.tree_max(jax.tree.map(jnp.abs, grad))
        count = optax.tree_utils.tree_get(state, "count")
        return (count == 0) | ((grad_max > 1e-12) & (count < 2000))

    params, _ = jax.lax.while_loop(not_done, step, (init, solver.init(init)))
    return params


def make_problem(train, val, test):
    """Jitted ``θ ↦ (L_val, ∇θ L_val)`` and ``θ ↦ (L_val, L_test)``."""
    init = jnp.zeros(train[0].shape[1] + 1)

    def val_loss(log_lam):
        return mse(fit(init, log_lam, *train), *val)

    @jax.jit
    def val_and_test_loss(log_lam):
        params = fit(init, log_lam, *train)
        return mse(params, *val), mse(params, *test)

    return jax.jit(jax.value_and_grad(val_loss)), val_and_test_loss


# ----------------------------------------------------------------------------- checks


def check_hypergradient(val_and_grad, train, val, log_lam, eps: float = 1e-5) -> float:
    """Relative error of ``∇θ L_val`` against central finite differences, all coordinates.

    The finite differences use the closed-form inner solution, so that they measure
    the hypergradient itself and not the stopping tolerance of L-BFGS.
    """
    _, g = val_and_grad(log_lam)
    exact_val_loss = jax.jit(lambda log_lam: mse(fit_exact(log_lam, *train), *val))
    basis = np.eye(log_lam.size)
    loss_at = lambda theta: float(exact_val_loss(theta))
    fd = np.array(
        [(loss_at(log_lam + eps * e) - loss_at(log_lam - eps * e)) / (2 * eps) for e in basis]
    )
    return float(np.linalg.norm(np.asarray(g) - fd) / np.linalg.norm(fd))


# ----------------------------------------------------------------------------- main


def main() -> int:
    train, val, test = load_data()
    p = train[0].shape[1]
    print(f"diabetes, degree-2 features: p = {p} features, n_train/val/test = "
          f"{len(train[1])}/{len(val[1])}/{len(test[1])}")  # fmt: skip
    val_and_grad, val_and_test_loss = make_problem(train, val, test)

    # 1. hypergradient vs central finite differences at the starting point.
    log_lam0 = np.full(p, np.log(0.1))  # NumPy: a strongly typed float64 start
    rel_err = check_hypergradient(val_and_grad, train, val, log_lam0)
    ok = rel_err < FD_TOLERANCE
    print(f"hypergradient check at θ0: relative error vs central FD over all {p} "
          f"coordinates = {rel_err:.2e} ({'OK' if ok else 'FAILED'})")  # fmt: skip

    # Compile everything first, so that the timings below compare the methods, not XLA.
    optimizer = optax.adam(LEARNING_RATE)

    @jax.jit
    def adam_step(grad, opt_state, log_lam):
        updates, opt_state = optimizer.update(grad, opt_state, log_lam)
        return optax.apply_updates(log_lam, updates), opt_state

    log_lam, opt_state = log_lam0, optimizer.init(log_lam0)
    jax.block_until_ready((val_and_test_loss(log_lam0), adam_step(log_lam0, opt_state, log_lam0)))

    # 2. hypergradient descent with Adam.
    print(f"\nhypergradient descent: Adam(lr={LEARNING_RATE}) on {p} log-penalties")
    t0 = time.perf_counter()
    history, best = [], (np.inf, log_lam0)
    for step in range(OUTER_STEPS + 1):
        loss, grad = val_and_grad(log_lam)
        loss = float(loss)
        history.append(loss)
        if loss < best[0]:
            best = (loss, log_lam)
        if step % max(1, OUTER_STEPS // 15) == 0 or step == OUTER_STEPS:
            print(f"  step {step:4d}   val loss {loss:.4f}   {time.perf_counter() - t0:6.2f} s")
        if step < OUTER_STEPS:
            log_lam, opt_state = adam_step(grad, opt_state, log_lam)
    hyper_time = time.perf_counter() - t0
    hyper_val, hyper_log_lam = best
    hyper_test = float(val_and_test_loss(hyper_log_lam)[1])

    # 3. grid search over one shared penalty.
    t0 = time.perf_counter()
    grid = np.logspace(-3, 2, GRID_SIZE)
    grid_losses = [val_and_test_loss(np.full(p, np.log(lam))) for lam in grid]
    i = int(np.argmin([float(val) for val, _ in grid_losses]))
    grid_time = time.perf_counter() - t0
    grid_val, grid_test = (float(loss) for loss in grid_losses[i])

    # 4. results.
    rows = [
        (f"grid search, one shared λ ({GRID_SIZE} values)", grid_val, grid_test, grid_time),
        (f"hypergradient, {p} λ's ({OUTER_STEPS} steps)", hyper_val, hyper_test, hyper_time),
    ]
    print(f"\n  {'method':40s} {'best val MSE':>12s} {'test MSE':>9s} {'wall time':>10s}")
    for name, val_mse, test_mse, seconds in rows:
        print(f"  {name:40s} {val_mse:12.4f} {test_mse:9.4f} {seconds:8.2f} s")
    print(f"  (grid search's best shared λ = {grid[i]:.3g})")
    lam = np.exp(np.asarray(hyper_log_lam))
    print(f"  learned λ range: {lam.min():.3g} .. {lam.max():.3g}; "
          f"{int(np.sum(lam > 10 * grid[i]))} of {p} features penalised 10x more than the "
          f"grid's λ")  # fmt: skip
    print("(MSE in units of the training target's variance; times exclude JIT compilation;\n"
          f" {p} hyperparameters tuned on {len(val[1])} validation points partly fit that set's "
          "noise, so the test set, never used for tuning, shows the honest gain)")  # fmt: skip

    save_plot(history, grid_val, grid[i])
    if not ok:
        print("FAILED: hypergradient disagrees with finite differences", file=sys.stderr)
        return 1
    return 0


def save_plot(history, grid_val, grid_lam) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history, label="hypergradient descent (one λ per feature)")
    ax.axhline(grid_val, color="k", ls="--", label=f"grid search best (one λ = {grid_lam:.3g})")
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation MSE")
    ax.set_title("Ridge on diabetes (degree-2 features)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(OUT, "hyperparameter_tuning.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
