r"""One large fixed point, sharded over devices: ``z = tanh(W z + U x + b)``.

A deep-equilibrium layer whose state ``z ∈ ℝⁿ`` is split over 8 devices and whose
``n × n`` weight ``W`` is split by rows, so that no device ever holds all of ``W``.
The forward pass is the user's own fixed-point iteration; the backward pass is
rootdiff's implicit rule, whose linear system ``(I − D W)ᵀ u = z̄`` (with
``D = diag(1 − z²)``) is solved by GMRES directly on the sharded vectors: dot
products and norms become all-reduces of a few scalars, and the matrix-vector
product with ``Wᵀ`` reduces the row blocks; nothing of size ``n`` is gathered.

The script checks, and exits non-zero otherwise, that

1. the value and the gradient with respect to ``(W, U, b, x)`` equal those of the
   same code on one device;
2. the compiled backward program holds no all-gather at all (so none inside the
   Krylov loop), only all-reduces;
3. the memory XLA plans per device (``compiled.memory_analysis()``) is about 1/8
   of the single-device figure.

Runs on a CPU-only machine: it asks XLA for 8 host devices before importing JAX.
``ROOTDIFF_FAST=1`` uses a small size.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ["XLA_FLAGS"] = flags.strip()  # 8 host devices; must precede importing JAX

import re  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from jax.sharding import reshard  # noqa: E402

import rootdiff  # noqa: E402

jax.config.update("jax_enable_x64", True)

FAST = os.environ.get("ROOTDIFF_FAST") == "1"
N = 512 if FAST else 4096
D_IN = 16


def make_problem(n: int, d: int = D_IN, seed: int = 0):
    """``W`` with spectral norm ≈ 0.9 (so ``T`` is a contraction), ``U``, ``b``, ``x``."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n)) * (0.9 / (2 * np.sqrt(n)))
    U = rng.normal(size=(n, d)) / np.sqrt(d)
    return W, U, 0.1 * rng.normal(size=n), rng.normal(size=d)


def T(z, W, U, b, x):
    # W @ z needs all of z on every device: the forward iteration gathers it
    # (one all-gather of n numbers per iteration, the user's choice of algorithm).
    return jnp.tanh(W @ reshard(z, P()) + U @ x + b)


@rootdiff.custom_fixed_point(T, solve="gmres")
def deq(z0, W, U, b, x):
    return jax.lax.fori_loop(0, 60, lambda _, z: T(z, W, U, b, x), z0)


def loss(W, U, b, x):
    z = deq(jnp.zeros_like(b), W, U, b, x)
    return jnp.sum(z**2) / z.size


def _backward(W, U, b, x):
    """The backward pass alone: ``z̄ ↦ (W̄, Ū, b̄, x̄)`` at the fixed point."""
    _, vjp = jax.vjp(lambda W, U, b, x: deq(jnp.zeros_like(b), W, U, b, x), W, U, b, x)
    return vjp


def run(devices, problem):
    """Value, gradient and compiled-program facts on a 1-D mesh over ``devices``."""
    mesh = jax.make_mesh((len(devices),), ("s",), devices=devices)  # Explicit axes
    with jax.sharding.set_mesh(mesh):
        W, U, b, x = problem
        args = (
            jax.device_put(W, P("s", None)),  # rows split over the devices
            jax.device_put(U, P("s", None)),
            jax.device_put(b, P("s")),
            jax.device_put(x, P()),
        )
        grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        compiled = grad_fn.lower(*args).compile()
        value, grads = compiled(*args)
        backward = jax.jit(_backward(*args)).lower(args[2]).compile()
    mem = compiled.memory_analysis()
    hlo = backward.as_text()
    return {
        "value": float(value),
        "grads": [np.asarray(g) for g in grads],
        "grad_b_spec": grads[2].sharding.spec,
        "bytes": mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes,
        "temp": mem.temp_size_in_bytes,
        "all_gathers": len(re.findall(r"\ball-gather(?:-start)?\(", hlo)),
        "all_reduces": len(re.findall(r"\ball-reduce(?:-start)?\(", hlo)),
        "reduce_scatters": len(re.findall(r"\breduce-scatter\(", hlo)),
    }


def main() -> int:
    devices = jax.devices()
    if len(devices) < 2:
        print("needs several devices; set XLA_FLAGS=--xla_force_host_platform_device_count=8")
        return 1
    problem = make_problem(N)
    one = run(devices[:1], problem)
    many = run(devices, problem)
    k = len(devices)
    print(f"n = {N}, W: {N}×{N} float64 split by rows over {k} devices")
    print(f"loss: one device {one['value']:.15f}, {k} devices {many['value']:.15f}")
    errs = [
        float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
        for a, b in zip(one["grads"], many["grads"])
    ]
    print("gradient w.r.t. (W, U, b, x), max relative difference:", [f"{e:.1e}" for e in errs])
    print(f"gradient w.r.t. b comes back sharded: {many['grad_b_spec']}")
    ratio = many["bytes"] / one["bytes"]
    print(
        f"memory planned per device (arguments + outputs + temporaries): "
        f"{one['bytes'] / 2**20:.1f} MiB on one device, {many['bytes'] / 2**20:.2f} MiB "
        f"on each of {k} devices (ratio {ratio:.3f}, ideal {1 / k:.3f})"
    )
    print(
        f"backward program on {k} devices: {many['all_gathers']} all-gathers, "
        f"{many['all_reduces']} all-reduces, {many['reduce_scatters']} reduce-scatters"
    )
    ok = True
    if abs(one["value"] - many["value"]) > 1e-12 * abs(one["value"]) or max(errs) > 1e-9:
        print("FAILED: the sharded result differs from the single-device one")
        ok = False
    if many["all_gathers"]:
        print("FAILED: the backward (Krylov) program gathers a sharded array")
        ok = False
    if ratio > 1.5 / k:
        print("FAILED: memory per device is not about 1/k of one device's")
        ok = False
    if ok:
        print("OK: same result and gradient; no all-gather in the backward pass; memory ~1/k")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
