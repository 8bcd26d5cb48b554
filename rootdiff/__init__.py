"""rootdiff: make any solver differentiable by the implicit function theorem."""

from rootdiff import layers, linear_solve, projections, prox
from rootdiff._checks import ConvergenceError, ConvergenceWarning
from rootdiff.implicit import (
    RootInfo,
    SolveHint,
    argmin,
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)
from rootdiff.solvers.bisection import bisection
from rootdiff.solvers.projected_gradient import projected_gradient
from rootdiff.solvers.proximal_gradient import proximal_gradient
from rootdiff.solvers.qp import QPInfo, QPStatus, solve_eq_qp, solve_qp

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "QPInfo",
    "QPStatus",
    "RootInfo",
    "SolveHint",
    "argmin",
    "bisection",
    "custom_fixed_point",
    "custom_root",
    "layers",
    "linear_solve",
    "projected_gradient",
    "projections",
    "prox",
    "proximal_gradient",
    "root_jvp",
    "root_vjp",
    "solve_eq_qp",
    "solve_qp",
]
