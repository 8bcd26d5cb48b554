"""rootdiff.linear_solve: accuracy against numpy, pytrees, options and diagnostics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rootdiff import linear_solve as ls

rng = np.random.default_rng(1)
N = 12
_M = rng.normal(size=(N, N))
SPD = jnp.asarray(_M @ _M.T / N + np.eye(N))
NONSYM = jnp.asarray(np.eye(N) * 3 + 0.5 * rng.normal(size=(N, N)))
B = jnp.asarray(rng.normal(size=N))

ALL = ["cg", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "lstsq", "auto"]
GENERAL = ["gmres", "bicgstab", "normal_cg", "lu", "lstsq", "auto"]


def solve_jit(name, **options):
    fn = functools.partial(ls.get_solver(name), **options)
    return jax.jit(lambda A, b: fn(lambda v: A @ v, b, return_info=True))


@pytest.mark.parametrize("name", ALL)
def test_spd_system(name):
    x, info = solve_jit(name)(SPD, B)
    np.testing.assert_allclose(x, np.linalg.solve(SPD, B), rtol=1e-10)
    assert bool(info.converged)
    assert float(info.residual_norm) <= 1e-10 * float(info.b_norm)


@pytest.mark.parametrize("name", GENERAL)
def test_nonsymmetric_system(name):
    x, info = solve_jit(name)(NONSYM, B)
    np.testing.assert_allclose(x, np.linalg.solve(NONSYM, B), rtol=1e-9)
    assert bool(info.converged)


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab", "lu"])
def test_pytree_rhs_and_ridge(name):
    """b is a dict of differently shaped leaves; ridge solves (A + ridge I) x = b."""
    b = {"a": B[:4].reshape(2, 2), "b": B[4:]}
    flat = lambda t: jnp.concatenate([t["a"].ravel(), t["b"]])
    unflat = lambda v: {"a": v[:4].reshape(2, 2), "b": v[4:]}
    matvec = lambda t: unflat(SPD @ flat(t))
    x = jax.jit(lambda b: ls.get_solver(name)(matvec, b, ridge=0.5))(b)
    expected = np.linalg.solve(SPD + 0.5 * np.eye(N), flat(b))
    np.testing.assert_allclose(flat(x), expected, rtol=1e-9)
    assert x["a"].shape == (2, 2)


def test_init_and_preconditioner_reduce_iterations():
    exact = np.linalg.solve(SPD, B)
    cases = ((ls.cg, SPD), (ls.gmres, NONSYM), (ls.bicgstab, NONSYM))

    @jax.jit  # one program for every solve
    def run(init):
        _, cold = ls.cg(lambda v: SPD @ v, B, return_info=True)
        _, warm = ls.cg(lambda v: SPD @ v, B, init=init, return_info=True)
        out = []
        for solver, A in cases:
            mv = lambda v, A=A: A @ v
            _, info = solver(mv, B, return_info=True)
            exact_inverse = lambda r, A=A: jnp.linalg.solve(A, r)
            out.append((info, *solver(mv, B, M=exact_inverse, return_info=True)))
        return cold, warm, out

    cold, warm, out = run(jnp.asarray(exact) + 1e-9)
    assert int(warm.iterations) < int(cold.iterations)
    for (_, A), (info, x, info_p) in zip(cases, out, strict=True):
        assert bool(info_p.converged) and int(info_p.iterations) <= int(info.iterations)
        np.testing.assert_allclose(x, np.linalg.solve(A, B), rtol=1e-9)


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab"])
def test_nonconvergence_is_reported(name):
    x, info = solve_jit(name, maxiter=2)(SPD, B)
    assert not bool(info.converged)
    assert float(info.residual_norm) > 1e-6 * float(info.b_norm)


def test_singular_dense_solve_is_reported():
    A = jnp.ones((3, 3))
    _, info = ls.lu(lambda v: A @ v, jnp.array([1.0, 0.0, 0.0]), return_info=True)
    assert not bool(info.converged)
    x, info = ls.lstsq(lambda v: A @ v, jnp.array([1.0, 1.0, 1.0]), return_info=True)
    np.testing.assert_allclose(x, np.full(3, 1 / 3), rtol=1e-10)  # minimum-norm solution


def test_vmap_over_batch_of_systems():
    As = jnp.stack([SPD, 2 * SPD, SPD + jnp.eye(N)])
    Bs = jnp.stack([B, -B, 2 * B])
    for name in ("cg", "gmres", "lu"):
        xs, info = jax.vmap(solve_jit(name))(As, Bs)
        np.testing.assert_allclose(xs, np.linalg.solve(As, Bs[..., None])[..., 0], rtol=1e-9)
        assert info.converged.shape == (3,) and bool(info.converged.all())


def test_float32_default_tolerance(float32):
    A, b = SPD.astype(jnp.float32), B.astype(jnp.float32)
    names = ("cg", "gmres", "bicgstab", "lu")

    @jax.jit  # one program for the four solvers
    def run(A, b):
        return [ls.get_solver(name)(lambda v: A @ v, b, return_info=True) for name in names]

    for name, (x, info) in zip(names, run(A, b), strict=True):
        assert x.dtype == jnp.float32 and bool(info.converged), name
        np.testing.assert_allclose(x, np.linalg.solve(np.float64(A), np.float64(b)), rtol=1e-4)


def test_auto_rule():
    """Dense below the threshold (1 'iteration'); CG if symmetric, GMRES otherwise above it."""
    n = ls.DENSE_THRESHOLD + 1
    A = jnp.eye(n) * 2.0 + 0.01 * jnp.asarray(rng.normal(size=(n, n)))
    A = A + A.T
    b = jnp.ones(n)

    @jax.jit  # one program for the five solves
    def run(A, b):
        mv = lambda v: A @ v  # noqa: E731
        return [
            ls.auto(lambda v: SPD @ v, B, return_info=True)[1],
            ls.auto(mv, b, symmetric=True, return_info=True)[1],
            ls.auto(mv, b, return_info=True)[1],
            ls.cg(mv, b, return_info=True)[1],
            ls.gmres(mv, b, return_info=True)[1],
        ]

    info, info_cg, info_gm, ref_cg, ref_gm = run(A, b)
    assert int(info.iterations) == 1
    assert int(info_cg.iterations) == int(ref_cg.iterations) > 1
    assert int(info_gm.iterations) == int(ref_gm.iterations) > 1


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="expected one of"):
        ls.get_solver("qr")


def test_normal_cg_non_square_least_squares():
    """A maps R^4 -> R^7 (over-determined): init= gives x's space; lstsq is the oracle."""
    A = jnp.asarray(rng.normal(size=(7, 4)))
    b = jnp.asarray(rng.normal(size=7))
    x, info = ls.normal_cg(lambda v: A @ v, b, init=jnp.zeros(4), return_info=True)
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(x, expected, rtol=1e-9)
    assert x.shape == (4,) and bool(info.converged)
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(b - A @ expected), rtol=1e-8)
    # pytree x (dict) and under-determined A (3 x 4): the minimum-norm solution.
    W = jnp.asarray(rng.normal(size=(3, 4)))
    mv = lambda t: W @ jnp.concatenate([t["a"], t["b"]])
    x = ls.normal_cg(mv, b[:3], init={"a": jnp.zeros(1), "b": jnp.zeros(3)}, tol=1e-13)
    np.testing.assert_allclose(
        jnp.concatenate([x["a"], x["b"]]), np.linalg.pinv(W) @ b[:3], rtol=1e-8
    )
    # Without init the operator must be square: a clear error names init=.
    with pytest.raises(ValueError, match="init="):
        ls.normal_cg(lambda v: A @ v, b)


def test_auto_does_not_stall_on_ill_conditioned_nonsymmetric():
    """n = 150 > DENSE_THRESHOLD, condition 1e4: GMRES(20) stalls; auto must still solve."""
    n = 150
    r = np.random.default_rng(3)
    U, _ = np.linalg.qr(r.normal(size=(n, n)))
    V, _ = np.linalg.qr(r.normal(size=(n, n)))
    A = jnp.asarray(U @ np.diag(np.logspace(0, -4, n)) @ V.T)
    b = jnp.asarray(r.normal(size=n))
    _, stalled = solve_jit("gmres", restart=20, maxiter=200)(A, b)
    assert not bool(stalled.converged)  # the failure mode auto must avoid
    x, info = solve_jit("auto")(A, b)
    assert bool(info.converged)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_dense_solves_in_half_precision(dtype):
    """CPU has no half-precision factorisations: computed in float32, returned in dtype."""
    A, b = NONSYM.astype(dtype), B.astype(dtype)
    expected = np.linalg.solve(np.asarray(NONSYM), np.asarray(B))
    for name in ["auto", "lu", "lstsq"]:
        x = ls.get_solver(name)(lambda v: A @ v, b)
        assert x.dtype == dtype
        np.testing.assert_allclose(np.asarray(x, np.float64), expected, rtol=0.05, atol=0.05)
    S = SPD.astype(dtype)
    x = ls.cholesky(lambda v: S @ v, b)
    expected = np.linalg.solve(np.asarray(SPD), np.asarray(B))
    np.testing.assert_allclose(np.asarray(x, np.float64), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["cg", "gmres"])
def test_one_operator_product_in_the_graph(name):
    """CG and GMRES trace the user's operator once (XLA compiles every copy of it):
    the start from ``init`` and the final verification share the iteration's product,
    and convergence still rests on the true residual."""
    calls = []

    def matvec(v):
        calls.append(1)
        return SPD @ v

    solve = ls.get_solver(name)
    init = jnp.asarray(np.linalg.solve(SPD, B)) + 0.1
    for start in (None, init):
        calls.clear()
        jax.make_jaxpr(lambda b, i: solve(matvec, b, init=i, return_info=True))(B, start)
        assert len(calls) == 1
    x, info = solve(matvec, B, init=init, return_info=True)
    residual = float(jnp.linalg.norm(B - SPD @ x))
    assert bool(info.converged) and residual <= 1e-10 * float(info.b_norm)
    np.testing.assert_allclose(float(info.residual_norm), residual, rtol=1e-3, atol=1e-15)


@pytest.mark.parametrize("name", ["cg", "gmres"])
def test_out_of_budget_reports_the_returned_iterate(name):
    """A solve stopped by ``maxiter`` mid-cycle keeps its progress and is not converged."""
    A = NONSYM if name == "gmres" else SPD
    x, info = solve_jit(name, maxiter=3)(A, B)
    residual = float(jnp.linalg.norm(B - A @ x))
    assert not bool(info.converged) and int(info.iterations) == 3
    assert residual < float(jnp.linalg.norm(B))  # progress kept
    np.testing.assert_allclose(float(info.residual_norm), residual, rtol=1e-6)


def test_forward_check_newton_step_with_a_krylov_solve():
    """The forward check's Newton step, solved by GMRES (n > DENSE_THRESHOLD) to a
    looser tolerance than the derivative, still measures the solution's error: a
    1e-3 relative error is reported as about 1e-3; an accurate root is not flagged."""
    import warnings

    import rootdiff

    n = ls.DENSE_THRESHOLD + 20
    W = jnp.asarray(0.3 * rng.normal(size=(n, n)) / np.sqrt(n))
    c = jnp.asarray(rng.normal(size=n))
    T = lambda z, c, err=0.0: jnp.tanh(W @ z + c)  # noqa: E731

    def iterate(z, c, err):
        z = jax.lax.fori_loop(0, 60, lambda _, z: T(z, c), z)
        return z * (1 + err)

    solver = rootdiff.custom_fixed_point(T)(iterate)
    expected = r"Newton step .* 9\.9\d\de-04 > tolerance"
    with pytest.warns(rootdiff.ConvergenceWarning, match=expected):
        solver(jnp.zeros(n), c, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rootdiff.ConvergenceWarning)
        solver(jnp.zeros(n), c, 0.0)


def test_bicgstab_recovers_from_breakdown():
    # ∂ₓF = I + 0.1 diag(cos x₋₁) S (S the cyclic shift) and b = e₁: the second
    # iteration's residual is orthogonal to r̂ = b (ρ = 0), a BiCGStab breakdown that
    # returned NaN before the recurrences restarted from the current residual.
    x = jnp.array([-0.9, -0.5, 0.0, 0.5, 0.9])
    F = lambda z: z + 0.1 * jnp.sin(jnp.roll(z, 1))  # noqa: E731
    mv = lambda v: jax.jvp(F, (x,), (v,))[1]  # noqa: E731
    b = jnp.zeros(5).at[0].set(1.0)
    sol, info = ls.bicgstab(mv, b, return_info=True)
    assert bool(info.converged)
    np.testing.assert_allclose(sol, jnp.linalg.solve(jax.jacfwd(F)(x), b), rtol=1e-9)


def test_gmres_with_a_non_finite_operator_returns_nan_not_converged():
    """An operator returning NaN ends GMRES mid-cycle: the answer is NaN (not the
    last finite iterate, zeros here, which would look like an answer), not converged."""
    x, info = ls.gmres(lambda v: NONSYM @ v * jnp.nan, B, return_info=True)
    assert bool(jnp.all(jnp.isnan(x))) and not bool(info.converged)


@pytest.mark.parametrize("name", ["cg", "gmres"])
def test_loop_body_chooses_the_product_input_without_vector_select(name):
    """CG's and GMRES's loop bodies choose between vectors by scalar weights, not by
    a select of vectors (a large kernel for XLA:CPU to compile): CG's next product
    input (p, or x before a verification), GMRES's (x at a cycle start, or the next
    basis vector). Nested conditionals (GMRES's Arnoldi step) are not walked. The
    start from ``init``, the verification on the true residual and the restart still
    happen (checked on the result)."""
    A = SPD if name == "cg" else NONSYM
    solve = ls.get_solver(name)
    init = jnp.asarray(np.linalg.solve(A, B)) + 0.1
    jaxpr = jax.make_jaxpr(lambda b, i: solve(lambda v: A @ v, b, init=i, return_info=True))(
        B, init
    )
    (loop,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "while"]

    def selects(jaxpr):  # select_n equations, also inside nested jitted calls
        for e in jaxpr.eqns:
            if e.primitive.name == "select_n":
                yield e
            for sub in e.params.values():
                if hasattr(sub, "jaxpr"):
                    yield from selects(getattr(sub.jaxpr, "jaxpr", sub.jaxpr))

    sizes = [e.outvars[0].aval.size for e in selects(loop.params["body_jaxpr"].jaxpr)]
    assert sizes  # the walk sees the scalar selects
    assert not [s for s in sizes if s >= N]  # no select of vectors
    x, info = solve(lambda v: A @ v, B, init=init, maxiter=3, return_info=True)
    np.testing.assert_allclose(info.residual_norm, jnp.linalg.norm(B - A @ x), rtol=1e-12)
    x, info = solve(lambda v: A @ v, B, init=init, return_info=True)
    assert bool(info.converged)
    np.testing.assert_allclose(A @ x, B, rtol=0, atol=1e-10)


def test_cg_estimate_stops_on_its_recursive_residual():
    """The forward check's CG estimate (no verification on the true residual):
    accurate to its tolerance, and its flag is False when ``maxiter`` cut it short."""
    from rootdiff._krylov import cg_estimate

    x, ok = cg_estimate(lambda v: SPD @ v, B, tol=1e-6)
    assert bool(ok)
    assert float(jnp.linalg.norm(SPD @ x - B)) <= 2e-6 * float(jnp.linalg.norm(B))
    x, ok = cg_estimate(lambda v: SPD @ v, B, tol=1e-6, maxiter=2)
    assert not bool(ok) and float(jnp.linalg.norm(SPD @ x - B)) > 1e-6


def test_gmres_estimate_stops_on_its_recursive_residual():
    """The forward check's GMRES estimate (simpler GMRES, no verification): accurate
    to its tolerance over several restart cycles, no stall on a rotation (where a
    conjugate residual method taking the residual as direction stalls), one product
    site in its loop, and its flag is False when ``maxiter`` cut it short."""
    from rootdiff._krylov import gmres_estimate

    A = SPD + jnp.asarray(np.triu(np.ones((N, N)), 1))  # nonsymmetric
    calls = []

    def mv(v):
        calls.append(1)
        return A @ v

    for restart in (20, 3):
        x, ok = gmres_estimate(mv, B, tol=1e-6, restart=restart)
        assert bool(ok)
        assert float(jnp.linalg.norm(A @ x - B)) <= 2e-6 * float(jnp.linalg.norm(B))
    assert len(calls) == 2  # traced once per solve: one product site
    rot = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    x, ok = gmres_estimate(lambda v: rot @ v, jnp.array([1.0, 0.0]), tol=1e-8)
    assert bool(ok)
    np.testing.assert_allclose(x, [0.0, 1.0], atol=1e-12)
    x, ok = gmres_estimate(mv, B, tol=1e-6, maxiter=2)
    assert not bool(ok) and float(jnp.linalg.norm(A @ x - B)) > 1e-6
