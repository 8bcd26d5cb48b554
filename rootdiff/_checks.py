"""Convergence checks that work under ``jit``, ``vmap`` and autodiff.

A check compares a scalar residual against a threshold and, depending on ``mode``:

* ``"off"`` — does nothing;
* ``"warn"`` — emits a :class:`ConvergenceWarning` from the host;
* ``"raise"`` — raises :class:`ConvergenceError` from the host (under ``jit`` it
  surfaces as an ``XlaRuntimeError`` carrying the same message);
* ``"nan"`` — replaces the guarded value by NaN (pure, no host round trip).

Why ``jax.pure_callback`` rather than ``jax.debug.callback``: the latter is unrolled
once per batch element under ``vmap`` (1024 host calls for a 1024-row batch); a
pure callback with ``vmap_method="broadcast_all"`` is called once per batch. To
keep the pure callback from being dead-code eliminated its (zero) output is added
to the guarded value.
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


def _host_report(ok, residual, threshold, iterations, *, mode, what, dtype):
    ok = np.asarray(ok)
    if not ok.all():
        bad = ~ok
        res, thr, its = (
            np.broadcast_to(v, ok.shape)[bad] for v in (residual, threshold, iterations)
        )
        msg = (
            f"rootdiff: {what} did not converge in {int(bad.sum())} of {bad.size} "
            f"problem(s): residual {np.max(res):.3e} > threshold {np.min(thr):.3e} "
            f"(iterations: {np.max(its)}). The result may be wrong; tighten or "
            f"change the solver, or pass check='off' to silence."
        )
        if mode == "raise":
            raise ConvergenceError(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return np.zeros(np.shape(ok), dtype)


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
    ``vmap`` the host sees the whole batch at once). NaN residuals count as failures.
    ``ok`` overrides the comparison when the caller already decided.
    """
    if mode == "off":
        return value
    residual, threshold, iterations = jax.lax.stop_gradient(
        (jnp.asarray(residual), jnp.asarray(threshold), jnp.asarray(iterations))
    )
    ok = residual <= threshold if ok is None else ok  # False for NaN
    if mode == "nan":
        return jax.tree.map(lambda v: jnp.where(ok, v, jnp.nan).astype(v.dtype), value)
    leaves = jax.tree.leaves(value)
    dtype = leaves[0].dtype if leaves else jnp.float32
    zero = jax.pure_callback(
        functools.partial(_host_report, mode=mode, what=what, dtype=dtype),
        jax.ShapeDtypeStruct((), dtype),
        ok,
        residual,
        threshold,
        iterations,
        vmap_method="broadcast_all",
    )
    return jax.tree.map(lambda v: v + zero.astype(v.dtype), value)
