"""Forward- and reverse-mode derivatives of an equality-constrained QP (seed 001's story).

Run:  python examples/eq_qp_derivatives.py        (ROOTDIFF_FAST=1 for a smaller problem)

    minimize_x ½ xᵀQx + cᵀx   subject to  Ax = b

is solved by one LU factorisation of the KKT matrix K = [[Q, Aᵀ], [A, 0]]. The
tangent (pushforward) and adjoint (pullback) systems are QPs with the same K, so
``rootdiff.solve_eq_qp`` reuses that factorisation for every derivative. This
script computes a JVP (forward mode) and a VJP (reverse mode) of (x, y) with
respect to all of (Q, c, A, b) and checks both against central finite
differences, and checks the symmetric-Q convention of the adjoint: Q̄ is
symmetric, as seed 001 derives.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

import rootdiff

jax.config.update("jax_enable_x64", True)

n, p = (8, 3) if os.environ.get("ROOTDIFF_FAST") == "1" else (40, 10)
rng = np.random.default_rng(0)
M = rng.normal(size=(n, n))
Q = jnp.array(M @ M.T / n + np.eye(n))
c, A, b = (jnp.array(rng.normal(size=s)) for s in [(n,), (p, n), (p,)])
primals = (Q, c, A, b)


def sym(X):
    return 0.5 * (X + X.T)


@jax.jit  # one compiled program per transformation, instead of one per operation
def solve(Q, c, A, b):
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    return jnp.concatenate([x, y])


# Tangents: a symmetric direction for Q, random directions for c, A, b.
tangents = (
    jnp.array(sym(rng.normal(size=(n, n)))),
    *(jnp.array(rng.normal(size=v.shape)) for v in (c, A, b)),
)

# Forward mode: JVP, against a central finite difference along the tangents.
sol, sol_dot = jax.jvp(solve, primals, tangents)
eps = 1e-6
plus = [v + eps * t for v, t in zip(primals, tangents)]
minus = [v - eps * t for v, t in zip(primals, tangents)]
fd = (solve(*plus) - solve(*minus)) / (2 * eps)
jvp_error = float(jnp.max(jnp.abs(sol_dot - fd)) / jnp.max(jnp.abs(fd)))

# Reverse mode: VJP with a random cotangent (x̄, ȳ), checked through ⟨cotangent, JVP⟩.
cotangent = jnp.array(rng.normal(size=n + p))
_, pullback = jax.vjp(solve, *primals)
Q_bar, c_bar, A_bar, b_bar = pullback(cotangent)
lhs = sum(jnp.vdot(bar, t) for bar, t in zip((Q_bar, c_bar, A_bar, b_bar), tangents))
vjp_error = abs(float(lhs - jnp.vdot(cotangent, fd))) / abs(float(jnp.vdot(cotangent, fd)))

print(f"problem: n = {n} variables, p = {p} equality constraints")
print(f"KKT residual: {float(jnp.max(jnp.abs(Q @ sol[:n] + c + A.T @ sol[n:]))):.1e}")
print(f"forward mode (JVP) vs finite differences, max relative error: {jvp_error:.1e}")
print(f"reverse mode (VJP) vs finite differences, relative error:     {vjp_error:.1e}")
print(f"adjoint Q̄ symmetric: {bool(jnp.allclose(Q_bar, Q_bar.T, atol=1e-14))}")
assert jvp_error < 1e-6 and vjp_error < 1e-6, "derivatives differ from finite differences"
assert bool(jnp.allclose(Q_bar, Q_bar.T, atol=1e-14)), "the adjoint Q̄ is not symmetric"
