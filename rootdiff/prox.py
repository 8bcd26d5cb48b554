r"""Proximal operators, with jaxopt's signature ``prox(x, hyperparams, scaling)``.

Each function returns

.. math::  \operatorname{prox}_{s\,g(\cdot, λ)}(x)
           = \operatorname{argmin}_y \tfrac12\lVert y − x\rVert^2 + s\,g(y, λ),

with ``λ = hyperparams`` and ``s = scaling`` (the step of the proximal-gradient
method). They are written with ``jnp.where``/``jnp.maximum`` so that JAX differentiates
them (w.r.t. ``x`` and ``hyperparams``) in every mode; that derivative is what
:func:`rootdiff.proximal_gradient` uses for the implicit rule. ``x`` may be any
pytree of arrays; a hyperparameter is a scalar, an array broadcastable to each leaf,
or a pytree with the structure of ``x`` (one value per leaf or per coordinate —
e.g. one ``λ`` per feature for a weighted Lasso).

optax ships the projections (re-exported by :mod:`rootdiff.projections`) but no
proximal operators, hence this module; :func:`prox_from_projection` turns any
projection into the prox of its set's indicator.

Bad hyperparameters are errors naming the argument: one that does not broadcast to
its leaf of ``x``, a pytree not shaped like ``x``, and (when the value is concrete, not
traced) a negative weight ``λ`` (no minimiser) or ``lower > upper`` (empty box).

At a kink (``|x_i| = s λ_i`` exactly for the l1 family) the operators take the
derivative of the *zero* branch: a coordinate exactly at its threshold is treated as
outside the support.

Example:
  >>> import jax.numpy as jnp
  >>> from rootdiff.prox import prox_lasso
  >>> [float(v) for v in prox_lasso(jnp.array([3.0, -0.5, -2.0]), 1.0)]
  [2.0, 0.0, -1.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_ridge",
    "prox_group_lasso",
    "prox_from_projection",
    "prox_non_negative",
    "prox_box",
    "call_projection",
]

PyTree = Any


def _per_leaf(x: PyTree, hyperparams: Any) -> PyTree:
    """``hyperparams`` matched to the leaves of ``x`` (a scalar/array is shared)."""
    if jax.tree.structure(hyperparams) == jax.tree.structure(x) and not _is_leaf(x):
        return hyperparams
    return jax.tree.map(lambda _: hyperparams, x)


def _checked(name: str, arg: str, x: PyTree, hyperparams: Any, nonneg: bool = True) -> PyTree:
    """:func:`_per_leaf`, with an error naming ``arg`` for a bad shape, structure or sign.

    Each value must broadcast to its leaf of ``x``; a negative ``λ`` (``nonneg``: the
    problem has no minimiser, the formula would silently grow ``x``) is caught when
    the value is concrete (eager calls, Python numbers); traced values are not read.
    """
    if hyperparams is None:
        return _per_leaf(x, hyperparams)
    hp_def, x_def = jax.tree.structure(hyperparams), jax.tree.structure(x)
    if not jax.tree_util.treedef_is_leaf(hp_def) and hp_def != x_def:
        raise ValueError(
            f"{name}: {arg} must be a scalar, an array or a pytree like x; got the "
            f"structure {hp_def} for x of structure {x_def}"
        )
    lam = _per_leaf(x, hyperparams)
    for v, lm in zip(jax.tree.leaves(x), jax.tree.leaves(lam), strict=True):
        v_shape, lm_shape = jnp.shape(v), jnp.shape(lm)
        try:
            fits = jnp.broadcast_shapes(lm_shape, v_shape) == v_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name}: {arg} of shape {lm_shape} does not broadcast to x's leaf of "
                f"shape {v_shape}"
            )
        if nonneg and not isinstance(lm, jax.core.Tracer) and bool(np.any(np.asarray(lm) < 0)):
            raise ValueError(f"{name}: {arg} must be >= 0, got {lm!r}")
    return lam


def _is_leaf(x: PyTree) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(x))


def _soft(v: jax.Array, t: jax.Array) -> jax.Array:
    # strict ``>``: a coordinate exactly at the threshold takes the zero branch
    return jnp.where(jnp.abs(v) > t, v - t * jnp.sign(v), jnp.zeros_like(v))


def prox_none(x: PyTree, hyperparams: Any = None, scaling: float = 1.0) -> PyTree:
    """The identity: prox of ``g = 0`` (proximal gradient is then plain gradient descent)."""
    del hyperparams, scaling
    return x


def prox_lasso(x: PyTree, l1reg: Any = 1.0, scaling: float = 1.0) -> PyTree:
    r"""Soft thresholding: prox of ``g(x) = Σᵢ λᵢ |xᵢ|``.

    ``prox(x)ᵢ = sign(xᵢ) max(|xᵢ| − s λᵢ, 0)``. ``l1reg`` (``λ ≥ 0``): scalar, array
    (one ``λ`` per coordinate: the weighted Lasso) or pytree like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in prox_lasso(jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0]))]
      [0.0, 2.0]
    """
    lam = _checked("prox_lasso", "l1reg", x, l1reg)
    return jax.tree.map(lambda v, lm: _soft(v, scaling * lm), x, lam)


def prox_non_negative_lasso(x: PyTree, l1reg: Any = 1.0, scaling: float = 1.0) -> PyTree:
    r"""Prox of ``g(x) = Σᵢ λᵢ xᵢ + ι(x ≥ 0)``: ``max(xᵢ − s λᵢ, 0)``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in prox_non_negative_lasso(jnp.array([3.0, -2.0]), 1.0)]
      [2.0, 0.0]
    """
    lam = _checked("prox_non_negative_lasso", "l1reg", x, l1reg, nonneg=False)
    return jax.tree.map(
        lambda v, lm: jnp.where(v > scaling * lm, v - scaling * lm, jnp.zeros_like(v)), x, lam
    )


def prox_ridge(x: PyTree, l2reg: Any = 1.0, scaling: float = 1.0) -> PyTree:
    r"""Prox of ``g(x) = ½ Σᵢ λᵢ xᵢ²``: ``xᵢ / (1 + s λᵢ)``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in prox_ridge(jnp.array([3.0]), 2.0)]
      [1.0]
    """
    lam = _checked("prox_ridge", "l2reg", x, l2reg)
    return jax.tree.map(lambda v, lm: v / (1 + scaling * lm), x, lam)


def prox_elastic_net(x: PyTree, hyperparams: tuple[Any, Any] = (1.0, 1.0),
                     scaling: float = 1.0) -> PyTree:  # fmt: skip
    r"""Prox of the elastic net ``g(x) = λ (‖x‖₁ + γ/2 ‖x‖²)``, ``hyperparams = (λ, γ)``.

    ``prox(x)ᵢ = sign(xᵢ) max(|xᵢ| − s λ, 0) / (1 + s λ γ)`` (jaxopt's convention; in
    scikit-learn's terms ``λ = α·l1_ratio`` and ``λγ = α(1 − l1_ratio)``). ``λ`` and
    ``γ`` are scalars, arrays or pytrees like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in prox_elastic_net(jnp.array([3.0, 0.5]), (1.0, 1.0))]
      [1.0, 0.0]
    """
    lam, gamma = hyperparams
    lam = _checked("prox_elastic_net", "hyperparams[0]", x, lam)
    gamma = _checked("prox_elastic_net", "hyperparams[1]", x, gamma)
    return jax.tree.map(
        lambda v, lm, g: _soft(v, scaling * lm) / (1 + scaling * lm * g), x, lam, gamma
    )


def _norm_and_direction(
    v: jax.Array, peak: jax.Array, total: Callable[[jax.Array], jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """``‖v‖₂`` of each group and ``v/‖v‖`` (``total`` sums squares over a group).

    Computed from ``w = v/peak`` with ``peak = max|v|`` of the group held constant:
    ``‖v‖ = peak · ‖w‖`` and ``v/‖v‖ = w/‖w‖`` with ``1 ≤ ‖w‖² ≤ n``, so that groups of
    size 1e-25 or 1e25 in float32 neither underflow nor overflow, in the values or
    their derivatives (``‖v‖²`` or ``‖v‖³`` would). A zero group has norm 0, direction
    0 and derivative 0 (not the ``0 · ∞ = NaN`` of ``sqrt`` at 0).
    """
    peak = jax.lax.stop_gradient(peak)
    nonzero = peak > 0
    scale = jnp.where(nonzero, peak, 1.0)
    w = v / scale
    root = jnp.sqrt(jnp.where(nonzero, total(w * w), 1.0))
    norm = jnp.where(nonzero, scale * root, 0.0).astype(w.dtype)
    return norm, jnp.where(nonzero, w / root, 0.0).astype(w.dtype)


def prox_group_lasso(
    x: PyTree, l2reg: Any = 1.0, scaling: float = 1.0, *, groups: jax.Array | None = None
) -> PyTree:
    r"""Block soft thresholding: prox of ``g(x) = Σ_G λ_G ‖x_G‖₂``.

    ``prox(x)_G = max(1 − s λ_G / ‖x_G‖, 0) x_G``. The groups ``G`` are

    * ``groups=None``: each leaf of the pytree ``x`` is one group (a single array is
      one group); ``l2reg`` is a scalar or a pytree with one scalar per leaf;
    * ``groups`` an integer array of group ids ``0 … n_groups − 1``, one per
      coordinate of the (single, 1-D) array ``x``; ``l2reg`` is a scalar or an array
      of ``n_groups`` values. Bind it with ``functools.partial(prox_group_lasso,
      groups=ids)`` to get a three-argument prox.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([3.0, 4.0, 0.1, 0.1])
      >>> out = prox_group_lasso(x, 1.0, groups=jnp.array([0, 0, 1, 1]))
      >>> [round(float(v), 3) for v in out]
      [2.4, 3.2, 0.0, 0.0]
    """
    if groups is None:
        lam = _checked("prox_group_lasso", "l2reg", x, l2reg)

        def block(v, lm):
            norm, direction = _norm_and_direction(v, jnp.max(jnp.abs(v)), jnp.sum)
            t = scaling * lm
            return jnp.where(norm > t, v - t * direction, jnp.zeros_like(v))

        return jax.tree.map(block, x, lam)
    x = jnp.asarray(x)
    groups = jnp.asarray(groups)
    if x.ndim != 1 or groups.shape != x.shape:
        raise ValueError(
            f"prox_group_lasso: with groups, x must be 1-D and groups of the same shape; "
            f"got x {x.shape}, groups {groups.shape}"
        )
    # ids lie in [0, len(x)): len(x) segments always suffice (and keep shapes static
    # when the ids are traced)
    n_seg = x.shape[0]
    peak = jax.ops.segment_max(jnp.abs(x), groups, num_segments=n_seg)[groups]
    norm, direction = _norm_and_direction(
        x, peak, lambda a: jax.ops.segment_sum(a, groups, num_segments=n_seg)[groups]
    )
    lam = jnp.asarray(l2reg, x.dtype)
    lam = lam if lam.ndim == 0 else lam[groups]
    t = scaling * lam
    return jnp.where(norm > t, x - t * direction, jnp.zeros_like(x))


def _n_required_positional(fn: Callable[..., Any]) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def call_projection(projection: Callable[..., PyTree], y: PyTree, hyperparams: Any) -> PyTree:
    """``projection`` applied to ``y`` under every calling convention users bring.

    * ``hyperparams is None``: ``projection(y)``, or ``projection(y, None)`` when the
      projection needs two positional arguments (``lambda y, hp: ...``);
    * a tuple ``hyperparams`` for a projection with more than two required positional
      arguments (optax's ``projection_box(y, lower, upper)``): ``projection(y, *hp)``
      (jaxopt passed ``hyperparams_proj=(lower, upper)``);
    * otherwise ``projection(y, hyperparams)``.
    """
    n = _n_required_positional(projection)
    if hyperparams is None:
        return projection(y, None) if n == 2 else projection(y)
    if n is not None and n >= 3 and isinstance(hyperparams, tuple) and len(hyperparams) == n - 1:
        return projection(y, *hyperparams)
    return projection(y, hyperparams)


def prox_from_projection(projection: Callable[..., PyTree]) -> Callable[..., PyTree]:
    r"""The prox of the indicator of a convex set ``C``: its Euclidean projection.

    ``prox(x, hyperparams, scaling) = projection(x, hyperparams)`` for every
    ``scaling > 0`` (the indicator is 0 or ∞, so scaling does not change it). The
    projection is called as in :func:`rootdiff.projected_gradient` (``projection(y)``
    when ``hyperparams`` is ``None``; a tuple is unpacked for optax's multi-argument
    projections).

    Example:
      >>> import jax.numpy as jnp
      >>> from optax.projections import projection_box
      >>> prox = prox_from_projection(projection_box)
      >>> [float(v) for v in prox(jnp.array([2.0, -1.0]), (0.0, 1.0), 0.5)]
      [1.0, 0.0]
    """

    def prox(x: PyTree, hyperparams: Any = None, scaling: float = 1.0) -> PyTree:
        del scaling
        return call_projection(projection, x, hyperparams)

    prox.__name__ = f"prox_from_projection({getattr(projection, '__name__', 'projection')})"
    prox.projection = projection  # type: ignore[attr-defined]
    prox.is_projection = True  # type: ignore[attr-defined]
    return prox


def prox_non_negative(x: PyTree, hyperparams: Any = None, scaling: float = 1.0) -> PyTree:
    """Prox of the indicator of ``{x ≥ 0}``: ``max(x, 0)`` (``hyperparams`` unused)."""
    del hyperparams, scaling
    return jax.tree.map(lambda v: jnp.maximum(v, 0), x)


def prox_box(x: PyTree, hyperparams: tuple[Any, Any], scaling: float = 1.0) -> PyTree:
    """Prox of the indicator of ``{lower ≤ x ≤ upper}``, ``hyperparams = (lower, upper)``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in prox_box(jnp.array([2.0, -1.0]), (0.0, 1.0))]
      [1.0, 0.0]
    """
    del scaling
    lower, upper = hyperparams
    lo = _checked("prox_box", "lower", x, lower, nonneg=False)
    hi = _checked("prox_box", "upper", x, upper, nonneg=False)
    for a, b in zip(jax.tree.leaves(lo), jax.tree.leaves(hi), strict=True):
        if not isinstance(a, jax.core.Tracer) and not isinstance(b, jax.core.Tracer):
            if bool(np.any(np.asarray(a) > np.asarray(b))):
                raise ValueError(f"prox_box: lower must be <= upper, got {a!r} and {b!r}")
    return jax.tree.map(lambda v, a, b: jnp.clip(v, a, b), x, lo, hi)


for _f in (prox_non_negative, prox_box):
    _f.is_projection = True  # type: ignore[attr-defined]

# Coordinate-separable operators (diagonal Jacobian): the support-restricted
# derivative of :func:`rootdiff.proximal_gradient` applies to them automatically.
for _f in (prox_none, prox_lasso, prox_non_negative_lasso, prox_ridge, prox_elastic_net,
           prox_non_negative, prox_box):  # fmt: skip
    _f.separable = True  # type: ignore[attr-defined]
del _f
