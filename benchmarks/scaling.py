r"""Scaling: time and memory of implicit vs unrolled differentiation as iterations grow.

Fixed point of a cheap nearest-neighbour map on ``z ∈ ℝⁿ`` (periodic),

.. math:: z = \tanh\big(\tfrac{ρ}{2}(z_{i-1} + z_{i+1}) + x\big),\qquad ρ = 0.5,

run for ``K`` forward iterations (10 → 10⁴). Loss ``½‖z − y‖²``; gradient with
respect to ``(x, ρ)``. rootdiff's ``custom_fixed_point`` (with ``check="off"``,
since the first sizes are deliberately not converged) keeps memory flat in ``K``;
unrolled reverse-mode stores every iterate. Peak RSS is measured per
implementation and ``K`` in a fresh process (full mode); XLA's planned temporary
buffer size is reported in every mode.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import HERE, Row, bench_all, memcase_measure

jax.config.update("jax_enable_x64", True)

RHO = 0.5


def T(z, x, rho):
    return jnp.tanh(0.5 * rho * (jnp.roll(z, 1) + jnp.roll(z, -1)) + x)


def make_problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n), 0.5 * rng.standard_normal(n)


def reference_grad(x, y, rho=RHO, iters: int = 200):
    z = np.zeros_like(x)
    for _ in range(iters):
        z = np.tanh(0.5 * rho * (np.roll(z, 1) + np.roll(z, -1)) + x)
    D = 1 - z**2
    u = z - y
    for _ in range(iters):
        Du = D * u
        u = (z - y) + 0.5 * rho * (np.roll(Du, 1) + np.roll(Du, -1))
    v = D * u
    return v, float(v @ (0.5 * (np.roll(z, 1) + np.roll(z, -1))))


def implementations(K: int) -> dict:
    import rootdiff

    def forward(z0, x, rho):
        return jax.lax.fori_loop(0, K, lambda _, z: T(z, x, rho), z0)

    implicit = rootdiff.custom_fixed_point(T, check="off")(forward)

    def loss_of(solver):
        def loss(x, rho, y):
            z = solver(jnp.zeros_like(x), x, rho)
            return 0.5 * jnp.sum((z - y) ** 2)

        return loss

    return {"rootdiff implicit": loss_of(implicit), "unrolled": loss_of(forward)}


def memcase(case: dict) -> None:
    x, y = make_problem(case["n"])
    args = (jnp.asarray(x), jnp.asarray(RHO), jnp.asarray(y))
    loss = implementations(case["K"])[case["impl"]]
    memcase_measure(jax.value_and_grad(loss, argnums=(0, 1)), args)


def run(quick: bool = False, plot: bool | None = None) -> list[Row]:
    n = 2000 if quick else 10_000
    Ks = [10, 100, 1000] if quick else [10, 100, 1000, 10_000]
    x, y = make_problem(n)
    g_ref = reference_grad(x, y)
    args = (jnp.asarray(x), jnp.asarray(RHO), jnp.asarray(y))
    rows = []
    for K in Ks:
        rows += bench_all(
            f"scaling n={n} K={K}", implementations(K), args, g_ref, quick=quick, repeats=5,
            differentiate=lambda loss: jax.value_and_grad(loss, argnums=(0, 1)),
            memory=lambda impl, K=K: ("scaling", {"n": n, "K": K, "impl": impl}),
        )  # fmt: skip
    if plot if plot is not None else not quick:
        save_plot(rows, n)
    return rows


def save_plot(rows: list[Row], n: int, path: str | None = None) -> str:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path or os.path.join(os.path.dirname(HERE), "docs", "img", "scaling.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in ("rootdiff implicit", "unrolled"):
        sel = [r for r in rows if r.impl.startswith(label) and r.run_ms is not None]
        Ks = [int(r.workload.split("K=")[1]) for r in sel]
        axes[0].loglog(Ks, [r.run_ms for r in sel], "o-", label=label)
        mem = [(k, r.mem_mb if r.mem_mb is not None else r.xla_temp_mb) for k, r in zip(Ks, sel)]
        mem = [(k, m) for k, m in mem if m is not None]
        if mem:
            axes[1].loglog([k for k, _ in mem], [max(m, 0.1) for _, m in mem], "o-", label=label)
    measured = "peak RSS growth" if any(r.mem_mb is not None for r in rows) else "XLA temp"
    axes[0].set(xlabel="forward iterations K", ylabel="value_and_grad time (ms)")
    axes[1].set(xlabel="forward iterations K", ylabel=f"memory, MiB ({measured})")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Implicit vs unrolled differentiation, fixed point on n={n} (float64, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


WORKLOADS = {"scaling": run}

if __name__ == "__main__":
    if "--memcase" in sys.argv:
        memcase(json.loads(sys.argv[sys.argv.index("--memcase") + 1]))
    else:
        from benchmarks._common import format_table

        print(format_table(run(quick="--quick" in sys.argv)))
