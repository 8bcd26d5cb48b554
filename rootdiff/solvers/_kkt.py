r"""Dense KKT linear algebra of the QP solver: one regularised reduced system.

Every linear system :func:`rootdiff.solve_qp` solves (interior-point steps,
polishing, derivatives) is a Newton system of the KKT conditions,

.. math::  \begin{bmatrix} Q & A^⊤ & G^⊤ \\ A & 0 & 0 \\ G & 0 & −D \end{bmatrix}
           \begin{bmatrix} d_x \\ d_y \\ d_z \end{bmatrix} = r,

with ``D`` diagonal, ``D ≥ 0``. It is solved by eliminating ``d_z = W (G d_x − r_z)``
(``W = (D + δ)^{-1}``, capped at ``1/δ``) into the ``(n + p)``-square *regularised*
matrix ``K = [[Q + ρI + GᵀWG, Aᵀ], [A, −δI]]``, which is quasi-definite (positive
then negative pivots, never zero) for any positive semidefinite ``Q`` and any
``A`` — rank-deficient equalities, free variables and singular ``Q`` included.
The regularisation's error is removed by iterative refinement against the exact
system (each step multiplies the error by ``δ/(λ + δ)``; in directions where the
exact system is singular the error stays put instead of blowing up).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

#: Reduced systems up to this size are factorised by the unrolled LDLᵀ below.
SMALL = 16


def inf_norm(v):
    return jnp.max(jnp.abs(v), initial=0.0)


def max_of(*xs) -> jax.Array:
    """Elementwise maximum of scalars (not ``jnp.max(jnp.stack(...))``: stacking a
    batched with an unbatched scalar fails under vmap over an Explicit mesh axis)."""
    return functools.reduce(jnp.maximum, xs)


def regularisation(dtype) -> float:
    """``ρ = δ`` of the regularised systems (on equilibrated data, entries ≈ 1).

    ``√eps``: large enough that the Schur complement's ``−δ`` survives cancellation
    of terms of size ``‖A‖²/ρ`` (needs ``ρδ ≫ eps‖A‖²``), small enough that a few
    refinement steps remove its bias.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5


def ldl_factor(K):
    """``K = L diag(d) Lᵀ`` without pivoting, unrolled over the (static) size.

    Why our own: under ``vmap`` a batch of tiny systems makes LAPACK's
    ``getrf``/``trsm`` one call per matrix, whose overhead dominates (4× slower than
    this for 5 × 5 systems). No pivoting is safe: the matrices factorised here are
    quasi-definite (see the module docstring).
    """
    N = K.shape[-1]
    idx = jnp.arange(N)
    cols, diag = [], []
    for k in range(N):
        dk = K[k, k]
        lk = jnp.where(idx > k, K[:, k] / dk, 0.0)
        K = K - dk * jnp.outer(lk, lk)
        cols.append(lk)
        diag.append(dk)
    return jnp.stack(cols, axis=1), jnp.stack(diag)


def ldl_solve(fac, r):
    L, d = fac
    N = r.shape[0]
    for k in range(N):  # forward substitution with the unit lower factor
        r = r - L[:, k] * r[k]
    r = r / d
    for k in reversed(range(N)):  # backward substitution with Lᵀ
        r = r - L[k, :] * r[k]
    return r


def factor(K):
    """Factorisation of the quasi-definite ``K`` for :func:`solve`: the unrolled LDLᵀ up
    to :data:`SMALL` unknowns, an LU above."""
    return ldl_factor(K) if K.shape[-1] <= SMALL else jax.scipy.linalg.lu_factor(K)


def solve(fac, r):
    """``K⁻¹ r`` from ``fac = factor(K)`` (the size picks the same branch)."""
    return ldl_solve(fac, r) if r.shape[0] <= SMALL else jax.scipy.linalg.lu_solve(fac, r)


#: Relative diagonal shifts of the Cholesky path's retries (see :func:`cholesky`).
_RETRY = 1e4
_RETRIES = 3


def cholesky(H):
    """Lower Cholesky factor of the symmetric positive definite ``H`` (the reduced
    matrix ``Q + ρI + GᵀWG`` of a problem without equalities), or of the nearest
    ``H + τ diag(H)`` that factorises.

    Why: one ``potrf`` and two triangular solves cost about 60 % of an LU's ``getrf``
    and its ``getrs`` under ``vmap``. ``H ⪰ ρI`` for positive semidefinite ``Q``, but
    ``potrf`` may still meet a non-positive pivot when ``ρ`` is below the rounding of
    the largest entries (weights ``1/δ`` of active rows beside a free direction):
    then ``H + τ diag(H)`` is factorised instead, ``τ = n·eps·10⁴ᵏ``, ``k = 1, 2, 3``
    (a relative shift below ``n·eps`` is what rounding adds anyway; the refinement
    against the exact matrix removes the shift's bias). The retries are a
    ``while_loop`` that runs only while some factor of the batch is not finite, so
    they cost nothing otherwise. A factor still not finite after them (``Q`` far from
    positive semidefinite) makes the step NaN, which the iteration reports.
    """
    n = H.shape[-1]
    eps = float(jnp.finfo(H.dtype).eps)
    diag = jnp.diagonal(H)

    def failed(L):
        return ~jnp.all(jnp.isfinite(L))

    def cond(c):
        k, L = c
        return (k < _RETRIES) & failed(L)

    def body(c):
        k, _ = c
        k = k + 1
        tau = n * eps * _RETRY ** k.astype(H.dtype)
        return k, jnp.linalg.cholesky(H + jnp.diag(tau * diag))

    L = jnp.linalg.cholesky(H)
    # The retry's factorisation depends on L through the loop's carry: ordered (serial).
    k0 = jnp.zeros_like(diag[0], dtype=jnp.int32)
    return jax.lax.while_loop(cond, body, (k0, L))[1]


def serial(x, after):
    """``x``, made to depend on the array ``after`` by data (``x + 0 · after₀``, exact: the
    zero is taken from a finite value), so that XLA cannot run the two side by side.

    Why: under ``vmap`` a LAPACK factorisation (``getrf``, ``potrf``) is one batched
    call that jaxlib splits over XLA:CPU's intra-op thread pool, blocking the calling
    worker until the pieces are done. If every worker of the pool is blocked that way
    at once (two independent factorisations on a 2-thread pool), the pieces never run
    and the program waits forever at 0 % CPU (jax 0.10.2). So no two factorisations of
    one solve may be independent in the graph. (``lax.optimization_barrier`` does not
    order them: XLA:CPU removes it before scheduling.)
    """
    t = jnp.ravel(after)[0]
    return x + 0.0 * jnp.where(jnp.isfinite(t), t, 0.0).astype(x.dtype)


@jax.tree_util.register_pytree_node_class
class Reduced:
    """Factorised ``[[Q + ρI + GᵀWG, Aᵀ], [A, −δI]]`` with ``W = 1/(D + δ)``.

    ``D`` is given as ``d`` (``(m,)``, ``≥ 0``, ``+inf`` allowed: that row drops out,
    as an absent constraint). :meth:`apply_inverse` solves the regularised
    unreduced system; :func:`refine_from_zero` corrects it against an exact ``matvec``.
    A pytree (its arrays are the leaves): it can be carried through a loop.

    Up to :data:`SMALL` unknowns the quasi-definite matrix is factorised by the
    unrolled LDLᵀ; above, by an LU — or, with ``chol=True`` and no equalities
    (``p = 0``: the matrix is ``H`` alone, positive definite), by :func:`cholesky`.
    """

    def __init__(self, Q, A, G, d, reg, chol=False):
        n, p = Q.shape[0], A.shape[0]
        self.n, self.G, self.reg = n, G, reg
        self.chol = bool(chol) and p == 0 and n > SMALL
        # In the data's dtype: ``d`` built from Python scalars (``jnp.where(active, 0.0,
        # jnp.inf)``) is float64 under x64 even for float32 data.
        self.w = (1.0 / (d + reg)).astype(Q.dtype)
        H = Q + G.T @ (self.w[:, None] * G) + reg * jnp.eye(n, dtype=Q.dtype)
        if self.chol:
            self.fac = cholesky(H)
        else:
            self.fac = factor(jnp.block([[H, A.T], [A, -reg * jnp.eye(p, dtype=Q.dtype)]]))

    def tree_flatten(self):
        return (self.G, self.w, self.fac), (self.n, self.reg, self.chol)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.n, obj.reg, obj.chol = aux
        obj.G, obj.w, obj.fac = children
        return obj

    def _solve(self, rx, ry):
        """``[[H, Aᵀ], [A, −δI]] (dx, dy) = (rx, ry)``."""
        if self.chol:
            return jax.scipy.linalg.cho_solve((self.fac, True), rx), ry[:0]
        sol = solve(self.fac, jnp.concatenate([rx, ry]))
        return sol[: self.n], sol[self.n :]

    def apply_inverse(self, r):
        """Solve ``[[Q+ρ, Aᵀ, Gᵀ], [A, −δ, 0], [G, 0, −(D+δ)]] (dx, dy, dz) = r``."""
        rx, ry, rz = r
        G, w = self.G, self.w
        dx, dy = self._solve(rx + G.T @ (w * rz), ry)
        return dx, dy, w * (G @ dx - rz)


def refine_from_zero(apply_inverse, matvec, rhs, steps, always=0, shrink=0.5, floor=0.0,
                     blocks=None):  # fmt: skip
    """``d ≈ J⁻¹ rhs`` by rounds ``d += apply_inverse(rhs − matvec(d))`` from ``d = 0``.

    At most ``steps`` solves (the first is the plain regularised solve): the first
    ``always`` unconditionally, further ones only while the residual
    ``‖rhs − matvec(d)‖∞`` is above ``floor`` and shrank by the factor ``shrink`` in
    the last round (the first conditional round: while it is above ``floor``).
    ``blocks``: a function mapping a residual to a tuple of sizes (its parts' norms);
    then the rounds go on while any part does so. Returns ``(d, size)``, the
    residual's size (the tuple with ``blocks``) after the last round.
    Starting from zero puts the first solve inside the loop: the program holds one
    traced (and compiled) copy of ``apply_inverse`` and of ``matvec``, not one per
    stage (a first solve, then a refinement loop, would hold two). A ``while_loop``:
    under ``vmap`` it runs while some problem of the batch still needs a round.
    """

    def sizes_of(e):
        if blocks is not None:
            return tuple(blocks(e))
        return (max_of(*[inf_norm(v) for v in jax.tree.leaves(e)]),)

    def cond(c):
        k, _, _, size, prev = c
        going = [(s > floor) & (s < shrink * p) for s, p in zip(size, prev, strict=True)]
        return (k < steps) & ((k < always) | functools.reduce(jnp.logical_or, going))

    def body(c):
        k, d, e, size, _ = c
        d = jax.tree.map(jnp.add, d, apply_inverse(e))
        e = jax.tree.map(jnp.subtract, rhs, matvec(d))
        # The shrink test starts after the unconditional rounds (their last one counts
        # as having shrunk: only the floor decides the first further round).
        prev = tuple(jnp.where(k < always, jnp.inf, s) for s in size)
        return k + 1, d, e, sizes_of(e), prev

    size = sizes_of(rhs)
    # Scalars typed like the data (a literal has no mesh in its type: Explicit meshes).
    inf = tuple(jnp.zeros_like(s) + jnp.inf for s in size)
    d0 = jax.tree.map(jnp.zeros_like, rhs)
    init = (jnp.zeros_like(size[0], jnp.int32), d0, rhs, size, inf)
    _, d, _, size, _ = jax.lax.while_loop(cond, body, init)
    return d, (size if blocks is not None else size[0])
