"""The forward solver of :func:`rootdiff.proximal_gradient`: FISTA with adaptive restart.

FISTA (Beck & Teboulle, 2009) with adaptive restart (O'Donoghue & Candès, 2015)
and, without a fixed step, a backtracking line search on the curvature along the
step. The loop is never differentiated: the derivative comes from the fixed point.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from rootdiff._trees import _max_abs_each

PyTree = Any


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


class _State(NamedTuple):
    x: PyTree  # last prox output x_k
    y: PyTree  # extrapolated point y_k where the next gradient is taken
    y_verified: jax.Array  # y_k == x_k (after a restart): G(y) is a verified optimality
    t: jax.Array  # FISTA momentum scalar
    eta: jax.Array  # current step
    it: jax.Array
    done: jax.Array  # y passed the stopping test
    stop: jax.Array  # line search failed or non-finite iterate: give up
    collapsed: jax.Array
    g0: jax.Array  # max|G(x0)|
    grad0: jax.Array  # max|∇f(x0)| (rounding floor of G)
    opt: jax.Array  # max|G| at the last evaluated y
    thr: jax.Array  # threshold at the last evaluated y


def _fista(f, prox, init, hp, *, stepsize, opts, tol, dtype):
    """FISTA with adaptive restart and backtracking; returns the final state."""
    grad = jax.grad(f)
    line_search = stepsize is None
    eps = float(jnp.finfo(dtype).eps)

    def step(y, g, eta):
        return prox(otu.tree_add_scale(y, -eta, g), hp, eta)

    def search(y, g, eta0, skip):
        """Largest ``η = eta0 · backtrack^j`` passing the curvature test along the step.

        ``⟨∇f(x⁺) − ∇f(y), x⁺ − y⟩ ≤ ‖x⁺ − y‖² / (2η)`` with ``x⁺ = prox(y − η∇f(y))``.
        For convex ``f`` it implies the usual sufficient decrease; gradients rather than
        values are tested because the value test drowns in rounding near the solution.
        NaN fails the test. Returns ``(η, failed)``: ``failed`` after ``max_backtracks``.
        """

        def ok(eta):
            x_new = step(y, g, eta)
            d = otu.tree_sub(x_new, y)
            curvature = otu.tree_vdot(otu.tree_sub(grad(x_new), g), d)
            return curvature <= otu.tree_vdot(d, d) / (2 * eta)

        def cond(c):
            eta, j, good = c
            return (j < opts.max_backtracks) & ~skip & ~good

        def body(c):
            eta, j, _ = c
            eta = eta * opts.backtrack
            return eta, j + 1, ok(eta)

        j0 = jnp.zeros_like(eta0, dtype=jnp.int32)  # typed like the data (Explicit meshes)
        eta, _, good = jax.lax.while_loop(cond, body, (eta0, j0, skip | ok(eta0)))
        return eta, ~good

    def body(s: _State) -> _State:
        g = grad(s.y)
        if line_search:
            # y left f's domain (∇f not finite): restart from the last x, and do not
            # search a step along a NaN gradient.
            outside = ~_all_finite(g)
            g = jax.tree.map(lambda v: jnp.where(outside, jnp.zeros_like(v), v), g)
            eta, failed = search(s.y, g, s.eta * opts.increase, outside)
        else:
            eta, failed = s.eta, jnp.zeros_like(s.eta, dtype=bool)
        x_new = step(s.y, g, eta)
        # The four maxima the tests below need, in one pass (one variadic reduction,
        # one kernel to compile, where four separate ones are up to three each); NaN
        # propagates, so x_new is finite iff its maximum is.
        residual, g_max, y_max, x_max = _max_abs_each(otu.tree_sub(x_new, s.y), g, s.y, x_new)
        if not line_search:  # the same test, read off g's maximum (x_new is then unused)
            outside = ~jnp.isfinite(g_max)
        opt = residual / eta
        first = s.it == 0
        g0 = jnp.where(first, opt, s.g0)
        grad0 = jnp.where(first, g_max, s.grad0)
        # relative reduction of the gradient mapping, down to its rounding floor
        # (scale: the larger of G and ∇f at the start, so that a warm start close to the
        # solution does not make the test stricter)
        thr = tol * jnp.maximum(g0, grad0) + 4 * eps * (grad0 + g_max)
        # a step too small to move y (rounding) proves nothing: the step collapsed
        frozen = eta * g_max <= 4 * eps * y_max
        failed = (failed | (frozen & (g_max > thr))) & ~outside
        small = (opt <= thr) & ~failed
        done = s.y_verified & small & ~outside
        stop = failed | ~jnp.isfinite(x_max)
        # Adaptive restart when the momentum points uphill, and a forced restart
        # when the step is small, so that the next iterate is checked at y == x.
        uphill = otu.tree_vdot(otu.tree_sub(s.y, x_new), otu.tree_sub(x_new, s.x)) > 0
        restart = uphill | small
        t_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * s.t**2)) / 2).astype(s.t.dtype)
        beta = jnp.where(restart, 0.0, (s.t - 1) / t_new).astype(s.t.dtype)
        y_new = otu.tree_add_scale(x_new, beta, otu.tree_sub(x_new, s.x))
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(done | stop, b, a), new, old
        )
        advanced = _State(
            x=keep(x_new, s.x), y=keep(y_new, s.y), y_verified=beta == 0, t=t_new,
            eta=jnp.where(stop, s.eta, eta), it=s.it + 1, done=done, stop=stop,
            collapsed=failed, g0=g0, grad0=grad0, opt=jnp.where(failed, jnp.inf, opt), thr=thr,
        )  # fmt: skip
        restarted = s._replace(
            y=s.x, y_verified=jnp.ones_like(s.t, dtype=bool), t=jnp.ones_like(s.t), it=s.it + 1,
            eta=s.eta * opts.backtrack,
        )  # fmt: skip
        return jax.tree.map(lambda a, b: jnp.where(outside, a, b), restarted, advanced)

    def cond(s: _State) -> jax.Array:
        return (~s.done) & (~s.stop) & (s.it < opts.maxiter)

    if getattr(prox, "is_projection", False):  # start from a feasible point
        init = prox(init, hp, jnp.zeros((), dtype))
    x0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), init)
    eta0 = _initial_step(grad, x0, dtype) if line_search else jnp.asarray(stepsize, dtype)
    # Loop scalars typed like the data, not literals: a literal has no mesh in its
    # type, which breaks vmap over an Explicit mesh axis.
    zero = jnp.zeros_like(eta0, dtype=dtype)
    true, false = zero == 0, zero != 0
    s0 = _State(
        x=x0, y=x0, y_verified=true, t=zero + 1, eta=zero + eta0,
        it=zero.astype(jnp.int32), done=false, stop=~_all_finite(x0) | false,
        collapsed=false, g0=zero, grad0=zero, opt=zero + jnp.inf, thr=zero,
    )  # fmt: skip
    s = jax.lax.while_loop(cond, body, s0)
    # On success y is the verified point (y == x there); otherwise return the last x.
    x = jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s.y, s.x)
    return x, s


def _initial_step(grad, x0, dtype):
    """``1 / L₀`` with ``L₀`` a finite-difference curvature of ``f`` along ``−∇f(x₀)``.

    Usually an overestimate of the admissible step (a Rayleigh quotient ≤ ``L``) that
    backtracking then shrinks; 1 where it is not finite and positive.
    """
    g0 = grad(x0)
    g_norm = otu.tree_norm(g0)
    h = 1e-3 * (1 + otu.tree_norm(x0)) / jnp.where(g_norm > 0, g_norm, 1.0)
    g1 = grad(otu.tree_add_scale(x0, -h, g0))
    L0 = otu.tree_norm(otu.tree_sub(g1, g0)) / (h * jnp.where(g_norm > 0, g_norm, 1.0))
    eta0 = 1.0 / L0
    return jnp.where(jnp.isfinite(eta0) & (eta0 > 0), eta0, 1.0).astype(dtype)
