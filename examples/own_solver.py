r"""Your own solver, made differentiable: Newton's method on a nonlinear diode circuit.

Run it with::

    python examples/own_solver.py

The circuit: a source ``Vs`` feeds node 1 through ``R1``; node 1 connects to node 2
through ``R2``; each node has a diode to ground, and node 2 a load ``R3``::

    Vs ──R1──●──R2──●──┐
             │ v1   │ v2│
             ▼ D    ▼ D R3
             ⏚      ⏚   ⏚

Kirchhoff's current law at the two nodes, with the Shockley diode current
``I_s (exp(v / V_T) − 1)`` and ``V_T = k T / q``:

.. math::
    F_1(v, θ) = \frac{v_1 - V_s}{R_1} + I_s(e^{v_1/V_T} - 1) + \frac{v_1 - v_2}{R_2} = 0, \\
    F_2(v, θ) = \frac{v_2 - v_1}{R_2} + I_s(e^{v_2/V_T} - 1) + \frac{v_2}{R_3} = 0 .

``newton`` below is the kind of solver you would write yourself: damped Newton steps
in a ``lax.while_loop``. One decorator, ``rootdiff.custom_root(kcl)``, makes it
differentiable by the implicit function theorem — JAX never looks inside the loop.
The script then takes ``jax.grad``, ``jax.jacfwd`` and ``jax.hessian`` through it,
``vmap``-s it over a sweep of source voltages, differentiates through a value the
optimality function closes over (the temperature), and checks every derivative
against central finite differences, printing the relative errors. It exits with a
non-zero status if a check fails, and saves ``own_solver.png`` (the transfer curve
and its derivative) into ``$ROOTDIFF_OUT`` (default: the current directory).

``ROOTDIFF_FAST=1`` uses a shorter voltage sweep (used by the test suite).
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)  # float64: finite differences need it

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rootdiff  # noqa: E402

FAST = os.environ.get("ROOTDIFF_FAST", "0") not in ("", "0")
OUT = os.environ.get("ROOTDIFF_OUT", ".")
SWEEP = 16 if FAST else 200
BOLTZMANN_OVER_Q = 8.617333262e-5  # k/q in volts per kelvin
TOLERANCE = 1e-6  # relative error allowed against finite differences

# Circuit parameters θ, a dict (any pytree works): volts, ohms, amperes.
THETA = {
    "Vs": jnp.array(2.0),
    "R1": jnp.array(100.0),
    "R2": jnp.array(220.0),
    "R3": jnp.array(470.0),
    "Is": jnp.array(1e-12),
}


def kcl(v: jax.Array, theta: dict, temperature: float | jax.Array = 300.0) -> jax.Array:
    """The optimality function ``F(v, θ)``: net current leaving each node (amperes)."""
    vt = BOLTZMANN_OVER_Q * temperature
    diode = theta["Is"] * jnp.expm1(v / vt)
    v1, v2 = v
    return jnp.stack(
        [
            (v1 - theta["Vs"]) / theta["R1"] + diode[0] + (v1 - v2) / theta["R2"],
            (v2 - v1) / theta["R2"] + diode[1] + v2 / theta["R3"],
        ]
    )


def newton(v0: jax.Array, theta: dict, temperature=300.0) -> jax.Array:
    """Damped Newton: each step is clipped to 0.1 V (diodes overflow otherwise)."""
    F = lambda v: kcl(v, theta, temperature)

    def step(state):
        v, _, k = state
        dv = jnp.linalg.solve(jax.jacfwd(F)(v), -F(v))
        v = v + jnp.clip(dv, -0.1, 0.1)
        return v, jnp.max(jnp.abs(F(v))), k + 1

    def not_converged(state):
        _, residual, k = state
        return (residual > 1e-15) & (k < 200)

    v, _, _ = jax.lax.while_loop(not_converged, step, (v0, jnp.array(jnp.inf), 0))
    return v


# The one line that makes the solver differentiable (grad, jacfwd, hessian, vmap, jit).
solve_circuit = rootdiff.custom_root(kcl)(newton)
V0 = jnp.zeros(2)


@jax.jit
def node_voltages(theta: dict) -> jax.Array:
    """``(v1, v2)`` at the operating point (volts)."""
    return solve_circuit(V0, theta)


@jax.jit
def load_power(theta: dict) -> jax.Array:
    """Power dissipated in the load, ``v₂² / R₃`` (watts): a scalar output."""
    return node_voltages(theta)[1] ** 2 / theta["R3"]


# ----------------------------------------------------------------------------- checks
# Finite differences use relative steps ``h·|θᵢ|`` on the flattened parameters, since
# they span twelve orders of magnitude (Is ≈ 1e-12 A, R ≈ 100 Ω).


def flat(theta: dict):
    """``θ`` (a dict of scalars) as a NumPy vector in sorted-key order, and the inverse.

    NumPy rather than ``jax.flatten_util.ravel_pytree``: eager JAX would compile each new
    small operation, which here costs more than all the solves.
    """
    keys = sorted(theta)
    vec = np.array([float(theta[k]) for k in keys])
    return vec, lambda v: {k: v[i] for i, k in enumerate(keys)}


def fd_jacobian(f, theta: dict, h: float = 1e-6) -> np.ndarray:
    """Central differences ``(f(θ + hᵢeᵢ) − f(θ − hᵢeᵢ)) / 2hᵢ``, one column per parameter."""
    vec, unravel = flat(theta)
    cols = []
    for i in range(vec.size):
        hi = h * abs(float(vec[i]))
        e = np.zeros_like(vec)
        e[i] = hi
        cols.append((np.asarray(f(unravel(vec + e))) - np.asarray(f(unravel(vec - e)))) / (2 * hi))
    return np.stack(cols, axis=-1)


def fd_hessian(f, theta: dict, h: float = 1e-4) -> np.ndarray:
    """Second central differences of a scalar ``f`` on the flattened parameters."""
    vec, unravel = flat(theta)
    n = vec.size
    steps = h * np.abs(np.asarray(vec))
    f_at = lambda d: float(f(unravel(vec + d)))
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * steps[i], np.eye(n)[j] * steps[j]
            H[i, j] = (f_at(ei + ej) - f_at(ei - ej) - f_at(-ei + ej) + f_at(-ei - ej)) / (
                4 * steps[i] * steps[j]
            )
    return H


def rel_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def report(name: str, err: float, failures: list[str], tol: float = TOLERANCE) -> None:
    ok = err < tol
    print(f"  {name:58s} rel. error {err:.1e}  {'OK' if ok else 'FAILED'}")
    if not ok:
        failures.append(name)


def main() -> int:
    failures: list[str] = []
    v = node_voltages(THETA)
    print(f"operating point: v1 = {float(v[0]):.6f} V, v2 = {float(v[1]):.6f} V, "
          f"max|KCL residual| = {np.max(np.abs(jax.jit(kcl)(v, THETA))):.1e} A")  # fmt: skip
    vec, unravel = flat(THETA)

    # grad: ∂(load power)/∂θ for every parameter of the dict.
    g = jax.jit(jax.grad(load_power))(THETA)  # jitted: one program, not two (fwd, transpose)
    print("\njax.grad of the load power v2²/R3 w.r.t. every circuit parameter:")
    for k in THETA:
        print(f"  ∂P/∂{k:3s} = {float(g[k]): .6e}")
    report("grad vs central FD", rel_err(flat(g)[0], fd_jacobian(load_power, THETA)), failures)

    # jacfwd: the full 2 × 5 sensitivity matrix of the node voltages.
    J = flat_jac(jax.jacfwd(node_voltages)(THETA), THETA)
    J_fd = fd_jacobian(node_voltages, THETA)
    report("jacfwd of (v1, v2) w.r.t. θ vs central FD", rel_err(J, J_fd), failures)
    # Relative sensitivities (∂ log v / ∂ log θ) are the readable form of this matrix.
    print("  relative sensitivities ∂log v/∂log θ:  " + " ".join(f"{k:>7s}" for k in sorted(THETA)))
    for row, name in zip(np.asarray(J) * np.asarray(vec) / np.asarray(v)[:, None], ["v1", "v2"]):
        print(f"    {name}:{' ' * 34}" + " ".join(f"{x:+7.3f}" for x in row))

    # hessian: second derivatives of the load power (forward-over-reverse through the rule).
    H = jax.jit(jax.hessian(lambda x: load_power(unravel(x))))(vec)
    H_fd = fd_hessian(load_power, THETA)
    report("hessian of the load power vs second central FD", rel_err(H, H_fd), failures, 1e-4)

    # vmap: a sweep of source voltages, values and derivatives batched in one call.
    sweep = np.linspace(0.0, 3.0, SWEEP)
    at = lambda vs: {**THETA, "Vs": vs}
    v2_of_vs = lambda vs: solve_circuit(V0, at(vs))[1]
    v2_sweep = jax.jit(jax.vmap(v2_of_vs))
    v2 = np.asarray(v2_sweep(sweep))
    gain = np.asarray(jax.jit(jax.vmap(jax.grad(v2_of_vs)))(sweep))
    h = 1e-6
    gain_fd = (np.asarray(v2_sweep(sweep + h)) - np.asarray(v2_sweep(sweep - h))) / (2 * h)
    report(f"vmap(grad) over {SWEEP} source voltages vs central FD", rel_err(gain, gain_fd),
           failures)  # fmt: skip

    # A closed-over value: the temperature enters only through the optimality function.
    @jax.jit
    def v2_at_temperature(temperature):
        F = lambda v, theta: kcl(v, theta, temperature)  # closes over `temperature`
        solver = rootdiff.custom_root(F)(lambda v0, theta: newton(v0, theta, temperature))
        return solver(V0, THETA)[1]

    T = np.float64(300.0)
    dT = float(jax.jit(jax.grad(v2_at_temperature))(T))
    dT_fd = (float(v2_at_temperature(T + 1e-3)) - float(v2_at_temperature(T - 1e-3))) / 2e-3
    print(f"\n  ∂v2/∂T through a closed-over temperature (Is held fixed) = "
          f"{float(dT) * 1e3:.4f} mV/K")  # fmt: skip
    report("grad w.r.t. a closed-over value vs central FD", rel_err(dT, dT_fd), failures)

    save_plot(np.asarray(sweep), np.asarray(v2), np.asarray(gain))
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("\nall derivative checks passed")
    return 0


def flat_jac(jac_tree: dict, theta: dict) -> np.ndarray:
    """Stack the per-parameter columns of a Jacobian pytree in :func:`flat`'s order."""
    return np.stack([np.asarray(jac_tree[k]) for k in sorted(theta)], axis=-1)


def save_plot(sweep, v2, gain) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sweep, v2, label="v2 (vmap of the solver)")
    ax.set_xlabel("source voltage Vs [V]")
    ax.set_ylabel("v2 [V]")
    ax2 = ax.twinx()
    ax2.plot(sweep, gain, color="C1", label="∂v2/∂Vs (vmap of jax.grad)")
    ax2.set_ylabel("∂v2/∂Vs")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88))
    ax.set_title("Diode circuit solved by Newton, differentiated implicitly")
    fig.tight_layout()
    path = os.path.join(OUT, "own_solver.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
