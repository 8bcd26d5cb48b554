"""Krylov solvers of :mod:`rootdiff.linear_solve`: CG, BiCGStab, GMRES, CG on the normal equations.

Every solver is called as ``solve(matvec, b, **options)`` on pytrees and returns
``x`` (or ``(x, SolveInfo)`` with ``return_info=True``); see
:mod:`rootdiff.linear_solve` for the options. They follow the textbook algorithms,
written on flat vectors, with a ``jax.lax.while_loop`` per solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rootdiff._linalg_base import (
    MatVec,
    PyTree,
    _finish,
    _matmul,
    _norm,
    _reduced,
    _setup,
    _vdot,
    _zero_count,
)

__all__ = ["cg", "bicgstab", "gmres", "normal_cg"]


def cg(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Conjugate gradient for a symmetric positive definite ``A``: solves ``A x = b``.

    Args:
      matvec: ``v ↦ A v`` on pytrees shaped like ``b``; ``A`` must be SPD
        (or symmetric negative definite).
      b: right-hand side, any pytree of floating arrays (total size ``n``).
      init, tol, atol, maxiter, ridge, M: see the module docstring; ``maxiter``
        defaults to ``10 n``.
      return_info: also return a :class:`SolveInfo`.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x = cg(lambda v: A @ v, jnp.array([1.0, 2.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 2.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    maxiter = 10 * b_flat.size if maxiter is None else maxiter
    # One matvec site in the graph (XLA compile time grows with each product the
    # user's operator emits): an iteration either takes a CG step, A p, or — when
    # the recursive residual says converged, or to start from ``init`` — verifies
    # with the true residual, A x. A failed verification restarts CG from the true
    # residual (residual replacement). ``converged`` always rests on a true residual.
    # The loop body is kept small for the compiler: no vector selects (the x, r, p
    # updates take scalar coefficients), one carried integer for the iteration kind.
    verify0 = init is not None  # r0 = b − A x0 needs a product; zero start: r0 = b
    r0 = b_flat
    z0 = prec(r0)
    gamma0 = _vdot(r0, z0)
    rr0 = jnp.real(_vdot(r0, r0))
    k0 = _zero_count(gamma0)
    # The next iteration's kind, one carried integer (each carried flag would be a
    # kernel of its own): a CG step, a verification, or done (true residual small).
    STEP, VERIFY, DONE = 0, 1, 2
    small0 = jnp.sqrt(rr0) <= thresh
    phase0 = k0 + (VERIFY if verify0 else jnp.where(small0, DONE, STEP))

    def cond(state):
        *_, rr, phase, k = state
        return (phase != DONE) & jnp.isfinite(rr) & ((phase == VERIFY) | (k < maxiter))

    def body(state):
        # On a verification iteration ``p`` holds ``x`` (so the product site is A p).
        x, r, p, gamma, _, phase, k = state
        verify = phase == VERIFY
        Av = mv(p)
        pAp = _vdot(p, Av)
        # Scalar coefficients instead of selects between vectors (a select of vectors
        # is a large kernel for XLA:CPU to compile): a verification keeps x and sets
        # r = b − A x (p holds x) and p = z; a CG step x += α p, r −= α A p.
        alpha = gamma / jnp.where(pAp == 0, 1, pAp)
        one = jnp.ones_like(alpha)
        step = jnp.where(verify, jnp.zeros_like(one), one)
        x_new = x + (step * alpha) * p
        r_new = step * r + (one - step) * b_flat - jnp.where(verify, one, alpha) * Av
        z_new = prec(r_new)
        gamma_new = _vdot(r_new, z_new)
        p_new = z_new + (step * gamma_new / jnp.where(gamma == 0, 1, gamma)) * p
        rr = jnp.real(_vdot(r_new, r_new))
        small = jnp.sqrt(rr) <= thresh
        phase_new = jnp.where(small, jnp.where(verify, DONE, VERIFY), STEP).astype(phase.dtype)
        # p_new, or x_new before a verification: by scalar weights, not a select.
        c = jnp.where(phase_new == VERIFY, one, jnp.zeros_like(one))
        return (
            x_new, r_new, (one - c) * p_new + c * x_new, gamma_new, rr,
            phase_new, k + jnp.where(verify, 0, 1),
        )  # fmt: skip

    init_state = (x0, r0, x0 if verify0 else z0, gamma0, rr0, phase0, k0)
    x, _, _, _, rr, phase, k = jax.lax.while_loop(cond, body, init_state)
    r_norm, done = jnp.sqrt(rr), phase == DONE
    # ``done``: the true residual ``r_norm`` met the tolerance. Otherwise ``r_norm`` is
    # the last (recursive or true) residual, above the tolerance or NaN.
    return _finish(x, r_norm, b_norm, k, thresh, unravel, return_info, converged=done)


def bicgstab(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Preconditioned BiCGStab for a general square ``A``: solves ``A x = b``.

    Args and returns as :func:`cg`; ``A`` need not be symmetric.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[3.0, 1.0], [-1.0, 2.0]])
      >>> x = bicgstab(lambda v: A @ v, jnp.array([1.0, 0.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 0.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    maxiter = 10 * b_flat.size if maxiter is None else maxiter
    r0 = b_flat if init is None else b_flat - mv(x0)  # no matvec for a zero start
    one = jnp.ones_like(b_norm, dtype=b_flat.dtype)
    zero = jnp.zeros_like(b_flat)

    def cond(state):
        _, r, *_, k = state
        return (_norm(r) > thresh) & (k < maxiter)

    def body(state):
        x, r, rhat, p, v, rho, alpha, omega, k = state
        rho_new = _vdot(rhat, r)
        # Breakdown (rhat ⊥ r, or ω = 0 from s ⊥ As): the recurrences would divide by
        # zero. Restart them from the current residual (rhat = r, p = r) instead.
        restart = (rho_new == 0) | (rho == 0) | (omega == 0)
        rhat = jnp.where(restart, r, rhat)
        rho_new = jnp.where(restart, _vdot(r, r), rho_new)
        safe = lambda d: jnp.where(restart, 1, d)  # noqa: E731
        beta = jnp.where(restart, 0, (rho_new / safe(rho)) * (alpha / safe(omega)))
        p = r + beta * (p - omega * v)
        phat = prec(p)
        v = mv(phat)
        rv = _vdot(rhat, v)
        alpha = jnp.where(rv == 0, 0, rho_new / jnp.where(rv == 0, 1, rv))
        s = r - alpha * v
        shat = prec(s)
        t = mv(shat)
        tt = _vdot(t, t)
        omega = jnp.where(tt > 0, _vdot(t, s) / jnp.where(tt > 0, tt, 1), 0)
        x = x + alpha * phat + omega * shat
        r = s - omega * t
        return x, r, rhat, p, v, rho_new, alpha, omega, k + 1

    init_state = (x0, r0, r0, zero, zero, one, one, one, _zero_count(b_norm))
    x, *_, k = jax.lax.while_loop(cond, body, init_state)
    r_norm = _norm(b_flat - mv(x))
    return _finish(x, r_norm, b_norm, k, thresh, unravel, return_info)


def gmres(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    restart: int = 20,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """Restarted GMRES(``restart``) for a general square ``A``: solves ``A x = b``.

    Each cycle grows an Arnoldi basis (classical Gram–Schmidt with one
    re-orthogonalisation, as two matrix products) while Givens rotations keep the
    least-squares residual ``‖b − A x‖`` current, so a cycle stops as soon as it
    meets ``tol`` — no matvec is spent past convergence. The next cycle starts
    from the exact residual ``b − A x`` (one matvec), which also verifies
    convergence. ``M`` is a right preconditioner. ``maxiter`` caps the number of
    Arnoldi matvecs (default ``10 n``).

    The whole solve is one ``while_loop`` with a single product by ``A``: an
    iteration either extends the basis (``A M vⱼ``) or starts a cycle (``A x``).
    XLA's compile time grows with every copy of the user's operator in the graph.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[3.0, 1.0], [-1.0, 2.0]])
      >>> x = gmres(lambda v: A @ v, jnp.array([1.0, 0.0]))
      >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 0.0]), atol=1e-5))
      True
    """
    mv, b_flat, unravel, x0, prec, b_norm, thresh = _setup(matvec, b, init, tol, atol, ridge, M)
    n = b_flat.size
    maxiter = 10 * n if maxiter is None else maxiter
    m = max(1, min(restart, n, maxiter))
    dtype = b_flat.dtype
    tiny = jnp.finfo(dtype).tiny
    eye = jnp.eye(m, dtype=dtype)
    red = _reduced(b_flat)

    def safe(v, eps=0):
        return jnp.where(jnp.abs(v) > eps, v, 1)

    def correction(V, R, Q, beta, j):
        # x update of a cycle after j steps: M V_j y with R_j y = g_j, g = β Q e₁.
        active = jnp.arange(m) < j
        # Unused columns become identity rows so that the triangular solve ignores them.
        R_j = jnp.where(active[None, :] & active[:, None], R[:m], eye)
        # A zero pivot (breakdown) divides by 1: the diagonal replaced exactly, as
        # ``d + (safe(d) − d)`` on it (not a scatter, a larger kernel to compile). The
        # diagonal's indicator is built here: the closed-over ``eye`` reaches this
        # branch of a ``cond`` device-varying under ``shard_map``, and comparing it
        # with a constant, or adding it to R_j, fails JAX's varying-axes check.
        diag = jnp.diagonal(R_j)
        on_diag = (jnp.arange(m)[:, None] == jnp.arange(m)[None, :]).astype(dtype)
        R_j = R_j + on_diag * (safe(diag) - diag)[None, :]
        g = jnp.where(active, beta * Q[:m, 0], 0)
        # As the transposed lower-triangular system: LAPACK reads the row-major R_j
        # as its column-major transpose, so XLA needs no transposed copy of it.
        y = jax.scipy.linalg.solve_triangular(R_j.T, g, lower=True, trans="T")
        return prec(y @ V[:m])  # = V[:m]ᵀ y, without transposing V

    def start_cycle(state, Ax):
        # r = b − A x starts the basis; its norm is the true residual of x.
        x, V, *_, it = state
        r = b_flat - Ax
        beta = _norm(r)
        # The basis is built from r so that it carries r's sharding (rows split like
        # the vectors, never gathered); the small matrices are replicated and typed
        # like the data (see _zero_count).
        V = jnp.zeros_like(V).at[0].set(r / safe(beta))
        zero = jnp.zeros_like(beta, dtype=dtype)
        Q = jnp.eye(m + 1, dtype=dtype) + zero  # accumulated Givens rotations
        R = jnp.zeros((m + 1, m), dtype) + zero  # Hessenberg, rotated to upper triangular
        done = beta <= thresh
        return x, V, Q, R, beta, beta, _zero_count(beta), jnp.zeros_like(done), done, it

    def arnoldi(state, w):
        x, V, Q, R, beta, _, j, _, _, it = state
        h = _matmul(V, w, red)  # rows > j of V are zero
        w = w - h @ V
        h2 = _matmul(V, w, red)  # re-orthogonalise (CGS2)
        w = w - h2 @ V
        h = h + h2
        h_next = _norm(w)
        # Normalised by a scalar factor (0 at a breakdown), not a select of vectors.
        V = V.at[j + 1].set(w * jnp.where(h_next > tiny, 1 / safe(h_next, tiny), 0))
        # The small (m + 1)-sized updates below select rows and columns by masks, not
        # by dynamic slices: XLA fuses them into a few kernels (compile time grows
        # with the kernels of the loop body, run time is the products by A and V).
        rows = jnp.arange(m + 1)
        at_j, at_j1 = rows == j, rows == j + 1
        h = Q @ jnp.where(at_j1, h_next, h)  # the previous rotations (row j + 1 of Q is e_{j+1})
        hj, hj1 = jnp.sum(jnp.where(at_j, h, 0)), jnp.sum(jnp.where(at_j1, h, 0))
        denom = jnp.hypot(hj, hj1)
        c = jnp.where(denom > 0, hj / safe(denom), 1)
        s = jnp.where(denom > 0, hj1 / safe(denom), 0)
        # Rows j, j + 1 of Q rotated, as the product by the rotation G (exact: the
        # other terms of each sum are zeros), fewer and smaller kernels than row selects.
        fj, fj1 = at_j.astype(dtype), at_j1.astype(dtype)
        eye1 = jnp.eye(m + 1, dtype=dtype)
        G = (
            eye1 + eye1 * ((c - 1) * (fj + fj1))[None, :]
            + s * (fj[:, None] * fj1[None, :] - fj1[:, None] * fj[None, :])
        )  # fmt: skip
        Q = G @ Q
        col = jnp.where(at_j, denom, jnp.where(at_j1, 0, h))
        R = jnp.where(jnp.arange(m)[None, :] == j, col[:, None], R)
        j, it = j + 1, it + 1
        res = jnp.abs(beta * jnp.sum(fj1 * Q[:, 0]))  # least-squares residual after j steps
        end = (res <= thresh) | (j >= m) | (it >= maxiter)
        return x, V, Q, R, beta, res, j, end, jnp.zeros_like(end), it

    def cond(state):
        *_, res, _, start, done, it = state
        return ~done & jnp.isfinite(res) & (start | (it < maxiter))

    def body(state):
        x, V, Q, R, beta, res, j, start, done, it = state
        x = jax.lax.cond(start, lambda: x + correction(V, R, Q, beta, j), lambda: x)
        # x at a cycle start, else the next basis vector: by scalar weights, not a
        # select between vectors (a far larger kernel for XLA:CPU to compile).
        c = jnp.where(start, 1, 0).astype(dtype)
        Av = mv(c * x + (1 - c) * prec(V[jnp.minimum(j, m)]))
        state = (x, V, Q, R, beta, res, j, start, done, it)
        return jax.lax.cond(start, start_cycle, arnoldi, state, Av)

    V0 = jnp.broadcast_to(jnp.zeros_like(b_flat)[None], (m + 1, n))
    state = (x0, V0, None, None, b_norm, b_norm, None, None, None, _zero_count(b_norm))
    if init is None:  # r0 = b: the first cycle starts without a product
        state = start_cycle(state, jnp.zeros_like(b_flat))
    else:  # the first iteration computes b − A x0
        state = start_cycle(state, b_flat)
        state = state[:7] + (jnp.ones_like(state[8]), jnp.zeros_like(state[8]), state[9])
    # The loop ends at a cycle start (the cycle's correction applied, ``res`` the true
    # residual), also out of budget: an Arnoldi step that exhausts ``maxiter`` ends
    # its cycle, and a cycle end always runs one more iteration. Only a non-finite
    # ``res`` ends it mid-cycle: x is then NaN, as the correction would have made it.
    # So there is no correction after the loop (a second copy of the cycle's end).
    x, *_, res, _, _, done, it = jax.lax.while_loop(cond, body, state)
    x = jnp.where(jnp.isfinite(res), x, jnp.nan)
    return _finish(x, res, b_norm, it, thresh, unravel, return_info, converged=done)


def normal_cg(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    M: MatVec | None = None,
    return_info: bool = False,
):
    """CG on the normal equations ``(AᵀA + ridge·I) x = Aᵀ b``: least squares.

    ``A`` may be non-square: ``matvec`` maps the space of ``x`` (``n`` numbers) to
    the space of ``b`` (``m`` numbers), e.g. the Jacobian of an over-determined
    optimality condition. The space of ``x`` is given by ``init`` (a pytree shaped
    like ``x``, also the starting point); without ``init`` it is ``b``'s space
    (square ``A``). Returns the least-squares solution ``argmin ‖b − A x‖`` (the
    minimum-norm one from a zero start when ``A`` is rank deficient), at the price
    of squaring the condition number. ``Aᵀ`` is ``jax.linear_transpose`` of
    ``matvec``; ``M`` preconditions the normal equations (a map on ``x``'s space).

    ``info.residual_norm`` is ``‖b − A x‖``, which need not vanish for an
    inconsistent system; ``info.converged`` refers to the normal equations'
    residual ``‖Aᵀ(b − A x) − ridge·x‖``, which the iteration controls.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 × 2
      >>> x = normal_cg(lambda v: A @ v, jnp.array([1.0, 1.0, 0.0]), init=jnp.zeros(2))
      >>> [round(float(v), 4) for v in x]
      [0.3333, 0.3333]
    """
    b_flat, _ = ravel_pytree(b)
    if not jnp.issubdtype(b_flat.dtype, jnp.inexact):
        raise TypeError(f"normal_cg: b must be floating point, got dtype {b_flat.dtype}")
    x_flat, unravel_x = ravel_pytree(b if init is None else init)
    x_flat = x_flat.astype(b_flat.dtype)

    def mv(x):
        return ravel_pytree(matvec(unravel_x(x)))[0].astype(b_flat.dtype)

    try:
        out = jax.eval_shape(mv, x_flat)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "normal_cg: matvec failed on a vector shaped like "
            + ("b; for a non-square A pass init= shaped like x" if init is None else "init")
            + f" ({e})"
        ) from e
    if out.shape != b_flat.shape:
        raise ValueError(
            f"normal_cg: matvec maps {x_flat.size} numbers to {out.shape[0]}, but b has "
            f"{b_flat.size}; the output of matvec must be shaped like b"
            + ("" if init is not None else " (for a non-square A pass init= shaped like x)")
        )
    rmv = jax.linear_transpose(mv, x_flat)
    normal_mv = lambda x: rmv(mv(x))[0]  # noqa: E731
    prec = None if M is None else (lambda r: ravel_pytree(M(unravel_x(r)))[0].astype(r.dtype))
    x, info = cg(
        normal_mv, rmv(b_flat)[0], init=None if init is None else x_flat,
        tol=tol, atol=atol, maxiter=maxiter, ridge=ridge, M=prec, return_info=True,
    )  # fmt: skip
    info = info._replace(residual_norm=_norm(b_flat - mv(x)), b_norm=_norm(b_flat))
    out = unravel_x(x)
    return (out, info) if return_info else out


def cg_estimate(
    matvec: MatVec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float | None = None,
    **_: object,
):
    """Plain CG on the recursive residual: an estimate of ``A⁻¹ b`` (``A`` SPD).

    For error estimates that need a few digits (the forward check's Newton step),
    not for derivatives: it stops when the *recursive* residual meets
    ``max(tol · ‖b‖, atol)`` and does not verify on the true residual (which
    :func:`cg` does, at the price of a larger loop for XLA to compile). The
    recursive residual tracks the true one closely until far below ``sqrt(eps)``,
    so for the tolerances of an estimate the two agree. Returns ``(x, converged)``.
    """
    mv, b_flat, unravel, x0, _, b_norm, thresh = _setup(matvec, b, None, tol, atol, ridge, None)
    maxiter = 10 * b_flat.size if maxiter is None else maxiter
    rr0 = jnp.real(_vdot(b_flat, b_flat))

    def cond(state):
        *_, rr, k = state
        return (jnp.sqrt(rr) > thresh) & jnp.isfinite(rr) & (k < maxiter)

    def body(state):
        x, r, p, rr, k = state
        Ap = mv(p)
        pAp = _vdot(p, Ap)
        alpha = rr / jnp.where(pAp == 0, 1, pAp)
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = jnp.real(_vdot(r, r))
        p = r + (rr_new / jnp.where(rr == 0, 1, rr)) * p
        return x, r, p, rr_new, k + 1

    x, _, _, rr, _ = jax.lax.while_loop(cond, body, (x0, b_flat, b_flat, rr0, _zero_count(rr0)))
    return unravel(x), jnp.sqrt(rr) <= thresh


def gmres_estimate(
    matvec: MatVec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    restart: int = 20,
    ridge: float | None = None,
    **_: object,
):
    """Restarted *simpler GMRES* on its recursive residual: an estimate of ``A⁻¹ b``.

    The nonsymmetric counterpart of :func:`cg_estimate`, for the forward check's
    Newton step. Like GMRES it minimises ``‖b − A x‖`` over a Krylov space of up to
    ``restart`` vectors per cycle, but in the form of Walker and Zhou's simpler
    GMRES (a generalised conjugate residual method): it keeps an orthonormal basis
    ``Q`` of ``A`` applied to the search directions ``P`` (``A P = Q``), so that each
    step updates ``x`` and ``r`` at once, ``α = ⟨q, r⟩``, ``x += α p``, ``r −= α q``,
    with no Hessenberg matrix, Givens rotations or triangular solve, and no
    verification on the true residual: a loop of about a third of :func:`gmres`'s
    kernels for XLA to compile. A cycle's first direction is the residual, the next
    ones the last ``q`` (the Krylov space of ``A`` and ``r``, as in GMRES).
    Stops when the recursive residual meets ``max(tol · ‖b‖, atol)``; the loss of
    accuracy of simpler GMRES on the way to machine precision is far below the
    tolerances of an estimate. Returns ``(x, converged)``.
    """
    mv, b_flat, unravel, x0, _, b_norm, thresh = _setup(matvec, b, None, tol, atol, ridge, None)
    n = b_flat.size
    maxiter = 10 * n if maxiter is None else maxiter
    m = max(1, min(restart, n))
    dtype = b_flat.dtype
    tiny = jnp.finfo(dtype).tiny
    red = _reduced(b_flat)
    rr0 = jnp.real(_vdot(b_flat, b_flat))

    def cond(state):
        *_, rr, k = state
        return (jnp.sqrt(rr) > thresh) & jnp.isfinite(rr) & (k < maxiter)

    def body(state):
        x, r, q_last, P, Q, rr, k = state
        j = k % m  # position in the cycle; rows >= j of P and Q are stale, masked out
        start = (j == 0).astype(dtype)
        v = start * r + (1 - start) * q_last  # scalar weights, not a select of vectors
        w = mv(v)
        live = (jnp.arange(m) < j).astype(dtype)
        h = live * _matmul(Q, w, red)
        w, v = w - h @ Q, v - h @ P
        h2 = live * _matmul(Q, w, red)  # re-orthogonalise (CGS2)
        w, v = w - h2 @ Q, v - h2 @ P
        nrm = _norm(w)
        s = jnp.where(nrm > tiny, 1 / jnp.where(nrm > tiny, nrm, 1), 0)
        q, p = w * s, v * s  # A p = q, ‖q‖ = 1 (both 0 at a breakdown)
        alpha = _vdot(q, r)
        x, r = x + alpha * p, r - alpha * q
        P, Q = P.at[j].set(p), Q.at[j].set(q)
        return x, r, q, P, Q, jnp.real(_vdot(r, r)), k + 1

    B0 = jnp.broadcast_to(jnp.zeros_like(b_flat)[None], (m, n))
    state = (x0, b_flat, b_flat, B0, B0, rr0, _zero_count(rr0))
    x, *_, rr, _ = jax.lax.while_loop(cond, body, state)
    return unravel(x), jnp.sqrt(rr) <= thresh
