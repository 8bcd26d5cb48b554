r"""Sparsemax and LML as layers of small networks trained with optax.

Run it with::

    python examples/layers.py

Two tasks, each trained twice — once with a smooth baseline output layer, once with
a rootdiff layer whose threshold is found by ``rootdiff.bisection`` and
differentiated implicitly:

1. **Top-k multi-label** (data generated here): 30 features, 20 labels, each
   example carries exactly ``k = 3`` labels (the three largest of a noisy linear
   score); a linear model. Baseline: independent sigmoids with binary cross-entropy. rootdiff:
   ``rootdiff.layers.lml(scores, k=3)``, the limited multi-label projection
   ``y = sigmoid(scores + ν)`` with ``Σy = 3`` (Amos et al., 2019), trained on
   ``−Σ_{true} log yᵢ``. Metric: precision@3 on held-out data.
2. **Digit classification** (scikit-learn's bundled ``load_digits``, no download),
   a one-hidden-layer MLP: softmax with cross-entropy against ``rootdiff.layers.sparsemax`` with the
   sparsemax loss ``½‖e_y − z‖² − ½‖sparsemax(z) − z‖²`` (whose gradient
   ``sparsemax(z) − e_y`` JAX obtains through the layer's implicit derivative).
   Metrics: accuracy and the mean number of classes given non-zero probability.

Before training, the script checks the layers' derivatives against closed forms
(LML: the paper's backward; sparsemax: ``diag(s) − s sᵀ/|S|``) and exits with a
non-zero status if they disagree. It prints a table of the metrics and saves
``layers.png`` (held-out metric against training step) into ``$ROOTDIFF_OUT``
(default: the current directory).

``ROOTDIFF_FAST=1`` uses less data and fewer steps (used by the test suite).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rootdiff

jax.config.update("jax_enable_x64", True)  # for the derivative checks only; models use float32

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
STEPS = 40 if FAST else 300
EVAL_EVERY = 10 if FAST else 20
K = 3


# --------------------------------------------------------------------------- checks


def check_derivatives() -> bool:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=12) * 2)
    g = jnp.asarray(rng.normal(size=12))
    # LML: the paper's closed-form backward.
    y = rootdiff.layers.lml(x, K)
    Hinv = 1.0 / (1.0 / y + 1.0 / (1.0 - y))
    ref = -Hinv * (-g + jnp.sum(Hinv * g) / jnp.sum(Hinv))
    ours = jax.grad(lambda x: jnp.vdot(g, rootdiff.layers.lml(x, K)))(x)
    err_lml = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
    # Sparsemax: the Jacobian diag(s) − s sᵀ/|S|, forward and reverse mode.
    p = rootdiff.layers.sparsemax(x)
    s = (p > 0).astype(x.dtype)
    J = jnp.diag(s) - jnp.outer(s, s) / s.sum()
    err_fwd = float(jnp.max(jnp.abs(jax.jacfwd(rootdiff.layers.sparsemax)(x) - J)))
    err_rev = float(jnp.max(jnp.abs(jax.jacrev(rootdiff.layers.sparsemax)(x) - J)))
    print("derivative checks (float64):")
    print(f"  LML vjp vs the paper's closed form   rel. error {err_lml:.1e}")
    print(f"  sparsemax jacfwd / jacrev vs closed form  {err_fwd:.1e} / {err_rev:.1e}")
    return max(err_lml, err_fwd, err_rev) < 1e-8


# --------------------------------------------------------------------------- data


def multilabel_data(n: int, d: int = 30, labels: int = 20, seed: int = 0):
    """Each example's labels are the ``K`` largest entries of a noisy linear score."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, labels)) / np.sqrt(d)
    X = rng.normal(size=(n, d))
    scores = X @ W + 0.3 * rng.normal(size=(n, labels))
    Y = np.zeros((n, labels), np.float32)
    np.put_along_axis(Y, np.argsort(-scores, axis=1)[:, :K], 1.0, axis=1)
    return X.astype(np.float32), Y


def digits_data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    if FAST:
        X, y = X[:600], y[:600]
    return X, np.eye(10, dtype=np.float32)[y]


def split(X, Y, frac=0.7, seed=1):
    idx = np.random.default_rng(seed).permutation(len(X))
    cut = int(frac * len(X))
    return (X[idx[:cut]], Y[idx[:cut]]), (X[idx[cut:]], Y[idx[cut:]])


# --------------------------------------------------------------------------- model


def init_mlp(key, sizes):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (m, n), jnp.float32) / np.sqrt(m), jnp.zeros(n)))
    return params


def mlp(params, X):
    for W, b in params[:-1]:
        X = jnp.tanh(X @ W + b)
    W, b = params[-1]
    return X @ W + b


# Losses take the scores z and targets t (rows); metrics take predictions.
def bce_loss(z, t):
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(z, t), axis=-1))


def lml_loss(z, t):
    y = rootdiff.layers.lml(z, K)
    return -jnp.mean(jnp.sum(t * jnp.log(y), axis=-1))


def softmax_loss(z, t):
    return jnp.mean(optax.softmax_cross_entropy(z, t))


def sparsemax_loss(z, t):
    p = rootdiff.layers.sparsemax(z)
    return jnp.mean(0.5 * jnp.sum((t - z) ** 2 - (p - z) ** 2, axis=-1))


def precision_at_k(z, t):
    top = jax.lax.top_k(z, K)[1]
    return jnp.mean(jnp.take_along_axis(t, top, axis=-1).sum(-1) / K)


def accuracy(z, t):
    return jnp.mean(jnp.argmax(z, -1) == jnp.argmax(t, -1))


def train(loss_fn, metric_fn, train_set, test_set, hidden=None, lr=1e-2):
    """Full-batch Adam on a linear model (``hidden=None``) or a one-hidden-layer MLP."""
    (Xtr, Ytr), (Xte, Yte) = train_set, test_set
    sizes = [Xtr.shape[1]] + ([] if hidden is None else [hidden]) + [Ytr.shape[1]]
    params = init_mlp(jax.random.PRNGKey(0), sizes)
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(mlp(p, Xtr), Ytr))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    evaluate = jax.jit(lambda p: metric_fn(mlp(p, Xte), Yte))
    curve = []
    t0 = time.perf_counter()
    for i in range(STEPS + 1):
        if i % EVAL_EVERY == 0:
            curve.append((i, float(evaluate(params))))
        if i < STEPS:
            params, state, loss = step(params, state)
    return params, curve, time.perf_counter() - t0


# --------------------------------------------------------------------------- main


def main() -> int:
    if not check_derivatives():
        print("FAILED: a layer's derivative disagrees with its closed form")
        return 1

    n = 600 if FAST else 3000
    ml_train, ml_test = split(*multilabel_data(n))
    dg_train, dg_test = split(*digits_data())
    rows = []
    curves = {}
    # The multi-label data are linear: a linear model; digits: a 64-unit MLP.
    runs = [
        ("top-3 multi-label", "sigmoid + BCE", bce_loss, precision_at_k, ml_train, ml_test, None),
        ("top-3 multi-label", "LML(k=3) + NLL", lml_loss, precision_at_k, ml_train, ml_test, None),
        ("digits", "softmax + CE", softmax_loss, accuracy, dg_train, dg_test, 64),
        ("digits", "sparsemax + sparsemax loss", sparsemax_loss, accuracy, dg_train, dg_test, 64),
    ]
    metric_names = {precision_at_k: "precision@3", accuracy: "accuracy"}
    for task, name, loss_fn, metric_fn, tr, te, hidden in runs:
        params, curve, seconds = train(loss_fn, metric_fn, tr, te, hidden=hidden)
        z = mlp(params, te[0])
        if "sparsemax" in name:
            support = float(jnp.mean(jnp.sum(rootdiff.layers.sparsemax(z) > 0, -1)))
        elif "softmax" in name:
            support = float(jnp.mean(jnp.sum(jax.nn.softmax(z) > 1e-3, -1)))
        else:
            support = float("nan")
        rows.append((task, name, metric_names[metric_fn], curve[-1][1], support, seconds))
        curves[(task, name)] = curve

    print(f"\n{STEPS} Adam steps each, held-out metrics:")
    header = f"{'task':<19} {'output layer':<28} {'metric':<12} {'value':>6}"
    print(header + f" {'classes > 0':>12} {'train s':>8}")
    print("-" * (len(header) + 22))
    for task, name, metric, value, support, seconds in rows:
        sup = "" if np.isnan(support) else f"{support:.2f}"
        print(f"{task:<19} {name:<28} {metric:<12} {value:6.3f} {sup:>12} {seconds:8.1f}")
    print("('classes > 0': mean number of classes with probability > 0 (softmax: > 1e-3))")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, task, metric in [
        (axes[0], "top-3 multi-label", "precision@3"),
        (axes[1], "digits", "accuracy"),
    ]:
        for (t, name), curve in curves.items():
            if t == task:
                steps, values = zip(*curve)
                ax.plot(steps, values, label=name)
        ax.set(title=task, xlabel="Adam step", ylabel=f"held-out {metric}")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(OUT, "layers.png")
    fig.savefig(path, dpi=100)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
