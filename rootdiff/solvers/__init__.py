"""Bundled solvers, each made differentiable by rootdiff's own decorators."""

from rootdiff.solvers.bisection import bisection
from rootdiff.solvers.eq_qp import solve_eq_qp
from rootdiff.solvers.projected_gradient import projected_gradient
from rootdiff.solvers.qp import QPInfo, QPStatus, solve_qp

__all__ = ["QPInfo", "QPStatus", "bisection", "projected_gradient", "solve_eq_qp", "solve_qp"]
