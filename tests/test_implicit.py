"""custom_root / custom_fixed_point / root_jvp / root_vjp against independent references.

The reference for the nonlinear system is *unrolled* Newton (a fixed-count
``fori_loop`` that JAX differentiates directly, in every mode); the decorated
solver uses a ``while_loop`` that JAX cannot reverse-differentiate, so every
derivative through it comes from rootdiff's implicit rule.
"""

import functools
import re

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rootdiff

RTOL = 1e-6

# --------------------------------------------------------------------------- problem
# params = {"u": (3,), "v": (2,)};  θ = (p (3,), W (3, 3)) positional, q (2,) keyword-only.
#   F_u = u + 0.3 tanh(W u) − p
#   F_v = v³/3 + v − q · Σu


def F(params, p, W, *, q):
    u, v = params["u"], params["v"]
    return {"u": u + 0.3 * jnp.tanh(W @ u) - p, "v": v**3 / 3 + v - q * jnp.sum(u)}


def _newton_step(params, p, W, q):
    flat, unravel = ravel_pytree(params)
    f = lambda z: ravel_pytree(F(unravel(z), p, W, q=q))[0]
    return unravel(flat - jnp.linalg.solve(jax.jacfwd(f)(flat), f(flat)))


def newton_while(init, p, W, *, q):
    """The user's solver: Newton with a while_loop (not reverse-differentiable by JAX)."""

    def cond(state):
        params, k = state
        res = ravel_pytree(F(params, p, W, q=q))[0]
        return (jnp.max(jnp.abs(res)) > 1e-14) & (k < 50)

    def body(state):
        params, k = state
        return _newton_step(params, p, W, q), k + 1

    return jax.lax.while_loop(cond, body, (init, 0))[0]


def newton_unrolled(init, p, W, *, q):
    """Reference: 25 Newton steps, differentiated by plain JAX autodiff."""
    return jax.lax.fori_loop(0, 25, lambda _, x: _newton_step(x, p, W, q), init)


solve = rootdiff.custom_root(F)(newton_while)

rng = np.random.default_rng(0)
INIT = {"u": jnp.zeros(3), "v": jnp.zeros(2)}
P = jnp.asarray(rng.normal(size=3))
W = jnp.asarray(rng.normal(size=(3, 3)))
Q = jnp.asarray(rng.normal(size=2))


def loss_of(solver):
    def loss(p, W, q):
        sol = solver(INIT, p, W, q=q)
        return jnp.sum(jnp.sin(sol["u"])) + jnp.sum(sol["v"] ** 2) * jnp.sum(p)

    return loss


def sol_vec_of(solver):
    """Solution as a flat vector, as a function of p (for Jacobians)."""
    return lambda p, W, q: ravel_pytree(solver(INIT, p, W, q=q))[0]


loss, loss_ref = loss_of(solve), loss_of(newton_unrolled)
solv, solv_ref = sol_vec_of(solve), sol_vec_of(newton_unrolled)


def assert_close(a, b, rtol=RTOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-9)


def test_forward_solution_is_a_root():
    sol = solve(INIT, P, W, q=Q)
    res = ravel_pytree(F(sol, P, W, q=Q))[0]
    assert np.max(np.abs(res)) < 1e-12
    assert_close(sol, newton_unrolled(INIT, P, W, q=Q))


# Each mode: (name, transform applied to (function, reference)).
MODES = {
    "grad": lambda f: jax.grad(f, argnums=(0, 1, 2)),
    "jacrev": lambda f: jax.jacrev(f, argnums=(0, 1, 2)),
    "jacfwd": lambda f: jax.jacfwd(f, argnums=(0, 1, 2)),
    "hessian": lambda f: jax.hessian(f, argnums=(0, 2)),
    "grad_of_grad": lambda f: jax.grad(lambda p, W, q: jnp.sum(jax.grad(f)(p, W, q) ** 2)),
}
SCALAR_MODES = {"grad", "hessian", "grad_of_grad"}


PS = jnp.stack([P, 0.5 * P, -P])
VMAP_MODES = ["grad", "jacfwd", "hessian"]


def _every_mode(f_loss, f_solv):
    """Every mode of ``MODES`` and, batched over p, of ``VMAP_MODES``: one program."""

    def run(p, W, q, ps):
        out = {}
        for mode, transform in MODES.items():
            out[mode] = transform(f_loss if mode in SCALAR_MODES else f_solv)(p, W, q)
        for mode in VMAP_MODES:
            f = f_loss if mode in SCALAR_MODES else f_solv
            out["vmap_" + mode] = jax.vmap(MODES[mode](f), in_axes=(0, None, None))(ps, W, q)
        return out

    return jax.jit(run)


@pytest.fixture(scope="module")
def every_mode():
    """(rootdiff's, the unrolled reference's) results: two compilations for all modes."""
    ours = _every_mode(loss, solv)(P, W, Q, PS)
    return ours, _every_mode(loss_ref, solv_ref)(P, W, Q, PS)


@pytest.mark.parametrize(
    "mode, wrap", [(m, "jit") for m in sorted(MODES)] + [("grad", "plain"), ("jacfwd", "plain")]
)
def test_modes_match_unrolled(every_mode, mode, wrap):
    ours, ref = every_mode
    if wrap == "plain":  # without jax.jit: the decorated solver's own cached call
        f = loss if mode in SCALAR_MODES else solv
        assert_close(MODES[mode](f)(P, W, Q), ref[mode])
    else:
        assert_close(ours[mode], ref[mode])


@pytest.mark.parametrize("mode", VMAP_MODES)
def test_vmap_of_modes(every_mode, mode):
    ours, ref = every_mode
    assert_close(ours["vmap_" + mode], ref["vmap_" + mode])


def test_vjp_and_jvp_products():
    tangents = (jnp.ones(3), 0.1 * jnp.ones((3, 3)), jnp.array([1.0, -1.0]))
    primal, tan = jax.jvp(solv, (P, W, Q), tangents)
    primal_ref, tan_ref = jax.jvp(solv_ref, (P, W, Q), tangents)
    assert_close((primal, tan), (primal_ref, tan_ref))
    ct = jnp.arange(5.0)
    _, pullback = jax.vjp(solv, P, W, Q)
    _, pullback_ref = jax.vjp(solv_ref, P, W, Q)
    assert_close(pullback(ct), pullback_ref(ct))


def test_check_grads_finite_differences():
    # Under jax.jit: each transformation check_grads applies is compiled once (not
    # op by op at each of its evaluation points).
    jax.test_util.check_grads(
        jax.jit(lambda p, q: loss(p, W, q)), (P, Q), order=2, modes=("fwd", "rev"), eps=1e-4
    )


def test_init_params_gets_zero_derivative():
    g = jax.grad(lambda init: jnp.sum(solv_of_init(init)))(INIT)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g))
    jac = jax.jacfwd(solv_of_init)(INIT)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(jac))


def solv_of_init(init):
    return ravel_pytree(solve(init, P, W, q=Q))[0]


def test_keyword_positional_equivalence():
    """q may be passed only by keyword (keyword-only); p and W by keyword too."""
    F_kw = lambda params, p, W, *, q: F(params, p, W, q=q)

    @rootdiff.custom_root(F_kw)
    def solver(init, p, W, *, q):
        return newton_while(init, p, W, q=q)

    g1 = jax.grad(lambda p: solver(INIT, p=p, W=W, q=Q)["v"].sum())(P)
    g2 = jax.grad(lambda p: newton_unrolled(INIT, p, W, q=Q)["v"].sum())(P)
    assert_close(g1, g2)


# --------------------------------------------------------------------------- has_aux, statics


def test_has_aux_passes_aux_through():
    @rootdiff.custom_root(F, has_aux=True)
    def solver(init, p, W, *, q):
        sol = newton_while(init, p, W, q=q)
        return sol, {"iterations": jnp.array(7), "note": jnp.sum(p)}

    def f(p):
        sol, aux = solver(INIT, p, W, q=Q)
        return jnp.sum(sol["u"]), aux

    @jax.jit  # one program for every check
    def run(p):
        (_, aux), g = jax.value_and_grad(f, has_aux=True)(p)
        g_ref = jax.grad(lambda p: jnp.sum(newton_unrolled(INIT, p, W, q=Q)["u"]))(p)
        g_note = jax.grad(lambda p: solver(INIT, p, W, q=Q)[1]["note"])(p)
        jac = jax.jacfwd(lambda p: solver(INIT, p, W, q=Q)[0]["u"])(p)
        jac_ref = jax.jacfwd(lambda p: newton_unrolled(INIT, p, W, q=Q)["u"])(p)
        return aux, g, g_ref, g_note, jac, jac_ref

    aux, g, g_ref, g_note, jac, jac_ref = run(P)
    assert int(aux["iterations"]) == 7
    assert_close(g, g_ref)
    assert float(g_note.sum()) == 0.0  # aux is not differentiated
    assert_close(jac, jac_ref)  # and works under jacfwd


def test_integer_and_bool_aux_under_shard_map():
    # Integer/bool aux computed from a varying (sharded) value: the custom_jvp must
    # not give it a float0 tangent, which would lose shard_map's varying axes.
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Ps

    if not hasattr(jax, "shard_map"):  # older JAX: experimental, and no varying types
        pytest.skip("jax.shard_map needs a newer JAX")

    @rootdiff.custom_root(lambda x, a: x**3 + x - a, has_aux=True)
    def solve(x, a):
        x = jax.lax.fori_loop(0, 30, lambda _, x: x - (x**3 + x - a) / (3 * x**2 + 1), x)
        big = jnp.array([2**31 - 1, -(2**31)], jnp.int32) + (a > 9).astype(jnp.int32)
        return x, {"i32": big, "i64": jnp.int64(-(2**40)) - (a > 0), "u8": jnp.uint8(255) - (a > 0),
                   "pos": a > 0, "f": 2 * a}  # fmt: skip

    def f(a):
        x, aux = solve(jnp.zeros_like(a), a)  # varying, as a shard_map carry must be
        return x**2, aux

    mesh = jax.make_mesh((1,), ("b",))
    a = jax.device_put(jnp.array([2.0]), NamedSharding(mesh, Ps("b")))
    g, aux = jax.jit(
        jax.shard_map(
            jax.vmap(jax.grad(f, has_aux=True)), mesh=mesh, in_specs=Ps("b"), out_specs=Ps("b")
        )
    )(a)
    x = 1.0  # the root of x³ + x = 2
    np.testing.assert_allclose(g, [2 * x / (3 * x**2 + 1)], rtol=1e-12)
    np.testing.assert_array_equal(aux["i32"], [[2**31 - 1, -(2**31)]])
    assert aux["i32"].dtype == jnp.int32 and aux["i64"].dtype == jnp.int64
    assert aux["u8"].dtype == jnp.uint8 and aux["pos"].dtype == jnp.bool_
    assert int(aux["i64"][0]) == -(2**40) - 1 and int(aux["u8"][0]) == 254 and bool(aux["pos"][0])
    np.testing.assert_allclose(aux["f"], [4.0])


def G(x, a, n, mode, fn, none, idx):
    """Optimality fun with non-array arguments: Python int, string, callable, None, int array."""
    assert isinstance(n, int) and mode == "cubic" and none is None
    return fn(x) ** n - a[idx]


@rootdiff.custom_root(G)
def int_args_solver(x, a, n, mode, fn, none, idx):
    assert isinstance(n, int) and mode == "cubic" and none is None and callable(fn)
    for _ in range(40):
        x = x - G(x, a, n, mode, fn, none, idx) / (n * x ** (n - 1))
    return x


def test_non_array_and_integer_arguments():
    a = jnp.array([8.0, 27.0])
    idx = jnp.array(1)  # an integer array: no derivative, no error
    f = lambda a: int_args_solver(jnp.array(2.0), a, 3, "cubic", lambda x: x, None, idx)
    assert abs(float(f(a)) - 3.0) < 1e-12
    expected = np.array([0.0, 1 / 27.0])  # d a^(1/3)/da = a^(-2/3)/3
    # Both modes in one program (the solver's Python loop, run op by op without
    # jax.jit, is what costs; calls without jit are covered in tests/test_eager.py).
    g, jac = jax.jit(lambda a: (jax.grad(f)(a), jax.jacfwd(f)(a)))(a)
    assert_close(g, expected)
    assert_close(jac, expected)


# --------------------------------------------------------------------------- closures


def closure_solution(c, p):
    """Solver and optimality fun close over c (a tracer of the outer transformation)."""
    G = lambda x, p: x + 0.5 * jnp.tanh(c * x) - p

    @rootdiff.custom_root(G)
    def solver(x, p):
        def body(_, x):
            dg = 1 + 0.5 * c * (1 - jnp.tanh(c * x) ** 2)
            return x - G(x, p) / dg

        return jax.lax.fori_loop(0, 60, body, x)

    return solver(jnp.zeros_like(p), p)


def closure_reference(c, p):
    def body(_, x):
        return x - (x + 0.5 * jnp.tanh(c * x) - p) / (1 + 0.5 * c * (1 - jnp.tanh(c * x) ** 2))

    return jax.lax.fori_loop(0, 60, body, jnp.zeros_like(p))


CLOSURE_MODES = {
    "grad": lambda f: jax.grad(lambda c, p: jnp.sum(f(c, p) ** 2)),
    "jacfwd": lambda f: jax.jacfwd(f),
    "jacrev": lambda f: jax.jacrev(f),
    "hessian": lambda f: jax.hessian(lambda c, p: jnp.sum(jnp.sin(f(c, p)))),
    "jit_grad": lambda f: jax.jit(jax.grad(lambda c, p: jnp.sum(f(c, p) ** 3))),
    "vmap_grad": lambda f: jax.vmap(jax.grad(lambda c, p: jnp.sum(f(c, p))), in_axes=(0, None)),
}


@pytest.mark.parametrize("mode", sorted(CLOSURE_MODES))
def test_closed_over_values_get_derivatives(mode):
    c = jnp.array([1.3, 0.4]) if mode.startswith("vmap") else jnp.array(1.3)
    p = jnp.array([0.2, -0.7, 1.1])
    transform = CLOSURE_MODES[mode]
    assert_close(transform(closure_solution)(c, p), transform(closure_reference)(c, p))


def test_closure_under_jvp_and_vmap():
    cs = jnp.array([0.5, 1.0, 2.0])
    p = jnp.array([0.2, -0.7])
    f = lambda c: closure_solution(c, p)
    out = jax.vmap(lambda c: jax.jvp(f, (c,), (jnp.ones(()),)))(cs)
    ref = jax.vmap(lambda c: jax.jvp(lambda c: closure_reference(c, p), (c,), (jnp.ones(()),)))(cs)
    assert_close(out, ref)


# --------------------------------------------------------------------------- fixed point

T = lambda x, theta: 0.5 * jnp.cos(x) + theta  # a contraction


@rootdiff.custom_fixed_point(T)
def fixed_point(x, theta):
    return jax.lax.while_loop(
        lambda x: jnp.max(jnp.abs(T(x, theta) - x)) > 1e-15, lambda x: T(x, theta), x
    )


def fixed_point_unrolled(x, theta):
    return jax.lax.fori_loop(0, 200, lambda _, x: T(x, theta), x)


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd", "hessian"])
def test_custom_fixed_point(mode):
    theta = jnp.array([0.1, 0.7, -0.3])
    x0 = jnp.zeros(3)
    f = lambda th: jnp.sum(fixed_point(x0, th) ** 2) if mode == "hessian" else fixed_point(x0, th)
    f_ref = lambda th: (
        jnp.sum(fixed_point_unrolled(x0, th) ** 2)
        if mode == "hessian"
        else fixed_point_unrolled(x0, th)
    )
    transform = getattr(jax, mode)
    assert_close(jax.jit(transform(f))(theta), transform(f_ref)(theta))


# --------------------------------------------------------------------------- linear solvers


def ridge_F(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed_form(lam, X, y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


def ridge_solver_with(solve):
    @rootdiff.custom_root(ridge_F, solve=solve, symmetric=True)
    def ridge(w0, lam, X, y):
        # The user's solver: CG from jax.scipy (a black box; never differentiated).
        A = lambda w: X.T @ (X @ w) + lam * w
        return jax.scipy.sparse.linalg.cg(A, X.T @ y, x0=w0, tol=1e-14, maxiter=500)[0]

    return ridge


XR = jnp.asarray(rng.normal(size=(12, 4)))
YR = jnp.asarray(rng.normal(size=12))
SOLVES = [
    *sorted(rootdiff.linear_solve.SOLVERS),
    functools.partial(rootdiff.linear_solve.cg, tol=1e-13, maxiter=100),
    lambda matvec, b: jax.scipy.sparse.linalg.gmres(matvec, b, tol=1e-13)[0],
]


def _ridge_modes(ridge):
    """grad and jacfwd in (λ, X) and the Hessian in λ of a loss of ``ridge``: one program."""
    w0 = jnp.zeros(4)
    f = lambda lam, X: jnp.sum(jnp.sin(ridge(w0, lam, X, YR)))  # noqa: E731
    argnums = (0, 1)
    return jax.jit(
        lambda lam, X: (
            jax.grad(f, argnums)(lam, X), jax.jacfwd(f, argnums)(lam, X), jax.hessian(f)(lam, X)
        )
    )  # fmt: skip


@pytest.fixture(scope="module")
def ridge_modes_reference():
    closed_form = lambda w0, lam, X, y: ridge_closed_form(lam, X, y)  # noqa: E731
    return _ridge_modes(closed_form)(jnp.array(0.7), XR)


@pytest.mark.parametrize("solve", SOLVES, ids=lambda s: s if isinstance(s, str) else "callable")
def test_every_linear_solver_in_every_mode(solve, ridge_modes_reference):
    got = _ridge_modes(ridge_solver_with(solve))(jnp.array(0.7), XR)
    assert_close(got, ridge_modes_reference, rtol=1e-7)


def test_default_tolerance_gives_1e10_gradients():
    """Default solve must give ~1e-10 relative gradients in float64 (jaxopt's do not)."""
    X = jnp.asarray(rng.normal(size=(400, 250)))  # above DENSE_THRESHOLD: Krylov path
    y = jnp.asarray(rng.normal(size=400))
    assert X.shape[1] > rootdiff.linear_solve.DENSE_THRESHOLD
    g_ref = jax.jit(jax.grad(lambda lam: jnp.sum(ridge_closed_form(lam, X, y) ** 2)))(2.0)
    for symmetric in (True, False):  # CG and GMRES
        ridge = rootdiff.custom_root(ridge_F, symmetric=symmetric)(
            lambda w0, lam, X, y: ridge_closed_form(lam, X, y)
        )
        g = jax.jit(jax.grad(lambda lam: jnp.sum(ridge(jnp.zeros(250), lam, X, y) ** 2)))(2.0)
        assert abs(float(g) - float(g_ref)) <= 1e-10 * abs(float(g_ref))


def test_float32(float32):
    X, y = XR.astype(jnp.float32), YR.astype(jnp.float32)
    ridge = ridge_solver_with("auto")
    g = jax.jit(jax.grad(lambda lam: jnp.sum(ridge(jnp.zeros(4, jnp.float32), lam, X, y) ** 2)))(
        jnp.float32(0.7)
    )
    assert g.dtype == jnp.float32
    # closed form in numpy float64: d/dλ ‖w‖² = −2 wᵀ (XᵀX + λI)⁻¹ w
    Xn, yn = np.asarray(XR), np.asarray(YR)
    H = Xn.T @ Xn + 0.7 * np.eye(4)
    w = np.linalg.solve(H, Xn.T @ yn)
    np.testing.assert_allclose(float(g), -2 * w @ np.linalg.solve(H, w), rtol=1e-4)


# --------------------------------------------------------------------------- root_jvp / root_vjp


def test_root_jvp_and_vjp_match_closed_form():
    @jax.jit  # one program for every product
    def run(lam, X, y):
        args = (lam, X, y)
        w = ridge_closed_form(*args)
        tangents = (jnp.array(1.0), jnp.zeros_like(X), jnp.ones_like(y))
        ref_tan = jax.jvp(ridge_closed_form, args, tangents)[1]
        tan, info = rootdiff.root_jvp(ridge_F, w, args, tangents, return_info=True)
        ct = jnp.arange(4.0)
        ref_ct = jax.vjp(ridge_closed_form, *args)[1](ct)
        outs = [
            rootdiff.root_vjp(ridge_F, w, args, ct, solve=solve, symmetric=True)
            for solve in ("auto", "cg", "gmres")
        ]
        return tan, ref_tan, info, outs, ref_ct

    tan, ref_tan, info, outs, ref_ct = run(jnp.array(0.7), XR, YR)
    assert_close(tan, ref_tan)
    assert float(info.optimality_residual) < 1e-10 and bool(info.linear_solve.converged)
    for out in outs:
        assert_close(out, ref_ct)


def test_root_vjp_info_and_integer_leaves():
    F2 = lambda x, a, k: x**2 - a * k
    out, info = rootdiff.root_vjp(
        F2, jnp.array(2.0), (jnp.array(2.0), jnp.array(2)), jnp.array(1.0), return_info=True
    )
    assert out[1] is None  # integer leaf: no cotangent
    np.testing.assert_allclose(float(out[0]), 2 / (2 * 2.0))
    assert int(info.linear_solve.iterations) == 1  # a 1x1 dense solve


# --------------------------------------------------------------------------- diagnostics


def _ridge_loss_with(check, solve=None, forward_maxiter=500):
    @rootdiff.custom_root(ridge_F, solve=solve or "auto", symmetric=True, check=check)
    def ridge(w0, lam, X, y):
        A = lambda w: X.T @ (X @ w) + lam * w
        return jax.scipy.sparse.linalg.cg(A, X.T @ y, x0=w0, tol=1e-14, maxiter=forward_maxiter)[0]

    return jax.jit(jax.grad(lambda lam: jnp.sum(ridge(jnp.zeros(4), lam, XR, YR) ** 2)))


CG1 = functools.partial(rootdiff.linear_solve.cg, maxiter=1)  # cannot converge on 4x4


def _entry_products(fn, args):
    """Products by the first argument ``W`` at the top level of the compiled program
    (outside its loops): one per evaluation of ``F`` that XLA could not merge."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    comps = {c.split(" ", 1)[0]: c for c in re.split(r"\n(?=%|ENTRY)", hlo)}
    entry = comps["ENTRY"]
    W = re.search(r"(%\S+) = \S+ parameter\(0\)", entry).group(1)
    count = 0
    for line in entry.splitlines():
        m = re.search(r" (dot|fusion)\(([^)]*)\)", line)
        if m and W in m.group(2).split(", "):
            called = re.search(r"calls=(%[\w.\-]+)", line)
            count += m.group(1) == "dot" or (
                called is not None and " dot(" in comps[called.group(1)]
            )
    return count


def test_check_and_derivative_share_one_evaluation_of_F():
    """The forward check evaluates F at the solution, and the derivative linearises F
    there: XLA computes it once, so the check adds no product by W to a gradient
    (a large fixed point spends one pass over W per evaluation)."""
    T = lambda x, W, b: jnp.tanh(W @ x + b)  # noqa: E731
    n = 40
    W = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)) * 0.3 / np.sqrt(n))

    def count(**kw):
        fwd = lambda x, W, b: jax.lax.fori_loop(0, 60, lambda _, x: T(x, W, b), x)  # noqa: E731
        s = rootdiff.custom_fixed_point(T, solve="gmres", **kw)(fwd)
        return _entry_products(
            jax.grad(lambda W, b: jnp.sum(s(jnp.zeros(n), W, b) ** 2)), (W, jnp.ones(n))
        )

    assert count(check="off") == 1
    assert count(residual_tol=1e-8) == count() == 1


def test_backward_nonconvergence_warns_under_jit():
    with pytest.warns(rootdiff.ConvergenceWarning, match="linear solve"):
        _ridge_loss_with("warn", CG1)(0.7)


def test_default_auto_solve_is_checked():
    """The default solve="auto" reports a singular backward system (a double root)."""
    double_root = rootdiff.custom_root(lambda x, a: (x - a) ** 2)(lambda x, a: a)
    with pytest.warns(rootdiff.ConvergenceWarning, match="linear solve"):
        jax.jit(jax.grad(lambda a: double_root(jnp.zeros(2), a).sum()))(jnp.ones(2))


def test_backward_nonconvergence_raises_under_jit():
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(_ridge_loss_with("raise", CG1)(0.7))


def test_backward_nonconvergence_nan_mode():
    assert np.isnan(float(_ridge_loss_with("nan", CG1)(0.7)))
    assert np.isfinite(float(_ridge_loss_with("nan")(0.7)))


def test_forward_nonconvergence_is_reported():
    with pytest.warns(rootdiff.ConvergenceWarning, match="forward solve"):
        _ridge_loss_with("warn", forward_maxiter=1)(0.7)
    with pytest.raises(Exception, match="forward solve"):
        jax.block_until_ready(_ridge_loss_with("raise", forward_maxiter=1)(0.7))


def test_check_under_vmap_reports_only_bad_lanes():
    def wrong_sqrt(x, a):
        return jnp.where(a > 1, jnp.sqrt(a), 0.5)  # wrong for a <= 1

    a = jnp.array([4.0, 0.5, 9.0])
    nan_sqrt = rootdiff.custom_root(lambda x, a: x**2 - a, check="nan")(wrong_sqrt)
    out = jax.jit(jax.vmap(lambda a: nan_sqrt(jnp.array(1.0), a)))(a)
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])
    warn_sqrt = rootdiff.custom_root(lambda x, a: x**2 - a)(wrong_sqrt)
    with pytest.warns(rootdiff.ConvergenceWarning, match="1 of 3"):
        jax.jit(jax.vmap(lambda a: warn_sqrt(jnp.array(1.0), a)))(a)


def test_linear_solve_converged_silently_with_defaults(recwarn):
    _ridge_loss_with("warn")(0.7)
    assert not [w for w in recwarn if issubclass(w.category, rootdiff.ConvergenceWarning)]


# --------------------------------------------------------------------------- errors


def test_error_optimality_fun_wrong_structure():
    bad = rootdiff.custom_root(lambda params, p, W, *, q: params["u"])(newton_while)
    with pytest.raises(ValueError, match=r"must return a pytree with the structure.*params is"):
        bad(INIT, P, W, q=Q)


def test_error_optimality_fun_wrong_shape_and_dtype():
    bad = rootdiff.custom_root(lambda x, a: jnp.sum(x) - a)(lambda x, a: x)
    with pytest.raises(ValueError, match=r"float64\[3\].*returned.*float64\[\]"):
        bad(jnp.ones(3), 1.0)
    bad_dtype = rootdiff.custom_root(lambda x, a: (x - a).astype(jnp.float32))(lambda x, a: x)
    with pytest.raises(ValueError, match="float32"):
        bad_dtype(jnp.ones(3), 1.0)


def test_error_solver_output_does_not_match_init():
    """Seed 003: the solver returns a scalar ν but init_params has shape (3,)."""

    @rootdiff.custom_root(lambda nu, x: jnp.sum(jax.nn.sigmoid(x + nu)) - 2.0)
    def bisect(init, x):
        return jnp.array(0.0)

    with pytest.raises(ValueError, match=r"returned params .*float64\[\].*init_params is .*\[3\]"):
        bisect(jnp.zeros(3), jnp.ones(3))


def test_error_unknown_solve_name():
    with pytest.raises(ValueError, match=r"solve='qr'.*'bicgstab', 'cg', 'cholesky'"):
        rootdiff.custom_root(F, solve="qr")


def test_error_optimality_fun_cannot_accept_arguments():
    bad = rootdiff.custom_root(lambda x, p: x - p)(newton_while)
    with pytest.raises(TypeError, match=r"cannot accept the solver's arguments.*\[q\]"):
        bad(INIT, P, W, q=Q)


def test_error_bad_check_mode():
    with pytest.raises(ValueError, match="check='loud'"):
        rootdiff.custom_root(F, check="loud")


def test_error_has_aux_without_tuple():
    bad = rootdiff.custom_root(F, has_aux=True)(newton_while)
    with pytest.raises(TypeError, match=r"has_aux=True.*\(params, aux\)"):
        bad(INIT, P, W, q=Q)
