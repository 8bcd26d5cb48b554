r"""Decision-focused learning: train a return predictor on the portfolio it produces.

Run it with::

    python examples/decision_focused.py

**The decision.** Given predicted returns ``μ̂ ∈ ℝⁿ`` of ``n = 20`` assets, an investor
holds the long-only, fully invested mean–variance portfolio

.. math::
    x^\star(μ̂) = \operatorname{argmin}_{x}\; −μ̂^⊤x + \tfrac{γ}{2} x^⊤Σx
    \quad\text{s.t.}\quad 1^⊤x = 1,\ x ≥ 0,

a QP solved by :func:`rootdiff.solve_qp` (``Q = γΣ``, ``q = −μ̂``, ``A = 1ᵀ``,
``b = 1``, ``G = −I``, ``h = 0``). Its quality is measured with the *realised*
returns ``μ``: the cost ``c(x, μ) = −μᵀx + (γ/2) xᵀΣx``, and the **regret**
``c(x*(μ̂), μ) − c(x*(μ), μ) ≥ 0`` — how much worse the portfolio is than the one
chosen with perfect foresight.

**The prediction.** Each period comes with ``p = 5`` features ``z``; the returns
are a *nonlinear* (degree-4 polynomial) function of ``z`` plus noise, and the
predictor is *linear*, ``μ̂ = Wz + c`` — deliberately misspecified, as models of
real data are. Two ways to fit ``(W, c)`` on the same 200 training periods:

* **two-stage** (predict, then optimise): least squares on ``‖μ̂ − μ‖²``, the
  natural baseline. A linear model cannot fit the curvature, and least squares
  spends its capacity on the large returns of the polynomial's tail, whether or not
  they change the portfolio.
* **decision-focused**: starting from the two-stage fit, Adam on the training
  regret itself (the mean realised cost ``mean_t c(x*(W z_t + c), μ_t)`` up to a
  constant), differentiated *through the QP solver* by ``jax.grad`` (the implicit
  derivative of the solution map that :func:`rootdiff.solve_qp` attaches); the
  model spends its capacity on what changes the decision.

Both are evaluated on 1000 held-out periods, for several independently generated
markets (seeds), and the script prints the mean held-out regret of each (and of the
portfolio chosen from the average training return, for scale). Before training it
checks the gradient of the mean cost with respect to the predicted returns (the
part that goes through ``solve_qp``) against central finite differences (float64).
It verifies every portfolio's optimality conditions, and exits non-zero if a check
fails or if decision-focused learning does not beat the two-stage model in most
markets. It saves ``decision_focused.png`` (held-out regret during training;
per-seed results) into ``$ROOTDIFF_OUT`` (default: the current directory).

``ROOTDIFF_FAST=1`` runs one small market for a few steps (used by the test suite).
"""

from __future__ import annotations

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64: the finite-difference check needs it

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import rootdiff  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
N_ASSETS, N_FEATURES, DEGREE = 20, 5, 4
GAMMA = 2.0  # risk aversion
N_TRAIN, N_TEST = (100, 200) if FAST else (200, 1000)
SEEDS = (0,) if FAST else (0, 1, 2, 3, 4)
STEPS = 10 if FAST else 80
EVAL_EVERY = 5 if FAST else 20
LEARNING_RATE = 0.005
FD_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- data


def make_market(seed: int):
    """A covariance ``Σ`` (3 factors + idiosyncratic) and a random feature map ``B``."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(N_ASSETS, 3)) * 0.1
    Sigma = factors @ factors.T + np.diag(rng.uniform(0.01, 0.03, N_ASSETS))
    B = rng.normal(size=(N_ASSETS, N_FEATURES))
    return rng, Sigma, B


def sample_periods(rng: np.random.Generator, B: np.ndarray, n: int):
    """Features ``z ~ N(0, I)`` and returns ``μ = 0.05((Bz/√p + 3)⁴/3⁴ − 1)·(1 ± 20%)``."""
    Z = rng.normal(size=(n, N_FEATURES))
    signal = ((Z @ B.T / np.sqrt(N_FEATURES) + 3.0) ** DEGREE / 3.0**DEGREE - 1.0) * 0.05
    returns = signal * rng.uniform(0.8, 1.2, size=signal.shape)
    return Z, returns


# ----------------------------------------------------------------------------- decision


def portfolio(mu_hat: jax.Array, Sigma: jax.Array) -> jax.Array:
    """The long-only mean–variance portfolio ``x*(μ̂)``, by :func:`rootdiff.solve_qp`."""
    n = mu_hat.shape[-1]
    A, b = jnp.ones((1, n)), jnp.ones(1)  # fully invested
    G, h = -jnp.eye(n), jnp.zeros(n)  # long only
    # tol=1e-12 (default 1e-10) and check="off": a nearly degenerate constraint (an
    # asset whose weight is 0 and whose multiplier is also near 0) is the hard case for
    # an interior point's stopping test, and training meets many such portfolios. We ask
    # for more accuracy and verify every portfolio independently (`kkt_residual` below;
    # the script fails if one is not optimal) rather than rely on the solver's status.
    return rootdiff.solve_qp(GAMMA * Sigma, -mu_hat, A, b, G, h, tol=1e-12, check="off")


def kkt_residual(X, mu_hat, Sigma) -> float:
    """Largest violation of the optimality conditions of the portfolio QP, in numpy.

    ``x`` is optimal iff ``x ≥ 0``, ``Σx = 1`` and, with ``g = γΣx − μ̂`` and
    ``ν = −mean(g)`` over the held assets, ``g + ν = 0`` where ``x > 0`` and
    ``g + ν ≥ 0`` where ``x = 0``.
    """
    X, mu_hat, Sigma = np.asarray(X), np.asarray(mu_hat), np.asarray(Sigma)
    g = X @ (GAMMA * Sigma) - mu_hat
    held = X > 1e-9
    r = g - np.sum(g * held, -1, keepdims=True) / held.sum(-1, keepdims=True)
    stationarity = np.where(held, np.abs(r), np.maximum(-r, 0.0))
    return float(max(np.max(-X), np.max(np.abs(X.sum(-1) - 1)), np.max(stationarity)))


portfolios = jax.vmap(portfolio, in_axes=(0, None))  # one compiled loop per batch


def cost(x: jax.Array, mu: jax.Array, Sigma: jax.Array) -> jax.Array:
    """Realised cost ``−μᵀx + (γ/2) xᵀΣx`` of portfolio ``x`` (lower is better)."""
    return -x @ mu + 0.5 * GAMMA * x @ Sigma @ x


costs = jax.vmap(cost, in_axes=(0, 0, None))


def predict(theta, Z):
    W, c = theta
    return Z @ W.T + c


def mean_cost(mu_hat, M, Sigma):
    """Mean realised cost of the portfolios chosen from predicted returns ``mu_hat``."""
    X = portfolios(mu_hat, Sigma)
    return jnp.mean(costs(X, M, Sigma)), X


# The one function that runs the solver, compiled once (for batches of N_TRAIN periods):
# the mean cost, the portfolios, and the gradient of the mean cost with respect to the
# predictions (through solve_qp). Held-out sets are evaluated in chunks of N_TRAIN
# periods, so nothing is recompiled.
cost_and_grad = jax.jit(jax.value_and_grad(mean_cost, has_aux=True))


def chunks(*arrays):
    for i in range(0, len(arrays[0]), N_TRAIN):
        yield tuple(a[i : i + N_TRAIN] for a in arrays)


WORST_KKT = [0.0]  # largest KKT residual of every portfolio evaluated


def chunked_cost(mu_hat, M, Sigma) -> float:
    """:func:`mean_cost` of any number of periods (a multiple of ``N_TRAIN``)."""
    values = []
    for m_hat, m in chunks(mu_hat, M):
        (value, X), _ = cost_and_grad(m_hat, m, Sigma)
        values.append(float(value))
        WORST_KKT[0] = max(WORST_KKT[0], kkt_residual(X, m_hat, Sigma))
    return float(np.mean(values))


def mean_regret(theta, data, Sigma) -> float:
    """Mean regret ``c(x*(μ̂), μ) − c(x*(μ), μ)`` of the model ``θ`` on ``(Z, M, best)``."""
    Z, M, best = data
    return chunked_cost(predict(theta, Z), M, Sigma) - best


def fit_two_stage(Z, M):
    """Least squares ``min ‖Wz + c − μ‖²``: the predict-then-optimise baseline."""
    Z1 = np.c_[Z, np.ones(len(Z))]
    coef = np.linalg.lstsq(Z1, M, rcond=None)[0]
    return jnp.asarray(coef[:-1].T), jnp.asarray(coef[-1])


optimizer = optax.adam(LEARNING_RATE)


@jax.jit
def update(theta, opt_state, Z, grad_mu):
    """Chain rule from the predictions to ``θ`` (the linear model), then an Adam step."""
    _, pullback = jax.vjp(lambda th: predict(th, Z), theta)
    (grads,) = pullback(grad_mu)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(theta, updates), opt_state


def fit_decision_focused(theta, train, test, Sigma):
    """Adam on the training regret, differentiated through the QP; returns ``θ``, test curve."""
    opt_state = optimizer.init(theta)
    Z, M, _ = train
    curve = []
    for step in range(STEPS + 1):
        if step % EVAL_EVERY == 0 or step == STEPS:
            curve.append((step, mean_regret(theta, test, Sigma)))
            print(
                f"  decision-focused step {step:4d}: train regret "
                f"{mean_regret(theta, train, Sigma):.5f}, held-out regret {curve[-1][1]:.5f}",
                flush=True,
            )
        if step < STEPS:
            _, grad_mu = cost_and_grad(predict(theta, Z), M, Sigma)
            theta, opt_state = update(theta, opt_state, Z, grad_mu)
    return theta, curve


# ----------------------------------------------------------------------------- check


def check_gradient() -> float:
    """Relative error of ``∂ regret/∂μ̂`` along a random direction vs central differences."""
    rng, Sigma, B = make_market(100)
    Z, M = sample_periods(rng, B, N_TRAIN)
    Sigma, M = jnp.asarray(Sigma), jnp.asarray(M)
    mu_hat = predict(fit_two_stage(Z, np.asarray(M)), jnp.asarray(Z))
    V = jnp.asarray(rng.normal(size=mu_hat.shape))
    _, g = cost_and_grad(mu_hat, M, Sigma)
    eps = 1e-6
    (plus, _), _ = cost_and_grad(mu_hat + eps * V, M, Sigma)
    (minus, _), _ = cost_and_grad(mu_hat - eps * V, M, Sigma)
    fd = (plus - minus) / (2 * eps)
    return float(abs(jnp.vdot(g, V) - fd) / max(abs(fd), 1e-12))


# ----------------------------------------------------------------------------- main


def main() -> int:
    t_start = time.perf_counter()
    err = check_gradient()
    print(
        "gradient check: d(mean cost)/d(predicted returns) through solve_qp vs central "
        f"finite differences, relative error {err:.1e}"
    )
    if not err < FD_TOLERANCE:
        print(f"FAILED: gradient check error {err:.1e} >= {FD_TOLERANCE:.0e}")
        return 1

    results, curves = [], []
    for seed in SEEDS:
        rng, Sigma, B = make_market(seed)
        Ztr, Mtr = sample_periods(rng, B, N_TRAIN)
        Zte, Mte = sample_periods(rng, B, N_TEST)
        Sigma = jnp.asarray(Sigma)
        # (features, realised returns, mean cost of the perfect-foresight portfolios)
        train = (jnp.asarray(Ztr), jnp.asarray(Mtr), chunked_cost(Mtr, Mtr, Sigma))
        test = (jnp.asarray(Zte), jnp.asarray(Mte), chunked_cost(Mte, Mte, Sigma))
        print(f"market {seed}: {N_ASSETS} assets, {N_TRAIN} training / {N_TEST} held-out periods")

        two_stage = fit_two_stage(Ztr, Mtr)
        r_two = mean_regret(two_stage, test, Sigma)
        mean_model = (jnp.zeros((N_ASSETS, N_FEATURES)), jnp.asarray(Mtr.mean(0)))
        r_mean = mean_regret(mean_model, test, Sigma)
        mse_two = float(jnp.mean((predict(two_stage, test[0]) - test[1]) ** 2))
        print(f"  two-stage (least squares): held-out regret {r_two:.5f} (MSE {mse_two:.5f})")
        dfl, curve = fit_decision_focused(two_stage, train, test, Sigma)
        mse_dfl = float(jnp.mean((predict(dfl, test[0]) - test[1]) ** 2))
        r_dfl = curve[-1][1]
        best_return = -test[2]
        results.append((seed, r_mean, r_two, r_dfl, mse_two, mse_dfl, best_return))
        curves.append((curve, r_two))

    res = np.array([r[1:] for r in results])
    wins = int(np.sum(res[:, 2] < res[:, 1]))
    print(
        f"\nheld-out regret (lower is better; perfect foresight = 0), {len(SEEDS)} market(s) "
        f"x {N_TEST} held-out periods:"
    )
    print(f"  {'market':>6}  {'no features':>11}  {'two-stage':>9}  {'decision-focused':>16}")
    for seed, r_mean, r_two, r_dfl, *_ in results:
        print(f"  {seed:>6}  {r_mean:11.5f}  {r_two:9.5f}  {r_dfl:16.5f}")
    mean, std = res.mean(0), res.std(0)
    print(f"  {'mean':>6}  {mean[0]:11.5f}  {mean[1]:9.5f}  {mean[2]:16.5f}")
    print(f"  {'std':>6}  {std[0]:11.5f}  {std[1]:9.5f}  {std[2]:16.5f}")
    print(
        "  ('no features': the portfolio of the average training return; the mean "
        f"perfect-foresight utility −c(x*(μ), μ) is {mean[5]:.4f})"
    )
    print(
        f"decision-focused beats two-stage in {wins}/{len(SEEDS)} market(s): mean held-out "
        f"regret {mean[2]:.5f} vs {mean[1]:.5f} ({mean[1] / mean[2]:.1f}x lower), although "
        f"its prediction MSE is higher ({mean[4]:.4f} vs {mean[3]:.4f})."
    )
    print(
        f"every portfolio evaluated satisfies the QP's optimality conditions to "
        f"{WORST_KKT[0]:.1e} (checked in numpy, independently of solve_qp)"
    )
    print(f"total time {time.perf_counter() - t_start:.1f} s (including compilation)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for i, (curve, r_two) in enumerate(curves):
        steps, values = zip(*curve)
        color = f"C{i}"
        ax0.plot(steps, values, color=color, label=f"market {SEEDS[i]}")
        ax0.axhline(r_two, color=color, ls="--", lw=1)
    ax0.set(
        yscale="log",
        xlabel="Adam step (decision-focused)",
        ylabel="held-out regret",
        title="solid: decision-focused, dashed: two-stage",
    )
    ax0.legend(fontsize=8)
    x = np.arange(len(SEEDS))
    ax1.bar(x - 0.2, res[:, 1], 0.4, label="two-stage (least squares)")
    ax1.bar(x + 0.2, res[:, 2], 0.4, label="decision-focused (through solve_qp)")
    ax1.set(xticks=x, xticklabels=[str(s) for s in SEEDS], xlabel="market (seed)")
    ax1.set(ylabel="held-out regret", title="after training", ylim=(0, 1.4 * res[:, 1].max()))
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(OUT, "decision_focused.png")
    fig.savefig(path, dpi=100)
    print(f"saved {path}")
    if WORST_KKT[0] > 1e-8:
        print(f"FAILED: a portfolio violates the optimality conditions by {WORST_KKT[0]:.1e}")
        return 1
    if wins * 2 <= len(SEEDS):
        print("FAILED: decision-focused learning did not beat the two-stage baseline")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
