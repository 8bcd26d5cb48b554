"""The bisection loop of :func:`rootdiff.bisection`: bracket widening and halving.

The bracket is halved in the ordering of floating-point numbers (the midpoint of
the two ends' bit patterns read as ordered integers): every step halves the number
of floats left in the bracket, so at most ``8 · itemsize + 1`` steps reach two
adjacent floats, whatever the bracket's width. Nothing here is differentiated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------- float ordering


def _int_type(dtype: Any) -> Any:
    return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def _to_key(x: jax.Array) -> jax.Array:
    """Monotone map float → signed integer (``-0.0`` and ``0.0`` both map to 0)."""
    itype = _int_type(x.dtype)
    i = jax.lax.bitcast_convert_type(x, itype)
    magnitude = i & jnp.iinfo(itype).max
    return jnp.where(i < 0, -magnitude, i)


def _from_key(k: jax.Array, dtype: Any) -> jax.Array:
    itype = k.dtype
    i = jnp.where(k < 0, (-k) | jnp.asarray(jnp.iinfo(itype).min, itype), k)
    return jax.lax.bitcast_convert_type(i, dtype)


def _key_mid(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """The float whose key is ``floor((key(lo) + key(hi)) / 2)`` (no integer overflow)."""
    a, b = _to_key(lo), _to_key(hi)
    return _from_key((a >> 1) + (b >> 1) + (a & b & 1), lo.dtype)


# --------------------------------------------------------------------------- the solver


def _sign_change(f_lo: jax.Array, f_hi: jax.Array) -> jax.Array:
    return jnp.sign(f_lo) * jnp.sign(f_hi) <= 0  # False when either is NaN


def _expand(F, lo, hi, f_lo, f_hi, max_expand, factor=2.0):
    """Widen ``[lo, hi]`` geometrically until ``f`` changes sign (or ``max_expand``).

    The end with the smaller ``|f|`` is the one nearer a root of a monotone ``f``:
    the bracket moves past it, ``[hi, hi + w']`` or ``[lo − w', lo]``, its width
    ``w'`` doubling each time; the old end becomes the new inner end (``f`` has no
    sign change on the old bracket). On a tie (e.g. ``lower == upper``) both ends
    move out. Returns the bracket, ``f`` at its ends and the
    number of widenings.
    """
    scale = jnp.maximum(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), 1.0)

    def cond(s):
        lo, hi, f_lo, f_hi, j = s
        finite = jnp.isfinite(f_lo) & jnp.isfinite(f_hi) & jnp.isfinite(lo) & jnp.isfinite(hi)
        return ~_sign_change(f_lo, f_hi) & finite & (j < max_expand)

    def body(s):
        lo, hi, f_lo, f_hi, j = s
        width = hi - lo
        width = factor * jnp.where(width > 0, width, scale)
        x_up, x_dn = hi + width, lo - width
        f_up, f_dn = F(x_up), F(x_dn)
        up, dn = jnp.abs(f_hi) < jnp.abs(f_lo), jnp.abs(f_lo) < jnp.abs(f_hi)  # both: a tie
        new_lo = jnp.where(up, hi, x_dn)
        new_hi = jnp.where(dn, lo, x_up)
        f_lo, f_hi = jnp.where(up, f_hi, f_dn), jnp.where(dn, f_lo, f_up)
        return new_lo, new_hi, f_lo, f_hi, j + 1

    # Counters typed like the data: a literal has no mesh in its type, which breaks
    # vmap over an Explicit mesh axis.
    j0 = jnp.zeros_like(lo, dtype=jnp.int32)
    return jax.lax.while_loop(cond, body, (lo, hi, f_lo, f_hi, j0))


def _bracket(F, lower, upper, max_expand):
    lo0, hi0 = jnp.minimum(lower, upper), jnp.maximum(lower, upper)
    f_lo, f_hi = F(lo0), F(hi0)
    if max_expand:
        return _expand(F, lo0, hi0, f_lo, f_hi, max_expand)
    return lo0, hi0, f_lo, f_hi, jnp.zeros_like(lo0, dtype=jnp.int32)


def _bisect(F, lo, hi, f_lo, f_hi, *, tol, ftol, maxiter):
    """The loop: returns the root (NaN without a sign change) and the final state."""
    s_lo, s_hi = jnp.sign(f_lo), jnp.sign(f_hi)
    bracketed = s_lo * s_hi <= 0
    # A root exactly at an end collapses the bracket onto it.
    at_lo, at_hi = s_lo == 0, (s_hi == 0) & (s_lo != 0)
    lo, hi = jnp.where(at_hi, hi, lo), jnp.where(at_lo, lo, hi)
    f_lo, f_hi = jnp.where(at_hi, f_hi, f_lo), jnp.where(at_lo, f_lo, f_hi)
    closed0 = (hi - lo <= tol) | (_key_mid(lo, hi) == lo) | (lo == hi)
    done = ~bracketed | closed0

    def cond(state):
        return ~state[-1] & (state[-2] < maxiter)

    def body(state):
        lo, hi, f_lo, f_hi, i, _ = state
        mid = _key_mid(lo, hi)
        f_mid = F(mid)
        right = jnp.sign(f_mid) == s_lo  # the sign change is in [mid, hi]
        zero = jnp.abs(f_mid) <= ftol
        new_lo = jnp.where(zero | right, mid, lo)
        new_hi = jnp.where(zero | ~right, mid, hi)
        f_lo = jnp.where(zero | right, f_mid, f_lo)
        f_hi = jnp.where(zero | ~right, f_mid, f_hi)
        adjacent = (_to_key(new_hi) - _to_key(new_lo)) <= 1  # no overflow after a halving
        done = zero | adjacent | (new_hi - new_lo <= tol)
        return new_lo, new_hi, f_lo, f_hi, i + 1, done

    init = (lo, hi, f_lo, f_hi, jnp.zeros_like(lo, dtype=jnp.int32), done)
    lo, hi, f_lo, f_hi, its, done = jax.lax.while_loop(cond, body, init)
    # Final false-position step inside the last bracket: exact for f linear there,
    # error O(width²) for smooth f; never leaves the bracket.
    mid = _key_mid(lo, hi)
    slope_ok = (f_hi != f_lo) & jnp.isfinite(f_lo) & jnp.isfinite(f_hi)
    secant = lo - f_lo * (hi - lo) / jnp.where(slope_ok, f_hi - f_lo, 1.0)
    root = jnp.where(slope_ok, jnp.clip(secant, lo, hi), mid)
    root = jnp.where(bracketed, root, jnp.nan)
    return root, (its, done & bracketed, bracketed, lo, hi)
