r"""One large sharded fixed point: memory per device and agreement, 1 vs 8 devices.

The deep-equilibrium problem of ``examples/sharded_fixed_point.py``,
``z = tanh(W z + U x + b)`` with the ``n × n`` weight ``W`` split by rows and the
state split over the devices; forward by the user's iteration, backward by
rootdiff's GMRES on the sharded vectors. Gradient with respect to ``(W, U, b, x)``.

Two kinds of rows:

* **run** (moderate ``n``): the program is executed on 1 and on 8 host devices;
  we report the largest relative gradient difference, the wall time of each
  (on a CPU, 8 "devices" share the same cores, so the time shows overhead, not
  speed-up) and XLA's planned memory per device.
* **on paper** (large ``n``): the program is only compiled, from abstract
  shapes (``jax.ShapeDtypeStruct``), never allocated: the memory XLA plans per
  device, for one device and for 8. At ``n = 110 000`` in float64, ``W`` alone is
  96.8 GB — more than one 80 GB accelerator holds — while each of 8 devices needs
  about 12 GB.

Usage::

    python benchmarks/sharded.py            # run rows at n = 2048, 4096; paper rows
    python benchmarks/sharded.py --quick    # n = 1024 only, paper row at 32768
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ["XLA_FLAGS"] = flags.strip()  # 8 host devices; must precede importing JAX

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
_spec = importlib.util.spec_from_file_location(
    "sharded_fixed_point", os.path.join(ROOT, "examples", "sharded_fixed_point.py")
)
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)  # the example's T, deq, loss and make_problem

SPECS = (P("s", None), P("s", None), P("s"), P())
GiB = 2**30


def _grad_fn():
    return jax.jit(jax.value_and_grad(ex.loss, argnums=(0, 1, 2, 3)))


def _planned_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def on_paper(n: int, k: int) -> dict:
    """Compile (never run) for ``n`` on ``k`` devices; XLA's planned bytes per device."""
    mesh = jax.make_mesh((k,), ("s",), devices=jax.devices()[:k])
    shapes = [(n, n), (n, ex.D_IN), (n,), (ex.D_IN,)]
    with jax.sharding.set_mesh(mesh):
        args = [
            jax.ShapeDtypeStruct(s, jnp.float64, sharding=NamedSharding(mesh, spec))
            for s, spec in zip(shapes, SPECS)
        ]
        t0 = time.perf_counter()
        compiled = _grad_fn().lower(*args).compile()
        compile_s = time.perf_counter() - t0
    hlo = compiled.as_text()
    return {
        "bytes": _planned_bytes(compiled),
        "compile_s": compile_s,
        "all_reduces": len(re.findall(r"\ball-reduce(?:-start)?\(", hlo)),
    }


def measured(n: int, k: int, problem, repeats: int = 3) -> dict:
    mesh = jax.make_mesh((k,), ("s",), devices=jax.devices()[:k])
    with jax.sharding.set_mesh(mesh):
        args = [jax.device_put(a, spec) for a, spec in zip(problem, SPECS)]
        compiled = _grad_fn().lower(*args).compile()
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            value, grads = jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
    return {
        "bytes": _planned_bytes(compiled),
        "time_s": min(times),
        "value": float(value),
        "grads": [np.asarray(g) for g in grads],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    k = len(jax.devices())
    run_sizes = [1024] if opts.quick else [2048, 4096]
    paper_sizes = [32768] if opts.quick else [32768, 110_000]
    print(f"jax {jax.__version__}, {k} host devices on {os.cpu_count()} CPU cores, float64")
    print()
    print("| n | kind | memory/device, 1 device | memory/device, 8 devices | ratio "
          "| max rel. grad diff | time 1 dev | time 8 dev |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for n in run_sizes:
        problem = ex.make_problem(n)
        one, many = measured(n, 1, problem), measured(n, k, problem)
        err = max(
            float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
            for a, b in zip(one["grads"], many["grads"])
        )
        ratio = many["bytes"] / one["bytes"]
        ok &= err < 1e-9 and ratio < 1.5 / k
        times = f"{one['time_s']:.2f} s | {many['time_s']:.2f} s"
        print(f"| {n} | run | {one['bytes'] / GiB:.3f} GiB | {many['bytes'] / GiB:.3f} GiB "
              f"| {ratio:.3f} | {err:.1e} | {times} |")  # fmt: skip
    for n in paper_sizes:
        one, many = on_paper(n, 1), on_paper(n, k)
        ratio = many["bytes"] / one["bytes"]
        ok &= ratio < 1.5 / k
        print(f"| {n} | on paper | {one['bytes'] / GiB:.1f} GiB | {many['bytes'] / GiB:.1f} GiB "
              f"| {ratio:.3f} | — | — | — |")  # fmt: skip
    print()
    print("memory: XLA's planned arguments + outputs + temporaries per device "
          "(compiled.memory_analysis()); 'on paper' rows are compiled, never run.")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
