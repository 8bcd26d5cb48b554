r"""Euclidean projections onto convex sets: optax's, plus the ones optax lacks.

Every ``projection_*`` of :mod:`optax.projections` is re-exported (``projection_box``,
``projection_simplex``, ``projection_l1_ball``, ...), wrapped so that an input of a
precision below JAX's default float (float32 with ``jax_enable_x64``, float16 or
bfloat16) is projected in the default float and cast back: some of optax's
projections otherwise mix dtypes internally (a dtype error in their custom
derivative rule, or in a ``cond``). Other inputs go to optax untouched. Added here:

* :func:`projection_box_section` — onto ``{x : lower ≤ x ≤ upper, Σx = total}``;
* :func:`projection_capped_simplex` — onto ``{x : 0 ≤ x ≤ 1, Σx = k}`` (the set of
  LML, "top-k" relaxations).

Both reduce to one scalar equation for a threshold ``τ``,

.. math:: x = \operatorname{clip}(y − τ, \text{lower}, \text{upper}), \qquad
          g(τ) = \textstyle\sum_i \operatorname{clip}(y_i − τ, l_i, u_i) − \text{total} = 0,

with ``g`` non-increasing, solved by :func:`rootdiff.bisection` on the bracket
``[min(y − upper), max(y − lower)]`` (``g ≥ 0`` at the left end, ``≤ 0`` at the right).
The derivative of ``τ`` is bisection's implicit one, ``τ̇ = −ġ/g'(τ)`` with
``g'(τ) = −|S|`` (``S`` the coordinates strictly between the bounds); JAX then
differentiates the clip. When ``S`` is empty (every coordinate at a bound — common
for integer ``k``) ``τ`` is not unique and ``x`` is locally constant in ``y``; the
``1 × 1`` derivative system ``0 · τ̇ = ġ`` is then solved in the least-squares sense
(``τ̇ = 0``), which gives the right zero Jacobian instead of ``0/0``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.projections as _optax_projections

from rootdiff import linear_solve as _ls
from rootdiff.solvers.bisection import bisection


def _low_precision(leaf, work) -> bool:
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return False  # Python scalars are weakly typed: no dtype of their own to keep
    dtype = jnp.result_type(leaf)
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < jnp.finfo(work).bits


def _keep_dtype(proj):
    """``proj`` computed in the default float for low-precision inputs, cast back."""

    @functools.wraps(proj)
    def wrapped(tree, *args, **kwargs):
        work = jnp.result_type(float)  # float64 with x64 enabled, else float32
        low = lambda leaf: _low_precision(leaf, work)
        if not any(low(leaf) for leaf in jax.tree.leaves(tree)):
            return proj(tree, *args, **kwargs)
        up = jax.tree.map(lambda v: jnp.asarray(v, work) if low(v) else v, tree)
        out = proj(up, *args, **kwargs)
        return jax.tree.map(lambda o, v: jnp.asarray(o, v.dtype) if low(v) else o, out, tree)

    return wrapped


projection_box = _keep_dtype(_optax_projections.projection_box)
projection_halfspace = _keep_dtype(_optax_projections.projection_halfspace)
projection_hypercube = _keep_dtype(_optax_projections.projection_hypercube)
projection_hyperplane = _keep_dtype(_optax_projections.projection_hyperplane)
projection_l1_ball = _keep_dtype(_optax_projections.projection_l1_ball)
projection_l1_sphere = _keep_dtype(_optax_projections.projection_l1_sphere)
projection_l2_ball = _keep_dtype(_optax_projections.projection_l2_ball)
projection_l2_sphere = _keep_dtype(_optax_projections.projection_l2_sphere)
projection_linf_ball = _keep_dtype(_optax_projections.projection_linf_ball)
projection_non_negative = _keep_dtype(_optax_projections.projection_non_negative)
projection_simplex = _keep_dtype(_optax_projections.projection_simplex)
projection_vector = _keep_dtype(_optax_projections.projection_vector)

__all__ = [
    # re-exported from optax.projections
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
    # added here (optax has no projection onto a box intersected with a hyperplane)
    "projection_box_section",
    "projection_capped_simplex",
]


def _least_squares_scalar_solve(matvec, b, *, return_info: bool = False):
    """Minimum-norm solution of the ``1 × 1`` system ``a u = b``: ``u = b/a``, or 0 if ``a = 0``.

    ``a = g'(τ) = 0`` means every coordinate sits at a bound: ``x`` does not depend on
    ``τ`` there, so ``u = 0`` is the right choice (reported as converged).
    """
    a = matvec(jnp.ones_like(b))
    flat = a == 0
    u = jnp.where(flat, 0.0, b / jnp.where(flat, 1.0, a)).astype(b.dtype)
    if not return_info:
        return u
    ok = jnp.isfinite(u)
    return u, _ls.SolveInfo(jnp.abs(b - a * u), jnp.abs(b), jnp.ones((), jnp.int32), ok)


def _clip_shifted(y, tau, lower, upper):
    """``clip(y − τ, lower, upper)``, with an infinite ``y`` at its bound for every ``τ``.

    A score ``y = −inf`` (masked) gives ``lower`` and ``+inf`` gives ``upper`` for each
    finite ``τ``; written out, so that the bracket end ``τ = ∓inf`` (where ``y − τ`` is
    NaN) gives the same value, and so that their derivative is zero.
    """
    inner = jnp.clip(jnp.where(jnp.isinf(y), 0.0, y) - tau, lower, upper)
    return jnp.where(y == -jnp.inf, lower, jnp.where(y == jnp.inf, upper, inner))


def _section_residual(tau, y, total, lower, upper):
    """``g(τ) = Σ clip(y − τ, lower, upper) − total`` (non-increasing in ``τ``)."""
    return jnp.sum(_clip_shifted(y, tau, lower, upper)) - total


def _box_section_1d(y, total, lower, upper, check_bracket):
    sg = jax.lax.stop_gradient
    tau = bisection(
        _section_residual, sg(jnp.min(y - upper)), sg(jnp.max(y - lower)),
        y, total, lower, upper, solve=_least_squares_scalar_solve,
        check_bracket=check_bracket,
    )  # fmt: skip
    return _clip_shifted(y, tau, lower, upper)


def projection_box_section(
    y: jax.Array,
    total: float | jax.Array,
    lower: float | jax.Array = 0.0,
    upper: float | jax.Array = 1.0,
    axis: int = -1,
) -> jax.Array:
    r"""Projection onto ``{x : lower ≤ x ≤ upper, Σ x = total}`` along ``axis``.

    .. math:: x^\star = \operatorname{argmin}_x \|x − y\|_2 \ \text{s.t.}\
              l ≤ x ≤ u,\ \textstyle\sum_i x_i = \text{total}
              \;=\; \operatorname{clip}(y − τ, l, u),

    with the threshold ``τ`` found by :func:`rootdiff.bisection` (see the module
    docstring). Differentiable w.r.t. ``y``, ``total``, ``lower`` and ``upper`` (float
    arrays) in every autodiff mode; all other axes of ``y`` are a batch, solved in one
    vmapped loop.

    Args:
      y: point(s) to project, any shape, floating.
      total: the required sum ``Σx`` (scalar); needs ``Σ lower ≤ total ≤ Σ upper``
        (checked eagerly; under ``jit`` an infeasible ``total`` gives NaN and a
        :class:`rootdiff.ConvergenceWarning`).
      lower, upper: bounds, scalars or arrays broadcastable to ``y``.
      axis: the axis along which the sum constraint holds.

    Entries ``y = -inf`` (masked scores) get ``x = lower`` and ``+inf`` get ``x = upper``,
    with a zero derivative; the other entries are projected as without them (``total``
    must then lie between the sums of the bounds those entries can reach).

    Returns:
      ``x`` with the shape and dtype of ``y``.

    Example:
      >>> import jax.numpy as jnp
      >>> from rootdiff.projections import projection_box_section
      >>> x = projection_box_section(jnp.array([0.9, 0.5, -0.3]), 1.0, 0.0, 0.6)
      >>> [round(float(v), 4) for v in x]
      [0.6, 0.4, 0.0]
    """
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    if y.ndim == 0:
        raise ValueError("projection_box_section: y must have at least one axis")
    lower = jnp.broadcast_to(jnp.asarray(lower, y.dtype), y.shape)
    upper = jnp.broadcast_to(jnp.asarray(upper, y.dtype), y.shape)
    total = jnp.asarray(total, y.dtype)
    if total.ndim != 0:
        raise ValueError(f"total must be a scalar (use jax.vmap for many); got {total.shape}")
    if not any(isinstance(a, jax.core.Tracer) for a in (y, total, lower, upper)):
        # eager call: a clear error for an infeasible total (under jit: NaN + warning)
        # an entry y = -inf (masked) stays at its lower bound, y = +inf at its upper
        lo_eff = jnp.where(y == jnp.inf, upper, lower)
        hi_eff = jnp.where(y == -jnp.inf, lower, upper)
        lo_sum = jnp.sum(jnp.moveaxis(lo_eff, axis, -1), axis=-1)
        hi_sum = jnp.sum(jnp.moveaxis(hi_eff, axis, -1), axis=-1)
        if bool(jnp.any((total < lo_sum) | (total > hi_sum))):
            raise ValueError(
                f"projection_box_section: total={float(total)} is outside "
                f"[Σ lower, Σ upper] = [{float(jnp.max(lo_sum))}, {float(jnp.min(hi_sum))}]"
                f" for some row: the set is empty."
            )
    return _box_section(y, total, lower, upper, axis)


@functools.partial(jax.jit, static_argnames="axis")
def _box_section(y, total, lower, upper, axis):
    # Jitted so that eager calls compile once per shape; inlined under outer transforms.
    moved = [jnp.moveaxis(a, axis, -1) for a in (y, lower, upper)]
    shape = moved[0].shape
    rows = [a.reshape(-1, shape[-1]) for a in moved]
    row_fn = functools.partial(_box_section_1d, check_bracket=False)
    out = jax.vmap(row_fn, in_axes=(0, None, 0, 0))(rows[0], total, rows[1], rows[2])
    return jnp.moveaxis(out.reshape(shape), -1, axis)


def projection_capped_simplex(y: jax.Array, k: float | jax.Array, axis: int = -1) -> jax.Array:
    r"""Projection onto the capped simplex ``{x : 0 ≤ x ≤ 1, Σ x = k}`` along ``axis``.

    .. math:: x^\star = \operatorname{clip}(y − τ, 0, 1), \qquad
              τ:\ \textstyle\sum_i \operatorname{clip}(y_i − τ, 0, 1) = k,

    the threshold found by :func:`rootdiff.bisection` and differentiated implicitly
    (w.r.t. ``y``, and ``k`` when it is a float array). ``0 ≤ k ≤ n`` (``n`` the length
    of ``axis``); ``k`` may be an integer. This is :func:`projection_box_section`
    with bounds 0 and 1; for the set ``{ε ≤ x ≤ 1 − ε, Σx = k}`` use that directly.

    Args:
      y: point(s) to project, any shape (other axes are a batch).
      k: the sum, a scalar.
      axis: the axis along which ``Σ x = k``.

    Example:
      >>> import jax.numpy as jnp
      >>> from rootdiff.projections import projection_capped_simplex
      >>> x = projection_capped_simplex(jnp.array([2.0, 0.3, 0.1, -1.0]), 2)
      >>> [round(float(v), 4) for v in x]
      [1.0, 0.6, 0.4, 0.0]
    """
    return projection_box_section(y, k, 0.0, 1.0, axis=axis)
