"""Pytree helpers of the implicit rule: layouts, closure conversion, real views.

* :func:`_convert` closure-converts a function, hoisting every traced value it
  closes over into an explicit input;
* :func:`_split` separates array arguments from static ones;
* :func:`_to_real` / :func:`_from_real` view complex leaves as real pairs;
* :func:`_encode_aux` / :func:`_decode_aux` carry non-floating aux through a
  ``custom_jvp`` as floating arrays;
* small predicates and reductions over pytrees (:func:`_describe`,
  :func:`_same_layout`, :func:`_max_abs`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

PyTree = Any


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _is_py_float(x: Any) -> bool:
    """A Python ``float``/``complex`` (JAX treats them as weakly typed arrays)."""
    return isinstance(x, (float, complex)) and not isinstance(x, bool)


def _describe(tree: Any) -> str:
    """Human-readable ``structure: shape dtype`` summary of a pytree."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = ", ".join(
        f"{jnp.dtype(jnp.result_type(leaf)).name}{list(np.shape(leaf))}" for leaf in leaves
    )
    return f"{treedef} with leaves [{shapes}]"


def _same_layout(a: Any, b: Any, *, dtypes: bool) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if np.shape(x) != np.shape(y):
            return False
        if dtypes and jnp.dtype(jnp.result_type(x)) != jnp.dtype(jnp.result_type(y)):
            return False
    return True


def _max_abs(tree: PyTree) -> jax.Array:
    leaves = [jnp.max(jnp.abs(leaf), initial=0.0) for leaf in jax.tree.leaves(tree)]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())


def _max_abs_each(*trees: PyTree) -> tuple[jax.Array, ...]:
    """``tuple(_max_abs(t) for t in trees)``.

    When every tree is one array of the same shape, as one (variadic) reduction: one
    kernel for XLA to compile instead of one or two per tree. NaN propagates.
    """
    leaves = [jax.tree.leaves(t) for t in trees]
    if all(len(ls) == 1 for ls in leaves):
        arrs = [jnp.abs(ls[0]) for ls in leaves]
        if len({(a.shape, a.dtype) for a in arrs}) == 1 and arrs[0].size:
            # A variadic reduction: one pass, no stacked copy.
            zero = [jnp.zeros((), a.dtype) for a in arrs]
            maxima = jax.lax.reduce(
                arrs, zero, lambda x, y: [jnp.maximum(u, v) for u, v in zip(x, y)],
                tuple(range(arrs[0].ndim)),
            )  # fmt: skip
            return tuple(maxima)
    return tuple(_max_abs(t) for t in trees)


def _tree_neg(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.negative, tree)


def _zero_tangent(x: jax.Array) -> jax.Array:
    if _is_float(x):
        return jnp.zeros_like(x)  # keeps the primal's type (shard_map's varying axes)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


# A ``custom_jvp`` output that is not floating needs a ``float0`` tangent, and a
# ``float0`` zero cannot carry the primal's type under ``shard_map`` (its varying
# manual axes): JAX then rejects the rule. So the aux of ``has_aux=True`` leaves the
# custom_jvp as float32 arrays holding the same values exactly, and is decoded right
# after: booleans and integers of ≤ 16 bits converted, wider integers first split
# into 16-bit pieces (an integer-to-integer bitcast, so no float bit patterns such
# as NaNs or denormals are ever made). Other dtypes (e.g. PRNG keys) keep a
# ``float0`` tangent.


def _encode_aux(x: jax.Array) -> jax.Array:
    dt = jnp.result_type(x)
    if dt == jnp.bool_:
        return jnp.asarray(x, jnp.float32)
    if not jnp.issubdtype(dt, jnp.integer):
        return x
    if jnp.iinfo(dt).bits > 16:
        x = jax.lax.bitcast_convert_type(x, jnp.uint16)  # shape (..., bits/16)
    return jnp.asarray(x, jnp.float32)


def _decode_aux(y: jax.Array, like: Any) -> jax.Array:
    dt = like.dtype
    if dt == jnp.bool_:
        return y != 0
    if not jnp.issubdtype(dt, jnp.integer):
        return y
    if jnp.iinfo(dt).bits > 16:
        return jax.lax.bitcast_convert_type(y.astype(jnp.uint16), dt)
    return y.astype(dt)


def _sol_dtype(sol: PyTree) -> Any:
    leaves = jax.tree.leaves(sol)
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _real_dtype(dt: Any) -> Any:
    return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.inexact) else dt


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python >= 3.11
        e.add_note(note)


# --------------------------------------------------------------------------- hoisting


def _convert(fun: Callable[..., Any], *example_args: Any):
    """Closure-convert ``fun``: ``(fun_c, consts, out_shape)``, ``fun_c(*args, *consts)``.

    Like :func:`jax.closure_convert`, but *every* traced value ``fun`` closes over is
    hoisted, including integer ones (LU pivots, active sets): ``jax.closure_convert``
    keeps those inside the jaxpr, and a rule traced later (``grad`` of a ``jit``-ted
    function, a differentiated ``scan``) would then meet a tracer of a finished
    trace. Concrete constants stay inside.
    """
    flat, in_tree = jax.tree.flatten(example_args)

    def flat_fun(*leaves):
        return fun(*jax.tree.unflatten(in_tree, leaves))

    closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*flat)
    out_tree = jax.tree.structure(out_shape)
    consts = list(closed.consts)
    hoist = [i for i, c in enumerate(consts) if isinstance(c, jax.core.Tracer)]
    n_args = len(example_args)
    jaxpr = closed.jaxpr

    def converted(*args_and_consts):
        args, hoisted = args_and_consts[:n_args], args_and_consts[n_args:]
        vals = list(consts)
        for i, c in zip(hoist, hoisted, strict=True):
            vals[i] = c
        leaves = jax.tree.leaves(args)
        return jax.tree.unflatten(out_tree, jaxpr_as_fun(ClosedJaxpr(jaxpr, vals))(*leaves))

    return converted, [consts[i] for i in hoist], out_shape


def _split(args: tuple, kwargs: dict):
    """Split ``(args, kwargs)`` into array leaves and a function rebuilding them.

    Non-array leaves (Python numbers, strings, callables, ...) stay static.
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dyn_idx = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    dyn = [jnp.asarray(leaves[i]) for i in dyn_idx]
    dyn_set = set(dyn_idx)
    template = [None if i in dyn_set else leaf for i, leaf in enumerate(leaves)]

    def rebuild(dyn_leaves):
        out = list(template)
        for i, v in zip(dyn_idx, dyn_leaves):
            out[i] = v
        return jax.tree.unflatten(treedef, out)

    return dyn, rebuild


# --------------------------------------------------------------------------- complex


def _needs_real_view(tree: PyTree) -> bool:
    leaves = jax.tree.leaves(tree)
    return any(jnp.issubdtype(jnp.result_type(s), jnp.complexfloating) for s in leaves)


def _to_real(tree: PyTree) -> PyTree:
    """Complex leaves ``z`` → real ``stack([Re z, Im z], -1)``; real leaves unchanged."""

    def leaf(z):
        if jnp.issubdtype(z.dtype, jnp.complexfloating):
            return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1)
        return z

    return jax.tree.map(leaf, tree)


def _from_real(tree: PyTree, template: PyTree) -> PyTree:
    def leaf(r, t):
        if jnp.issubdtype(t.dtype, jnp.complexfloating):
            return jax.lax.complex(r[..., 0], r[..., 1]).astype(t.dtype)
        return r

    return jax.tree.map(leaf, tree, template)
