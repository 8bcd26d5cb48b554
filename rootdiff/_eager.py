"""Cheap repeated calls of a decorated solver outside ``jax.jit``.

Called without ``jax.jit`` (plainly, or under an eager ``jax.grad``, ``jax.hessian``,
``jax.vmap``...), a decorated solver would trace its loops, the optimality
function and the derivative rule anew on every call. :func:`cached_call` instead
runs it through one ``jax.jit`` made when the solver is decorated, so JAX caches
the trace and the compiled program per input shapes and static arguments, and
also the derivatives of that program (the JVP, partial evaluation and transpose
of a jitted function are cached per jaxpr). Under an outer ``jax.jit`` nothing
changes: the solver is traced inline, as before.

Like any ``jax.jit``, the cache assumes that the solver and the optimality
function are pure: a global array they read is baked into the cached program.
Calls with arguments that cannot be cache keys (callables, which may close over
traced values, and unhashable objects) are not cached. Array arguments are
traced in either case (the rule hoists the solver into a jaxpr), and non-array
arguments are static in either case, so caching changes no semantics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def _under_jit() -> bool:
    """Whether an outer ``jax.jit`` (or ``make_jaxpr``, ``scan``...) is tracing now."""
    try:
        from jax._src import core
    except ImportError:  # pragma: no cover
        return True
    check = getattr(core, "unsafe_am_i_under_a_jit", None)
    if check is None:  # pragma: no cover - older JAX: no cache rather than a wrong one
        return True
    return bool(check())


def _dynamic(leaf: Any) -> bool:
    """Leaves passed to the jitted call as arrays (the rest are static cache keys)."""
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)  # as _trees._split


def _static_ok(leaf: Any) -> bool:
    if callable(leaf):  # may close over traced values; identity keys would pile up
        return False
    try:
        hash(leaf)
    except TypeError:
        return False
    return True


def cached_call(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``call(site, init_params, *args, **kwargs)`` with a per-function jit cache.

    ``site`` (where warnings point) is part of the cache key.
    """

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def jitted(static, site, dyn):
        treedef, template, dyn_idx = static
        leaves = list(template)
        for i, v in zip(dyn_idx, dyn, strict=True):
            leaves[i] = v
        init_params, args, kwargs = jax.tree.unflatten(treedef, leaves)
        return call(site, init_params, *args, **kwargs)

    def run(site: Any, init_params: Any, *args: Any, **kwargs: Any) -> Any:
        if _under_jit():
            return call(site, init_params, *args, **kwargs)
        leaves, treedef = jax.tree.flatten((init_params, args, kwargs))
        dyn_idx = tuple(i for i, leaf in enumerate(leaves) if _dynamic(leaf))
        dyn_set = set(dyn_idx)
        template = tuple(None if i in dyn_set else leaf for i, leaf in enumerate(leaves))
        if not all(_static_ok(leaf) for leaf in template):
            return call(site, init_params, *args, **kwargs)
        return jitted((treedef, template, dyn_idx), site, [leaves[i] for i in dyn_idx])

    return run
