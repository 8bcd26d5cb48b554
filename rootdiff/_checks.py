"""Convergence checks that work under ``jit``, ``vmap`` and autodiff.

A check compares scalar measures against thresholds and, depending on ``mode``:

* ``"off"`` — does nothing;
* ``"warn"`` — emits a :class:`ConvergenceWarning` from the host, attributed to the
  user's line that called the solver (the first frame outside rootdiff and JAX);
* ``"raise"`` — raises :class:`ConvergenceError` from the host (under ``jit`` it
  surfaces as an ``XlaRuntimeError`` carrying the same message; on a mesh set by
  ``jax.sharding.set_mesh`` and under ``shard_map`` every device raises);
* ``"nan"`` — replaces the guarded value by NaN, and its derivative too (pure, no
  host round trip; see :func:`poison`).

Why ``jax.pure_callback`` rather than ``jax.debug.callback``: the latter is unrolled
once per batch element under ``vmap`` (1024 host calls for a 1024-row batch). Ours
runs only on failure (``lax.cond``), is reduced to one call per batch by a
``custom_vmap`` rule, and its (zero) output is added to the guarded value so that
it is not dead-code eliminated.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

CheckMode = Literal["warn", "raise", "nan", "off"]
CHECK_MODES = ("warn", "raise", "nan", "off")


class ConvergenceWarning(RuntimeWarning):
    """A forward or backward solve did not meet its tolerance."""


class ConvergenceError(RuntimeError):
    """A forward or backward solve did not meet its tolerance (``check="raise"``)."""


def validate_mode(mode: str, argname: str = "check") -> str:
    if mode not in CHECK_MODES:
        raise ValueError(f"{argname}={mode!r} is not valid; expected one of {CHECK_MODES}.")
    return mode


# --------------------------------------------------------------------------- call site

_ROOTDIFF_DIR = os.path.dirname(os.path.abspath(__file__))
_SKIP_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (jax, np)
    if getattr(m, "__file__", None)
) + (_ROOTDIFF_DIR + os.sep,)
_SKIP_MODULES = ("jaxlib", "functools", "contextlib")


def user_site() -> tuple[str, int, str] | None:
    """``(filename, lineno, module)`` of the first frame outside rootdiff, JAX and NumPy.

    Called when a solver is traced, so that a report emitted later from the host
    points at the user's line that called the solver (under ``jit``: the line in
    the jitted function), not at JAX's callback machinery.
    """
    try:
        frame = sys._getframe(1)
    except ValueError:  # pragma: no cover
        return None
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        module = frame.f_globals.get("__name__", "")
        if not fname.startswith(_SKIP_DIRS) and module.split(".")[0] not in _SKIP_MODULES:
            if not fname.startswith("<frozen"):
                return fname, frame.f_lineno, module
        frame = frame.f_back
    return None


# --------------------------------------------------------------------------- reports


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) and np.isnan(x) else f"{x:.3e}"


def _host_report(n_bad, n_total, values, thresholds, iterations, *, mode, what, labels, site):
    values, thresholds = np.atleast_1d(values), np.atleast_1d(thresholds)
    parts = []
    for label, v, t in zip(labels, values, thresholds, strict=True):
        op = "≤" if float(v) <= float(t) else ">"
        parts.append(f"{label} {_fmt(float(v))} {op} tolerance {_fmt(float(t))}")
    its = f" after {int(iterations)} iterations" if int(iterations) >= 0 else ""
    msg = (
        f"rootdiff: {what} did not converge in {int(n_bad)} of {int(n_total)} "
        f"problem(s): {'; '.join(parts)}{its}. The result may be wrong; tighten or "
        f"change the solver, or pass check='off' to silence."
    )
    if mode == "raise":
        raise ConvergenceError(msg)
    if site is None:
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    else:
        filename, lineno, module = site
        warnings.warn_explicit(msg, ConvergenceWarning, filename, lineno, module=module)
    return np.zeros((), np.float32)


@functools.cache
def _reporter(mode: str, what: str, labels: tuple[str, ...], site: Any):
    """``report(ok, n_bad, n_total, values[k], thresholds[k], iterations) -> 0.0``.

    The host is called only when ``ok`` is False (``lax.cond``), so a converged
    solve costs no host round trip; for one problem ``n_bad = n_total = 1`` are
    constants, so the conditional's only computed operand besides the report's
    values is ``ok`` (every value computed just to feed it would be one more
    kernel for XLA to compile, about 10 ms each on a CPU). Under ``vmap`` a plain
    ``cond`` would turn into a ``select`` that runs the callback every time; the
    ``custom_vmap`` rule instead reduces the batch to one report (worst value per
    measure, count of failures).
    """
    host = functools.partial(_host_report, mode=mode, what=what, labels=labels, site=site)

    def run(ok, n_bad, n_total, values, thresholds, iterations):
        def call():
            shape = jax.ShapeDtypeStruct((), jnp.float32)
            return jax.pure_callback(host, shape, n_bad, n_total, values, thresholds, iterations)

        return jax.lax.cond(ok, lambda: jnp.zeros((), jnp.float32), call)

    @jax.custom_batching.custom_vmap
    def report(ok, n_bad, n_total, values, thresholds, iterations):
        mesh = _sharded_mesh() if mode == "raise" else None
        if mesh is None:
            return run(ok, n_bad, n_total, values, thresholds, iterations)
        # On a mesh, JAX runs a callback on device 0 only; if it raises there, the
        # other devices wait for device 0 in their next collective until XLA's
        # rendezvous timeout aborts the process. The report's inputs are the same on
        # every device (reduced over the batch), so run it on every device: all of
        # them raise at the same point, and the error reaches the caller.
        P = jax.sharding.PartitionSpec
        per_device = jax.shard_map(run, mesh=mesh, in_specs=P(), out_specs=P())
        return per_device(ok, n_bad, n_total, values, thresholds, iterations)

    @report.def_vmap
    def report_vmap(axis_size, in_batched, *args):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
            for a, batched in zip(args, in_batched, strict=True)
        ]
        ok, n_bad, n_total, values, thresholds, iterations = args
        n_bad = jnp.sum(jnp.where(ok, 0, n_bad), axis=0, dtype=jnp.int32)
        worst = jnp.max(jnp.where(ok[:, None], -jnp.inf, values), axis=0)  # NaN propagates
        out = report(
            n_bad == 0,
            n_bad,
            jnp.sum(n_total, axis=0, dtype=jnp.int32),
            worst,
            jnp.min(thresholds, axis=0),
            jnp.max(iterations, axis=0),
        )
        return jnp.broadcast_to(out, (axis_size, *jnp.shape(out))), True

    return report


def _sharded_mesh():
    """The mesh of an enclosing ``jax.sharding.set_mesh`` with several devices and
    no manual axes (under ``shard_map`` callbacks already run on every device)."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    if mesh is None or getattr(mesh, "empty", True) or mesh.size <= 1:
        return None
    if getattr(mesh, "manual_axes", ()):
        return None
    return mesh


# --------------------------------------------------------------------------- nan mode


@jax.custom_jvp
def _poison_leaf(v: jax.Array, ok: jax.Array) -> jax.Array:
    return jnp.where(ok, v, jnp.nan).astype(v.dtype)


@_poison_leaf.defjvp
def _poison_leaf_jvp(primals, tangents):
    v, ok = primals
    v_dot, _ = tangents
    scale = jnp.where(ok, 1, jnp.nan).astype(v.dtype)
    # Multiplying by a primal-only factor keeps the tangent linear, so reverse mode
    # (by transposition) poisons the cotangent too.
    return _poison_leaf(v, ok), v_dot * scale


def poison(value: Any, ok: jax.Array) -> Any:
    """``value`` where ``ok``, else NaN — and the same for its derivatives.

    ``jnp.where(ok, v, nan)`` alone gives a NaN value but a zero (finite) derivative
    where ``ok`` is False; here the tangent is multiplied by ``1`` or ``NaN``, so
    ``jvp``, ``grad`` and higher derivatives are NaN wherever the value is.
    ``ok`` broadcasts against every leaf (a scalar per problem, or elementwise).
    """
    ok = jax.lax.stop_gradient(jnp.asarray(ok, bool))

    def leaf(v):
        v = jnp.asarray(v)
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            return v
        return _poison_leaf(v, jnp.broadcast_to(ok, jnp.broadcast_shapes(ok.shape, v.shape)))

    return jax.tree.map(leaf, value)


def guard(
    value: Any,
    residual: jax.Array,
    threshold: jax.Array,
    iterations: jax.Array | int,
    *,
    mode: str,
    what: str,
    ok: jax.Array | None = None,
    label: str | tuple[str, ...] = "residual",
    site: Any = None,
) -> Any:
    """Return ``value``, reporting (per ``mode``) when ``residual > threshold``.

    ``residual`` and ``threshold`` are scalars per problem, or vectors of ``k``
    measures named by the ``k`` strings in ``label`` (each is printed with its
    tolerance); ``iterations`` is a scalar (negative: not printed). Under ``vmap``
    the host sees one report for the whole batch. NaN residuals count as failures.
    ``ok`` overrides the comparison when the caller already decided. ``site``:
    ``(filename, lineno, module)`` the warning is attributed to (see
    :func:`user_site`); by default the caller of the solver is looked up now.
    """
    if mode == "off":
        return value
    residual, threshold, iterations = jax.lax.stop_gradient(
        (jnp.asarray(residual), jnp.asarray(threshold), jnp.asarray(iterations))
    )
    if ok is None:
        ok = jnp.all(residual <= threshold)  # False for NaN
    ok = jax.lax.stop_gradient(jnp.asarray(ok, bool))
    if mode == "nan":
        return poison(value, ok)
    labels = (label,) if isinstance(label, str) else tuple(label)
    dtype = residual.dtype if jnp.issubdtype(residual.dtype, jnp.floating) else jnp.float32
    residual = jnp.broadcast_to(residual.astype(dtype), (len(labels),))
    threshold = jnp.broadcast_to(threshold.astype(dtype), (len(labels),))
    if not jnp.issubdtype(iterations.dtype, jnp.integer):
        iterations = iterations.astype(jnp.int32)
    one = np.ones((), np.int32)  # a constant: one problem, reported only if not ok
    zero = _reporter(mode, what, labels, site if site is not None else user_site())(
        ok, one, one, residual, threshold, iterations
    )
    # Tie the report to the value so that it is not dead-code eliminated.
    return jax.tree.map(lambda v: v + zero.astype(v.dtype), value)
