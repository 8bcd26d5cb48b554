"""solve_qp under vmap must not run two batched LAPACK calls side by side.

Under ``vmap`` a dense factorisation is one batched LAPACK call that jaxlib splits
over XLA:CPU's intra-op thread pool, blocking the calling worker until the pieces
are done; two of them that XLA may run at once can block every worker of a 2-thread
pool, and the program then waits forever (a batch of 64 QPs with 50 variables hung
within ~100 calls on a 2-core machine). The hang is timing-dependent, so this test
checks the cause, deterministically: in the traced program, and in every loop body
and solve nested in it, every factorisation or triangular solve depends on every
earlier one.
"""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import rootdiff

# Batched LAPACK calls that jaxlib splits over the pool: the factorisations and the
# triangular solves (two independent batched ``trsm`` calls hung the same way).
_FACTOR = {"cholesky", "lu", "triangular_solve"}


def _contains(eqn) -> set:
    """Factorisation primitives inside ``eqn`` (nested jaxprs included)."""
    found = {eqn.primitive.name} & _FACTOR
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        for e in sub.eqns:
            found |= _contains(e)
    return found


def _factorisations_ordered(jaxpr) -> list:
    """Pairs of top-level factorising equations of which neither depends on the other."""
    deps = {}  # var -> indices of factorising equations it depends on
    fact, unordered = [], []
    for i, eqn in enumerate(jaxpr.eqns):
        before = set()
        for v in eqn.invars:
            if not isinstance(v, jax.extend.core.Literal):
                before |= deps.get(v, set())
        if _contains(eqn):
            unordered += [(j, i) for j in fact if j not in before]
            fact.append(i)
            before = before | {i}
        for v in eqn.outvars:
            deps[v] = before
    return unordered


@pytest.mark.parametrize("p", [3, 0])  # the LU path, and the Cholesky path (no equalities)
def test_batched_solve_qp_orders_its_factorisations(p):
    rng = np.random.default_rng(0)
    B, n, m = 2, 20, 25  # above the size where the unrolled LDLᵀ is used
    M = rng.standard_normal((B, n, n))
    Q = M @ M.transpose(0, 2, 1) + np.eye(n)
    A, G = rng.standard_normal((B, p, n)), rng.standard_normal((B, m, n))
    args = (Q, rng.standard_normal((B, n)), A, rng.standard_normal((B, p)), G, np.ones((B, m)))
    args = tuple(map(jnp.asarray, args))

    def loss(*a):
        return jnp.sum(rootdiff.solve_qp(*a, check="off") ** 2)

    for f in (jax.vmap(lambda *a: rootdiff.solve_qp(*a, check="off")),
              jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5)))):  # fmt: skip
        jaxpr = jax.make_jaxpr(f)(*args).jaxpr
        # Inline the outer jit-like wrappers so that the solver's own equations are seen.
        while len(jaxpr.eqns) == 1 and jax.extend.core.jaxprs_in_params(jaxpr.eqns[0].params):
            jaxpr = jax.extend.core.jaxprs_in_params(jaxpr.eqns[0].params)[0]
        assert sum(bool(_contains(e)) for e in jaxpr.eqns) >= 2
        assert _unordered_anywhere(jaxpr) == []


def _unordered_anywhere(jaxpr, path="") -> list:
    """Unordered pairs in ``jaxpr`` and in every jaxpr nested in it (loop bodies, solves)."""
    found = [(path, i, j) for i, j in _factorisations_ordered(jaxpr)]
    for k, eqn in enumerate(jaxpr.eqns):
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _unordered_anywhere(sub, f"{path}/{eqn.primitive.name}{k}")
    return found
