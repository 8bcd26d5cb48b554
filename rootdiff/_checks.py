"""Convergence checks that work under ``jit``, ``vmap`` and autodiff.

A check compares a scalar residual against a threshold and, depending on ``mode``:

* ``"off"`` — does nothing;
* ``"warn"`` — emits a :class:`ConvergenceWarning` from the host;
* ``"raise"`` — raises :class:`ConvergenceError` from the host (under ``jit`` it
  surfaces as an ``XlaRuntimeError`` carrying the same message);
* ``"nan"`` — replaces the guarded value by NaN (pure, no host round trip).

Why ``jax.pure_callback`` rather than ``jax.debug.callback``: the latter is unrolled
once per batch element under ``vmap`` (1024 host calls for a 1024-row batch). Ours
runs only on failure (``lax.cond``), is reduced to one call per batch by a
``custom_vmap`` rule, and its (zero) output is added to the guarded value so that
it is not dead-code eliminated.
"""

from __future__ import annotations

import functools
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


def _host_report(n_bad, n_total, residual, threshold, iterations, *, mode, what):
    its = f" after {int(iterations)} iterations" if int(iterations) >= 0 else ""
    msg = (
        f"rootdiff: {what} did not converge in {int(n_bad)} of {int(n_total)} "
        f"problem(s): residual {float(residual):.3e} > threshold {float(threshold):.3e}"
        f"{its}. The result may be wrong; tighten or change the solver, or pass "
        f"check='off' to silence."
    )
    if mode == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return np.zeros((), np.float32)


@functools.cache
def _reporter(mode: str, what: str):
    """A scalar ``report(n_bad, n_total, residual, threshold, iterations) -> 0.0``.

    The host is called only when ``n_bad > 0`` (``lax.cond``), so a converged solve
    costs no host round trip. Under ``vmap`` a plain ``cond`` would turn into a
    ``select`` that runs the callback every time; the ``custom_vmap`` rule instead
    reduces the batch to one scalar report (worst residual, count of failures).
    """
    host = functools.partial(_host_report, mode=mode, what=what)

    @jax.custom_batching.custom_vmap
    def report(n_bad, n_total, residual, threshold, iterations):
        def call():
            shape = jax.ShapeDtypeStruct((), jnp.float32)
            return jax.pure_callback(host, shape, n_bad, n_total, residual, threshold, iterations)

        return jax.lax.cond(n_bad > 0, call, lambda: jnp.zeros((), jnp.float32))

    @report.def_vmap
    def report_vmap(axis_size, in_batched, *args):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
            for a, batched in zip(args, in_batched, strict=True)
        ]
        n_bad, n_total, residual, threshold, iterations = args
        worst = jnp.max(jnp.where(n_bad > 0, residual, -jnp.inf), axis=0)
        out = report(
            jnp.sum(n_bad, axis=0),
            jnp.sum(n_total, axis=0),
            worst,
            jnp.min(threshold, axis=0),
            jnp.max(iterations, axis=0),
        )
        return jnp.broadcast_to(out, (axis_size, *jnp.shape(out))), True

    return report


def guard(
    value: Any,
    residual: jax.Array,
    threshold: jax.Array,
    iterations: jax.Array | int,
    *,
    mode: str,
    what: str,
    ok: jax.Array | None = None,
) -> Any:
    """Return ``value``, reporting (per ``mode``) when ``residual > threshold``.

    ``residual``, ``threshold`` and ``iterations`` are scalars per problem (under
    ``vmap`` the host sees one report for the whole batch). NaN residuals count as
    failures. ``ok`` overrides the comparison when the caller already decided.
    """
    if mode == "off":
        return value
    residual, threshold, iterations = jax.lax.stop_gradient(
        (jnp.asarray(residual), jnp.asarray(threshold), jnp.asarray(iterations))
    )
    ok = residual <= threshold if ok is None else jax.lax.stop_gradient(ok)  # False for NaN
    if mode == "nan":
        return jax.tree.map(lambda v: jnp.where(ok, v, jnp.nan).astype(v.dtype), value)
    dtype = residual.dtype if jnp.issubdtype(residual.dtype, jnp.floating) else jnp.float32
    zero = _reporter(mode, what)(
        jnp.where(ok, 0, 1).astype(jnp.int32),
        jnp.ones((), jnp.int32),
        residual.astype(dtype),
        threshold.astype(dtype),
        iterations.astype(jnp.int32),
    )
    # Tie the report to the value so that it is not dead-code eliminated.
    return jax.tree.map(lambda v: v + zero.astype(v.dtype), value)
