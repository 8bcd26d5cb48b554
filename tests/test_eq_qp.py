"""solve_eq_qp against a plain dense KKT solve differentiated by JAX (the reference)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rootdiff

N, P = 6, 2


def _problem(seed=0, n=N, p=P, dtype=np.float64):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T + np.eye(n)
    c, A, b = rng.normal(size=n), rng.normal(size=(p, n)), rng.normal(size=p)
    return tuple(jnp.asarray(v, dtype) for v in (Q, c, A, b))


def dense_kkt(Q, c, A, b):
    """Reference: ``jnp.linalg.solve`` of the KKT system, differentiated by JAX."""
    n, p = c.shape[0], b.shape[0]
    K = jnp.block([[0.5 * (Q + Q.T), A.T], [A, jnp.zeros((p, p), A.dtype)]])
    sol = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
    return sol[:n], sol[n:]


def loss(solver):
    def f(Q, c, A, b):
        x, y = solver(Q, c, A, b)
        return jnp.sum(jnp.sin(x)) + jnp.sum(y**2)

    return f


ARGNUMS = (0, 1, 2, 3)
grad_ours = jax.jit(jax.grad(loss(rootdiff.solve_eq_qp), argnums=ARGNUMS))
grad_ref = jax.jit(jax.grad(loss(dense_kkt), argnums=ARGNUMS))


def test_solution_satisfies_kkt_and_closed_form():
    Q, c, A, b = _problem()
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    np.testing.assert_allclose(Q @ x + c + A.T @ y, 0, atol=1e-12)
    np.testing.assert_allclose(A @ x, b, atol=1e-12)
    # Closed form without constraints: x = -Q⁻¹c.
    x0, y0 = rootdiff.solve_eq_qp(Q, c, jnp.zeros((0, N)), jnp.zeros(0))
    np.testing.assert_allclose(x0, -jnp.linalg.solve(Q, c), rtol=1e-12)
    assert y0.shape == (0,)


def test_grad_matches_dense_reference():
    args = _problem(1)
    for g, r in zip(grad_ours(*args), grad_ref(*args)):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_check_grads_finite_differences():
    Q, c, A, b = _problem(2, n=3, p=1)
    f = jax.jit(loss(rootdiff.solve_eq_qp))
    check_grads(f, (Q, c, A, b), order=2, modes=["fwd", "rev"], eps=1e-4)


def _all_modes(solver):
    """jvp, jacfwd, jacrev in (c, b) and the Hessian in A, in one jitted function."""

    @jax.jit
    def modes(Q, c, A, b):
        f = lambda c, b: solver(Q, c, A, b)
        tangents = (jnp.ones_like(c), jnp.arange(P, dtype=b.dtype))
        _, t = jax.jvp(f, (c, b), tangents)
        hess = jax.hessian(loss(solver), argnums=2)(Q, c, A, b)
        return t, jax.jacfwd(f, argnums=(0, 1))(c, b), jax.jacrev(f, argnums=(0, 1))(c, b), hess

    return modes


def test_jvp_jacfwd_jacrev_hessian():
    args = _problem(3)
    ours, ref = _all_modes(rootdiff.solve_eq_qp)(*args), _all_modes(dense_kkt)(*args)
    for a, r in zip(jax.tree.leaves(ours[:3]), jax.tree.leaves(ref[:3])):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours[3], ref[3], rtol=1e-9, atol=1e-11)


def test_gradient_wrt_Q_is_symmetric():
    args = _problem(4)
    gQ = grad_ours(*args)[0]
    np.testing.assert_allclose(gQ, gQ.T, atol=1e-14)


def test_vmap_batch_matches_loop():
    batch = [_problem(s) for s in range(4)]
    stacked = [jnp.stack(v) for v in zip(*batch)]
    xs, ys = jax.jit(jax.vmap(rootdiff.solve_eq_qp))(*stacked)
    gs = jax.vmap(grad_ours)(*stacked)
    for i, args in enumerate(batch):
        x, y = rootdiff.solve_eq_qp(*args)
        np.testing.assert_allclose(xs[i], x, rtol=1e-12)
        np.testing.assert_allclose(ys[i], y, rtol=1e-12)
        for g, r in zip(gs, grad_ref(*args)):
            np.testing.assert_allclose(g[i], r, rtol=1e-9, atol=1e-12)


def test_derivative_reuses_the_forward_factorisation():
    """jit(value_and_grad) contains exactly one LU factorisation (the reference has one too)."""
    args = _problem(5)
    vg = jax.value_and_grad(loss(rootdiff.solve_eq_qp), argnums=ARGNUMS)
    n_lu = sum(1 for e in jax.make_jaxpr(vg)(*args).eqns for _ in _lu_eqns(e))
    assert n_lu == 1, n_lu


def _triangular_solves(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return len(re.findall(r"trsm|triangular-solve\(", hlo))


def test_no_more_triangular_solves_than_a_dense_solve():
    """Value and gradient: one forward and one adjoint solve with the factorisation, as
    ``jnp.linalg.solve`` differentiated by JAX (no refinement solves)."""
    args = _problem(5)
    ours = _triangular_solves(jax.value_and_grad(loss(rootdiff.solve_eq_qp), argnums=1), *args)
    ref = _triangular_solves(jax.value_and_grad(loss(dense_kkt), argnums=1), *args)
    assert 0 < ours <= ref, (ours, ref)


def _lu_eqns(eqn):
    """Yield every ``lu`` primitive in ``eqn`` and its sub-jaxprs."""
    if eqn.primitive.name == "lu":
        yield eqn
    for param in eqn.params.values():
        subs = param if isinstance(param, (tuple, list)) else [param]
        for sub in subs:
            jaxpr = getattr(sub, "jaxpr", sub)
            for e in getattr(jaxpr, "eqns", []):
                yield from _lu_eqns(e)


@jax.jit
def _matrix_free(Q, c, A, b):
    x, y = rootdiff.solve_eq_qp(None, c, A, b, matvec_Q=lambda v: Q @ v)

    # Derivatives reach arrays closed over by matvec_Q.
    def f(Q, c):
        sym = 0.5 * (Q + Q.T)
        return loss(
            lambda Q, c, A, b: rootdiff.solve_eq_qp(None, c, A, b, matvec_Q=lambda v: sym @ v)
        )(Q, c, A, b)

    return x, y, jax.grad(f, argnums=(0, 1))(Q, c)


def test_matrix_free_path_matches_dense():
    Q, c, A, b = _problem(6)
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    xm, ym, (gQ, gc) = _matrix_free(Q, c, A, b)
    np.testing.assert_allclose(xm, x, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ym, y, rtol=1e-9, atol=1e-10)
    rQ, rc = grad_ref(Q, c, A, b)[:2]
    np.testing.assert_allclose(gQ, rQ, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gc, rc, rtol=1e-7, atol=1e-9)


def test_float32(float32):
    Q, c, A, b = _problem(7, dtype=np.float32)
    x, _ = rootdiff.solve_eq_qp(Q, c, A, b)
    assert x.dtype == jnp.float32
    g = grad_ours(Q, c, A, b)[1]
    r = grad_ref(Q, c, A, b)[1]
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)


def test_shape_errors():
    Q, c, A, b = _problem()
    with pytest.raises(ValueError, match="A must have shape"):
        rootdiff.solve_eq_qp(Q, c, A[:, :3], b)
    with pytest.raises(ValueError, match="Q must have shape"):
        rootdiff.solve_eq_qp(Q[:3], c, A, b)


# --------------------------------------------------------------------------- singular, flagged


def test_inconsistent_constraints_are_reported():
    """x₁ + x₂ = 1 and x₁ + x₂ = 2: no feasible point; never a silent answer."""
    Q, c = jnp.eye(3), jnp.array([1.0, 2.0, 3.0])
    A, b = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), jnp.array([1.0, 2.0])
    with pytest.warns(rootdiff.ConvergenceWarning, match="solve_eq_qp"):
        rootdiff.solve_eq_qp(Q, c, A, b)
    with pytest.raises(Exception, match="solve_eq_qp"):
        jax.block_until_ready(rootdiff.solve_eq_qp(Q, c, A, b, check="raise"))
    x, _ = rootdiff.solve_eq_qp(Q, c, A, b, check="nan")
    assert np.isnan(x).all()
    g = jax.grad(lambda c: rootdiff.solve_eq_qp(Q, c, A, b, check="nan")[0].sum())(c)
    assert np.isnan(g).all()


def test_singular_but_solvable_kkt_gives_a_solution():
    # A repeated constraint row: x is unique, y is not (y₁ + y₂ is).
    Q, c = jnp.eye(3), jnp.array([1.0, 2.0, 3.0])
    A, b = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), jnp.array([1.0, 1.0])
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    x1, y1 = rootdiff.solve_eq_qp(Q, c, A[:1], b[:1])
    np.testing.assert_allclose(x, x1, atol=1e-14)
    assert float(y.sum()) == pytest.approx(float(y1[0]), rel=1e-13)
    g = jax.grad(lambda c: jnp.sum(jnp.sin(rootdiff.solve_eq_qp(Q, c, A, b)[0])))(c)
    g1 = jax.grad(lambda c: jnp.sum(jnp.sin(rootdiff.solve_eq_qp(Q, c, A[:1], b[:1])[0])))(c)
    np.testing.assert_allclose(g, g1, atol=1e-13)
    # A singular Q with c in its range and no constraints: a minimiser, finite.
    Qs, cs = jnp.diag(jnp.array([2.0, 1.0, 0.0])), jnp.array([1.0, 2.0, 0.0])
    x, _ = rootdiff.solve_eq_qp(Qs, cs, jnp.zeros((0, 3)), jnp.zeros(0))
    np.testing.assert_allclose(Qs @ x + cs, 0.0, atol=1e-14)
    assert np.isfinite(x).all()
    # c outside the range: unbounded below, reported.
    with pytest.warns(rootdiff.ConvergenceWarning, match="solve_eq_qp"):
        rootdiff.solve_eq_qp(Qs, cs.at[2].set(1.0), jnp.zeros((0, 3)), jnp.zeros(0))


def _eqns(jaxpr):
    """Every equation of ``jaxpr`` and of its sub-jaxprs."""
    for e in jaxpr.eqns:
        yield e
        for param in e.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_the_shift_reads_only_the_diagonal_of_Q():
    """δ needs max|Q|, which for a positive semidefinite Q is max|diag Q|: no maximum
    over the whole of Q (one more pass over it) is traced, with the check on or off
    (the check's sums are its products ``Q x`` and ``Qᵀx``)."""
    Q, c, A, b = _problem(12)
    for check in ("warn", "off"):
        jaxpr = jax.make_jaxpr(lambda *a: rootdiff.solve_eq_qp(*a, check=check))(Q, c, A, b)
        full = [
            e for e in _eqns(jaxpr.jaxpr)
            if e.primitive.name.startswith("reduce") and e.primitive.name != "reduce_sum"
            and any(getattr(v.aval, "shape", ())[-2:] == (N, N) for v in e.invars)
        ]  # fmt: skip
        assert not full, full


def test_singular_indefinite_q_with_zero_diagonal_is_reported():
    """δ = eps·max(max|diag Q|, max|A|) = 0 here: the singular K gives NaN, reported."""
    Q = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    c = jnp.array([1.0, 2.0, 0.0])
    with pytest.warns(rootdiff.ConvergenceWarning, match="solve_eq_qp"):
        rootdiff.solve_eq_qp(Q, c, jnp.zeros((0, 3)), jnp.zeros(0))


@jax.jit
def _solve_and_grad(Q, c, A, b):
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    g = jax.grad(lambda b: rootdiff.solve_eq_qp(Q, c, A, b)[0].astype(jnp.float32).sum())(b)
    return x, y, g


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_is_solved_in_float32(dtype):
    half = [a.astype(dtype) for a in _problem(8, dtype=np.float32)]
    x, y, g = _solve_and_grad(*half)
    assert x.dtype == y.dtype == g.dtype == dtype
    ref, _, g_ref = _solve_and_grad(*[a.astype(jnp.float32) for a in half])
    np.testing.assert_allclose(x.astype(np.float32), ref.astype(dtype).astype(np.float32))
    np.testing.assert_allclose(g.astype(np.float32), g_ref.astype(dtype).astype(np.float32))


def _matrix_writes(fn, args, n):
    """Elements written by the compiled program's top-level instructions into
    matrices of at least ``n`` rows and columns (K, its blocks, its factors)."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    entry = hlo[hlo.index("\nENTRY") :]
    kinds = "fusion|copy|custom-call|add|concatenate|transpose"
    shapes = re.findall(rf"= \(?f64\[(\d+),(\d+)\][^ ]* (?:{kinds})\(", entry)
    return sum(int(a) * int(b) for a, b in shapes if min(int(a), int(b)) >= n)


def test_fewer_passes_over_K_than_a_dense_solve():
    """Value and gradient, check on: K is written once by its assembly (one fused
    kernel), then by the factorisation (in place) and its NaN mask, and never copied, shifted or
    transposed again; ``jnp.block`` (the dense reference) writes the block rows and
    then copies them into K. (At this size XLA:CPU no longer fuses that copy.)"""
    n, p = 300, 60
    args = [jax.ShapeDtypeStruct(s, jnp.float64) for s in [(n, n), (n,), (p, n), (p,)]]
    ours = _matrix_writes(jax.value_and_grad(loss(rootdiff.solve_eq_qp), argnums=1), args, p)
    ref = _matrix_writes(jax.value_and_grad(loss(dense_kkt), argnums=1), args, p)
    assert 0 < ours <= 2 * (n + p) ** 2 < ref, (ours, ref)  # K and its NaN mask


def test_dense_check_measures_the_relative_kkt_residual():
    """The dense path's check (one fused reduction) computes the same relative KKT
    residual as the generic measure, for a primal and for a dual defect."""
    from rootdiff.solvers import eq_qp as E

    Q, c, A, b = _problem(11)
    x, y = rootdiff.solve_eq_qp(Q, c, A, b)
    rhs = jnp.concatenate([-c, b])
    for dx, dy in [(1e-3, 0.0), (0.0, 1e-3), (0.0, 0.0)]:
        xs, ys = x + dx * jnp.arange(N), y + dy * jnp.arange(P)
        res = -jnp.concatenate(E.eq_qp_kkt_residual((xs, ys), Q, c, A, b))
        ok, ref = E._kkt_ok((xs, ys), res, c, A, b)
        v = jnp.concatenate([xs, ys])
        ok_d, got = E._kkt_ok_dense(Q, A, jnp.max(jnp.abs(A)), v, rhs)
        assert bool(ok_d) == bool(ok) == (dx == dy == 0.0)
        # At the solution both are rounding-level (their sums are rounded differently).
        np.testing.assert_allclose(got.reshape(()), ref, rtol=1e-12, atol=1e-14)


def _kernels(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return len(re.findall(r"\s(fusion|dot|while|conditional|custom-call|sort)\(", hlo))


def test_the_check_adds_few_kernels():
    """The forward check (K v − rhs, its maxima, the report) is compiled in at most
    12 more kernels than ``check="off"`` (XLA:CPU spends ~10 ms per kernel), at a
    size where XLA:CPU splits a plain one-dimensional reduction into three kernels."""
    args = _problem(5, n=40, p=8)
    vg = lambda **kw: jax.value_and_grad(  # noqa: E731
        loss(lambda *a: rootdiff.solve_eq_qp(*a, **kw)), argnums=1
    )
    extra = _kernels(vg(), *args) - _kernels(vg(check="off"), *args)
    assert 0 < extra <= 12, extra


def test_without_the_check_fewer_kernels_than_a_dense_solve():
    """Value and gradient with ``check="off"``: fewer kernels than ``jnp.linalg.solve``
    (the shift's two maxima are one reduction, K one fused assembly)."""
    n, p = 300, 60  # 1-D reductions of more than 32 elements are 3 kernels on XLA:CPU
    args = [jax.ShapeDtypeStruct(s, jnp.float64) for s in [(n, n), (n,), (p, n), (p,)]]
    off = lambda *a: rootdiff.solve_eq_qp(*a, check="off")  # noqa: E731
    ours = _kernels(jax.value_and_grad(loss(off), argnums=1), *args)
    ref = _kernels(jax.value_and_grad(loss(dense_kkt), argnums=1), *args)
    assert ours < ref, (ours, ref)


def test_the_check_writes_no_matrix_sized_temporary():
    """Value and gradient in (Q, c, A, b) of a loss that symmetrises ``Q``, check on:
    the check's ``K v`` (four matrix-vector products) writes at most one ``n × n``
    or ``p × n`` array that ``check="off"`` does not: ``(Q + Qᵀ)/2``, their operand.
    As multiply-and-sum reductions, XLA:CPU also wrote ``x`` or ``y`` broadcast to a
    matrix's shape (the check then cost half of the solve's time at n = 500). The
    same LAPACK calls as the dense solve."""
    n, p = 40, 8
    args = _problem(5, n=n, p=p)

    def full(solver):
        return loss(lambda Q, c, A, b: solver(0.5 * (Q + Q.T), c, A, b))

    def written(**kw):
        solver = lambda *a: rootdiff.solve_eq_qp(*a, **kw)  # noqa: E731
        hlo = jax.jit(jax.grad(full(solver), argnums=ARGNUMS)).lower(*args).compile().as_text()
        hlo = hlo[hlo.index("ENTRY") :]
        big = rf"= f64\[({n},{n}|{p},{n}|{n},{p})\]\{{[^}}]*\}} (fusion|copy|transpose)\("
        return len(re.findall(big, hlo)), sorted(re.findall(r"lapack_\w+", hlo))

    (on, lapack), (off, _) = written(), written(check="off")
    assert on <= off + 1, (on, off)
    hlo = jax.jit(jax.grad(full(dense_kkt), argnums=ARGNUMS)).lower(*args).compile().as_text()
    assert lapack == sorted(re.findall(r"lapack_\w+", hlo)), lapack
