r"""Hints from the forward solver to the derivative's linear solves.

A solver often knows something about ``∂ₓF`` at its answer: a quasi-Newton
inverse-Jacobian estimate, a factorised approximation, the adjoint solution of
the previous training step. Decorated with ``hints=True``, it returns a
:class:`SolveHint` next to its answer, and the built-in Krylov solvers of the
derivative start from it. A hint only changes how fast the linear solves
converge, never what they converge to: every solve stops on its true residual
``‖b − A u‖ ≤ tol · ‖b‖``, and a hinted solve that does not get there (a
misleading preconditioner) is continued, unpreconditioned, from where it
stopped, so a poor hint costs iterations, not accuracy; a hinted solve that
converged costs nothing more.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rootdiff._trees import PyTree

__all__ = ["SolveHint"]


class SolveHint(NamedTuple):
    r"""What a solver decorated with ``hints=True`` returns next to its answer.

    All fields are optional (``None``: no hint). Functions must be pytrees so
    that they can leave a traced solver: wrap them in
    :class:`jax.tree_util.Partial` (e.g. ``Partial(jnp.matmul, B)`` for
    ``v ↦ B v``).

    Attributes:
      precond: linear ``M(v) ≈ (∂ₓF)⁻¹ v`` on pytrees shaped like ``params``: the
        preconditioner of the tangent system ``∂ₓF u = b`` (forward mode), and of
        the forward check's Newton step ``∂ₓF δ = F(params)`` (every call).
      transpose_precond: linear ``Mᵀ(v) ≈ (∂ₓF)⁻ᵀ v``, the preconditioner of the
        adjoint system ``(∂ₓF)ᵀ u = b`` (reverse mode). Default: ``precond``
        when ``∂ₓF`` is declared symmetric, else the exact transpose of
        ``precond`` (by :func:`jax.linear_transpose`).
      init: initial guess for the tangent system, shaped like ``params``.
      transpose_init: initial guess for the adjoint system (e.g. the adjoint
        solution of the previous training step). Default: ``init`` when ``∂ₓF``
        is symmetric, else none.

    Used by the built-in Krylov solvers of :mod:`rootdiff.linear_solve`
    (``"cg"``, ``"gmres"``, ``"bicgstab"``, ``"normal_cg"``, and ``"auto"`` above
    its dense threshold, possibly ``functools.partial``-ed with options); dense
    solves are exact and ignore them. A right-hand side ``b = 0`` is solved from
    zero.
    """

    precond: Any = None
    transpose_precond: Any = None
    init: PyTree | None = None
    transpose_init: PyTree | None = None


def _keywords(fn: Any) -> set[str]:
    """The keyword options among ``M``/``init`` that ``fn`` (or its base) accepts."""
    from rootdiff import linear_solve as _ls
    from rootdiff._solves import _unpartial

    base = _unpartial(fn)[0]
    if base is _ls.auto:
        return {"M", "init"}
    if any(base is d for d in (_ls.lu, _ls.cholesky, _ls.lstsq)):
        return set()  # exact: a hint has nothing to speed up
    try:
        params = inspect.signature(base).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {"M", "init"}
    return {"M", "init"} & set(params)


def check_solves(hints: bool, solves: list[Any]) -> None:
    """``hints=True`` needs built-in solves, at least one of which can use them."""
    from rootdiff._solves import _is_builtin

    solves = [s for s in solves if s is not None]
    if hints and not (all(_is_builtin(s) for s in solves) and any(_keywords(s) for s in solves)):
        raise ValueError(
            f"hints=True needs solve= to be a Krylov solver of rootdiff.linear_solve "
            f"('cg', 'gmres', 'bicgstab', 'normal_cg' or 'auto'); got {solves}. Dense "
            f"solves are exact and would ignore the hint, and your own solve callable "
            f"can take what it needs from the solver directly."
        )


def for_system(hint: SolveHint | None, transpose: bool, symmetric: bool, example: PyTree):
    """``(M, init)`` for the tangent (``transpose=False``) or the adjoint system."""
    if hint is None:
        return None, None
    if not transpose:
        return hint.precond, hint.init
    M, init = hint.transpose_precond, hint.transpose_init
    if symmetric:
        M = hint.precond if M is None else M
        init = hint.init if init is None else init
    elif M is None and hint.precond is not None:
        transposed = jax.linear_transpose(hint.precond, example)
        M = lambda v: transposed(v)[0]  # noqa: E731
    return M, init


def options(fn: Any, M: Any, init: PyTree | None, b: PyTree) -> dict[str, Any]:
    """Keyword options for ``fn(matvec, b, ...)``; ``init`` is zeroed where ``b = 0``."""
    accepted = _keywords(fn)
    out: dict[str, Any] = {}
    if M is not None and "M" in accepted:
        out["M"] = M
    if init is not None and "init" in accepted:
        # From a non-zero start, b = 0 would need the residual driven to exactly 0.
        nonzero = jnp.any(jnp.stack([jnp.any(leaf != 0) for leaf in jax.tree.leaves(b)]))
        out["init"] = jax.tree.map(
            lambda i, bb: jnp.where(nonzero, jnp.asarray(i, bb.dtype), jnp.zeros_like(bb)),
            init, b,
        )  # fmt: skip
    return out


def solve(fn: Any, matvec: Any, b: PyTree, M: Any, init: PyTree | None, run: Any):
    """``run(fn, matvec, b, **opts) -> (x, info)`` with the hints, then without them.

    ``info`` is ``(relative residual, tolerance, iterations, ok)`` as returned by
    :func:`rootdiff._solves._run_solve`. The second, unhinted stage runs only when
    the hinted stage did not converge (on its true residual), from the first
    stage's answer (from zero if that is not finite).
    """
    from rootdiff import linear_solve as _ls
    from rootdiff._solves import _unpartial

    opts = options(fn, M, init, b)
    n = sum(jnp.size(leaf) for leaf in jax.tree.leaves(b))
    if not opts or (_unpartial(fn)[0] is _ls.auto and n <= _ls.DENSE_THRESHOLD):
        return run(fn, matvec, b)  # no hint usable (dense solves are exact anyway)
    x1, info1 = run(fn, matvec, b, **opts)

    def unhinted(x1):
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(x1)]))
        start = jax.tree.map(lambda v: jnp.where(finite, v, jnp.zeros_like(v)), x1)
        x, info2 = run(fn, matvec, b, **options(fn, None, start, b))
        rel, tol, its, ok = info2
        return x, (rel, tol, jnp.maximum(info1[2], 0) + its, ok)

    # The built-in solvers' ``converged`` rests on a true residual: a hinted stage
    # that converged needs no second stage (which would spend one product to see it).
    return jax.lax.cond(info1[3], lambda x1: (x1, info1), unhinted, x1)
