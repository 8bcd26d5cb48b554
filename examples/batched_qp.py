"""Differentiate through a batch of QP solves with rootdiff (seed 000, with rootdiff.solve_qp).

Run:  python examples/batched_qp.py        (ROOTDIFF_FAST=1 for a smaller batch)

Each problem is a non-negative least-squares problem

    minimize_x ||F x - g||^2
    subject to x >= 0

after converting it to standard QP form. For each QP in the batch, this
example differentiates the loss

    L(x) = ||x - 1||^2

with respect to the QP data. The gradients are exact derivatives of the
solution map (not of a smoothed problem), checked at the end against central
finite differences.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, vmap

import rootdiff

jax.config.update("jax_enable_x64", True)  # for the finite-difference check

N_VARS = 5
N_ROWS = 10
N_QPS = 16 if os.environ.get("ROOTDIFF_FAST") == "1" else 256


def loss(Q, q, A, b, G, h):
    x = rootdiff.solve_qp(Q, q, A, b, G, h)
    x_target = jnp.ones_like(x)
    return jnp.sum((x - x_target) ** 2)


def nnls_to_qp(F, g):
    n_vars = F.shape[1]
    Q = F.T @ F
    q = -F.T @ g
    A = jnp.zeros((0, n_vars))
    b = jnp.zeros(0)
    G = -jnp.eye(n_vars)
    h = jnp.zeros(n_vars)
    return Q, q, A, b, G, h


# Create a batch of random NNLS problems.
np.random.seed(0)
Fs = jnp.array(np.random.randn(N_QPS, N_ROWS, N_VARS))
gs = jnp.array(np.random.randn(N_QPS, N_ROWS))

# Convert them to QP form.
batch_nnls_to_qp = vmap(nnls_to_qp, in_axes=(0, 0))
Qs, qs, As, bs, Gs, hs = batch_nnls_to_qp(Fs, gs)

# Evaluate the loss and its gradients for all QPs in parallel.
loss_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))
batch_loss_and_grad = jit(vmap(loss_and_grad, in_axes=(0, 0, 0, 0, 0, 0)))
losses, derivs = batch_loss_and_grad(Qs, qs, As, bs, Gs, hs)
dl_dQ, dl_dq, dl_dA, dl_db, dl_dG, dl_dh = derivs

print("losses.shape:", losses.shape)
print("mean loss:", float(jnp.mean(losses)))
print("dl_dQ.shape:", dl_dQ.shape)
print("dl_dq.shape:", dl_dq.shape)
print("dl_dG.shape:", dl_dG.shape)
print("dl_dh.shape:", dl_dh.shape)

# Finite-difference check of a few gradient entries (central differences), on the
# first three QPs, computed by the same compiled batch program: the perturbed entry is
# moved in each of the three problems at once (they are independent).
eps = 1e-6
checked = 3
qp_data = [Qs, qs, As, bs, Gs, hs]
worst = 0.0
for arg, entry in [(1, (0,)), (1, (3,)), (0, (1, 2)), (4, (2, 2)), (5, (4,))]:
    index = (slice(0, checked), *entry)
    plus = [v.at[index].add(eps) if k == arg else v for k, v in enumerate(qp_data)]
    minus = [v.at[index].add(-eps) if k == arg else v for k, v in enumerate(qp_data)]
    fd = (batch_loss_and_grad(*plus)[0] - batch_loss_and_grad(*minus)[0])[:checked] / (2 * eps)
    ad = derivs[arg][index]
    worst = max(worst, float(jnp.max(jnp.abs(ad - fd) / jnp.maximum(1.0, jnp.abs(fd)))))
print(f"max |gradient - finite difference| (15 entries, relative): {worst:.1e}")
assert worst < 1e-6, f"gradients differ from finite differences by {worst:.1e}"
