r"""An argmin layer inside a network, trained end to end: "ridge postdiction" forecasting.

Run it with::

    python examples/argmin_layer.py

This is the model of the blog post "differentiating through an inner optimisation
problem" (a PyTorch ``autograd.Function`` with an SVD-based backward and a dense
Hessian), written with :func:`rootdiff.argmin` and optax. The task: given the first 30
days of a 40-day segment of a time series, forecast the last 10.

* An encoder (1-D CNN) embeds the 30 known days into ``C`` channels, ``E ∈ R^{C×30}``.
* The **argmin layer** fits, for each segment, ridge-regression weights that
  "postdict" the last 10 steps of the embedding from the 20 before them:

  .. math::
      (W^*, b^*) = \operatorname{argmin}_{W, b}\;
      \operatorname{mean}\bigl(E_{:, :20} W^⊤ + b - E_{:, 20:}\bigr)^2
      + λ \operatorname{mean}\bigl((W - W_0)^2\bigr), \qquad W ∈ R^{10×20},

  and then *predicts* the next 10 embedding steps from the last 20: ``E_{:,10:} W*ᵀ + b*``.
* A decoder (1-D CNN) maps the predicted embedding back to 10 values.

The encoder, decoder, the regularisation ``λ = exp(log λ)`` and the centre ``W₀`` of
the penalty (the post's ridge has ``W₀ = 0``) are trained together
by Adam on the forecast error; the gradient passes through the argmin by the implicit
function theorem. The inner solver is matrix-free conjugate gradients
(``jax.scipy.sparse.linalg.cg`` on Hessian-vector products) and so is the backward
solve (``solve="cg"``): no Hessian is ever formed, no SVD is needed, and the layer's
variable is a pytree ``{"W", "b"}``. One difference from the post: each segment gets
its own regression (``vmap`` over the batch) rather than one shared by a mini-batch, so
a forecast does not depend on which other segments share its batch.

The script generates its own data: each segment is its own short series, a cycle
whose period (4 to 16 steps), amplitude and phase differ from segment to segment,
plus a slow random walk and noise. This is where an argmin layer helps: one linear
forecaster for all segments must compromise between all periods, while the argmin
layer fits each segment's own recurrence from its own history ("postdiction") and
extrapolates it. The script prints the training progress, the train/test loss
comparison the post makes, and two baselines (repeat the last 10 steps; a linear
autoregression fitted by least squares on all training segments), and says whether
the network beats the better of them; it exits non-zero if it does not. It checks one
gradient of the end-to-end loss against central finite differences (float64) and exits
non-zero if they disagree, and saves ``argmin_layer.png`` (losses and forecasts) into
``$ROOTDIFF_OUT`` (default: the current directory).

``ROOTDIFF_FAST=1`` trains on fewer segments for two epochs (used by the test suite).
"""

from __future__ import annotations

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64: the FD check needs it

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import rootdiff  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
SEG_LEN, SEG_BASE = 40, 30
SEG_TARGET = SEG_LEN - SEG_BASE  # 10 steps to forecast
POST_LEN = SEG_BASE - SEG_TARGET  # 20 steps of embedding regress onto the next 10
CHANNELS = (1, 8, 16)
N_SEGMENTS = 130 if FAST else 600
EPOCHS = 2 if FAST else 30
BATCH = 32
FD_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- data


def make_segments(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` segments of ``SEG_LEN`` steps: a cycle of random period (4–16 steps),
    amplitude and phase per segment, plus a slow random walk and noise."""
    t = np.arange(SEG_LEN)
    period = rng.uniform(4.0, 16.0, size=(n, 1))
    amplitude = rng.uniform(0.5, 2.0, size=(n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    cycle = amplitude * np.sin(2 * np.pi * t / period + phase)
    walk = np.cumsum(rng.normal(0.0, 0.1, size=(n, SEG_LEN)), axis=1)
    return cycle + walk + rng.normal(0.0, 0.1, size=(n, SEG_LEN))


def make_data(seed: int = 0):
    """``N_SEGMENTS`` segments, each normalised by its first 30 steps.

    About 70/30 train/test, both cut to whole batches of ``BATCH`` segments.
    """
    rng = np.random.default_rng(seed)
    segs = make_segments(rng, N_SEGMENTS)
    base = segs[:, :SEG_BASE]
    segs = (segs - base.mean(1, keepdims=True)) / base.std(1, keepdims=True)
    n_train = BATCH * round(0.7 * len(segs) / BATCH)
    n_test = BATCH * ((len(segs) - n_train) // BATCH)
    split = lambda s: (s[:, None, :SEG_BASE], s[:, None, SEG_BASE:])
    return split(segs[:n_train]), split(segs[n_train : n_train + n_test])


# ----------------------------------------------------------------------------- the argmin layer


def ridge_objective(wb: dict, x: jax.Array, y: jax.Array, prior: dict) -> jax.Array:
    """``mean((x Wᵀ + b − y)²) + λ mean((W − W₀)²)``; ``x``: (C, 20), ``y``: (C, 10).

    ``prior = {"W0": (10, 20), "log_lam": ()}`` holds the learnable centre and
    strength of the ridge penalty.
    """
    residual = x @ wb["W"].T + wb["b"] - y
    penalty = jnp.mean((wb["W"] - prior["W0"]) ** 2)
    return jnp.mean(residual**2) + jnp.exp(prior["log_lam"]) * penalty


@rootdiff.argmin(ridge_objective, solve="cg")
def ridge_fit(init: dict, x: jax.Array, y: jax.Array, prior: dict) -> dict:
    """One Newton step on the quadratic objective, its system solved matrix-free by CG."""
    grad = lambda wb: jax.grad(ridge_objective)(wb, x, y, prior)
    hvp = lambda v: jax.jvp(grad, (init,), (v,))[1]
    step, _ = jax.scipy.sparse.linalg.cg(hvp, jax.tree.map(jnp.negative, grad(init)), tol=1e-13)
    return jax.tree.map(jnp.add, init, step)


WB0 = {"W": jnp.zeros((SEG_TARGET, POST_LEN)), "b": jnp.zeros(SEG_TARGET)}


def postdict_predict(emb: jax.Array, prior: dict) -> jax.Array:
    """Fit ``emb[:, :20] → emb[:, 20:]``, predict from ``emb[:, 10:]``: (C, 30) → (C, 10)."""
    wb = ridge_fit(WB0, emb[:, :POST_LEN], emb[:, POST_LEN:], prior)
    return emb[:, -POST_LEN:] @ wb["W"].T + wb["b"]


# ----------------------------------------------------------------------------- the network


# Parameters are created with NumPy: every eager jax.random call of a new shape would
# be compiled separately, which costs more than this whole example's training.
def init_cnn(rng: np.random.Generator, channels: tuple[int, ...], width: int = 5) -> list:
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        w = rng.normal(size=(c_out, c_in, width)) / np.sqrt(c_in * width)
        layers.append({"w": w, "b": np.zeros(c_out)})
    return layers


def cnn(layers: list[dict], x: jax.Array, final_activation: bool) -> jax.Array:
    """1-D convolutions ('same' padding) with CELU(α = 0.5); ``x``: (C_in, T) → (C_out, T).

    The post uses ELU(α = 0.5), whose derivative jumps at 0; CELU is its continuously
    differentiable variant, so that finite differences can check the gradient.
    """
    for i, layer in enumerate(layers):
        x = jax.lax.conv_general_dilated(x[None], layer["w"], (1,), "SAME")[0]
        x = x + layer["b"][:, None]
        if final_activation or i < len(layers) - 1:
            x = jax.nn.celu(x, alpha=0.5)
    return x


def init_model(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "encoder": init_cnn(rng, CHANNELS),
        "decoder": init_cnn(rng, CHANNELS[::-1]),
        # λ = 1 as in the post. The post's weight parameter only initialises L-BFGS and
        # never receives a gradient; here it is the centre W0 of the penalty, and learned.
        "prior": {"W0": np.zeros((SEG_TARGET, POST_LEN)), "log_lam": np.array(0.0)},
    }


def forecast(model: dict, x: jax.Array) -> jax.Array:
    """(1, 30) history → (1, 10) forecast: encode, postdict-and-predict, decode."""
    emb = cnn(model["encoder"], x, final_activation=True)
    return cnn(model["decoder"], postdict_predict(emb, model["prior"]), final_activation=False)


def loss_fn(model: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(forecast, (None, 0))(model, x) - y) ** 2)


# ----------------------------------------------------------------------------- baselines


def repeat_last(x: jax.Array) -> jax.Array:
    """Repeat the last 10 observed steps."""
    return x[..., -SEG_TARGET:]


def linear_autoregression(x_train, y_train):
    """One least-squares linear map from 30 steps (+ intercept) to the next 10, fitted on
    all training segments: the classical linear forecaster, with no argmin layer."""
    A = np.concatenate([x_train[:, 0], np.ones((len(x_train), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(A, np.asarray(y_train[:, 0]), rcond=None)
    return lambda x: (np.concatenate([x[:, 0], np.ones((len(x), 1))], axis=1) @ coef)[:, None]


# ----------------------------------------------------------------------------- main
# Three functions are compiled, each once, for batches of BATCH segments: the forecast,
# the loss's value and gradient, and the optimiser step. Data stay NumPy arrays and are
# cut into such batches; small bookkeeping is done in NumPy, not in eager JAX (whose
# every new operation shape is compiled).

predict_jit = jax.jit(jax.vmap(forecast, (None, 0)))
value_and_grad_jit = jax.jit(jax.value_and_grad(loss_fn))


def batches(x: np.ndarray, y: np.ndarray):
    for i in range(len(x) // BATCH):
        yield x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]


def mean_loss(model: dict, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([np.mean((predict_jit(model, xb) - yb) ** 2) for xb, yb in batches(x, y)]))


def check_gradient(model: dict, x: np.ndarray, y: np.ndarray, eps: float = 1e-5) -> float:
    """Directional derivative of the loss along a random direction vs central FD."""
    rng = np.random.default_rng(1)
    d = jax.tree.map(lambda v: rng.normal(size=np.shape(v)), model)
    _, g = value_and_grad_jit(model, x, y)
    analytic = sum(np.vdot(gi, di) for gi, di in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
    shifted = lambda s: mean_loss(jax.tree.map(lambda m, di: m + s * di, model, d), x, y)
    fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    return float(abs(analytic - fd) / abs(fd))


def main() -> int:
    (x_train, y_train), (x_test, y_test) = make_data()
    print(f"{len(x_train)} training and {len(x_test)} test segments of {SEG_LEN} steps "
          f"(forecast the last {SEG_TARGET} from the first {SEG_BASE})")  # fmt: skip
    model = init_model()

    err = check_gradient(model, x_train[:BATCH], y_train[:BATCH])
    ok = err < FD_TOLERANCE
    print(f"gradient check (random direction, all parameters incl. λ): relative error vs "
          f"central FD = {err:.1e} ({'OK' if ok else 'FAILED'})")  # fmt: skip

    steps_per_epoch = len(x_train) // BATCH
    schedule = optax.exponential_decay(3e-3, steps_per_epoch, 0.9)  # ×0.9 per epoch
    optimizer = optax.adamw(schedule, eps=1e-5)
    opt_state = optimizer.init(model)

    @jax.jit
    def optimizer_step(grads, opt_state, model):
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state

    rng = np.random.default_rng(0)
    history = {"train": [], "test": []}
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        perm = rng.permutation(len(x_train))
        losses = []
        for xb, yb in batches(x_train[perm], y_train[perm]):
            loss, grads = value_and_grad_jit(model, xb, yb)
            model, opt_state = optimizer_step(grads, opt_state, model)
            losses.append(float(loss))
        lam = float(np.exp(model["prior"]["log_lam"]))
        history["train"].append(np.mean(losses))
        history["test"].append(mean_loss(model, x_test, y_test))
        print(f"  epoch {epoch:2d}: train loss {history['train'][-1]:.4f}   test loss "
              f"{history['test'][-1]:.4f}   λ = {lam:.3g}   "
              f"{time.perf_counter() - t0:5.1f} s")  # fmt: skip

    mse = lambda pred: float(np.mean((np.asarray(pred) - np.asarray(y_test)) ** 2))
    naive = mse(repeat_last(x_test))
    linear = mse(linear_autoregression(x_train, y_train)(x_test))
    print("\n  test MSE (segments normalised by their first 30 steps)")
    print(f"  repeat the last {SEG_TARGET} steps                {naive:.4f}")
    print(f"  linear autoregression (least squares)   {linear:.4f}")
    print(f"  encoder + argmin layer + decoder        {history['test'][-1]:.4f}   "
          f"(train {history['train'][-1]:.4f}, learned λ = "
          f"{lam:.3g})")  # fmt: skip

    network = history["test"][-1]
    best_name, best = min([("repeat the last steps", naive), ("linear autoregression", linear)],
                          key=lambda item: item[1])  # fmt: skip
    wins = network < best
    if wins:
        print(f"  the argmin-layer network beats the best baseline ({best_name}): test MSE "
              f"{network:.4f} vs {best:.4f}, {best / network:.1f}x lower")  # fmt: skip
    else:
        print(f"  the argmin-layer network does NOT beat the best baseline ({best_name}): "
              f"test MSE {network:.4f} vs {best:.4f}")  # fmt: skip
    print("  (one linear forecaster must serve every period at once; the argmin layer "
          "fits each segment's\n   own recurrence, with W0 and λ learned by implicit "
          "gradients)")  # fmt: skip
    save_plot(history, naive, linear, model, x_test, y_test)
    if not ok:
        print("FAILED: gradient disagrees with finite differences", file=sys.stderr)
        return 1
    if not wins:
        print("FAILED: the argmin-layer network did not beat the baselines", file=sys.stderr)
        return 1
    return 0


def save_plot(history, naive, linear, model, x_test, y_test) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(history["train"], label="train")
    ax.plot(history["test"], label="test")
    ax.axhline(naive, color="gray", ls=":", label="repeat last 10 (test)")
    ax.axhline(linear, color="k", ls="--", label="linear autoregression (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend(loc="center right")
    ax.set_title("Training with an argmin layer")
    pred = predict_jit(model, x_test[:BATCH])
    for i in range(3):
        offset = 4.0 * i
        ax2.plot(range(SEG_BASE), x_test[i, 0] + offset, color=f"C{i}")
        ax2.plot(range(SEG_BASE, SEG_LEN), y_test[i, 0] + offset, color=f"C{i}", alpha=0.4)
        ax2.plot(range(SEG_BASE, SEG_LEN), pred[i, 0] + offset, color=f"C{i}", ls="--")
    ax2.axvline(SEG_BASE, color="k", ls=":")
    ax2.set_title("test segments: history, truth (faint), forecast (dashed)")
    fig.tight_layout()
    path = os.path.join(OUT, "argmin_layer.png")
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
