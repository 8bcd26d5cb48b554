"""Property-based tests: over random root problems, every derivative is right or flagged.

Problems ``F(x, θ) = A x + c·tanh(x) − θ`` (``n = 3``) with ``A = Q diag(s) Qᵀ + K``
(``K`` skew, so ``F`` is strongly monotone with modulus ``s_min``) — well posed
when ``s_min ~ 1``, ill conditioned down to ``s_min = 1e-7`` — and a root ``x*`` of
size 1 (``θ`` chosen so), solved by Newton and
then, to mimic a solver stopped early, moved by ``err · (1 + ‖x‖)`` (``err`` 0 or up
to 10 %) along a direction ``d``: random, or the weakest direction of ``A`` — where
an early stop leaves a tiny residual but a large error, which a residual test
cannot see. The reference ``∂x/∂θ = (∂ₓF)⁻¹`` is computed in float64 NumPy at a
NumPy-refined root. Property, for ``custom_root``, ``custom_fixed_point`` and
``argmin`` (``A`` symmetric) in float32 and float64: the Jacobian is within
``RIGHT[dtype]`` (relative) **or** a ``ConvergenceWarning`` was emitted.

CI runs a few derandomised examples; ``ROOTDIFF_HYPOTHESIS_EXAMPLES=500`` runs more.
All decorated solvers are jitted once per dtype and shared across examples.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rootdiff

N = 3
EXAMPLES = int(os.environ.get("ROOTDIFF_HYPOTHESIS_EXAMPLES", "12"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# "Right": relative error of the Jacobian. The checks' stated tolerances are a
# relative Newton step of 1e-5 (float64) and 1e-3 (float32); derivatives inherit
# it up to the amplification measured in docs/faq.md, hence the margin.
RIGHT = {"float64": 1e-3, "float32": 5e-2}


def F(x, theta, A, c, err, d):
    del err, d  # the solver's inaccuracy, not part of the problem
    return A @ x + c * jnp.tanh(x) - theta


def _newton(x, theta, A, c):
    def step(_, x):
        J = A + c * jnp.diag(1 - jnp.tanh(x) ** 2)
        return x - jnp.linalg.solve(J, F(x, theta, A, c, None, None))

    return jax.lax.fori_loop(0, 60, step, x)


def _inexact(x0, theta, A, c, err, d):
    x = _newton(x0, theta, A, c)
    return x + err * (1 + jnp.max(jnp.abs(x))) * d


def _objective(x, theta, A, c, err, d):
    del err, d
    return 0.5 * x @ A @ x + c * jnp.sum(jnp.log(jnp.cosh(x))) - theta @ x


SOLVERS = {
    "custom_root": rootdiff.custom_root(F)(_inexact),
    "custom_fixed_point": rootdiff.custom_fixed_point(lambda x, *a: x - 0.5 * F(x, *a))(_inexact),
    "argmin": rootdiff.argmin(_objective)(_inexact),
}
JACOBIANS = {
    name: jax.jit(jax.jacrev(lambda th, A, c, e, d, s=s: s(jnp.zeros_like(th), th, A, c, e, d)))
    for name, s in SOLVERS.items()
}


@st.composite
def problems(draw, symmetric=False):
    seed = draw(st.integers(0, 2**31 - 1))
    log_smin = draw(st.floats(-7.0, 0.0))
    c = 10 ** draw(st.floats(-7.0, 0.0))  # nonlinearity, from negligible to O(1)
    log_err = draw(st.one_of(st.just(None), st.floats(-10.0, -1.0)))
    weakest = draw(st.booleans())
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    s = np.array([1.0, 10 ** (log_smin / 2), 10**log_smin])
    A = Q @ np.diag(s) @ Q.T
    if not symmetric:
        K = rng.normal(size=(N, N))
        A = A + 0.3 * s[-1] * (K - K.T)  # keeps the conditioning
    x_star = rng.normal(size=N)  # O(1) root even when A is nearly singular
    theta = A @ x_star + c * np.tanh(x_star)
    err = 0.0 if log_err is None else 10**log_err
    d = np.linalg.svd(A)[2][-1] if weakest else rng.normal(size=N) / np.sqrt(N)
    return A, theta, c, err, d


def _reference(A, theta, c):
    """Float64 NumPy root and its Jacobian ``(∂ₓF)⁻¹``."""
    x = np.zeros(N)
    for _ in range(200):
        J = A + c * np.diag(1 - np.tanh(x) ** 2)
        x = x - np.linalg.solve(J, A @ x + c * np.tanh(x) - theta)
    return np.linalg.inv(A + c * np.diag(1 - np.tanh(x) ** 2))


def _right_or_flagged(name, problem, dtype):
    A, theta, c, err, d = problem
    args = [jnp.asarray(v, dtype) for v in (theta, A, c, err, d)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        J = np.asarray(jax.block_until_ready(JACOBIANS[name](*args)), np.float64)
    flagged = any(issubclass(w.category, rootdiff.ConvergenceWarning) for w in rec)
    J_ref = _reference(A, theta, c)
    rel = np.max(np.abs(J - J_ref)) / np.max(np.abs(J_ref)) if np.all(np.isfinite(J)) else np.inf
    assert flagged or rel <= RIGHT[jnp.dtype(dtype).name], (
        f"{name} {jnp.dtype(dtype).name}: Jacobian off by {rel:.2e} and not flagged "
        f"(s_min={np.linalg.svd(A, compute_uv=False)[-1]:.1e}, c={c:.2f}, err={err:.1e})"
    )
    return flagged, rel


@pytest.mark.parametrize("name", ["custom_root", "custom_fixed_point"])
@SETTINGS
@given(problem=problems())
def test_root_right_or_flagged_float64(name, problem):
    _right_or_flagged(name, problem, jnp.float64)


@SETTINGS
@given(problem=problems(symmetric=True))
def test_argmin_right_or_flagged_float64(problem):
    _right_or_flagged("argmin", problem, jnp.float64)


@SETTINGS
@given(problem=problems())
def test_root_right_or_flagged_float32(float32, problem):
    _right_or_flagged("custom_root", problem, jnp.float32)


@SETTINGS
@given(problem=problems(symmetric=True))
def test_argmin_right_or_flagged_float32(float32, problem):
    _right_or_flagged("argmin", problem, jnp.float32)


def test_well_posed_exact_solves_are_right_and_silent():
    """The other half of the contract: no false alarm on a well-posed, solved problem."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    A = Q @ np.diag([2.0, 1.0, 0.5]) @ Q.T
    theta = rng.normal(size=N)
    for dtype in (jnp.float64,):
        for name in SOLVERS:
            flagged, rel = _right_or_flagged(name, (A, theta, 0.5, 0.0, np.zeros(N)), dtype)
            assert not flagged and rel < 1e-10, (name, rel)
