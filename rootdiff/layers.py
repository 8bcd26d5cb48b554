r"""Sparsemax and LML layers: a scalar threshold found by :func:`rootdiff.bisection`.

Both layers map scores ``x ∈ ℝⁿ`` to ``y(x, τ)`` for a threshold ``τ`` that solves one
scalar equation:

* sparsemax (Martins & Astudillo, 2016), the Euclidean projection onto the simplex:
  ``y = max(x − τ, 0)`` with ``Σᵢ max(xᵢ − τ, 0) = 1``;
* LML, the limited multi-label projection (Amos, Koltun & Kolter, 2019):
  ``y = sigmoid(x + ν)`` with ``Σᵢ sigmoid(xᵢ + ν) = k``.

The threshold comes from :func:`rootdiff.bisection`, so its derivative is the
implicit one from :func:`rootdiff.custom_root` (``∂τ/∂x = −(∂_τF)⁻¹ ∂ₓF``, a scalar
division); the output map ``y(x, τ)`` is plain JAX. Every autodiff mode, ``vmap``
and ``jit`` work; all rows (every index of the other axes) are solved in one
compiled loop.

Numerics. Both maps are shift-invariant (``x → x + c`` moves the threshold by
``c``), so each row is shifted by its maximum first: the bracket is then
``[−1, 0]`` for sparsemax and ``[logit(k/n) − 1, logit(k/n) − min + 1]`` for LML in
the shifted scores, whatever ``|x|`` is, and the end ``τ = max − 1`` (support of
size one) is exact and found. For sparsemax, bisection runs to adjacent floats and
its final false-position step makes ``τ`` exact (``F`` is linear between kinks). For
LML it stops at width ``w = sqrt(eps)``: ``F(ν) = Σ sigmoid(zᵢ + ν) − k`` has
``|F''/F'| ≤ 1``, so the false-position step's error is at most ``w²/8 ≤ eps/8``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from numbers import Number
from typing import Any

import jax
import jax.numpy as jnp

from rootdiff import linear_solve as _ls
from rootdiff.solvers.bisection import bisection

__all__ = ["sparsemax", "lml"]


def _float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _validate(name: str, x: jax.Array, axis: Any) -> int:
    """Check ``axis`` against ``x`` (an error naming both, not a bare ``IndexError``)."""
    if x.ndim == 0:
        raise ValueError(f"{name}: x must have at least one axis, got a scalar")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name}: axis must be an int, got {axis!r}") from None
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"{name}: axis={axis} is out of range for x of shape {x.shape} "
            f"(expected -{x.ndim} <= axis < {x.ndim})"
        )
    return axis % x.ndim


def _over_rows(
    row_fn: Callable[..., jax.Array], x: jax.Array, axis: int, *extra: Any, extra_axes=()
) -> jax.Array:
    """Apply ``row_fn(row, *extra)`` along ``axis`` to every row at once (one ``vmap``)."""
    moved = jnp.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = jax.vmap(row_fn, in_axes=(0, *extra_axes))(rows, *extra)
    return jnp.moveaxis(out.reshape(moved.shape), -1, axis)


# --------------------------------------------------------------------------- sparsemax


def _sparsemax_threshold_fun(tau: jax.Array, z: jax.Array) -> jax.Array:
    """``F(τ, z) = Σᵢ max(zᵢ − τ, 0) − 1``, decreasing in ``τ``."""
    return jnp.sum(jnp.maximum(z - tau, 0.0)) - 1.0


def _sparsemax_row(x: jax.Array) -> jax.Array:
    z = x - jax.lax.stop_gradient(jnp.max(x))
    tau = bisection(_sparsemax_threshold_fun, -1.0, 0.0, z, check_bracket=False, check="off")
    return jnp.maximum(z - tau, 0.0)


def sparsemax(x: jax.Array, axis: int = -1) -> jax.Array:
    r"""Sparsemax: the Euclidean projection of ``x`` onto the probability simplex.

    .. math:: y = \max(x − τ, 0), \qquad τ \text{ such that } \textstyle\sum_i \max(x_i − τ, 0) = 1,

    along ``axis`` (all other axes are a batch, solved in one compiled loop). The
    threshold ``τ`` is found by :func:`rootdiff.bisection` on ``[max − 1, max]``
    and differentiated implicitly; the Jacobian is ``diag(s) − s sᵀ/|S|`` with ``s``
    the support indicator. Float inputs keep their dtype (float32 or float64).

    Args:
      x: scores, any shape.
      axis: the axis to project along.

    Returns:
      ``y`` with the shape and dtype of ``x``; ``y ≥ 0`` and ``y.sum(axis) = 1``.

    Example:
      >>> import jax.numpy as jnp
      >>> from rootdiff.layers import sparsemax
      >>> [round(float(v), 4) for v in sparsemax(jnp.array([1.0, 0.8, -1.0]))]
      [0.6, 0.4, 0.0]
    """
    x = _float(x)
    axis = _validate("sparsemax", x, axis)
    if x.shape[axis] == 0:
        raise ValueError(
            f"sparsemax: x of shape {x.shape} has no entries along axis {axis}; the "
            f"probability simplex is empty in dimension 0"
        )
    return _sparsemax_jit(x, axis)


@functools.partial(jax.jit, static_argnames="axis")
def _sparsemax_jit(x: jax.Array, axis: int) -> jax.Array:
    # Jitted so that eager calls are compiled once per shape; under an outer
    # transformation it is simply inlined.
    return _over_rows(_sparsemax_row, x, axis)


# --------------------------------------------------------------------------- LML


def _lml_fun(nu: jax.Array, z: jax.Array, k: Any) -> jax.Array:
    """``F(ν, z, k) = Σᵢ sigmoid(zᵢ + ν) − k``, increasing in ``ν``."""
    return jnp.sum(jax.nn.sigmoid(z + nu)) - k


def _lml_solve(matvec, b, *, return_info: bool = False):
    """``1 × 1`` solve ``F'(ν) u = b`` with ``u = 0`` when ``F' = Σ y(1 − y)`` underflows.

    All outputs are then saturated at 0 or 1 and their derivatives (bounded by
    ``F'``) vanish, so ``u = 0`` gives the right (zero) derivative instead of ``0/0``.
    """
    a = matvec(jnp.ones_like(b))
    safe = jnp.abs(a) >= jnp.finfo(a.dtype).tiny
    u = jnp.where(safe, b / jnp.where(safe, a, 1.0), 0.0)
    if not return_info:
        return u
    return u, _ls.SolveInfo(jnp.abs(b - a * u), jnp.abs(b), jnp.ones((), jnp.int32), safe)


def _lml_row(x: jax.Array, k: Any) -> jax.Array:
    # The row's maximum, its minimum over the finite entries and the number m of those
    # (entries at −inf are masked: sigmoid 0) in one pass: one variadic reduction, not
    # three (each a kernel for XLA to compile, and the count an integer array).
    xs = jax.lax.stop_gradient(x)
    finite = xs > -jnp.inf
    x_max, x_min, m = jax.lax.reduce(
        (xs, jnp.where(finite, xs, jnp.inf), finite.astype(xs.dtype)),
        tuple(jnp.array(v, xs.dtype) for v in (-jnp.inf, jnp.inf, 0)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1]), a[2] + b[2]),
        (0,),
    )
    z = x - x_max
    k_over_m = jax.lax.stop_gradient(jnp.asarray(k, z.dtype) / m)
    base = jnp.log(k_over_m) - jnp.log1p(-k_over_m)  # logit(k/m)
    z_min = x_min - x_max  # = min of the finite z (x ↦ x − x_max rounds monotonically)
    lower = base - 1.0  # every term ≤ sigmoid(logit(k/m) − 1) < k/m
    upper = base - z_min + 1.0  # every finite term > k/m
    # Width sqrt(eps), then the false-position step: |F''/F'| ≤ 1 bounds its error by
    # width²/8 ≤ eps/8 (rounding level) — 20-odd fewer steps than adjacent floats.
    tol = float(jnp.finfo(z.dtype).eps) ** 0.5
    nu = bisection(
        _lml_fun, lower, upper, z, k, tol=tol, solve=_lml_solve, check_bracket=False, check="off"
    )
    return jax.nn.sigmoid(z + nu)


def lml(x: jax.Array, k: int | float | jax.Array, axis: int = -1) -> jax.Array:
    r"""LML: the limited multi-label projection of scores ``x`` onto ``{0 ≤ y ≤ 1, Σy = k}``.

    .. math:: y = \operatorname{sigmoid}(x + ν), \qquad ν \text{ such that }
              \textstyle\sum_i \operatorname{sigmoid}(x_i + ν) = k,

    the solution of ``max_y xᵀy + H_b(y)`` s.t. ``Σy = k`` (``H_b`` the binary
    entropy), along ``axis``; all other axes are a batch solved in one compiled
    loop. ``ν`` is found by :func:`rootdiff.bisection` and differentiated
    implicitly, which reproduces the paper's backward
    ``dx = H⁻¹(g − (Σ H⁻¹g)/(Σ H⁻¹))`` with ``H⁻¹ = y(1 − y)``.

    Args:
      x: scores, any shape; ``n = x.shape[axis]``.
      k: the label budget, ``0 < k < n``: a Python number (``k ≥ n`` returns
        ones and ``k ≤ 0`` zeros, as in the paper's code; a new value of ``k``
        does not recompile), or an array
        broadcastable to the batch shape (``x`` without ``axis``), which is
        differentiated if floating; an array ``k`` outside ``(0, n)`` gives NaN.
        Entries ``−inf`` (masked) get ``y = 0``; ``k`` must then be below the
        number of finite entries (else NaN).
      axis: the axis to project along.

    Returns:
      ``y`` with the shape and dtype of ``x``, ``0 < y < 1`` and ``y.sum(axis) = k``.

    Example:
      >>> import jax.numpy as jnp
      >>> from rootdiff.layers import lml
      >>> y = lml(jnp.array([2.0, 1.0, -1.0, 0.5]), k=2)
      >>> round(float(y.sum()), 4), [round(float(v), 2) for v in y]
      (2.0, [0.79, 0.59, 0.16, 0.46])
    """
    x = _float(x)
    axis = _validate("lml", x, axis)
    n = x.shape[axis]
    if isinstance(k, Number) and not isinstance(k, bool):
        if k >= n:
            return jnp.ones_like(x)
        if k <= 0:
            return jnp.zeros_like(x)
        return _lml_scalar_k(x, jnp.asarray(k, x.dtype), axis)
    k = jnp.asarray(k)
    if jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(x.dtype)
    batch_shape = x.shape[:axis] + x.shape[axis + 1 :]
    try:
        ok = jnp.broadcast_shapes(k.shape, batch_shape) == batch_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"lml: k of shape {k.shape} does not broadcast to the batch shape "
            f"{batch_shape} (x of shape {x.shape} without axis {axis})"
        )
    return _lml_array_k(x, k, axis)


@functools.partial(jax.jit, static_argnames="axis")
def _lml_scalar_k(x: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    # One k for every row; traced, so that each new Python k reuses the compiled loop.
    return _over_rows(_lml_row, x, axis, k, extra_axes=(None,))


@functools.partial(jax.jit, static_argnames="axis")
def _lml_array_k(x: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    batch_shape = tuple(s for i, s in enumerate(x.shape) if i != axis % x.ndim)
    k_rows = jnp.broadcast_to(k, batch_shape).reshape(-1)
    return _over_rows(_lml_row, x, axis, k_rows, extra_axes=(0,))
