r"""The elastic (ℓ1-penalised) form of a QP: an answer even when it is infeasible.

.. math::  \min_{x, u, v, w}\ \tfrac12 x^⊤Qx + q^⊤x + λ\,(1^⊤u + 1^⊤v + 1^⊤w)
           \quad\text{s.t.}\quad Gx − u ≤ h,\ Ax − v + w = b,\ u, v, w ≥ 0

is always feasible; ``u``, ``v − w`` are the violations of ``Gx ≤ h`` and
``Ax = b``. The ℓ1 penalty is *exact*: when the QP is feasible and ``λ`` exceeds
its largest multiplier, the elastic answer is the QP's answer. It is built from the
data with plain ``jax.numpy`` operations, so derivatives w.r.t. ``Q, q, A, b, G, h``
and ``λ`` flow through the same exact implicit rule as every QP (all modes).
"""

from __future__ import annotations

import jax.numpy as jnp


def elastic_data(Q, q, A, b, G, h, penalty):
    """The elastic QP's ``(Q', q', A', b', G', h')`` in variables ``(x, u, v, w)``."""
    n, p, m = q.shape[0], b.shape[0], h.shape[0]
    dtype = q.dtype
    k = n + m + 2 * p
    lam = jnp.asarray(penalty, dtype)
    Qe = jnp.zeros((k, k), dtype).at[:n, :n].set(Q)
    qe = jnp.concatenate([q, jnp.broadcast_to(lam, (m + 2 * p,))])
    eye_p = jnp.eye(p, dtype=dtype)
    Ae = jnp.concatenate([A, jnp.zeros((p, m), dtype), -eye_p, eye_p], axis=1)
    top = jnp.concatenate([G, -jnp.eye(m, dtype=dtype), jnp.zeros((m, 2 * p), dtype)], axis=1)
    bounds = jnp.concatenate([jnp.zeros((m + 2 * p, n), dtype), -jnp.eye(m + 2 * p, dtype=dtype)],
                             axis=1)  # fmt: skip
    Ge = jnp.concatenate([top, bounds], axis=0)
    he = jnp.concatenate([h, jnp.zeros(m + 2 * p, dtype)])
    return Qe, qe, Ae, b, Ge, he
