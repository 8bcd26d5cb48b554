"""rootdiff on 8 host devices: Explicit meshes, shard_map, and one large sharded problem.

JAX fixes the number of host devices when it starts, so the checks run in one
subprocess (this file run as a script with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``). Every decorator, every
``solve=`` choice and every bundled solver is differentiated on a batch of
problems sharded over the devices, under

* ``jax.sharding.set_mesh`` of an ``Explicit``-axis mesh (``jax.make_mesh``'s default),
* ``jax.shard_map`` over the batch axis,
* no mesh context at all (a batch placed on the devices by ``jax.device_put``),

with ``jit(vmap(value_and_grad))`` and ``jit(vmap(jacfwd))``, and compared with the
same computation on one device. The derivatives themselves are checked against
finite differences in the other test modules; here the question is whether the
sharded programs trace, run and agree. One large problem whose state is sharded
(GMRES on sharded vectors, no all-gather in the backward pass, memory per device)
is checked by ``examples/sharded_fixed_point.py``, which ``tests/test_examples.py``
runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

N_DEV = 8


def test_sharded_programs_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEV}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "ALL OK" in proc.stdout, proc.stdout[-4000:]


# --------------------------------------------------------------------------- the script


def _cases(put):
    """``name -> solution(theta)`` for one problem, ``theta`` of shape (4,).

    ``put`` places the problem's constant arrays. Under an Explicit mesh they must
    be on the mesh (replicated): JAX itself cannot batch an operation mixing a
    sharded batch with a constant that has no mesh in its type (e.g.
    ``vmap(lambda x: jnp.concatenate([x, c]))`` fails the same way).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import rootdiff

    rng = np.random.default_rng(0)
    M = rng.normal(size=(4, 4))
    A = put(M @ M.T / 4 + np.eye(4))  # SPD, eigenvalues in [1, ~3]
    B = put(rng.normal(size=(4, 4)) / 4)

    def F(x, th):  # Jacobian A + 0.1 diag(sech²) is SPD: every solve= applies
        return A @ x + 0.1 * jnp.tanh(x) - th

    def descend(x, th):
        return jax.lax.fori_loop(0, 120, lambda _, x: x - 0.3 * F(x, th), x)

    cases = {}
    for name in rootdiff.linear_solve.SOLVERS:
        sol = rootdiff.custom_root(F, solve=name, symmetric=True)(descend)
        cases[f"custom_root[{name}]"] = lambda th, sol=sol: sol(jnp.zeros_like(th), th)

    def T(x, th):
        return 0.5 * jnp.tanh(B @ x) + th

    # The decorators with their default solve= (GMRES and CG are covered above).
    fp = rootdiff.custom_fixed_point(T)(
        lambda x, th: jax.lax.fori_loop(0, 80, lambda _, x: T(x, th), x)
    )
    cases["custom_fixed_point"] = lambda th: fp(jnp.zeros_like(th), th)

    def objective(x, th):
        return 0.5 * x @ A @ x + 0.1 * jnp.sum(jnp.log(jnp.cosh(x))) - th @ x

    am = rootdiff.argmin(objective)(descend)
    cases["argmin"] = lambda th: am(jnp.zeros_like(th), th)
    cases["bisection"] = lambda th: jax.vmap(
        lambda a: rootdiff.bisection(lambda x, a: x**3 + x - a, -10.0, 10.0, a)
    )(th)
    cases["projected_gradient"] = lambda th: rootdiff.projected_gradient(
        lambda x, th: 0.5 * x @ A @ x - th @ x,
        jnp.zeros_like(th),  # an unvarying init is wrong under shard_map
        lambda y: jnp.maximum(y, 0.0),
        th,
        maxiter=500,
    )
    G, h = put(-np.eye(4)), put(np.full(4, 0.3))  # x ≥ -0.3
    Aeq, beq = put(np.ones((1, 4))), put(np.ones(1))
    cases["solve_qp"] = lambda th: rootdiff.solve_qp(A, th, Aeq, beq, G, h)
    cases["solve_eq_qp"] = lambda th: rootdiff.solve_eq_qp(A, th, Aeq, beq)[0]
    cases["sparsemax"] = lambda th: rootdiff.layers.sparsemax(th)
    cases["lml"] = lambda th: rootdiff.layers.lml(th, 2)
    return cases


def _all(cases, jacfwd=True):
    """A batched function computing, per case, value_and_grad of a loss (and jacfwd)."""
    import jax
    import jax.numpy as jnp

    def one_problem(th):
        out = {}
        for name, sol in cases.items():
            loss = lambda th, sol=sol: jnp.sum(jnp.sin(sol(th)) ** 2)  # noqa: E731
            out[name] = jax.value_and_grad(loss)(th)
            if jacfwd:
                out[name] += (jax.jacfwd(sol)(th),)
        return out

    return jax.vmap(one_problem)


def _checks_on_explicit_mesh(mesh):
    """A backward solve that fails (GMRES, 1 iteration) is flagged on a sharded batch,
    in every check mode."""
    import functools
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import rootdiff

    thetas = np.random.default_rng(3).normal(size=(2 * N_DEV, 6))
    with jax.sharding.set_mesh(mesh):
        A = jax.device_put(np.diag(np.linspace(1, 10, 6)) + 0.3 * np.eye(6, k=1), P())
        solve = functools.partial(rootdiff.linear_solve.gmres, maxiter=1)
        th = jax.device_put(thetas, P("b"))
        for check in ("warn", "nan", "raise"):
            sol = rootdiff.custom_root(lambda x, t: A @ x - t, solve=solve, check=check)(
                lambda x, t: jnp.linalg.solve(A, t)
            )
            f = jax.jit(jax.vmap(jax.grad(lambda t: jnp.sum(sol(jnp.zeros_like(t), t) ** 2))))
            if check == "raise":
                # Every device raises (a raise on device 0 alone would leave the
                # others waiting until XLA aborts the process).
                try:
                    np.asarray(f(th))
                except Exception as e:  # XLA's runtime error carrying our message
                    assert "did not converge" in str(e), e
                else:
                    raise AssertionError("check='raise' did not raise")
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                g = np.asarray(f(th))
            flagged = [w for w in caught if issubclass(w.category, rootdiff.ConvergenceWarning)]
            if check == "warn":
                assert flagged and np.isfinite(g).all(), (caught, g)
            else:
                assert not flagged and np.isnan(g).all(), (caught, g)
    print("checks OK")


def _batch_sharded_without_a_mesh_context():
    """A batch placed on an (Auto-axis) mesh by ``device_put`` alone, no mesh context:
    ``jit(vmap(value_and_grad))`` of ``custom_root`` keeps it sharded and agrees with
    one device and with the closed form."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import rootdiff

    F = lambda x, a: x**3 + x - a  # noqa: E731

    @rootdiff.custom_root(F)
    def solve(x, a):
        return jax.lax.fori_loop(0, 40, lambda _, x: x - F(x, a) / (3 * x**2 + 1), x)

    f = jax.jit(jax.vmap(jax.value_and_grad(lambda a: solve(jnp.zeros(()), a) ** 2)))
    a = jnp.linspace(-3.0, 3.0, 64)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    v1, g1 = f(a)
    v8, g8 = f(jax.device_put(a, NamedSharding(mesh, P("batch"))))
    assert len(g8.sharding.device_set) == N_DEV, g8.sharding
    np.testing.assert_allclose(v1, v8, rtol=1e-13)
    np.testing.assert_allclose(g1, g8, rtol=1e-13)
    x = solve(jnp.zeros(64), a)
    np.testing.assert_allclose(g1, 2 * x / (3 * x**2 + 1), rtol=1e-10)
    print("no mesh context OK")


def main():
    import time

    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == N_DEV, jax.devices()
    thetas = np.random.default_rng(2).normal(size=(2 * N_DEV, 4))
    t0 = time.perf_counter()
    ref = jax.jit(_all(_cases(jax.numpy.asarray)))(thetas)
    print(f"one device: {time.perf_counter() - t0:.1f} s")

    mesh = jax.make_mesh((N_DEV,), ("b",))  # Explicit axes by default
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,), mesh.axis_types
    with jax.sharding.set_mesh(mesh):
        cases = _cases(lambda a: jax.device_put(a, P()))
        fn = _all(cases)
        th = jax.device_put(thetas, P("b"))
        t0 = time.perf_counter()
        explicit = jax.jit(fn)(th)
        print(f"explicit: {time.perf_counter() - t0:.1f} s")
    # shard_map: each device runs the unsharded program on its slice of the batch
    # (closed-over constants must not carry Explicit mesh types there). Reverse mode
    # only, to bound the test's compile time; the layers are left to the Explicit
    # mesh (under shard_map they are bisection, which is covered).
    smap_cases = _cases(jax.numpy.asarray)
    del smap_cases["sparsemax"], smap_cases["lml"]
    smap_fn = jax.shard_map(
        _all(smap_cases, jacfwd=False), mesh=mesh, in_specs=P("b"), out_specs=P("b")
    )
    t0 = time.perf_counter()
    smap = jax.jit(smap_fn)(th)
    print(f"shard_map: {time.perf_counter() - t0:.1f} s")
    for label, got in (("explicit mesh", explicit), ("shard_map", smap)):
        for name in got:
            for what, a, b in zip(("value", "grad", "jacfwd"), ref[name], got[name]):
                assert len(b.sharding.device_set) == N_DEV, (label, name, b.sharding)
                np.testing.assert_allclose(
                    np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12,
                    err_msg=f"{label}: {name} {what}",
                )  # fmt: skip
        print(label, "OK")
    _checks_on_explicit_mesh(mesh)
    _batch_sharded_without_a_mesh_context()
    print("ALL OK")


if __name__ == "__main__":
    main()
