"""rootdiff: make any solver differentiable by the implicit function theorem."""

from rootdiff import linear_solve
from rootdiff._checks import ConvergenceError, ConvergenceWarning
from rootdiff.implicit import (
    RootInfo,
    argmin,
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)
from rootdiff.solvers.bisection import bisection

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "RootInfo",
    "argmin",
    "bisection",
    "custom_fixed_point",
    "custom_root",
    "linear_solve",
    "root_jvp",
    "root_vjp",
]
