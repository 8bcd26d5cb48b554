"""Training through a QP layer when some QPs in the batch are infeasible.

Run:  python examples/qp_infeasible_training.py       (ROOTDIFF_FAST=1: fewer steps)

A linear model predicts the cost ``q = W c`` of a small QP layer

    x(c) = argmin ½‖x‖² + (W c)ᵀx   s.t.   lo(c) ≤ x ≤ hi(c),

whose bounds come from noisy measurements: in about a fifth of the samples the
measured bounds cross (``lo > hi``), so that QP has no solution at all. A plain QP
layer reports those as infeasible (``check="nan"`` would give NaN values and NaN
gradients that wreck an optimiser step). With ``elastic=λ`` the layer solves the
ℓ1-penalised problem instead, which always has an answer — the QP's own when it
is feasible — and exact gradients in every mode, so training proceeds on the
whole batch.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rootdiff

jax.config.update("jax_enable_x64", True)
FAST = os.environ.get("ROOTDIFF_FAST") == "1"
n, d, batch = 3, 4, 64
steps = 60 if FAST else 200

rng = np.random.default_rng(0)
W_true = jnp.asarray(rng.normal(size=(n, d)))
C = jnp.asarray(rng.normal(size=(batch, d)))
centre = jnp.asarray(rng.normal(size=(batch, n)))
width = jnp.asarray(rng.uniform(-0.3, 1.5, size=(batch, n)))  # negative: crossed bounds
lo, hi = centre - 0.5 * width, centre + 0.5 * width
infeasible = np.asarray(jnp.any(lo > hi, axis=1))
G = jnp.concatenate([jnp.eye(n), -jnp.eye(n)])
PENALTY = 5.0


def layer(W, c, lo, hi, **kw):
    h = jnp.concatenate([hi, -lo])
    return rootdiff.solve_qp(jnp.eye(n), W @ c, None, None, G, h, **kw)


# The plain layer on the same batch: its statuses, and the gradient that `check="nan"`
# gives (NaN values, and NaN derivatives, for the infeasible problems), in one program.
def plain_loss(W):
    xs, info = jax.vmap(
        lambda c, lo, hi: layer(W, c, lo, hi, check="nan", return_info=True)
    )(C, lo, hi)  # fmt: skip
    return jnp.mean(xs), info.status


plain_nan, status = jax.jit(jax.grad(plain_loss, has_aux=True))(W_true)
codes = sorted(set(np.asarray(status)[infeasible].tolist()))
print(f"{int(infeasible.sum())} of {batch} QPs infeasible; plain solve_qp statuses of those: "
      f"{codes} (2 = primal infeasible)")  # fmt: skip
print(f"plain layer with check='nan': gradient finite? {bool(jnp.all(jnp.isfinite(plain_nan)))}")
assert 2 in codes and not bool(jnp.all(jnp.isfinite(plain_nan)))


def loss(W, targets):
    xs = jax.vmap(lambda c, lo, hi: layer(W, c, lo, hi, elastic=PENALTY))(C, lo, hi)
    return jnp.mean(jnp.sum((xs - targets) ** 2, axis=1)), xs


# One compiled program gives the loss, the layer's answers and the gradient.
loss_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))

# Targets: the elastic layer's answers under the true model (plus noise).
(_, targets), _ = loss_and_grad(W_true, jnp.zeros((batch, n)))
targets = targets + 0.01 * jnp.asarray(rng.normal(size=targets.shape))

opt = optax.adam(0.05)
W = jnp.zeros((n, d))
state = opt.init(W)


@jax.jit
def update(W, state, g):
    updates, state = opt.update(g, state)
    return optax.apply_updates(W, updates), state


t0 = time.perf_counter()
for k in range(steps):
    (value, _), g = loss_and_grad(W, targets)
    W, state = update(W, state, g)
    if k % 20 == 0 or k == steps - 1:
        print(
            f"step {k:4d}  loss {float(value):.5f}  ({time.perf_counter() - t0:.1f}s)", flush=True
        )
err = float(jnp.linalg.norm(W - W_true) / jnp.linalg.norm(W_true))
print(f"relative error of the learned model: {err:.3f}")
assert float(value) < 0.01, "training did not converge"
