"""Bundled solvers, each made differentiable by rootdiff's own decorators."""

from rootdiff.solvers.bisection import bisection
from rootdiff.solvers.eq_qp import solve_eq_qp
from rootdiff.solvers.projected_gradient import projected_gradient

__all__ = ["bisection", "projected_gradient", "solve_eq_qp"]
