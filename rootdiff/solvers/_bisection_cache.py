"""The eager compile cache of :func:`rootdiff.bisection`.

``f`` (and ``solve``) is taken apart into its code and the arrays it closes over,
which become inputs of a cached ``jax.jit``: a new closure over new arrays reuses
the compiled loop and never sees stale constants.
"""

from __future__ import annotations

import functools
import types
from collections import OrderedDict
from typing import Any

import jax
import numpy as np


class _Id:
    """Hash and compare by identity (and keep the object alive while cached)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Id) and other.obj is self.obj


_ARRAY = (jax.Array, np.ndarray, np.generic)
_MAX_DEPTH = 4
_VALUE = (int, float, complex, bool, str, bytes, type(None), type, np.dtype, types.CodeType)
# Callables that cannot change behind a reference: keyed by identity.
_FIXED = (
    types.BuiltinFunctionType, np.ufunc, type(jax.jit(lambda x: x)),
    jax.custom_jvp, jax.custom_vjp, types.ModuleType,
)  # fmt: skip


class _Uncacheable(Exception):
    """An object whose behaviour may change behind its identity (a mutable instance)."""


def _hoist(obj: Any, leaves: list, depth: int = 0, arrays: bool = True):
    """``(key, rebuild)``: ``obj`` with its arrays taken out into ``leaves``.

    Functions (closure cells, defaults, the array globals they read),
    ``functools.partial`` objects, bound methods and containers are taken apart;
    their arrays become ``leaves`` (inputs of the cached ``jit``) and the rest goes
    into a hashable ``key``: immutable values by value, library callables by
    identity. Anything else (a mutable instance whose attributes could change)
    raises :class:`_Uncacheable`. ``rebuild(iterator over new leaves)`` recreates
    ``obj`` with the new leaves.
    """
    if isinstance(obj, _ARRAY):
        if not arrays:
            return _Id(obj), lambda it: obj
        leaves.append(obj)
        return "array", lambda it: next(it)
    if isinstance(obj, _VALUE):
        return ("value", type(obj), obj), lambda it: obj
    if isinstance(obj, _FIXED):
        return _Id(obj), lambda it: obj
    if depth >= _MAX_DEPTH:
        raise _Uncacheable
    if isinstance(obj, types.FunctionType):
        return _hoist_function(obj, leaves, depth, arrays)
    if isinstance(obj, functools.partial):
        (kf, rf), (ka, ra), (kk, rk) = (
            _hoist(v, leaves, depth + 1, arrays) for v in (obj.func, obj.args, obj.keywords)
        )
        return ("partial", kf, ka, kk), lambda it: functools.partial(rf(it), *ra(it), **rk(it))
    if isinstance(obj, types.MethodType):
        kf, rf = _hoist(obj.__func__, leaves, depth + 1, arrays)
        ks, rs = _hoist(obj.__self__, leaves, depth + 1, arrays)
        return ("method", kf, ks), lambda it: types.MethodType(rf(it), rs(it))
    if type(obj) in (tuple, list, dict):
        items, treedef = jax.tree.flatten(obj)
        subs = [_hoist(v, leaves, depth + 1, arrays) for v in items]
        key = (type(obj), treedef, tuple(k for k, _ in subs))
        return key, lambda it: jax.tree.unflatten(treedef, [r(it) for _, r in subs])
    raise _Uncacheable


def _hoist_function(fn, leaves, depth, arrays):
    subs = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            raise _Uncacheable from None
        k, r = _hoist(value, leaves, depth + 1, arrays)
        subs.append((k, lambda it, r=r: types.CellType(r(it))))
    kd, rd = _hoist(fn.__defaults__, leaves, depth + 1, arrays)
    kk, rk = _hoist(fn.__kwdefaults__, leaves, depth + 1, arrays)
    g = fn.__globals__
    names = [n for n in fn.__code__.co_names if n in g]
    # Array globals become inputs too (a notebook's data arrays); other globals key.
    gsubs = [_hoist(g[n], leaves, depth + 1, arrays) for n in names]
    key = ("function", fn.__code__, _Id(g), tuple(k for k, _ in subs), kd, kk,
           tuple(zip(names, (k for k, _ in gsubs))))  # fmt: skip

    def rebuild(it):
        closure = tuple(r(it) for _, r in subs) or None
        defaults, kwdefaults = rd(it), rk(it)
        new_globals = {n: r(it) for n, (_, r) in zip(names, gsubs)}
        if any(v is not g[n] for n, v in new_globals.items()):
            new_globals = {**g, **new_globals}  # a copy in which the array globals are inputs
        else:
            new_globals = g
        new = types.FunctionType(fn.__code__, new_globals, fn.__name__, defaults, closure)
        new.__kwdefaults__ = kwdefaults
        return new

    return key, rebuild


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 128


def _compiled(key, make):
    fn = _CACHE.get(key)
    if fn is None:
        fn = _CACHE[key] = make()
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return fn


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))
