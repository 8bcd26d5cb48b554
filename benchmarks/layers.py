r"""Bisection-based layers: sparsemax (1024 × 1000, float32) and LML (256 × 1000, k = 10, f64).

Sparsemax ``p = max(x − τ, 0)`` with ``Σ p = 1``; LML ``y = σ(x + ν)`` with
``Σ y = k`` (Amos et al.), row-wise. Loss ``Σ w ⊙ layer(x)`` for a fixed random
``w``; gradient with respect to ``x``.

Implementations: rootdiff's layers; jaxopt ``Bisection`` on the threshold with its
implicit differentiation (vmapped over rows, bracket stopped from gradients);
sort-based sparsemax differentiated by JAX; LML with the paper's closed-form
backward as a ``jax.custom_vjp`` (the code of seed 003, forward by bisection).

References (numpy float64): sparsemax ``∂/∂x = s ⊙ (w − mean_S w)`` on the support
``S``; LML ``H = y(1 − y)``, ``∂/∂x = H ⊙ (w − Σ H w / Σ H)``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import Row, bench_all

jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------- data, refs


def make_problem(rows: int, cols: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))


def sparsemax_ref(x):
    z = np.sort(x, axis=-1)[:, ::-1]
    k = np.arange(1, x.shape[1] + 1)
    cs = np.cumsum(z, axis=-1)
    support = 1 + k * z > cs
    kk = support.sum(-1)
    tau = (cs[np.arange(len(x)), kk - 1] - 1) / kk
    return np.maximum(x - tau[:, None], 0)


def sparsemax_grad_ref(x, w):
    s = (sparsemax_ref(x) > 0).astype(np.float64)
    mean_w = (s * w).sum(-1, keepdims=True) / s.sum(-1, keepdims=True)
    return s * (w - mean_w)


def lml_ref(x, k, iters: int = 200):
    sig = lambda t: 1 / (1 + np.exp(-t))
    lo = -x.max(-1) - 40.0
    hi = -x.min(-1) + 40.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = sig(x + mid[:, None]).sum(-1) - k
        lo, hi = np.where(f < 0, mid, lo), np.where(f < 0, hi, mid)
    return sig(x + (0.5 * (lo + hi))[:, None])


def lml_grad_ref(x, w, k):
    y = lml_ref(x, k)
    H = y * (1 - y)
    return H * (w - (H * w).sum(-1, keepdims=True) / H.sum(-1, keepdims=True))


# --------------------------------------------------------------------------- peers


def sparsemax_sort(x):
    """Sort-based sparsemax (Martins & Astudillo, 2016), differentiated by autodiff."""
    z = -jnp.sort(-x, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cs = jnp.cumsum(z, axis=-1)
    kk = jnp.sum(1 + k * z > cs, axis=-1, keepdims=True)
    tau = (jnp.take_along_axis(cs, kk - 1, axis=-1) - 1) / kk.astype(x.dtype)
    return jnp.maximum(x - tau, 0)


def sparsemax_jaxopt(x, tol=1e-6, maxiter=30):
    from jaxopt import Bisection

    def one(row):
        F = lambda tau, row: jnp.sum(jnp.maximum(row - tau, 0)) - 1
        lo = jax.lax.stop_gradient(jnp.max(row) - 1)
        hi = jax.lax.stop_gradient(jnp.max(row))
        tau = Bisection(F, lo, hi, tol=tol, maxiter=maxiter, check_bracket=False).run(row=row)
        return jnp.maximum(row - tau.params, 0)

    return jax.vmap(one)(x)


def lml_jaxopt(x, k, tol=1e-12, maxiter=100):
    from jaxopt import Bisection

    def one(row):
        F = lambda nu, row: jnp.sum(jax.nn.sigmoid(row + nu)) - k
        lo = jax.lax.stop_gradient(-jnp.max(row) - 40.0)
        hi = jax.lax.stop_gradient(-jnp.min(row) + 40.0)
        nu = Bisection(F, lo, hi, tol=tol, maxiter=maxiter, check_bracket=False).run(row=row)
        return jax.nn.sigmoid(row + nu.params)

    return jax.vmap(one)(x)


def _lml_nu(x, k, iters=60):
    lo = -jnp.max(x, -1) - 40.0
    hi = -jnp.min(x, -1) + 40.0

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        f = jnp.sum(jax.nn.sigmoid(x + mid[:, None]), -1) - k
        return jnp.where(f < 0, mid, lo), jnp.where(f < 0, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def make_lml_closed_form(k: int, iters: int):
    """LML with the paper's closed-form backward (``jax.custom_vjp``, as in seed 003)."""

    @jax.custom_vjp
    def lml(x):
        return jax.nn.sigmoid(x + _lml_nu(x, k, iters)[:, None])

    def fwd(x):
        y = lml(x)
        return y, y

    def bwd(y, g):
        H = 1.0 / (1.0 / y + 1.0 / (1.0 - y))
        dnu = jnp.sum(H * g, -1, keepdims=True) / jnp.sum(H, -1, keepdims=True)
        return (H * (g - dnu),)

    lml.defvjp(fwd, bwd)
    return lml


def _rootdiff_layers():
    try:
        from rootdiff import layers

        return layers, None
    except ImportError as e:
        return None, f"not available yet (rootdiff.layers: {e})"


# --------------------------------------------------------------------------- workloads


def run_sparsemax(quick: bool = False) -> list[Row]:
    rows_, cols = (256, 200) if quick else (1024, 1000)
    name = f"sparsemax {rows_}x{cols} f32"
    x, w = make_problem(rows_, cols)
    g_ref = sparsemax_grad_ref(x, w)
    args = (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    layers, why = _rootdiff_layers()
    impls = {}
    impls["rootdiff layers.sparsemax"] = why or (lambda x, w: jnp.sum(w * layers.sparsemax(x)))
    try:
        import jaxopt  # noqa: F401

        impls["jaxopt Bisection (tol=1e-6) + implicit diff"] = lambda x, w: jnp.sum(
            w * sparsemax_jaxopt(x)
        )
    except ImportError:
        impls["jaxopt Bisection"] = "not installed"
    impls["sort-based sparsemax + autodiff"] = lambda x, w: jnp.sum(w * sparsemax_sort(x))
    repeats = 5 if quick else 9
    return bench_all(name, impls, args, g_ref, quick=quick, repeats=repeats, float64=False)


def run_lml(quick: bool = False, k: int = 10) -> list[Row]:
    rows_, cols = (64, 200) if quick else (256, 1000)
    name = f"LML {rows_}x{cols} k={k} f64"
    x, w = make_problem(rows_, cols, seed=1)
    x = 2 * x
    g_ref = lml_grad_ref(x, w, k)
    args = (jnp.asarray(x), jnp.asarray(w))
    layers, why = _rootdiff_layers()
    impls = {}
    impls["rootdiff layers.lml"] = why or (lambda x, w: jnp.sum(w * layers.lml(x, k)))
    try:
        import jaxopt  # noqa: F401

        impls["jaxopt Bisection (tol=1e-12) + implicit diff"] = lambda x, w: jnp.sum(
            w * lml_jaxopt(x, k)
        )
    except ImportError:
        impls["jaxopt Bisection"] = "not installed"
    closed = make_lml_closed_form(k, iters=60)
    impls["closed-form backward (custom_vjp, 60 bisection steps)"] = lambda x, w: jnp.sum(
        w * closed(x)
    )
    return bench_all(name, impls, args, g_ref, quick=quick, repeats=5 if quick else 9)


WORKLOADS = {"sparsemax": run_sparsemax, "lml": run_lml}

if __name__ == "__main__":
    from benchmarks._common import format_table

    q = "--quick" in sys.argv
    print(format_table(run_sparsemax(q) + run_lml(q)))
